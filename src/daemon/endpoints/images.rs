//! `/1.0/images` and `/1.0/images/aliases`: list, import (upload, URL, simplestreams, publish),
//! edit, export, secrets, refresh, delete.

use std::collections::BTreeMap;
use std::io::Read;

use super::super::filter::Filter;
use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use crate::api::{self};
use crate::http::{Body, Request, Response};
use crate::image;
use crate::instance::operations::{Class, Op};
use crate::instance::Ctx as Daemon;

/// The live image download token (`POST /1.0/images/FP/secret`) with this secret for this
/// image, if any.
fn secret_op(d: &Daemon, fp: &str, secret: &str) -> Option<std::sync::Arc<Op>> {
    let url = format!("/1.0/images/{fp}");
    d.ops.list().into_iter().find(|op| {
        if op.class != Class::Token || op.is_final() {
            return false;
        }
        op.metadata_secret_is(secret)
            && op
                .to_api()
                .resources
                .as_ref()
                .and_then(|r| r.get("images"))
                .is_some_and(|v| v.contains(&url))
    })
}

/// Whether the caller may see this image: trusted, or the image is public, or the request
/// carries its download secret. Hidden images are "not found", as if they did not exist.
fn visible(d: &Daemon, req: &Request, img: &api::Image, trusted: bool) -> bool {
    trusted
        || img.put.public
        || req
            .query("secret")
            .is_some_and(|s| secret_op(d, &img.fingerprint, s).is_some())
}

fn hidden() -> Error {
    Error::NotFound("Image not found".into())
}

pub fn images_list(d: &Daemon, req: &Request, trusted: bool) -> Result<Response> {
    let filter = Filter::parse(req.query("filter").unwrap_or(""))?;
    let rec = recursion(req);
    let mut out = Vec::new();
    for img in d.images.list()? {
        if !trusted && !img.put.public {
            continue;
        }
        let v = serde_json::to_value(&img).unwrap_or_default();
        if !filter.matches(&v) {
            continue;
        }
        out.push(if rec > 0 {
            v
        } else {
            serde_json::json!(format!("/1.0/images/{}", img.fingerprint))
        });
    }
    Ok(response::sync(&out))
}

/// The image `fp` names, for a caller who may not see every image: whatever fails (no match,
/// a prefix that several images share) is the same "not found" a hidden image is, so that an
/// untrusted caller learns nothing of the private ones (LXD looks among the public ones only).
fn image_for(d: &Daemon, fp: &str, trusted: bool) -> Result<api::Image> {
    match d.images.get(fp) {
        Ok(img) => Ok(img),
        Err(e) if trusted => Err(e.into()),
        Err(_) => Err(hidden()),
    }
}

pub fn image_get(d: &Daemon, req: &Request, fp: &str, trusted: bool) -> Result<Response> {
    let img = image_for(d, fp, trusted)?;
    if !visible(d, req, &img, trusted) {
        return Err(hidden());
    }
    let etag = response::etag(&img.put);
    Ok(response::sync_etag(&img, Some(etag)))
}

pub fn image_put(d: &Daemon, req: &mut Request, fp: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let img = d.images.get(fp)?;
    response::check_etag(req.header("If-Match"), &response::etag(&img.put))?;
    let put: api::ImagePut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    let next = if patch {
        let mut n = img.put.clone();
        if body.get("auto_update").is_some() {
            n.auto_update = put.auto_update;
        }
        if body.get("public").is_some() {
            n.public = put.public;
        }
        if body.get("properties").is_some() {
            n.properties.extend(put.properties);
        }
        if body.get("expires_at").is_some() {
            n.expires_at = put.expires_at;
        }
        if body.get("profiles").is_some() {
            n.profiles = put.profiles;
        }
        n
    } else {
        let mut n = put;
        // LXD: a PUT without profiles gives the image the default one.
        if body.get("profiles").is_none_or(serde_json::Value::is_null) {
            n.profiles = vec!["default".into()];
        }
        n
    };
    {
        let db = d.db.lock().expect("db lock");
        if let Some(p) = next
            .profiles
            .iter()
            .find(|p| !db.data.profiles.contains_key(p.as_str()))
        {
            return Err(Error::BadRequest(format!("Profile '{p}' doesn't exist")));
        }
    }
    d.images.update(&img.fingerprint, &next)?;
    Ok(response::empty())
}

