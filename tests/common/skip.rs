//! THE skip mechanism of every test in this repository: the integration tests (`tests/common`),
//! the unit tests in `src/` (`crate::test_skip`) and in `xtask/` include this one file.
//!
//! A test that cannot run on this host calls [`skip`] (or [`require_root`]) and returns:
//!
//! - it prints `SKIP <test>: <reason>` and appends the line to `$BIVY_SKIP_LOG`, which
//!   `cargo xtask test` counts and lists in its summary after cargo captured the output;
//! - with `BIVY_MUST_WORK=1` (CI) the skip panics instead: CI runs everything or fails.
//!
//! One exception, [`skip_kernel_lacks`]: a test about a kernel feature this host's kernel does
//! not have (AppArmor on a kernel built without it) cannot be made to run by installing
//! anything. Under `BIVY_MUST_WORK=1` such a skip still fails, unless the CI declared that its
//! kernel lacks the feature in `BIVY_KERNEL_LACKS` (comma-separated, e.g. `apparmor`); the skip is
//! then logged and counted like any other. The declaration is checked: the skip only happens when
//! the kernel really lacks the feature, so a declared feature that is present is tested.
//!
//! std only: `xtask` has no dependencies.

use std::path::Path;

/// `BIVY_MUST_WORK=1`: every skip is a failure (set in CI).
pub fn must_work() -> bool {
    std::env::var("BIVY_MUST_WORK").is_ok_and(|v| v == "1")
}

/// The running test's name: libtest names each test's thread after the test.
pub fn current_test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unknown test>")
        .to_owned()
}

/// The skip decision, separated from the environment so it can be tested: prints
/// `SKIP name: reason` and appends it to `log`, or panics when `must_work`.
pub fn skip_with(must_work: bool, log: Option<&Path>, name: &str, reason: &str) {
    if must_work {
        panic!("SKIP not allowed (BIVY_MUST_WORK=1): {name}: {reason}");
    }
    eprintln!("SKIP {name}: {reason}");
    if let Some(log) = log {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{name}: {reason}");
        }
    }
}

/// Record a skip of `name` (panics under `BIVY_MUST_WORK=1`). The caller returns afterwards.
pub fn skip(name: &str, reason: &str) {
    let log = std::env::var_os("BIVY_SKIP_LOG").map(std::path::PathBuf::from);
    skip_with(must_work(), log.as_deref(), name, reason);
}

/// Is `feature` in the comma-separated `declared` list (`BIVY_KERNEL_LACKS`)?
pub fn declared_lacking(declared: &str, feature: &str) -> bool {
    declared.split(',').any(|f| f.trim() == feature)
}

/// Skip `name` because this host's kernel lacks `feature` (the caller checked that it does).
/// Under `BIVY_MUST_WORK=1` this fails unless `BIVY_KERNEL_LACKS` names `feature`.
pub fn skip_kernel_lacks(name: &str, feature: &str, reason: &str) {
    let declared = std::env::var("BIVY_KERNEL_LACKS").unwrap_or_default();
    let log = std::env::var_os("BIVY_SKIP_LOG").map(std::path::PathBuf::from);
    let must = must_work() && !declared_lacking(&declared, feature);
    skip_with(
        must,
        log.as_deref(),
        name,
        &format!("{reason} (kernel lacks {feature})"),
    );
}

/// The effective uid (from /proc, no unsafe).
pub fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// True when running as root; otherwise records a skip of the current test (panics under
/// `BIVY_MUST_WORK=1`) and returns false: `if !require_root() { return; }`.
pub fn require_root() -> bool {
    if euid() == 0 {
        return true;
    }
    skip(&current_test_name(), "needs root");
    false
}

/// Is `prog` on `$PATH`?
pub fn have_cmd(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}
