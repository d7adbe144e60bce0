//! What handlers see: a parsed [`Request`] with its body stream, and the [`Response`] they build
//! (status, headers, a [`Body`], an optional [`Upgrade`]).
//!
//! Plain data and accessors: parsing is in `parse`, writing to the wire in `write`.

use std::io::{self, Read};

use super::Stream;

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
    pub(super) raw_target: String,
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
        let raw_target = path.clone();
        Request {
            method,
            path,
            query,
            headers,
            body,
            raw_target,
        }
    }
    /// The request target exactly as sent (still percent-encoded, with the query).
    pub fn raw_target(&self) -> &str {
        &self.raw_target
    }
    /// First header with this name, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// First query value for this key.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// The body stream (bounded by Content-Length or the chunked encoding).
    pub fn body(&mut self) -> &mut (dyn Read + Send) {
        &mut *self.body
    }
    /// Read the whole body, failing with `InvalidData` past `limit` bytes.
    pub fn read_body(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let n = (&mut self.body)
            .take((limit as u64).saturating_add(1))
            .read_to_end(&mut out)?;
        if n > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        Ok(out)
    }
    /// Whether this is a WebSocket upgrade request.
    pub fn is_websocket(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
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
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
            upgrade: None,
        }
    }
    /// A JSON body with `Content-Type: application/json`.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(Body::Bytes(body))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_accessors() {
        let mut req = Request::new(
            "GET".into(),
            "/p".into(),
            vec![("a".into(), "1".into())],
            vec![],
            Box::new(io::empty()),
        );
        assert_eq!(req.query("a"), Some("1"));
        assert_eq!(req.raw_target(), "/p");
        assert_eq!(req.read_body(10).unwrap(), b"");
    }
}
