//! Real-container tests of the runtime core (run as root): start, exec, isolation, stop, survival
//! of the starter's death, privileged mode, the ownership shift. Each test builds its own busybox
//! rootfs under /var/tmp and removes everything it made (containers, cgroups, dirs); it stops only
//! the containers and processes it started, by pid.
//!
//! The helpers (`__monitor`, `__exec`) are re-executed from the bivy binary named by `BIVY_EXE`
//! (set here to cargo's `CARGO_BIN_EXE_bivy`, or `$BIVY_TEST_EXE` to measure another build such as
//! the static release binary; the runtime defaults to /proc/self/exe).
//! A test that lacks a host feature skips through the one skip mechanism (`tests/common/skip.rs`):
//! `SKIP name: reason`, counted by `cargo xtask test`; with `BIVY_MUST_WORK=1` it panics.

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bivy::runtime::cgroup::Layout;
use bivy::runtime::{
    self, ExecSpec, ExecStdio, IdMapEntry, Limits, RootfsMode, Spec, State, StopMode,
};
use nix::unistd::Pid;

/// Containers are started one at a time: the timings are cleaner and the shared `bivy` cgroup
/// parent can be removed safely at the end of each test.
static SERIAL: Mutex<()> = Mutex::new(());

const MAP: IdMapEntry = IdMapEntry {
    nsid: 0,
    hostid: 1_000_000,
    count: 65536,
};

/// Record a skip through the one skip mechanism (`tests/common/skip.rs`); true, so callers can
/// write `if cond && skip(..) { return; }`.
fn skip(name: &str, why: &str) -> bool {
    common::skip(name, why);
    true
}

fn need_root(name: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip(name, "needs root");
    }
    if !Path::new("/bin/busybox").exists() {
        return skip(name, "needs /bin/busybox (busybox-static)");
    }
    false
}

/// A container under test: its rootfs and run dir live in one temp dir; Drop stops and removes all.
struct Ct {
    dir: PathBuf,
    run: PathBuf,
    rootfs: PathBuf,
    spec: Spec,
}

const INIT: &str = "#!/bin/sh
trap 'echo init: got SIGPWR; exit 0' PWR
echo init: started as $$
while true; do sleep 1000 & wait $!; done
";

fn build_rootfs(root: &Path) {
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "usr/bin", "usr/sbin",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for name in String::from_utf8_lossy(&list.stdout).lines() {
        if name != "busybox" && name != "init" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(name));
        }
    }
    fs::write(root.join("sbin/init"), INIT).unwrap();
    fs::set_permissions(root.join("sbin/init"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nuser:x:1000:\n",
    )
    .unwrap();
}

impl Ct {
    fn new(tag: &str, mode: RootfsMode) -> Ct {
        // `BIVY_TEST_EXE` runs the helpers from another build (e.g. the static release binary).
        std::env::set_var("BIVY_EXE", common::bivy_bin());
        let name = format!("t{}-{tag}", std::process::id());
        let dir = PathBuf::from(format!("/var/tmp/bivy-test-{name}"));
        let _ = fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        build_rootfs(&rootfs);
        let run = dir.join("run");
        let (uid_map, gid_map) = if mode == RootfsMode::Privileged {
            (vec![], vec![])
        } else {
            (vec![MAP], vec![MAP])
        };
        let spec = Spec {
            name: name.clone(),
            rootfs: rootfs.clone(),
            rootfs_lower: None,
            rootfs_mode: mode,
            uid_map,
            gid_map,
            hostname: name.clone(),
            init: vec!["/sbin/init".into()],
            env: vec![
                ("PATH".into(), "/bin:/sbin".into()),
                ("container".into(), "bivy".into()),
            ],
            limits: Limits::default(),
            nesting: false,
            seccomp_policy: bivy::runtime::seccomp::DEFAULT_POLICY.into(),
            apparmor_raw: String::new(),
            console_log: dir.join("console.log"),
            cgroup: None,
            disks: Vec::new(),
            nics: Vec::new(),
            unix_devices: Vec::new(),
            templates: Vec::new(),
        };
        Ct {
            dir,
            run,
            rootfs,
            spec,
        }
    }

