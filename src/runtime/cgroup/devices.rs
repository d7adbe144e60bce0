//! The v1 `devices` controller: LXD's default allow list ([`DEFAULT_DEVICES`]), the
//! deny-all-then-allow restriction every container starts with, and the allow/deny rules that
//! `unix-char`, `unix-block`, GPU and USB devices add and remove while it runs.
//!
//! Not on pure cgroup2 (that needs a BPF device program, not built yet) and not in a nested bivy
//! (the kernel takes device rules only from its initial user namespace).

use std::path::Path;

use super::{write, Cgroup};
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

impl Cgroup {
    /// Restrict device access (v1 `devices` controller) to LXD's default list plus `extra`
    /// (entries in `devices.allow` syntax, e.g. `c 10:232 rwm` for a `unix-char` device).
    /// For every container: a node that reaches its rootfs from the host side (a migration
    /// peer's rsync, a privileged container's mknod) opens nothing else. Not in a nested bivy
    /// (see `devices_dir`).
    /// On pure cgroup2 this needs a BPF_PROG_TYPE_CGROUP_DEVICE program, not built yet: the
    /// restriction is then the kernel's own (no mknod in a user namespace, so an unprivileged
    /// container reaches only the nodes bivy binds in and those of its rootfs); privileged
    /// containers there are not restricted (README, Status).
    pub fn restrict_devices(&self, extra: &[String]) -> Result<()> {
        let Some(d) = self.devices_dir() else {
            return Ok(());
        };
        write(&d.join("devices.deny"), "a")?;
        for rule in DEFAULT_DEVICES
            .iter()
            .map(|(r, _why)| *r)
            .chain(extra.iter().map(String::as_str))
        {
            write(&d.join("devices.allow"), rule)?;
        }
        Ok(())
    }

    /// The v1 devices controller's directory, when this bivy may use it: the kernel takes
    /// device rules only from its initial user namespace, so a nested bivy (in a container)
    /// leaves them to the outer container's cgroup, which holds for everything inside it (and
    /// mknod is refused in a user namespace anyway).
    fn devices_dir(&self) -> Option<&Path> {
        if crate::runtime::host::host().nested {
            return None;
        }
        self.v1_dir("devices")
    }

    /// Write each of `rules` to the v1 devices controller's `file` (`devices.allow` or
    /// `devices.deny`); nothing to do without one (see [`Self::restrict_devices`]).
    pub fn device_rules(&self, file: &str, rules: &[String]) -> Result<()> {
        let Some(d) = self.devices_dir() else {
            return Ok(());
        };
        for rule in rules {
            write(&d.join(file), rule)?;
        }
        Ok(())
    }
}
