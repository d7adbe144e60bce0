//! Restoring an instance to one of its snapshots: the request checked, a running instance
//! stopped around the restore (an [`Interim`] change) and started again, the volume swapped for
//! a clone of the snapshot's, the config brought back; with `stateful`, the snapshot's saved
//! state started from.

use std::sync::Arc;

use super::db::{InstanceRecord, SnapshotRecord};
use super::interim::Interim;
use super::lifecycle;
use super::snapshots::find;
use super::view::{record, state, url};
use super::{stateful, Ctx, Error, Result};
use crate::runtime::State;
use crate::storage::Pool;

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

pub fn restore_now(d: &Ctx, name: &str, snap: &str) -> Result<()> {
    restore_now_with(d, name, snap, false)
}

/// [`restore_now`]; `stateful`: the snapshot's saved state is restored too (the instance then
/// runs, its processes as they were when the snapshot was taken).
pub fn restore_now_with(d: &Ctx, name: &str, snap: &str, stateful: bool) -> Result<()> {
    let steps = crate::util::trace::Steps::new("restore", name);
    let rec = record(d, name)?;
    let s = find(&rec, snap)?.clone();
    let pool = super::pools::usable_pool(d, &rec.pool)?;
    // The snapshot's volume is cloned beside the instance's (`<volume>.restore`), swapped in
    // once the instance is stopped; a start removes a clone a killed daemon left (`recover`).
    let new = super::pools::replacement(&pool.container(&rec.volume));
    let _ = pool.driver.delete_volume(&new);
    let clone = || {
        pool.driver
            .clone_volume(&pool.snapshot(&rec.volume, &s.volume), &new, false)
            .map_err(|e| Error::Host(format!("restoring {}: {e}", s.name)))
    };
    // As LXD: a running instance is stopped (not cleanly), restored and started again. The
    // clone is made while it stops: the snapshot does not change, and the two overlap. The
    // stop is a kill whose end is not waited for (`kill_for_restart`): the old run ends beside
    // the new one, and the volume it used is removed after its end.
    let was_running = matches!(state(d, name)?, State::Running { .. });
    let mut ending = None;
    let cloned = if was_running {
        Interim::Stopped.begin(d, name)?;
        steps.step("interim stop recorded");
        let (stopped, cloned) = std::thread::scope(|scope| {
            let cloning = scope.spawn(|| {
                let r = clone();
                steps.step("cloned");
                r
            });
            // Its record stays RUNNING: it is started again (`Interim` covers a killed daemon).
            let stopped = lifecycle::kill_for_restart(d, name).map(|e| ending = e);
            steps.step("stopped");
            let cloned = cloning.join().unwrap_or_else(|_| {
                Err(Error::Host(format!(
                    "restoring {}: the copy failed",
                    s.name
                )))
            });
            (stopped, cloned)
        });
        if let Err(e) = stopped {
            let _ = pool.driver.delete_volume(&new);
            Interim::Stopped.end(d, name);
            return Err(e);
        }
        cloned
    } else {
        clone()
    };
    let r = match cloned {
        Ok(()) => restore_stopped(
            d,
            name,
            &rec,
            &s,
            &pool,
            was_running,
            stateful,
            ending.take(),
        ),
        Err(e) => {
            // Started again on the volume the old run used: after that run's end (two
            // overlays must never share an upper layer).
            end_now(d, name, ending.take());
            Err(not_restored(d, name, &pool, &new, was_running, e))
        }
    };
    steps.step("restored");
    if was_running {
        // Started again (or, on failure, attempted): nothing for a restart to undo.
        Interim::Stopped.end(d, name);
    }
    r
}

/// Wait for the end of the run a restore killed (its monitor let go on now: it was held until
/// the restarted run's answer, which waits for this).
fn end_now(d: &Ctx, name: &str, mut ending: Option<crate::runtime::Ending>) {
    if let Some(e) = ending.as_mut() {
        e.go_on();
    }
    lifecycle::finish_ending(d, name, ending)();
}

