//! HTTP/1.1 client side: one request at a time, keep-alive capable, over any byte stream
//! ([`Conn`]): a [`Stream`](super::Stream), or the TLS stream `crate::tls` wraps around TCP.

use std::io::{self, BufRead, BufReader, Read, Write};

use super::body::{body_framing, write_streamed, Decoder, Framing};
use super::parse::{head_lines, is_tchar, parse_header_lines, HeadScanner};
use super::Body;

/// Any bidirectional byte stream a request can run on: every [`super::Stream`], a TLS stream,
/// a boxed `dyn Conn` when the kind of connection is only known at run time.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send + ?Sized> Conn for T {}

/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 1 << 20;
/// Most 1xx interim responses skipped before the final one.
const MAX_INTERIM: usize = 16;

/// A response head plus its body stream.
pub struct ClientResponse<'a> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn io::Read + 'a>,
}

impl ClientResponse<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn invalid_input(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn bad_data(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Read a message head (status line and headers) from `r`, at most `max` bytes.
pub(crate) fn read_head(r: &mut dyn BufRead, max: usize) -> io::Result<Vec<u8>> {
    let mut sc = HeadScanner::default();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        let (used, done) = sc.feed(avail);
        r.consume(used);
        if done {
            return Ok(sc.head);
        }
        if sc.total > max {
            return Err(bad_data("response head too large"));
        }
    }
}

/// Parse a response head into (status, headers).
pub(crate) fn parse_response_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    if head.contains(&0) {
        return Err(bad_data("NUL in response head"));
    }
    let lines = head_lines(head).map_err(bad_data)?;
    let (first, rest) = lines
        .split_first()
        .ok_or_else(|| bad_data("empty response head"))?;
    let first = std::str::from_utf8(first).map_err(|_| bad_data("malformed status line"))?;
    let mut parts = first.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad_data("malformed status line"));
    }
    let code = parts.next().unwrap_or("");
    if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad_data("malformed status code"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| bad_data("malformed status code"))?;
    if status < 100 {
        return Err(bad_data("malformed status code"));
    }
    let headers = parse_header_lines(rest).map_err(bad_data)?;
    Ok((status, headers))
}

struct ClientBody<'a, S: ?Sized> {
    r: BufReader<&'a mut S>,
    dec: Decoder,
}

impl<S: Read + ?Sized> Read for ClientBody<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.dec.read(&mut self.r, buf)
    }
}

fn check_field(s: &str, what: &str) -> io::Result<()> {
    if s.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0) {
        return Err(invalid_input(&format!("invalid character in {what}")));
    }
    Ok(())
}

/// Send one request (`path` includes the query) and read the response head. `Host` is added when
/// missing; a `Body::Reader` without length is sent chunked.
pub fn request<'a, S: Read + Write + ?Sized + 'a>(
    stream: &'a mut S,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Body,
) -> io::Result<ClientResponse<'a>> {
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(invalid_input("invalid method"));
    }
    if path.is_empty() || path.bytes().any(|c| c <= 0x20 || c == 0x7f) {
        return Err(invalid_input("invalid request path"));
    }
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let mut has_host = false;
    for (k, v) in headers {
        if k.is_empty() || !k.bytes().all(is_tchar) {
            return Err(invalid_input("invalid header name"));
        }
        check_field(v, "header value")?;
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        has_host |= k.eq_ignore_ascii_case("host");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_host {
        head.push_str("Host: unix.socket\r\n");
    }
    match &body {
        Body::Empty => {
            if matches!(method, "POST" | "PUT" | "PATCH") {
                head.push_str("Content-Length: 0\r\n");
            }
        }
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Reader(_, Some(n)) => head.push_str(&format!("Content-Length: {n}\r\n")),
        Body::Reader(_, None) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    // A server may answer before it read the whole body (an error) and close: the write then
    // fails, but its answer is waiting to be read, and it is what the user must see.
    let mut w = WriteTracker {
        inner: &mut *stream,
        failed: false,
    };
    if let Err(e) = send_body(&mut w, head, body) {
        if !w.failed {
            return Err(e);
        }
        return match read_response(stream, method) {
            Ok(resp) => Ok(resp),
            Err(_) => Err(e),
        };
    }
    read_response(stream, method)
}

/// A writer that remembers whether a write to the peer failed (as opposed to the body's reader).
struct WriteTracker<'s, S: ?Sized> {
    inner: &'s mut S,
    failed: bool,
}

impl<S: Write + ?Sized> Write for WriteTracker<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| self.failed = true)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

/// Write the request head and body.
fn send_body(stream: &mut dyn Write, head: String, body: Body) -> io::Result<()> {
    let chunked = matches!(body, Body::Reader(_, None));
    match body {
        Body::Empty => stream.write_all(head.as_bytes())?,
        Body::Bytes(b) => {
            let mut all = head.into_bytes();
            all.extend_from_slice(&b);
            stream.write_all(&all)?;
        }
        Body::Reader(mut r, Some(n)) => {
            stream.write_all(head.as_bytes())?;
            let copied = io::copy(&mut (&mut r).take(n), stream)?;
            if copied != n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "request body shorter than its length",
                ));
            }
        }
        Body::Reader(mut r, None) => {
            debug_assert!(chunked);
            stream.write_all(head.as_bytes())?;
            write_streamed(&mut r, stream, true, false)?;
        }
    }
    stream.flush()
}

/// Read the response head (past interim 1xx responses) and set up its body.
fn read_response<'a, S: Read + ?Sized + 'a>(
    stream: &'a mut S,
    method: &str,
) -> io::Result<ClientResponse<'a>> {
    let mut r = BufReader::with_capacity(16 * 1024, stream);
    let mut interim = 0;
    let (status, headers) = loop {
        let raw = read_head(&mut r, MAX_RESPONSE_HEAD)?;
        let (status, headers) = parse_response_head(&raw)?;
        if (100..200).contains(&status) && status != 101 {
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(bad_data("too many interim responses"));
            }
            continue;
        }
        break (status, headers);
    };
    let framing = if method == "HEAD" || status == 204 || status == 304 || status == 101 {
        Framing::None
    } else {
        match body_framing(&headers) {
            Ok(Framing::None)
                if !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-length")) =>
            {
                Framing::Eof
            }
            Ok(f) => f,
            Err((_, msg)) => return Err(bad_data(msg)),
        }
    };
    Ok(ClientResponse {
        status,
        headers,
        body: Box::new(ClientBody {
            r,
            dec: Decoder::new(framing),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;

    #[test]
    fn client_reads_to_eof_and_skips_100() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let _ = b.read(&mut buf).unwrap();
            b.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nrest of it").unwrap();
        });
        let mut r = request(&mut a, "GET", "/", &[], Body::Empty).unwrap();
        assert_eq!(r.status, 404);
        let mut s = String::new();
        r.body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "rest of it");
        t.join().unwrap();
    }
}
