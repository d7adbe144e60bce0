//! A custom storage volume's data: copying a volume directory (within a pool or across pools)
//! and giving one its size limit. `volumes` and `volume_snapshots` build on this file, which
//! imports neither.

use super::{Error, Result};
use crate::storage::Pool;

/// Make `dst` (on `to`, not existing yet) a copy of volume directory `src` (on `from`): the
/// driver's clone within a pool (a btrfs snapshot, a reflink copy), a fresh volume filled by
/// [`crate::storage::copy::copy_tree`] across pools. Owners stay as they are (the containers'
/// id space), symlinks are copied, never followed. `readonly` makes the copy read-only where
/// the driver can. On error nothing is left at `dst`.
pub fn copy_volume(
    from: &Pool,
    src: &std::path::Path,
    to: &Pool,
    dst: &std::path::Path,
    readonly: bool,
) -> Result<()> {
    let err = |e: std::io::Error| Error::Host(format!("copying {}: {e}", src.display()));
    if from.name == to.name {
        return to
            .driver
            .clone_volume(src, dst, readonly)
            .inspect_err(|_| {
                let _ = to.driver.delete_volume(dst);
            })
            .map_err(err);
    }
    let res = (|| -> std::io::Result<()> {
        to.driver.create_volume(dst)?;
        // copy_tree makes its destination: copy into a fresh directory inside the new volume,
        // then move its entries up (renames within one filesystem).
        let tmp = dst.join(format!(".bivy-copy-{}", super::operations::uuid()));
        crate::storage::copy::copy_tree(src, &tmp)?;
        for e in std::fs::read_dir(&tmp)? {
            let e = e?;
            std::fs::rename(e.path(), dst.join(e.file_name()))?;
        }
        let md = std::fs::symlink_metadata(&tmp)?;
        std::fs::remove_dir(&tmp)?;
        {
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
        }
        if readonly {
            to.driver.set_readonly(dst)?;
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = to.driver.delete_volume(dst);
        return Err(err(e));
    }
    Ok(())
}

/// Give volume `path` on `pool` the size limit `size` (None or empty: no limit).
pub fn apply_size(
    pool: &Pool,
    path: &std::path::Path,
    size: Option<&String>,
) -> std::io::Result<()> {
    let bytes = match size.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(crate::storage::btrfs::parse_size(s)?),
    };
    pool.driver.set_size(path, bytes)
}

/// Bring the files of a volume directory LXD shifted on disk for an unprivileged container (the
/// map in `volatile.idmap.last` of its `config`, as a migration or a backup from LXD carries
/// it) back to the containers' ids, where bivy keeps a volume's files. Nothing to do without
/// that key.
pub fn unshift_lxd(dir: &std::path::Path, config: &crate::api::StringMap) -> Result<()> {
    let Some(m) = config
        .get("volatile.idmap.last")
        .and_then(|v| super::idmap::Map::from_volatile(v))
        .filter(|m| !m.uid.is_empty())
    else {
        return Ok(());
    };
    let inv = m.inverse();
    let err = |e: &dyn std::fmt::Display| Error::Host(format!("unshifting {}: {e}", dir.display()));
    // The volume's root directory was made here (a backup or a stream does not carry it): it
    // becomes the containers' root's, as it was on LXD's disk.
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(dir).map_err(|e| err(&e))?;
        let covered = crate::runtime::to_host(&inv.uid, md.uid()).is_some()
            && crate::runtime::to_host(&inv.gid, md.gid()).is_some();
        if !covered {
            let uid = crate::runtime::to_host(&m.uid, 0);
            let gid = crate::runtime::to_host(&m.gid, 0);
            std::os::unix::fs::lchown(dir, uid, gid).map_err(|e| err(&e))?;
        }
    }
    crate::runtime::shift_rootfs(dir, &inv.uid, &inv.gid).map_err(|e| err(&e))
}
