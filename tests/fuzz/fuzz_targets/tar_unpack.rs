//! Arbitrary bytes as an uploaded image (tar header checksums fixed up): the import's checks, the
//! unpack into a scratch directory (unified and split) and the templates. Never a write outside
//! the targets, nothing left behind on failure, every image the import accepts unpacks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::image::fuzz_unpack(data);
});
