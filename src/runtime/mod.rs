//! THE PRIVILEGED CORE: starts, holds, enters and stops containers.
//!
//! Synchronous, no HTTP, no JSON API types, no policy: the daemon hands it a fully resolved [`Spec`]
//! and a per-container run directory. Namespace work happens only in freshly exec'd, single-threaded
//! helpers (`bivy __monitor`, `bivy __exec`, dispatched first thing in `main`) and the processes
//! they fork; the calling (daemon) process never changes namespace.
//!
//! Run directory (`$BIVY_DIR/run/<name>/`, owned by the runtime; the daemon only passes the path):
//! the spec the container was started with, the monitor's pid and control socket, the console log
//! and the recorded exit status. Everything the daemon needs after a restart can be read back from it.
//!
//! Processes (see `control.rs` for the caller's side, `monitor.rs`, `helper.rs`, `init.rs`,
//! `exec.rs`):
//! - `start()` copies the binary (`$BIVY_EXE`, default `/proc/self/exe`) once per calling process into
//!   a sealed memfd and runs it as `bivy __monitor <run_dir> <fd>`; the monitor daemonizes, makes a
//!   private mount namespace, stages the rootfs (idmapped or bound) and device nodes there, creates
//!   the cgroup, opens the console pty, clones init and reports `Started` or the failed step. Once
//!   a start is answered (`answered()`) the caller makes a spare (`bivy __monitor --spare <fd>`,
//!   daemonized at once, then waiting for its run directory and log), which the next start takes
//!   instead of spawning one.
//! - The control path is signals: `stop()` signals init (SIGRTMIN+3 for systemd, else SIGPWR) and,
//!   for force, kills the cgroup and init; SIGTERM to the monitor also kills the container.
//!   `kill_and_detach()` (a restore's stop) kills it the same way but does not wait for its end:
//!   the run directory is swapped for a fresh one (`run/.ended.<name>.<pid>` then holds the old
//!   one, which its monitor reaches through a descriptor once the container runs, and says so in
//!   `detachable`) and the next start makes a cgroup of another name beside the ending one.
//! - `exec()` connects to the monitor's `exec.sock`; the monitor forks a waiter that enters the
//!   container and forks the command, and reports on the connection (the pty master, a pidfd of
//!   the command, its exit code). A monitor without the socket (an older bivy's) is served by
//!   `bivy __exec` (same sealed binary) as a child of the caller, over a socketpair.
//! - `BIVY_TRACE=1` makes the monitor log each setup step's time to `monitor.log` in the run dir,
//!   and `start()` its own steps (spawn, the monitor's reply) on the caller's stderr.
//!
//! INTERFACE CONTRACT (the daemon relies on exactly these items; keep their signatures):
//! `Spec`, `IdMapEntry`, `RootfsMode`, `Limits`, `start`, `state`, `State`, `ExitInfo`, `stop`,
//! `StopMode`, `freeze`, `unfreeze`, `set_limits`, `stats`, `Stats`, `exec`, `ExecSpec`, `ExecStdio`,
//! `ExecProcess`, `Signaller`, `monitor_pidfd`, `helper_main`, `Error`, `DiskMount`, `criu_check`, `checkpoint`,
//! `restore`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod apparmor;
pub mod cgroup;
pub mod seccomp;

/// One line of a uid or gid map: `nsid hostid count`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapEntry {
    pub nsid: u32,
    pub hostid: u32,
    pub count: u32,
}

/// How the rootfs ownership matches the container's id map.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsMode {
    /// On-disk ids are container ids; the runtime mounts the rootfs idmapped (open_tree + mount_setattr).
    Idmapped,
    /// On-disk ids were already shifted to host ids (the filesystem cannot be idmapped).
    Shifted,
    /// Privileged container: no user namespace, on-disk ids are used as they are.
    Privileged,
}

