//! Disk devices and custom storage volumes, driven by the unmodified `lxc` 5.0.2 client and
//! bivy's own CLI: volume create/list/show/set/rename/delete (refused while attached), a volume
//! shared by two containers with different id maps, host directories and files bound in
//! (read-only enforced, `required=false` skipped, a missing source or a symlink refused at
//! start), disks and unix devices hot-plugged into running containers (read-only locked, the
//! device cgroup following), and nothing left mounted on the host.
//! Real containers, as root.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Daemon, Lxc};

fn err_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `lxc ARGS` must fail with a message containing `want`.
fn fails_with(l: &Lxc<'_>, args: &[&str], want: &str) {
    let out = l.run(args);
    let text = err_text(&out);
    assert!(!out.status.success(), "lxc {args:?} succeeded: {text}");
    assert!(
        text.contains(want),
        "lxc {args:?}: want {want:?} in {text:?}"
    );
}

fn no_mounts_below(p: &Path) {
    let m = common::mounts_below(p);
    assert!(m.is_empty(), "still mounted below {}: {m:?}", p.display());
}

#[test]
fn custom_volume_lifecycle_with_lxc() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    assert_eq!(
        l.ok(&["storage", "volume", "create", "default", "vol1"]),
        "Storage volume vol1 created\n"
    );
    fails_with(
        &l,
        &["storage", "volume", "create", "default", "vol1"],
        "Volume by that name already exists",
    );
    fails_with(
        &l,
        &["storage", "volume", "create", "default", "big", "size=1GiB"],
        "not supported yet",
    );
    fails_with(
        &l,
        &[
            "storage",
            "volume",
            "create",
            "default",
            "blk",
            "--type=block",
        ],
        "not supported yet",
    );
    fails_with(
        &l,
        &[
            "storage",
            "volume",
            "create",
            "default",
            "bad",
            "nosuch.key=1",
        ],
        "Invalid option for volume \"bad\" option \"nosuch.key\"",
    );
    let list = l.ok(&["storage", "volume", "list", "default", "--format=csv"]);
    assert!(list.contains("custom,vol1,,filesystem,0"), "{list}");
    // Description and config through the REST API, with an ETag.
    let (st, v) = d
        .api(
            "GET",
            "/1.0/storage-pools/default/volumes/custom/vol1",
            None,
        )
        .expect("api");
    assert_eq!(st, 200, "{v}");
    let m = &v["metadata"];
    assert_eq!(m["type"], "custom");
    assert_eq!(m["content_type"], "filesystem");
    assert_eq!(m["location"], "none");
    assert_eq!(m["project"], "default");
    assert!(
        m["created_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{m}"
    );
    let (st, v) = d
        .api(
            "PATCH",
            "/1.0/storage-pools/default/volumes/custom/vol1",
            Some(r#"{"description":"data"}"#),
        )
        .expect("api");
    assert_eq!(st, 200, "{v}");
    l.ok(&[
        "storage",
        "volume",
        "set",
        "default",
        "vol1",
        "security.shifted",
        "true",
    ]);
    assert_eq!(
        l.ok(&[
            "storage",
            "volume",
            "get",
            "default",
            "vol1",
            "security.shifted"
        ]),
        "true\n"
    );
    let show = l.ok(&["storage", "volume", "show", "default", "vol1"]);
    assert!(show.contains("description: data"), "{show}");
    assert!(show.contains("security.shifted: \"true\""), "{show}");
    l.ok(&[
        "storage",
        "volume",
        "unset",
        "default",
        "vol1",
        "security.shifted",
    ]);
    let recursive = l.ok(&[
        "query",
        "/1.0/storage-pools/default/volumes/custom?recursion=1",
    ]);
    assert!(recursive.contains("\"name\": \"vol1\""), "{recursive}");

    // Attached to a stopped container: delete refused, rename carries the device along.
    l.ok(&["init", "busybox", "c1"]);
    l.ok(&[
        "storage", "volume", "attach", "default", "vol1", "c1", "/data",
    ]);
    let show = l.ok(&["storage", "volume", "show", "default", "vol1"]);
    assert!(show.contains("- /1.0/instances/c1"), "{show}");
    fails_with(
        &l,
        &["storage", "volume", "delete", "default", "vol1"],
        "The storage volume is still in use",
    );
    fails_with(&l, &["storage", "delete", "default"], "currently in use");
    assert_eq!(
        l.ok(&["storage", "volume", "rename", "default", "vol1", "vol2"]),
        "Renamed storage volume from \"vol1\" to \"vol2\"\n"
    );
    let dev = l.ok(&["config", "device", "get", "c1", "vol1", "source"]);
    assert_eq!(dev, "vol2\n");
    // Running: rename refused, device changes refused.
    l.ok(&["start", "c1"]);
    fails_with(
        &l,
        &["storage", "volume", "rename", "default", "vol2", "vol3"],
        "Volume is still in use by running instances",
    );
    // A volume attached and detached while running: hot-plugged.
    l.ok(&["storage", "volume", "create", "default", "other"]);
    l.ok(&[
        "storage", "volume", "attach", "default", "other", "c1", "/other",
    ]);
    let (code, out) = l.sh("c1", "echo o > /other/f && cat /other/f");
    assert_eq!((code, out.as_str()), (0, "o\n"));
    l.ok(&["storage", "volume", "detach", "default", "other", "c1"]);
    let (code, _) = l.sh("c1", "test -e /other/f");
    assert_eq!(code, 1, "the detached volume is still mounted");
    let (code, out) = l.sh(
        "c1",
        "echo hi > /data/f && cat /data/f && stat -c %u:%g /data/f",
    );
    assert_eq!((code, out.as_str()), (0, "hi\n0:0\n"));
    l.ok(&["stop", "c1", "--force"]);
    l.ok(&["storage", "volume", "detach", "default", "vol2", "c1"]);
    assert_eq!(
        l.ok(&["storage", "volume", "delete", "default", "vol2"]),
        "Storage volume vol2 deleted\n"
    );
    l.ok(&["storage", "volume", "delete", "default", "other"]);
    fails_with(
        &l,
        &["storage", "volume", "show", "default", "vol2"],
        "Storage volume not found",
    );
    let left: Vec<_> = std::fs::read_dir(d.dir().join("storage-pools/default/custom"))
        .expect("custom dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    no_mounts_below(d.tmp());
}

#[test]
fn volume_shared_by_two_containers_with_different_maps() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "volume", "create", "default", "shared"]);
    l.ok(&["init", "busybox", "a"]);
    l.ok(&["init", "busybox", "b", "-c", "security.idmap.isolated=true"]);
    l.ok(&[
        "storage",
        "volume",
        "attach",
        "default",
        "shared",
        "a",
        "/srv/shared",
    ]);
    l.ok(&[
        "storage", "volume", "attach", "default", "shared", "b", "shr", "/mnt/s",
    ]);
    l.ok(&["start", "a", "b"]);
    let map = |c: &str| l.ok(&["config", "get", c, "volatile.idmap.current"]);
    assert_ne!(
        map("a"),
        map("b"),
        "the two containers should have different maps"
    );
    let (code, out) = l.sh(
        "a",
        "echo from-a > /srv/shared/note && chmod 600 /srv/shared/note",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = l.sh("b", "cat /mnt/s/note && stat -c %u:%g:%a /mnt/s/note");
    assert_eq!((code, out.as_str()), (0, "from-a\n0:0:600\n"));
    // On disk the file belongs to uid 0 (container ids), below a directory only root reaches.
    let pool = d.dir().join("storage-pools/default/custom");
    assert_eq!(
        std::fs::metadata(&pool).expect("custom").mode() & 0o777,
        0o700
    );
    // Nothing of it is mounted on the host, running or stopped.
    no_mounts_below(&pool);
    l.ok(&["stop", "a", "b", "--force"]);
    no_mounts_below(d.tmp());
    l.ok(&["delete", "a", "b"]);
    l.ok(&["storage", "volume", "delete", "default", "shared"]);
}

