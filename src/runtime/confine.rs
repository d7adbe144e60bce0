//! The single seam between the runtime core and the confinement modules written separately
//! (`cgroup`, `seccomp`, `apparmor`). Every call the core makes into them goes through here, so the
//! merge (switching from the stand-ins in `confine_stub.rs` to the real modules) changes one file.

use std::path::PathBuf;

use super::{Limits, Result, Stats};

use super::{apparmor, cgroup, seccomp};

/// The mounted cgroup hierarchies (for the container's /sys/fs/cgroup view).
pub struct CgroupLayout {
    /// (mount point, mount options such as `memory` or `none,name=systemd`).
    pub v1: Vec<(String, String)>,
    pub unified: Option<PathBuf>,
    pub v2_only: bool,
}

pub fn cgroup_layout() -> CgroupLayout {
    let l = cgroup::Layout::probe();
    CgroupLayout {
        v1: l
            .v1
            .iter()
            .map(|(p, o)| (p.display().to_string(), o.clone()))
            .collect(),
        unified: l.unified.clone(),
        v2_only: l.v2_only,
    }
}

pub fn cgroup_create(name: &str, limits: &Limits, owner: Option<(u32, u32)>) -> Result<()> {
    cgroup::Cgroup::create(name, limits, owner).map(|_| ())
}

pub use cgroup::{remove_orphan_premade, SPARE_CGROUP};

/// See [`cgroup::Cgroup::premake`].
pub fn cgroup_premake(name: &str) -> Result<bool> {
    cgroup::Cgroup::premake(name)
}

/// [`cgroup_create`] from the cgroup [`cgroup_premake`] made as `premade`.
pub fn cgroup_create_from(
    premade: &str,
    name: &str,
    limits: &Limits,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    cgroup::Cgroup::create_from(premade, name, limits, owner).map(|_| ())
}

/// The sub-cgroups below a container's cgroup (every hierarchy), parents first.
pub fn cgroup_subdirs(name: &str) -> Result<Vec<PathBuf>> {
    Ok(cgroup::Cgroup::open(name)?.subdirs())
}

/// Make sub-cgroups listed by [`cgroup_subdirs`] again, delegated to `owner`.
pub fn cgroup_make_subdirs(name: &str, dirs: &[PathBuf], owner: Option<(u32, u32)>) -> Result<()> {
    cgroup::Cgroup::open(name)?.make_subdirs(dirs, owner)
}

/// Restrict the container's devices to LXD's default list plus `extra` (`devices.allow`
/// entries), with the v1 controller and the cgroup2 device program where each exists.
pub fn cgroup_restrict_devices(name: &str, extra: &[String]) -> Result<()> {
    cgroup::Cgroup::open(name)?.restrict_devices(extra)
}

/// Allow more devices to a running container (hot-plug); `all` is every rule of the
/// instance's own devices once they are allowed.
pub fn cgroup_allow_devices(name: &str, rules: &[String], all: &[String]) -> Result<()> {
    cgroup::Cgroup::open(name)?.device_rules("devices.allow", rules, all)
}

/// Take devices away from a running container (hot-unplug); `all` is every rule of the
/// instance's own devices that stays.
pub fn cgroup_deny_devices(name: &str, rules: &[String], all: &[String]) -> Result<()> {
    cgroup::Cgroup::open(name)?.device_rules("devices.deny", rules, all)
}

/// Whether LXD's default list allows `rule` exactly (such a device stays allowed when a device
/// naming it goes).
pub fn device_allowed_by_default(rule: &str) -> bool {
    cgroup::DEFAULT_DEVICES.iter().any(|(r, _)| *r == rule)
}

pub fn cgroup_add_pid(name: &str, pid: i32) -> Result<()> {
    cgroup::Cgroup::open(name)?.add_pid(pid)
}

pub fn cgroup_kill_all(name: &str) -> Result<()> {
    match cgroup::Cgroup::open(name) {
        Ok(c) => c.kill_all(),
        Err(_) => Ok(()), // already gone
    }
}

/// [`cgroup::Cgroup::kill_nowait`]: the kill sent, not waited for (false: the kernel has no
/// `cgroup.kill`, nothing was done; true also when the cgroup is gone).
pub fn cgroup_kill_nowait(name: &str) -> Result<bool> {
    match cgroup::Cgroup::open(name) {
        Ok(c) => c.kill_nowait(),
        Err(_) => Ok(true), // already gone
    }
}

/// Whether some hierarchy has the cgroup `bivy/<name>` (a container's, running or ending).
pub fn cgroup_exists(name: &str) -> bool {
    cgroup::Cgroup::open(name).is_ok()
}

pub fn cgroup_remove(name: &str) -> Result<()> {
    match cgroup::Cgroup::open(name) {
        Ok(c) => c.remove(),
        Err(_) => Ok(()), // already gone
    }
}

pub fn cgroup_freeze(name: &str) -> Result<()> {
    cgroup::Cgroup::open(name)?.freeze()
}

pub fn cgroup_thaw(name: &str) -> Result<()> {
    cgroup::Cgroup::open(name)?.thaw()
}

pub fn cgroup_is_frozen(name: &str) -> bool {
    cgroup::Cgroup::is_frozen_named(name)
}

/// The processes of the container's cgroup (and its sub-cgroups), sorted.
pub fn cgroup_pids(name: &str) -> Result<Vec<i32>> {
    Ok(cgroup::Cgroup::open(name)?.pids())
}

pub fn cgroup_set_limits(name: &str, limits: &Limits) -> Result<()> {
    cgroup::Cgroup::open(name)?.set_limits(limits)
}

/// Let go of what the usage reads keep of cgroups that were removed.
pub fn cgroup_release_removed() {
    cgroup::Cgroup::release_removed()
}

pub fn cgroup_stats(name: &str) -> Result<Stats> {
    cgroup::Cgroup::stats_named(name)
}

/// A compiled seccomp filter, ready to load right before execve.
pub struct Seccomp(seccomp::Program);

pub fn seccomp_compile(policy: &str) -> Result<Seccomp> {
    seccomp::compile(policy).map(Seccomp)
}

pub fn seccomp_load(p: &Seccomp) -> Result<()> {
    seccomp::load(&p.0)
}

pub fn apparmor_prepare(
    name: &str,
    nesting: bool,
    privileged: bool,
    raw: &str,
) -> Result<Option<String>> {
    apparmor::prepare(name, nesting, privileged, raw)
}

pub fn apparmor_set_exec_label(label: &str) -> Result<()> {
    apparmor::set_exec_label(label)
}
