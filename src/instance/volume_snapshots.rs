//! Snapshots of custom storage volumes
//! (`/1.0/storage-pools/<pool>/volumes/custom/<volume>/snapshots[/<snap>]`): take one, list,
//! show, edit (description and expiry), rename, delete, restore, and the scheduler's part
//! (`snapshots.expiry`, `snapshots.schedule`, `snapshots.pattern` on the volume), with LXD
//! 5.0.2's rules and messages (`lxd/storage_volumes_snapshot.go`).
//!
//! A snapshot's data is a read-only clone of the volume at
//! `<pool>/custom-snapshots/<volume uuid>/<snapshot uuid>` (a read-only btrfs snapshot, or a
//! copy on `dir` that reflinks where the filesystem can); it is in the containers' id space like
//! the volume. The records live in the volume's record, so a rename of the volume takes its
//! snapshots along and a delete removes them.
//!
//! Crash consistency: a snapshot's data is made before its record is written and removed after
//! its record is gone; a restore swaps `<uuid>` for `<uuid>.restore` by way of `<uuid>.old`, and
//! `pools::recover` puts `<uuid>.old` back when a crash fell between the renames.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::db::{Data, VolumeRecord, VolumeSnapshotRecord};
use super::volume_data::{apply_size, copy_volume};
use super::volume_records::{self, CUSTOM};
use super::{schedule, snapshot_names, Ctx, Error, Result};
use crate::api;
use crate::runtime::State;
use crate::storage::Pool;
use crate::util::time;

/// The API URL of a volume snapshot.
pub fn url(pool: &str, volume: &str, snap: &str) -> String {
    format!("{}/snapshots/{snap}", volume_records::url(pool, volume))
}

/// Volumes with a snapshot, restore, copy or move in progress (`<bivy dir>\0<pool>/<volume>`),
/// so two of those never overlap on one volume.
static BUSY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A volume marked busy until dropped.
pub struct VolumeBusy(String);

impl Drop for VolumeBusy {
    fn drop(&mut self) {
        BUSY.lock().expect("volume busy lock").remove(&self.0);
    }
}

/// Mark volume `name` on `pool` busy with `what`, or fail saying it is.
pub fn claim(d: &Ctx, pool: &str, name: &str, what: &str) -> Result<VolumeBusy> {
    let key = format!("{}\0{pool}/{name}", d.dir.display());
    if !BUSY.lock().expect("volume busy lock").insert(key.clone()) {
        return Err(Error::Conflict(format!(
            "Storage volume {name:?} is busy: another operation on it is in progress ({what} refused)"
        )));
    }
    Ok(VolumeBusy(key))
}

fn record_in<'a>(data: &'a Data, pool: &str, name: &str) -> Result<&'a VolumeRecord> {
    data.volumes
        .get(pool)
        .and_then(|v| v.get(name))
        .ok_or_else(|| Error::NotFound("Storage volume not found".into()))
}

fn find<'a>(rec: &'a VolumeRecord, snap: &str) -> Result<&'a VolumeSnapshotRecord> {
    rec.snapshot(snap)
        .ok_or_else(|| Error::NotFound("Storage volume snapshot not found".into()))
}

/// A snapshot as the API shows it; `full_name` gives `volume/snap` (lists) instead of `snap`.
pub fn to_api(
    volume: &str,
    rec: &VolumeRecord,
    s: &VolumeSnapshotRecord,
    full_name: bool,
) -> api::StorageVolumeSnapshot {
    api::StorageVolumeSnapshot {
        description: s.description.clone(),
        expires_at: s.expires_at.clone(),
        config: s.config.clone(),
        name: if full_name {
            format!("{volume}/{}", s.name)
        } else {
            s.name.clone()
        },
        content_type: rec.content_type.clone(),
        created_at: s.created_at.clone(),
    }
}

