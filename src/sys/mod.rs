//! The ONLY module with `unsafe`: thin syscall wrappers returning `io::Result`.
//! Every `unsafe` block carries a `// SAFETY:` comment.
//!
//! Wrappers exist only where neither `nix` nor `rustix` offers a safe call (raw `clone` without a
//! stack, `fork`, `close_range`, the new mount API, `SIOCSIFFLAGS`/`SIOCGIFMTU`, integer socket
//! options nix lacks (`NETLINK_EXT_ACK`), the session keyring `keyctl`, and in [`btrfs`] and
//! [`loopdev`] the btrfs subvolume and loop-device ioctls). Callers of [`fork`] and
//! [`clone_fork`] must be single-threaded (the runtime only calls them from its exec'd helpers).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `p` as a C string (EINVAL for a path with a NUL).
pub fn cpath(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `fork()`. Returns 0 in the child, the child's pid in the parent.
/// Only call from a single-threaded process (the runtime's helpers are).
pub fn fork() -> io::Result<i32> {
    // SAFETY: fork has no memory-safety preconditions of its own; the caller guarantees the process
    // is single-threaded, so the child's copy of every lock and allocator state is consistent.
    let r = unsafe { libc::fork() };
    check(r as libc::c_long).map(|v| v as i32)
}

/// Raw `clone(flags | SIGCHLD)` without a new stack: fork-like (the child continues here on a copy
/// of the address space), but able to create namespaces, e.g. `CLONE_NEWPID` making the child pid 1.
/// Only call from a single-threaded process.
pub fn clone_fork(flags: libc::c_int) -> io::Result<i32> {
    // SAFETY: without CLONE_VM/CLONE_THREAD the child gets a private copy of memory, exactly as with
    // fork(); a NULL stack means "use the current stack", valid for a copy-on-write child. The other
    // pointer arguments (ptid, ctid, tls) are unused because no flag asks for them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    check(r).map(|v| v as i32)
}

/// `close_range(first, u32::MAX, flags)`; `cloexec` marks the fds close-on-exec instead of closing.
pub fn close_range_from(first: u32, cloexec: bool) -> io::Result<()> {
    close_range(first, u32::MAX, cloexec)
}

/// `close_range(first, last, flags)`.
pub fn close_range(first: u32, last: u32, cloexec: bool) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    let flags: libc::c_uint = if cloexec {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range takes plain integers. Closing fds that Rust objects still own would be a
    // logic error; callers use it only in freshly exec'd helpers or right before execve.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    check(r).map(|_| ())
}

/// Close every fd from 3 up except those in `keep` (in a forked child, before it serves).
pub fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&f| f >= 3)
        .map(|&f| f as u32)
        .collect();
    crate::util::sort::sort(&mut keep);
    let mut first = 3u32;
    for k in keep {
        if k > first {
            close_range(first, k - 1, false)?;
        }
        first = first.max(k + 1);
    }
    close_range_from(first, false)
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`: a detached
/// copy of the mount at `path`.
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let mut flags: libc::c_uint = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd = check(r)? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH [| AT_RECURSIVE])`: a
/// detached copy of the mount at an already opened path (an `O_PATH` fd), so nothing is looked
/// up by name again between the check and the mount.
pub fn open_tree_clone_fd(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags: libc::c_uint = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is a static empty C string; the fd is a borrowed open fd.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    let fd = check(r)? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `MOUNT_ATTR_RDONLY` for [`mount_setattr_flags`].
pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// Propagation types for [`mount_setattr_propagation`] set on a container's mount (private
/// and slave mounts are made so by how they are copied).
pub const MS_SHARED: u64 = libc::MS_SHARED;
pub const MS_UNBINDABLE: u64 = libc::MS_UNBINDABLE;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], attr)` on the mount `mnt` (an open
/// tree, detached or attached).
fn mount_setattr(mnt: BorrowedFd<'_>, attr: &MountAttr, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is a static empty C string, `attr` is a valid repr(C) mount_attr (the
    // size passed matches the struct) that lives across the call; the fds in it and `mnt` are
    // borrowed open fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r).map(|_| ())
}

/// Set per-mount flags (e.g. [`MOUNT_ATTR_RDONLY`]) on a mount.
pub fn mount_setattr_flags(mnt: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(mnt, &attr, recursive)
}

/// Set a mount's propagation type ([`MS_SHARED`] or [`MS_UNBINDABLE`]).
pub fn mount_setattr_propagation(
    mnt: BorrowedFd<'_>,
    propagation: u64,
    recursive: bool,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    mount_setattr(mnt, &attr, recursive)
}

/// Idmap a detached mount with the user namespace `userns` (`MOUNT_ATTR_IDMAP`).
pub fn mount_setattr_idmap(
    mnt: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    mount_setattr(mnt, &attr, recursive)
}

/// `move_mount(from, "", to, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`: attach a
/// detached mount on an opened mount point (an `O_PATH` fd), with no path lookup.
pub fn move_mount_fd(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both paths are static empty C strings; both fds are borrowed open fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(r).map(|_| ())
}

/// `move_mount(fd, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH)`: attach a detached mount at `dst`.
pub fn move_mount_to(mnt: BorrowedFd<'_>, dst: &Path) -> io::Result<()> {
    let c = cpath(dst)?;
    // SAFETY: both strings are valid NUL-terminated C strings living across the call; the fd is open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r).map(|_| ())
}

/// One line of `/proc/PID/maps` (`start-end perms offset dev inode path`): the mapping's start
/// and end, its permissions and its path (empty for an anonymous mapping).
fn maps_line(line: &str) -> Option<(usize, usize, &str, &str)> {
    let mut f = line.splitn(6, ' ');
    let (range, perms) = (f.next()?, f.next()?);
    let path = f.nth(3).unwrap_or("").trim_start();
    let (a, b) = range.split_once('-')?;
    let (a, b) = (
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    );
    Some((a, b, perms, path))
}

/// For a long-running process that runs a small part of this large binary (the daemon): every
/// mapping of the executable gets `MADV_RANDOM` (a page fault there maps the page touched, not
/// the sixteen around it, and reads nothing ahead), and the code pages mapped so far are let go
/// (`MADV_DONTNEED` on the executable, never-written mappings only: they come back from the page
/// cache when run again). Returns the bytes of code mappings advised.
pub fn trim_own_code() -> io::Result<usize> {
    // The mappings are found first and the advice given last, so that little code runs (and
    // is mapped again) after it.
    let mut ranges: Vec<(usize, usize, bool)> = Vec::with_capacity(8);
    {
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let exe = std::fs::read_link("/proc/self/exe")?;
        let exe = exe.to_string_lossy();
        for (a, b, perms, path) in maps.lines().filter_map(maps_line) {
            if path == exe {
                ranges.push((a, b.saturating_sub(a), perms == "r-xp"));
            }
        }
    }
    let mut code = 0;
    for (a, len, text) in ranges.iter().copied() {
        // SAFETY: advice on a whole mapping of our own executable: MADV_RANDOM changes no
        // contents; MADV_DONTNEED only on a read-only executable mapping, which is never written
        // (no copy-on-write page to lose), so its pages read back the same from the file.
        unsafe {
            if libc::madvise(a as *mut libc::c_void, len, libc::MADV_RANDOM) != 0 {
                return Err(io::Error::last_os_error());
            }
            if text {
                code += len;
                if libc::madvise(a as *mut libc::c_void, len, libc::MADV_DONTNEED) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
    }
    Ok(code)
}

/// A datagram socket for interface ioctls and an `ifreq` naming interface `name`.
fn ifreq_for(name: &str) -> io::Result<(OwnedFd, libc::ifreq)> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let b = name.as_bytes();
    if b.len() >= ifr.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Ok((sock, ifr))
}

/// Set `IFF_UP` on the interface `name` in the current network namespace (used for `lo`).
pub fn link_up(name: &str) -> io::Result<()> {
    let (sock, mut ifr) = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own; the socket fd is open.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } as libc::c_long)?;
    // SAFETY: after SIOCGIFFLAGS the union holds ifru_flags.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own; the socket fd is open.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } as libc::c_long)?;
    Ok(())
}

/// `setsockopt(fd, level, name, &val, sizeof(int))` for an integer option that neither nix nor
/// rustix names (netlink's `SOL_NETLINK`/`NETLINK_EXT_ACK`).
pub fn set_sockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `val`, a c_int that lives across the call; the fd
    // is borrowed, so open.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&val as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

/// Replace this process's session keyring with a new, empty, anonymous one
/// (`keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`), owned by the caller's uid. A kernel without
/// keyrings (ENOSYS) has nothing to share, so that is success too.
pub fn join_new_session_keyring() -> io::Result<()> {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a NULL name reads no memory of ours; the remaining
    // keyctl arguments are unused by this operation.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING as libc::c_long,
            std::ptr::null::<libc::c_char>(),
        )
    };
    match check(r) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Send `sig` to the foreground process group of the terminal whose pty master is `master`
/// (`TIOCSIG`).
pub fn pty_signal(master: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: TIOCSIG takes the signal number as its argument and reads no memory of ours.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSIG, sig) };
    check(r as libc::c_long).map(drop)
}

/// Let the calling thread run only when a CPU would otherwise be idle (`SCHED_IDLE`, `on`), or
/// as other threads again (`SCHED_OTHER`): for background work that must not slow what users
/// wait for. While idle it must not hold a lock others wait on (it may not run for a long
/// time), nor make entries in a directory others use. Its disk I/O keeps its class: the idle
/// I/O class waits for the disk to have been idle for a while (BFQ: 200 ms) before each
/// request. A failure leaves the thread as it was.
pub fn run_when_idle(on: bool) {
    thread_run_when_idle(0, on);
}

/// [`run_when_idle`] for the thread `tid` of this process (0: the calling thread), e.g. to let
/// a background thread that must now end soon run as others do.
pub fn thread_run_when_idle(tid: i32, on: bool) {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if on {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: `param` is a valid sched_param for both policies; a tid that is gone only makes
    // the call fail (ESRCH).
    unsafe { libc::sched_setscheduler(tid, policy, &param) };
}

/// Reset every signal disposition to default and unblock all signals (before exec'ing a command).
pub fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; invalid signal numbers just return EINVAL.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Ignore `sig` (e.g. SIGPIPE, SIGHUP in the monitor).
pub fn ignore_signal(sig: libc::c_int) {
    // SAFETY: SIG_IGN is always a valid disposition.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// The soft limit of open files (1024, the kernel's default, when it cannot be read).
pub fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Grow this process's fd table to hold `n` descriptors now. The kernel grows it by doubling as
/// descriptors are opened, and each growth in a process with more than one thread waits for an
/// RCU grace period (10 to 20 ms on this machine's VM) so that no thread still reads the old
/// table; in a process with one thread it waits for nothing. Call it before threads exist.
pub fn reserve_fds(n: u32) -> io::Result<()> {
    if n < 2 {
        return Ok(());
    }
    let base = std::fs::File::open("/")?;
    let high = nix::fcntl::fcntl(&base, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(n as RawFd - 1))
        .map_err(io::Error::from)?;
    nix::unistd::close(high).map_err(io::Error::from)
}

/// `execve`, tried again for up to a second while the file is busy (ETXTBSY: some process
/// holds it open for writing). The daemon writes container files (a volume copied from its
/// image, a pushed file) on one thread while another forks a helper: until that child execs,
/// it holds a copy of every fd, the written file's too. That passes in microseconds, but a
/// busy CPU can stretch it; a file kept open for writing still fails after the second.
/// Returns only on failure.
pub fn execve_when_free(
    prog: &std::ffi::CStr,
    argv: &[CString],
    env: &[CString],
) -> nix::errno::Errno {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        let Err(e) = nix::unistd::execve(prog, argv, env);
        if e != nix::errno::Errno::ETXTBSY || std::time::Instant::now() >= deadline {
            return e;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// `_exit(code)`: leave a forked child without running atexit handlers or flushing std buffers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Wrap a raw fd number that the caller knows is open and owned by nobody else (an fd inherited
/// through exec whose number came on the command line).
pub fn own_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // F_GETFD proves the fd is open before we take ownership.
    // SAFETY: fcntl(F_GETFD) on any integer is harmless.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) } as libc::c_long)?;
    // SAFETY: the fd is open (checked above) and, by the caller's contract, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SIGRTMIN() + n` (glibc reserves the first real-time signals).
pub fn sigrtmin() -> libc::c_int {
    libc::SIGRTMIN()
}

/// A pidfd of process `pid` (EINVAL for a pid that cannot name one). It names that process for
/// good only when the caller knows `pid` is not reused meanwhile (its unreaped child), or checks
/// after opening.
pub fn pidfd_open(pid: i32) -> rustix::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or(rustix::io::Errno::INVAL)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
}

