//! LXD's description of a backup: `backup/index.yaml` (`backup.Info`: name, backend, pool,
//! snapshots, optimized) with backup.yaml's content (`backup/config.Config`: the instance and
//! its snapshots as `api.Instance` and `api.InstanceSnapshot`) as its `config`; written for an
//! export, read and checked for an import.

use std::path::Path;

use crate::api::{self, Devices, StringMap};
use crate::image;
use crate::instance::config;
use crate::instance::db::{InstanceRecord, SnapshotRecord};
use crate::instance::{Ctx, Error, Result};
use crate::storage::Pool;

/// index.yaml as LXD writes it (`backup.Info`), its `config` being backup.yaml's content.
pub(super) fn index_yaml(
    d: &Ctx,
    name: &str,
    rec: &InstanceRecord,
    pool: &Pool,
    instance_only: bool,
    optimized: bool,
) -> Result<serde_json::Value> {
    let (ec, ed) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
    };
    let (pool_cfg, pool_desc) = {
        let db = d.db.lock().expect("db lock");
        db.data
            .pools
            .get(&rec.pool)
            .map(|p| (p.config.clone(), p.description.clone()))
            .unwrap_or_default()
    };
    // The files are written in container ids, whatever the volume's on-disk state; a send
    // stream carries them as they are on disk, and the map says which those are.
    let unshifted = |c: &StringMap| {
        let mut c = c.clone();
        if !optimized {
            c.insert("volatile.last_state.idmap".into(), "[]".into());
        }
        c
    };
    let snaps: &[SnapshotRecord] = if instance_only { &[] } else { &rec.snapshots };
    let time_or_zero = |t: &str| {
        if t.is_empty() || t == api::ZERO_TIME {
            api::GO_ZERO_TIME.to_string()
        } else {
            t.to_string()
        }
    };
    let container = serde_json::json!({
        "architecture": rec.architecture,
        "config": unshifted(&rec.config),
        "devices": rec.devices,
        "ephemeral": rec.ephemeral,
        "profiles": rec.profiles,
        "stateful": rec.stateful,
        "description": rec.description,
        "created_at": time_or_zero(&rec.created_at),
        "expanded_config": unshifted(&ec),
        "expanded_devices": ed,
        "name": name,
        "status": "Stopped",
        "status_code": api::status::STOPPED,
        "last_used_at": time_or_zero(&rec.last_used_at),
        "location": "none",
        "type": "container",
        "project": "default",
    });
    let snapshots: Vec<serde_json::Value> = snaps
        .iter()
        .map(|s| {
            let (ec, ed) = {
                let db = d.db.lock().expect("db lock");
                config::expand(&s.profiles, &db.data.profiles, &s.config, &s.devices)
            };
            serde_json::json!({
                "architecture": s.architecture,
                "config": unshifted(&s.config),
                "devices": s.devices,
                "ephemeral": s.ephemeral,
                "profiles": s.profiles,
                "expires_at": time_or_zero(&s.expires_at),
                "created_at": time_or_zero(&s.created_at),
                "expanded_config": unshifted(&ec),
                "expanded_devices": ed,
                "last_used_at": api::GO_ZERO_TIME,
                "name": s.name,
                "size": -1,
                "stateful": s.stateful,
            })
        })
        .collect();
    let volume_snapshots: Vec<serde_json::Value> = snaps
        .iter()
        .map(|s| {
            let mut v = serde_json::json!({
                "name": s.name,
                "description": s.description,
                "config": {},
                "content_type": "filesystem",
                "created_at": time_or_zero(&s.created_at),
            });
            if !s.expires_at.is_empty() && !s.expires_at.starts_with("0001-") {
                v["expires_at"] = serde_json::json!(s.expires_at);
            }
            v
        })
        .collect();
    let mut cfg = serde_json::json!({
        "container": container,
        "pool": {
            "name": rec.pool,
            "driver": pool.driver.name(),
            "description": pool_desc,
            "config": pool_cfg,
            "status": "Created",
            "locations": ["none"],
            "used_by": [],
        },
        "volume": {
            "name": name,
            "type": "container",
            "content_type": "filesystem",
            "description": "",
            "config": {},
            "used_by": [],
            "location": "none",
            "project": "default",
            "created_at": time_or_zero(&rec.created_at),
        },
    });
    if !snaps.is_empty() {
        cfg["snapshots"] = serde_json::json!(snapshots);
        cfg["volume_snapshots"] = serde_json::json!(volume_snapshots);
    }
    let mut index = serde_json::json!({
        "name": name,
        "backend": pool.driver.name(),
        "pool": rec.pool,
        "optimized": optimized,
        "optimized_header": false,
        "type": "container",
        "config": cfg,
    });
    if !snaps.is_empty() {
        index["snapshots"] = serde_json::json!(snaps.iter().map(|s| &s.name).collect::<Vec<_>>());
    }
    Ok(index)
}

