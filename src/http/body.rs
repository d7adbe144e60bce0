//! Message bodies on the wire: the framing a head announces ([`Framing`]: none, Content-Length,
//! chunked, to EOF), the incremental [`Decoder`] that reads a body in that framing, with
//! bounded chunk lines and trailers, and drains what a handler left unread, and
//! [`write_streamed`], which sends a body of unknown length.
//!
//! Shared by the server and the client, for requests and responses alike.

use std::io::{self, BufRead, Read, Write};

use super::parse::{hex_val, parse_header_lines, trim_ows};

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

pub(super) fn parse_decimal(s: &str) -> Option<u64> {
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
    /// Read and discard the rest of the body, up to just past `max` bytes: `Ok(true)` when the
    /// body ended, `Ok(false)` when more than `max` bytes came (the connection cannot be reused).
    pub fn drain(&mut self, r: &mut dyn BufRead, max: u64) -> io::Result<bool> {
        let mut sink = [0u8; 8192];
        let mut drained: u64 = 0;
        while !self.is_done() {
            match self.read(r, &mut sink) {
                Ok(n) => {
                    drained += n as u64;
                    if drained > max {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
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

/// Copy `r` to `w` until `r` ends, as chunks ending with the last-chunk (`chunked`) or as is
/// (a body delimited by closing the connection). `flush_each` pushes every piece out as soon as
/// it is read, for bodies produced slowly.
pub(super) fn write_streamed(
    r: &mut dyn Read,
    w: &mut dyn Write,
    chunked: bool,
    flush_each: bool,
) -> io::Result<()> {
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
        if flush_each {
            w.flush()?;
        }
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}