/// A restore that failed before its swap: the clone removed, the instance started again when it
/// was running; `e` back.
fn not_restored(
    d: &Ctx,
    name: &str,
    pool: &Pool,
    clone: &std::path::Path,
    was_running: bool,
    e: Error,
) -> Error {
    let _ = pool.driver.delete_volume(clone);
    if was_running {
        let _ = start_again(d, name, false);
    }
    e
}

/// Start the instance a restore stopped (or, `stateful`, from its restored state); a failed
/// start is recorded (STOPPED: the stop left the record as it was).
fn start_again(d: &Ctx, name: &str, stateful: bool) -> Result<()> {
    let r = lifecycle::start_with(d, name, stateful);
    if r.is_err() {
        lifecycle::record_stopped(d, name);
    }
    r
}

/// The restore proper, with the instance stopped and the snapshot's clone made beside its
/// volume (`pools::replacement`): the two swapped, the config brought back; starts it again when
/// it was running.
#[allow(clippy::too_many_arguments)]
fn restore_stopped(
    d: &Ctx,
    name: &str,
    rec: &InstanceRecord,
    s: &SnapshotRecord,
    pool: &Arc<Pool>,
    was_running: bool,
    stateful: bool,
    ending: Option<crate::runtime::Ending>,
) -> Result<()> {
    let steps = crate::util::trace::Steps::new("restore the stopped", name);
    let snap = s.name.as_str();
    let cur = pool.container(&rec.volume);
    let old = match super::pools::swap_in(&cur) {
        Ok(old) => old,
        Err(e) => {
            let e = Error::Host(format!("restoring {snap}: {e}"));
            end_now(d, name, ending);
            let new = super::pools::replacement(&cur);
            return Err(not_restored(d, name, pool, &new, was_running, e));
        }
    };
    // The volume restored away goes off the restore's path, after the end of the run that
    // used it when that was not waited for.
    let ended = lifecycle::finish_ending(d, name, ending);
    if let Err(e) = super::pools::remove_in_background_after(pool.clone(), &old, ended) {
        eprintln!("bivy: deleting the pre-restore volume: {e}");
    }
    steps.step("volumes swapped");
    // A stateful snapshot's volume carries its state; kept only for a stateful restore.
    let state_dir = cur.join(stateful::STATE_DIR);
    if !stateful && state_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&state_dir) {
            eprintln!("bivy: {name}: removing the snapshot's saved state: {e}");
        }
    }
    // The config comes back too: the snapshot's keys, with the instance's own volatile state
    // except the on-disk id shift, which is the snapshot's.
    let mut config = crate::util::sort::entries_where(&s.config, |k, _| {
        !k.starts_with("volatile.") || k == "volatile.last_state.idmap"
    });
    for (k, v) in &rec.config {
        if k.starts_with("volatile.") && k != "volatile.last_state.idmap" {
            config.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    // Not synced when a start follows: the start's own record, synced, makes it durable (and
    // a failed start's `record_stopped`).
    let starts = stateful || was_running;
    let restore_record = |data: &mut super::db::Data| {
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
    };
    let recorded = {
        let mut db = d.db.lock().expect("db lock");
        if starts {
            db.update_unsynced(restore_record)
        } else {
            db.update(restore_record)
        }
    };
    if let Err(e) = recorded {
        if was_running {
            let _ = start_again(d, name, false);
        }
        return Err(Error::Host(format!("restoring {snap}: {e}")));
    }
    steps.step("recorded");
    d.events.lifecycle(
        "instance-restored",
        &url(name),
        serde_json::json!({"snapshot": snap}),
    );
    if starts {
        // Stateful: stopped with the snapshot's state until this succeeds (a failed restore
        // keeps it).
        start_again(d, name, stateful)?;
    }
    Ok(())
}
