//! Disaster recovery (`bivy admin recover`, LXD's `lxd recover`): bring back the instances and
//! custom volumes that are on the pools but not in the state database (it was lost, corrupted or
//! replaced by an older copy), from the record files each pool keeps beside its data
//! (`markers`). Pools the database lacks are named by the caller (LXD's
//! `/internal/recover/validate` body) or found on the daemon's own disk ([`discover`]).
//!
//! `validate` scans and reports; it changes nothing (a pool it had to mount is unmounted again).
//! `import` scans again, refuses while anything is missing or clashes (a profile or network the
//! instances use, a name taken), then records the pools, instances and volumes in one database
//! change and takes up the instances, running ones included: a container that kept running under
//! its monitor while the database was gone is watched again with its init PID unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::db::{Data, InstanceRecord, PoolRecord, VolumeRecord};
use super::markers::{self, InstanceMarker, PoolMarker, VolumeMarker};
use super::{Ctx, Error, Result};
use crate::api::{RecoverPool, RecoverPost, RecoverValidateResult, RecoverVolume};
use crate::storage::{self, Pool};

/// One pool to scan: a recorded one, or one the caller named (opened here).
struct Scanned {
    pool: Arc<Pool>,
    /// The record to save for a pool the database lacks; `None` for a recorded pool.
    new: Option<PoolRecord>,
    /// Whether this scan mounted it (and must unmount it unless it is imported).
    mounted_here: bool,
}

/// What a scan found.
#[derive(Default)]
struct Found {
    result: RecoverValidateResult,
    instances: Vec<(String, InstanceRecord)>,
    volumes: Vec<(String, String, VolumeRecord)>,
}

/// Pools on the daemon's own disk (`storage-pools/NAME` with its record file, `disks/NAME.img`)
/// that no record names.
pub fn discover(d: &Ctx) -> Vec<RecoverPool> {
    let recorded = d.db.lock().expect("db lock").data.pools.clone();
    let mut out: BTreeMap<String, RecoverPool> = BTreeMap::new();
    for e in std::fs::read_dir(d.dir.join("storage-pools"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if recorded.contains_key(&n) {
            continue;
        }
        if let Ok(Some(m)) = markers::read::<PoolMarker>(&markers::pool_file(&e.path())) {
            out.insert(
                n.clone(),
                RecoverPool {
                    name: n,
                    driver: m.record.driver,
                    config: m.record.config,
                    description: m.record.description,
                },
            );
        }
    }
    for e in std::fs::read_dir(d.dir.join("disks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = n.strip_suffix(".img") else {
            continue;
        };
        if recorded.contains_key(stem) || out.contains_key(stem) {
            continue;
        }
        let mut config = crate::api::StringMap::new();
        config.insert("source".into(), e.path().display().to_string());
        out.insert(
            stem.to_string(),
            RecoverPool {
                name: stem.to_string(),
                driver: "btrfs".into(),
                config,
                description: String::new(),
            },
        );
    }
    out.into_values().collect()
}

/// Open (and mount) a pool the database lacks, checking that it is a bivy pool of that name.
fn open_new(d: &Ctx, data: &Data, spec: &RecoverPool) -> Result<Scanned> {
    storage::validate_pool_name(&spec.name).map_err(Error::Invalid)?;
    if data.pools.contains_key(&spec.name) {
        return Err(Error::Conflict(format!(
            "Storage pool {:?} already exists",
            spec.name
        )));
    }
    let pool = Pool::new(&spec.name, &spec.driver, &spec.config, &d.dir)
        .map_err(|e| Error::Invalid(format!("Storage pool {:?}: {e}", spec.name)))?;
    let root = pool.driver.path();
    let mounted_before = storage::mounted_at(&root).is_ok_and(|m| m.is_some());
    if spec.driver == "dir" && !root.is_dir() {
        return Err(Error::NotFound(format!(
            "Storage pool {:?}: {} does not exist",
            spec.name,
            root.display()
        )));
    }
    pool.driver
        .mount()
        .map_err(|e| Error::Host(format!("mounting storage pool {:?}: {e}", spec.name)))?;
    let mounted_here = !mounted_before && storage::mounted_at(&root).is_ok_and(|m| m.is_some());
    let fail = |e: Error| {
        if mounted_here {
            let _ = pool.driver.unmount();
        }
        Err(e)
    };
    let marker = match markers::read::<PoolMarker>(&markers::pool_file(&root)) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return fail(Error::NotFound(format!(
                "Storage pool {:?}: {} holds no bivy storage pool (no {})",
                spec.name,
                root.display(),
                markers::pool_file(&root).display()
            )))
        }
        Err(e) => return fail(Error::Host(e)),
    };
    if marker.name != spec.name || marker.record.driver != spec.driver {
        return fail(Error::Invalid(format!(
            "Storage pool {:?}: {} is the {} pool {:?}; recover it under that name and driver",
            spec.name,
            root.display(),
            marker.record.driver,
            marker.name
        )));
    }
    Ok(Scanned {
        pool: Arc::new(pool),
        new: Some(marker.record),
        mounted_here,
    })
}

