//! AppArmor: render the container profile, load it with `apparmor_parser`, label the init exec.
//!
//! The template is data (`apparmor/container.profile`, embedded): LXD's container profile rules.
//! Rendering is placeholder substitution plus a few generated rule blocks ("deny writes under a
//! directory except these entries" needs one glob per diverging character; we generate them from
//! the small trees below instead of writing them by hand).
//!
//! The kernel interface is AppArmor's own text tool: there is no stable binary policy ABI, so the
//! profile is compiled and loaded by `apparmor_parser` (found on PATH; its absence is an error
//! naming it). On a kernel without AppArmor, [`prepare`] logs once and confines nothing.
//! The label is applied by writing `exec <label>` to `/proc/self/attr/apparmor/exec` just before
//! the container's init is exec'd ([`set_exec_label`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;

use crate::runtime::{Error, Result};

/// The embedded template.
pub const TEMPLATE: &str = include_str!("../../apparmor/container.profile");

/// AppArmor's limit on profile names is 253 characters; longer names are hashed, like LXD.
const MAX_NAME: usize = 253;

/// `BIVY_DIR` (default /var/lib/bivy): the state directory, part of every profile name so two
/// managers (or a real LXD) on one host never share a profile.
fn bivy_dir() -> PathBuf {
    std::env::var_os("BIVY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/bivy"))
}

/// The profile name (= label) of a container: `lxd-<name>_<$BIVY_DIR>`, LXD's scheme
/// (`lxd-<instance>_<var path>`), so tools that recognise LXD's container labels recognise ours;
/// the var-path suffix keeps it apart from a real LXD's. A name that would exceed AppArmor's limit
/// becomes the sha256 of `<name>_<dir>`.
pub fn profile_name(name: &str) -> String {
    profile_name_in(name, &bivy_dir())
}

fn profile_name_in(name: &str, dir: &Path) -> String {
    let full = format!("{name}_<{}>", dir.display());
    if full.len() + 3 >= MAX_NAME {
        let d = ring::digest::digest(&ring::digest::SHA256, full.as_bytes());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        return format!("lxd-{hex}");
    }
    format!("lxd-{full}")
}

/// A path tree: the entries under a directory that a rule block treats specially.
/// A name ending in `*` covers every entry starting with it; an empty subtree covers the whole entry.
struct Tree(&'static [(&'static str, Tree)]);

/// Writable parts of /proc/sys (namespaced, LXD's list): everything else is denied.
const PROC_SYS_WRITABLE: Tree = Tree(&[
    (
        "kernel",
        Tree(&[
            ("domainname", Tree(&[])),
            ("hostname", Tree(&[])),
            ("msg*", Tree(&[])),
            ("sem*", Tree(&[])),
            ("shm*", Tree(&[])),
        ]),
    ),
    ("net", Tree(&[])),
]);

/// Writable parts of /sys: the container's network devices, cgroup and bpf filesystems. `kernel`
/// is listed so the generated rules leave it to the explicit `deny /sys/k*` of the template.
const SYS_WRITABLE: Tree = Tree(&[
    ("class", Tree(&[("net", Tree(&[]))])),
    ("devices", Tree(&[("virtual", Tree(&[("net", Tree(&[]))]))])),
    ("fs", Tree(&[("cgroup", Tree(&[])), ("bpf", Tree(&[]))])),
    ("kernel", Tree(&[])),
]);

/// Paths bind/move/remount rules must not touch (they hide or expose kernel state).
const MOUNT_PROTECTED: Tree = Tree(&[
    ("proc", Tree(&[])),
    ("sys", Tree(&[])),
    ("dev", Tree(&[(".lxc", Tree(&[]))])),
]);

/// rbind additionally protects /dev as a whole (and / itself is never matched).
const RBIND_PROTECTED: Tree = Tree(&[("proc", Tree(&[])), ("sys", Tree(&[])), ("dev", Tree(&[]))]);

/// Globs matching every path under `dir` (which ends in `/`) that is NOT in `tree`.
/// For each prefix shared by the listed names, one `prefix[^next chars]*{,/**}` glob covers the
/// names diverging there; a fully listed name with a subtree recurses into it.
fn complement(dir: &str, tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, "", tree, &mut out);
    out
}

