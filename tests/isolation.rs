//! The isolation core, proven from inside real containers started through the daemon and driven
//! by the unmodified `lxc` client: seccomp, /proc and /sys, devices, clock, hostname, id maps,
//! cgroup limits, and a Debian 12 image with systemd booting unprivileged to "running".

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

use common::Lxc;

trait InitPid {
    fn init_pid(&self, ct: &str) -> i32;
}

impl InitPid for Lxc<'_> {
    fn init_pid(&self, ct: &str) -> i32 {
        self.ok(&["list", ct, "--format", "csv", "-c", "p"])
            .trim()
            .parse()
            .expect("pid")
    }
}

fn prerequisites() -> bool {
    common::lxc_prerequisites()
}

fn busybox(l: &Lxc<'_>) {
    l.import_busybox();
}

fn host_uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .nth(1)
        .expect("uid")
        .parse()
        .expect("uid number")
}

#[test]
fn busybox_container_is_confined() {
    if !prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    busybox(&l);
    l.ok(&["launch", "busybox", "b1"]);

    // Container root is an unprivileged, high host uid.
    let pid = l.init_pid("b1");
    assert!(
        host_uid_of(pid) >= 100_000,
        "container init runs as host uid {}",
        host_uid_of(pid)
    );
    assert_eq!(l.sh("b1", "id -u").1.trim(), "0");

    // Host processes and disks are invisible.
    let (_, ps) = l.sh("b1", "ps -o pid | wc -l");
    assert!(
        ps.trim().parse::<u32>().expect("count") < 10,
        "sees {ps} processes"
    );
    let (_, devs) = l.sh("b1", "ls -l /dev | grep '^b' | wc -l");
    assert_eq!(devs.trim(), "0", "block devices visible in /dev");

    // Device nodes, clock, /proc, /sys, hostname.
    let (rc, out) = l.sh("b1", "mknod /root/sda b 8 0");
    assert_ne!(rc, 0, "mknod of a block device worked: {out}");
    // (busybox date reports the failure but exits 0.)
    let (rc, out) = l.sh("b1", "date -s 2000-01-01");
    assert!(
        rc != 0 || out.contains("Operation not permitted"),
        "setting the clock worked: {out}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now > 1_700_000_000, "the host clock moved");
    for path in [
        "/proc/sysrq-trigger",
        "/proc/sys/vm/drop_caches",
        "/sys/kernel/uevent_helper",
        "/proc/sys/kernel/panic",
    ] {
        let (rc, out) = l.sh("b1", &format!("echo 1 > {path}"));
        assert_ne!(rc, 0, "writing {path} worked: {out}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    l.sh("b1", "hostname changed-inside");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"),
        host
    );
    assert_eq!(l.sh("b1", "hostname").1.trim(), "changed-inside");
    let (rc, _) = l.sh(
        "b1",
        "echo ok > /dev/null && head -c 4 /dev/urandom | wc -c",
    );
    assert_eq!(rc, 0, "/dev/null or /dev/urandom unusable");

    // Forced unmount is refused by seccomp (EPERM), while the mount and a plain unmount work:
    // so the refusal is about the force flag, not a mount that never happened.
    let (rc, out) = l.sh("b1", "mount -t tmpfs tmpfs /mnt");
    assert_eq!(rc, 0, "mount tmpfs: {out}");
    let (rc, out) = l.sh("b1", "umount -f /mnt");
    assert_ne!(rc, 0, "umount -f worked: {out}");
    assert!(out.contains("Operation not permitted"), "umount -f: {out}");
    let (rc, out) = l.sh("b1", "umount /mnt && grep -c ' /mnt ' /proc/mounts");
    assert_eq!((rc, out.trim()), (1, "0"), "plain umount: {out}");

    // Seccomp is on, without no_new_privs (setuid programs keep working).
    let (_, st) = l.sh("b1", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status");
    assert!(
        st.contains("Seccomp:\t2") && st.contains("NoNewPrivs:\t0"),
        "{st}"
    );

    l.ok(&["delete", "--force", "b1"]);
}

#[test]
fn limits_contain_memory_hogs_and_fork_floods() {
    if !prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    busybox(&l);
    l.ok(&[
        "launch",
        "busybox",
        "lim",
        "-c",
        "limits.memory=64MiB",
        "-c",
        "limits.processes=20",
    ]);
    // 200 MB through a pipe into tail, which must hold it all: the OOM killer ends tail, not the host.
    let (rc, out) = l.sh(
        "lim",
        "head -c 200000000 /dev/zero | tail -c 200000000 > /dev/null",
    );
    // The OOM killer ends tail (SIGKILL: 128 + 9); any other failure is not the limit working.
    assert_eq!(
        rc, 137,
        "a 200 MB hog under a 64 MiB limit was not OOM-killed: {out}"
    );
    // The pids controller refuses the 20-somethingth fork with EAGAIN, and the shell gives up
    // before it gets to say it spawned all 40.
    let (rc, out) = l.sh(
        "lim",
        "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done 2>&1; echo spawned",
    );
    assert!(
        rc != 0
            && out.contains("can't fork: Resource temporarily unavailable")
            && !out.contains("spawned"),
        "40 processes under limits.processes=20: rc {rc}: {out}"
    );
    // Limits change live: lift the process limit so the flood's sleepers can be cleared.
    l.ok(&["config", "set", "lim", "limits.processes", "200"]);
    l.sh("lim", "pkill -f 'sleep 30'");
    l.ok(&["config", "set", "lim", "limits.memory", "300MiB"]);
    let (rc, out) = l.sh(
        "lim",
        "head -c 200000000 /dev/zero | tail -c 200000000 > /dev/null; echo done",
    );
    assert!(
        rc == 0 && out.contains("done"),
        "raised limit not applied: {out}"
    );
    // A limit the kernel refuses (v1 answers EBUSY to a memory limit below what the container
    // holds) fails the update and changes nothing, as LXD's does; later updates still work.
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        let out = l.run(&["config", "set", "lim", "limits.memory", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Failed to apply limits"),
            "{err}"
        );
        assert_eq!(
            l.ok(&["config", "get", "lim", "limits.memory"]).trim(),
            "300MiB"
        );
        l.ok(&["config", "set", "lim", "user.after", "1"]);
    }
    l.ok(&["delete", "--force", "lim"]);
}

#[test]
fn debian_with_systemd_boots_unprivileged() {
    if !prerequisites() {
        return;
    }
    let Some(img) = common::debian_image_or_skip() else {
        return;
    };
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "debian",
    ]);
    l.ok(&["launch", "debian", "deb"]);
    let t = Instant::now();
    let state = loop {
        let (_, s) = l.sh("deb", "systemctl is-system-running");
        let s = s.trim().to_string();
        if s == "running" || s == "degraded" || t.elapsed() > Duration::from_secs(120) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("debian reached {state:?} {:?} after launch", t.elapsed());
    let (_, failed) = l.sh("deb", "systemctl --failed --no-legend --plain");
    assert_eq!(state, "running", "failed units: {failed}");
    assert_eq!(failed.trim(), "");

    // Seccomp from inside: module loading, kexec and open_by_handle_at get EPERM.
    // x86_64 numbers: init_module 175, delete_module 176, kexec_load 246, open_by_handle_at 304,
    // finit_module 313, kexec_file_load 320.
    let (_, out) = l.sh(
        "deb",
        "perl -e 'for my $n (175,176,246,304,313,320) { my $r = syscall($n,0,0,0,0,0); print \"$n=\", ($r == -1 ? $!+0 : \"ok\"), \"\\n\" }'",
    );
    for n in ["175", "176", "246", "304", "313", "320"] {
        assert!(
            out.contains(&format!("{n}=1\n")),
            "syscall {n} not refused with EPERM: {out}"
        );
    }

    // `lxc console`: the getty on /dev/console answers; ctrl-a q detaches.
    if common::have_cmd("script") {
        let pipeline = format!(
            "(sleep 1; printf '\\r'; sleep 2; printf '\\001'; sleep 0.5; printf q; sleep 1) | script -qec 'LXD_SOCKET={} LXD_CONF={} lxc console deb' /dev/null",
            d.socket().display(),
            l.conf.display()
        );
        let out = common::run_bounded(
            Command::new("sh")
                .args(["-c", &pipeline])
                .stdin(Stdio::null()),
            Duration::from_secs(60),
        )
        .expect("script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("deb login:"),
            "no login prompt on the console: {text:?}"
        );
    }

    // A clean stop powers systemd off (SIGRTMIN+3), not a kill: the stop finishes (`l.ok` is
    // bounded) and the log records init's own poweroff, not the kill that ends a timed-out stop.
    l.ok(&["stop", "deb"]);
    let log = l.ok(&["info", "deb", "--show-log"]);
    assert!(
        log.contains("stopped by request") && !log.contains("killed by request"),
        "systemd was killed rather than powered off: {log}"
    );
    l.ok(&["delete", "deb"]);
}

#[test]
fn nesting_runs_bivy_inside_bivy() {
    if !prerequisites() {
        return;
    }
    // The static binary (`cargo xtask dist`, which CI runs before the tests) is what goes inside.
    let bin = common::target_dir().join("dist/bivy");
    if !bin.is_file() {
        common::skip(
            &common::current_test_name(),
            "needs target/dist/bivy (cargo xtask dist)",
        );
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    busybox(&l);
    // A bigger map than the default so the inner daemon can carve its own 65536 ids out of it.
    l.ok(&[
        "launch",
        "busybox",
        "outer",
        "-c",
        "security.nesting=true",
        "-c",
        "security.idmap.size=300000",
    ]);
    l.ok(&[
        "file",
        "push",
        "--mode",
        "0755",
        bin.to_str().expect("utf-8"),
        "outer/bin/bivy",
    ]);
    let img = common::busybox_image();
    l.ok(&[
        "file",
        "push",
        img.to_str().expect("utf-8"),
        "outer/root/busybox.tar.gz",
    ]);
    let (rc, out) = l.sh(
        "outer",
        "export BIVY_DIR=/var/lib/bivy; (bivy daemon > /root/daemon.log 2>&1 &); \
         i=0; while [ ! -S $BIVY_DIR/unix.socket ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         bivy image import /root/busybox.tar.gz --alias busybox && bivy launch busybox inner && \
         bivy exec inner -- sh -c 'echo inner-says-hi; cat /proc/self/uid_map'",
    );
    assert_eq!(
        rc,
        0,
        "nested launch failed: {out}\n{}",
        l.sh("outer", "cat /root/daemon.log /var/lib/bivy/logs/*/lxc.log")
            .1
    );
    assert!(out.contains("inner-says-hi"), "{out}");
    l.ok(&["delete", "--force", "outer"]);
}
