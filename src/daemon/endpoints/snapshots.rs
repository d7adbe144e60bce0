//! Instance snapshots: `/1.0/instances/NAME/snapshots[/SNAP]`, restore, and the background task
//! that removes expired snapshots and takes scheduled ones (`snapshots.expiry`,
//! `snapshots.schedule`, `snapshots.pattern`).
//!
//! A snapshot is a read-only clone of the instance's volume (a btrfs read-only snapshot, or a
//! copy on `dir`, made with the container frozen when it runs) plus a copy of the instance's
//! config, devices and profiles at that moment, kept in the instance's record. Snapshots are
//! immutable: only their expiry can be edited; they can be renamed, deleted, copied, published
//! and restored.
//!
//! Crash consistency: the snapshot volume is made first and the record written after it (a
//! volume without a record is removed by `recover`); delete removes the record first.

use std::sync::Arc;
use std::time::Duration;

use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use super::super::{schedule, Daemon};
use crate::api::{self};
use crate::http::{Request, Response};
use crate::instance::config;
use crate::instance::snapshots::{delete_now, snapshot_now};
use crate::instance::snapshots::{find, parse_time, snap_url};
use crate::instance::view as instances;
use crate::runtime::State;
use crate::util::time;

pub fn route(d: &Daemon, req: &mut Request, name: &str, sub: &[&str]) -> Result<Response> {
    let m = req.method.clone();
    match (sub, m.as_str()) {
        ([], "GET") => list(d, req, name),
        ([], "POST") => create(d, req, name),
        ([snap], "GET") => get(d, name, snap),
        ([snap], "PUT") => put(d, req, name, snap, false),
        ([snap], "PATCH") => put(d, req, name, snap, true),
        ([snap], "POST") => rename(d, req, name, snap),
        ([snap], "DELETE") => delete(d, name, snap),
        ([] | [_], _) => Err(Error::MethodNotAllowed(format!("method {m} not allowed"))),
        _ => Err(Error::NotFound("not found".into())),
    }
}

fn list(d: &Daemon, req: &Request, name: &str) -> Result<Response> {
    let rec = instances::record(d, name)?;
    if recursion(req) > 0 {
        Ok(response::sync(&crate::instance::snapshots::list_api(
            d, &rec,
        )))
    } else {
        Ok(response::sync(
            &rec.snapshots
                .iter()
                .map(|s| snap_url(name, &s.name))
                .collect::<Vec<_>>(),
        ))
    }
}

