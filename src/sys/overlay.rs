//! Overlay mounts through the new mount API (`fsopen`, `fsconfig`, `fsmount`): each layer is
//! given on its own (`lowerdir+`, Linux 6.8+), so no path needs escaping, and the kernel's own
//! message for a refused layer can be read back. The mount is made detached; the caller attaches
//! it (`move_mount`). [`fsmount`] makes only system calls, so a forked child may call it. The
//! same API answers whether proc takes a pid namespace as an option ([`proc_takes_pidns`]).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::check;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// The steps of making an overlay, as its errors name them; [`fsmount`] and the child of
/// [`mount_in_userns`] report an index into this (0: none failed).
const STEPS: [&str; 10] = [
    "mounted",
    "join the user namespace",
    "become its root",
    "make a mount namespace",
    "fsopen(overlay)",
    "lowerdir+",
    "upperdir",
    "workdir",
    "create",
    "fsmount",
];
const STEP_USERNS: usize = 1;
const STEP_NS_ROOT: usize = 2;
const STEP_MOUNT_NS: usize = 3;
const STEP_FSOPEN: usize = 4;
const STEP_LOWERDIR: usize = 5;
const STEP_UPPERDIR: usize = 6;
const STEP_WORKDIR: usize = 7;
const STEP_CREATE: usize = 8;
const STEP_FSMOUNT: usize = 9;

/// The layers: `lowers` top first; `upper` and `work` for a writable overlay (none: read-only).
pub struct Layers<'a> {
    pub lowers: &'a [&'a CStr],
    pub upper_work: Option<(&'a CStr, &'a CStr)>,
}

fn config(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CStr>,
    value: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: key and value are NULL or NUL-terminated strings living across the call; the fd is
    // an open fs context.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            ptr(key),
            ptr(value),
            0 as libc::c_int,
        )
    };
    check(r).map(drop)
}

/// A new overlay filesystem context, with `userxattr` (the overlay's own attributes are
/// `user.overlay.*`: what an overlay mounted in a user namespace must use, so the same layers
/// work mounted by the host and by a container) and `index=off` (no inode index, which would
/// tie the upper layer to one lower layer's file handles).
pub fn context() -> io::Result<OwnedFd> {
    // SAFETY: the name is a static NUL-terminated string; fsopen returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    let fs = check(r)? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs) };
    config(&fs, FSCONFIG_SET_FLAG, Some(c"userxattr"), None)?;
    config(&fs, FSCONFIG_SET_STRING, Some(c"index"), Some(c"off"))?;
    Ok(fs)
}

/// Whether `proc` takes the `pidns` option (Linux 6.15+): an instance for a descendant pid
/// namespace mounted by a process outside it. Asked of a filesystem context never created,
/// once per process (a spare monitor asks before it waits, off the start's path).
pub fn proc_takes_pidns() -> bool {
    static TAKES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TAKES.get_or_init(|| {
        // SAFETY: the name is a static NUL-terminated string; fsopen returns a new fd or -1.
        let r = unsafe { libc::syscall(libc::SYS_fsopen, c"proc".as_ptr(), FSOPEN_CLOEXEC) };
        let Ok(fs) = check(r) else { return false };
        // SAFETY: the kernel just returned this new fd and nothing else owns it.
        let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
        config(
            &fs,
            FSCONFIG_SET_STRING,
            Some(c"pidns"),
            Some(c"/proc/self/ns/pid"),
        )
        .is_ok()
    })
}

/// Give `layers` to the context `fs`, create the filesystem and mount it detached. On failure
/// the context is handed back with the error and the step that failed (in [`STEPS`]), for
/// [`log`].
pub fn fsmount(fs: OwnedFd, layers: &Layers<'_>) -> Result<OwnedFd, (io::Error, OwnedFd, usize)> {
    let mut step = STEP_LOWERDIR;
    let mut steps = || -> io::Result<RawFd> {
        for l in layers.lowers {
            config(&fs, FSCONFIG_SET_STRING, Some(c"lowerdir+"), Some(l))?;
        }
        if let Some((u, w)) = layers.upper_work {
            step = STEP_UPPERDIR;
            config(&fs, FSCONFIG_SET_STRING, Some(c"upperdir"), Some(u))?;
            step = STEP_WORKDIR;
            config(&fs, FSCONFIG_SET_STRING, Some(c"workdir"), Some(w))?;
        }
        step = STEP_CREATE;
        config(&fs, FSCONFIG_CMD_CREATE, None, None)?;
        step = STEP_FSMOUNT;
        let attr = if layers.upper_work.is_some() {
            0
        } else {
            super::MOUNT_ATTR_RDONLY as libc::c_uint
        };
        // SAFETY: fsmount takes the context fd and two integers; it returns a new fd or -1.
        let r = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attr) };
        check(r).map(|v| v as RawFd)
    };
    match steps() {
        // SAFETY: the kernel just returned this new fd and nothing else owns it.
        Ok(m) => Ok(unsafe { OwnedFd::from_raw_fd(m) }),
        Err(e) => Err((e, fs, step)),
    }
}