/// The snapshots of a volume, oldest first.
pub fn list(d: &Ctx, pool: &str, name: &str) -> Result<Vec<api::StorageVolumeSnapshot>> {
    let db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool, name)?;
    Ok(rec
        .snapshots
        .iter()
        .map(|s| to_api(name, rec, s, true))
        .collect())
}

/// The names of a volume's snapshots, oldest first.
pub fn names(d: &Ctx, pool: &str, name: &str) -> Result<Vec<String>> {
    let db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool, name)?;
    Ok(rec.snapshots.iter().map(|s| s.name.clone()).collect())
}

/// One snapshot, and what its ETag covers.
pub fn get(
    d: &Ctx,
    pool: &str,
    name: &str,
    snap: &str,
) -> Result<(api::StorageVolumeSnapshot, serde_json::Value)> {
    let db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool, name)?;
    let s = find(rec, snap)?;
    Ok((to_api(name, rec, s, false), etag_source(s)))
}

/// What a snapshot's ETag covers (LXD: name, description, config, expiry).
pub fn etag_source(s: &VolumeSnapshotRecord) -> serde_json::Value {
    serde_json::json!([s.name, s.description, s.config, s.expires_at])
}

/// Seconds since the epoch of an expiry time (LXD's zero time is 0, never).
fn parse_expiry_time(t: &str) -> Result<i64> {
    super::snapshots::parse_time(t)
}

/// Check a snapshot request before the operation starts, as LXD: the volume exists, the name
/// (given, or the next one `snapshots.pattern` gives) is good and free, `expires_at` (when
/// given) is a time. Returns the snapshot's name.
pub fn check_create(
    d: &Ctx,
    pool: &str,
    name: &str,
    req: &api::StorageVolumeSnapshotsPost,
) -> Result<String> {
    let db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool, name)?;
    let snap = if req.name.is_empty() {
        let pattern = rec
            .config
            .get("snapshots.pattern")
            .map_or("snap%d", String::as_str);
        let existing: Vec<&str> = rec.snapshots.iter().map(|s| s.name.as_str()).collect();
        snapshot_names::snapshot_name(pattern, &existing, time::now_secs())
            .map_err(Error::Invalid)?
    } else {
        snapshot_names::validate_snapshot_name(&req.name).map_err(Error::Invalid)?;
        req.name.clone()
    };
    if rec.snapshot(&snap).is_some() {
        return Err(Error::Conflict(format!("Snapshot {snap:?} already in use")));
    }
    if let Some(t) = &req.expires_at {
        parse_expiry_time(t)?;
    }
    Ok(snap)
}

