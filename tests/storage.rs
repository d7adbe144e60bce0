//! Storage pools, snapshots, restore, copy and move, driven by the unmodified `lxc` 5.0.2
//! client and the REST API, on both drivers: `dir` (the default pool) and `btrfs` (a pool on a
//! loop file that the daemon makes; the test deletes it and checks the loop device is released).
//! Real containers, as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{failed, Daemon, Lxc};

/// Loop devices whose backing file is `image`.
fn loops_backing(image: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let bf = e.path().join("loop/backing_file");
        if let Ok(s) = std::fs::read_to_string(&bf) {
            if Path::new(s.trim()) == image {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Volume directories under a pool's `containers/` (names only).
fn volumes(pool_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pool_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn snapshot_names(l: &Lxc<'_>, ct: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&l.ok(&[
        "query",
        &format!("/1.0/instances/{ct}/snapshots?recursion=1"),
    ]))
    .expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The whole snapshot/restore/copy/move story on one pool.
fn exercise_pool(l: &Lxc<'_>, pool: &str) {
    let c = |n: &str| format!("{pool}-{n}");
    let (c1, c2, c3, c4, c5) = (c("c1"), c("c2"), c("c3"), c("c4"), c("c5"));
    l.ok(&["launch", "busybox", &c1, "-s", pool]);
    let info: serde_json::Value =
        serde_json::from_str(&l.ok(&["query", &format!("/1.0/instances/{c1}")])).expect("json");
    assert_eq!(info["expanded_devices"]["root"]["pool"], pool, "{info}");
    assert_eq!(l.sh(&c1, "echo one > /root/a").0, 0);

    // Snapshot (empty name: snap0), then change the instance.
    l.ok(&["snapshot", &c1]);
    assert_eq!(snapshot_names(l, &c1), vec!["snap0"]);
    assert_eq!(l.sh(&c1, "echo two > /root/b && rm /root/a").0, 0);
    l.ok(&["snapshot", &c1, "named"]);
    assert_eq!(snapshot_names(l, &c1), vec!["snap0", "named"]);

    // The snapshot is unchanged by later writes: a copy made from it has a, not b.
    l.ok(&["copy", &format!("{c1}/snap0"), &c2]);
    l.ok(&["start", &c2]);
    assert_eq!(l.sh(&c2, "cat /root/a; ls /root").1, "one\na\n");
    // ...and the copy is independent of its source.
    assert_eq!(l.sh(&c2, "echo mine > /root/a").0, 0);
    assert_eq!(l.sh(&c1, "ls /root").1, "b\n");

    // Restore a running instance: stopped, restored (rootfs and config), started again.
    l.ok(&["config", "set", &c1, "user.marker", "after"]);
    l.ok(&["restore", &c1, "snap0"]);
    assert_eq!(l.sh(&c1, "cat /root/a; ls /root").1, "one\na\n");
    let st = l.ok(&["list", &c1, "--format", "csv", "-c", "s"]);
    assert_eq!(st.trim(), "RUNNING");
    let cfg = l.ok(&["config", "get", &c1, "user.marker"]);
    assert_eq!(cfg.trim(), "", "restore brings the snapshot's config back");

    // Snapshots are immutable: no config change, no start.
    let (code, body) =
        l.d.api(
            "PUT",
            &format!("/1.0/instances/{c1}/snapshots/snap0"),
            Some(r#"{"config":{"user.x":"y"},"expires_at":"0001-01-01T00:00:00Z"}"#),
        )
        .expect("api");
    assert_eq!(code, 400, "{body}");
    let out = l.run(&["start", &format!("{c1}/snap0")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");

    // Copy with and without snapshots; the copy has its own volatile identity.
    l.ok(&["copy", &c1, &c3]);
    assert_eq!(snapshot_names(l, &c3), vec!["snap0", "named"]);
    l.ok(&["copy", &c1, &c4, "--instance-only"]);
    assert!(snapshot_names(l, &c4).is_empty());
    let uuid = |n: &str| {
        l.ok(&["config", "get", n, "volatile.uuid"])
            .trim()
            .to_string()
    };
    assert_ne!(uuid(&c1), uuid(&c3));
    // The copy re-rendered its templates for its own name.
    l.ok(&["start", &c3]);
    assert_eq!(l.sh(&c3, "cat /etc/hostname").1.trim(), c3);
    l.ok(&["stop", &c3, "--force"]);

    // Rename and delete snapshots; move (rename) a stopped instance with its snapshots.
    l.ok(&["move", &format!("{c3}/named"), &format!("{c3}/renamed")]);
    assert_eq!(snapshot_names(l, &c3), vec!["snap0", "renamed"]);
    l.ok(&["delete", &format!("{c3}/snap0")]);
    assert_eq!(snapshot_names(l, &c3), vec!["renamed"]);
    l.ok(&["move", &c3, &c5]);
    assert_eq!(snapshot_names(l, &c5), vec!["renamed"]);
    let info = l.ok(&["info", &c5]);
    assert!(
        info.contains("Snapshots:") && info.contains("renamed"),
        "{info}"
    );
    l.ok(&["restore", &c5, "renamed"]);
    l.ok(&["start", &c5]);
    assert_eq!(l.sh(&c5, "ls /root").1, "b\n");

    // Publish a snapshot and launch from it.
    let out = l.ok(&["publish", &format!("{c5}/renamed"), "--alias", &c("img")]);
    assert!(out.contains("fingerprint"), "{out}");
    l.ok(&["launch", &c("img"), &c("c6"), "-s", pool]);
    assert_eq!(l.sh(&c("c6"), "cat /root/b").1, "two\n");

    // Stateful snapshots need migration.stateful (tests/criu.rs has them working).
    let out = l.run(&["snapshot", &c1, "st", "--stateful"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires migration.stateful"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for n in [&c1, &c2, &c4, &c5, &c("c6")] {
        l.ok(&["delete", "--force", n]);
    }
    l.ok(&["image", "delete", &c("img")]);
}

#[test]
fn dir_pool_snapshots_restore_copy_move() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let list = l.ok(&["storage", "list", "--format", "csv"]);
    assert!(list.starts_with("default,dir,"), "{list}");
    exercise_pool(&l, "default");
    // Nothing is left on the pool but the image's base volume.
    let pool = d.dir().join("storage-pools/default");
    assert!(volumes(&pool).is_empty(), "{:?}", volumes(&pool));
    let snaps: Vec<_> = std::fs::read_dir(pool.join("containers-snapshots"))
        .expect("dir")
        .collect();
    assert!(snaps.is_empty(), "{snaps:?}");
}

/// A restore whose snapshot volume cannot be cloned fails and leaves the running instance
/// running with its files; a volume set aside for removal that a stopped daemon did not finish
/// (`<volume>.old.gone-*`) is removed at the next start.
/// `lxc move c1 -s POOL` (LXD's `instance_pool_move`): the instance changes pool under its name
/// or a new one, its files and snapshots along (or left behind with `--instance-only`), its
/// volumes gone from the old pool; refused while it runs without its state, or to a pool that
/// is not there, changing nothing.
#[test]
fn an_instance_moves_between_pools() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "create", "second", "dir"]);
    let (default, second) = (
        d.dir().join("storage-pools/default"),
        d.dir().join("storage-pools/second"),
    );
    let pool_of = |n: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&l.ok(&["query", &format!("/1.0/instances/{n}")])).expect("json");
        (
            v["expanded_devices"]["root"]["pool"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            v["devices"]["root"]["pool"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    l.ok(&["launch", "busybox", "m1"]);
    assert_eq!(l.sh("m1", "echo one > /root/a").0, 0);
    l.ok(&["snapshot", "m1", "s0"]);
    assert_eq!(l.sh("m1", "echo two > /root/b").0, 0);
    let before = volumes(&default);

    // Running, without its state: refused, nothing changed.
    let err = failed(&l.run(&["move", "m1", "-s", "second", "--stateless"]));
    assert!(err.contains("must be stopped"), "{err}");
    // Running, with its state: the state cannot be saved without migration.stateful.
    let err = failed(&l.run(&["move", "m1", "-s", "second"]));
    assert!(err.contains("migration.stateful"), "{err}");
    // A pool that is not there.
    l.ok(&["stop", "m1", "--force"]);
    let err = failed(&l.run(&["move", "m1", "-s", "nosuch"]));
    assert!(err.contains("not found"), "{err}");
    assert_eq!(pool_of("m1").0, "default");
    assert_eq!(volumes(&default), before);
    assert!(volumes(&second).is_empty(), "{:?}", volumes(&second));

    // Under its name, with its snapshot: its root disk is now its own, on the new pool.
    l.ok(&["move", "m1", "-s", "second"]);
    assert_eq!(pool_of("m1"), ("second".into(), "second".into()));
    assert_eq!(volumes(&second).len(), 1, "{:?}", volumes(&second));
    assert_eq!(
        volumes(&default).len(),
        before.len() - 1,
        "{:?}",
        volumes(&default)
    );
    assert_eq!(snapshot_names(&l, "m1"), vec!["s0"]);
    let vols = l.ok(&[
        "storage", "volume", "list", "second", "--format", "csv", "-c", "tn",
    ]);
    assert!(vols.contains("container,m1"), "{vols}");
    l.ok(&["start", "m1"]);
    assert_eq!(l.sh("m1", "cat /root/a /root/b").1, "one\ntwo\n");
    l.ok(&["restore", "m1", "s0"]);
    assert_eq!(l.sh("m1", "ls /root").1, "a\n");
    // The snapshot's root disk was moved along: restored, the instance still says the pool
    // its volume is on, and takes changes.
    assert_eq!(pool_of("m1"), ("second".into(), "second".into()));
    l.ok(&["config", "set", "m1", "user.after", "restore"]);

    // To a new name, without its snapshots: the old pool keeps nothing of it.
    l.ok(&["stop", "m1", "--force"]);
    l.ok(&["move", "m1", "m2", "-s", "default", "--instance-only"]);
    let list = l.ok(&["list", "--format", "csv", "-c", "n"]);
    assert_eq!(list.trim(), "m2");
    assert_eq!(pool_of("m2").0, "default");
    assert!(snapshot_names(&l, "m2").is_empty());
    assert!(volumes(&second).is_empty(), "{:?}", volumes(&second));
    let snaps = second.join("containers-snapshots");
    assert_eq!(
        std::fs::read_dir(&snaps).map(|r| r.count()).unwrap_or(0),
        0,
        "snapshot volumes left in {}",
        snaps.display()
    );
    l.ok(&["start", "m2"]);
    assert_eq!(l.sh("m2", "ls /root").1, "a\n");
    l.ok(&["delete", "--force", "m2"]);
    l.ok(&["storage", "delete", "second"]);
}

#[test]
fn a_failed_restore_leaves_the_instance_as_it_was() {
    if !common::lxc_prerequisites() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "fr"]);
    assert_eq!(l.sh("fr", "echo one > /root/a").0, 0);
    l.ok(&["snapshot", "fr", "s0"]);
    assert_eq!(l.sh("fr", "echo two > /root/a").0, 0);
    let db = d.database();
    let rec = &db["instances"]["fr"];
    let vol = rec["volume"].as_str().expect("volume").to_string();
    let snap_vol = rec["snapshots"][0]["volume"]
        .as_str()
        .expect("snapshot volume");
    let pool = d.dir().join("storage-pools/default");
    let snap_dir = pool.join("containers-snapshots").join(&vol).join(snap_vol);
    let aside = snap_dir.with_extension("aside");
    std::fs::rename(&snap_dir, &aside).expect("move the snapshot's volume away");
    let out = l.run(&["restore", "fr", "s0"]);
    assert!(!out.status.success(), "restored from a missing volume");
    let st = l.ok(&["list", "fr", "--format", "csv", "-c", "s"]);
    assert_eq!(
        st.trim(),
        "RUNNING",
        "started again after the failed restore"
    );
    assert_eq!(
        l.sh("fr", "cat /root/a").1,
        "two\n",
        "the files as they were"
    );
    assert_eq!(volumes(&pool), vec![vol.clone()], "no clone left beside it");
    std::fs::rename(&aside, &snap_dir).expect("put the snapshot's volume back");
    l.ok(&["restore", "fr", "s0"]);
    assert_eq!(l.sh("fr", "cat /root/a").1, "one\n");

    l.ok(&["stop", "--force", "fr"]);
    d.stop();
    let gone = pool.join("containers").join(format!("{vol}.old.gone-1-0"));
    std::fs::create_dir_all(gone.join("rootfs/root")).expect("mkdir");
    std::fs::write(gone.join("rootfs/root/a"), "old").expect("write");
    // As if a daemon died between a restore's two renames: the volume set aside as
    // `<volume>.old`, nothing in its place yet; the start puts it back.
    let cur = pool.join("containers").join(&vol);
    let old = pool.join("containers").join(format!("{vol}.old"));
    std::fs::rename(&cur, &old).expect("set the volume aside");
    d.restart().expect("restart");
    assert!(
        !gone.exists(),
        "a volume set aside for removal is removed at the start"
    );
    assert!(
        cur.is_dir() && !old.exists(),
        "the interrupted restore undone"
    );
    let l = Lxc::new(&d);
    l.ok(&["start", "fr"]);
    assert_eq!(l.sh("fr", "cat /root/a").1, "one\n", "its files back");
    l.ok(&["stop", "--force", "fr"]);
    l.ok(&["delete", "fr"]);
    assert!(volumes(&pool).is_empty(), "{:?}", volumes(&pool));
}

/// A restore of a running instance does not wait for the old run's end: the old run is killed
/// and its run directory moved aside, and the restored instance starts beside it (in a cgroup
/// of another name). Here the old run's monitor is held stopped (SIGSTOP, by its pid) so that
/// its end cannot come before the restore answers: the restore still succeeds at once, the
/// instance runs with the snapshot's files, and once the old monitor goes on, its run directory,
/// its cgroups and the volume restored away are gone and its end is in the instance's log. A run
/// moved aside whose end a stopped daemon did not see is cleaned up at the next start, and a
/// monitor a killed daemon held stopped goes on.
#[test]
fn a_running_restore_does_not_wait_for_the_old_runs_end() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !common::lxc_prerequisites() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "rr"]);
    assert_eq!(l.sh("rr", "echo one > /root/a").0, 0);
    l.ok(&["snapshot", "rr", "s0"]);
    assert_eq!(l.sh("rr", "echo two > /root/a").0, 0);
    let run = d.dir().join("run");
    let pid_in = |dir: &Path| -> i32 {
        std::fs::read_to_string(dir.join("monitor.pid"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no monitor.pid in {}", dir.display()))
    };
    let old = pid_in(&run.join("rr"));
    let pool = d.dir().join("storage-pools/default");
    let vols_before = volumes(&pool);
    let ended = || -> Vec<String> {
        std::fs::read_dir(&run)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".ended."))
            .collect()
    };
    let cgroups = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir("/sys/fs/cgroup/pids/bivy")
            .or_else(|_| std::fs::read_dir("/sys/fs/cgroup/bivy"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n == "rr" || n.starts_with("rr."))
            .collect();
        v.sort();
        v
    };
    assert_eq!(cgroups().len(), 1, "{:?}", cgroups());
    kill(Pid::from_raw(old), Signal::SIGSTOP).expect("SIGSTOP the old run's monitor");
    let out = l.run(&["restore", "rr", "s0"]);
    let resumed = kill(Pid::from_raw(old), Signal::SIGCONT);
    assert!(out.status.success(), "{}", failed(&out));
    resumed.expect("SIGCONT");
    assert_eq!(l.sh("rr", "cat /root/a").1, "one\n", "the snapshot's files");
    let new = pid_in(&run.join("rr"));
    assert_ne!(new, old, "a new run");
    // Its end comes once its monitor goes on: everything of the old run goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = d.dir().join("logs/rr/lxc.log");
    let killed = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("killed by request")
            .count()
    };
    while (!ended().is_empty()
        || cgroups().len() != 1
        || volumes(&pool) != vols_before
        || killed() == 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ended().is_empty(), "{:?}", ended());
    assert_eq!(
        cgroups().len(),
        1,
        "only the new run's cgroup: {:?}",
        cgroups()
    );
    assert_eq!(
        volumes(&pool),
        vols_before,
        "the volume restored away removed"
    );
    assert_eq!(
        killed(),
        1,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let state = std::fs::read_to_string(format!("/proc/{old}/stat")).unwrap_or_default();
    assert!(
        state.is_empty()
            || state
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z')),
        "the old monitor ended: {state}"
    );
    // Restored again at once, twice: each the snapshot's files, each old run gone after.
    for _ in 0..2 {
        assert_eq!(l.sh("rr", "echo three > /root/a").0, 0);
        l.ok(&["restore", "rr", "s0"]);
        assert_eq!(l.sh("rr", "cat /root/a").1, "one\n");
    }
    // A monitor of an older bivy (it would tear down in the next run's directory) writes no
    // `detachable`, or leaves one a newer monitor wrote before it there: it is stopped and
    // waited for, and the restore works as before.
    let marker = run.join("rr/detachable");
    assert_eq!(
        std::fs::read(&marker).ok(),
        std::fs::read(run.join("rr/monitor.pid")).ok(),
        "a monitor says it can be moved aside"
    );
    std::fs::write(&marker, "1 1\n").expect("an earlier monitor's");
    assert_eq!(l.sh("rr", "echo four > /root/a").0, 0);
    l.ok(&["restore", "rr", "s0"]);
    assert_eq!(l.sh("rr", "cat /root/a").1, "one\n");
    l.ok(&["stop", "--force", "rr"]);

    // A run moved aside that no daemon saw end (its monitor gone): cleaned up at the start.
    d.stop();
    let left = run.join(".ended.rr.4194304");
    std::fs::create_dir_all(left.join("stage")).expect("mkdir");
    std::fs::write(left.join("exit.json"), r#"{"code":137,"reason":"killed"}"#).expect("write");
    std::fs::write(left.join("monitor.pid"), "4194304 1\n").expect("write");
    d.restart().expect("restart");
    assert!(!left.exists(), "{} left", left.display());
    let l = Lxc::new(&d);
    l.ok(&["start", "rr"]);
    assert_eq!(l.sh("rr", "cat /root/a").1, "one\n");

    // A restore holds the old run's monitor stopped from before its kill until the new run is
    // answered, its fresh run directory made aside first. A daemon killed in between: its next
    // start lets the monitor go on (the fresh directory's name says whose) and removes that.
    d.stop();
    let mon = pid_in(&run.join("rr"));
    kill(Pid::from_raw(mon), Signal::SIGSTOP).expect("SIGSTOP the monitor");
    let fresh = run.join(format!(".ended.rr.{mon}"));
    std::fs::create_dir(&fresh).expect("mkdir");
    d.restart().expect("restart");
    assert!(!fresh.exists(), "{} left", fresh.display());
    let state = || {
        std::fs::read_to_string(format!("/proc/{mon}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ")?.1.chars().next())
    };
    let t = std::time::Instant::now();
    while state() == Some('T') && t.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(state(), Some('S'), "the held monitor did not go on");
    let l = Lxc::new(&d);
    assert_eq!(l.sh("rr", "cat /root/a").1, "one\n");
    l.ok(&["delete", "--force", "rr"]);
    assert!(cgroups().is_empty(), "{:?}", cgroups());
}

/// A restore stops a running instance without recording it stopped (it is started again); when
/// that start fails (here the snapshot's config names a kernel module that cannot be loaded),
/// the restore fails, and the instance is stopped and recorded so, across a daemon restart.
#[test]
fn a_restore_whose_start_fails_is_recorded_stopped() {
    if !common::lxc_prerequisites() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "fs"]);
    l.ok(&[
        "config",
        "set",
        "fs",
        "linux.kernel_modules",
        "bivy_no_such_module",
    ]);
    l.ok(&["snapshot", "fs", "bad"]);
    l.ok(&["config", "unset", "fs", "linux.kernel_modules"]);
    let out = l.run(&["restore", "fs", "bad"]);
    assert!(!out.status.success(), "the restored start did not fail");
    let power = |l: &Lxc| l.ok(&["config", "get", "fs", "volatile.last_state.power"]);
    assert_eq!(
        l.ok(&["list", "fs", "--format", "csv", "-c", "s"]).trim(),
        "STOPPED"
    );
    assert_eq!(power(&l).trim(), "STOPPED");
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    assert_eq!(power(&l).trim(), "STOPPED", "the record after a restart");
    l.ok(&["config", "unset", "fs", "linux.kernel_modules"]);
    l.ok(&["start", "fs"]);
    assert_eq!(power(&l).trim(), "RUNNING");
    l.ok(&["delete", "--force", "fs"]);
}

