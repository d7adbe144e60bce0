//! Snapshots in the model: take one (frozen around the copy where the driver cannot snapshot
//! atomically), delete, and the scheduler that takes scheduled snapshots and removes expired
//! ones. Restoring one is `restore`'s. Handlers in the daemon call in here.
//!
//! Crash consistency: the snapshot volume is made first and the record written after it (a
//! volume without a record is removed by recovery); delete removes the record first.

use super::db::{InstanceRecord, SnapshotRecord};
use super::interim::with_consistent;
use super::view::{record, state, url};
use super::{config, schedule, snapshot_names, stateful, Ctx, Error, Result};
use crate::api;
use crate::runtime::State;
use crate::util::time;

pub fn snap_url(name: &str, snap: &str) -> String {
    format!("{}/snapshots/{snap}", url(name))
}

pub fn find<'a>(rec: &'a InstanceRecord, snap: &str) -> Result<&'a SnapshotRecord> {
    rec.snapshot(snap)
        .ok_or_else(|| Error::NotFound("Snapshot not found".into()))
}

/// Seconds since the epoch of an RFC 3339 time (LXD's zero time is 0).
pub fn parse_time(t: &str) -> Result<i64> {
    if t == api::GO_ZERO_TIME || t == api::ZERO_TIME {
        return Ok(0);
    }
    time::parse_secs(t)
        .ok_or_else(|| Error::Invalid(format!("Invalid time {t:?}: expected RFC 3339")))
}

/// Take a snapshot (the caller holds the instance's busy mark). `name` empty picks one from
/// `snapshots.pattern`; `expires_at` None applies `snapshots.expiry`.
pub fn snapshot_now(d: &Ctx, name: &str, snap: &str, expires_at: Option<String>) -> Result<String> {
    snapshot_now_with(d, name, snap, expires_at, false)
}

/// [`snapshot_now`]; `stateful`: the running instance's state is dumped too (it keeps running),
/// into `<volume>/state/` just before the volume is snapshotted, so the snapshot carries it.
pub fn snapshot_now_with(
    d: &Ctx,
    name: &str,
    snap: &str,
    expires_at: Option<String>,
    stateful: bool,
) -> Result<String> {
    let rec = record(d, name)?;
    if stateful {
        if !matches!(state(d, name)?, State::Running { .. }) {
            return Err(Error::Invalid(
                "Unable to create a stateful snapshot. The instance isn't running".into(),
            ));
        }
        stateful::check(d, name, &rec, "Stateful snapshot")?;
    }
    let (ec, _) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
    };
    let now = time::now_secs();
    let snap = if snap.is_empty() {
        let pattern = ec.get("snapshots.pattern").map_or("snap%d", String::as_str);
        let existing: Vec<&str> = rec.snapshots.iter().map(|s| s.name.as_str()).collect();
        snapshot_names::snapshot_name(pattern, &existing, now).map_err(Error::Invalid)?
    } else {
        snap.to_string()
    };
    if rec.snapshot(&snap).is_some() {
        return Err(Error::Conflict(format!("Snapshot {snap:?} already exists")));
    }
    let expires_at = match expires_at {
        Some(t) => t,
        None => match ec.get("snapshots.expiry").filter(|v| !v.is_empty()) {
            Some(e) => match schedule::parse_expiry(e).map_err(Error::Invalid)? {
                Some(delta) => time::format(schedule::expires_at(now, delta), 0),
                None => api::GO_ZERO_TIME.into(),
            },
            None => api::GO_ZERO_TIME.into(),
        },
    };
    let pool = super::pools::usable_pool(d, &rec.pool)?;
    let volume = super::operations::uuid();
    let dst = pool.snapshot(&rec.volume, &volume);
    let src = pool.container(&rec.volume);
    let state_dir = src.join(stateful::STATE_DIR);
    if stateful {
        stateful::dump_running(d, name, &state_dir)?;
    }
    let cloned = with_consistent(d, name, &pool, || {
        pool.driver
            .clone_volume(&src, &dst, true)
            .map_err(|e| Error::Host(format!("snapshotting {name}: {e}")))
    });
    if stateful {
        // The snapshot has it; the running instance has no saved state.
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    cloned.inspect_err(|_| {
        let _ = pool.driver.delete_volume(&dst);
    })?;
    let s = SnapshotRecord {
        name: snap.clone(),
        architecture: rec.architecture.clone(),
        config: rec.config.clone(),
        devices: rec.devices.clone(),
        ephemeral: rec.ephemeral,
        profiles: rec.profiles.clone(),
        description: rec.description.clone(),
        created_at: time::now(),
        expires_at,
        stateful,
        volume,
    };
    let saved = {
        let mut db = d.db.lock().expect("db lock");
        db.update(|data| match data.instances.get_mut(name) {
            Some(r) if r.volume == rec.volume => {
                r.snapshots.push(s);
                true
            }
            _ => false,
        })
    };
    keep_if_saved(&pool, &dst, saved, "Instance not found")?;
    d.events.lifecycle(
        "instance-snapshot-created",
        &snap_url(name, &snap),
        serde_json::json!({}),
    );
    Ok(snap)
}

