//! bivy on hosts unlike this one, made from this one: a daemon in a mount namespace of its own
//! that sees only a cgroup2 hierarchy at /sys/fs/cgroup (a pure cgroup2 host) and an
//! /etc/subuid and /etc/subgid without root's entries (a host without subordinate ids). The
//! daemon, its containers' monitors and their children inherit that view. Real containers, as
//! root.

mod common;

use common::{Daemon, Lxc};

/// A daemon in a private mount namespace of its own, after `setup` (shell) ran there. The
/// wrapper execs the daemon in its own pid, so the test stops exactly that process.
fn in_mount_namespace(setup: &str) -> Daemon {
    let script = format!("{setup} && exec \"$0\" \"$@\"");
    Daemon::start_wrapped(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    )
    .expect("daemon")
}

#[test]
fn pure_cgroup2_host_without_subuid() {
    if !common::lxc_prerequisites() {
        return;
    }
    for tool in ["unshare", "mount"] {
        if !common::have_cmd(tool) {
            common::skip(
                "pure_cgroup2_host_without_subuid",
                &format!("{tool} is not installed"),
            );
            return;
        }
    }
    let d = in_mount_namespace(
        "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup \
         && mount --bind /dev/null /etc/subuid \
         && mount --bind /dev/null /etc/subgid",
    );
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "c1"]);
    // cgroup2 only: the container's own cgroup namespace root, one cgroup2 mount, no v1 one.
    let (code, out) = l.sh(
        "c1",
        "grep '^0::' /proc/self/cgroup; grep -c ' - cgroup2 ' /proc/self/mountinfo; \
         grep -c ' - cgroup ' /proc/self/mountinfo; test -e /sys/fs/cgroup/cgroup.controllers && echo unified",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "0::/\n1\n0\nunified\n"),
        "{}",
        d.log_text()
    );
    // On the host the container's cgroup lives in the unified hierarchy alone.
    let st = l.ok(&["query", "/1.0/instances/c1/state"]);
    let v: serde_json::Value = serde_json::from_str(&st).expect("state");
    let pid = v["pid"].as_i64().expect("pid");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let unified = cg
        .lines()
        .find(|l| l.starts_with("0::"))
        .expect("a cgroup2 line");
    assert!(unified.contains("/bivy/c1"), "{cg}");
    // No subordinate ids for root: the default range, 1000000 up.
    let base = l.ok(&["config", "get", "c1", "volatile.idmap.base"]);
    assert_eq!(base.trim(), "1000000");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(uid.contains("1000000"), "{uid}");
    // Exec, stop, start and delete work the same.
    let (code, out) = l.sh("c1", "id -u");
    assert_eq!((code, out.as_str()), (0, "0\n"));
    l.ok(&["restart", "c1", "--force"]);
    device_program(&l);
    l.ok(&["delete", "c1", "--force"]);
}

/// A host whose init mounted no cgroup filesystem (busybox init, buildroot, a rescue shell):
/// the daemon mounts cgroup2 at /sys/fs/cgroup itself (in the test's mount namespace), says
/// so, and containers run in it.
#[test]
fn a_host_that_mounted_no_cgroup_filesystem() {
    if !common::lxc_prerequisites() {
        return;
    }
    if !common::have_cmd("unshare") {
        common::skip(
            "a_host_that_mounted_no_cgroup_filesystem",
            "unshare is not installed",
        );
        return;
    }
    let d = in_mount_namespace("umount -R /sys/fs/cgroup");
    let log = d.log_text();
    assert!(
        log.contains("no cgroup filesystem was mounted: mounted cgroup2 at /sys/fs/cgroup"),
        "{log}"
    );
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "c1"]);
    let (code, out) = l.sh("c1", "grep '^0::' /proc/self/cgroup; echo ok");
    assert_eq!((code, out.as_str()), (0, "0::/\nok\n"), "{}", d.log_text());
    // The daemon's own view: the container's cgroup in the hierarchy it mounted.
    let st = l.ok(&["query", "/1.0/instances/c1/state"]);
    let v: serde_json::Value = serde_json::from_str(&st).expect("state");
    let pid = v["pid"].as_i64().expect("pid");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let unified = cg.lines().find(|l| l.starts_with("0::"));
    assert!(unified.is_some_and(|l| l.contains("/bivy/c1")), "{cg}");
    l.ok(&["restart", "c1", "--force"]);
    l.ok(&["delete", "c1", "--force"]);
}

/// The device cgroup on cgroup2 is a BPF program on the container's cgroup: a node put in the
/// rootfs from the host side (a hostile migration peer, say) opens nothing, a hot-plugged
/// `unix-char` device opens at once and not after its removal.
fn device_program(l: &Lxc<'_>) {
    l.ok(&["stop", "c1", "--force"]);
    let lc = l.mknod_in_rootfs("lc", 10, 237);
    l.ok(&["start", "c1"]);
    l.assert_open_refused("c1", "/lc");
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
        "exec 3</dev/loop-control && exec 4</lc && echo opened",
    );
    assert_eq!((code, out.as_str()), (0, "opened\n"));
    l.ok(&["config", "device", "remove", "c1", "lc"]);
    l.assert_open_refused("c1", "/lc");
    l.ok(&["stop", "c1", "--force"]);
    std::fs::remove_file(&lc).expect("remove the node");
}