/// Volumes, and the instances' run and log directories, are trees of their own, made and
/// deleted as instances come and go: their parents carry the top-directory flag, so ext4
/// spreads them over its block groups (see `util::fs::spread_subdirs`), and a tree that lost
/// it (an older bivy's) gets it back at the next start.
#[test]
fn volume_run_and_log_parents_spread_their_children() {
    let mut d = Daemon::start().expect("daemon");
    let probe = d.dir().join("probe");
    std::fs::create_dir(&probe).expect("mkdir");
    let supported = bivy::util::fs::spread_subdirs(&probe).expect("spread_subdirs");
    std::fs::remove_dir(&probe).expect("rmdir");
    if !supported {
        common::skip(
            &common::current_test_name(),
            "the daemon's filesystem has no top-directory flag (not ext2/3/4)",
        );
        return;
    }
    let flags = |p: &Path| {
        let f = std::fs::File::open(p).expect("open");
        rustix::fs::ioctl_getflags(&f).expect("FS_IOC_GETFLAGS")
    };
    let parents: Vec<PathBuf> = ["run", "logs"]
        .iter()
        .map(|p| d.dir().join(p))
        .chain(
            [
                "containers",
                "containers-snapshots",
                "images",
                "custom",
                "custom-snapshots",
            ]
            .iter()
            .map(|p| d.dir().join("storage-pools/default").join(p)),
        )
        .collect();
    for p in &parents {
        assert!(
            flags(p).contains(rustix::fs::IFlags::TOPDIR),
            "{} has no top-directory flag",
            p.display()
        );
    }
    // An older tree: the flags cleared while the daemon is down come back at the start.
    d.stop();
    for p in &parents {
        let f = std::fs::File::open(p).expect("open");
        rustix::fs::ioctl_setflags(&f, flags(p) - rustix::fs::IFlags::TOPDIR).expect("clear");
        assert!(!flags(p).contains(rustix::fs::IFlags::TOPDIR));
    }
    d.restart().expect("restart");
    for p in &parents {
        assert!(
            flags(p).contains(rustix::fs::IFlags::TOPDIR),
            "{} did not get its top-directory flag back",
            p.display()
        );
    }
}

