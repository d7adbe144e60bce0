//! Restoring a backup as a new instance: the plan (name, pool, config, devices and profiles
//! checked as a create's are), then the volumes unpacked with the image unpacker's rules (or
//! received with `btrfs receive` for an optimized backup) through `create::create_now`, whose
//! undo list removes everything on any failure.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::{index_time, Info, Snapshot};
use super::records::btrfs_program;
use crate::api::{self, Devices, StringMap};
use crate::image;
use crate::instance::config;
use crate::instance::create::{create_now, NewInstance, Origin, Received};
use crate::instance::db::SnapshotRecord;
use crate::instance::devices;
use crate::instance::{Ctx, Error, Result};
use crate::storage::Pool;
use crate::util::revert::Revert;
use crate::util::time;

/// The new instance's settings from a backup's config: its name (`name` overrides the
/// backup's), config, devices and profiles, and its pool (`pool`, else the backup's when this
/// server has it, else the default profile's root pool), checked as a create's are.
pub struct Plan {
    pub name: String,
    pub pool: String,
    pub profiles: Vec<String>,
    pub config: StringMap,
    pub devices: Devices,
    pub architecture: String,
    pub description: String,
    pub ephemeral: bool,
    /// The map the main volume's files are in (`volatile.last_state.idmap`).
    pub disk_idmap: String,
}

pub fn plan(d: &Ctx, info: &Info, name: Option<&str>, pool: Option<&str>) -> Result<Plan> {
    let c = info
        .config
        .as_ref()
        .and_then(|c| c.container.as_ref())
        .expect("read_info checked it");
    let name = match name.filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None if !info.name.is_empty() => info.name.clone(),
        None => c.name.clone(),
    };
    config::validate_instance_name(&name)?;
    let disk_idmap = c
        .config
        .get("volatile.last_state.idmap")
        .cloned()
        .unwrap_or_else(|| "[]".into());
    let mut cfg = c.config.clone();
    cfg.retain(|k, _| {
        !(k.starts_with("volatile.idmap.")
            || k == "volatile.last_state.idmap"
            || k == "volatile.uuid"
            || k == "volatile.last_state.power")
    });
    let user = config::user_keys(&cfg);
    config::validate_config(&user, &StringMap::new(), d.host.ncpus)?;
    let mut devices = c.devices.clone();
    let profiles = if c.profiles.is_empty() {
        vec!["default".to_string()]
    } else {
        c.profiles.clone()
    };
    let db = d.db.lock().expect("db lock");
    if db.data.instances.contains_key(&name) {
        return Err(Error::Conflict(format!("Instance {name:?} already exists")));
    }
    for p in &profiles {
        if !db.data.profiles.contains_key(p) {
            return Err(Error::Invalid(format!(
                "Failed loading profiles for instance: profile {p:?} doesn't exist"
            )));
        }
    }
    let pool = match pool.filter(|p| !p.is_empty()) {
        Some(p) => {
            if !db.data.pools.contains_key(p) {
                return Err(Error::NotFound(format!("Storage pool {p:?} not found")));
            }
            p.to_string()
        }
        None if db.data.pools.contains_key(&info.pool) => info.pool.clone(),
        None => db
            .data
            .profiles
            .get("default")
            .and_then(|p| crate::instance::pools::root_pool(&p.devices))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "Storage pool {:?} not found and the default profile has no root disk",
                    info.pool
                ))
            })?,
    };
    // The root disk on the chosen pool (LXD's internalImportRootDevicePopulate): a local root
    // disk is pointed at it; one from the profiles on another pool gets a local override.
    let root = devices.iter_mut().find(|(_, dev)| {
        dev.get("type").map(String::as_str) == Some("disk")
            && dev.get("path").map(String::as_str) == Some("/")
    });
    match root {
        Some((_, dev)) => {
            dev.insert("pool".into(), pool.clone());
        }
        None => {
            let (_, expanded) = config::expand(&profiles, &db.data.profiles, &cfg, &devices);
            if crate::instance::pools::root_pool(&expanded).as_deref() != Some(pool.as_str()) {
                let dev: StringMap = [
                    ("type".to_string(), "disk".to_string()),
                    ("path".to_string(), "/".to_string()),
                    ("pool".to_string(), pool.clone()),
                ]
                .into();
                devices.insert("root".into(), dev);
            }
        }
    }
    devices::validate_devices(&devices, &db.data)?;
    if info.optimized == Some(true) {
        let driver = db.data.pools.get(&pool).map(|p| p.driver.clone());
        if driver.as_deref() != Some("btrfs") {
            return Err(Error::Invalid(format!(
                "Optimized backup storage driver {:?} differs from the target storage pool driver {:?}",
                info.backend,
                driver.unwrap_or_default()
            )));
        }
    }
    drop(db);
    Ok(Plan {
        name,
        pool,
        profiles,
        config: cfg,
        devices,
        architecture: c.architecture.clone(),
        description: c.description.clone(),
        ephemeral: c.ephemeral,
        disk_idmap,
    })
}

