//! Confinement tests against the real kernel: seccomp filters, AppArmor profiles, cgroups.
//!
//! Tests that load a seccomp filter do it in a fresh copy of this test binary (the same test
//! re-exec'd with `--exact <test>` and `BIVY_CONFINE_CHILD=<test>`, which then runs its child
//! half), never in the harness process: a filter cannot be removed, and forking a multithreaded
//! harness is unsafe. No child half is a test of its own that passes when run alone.
//! A test missing a host feature (root, apparmor_parser, a cgroup controller) skips through the
//! one skip mechanism (`tests/common/skip.rs`): counted, and a failure under `BIVY_MUST_WORK=1`.
//!
//! This file uses `unsafe` for raw syscalls and `int 0x80`: the point is to call exactly the
//! syscall the filter must catch, without libc wrappers in the way.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use bivy::runtime::seccomp::{self, PolicyConfig};

mod common;

use common::skip;

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when this process is the re-exec'd child for `name`.
fn child_is(name: &str) -> bool {
    std::env::var("BIVY_CONFINE_CHILD").as_deref() == Ok(name)
}

/// Run the `name` test alone in a fresh copy of this test binary, as its child half
/// (`BIVY_CONFINE_CHILD=name`), with `BIVY_CONFINE_POLICY` set.
fn run_child(name: &str, policy: &str) -> std::process::Output {
    let exe = std::env::current_exe().expect("current_exe");
    Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("BIVY_CONFINE_CHILD", name)
        .env("BIVY_CONFINE_POLICY", policy)
        .stdin(Stdio::null())
        .output()
        .expect("spawn test child")
}

fn load_policy_from_env() {
    let policy = std::env::var("BIVY_CONFINE_POLICY").expect("BIVY_CONFINE_POLICY");
    let prog = seccomp::compile(&policy).expect("compile");
    seccomp::load(&prog).expect("load");
}

/// `-errno` of a failed raw syscall, or its (non-negative) result.
fn raw(rc: libc::c_long) -> i64 {
    if rc == -1 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        rc
    }
}

/// An i386 syscall through `int 0x80` from 64-bit code; the kernel enters it with AUDIT_ARCH_I386.
/// Only eax (number) and ecx (second argument) are set: rbx (first argument) is reserved by LLVM,
/// and the tests below do not depend on it.
fn int80(nr: u32, arg1: u32) -> i32 {
    let ret: i32;
    // SAFETY: `int 0x80` enters the kernel's ia32 syscall path; it only writes eax (the result),
    // preserves every other register, and touches no memory of ours for the calls made here
    // (getpid, getppid, and calls the filter refuses before the kernel looks at their arguments;
    // umount2 with a junk path pointer at most fails with EFAULT).
    unsafe {
        core::arch::asm!("int 0x80", inlateout("eax") nr as i32 => ret, in("ecx") arg1, options(nostack));
    }
    ret
}

