//! Arbitrary bytes as an image's template file (the pongo2 subset): compiled and rendered for a
//! container with config keys and devices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::image::template::fuzz_template(data);
});
