//! The [`Stream`]s HTTP wraps (the trait itself, for sockets and TLS, is `crate::util::stream`):
//! [`PrefixedStream`] (bytes read ahead before an upgrade, then the connection) and
//! [`SliceStream`] (in memory, for tests and fuzzing).
//!
//! Only moves bytes: no parsing here.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Stream;

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
    fn shutdown_write(&self) -> io::Result<()> {
        self.inner.shutdown_write()
    }
}

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
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}
