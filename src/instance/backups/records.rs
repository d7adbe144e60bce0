//! The backups' records (in their instance's record) and tarballs (`$BIVY_DIR/backups/<uuid>`):
//! names as LXD makes and takes them, what a create request asks checked before its operation
//! starts, expiry, rename and delete, and the tarballs no record names any more.

use std::io;
use std::path::PathBuf;

use crate::api;
use crate::image;
use crate::instance::db::{BackupRecord, InstanceRecord};
use crate::instance::view::record;
use crate::instance::{Ctx, Error, Result};
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
        .iter()
        .find(|b| b.name == backup)
        .cloned()
        .ok_or_else(|| Error::NotFound("Instance backup not found".into()))
}

/// LXD's generated name: `backup<N>`, N one more than the highest taken (0 when none).
pub fn next_name(rec: &InstanceRecord) -> String {
    next_of(rec.backups.iter().map(|b| b.name.as_str()))
}

/// `backupN`, N one past the highest of `names`.
pub(super) fn next_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let n = names
        .filter_map(|b| b.strip_prefix("backup")?.parse::<u64>().ok())
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
        let pool = crate::instance::pools::usable_pool(d, &rec.pool)?;
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
    algorithm_of(d, &req.compression_algorithm)
}

/// `asked`, else the server's `backups.compression_algorithm`, else gzip.
pub(super) fn algorithm_of(d: &Ctx, asked: &str) -> String {
    if !asked.is_empty() {
        return asked.to_string();
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
pub(super) fn expiry(v: &str) -> Result<String> {
    if v.is_empty() || v == api::GO_ZERO_TIME || v.starts_with("0001-01-01") {
        return Ok(api::GO_ZERO_TIME.into());
    }
    let secs = time::parse_secs(v)
        .ok_or_else(|| Error::Invalid(format!("Invalid expires_at {v:?}: not an RFC 3339 time")))?;
    Ok(time::format(secs, 0))
}

/// `btrfs` (btrfs-progs): `$PATH`, then `/sbin` and `/usr/sbin`.
pub(super) fn btrfs_program() -> Result<PathBuf> {
    crate::storage::btrfs::program("optimized backups on btrfs")
        .map_err(|e| Error::Host(e.to_string()))
}

/// Rename backup `old` of instance `name` to `new`.
pub fn rename(d: &Ctx, name: &str, old: &str, new: &str) -> Result<()> {
    check_name(new)?;
    let mut db = d.db.lock().expect("db lock");
    let rec = crate::instance::view::record_in(&db.data, name)?;
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
        let rec = crate::instance::view::record_in(&db.data, name)?;
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
            .filter(|(_, b)| expired(b, now))
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

/// Whether backup `b` has expired by `now`.
pub(super) fn expired(b: &BackupRecord, now: i64) -> bool {
    !b.expires_at.starts_with("0001-") && time::parse_secs(&b.expires_at).is_some_and(|t| t <= now)
}

/// At start: remove tarballs no record names (a create or a delete cut by a crash).
pub fn remove_orphans(d: &Ctx) {
    let known: std::collections::HashSet<String> = {
        let db = d.db.lock().expect("db lock");
        db.data
            .instances
            .values()
            .flat_map(|r| r.backups.iter().map(|b| b.file.clone()))
            .chain(
                db.data
                    .volumes
                    .values()
                    .flat_map(|m| m.values())
                    .flat_map(|v| v.backups.iter().map(|b| b.file.clone())),
            )
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
}
