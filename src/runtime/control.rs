//! The caller's side of a container's lifecycle, through its run directory: start (or restore
//! from a checkpoint) by spawning a monitor and waiting for its verdict, the state read from
//! the pidfiles and the exit record, and stop (a clean signal to init, then the kill), cleaning
//! up after a monitor that was killed; the kill of a container started again at once, which
//! ends beside its next run in a run directory moved aside. The monitor itself is `monitor.rs`.

use std::fs::{self, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::chan::{self, Msg};
use super::helper::{
    err, helper_command, live_pid, live_pidfd, live_process, replace_file, spawn_with_socket,
    still_alive, wait_pidfd,
};
use super::{
    confine, criu, files, userns, Error, ExitInfo, IdMapEntry, Result, RootfsMode, Spec, State,
    StopMode,
};
use crate::sys;
use crate::util::fs::atomic_write;
use crate::util::memo::Memo;

/// A monitor made ahead of the next start (`bivy __monitor --spare FD`): spawned from the
/// sealed binary, it waits on its status socket for its run directory and log, so that a start
/// skips the binary's exec and start-up, and its fork away from the daemon (done, and its first
/// process reaped, when it is made). One at most; it ends when its socket's other end closes
/// (this process ended).
struct Spare {
    sock: OwnedFd,
    /// It said it waits.
    ready: bool,
}

static SPARE: std::sync::Mutex<Option<Spare>> = std::sync::Mutex::new(None);

/// Spawn a monitor whose status socket end is the only fd it keeps (see [`spawn_with_socket`]):
/// for `run_dir`, or `--spare`. Its stdout and stderr are `log` (the spare's are empty until it
/// is given one).
fn spawn_monitor(
    run_dir: &std::ffi::OsStr,
    log: Option<&fs::File>,
) -> Result<(OwnedFd, std::process::Child)> {
    let mut cmd = helper_command("bivy-monitor")?;
    cmd.arg("__monitor").stdin(Stdio::null());
    match log {
        Some(f) => {
            let dup = |f: &fs::File| f.try_clone().map_err(|e| Error(format!("dup log: {e}")));
            cmd.stdout(dup(f)?).stderr(dup(f)?);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    spawn_with_socket(cmd, "monitor", run_dir)
}

/// The spare monitor, told to start in `run_dir` with `log` as its output and, when given,
/// `userns` for its idmapped mounts ([`mapped_userns`]): its status socket; None when there is
/// none (or it is gone).
fn take_spare(run_dir: &Path, log: &fs::File, userns: Option<&OwnedFd>) -> Option<OwnedFd> {
    let dir = run_dir.to_str()?;
    let mut guard = SPARE.lock().ok()?;
    let spare = guard.as_mut()?;
    if !spare.ready {
        let mut p = [nix::poll::PollFd::new(
            spare.sock.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO), Ok(1)) {
            return None;
        }
        match chan::recv(&spare.sock) {
            Ok(Some((Msg::Ready, _))) => spare.ready = true,
            _ => {
                *guard = None;
                return None;
            }
        }
    }
    let Spare { sock, .. } = guard.take()?;
    drop(guard);
    let mut fds = vec![log.as_raw_fd()];
    fds.extend(userns.map(|ns| ns.as_raw_fd()));
    chan::send_fds(&sock, &Msg::Request(dir.to_string()), &fds)
        .ok()
        .map(|()| sock)
}

/// User namespaces with the id maps of containers started before, kept for the monitors'
/// idmapped mounts: a spare monitor given one (after its log, see [`take_spare`]) does not make
/// its own, which costs a fork and the maps' writes (0.5-1 ms) on every start's path. The last
/// few maps (an isolated instance has one of its own); a map not kept is made off the start's
/// path, for the next start, while this one's monitor makes its own as before.
type Mapped = (Vec<IdMapEntry>, Vec<IdMapEntry>, OwnedFd);
static MAPPED: std::sync::Mutex<Vec<Mapped>> = std::sync::Mutex::new(Vec::new());
/// How many maps [`MAPPED`] keeps.
const MAPPED_KEPT: usize = 4;

/// The kept user namespace with `spec`'s id maps (see [`MAPPED`]), or None while it is made.
fn mapped_userns(spec: &Spec) -> Option<OwnedFd> {
    if spec.rootfs_mode != RootfsMode::Idmapped {
        return None;
    }
    let (u, g) = (spec.uid_map.clone(), spec.gid_map.clone());
    {
        let mut kept = crate::util::lock(&MAPPED);
        if let Some(i) = kept.iter().position(|(ku, kg, _)| *ku == u && *kg == g) {
            // The most recent last: the first one goes when another is kept.
            let m = kept.remove(i);
            let fd = m.2.try_clone().ok();
            kept.push(m);
            return fd;
        }
    }
    let _ = crate::util::pool::spawn("userns-for-idmaps", move || {
        let Ok(ns) = userns::userns_fd(&u, &g) else {
            return;
        };
        let mut kept = crate::util::lock(&MAPPED);
        if kept.iter().any(|(ku, kg, _)| *ku == u && *kg == g) {
            return;
        }
        if kept.len() >= MAPPED_KEPT {
            kept.remove(0);
        }
        kept.push((u, g, ns));
    });
    None
}

/// Make the spare monitor unless there is one (after a start, off the caller's path). The
/// lock is not held while it is spawned.
fn make_spare() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static MAKING: AtomicBool = AtomicBool::new(false);
    let have = || SPARE.lock().map_or(true, |s| s.is_some());
    if have() || MAKING.swap(true, Ordering::AcqRel) {
        return;
    }
    // Spawned at the normal priority: between its fork and its exec a child holds a copy of
    // every fd of the daemon, files other threads are writing included, and a container whose
    // init is such a file could not exec it (ETXTBSY) until then; at idle priority that window
    // could last as long as the CPUs are busy (a container's start failed so). The spare's own
    // work before it is ready is its exec.
    let made = spawn_monitor("--spare".as_ref(), None);
    if let Ok((sock, mut child)) = made {
        // Its first process exits once it forked the spare itself.
        if child.wait().is_ok_and(|st| st.success()) {
            if let Ok(mut s) = SPARE.lock() {
                *s = Some(Spare { sock, ready: false });
            }
        }
    }
    MAKING.store(false, Ordering::Release);
}

/// How many answers the caller gave ([`answered`]): work left for after a start's answer
/// waits for the next one ([`after_answer`]).
static ANSWERS: (std::sync::Mutex<u64>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// The caller answered what it was doing (an operation ended): work left for after an answer
/// goes on.
pub fn answered() {
    *crate::util::lock(&ANSWERS.0) += 1;
    ANSWERS.1.notify_all();
}

/// Run `job` once the caller gave its next answer ([`answered`]; [`HELD_AT_MOST`] when none
/// comes), on a pooled thread: work a start leaves behind that must not compete with it.
pub fn after_next_answer(job: impl FnOnce() + Send + 'static) {
    on_pool_after_answer("after-answer", HELD_AT_MOST, job);
}

/// Run `job` on a pooled thread named `name` once the caller gave its next answer, or after
/// `limit` when none comes. No thread to be had: the job is dropped (what it owns, such as a
/// view's hold, ends with it).
fn on_pool_after_answer(name: &'static str, limit: Duration, job: impl FnOnce() + Send + 'static) {
    let since = answers();
    let _ = crate::util::pool::spawn(name, move || {
        after_answer(since, limit);
        job();
    });
}

/// The count of answers now, for [`after_answer`].
fn answers() -> u64 {
    *crate::util::lock(&ANSWERS.0)
}

/// Wait for an answer after the `since`-th ([`answers`]), or `limit` when none comes (a start
/// no operation answers).
fn after_answer(since: u64, limit: Duration) {
    let n = crate::util::lock(&ANSWERS.0);
    let _ = ANSWERS.1.wait_timeout_while(n, limit, |n| *n <= since);
}

/// The longest a next spare waits for the start's answer.
const SPARE_AFTER: Duration = Duration::from_millis(50);

/// The next spare monitor, made once the start that took this one is answered ([`answered`],
/// or after [`SPARE_AFTER`] when nobody says so): its making (a fork of the daemon, an exec and
/// the binary's start-up, about 1 ms of CPU) would otherwise compete with the answer on a
/// small host.
fn make_spare_later() {
    on_pool_after_answer("spare-monitor", SPARE_AFTER, make_spare);
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
    if let Some((monitor_pid, init_pid)) = running_pids(run_dir) {
        let frozen =
            cgroup_of(run_dir, monitor_pid).is_some_and(|name| confine::cgroup_is_frozen(&name));
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

/// Whether the container runs (its monitor and init alive): [`state`] without its exit record.
pub fn is_running(run_dir: &Path) -> bool {
    running_pids(run_dir).is_some()
}

/// The pids of the monitor and init last read from each run directory (see [`running_pids`]).
static LAST: Memo<PathBuf, [(i32, u64); 2]> = Memo::new();

/// How many run directories [`kill_and_detach`] swapped: a reader of the pid files records
/// what it read in [`LAST`] only if no swap came in between (under this lock), so a swapped
/// directory is never taken for its killed, still ending run.
static SWAPS: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

fn swaps() -> std::sync::MutexGuard<'static, u64> {
    SWAPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The monitor's and init's pids when both are alive (the container runs). The processes last
/// read from a run directory's pid files are kept: while both live, the files are not read
/// again (a pid file is only rewritten for a new monitor or init, after the one before ended,
/// or in a new directory that [`kill_and_detach`] swapped in, which forgets what was kept; a
/// listing asks for every running container each time).
fn running_pids(run_dir: &Path) -> Option<(i32, i32)> {
    if let Some([monitor, init]) = LAST.get(run_dir) {
        if still_alive(monitor) && still_alive(init) {
            return Some((monitor.0, init.0));
        }
    }
    let before = *swaps();
    let read = || {
        let monitor = live_process(&run_dir.join(files::MONITOR_PID))?;
        let init = live_process(&run_dir.join(files::INIT_PID))?;
        Some([monitor, init])
    };
    match read() {
        Some(pair) => {
            let swapped = swaps();
            if *swapped == before {
                LAST.insert(run_dir.to_path_buf(), pair);
            }
            Some((pair[0].0, pair[1].0))
        }
        None => {
            LAST.remove(run_dir);
            None
        }
    }
}

/// The cgroup name of the container whose monitor is `monitor_pid` (found running): from its
/// running spec, read once per monitor (a monitor's container keeps its cgroup for the
/// monitor's life; listings ask for every running container each time).
pub fn cgroup_of(run_dir: &Path, monitor_pid: i32) -> Option<String> {
    static KEPT: Memo<PathBuf, (i32, String)> = Memo::new();
    if let Some((pid, name)) = KEPT.get(run_dir) {
        if pid == monitor_pid {
            return Some(name);
        }
    }
    let name = read_spec(run_dir).ok()?.cgroup_name().to_string();
    KEPT.insert(run_dir.to_path_buf(), (monitor_pid, name.clone()));
    Some(name)
}

pub fn monitor_pidfd(run_dir: &Path) -> Result<Option<OwnedFd>> {
    Ok(live_pidfd(&run_dir.join(files::MONITOR_PID)).map(|(_, fd)| fd))
}

fn is_systemd(init_pid: i32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{init_pid}/comm")).unwrap_or_default();
    let exe = fs::read_link(format!("/proc/{init_pid}/exe")).unwrap_or_default();
    comm.trim() == "systemd" || exe.file_name().is_some_and(|n| n == "systemd")
}

/// Whether the monitor of `run_dir` is gone without its teardown (killed): what
/// [`reap_dead_monitor`] would clean up. False while it runs and after a clean end.
pub fn monitor_left_remains(run_dir: &Path) -> bool {
    let mp = run_dir.join(files::MONITOR_PID);
    mp.exists() && live_pid(&mp).is_none()
}

/// A monitor that was killed (SIGKILL, the OOM killer) leaves its container's cgroup, its
/// pidfiles and no exit record: tear that down as [`stop`] would. Nothing while the monitor
/// runs, or after it ended cleanly (it removes its pidfile). The caller makes sure no start of
/// the same instance runs meanwhile.
pub fn reap_dead_monitor(run_dir: &Path) {
    if live_pid(&run_dir.join(files::MONITOR_PID)).is_none() {
        cleanup_dead_monitor(run_dir);
    }
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

/// A container killed and left to end on its own ([`kill_and_detach`]): its run directory moved
/// aside, its monitor still tearing down. Dropped unfinished, a thread finishes it.
pub struct Ending {
    /// Where its run directory is now (`run/.ended.<name>.<monitor pid>`).
    pub dir: PathBuf,
    /// Taken by [`Ending::finish`].
    monitor: Option<OwnedFd>,
    /// The answers given when it was killed ([`answers`]): its monitor is held stopped until
    /// the next one (the restarted run's), see [`kill_and_detach`]. None: not held.
    since: Option<u64>,
}

/// The longest the monitor of a run [`kill_and_detach`] killed is held stopped while the next
/// run starts.
const HELD_AT_MOST: Duration = Duration::from_secs(2);

/// The prefix of a run directory moved aside by [`kill_and_detach`] (never an instance name).
const ENDED_PREFIX: &str = ".ended.";

impl Ending {
    /// Let its monitor go on at once, not at the next run's answer: for a caller that waits for
    /// its end before it answers (a restore that failed and starts the old volume again).
    pub fn go_on(&mut self) {
        self.since = None;
        if let Some(m) = &self.monitor {
            let _ = sys::pidfd_send_raw(m.as_fd(), libc::SIGCONT);
        }
    }

    /// Wait (up to 30 s) for the monitor's end, then remove its run directory; its exit record
    /// comes back.
    pub fn finish(mut self) -> Option<ExitInfo> {
        let monitor = self.monitor.take()?;
        if let Some(since) = self.since {
            after_answer(since, HELD_AT_MOST);
        }
        let _ = sys::pidfd_send_raw(monitor.as_fd(), libc::SIGCONT);
        if !wait_pidfd(&monitor, Duration::from_secs(30)) {
            eprintln!(
                "bivy: the monitor of {} did not end 30 s after its kill; left as it is",
                self.dir.display()
            );
            return None;
        }
        finish_ended(&self.dir)
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if let Some(monitor) = self.monitor.take() {
            let ending = Ending {
                dir: std::mem::take(&mut self.dir),
                monitor: Some(monitor),
                since: self.since,
            };
            let _ = std::thread::Builder::new()
                .name("ended-run".into())
                .spawn(move || ending.finish());
        }
    }
}

/// The forced stop of a container that is started again at once (a restore): everything in
/// its cgroup killed and its run directory moved aside (its monitor, which reaches it through an
/// open descriptor from the start on, tears down there), without waiting for the processes'
/// end (a booted systemd's take 20-40 ms of the kernel's time). The next start then makes a
/// fresh run directory and a cgroup of another name ([`free_cgroup_name`]) while this one ends.
/// `None`: the container had stopped already, or its monitor is an older bivy's
/// ([`files::DETACHABLE`]) and was stopped as [`stop`] does. On a host without `cgroup.kill`
/// the processes' end is waited for. The files named in `keep` (the caller's own records in the run
/// directory) are in the fresh run directory too: the old one is swapped for a new one holding
/// copies of them in one atomic exchange, so that a caller killed at any moment finds them.
pub fn kill_and_detach(run_dir: &Path, keep: &[&str]) -> Result<Option<Ending>> {
    let name = run_dir.file_name().unwrap_or_default().to_string_lossy();
    let steps = crate::util::trace::Steps::new("kill and detach", &name);
    let Some((mon_pid, mon)) = live_pidfd(&run_dir.join(files::MONITOR_PID)) else {
        cleanup_dead_monitor(run_dir);
        return Ok(None);
    };
    let says = |f: &str| fs::read(run_dir.join(f)).ok();
    let marker = says(files::DETACHABLE);
    if marker.is_none() || marker != says(files::MONITOR_PID) {
        // An older bivy's monitor would tear down in the next run's directory.
        stop(run_dir, StopMode::Force)?;
        return Ok(None);
    }
    let spec = read_spec(run_dir)?;
    steps.step("spec read");
    let init = live_pidfd(&run_dir.join(files::INIT_PID));
    // The fresh run directory, made first: `run/.ended.<name>.<monitor pid>` until the swap.
    let parent = run_dir
        .parent()
        .ok_or_else(|| Error(format!("{} has no parent", run_dir.display())))?;
    let dir = parent.join(format!("{ENDED_PREFIX}{}.{mon_pid}", spec.name));
    let prepared = (|| -> std::io::Result<()> {
        crate::util::fs::create_dir_mode(&dir, 0o711)?;
        for name in keep {
            match fs::read(run_dir.join(name)) {
                Ok(b) => crate::util::fs::replace_unsynced(&dir.join(name), &b)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })();
    // Its monitor is held stopped, from before it sees init's end until the next run is
    // answered: its teardown (the overlay's unmount, the cgroups' removal, about 2 ms of CPU)
    // would otherwise take turns with the next run's start on a small host. Its Ending lets it
    // go on, and a daemon killed meanwhile does at its start ([`finish_ended_runs`]: the
    // fresh directory's name says whose).
    let since = answers();
    let _ = sys::pidfd_send_raw(mon.as_fd(), libc::SIGSTOP);
    let go_on = || {
        let _ = sys::pidfd_send_raw(mon.as_fd(), libc::SIGCONT);
    };
    let killed = force_kill(run_dir, &spec, init.as_ref(), false);
    if !matches!(killed, Ok(Ok(()))) {
        go_on();
        finish_ended(&dir);
    }
    killed??;
    steps.step("killed");
    let swapped = prepared.and_then(|()| {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            run_dir,
            rustix::fs::CWD,
            &dir,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(std::io::Error::from)
    });
    if let Err(e) = swapped {
        // Not swapped: the run ends where it is, waited for.
        go_on();
        finish_ended(&dir);
        if !wait_pidfd(&mon, Duration::from_secs(30)) {
            return Err(Error(format!(
                "monitor of {} did not exit after the kill",
                spec.name
            )));
        }
        eprintln!(
            "bivy: {}: a new run directory: {e}; the kill was waited for",
            spec.name
        );
        return Ok(None);
    }
    steps.step("swapped");
    {
        let mut n = swaps();
        *n += 1;
        LAST.remove(run_dir);
    }
    Ok(Some(Ending {
        dir,
        monitor: Some(mon),
        since: Some(since),
    }))
}

/// A run directory [`kill_and_detach`] moved aside, its monitor gone: what a killed monitor left
/// cleaned up, its files and the directory removed (the staging directory only when empty:
/// never a walk into a mount). Its exit record comes back.
fn finish_ended(dir: &Path) -> Option<ExitInfo> {
    cleanup_dead_monitor(dir);
    let exit = fs::read(dir.join(files::EXIT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir(&p)
            } else {
                fs::remove_file(&p)
            };
            if let Err(e) = r {
                eprintln!("bivy: removing {}: {e}", p.display());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        eprintln!("bivy: removing {}: {e}", dir.display());
    }
    exit
}

/// At a daemon's start: the run directories in `runs` that [`kill_and_detach`] moved aside and
/// whose end no daemon saw (it was killed meanwhile) are finished: at once when their monitor
/// is gone, else by a thread that waits for it. The monitors a killed daemon held stopped
/// ([`kill_and_detach`]) go on, whether their run directory was swapped yet or not.
pub fn finish_ended_runs(runs: &Path) {
    let Ok(rd) = fs::read_dir(runs) else { return };
    for e in rd.flatten() {
        let file_name = e.file_name();
        let Some(ended) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(ENDED_PREFIX))
        else {
            continue;
        };
        // Killed before its swap: the run directory it was made for holds the monitor.
        if let Some((name, pid)) = ended.rsplit_once('.') {
            if let Some((live, monitor)) = live_pidfd(&runs.join(name).join(files::MONITOR_PID)) {
                if pid == live.to_string() {
                    let _ = sys::pidfd_send_raw(monitor.as_fd(), libc::SIGCONT);
                }
            }
        }
        let dir = e.path();
        match live_pidfd(&dir.join(files::MONITOR_PID)) {
            // Dropped unfinished: a thread waits for its end.
            // Held stopped by a daemon killed meanwhile: it goes on at once.
            Some((_, monitor)) => drop(Ending {
                dir,
                monitor: Some(monitor),
                since: None,
            }),
            None => {
                finish_ended(&dir);
            }
        }
    }
}

/// A cgroup name for a new run of the container whose cgroup is normally `base`: `base`, or
/// while a run of it that [`kill_and_detach`] left still ends there, `base.1`, `base.2` ...
/// (instance names have no `.`).
pub fn free_cgroup_name(base: &str) -> String {
    if !confine::cgroup_exists(base) {
        return base.to_string();
    }
    (1..)
        .map(|n| format!("{base}.{n}"))
        .find(|c| !confine::cgroup_exists(c))
        .unwrap_or_else(|| base.to_string())
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
    if let StopMode::Clean(timeout) | StopMode::Shutdown(timeout) = mode {
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
        if matches!(mode, StopMode::Shutdown(_)) {
            // Still running: it is left so, and an end it comes to later is its own.
            let _ = fs::remove_file(&req);
            return Err(Error(format!(
                "Failed shutting down instance, status is \"Running\": it did not stop within {} s",
                timeout.as_secs()
            )));
        }
    }
    let cg = force_kill(run_dir, &spec, init.as_ref(), true)?;
    // Whoever held it stopped, it must go on to end.
    let _ = sys::pidfd_send_raw(mon.as_fd(), libc::SIGCONT);
    if !wait_pidfd(&mon, Duration::from_secs(30)) {
        return Err(Error(format!(
            "monitor of {} did not exit after the kill ({cg:?})",
            spec.name
        )));
    }
    Ok(())
}

/// The forced end of a container, as its stop request says: everything in its cgroup killed
/// (also exec'd processes), and init itself: its death tears down the whole pid namespace even
/// if the cgroup kill missed something. `wait`: until the cgroup is empty; else only where the
/// kernel has no `cgroup.kill` (the processes are then signalled one by one, which waits). The
/// cgroup kill's own result is the inner one.
fn force_kill(
    run_dir: &Path,
    spec: &Spec,
    init: Option<&(i32, OwnedFd)>,
    wait: bool,
) -> Result<Result<()>> {
    replace_file(&run_dir.join(files::STOP_REQUEST), b"force")?;
    let name = spec.cgroup_name();
    let killed = if !wait && matches!(confine::cgroup_kill_nowait(name), Ok(true)) {
        Ok(())
    } else {
        confine::cgroup_kill_all(name)
    };
    if let Some((_, fd)) = init {
        let _ = sys::pidfd_send_raw(fd.as_fd(), libc::SIGKILL);
    }
    // Frozen meanwhile (or kill_all froze it): pending SIGKILLs act only once thawed.
    let _ = confine::cgroup_thaw(name);
    Ok(killed)
}

pub fn start(spec: &Spec, run_dir: &Path) -> Result<State> {
    start_prepared(spec, prepare(spec, run_dir, None)?)
}

/// Start a monitor that restores the container from a CRIU checkpoint instead of starting init.
pub fn restore(spec: &Spec, run_dir: &Path, req: &criu::RestoreReq) -> Result<State> {
    start_prepared(spec, prepare(spec, run_dir, Some(req))?)
}

/// A run directory made ready for a start ([`prepare`]), its monitor not yet asked.
pub struct Prepared {
    trace: crate::util::trace::Steps,
    /// Absolute (the monitor works from "/").
    run_dir: PathBuf,
    log: fs::File,
}

/// Step 1 of a start ([`start`]), which may run beside other work the start needs (the
/// daemon's templates): the run directory made fresh, with the spec (and the checkpoint to
/// restore from) and the monitor's log.
pub fn prepare(
    spec: &Spec,
    run_dir: &Path,
    restore: Option<&criu::RestoreReq>,
) -> Result<Prepared> {
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
    crate::util::fs::make_dir_from_spare(run_dir, 0o711).map_err(|e| err("create", run_dir, e))?;
    // The monitor works from "/", so it gets the run directory as an absolute path.
    let run_dir = fs::canonicalize(run_dir).map_err(|e| err("resolve", run_dir, e))?;
    for f in [
        files::EXIT,
        files::STOP_REQUEST,
        files::INIT_PID,
        files::MONITOR_PID,
        files::LABEL,
        files::RESTORE,
        files::DETACHABLE,
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
    let lp = run_dir.join(files::MONITOR_LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&lp)
        .map_err(|e| err("open", &lp, e))?;
    trace.step("run directory ready");
    Ok(Prepared {
        trace,
        run_dir,
        log,
    })
}

/// Steps 2 and 3 of a start ([`start`]) in the run directory [`prepare`] made.
pub fn start_prepared(spec: &Spec, prepared: Prepared) -> Result<State> {
    let Prepared {
        trace,
        run_dir,
        log,
    } = prepared;
    let run_dir = &run_dir;
    let lp = run_dir.join(files::MONITOR_LOG);
    // 2. The monitor: the spare made ahead, told its run directory and log, or a new one.
    let userns = mapped_userns(spec);
    let ours = match take_spare(run_dir, &log, userns.as_ref()) {
        Some(sock) => sock,
        None => {
            let (sock, mut child) = spawn_monitor(run_dir.as_os_str(), Some(&log))?;
            // The first-level process exits as soon as it forked the real (daemonized) monitor.
            let _ = child.wait();
            sock
        }
    };
    trace.step("monitor spawned");

    // 3. Wait for its verdict: Started after init exec'd, or the setup error.
    let _ = nix::sys::socket::setsockopt(
        &ours,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(60, 0),
    );
    let reply = chan::recv(&ours)?;
    trace.step("monitor replied");
    make_spare_later();
    trace.step("the next spare asked for");
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
