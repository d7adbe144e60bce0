//! Shared harness for the integration tests (`tests/*.rs`, each starting with `mod common;`).
//!
//! - Skip policy (style.md, [`skip`]): a test that lacks a host feature prints
//!   `SKIP <test>: <reason>` and returns; with `BIVY_MUST_WORK=1` (CI) the skip panics instead.
//!   Skips are also appended to `$BIVY_SKIP_LOG` so `cargo xtask test` can list them after cargo
//!   captured the output. The unit tests in `src/` and `xtask/` include the same file.
//! - Test images: [`busybox_image`] builds `target/test-images/busybox.tar.gz` on demand (offline);
//!   [`debian_image`] only finds the Debian image (`cargo xtask test-image debian` builds it).
//! - [`TempDir`]: a unique directory, unmounted below and removed on drop.
//! - [`Daemon`]: `bivy daemon` with `BIVY_DIR` in a [`TempDir`], killed by pid on drop.
//!
//! Everything here is synchronous and uses only std plus the crates bivy already depends on.

#![allow(dead_code)]

pub mod tls;

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The workspace root (this package's manifest directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/` (or `$CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
    }
}

// -------------------------------------------------------------------------------------------
// skip policy

// The one skip mechanism, shared with the unit tests in `src/` and `xtask/`.
pub mod skip;
#[allow(unused_imports)] // each test binary uses a different part
pub use skip::{
    current_test_name, declared_lacking, euid, have_cmd, must_work, require_root, skip,
    skip_kernel_lacks, skip_with,
};

/// `skip_unless!(condition, "reason {}", args)`: skip the current test (and return from it)
/// unless `condition` holds.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            $crate::common::skip(&$crate::common::current_test_name(), &format!($($reason)+));
            return;
        }
    };
}

/// `require!(root)`, `require!(busybox)`, `require!(debian => path)`... : skip unless available.
#[macro_export]
macro_rules! require {
    (root) => {
        if !$crate::common::require_root() {
            return;
        }
    };
    (cmd $prog:expr) => {
        $crate::skip_unless!($crate::common::have_cmd($prog), "needs `{}` on PATH", $prog)
    };
}

// -------------------------------------------------------------------------------------------
// binaries and images

/// The standard error of a command that must have failed (its standard output in the panic
/// when it succeeded).
#[track_caller]
pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `bivy` binary cargo built for this test run, or `$BIVY_TEST_EXE` to run the suite
/// against another build (`BIVY_TEST_EXE=target/dist/bivy cargo xtask test` tests what ships).
pub fn bivy_bin() -> PathBuf {
    std::env::var_os("BIVY_TEST_EXE")
        .map(PathBuf::from)
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bivy")))
}

/// A python with pylxd, when the CI set one up: `$BIVY_PYTHON`, else `target/pyvenv/bin/python`.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BIVY_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = target_dir().join("pyvenv/bin/python");
    venv.exists().then_some(venv)
}

