//! The per-container monitor (`bivy __monitor <run_dir> <status_fd>`) and the caller-side
//! lifecycle calls that talk to it through the run directory: start, state, stop, monitor_pidfd.
//!
//! The monitor is the bivy binary re-executed from a sealed memfd (CVE-2019-5736), daemonized
//! (fork + setsid, reparented away from the daemon) with every inherited fd closed except its status
//! socket (CVE-2024-21626). It lives in a private mount namespace of its own, so nothing it mounts
//! (the staging tmpfs with device nodes, the idmapped rootfs) ever appears on the host. It holds the
//! console pty master, clones init, records the exit and removes the cgroup. Its control path is
//! signals: SIGTERM/SIGINT to the monitor = kill the container; `stop()` also signals init directly.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::chan::{self, Msg};
use super::{
    confine, criu, disks, files, init, userns, Error, ExitInfo, Result, RootfsMode, Spec, State,
    StopMode,
};
use crate::sys;
use crate::util::fs::atomic_write;

/// With `BIVY_TRACE=1` (passed through to the helpers), the monitor logs each setup step's time.
pub(crate) fn trace(t0: Instant, step: &str) {
    if std::env::var_os("BIVY_TRACE").is_some() {
        eprintln!(
            "bivy monitor: {:>8.3} ms  {step}",
            t0.elapsed().as_secs_f64() * 1000.0
        );
    }
}

fn err(step: &str, path: &Path, e: impl std::fmt::Display) -> Error {
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
    let mut from = File::open(&src).map_err(|e| err("open", &src, e))?;
    use rustix::fs::{MemfdFlags, SealFlags};
    let memfd = rustix::fs::memfd_create("bivy", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| Error(format!("memfd_create: {e}")))?;
    let mut to = File::from(memfd);
    std::io::copy(&mut from, &mut to).map_err(|e| err("copy into memfd", &src, e))?;
    rustix::fs::fcntl_add_seals(
        &to,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )
    .map_err(|e| Error(format!("seal memfd: {e}")))?;
    let _ = EXE.set(OwnedFd::from(to));
    Ok(EXE.get().expect("just set"))
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
    if let Some(t) = std::env::var_os("BIVY_TRACE") {
        c.env("BIVY_TRACE", t);
    }
    Ok(c)
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot): with the pid it names one
/// process for the lifetime of the system (pid reuse gives another start time).
pub(crate) fn proc_starttime(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
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

fn write_pidfile(path: &Path, pid: i32) -> Result<()> {
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
    let s = fs::read_to_string(path).ok()?;
    let mut it = s.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let st: u64 = it.next()?.parse().ok()?;
    (proc_starttime(pid) == Some(st)).then_some(pid)
}

/// A pidfd for the process in a pidfile, verified to be that very process after opening.
pub(crate) fn live_pidfd(path: &Path) -> Option<(i32, OwnedFd)> {
    let pid = live_pid(path)?;
    let fd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid)?,
        rustix::process::PidfdFlags::empty(),
    )
    .ok()?;
    // Re-check after opening: the pidfd now pins the process, so a match proves it is the right one.
    (live_pid(path) == Some(pid)).then_some((pid, fd))
}

pub(crate) fn read_spec(run_dir: &Path) -> Result<Spec> {
    let p = run_dir.join(files::SPEC);
    let b = fs::read(&p).map_err(|e| err("read", &p, e))?;
    serde_json::from_slice(&b).map_err(|e| err("parse", &p, e))
}

/// The spec of a running container, or an error saying it is not running.
pub(crate) fn running_spec(run_dir: &Path) -> Result<Spec> {
    match state(run_dir)? {
        State::Running { .. } => read_spec(run_dir),
        State::Stopped { .. } => Err(Error(format!(
            "container in {} is not running",
            run_dir.display()
        ))),
    }
}

