//! What a pull from an image server is, and the parts both protocols share: the request
//! ([`Pull`]), the reader that hashes and reports the progress of what is downloaded
//! ([`Verify`]), and the store's side of a pull's start and end ([`already_here`],
//! [`imported`]). Simplestreams servers are `pull`'s, LXD servers `pull_lxd`'s; this file
//! imports neither.

use std::io::{self, Read};
use std::time::Instant;

use ring::digest;

use super::operations::Op;
use super::response::{Error, Result};
use super::Daemon;
use crate::api;

/// What to pull, and how to record it.
pub(super) struct Pull {
    /// `lxd` or `simplestreams`.
    pub protocol: String,
    pub server: String,
    /// The image's one-time download secret (LXD servers, private images).
    pub secret: String,
    pub alias: String,
    pub fingerprint: String,
    pub certificate: String,
    pub cached: bool,
    pub auto_update: bool,
    pub public: bool,
    pub profiles: Vec<String>,
}

/// Hashes what passes through; at the end of the stream, fails unless it is `want`. Reports
/// progress into the operation's `download_progress` about once a second.
pub(super) struct Verify<'a> {
    inner: &'a mut dyn Read,
    ctx: Option<digest::Context>,
    want: String,
    what: &'static str,
    n: u64,
    total: Option<u64>,
    op: Option<&'a Op>,
    start: Instant,
    last: Instant,
}

impl<'a> Verify<'a> {
    pub(super) fn new(
        inner: &'a mut dyn Read,
        want: &str,
        what: &'static str,
        total: Option<u64>,
        op: Option<&'a Op>,
    ) -> Verify<'a> {
        let mut v = Verify::unchecked(inner, what, total, op);
        v.ctx = Some(digest::Context::new(&digest::SHA256));
        v.want = want.to_ascii_lowercase();
        v
    }

    /// Progress reports only: no hash to check (the caller checks the fingerprint).
    pub(super) fn unchecked(
        inner: &'a mut dyn Read,
        what: &'static str,
        total: Option<u64>,
        op: Option<&'a Op>,
    ) -> Verify<'a> {
        let now = Instant::now();
        Verify {
            inner,
            ctx: None,
            want: String::new(),
            what,
            n: 0,
            total,
            op,
            start: now,
            last: now,
        }
    }

    fn progress(&mut self) {
        let Some(op) = self.op else { return };
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let speed = human(self.n as f64 / secs);
        let text = match self.total.filter(|t| *t > 0) {
            Some(t) => format!(
                "{}: {}% ({speed}/s)",
                self.what,
                (self.n * 100 / t).min(100)
            ),
            None => format!("{}: {} ({speed}/s)", self.what, human(self.n as f64)),
        };
        op.set_metadata("download_progress", serde_json::json!(text));
    }
}

use crate::util::human_bytes as human;

impl Read for Verify<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(c) = &mut self.ctx {
                c.update(&buf[..n]);
            }
            self.n += n as u64;
            if self.last.elapsed().as_millis() >= 1000 {
                self.last = Instant::now();
                self.progress();
            }
            return Ok(n);
        }
        if self.ctx.is_none() && self.n > 0 {
            self.progress();
        }
        if let Some(c) = self.ctx.take() {
            let got = hex(c.finish().as_ref());
            if got != self.want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: sha256 mismatch (expected {}, got {got})",
                        self.what, self.want
                    ),
                ));
            }
            self.progress();
        }
        Ok(0)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The image when the store has it already (a pull for an image asks for it uncached).
pub(super) fn already_here(d: &Daemon, p: &Pull, fp: &str) -> Result<Option<api::Image>> {
    match d.images.get(fp) {
        Ok(img) if img.fingerprint == fp => {
            if img.cached && !p.cached {
                d.images.set_cached(&img.fingerprint, false)?;
                return Ok(Some(d.images.get(&img.fingerprint)?));
            }
            Ok(Some(img))
        }
        _ => Ok(None),
    }
}

/// The end of an import: its event, or the image another request pulled meanwhile.
pub(super) fn imported(d: &Daemon, res: Result<api::Image>, fp: &str) -> Result<api::Image> {
    match res {
        Ok(img) => {
            d.events.lifecycle(
                "image-created",
                &format!("/1.0/images/{}", img.fingerprint),
                serde_json::json!({}),
            );
            Ok(img)
        }
        // Pulled concurrently by another request.
        Err(Error::Conflict(_)) => Ok(d.images.get(fp)?),
        Err(e) => Err(e),
    }
}
