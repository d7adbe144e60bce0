//! `/1.0/storage-pools/<pool>/volumes[/<type>[/<name>]]`: the volumes on a pool (instance,
//! image and custom volumes) and the custom volumes' create, show, edit, rename and delete.
//! Parse, call `instance::volumes`, render; LXD 5.0.2's shapes (`lxd/storage_volumes.go`).

use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use crate::api;
use crate::http::{Request, Response};
use crate::instance::pools::{image_volumes, pool};
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
        for f in image_volumes(&p) {
            let used_by = vec![format!("/1.0/images/{f}")];
            out.push(plain_volume(&f, "image", used_by, api::ZERO_TIME));
        }
    }
    out.extend(volumes::list(d, pool_name));
    out
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
            .map(|v| {
                format!(
                    "/1.0/storage-pools/{pool_name}/volumes/{}/{}",
                    v.kind, v.name
                )
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
    if req.header("Content-Type") == Some("application/octet-stream") {
        return Err(Error::not_yet("importing storage volume backups"));
    }
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
    volumes::create(d, pool_name, &body)?;
    Ok(response::empty())
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