#[test]
fn host_directory_and_file_devices() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let host = d.tmp().join("host");
    std::fs::create_dir_all(host.join("data")).expect("mkdir");
    std::fs::write(host.join("data/hello"), "hello\n").expect("write");
    std::fs::write(host.join("single"), "one file\n").expect("write");
    let p = |s: &str| host.join(s).display().to_string();
    l.ok(&["init", "busybox", "c1"]);
    let add = |name: &str, kv: &[String]| {
        let mut args: Vec<String> = vec![
            "config".into(),
            "device".into(),
            "add".into(),
            "c1".into(),
            name.into(),
            "disk".into(),
        ];
        args.extend(kv.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        l.ok(&args)
    };
    add(
        "ro",
        &[
            format!("source={}", p("data")),
            "path=/ro".into(),
            "readonly=true".into(),
            "shift=true".into(),
        ],
    );
    add(
        "rw",
        &[
            format!("source={}", p("data")),
            "path=/rw".into(),
            "shift=true".into(),
        ],
    );
    add(
        "file",
        &[format!("source={}", p("single")), "path=/etc/single".into()],
    );
    add(
        "opt",
        &[
            format!("source={}", p("nosuch")),
            "path=/opt/x".into(),
            "required=false".into(),
        ],
    );
    fails_with(
        &l,
        &[
            "config",
            "device",
            "add",
            "c1",
            "rel",
            "disk",
            "source=../etc",
            "path=/x",
        ],
        "Source path must be absolute",
    );
    fails_with(
        &l,
        &[
            "config",
            "device",
            "add",
            "c1",
            "dots",
            "disk",
            "source=/srv/../etc",
            "path=/x",
        ],
        "Source path must be absolute",
    );
    l.ok(&["start", "c1"]);
    let (code, out) = l.sh(
        "c1",
        "cat /ro/hello /etc/single; test -e /opt/x; echo opt=$?",
    );
    assert_eq!((code, out.as_str()), (0, "hello\none file\nopt=1\n"));
    let (code, out) = l.sh("c1", "touch /ro/new 2>&1");
    assert_ne!(code, 0, "writing a readonly disk worked: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = l.sh(
        "c1",
        "mount -o remount,rw /ro 2>&1; mount -o remount,bind,rw /ro 2>&1; touch /ro/new2 2>&1",
    );
    assert_ne!(
        code, 0,
        "the container made its readonly disk writable: {out}"
    );
    // shift=true: container root is host root on that directory.
    let (code, out) = l.sh("c1", "echo w > /rw/written && stat -c %u /rw/written");
    assert_eq!((code, out.as_str()), (0, "0\n"));
    assert_eq!(
        std::fs::metadata(host.join("data/written"))
            .expect("written")
            .uid(),
        0
    );
    // Nothing on the host's mount table while running, nor after stop.
    no_mounts_below(&host);
    no_mounts_below(d.tmp());
    l.ok(&["stop", "c1", "--force"]);
    no_mounts_below(d.tmp());

    // A required source that is gone is a clear start error; nothing is left half-started.
    std::fs::rename(host.join("single"), host.join("single.moved")).expect("rename");
    fails_with(&l, &["start", "c1"], "Missing source path");
    // A symlink on the source path is refused, not followed.
    std::os::unix::fs::symlink("/etc", host.join("single")).expect("symlink");
    fails_with(&l, &["start", "c1"], "symlink");
    std::fs::remove_file(host.join("single")).expect("rm");
    std::fs::create_dir(host.join("real")).expect("mkdir");
    std::fs::rename(host.join("single.moved"), host.join("real/single")).expect("rename");
    std::os::unix::fs::symlink("real", host.join("via")).expect("symlink");
    l.ok(&[
        "config",
        "device",
        "set",
        "c1",
        "file",
        "source",
        &p("via/single"),
    ]);
    fails_with(&l, &["start", "c1"], "symlink");
    l.ok(&[
        "config",
        "device",
        "set",
        "c1",
        "file",
        "source",
        &p("real/single"),
    ]);
    // A target path that is a symlink inside the container stays inside it.
    l.ok(&["config", "device", "remove", "c1", "rw"]);
    l.ok(&["start", "c1"]);
    l.sh("c1", "ln -s /etc /escape");
    l.ok(&["stop", "c1", "--force"]);
    add(
        "esc",
        &[
            format!("source={}", p("data")),
            "path=/escape/inside".into(),
        ],
    );
    l.ok(&["start", "c1"]);
    let (code, out) = l.sh("c1", "cat /etc/inside/hello");
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    assert!(
        !Path::new("/etc/inside").exists(),
        "a mount point was made on the host"
    );
    // Removed while running: unmounted in the container.
    l.ok(&["config", "device", "remove", "c1", "esc"]);
    let (code, _) = l.sh("c1", "test -e /etc/inside/hello");
    assert_eq!(code, 1, "the removed disk is still mounted");
    no_mounts_below(d.tmp());
    l.ok(&["delete", "c1", "--force"]);
    no_mounts_below(d.tmp());
}

