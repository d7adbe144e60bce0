//! A streaming `multipart/form-data` reader for split image uploads (`metadata` then `rootfs`),
//! spooling each part to a temporary file in the image store so that nothing large is held in
//! memory and a failed upload leaves nothing behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;

use super::response::{Error, Result};
use super::Daemon;
use crate::api;
use crate::image;

/// A temp file removed on drop.
struct Spool {
    path: std::path::PathBuf,
    file: File,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A buffered reader whose unconsumed bytes can be inspected and consumed freely.
struct Buf<'a> {
    inner: &'a mut dyn Read,
    buf: Vec<u8>,
    eof: bool,
    /// What each read goes into (allocated once: a body arriving in small reads must not cost
    /// an allocation per read).
    chunk: Vec<u8>,
}

impl Buf<'_> {
    /// Make sure at least `n` bytes are buffered (fewer only at EOF).
    fn fill(&mut self, n: usize) -> std::io::Result<()> {
        while self.buf.len() < n && !self.eof {
            let k = self.inner.read(&mut self.chunk)?;
            if k == 0 {
                self.eof = true;
            }
            self.buf.extend_from_slice(&self.chunk[..k]);
        }
        Ok(())
    }
    /// Read one line (without CRLF), at most `max` bytes.
    fn line(&mut self, max: usize) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut l: Vec<u8> = self.buf.drain(..=pos).collect();
                l.pop();
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                return Ok(Some(l));
            }
            if self.buf.len() > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "line too long",
                ));
            }
            if self.eof {
                return Ok(None);
            }
            let want = self.buf.len() + 1;
            self.fill(want)?;
        }
    }
    /// Copy to `w` until `needle` (consumed, not written); error at EOF first.
    fn copy_until(&mut self, w: &mut impl Write, needle: &[u8]) -> std::io::Result<()> {
        loop {
            if let Some(pos) = self.buf.windows(needle.len()).position(|x| x == needle) {
                w.write_all(&self.buf[..pos])?;
                self.buf.drain(..pos + needle.len());
                return Ok(());
            }
            if self.eof {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "truncated part",
                ));
            }
            // Everything but a possible partial delimiter at the end can go out.
            let keep = (needle.len() - 1).min(self.buf.len());
            let cut = self.buf.len() - keep;
            w.write_all(&self.buf[..cut])?;
            self.buf.drain(..cut);
            let want = self.buf.len() + 1;
            self.fill(want.max(64 * 1024))?;
        }
    }
}

/// The boundary of a `multipart/form-data` Content-Type (`None`: not multipart/form-data).
/// `Err`: multipart without a boundary.
pub fn boundary(ctype: &str) -> Option<std::result::Result<String, ()>> {
    let params = ctype.strip_prefix("multipart/form-data")?;
    Some(
        params
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|s| s.trim_matches('"').to_string())
            .ok_or(()),
    )
}

/// Read the parts of a multipart body; returns (name, spooled file) in order.
fn spool_parts(
    dir: &std::path::Path,
    body: &mut dyn Read,
    boundary: &str,
) -> Result<Vec<(String, Spool)>> {
    let bad = |m: &str| Error::BadRequest(format!("Invalid multipart upload: {m}"));
    let io = |e: std::io::Error| Error::BadRequest(format!("Invalid multipart upload: {e}"));
    let mut r = Buf {
        inner: body,
        buf: Vec::new(),
        eof: false,
        chunk: vec![0u8; 256 * 1024],
    };
    let delim = format!("--{boundary}");
    let mut preamble = 0;
    loop {
        let Some(l) = r.line(8192).map_err(io)? else {
            return Err(bad("no parts"));
        };
        if l == delim.as_bytes() {
            break;
        }
        preamble += 1;
        if preamble > 16 {
            return Err(bad("no delimiter"));
        }
    }
    let needle = format!("\r\n--{boundary}").into_bytes();
    let mut parts = Vec::new();
    loop {
        let mut name = String::new();
        let mut nheaders = 0;
        loop {
            let Some(l) = r.line(8192).map_err(io)? else {
                return Err(bad("truncated part headers"));
            };
            if l.is_empty() {
                break;
            }
            nheaders += 1;
            if nheaders > 32 {
                return Err(bad("too many part headers"));
            }
            let l = String::from_utf8_lossy(&l);
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-disposition") {
                    for p in v.split(';') {
                        if let Some(n) = p.trim().strip_prefix("name=") {
                            name = n.trim_matches('"').to_string();
                        }
                    }
                }
            }
        }
        let path = dir.join(format!(
            ".upload-{}-{}",
            std::process::id(),
            super::operations::secret()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let mut spool = Spool { path, file };
        let mut w = std::io::BufWriter::new(&mut spool.file);
        r.copy_until(&mut w, &needle).map_err(io)?;
        w.flush().map_err(|e| Error::Internal(e.to_string()))?;
        drop(w);
        spool
            .file
            .rewind()
            .map_err(|e| Error::Internal(e.to_string()))?;
        parts.push((name, spool));
        r.fill(2).map_err(io)?;
        if r.buf.starts_with(b"--") {
            break;
        }
        if !r.buf.starts_with(b"\r\n") {
            return Err(bad("malformed delimiter"));
        }
        r.buf.drain(..2);
        if parts.len() >= 4 {
            return Err(bad("too many parts"));
        }
    }
    Ok(parts)
}

