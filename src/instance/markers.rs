//! Records kept beside the data they describe, so a lost state database can be rebuilt from
//! the pools (`bivy admin recover`, see `recover`) and the start-up cleanup can tell a volume
//! whose record was lost (kept) from one a killed create left behind (removed).
//!
//! Each pool's root holds `bivy-records/`: `pool.json` (the pool's record and name),
//! `instances/<volume>.json` (the record and name of the instance whose volume that is, its
//! snapshots included) and `volumes/<volume>.json` (the same for a custom volume). They follow
//! the database: [`Keeper`], the database's watcher, removes the files of records it drops
//! before it saves, and writes those of records it adds or changes after, so a crash between the
//! two leaves a record without its file (rewritten at the next start by [`ensure_all`]), never a
//! file for data already given up. They are not synced: the database is the truth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::db::{Data, InstanceRecord, PoolRecord, VolumeRecord};
use crate::storage::Pool;

/// The directory of records in a pool's root.
pub const DIR: &str = "bivy-records";

/// `bivy-records/pool.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PoolMarker {
    pub name: String,
    pub record: PoolRecord,
}

/// `bivy-records/instances/<volume>.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InstanceMarker {
    pub name: String,
    pub record: InstanceRecord,
}

/// `bivy-records/volumes/<volume>.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VolumeMarker {
    pub name: String,
    pub record: VolumeRecord,
}

/// A pool's record file under its root.
pub fn pool_file(root: &Path) -> PathBuf {
    root.join(DIR).join("pool.json")
}

/// `bivy-records/volume-modes`: the note that the modes of a pool's volumes were mended (see
/// `pools::mend_volume_modes`).
pub fn modes_file(root: &Path) -> PathBuf {
    root.join(DIR).join("volume-modes")
}

/// The directories of instance and of custom volume records in [`DIR`].
const INSTANCES: &str = "instances";
const VOLUMES: &str = "volumes";

/// The record file of the instance volume `volume` under a pool's root.
pub fn instance_file(root: &Path, volume: &str) -> PathBuf {
    root.join(DIR)
        .join(INSTANCES)
        .join(format!("{volume}.json"))
}

/// The record file of the custom volume `volume` under a pool's root.
pub fn volume_file(root: &Path, volume: &str) -> PathBuf {
    root.join(DIR).join(VOLUMES).join(format!("{volume}.json"))
}

/// Read and parse one record file; `None` when absent, an error naming it when unreadable.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The records of one kind (`instances` or `volumes`) under a pool's root: volume -> parsed
/// file; unreadable ones are logged and left out.
pub fn read_all<T: for<'de> Deserialize<'de>>(root: &Path, kind: &str) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root.join(DIR).join(kind))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(vol) = n.strip_suffix(".json") else {
            continue;
        };
        match read::<T>(&e.path()) {
            Ok(Some(m)) => {
                out.insert(vol.to_string(), m);
            }
            Ok(None) => {}
            Err(e) => eprintln!("bivy: skipping an unreadable record: {e}"),
        }
    }
    out
}

fn write(path: &Path, value: &impl Serialize) {
    let res = (|| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = path.parent().expect("record files have a parent");
        // Records hold instances' config (environment variables, keys): root's alone, as the
        // database is.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut b = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        b.push(b'\n');
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(&b)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        eprintln!("bivy: writing {}: {e}", path.display());
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("bivy: removing {}: {e}", path.display()),
    }
}

/// The roots of `data`'s pools that are there to write in (mounted, with their layout): a pool
/// that is not mounted gets its files at the next start instead of its empty mount point.
fn roots(bivy_dir: &Path, data: &Data) -> BTreeMap<String, PathBuf> {
    crate::util::sort::map(data.pools.iter().filter_map(|(name, rec)| {
        let root = Pool::new(name, &rec.driver, &rec.config, bivy_dir)
            .ok()?
            .driver
            .path();
        root.join("containers")
            .is_dir()
            .then_some((name.clone(), root))
    }))
}

type Key<'a> = (&'a str, &'a str);

fn key(r: &InstanceRecord) -> Key<'_> {
    (r.pool.as_str(), r.volume.as_str())
}

/// The instances that differ between `a` and `b`: by name, each one's record in `a` and in `b`
/// (none where it is absent). Records are [`Shared`](crate::util::shared::Shared) between the
/// two, so the unchanged ones are passed over by a pointer comparison.
type Changed<'a> = Vec<(
    &'a String,
    Option<&'a InstanceRecord>,
    Option<&'a InstanceRecord>,
)>;

fn changed_instances<'a>(a: &'a Data, b: &'a Data) -> Changed<'a> {
    crate::util::shared::changes(&a.instances, &b.instances)
        .into_iter()
        .filter(|(_, ra, rb)| ra.is_none() || ra != rb)
        .map(|(n, ra, rb)| (n, ra.map(|r| &**r), rb.map(|r| &**r)))
        .collect()
}

