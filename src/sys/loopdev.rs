//! Loop devices (`linux/loop.h`): attach a file with autoclear, detach, and find what is attached.
//!
//! A device attached with [`attach_autoclear`] detaches itself when its last user goes away: the
//! returned fd, then whatever mounts it. Hold the fd until the mount is made.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::check;

const LOOP_SET_FD: libc::Ioctl = 0x4C00 as libc::Ioctl;
const LOOP_CLR_FD: libc::Ioctl = 0x4C01 as libc::Ioctl;
const LOOP_SET_STATUS64: libc::Ioctl = 0x4C04 as libc::Ioctl;
const LOOP_SET_CAPACITY: libc::Ioctl = 0x4C07 as libc::Ioctl;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A as libc::Ioctl;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82 as libc::Ioctl;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

fn info_for(file: &Path) -> LoopInfo64 {
    use std::os::unix::ffi::OsStrExt;
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; LO_NAME_SIZE],
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let name = file.as_os_str().as_bytes();
    let n = name.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    info
}

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of a free loop device (created if needed).
fn get_free() -> io::Result<u32> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument; the fd is open.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
    check(r as libc::c_long).map(|n| n as u32)
}

/// Bind `backing` to the open loop device `dev` with `LO_FLAGS_AUTOCLEAR`: `LOOP_CONFIGURE`, or on
/// kernels before 5.8 `LOOP_SET_FD` then `LOOP_SET_STATUS64`.
fn configure(dev: &File, backing: &File, name: &Path) -> io::Result<()> {
    let cfg = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: info_for(name),
        reserved: [0; 8],
    };
    // SAFETY: `cfg` is a valid loop_config the kernel only reads, alive across the call; both fds
    // are open.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
    match check(r as libc::c_long) {
        Ok(_) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: LOOP_SET_FD takes the backing fd as a plain integer argument; both fds are open.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) };
    check(r as libc::c_long)?;
    let info = info_for(name);
    // SAFETY: `info` is a valid loop_info64 the kernel only reads, alive across the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_STATUS64,
            &info as *const LoopInfo64,
        )
    };
    if let Err(e) = check(r as libc::c_long) {
        // SAFETY: LOOP_CLR_FD takes no argument; the fd is open. Undoes the LOOP_SET_FD above.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) };
        return Err(e);
    }
    Ok(())
}

/// Attach `backing` (opened read-write) to a free loop device with autoclear. Returns the device
/// path and an open fd on it: the device stays attached while that fd or a mount of it exists.
pub fn attach_autoclear(backing: &Path) -> io::Result<(PathBuf, OwnedFd)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(backing)?;
    // Another process may take the free device between GET_FREE and CONFIGURE (EBUSY): retry.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..10 {
        let n = get_free()?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        match configure(&dev, &file, backing) {
            Ok(()) => return Ok((path, OwnedFd::from(dev))),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// `LOOP_CLR_FD` on `dev`: detach now, or (if the device is in use) when its last user goes.
pub fn detach(dev: &Path) -> io::Result<()> {
    plain_ioctl(dev, LOOP_CLR_FD)
}

/// `LOOP_SET_CAPACITY` on `dev`: the device takes its backing file's size again (after the
/// file grew).
pub fn set_capacity(dev: &Path) -> io::Result<()> {
    plain_ioctl(dev, LOOP_SET_CAPACITY)
}

/// A loop ioctl that takes no argument (`LOOP_CLR_FD`, `LOOP_SET_CAPACITY`) on device `dev`.
fn plain_ioctl(dev: &Path, request: libc::Ioctl) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dev)?;
    // SAFETY: both requests take no argument; the fd is open.
    let r = unsafe { libc::ioctl(f.as_fd().as_raw_fd(), request) };
    check(r as libc::c_long).map(|_| ())
}

/// The backing file of loop device `name` (`loop3`), from sysfs; `None` if it is not attached.
pub fn backing_file(name: &str) -> Option<PathBuf> {
    let s = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let s = s.trim_end_matches('\n');
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// The processes (`pid (comm) at MOUNT_POINTS`, one per mount namespace, at most three) that have a filesystem
/// from the block device `dev` (`/dev/loop3`) mounted in their mount namespace.
pub fn mounted_in(dev: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let want = dev.to_string_lossy();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns.ino()) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        let at: Vec<String> = info
            .lines()
            .filter_map(crate::util::mountinfo_fields)
            .filter(|(_, _, source)| *source == want)
            .map(|(mount_point, _, _)| mount_point)
            .collect();
        if !at.is_empty() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push(format!("{pid} ({}) at {}", comm.trim(), at.join(", ")));
            if out.len() == 3 {
                break;
            }
        }
    }
    out
}

/// The loop devices (`/dev/loopN`) whose backing file is `file` (compare canonical paths: sysfs
/// shows the path the file had when attached, with ` (deleted)` once unlinked).
pub fn attached_to(file: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let want = file.as_os_str().to_string_lossy().into_owned();
    let deleted = format!("{want} (deleted)");
    for e in std::fs::read_dir("/sys/block")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Some(b) = backing_file(&name) {
            let b = b.to_string_lossy();
            if b == want || b == deleted {
                out.push(PathBuf::from(format!("/dev/{name}")));
            }
        }
    }
    Ok(out)
}