/// The indexes of the `metadata` and `rootfs` parts.
fn pick(parts: &[(String, Spool)]) -> Result<(usize, usize)> {
    let get = |n: &str| parts.iter().position(|(name, _)| name == n);
    match (get("metadata"), get("rootfs").or_else(|| get("rootfs.img"))) {
        (Some(mi), Some(ri)) => Ok((mi, ri)),
        _ => Err(Error::BadRequest(
            "Invalid multipart image: need a \"metadata\" and a \"rootfs\" part".into(),
        )),
    }
}

/// Import a split image from a multipart body.
pub fn import_split(
    d: &Daemon,
    body: &mut dyn Read,
    boundary: &str,
    opts: &image::ImportOpts,
) -> Result<api::Image> {
    let parts = spool_parts(d.images.dir(), body, boundary)?;
    let (mi, ri) = pick(&parts)?;
    let mut meta = parts[mi]
        .1
        .file
        .try_clone()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut root = parts[ri]
        .1
        .file
        .try_clone()
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(d.images.import(
        image::Upload::Split {
            metadata: &mut meta,
            rootfs: &mut root,
        },
        opts,
    )?)
}

/// Fuzzing entry point (`tests/fuzz` target `multipart`, and the deterministic test): the first
/// line of `data` is the request's Content-Type, the rest its body, which arrives in reads of 1
/// to 7 bytes (so that delimiters straddle reads). The parts are spooled into a private
/// directory: together they never hold more than the body, and once they are dropped (or the
/// body is refused) nothing is left there. Must never panic.
#[doc(hidden)]
pub fn fuzz_multipart(data: &[u8]) {
    struct Pieces<'a>(&'a [u8], usize);
    impl Read for Pieces<'_> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(b.len()).min(1 + self.1 % 7);
            self.1 += 1;
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let (ctype, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let ctype = String::from_utf8_lossy(ctype);
    let Some(Ok(boundary)) = boundary(ctype.trim_end_matches('\r')) else {
        return;
    };
    let dir = crate::util::fs::fuzz_scratch_dir("multipart");
    if let Ok(parts) = spool_parts(&dir, &mut Pieces(body, 0), &boundary) {
        assert!((1..=4).contains(&parts.len()), "{} parts", parts.len());
        let total: u64 = parts
            .iter()
            .map(|(_, s)| s.file.metadata().expect("spool file").len())
            .sum();
        assert!(total <= body.len() as u64, "parts larger than the body");
        let _ = pick(&parts);
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("the spool directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "spool files left behind: {left:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_parts_across_small_reads() {
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(b.len()).min(3);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\nmeta\r\n--X\r\n--XX\r\nContent-Disposition: form-data; name=\"rootfs\"\r\n\r\nroot data\r\n--XX--\r\n";
        let dir = std::env::temp_dir();
        let parts = spool_parts(&dir, &mut Slow(body), "XX").unwrap();
        assert_eq!(parts.len(), 2);
        let mut s = String::new();
        (&parts[0].1.file).read_to_string(&mut s).unwrap();
        assert_eq!(
            (parts[0].0.as_str(), s.as_str()),
            ("metadata", "meta\r\n--X")
        );
        let mut s = String::new();
        (&parts[1].1.file).read_to_string(&mut s).unwrap();
        assert_eq!((parts[1].0.as_str(), s.as_str()), ("rootfs", "root data"));
        let paths: Vec<_> = parts.iter().map(|(_, p)| p.path.clone()).collect();
        drop(parts);
        assert!(paths.iter().all(|p| !p.exists()));
        let truncated = b"--XX\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\nmeta";
        assert!(spool_parts(&dir, &mut Slow(truncated), "XX").is_err());
    }

    #[test]
    fn boundary_of_content_type() {
        assert_eq!(boundary("application/json"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"ab c\"; x=y"),
            Some(Ok("ab c".into()))
        );
        assert_eq!(boundary("multipart/form-data"), Some(Err(())));
    }

    #[test]
    fn fuzz_multipart_deterministic() {
        let tokens: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"--",
            b"\r\n--",
            b"--\r\n",
            b"Content-Disposition: form-data; name=\"metadata\"\r\n",
            b"Content-Disposition: form-data; name=\"rootfs\"\r\n",
            b"name=\"rootfs.img\"",
            b"Content-Type: application/octet-stream\r\n",
            b"boundary=",
            b"boundary=\"\"",
            b";",
            b"\"",
            b":",
        ];
        crate::http::fuzz::tests::fuzz_corpus_and_mutations(
            "multipart",
            0x9b05_688c_2b3e_6c1f,
            tokens,
            fuzz_multipart,
        );
    }
}