/// `target/test-images/busybox.tar.gz`, built (offline, a second or two) if missing.
/// Panics if it cannot be built: every container test needs it.
pub fn busybox_image() -> PathBuf {
    let img = target_dir().join("test-images/busybox.tar.gz");
    if img.is_file() {
        return img;
    }
    // The xtask builds in a shared staging directory: one build at a time, across threads and
    // test processes (a file lock), and whoever waited finds the image made.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(target_dir()).expect("target dir");
    let lockf = fs::File::create(target_dir().join(".busybox-image.lock")).expect("lock file");
    let _flock = nix::fcntl::Flock::lock(lockf, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    if img.is_file() {
        return img;
    }
    // Its own --target-dir: the `cargo test` running us may hold the lock on target/.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["run", "--quiet", "--package", "xtask", "--target-dir"])
        .arg(target_dir().join("harness-xtask"))
        .args(["--", "test-image", "busybox"])
        .stdin(Stdio::null())
        .status()
        .expect("run `cargo xtask test-image busybox`");
    assert!(
        status.success(),
        "`cargo run -p xtask -- test-image busybox` failed ({status})"
    );
    assert!(img.is_file(), "{} missing after building it", img.display());
    img
}

/// [`debian_image`], or `None` with the running test skipped, saying how to build it.
pub fn debian_image_or_skip() -> Option<PathBuf> {
    let img = debian_image();
    if img.is_none() {
        skip(
            &current_test_name(),
            "no Debian image (cargo xtask test-image debian)",
        );
    }
    img
}

/// `target/test-images/debian12.tar.zst` (Debian 12 with systemd) if it was built: it needs root
/// and Debian's mirror (`cargo xtask test-image debian`), so it is never built implicitly.
pub fn debian_image() -> Option<PathBuf> {
    ["debian12.tar.zst", "debian12.tar.gz"]
        .iter()
        .map(|f| target_dir().join("test-images").join(f))
        .find(|p| p.is_file())
}

// -------------------------------------------------------------------------------------------
// TempDir

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under `$TMPDIR` (else `/var/tmp`, which is on disk: container rootfs and
/// idmapped mounts need a real filesystem), removed on drop after unmounting anything below it.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new() -> io::Result<TempDir> {
        let base = std::env::var_os("TMPDIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        Self::new_in(&base)
    }

    pub fn new_in(base: &Path) -> io::Result<TempDir> {
        let base = base.canonicalize()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("bivy-test-{}-{n}-{nanos:x}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path, keep: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unique temp dir name after 100 tries",
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the directory after drop (for debugging a failed test); prints where it is.
    pub fn keep(&mut self) {
        self.keep = true;
        eprintln!("keeping {}", self.path.display());
    }
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub use bivy::util::unescape_mountinfo;

/// Detach every mount at or below `dir` (deepest first). Returns what is still mounted.
pub fn unmount_below(dir: &Path) -> Vec<PathBuf> {
    for _round in 0..3 {
        let mounts = mounts_below(dir);
        if mounts.is_empty() {
            return mounts;
        }
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    mounts_below(dir)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let left = unmount_below(&self.path);
        if !left.is_empty() {
            // Removing the tree now could walk into a host directory bind-mounted below it.
            eprintln!(
                "not removing {}: still mounted below it: {left:?}",
                self.path.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

// -------------------------------------------------------------------------------------------
// Daemon

/// How long a daemon gets to create and accept on its socket.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
pub const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(20);

type CleanupHook = Box<dyn FnOnce(&Daemon)>;

/// `bivy daemon` with `BIVY_DIR=<tmp>/bivy`, its output in `<tmp>/daemon.log`.
///
/// A network namespace of the test's own, held by a `sleep` it started (killed by PID on drop,
/// which takes every link, address and nftables rule made in it along), with `lo` up.
pub struct Netns {
    holder: Child,
}

impl Netns {
    pub fn new() -> io::Result<Netns> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "86400"])
            .stdin(Stdio::null())
            .spawn()?;
        let ns = Netns { holder };
        // unshare execs sleep in the same process once the namespace is made.
        let own = fs::read_link("/proc/self/ns/net")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_link(format!("/proc/{}/ns/net", ns.pid()))? == own {
            if Instant::now() > deadline {
                return Err(io::Error::other("unshare --net did not make a namespace"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = ns.cmd("ip").args(["link", "set", "lo", "up"]).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip link set lo up: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(ns)
    }

    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `program` to run inside the namespace (through `nsenter`).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Run `program args` in the namespace; (success, stdout + stderr).
    pub fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        match self.cmd(program).args(args).output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("{program}: {e}")),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A daemon in a network namespace of the test's own with the busybox image imported as `bb`,
/// or `None` after recording a skip (not root, or one of `tools` missing).
#[allow(dead_code)]
pub fn netns_daemon(tools: &[&str]) -> Option<(Netns, Daemon)> {
    if !require_root() {
        return None;
    }
    for tool in tools.iter().chain(&["nsenter", "unshare", "ip"]) {
        if !have_cmd(tool) {
            skip(&current_test_name(), &format!("{tool} is not installed"));
            return None;
        }
    }
    let ns = Netns::new().expect("network namespace");
    let d = Daemon::start_in(&ns, &[]).expect("daemon");
    let img = busybox_image();
    d.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "bb",
    ]);
    Some((ns, d))
}

/// Drop order: cleanup hooks (last added first, daemon still running, so they can use the CLI),
/// then SIGTERM to exactly this pid (SIGKILL after [`DAEMON_STOP_TIMEOUT`]), then the temp dir
/// is unmounted below and removed.
pub struct Daemon {
    child: Option<Child>,
    /// The network namespace the daemon runs in (a holder process's), when not the host's.
    netns: Option<u32>,
    /// A command the daemon runs under (`WRAPPER... bivy daemon`), e.g. one that gives it a
    /// mount namespace of its own; it must exec the daemon in its own pid.
    wrapper: Vec<String>,
    bivy_dir: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    hooks: Vec<CleanupHook>,
    // Last: dropped after the daemon is gone.
    tmp: TempDir,
}

impl Daemon {
    /// Start a daemon in a new [`TempDir`] and wait until its socket accepts connections.
    pub fn start() -> io::Result<Daemon> {
        Self::start_with(&[])
    }

    /// Same, with extra environment variables for the daemon (kept for [`Daemon::restart`]).
    pub fn start_with(env: &[(&str, &str)]) -> io::Result<Daemon> {
        Self::start_full(env, None)
    }

    /// Start a daemon in the network namespace of `netns` (see [`Netns`]): the bridges, rules and
    /// containers' links it makes stay there, and go when the namespace does.
    pub fn start_in(netns: &Netns, env: &[(&str, &str)]) -> io::Result<Daemon> {
        Self::start_full(env, Some(netns.pid()))
    }

    /// Start a daemon run as `wrapper... bivy daemon` (see [`Daemon::wrapper`]).
    #[allow(dead_code)]
    pub fn start_wrapped(wrapper: &[&str], env: &[(&str, &str)]) -> io::Result<Daemon> {
        Self::start_full_with(env, None, wrapper.iter().map(|s| s.to_string()).collect())
    }

    fn start_full(env: &[(&str, &str)], netns: Option<u32>) -> io::Result<Daemon> {
        Self::start_full_with(env, netns, Vec::new())
    }

    fn start_full_with(
        env: &[(&str, &str)],
        netns: Option<u32>,
        wrapper: Vec<String>,
    ) -> io::Result<Daemon> {
        let tmp = TempDir::new()?;
        let bivy_dir = tmp.path().join("bivy");
        fs::create_dir(&bivy_dir)?;
        let log = tmp.path().join("daemon.log");
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut d = Daemon {
            netns,
            wrapper,
            child: None,
            bivy_dir,
            log,
            env,
            hooks: Vec::new(),
            tmp,
        };
        // Hooks run last-registered first: instances go before the pools holding them.
        d.on_cleanup(delete_extra_pools);
        d.on_cleanup(delete_all_instances);
        d.spawn()?;
        d.wait_ready()?;
        Ok(d)
    }

    /// Spawn `bivy daemon` on our `BIVY_DIR`, appending to the log.
    fn spawn(&mut self) -> io::Result<()> {
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match (self.netns, self.wrapper.split_first()) {
            (Some(pid), _) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/proc/{pid}/ns/net"))
                    .arg("--")
                    .arg(bivy_bin());
                c
            }
            (None, Some((prog, args))) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bivy_bin());
                c
            }
            (None, None) => Command::new(bivy_bin()),
        };
        let child = cmd
            .arg("daemon")
            .env("BIVY_DIR", &self.bivy_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL the daemon (only it: containers and their monitors must survive) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a new daemon on the same `BIVY_DIR` (after [`Daemon::kill9`] or [`Daemon::stop`];
    /// a still-running daemon is stopped first) and wait until it accepts.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        let sock = self.socket();
        let mut delay = Duration::from_millis(5);
        loop {
            if UnixStream::connect(&sock).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "bivy daemon exited ({status}) before listening on {}; log:\n{}",
                    sock.display(),
                    self.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "bivy daemon not accepting on {} after {DAEMON_START_TIMEOUT:?}; log:\n{}",
                        sock.display(),
                        self.log_text()
                    ),
                ));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// `$BIVY_DIR/unix.socket`.
    pub fn socket(&self) -> PathBuf {
        self.bivy_dir.join("unix.socket")
    }

    /// `$BIVY_DIR`.
    pub fn dir(&self) -> &Path {
        &self.bivy_dir
    }

    /// The stored state as JSON: the database document with the changes of its log.
    pub fn database(&self) -> serde_json::Value {
        let data = bivy::instance::db::read(&self.database_path()).expect("the database");
        serde_json::to_value(data).expect("json")
    }

    /// The text of what stores the state, document and log (to show what is never stored).
    pub fn database_text(&self) -> String {
        let p = self.database_path();
        let log = bivy::instance::db::log_path(&p);
        fs::read_to_string(&p).expect("database.json")
            + &fs::read_to_string(log).unwrap_or_default()
    }

    /// Change the stored state of a stopped or killed daemon: written back as a whole document,
    /// which its old log no longer continues.
    pub fn edit_database(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let mut db = self.database();
        f(&mut db);
        fs::write(self.database_path(), serde_json::to_vec(&db).expect("json"))
            .expect("write the database");
    }

    /// `$BIVY_DIR/database.json`.
    pub fn database_path(&self) -> PathBuf {
        self.bivy_dir.join("database.json")
    }

    /// The temp dir holding `$BIVY_DIR` and the log; free for the test's own files.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's stdout and stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `bivy <args>` as a client of this daemon (`BIVY_DIR` set), not yet run. Its client
    /// configuration is a directory of the test's own (`BIVY_CONF`, made only when a remote is
    /// added), never the user's: a default remote switched there must not redirect a test.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bivy_bin());
        c.env("BIVY_DIR", &self.bivy_dir)
            .env("BIVY_CONF", self.tmp.path().join("bivy-conf"))
            .stdin(Stdio::null());
        c
    }

    /// Run `bivy <args>` against this daemon and capture its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().expect("run bivy")
    }

    /// Run `bivy <args>`, panic with the output (and the daemon log) unless it succeeds; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "bivy {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `bivy <args>` with `input` on its stdin; its output.
    pub fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut c = self.cli();
        c.args(args);
        run_with_stdin(c, input)
    }

    /// Import the busybox test image as `busybox` with `bivy image import`.
    pub fn import_busybox(&self) {
        let img = busybox_image();
        self.ok(&[
            "image",
            "import",
            img.to_str().expect("utf-8 path"),
            "--alias",
            "busybox",
        ]);
    }

    /// Add work to do on drop while the daemon still runs (last added runs first).
    pub fn on_cleanup(&mut self, f: impl FnOnce(&Daemon) + 'static) {
        self.hooks.push(Box::new(f));
    }

    /// Keep the temp dir after drop (the daemon is still stopped).
    pub fn keep(&mut self) {
        self.tmp.keep();
    }

    /// SIGTERM exactly our child, wait (bounded), SIGKILL if it will not go.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DAEMON_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("bivy daemon {pid} ignored SIGTERM for {DAEMON_STOP_TIMEOUT:?}; SIGKILL");
        let _ = child.kill();
        child.wait().ok()
    }
}

/// Default cleanup hook: force-stop and delete every instance the daemon still lists, through
/// the REST API (the LXD 1.0 contract, so it does not depend on CLI flags), so containers
/// (whose monitors outlive the daemon) do not leak into the next test.
/// Containers left after the daemon is gone are stopped by [`stop_leftover_containers`].
fn delete_all_instances(d: &Daemon) {
    let Ok((200, list)) = d.api("GET", "/1.0/instances", None) else {
        return;
    };
    let names: Vec<String> = list["metadata"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str())
                .filter_map(|u| u.rsplit('/').next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        let stop = r#"{"action":"stop","force":true,"timeout":-1}"#;
        if let Ok((_, op)) = d.api("PUT", &format!("/1.0/instances/{name}/state"), Some(stop)) {
            d.wait_operation(&op);
        }
        if let Ok((_, op)) = d.api("DELETE", &format!("/1.0/instances/{name}"), None) {
            d.wait_operation(&op);
        }
    }
}

/// Second cleanup hook: delete every storage pool but `default` (after the instances are gone),
/// so btrfs pools on loop files are unmounted and their loop devices released.
fn delete_extra_pools(d: &Daemon) {
    let Ok((200, list)) = d.api("GET", "/1.0/storage-pools", None) else {
        return;
    };
    for url in list["metadata"].as_array().into_iter().flatten() {
        let Some(name) = url.as_str().and_then(|u| u.rsplit('/').next()) else {
            continue;
        };
        if name != "default" {
            let _ = d.api("DELETE", &format!("/1.0/storage-pools/{name}"), None);
        }
    }
}

/// One HTTP/1.1 request over a unix socket (`Connection: close`), returning status and body.
/// Handles `Content-Length`, chunked, and read-to-EOF bodies.
pub fn http_unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bivy\r\nUser-Agent: bivy-tests\r\nConnection: close\r\n"
    );
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let eol = rest[i..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_txt = String::from_utf8_lossy(&rest[i..i + eol]).into_owned();
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            i += eol + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(i..i + size).ok_or_else(|| bad("short chunk"))?);
            i += size + 2;
        }
        rest = out;
    } else if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        rest.truncate(len);
    }
    Ok((status, rest))
}

