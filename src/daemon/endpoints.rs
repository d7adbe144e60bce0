//! Endpoints other than instances: the server (`/1.0`), operations, events, profiles, images,
//! and the read-only storage-pool, network and certificate views.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use super::db::ProfileRecord;
use super::filter::Filter;
use super::operations::Class;
use super::response::{self, Error, Result};
use super::routes::{json, recursion};
use super::{config, Daemon};
use crate::api::{self, extensions::API_EXTENSIONS};
use crate::http::{ws, Body, Request, Response};
use crate::image;

// ---------------------------------------------------------------------------------------------
// /1.0

fn server(d: &Daemon) -> api::Server {
    let cfg = d.db.lock().expect("db lock").data.config.clone();
    let mut config = api::StringMap::new();
    for (k, v) in cfg {
        // The trust password is never shown, only that one is set (LXD shows `true`).
        config.insert(
            k.clone(),
            if k == "core.trust_password" {
                "true".into()
            } else {
                v
            },
        );
    }
    // What bivy does on this host, not what the kernel could: idmapped mounts as probed on
    // `$BIVY_DIR` at start; no seccomp user notification (syscall interception) exists in bivy,
    // and no shiftfs.
    let flag = |b: bool| if b { "true" } else { "false" }.to_string();
    let mut kernel_features = api::StringMap::new();
    kernel_features.insert("idmapped_mounts".into(), flag(d.host.idmapped_mounts));
    kernel_features.insert("seccomp_listener".into(), flag(false));
    kernel_features.insert("shiftfs".into(), flag(false));
    api::Server {
        config,
        api_extensions: API_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        api_status: "stable".into(),
        api_version: "1.0".into(),
        auth: "trusted".into(),
        public: false,
        auth_methods: vec!["tls".into()],
        environment: api::ServerEnvironment {
            addresses: vec![],
            architectures: architectures(&d.host.architecture),
            certificate: String::new(),
            certificate_fingerprint: String::new(),
            driver: "bivy".into(),
            driver_version: env!("CARGO_PKG_VERSION").into(),
            firewall: String::new(),
            kernel: "Linux".into(),
            kernel_architecture: d.host.architecture.clone(),
            kernel_features,
            kernel_version: d.host.kernel_version.clone(),
            lxc_features: api::StringMap::new(),
            os_name: d.host.os_name.clone(),
            os_version: d.host.os_version.clone(),
            project: "default".into(),
            server: "bivy".into(),
            server_clustered: false,
            server_event_mode: "full-mesh".into(),
            server_name: d.host.hostname.clone(),
            server_pid: i64::from(std::process::id()),
            server_version: env!("CARGO_PKG_VERSION").into(),
            storage: "dir".into(),
            storage_version: "1".into(),
            storage_supported_drivers: crate::storage::supported_drivers()
                .into_iter()
                .map(|(name, version)| api::StorageDriverInfo {
                    name: name.into(),
                    version,
                    remote: false,
                })
                .collect(),
        },
    }
}

/// The personalities this host runs (x86_64 also runs i686).
pub fn architectures(machine: &str) -> Vec<String> {
    match machine {
        "x86_64" => vec!["x86_64".into(), "i686".into()],
        "aarch64" => vec!["aarch64".into(), "armv7l".into()],
        m => vec![m.to_string()],
    }
}

pub fn server_get(d: &Daemon) -> Result<Response> {
    let s = server(d);
    let etag = response::etag(&s.config);
    Ok(response::sync_etag(&s, Some(etag)))
}

pub fn server_put(d: &Daemon, req: &mut Request, patch: bool) -> Result<Response> {
    let body: api::ServerPut = json(req)?;
    let mut db = d.db.lock().expect("db lock");
    response::check_etag(
        req.header("If-Match"),
        &response::etag(&server_config_view(&db.data.config)),
    )?;
    let mut next = if patch {
        db.data.config.clone()
    } else {
        api::StringMap::new()
    };
    for (k, v) in &body.config {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        config::validate_server_key(k, &v)?;
        if k == "core.https_address" && !v.is_empty() {
            return Err(Error::not_yet("core.https_address (the HTTPS listener)"));
        }
        if k == "core.trust_password" && !v.is_empty() {
            return Err(Error::not_yet("core.trust_password (HTTPS remotes)"));
        }
        if v.is_empty() {
            next.remove(k);
        } else {
            next.insert(k.clone(), v);
        }
    }
    db.update(|data| data.config = next)
        .map_err(|e| Error::Internal(format!("saving config: {e}")))?;
    apply_server_config(d, &db.data.config);
    Ok(response::empty())
}