/// cgroup limits. `None` means "no limit" (and removes a previous limit when applied live).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `limits.memory`, bytes.
    pub memory: Option<u64>,
    /// `limits.memory.enforce=soft`: the limit is a soft limit (v1 soft_limit_in_bytes, v2 memory.high).
    pub memory_soft: bool,
    /// `limits.memory.swap=false` forbids swap (memsw limit = memory limit).
    pub memory_swap: bool,
    /// `limits.memory.swap.priority` (0-10): cgroup v1 `memory.swappiness` = 50 + priority, as
    /// LXD sets it (higher: swapped out sooner). cgroup2 has no per-cgroup swappiness.
    #[serde(default)]
    pub swap_priority: Option<u8>,
    /// `limits.cpu` resolved to a cpuset list such as `0-1` or `0,3`.
    pub cpuset: Option<String>,
    /// `limits.cpu.allowance` as a CFS quota: (quota_us, period_us).
    pub cpu_quota: Option<(u64, u64)>,
    /// `limits.cpu.allowance` as a percentage gives shares/weight; `limits.cpu.priority` (0-10) too.
    pub cpu_shares: Option<u64>,
    /// `limits.processes`.
    pub pids: Option<u64>,
    /// Disk devices' `limits.read`/`limits.write`/`limits.max`, per backing block device.
    #[serde(default)]
    pub io: Vec<IoLimit>,
}

/// I/O throttling of one block device (v1 `blkio.throttle.*`, v2 `io.max`); `None`: unlimited.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct IoLimit {
    pub major: u32,
    pub minor: u32,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

/// A disk device other than the root disk: a host directory or file (or a custom volume's
/// directory) bind-mounted into the container, or a block device whose filesystem is mounted. Resolved by the daemon; the runtime opens the
/// source without following any symlink and resolves `path` inside the container's root.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DiskMount {
    /// The device's name, for messages.
    pub name: String,
    /// Absolute host path (no `.` or `..`; any symlink on it is refused when it is opened).
    pub source: PathBuf,
    /// Absolute path inside the container (no `.` or `..`; not `/`).
    pub path: String,
    pub readonly: bool,
    /// Mount it idmapped with the container's map (on-disk id 0 is container root).
    pub idmap: bool,
    /// Bind the mounts below the source too.
    pub recursive: bool,
    /// `false`: a source missing at start is skipped.
    pub required: bool,
    /// `raw.mount.options` (comma-separated), for a block device source only.
    #[serde(default)]
    pub mount_options: String,
    /// LXD's `propagation`.
    #[serde(default)]
    pub propagation: Propagation,
}

/// How a disk's mount is tied to the host's (LXD's `propagation`, the kernel's shared subtrees).
/// `Private` (the default) and `Unbindable` receive nothing from the host. `Slave` and `Shared`
/// receive what the host mounts and unmounts below the source, when the host's mount holding the
/// source is itself shared; `Shared` is also shared inside the container (its bind copies there
/// follow it). Nothing a container mounts ever reaches the host: the staging namespace that
/// links the mount is the host's slave, as LXC makes a container's.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    #[default]
    Private,
    Rprivate,
    Slave,
    Rslave,
    Shared,
    Rshared,
    Unbindable,
    Runbindable,
}

impl Propagation {
    /// LXD's value (empty: the default).
    pub fn parse(s: &str) -> Option<Self> {
        use Propagation::*;
        Some(match s {
            "" | "private" => Private,
            "rprivate" => Rprivate,
            "slave" => Slave,
            "rslave" => Rslave,
            "shared" => Shared,
            "rshared" => Rshared,
            "unbindable" => Unbindable,
            "runbindable" => Runbindable,
            _ => return None,
        })
    }

    /// The mount must receive the host's mount events: copied while the staging namespace is
    /// still the host's slave.
    pub fn follows_host(self) -> bool {
        use Propagation::*;
        matches!(self, Slave | Rslave | Shared | Rshared)
    }

    /// The propagation type set on the container's mount (`MS_SHARED`, `MS_UNBINDABLE`), and
    /// whether on each mount of a recursive bind: private and slave mounts are already what they
    /// must be when they are copied.
    pub fn in_container(self) -> Option<(u64, bool)> {
        use Propagation::*;
        match self {
            Shared => Some((crate::sys::MS_SHARED, false)),
            Rshared => Some((crate::sys::MS_SHARED, true)),
            Unbindable => Some((crate::sys::MS_UNBINDABLE, false)),
            Runbindable => Some((crate::sys::MS_UNBINDABLE, true)),
            Private | Rprivate | Slave | Rslave => None,
        }
    }
}