impl Daemon {
    /// A REST call to this daemon: status and JSON body (`Null` if the body is not JSON).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> io::Result<(u16, serde_json::Value)> {
        let (status, bytes) =
            http_unix(&self.socket(), method, path, body, Duration::from_secs(60))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// If `resp` is an async operation response, wait for it (bounded, 60 s); its final JSON.
    pub fn wait_operation(&self, resp: &serde_json::Value) -> Option<serde_json::Value> {
        let op = resp["operation"].as_str().filter(|o| !o.is_empty())?;
        self.api("GET", &format!("{op}/wait?timeout=60"), None)
            .ok()
            .map(|(_, v)| v)
    }
}

/// Run `cmd` with `input` on its stdin, capturing its output.
pub fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("output")
}

/// Run a command with a time limit (SIGKILL on expiry), capturing output.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} took longer than {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let hooks = std::mem::take(&mut self.hooks);
        // Hooks talk to the daemon; skip them if it already died.
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if alive {
            for hook in hooks.into_iter().rev() {
                hook(self);
            }
        }
        self.stop();
        // A test that stopped the daemon and failed before starting it again leaves its
        // containers running (their monitors outlive the daemon): stop them by their pid files.
        stop_leftover_containers(&self.bivy_dir);
        // self.tmp drops next: unmount below, then remove.
    }
}

