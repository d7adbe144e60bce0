//! Storage pools in the daemon: opening and mounting them at start-up, the
//! `/1.0/storage-pools` endpoints, which pool an instance lives on, and image base volumes
//! (each image unpacked once per pool; instances clone it).
//!
//! Crash consistency: a pool record is written only after its storage was created; a pool is
//! deleted from the database before its storage is destroyed. Image base volumes are unpacked
//! into `images/<fp>.tmp` and renamed into place; `recover` removes any `.tmp` left behind.

use std::path::PathBuf;
use std::sync::Arc;

use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use crate::api::{self, StringMap};
use crate::http::{Request, Response};
use crate::instance::db::PoolRecord;
use crate::instance::pools::{pool, usable_pool};
use crate::instance::Ctx as Daemon;
use crate::storage::{self, Pool};

fn pool_url(name: &str) -> String {
    format!("/1.0/storage-pools/{name}")
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// What uses a pool: instances and their snapshots, profiles with a disk on it, its custom
/// volumes, and the images unpacked on it (LXD lists the same, sorted).
fn used_by(d: &Daemon, name: &str) -> Vec<String> {
    let db = d.db.lock().expect("db lock");
    let mut out = Vec::new();
    for (n, r) in &db.data.instances {
        if r.pool == name {
            out.push(crate::instance::view::url(n));
            for s in &r.snapshots {
                out.push(format!(
                    "{}/snapshots/{}",
                    crate::instance::view::url(n),
                    s.name
                ));
            }
        }
    }
    for (n, p) in db.data.profiles.iter() {
        if p.devices.values().any(|dev| {
            dev.get("type").map(String::as_str) == Some("disk")
                && dev.get("pool").map(String::as_str) == Some(name)
        }) {
            out.push(format!("/1.0/profiles/{n}"));
        }
    }
    if let Some(vols) = db.data.volumes.get(name) {
        out.extend(vols.keys().map(|v| crate::instance::volumes::url(name, v)));
    }
    drop(db);
    if let Ok(p) = pool(d, name) {
        out.extend(
            crate::instance::pools::image_volumes(d, &p)
                .into_iter()
                .map(|f| format!("/1.0/images/{f}")),
        );
    }
    // Sorted, as LXD sorts it.
    crate::util::sort::sort(&mut out);
    out
}

fn to_api(d: &Daemon, name: &str, rec: &PoolRecord) -> api::StoragePool {
    let status = if d
        .pools
        .unavailable
        .lock()
        .expect("pools lock")
        .contains_key(name)
    {
        "Unavailable"
    } else {
        "Created"
    };
    api::StoragePool {
        config: rec.config.clone(),
        description: rec.description.clone(),
        name: name.to_string(),
        driver: rec.driver.clone(),
        used_by: used_by(d, name),
        status: status.into(),
        locations: vec!["none".into()],
    }
}

fn record(d: &Daemon, name: &str) -> Result<PoolRecord> {
    d.db.lock()
        .expect("db lock")
        .data
        .pools
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NotFound("Storage pool not found".into()))
}

fn etag_of(rec: &PoolRecord) -> String {
    response::etag(&serde_json::json!({"config": rec.config, "description": rec.description}))
}

pub fn list(d: &Daemon, req: &Request) -> Result<Response> {
    let records = d.db.lock().expect("db lock").data.pools.clone();
    if recursion(req) > 0 {
        let v: Vec<api::StoragePool> = records.iter().map(|(n, r)| to_api(d, n, r)).collect();
        Ok(response::sync(&v))
    } else {
        Ok(response::sync(
            &records.keys().map(|n| pool_url(n)).collect::<Vec<_>>(),
        ))
    }
}

