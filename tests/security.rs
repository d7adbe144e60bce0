//! Regression tests for the hostile review (issue 9): no host user but root reaches anything
//! under the daemon's tree, whatever a container or an image put there; operations killed with
//! the daemon leave nothing temporary behind; floods are refused clearly; capabilities; errors
//! reach the user instead of a false success or a reset connection.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Daemon, Lxc};

/// Every path below `root` (not `root` itself), symlinks not followed.
fn walk(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, out);
        }
    }
}

/// What uid 65534 (no groups) can do to `paths`, one line per thing it could do: list a
/// directory, open a file for reading or writing, execute it, or write into it.
const PROBE: &str = r#"
import os, stat, sys
bad = []
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p:
        continue
    try:
        st = os.lstat(p)
    except OSError:
        continue
    if stat.S_ISLNK(st.st_mode):
        continue
    if stat.S_ISDIR(st.st_mode):
        try:
            os.listdir(p)
            bad.append(("list", p))
        except OSError:
            pass
    else:
        for flag, what in ((os.O_RDONLY, "read"), (os.O_WRONLY, "write")):
            try:
                os.close(os.open(p, flag | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY))
                bad.append((what, p))
            except OSError:
                pass
        if os.access(p, os.X_OK):
            bad.append(("execute", p))
    if os.access(p, os.W_OK):
        bad.append(("write into", p))
for what, p in bad:
    print(what, p.decode(errors="replace"))
print("checked", os.getuid())
"#;

/// Run [`PROBE`] as nobody over every path below each of `roots`; returns what it could do.
fn reachable_by_nobody(roots: &[&Path]) -> Vec<String> {
    let mut paths = Vec::new();
    for r in roots {
        walk(r, &mut paths);
    }
    assert!(paths.len() > 50, "walked too little: {paths:?}");
    let mut input = Vec::new();
    for p in &paths {
        input.extend_from_slice(p.as_os_str().as_encoded_bytes());
        input.push(0);
    }
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", PROBE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write paths");
    let out = child.wait_with_output().expect("probe");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.ends_with("checked 65534\n"),
        "probe failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon's certificate is public (every HTTPS client is shown it), 0644 as LXD's.
    let public: Vec<String> = roots
        .iter()
        .map(|r| format!("read {}", r.join("server.crt").display()))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with("checked ") && !public.iter().any(|p| p == l))
        .map(str::to_owned)
        .collect()
}

/// Run `file` as nobody: it must not even start. (Through `sh`: setpriv itself keeps its
/// capabilities until its own exec, so it would reach anything.)
fn nobody_cannot_run(file: &Path) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/bin/sh", "-c", r#"exec "$0" id -u"#])
        .arg(file)
        .output()
        .expect("setpriv");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "nobody ran {}: {:?}",
        file.display(),
        out
    );
}

/// The setuid-root files this test plants: (instance, path inside it).
fn plant_setuid(l: &Lxc<'_>, ct: &str) {
    let (rc, out) = l.sh(
        ct,
        "cp /bin/busybox /bin/hsuid && chmod 4755 /bin/hsuid && ls -l /bin/hsuid",
    );
    assert_eq!(rc, 0, "{out}");
    assert!(out.starts_with("-rwsr-xr-x"), "{out}");
}

/// Every file named `hsuid` below `root`, with its on-disk owner and mode.
fn planted(root: &Path) -> Vec<(PathBuf, u32, u32)> {
    let mut all = Vec::new();
    walk(root, &mut all);
    all.into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "hsuid"))
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).ok()?;
            Some((p, m.uid(), m.mode() & 0o7777))
        })
        .collect()
}

