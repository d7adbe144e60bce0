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

pub mod client;
pub mod ws;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::util::stream::Stream;

/// Server-side limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers, bytes (431/400 past it).
    pub max_head: usize,
    /// Maximum number of header lines.
    pub max_headers: usize,
    /// Time allowed to receive a whole request head once its first byte arrived (slowloris): 408.
    /// For the first request of a connection it counts from the start of `serve_connection`.
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
    raw_target: String,
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

/// Serve one connection until it closes: parse requests, call `handler`, write responses,
/// honour keep-alive, answer malformed or oversized input with 400/408/413/431 and close.
pub fn serve_connection(
    stream: Box<dyn Stream>,
    limits: &Limits,
    handler: &(dyn Fn(&mut Request) -> Response + Sync),
) {
    serve_loop(stream, limits, handler)
}

// ---------------------------------------------------------------------------------------------
// Implementation.
// ---------------------------------------------------------------------------------------------

/// How much unread request body the server reads and discards after a handler returned, to keep
/// the connection usable. Past this the connection is closed instead.
pub const MAX_DRAIN: u64 = 1 << 20;
/// Longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

fn bad_data(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Standard reason phrase for a status code ("" when unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Percent-decode `s` (`+` becomes a space when `plus_as_space`, as in query strings).
/// `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str, plus_as_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encode everything but RFC 3986 unreserved characters and, when `keep_slash`, `/`.
pub fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && c == b'/')
        {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(c >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(c & 15) as usize]));
        }
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parse a query string (without `?`) into decoded pairs; `None` if an escape is malformed.
pub fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in q.split('&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Some(out)
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub(crate) fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Accumulates a message head (up to and including the empty line) from successive buffers.
/// Leading empty lines are skipped (RFC 9112 2.2). Lines may end in CRLF or a bare LF.
#[derive(Default)]
pub(crate) struct HeadScanner {
    pub head: Vec<u8>,
    line_start: usize,
    /// Bytes seen including skipped leading line ends.
    pub total: usize,
}

impl HeadScanner {
    /// Feed available bytes; returns (consumed, complete).
    pub fn feed(&mut self, avail: &[u8]) -> (usize, bool) {
        for (i, &c) in avail.iter().enumerate() {
            self.total += 1;
            if self.head.is_empty() && (c == b'\r' || c == b'\n') {
                continue;
            }
            self.head.push(c);
            if c == b'\n' {
                let end = self.head.len() - 1;
                let line = &self.head[self.line_start..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    return (i + 1, true);
                }
                self.line_start = self.head.len();
            }
        }
        (avail.len(), false)
    }
}

/// Split a complete head into lines (without line ends, without the final empty line).
/// A CR anywhere but just before LF is an error.
fn head_lines(head: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(nl) = rest.iter().position(|&c| c == b'\n') {
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err("bare CR in head");
        }
        if line.is_empty() {
            break;
        }
        lines.push(line);
        rest = &rest[nl + 1..];
    }
    Ok(lines)
}

/// Parse header lines into (name, value) pairs. Rejects obs-fold, invalid names, control bytes.
fn parse_header_lines(lines: &[&[u8]]) -> Result<Vec<(String, String)>, &'static str> {
    let mut headers = Vec::with_capacity(lines.len());
    for line in lines {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err("obsolete line folding");
        }
        let colon = line
            .iter()
            .position(|&c| c == b':')
            .ok_or("header line without colon")?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err("invalid header name");
        }
        let value = &line[colon + 1..];
        if value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
            return Err("invalid byte in header value");
        }
        let value = trim_ows(value);
        // Names are tchar (ASCII) so this cannot fail; values may be obs-text (lossy).
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Eof,
}

