//! HTTP/1.1 client side: one request at a time over a [`Stream`], keep-alive capable.

use std::io;

use super::{Body, Stream};

/// A response head plus its body stream.
pub struct ClientResponse<'a> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn io::Read + 'a>,
}

impl ClientResponse<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Send one request (`path` includes the query) and read the response head. `Host` is added when
/// missing; a `Body::Reader` without length is sent chunked.
pub fn request<'a>(
    stream: &'a mut dyn Stream,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Body,
) -> io::Result<ClientResponse<'a>> {
    let _ = (stream, method, path, headers, body);
    Err(io::Error::other("not supported yet: http client"))
}
