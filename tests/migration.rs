//! Migration between two bivy daemons on loopback, driven by the unmodified `lxc` 5.0.2 with
//! both daemons as HTTPS remotes (`a` the source, `b` the target; pull mode, as lxc does by
//! default; push and relay): copy with snapshots, `--instance-only`, a copy of a snapshot, move
//! of a stopped instance, and the faults (a name clash on the target, a running source without
//! `--stateless`, a wrong or reused websocket secret, the source daemon killed mid-transfer). Real containers,
//! as root; needs `lxc` and `rsync` (a skip, a failure under `BIVY_MUST_WORK=1`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{failed, Daemon, Lxc};

const PASSWORD: &str = "migrate-me";

/// Two daemons, each listening on loopback, and an lxc config with both as remotes.
struct Pair {
    a: Daemon,
    b: Daemon,
    conf: PathBuf,
    port_a: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn setup() -> Option<Pair> {
    setup_with(&[])
}

/// Two daemons started with `env`.
fn setup_with(env: &[(&str, &str)]) -> Option<Pair> {
    if !common::lxc_prerequisites() {
        return None;
    }
    if !common::have_cmd("rsync") {
        common::skip(
            &common::current_test_name(),
            "needs rsync (apt-get install rsync)",
        );
        return None;
    }
    let a = Daemon::start_with(env).expect("daemon a");
    let b = Daemon::start_with(env).expect("daemon b");
    let conf = a.tmp().join("lxc-remotes");
    std::fs::create_dir_all(&conf).unwrap();
    let mut port_a = 0;
    for (d, name) in [(&a, "a"), (&b, "b")] {
        let port = free_port();
        if name == "a" {
            port_a = port;
        }
        let l = Lxc::new(d);
        l.ok(&[
            "config",
            "set",
            "core.https_address",
            &format!("127.0.0.1:{port}"),
        ]);
        l.ok(&["config", "set", "core.trust_password", PASSWORD]);
        let r = Lxc {
            d,
            conf: conf.clone(),
        };
        r.ok(&[
            "remote",
            "add",
            name,
            &format!("127.0.0.1:{port}"),
            "--accept-certificate",
            "--password",
            PASSWORD,
        ]);
    }
    Lxc::new(&a).import_busybox();
    Some(Pair { a, b, conf, port_a })
}

impl Pair {
    /// lxc with both remotes.
    fn lxc(&self) -> Lxc<'_> {
        Lxc {
            d: &self.a,
            conf: self.conf.clone(),
        }
    }
    fn la(&self) -> Lxc<'_> {
        Lxc::new(&self.a)
    }
    fn lb(&self) -> Lxc<'_> {
        Lxc::new(&self.b)
    }
}

/// `mib` MiB of pseudo-random bytes (incompressible, so rsync's compression cannot shrink the
/// transfer) at `path`.
fn write_random(path: &Path, mib: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
}

/// The daemon's database document.
fn db(d: &Daemon) -> serde_json::Value {
    d.database()
}

fn pool_dir(d: &Daemon) -> PathBuf {
    d.dir().join("storage-pools/default")
}

/// An instance's rootfs on disk, or one of its snapshots'.
fn rootfs(d: &Daemon, name: &str, snap: Option<&str>) -> PathBuf {
    common::volume_dir(d, name, snap).join("rootfs")
}

