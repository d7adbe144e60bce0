//! Migration between bivy and a real LXD 5.0.2 on this machine, both ways, driven by the
//! unmodified `lxc` 5.0.2 with both daemons as HTTPS remotes on loopback: `lxc copy lxd:c
//! bivy:c` and `lxc move bivy:c lxd:c` with snapshots, of stopped and (`--stateless`) running
//! containers, in pull (lxc's default), push and relay modes, `--refresh` each way; a copy of a
//! received snapshot, file ownership inside the container kept, a same-size write made after a
//! snapshot in the same second kept on bivy's side, and images copied each way with their
//! fingerprint.
//!
//! LXD runs from its Debian package (`apt-get install lxd`; `.ci/run` installs it) with its own
//! `LXD_DIR` in a temporary directory, initialised by `lxd init --preseed` (a `dir` pool, no
//! network: nothing leaves loopback; never `lxd init --auto`), and is stopped by its PID and
//! its directory removed at the end. A missing `lxd` or `rsync` is a skip (a failure under
//! `BIVY_MUST_WORK=1`).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, Lxc};

const PASSWORD: &str = "interop";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An LXD daemon of our own: its directory, the process we started.
struct Lxd {
    dir: PathBuf,
    child: Child,
    /// The `lxc.pivot` cgroups liblxc leaves behind that were not there before it started.
    pivots: Vec<PathBuf>,
}

/// Where liblxc makes its `lxc.pivot` cgroup (in each hierarchy) when it starts a container.
fn lxc_pivots() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")))
        .map(|p| p.join("lxc.pivot"))
        .collect()
}

impl Lxd {
    fn start(port: u16) -> Lxd {
        // Container roots (uid 100000 and up) must traverse the path down to their rootfs.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("bivy-lxd-interop-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Those there already are someone else's.
        let pivots = lxc_pivots().into_iter().filter(|p| !p.is_dir()).collect();
        let child = Command::new("lxd")
            .args(["--group", "root", "--logfile"])
            .arg(dir.join("lxd.log"))
            .env("LXD_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn lxd");
        let lxd = Lxd { dir, child, pivots };
        let out = common::run_bounded(
            lxd.cmd("lxd").args(["waitready", "--timeout=60"]),
            Duration::from_secs(70),
        )
        .expect("lxd waitready");
        assert!(out.status.success(), "lxd did not start: {}", lxd.log());
        let preseed = format!(
            "config:\n  core.https_address: 127.0.0.1:{port}\n  core.trust_password: {PASSWORD}\n\
             storage_pools:\n- name: default\n  driver: dir\n\
             profiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n"
        );
        let mut init = lxd
            .cmd("lxd")
            .args(["init", "--preseed"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lxd init");
        use std::io::Write;
        init.stdin
            .take()
            .unwrap()
            .write_all(preseed.as_bytes())
            .unwrap();
        let out = init.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "lxd init --preseed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lxd
    }

    /// `lxd …` or `lxc …` against this daemon's own socket.
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("LXD_DIR", &self.dir)
            .env("LXD_SOCKET", self.dir.join("unix.socket"))
            .env("LXD_CONF", self.dir.join("client"))
            .stdin(Stdio::null());
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lxd.log")).unwrap_or_default()
    }
}

impl Drop for Lxd {
    fn drop(&mut self) {
        let bounded = |c: &mut Command| common::run_bounded(c, Duration::from_secs(120));
        if let Ok(out) = bounded(self.cmd("lxc").args(["list", "-c", "n", "--format", "csv"])) {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = bounded(self.cmd("lxc").args(["delete", "--force", name]));
            }
        }
        let _ = bounded(self.cmd("lxd").args(["shutdown", "--timeout=60"]));
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // What LXD mounted under its directory (its shmounts and devlxd tmpfs), deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for p in &self.pivots {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Both daemons and an lxc config with `lxd:` and `bivy:` as HTTPS remotes.
struct Pair {
    bivy: Daemon,
    /// Stopped and removed when the test ends.
    _lxd: Lxd,
    conf: PathBuf,
    /// One LXD at a time: liblxc's cgroups and the machine's two cores are shared.
    _one: std::sync::MutexGuard<'static, ()>,
}

static ONE_LXD: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Pair {
    fn lxc(&self) -> Lxc<'_> {
        Lxc {
            d: &self.bivy,
            conf: self.conf.clone(),
        }
    }

