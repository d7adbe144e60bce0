//! Instance backups (`/1.0/instances/NAME/backups`) and creating an instance from one, in LXD
//! 5.0.2's tarball format so a backup moves between bivy and LXD both ways.
//!
//! The tarball (`lxd/backup.go`, `lxd/storage/drivers/generic_vfs.go` genericVFSBackupVolume):
//! `backup/index.yaml` first (name, backend, pool, snapshots, `optimized`, `type`, and `config`,
//! backup.yaml's content), then `backup/snapshots/<name>/` for each snapshot (oldest first,
//! unless instance-only), then `backup/container/` (`backup.yaml`, `metadata.yaml`, `rootfs/`,
//! `templates/`). Members keep numeric owners, modes, times, xattrs (PAX `SCHILY.xattr.*`), hard
//! links, symlinks and fifos; compression is the request's `compression_algorithm` (gzip by
//! default, or the server's `backups.compression_algorithm`). Owners are the container's own ids: files shifted on disk are unshifted as they are
//! written (file capabilities and ACLs too) and the config says `volatile.last_state.idmap: []`.
//! LXD 5.0.2 writes on-disk ids (its tar writer's unshift looks for names starting with
//! `rootfs`, which backup members never do) with the map they are in as the config's
//! `volatile.last_state.idmap`: an import reads that map and unshifts with it, so both kinds
//! restore into any map.
//!
//! A backup's tarball is `$BIVY_DIR/backups/<uuid>` (written beside as `<uuid>.tmp`, synced,
//! renamed, then recorded in the instance's record); deleted with its record, with the instance,
//! when it expires (`expires_at`, checked by the daemon's minute task), and at start when no
//! record names it (a crash between the rename and the record).
//!
//! Optimized backups (btrfs pools only, as LXD's other drivers make plain ones): each volume a
//! full `btrfs send` stream (`backup/snapshots/<name>.bin`, `backup/container.bin`) with its
//! files as on disk and the config's map saying which ids those are; restored with
//! `btrfs receive -C` into a directory of the pool.
//!
//! An import unpacks with the image unpacker's rules (no path outside the volume, no symlink
//! followed, hard links only to files already unpacked, the unpack size limit) into new volumes
//! made through `create::create_now`, whose undo list removes everything on any failure.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::create::{create_now, NewInstance, Origin, Received};
use super::db::{BackupRecord, InstanceRecord, SnapshotRecord};
use super::lifecycle::with_consistent;
use super::view::{record, state_of};
use super::{config, Ctx, Error, Result};
use crate::api::{self, Devices, StringMap};
use crate::image;
use crate::runtime::{self, State};
use crate::storage::Pool;
use crate::util::revert::Revert;
use crate::util::time;

/// `$BIVY_DIR/backups`: the tarballs.
pub fn dir(d: &Ctx) -> PathBuf {
    d.dir.join("backups")
}