/// A file of a running container's v1 cgroup in `controller`, found through its init's
/// `/proc/PID/cgroup` (several daemons' containers may share a name).
/// `file` requests on a running container act on what it sees, as LXD's SFTP server inside it
/// does: a host directory's disk device, a tmpfs it mounted, its /proc. An existing file is
/// written where its path leads inside (a symlink followed) and keeps its owner and mode.
#[test]
fn file_requests_on_a_running_container_see_its_mounts() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let (share, local) = c1_with_a_host_dir(&d, &l, "share", "/mnt/share", |share| {
        std::fs::write(share.join("f"), "hello\n").expect("write");
        // Writable by the container's root, which is no one on the host (see the next test).
        std::fs::set_permissions(share, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
    });
    let local = local.as_str();
    assert_eq!(l.ok(&["file", "pull", "c1/mnt/share/f", "-"]), "hello\n");
    l.ok(&["file", "push", local, "c1/mnt/share/new"]);
    assert_eq!(
        std::fs::read_to_string(share.join("new")).expect("on the host"),
        "pushed\n"
    );
    let (code, out) = l.sh(
        "c1",
        "cat /mnt/share/new && mkdir /run2 && mount -t tmpfs tmpfs /run2 && \
         echo x > /root/script && chmod 750 /root/script && chown 1000:1000 /root/script && \
         ln -s /root/script /root/link",
    );
    assert_eq!((code, out.as_str()), (0, "pushed\n"));
    l.ok(&["file", "push", local, "c1/run2/x"]);
    assert_eq!(l.sh("c1", "cat /run2/x"), (0, "pushed\n".to_string()));
    // Its /proc: its own processes (a pseudo-file that says it is empty, read whole).
    let (_, comm) = l.sh("c1", "cat /proc/1/comm");
    assert_eq!(l.ok(&["file", "pull", "c1/proc/1/comm", "-"]), comm);
    l.ok(&["file", "push", "--mode", "0644", local, "c1/root/link"]);
    assert_eq!(
        l.sh(
            "c1",
            "stat -c '%a %u:%g' /root/script; cat /root/script; test -L /root/link"
        ),
        (0, "750 1000:1000\npushed\n".to_string())
    );
    // A new file is made as the container's root, inside.
    l.ok(&["file", "push", local, "c1/root/made"]);
    assert_eq!(
        l.sh("c1", "stat -c '%u:%g' /root/made"),
        (0, "0:0\n".to_string())
    );
    l.ok(&["delete", "c1", "--force"]);
}

/// `c1` launched with the host directory `d.tmp()/name` (filled by `fill`) as a disk at
/// `path`; the directory, and a local file to push (`pushed`).
fn c1_with_a_host_dir(
    d: &Daemon,
    l: &Lxc<'_>,
    name: &str,
    path: &str,
    fill: impl FnOnce(&Path),
) -> (std::path::PathBuf, String) {
    let dir = d.tmp().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    fill(&dir);
    let local = d.tmp().join("local");
    std::fs::write(&local, "pushed\n").expect("write");
    l.ok(&["launch", "busybox", "c1"]);
    let source = format!("source={}", dir.display());
    let path = format!("path={path}");
    l.ok(&[
        "config", "device", "add", "c1", name, "disk", &source, &path,
    ]);
    (dir, local.to_str().expect("utf-8").to_string())
}

