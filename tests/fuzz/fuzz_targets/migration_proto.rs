//! Arbitrary bytes as a migration control message (LXD's protobuf MigrationHeader and
//! MigrationControl): what decodes, encoded and decoded again, is the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::migration::proto::fuzz_decode(data);
});
