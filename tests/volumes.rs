//! Custom storage volumes beyond create/attach (tests/devices.rs has those): snapshots and
//! restore on `dir` and `btrfs`, copy and move within and between pools (with and without
//! snapshots), the snapshot keys (`snapshots.expiry`, `snapshots.schedule`), size quotas, and
//! `attach-profile`/`detach-profile`; driven by the unmodified `lxc` 5.0.2 client and bivy's CLI.
//! Real containers, as root.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{btrfs_supported, Daemon, Lxc};

/// The one directory under `dir` (a pool's `custom/`), or panic.
fn only_entry(dir: &Path) -> PathBuf {
    let v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(v.len(), 1, "{}: {v:?}", dir.display());
    v.into_iter().next().expect("one")
}

/// Entries under `dir` (empty when it is missing).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The snapshot names of a custom volume, from the API's URL list.
fn snaps(l: &Lxc<'_>, pool: &str, vol: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&l.ok(&[
        "query",
        &format!("/1.0/storage-pools/{pool}/volumes/custom/{vol}/snapshots"),
    ]))
    .expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|u| {
            u.as_str()
                .expect("url")
                .rsplit('/')
                .next()
                .expect("name")
                .to_string()
        })
        .collect()
}

fn err_of(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Snapshot, change, restore, rename and delete on one pool.
fn snapshots_on(d: &Daemon, l: &Lxc<'_>, pool: &str) {
    let v = format!("{pool}-v");
    let ct = format!("{pool}-c");
    let root = d.dir().join("storage-pools").join(pool);
    l.ok(&["storage", "volume", "create", pool, &v]);
    l.ok(&["init", "busybox", &ct]);
    l.ok(&["storage", "volume", "attach", pool, &v, &ct, "/data"]);
    l.ok(&["start", &ct]);
    assert_eq!(
        l.sh(&ct, "echo one > /data/a && chown 1000:1000 /data/a").0,
        0
    );
    // Named by snapshots.pattern (snap%d), then by hand.
    l.ok(&["storage", "volume", "snapshot", pool, &v]);
    assert_eq!(l.sh(&ct, "echo two > /data/a && echo new > /data/b").0, 0);
    l.ok(&["storage", "volume", "snapshot", pool, &v, "named"]);
    assert_eq!(snaps(l, pool, &v), vec!["snap0", "named"]);
    let out = l.run(&["storage", "volume", "snapshot", pool, &v, "named"]);
    assert!(err_of(&out).contains("already in use"), "{out:?}");
    assert_eq!(l.sh(&ct, "echo later > /data/a").0, 0);

    // The snapshots' data is apart from the volume and, on btrfs, read-only.
    let vol_dir = only_entry(&root.join("custom"));
    let snap_parent = root
        .join("custom-snapshots")
        .join(vol_dir.file_name().expect("name"));
    assert_eq!(entries(&snap_parent).len(), 2);
    if pool != "default" {
        let s = snap_parent.join(&entries(&snap_parent)[0]);
        let e = std::fs::write(s.join("x"), b"x").expect_err("read-only snapshot");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }

    // Restore: refused while a running instance uses the volume, as LXD.
    let out = l.run(&["storage", "volume", "restore", pool, &v, "snap0"]);
    assert!(
        err_of(&out).contains("Cannot restore custom volume used by running instances"),
        "{out:?}"
    );
    l.ok(&["stop", &ct, "--force"]);
    l.ok(&["storage", "volume", "restore", pool, &v, "snap0"]);
    l.ok(&["start", &ct]);
    assert_eq!(
        l.sh(&ct, "cat /data/a; ls /data; stat -c %u /data/a").1,
        "one\na\n1000\n"
    );
    // The snapshot is unchanged by the restore and later writes.
    assert_eq!(l.sh(&ct, "echo three > /data/a").0, 0);
    l.ok(&["stop", &ct, "--force"]);
    d.ok(&["storage", "volume", "restore", pool, &v, "named"]);
    l.ok(&["start", &ct]);
    assert_eq!(l.sh(&ct, "cat /data/a /data/b").1, "two\nnew\n");

    // Listed as lxc does: info's table, `vol/snap` among the pool's volumes.
    let info = l.ok(&["storage", "volume", "info", pool, &v]);
    assert!(info.contains("snap0") && info.contains("named"), "{info}");
    let info = d.ok(&["storage", "volume", "info", pool, &v]);
    assert!(
        info.contains("Snapshots:") && info.contains("snap0") && info.contains("named"),
        "{info}"
    );
    let list = l.ok(&["storage", "volume", "list", pool, "--format=csv"]);
    assert!(list.contains(&format!("{v}/snap0")), "{list}");

    // Edit (description, expiry), rename and delete a snapshot.
    let snap_url = format!("/1.0/storage-pools/{pool}/volumes/custom/{v}/snapshots");
    let (code, body) = d
        .api(
            "PATCH",
            &format!("{snap_url}/named"),
            Some(r#"{"description":"kept"}"#),
        )
        .expect("api");
    assert_eq!(code, 200, "{body}");
    let (code, body) = d
        .api(
            "POST",
            &format!("{snap_url}/named"),
            Some(r#"{"name":"kept"}"#),
        )
        .expect("api");
    assert_eq!(code, 202, "{body}");
    d.wait_operation(&body);
    assert_eq!(snaps(l, pool, &v), vec!["snap0", "kept"]);
    let (code, body) = d
        .api("GET", &format!("{snap_url}/kept"), None)
        .expect("api");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["metadata"]["description"], "kept", "{body}");
    assert_eq!(body["metadata"]["name"], "kept", "{body}");
    // bivy's CLI takes `VOLUME/SNAPSHOT` as lxc does (show, rename within the volume, delete).
    let shown = d.ok(&["storage", "volume", "show", pool, &format!("{v}/kept")]);
    assert!(shown.contains("description: kept"), "{shown}");
    d.ok(&[
        "storage",
        "volume",
        "rename",
        pool,
        &format!("{v}/kept"),
        &format!("{v}/kept2"),
    ]);
    let out = d.run(&[
        "storage",
        "volume",
        "rename",
        pool,
        &format!("{v}/kept2"),
        "other/kept3",
    ]);
    assert!(
        err_of(&out).contains("parent volume must be the same"),
        "{out:?}"
    );
    d.ok(&[
        "storage",
        "volume",
        "rename",
        pool,
        &format!("{v}/kept2"),
        &format!("{v}/kept"),
    ]);
    l.ok(&["storage", "volume", "delete", pool, &format!("{v}/snap0")]);
    assert_eq!(snaps(l, pool, &v), vec!["kept"]);
    assert_eq!(entries(&snap_parent).len(), 1);

    // `snapshots.expiry` sets a new snapshot's expiry; --no-expiry overrides it.
    l.ok(&["storage", "volume", "set", pool, &v, "snapshots.expiry=1d"]);
    d.ok(&["storage", "volume", "snapshot", pool, &v, "exp"]);
    d.ok(&[
        "storage",
        "volume",
        "snapshot",
        pool,
        &v,
        "never",
        "--no-expiry",
    ]);
    let (_, body) = d.api("GET", &format!("{snap_url}/exp"), None).expect("api");
    let exp = body["metadata"]["expires_at"].as_str().expect("expires_at");
    assert!(exp.starts_with("20"), "{body}");
    let (_, body) = d
        .api("GET", &format!("{snap_url}/never"), None)
        .expect("api");
    assert_eq!(body["metadata"]["expires_at"], "0001-01-01T00:00:00Z");
    let out = l.run(&[
        "storage",
        "volume",
        "set",
        pool,
        &v,
        "snapshots.expiry=soon",
    ]);
    assert!(err_of(&out).contains("snapshots.expiry"), "{out:?}");

    // The snapshots follow a rename of the volume and go with its delete.
    l.ok(&["stop", &ct, "--force"]);
    l.ok(&["storage", "volume", "detach", pool, &v, &ct]);
    l.ok(&["storage", "volume", "rename", pool, &v, "renamed"]);
    assert_eq!(snaps(l, pool, "renamed"), vec!["kept", "exp", "never"]);
    l.ok(&["storage", "volume", "delete", pool, "renamed"]);
    assert!(entries(&root.join("custom")).is_empty());
    assert!(entries(&root.join("custom-snapshots")).is_empty());
    l.ok(&["delete", "--force", &ct]);
}

#[test]
fn volume_snapshots_and_restore_on_dir_and_btrfs() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    snapshots_on(&d, &l, "default");
    match btrfs_supported() {
        Err(why) => common::skip(
            "volume_snapshots_and_restore_on_dir_and_btrfs (btrfs)",
            &why,
        ),
        Ok(()) => {
            l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
            snapshots_on(&d, &l, "bt");
            l.ok(&["storage", "delete", "bt"]);
        }
    }
}

#[test]
fn volume_snapshot_schedule_and_expiry() {
    if !common::lxc_prerequisites() {
        return;
    }
    // Each scheduler tick stands for a minute.
    let d = Daemon::start_with(&[("BIVY_SCHEDULER_TICK_SECS", "1")]).expect("daemon");
    let l = Lxc::new(&d);
    l.ok(&["storage", "volume", "create", "default", "v"]);
    l.ok(&[
        "storage",
        "volume",
        "set",
        "default",
        "v",
        "snapshots.schedule=* * * * *",
        "snapshots.pattern=auto-%d",
    ]);
    let t = Instant::now();
    while snaps(&l, "default", "v").is_empty() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    l.ok(&[
        "storage",
        "volume",
        "unset",
        "default",
        "v",
        "snapshots.schedule",
    ]);
    let taken = snaps(&l, "default", "v");
    assert!(
        !taken.is_empty() && taken.iter().all(|s| s.starts_with("auto-")),
        "{taken:?}"
    );
    // An expiry in the past: removed at the next pass.
    let url = format!(
        "/1.0/storage-pools/default/volumes/custom/v/snapshots/{}",
        taken[0]
    );
    let (code, body) = d
        .api(
            "PUT",
            &url,
            Some(r#"{"expires_at":"2001-01-01T00:00:00Z"}"#),
        )
        .expect("api");
    assert_eq!(code, 200, "{body}");
    let t = Instant::now();
    while snaps(&l, "default", "v").contains(&taken[0]) && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!snaps(&l, "default", "v").contains(&taken[0]));

    // What a killed daemon leaves: snapshot data no record names goes, a restore caught
    // between its renames is undone; recorded snapshots stay.
    l.ok(&["storage", "volume", "snapshot", "default", "v", "keep"]);
    let kept = snaps(&l, "default", "v");
    assert!(kept.contains(&"keep".to_string()), "{kept:?}");
    let root = d.dir().join("storage-pools/default");
    let vol = only_entry(&root.join("custom"));
    let snap_parent = root
        .join("custom-snapshots")
        .join(vol.file_name().expect("name"));
    std::fs::create_dir_all(snap_parent.join("stray")).expect("stray snapshot");
    std::fs::create_dir_all(root.join("custom-snapshots/novolume/x")).expect("stray parent");
    std::fs::write(vol.join("f"), b"kept").expect("write");
    let old = vol.with_file_name(format!(
        "{}.old",
        vol.file_name().expect("name").to_string_lossy()
    ));
    let mut d = d;
    d.kill9();
    std::fs::rename(&vol, &old).expect("half a restore");
    d.restart().expect("restart");
    let l = Lxc::new(&d);
    assert_eq!(
        std::fs::read(vol.join("f")).expect("the volume is back"),
        b"kept"
    );
    assert!(!old.exists());
    assert!(!snap_parent.join("stray").exists());
    assert!(!root.join("custom-snapshots/novolume").exists());
    assert_eq!(snaps(&l, "default", "v"), kept);
    assert_eq!(entries(&snap_parent).len(), kept.len());
    l.ok(&["storage", "volume", "delete", "default", "v"]);
}

#[test]
fn volume_copy_and_move_between_dir_and_btrfs() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    let bt = d.dir().join("storage-pools/bt");
    l.ok(&["storage", "volume", "create", "default", "src"]);
    l.ok(&["init", "busybox", "c"]);
    l.ok(&["storage", "volume", "attach", "default", "src", "c", "/src"]);
    l.ok(&["start", "c"]);
    assert_eq!(
        l.sh(
            "c",
            "echo one > /src/a && chown 1000:1000 /src/a && ln -s /etc/hostname /src/link"
        )
        .0,
        0
    );
    l.ok(&["storage", "volume", "snapshot", "default", "src", "s0"]);
    assert_eq!(l.sh("c", "echo two > /src/a").0, 0);

    // dir -> btrfs with snapshots (lxc), while the source is attached to a running container.
    let out = l.ok(&["storage", "volume", "copy", "default/src", "bt/dst"]);
    assert!(out.contains("Storage volume copied successfully!"), "{out}");
    assert_eq!(snaps(&l, "bt", "dst"), vec!["s0"]);
    let dst_dir = only_entry(&bt.join("custom"));
    // Copied, not followed: the link is still a link.
    assert_eq!(
        std::fs::read_link(dst_dir.join("link")).expect("symlink"),
        Path::new("/etc/hostname")
    );
    // Without snapshots, and within one pool (bivy's CLI).
    d.ok(&[
        "storage",
        "volume",
        "copy",
        "default/src",
        "default/only",
        "--volume-only",
    ]);
    assert!(snaps(&l, "default", "only").is_empty());
    let out = l.run(&["storage", "volume", "copy", "default/src", "bt/dst"]);
    assert!(err_of(&out).contains("already exists"), "{out:?}");

    l.ok(&["stop", "c", "--force"]);
    l.ok(&["storage", "volume", "attach", "bt", "dst", "c", "/dst"]);
    l.ok(&[
        "storage", "volume", "attach", "default", "only", "c", "/only",
    ]);
    l.ok(&["start", "c"]);
    assert_eq!(
        l.sh("c", "cat /dst/a /only/a; stat -c %u /dst/a").1,
        "two\ntwo\n1000\n"
    );
    // The copy's snapshot is the source's: restored, it has the old content.
    l.ok(&["stop", "c", "--force"]);
    l.ok(&["storage", "volume", "restore", "bt", "dst", "s0"]);

    // Move btrfs -> dir (bivy's CLI: the server moves it): refused while a running instance
    // uses it; the devices naming it follow.
    l.ok(&["start", "c"]);
    let out = d.run(&["storage", "volume", "move", "bt/dst", "default/moved"]);
    assert!(
        err_of(&out).contains("Volume is still in use by running instances"),
        "{out:?}"
    );
    l.ok(&["stop", "c", "--force"]);
    let out = d.ok(&["storage", "volume", "move", "bt/dst", "default/moved"]);
    assert!(out.contains("Storage volume moved successfully!"), "{out}");
    assert!(entries(&bt.join("custom")).is_empty());
    assert!(entries(&bt.join("custom-snapshots")).is_empty());
    assert_eq!(snaps(&l, "default", "moved"), vec!["s0"]);
    let inst: serde_json::Value =
        serde_json::from_str(&l.ok(&["query", "/1.0/instances/c"])).expect("json");
    let moved = inst["devices"]
        .as_object()
        .expect("devices")
        .values()
        .find(|v| v["path"] == "/dst")
        .expect("the /dst device")
        .clone();
    assert_eq!(moved["pool"], "default", "{inst}");
    assert_eq!(moved["source"], "moved", "{inst}");
    l.ok(&["start", "c"]);
    assert_eq!(l.sh("c", "cat /dst/a").1, "one\n");

    // lxc moves between pools as a copy and a delete of the source; a new volume from a
    // snapshot.
    l.ok(&["storage", "volume", "create", "default", "loose"]);
    l.ok(&["storage", "volume", "snapshot", "default", "loose", "s"]);
    l.ok(&["storage", "volume", "move", "default/loose", "bt/loose"]);
    assert_eq!(snaps(&l, "bt", "loose"), vec!["s"]);
    // Within the btrfs pool: subvolume snapshots, the copy's snapshots read-only too.
    l.ok(&["storage", "volume", "copy", "bt/loose", "bt/loose2"]);
    assert_eq!(snaps(&l, "bt", "loose2"), vec!["s"]);
    for p in std::fs::read_dir(bt.join("custom-snapshots"))
        .expect("dir")
        .flatten()
    {
        let s = only_entry(&p.path());
        let e = std::fs::write(s.join("x"), b"x").expect_err("read-only snapshot");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    l.ok(&["storage", "volume", "delete", "bt", "loose2"]);
    l.ok(&[
        "storage",
        "volume",
        "copy",
        "bt/loose/s",
        "default/fromsnap",
    ]);
    assert!(snaps(&l, "default", "fromsnap").is_empty());
    l.ok(&["storage", "volume", "delete", "default", "fromsnap"]);
    l.ok(&["storage", "volume", "delete", "bt", "loose"]);

    // Back to btrfs with bivy's CLI; a move within a pool is a rename.
    l.ok(&["stop", "c", "--force"]);
    let out = d.ok(&["storage", "volume", "move", "default/moved", "bt/back"]);
    assert!(out.contains("Storage volume moved successfully!"), "{out}");
    let out = d.ok(&["storage", "volume", "move", "bt/back", "bt/again"]);
    assert!(out.contains("Renamed storage volume"), "{out}");
    assert_eq!(snaps(&l, "bt", "again"), vec!["s0"]);

    l.ok(&["delete", "--force", "c"]);
    for (p, v) in [("default", "src"), ("default", "only"), ("bt", "again")] {
        l.ok(&["storage", "volume", "delete", p, v]);
    }
    l.ok(&["storage", "delete", "bt"]);
}

#[test]
fn volume_attach_and_detach_profile() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.ok(&["storage", "volume", "create", "default", "v"]);
    l.ok(&["profile", "create", "p"]);
    d.ok(&[
        "storage",
        "volume",
        "attach-profile",
        "default",
        "v",
        "p",
        "data",
        "/data",
    ]);
    let p: serde_json::Value =
        serde_json::from_str(&l.ok(&["query", "/1.0/profiles/p"])).expect("json");
    assert_eq!(
        p["devices"]["data"],
        serde_json::json!({"type": "disk", "pool": "default", "source": "v", "path": "/data"}),
        "{p}"
    );
    let out = d.run(&[
        "storage",
        "volume",
        "attach-profile",
        "default",
        "v",
        "p",
        "data",
        "/x",
    ]);
    assert!(
        err_of(&out).contains("The device already exists"),
        "{out:?}"
    );
    let out = d.run(&[
        "storage",
        "volume",
        "attach-profile",
        "default",
        "nosuch",
        "p",
        "/x",
    ]);
    assert!(err_of(&out).contains("not found"), "{out:?}");
    let out = l.run(&["storage", "volume", "delete", "default", "v"]);
    assert!(err_of(&out).contains("still in use"), "{out:?}");
    d.ok(&["storage", "volume", "detach-profile", "default", "v", "p"]);
    let p: serde_json::Value =
        serde_json::from_str(&l.ok(&["query", "/1.0/profiles/p"])).expect("json");
    assert!(p["devices"].get("data").is_none(), "{p}");
    let out = d.run(&["storage", "volume", "detach-profile", "default", "v", "p"]);
    assert!(
        err_of(&out).contains("No device found for this storage volume"),
        "{out:?}"
    );
    l.ok(&["profile", "delete", "p"]);
    l.ok(&["storage", "volume", "delete", "default", "v"]);
}