/// Delete a snapshot: the record first (the commit point), then its volume.
pub fn delete_now(d: &Ctx, name: &str, snap: &str) -> Result<()> {
    let (rec, s) = {
        let mut db = d.db.lock().expect("db lock");
        let rec = super::view::record_in(&db.data, name)?;
        let s = find(&rec, snap)?.clone();
        db.update(|data| {
            if let Some(r) = data.instances.get_mut(name) {
                r.snapshots.retain(|x| x.name != snap);
            }
        })
        .map_err(|e| Error::Host(e.to_string()))?;
        (rec, s)
    };
    if let Ok(pool) = super::pools::pool(d, &rec.pool) {
        let path = pool.snapshot(&rec.volume, &s.volume);
        if let Err(e) = pool.driver.delete_volume(&path) {
            eprintln!("bivy: deleting snapshot volume {}: {e}", path.display());
        }
        super::pools::drop_kept_image_volume(d, &pool, &rec);
    }
    d.events.lifecycle(
        "instance-snapshot-deleted",
        &snap_url(name, snap),
        serde_json::json!({}),
    );
    Ok(())
}

/// A snapshot as the API shows it.
pub fn to_api(d: &Ctx, s: &SnapshotRecord) -> api::InstanceSnapshot {
    let (ec, ed) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&s.profiles, &db.data.profiles, &s.config, &s.devices)
    };
    api::InstanceSnapshot {
        architecture: s.architecture.clone(),
        config: s.config.clone(),
        devices: s.devices.clone(),
        ephemeral: s.ephemeral,
        profiles: s.profiles.clone(),
        expires_at: s.expires_at.clone(),
        created_at: s.created_at.clone(),
        expanded_config: ec,
        expanded_devices: ed,
        last_used_at: api::GO_ZERO_TIME.into(),
        name: s.name.clone(),
        size: -1,
        stateful: s.stateful,
    }
}

/// The snapshots of an instance as `InstanceFull.snapshots` carries them.
pub fn list_api(d: &Ctx, rec: &InstanceRecord) -> Vec<api::InstanceSnapshot> {
    rec.snapshots.iter().map(|s| to_api(d, s)).collect()
}

/// After a snapshot volume `dst` was made and its record saved (`Ok(true)`), or not because its
/// owner went meanwhile (`Ok(false)`: `gone` is the error) or the save failed: the volume is
/// deleted unless the record holds it.
pub(super) fn keep_if_saved<E: std::fmt::Display>(
    pool: &crate::storage::Pool,
    dst: &std::path::Path,
    saved: std::result::Result<bool, E>,
    gone: &str,
) -> Result<()> {
    match saved {
        Ok(true) => Ok(()),
        Ok(false) => {
            let _ = pool.driver.delete_volume(dst);
            Err(Error::NotFound(gone.into()))
        }
        Err(e) => {
            let _ = pool.driver.delete_volume(dst);
            Err(Error::Host(format!("saving the snapshot: {e}")))
        }
    }
}