fn volumes(d: &Data) -> BTreeMap<Key<'_>, (&String, &VolumeRecord)> {
    crate::util::sort::map(d.volumes.iter().flat_map(|(pool, vols)| {
        vols.iter()
            .map(move |(n, r)| ((pool.as_str(), r.volume.as_str()), (n, r)))
    }))
}

/// The database's [`Watcher`](super::db::Watcher) that keeps the files (the daemon's directory,
/// which places the pools that have no `source`).
pub struct Keeper(pub PathBuf);

impl super::db::Watcher for Keeper {
    fn before_save(&self, cur: &Data, next: &Data) {
        before_save(&self.0, cur, next);
    }

    fn after_save(&self, prev: &Data, next: &Data) {
        after_save(&self.0, prev, next);
    }
}

/// Before `next` is saved over `cur`: remove the files of the records `next` drops.
pub fn before_save(bivy_dir: &Path, cur: &Data, next: &Data) {
    let changed = changed_instances(cur, next);
    if changed.is_empty() && cur.volumes == next.volumes && cur.pools == next.pools {
        return;
    }
    let roots = roots(bivy_dir, cur);
    // A volume whose record changed only (or moved to another name) keeps its file: the
    // records that take a volume over are among the changed ones too.
    let kept: HashSet<Key> = changed.iter().filter_map(|c| c.2.map(key)).collect();
    for rec in changed.iter().filter_map(|c| c.1) {
        let k @ (pool, vol) = key(rec);
        if !kept.contains(&k) {
            if let Some(root) = roots.get(pool) {
                remove(&instance_file(root, vol));
            }
        }
    }
    let nv = volumes(next);
    for ((pool, vol), _) in volumes(cur) {
        if !nv.contains_key(&(pool, vol)) {
            if let Some(root) = roots.get(pool) {
                remove(&volume_file(root, vol));
            }
        }
    }
    for name in cur.pools.keys() {
        if !next.pools.contains_key(name) {
            if let Some(root) = roots.get(name) {
                remove(&pool_file(root));
            }
        }
    }
}

/// After `next` was saved over `prev`: write the files of the records it adds or changes.
/// (With the two swapped, it puts back what [`before_save`] removed when the save failed.)
pub fn after_save(bivy_dir: &Path, prev: &Data, next: &Data) {
    let changed = changed_instances(prev, next);
    if changed.is_empty() && prev.volumes == next.volumes && prev.pools == next.pools {
        return;
    }
    let roots = roots(bivy_dir, next);
    for (name, _, rec) in changed {
        if let Some(rec) = rec {
            if let Some(root) = roots.get(&rec.pool) {
                write(&instance_file(root, &rec.volume), &marker_of(name, rec));
            }
        }
    }
    let pv = volumes(prev);
    for (key @ (pool, vol), (name, rec)) in volumes(next) {
        if pv.get(&key) != Some(&(name, rec)) {
            if let Some(root) = roots.get(pool) {
                write(&volume_file(root, vol), &volume_marker(name, rec));
            }
        }
    }
    for (name, rec) in &next.pools {
        if prev.pools.get(name) != Some(rec) {
            if let Some(root) = roots.get(name) {
                write(&pool_file(root), &pool_marker(name, rec));
            }
        }
    }
}

// Backups live in the daemon's directory, not on the pool: a rebuilt database has none.
fn marker_of(name: &str, rec: &InstanceRecord) -> InstanceMarker {
    let mut record = rec.clone();
    record.backups.clear();
    InstanceMarker {
        name: name.to_string(),
        record,
    }
}

fn volume_marker(name: &str, rec: &VolumeRecord) -> VolumeMarker {
    VolumeMarker {
        name: name.to_string(),
        record: rec.clone(),
    }
}

fn pool_marker(name: &str, rec: &PoolRecord) -> PoolMarker {
    PoolMarker {
        name: name.to_string(),
        record: rec.clone(),
    }
}

/// Remove a pool's record files (the pool's storage is about to be deleted: the layout must be
/// all that is left). Its volumes are gone already; their files went with their records.
pub fn remove_pool_files(root: &Path) {
    remove(&pool_file(root));
    remove(&modes_file(root));
    for d in [INSTANCES, VOLUMES] {
        let _ = std::fs::remove_dir(root.join(DIR).join(d));
    }
    let _ = std::fs::remove_dir(root.join(DIR));
}

/// Write the files that records lack (an older bivy made the pool, or a crash came between a
/// save and its files). Run at start, after the pools are mounted.
pub fn ensure_all(bivy_dir: &Path, data: &Data) {
    let roots = roots(bivy_dir, data);
    for (name, rec) in &data.pools {
        if let Some(root) = roots.get(name) {
            if !pool_file(root).exists() {
                write(&pool_file(root), &pool_marker(name, rec));
            }
        }
    }
    // Each pool's record directories are read once (not a lookup per record), and a record's
    // file is looked for by name: its path is made only when it has to be written.
    let mut present = HashMap::new();
    for (name, rec) in &data.instances {
        if let Some((pool, root)) = roots.get_key_value(&rec.pool) {
            if missing(&mut present, (pool, INSTANCES), root, &rec.volume) {
                write(&instance_file(root, &rec.volume), &marker_of(name, rec));
            }
        }
    }
    for ((pool, vol), (name, rec)) in volumes(data) {
        if let Some((pool, root)) = roots.get_key_value(pool) {
            if missing(&mut present, (pool, VOLUMES), root, vol) {
                write(&volume_file(root, vol), &volume_marker(name, rec));
            }
        }
    }
}