/// The recorded pools (usable ones) and the caller's new ones, opened.
fn open_pools(
    d: &Ctx,
    recorded: Vec<Arc<Pool>>,
    data: &Data,
    req: &RecoverPost,
) -> Result<Vec<Scanned>> {
    let unavailable = d.pools.unavailable.lock().expect("pools lock").clone();
    let mut out: Vec<Scanned> = recorded
        .into_iter()
        .filter(|p| !unavailable.contains_key(&p.name))
        .map(|pool| Scanned {
            pool,
            new: None,
            mounted_here: false,
        })
        .collect();
    let mut names = BTreeSet::new();
    for spec in &req.pools {
        if !names.insert(spec.name.clone()) {
            close(&out);
            return Err(Error::Invalid(format!(
                "Storage pool {:?} is named twice",
                spec.name
            )));
        }
        match open_new(d, data, spec) {
            Ok(s) => out.push(s),
            Err(e) => {
                close(&out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Unmount what the scan mounted.
fn close(pools: &[Scanned]) {
    for s in pools.iter().filter(|s| s.mounted_here) {
        if let Err(e) = s.pool.driver.unmount() {
            eprintln!("bivy: unmounting storage pool {}: {e}", s.pool.name);
        }
    }
}

/// The instances and custom volumes on `pools` that `data` has no record of, and what keeps
/// them from being imported.
fn scan(data: &Data, pools: &[Scanned], ncpus: usize) -> Found {
    let mut found = Found::default();
    // Devices are checked against the pools as they will be: the new ones included.
    let mut with_new = data.clone();
    for s in pools {
        if let Some(rec) = &s.new {
            with_new.pools.insert(s.pool.name.clone(), rec.clone());
        }
    }
    let data = &with_new;
    let known_vols: BTreeSet<(&str, &str)> = crate::util::sort::set(
        data.instances
            .values()
            .map(|r| (r.pool.as_str(), r.volume.as_str())),
    );
    let mut missing = BTreeSet::new();
    let mut names: BTreeSet<String> = crate::util::sort::set(data.instances.keys().cloned());
    for s in pools {
        let p = &s.pool;
        let root = p.driver.path();
        for (vol, m) in markers::read_all::<InstanceMarker>(&root, "instances") {
            if known_vols.contains(&(p.name.as_str(), vol.as_str())) || !p.container(&vol).is_dir()
            {
                continue;
            }
            let mut rec = m.record;
            rec.pool = p.name.clone();
            rec.volume = vol.clone();
            rec.backups.clear();
            // A pool from elsewhere is input like any other: what names a path must be a plain
            // name, and the config must pass the checks a PUT gets.
            let checked = plain(&vol)
                .and_then(|()| super::config::validate_instance_name(&m.name))
                .and_then(|()| {
                    rec.snapshots.iter().try_for_each(|sn| {
                        plain(&sn.volume)?;
                        super::schedule::validate_snapshot_name(&sn.name).map_err(Error::Invalid)
                    })
                })
                .and_then(|()| super::config::validate_config(&rec.config, &rec.config, ncpus))
                .and_then(|()| super::devices::validate_devices(&rec.devices, data));
            if let Err(e) = checked {
                found.result.dependency_errors.push(format!(
                    "Instance {:?} on storage pool {:?} cannot be recovered: {e}",
                    m.name, p.name
                ));
                continue;
            }
            rec.snapshots
                .retain(|sn| p.snapshot(&vol, &sn.volume).is_dir());
            if !names.insert(m.name.clone()) {
                found.result.dependency_errors.push(format!(
                    "Instance {:?} in project \"default\" already exists (the one on storage pool {:?} cannot take its name)",
                    m.name, p.name
                ));
            }
            for prof in &rec.profiles {
                if !data.profiles.contains_key(prof) {
                    missing.insert(format!("Profile {prof:?} in project \"default\""));
                }
            }
            for dev in rec.devices.values() {
                if let Some(net) = dev
                    .get("network")
                    .filter(|_| dev.get("type").map(String::as_str) == Some("nic"))
                {
                    if !data.networks.contains_key(net) {
                        missing.insert(format!("Network {net:?} in project \"default\""));
                    }
                }
            }
            found.result.unknown_volumes.push(unknown(
                &m.name,
                "container",
                rec.snapshots.len(),
                &p.name,
            ));
            found.instances.push((m.name, rec));
        }
        let recorded = data.volumes.get(&p.name);
        let mut vol_names: BTreeSet<String> = recorded
            .map(|v| crate::util::sort::set(v.keys().cloned()))
            .unwrap_or_default();
        for (vol, m) in markers::read_all::<VolumeMarker>(&root, "volumes") {
            if recorded.is_some_and(|v| v.values().any(|r| r.volume == vol))
                || !p.custom(&vol).is_dir()
            {
                continue;
            }
            let mut rec = m.record;
            rec.volume = vol.clone();
            let checked = plain(&vol)
                .and_then(|()| super::volumes::validate_name(&m.name))
                .and_then(|()| rec.snapshots.iter().try_for_each(|sn| plain(&sn.volume)));
            if let Err(e) = checked {
                found.result.dependency_errors.push(format!(
                    "Storage volume {:?} on storage pool {:?} cannot be recovered: {e}",
                    m.name, p.name
                ));
                continue;
            }
            rec.snapshots
                .retain(|sn| p.custom_snapshot(&vol, &sn.volume).is_dir());
            if !vol_names.insert(m.name.clone()) {
                found.result.dependency_errors.push(format!(
                    "Storage volume {:?} on storage pool {:?} already exists",
                    m.name, p.name
                ));
            }
            found.result.unknown_volumes.push(unknown(
                &m.name,
                "custom",
                rec.snapshots.len(),
                &p.name,
            ));
            found.volumes.push((p.name.clone(), m.name, rec));
        }
    }
    found.result.dependency_errors.extend(missing);
    found
}

/// One volume found, as validate lists it.
fn unknown(name: &str, kind: &str, snapshots: usize, pool: &str) -> RecoverVolume {
    RecoverVolume {
        name: name.to_string(),
        kind: kind.to_string(),
        snapshot_count: snapshots,
        pool: pool.to_string(),
        project: "default".into(),
    }
}

/// A volume directory's name as bivy makes them (a UUID): nothing that could leave its parent.
fn plain(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{name:?} is not a volume name")))
    }
}

/// `POST /internal/recover/validate`: what would be recovered, and what is missing first.
pub fn validate(d: &Ctx, req: &RecoverPost) -> Result<RecoverValidateResult> {
    let data = d.db.lock().expect("db lock").data.clone();
    let pools = open_pools(d, super::pools::all(d), &data, req)?;
    let mut found = scan(&data, &pools, d.host.ncpus);
    close(&pools);
    let asked: BTreeSet<&str> = crate::util::sort::set(req.pools.iter().map(|p| p.name.as_str()));
    found.result.unknown_pools = discover(d)
        .into_iter()
        .filter(|p| !asked.contains(p.name.as_str()))
        .collect();
    Ok(found.result)
}

/// `POST /internal/recover/import`: record the pools, instances and custom volumes found (one
/// database change), then take up the instances. The names of the instances recovered.
pub fn import(d: &Ctx, req: &RecoverPost) -> Result<Vec<String>> {
    // The pools map first, then the database, as pool creates take them.
    let mut open = d.pools.pools.lock().expect("pools lock");
    let data = d.db.lock().expect("db lock").data.clone();
    let pools = open_pools(d, open.values().cloned().collect(), &data, req)?;
    let found = scan(&data, &pools, d.host.ncpus);
    if !found.result.dependency_errors.is_empty() {
        close(&pools);
        return Err(Error::Conflict(format!(
            "Cannot recover until these are fixed: {}",
            found.result.dependency_errors.join("; ")
        )));
    }
    for s in pools.iter().filter(|s| s.new.is_some()) {
        if let Err(e) = s.pool.make_layout(true) {
            close(&pools);
            return Err(Error::Host(format!(
                "storage pool {:?}: making its layout: {e}",
                s.pool.name
            )));
        }
    }
    let saved = d.db.lock().expect("db lock").update(|data| {
        for s in &pools {
            if let Some(rec) = &s.new {
                data.pools.insert(s.pool.name.clone(), rec.clone());
            }
        }
        for (name, rec) in &found.instances {
            data.instances.insert(name.clone(), rec.clone().into());
        }
        for (pool, name, rec) in &found.volumes {
            data.volumes
                .entry(pool.clone())
                .or_default()
                .insert(name.clone(), rec.clone());
        }
    });
    if let Err(e) = saved {
        close(&pools);
        return Err(Error::Host(format!("saving the recovered records: {e}")));
    }
    for s in pools.iter().filter(|s| s.new.is_some()) {
        d.pools
            .unavailable
            .lock()
            .expect("pools lock")
            .remove(&s.pool.name);
        open.insert(s.pool.name.clone(), s.pool.clone());
    }
    drop(open);
    let names: Vec<String> = found.instances.into_iter().map(|(n, _)| n).collect();
    let me = d.me.get().and_then(std::sync::Weak::upgrade);
    for n in &names {
        eprintln!("bivy: recovered instance {n}");
        if let Some(me) = &me {
            super::lifecycle::adopt(me, n.clone());
        }
    }
    for (pool, name, _) in &found.volumes {
        eprintln!("bivy: recovered custom volume {name} on storage pool {pool}");
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_stay_in_their_parent() {
        for ok in ["0b9c1a2e-7f3d-4c8e-9a1b-2c3d4e5f6a7b", "v_1"] {
            assert!(plain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(plain(bad).is_err(), "{bad:?}");
        }
    }
}