/// Send signal number `sig` (which may be a real-time signal nix cannot name) through a pidfd.
pub fn pidfd_send_raw(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer arguments; a NULL siginfo means "as kill() would send it".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(r).map(|_| ())
}

pub mod bpf;
pub mod btrfs;
pub mod loopdev;
pub mod overlay;
pub mod seccomp;
mod static_libc;

/// Run `f` with this thread's filesystem ids set to `uid`/`gid`, then back to root's (also
/// when `f` panics); ids, capabilities and securebits are per thread, so no other thread sees
/// it. With `keep_caps` the thread keeps its capabilities meanwhile (`SECBIT_NO_SETUID_FIXUP`,
/// its securebits put back after): for files made as a container's root in its idmapped tree,
/// where an inode's owner must be mapped in the mount's idmap. Without, it loses its
/// filesystem capabilities while the ids are not root's, as any such change makes it.
pub fn as_fs_ids<T>(uid: u32, gid: u32, keep_caps: bool, f: impl FnOnce() -> T) -> T {
    use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    struct Back(Option<libc::c_ulong>);
    impl Drop for Back {
        fn drop(&mut self) {
            setfsuid(Uid::from_raw(0));
            setfsgid(Gid::from_raw(0));
            if let Some(old) = self.0 {
                // SAFETY: PR_SET_SECUREBITS takes an integer; it only changes this thread's bits.
                unsafe { libc::prctl(libc::PR_SET_SECUREBITS, old, 0, 0, 0) };
            }
        }
    }
    let kept = keep_caps
        .then(|| {
            // SAFETY: PR_GET_SECUREBITS takes no pointer; it reads this thread's bits.
            let old = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
            let old = libc::c_ulong::try_from(old).ok()?;
            // SAFETY: as above; needs CAP_SETPCAP, which the daemon has.
            let set = unsafe {
                libc::prctl(
                    libc::PR_SET_SECUREBITS,
                    old | SECBIT_NO_SETUID_FIXUP,
                    0,
                    0,
                    0,
                )
            };
            (set == 0).then_some(old)
        })
        .flatten();
    let back = Back(kept);
    setfsgid(Gid::from_raw(gid));
    setfsuid(Uid::from_raw(uid));
    let r = f();
    drop(back);
    r
}