/// [`dir`], made (root's alone) if it is not there.
pub fn ensure_dir(d: &Ctx) -> Result<PathBuf> {
    let dir = dir(d);
    crate::util::fs::create_dir_mode(&dir, 0o700)
        .map_err(|e| Error::Host(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// A backup's tarball.
pub fn file(d: &Ctx, b: &BackupRecord) -> PathBuf {
    dir(d).join(&b.file)
}

pub fn to_api(b: &BackupRecord) -> api::InstanceBackup {
    api::InstanceBackup {
        name: b.name.clone(),
        created_at: b.created_at.clone(),
        expires_at: b.expires_at.clone(),
        instance_only: b.instance_only,
        container_only: b.instance_only,
        optimized_storage: b.optimized_storage,
    }
}

pub fn url(instance: &str, backup: &str) -> String {
    format!("/1.0/instances/{instance}/backups/{backup}")
}

/// The backup `backup` of instance `name`.
pub fn find(d: &Ctx, name: &str, backup: &str) -> Result<BackupRecord> {
    record(d, name)?
        .backups
        .into_iter()
        .find(|b| b.name == backup)
        .ok_or_else(|| Error::NotFound("Instance backup not found".into()))
}

/// LXD's generated name: `backup<N>`, N one more than the highest taken (0 when none).
pub fn next_name(rec: &InstanceRecord) -> String {
    let n = rec
        .backups
        .iter()
        .filter_map(|b| b.name.strip_prefix("backup")?.parse::<u64>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0);
    format!("backup{n}")
}

/// A backup name as LXD takes it.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid("Backup name cannot be empty".into()));
    }
    if name.contains('/') {
        return Err(Error::Invalid(
            "Backup names may not contain slashes".into(),
        ));
    }
    Ok(())
}

/// What a create request asks, checked before its operation starts: the backup's name and
/// compression.
pub fn check_create(
    d: &Ctx,
    name: &str,
    req: &api::InstanceBackupsPost,
) -> Result<(String, image::Compression)> {
    let rec = record(d, name)?;
    let bname = if req.name.is_empty() {
        next_name(&rec)
    } else {
        req.name.clone()
    };
    check_name(&bname)?;
    if rec.backups.iter().any(|b| b.name == bname) {
        return Err(Error::Conflict(format!("Backup {bname:?} already exists")));
    }
    let compression = image::Compression::from_name(&algorithm(d, req))?;
    if req.optimized_storage {
        let pool = super::pools::usable_pool(d, &rec.pool)?;
        // As LXD: a pool without an optimized format (dir) makes a plain backup.
        if pool.driver.name() == "btrfs" {
            btrfs_program()?;
        }
    }
    if !req.expires_at.is_empty() {
        expiry(&req.expires_at)?;
    }
    Ok((bname, compression))
}

/// The compression a request asks for, else the server's `backups.compression_algorithm`,
/// else gzip (LXD's default).
fn algorithm(d: &Ctx, req: &api::InstanceBackupsPost) -> String {
    if !req.compression_algorithm.is_empty() {
        return req.compression_algorithm.clone();
    }
    d.db.lock()
        .expect("db lock")
        .data
        .config
        .get("backups.compression_algorithm")
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| "gzip".into())
}

/// `expires_at` as stored: RFC 3339 in UTC, or LXD's zero time for never.
fn expiry(v: &str) -> Result<String> {
    if v.is_empty() || v == api::GO_ZERO_TIME || v.starts_with("0001-01-01") {
        return Ok(api::GO_ZERO_TIME.into());
    }
    let secs = time::parse_secs(v)
        .ok_or_else(|| Error::Invalid(format!("Invalid expires_at {v:?}: not an RFC 3339 time")))?;
    Ok(time::format(secs, 0))
}

/// Counts bytes written and reports `"<size> (<rate>/s)"` at most once a second.
struct Counting<'a, W: Write> {
    inner: W,
    n: u64,
    start: std::time::Instant,
    last: std::time::Instant,
    report: &'a dyn Fn(String),
}

