//! The device cgroup: LXD's default allow list ([`DEFAULT_DEVICES`]), the deny-all-then-allow
//! restriction every container starts with, and the allow/deny rules that `unix-char`,
//! `unix-block`, GPU and USB devices add and remove while it runs.
//!
//! One of two mechanisms: the v1 `devices` controller where the host mounts it (a v1 or hybrid
//! host), else on the cgroup2 hierarchy a BPF device program built from the same rules
//! ([`super::bpf`]), as LXC chooses for LXD. The controller alone holds on a hybrid host: its
//! rules bind the container's cgroup and every cgroup below it, only a task of the initial user
//! namespace with `CAP_SYS_ADMIN` may change them, and container root cannot move its tasks out
//! of its delegated cgroup; a program beside it cost every start a verified BPF load (0.5-0.7 ms
//! here) and added nothing. Neither in a nested bivy (the kernel takes device rules and
//! programs only from its initial user namespace; the outer container's hold for everything
//! inside it). A kernel that cannot run device programs is logged once and, on a pure cgroup2
//! host, left to the kernel's own rule (no mknod in a user namespace), as LXD does.

use std::path::Path;
use std::sync::OnceLock;

use super::{bpf, write, Cgroup};
use crate::runtime::Result;

/// Devices a container may use after [`Cgroup::restrict_devices`] (LXD's default list), each with
/// the reason it is allowed.
pub const DEFAULT_DEVICES: &[(&str, &str)] = &[
    (
        "c *:* m",
        "mknod of any char device: creating a node is harmless, opening it is checked",
    ),
    ("b *:* m", "mknod of any block device, same reason"),
    ("c 1:3 rwm", "/dev/null"),
    ("c 1:5 rwm", "/dev/zero"),
    ("c 1:7 rwm", "/dev/full"),
    ("c 1:8 rwm", "/dev/random"),
    ("c 1:9 rwm", "/dev/urandom"),
    ("c 5:0 rwm", "/dev/tty"),
    (
        "c 5:1 rwm",
        "/dev/console (the container's console pty is bind-mounted there)",
    ),
    (
        "c 5:2 rwm",
        "/dev/ptmx (the container's own devpts instance)",
    ),
    ("c 136:* rwm", "/dev/pts/* (pseudo-terminals)"),
    (
        "c 10:200 rwm",
        "/dev/net/tun (VPNs in the container's own network namespace)",
    ),
    (
        "c 10:229 rwm",
        "/dev/fuse (FUSE mounts, which AppArmor's fstype=fuse rule allows)",
    ),
];

/// Every rule a container is allowed: LXD's default list, then `extra`.
fn allowed(extra: &[String]) -> impl Iterator<Item = &str> {
    DEFAULT_DEVICES
        .iter()
        .map(|(r, _why)| *r)
        .chain(extra.iter().map(String::as_str))
}

/// Write each rule to the v1 `file` (`devices.allow` or `devices.deny`) through one open
/// file: the controller takes one rule per write.
fn write_each<'a>(file: &Path, rules: impl Iterator<Item = &'a str>) -> Result<()> {
    use std::io::Write;
    let fail = |rule: &str, e: std::io::Error| {
        crate::runtime::Error(format!(
            "cgroup: writing {rule:?} to {}: {e}",
            file.display()
        ))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| fail("", e))?;
    for rule in rules {
        let n = f.write(rule.as_bytes()).map_err(|e| fail(rule, e))?;
        if n != rule.len() {
            return Err(fail(rule, std::io::Error::other("short write")));
        }
    }
    Ok(())
}

impl Cgroup {
    /// Restrict device access to LXD's default list plus `extra` (entries in `devices.allow`
    /// syntax, e.g. `c 10:232 rwm` for a `unix-char` device), with the v1 controller and the
    /// cgroup2 program. For every container: a node that reaches its rootfs from the host side
    /// (a migration peer's rsync, a privileged container's mknod) opens nothing else.
    pub fn restrict_devices(&self, extra: &[String]) -> Result<()> {
        if let Some(d) = self.devices_dir() {
            write(&d.join("devices.deny"), "a")?;
            write_each(&d.join("devices.allow"), allowed(extra))?;
        }
        self.device_program(extra)
    }

    /// The cgroup2 device program allowing LXD's default list plus `extra`, replacing the
    /// one attached before (see [`super::bpf`]). Nothing to do where there is none to make.
    fn device_program(&self, extra: &[String]) -> Result<()> {
        let Some(dir) = self.bpf_dir() else {
            return Ok(());
        };
        let rules = allowed(extra)
            .map(bpf::parse_rule)
            .collect::<Result<Vec<_>>>()?;
        bpf::install(dir, &rules)
    }

    /// The cgroup2 directory to attach the device program to: not in a nested bivy, not where
    /// the v1 controller holds (see the module's comment) unless a program is attached already
    /// (a run an older bivy started with both: its program must follow the rules' changes),
    /// and only where the kernel runs device programs (probed once per process, logged when
    /// not).
    fn bpf_dir(&self) -> Option<&Path> {
        if crate::runtime::host::nested() {
            return None;
        }
        let dir = self.unified.as_deref()?;
        if self.devices_dir().is_some() {
            return bpf::attached(dir)
                .is_ok_and(|p| !p.is_empty())
                .then_some(dir);
        }
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        let ok = *SUPPORTED.get_or_init(|| match bpf::supported() {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "bivy: this kernel does not run cgroup device programs ({e}): containers' \
                     device access is not restricted by a device cgroup (an unprivileged \
                     container still cannot make device nodes; a privileged one can)"
                );
                false
            }
        });
        ok.then_some(dir)
    }

    /// The v1 devices controller's directory, when this bivy may use it: the kernel takes
    /// device rules only from its initial user namespace, so a nested bivy (in a container)
    /// leaves them to the outer container's cgroup, which holds for everything inside it (and
    /// mknod is refused in a user namespace anyway).
    fn devices_dir(&self) -> Option<&Path> {
        if crate::runtime::host::nested() {
            return None;
        }
        self.v1_dir("devices")
    }

    /// A running container's device rules change (hot-plug): each of `rules` is written to the
    /// v1 controller's `file` (`devices.allow` or `devices.deny`), and the cgroup2 program is
    /// rebuilt from `extra`, the instance's whole list after the change.
    pub fn device_rules(&self, file: &str, rules: &[String], extra: &[String]) -> Result<()> {
        if let Some(d) = self.devices_dir() {
            write_each(&d.join(file), rules.iter().map(String::as_str))?;
        }
        self.device_program(extra)
    }
}
