//! Chaos (issue 16): the short version of `cargo xtask chaos`, and what its trials found.
//!
//! `short_chaos_run_finds_no_violation` runs the harness itself (`xtask/src/chaos.rs`, through
//! `cargo run -p xtask` with a target directory of its own, as `busybox_image` builds the image)
//! against this build of bivy: a fixed seed, each trial kind once, round robin. The harness
//! removes everything each trial makes (its daemon by pid, containers, mounts, loop devices,
//! cgroups, the namespace holder). The other tests are the violations its trials found, each
//! reproduced directly.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;

#[test]
fn short_chaos_run_finds_no_violation() {
    if !common::require_root() {
        return;
    }
    for tool in ["unshare", "nsenter", "ip", "nft", "sha256sum"] {
        if !common::have_cmd(tool) {
            common::skip(
                &common::current_test_name(),
                &format!("{tool} is not installed"),
            );
            return;
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = Instant::now();
    let out = Command::new(cargo)
        .current_dir(common::root())
        .args(["run", "--quiet", "--package", "xtask", "--target-dir"])
        .arg(common::target_dir().join("harness-xtask"))
        .args([
            "--",
            "chaos",
            "--trials",
            "27",
            "--seed",
            "16",
            "--round-robin",
        ])
        .arg("--bin")
        .arg(common::bivy_bin())
        .output()
        .expect("run cargo xtask chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}\n{stdout}\n({:?})", t.elapsed());
    assert!(
        out.status.success(),
        "cargo xtask chaos failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("trials (seed 16)"), "{stdout}");
    assert!(stdout.contains(" 0 violation(s)"), "{stdout}");
    // Kinds the machine cannot run (no ext4 or mkfs.ext4: the full-disk trials) are skips.
    for line in stdout.lines() {
        if let Some(why) = line.strip_prefix("SKIP ") {
            common::skip(&common::current_test_name(), why);
        }
    }
}

/// The cgroup directories of instance `name` of daemon `d` (`<name>.<sha256(BIVY_DIR)[..4]>`
/// under each hierarchy's `bivy/`).
fn cgroups_of(d: &Daemon, name: &str) -> Vec<std::path::PathBuf> {
    let mut sh = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    {
        use std::io::Write;
        sh.stdin
            .take()
            .expect("stdin")
            .write_all(d.dir().as_os_str().as_encoded_bytes())
            .expect("write");
    }
    let out = sh.wait_with_output().expect("sha256sum");
    let leaf = format!("{name}.{}", &String::from_utf8_lossy(&out.stdout)[..8]);
    let root = Path::new("/sys/fs/cgroup");
    let mut v = Vec::new();
    let mut hier: Vec<_> = std::fs::read_dir(root)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    hier.push(root.to_path_buf());
    for h in hier {
        let p = h.join("bivy").join(&leaf);
        if p.is_dir() {
            v.push(p);
        }
    }
    v
}

fn status(d: &Daemon, name: &str) -> String {
    let (_, v) = d
        .api("GET", &format!("/1.0/instances/{name}/state"), None)
        .expect("state");
    v["metadata"]["status"].as_str().unwrap_or("").to_owned()
}

fn wait_stopped(d: &Daemon, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(d, name) != "Stopped" {
        assert!(Instant::now() < deadline, "{name} not Stopped after 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn monitor_pid(d: &Daemon, name: &str) -> i32 {
    let text = std::fs::read_to_string(d.dir().join(format!("run/{name}/monitor.pid")))
        .expect("monitor.pid");
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid")
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

/// As root, a daemon with the busybox image and `names` launched from it; `None` (skipped) when
/// not root.
fn daemon_with(names: &[&str]) -> Option<Daemon> {
    if !common::require_root() {
        return None;
    }
    let d = Daemon::start().expect("daemon");
    d.import_busybox();
    for n in names {
        d.ok(&["launch", "busybox", n]);
    }
    Some(d)
}

/// Found by chaos (kill-monitor): a container whose monitor was SIGKILLed was reported
/// Stopped, but its cgroups stayed until the next start, owned by nothing.
#[test]
fn a_killed_monitor_leaves_no_cgroup() {
    let Some(mut d) = daemon_with(&["m1", "m2"]) else {
        return;
    };
    assert!(!cgroups_of(&d, "m1").is_empty(), "no cgroup found for m1");
    // While the daemon runs: it sees the monitor go.
    sigkill(monitor_pid(&d, "m1"));
    wait_stopped(&d, "m1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroups_of(&d, "m1").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cgroups_of(&d, "m1"), Vec::<std::path::PathBuf>::new());
    // While no daemon runs: the next one finds it at start.
    d.kill9();
    sigkill(monitor_pid(&d, "m2"));
    std::thread::sleep(Duration::from_millis(300));
    d.restart().expect("restart");
    wait_stopped(&d, "m2");
    assert_eq!(cgroups_of(&d, "m2"), Vec::<std::path::PathBuf>::new());
    // And both start again.
    d.ok(&["start", "m1", "m2"]);
    d.ok(&["delete", "--force", "m1", "m2"]);
}

/// The mount points in the mount namespace of `name`'s init (as the container sees them).
fn container_mounts(d: &Daemon, name: &str) -> Vec<String> {
    let (_, v) = d
        .api("GET", &format!("/1.0/instances/{name}/state"), None)
        .expect("state");
    let pid = v["metadata"]["pid"].as_i64().expect("an init pid");
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// Rewrite the record of instance `name` in the database of a daemon that is not running.
fn edit_record(d: &Daemon, name: &str, f: impl FnOnce(&mut serde_json::Value)) {
    d.edit_database(|db| f(&mut db["instances"][name]));
}

/// Found by chaos (device): a daemon killed during a device hot-plug left the container's
/// mounts and its record apart, since the helper plugs (it runs on) before the record is
/// written: a device plugged that no record has, or one recorded and unplugged. A new daemon
/// now makes a running container's disks and nodes what its record says: from the running
/// spec, and for the paths of a hot-plug it died in (`run/<name>/hotplug.pending`) afresh.
#[test]
fn a_killed_hot_plug_is_reconciled_with_the_record_at_restart() {
    let Some(mut d) = daemon_with(&["h1"]) else {
        return;
    };
    let src = d.tmp().join("hostdir");
    std::fs::create_dir_all(&src).expect("mkdir");
    let source = format!("source={}", src.display());
    let add_disk = |d: &Daemon| {
        d.ok(&[
            "config",
            "device",
            "add",
            "h1",
            "hx",
            "disk",
            &source,
            "path=/mnt/x",
        ])
    };
    add_disk(&d);
    d.ok(&[
        "config",
        "device",
        "add",
        "h1",
        "nul",
        "unix-char",
        "source=/dev/null",
        "path=/dev/chaosnull",
    ]);
    let has = |d: &Daemon, p: &str| container_mounts(d, "h1").iter().any(|m| m == p);
    assert!(has(&d, "/mnt/x") && has(&d, "/dev/chaosnull"));
    // Plugged, then killed before the record was written: the record lacks both.
    d.kill9();
    edit_record(&d, "h1", |r| {
        let devs = r["devices"].as_object_mut().expect("devices");
        devs.remove("hx");
        devs.remove("nul");
    });
    d.restart().expect("restart");
    assert!(!has(&d, "/mnt/x"), "{:?}", container_mounts(&d, "h1"));
    assert!(
        !has(&d, "/dev/chaosnull"),
        "{:?}",
        container_mounts(&d, "h1")
    );
    // Recorded again, then a removal killed while its helper ran: unmounted in the container,
    // the running spec not yet written, the request left behind.
    add_disk(&d);
    assert!(has(&d, "/mnt/x"));
    d.kill9();
    let out = Command::new("nsenter")
        .args([
            "-m",
            "-t",
            &init_pid_on_disk(&d, "h1").to_string(),
            "umount",
            "/mnt/x",
        ])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        d.dir().join("run/h1/hotplug.pending"),
        r#"{"disks":[],"nodes":[],"remove":[{"path":"/mnt/x","node":false}]}"#,
    )
    .expect("write the request");
    d.restart().expect("restart");
    assert!(has(&d, "/mnt/x"), "{:?}", container_mounts(&d, "h1"));
    assert!(!d.dir().join("run/h1/hotplug.pending").exists());
    // And the device still goes.
    d.ok(&["config", "device", "remove", "h1", "hx"]);
    assert!(!has(&d, "/mnt/x"));
    d.ok(&["delete", "--force", "h1"]);
}

/// The same for NICs, which the daemon plugs itself (over netlink) before it writes the record:
/// a NIC plugged that no record has goes, one recorded whose unplug was under way (the intent
/// `run/<name>/nics.pending` left behind) comes back with the record's host end.
#[test]
fn a_killed_nic_hot_plug_is_reconciled_with_the_record_at_restart() {
    let Some(mut d) = daemon_with(&["h2"]) else {
        return;
    };
    let add_nic = |d: &Daemon| {
        d.ok(&[
            "config",
            "device",
            "add",
            "h2",
            "n1",
            "nic",
            "nictype=p2p",
            "name=eth5",
        ])
    };
    let inside = |d: &Daemon| {
        d.cli()
            .args(["exec", "h2", "--", "test", "-e", "/sys/class/net/eth5"])
            .status()
            .expect("exec")
            .success()
    };
    let host_end = |d: &Daemon| -> String {
        d.database()["instances"]["h2"]["config"]["volatile.n1.host_name"]
            .as_str()
            .expect("volatile.n1.host_name")
            .to_string()
    };
    let on_host = |h: &str| Path::new("/sys/class/net").join(h).exists();
    add_nic(&d);
    let h = host_end(&d);
    assert!(inside(&d) && on_host(&h));
    // Plugged, then killed before the record was written: the record lacks it.
    d.kill9();
    edit_record(&d, "h2", |r| {
        r["devices"].as_object_mut().expect("devices").remove("n1");
        let c = r["config"].as_object_mut().expect("config");
        c.retain(|k, _| !k.starts_with("volatile.n1."));
    });
    d.restart().expect("restart");
    assert!(!inside(&d), "eth5 is still in h2");
    assert!(!on_host(&h), "{h} is still on the host");
    // Recorded again, then a removal killed after the unplug, before the running spec and the
    // record followed: the intent says what was under way.
    add_nic(&d);
    let h = host_end(&d);
    assert!(inside(&d) && on_host(&h));
    d.kill9();
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.dir().join("run/h2/spec.json")).expect("spec"),
    )
    .expect("json");
    let nic = spec["nics"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["device"] == "n1"))
        .expect("n1 in the running spec")
        .clone();
    std::fs::write(
        d.dir().join("run/h2/nics.pending"),
        serde_json::to_vec(&serde_json::json!({"gone": [nic], "added": []})).expect("json"),
    )
    .expect("write the intent");
    let out = Command::new("ip")
        .args(["link", "del", &h])
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!on_host(&h));
    d.restart().expect("restart");
    assert!(inside(&d), "eth5 did not come back");
    assert!(on_host(&h), "{h} did not come back");
    assert!(!d.dir().join("run/h2/nics.pending").exists());
    // And the device still goes.
    d.ok(&["config", "device", "remove", "h2", "n1"]);
    assert!(!inside(&d) && !on_host(&h));
    d.ok(&["delete", "--force", "h2"]);
}

/// The init pid of `name` from its run directory (no daemon needed).
fn init_pid_on_disk(d: &Daemon, name: &str) -> i32 {
    let text =
        std::fs::read_to_string(d.dir().join(format!("run/{name}/init.pid"))).expect("init.pid");
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid")
}
