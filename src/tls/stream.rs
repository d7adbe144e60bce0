//! A TLS session over TCP that several threads can share, as they share a plain socket: one
//! reads (a websocket's receive side, the HTTP server) while another writes (the send side).
//!
//! The rustls state sits behind a mutex taken only to move bytes in and out of it, never across
//! a blocking socket call: a reader blocked on the network does not stop a writer, and a writer
//! blocked on a full send buffer does not stop a reader from decrypting what arrived. A second
//! mutex orders the encrypted records on the wire; it is always taken before the state's.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::Connection;

use crate::util::lock;

struct Shared {
    conn: Mutex<Connection>,
    tcp: TcpStream,
    /// Held while records go onto the wire (taken before `conn`).
    wire: Mutex<()>,
    /// Held by the one reader pulling records off the wire.
    reading: Mutex<ReadState>,
}

#[derive(Default)]
struct ReadState {
    /// Bytes off the wire not fed to rustls yet: it takes no more once it holds 16 KiB of
    /// plaintext, so the rest of a read waits here until the plaintext is read.
    pending: Vec<u8>,
    /// The session's fatal error, once there is one (rustls must not be fed after it).
    failed: Option<io::ErrorKind>,
}

/// A TLS connection: `Read + Write` of the plaintext; clones share the session.
#[derive(Clone)]
pub struct TlsStream {
    inner: Arc<Shared>,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Run the handshake of `conn` over `tcp` (whose timeouts bound it) and wrap the session.
    pub(super) fn handshake(mut conn: Connection, mut tcp: TcpStream) -> io::Result<TlsStream> {
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        // Anything still queued (TLS 1.3 session tickets) goes out now.
        while conn.wants_write() {
            conn.write_tls(&mut tcp)?;
        }
        Ok(TlsStream {
            inner: Arc::new(Shared {
                conn: Mutex::new(conn),
                tcp,
                wire: Mutex::new(()),
                reading: Mutex::new(ReadState::default()),
            }),
        })
    }

    /// The peer's end-entity certificate (DER), when it presented one.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        lock(&self.inner.conn)
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }

    /// Whether the handshake resumed an earlier session (no certificate signature was made).
    pub fn resumed(&self) -> bool {
        lock(&self.inner.conn).handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The TCP socket under the session (for its addresses).
    pub fn tcp(&self) -> &TcpStream {
        &self.inner.tcp
    }

    /// Put whatever the session has queued on the wire.
    fn flush_records(&self) -> io::Result<()> {
        let _wire = lock(&self.inner.wire);
        let mut out = Vec::new();
        {
            let mut c = lock(&self.inner.conn);
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        (&self.inner.tcp).write_all(&out)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = lock(&self.inner.reading);
        if let Some(kind) = st.failed {
            return Err(io::Error::new(kind, "TLS session failed earlier"));
        }
        loop {
            match lock(&self.inner.conn).reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            let eof = if st.pending.is_empty() {
                let mut raw = vec![0u8; 16 * 1024];
                let n = (&self.inner.tcp).read(&mut raw)?;
                st.pending.extend_from_slice(&raw[..n]);
                n == 0
            } else {
                false
            };
            let fed = {
                let mut c = lock(&self.inner.conn);
                feed(&mut c, &mut st.pending, eof).map(|()| c.wants_write())
            };
            match fed {
                Ok(must_write) => {
                    if must_write {
                        self.flush_records()?;
                    }
                }
                Err(e) => {
                    st.failed = Some(e.kind());
                    // The alert rustls queued for the peer goes out, best effort.
                    let _ = self.flush_records();
                    return Err(e);
                }
            }
        }
    }
}

/// Feed rustls the pending bytes until it has plaintext to give (or they run out); at the end
/// of the stream, tell it so.
fn feed(c: &mut Connection, pending: &mut Vec<u8>, eof: bool) -> io::Result<()> {
    if eof {
        c.read_tls(&mut io::empty())?;
        c.process_new_packets().map_err(tls_error)?;
        return Ok(());
    }
    while !pending.is_empty() {
        let used = c.read_tls(&mut pending.as_slice())?;
        pending.drain(..used);
        let state = c.process_new_packets().map_err(tls_error)?;
        if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() || used == 0 {
            break;
        }
    }
    Ok(())
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _wire = lock(&self.inner.wire);
        let mut out = Vec::with_capacity(buf.len() + 64);
        let n = {
            let mut c = lock(&self.inner.conn);
            let n = c.writer().write(buf)?;
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
            n
        };
        (&self.inner.tcp).write_all(&out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl crate::util::stream::Stream for TlsStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn crate::util::stream::Stream>> {
        Ok(Box::new(self.clone()))
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.tcp.set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.tcp.set_write_timeout(t)
    }
    fn shutdown_both(&self) -> io::Result<()> {
        self.inner.tcp.shutdown(Shutdown::Both)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        lock(&self.inner.conn).send_close_notify();
        self.flush_records()?;
        self.inner.tcp.shutdown(Shutdown::Write)
    }
}