/// A file request acts as the container's root would: a symlink its root plants (to a host file
/// a disk device shows it, which it cannot write itself) must not lend an admin's push or delete
/// the daemon's rights. What its root can do, files of its other users included, still works.
#[test]
fn a_planted_symlink_does_not_lend_file_requests_the_daemons_rights() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let (shared, local) = c1_with_a_host_dir(&d, &l, "shared", "/data", |shared| {
        std::fs::write(shared.join("important.conf"), "ORIGINAL\n").expect("write");
    });
    let local = local.as_str();
    let conf = shared.join("important.conf");
    let (code, _) = l.sh("c1", "echo x > /data/important.conf");
    assert_ne!(
        code, 0,
        "the container's root cannot write the host's file itself"
    );
    let (code, out) = l.sh(
        "c1",
        "ln -sf /data/important.conf /etc/motd && ln -s /data /root/cache && \
         echo mine > /tmp/t && chown 1000:1000 /tmp/t && chmod 600 /tmp/t && \
         mkdir -p /home/u && echo u > /home/u/rc && chown -R 1000:1000 /home/u && \
         chmod 700 /home/u && chmod 400 /home/u/rc",
    );
    assert_eq!(code, 0, "{out}");
    let err = common::failed(&l.run(&["file", "push", local, "c1/etc/motd"]));
    assert!(err.contains("permission denied"), "{err}");
    let err = common::failed(&l.run(&["file", "push", local, "c1/root/cache/planted"]));
    assert!(err.contains("permission denied"), "{err}");
    let err = common::failed(&l.run(&["file", "delete", "c1/root/cache/important.conf"]));
    assert!(err.contains("permission denied"), "{err}");
    // (lxc refuses this one itself: the parent it checks is a symlink.)
    common::failed(&l.run(&["file", "push", "-p", local, "c1/root/cache/sub/x"]));
    let (code, body) = d
        .api("POST", "/1.0/instances/c1/files?path=/root/cache/sub", None)
        .expect("api");
    assert_eq!(code, 403, "{body}");
    // Through a directory its root cannot enter (0700, the host's), to what is open inside it
    // (a 0666 file, a 0777 directory, a 0644 file): the walk to them is refused too.
    let private = shared.join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::create_dir(private.join("sub")).expect("mkdir");
    std::fs::write(private.join("f666"), "HOST\n").expect("write");
    std::fs::write(private.join("secret"), "SECRET\n").expect("write");
    use std::os::unix::fs::PermissionsExt as _;
    for (p, m) in [
        ("", 0o700),
        ("sub", 0o777),
        ("f666", 0o666),
        ("secret", 0o644),
    ] {
        let p = if p.is_empty() {
            private.clone()
        } else {
            private.join(p)
        };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }
    let (code, out) = l.sh(
        "c1",
        "ln -s /data/private/f666 /root/fl && ln -s /data/private/sub /root/sd && \
         ln -s /data/private /root/pd && ! cat /data/private/secret",
    );
    assert_eq!(code, 0, "{out}");
    for args in [
        vec!["file", "push", local, "c1/root/fl"],
        vec!["file", "push", local, "c1/root/sd/new"],
        vec!["file", "pull", "c1/root/pd/secret", "-"],
    ] {
        let err = common::failed(&l.run(&args));
        assert!(err.contains("permission denied"), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(private.join("f666")).expect("read"),
        "HOST\n"
    );
    assert!(!private.join("sub/new").exists());
    std::fs::remove_dir_all(&private).expect("rm");
    assert_eq!(std::fs::read_to_string(&conf).expect("read"), "ORIGINAL\n");
    let left: Vec<_> = std::fs::read_dir(&shared)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("important.conf")]);
    // Its root's own rights: over its other users' files (a 0400 file in a 0700 directory of
    // uid 1000), a sticky /tmp, and new files.
    l.ok(&["file", "push", local, "c1/home/u/rc"]);
    l.ok(&["file", "delete", "c1/tmp/t"]);
    l.ok(&["file", "push", local, "c1/root/new"]);
    assert_eq!(
        l.sh(
            "c1",
            "cat /home/u/rc; stat -c '%a %u' /home/u/rc; test -e /tmp/t || echo gone; \
             stat -c '%u:%g' /root/new"
        ),
        (0, "pushed\n400 1000\ngone\n0:0\n".to_string())
    );
    l.ok(&["delete", "c1", "--force"]);
}

fn cgroup_file(l: &Lxc<'_>, c: &str, controller: &str, file: &str) -> Option<String> {
    let st = l.ok(&["query", &format!("/1.0/instances/{c}/state")]);
    let v: serde_json::Value = serde_json::from_str(&st).ok()?;
    let pid = v["pid"].as_i64()?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = cg.lines().find_map(|line| {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        ctrls
            .split(',')
            .any(|x| x == controller)
            .then(|| path.to_string())
    })?;
    let dir = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(rel.trim_start_matches('/'));
    std::fs::read_to_string(dir.join(file)).ok()
}

