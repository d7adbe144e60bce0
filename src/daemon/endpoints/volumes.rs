//! `/1.0/storage-pools/<pool>/volumes[/<type>[/<name>[/snapshots[/<snap>]]]]`: the volumes on a
//! pool (instance, image and custom volumes), the custom volumes' create (empty or a copy),
//! show, edit, restore, rename, move to another pool and delete, and their snapshots.
//! Parse, call `instance::volumes` and `instance::volume_snapshots`, render; LXD 5.0.2's shapes
//! (`lxd/storage_volumes.go`, `lxd/storage_volumes_snapshot.go`).

use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use crate::api;
use crate::http::{Request, Response};
use crate::instance::pools::{image_volumes, pool};
use crate::instance::volume_snapshots as vsnaps;
use crate::instance::volumes::{self, CUSTOM};
use crate::instance::Ctx as Daemon;

/// The volume types a pool holds, as LXD names them.
const TYPES: [&str; 4] = ["container", "virtual-machine", "image", CUSTOM];

fn check_pool(d: &Daemon, name: &str) -> Result<()> {
    if d.db.lock().expect("db lock").data.pools.contains_key(name) {
        Ok(())
    } else {
        Err(Error::NotFound("Storage pool not found".into()))
    }
}

fn check_type(kind: &str) -> Result<()> {
    if TYPES.contains(&kind) {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "Invalid storage volume type {kind:?}"
        )))
    }
}

/// An instance or image volume as LXD lists it.
fn plain_volume(
    name: &str,
    kind: &str,
    used_by: Vec<String>,
    created_at: &str,
) -> api::StorageVolume {
    api::StorageVolume {
        name: name.to_string(),
        kind: kind.to_string(),
        used_by,
        location: "none".into(),
        content_type: volumes::FILESYSTEM.into(),
        project: "default".into(),
        created_at: created_at.to_string(),
        ..Default::default()
    }
}

/// Every volume on the pool: instances and their snapshots, images, custom volumes.
fn all_volumes(d: &Daemon, pool_name: &str) -> Vec<api::StorageVolume> {
    let mut out = Vec::new();
    {
        let db = d.db.lock().expect("db lock");
        for (n, r) in &db.data.instances {
            if r.pool != pool_name {
                continue;
            }
            let url = crate::instance::view::url(n);
            out.push(plain_volume(
                n,
                "container",
                vec![url.clone()],
                &r.created_at,
            ));
            for s in &r.snapshots {
                out.push(plain_volume(
                    &format!("{n}/{}", s.name),
                    "container",
                    vec![format!("{url}/snapshots/{}", s.name)],
                    &s.created_at,
                ));
            }
        }
    }
    if let Ok(p) = pool(d, pool_name) {
        for f in image_volumes(d, &p) {
            let used_by = vec![format!("/1.0/images/{f}")];
            out.push(plain_volume(&f, "image", used_by, api::ZERO_TIME));
        }
    }
    for v in volumes::list(d, pool_name) {
        let snaps = vsnaps::list(d, pool_name, &v.name).unwrap_or_default();
        let base = v.clone();
        out.push(v);
        // LXD lists a custom volume's snapshots as volumes named `volume/snap`.
        for s in snaps {
            out.push(api::StorageVolume {
                name: s.name,
                description: s.description,
                config: s.config,
                used_by: Vec::new(),
                created_at: s.created_at,
                ..base.clone()
            });
        }
    }
    out
}

/// Run `body` as a task operation (LXD answers copies, moves and snapshot changes with one).
fn task(
    d: &Daemon,
    description: &str,
    resources: std::collections::BTreeMap<String, Vec<String>>,
    body: impl FnOnce(&Daemon) -> crate::instance::Result<()> + Send + 'static,
) -> Result<Response> {
    let ctx = d.self_arc();
    let op = d.ops.start(
        crate::instance::operations::Class::Task,
        description,
        resources,
        None,
        vec![],
        move |_| body(&ctx),
    );
    Ok(response::operation(&op.to_api()))
}

/// `GET /1.0/storage-pools/POOL/volumes[/TYPE]`.
pub fn list(d: &Daemon, req: &Request, pool_name: &str, kind: Option<&str>) -> Result<Response> {
    check_pool(d, pool_name)?;
    if let Some(k) = kind {
        check_type(k)?;
    }
    let vols: Vec<api::StorageVolume> = all_volumes(d, pool_name)
        .into_iter()
        .filter(|v| kind.is_none_or(|t| t == v.kind))
        .collect();
    if recursion(req) > 0 {
        Ok(response::sync(&vols))
    } else {
        let urls: Vec<String> = vols
            .iter()
            .map(|v| match v.name.split_once('/') {
                // A custom volume's snapshot (LXD's `StorageVolume.URL`).
                Some((vol, snap)) if v.kind == CUSTOM => vsnaps::url(pool_name, vol, snap),
                _ => format!(
                    "/1.0/storage-pools/{pool_name}/volumes/{}/{}",
                    v.kind, v.name
                ),
            })
            .collect();
        Ok(response::sync(&urls))
    }
}