/// Field 22 of /proc/PID/stat: with the pid, one process for the system's lifetime.
fn proc_starttime(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    // A zombie (ended, not yet reaped) is gone.
    if after.starts_with('Z') || after.starts_with('X') {
        return None;
    }
    after.split(' ').nth(19)?.parse().ok()
}

/// After the daemon is gone: the containers it left running, found by the pid files under
/// `$BIVY_DIR/run` (a pid and its start time, checked, so only this test's processes are
/// touched), are stopped by killing their init; their monitors then remove the cgroup and the
/// mounts and end (waited for, killed after 10 s).
fn stop_leftover_containers(bivy_dir: &Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Ok(entries) = fs::read_dir(bivy_dir.join("run")) else {
        return;
    };
    let mut monitors = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        let live = |file: &str| -> Option<(i32, u64)> {
            let s = fs::read_to_string(dir.join(file)).ok()?;
            let mut it = s.split_whitespace();
            let pid: i32 = it.next()?.parse().ok()?;
            let st: u64 = it.next()?.parse().ok()?;
            (proc_starttime(pid) == Some(st)).then_some((pid, st))
        };
        if let Some(m) = live("monitor.pid") {
            if let Some((init, _)) = live("init.pid") {
                eprintln!(
                    "test cleanup: stopping the container left in {}",
                    dir.display()
                );
                let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
            }
            monitors.push(m);
        }
    }
    for (pid, st) in monitors {
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_starttime(pid) == Some(st) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if proc_starttime(pid) == Some(st) {
            eprintln!("test cleanup: monitor {pid} still there after 10 s; SIGKILL");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Where the files an instance changed or made are on disk, for its volume `vol`: a layered
/// volume's upper layer (bivy's `dir` pools, storage/layered.rs), else its `rootfs/`. A file
/// made there from the host shows in the container.
pub fn changed_files_dir(vol: &Path) -> PathBuf {
    if vol.join("lower").exists() {
        vol.join("upper")
    } else {
        vol.join("rootfs")
    }
}

/// The volume directory of instance `name`, or of its snapshot `snap`, on the pool it is on
/// (volumes are named by uuid in the daemon's database).
pub fn volume_dir(d: &Daemon, name: &str, snap: Option<&str>) -> PathBuf {
    let v = d.database();
    let rec = &v["instances"][name];
    let vol = rec["volume"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance {name}: {v}"));
    let pool = d
        .dir()
        .join("storage-pools")
        .join(rec["pool"].as_str().unwrap_or("default"));
    match snap {
        None => pool.join("containers").join(vol),
        Some(s) => {
            let sv = rec["snapshots"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == s))
                .and_then(|x| x["volume"].as_str())
                .unwrap_or_else(|| panic!("no snapshot {s} of {name}: {rec}"));
            pool.join("containers-snapshots").join(vol).join(sv)
        }
    }
}

/// For `path` below a layered volume's `rootfs/` (which is empty: the container's tree is its
/// upper layer over its image's rootfs), the volume and the path inside the container.
fn in_layered(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut at = path;
    while let Some(parent) = at.parent() {
        if at.file_name().is_some_and(|n| n == "rootfs") && parent.join("lower").exists() {
            let rel = path.strip_prefix(at).ok()?.to_path_buf();
            return Some((parent.to_path_buf(), rel));
        }
        at = parent;
    }
    None
}

/// The file on disk that a container sees at `path` (a path below a volume's `rootfs/`): for a
/// layered volume its upper layer's if there is one (a whiteout: a path that does not exist),
/// else its image's. (Opaque directories are not looked at.)
pub fn on_disk(path: &Path) -> PathBuf {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Some((vol, rel)) = in_layered(path) else {
        return path.to_path_buf();
    };
    let up = vol.join("upper").join(&rel);
    match fs::symlink_metadata(&up) {
        Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => {
            vol.join("whited-out").join(&rel)
        }
        Ok(_) => up,
        Err(_) => {
            let lower = fs::read_to_string(vol.join("lower")).expect("lower");
            Path::new(lower.trim()).join("rootfs").join(&rel)
        }
    }
}

/// Where a file written from the host at `path` (below a volume's `rootfs/`) shows in the
/// container: for a layered volume, in its upper layer (the parents made).
pub fn for_write(path: &Path) -> PathBuf {
    match in_layered(path) {
        Some((vol, rel)) => {
            let p = vol.join("upper").join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).expect("parents in the upper layer");
            }
            p
        }
        None => path.to_path_buf(),
    }
}