pub fn image_delete(d: &Daemon, fp: &str) -> Result<Response> {
    let img = d.images.get(fp)?;
    let images_url = format!("/1.0/images/{}", img.fingerprint);
    d.images.delete(&img.fingerprint)?;
    crate::instance::pools::delete_image_volumes(d, &img.fingerprint);
    d.events
        .lifecycle("image-deleted", &images_url, serde_json::json!({}));
    let op = d
        .ops
        .done("Deleting image", resources("images", &images_url), None);
    Ok(response::operation(&op.to_api()))
}

/// `POST /1.0/images/FP/secret`: a download token (a token operation whose metadata holds the
/// secret) that lets an untrusted client fetch this one image. It stays until used or
/// cancelled. Over the unix socket every client is trusted, so nothing here consumes it yet;
/// it is what `lxc image copy` between servers asks for.
pub fn image_secret(d: &Daemon, fp: &str) -> Result<Response> {
    let img = d.images.get(fp)?;
    let url = format!("/1.0/images/{}", img.fingerprint);
    let secret = crate::instance::operations::secret();
    let op = d.ops.create(
        Class::Token,
        "Image download token",
        resources("images", &url),
        Some(serde_json::json!({"secret": secret})),
        vec![],
    );
    op.set_status(api::status::RUNNING, String::new());
    let weak = std::sync::Arc::downgrade(&op);
    op.set_cancel(Box::new(move || {
        if let Some(o) = weak.upgrade() {
            o.set_status(api::status::CANCELLED, String::new());
        }
    }));
    Ok(response::operation(&op.to_api()))
}

/// `POST /1.0/images/FP/refresh`: only images pulled from a remote server (with an update
/// source) can be refreshed; simplestreams sources are checked for a newer image.
pub fn image_refresh(d: &Daemon, fp: &str) -> Result<Response> {
    let img = d.images.get(fp)?;
    match img.update_source.clone() {
        None => Err(Error::BadRequest(format!(
            "Image {} has no update source: only images pulled from a remote server can be refreshed",
            img.fingerprint
        ))),
        Some(src) => super::super::pull::refresh(d, img, src),
    }
}

fn resources(kind: &str, url: &str) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert(kind.to_string(), vec![url.to_string()]);
    m
}

pub fn image_export(d: &Daemon, req: &Request, fp: &str, trusted: bool) -> Result<Response> {
    let img = image_for(d, fp, trusted)?;
    if !visible(d, req, &img, trusted) {
        return Err(hidden());
    }
    // A download secret is good for one export (LXD's one-time secret).
    if !trusted && !img.put.public {
        if let Some(op) = req
            .query("secret")
            .and_then(|s| secret_op(d, &img.fingerprint, s))
        {
            op.set_status(api::status::SUCCESS, String::new());
        }
    }
    let (main, rootfs) = d.images.files(&img.fingerprint)?;
    let open = |p: &std::path::Path| {
        std::fs::File::open(p).map_err(|e| Error::Internal(format!("{}: {e}", p.display())))
    };
    let filename = if img.filename.is_empty() {
        format!("{}.tar.gz", img.fingerprint)
    } else {
        img.filename.clone()
    };
    match rootfs {
        None => {
            let f = open(&main)?;
            let len = f.metadata().map(|m| m.len()).ok();
            Ok(Response::new(200)
                .header("Content-Type", "application/octet-stream")
                .header(
                    "Content-Disposition",
                    &format!("attachment; filename={filename}"),
                )
                .body(Body::Reader(Box::new(f), len)))
        }
        Some(rootfs) => {
            // Split image: multipart/form-data with `metadata` then `rootfs`, as LXD sends it.
            let boundary = crate::instance::operations::secret();
            let meta_name = filename.clone();
            let root_name = rootfs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let head1 = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"{meta_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            let head2 = format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"rootfs\"; filename=\"{root_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            let tail = format!("\r\n--{boundary}--\r\n");
            let body = std::io::Cursor::new(head1.into_bytes())
                .chain(open(&main)?)
                .chain(std::io::Cursor::new(head2.into_bytes()))
                .chain(open(&rootfs)?)
                .chain(std::io::Cursor::new(tail.into_bytes()));
            Ok(Response::new(200)
                .header(
                    "Content-Type",
                    &format!("multipart/form-data; boundary={boundary}"),
                )
                .body(Body::Reader(Box::new(body), None)))
        }
    }
}

