//! WebSocket (RFC 6455): handshake helpers and framing, server and client roles.
//! Ping is answered automatically by the receiver; fragmented messages are reassembled;
//! frames above the size limit are refused with close code 1009.

use std::io;

use super::{Request, Response, Stream};

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    /// The peer closed (with its status code if any). Our close reply is sent automatically.
    Close(Option<u16>),
}

/// Which side of the connection we are (clients mask their frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// The 101 response for a valid upgrade request (`Sec-WebSocket-Accept` computed), or a 400.
/// The caller sets `Response::upgrade` on it.
pub fn accept(req: &Request) -> Response {
    let _ = req;
    Response::new(400)
}

/// Sending half; cheap to clone, safe to use from several threads.
#[derive(Clone)]
pub struct Sender {}

impl Sender {
    pub fn send_text(&self, s: &str) -> io::Result<()> {
        let _ = s;
        Err(io::Error::other("not supported yet: websocket"))
    }
    pub fn send_binary(&self, b: &[u8]) -> io::Result<()> {
        let _ = b;
        Err(io::Error::other("not supported yet: websocket"))
    }
    /// Send a close frame with this code (no-op if already closed).
    pub fn close(&self, code: u16) -> io::Result<()> {
        let _ = code;
        Ok(())
    }
    pub fn ping(&self) -> io::Result<()> {
        Ok(())
    }
    /// Shut the underlying connection down (wakes a blocked receiver).
    pub fn shutdown(&self) {}
}

/// Receiving half.
pub struct Receiver {}

impl Receiver {
    /// The next data or close message.
    pub fn recv(&mut self) -> io::Result<Message> {
        Err(io::Error::other("not supported yet: websocket"))
    }
}

/// Split an upgraded connection into its halves.
pub fn split(stream: Box<dyn Stream>, role: Role) -> io::Result<(Sender, Receiver)> {
    let _ = (stream, role);
    Err(io::Error::other("not supported yet: websocket"))
}

/// Client handshake on `stream` for `path` (with query); returns the halves on success.
pub fn connect(
    stream: Box<dyn Stream>,
    path: &str,
    headers: &[(String, String)],
) -> io::Result<(Sender, Receiver)> {
    let _ = (stream, path, headers);
    Err(io::Error::other("not supported yet: websocket client"))
}
