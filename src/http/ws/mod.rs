//! WebSocket (RFC 6455): handshake helpers and framing, server and client roles.
//! Ping is answered automatically by the receiver; fragmented messages are reassembled;
//! frames above the size limit are refused with close code 1009.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use ring::rand::SecureRandom;

use super::parse::{has_token, is_tchar};
use super::{Request, Response, Stream};

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

pub use crate::util::base64::{decode as base64_decode, encode as base64_encode};

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
    /// End the connection: a normal close frame (1000, best effort), then [`Sender::shutdown`].
    pub fn end(&self) {
        let _ = self.close(1000);
        self.shutdown();
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
            || !k.bytes().all(is_tchar)
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
mod tests;