/// `GET /1.0/storage-pools/POOL/volumes/TYPE/NAME`.
pub fn get(d: &Daemon, pool_name: &str, kind: &str, name: &str) -> Result<Response> {
    check_pool(d, pool_name)?;
    check_type(kind)?;
    if kind == CUSTOM {
        let rec = volumes::record(d, pool_name, name)?;
        let v = volumes::get(d, pool_name, name)?;
        let etag = response::etag(&volumes::etag_source(name, &rec));
        return Ok(response::sync_etag(&v, Some(etag)));
    }
    all_volumes(d, pool_name)
        .into_iter()
        .find(|v| v.kind == kind && v.name == name)
        .map(|v| response::sync(&v))
        .ok_or_else(|| Error::NotFound("Storage volume not found".into()))
}

/// `POST /1.0/storage-pools/POOL/volumes[/TYPE]`: a new, empty custom volume.
pub fn create(
    d: &Daemon,
    req: &mut Request,
    pool_name: &str,
    kind: Option<&str>,
) -> Result<Response> {
    let mut body: api::StorageVolumesPost = json(req)?;
    if body.name.is_empty() {
        return Err(Error::BadRequest("No name provided".into()));
    }
    match kind {
        Some(k) => body.kind = k.to_string(),
        None if body.kind.is_empty() => {
            return Err(Error::BadRequest(
                "You must provide a storage volume type of the storage volume".into(),
            ))
        }
        None => {}
    }
    if body.kind != CUSTOM {
        return Err(Error::BadRequest(format!(
            "Currently not allowed to create storage volumes of type {:?}",
            body.kind
        )));
    }
    check_pool(d, pool_name)?;
    if body.source.kind == "migration" {
        return receive(d, pool_name, body);
    }
    if body.source.kind == "copy" {
        // Checked up front where cheap; the copy itself runs as an operation.
        volumes::validate_name(&body.name)?;
        if !matches!(body.content_type.as_str(), "" | volumes::FILESYSTEM) {
            return Err(Error::not_yet(
                "copies of block custom volumes (content_type \"block\" is for virtual machines)",
            ));
        }
        if body.source.name.is_empty() {
            return Err(Error::BadRequest("No source volume name supplied".into()));
        }
        let src_pool = if body.source.pool.is_empty() {
            pool_name.to_string()
        } else {
            body.source.pool.clone()
        };
        check_pool(d, &src_pool)?;
        let src_name = body.source.name.split('/').next().unwrap_or_default();
        volumes::record(d, &src_pool, src_name)?;
        if !body.source.refresh && volumes::record(d, pool_name, &body.name).is_ok() {
            return Err(Error::Conflict("Volume by that name already exists".into()));
        }
        let p = pool_name.to_string();
        return task(
            d,
            "Copying storage volume",
            volumes::resources(pool_name, &body.name),
            move |d| volumes::create(d, &p, &body),
        );
    }
    volumes::create(d, pool_name, &body)?;
    Ok(response::empty())
}

/// A volume from another server (`source.type: migration`): in pull mode a task that dials
/// the source's operation; in push mode (and relay) a websocket operation whose secrets the
/// source, or the client relaying, connects with (open to callers without a trusted
/// certificate: the secrets are their credential), as LXD's.
fn receive(d: &Daemon, pool_name: &str, body: api::StorageVolumesPost) -> Result<Response> {
    crate::migration::volume::check(d, pool_name, &body)?;
    let push = body.source.mode == "push";
    let secrets = if push {
        crate::migration::secrets(false)
    } else {
        Default::default()
    };
    let (class, description, metadata) = if push {
        (
            crate::instance::operations::Class::Websocket,
            "Creating storage volume",
            serde_json::to_value(&secrets).ok(),
        )
    } else {
        (
            crate::instance::operations::Class::Task,
            "Copying storage volume",
            None,
        )
    };
    let ctx = d.self_arc();
    let p = pool_name.to_string();
    let list = secrets.values().cloned().collect();
    let op = d.ops.start(
        class,
        description,
        volumes::resources(pool_name, &body.name),
        metadata,
        list,
        move |op| {
            let report = |m: String| op.set_metadata("fs_progress", serde_json::json!(m));
            let progress = crate::migration::sink::Progress::new(&report);
            crate::migration::volume::receive(&ctx, &p, &body, &op, &secrets, &progress)
        },
    );
    if push {
        op.open_to_untrusted();
    }
    Ok(response::operation(&op.to_api()))
}

