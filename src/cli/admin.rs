//! `admin waitready` and `admin shutdown`: `lxd waitready` and `lxd shutdown` (5.0.2) for the
//! daemon on the local socket (`$BIVY_SOCKET`, `$BIVY_DIR/unix.socket`, ...). `admin init`
//! (`lxd init`) is in [`super::admin_init`], `admin recover` (`lxd recover`) in
//! [`super::admin_recover`].
//!
//! - `waitready [--timeout N]`: poll `GET /1.0` every half second until it succeeds; past the
//!   timeout (none by default) fail with LXD's message and the last error.
//! - `shutdown [--timeout N] [--force]`: the daemon stops as on SIGTERM (it stops listening, lets
//!   running operations finish for `core.shutdown_timeout`, exits; containers keep running under
//!   their monitors, where LXD's API shutdown would stop them). The signal goes only to the pid
//!   that both `GET /1.0` (`environment.server_pid`) and the socket's peer credentials name, and
//!   only when the caller is root or that process's owner. Then wait until that process (checked
//!   by its start time, so a reused pid does not count) is gone. `--force` sends a second
//!   SIGTERM once the daemon has stopped listening, which makes it exit without waiting for
//!   operations.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use argh::FromArgs;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{fail, parse, CmdResult};
use crate::client::{self, Client};

const USAGE: &str = "Description:
  Manage the bivy daemon

Usage:
  bivy admin [command]

Available Commands:
  init        Configure the daemon: storage pool, network bridge, default profile, listener
  recover     Recover missing instances and volumes from existing and unknown storage pools
  shutdown    Tell the daemon to stop and wait until it is gone
  waitready   Wait for the daemon to be ready to process requests
";

const POLL: Duration = Duration::from_millis(500);

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Wait for the daemon to be ready to process requests: block until it answers GET /1.0 on its
/// socket.
struct WaitArgs {
    #[argh(option, short = 't', default = "0")]
    /// number of seconds to wait before giving up (0: no limit)
    timeout: u64,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Tell the daemon to stop (as SIGTERM does: it stops listening, lets running operations finish
/// for core.shutdown_timeout and exits; containers keep running) and wait until it is gone.
struct ShutdownArgs {
    #[argh(option, short = 't', default = "0")]
    /// number of seconds to wait before giving up (0: no limit)
    timeout: u64,
    #[argh(switch, short = 'f')]
    /// force shutdown instead of waiting for running operations to finish
    force: bool,
}

/// `bivy admin …`.
pub fn run(args: &[String]) -> CmdResult {
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help") => {
            print!("{USAGE}");
            Ok(0)
        }
        Some("init") => super::admin_init::run(&args[1..]),
        Some("recover") => super::admin_recover::run(&args[1..]),
        Some("waitready") => waitready(&args[1..]),
        Some("shutdown") => shutdown(&args[1..]),
        Some(other) => {
            eprint!("{USAGE}");
            fail(format!("unknown command \"{other}\" for \"bivy admin\""))
        }
    }
}

fn local() -> Client {
    Client::with_socket(client::socket_path())
}

fn waitready(args: &[String]) -> CmdResult {
    let a: WaitArgs = parse(&["bivy admin waitready"], args)?;
    // The polling runs on a thread of its own so that a request that hangs cannot hold us past
    // the timeout.
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || loop {
        let r = local()
            .get::<serde_json::Value>("/1.0")
            .map(|_| ())
            .map_err(|e| e.0);
        let done = r.is_ok();
        if tx.send(r).is_err() || done {
            return;
        }
        std::thread::sleep(POLL);
    });
    let deadline = (a.timeout > 0).then(|| Instant::now() + Duration::from_secs(a.timeout));
    let mut last = String::from("no answer yet");
    loop {
        let got = match deadline {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(Ok(())) => return Ok(0),
            Ok(Err(e)) => last = e,
            Err(_) => {
                return fail(format!(
                    "bivy still not running after {}s timeout ({last})",
                    a.timeout
                ))
            }
        }
    }
}

/// The start time of a process (`/proc/PID/stat` field 22) and whether it has exited (a zombie
/// or dead task counts as gone); `None` when there is no such process.
fn proc_state(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: comm may hold spaces and parentheses; the last `)` ends it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, matches!(*state, "Z" | "X" | "x")))
}

fn shutdown(args: &[String]) -> CmdResult {
    let a: ShutdownArgs = parse(&["bivy admin shutdown"], args)?;
    let started = Instant::now();
    let socket = client::socket_path();
    let server: crate::api::Server = local().get("/1.0")?;
    let pid = i32::try_from(server.environment.server_pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            format!(
                "the daemon reports no usable pid ({})",
                server.environment.server_pid
            )
        })?;
    // The socket's owner as the kernel knows it: the pid the daemon reports must be the
    // process that listens there (not another pid namespace's number, not a stale answer).
    let peer = std::os::unix::net::UnixStream::connect(&socket)
        .and_then(|s| {
            nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(std::io::Error::from)
        })
        .map_err(|e| {
            format!(
                "cannot connect to the bivy daemon at {}: {}",
                socket.display(),
                client::os_message(&e)
            )
        })?;
    if peer.pid() != pid {
        return fail(format!(
            "the daemon reports pid {pid} but {} is served by pid {}; not signalling either",
            socket.display(),
            peer.pid()
        ));
    }
    let proc_dir = format!("/proc/{pid}");
    let owner = std::fs::metadata(&proc_dir)
        .map_err(|e| super::io_error("stat", std::path::Path::new(&proc_dir), &e))?
        .uid();
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 && me != owner {
        return fail(format!(
            "the bivy daemon (pid {pid}) belongs to uid {owner}: run this as root or as uid {owner}"
        ));
    }
    let Some((start, false)) = proc_state(pid) else {
        return Ok(0); // it went away on its own meanwhile
    };
    // The same process as checked above, still running.
    let same = || proc_state(pid).is_some_and(|(s, gone)| s == start && !gone);
    let signal = || {
        if same() {
            kill(Pid::from_raw(pid), Signal::SIGTERM)
                .map_err(|e| format!("cannot signal the bivy daemon (pid {pid}): {e}"))
        } else {
            Ok(())
        }
    };
    signal()?;
    let deadline = (a.timeout > 0).then(|| started + Duration::from_secs(a.timeout));
    let mut forced = !a.force;
    while same() {
        if !forced && std::os::unix::net::UnixStream::connect(&socket).is_err() {
            // It has taken the first signal (it no longer listens): a second one ends its
            // wait for operations.
            signal()?;
            forced = true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return fail(format!("bivy still running after {}s timeout", a.timeout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_state() {
        let me = i32::try_from(std::process::id()).unwrap();
        let (start, gone) = proc_state(me).unwrap();
        assert!(!gone);
        assert!(start > 0);
        assert_eq!(proc_state(me).map(|s| s.0), Some(start));
        assert_eq!(proc_state(i32::MAX), None);
    }
}
