//! Confinement tests against the real kernel: seccomp filters, AppArmor profiles, cgroups.
//!
//! Tests that load a seccomp filter do it in a fresh copy of this test binary (re-exec'd with
//! `--exact <child test>` and `BIVY_CONFINE_CHILD=<name>`), never in the harness process: a filter
//! cannot be removed, and forking a multithreaded harness is unsafe.
//! A test missing a host feature (root, apparmor_parser, a cgroup controller) prints
//! `SKIP <test>: <reason>` and passes, unless `BIVY_MUST_WORK=1`, which turns the skip into a failure.
//!
//! This file uses `unsafe` for raw syscalls and `int 0x80`: the point is to call exactly the
//! syscall the filter must catch, without libc wrappers in the way.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use bivy::runtime::seccomp::{self, PolicyConfig};

/// Report a missing host feature: passes with a SKIP line, or fails under BIVY_MUST_WORK=1.
fn skip(test: &str, reason: &str) {
    if std::env::var("BIVY_MUST_WORK").as_deref() == Ok("1") {
        panic!("{test}: required feature missing (BIVY_MUST_WORK=1): {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when this process is the re-exec'd child for `name`.
fn child_is(name: &str) -> bool {
    std::env::var("BIVY_CONFINE_CHILD").as_deref() == Ok(name)
}

/// Run the `name` test alone in a fresh copy of this test binary, with `BIVY_CONFINE_POLICY` set.
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
        rc as i64
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
    if !is_root() {
        return skip(
            "seccomp_default_filter",
            "needs root (CAP_SYS_ADMIN to load a filter without NO_NEW_PRIVS)",
        );
    }
    let policy = seccomp::build_policy(&PolicyConfig::default()).unwrap();
    let out = run_child("seccomp_default_filter_child", &policy);
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

#[test]
fn seccomp_default_filter_child() {
    if !child_is("seccomp_default_filter_child") {
        return; // only meaningful inside the re-exec'd child
    }
    // Before the filter: i386 getpid works (the kernel has ia32 emulation).
    // SAFETY: getpid cannot fail and has no arguments.
    let pid = unsafe { libc::getpid() };
    assert_eq!(int80(I386_GETPID, 0), pid, "i386 getpid before the filter");
    load_policy_from_env();

    let eperm = -i64::from(libc::EPERM);
    let empty = c"";
    // SAFETY (all raw syscalls below): the filter answers before the kernel reads any argument;
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
    if !is_root() {
        return skip("seccomp_deny_key", "needs root");
    }
    // security.syscalls.deny=mknod: a bare name in a denylist kills (LXC semantics).
    let cfg = PolicyConfig {
        deny: "mknod".into(),
        ..Default::default()
    };
    let out = run_child(
        "seccomp_deny_key_child",
        &seccomp::build_policy(&cfg).unwrap(),
    );
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
    let out = run_child(
        "seccomp_deny_key_child",
        &seccomp::build_policy(&cfg).unwrap(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("MKNOD -13"),
        "{:?}\n{stdout}",
        out.status
    );
}

#[test]
fn seccomp_deny_key_child() {
    if !child_is("seccomp_deny_key_child") {
        return;
    }
    load_policy_from_env();
    let path = c"/bivy-nonexistent-dir/fifo";
    // SAFETY: mknod with a valid C string; the directory does not exist, so nothing is created.
    let rc =
        raw(unsafe { libc::syscall(libc::SYS_mknod, path.as_ptr(), libc::S_IFIFO | 0o600, 0) });
    println!("MKNOD {rc}");
}

#[test]
fn seccomp_allowlist() {
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
    let out = run_child("seccomp_allowlist_child", &policy);
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

#[test]
fn seccomp_allowlist_child() {
    if !child_is("seccomp_allowlist_child") {
        return;
    }
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