impl<W: Write> Counting<'_, W> {
    fn show(&self) {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let h = crate::util::human_bytes;
        (self.report)(format!(
            "{} ({}/s)",
            h(self.n as f64),
            h(self.n as f64 / secs)
        ));
    }
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        if self.last.elapsed() >= std::time::Duration::from_secs(1) {
            self.last = std::time::Instant::now();
            self.show();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Make backup `bname` of instance `name` (checked by [`check_create`]); `report` is told the
/// progress (LXD's `create_backup_progress`).
pub fn create_backup(
    d: &Ctx,
    name: &str,
    bname: &str,
    req: &api::InstanceBackupsPost,
    compression: image::Compression,
    report: &dyn Fn(String),
) -> Result<()> {
    let rec = record(d, name)?;
    let pool = super::pools::usable_pool(d, &rec.pool)?;
    let instance_only = req.instance_only || req.container_only;
    let dir = ensure_dir(d)?;
    let uuid = super::operations::uuid();
    let final_path = dir.join(&uuid);
    let tmp = dir.join(format!("{uuid}.tmp"));
    let mut revert = Revert::new();
    {
        let (a, b) = (tmp.clone(), final_path.clone());
        revert.add(move || {
            let _ = std::fs::remove_file(a);
            let _ = std::fs::remove_file(b);
        });
    }
    // A running instance is copied first (an atomic snapshot on btrfs, a copy with it frozen
    // on dir) and the copy packed, as LXD packs a stopped one's volume.
    let running = matches!(state_of(d, name)?, State::Running { .. });
    let optimized = req.optimized_storage && pool.driver.name() == "btrfs";
    // An optimized backup sends a snapshot of the volume with backup.yaml and metadata.yaml
    // added, as LXD's volumes hold them.
    let main = if running || optimized {
        let copy = pool.container(&format!("{}.backup-{uuid}", rec.volume));
        let p = pool.clone();
        let undo = copy.clone();
        revert.add(move || {
            let _ = p.driver.delete_volume(&undo);
        });
        let src = pool.container(&rec.volume);
        with_consistent(d, name, &pool, || {
            pool.driver
                .clone_volume(&src, &copy, false)
                .map_err(|e| Error::Host(format!("copying the running instance's volume: {e}")))
        })?;
        Some(copy)
    } else {
        None
    };
    let target = Target {
        d,
        name,
        rec: &rec,
        pool: &pool,
        main: main.as_deref(),
        instance_only,
        optimized,
    };
    let res = write_tarball(&target, compression, &tmp, report);
    if let Some(copy) = &main {
        let _ = pool.driver.delete_volume(copy);
    }
    res?;
    std::fs::rename(&tmp, &final_path)
        .map_err(|e| Error::Host(format!("{}: {e}", final_path.display())))?;
    let _ = crate::util::fs::sync_dir(&dir);
    let b = BackupRecord {
        name: bname.to_string(),
        created_at: time::now(),
        expires_at: expiry(&req.expires_at)?,
        instance_only,
        optimized_storage: optimized,
        compression_algorithm: compression.name().into(),
        file: uuid,
    };
    {
        let mut db = d.db.lock().expect("db lock");
        let Some(r) = db.data.instances.get(name) else {
            return Err(Error::NotFound(format!("Instance {name:?} not found")));
        };
        if r.backups.iter().any(|x| x.name == bname) {
            return Err(Error::Conflict(format!("Backup {bname:?} already exists")));
        }
        db.update(|data| {
            if let Some(r) = data.instances.get_mut(name) {
                r.backups.push(b);
            }
        })
        .map_err(|e| Error::Host(format!("saving the backup record: {e}")))?;
    }
    revert.commit();
    d.events.lifecycle(
        "instance-backup-created",
        &url(name, bname),
        serde_json::json!({}),
    );
    Ok(())
}

/// What a backup packs.
struct Target<'a> {
    d: &'a Ctx,
    name: &'a str,
    rec: &'a InstanceRecord,
    pool: &'a Arc<Pool>,
    /// The copy to pack instead of the instance's volume (a running instance's, an optimized
    /// backup's).
    main: Option<&'a Path>,
    instance_only: bool,
    /// btrfs send streams instead of files.
    optimized: bool,
}