fn read(p: &Path) -> String {
    let p = common::on_disk(p);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn snapshot_names(d: &Daemon, name: &str) -> Vec<String> {
    names_in(&db(d)["instances"][name])
}

/// The snapshot names in an instance's or a volume's record.
fn names_in(rec: &serde_json::Value) -> Vec<String> {
    rec["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the volumes in a pool directory (`containers`, `containers-snapshots`).
fn volumes(d: &Daemon, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pool_dir(d).join(sub))
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// c1 on a: busybox with /data and /same written before and after snap0 (the second /same is
/// the same size, written in the same second: rsync's quick check would miss it), stopped.
fn make_source(p: &Pair) {
    let la = p.la();
    la.ok(&["launch", "busybox", "c1"]);
    let (rc, out) = la.sh("c1", "echo one > /data && echo same1 > /same && sync");
    assert_eq!(rc, 0, "{out}");
    la.ok(&["snapshot", "c1", "snap0"]);
    let (rc, out) = la.sh("c1", "echo two > /data && echo same2 > /same && sync");
    assert_eq!(rc, 0, "{out}");
    la.ok(&["stop", "c1", "--force"]);
}

#[test]
fn copy_with_snapshots_instance_only_and_from_a_snapshot() {
    // Between two bivy daemons: bivy's byte streams, no rsync.
    let Some(p) = setup() else { return };
    copy_cases(&p);
    let log = p.b.log_text();
    assert!(log.contains("by bivy's byte-stream transfer"), "{log}");
    assert!(!log.contains("by rsync"), "{log}");
    // The source said how much it sends: the target's progress is a percentage.
    let progress = transfer_progress(&p.b);
    assert!(
        progress.iter().any(|s| s.starts_with("100% (")),
        "{progress:?}"
    );
}

/// The `fs_progress` of the target's finished create operations (kept readable for a minute).
fn transfer_progress(d: &Daemon) -> Vec<String> {
    let (_, v) = d
        .api("GET", "/1.0/operations?recursion=1", None)
        .expect("operations");
    v["metadata"]["success"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["metadata"]["fs_progress"].as_str().map(String::from))
        .collect()
}

#[test]
fn copy_between_btrfs_pools_by_btrfs_send() {
    if !common::btrfs_prerequisites() || !common::have_cmd("btrfs") {
        return;
    }
    let Some(p) = setup() else { return };
    let (la, lb, l) = (p.la(), p.lb(), p.lxc());
    for x in [&la, &lb] {
        x.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    }
    la.ok(&["launch", "busybox", "k1", "-s", "bt"]);
    let (rc, out) = la.sh("k1", "echo one > /data && chown 1000:1000 /data && sync");
    assert_eq!(rc, 0, "{out}");
    la.ok(&["snapshot", "k1", "s0"]);
    let (rc, out) = la.sh("k1", "echo two > /data && echo new > /added && sync");
    assert_eq!(rc, 0, "{out}");
    la.ok(&["snapshot", "k1", "s1"]);
    let (rc, out) = la.sh("k1", "echo three > /data && rm /added && sync");
    assert_eq!(rc, 0, "{out}");
    // Running, so the instance goes from a read-only snapshot of it, taken at once.
    l.ok(&["copy", "a:k1", "b:k2", "-s", "bt", "--stateless"]);
    let log = p.b.log_text();
    assert!(
        log.contains("receiving an instance by btrfs send/receive"),
        "{log}"
    );
    assert_eq!(snapshot_names(&p.b, "k2"), ["s0", "s1"]);
    assert_eq!(read(&rootfs(&p.b, "k2", Some("s0")).join("data")), "one\n");
    assert_eq!(read(&rootfs(&p.b, "k2", Some("s1")).join("added")), "new\n");
    assert_eq!(read(&rootfs(&p.b, "k2", None).join("data")), "three\n");
    assert!(!rootfs(&p.b, "k2", None).join("added").exists());
    // Snapshots read-only again, the instance writable.
    let ro = |path: PathBuf| {
        let out = std::process::Command::new("btrfs")
            .args(["property", "get", "-ts"])
            .arg(path.parent().unwrap())
            .arg("ro")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ro(rootfs(&p.b, "k2", Some("s0"))), "ro=true");
    assert_eq!(ro(rootfs(&p.b, "k2", None)), "ro=false");
    // Nothing of the transfer is left: no receive directory, no view snapshot on the source.
    let left = |d: &Daemon, sub: &str| -> Vec<String> {
        std::fs::read_dir(d.dir().join("storage-pools/bt").join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains('.') || n.starts_with("migration-"))
            .collect()
    };
    assert!(left(&p.b, "containers").is_empty());
    for e in std::fs::read_dir(p.a.dir().join("storage-pools/bt/containers-snapshots"))
        .unwrap()
        .flatten()
    {
        assert!(left(
            &p.a,
            &format!("containers-snapshots/{}", e.file_name().to_string_lossy())
        )
        .is_empty());
    }
    // The percentage reached its end.
    assert!(
        transfer_progress(&p.b)
            .iter()
            .any(|s| s.starts_with("100% (")),
        "{:?}",
        transfer_progress(&p.b)
    );
    lb.ok(&["start", "k2"]);
    let (rc, out) = lb.sh("k2", "cat /data; stat -c %u /data");
    assert_eq!((rc, out.as_str()), (0, "three\n1000\n"));
    lb.ok(&["restore", "k2", "s0"]);
    let (rc, out) = lb.sh("k2", "cat /data");
    assert_eq!((rc, out.as_str()), (0, "one\n"));
    // To a dir pool: byte streams.
    l.ok(&["copy", "a:k1", "b:k3", "-s", "default", "--stateless"]);
    assert!(p.b.log_text().contains("by bivy's byte-stream transfer"));
    assert_eq!(read(&rootfs(&p.b, "k3", Some("s1")).join("data")), "two\n");
    for (x, names) in [(&la, &["k1"][..]), (&lb, &["k2", "k3"][..])] {
        for n in names {
            x.ok(&["delete", n, "--force"]);
        }
    }
    for x in [&la, &lb] {
        x.ok(&["storage", "delete", "bt"]);
    }
}

#[test]
fn copy_with_snapshots_instance_only_and_from_a_snapshot_by_rsync() {
    // The same with LXD's transfer, which bivy daemons speak to each other when told to.
    let Some(p) = setup_with(&[("BIVY_MIGRATION_TRANSFER", "rsync")]) else {
        return;
    };
    // The target has the base image: the transfer starts from its files.
    p.lb().import_busybox();
    copy_cases(&p);
    let log = p.b.log_text();
    assert!(log.contains("by rsync (LXD's transfer)"), "{log}");
    assert!(!log.contains("byte-stream"), "{log}");
    assert!(
        log.contains("receiving onto a clone of base image"),
        "{log}"
    );
    // What the source removed from the image's files is not there either.
    let la = p.la();
    la.ok(&["launch", "busybox", "g1"]);
    let (rc, out) = la.sh("g1", "rm /etc/passwd && sync");
    assert_eq!(rc, 0, "{out}");
    la.ok(&["stop", "g1", "--force"]);
    p.lxc().ok(&["copy", "a:g1", "b:g2"]);
    assert!(!rootfs(&p.b, "g2", None).join("etc/passwd").exists());
    assert!(rootfs(&p.b, "g2", None).join("etc/group").exists());
}

fn copy_cases(p: &Pair) {
    make_source(p);
    let l = p.lxc();
    l.ok(&["copy", "a:c1", "b:c2"]);
    assert_eq!(snapshot_names(&p.b, "c2"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.b, "c2", None).join("data")), "two\n");
    assert_eq!(read(&rootfs(&p.b, "c2", None).join("same")), "same2\n");
    assert_eq!(
        read(&rootfs(&p.b, "c2", Some("snap0")).join("data")),
        "one\n"
    );
    assert_eq!(
        read(&rootfs(&p.b, "c2", Some("snap0")).join("same")),
        "same1\n"
    );
    // Volatile keys are the target's own; the snapshot's record came along.
    let (va, vb) = (db(&p.a), db(&p.b));
    let (ca, cb) = (
        &va["instances"]["c1"]["config"],
        &vb["instances"]["c2"]["config"],
    );
    assert_ne!(ca["volatile.uuid"], cb["volatile.uuid"]);
    assert_eq!(ca["volatile.base_image"], cb["volatile.base_image"]);
    assert_eq!(
        va["instances"]["c1"]["snapshots"][0]["created_at"],
        vb["instances"]["c2"]["snapshots"][0]["created_at"]
    );
    // It starts there, with its data.
    let lb = p.lb();
    lb.ok(&["start", "c2"]);
    let (rc, out) = lb.sh("c2", "cat /data /same");
    assert_eq!((rc, out.as_str()), (0, "two\nsame2\n"));
    lb.ok(&["stop", "c2", "--force"]);

    l.ok(&["copy", "a:c1", "b:c3", "--instance-only"]);
    assert!(snapshot_names(&p.b, "c3").is_empty());
    assert_eq!(read(&rootfs(&p.b, "c3", None).join("data")), "two\n");

    l.ok(&["copy", "a:c1/snap0", "b:c4"]);
    assert!(snapshot_names(&p.b, "c4").is_empty());
    assert_eq!(read(&rootfs(&p.b, "c4", None).join("data")), "one\n");
    lb.ok(&["start", "c4"]);
    let (rc, out) = lb.sh("c4", "cat /data");
    assert_eq!((rc, out.as_str()), (0, "one\n"));
    lb.ok(&["stop", "c4", "--force"]);

    // A running source, --stateless: sent while it runs, then again frozen; it keeps running.
    p.la().ok(&["start", "c1"]);
    l.ok(&["copy", "a:c1", "b:c5", "--stateless"]);
    assert_eq!(snapshot_names(&p.b, "c5"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.b, "c5", None).join("data")), "two\n");
    // The source thaws once its rsync has exited, which may be just after the target is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = p.la().ok(&["list", "c1", "-c", "s", "--format", "csv"]);
        if state.contains("RUNNING") {
            break;
        }
        assert!(Instant::now() < deadline, "c1 is {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.la().ok(&["stop", "c1", "--force"]);

    // The source is as it was.
    assert_eq!(snapshot_names(&p.a, "c1"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.a, "c1", None).join("data")), "two\n");
    assert!(p
        .la()
        .ok(&["list", "c1", "-c", "s", "--format", "csv"])
        .contains("STOPPED"));
}

#[test]
fn push_and_relay_modes() {
    let Some(p) = setup() else { return };
    make_source(&p);
    let l = p.lxc();
    // Push: the target serves the websockets and the source dials them.
    l.ok(&["copy", "a:c1", "b:c2", "--mode", "push"]);
    assert_eq!(snapshot_names(&p.b, "c2"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.b, "c2", None).join("data")), "two\n");
    assert_eq!(
        read(&rootfs(&p.b, "c2", Some("snap0")).join("data")),
        "one\n"
    );
    // Relay: both serve them and lxc joins the two.
    l.ok(&["copy", "a:c1", "b:c3", "--mode", "relay"]);
    assert_eq!(snapshot_names(&p.b, "c3"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.b, "c3", None).join("same")), "same2\n");
    assert_eq!(
        read(&rootfs(&p.b, "c3", Some("snap0")).join("same")),
        "same1\n"
    );
    let lb = p.lb();
    lb.ok(&["start", "c3"]);
    let (rc, out) = lb.sh("c3", "cat /data");
    assert_eq!((rc, out.as_str()), (0, "two\n"));
    lb.ok(&["stop", "c3", "--force"]);
    // A move in push mode, back the other way.
    l.ok(&["move", "b:c2", "a:c4", "--mode", "push"]);
    assert!(!db(&p.b)["instances"]
        .as_object()
        .unwrap()
        .contains_key("c2"));
    assert_eq!(snapshot_names(&p.a, "c4"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.a, "c4", None).join("data")), "two\n");
    // A name taken on the target: refused before anything moves, in either mode.
    for mode in ["push", "relay"] {
        let err = failed(&l.run(&["copy", "a:c1", "b:c3", "--mode", mode]));
        assert!(err.contains("already exists"), "{mode}: {err}");
    }
    assert_eq!(read(&rootfs(&p.b, "c3", None).join("data")), "two\n");
}

