//! An instance's logs (`/logs`, the console log) and image metadata and templates
//! (`/metadata`, `/metadata/templates`).

use std::path::PathBuf;

use super::super::request::json;
use super::super::response::{self, Error, Result};
use crate::api;
use crate::http::{Request, Response};
use crate::image;
use crate::instance::Ctx as Daemon;

use crate::instance::view::record;

pub fn logs_list(d: &Daemon, name: &str) -> Result<Response> {
    record(d, name)?;
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d.log_dir(name)) {
        for e in rd.flatten() {
            out.push(format!(
                "/1.0/instances/{name}/logs/{}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    crate::util::sort::sort(&mut out);
    Ok(response::sync(&out))
}

fn log_path(d: &Daemon, name: &str, file: &str) -> Result<PathBuf> {
    if file.is_empty() || file.contains('/') || file.starts_with('.') {
        return Err(Error::BadRequest(format!("Invalid log file name {file:?}")));
    }
    Ok(d.log_dir(name).join(file))
}

pub fn log_get(d: &Daemon, name: &str, file: &str) -> Result<Response> {
    record(d, name)?;
    let p = log_path(d, name, file)?;
    if file == "console.log" {
        // The part rotated away (`console.log.1`, see the monitor) comes first, so the log
        // shown right after a rotation is not nearly empty.
        if let Ok(older) = std::fs::File::open(p.with_extension("log.1")) {
            let cur = std::fs::File::open(&p).ok();
            let len = [Some(&older), cur.as_ref()]
                .into_iter()
                .flatten()
                .map(|f| f.metadata().map_or(0, |m| m.len()))
                .sum();
            let body: Box<dyn std::io::Read + Send> = match cur {
                Some(cur) => Box::new(std::io::Read::chain(older, cur)),
                None => Box::new(older),
            };
            return Ok(response::raw(
                200,
                "application/octet-stream",
                crate::http::Body::Reader(body, Some(len)),
            ));
        }
    }
    match std::fs::File::open(&p) {
        Ok(f) => {
            let len = f.metadata().map(|m| m.len()).ok();
            Ok(response::raw(
                200,
                "application/octet-stream",
                crate::http::Body::Reader(Box::new(f), len),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if file == "console.log" || file == "lxc.log" {
                Ok(response::raw(
                    200,
                    "application/octet-stream",
                    crate::http::Body::Empty,
                ))
            } else {
                Err(Error::NotFound("Log file not found".into()))
            }
        }
        Err(e) => Err(Error::Internal(format!("{}: {e}", p.display()))),
    }
}

pub fn log_delete(d: &Daemon, name: &str, file: &str) -> Result<Response> {
    record(d, name)?;
    if file == "console.log" || file == "lxc.log" {
        return Err(Error::BadRequest("Only exec logs can be deleted".into()));
    }
    let p = log_path(d, name, file)?;
    std::fs::remove_file(&p).map_err(|_| Error::NotFound("Log file not found".into()))?;
    Ok(response::empty())
}

fn metadata_of(d: &Daemon, name: &str) -> Result<(api::ImageMetadata, PathBuf)> {
    let rec = record(d, name)?;
    let vol = d.volume_dir(&rec);
    Ok((
        crate::instance::images::read_metadata(&vol, &rec.architecture)?,
        vol,
    ))
}

pub fn metadata_get(d: &Daemon, name: &str) -> Result<Response> {
    let (meta, _) = metadata_of(d, name)?;
    let etag = response::etag(&meta);
    Ok(response::sync_etag(&meta, Some(etag)))
}

/// `PUT`/`PATCH .../metadata`: replace or merge the instance's metadata.yaml (as JSON).
pub fn metadata_put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let _busy = d.claim(name, "update metadata")?;
    let (cur, vol) = metadata_of(d, name)?;
    response::check_etag(req.header("If-Match"), &response::etag(&cur))?;
    let new: api::ImageMetadata = if patch {
        let mut merged = serde_json::to_value(&cur).map_err(|e| Error::Internal(e.to_string()))?;
        if let (Some(m), Some(b)) = (merged.as_object_mut(), body.as_object()) {
            for (k, v) in b {
                m.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(merged)
    } else {
        serde_json::from_value(body)
    }
    .map_err(|e| Error::BadRequest(format!("Invalid metadata: {e}")))?;
    if !image::known_architecture(&new.architecture) {
        return Err(Error::BadRequest(format!(
            "Invalid metadata: unknown architecture {:?}",
            new.architecture
        )));
    }
    for (path, t) in &new.templates {
        if !path.starts_with('/') || t.template.is_empty() || t.template.contains('/') {
            return Err(Error::BadRequest(format!(
                "Invalid metadata: bad template entry for {path:?}"
            )));
        }
    }
    let data = serde_json::to_vec_pretty(&new).map_err(|e| Error::Internal(e.to_string()))?;
    crate::util::fs::atomic_write(&vol.join("metadata.json"), &data)
        .map_err(|e| Error::Internal(format!("metadata.json: {e}")))?;
    Ok(response::empty())
}

/// The template file a request's `path` names: one file name in the volume's `templates/`
/// (LXD refuses a `/`; `.`, `..`, a NUL and a name longer than a file name can be are refused
/// too).
fn template_name(req: &Request) -> Result<String> {
    let p = req.query("path").unwrap_or("");
    if p.is_empty() || p.contains('/') || p == "." || p == ".." || p.contains('\0') || p.len() > 255
    {
        return Err(Error::BadRequest(format!("Invalid template name {p:?}")));
    }
    Ok(p.to_string())
}

/// `POST .../metadata/templates?path=NAME`: store a template file (the body).
pub fn template_put(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let file = template_name(req)?;
    let (_, vol) = metadata_of(d, name)?;
    let data = req
        .read_body(super::super::request::MAX_JSON)
        .map_err(|e| Error::BadRequest(format!("template body: {e}")))?;
    let dir = vol.join("templates");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
    crate::util::fs::atomic_write(&dir.join(&file), &data)
        .map_err(|e| Error::Internal(format!("{file}: {e}")))?;
    Ok(response::empty())
}

pub fn template_delete(d: &Daemon, req: &Request, name: &str) -> Result<Response> {
    let file = template_name(req)?;
    let (_, vol) = metadata_of(d, name)?;
    std::fs::remove_file(vol.join("templates").join(&file))
        .map_err(|_| Error::NotFound("Template not found".into()))?;
    Ok(response::empty())
}

pub fn templates(d: &Daemon, req: &Request, name: &str) -> Result<Response> {
    let (_, vol) = metadata_of(d, name)?;
    // An empty `path` lists them, as none does (LXD's).
    match req.query("path").filter(|p| !p.is_empty()) {
        None => {
            // The template files present (what LXD lists), not the metadata's references.
            let mut names: Vec<String> = std::fs::read_dir(vol.join("templates"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            crate::util::sort::sort(&mut names);
            Ok(response::sync(&names))
        }
        Some(_) => {
            let path = vol.join("templates").join(template_name(req)?);
            let data =
                std::fs::read(&path).map_err(|_| Error::NotFound("Template not found".into()))?;
            Ok(response::raw(
                200,
                "application/octet-stream",
                crate::http::Body::Bytes(data),
            ))
        }
    }
}