/// Whether the record file of `volume` is missing from the `(pool, kind)` directory under
/// `root`: its names are read once into `present`.
fn missing<'a>(
    present: &mut HashMap<(&'a str, &'static str), HashSet<OsString>>,
    at: (&'a str, &'static str),
    root: &Path,
    volume: &str,
) -> bool {
    let names = present
        .entry(at)
        .or_insert_with(|| crate::util::fs::names_in(&root.join(DIR).join(at.1)));
    !names.contains(std::ffi::OsStr::new(&format!("{volume}.json")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StringMap;

    fn data(root: &Path) -> Data {
        let mut d = Data::default();
        let mut config = StringMap::new();
        config.insert("source".into(), root.display().to_string());
        d.pools.insert(
            "p".into(),
            PoolRecord {
                driver: "dir".into(),
                config,
                description: String::new(),
            },
        );
        d
    }

    #[test]
    fn files_follow_the_records() {
        let tmp = crate::util::tempdir::TempDir::new("markers");
        let root = tmp.path().join("pool");
        std::fs::create_dir_all(root.join("containers")).unwrap();
        let bivy = tmp.path().join("bivy");
        let empty = Data::default();
        let mut one = data(&root);
        let rec = InstanceRecord {
            pool: "p".into(),
            volume: "v1".into(),
            ..Default::default()
        };
        one.instances.insert("c1".into(), rec.clone().into());
        before_save(&bivy, &empty, &one);
        after_save(&bivy, &empty, &one);
        let m: InstanceMarker = read(&instance_file(&root, "v1")).unwrap().unwrap();
        assert_eq!((m.name.as_str(), &m.record), ("c1", &rec));
        let p: PoolMarker = read(&pool_file(&root)).unwrap().unwrap();
        assert_eq!(p.name, "p");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join(DIR)), 0o700);
        assert_eq!(mode(&instance_file(&root, "v1")), 0o600);

        // A rename rewrites the file under the same volume.
        let mut renamed = one.clone();
        let r = renamed.instances.remove("c1").unwrap();
        renamed.instances.insert("c2".into(), r);
        before_save(&bivy, &one, &renamed);
        assert!(instance_file(&root, "v1").exists(), "kept through the save");
        after_save(&bivy, &one, &renamed);
        let m: InstanceMarker = read(&instance_file(&root, "v1")).unwrap().unwrap();
        assert_eq!(m.name, "c2");

        // A change rewrites it; a record left alone is not written again.
        let mut two = renamed.clone();
        let other = InstanceRecord {
            pool: "p".into(),
            volume: "v9".into(),
            ..Default::default()
        };
        two.instances.insert("c9".into(), other.into());
        after_save(&bivy, &renamed, &two);
        std::fs::remove_file(instance_file(&root, "v9")).unwrap();
        let mut changed = two.clone();
        changed.instances.get_mut("c2").unwrap().description = "x".into();
        before_save(&bivy, &two, &changed);
        assert!(instance_file(&root, "v1").exists());
        after_save(&bivy, &two, &changed);
        let m: InstanceMarker = read(&instance_file(&root, "v1")).unwrap().unwrap();
        assert_eq!(m.record.description, "x");
        assert!(!instance_file(&root, "v9").exists(), "c9 was left alone");

        // A delete removes it before the save; a failed save puts it back.
        let mut gone = renamed.clone();
        gone.instances.clear();
        before_save(&bivy, &renamed, &gone);
        assert!(!instance_file(&root, "v1").exists());
        after_save(&bivy, &gone, &renamed);
        assert!(instance_file(&root, "v1").exists());

        // ensure_all writes what is missing.
        std::fs::remove_file(instance_file(&root, "v1")).unwrap();
        ensure_all(&bivy, &renamed);
        assert!(instance_file(&root, "v1").exists());
        assert_eq!(read_all::<InstanceMarker>(&root, "instances").len(), 1);
    }

    #[test]
    fn an_unmounted_pool_gets_no_files() {
        let tmp = crate::util::tempdir::TempDir::new("markers-unmounted");
        let root = tmp.path().join("pool");
        std::fs::create_dir_all(&root).unwrap();
        let mut one = data(&root);
        one.instances.insert(
            "c1".into(),
            InstanceRecord {
                pool: "p".into(),
                volume: "v1".into(),
                ..Default::default()
            }
            .into(),
        );
        after_save(tmp.path(), &Data::default(), &one);
        assert!(!root.join(DIR).exists());
    }
}