// -------------------------------------------------------------------------------------------
// the unmodified `lxc` client

/// The Debian `lxc` 5.0.2 client pointed at a [`Daemon`] (`LXD_SOCKET`, a private `LXD_CONF`).
pub struct Lxc<'a> {
    pub d: &'a Daemon,
    pub conf: PathBuf,
}

impl Lxc<'_> {
    /// Host-side path of the root filesystem of the only container on the default (dir) pool
    /// (volumes are named by uuid), where a file made from the host shows in the container: a
    /// layered volume's upper layer.
    pub fn only_rootfs(&self) -> PathBuf {
        let pool = self.ok(&["storage", "get", "default", "source"]);
        let base = Path::new(pool.trim()).join("containers");
        let vols: Vec<_> = fs::read_dir(&base)
            .expect("containers dir")
            .flatten()
            .map(|e| changed_files_dir(&e.path()))
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(vols.len(), 1, "{vols:?}");
        vols[0].clone()
    }
    /// A character device node `name` (`major`:`minor`) made in the only container's rootfs
    /// from the host side, as a hostile migration peer could; its host path.
    /// The container must be stopped: a node in a layered rootfs opens nothing at all (an
    /// overlay its user namespace owns is `nodev`), so a file is first written to it through
    /// the API, which makes its volume plain, and the device cgroup is what the node meets.
    pub fn mknod_in_rootfs(&self, name: &str, major: u32, minor: u32) -> PathBuf {
        let ct = self.ok(&["list", "--format", "csv", "-c", "n"]);
        let lines: Vec<&str> = ct.lines().collect();
        assert_eq!(lines.len(), 1, "{ct}");
        let f = self.d.tmp().join("make-plain");
        fs::write(&f, b"x").expect("write");
        self.ok(&[
            "file",
            "push",
            f.to_str().expect("utf-8"),
            &format!("{}/.make-plain", lines[0]),
        ]);
        let node = self.only_rootfs().join(name);
        assert!(
            node.starts_with(self.only_rootfs()) && !node.to_string_lossy().contains("/upper/")
        );
        let out = Command::new("mknod")
            .arg(&node)
            .args(["c", &major.to_string(), &minor.to_string()])
            .output()
            .expect("mknod");
        assert!(out.status.success(), "{out:?}");
        node
    }
    /// Opening `path` in container `c` is refused by the device cgroup.
    pub fn assert_open_refused(&self, c: &str, path: &str) {
        let (code, out) = self.sh(c, &format!("exec 3<{path} 2>&1; echo opened"));
        assert_ne!(code, 0, "{path} opened in {c}, no rule allows it: {out}");
        assert!(out.contains("not permitted"), "{out}");
    }
    pub fn new(d: &Daemon) -> Lxc<'_> {
        let conf = d.tmp().join("lxc-conf");
        fs::create_dir_all(&conf).expect("lxc conf dir");
        Lxc { d, conf }
    }
    /// The fingerprint of the only image.
    pub fn only_image_fingerprint(&self) -> String {
        let fp = self.ok(&["image", "list", "--format", "csv", "-c", "F"]);
        let fp = fp.trim().to_string();
        assert_eq!(fp.len(), 64, "{fp}");
        fp
    }
    /// `lxc <args>`, not yet run (stdin null).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("lxc");
        c.args(args)
            .env("LXD_SOCKET", self.d.socket())
            .env("LXD_CONF", &self.conf)
            .stdin(Stdio::null());
        c
    }
    /// Run with a time limit and capture the output.
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(&mut self.cmd(args), Duration::from_secs(300)).expect("run lxc")
    }
    /// Run; panic with the output and the daemon log unless it succeeds; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lxc {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.d.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Run with `input` on stdin.
    pub fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        run_with_stdin(self.cmd(args), input)
    }
    /// `sh -c SCRIPT` in a container: (exit code, stdout + stderr).
    pub fn sh(&self, ct: &str, script: &str) -> (i32, String) {
        let out = self.run(&["exec", ct, "--", "sh", "-c", script]);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }
    /// Import the busybox test image as `busybox`.
    pub fn import_busybox(&self) {
        let img = busybox_image();
        let out = self.ok(&[
            "image",
            "import",
            img.to_str().expect("utf-8 path"),
            "--alias",
            "busybox",
        ]);
        assert!(out.contains("Image imported with fingerprint:"), "{out}");
    }
}

