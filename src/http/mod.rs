//! Our own small HTTP/1.1 layer, shared by the daemon (server side) and the CLI (client side).
//!
//! Blocking I/O over any [`Stream`] (unix socket, TCP, later TLS). Keep-alive, Content-Length and
//! chunked bodies both ways, hard limits on head size, body size and time, so that a slow or huge
//! client cannot stall or exhaust the daemon. WebSocket (RFC 6455) framing lives in [`ws`].
//!
//! INTERFACE CONTRACT (the daemon and client rely on these; keep the signatures):
//! `Stream`, `Limits`, `Request` (+ methods), `Body`, `Response` (+ builders), `serve_connection`,
//! `client::request`, `client::ClientResponse`, `ws::*`.

pub mod client;
pub mod ws;

use std::io::{self, Read, Write};
use std::time::Duration;

/// A bidirectional byte stream the HTTP layer can run on.
pub trait Stream: Read + Write + Send + 'static {
    /// A second handle on the same connection (for a reader thread and a writer thread).
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>>;
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Shut down both directions (wakes a thread blocked reading on a clone).
    fn shutdown_both(&self) -> io::Result<()>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, t)
    }
    fn shutdown_both(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Both)
    }
}

impl Stream for std::net::TcpStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_write_timeout(self, t)
    }
    fn shutdown_both(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Both)
    }
}

/// Server-side limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers, bytes (431/400 past it).
    pub max_head: usize,
    /// Maximum number of header lines.
    pub max_headers: usize,
    /// Time allowed to receive a whole request head once its first byte arrived (slowloris): 408.
    pub head_timeout: Duration,
    /// Idle time allowed between keep-alive requests before the connection is closed.
    pub idle_timeout: Duration,
    /// Per-read timeout while reading a body.
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

/// A parsed request. The body is read on demand through [`Request::body`].
pub struct Request {
    pub method: String,
    /// Percent-decoded path, without the query.
    pub path: String,
    /// Decoded query pairs in order.
    pub query: Vec<(String, String)>,
    /// Header (name, value) pairs in order; names as sent.
    pub headers: Vec<(String, String)>,
    body: Box<dyn Read + Send>,
}

impl Request {
    /// Construct (used by the server loop and by tests).
    pub fn new(
        method: String,
        path: String,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Box<dyn Read + Send>,
    ) -> Request {
        Request { method, path, query, headers, body }
    }
    /// First header with this name, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// First query value for this key.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// The body stream (bounded by Content-Length or the chunked encoding).
    pub fn body(&mut self) -> &mut (dyn Read + Send) {
        &mut *self.body
    }
    /// Read the whole body, failing with `InvalidData` past `limit` bytes.
    pub fn read_body(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let n = (&mut self.body).take(limit as u64 + 1).read_to_end(&mut out)?;
        if n > limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request body too large"));
        }
        Ok(out)
    }
    /// Whether this is a WebSocket upgrade request.
    pub fn is_websocket(&self) -> bool {
        self.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

/// A response or request body.
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// A stream of known length (sent with Content-Length) or unknown length (sent chunked).
    Reader(Box<dyn Read + Send>, Option<u64>),
}

/// What a handler runs on the raw connection after a `101 Switching Protocols`.
pub type Upgrade = Box<dyn FnOnce(Box<dyn Stream>) + Send>;

/// A response built by a handler.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Set for a 101: the server writes the head, then hands the connection to this.
    pub upgrade: Option<Upgrade>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Body::Empty, upgrade: None }
    }
    /// A JSON body with `Content-Type: application/json`.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::new(status).header("Content-Type", "application/json").body(Body::Bytes(body))
    }
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }
}

/// Serve one connection until it closes: parse requests, call `handler`, write responses,
/// honour keep-alive, answer malformed or oversized input with 400/408/413/431 and close.
pub fn serve_connection(
    stream: Box<dyn Stream>,
    limits: &Limits,
    handler: &(dyn Fn(&mut Request) -> Response + Sync),
) {
    let _ = (stream, limits, handler);
}

/// Decode `%XX` escapes (and `+` as space when `plus` is set); invalid escapes are kept as is.
pub fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse `a=b&c=d` (form encoding) into pairs.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k, true), percent_decode(v, true)),
            None => (percent_decode(p, true), String::new()),
        })
        .collect()
}
