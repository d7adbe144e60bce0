//! The daemon's persistent state: instances, profiles and server config, in one JSON document
//! (`$BIVY_DIR/database.json`) and a log of the changes since it was written
//! (`database.log`, see [`Db`]). Each change is one line of the log, so every multi-record
//! change (rename, profile edits) is atomic without a journal of its own.
//!
//! What a change costs with many instances: the document is changed as a copy that becomes
//! current once saved, and each instance's record is [`Shared`] between the copies, so the copy
//! shares the records it does not write and "unchanged" is a pointer comparison (for the pools'
//! record files too). A change appends the records it wrote, so its cost does not grow with the
//! instances; the log is folded into the document once it has grown past an eighth of it. Each
//! record's JSON is kept from the last save and reused while its record is the same allocation,
//! so a fold serializes what changed and writes the rest as it was (0.9 KB per instance,
//! compact).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{Devices, StringMap};
use crate::util::fs::atomic_write;
use crate::util::shared::Shared;

/// The on-disk format version; bumped with an upgrade step when the layout changes.
pub const SCHEMA: u32 = 7;

// Schema history: 1 = instances, profiles, config. 2 = storage pools, each instance's pool and
// its snapshots (a schema-1 document loads as instances on the `default` pool with no snapshots).
// 3 = custom storage volumes (`volumes`; an older document loads with none). The bump keeps an
// older bivy, which would drop them on its next save, from opening the document.
// 4 = managed networks (`networks`; an older document loads with none).
// 5 = instance backups (`instances.*.backups`; an older document loads with none).
// 6 = custom volume snapshots (`volumes[pool][name].snapshots`; an older document loads with none).
// 7 = the change log (`database.log`, continuing the document that names its number in `log`):
// an older bivy would read the document without the changes logged since it was written.

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
    /// The number of the change log that continues this document (see [`Db`]): kept by `Db`
    /// alone, written with the document and not with a copy of its content.
    #[serde(default, skip_serializing)]
    pub log: u64,
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

/// Handle on the document and its change log; callers hold the daemon's state lock while they
/// read-modify-save.
///
/// A change is appended to the log (`database.log` beside the document) as one line: the
/// instances' records it wrote or removed, and the rest of the document when any of it changed.
/// The whole document is written again (atomically, synced) only when the log has grown past a
/// part of it, or when the log cannot be appended to; each such write starts a new log whose
/// first line names the document's `log` number, and a log applies only to the document that
/// names it. A crash between the two leaves the new document and the old log, which no longer
/// applies. A change is one line, so a crash during an append loses that change whole: a last
/// line cut short is dropped at the next open.
pub struct Db {
    path: PathBuf,
    pub data: Data,
    /// A change was appended without a sync ([`Db::update_unsynced`]) and no synced save has
    /// followed yet.
    unsynced: bool,
    /// Told of each change around its save (`instance::markers` keeps the pools' record files
    /// with it); none for a bare document.
    watcher: Option<Box<dyn Watcher>>,
    /// The size of the document last written or read (sizes the next one's buffer, and the log
    /// that is folded into it).
    last_len: usize,
    /// Each instance's JSON as last written, with the record it was made from (held, so that
    /// no other record takes its address while the bytes stand for it).
    written: BTreeMap<String, (Shared<InstanceRecord>, Box<[u8]>)>,
    /// The current document's log, open for appending; `None` when there is none yet (the next
    /// save writes the whole document and starts one).
    log: Option<File>,
    /// What the log holds up to its last whole change (a failed append is cut back to it).
    log_len: u64,
    /// The changes in the log.
    logged: usize,
    /// The log could not be cut back after a failed append: the next save writes the whole
    /// document.
    fold_next: bool,
    /// The highest log number seen, the document's or a log's: a new log never takes the
    /// number of a stale one (a document lost and made anew beside its old log).
    generation: u64,
}

/// The log is folded into the document when an append would take it past this plus an eighth
/// of the document: a start then reads at most that much more than the document.
const FOLD_MIN: u64 = 64 << 10;

/// The document but its instances, serialized first and joined to them by [`Db::document`];
/// also a log line's `rest`, the whole of it when any of it changed (it is small beside the
/// instances).
#[derive(Serialize, Deserialize, PartialEq)]
struct Rest<'a> {
    schema: u32,
    #[serde(default)]
    log: u64,
    config: Cow<'a, StringMap>,
    profiles: Cow<'a, Profiles>,
    pools: Cow<'a, BTreeMap<String, PoolRecord>>,
    volumes: Cow<'a, BTreeMap<String, BTreeMap<String, VolumeRecord>>>,
    certificates: Cow<'a, BTreeMap<String, CertRecord>>,
    networks: Cow<'a, BTreeMap<String, NetworkRecord>>,
}