fn get(d: &Daemon, name: &str, snap: &str) -> Result<Response> {
    let rec = instances::record(d, name)?;
    let s = find(&rec, snap)?;
    Ok(response::sync_etag(
        &crate::instance::snapshots::to_api(d, s),
        Some(response::etag(&s.expires_at)),
    ))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SnapshotsPost {
    name: String,
    stateful: bool,
    expires_at: Option<String>,
}

/// `POST /1.0/instances/NAME/snapshots`.
fn create(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: SnapshotsPost = json(req)?;
    let rec = instances::record(d, name)?;
    if body.stateful {
        // Refused up front (no operation) when the key or CRIU is missing.
        crate::instance::stateful::check(d, name, &rec, "Stateful snapshot")?;
    }
    if !body.name.is_empty() {
        schedule::validate_snapshot_name(&body.name).map_err(Error::BadRequest)?;
        if rec.snapshot(&body.name).is_some() {
            return Err(Error::Conflict(format!(
                "Snapshot {:?} already exists",
                body.name
            )));
        }
    }
    let expires_at = match body.expires_at.as_deref() {
        None => None,
        Some(t) => {
            parse_time(t)?;
            Some(t.to_string())
        }
    };
    let n = name.to_string();
    super::super::request::busy_task(d, name, "snapshot", "Snapshotting instance", move |d, _| {
        crate::instance::snapshots::snapshot_now_with(d, &n, &body.name, expires_at, body.stateful)
            .map(|_| ())
    })
}

/// `PUT`/`PATCH` of a snapshot: only `expires_at` can change (snapshots are immutable).
fn put(d: &Daemon, req: &mut Request, name: &str, snap: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let rec = instances::record(d, name)?;
    let cur = find(&rec, snap)?;
    response::check_etag(req.header("If-Match"), &response::etag(&cur.expires_at))?;
    let expires = match body.get("expires_at") {
        Some(serde_json::Value::String(t)) => {
            parse_time(t)?;
            t.clone()
        }
        Some(serde_json::Value::Null) | None if patch => cur.expires_at.clone(),
        Some(serde_json::Value::Null) | None => api::GO_ZERO_TIME.into(),
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "Invalid expires_at {other}: expected an RFC 3339 time"
            )))
        }
    };
    if let Some(obj) = body.as_object() {
        if let Some(k) = obj.keys().find(|k| k.as_str() != "expires_at") {
            return Err(Error::BadRequest(format!(
                "Snapshots are immutable: only \"expires_at\" can be changed (got {k:?})"
            )));
        }
    }
    let mut db = d.db.lock().expect("db lock");
    db.update(|data| {
        if let Some(s) = data
            .instances
            .get_mut(name)
            .and_then(|r| r.snapshot_mut(snap))
        {
            s.expires_at = expires;
        }
    })
    .map_err(|e| Error::Internal(e.to_string()))?;
    drop(db);
    d.events.lifecycle(
        "instance-snapshot-updated",
        &snap_url(name, snap),
        serde_json::json!({}),
    );
    let op = d
        .ops
        .done("Updating snapshot", instances::resources(name), None);
    Ok(response::operation(&op.to_api()))
}

fn rename(d: &Daemon, req: &mut Request, name: &str, snap: &str) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    if body.get("migration").and_then(|v| v.as_bool()) == Some(true) {
        let post: api::InstancePost = serde_json::from_value(body)
            .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
        let op = crate::migration::source::start(d, name, Some(snap), &post)?;
        return Ok(response::operation(&op.to_api()));
    }
    let new = body
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    schedule::validate_snapshot_name(&new).map_err(Error::BadRequest)?;
    let _busy = d.claim(name, "snapshot rename")?;
    {
        let mut db = d.db.lock().expect("db lock");
        let rec = crate::instance::view::record_in(&db.data, name)?;
        find(&rec, snap)?;
        if rec.snapshot(&new).is_some() {
            return Err(Error::Conflict(format!(
                "Name of snapshot {new:?} already in use"
            )));
        }
        db.update(|data| {
            if let Some(s) = data
                .instances
                .get_mut(name)
                .and_then(|r| r.snapshot_mut(snap))
            {
                s.name = new.clone();
            }
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
    }
    d.events.lifecycle(
        "instance-snapshot-renamed",
        &snap_url(name, &new),
        serde_json::json!({"old_name": snap}),
    );
    let op = d
        .ops
        .done("Renaming snapshot", instances::resources(name), None);
    Ok(response::operation(&op.to_api()))
}

fn delete(d: &Daemon, name: &str, snap: &str) -> Result<Response> {
    let rec = instances::record(d, name)?;
    find(&rec, snap)?;
    let (n, s) = (name.to_string(), snap.to_string());
    super::super::request::busy_task(
        d,
        name,
        "snapshot delete",
        "Deleting snapshot",
        move |d, _| delete_now(d, &n, &s),
    )
}

// ---------------------------------------------------------------------------------------------
// Expiry and schedule

// ---------------------------------------------------------------------------------------------
// The scheduler (it also runs the image cache expiry and auto-update, which are still here).

/// The background task: once a minute (`BIVY_SCHEDULER_TICK_SECS` shortens the tick for tests;
/// each tick then stands for the next minute of a virtual clock), remove expired snapshots and
/// backups and take the snapshots `snapshots.schedule` asks for this minute.
pub fn spawn_scheduler(d: Arc<Daemon>) {
    let tick: u64 = std::env::var("BIVY_SCHEDULER_TICK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(60);
    let _ = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            // Expired cached images go at start too (as LXD's prune task), then hourly.
            crate::instance::images::prune_cached(&d, time::now_secs());
            // Most of the code the start ran (opening the state, recovery, pools) is not run
            // again: its pages go once the daemon's threads have settled, from this thread,
            // which then sleeps (see `sys::trim_own_code`).
            std::thread::sleep(Duration::from_millis(250));
            if let Err(e) = crate::sys::trim_own_code() {
                eprintln!("bivy: releasing start-up code pages: {e}");
            }
            let mut minute = time::now_secs() / 60 * 60;
            loop {
                // Sleep to the next minute boundary (or one short tick).
                if tick == 60 {
                    let next = minute + 60;
                    let wait = (next - time::now_secs()).clamp(1, 60) as u64;
                    std::thread::sleep(Duration::from_secs(wait));
                    minute = time::now_secs() / 60 * 60;
                } else {
                    std::thread::sleep(Duration::from_secs(tick));
                    minute += 60;
                }
                if d.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                run_once(&d, minute, time::now_secs());
            }
        });
}

