//! A TLS session over TCP that several threads can share, as they share a plain socket: one
//! reads (a websocket's receive side, the HTTP server) while another writes (the send side).
//!
//! The rustls state sits behind a mutex taken only to move bytes in and out of it, never across
//! a blocking socket call: a reader blocked on the network does not stop a writer, and a writer
//! blocked on a full send buffer does not stop a reader from decrypting what arrived. A second
//! mutex orders the encrypted records on the wire; it is always taken before the state's.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::Connection;

struct Shared {
    conn: Mutex<Connection>,
    tcp: TcpStream,
    /// Held while records go onto the wire (taken before `conn`).
    wire: Mutex<()>,
    /// Held by the one reader pulling records off the wire.
    reading: Mutex<()>,
}

/// A TLS connection: `Read + Write` of the plaintext; clones share the session.
#[derive(Clone)]
pub struct TlsStream {
    inner: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
                reading: Mutex::new(()),
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
        let _reading = lock(&self.inner.reading);
        let mut raw = vec![0u8; 16 * 1024];
        loop {
            match lock(&self.inner.conn).reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            let n = (&self.inner.tcp).read(&mut raw)?;
            let must_write = {
                let mut c = lock(&self.inner.conn);
                let mut rest = &raw[..n];
                loop {
                    // `read_tls` of nothing records the end of the stream.
                    c.read_tls(&mut rest)?;
                    c.process_new_packets().map_err(tls_error)?;
                    if rest.is_empty() {
                        break;
                    }
                }
                c.wants_write()
            };
            if must_write {
                self.flush_records()?;
            }
        }
    }
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