/// What index.yaml says (LXD's `backup.Info`), as far as an import needs it.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct Info {
    pub name: String,
    pub backend: String,
    pub pool: String,
    #[serde(deserialize_with = "api::nullable")]
    pub snapshots: Vec<String>,
    pub optimized: Option<bool>,
    pub optimized_header: Option<bool>,
    #[serde(rename = "type")]
    pub kind: String,
    pub config: Option<BackupConfig>,
}

/// backup.yaml (`backup/config.Config`).
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct BackupConfig {
    pub container: Option<Container>,
    #[serde(deserialize_with = "api::nullable")]
    pub snapshots: Vec<Snapshot>,
}

/// The instance in backup.yaml (`api.Instance`), what an import takes of it.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct Container {
    pub name: String,
    pub architecture: String,
    #[serde(deserialize_with = "api::nullable")]
    pub config: StringMap,
    #[serde(deserialize_with = "api::nullable")]
    pub devices: Devices,
    #[serde(deserialize_with = "api::nullable")]
    pub ephemeral: bool,
    #[serde(deserialize_with = "api::nullable")]
    pub profiles: Vec<String>,
    #[serde(deserialize_with = "api::nullable")]
    pub description: String,
    #[serde(rename = "type", deserialize_with = "api::nullable")]
    pub kind: String,
}

/// One snapshot in backup.yaml (`api.InstanceSnapshot`).
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct Snapshot {
    pub name: String,
    pub architecture: String,
    #[serde(deserialize_with = "api::nullable")]
    pub config: StringMap,
    #[serde(deserialize_with = "api::nullable")]
    pub devices: Devices,
    #[serde(deserialize_with = "api::nullable")]
    pub ephemeral: bool,
    #[serde(deserialize_with = "api::nullable")]
    pub profiles: Vec<String>,
    #[serde(deserialize_with = "api::nullable")]
    pub description: String,
    #[serde(deserialize_with = "api::nullable")]
    pub created_at: String,
    #[serde(deserialize_with = "api::nullable")]
    pub expires_at: String,
    #[serde(deserialize_with = "api::nullable")]
    pub stateful: bool,
}

/// A time from a backup's index as it is stored: RFC 3339 in UTC, `missing()` when absent,
/// LXD's zero time for "never". YAML's other timestamp forms (a space for the `T`, a space
/// before the offset, an offset in hours, none for UTC, a date alone), which Go's YAML reads as
/// times and a YAML library writes when it saves the file again, are converted; anything else
/// is refused (kept as it came, it broke every listing that showed it).
pub fn index_time(field: &str, v: &str, missing: impl FnOnce() -> String) -> Result<String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(missing());
    }
    if v.starts_with("0001-01-01") {
        return Ok(api::GO_ZERO_TIME.into());
    }
    yaml_time(v)
        .and_then(|t| crate::util::time::parse(&t))
        .map(|t| {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            crate::util::time::format(crate::util::time::secs_of(t), d.subsec_nanos())
        })
        .ok_or_else(|| {
            Error::Invalid(format!(
                "Backup index.yaml is invalid: {field} {v:?} is not a time"
            ))
        })
}