fn walk(dir: &str, prefix: &str, tree: &Tree, out: &mut Vec<String>) {
    // Names (without a trailing `*`) that start with `prefix`.
    let names: Vec<(&str, bool, &Tree)> = tree
        .0
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, t)| match n.strip_suffix('*') {
            Some(stem) => (stem, true, t),
            None => (*n, false, t),
        })
        .collect();
    if names.iter().any(|(n, wild, _)| *wild && *n == prefix) {
        return; // `prefix*` is listed: everything from here on is covered
    }
    let exact = names.iter().find(|(n, _, _)| *n == prefix);
    match exact {
        Some((_, _, sub)) if !sub.0.is_empty() => walk(&format!("{dir}{prefix}/"), "", sub, out),
        Some(_) => {}
        // The bare prefix is itself an entry not in the tree (never for the empty prefix).
        None if !prefix.is_empty() => out.push(format!("{dir}{prefix}{{,/**}}")),
        None => {}
    }
    let mut next: Vec<char> = names
        .iter()
        .filter_map(|(n, _, _)| n[prefix.len()..].chars().next())
        .collect();
    crate::util::sort::sort(&mut next);
    next.dedup();
    if next.is_empty() {
        out.push(format!("{dir}{prefix}?*{{,/**}}"));
    } else {
        let class: String = next.iter().collect();
        out.push(format!("{dir}{prefix}[^{class}]*{{,/**}}"));
        for c in next {
            walk(dir, &format!("{prefix}{c}"), tree, out);
        }
    }
}

/// Option sets of the read-only bind remounts a distro does (LXD's list).
const RO_REMOUNT_OPTIONS: &[&str] = &[
    "ro,remount,bind",
    "ro,remount,bind,nodev",
    "ro,remount,bind,noexec",
    "ro,remount,bind,noexec,nodev",
    "ro,remount,bind,noatime",
    "ro,remount,bind,nosuid",
    "ro,remount,bind,nosuid,nodev",
    "ro,remount,bind,nosuid,noexec",
    "ro,remount,bind,nosuid,noexec,nodev",
    "ro,remount,bind,nosuid,noexec,strictatime",
];

fn mount_rules() -> String {
    let mut out = String::new();
    let safe = complement("/", &MOUNT_PROTECTED);
    for opts in RO_REMOUNT_OPTIONS.iter().chain(&["rw,bind", "rw,move"]) {
        for p in &safe {
            out.push_str(&format!("  mount options=({opts}) {p},\n"));
        }
    }
    for p in complement("/", &RBIND_PROTECTED) {
        out.push_str(&format!("  mount options=(rw,rbind) {p},\n"));
    }
    out.pop();
    out
}

