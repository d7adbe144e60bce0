//! Tests of the shared integration-test harness itself (`tests/common`): skip policy, TempDir,
//! mountinfo parsing, bounded commands, and (when the daemon exists) Daemon start/stop.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn skip_prints_and_returns_without_must_work() {
    let t = common::TempDir::new().expect("tempdir");
    let log = t.path().join("skips.log");
    common::skip_with(false, Some(&log), "some_test", "needs nothing");
    common::skip_with(false, Some(&log), "other_test", "needs less");
    let text = std::fs::read_to_string(&log).expect("skip log");
    assert_eq!(text, "some_test: needs nothing\nother_test: needs less\n");
}

#[test]
fn skip_panics_with_must_work() {
    let r = std::panic::catch_unwind(|| common::skip_with(true, None, "some_test", "needs root"));
    let msg = r.expect_err("must_work turns a skip into a panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("BIVY_MUST_WORK=1") && msg.contains("some_test: needs root"),
        "{msg}"
    );
}

#[test]
fn kernel_lacks_declaration_is_an_exact_list() {
    assert!(common::declared_lacking("apparmor", "apparmor"));
    assert!(common::declared_lacking("idmap, apparmor", "apparmor"));
    assert!(!common::declared_lacking("", "apparmor"));
    assert!(!common::declared_lacking("apparmor2", "apparmor"));
}

#[test]
fn skip_unless_returns_early() {
    fn body(reached: &mut bool) {
        // A true condition never skips, whatever BIVY_MUST_WORK says.
        skip_unless!(true, "never printed");
        *reached = true;
    }
    let mut reached = false;
    body(&mut reached);
    assert!(reached);
}

#[test]
fn test_threads_are_named_after_tests() {
    // skip() reports the test by its thread name; libtest names each test thread.
    assert!(common::current_test_name().contains("test_threads_are_named_after_tests"));
}

#[test]
fn tempdir_is_unique_and_removed() {
    let (a_path, b_path);
    {
        let a = common::TempDir::new().expect("tempdir");
        let b = common::TempDir::new().expect("tempdir");
        a_path = a.path().to_path_buf();
        b_path = b.path().to_path_buf();
        assert_ne!(a_path, b_path);
        std::fs::create_dir_all(a_path.join("x/y")).expect("mkdir");
        std::fs::write(a_path.join("x/y/f"), "data").expect("write");
        std::os::unix::fs::symlink("/etc", a_path.join("etc-link")).expect("symlink");
    }
    assert!(!a_path.exists() && !b_path.exists());
    assert!(
        Path::new("/etc/hostname").exists() || Path::new("/etc/passwd").exists(),
        "symlink target untouched"
    );
}

#[test]
fn tempdir_unmounts_before_removing() {
    if !common::require_root() {
        return;
    }
    let path;
    {
        let t = common::TempDir::new().expect("tempdir");
        path = t.path().to_path_buf();
        let m = path.join("mnt");
        std::fs::create_dir(&m).expect("mkdir");
        // A bind of a host dir below the temp dir: removing through it would delete host files.
        let host = common::TempDir::new().expect("tempdir");
        std::fs::write(host.path().join("precious"), "keep me").expect("write");
        nix::mount::mount(
            Some(host.path()),
            &m,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind mount");
        assert_eq!(common::mounts_below(&path), vec![m.clone()]);
        drop(t);
        assert!(!path.exists(), "temp dir removed after unmount");
        assert!(
            host.path().join("precious").exists(),
            "bind-mounted source not touched"
        );
    }
}

#[test]
fn mountinfo_unescape() {
    assert_eq!(common::unescape_mountinfo("/a\\040b"), "/a b");
    assert_eq!(common::unescape_mountinfo("/a\\134b\\011"), "/a\\b\t");
    assert_eq!(common::unescape_mountinfo("/plain"), "/plain");
    assert_eq!(common::unescape_mountinfo("/trail\\04"), "/trail\\04");
}

#[test]
fn run_bounded_times_out_and_captures() {
    let out = common::run_bounded(
        Command::new("sh").args(["-c", "echo hi; echo err >&2"]),
        Duration::from_secs(10),
    )
    .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let e = common::run_bounded(Command::new("sleep").arg("5"), Duration::from_millis(100))
        .expect_err("timeout");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn bivy_binary_is_built() {
    assert!(common::bivy_bin().is_file());
}

#[test]
fn busybox_image_is_available() {
    skip_unless!(
        Path::new("/bin/busybox").exists() || common::euid() == 0,
        "no /bin/busybox and not root to install it"
    );
    let img = common::busybox_image();
    let bytes = std::fs::read(&img).expect("read image");
    assert_eq!(&bytes[..2], b"\x1f\x8b", "gzip magic");
}

/// Start, kill, restart and stop a real `bivy daemon`: the harness's happy path.
#[test]
fn daemon_start_and_stop() {
    let mut d = common::Daemon::start().expect("bivy daemon starts");
    let pid = d.pid().expect("pid");
    let tmp = d.tmp().to_path_buf();
    assert!(std::os::unix::net::UnixStream::connect(d.socket()).is_ok());
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    d.kill9();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );
    d.restart().expect("restart");
    let pid2 = d.pid().expect("pid");
    assert_ne!(pid, pid2);
    assert!(std::os::unix::net::UnixStream::connect(d.socket()).is_ok());
    let st = d.stop().expect("exit status");
    assert!(st.success(), "SIGTERM is a clean shutdown: {st}");
    drop(d);
    assert!(!tmp.exists(), "temp dir removed");
}

/// A test that stops the daemon and fails before starting it again: dropping the harness stops
/// the containers the daemon left running (their monitors outlive it) and leaves no cgroup.
#[test]
fn containers_left_by_a_stopped_daemon_are_stopped_on_drop() {
    if !common::lxc_prerequisites() {
        return;
    }
    let mut d = common::Daemon::start().expect("bivy daemon starts");
    let l = common::Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "left"]);
    let pidfile = std::fs::read_to_string(d.dir().join("run/left/monitor.pid")).expect("pidfile");
    let monitor: i32 = pidfile
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("monitor pid");
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup/pids/bivy")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("left."))
        .collect();
    drop(l);
    d.stop().expect("stopped");
    assert!(
        Path::new(&format!("/proc/{monitor}")).exists(),
        "the container outlives the daemon"
    );
    drop(d);
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    assert!(
        gone(monitor),
        "monitor {monitor} still running after the harness dropped"
    );
    for c in cgroups {
        assert!(
            !Path::new("/sys/fs/cgroup/pids/bivy").join(&c).exists(),
            "cgroup {c} left"
        );
    }
}