    fn start(&self) -> (i32, i32, Duration) {
        let t = Instant::now();
        let st = runtime::start(&self.spec, &self.run).unwrap_or_else(|e| {
            let log = fs::read_to_string(self.run.join("monitor.log")).unwrap_or_default();
            panic!("start {}: {e}\nmonitor.log:\n{log}", self.spec.name)
        });
        let took = t.elapsed();
        // The "cgroup left behind" checks look where this finds the running container's cgroup.
        assert!(
            !self.cgroup_dirs().is_empty(),
            "no cgroup found for running {}",
            self.spec.name
        );
        match st {
            State::Running {
                init_pid,
                monitor_pid,
                ..
            } => (init_pid, monitor_pid, took),
            s => panic!("start returned {s:?}"),
        }
    }

    /// Run a command, capture stdout+stderr, return (exit code, output).
    fn run(&self, argv: &[&str], f: impl FnOnce(&mut ExecSpec)) -> (i32, String) {
        let mut spec = ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/bin:/sbin".into())],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            pty: None,
        };
        f(&mut spec);
        let (r, w) = nix::unistd::pipe().unwrap();
        let stdin: OwnedFd = fs::File::open("/dev/null").unwrap().into();
        let w2 = w.try_clone().unwrap();
        let p = runtime::exec(
            &self.run,
            &spec,
            Some(ExecStdio {
                stdin,
                stdout: w,
                stderr: w2,
            }),
        )
        .unwrap();
        let mut out = String::new();
        fs::File::from(r).read_to_string(&mut out).unwrap();
        (p.wait().unwrap(), out)
    }

    fn sh(&self, script: &str) -> (i32, String) {
        self.run(&["sh", "-c", script], |_| {})
    }

    /// This container's cgroup directories that exist now, in every v1 hierarchy and in cgroup2
    /// (whichever this host has: the checks must work on pure cgroup2 hosts too).
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let l = Layout::probe();
        l.v1.iter()
            .map(|(m, _)| m.clone())
            .chain(l.unified.clone())
            .map(|m| m.join("bivy").join(self.spec.cgroup_name()))
            .filter(|d| d.is_dir())
            .collect()
    }
}

impl Drop for Ct {
    fn drop(&mut self) {
        let _ = runtime::stop(&self.run, StopMode::Force);
        // The shared `bivy` parent in every hierarchy, if empty (rmdir fails harmlessly otherwise).
        for h in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(h.path().join("bivy"));
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup {}: {e}", self.dir.display());
        }
    }
}

fn status_field(pid: i32, key: &str) -> String {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_string()
}

