//! Small helpers shared by the tasks: workspace paths, running commands with a step name in the
//! error, timing, and hashing through the host's `sha256sum`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Task result: errors are human-readable and name the failed step.
pub type Result<T = ()> = std::result::Result<T, String>;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("xtask/ always has a parent directory")
        .to_path_buf()
}

/// `target/` of the workspace (or `$CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root().join(d)
            }
        }
        _ => root().join("target"),
    }
}

/// `cargo` as given by the cargo that started us, so the same toolchain is used.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    cmd
}

/// Format a command line for logs.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` with inherited stdio; `step` names it in the error.
pub fn run(step: &str, cmd: &mut Command) -> Result {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("{step}: cannot run `{}`: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step}: `{}` failed ({status})", show(cmd)))
    }
}

/// Run `cmd`, capture stdout (stderr is inherited); `step` names it in the error.
pub fn output(step: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{step}: cannot run `{}`: {e}", show(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{step}: `{}` failed ({})", show(cmd), out.status))
    }
}

/// Is `prog` on `$PATH` (or an existing path)?
pub fn have(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// The effective uid, read from /proc so xtask needs no libc crate.
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

/// sha256 of a file, hex, via the host's `sha256sum` (coreutils).
pub fn sha256(path: &Path) -> Result<String> {
    let out = output("sha256", Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "sha256sum: empty output".into())
}

/// Debian packages from `pkgs` that are not installed (per `dpkg-query`).
pub fn missing_debs<'a>(pkgs: &[&'a str]) -> Vec<&'a str> {
    pkgs.iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect()
}

/// Install missing Debian packages with apt-get (root only); a no-op when all are present.
pub fn ensure_debs(pkgs: &[&str]) -> Result {
    let missing = missing_debs(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    if euid() != 0 || !have("apt-get") {
        return Err(format!(
            "missing Debian packages: {} (install them: apt-get install {})",
            missing.join(" "),
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args);
        c
    };
    // Try without an update first: it is fast when the lists are fresh.
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    if run("apt-get install", &mut install).is_ok() {
        return Ok(());
    }
    run("apt-get update", &mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    run("apt-get install", &mut install)
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Time a closure, print `label: N.Ns` to stderr, and return its result.
pub fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("xtask: {label}: {:.1}s", t.elapsed().as_secs_f64());
    r
}

/// `path` relative to the workspace root when it is inside it, for shorter messages.
pub fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Write a file atomically: write `<path>.tmp`, then rename.
pub fn write_atomic(path: &Path, data: impl AsRef<[u8]>) -> Result {
    let tmp = path.with_extension("tmp-xtask");
    std::fs::write(&tmp, data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

/// Make `dir` and its parents.
pub fn mkdirs(dir: impl AsRef<Path>) -> Result {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))
}

/// Add `extra` to an environment-style flag string (RUSTFLAGS) unless already present.
pub fn append_flags(existing: Option<&OsStr>, extra: &str) -> String {
    let existing = existing
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if existing
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .contains(extra)
    {
        return existing;
    }
    if existing.trim().is_empty() {
        extra.to_owned()
    } else {
        format!("{} {extra}", existing.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_flags_keeps_existing() {
        assert_eq!(append_flags(None, "-C x"), "-C x");
        assert_eq!(
            append_flags(Some(OsStr::new("-D warnings")), "-C x"),
            "-D warnings -C x"
        );
        assert_eq!(append_flags(Some(OsStr::new("-C x")), "-C x"), "-C x");
    }

    #[test]
    fn root_has_the_workspace_manifest() {
        assert!(root().join("Cargo.toml").is_file());
        assert!(root().join("xtask/Cargo.toml").is_file());
    }
}