/// `e`, which ended step `step` (in [`STEPS`]), named, with the kernel's messages from the
/// filesystem context `fs` when it left some.
fn step_error(step: usize, e: io::Error, fs: Option<BorrowedFd<'_>>) -> io::Error {
    let what = STEPS.get(step).copied().unwrap_or("mount the overlay");
    let why = fs.map(log).unwrap_or_default();
    io::Error::new(
        e.kind(),
        if why.is_empty() {
            format!("{what}: {e}")
        } else {
            format!("{what}: {e} ({why})")
        },
    )
}

/// The messages the kernel left in a filesystem context (why a layer was refused), one line.
pub fn log(fs: BorrowedFd<'_>) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    // Each read returns one message ("e overlay: ..."); ENODATA once there are none left.
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                let m = String::from_utf8_lossy(&buf[..n]);
                out.push(
                    m.trim_start_matches(['e', 'w', 'i', ' '])
                        .trim()
                        .to_string(),
                );
            }
            _ => break,
        }
    }
    out.join("; ")
}

/// A detached overlay mount of `layers`, made here; its error carries the kernel's reason.
pub fn mount(layers: &Layers<'_>) -> io::Result<OwnedFd> {
    fsmount(context()?, layers)
        .map_err(|(e, fs, step)| step_error(step, e, Some(std::os::fd::AsFd::as_fd(&fs))))
}

/// Whether this kernel takes overlay layers one by one (`lowerdir+`, Linux 6.8+), which every
/// overlay mount here needs.
pub fn supported() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        context().is_ok_and(|fs| {
            config(&fs, FSCONFIG_SET_STRING, Some(c"lowerdir+"), Some(c"/")).is_ok()
        })
    })
}

/// [`fsmount`] by a short-lived child inside the user namespace `userns`, as its root, in a
/// mount namespace of its own (an overlay over idmapped layers must be made there: made by host
/// root it falls back to read-only, host.md 3b). The child shares our fd table (`CLONE_FILES`),
/// so the detached mount it makes is ours; it reports `[step, errno, fd]` on a pipe, the fd being
/// the mount's, or the filesystem context's when the overlay was refused (for its [`log`]).
/// Paths in `layers` may name our fds (`/proc/self/fd/N`): the child has the same. The child
/// makes system calls only (no allocation), so the caller may have other threads.
///
/// The child is not waited for: the end of its mount namespace waits for an RCU grace period
/// (0.2-0.3 ms here), which its report need not. The caller reaps it with its other children
/// (the monitor's loop reaps every child).
pub fn mount_in_userns(userns: BorrowedFd<'_>, layers: &Layers<'_>) -> io::Result<OwnedFd> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let pid = super::clone_fork(libc::CLONE_FILES)?;
    if pid == 0 {
        fn report(wr: &OwnedFd, v: [i32; 3]) -> ! {
            let mut b = [0u8; 12];
            for (i, x) in v.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
            }
            let _ = nix::unistd::write(wr, &b);
            super::exit_now(0)
        }
        let errno = |e: &io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        if let Err(e) = nix::sched::setns(userns, nix::sched::CloneFlags::CLONE_NEWUSER) {
            report(&wr, [STEP_USERNS as i32, e as i32, -1]);
        }
        if let Err(e) = super::become_ns_root() {
            report(&wr, [STEP_NS_ROOT as i32, errno(&e), -1]);
        }
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
            report(&wr, [STEP_MOUNT_NS as i32, e as i32, -1]);
        }
        let fs = match context() {
            Ok(fs) => fs,
            Err(e) => report(&wr, [STEP_FSOPEN as i32, errno(&e), -1]),
        };
        match fsmount(fs, layers) {
            Ok(m) => {
                let n = m.as_raw_fd();
                std::mem::forget(m);
                report(&wr, [0, 0, n]);
            }
            Err((e, fs, step)) => {
                let n = fs.as_raw_fd();
                std::mem::forget(fs);
                report(&wr, [step as i32, errno(&e), n]);
            }
        }
    }
    // The fd table is shared: our write end is the child's, so a child that died without a
    // word leaves it open. Its end is seen on a pidfd instead (it is our unreaped child, so
    // the pid names it).
    let gone = match super::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            return Err(e.into());
        }
    };
    let mut p = [
        rustix::event::PollFd::new(&rd, rustix::event::PollFlags::IN),
        rustix::event::PollFd::new(&gone, rustix::event::PollFlags::IN),
    ];
    while let Err(e) = rustix::event::poll(&mut p, None) {
        if e != rustix::io::Errno::INTR {
            return Err(e.into());
        }
    }
    drop(wr);
    let mut b = [0u8; 12];
    // The report is written whole before the child ends (12 bytes, one write to a pipe).
    let _ = rustix::io::ioctl_fionbio(&rd, true);
    let got = nix::unistd::read(&rd, &mut b).unwrap_or(0);
    if got != b.len() {
        return Err(io::Error::other("the mounting child ended without a word"));
    }
    let v = [0, 4, 8].map(|i| i32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
    // SAFETY: the child made this fd in our shared table and gave up its handle to it.
    let fd = (v[2] >= 0).then(|| unsafe { OwnedFd::from_raw_fd(v[2]) });
    if v[0] == 0 {
        return fd.ok_or_else(|| io::Error::other("no mount"));
    }
    Err(step_error(
        usize::try_from(v[0]).unwrap_or(usize::MAX),
        io::Error::from_raw_os_error(v[1]),
        fd.as_ref().map(std::os::fd::AsFd::as_fd),
    ))
}