/// A `unix-char` or `unix-block` device node (also what `gpu` and `usb` devices become): made by
/// host root on the monitor's staging tmpfs (mknod is refused in a user namespace), owned by the
/// container's `uid`/`gid`, and bind-mounted at `path`. The device cgroup allows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnixDev {
    /// The device's name (several nodes may share one: a GPU's card and render nodes).
    pub name: String,
    /// Absolute path inside the container (no `.` or `..`).
    pub path: String,
    pub block: bool,
    pub major: u32,
    pub minor: u32,
    /// Owner inside the container.
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0660` by default, as LXD).
    pub mode: u32,
}

impl UnixDev {
    /// The device cgroup rule allowing it (`devices.allow` syntax).
    pub fn cgroup_rule(&self) -> String {
        let t = if self.block { 'b' } else { 'c' };
        format!("{t} {}:{} rwm", self.major, self.minor)
    }
}

/// A network interface the monitor makes for the container before init runs (in the
/// container's network namespace, named, addressed by MAC and up). Resolved by the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The device's name, for messages.
    pub device: String,
    /// The interface name inside the container (`eth0`).
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub kind: NicKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum NicKind {
    /// A veth pair whose host end `host_name` joins `bridge` (none: a point-to-point link).
    Veth {
        host_name: String,
        bridge: Option<String>,
    },
    /// A macvlan (bridge mode) on host link `parent`.
    Macvlan { parent: String },
    /// The host link `parent` itself, moved into the container (renamed there) and given back
    /// with its name, MTU and MAC when the container stops or the device is removed.
    Physical {
        parent: String,
        host_mtu: u32,
        host_mac: Option<[u8; 6]>,
    },
}

/// Everything needed to start a container, fully resolved (profiles expanded, ids mapped, paths checked).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Spec {
    /// Instance name; also names the cgroup (`bivy/<name>`), the AppArmor profile and the hostname default.
    pub name: String,
    /// Host path of the root filesystem directory; with `rootfs_lower`, of the layered volume
    /// whose `upper/` and `work/` are the overlay's (storage/layered.rs).
    pub rootfs: PathBuf,
    /// The read-only lower layer of a layered rootfs (the image's rootfs), mounted as an overlay
    /// inside the container's user namespace (idmapped only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_lower: Option<PathBuf>,
    pub rootfs_mode: RootfsMode,
    /// Empty when privileged.
    pub uid_map: Vec<IdMapEntry>,
    pub gid_map: Vec<IdMapEntry>,
    pub hostname: String,
    /// The init command, normally `["/sbin/init"]`.
    pub init: Vec<String>,
    /// Environment for init (from `environment.*`), plus defaults the daemon chose.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// `security.nesting`.
    pub nesting: bool,
    /// The seccomp policy text (the format of `seccomp/default.policy`, after instance overrides).
    pub seccomp_policy: String,
    /// `raw.apparmor`, appended to the rendered profile.
    pub apparmor_raw: String,
    /// Host path of the console log the monitor writes (the console pty's output).
    pub console_log: PathBuf,
    /// The cgroup name under `bivy/` when it differs from `name` (several daemons on one host,
    /// e.g. tests, must not share cgroups).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Disk devices, in mount order (parents before what is mounted below them).
    #[serde(default)]
    pub disks: Vec<DiskMount>,
    /// Network interfaces, made in this order.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Device nodes (`unix-char`, `unix-block`, `gpu`, `usb`), made after the disks.
    #[serde(default)]
    pub unix_devices: Vec<UnixDev>,
    /// The image's templates, rendered by the daemon, that init writes into a layered rootfs
    /// (on the container's own overlay, as container root, before anything is mounted in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<crate::image::TemplateFile>,
}

impl Spec {
    /// The cgroup this container lives in, below `bivy/`.
    pub fn cgroup_name(&self) -> &str {
        self.cgroup.as_deref().unwrap_or(&self.name)
    }
}

/// A recorded end of a container.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ExitInfo {
    /// Exit code of init, or 128+signal.
    pub code: i32,
    /// Human-readable reason: "exited", "killed by signal 9", "stopped by request", ...
    pub reason: String,
}

/// What a container is doing now, read from its run directory and the kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Running {
        init_pid: i32,
        monitor_pid: i32,
        frozen: bool,
    },
    Stopped {
        last_exit: Option<ExitInfo>,
    },
}

/// How to stop.
#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    /// Signal init (SIGRTMIN+3 for systemd, SIGPWR otherwise), wait up to the timeout, then kill.
    Clean(Duration),
    /// As `Clean`, but a container still running at the timeout is left running and the stop
    /// fails (LXD's `Shutdown`: a stop with a timeout and without force).
    Shutdown(Duration),
    /// Kill the whole cgroup now.
    Force,
}

/// Usage figures for `GET .../state`, as the kernel counts them. `None` is "this host does not
/// count it" (no such controller or file), never a read error: those fail [`stats`] instead, so
/// no figure is ever made up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Memory in use, bytes (`memory.current` / `memory.usage_in_bytes`).
    pub memory_usage: Option<u64>,
    /// Peak memory use, bytes (cgroup2 `memory.peak` exists since Linux 5.19).
    pub memory_peak: Option<u64>,
    /// Swap in use, bytes (needs swap accounting).
    pub swap_usage: Option<u64>,
    pub swap_peak: Option<u64>,
    /// CPU time used, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Tasks in the container (`pids.current`, else the cgroup's task lists).
    pub processes: u64,
}

/// A command to run inside a running container.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// `Some((width, height))`: run under a new pty allocated inside the container's devpts.
    pub pty: Option<(u16, u16)>,
}

/// The stdio of a non-pty exec (ignored when `ExecSpec::pty` is set).
pub struct ExecStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Errors of the runtime; the daemon only displays them.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

mod chan;
mod confine;
mod control;
pub mod criu;
mod disks;
mod exec;
mod helper;
pub mod host;
mod hotplug;
mod init;
mod jail;
mod monitor;
mod nics;
mod rootfs;
mod userns;

pub use exec::{resize_pty, ExecProcess, Signaller};
pub use host::host_id_range;
pub use nics::{
    intend as intend_nics, pending as pending_nics, plug as plug_nic, reconcile as reconcile_nics,
    record as record_nics, settled as nics_settled, unplug as unplug_nic,
};
pub use userns::{rootfs_supports_idmap, shift_acl, shift_fscaps, shift_rootfs, to_host};

/// The run directory's files (all owned by the runtime).
pub(crate) mod files {
    /// The [`Spec`](super::Spec) the container was started with (JSON).
    pub const SPEC: &str = "spec.json";
    /// `<pid> <starttime>` of the monitor, while it runs.
    pub const MONITOR_PID: &str = "monitor.pid";
    /// `<pid> <starttime>` of init (host pid), while it runs.
    pub const INIT_PID: &str = "init.pid";
    /// The recorded end ([`ExitInfo`](super::ExitInfo), JSON), written when init is gone.
    pub const EXIT: &str = "exit.json";
    /// `clean` or `force` when a stop was requested (so the exit reason says so).
    pub const STOP_REQUEST: &str = "stop.request";
    /// The AppArmor label init runs under (absent without AppArmor), for exec.
    pub const LABEL: &str = "apparmor.label";
    /// The monitor's own stderr.
    pub const MONITOR_LOG: &str = "monitor.log";
    /// The monitor's console socket: a client that connects gets the console pty master
    /// (SCM_RIGHTS) and owns the console until it disconnects; the log pauses meanwhile.
    pub const CONSOLE: &str = "console.sock";
    /// The monitor's exec socket (SOCK_SEQPACKET, 0600): for each connection it forks a waiter
    /// that runs the request in the container (see `exec.rs`).
    pub const EXEC_SOCK: &str = "exec.sock";
    /// A restore request ([`criu::RestoreReq`](super::criu::RestoreReq), JSON) for the monitor
    /// that `restore()` spawns; the monitor reads and removes it.
    pub const RESTORE: &str = "restore.json";
    /// Mount point of the monitor's staging tmpfs (only in the monitor's private mount namespace).
    pub const STAGE: &str = "stage";
    /// Written by a monitor that reaches its run directory through a descriptor once the
    /// container runs, so that the directory may be moved aside while it ends
    /// (`control::kill_and_detach`): its pid and start time, as in [`MONITOR_PID`]. An older
    /// bivy's monitor, which writes none (and leaves one a newer one wrote before it), is
    /// waited for.
    pub const DETACHABLE: &str = "detachable";
}

/// An attached console: the pty master, held exclusively until this is dropped.
pub struct ConsoleAttach {
    pub master: OwnedFd,
    _guard: std::os::unix::net::UnixStream,
}

/// Attach to a running container's console (`lxc console`): one client at a time.
pub fn console_attach(run_dir: &Path) -> Result<ConsoleAttach> {
    let p = run_dir.join(files::CONSOLE);
    let s = std::os::unix::net::UnixStream::connect(&p)
        .map_err(|e| Error(format!("console of {}: {e}", run_dir.display())))?;
    let fd = OwnedFd::from(s.try_clone().map_err(|e| Error(format!("console: {e}")))?);
    match chan::recv(&fd)? {
        Some((chan::Msg::PtyMaster, Some(master))) => Ok(ConsoleAttach { master, _guard: s }),
        Some((chan::Msg::Err(e), _)) => Err(Error(e)),
        _ => Err(Error("the console is not available".into())),
    }
}

/// Start the container: spawn its monitor (daemonized, survives the caller), which sets up the
/// namespaces, cgroup, mounts and confinement and execs init. Returns once init has been exec'd
/// (or with the error that prevented it, after undoing everything).
///
/// The binary re-executed for the monitor is `$BIVY_EXE` if set, else `/proc/self/exe`, copied once
/// per process into a sealed memfd.
pub fn start(spec: &Spec, run_dir: &Path) -> Result<State> {
    control::start(spec, run_dir)
}

/// [`start`] in two halves: the run directory made ready ([`prepare`], which may run beside work
/// the start needs done before the monitor takes the rootfs), then the monitor asked
/// ([`start_prepared`]).
pub use control::{prepare, start_prepared, Prepared};

/// Check that CRIU is here and works (`$BIVY_CRIU`, else PATH; version 4.0 or newer; `criu
/// check`), once per process; returns its version.
pub fn criu_check() -> Result<String> {
    criu::find().map(|c| c.version.clone())
}

