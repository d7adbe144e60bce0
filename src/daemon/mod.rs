//! The REST server: start-up, the shared [`Daemon`] state, the accept loop and shutdown.
//!
//! Start-up order: take the state-dir lock (a second daemon is refused), load the database,
//! finish or undo anything a killed daemon left half-made, reattach to running containers,
//! autostart (first start after boot only), then listen. SIGTERM stops accepting, lets in-flight
//! operations finish for a bounded time and exits; containers keep running under their monitors.
//! A second signal while stopping exits at once (`bivy admin shutdown --force`).

pub mod access;
mod config;
use crate::instance::{events, operations, schedule};
mod conns;
#[cfg(test)]
mod contract_tests;
mod download;
mod endpoints;
use endpoints::snapshots;
mod fetch;
mod filter;
mod fuzz;
mod https;
mod multipart;
mod netstate;
mod pull;
mod pull_lxd;
mod request;
mod resources;
mod response;
mod routes;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use events::Events;
#[doc(hidden)]
pub use fuzz::fuzz_rest_json;
#[doc(hidden)]
pub use multipart::fuzz_multipart;
pub use operations::Operations;

/// The daemon's shared state: the model's context (the daemon adds only its connections).
/// A re-export, not an item of this file: what uses it depends on `instance::Ctx` alone.
pub use crate::instance::Ctx as Daemon;
pub use crate::instance::Host;

fn usage() -> i32 {
    eprintln!("Usage: bivy daemon [--group GROUP]\n\nServes the LXD 1.0 REST API on $BIVY_DIR/unix.socket (default /var/lib/bivy).");
    1
}