/// The tarball itself, into `out` (synced).
fn write_tarball(
    t: &Target<'_>,
    compression: image::Compression,
    out: &Path,
    report: &dyn Fn(String),
) -> Result<()> {
    let Target {
        d,
        name,
        rec,
        pool,
        main,
        instance_only,
        optimized,
    } = *t;
    let err = |e: &dyn std::fmt::Display| Error::Host(format!("writing the backup: {e}"));
    let index = index_yaml(d, name, rec, pool, instance_only, optimized)?;
    let backup_yaml = serde_norway::to_string(&index["config"]).map_err(|e| err(&e))?;
    let index = serde_norway::to_string(&index).map_err(|e| err(&e))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(out)
        .map_err(|e| Error::Host(format!("{}: {e}", out.display())))?;
    let now = std::time::Instant::now();
    let mut w = Counting {
        inner: io::BufWriter::new(f),
        n: 0,
        start: now,
        last: now,
        report,
    };
    {
        let mut enc = image::Encoder::new(compression, &mut w).map_err(|e| err(&e))?;
        {
            let mut b = tar::Builder::new(&mut enc);
            b.mode(tar::HeaderMode::Complete);
            add_file(&mut b, "backup/index.yaml", index.as_bytes()).map_err(|e| err(&e))?;
            let snaps: &[SnapshotRecord] = if instance_only { &[] } else { &rec.snapshots };
            let vol = main
                .map(Path::to_path_buf)
                .unwrap_or_else(|| pool.container(&rec.volume));
            if optimized {
                let meta = super::images::read_metadata(&vol, &rec.architecture)?;
                let meta = serde_norway::to_string(&meta).map_err(|e| err(&e))?;
                std::fs::write(vol.join("backup.yaml"), &backup_yaml).map_err(|e| err(&e))?;
                std::fs::write(vol.join("metadata.yaml"), meta).map_err(|e| err(&e))?;
                pool.driver.set_readonly(&vol).map_err(|e| err(&e))?;
                let spool = out.with_extension("send");
                for s in snaps {
                    let sv = pool.snapshot(&rec.volume, &s.volume);
                    add_stream(
                        &mut b,
                        &sv,
                        &format!("backup/snapshots/{}.bin", s.name),
                        &spool,
                    )?;
                }
                add_stream(&mut b, &vol, "backup/container.bin", &spool)?;
            } else {
                for s in snaps {
                    let sv = pool.snapshot(&rec.volume, &s.volume);
                    let map = disk_map(s.config.get("volatile.last_state.idmap"));
                    add_volume(
                        &mut b,
                        &sv,
                        &format!("backup/snapshots/{}", s.name),
                        None,
                        &rec.architecture,
                        map.as_ref(),
                    )?;
                }
                let map = disk_map(rec.config.get("volatile.last_state.idmap"));
                add_volume(
                    &mut b,
                    &vol,
                    "backup/container",
                    Some(&backup_yaml),
                    &rec.architecture,
                    map.as_ref(),
                )?;
            }
            b.finish().map_err(|e| err(&e))?;
        }
        enc.finish().map_err(|e| err(&e))?;
    }
    w.flush().map_err(|e| err(&e))?;
    w.show();
    let f = w.inner.into_inner().map_err(|e| err(&e.error()))?;
    f.sync_all().map_err(|e| err(&e))
}

/// `btrfs` (btrfs-progs): `$PATH`, then `/sbin` and `/usr/sbin`.
fn btrfs_program() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/sbin", "/usr/sbin"].map(PathBuf::from));
    dirs.iter()
        .filter(|d| d.is_absolute())
        .map(|d| d.join("btrfs"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Host(
                "optimized backups on btrfs need the btrfs program (btrfs-progs): not found".into(),
            )
        })
}

