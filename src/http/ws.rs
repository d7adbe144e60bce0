//! WebSocket (RFC 6455): handshake helpers and framing, server and client roles.
//! Ping is answered automatically by the receiver; fragmented messages are reassembled;
//! frames above the size limit are refused with close code 1009.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use ring::rand::SecureRandom;

use super::{has_token, Request, Response, Stream};

/// Largest message (after reassembly) the receiver accepts: 16 MiB. Larger is closed with 1009.
pub const MAX_MESSAGE: usize = 16 << 20;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

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

// ---------------------------------------------------------------------------------------------
// Base64 (RFC 4648, standard alphabet, padded).
// ---------------------------------------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        out.push(char::from(B64[(n >> 18) as usize & 63]));
        out.push(char::from(B64[(n >> 12) as usize & 63]));
        out.push(if c.len() > 1 {
            char::from(B64[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            char::from(B64[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

/// Decode standard padded base64 (strict: length a multiple of 4, padding only at the end,
/// unused bits zero). `None` if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let groups = b.len() / 4;
    for (gi, g) in b.chunks(4).enumerate() {
        let last = gi + 1 == groups;
        let pad = g.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &g[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Reject non-canonical encodings (bits set in the padding).
        if (pad == 1 && bytes[2] != 0) || (pad == 2 && (bytes[1] != 0 || bytes[2] != 0)) {
            return None;
        }
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64_encode(ctx.finish().as_ref())
}

fn bad_request(msg: &str) -> Response {
    Response::json(
        400,
        super::error_envelope(400, &format!("websocket handshake: {msg}")),
    )
    .header("Sec-WebSocket-Version", "13")
}

/// The 101 response for a valid upgrade request (`Sec-WebSocket-Accept` computed), or a 400.
/// The caller sets `Response::upgrade` on it. The Origin header is deliberately not checked
/// (pylxd's ws4py sends `Origin: ws+unix://localhost`).
pub fn accept(req: &Request) -> Response {
    if req.method != "GET" {
        return bad_request("method must be GET");
    }
    if !req
        .header("upgrade")
        .is_some_and(|v| has_token(v, "websocket"))
    {
        return bad_request("missing Upgrade: websocket");
    }
    if !req
        .header("connection")
        .is_some_and(|v| has_token(v, "upgrade"))
    {
        return bad_request("missing Connection: upgrade");
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return bad_request("unsupported Sec-WebSocket-Version");
    }
    let key = match req.header("sec-websocket-key") {
        Some(k) => k.trim(),
        None => return bad_request("missing Sec-WebSocket-Key"),
    };
    if base64_decode(key).map(|k| k.len()) != Some(16) {
        return bad_request("invalid Sec-WebSocket-Key");
    }
    Response::new(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", &accept_key(key))
}

// ---------------------------------------------------------------------------------------------
// Framing.
// ---------------------------------------------------------------------------------------------

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

struct SenderState {
    stream: Box<dyn Stream>,
    closed: bool,
}

struct SenderInner {
    role: Role,
    state: Mutex<SenderState>,
    rng: ring::rand::SystemRandom,
}

/// Sending half; cheap to clone, safe to use from several threads.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

impl Sender {
    fn new(stream: Box<dyn Stream>, role: Role) -> Sender {
        Sender {
            inner: Arc::new(SenderInner {
                role,
                state: Mutex::new(SenderState {
                    stream,
                    closed: false,
                }),
                rng: ring::rand::SystemRandom::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SenderState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write one frame as described (`first_byte` is FIN, RSV and opcode; the payload is masked
    /// with `mask` when given), with no role or state checks. For tests of the peer's receiver.
    #[doc(hidden)]
    pub fn send_raw_frame(
        &self,
        first_byte: u8,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) -> io::Result<()> {
        let mut st = self.lock();
        write_frame(&mut *st.stream, first_byte, payload, mask)
    }

    fn mask_key(&self) -> io::Result<Option<[u8; 4]>> {
        match self.inner.role {
            Role::Server => Ok(None),
            Role::Client => {
                let mut k = [0u8; 4];
                self.inner
                    .rng
                    .fill(&mut k)
                    .map_err(|_| io::Error::other("random source failed"))?;
                Ok(Some(k))
            }
        }
    }

    fn send(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = self.mask_key()?;
        let mut st = self.lock();
        if st.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "websocket already closed",
            ));
        }
        write_frame(&mut *st.stream, 0x80 | opcode, payload, mask)
    }

    pub fn send_text(&self, s: &str) -> io::Result<()> {
        self.send(OP_TEXT, s.as_bytes())
    }
    pub fn send_binary(&self, b: &[u8]) -> io::Result<()> {
        self.send(OP_BINARY, b)
    }
    /// Send a close frame with this code (no-op if already closed).
    pub fn close(&self, code: u16) -> io::Result<()> {
        let mask = self.mask_key()?;
        let mut st = self.lock();
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        write_frame(&mut *st.stream, 0x80 | OP_CLOSE, &code.to_be_bytes(), mask)
    }
    /// Whether a close frame has been sent.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
    pub fn ping(&self) -> io::Result<()> {
        self.send(OP_PING, b"")
    }
    fn pong(&self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_PONG, payload)
    }
    /// Shut the underlying connection down (wakes a blocked receiver).
    pub fn shutdown(&self) {
        let st = self.lock();
        let _ = st.stream.shutdown_both();
    }
}

fn write_frame(
    w: &mut dyn Write,
    first_byte: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(14);
    head.push(first_byte);
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        head.push(mbit | len as u8);
    } else if len <= 0xffff {
        head.push(mbit | 126);
        head.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        head.push(mbit | 127);
        head.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            head.extend_from_slice(&k);
            let mut all = head;
            all.reserve(len);
            all.extend(payload.iter().enumerate().map(|(i, &b)| b ^ k[i & 3]));
            w.write_all(&all)?;
        }
        None if len <= 64 * 1024 => {
            head.extend_from_slice(payload);
            w.write_all(&head)?;
        }
        None => {
            w.write_all(&head)?;
            w.write_all(payload)?;
        }
    }
    w.flush()
}

/// Receiving half.
pub struct Receiver {
    r: BufReader<Box<dyn Stream>>,
    sender: Sender,
    role: Role,
    /// Set once the connection is finished (closed or failed); later calls return an error.
    done: bool,
}

fn proto_err(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {msg}"))
}

fn read_exact_buf(r: &mut dyn BufRead, out: &mut [u8]) -> io::Result<()> {
    r.read_exact(out)
}

impl Receiver {
    /// Fail the connection: send a close frame with `code` (best effort) and return the error.
    fn fail(&mut self, code: u16, msg: &str) -> io::Error {
        self.done = true;
        let _ = self.sender.close(code);
        proto_err(msg)
    }

    /// The next data or close message.
    pub fn recv(&mut self) -> io::Result<Message> {
        if self.done {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "websocket closed",
            ));
        }
        let mut msg: Vec<u8> = Vec::new();
        let mut msg_op: Option<u8> = None;
        loop {
            let mut h = [0u8; 2];
            if let Err(e) = read_exact_buf(&mut self.r, &mut h) {
                self.done = true;
                return Err(e);
            }
            let fin = h[0] & 0x80 != 0;
            if h[0] & 0x70 != 0 {
                return Err(self.fail(1002, "reserved bits set"));
            }
            let op = h[0] & 0x0f;
            let masked = h[1] & 0x80 != 0;
            let mut len = u64::from(h[1] & 0x7f);
            match (self.role, masked) {
                (Role::Server, false) => return Err(self.fail(1002, "unmasked frame from client")),
                (Role::Client, true) => return Err(self.fail(1002, "masked frame from server")),
                _ => {}
            }
            let control = op & 0x8 != 0;
            match op {
                OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
                _ => return Err(self.fail(1002, "unknown opcode")),
            }
            if control && (!fin || len > 125) {
                return Err(self.fail(1002, "invalid control frame"));
            }
            if len == 126 {
                let mut b = [0u8; 2];
                if let Err(e) = read_exact_buf(&mut self.r, &mut b) {
                    self.done = true;
                    return Err(e);
                }
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                if let Err(e) = read_exact_buf(&mut self.r, &mut b) {
                    self.done = true;
                    return Err(e);
                }
                len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(self.fail(1002, "invalid frame length"));
                }
            }
            if len > (MAX_MESSAGE - msg.len()) as u64 {
                return Err(self.fail(1009, "message too big"));
            }
            let mut key = [0u8; 4];
            if masked {
                if let Err(e) = read_exact_buf(&mut self.r, &mut key) {
                    self.done = true;
                    return Err(e);
                }
            }
            // Checked above: len <= MAX_MESSAGE.
            let len = len as usize;
            match (op, msg_op) {
                (OP_CONT, None) => return Err(self.fail(1002, "continuation without a message")),
                (OP_TEXT | OP_BINARY, Some(_)) => {
                    return Err(self.fail(1002, "new message inside a fragmented one"))
                }
                _ => {}
            }
            let mut payload = std::mem::take(&mut msg);
            let start = payload.len();
            // Grow with the data actually received, so a header announcing a huge frame costs
            // nothing until the bytes arrive.
            match (&mut self.r).take(len as u64).read_to_end(&mut payload) {
                Ok(n) if n == len => {}
                Ok(_) => {
                    self.done = true;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a frame",
                    ));
                }
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
            if masked {
                for (i, b) in payload[start..].iter_mut().enumerate() {
                    *b ^= key[i & 3];
                }
            }
            if control {
                let data = payload.split_off(start);
                msg = payload;
                match op {
                    OP_PING => {
                        let _ = self.sender.pong(&data);
                    }
                    OP_PONG => {}
                    _ => return self.on_close(&data),
                }
                continue;
            }
            msg = payload;
            if op != OP_CONT {
                msg_op = Some(op);
            }
            if !fin {
                continue;
            }
            return match msg_op {
                Some(OP_TEXT) => match String::from_utf8(msg) {
                    Ok(s) => Ok(Message::Text(s)),
                    Err(_) => Err(self.fail(1007, "invalid UTF-8 in text message")),
                },
                _ => Ok(Message::Binary(msg)),
            };
        }
    }

    fn on_close(&mut self, data: &[u8]) -> io::Result<Message> {
        let code = match data.len() {
            0 => None,
            1 => return Err(self.fail(1002, "invalid close payload")),
            _ => {
                let c = u16::from_be_bytes([data[0], data[1]]);
                if std::str::from_utf8(&data[2..]).is_err() {
                    return Err(self.fail(1007, "invalid UTF-8 in close reason"));
                }
                if !(1000..5000).contains(&c) || matches!(c, 1004..=1006 | 1015) {
                    return Err(self.fail(1002, "invalid close code"));
                }
                Some(c)
            }
        };
        self.done = true;
        let _ = self.sender.close(code.unwrap_or(1000));
        Ok(Message::Close(code))
    }

    /// A sender sharing this receiver's connection (used for automatic pong and close replies).
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }
}

/// Split an upgraded connection into its halves.
pub fn split(stream: Box<dyn Stream>, role: Role) -> io::Result<(Sender, Receiver)> {
    let w = stream.try_clone_stream()?;
    let sender = Sender::new(w, role);
    let recv = Receiver {
        r: BufReader::with_capacity(64 * 1024, stream),
        sender: sender.clone(),
        role,
        done: false,
    };
    Ok((sender, recv))
}

/// Client handshake on `stream` for `path` (with query); returns the halves on success.
pub fn connect(
    mut stream: Box<dyn Stream>,
    path: &str,
    headers: &[(String, String)],
) -> io::Result<(Sender, Receiver)> {
    if path.is_empty() || path.bytes().any(|c| c <= 0x20 || c == 0x7f) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid websocket path",
        ));
    }
    let mut raw = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| io::Error::other("random source failed"))?;
    let key = base64_encode(&raw);
    let mut head = format!("GET {path} HTTP/1.1\r\n");
    let mut has_host = false;
    for (k, v) in headers {
        if k.is_empty()
            || !k.bytes().all(super::is_tchar)
            || v.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid header",
            ));
        }
        has_host |= k.eq_ignore_ascii_case("host");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_host {
        head.push_str("Host: unix.socket\r\n");
    }
    head.push_str(&format!(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ));
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let mut r = BufReader::with_capacity(16 * 1024, stream);
    let raw_head = super::client::read_head(&mut r, 64 * 1024)?;
    let (status, rh) = super::client::parse_response_head(&raw_head)?;
    let find = |n: &str| {
        rh.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if status != 101 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("websocket handshake refused: HTTP {status}"),
        ));
    }
    if !find("upgrade").is_some_and(|v| has_token(v, "websocket"))
        || !find("connection").is_some_and(|v| has_token(v, "upgrade"))
    {
        return Err(proto_err("handshake response lacks Upgrade/Connection"));
    }
    if find("sec-websocket-accept").map(str::trim) != Some(accept_key(&key).as_str()) {
        return Err(proto_err(
            "handshake response has a wrong Sec-WebSocket-Accept",
        ));
    }
    let leftover = r.buffer().to_vec();
    let stream = super::PrefixedStream::wrap(leftover, r.into_inner());
    split(stream, Role::Client)
}

