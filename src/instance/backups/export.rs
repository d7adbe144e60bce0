//! Writing a backup: the instance's volumes (a copy of a running one's, or btrfs send streams
//! for an optimized backup) packed into LXD's tarball layout with owners unshifted to the
//! container's ids, compressed, synced and renamed into place, then recorded.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use super::index::index_yaml;
use super::records::{btrfs_program, ensure_dir, expiry, url};
use crate::api;
use crate::image;
use crate::instance::db::{BackupRecord, InstanceRecord, SnapshotRecord};
use crate::instance::interim::with_consistent;
use crate::instance::view::{record, state_of};
use crate::instance::{Ctx, Error, Result};
use crate::runtime::{self, State};
use crate::storage::Pool;
use crate::util::revert::Revert;
use crate::util::time;

/// Counts bytes written and reports `"<size> (<rate>/s)"` at most once a second.
pub(super) struct Counting<'a, W: Write> {
    inner: W,
    n: u64,
    start: std::time::Instant,
    last: std::time::Instant,
    report: &'a dyn Fn(String),
}

impl<'a, W: Write> Counting<'a, W> {
    pub(super) fn new(inner: W, report: &'a dyn Fn(String)) -> Counting<'a, W> {
        let now = std::time::Instant::now();
        Counting {
            inner,
            n: 0,
            start: now,
            last: now,
            report,
        }
    }

    pub(super) fn into_inner(self) -> W {
        self.inner
    }

    pub(super) fn show(&self) {
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

/// Make backup `bname` of instance `name` (checked by [`super::check_create`]); `report` is told the
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
    let pool = crate::instance::pools::usable_pool(d, &rec.pool)?;
    let instance_only = req.instance_only || req.container_only;
    let dir = ensure_dir(d)?;
    let uuid = crate::instance::operations::uuid();
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
    let backup_yaml = crate::util::yaml::to_string(&index["config"]).map_err(|e| err(&e))?;
    let index = crate::util::yaml::to_string(&index).map_err(|e| err(&e))?;
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
                let meta = crate::instance::images::read_metadata(&vol, &rec.architecture)?;
                let meta = crate::util::yaml::to_string(&meta).map_err(|e| err(&e))?;
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

/// `btrfs send` of the read-only subvolume `subvol` (through the file `spool`, removed after)
/// as the member `name`.
pub(super) fn add_stream<W: Write>(
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
fn disk_map(v: Option<&String>) -> Option<crate::instance::idmap::Map> {
    let m = crate::instance::idmap::Map::from_volatile(v?)?;
    (!m.uid.is_empty() || !m.gid.is_empty()).then(|| m.inverse())
}

pub(super) fn add_file<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
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
    unshift: Option<&crate::instance::idmap::Map>,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Host(format!("writing the backup: {e}"));
    // A layered volume's files as one tree (storage/layered.rs).
    let view = crate::storage::layered::view(vol, false).map_err(|e| err(&e))?;
    let vol = view.path();
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
    let meta = crate::instance::images::read_metadata(vol, architecture)?;
    let meta = crate::util::yaml::to_string(&meta).map_err(|e| err(&e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