/// `btrfs send` of the read-only subvolume `subvol` (through the file `spool`, removed after)
/// as the member `name`.
fn add_stream<W: Write>(
    b: &mut tar::Builder<W>,
    subvol: &Path,
    name: &str,
    spool: &Path,
) -> Result<()> {
    let err =
        |e: &dyn std::fmt::Display| Error::Host(format!("btrfs send of {}: {e}", subvol.display()));
    let _ = std::fs::remove_file(spool);
    let out = std::process::Command::new(btrfs_program()?)
        .args(["send", "-q", "-f"])
        .arg(spool)
        .arg(subvol)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(&e))?;
    let res = (|| {
        if !out.status.success() {
            return Err(err(&String::from_utf8_lossy(&out.stderr).trim()));
        }
        let f = std::fs::File::open(spool).map_err(|e| err(&e))?;
        let len = f.metadata().map_err(|e| err(&e))?.len();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(len);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(time::now_secs().max(0) as u64);
        b.append_data(&mut h, name, f).map_err(|e| err(&e))
    })();
    let _ = std::fs::remove_file(spool);
    res
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// The inverse of a volume's on-disk map (`volatile.last_state.idmap`), to bring its files back
/// to container ids; `None` when its files are container ids already.
fn disk_map(v: Option<&String>) -> Option<super::idmap::Map> {
    let m = super::idmap::Map::from_volatile(v?)?;
    (!m.uid.is_empty() || !m.gid.is_empty()).then(|| m.inverse())
}

fn add_file<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(time::now_secs().max(0) as u64);
    b.append_data(&mut h, name, data)
}

/// One volume under `prefix`: its directory, `backup.yaml` (the instance's only),
/// `metadata.yaml`, `rootfs/` and `templates/`, owners unshifted with `unshift`.
fn add_volume<W: Write>(
    b: &mut tar::Builder<W>,
    vol: &Path,
    prefix: &str,
    backup_yaml: Option<&str>,
    architecture: &str,
    unshift: Option<&super::idmap::Map>,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Host(format!("writing the backup: {e}"));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o711);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_mtime(time::now_secs().max(0) as u64);
    b.append_data(&mut h, format!("{prefix}/"), io::empty())
        .map_err(|e| err(&e))?;
    if let Some(y) = backup_yaml {
        add_file(b, &format!("{prefix}/backup.yaml"), y.as_bytes()).map_err(|e| err(&e))?;
    }
    let meta = super::images::read_metadata(vol, architecture)?;
    let meta = serde_norway::to_string(&meta).map_err(|e| err(&e))?;
    add_file(b, &format!("{prefix}/metadata.yaml"), meta.as_bytes()).map_err(|e| err(&e))?;
    let adjust = |h: &mut tar::Header, x: &mut Vec<(String, Vec<u8>)>| -> bool {
        let Some(m) = unshift else { return true };
        let (Ok(u), Ok(g)) = (h.uid(), h.gid()) else {
            return false;
        };
        let (Some(u), Some(g)) = (
            runtime::to_host(&m.uid, u as u32),
            runtime::to_host(&m.gid, g as u32),
        ) else {
            // Outside the container's map: not the container's, left out (as LXD).
            return false;
        };
        h.set_uid(u.into());
        h.set_gid(g.into());
        x.retain_mut(|(k, v)| {
            let shifted = match k.as_str() {
                "security.capability" => runtime::shift_fscaps(v, &m.uid),
                "system.posix_acl_access" | "system.posix_acl_default" => {
                    runtime::shift_acl(v, &m.uid, &m.gid)
                }
                _ => return true,
            };
            match shifted {
                Some(s) => {
                    *v = s;
                    true
                }
                None => false,
            }
        });
        true
    };
    let mut links = image::Links::new();
    image::add_tree(
        b,
        &vol.join("rootfs"),
        &format!("{prefix}/rootfs"),
        &mut links,
        &adjust,
    )
    .map_err(Error::from)?;
    let templates = vol.join("templates");
    if templates.is_dir() {
        image::add_tree(
            b,
            &templates,
            &format!("{prefix}/templates"),
            &mut links,
            &|_: &mut tar::Header, _: &mut Vec<(String, Vec<u8>)>| true,
        )
        .map_err(Error::from)?;
    }
    Ok(())
}

