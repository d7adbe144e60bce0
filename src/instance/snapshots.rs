//! Snapshots in the model: take one (frozen around the copy where the driver cannot snapshot
//! atomically), delete, restore (stopped around it), and the scheduler that takes scheduled
//! snapshots and removes expired ones. Handlers in the daemon call in here.
//!
//! Crash consistency: the snapshot volume is made first and the record written after it (a
//! volume without a record is removed by recovery); delete removes the record first.

use std::time::Duration;

use super::db::{InstanceRecord, SnapshotRecord};
use super::lifecycle::{self, Interim};
use super::view::{record, state, url};
use super::{config, schedule, snapshot_names, stateful, Ctx, Error, Result};
use crate::api::{self, StringMap};
use crate::runtime::State;
use crate::storage::Pool;
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
    let cloned = lifecycle::with_consistent(d, name, &pool, || {
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
    }
    d.events.lifecycle(
        "instance-snapshot-deleted",
        &snap_url(name, snap),
        serde_json::json!({}),
    );
    Ok(())
}

pub fn restore_now(d: &Ctx, name: &str, snap: &str) -> Result<()> {
    restore_now_with(d, name, snap, false)
}

/// [`restore_now`]; `stateful`: the snapshot's saved state is restored too (the instance then
/// runs, its processes as they were when the snapshot was taken).
pub fn restore_now_with(d: &Ctx, name: &str, snap: &str, stateful: bool) -> Result<()> {
    let rec = record(d, name)?;
    let s = find(&rec, snap)?.clone();
    let pool = super::pools::usable_pool(d, &rec.pool)?;
    // As LXD: a running instance is stopped (not cleanly), restored and started again.
    let was_running = matches!(state(d, name)?, State::Running { .. });
    if was_running {
        Interim::Stopped.begin(d, name)?;
        if let Err(e) = lifecycle::stop(d, name, true, Duration::from_secs(0)) {
            Interim::Stopped.end(d, name);
            return Err(e);
        }
    }
    let r = restore_stopped(d, name, &rec, &s, &pool, was_running, stateful);
    if was_running {
        // Started again (or, on failure, attempted): nothing for a restart to undo.
        Interim::Stopped.end(d, name);
    }
    r
}

/// The restore proper, with the instance stopped; starts it again when it was running.
fn restore_stopped(
    d: &Ctx,
    name: &str,
    rec: &InstanceRecord,
    s: &SnapshotRecord,
    pool: &Pool,
    was_running: bool,
    stateful: bool,
) -> Result<()> {
    let snap = s.name.as_str();
    let cur = pool.container(&rec.volume);
    let new = pool.container(&format!("{}.restore", rec.volume));
    let old = pool.container(&format!("{}.old", rec.volume));
    let _ = pool.driver.delete_volume(&new);
    let res = pool
        .driver
        .clone_volume(&pool.snapshot(&rec.volume, &s.volume), &new, false)
        .map_err(|e| Error::Host(format!("restoring {snap}: {e}")))
        .and_then(|()| {
            std::fs::rename(&cur, &old).map_err(|e| Error::Host(format!("restoring {snap}: {e}")))
        })
        .and_then(|()| {
            std::fs::rename(&new, &cur).map_err(|e| {
                let _ = std::fs::rename(&old, &cur);
                Error::Host(format!("restoring {snap}: {e}"))
            })
        });
    if let Err(e) = res {
        let _ = pool.driver.delete_volume(&new);
        if was_running {
            let _ = lifecycle::start(d, name);
        }
        return Err(e);
    }
    if let Err(e) = pool.driver.delete_volume(&old) {
        eprintln!("bivy: deleting the pre-restore volume: {e}");
    }
    // A stateful snapshot's volume carries its state; kept only for a stateful restore.
    let state_dir = cur.join(stateful::STATE_DIR);
    if !stateful && state_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&state_dir) {
            eprintln!("bivy: {name}: removing the snapshot's saved state: {e}");
        }
    }
    // The config comes back too: the snapshot's keys, with the instance's own volatile state
    // except the on-disk id shift, which is the snapshot's.
    let mut config: StringMap = s
        .config
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile.") || *k == "volatile.last_state.idmap")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &rec.config {
        if k.starts_with("volatile.") && k != "volatile.last_state.idmap" {
            config.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    {
        let mut db = d.db.lock().expect("db lock");
        db.update(|data| {
            if let Some(r) = data.instances.get_mut(name) {
                r.config = config;
                r.devices = s.devices.clone();
                r.profiles = s
                    .profiles
                    .iter()
                    .filter(|p| data.profiles.contains_key(*p))
                    .cloned()
                    .collect();
                r.ephemeral = s.ephemeral;
                r.architecture = s.architecture.clone();
                r.description = s.description.clone();
                r.stateful = stateful;
            }
        })
        .map_err(|e| Error::Host(e.to_string()))?;
    }
    d.events.lifecycle(
        "instance-restored",
        &url(name),
        serde_json::json!({"snapshot": snap}),
    );
    if stateful {
        // Stopped with the snapshot's state until this succeeds (a failed restore keeps it).
        lifecycle::start_with(d, name, true)?;
    } else if was_running {
        lifecycle::start(d, name)?;
    }
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

/// Check a restore request; returns the snapshot's name within the instance.
pub fn check_restore(d: &Ctx, name: &str, snap: &str, stateful: bool) -> Result<String> {
    let snap = match snap.split_once('/') {
        Some((inst, s)) if inst == name => s.to_string(),
        Some(_) => {
            return Err(Error::Invalid(format!(
                "Snapshot {snap:?} does not belong to instance {name:?}"
            )))
        }
        None => snap.to_string(),
    };
    let rec = record(d, name)?;
    let s = find(&rec, &snap)?;
    if stateful {
        if !s.stateful {
            return Err(Error::Invalid(
                "Stateful snapshot restore requested by snapshot is stateless".into(),
            ));
        }
        stateful::check(d, name, &rec, "Stateful restore")?;
    }
    Ok(snap)
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
