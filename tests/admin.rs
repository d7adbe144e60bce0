//! `bivy admin waitready|shutdown` against a test daemon (containers survive a shutdown,
//! `--force` skips the wait for operations), and `bivy alias` with an expanded alias run.

mod common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpected success: stdout {:?}, stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1));
    text(&out.stderr)
}

/// Whether a pid is a live (not zombie) process.
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

fn init_pid(d: &Daemon, name: &str) -> i64 {
    let (status, v) = d
        .api("GET", &format!("/1.0/instances/{name}/state"), None)
        .expect("state");
    assert_eq!(status, 200, "{v}");
    v["metadata"]["pid"].as_i64().expect("pid")
}

/// Our own `bivy exec` client; killed (by its pid) and reaped when dropped.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bivy exec NAME -- sleep 60` in the background, once the command runs (its websockets are
/// all connected, so its operation lasts until it is killed).
fn running_exec(d: &Daemon, name: &str) -> Bg {
    use std::io::BufRead;
    let mut child = Bg(d
        .cli()
        .args([
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn exec"));
    let out = child.0.stdout.take().expect("stdout");
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(out);
    reader.read_line(&mut line).expect("read exec output");
    assert_eq!(line, "started\n");
    // The pipe stays open while the exec runs: a closed stdout must not end it early.
    child.0.stdout = Some(reader.into_inner());
    let (_, v) = d
        .api("GET", "/1.0/operations?recursion=1", None)
        .expect("ops");
    assert!(
        v["metadata"]["running"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "no running exec operation: {v}"
    );
    child
}

#[test]
fn waitready_answers_at_once_and_times_out_on_a_dead_socket() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let t = Instant::now();
    assert_eq!(d.ok(&["admin", "waitready", "--timeout", "5"]), "");
    d.ok(&["admin", "waitready"]);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    let dead = d.tmp().join("nothing-here.socket");
    let t = Instant::now();
    let out = d
        .cli()
        .env("BIVY_SOCKET", &dead)
        .args(["admin", "waitready", "-t", "1"])
        .output()
        .expect("run");
    let err = failed(&out);
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        err.starts_with("Error: bivy still not running after 1s timeout (cannot connect"),
        "{err}"
    );
    assert!(err.contains(&dead.display().to_string()), "{err}");
    // A socket file nobody listens on.
    let _ = std::os::unix::net::UnixListener::bind(&dead).expect("bind");
    let out = d
        .cli()
        .env("BIVY_SOCKET", &dead)
        .args(["admin", "waitready", "--timeout=1"])
        .output()
        .expect("run");
    assert!(failed(&out).contains("still not running after 1s timeout"));
    // shutdown has no daemon to ask there either.
    let out = d
        .cli()
        .env("BIVY_SOCKET", &dead)
        .args(["admin", "shutdown"])
        .output()
        .expect("run");
    assert!(failed(&out).contains("cannot connect to the bivy daemon"));
}

#[test]
fn shutdown_stops_the_daemon_and_leaves_containers_running() {
    if !common::require_root() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    // A failure while the daemon is down: start it again so that the harness's cleanup (which
    // needs it) stops and deletes the container.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shutdown_checks(&mut d)));
    if let Err(e) = r {
        let _ = d.restart();
        std::panic::resume_unwind(e);
    }
}

fn shutdown_checks(d: &mut Daemon) {
    d.import_busybox();
    d.ok(&["launch", "busybox", "c1"]);
    let init = init_pid(d, "c1");
    assert!(alive(init));
    let daemon_pid = i64::from(d.pid().expect("daemon pid"));

    // Plain shutdown: the daemon is gone when it returns, the container is not.
    let t = Instant::now();
    assert_eq!(d.ok(&["admin", "shutdown"]), "");
    eprintln!("shutdown took {:?}", t.elapsed());
    assert!(!alive(daemon_pid), "daemon still running");
    assert!(alive(init), "the container died with the daemon");
    assert!(failed(&d.run(&["admin", "waitready", "-t", "1"])).contains("still not running"));

    // Back up: the same container, running. With a running operation and a one-minute
    // core.shutdown_timeout, a plain shutdown outlasts --timeout...
    d.restart().expect("restart");
    assert_eq!(init_pid(d, "c1"), init);
    d.ok(&["config", "set", "core.shutdown_timeout", "1"]);
    let exec = running_exec(d, "c1");
    let t = Instant::now();
    let err = failed(&d.run(&["admin", "shutdown", "--timeout", "2"]));
    assert_eq!(err, "Error: bivy still running after 2s timeout\n");
    assert!(t.elapsed() >= Duration::from_secs(2));
    let daemon_pid = i64::from(d.pid().expect("daemon pid"));
    assert!(alive(daemon_pid), "it should still wait for the operation");
    drop(exec);
    // (the harness's SIGTERM is a second signal: it exits at once)
    d.restart().expect("restart");

    // ... and --force does not wait for the operation.
    let exec = running_exec(d, "c1");
    let daemon_pid = i64::from(d.pid().expect("daemon pid"));
    let t = Instant::now();
    d.ok(&["admin", "shutdown", "--force", "-t", "30"]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(!alive(daemon_pid));
    assert!(alive(init), "the container died with the daemon");
    drop(exec);

    d.restart().expect("restart");
    assert_eq!(init_pid(d, "c1"), init);
    d.ok(&["stop", "--force", "c1"]);
    assert!(!alive(init));
    d.ok(&["delete", "c1"]);
}

#[test]
fn aliases_are_stored_listed_and_expanded() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let conf = d.tmp().join("bivy-conf").join("config.yml");
    let empty = "+-------+--------+\n| ALIAS | TARGET |\n+-------+--------+\n";
    assert_eq!(d.ok(&["alias", "list"]), empty);
    assert!(!conf.exists());

    assert_eq!(d.ok(&["alias", "add", "ver", "version"]), "");
    assert_eq!(d.ok(&["alias", "add", "img ls", "image list -f csv"]), "");
    let yml = std::fs::read_to_string(&conf).expect("config.yml");
    assert!(
        yml.ends_with("aliases:\n  img ls: image list -f csv\n  ver: version\n"),
        "{yml}"
    );
    assert_eq!(
        d.ok(&["alias", "list"]),
        "+--------+-------------------+\n\
         | ALIAS  |      TARGET       |\n\
         +--------+-------------------+\n\
         | img ls | image list -f csv |\n\
         +--------+-------------------+\n\
         | ver    | version           |\n\
         +--------+-------------------+\n"
    );
    assert_eq!(
        d.ok(&["alias", "list", "-f", "csv"]),
        "img ls,image list -f csv\nver,version\n"
    );
    assert_eq!(
        d.ok(&["alias", "list", "--format", "json"]),
        "{\"img ls\":\"image list -f csv\",\"ver\":\"version\"}\n"
    );
    assert_eq!(
        failed(&d.run(&["alias", "add", "ver", "x"])),
        "Error: Alias ver already exists\n"
    );

    // Expanded runs: the alias's words, then the remaining arguments.
    assert_eq!(d.ok(&["ver"]), d.ok(&["version"]));
    d.import_busybox();
    assert_eq!(
        d.ok(&["img", "ls", "-c", "l"]),
        d.ok(&["image", "list", "-f", "csv", "-c", "l"])
    );
    assert_eq!(d.ok(&["img", "ls", "-c", "l"]), "busybox\n");
    // @ARG1@ and an unresolved reference.
    d.ok(&["alias", "add", "alias-of", "image alias list @ARG1@ -f csv"]);
    assert!(d.ok(&["alias-of", "busy"]).starts_with("busybox,"));
    assert_eq!(
        failed(&d.run(&["alias-of"])),
        "Error: Found alias \"alias-of\" references an argument outside the given number\n"
    );

    assert_eq!(d.ok(&["alias", "rename", "ver", "v"]), "");
    assert_eq!(
        failed(&d.run(&["alias", "rename", "ver", "v2"])),
        "Error: Alias ver doesn't exist\n"
    );
    assert_eq!(d.ok(&["v"]), d.ok(&["version"]));
    assert_eq!(d.ok(&["alias", "rm", "v"]), "");
    assert_eq!(d.ok(&["alias", "remove", "img ls"]), "");
    assert_eq!(d.ok(&["alias", "remove", "alias-of"]), "");
    assert_eq!(
        failed(&d.run(&["alias", "remove", "v"])),
        "Error: Alias v doesn't exist\n"
    );
    assert_eq!(d.ok(&["alias", "list"]), empty);
    let out = d.run(&["v"]);
    assert!(failed(&out).contains("unknown command \"v\" for \"bivy\""));
    d.ok(&["image", "delete", "busybox"]);
}