/// index.yaml as LXD writes it (`backup.Info`), its `config` being backup.yaml's content.
fn index_yaml(
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

/// Rename backup `old` of instance `name` to `new`.
pub fn rename(d: &Ctx, name: &str, old: &str, new: &str) -> Result<()> {
    check_name(new)?;
    let mut db = d.db.lock().expect("db lock");
    let rec = super::view::record_in(&db.data, name)?;
    if !rec.backups.iter().any(|b| b.name == old) {
        return Err(Error::NotFound("Instance backup not found".into()));
    }
    if rec.backups.iter().any(|b| b.name == new) {
        return Err(Error::Conflict(format!("Backup {new:?} already exists")));
    }
    db.update(|data| {
        if let Some(b) = data
            .instances
            .get_mut(name)
            .and_then(|r| r.backups.iter_mut().find(|b| b.name == old))
        {
            b.name = new.to_string();
        }
    })
    .map_err(|e| Error::Host(format!("saving the backup record: {e}")))?;
    drop(db);
    d.events.lifecycle(
        "instance-backup-renamed",
        &url(name, new),
        serde_json::json!({"old_name": old}),
    );
    Ok(())
}

/// Delete backup `backup` of instance `name`: the record first (the commit point), then its
/// tarball (one left by a crash in between goes at the next start).
pub fn delete(d: &Ctx, name: &str, backup: &str) -> Result<()> {
    let b = {
        let mut db = d.db.lock().expect("db lock");
        let rec = super::view::record_in(&db.data, name)?;
        let b = rec
            .backups
            .iter()
            .find(|b| b.name == backup)
            .cloned()
            .ok_or_else(|| Error::NotFound("Instance backup not found".into()))?;
        db.update(|data| {
            if let Some(r) = data.instances.get_mut(name) {
                r.backups.retain(|x| x.name != backup);
            }
        })
        .map_err(|e| Error::Host(format!("saving the backup record: {e}")))?;
        b
    };
    if let Err(e) = std::fs::remove_file(file(d, &b)) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("bivy: removing backup {name}/{backup}: {e}");
        }
    }
    d.events.lifecycle(
        "instance-backup-deleted",
        &url(name, backup),
        serde_json::json!({}),
    );
    Ok(())
}

/// Remove the tarballs of a deleted instance's backups (its record is gone already).
pub fn delete_files(d: &Ctx, rec: &InstanceRecord) {
    for b in &rec.backups {
        let _ = std::fs::remove_file(file(d, b));
    }
}

/// Delete the backups whose `expires_at` is past `now` (unix seconds).
pub fn prune_expired(d: &Ctx, now: i64) {
    let due: Vec<(String, String)> = {
        let db = d.db.lock().expect("db lock");
        db.data
            .instances
            .iter()
            .flat_map(|(n, r)| r.backups.iter().map(move |b| (n, b)))
            .filter(|(_, b)| {
                !b.expires_at.starts_with("0001-")
                    && time::parse_secs(&b.expires_at).is_some_and(|t| t <= now)
            })
            .map(|(n, b)| (n.clone(), b.name.clone()))
            .collect()
    };
    for (n, b) in due {
        match delete(d, &n, &b) {
            Ok(()) => eprintln!("bivy: deleted expired backup {n}/{b}"),
            Err(e) => eprintln!("bivy: deleting expired backup {n}/{b}: {e}"),
        }
    }
}

