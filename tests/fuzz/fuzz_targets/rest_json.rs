//! Arbitrary bytes as a REST request body: decoded into the instance, profile, server config,
//! network and storage volume request types and run through the endpoints' checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::daemon::fuzz_rest_json(data);
});
