//! CRIU checkpoints (stateful stop/start, stateful snapshots and their restore) of busybox
//! containers, through bivy's CLI and the unmodified `lxc` 5.0.2: a counter process keeps its
//! pid and its memory across a stateful stop and start, a stateful snapshot brings back earlier
//! memory, a dump that cannot be done (a deleted open file over CRIU's ghost limit) leaves the
//! container running, and without CRIU every stateful verb fails clearly and changes nothing.
//!
//! CRIU 4.x comes from `$BIVY_CRIU`, else `target/criu/bin/criu`, else `.ci/install-criu.sh`
//! installs it there (Debian's archive; CI runs the script first). Real containers, as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Lxc};

/// A working CRIU 4.x, installed into `target/criu` when missing; None (after a recorded skip)
/// when it cannot be had.
fn criu() -> Option<PathBuf> {
    if !common::require_root() {
        return None;
    }
    if let Some(p) = std::env::var_os("BIVY_CRIU").map(PathBuf::from) {
        if p.exists() {
            return Some(p);
        }
    }
    let dir = common::target_dir().join("criu");
    let bin = dir.join("bin/criu");
    let works = |b: &Path| {
        Command::new(b)
            .arg("check")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if bin.exists() && works(&bin) {
        return Some(bin);
    }
    let out = Command::new("bash")
        .arg(common::root().join(".ci/install-criu.sh"))
        .arg(&dir)
        .output();
    match out {
        Ok(o) if o.status.success() && works(&bin) => Some(bin),
        Ok(o) => {
            common::skip(
                &common::current_test_name(),
                &format!(
                    "CRIU could not be installed with .ci/install-criu.sh: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
            );
            None
        }
        Err(e) => {
            common::skip(
                &common::current_test_name(),
                &format!("running .ci/install-criu.sh: {e}"),
            );
            None
        }
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `bivy ARGS` must fail, saying `want`.
fn fails_with(d: &Daemon, args: &[&str], want: &str) {
    let out = d.run(args);
    let t = text(&out);
    assert!(!out.status.success(), "bivy {args:?} succeeded: {t}");
    assert!(t.contains(want), "bivy {args:?}: want {want:?} in:\n{t}");
}

/// The counter a container runs: (count, its pid in the container, a token kept only in its
/// memory), from `/tmp/count`.
#[derive(Debug, Clone, PartialEq)]
struct Count {
    n: u64,
    pid: u32,
    token: String,
}

fn read_count(d: &Daemon, ct: &str) -> Count {
    let s = d.ok(&["exec", ct, "--", "cat", "/tmp/count"]);
    let f: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(f.len(), 3, "bad /tmp/count: {s:?}");
    Count {
        n: f[0].parse().expect("count"),
        pid: f[1].parse().expect("pid"),
        token: f[2].to_string(),
    }
}

/// Start a detached counter in `ct`: every 0.1 s it writes "N PID TOKEN" to /tmp/count; N and
/// the random TOKEN live only in its memory.
fn start_counter(d: &Daemon, ct: &str) -> Count {
    d.ok(&[
        "exec",
        ct,
        "--",
        "sh",
        "-c",
        "setsid sh -c 't=$RANDOM$RANDOM; i=0; while true; do i=$((i+1)); \
         echo \"$i $$ $t\" > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done' \
         </dev/null >/dev/null 2>&1 &",
    ]);
    wait_count_above(d, ct, 2)
}

/// Wait (up to 10 s) until the counter is past `n`.
fn wait_count_above(d: &Daemon, ct: &str, n: u64) -> Count {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = d.run(&["exec", ct, "--", "cat", "/tmp/count"]);
        if out.status.success() {
            let c = read_count(d, ct);
            if c.n > n {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "counter in {ct} not past {n}: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The counter read as `before` runs on as the same process with the same memory: it gets
/// well past `before` (10 more steps, so a stale /tmp/count alone cannot pass), with the same pid
/// and token.
fn assert_resumed(d: &Daemon, ct: &str, before: &Count) -> Count {
    let after = wait_count_above(d, ct, before.n + 10);
    assert_eq!(
        (after.pid, &after.token),
        (before.pid, &before.token),
        "the counter in {ct} is the same process with the same memory"
    );
    after
}

fn instance_json(d: &Daemon, path: &str) -> serde_json::Value {
    let (code, v) = d.api("GET", path, None).expect("GET");
    assert_eq!(code, 200, "GET {path}: {v}");
    v["metadata"].clone()
}

fn status(d: &Daemon, ct: &str) -> String {
    instance_json(d, &format!("/1.0/instances/{ct}"))["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn stateful(d: &Daemon, ct: &str) -> bool {
    instance_json(d, &format!("/1.0/instances/{ct}"))["stateful"] == true
}

/// The state directory of an instance's volume (on the default dir pool).
fn state_dirs(d: &Daemon) -> Vec<PathBuf> {
    let base = d.dir().join("storage-pools/default/containers");
    std::fs::read_dir(&base)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("state"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

fn launch(d: &Daemon, ct: &str, stateful_key: bool) {
    d.ok(&["launch", "busybox", ct]);
    if stateful_key {
        d.ok(&["config", "set", ct, "migration.stateful=true"]);
    }
}

fn daemon_with(criu: &Path) -> Daemon {
    let d = Daemon::start_with(&[("BIVY_CRIU", criu.to_str().expect("utf-8"))]).expect("daemon");
    d.ok(&[
        "image",
        "import",
        common::busybox_image().to_str().expect("utf-8"),
        "--alias",
        "busybox",
    ]);
    d
}

#[test]
fn stateful_stop_and_start_keep_pids_and_memory() {
    let Some(criu) = criu() else { return };
    let d = daemon_with(&criu);
    launch(&d, "c1", false);
    // Without migration.stateful: refused, naming the key; nothing changes.
    fails_with(
        &d,
        &["stop", "c1", "--stateful"],
        "requires migration.stateful to be set to true",
    );
    assert_eq!(status(&d, "c1"), "Running");
    d.ok(&["config", "set", "c1", "migration.stateful=true"]);
    start_counter(&d, "c1");
    // An exec session still running: its command is not in init's tree, so the checkpoint is
    // refused (a stop would have killed it); once it has ended, the stop goes on.
    let mut session = d
        .cli()
        .args(["exec", "c1", "--", "sleep", "3"])
        .spawn()
        .expect("exec");
    let t = Instant::now();
    while !d.ok(&["exec", "c1", "--", "ps"]).contains("sleep 3") {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the exec did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fails_with(
        &d,
        &["stop", "c1", "--stateful"],
        "exec session(s) still running",
    );
    assert_eq!(status(&d, "c1"), "Running");
    assert!(
        session.wait().expect("wait").success(),
        "the session's command was killed"
    );
    let before = read_count(&d, "c1");
    d.ok(&["stop", "c1", "--stateful"]);
    assert_eq!(status(&d, "c1"), "Stopped");
    assert!(stateful(&d, "c1"), "stateful: true after a stateful stop");
    assert_eq!(state_dirs(&d).len(), 1, "the state is kept in the volume");
    let log = std::fs::read_to_string(d.dir().join("logs/c1/lxc.log")).unwrap_or_default();
    assert!(log.contains("checkpointed"), "{log}");

    // `bivy start` restores it: the same process (pid and memory token), counting on from where
    // it was (not from 0), and the state is used up.
    d.ok(&["start", "c1"]);
    assert_eq!(status(&d, "c1"), "Running");
    assert_resumed(&d, "c1", &before);
    assert!(!stateful(&d, "c1"));
    assert!(state_dirs(&d).is_empty(), "the used state is removed");

    // A process exec'd after a restore joins init's time namespace (CRIU gave init one of its
    // own): the next checkpoint holds one namespace and restores.
    d.ok(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 &",
    ]);
    d.ok(&["stop", "c1", "--stateful"]);
    d.ok(&["start", "c1"]);
    assert_eq!(status(&d, "c1"), "Running");
    let ps = d.ok(&["exec", "c1", "--", "ps"]);
    assert!(
        ps.contains("sleep 1000"),
        "the exec'd process restored:\n{ps}"
    );

    // A second round, then `start --stateless`: the state is discarded, the container boots
    // afresh (no counter runs).
    d.ok(&["stop", "c1", "--stateful"]);
    assert!(stateful(&d, "c1"));
    d.ok(&["start", "c1", "--stateless"]);
    assert!(!stateful(&d, "c1"));
    assert!(
        state_dirs(&d).is_empty(),
        "a stateless start discards the state"
    );
    let ps = d.ok(&["exec", "c1", "--", "ps"]);
    assert!(
        !ps.contains("count"),
        "no counter after a stateless start:\n{ps}"
    );
    // A stateful start without a saved state is refused.
    d.ok(&["stop", "c1", "--force"]);
    let (code, v) = d
        .api(
            "PUT",
            "/1.0/instances/c1/state",
            Some(r#"{"action": "start", "stateful": true}"#),
        )
        .expect("PUT state");
    let op = if code == 202 {
        d.wait_operation(&v)
    } else {
        Some(v)
    };
    let op = op.expect("operation");
    assert!(
        op.to_string().contains("no saved state"),
        "stateful start without state: {op}"
    );
    assert_eq!(status(&d, "c1"), "Stopped");
}

#[test]
fn stateful_snapshot_restores_earlier_memory() {
    let Some(criu) = criu() else { return };
    let d = daemon_with(&criu);
    launch(&d, "c1", true);
    start_counter(&d, "c1");
    d.ok(&["snapshot", "c1", "s1", "--stateful"]);
    let at_snap = read_count(&d, "c1");
    let snap = instance_json(&d, "/1.0/instances/c1/snapshots/s1");
    assert_eq!(snap["stateful"], true, "{snap}");
    // The instance kept running and has no saved state of its own.
    assert_eq!(status(&d, "c1"), "Running");
    assert!(!stateful(&d, "c1"));
    assert!(state_dirs(&d).is_empty());
    let ahead = wait_count_above(&d, "c1", at_snap.n + 15);

    d.ok(&["restore", "c1", "s1", "--stateful"]);
    assert_eq!(status(&d, "c1"), "Running");
    let back = read_count(&d, "c1");
    assert_eq!((back.pid, &back.token), (at_snap.pid, &at_snap.token));
    assert!(
        back.n < ahead.n,
        "the restore brings back the memory of the snapshot ({back:?}, was {ahead:?})"
    );
    // And it counts on from there.
    assert_resumed(&d, "c1", &back);
    assert!(state_dirs(&d).is_empty());

    // The snapshot keeps its state: restored once more, statelessly this time, the container
    // boots afresh without the counter.
    d.ok(&["restore", "c1", "s1"]);
    assert_eq!(status(&d, "c1"), "Running");
    let ps = d.ok(&["exec", "c1", "--", "ps"]);
    assert!(!ps.contains("count"), "{ps}");
    assert!(state_dirs(&d).is_empty());
    // A stateless snapshot cannot be restored statefully.
    d.ok(&["snapshot", "c1", "s2"]);
    fails_with(
        &d,
        &["restore", "c1", "s2", "--stateful"],
        "Stateful snapshot restore requested by snapshot is stateless",
    );
}

/// Make `ct` undumpable: a process holds open a deleted file larger than CRIU's ghost-file
/// limit (1 MiB).
fn hold_a_big_deleted_file(d: &Daemon, ct: &str) {
    d.ok(&[
        "exec",
        ct,
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=2 2>/dev/null; \
         setsid sh -c 'exec sleep 1000 </big' </dev/null >/dev/null 2>&1 & sleep 0.5; rm /big",
    ]);
}

#[test]
fn failed_dump_leaves_the_container_running() {
    let Some(criu) = criu() else { return };
    let d = daemon_with(&criu);
    launch(&d, "c1", true);
    let before = start_counter(&d, "c1");
    // A deleted file held open that is larger than CRIU's ghost-file limit (1 MiB) cannot be
    // dumped.
    hold_a_big_deleted_file(&d, "c1");
    fails_with(&d, &["stop", "c1", "--stateful"], "Can't dump ghost file");
    assert_eq!(status(&d, "c1"), "Running");
    assert!(!stateful(&d, "c1"));
    assert!(
        state_dirs(&d).is_empty(),
        "no state is left from a failed dump"
    );
    assert_resumed(&d, "c1", &before);
    // CRIU's log is kept.
    let log = std::fs::read_to_string(d.dir().join("logs/c1/criu-dump.log")).expect("dump log");
    assert!(log.contains("Dumping FAILED"), "{log}");
    // The same for a stateful snapshot: refused, no snapshot made.
    fails_with(&d, &["snapshot", "c1", "s1", "--stateful"], "ghost file");
    let snaps = instance_json(&d, "/1.0/instances/c1/snapshots");
    assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{snaps}");
    assert_eq!(status(&d, "c1"), "Running");
}

#[test]
fn failed_restore_keeps_the_state_for_another_try() {
    let Some(criu) = criu() else { return };
    let d = daemon_with(&criu);
    launch(&d, "c1", true);
    start_counter(&d, "c1");
    // A process holding a file of the rootfs open: the restore needs that file back.
    d.ok(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "echo kept > /keep; setsid sh -c 'exec sleep 1000 </keep' </dev/null >/dev/null 2>&1 &",
    ]);
    let before = read_count(&d, "c1");
    d.ok(&["stop", "c1", "--stateful"]);
    let vol = state_dirs(&d)[0].parent().expect("volume").to_path_buf();
    // A layered volume's changed files are in its upper layer (storage/layered.rs).
    let changed = common::changed_files_dir(&vol);
    let keep = changed.join("keep");
    let saved = std::fs::read(&keep).expect("read /keep");
    std::fs::remove_file(&keep).expect("remove /keep");
    fails_with(&d, &["start", "c1"], "keep");
    // Stopped, still stateful, the state kept, no cgroup or mount left behind.
    assert_eq!(status(&d, "c1"), "Stopped");
    assert!(stateful(&d, "c1"));
    assert_eq!(state_dirs(&d).len(), 1);
    let log = std::fs::read_to_string(d.dir().join("logs/c1/criu-restore.log")).expect("log");
    assert!(log.contains("Restoring FAILED"), "{log}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(d.dir().to_str().expect("utf-8")),
        "mounts left below {}: {mounts}",
        d.dir().display()
    );
    // The file back (same content, owner and size), the next try restores the processes.
    std::fs::write(&keep, &saved).expect("write /keep");
    let owner = std::fs::metadata(&changed).expect("stat /");
    std::os::unix::fs::chown(
        &keep,
        Some(std::os::unix::fs::MetadataExt::uid(&owner)),
        Some(std::os::unix::fs::MetadataExt::gid(&owner)),
    )
    .expect("chown /keep");
    d.ok(&["start", "c1"]);
    assert_resumed(&d, "c1", &before);
    assert!(!stateful(&d, "c1"));
}

#[test]
fn without_criu_stateful_verbs_fail_and_change_nothing() {
    let Some(criu) = criu() else { return };
    // BIVY_CRIU names a link we remove later, so the same instances meet a daemon without CRIU.
    let tmp = common::TempDir::new().expect("tmp");
    let link = tmp.path().join("criu");
    std::os::unix::fs::symlink(&criu, &link).expect("symlink");
    let mut d = daemon_with(&link);
    launch(&d, "c1", true);
    launch(&d, "c2", true);
    start_counter(&d, "c1");
    start_counter(&d, "c2");
    d.ok(&["snapshot", "c1", "s1", "--stateful"]);
    let c2 = read_count(&d, "c2");
    d.ok(&["stop", "c2", "--stateful"]);

    std::fs::remove_file(&link).expect("remove link");
    d.restart().expect("daemon restart");
    let c1 = read_count(&d, "c1");
    fails_with(&d, &["stop", "c1", "--stateful"], "CRIU not found");
    fails_with(
        &d,
        &["snapshot", "c1", "s2", "--stateful"],
        "CRIU not found",
    );
    fails_with(&d, &["restore", "c1", "s1", "--stateful"], "CRIU not found");
    // c1 ran on untouched, with its one snapshot.
    assert_eq!(status(&d, "c1"), "Running");
    assert_resumed(&d, "c1", &c1);
    let snaps = instance_json(&d, "/1.0/instances/c1/snapshots");
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");
    // c2's restore fails; it stays stopped with its state kept for another try.
    fails_with(&d, &["start", "c2"], "CRIU not found");
    assert_eq!(status(&d, "c2"), "Stopped");
    assert!(stateful(&d, "c2"));
    assert_eq!(state_dirs(&d).len(), 1);

    // With CRIU back, the kept state restores.
    std::os::unix::fs::symlink(&criu, &link).expect("symlink");
    d.ok(&["start", "c2"]);
    assert_resumed(&d, "c2", &c2);
}

#[test]
fn lxc_stateful_stop_start_snapshot_restore() {
    let Some(criu) = criu() else { return };
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start_with(&[("BIVY_CRIU", criu.to_str().expect("utf-8"))]).expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "c1", "-c", "migration.stateful=true"]);
    start_counter(&d, "c1");
    let before = read_count(&d, "c1");
    l.ok(&["stop", "c1", "--stateful"]);
    let info = l.ok(&["list", "c1", "--format", "csv", "-c", "ns"]);
    assert_eq!(info.trim(), "c1,STOPPED");
    assert!(stateful(&d, "c1"));
    // lxc start sends stateful:true for an instance with a saved state.
    l.ok(&["start", "c1"]);
    assert_resumed(&d, "c1", &before);

    l.ok(&["snapshot", "c1", "s1", "--stateful"]);
    let at_snap = read_count(&d, "c1");
    let info = l.ok(&["info", "c1"]);
    assert!(info.contains("s1"), "{info}");
    let ahead = wait_count_above(&d, "c1", at_snap.n + 15);
    l.ok(&["restore", "c1", "s1", "--stateful"]);
    let back = read_count(&d, "c1");
    assert_eq!((back.pid, &back.token), (at_snap.pid, &at_snap.token));
    assert!(back.n < ahead.n, "{back:?} {ahead:?}");
    assert_resumed(&d, "c1", &back);
    l.ok(&["stop", "c1", "--force"]);
}

#[test]
fn a_checkpoint_restores_after_a_rename() {
    let Some(criu) = criu() else { return };
    let d = daemon_with(&criu);
    launch(&d, "c1", false);
    d.ok(&["config", "set", "c1", "migration.stateful=true"]);
    start_counter(&d, "c1");
    let before = read_count(&d, "c1");
    d.ok(&["stop", "c1", "--stateful"]);
    d.ok(&["rename", "c1", "c2"]);
    assert!(stateful(&d, "c2"), "the state goes with the rename");
    // Restored into the new name's cgroup: the same process, counting on.
    d.ok(&["start", "c2"]);
    assert_eq!(status(&d, "c2"), "Running");
    assert_resumed(&d, "c2", &before);
    let (_, v) = d
        .api("GET", "/1.0/instances/c2/state", None)
        .expect("state");
    let pid = v["metadata"]["pid"].as_i64().expect("pid");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    for line in cg.lines().filter(|l| l.contains("/bivy/")) {
        assert!(
            line.contains("/bivy/c2") && !line.contains("/bivy/c1"),
            "restored outside the new name's cgroup:\n{cg}"
        );
    }
    assert!(cg.contains("/bivy/c2"), "{cg}");
    d.ok(&["delete", "c2", "--force"]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Two daemons with CRIU (`a` with the busybox image), each listening on a loopback port with a
/// trust password, and a client configuration (bivy's, in lxc's layout: lxc reads it too) with
/// both as remotes `a` and `b`.
fn remote_pair(criu: &Path) -> (Daemon, Daemon, PathBuf) {
    let a = daemon_with(criu);
    let b = Daemon::start_with(&[("BIVY_CRIU", criu.to_str().expect("utf-8"))]).expect("daemon");
    let conf = a.tmp().join("remotes");
    std::fs::create_dir_all(&conf).expect("mkdir");
    for (d, name) in [(&a, "a"), (&b, "b")] {
        let addr = format!("127.0.0.1:{}", free_port());
        d.ok(&["config", "set", "core.https_address", &addr]);
        d.ok(&["config", "set", "core.trust_password", "live-pw"]);
        let out = d
            .cli()
            .env("BIVY_CONF", &conf)
            .args(["remote", "add", name, &addr, "--accept-certificate"])
            .args(["--password", "live-pw"])
            .output()
            .expect("bivy remote add");
        assert!(out.status.success(), "remote add {name}: {}", text(&out));
    }
    (a, b, conf)
}

fn has_instance(d: &Daemon, ct: &str) -> bool {
    d.api("GET", &format!("/1.0/instances/{ct}"), None)
        .expect("GET")
        .0
        == 200
}

/// Wait (up to 10 s) for `ct` to be Running: a source resumes after the failed migration's
/// operation has ended.
fn wait_running(d: &Daemon, ct: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(d, ct) != "Running" {
        assert!(Instant::now() < deadline, "{ct} did not come back running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn live_migration_between_two_daemons_keeps_the_process() {
    let Some(criu) = criu() else { return };
    let (a, b, conf) = remote_pair(&criu);
    let bivy = |args: &[&str]| {
        a.cli()
            .env("BIVY_CONF", &conf)
            .args(args)
            .output()
            .expect("bivy")
    };
    let ok = |args: &[&str]| {
        let out = bivy(args);
        assert!(out.status.success(), "bivy {args:?}: {}", text(&out));
    };
    launch(&a, "c1", true);
    a.ok(&["snapshot", "c1", "snap0"]);
    let before = start_counter(&a, "c1");

    // A live move (pull): the counter runs on in b as the same process with the same memory,
    // the snapshot came along, and nothing is left on a.
    ok(&["move", "a:c1", "b:c1"]);
    assert!(!has_instance(&a, "c1"), "c1 left on a");
    assert_eq!(status(&b, "c1"), "Running");
    assert!(!stateful(&b, "c1"), "the used checkpoint is gone");
    let on_b = assert_resumed(&b, "c1", &before);
    let snaps = instance_json(&b, "/1.0/instances/c1/snapshots");
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");

    // Back in push mode.
    ok(&["move", "b:c1", "a:c1", "--mode", "push"]);
    assert!(!has_instance(&b, "c1"));
    let on_a = assert_resumed(&a, "c1", &on_b);

    // A live copy in relay mode: the copy runs from the checkpoint, the source resumes.
    ok(&["copy", "a:c1", "b:c2", "--mode", "relay"]);
    assert_resumed(&b, "c2", &on_a);
    let on_a = assert_resumed(&a, "c1", &on_a);
    b.ok(&["delete", "c2", "--force"]);

    // pylxd's live migrate: the target is given the source's `criu` secret but no
    // `source.live`; the secret alone makes it live (LXD's sink), as a copy here.
    let (code, v) = a
        .api(
            "POST",
            "/1.0/instances/c1",
            Some(r#"{"name":"c4","migration":true,"live":true}"#),
        )
        .expect("source POST");
    assert_eq!(code, 202, "{v}");
    let addr = a.ok(&["config", "get", "core.https_address"]);
    let cert = std::fs::read_to_string(a.dir().join("server.crt")).expect("a's certificate");
    let req = serde_json::json!({
        "name": "c4",
        "config": {"migration.stateful": "true"},
        "source": {
            "type": "migration",
            "mode": "pull",
            "operation": format!("https://{}{}", addr.trim(), v["operation"].as_str().expect("op")),
            "certificate": cert,
            "secrets": v["metadata"]["metadata"],
        },
    });
    let (code, created) = b
        .api("POST", "/1.0/instances", Some(&req.to_string()))
        .expect("target POST");
    assert_eq!(code, 202, "{created}");
    let done = b.wait_operation(&created).expect("target operation");
    assert_eq!(done["metadata"]["status"], "Success", "{done}");
    assert_resumed(&b, "c4", &on_a);
    let done = a.wait_operation(&v).expect("source operation");
    assert_eq!(done["metadata"]["status"], "Success", "{done}");
    // The source stopped with its state saved (LXD's); a copy starts it again from it, as
    // lxc and bivy's copy do.
    assert!(stateful(&a, "c1"));
    a.ok(&["start", "c1"]);
    let on_a = assert_resumed(&a, "c1", &on_a);
    b.ok(&["delete", "c4", "--force"]);

    // The unmodified lxc asks for a live move of every running source.
    if common::have_cmd("lxc") {
        let l = Lxc {
            d: &a,
            conf: conf.clone(),
        };
        l.ok(&["move", "a:c1", "b:c1"]);
        let on_b = assert_resumed(&b, "c1", &on_a);
        l.ok(&["move", "b:c1", "a:c1"]);
        assert_resumed(&a, "c1", &on_b);
    } else {
        common::skip(
            &common::current_test_name(),
            "lxc is not installed: the move by the unmodified lxc was not tried",
        );
    }

    // The restore fails on the target (its copy gets an isolated id map, unlike the one the
    // checkpoint was taken with): nothing is left on b, the source resumes its processes.
    let now = read_count(&a, "c1");
    let out = bivy(&["copy", "a:c1", "b:c3", "-c", "security.idmap.isolated=true"]);
    assert!(!out.status.success(), "the copy must fail: {}", text(&out));
    assert!(text(&out).contains("uid map"), "{}", text(&out));
    assert!(!has_instance(&b, "c3"), "a half-made c3 on b");
    wait_running(&a, "c1");
    let now = assert_resumed(&a, "c1", &now);

    // Without migration.stateful: refused before anything moves, naming --stateless.
    launch(&a, "c4", false);
    let out = bivy(&["move", "a:c4", "b:c4"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("--stateless") && t.contains("migration.stateful"),
        "{t}"
    );
    assert_eq!(status(&a, "c4"), "Running");
    assert!(!has_instance(&b, "c4"));

    // A dump that cannot be done: the source keeps running, the target has nothing.
    hold_a_big_deleted_file(&a, "c1");
    let out = bivy(&["move", "a:c1", "b:c5"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ghost file"), "{}", text(&out));
    assert_eq!(status(&a, "c1"), "Running");
    assert!(!stateful(&a, "c1"));
    assert!(!has_instance(&b, "c5"));
    assert_resumed(&a, "c1", &now);
}