/// The harness's failure path: a daemon that cannot start (its `BIVY_DIR` is below a regular
/// file) is an error that carries the daemon's log, and nothing is left behind.
#[test]
fn daemon_that_cannot_start_is_an_error_with_its_log() {
    let t = common::TempDir::new().expect("tempdir");
    let file = t.path().join("not-a-dir");
    std::fs::write(&file, "").expect("file");
    let bad = file.join("bivy");
    let e = match common::Daemon::start_with(&[("BIVY_DIR", bad.to_str().expect("utf-8"))]) {
        Ok(_) => panic!("a daemon started on a BIVY_DIR below a regular file"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains("exited") && msg.contains("log:"), "{msg}");
    assert!(
        msg.contains("not-a-dir"),
        "the log names the failing path: {msg}"
    );
    let left = tmp_dirs_mentioning(bad.to_str().expect("utf-8"));
    assert!(
        left.is_empty(),
        "the failed start left its temp dir behind: {left:?}"
    );
}

/// This process's `bivy-test-<pid>-*` directories in the temp base (see `TempDir::new`) whose
/// daemon log mentions `needle`: other tests' directories (tests may run in parallel) are not
/// counted.
fn tmp_dirs_mentioning(needle: &str) -> Vec<std::path::PathBuf> {
    let base = std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/tmp".into());
    let prefix = format!("bivy-test-{}-", std::process::id());
    std::fs::read_dir(base)
        .expect("temp base")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|p| std::fs::read_to_string(p.join("daemon.log")).is_ok_and(|l| l.contains(needle)))
        .collect()
}

/// `http_unix` against a one-shot fake server: Content-Length and chunked bodies.
#[test]
fn http_unix_reads_length_and_chunked_bodies() {
    use std::io::{Read, Write};
    let t = common::TempDir::new().expect("tempdir");
    let sock = t.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let server = std::thread::spawn(move || {
        let replies: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\":[1,2]}trailing",
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"op\"\r\n9\r\n:\"/1.0/x\"\r\n1\r\n}\r\n0\r\n\r\n",
        ];
        let mut requests = Vec::new();
        for reply in replies {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).expect("read");
            requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            c.write_all(reply).expect("write");
        }
        requests
    });
    let (st, body) =
        common::http_unix(&sock, "GET", "/1.0", None, Duration::from_secs(5)).expect("get");
    assert_eq!((st, body.as_slice()), (200, b"{\"a\":[1,2]}".as_slice()));
    let (st, body) =
        common::http_unix(&sock, "PUT", "/1.0/x", Some("{}"), Duration::from_secs(5)).expect("put");
    assert_eq!(
        (st, String::from_utf8_lossy(&body).as_ref()),
        (202, "{\"op\":\"/1.0/x\"}")
    );
    let reqs = server.join().expect("server");
    assert!(reqs[0].starts_with("GET /1.0 HTTP/1.1\r\n"), "{}", reqs[0]);
    assert!(
        reqs[1].contains("Content-Length: 2\r\n") && reqs[1].ends_with("\r\n\r\n{}"),
        "{}",
        reqs[1]
    );
}
