//! The migration websockets as LXD frames them: on `control`, one protobuf message per binary
//! frame (anything else is an error); on `fs`, byte streams in binary frames, each stream ended
//! by an empty text frame (LXD's `WebsocketIO.Close`, "the barrier"). And the dial of the other
//! server's operation websocket (the target dials the source in pull mode, the source the target
//! in push mode): `wss://HOST/1.0/operations/ID/websocket?secret=S`, the peer's certificate
//! pinned, no client certificate (the secret is the credential).

use std::io::{self, Read, Write};

use std::time::Duration;

use crate::http::ws::{self, Message, Receiver, Sender};
use crate::instance::{Error, Result};

/// How long a dial (TCP, TLS and the websocket handshake) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest piece of a byte stream put in one frame.
pub const CHUNK: usize = 128 * 1024;

/// Both halves of one websocket.
pub struct Ws {
    pub tx: Sender,
    pub rx: Receiver,
}

/// `https://HOST[:PORT]/1.0/operations/ID` split into the host (for TLS, no brackets), the
/// `Host` header value, the port and the path.
fn split_url(url: &str) -> Result<(String, String, u16, String)> {
    let bad = || Error::Invalid(format!("Invalid migration operation URL {url:?}"));
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let (hostport, path) = rest.split_at(rest.find('/').ok_or_else(bad)?);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !hostport.ends_with(']') && (!h.starts_with('[') || h.ends_with(']')) => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (hostport, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !path.starts_with("/1.0/operations/")
        || path
            .bytes()
            .any(|c| c <= 0x20 || c == 0x7f || c == b'?' || c == b'#')
    {
        return Err(bad());
    }
    Ok((
        host.to_string(),
        hostport.to_string(),
        port,
        path.to_string(),
    ))
}

/// Check an operation URL as [`dial`] takes it (`https://HOST[:PORT]/1.0/operations/ID`).
pub fn check_url(url: &str) -> Result<()> {
    split_url(url).map(|_| ())
}

/// Dial the other server's operation websocket for `secret`, pinning `cert` (DER).
pub fn dial(op_url: &str, secret: &str, cert: &[u8]) -> Result<Ws> {
    let (host, host_header, port, path) = split_url(op_url)?;
    let fail = |e: &dyn std::fmt::Display| {
        Error::Host(format!(
            "Failed connecting to the migration operation {op_url}: {e}"
        ))
    };
    let tcp = crate::net::resolve::connect_tcp(&host, port, DIAL_TIMEOUT).map_err(|e| fail(&e))?;
    tcp.set_read_timeout(Some(DIAL_TIMEOUT))
        .map_err(|e| fail(&e))?;
    tcp.set_write_timeout(Some(DIAL_TIMEOUT))
        .map_err(|e| fail(&e))?;
    let _ = tcp.set_nodelay(true);
    let raw = tcp.try_clone().map_err(|e| fail(&e))?;
    let client = crate::tls::Client::pinned(Some(cert.to_vec()), None).map_err(|e| fail(&e))?;
    let tls = client.connect(&host, tcp).map_err(|e| fail(&e))?;
    let target = format!(
        "{path}/websocket?secret={}",
        crate::http::percent_encode(secret, false)
    );
    let headers = vec![
        ("Host".to_string(), host_header),
        (
            "User-Agent".to_string(),
            format!("LXD 5.0.2 (bivy {})", env!("CARGO_PKG_VERSION")),
        ),
    ];
    let (tx, rx) = ws::connect(Box::new(tls), &target, &headers).map_err(|e| fail(&e))?;
    // Transfers may be quiet for long stretches (rsync checksumming a large file): no read
    // timeout once connected; a dead peer ends the TCP connection.
    raw.set_read_timeout(None).map_err(|e| fail(&e))?;
    raw.set_write_timeout(None).map_err(|e| fail(&e))?;
    Ok(Ws { tx, rx })
}

/// Wait for the peer (or the client relaying) to connect this operation's websockets, one per
/// secret (`control`, `fs`, and `criu` when live), at most [`super::CONNECT_TIMEOUT`]; in that
/// order.
pub fn wait_for(op: &crate::instance::operations::Op, secrets: &[String]) -> Result<Vec<Ws>> {
    let mut socks = op
        .take_sockets(secrets, super::CONNECT_TIMEOUT)
        .ok_or_else(|| Error::Host("Timed out waiting for migration connections".into()))?;
    secrets
        .iter()
        .map(|s| accepted(socks.remove(s).expect("required socket")))
        .collect()
}

/// The websocket of an accepted (server side) connection.
pub fn accepted(stream: Box<dyn crate::util::stream::Stream>) -> Result<Ws> {
    let (tx, rx) = ws::split(stream, ws::Role::Server)
        .map_err(|e| Error::Host(format!("migration websocket: {e}")))?;
    Ok(Ws { tx, rx })
}

/// Send one protobuf message on `control`.
pub fn send_msg(tx: &Sender, bytes: &[u8]) -> Result<()> {
    tx.send_binary(bytes)
        .map_err(|e| Error::Host(format!("Failed sending a migration control message: {e}")))
}

/// Receive one protobuf message from `control`.
pub fn recv_msg(rx: &mut Receiver) -> Result<Vec<u8>> {
    match rx.recv() {
        Ok(Message::Binary(b)) => Ok(b),
        Ok(Message::Text(_)) => Err(Error::Host(
            "migration control: a text frame where a message was due".into(),
        )),
        Ok(Message::Close(_)) => Err(Error::Host(
            "migration control: the peer closed the connection".into(),
        )),
        Err(e) => Err(Error::Host(format!("migration control: {e}"))),
    }
}

/// Copy binary frames into `w` until the barrier (an empty, or any, text frame). A close or a
/// broken connection is an error: the stream did not end where it should.
pub fn read_stream(rx: &mut Receiver, w: &mut dyn Write) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        match rx.recv()? {
            Message::Binary(b) => {
                w.write_all(&b)?;
                n += b.len() as u64;
            }
            Message::Text(_) => {
                w.flush()?;
                return Ok(n);
            }
            Message::Close(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the migration stream",
                ))
            }
        }
    }
}