/// Work out the body framing from headers. `Err` for conflicting or invalid values.
pub(crate) fn body_framing(headers: &[(String, String)]) -> Result<Framing, (u16, &'static str)> {
    let mut te: Option<&str> = None;
    let mut cl: Option<u64> = None;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err((400, "multiple Transfer-Encoding headers"));
            }
            te = Some(v);
        } else if k.eq_ignore_ascii_case("content-length") {
            // A list of identical values ("5, 5") is tolerated as RFC 9110 allows.
            for part in v.split(',') {
                let n = parse_decimal(part.trim()).ok_or((400, "invalid Content-Length"))?;
                if cl.is_some_and(|c| c != n) {
                    return Err((400, "conflicting Content-Length"));
                }
                cl = Some(n);
            }
        }
    }
    match (te, cl) {
        (Some(_), Some(_)) => Err((400, "both Transfer-Encoding and Content-Length")),
        (Some(t), None) => {
            if t.trim().eq_ignore_ascii_case("chunked") {
                Ok(Framing::Chunked)
            } else if t.trim().eq_ignore_ascii_case("identity") {
                Ok(Framing::Eof)
            } else {
                Err((501, "unsupported Transfer-Encoding"))
            }
        }
        (None, Some(0)) => Ok(Framing::None),
        (None, Some(n)) => Ok(Framing::Length(n)),
        (None, None) => Ok(Framing::None),
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Read one line (up to LF) of at most `max` bytes, without its line end.
fn read_line_bounded(r: &mut dyn BufRead, max: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in body",
            ));
        }
        if let Some(nl) = avail.iter().position(|&c| c == b'\n') {
            if line.len() + nl > max {
                return Err(bad_data("chunk line too long"));
            }
            line.extend_from_slice(&avail[..nl]);
            r.consume(nl + 1);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
        let n = avail.len();
        if line.len() + n > max {
            return Err(bad_data("chunk line too long"));
        }
        line.extend_from_slice(avail);
        r.consume(n);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

/// Incremental body decoder (Content-Length, chunked, to-EOF) over a buffered reader.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decoder {
    framing: Framing,
    remaining: u64,
    chunk: ChunkState,
    done: bool,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let remaining = if let Framing::Length(n) = framing {
            n
        } else {
            0
        };
        Decoder {
            framing,
            remaining,
            chunk: ChunkState::Size,
            done: framing == Framing::None,
        }
    }
    pub fn is_done(&self) -> bool {
        self.done
    }
    pub fn read(&mut self, r: &mut dyn BufRead, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::None => Ok(0),
            Framing::Eof => {
                let n = r.read(out)?;
                if n == 0 {
                    self.done = true;
                }
                Ok(n)
            }
            Framing::Length(_) => {
                let want = out
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                let n = r.read(&mut out[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body shorter than Content-Length",
                    ));
                }
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.done = true;
                }
                Ok(n)
            }
            Framing::Chunked => loop {
                match self.chunk {
                    ChunkState::Size => {
                        let line = read_line_bounded(r, MAX_CHUNK_LINE)?;
                        let hex = match line.iter().position(|&c| c == b';') {
                            Some(p) => &line[..p],
                            None => &line[..],
                        };
                        let hex = trim_ows(hex);
                        if hex.is_empty() || hex.len() > 16 {
                            return Err(bad_data("invalid chunk size"));
                        }
                        let mut size: u64 = 0;
                        for &c in hex {
                            let d = hex_val(c).ok_or_else(|| bad_data("invalid chunk size"))?;
                            size = size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(u64::from(d)))
                                .ok_or_else(|| bad_data("chunk size overflow"))?;
                        }
                        if size > i64::MAX as u64 {
                            return Err(bad_data("chunk size overflow"));
                        }
                        self.chunk = if size == 0 {
                            ChunkState::Trailers(0)
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    ChunkState::Data(left) => {
                        let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let n = r.read(&mut out[..want])?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed in chunk",
                            ));
                        }
                        let left = left - n as u64;
                        self.chunk = if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data(left)
                        };
                        return Ok(n);
                    }
                    ChunkState::DataEnd => {
                        let line = read_line_bounded(r, 2)?;
                        if !line.is_empty() {
                            return Err(bad_data("missing CRLF after chunk data"));
                        }
                        self.chunk = ChunkState::Size;
                    }
                    ChunkState::Trailers(seen) => {
                        let line = read_line_bounded(r, MAX_TRAILERS)?;
                        if line.is_empty() {
                            self.done = true;
                            return Ok(0);
                        }
                        let seen = seen + line.len() + 2;
                        if seen > MAX_TRAILERS {
                            return Err(bad_data("trailers too large"));
                        }
                        // Trailers are validated like headers, then discarded.
                        if line.contains(&b'\r') {
                            return Err(bad_data("bare CR in trailer"));
                        }
                        parse_header_lines(&[&line]).map_err(bad_data)?;
                        self.chunk = ChunkState::Trailers(seen);
                    }
                }
            },
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub http11: bool,
    pub headers: Vec<(String, String)>,
}

/// Parse a complete request head. `Err((status, reason))` for malformed input.
pub(crate) fn parse_request_head(
    head: &[u8],
    limits: &Limits,
) -> Result<Head, (u16, &'static str)> {
    if head.contains(&0) {
        return Err((400, "NUL in request head"));
    }
    let lines = head_lines(head).map_err(|e| (400, e))?;
    let (first, rest) = lines.split_first().ok_or((400, "empty request"))?;
    if rest.len() > limits.max_headers {
        return Err((431, "too many header fields"));
    }
    let mut parts = first.split(|&c| c == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err((400, "malformed request line")),
    };
    if method.is_empty() || !method.iter().all(|&c| is_tchar(c)) {
        return Err((400, "invalid method"));
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            return Err((505, "unsupported HTTP version"))
        }
        _ => return Err((400, "malformed HTTP version")),
    };
    if target.is_empty() || !target.iter().all(|&c| c > 0x20 && c < 0x7f) {
        return Err((400, "invalid request target"));
    }
    // Checked above: printable ASCII.
    let target = String::from_utf8_lossy(target).into_owned();
    let mut origin = target.as_str();
    if let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    {
        origin = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    if !(origin.starts_with('/') || origin == "*") {
        return Err((400, "invalid request target"));
    }
    let origin = origin.split('#').next().unwrap_or("");
    let (raw_path, raw_query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = percent_decode(raw_path, false).ok_or((400, "invalid path encoding"))?;
    if path.contains('\0') {
        return Err((400, "NUL in path"));
    }
    let query = parse_query(raw_query).ok_or((400, "invalid query encoding"))?;
    let headers = parse_header_lines(rest).map_err(|e| (400, e))?;
    Ok(Head {
        method: String::from_utf8_lossy(method).into_owned(),
        target,
        path,
        query,
        http11,
        headers,
    })
}

/// Connection state shared by the server loop and the request body reader.
struct Shared {
    r: BufReader<Box<dyn Stream>>,
    dec: Decoder,
    continue_pending: bool,
    body_err: Option<io::ErrorKind>,
}

struct BodyReader(Arc<Mutex<Shared>>);

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *s;
        if let Some(k) = s.body_err {
            return Err(io::Error::new(k, "request body failed earlier"));
        }
        if s.dec.is_done() || buf.is_empty() {
            return Ok(0);
        }
        if s.continue_pending {
            s.continue_pending = false;
            let w = s.r.get_mut();
            if let Err(e) = w
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|_| w.flush())
            {
                s.body_err = Some(e.kind());
                return Err(e);
            }
        }
        match s.dec.read(&mut s.r, buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                s.body_err = Some(e.kind());
                Err(e)
            }
        }
    }
}

