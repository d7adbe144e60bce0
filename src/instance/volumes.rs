//! Custom storage volumes (`/1.0/storage-pools/<pool>/volumes/custom/<name>`): their config,
//! and create, update, rename and delete with LXD 5.0.2's rules and messages
//! (`lxd/storage_volumes.go`). The records and what uses them are `volume_records`' and copying
//! a volume's data `volume_data`'s (both re-exported here).
//!
//! A volume's data is a directory (dir) or subvolume (btrfs) at `<pool>/custom/<uuid>`, made by
//! the pool's driver; its files are kept in the containers' id space (a file container root owns
//! is owned by uid 0 on disk) and every container mounts it idmapped with its own map, so one
//! volume can be shared by containers with different maps (LXD's `security.shifted=true`).
//!
//! Crash consistency: the data is made before the record is written and removed after the record
//! is gone; a rename only changes records (the instance and profile devices naming the volume
//! change in the same write). What a killed daemon leaves is removed by `pools::recover`.

use std::sync::Arc;

use super::db::{Data, VolumeRecord};
pub use super::volume_data::{apply_size, copy_volume};
use super::volume_records::record_in;
pub use super::volume_records::{
    instances_using, names_volume, record, resources, url, used_by, CUSTOM, FILESYSTEM,
};
use super::{Ctx, Error, Result};
use crate::api::{self, StringMap};
use crate::runtime::State;
use crate::storage::Pool;
use crate::util::revert::Revert;

/// LXD's checks on a new name.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid("No name provided".into()));
    }
    if name.contains('/') {
        return Err(Error::Invalid(
            "Storage volume names may not contain slashes".into(),
        ));
    }
    if name == "." || name == ".." || name.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "Invalid storage volume name {name:?}"
        )));
    }
    Ok(())
}

/// Check a custom volume's config for a pool with driver `driver`. Every key is either kept or
/// refused: `size` is a btrfs qgroup limit; on `dir` it needs project quotas bivy does not set
/// up yet.
pub fn validate_config(driver: &str, name: &str, config: &StringMap) -> Result<()> {
    for (k, v) in config {
        match k.as_str() {
            "size" if v.is_empty() => {}
            "size" => {
                crate::storage::btrfs::parse_size(v)
                    .map_err(|e| Error::config("size", format!("Invalid value for \"size\": {e}")))?;
                match driver {
                    // A qgroup limit (`Driver::set_size`).
                    "btrfs" => {}
                    "dir" => return Err(Error::not_yet(
                        "\"size\" on a custom volume of a dir pool (needs filesystem project quotas, which bivy does not set up; btrfs pools have size limits)",
                    )),
                    _ => return Err(Error::not_yet(&format!(
                        "\"size\" on a custom volume of a {driver} pool (quotas)"
                    ))),
                }
            }
            // bivy always mounts a custom volume idmapped, which is what this key asks for.
            "security.shifted" => match super::config::parse_bool(v) {
                Some(true) => {}
                Some(false) => {
                    return Err(Error::not_yet(
                        "security.shifted=false on custom volumes (bivy always attaches them through idmapped mounts, which is security.shifted=true)",
                    ))
                }
                None => {
                    return Err(Error::config(
                        k,
                        format!("Invalid value for \"security.shifted\": {v:?} is not a boolean"),
                    ))
                }
            },
            "snapshots.expiry" | "snapshots.pattern" | "snapshots.schedule" => {
                validate_snapshots_key(k, v)?
            }
            "security.unmapped" => {
                return Err(Error::not_yet(&format!("storage volume config key {k:?}")))
            }
            // Free-form keys for the user, as LXD's (`user.*`).
            _ if k.starts_with("user.") && k.len() > 5 => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "Invalid option for volume {name:?} option {k:?}"
                )))
            }
        }
    }
    Ok(())
}

/// The API view of a record.
pub fn to_api(data: &Data, pool: &str, name: &str, rec: &VolumeRecord) -> api::StorageVolume {
    api::StorageVolume {
        config: rec.config.clone(),
        description: rec.description.clone(),
        name: name.to_string(),
        kind: CUSTOM.into(),
        used_by: used_by(data, pool, name),
        location: "none".into(),
        content_type: rec.content_type.clone(),
        project: "default".into(),
        created_at: rec.created_at.clone(),
    }
}