/// `POST /1.0/images`: a raw (unified) or multipart (split) upload, or a JSON body with a source.
pub fn image_create(d: &Daemon, req: &mut Request) -> Result<Response> {
    let ctype = req.header("Content-Type").unwrap_or("").to_string();
    if ctype.starts_with("application/json") {
        let body: api::ImagesPost = json(req)?;
        let kind = body
            .source
            .as_ref()
            .map(|s| s.kind.clone())
            .unwrap_or_default();
        return match kind.as_str() {
            "instance" | "container" | "snapshot" => publish(d, body),
            "url" => super::super::fetch::import_url(d, body),
            "image" => super::super::pull::images_post(d, body),
            _ => Err(Error::not_yet(&format!(
                "image creation from source {kind:?} (image copy between servers)"
            ))),
        };
    }
    let mut opts = image::ImportOpts {
        filename: req.header("X-LXD-filename").unwrap_or("").to_string(),
        public: req
            .header("X-LXD-public")
            .is_some_and(|v| v == "true" || v == "1"),
        expected_fingerprint: req
            .header("X-LXD-fingerprint")
            .filter(|v| !v.is_empty())
            .map(String::from),
        profiles: vec!["default".into()],
        ..Default::default()
    };
    if let Some(props) = req.header("X-LXD-properties") {
        let props = crate::http::parse_query(props)
            .ok_or_else(|| Error::BadRequest("Invalid X-LXD-properties header".into()))?;
        for (k, v) in props {
            opts.properties.insert(k, v);
        }
    }
    if let Some(p) = req.header("X-LXD-profiles") {
        let p = crate::http::parse_query(p)
            .ok_or_else(|| Error::BadRequest("Invalid X-LXD-profiles header".into()))?;
        opts.profiles = p.into_iter().map(|(_, v)| v).collect();
    }
    let img = if let Some(b) = super::super::multipart::boundary(&ctype) {
        let boundary =
            b.map_err(|()| Error::BadRequest("multipart upload without a boundary".into()))?;
        super::super::multipart::import_split(d, req.body(), &boundary, &opts)?
    } else {
        d.images.import(image::Upload::Unified(req.body()), &opts)?
    };
    let url = format!("/1.0/images/{}", img.fingerprint);
    d.events
        .lifecycle("image-created", &url, serde_json::json!({}));
    let meta = serde_json::json!({"fingerprint": img.fingerprint, "size": img.size});
    let op = d
        .ops
        .done("Downloading image", resources("images", &url), Some(meta));
    Ok(response::operation(&op.to_api()))
}

/// Whether an alias points at an image the caller may see (untrusted: a public one).
fn alias_visible(d: &Daemon, a: &api::ImageAliasesEntry, trusted: bool) -> bool {
    trusted || d.images.get(&a.target).is_ok_and(|i| i.put.public)
}

/// An alias's URL, its name one escaped segment as LXD writes it (`debian%2F12`).
fn alias_url(name: &str) -> String {
    format!("/1.0/images/aliases/{}", crate::client::path_escape(name))
}

pub fn aliases_list(d: &Daemon, req: &Request, trusted: bool) -> Result<Response> {
    let mut list = d.images.alias_list()?;
    list.retain(|a| alias_visible(d, a, trusted));
    if recursion(req) > 0 {
        Ok(response::sync(&list))
    } else {
        Ok(response::sync(
            &list.iter().map(|a| alias_url(&a.name)).collect::<Vec<_>>(),
        ))
    }
}

