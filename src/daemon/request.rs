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

/// `recursion` query value (0 when absent or invalid); `2;fields=...` (selective recursion,
/// [`recursion_fields`]) is level 2.
pub fn recursion(req: &Request) -> u32 {
    req.query("recursion")
        .and_then(|v| v.split(';').next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// The fields a request names for selective recursion (LXD's
/// `instances_state_selective_recursion`): `recursion=2;fields=a,b` (`fields=` names none), else
/// every `fields` parameter (`&fields=a&fields=b`, each also comma-separated); the semicolon
/// form wins over the parameters, as in LXD. `None` when neither is there: every field.
pub fn recursion_fields(req: &Request) -> Option<Vec<String>> {
    fn split(list: &str, out: &mut Vec<String>) {
        out.extend(
            list.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(String::from),
        );
    }
    let mut out = Vec::new();
    let inline = req
        .query("recursion")
        .and_then(|v| v.split_once(';'))
        .and_then(|(_, rest)| rest.trim().strip_prefix("fields="));
    if let Some(list) = inline {
        split(list, &mut out);
        return Some(out);
    }
    let mut named = false;
    for (_, v) in req.query.iter().filter(|(k, _)| k == "fields") {
        named = true;
        split(v, &mut out);
    }
    named.then_some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &[(&str, &str)]) -> Request {
        let q = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Request::new(
            "GET".into(),
            "/1.0/instances".into(),
            q,
            Vec::new(),
            Box::new(std::io::empty()),
        )
    }

    #[test]
    fn selective_recursion_is_read_as_lxd_reads_it() {
        /// The query, the level, the fields.
        type Case = (
            &'static [(&'static str, &'static str)],
            u32,
            Option<&'static [&'static str]>,
        );
        let cases: &[Case] = &[
            (&[], 0, None),
            (&[("recursion", "1")], 1, None),
            (&[("recursion", "2")], 2, None),
            (&[("recursion", "invalid")], 0, None),
            (
                &[("recursion", "2;fields=state.disk")],
                2,
                Some(&["state.disk"]),
            ),
            (
                &[("recursion", "2;fields=state.disk,state.network")],
                2,
                Some(&["state.disk", "state.network"]),
            ),
            (&[("recursion", "2;fields=")], 2, Some(&[])),
            (
                &[("recursion", "2"), ("fields", "state.disk")],
                2,
                Some(&["state.disk"]),
            ),
            (
                &[
                    ("recursion", "2"),
                    ("fields", "state.disk"),
                    ("fields", "state.network"),
                ],
                2,
                Some(&["state.disk", "state.network"]),
            ),
            // The semicolon form wins over the parameter.
            (
                &[
                    ("recursion", "2;fields=state.disk"),
                    ("fields", "state.network"),
                ],
                2,
                Some(&["state.disk"]),
            ),
        ];
        for (q, level, fields) in cases {
            let r = req(q);
            assert_eq!(recursion(&r), *level, "{q:?}");
            let want = fields.map(|f| f.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(recursion_fields(&r), want, "{q:?}");
        }
    }
}
