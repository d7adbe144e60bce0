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

/// Wait for the peer (or the client relaying) to connect this operation's `control` and `fs`
/// websockets, at most [`super::CONNECT_TIMEOUT`].
pub fn wait_for(op: &crate::instance::operations::Op, control: &str, fs: &str) -> Result<(Ws, Ws)> {
    let mut socks = op
        .take_sockets(
            &[control.to_string(), fs.to_string()],
            super::CONNECT_TIMEOUT,
        )
        .ok_or_else(|| Error::Host("Timed out waiting for migration connections".into()))?;
    let ctl = accepted(socks.remove(control).expect("required socket"))?;
    let fsw = accepted(socks.remove(fs).expect("required socket"))?;
    Ok((ctl, fsw))
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

#[cfg(test)]
mod tests {
    use super::*;

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