/// Checkpoint the running container into `images` (an existing, empty directory), with CRIU's
/// log at `log`. `leave_running`: it keeps running; else it is stopped once the dump is complete
/// (this returns after its monitor has recorded the end). A failed dump leaves it running as it
/// was; the error carries the last lines of CRIU's log.
pub fn checkpoint(run_dir: &Path, images: &Path, log: &Path, leave_running: bool) -> Result<()> {
    criu::dump(run_dir, images, log, leave_running)
}

/// Start the container from the checkpoint in `images` (made by [`checkpoint`] of a container
/// with the same spec): a monitor sets up as for [`start`] and CRIU restores the tree as its
/// child, with the processes' pids (in the container) and memory. The images are left as they
/// are; CRIU's log goes to `log`.
pub fn restore(spec: &Spec, run_dir: &Path, images: &Path, log: &Path) -> Result<State> {
    let criu = criu::find()?;
    criu::check_maps(spec, images)?;
    let req = criu::RestoreReq {
        criu: criu.path.clone(),
        images: images.to_path_buf(),
        log: log.to_path_buf(),
    };
    control::restore(spec, run_dir, &req)
}

/// `core.cgroup_favordynmods`: the kernel's `favordynmods` on or off for the host's cgroup2
/// hierarchy (see `cgroup::set_favor_dynmods`).
pub fn set_cgroup_favor_dynmods(on: bool) -> Result<()> {
    cgroup::set_favor_dynmods(on)
}