fn custom_only(kind: &str, what: &str) -> Result<()> {
    check_type(kind)?;
    if kind == CUSTOM {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "{what} storage volumes of type {kind:?} is not allowed"
        )))
    }
}

/// `PUT`/`PATCH /1.0/storage-pools/POOL/volumes/custom/NAME`.
pub fn put(
    d: &Daemon,
    req: &mut Request,
    pool_name: &str,
    kind: &str,
    name: &str,
    patch: bool,
) -> Result<Response> {
    check_pool(d, pool_name)?;
    if kind != CUSTOM {
        check_type(kind)?;
        return Err(Error::not_yet(&format!(
            "changing storage volumes of type {kind:?}"
        )));
    }
    let if_match = req.header("If-Match").map(str::to_string);
    let body: serde_json::Value = json(req)?;
    let put: api::StorageVolumePut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    let description_given = body.get("description").is_some();
    volumes::update(d, pool_name, name, &put, description_given, patch, |cur| {
        response::check_etag(
            if_match.as_deref(),
            &response::etag(&volumes::etag_source(name, cur)),
        )
        .map_err(|e| crate::instance::Error::PreconditionFailed(e.message().to_string()))
    })?;
    Ok(response::empty())
}

/// `POST /1.0/storage-pools/POOL/volumes/custom/NAME`: rename.
pub fn rename(
    d: &Daemon,
    req: &mut Request,
    pool_name: &str,
    kind: &str,
    name: &str,
) -> Result<Response> {
    let body: api::StorageVolumePost = json(req)?;
    if body.name.is_empty() {
        return Err(Error::BadRequest("No name provided".into()));
    }
    custom_only(kind, "Renaming")?;
    check_pool(d, pool_name)?;
    if body.migration {
        let op = crate::migration::volume::start(d, pool_name, name, &body)?;
        return Ok(response::operation(&op.to_api()));
    }
    if !body.pool.is_empty() && body.pool != pool_name && !body.migration {
        check_pool(d, &body.pool)?;
        volumes::record(d, pool_name, name)?;
        let (p, n) = (pool_name.to_string(), name.to_string());
        return task(
            d,
            "Moving storage volume",
            volumes::resources(pool_name, name),
            move |d| volumes::rename(d, &p, &n, &body),
        );
    }
    volumes::rename(d, pool_name, name, &body)?;
    Ok(response::created(&volumes::url(pool_name, &body.name)))
}

/// `DELETE /1.0/storage-pools/POOL/volumes/custom/NAME`.
pub fn delete(d: &Daemon, pool_name: &str, kind: &str, name: &str) -> Result<Response> {
    check_pool(d, pool_name)?;
    check_type(kind)?;
    if kind != CUSTOM && kind != "image" {
        return Err(Error::BadRequest(format!(
            "Storage volumes of type {kind:?} cannot be deleted with the storage API"
        )));
    }
    if kind == "image" {
        return Err(Error::not_yet(
            "deleting image volumes with the storage API",
        ));
    }
    volumes::delete(d, pool_name, name)?;
    Ok(response::empty())
}

/// The snapshot routes take custom volumes only.
fn snapshot_kind(d: &Daemon, pool_name: &str, kind: &str) -> Result<()> {
    check_pool(d, pool_name)?;
    check_type(kind)?;
    if kind != CUSTOM {
        return Err(Error::not_yet(&format!(
            "snapshots of storage volumes of type {kind:?} through the storage API"
        )));
    }
    Ok(())
}

/// `GET /1.0/storage-pools/POOL/volumes/custom/NAME/snapshots`.
pub fn snapshots(
    d: &Daemon,
    req: &Request,
    pool_name: &str,
    kind: &str,
    name: &str,
) -> Result<Response> {
    snapshot_kind(d, pool_name, kind)?;
    if recursion(req) > 0 {
        return Ok(response::sync(&vsnaps::list(d, pool_name, name)?));
    }
    let urls: Vec<String> = vsnaps::names(d, pool_name, name)?
        .iter()
        .map(|s| vsnaps::url(pool_name, name, s))
        .collect();
    Ok(response::sync(&urls))
}