#[test]
fn no_host_user_reaches_the_daemons_tree() {
    if !common::lxc_prerequisites() {
        return;
    }
    if !common::have_cmd("setpriv") || !Path::new("/usr/bin/python3").exists() {
        common::skip(
            "no_host_user_reaches_the_daemons_tree",
            "needs setpriv (util-linux) and /usr/bin/python3",
        );
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();

    // An instance with a setuid-root file, a snapshot of it, an image published from that
    // snapshot and an instance of that image (its base volume holds the file too).
    l.ok(&["launch", "busybox", "c1"]);
    plant_setuid(&l, "c1");
    l.ok(&["snapshot", "c1", "s0"]);
    l.ok(&["publish", "c1/s0", "--alias", "suid"]);
    l.ok(&["launch", "suid", "c2"]);
    // A pool at a user-given source outside the daemon's directory.
    let user_pool = d.tmp().join("user-pool");
    l.ok(&[
        "storage",
        "create",
        "upool",
        "dir",
        &format!("source={}", user_pool.display()),
    ]);
    l.ok(&["launch", "suid", "c3", "-s", "upool"]);
    l.ok(&["snapshot", "c3", "s0"]);
    // A btrfs pool on a loop file: its mount root is a separate filesystem.
    let btrfs = common::btrfs_supported();
    match &btrfs {
        Ok(()) => {
            l.ok(&["storage", "create", "bt", "btrfs", "size=300MiB"]);
            l.ok(&["launch", "suid", "c4", "-s", "bt"]);
            l.ok(&["snapshot", "c4", "s0"]);
        }
        Err(why) => common::skip("no_host_user_reaches_the_daemons_tree (btrfs part)", why),
    }

    // The files really are setuid root on disk: in c1, its snapshot and the image volume (c2
    // lies over it, a layered volume with no copy of its own); on btrfs in the image volume, c4
    // and its snapshot.
    let found = planted(d.dir());
    let suid_root = found
        .iter()
        .filter(|(_, uid, mode)| *uid == 0 && mode & 0o4000 != 0)
        .count();
    let want = if btrfs.is_ok() { 6 } else { 3 };
    assert!(suid_root >= want, "{found:?}");
    assert!(!planted(&user_pool).is_empty());

    let mut reached = reachable_by_nobody(&[d.dir(), &user_pool]);
    assert!(reached.is_empty(), "nobody can reach: {reached:#?}");
    for (p, _, _) in found.iter().chain(planted(&user_pool).iter()) {
        nobody_cannot_run(p);
    }

    // An older tree (everything 0755) is mended at the next start, and the log says so. An
    // older bivy left no note that its pools' volume modes were mended.
    drop(l);
    d.stop();
    // (The default pool was mended at the first start; the user's pool, made since, was not.)
    let stamp = d
        .dir()
        .join("storage-pools/default/bivy-records/volume-modes");
    std::fs::remove_file(&stamp).unwrap_or_else(|e| panic!("{}: {e}", stamp.display()));
    let _ = std::fs::remove_file(user_pool.join("bivy-records/volume-modes"));
    let mut opened = Vec::new();
    for p in [
        d.dir().to_path_buf(),
        d.dir().join("storage-pools"),
        d.dir().join("storage-pools/default"),
        d.dir().join("storage-pools/default/containers"),
        d.dir().join("storage-pools/default/containers-snapshots"),
        d.dir().join("storage-pools/default/images"),
        d.dir().join("images"),
        d.dir().join("logs"),
        user_pool.join("containers-snapshots"),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        opened.push(p);
    }
    for dir in [
        "storage-pools/default/containers",
        "storage-pools/default/images",
    ] {
        for e in std::fs::read_dir(d.dir().join(dir))
            .expect("read")
            .flatten()
        {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            opened.push(e.path());
        }
    }
    for db in ["database.json", "database.log"] {
        std::fs::set_permissions(d.dir().join(db), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    // The run directory's files too: an older bivy left no note that their modes were mended.
    std::fs::remove_file(d.dir().join("run-modes")).expect("the run-modes note of the first start");
    let run_files: Vec<_> = std::fs::read_dir(d.dir().join("run"))
        .expect("run")
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .filter(|f| f.is_file())
        .collect();
    assert!(!run_files.is_empty(), "a running container has run files");
    for f in &run_files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    reached = reachable_by_nobody(&[d.dir()]);
    assert!(!reached.is_empty(), "the opened tree should be reachable");
    d.restart().expect("restart");
    reached = reachable_by_nobody(&[d.dir(), &user_pool]);
    assert!(
        reached.is_empty(),
        "after the restart nobody can reach: {reached:#?}"
    );
    let log = d.log_text();
    assert!(
        log.contains("permissions of") && log.contains("mended"),
        "{log}"
    );
    let l = Lxc::new(&d);
    // And everything still works.
    assert_eq!(l.sh("c1", "ls -l /bin/hsuid").0, 0);
    l.ok(&["launch", "suid", "c5"]);
    assert_eq!(l.sh("c5", "echo ok").1, "ok\n");
}

/// The instance's status as the API reports it (`Running`, `Frozen`, `Stopped`).
fn status(d: &Daemon, name: &str) -> String {
    let (_, v) = d
        .api("GET", &format!("/1.0/instances/{name}/state"), None)
        .expect("state");
    v["metadata"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Poll until `name` shows `want` (true) or `limit` passed (false).
fn wait_status(d: &Daemon, name: &str, want: &str, limit: std::time::Duration) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if status(d, name) == want {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

#[test]
fn a_killed_operation_leaves_no_freeze_or_stop_behind() {
    if !common::lxc_prerequisites() {
        return;
    }
    let limit = std::time::Duration::from_secs(60);
    let mut d = Daemon::start().expect("daemon");
    {
        let l = Lxc::new(&d);
        l.import_busybox();
        l.ok(&["launch", "busybox", "c1"]);
        // Enough data that a copy on the dir pool (ext4 here: a real copy) takes a while.
        let (rc, out) = l.sh("c1", "dd if=/dev/zero of=/root/big bs=1M count=400 2>&1");
        assert_eq!(rc, 0, "{out}");
        l.ok(&["snapshot", "c1", "base"]);
        // A pause the user asked for survives everything below.
        l.ok(&["launch", "busybox", "c2"]);
        l.ok(&["pause", "c2"]);
    }
    assert_eq!(status(&d, "c1"), "Running");

    // Killed during a snapshot, while the copy runs with c1 frozen.
    let mut snap = d
        .cli()
        .args(["snapshot", "c1", "s1"])
        .spawn()
        .expect("snapshot");
    assert!(
        wait_status(&d, "c1", "Frozen", limit),
        "never saw c1 frozen"
    );
    d.kill9();
    let _ = snap.wait();
    d.restart().expect("restart");
    assert_eq!(status(&d, "c1"), "Running", "{}", d.log_text());
    assert!(d.log_text().contains("c1: thawing"), "{}", d.log_text());
    assert_eq!(Lxc::new(&d).sh("c1", "echo alive").1, "alive\n");
    assert_eq!(status(&d, "c2"), "Frozen");

    // Killed during a restore, while c1 is stopped for it.
    let mut restore = d
        .cli()
        .args(["restore", "c1", "base"])
        .spawn()
        .expect("restore");
    assert!(
        wait_status(&d, "c1", "Stopped", limit),
        "never saw c1 stopped"
    );
    d.kill9();
    let _ = restore.wait();
    d.restart().expect("restart");
    assert_eq!(status(&d, "c1"), "Running", "{}", d.log_text());
    assert!(
        d.log_text().contains("c1: starting again"),
        "{}",
        d.log_text()
    );
    assert_eq!(Lxc::new(&d).sh("c1", "ls /root").1, "big\n");
    assert_eq!(status(&d, "c2"), "Frozen");

    // Nothing is undone twice: a third start leaves the user's pause alone too.
    d.restart().expect("restart");
    assert_eq!(status(&d, "c1"), "Running");
    assert_eq!(status(&d, "c2"), "Frozen");
    Lxc::new(&d).ok(&["start", "c2"]);
}

/// Held by nobody (uid 65534): 2,000 idle connections, then one request; prints that request's
/// status line and body, then holds everything until stdin closes.
const FLOOD: &str = r#"
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = []
for _ in range(2000):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
# The daemon answers the refused idle ones within about a second (each waits at most 0.5 s for
# a request); a refused client that sends one then gets its 503 after the request was read.
time.sleep(2)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
s.settimeout(20)
data = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    data += c
head, _, body = data.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode())
print(body.decode())
sys.stdout.flush()
sys.stdin.read()
"#;

#[test]
fn a_connection_flood_is_refused_clearly_and_root_gets_through() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    // Let nobody's group use the socket, as a daemon started with --group would.
    std::os::unix::fs::chown(d.socket(), None, Some(65534)).expect("chgrp socket");
    let mut flood = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", FLOOD])
        .arg(d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flood");
    let mut out = flood.stdout.take().expect("stdout");
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(&mut out);
        r.read_line(&mut first).expect("status line");
        let mut body = String::new();
        r.read_line(&mut body).expect("body");
        first.push_str(&body);
    }
    // The over-limit request got a 503 in LXD's envelope, not a reset.
    let mut lines = first.lines();
    assert_eq!(
        lines.next(),
        Some("HTTP/1.1 503 Service Unavailable"),
        "{first}"
    );
    let v: serde_json::Value = serde_json::from_str(lines.next().unwrap_or("")).expect("json");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error_code"], 503, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("Too many connections"),
        "{v}"
    );
    // Root's CLI works while nobody holds its connections.
    let list = d.run(&["list", "--format", "csv"]);
    assert!(list.status.success(), "{list:?}");
    let (code, v) = d.api("GET", "/1.0", None).expect("api");
    assert_eq!(code, 200, "{v}");
    drop(flood.stdin.take());
    let _ = flood.kill();
    let _ = flood.wait();
}

/// The capability bounding set of `pid` (a line of /proc/PID/status), parsed.
fn cap_bnd(status: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd line")
        .trim();
    u64::from_str_radix(hex, 16).expect("hex")
}

#[test]
fn containers_lack_lxds_dropped_capabilities() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "u"]);
    l.ok(&["launch", "busybox", "p", "-c", "security.privileged=true"]);
    // sys_module 16, sys_rawio 17, sys_time 25, mac_override 32, mac_admin 33.
    let dropped: u64 = (1 << 16) | (1 << 17) | (1 << 25) | (1 << 32) | (1 << 33);
    for ct in ["u", "p"] {
        for (what, cmd) in [
            ("init", "cat /proc/1/status"),
            ("exec", "cat /proc/self/status"),
        ] {
            let (rc, out) = l.sh(ct, cmd);
            assert_eq!(rc, 0, "{out}");
            let bnd = cap_bnd(&out);
            assert_eq!(bnd & dropped, 0, "{ct} {what}: CapBnd {bnd:x}");
            // Everything else a container root has stays (sys_admin 21, net_admin 12).
            assert_ne!(bnd & (1 << 21), 0, "{ct} {what}: CapBnd {bnd:x}");
            assert_ne!(bnd & (1 << 12), 0, "{ct} {what}: CapBnd {bnd:x}");
        }
    }
}

