//! Arbitrary bytes as incoming WebSocket frames, to a receiver in server and in client role.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::http::ws::fuzz_ws_frames(data);
});
