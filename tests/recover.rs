//! `bivy admin recover` (LXD's `lxd recover`): a daemon whose state database is lost keeps every
//! volume it finds on its pools (a record file beside each says it was finished), and the
//! recover dialog brings back instances (a running one with its init PID), their snapshots,
//! custom volumes and whole pools the database lacks, after the user creates what they need.

mod common;

use std::process::Output;

use common::{btrfs_supported, Daemon};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `bivy admin recover` with `answers` on its stdin, one per line.
fn recover(d: &Daemon, answers: &str) -> Output {
    d.with_stdin(&["admin", "recover"], answers.as_bytes())
}

fn init_pid(d: &Daemon, name: &str) -> i64 {
    let (status, v) = d
        .api("GET", &format!("/1.0/instances/{name}/state"), None)
        .expect("state");
    assert_eq!(status, 200, "{v}");
    v["metadata"]["pid"].as_i64().expect("pid")
}

/// Lose the state database: stop the daemon, delete it, start again.
fn lose_database(d: &mut Daemon) {
    d.stop();
    std::fs::remove_file(d.dir().join("database.json")).expect("remove database.json");
    d.restart().expect("restart");
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn a_lost_database_loses_nothing_and_recover_brings_it_back() {
    let mut d = Daemon::start().expect("daemon");
    d.import_busybox();
    d.ok(&["profile", "create", "extra"]);
    d.ok(&["launch", "busybox", "c1"]);
    d.ok(&["exec", "c1", "--", "sh", "-c", "echo kept > /root/mark"]);
    d.ok(&["snapshot", "c1", "s1"]);
    d.ok(&["init", "busybox", "c2", "-p", "default", "-p", "extra"]);
    d.ok(&["storage", "volume", "create", "default", "v1"]);
    d.ok(&["storage", "volume", "snapshot", "default", "v1", "vs1"]);
    let pid = init_pid(&d, "c1");
    let pool = d.dir().join("storage-pools/default");
    assert_eq!(entries(&pool.join("containers")), 2);

    lose_database(&mut d);
    // Nothing recorded, nothing removed: the volumes carry their record files.
    let list = d.ok(&["list", "--format", "csv", "-c", "n"]);
    assert_eq!(list.trim(), "", "{list}");
    assert_eq!(
        entries(&pool.join("containers")),
        2,
        "instance volumes kept; daemon log:\n{}",
        d.log_text()
    );
    assert_eq!(entries(&pool.join("custom")), 1, "custom volume kept");

    // The profile c2 uses is missing: listed, and nothing recovered without it.
    let out = recover(&d, "no\nyes\n");
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for want in [
        "Container \"c1\" on pool \"default\" in project \"default\" (includes 1 snapshots)",
        "Container \"c2\" on pool \"default\" in project \"default\"",
        "Volume \"v1\" on pool \"default\" in project \"default\" (includes 1 snapshots)",
        "You are currently missing the following:\n - Profile \"extra\" in project \"default\"",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{stdout}");
    }
    assert_eq!(d.ok(&["list", "--format", "csv", "-c", "n"]).trim(), "");

    d.ok(&["profile", "create", "extra"]);
    let out = recover(&d, "no\nyes\nyes\n");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert!(stdout.contains("Starting recovery..."), "{stdout}");
    let list = d.ok(&["list", "--format", "csv", "-c", "ns"]);
    assert!(list.contains("c1,RUNNING"), "{list}");
    assert!(list.contains("c2,STOPPED"), "{list}");
    // The running container was taken up as it was: same init, same files, its snapshot.
    assert_eq!(init_pid(&d, "c1"), pid);
    assert_eq!(
        d.ok(&["exec", "c1", "--", "cat", "/root/mark"]).trim(),
        "kept"
    );
    let (_, snaps) = d
        .api("GET", "/1.0/instances/c1/snapshots", None)
        .expect("snapshots");
    assert_eq!(
        snaps["metadata"],
        serde_json::json!(["/1.0/instances/c1/snapshots/s1"])
    );
    d.ok(&["restore", "c1", "s1"]);
    let (_, v) = d
        .api(
            "GET",
            "/1.0/storage-pools/default/volumes/custom/v1/snapshots",
            None,
        )
        .expect("volume snapshots");
    assert_eq!(v["metadata"].as_array().map(Vec::len), Some(1), "{v}");
    let c2 = d.ok(&["config", "show", "c2"]);
    assert!(c2.contains("- extra"), "{c2}");
    d.ok(&["start", "c2"]);

    // A second run finds nothing left.
    let out = recover(&d, "no\nyes\n");
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("No unknown volumes found. Nothing to do."),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_pool_without_a_record_is_kept_and_recovered() {
    if let Err(why) = btrfs_supported() {
        common::skip("a_pool_without_a_record_is_kept_and_recovered", &why);
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    d.import_busybox();
    d.ok(&["storage", "create", "bp", "btrfs", "size=512MiB"]);
    d.ok(&["init", "busybox", "c3", "-s", "bp"]);
    let image = d.dir().join("disks/bp.img");

    lose_database(&mut d);
    assert!(image.is_file(), "the pool's loop file is kept");

    // A pool named by hand must be one: a directory without a pool's records is refused.
    let empty = d.tmp().join("not-a-pool");
    std::fs::create_dir_all(&empty).expect("dir");
    let body = serde_json::json!({"pools": [{"name": "x", "driver": "dir",
        "config": {"source": empty.display().to_string()}}]})
    .to_string();
    let (status, v) = d
        .api("POST", "/internal/recover/validate", Some(&body))
        .expect("validate");
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("holds no bivy storage pool"),
        "{v}"
    );

    // A record whose snapshot names a path outside its volume is refused, not followed.
    let default = d.dir().join("storage-pools/default");
    let hostile_vol = default.join("containers/0badc0de");
    std::fs::create_dir_all(hostile_vol.join("rootfs")).expect("volume");
    let hostile_rec = default.join("bivy-records/instances/0badc0de.json");
    std::fs::create_dir_all(hostile_rec.parent().expect("parent")).expect("records dir");
    let rec = serde_json::json!({"name": "evil", "record": {
        "architecture": "x86_64", "config": {}, "devices": {}, "ephemeral": false,
        "profiles": [], "description": "", "created_at": "", "last_used_at": "",
        "stateful": false, "volume": "0badc0de", "pool": "default",
        "snapshots": [{"name": "s", "architecture": "x86_64", "config": {}, "devices": {},
            "ephemeral": false, "profiles": [], "description": "", "created_at": "",
            "expires_at": "", "stateful": false, "volume": "../../../etc"}]}});
    std::fs::write(&hostile_rec, rec.to_string()).expect("record");
    let (status, v) = d
        .api(
            "POST",
            "/internal/recover/validate",
            Some(r#"{"pools":[]}"#),
        )
        .expect("validate");
    assert_eq!(status, 200, "{v}");
    let errors = v["metadata"]["dependency_errors"].to_string();
    assert!(
        errors.contains(r#"Instance \"evil\" on storage pool \"default\" cannot be recovered"#)
            && errors.contains("is not a volume name"),
        "{v}"
    );
    let (status, v) = d
        .api("POST", "/internal/recover/import", Some(r#"{"pools":[]}"#))
        .expect("import");
    assert_eq!(status, 409, "{v}");
    assert!(std::path::Path::new("/etc/passwd").is_file());
    std::fs::remove_file(&hostile_rec).expect("remove record");
    std::fs::remove_dir_all(&hostile_vol).expect("remove volume");

    let out = recover(&d, "yes\nno\nyes\nyes\n");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert!(
        stdout.contains(" - NEW: \"bp\" (backend=\"btrfs\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("Container \"c3\" on pool \"bp\" in project \"default\""),
        "{stdout}"
    );
    let show = d.ok(&["storage", "show", "bp"]);
    assert!(show.contains("driver: btrfs"), "{show}");
    d.ok(&["start", "c3"]);
    d.ok(&["exec", "c3", "--", "true"]);
}
