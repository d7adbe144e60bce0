//! Temporary changes operations make to running instances ([`Interim`]: a freeze around a copy,
//! a stop around a restore), recorded before they are made so that a killed daemon's next start
//! undoes them, and [`with_consistent`], the freeze around a clone. Imports nothing that starts or
//! stops an instance (`lifecycle` undoes what is left at start).

use std::path::PathBuf;

use super::view::state_of;
use super::{Ctx, Error, Result};
use crate::runtime::{self, State};
use crate::storage::Pool;

/// Run `f` with the instance frozen when it runs on a driver whose clones are not atomic, so
/// a copy or snapshot of a running container is consistent.
pub fn with_consistent<T>(
    d: &Ctx,
    name: &str,
    pool: &Pool,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let freeze = !pool.driver.atomic_clone()
        && matches!(state_of(d, name)?, State::Running { frozen: false, .. });
    if freeze {
        Interim::Frozen.begin(d, name)?;
        if let Err(e) = runtime::freeze(&d.run_dir(name)) {
            Interim::Frozen.end(d, name);
            return Err(e.into());
        }
    }
    let r = f();
    if freeze {
        match runtime::unfreeze(&d.run_dir(name)) {
            Ok(()) => Interim::Frozen.end(d, name),
            // The record stays: the next daemon start thaws it.
            Err(e) => eprintln!("bivy: {name}: unfreezing after a copy: {e}"),
        }
    }
    r
}

/// A temporary change an operation makes to a running instance: a freeze around a copy, a stop
/// around a restore. It is recorded in the instance's run directory before it is made and the
/// record is removed once it is undone, so a daemon killed in between undoes it at its next
/// start (`lifecycle`'s `undo_interim`). A user's `pause` is not one: it survives restarts.
#[derive(Clone, Copy, Debug)]
pub enum Interim {
    Frozen,
    Stopped,
}

impl Interim {
    pub(super) const ALL: [Interim; 2] = [Interim::Frozen, Interim::Stopped];

    /// Its record's name in the run directory.
    pub(super) fn file_name(self) -> &'static str {
        match self {
            Interim::Frozen => "interim.frozen",
            Interim::Stopped => "interim.stopped",
        }
    }

    pub(super) fn path(self, d: &Ctx, name: &str) -> PathBuf {
        d.run_dir(name).join(self.file_name())
    }

    /// Record the change before making it. Not synced: the record has to outlive the daemon,
    /// not the host (a host that goes down ends the running container, and with it the change;
    /// a restore's instance is started again at boot by its record, RUNNING throughout).
    pub fn begin(self, d: &Ctx, name: &str) -> Result<()> {
        let dir = d.run_dir(name);
        crate::util::fs::create_dir_mode(&dir, 0o711)
            .and_then(|()| crate::util::fs::replace_unsynced(&self.path(d, name), b""))
            .map_err(|e| Error::Host(format!("{}: {e}", dir.display())))
    }

    /// The change was undone: forget it.
    pub fn end(self, d: &Ctx, name: &str) {
        let _ = std::fs::remove_file(self.path(d, name));
    }
}