#[test]
fn btrfs_pool_on_a_loop_file() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let out = l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    assert!(out.contains("Storage pool bt created"), "{out}");
    let image = d.dir().join("disks/bt.img");
    assert_eq!(
        loops_backing(&image).len(),
        1,
        "one loop device backs the pool"
    );
    let info = l.ok(&["storage", "info", "bt"]);
    assert!(
        info.contains("driver: btrfs") && info.contains("total space:"),
        "{info}"
    );
    let res = l.ok(&["info", "--resources"]);
    assert!(res.contains("CPU") && res.contains("Memory:"), "{res}");
    let show = l.ok(&["storage", "show", "bt"]);
    assert!(
        show.contains("driver: btrfs") && show.contains("size: 1GiB"),
        "{show}"
    );

    exercise_pool(&l, "bt");

    // In use: refused. Instances on it are subvolumes; snapshots read-only subvolumes.
    l.ok(&["launch", "busybox", "keep", "-s", "bt"]);
    l.ok(&["snapshot", "keep", "s0"]);
    let out = l.run(&["storage", "delete", "bt"]);
    assert!(!out.status.success(), "deleting a pool in use must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    let mnt = d.dir().join("storage-pools/bt");
    let snapdir = std::fs::read_dir(mnt.join("containers-snapshots"))
        .expect("snapshots dir")
        .next()
        .expect("one instance")
        .expect("entry")
        .path();
    let snap: PathBuf = std::fs::read_dir(&snapdir)
        .expect("dir")
        .next()
        .expect("one snapshot")
        .expect("entry")
        .path();
    let err = std::fs::write(snap.join("rootfs/root/x"), b"x").expect_err("read-only snapshot");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    // The pool survives a daemon restart (re-mounted by the daemon if needed).
    let mut d = d;
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    assert_eq!(l.sh("keep", "echo alive").1, "alive\n");

    // As after a host reboot: the daemon gone, the pool unmounted and its loop device released;
    // the next daemon attaches and mounts it again and the instance starts.
    l.ok(&["stop", "keep", "--force"]);
    drop(l);
    d.kill9();
    nix::mount::umount(&mnt).expect("umount the pool");
    let t = Instant::now();
    while !loops_backing(&image).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        loops_backing(&image).is_empty(),
        "autoclear released the loop device"
    );
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    assert_eq!(
        loops_backing(&image).len(),
        1,
        "the daemon re-attached the pool"
    );
    l.ok(&["start", "keep"]);
    assert_eq!(l.sh("keep", "echo back").1, "back\n");
    assert_eq!(snapshot_names(&l, "keep"), vec!["s0"]);

    l.ok(&["delete", "--force", "keep"]);
    l.ok(&["storage", "delete", "bt"]);
    assert!(loops_backing(&image).is_empty(), "loop device released");
    assert!(!image.exists(), "image file removed");
    assert!(!common::mounts_below(d.dir()).iter().any(|m| m == &mnt));
}

