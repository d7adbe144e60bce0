//! Disk devices (other than the root disk): host directories and files, and custom volumes,
//! bind-mounted into the container at start. Two halves:
//!
//! - [`stage`] runs in the monitor (host root, in its private mount namespace): each source is
//!   opened with `openat2(O_PATH, RESOLVE_NO_SYMLINKS)`, so a symlink anywhere on the path (one
//!   swapped in mid-start included) is refused rather than followed; a detached copy of it is
//!   made from that fd (`open_tree`), idmapped and made read-only as asked (`mount_setattr`), and
//!   attached below the staging tmpfs (`<stage>/disks/<n>`). Nothing reaches the host's mount
//!   table: the staging tmpfs lives in the monitor's namespace only.
//! - [`mount_all`] runs in the container child (container root, its own user and mount
//!   namespace, before pivot_root): each target path is resolved inside the rootfs with
//!   `RESOLVE_IN_ROOT` (a symlink in the container cannot point it at the host), missing parts
//!   are made as container root, and the staged mount is cloned and moved onto the opened target.
//!   The child's mount namespace was copied from the monitor's across a user namespace, so the
//!   kernel locks the staged mounts' flags: the container cannot remount a read-only disk
//!   read-write.
//!
//! A disk whose `propagation` follows the host's (slave, shared) is copied earlier, by
//! [`staging_namespace`], while the new namespace is still the host's slave: its copy stays a
//! slave of the host's mount, and so do the clones made from it down to the container's.
//!
//! The mounts go when the container's namespaces go: stopping leaves nothing on the host.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use nix::mount::MsFlags;

use super::{userns, DiskMount, Error, Propagation, Result, Spec, UnixDev};
use crate::sys;

/// A disk staged by the monitor, ready for the child to mount.
#[derive(Debug, Clone)]
pub struct Staged {
    pub name: String,
    /// Where it is attached below the staging tmpfs.
    pub staged: PathBuf,
    /// A directory (else a file).
    pub dir: bool,
    pub path: String,
    pub recursive: bool,
    pub propagation: Propagation,
}

/// A source opened (`O_PATH`) and its detached copy, taken while the staging namespace was the
/// host's slave (see [`staging_namespace`]).
pub struct Linked {
    source: OwnedFd,
    tree: OwnedFd,
}

/// Enter a mount namespace of our own for staging (the monitor at start, the hot-plug helper):
/// a copy of the host's, made its slave (nothing mounted here reaches the host) while the
/// sources of `disks` whose propagation follows the host's are copied, then private. Returns
/// those copies, indexed like `disks` (`None` for the others and for missing optional sources).
pub fn staging_namespace(disks: &[DiskMount]) -> Result<Vec<Option<Linked>>> {
    let ns_err = |what: &str, e: nix::errno::Errno| Error(format!("{what}: {e}"));
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| ns_err("unshare(CLONE_NEWNS)", e))?;
    let make = |flag: MsFlags, what: &str| {
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | flag,
            None::<&str>,
        )
        .map_err(|e| ns_err(what, e))
    };
    let mut linked = Vec::with_capacity(disks.len());
    if disks.iter().any(|d| d.propagation.follows_host()) {
        make(
            MsFlags::MS_SLAVE,
            "make the staging namespace the host's slave",
        )?;
        for d in disks {
            linked.push(if d.propagation.follows_host() {
                link(d)?
            } else {
                None
            });
        }
    }
    make(MsFlags::MS_PRIVATE, "make the staging namespace private")?;
    linked.resize_with(disks.len(), || None);
    Ok(linked)
}

/// Open the source of `d` and copy its mount (a block device's filesystem is mounted afresh
/// later: nothing to follow).
fn link(d: &DiskMount) -> Result<Option<Linked>> {
    let Some(source) = open_source(d)? else {
        return Ok(None);
    };
    let st = rustix::fs::fstat(&source).map_err(|e| err(d, format!("stat source: {e}")))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::BlockDevice {
        return Ok(None);
    }
    let tree = clone_source(d, &source)?;
    Ok(Some(Linked { source, tree }))
}

/// A detached copy of the mount at the opened source (recursive as asked).
fn clone_source(d: &DiskMount, source: &OwnedFd) -> Result<OwnedFd> {
    sys::open_tree_clone_fd(source.as_fd(), d.recursive)
        .map_err(|e| err(d, format!("open_tree {}: {e}", d.source.display())))
}