pub fn state(run_dir: &Path) -> Result<State> {
    let monitor = live_pid(&run_dir.join(files::MONITOR_PID));
    let init = live_pid(&run_dir.join(files::INIT_PID));
    if let (Some(monitor_pid), Some(init_pid)) = (monitor, init) {
        let frozen = read_spec(run_dir)
            .map(|s| confine::cgroup_is_frozen(s.cgroup_name()))
            .unwrap_or(false);
        return Ok(State::Running {
            init_pid,
            monitor_pid,
            frozen,
        });
    }
    let p = run_dir.join(files::EXIT);
    let last_exit = match fs::read(&p) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| err("parse", &p, e))?),
        Err(_) => None,
    };
    Ok(State::Stopped { last_exit })
}

pub fn monitor_pidfd(run_dir: &Path) -> Result<Option<OwnedFd>> {
    Ok(live_pidfd(&run_dir.join(files::MONITOR_PID)).map(|(_, fd)| fd))
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

fn is_systemd(init_pid: i32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{init_pid}/comm")).unwrap_or_default();
    let exe = fs::read_link(format!("/proc/{init_pid}/exe")).unwrap_or_default();
    comm.trim() == "systemd" || exe.file_name().is_some_and(|n| n == "systemd")
}

/// The monitor is gone but did not finish its teardown (it was killed): kill what is left in the
/// cgroup, remove it, and record the end.
fn cleanup_dead_monitor(run_dir: &Path) {
    let mp = run_dir.join(files::MONITOR_PID);
    if !mp.exists() {
        return;
    }
    if let Ok(spec) = read_spec(run_dir) {
        let _ = confine::cgroup_thaw(spec.cgroup_name());
        let _ = confine::cgroup_kill_all(spec.cgroup_name());
        for _ in 0..100 {
            if confine::cgroup_remove(spec.cgroup_name()).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let ep = run_dir.join(files::EXIT);
    if !ep.exists() {
        let exit = ExitInfo {
            code: 137,
            reason: "monitor died".into(),
        };
        if let Ok(js) = serde_json::to_vec(&exit) {
            let _ = atomic_write(&ep, &js);
        }
    }
    let _ = fs::remove_file(run_dir.join(files::INIT_PID));
    let _ = fs::remove_file(mp);
}

/// How often a clean stop repeats SIGRTMIN+3 to a systemd init that has not reacted yet.
const SYSTEMD_RESEND: Duration = Duration::from_secs(2);

pub fn stop(run_dir: &Path, mode: StopMode) -> Result<()> {
    let Some((_, mon)) = live_pidfd(&run_dir.join(files::MONITOR_PID)) else {
        cleanup_dead_monitor(run_dir);
        return Ok(());
    };
    let spec = read_spec(run_dir)?;
    let init = live_pidfd(&run_dir.join(files::INIT_PID));
    let req = run_dir.join(files::STOP_REQUEST);
    // A frozen container can neither handle a signal nor die: thaw it first (no-op otherwise).
    if confine::cgroup_is_frozen(spec.cgroup_name()) {
        let _ = confine::cgroup_thaw(spec.cgroup_name());
    }
    if let StopMode::Clean(timeout) = mode {
        replace_file(&req, b"clean")?;
        let mut systemd = false;
        if let Some((pid, fd)) = &init {
            // systemd halts on SIGRTMIN+3; sysvinit, busybox-style and LXC convention is SIGPWR.
            systemd = is_systemd(*pid);
            let sig = if systemd {
                sys::sigrtmin() + 3
            } else {
                libc::SIGPWR
            };
            sys::pidfd_send_raw(fd.as_fd(), sig)
                .map_err(|e| Error(format!("signal init {pid}: {e}")))?;
        }
        // systemd ignores SIGRTMIN+3 until it has set up its handlers early in boot, so a stop
        // right after a start would be lost: repeat it (starting halt.target again is a no-op).
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let step = if systemd {
                left.min(SYSTEMD_RESEND)
            } else {
                left
            };
            if wait_pidfd(&mon, step) {
                return Ok(());
            }
            if left <= step {
                break;
            }
            if let Some((_, fd)) = &init {
                let _ = sys::pidfd_send_raw(fd.as_fd(), sys::sigrtmin() + 3);
            }
        }
    }
    replace_file(&req, b"force")?;
    // Kill everything in the cgroup (also exec'd processes), and init itself: its death tears down
    // the whole pid namespace even if the cgroup kill missed something.
    let cg = confine::cgroup_kill_all(spec.cgroup_name());
    if let Some((_, fd)) = &init {
        let _ = sys::pidfd_send_raw(fd.as_fd(), libc::SIGKILL);
    }
    // Frozen meanwhile (or kill_all froze it): pending SIGKILLs act only once thawed.
    let _ = confine::cgroup_thaw(spec.cgroup_name());
    if !wait_pidfd(&mon, Duration::from_secs(30)) {
        return Err(Error(format!(
            "monitor of {} did not exit after the kill ({cg:?})",
            spec.name
        )));
    }
    Ok(())
}

pub fn start(spec: &Spec, run_dir: &Path) -> Result<State> {
    start_inner(spec, run_dir, None)
}

/// Start a monitor that restores the container from a CRIU checkpoint instead of starting init.
pub fn restore(spec: &Spec, run_dir: &Path, req: &criu::RestoreReq) -> Result<State> {
    start_inner(spec, run_dir, Some(req))
}

fn start_inner(spec: &Spec, run_dir: &Path, restore: Option<&criu::RestoreReq>) -> Result<State> {
    let trace = crate::util::trace::Steps::new("runtime start", &spec.name);
    if let State::Running { .. } = state(run_dir)? {
        return Err(Error(format!("container {} is already running", spec.name)));
    }
    for (what, p) in [("rootfs", &spec.rootfs), ("console_log", &spec.console_log)] {
        if !p.is_absolute() {
            return Err(Error(format!(
                "spec.{what} must be an absolute path, got {}",
                p.display()
            )));
        }
    }
    // 1. Fresh run directory contents: the spec, nothing left from the previous run.
    // Traversable (the container's child reaches the staged rootfs below it by path), not
    // listable; every file in it is 0600.
    crate::util::fs::create_dir_mode(run_dir, 0o711).map_err(|e| err("create", run_dir, e))?;
    // The monitor works from "/", so it gets the run directory as an absolute path.
    let run_dir = &fs::canonicalize(run_dir).map_err(|e| err("resolve", run_dir, e))?;
    for f in [
        files::EXIT,
        files::STOP_REQUEST,
        files::INIT_PID,
        files::MONITOR_PID,
        files::LABEL,
        files::RESTORE,
    ] {
        let _ = fs::remove_file(run_dir.join(f));
    }
    let sp = run_dir.join(files::SPEC);
    let js = serde_json::to_vec_pretty(spec).map_err(|e| Error(format!("encode spec: {e}")))?;
    replace_file(&sp, &js)?;
    if let Some(req) = restore {
        let js = serde_json::to_vec(req).map_err(|e| Error(format!("encode restore: {e}")))?;
        replace_file(&run_dir.join(files::RESTORE), &js)?;
    }

    // 2. Spawn the monitor. Its status socket end is the only fd it keeps (dup'd without CLOEXEC so it
    //    survives exec; its number goes on the command line).
    let (ours, theirs) = chan::pair()?;
    // dup() gives a copy without CLOEXEC; the original is closed now so only the child holds an end.
    let inherit = dup_inheritable(&theirs)?;
    drop(theirs);
    let lp = run_dir.join(files::MONITOR_LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&lp)
        .map_err(|e| err("open", &lp, e))?;
    let log2 = log.try_clone().map_err(|e| err("dup", &lp, e))?;
    trace.step("run directory ready");
    let mut cmd = helper_command("bivy-monitor")?;
    cmd.arg("__monitor")
        .arg(run_dir)
        .arg(inherit.as_raw_fd().to_string());
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error(format!("spawn monitor: {e}")))?;
    drop(inherit);
    trace.step("monitor spawned");
    // The first-level process exits as soon as it forked the real (daemonized) monitor.
    let _ = child.wait();
    trace.step("first-level monitor process reaped");

    // 3. Wait for its verdict: Started after init exec'd, or the setup error.
    let _ = nix::sys::socket::setsockopt(
        &ours,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(60, 0),
    );
    let reply = chan::recv(&ours)?;
    trace.step("monitor replied");
    match reply {
        Some((Msg::Started(init_pid, monitor_pid), _)) => Ok(State::Running {
            init_pid,
            monitor_pid,
            frozen: false,
        }),
        Some((Msg::Err(e), _)) => Err(Error(e)),
        Some((m, _)) => Err(Error(format!("unexpected message from monitor: {m:?}"))),
        None => Err(Error(format!(
            "monitor exited without reporting; see {}",
            lp.display()
        ))),
    }
}

/// `bivy __monitor <run_dir> <status_fd>`.
pub fn helper(args: &[String]) -> ! {
    let (Some(run_dir), Some(fd)) = (
        args.first(),
        args.get(1).and_then(|f| f.parse::<i32>().ok()),
    ) else {
        eprintln!("usage: bivy __monitor RUN_DIR STATUS_FD");
        std::process::exit(2)
    };
    // 1. Close every inherited fd except stdio and the status socket (CVE-2024-21626 style leaks).
    if fd < 3 {
        eprintln!("bivy monitor: status fd {fd} collides with stdio");
        std::process::exit(2)
    }
    let _ = sys::close_range(3, fd as u32 - 1, false);
    let _ = sys::close_range_from(fd as u32 + 1, false);
    let status = match sys::own_inherited_fd(fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bivy monitor: status fd {fd}: {e}");
            std::process::exit(2)
        }
    };
    // 2. Daemonize: the first process exits (start() reaps it), the second one is orphaned away from
    //    the daemon and leads its own session, so it survives the daemon and its terminal.
    match sys::fork() {
        Ok(0) => {}
        Ok(_) => sys::exit_now(0),
        Err(e) => {
            let _ = chan::send(&status, &Msg::Err(format!("fork monitor: {e}")), None);
            std::process::exit(1)
        }
    }
    let _ = nix::unistd::setsid();
    // A readable name in ps/top (the exe is /proc/self/fd/N, so comm would be "N").
    let _ = nix::sys::prctl::set_name(c"bivy-monitor");
    // Pin no directory of the caller's (the run dir is absolute).
    let _ = nix::unistd::chdir("/");
    let run_dir = PathBuf::from(run_dir);
    let code = match run(&run_dir, status) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bivy monitor: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Everything the monitor prepared; undone by `teardown`.
struct Prepared {
    cgroup: bool,
    stage: PathBuf,
}

fn teardown(spec: &Spec, p: &Prepared) {
    if p.cgroup {
        // The processes of a dead pid namespace exit asynchronously; retry until the cgroup is empty.
        for i in 0..200 {
            if confine::cgroup_remove(spec.cgroup_name()).is_ok() {
                break;
            }
            if i % 20 == 0 {
                let _ = confine::cgroup_kill_all(spec.cgroup_name());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = umount2(&p.stage, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&p.stage);
}

fn run(run_dir: &Path, status: OwnedFd) -> Result<()> {
    let spec = read_spec(run_dir)?;
    // A restore request (from `restore()`): criu restores the tree instead of a new init.
    let rp = run_dir.join(files::RESTORE);
    let restore: Option<criu::RestoreReq> = match fs::read(&rp) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| err("parse", &rp, e))?),
        Err(_) => None,
    };
    let _ = fs::remove_file(&rp);
    let me = std::process::id() as i32;
    write_pidfile(&run_dir.join(files::MONITOR_PID), me)?;
    let mut prep = Prepared {
        cgroup: false,
        stage: run_dir.join(files::STAGE),
    };
    match setup(run_dir, &spec, &mut prep, restore.as_ref()) {
        Ok((init_pid, master, slave)) => {
            let _ = chan::send(&status, &Msg::Started(init_pid, me), None);
            drop(status);
            // The network namespace outlives init while physical NICs are in it: they go back
            // to the host (a virtual one would die with the namespace).
            let netns = fs::File::open(format!("/proc/{init_pid}/ns/net"))
                .ok()
                .map(OwnedFd::from);
            let exit = supervise(&spec, init_pid, &master, run_dir);
            if let Some(ns) = netns {
                let nics = read_spec(run_dir)
                    .map(|s| s.nics)
                    .unwrap_or_else(|_| spec.nics.clone());
                super::nics::give_back_all(&ns, &nics);
            }
            drop(slave);
            teardown(&spec, &prep);
            let p = run_dir.join(files::EXIT);
            let js = serde_json::to_vec(&exit).map_err(|e| Error(format!("encode exit: {e}")))?;
            atomic_write(&p, &js).map_err(|e| err("write", &p, e))?;
            let _ = fs::remove_file(run_dir.join(files::INIT_PID));
            let _ = fs::remove_file(run_dir.join(files::MONITOR_PID));
            Ok(())
        }
        Err(e) => {
            teardown(&spec, &prep);
            let _ = fs::remove_file(run_dir.join(files::MONITOR_PID));
            let _ = chan::send(&status, &Msg::Err(e.0.clone()), None);
            Err(e)
        }
    }
}

/// Bind `/dev/<name>` over an empty file at `p` after checking it is the char device maj:min with
/// mode 0666 (see the nested case in step 3).
fn reuse_dev_node(p: &Path, name: &str, maj: u64, min: u64) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let src = Path::new("/dev").join(name);
    let md = fs::metadata(&src).map_err(|e| err("stat", &src, e))?;
    let rdev = md.rdev();
    if !md.file_type().is_char_device()
        || nix::sys::stat::major(rdev) != maj
        || nix::sys::stat::minor(rdev) != min
        || md.mode() & 0o777 != 0o666
    {
        return Err(Error(format!(
            "cannot create /dev/{name} in a nested user namespace (mknod: EPERM) and {} is not a 0666 char device {maj}:{min}",
            src.display()
        )));
    }
    fs::File::create(p).map_err(|e| err("create", p, e))?;
    mount(Some(&src), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| err("bind", p, e))?;
    Ok(())
}