#[test]
fn disks_hot_plug_into_a_running_container() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let host = d.tmp().join("hp");
    std::fs::create_dir_all(host.join("data")).expect("mkdir");
    std::fs::write(host.join("data/hello"), "hello\n").expect("write");
    let src = host.join("data").display().to_string();
    l.ok(&["launch", "busybox", "c1"]);
    let add = |args: &[&str]| {
        let mut v = vec!["config", "device", "add", "c1"];
        v.extend_from_slice(args);
        l.run(&v)
    };
    // Read-only, and locked so: container root cannot remount it writable.
    let out = add(&[
        "ro",
        "disk",
        &format!("source={src}"),
        "path=/mnt/ro",
        "readonly=true",
        "shift=true",
    ]);
    assert!(out.status.success(), "{}", err_text(&out));
    let (code, out) = l.sh("c1", "cat /mnt/ro/hello");
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, out) = l.sh("c1", "touch /mnt/ro/new 2>&1");
    assert_ne!(code, 0, "wrote to a read-only hot-plugged disk: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = l.sh(
        "c1",
        "mount -o remount,rw /mnt/ro 2>&1; mount -o remount,bind,rw /mnt/ro 2>&1; touch /mnt/ro/new2 2>&1",
    );
    assert_ne!(
        code, 0,
        "the container made its read-only disk writable: {out}"
    );
    // Writable and shifted: container root writes as host root there.
    let out = add(&[
        "rw",
        "disk",
        &format!("source={src}"),
        "path=/mnt/rw",
        "shift=true",
    ]);
    assert!(out.status.success(), "{}", err_text(&out));
    let (code, out) = l.sh("c1", "echo w > /mnt/rw/w && stat -c %u /mnt/rw/w");
    assert_eq!((code, out.as_str()), (0, "0\n"));
    assert_eq!(std::fs::metadata(host.join("data/w")).expect("w").uid(), 0);
    // A source through a symlink is refused and the container and its config stay as they were.
    std::os::unix::fs::symlink(host.join("data"), host.join("link")).expect("symlink");
    let link = host.join("link").display().to_string();
    let out = add(&["bad", "disk", &format!("source={link}"), "path=/mnt/bad"]);
    assert!(!out.status.success(), "a symlink source was mounted");
    assert!(err_text(&out).contains("symlink"), "{}", err_text(&out));
    let (code, _) = l.sh("c1", "test -e /mnt/bad");
    assert_eq!(code, 1, "a refused device left its mount point");
    let show = l.ok(&["config", "device", "show", "c1"]);
    assert!(!show.contains("bad:"), "{show}");
    // A missing source: refused unless required=false (then skipped).
    let gone = host.join("gone").display().to_string();
    let out = add(&["gone", "disk", &format!("source={gone}"), "path=/mnt/gone"]);
    assert!(
        err_text(&out).contains("Missing source path"),
        "{}",
        err_text(&out)
    );
    let out = add(&[
        "opt",
        "disk",
        &format!("source={gone}"),
        "path=/mnt/opt",
        "required=false",
    ]);
    assert!(out.status.success(), "{}", err_text(&out));
    // Two devices on one path: refused.
    let out = add(&["twice", "disk", &format!("source={src}"), "path=/mnt/ro"]);
    assert!(!out.status.success(), "two disks on one path");
    // A changed device is remounted with its new settings.
    l.ok(&["config", "device", "set", "c1", "ro", "path", "/mnt/ro2"]);
    let (code, out) = l.sh("c1", "cat /mnt/ro2/hello; test -e /mnt/ro/hello; echo $?");
    assert_eq!((code, out.as_str()), (0, "hello\n1\n"));
    // Removed: gone from the container; nothing ever reached the host's mount table.
    l.ok(&["config", "device", "remove", "c1", "ro", "rw", "opt"]);
    let (code, out) = l.sh(
        "c1",
        "test -e /mnt/ro2/hello; echo $?; test -e /mnt/rw/w; echo $?",
    );
    assert_eq!((code, out.as_str()), (0, "1\n1\n"));
    no_mounts_below(d.tmp());
    // A restart mounts what the config says (the hot-plugged device included).
    add(&["again", "disk", &format!("source={src}"), "path=/mnt/again"]);
    l.ok(&["restart", "c1", "--force"]);
    let (code, out) = l.sh("c1", "cat /mnt/again/hello");
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    l.ok(&["delete", "c1", "--force"]);
    no_mounts_below(d.tmp());
}

#[test]
fn unix_devices_cold_and_hot_with_the_device_cgroup() {
    if !common::lxc_prerequisites() {
        return;
    }
    if !Path::new("/sys/fs/cgroup/devices").is_dir() {
        common::skip(
            "unix_devices_cold_and_hot_with_the_device_cgroup",
            "no cgroup v1 devices controller",
        );
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    // (Started once: the volume is made by then.)
    l.ok(&["launch", "busybox", "c1"]);
    l.ok(&["stop", "c1", "--force"]);
    // A node put in the rootfs from the host side (a hostile migration peer, say), owned by
    // container root: the device cgroup refuses to open it.
    l.mknod_in_rootfs("lc", 10, 237);
    // Cold: a unix-char device with its numbers from the host's node, and one that is missing
    // but not required.
    l.ok(&[
        "config",
        "device",
        "add",
        "c1",
        "null2",
        "unix-char",
        "source=/dev/null",
        "path=/dev/null2",
        "mode=0600",
        "uid=1000",
    ]);
    l.ok(&[
        "config",
        "device",
        "add",
        "c1",
        "nope",
        "unix-char",
        "source=/dev/bivy-nope",
        "required=false",
    ]);
    l.ok(&["start", "c1"]);
    let (code, out) = l.sh("c1", "stat -c '%t:%T %a %u' /dev/null2; echo x > /dev/null2 && echo ok; test -e /dev/bivy-nope; echo $?");
    assert_eq!((code, out.as_str()), (0, "1:3 600 1000\nok\n1\n"));
    l.assert_open_refused("c1", "/lc");
    // Hot: the same device numbers, now allowed, and the node made in /dev.
    l.ok(&[
        "config",
        "device",
        "add",
        "c1",
        "lc",
        "unix-char",
        "source=/dev/loop-control",
    ]);
    let (code, out) = l.sh(
        "c1",
        "stat -c '%t:%T %a %u:%g' /dev/loop-control && exec 3</dev/loop-control && echo opened",
    );
    assert_eq!((code, out.as_str()), (0, "a:ed 660 0:0\nopened\n"));
    let list = cgroup_file(&l, "c1", "devices", "devices.list").expect("devices.list");
    assert!(list.contains("c 10:237 rwm"), "{list}");
    // Removed hot: node gone, cgroup rule gone.
    l.ok(&["config", "device", "remove", "c1", "lc"]);
    let (code, out) = l.sh("c1", "test -e /dev/loop-control; echo $?; exec 3</lc 2>&1");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.starts_with("1\n") && out.contains("not permitted"),
        "{out}"
    );
    let list = cgroup_file(&l, "c1", "devices", "devices.list").expect("devices.list");
    assert!(!list.contains("c 10:237"), "{list}");
    // Types bivy does not build are refused when configured.
    fails_with(
        &l,
        &[
            "config",
            "device",
            "add",
            "c1",
            "t",
            "tpm",
            "path=/dev/tpm0",
        ],
        "not supported yet: tpm devices",
    );
    // A GPU that is not there is a clear error, and nothing changes.
    fails_with(
        &l,
        &["config", "device", "add", "c1", "g", "gpu", "vendorid=ffff"],
        "Failed to detect requested GPU device",
    );
    // `none` masks a profile's device.
    let src = d.tmp().display().to_string();
    l.ok(&["profile", "create", "withdisk"]);
    l.ok(&[
        "profile",
        "device",
        "add",
        "withdisk",
        "pd",
        "disk",
        &format!("source={src}"),
        "path=/mnt/pd",
    ]);
    l.ok(&["profile", "add", "c1", "withdisk"]);
    let (code, _) = l.sh("c1", "test -d /mnt/pd");
    assert_eq!(code, 0, "the profile's disk was not hot-plugged");
    l.ok(&["config", "device", "add", "c1", "pd", "none"]);
    let (code, _) = l.sh("c1", "test -d /mnt/pd && mountpoint -q /mnt/pd");
    assert_ne!(code, 0, "the masked device is still mounted");
    l.ok(&["delete", "c1", "--force"]);
    l.ok(&["profile", "delete", "withdisk"]);
    no_mounts_below(d.tmp());
}