/// A container's monitor has a private mount namespace, a copy of the host's mounts: started
/// while a loop pool was mounted, it held the pool's filesystem, and so its loop device, after
/// the pool's unmount, and the pool's delete failed ("loop device ... still attached") until
/// the container stopped. Found by `cargo xtask chaos`.
#[test]
fn a_loop_pool_is_deleted_while_containers_on_other_pools_run() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "create", "bt", "btrfs", "size=300MiB"]);
    let image = d.dir().join("disks/bt.img");
    // Started while the pool is mounted: one launched, one launched and restarted.
    l.ok(&["launch", "busybox", "o1"]);
    l.ok(&["launch", "busybox", "o2"]);
    l.ok(&["restart", "o2", "--force"]);
    l.ok(&["storage", "delete", "bt"]);
    assert!(loops_backing(&image).is_empty(), "loop device released");
    assert!(!image.exists(), "image file removed");
    // The containers are untouched, and a pool of the same name can be made again.
    assert_eq!(l.sh("o1", "echo alive").1, "alive\n");
    assert_eq!(l.sh("o2", "echo alive").1, "alive\n");
    l.ok(&["storage", "create", "bt", "btrfs", "size=300MiB"]);
    l.ok(&["launch", "busybox", "o3", "-s", "bt"]);
    assert_eq!(l.sh("o3", "echo on bt").1, "on bt\n");
    l.ok(&["delete", "--force", "o3"]);

    // Another bivy daemon's container, started while the pool is mounted: its monitor drops its
    // copy too (every mount point in a `storage-pools` directory), so the delete goes through.
    let d2 = Daemon::start().expect("second daemon");
    let l2 = Lxc::new(&d2);
    l2.import_busybox();
    l2.ok(&["launch", "busybox", "other"]);
    l.ok(&["storage", "delete", "bt"]);
    assert!(loops_backing(&image).is_empty(), "loop device released");
    l2.ok(&["delete", "--force", "other"]);
    drop(d2);
    l.ok(&["storage", "create", "bt", "btrfs", "size=300MiB"]);

    // Held by a process of another program's (a private mount namespace made while the pool
    // was mounted): the delete fails naming it, and the pool stays as it was, mounted.
    if common::have_cmd("unshare") {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "600"])
            .spawn()
            .expect("unshare");
        let pid = holder.id();
        let ns = format!("/proc/{pid}/ns/mnt");
        let t = Instant::now();
        while std::fs::read_link(&ns).ok() == std::fs::read_link("/proc/self/ns/mnt").ok()
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = l.run(&["storage", "delete", "bt"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(!out.status.success(), "deleted while held");
        assert!(err.contains(&format!("{pid} (sleep)")), "{err}");
        let mnt = d.dir().join("storage-pools/bt");
        assert!(
            common::mounts_below(d.dir()).iter().any(|m| m == &mnt),
            "not mounted again"
        );
        assert!(
            mnt.join("bivy-records/pool.json").exists(),
            "the pool's record file is gone"
        );
        l.ok(&["launch", "busybox", "o4", "-s", "bt"]);
        assert_eq!(l.sh("o4", "echo still").1, "still\n");
        l.ok(&["delete", "--force", "o4"]);
    } else {
        common::skip(
            "a_loop_pool_is_deleted_while_containers_on_other_pools_run (held part)",
            "needs unshare (util-linux)",
        );
    }
    l.ok(&["storage", "delete", "bt"]);
    assert!(loops_backing(&image).is_empty(), "loop device released");
    for c in ["o1", "o2"] {
        l.ok(&["delete", "--force", c]);
    }
}

#[test]
fn snapshot_expiry_and_schedule_survive_a_restart() {
    if !common::lxc_prerequisites() {
        return;
    }
    // One scheduler tick per second, each standing for the next minute.
    let mut d = Daemon::start_with(&[("BIVY_SCHEDULER_TICK_SECS", "1")]).expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["init", "busybox", "s1"]);

    // Expiry: an explicit expires_at two seconds ahead, and snapshots.expiry for the next one.
    let soon = std::time::SystemTime::now() + Duration::from_secs(2);
    let soon = humantime_rfc3339(soon);
    let body = format!(r#"{{"name":"short","expires_at":"{soon}"}}"#);
    let (code, op) = d
        .api("POST", "/1.0/instances/s1/snapshots", Some(&body))
        .expect("api");
    assert_eq!(code, 202, "{op}");
    d.wait_operation(&op);
    l.ok(&["config", "set", "s1", "snapshots.expiry", "1H"]);
    l.ok(&["snapshot", "s1", "hourly"]);
    let v: serde_json::Value =
        serde_json::from_str(&l.ok(&["query", "/1.0/instances/s1/snapshots/hourly"]))
            .expect("json");
    assert_ne!(v["expires_at"], "0001-01-01T00:00:00Z", "{v}");
    l.ok(&["snapshot", "s1", "forever", "--no-expiry"]);
    assert!(wait_for(Duration::from_secs(20), || !snapshot_names(
        &l, "s1"
    )
    .contains(&"short".to_string())));
    assert_eq!(snapshot_names(&l, "s1"), vec!["hourly", "forever"]);

    // Schedule: every minute (a tick here), stopped instances included.
    let bad = l.run(&["config", "set", "s1", "snapshots.schedule", "61 * * * *"]);
    assert!(!bad.status.success(), "a bad cron spec is refused");
    l.ok(&["config", "set", "s1", "snapshots.schedule.stopped", "true"]);
    l.ok(&["config", "set", "s1", "snapshots.pattern", "auto%d"]);
    l.ok(&["config", "set", "s1", "snapshots.schedule", "* * * * *"]);
    assert!(wait_for(Duration::from_secs(20), || snapshot_names(
        &l, "s1"
    )
    .contains(&"auto0".to_string())));
    drop(l);
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    let before = snapshot_names(&l, "s1").len();
    assert!(wait_for(Duration::from_secs(20), || snapshot_names(
        &l, "s1"
    )
    .len()
        > before));
    l.ok(&["config", "unset", "s1", "snapshots.schedule"]);
}

