//! Stateful operations (CRIU checkpoints): a stop that saves the running state, a start that
//! restores it, the saved state of a stateful snapshot. No HTTP: the handlers call in here and
//! `lifecycle::start_with`/`snapshots` use it.
//!
//! Only instances with `migration.stateful=true` (Incus' key) take part, so that a user who never
//! asked for checkpoints never meets a CRIU error; CRIU itself is checked before anything is done
//! (`runtime::criu_check`), so without it every stateful verb fails and nothing changes.
//!
//! The state lives in the instance's volume, `<volume>/state/` (CRIU's images and bivy's
//! description of them), as LXD keeps it: a stateful snapshot's volume carries it along, a
//! restore of that snapshot brings it back. `InstanceRecord::stateful` is true exactly while a
//! stopped instance has a saved state to start from; a stateless start discards it. CRIU's logs
//! are kept in the instance's log directory (`criu-dump.log`, `criu-restore.log`).

use std::path::{Path, PathBuf};

use super::db::InstanceRecord;
use super::lxc_log::log_line;
use super::view::{expanded, record, state_of};
use super::volatile::set_volatile;
use super::{config, Ctx, Error, Result};
use crate::runtime::{self, State};

/// The state directory below an instance's (or snapshot's) volume.
pub const STATE_DIR: &str = "state";

/// CRIU's logs in the instance's log directory.
pub const DUMP_LOG: &str = "criu-dump.log";
pub const RESTORE_LOG: &str = "criu-restore.log";

/// Where the saved state of `rec` is (or would be).
pub fn state_dir(d: &Ctx, rec: &InstanceRecord) -> PathBuf {
    d.volume_dir(rec).join(STATE_DIR)
}

/// Refuse `what` (e.g. "Stateful stop") unless the instance has `migration.stateful=true`.
pub fn require_key(d: &Ctx, name: &str, rec: &InstanceRecord, what: &str) -> Result<()> {
    let (ec, _) = expanded(d, rec);
    if config::flag(&ec, "migration.stateful") {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{what} requires migration.stateful to be set to true (`config set {name} migration.stateful=true` with lxc or bivy)"
    )))
}

/// CRIU found and working, else an error naming what is missing (501: this server cannot do
/// it, as for anything it does not implement).
pub fn require_criu() -> Result<()> {
    runtime::criu_check()
        .map(drop)
        .map_err(|e| Error::NotSupported(e.0))
}

/// Everything a stateful operation on `rec` needs: the key, no network device, then CRIU.
pub fn check(d: &Ctx, name: &str, rec: &InstanceRecord, what: &str) -> Result<()> {
    require_key(d, name, rec, what)?;
    let (_, ed) = expanded(d, rec);
    let mut nics: Vec<&str> = ed
        .iter()
        .filter(|(_, c)| c.get("type").is_some_and(|t| t == "nic"))
        .map(|(n, _)| n.as_str())
        .collect();
    if !nics.is_empty() {
        crate::util::sort::sort(&mut nics);
        return Err(Error::not_yet(&format!(
            "{what} of an instance with nic devices ({}): the restore does not plug them back, \
             and CRIU 4.1.1 cannot dump IPv4/IPv6 sockets on kernels from 6.16",
            nics.join(", ")
        )));
    }
    require_criu()
}

/// An empty directory for a new checkpoint (root only).
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| Error::Host(format!("removing {}: {e}", dir.display())))?;
    }
    crate::util::fs::create_dir_mode(dir, 0o700)
        .map_err(|e| Error::Host(format!("creating {}: {e}", dir.display())))
}

fn set_stateful(d: &Ctx, name: &str, stateful: bool) -> Result<()> {
    let mut db = d.db.lock().expect("db lock");
    db.update(|data| {
        if let Some(r) = data.instances.get_mut(name) {
            r.stateful = stateful;
        }
    })
    .map_err(|e| Error::Host(format!("saving the instance record: {e}")))
}

/// Dump the running instance into a fresh directory and keep it running (the dump of a stateful
/// snapshot). The directory is removed again if the dump fails.
pub fn dump_running(d: &Ctx, name: &str, dir: &Path) -> Result<()> {
    fresh_dir(dir)?;
    let log = log_path(d, name, DUMP_LOG)?;
    runtime::checkpoint(&d.run_dir(name), dir, &log, true).map_err(|e| {
        let _ = std::fs::remove_dir_all(dir);
        Error::from(e)
    })
}