/// Run `f` as a user namespace's root acts on one inode (the file requests on a running
/// container): filesystem ids `uid`/`gid` (its root's host ids), no supplementary groups, and the
/// filesystem capabilities only when `privileged`, that is when the inode's owner and group are
/// ids the namespace maps, so its root's capabilities apply to it (the kernel's
/// `capable_wrt_inode_uidgid`); otherwise the kernel checks the mode bits as for any other user,
/// as it would for the container's root. Everything is per thread and put back after, also when
/// `f` panics.
pub fn as_ns_root<T>(uid: u32, gid: u32, privileged: bool, f: impl FnOnce() -> T) -> T {
    struct Groups(Vec<libc::gid_t>);
    impl Drop for Groups {
        fn drop(&mut self) {
            set_thread_groups(&self.0);
        }
    }
    let _saved = Groups(thread_groups());
    set_thread_groups(&[]);
    as_fs_ids(uid, gid, privileged, f)
}

/// This thread's supplementary groups.
fn thread_groups() -> Vec<libc::gid_t> {
    // SAFETY: with a size of 0 getgroups writes nothing and returns how many there are; glibc's
    // getgroups is the plain system call, which reads this thread's creds.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups = vec![0; usize::try_from(count).unwrap_or(0)];
    // SAFETY: getgroups writes at most `groups.len()` gids into the buffer, which lives across
    // the call (this thread's groups change only through this thread).
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(n).unwrap_or(0));
    groups
}