/// Device nodes the container gets (made here on the staging tmpfs, bind-mounted in by the child).
pub(crate) const DEV_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Monitor setup: returns init's host pid, the console master and the monitor's slave fd.
fn setup(
    run_dir: &Path,
    spec: &Spec,
    prep: &mut Prepared,
    restore: Option<&criu::RestoreReq>,
) -> Result<(i32, OwnedFd, OwnedFd)> {
    let t0 = Instant::now();
    let privileged = spec.rootfs_mode == RootfsMode::Privileged;
    let owner = if privileged {
        (0, 0)
    } else {
        let u = userns::to_host(&spec.uid_map, 0)
            .ok_or_else(|| Error("uid_map does not map container root".into()))?;
        let g = userns::to_host(&spec.gid_map, 0)
            .ok_or_else(|| Error("gid_map does not map container root".into()))?;
        (u, g)
    };

    trace(t0, "before step 1");
    // 1. Signals: SIGCHLD (init's end) and SIGTERM/SIGINT (our control path) go to a signalfd,
    //    blocked now so none is lost; the child unblocks them before exec.
    sys::ignore_signal(libc::SIGPIPE);
    sys::ignore_signal(libc::SIGHUP);
    block_signals()?;

    trace(t0, "before step 2");
    // 2. A private mount namespace for the monitor: the staging mounts below never reach the host.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| Error(format!("unshare(CLONE_NEWNS): {e}")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| Error(format!("make / private in the monitor: {e}")))?;

    trace(t0, "before step 3");
    // 3. Staging tmpfs (mounted by host root, so device nodes on it work when bind-mounted into the
    //    userns; a tmpfs mounted inside the userns would be nodev). Host /dev nodes are never reused:
    //    their modes are whatever the host has (0644 /dev/null once broke containers).
    let stage = prep.stage.clone();
    crate::util::fs::create_dir_mode(&stage, 0o711).map_err(|e| err("create", &stage, e))?;
    mount(
        Some("tmpfs"),
        &stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| err("mount tmpfs on", &stage, e))?;
    let dev = stage.join("dev");
    let root = stage.join("root");
    for d in [&dev, &root] {
        fs::create_dir(d).map_err(|e| err("create", d, e))?;
    }
    for (name, maj, min) in DEV_NODES {
        let p = dev.join(name);
        match mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(*maj, *min),
        ) {
            Ok(()) => {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
                    .map_err(|e| err("chmod", &p, e))?;
                std::os::unix::fs::chown(&p, Some(owner.0), Some(owner.1))
                    .map_err(|e| err("chown", &p, e))?;
            }
            // Nested (bivy inside a container): no mknod in a user namespace. Reuse our own
            // /dev node only when it is exactly the device and world-usable (an outer manager
            // made it); never a node with whatever mode a host happens to have.
            Err(nix::errno::Errno::EPERM) => reuse_dev_node(&p, name, *maj, *min)?,
            Err(e) => return Err(err("mknod", &p, e)),
        }
    }

    trace(t0, "before step 4");
    // 4. Root filesystem at <stage>/root. Idmapped: a detached idmapped clone of the rootfs mount
    //    attached here (in our private namespace only); otherwise a recursive bind.
    match spec.rootfs_mode {
        RootfsMode::Idmapped => {
            let ns = userns::userns_fd(&spec.uid_map, &spec.gid_map)?;
            trace(t0, "step 4: userns for the idmap ready");
            let t = userns::idmapped_tree(&spec.rootfs, &ns)?;
            trace(t0, "step 4: idmapped tree ready");
            sys::move_mount_to(t.as_fd(), &root)
                .map_err(|e| err("move_mount idmapped rootfs to", &root, e))?;
        }
        RootfsMode::Shifted | RootfsMode::Privileged => {
            mount(
                Some(&spec.rootfs),
                &root,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| err("bind rootfs", &spec.rootfs, e))?;
        }
    }

    trace(t0, "before step 4b");
    // 4b. Disk devices: each source opened without following symlinks, copied, idmapped and made
    //     read-only as asked, attached below the staging tmpfs (see disks.rs).
    let staged = disks::stage(spec, &stage)?;

    trace(t0, "before step 5");
    // 5. Confinement prepared before the clone, so the child only has to apply it.
    let seccomp = confine::seccomp_compile(&spec.seccomp_policy)?;
    let label =
        confine::apparmor_prepare(&spec.name, spec.nesting, privileged, &spec.apparmor_raw)?;
    if let Some(l) = &label {
        let p = run_dir.join(files::LABEL);
        replace_file(&p, l.as_bytes())?;
    }

    trace(t0, "before step 6");
    // 6. The cgroup (owned by container root for delegation when unprivileged).
    confine::cgroup_create(
        spec.cgroup_name(),
        &spec.limits,
        (!privileged).then_some(owner),
    )?;
    prep.cgroup = true;
    // The device cgroup: LXD's default list plus the instance's device nodes.
    let rules: Vec<String> = spec
        .unix_devices
        .iter()
        .map(super::UnixDev::cgroup_rule)
        .collect();
    confine::cgroup_restrict_devices(spec.cgroup_name(), &rules)?;

    trace(t0, "before step 7");
    // 7. Console pty on the host devpts: the monitor keeps the master (and a slave fd, so reading the
    //    master never sees EIO); the slave becomes /dev/console and init's stdio.
    use rustix::fs::{Mode as RMode, OFlags};
    let master = rustix::pty::openpt(
        rustix::pty::OpenptFlags::RDWR
            | rustix::pty::OpenptFlags::NOCTTY
            | rustix::pty::OpenptFlags::CLOEXEC,
    )
    .map_err(|e| Error(format!("open console pty: {e}")))?;
    rustix::pty::grantpt(&master).map_err(|e| Error(format!("grantpt: {e}")))?;
    rustix::pty::unlockpt(&master).map_err(|e| Error(format!("unlockpt: {e}")))?;
    let pts = PathBuf::from(
        rustix::pty::ptsname(&master, Vec::new())
            .map_err(|e| Error(format!("ptsname: {e}")))?
            .into_string()
            .unwrap_or_default(),
    );
    let slave = rustix::fs::open(
        &pts,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        RMode::empty(),
    )
    .map_err(|e| err("open", &pts, e))?;
    rustix::fs::fchown(
        &slave,
        Some(rustix::fs::Uid::from_raw(owner.0)),
        Some(rustix::fs::Gid::from_raw(owner.1)),
    )
    .map_err(|e| err("chown", &pts, e))?;

    // A session keyring of the container's own (as LXC's `lxc.keyring.session`): init (or the
    // tree criu restores) would otherwise inherit the daemon's, and possessing a keyring grants
    // its possessor rights on every key in it, across user namespaces. Joined here as host root,
    // so it is charged to root's key quota and not to the container's uid, which all containers
    // share (200 keys by default).
    sys::join_new_session_keyring()
        .map_err(|e| Error(format!("join a new session keyring: {e}")))?;

    // 8'. A restore: criu rebuilds the namespaces and the tree from the checkpoint, as our child
    //     (--restore-sibling), in the cgroup just made, on the staged rootfs and mounts.
    if let Some(req) = restore {
        trace(t0, "before criu restore");
        let pid = criu::restore_in_monitor(
            req,
            spec,
            run_dir,
            &root,
            &dev,
            &pts,
            &slave,
            &staged,
            (!privileged).then_some(owner),
        )?;
        let kill = |e: Error| {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
            e
        };
        write_pidfile(&run_dir.join(files::INIT_PID), pid).map_err(kill)?;
        trace(t0, "restored");
        return Ok((pid, master, slave));
    }

    trace(t0, "before step 8");
    // 8. Clone init into new namespaces (user unless privileged, mount, pid, uts, ipc, net). The
    //    cgroup namespace comes later, from the child, once we have put it into its cgroup.
    let (psock, csock) = chan::pair()?;
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    if !privileged {
        flags |= libc::CLONE_NEWUSER;
    }
    let layout = confine::cgroup_layout();
    let pid = sys::clone_fork(flags).map_err(|e| Error(format!("clone container init: {e}")))?;
    if pid == 0 {
        drop(psock);
        let ctx = init::Ctx {
            t0,
            spec,
            root: &root,
            dev: &dev,
            console: &pts,
            slave: &slave,
            seccomp: &seccomp,
            label: label.as_deref(),
            layout: &layout,
            disks: &staged,
        };
        let e = init::child(&ctx, &csock);
        let _ = chan::send(&csock, &Msg::Err(e.0), None);
        sys::exit_now(1);
    }
    drop(csock);
    let kill_child = |e: Error| {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        e
    };

    trace(t0, "before step 9");
    // 9. Parent side: maps, cgroup, then let the child go and wait for execve (EOF) or its error.
    if !privileged {
        userns::write_maps(pid, &spec.uid_map, &spec.gid_map).map_err(kill_child)?;
    }
    trace(t0, "step 9: maps written");
    confine::cgroup_add_pid(spec.cgroup_name(), pid).map_err(kill_child)?;
    trace(t0, "step 9: in the cgroup");
    super::nics::plug_all(pid, &spec.nics).map_err(kill_child)?;
    trace(t0, "step 9: nics plugged");
    chan::send(&psock, &Msg::Go, None).map_err(kill_child)?;
    match chan::recv(&psock).map_err(kill_child)? {
        None => {}
        Some((Msg::Err(e), _)) => return Err(kill_child(Error(e))),
        Some((m, _)) => {
            return Err(kill_child(Error(format!(
                "unexpected message from init: {m:?}"
            ))))
        }
    }
    write_pidfile(&run_dir.join(files::INIT_PID), pid).map_err(kill_child)?;
    trace(t0, "init exec'd");
    Ok((pid, master, slave))
}

