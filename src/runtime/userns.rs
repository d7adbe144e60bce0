//! User namespaces: id map text, writing a child's maps, building a user namespace fd that carries
//! a map (for idmapped mounts), the idmapped rootfs tree, and the one-time ownership shift for
//! filesystems that cannot be idmapped. Must not mount anything in the caller's mount namespace
//! (detached trees only; attaching them is the monitor's job, inside its private mount namespace).

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::{Error, IdMapEntry, Result};
use crate::sys;

/// The text the kernel expects in `/proc/PID/uid_map`: one `nsid hostid count` line per entry.
pub fn map_text(map: &[IdMapEntry]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.nsid, e.hostid, e.count))
        .collect()
}

/// Host id of container id `id`, if mapped.
pub fn to_host(map: &[IdMapEntry], id: u32) -> Option<u32> {
    map.iter()
        .find(|e| id >= e.nsid && id - e.nsid < e.count)
        .map(|e| e.hostid + (id - e.nsid))
}

/// Write `gid_map` then `uid_map` of `pid` (as host root no `setgroups deny` is needed).
pub fn write_maps(pid: i32, uid_map: &[IdMapEntry], gid_map: &[IdMapEntry]) -> Result<()> {
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let p = format!("/proc/{pid}/{file}");
        fs::write(&p, map_text(map)).map_err(|e| Error(format!("write {p}: {e}")))?;
    }
    Ok(())
}

/// A user namespace fd carrying `uid_map`/`gid_map`, for `MOUNT_ATTR_IDMAP`. A short-lived child
/// creates the namespace and waits on a pipe; we write its maps, open its ns file, and let it go.
pub fn userns_fd(uid_map: &[IdMapEntry], gid_map: &[IdMapEntry]) -> Result<OwnedFd> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error(format!("pipe: {e}")))?;
    let pid = sys::clone_fork(libc::CLONE_NEWUSER)
        .map_err(|e| Error(format!("clone(CLONE_NEWUSER) for id map: {e}")))?;
    if pid == 0 {
        // Child: only async-signal-safe calls. Block until the parent closes its end, then leave.
        drop(wr);
        let mut b = [0u8; 1];
        let _ = nix::unistd::read(&rd, &mut b);
        sys::exit_now(0);
    }
    drop(rd);
    let res = write_maps(pid, uid_map, gid_map).and_then(|()| {
        let p = format!("/proc/{pid}/ns/user");
        fs::File::open(&p)
            .map(OwnedFd::from)
            .map_err(|e| Error(format!("open {p}: {e}")))
    });
    drop(wr);
    let _ = waitpid(Pid::from_raw(pid), None);
    res
}

/// A detached, idmapped copy of the mount at `src` (non-recursive). Nothing is attached anywhere.
pub fn idmapped_tree(src: &Path, userns: &OwnedFd) -> Result<OwnedFd> {
    let t = sys::open_tree_clone(src, false)
        .map_err(|e| Error(format!("open_tree {}: {e}", src.display())))?;
    sys::mount_setattr_idmap(t.as_fd(), userns.as_fd(), false).map_err(|e| {
        Error(format!(
            "mount_setattr(MOUNT_ATTR_IDMAP) {}: {e}",
            src.display()
        ))
    })?;
    Ok(t)
}

/// The container's root filesystem as an overlay (a layered volume, storage/layered.rs): the
/// image's rootfs at `lower` under the volume's `upper/` (with `work/` beside it) in `vol`, both
/// idmapped trees attached in our (the monitor's private) mount namespace. The overlay is made
/// by a short-lived child inside `userns`, as its root, in a copy of our mount namespace: only
/// there may it take the layers (the kernel lets a mounter use as a layer only a mount of a
/// namespace it administers) and does it create its work directory and copy files up with ids
/// the idmap maps (made by host root it falls back to read-only, host.md 3b). Returned
/// detached, for the caller to attach; the child is left for the caller to reap (see
/// [`sys::overlay::mount_in_userns`]).
pub fn overlay_in_userns(userns: &OwnedFd, lower: &Path, vol: &Path) -> Result<OwnedFd> {
    let cs = |p: &Path| sys::cpath(p).map_err(|e| Error(format!("{}: {e}", p.display())));
    let (l, u, w) = (cs(lower)?, cs(&vol.join("upper"))?, cs(&vol.join("work"))?);
    let lowers = [l.as_c_str()];
    let layers = sys::overlay::Layers {
        lowers: &lowers,
        upper_work: Some((u.as_c_str(), w.as_c_str())),
    };
    sys::overlay::mount_in_userns(userns.as_fd(), &layers)
        .map_err(|e| Error(format!("rootfs overlay: {e}")))
}