#[test]
fn bivy_storage_volume_commands() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let img = common::busybox_image();
    d.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "busybox",
    ]);
    assert_eq!(
        d.ok(&[
            "storage",
            "volume",
            "create",
            "default",
            "v1",
            "security.shifted=true"
        ]),
        "Storage volume v1 created\n"
    );
    let out = d.run(&["storage", "volume", "create", "default", "v1"]);
    assert!(!out.status.success());
    assert!(
        err_text(&out).contains("Volume by that name already exists"),
        "{}",
        err_text(&out)
    );
    let csv = d.ok(&[
        "storage", "volume", "list", "default", "-f", "csv", "-c", "tn",
    ]);
    assert!(csv.contains("custom,v1\n"), "{csv}");
    d.ok(&[
        "storage",
        "volume",
        "set",
        "default",
        "v1",
        "security.shifted=true",
    ]);
    assert_eq!(
        d.ok(&[
            "storage",
            "volume",
            "get",
            "default",
            "v1",
            "security.shifted"
        ]),
        "true\n"
    );
    d.ok(&[
        "storage",
        "volume",
        "unset",
        "default",
        "v1",
        "security.shifted",
    ]);
    let show = d.ok(&["storage", "volume", "show", "default", "custom/v1"]);
    assert!(
        show.contains("name: v1") && show.contains("type: custom"),
        "{show}"
    );
    assert_eq!(
        d.ok(&["storage", "volume", "rename", "default", "v1", "v2"]),
        "Renamed storage volume from \"v1\" to \"v2\"\n"
    );
    d.ok(&["init", "busybox", "c1"]);
    d.ok(&[
        "storage", "volume", "attach", "default", "v2", "c1", "data", "/data",
    ]);
    let out = d.run(&["storage", "volume", "delete", "default", "v2"]);
    assert!(
        err_text(&out).contains("The storage volume is still in use"),
        "{}",
        err_text(&out)
    );
    d.ok(&["start", "c1"]);
    let out = d.ok(&["exec", "c1", "--", "sh", "-c", "touch /data/x && ls /data"]);
    assert_eq!(out, "x\n");
    d.ok(&["stop", "c1", "--force"]);
    d.ok(&["storage", "volume", "detach", "default", "v2", "c1"]);
    assert_eq!(
        d.ok(&["storage", "volume", "delete", "default", "v2"]),
        "Storage volume v2 deleted\n"
    );
    no_mounts_below(d.tmp());
}