#[test]
fn killed_mid_copy_leaves_nothing_half_made() {
    if !common::lxc_prerequisites() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["init", "busybox", "big"]);
    l.ok(&["start", "big"]);
    // Enough files that a copy on the dir driver takes a while.
    let (code, out) = l.sh(
        "big",
        "mkdir /root/many && cd /root/many && i=0; while [ $i -lt 4000 ]; do echo $i > f$i; i=$((i+1)); done",
    );
    assert_eq!(code, 0, "{out}");
    l.ok(&["stop", "big", "--force"]);
    let pool = d.dir().join("storage-pools/default");
    let before = volumes(&pool);
    let mut copy = l.cmd(&["copy", "big", "half"]);
    let mut child = copy.spawn().expect("lxc copy");
    // Kill the daemon as soon as the copy's volume appears.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && volumes(&pool).len() == before.len() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = volumes(&pool).len() > before.len();
    d.kill9();
    let _ = child.kill();
    let _ = child.wait();
    // Without this the test would pass on a daemon that never copies.
    assert!(
        started,
        "the copy's volume never appeared: {:?}",
        volumes(&pool)
    );
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    let list = l.ok(&["list", "--format", "csv", "-c", "n"]);
    let after = volumes(&pool);
    if list.lines().any(|n| n == "half") {
        // The copy finished before the kill: then it is whole, file for file, and it runs.
        eprintln!("note: the copy finished before the kill");
        assert_eq!(after.len(), before.len() + 1, "{after:?}");
        l.ok(&["start", "half"]);
        let (code, out) = l.sh("half", "ls /root/many | wc -l; cat /root/many/f3999");
        assert_eq!((code, out.as_str()), (0, "4000\n3999\n"));
        l.ok(&["delete", "--force", "half"]);
    } else {
        assert_eq!(after, before, "no half-copied volume after restart");
    }
    assert!(after.iter().all(|v| !v.ends_with(".tmp")), "{after:?}");
}

#[test]
fn pool_api_errors() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    for (body, want) in [
        (r#"{"name":"x/y","driver":"dir"}"#, 400),
        (r#"{"name":"default","driver":"dir"}"#, 409),
        (r#"{"name":"z","driver":"zfs"}"#, 400),
        (r#"{"name":"z","driver":"dir","config":{"bogus":"1"}}"#, 400),
        (
            r#"{"name":"z","driver":"btrfs","config":{"size":"1MiB"}}"#,
            400,
        ),
    ] {
        let (code, resp) = d
            .api("POST", "/1.0/storage-pools", Some(body))
            .expect("api");
        assert_eq!(code, want, "{body}: {resp}");
    }
    // A pool inside another pool (or the daemon's directory) is refused: the other pool's
    // recovery would take its volumes for leftovers.
    let nested = d.dir().join("storage-pools/default/containers/n1");
    let body = format!(
        r#"{{"name":"n1","driver":"dir","config":{{"source":"{}"}}}}"#,
        nested.display()
    );
    let (code, resp) = d
        .api("POST", "/1.0/storage-pools", Some(&body))
        .expect("api");
    assert_eq!(code, 400, "{resp}");
    assert!(!nested.exists());
    // Nothing was left behind by the refused creates.
    assert!(!d.dir().join("storage-pools/z").exists());
    assert!(!d.dir().join("disks/z.img").exists());
    // A dir pool on a custom source; the default profile's root disk still picks `default`.
    let src = d.tmp().join("custom-pool");
    l.ok(&[
        "storage",
        "create",
        "p2",
        "dir",
        &format!("source={}", src.display()),
    ]);
    let (code, resp) = d
        .api(
            "PATCH",
            "/1.0/storage-pools/p2",
            Some(r#"{"config":{"source":"/elsewhere"}}"#),
        )
        .expect("api");
    assert_eq!(code, 400, "{resp}");
    let bad = l.run(&["storage", "set", "p2", "bogus=1"]);
    assert!(!bad.status.success(), "unknown pool keys are refused");
    let yaml = format!("description: two\nconfig:\n  source: {}\n", src.display());
    let out = l.with_stdin(&["storage", "edit", "p2"], yaml.as_bytes());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        l.ok(&["storage", "show", "p2"])
            .lines()
            .find(|l| l.starts_with("description")),
        Some("description: two")
    );
    l.ok(&["storage", "delete", "p2"]);
    // The admin's directory stays, emptied of what the pool made (LXD's delete).
    let left: Vec<_> = std::fs::read_dir(&src)
        .expect("the source directory stays")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A mount point as the source: deleted cleanly, still mounted and empty afterwards.
    let mnt = d.tmp().join("pool-mount");
    tmpfs_at(&mnt, "4m");
    l.ok(&[
        "storage",
        "create",
        "pm",
        "dir",
        &format!("source={}", mnt.display()),
    ]);
    l.ok(&["storage", "delete", "pm"]);
    assert!(!l.ok(&["storage", "list", "-f", "csv"]).contains("pm,"));
    assert_eq!(std::fs::read_dir(&mnt).expect("read").count(), 0);
    nix::mount::umount(&mnt).expect("still mounted, unmounted by the test");
    // The root disk's pool cannot be switched under an instance.
    l.import_busybox();
    l.ok(&["init", "busybox", "r1"]);
    let out = l.run(&[
        "config",
        "device",
        "add",
        "r1",
        "root",
        "disk",
        "path=/",
        "pool=nope",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            r#"Cannot update root disk device pool name to "nope" (the instance is on "default")"#
        ),
        "{err}"
    );
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

/// RFC 3339 UTC with seconds.
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs() as i64;
    bivy::util::time::format(secs, 0)
}

#[test]
fn disk_full_copy_fails_cleanly() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "full"]);
    let (code, out) = l.sh(
        "full",
        "dd if=/dev/urandom of=/root/big bs=1M count=24 2>&1",
    );
    assert_eq!(code, 0, "{out}");
    l.ok(&["stop", "full", "--force"]);
    // A 16 MiB tmpfs (the harness unmounts it with the temp dir) holds a small dir pool.
    let mnt = d.tmp().join("small");
    tmpfs_at(&mnt, "16m");
    let src = mnt.join("pool");
    l.ok(&[
        "storage",
        "create",
        "small",
        "dir",
        &format!("source={}", src.display()),
    ]);
    let out = l.run(&["copy", "full", "full2", "-s", "small"]);
    assert!(!out.status.success(), "a copy that cannot fit must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    assert!(volumes(&src).is_empty(), "{:?}", volumes(&src));
    assert!(!l
        .ok(&["list", "--format", "csv", "-c", "n"])
        .contains("full2"));
    // The source is intact and the daemon keeps serving.
    l.ok(&["start", "full"]);
    assert_eq!(l.sh("full", "wc -c < /root/big").1.trim(), "25165824");
    l.ok(&["delete", "--force", "full"]);
    l.ok(&["storage", "delete", "small"]);
    let _ = nix::mount::umount(&mnt);
}

#[test]
fn snapshot_of_an_instance_being_deleted_is_refused() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["init", "busybox", "gone"]);
    let (code, op) = d.api("DELETE", "/1.0/instances/gone", None).expect("api");
    assert_eq!(code, 202, "{op}");
    let (code, resp) = d
        .api(
            "POST",
            "/1.0/instances/gone/snapshots",
            Some(r#"{"name":"late"}"#),
        )
        .expect("api");
    // Either the delete still holds the instance (409) or it is already gone (404).
    assert!(code == 409 || code == 404, "{code} {resp}");
    d.wait_operation(&op);
    let pool = d.dir().join("storage-pools/default");
    assert!(volumes(&pool).is_empty());
    let left: Vec<_> = std::fs::read_dir(pool.join("containers-snapshots"))
        .expect("dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn pool_storage_without_a_record_is_removed_at_start() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.ok(&["storage", "create", "orphan", "btrfs", "size=300MiB"]);
    l.ok(&["storage", "create", "plain", "dir"]);
    drop(l);
    let image = d.dir().join("disks/orphan.img");
    assert_eq!(loops_backing(&image).len(), 1);
    // As if the daemon died after making the storage but before writing the records.
    d.kill9();
    d.edit_database(|db| {
        let pools = db["pools"].as_object_mut().expect("pools");
        pools.remove("orphan");
        pools.remove("plain");
    });
    // A create notes itself before it makes storage (a pool whose record is lost without that
    // note is kept for `bivy admin recover`: tests/recover.rs).
    let creating = d.dir().join("pools-creating");
    std::fs::create_dir_all(&creating).expect("pools-creating");
    for n in ["orphan", "plain"] {
        std::fs::write(creating.join(n), b"").expect("note");
    }
    d.restart().expect("restart");
    let t = Instant::now();
    while !loops_backing(&image).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(loops_backing(&image).is_empty(), "loop device released");
    assert!(!image.exists(), "orphaned image file removed");
    assert!(!d.dir().join("storage-pools/orphan").exists());
    assert!(!d.dir().join("storage-pools/plain").exists());
    let l = Lxc::new(&d);
    // The names are free again.
    l.ok(&["storage", "create", "orphan", "btrfs", "size=300MiB"]);
    l.ok(&["storage", "delete", "orphan"]);
    assert!(loops_backing(&image).is_empty());
}

/// A daemon with the busybox image imported, the image's fingerprint, the default pool's
/// directory, and where that pool keeps the image's spare volume named `<fp><suffix>`.
fn daemon_with_spare_at(suffix: &str) -> (Daemon, String, PathBuf, PathBuf) {
    let d = Daemon::start().expect("daemon");
    let fp = {
        let l = Lxc::new(&d);
        l.import_busybox();
        l.only_image_fingerprint()
    };
    let pool = d.dir().join("storage-pools/default");
    let spare = pool.join("images").join(format!("{fp}{suffix}"));
    (d, fp, pool, spare)
}

/// The inode of `p` (not followed), if it is there.
fn inode_of(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).map(|m| m.ino()).ok()
}

