//! Arbitrary bytes as a client's side of a connection: request head parser, body decoders, the
//! whole server loop (keep-alive, chunked, 100-continue, upgrade) and the client response parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bivy::http::fuzz_parse_request(data);
});
