//! The instance as the model sees it: its record, its expanded config and devices, its state,
//! and the URLs that name it in events and operations.

use std::collections::BTreeMap;

use super::db::{InstanceRecord, Profiles};
use super::{config, Ctx, Error, Result};
use crate::api::{Devices, StringMap};
use crate::runtime::{self, State};
use crate::util::shared::Shared;

/// The instance's API URL (events, operation resources, `used_by`).
pub fn url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// An operation's resources for work on instance `name`.
pub fn resources(name: &str) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert("containers".into(), vec![format!("/1.0/containers/{name}")]);
    m.insert("instances".into(), vec![url(name)]);
    m
}

/// How many root disks (`disk` at `/`) `devices` has.
fn root_disks(devices: &Devices) -> usize {
    devices
        .values()
        .filter(|d| super::config::is_root_disk(d))
        .count()
}

/// What is wrong with an instance's expanded devices' root disk, in LXD's words: none, or
/// more than one.
pub fn root_disk_problem(devices: &Devices) -> Option<&'static str> {
    match root_disks(devices) {
        0 => Some("No root device could be found"),
        1 => None,
        _ => Some("Failed detecting root disk device: More than one root device found"),
    }
}

/// The error for a missing instance, in LXD's words.
pub fn not_found() -> Error {
    Error::NotFound("Instance not found".into())
}

/// The instance's stored record.
pub fn record(d: &Ctx, name: &str) -> Result<Shared<InstanceRecord>> {
    record_in(&d.db.lock().expect("db lock").data, name)
}

/// The record of instance `name` in `data` (for callers that hold the database lock).
pub fn record_in(data: &super::db::Data, name: &str) -> Result<Shared<InstanceRecord>> {
    data.instances.get(name).cloned().ok_or_else(not_found)
}

/// Every instance's record (shared with the database's copy: the lock is not held afterwards).
pub fn all_records(d: &Ctx) -> Vec<(String, Shared<InstanceRecord>)> {
    listing(d).0
}

/// Every instance's record and the profiles, as one moment's database has them (shared with
/// its copy: the lock is not held afterwards).
pub fn listing(d: &Ctx) -> (Vec<(String, Shared<InstanceRecord>)>, Shared<Profiles>) {
    let db = d.db.lock().expect("db lock");
    let records = db
        .data
        .instances
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (records, db.data.profiles.clone())
}

/// Its config and devices with its profiles applied.
pub fn expanded(d: &Ctx, rec: &InstanceRecord) -> (StringMap, Devices) {
    let db = d.db.lock().expect("db lock");
    config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
}

/// Its runtime state.
pub fn state(d: &Ctx, name: &str) -> Result<State> {
    state_of(d, name)
}

/// The instance's state from its run directory. A run directory that cannot be read is an
/// error, not "Stopped": an instance whose state is unknown must not be reported as stopped
/// (and then, say, started a second time).
pub fn state_of(d: &Ctx, name: &str) -> Result<State> {
    runtime::state(&d.run_dir(name))
        .map_err(|e| Error::Host(format!("state of instance {name:?}: {e}")))
}