/// At start: remove tarballs no record names (a create or a delete cut by a crash).
pub fn remove_orphans(d: &Ctx) {
    let known: std::collections::HashSet<String> = {
        let db = d.db.lock().expect("db lock");
        db.data
            .instances
            .values()
            .flat_map(|r| r.backups.iter().map(|b| b.file.clone()))
            .collect()
    };
    let Ok(rd) = std::fs::read_dir(dir(d)) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !known.contains(&n) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Import: a new instance from a backup tarball.

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

/// Read and check a backup tarball's index (and backup.yaml when the index has no config).
pub fn read_info(tarball: &Path) -> Result<Info> {
    let bad = |m: String| Error::Invalid(m);
    let raw = image::read_member(tarball, "backup/index.yaml", 16 << 20)?
        .ok_or_else(|| bad("Backup is missing index.yaml".into()))?;
    let mut info: Info = serde_norway::from_slice(&raw)
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
        // LXD's list of the subvolumes sent: only each volume's own is restored here.
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
        let h: Header = serde_norway::from_slice(&raw)
            .map_err(|e| bad(format!("Backup optimized_header.yaml is invalid: {e}")))?;
        if let Some(s) = h.subvolumes.iter().find(|s| s.path != "/") {
            return Err(Error::Invalid(format!(
                "not supported yet: optimized btrfs backups with subvolumes inside a volume ({:?})",
                s.path
            )));
        }
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
            serde_norway::from_slice(&raw)
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
    let user: StringMap = cfg
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
            .and_then(|p| super::pools::root_pool(&p.devices))
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
            if super::pools::root_pool(&expanded).as_deref() != Some(pool.as_str()) {
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
    config::validate_devices(&devices, &db.data)?;
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

/// Make the instance `plan` describes from `tarball` ([`read_info`]'s `info`).
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
    let max_bytes = d.images.max_unpacked();
    let optimized = info.optimized == Some(true);
    let disk_idmap = plan.disk_idmap.clone();
    let arch = plan.architecture.clone();
    let fill = move |pool: &Arc<Pool>, tmp: &Path, volume: &str, revert: &mut Revert| {
        let mut vols = Vec::new();
        let mut records = Vec::new();
        for s in &snaps {
            let sv = super::operations::uuid();
            let dst = pool.snapshot(volume, &sv);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::Host(format!("{}: {e}", parent.display())))?;
            }
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
                created_at: if s.created_at.is_empty() {
                    time::now()
                } else {
                    s.created_at.clone()
                },
                expires_at: if s.expires_at.is_empty() {
                    api::GO_ZERO_TIME.into()
                } else {
                    s.expires_at.clone()
                },
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
fn receive_streams(
    pool: &Arc<Pool>,
    volume: &str,
    vols: &[(String, PathBuf)],
    tarball: &Path,
    max_bytes: u64,
    revert: &mut Revert,
) -> Result<()> {
    let btrfs = btrfs_program()?;
    let recv = pool.container(&format!("{volume}.receive"));
    crate::util::fs::create_dir_mode(&recv, 0o700)
        .map_err(|e| Error::Host(format!("{}: {e}", recv.display())))?;
    let mut seen: Vec<PathBuf> = Vec::new();
    let res = (|| -> Result<()> {
        for (prefix, dst) in vols {
            let member = format!("{prefix}.bin");
            let mut got = None;
            let mut recv_one = |r: &mut dyn io::Read| -> image::Result<()> {
                let mut child = std::process::Command::new(&btrfs)
                    .args(["receive", "-q", "-e", "-C"])
                    .arg(&recv)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| image::Error::Internal(format!("btrfs receive: {e}")))?;
                let mut stdin = child.stdin.take().expect("piped stdin");
                let copied = io::copy(r, &mut stdin);
                drop(stdin);
                let out = child
                    .wait_with_output()
                    .map_err(|e| image::Error::Internal(format!("btrfs receive: {e}")))?;
                if !out.status.success() {
                    return Err(image::Error::BadRequest(format!(
                        "btrfs receive of {member}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                copied.map_err(|e| image::Error::Internal(format!("btrfs receive: {e}")))?;
                got = Some(());
                Ok(())
            };
            if !image::with_member(tarball, &member, max_bytes, &mut recv_one)? || got.is_none() {
                return Err(Error::Invalid(format!("Backup has no {member}")));
            }
            // What the stream made: the one new entry in the receive directory (the ones before
            // stay until the end: a later stream may name one as its parent).
            let made: Vec<PathBuf> = std::fs::read_dir(&recv)
                .map_err(|e| Error::Host(format!("{}: {e}", recv.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| !seen.contains(p))
                .collect();
            let [sub] = &made[..] else {
                return Err(Error::Invalid(format!(
                    "btrfs receive of {member} made {} subvolumes, not one",
                    made.len()
                )));
            };
            seen.push(sub.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_follow_the_highest() {
        let mut rec = InstanceRecord::default();
        assert_eq!(next_name(&rec), "backup0");
        for n in ["backup0", "backup4", "mine"] {
            rec.backups.push(BackupRecord {
                name: n.into(),
                ..Default::default()
            });
        }
        assert_eq!(next_name(&rec), "backup5");
    }

    #[test]
    fn names_with_slashes_are_refused() {
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("b0").is_ok());
    }

    #[test]
    fn expiry_is_normalised() {
        assert_eq!(expiry("").unwrap(), api::GO_ZERO_TIME);
        assert_eq!(expiry("0001-01-01T00:00:00Z").unwrap(), api::GO_ZERO_TIME);
        assert!(expiry("tomorrow").is_err());
    }

    /// Files shifted on disk go into the tarball with the container's ids: the volume's map
    /// sends container 1000/1001 to this process's own uid/gid, which own the files.
    #[test]
    fn shifted_files_are_written_with_container_ids() {
        let tmp = std::env::temp_dir().join(format!("bivy-backup-unit-{}", std::process::id()));
        let vol = tmp.join("vol");
        std::fs::create_dir_all(vol.join("rootfs/root")).unwrap();
        std::fs::write(vol.join("rootfs/root/f"), b"x").unwrap();
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let disk = format!(
            r#"[{{"Isuid":true,"Isgid":false,"Hostid":{uid},"Nsid":1000,"Maprange":1}},{{"Isuid":false,"Isgid":true,"Hostid":{gid},"Nsid":1001,"Maprange":1}}]"#
        );
        let map = disk_map(Some(&disk)).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        add_volume(
            &mut b,
            &vol,
            "backup/container",
            Some("x: 1\n"),
            "x86_64",
            Some(&map),
        )
        .unwrap();
        let data = b.into_inner().unwrap();
        let _ = std::fs::remove_dir_all(&tmp);
        let mut ar = tar::Archive::new(&data[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().display().to_string(),
                h.uid().unwrap(),
                h.gid().unwrap(),
            ));
        }
        assert!(
            seen.contains(&("backup/container/rootfs/root/f".into(), 1000, 1001)),
            "{seen:?}"
        );
        for m in [
            "backup/container/backup.yaml",
            "backup/container/metadata.yaml",
        ] {
            assert!(seen.iter().any(|(p, _, _)| p == m), "{m}: {seen:?}");
        }
        // Nothing of another owner than the mapped one was in the volume: every member of the
        // rootfs came out in container ids.
        assert!(seen
            .iter()
            .filter(|(p, _, _)| p.starts_with("backup/container/rootfs"))
            .all(|(_, u, g)| (*u, *g) == (1000, 1001)));
    }

    #[test]
    fn lxd_index_yaml_parses() {
        let y = "name: c1\nbackend: dir\npool: default\nsnapshots:\n- snap0\noptimized: false\n\
                 optimized_header: false\ntype: container\nconfig:\n  container:\n    \
                 architecture: x86_64\n    config:\n      volatile.last_state.idmap: '[]'\n    \
                 devices: {}\n    ephemeral: false\n    profiles:\n    - default\n    \
                 created_at: 2026-12-03T19:00:00.123456789Z\n    name: c1\n  snapshots:\n  \
                 - name: snap0\n    created_at: 2026-12-03T19:00:01Z\n    expires_at: \
                 0001-01-01T00:00:00Z\n    config: {}\n";
        let info: Info = serde_norway::from_str(y).unwrap();
        assert_eq!(info.snapshots, vec!["snap0"]);
        let c = info.config.unwrap();
        assert_eq!(c.container.unwrap().profiles, vec!["default"]);
        assert_eq!(c.snapshots[0].created_at, "2026-12-03T19:00:01Z");
    }
}