/// A stream whose first bytes come from a buffer (data read ahead before an upgrade).
/// Clones see only the underlying stream (they are meant for writing).
pub struct PrefixedStream {
    prefix: Vec<u8>,
    pos: usize,
    inner: Box<dyn Stream>,
}

impl PrefixedStream {
    /// `inner` itself when `prefix` is empty.
    pub fn wrap(prefix: Vec<u8>, inner: Box<dyn Stream>) -> Box<dyn Stream> {
        if prefix.is_empty() {
            inner
        } else {
            Box::new(PrefixedStream {
                prefix,
                pos: 0,
                inner,
            })
        }
    }
}

impl Read for PrefixedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.pos);
            buf[..n].copy_from_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

impl Write for PrefixedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Stream for PrefixedStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        self.inner.try_clone_stream()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(t)
    }
    fn shutdown_both(&self) -> io::Result<()> {
        self.inner.shutdown_both()
    }
}

enum HeadOutcome {
    Head(Vec<u8>),
    /// Nothing arrived (idle timeout or peer closed): close silently.
    Idle,
    /// Answer with this status and close.
    Fail(u16, &'static str),
}

/// `t + d`, capped (a huge configured duration must not overflow and panic).
fn add_capped(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(100 * 365 * 86400)))
        .unwrap_or(t)
}

/// Read a request head, enforcing the size limit, the idle wait and the whole-head deadline.
fn read_request_head(s: &mut Shared, limits: &Limits, first: bool) -> HeadOutcome {
    let start = Instant::now();
    let mut deadline: Option<Instant> = None;
    if first {
        // The first request of a connection gets `head_timeout` from accept (like Go's
        // ReadHeaderTimeout), so a silent new connection is not held for the idle timeout.
        deadline = Some(add_capped(start, limits.head_timeout));
    } else if !s.r.buffer().is_empty() {
        deadline = Some(add_capped(start, limits.head_timeout));
    }
    let mut sc = HeadScanner::default();
    loop {
        let timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(t) if !t.is_zero() => t,
                _ => return HeadOutcome::Fail(408, "request head timeout"),
            },
            None => limits.idle_timeout.max(Duration::from_millis(1)),
        };
        if s.r.buffer().is_empty() && s.r.get_ref().set_read_timeout(Some(timeout)).is_err() {
            return HeadOutcome::Idle;
        }
        let avail = match s.r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) && sc.total > 0 => {
                return HeadOutcome::Fail(408, "request head timeout")
            }
            Err(_) => return HeadOutcome::Idle,
        };
        if avail.is_empty() {
            return if sc.total > 0 {
                HeadOutcome::Fail(400, "connection closed in request head")
            } else {
                HeadOutcome::Idle
            };
        }
        if deadline.is_none() {
            deadline = Some(add_capped(Instant::now(), limits.head_timeout));
        }
        let room = limits.max_head.saturating_sub(sc.total).saturating_add(1);
        let avail = &avail[..avail.len().min(room)];
        let (used, done) = sc.feed(avail);
        s.r.consume(used);
        if done {
            return HeadOutcome::Head(sc.head);
        }
        if sc.total > limits.max_head {
            return HeadOutcome::Fail(431, "request head too large");
        }
    }
}

/// The body of an error answer, in LXD's error envelope. Errors found below the handlers (a bad
/// request line, an oversized head, a broken body) look to clients exactly like a handler's.
pub fn error_envelope(status: u16, msg: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "type": "error",
        "status": "",
        "status_code": 0,
        "operation": "",
        "error_code": status,
        "error": msg,
        "metadata": null,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Answer a request the server could not hand to the handler, then the caller closes.
fn write_simple(w: &mut dyn Write, status: u16, msg: &str) -> io::Result<()> {
    let body = error_envelope(status, msg);
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

fn write_head(
    w: &mut dyn Write,
    status: u16,
    headers: &[(String, String)],
    extra: &str,
) -> io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (k, v) in headers {
        // Never let a handler split the response with CR/LF in a header.
        if k.bytes().all(is_tchar)
            && !k.is_empty()
            && !v.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0)
        {
            h.push_str(k);
            h.push_str(": ");
            h.push_str(v);
            h.push_str("\r\n");
        }
    }
    h.push_str(extra);
    h.push_str("\r\n");
    w.write_all(h.as_bytes())
}