/// Write `mib` MiB of zeros to `path`, syncing; the error if it fails.
fn write_mib(path: &Path, mib: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()
}

#[test]
fn volume_size_is_enforced_on_btrfs_and_refused_on_dir() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    let bt = d.dir().join("storage-pools/bt");
    l.ok(&["storage", "volume", "create", "bt", "q", "size=20MiB"]);
    let vol = only_entry(&bt.join("custom"));
    // Past the limit: the filesystem refuses the write.
    let e = write_mib(&vol.join("big"), 40).expect_err("a write past the size limit");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    std::fs::remove_file(vol.join("big")).expect("rm");
    // From a container too.
    l.ok(&["init", "busybox", "c"]);
    l.ok(&["storage", "volume", "attach", "bt", "q", "c", "/q"]);
    l.ok(&["start", "c"]);
    let (code, out) = l.sh("c", "dd if=/dev/zero of=/q/f bs=1M count=40 && sync");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("quota"), "{out}");
    assert_eq!(l.sh("c", "rm /q/f && sync").0, 0);
    // Under the limit: fine. Raised: more fits.
    assert_eq!(
        l.sh("c", "dd if=/dev/zero of=/q/f bs=1M count=10 && sync")
            .0,
        0
    );
    l.ok(&["stop", "c", "--force"]);
    d.ok(&["storage", "volume", "set", "bt", "q", "size=100MiB"]);
    write_mib(&vol.join("big"), 40).expect("under the raised limit");
    std::fs::remove_file(vol.join("big")).expect("rm");
    // A restored or copied volume keeps its limit.
    l.ok(&["storage", "volume", "snapshot", "bt", "q", "s"]);
    l.ok(&["storage", "volume", "set", "bt", "q", "size=20MiB"]);
    l.ok(&["storage", "volume", "restore", "bt", "q", "s"]);
    let vol = only_entry(&bt.join("custom"));
    let e = write_mib(&vol.join("big"), 40).expect_err("the limit after a restore");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    std::fs::remove_file(vol.join("big")).expect("rm");
    l.ok(&["storage", "volume", "copy", "bt/q", "bt/q2"]);
    let q2 = std::fs::read_dir(bt.join("custom"))
        .expect("custom")
        .flatten()
        .map(|e| e.path())
        .find(|p| p != &vol)
        .expect("the copy");
    let e = write_mib(&q2.join("big"), 40).expect_err("the limit on a copy");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    std::fs::remove_file(q2.join("big")).expect("rm");
    // Unset: no limit.
    l.ok(&["storage", "volume", "unset", "bt", "q2", "size"]);
    write_mib(&q2.join("big"), 40).expect("no limit");
    // A limit set below what the volume holds can still be raised and removed (the call that
    // changes it was charged to the full volume and refused with EDQUOT).
    l.ok(&["storage", "volume", "set", "bt", "q2", "size=20MiB"]);
    l.ok(&["storage", "volume", "set", "bt", "q2", "size=200MiB"]);
    write_mib(&q2.join("more"), 40).expect("under the raised limit");
    l.ok(&["storage", "volume", "set", "bt", "q2", "size=20MiB"]);
    l.ok(&["storage", "volume", "unset", "bt", "q2", "size"]);
    write_mib(&q2.join("more"), 60).expect("no limit again");

    // dir: a clear error, never a silently unlimited volume; nothing made.
    let out = l.run(&["storage", "volume", "create", "default", "dq", "size=20MiB"]);
    assert!(err_of(&out).contains("project quotas"), "{out:?}");
    let out = l.run(&["storage", "volume", "copy", "bt/q", "default/dq"]);
    assert!(err_of(&out).contains("project quotas"), "{out:?}");
    assert!(entries(&d.dir().join("storage-pools/default/custom")).is_empty());

    l.ok(&["delete", "--force", "c"]);
    l.ok(&["storage", "volume", "delete", "bt", "q"]);
    l.ok(&["storage", "volume", "delete", "bt", "q2"]);
    l.ok(&["storage", "delete", "bt"]);
}

