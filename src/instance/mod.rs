//! The instance model and lifecycle, without HTTP: the state database, id maps, snapshot
//! schedules and the typed errors the daemon's handlers map to LXD's responses.
//!
//! This module imports neither `crate::http` nor `crate::daemon` (`cargo xtask tidy` checks it):
//! whatever drives an instance (a REST handler, a migration transfer, the scheduler) calls in
//! here and renders the result itself.

pub mod backups;
pub mod bridge_state;
pub mod bridges;
pub mod config;
pub mod create;
pub mod ctx;
pub mod db;
pub mod devices;
pub mod docs;
pub mod error;
pub mod events;
pub mod host;
pub mod hostdev;
pub mod idmap;
pub mod images;
pub mod interim;
pub mod lifecycle;
pub mod limits;
pub mod lxc_log;
pub mod markers;
pub mod moves;
pub mod network_config;
pub mod networks;
pub mod nics;
pub mod operations;
pub mod pools;
pub mod proxy;
pub mod proxy_state;
pub mod recover;
pub mod refresh;
pub mod restore;
pub mod schedule;
pub mod snapshot_names;
pub mod snapshots;
pub mod stateful;
pub mod trust;
pub mod uevents;
pub mod view;
pub mod volatile;
pub mod volume_data;
pub mod volume_records;
pub mod volume_snapshots;
pub mod volumes;
pub mod watch;

pub use ctx::Ctx;
pub use error::{Error, Result};
pub use host::Host;