    /// `sh -c SCRIPT` in `remote:ct`, which must succeed; its output.
    fn sh(&self, ct: &str, script: &str) -> String {
        let (code, out) = self.lxc().sh(ct, script);
        assert_eq!(code, 0, "{ct}: {script}: {out}");
        out
    }

    /// The instance names on a remote.
    fn names(&self, remote: &str) -> Vec<String> {
        self.lxc()
            .ok(&["list", remote, "-c", "n", "--format", "csv"])
            .lines()
            .map(String::from)
            .collect()
    }

    fn status(&self, ct: &str) -> String {
        let (remote, name) = ct.split_once(':').unwrap();
        let v: serde_json::Value = serde_json::from_str(
            &self
                .lxc()
                .ok(&["query", &format!("{remote}:/1.0/instances/{name}")]),
        )
        .unwrap();
        v["status"].as_str().unwrap_or_default().to_string()
    }

    /// The busybox test image imported on LXD, as `busybox`.
    fn busybox_on_lxd(&self) {
        let img = common::busybox_image();
        self.lxc().ok(&[
            "image",
            "import",
            img.to_str().unwrap(),
            "lxd:",
            "--alias",
            "busybox",
        ]);
    }

    fn fingerprint(&self, remote: &str, alias: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(
            &self
                .lxc()
                .ok(&["query", &format!("{remote}:/1.0/images/aliases/{alias}")]),
        )
        .unwrap();
        v["target"].as_str().unwrap_or_default().to_string()
    }
}

fn setup() -> Option<Pair> {
    if !common::lxc_prerequisites() {
        return None;
    }
    for (prog, pkg) in [("lxd", "lxd"), ("rsync", "rsync")] {
        if !common::have_cmd(prog) {
            common::skip(
                &common::current_test_name(),
                &format!("needs {prog} (apt-get install {pkg})"),
            );
            return None;
        }
    }
    let one = ONE_LXD.lock().unwrap_or_else(|e| e.into_inner());
    let lxd_port = free_port();
    let lxd = Lxd::start(lxd_port);
    let bivy = Daemon::start().expect("bivy daemon");
    let bivy_port = free_port();
    let l = Lxc::new(&bivy);
    l.ok(&[
        "config",
        "set",
        "core.https_address",
        &format!("127.0.0.1:{bivy_port}"),
    ]);
    l.ok(&["config", "set", "core.trust_password", PASSWORD]);
    let conf = bivy.tmp().join("lxc-interop");
    std::fs::create_dir_all(&conf).unwrap();
    let pair = Pair {
        bivy,
        _lxd: lxd,
        conf,
        _one: one,
    };
    for (name, port) in [("lxd", lxd_port), ("bivy", bivy_port)] {
        pair.lxc().ok(&[
            "remote",
            "add",
            name,
            &format!("127.0.0.1:{port}"),
            "--accept-certificate",
            "--password",
            PASSWORD,
        ]);
    }
    Some(pair)
}

/// What each side must find in the container first made on LXD (see the test).
fn check_common(p: &Pair, ct: &str) {
    assert_eq!(p.sh(ct, "cat /root/mark"), "hello\n");
    assert_eq!(p.sh(ct, "stat -c %u:%g /home/u/f"), "1000:1000\n");
}

#[test]
fn lxc_copies_and_moves_containers_between_lxd_and_bivy() {
    let Some(p) = setup() else { return };
    let lxc = p.lxc();

    // An image made on LXD and copied to bivy keeps its fingerprint.
    p.busybox_on_lxd();
    let fp = p.fingerprint("lxd", "busybox");
    lxc.ok(&[
        "image",
        "copy",
        "lxd:busybox",
        "bivy:",
        "--alias",
        "busybox",
    ]);
    assert_eq!(p.fingerprint("bivy", "busybox"), fp);

    // A container on LXD: a file, a non-root owner, a snapshot, then changes after it. The
    // last change has the same size and mtime as what the snapshot holds.
    lxc.ok(&["launch", "lxd:busybox", "lxd:c1"]);
    p.sh(
        "lxd:c1",
        "echo hello > /root/mark && mkdir -p /home/u && echo u > /home/u/f && \
         chown -R 1000:1000 /home/u && printf aaaa > /same && \
         touch -d '2020-01-01 00:00:00' /same",
    );
    lxc.ok(&["snapshot", "lxd:c1", "s0"]);
    p.sh(
        "lxd:c1",
        "echo after > /root/after && printf bbbb > /same && \
         touch -d '2020-01-01 00:00:00' /same",
    );
    lxc.ok(&["stop", "lxd:c1"]);

    // LXD to bivy, stopped, with its snapshot.
    lxc.ok(&["copy", "lxd:c1", "bivy:c1"]);
    lxc.ok(&["start", "bivy:c1"]);
    check_common(&p, "bivy:c1");
    assert_eq!(p.sh("bivy:c1", "cat /root/after"), "after\n");
    assert_eq!(
        p.sh("bivy:c1", "cat /same"),
        "bbbb",
        "the write after the snapshot was lost"
    );
    lxc.ok(&["copy", "bivy:c1/s0", "bivy:c1s"]);
    lxc.ok(&["start", "bivy:c1s"]);
    check_common(&p, "bivy:c1s");
    assert_eq!(p.sh("bivy:c1s", "cat /same; ls /root"), "aaaamark\n");
    // The source is untouched by a copy.
    assert!(p.names("lxd:").contains(&"c1".to_string()));

    // bivy to LXD, a move of a stopped container with its snapshot.
    p.sh("bivy:c1", "echo written-on-bivy > /root/bivy");
    lxc.ok(&["stop", "bivy:c1"]);
    lxc.ok(&["move", "bivy:c1", "lxd:c2"]);
    assert!(!p.names("bivy:").contains(&"c1".to_string()));
    lxc.ok(&["start", "lxd:c2"]);
    check_common(&p, "lxd:c2");
    assert_eq!(p.sh("lxd:c2", "cat /root/bivy"), "written-on-bivy\n");
    let snaps = lxc.ok(&["query", "lxd:/1.0/instances/c2/snapshots"]);
    assert!(snaps.contains("/1.0/instances/c2/snapshots/s0"), "{snaps}");

    // LXD to bivy, a running container moved --stateless. LXD shifted the running
    // container's files on disk at its start but not its snapshot's: each is unshifted with
    // its own map.
    p.sh("lxd:c2", "echo running > /root/running");
    lxc.ok(&["move", "lxd:c2", "bivy:c3", "--stateless"]);
    assert!(!p.names("lxd:").contains(&"c2".to_string()));
    assert_eq!(p.status("bivy:c3"), "Running");
    check_common(&p, "bivy:c3");
    assert_eq!(p.sh("bivy:c3", "cat /root/running"), "running\n");
    lxc.ok(&["copy", "bivy:c3/s0", "bivy:c3s"]);
    lxc.ok(&["start", "bivy:c3s"]);
    check_common(&p, "bivy:c3s");
    assert_eq!(p.sh("bivy:c3s", "ls /root"), "mark\n");

    // bivy to LXD, a running container moved --stateless.
    p.sh("bivy:c3", "echo back > /root/back");
    lxc.ok(&["move", "bivy:c3", "lxd:c4", "--stateless"]);
    assert!(!p.names("bivy:").contains(&"c3".to_string()));
    assert_eq!(p.status("lxd:c4"), "Running");
    check_common(&p, "lxd:c4");
    assert_eq!(
        p.sh("lxd:c4", "cat /root/back /root/running"),
        "back\nrunning\n"
    );

    // Push (the source dials the target) and relay (lxc joins the two), both ways.
    lxc.ok(&["stop", "lxd:c4", "--force"]);
    lxc.ok(&["copy", "lxd:c4", "bivy:p1", "--mode", "push"]);
    lxc.ok(&["copy", "bivy:p1", "lxd:p2", "--mode", "push"]);
    lxc.ok(&["copy", "lxd:c4", "bivy:p3", "--mode", "relay"]);
    lxc.ok(&["copy", "bivy:p3", "lxd:p4", "--mode", "relay"]);
    for ct in ["bivy:p1", "lxd:p2", "bivy:p3", "lxd:p4"] {
        lxc.ok(&["start", ct]);
        check_common(&p, ct);
        assert_eq!(p.sh(ct, "cat /root/back"), "back\n", "{ct}");
    }

    // --refresh both ways: only what changed moves; the new snapshot comes along.
    lxc.ok(&["start", "lxd:c4"]);
    p.sh(
        "lxd:c4",
        "echo refreshed > /root/refreshed && chown 1000 /root/refreshed",
    );
    lxc.ok(&["snapshot", "lxd:c4", "s1"]);
    lxc.ok(&["stop", "lxd:c4", "--force"]);
    lxc.ok(&["stop", "bivy:p1", "--force"]);
    lxc.ok(&["copy", "lxd:c4", "bivy:p1", "--refresh"]);
    lxc.ok(&["start", "bivy:p1"]);
    assert_eq!(
        p.sh("bivy:p1", "cat /root/refreshed; stat -c %u /root/refreshed"),
        "refreshed\n1000\n"
    );
    check_common(&p, "bivy:p1");
    let snaps = lxc.ok(&["query", "bivy:/1.0/instances/p1/snapshots"]);
    assert!(snaps.contains("/snapshots/s1"), "{snaps}");
    p.sh("bivy:p1", "echo from-bivy > /root/refreshed");
    lxc.ok(&["stop", "bivy:p1", "--force"]);
    lxc.ok(&["stop", "lxd:p2", "--force"]);
    lxc.ok(&["copy", "bivy:p1", "lxd:p2", "--refresh"]);
    lxc.ok(&["start", "lxd:p2"]);
    assert_eq!(p.sh("lxd:p2", "cat /root/refreshed"), "from-bivy\n");
    check_common(&p, "lxd:p2");

    // An image made on bivy and copied to LXD keeps its fingerprint too.
    lxc.ok(&["image", "delete", "lxd:busybox"]);
    lxc.ok(&["image", "copy", "bivy:busybox", "lxd:", "--alias", "back"]);
    assert_eq!(p.fingerprint("lxd", "back"), fp);
    lxc.ok(&["launch", "lxd:back", "lxd:c5"]);
    assert_eq!(p.sh("lxd:c5", "echo ok"), "ok\n");
}

/// Instance backups both ways with the unmodified `lxc`: `lxc export lxd:c` then `lxc import
/// bivy:`, and `lxc export bivy:c` then `lxc import lxd:`, each with a snapshot and files of a
/// non-root owner. LXD's tarball holds the ids LXD shifted on disk with the map that says so;
/// bivy's holds the container's own.
#[test]
fn lxc_export_and_import_move_backups_between_lxd_and_bivy() {
    let Some(p) = setup() else { return };
    let lxc = p.lxc();
    p.busybox_on_lxd();
    lxc.ok(&["launch", "lxd:busybox", "lxd:b1"]);
    p.sh(
        "lxd:b1",
        "echo hello > /root/mark && mkdir -p /home/u && echo u > /home/u/f && \
         chown -R 1000:1000 /home/u",
    );
    lxc.ok(&["snapshot", "lxd:b1", "s0"]);
    p.sh("lxd:b1", "echo after > /root/after");
    let from_lxd = p.bivy.tmp().join("from-lxd.tar.gz");
    lxc.ok(&["export", "lxd:b1", from_lxd.to_str().unwrap()]);

    lxc.ok(&["import", "bivy:", from_lxd.to_str().unwrap()]);
    lxc.ok(&["start", "bivy:b1"]);
    check_common(&p, "bivy:b1");
    assert_eq!(p.sh("bivy:b1", "cat /root/after"), "after\n");
    lxc.ok(&["copy", "bivy:b1/s0", "bivy:b1s"]);
    lxc.ok(&["start", "bivy:b1s"]);
    check_common(&p, "bivy:b1s");
    assert_eq!(p.sh("bivy:b1s", "ls /root"), "mark\n");

    p.sh("bivy:b1", "echo from-bivy > /root/bivy");
    let from_bivy = p.bivy.tmp().join("from-bivy.tar.gz");
    lxc.ok(&["export", "bivy:b1", from_bivy.to_str().unwrap()]);
    lxc.ok(&["import", "lxd:", from_bivy.to_str().unwrap(), "b2"]);
    lxc.ok(&["start", "lxd:b2"]);
    check_common(&p, "lxd:b2");
    assert_eq!(p.sh("lxd:b2", "cat /root/bivy"), "from-bivy\n");
    let snaps = lxc.ok(&["query", "lxd:/1.0/instances/b2/snapshots"]);
    assert!(snaps.contains("/1.0/instances/b2/snapshots/s0"), "{snaps}");
    lxc.ok(&["copy", "lxd:b2/s0", "lxd:b2s"]);
    lxc.ok(&["start", "lxd:b2s"]);
    check_common(&p, "lxd:b2s");
    assert_eq!(p.sh("lxd:b2s", "ls /root"), "mark\n");
}

/// Optimized backups (btrfs send streams) both ways between btrfs pools on LXD and bivy.
#[test]
fn lxc_export_and_import_optimized_backups_between_lxd_and_bivy() {
    let Some(p) = setup() else { return };
    if let Err(why) = common::btrfs_supported() {
        common::skip(
            "lxc_export_and_import_optimized_backups_between_lxd_and_bivy",
            &why,
        );
        return;
    }
    let lxc = p.lxc();
    p.busybox_on_lxd();
    lxc.ok(&["storage", "create", "lxd:bt", "btrfs", "size=1GiB"]);
    lxc.ok(&["storage", "create", "bivy:bt", "btrfs", "size=1GiB"]);
    lxc.ok(&["launch", "lxd:busybox", "lxd:o1", "-s", "bt"]);
    p.sh(
        "lxd:o1",
        "echo hello > /root/mark && mkdir -p /home/u && echo u > /home/u/f && \
         chown -R 1000:1000 /home/u",
    );
    lxc.ok(&["snapshot", "lxd:o1", "s0"]);
    p.sh("lxd:o1", "echo after > /root/after");
    let from_lxd = p.bivy.tmp().join("opt-from-lxd.tar.gz");
    lxc.ok(&[
        "export",
        "lxd:o1",
        from_lxd.to_str().unwrap(),
        "--optimized-storage",
    ]);
    lxc.ok(&["import", "bivy:", from_lxd.to_str().unwrap()]);
    lxc.ok(&["start", "bivy:o1"]);
    check_common(&p, "bivy:o1");
    assert_eq!(p.sh("bivy:o1", "cat /root/after"), "after\n");
    lxc.ok(&["copy", "bivy:o1/s0", "bivy:o1s"]);
    lxc.ok(&["start", "bivy:o1s"]);
    check_common(&p, "bivy:o1s");
    assert_eq!(p.sh("bivy:o1s", "ls /root"), "mark\n");

    p.sh("bivy:o1", "echo from-bivy > /root/bivy");
    let from_bivy = p.bivy.tmp().join("opt-from-bivy.tar.gz");
    lxc.ok(&[
        "export",
        "bivy:o1",
        from_bivy.to_str().unwrap(),
        "--optimized-storage",
    ]);
    lxc.ok(&["import", "lxd:", from_bivy.to_str().unwrap(), "o2"]);
    lxc.ok(&["start", "lxd:o2"]);
    check_common(&p, "lxd:o2");
    assert_eq!(p.sh("lxd:o2", "cat /root/bivy"), "from-bivy\n");
    lxc.ok(&["copy", "lxd:o2/s0", "lxd:o2s"]);
    lxc.ok(&["start", "lxd:o2s"]);
    check_common(&p, "lxd:o2s");

    // A custom volume's optimized backup, both ways (LXD's files shifted for its container).
    lxc.ok(&["storage", "volume", "create", "lxd:bt", "ov"]);
    lxc.ok(&["storage", "volume", "attach", "lxd:bt", "ov", "o1", "/ov"]);
    p.sh(
        "lxd:o1",
        "echo vol-one > /ov/f && chown 1000:1000 /ov/f && sync",
    );
    lxc.ok(&["storage", "volume", "snapshot", "lxd:bt", "ov", "vs0"]);
    p.sh("lxd:o1", "echo vol-two > /ov/f && sync");
    let vol_lxd = p.bivy.tmp().join("vol-from-lxd.tar.gz");
    let vol_bivy = p.bivy.tmp().join("vol-from-bivy.tar.gz");
    let (vl, vb) = (vol_lxd.to_str().unwrap(), vol_bivy.to_str().unwrap());
    lxc.ok(&[
        "storage",
        "volume",
        "export",
        "lxd:bt",
        "ov",
        vl,
        "--optimized-storage",
    ]);
    lxc.ok(&["storage", "volume", "import", "bivy:bt", vl, "ov"]);
    lxc.ok(&["storage", "volume", "copy", "bivy:bt/ov/vs0", "bivy:bt/ovs"]);
    lxc.ok(&["storage", "volume", "attach", "bivy:bt", "ov", "o1", "/ov"]);
    lxc.ok(&[
        "storage", "volume", "attach", "bivy:bt", "ovs", "o1", "/ovs",
    ]);
    assert_eq!(
        p.sh("bivy:o1", "cat /ov/f /ovs/f; stat -c %u:%g /ov/f /ovs/f"),
        "vol-two\nvol-one\n1000:1000\n1000:1000\n"
    );
    p.sh("bivy:o1", "echo vol-three > /ov/f && sync");
    lxc.ok(&[
        "storage",
        "volume",
        "export",
        "bivy:bt",
        "ov",
        vb,
        "--optimized-storage",
    ]);
    lxc.ok(&["storage", "volume", "import", "lxd:bt", vb, "ov2"]);
    lxc.ok(&["storage", "volume", "attach", "lxd:bt", "ov2", "o2", "/ov2"]);
    assert_eq!(
        p.sh("lxd:o2", "cat /ov2/f; stat -c %u:%g /ov2/f"),
        "vol-three\n1000:1000\n"
    );
    let snaps = lxc.ok(&[
        "query",
        "lxd:/1.0/storage-pools/bt/volumes/custom/ov2/snapshots",
    ]);
    assert!(snaps.contains("/snapshots/vs0"), "{snaps}");

    for c in ["bivy:o1", "bivy:o1s"] {
        lxc.ok(&["delete", "-f", c]);
    }
    for v in ["ov", "ovs"] {
        lxc.ok(&["storage", "volume", "delete", "bivy:bt", v]);
    }
    lxc.ok(&["storage", "delete", "bivy:bt"]);
}

/// Custom volumes both ways: `storage volume copy` (pull and push) and LXD's volume backup
/// imported, a volume LXD shifted on disk for its container read with the right owners.
#[test]
fn lxc_copies_custom_volumes_between_lxd_and_bivy() {
    let Some(p) = setup() else { return };
    let lxc = p.lxc();
    p.busybox_on_lxd();
    lxc.ok(&[
        "image",
        "copy",
        "lxd:busybox",
        "bivy:",
        "--alias",
        "busybox",
    ]);
    // A volume on LXD written through an unprivileged container: LXD shifts its files on disk
    // to the container's map (and says so in volatile.idmap.last); a snapshot, then a change.
    lxc.ok(&["storage", "volume", "create", "lxd:default", "v1"]);
    lxc.ok(&["launch", "lxd:busybox", "lxd:c1"]);
    lxc.ok(&[
        "storage",
        "volume",
        "attach",
        "lxd:default",
        "v1",
        "c1",
        "/mnt",
    ]);
    p.sh(
        "lxd:c1",
        "echo one > /mnt/f && mkdir /mnt/u && echo u > /mnt/u/g && chown -R 1000:1000 /mnt/u",
    );
    lxc.ok(&["storage", "volume", "snapshot", "lxd:default", "v1", "s0"]);
    p.sh("lxd:c1", "echo two > /mnt/f && sync");
    // LXD to bivy (pull: bivy dials LXD's operation), then used by a container on bivy.
    // Copy v1 from LXD to bivy (with `extra` arguments), then bivy's list of its snapshots.
    let copy_from_lxd = |extra: &[&str]| {
        let mut args = vec![
            "storage",
            "volume",
            "copy",
            "lxd:default/v1",
            "bivy:default/v1",
        ];
        args.extend_from_slice(extra);
        lxc.ok(&args);
        lxc.ok(&[
            "query",
            "bivy:/1.0/storage-pools/default/volumes/custom/v1/snapshots",
        ])
    };
    let snaps = copy_from_lxd(&[]);
    assert!(snaps.contains("/v1/snapshots/s0"), "{snaps}");
    let cfg = lxc.ok(&["storage", "volume", "show", "bivy:default", "v1"]);
    assert!(
        !cfg.contains("volatile.idmap"),
        "LXD's disk keys kept: {cfg}"
    );
    lxc.ok(&["launch", "bivy:busybox", "bivy:c2"]);
    lxc.ok(&[
        "storage",
        "volume",
        "attach",
        "bivy:default",
        "v1",
        "c2",
        "/mnt",
    ]);
    assert_eq!(p.sh("bivy:c2", "cat /mnt/f"), "two\n");
    assert_eq!(p.sh("bivy:c2", "stat -c %u:%g /mnt/u/g"), "1000:1000\n");
    // LXD's backup of that volume (its files with the ids on LXD's disk, shifted) imported.
    let t = p.bivy.tmp().join("lxd-v1.tar.gz");
    lxc.ok(&[
        "storage",
        "volume",
        "export",
        "lxd:default",
        "v1",
        t.to_str().unwrap(),
    ]);
    lxc.ok(&[
        "storage",
        "volume",
        "import",
        "bivy:default",
        t.to_str().unwrap(),
        "vb",
    ]);
    lxc.ok(&[
        "storage",
        "volume",
        "attach",
        "bivy:default",
        "vb",
        "c2",
        "/b",
    ]);
    assert_eq!(p.sh("bivy:c2", "cat /b/f"), "two\n");
    assert_eq!(p.sh("bivy:c2", "stat -c %u:%g /b/u/g"), "1000:1000\n");
    // The snapshot's own data, through a copy of it on bivy.
    lxc.ok(&[
        "storage",
        "volume",
        "copy",
        "bivy:default/v1/s0",
        "bivy:default/v1s",
    ]);
    lxc.ok(&[
        "storage",
        "volume",
        "attach",
        "bivy:default",
        "v1s",
        "c2",
        "/snap",
    ]);
    assert_eq!(p.sh("bivy:c2", "cat /snap/f"), "one\n");
    // bivy to LXD, pull (LXD dials bivy's operation) and push, then used by LXD's container.
    p.sh("bivy:c2", "echo three > /mnt/f && sync");
    for (mode, name, at) in [("pull", "v2", "/m2"), ("push", "v3", "/m3")] {
        lxc.ok(&[
            "storage",
            "volume",
            "copy",
            "bivy:default/v1",
            &format!("lxd:default/{name}"),
            "--mode",
            mode,
        ]);
        lxc.ok(&["storage", "volume", "attach", "lxd:default", name, "c1", at]);
        assert_eq!(p.sh("lxd:c1", &format!("cat {at}/f")), "three\n", "{mode}");
        assert_eq!(
            p.sh("lxd:c1", &format!("stat -c %u:%g {at}/u/g")),
            "1000:1000\n",
            "{mode}"
        );
        let snaps = lxc.ok(&[
            "query",
            &format!("lxd:/1.0/storage-pools/default/volumes/custom/{name}/snapshots"),
        ]);
        assert!(snaps.contains("/snapshots/s0"), "{mode}: {snaps}");
    }
    lxc.ok(&["delete", "--force", "bivy:c2"]);
    // A refresh from LXD (its snapshots carry no dates: compared by name).
    p.sh("lxd:c1", "echo four > /mnt/f && sync");
    lxc.ok(&["storage", "volume", "snapshot", "lxd:default", "v1", "s1"]);
    let snaps = copy_from_lxd(&["--refresh"]);
    assert!(
        snaps.contains("/v1/snapshots/s0") && snaps.contains("/v1/snapshots/s1"),
        "{snaps}"
    );
    lxc.ok(&["launch", "bivy:busybox", "bivy:c3"]);
    lxc.ok(&[
        "storage",
        "volume",
        "attach",
        "bivy:default",
        "v1",
        "c3",
        "/mnt",
    ]);
    assert_eq!(
        p.sh("bivy:c3", "cat /mnt/f; stat -c %u:%g /mnt/u/g"),
        "four\n1000:1000\n"
    );
    lxc.ok(&["delete", "--force", "bivy:c3"]);
    lxc.ok(&["delete", "--force", "lxd:c1"]);
}