fn status_field(field: &str) -> String {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

const I386_GETPID: u32 = 20;
const I386_GETPPID: u32 = 64;
const I386_UMOUNT2: u32 = 52;
const I386_INIT_MODULE: u32 = 128;
const I386_FINIT_MODULE: u32 = 350;

#[test]
fn seccomp_default_filter() {
    if child_is("seccomp_default_filter") {
        return seccomp_default_filter_child();
    }
    if !is_root() {
        return skip(
            "seccomp_default_filter",
            "needs root (CAP_SYS_ADMIN to load a filter without NO_NEW_PRIVS)",
        );
    }
    let policy = seccomp::build_policy(&PolicyConfig::default()).unwrap();
    let out = run_child("seccomp_default_filter", &policy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("CHILD-OK"),
        "child test did not run:\n{stdout}\n{stderr}"
    );
}

/// The child half of `seccomp_default_filter`, in the re-exec'd test binary.
fn seccomp_default_filter_child() {
    // Before the filter: i386 getpid works (the kernel has ia32 emulation).
    // SAFETY: getpid cannot fail and has no arguments.
    let pid = unsafe { libc::getpid() };
    assert_eq!(int80(I386_GETPID, 0), pid, "i386 getpid before the filter");
    load_policy_from_env();

    let eperm = -i64::from(libc::EPERM);
    let empty = c"";
    // SAFETY: (all raw syscalls below) the filter answers before the kernel reads any argument;
    // without the filter each call would fail on its null/empty/invalid arguments, touching nothing.
    unsafe {
        assert_eq!(
            raw(libc::syscall(
                libc::SYS_init_module,
                std::ptr::null::<u8>(),
                0usize,
                empty.as_ptr()
            )),
            eperm,
            "init_module"
        );
        assert_eq!(
            raw(libc::syscall(libc::SYS_finit_module, -1, empty.as_ptr(), 0)),
            eperm,
            "finit_module"
        );
        assert_eq!(
            raw(libc::syscall(
                libc::SYS_delete_module,
                c"bivy_nonexistent".as_ptr(),
                0
            )),
            eperm,
            "delete_module"
        );
        assert_eq!(
            raw(libc::syscall(
                libc::SYS_kexec_load,
                0usize,
                0usize,
                std::ptr::null::<u8>(),
                0usize
            )),
            eperm,
            "kexec_load"
        );
        assert_eq!(
            raw(libc::syscall(
                libc::SYS_kexec_file_load,
                -1,
                -1,
                0usize,
                empty.as_ptr(),
                0usize
            )),
            eperm,
            "kexec_file_load"
        );
        assert_eq!(
            raw(libc::syscall(
                libc::SYS_open_by_handle_at,
                libc::AT_FDCWD,
                std::ptr::null::<u8>(),
                0
            )),
            eperm,
            "open_by_handle_at"
        );
        let path = c"/bivy-nonexistent-mountpoint";
        assert_eq!(
            raw(libc::syscall(
                libc::SYS_umount2,
                path.as_ptr(),
                libc::MNT_FORCE
            )),
            eperm,
            "umount2(MNT_FORCE)"
        );
        // Plain umount2 passes the filter and reaches the kernel's path lookup.
        assert_eq!(
            raw(libc::syscall(libc::SYS_umount2, path.as_ptr(), 0)),
            -i64::from(libc::ENOENT),
            "umount2(0)"
        );
        assert_eq!(
            raw(libc::syscall(libc::SYS_getpid)),
            i64::from(pid),
            "getpid"
        );
    }
    // i386 entry points: filtered by their i386 numbers, everything else allowed (not killed).
    assert_eq!(int80(I386_GETPID, 0), pid, "i386 getpid under the filter");
    assert_eq!(int80(I386_INIT_MODULE, 0), -libc::EPERM, "i386 init_module");
    assert_eq!(
        int80(I386_FINIT_MODULE, 0),
        -libc::EPERM,
        "i386 finit_module"
    );
    assert_eq!(
        int80(I386_UMOUNT2, libc::MNT_FORCE as u32),
        -libc::EPERM,
        "i386 umount2(MNT_FORCE)"
    );
    assert_ne!(
        int80(I386_UMOUNT2, 0),
        -libc::EPERM,
        "i386 umount2(0) must reach the kernel"
    );

    assert_eq!(status_field("Seccomp:"), "2");
    assert_eq!(status_field("NoNewPrivs:"), "0");
    println!("CHILD-OK");
}

#[test]
fn seccomp_deny_key() {
    if child_is("seccomp_deny_key") {
        return seccomp_deny_key_child();
    }
    if !is_root() {
        return skip("seccomp_deny_key", "needs root");
    }
    // security.syscalls.deny=mknod: a bare name in a denylist kills (LXC semantics).
    let cfg = PolicyConfig {
        deny: "mknod".into(),
        ..Default::default()
    };
    let out = run_child("seccomp_deny_key", &seccomp::build_policy(&cfg).unwrap());
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // With an errno, the call fails instead.
    let cfg = PolicyConfig {
        deny: "mknod errno 13".into(),
        ..Default::default()
    };
    let out = run_child("seccomp_deny_key", &seccomp::build_policy(&cfg).unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("MKNOD -13"),
        "{:?}\n{stdout}",
        out.status
    );
}

/// The child half of `seccomp_deny_key`.
fn seccomp_deny_key_child() {
    load_policy_from_env();
    let path = c"/bivy-nonexistent-dir/fifo";
    // SAFETY: mknod with a valid C string; the directory does not exist, so nothing is created.
    let rc =
        raw(unsafe { libc::syscall(libc::SYS_mknod, path.as_ptr(), libc::S_IFIFO | 0o600, 0) });
    println!("MKNOD {rc}");
}

#[test]
fn seccomp_allowlist() {
    if child_is("seccomp_allowlist") {
        return seccomp_allowlist_child();
    }
    if !is_root() {
        return skip("seccomp_allowlist", "needs root");
    }
    let cfg = PolicyConfig {
        allow: "getpid\nwrite\nexit_group\nexit\nrt_sigreturn".into(),
        ..Default::default()
    };
    let mut policy = seccomp::build_policy(&cfg).unwrap();
    // The child must survive its refused calls: default errno EPERM instead of LXC's kill.
    policy = policy.replacen("allowlist\n", "allowlist errno 1\n", 1);
    let out = run_child("seccomp_allowlist", &policy);
    let names = [
        "getpid",
        "getppid refused",
        "getuid refused",
        "i386 getpid",
        "i386 getppid refused",
    ];
    match out.status.code() {
        Some(0) => {}
        Some(n) if (1..=names.len() as i32).contains(&n) => {
            panic!("allowlist check failed: {}", names[n as usize - 1])
        }
        _ => panic!(
            "child: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The child half of `seccomp_allowlist`: reports by exit code (no allocation after the filter).
fn seccomp_allowlist_child() {
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    load_policy_from_env();
    // From here only getpid/write/exit are allowed: no allocation, no harness; report by exit code.
    let eperm = -i64::from(libc::EPERM);
    // SAFETY: argument-less syscalls.
    let checks = unsafe {
        [
            raw(libc::syscall(libc::SYS_getpid)) == i64::from(pid),
            raw(libc::syscall(libc::SYS_getppid)) == eperm,
            raw(libc::syscall(libc::SYS_getuid)) == eperm,
            int80(I386_GETPID, 0) == pid,
            int80(I386_GETPPID, 0) == -libc::EPERM,
        ]
    };
    let code = checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1);
    // SAFETY: _exit ends the process at once (exit_group is allowed); nothing to clean up.
    unsafe { libc::_exit(code) }
}

// ---- cgroups ----------------------------------------------------------------------------------

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bivy::runtime::cgroup::{Cgroup, Layout};
use bivy::runtime::Limits;

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique_name() -> String {
    format!(
        "test-confine-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// Every place `bivy/<name>` could exist on this host.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let l = Layout::probe();
    l.v1.iter()
        .map(|(m, _)| m.clone())
        .chain(l.unified.clone())
        .map(|m| m.join("bivy").join(name))
        .collect()
}

/// Kills and removes the cgroup when the test ends, even on panic; the test then checks it is gone.
struct Guard(Cgroup);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill_all();
        let _ = self.0.remove();
    }
}

/// Root and the v1/v2 controllers the test needs, else a SKIP reason.
fn cgroup_skip(test: &str, controllers: &[&str]) -> bool {
    if !is_root() {
        skip(test, "needs root to create cgroups");
        return true;
    }
    let l = Layout::probe();
    let v2: String = l
        .unified
        .as_ref()
        .and_then(|u| std::fs::read_to_string(u.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    for c in controllers {
        if l.v1_mount(c).is_none() && !v2.split_whitespace().any(|x| x == *c) {
            skip(test, &format!("no {c} cgroup controller on this host"));
            return true;
        }
    }
    false
}

/// `sh -c script` that waits for a line on stdin before running: it is moved into the cgroup first.
fn spawn_in(cg: &Cgroup, script: &str) -> std::process::Child {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("read go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    cg.add_pid(child.id() as i32).expect("add_pid");
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child
}

/// The file of `controller` for this cgroup: v1 `<mount>/bivy/<name>/<v1file>` or v2 `<v2file>`.
fn limit_file(name: &str, controller: &str, v1file: &str, v2file: &str) -> PathBuf {
    let l = Layout::probe();
    match l.v1_mount(controller) {
        Some(m) => m.join("bivy").join(name).join(v1file),
        None => l
            .unified
            .as_ref()
            .unwrap()
            .join("bivy")
            .join(name)
            .join(v2file),
    }
}

fn assert_removed(name: &str) {
    for d in cgroup_dirs(name) {
        assert!(!d.exists(), "{} still exists after remove", d.display());
    }
}

#[test]
fn cgroup_memory_limit_ooms_the_child_only() {
    if cgroup_skip("cgroup_memory_limit_ooms_the_child_only", &["memory"]) {
        return;
    }
    let name = unique_name();
    let limits = Limits {
        memory: Some(64 << 20),
        ..Default::default()
    };
    let cg = Guard(Cgroup::create(&name, &limits, None).expect("create"));
    let child = spawn_in(
        &cg.0,
        "head -c 200000000 /dev/zero | tail -c 200000000 >/dev/null",
    );
    let out = child.wait_with_output().unwrap();
    // tail is OOM-killed (SIGKILL), so the pipeline exits 128+9.
    assert_eq!(
        out.status.code(),
        Some(137),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let s = cg.0.stats().expect("stats");
    let peak = s.memory_peak.expect("this host counts peak memory");
    assert!((60 << 20..=64 << 20).contains(&peak), "peak {peak}");
    assert!(cg.0.pids().is_empty());
    drop(cg);
    assert_removed(&name);
}

#[test]
fn cgroup_pids_limit_stops_a_fork_flood() {
    if cgroup_skip("cgroup_pids_limit_stops_a_fork_flood", &["pids"]) {
        return;
    }
    let name = unique_name();
    let limits = Limits {
        pids: Some(20),
        ..Default::default()
    };
    let cg = Guard(Cgroup::create(&name, &limits, None).expect("create"));
    let child = spawn_in(&cg.0, "for i in $(seq 40); do sleep 30 2>/dev/null & done");
    // The shell gives up at the first refused fork instead of retrying: it finishes, well
    // before the sleeps it started would (a generous limit, not a speed check).
    let out = bounded(Duration::from_secs(25), move || {
        child.wait_with_output().unwrap()
    })
    .expect("the fork flood's shell did not finish");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase().contains("fork"),
        "expected a failed fork, got {:?}: {err}",
        out.status
    );
    let n = cg.0.stats().expect("stats").processes;
    assert!(
        (15..=19).contains(&n),
        "{n} sleeps started (at most 19: sh itself counted while it ran)"
    );
    let t = Instant::now();
    cg.0.kill_all().expect("kill_all");
    eprintln!("kill_all of {n} sleeps: {:?}", t.elapsed());
    drop(cg);
    assert_removed(&name);
}

#[test]
fn cgroup_freeze_thaw_and_kill_all() {
    if cgroup_skip("cgroup_freeze_thaw_and_kill_all", &[]) {
        return;
    }
    freeze_kill_case(false);
}

/// The same through the v1 freezer and signal-by-signal kill (kernels without cgroup.kill).
#[test]
fn cgroup_freeze_thaw_and_kill_all_v1_fallback() {
    if cgroup_skip("cgroup_freeze_thaw_and_kill_all_v1_fallback", &["freezer"]) {
        return;
    }
    if Layout::probe().v1_mount("freezer").is_none() {
        return skip(
            "cgroup_freeze_thaw_and_kill_all_v1_fallback",
            "no v1 freezer hierarchy",
        );
    }
    freeze_kill_case(true);
}

fn freeze_kill_case(legacy: bool) {
    let name = unique_name();
    let cg = Cgroup::create(&name, &Limits::default(), None).expect("create");
    let cg = Guard(if legacy { cg.without_v2_core() } else { cg });
    let mut kids: Vec<_> = (0..5).map(|_| spawn_in(&cg.0, "exec sleep 60")).collect();
    assert!(
        poll_until(|| cg.0.pids().len() == 5),
        "pids {:?}",
        cg.0.pids()
    );
    assert!(!cg.0.is_frozen());
    cg.0.freeze().expect("freeze");
    assert!(cg.0.is_frozen());
    let state = std::fs::read_to_string(format!("/proc/{}/stat", kids[0].id())).unwrap();
    eprintln!(
        "frozen task (legacy={legacy}): {}",
        state.split(' ').nth(2).unwrap_or("?")
    );
    cg.0.thaw().expect("thaw");
    assert!(!cg.0.is_frozen());
    // Frozen, then killed: kill_all must still finish (it thaws / uses cgroup.kill).
    cg.0.freeze().expect("freeze");
    // kill_all returns (a SIGKILL to a frozen task is only delivered once it is thawed, so a
    // kill_all that forgot to thaw would wait forever) and every task died of SIGKILL. The
    // limit is generous: this checks that it finishes, not how fast.
    let t = Instant::now();
    let cg = bounded(Duration::from_secs(30), move || {
        cg.0.kill_all().expect("kill_all");
        cg
    })
    .expect("kill_all of a frozen cgroup did not return");
    eprintln!(
        "kill_all of 5 frozen sleeps (legacy={legacy}): {:?}",
        t.elapsed()
    );
    for k in &mut kids {
        let st = k.wait().unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    }
    cg.0.thaw().expect("thaw after kill");
    drop(cg);
    assert_removed(&name);
}

/// Run `f` on a thread; its result, or None if it did not finish within `limit` (the thread is
/// then left behind: the test fails anyway).
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

fn poll_until(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn cgroup_live_limits_and_delegation() {
    if cgroup_skip(
        "cgroup_live_limits_and_delegation",
        &["memory", "pids", "cpu", "cpuset"],
    ) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let name = unique_name();
    let limits = Limits {
        memory: Some(64 << 20),
        pids: Some(100),
        ..Default::default()
    };
    let cg = Guard(Cgroup::create(&name, &limits, Some((1_000_000, 1_000_000))).expect("create"));
    let mem = limit_file(&name, "memory", "memory.limit_in_bytes", "memory.max");
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap().trim().to_string();
    assert_eq!(read(&mem), (64u64 << 20).to_string());

    let more = Limits {
        memory: Some(128 << 20),
        cpuset: Some("0".into()),
        cpu_quota: Some((50_000, 100_000)),
        cpu_shares: Some(512),
        ..limits.clone()
    };
    cg.0.set_limits(&more).expect("set_limits");
    assert_eq!(read(&mem), (128u64 << 20).to_string());
    assert_eq!(
        read(&limit_file(&name, "cpuset", "cpuset.cpus", "cpuset.cpus")),
        "0"
    );
    assert_eq!(
        read(&limit_file(&name, "pids", "pids.max", "pids.max")),
        "100"
    );
    // The CPU bandwidth: v1's quota and period files, or v2's cpu.max.
    let quota = limit_file(&name, "cpu", "cpu.cfs_quota_us", "cpu.max");
    let bandwidth = |quota_file: &PathBuf| {
        let q = read(quota_file);
        match quota_file.file_name().and_then(|n| n.to_str()) {
            Some("cpu.max") => q,
            _ => format!(
                "{q} {}",
                read(&quota_file.with_file_name("cpu.cfs_period_us"))
            ),
        }
    };
    assert_eq!(bandwidth(&quota), "50000 100000");
    // Another period (the quota lifted first, as the kernel wants it to fit), then the same
    // period with another quota.
    for (q, p) in [(20_000, 50_000), (30_000, 50_000)] {
        let l = Limits {
            cpu_quota: Some((q, p)),
            ..more.clone()
        };
        cg.0.set_limits(&l).expect("set_limits");
        assert_eq!(bandwidth(&quota), format!("{q} {p}"));
    }

    // limits.memory.swap=false (the default here): memory+swap capped at the same value (v1 memsw).
    let memsw = mem.with_file_name("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        assert_eq!(read(&memsw), (128u64 << 20).to_string());
    }
    // Soft enforcement: only the soft limit (v1) / memory.high (v2) is set.
    let soft = Limits {
        memory: Some(96 << 20),
        memory_soft: true,
        ..limits.clone()
    };
    cg.0.set_limits(&soft).expect("soft limit");
    let soft_file = limit_file(&name, "memory", "memory.soft_limit_in_bytes", "memory.high");
    assert_eq!(read(&soft_file), (96u64 << 20).to_string());

    cg.0.set_limits(&Limits::default()).expect("remove limits");
    let unlimited = read(&mem);
    assert!(
        unlimited == "max" || unlimited.parse::<u64>().unwrap() > 1 << 60,
        "{unlimited}"
    );
    assert_eq!(
        read(&limit_file(&name, "pids", "pids.max", "pids.max")),
        "max"
    );
    let unlimited = bandwidth(&quota);
    assert!(
        unlimited == "-1 100000" || unlimited == "max 100000",
        "{unlimited}"
    );

    // Delegation: the directory and the process-moving files belong to the container root,
    // the limit files stay root's.
    for d in cgroup_dirs(&name) {
        let md = std::fs::metadata(&d).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (1_000_000, 1_000_000),
            "{}",
            d.display()
        );
        assert_eq!(
            std::fs::metadata(d.join("cgroup.procs")).unwrap().uid(),
            1_000_000
        );
    }
    assert_eq!(std::fs::metadata(&mem).unwrap().uid(), 0);

    // A sub-cgroup (as systemd in the container would make) is removed with it.
    for d in cgroup_dirs(&name) {
        std::fs::create_dir_all(d.join("init.scope/sub")).unwrap();
    }
    let again = Cgroup::open(&name).expect("open");
    let mut k = spawn_in(&again, "exec sleep 60");
    assert_eq!(again.pids(), vec![k.id() as i32]);
    drop(cg);
    assert_eq!(k.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_removed(&name);
    assert!(Cgroup::open(&name).is_err());
}

// ---- AppArmor ---------------------------------------------------------------------------------

use bivy::runtime::apparmor;

fn parser_skip(test: &str) -> bool {
    match apparmor::find_parser() {
        Ok(_) => false,
        Err(e) => {
            skip(test, &e.0);
            true
        }
    }
}

#[test]
fn apparmor_every_variant_compiles() {
    if parser_skip("apparmor_every_variant_compiles") {
        return;
    }
    let raw = "  # raw.apparmor from the instance\n  deny /opt/secret/** rw,\n  mount fstype=nfs,";
    for nesting in [false, true] {
        for privileged in [false, true] {
            for raw in ["", raw] {
                let p = apparmor::render("c1", nesting, privileged, raw);
                if let Err(e) = apparmor::check(&p) {
                    panic!(
                        "nesting={nesting} privileged={privileged} raw={}: {e}",
                        !raw.is_empty()
                    );
                }
            }
        }
    }
    // A long name is hashed and still compiles.
    apparmor::check(&apparmor::render(&"n".repeat(260), false, false, "")).expect("long name");
}

#[test]
fn apparmor_broken_raw_is_reported_with_its_line() {
    if parser_skip("apparmor_broken_raw_is_reported_with_its_line") {
        return;
    }
    let p = apparmor::render(
        "c1",
        false,
        false,
        "  capability sys_admin,\n  this is not a rule,\n",
    );
    let e = apparmor::check(&p)
        .expect_err("broken raw.apparmor must fail")
        .0;
    assert!(
        e.contains("apparmor_parser") && e.contains("at line"),
        "{e}"
    );
    assert!(e.contains("(raw.apparmor line 2)"), "{e}");
    eprintln!("broken raw.apparmor reported as: {e}");
}

#[test]
fn apparmor_prepare_without_kernel_support() {
    if apparmor::kernel_has_apparmor() {
        // The other half: `apparmor_profile_loads_and_unloads` runs on this kernel instead.
        return skip(
            "apparmor_prepare_without_kernel_support",
            "this kernel has AppArmor (apparmor_profile_loads_and_unloads covers it)",
        );
    }
    assert_eq!(apparmor::prepare("c1", false, false, "").unwrap(), None);
    assert_eq!(
        apparmor::prepare("c2", true, true, "").unwrap(),
        None,
        "logged once, still None"
    );
    apparmor::unload("c1").expect("unload of a never-loaded profile is fine");
}

#[test]
fn cgroup_restrict_devices() {
    if cgroup_skip("cgroup_restrict_devices", &[]) {
        return;
    }
    if Layout::probe().v1_mount("devices").is_none() {
        return skip(
            "cgroup_restrict_devices",
            "no v1 devices hierarchy (cgroup2 device BPF not supported yet)",
        );
    }
    let name = unique_name();
    let cg = Guard(Cgroup::create(&name, &Limits::default(), None).expect("create"));
    cg.0.restrict_devices(&[]).expect("restrict_devices");
    // /dev/zero is on the list; /dev/kmsg (c 1:11) is not.
    let script = "head -c 1 /dev/zero >/dev/null && echo zero-ok >&2; exec 3</dev/kmsg && echo kmsg-opened >&2";
    let out = spawn_in(&cg.0, script).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zero-ok"), "{err}");
    assert!(
        !err.contains("kmsg-opened") && err.contains("not permitted"),
        "/dev/kmsg must be refused: {err}"
    );
    drop(cg);
    assert_removed(&name);
}

/// On a kernel with AppArmor: `prepare` compiles and loads the container's profile in enforce
/// mode under its LXD-style label, a process can be confined by it, and `unload` removes it.
/// On a kernel without AppArmor (this CI's) it skips as "kernel lacks apparmor", which
/// `BIVY_MUST_WORK=1` accepts only when the CI declared `BIVY_KERNEL_LACKS=apparmor`.
#[test]
fn apparmor_profile_loads_and_unloads() {
    const NAME: &str = "apparmor_profile_loads_and_unloads";
    if !apparmor::kernel_has_apparmor() {
        return common::skip_kernel_lacks(NAME, "apparmor", "loading a profile needs AppArmor");
    }
    if !common::require_root() || parser_skip(NAME) {
        return;
    }
    let ct = format!("aa-test-{}", std::process::id());
    let raw = "  deny /etc/hostname r,";
    let label = apparmor::prepare(&ct, false, false, raw)
        .expect("prepare")
        .expect("a label on a kernel with AppArmor");
    assert_eq!(label, apparmor::profile_name(&ct));
    let loaded = || std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").unwrap();
    assert!(
        loaded().lines().any(|l| l == format!("{label} (enforce)")),
        "{label} not loaded in enforce mode:\n{}",
        loaded()
    );
    // A process started under the label is confined: the raw.apparmor deny rule holds. The
    // shell asks for the label on its next exec (the kernel's interface, as the runtime does).
    let script = format!(
        "printf 'exec %s' '{label}' > /proc/self/attr/exec && \\
         exec sh -c 'cat /proc/self/attr/current; cat /etc/hostname'"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run a confined shell");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with(&format!("{label} (enforce)")),
        "{stdout} {stderr}"
    );
    assert!(
        stderr.contains("Permission denied"),
        "deny rule not applied: {stdout} {stderr}"
    );
    apparmor::unload(&ct).expect("unload");
    assert!(
        !loaded()
            .lines()
            .any(|l| l.starts_with(&format!("{label} "))),
        "{label} still loaded after unload"
    );
}