/// Write a response; returns whether the connection may be kept alive.
fn write_response(
    w: &mut dyn Write,
    resp: Response,
    head_only: bool,
    http11: bool,
    mut keep: bool,
) -> io::Result<bool> {
    let status = resp.status;
    let no_body = status < 200 || status == 204 || status == 304;
    // A HEAD handler may announce the length of the body it would send.
    let head_len = if head_only {
        resp.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.clone())
    } else {
        None
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .into_iter()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("content-length")
                && !k.eq_ignore_ascii_case("transfer-encoding")
                && !k.eq_ignore_ascii_case("connection")
        })
        .collect();
    let mut body = resp.body;
    if no_body {
        body = Body::Empty;
    }
    let (len, chunked) = match &body {
        Body::Empty => (Some(0), false),
        Body::Bytes(b) => (Some(b.len() as u64), false),
        Body::Reader(_, Some(n)) => (Some(*n), false),
        Body::Reader(_, None) => {
            if !http11 && !head_only {
                keep = false;
            }
            (None, http11)
        }
    };
    let mut extra = String::new();
    if let Some(v) = head_len.filter(|v| parse_decimal(v.trim()).is_some()) {
        extra.push_str(&format!("Content-Length: {}\r\n", v.trim()));
    } else if let Some(n) = len {
        if !no_body {
            extra.push_str(&format!("Content-Length: {n}\r\n"));
        }
    } else if chunked && !head_only {
        extra.push_str("Transfer-Encoding: chunked\r\n");
    }
    if !keep {
        extra.push_str("Connection: close\r\n");
    } else if !http11 {
        extra.push_str("Connection: keep-alive\r\n");
    }
    write_head(w, status, &headers, &extra)?;
    if head_only {
        w.flush()?;
        return Ok(keep);
    }
    match body {
        Body::Empty => {}
        Body::Bytes(b) => w.write_all(&b)?,
        Body::Reader(mut r, Some(n)) => {
            let copied = io::copy(&mut (&mut r).take(n), w)?;
            if copied != n {
                // Framing broken: the peer must see the connection end.
                w.flush()?;
                return Ok(false);
            }
        }
        Body::Reader(mut r, None) => {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if chunked {
                    let mut c = Vec::with_capacity(n + 16);
                    c.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    c.extend_from_slice(&buf[..n]);
                    c.extend_from_slice(b"\r\n");
                    w.write_all(&c)?;
                } else {
                    w.write_all(&buf[..n])?;
                }
                w.flush()?;
            }
            if chunked {
                w.write_all(b"0\r\n\r\n")?;
            }
        }
    }
    w.flush()?;
    Ok(keep)
}

