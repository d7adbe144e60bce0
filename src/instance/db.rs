//! The daemon's persistent state: instances, profiles and server config, in one JSON document
//! (`$BIVY_DIR/database.json`) replaced atomically on every change. One document makes every
//! multi-record change (rename, profile edits) atomic without a journal.
//!
//! What a change costs with many instances: the document is changed as a copy that becomes
//! current once saved, and each instance's record is [`Shared`] between the copies, so the copy
//! shares the records it does not write and "unchanged" is a pointer comparison (for the pools'
//! record files too). Each record's JSON is kept from the last save and reused while its record
//! is the same allocation: a save serializes what changed and writes the rest as it was. What
//! grows with the instances is the write and sync of the file (0.9 KB per instance, compact).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{Devices, StringMap};
use crate::util::fs::atomic_write;
use crate::util::shared::Shared;

/// The on-disk format version; bumped with an upgrade step when the layout changes.
pub const SCHEMA: u32 = 6;

// Schema history: 1 = instances, profiles, config. 2 = storage pools, each instance's pool and
// its snapshots (a schema-1 document loads as instances on the `default` pool with no snapshots).
// 3 = custom storage volumes (`volumes`; an older document loads with none). The bump keeps an
// older bivy, which would drop them on its next save, from opening the document.
// 4 = managed networks (`networks`; an older document loads with none).
// 5 = instance backups (`instances.*.backups`; an older document loads with none).
// 6 = custom volume snapshots (`volumes[pool][name].snapshots`; an older document loads with none).

/// One instance as stored.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct InstanceRecord {
    pub architecture: String,
    pub config: StringMap,
    pub devices: Devices,
    pub ephemeral: bool,
    pub profiles: Vec<String>,
    pub description: String,
    pub created_at: String,
    pub last_used_at: String,
    pub stateful: bool,
    /// The storage volume directory name (a UUID, so renames never move data).
    pub volume: String,
    /// The storage pool holding the volume (the root disk's `pool` at creation).
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Snapshots, oldest first.
    #[serde(default)]
    pub snapshots: Vec<SnapshotRecord>,
    /// Backups (`/1.0/instances/NAME/backups`), oldest first; each one's tarball is
    /// `$BIVY_DIR/backups/<file>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupRecord>,
}

impl InstanceRecord {
    /// The snapshot named `name`.
    pub fn snapshot(&self, name: &str) -> Option<&SnapshotRecord> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// The snapshot named `name`, to change it.
    pub fn snapshot_mut(&mut self, name: &str) -> Option<&mut SnapshotRecord> {
        self.snapshots.iter_mut().find(|s| s.name == name)
    }
}

fn default_pool() -> String {
    "default".into()
}

/// One snapshot as stored: the instance's config at that moment plus its own volume.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SnapshotRecord {
    pub name: String,
    pub architecture: String,
    pub config: StringMap,
    pub devices: Devices,
    pub ephemeral: bool,
    pub profiles: Vec<String>,
    pub description: String,
    pub created_at: String,
    /// RFC 3339, or LXD's zero time for "never".
    pub expires_at: String,
    pub stateful: bool,
    /// The snapshot's volume directory name under `containers-snapshots/<instance volume>/`.
    pub volume: String,
}

/// One instance backup as stored: what LXD's `instances_backups` row holds, and the name of its
/// tarball under `$BIVY_DIR/backups/` (a UUID, so renames never move it).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct BackupRecord {
    pub name: String,
    pub created_at: String,
    /// RFC 3339, or LXD's zero time for "never".
    pub expires_at: String,
    pub instance_only: bool,
    pub optimized_storage: bool,
    pub compression_algorithm: String,
    pub file: String,
}

/// One storage pool as stored.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct PoolRecord {
    pub driver: String,
    pub config: StringMap,
    pub description: String,
}

/// One custom storage volume as stored (`volumes[pool][name]`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct VolumeRecord {
    pub config: StringMap,
    pub description: String,
    /// `filesystem` (the only content type bivy makes).
    pub content_type: String,
    pub created_at: String,
    /// The volume directory name under `custom/` on the pool (a UUID, so renames move no data).
    pub volume: String,
    /// Snapshots, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<VolumeSnapshotRecord>,
    /// Backups (`instance_only` is the backup's `volume_only`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupRecord>,
}