fn log_path(d: &Ctx, name: &str, file: &str) -> Result<PathBuf> {
    let dir = d.log_dir(name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Host(format!("{}: {e}", dir.display())))?;
    Ok(dir.join(file))
}

/// `stop --stateful`: dump the running instance into its state directory and stop it; it is then
/// stopped with `stateful: true`. A failed dump leaves it running as it was, without state.
pub fn stop(d: &Ctx, name: &str) -> Result<()> {
    let rec = record(d, name)?;
    if !matches!(state_of(d, name)?, State::Running { .. }) {
        return Err(Error::Invalid("The instance is already stopped".into()));
    }
    check(d, name, &rec, "Stateful stop")?;
    let dir = state_dir(d, &rec);
    fresh_dir(&dir)?;
    let log = log_path(d, name, DUMP_LOG)?;
    // Recorded before the dump (which stops the container once it is complete), so a daemon
    // killed meanwhile finds the instance stopped with its state; `recover` mends the rest.
    set_stateful(d, name, true)?;
    if let Err(e) = runtime::checkpoint(&d.run_dir(name), &dir, &log, false) {
        let dumped = std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("Dumping finished successfully"));
        let running = matches!(state_of(d, name), Ok(State::Running { .. }));
        if running || !dumped {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = set_stateful(d, name, false);
            return Err(e.into());
        }
        // Dumped and stopped, only the wait for the monitor failed: the state is good.
        eprintln!("bivy: {name}: {e}");
    }
    // As for any stop: the proxy devices' listeners close (the restore starts them again).
    super::proxy::stopped(d, name);
    set_volatile(
        d,
        name,
        &[("volatile.last_state.power", Some("STOPPED".into()))],
    );
    log_line(
        &d.log_dir(name),
        "stopped with its state saved (stateful stop)",
    );
    Ok(())
}

/// Before a stateful start: the instance must have a saved state, the key and CRIU.
pub fn check_restorable(d: &Ctx, name: &str, rec: &InstanceRecord) -> Result<()> {
    let dir = state_dir(d, rec);
    if !rec.stateful || !dir.join(runtime::criu::META).exists() {
        return Err(Error::Invalid(
            "The instance has no saved state to restore (start it without --stateful)".into(),
        ));
    }
    check(d, name, rec, "Stateful start")
}

/// A stateless start of an instance with a saved state (or a volume that carries one, from a
/// copy): the state is discarded, as LXD does.
pub fn discard(d: &Ctx, name: &str, rec: &InstanceRecord) -> Result<()> {
    let dir = state_dir(d, rec);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| {
            Error::Host(format!("discarding the saved state {}: {e}", dir.display()))
        })?;
    }
    if rec.stateful {
        set_stateful(d, name, false)?;
        log_line(&d.log_dir(name), "saved state discarded (stateless start)");
    }
    Ok(())
}

/// The restore half of `start --stateful`: the monitor restores the saved tree. On success the
/// state is removed (it was used); on failure it stays for another try and the instance stays
/// stopped with `stateful: true`.
pub fn restore(
    d: &Ctx,
    name: &str,
    rec: &InstanceRecord,
    spec: &runtime::Spec,
    run_dir: &Path,
) -> Result<()> {
    let dir = state_dir(d, rec);
    let log = log_path(d, name, RESTORE_LOG)?;
    runtime::restore(spec, run_dir, &dir, &log)?;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!(
            "bivy: {name}: removing the used state {}: {e}",
            dir.display()
        );
    }
    set_stateful(d, name, false)?;
    log_line(&d.log_dir(name), "restored from its saved state");
    Ok(())
}

/// At daemon start: mend what a daemon killed during a stateful stop left. A running instance
/// has no saved state (the dump failed or never finished: CRIU resumed it), and a stopped one
/// marked stateful without a checkpoint has nothing to restore.
pub fn recover(d: &Ctx, name: &str) {
    let Ok(rec) = record(d, name) else { return };
    if !rec.stateful {
        return;
    }
    let dir = state_dir(d, &rec);
    let stale = match state_of(d, name) {
        Ok(State::Running { .. }) => true,
        Ok(State::Stopped { .. }) => !dir.join(runtime::criu::META).exists(),
        Err(_) => false,
    };
    if stale {
        eprintln!("bivy: {name}: no usable saved state (a stateful stop did not finish): cleared");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = set_stateful(d, name, false);
    }
}
