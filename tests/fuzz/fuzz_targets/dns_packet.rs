//! Arbitrary bytes as a DNS message: as a client's query (local answer or forwarding, the reply
//! must parse) and as an upstream's reply to a pending forwarded query (id rewriting).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::net::dns::fuzz_packet(data);
});