/// Make the instance `plan` describes from `tarball` ([`super::read_info`]'s `info`).
pub fn import(d: &Ctx, tarball: &Path, info: &Info, plan: Plan) -> Result<()> {
    let body = api::InstancesPost {
        put: api::InstancesPostPut {
            description: plan.description.clone(),
            ephemeral: plan.ephemeral,
            ..Default::default()
        },
        ..Default::default()
    };
    let snaps: Vec<&Snapshot> = {
        let all = &info.config.as_ref().expect("checked").snapshots;
        info.snapshots
            .iter()
            .map(|n| {
                all.iter().find(|s| &s.name == n).ok_or_else(|| {
                    Error::Invalid(format!("Backup has no config for snapshot {n:?}"))
                })
            })
            .collect::<Result<_>>()?
    };
    // Checked before anything is made: stored as they came, bad times broke every listing.
    let times = snaps
        .iter()
        .map(|s| {
            Ok((
                index_time("created_at", &s.created_at, time::now)?,
                index_time("expires_at", &s.expires_at, || api::GO_ZERO_TIME.into())?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let max_bytes = d.images.max_unpacked();
    let optimized = info.optimized == Some(true);
    let disk_idmap = plan.disk_idmap.clone();
    let arch = plan.architecture.clone();
    let fill = move |pool: &Arc<Pool>, tmp: &Path, volume: &str, revert: &mut Revert| {
        let mut vols = Vec::new();
        let mut records = Vec::new();
        if !snaps.is_empty() {
            // Made closed by the driver with the first snapshot volume; undone last.
            let dir = pool.snapshots_of(volume);
            revert.add(move || {
                let _ = std::fs::remove_dir(&dir);
            });
        }
        for (s, (created_at, expires_at)) in snaps.iter().zip(times) {
            let sv = crate::instance::operations::uuid();
            let dst = pool.snapshot(volume, &sv);
            let p = pool.clone();
            let undo = dst.clone();
            revert.add(move || {
                let _ = p.driver.delete_volume(&undo);
            });
            pool.driver
                .create_volume(&dst)
                .map_err(|e| Error::Host(format!("creating snapshot {:?}: {e}", s.name)))?;
            vols.push((format!("backup/snapshots/{}", s.name), dst));
            records.push(SnapshotRecord {
                name: s.name.clone(),
                architecture: if s.architecture.is_empty() {
                    arch.clone()
                } else {
                    s.architecture.clone()
                },
                config: s.config.clone(),
                devices: s.devices.clone(),
                ephemeral: s.ephemeral,
                profiles: s.profiles.clone(),
                description: s.description.clone(),
                created_at,
                expires_at,
                stateful: false,
                volume: sv,
            });
        }
        vols.push(("backup/container".to_string(), tmp.to_path_buf()));
        if optimized {
            receive_streams(pool, volume, &vols, tarball, max_bytes, revert)?;
            for (_, dir) in &vols {
                if let Ok(meta) = std::fs::read(dir.join("metadata.yaml")) {
                    let m = image::parse_metadata(&meta)?;
                    let m =
                        serde_json::to_vec_pretty(&m).map_err(|e| Error::Host(e.to_string()))?;
                    crate::util::fs::atomic_write(&dir.join("metadata.json"), &m)
                        .map_err(|e| Error::Host(format!("writing metadata.json: {e}")))?;
                }
            }
            return Ok(Received {
                snapshots: records,
                disk_idmap,
                stateful: false,
            });
        }
        let metas = image::unpack_backup(
            tarball,
            &vols,
            &image::UnpackOpts {
                skip_devices: true,
                max_bytes,
            },
        )
        .map_err(|e| match e {
            image::Error::BadRequest(m) => Error::Invalid(format!("Invalid backup tarball: {m}")),
            e => e.into(),
        })?;
        for ((_, dir), meta) in vols.iter().zip(metas) {
            let Some(meta) = meta else { continue };
            let m = image::parse_metadata(&meta)?;
            let m = serde_json::to_vec_pretty(&m).map_err(|e| Error::Host(e.to_string()))?;
            crate::util::fs::atomic_write(&dir.join("metadata.json"), &m)
                .map_err(|e| Error::Host(format!("writing metadata.json: {e}")))?;
        }
        Ok(Received {
            snapshots: records,
            disk_idmap,
            stateful: false,
        })
    };
    let args = NewInstance {
        name: &plan.name,
        body: &body,
        profiles: plan.profiles.clone(),
        config: plan.config.clone(),
        devices: plan.devices.clone(),
        architecture: plan.architecture.clone(),
        pool: plan.pool.clone(),
    };
    create_now(d, args, Origin::Received(Box::new(fill)))
}

/// An optimized (btrfs) backup's volumes: each `<prefix>.bin` stream received with `btrfs
/// receive` (confined to a directory of the pool's) and a writable snapshot of it put where
/// `vols` says, replacing the empty volume there (the instance's, made by the create). Every
/// subvolume made goes on `revert`.
pub(super) fn receive_streams(
    pool: &Arc<Pool>,
    volume: &str,
    vols: &[(String, PathBuf)],
    tarball: &Path,
    max_bytes: u64,
    revert: &mut Revert,
) -> Result<()> {
    btrfs_program()?;
    let recv = pool.container(&format!("{volume}.receive"));
    crate::util::fs::create_dir_mode(&recv, 0o700)
        .map_err(|e| Error::Host(format!("{}: {e}", recv.display())))?;
    let res = (|| -> Result<()> {
        for (prefix, dst) in vols {
            let member = format!("{prefix}.bin");
            let mut got = None;
            let mut recv_one = |r: &mut dyn io::Read| -> image::Result<()> {
                let sub = crate::storage::btrfs::receive(&recv, r).map_err(|e| {
                    let e = e.to_string();
                    let why = e.strip_prefix("btrfs receive: ").unwrap_or(&e);
                    image::Error::BadRequest(format!("btrfs receive of {member}: {why}"))
                })?;
                got = Some(sub);
                Ok(())
            };
            let found = image::with_member(tarball, &member, max_bytes, &mut recv_one)?;
            let Some(sub) = got.filter(|_| found) else {
                return Err(Error::Invalid(format!("Backup has no {member}")));
            };
            let sub = &sub;
            // The snapshot volumes were made empty by the caller; the instance's by the create.
            let _ = pool.driver.delete_volume(dst);
            let p = pool.clone();
            let undo = dst.clone();
            revert.add(move || {
                let _ = p.driver.delete_volume(&undo);
            });
            pool.driver
                .clone_volume(sub, dst, false)
                .map_err(|e| Error::Host(format!("{}: {e}", dst.display())))?;
        }
        Ok(())
    })();
    // Whatever a failed receive left in it.
    for e in std::fs::read_dir(&recv).into_iter().flatten().flatten() {
        let _ = pool.driver.delete_volume(&e.path());
    }
    let _ = std::fs::remove_dir(&recv);
    res
}