fn lock(a: &Arc<Mutex<Shared>>) -> std::sync::MutexGuard<'_, Shared> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve_loop(
    stream: Box<dyn Stream>,
    limits: &Limits,
    handler: &(dyn Fn(&mut Request) -> Response + Sync),
) {
    let shared = Arc::new(Mutex::new(Shared {
        r: BufReader::with_capacity(16 * 1024, stream),
        dec: Decoder::new(Framing::None),
        continue_pending: false,
        body_err: None,
    }));
    let mut first = true;
    loop {
        let raw = {
            let mut s = lock(&shared);
            match read_request_head(&mut s, limits, first) {
                HeadOutcome::Head(h) => h,
                HeadOutcome::Idle => return,
                HeadOutcome::Fail(status, msg) => {
                    let _ =
                        s.r.get_ref()
                            .set_write_timeout(Some(Duration::from_secs(5)));
                    let _ = write_simple(s.r.get_mut(), status, msg);
                    return;
                }
            }
        };
        first = false;
        let head = match parse_request_head(&raw, limits)
            .and_then(|h| body_framing(&h.headers).map(|f| (h, f)))
        {
            Ok(h) => h,
            Err((status, msg)) => {
                let mut s = lock(&shared);
                let _ =
                    s.r.get_ref()
                        .set_write_timeout(Some(Duration::from_secs(5)));
                let _ = write_simple(s.r.get_mut(), status, msg);
                return;
            }
        };
        let (head, framing) = head;
        if framing == Framing::Eof {
            // Requests cannot be delimited by closing the connection.
            let mut s = lock(&shared);
            let _ = write_simple(s.r.get_mut(), 411, "request body length required");
            return;
        }
        let find = |name: &str| {
            head.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let conn_hdr = find("connection").unwrap_or("");
        let mut keep = if head.http11 {
            !has_token(conn_hdr, "close")
        } else {
            has_token(conn_hdr, "keep-alive")
        };
        let expect_continue =
            head.http11 && find("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if let Some(v) = find("expect") {
            if !v.eq_ignore_ascii_case("100-continue") {
                let mut s = lock(&shared);
                let _ = write_simple(s.r.get_mut(), 417, "unsupported expectation");
                return;
            }
        }
        {
            let mut s = lock(&shared);
            s.dec = Decoder::new(framing);
            s.continue_pending = expect_continue && !s.dec.is_done();
            s.body_err = None;
            let _ =
                s.r.get_ref()
                    .set_read_timeout(Some(limits.body_read_timeout.max(Duration::from_millis(1))));
            let _ = s
                .r
                .get_ref()
                .set_write_timeout(Some(limits.body_read_timeout.max(Duration::from_millis(1))));
        }
        let is_head = head.method == "HEAD";
        let http11 = head.http11;
        let mut req = Request::new(
            head.method,
            head.path,
            head.query,
            head.headers,
            Box::new(BodyReader(shared.clone())),
        );
        req.raw_target = head.target;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&mut req)));
        drop(req);
        let mut s = lock(&shared);
        let mut resp = match result {
            Ok(r) => r,
            Err(_) => {
                keep = false;
                Response::json(500, error_envelope(500, "internal server error"))
            }
        };
        if resp
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("connection") && has_token(v, "close"))
        {
            keep = false;
        }
        if s.body_err.is_none() && !s.dec.is_done() {
            if s.continue_pending {
                // The client waits for our go-ahead and has not sent the body: do not expect it.
                keep = false;
            } else if keep && resp.upgrade.is_none() {
                let s = &mut *s;
                let mut sink = [0u8; 8192];
                let mut drained: u64 = 0;
                while !s.dec.is_done() {
                    match s.dec.read(&mut s.r, &mut sink) {
                        Ok(n) => {
                            drained += n as u64;
                            if drained > MAX_DRAIN {
                                keep = false;
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            s.body_err = Some(e.kind());
                            break;
                        }
                    }
                }
            } else {
                keep = false;
            }
        }
        if let Some(kind) = s.body_err {
            // The request body was malformed or stalled: the handler's answer rested on a broken
            // request, so answer for it and close.
            let status = match kind {
                io::ErrorKind::InvalidData => 400,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => 408,
                _ => return,
            };
            let _ = write_simple(
                s.r.get_mut(),
                status,
                "malformed or incomplete request body",
            );
            return;
        }
        if resp.status == 101 {
            if let Some(up) = resp.upgrade.take() {
                if write_head(s.r.get_mut(), 101, &resp.headers, "")
                    .and_then(|_| s.r.get_mut().flush())
                    .is_err()
                {
                    return;
                }
                let leftover = s.r.buffer().to_vec();
                drop(s);
                let shared = match Arc::try_unwrap(shared) {
                    Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
                    Err(_) => return,
                };
                let stream = PrefixedStream::wrap(leftover, shared.r.into_inner());
                let _ = stream.set_read_timeout(None);
                let _ = stream.set_write_timeout(None);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || up(stream)));
                return;
            }
            keep = false;
        }
        let w = s.r.get_mut();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_response(w, resp, is_head, http11, keep)
        }));
        match res {
            Ok(Ok(true)) => {}
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test and fuzzing support.
// ---------------------------------------------------------------------------------------------

/// An in-memory [`Stream`]: reads come from a byte buffer (then EOF), writes are collected in a
/// shared buffer (clones share it). Timeouts are ignored.
#[doc(hidden)]
pub struct SliceStream {
    input: Vec<u8>,
    pos: usize,
    /// Everything written through this stream or its clones.
    pub output: Arc<Mutex<Vec<u8>>>,
}

impl SliceStream {
    pub fn new(input: Vec<u8>) -> SliceStream {
        SliceStream {
            input,
            pos: 0,
            output: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl Read for SliceStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for SliceStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut o = self.output.lock().unwrap_or_else(|e| e.into_inner());
        // Bound memory for hostile inputs that make us echo a lot.
        if o.len() < 64 << 20 {
            o.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for SliceStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(SliceStream {
            input: Vec::new(),
            pos: 0,
            output: self.output.clone(),
        }))
    }
    fn set_read_timeout(&self, _t: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn set_write_timeout(&self, _t: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_both(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Fuzzing entry point: run `data` through the request head parser, the body decoders, the whole
/// server loop (with a handler that reads, skips or streams bodies and accepts WebSocket
/// upgrades) and the client response parser. Must never panic.
#[doc(hidden)]
pub fn fuzz_parse_request(data: &[u8]) {
    let limits = Limits {
        max_head: 8 * 1024,
        max_headers: 64,
        head_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        body_read_timeout: Duration::from_secs(5),
    };
    // The head parser alone.
    let mut sc = HeadScanner::default();
    let (used, done) = sc.feed(data);
    if done {
        if let Ok(h) = parse_request_head(&sc.head, &limits) {
            let _ = body_framing(&h.headers);
        }
        let _ = client::parse_response_head(&sc.head);
    }
    // The body decoders alone, on what follows the head (or on everything).
    let rest = if done { &data[used..] } else { data };
    for framing in [
        Framing::Chunked,
        Framing::Length(rest.len() as u64 / 2 + 1),
        Framing::Eof,
    ] {
        let mut dec = Decoder::new(framing);
        let mut r = rest;
        let mut buf = [0u8; 61];
        for _ in 0..100_000 {
            match dec.read(&mut r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    // The server loop end to end.
    let handler = |req: &mut Request| -> Response {
        if req.is_websocket() {
            let resp = ws::accept(req);
            if resp.status == 101 {
                let mut resp = resp;
                resp.upgrade = Some(Box::new(|s: Box<dyn Stream>| {
                    if let Ok((_tx, mut rx)) = ws::split(s, ws::Role::Server) {
                        for _ in 0..64 {
                            if !matches!(rx.recv(), Ok(Message::Text(_) | Message::Binary(_))) {
                                break;
                            }
                        }
                    }
                }));
                return resp;
            }
            return resp;
        }
        if req.path.contains("skip") {
            return Response::new(204);
        }
        let body = match req.read_body(1 << 16) {
            Ok(b) => b,
            Err(_) => return Response::new(413),
        };
        if req.path.contains("stream") {
            return Response::new(200).body(Body::Reader(Box::new(io::Cursor::new(body)), None));
        }
        Response::json(200, body)
    };
    serve_connection(Box::new(SliceStream::new(data.to_vec())), &limits, &handler);
    // The client response parser on the same bytes.
    let mut s = SliceStream::new(data.to_vec());
    if let Ok(mut resp) = client::request(&mut s, "GET", "/", &[], Body::Empty) {
        let _ = io::copy(&mut (&mut resp.body).take(1 << 20), &mut io::sink());
    };
}

use ws::Message;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;

    fn small_limits() -> Limits {
        Limits {
            max_head: 1024,
            max_headers: 10,
            head_timeout: Duration::from_millis(400),
            idle_timeout: Duration::from_millis(400),
            body_read_timeout: Duration::from_millis(400),
        }
    }

    fn echo(req: &mut Request) -> Response {
        if req.path == "/panic" {
            panic!("handler panic (expected in this test)");
        }
        if req.path == "/noread" {
            return Response::new(200).body(Body::Bytes(b"skipped".to_vec()));
        }
        let body = match req.read_body(1 << 20) {
            Ok(b) => b,
            Err(_) => return Response::new(413),
        };
        let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let text = format!(
            "{} {} [{}] {}",
            req.method,
            req.path,
            q.join("|"),
            String::from_utf8_lossy(&body)
        );
        if req.path == "/stream" {
            return Response::new(200).body(Body::Reader(
                Box::new(io::Cursor::new(text.into_bytes())),
                None,
            ));
        }
        Response::new(200)
            .header("Content-Type", "text/plain")
            .body(Body::Bytes(text.into_bytes()))
    }

    /// Run the server over in-memory input; returns everything it wrote.
    fn run(input: &[u8]) -> String {
        let s = SliceStream::new(input.to_vec());
        let out = s.output.clone();
        serve_connection(Box::new(s), &small_limits(), &echo);
        let o = out.lock().unwrap().clone();
        String::from_utf8_lossy(&o).into_owned()
    }

    fn status_of(out: &str) -> u16 {
        out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// An error answer carries LXD's JSON error envelope, whatever layer produced it.
    fn assert_error_envelope(out: &str, status: u16) {
        assert!(
            out.contains("Content-Type: application/json\r\n"),
            "error must be JSON: {out:?}"
        );
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(v["type"], "error", "{out:?}");
        assert_eq!(v["error_code"], status, "{out:?}");
        assert_eq!(v["status_code"], 0, "{out:?}");
        assert_eq!(v["metadata"], serde_json::Value::Null, "{out:?}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{out:?}"
        );
    }

    #[test]
    fn request_parsing_table() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            (b"GET / HTTP/1.1\nHost: x\n\n", 200),
            (b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            (b"GET / HTTP/1.0\r\n\r\n", 200),
            (b"GET http://unix.socket/1.0 HTTP/1.1\r\n\r\n", 200),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", 200),
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n A: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA : b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA(b: c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n: c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\0c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 400),
            (b"GET /\0 HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / FOO/1.1\r\n\r\n", 400),
            (b"GET / http/1.1\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1 \r\n\r\n", 400),
            (b"GET\r\n\r\n", 400),
            (b"G@T / HTTP/1.1\r\n\r\n", 400),
            (b"GET noslash HTTP/1.1\r\n\r\n", 400),
            (b"GET /a%zz HTTP/1.1\r\n\r\n", 400),
            (b"GET /a%ff HTTP/1.1\r\n\r\n", 400),
            (b"GET /a%00 HTTP/1.1\r\n\r\n", 400),
            (b"GET /?a=%g0 HTTP/1.1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nxx", 200),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nExpect: something\r\n\r\n", 417),
            (b"GET / HTTP/1.1\r\nH: 1\r\nH: 2\r\nH: 3\r\nH: 4\r\nH: 5\r\nH: 6\r\nH: 7\r\nH: 8\r\nH: 9\r\nH: 10\r\nH: 11\r\n\r\n", 431),
            (b"GET / HTTP/1.1\r\nHost: x", 400),
        ];
        for (input, want) in cases {
            let out = run(input);
            assert_eq!(
                status_of(&out),
                *want,
                "input {:?} gave {out:?}",
                String::from_utf8_lossy(input)
            );
            if *want != 200 {
                assert!(
                    out.contains("Connection: close\r\n"),
                    "error must close: {out:?}"
                );
                assert_error_envelope(&out, *want);
            }
        }
        // Nothing at all: silent close.
        assert_eq!(run(b""), "");
    }

    #[test]
    fn path_and_query_decoding() {
        let out = run(
            b"GET /1.0/instances/a%20b%2Fc?recursion=1&filter=a+b%2Bc&flag&=x HTTP/1.1\r\n\r\n",
        );
        assert!(
            out.ends_with("GET /1.0/instances/a b/c [recursion=1|filter=a b+c|flag=|=x] "),
            "{out}"
        );
        assert_eq!(percent_decode("a+b%41", false).as_deref(), Some("a+bA"));
        assert_eq!(percent_decode("a+b%41", true).as_deref(), Some("a bA"));
        assert_eq!(percent_decode("%4", true), None);
        assert_eq!(percent_decode("%", true), None);
        assert_eq!(percent_decode("%C3%A9", true).as_deref(), Some("é"));
        assert_eq!(percent_encode("a b/é", true), "a%20b/%C3%A9");
        assert_eq!(
            percent_decode(&percent_encode("x?&=+ /y", false), false).as_deref(),
            Some("x?&=+ /y")
        );
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

    #[test]
    fn oversized_head_is_431() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 5000));
        big.extend_from_slice(b"\r\n\r\n");
        let out = run(&big);
        assert_eq!(status_of(&out), 431, "{out}");
        assert_error_envelope(&out, 431);
        // A huge request line with no end at all.
        let out = run(&vec![b'A'; 100_000]);
        assert_eq!(status_of(&out), 431);
        assert_error_envelope(&out, 431);
    }

    #[test]
    fn bodies_content_length_and_chunked() {
        let out = run(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert!(out.ends_with("POST /x [] hello"), "{out}");
        let out = run(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: yes\r\n\r\n");
        assert!(out.ends_with("POST /x [] hello world"), "{out}");
        // LF-only chunk lines are tolerated.
        let out = run(b"POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n2\nab\n0\n\n");
        assert!(out.ends_with("POST /x [] ab"), "{out}");
        // Chunked response for an unknown-length body.
        let out = run(b"POST /stream HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
        assert!(
            out.ends_with("\r\n12\r\nPOST /stream [] hi\r\n0\r\n\r\n"),
            "{out}"
        );
        // HTTP/1.0 cannot take chunked: the body runs to the close.
        let out = run(b"POST /stream HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi");
        assert!(
            out.contains("Connection: close\r\n") && out.ends_with("\r\n\r\nPOST /stream [] hi"),
            "{out}"
        );
    }

    #[test]
    fn bad_chunks_are_400() {
        for body in [
            &b"fffffffffffffffff\r\n"[..],
            b"ffffffffffffffff\r\n",
            b"zz\r\nab\r\n0\r\n\r\n",
            b"\r\n",
            b"2\r\nabc\r\n0\r\n\r\n",
            b"-1\r\n",
            b"0\r\nBad Trailer\r\n\r\n",
        ] {
            let mut input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(body);
            let out = run(&input);
            assert_eq!(
                status_of(&out),
                400,
                "{:?} gave {out}",
                String::from_utf8_lossy(body)
            );
            assert!(out.contains("Connection: close"));
            assert_error_envelope(&out, 400);
        }
        // A chunk-size line longer than allowed.
        let mut input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        input.extend(std::iter::repeat_n(b'e', 10_000));
        assert_eq!(status_of(&run(&input)), 400);
    }

    #[test]
    fn pipelined_keep_alive_head_and_close() {
        let out = run(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nzGET /never HTTP/1.1\r\n\r\n");
        let responses: Vec<&str> = out.split("HTTP/1.1 ").filter(|s| !s.is_empty()).collect();
        assert_eq!(responses.len(), 3, "{out}");
        assert!(responses[0].ends_with("GET /a [] "));
        // HEAD: length announced, no body.
        assert!(
            responses[1].contains("Content-Length: 11\r\n") && responses[1].ends_with("\r\n\r\n"),
            "{out}"
        );
        assert!(
            responses[2].contains("Connection: close\r\n")
                && responses[2].ends_with("POST /c [] z")
        );
        // HTTP/1.0 keep-alive.
        let out = run(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /c HTTP/1.0\r\n\r\n");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert!(out.contains("Connection: keep-alive\r\n"));
        // Unread body is drained so the next request still parses.
        let out = run(
            b"POST /noread HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /after HTTP/1.1\r\n\r\n",
        );
        assert!(out.ends_with("GET /after [] "), "{out}");
    }

    #[test]
    fn head_keeps_handler_length_and_status_without_body() {
        let handler = |req: &mut Request| -> Response {
            match req.path.as_str() {
                "/len" => Response::new(200).header("Content-Length", "1234"),
                "/nc" => Response::new(204).body(Body::Bytes(b"dropped".to_vec())),
                _ => Response::new(200).body(Body::Reader(
                    Box::new(io::Cursor::new(b"xyz".to_vec())),
                    None,
                )),
            }
        };
        let s = SliceStream::new(
            b"HEAD /len HTTP/1.1\r\n\r\nGET /nc HTTP/1.1\r\n\r\nHEAD /chunk HTTP/1.1\r\n\r\n"
                .to_vec(),
        );
        let out = s.output.clone();
        serve_connection(Box::new(s), &small_limits(), &handler);
        let out = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
        );
    }

    #[test]
    fn handler_panic_is_500() {
        let out = run(b"GET /panic HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(status_of(&out), 500);
        assert!(out.contains("Connection: close"));
        assert_error_envelope(&out, 500);
        assert_eq!(out.matches("HTTP/1.1").count(), 1);
    }

    fn spawn_server(limits: Limits) -> (UnixStream, thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || serve_connection(Box::new(b), &limits, &echo));
        (a, t)
    }

    #[test]
    fn client_keep_alive_and_chunked_both_ways() {
        let (mut c, t) = spawn_server(Limits::default());
        {
            let mut r = client::request(&mut c, "GET", "/one?x=1", &[], Body::Empty).unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-type"), Some("text/plain"));
            let mut s = String::new();
            r.body.read_to_string(&mut s).unwrap();
            assert_eq!(s, "GET /one [x=1] ");
        }
        {
            let body = Body::Reader(Box::new(io::Cursor::new(vec![b'q'; 100_000])), None);
            let mut r = client::request(
                &mut c,
                "POST",
                "/stream",
                &[("Host".into(), "h".into())],
                body,
            )
            .unwrap();
            assert_eq!(r.header("transfer-encoding"), Some("chunked"));
            let mut s = String::new();
            r.body.read_to_string(&mut s).unwrap();
            assert_eq!(s.len(), "POST /stream [] ".len() + 100_000);
        }
        {
            let body = Body::Reader(Box::new(io::Cursor::new(b"abc".to_vec())), Some(3));
            let mut r = client::request(&mut c, "PUT", "/three", &[], body).unwrap();
            let mut s = String::new();
            r.body.read_to_string(&mut s).unwrap();
            assert_eq!(s, "PUT /three [] abc");
        }
        {
            let mut r = client::request(&mut c, "HEAD", "/four", &[], Body::Empty).unwrap();
            let mut s = String::new();
            r.body.read_to_string(&mut s).unwrap();
            assert_eq!((r.status, s.as_str()), (200, ""));
        }
        {
            let mut r = client::request(
                &mut c,
                "GET",
                "/five",
                &[("Connection".into(), "close".into())],
                Body::Empty,
            )
            .unwrap();
            let mut s = String::new();
            r.body.read_to_string(&mut s).unwrap();
            assert_eq!(s, "GET /five [] ");
        }
        t.join().unwrap();
        assert!(client::request(&mut c, "GET", "/", &[], Body::Empty).is_err());
        assert!(client::request(&mut c, "GET", "/a b", &[], Body::Empty).is_err());
    }

    #[test]
    fn client_reads_to_eof_and_skips_100() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let _ = b.read(&mut buf).unwrap();
            b.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nrest of it").unwrap();
        });
        let mut r = client::request(&mut a, "GET", "/", &[], Body::Empty).unwrap();
        assert_eq!(r.status, 404);
        let mut s = String::new();
        r.body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "rest of it");
        t.join().unwrap();
    }

    #[test]
    fn slowloris_is_cut_off_by_head_timeout() {
        // The head timeout (400 ms here) bounds the whole head, not each read: a client that
        // trickles a byte every 20 ms is answered 408 while it is still trickling. The writer
        // keeps going for 30 s and the read waits up to 20 s, both far past the timeout, so a
        // per-read timeout (never firing while bytes arrive) fails this without timing anything.
        let (mut c, t) = spawn_server(small_limits());
        let start = Instant::now();
        let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let mut c = c.try_clone().unwrap();
            let gave_up = gave_up.clone();
            thread::spawn(move || {
                for b in b"GET / HTTP/1.1\r\nX-Slow: "
                    .iter()
                    .chain(std::iter::repeat(&b'a'))
                {
                    if c.write_all(&[*b]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                    if start.elapsed() > Duration::from_secs(30) {
                        gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                }
            })
        };
        let mut out = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(
            !gave_up.load(std::sync::atomic::Ordering::SeqCst),
            "the 408 came only after the client stopped sending"
        );
        t.join().unwrap();
        let _ = c.shutdown(std::net::Shutdown::Both);
        writer.join().unwrap();
    }

    #[test]
    fn idle_keep_alive_closes_silently() {
        let (mut c, t) = spawn_server(small_limits());
        {
            let mut r = client::request(&mut c, "GET", "/", &[], Body::Empty).unwrap();
            io::copy(&mut r.body, &mut io::sink()).unwrap();
        }
        let start = Instant::now();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(300));
        t.join().unwrap();
    }

    #[test]
    fn body_read_timeout_is_408() {
        let (mut c, t) = spawn_server(small_limits());
        c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_error_envelope(&String::from_utf8_lossy(&out), 408);
        t.join().unwrap();
    }

    #[test]
    fn expect_100_continue() {
        let (mut c, t) = spawn_server(Limits::default());
        c.write_all(b"POST /e HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 25];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"data").unwrap();
        let mut r = BufReader::new(&mut c);
        let head = client::read_head(&mut r, 4096).unwrap();
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let mut body = [0u8; 15];
        r.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"POST /e [] data");
        drop(r);
        // Handler that never reads: no 100, response closes the connection.
        c.write_all(b"POST /noread HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n")
                && out.contains("Connection: close")
                && out.ends_with("skipped"),
            "{out}"
        );
        t.join().unwrap();
    }

    /// A tiny deterministic PRNG for the mutation test (no crate).
    pub(crate) struct XorShift(pub u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Mutate `seed` a few random ways (bit flips, byte insert/delete, splices of interesting
    /// tokens, truncation).
    pub(crate) fn mutate(rng: &mut XorShift, seed: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
        let mut d = seed.to_vec();
        for _ in 0..1 + rng.below(6) {
            match rng.below(7) {
                0 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    d[i] ^= 1 << rng.below(8);
                }
                1 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    d[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(d.len() + 1);
                    d.insert(i, rng.next() as u8);
                }
                3 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    let n = rng.below(d.len() - i).min(16);
                    d.drain(i..i + n);
                }
                4 => {
                    let i = rng.below(d.len() + 1);
                    let t = tokens[rng.below(tokens.len())];
                    d.splice(i..i, t.iter().copied());
                }
                5 => {
                    let n = rng.below(d.len() + 1);
                    d.truncate(n);
                }
                _ => {
                    if !d.is_empty() {
                        let a = rng.below(d.len());
                        let b = rng.below(d.len());
                        let (lo, hi) = (a.min(b), a.max(b));
                        let copy = d[lo..hi].to_vec();
                        let at = rng.below(d.len() + 1);
                        d.splice(at..at, copy);
                    }
                }
            }
        }
        d
    }

    pub(crate) fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(target);
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            out.push(std::fs::read(p).unwrap());
        }
        assert!(!out.is_empty(), "empty corpus {dir:?}");
        out
    }

    #[test]
    fn fuzz_http_request_deterministic() {
        let seeds = corpus("http_request");
        let tokens: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b"\0",
            b" ",
            b":",
            b"%",
            b"%zz",
            b"?",
            b"&",
            b"=",
            b"+",
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: 18446744073709551616\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\n\r\n",
            b"Expect: 100-continue\r\n",
            b"Connection: close\r\n",
            b"Upgrade: websocket\r\n",
            b"HTTP/1.0",
            b"HTTP/9.9",
            b"\x81\x85",
            b"\x88\x80",
            b"GET /stream HTTP/1.1\r\n\r\n",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for s in &seeds {
            fuzz_parse_request(s);
        }
        let iters: usize = std::env::var("BIVY_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        for _ in 0..iters {
            let seed = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed, tokens);
            fuzz_parse_request(&input);
        }
    }
}