fn err(d: &DiskMount, what: impl std::fmt::Display) -> Error {
    Error(format!("disk device {:?}: {what}", d.name))
}

fn symlink_refused(d: &DiskMount) -> Error {
    err(
        d,
        format!(
            "source path {:?} goes through a symlink, which is not followed (name the real path)",
            d.source.display().to_string()
        ),
    )
}

/// Open `source` as an `O_PATH` fd without following any symlink on it.
fn open_source(d: &DiskMount) -> Result<Option<OwnedFd>> {
    let how = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(
        rustix::fs::CWD,
        &d.source,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        how,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) if !d.required => Ok(None),
        Err(rustix::io::Errno::NOENT) => Err(err(
            d,
            format!("Missing source path {:?}", d.source.display().to_string()),
        )),
        Err(rustix::io::Errno::LOOP) => Err(symlink_refused(d)),
        Err(e) => Err(err(d, format!("open source {}: {e}", d.source.display()))),
    }
}

/// Monitor side: open, copy, idmap and attach every disk below `stage`, then make the device
/// nodes there (in the monitor's private mount namespace; `linked` from [`staging_namespace`]).
/// Sources missing with `required=false` are left out (and logged).
pub fn stage(spec: &Spec, stage: &Path, linked: Vec<Option<Linked>>) -> Result<Vec<Staged>> {
    if spec.disks.is_empty() && spec.unix_devices.is_empty() {
        return Ok(Vec::new());
    }
    let base = stage.join("disks");
    fs::create_dir(&base).map_err(|e| Error(format!("create {}: {e}", base.display())))?;
    let mut ns: Option<OwnedFd> = None;
    let mut out = Vec::new();
    for ((i, d), l) in spec.disks.iter().enumerate().zip(linked) {
        if let Some(s) = stage_disk(spec, d, &mut ns, &base.join(i.to_string()), l)? {
            out.push(s);
        }
    }
    for (i, u) in spec.unix_devices.iter().enumerate() {
        out.push(stage_node(spec, u, &base.join(format!("u{i}")))?);
    }
    Ok(out)
}

/// Open, copy, idmap (with the user namespace `ns`, made on first use) and make read-only one
/// disk, attached at `at` (which must not exist). `None`: the source is missing and not required.
/// `linked`: the source and its copy, already taken by [`staging_namespace`].
pub(crate) fn stage_disk(
    spec: &Spec,
    d: &DiskMount,
    ns: &mut Option<OwnedFd>,
    at: &Path,
    linked: Option<Linked>,
) -> Result<Option<Staged>> {
    let (fd, linked) = match linked {
        Some(l) => (Some(l.source), Some(l.tree)),
        None => (open_source(d)?, None),
    };
    let Some(fd) = fd else {
        eprintln!(
            "bivy: disk device {:?}: source {} is missing, skipped (required=false)",
            d.name,
            d.source.display()
        );
        return Ok(None);
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| err(d, format!("stat source: {e}")))?;
    let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
    let dir = match ft {
        rustix::fs::FileType::Directory => true,
        rustix::fs::FileType::RegularFile => false,
        rustix::fs::FileType::Symlink => return Err(symlink_refused(d)),
        rustix::fs::FileType::BlockDevice => false,
        other => {
            return Err(err(
                d,
                format!(
                    "source {} is a {other:?}, not a directory or file",
                    d.source.display()
                ),
            ))
        }
    };
    let block = ft == rustix::fs::FileType::BlockDevice;
    let dir = dir || block;
    if !block && !d.mount_options.is_empty() {
        return Err(err(
            d,
            "raw.mount.options applies to block device sources only (a bind mount has no filesystem options)",
        ));
    }
    let tree = match linked {
        Some(tree) => tree,
        None if block => mount_block(d, &fd)?,
        None => clone_source(d, &fd)?,
    };
    if d.idmap && !spec.uid_map.is_empty() {
        if ns.is_none() {
            *ns = Some(userns::userns_fd(&spec.uid_map, &spec.gid_map)?);
        }
        let ns = ns.as_ref().expect("just made");
        sys::mount_setattr_idmap(tree.as_fd(), ns.as_fd(), d.recursive).map_err(|e| {
            err(
                d,
                format!(
                    "idmapped mount of {} (the filesystem must support idmapped mounts): {e}",
                    d.source.display()
                ),
            )
        })?;
    }
    if d.readonly {
        sys::mount_setattr_flags(tree.as_fd(), sys::MOUNT_ATTR_RDONLY, d.recursive)
            .map_err(|e| err(d, format!("make read-only: {e}")))?;
    }
    if dir {
        fs::create_dir(at)
    } else {
        fs::File::create(at).map(drop)
    }
    .map_err(|e| Error(format!("create {}: {e}", at.display())))?;
    sys::move_mount_to(tree.as_fd(), at)
        .map_err(|e| err(d, format!("attach at {}: {e}", at.display())))?;
    Ok(Some(Staged {
        name: d.name.clone(),
        staged: at.to_path_buf(),
        dir,
        path: d.path.clone(),
        recursive: d.recursive,
        propagation: d.propagation,
    }))
}