fn private_dirty_kb(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let l = s.lines().find(|l| l.starts_with("Private_Dirty:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn unprivileged_container_is_isolated() {
    const NAME: &str = "unprivileged_container_is_isolated";
    if need_root(NAME) {
        return;
    }
    if !runtime::rootfs_supports_idmap(Path::new("/var/tmp"))
        && skip(NAME, "/var/tmp cannot be idmapped")
    {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ct = Ct::new("iso", RootfsMode::Idmapped);
    let (init_pid, monitor_pid, took) = ct.start();
    eprintln!("FIGURE start (prepared rootfs -> init exec'd): {:?}", took);
    eprintln!(
        "FIGURE monitor Private_Dirty: {} kB",
        private_dirty_kb(monitor_pid)
    );

    // Nothing of the container is mounted in the host mount namespace.
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(ct.dir.to_str().unwrap()),
        "container mounts leaked into the host"
    );

    // Container root is host uid 1000000.
    assert!(
        status_field(init_pid, "Uid:").contains("1000000"),
        "{}",
        status_field(init_pid, "Uid:")
    );
    let t = Instant::now();
    let (c, out) = ct.run(&["id", "-u"], |_| {});
    eprintln!(
        "FIGURE exec latency (id -u, spawn to exit): {:?}",
        t.elapsed()
    );
    assert_eq!((c, out.trim()), (0, "0"));

    // Files written by container root land as on-disk uid 0 on the idmapped rootfs.
    let (c, out) = ct.sh("echo hi > /written && stat -c '%u:%g' /written");
    assert_eq!((c, out.trim()), (0, "0:0"));
    let md = fs::metadata(ct.rootfs.join("written")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));

    // No block devices, no host hostname change, no host processes.
    let (c, _) = ct.sh("mknod /tmp/blk b 7 0");
    assert_ne!(c, 0, "mknod of a block device must fail");
    let host_name = nix::unistd::gethostname().unwrap();
    let (c, out) = ct.sh("hostname changed-inside && hostname");
    assert_eq!((c, out.trim()), (0, "changed-inside"));
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);
    let (c, out) = ct.sh("ps -o pid | tail -n +2 | wc -l");
    assert_eq!(c, 0);
    let n: u32 = out.trim().parse().unwrap();
    assert!(n < 8, "container sees {n} processes");

    // Kernel knobs are read-only, /dev/null is writable.
    for f in [
        "/proc/sysrq-trigger",
        "/proc/sys/vm/drop_caches",
        "/sys/kernel/uevent_helper",
        "/proc/sys/kernel/panic",
    ] {
        let (c, out) = ct.sh(&format!("echo 1 > {f}"));
        assert_ne!(c, 0, "write to {f} succeeded: {out}");
    }
    let (c, out) = ct.sh("echo x > /dev/null && echo ok");
    assert_eq!((c, out.trim()), (0, "ok"));
    let (c, out) = ct.sh(
        "for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] && wc -c < $f; done; true",
    );
    assert!(
        c == 0 && !out.trim().is_empty() && out.lines().all(|l| l.trim() == "0"),
        "masked /proc files: {out}"
    );
    let (c, _) = ct.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    assert_eq!(c, 0, "/proc/sys/net must stay writable");
    let (c, out) = ct.sh("cat /proc/self/cgroup | grep -c ':/$'");
    assert_eq!(c, 0, "cgroup namespace root: {out}");
    let (c, out) = ct.sh("ls /sys/fs/cgroup");
    assert!(c == 0 && out.contains("memory"), "cgroup view: {out}");
    let (c, out) = ct.sh("ls -l /dev/null /dev/console; ip link show lo 2>/dev/null || cat /sys/class/net/lo/operstate");
    assert_eq!(c, 0, "{out}");

    // exec: exit codes, signals, env, cwd, uid.
    assert_eq!(ct.sh("exit 7").0, 7);
    assert_eq!(ct.sh("kill -9 $$").0, 137);
    let (_, out) = ct.run(&["sh", "-c", "echo $FOO"], |s| {
        s.env.push(("FOO".into(), "bar".into()))
    });
    assert_eq!(out.trim(), "bar");
    let (_, out) = ct.run(&["pwd"], |s| s.cwd = "/tmp".into());
    assert_eq!(out.trim(), "/tmp");
    let (_, out) = ct.run(&["id"], |s| {
        s.uid = 1000;
        s.gid = 1000;
    });
    assert!(
        out.contains("uid=1000") && out.contains("gid=1000"),
        "{out}"
    );
    let missing = ExecSpec {
        argv: vec!["/no/such/program".into()],
        env: vec![],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        pty: None,
    };
    let e = runtime::exec(&ct.run, &missing, None)
        .err()
        .expect("exec of a missing program must fail");
    assert!(
        e.0.contains("/no/such/program") && e.0.contains("ENOENT"),
        "{e}"
    );

    // pty exec: a terminal from the container's devpts.
    let spec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), "tty; stty size; echo done".into()],
        env: vec![("PATH".into(), "/bin".into())],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        pty: Some((100, 30)),
    };
    let mut p = runtime::exec(&ct.run, &spec, None).unwrap();
    let master = p.pty_master.take().expect("pty master");
    let mut out = Vec::new();
    let mut f = fs::File::from(master);
    let mut buf = [0u8; 1024];
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    assert_eq!(p.wait().unwrap(), 0);
    assert!(
        out.contains("/dev/pts/0") && out.contains("30 100") && out.contains("done"),
        "pty output: {out:?}"
    );

    // Signals reach the command; its exit code comes back.
    let spec = ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 3' TERM; echo ready; while true; do sleep 0.05; done".into(),
        ],
        env: vec![("PATH".into(), "/bin".into())],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        pty: None,
    };
    let (r, w) = nix::unistd::pipe().unwrap();
    let stdin: OwnedFd = fs::File::open("/dev/null").unwrap().into();
    let w2 = w.try_clone().unwrap();
    let p = runtime::exec(
        &ct.run,
        &spec,
        Some(ExecStdio {
            stdin,
            stdout: w,
            stderr: w2,
        }),
    )
    .unwrap();
    let mut rf = fs::File::from(r);
    let mut b = [0u8; 6];
    rf.read_exact(&mut b).unwrap();
    p.signaller().send(libc::SIGTERM);
    assert_eq!(p.wait().unwrap(), 3, "SIGTERM did not reach the command");

    // Freeze and thaw through the cgroup.
    runtime::freeze(&ct.run).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(
        runtime::state(&ct.run).unwrap(),
        State::Running { frozen: true, .. }
    ) {
        assert!(Instant::now() < deadline, "container did not freeze");
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = runtime::exec(&ct.run, &missing, None)
        .err()
        .expect("exec into a frozen container must fail");
    assert!(e.0.contains("frozen"), "{e}");
    runtime::unfreeze(&ct.run).unwrap();
    assert!(matches!(
        runtime::state(&ct.run).unwrap(),
        State::Running { frozen: false, .. }
    ));

    // Clean stop: init traps SIGPWR and exits 0; the monitor records it and removes the cgroup.
    let t = Instant::now();
    runtime::stop(&ct.run, StopMode::Clean(Duration::from_secs(10))).unwrap();
    eprintln!("FIGURE clean stop: {:?}", t.elapsed());
    match runtime::state(&ct.run).unwrap() {
        State::Stopped { last_exit: Some(e) } => {
            assert_eq!(e.code, 0);
            assert!(e.reason.contains("stopped by request"), "{}", e.reason);
        }
        s => panic!("after clean stop: {s:?}"),
    }
    assert_eq!(
        ct.cgroup_dirs(),
        Vec::<PathBuf>::new(),
        "cgroup left behind"
    );
    let console = fs::read_to_string(&ct.spec.console_log).unwrap();
    assert!(
        console.contains("init: started as 1") && console.contains("got SIGPWR"),
        "console: {console:?}"
    );
    assert!(runtime::monitor_pidfd(&ct.run).unwrap().is_none());
}