pub fn get(d: &Daemon, name: &str) -> Result<Response> {
    let rec = record(d, name)?;
    Ok(response::sync_etag(
        &to_api(d, name, &rec),
        Some(etag_of(&rec)),
    ))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PoolsPost {
    name: String,
    driver: String,
    #[serde(deserialize_with = "api::nullable")]
    config: StringMap,
    description: String,
}

/// `POST /1.0/storage-pools`: create the pool's storage, then record it.
pub fn create(d: &Daemon, req: &mut Request) -> Result<Response> {
    let body: PoolsPost = json(req)?;
    storage::validate_pool_name(&body.name).map_err(Error::BadRequest)?;
    if body.driver.is_empty() {
        return Err(Error::BadRequest("No driver provided".into()));
    }
    if !storage::supported_drivers()
        .iter()
        .any(|(n, _)| *n == body.driver)
    {
        return Err(Error::BadRequest(format!(
            "Storage driver {:?} is not supported on this host (it has: {})",
            body.driver,
            storage::supported_drivers()
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // Hold the pools map while creating so two creates of one name cannot both proceed.
    let mut pools = d.pools.pools.lock().expect("pools lock");
    if pools.contains_key(&body.name)
        || d.db
            .lock()
            .expect("db lock")
            .data
            .pools
            .contains_key(&body.name)
    {
        return Err(Error::Conflict(format!(
            "Storage pool {:?} already exists",
            body.name
        )));
    }
    let pool = Pool::new(&body.name, &body.driver, &body.config, &d.dir)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let others: Vec<PathBuf> = pools.values().map(|p| p.driver.path()).collect();
    check_placement(&pool.driver.path(), &body.name, &d.dir, &others)?;
    // Noted before any storage is made, cleared once the record is saved (or undone): a killed
    // create's leftovers are told from a pool whose record was lost (`pools::creating_dir`).
    let intent = crate::instance::pools::creating_dir(d).join(&body.name);
    crate::util::fs::create_dir_mode(&crate::instance::pools::creating_dir(d), 0o700)
        .and_then(|()| crate::util::fs::atomic_write(&intent, b""))
        .map_err(io_err("noting the pool create"))?;
    let clear = || {
        let _ = std::fs::remove_file(&intent);
    };
    let mut config = body.config.clone();
    if let Err(e) = pool.driver.create(&mut config) {
        clear();
        return Err(Error::BadRequest(format!(
            "Failed to create storage pool: {e}"
        )));
    }
    let undo = |e: Error| {
        let _ = pool.driver.delete();
        clear();
        e
    };
    pool.make_layout(false)
        .map_err(io_err("making the pool layout"))
        .map_err(undo)?;
    let rec = PoolRecord {
        driver: body.driver.clone(),
        config,
        description: body.description.clone(),
    };
    d.db.lock()
        .expect("db lock")
        .update(|data| data.pools.insert(body.name.clone(), rec))
        .map_err(io_err("saving the pool"))
        .map_err(undo)?;
    clear();
    pools.insert(body.name.clone(), Arc::new(pool));
    drop(pools);
    d.events.lifecycle(
        "storage-pool-created",
        &pool_url(&body.name),
        serde_json::json!({}),
    );
    Ok(response::empty())
}

/// A new pool's directory must not overlap another pool's (whose recovery would take the new
/// pool's volumes for leftovers) nor the daemon's own state, except at its default place
/// `$BIVY_DIR/storage-pools/NAME`.
fn check_placement(
    path: &std::path::Path,
    name: &str,
    bivy_dir: &std::path::Path,
    others: &[PathBuf],
) -> Result<()> {
    use std::path::Component;
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(Error::BadRequest(format!(
            "Storage pool source {:?} must be a plain absolute path (no \".\" or \"..\")",
            path.display().to_string()
        )));
    }
    if path != bivy_dir.join("storage-pools").join(name)
        && (path.starts_with(bivy_dir) || bivy_dir.starts_with(path))
    {
        return Err(Error::BadRequest(format!(
            "Storage pool source {:?} overlaps the daemon's directory {:?}",
            path.display().to_string(),
            bivy_dir.display().to_string()
        )));
    }
    if let Some(o) = others
        .iter()
        .find(|o| path.starts_with(o) || o.starts_with(path))
    {
        return Err(Error::BadRequest(format!(
            "Storage pool source {:?} overlaps the storage pool at {:?}",
            path.display().to_string(),
            o.display().to_string()
        )));
    }
    Ok(())
}

/// `PUT`/`PATCH /1.0/storage-pools/NAME`: the description and config. Keys that choose the
/// storage itself (`source`, `size`, the driver's options) cannot change on a live pool.
pub fn put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let cur = record(d, name)?;
    response::check_etag(req.header("If-Match"), &etag_of(&cur))?;
    let put: api::StoragePoolPut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    let mut next = cur.clone();
    if !patch || body.get("description").is_some() {
        next.description = put.description;
    }
    if patch {
        for (k, v) in put.config {
            next.config.insert(k, v);
        }
    } else {
        next.config = put.config;
        // Keys the server filled in at creation stay when a client leaves them out.
        for (k, v) in &cur.config {
            next.config.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    next.config.retain(|_, v| !v.is_empty());
    // Unknown or malformed keys get the driver's own error.
    let updated = Pool::new(name, &cur.driver, &next.config, &d.dir)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let live = d.pools.get(name);
    let live_keys = live.as_ref().map_or(&[][..], |p| p.driver.live_keys());
    for (k, v) in &next.config {
        if cur.config.get(k) != Some(v) && !live_keys.contains(&k.as_str()) {
            return Err(Error::BadRequest(format!(
                "Storage pool config key {k:?} cannot be changed on an existing pool"
            )));
        }
    }
    for k in cur.config.keys() {
        if !next.config.contains_key(k) {
            return Err(Error::BadRequest(format!(
                "Storage pool config key {k:?} cannot be removed from an existing pool"
            )));
        }
    }
    // Keys the pool takes live (a loop pool's size): applied to its storage, then recorded.
    if next.config != cur.config {
        let pool = live
            .ok_or_else(|| Error::BadRequest(format!("Storage pool {name:?} is not available")))?;
        pool.driver
            .update(&next.config)
            .map_err(|e| Error::BadRequest(format!("Failed to update the storage pool: {e}")))?;
        d.pools
            .pools
            .lock()
            .expect("pools lock")
            .insert(name.to_string(), Arc::new(updated));
    }
    d.db.lock()
        .expect("db lock")
        .update(|data| data.pools.insert(name.to_string(), next))
        .map_err(io_err("saving the pool"))?;
    d.events.lifecycle(
        "storage-pool-updated",
        &pool_url(name),
        serde_json::json!({}),
    );
    Ok(response::empty())
}

/// `DELETE /1.0/storage-pools/NAME`: refused while anything uses it (image base volumes are a
/// cache and go with the pool).
pub fn delete(d: &Daemon, name: &str) -> Result<Response> {
    record(d, name)?;
    let users: Vec<String> = used_by(d, name)
        .into_iter()
        .filter(|u| !u.starts_with("/1.0/images/"))
        .collect();
    if !users.is_empty() {
        return Err(Error::BadRequest(format!(
            "The storage pool is currently in use by: {}",
            users.join(", ")
        )));
    }
    // The storage goes first: if it cannot (a volume still being made on it, a busy mount), the
    // pool stays as it was. A crash between the two steps leaves a record whose storage is gone:
    // that pool shows as unavailable and deleting it again finishes the job.
    let mut pools = d.pools.pools.lock().expect("pools lock");
    if let Some(p) = pools.get(name).cloned() {
        crate::instance::pools::wait_for_removals(&p.driver.path());
        crate::instance::pools::delete_pool_image_volumes(d, &p);
        crate::instance::markers::remove_pool_files(&p.driver.path());
        if let Err(e) = p.driver.delete() {
            // The pool stays: its record files come back (the image volumes, a cache, do not).
            let data = d.db.lock().expect("db lock").data.clone();
            crate::instance::markers::ensure_all(&d.dir, &data);
            return Err(Error::BadRequest(format!(
                "Failed to delete storage pool {name:?}: {e}"
            )));
        }
    }
    d.db.lock()
        .expect("db lock")
        .update(|data| data.pools.remove(name))
        .map_err(io_err("saving"))?;
    pools.remove(name);
    drop(pools);
    d.pools.unavailable.lock().expect("pools lock").remove(name);
    d.events.lifecycle(
        "storage-pool-deleted",
        &pool_url(name),
        serde_json::json!({}),
    );
    Ok(response::empty())
}

pub fn resources(d: &Daemon, name: &str) -> Result<Response> {
    record(d, name)?;
    let p = usable_pool(d, name)?;
    let u = p.driver.usage().map_err(io_err("reading pool usage"))?;
    Ok(response::sync(&serde_json::json!({
        "space": {"used": u.used, "total": u.total},
        "inodes": {"used": u.inodes_used, "total": u.inodes_total}
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn pool_placement() {
        let bd = Path::new("/var/lib/bivy");
        let others = vec![
            bd.join("storage-pools/default"),
            PathBuf::from("/srv/pool1"),
        ];
        let ok = |p: &str, n: &str| check_placement(Path::new(p), n, bd, &others).is_ok();
        assert!(ok("/var/lib/bivy/storage-pools/p2", "p2"));
        assert!(ok("/srv/pool2", "p2"));
        assert!(!ok("/var/lib/bivy/storage-pools/default/containers/x", "x"));
        assert!(!ok("/var/lib/bivy/storage-pools/p2", "other-name"));
        assert!(!ok("/var/lib/bivy/images", "p2"));
        assert!(!ok("/var/lib", "p2"));
        assert!(!ok("/srv/pool1/sub", "p2"));
        assert!(!ok("/srv", "p2"));
        assert!(!ok("/srv/x/../pool1", "p2"));
    }
}