#[test]
fn btrfs_custom_volume_is_a_subvolume() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    l.ok(&["storage", "volume", "create", "bt", "bv"]);
    // A size is a qgroup limit there (tests/volumes.rs checks it is enforced).
    l.ok(&["storage", "volume", "set", "bt", "bv", "size", "100MiB"]);
    assert_eq!(
        l.ok(&["storage", "volume", "get", "bt", "bv", "size"]),
        "100MiB\n"
    );
    let dir = d.dir().join("storage-pools/bt/custom");
    // (Paths, not DirEntries: those keep the directory open, and the pool busy.)
    let vols: Vec<_> = std::fs::read_dir(&dir)
        .expect("custom")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(vols.len(), 1);
    // A btrfs subvolume's root has inode 256.
    assert_eq!(std::fs::metadata(&vols[0]).expect("stat").ino(), 256);
    l.ok(&["init", "busybox", "c1"]);
    l.ok(&["storage", "volume", "attach", "bt", "bv", "c1", "/bv"]);
    l.ok(&["start", "c1"]);
    let (code, out) = l.sh("c1", "echo b > /bv/f && stat -c %u /bv/f");
    assert_eq!((code, out.as_str()), (0, "0\n"));
    l.ok(&["stop", "c1", "--force"]);
    fails_with(&l, &["storage", "delete", "bt"], "currently in use");
    l.ok(&["delete", "c1"]);
    l.ok(&["storage", "volume", "delete", "bt", "bv"]);
    assert_eq!(std::fs::read_dir(&dir).expect("custom").count(), 0);
    l.ok(&["storage", "delete", "bt"]);
    no_mounts_below(d.tmp());
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path) -> Loop {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup");
        assert!(out.status.success(), "{}", err_text(&out));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn block_device_disks_cold_and_hot() {
    if !common::lxc_prerequisites() {
        return;
    }
    for tool in ["mkfs.ext4", "losetup"] {
        if !common::have_cmd(tool) {
            common::skip("block_device_disks_cold_and_hot", &format!("needs {tool}"));
            return;
        }
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let content = d.tmp().join("blk-content");
    std::fs::create_dir_all(&content).expect("mkdir");
    std::fs::write(content.join("hello"), "from ext4\n").expect("write");
    let img = d.tmp().join("blk.img");
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .arg("16M")
        .output()
        .expect("mkfs.ext4");
    assert!(out.status.success(), "{}", err_text(&out));
    let blank = d.tmp().join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).expect("blank");
    let (dev, zero) = (Loop::new(&img), Loop::new(&blank));
    l.ok(&["launch", "busybox", "c1"]);
    // Hot: the filesystem is probed and mounted, options passed through.
    l.ok(&[
        "config",
        "device",
        "add",
        "c1",
        "blk",
        "disk",
        &format!("source={}", dev.0),
        "path=/mnt/blk",
        "shift=true",
        "raw.mount.options=noatime,commit=7",
    ]);
    let (code, out) = l.sh(
        "c1",
        "cat /mnt/blk/hello && echo w > /mnt/blk/w && grep ' /mnt/blk ' /proc/self/mountinfo",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("from ext4\n"), "{out}");
    assert!(out.contains("noatime") && out.contains("commit=7"), "{out}");
    assert!(out.contains(" - ext4 "), "{out}");
    l.ok(&["config", "device", "remove", "c1", "blk"]);
    let (code, _) = l.sh("c1", "test -e /mnt/blk/hello");
    assert_eq!(code, 1, "the removed block disk is still mounted");
    // Not a filesystem bivy knows: refused, naming the device.
    let out = l.run(&[
        "config",
        "device",
        "add",
        "c1",
        "z",
        "disk",
        &format!("source={}", zero.0),
        "path=/mnt/z",
    ]);
    assert!(
        err_text(&out).contains("no filesystem bivy knows"),
        "{}",
        err_text(&out)
    );
    // raw.mount.options on a directory: refused rather than ignored.
    let out = l.run(&[
        "config",
        "device",
        "add",
        "c1",
        "diropt",
        "disk",
        &format!("source={}", content.display()),
        "path=/mnt/d",
        "raw.mount.options=noatime",
    ]);
    assert!(
        err_text(&out).contains("block device sources only"),
        "{}",
        err_text(&out)
    );
    // Cold and read-only: what was written is there, and nothing more can be.
    l.ok(&["stop", "c1", "--force"]);
    l.ok(&[
        "config",
        "device",
        "add",
        "c1",
        "blk",
        "disk",
        &format!("source={}", dev.0),
        "path=/mnt/blk",
        "readonly=true",
    ]);
    l.ok(&["start", "c1"]);
    let (code, out) = l.sh("c1", "cat /mnt/blk/w; touch /mnt/blk/x 2>&1");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.starts_with("w\n") && out.contains("Read-only file system"),
        "{out}"
    );
    l.ok(&["delete", "c1", "--force"]);
    no_mounts_below(d.tmp());
    drop((dev, zero));
}

#[test]
fn disk_io_limits_follow_the_config() {
    if !common::lxc_prerequisites() {
        return;
    }
    if !Path::new("/sys/fs/cgroup/blkio").is_dir() {
        common::skip(
            "disk_io_limits_follow_the_config",
            "no cgroup v1 blkio controller",
        );
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "c1"]);
    let read_bps =
        || cgroup_file(&l, "c1", "blkio", "blkio.throttle.read_bps_device").expect("blkio");
    assert_eq!(read_bps().trim(), "", "throttled before any limit");
    // The root disk, live: its pool's disk is throttled.
    l.ok(&[
        "config",
        "device",
        "override",
        "c1",
        "root",
        "limits.read=10MB",
    ]);
    let r = read_bps();
    assert!(r.trim().ends_with(" 10000000"), "{r:?}\n{}", d.log_text());
    // A host directory's disk, in operations per second, both ways (the same disk: the lower
    // limit wins for reads).
    let src = d.tmp().join("iodata");
    std::fs::create_dir_all(&src).expect("mkdir");
    l.ok(&[
        "config",
        "device",
        "add",
        "c1",
        "data",
        "disk",
        &format!("source={}", src.display()),
        "path=/mnt/data",
        "limits.max=200iops",
    ]);
    let riops = cgroup_file(&l, "c1", "blkio", "blkio.throttle.read_iops_device").expect("blkio");
    let wiops = cgroup_file(&l, "c1", "blkio", "blkio.throttle.write_iops_device").expect("blkio");
    assert!(riops.trim().ends_with(" 200"), "{riops:?}");
    assert!(wiops.trim().ends_with(" 200"), "{wiops:?}");
    // Survives a restart (applied at start), and goes when unset.
    l.ok(&["restart", "c1", "--force"]);
    assert!(read_bps().trim().ends_with(" 10000000"));
    l.ok(&["config", "device", "unset", "c1", "root", "limits.read"]);
    // Unset means gone from the device (lxc sends the key empty; LXD drops it).
    let root = l.ok(&["config", "device", "show", "c1"]);
    assert!(!root.contains("limits.read"), "{root}");
    l.ok(&["config", "device", "remove", "c1", "data"]);
    assert_eq!(read_bps().trim(), "");
    let riops = cgroup_file(&l, "c1", "blkio", "blkio.throttle.read_iops_device").expect("blkio");
    assert_eq!(riops.trim(), "");
    // Bad values, and a source on no block device: refused, not ignored.
    fails_with(
        &l,
        &[
            "config",
            "device",
            "set",
            "c1",
            "root",
            "limits.write",
            "10 potatoes",
        ],
        "Invalid value for device option \"limits.write\"",
    );
    fails_with(
        &l,
        &[
            "config",
            "device",
            "add",
            "c1",
            "shm",
            "disk",
            "source=/dev/shm",
            "path=/mnt/shm",
            "limits.read=1MB",
        ],
        "not on a block device",
    );
    l.ok(&["delete", "c1", "--force"]);
}