/// `bivy daemon [--group G]`.
pub fn main(args: &[String]) -> i32 {
    let mut group: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--group" => match it.next() {
                Some(g) => group = Some(g.clone()),
                None => return usage(),
            },
            "-h" | "--help" => {
                usage();
                return 0;
            }
            other => {
                eprintln!("Error: unknown option {other:?}");
                return usage();
            }
        }
    }
    let dir =
        std::env::var_os("BIVY_DIR").map_or_else(|| PathBuf::from("/var/lib/bivy"), PathBuf::from);
    match run(&dir, group.as_deref()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

fn run(dir: &Path, group: Option<&str>) -> Result<(), String> {
    use nix::sys::signal::{SigSet, Signal};
    let trace = crate::util::trace::Steps::new("daemon start", &dir.display().to_string());

    // Block the shutdown signals before any thread exists; one thread waits for them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGHUP);
    // The host is shutting down: stop the instances first (LXD's convention).
    sigs.add(Signal::SIGPWR);
    sigs.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    // SIGPIPE is already ignored by the Rust runtime: writes to a vanished client fail with EPIPE.

    crate::sys::limit_malloc_arenas(2);
    // Every connection (up to conns::MAX_CONNECTIONS), refusal, container log and image file
    // is a descriptor: the usual soft limit of 1024 is too low; the hard limit is the bound.
    if let Err(e) = raise_nofile(1 << 16) {
        eprintln!("bivy: raising the open file limit: {e}");
    }
    // The daemon keeps descriptors for each running container (its monitor's and init's
    // pidfds, its usage files): the fd table made big enough for them now, while this is the
    // only thread, and not grown later by doublings that each wait for an RCU grace period
    // (10 ms and more each, in the first listing after a start with many running).
    if let Err(e) = crate::sys::reserve_fds(fd_table_size(&dir.join("run"))) {
        eprintln!("bivy: sizing the fd table: {e}");
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = take_lock(dir)?;
    crate::util::fs::create_dir_mode(&dir.join("storage-pools"), 0o711)
        .map_err(|e| format!("{}/storage-pools: {e}", dir.display()))?;

    // Before anything reads the cgroup layout (it is read once per process).
    match crate::runtime::cgroup::mount_if_none() {
        Ok(true) => eprintln!(
            "bivy: no cgroup filesystem was mounted: mounted cgroup2 at {}",
            crate::runtime::cgroup::MOUNT_POINT
        ),
        Ok(false) => {}
        // Containers cannot start; the daemon still serves everything else.
        Err(e) => eprintln!("bivy: {}", e.0),
    }
    let host = Host::probe(dir);
    trace.step("host probed");
    let d = Daemon::open(dir, host)?;
    trace.step("database and image store opened");
    let server_config = d.db.lock().expect("db lock").data.config.clone();
    d.apply_server_config(&server_config);
    if let Err(e) = config::apply_favor_dynmods(
        None,
        server_config.get(config::FAVOR_DYNMODS).map(String::as_str),
    ) {
        eprintln!("bivy: {e}");
    }
    crate::instance::pools::open_all(&d).map_err(|e| format!("opening storage pools: {e}"))?;
    trace.step("pools opened");
    crate::instance::lifecycle::recover(&d).map_err(|e| format!("recovering state: {e}"))?;
    trace.step("instances recovered");
    https::init(dir)?;
    secure_tree(&d);
    trace.step("modes checked");

    let sock_path = dir.join("unix.socket");
    let _ = std::fs::remove_file(&sock_path); // we hold the lock: any socket file is stale
                                              // Made 0600 by bind itself (never briefly open to everyone under a lax umask), then 0660.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(&sock_path);
    nix::sys::stat::umask(old_umask);
    let listener = listener.map_err(|e| format!("{}: {e}", sock_path.display()))?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| e.to_string())?;
    if let Some(g) = group {
        let gid = crate::util::passwd::group_id(g)
            .map_err(|e| format!("group {g}: {e}"))?
            .ok_or_else(|| format!("group {g:?} not found in {}", crate::util::passwd::GROUP))?;
        nix::unistd::chown(&sock_path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| format!("chown socket: {e}"))?;
    }

    // Signal thread: graceful shutdown.
    {
        let d = d.clone();
        let sock_path = sock_path.clone();
        std::thread::spawn(move || {
            let sig = sigs.wait();
            // A second signal while stopping (`bivy admin shutdown --force`, a second Ctrl-C)
            // exits at once, without waiting for operations; the lock goes with the process.
            std::thread::spawn(move || {
                if sigs.wait().is_ok() {
                    std::process::exit(0);
                }
            });
            d.shutting_down.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_file(&sock_path);
            // Containers outlive the daemon, except when the host shuts down.
            if sig == Ok(Signal::SIGPWR) {
                crate::instance::lifecycle::host_shutdown(&d);
            }
            // Let running operations finish for `core.shutdown_timeout` minutes (10 s unset).
            let minutes =
                d.db.lock()
                    .expect("db lock")
                    .data
                    .config
                    .get("core.shutdown_timeout")
                    .and_then(|v| v.parse::<u64>().ok());
            let limit = minutes.map_or(Duration::from_secs(10), |m| Duration::from_secs(m * 60));
            let deadline = std::time::Instant::now() + limit;
            while !d.ops.list().iter().all(|o| o.is_final()) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            // The next start reads one document, the change log folded into it.
            if let Err(e) = d.db.lock().expect("db lock").compact() {
                eprintln!("bivy: writing the database whole: {e}");
            }
            drop(lock);
            std::process::exit(0);
        });
    }

    // The HTTPS listener, when configured. A failure (the port taken) is logged and the unix
    // socket serves on: `core.https_address` can be set again once the port is free.
    let https_addr =
        d.db.lock()
            .expect("db lock")
            .data
            .config
            .get("core.https_address")
            .cloned();
    if let Some(a) = https_addr.filter(|a| !a.is_empty()) {
        if let Err(e) = https::get().set_address(&d, &a) {
            eprintln!("bivy: HTTPS listener: {}", e.message());
        }
    }
    crate::instance::lifecycle::autostart(&d);
    snapshots::spawn_scheduler(d.clone());
    crate::instance::uevents::spawn(d.clone());

    let limits = crate::http::Limits::default();
    let connections = Arc::new(conns::Limits::default());
    let refuser = conns::Refuser::start().map_err(|e| format!("starting threads: {e}"))?;
    trace.step("listening");
    for conn in listener.incoming() {
        let Some(stream) = conns::accepted(conn) else {
            continue;
        };
        // Stopping: refuse what was queued before the socket went away (the signal thread
        // owns the exit, after the running operations; returning from here would end the
        // process without waiting for them).
        if d.shutting_down.load(Ordering::SeqCst) {
            continue;
        }
        let Ok(peer) = conns::Peer::of_unix(&stream) else {
            continue;
        };
        let slot = match connections.admit(peer) {
            Ok(s) => s,
            Err(why) => {
                refuser.refuse(stream, &why);
                continue;
            }
        };
        let dc = d.clone();
        let limits = limits.clone();
        // On a thread that waits for the next connection after this one (`util::pool`). Out
        // of threads: the closure (the stream and the slot with it) is dropped unrun.
        let _ = crate::util::pool::spawn("conn", move || {
            let conns::Peer::Uid(uid) = peer else { return };
            let username = crate::util::passwd::user_name(uid)
                .ok()
                .flatten()
                .unwrap_or_else(|| uid.to_string());
            crate::instance::events::set_requestor(Some(crate::instance::events::Requestor {
                username,
                protocol: "unix".into(),
                address: "@".into(),
            }));
            crate::http::serve_connection(Box::new(stream), &limits, &move |req| {
                routes::handle(&dc, req)
            });
            drop(slot);
            crate::instance::events::set_requestor(None);
        });
    }
    Ok(())
}

/// Close the daemon's tree to every host user but root (the README's threat model): the state
/// directory 0711 (only `unix.socket`, 0660, is meant to be reached in it), `storage-pools`
/// 0711, every other entry 0700 or group and other bits off; then each pool's layout and
/// volumes. New files get these modes where they are made; this mends an older tree and logs
/// each change.
/// The note in the state directory that the run directory's modes were mended once.
pub const RUN_MODES_NOTE: &str = "run-modes";

fn secure_tree(d: &Daemon) {
    use crate::util::fs::mend_mode;
    use std::os::unix::fs::MetadataExt;
    mend_mode(&d.dir, 0o711, "state directory");
    for e in std::fs::read_dir(&d.dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let name = e.file_name();
        // The server certificate is public (every client is shown it), 0644 as LXD's.
        if md.file_type().is_symlink() || name == "unix.socket" || name == "server.crt" {
            continue;
        }
        if name == "storage-pools" {
            mend_mode(&p, 0o711, "storage pools");
        } else if name == "run" {
            // Traversable down to each monitor's staging mount (see runtime::monitor).
            mend_mode(&p, 0o711, "run directory");
            // Its files and directories are made with these modes; the walk below mends a tree
            // an older bivy made, once (`run-modes` notes it was done: the walk costs a start
            // about 0.1 ms per instance that has run since boot).
            let note = d.dir.join(RUN_MODES_NOTE);
            if note.exists() {
                continue;
            }
            let private_files = |dir: &Path| {
                for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    match std::fs::symlink_metadata(f.path()) {
                        Ok(m) if m.is_file() => mend_mode(&f.path(), m.mode() & 0o700, "run file"),
                        _ => {}
                    }
                }
            };
            private_files(&p);
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    mend_mode(&e.path(), 0o711, "run directory");
                    private_files(&e.path());
                }
            }
            if let Err(e) = crate::util::fs::atomic_write(&note, b"run files' modes mended\n") {
                eprintln!("bivy: {}: {e}", note.display());
            }
        } else if md.is_dir() {
            mend_mode(&p, 0o700, "private directory");
        } else {
            mend_mode(&p, md.mode() & 0o700, "private file");
        }
    }
    crate::instance::pools::mend_volume_modes(d);
}

/// Descriptors to make room for at the start: 16 for each container that ran since boot (its
/// run directory is there), at least 1024, at most the soft limit.
fn fd_table_size(run: &Path) -> u32 {
    let ran = std::fs::read_dir(run).map_or(0, |d| d.count());
    let want = (ran as u64 * 16).max(1024).next_power_of_two();
    u32::try_from(want.min(crate::sys::open_files_limit())).unwrap_or(1024)
}

/// Raise the soft limit of open files to `want`. A hard limit below it is raised too where
/// the daemon may (root: `CAP_SYS_RESOURCE`, as LXD's service is given 1048576), else the soft
/// limit goes up to the hard one. The daemon keeps up to three eighths of the limit open for
/// the usage files of running containers (seven each), and a listing opens again those it
/// could not keep.
fn raise_nofile(want: u64) -> nix::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return Ok(());
    }
    let target = want.min(hard);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(())
}

/// The exclusive lock on `$BIVY_DIR/daemon.lock`, held for the daemon's life.
fn take_lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => {
            let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
            Ok(l)
        }
        Err((_, _)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            Err(format!(
                "another bivy daemon (pid {}) is already running on {}",
                pid.trim(),
                dir.display()
            ))
        }
    }
}