#[test]
fn force_stop_kills_everything_fast() {
    const NAME: &str = "force_stop_kills_everything_fast";
    if need_root(NAME) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut ct = Ct::new("force", RootfsMode::Idmapped);
    ct.spec.nesting = true;
    let (_, monitor_pid, _) = ct.start();
    // Nesting: fully visible proc and sysfs for a nested manager.
    let (c, out) = ct.sh("ls /dev/.lxc/proc/1/status /dev/.lxc/sys/kernel >/dev/null && echo ok");
    assert_eq!((c, out.trim()), (0, "ok"));
    // A nested manager's own sysfs is writable (as LXD's `sys:rw`); /sys stays read-only but its
    // network devices' part is a writable mount (lo's files are host root's, made before the
    // container's id map: refused by their owner, not by a read-only filesystem).
    let (c, out) = ct.sh(
        "mkdir -p /tmp/s && mount -t sysfs sysfs /tmp/s && grep ' /tmp/s ' /proc/mounts; grep ' /sys ' /proc/mounts",
    );
    assert_eq!(c, 0, "{out}");
    let mounts: Vec<&str> = out.lines().collect();
    assert!(mounts[0].contains(" rw,"), "{out}");
    assert!(mounts[1].contains(" ro,"), "{out}");
    let (c, out) = ct.sh("umount /tmp/s && echo 1000 > /sys/devices/virtual/net/lo/tx_queue_len");
    assert!(c != 0 && out.contains("Permission denied"), "{out}");
    let (c, _) = ct.sh("echo x > /sys/kernel/uevent_helper");
    assert_ne!(c, 0, "/sys must stay read-only");
    // An exec'd background process, which must die too.
    let (c, _) = ct.sh("sleep 1000 >/dev/null 2>&1 &");
    assert_eq!(c, 0);
    let pidfd = runtime::monitor_pidfd(&ct.run)
        .unwrap()
        .expect("monitor pidfd");
    let t = Instant::now();
    runtime::stop(&ct.run, StopMode::Force).unwrap();
    eprintln!("FIGURE force stop: {:?}", t.elapsed());
    // The pidfd is readable (monitor gone) and the state is recorded.
    let mut p = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&pidfd),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(
        nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO).unwrap(),
        1
    );
    assert!(
        !Path::new(&format!("/proc/{monitor_pid}")).exists()
            || fs::read_to_string(format!("/proc/{monitor_pid}/stat"))
                .map(|s| s.contains(" Z "))
                .unwrap_or(true)
    );
    match runtime::state(&ct.run).unwrap() {
        State::Stopped { last_exit: Some(e) } => {
            assert_eq!(e.code, 137);
            assert!(e.reason.contains("killed by request"), "{}", e.reason);
        }
        s => panic!("after force stop: {s:?}"),
    }
    assert_eq!(
        ct.cgroup_dirs(),
        Vec::<PathBuf>::new(),
        "cgroup left behind"
    );
}