/// `POST /1.0/storage-pools/POOL/volumes/custom/NAME/snapshots`: an operation.
pub fn snapshot_create(
    d: &Daemon,
    req: &mut Request,
    pool_name: &str,
    kind: &str,
    name: &str,
) -> Result<Response> {
    snapshot_kind(d, pool_name, kind)?;
    let body: api::StorageVolumeSnapshotsPost = json(req)?;
    let snap = vsnaps::check_create(d, pool_name, name, &body)?;
    let mut res = volumes::resources(pool_name, name);
    res.insert(
        "storage_volume_snapshots".into(),
        vec![vsnaps::url(pool_name, name, &snap)],
    );
    let (p, n) = (pool_name.to_string(), name.to_string());
    task(d, "Creating storage volume snapshot", res, move |d| {
        vsnaps::create(d, &p, &n, &snap, body.expires_at).map(drop)
    })
}

/// `GET /1.0/storage-pools/POOL/volumes/custom/NAME/snapshots/SNAP`.
pub fn snapshot_get(
    d: &Daemon,
    pool_name: &str,
    kind: &str,
    name: &str,
    snap: &str,
) -> Result<Response> {
    snapshot_kind(d, pool_name, kind)?;
    let (s, etag) = vsnaps::get(d, pool_name, name, snap)?;
    Ok(response::sync_etag(&s, Some(response::etag(&etag))))
}

/// `PUT`/`PATCH` of a volume snapshot: `description` and `expires_at` (the rest is immutable).
pub fn snapshot_put(
    d: &Daemon,
    req: &mut Request,
    pool_name: &str,
    kind: &str,
    name: &str,
    snap: &str,
    patch: bool,
) -> Result<Response> {
    snapshot_kind(d, pool_name, kind)?;
    let if_match = req.header("If-Match").map(str::to_string);
    let body: serde_json::Value = json(req)?;
    let description = match body.get("description") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Null) | None if patch => None,
        Some(serde_json::Value::Null) | None => Some(String::new()),
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "Invalid description {other}: expected a string"
            )))
        }
    };
    let expires_at = match body.get("expires_at") {
        Some(serde_json::Value::String(t)) => Some(t.clone()),
        Some(serde_json::Value::Null) | None if patch => None,
        Some(serde_json::Value::Null) | None => Some(api::GO_ZERO_TIME.to_string()),
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "Invalid expires_at {other}: expected an RFC 3339 time"
            )))
        }
    };
    vsnaps::update(d, pool_name, name, snap, description, expires_at, |cur| {
        response::check_etag(
            if_match.as_deref(),
            &response::etag(&vsnaps::etag_source(cur)),
        )
        .map_err(|e| crate::instance::Error::PreconditionFailed(e.message().to_string()))
    })?;
    Ok(response::empty())
}

/// `POST /1.0/storage-pools/POOL/volumes/custom/NAME/snapshots/SNAP`: rename, an operation.
pub fn snapshot_rename(
    d: &Daemon,
    req: &mut Request,
    pool_name: &str,
    kind: &str,
    name: &str,
    snap: &str,
) -> Result<Response> {
    snapshot_kind(d, pool_name, kind)?;
    let body: serde_json::Value = json(req)?;
    if body.get("migration").and_then(|v| v.as_bool()) == Some(true) {
        return Err(Error::not_yet("storage volume snapshot migration"));
    }
    let new = body
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    if new.is_empty() {
        return Err(Error::BadRequest("No name provided".into()));
    }
    vsnaps::rename(d, pool_name, name, snap, &new)?;
    let op = d.ops.done(
        "Renaming storage volume snapshot",
        volumes::resources(pool_name, name),
        None,
    );
    Ok(response::operation(&op.to_api()))
}

/// `DELETE /1.0/storage-pools/POOL/volumes/custom/NAME/snapshots/SNAP`: an operation.
pub fn snapshot_delete(
    d: &Daemon,
    pool_name: &str,
    kind: &str,
    name: &str,
    snap: &str,
) -> Result<Response> {
    snapshot_kind(d, pool_name, kind)?;
    vsnaps::get(d, pool_name, name, snap)?;
    let (p, n, s) = (pool_name.to_string(), name.to_string(), snap.to_string());
    task(
        d,
        "Deleting storage volume snapshot",
        volumes::resources(pool_name, name),
        move |d| vsnaps::delete(d, &p, &n, &s),
    )
}

/// `GET /1.0/storage-pools/POOL/volumes/custom/NAME/state`.
pub fn state(d: &Daemon, pool_name: &str, kind: &str, name: &str) -> Result<Response> {
    snapshot_kind(d, pool_name, kind)?;
    Ok(response::sync(&volumes::state(d, pool_name, name)?))
}