/// Mounts this test made on the host, unmounted (newest first) on drop.
struct HostMounts(Vec<std::path::PathBuf>);

impl HostMounts {
    fn run(args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount {args:?}: {}", err_text(&out));
    }

    /// `mount -t tmpfs` at `at`, with a file `mark` holding `text`.
    fn tmpfs(&mut self, at: &Path, text: &str) {
        std::fs::create_dir_all(at).expect("mkdir");
        Self::run(&["-t", "tmpfs", "tmpfs", &at.display().to_string()]);
        self.0.push(at.to_path_buf());
        std::fs::write(at.join("mark"), text).expect("mark");
    }

    fn umount(&mut self, at: &Path) {
        let st = std::process::Command::new("umount")
            .arg(at)
            .status()
            .expect("umount");
        assert!(st.success(), "umount {}", at.display());
        self.0.retain(|p| p != at);
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(p)
                .status();
        }
    }
}

/// The propagation line of the mount at `path` in the container's `/proc/self/mountinfo`
/// (its optional fields: `shared:N`, `master:N`, ...).
fn propagation_in(l: &Lxc<'_>, c: &str, path: &str) -> String {
    let (code, out) = l.sh(
        c,
        &format!("awk '$5 == \"{path}\" {{ for (i = 7; $i != \"-\"; i++) printf \"%s \", $i; print \"\" }}' /proc/self/mountinfo"),
    );
    assert_eq!(code, 0, "{out}");
    out.trim().to_string()
}

#[test]
fn disk_propagation_follows_the_host_one_way() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    // The source, a shared mount on the host (as on a systemd host's /).
    let src = d.tmp().join("prop");
    std::fs::create_dir_all(&src).expect("mkdir");
    let mut host = HostMounts(Vec::new());
    let s = src.display().to_string();
    HostMounts::run(&["--bind", &s, &s]);
    host.0.push(src.clone());
    HostMounts::run(&["--make-shared", &s]);
    l.ok(&["init", "busybox", "c1"]);
    for (name, prop) in [
        ("priv", "private"),
        ("slave", "rslave"),
        ("shared", "shared"),
    ] {
        l.ok(&[
            "config",
            "device",
            "add",
            "c1",
            name,
            "disk",
            &format!("source={s}"),
            &format!("path=/mnt/{name}"),
            &format!("propagation={prop}"),
        ]);
    }
    fails_with(
        &l,
        &[
            "config",
            "device",
            "add",
            "c1",
            "bad",
            "disk",
            &format!("source={s}"),
            "path=/mnt/bad",
            "propagation=rbind",
        ],
        "Invalid value for device option \"propagation\"",
    );
    l.ok(&["start", "c1"]);
    // A mount the host makes below the source after the start: seen by slave and shared only.
    host.tmpfs(&src.join("sub"), "from the host\n");
    let (code, out) = l.sh(
        "c1",
        "cat /mnt/slave/sub/mark /mnt/shared/sub/mark; test -e /mnt/priv/sub/mark; echo $?",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "from the host\nfrom the host\n1\n")
    );
    let slave = propagation_in(&l, "c1", "/mnt/slave");
    assert!(
        slave.contains("master:") && !slave.contains("shared:"),
        "{slave}"
    );
    let shared = propagation_in(&l, "c1", "/mnt/shared");
    assert!(
        shared.contains("master:") && shared.contains("shared:"),
        "{shared}"
    );
    assert_eq!(propagation_in(&l, "c1", "/mnt/priv"), "");
    // The container's own mounts never reach the host.
    for d in ["in", "in2"] {
        std::fs::create_dir(src.join(d)).expect("mkdir");
    }
    let (code, out) = l.sh(
        "c1",
        "mount -t tmpfs none /mnt/shared/in && mount -t tmpfs none /mnt/slave/in2 && echo ok",
    );
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{out}");
    let below = common::mounts_below(&src);
    assert_eq!(below, vec![src.join("sub"), src.clone()], "{below:?}");
    // The host's unmount reaches the container too.
    host.umount(&src.join("sub"));
    let (code, out) = l.sh("c1", "test -e /mnt/slave/sub/mark; echo $?");
    assert_eq!((code, out.as_str()), (0, "1\n"));
    // Hot-plugged: the same.
    l.ok(&[
        "config",
        "device",
        "add",
        "c1",
        "hot",
        "disk",
        &format!("source={s}"),
        "path=/mnt/hot",
        "propagation=slave",
    ]);
    host.tmpfs(&src.join("later"), "later\n");
    let (code, out) = l.sh(
        "c1",
        "cat /mnt/hot/later/mark; test -e /mnt/priv/later/mark; echo $?",
    );
    assert_eq!((code, out.as_str()), (0, "later\n1\n"));
    host.umount(&src.join("later"));
    l.ok(&["delete", "c1", "--force"]);
    host.umount(&src);
    no_mounts_below(d.tmp());
}