/// Make the server config that takes effect without a restart take effect (at start too).
pub fn apply_server_config(d: &Daemon, config: &api::StringMap) {
    let max = config
        .get("images.max_unpacked_size")
        .and_then(|v| crate::storage::btrfs::parse_size(v).ok())
        .unwrap_or(image::DEFAULT_MAX_UNPACKED);
    d.images.set_max_unpacked(max);
}

fn server_config_view(c: &api::StringMap) -> api::StringMap {
    c.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if k == "core.trust_password" {
                    "true".into()
                } else {
                    v.clone()
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Operations and events

pub fn operations_list(d: &Daemon, req: &Request) -> Result<Response> {
    let rec = recursion(req);
    let mut by_status: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for op in d.ops.list() {
        let a = op.to_api();
        let key = a.status.to_lowercase();
        let v = if rec > 0 {
            serde_json::to_value(&a).unwrap_or_default()
        } else {
            serde_json::json!(format!("/1.0/operations/{}", a.id))
        };
        by_status.entry(key).or_default().push(v);
    }
    Ok(response::sync(&by_status))
}

fn find_op(d: &Daemon, id: &str) -> Result<Arc<super::operations::Op>> {
    d.ops
        .get(id)
        .ok_or_else(|| Error::NotFound("Operation not found".into()))
}

pub fn operation_get(d: &Daemon, id: &str) -> Result<Response> {
    Ok(response::sync(&find_op(d, id)?.to_api()))
}

pub fn operation_cancel(d: &Daemon, id: &str) -> Result<Response> {
    find_op(d, id)?.cancel()?;
    Ok(response::empty())
}

pub fn operation_wait(d: &Daemon, req: &Request, id: &str) -> Result<Response> {
    let op = find_op(d, id)?;
    let timeout = req
        .query("timeout")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(-1);
    op.wait(if timeout < 0 {
        None
    } else {
        Some(Duration::from_secs(timeout as u64))
    });
    Ok(response::sync(&op.to_api()))
}

pub fn operation_websocket(d: &Daemon, req: &mut Request, id: &str) -> Result<Response> {
    let op = find_op(d, id)?;
    let secret = req.query("secret").unwrap_or("").to_string();
    if !op.has_secret(&secret) {
        return Err(Error::Forbidden("Invalid websocket secret".into()));
    }
    let resp = ws::accept(req);
    if resp.status != 101 {
        return Ok(resp);
    }
    let mut resp = resp;
    resp.upgrade = Some(Box::new(move |stream| {
        if let Err(s) = op.connect(&secret, stream) {
            let _ = s.shutdown_both();
        }
    }));
    Ok(resp)
}

pub fn events(d: &Daemon, req: &mut Request) -> Result<Response> {
    if !req.is_websocket() {
        return Err(Error::BadRequest(
            "The events endpoint needs a websocket upgrade".into(),
        ));
    }
    let types: Vec<String> = req
        .query("type")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    for t in &types {
        if !matches!(t.as_str(), "operation" | "logging" | "lifecycle") {
            return Err(Error::BadRequest(format!(
                "{t:?} isn't a supported event type"
            )));
        }
    }
    let mut resp = ws::accept(req);
    if resp.status != 101 {
        return Ok(resp);
    }
    let events = d.events.clone();
    resp.upgrade = Some(Box::new(move |stream| serve_events(&events, stream, types)));
    Ok(resp)
}

/// Serve one websocket subscriber of `types` (empty: every type) until it goes away.
fn serve_events(
    events: &crate::instance::events::Events,
    stream: Box<dyn crate::http::Stream>,
    types: Vec<String>,
) {
    let Ok((sender, mut receiver)) = ws::split(stream, ws::Role::Server) else {
        return;
    };
    let rx = events.subscribe(types);
    // Reader: notices the client closing (or sending anything) and stops the writer.
    let closer = sender.clone();
    let reader = std::thread::spawn(move || {
        while let Ok(msg) = receiver.recv() {
            if let ws::Message::Close(_) = msg {
                break;
            }
        }
        closer.shutdown();
    });
    let _ = sender.ping();
    // Writer: this thread; ends when the hub drops our queue or a send fails.
    for text in rx {
        if sender.send_text(&text).is_err() {
            break;
        }
    }
    sender.shutdown();
    let _ = reader.join();
}

// ---------------------------------------------------------------------------------------------
// Profiles

fn used_by(data: &super::db::Data, profile: &str) -> Vec<String> {
    data.instances
        .iter()
        .filter(|(_, i)| i.profiles.iter().any(|p| p == profile))
        .map(|(n, _)| format!("/1.0/instances/{n}"))
        .collect()
}

fn profile_api(data: &super::db::Data, name: &str, p: &ProfileRecord) -> api::Profile {
    api::Profile {
        config: p.config.clone(),
        description: p.description.clone(),
        devices: p.devices.clone(),
        name: name.to_string(),
        used_by: used_by(data, name),
    }
}

fn profile_etag(p: &ProfileRecord) -> String {
    response::etag(&(&p.config, &p.description, &p.devices))
}

pub fn profiles_list(d: &Daemon, req: &Request) -> Result<Response> {
    let db = d.db.lock().expect("db lock");
    if recursion(req) > 0 {
        let v: Vec<api::Profile> = db
            .data
            .profiles
            .iter()
            .map(|(n, p)| profile_api(&db.data, n, p))
            .collect();
        Ok(response::sync(&v))
    } else {
        let v: Vec<String> = db
            .data
            .profiles
            .keys()
            .map(|n| format!("/1.0/profiles/{n}"))
            .collect();
        Ok(response::sync(&v))
    }
}

pub fn profile_get(d: &Daemon, name: &str) -> Result<Response> {
    let db = d.db.lock().expect("db lock");
    let p = db
        .data
        .profiles
        .get(name)
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    Ok(response::sync_etag(
        &profile_api(&db.data, name, p),
        Some(profile_etag(p)),
    ))
}

pub fn profile_create(d: &Daemon, req: &mut Request) -> Result<Response> {
    let body: api::ProfilesPost = json(req)?;
    config::validate_profile_name(&body.name)?;
    config::validate_config(&body.put.config, &api::StringMap::new(), d.host.ncpus)?;
    config::validate_devices(&body.put.devices)?;
    let mut db = d.db.lock().expect("db lock");
    if db.data.profiles.contains_key(&body.name) {
        return Err(Error::Conflict(format!(
            "Profile {:?} already exists",
            body.name
        )));
    }
    let rec = ProfileRecord {
        config: body.put.config,
        description: body.put.description,
        devices: body.put.devices,
    };
    db.update(|data| data.profiles.insert(body.name.clone(), rec))
        .map_err(|e| Error::Internal(e.to_string()))?;
    d.events.lifecycle(
        "profile-created",
        &format!("/1.0/profiles/{}", body.name),
        serde_json::json!({}),
    );
    Ok(response::created(&format!("/1.0/profiles/{}", body.name)))
}

pub fn profile_put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let mut db = d.db.lock().expect("db lock");
    let cur = db
        .data
        .profiles
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    response::check_etag(req.header("If-Match"), &profile_etag(&cur))?;
    let put: api::ProfilePut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    let mut next = if patch {
        cur.clone()
    } else {
        ProfileRecord::default()
    };
    if patch {
        if body.get("config").is_some() {
            for (k, v) in put.config {
                if v.is_empty() {
                    next.config.remove(&k);
                } else {
                    next.config.insert(k, v);
                }
            }
        }
        if body.get("devices").is_some() {
            next.devices.extend(put.devices);
        }
        if body.get("description").is_some() {
            next.description = put.description;
        }
    } else {
        next = ProfileRecord {
            config: put.config,
            description: put.description,
            devices: put.devices,
        };
    }
    config::validate_config(&next.config, &api::StringMap::new(), d.host.ncpus)?;
    config::validate_devices(&next.devices)?;
    // Every instance using the profile must still have a root disk.
    for (iname, inst) in &db.data.instances {
        if inst.profiles.iter().any(|p| p == name) {
            let mut profiles = db.data.profiles.clone();
            profiles.insert(name.to_string(), next.clone());
            let (_, devs) = config::expand(&inst.profiles, &profiles, &inst.config, &inst.devices);
            if !super::instances::has_root_disk(&devs) {
                return Err(Error::BadRequest(format!(
                    "Instance {iname:?} would have no root disk device"
                )));
            }
        }
    }
    db.update(|data| data.profiles.insert(name.to_string(), next))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let affected: Vec<String> = db
        .data
        .instances
        .iter()
        .filter(|(_, i)| i.profiles.iter().any(|p| p == name))
        .map(|(n, _)| n.clone())
        .collect();
    drop(db);
    for n in affected {
        super::instances::apply_live_limits(d, &n);
    }
    d.events.lifecycle(
        "profile-updated",
        &format!("/1.0/profiles/{name}"),
        serde_json::json!({}),
    );
    Ok(response::empty())
}

pub fn profile_rename(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::ProfilePost = json(req)?;
    config::validate_profile_name(&body.name)?;
    if name == "default" {
        return Err(Error::Forbidden(
            "The \"default\" profile cannot be renamed".into(),
        ));
    }
    let mut db = d.db.lock().expect("db lock");
    let cur = db
        .data
        .profiles
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    if db.data.profiles.contains_key(&body.name) {
        return Err(Error::Conflict(format!(
            "Name {:?} already in use",
            body.name
        )));
    }
    db.update(|data| {
        data.profiles.remove(name);
        data.profiles.insert(body.name.clone(), cur);
        for inst in data.instances.values_mut() {
            for p in inst.profiles.iter_mut() {
                if p == name {
                    *p = body.name.clone();
                }
            }
        }
    })
    .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(response::created(&format!("/1.0/profiles/{}", body.name)))
}

pub fn profile_delete(d: &Daemon, name: &str) -> Result<Response> {
    if name == "default" {
        return Err(Error::Forbidden(
            "The \"default\" profile cannot be deleted".into(),
        ));
    }
    let mut db = d.db.lock().expect("db lock");
    if !db.data.profiles.contains_key(name) {
        return Err(Error::NotFound("Profile not found".into()));
    }
    if !used_by(&db.data, name).is_empty() {
        return Err(Error::BadRequest("Profile is currently in use".into()));
    }
    db.update(|data| data.profiles.remove(name))
        .map_err(|e| Error::Internal(e.to_string()))?;
    d.events.lifecycle(
        "profile-deleted",
        &format!("/1.0/profiles/{name}"),
        serde_json::json!({}),
    );
    Ok(response::empty())
}

// ---------------------------------------------------------------------------------------------
// Images

pub fn images_list(d: &Daemon, req: &Request) -> Result<Response> {
    let filter = Filter::parse(req.query("filter").unwrap_or(""))?;
    let rec = recursion(req);
    let mut out = Vec::new();
    for img in d.images.list()? {
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

pub fn image_get(d: &Daemon, fp: &str) -> Result<Response> {
    let img = d.images.get(fp)?;
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
        put
    };
    d.images.update(&img.fingerprint, &next)?;
    Ok(response::empty())
}

pub fn image_delete(d: &Daemon, fp: &str) -> Result<Response> {
    let img = d.images.get(fp)?;
    let images_url = format!("/1.0/images/{}", img.fingerprint);
    d.images.delete(&img.fingerprint)?;
    super::storage::delete_image_volumes(d, &img.fingerprint);
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
    let secret = super::operations::secret();
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
        Some(src) => super::pull::refresh(d, img, src),
    }
}

fn resources(kind: &str, url: &str) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert(kind.to_string(), vec![url.to_string()]);
    m
}