impl VolumeRecord {
    /// The snapshot named `name`.
    pub fn snapshot(&self, name: &str) -> Option<&VolumeSnapshotRecord> {
        self.snapshots.iter().find(|s| s.name == name)
    }
}

/// One snapshot of a custom volume as stored (`volumes[pool][name].snapshots`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct VolumeSnapshotRecord {
    pub name: String,
    pub description: String,
    /// The volume's config when the snapshot was taken.
    pub config: StringMap,
    pub created_at: String,
    /// RFC 3339, or LXD's zero time for "never".
    pub expires_at: String,
    /// The snapshot's directory name under `custom-snapshots/<volume>/` (a UUID).
    pub volume: String,
}

/// One managed network as stored (`networks[name]`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct NetworkRecord {
    /// `bridge` (the one type bivy manages).
    #[serde(rename = "type")]
    pub kind: String,
    pub config: StringMap,
    pub description: String,
}

/// One profile as stored.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ProfileRecord {
    pub config: StringMap,
    pub description: String,
    pub devices: Devices,
}

/// Profiles by name.
pub type Profiles = BTreeMap<String, ProfileRecord>;

/// The whole document.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Data {
    pub schema: u32,
    pub config: StringMap,
    /// Shared with the copies a change makes (see the module's doc).
    pub instances: BTreeMap<String, Shared<InstanceRecord>>,
    /// Shared as the instances' records are (a listing keeps API documents made from them).
    pub profiles: Shared<Profiles>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolRecord>,
    /// Custom storage volumes: pool -> volume name -> record (`instance::volumes`).
    #[serde(default)]
    pub volumes: BTreeMap<String, BTreeMap<String, VolumeRecord>>,
    /// The trust store: fingerprint -> certificate (`instance::trust`).
    #[serde(default)]
    pub certificates: BTreeMap<String, CertRecord>,
    /// Managed networks: name -> record (`instance::networks`).
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRecord>,
}

/// One trusted certificate as stored (LXD's `api.Certificate` without the fingerprint, the key).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct CertRecord {
    pub name: String,
    /// `client` or `metrics`.
    #[serde(rename = "type")]
    pub kind: String,
    pub restricted: bool,
    pub projects: Vec<String>,
    /// PEM.
    pub certificate: String,
}

/// Handle on the document; callers hold the daemon's state lock while they read-modify-save.
pub struct Db {
    path: PathBuf,
    pub data: Data,
    /// The document on disk was replaced without a sync ([`Db::update_unsynced`]) and no synced
    /// save has followed yet.
    unsynced: bool,
    /// Told of each change around its save (`instance::markers` keeps the pools' record files
    /// with it); none for a bare document.
    watcher: Option<Box<dyn Watcher>>,
    /// The size of the document last written (to size the next one's buffer).
    last_len: usize,
    /// Each instance's JSON as last written, with the record it was made from (held, so that
    /// no other record takes its address while the bytes stand for it).
    written: BTreeMap<String, (Shared<InstanceRecord>, Box<[u8]>)>,
}

/// The document but its instances, serialized first and joined to them by [`Db::document`].
#[derive(Serialize)]
struct Rest<'a> {
    schema: u32,
    config: &'a StringMap,
    profiles: &'a BTreeMap<String, ProfileRecord>,
    pools: &'a BTreeMap<String, PoolRecord>,
    volumes: &'a BTreeMap<String, BTreeMap<String, VolumeRecord>>,
    certificates: &'a BTreeMap<String, CertRecord>,
    networks: &'a BTreeMap<String, NetworkRecord>,
}

/// What follows the document's changes (set with [`Db::watch`]).
pub trait Watcher: Send {
    /// Before `next` is saved over `cur`.
    fn before_save(&self, cur: &Data, next: &Data);
    /// After `next` was saved over `prev` (called with the two swapped when the save failed,
    /// to put back what `before_save` undid).
    fn after_save(&self, prev: &Data, next: &Data);
}