/// Fuzzing entry point: feed `data` as incoming frames to a receiver in both roles until it
/// fails or closes. Must never panic.
#[doc(hidden)]
pub fn fuzz_ws_frames(data: &[u8]) {
    for role in [Role::Server, Role::Client] {
        let s = super::SliceStream::new(data.to_vec());
        let Ok((_tx, mut rx)) = split(Box::new(s), role) else {
            continue;
        };
        for _ in 0..10_000 {
            match rx.recv() {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{serve_connection, Limits};
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn base64_rfc4648_vectors() {
        let v: &[(&str, &str)] = &[
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in v {
            assert_eq!(base64_encode(plain.as_bytes()), *enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)), Some(all));
        for bad in [
            "Zg=", "Zg===", "Z===", "Zh==", "Zm9=", "Zm=v", "Zg==Zg==", "Zm9v!A==", "Zm9\n",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn halves_are_thread_safe() {
        fn sender<T: Clone + Send + Sync + 'static>() {}
        fn receiver<T: Send + 'static>() {}
        sender::<Sender>();
        receiver::<Receiver>();
    }

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn ws_request(headers: &[(&str, &str)], method: &str) -> Request {
        Request::new(
            method.into(),
            "/ws".into(),
            vec![],
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Box::new(io::empty()),
        )
    }

    #[test]
    fn accept_validation() {
        let good = [
            ("Host", "unix.socket"),
            ("Origin", "ws+unix://localhost"),
            ("Upgrade", "WebSocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        let r = accept(&ws_request(&good, "GET"));
        assert_eq!(r.status, 101);
        assert!(r.headers.contains(&(
            "Sec-WebSocket-Accept".into(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
        )));
        assert_eq!(accept(&ws_request(&good, "POST")).status, 400);
        for (drop, replace) in [
            (2, None),
            (3, None),
            (4, None),
            (5, None),
            (3, Some(("Connection", "keep-alive"))),
            (5, Some(("Sec-WebSocket-Version", "8"))),
            (4, Some(("Sec-WebSocket-Key", "c2hvcnQ="))),
            (4, Some(("Sec-WebSocket-Key", "not base64 at all"))),
        ] {
            let mut h: Vec<(&str, &str)> = good.to_vec();
            h.remove(drop);
            if let Some(r) = replace {
                h.push(r);
            }
            assert_eq!(accept(&ws_request(&h, "GET")).status, 400, "{h:?}");
        }
    }

    /// Start an echo WebSocket server on one end of a socket pair; returns the other end.
    fn echo_server() -> (UnixStream, thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let handler = |req: &mut Request| {
                let mut resp = accept(req);
                if resp.status == 101 {
                    resp.upgrade = Some(Box::new(|s: Box<dyn Stream>| {
                        let (tx, mut rx) = split(s, Role::Server).unwrap();
                        loop {
                            match rx.recv() {
                                Ok(Message::Text(t)) => tx.send_text(&t).unwrap(),
                                Ok(Message::Binary(b)) => tx.send_binary(&b).unwrap(),
                                Ok(Message::Close(_)) | Err(_) => break,
                            }
                        }
                    }));
                }
                resp
            };
            serve_connection(Box::new(b), &Limits::default(), &handler);
        });
        (a, t)
    }

    #[test]
    fn end_to_end_echo() {
        let (c, t) = echo_server();
        let (tx, mut rx) =
            connect(Box::new(c), "/1.0/operations/x/websocket?secret=s", &[]).unwrap();
        tx.send_text("hello").unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Text("hello".into()));
        tx.send_binary(&[0, 1, 2, 255]).unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Binary(vec![0, 1, 2, 255]));
        tx.send_text("").unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Text(String::new()));
        let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
        tx.send_binary(&big).unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Binary(big));
        // Fragmented text with a ping in the middle (the server pongs; our receiver ignores it).
        tx.send_raw_frame(OP_TEXT, b"hel", Some([1, 2, 3, 4]))
            .unwrap();
        tx.ping().unwrap();
        tx.send_raw_frame(0x80 | OP_CONT, b"lo!", Some([9, 8, 7, 6]))
            .unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Text("hello!".into()));
        // Multi-byte UTF-8 split across fragments is fine.
        let s = "héllo wörld".as_bytes();
        tx.send_raw_frame(OP_TEXT, &s[..2], Some([0; 4])).unwrap();
        tx.send_raw_frame(0x80 | OP_CONT, &s[2..], Some([0; 4]))
            .unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Text("héllo wörld".into()));
        // Close handshake initiated by us: the server replies and returns Close.
        tx.close(1000).unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Close(Some(1000)));
        assert!(tx.send_text("late").is_err());
        assert!(rx.recv().is_err());
        t.join().unwrap();
    }

    #[test]
    fn connect_refused_and_bad_accept() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let _ = b.read(&mut buf).unwrap();
            b.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n").unwrap();
        });
        assert!(connect(Box::new(a), "/x", &[]).is_err());
        t.join().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            serve_connection(Box::new(b), &Limits::default(), &|_req: &mut Request| {
                Response::new(404)
            })
        });
        let e = connect(Box::new(a), "/x", &[]).err().unwrap();
        assert!(e.to_string().contains("404"), "{e}");
        t.join().unwrap();
    }

    /// A receiver over one end of a pair; the raw other end plays the peer.
    fn raw_pair(role: Role) -> (Sender, Receiver, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (tx, rx) = split(Box::new(a), role).unwrap();
        (tx, rx, b)
    }

    fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![first];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        f
    }

    fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    #[test]
    fn server_masking_ping_and_close() {
        let (_tx, mut rx, mut peer) = raw_pair(Role::Server);
        // RFC 6455 5.7 example: masked "Hello".
        peer.write_all(&[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ])
        .unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Text("Hello".into()));
        // Empty text frame.
        peer.write_all(&masked_frame(0x81, b"")).unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Text(String::new()));
        // Ping is answered with an unmasked pong carrying the payload.
        peer.write_all(&masked_frame(0x89, b"pi")).unwrap();
        peer.write_all(&masked_frame(0x8a, b"ignored pong"))
            .unwrap();
        peer.write_all(&masked_frame(0x82, &[7; 300])).unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Binary(vec![7; 300]));
        assert_eq!(read_n(&mut peer, 4), vec![0x8a, 0x02, b'p', b'i']);
        // Close: we reply with the same code and report it.
        peer.write_all(&masked_frame(0x88, &[0x03, 0xe9, b'b', b'y', b'e']))
            .unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Close(Some(1001)));
        assert_eq!(read_n(&mut peer, 4), vec![0x88, 0x02, 0x03, 0xe9]);
    }

    fn expect_fail(role: Role, input: &[u8], code: u16) {
        let (_tx, mut rx, mut peer) = raw_pair(role);
        peer.write_all(input).unwrap();
        let e = rx.recv().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let mut close = read_n(&mut peer, 2);
        assert_eq!(close[0], 0x88);
        if role == Role::Client {
            assert_eq!(close[1], 0x82, "client close must be masked");
            let m = read_n(&mut peer, 6);
            close = vec![m[4] ^ m[0], m[5] ^ m[1]];
        } else {
            assert_eq!(close[1], 0x02);
            close = read_n(&mut peer, 2);
        }
        assert_eq!(
            u16::from_be_bytes([close[0], close[1]]),
            code,
            "input {input:x?}"
        );
        assert!(rx.recv().is_err());
    }

    #[test]
    fn protocol_violations() {
        // Unmasked frame to a server.
        expect_fail(Role::Server, &[0x81, 0x02, b'h', b'i'], 1002);
        // Masked frame to a client.
        expect_fail(Role::Client, &masked_frame(0x81, b"hi"), 1002);
        // Reserved bits, bad opcodes.
        expect_fail(Role::Server, &masked_frame(0xc1, b"hi"), 1002);
        expect_fail(Role::Server, &masked_frame(0x83, b"hi"), 1002);
        expect_fail(Role::Server, &masked_frame(0x8b, b"hi"), 1002);
        // Control frames: too long, fragmented.
        expect_fail(Role::Server, &masked_frame(0x89, &[0; 126]), 1002);
        expect_fail(Role::Server, &masked_frame(0x09, b""), 1002);
        // Continuation without start; new message inside a fragmented one.
        expect_fail(Role::Server, &masked_frame(0x80, b"x"), 1002);
        let mut two = masked_frame(0x01, b"a");
        two.extend(masked_frame(0x81, b"b"));
        expect_fail(Role::Server, &two, 1002);
        // Invalid UTF-8 text and close reason.
        expect_fail(Role::Server, &masked_frame(0x81, &[0xff, 0xfe]), 1007);
        expect_fail(Role::Client, &[0x81, 0x02, 0xc3, 0x28], 1007);
        expect_fail(Role::Server, &masked_frame(0x88, &[0x03, 0xe8, 0xff]), 1007);
        expect_fail(Role::Server, &masked_frame(0x88, &[0x03]), 1002);
        expect_fail(Role::Server, &masked_frame(0x88, &[0x03, 0xed]), 1002);
        // Oversized: a single frame, and a fragmented message growing past the limit.
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&((MAX_MESSAGE as u64) + 1).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        expect_fail(Role::Server, &huge, 1009);
        let mut neg = vec![0x82, 0x7f];
        neg.extend_from_slice(&u64::MAX.to_be_bytes());
        expect_fail(Role::Client, &neg, 1002);
    }

    #[test]
    fn fragmented_message_over_limit() {
        let (_tx, mut rx, mut peer) = raw_pair(Role::Client);
        let writer = thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            let mut head = vec![0x02, 0x7f];
            head.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
            let mut cont = vec![0x00, 0x7f];
            cont.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
            let _ = peer.write_all(&head).and_then(|_| peer.write_all(&chunk));
            for _ in 0..17 {
                if peer
                    .write_all(&cont)
                    .and_then(|_| peer.write_all(&chunk))
                    .is_err()
                {
                    break;
                }
            }
            peer
        });
        let e = rx.recv().unwrap_err();
        assert!(e.to_string().contains("too big"), "{e}");
        rx.sender().shutdown();
        drop(writer.join().unwrap());
    }

    #[test]
    fn shutdown_wakes_blocked_receiver_and_senders_do_not_interleave() {
        let (tx, mut rx, mut peer) = raw_pair(Role::Server);
        let t = thread::spawn(move || rx.recv());
        thread::sleep(Duration::from_millis(50));
        // Many threads sending: every frame arrives whole.
        let mut hs = Vec::new();
        for i in 0..4u8 {
            let tx = tx.clone();
            hs.push(thread::spawn(move || {
                for _ in 0..50 {
                    tx.send_binary(&vec![i; 70_000]).unwrap();
                }
            }));
        }
        let reader = thread::spawn(move || {
            for _ in 0..200 {
                let h = read_n(&mut peer, 10);
                assert_eq!(&h[..2], &[0x82, 0x7f]);
                let n = u64::from_be_bytes(h[2..10].try_into().unwrap()) as usize;
                let body = read_n(&mut peer, n);
                assert!(body.iter().all(|&b| b == body[0]));
            }
            peer
        });
        for h in hs {
            h.join().unwrap();
        }
        let _peer = reader.join().unwrap();
        tx.shutdown();
        assert!(t.join().unwrap().is_err());
    }

    #[test]
    fn fuzz_ws_frame_deterministic() {
        let seeds = crate::http::tests::corpus("ws_frame");
        let tokens: &[&[u8]] = &[
            &[0x81],
            &[0x01],
            &[0x80],
            &[0x88, 0x02, 0x03, 0xe8],
            &[0x89, 0x00],
            &[0x8a, 0x80, 0, 0, 0, 0],
            &[0x7e, 0xff, 0xff],
            &[0x7f, 0, 0, 0, 0, 0, 0xff, 0, 0],
            &[0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0],
            &[0xc3, 0x28],
            &[0xf0, 0x9f, 0x98, 0x80],
            &[0x70],
            &[0x00, 0x00, 0x00, 0x00],
        ];
        let mut rng = crate::http::tests::XorShift(0x2545_f491_4f6c_dd1d);
        for s in &seeds {
            fuzz_ws_frames(s);
        }
        let iters: usize = std::env::var("BIVY_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        for _ in 0..iters {
            let seed = &seeds[rng.below(seeds.len())];
            let input = crate::http::tests::mutate(&mut rng, seed, tokens);
            fuzz_ws_frames(&input);
        }
    }
}