fn monitor_sigset() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        s.add(sig);
    }
    s
}

fn block_signals() -> Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&monitor_sigset()), None)
        .map_err(|e| Error(format!("block signals: {e}")))
}

/// The monitor's loop: copy console output to the log, react to signals, until init is reaped.
fn supervise(spec: &Spec, init_pid: i32, master: &OwnedFd, run_dir: &Path) -> ExitInfo {
    let sfd = SignalFd::with_flags(
        &monitor_sigset(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
    .ok();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&spec.console_log)
        .ok();
    let mut buf = [0u8; 4096];
    let mut master_open = true;
    // The console socket (`lxc console`): one attached client owns the master until it goes.
    let console_path = run_dir.join(files::CONSOLE);
    let _ = fs::remove_file(&console_path);
    // Made 0600 from the start (the monitor has one thread, so the umask change is its own):
    // whoever connects gets the console, and the run directory is traversable.
    let old_umask = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let console = std::os::unix::net::UnixListener::bind(&console_path).ok();
    nix::sys::stat::umask(old_umask);
    if let Some(l) = &console {
        let _ = l.set_nonblocking(true);
    }
    let mut attached: Option<std::os::unix::net::UnixStream> = None;
    let status = loop {
        let mut fds = Vec::with_capacity(4);
        if let Some(s) = &sfd {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if let Some(l) = &console {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        if let Some(a) = &attached {
            fds.push(PollFd::new(a.as_fd(), PollFlags::POLLIN));
        }
        let log_master = master_open && attached.is_none();
        if log_master {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
        }
        // Without a signalfd (should not happen) fall back to polling waitpid once a second.
        let _ = poll(
            &mut fds,
            if sfd.is_some() {
                PollTimeout::NONE
            } else {
                PollTimeout::from(1000u16)
            },
        );
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if let Some(l) = &console {
            if let Ok((conn, _)) = l.accept() {
                if let Ok(fd) = conn.try_clone().map(OwnedFd::from) {
                    if attached.is_some() {
                        let _ = chan::send(
                            &fd,
                            &chan::Msg::Err("the console is already attached".into()),
                            None,
                        );
                    } else if chan::send(&fd, &chan::Msg::PtyMaster, Some(master.as_raw_fd()))
                        .is_ok()
                        && conn.set_nonblocking(true).is_ok()
                    {
                        attached = Some(conn);
                    }
                }
            }
        }
        if let Some(a) = &mut attached {
            let mut b = [0u8; 64];
            match a.read(&mut b) {
                Ok(0) => attached = None,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => attached = None,
                _ => {}
            }
        }
        if log_master && ready.last() == Some(&true) {
            match rustix::io::read(master, &mut buf) {
                Ok(n) if n > 0 => {
                    if let Some(l) = log.as_mut() {
                        let _ = l.write_all(&buf[..n]);
                    }
                }
                Ok(_) => master_open = false,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(_) => master_open = false,
            }
        }
        if let Some(s) = &sfd {
            while let Ok(Some(si)) = s.read_signal() {
                if si.ssi_signo == libc::SIGTERM as u32 || si.ssi_signo == libc::SIGINT as u32 {
                    let req = run_dir.join(files::STOP_REQUEST);
                    if !req.exists() {
                        let _ = replace_file(&req, b"force");
                    }
                    let _ = nix::sys::signal::kill(Pid::from_raw(init_pid), Signal::SIGKILL);
                }
            }
        }
        let mut done = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) if p.as_raw() == init_pid => {
                    done = Some((c, "exited".to_string()))
                }
                Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == init_pid => {
                    done = Some((128 + s as i32, format!("killed by signal {}", s as i32)))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some(d) = done {
            break d;
        }
    };
    let _ = fs::remove_file(&console_path);
    // Drain what init wrote last.
    if master_open {
        let _ = rustix::io::ioctl_fionbio(master, true);
        while let Ok(n) = rustix::io::read(master, &mut buf) {
            if n == 0 {
                break;
            }
            if let Some(l) = log.as_mut() {
                let _ = l.write_all(&buf[..n]);
            }
        }
    }
    let mut requested = String::new();
    let _ = File::open(run_dir.join(files::STOP_REQUEST))
        .and_then(|mut f| f.read_to_string(&mut requested));
    let reason = match requested.trim() {
        "clean" => format!("stopped by request ({})", status.1),
        "force" => format!("killed by request ({})", status.1),
        "checkpoint" => "checkpointed (stateful stop)".to_string(),
        _ => status.1,
    };
    ExitInfo {
        code: status.0,
        reason,
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
}