/// Take a snapshot of volume `name` on `pool`. `snap` empty picks a name from
/// `snapshots.pattern`; `expires_at` None applies `snapshots.expiry`. Returns the name.
pub fn create(
    d: &Ctx,
    pool_name: &str,
    name: &str,
    snap: &str,
    expires_at: Option<String>,
) -> Result<String> {
    let _busy = claim(d, pool_name, name, "snapshot")?;
    let rec = volume_records::record(d, pool_name, name)?;
    let now = time::now_secs();
    let snap = if snap.is_empty() {
        let pattern = rec
            .config
            .get("snapshots.pattern")
            .map_or("snap%d", String::as_str);
        let existing: Vec<&str> = rec.snapshots.iter().map(|s| s.name.as_str()).collect();
        snapshot_names::snapshot_name(pattern, &existing, now).map_err(Error::Invalid)?
    } else {
        snapshot_names::validate_snapshot_name(snap).map_err(Error::Invalid)?;
        snap.to_string()
    };
    if rec.snapshot(&snap).is_some() {
        return Err(Error::Conflict(format!("Snapshot {snap:?} already in use")));
    }
    let expires_at = match expires_at {
        Some(t) => {
            parse_expiry_time(&t)?;
            t
        }
        None => match rec.config.get("snapshots.expiry").filter(|v| !v.is_empty()) {
            Some(e) => match schedule::parse_expiry(e).map_err(Error::Invalid)? {
                Some(delta) => time::format(schedule::expires_at(now, delta), 0),
                None => api::GO_ZERO_TIME.into(),
            },
            None => api::GO_ZERO_TIME.into(),
        },
    };
    let pool = super::pools::usable_pool(d, pool_name)?;
    let volume = super::operations::uuid();
    let src = pool.custom(&rec.volume);
    let dst = pool.custom_snapshot(&rec.volume, &volume);
    pool.driver.clone_volume(&src, &dst, true).map_err(|e| {
        let _ = pool.driver.delete_volume(&dst);
        Error::Host(format!("Failed to snapshot storage volume {name:?}: {e}"))
    })?;
    let s = VolumeSnapshotRecord {
        name: snap.clone(),
        description: String::new(),
        config: rec.config.clone(),
        created_at: time::now(),
        expires_at,
        volume,
    };
    let saved = {
        let mut db = d.db.lock().expect("db lock");
        db.update(|data| {
            match data
                .volumes
                .get_mut(pool_name)
                .and_then(|v| v.get_mut(name))
            {
                Some(r) if r.volume == rec.volume => {
                    r.snapshots.push(s);
                    true
                }
                _ => false,
            }
        })
    };
    super::snapshots::keep_if_saved(&pool, &dst, saved, "Storage volume not found")?;
    d.events.lifecycle(
        "storage-volume-snapshot-created",
        &url(pool_name, name, &snap),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(snap)
}

/// `PUT`/`PATCH` of a snapshot: its description and expiry (the rest is immutable).
/// `check` sees the current record first (the caller's ETag check).
pub fn update(
    d: &Ctx,
    pool_name: &str,
    name: &str,
    snap: &str,
    description: Option<String>,
    expires_at: Option<String>,
    check: impl FnOnce(&VolumeSnapshotRecord) -> Result<()>,
) -> Result<()> {
    if let Some(t) = &expires_at {
        parse_expiry_time(t)?;
    }
    let mut db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool_name, name)?;
    check(find(rec, snap)?)?;
    db.update(|data| {
        if let Some(s) = data
            .volumes
            .get_mut(pool_name)
            .and_then(|v| v.get_mut(name))
            .and_then(|r| r.snapshots.iter_mut().find(|s| s.name == snap))
        {
            if let Some(desc) = description {
                s.description = desc;
            }
            if let Some(t) = expires_at {
                s.expires_at = t;
            }
        }
    })
    .map_err(|e| Error::Host(format!("saving the snapshot: {e}")))?;
    drop(db);
    d.events.lifecycle(
        "storage-volume-snapshot-updated",
        &url(pool_name, name, snap),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// Rename a snapshot (records only).
pub fn rename(d: &Ctx, pool_name: &str, name: &str, snap: &str, new: &str) -> Result<()> {
    snapshot_names::validate_snapshot_name(new).map_err(Error::Invalid)?;
    let mut db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, pool_name, name)?;
    find(rec, snap)?;
    if rec.snapshot(new).is_some() {
        return Err(Error::Conflict(format!(
            "Storage volume snapshot {new:?} already exists"
        )));
    }
    db.update(|data| {
        if let Some(s) = data
            .volumes
            .get_mut(pool_name)
            .and_then(|v| v.get_mut(name))
            .and_then(|r| r.snapshots.iter_mut().find(|s| s.name == snap))
        {
            s.name = new.to_string();
        }
    })
    .map_err(|e| Error::Host(format!("saving the snapshot: {e}")))?;
    drop(db);
    d.events.lifecycle(
        "storage-volume-snapshot-renamed",
        &url(pool_name, name, new),
        serde_json::json!({"old_name": snap}),
    );
    Ok(())
}

/// Delete a snapshot: the record first (the commit point), then its data.
pub fn delete(d: &Ctx, pool_name: &str, name: &str, snap: &str) -> Result<()> {
    let pool = super::pools::pool(d, pool_name)?;
    let (rec, s) = {
        let mut db = d.db.lock().expect("db lock");
        let rec = record_in(&db.data, pool_name, name)?.clone();
        let s = find(&rec, snap)?.clone();
        db.update(|data| {
            if let Some(r) = data
                .volumes
                .get_mut(pool_name)
                .and_then(|v| v.get_mut(name))
            {
                r.snapshots.retain(|x| x.name != snap);
            }
        })
        .map_err(|e| Error::Host(format!("saving: {e}")))?;
        (rec, s)
    };
    let path = pool.custom_snapshot(&rec.volume, &s.volume);
    if let Err(e) = pool.driver.delete_volume(&path) {
        eprintln!("bivy: deleting volume snapshot {}: {e}", path.display());
    }
    if rec.snapshots.len() == 1 {
        let _ = std::fs::remove_dir(pool.custom_snapshots_of(&rec.volume));
    }
    d.events.lifecycle(
        "storage-volume-snapshot-deleted",
        &url(pool_name, name, snap),
        serde_json::json!({"type": CUSTOM}),
    );
    Ok(())
}

/// Remove the snapshot data of a volume whose record is gone (volume delete).
pub fn delete_all_data(pool: &Pool, rec: &VolumeRecord) {
    for s in &rec.snapshots {
        let path = pool.custom_snapshot(&rec.volume, &s.volume);
        if let Err(e) = pool.driver.delete_volume(&path) {
            eprintln!("bivy: deleting volume snapshot {}: {e}", path.display());
        }
    }
    let _ = std::fs::remove_dir(pool.custom_snapshots_of(&rec.volume));
}

/// Restore volume `name` to its snapshot `snap` (`PUT` of the volume with `restore`). Refused
/// while a running instance uses the volume, as LXD.
pub fn restore(d: &Ctx, pool_name: &str, name: &str, snap: &str) -> Result<()> {
    let _busy = claim(d, pool_name, name, "restore")?;
    let pool = super::pools::usable_pool(d, pool_name)?;
    let rec = volume_records::record(d, pool_name, name)?;
    let s = find(&rec, snap)?.clone();
    refuse_if_running(
        d,
        pool_name,
        name,
        "Cannot restore custom volume used by running instances",
    )?;
    let src = pool.custom_snapshot(&rec.volume, &s.volume);
    replace_data(&pool, &rec, &pool, &src).map_err(|e| {
        Error::Host(format!(
            "Failed to restore snapshot {snap:?}: {}",
            e.message()
        ))
    })?;
    d.events.lifecycle(
        "storage-volume-restored",
        &volume_records::url(pool_name, name),
        serde_json::json!({"snapshot": snap}),
    );
    Ok(())
}

/// Refused (`why`) while a running instance uses volume `name` on `pool_name`.
pub(crate) fn refuse_if_running(d: &Ctx, pool_name: &str, name: &str, why: &str) -> Result<()> {
    let users = {
        let db = d.db.lock().expect("db lock");
        volume_records::instances_using(&db.data, pool_name, name)
    };
    for inst in users {
        if matches!(super::view::state_of(d, &inst)?, State::Running { .. }) {
            return Err(Error::Invalid(why.into()));
        }
    }
    Ok(())
}

/// Replace the data of volume `rec` (on `pool`) with a copy of the directory `src` (on `from`):
/// the copy is made beside it (`<vol>.restore`), then two renames swap them (a crash between
/// the two is undone at the next start), then the old data goes. Its snapshots stay.
pub(crate) fn replace_data(
    pool: &Arc<Pool>,
    rec: &VolumeRecord,
    from: &Pool,
    src: &std::path::Path,
) -> Result<()> {
    let new = super::pools::replacement(&pool.custom(&rec.volume));
    let _ = pool.driver.delete_volume(&new);
    let err = |e: std::io::Error| Error::Host(e.to_string());
    let made = copy_volume(from, src, pool, &new, false).and_then(|()| {
        crate::util::fs::ensure_mode(&new, crate::storage::CUSTOM_VOLUME_MODE)
            .map(drop)
            .and_then(|()| apply_size(pool, &new, rec.config.get("size")))
            .map_err(err)
    });
    if let Err(e) = made {
        let _ = pool.driver.delete_volume(&new);
        return Err(e);
    }
    let r = swap_in(pool, &rec.volume);
    if r.is_err() {
        let _ = pool.driver.delete_volume(&new);
    }
    r
}

/// The data made beside volume directory `volume` (`<volume>.restore`, complete and synced)
/// takes its place: two renames (a crash between them is undone at the next start), then the
/// old data goes.
pub(crate) fn swap_in(pool: &Pool, volume: &str) -> Result<()> {
    let old =
        super::pools::swap_in(&pool.custom(volume)).map_err(|e| Error::Host(e.to_string()))?;
    if let Err(e) = pool.driver.delete_volume(&old) {
        eprintln!("bivy: deleting the replaced volume {}: {e}", old.display());
    }
    Ok(())
}

/// One scheduler pass over custom volumes: remove expired snapshots (`now`), take the
/// snapshots `snapshots.schedule` asks for in `minute`.
pub fn run_scheduled(d: &Ctx, minute: i64, now: i64) {
    let all: Vec<(String, String, VolumeRecord)> = {
        let db = d.db.lock().expect("db lock");
        db.data
            .volumes
            .iter()
            .flat_map(|(p, vols)| {
                vols.iter()
                    .map(move |(n, r)| (p.clone(), n.clone(), r.clone()))
            })
            .collect()
    };
    for (pool, name, rec) in all {
        for s in &rec.snapshots {
            let Ok(exp) = parse_expiry_time(&s.expires_at) else {
                continue;
            };
            if exp > 0 && exp <= now {
                match delete(d, &pool, &name, &s.name) {
                    Ok(()) => eprintln!("bivy: {pool}/{name}: expired snapshot {} removed", s.name),
                    Err(e) => eprintln!(
                        "bivy: {pool}/{name}: removing expired snapshot {}: {e}",
                        s.name
                    ),
                }
            }
        }
        let Some(spec) = rec
            .config
            .get("snapshots.schedule")
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        // Aliases (@daily, ...) fire at a minute and hour of their own per volume.
        let subject = i64::from(
            u32::from_str_radix(&rec.volume.replace('-', "")[..8.min(rec.volume.len())], 16)
                .unwrap_or(0),
        );
        let Ok(sched) = schedule::parse_schedule_for(spec, subject) else {
            continue; // validated on write
        };
        if !sched.is_periodic() || !sched.matches_minute(minute) {
            continue;
        }
        match create(d, &pool, &name, "", None) {
            Ok(s) => eprintln!("bivy: {pool}/{name}: scheduled snapshot {s} taken"),
            Err(e) => eprintln!("bivy: {pool}/{name}: scheduled snapshot failed: {e}"),
        }
    }
}

/// Copy the snapshots of `rec` (on `from`) to volume directory `volume` on `to`, read-only.
/// Returns the new records (same names, times and expiry); on error what it made is removed.
pub fn copy_all(
    from: &Pool,
    rec: &VolumeRecord,
    to: &Arc<Pool>,
    volume: &str,
) -> Result<Vec<VolumeSnapshotRecord>> {
    let mut out: Vec<VolumeSnapshotRecord> = Vec::new();
    for s in &rec.snapshots {
        let id = super::operations::uuid();
        let src = from.custom_snapshot(&rec.volume, &s.volume);
        let dst = to.custom_snapshot(volume, &id);
        if let Err(e) = copy_volume(from, &src, to, &dst, true) {
            for m in &out {
                let _ = to
                    .driver
                    .delete_volume(&to.custom_snapshot(volume, &m.volume));
            }
            let _ = std::fs::remove_dir(to.custom_snapshots_of(volume));
            return Err(e);
        }
        out.push(VolumeSnapshotRecord {
            volume: id,
            ..s.clone()
        });
    }
    Ok(out)
}
