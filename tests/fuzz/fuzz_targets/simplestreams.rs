//! Arbitrary bytes as a simplestreams `index.json` and products file: every image found has a
//! sha256 fingerprint and its files, and is found again by its aliases and fingerprint.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::image::simplestreams::fuzz_streams(data);
});