/// Whether the filesystem holding `path` can be idmapped (tried for real on a detached copy).
/// The answer is kept per mount where the kernel names mounts uniquely (Linux 6.8+: a mount's
/// unique id is never reused until reboot), so a launch does not make a user namespace for it.
pub fn rootfs_supports_idmap(path: &Path) -> bool {
    type Known = std::sync::Mutex<Vec<(u64, bool)>>;
    static KNOWN: Known = Known::new(Vec::new());
    let mount = unique_mount_id(path);
    if let Some(m) = mount {
        let known = KNOWN.lock().expect("idmap probe cache");
        if let Some(&(_, yes)) = known.iter().find(|(k, _)| *k == m) {
            return yes;
        }
    }
    let (u, _) = super::host::host_id_range();
    let yes = rootfs_supports_idmap_with(path, &u);
    if let Some(m) = mount {
        let mut known = KNOWN.lock().expect("idmap probe cache");
        if known.len() >= 64 {
            known.remove(0);
        }
        known.push((m, yes));
    }
    yes
}

/// The unique id of the mount holding `path` (`STATX_MNT_ID_UNIQUE`), where the kernel has it.
fn unique_mount_id(path: &Path) -> Option<u64> {
    const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE),
    )
    .ok()?;
    (st.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(st.stx_mnt_id)
}

/// [`rootfs_supports_idmap`] with an explicit range (used by the host probe itself).
pub fn rootfs_supports_idmap_with(path: &Path, range: &IdMapEntry) -> bool {
    let m = [IdMapEntry {
        nsid: 0,
        hostid: range.hostid,
        count: range.count.min(65536),
    }];
    match userns_fd(&m, &m) {
        Ok(ns) => idmapped_tree(path, &ns).is_ok(),
        Err(_) => false,
    }
}

const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;

/// Remap the ids inside a POSIX ACL xattr value (`system.posix_acl_{access,default}`).
pub fn shift_acl(val: &[u8], uid_map: &[IdMapEntry], gid_map: &[IdMapEntry]) -> Option<Vec<u8>> {
    if val.len() < 4 || !(val.len() - 4).is_multiple_of(8) {
        return None;
    }
    let mut out = val.to_vec();
    for e in out[4..].chunks_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let map = match tag {
            ACL_USER => uid_map,
            ACL_GROUP => gid_map,
            _ => continue,
        };
        let h = to_host(map, id).unwrap_or(id);
        e[4..8].copy_from_slice(&h.to_le_bytes());
    }
    Some(out)
}

/// Turn a `security.capability` value into a v3 one whose rootid is the host id of container root.
pub fn shift_fscaps(val: &[u8], uid_map: &[IdMapEntry]) -> Option<Vec<u8>> {
    if val.len() < 20 {
        return None;
    }
    let magic = u32::from_le_bytes([val[0], val[1], val[2], val[3]]);
    let rootid = match magic & VFS_CAP_REVISION_MASK {
        VFS_CAP_REVISION_2 => 0,
        VFS_CAP_REVISION_3 if val.len() >= 24 => {
            u32::from_le_bytes([val[20], val[21], val[22], val[23]])
        }
        _ => return None,
    };
    let host = to_host(uid_map, rootid)?;
    let mut out = val[..20].to_vec();
    let magic3 = (magic & !VFS_CAP_REVISION_MASK) | VFS_CAP_REVISION_3;
    out[0..4].copy_from_slice(&magic3.to_le_bytes());
    out.extend_from_slice(&host.to_le_bytes());
    Some(out)
}

/// One-time ownership shift of a rootfs whose filesystem cannot be idmapped: every inode's uid/gid
/// goes through the maps, ACL entries too, and file capabilities get the container's rootid.
/// Does not cross into other filesystems.
pub fn shift_rootfs(path: &Path, uid_map: &[IdMapEntry], gid_map: &[IdMapEntry]) -> Result<()> {
    let dev = fs::symlink_metadata(path)
        .map_err(|e| Error(format!("stat {}: {e}", path.display())))?
        .dev();
    shift_tree(path, dev, uid_map, gid_map)
}

