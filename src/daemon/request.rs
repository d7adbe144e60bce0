//! What every endpoint uses to read a request and answer it: the JSON body (bounded), the
//! `recursion` level, and a task operation on a busy-marked instance. Nothing here knows an
//! endpoint.

use std::sync::Arc;

use super::response::{self, Error, Result};
use crate::http::Request;
use crate::instance::operations;
use crate::instance::Ctx as Daemon;

/// Largest JSON body accepted (instance configs, profiles...).
pub const MAX_JSON: usize = 8 << 20;

/// Read and parse a JSON body.
pub fn json<T: serde::de::DeserializeOwned>(req: &mut Request) -> Result<T> {
    // Refuse a declared oversized body before reading any of it.
    if req
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > MAX_JSON as u64)
    {
        return Err(Error::PayloadTooLarge(format!(
            "Request body larger than {MAX_JSON} bytes"
        )));
    }
    let body = req.read_body(MAX_JSON).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Error::PayloadTooLarge(format!("Request body larger than {MAX_JSON} bytes"))
        } else {
            Error::BadRequest(format!("Failed to read request body: {e}"))
        }
    })?;
    response::parse_json(&body)
}

/// An uploaded body spooled to a file, removed when dropped.
pub struct Spool(pub std::path::PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Spool the request's body (a backup tarball) to a new file in `dir`.
pub fn spool_body(req: &mut Request, dir: &std::path::Path) -> Result<Spool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let spool = Spool(dir.join(format!("{}.import.tmp", operations::uuid())));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&spool.0)
        .map_err(|e| Error::Internal(format!("{}: {e}", spool.0.display())))?;
    std::io::copy(req.body(), &mut f)
        .and_then(|_| f.flush())
        .map_err(|e| Error::BadRequest(format!("reading the backup upload: {e}")))?;
    Ok(spool)
}

/// `recursion` query value (0 when absent or invalid).
pub fn recursion(req: &Request) -> u32 {
    req.query("recursion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Start a task operation running `body` while instance `name` is marked busy with `what`
/// (a 409 if it already is): its operation response.
pub fn busy_task<E: std::fmt::Display>(
    d: &Daemon,
    name: &str,
    what: &'static str,
    description: &str,
    body: impl FnOnce(&Daemon, Arc<operations::Op>) -> std::result::Result<(), E> + Send + 'static,
) -> response::Result<crate::http::Response> {
    let op = d.busy_task(
        name,
        what,
        description,
        crate::instance::view::resources(name),
        body,
    )?;
    Ok(response::operation(&op.to_api()))
}
