//! Arbitrary bytes as an image's metadata.yaml: parsed and validated; what parses is written back
//! as YAML and parses to the same metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::image::fuzz_metadata(data);
});
