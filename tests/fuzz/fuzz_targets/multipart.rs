//! Arbitrary bytes as a split image upload: the first line is the Content-Type, the rest the
//! multipart body, read in small pieces and spooled to files that never outlive the parts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::daemon::fuzz_multipart(data);
});