/// A YAML timestamp as RFC 3339 (`None` when it is not one of the forms [`index_time`] takes).
fn yaml_time(v: &str) -> Option<String> {
    if v.len() == 10 {
        return Some(format!("{v}T00:00:00Z"));
    }
    // Date, separator, hh:mm:ss and an optional fraction; then the zone.
    let mut end = 19;
    let b = v.as_bytes();
    if b.get(end) == Some(&b'.') {
        end += 1;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    let (time, zone) = (v.get(..end)?, v.get(end..)?.trim_start());
    let zone = match zone {
        "" => "Z".to_string(),
        z if z.eq_ignore_ascii_case("z") => "Z".to_string(),
        z if (z.len() == 2 || z.len() == 3)
            && (z.starts_with('+') || z.starts_with('-'))
            && z[1..].bytes().all(|c| c.is_ascii_digit()) =>
        {
            format!("{}{:0>2}:00", &z[..1], &z[1..])
        }
        z => z.to_string(),
    };
    Some(format!("{time}{zone}"))
}

/// Read and check a backup tarball's index (and backup.yaml when the index has no config).
pub fn read_info(tarball: &Path) -> Result<Info> {
    let bad = |m: String| Error::Invalid(m);
    let raw = image::read_member(tarball, "backup/index.yaml", 16 << 20)?
        .ok_or_else(|| bad("Backup is missing index.yaml".into()))?;
    let mut info: Info = crate::util::yaml::from_slice(&raw)
        .map_err(|e| bad(format!("Backup index.yaml is invalid: {e}")))?;
    if info.kind.is_empty() {
        info.kind = "container".into();
    }
    if info.kind != "container" {
        return Err(Error::not_yet(&format!(
            "importing {:?} backups (containers only)",
            info.kind
        )));
    }
    if info.optimized == Some(true) && info.backend != "btrfs" {
        return Err(Error::Invalid(format!(
            "not supported yet: optimized backups of the {:?} storage driver",
            info.backend
        )));
    }
    if info.optimized == Some(true) && info.optimized_header == Some(true) {
        check_optimized_header(tarball)?;
    }
    if info
        .config
        .as_ref()
        .and_then(|c| c.container.as_ref())
        .is_none()
    {
        let raw = image::read_member(tarball, "backup/container/backup.yaml", 16 << 20)?
            .ok_or_else(|| {
                bad("Backup has neither a config in index.yaml nor backup.yaml".into())
            })?;
        info.config = Some(
            crate::util::yaml::from_slice(&raw)
                .map_err(|e| bad(format!("Backup backup.yaml is invalid: {e}")))?,
        );
    }
    if info
        .config
        .as_ref()
        .and_then(|c| c.container.as_ref())
        .is_none()
    {
        return Err(bad("No instance config in backup config".into()));
    }
    for s in &info.snapshots {
        if s.is_empty() || s.contains('/') || s == "." || s == ".." {
            return Err(bad(format!("Backup names an invalid snapshot {s:?}")));
        }
    }
    Ok(info)
}

/// LXD's list of the subvolumes an optimized backup sent (`backup/optimized_header.yaml`):
/// only each volume's own is restored here, a subvolume inside one is refused.
pub(super) fn check_optimized_header(tarball: &std::path::Path) -> Result<()> {
    let bad = |m: String| Error::Invalid(m);
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Header {
        #[serde(deserialize_with = "api::nullable")]
        subvolumes: Vec<Sub>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Sub {
        path: String,
    }
    let raw = image::read_member(tarball, "backup/optimized_header.yaml", 16 << 20)?
        .ok_or_else(|| bad("Backup is missing optimized_header.yaml".into()))?;
    let h: Header = crate::util::yaml::from_slice(&raw)
        .map_err(|e| bad(format!("Backup optimized_header.yaml is invalid: {e}")))?;
    if let Some(s) = h.subvolumes.iter().find(|s| s.path != "/") {
        return Err(Error::Invalid(format!(
            "not supported yet: optimized btrfs backups with subvolumes inside a volume ({:?})",
            s.path
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lxd_index_yaml_parses() {
        let y = "name: c1\nbackend: dir\npool: default\nsnapshots:\n- snap0\noptimized: false\n\
                 optimized_header: false\ntype: container\nconfig:\n  container:\n    \
                 architecture: x86_64\n    config:\n      volatile.last_state.idmap: '[]'\n    \
                 devices: {}\n    ephemeral: false\n    profiles:\n    - default\n    \
                 created_at: 2026-12-03T19:00:00.123456789Z\n    name: c1\n  snapshots:\n  \
                 - name: snap0\n    created_at: 2026-12-03T19:00:01Z\n    expires_at: \
                 0001-01-01T00:00:00Z\n    config: {}\n";
        let info: Info = crate::util::yaml::from_str(y).unwrap();
        assert_eq!(info.snapshots, vec!["snap0"]);
        let c = info.config.unwrap();
        assert_eq!(c.container.unwrap().profiles, vec!["default"]);
        assert_eq!(c.snapshots[0].created_at, "2026-12-03T19:00:01Z");
    }

    #[test]
    fn index_times_are_stored_as_rfc3339_or_refused() {
        let now = || "NOW".to_string();
        let t = |v: &str| index_time("created_at", v, now);
        assert_eq!(t("").unwrap(), "NOW");
        assert_eq!(t("2026-12-03T19:00:01Z").unwrap(), "2026-12-03T19:00:01Z");
        assert_eq!(
            t("2026-12-03T19:00:01.5+01:00").unwrap(),
            "2026-12-03T18:00:01.5Z"
        );
        // YAML's forms, as a YAML library saves them again.
        assert_eq!(
            t("2026-12-06 18:42:24.308401+00:00").unwrap(),
            "2026-12-06T18:42:24.308401Z"
        );
        assert_eq!(t("2026-12-06 18:42:24 -5").unwrap(), "2026-12-06T23:42:24Z");
        assert_eq!(t("2026-12-06 18:42:24").unwrap(), "2026-12-06T18:42:24Z");
        assert_eq!(t("2026-12-06").unwrap(), "2026-12-06T00:00:00Z");
        assert_eq!(t("0001-01-01T00:00:00Z").unwrap(), api::GO_ZERO_TIME);
        for bad in [
            "banana",
            "1999-13-45 99:99",
            "2026-12-06T18:42:24Q",
            "20261206",
        ] {
            let e = t(bad).unwrap_err().to_string();
            assert!(
                e.contains("created_at") && e.contains("not a time"),
                "{bad}: {e}"
            );
        }
    }
}