pub fn image_export(d: &Daemon, fp: &str) -> Result<Response> {
    let img = d.images.get(fp)?;
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
            let boundary = super::operations::secret();
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
            "instance" | "container" | "snapshot" => super::instances::publish(d, body),
            "url" => super::fetch::import_url(d, body),
            "image" => super::pull::images_post(d, body),
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
    let img = if let Some(b) = ctype.strip_prefix("multipart/form-data") {
        let boundary = b
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|s| s.trim_matches('"').to_string())
            .ok_or_else(|| Error::BadRequest("multipart upload without a boundary".into()))?;
        super::multipart::import_split(d, req.body(), &boundary, &opts)?
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

/// The end of an operation that made an image (publish, URL import): its aliases, the
/// operation's `fingerprint`/`size` result and the lifecycle event.
pub fn image_created(
    d: &Daemon,
    op: &super::operations::Op,
    img: &api::Image,
    aliases: &[api::ImageAlias],
) -> Result<()> {
    for a in aliases {
        d.images.alias_create(&api::ImageAliasesEntry {
            name: a.name.clone(),
            description: a.description.clone(),
            target: img.fingerprint.clone(),
            kind: "container".into(),
        })?;
    }
    op.set_metadata("fingerprint", serde_json::json!(img.fingerprint));
    op.set_metadata("size", serde_json::json!(img.size));
    d.events.lifecycle(
        "image-created",
        &format!("/1.0/images/{}", img.fingerprint),
        serde_json::json!({}),
    );
    Ok(())
}

pub fn aliases_list(d: &Daemon, req: &Request) -> Result<Response> {
    let list = d.images.alias_list()?;
    if recursion(req) > 0 {
        Ok(response::sync(&list))
    } else {
        Ok(response::sync(
            &list
                .iter()
                .map(|a| format!("/1.0/images/aliases/{}", a.name))
                .collect::<Vec<_>>(),
        ))
    }
}

pub fn alias_get(d: &Daemon, name: &str) -> Result<Response> {
    let a = d.images.alias_get(name)?;
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
    Ok(response::created(&format!(
        "/1.0/images/aliases/{}",
        body.name
    )))
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
    Ok(response::created(&format!(
        "/1.0/images/aliases/{}",
        body.name
    )))
}

pub fn alias_delete(d: &Daemon, name: &str) -> Result<Response> {
    d.images.alias_delete(name)?;
    Ok(response::empty())
}

// ---------------------------------------------------------------------------------------------
// Storage pools, networks, certificates (read-only views until their issues land)

/// Host interfaces as unmanaged networks (what `lxc network list` shows for a host without
/// managed networks).
fn host_networks() -> Vec<api::Network> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let base = std::path::Path::new("/sys/class/net").join(&n);
            let kind = if base.join("bridge").exists() {
                "bridge"
            } else if n == "lo" {
                "loopback"
            } else {
                "physical"
            };
            out.push(api::Network {
                config: api::StringMap::new(),
                description: String::new(),
                name: n.clone(),
                kind: kind.into(),
                used_by: vec![],
                managed: false,
                status: String::new(),
                locations: vec![],
            });
        }
    }
    out
}

pub fn networks_list(_d: &Daemon, req: &Request) -> Result<Response> {
    let nets = host_networks();
    if recursion(req) > 0 {
        Ok(response::sync(&nets))
    } else {
        Ok(response::sync(
            &nets
                .iter()
                .map(|n| format!("/1.0/networks/{}", n.name))
                .collect::<Vec<_>>(),
        ))
    }
}

pub fn network_get(_d: &Daemon, name: &str) -> Result<Response> {
    host_networks()
        .into_iter()
        .find(|n| n.name == name)
        .map(|n| response::sync(&n))
        .ok_or_else(|| Error::NotFound("Network not found".into()))
}

/// No trust store yet (HTTPS is not built): the list is empty at any recursion.
pub fn certificates_list() -> Result<Response> {
    Ok(response::sync(&Vec::<String>::new()))
}
