//! Instance backups with real containers: `lxc export`/`lxc import` (the unmodified `lxc`
//! 5.0.2) and `bivy export`/`bivy import` round trips with a snapshot and files whose owner is
//! not root, `--instance-only`, the tarball's layout and owners (the container's own ids), the
//! backup API (create, list, rename, delete, `lxc info`), and hostile tarballs refused with
//! nothing left behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Daemon, Lxc};

/// `tar -tv --numeric-owner` of a tarball: one line per member.
fn listing(tarball: &Path) -> String {
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(tarball)
        .arg("--numeric-owner")
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line_of<'a>(list: &'a str, member: &str) -> &'a str {
    list.lines()
        .find(|l| l.ends_with(&format!(" {member}")))
        .unwrap_or_else(|| panic!("no member {member} in:\n{list}"))
}

/// Instance volumes on the default pool.
fn volumes(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.dir().join("storage-pools/default/containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn api(d: &Daemon, m: &str, p: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    d.api(m, p, body).expect("api call")
}

fn backup_files(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.dir().join("backups"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn export_and_import_round_trip_with_lxc_and_bivy() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "c1"]);
    let (rc, out) = l.sh("c1", "echo one > /root/f && chown 1000:1001 /root/f");
    assert_eq!(rc, 0, "{out}");
    // Names that are not UTF-8 (Latin-1 data, say) go into the backup as their bytes.
    let (rc, out) = l.sh(
        "c1",
        "mkdir /root/l1 && echo ff > /root/l1/$(printf 'x\\377') && echo fe > /root/l1/$(printf 'x\\376')",
    );
    assert_eq!(rc, 0, "{out}");
    l.ok(&["snapshot", "c1", "snap0"]);
    let (rc, out) = l.sh("c1", "echo two > /root/f");
    assert_eq!(rc, 0, "{out}");

    // lxc export of a running container; the backup is deleted after the download.
    let tarball = d.tmp().join("c1.tar.gz");
    let out = l.ok(&["export", "c1", tarball.to_str().unwrap()]);
    assert!(out.contains("Backup exported successfully!"), "{out}");
    // Root's alone, as everything under the daemon's directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.dir().join("backups"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let list = listing(&tarball);
    assert!(
        list.lines().next().unwrap().ends_with(" backup/index.yaml"),
        "{list}"
    );
    for m in [
        "backup/container/backup.yaml",
        "backup/container/metadata.yaml",
        "backup/snapshots/snap0/rootfs/root/f",
    ] {
        line_of(&list, m);
    }
    // The container's own ids, whatever the ids on disk.
    let f = line_of(&list, "backup/container/rootfs/root/f");
    assert!(f.contains(" 1000/1001 "), "{f}");
    let sh = line_of(&list, "backup/container/rootfs/bin/busybox");
    assert!(sh.contains(" 0/0 "), "{sh}");
    let backups = l.ok(&["query", "/1.0/instances/c1/backups"]);
    assert!(!backups.contains("backup0"), "{backups}");

    // Restore it under another name, and over the original after its delete.
    l.ok(&["import", tarball.to_str().unwrap(), "c2"]);
    l.ok(&["delete", "-f", "c1"]);
    l.ok(&["import", tarball.to_str().unwrap()]);
    for c in ["c1", "c2"] {
        l.ok(&["start", c]);
        let (rc, out) = l.sh(c, "cat /root/f; stat -c %u:%g /root/f");
        assert_eq!((rc, out.as_str()), (0, "two\n1000:1001\n"), "{c}");
        let (rc, out) = l.sh(
            c,
            "cat /root/l1/$(printf 'x\\377') /root/l1/$(printf 'x\\376'); ls /root/l1 | wc -l",
        );
        assert_eq!((rc, out.as_str()), (0, "ff\nfe\n2\n"), "{c}");
        let info = l.ok(&["info", c]);
        assert!(info.contains("snap0"), "{info}");
    }
    l.ok(&["restore", "c2", "snap0"]);
    let (_, out) = l.sh("c2", "cat /root/f");
    assert_eq!(out, "one\n");

    // The server's default compression.
    l.ok(&["config", "set", "backups.compression_algorithm", "zstd"]);
    let z = d.tmp().join("c1.tar.zst");
    d.ok(&["export", "c1", z.to_str().unwrap()]);
    let magic = std::fs::read(&z).unwrap();
    assert_eq!(&magic[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not zstd");
    let out = l.run(&["config", "set", "backups.compression_algorithm", "lz4"]);
    assert!(!out.status.success());

    // bivy's own client: --instance-only, xz.
    let only = d.tmp().join("c1-only.tar.xz");
    d.ok(&[
        "export",
        "c1",
        only.to_str().unwrap(),
        "--instance-only",
        "--compression",
        "xz",
    ]);
    let list = listing(&only);
    assert!(!list.contains("backup/snapshots/"), "{list}");
    d.ok(&["import", only.to_str().unwrap(), "c3"]);
    l.ok(&["start", "c3"]);
    let (_, out) = l.sh("c3", "cat /root/f");
    assert_eq!(out, "two\n");
    let snaps = l.ok(&["query", "/1.0/instances/c3/snapshots"]);
    assert!(!snaps.contains("snap0"), "{snaps}");
    for c in ["c1", "c2", "c3"] {
        l.ok(&["delete", "-f", c]);
    }
    assert!(volumes(&d).is_empty(), "{:?}", volumes(&d));
}

#[test]
fn backup_api_create_rename_delete_and_expiry() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start_with(&[("BIVY_SCHEDULER_TICK_SECS", "1")]).expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["init", "busybox", "b1"]);
    let create = |body: &str| {
        let (s, v) = api(&d, "POST", "/1.0/instances/b1/backups", Some(body));
        assert_eq!(s, 202, "{v}");
        let op = d.wait_operation(&v).expect("operation")["metadata"].clone();
        assert_eq!(op["status"], "Success", "{op}");
        op
    };
    let op = create("{}");
    assert_eq!(
        op["resources"]["backups"][0], "/1.0/backups/backup0",
        "{op}"
    );
    create(r#"{"name":"keep","compression_algorithm":"none"}"#);
    let (s, v) = api(
        &d,
        "POST",
        "/1.0/instances/b1/backups",
        Some(r#"{"name":"keep"}"#),
    );
    assert_eq!(s, 409, "{v}");
    let (s, v) = api(
        &d,
        "POST",
        "/1.0/instances/b1/backups",
        Some(r#"{"name":"a/b"}"#),
    );
    assert_eq!(s, 400, "{v}");
    let (s, v) = api(
        &d,
        "POST",
        "/1.0/instances/b1/backups",
        Some(r#"{"compression_algorithm":"nosuch"}"#),
    );
    assert_eq!(s, 400, "{v}");
    let (_, v) = api(&d, "GET", "/1.0/instances/b1/backups?recursion=1", None);
    let names: Vec<&str> = v["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["backup0", "keep"], "{v}");
    let info = l.ok(&["info", "b1"]);
    assert!(info.contains("keep"), "{info}");
    let (s, v) = api(
        &d,
        "POST",
        "/1.0/instances/b1/backups/backup0",
        Some(r#"{"name":"renamed"}"#),
    );
    assert_eq!(s, 202, "{v}");
    d.wait_operation(&v);
    let (s, v) = api(&d, "GET", "/1.0/instances/b1/backups/renamed", None);
    assert_eq!(s, 200, "{v}");
    let (s, _) = api(&d, "GET", "/1.0/instances/b1/backups/renamed/export", None);
    assert_eq!(s, 200);
    let (s, v) = api(&d, "DELETE", "/1.0/instances/b1/backups/renamed", None);
    assert_eq!(s, 202, "{v}");
    d.wait_operation(&v);
    assert_eq!(backup_files(&d).len(), 1, "{:?}", backup_files(&d));
    // An expired backup goes with the scheduler's next pass.
    create(r#"{"name":"short","expires_at":"2000-01-01T00:00:00Z"}"#);
    let mut gone = false;
    for _ in 0..50 {
        let (s, _) = api(&d, "GET", "/1.0/instances/b1/backups/short", None);
        if s == 404 {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(gone, "the expired backup is still there");
    // A tarball no record names (a create cut short by a crash) goes at the next start.
    std::fs::write(d.dir().join("backups/stray.tmp"), b"x").unwrap();
    let mut d = d;
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    assert_eq!(backup_files(&d).len(), 1, "{:?}", backup_files(&d));
    let (s, _) = api(&d, "GET", "/1.0/instances/b1/backups/keep/export", None);
    assert_eq!(s, 200);
    // The rest go with the instance.
    l.ok(&["delete", "b1"]);
    assert!(backup_files(&d).is_empty(), "{:?}", backup_files(&d));
}

/// A gzip'd tarball with a valid index.yaml for instance `name` and the given extra members.
fn hostile(path: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let snaps = match name {
        "many" | "nosnapdata" | "badtime" => "snapshots: [s0, s1]\n",
        _ => "",
    };
    // A time no listing could show.
    let time = match name {
        "badtime" => "    created_at: banana\n",
        _ => "",
    };
    let index = format!(
        "name: {name}\nbackend: dir\npool: default\n{snaps}optimized: false\ntype: container\n\
         config:\n  container:\n    name: {name}\n    architecture: x86_64\n    profiles:\n    \
         - default\n    config: {{}}\n    devices: {{}}\n  snapshots:\n  - name: s0\n{time}  - name: s1\n"
    );
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(index.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "backup/index.yaml", index.as_bytes())
        .unwrap();
    build(&mut b);
    let data = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &data).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, link: Option<&str>) -> tar::Header {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    h
}

/// What a hostile case adds to its tarball.
type Build = Box<dyn FnOnce(&mut tar::Builder<Vec<u8>>)>;

#[test]
fn hostile_backup_tarballs_are_refused_with_nothing_left() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    let outside = d.tmp().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "dotdot",
            Box::new(|b| {
                let h = raw_header(
                    b"backup/container/rootfs/../../../../evil",
                    tar::EntryType::Regular,
                    1,
                    None,
                );
                b.append(&h, &b"x"[..]).unwrap();
            }),
            "unsafe path",
        ),
        (
            "symlink",
            Box::new({
                let target = outside.to_str().unwrap().to_string();
                move |b| {
                    let h = raw_header(
                        b"backup/container/rootfs/etc",
                        tar::EntryType::Symlink,
                        0,
                        Some(&target),
                    );
                    b.append(&h, &b""[..]).unwrap();
                    let h = raw_header(
                        b"backup/container/rootfs/etc/passwd",
                        tar::EntryType::Regular,
                        1,
                        None,
                    );
                    b.append(&h, &b"x"[..]).unwrap();
                }
            }),
            "unsafe path",
        ),
        (
            "hardlink",
            Box::new(|b| {
                let h = raw_header(
                    b"backup/container/rootfs/shadow",
                    tar::EntryType::Link,
                    0,
                    Some("/etc/shadow"),
                );
                b.append(&h, &b""[..]).unwrap();
            }),
            "",
        ),
        (
            "huge",
            Box::new(|b| {
                let h = raw_header(
                    b"backup/container/rootfs/big",
                    tar::EntryType::Regular,
                    2 << 20,
                    None,
                );
                b.append(&h, &vec![0u8; 2 << 20][..]).unwrap();
            }),
            "passes the limit of 1048576 bytes",
        ),
        (
            // Each volume under the limit, the backup over it.
            "many",
            Box::new(|b| {
                for v in ["snapshots/s0", "snapshots/s1", "container"] {
                    let name = format!("backup/{v}/rootfs/part");
                    let h = raw_header(name.as_bytes(), tar::EntryType::Regular, 600 << 10, None);
                    b.append(&h, &vec![0u8; 600 << 10][..]).unwrap();
                }
            }),
            "backup is too large",
        ),
        (
            // The index names two snapshots the tarball has no files for: imported, each would
            // be an empty snapshot, and restoring one would empty the instance.
            "nosnapdata",
            Box::new(|b| {
                let h = raw_header(
                    b"backup/container/rootfs/x",
                    tar::EntryType::Regular,
                    1,
                    None,
                );
                b.append(&h, &b"x"[..]).unwrap();
            }),
            "lacks backup/snapshots/s0/rootfs, backup/snapshots/s1/rootfs",
        ),
        (
            "badtime",
            Box::new(|b| {
                for v in ["snapshots/s0", "snapshots/s1", "container"] {
                    let name = format!("backup/{v}/rootfs/x");
                    let h = raw_header(name.as_bytes(), tar::EntryType::Regular, 1, None);
                    b.append(&h, &b"x"[..]).unwrap();
                }
            }),
            "created_at \"banana\" is not a time",
        ),
        ("noindex", Box::new(|_| {}), ""),
    ];
    // The unpack limit, for the huge member.
    l.ok(&["config", "set", "images.max_unpacked_size", "1MiB"]);
    let before = volumes(&d);
    for (name, build, want) in cases {
        let path = d.tmp().join(format!("{name}.tar.gz"));
        if name == "noindex" {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let mut b = tar::Builder::new(Vec::new());
            let h = raw_header(
                b"backup/container/rootfs/x",
                tar::EntryType::Regular,
                1,
                None,
            );
            b.append(&h, &b"x"[..]).unwrap();
            std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
            std::fs::write(&path, gz.finish().unwrap()).unwrap();
        } else {
            hostile(&path, name, build);
        }
        let out = l.run(&["import", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: imported");
        assert!(err.contains(want), "{name}: {err}");
        if !want.is_empty() && name != "badtime" {
            assert!(err.contains("Invalid backup tarball: "), "{name}: {err}");
        }
        if name == "noindex" {
            assert!(err.contains("Backup is missing index.yaml"), "{err}");
        }
        let (s, _) = api(&d, "GET", &format!("/1.0/instances/{name}"), None);
        assert_eq!(s, 404, "{name}: the instance exists");
        assert_eq!(volumes(&d), before, "{name}: a volume is left");
        let snaps = d.dir().join("storage-pools/default/containers-snapshots");
        let left: Vec<_> = std::fs::read_dir(&snaps)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{name}: snapshot volumes left: {left:?}");
        assert!(
            backup_files(&d).is_empty(),
            "{name}: {:?}",
            backup_files(&d)
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.dir().join("backups"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the spool directory is root's alone");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "a file was written outside"
    );
    assert!(!d.tmp().join("evil").exists());
}

/// On a btrfs pool: a running container's backup is packed from an atomic snapshot, restored
/// onto the other pool and back; `--optimized-storage` sends btrfs streams, restored on a btrfs
/// pool only; on `dir` it makes a plain backup, as LXD does on drivers without one.
#[test]
fn backups_on_a_btrfs_pool_and_across_pools() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    l.ok(&["launch", "busybox", "k1", "-s", "bt"]);
    let (rc, out) = l.sh("k1", "echo on-btrfs > /root/f && chown 1000 /root/f");
    assert_eq!(rc, 0, "{out}");
    l.ok(&["snapshot", "k1", "s0"]);
    // Optimized: btrfs send streams, restored with btrfs receive on a btrfs pool only.
    let opt = d.tmp().join("k1-opt.tar.gz");
    l.ok(&["export", "k1", opt.to_str().unwrap(), "--optimized-storage"]);
    let list = listing(&opt);
    for m in [
        "backup/index.yaml",
        "backup/snapshots/s0.bin",
        "backup/container.bin",
    ] {
        line_of(&list, m);
    }
    assert!(!list.contains("rootfs"), "{list}");
    let out = l.run(&["import", opt.to_str().unwrap(), "k4", "-s", "default"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("differs from the target storage pool driver"),
        "{err}"
    );
    l.ok(&["import", opt.to_str().unwrap(), "k4"]);
    l.ok(&["start", "k4"]);
    let (_, out) = l.sh("k4", "cat /root/f; stat -c %u /root/f");
    assert_eq!(out, "on-btrfs\n1000\n");
    l.ok(&["copy", "k4/s0", "k5"]);
    l.ok(&["start", "k5"]);
    let (_, out) = l.sh("k5", "cat /root/f");
    assert_eq!(out, "on-btrfs\n");
    // A stream btrfs receive refuses: nothing is left of the attempt.
    let junk = d.tmp().join("junk.tar.gz");
    {
        let index = "name: j1\nbackend: btrfs\npool: bt\noptimized: true\n\
                     optimized_header: false\ntype: container\nconfig:\n  container:\n    \
                     name: j1\n    architecture: x86_64\n    profiles: [default]\n";
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("backup/index.yaml", index.as_bytes()),
            ("backup/container.bin", &b"btrfs-stream\0not really"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
        std::fs::write(&junk, gz.finish().unwrap()).unwrap();
    }
    let out = l.run(&["import", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("btrfs receive of backup/container.bin"),
        "{err}"
    );
    let (s, _) = api(&d, "GET", "/1.0/instances/j1", None);
    assert_eq!(s, 404);
    let mnt = d.dir().join("storage-pools/bt/containers");
    let left: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let t = d.tmp().join("k1.tar.gz");
    l.ok(&["export", "k1", t.to_str().unwrap()]);
    let list = listing(&t);
    assert!(
        line_of(&list, "backup/container/rootfs/root/f").contains(" 1000/0 "),
        "{list}"
    );
    line_of(&list, "backup/snapshots/s0/rootfs/root/f");
    let index = Command::new("tar")
        .args(["-xzOf", t.to_str().unwrap(), "backup/index.yaml"])
        .output()
        .unwrap();
    let index = String::from_utf8_lossy(&index.stdout);
    assert!(
        index.contains("backend: btrfs") && index.contains("pool: bt"),
        "{index}"
    );
    // The backup's pool is used when there is one of that name; -s picks another.
    l.ok(&["import", t.to_str().unwrap(), "k2", "-s", "default"]);
    l.ok(&["import", t.to_str().unwrap(), "k3"]);
    let pool_of = |c: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&l.ok(&["query", &format!("/1.0/instances/{c}")])).unwrap();
        v["expanded_devices"]["root"]["pool"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(pool_of("k2"), "default");
    assert_eq!(pool_of("k3"), "bt");
    for c in ["k2", "k3"] {
        l.ok(&["start", c]);
        let (_, out) = l.sh(c, "cat /root/f; stat -c %u /root/f");
        assert_eq!(out, "on-btrfs\n1000\n", "{c}");
    }
    // On dir, an optimized backup is a plain one.
    let t2 = d.tmp().join("k2.tar.gz");
    l.ok(&["export", "k2", t2.to_str().unwrap(), "--optimized-storage"]);
    line_of(&listing(&t2), "backup/container/rootfs/root/f");
    for c in ["k1", "k2", "k3", "k4", "k5"] {
        l.ok(&["delete", "-f", c]);
    }
    l.ok(&["storage", "delete", "bt"]);
}

/// A custom volume's optimized backup on a btrfs pool: `btrfs send` streams (LXD's
/// `backup/volume.bin`, `backup/volume-snapshots/NAME.bin`), imported with `btrfs receive` on a
/// btrfs pool only, its snapshot and owners kept.
#[test]
fn optimized_custom_volume_backups_on_btrfs() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    l.ok(&["storage", "volume", "create", "bt", "v1"]);
    l.ok(&["launch", "busybox", "k1", "-s", "bt"]);
    l.ok(&["storage", "volume", "attach", "bt", "v1", "k1", "/m1"]);
    let (rc, out) = l.sh("k1", "echo one > /m1/f && chown 1000:1001 /m1/f && sync");
    assert_eq!(rc, 0, "{out}");
    l.ok(&["storage", "volume", "snapshot", "bt", "v1", "s0"]);
    let (rc, out) = l.sh("k1", "echo two > /m1/f && sync");
    assert_eq!(rc, 0, "{out}");
    let t = d.tmp().join("v1-opt.tar.gz");
    l.ok(&[
        "storage",
        "volume",
        "export",
        "bt",
        "v1",
        t.to_str().unwrap(),
        "--optimized-storage",
    ]);
    let list = listing(&t);
    for m in [
        "backup/index.yaml",
        "backup/volume-snapshots/s0.bin",
        "backup/volume.bin",
    ] {
        line_of(&list, m);
    }
    assert!(!list.contains("backup/volume/"), "{list}");
    // Only a btrfs pool takes btrfs streams.
    let out = l.run(&[
        "storage",
        "volume",
        "import",
        "default",
        t.to_str().unwrap(),
        "v2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("differs from the target storage pool driver"),
        "{err}"
    );
    l.ok(&[
        "storage",
        "volume",
        "import",
        "bt",
        t.to_str().unwrap(),
        "v2",
    ]);
    l.ok(&["storage", "volume", "copy", "bt/v2/s0", "bt/v3"]);
    l.ok(&["storage", "volume", "attach", "bt", "v2", "k1", "/m2"]);
    l.ok(&["storage", "volume", "attach", "bt", "v3", "k1", "/m3"]);
    let (_, out) = l.sh("k1", "cat /m2/f /m3/f; stat -c %u:%g /m2/f /m3/f");
    assert_eq!(out, "two\none\n1000:1001\n1000:1001\n");
    // The imported volume is writable, its snapshot a snapshot.
    let (rc, out) = l.sh("k1", "echo three > /m2/f && cat /m2/f");
    assert_eq!((rc, out.as_str()), (0, "three\n"));
    l.ok(&["delete", "-f", "k1"]);
    for v in ["v1", "v2", "v3"] {
        l.ok(&["storage", "volume", "delete", "bt", v]);
    }
    l.ok(&["storage", "delete", "bt"]);
}