/// Every custom volume on `pool`, by name.
pub fn list(d: &Ctx, pool: &str) -> Vec<api::StorageVolume> {
    let db = d.db.lock().expect("db lock");
    db.data
        .volumes
        .get(pool)
        .map(|vols| {
            vols.iter()
                .map(|(n, r)| to_api(&db.data, pool, n, r))
                .collect()
        })
        .unwrap_or_default()
}

/// One custom volume.
pub fn get(d: &Ctx, pool: &str, name: &str) -> Result<api::StorageVolume> {
    let db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool, name)?;
    Ok(to_api(&db.data, pool, name, rec))
}

/// What a volume's ETag covers (LXD: name, type, config).
pub fn etag_source(name: &str, rec: &VolumeRecord) -> serde_json::Value {
    serde_json::json!([name, CUSTOM, rec.config])
}

/// Create an empty custom volume (`POST .../volumes/custom` without a source).
pub fn create(d: &Ctx, pool_name: &str, req: &api::StorageVolumesPost) -> Result<()> {
    validate_name(&req.name)?;
    let content_type = match req.content_type.as_str() {
        "" | FILESYSTEM => FILESYSTEM,
        "block" => {
            return Err(Error::not_yet(
                "block custom volumes (content_type \"block\" is for virtual machines, which bivy does not run)",
            ))
        }
        _ => return Err(Error::Invalid("Invalid volume content type name".into())),
    };
    if !req.kind.is_empty() && req.kind != CUSTOM {
        return Err(Error::Invalid(format!(
            "Currently not allowed to create storage volumes of type {:?}",
            req.kind
        )));
    }
    match req.source.kind.as_str() {
        "" => {}
        "copy" => return copy(d, pool_name, req),
        // Received in an operation (`migration::volume::receive`), not here.
        "migration" => {
            return Err(Error::Invalid(
                "A migration source is received in an operation".into(),
            ))
        }
        other => return Err(Error::Invalid(format!("Unknown source type {other:?}"))),
    }
    let pool = super::pools::usable_pool(d, pool_name)?;
    validate_config(pool.driver.name(), &req.name, &req.config)?;
    // The database lock is held from the name check to the record, so two creates of one name
    // cannot both make data.
    let mut db = d.db.lock().expect("db lock");
    if !db.data.pools.contains_key(pool_name) {
        return Err(Error::NotFound("Storage pool not found".into()));
    }
    if record_in(&db.data, pool_name, &req.name).is_ok() {
        return Err(Error::Conflict("Volume by that name already exists".into()));
    }
    let volume = super::operations::uuid();
    let path = pool.custom(&volume);
    let mut revert = Revert::new();
    pool.driver
        .create_volume(&path)
        .map_err(|e| Error::Host(format!("Failed to create storage volume: {e}")))?;
    {
        let (pool, path) = (Arc::clone(&pool), path.clone());
        revert.add(move || {
            let _ = pool.driver.delete_volume(&path);
        });
    }
    crate::util::fs::ensure_mode(&path, crate::storage::CUSTOM_VOLUME_MODE)
        .map_err(|e| Error::Host(format!("{}: {e}", path.display())))?;
    apply_size(&pool, &path, req.config.get("size"))
        .map_err(|e| Error::Host(format!("Failed to set the volume's size: {e}")))?;
    let rec = VolumeRecord {
        config: req.config.clone(),
        description: req.description.clone(),
        content_type: content_type.into(),
        created_at: crate::util::time::now(),
        volume,
        snapshots: Vec::new(),
        backups: Vec::new(),
    };
    db.update(|data| {
        data.volumes
            .entry(pool_name.to_string())
            .or_default()
            .insert(req.name.clone(), rec)
    })
    .map_err(|e| Error::Host(format!("saving the volume: {e}")))?;
    revert.commit();
    drop(db);
    d.events.lifecycle(
        "storage-volume-created",
        &url(pool_name, &req.name),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// `PUT` (all of it) or `PATCH` (the keys given) of a volume's config and description.
/// `check` sees the current record first (the caller's ETag check).
pub fn update(
    d: &Ctx,
    pool_name: &str,
    name: &str,
    put: &api::StorageVolumePut,
    description_given: bool,
    patch: bool,
    check: impl FnOnce(&VolumeRecord) -> Result<()>,
) -> Result<()> {
    if !put.restore.is_empty() {
        // As LXD: a restore request restores and changes nothing else.
        if let Ok(cur) = record(d, pool_name, name) {
            check(&cur)?;
        }
        return super::volume_snapshots::restore(d, pool_name, name, &put.restore);
    }
    let pool = super::pools::pool(d, pool_name)?;
    let mut db = d.db.lock().expect("db lock");
    let cur = record_in(&db.data, pool_name, name)?.clone();
    check(&cur)?;
    let mut next = cur.clone();
    super::config::merge_put(
        &mut next.config,
        &mut next.description,
        (&put.config, &put.description),
        description_given,
        patch,
    );
    validate_config(pool.driver.name(), name, &next.config)?;
    if next == cur {
        return Ok(());
    }
    if next.config.get("size") != cur.config.get("size") {
        apply_size(&pool, &pool.custom(&cur.volume), next.config.get("size"))
            .map_err(|e| Error::Host(format!("Failed to set the volume's size: {e}")))?;
    }
    db.update(|data| {
        data.volumes
            .entry(pool_name.to_string())
            .or_default()
            .insert(name.to_string(), next)
    })
    .map_err(|e| Error::Host(format!("saving the volume: {e}")))?;
    drop(db);
    d.events.lifecycle(
        "storage-volume-updated",
        &url(pool_name, name),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// Rename a volume on its pool; the instance and profile devices naming it follow (as LXD).
/// Refused while a running instance uses it.
pub fn rename(d: &Ctx, pool_name: &str, name: &str, req: &api::StorageVolumePost) -> Result<()> {
    if req.migration {
        // Served as an operation (`migration::volume::start`), not here.
        return Err(Error::Invalid(
            "A migration is served as an operation".into(),
        ));
    }
    if req.name.is_empty() {
        return Err(Error::Invalid("No name provided".into()));
    }
    validate_name(&req.name)?;
    if !req.project.is_empty() && req.project != "default" {
        return Err(Error::NotFound("Project not found".into()));
    }
    if !req.pool.is_empty() && req.pool != pool_name {
        return move_to_pool(d, pool_name, name, req);
    }
    let _busy = super::volume_snapshots::claim(d, pool_name, name, "rename")?;
    let mut db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool_name, name)?.clone();
    if record_in(&db.data, pool_name, &req.name).is_ok() {
        return Err(Error::Conflict("Volume by that name already exists".into()));
    }
    for inst in instances_using(&db.data, pool_name, name) {
        if matches!(super::view::state_of(d, &inst)?, State::Running { .. }) {
            return Err(Error::Invalid(
                "Volume is still in use by running instances".into(),
            ));
        }
    }
    let new = req.name.clone();
    db.update(|data| {
        if let Some(vols) = data.volumes.get_mut(pool_name) {
            vols.remove(name);
            vols.insert(new.clone(), rec);
        }
        let devices = data
            .instances
            .values_mut()
            .map(|r| &mut r.devices)
            .chain(data.profiles.values_mut().map(|p| &mut p.devices));
        for devs in devices {
            for dev in devs.values_mut() {
                if names_volume(dev, pool_name, name) {
                    dev.insert("source".into(), new.clone());
                }
            }
        }
    })
    .map_err(|e| Error::Host(format!("saving the volume: {e}")))?;
    drop(db);
    d.events.lifecycle(
        "storage-volume-renamed",
        &url(pool_name, &req.name),
        serde_json::json!({"old_name": name}),
    );
    Ok(())
}

/// Delete a volume, its snapshots and their data; refused while anything uses it.
pub fn delete(d: &Ctx, pool_name: &str, name: &str) -> Result<()> {
    let pool = super::pools::pool(d, pool_name)?;
    let _busy = super::volume_snapshots::claim(d, pool_name, name, "delete")?;
    let mut db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool_name, name)?.clone();
    if !used_by(&db.data, pool_name, name).is_empty()
        || !instances_using(&db.data, pool_name, name).is_empty()
    {
        return Err(Error::Invalid("The storage volume is still in use".into()));
    }
    db.update(|data| {
        if let Some(vols) = data.volumes.get_mut(pool_name) {
            vols.remove(name);
            if vols.is_empty() {
                data.volumes.remove(pool_name);
            }
        }
    })
    .map_err(|e| Error::Host(format!("saving: {e}")))?;
    drop(db);
    // The record is gone (commit point); data that cannot go now is removed by `recover`.
    let path = pool.custom(&rec.volume);
    if let Err(e) = pool.driver.delete_volume(&path) {
        eprintln!("bivy: deleting volume {}: {e}", path.display());
    }
    super::volume_snapshots::delete_all_data(&pool, &rec);
    for b in &rec.backups {
        let _ = std::fs::remove_file(super::backups::file(d, b));
    }
    d.events.lifecycle(
        "storage-volume-deleted",
        &url(pool_name, name),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// Check the volume keys of snapshots: `snapshots.expiry`, `snapshots.pattern`,
/// `snapshots.schedule`. Errors name the key.
fn validate_snapshots_key(key: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    let r = match key {
        "snapshots.expiry" => super::schedule::validate_expiry(value),
        "snapshots.schedule" => super::schedule::validate_schedule(value),
        "snapshots.pattern" => super::snapshot_names::snapshot_name(value, &[], 0).map(drop),
        _ => Ok(()),
    };
    r.map_err(|e| Error::config(key, format!("Invalid value for {key:?}: {e}")))
}

/// The host path of custom volume `name` on `pool` for a disk device, or why it cannot be used.
pub fn path_for_disk(
    d: &Ctx,
    data: &Data,
    pool_name: &str,
    name: &str,
) -> Result<(Arc<Pool>, std::path::PathBuf)> {
    let rec = record_in(data, pool_name, name).map_err(|_| {
        Error::NotFound(format!(
            "Storage volume {name:?} not found on storage pool {pool_name:?}"
        ))
    })?;
    if rec.content_type != FILESYSTEM {
        return Err(Error::not_yet("block custom volumes"));
    }
    let pool = super::pools::usable_pool(d, pool_name)?;
    let path = pool.custom(&rec.volume);
    Ok((pool, path))
}

/// Make the volume data of a copy of `src` (data at `src_path`, on `from`) on pool `to`, with
/// its snapshots unless `volume_only`; returns the new record's volume directory and snapshots.
/// On error nothing is left behind.
fn copy_data(
    from: &Arc<Pool>,
    src: &VolumeRecord,
    src_path: &std::path::Path,
    to: &Arc<Pool>,
    size: Option<&String>,
    volume_only: bool,
) -> Result<(String, Vec<super::db::VolumeSnapshotRecord>)> {
    let volume = super::operations::uuid();
    let dst = to.custom(&volume);
    let mut revert = Revert::new();
    copy_volume(from, src_path, to, &dst, false)?;
    {
        let (to, dst) = (Arc::clone(to), dst.clone());
        revert.add(move || {
            let _ = to.driver.delete_volume(&dst);
        });
    }
    crate::util::fs::ensure_mode(&dst, crate::storage::CUSTOM_VOLUME_MODE)
        .map_err(|e| Error::Host(format!("{}: {e}", dst.display())))?;
    apply_size(to, &dst, size)
        .map_err(|e| Error::Host(format!("Failed to set the volume's size: {e}")))?;
    let snapshots = if volume_only {
        Vec::new()
    } else {
        super::volume_snapshots::copy_all(from, src, to, &volume)?
    };
    revert.commit();
    Ok((volume, snapshots))
}

/// `POST .../volumes/custom` with `source: {type: copy}`: a copy of a volume on this server,
/// on the same pool or another, with its snapshots unless `volume_only` (LXD's
/// `CreateCustomVolumeFromCopy`). The source's config and description apply unless given.
fn copy(d: &Ctx, pool_name: &str, req: &api::StorageVolumesPost) -> Result<()> {
    if req.source.name.is_empty() {
        return Err(Error::Invalid("No source volume name supplied".into()));
    }
    if req.source.refresh && record(d, pool_name, &req.name).is_ok() {
        return refresh(d, pool_name, req);
    }
    let src_pool_name = if req.source.pool.is_empty() {
        pool_name
    } else {
        req.source.pool.as_str()
    };
    let (src_name, from_snap) = match req.source.name.split_once('/') {
        Some((v, s)) => (v, Some(s)),
        None => (req.source.name.as_str(), None),
    };
    let from = super::pools::usable_pool(d, src_pool_name)?;
    let to = super::pools::usable_pool(d, pool_name)?;
    let _busy = super::volume_snapshots::claim(d, src_pool_name, src_name, "copy")?;
    let mut src = record(d, src_pool_name, src_name)?;
    let mut src_path = from.custom(&src.volume);
    if let Some(snap) = from_snap {
        // A copy of one snapshot: a new volume with the snapshot's data, without snapshots.
        let s = src
            .snapshot(snap)
            .cloned()
            .ok_or_else(|| Error::NotFound("Storage volume snapshot not found".into()))?;
        src_path = from.custom_snapshot(&src.volume, &s.volume);
        src.config = s.config;
        src.description = s.description;
        src.snapshots.clear();
    }
    let config = if req.config.is_empty() {
        src.config.clone()
    } else {
        req.config.clone()
    };
    let description = if req.description.is_empty() {
        src.description.clone()
    } else {
        req.description.clone()
    };
    validate_config(to.driver.name(), &req.name, &config)?;
    if record(d, pool_name, &req.name).is_ok() {
        return Err(Error::Conflict("Volume by that name already exists".into()));
    }
    let (volume, snapshots) = copy_data(
        &from,
        &src,
        &src_path,
        &to,
        config.get("size"),
        req.source.volume_only,
    )?;
    let rec = VolumeRecord {
        config,
        description,
        content_type: src.content_type.clone(),
        created_at: crate::util::time::now(),
        volume,
        snapshots,
        backups: Vec::new(),
    };
    if let Err(e) = insert_new(d, pool_name, &req.name, rec.clone()) {
        let _ = to.driver.delete_volume(&to.custom(&rec.volume));
        super::volume_snapshots::delete_all_data(&to, &rec);
        return Err(e);
    }
    d.events.lifecycle(
        "storage-volume-created",
        &url(pool_name, &req.name),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// `source: {type: copy, refresh: true}` onto an existing volume (LXD's `RefreshCustomVolume`,
/// `lxc storage volume copy --refresh`): unless `volume_only`, its snapshots the source does
/// not have (by name, as LXD 5.0.2 compares them) go and the source's it lacks are copied in;
/// then its data becomes a copy of the source's; its config and description the request's, or
/// the source's. Refused while a running instance uses it.
fn refresh(d: &Ctx, pool_name: &str, req: &api::StorageVolumesPost) -> Result<()> {
    let src_pool_name = if req.source.pool.is_empty() {
        pool_name
    } else {
        req.source.pool.as_str()
    };
    let src_name = req.source.name.as_str();
    if src_name.contains('/') {
        return Err(Error::Invalid(
            "A refresh copies from a volume, not from a snapshot".into(),
        ));
    }
    if src_pool_name == pool_name && src_name == req.name {
        return Err(Error::Invalid(
            "A volume cannot be refreshed from itself".into(),
        ));
    }
    let from = super::pools::usable_pool(d, src_pool_name)?;
    let to = super::pools::usable_pool(d, pool_name)?;
    let _src_busy = super::volume_snapshots::claim(d, src_pool_name, src_name, "copy")?;
    let _busy = super::volume_snapshots::claim(d, pool_name, &req.name, "refresh")?;
    super::volume_snapshots::refuse_if_running(
        d,
        pool_name,
        &req.name,
        "Cannot refresh custom volume used by running instances",
    )?;
    let src = record(d, src_pool_name, src_name)?;
    let cur = record(d, pool_name, &req.name)?;
    let config = if req.config.is_empty() {
        src.config.clone()
    } else {
        req.config.clone()
    };
    validate_config(to.driver.name(), &req.name, &config)?;
    let mut added = Vec::new();
    if !req.source.volume_only {
        for s in cur
            .snapshots
            .iter()
            .filter(|s| src.snapshot(&s.name).is_none())
        {
            super::volume_snapshots::delete(d, pool_name, &req.name, &s.name)?;
        }
        let missing: Vec<_> = src
            .snapshots
            .iter()
            .filter(|s| cur.snapshot(&s.name).is_none())
            .cloned()
            .collect();
        let only = VolumeRecord {
            snapshots: missing,
            ..src.clone()
        };
        added = super::volume_snapshots::copy_all(&from, &only, &to, &cur.volume)?;
    }
    let remove_added = |added: &[super::db::VolumeSnapshotRecord]| {
        for s in added {
            let _ = to
                .driver
                .delete_volume(&to.custom_snapshot(&cur.volume, &s.volume));
        }
    };
    let next_size = VolumeRecord {
        config: config.clone(),
        ..cur.clone()
    };
    if let Err(e) =
        super::volume_snapshots::replace_data(&to, &next_size, &from, &from.custom(&src.volume))
    {
        remove_added(&added);
        return Err(e);
    }
    let description = if req.description.is_empty() {
        src.description.clone()
    } else {
        req.description.clone()
    };
    let saved = d.db.lock().expect("db lock").update(|data| {
        if let Some(r) = data
            .volumes
            .get_mut(pool_name)
            .and_then(|v| v.get_mut(&req.name))
        {
            r.config = config;
            r.description = description;
            r.snapshots.extend(added.iter().cloned());
        }
    });
    if let Err(e) = saved {
        remove_added(&added);
        return Err(Error::Host(format!("saving the volume: {e}")));
    }
    d.events.lifecycle(
        "storage-volume-updated",
        &url(pool_name, &req.name),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// Record the new volume `name` on `pool_name` (its data made), unless the name was taken in
/// the meantime. On error the caller removes the data.
pub(crate) fn insert_new(d: &Ctx, pool_name: &str, name: &str, rec: VolumeRecord) -> Result<()> {
    let mut db = d.db.lock().expect("db lock");
    if !db.data.pools.contains_key(pool_name) {
        return Err(Error::NotFound("Storage pool not found".into()));
    }
    if record_in(&db.data, pool_name, name).is_ok() {
        return Err(Error::Conflict("Volume by that name already exists".into()));
    }
    db.update(|data| {
        data.volumes
            .entry(pool_name.to_string())
            .or_default()
            .insert(name.to_string(), rec)
    })
    .map_err(|e| Error::Host(format!("saving the volume: {e}")))?;
    Ok(())
}

/// Move volume `name` from `pool_name` to `req.pool` (as `req.name`), with its snapshots: a
/// copy, then one write that swaps the records and points the devices naming it at the new
/// pool and name, then the old data goes. Refused while a running instance uses it, as LXD.
fn move_to_pool(d: &Ctx, pool_name: &str, name: &str, req: &api::StorageVolumePost) -> Result<()> {
    let from = super::pools::usable_pool(d, pool_name)?;
    let to = super::pools::usable_pool(d, &req.pool)?;
    let _busy = super::volume_snapshots::claim(d, pool_name, name, "move")?;
    let src = record(d, pool_name, name)?;
    validate_config(to.driver.name(), &req.name, &src.config)?;
    if record(d, &req.pool, &req.name).is_ok() {
        return Err(Error::Conflict("Volume by that name already exists".into()));
    }
    let users = {
        let db = d.db.lock().expect("db lock");
        instances_using(&db.data, pool_name, name)
    };
    for inst in users {
        if matches!(super::view::state_of(d, &inst)?, State::Running { .. }) {
            return Err(Error::Invalid(
                "Volume is still in use by running instances".into(),
            ));
        }
    }
    let src_path = from.custom(&src.volume);
    let (volume, snapshots) =
        copy_data(&from, &src, &src_path, &to, src.config.get("size"), false)?;
    let moved = VolumeRecord {
        volume,
        snapshots,
        ..src.clone()
    };
    let remove_new = || {
        let _ = to.driver.delete_volume(&to.custom(&moved.volume));
        super::volume_snapshots::delete_all_data(&to, &moved);
    };
    let (new_pool, new_name) = (req.pool.clone(), req.name.clone());
    let mut db = d.db.lock().expect("db lock");
    let still = record_in(&db.data, pool_name, name).is_ok_and(|r| r.volume == src.volume);
    if !still || record_in(&db.data, &new_pool, &new_name).is_ok() {
        drop(db);
        remove_new();
        return Err(Error::Conflict(
            "The storage volume changed while it was being moved".into(),
        ));
    }
    let saved = db.update(|data| {
        if let Some(vols) = data.volumes.get_mut(pool_name) {
            vols.remove(name);
            if vols.is_empty() {
                data.volumes.remove(pool_name);
            }
        }
        data.volumes
            .entry(new_pool.clone())
            .or_default()
            .insert(new_name.clone(), moved.clone());
        let devices = data
            .instances
            .values_mut()
            .map(|r| &mut r.devices)
            .chain(data.profiles.values_mut().map(|p| &mut p.devices));
        for devs in devices {
            for dev in devs.values_mut() {
                if names_volume(dev, pool_name, name) {
                    dev.insert("pool".into(), new_pool.clone());
                    dev.insert("source".into(), new_name.clone());
                }
            }
        }
    });
    drop(db);
    if let Err(e) = saved {
        remove_new();
        return Err(Error::Host(format!("saving the volume: {e}")));
    }
    // The records point at the copy (commit point); what cannot go now is removed by `recover`.
    if let Err(e) = from.driver.delete_volume(&from.custom(&src.volume)) {
        eprintln!("bivy: deleting moved volume {}: {e}", src.volume);
    }
    super::volume_snapshots::delete_all_data(&from, &src);
    d.events.lifecycle(
        "storage-volume-deleted",
        &url(pool_name, name),
        serde_json::json!({"type": CUSTOM}),
    );
    d.events.lifecycle(
        "storage-volume-created",
        &url(&new_pool, &new_name),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// Bytes used by a directory tree (allocated blocks, each hard-linked inode once), never
/// following symlinks or crossing into another filesystem.
pub(crate) fn tree_usage(root: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(root)?;
    let mut seen = std::collections::HashSet::new();
    let mut total = top.blocks() * 512;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let md = e.metadata()?;
            if md.dev() != top.dev() {
                continue;
            }
            if md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino()) {
                continue;
            }
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

/// A volume's state (`GET .../volumes/custom/NAME/state`): the space its files use and its
/// `size` limit (-1 without one).
pub fn state(d: &Ctx, pool_name: &str, name: &str) -> Result<serde_json::Value> {
    let rec = record(d, pool_name, name)?;
    let pool = super::pools::usable_pool(d, pool_name)?;
    let path = pool.custom(&rec.volume);
    let used = tree_usage(&path)
        .map_err(|e| Error::Host(format!("Failed to get the volume's usage: {e}")))?;
    let total = match rec.config.get("size").filter(|s| !s.is_empty()) {
        Some(s) => crate::storage::btrfs::parse_size(s).map_or(-1, |n| n as i64),
        None => -1,
    };
    Ok(serde_json::json!({"usage": {"used": used, "total": total}}))
}

/// The `size` of the root disk among expanded devices `ed`, if any.
pub fn root_size(ed: &crate::api::Devices) -> Option<String> {
    ed.values()
        .find(|dev| super::config::is_root_disk(dev))
        .and_then(|dev| dev.get("size"))
        .filter(|s| !s.is_empty())
        .cloned()
}

/// Give instance `name`'s volume the size limit its root disk asks for (or none). Done at
/// create, at every start (so restores, copies and moves, which make new volumes, get it) and
/// after a change of the instance or a profile.
pub fn apply_root_size(d: &Ctx, name: &str) -> Result<()> {
    let rec = super::view::record(d, name)?;
    let (_, ed) = {
        let db = d.db.lock().expect("db lock");
        super::config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
    };
    let size = root_size(&ed);
    let pool = super::pools::usable_pool(d, &rec.pool)?;
    if size.is_none() && pool.driver.name() != "btrfs" {
        return Ok(());
    }
    apply_size(&pool, &pool.container(&rec.volume), size.as_ref())
        .map_err(|e| Error::Host(format!("Failed to set the root disk size of {name:?}: {e}")))
}