/// `bivy ARGS`: (exit success, stderr).
fn bivy(d: &Daemon, args: &[&str]) -> (bool, String) {
    let out = d.run(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn file_transfer_errors_reach_the_user() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    Lxc::new(&d).import_busybox();
    d.ok(&["launch", "busybox", "c1"]);
    let (rc, out) = Lxc::new(&d).sh(
        "c1",
        "echo hi > /root/f && ln -s /root/f /root/link && ln -s /nowhere /root/link2 && mkfifo /root/fifo",
    );
    assert_eq!(rc, 0, "{out}");
    let local = d.tmp().join("pulled");
    std::fs::create_dir(&local).expect("mkdir");

    // A symlink pulled onto an existing regular file: refused, the file untouched.
    let existing = local.join("existing");
    std::fs::write(&existing, "mine").expect("write");
    let (ok, err) = bivy(
        &d,
        &["file", "pull", "c1/root/link", existing.to_str().unwrap()],
    );
    assert!(!ok, "pull onto a regular file reported success");
    assert!(err.contains("exists and is not a symlink"), "{err}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "mine");
    // Onto an existing symlink: replaced by the container's.
    let link = local.join("link");
    std::os::unix::fs::symlink("/old/target", &link).expect("symlink");
    let (ok, err) = bivy(
        &d,
        &["file", "pull", "c1/root/link2", link.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/nowhere"));
    // Into a directory that cannot be written: an error, not success.
    let ro = local.join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    let (ok, err) = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::bivy_bin())
        .args([
            "file",
            "pull",
            "c1/root/link",
            ro.join("x").to_str().unwrap(),
        ])
        .env("BIVY_DIR", d.dir())
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .expect("run");
    assert!(!ok, "{err}");

    // A push onto a FIFO, bigger than what the server drains: the server's reason, not EPIPE.
    let big = d.tmp().join("big");
    std::fs::write(&big, vec![7u8; 8 << 20]).expect("write");
    let (ok, err) = bivy(&d, &["file", "push", big.to_str().unwrap(), "c1/root/fifo"]);
    assert!(!ok, "push onto a FIFO reported success");
    assert!(err.contains("not a regular file"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
}

#[test]
fn an_import_onto_a_full_disk_says_so() {
    if !common::require_root() {
        return;
    }
    let Some(img) = common::debian_image() else {
        common::skip(
            "an_import_onto_a_full_disk_says_so",
            "no Debian image (cargo xtask test-image debian)",
        );
        return;
    };
    let d = Daemon::start().expect("daemon");
    // The image store on a filesystem far smaller than the image (unmounted with the temp dir).
    let store = d.dir().join("images");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
        .arg(&store)
        .status()
        .expect("mount");
    assert!(st.success());
    let (ok, err) = bivy(
        &d,
        &["image", "import", img.to_str().unwrap(), "--alias", "big"],
    );
    let _ = Command::new("umount").arg(&store).status();
    assert!(!ok, "import onto a full disk reported success");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        !err.contains("reset by peer") && !err.contains("Broken pipe"),
        "{err}"
    );
    // Nothing half-imported is listed.
    let list = d.ok(&["image", "list", "--format", "csv"]);
    assert!(list.trim().is_empty(), "{list}");
}

#[test]
fn image_data_no_record_owns_is_removed_not_adopted() {
    if !common::require_root() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    // What an import killed before its record leaves: the data of the very image imported next,
    // plus a rootfs that would turn it into a (corrupt) split image if it were adopted.
    let img = common::busybox_image();
    let fp = {
        let bytes = std::fs::read(&img).expect("read image");
        let h = ring::digest::digest(&ring::digest::SHA256, &bytes);
        h.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    d.stop();
    let store = d.dir().join("images");
    for (name, data) in [
        (fp.clone(), &b"not the image"[..]),
        (format!("{fp}.rootfs"), &b"garbage rootfs"[..]),
        (format!("{fp}.metadata.yaml"), &b"architecture: x"[..]),
    ] {
        std::fs::write(store.join(name), data).expect("plant");
    }
    d.restart().expect("restart");
    let log = d.log_text();
    assert!(log.contains("did not finish"), "{log}");
    for name in [
        fp.clone(),
        format!("{fp}.rootfs"),
        format!("{fp}.metadata.yaml"),
    ] {
        assert!(!store.join(&name).exists(), "{name} survived the restart");
    }
    // The same image imports, verified, and runs.
    let l = Lxc::new(&d);
    l.import_busybox();
    assert_eq!(
        std::fs::read(store.join(&fp)).expect("data"),
        std::fs::read(&img).expect("image")
    );
    l.ok(&["launch", "busybox", "c1"]);
    assert_eq!(l.sh("c1", "echo ok").1, "ok\n");
}

#[test]
fn the_unpacked_size_limit_is_configurable() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let img = common::busybox_image();
    let img = img.to_str().expect("utf-8");
    // Bad values are refused.
    for bad in ["0", "lots", "1XB", "1.5GiB"] {
        let (ok, err) = bivy(&d, &["config", "set", "images.max_unpacked_size", bad]);
        assert!(
            !ok && err.contains("images.max_unpacked_size"),
            "{bad}: {err}"
        );
    }
    // Below the busybox image's expanded size: its import is refused, and nothing is stored.
    d.ok(&["config", "set", "images.max_unpacked_size", "512KiB"]);
    let (ok, err) = bivy(&d, &["image", "import", img, "--alias", "bb"]);
    assert!(!ok, "import over the limit reported success");
    assert!(err.contains("too large") && err.contains("524288"), "{err}");
    assert!(d
        .ok(&["image", "list", "--format", "csv"])
        .trim()
        .is_empty());
    // Unset: the default limit, and the import works; it holds across a restart too.
    d.ok(&["config", "unset", "images.max_unpacked_size"]);
    d.ok(&["image", "import", img, "--alias", "bb"]);
    d.ok(&["config", "set", "images.max_unpacked_size", "64MiB"]);
    let mut d = d;
    d.restart().expect("restart");
    assert_eq!(
        d.ok(&["config", "get", "images.max_unpacked_size"]).trim(),
        "64MiB"
    );
    d.ok(&["launch", "bb", "c1"]);
}

/// The host uid ranges (start, end) of an instance's `volatile.idmap.next`.
fn uid_ranges(l: &Lxc<'_>, name: &str) -> Vec<(u64, u64)> {
    let next = l.ok(&["config", "get", name, "volatile.idmap.next"]);
    let v: serde_json::Value = serde_json::from_str(next.trim()).expect("a map");
    v.as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["Isuid"] == true)
        .map(|e| {
            let h = e["Hostid"].as_u64().expect("Hostid");
            (h, h + e["Maprange"].as_u64().expect("Maprange"))
        })
        .collect()
}

/// The first line of a running container's `/proc/self/uid_map`: (container id, host id, count).
fn uid_map(l: &Lxc<'_>, name: &str) -> (u64, u64, u64) {
    let (code, out) = l.sh(name, "head -n1 /proc/self/uid_map");
    assert_eq!(code, 0, "{out}");
    let f: Vec<u64> = out
        .split_whitespace()
        .map(|w| w.parse().expect("a number"))
        .collect();
    (f[0], f[1], f[2])
}

/// The rootfs as container root sees it: owned by root (the idmapped mounts were made with the
/// instance's own map; the daemon keeps a user namespace per map for them, and one of another
/// map would show every file as 65534).
fn owned_by_root(l: &Lxc<'_>, name: &str) {
    let (code, out) = l.sh(
        name,
        "stat -c %u:%g / /etc /bin/busybox; touch /made && stat -c %u:%g /made",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "0:0\n0:0\n0:0\n0:0\n"),
        "the rootfs of {name} as its root sees it"
    );
}

/// No two of the instances `who` share host uids.
fn disjoint(l: &Lxc<'_>, who: &[&str]) {
    let mut all: Vec<(u64, u64, String)> = Vec::new();
    for n in who {
        for (a, b) in uid_ranges(l, n) {
            all.push((a, b, n.to_string()));
        }
    }
    all.sort();
    for w in all.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "{} and {} share host ids: {:?} {:?}",
            w[0].2,
            w[1].2,
            (w[0].0, w[0].1),
            (w[1].0, w[1].1)
        );
    }
}