/// The spare at `spare` (complete: `complete` is in it) stays across the daemon's restart, a
/// half-made one (`<spare>.tmp`) is removed, and the pool's volumes list the image once.
fn spare_stays_across_a_restart(d: &mut Daemon, spare: &Path, complete: &str) {
    d.stop();
    let half = PathBuf::from(format!("{}.tmp", spare.display()));
    std::fs::create_dir(&half).expect("mkdir");
    d.restart().expect("restart");
    assert!(!half.exists(), "{}", d.log_text());
    assert!(spare.join(complete).exists(), "{}", d.log_text());
    let used = Lxc::new(d).ok(&["storage", "show", "default"]);
    assert_eq!(used.matches("/1.0/images/").count(), 1, "{used}");
}

/// A `dir` pool layers each new unprivileged instance over its image's volume; the layered volume
/// (the image's metadata and templates copied, empty upper and work directories, `lower`) is
/// made ahead in the background, so a launch takes it with a rename. The spare is never two
/// instances' volume, stays across a restart, goes with the image (whose volume stays while
/// instances lie over it), and a half-made one is removed at the start.
#[test]
fn dir_pool_launches_take_a_layered_spare() {
    if !common::lxc_prerequisites() {
        return;
    }
    let (mut d, fp, pool, spare) = daemon_with_spare_at(".layered-spare");
    let l = Lxc::new(&d);
    let upper_inode = |vol: &Path| inode_of(&vol.join("upper"));
    l.ok(&["init", "busybox", "l1"]);
    assert!(
        wait_for(Duration::from_secs(20), || spare.join("lower").exists()),
        "no layered spare at {}",
        spare.display()
    );
    let taken = upper_inode(&spare).expect("spare upper");
    l.ok(&["launch", "busybox", "l2"]);
    let vols = volumes(&pool);
    let l2_vol = vols
        .iter()
        .map(|v| pool.join("containers").join(v))
        .find(|p| upper_inode(p) == Some(taken))
        .unwrap_or_else(|| panic!("no volume is the spare: {vols:?}"));
    assert!(
        wait_for(Duration::from_secs(20), || upper_inode(&spare)
            .is_some_and(|i| i != taken)),
        "no new spare"
    );
    // No overlay of the daemon's is left from the start (its templates were written by the
    // container's init, on its own overlay): no thread holds a view.
    let pid = d.pid().expect("daemon pid");
    let views = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "bivy-view")
            })
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(10), || views() == 0),
        "a template view is left"
    );
    // The taken spare is l2's running rootfs, over the image, and its own.
    l.ok(&["exec", "l2", "--", "sh", "-c", "echo x > /etc/only-l2"]);
    assert_eq!(
        l.ok(&["exec", "l2", "--", "cat", "/etc/hostname"]).trim(),
        "l2"
    );
    assert!(l2_vol.join("upper/etc/only-l2").exists());
    assert!(!spare.join("upper/etc/only-l2").exists());
    l.ok(&["start", "l1"]);
    let out = l.ok(&[
        "exec",
        "l1",
        "--",
        "sh",
        "-c",
        "ls /etc/only-l2 2>&1 || true",
    ]);
    assert!(out.contains("No such file"), "{out}");

    drop(l);
    spare_stays_across_a_restart(&mut d, &spare, "lower");
    let l = Lxc::new(&d);

    // The spare goes with the image; the image's volume stays while l1 and l2 lie over it.
    l.ok(&["image", "delete", &fp]);
    assert!(!spare.exists());
    assert!(pool.join("images").join(&fp).exists());
    l.ok(&["delete", "--force", "l1"]);
    l.ok(&["delete", "--force", "l2"]);
    assert!(!pool.join("images").join(&fp).exists());
}

/// A `dir` pool copies an image's volume for each new instance that cannot be layered over it
/// (here `security.nesting`), so it keeps one spare copy made in the background: a launch takes it with a rename (the copy's own files, not a second copy)
/// and a new spare is made. The instance is as independent as a copied one; the spare goes with
/// the image, stays across a restart, and a half-made one is removed at the start.
#[test]
fn dir_pool_launches_take_a_spare_copy_of_the_image() {
    if !common::lxc_prerequisites() {
        return;
    }
    let (mut d, fp, pool, spare) = daemon_with_spare_at(".spare");
    let l = Lxc::new(&d);
    let busybox_inode = |vol: &Path| inode_of(&vol.join("rootfs/bin/busybox"));
    // The first launch copies the image's volume and leaves a spare behind.
    l.ok(&["init", "busybox", "s1", "-c", "security.nesting=true"]);
    assert!(
        wait_for(Duration::from_secs(20), || spare
            .join("metadata.json")
            .exists()),
        "no spare at {}",
        spare.display()
    );
    let taken = busybox_inode(&spare).expect("spare rootfs");
    l.ok(&["init", "busybox", "s2", "-c", "security.nesting=true"]);
    let v: serde_json::Value =
        serde_json::from_str(&l.ok(&["query", "/1.0/instances/s2"])).expect("json");
    assert_eq!(v["config"]["volatile.base_image"], fp.as_str(), "{v}");
    let vols = volumes(&pool);
    let s2_vol = vols
        .iter()
        .map(|v| pool.join("containers").join(v))
        .find(|p| busybox_inode(p) == Some(taken))
        .unwrap_or_else(|| panic!("no volume holds the spare's files: {vols:?}"));
    // A new spare is made, with files of its own.
    assert!(
        wait_for(Duration::from_secs(20), || busybox_inode(&spare)
            .is_some_and(|i| i != taken)),
        "no new spare"
    );
    // Independent: a file written in s2's rootfs is in neither s1, the spare nor the image.
    std::fs::write(s2_vol.join("rootfs/etc/only-s2"), b"x").expect("write");
    l.ok(&["start", "s1"]);
    let out = l.ok(&[
        "exec",
        "s1",
        "--",
        "sh",
        "-c",
        "ls /etc/only-s2 2>&1 || true",
    ]);
    assert!(out.contains("No such file"), "{out}");
    assert!(!spare.join("rootfs/etc/only-s2").exists());
    assert!(!pool
        .join("images")
        .join(&fp)
        .join("rootfs/etc/only-s2")
        .exists());
    l.ok(&["start", "s2"]);
    assert_eq!(
        l.ok(&["exec", "s2", "--", "cat", "/etc/only-s2"]).trim(),
        "x"
    );

    drop(l);
    spare_stays_across_a_restart(&mut d, &spare, "metadata.json");
    let l = Lxc::new(&d);

    // The spare goes with the image.
    l.ok(&["delete", "--force", "s1"]);
    l.ok(&["delete", "--force", "s2"]);
    l.ok(&["image", "delete", &fp]);
    assert!(!spare.exists());
    assert!(!pool.join("images").join(&fp).exists());
}

