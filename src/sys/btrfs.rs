//! btrfs subvolume ioctls (`linux/btrfs.h`): create, snapshot, destroy, read-only flag, quota
//! groups (enable, limit), a subvolume's id.
//!
//! Each call takes a directory fd (the parent for create/snapshot/destroy, the subvolume itself for
//! the flags) opened by the caller, so a path can be checked and then acted on without a race on
//! the parent's name.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

/// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
pub const SUBVOL_ROOT_INO: u64 = 256;

const IOCTL_MAGIC: u8 = 0x94;
const PATH_NAME_MAX: usize = 4087;
const SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`, both in `vol_args_v2.flags` and in the subvolume flags.
const SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the unions reduced to the members used here).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

const IOC_RESIZE: libc::Ioctl =
    nix::request_code_write!(IOCTL_MAGIC, 3, std::mem::size_of::<VolArgs>()) as libc::Ioctl;
const IOC_SUBVOL_CREATE: libc::Ioctl =
    nix::request_code_write!(IOCTL_MAGIC, 14, std::mem::size_of::<VolArgs>()) as libc::Ioctl;
const IOC_SNAP_DESTROY: libc::Ioctl =
    nix::request_code_write!(IOCTL_MAGIC, 15, std::mem::size_of::<VolArgs>()) as libc::Ioctl;
const IOC_SNAP_CREATE_V2: libc::Ioctl =
    nix::request_code_write!(IOCTL_MAGIC, 23, std::mem::size_of::<VolArgsV2>()) as libc::Ioctl;
const IOC_SUBVOL_GETFLAGS: libc::Ioctl =
    nix::request_code_read!(IOCTL_MAGIC, 25, std::mem::size_of::<u64>()) as libc::Ioctl;
const IOC_SUBVOL_SETFLAGS: libc::Ioctl =
    nix::request_code_write!(IOCTL_MAGIC, 26, std::mem::size_of::<u64>()) as libc::Ioctl;

/// Copy `name` (one path component) into a NUL-terminated fixed buffer.
fn fill_name(dst: &mut [u8], name: &[u8]) -> io::Result<()> {
    if name.is_empty() || name.len() >= dst.len() || name.contains(&b'/') || name.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    dst[..name.len()].copy_from_slice(name);
    dst[name.len()] = 0;
    Ok(())
}

fn vol_args(name: &[u8]) -> io::Result<Box<VolArgs>> {
    let mut a = Box::new(VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    });
    fill_name(&mut a.name, name)?;
    Ok(a)
}

/// `BTRFS_IOC_RESIZE` with `max`: the filesystem open as `fd` (any directory of it) grows to
/// the size of its device (one device, id 1: a pool's loop file).
pub fn resize_max(fd: BorrowedFd<'_>) -> io::Result<()> {
    let a = vol_args(b"max")?;
    // SAFETY: `a` is a valid btrfs_ioctl_vol_args (NUL-terminated name) the kernel only reads,
    // boxed and alive across the call; the fd is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_RESIZE, &*a as *const VolArgs) };
    check(r as libc::c_long).map(|_| ())
}

/// `BTRFS_IOC_SUBVOL_CREATE`: a new empty subvolume `name` in the directory `parent`.
pub fn subvol_create(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let args = vol_args(name)?;
    // SAFETY: `args` is a valid, initialised btrfs_ioctl_vol_args of the size encoded in the
    // request, alive across the call; the kernel only reads it. `parent` is an open fd.
    let r = unsafe {
        libc::ioctl(
            parent.as_raw_fd(),
            IOC_SUBVOL_CREATE,
            &*args as *const VolArgs,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

/// `BTRFS_IOC_SNAP_DESTROY`: delete the subvolume `name` in the directory `parent`.
pub fn snap_destroy(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let args = vol_args(name)?;
    // SAFETY: as in subvol_create: a valid vol_args the kernel reads, and an open fd.
    let r = unsafe {
        libc::ioctl(
            parent.as_raw_fd(),
            IOC_SNAP_DESTROY,
            &*args as *const VolArgs,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

/// `BTRFS_IOC_SNAP_CREATE_V2`: snapshot the subvolume open as `src` to `name` in the directory
/// `parent`, read-only if `readonly`.
pub fn snap_create(
    parent: BorrowedFd<'_>,
    name: &[u8],
    src: BorrowedFd<'_>,
    readonly: bool,
) -> io::Result<()> {
    let mut args = Box::new(VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags: if readonly { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    });
    fill_name(&mut args.name, name)?;
    // SAFETY: `args` is a valid, initialised btrfs_ioctl_vol_args_v2 of the encoded size, alive
    // across the call (no qgroup_inherit pointer: flags never has BTRFS_SUBVOL_QGROUP_INHERIT);
    // both fds are open.
    let r = unsafe {
        libc::ioctl(
            parent.as_raw_fd(),
            IOC_SNAP_CREATE_V2,
            &*args as *const VolArgsV2,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

fn get_flags(subvol: BorrowedFd<'_>) -> io::Result<u64> {
    let mut flags: u64 = 0;
    // SAFETY: the kernel writes one u64 into `flags`, which we own; the fd is open.
    let r = unsafe {
        libc::ioctl(
            subvol.as_raw_fd(),
            IOC_SUBVOL_GETFLAGS,
            &mut flags as *mut u64,
        )
    };
    check(r as libc::c_long).map(|_| flags)
}

/// Whether the subvolume open as `subvol` is read-only (`BTRFS_IOC_SUBVOL_GETFLAGS`).
pub fn is_readonly(subvol: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(get_flags(subvol)? & SUBVOL_RDONLY != 0)
}

/// Set or clear the read-only flag of the subvolume open as `subvol`
/// (`BTRFS_IOC_SUBVOL_GETFLAGS`, then `BTRFS_IOC_SUBVOL_SETFLAGS` if it changes).
pub fn set_readonly(subvol: BorrowedFd<'_>, readonly: bool) -> io::Result<()> {
    let old = get_flags(subvol)?;
    let new = if readonly {
        old | SUBVOL_RDONLY
    } else {
        old & !SUBVOL_RDONLY
    };
    if new == old {
        return Ok(());
    }
    // SAFETY: the kernel reads one u64 from `new`, which lives across the call; the fd is open.
    let r = unsafe { libc::ioctl(subvol.as_raw_fd(), IOC_SUBVOL_SETFLAGS, &new as *const u64) };
    check(r as libc::c_long).map(|_| ())
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

const _: () = assert!(std::mem::size_of::<QuotaCtlArgs>() == 16);
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);

const IOC_QUOTA_CTL: libc::Ioctl =
    nix::request_code_readwrite!(IOCTL_MAGIC, 40, std::mem::size_of::<QuotaCtlArgs>())
        as libc::Ioctl;
const IOC_QGROUP_LIMIT: libc::Ioctl =
    nix::request_code_read!(IOCTL_MAGIC, 43, std::mem::size_of::<QgroupLimitArgs>()) as libc::Ioctl;
/// `BTRFS_QUOTA_CTL_ENABLE`.
const QUOTA_CTL_ENABLE: u64 = 1;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`.
const QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
/// `CLEAR_VALUE`: a limit of this value removes the limit.
const QGROUP_LIMIT_CLEAR: u64 = u64::MAX;