/// One scheduler pass: `minute` is the schedule clock, `now` the expiry clock.
fn run_once(d: &Daemon, minute: i64, now: i64) {
    // Hourly: cached images unused for `images.remote_cache_expiry` days.
    if minute % 3600 == 0 {
        crate::instance::images::prune_cached(d, now);
    }
    let interval =
        d.db.lock()
            .expect("db lock")
            .data
            .config
            .get("images.auto_update_interval")
            .cloned();
    if crate::instance::images::auto_update_due(interval.as_deref(), minute) {
        super::super::pull::auto_update(d);
    }
    crate::instance::backups::prune_expired(d, now);
    crate::instance::backups::volume_prune_expired(d, now);
    crate::instance::volume_snapshots::run_scheduled(d, minute, now);
    let instances = d.db.lock().expect("db lock").data.instances.clone();
    for (name, rec) in instances {
        for s in &rec.snapshots {
            let Ok(exp) = parse_time(&s.expires_at) else {
                continue;
            };
            if exp > 0 && exp <= now {
                if d.busy_insert(&name, "snapshot expiry").is_err() {
                    continue; // busy: next pass
                }
                if let Err(e) = delete_now(d, &name, &s.name) {
                    eprintln!("bivy: {name}: removing expired snapshot {}: {e}", s.name);
                }
                d.busy.lock().expect("busy lock").remove(&name);
            }
        }
        let (ec, _) = {
            let db = d.db.lock().expect("db lock");
            config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
        };
        let Some(spec) = ec.get("snapshots.schedule").filter(|v| !v.is_empty()) else {
            continue;
        };
        // Aliases (@daily, ...) fire at a minute and hour of their own per instance, as in LXD.
        let subject = rec.config.get("volatile.uuid").map_or(0, |u| {
            i64::from(u32::from_str_radix(&u.replace('-', "")[..8.min(u.len())], 16).unwrap_or(0))
        });
        let Ok(sched) = schedule::parse_schedule_for(spec, subject) else {
            continue; // validated on write; an old bad value is skipped
        };
        if !sched.is_periodic() || !sched.matches_minute(minute) {
            continue;
        }
        let running = match instances::state(d, &name) {
            Ok(st) => matches!(st, State::Running { .. }),
            Err(e) => {
                eprintln!("bivy: scheduled snapshot of {name} skipped: {e}");
                continue;
            }
        };
        if !running && !config::flag(&ec, "snapshots.schedule.stopped") {
            continue;
        }
        if d.busy_insert(&name, "scheduled snapshot").is_err() {
            continue;
        }
        match snapshot_now(d, &name, "", None) {
            Ok(s) => eprintln!("bivy: {name}: scheduled snapshot {s} taken"),
            Err(e) => eprintln!("bivy: {name}: scheduled snapshot failed: {e}"),
        }
        d.busy.lock().expect("busy lock").remove(&name);
    }
}