/// Become root (ids 0, no supplementary groups) of the user namespace just joined, by the raw
/// system calls (glibc's wrappers would signal threads a forked child does not have).
pub fn become_ns_root() -> io::Result<()> {
    // SAFETY: setgroups with a count of 0 reads nothing; setresgid/setresuid take integers. Each
    // changes only the calling thread's creds.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0usize,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, 0u32, 0u32, 0u32))?;
        check(libc::syscall(libc::SYS_setresuid, 0u32, 0u32, 0u32))?;
    }
    Ok(())
}

/// Set this thread's supplementary groups alone: the raw system call (glibc's `setgroups` sets
/// them in every thread of the process).
fn set_thread_groups(groups: &[libc::gid_t]) {
    // SAFETY: setgroups reads `groups.len()` gids from the slice, which lives across the call;
    // the system call changes only the calling thread's creds (needs CAP_SETGID, which the
    // daemon has while its fs ids are root's).
    unsafe {
        libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
    }
}

/// Cap glibc's malloc arenas (`M_ARENA_MAX`): the daemon runs a thread per connection and per
/// watched container, and glibc would otherwise give busy threads arenas of their own, which
/// shows up as resident memory that grows with the number of containers.
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt only adjusts allocator tunables; M_ARENA_MAX (-8) takes any positive int.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_lines_with_and_without_a_path() {
        assert_eq!(
            super::maps_line(
                "55d0c0000000-55d0c0100000 r-xp 00001000 fe:00 123        /usr/bin/bivy (deleted)"
            ),
            Some((
                0x55d0_c000_0000,
                0x55d0_c010_0000,
                "r-xp",
                "/usr/bin/bivy (deleted)"
            ))
        );
        assert_eq!(
            super::maps_line("7ffc00000000-7ffc00010000 rw-p 00000000 00:00 0"),
            Some((0x7ffc_0000_0000, 0x7ffc_0001_0000, "rw-p", ""))
        );
        assert_eq!(super::maps_line("garbage"), None);
    }

    #[test]
    fn the_fd_table_is_grown_ahead() {
        let size = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("FDSize:")
                        .map(|v| v.trim().parse::<u32>().unwrap())
                })
                .unwrap()
        };
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap()
            .0;
        let want = 4096.min(limit as u32);
        super::reserve_fds(want).unwrap();
        assert!(size() >= want, "FDSize {} < {want}", size());
    }

    /// A program held open for writing a moment longer than the exec is tried runs once it is
    /// let go; one held longer than a second gives ETXTBSY.
    #[test]
    fn an_exec_waits_while_its_file_is_busy_for_a_moment() {
        use std::ffi::CString;
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::util::tempdir::TempDir::new("execbusy");
        let prog = dir.path().join("true");
        std::fs::copy("/bin/true", &prog).expect("copy /bin/true");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = CString::new(prog.to_str().expect("utf-8")).expect("path");
        let argv = [CString::new("true").expect("argv")];
        let run = |held: std::time::Duration| -> i32 {
            let w = std::fs::OpenOptions::new()
                .write(true)
                .open(&prog)
                .expect("open for writing");
            // The child only closes its copy, sleeps and execs: nothing that allocates or locks.
            match super::fork().expect("fork") {
                0 => {
                    drop(w);
                    let e = super::execve_when_free(&path, &argv, &[]);
                    super::exit_now(if e == nix::errno::Errno::ETXTBSY {
                        7
                    } else {
                        8
                    })
                }
                pid => {
                    std::thread::sleep(held);
                    drop(w);
                    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
                        other => panic!("child: {other:?}"),
                    }
                }
            }
        };
        assert_eq!(run(std::time::Duration::from_millis(100)), 0);
        assert_eq!(run(std::time::Duration::from_millis(1500)), 7);
    }
}