/// `BTRFS_IOC_QUOTA_CTL` with `BTRFS_QUOTA_CTL_ENABLE` on the filesystem holding `fd`: turn
/// quota groups on (a no-op when they are on; every subvolume then has a qgroup).
pub fn quota_enable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: `args` is a valid btrfs_ioctl_quota_ctl_args the kernel reads and writes, alive
    // across the call; the fd is open.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            IOC_QUOTA_CTL,
            &mut args as *mut QuotaCtlArgs,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

/// `BTRFS_IOC_QGROUP_LIMIT` through `fd` (any directory of the filesystem) on the level-0
/// qgroup `qgroupid` (a subvolume's id, [`subvol_id`]): limit the bytes it references to `max`
/// (None: no limit). The kernel charges the call's own transaction to the subvolume `fd` is in,
/// so a subvolume already over its limit can only have it changed through another one.
pub fn qgroup_limit(fd: BorrowedFd<'_>, qgroupid: u64, max: Option<u64>) -> io::Result<()> {
    let args = QgroupLimitArgs {
        qgroupid,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: max.unwrap_or(QGROUP_LIMIT_CLEAR),
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: the kernel reads one btrfs_ioctl_qgroup_limit_args from `args`, which lives
    // across the call; the fd is open.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            IOC_QGROUP_LIMIT,
            &args as *const QgroupLimitArgs,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

const IOC_INO_LOOKUP: libc::Ioctl =
    nix::request_code_readwrite!(IOCTL_MAGIC, 18, std::mem::size_of::<InoLookupArgs>())
        as libc::Ioctl;

/// The id of the subvolume open as `subvol` (`BTRFS_IOC_INO_LOOKUP` of its root directory with
/// tree id 0: the kernel answers with the tree the fd is in).
pub fn subvol_id(subvol: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: SUBVOL_ROOT_INO,
        name: [0; 4080],
    });
    // SAFETY: `args` is a valid btrfs_ioctl_ino_lookup_args the kernel reads and writes, alive
    // across the call; the fd is open.
    let r = unsafe {
        libc::ioctl(
            subvol.as_raw_fd(),
            IOC_INO_LOOKUP,
            &mut *args as *mut InoLookupArgs,
        )
    };
    check(r as libc::c_long).map(|_| args.treeid)
}