/// An id map follows the config the instance starts with: `security.idmap.isolated` (its own
/// or a profile's) and `security.idmap.size` set while it is stopped take effect at its next
/// start (they used to be accepted and ignored: the map made at create stayed). Isolated
/// instances never share host ids: not when made at once (eight parallel creates used to pick
/// the same range now and then), and not when an older bivy gave two of them one range (the
/// first to start moves to a free one).
#[test]
fn id_maps_follow_the_config_and_isolated_ranges_never_meet() {
    if !common::lxc_prerequisites() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "m1"]);
    let shared = uid_map(&l, "m1");
    assert_eq!(shared.0, 0);
    owned_by_root(&l, "m1");
    // A second start with the shared map (the daemon's user namespace for it kept by now).
    l.ok(&["launch", "busybox", "m0"]);
    owned_by_root(&l, "m0");
    l.ok(&["delete", "--force", "m0"]);
    l.ok(&["stop", "--force", "m1"]);
    l.ok(&["config", "set", "m1", "security.idmap.isolated", "true"]);
    l.ok(&["start", "m1"]);
    let isolated = uid_map(&l, "m1");
    assert!(
        isolated.1 >= shared.1 + shared.2,
        "isolated set while stopped, yet the shared range at the start: {isolated:?}"
    );
    owned_by_root(&l, "m1");
    // Again with its own map, kept by now.
    l.ok(&["restart", "--force", "m1"]);
    assert_eq!(uid_map(&l, "m1"), isolated);
    owned_by_root(&l, "m1");
    l.ok(&["stop", "--force", "m1"]);
    l.ok(&["config", "set", "m1", "security.idmap.size", "100000"]);
    l.ok(&["start", "m1"]);
    assert_eq!(uid_map(&l, "m1").2, 100000, "the new size at the start");
    assert_eq!(uid_ranges(&l, "m1").len(), 1);
    owned_by_root(&l, "m1");

    // Eight isolated instances made at once, by a profile.
    l.ok(&["profile", "create", "iso"]);
    l.ok(&["profile", "set", "iso", "security.idmap.isolated", "true"]);
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let creates: Vec<_> = names
        .iter()
        .map(|n| {
            l.cmd(&["init", "busybox", n, "-p", "default", "-p", "iso"])
                .stdout(Stdio::null())
                .spawn()
                .expect("lxc init")
        })
        .collect();
    for mut c in creates {
        assert!(
            c.wait().expect("lxc init").success(),
            "a parallel init failed"
        );
    }
    let mut who: Vec<&str> = names.iter().map(String::as_str).collect();
    who.push("m1");
    disjoint(&l, &who);

    // Two given one range, as an older bivy did (volatile keys are the daemon's: written into
    // its stored state while it is stopped): each start keeps them apart.
    d.stop();
    d.edit_database(|db| {
        let p0 = db["instances"]["p0"]["config"].clone();
        for k in ["volatile.idmap.base", "volatile.idmap.next"] {
            db["instances"]["p1"]["config"][k] = p0[k].clone();
        }
    });
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    assert_eq!(uid_ranges(&l, "p0"), uid_ranges(&l, "p1"));
    l.ok(&["start", "p1", "p0"]);
    assert_ne!(uid_map(&l, "p0").1, uid_map(&l, "p1").1);
    disjoint(&l, &who);
    l.ok(&[
        "delete", "--force", "m1", "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7",
    ]);
    l.ok(&["profile", "delete", "iso"]);
}
