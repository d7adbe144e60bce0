//! `bpf(2)` for cgroup device programs (`linux/bpf.h`): load a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program, attach it to a cgroup2 directory, list what is attached there, and detach by id.
//! The program itself is built in `runtime::cgroup::bpf`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::check;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Several programs on one cgroup, and below it: every one on the path must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `bpf(cmd, attr, size)`; `attr` is one of the `#[repr(C)]` structs below.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr points to a live, initialised `#[repr(C)]` value of exactly the size passed,
    // laid out as the kernel's union member for `cmd`; the kernel reads (and for a query
    // writes) only within it, and the pointers inside it point to live buffers of the lengths
    // given next to them.
    check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    })
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a successful BPF_PROG_LOAD or BPF_PROG_GET_FD_BY_ID returns a new fd nobody else
    // owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Load `insns` (each a `struct bpf_insn`) as a cgroup device program named `name`. When the
/// verifier refuses it, its log is in the error.
pub fn load_device_program(insns: &[u64], name: &str) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..ProgLoad::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EINVAL)) => {
            // Again with the verifier's log, for the message.
            let mut log = vec![0u8; 4096];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                drop(owned(fd));
            }
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let text = text.trim();
            if text.is_empty() {
                return Err(e);
            }
            Err(io::Error::new(e.kind(), format!("{e}; verifier: {text}")))
        }
        Err(e) => Err(e),
    }
}

/// The ids of the device programs attached directly to the cgroup `cg` (at most 64, the
/// kernel's limit per cgroup).
pub fn device_programs(cg: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = ProgQuery {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQuery::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

fn attach_cmd(
    cmd: libc::c_long,
    cg: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    flags: u32,
) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: flags,
        ..ProgAttach::default()
    };
    bpf(cmd, &mut attr).map(drop)
}

/// Attach the device program `prog` to the cgroup `cg`, beside those already there
/// (`BPF_F_ALLOW_MULTI`). The attachment holds the program: `prog` may be closed after.
pub fn attach_device_program(cg: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    attach_cmd(BPF_PROG_ATTACH, cg, prog, BPF_F_ALLOW_MULTI)
}

/// Detach the device program with id `id` from the cgroup `cg`. Ok(false) when it is no
/// longer there (gone or detached in between).
pub fn detach_device_program(cg: BorrowedFd<'_>, id: u32) -> io::Result<bool> {
    let mut attr = GetFdById {
        prog_id: id,
        ..GetFdById::default()
    };
    let prog = match bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => owned(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    use std::os::fd::AsFd;
    match attach_cmd(BPF_PROG_DETACH, cg, prog.as_fd(), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