/// Copy `r` to binary frames until its end, then send the barrier.
pub fn write_stream(tx: &Sender, r: &mut dyn Read) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        tx.send_binary(&buf[..k])?;
        n += k as u64;
    }
    tx.send_text("")?;
    Ok(n)
}

/// One byte stream on `fs` as a reader: the binary frames' bytes, then the end at the barrier.
/// A close or a broken connection is an error, so a stream that was cut never reads as whole.
pub struct StreamReader<'a> {
    rx: &'a mut Receiver,
    buf: Vec<u8>,
    pos: usize,
    ended: bool,
    /// Called with the size of each frame received.
    seen: &'a dyn Fn(u64),
}

impl<'a> StreamReader<'a> {
    pub fn new(rx: &'a mut Receiver, seen: &'a dyn Fn(u64)) -> StreamReader<'a> {
        StreamReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            ended: false,
            seen,
        }
    }

    /// Read and drop what is left up to the barrier (a tar reader stops at its end marker and
    /// leaves the padding that follows).
    pub fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink()).map(drop)
    }
}

impl Read for StreamReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv()? {
                Message::Binary(b) => {
                    (self.seen)(b.len() as u64);
                    self.buf = b;
                    self.pos = 0;
                }
                Message::Text(_) => self.ended = true,
                Message::Close(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the migration stream",
                    ))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One byte stream on `fs` as a writer: binary frames of up to [`CHUNK`] bytes; [`finish`]
/// sends the rest and the barrier. Dropped without `finish` (the sender failed), no barrier is
/// sent, so the peer never takes a partial stream for a whole one.
///
/// [`finish`]: StreamWriter::finish
pub struct StreamWriter<'a> {
    tx: &'a Sender,
    buf: Vec<u8>,
}

impl<'a> StreamWriter<'a> {
    pub fn new(tx: &'a Sender) -> StreamWriter<'a> {
        StreamWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.tx.send_text("")
    }
}

impl Write for StreamWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.buf.len() + b.len() > CHUNK && !self.buf.is_empty() {
            self.flush()?;
        }
        if b.len() >= CHUNK {
            self.tx.send_binary(&b[..CHUNK])?;
            return Ok(CHUNK);
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.tx.send_binary(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_streams_end_at_the_barrier_and_never_when_cut() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, _arx) = ws::split(Box::new(a), ws::Role::Client).unwrap();
        let (_btx, mut rx) = ws::split(Box::new(b), ws::Role::Server).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let t = std::thread::spawn(move || {
            let mut w = StreamWriter::new(&tx);
            w.write_all(&big[..10]).unwrap();
            w.write_all(&big[10..]).unwrap();
            w.finish().unwrap();
            let mut w = StreamWriter::new(&tx);
            w.write_all(b"second").unwrap();
            w.finish().unwrap();
            // A third one, cut: its writer is dropped without the barrier, then the connection
            // closes.
            let mut w = StreamWriter::new(&tx);
            w.write_all(b"partial").unwrap();
            w.flush().unwrap();
            drop(w);
            tx.shutdown();
            big
        });
        let seen = std::sync::atomic::AtomicU64::new(0);
        let count = |n: u64| {
            seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        };
        let mut first = Vec::new();
        StreamReader::new(&mut rx, &count)
            .read_to_end(&mut first)
            .unwrap();
        // Read only the start of the second, the rest is dropped up to its barrier.
        let mut r = StreamReader::new(&mut rx, &count);
        let mut head = [0u8; 3];
        r.read_exact(&mut head).unwrap();
        r.finish().unwrap();
        assert_eq!(&head, b"sec");
        let mut third = Vec::new();
        assert!(StreamReader::new(&mut rx, &count)
            .read_to_end(&mut third)
            .is_err());
        let big = t.join().unwrap();
        assert_eq!(first, big);
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::Relaxed),
            300_000 + 6 + 7
        );
    }

    #[test]
    fn operation_urls() {
        let (h, hh, p, path) = split_url("https://127.0.0.1:8443/1.0/operations/abc").unwrap();
        assert_eq!(
            (h.as_str(), hh.as_str(), p, path.as_str()),
            ("127.0.0.1", "127.0.0.1:8443", 8443, "/1.0/operations/abc")
        );
        let (h, _, p, _) = split_url("https://[::1]:9/1.0/operations/x").unwrap();
        assert_eq!((h.as_str(), p), ("::1", 9));
        let (h, _, p, _) = split_url("https://example.org/1.0/operations/x").unwrap();
        assert_eq!((h.as_str(), p), ("example.org", 443));
        for bad in [
            "http://h/1.0/operations/x",
            "https://h",
            "https://h/1.0/images/x",
            "https://h/1.0/operations/x?secret=y",
            "https://:1/1.0/operations/x",
            "https://h:99999/1.0/operations/x",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