/// Deleting an image stops the spare copy being made of it (at idle priority, held back here by
/// busy loops) and answers once that copy is gone: nothing of the image is left in the pool.
/// Found by `cargo xtask chaos`: the half-made copy outlived the image's delete.
#[test]
fn deleting_an_image_stops_the_spare_being_made_of_it() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let fp = l.only_image_fingerprint();
    let images = d.dir().join("storage-pools/default/images");
    let busy = common::BusyLoops::start();
    l.ok(&["init", "busybox", "s1", "-c", "security.nesting=true"]);
    // The copy has begun (its directory is made before its thread goes idle).
    let tmp = images.join(format!("{fp}.spare.tmp"));
    assert!(
        wait_for(Duration::from_secs(10), || tmp.exists()),
        "no spare being made"
    );
    l.ok(&["image", "delete", &fp]);
    let left: Vec<String> = std::fs::read_dir(&images)
        .expect("images")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&fp))
        .collect();
    drop(busy);
    assert!(left.is_empty(), "left: {left:?}\n{}", d.log_text());
    // The instance made from it is whole.
    l.ok(&["start", "s1"]);
    assert_eq!(l.ok(&["exec", "s1", "--", "echo", "ok"]).trim(), "ok");
    l.ok(&["delete", "--force", "s1"]);
}

/// Every regular file, directory and symlink below `dir`, as relative paths.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let path = e.path();
            out.push(path.strip_prefix(dir).expect("below").to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Instances made from an image on a `dir` pool are layered over the image's volume: their
/// volume holds what they change (`upper/`), and snapshots, restores and copies copy only that,
/// each as independent as a full copy. Everything else sees the merged tree: the files API on a
/// stopped instance, publish, export and import, a move to another pool. A nesting start makes
/// the volume plain, files kept. The image's volume outlives the image while a volume lies over
/// it, and goes with the last one.
#[test]
fn dir_pool_instances_are_layered_over_their_image() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let fp = l.only_image_fingerprint();
    let pool = d.dir().join("storage-pools/default");
    let image_vol = pool.join("images").join(&fp);

    l.ok(&["launch", "busybox", "c1"]);
    let vol = common::volume_dir(&d, "c1", None);
    let lower = std::fs::read_to_string(vol.join("lower")).expect("a layered volume");
    assert_eq!(Path::new(lower.trim()), image_vol, "{lower}");
    assert!(
        tree(&vol.join("rootfs")).is_empty(),
        "the mount point is empty"
    );
    assert!(
        !vol.join("upper/bin/busybox").exists(),
        "the image's files are not copied"
    );
    // Changes land in the upper layer: a new file, a changed one, a deleted one (a whiteout),
    // a replaced directory (opaque).
    let (rc, out) = l.sh(
        "c1",
        "echo one > /root/data && echo changed > /etc/hostname.new && mv /etc/hostname.new /etc/motd \
         && rm /etc/shadow && rm -r /usr/share/udhcpc && mkdir -p /usr/share/udhcpc && echo x > /usr/share/udhcpc/new",
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        std::fs::read_to_string(vol.join("upper/root/data")).expect("in upper"),
        "one\n"
    );
    assert!(
        image_vol.join("rootfs/etc/shadow").exists(),
        "the image is untouched"
    );
    assert!(!image_vol.join("rootfs/root/data").exists());

    // A snapshot copies the upper layer only; the snapshot is layered over the same image.
    l.ok(&["snapshot", "c1", "s0"]);
    let snap = common::volume_dir(&d, "c1", Some("s0"));
    assert_eq!(
        std::fs::read_to_string(snap.join("lower")).expect("layered"),
        lower
    );
    assert!(!snap.join("upper/bin/busybox").exists());
    assert_eq!(
        l.sh(
            "c1",
            "echo two > /root/data && rm /root/data && echo three > /etc/passwd"
        )
        .0,
        0
    );

    // Restore: the snapshot's files, deletions included, and not what came after.
    l.ok(&["restore", "c1", "s0"]);
    let cat = |c: &str, f: &str| l.sh(c, &format!("cat {f} 2>&1")).1;
    assert_eq!(cat("c1", "/root/data"), "one\n");
    assert!(cat("c1", "/etc/shadow").contains("No such file"));
    assert!(
        cat("c1", "/etc/passwd").starts_with("root:"),
        "{}",
        cat("c1", "/etc/passwd")
    );
    assert!(cat("c1", "/usr/share/udhcpc/default.script").contains("No such file"));
    assert_eq!(cat("c1", "/usr/share/udhcpc/new"), "x\n");

    // A copy is independent of its source, both ways.
    l.ok(&["copy", "c1", "c2"]);
    l.ok(&["start", "c2"]);
    assert!(common::volume_dir(&d, "c2", None).join("lower").exists());
    assert_eq!(l.sh("c2", "echo c2 > /root/data").0, 0);
    assert_eq!(cat("c1", "/root/data"), "one\n");
    assert_eq!(l.sh("c1", "echo c1 > /root/only-c1").0, 0);
    assert!(cat("c2", "/root/only-c1").contains("No such file"));

    // A device node in a layered rootfs opens nothing, whatever the device cgroup allows (1:3,
    // /dev/null, is allowed): the overlay belongs to the container's user namespace, so nodev.
    l.ok(&["stop", "c2", "--force"]);
    let made = Command::new("mknod")
        .arg(common::volume_dir(&d, "c2", None).join("upper/nul"))
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(made.success());
    l.ok(&["start", "c2"]);
    let (rc, out) = l.sh("c2", "exec 3</nul 2>&1; echo opened");
    assert!(rc != 0 && out.contains("Permission denied"), "{rc} {out}");
    assert_eq!(l.sh("c2", "rm /nul").0, 0);

    // The files API on a stopped instance reads the merged tree; a write makes it plain.
    l.ok(&["stop", "c1", "--force"]);
    let pulled = d.tmp().join("pulled");
    l.ok(&[
        "file",
        "pull",
        "c1/bin/busybox",
        pulled.to_str().expect("utf-8"),
    ]);
    assert!(std::fs::metadata(&pulled).expect("pulled").len() > 100_000);
    l.ok(&[
        "file",
        "pull",
        "c1/root/data",
        pulled.to_str().expect("utf-8"),
    ]);
    assert_eq!(std::fs::read_to_string(&pulled).expect("pulled"), "one\n");
    assert!(!l
        .run(&["file", "pull", "c1/etc/shadow", "-"])
        .status
        .success());
    assert!(vol.join("lower").exists(), "reading keeps it layered");
    let pushed = d.tmp().join("pushed");
    std::fs::write(&pushed, "pushed\n").expect("write");
    l.ok(&[
        "file",
        "push",
        pushed.to_str().expect("utf-8"),
        "c1/root/pushed",
    ]);
    let vol = common::volume_dir(&d, "c1", None);
    assert!(!vol.join("lower").exists(), "written: plain");
    assert_eq!(
        std::fs::read_to_string(vol.join("rootfs/root/pushed")).expect("plain"),
        "pushed\n"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("rootfs/root/data")).expect("plain"),
        "one\n"
    );
    assert!(!vol.join("rootfs/etc/shadow").exists());
    assert!(vol.join("rootfs/bin/busybox").exists());
    // Its snapshot is still layered, and still restores.
    assert!(snap.join("lower").exists());
    l.ok(&["restore", "c1", "s0"]);
    l.ok(&["start", "c1"]);
    assert!(cat("c1", "/root/pushed").contains("No such file"));
    assert_eq!(cat("c1", "/root/data"), "one\n");

    // Publish and export see the merged tree.
    l.ok(&["stop", "c2", "--force"]);
    l.ok(&["publish", "c2", "--alias", "fromc2"]);
    l.ok(&["launch", "fromc2", "c3", "-c", "security.privileged=true"]);
    assert_eq!(cat("c3", "/root/data"), "c2\n");
    assert!(cat("c3", "/etc/shadow").contains("No such file"));
    assert!(cat("c3", "/bin/busybox").len() > 1000);
    assert!(
        !common::volume_dir(&d, "c3", None).join("lower").exists(),
        "privileged: plain"
    );
    let backup = d.tmp().join("c2.tar.gz");
    l.ok(&["export", "c2", backup.to_str().expect("utf-8")]);
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(&backup)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.contains("rootfs/bin/busybox"), "{listing}");
    assert!(listing.contains("rootfs/root/data"), "{listing}");
    assert!(!listing.contains("rootfs/etc/shadow"), "{listing}");
    assert!(
        !listing.contains("upper/") && !listing.contains("/lower"),
        "{listing}"
    );
    l.ok(&["import", backup.to_str().expect("utf-8"), "c4"]);
    l.ok(&["start", "c4"]);
    assert_eq!(cat("c4", "/root/data"), "c2\n");

    // A nesting start makes the volume plain, its files kept.
    l.ok(&["copy", "c2", "c5"]);
    assert!(common::volume_dir(&d, "c5", None).join("lower").exists());
    l.ok(&["config", "set", "c5", "security.nesting=true"]);
    l.ok(&["start", "c5"]);
    assert!(!common::volume_dir(&d, "c5", None).join("lower").exists());
    assert_eq!(cat("c5", "/root/data"), "c2\n");
    assert!(cat("c5", "/etc/shadow").contains("No such file"));

    // The image's volume stays while volumes lie over it, and goes with the last.
    l.ok(&["delete", "--force", "c3", "c4", "c5"]);
    l.ok(&["image", "delete", &fp]);
    assert!(
        image_vol.join("rootfs/bin/busybox").exists(),
        "still used by c2 and s0"
    );
    // Kept out of sight, as LXD keeps a ZFS image dataset its clones need.
    let vols = l.ok(&[
        "storage", "volume", "list", "default", "--format", "csv", "-c", "tn",
    ]);
    assert!(!vols.contains(&fp), "{vols}");
    assert!(!l.ok(&["storage", "show", "default"]).contains(&fp));
    l.ok(&["restart", "c1", "--force"]);
    assert_eq!(cat("c1", "/root/data"), "one\n");
    l.ok(&["start", "c2"]);
    assert_eq!(cat("c2", "/root/data"), "c2\n");
    l.ok(&["delete", "--force", "c2"]);
    assert!(image_vol.exists(), "still used by c1 and its snapshot");
    // c1 made plain (a nesting start), then its snapshot deleted: nothing lies over it.
    l.ok(&["stop", "c1", "--force"]);
    l.ok(&["config", "set", "c1", "security.nesting=true"]);
    l.ok(&["start", "c1"]);
    assert!(image_vol.exists(), "still used by c1's snapshot");
    l.ok(&["delete", "c1/s0"]);
    assert!(!image_vol.exists(), "no volume lies over it any more");
    assert_eq!(cat("c1", "/root/data"), "one\n");
    l.ok(&["delete", "--force", "c1"]);
}