/// Filesystems a block device source may hold: the magic that identifies each (offset, bytes)
/// and the kernel's name for it.
const FS_MAGIC: &[(usize, &[u8], &str)] = &[
    (0x438, &[0x53, 0xef], "ext4"),
    (0, b"XFSB", "xfs"),
    (0x10040, b"_BHRfS_M", "btrfs"),
    (3, b"EXFAT   ", "exfat"),
    (0x36, b"FAT", "vfat"),
    (0x52, b"FAT32", "vfat"),
    (0x8001, b"CD001", "iso9660"),
    (0, b"hsqs", "squashfs"),
    (0x400, &[0x10, 0x20, 0xf5, 0xf2], "f2fs"),
];

/// The filesystem type of a block device, from its superblock magic (no blkid to run).
fn probe_fs(dev: &mut impl std::io::Read) -> io::Result<Option<&'static str>> {
    let mut buf = vec![0u8; 0x10048];
    let mut n = 0;
    while n < buf.len() {
        match dev.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(FS_MAGIC
        .iter()
        .find(|(off, magic, _)| buf.get(*off..off + magic.len()) == Some(*magic))
        .map(|(_, _, fs)| *fs))
}

/// Mount options that are mount attributes rather than filesystem parameters.
fn mount_attr(opt: &str) -> Option<rustix::mount::MountAttrFlags> {
    use rustix::mount::MountAttrFlags as A;
    Some(match opt {
        "nosuid" => A::MOUNT_ATTR_NOSUID,
        "nodev" => A::MOUNT_ATTR_NODEV,
        "noexec" => A::MOUNT_ATTR_NOEXEC,
        "noatime" => A::MOUNT_ATTR_NOATIME,
        "nodiratime" => A::MOUNT_ATTR_NODIRATIME,
        "relatime" => A::MOUNT_ATTR_RELATIME,
        "strictatime" => A::MOUNT_ATTR_STRICTATIME,
        _ => return None,
    })
}

/// Mount the filesystem of the block device opened (`O_PATH`, no symlink followed) as `fd`: a
/// detached mount (`fsopen`/`fsmount`), its type probed, `raw.mount.options` passed as
/// filesystem parameters (mount attributes such as `noatime` set on the mount).
fn mount_block(d: &DiskMount, fd: &OwnedFd) -> Result<OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    // The device through the very inode opened, never through its path again.
    let by_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    let mut dev = fs::File::open(&by_fd).map_err(|e| err(d, format!("open {by_fd}: {e}")))?;
    let fstype = probe_fs(&mut dev)
        .map_err(|e| err(d, format!("read {}: {e}", d.source.display())))?
        .ok_or_else(|| {
            err(
                d,
                format!(
                    "no filesystem bivy knows on {} (ext4, xfs, btrfs, vfat, exfat, iso9660, squashfs, f2fs)",
                    d.source.display()
                ),
            )
        })?;
    let fsfd = rustix::mount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| err(d, format!("fsopen {fstype}: {e}")))?;
    rustix::mount::fsconfig_set_string(&fsfd, "source", by_fd.as_str())
        .map_err(|e| err(d, format!("source {}: {e}", d.source.display())))?;
    if d.readonly {
        rustix::mount::fsconfig_set_flag(&fsfd, "ro")
            .map_err(|e| err(d, format!("read-only: {e}")))?;
    }
    let mut attrs = MountAttrFlags::empty();
    for opt in d.mount_options.split(',').filter(|o| !o.is_empty()) {
        if let Some(a) = mount_attr(opt) {
            attrs |= a;
            continue;
        }
        let r = match opt.split_once('=') {
            Some((k, v)) => rustix::mount::fsconfig_set_string(&fsfd, k, v),
            None => rustix::mount::fsconfig_set_flag(&fsfd, opt),
        };
        r.map_err(|e| err(d, format!("mount option {opt:?} of {fstype}: {e}")))?;
    }
    rustix::mount::fsconfig_create(&fsfd).map_err(|e| {
        err(
            d,
            format!("mount {fstype} from {}: {e}", d.source.display()),
        )
    })?;
    rustix::mount::fsmount(&fsfd, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| err(d, format!("fsmount {fstype}: {e}")))
}