impl<'a> Rest<'a> {
    fn of(data: &'a Data, log: u64) -> Rest<'a> {
        // Every field named: a field added to `Data` and not kept here fails to compile.
        let Data {
            schema,
            log: _,
            config,
            instances: _,
            profiles,
            pools,
            volumes,
            certificates,
            networks,
        } = data;
        Rest {
            schema: *schema,
            log,
            config: Cow::Borrowed(config),
            profiles: Cow::Borrowed(&**profiles),
            pools: Cow::Borrowed(pools),
            volumes: Cow::Borrowed(volumes),
            certificates: Cow::Borrowed(certificates),
            networks: Cow::Borrowed(networks),
        }
    }

    /// `a` and `b` differ outside their instances (and log numbers).
    fn differ(a: &Data, b: &Data) -> bool {
        Rest::of(a, 0) != Rest::of(b, 0)
    }

    fn put(self, data: &mut Data) {
        let Rest {
            schema: _,
            log: _,
            config,
            profiles,
            pools,
            volumes,
            certificates,
            networks,
        } = self;
        data.config = config.into_owned();
        data.profiles = Shared::new(profiles.into_owned());
        data.pools = pools.into_owned();
        data.volumes = volumes.into_owned();
        data.certificates = certificates.into_owned();
        data.networks = networks.into_owned();
    }
}

/// A log's first line: the `log` number of the document it continues.
#[derive(Serialize, Deserialize)]
struct Header {
    log: u64,
}

/// One line of the log after the first: one change.
#[derive(Deserialize)]
struct Change {
    /// Records written (made or changed), by instance name.
    #[serde(default)]
    set: BTreeMap<String, Shared<InstanceRecord>>,
    /// Instances removed (or renamed: the new name is in `set`).
    #[serde(default)]
    del: Vec<String>,
    /// The rest of the document, when any of it changed.
    #[serde(default)]
    rest: Option<Rest<'static>>,
}

impl Change {
    fn apply(self, data: &mut Data) {
        data.instances.extend(self.set);
        for name in &self.del {
            data.instances.remove(name);
        }
        if let Some(rest) = self.rest {
            rest.put(data);
        }
    }
}

/// What [`load`] found.
struct Stored {
    data: Data,
    /// The document's size in bytes, 0 when there is none.
    len: usize,
    /// The schema the document was written as.
    schema: u32,
    /// The document's log: its length up to the last whole change, and as found.
    log: Option<(u64, u64)>,
    /// The highest log number seen.
    generation: u64,
    /// The changes read from the log.
    logged: usize,
}

/// `e`, naming `path`.
fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The change log beside the document at `path`.
pub fn log_path(path: &Path) -> PathBuf {
    path.with_extension("log")
}

/// The state stored at `path`: the document with the changes of its log. Reads only (a daemon
/// may be running); for tools and tests.
pub fn read(path: &Path) -> std::io::Result<Data> {
    load(path, &crate::util::trace::Steps::new("database", "")).map(|s| s.data)
}

fn load(path: &Path, trace: &crate::util::trace::Steps) -> std::io::Result<Stored> {
    let corrupt = |what: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{}: corrupt database: {e}", what.display()))
    };
    let (mut data, len, schema) = match std::fs::read(path) {
        Ok(bytes) => {
            trace.step("read");
            let mut d: Data = serde_json::from_slice(&bytes).map_err(|e| corrupt(path, &e))?;
            trace.step("decoded");
            if d.schema > SCHEMA {
                return Err(std::io::Error::other(format!(
                    "{}: written by a newer bivy (schema {})",
                    path.display(),
                    d.schema
                )));
            }
            // Older documents load as they are (new fields default to empty); the next save
            // writes them as this schema.
            let schema = std::mem::replace(&mut d.schema, SCHEMA);
            (d, bytes.len(), schema)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let d = Data {
                schema: SCHEMA,
                ..Data::default()
            };
            (d, 0, SCHEMA)
        }
        Err(e) => return Err(e),
    };
    let lp = log_path(path);
    let text = match std::fs::read(&lp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(at(&lp, e)),
    };
    let mut lines = text.split_inclusive(|&b| b == b'\n').peekable();
    let first = lines.next().unwrap_or_default();
    let header = first
        .strip_suffix(b"\n")
        .and_then(|h| serde_json::from_slice::<Header>(h).ok());
    let generation = data.log.max(header.as_ref().map_or(0, |h| h.log));
    let mut log = None;
    let mut logged = 0;
    match header {
        Some(h) if h.log == data.log && len > 0 => {
            let mut valid = first.len();
            let mut count = 0;
            while let Some(line) = lines.next() {
                let last = lines.peek().is_none();
                let parsed = line
                    .strip_suffix(b"\n")
                    .map(serde_json::from_slice::<Change>);
                match parsed {
                    Some(Ok(change)) => change.apply(&mut data),
                    // Cut short or never finished: a change that was not acknowledged.
                    _ if last => {
                        eprintln!(
                            "bivy: {}: the last change was not written whole ({} bytes): dropped",
                            lp.display(),
                            line.len()
                        );
                        break;
                    }
                    Some(Err(e)) => {
                        let e = format!("change {}: {e}", count + 1);
                        return Err(corrupt(&lp, &e));
                    }
                    None => unreachable!("only the last piece lacks its newline"),
                }
                valid += line.len();
                count += 1;
            }
            trace.step(&format!("log ({count} changes)"));
            log = Some((valid as u64, text.len() as u64));
            logged = count;
        }
        _ if !text.is_empty() => eprintln!(
            "bivy: {}: not the log of {} (written before it): ignored",
            lp.display(),
            path.display()
        ),
        _ => {}
    }
    Ok(Stored {
        data,
        len,
        schema,
        log,
        generation,
        logged,
    })
}

