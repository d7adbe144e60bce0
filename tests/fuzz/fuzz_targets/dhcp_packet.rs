//! Arbitrary bytes as a DHCP packet: parse, write and re-parse (same packet), and the server's
//! state machine answering it (replies written and re-parsed).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::net::dhcp::fuzz_packet(data);
});