pub fn alias_get(d: &Daemon, name: &str, trusted: bool) -> Result<Response> {
    let a = d.images.alias_get(name)?;
    if !alias_visible(d, &a, trusted) {
        return Err(Error::NotFound("Image alias not found".into()));
    }
    let etag = response::etag(&(&a.description, &a.target));
    Ok(response::sync_etag(&a, Some(etag)))
}

pub fn alias_create(d: &Daemon, req: &mut Request) -> Result<Response> {
    let mut body: api::ImageAliasesEntry = json(req)?;
    // The target may be given as a prefix; store the full fingerprint.
    body.target = d.images.get(&body.target)?.fingerprint;
    if body.kind.is_empty() {
        body.kind = "container".into();
    }
    d.images.alias_create(&body)?;
    Ok(response::created(&alias_url(&body.name)))
}

pub fn alias_put(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let mut body: api::ImageAliasesEntryPut = json(req)?;
    let cur = d.images.alias_get(name)?;
    response::check_etag(
        req.header("If-Match"),
        &response::etag(&(&cur.description, &cur.target)),
    )?;
    if body.target.is_empty() {
        body.target = cur.target;
    } else {
        body.target = d.images.get(&body.target)?.fingerprint;
    }
    d.images.alias_update(name, &body)?;
    Ok(response::empty())
}

pub fn alias_rename(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::ImageAliasesEntryPost = json(req)?;
    d.images.alias_rename(name, &body.name)?;
    Ok(response::created(&alias_url(&body.name)))
}

pub fn alias_delete(d: &Daemon, name: &str) -> Result<Response> {
    d.images.alias_delete(name)?;
    Ok(response::empty())
}

/// `POST /1.0/images` with source `instance`: pack a stopped instance into a new image.
/// `POST /1.0/images` from an instance or a snapshot (`lxc publish`).
pub fn publish(d: &Daemon, body: api::ImagesPost) -> Result<Response> {
    let src = body.source.clone().unwrap_or_default();
    let (name, snap) = match (src.kind.as_str(), src.name.split_once('/')) {
        ("snapshot", Some((i, s))) => (i.to_string(), Some(s.to_string())),
        ("snapshot", None) => {
            return Err(Error::BadRequest(format!(
                "Invalid snapshot name {:?}: expected INSTANCE/SNAPSHOT",
                src.name
            )))
        }
        (_, Some(_)) => {
            return Err(Error::BadRequest(format!(
                "Invalid instance name {:?} (use source type \"snapshot\" for a snapshot)",
                src.name
            )))
        }
        (_, None) => (src.name.clone(), None),
    };
    let rec = crate::instance::view::record(d, &name)?;
    // What to publish: the instance's volume (stopped) or a snapshot's (immutable, any state).
    let (vol, architecture, shift) = match &snap {
        Some(s) => {
            let sr = rec
                .snapshot(s)
                .ok_or_else(|| Error::NotFound(format!("Snapshot {:?} not found", src.name)))?;
            let pool = crate::instance::pools::usable_pool(d, &rec.pool)?;
            (
                pool.snapshot(&rec.volume, &sr.volume),
                sr.architecture.clone(),
                sr.config.get("volatile.last_state.idmap").cloned(),
            )
        }
        None => {
            if matches!(
                crate::instance::view::state_of(d, &name)?,
                crate::runtime::State::Running { .. }
            ) {
                return Err(Error::BadRequest(
                    "The instance is running; stop it first (lxc publish --force does)".into(),
                ));
            }
            (
                d.volume_dir(&rec),
                rec.architecture.clone(),
                rec.config.get("volatile.last_state.idmap").cloned(),
            )
        }
    };
    if shift.is_some_and(|v| v != "[]") {
        return Err(Error::not_yet(
            "publishing an instance whose rootfs is shifted",
        ));
    }
    let algo = if body.compression_algorithm.is_empty() {
        d.db.lock()
            .expect("db lock")
            .data
            .config
            .get("images.compression_algorithm")
            .cloned()
            .unwrap_or_default()
    } else {
        body.compression_algorithm.clone()
    };
    let compression = image::Compression::from_name(&algo)?;
    super::super::request::busy_task(d, &name, "publish", "Publishing instance", move |d, op| {
        crate::instance::images::publish_now(d, &vol, &architecture, &body, compression, &op)
    })
}