#[test]
fn move_of_a_stopped_instance_and_refusals() {
    let Some(p) = setup() else { return };
    make_source(&p);
    let l = p.lxc();
    // Running, without --stateless: LXD's refusal, nothing changes on either side.
    p.la().ok(&["start", "c1"]);
    let err = failed(&l.run(&["move", "a:c1", "b:c1"]));
    assert!(
        err.contains("live migration") && err.contains("--stateless"),
        "{err}"
    );
    assert!(db(&p.b)["instances"].as_object().unwrap().is_empty());
    p.la().ok(&["stop", "c1", "--force"]);

    // A name clash on the target: refused before any data moves, nothing changes.
    p.lb().ok(&["init", "--empty", "c1"]);
    let before_b = db(&p.b);
    let vols_b = volumes(&p.b, "containers");
    let err = failed(&l.run(&["copy", "a:c1", "b:c1"]));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(db(&p.b), before_b);
    assert_eq!(volumes(&p.b, "containers"), vols_b);
    assert_eq!(snapshot_names(&p.a, "c1"), ["snap0"]);
    p.lb().ok(&["delete", "c1"]);

    // The move: the target has it all, the source is gone.
    l.ok(&["move", "a:c1", "b:c1"]);
    assert!(db(&p.a)["instances"].get("c1").is_none());
    assert_eq!(snapshot_names(&p.b, "c1"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.b, "c1", None).join("data")), "two\n");
    assert_eq!(
        read(&rootfs(&p.b, "c1", Some("snap0")).join("data")),
        "one\n"
    );
    let lb = p.lb();
    lb.ok(&["start", "c1"]);
    let (rc, out) = lb.sh("c1", "cat /data");
    assert_eq!((rc, out.as_str()), (0, "two\n"));
    lb.ok(&["stop", "c1", "--force"]);
    // A pushed migration whose source never connects: the target's operation (websocket
    // class, the secrets in its metadata) gives up after 10 s and leaves nothing.
    let before = volumes(&p.a, "containers");
    let push = r#"{"name": "c9", "source": {"type": "migration", "mode": "push"}}"#;
    let (st, v) = p.a.api("POST", "/1.0/instances", Some(push)).unwrap();
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["metadata"]["class"], "websocket", "{v}");
    assert!(v["metadata"]["metadata"]["control"].is_string(), "{v}");
    let id = v["metadata"]["id"].as_str().unwrap();
    let wait = format!("/1.0/operations/{id}/wait?timeout=30");
    let (_, w) = p.a.api("GET", &wait, None).unwrap();
    assert_eq!(w["metadata"]["status"], "Failure", "{w}");
    assert!(
        w["metadata"]["err"].as_str().unwrap().contains("Timed out"),
        "{w}"
    );
    assert!(db(&p.a)["instances"].get("c9").is_none());
    assert_eq!(volumes(&p.a, "containers"), before);
    // A source told to push to a target that is not there: its task fails, nothing changes.
    let cert = std::fs::read_to_string(p.a.dir().join("server.crt")).unwrap();
    let target = serde_json::json!({"migration": true, "target": {"certificate": cert,
        "operation": "https://127.0.0.1:1/1.0/operations/nope",
        "secrets": {"control": "a", "fs": "b"}}});
    let (st, v) =
        p.b.api("POST", "/1.0/instances/c1", Some(&target.to_string()))
            .unwrap();
    assert_eq!(st, 202, "{v}");
    let id = v["metadata"]["id"].as_str().unwrap();
    let wait = format!("/1.0/operations/{id}/wait?timeout=30");
    let (_, w) = p.b.api("GET", &wait, None).unwrap();
    assert_eq!(w["metadata"]["status"], "Failure", "{w}");
    assert!(
        w["metadata"]["err"]
            .as_str()
            .unwrap()
            .contains("Failed connecting"),
        "{w}"
    );
    lb.ok(&["start", "c1"]);
    assert_eq!(lb.sh("c1", "cat /data").1, "two\n");
    lb.ok(&["stop", "c1", "--force"]);
    // A bad target is refused before anything starts.
    let target = r#"{"migration": true, "target": {"certificate": "x", "operation": "https://x/1.0/operations/y", "secrets": {"control": "a", "fs": "b"}}}"#;
    let (st, v) = p.b.api("POST", "/1.0/instances/c1", Some(target)).unwrap();
    assert_eq!(st, 400, "{v}");
}