/// Make the device node `u` at `at` (host root, on a tmpfs without `nodev`), owned by the
/// container's `uid`/`gid` (mapped to the host) with its mode.
pub(crate) fn stage_node(spec: &Spec, u: &UnixDev, at: &Path) -> Result<Staged> {
    let e = |what: &str, x: &dyn std::fmt::Display| {
        Error(format!(
            "unix device {:?} ({}): {what}: {x}",
            u.name, u.path
        ))
    };
    let (uid, gid) = if spec.uid_map.is_empty() {
        (u.uid, u.gid)
    } else {
        (
            userns::to_host(&spec.uid_map, u.uid)
                .ok_or_else(|| e("uid", &format!("{} is not mapped in the container", u.uid)))?,
            userns::to_host(&spec.gid_map, u.gid)
                .ok_or_else(|| e("gid", &format!("{} is not mapped in the container", u.gid)))?,
        )
    };
    let ft = if u.block {
        rustix::fs::FileType::BlockDevice
    } else {
        rustix::fs::FileType::CharacterDevice
    };
    let dev = rustix::fs::makedev(u.major, u.minor);
    rustix::fs::mknodat(rustix::fs::CWD, at, ft, Mode::from_raw_mode(0), dev)
        .map_err(|x| e("mknod", &x))?;
    rustix::fs::chown(
        at,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|x| e("chown", &x))?;
    rustix::fs::chmod(at, Mode::from_raw_mode(u.mode & 0o7777)).map_err(|x| e("chmod", &x))?;
    Ok(Staged {
        name: u.name.clone(),
        staged: at.to_path_buf(),
        dir: false,
        path: u.path.clone(),
        recursive: false,
        propagation: Propagation::Private,
    })
}

/// Resolve `path` inside `root` (symlinks stay inside it), making what is missing as the caller
/// (container root): directories on the way, and the last part as a directory or an empty file.
pub(crate) fn resolve_target(root: &Path, path: &str, dir: bool) -> io::Result<OwnedFd> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open = |rel: &str| {
        rustix::fs::openat2(
            &rootfd,
            rel,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            how,
        )
    };
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() || comps.iter().any(|c| *c == "." || *c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain absolute path",
        ));
    }
    let mut cur = rustix::io::dup(&rootfd)?;
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let sofar = comps[..=i].join("/");
        cur = match open(&sofar) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                // `cur` is the parent, already resolved inside the root; `c` has no slash.
                if !last || dir {
                    match rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    let f = rustix::fs::openat(
                        &cur,
                        *c,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::CLOEXEC
                            | OFlags::NOFOLLOW,
                        Mode::from_raw_mode(0o644),
                    );
                    match f {
                        Ok(_) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                open(&sofar)?
            }
            Err(e) => return Err(e.into()),
        };
    }
    let st = rustix::fs::fstat(&cur)?;
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
    if is_dir != dir {
        return Err(io::Error::other(if dir {
            "exists and is not a directory"
        } else {
            "exists and is a directory (the source is a file)"
        }));
    }
    Ok(cur)
}

/// Child side: mount every staged disk at its path inside `root` (before pivot_root).
pub fn mount_all(root: &Path, staged: &[Staged]) -> Result<()> {
    for s in staged {
        let e = |what: &str, x: &dyn std::fmt::Display| {
            Error(format!("disk device {:?}: {what} {}: {x}", s.name, s.path))
        };
        let target = resolve_target(root, &s.path, s.dir).map_err(|x| e("path", &x))?;
        let tree = clone_staged(s).map_err(|x| e("open_tree for", &x))?;
        sys::move_mount_fd(tree.as_fd(), target.as_fd()).map_err(|x| e("mount on", &x))?;
    }
    Ok(())
}

/// The container's copy of a staged mount, with the propagation type it must have there.
pub(crate) fn clone_staged(s: &Staged) -> io::Result<OwnedFd> {
    let tree = sys::open_tree_clone(&s.staged, s.recursive)?;
    if let Some((kind, recursive)) = s.propagation.in_container() {
        sys::mount_setattr_propagation(tree.as_fd(), kind, recursive)?;
    }
    Ok(tree)
}
