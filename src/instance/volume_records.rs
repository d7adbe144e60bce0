//! Custom storage volumes' records: their type names and URLs, the record of one (LXD's 404
//! when there is none), and the instances and profiles whose disk devices name it. `volumes`
//! (create, update, rename, delete) and `volume_snapshots` build on this file, which imports
//! neither.

use super::db::{Data, VolumeRecord};
use super::{Ctx, Error, Result};
use crate::api::StringMap;

/// The one volume type a client creates.
pub const CUSTOM: &str = "custom";
/// The one content type bivy makes.
pub const FILESYSTEM: &str = "filesystem";

/// The API URL of a custom volume.
pub fn url(pool: &str, name: &str) -> String {
    format!("/1.0/storage-pools/{pool}/volumes/custom/{name}")
}

/// An operation's `resources` for custom volume `name` on `pool` (LXD's spelling).
pub fn resources(pool: &str, name: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    crate::util::sort::map([("storage_volumes".to_string(), vec![url(pool, name)])])
}

/// The record of volume `name` on `pool`, or LXD's 404.
pub fn record(d: &Ctx, pool: &str, name: &str) -> Result<VolumeRecord> {
    record_in(&d.db.lock().expect("db lock").data, pool, name).cloned()
}

pub(crate) fn record_in<'a>(data: &'a Data, pool: &str, name: &str) -> Result<&'a VolumeRecord> {
    data.volumes
        .get(pool)
        .and_then(|v| v.get(name))
        .ok_or_else(|| Error::NotFound("Storage volume not found".into()))
}

/// Whether device `dev` is a disk naming custom volume `name` on `pool`.
pub fn names_volume(dev: &StringMap, pool: &str, name: &str) -> bool {
    dev.get("type").map(String::as_str) == Some("disk")
        && dev.get("pool").map(String::as_str) == Some(pool)
        && dev.get("source").map(String::as_str) == Some(name)
        && dev.get("path").map(String::as_str) != Some("/")
}

/// What uses a volume, as LXD lists it: instances whose own devices name it, then profiles.
pub fn used_by(data: &Data, pool: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = data
        .instances
        .iter()
        .filter(|(_, r)| r.devices.values().any(|dev| names_volume(dev, pool, name)))
        .map(|(n, _)| super::view::url(n))
        .collect();
    out.extend(
        data.profiles
            .iter()
            .filter(|(_, p)| p.devices.values().any(|dev| names_volume(dev, pool, name)))
            .map(|(n, _)| format!("/1.0/profiles/{n}")),
    );
    out
}

/// Instances whose expanded devices (profiles included) name the volume.
pub fn instances_using(data: &Data, pool: &str, name: &str) -> Vec<String> {
    data.instances
        .iter()
        .filter(|(_, r)| {
            let (_, ed) = super::config::expand(&r.profiles, &data.profiles, &r.config, &r.devices);
            ed.values().any(|dev| names_volume(dev, pool, name))
        })
        .map(|(n, _)| n.clone())
        .collect()
}
