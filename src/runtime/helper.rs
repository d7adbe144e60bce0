//! Helper processes' plumbing, shared by the monitor, `exec`, hot-plug and CRIU: the sealed copy
//! of the binary they run from (CVE-2019-5736) and the command that starts one, inheritable fds,
//! pidfiles that name one process for the system's lifetime (pid and start time) and pidfds
//! opened from them, run-time file replacement, and `BIVY_TRACE` step timings.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Error, Result};
use crate::sys;

/// With `BIVY_TRACE=1` (passed through to the helpers), the monitor logs each setup step's time.
pub(crate) fn trace(t0: Instant, step: &str) {
    if std::env::var_os("BIVY_TRACE").is_some() {
        crate::util::trace::line("bivy monitor:", t0, step);
    }
}

pub(crate) fn err(step: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error(format!("{step} {}: {e}", path.display()))
}

/// The bivy binary as a sealed memfd (one copy per process, shared by every helper it spawns).
pub(crate) fn sealed_exe() -> Result<&'static OwnedFd> {
    static EXE: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = EXE.get() {
        return Ok(fd);
    }
    let src = std::env::var_os("BIVY_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    // Sealing against writes fails with EBUSY while the kernel still holds some page of the
    // copy (seen once under load, after the kernel's own 150 ms of waiting): asked again a few
    // times, then with a fresh copy.
    let mut last = None;
    for _ in 0..3 {
        let to = copy_into_memfd(&src)?;
        for pause_ms in [0, 20, 80, 200] {
            std::thread::sleep(Duration::from_millis(pause_ms));
            match seal(&to) {
                Ok(()) => {
                    let _ = EXE.set(OwnedFd::from(to));
                    return Ok(EXE.get().expect("just set"));
                }
                Err(e) if e == rustix::io::Errno::BUSY => last = Some(e),
                Err(e) => return Err(Error(format!("seal memfd: {e}"))),
            }
        }
    }
    Err(Error(format!(
        "seal memfd: {} (the kernel kept a page of the copy busy)",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}

/// A new memfd (sealable, close-on-exec) holding a copy of the file `src`.
fn copy_into_memfd(src: &Path) -> Result<File> {
    use rustix::fs::MemfdFlags;
    let mut from = File::open(src).map_err(|e| err("open", src, e))?;
    let memfd = rustix::fs::memfd_create("bivy", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| Error(format!("memfd_create: {e}")))?;
    let mut to = File::from(memfd);
    std::io::copy(&mut from, &mut to).map_err(|e| err("copy into memfd", src, e))?;
    Ok(to)
}

/// Seal a memfd against every change.
fn seal(f: &File) -> rustix::io::Result<()> {
    use rustix::fs::SealFlags;
    rustix::fs::fcntl_add_seals(
        f,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )
}

/// A copy of `fd` without CLOEXEC and numbered 3 or above (so the child's stdio setup cannot
/// clobber it even if the caller runs with stdio closed), to be named on a helper's command line.
pub(crate) fn dup_inheritable(fd: &OwnedFd) -> Result<OwnedFd> {
    let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD(3))
        .map_err(|e| Error(format!("dup: {e}")))?;
    sys::own_inherited_fd(n).map_err(|e| Error(format!("dup: {e}")))
}

/// A Command running the sealed binary (`/proc/self/fd/N`, resolved by execve before CLOEXEC
/// closes N), with a clean environment.
pub(crate) fn helper_command(arg0: &str) -> Result<Command> {
    let exe = sealed_exe()?;
    let mut c = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    c.arg0(arg0)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for var in ["BIVY_TRACE", super::rootfs::HOST_SIDE_HELPERS] {
        if let Some(v) = std::env::var_os(var) {
            c.env(var, v);
        }
    }
    Ok(c)
}

/// Spawn `cmd` (a [`helper_command`] with its verb; `what` names it in an error) with `run_dir`
/// and the number of its end of a new socket pair appended: that end is the one fd it inherits
/// besides stdio (dup'd without CLOEXEC so it survives exec; the original is closed at once, so
/// only the child holds it). Our end and the child.
pub(crate) fn spawn_with_socket(
    mut cmd: Command,
    what: &str,
    run_dir: &std::ffi::OsStr,
) -> Result<(OwnedFd, std::process::Child)> {
    let (ours, theirs) = super::chan::pair()?;
    let inherit = dup_inheritable(&theirs)?;
    drop(theirs);
    cmd.arg(run_dir).arg(inherit.as_raw_fd().to_string());
    let child = cmd
        .spawn()
        .map_err(|e| Error(format!("spawn {what}: {e}")))?;
    Ok((ours, child))
}

/// A helper's side of [`spawn_with_socket`]: `args` are `<run_dir> <fd>`; every other inherited
/// fd but stdio is closed (CVE-2024-21626 style leaks) and the socket is ours. Exits with code 2
/// (`who` names it in the message) when the arguments are not that.
pub(crate) fn inherited_socket(args: &[String], who: &str) -> (String, OwnedFd) {
    let (Some(run_dir), Some(fd)) = (
        args.first(),
        args.get(1).and_then(|f| f.parse::<i32>().ok()),
    ) else {
        eprintln!("usage: bivy __{who} RUN_DIR SOCK_FD");
        std::process::exit(2)
    };
    if fd < 3 {
        eprintln!("bivy {who}: socket fd {fd} collides with stdio");
        std::process::exit(2)
    }
    let _ = sys::close_range(3, fd as u32 - 1, false);
    let _ = sys::close_range_from(fd as u32 + 1, false);
    match sys::own_inherited_fd(fd) {
        Ok(s) => (run_dir.clone(), s),
        Err(e) => {
            eprintln!("bivy {who}: socket fd {fd}: {e}");
            std::process::exit(2)
        }
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot): with the pid it names one
/// process for the lifetime of the system (pid reuse gives another start time).
pub(crate) fn proc_starttime(pid: i32) -> Option<u64> {
    let s = crate::util::fs::read_one_piece(Path::new(&format!("/proc/{pid}/stat"))).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    if after.starts_with('Z') || after.starts_with('X') {
        return None;
    }
    after.split(' ').nth(19)?.parse().ok()
}

/// Replace `path` atomically (temp + rename) without fsync: for run-time files (pid files, the spec
/// copy, the stop request) that mean nothing after a reboot. The exit record uses the fsync'ed
/// `atomic_write` instead. Saves several ms per start on a busy disk.
/// Replace `path` with `data` through a rename, readable by root alone (the spec holds the
/// instance's environment).
pub(crate) fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let res = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| fs::rename(&tmp, path));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(|e| err("write", path, e))
}

pub(crate) fn write_pidfile(path: &Path, pid: i32) -> Result<()> {
    let st = proc_starttime(pid).ok_or_else(|| {
        err(
            "read start time of",
            Path::new(&format!("/proc/{pid}")),
            "gone",
        )
    })?;
    replace_file(path, format!("{pid} {st}\n").as_bytes())
}

/// The pid in a pidfile if that very process (same start time) is still alive.
pub(crate) fn live_pid(path: &Path) -> Option<i32> {
    live_process(path).map(|(pid, _)| pid)
}

/// The pid and start time in a pidfile if that very process is still alive.
pub(crate) fn live_process(path: &Path) -> Option<(i32, u64)> {
    let s = crate::util::fs::read_one_piece(path).ok()?;
    let mut it = s.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let st: u64 = it.next()?.parse().ok()?;
    alive(pid, st).then_some((pid, st))
}

/// Whether the process `pid` that started at `st` is alive (see [`alive`]).
pub(crate) fn still_alive((pid, st): (i32, u64)) -> bool {
    alive(pid, st)
}

/// Processes pinned by a pidfd (see [`alive`]), and the table's size at which it is next swept
/// of ended ones.
type Pinned = (std::collections::HashMap<(i32, u64), OwnedFd>, usize);

fn pinned() -> std::sync::MutexGuard<'static, Pinned> {
    use std::sync::{LazyLock, Mutex};
    static PINNED: LazyLock<Mutex<Pinned>> =
        LazyLock::new(|| Mutex::new((std::collections::HashMap::new(), 0)));
    PINNED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the process behind a pidfd has ended (a zombie has): readable without waiting.
fn ended(fd: &OwnedFd) -> bool {
    wait_pidfd(fd, Duration::ZERO)
}

/// Whether the process `pid` that started at `st` (clock ticks since boot) is alive, a zombie
/// counting as gone. The first answer for a process is its `/proc/PID/stat`; a pidfd opened on
/// it then (checked against the start time once more, so it is that very process) is kept, and
/// later answers are a poll of it: no path walk and no `/proc` rendering, where a listing asks
/// for every running container's monitor and init each time. A pidfd is readable once its
/// process has ended (zombies too); ended ones leave the table when seen, in sweeps as it grows
/// and at [`release_ended`] (the daemon's, each time a container's monitor ends), so the table
/// holds about two fds per running container, and never more than an eighth of the fd limit.
/// Without a pidfd (past that, or at the fd limit) the answer is `/proc`'s, as before.
fn alive(pid: i32, st: u64) -> bool {
    {
        let mut g = pinned();
        if let Some(fd) = g.0.get(&(pid, st)) {
            if !ended(fd) {
                return true;
            }
            g.0.remove(&(pid, st));
            return false;
        }
    }
    if proc_starttime(pid) != Some(st) {
        return false;
    }
    let Ok(fd) = crate::sys::pidfd_open(pid) else {
        return proc_starttime(pid) == Some(st);
    };
    if proc_starttime(pid) != Some(st) {
        return false;
    }
    let mut g = pinned();
    // Looked at again under the table's lock: a process that ended since its start time was
    // read may already have had its `release_ended`, which cannot see a pidfd put in after it
    // (that one would stay open until some other container ended). A process that ends after
    // this is seen ended by the release that follows its end.
    if ended(&fd) {
        return false;
    }
    let (table, sweep_at) = &mut *g;
    if table.len() >= *sweep_at {
        table.retain(|_, fd| !ended(fd));
        *sweep_at = (table.len() * 2).max(64);
    }
    // An eighth of the fd limit at most (see `fd_share`; past it, answers come from `/proc`
    // as before pinning).
    if table.len() < fd_share(Kept::Pidfds) {
        table.insert((pid, st), fd);
    }
    true
}

/// The runtime's kept sets of fds: the pinned processes' pidfds and the cgroup files kept for
/// usage reads.
#[derive(Clone, Copy)]
pub(crate) enum Kept {
    Pidfds,
    CgroupFiles,
}

/// How many fds a kept set may hold. Together half the soft limit of open files (read once; the
/// daemon raises it at its start, before anything is kept), shared as a running container
/// uses them: two pidfds (its monitor and init) to seven usage files, so an eighth and three
/// eighths. The other half stays for connections, the monitors' own pidfds, logs and images.
pub(crate) fn fd_share(set: Kept) -> usize {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let limit = *LIMIT.get_or_init(sys::open_files_limit);
    let share = match set {
        Kept::Pidfds => limit / 8,
        Kept::CgroupFiles => limit / 8 * 3,
    };
    usize::try_from(share).unwrap_or(usize::MAX)
}

/// Let go of the pidfds of pinned processes that have ended.
pub(crate) fn release_ended() {
    pinned().0.retain(|_, fd| !ended(fd));
}

/// A pidfd for the process in a pidfile, verified to be that very process after opening.
pub(crate) fn live_pidfd(path: &Path) -> Option<(i32, OwnedFd)> {
    let pid = live_pid(path)?;
    let fd = crate::sys::pidfd_open(pid).ok()?;
    // Re-check after opening: the pidfd now pins the process, so a match proves it is the right one.
    (live_pid(path) == Some(pid)).then_some((pid, fd))
}

/// Wait until a pidfd is readable (its process exited), up to `timeout`.
pub(crate) fn wait_pidfd(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut p, ms) {
            Ok(n) if n > 0 => return true,
            Ok(_) if left.is_zero() => return false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
        if left.is_zero() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfiles_are_not_fooled_by_pid_reuse() {
        let dir = std::env::temp_dir().join(format!("bivy-pidfile-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.pid");
        let me = std::process::id() as i32;
        write_pidfile(&p, me).unwrap();
        assert_eq!(live_pid(&p), Some(me));
        assert!(live_pidfd(&p).is_some());
        // Same pid, another start time: a different process.
        let st = proc_starttime(me).unwrap();
        fs::write(&p, format!("{me} {}\n", st + 1)).unwrap();
        assert_eq!(live_pid(&p), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pinned_process_is_seen_ending() {
        let dir = std::env::temp_dir().join(format!("bivy-pidfile-end-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("child.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        write_pidfile(&p, pid).unwrap();
        // Twice: the second answer comes from the pinned pidfd.
        assert_eq!(live_pid(&p), Some(pid));
        assert_eq!(live_pid(&p), Some(pid));
        child.kill().unwrap();
        // Killed but not reaped: a zombie is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while live_pid(&p).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(live_pid(&p), None, "a zombie counts as gone");
        child.wait().unwrap();
        assert_eq!(live_pid(&p), None);
        // Pinned again by another process, ended, then let go of without being asked about.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let opid = other.id() as i32;
        let ost = proc_starttime(opid).unwrap();
        assert!(alive(opid, ost));
        assert!(pinned().0.contains_key(&(opid, ost)));
        other.kill().unwrap();
        other.wait().unwrap();
        release_ended();
        assert!(!pinned().0.contains_key(&(opid, ost)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