#[test]
fn root_disk_size_is_enforced_on_btrfs_and_refused_on_dir() {
    if !common::btrfs_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    // dir: refused, naming why.
    l.ok(&["init", "busybox", "dc"]);
    let out = l.run(&["config", "device", "override", "dc", "root", "size=50MiB"]);
    assert!(err_of(&out).contains("project quotas"), "{out:?}");
    l.ok(&["delete", "dc"]);

    l.ok(&["storage", "create", "bt", "btrfs", "size=1GiB"]);
    l.ok(&["profile", "create", "small"]);
    l.ok(&[
        "profile",
        "device",
        "add",
        "small",
        "root",
        "disk",
        "path=/",
        "pool=bt",
        "size=30MiB",
    ]);
    l.ok(&["launch", "busybox", "c", "-p", "small"]);
    let (code, out) = l.sh("c", "dd if=/dev/zero of=/root/f bs=1M count=60 && sync");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("quota"), "{out}");
    assert_eq!(l.sh("c", "rm /root/f && sync").0, 0);
    // Raised on the instance (override), live.
    l.ok(&["config", "device", "override", "c", "root", "size=200MiB"]);
    let (code, out) = l.sh("c", "dd if=/dev/zero of=/root/f bs=1M count=60 && sync");
    assert_eq!(code, 0, "{out}");
    assert_eq!(l.sh("c", "rm /root/f && sync").0, 0);
    // Back to the profile's limit; a restore (a new volume) keeps it from the next start.
    l.ok(&["config", "device", "remove", "c", "root"]);
    l.ok(&["snapshot", "c", "s"]);
    l.ok(&["restore", "c", "s"]);
    let (code, out) = l.sh("c", "dd if=/dev/zero of=/root/f bs=1M count=60 && sync");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("quota"), "{out}");
    // A move to a dir pool, where the size cannot hold: refused before anything is copied.
    l.ok(&["stop", "--force", "c"]);
    let dir_vols = || {
        std::fs::read_dir(d.dir().join("storage-pools/default/containers"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let before = dir_vols();
    let out = l.run(&["move", "c", "-s", "default"]);
    assert!(err_of(&out).contains("project quotas"), "{out:?}");
    assert_eq!(dir_vols(), before);
    l.ok(&["start", "c"]);
    l.ok(&["delete", "--force", "c"]);
    l.ok(&["profile", "delete", "small"]);

    // The loop pool grows while mounted (its file, loop device and filesystem); it never shrinks.
    let total = || {
        let v: serde_json::Value =
            serde_json::from_str(&l.ok(&["query", "/1.0/storage-pools/bt/resources"]))
                .expect("json");
        v["space"]["total"].as_u64().expect("space.total")
    };
    let before = total();
    l.ok(&["storage", "set", "bt", "size=2GiB"]);
    assert!(total() > before + (768 << 20), "{before} -> {}", total());
    assert_eq!(l.ok(&["storage", "get", "bt", "size"]).trim(), "2GiB");
    let img = d.dir().join("disks/bt.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 << 30);
    let out = l.run(&["storage", "set", "bt", "size=1GiB"]);
    assert!(err_of(&out).contains("cannot shrink"), "{out:?}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 << 30);
    assert_eq!(l.ok(&["storage", "get", "bt", "size"]).trim(), "2GiB");
    l.ok(&["storage", "delete", "bt"]);
}

/// The directory of custom volume `vol` on the `default` pool.
fn volume_dir(d: &Daemon, vol: &str) -> PathBuf {
    let db = d.database();
    let uuid = db["volumes"]["default"][vol]["volume"]
        .as_str()
        .unwrap_or_else(|| panic!("no volume {vol}: {}", db["volumes"]));
    d.dir().join("storage-pools/default/custom").join(uuid)
}

/// A gzipped tarball of `(name, kind, data)` members, names taken raw.
fn tarball(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        let raw = name.as_bytes();
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// index.yaml as LXD 5.0.2 wrote it for `lxc storage volume export default v1` (captured on
/// this machine kind).
const LXD_INDEX: &str = "name: v1\nbackend: dir\npool: default\nsnapshots:\n- snap0\noptimized: false\noptimized_header: false\ntype: custom\nconfig:\n  volume:\n    config:\n      user.k: val\n    description: \"\"\n    name: v1\n    type: custom\n    used_by: []\n    location: none\n    content_type: filesystem\n    project: default\n    created_at: 0001-01-01T00:00:00Z\n  volume_snapshots:\n  - description: \"\"\n    expires_at: 0001-01-01T00:00:00Z\n    name: snap0\n    config:\n      user.k: val\n    content_type: filesystem\n    created_at: 0001-01-01T00:00:00Z\n";

#[test]
fn volume_export_and_import_in_lxds_format() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start_with(&[("BIVY_SCHEDULER_TICK_SECS", "1")]).expect("daemon");
    let l = Lxc::new(&d);
    // lxc's first run prints its greeting and fails the command; have it before.
    let _ = l.run(&["storage", "list"]);
    l.ok(&["storage", "volume", "create", "default", "v1", "user.k=val"]);
    let dir = volume_dir(&d, "v1");
    std::fs::write(dir.join("f"), "one\n").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/owned"), "x").unwrap();
    std::os::unix::fs::chown(dir.join("sub/owned"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
    l.ok(&["storage", "volume", "snapshot", "default", "v1", "snap0"]);
    std::fs::write(dir.join("f"), "two\n").unwrap();

    // Export: LXD's layout, the backup deleted on the server afterwards.
    let t = d.tmp().join("v1.tar.gz");
    l.ok(&[
        "storage",
        "volume",
        "export",
        "default",
        "v1",
        t.to_str().unwrap(),
    ]);
    let list = std::process::Command::new("tar")
        .args(["-tzf"])
        .arg(&t)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let first = list.lines().next().unwrap_or("");
    assert_eq!(first, "backup/index.yaml", "{list}");
    for m in [
        "backup/volume/f",
        "backup/volume/sub/owned",
        "backup/volume/link",
        "backup/volume-snapshots/snap0/f",
    ] {
        assert!(list.lines().any(|x| x == m), "{m}: {list}");
    }
    let (_, backups) = d
        .api(
            "GET",
            "/1.0/storage-pools/default/volumes/custom/v1/backups",
            None,
        )
        .unwrap();
    assert_eq!(backups["metadata"], serde_json::json!([]), "{backups}");
    let only = d.tmp().join("v1-only.tar.gz");
    l.ok(&[
        "storage",
        "volume",
        "export",
        "default",
        "v1",
        only.to_str().unwrap(),
        "--volume-only",
    ]);
    let list2 = std::process::Command::new("tar")
        .args(["-tzf"])
        .arg(&only)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list2.stdout).contains("volume-snapshots"));

    // Import under another name: config, snapshot, contents, owners, links.
    l.ok(&[
        "storage",
        "volume",
        "import",
        "default",
        t.to_str().unwrap(),
        "v2",
    ]);
    assert_eq!(
        l.ok(&["storage", "volume", "get", "default", "v2", "user.k"])
            .trim(),
        "val"
    );
    assert_eq!(snaps(&l, "default", "v2"), ["snap0"]);
    let v2 = volume_dir(&d, "v2");
    assert_eq!(std::fs::read_to_string(v2.join("f")).unwrap(), "two\n");
    let md = std::fs::metadata(v2.join("sub/owned")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.gid()), (1000, 1001));
    assert_eq!(
        std::fs::read_link(v2.join("link")).unwrap(),
        Path::new("/etc/passwd")
    );
    // The snapshot's content came too: restoring it brings "one" back.
    l.ok(&["storage", "volume", "restore", "default", "v2", "snap0"]);
    assert_eq!(std::fs::read_to_string(v2.join("f")).unwrap(), "one\n");
    // The name is taken now.
    let out = l.run(&[
        "storage",
        "volume",
        "import",
        "default",
        t.to_str().unwrap(),
        "v2",
    ]);
    assert!(err_of(&out).contains("already exists"));

    // A tarball as LXD 5.0.2 writes it.
    let lxd = d.tmp().join("lxd.tar.gz");
    use tar::EntryType::{Directory as D, Regular as R};
    std::fs::write(
        &lxd,
        tarball(&[
            ("backup/index.yaml", R, LXD_INDEX.as_bytes()),
            ("backup/volume-snapshots/snap0", D, b""),
            ("backup/volume-snapshots/snap0/f", R, b"hello\n"),
            ("backup/volume", D, b""),
            ("backup/volume/f", R, b"two\n"),
        ]),
    )
    .unwrap();
    // Under the index's name (v1): taken, refused; v1 is as it was.
    let out = l.run(&[
        "storage",
        "volume",
        "import",
        "default",
        lxd.to_str().unwrap(),
    ]);
    assert!(err_of(&out).contains("already exists"));
    assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "two\n");
    let out = l.run(&[
        "storage",
        "volume",
        "import",
        "default",
        lxd.to_str().unwrap(),
        "v3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(volume_dir(&d, "v3").join("f")).unwrap(),
        "two\n"
    );

    // Hostile members: refused, nothing of the volume left.
    let bad = d.tmp().join("bad.tar.gz");
    let index = LXD_INDEX.replace("name: v1\n", "name: v4\n");
    std::fs::write(
        &bad,
        tarball(&[
            ("backup/index.yaml", R, index.as_bytes()),
            ("backup/volume/../../../../escape", R, b"evil"),
        ]),
    )
    .unwrap();
    let before = entries(&d.dir().join("storage-pools/default/custom"));
    let out = l.run(&[
        "storage",
        "volume",
        "import",
        "default",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(
        d.api("GET", "/1.0/storage-pools/default/volumes/custom/v4", None)
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        entries(&d.dir().join("storage-pools/default/custom")),
        before
    );
    assert!(!d.dir().join("escape").exists() && !d.tmp().join("escape").exists());

    // A backup kept on the server goes with its volume.
    let (s, op) = d
        .api(
            "POST",
            "/1.0/storage-pools/default/volumes/custom/v3/backups",
            Some(r#"{"name": "keep"}"#),
        )
        .unwrap();
    assert_eq!(s, 202, "{op}");
    d.wait_operation(&op);
    let files = entries(&d.dir().join("backups"));
    assert_eq!(files.len(), 1, "{files:?}");
    // An expired one goes with the scheduler's next pass.
    let (s, op) = d
        .api(
            "POST",
            "/1.0/storage-pools/default/volumes/custom/v3/backups",
            Some(r#"{"name": "short", "expires_at": "2000-01-01T00:00:00Z"}"#),
        )
        .unwrap();
    assert_eq!(s, 202, "{op}");
    d.wait_operation(&op);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d
        .api(
            "GET",
            "/1.0/storage-pools/default/volumes/custom/v3/backups/short",
            None,
        )
        .unwrap()
        .0
        != 404
    {
        assert!(
            Instant::now() < deadline,
            "the expired backup is still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(entries(&d.dir().join("backups")), files);
    l.ok(&["storage", "volume", "delete", "default", "v3"]);
    assert!(entries(&d.dir().join("backups")).is_empty());
}

/// `storage volume copy --refresh` on one server: the target's snapshots the source lacks go,
/// the source's it lacks come, its data becomes the source's; a missing target is a plain
/// copy; `--volume-only` leaves the snapshots alone.
#[test]
fn volume_copy_refresh() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    let _ = l.run(&["storage", "list"]);
    l.ok(&["storage", "volume", "create", "default", "v1"]);
    let src = volume_dir(&d, "v1");
    std::fs::write(src.join("f"), "one\n").unwrap();
    l.ok(&["storage", "volume", "snapshot", "default", "v1", "s0"]);
    l.ok(&["storage", "volume", "snapshot", "default", "v1", "s1"]);
    l.ok(&["storage", "volume", "copy", "default/v1", "default/v2"]);
    assert_eq!(snaps(&l, "default", "v2"), ["s0", "s1"]);
    // The source moves on; the copy gets changes of its own.
    l.ok(&["storage", "volume", "delete", "default", "v1/s0"]);
    std::fs::write(src.join("f"), "two\n").unwrap();
    std::fs::write(src.join("g"), "new\n").unwrap();
    l.ok(&["storage", "volume", "snapshot", "default", "v1", "s2"]);
    let dst = volume_dir(&d, "v2");
    std::fs::write(dst.join("extra"), "mine\n").unwrap();
    l.ok(&["storage", "volume", "snapshot", "default", "v2", "mine"]);
    let refresh = |extra: &[&str]| {
        let mut args = vec![
            "storage",
            "volume",
            "copy",
            "default/v1",
            "default/v2",
            "--refresh",
        ];
        args.extend_from_slice(extra);
        l.ok(&args);
    };
    // --volume-only: the data only.
    refresh(&["--volume-only"]);
    assert_eq!(snaps(&l, "default", "v2"), ["s0", "s1", "mine"]);
    let dst = volume_dir(&d, "v2");
    assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "two\n");
    assert!(!dst.join("extra").exists(), "the target's own file stayed");
    std::fs::write(dst.join("extra"), "mine\n").unwrap();
    refresh(&[]);
    assert_eq!(snaps(&l, "default", "v2"), ["s1", "s2"]);
    let dst = volume_dir(&d, "v2");
    assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "two\n");
    assert_eq!(std::fs::read_to_string(dst.join("g")).unwrap(), "new\n");
    assert!(!dst.join("extra").exists());
    // The new snapshot's own data came: restoring it keeps "two", the old one brings "one".
    l.ok(&["storage", "volume", "restore", "default", "v2", "s1"]);
    assert_eq!(
        std::fs::read_to_string(volume_dir(&d, "v2").join("f")).unwrap(),
        "one\n"
    );
    l.ok(&["storage", "volume", "restore", "default", "v2", "s2"]);
    assert_eq!(
        std::fs::read_to_string(volume_dir(&d, "v2").join("g")).unwrap(),
        "new\n"
    );
    // No target yet: a plain copy.
    l.ok(&[
        "storage",
        "volume",
        "copy",
        "default/v1",
        "default/v3",
        "--refresh",
    ]);
    assert_eq!(snaps(&l, "default", "v3"), ["s1", "s2"]);
    // From itself: refused, nothing changed.
    let out = l.run(&[
        "storage",
        "volume",
        "copy",
        "default/v1",
        "default/v1",
        "--refresh",
    ]);
    assert!(!out.status.success());
    assert_eq!(snaps(&l, "default", "v1"), ["s1", "s2"]);
    // Nothing left beside the volumes (no `.restore`/`.old`).
    let left: Vec<String> = std::fs::read_dir(d.dir().join("storage-pools/default/custom"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