/// The starter is a re-run of this very test (`BIVY_TEST_STARTER` set): it starts the container
/// described in that file, reports, and waits to be killed. There is no separate helper test
/// that would pass whenever it is run on its own.
#[test]
fn container_survives_its_starter() {
    const NAME: &str = "container_survives_its_starter";
    if let Ok(spec_path) = std::env::var("BIVY_TEST_STARTER") {
        let spec: Spec = serde_json::from_slice(&fs::read(&spec_path).unwrap()).unwrap();
        let run = PathBuf::from(std::env::var("BIVY_TEST_RUN").unwrap());
        runtime::start(&spec, &run).unwrap();
        fs::write(format!("{spec_path}.started"), "1").unwrap();
        std::thread::sleep(Duration::from_secs(600));
        panic!("the starter was not killed");
    }
    if need_root(NAME) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ct = Ct::new("surv", RootfsMode::Idmapped);
    let sp = ct.dir.join("spec.json");
    fs::write(&sp, serde_json::to_vec(&ct.spec).unwrap()).unwrap();
    let mut starter = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("BIVY_TEST_STARTER", &sp)
        .env("BIVY_TEST_RUN", &ct.run)
        .env("BIVY_EXE", common::bivy_bin())
        .spawn()
        .unwrap();
    let flag = ct.dir.join("spec.json.started");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !flag.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(flag.exists(), "starter did not start the container");
    // Kill the starter (the only process we kill, by its pid) and check the container lives on.
    starter.kill().unwrap();
    starter.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    match runtime::state(&ct.run).unwrap() {
        State::Running { init_pid, .. } => {
            assert!(Path::new(&format!("/proc/{init_pid}")).exists())
        }
        s => panic!("container died with its starter: {s:?}"),
    }
    let (c, out) = ct.sh("echo alive");
    assert_eq!((c, out.trim()), (0, "alive"));
    runtime::stop(&ct.run, StopMode::Force).unwrap();
    assert!(matches!(
        runtime::state(&ct.run).unwrap(),
        State::Stopped { .. }
    ));
}

#[test]
fn privileged_container_drops_caps() {
    const NAME: &str = "privileged_container_drops_caps";
    if need_root(NAME) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ct = Ct::new("priv", RootfsMode::Privileged);
    let (init_pid, _, _) = ct.start();
    assert!(status_field(init_pid, "Uid:").starts_with("Uid:\t0\t"));
    let (c, out) = ct.sh("grep CapBnd /proc/self/status");
    assert_eq!(c, 0);
    let bnd = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
    for cap in [
        25u32, /* sys_time */
        16,    /* sys_module */
        17,    /* sys_rawio */
        33,    /* mac_admin */
        32,    /* mac_override */
    ] {
        assert_eq!(bnd & (1 << cap), 0, "cap {cap} still in {bnd:x}");
    }
    assert_ne!(bnd & (1 << 21), 0, "sys_admin should remain");
    let (c, out) = ct.sh("echo x > /dev/null && hostname");
    assert_eq!((c, out.trim()), (0, ct.spec.hostname.as_str()));
    runtime::stop(&ct.run, StopMode::Clean(Duration::from_secs(10))).unwrap();
}