/// A tmpfs of `size` mounted at `dir` (made first; the harness unmounts it with its temp dir).
fn tmpfs_at(dir: &std::path::Path, size: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size={size}").as_str()),
    )
    .expect("mount tmpfs");
}

/// On a layered volume the image's templates are written by the container's init, on its own
/// overlay, before anything is mounted in it: a new file and its new parents are the container
/// root's (on-disk ids 0, in the upper layer), an existing file keeps its owner and mode, a
/// `create_only` one is left as it is, and a symlink among a target's parents fails the start
/// with nothing written where it points.
#[test]
fn layered_templates_are_written_by_the_containers_init() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let image_rootfs = d
        .dir()
        .join("storage-pools/default/images")
        .join(l.only_image_fingerprint())
        .join("rootfs");
    l.ok(&["init", "busybox", "t1"]);
    let vol = common::volume_dir(&d, "t1", None);
    assert!(vol.join("lower").exists(), "not layered: {}", vol.display());
    let add_templates = |entries: &str, files: &[(&str, &str)]| {
        for (name, body) in files {
            d.ok(&["config", "template", "create", "t1", name]);
            let out = d.with_stdin(&["config", "template", "edit", "t1", name], body.as_bytes());
            assert!(out.status.success(), "{out:?}");
        }
        let meta = d.ok(&["config", "metadata", "show", "t1"]).replacen(
            "templates:\n",
            &format!("templates:\n{entries}"),
            1,
        );
        let out = d.with_stdin(&["config", "metadata", "edit", "t1"], meta.as_bytes());
        assert!(out.status.success(), "{out:?}");
    };
    add_templates(
        "  /opt/deep/er/file:\n    when:\n    - start\n    template: deep.tpl\n  \
         /etc/inittab:\n    when:\n    - start\n    create_only: true\n    template: keep.tpl\n",
        &[
            ("deep.tpl", "deep {{ instance.name }}\n"),
            ("keep.tpl", "replaced\n"),
        ],
    );
    l.ok(&["start", "t1"]);
    let upper = vol.join("upper");
    let file = upper.join("opt/deep/er/file");
    assert_eq!(
        std::fs::read_to_string(&file).expect("written in the upper layer"),
        "deep t1\n"
    );
    let ids_mode = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
    };
    assert_eq!(ids_mode(&file), (0, 0, 0o644));
    for dir in ["opt", "opt/deep", "opt/deep/er"] {
        assert_eq!(ids_mode(&upper.join(dir)), (0, 0, 0o755), "{dir}");
    }
    assert_eq!(
        l.ok(&[
            "exec",
            "t1",
            "--",
            "stat",
            "-c",
            "%u %g %a",
            "/opt/deep/er/file"
        ])
        .trim(),
        "0 0 644"
    );
    // The image's hostname template truncated the image's file: its owner and mode are kept.
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/hostname")).expect("hostname"),
        "t1\n"
    );
    assert_eq!(
        ids_mode(&upper.join("etc/hostname")),
        ids_mode(&image_rootfs.join("etc/hostname"))
    );
    // create_only: the image's inittab stays the image's (not copied up).
    assert!(!upper.join("etc/inittab").exists());
    assert!(l
        .ok(&["exec", "t1", "--", "cat", "/etc/inittab"])
        .contains("::sysinit:"));
    l.ok(&["stop", "--force", "t1"]);

    // A parent of a target that is a symlink to a host directory anyone may write to.
    let outside = std::env::temp_dir().join(format!("bivy-tpl-outside-{}", std::process::id()));
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    std::os::unix::fs::symlink(&outside, upper.join("srv")).expect("symlink");
    add_templates(
        "  /srv/evil:\n    when:\n    - start\n    template: evil.tpl\n",
        &[("evil.tpl", "evil\n")],
    );
    let out = l.run(&["start", "t1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started through a symlink: {err}");
    assert!(err.contains("unsafe path"), "{err}");
    let written = tree(&outside);
    let _ = std::fs::remove_dir_all(&outside);
    assert_eq!(written, Vec::<PathBuf>::new(), "written outside");
    l.ok(&["delete", "--force", "t1"]);
}