/// A snapshot's volume directory name on `d`.
fn snapshot_volume(d: &Daemon, name: &str, snap: &str) -> String {
    snapshot_volume_in(&db(d)["instances"][name], snap)
}

/// The volume directory name of snapshot `snap` in an instance's or a volume's record.
fn snapshot_volume_in(rec: &serde_json::Value, snap: &str) -> String {
    rec["snapshots"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == snap))
        .and_then(|s| s["volume"].as_str())
        .unwrap_or_else(|| panic!("no snapshot {snap}: {rec}"))
        .to_string()
}

#[test]
fn refresh_sends_only_what_changed() {
    let Some(p) = setup() else { return };
    make_source(&p);
    let l = p.lxc();
    l.ok(&["copy", "a:c1", "b:c1"]);
    let snap0 = snapshot_volume(&p.b, "c1", "snap0");
    // Changes on both sides: on the source a new snapshot between changes, a file added, one
    // removed, an owner changed; on the target a snapshot and a file of its own.
    let la = p.la();
    la.ok(&["start", "c1"]);
    let (rc, out) = la.sh(
        "c1",
        "echo three > /data && echo added > /added && rm /same && \
         mkdir -p /home/u && echo u > /home/u/f && chown -R 1000:1000 /home/u && sync",
    );
    assert_eq!(rc, 0, "{out}");
    la.ok(&["snapshot", "c1", "snap1"]);
    let (rc, out) = la.sh("c1", "echo four > /data && sync");
    assert_eq!(rc, 0, "{out}");
    la.ok(&["stop", "c1", "--force"]);
    let lb = p.lb();
    lb.ok(&["snapshot", "c1", "extra"]);
    std::fs::write(rootfs(&p.b, "c1", None).join("local"), "mine\n").unwrap();
    // A running target is refused, and nothing moves.
    lb.ok(&["start", "c1"]);
    let err = failed(&l.run(&["copy", "a:c1", "b:c1", "--refresh"]));
    assert!(err.contains("Cannot refresh a running instance"), "{err}");
    lb.ok(&["stop", "c1", "--force"]);
    assert_eq!(snapshot_names(&p.b, "c1"), ["snap0", "extra"]);

    l.ok(&["copy", "a:c1", "b:c1", "--refresh"]);
    // The snapshots are the source's: snap0 kept as it was (not sent again), snap1 received,
    // the target's own one deleted.
    assert_eq!(snapshot_names(&p.b, "c1"), ["snap0", "snap1"]);
    assert_eq!(snapshot_volume(&p.b, "c1", "snap0"), snap0);
    let main = rootfs(&p.b, "c1", None);
    assert_eq!(read(&main.join("data")), "four\n");
    assert_eq!(read(&main.join("added")), "added\n");
    assert!(!main.join("same").exists(), "a file the source removed");
    assert!(!main.join("local").exists(), "a file only the target had");
    let s1 = rootfs(&p.b, "c1", Some("snap1"));
    assert_eq!(read(&s1.join("data")), "three\n");
    assert_eq!(
        read(&rootfs(&p.b, "c1", Some("snap0")).join("data")),
        "one\n"
    );
    // It starts, with the source's owners inside.
    lb.ok(&["start", "c1"]);
    let (rc, out) = lb.sh("c1", "cat /data; stat -c %u:%g /home/u/f");
    assert_eq!((rc, out.as_str()), (0, "four\n1000:1000\n"));
    lb.ok(&["stop", "c1", "--force"]);
    // Nothing changed: a second refresh keeps every snapshot volume.
    let snap1 = snapshot_volume(&p.b, "c1", "snap1");
    l.ok(&["copy", "a:c1", "b:c1", "--refresh"]);
    assert_eq!(snapshot_volume(&p.b, "c1", "snap0"), snap0);
    assert_eq!(snapshot_volume(&p.b, "c1", "snap1"), snap1);
    // A same-size write since the last refresh: a refresh with no new snapshot is one session,
    // which compares sizes and times (to the nanosecond), and the write's time is later.
    la.ok(&["start", "c1"]);
    let (rc, out) = la.sh("c1", "echo FOUR > /data && sync");
    assert_eq!(rc, 0, "{out}");
    la.ok(&["stop", "c1", "--force"]);
    l.ok(&["copy", "a:c1", "b:c1", "--refresh"]);
    assert_eq!(read(&main.join("data")), "FOUR\n");

    // The source prunes snap0. With --refresh-exclude-older (bivy's CLI) the target keeps its
    // history; a plain --refresh deletes it.
    la.ok(&["delete", "c1/snap0"]);
    let bivy = |args: &[&str]| {
        let out =
            p.a.cli()
                .env("BIVY_CONF", &p.conf)
                .args(args)
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "bivy {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bivy(&["copy", "a:c1", "b:c1", "--refresh-exclude-older"]);
    assert_eq!(snapshot_names(&p.b, "c1"), ["snap0", "snap1"]);
    bivy(&["copy", "a:c1", "b:c1", "--refresh", "--mode", "push"]);
    assert_eq!(snapshot_names(&p.b, "c1"), ["snap1"]);
    // A refresh onto a missing instance is a plain copy.
    bivy(&["copy", "a:c1", "b:c7", "--refresh"]);
    assert_eq!(snapshot_names(&p.b, "c7"), ["snap1"]);
    assert_eq!(read(&rootfs(&p.b, "c7", None).join("data")), "FOUR\n");
    // And with lxc, whose PUT of the source's config after the copy carries the source's
    // volatile keys (the source has run: its `volatile.idmap.current` is set): the new instance
    // keeps its own.
    let src_uuid = la.ok(&["config", "get", "c1", "volatile.uuid"]);
    assert!(!la
        .ok(&["config", "get", "c1", "volatile.idmap.current"])
        .trim()
        .is_empty());
    l.ok(&["copy", "a:c1", "b:c8", "--refresh"]);
    assert_eq!(snapshot_names(&p.b, "c8"), ["snap1"]);
    let uuid = lb.ok(&["config", "get", "c8", "volatile.uuid"]);
    assert!(
        !uuid.trim().is_empty() && uuid != src_uuid,
        "{uuid} {src_uuid}"
    );
}

/// `GET /1.0/operations/ID/websocket?secret=S` over HTTPS without a client certificate: the
/// HTTP status of the upgrade.
fn ws_status(port: u16, path: &str) -> u16 {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = bivy::tls::Client::pinned(None, None).unwrap();
    let mut s = client.connect("127.0.0.1", tcp).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn websocket_secrets_are_single_use_and_checked() {
    let Some(p) = setup() else { return };
    p.la().ok(&["init", "busybox", "c1"]);
    let (st, resp) =
        p.a.api("POST", "/1.0/instances/c1", Some(r#"{"migration": true}"#))
            .unwrap();
    assert_eq!(st, 202, "{resp}");
    let op = resp["operation"].as_str().unwrap().to_string();
    let secrets = &resp["metadata"]["metadata"];
    let fs = secrets["fs"].as_str().unwrap();
    assert_eq!(secrets["control"].as_str().unwrap().len(), 64);
    let ws = |secret: &str| ws_status(p.port_a, &format!("{op}/websocket?secret={secret}"));
    assert_eq!(ws("0000"), 403);
    assert_eq!(ws(""), 403);
    assert_eq!(
        ws_status(p.port_a, "/1.0/operations/nope/websocket?secret=x"),
        403
    );
    assert_eq!(ws(fs), 101);
    assert_eq!(ws(fs), 403, "a used secret");
    // The other routes stay closed to the untrusted caller.
    assert_eq!(ws_status(p.port_a, &op), 403);
    // The target never connects the control socket: the operation fails on its own.
    let done = p.a.wait_operation(&resp).unwrap();
    assert_eq!(done["metadata"]["status"], "Failure", "{done}");
    assert!(
        done["metadata"]["err"]
            .as_str()
            .unwrap()
            .contains("Timed out"),
        "{done}"
    );
    // The instance is free again.
    p.la().ok(&["delete", "c1"]);
}

#[test]
fn source_killed_mid_transfer_leaves_nothing_on_the_target() {
    let Some(mut p) = setup() else { return };
    p.la().ok(&["init", "busybox", "c1"]);
    // Enough incompressible data that the transfer takes a while.
    let big = common::for_write(&rootfs(&p.a, "c1", None).join("big"));
    write_random(&big, 256);
    let before_c = volumes(&p.b, "containers");
    let before_s = volumes(&p.b, "containers-snapshots");
    let mut copy = p.lxc().cmd(&["copy", "a:c1", "b:c5"]);
    let child = copy
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-transfer: the target's new volume has some of the data.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mid = volumes(&p.b, "containers")
            .into_iter()
            .filter(|v| v.ends_with(".tmp"))
            .any(|v| {
                std::fs::read_dir(pool_dir(&p.b).join("containers").join(v).join("rootfs"))
                    .is_ok_and(|mut r| r.next().is_some())
            });
        if mid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transfer never started:\n{}",
            p.b.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p.a.kill9();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The target's operation has ended; nothing of c5 is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while volumes(&p.b, "containers") != before_c && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(db(&p.b)["instances"].get("c5").is_none());
    assert_eq!(volumes(&p.b, "containers"), before_c);
    assert_eq!(volumes(&p.b, "containers-snapshots"), before_s);
    assert!(p.b.dir().join("unix.socket").exists());
    // The target is still healthy, and the source comes back as it was.
    p.lb().ok(&["list"]);
    p.a.restart().unwrap();
    assert!(db(&p.a)["instances"].get("c1").is_some());
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 256 << 20);
}

/// bivy's own CLI drives the same migration (`copy`/`move` between remotes, pull mode), with
/// lxc's configuration directory as its own.
#[test]
fn bivy_copy_and_move_between_remotes() {
    let Some(p) = setup() else { return };
    make_source(&p);
    let bivy = |args: &[&str]| {
        let out =
            p.a.cli()
                .env("BIVY_CONF", &p.conf)
                .args(args)
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "bivy {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bivy(&["copy", "a:c1", "b:c9"]);
    assert_eq!(snapshot_names(&p.b, "c9"), ["snap0"]);
    assert_eq!(read(&rootfs(&p.b, "c9", None).join("data")), "two\n");
    assert_eq!(read(&rootfs(&p.b, "c9", None).join("same")), "same2\n");
    assert_eq!(
        read(&rootfs(&p.b, "c9", Some("snap0")).join("data")),
        "one\n"
    );
    // The same through push and relay.
    for (mode, name) in [("push", "c9p"), ("relay", "c9r")] {
        bivy(&["copy", "a:c1", &format!("b:{name}"), "--mode", mode]);
        assert_eq!(snapshot_names(&p.b, name), ["snap0"], "{mode}");
        assert_eq!(read(&rootfs(&p.b, name, None).join("same")), "same2\n");
        assert_eq!(
            read(&rootfs(&p.b, name, Some("snap0")).join("same")),
            "same1\n"
        );
    }
    bivy(&["copy", "a:c1/snap0", "b:c10"]);
    assert!(snapshot_names(&p.b, "c10").is_empty());
    assert_eq!(read(&rootfs(&p.b, "c10", None).join("data")), "one\n");
    // A copy reshaped as lxc's flags say: no profiles, a device changed, the root disk on
    // another pool (made, since c1's comes from its profile), a config key; a NIC's MAC is
    // made anew.
    let lb = p.lb();
    lb.ok(&["storage", "create", "p2", "dir"]);
    p.la().ok(&[
        "config",
        "device",
        "add",
        "c1",
        "eth0",
        "nic",
        "nictype=p2p",
        "mtu=1400",
    ]);
    let mac = p.la().ok(&["config", "get", "c1", "volatile.eth0.hwaddr"]);
    assert!(mac.trim().len() == 17, "{mac}");
    bivy(&[
        "copy",
        "a:c1",
        "b:c13",
        "--no-profiles",
        "-s",
        "p2",
        "-d",
        "eth0,mtu=1300",
        "-c",
        "user.k=v",
    ]);
    let c13 = &db(&p.b)["instances"]["c13"];
    assert_eq!(c13["profiles"], serde_json::json!([]), "{c13}");
    assert_eq!(c13["devices"]["root"]["pool"], "p2", "{c13}");
    assert_eq!(c13["devices"]["eth0"]["mtu"], "1300", "{c13}");
    assert_eq!(c13["config"]["user.k"], "v", "{c13}");
    assert_ne!(c13["config"]["volatile.eth0.hwaddr"], mac.trim(), "{c13}");
    assert_eq!(read(&rootfs(&p.b, "c13", None).join("data")), "two\n");
    lb.ok(&["delete", "c13"]);
    // A move keeps the MAC (its volatile keys, as lxc's), and takes the same flags.
    bivy(&[
        "move",
        "a:c1",
        "b:c11",
        "--instance-only",
        "-c",
        "user.moved=yes",
    ]);
    assert!(db(&p.a)["instances"].get("c1").is_none(), "c1 left on a");
    let c11 = &db(&p.b)["instances"]["c11"];
    assert_eq!(c11["config"]["volatile.eth0.hwaddr"], mac.trim(), "{c11}");
    assert_eq!(c11["config"]["user.moved"], "yes", "{c11}");
    assert!(snapshot_names(&p.b, "c11").is_empty());
    assert_eq!(read(&rootfs(&p.b, "c11", None).join("data")), "two\n");
    lb.ok(&["start", "c11"]);
    assert_eq!(lb.sh("c11", "cat /data").1, "two\n");
    // A name taken on the target: refused, the source untouched.
    p.la().ok(&["launch", "busybox", "c12"]);
    p.la().ok(&["stop", "c12", "--force"]);
    let out =
        p.a.cli()
            .env("BIVY_CONF", &p.conf)
            .args(["move", "a:c12", "b:c9"])
            .output()
            .unwrap();
    assert!(!out.status.success());
    assert!(
        db(&p.a)["instances"].get("c12").is_some(),
        "c12 must stay on a"
    );
}

/// An instance whose disk device names a custom volume the target lacks is refused there (it
/// could never start), and a move keeps its source; a device naming a missing volume is
/// refused on a stopped instance too.
#[test]
fn a_copy_needing_a_volume_the_target_lacks_is_refused() {
    let Some(p) = setup() else { return };
    let la = p.la();
    la.ok(&["storage", "volume", "create", "default", "qv1"]);
    la.ok(&["init", "busybox", "qvc"]);
    la.ok(&[
        "storage", "volume", "attach", "default", "qv1", "qvc", "/mnt/v",
    ]);
    let l = p.lxc();
    let err = failed(&l.run(&["move", "a:qvc", "b:qvc"]));
    assert!(
        err.contains("custom volume") && err.contains("qv1"),
        "{err}"
    );
    assert!(
        db(&p.a)["instances"].get("qvc").is_some(),
        "the source went"
    );
    assert!(
        db(&p.b)["instances"].get("qvc").is_none(),
        "a copy was made"
    );
    // Once the target has a volume of that name, the move goes.
    p.lb()
        .ok(&["storage", "volume", "create", "default", "qv1"]);
    l.ok(&["move", "a:qvc", "b:qvc"]);
    assert!(db(&p.a)["instances"].get("qvc").is_none());
    la.ok(&["init", "busybox", "qvc2"]);
    let err = failed(&la.run(&[
        "config",
        "device",
        "add",
        "qvc2",
        "v",
        "disk",
        "pool=default",
        "source=nosuch",
        "path=/m",
    ]));
    assert!(err.contains("nosuch"), "{err}");
}

/// `lxc image copy a:ALIAS b:` of a public image: lxc names it by its alias in the source's
/// fingerprint field; the target resolves it as LXD's does (an alias first, then a fingerprint
/// prefix), records the alias as the update source, and a refresh finds it.
#[test]
fn public_image_copied_by_alias_then_refreshed() {
    let Some(p) = setup() else { return };
    let (_, v) =
        p.a.api("GET", "/1.0/images/aliases/busybox", None)
            .expect("alias");
    let fp = v["metadata"]["target"]
        .as_str()
        .expect("target")
        .to_string();
    let (code, v) =
        p.a.api(
            "PATCH",
            &format!("/1.0/images/{fp}"),
            Some(r#"{"public":true}"#),
        )
        .expect("PATCH");
    assert_eq!(code, 200, "{v}");
    let l = p.lxc();
    l.ok(&[
        "image",
        "copy",
        "a:busybox",
        "b:",
        "--alias",
        "pubcopy",
        "--auto-update",
    ]);
    let (_, v) =
        p.b.api("GET", &format!("/1.0/images/{fp}"), None)
            .expect("image");
    assert_eq!(v["metadata"]["update_source"]["alias"], "busybox", "{v}");
    assert_eq!(v["metadata"]["auto_update"], true, "{v}");
    assert!(p
        .lb()
        .ok(&["image", "list", "-c", "l", "-f", "csv"])
        .contains("pubcopy"));
    l.ok(&["image", "refresh", "b:pubcopy"]);
    // By a fingerprint prefix, as before.
    p.lb().ok(&["image", "delete", "pubcopy"]);
    l.ok(&[
        "image",
        "copy",
        &format!("a:{}", &fp[..12]),
        "b:",
        "--alias",
        "byfp",
    ]);
    assert!(p
        .lb()
        .ok(&["image", "list", "-c", "l", "-f", "csv"])
        .contains("byfp"));
}

/// A tmpfs of `size` mounted at `dir`, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn target_disk_full_mid_transfer_leaves_nothing() {
    let Some(p) = setup() else { return };
    // The target's pool on an 8 MiB tmpfs; the source holds 24 MiB that do not compress.
    let tiny = Tmpfs::mount(p.b.tmp().join("tiny"), "8m");
    let lb = p.lb();
    let source = tiny.0.join("pool");
    lb.ok(&[
        "storage",
        "create",
        "tiny",
        "dir",
        &format!("source={}", source.display()),
    ]);
    p.la().ok(&["init", "busybox", "c1"]);
    let big = common::for_write(&rootfs(&p.a, "c1", None).join("big"));
    write_random(&big, 24);
    let l = p.lxc();
    let err = failed(&l.run(&["copy", "a:c1", "b:c2", "--storage", "tiny"]));
    assert!(err.contains("No space left on device"), "{err}");
    // Nothing of c2 on the target, the pool's space back; the source as it was.
    assert!(db(&p.b)["instances"].get("c2").is_none());
    let left: Vec<_> = std::fs::read_dir(source.join("containers"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left on the target: {left:?}");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 24 << 20);
    // Once it fits, the same copy works.
    std::fs::remove_file(&big).unwrap();
    l.ok(&["copy", "a:c1", "b:c2", "--storage", "tiny"]);
    lb.ok(&["start", "c2"]);
    lb.ok(&["delete", "--force", "c2"]);
    lb.ok(&["storage", "delete", "tiny"]);
    drop(tiny);
}

#[test]
fn the_receiving_rsync_can_write_only_into_the_volume() {
    // The jail the target's rsync runs in (whatever a hostile peer's stream says, it cannot
    // create anything outside the volume it receives into), checked with a shell in its place.
    if !common::require_root() {
        return;
    }
    let tmp = common::TempDir::new().expect("tmp");
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol).expect("mkdir");
    let outside = tmp.path().join("outside");
    let script = format!(
        "echo in > {v}/inside && ln -s {o} {v}/link && echo out > {v}/link/x; echo out > {o}.file",
        v = vol.display(),
        o = outside.display()
    );
    std::fs::create_dir(&outside).expect("mkdir");
    let out = std::process::Command::new(common::bivy_bin())
        .args(["__write-only-below"])
        .arg(&vol)
        .args(["/bin/sh", "-c", &script])
        .output()
        .expect("run");
    let text = failed(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    assert_eq!(read(&vol.join("inside")), "in\n");
    assert!(vol.join("link").symlink_metadata().is_ok(), "{text}");
    assert!(
        !outside.join("x").exists(),
        "written through a symlink: {text}"
    );
    assert!(
        !tmp.path().join("outside.file").exists(),
        "written outside: {text}"
    );
    // Nothing of it stays mounted on the host.
    assert!(common::mounts_below(tmp.path()).is_empty());
}

#[test]
fn copy_refresh_between_two_instances_of_one_server() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "c1"]);
    let (rc, out) = l.sh("c1", "echo one > /data && sync");
    assert_eq!(rc, 0, "{out}");
    l.ok(&["snapshot", "c1", "s0"]);
    l.ok(&["stop", "c1", "--force"]);
    // A missing target: a plain copy.
    l.ok(&["copy", "c1", "c2", "--refresh"]);
    let uuid2 = db(&d)["instances"]["c2"]["config"]["volatile.uuid"].clone();
    l.ok(&["snapshot", "c2", "only-here"]);
    // The source moves on: new files, a new snapshot, a config key.
    l.ok(&["start", "c1"]);
    let (rc, out) = l.sh("c1", "echo two > /data && echo new > /new && sync");
    assert_eq!(rc, 0, "{out}");
    l.ok(&["snapshot", "c1", "s1"]);
    let (rc, out) = l.sh("c1", "echo three > /data && sync");
    assert_eq!(rc, 0, "{out}");
    l.ok(&["config", "set", "c1", "user.refreshed", "yes"]);
    l.ok(&["stop", "c1", "--force"]);
    // A running target is refused, and nothing changes.
    l.ok(&["start", "c2"]);
    let out = l.run(&["copy", "c1", "c2", "--refresh"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Cannot refresh a running instance"),
        "{}",
        failed(&out)
    );
    l.ok(&["stop", "c2", "--force"]);
    assert_eq!(read(&rootfs(&d, "c2", None).join("data")), "one\n");

    l.ok(&["copy", "c1", "c2", "--refresh"]);
    // LXD's snapshot comparison: the target-only one is gone, the missing one came.
    assert_eq!(snapshot_names(&d, "c2"), ["s0", "s1"]);
    assert_eq!(read(&rootfs(&d, "c2", None).join("data")), "three\n");
    assert_eq!(read(&rootfs(&d, "c2", Some("s1")).join("data")), "two\n");
    assert_eq!(read(&rootfs(&d, "c2", Some("s0")).join("data")), "one\n");
    let v = db(&d);
    let cfg = &v["instances"]["c2"]["config"];
    assert_eq!(
        cfg["user.refreshed"], "yes",
        "lxc's PUT of the source's config"
    );
    assert_eq!(
        cfg["volatile.uuid"], uuid2,
        "the target keeps its own volatile keys"
    );
    // Nothing of the swap is left in the pool.
    let left: Vec<String> = volumes(&d, "containers")
        .into_iter()
        .filter(|n| n.contains('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    l.ok(&["start", "c2"]);
    let (rc, out) = l.sh("c2", "cat /data /new");
    assert_eq!((rc, out.as_str()), (0, "three\nnew\n"));
    l.ok(&["stop", "c2", "--force"]);

    // bivy's CLI does the same; a snapshot source is refused.
    l.ok(&["start", "c1"]);
    let (rc, out) = l.sh("c1", "echo four > /data && sync");
    assert_eq!(rc, 0, "{out}");
    l.ok(&["stop", "c1", "--force"]);
    d.ok(&["copy", "c1", "c2", "--refresh"]);
    assert_eq!(read(&rootfs(&d, "c2", None).join("data")), "four\n");
    let out = d.run(&["copy", "c1/s0", "c2", "--refresh"]);
    assert!(!out.status.success());
}

/// A custom volume's directory on disk (or one of its snapshots').
fn custom_volume(d: &Daemon, name: &str, snap: Option<&str>) -> PathBuf {
    let v = db(d);
    let rec = &v["volumes"]["default"][name];
    let vol = rec["volume"]
        .as_str()
        .unwrap_or_else(|| panic!("no volume {name}: {v}"));
    match snap {
        None => pool_dir(d).join("custom").join(vol),
        Some(s) => pool_dir(d)
            .join("custom-snapshots")
            .join(vol)
            .join(snapshot_volume_in(rec, s)),
    }
}

fn volume_snapshot_names(d: &Daemon, name: &str) -> Vec<String> {
    names_in(&db(d)["volumes"]["default"][name])
}

/// v1 on a: files with an owner, a symlink and a subdirectory, snapshot `snap0`, then the data
/// changed.
fn make_source_volume(p: &Pair) {
    let la = p.la();
    la.ok(&["storage", "volume", "create", "default", "v1", "user.k=v"]);
    let dir = custom_volume(&p.a, "v1", None);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/data"), "one\n").unwrap();
    std::os::unix::fs::chown(dir.join("sub/data"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
    la.ok(&["storage", "volume", "snapshot", "default", "v1", "snap0"]);
    std::fs::write(dir.join("sub/data"), "two\n").unwrap();
}

/// What a received volume must hold: the data, its owner, the symlink as a symlink, and the
/// snapshot's own data.
fn assert_volume_copy(d: &Daemon, name: &str, with_snapshot: bool) {
    use std::os::unix::fs::MetadataExt;
    let dir = custom_volume(d, name, None);
    assert_eq!(read(&dir.join("sub/data")), "two\n", "{name}");
    let md = std::fs::symlink_metadata(dir.join("sub/data")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1001), "{name}: owner kept");
    assert_eq!(
        std::fs::read_link(dir.join("link")).unwrap(),
        Path::new("/etc/passwd"),
        "{name}: the symlink copied, not followed"
    );
    assert_eq!(
        db(d)["volumes"]["default"][name]["config"]["user.k"],
        "v",
        "{name}: config"
    );
    if with_snapshot {
        assert_eq!(volume_snapshot_names(d, name), ["snap0"], "{name}");
        let snap = custom_volume(d, name, Some("snap0"));
        assert_eq!(
            read(&snap.join("sub/data")),
            "one\n",
            "{name}: snapshot data"
        );
    } else {
        assert!(volume_snapshot_names(d, name).is_empty(), "{name}");
    }
}

/// v1 copied from a to b with lxc as each `(name, extra arguments, with its snapshot)`, each
/// checked.
fn copy_volume_as(p: &Pair, copies: &[(&str, &[&str], bool)]) {
    for (name, extra, with_snapshot) in copies {
        let dst = format!("b:default/{name}");
        let mut args = vec!["storage", "volume", "copy", "a:default/v1", dst.as_str()];
        args.extend_from_slice(extra);
        p.lxc().ok(&args);
        assert_volume_copy(&p.b, name, *with_snapshot);
    }
}

#[test]
fn custom_volume_copy_and_move_between_servers() {
    let Some(p) = setup() else { return };
    make_source_volume(&p);
    let l = p.lxc();
    // lxc's default, pull (the target dials the source's operation), push and relay.
    copy_volume_as(
        &p,
        &[
            ("v2", &[], true),
            ("v3", &["--volume-only"], false),
            ("v4", &["--mode", "push"], true),
            ("v5", &["--mode", "relay"], true),
        ],
    );
    // A name taken on the target: refused, nothing changed there.
    let err = failed(&l.run(&["storage", "volume", "copy", "a:default/v1", "b:default/v2"]));
    assert!(err.contains("already exists"), "{err}");
    assert_volume_copy(&p.b, "v2", true);
    // The received volume is usable: attached to a container there, its files as they were.
    Lxc::new(&p.b).import_busybox();
    let lb = p.lb();
    lb.ok(&["launch", "busybox", "c1"]);
    lb.ok(&["storage", "volume", "attach", "default", "v2", "c1", "/mnt"]);
    let (rc, out) = lb.sh("c1", "cat /mnt/sub/data && stat -c %u:%g /mnt/sub/data");
    assert_eq!((rc, out.as_str()), (0, "two\n1000:1001\n"));
    lb.ok(&["delete", "c1", "--force"]);
    // bivy's own CLI, and a move: the source goes once the target has it.
    let out =
        p.a.cli()
            .env("BIVY_CONF", &p.conf)
            .args(["storage", "volume", "move", "a:default/v1", "b:default/v6"])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_volume_copy(&p.b, "v6", true);
    assert!(
        db(&p.a)["volumes"]["default"].get("v1").is_none(),
        "v1 left on a"
    );
    assert!(
        std::fs::read_dir(pool_dir(&p.a).join("custom"))
            .unwrap()
            .next()
            .is_none(),
        "v1's data left on a"
    );
}

#[test]
fn custom_volume_copy_by_rsync() {
    // LXD's transfer, which a bivy daemon uses with LXD (and here with bivy, by request).
    let Some(p) = setup_with(&[("BIVY_MIGRATION_TRANSFER", "rsync")]) else {
        return;
    };
    make_source_volume(&p);
    copy_volume_as(&p, &[("v2", &[], true), ("v3", &["--mode", "push"], true)]);
}

#[test]
fn custom_volume_refresh_between_servers() {
    let Some(p) = setup() else { return };
    make_source_volume(&p);
    let l = p.lxc();
    l.ok(&["storage", "volume", "copy", "a:default/v1", "b:default/v2"]);
    // The source moves on; the copy gets changes of its own.
    let la = p.la();
    std::fs::write(custom_volume(&p.a, "v1", None).join("sub/data"), "three\n").unwrap();
    la.ok(&["storage", "volume", "snapshot", "default", "v1", "s1"]);
    la.ok(&["storage", "volume", "delete", "default", "v1/snap0"]);
    std::fs::write(custom_volume(&p.b, "v2", None).join("extra"), "mine\n").unwrap();
    p.lb()
        .ok(&["storage", "volume", "snapshot", "default", "v2", "mine"]);
    let refresh = |extra: &[&str]| {
        let mut args = vec!["storage", "volume", "copy", "a:default/v1", "b:default/v2"];
        args.push("--refresh");
        args.extend_from_slice(extra);
        l.ok(&args);
    };
    // --volume-only: the data only, the copy's snapshots kept.
    refresh(&["--volume-only"]);
    assert_eq!(volume_snapshot_names(&p.b, "v2"), ["snap0", "mine"]);
    let dir = custom_volume(&p.b, "v2", None);
    assert_eq!(read(&dir.join("sub/data")), "three\n");
    assert!(!dir.join("extra").exists(), "the copy's own file stayed");
    std::fs::write(dir.join("extra"), "mine\n").unwrap();
    refresh(&[]);
    assert_eq!(volume_snapshot_names(&p.b, "v2"), ["s1"]);
    let dir = custom_volume(&p.b, "v2", None);
    assert_eq!(read(&dir.join("sub/data")), "three\n");
    assert!(!dir.join("extra").exists());
    assert_eq!(
        read(&custom_volume(&p.b, "v2", Some("s1")).join("sub/data")),
        "three\n"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(dir.join("sub/data")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
    }
    // A target not there yet: a plain copy. Nothing is left beside the volumes.
    l.ok(&[
        "storage",
        "volume",
        "copy",
        "a:default/v1",
        "b:default/v3",
        "--refresh",
    ]);
    assert_eq!(volume_snapshot_names(&p.b, "v3"), ["s1"]);
    let left: Vec<String> = std::fs::read_dir(pool_dir(&p.b).join("custom"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