fn shift_tree(p: &Path, dev: u64, uid_map: &[IdMapEntry], gid_map: &[IdMapEntry]) -> Result<()> {
    let md = fs::symlink_metadata(p).map_err(|e| Error(format!("stat {}: {e}", p.display())))?;
    if md.dev() != dev {
        return Ok(());
    }
    shift_one(p, &md, uid_map, gid_map)
        .map_err(|e| Error(format!("shift {}: {e}", p.display())))?;
    if md.is_dir() {
        let rd = fs::read_dir(p).map_err(|e| Error(format!("read dir {}: {e}", p.display())))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error(format!("read dir {}: {e}", p.display())))?;
            shift_tree(&ent.path(), dev, uid_map, gid_map)?;
        }
    }
    Ok(())
}

fn shift_one(
    p: &Path,
    md: &fs::Metadata,
    uid_map: &[IdMapEntry],
    gid_map: &[IdMapEntry],
) -> io::Result<()> {
    let unmapped = || io::Error::other("id not covered by the map");
    let uid = to_host(uid_map, md.uid()).ok_or_else(unmapped)?;
    let gid = to_host(gid_map, md.gid()).ok_or_else(unmapped)?;
    // Read the capability before chown: chown drops security.capability.
    let caps = if md.is_file() {
        get_xattr(p, "security.capability")
    } else {
        None
    };
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    if !md.file_type().is_symlink() {
        // chown clears setuid/setgid; put the mode back exactly.
        fs::set_permissions(p, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        for name in ["system.posix_acl_access", "system.posix_acl_default"] {
            if let Some(v) = get_xattr(p, name).and_then(|v| shift_acl(&v, uid_map, gid_map)) {
                rustix::fs::lsetxattr(p, name, &v, rustix::fs::XattrFlags::empty())?;
            }
        }
        if let Some(v) = caps.and_then(|v| shift_fscaps(&v, uid_map)) {
            rustix::fs::lsetxattr(
                p,
                "security.capability",
                &v,
                rustix::fs::XattrFlags::empty(),
            )?;
        }
    }
    Ok(())
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: IdMapEntry = IdMapEntry {
        nsid: 0,
        hostid: 1_000_000,
        count: 65536,
    };

    #[test]
    fn mounts_have_unique_ids_here() {
        // Linux 6.8+ names each mount with an id never reused; the idmap probe's cache relies
        // on it and does without it on older kernels.
        let root = unique_mount_id(Path::new("/"));
        let proc = unique_mount_id(Path::new("/proc"));
        if let (Some(r), Some(p)) = (root, proc) {
            assert_ne!(r, p);
            assert_eq!(unique_mount_id(Path::new("/proc/self")), Some(p));
        }
    }

    #[test]
    fn map_text_and_lookup() {
        let m = [
            M,
            IdMapEntry {
                nsid: 65536,
                hostid: 5000,
                count: 1,
            },
        ];
        assert_eq!(map_text(&m), "0 1000000 65536\n65536 5000 1\n");
        assert_eq!(to_host(&m, 0), Some(1_000_000));
        assert_eq!(to_host(&m, 65535), Some(1_065_535));
        assert_eq!(to_host(&m, 65536), Some(5000));
        assert_eq!(to_host(&m, 65537), None);
    }

    #[test]
    fn acl_ids_are_shifted_only_for_named_entries() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, id) in [(0x01u16, u32::MAX), (ACL_USER, 1000), (ACL_GROUP, 5)] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&7u16.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        let out = shift_acl(&v, &[M], &[M]).unwrap();
        let ids: Vec<u32> = out[4..]
            .chunks(8)
            .map(|e| u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
            .collect();
        assert_eq!(ids, vec![u32::MAX, 1_001_000, 1_000_005]);
        assert!(shift_acl(&[1, 2, 3], &[M], &[M]).is_none());
    }

    #[test]
    fn fscaps_v2_becomes_v3_with_rootid() {
        let mut v2 = (VFS_CAP_REVISION_2 | 1).to_le_bytes().to_vec();
        v2.extend_from_slice(&[0xAA; 16]);
        let v3 = shift_fscaps(&v2, &[M]).unwrap();
        assert_eq!(v3.len(), 24);
        assert_eq!(
            u32::from_le_bytes(v3[0..4].try_into().unwrap()),
            VFS_CAP_REVISION_3 | 1
        );
        assert_eq!(&v3[4..20], &[0xAA; 16]);
        assert_eq!(
            u32::from_le_bytes(v3[20..24].try_into().unwrap()),
            1_000_000
        );
    }
}