/// Root and the `lxc` client, or a recorded skip.
/// A value from /proc/PID/status (`VmRSS` in kB, `Threads`).
pub fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Busy loops of the test's own, one per CPU, killed by their PIDs when dropped: while they run,
/// the daemon's work at idle priority waits.
pub struct BusyLoops(Vec<std::process::Child>);

impl BusyLoops {
    pub fn start() -> BusyLoops {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        BusyLoops(
            (0..cpus)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn lxc_prerequisites() -> bool {
    if !require_root() {
        return false;
    }
    if !have_cmd("lxc") {
        skip(
            &current_test_name(),
            "needs the lxc client (apt-get install lxd-client)",
        );
        return false;
    }
    true
}

/// [`lxc_prerequisites`], and btrfs pools can be made here ([`btrfs_supported`]); else the
/// running test is skipped, saying why.
pub fn btrfs_prerequisites() -> bool {
    if !lxc_prerequisites() {
        return false;
    }
    if let Err(why) = btrfs_supported() {
        skip(&current_test_name(), &why);
        return false;
    }
    true
}

/// Whether btrfs pools can be made here (kernel btrfs, mkfs.btrfs, loop devices), or why not.
pub fn btrfs_supported() -> Result<(), String> {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("btrfs"))
    {
        return Err("the kernel has no btrfs".into());
    }
    if !have_cmd("mkfs.btrfs") && !Path::new("/usr/sbin/mkfs.btrfs").exists() {
        return Err("needs mkfs.btrfs (apt-get install btrfs-progs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control".into());
    }
    Ok(())
}