fn deny_rules(dir: &str, tree: &Tree) -> String {
    complement(dir, tree)
        .iter()
        .map(|p| format!("  deny {p} wklx,"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Render the profile. `privileged` containers (no user namespace) do not get the unprivileged
/// mount rules; `raw` (raw.apparmor) is appended last, inside the profile.
pub fn render(name: &str, nesting: bool, privileged: bool, raw: &str) -> String {
    render_label(&profile_name(name), nesting, privileged, raw)
}

fn render_label(label: &str, nesting: bool, privileged: bool, raw: &str) -> String {
    let mut out = String::new();
    let mut keep = true;
    for line in TEMPLATE.lines() {
        if line.starts_with("# ") || line == "#" {
            continue; // template comment
        }
        match line.trim() {
            "{{if nesting}}" => keep = nesting,
            "{{if unprivileged}}" => keep = !privileged,
            "{{end}}" => keep = true,
            "{{mount_rules}}" if keep => out.push_str(&format!("{}\n", mount_rules())),
            "{{deny_proc_sys}}" if keep => out.push_str(&format!(
                "{}\n",
                deny_rules("/proc/sys/", &PROC_SYS_WRITABLE)
            )),
            "{{deny_sys}}" if keep => {
                out.push_str(&format!("{}\n", deny_rules("/sys/", &SYS_WRITABLE)))
            }
            "{{raw}}" if !raw.trim().is_empty() => {
                out.push_str("  ### raw.apparmor\n");
                out.push_str(raw.trim_end());
                out.push('\n');
            }
            "{{raw}}" => {}
            _ if keep => {
                out.push_str(&line.replace("{{name}}", &format!("\"{label}\"")));
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// The 1-based line where raw.apparmor starts in a rendered profile, for error messages.
fn raw_start(rendered: &str) -> Option<usize> {
    rendered
        .lines()
        .position(|l| l == "  ### raw.apparmor")
        .map(|i| i + 2)
}

/// Whether the running kernel enforces AppArmor.
pub fn kernel_has_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
        && Path::new("/sys/kernel/security/apparmor").exists()
}

/// `apparmor_parser` on PATH.
pub fn find_parser() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("apparmor_parser"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error(
            "apparmor: `apparmor_parser` not found on PATH; it is needed to compile and load the \
             container profile (Debian/Ubuntu package `apparmor`)"
                .into(),
        )
        })
}

/// Run apparmor_parser; on failure the error quotes its message and, when the failing line is in
/// raw.apparmor, says which line of raw.apparmor that is.
fn run_parser(args: &[&str], file: &Path, rendered: &str) -> Result<()> {
    let parser = find_parser()?;
    let out = Command::new(&parser)
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("apparmor: running {}: {e}", parser.display())))?;
    if out.status.success() {
        return Ok(());
    }
    // Drop the parser's notice about the kernel's missing cache interface: noise, not the error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let msg = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Cache read/write disabled"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut hint = String::new();
    if let (Some(start), Some(n)) = (raw_start(rendered), line_of(&msg)) {
        if n >= start {
            hint = format!(" (raw.apparmor line {})", n - start + 1);
        }
    }
    Err(Error(format!(
        "apparmor: apparmor_parser {} failed{hint}: {msg}",
        args.join(" ")
    )))
}

/// The N of "... at line N" in an apparmor_parser message.
fn line_of(msg: &str) -> Option<usize> {
    let rest = &msg[msg.find("at line ")? + 8..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Compile a rendered profile without loading it (`apparmor_parser -Q -T -K`): works on kernels
/// without AppArmor, so the daemon can validate raw.apparmor anywhere.
pub fn check(rendered: &str) -> Result<()> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "bivy-apparmor-check-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let path = PathBuf::from(path.to_string_lossy().replace(['(', ')'], ""));
    // A new file only (O_EXCL: a planted symlink in the shared temp directory is refused, not
    // followed), readable by root alone.
    let _ = std::fs::remove_file(&path);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
    }
    .map_err(|e| Error(format!("apparmor: creating {}: {e}", path.display())))?;
    f.write_all(rendered.as_bytes())
        .map_err(|e| Error(format!("apparmor: writing {}: {e}", path.display())))?;
    drop(f);
    let r = run_parser(&["-Q", "-T", "-K"], &path, rendered);
    let _ = std::fs::remove_file(&path);
    r
}

fn profiles_dir() -> PathBuf {
    bivy_dir().join("apparmor").join("profiles")
}

fn cache_dir() -> PathBuf {
    bivy_dir().join("apparmor").join("cache")
}

static NO_APPARMOR: Once = Once::new();

/// Render, write and load the container's profile. Returns its label, or None (logged once per
/// process) when the kernel has no AppArmor.
pub fn prepare(name: &str, nesting: bool, privileged: bool, raw: &str) -> Result<Option<String>> {
    if !kernel_has_apparmor() {
        NO_APPARMOR.call_once(|| {
            eprintln!(
                "bivy: AppArmor is not enabled in this kernel (/sys/module/apparmor/parameters/enabled \
                 is not Y or /sys/kernel/security/apparmor is missing): containers run without an \
                 AppArmor profile"
            )
        });
        return Ok(None);
    }
    let rendered = render(name, nesting, privileged, raw);
    let (dir, cache) = (profiles_dir(), cache_dir());
    for d in [&dir, &cache] {
        std::fs::create_dir_all(d)
            .map_err(|e| Error(format!("apparmor: creating {}: {e}", d.display())))?;
    }
    let file = dir.join(name);
    crate::util::fs::atomic_write(&file, rendered.as_bytes())
        .map_err(|e| Error(format!("apparmor: writing {}: {e}", file.display())))?;
    let cache = cache.to_string_lossy().into_owned();
    run_parser(&["-rWL", &cache], &file, &rendered)?;
    Ok(Some(profile_name(name)))
}

/// Unload the container's profile (when loaded) and delete its file. A missing profile is fine.
pub fn unload(name: &str) -> Result<()> {
    let file = profiles_dir().join(name);
    if !file.exists() {
        return Ok(());
    }
    if kernel_has_apparmor() {
        let rendered = std::fs::read_to_string(&file).unwrap_or_default();
        run_parser(&["-R"], &file, &rendered)?;
    }
    std::fs::remove_file(&file)
        .map_err(|e| Error(format!("apparmor: removing {}: {e}", file.display())))
}

/// Make the next execve of this thread switch to `label`: `exec <label>` into
/// /proc/self/attr/apparmor/exec (kernels with LSM stacking), else /proc/self/attr/exec.
pub fn set_exec_label(label: &str) -> Result<()> {
    let data = format!("exec {label}");
    let mut last = None;
    for p in [
        "/proc/thread-self/attr/apparmor/exec",
        "/proc/thread-self/attr/exec",
    ] {
        match std::fs::OpenOptions::new().write(true).open(p) {
            Ok(mut f) => {
                return f
                    .write_all(data.as_bytes())
                    .map_err(|e| Error(format!("apparmor: writing {data:?} to {p}: {e}")));
            }
            Err(e) => last = Some((p, e)),
        }
    }
    let (p, e) = last.expect("two paths tried");
    Err(Error(format!("apparmor: opening {p}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complement_globs() {
        let got = complement("/sys/", &Tree(&[("fs", Tree(&[("bpf", Tree(&[]))]))]));
        assert_eq!(
            got,
            [
                "/sys/[^f]*{,/**}",
                "/sys/f{,/**}",
                "/sys/f[^s]*{,/**}",
                "/sys/fs/[^b]*{,/**}",
                "/sys/fs/b{,/**}",
                "/sys/fs/b[^p]*{,/**}",
                "/sys/fs/bp{,/**}",
                "/sys/fs/bp[^f]*{,/**}",
                "/sys/fs/bpf?*{,/**}",
                "/sys/fs?*{,/**}",
            ]
        );
        let got = complement("/d/", &Tree(&[("msg*", Tree(&[])), ("ms", Tree(&[]))]));
        assert_eq!(
            got,
            [
                "/d/[^m]*{,/**}",
                "/d/m{,/**}",
                "/d/m[^s]*{,/**}",
                "/d/ms[^g]*{,/**}"
            ]
        );
    }

    #[test]
    fn names() {
        let dir = Path::new("/var/lib/bivy");
        assert_eq!(profile_name_in("c1", dir), "lxd-c1_</var/lib/bivy>");
        let long = profile_name_in(&"x".repeat(300), dir);
        assert_eq!(long.len(), 4 + 64);
    }

    #[test]
    fn render_variants() {
        let plain = render("c1", false, true, "");
        assert!(plain.contains("profile \"lxd-c1_<"), "{plain}");
        assert!(plain.contains("flags=(attach_disconnected,mediate_deleted)"));
        assert!(!plain.contains("{{"), "unrendered placeholder");
        assert!(
            !plain.contains("pivot_root"),
            "privileged, no nesting: no pivot_root"
        );
        assert!(
            !plain.contains("# Placeholders"),
            "template comments are dropped"
        );
        assert!(plain.contains("  deny /proc/sys/kernel/hostname?*{,/**} wklx,"));
        assert!(plain.contains("  deny /sys/class/net?*{,/**} wklx,"));
        assert!(plain.contains("  mount options=(rw,bind) /dev/.lxc?*{,/**},"));
        let nest = render("c1", true, false, "  capability sys_admin,");
        assert!(nest.contains("### security.nesting") && nest.contains("### Unprivileged"));
        assert!(
            nest.trim_end()
                .ends_with("  ### raw.apparmor\n  capability sys_admin,\n}"),
            "{nest}"
        );
        assert_eq!(raw_start(&nest), Some(nest.lines().count() - 1));
    }

    /// The default rendering is golden: changes to the template or generators show up here.
    #[test]
    fn golden_profile() {
        let got = render_label("lxd-c1_</var/lib/bivy>", false, false, "");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/apparmor/golden/c1-unprivileged.profile"
        );
        if std::env::var_os("BIVY_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &got).unwrap();
        }
        let want =
            std::fs::read_to_string(path).expect("golden file (BIVY_UPDATE_GOLDEN=1 writes it)");
        assert_eq!(
            got, want,
            "rendered profile changed; review and rerun with BIVY_UPDATE_GOLDEN=1"
        );
    }

    #[test]
    fn parser_line_numbers() {
        assert_eq!(
            line_of("AppArmor parser error for f in profile f at line 212: syntax error"),
            Some(212)
        );
        assert_eq!(line_of("no line"), None);
    }
}