/// The JSON of `rec` (instance `name`), from the last save while it is the same record.
fn record_json<'w>(
    written: &'w mut BTreeMap<String, (Shared<InstanceRecord>, Box<[u8]>)>,
    name: &str,
    rec: &Shared<InstanceRecord>,
) -> serde_json::Result<&'w [u8]> {
    let fresh = match written.get(name) {
        Some((was, _)) if Shared::same(was, rec) => None,
        _ => Some(serde_json::to_vec(&**rec)?.into_boxed_slice()),
    };
    if let Some(json) = fresh {
        written.insert(name.to_owned(), (rec.clone(), json));
    }
    Ok(&written[name].1)
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
    /// Load (or create) the database: the document at `path` and its log.
    pub fn open(path: &Path) -> std::io::Result<Db> {
        let trace = crate::util::trace::Steps::new("database", "");
        let stored = load(path, &trace)?;
        let mut db = Db {
            path: path.to_path_buf(),
            data: stored.data,
            unsynced: false,
            watcher: None,
            last_len: stored.len,
            written: BTreeMap::new(),
            log: None,
            log_len: 0,
            logged: stored.logged,
            fold_next: false,
            generation: stored.generation,
        };
        // A document of an older schema is written again before anything is appended: an older
        // bivy would read it without its log.
        if let Some((valid, found)) = stored.log.filter(|_| stored.schema == SCHEMA) {
            let lp = log_path(path);
            let f = OpenOptions::new()
                .append(true)
                .open(&lp)
                .map_err(|e| at(&lp, e))?;
            if valid < found {
                f.set_len(valid).map_err(|e| at(&lp, e))?;
            }
            db.log = Some(f);
            db.log_len = valid;
        }
        Ok(db)
    }

    /// Tell `w` of every change from now on.
    pub fn watch(&mut self, w: Box<dyn Watcher>) {
        self.watcher = Some(w);
    }

    /// The current document as written: compact (900 KB for 1000 instances, 1.14 MB
    /// indented), into a buffer the size of the last one, each instance's JSON reused from the
    /// last save while its record is the same.
    fn document(&mut self, log: u64) -> serde_json::Result<Vec<u8>> {
        let rest = serde_json::to_vec(&Rest::of(&self.data, log))?;
        let instances = &self.data.instances;
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
            out.extend_from_slice(record_json(&mut self.written, name, rec)?);
        }
        // `rest` is an object with at least `schema`: its members follow the instances.
        out.extend_from_slice(b"},");
        out.extend_from_slice(&rest[1..]);
        out.push(b'\n');
        Ok(out)
    }

    /// The change from `old` to the current document as a line of the log; `None` when nothing
    /// changed.
    fn change(&mut self, old: &Data) -> serde_json::Result<Option<Vec<u8>>> {
        let changes = crate::util::shared::changes(&old.instances, &self.data.instances);
        let rest_changed = Rest::differ(old, &self.data);
        if changes.is_empty() && !rest_changed {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"set\":{");
        let mut first = true;
        for (name, _, rec) in &changes {
            let Some(rec) = rec else { continue };
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name)?;
            out.push(b':');
            out.extend_from_slice(record_json(&mut self.written, name, rec)?);
        }
        out.extend_from_slice(b"},\"del\":[");
        let mut first = true;
        for (name, _, _) in changes.iter().filter(|c| c.2.is_none()) {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name)?;
            self.written.remove(*name);
        }
        out.push(b']');
        if rest_changed {
            out.extend_from_slice(b",\"rest\":");
            serde_json::to_writer(&mut out, &Rest::of(&self.data, self.data.log))?;
        }
        out.extend_from_slice(b"}\n");
        Ok(Some(out))
    }

    /// Persist the change from `old` to the current document: appended to the log, or the
    /// whole document written anew.
    fn save(&mut self, old: &Data, sync: bool) -> std::io::Result<()> {
        if self.log.is_some() && !self.fold_next {
            let Some(line) = self.change(old).map_err(std::io::Error::other)? else {
                // Nothing changed: nothing to write, only what came before to sync.
                return if sync { self.sync() } else { Ok(()) };
            };
            let room = FOLD_MIN + self.last_len as u64 / 8;
            if self.log_len + line.len() as u64 <= room {
                return self.append(&line, sync);
            }
        }
        self.fold()
    }

    fn append(&mut self, line: &[u8], sync: bool) -> std::io::Result<()> {
        let log = self.log.as_mut().expect("an open log");
        let res = log
            .write_all(line)
            .and_then(|()| if sync { log.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            // What was written of it must not come back at the next start: cut it off, or
            // write the whole document at the next change.
            if log
                .set_len(self.log_len)
                .and_then(|()| log.sync_data())
                .is_err()
            {
                self.fold_next = true;
            }
            return Err(e);
        }
        self.log_len += line.len() as u64;
        self.logged += 1;
        self.unsynced = !sync;
        Ok(())
    }

    /// Write the whole document (synced) with a new log number, then start its log.
    fn fold(&mut self) -> std::io::Result<()> {
        let generation = self.generation + 1;
        let doc = self.document(generation).map_err(std::io::Error::other)?;
        // Made before the document is written: nothing after that write may fail the change.
        let mut header =
            serde_json::to_vec(&Header { log: generation }).map_err(std::io::Error::other)?;
        header.push(b'\n');
        atomic_write(&self.path, &doc)?;
        self.generation = generation;
        self.data.log = generation;
        self.last_len = doc.len();
        self.unsynced = false;
        self.fold_next = false;
        self.log = None;
        self.logged = 0;
        // Until the new log is there the document stands alone (an old log names an older
        // number); the change is saved either way.
        let lp = log_path(&self.path);
        let started =
            atomic_write(&lp, &header).and_then(|()| OpenOptions::new().append(true).open(&lp));
        match started {
            Ok(f) => {
                self.log = Some(f);
                self.log_len = header.len() as u64;
            }
            Err(e) => eprintln!(
                "bivy: {}: {e}: the next change writes the whole database again",
                lp.display()
            ),
        }
        Ok(())
    }

    /// Write the document whole, its log folded in, when the log holds changes (a daemon's
    /// clean stop: the next start reads one document).
    pub fn compact(&mut self) -> std::io::Result<()> {
        if self.logged > 0 || self.log.is_none() || self.fold_next {
            self.fold()?;
        }
        Ok(())
    }

    /// Make an [`Db::update_unsynced`] durable, unless a synced save has done so already.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.fold_next {
            return self.fold();
        }
        if self.unsynced {
            if let Some(log) = &self.log {
                log.sync_data()?;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// Apply `f` to a copy, save it, and only then make it current: a failed save changes nothing.
    pub fn update<T>(&mut self, f: impl FnOnce(&mut Data) -> T) -> std::io::Result<T> {
        self.update_as(true, f)
    }

    /// [`Db::update`] without syncing: for a change that the same operation follows by a synced
    /// one, or by [`Db::sync`], before it reports (a create that starts: its start's record),
    /// saving a sync.
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
        if let Err(e) = self.save(&old, sync) {
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
        let mut db = Db::open(Path::new("/nonexistent-dir/x/database.json")).unwrap();
        assert!(db
            .update(|d| d.config.insert("a".into(), "b".into()))
            .is_err());
        assert!(db.data.config.is_empty());
    }

    #[test]
    fn an_unsynced_update_is_saved_and_synced_later() {
        let dir = crate::util::tempdir::TempDir::new("db-unsynced");
        let p = dir.path().join("database.json");
        let mut db = Db::open(&p).unwrap();
        db.update(|d| d.config.insert("a".into(), "0".into()))
            .unwrap();
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
        // What is stored is the document, whatever was reused: logged, then folded.
        assert_eq!(read(&p).unwrap(), db.data);
        assert_eq!(Db::open(&p).unwrap().data, db.data);
        db.update(|d| d.instances.remove("c0")).unwrap();
        assert_eq!(read(&p).unwrap(), db.data);
        db.fold().unwrap();
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let mut want = serde_json::to_value(&db.data).unwrap();
        want["log"] = db.data.log.into();
        assert_eq!(on_disk, want);
        assert_eq!(Db::open(&p).unwrap().data, db.data);
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

    fn log_lines(p: &Path) -> usize {
        std::fs::read(log_path(p))
            .unwrap()
            .split(|&b| b == b'\n')
            .count()
            - 1
    }

    fn ino(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    /// A database of three instances, its document written and its log started.
    fn three(p: &Path) -> Db {
        let mut db = Db::open(p).unwrap();
        db.update(|d| {
            for i in 0..3 {
                d.instances
                    .insert(format!("c{i}"), InstanceRecord::default().into());
            }
        })
        .unwrap();
        assert_eq!(log_lines(p), 1, "a new log holds its number alone");
        db
    }

    #[test]
    fn a_change_is_one_line_of_the_log_until_the_log_is_folded_in() {
        let dir = crate::util::tempdir::TempDir::new("db-log");
        let p = dir.path().join("database.json");
        let mut db = three(&p);
        let (doc, first) = (ino(&p), db.data.log);
        assert!(first > 0);
        db.update(|d| {
            let c1 = d.instances.remove("c1").unwrap();
            d.instances.insert("renamed".into(), c1);
            d.instances.get_mut("c2").unwrap().description = "two\nlines".into();
        })
        .unwrap();
        assert_eq!(ino(&p), doc, "the document is left as it was");
        assert_eq!(log_lines(&p), 2, "one change, one line");
        let text = std::fs::read_to_string(log_path(&p)).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.contains(r#""del":["c1"]"#), "{line}");
        assert!(
            !line.contains(r#""c0""#),
            "records left alone are not logged: {line}"
        );
        assert!(!line.contains("rest"), "{line}");
        assert_eq!(read(&p).unwrap(), db.data);
        db.update(|d| d.instances.get_mut("c0").map(|_| ()))
            .unwrap();
        assert_eq!(
            log_lines(&p),
            2,
            "a change that changes nothing is not written"
        );
        db.update(|d| d.config.insert("k".into(), "v".into()))
            .unwrap();
        assert!(std::fs::read_to_string(log_path(&p))
            .unwrap()
            .lines()
            .nth(2)
            .unwrap()
            .contains(r#""rest":{"#));
        assert_eq!(read(&p).unwrap(), db.data);
        // Until an append would take the log past its room: then the whole document again.
        let mut i = 0;
        while ino(&p) == doc {
            db.update(|d| d.instances.get_mut("c0").unwrap().description = "x".repeat(4000 + i))
                .unwrap();
            assert_eq!(read(&p).unwrap(), db.data);
            i += 1;
        }
        assert!(i > 10, "folded after {i} changes");
        let folded = ino(&p);
        db.compact().unwrap();
        assert_eq!(ino(&p), folded, "nothing logged: nothing to fold");
        assert_eq!(log_lines(&p), 1);
        assert!(db.data.log > first);
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(on_disk["log"], db.data.log);
        assert_eq!(Db::open(&p).unwrap().data, db.data);
        // A change logged, then compacted: the document alone holds it.
        db.update(|d| d.config.insert("z".into(), "1".into()))
            .unwrap();
        let mut again = Db::open(&p).unwrap();
        assert_eq!(again.logged, 1, "counted when read");
        again.compact().unwrap();
        assert_ne!(ino(&p), folded);
        assert_eq!(log_lines(&p), 1);
        assert_eq!(again.data.config, db.data.config);
        assert_eq!(Db::open(&p).unwrap().data, again.data);
    }

    #[test]
    fn a_change_cut_short_is_dropped_and_a_bad_line_before_the_last_fails_the_open() {
        let dir = crate::util::tempdir::TempDir::new("db-torn");
        let p = dir.path().join("database.json");
        let mut db = three(&p);
        db.update(|d| d.config.insert("a".into(), "1".into()))
            .unwrap();
        let whole = std::fs::read(log_path(&p)).unwrap();
        let append = |bytes: &[u8]| {
            let mut f = OpenOptions::new().append(true).open(log_path(&p)).unwrap();
            f.write_all(bytes).unwrap();
        };
        for torn in [&br#"{"set":{"c0":{"archi"#[..], b"{\"set\":{}\n"] {
            append(torn);
            let mut again = Db::open(&p).unwrap();
            assert_eq!(again.data, db.data, "{}", String::from_utf8_lossy(torn));
            assert_eq!(std::fs::read(log_path(&p)).unwrap(), whole, "cut off");
            again
                .update(|d| d.config.insert("b".into(), "2".into()))
                .unwrap();
            assert_eq!(Db::open(&p).unwrap().data.config["b"], "2");
            std::fs::write(log_path(&p), &whole).unwrap();
        }
        let good = std::fs::read_to_string(log_path(&p)).unwrap();
        let line = good.lines().nth(1).unwrap().to_owned();
        append(format!("{{\"set\":7}}\n{line}\n").as_bytes());
        let e = Db::open(&p)
            .err()
            .expect("a bad line in the middle")
            .to_string();
        assert!(
            e.contains("corrupt database") && e.contains("change 2"),
            "{e}"
        );
    }

    #[test]
    fn a_log_applies_only_to_the_document_that_names_it() {
        let dir = crate::util::tempdir::TempDir::new("db-stale");
        let p = dir.path().join("database.json");
        let mut db = three(&p);
        db.update(|d| d.instances.remove("c0")).unwrap();
        let old_log = std::fs::read(log_path(&p)).unwrap();
        // A crash after the whole document was written and before its log was started.
        db.fold().unwrap();
        db.update(|d| {
            d.instances
                .insert("c0".into(), InstanceRecord::default().into());
        })
        .unwrap();
        db.fold().unwrap();
        std::fs::write(log_path(&p), &old_log).unwrap();
        let mut again = Db::open(&p).unwrap();
        assert_eq!(again.data, db.data, "the old log's removal is not replayed");
        // Its next change starts a log of its own.
        again
            .update(|d| d.config.insert("x".into(), "1".into()))
            .unwrap();
        assert!(again.data.log > db.data.log);
        assert_eq!(Db::open(&p).unwrap().data, again.data);
        // The document lost: its log is not taken for it, and the new one's log number is
        // above the old log's.
        let stale = again.data.log;
        again
            .update(|d| d.config.insert("y".into(), "2".into()))
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        let mut fresh = Db::open(&p).unwrap();
        assert!(fresh.data.instances.is_empty() && fresh.data.config.is_empty());
        fresh
            .update(|d| d.config.insert("z".into(), "3".into()))
            .unwrap();
        assert!(fresh.data.log > stale);
        assert_eq!(Db::open(&p).unwrap().data.config.len(), 1);
    }

    #[test]
    fn a_failed_append_changes_nothing_and_the_next_change_writes_the_document() {
        let dir = crate::util::tempdir::TempDir::new("db-full");
        let p = dir.path().join("database.json");
        let mut db = three(&p);
        let before = db.data.clone();
        // Nothing can be written and nothing cut off: as a disk that has failed.
        db.log = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        assert!(db.update(|d| d.instances.clear()).is_err());
        assert_eq!(db.data, before);
        assert!(db.fold_next);
        db.update(|d| d.config.insert("a".into(), "1".into()))
            .unwrap();
        assert!(!db.fold_next);
        assert_eq!(log_lines(&p), 1, "written whole, a new log started");
        assert_eq!(Db::open(&p).unwrap().data, db.data);
    }

    #[test]
    fn an_older_schema_is_written_again_before_any_change_is_logged() {
        let dir = crate::util::tempdir::TempDir::new("db-schema");
        let p = dir.path().join("database.json");
        std::fs::write(
            &p,
            br#"{"schema":6,"config":{"a":"1"},"instances":{},"profiles":{}}"#,
        )
        .unwrap();
        let mut db = Db::open(&p).unwrap();
        assert_eq!(db.data.config["a"], "1");
        db.update(|d| d.config.insert("b".into(), "2".into()))
            .unwrap();
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(on_disk["schema"], SCHEMA);
        assert_eq!(on_disk["config"]["b"], "2");
        assert_eq!(log_lines(&p), 1);
    }
}
