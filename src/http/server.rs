//! The server side of a connection: [`serve_connection`] reads request heads under the
//! [`Limits`] (size, idle wait, whole-head deadline), hands each [`Request`] to the handler with a
//! body reader that answers `Expect: 100-continue` on first read, drains what the handler left,
//! answers a broken body itself, hands the raw connection to an upgrade, and keeps the
//! connection alive when the protocol allows.
//!
//! A handler panic becomes a 500 and closes the connection; nothing here panics on input.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::body::{body_framing, Decoder, Framing, MAX_DRAIN};
use super::parse::{has_token, parse_request_head, HeadScanner};
use super::write::{error_envelope, write_head, write_response, write_simple};
use super::{PrefixedStream, Request, Response, Stream};

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

/// Serve one connection until it closes: parse requests, call `handler`, write responses,
/// honour keep-alive, answer malformed or oversized input with 400/408/413/431 and close.
pub fn serve_connection(
    stream: Box<dyn Stream>,
    limits: &Limits,
    handler: &(dyn Fn(&mut Request) -> Response + Sync),
) {
    serve_loop(stream, limits, handler)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
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

fn lock(a: &Arc<Mutex<Shared>>) -> std::sync::MutexGuard<'_, Shared> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long, and how much, a closing connection still reads (and drops) what the client sends.
const LINGER_TIME: Duration = Duration::from_secs(2);

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
    if serve_requests(&shared, limits, handler) == End::Close {
        linger(&mut lock(&shared).r);
    }
}

/// How a connection's request loop ended.
#[derive(PartialEq, Eq)]
enum End {
    /// The server closes it (after its last answer).
    Close,
    /// A websocket took the stream over.
    Upgraded,
}

/// A lingering close: we may have answered (an error, say) before the client finished sending
/// its request. Closing at once would reset the connection and the client could lose our answer
/// (over TCP, or through any proxy), so say we are done sending, then read and drop what still
/// comes, bounded in time and size, before the socket goes.
fn linger(r: &mut BufReader<Box<dyn Stream>>) {
    let s = r.get_mut();
    let _ = s.flush();
    if s.shutdown_write().is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 8192];
    let mut total = 0u64;
    while total < MAX_DRAIN {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n as u64,
        }
    }
}

fn serve_requests(
    shared: &Arc<Mutex<Shared>>,
    limits: &Limits,
    handler: &(dyn Fn(&mut Request) -> Response + Sync),
) -> End {
    let mut first = true;
    loop {
        let raw = {
            let mut s = lock(shared);
            match read_request_head(&mut s, limits, first) {
                HeadOutcome::Head(h) => h,
                HeadOutcome::Idle => return End::Close,
                HeadOutcome::Fail(status, msg) => {
                    let _ =
                        s.r.get_ref()
                            .set_write_timeout(Some(Duration::from_secs(5)));
                    let _ = write_simple(s.r.get_mut(), status, msg);
                    return End::Close;
                }
            }
        };
        first = false;
        let head = match parse_request_head(&raw, limits)
            .and_then(|h| body_framing(&h.headers).map(|f| (h, f)))
        {
            Ok(h) => h,
            Err((status, msg)) => {
                let mut s = lock(shared);
                let _ =
                    s.r.get_ref()
                        .set_write_timeout(Some(Duration::from_secs(5)));
                let _ = write_simple(s.r.get_mut(), status, msg);
                return End::Close;
            }
        };
        let (head, framing) = head;
        if framing == Framing::Eof {
            // Requests cannot be delimited by closing the connection.
            let mut s = lock(shared);
            let _ = write_simple(s.r.get_mut(), 411, "request body length required");
            return End::Close;
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
                let mut s = lock(shared);
                let _ = write_simple(s.r.get_mut(), 417, "unsupported expectation");
                return End::Close;
            }
        }
        {
            let mut s = lock(shared);
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
        let mut s = lock(shared);
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
                match s.dec.drain(&mut s.r, MAX_DRAIN) {
                    Ok(true) => {}
                    Ok(false) => keep = false,
                    Err(e) => s.body_err = Some(e.kind()),
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
                _ => return End::Close,
            };
            let _ = write_simple(
                s.r.get_mut(),
                status,
                "malformed or incomplete request body",
            );
            return End::Close;
        }
        if resp.status == 101 {
            if let Some(up) = resp.upgrade.take() {
                if write_head(s.r.get_mut(), 101, &resp.headers, "")
                    .and_then(|_| s.r.get_mut().flush())
                    .is_err()
                {
                    return End::Close;
                }
                let leftover = s.r.buffer().to_vec();
                // The websocket takes the connection; an empty stream stays behind.
                let r = std::mem::replace(
                    &mut s.r,
                    BufReader::new(Box::new(super::stream::SliceStream::new(Vec::new()))),
                );
                drop(s);
                let stream = PrefixedStream::wrap(leftover, r.into_inner());
                let _ = stream.set_read_timeout(None);
                let _ = stream.set_write_timeout(None);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || up(stream)));
                return End::Upgraded;
            }
            keep = false;
        }
        let w = s.r.get_mut();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_response(w, resp, is_head, http11, keep)
        }));
        match res {
            Ok(Ok(true)) => {}
            _ => return End::Close,
        }
    }
}

#[cfg(test)]
mod tests;