impl Db {
    /// Load (or create) the database.
    pub fn open(path: &Path) -> std::io::Result<Db> {
        let trace = crate::util::trace::Steps::new("database", "");
        let data = match std::fs::read(path) {
            Ok(bytes) => {
                trace.step("read");
                let mut d: Data = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::other(format!("{}: corrupt database: {e}", path.display()))
                })?;
                trace.step("decoded");
                if d.schema > SCHEMA {
                    return Err(std::io::Error::other(format!(
                        "{}: written by a newer bivy (schema {})",
                        path.display(),
                        d.schema
                    )));
                }
                // Older documents load as they are (new fields default to empty); the next
                // save writes them as this schema.
                d.schema = SCHEMA;
                d
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data {
                schema: SCHEMA,
                ..Data::default()
            },
            Err(e) => return Err(e),
        };
        Ok(Db {
            path: path.to_path_buf(),
            data,
            unsynced: false,
            watcher: None,
            last_len: 0,
            written: BTreeMap::new(),
        })
    }

    /// Tell `w` of every change from now on.
    pub fn watch(&mut self, w: Box<dyn Watcher>) {
        self.watcher = Some(w);
    }

    /// Persist the current document atomically.
    pub fn save(&mut self) -> std::io::Result<()> {
        self.save_as(true)
    }

    /// The current document as written: compact (900 KB for 1000 instances, 1.14 MB
    /// indented), into a buffer the size of the last one, each instance's JSON reused from the
    /// last save while its record is the same.
    fn document(&mut self) -> serde_json::Result<Vec<u8>> {
        // Every field named: a field added to `Data` and not written here fails to compile.
        let Data {
            schema,
            config,
            instances,
            profiles,
            pools,
            volumes,
            certificates,
            networks,
        } = &self.data;
        let rest = serde_json::to_vec(&Rest {
            schema: *schema,
            config,
            profiles,
            pools,
            volumes,
            certificates,
            networks,
        })?;
        if self.written.len() > instances.len() {
            self.written.retain(|name, _| instances.contains_key(name));
        }
        let mut out = Vec::with_capacity(self.last_len + self.last_len / 8 + 64);
        out.extend_from_slice(b"{\"instances\":{");
        for (i, (name, rec)) in instances.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name)?;
            out.push(b':');
            match self.written.get_mut(name) {
                Some((was, json)) if Shared::same(was, rec) => out.extend_from_slice(json),
                slot => {
                    let json = serde_json::to_vec(&**rec)?.into_boxed_slice();
                    out.extend_from_slice(&json);
                    match slot {
                        Some(s) => *s = (rec.clone(), json),
                        None => {
                            self.written.insert(name.clone(), (rec.clone(), json));
                        }
                    }
                }
            }
        }
        // `rest` is an object with at least `schema`: its members follow the instances.
        out.extend_from_slice(b"},");
        out.extend_from_slice(&rest[1..]);
        out.push(b'\n');
        Ok(out)
    }

    fn save_as(&mut self, sync: bool) -> std::io::Result<()> {
        let d = self.document().map_err(std::io::Error::other)?;
        self.last_len = d.len();
        if sync {
            atomic_write(&self.path, &d)?;
            self.unsynced = false;
        } else {
            crate::util::fs::replace_unsynced(&self.path, &d)?;
            self.unsynced = true;
        }
        Ok(())
    }

    /// Make an [`Db::update_unsynced`] durable, unless a synced save has done so already.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            crate::util::fs::sync_file(&self.path)?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Apply `f` to a copy, save it, and only then make it current: a failed save changes nothing.
    pub fn update<T>(&mut self, f: impl FnOnce(&mut Data) -> T) -> std::io::Result<T> {
        self.update_as(true, f)
    }

    /// [`Db::update`] without syncing the document: for a change that the same operation
    /// follows by a synced one, or by [`Db::sync`], before it reports (a create that starts:
    /// its start's record), saving a sync.
    pub fn update_unsynced<T>(&mut self, f: impl FnOnce(&mut Data) -> T) -> std::io::Result<T> {
        self.update_as(false, f)
    }

    fn update_as<T>(&mut self, sync: bool, f: impl FnOnce(&mut Data) -> T) -> std::io::Result<T> {
        let mut next = self.data.clone();
        let out = f(&mut next);
        if let Some(w) = &self.watcher {
            w.before_save(&self.data, &next);
        }
        let old = std::mem::replace(&mut self.data, next);
        if let Err(e) = self.save_as(sync) {
            if let Some(w) = &self.watcher {
                w.after_save(&self.data, &old);
            }
            self.data = old;
            return Err(e);
        }
        if let Some(w) = &self.watcher {
            w.after_save(&old, &self.data);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_persists_and_reloads() {
        let dir = std::env::temp_dir().join(format!("bivy-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("database.json");
        let mut db = Db::open(&p).unwrap();
        db.update(|d| {
            d.profiles
                .insert("default".into(), ProfileRecord::default())
        })
        .unwrap();
        let db2 = Db::open(&p).unwrap();
        assert!(db2.data.profiles.contains_key("default"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_save_changes_nothing() {
        let mut db = Db {
            path: PathBuf::from("/nonexistent-dir/x/database.json"),
            data: Data::default(),
            unsynced: false,
            watcher: None,
            last_len: 0,
            written: BTreeMap::new(),
        };
        assert!(db
            .update(|d| d.config.insert("a".into(), "b".into()))
            .is_err());
        assert!(db.data.config.is_empty());
    }

    #[test]
    fn an_unsynced_update_is_saved_and_synced_later() {
        let dir = std::env::temp_dir().join(format!("bivy-db-unsynced-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("database.json");
        let mut db = Db::open(&p).unwrap();
        db.update_unsynced(|d| d.config.insert("a".into(), "1".into()))
            .unwrap();
        assert!(db.unsynced);
        assert_eq!(Db::open(&p).unwrap().data.config["a"], "1", "written");
        db.sync().unwrap();
        assert!(!db.unsynced);
        db.update_unsynced(|d| d.config.insert("a".into(), "2".into()))
            .unwrap();
        db.update(|d| d.config.insert("b".into(), "3".into()))
            .unwrap();
        assert!(!db.unsynced, "a synced save syncs what came before");
        assert_eq!(Db::open(&p).unwrap().data.config["a"], "2");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_save_reuses_the_records_it_left_alone_and_reads_back_whole() {
        let dir = crate::util::tempdir::TempDir::new("db-shared");
        let p = dir.path().join("database.json");
        let mut db = Db::open(&p).unwrap();
        db.update(|d| {
            for i in 0..5 {
                let r = InstanceRecord {
                    volume: format!("v{i}"),
                    ..Default::default()
                };
                d.instances.insert(format!("c{i}"), r.into());
            }
        })
        .unwrap();
        let first = db.data.instances.clone();
        db.update(|d| {
            let c1 = d.instances.get_mut("c1").unwrap();
            c1.config.insert("k".into(), "v".into());
            let c2 = d.instances.remove("c2").unwrap();
            d.instances.insert("z\"q".into(), c2);
            let c3: &mut InstanceRecord = d.instances.get_mut("c3").unwrap();
            let _ = c3;
            d.config.insert("a".into(), "b".into());
        })
        .unwrap();
        let now = &db.data.instances;
        assert!(Shared::same(&now["c0"], &first["c0"]), "not copied");
        assert!(Shared::same(&now["c4"], &first["c4"]));
        assert!(
            Shared::same(&now["z\"q"], &first["c2"]),
            "moved, not copied"
        );
        assert!(!Shared::same(&now["c1"], &first["c1"]));
        assert!(!Shared::same(&now["c3"], &first["c3"]));
        // The file is the document, whatever was reused.
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(on_disk, serde_json::to_value(&db.data).unwrap());
        assert_eq!(Db::open(&p).unwrap().data, db.data);
        db.update(|d| d.instances.remove("c0")).unwrap();
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(on_disk, serde_json::to_value(&db.data).unwrap());
        assert_eq!(
            db.written.keys().collect::<Vec<_>>(),
            db.data.instances.keys().collect::<Vec<_>>(),
            "the JSON of records gone is let go"
        );
    }

    #[test]
    fn many_instances_reload_and_a_bad_record_fails_the_open() {
        let dir = crate::util::tempdir::TempDir::new("db-many");
        let p = dir.path().join("database.json");
        let mut db = Db::open(&p).unwrap();
        db.update(|d| {
            for i in 0..100 {
                let mut r = InstanceRecord {
                    volume: format!("v{i}"),
                    ..Default::default()
                };
                r.config.insert("user.i".into(), i.to_string());
                d.instances.insert(format!("c{i:03}"), r.into());
            }
        })
        .unwrap();
        assert_eq!(Db::open(&p).unwrap().data, db.data);
        let text = std::fs::read_to_string(&p).unwrap();
        let bad = text.replacen(r#""volume":"v57""#, r#""volume":57"#, 1);
        assert_ne!(bad, text);
        std::fs::write(&p, bad).unwrap();
        let e = Db::open(&p)
            .err()
            .expect("a bad record fails the open")
            .to_string();
        assert!(
            e.contains("corrupt database") && e.contains("line 1 column"),
            "{e}"
        );
    }
}
