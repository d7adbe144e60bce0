//! Our own small HTTP/1.1 layer, shared by the daemon (server side) and the CLI (client side).
//!
//! Blocking I/O over any [`Stream`] (unix socket, TCP; the client runs on any [`client::Conn`],
//! TLS included). Keep-alive, Content-Length and chunked bodies both ways, hard limits on head
//! size, body size and time, so that a slow or huge client cannot stall or exhaust the daemon.
//! WebSocket (RFC 6455) framing lives in [`ws`].
//!
//! INTERFACE CONTRACT (the daemon and client rely on these; keep the signatures):
//! `Stream`, `Limits`, `Request` (+ methods), `Body`, `Response` (+ builders), `serve_connection`,
//! `client::request`, `client::ClientResponse`, `ws::*`.
//!
//! # Layout
//! - `stream`: the streams we wrap ([`PrefixedStream`], [`SliceStream`]) around a [`Stream`].
//! - `message`: [`Request`], [`Response`], [`Body`]: what handlers see.
//! - `parse`: request heads, header fields, percent-encoding and query strings (no I/O).
//! - `body`: body framing and the incremental decoder (Content-Length, chunked, to EOF, drain).
//! - `write`: responses on the wire, reason phrases, the JSON error envelope.
//! - `server`: [`serve_connection`], the per-connection loop, and its [`Limits`].
//! - [`client`]: the client side; [`ws`]: WebSocket framing; `fuzz`: the fuzzing entry point.

mod body;
pub mod client;
pub(crate) mod fuzz;
mod message;
mod parse;
mod server;
mod stream;
mod write;
pub mod ws;

pub use crate::util::stream::Stream;
pub use body::MAX_DRAIN;
pub use fuzz::fuzz_parse_request;
pub use message::{Body, Request, Response, Upgrade};
pub use parse::{parse_query, percent_decode, percent_encode};
pub use server::{serve_connection, Limits};
pub use stream::{PrefixedStream, SliceStream};
pub use write::{error_envelope, reason_phrase};