/// Current state, from the run directory (monitor alive?) and the kernel.
pub fn state(run_dir: &Path) -> Result<State> {
    control::state(run_dir)
}

/// Whether the container runs: [`state`]'s answer without reading its last exit record.
pub fn is_running(run_dir: &Path) -> bool {
    control::is_running(run_dir)
}

/// Let go of what the runtime keeps of processes that have ended and cgroups that were
/// removed (the pidfds that answer whether a container's monitor and init are alive, the
/// cgroup files its usage figures are read from): called as a container's monitor ends.
pub fn release_ended() {
    helper::release_ended();
    confine::cgroup_release_removed();
    ENDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

static ENDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times [`release_ended`] ran: what a caller keeps of running containers by pid
/// (a container's namespace id, say) is good while this stays the same (no monitor ended, so
/// no pid of theirs was let go).
pub fn ended_count() -> u64 {
    ENDED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether a run directory whose entries are `names` (from one directory read) may hold a
/// running container or a killed monitor's remains: only with its monitor's pid file (a
/// monitor writes it before anything else and removes it last). Without it, [`is_running`] is
/// false and [`reap_dead_monitor`] has nothing to do.
pub fn may_have_monitor(names: &std::collections::HashSet<std::ffi::OsString>) -> bool {
    names.contains(std::ffi::OsStr::new(files::MONITOR_PID))
}

/// Whether a killed monitor left its container's cgroup and pidfiles behind (see
/// [`reap_dead_monitor`]).
pub fn monitor_left_remains(run_dir: &Path) -> bool {
    control::monitor_left_remains(run_dir)
}

/// Tear down what a killed monitor left (its container's cgroup, pidfiles), recording the end;
/// nothing while the monitor runs or after it ended cleanly.
pub fn reap_dead_monitor(run_dir: &Path) {
    control::reap_dead_monitor(run_dir)
}

/// Stop the container; returns when it is stopped and its cgroup is gone.
pub fn stop(run_dir: &Path, mode: StopMode) -> Result<()> {
    control::stop(run_dir, mode)
}

pub use control::{after_next_answer, answered, Ending};

/// A forced stop for a start that follows at once: the container killed, its run directory
/// moved aside for its monitor to end in (a new one holding copies of the files named in
/// `keep`), not waited for (see [`Ending::finish`]); `None` when it had stopped, or its end was
/// waited for.
pub fn kill_and_detach(run_dir: &Path, keep: &[&str]) -> Result<Option<Ending>> {
    control::kill_and_detach(run_dir, keep)
}

/// At a daemon's start: finish the runs [`kill_and_detach`] moved aside in the run directories'
/// directory `runs` that no daemon saw end, and remove the cgroups killed spare monitors premade.
pub fn finish_ended_runs(runs: &Path) {
    confine::remove_orphan_premade();
    control::finish_ended_runs(runs)
}

/// The cgroup name for a new run of a container normally in `bivy/<base>`: another while an
/// ending run of it is still there.
pub fn free_cgroup_name(base: &str) -> String {
    control::free_cgroup_name(base)
}

/// The id maps (uid, gid) a running container was started with; `None` for a privileged one.
pub fn running_id_maps(run_dir: &Path) -> Result<Option<(Vec<IdMapEntry>, Vec<IdMapEntry>)>> {
    let spec = control::running_spec(run_dir)?;
    Ok(
        (spec.rootfs_mode != RootfsMode::Privileged && !spec.uid_map.is_empty())
            .then_some((spec.uid_map, spec.gid_map)),
    )
}

pub fn freeze(run_dir: &Path) -> Result<()> {
    let spec = control::running_spec(run_dir)?;
    confine::cgroup_freeze(spec.cgroup_name())
}

pub fn unfreeze(run_dir: &Path) -> Result<()> {
    let spec = control::running_spec(run_dir)?;
    confine::cgroup_thaw(spec.cgroup_name())
}

/// Apply new limits to a running container.
pub fn set_limits(run_dir: &Path, limits: &Limits) -> Result<()> {
    let spec = control::running_spec(run_dir)?;
    confine::cgroup_set_limits(spec.cgroup_name(), limits)
}

/// Usage figures of the container the caller found running (by [`state`], whose monitor is
/// `monitor_pid`); an error when its
/// cgroup cannot be read (it stopped meanwhile, say: the caller asks [`state`] again).
pub fn stats(run_dir: &Path, monitor_pid: i32) -> Result<Stats> {
    let name = control::cgroup_of(run_dir, monitor_pid)
        .ok_or_else(|| Error(format!("no running spec in {}", run_dir.display())))?;
    confine::cgroup_stats(&name)
}

/// Run a command in the running container: its monitor forks a waiter that runs it (a monitor
/// of an older bivy: a `bivy __exec` helper, a child of the caller). [`ExecProcess::wait`] gives
/// its exit code (128+N when killed by signal N); [`ExecProcess::signaller`] signals it.
/// Without `stdio` (and without a pty) the command gets the caller's stdio.
pub fn exec(run_dir: &Path, spec: &ExecSpec, stdio: Option<ExecStdio>) -> Result<ExecProcess> {
    exec::exec(run_dir, spec, stdio)
}

/// Hot-plug devices into a running container, all or none: the disks and nodes of the devices
/// named in `remove` are unmounted (and their nodes removed), then `disks` and `nodes` are
/// mounted, exactly as a start would have (sources opened without following symlinks, targets
/// resolved inside the container, read-only locked). The device cgroup follows; the running
/// spec records the result (for CRIU and exec).
pub fn hotplug(
    run_dir: &Path,
    remove: &[String],
    disks: Vec<DiskMount>,
    nodes: Vec<UnixDev>,
) -> Result<()> {
    hotplug::apply(run_dir, remove, disks, nodes)
}

/// After a daemon restart: make a running container's disks and nodes of the devices `managed`
/// names exactly `disks` and `nodes` (its record's), whatever a killed daemon's hot-plug left
/// half-recorded (see `hotplug::reconcile`).
pub fn hotplug_reconcile(
    run_dir: &Path,
    disks: Vec<DiskMount>,
    nodes: Vec<UnixDev>,
    managed: &dyn Fn(&str) -> bool,
) -> Result<()> {
    hotplug::reconcile(run_dir, disks, nodes, managed)
}

/// A command running `program` (a host tool fed by a remote peer, such as the rsync receiving a
/// migration) that can write only below `dir`: every other mount is read-only for it.
pub fn write_only_below(dir: &Path, program: &Path) -> Result<std::process::Command> {
    jail::command(dir, program)
}

/// The NICs a running container has (as started and hot-plugged since).
pub fn running_nics(run_dir: &Path) -> Result<Vec<Nic>> {
    Ok(control::running_spec(run_dir)?.nics)
}

/// Plug one device node into a running container (a USB device that appeared); idempotent.
pub fn plug_node(run_dir: &Path, node: UnixDev) -> Result<()> {
    hotplug::plug_node(run_dir, node)
}

/// Unplug device `name`'s node at `path` from a running container (a USB device that went);
/// nothing to do when it has none there.
pub fn unplug_node(run_dir: &Path, name: &str, path: &str) -> Result<()> {
    hotplug::unplug_node(run_dir, name, path)
}

/// A pidfd for the container's monitor (readable when the container has stopped), or None when stopped.
pub fn monitor_pidfd(run_dir: &Path) -> Result<Option<OwnedFd>> {
    control::monitor_pidfd(run_dir)
}

/// Entry for the hidden helper verbs (`__monitor`, `__exec`, ...). `main` calls this before anything
/// else when argv[1] starts with `__`; it never returns.
pub fn helper_main(args: &[String]) -> ! {
    match args.first().map(String::as_str) {
        Some("__monitor") => monitor::helper(&args[1..]),
        Some("__exec") => exec::helper(&args[1..]),
        Some("__hotplug") => hotplug::helper(&args[1..]),
        Some("__write-only-below") => jail::helper(&args[1..]),
        _ => {
            eprintln!("bivy: unknown helper {:?}", args.first());
            std::process::exit(127)
        }
    }
}