#[test]
fn shifted_rootfs_boots() {
    const NAME: &str = "shifted_rootfs_boots";
    if need_root(NAME) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ct = Ct::new("shift", RootfsMode::Shifted);
    fs::write(ct.rootfs.join("setuid-file"), "x").unwrap();
    fs::set_permissions(
        ct.rootfs.join("setuid-file"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    runtime::shift_rootfs(&ct.rootfs, &[MAP], &[MAP]).unwrap();
    let md = fs::metadata(ct.rootfs.join("bin/busybox")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1_000_000, 1_000_000));
    let md = fs::metadata(ct.rootfs.join("setuid-file")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (1_000_000, 0o4755));
    ct.start();
    let (c, out) = ct.sh("touch /new && stat -c '%u' /new /bin/busybox");
    assert_eq!(
        (c, out.split_whitespace().collect::<Vec<_>>()),
        (0, vec!["0", "0"])
    );
    assert_eq!(
        fs::metadata(ct.rootfs.join("new")).unwrap().uid(),
        1_000_000
    );
    runtime::stop(&ct.run, StopMode::Force).unwrap();
}

#[test]
fn start_error_is_reported_and_undone() {
    const NAME: &str = "start_error_is_reported_and_undone";
    if need_root(NAME) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut ct = Ct::new("err", RootfsMode::Idmapped);
    ct.spec.init = vec!["/sbin/no-such-init".into()];
    let e = runtime::start(&ct.spec, &ct.run).expect_err("start with a missing init must fail");
    assert!(e.0.contains("no-such-init"), "{e}");
    assert!(matches!(
        runtime::state(&ct.run).unwrap(),
        State::Stopped { .. }
    ));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        ct.cgroup_dirs(),
        Vec::<PathBuf>::new(),
        "cgroup left behind after a failed start"
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints the figures of the report (start, exec, force stop, monitor memory; `cargo xtask bench`
/// is where speed is compared) and asserts the behaviour behind them: every exec works, and a
/// monitor stays small. Its own cost, measured while a second monitor shares the sealed binary,
/// is about 2 MiB; a limit of 8 MiB catches a monitor that grows (buffers per container, a
/// runtime, a copy of the binary it should share) without measuring speed.
#[test]
fn figures() {
    const NAME: &str = "figures";
    if need_root(NAME) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    let mut execs = Vec::new();
    let mut keep = None;
    for i in 0..5 {
        let ct = Ct::new(&format!("fig{i}"), RootfsMode::Idmapped);
        let (_, monitor_pid, took) = ct.start();
        starts.push(took);
        if std::env::var_os("BIVY_TRACE").is_some() {
            eprintln!(
                "start took {took:?}; monitor.log:\n{}",
                fs::read_to_string(ct.run.join("monitor.log")).unwrap_or_default()
            );
        }
        for _ in 0..5 {
            let t = Instant::now();
            assert_eq!(ct.run(&["true"], |_| {}).0, 0);
            execs.push(t.elapsed());
        }
        if i == 1 {
            // With another monitor of this process still running (see `keep` below), the sealed
            // binary's pages are shared; what remains private is the monitor's own cost.
            let kb = private_dirty_kb(monitor_pid);
            eprintln!(
                "FIGURE monitor Private_Dirty with a second monitor sharing the memfd: {kb} kB"
            );
            assert!(kb > 0, "no Private_Dirty read for monitor {monitor_pid}");
            assert!(
                kb < 8 * 1024,
                "a monitor costs {kb} kB of private memory (limit 8 MiB)"
            );
        }
        if i == 0 {
            let smaps = fs::read_to_string(format!("/proc/{monitor_pid}/smaps")).unwrap();
            let mut cur = String::new();
            for l in smaps.lines() {
                if l.contains('-') && !l.contains(':')
                    || l.split_whitespace().next().is_some_and(|w| w.contains('-'))
                {
                    cur = l.to_string();
                } else if let Some(v) = l.strip_prefix("Private_Dirty:") {
                    let kb: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                    if kb >= 16 {
                        eprintln!("  monitor dirty {kb:>5} kB  {cur}");
                    }
                }
            }
            eprintln!(
                "FIGURE monitor Private_Dirty: {} kB",
                private_dirty_kb(monitor_pid)
            );
        }
        if i == 0 {
            keep = Some(ct);
            continue;
        }
        let t = Instant::now();
        runtime::stop(&ct.run, StopMode::Force).unwrap();
        stops.push(t.elapsed());
    }
    drop(keep);
    eprintln!(
        "FIGURE start median {:?} (all {:?})",
        median(starts.clone()),
        starts
    );
    eprintln!(
        "FIGURE exec `true` median {:?} (n={})",
        median(execs.clone()),
        execs.len()
    );
    eprintln!(
        "FIGURE force stop median {:?} (all {:?})",
        median(stops.clone()),
        stops
    );
}

#[test]
fn monitor_death_takes_the_container_down() {
    const NAME: &str = "monitor_death_takes_the_container_down";
    if need_root(NAME) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ct = Ct::new("mdeath", RootfsMode::Idmapped);
    let (init_pid, monitor_pid, _) = ct.start();
    // Kill the monitor we started (by its pid): init must not run on unsupervised.
    nix::sys::signal::kill(
        Pid::from_raw(monitor_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read_to_string(format!("/proc/{init_pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(Instant::now() < deadline, "init survived its monitor");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(
        runtime::state(&ct.run).unwrap(),
        State::Stopped { .. }
    ));
    // stop() on a dead monitor finishes its teardown: cgroup removed, end recorded.
    runtime::stop(&ct.run, StopMode::Force).unwrap();
    assert_eq!(
        ct.cgroup_dirs(),
        Vec::<PathBuf>::new(),
        "cgroup left behind"
    );
    match runtime::state(&ct.run).unwrap() {
        State::Stopped { last_exit: Some(e) } => assert_eq!(e.reason, "monitor died"),
        s => panic!("{s:?}"),
    }
}
