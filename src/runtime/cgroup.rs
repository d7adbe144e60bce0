//! cgroups for containers: `bivy/<name>` in every hierarchy, limits, delegation, freeze, kill, stats.
//!
//! Works on pure cgroup2 hosts (controllers in `cgroup.controllers`) and on v1/hybrid hosts (one
//! mount per v1 controller set, `name=systemd`, and a cgroup2 "unified" mount that may hold no
//! controller but still gives the core features: `cgroup.kill`, `cgroup.freeze`, `cpu.stat`).
//! A controller is used from v1 when a v1 hierarchy has it, else from v2 when the unified
//! hierarchy offers it. Measured behaviour on the dev host: `shared/reference/host.md` §7.
//!
//! Delegation (so systemd in the container can make sub-cgroups): the container's directory and
//! the files that move processes (`cgroup.procs`, `tasks` on v1; `cgroup.procs`,
//! `cgroup.subtree_control`, `cgroup.threads` on v2) are chowned to the container root's host ids.
//! Limit files stay root-owned, so the container cannot raise its own limits.
//!
//! It receives numbers ([`super::Limits`]); the `limits.*` config syntax is parsed in
//! `instance::limits`. No unsafe here: only file I/O under /sys/fs/cgroup and `kill(2)` through nix.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::runtime::{Error, Limits, Result, Stats};

/// The host's cgroup2 mounts (mount point, super options) from `mountinfo` text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<(String, Vec<String>)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (_, after) = l.split_once(" - ")?;
            let mut it = after.split(' ');
            (it.next()? == "cgroup2").then_some(())?;
            let opts = it.nth(1)?.split(',').map(str::to_string).collect();
            let mp = crate::util::unescape_mountinfo(l.split(' ').nth(4)?);
            Some((mp, opts))
        })
        .collect()
}

/// The super options to remount a cgroup2 hierarchy with, `favordynmods` on or off, the
/// others kept (`nsdelegate`, `memory_recursiveprot`...: a cgroup2 remount sets them all).
fn favor_options(opts: &[String], on: bool) -> String {
    let mut v: Vec<&str> = opts
        .iter()
        .map(String::as_str)
        .filter(|o| !matches!(*o, "rw" | "ro" | "favordynmods"))
        .collect();
    if on {
        v.push("favordynmods");
    }
    v.join(",")
}

/// `core.cgroup_favordynmods`: turn the kernel's `favordynmods` on or off for the host's cgroup2
/// hierarchy (a remount keeping its other options). On, a task's first move into a cgroup no
/// longer waits for an RCU grace period (9 to 16 ms here, the largest part of a container's
/// start), at the cost of slightly slower fork and exit host-wide. Needs a cgroup2 mount and
/// Linux 6.0 or newer; nothing is changed when it is already as asked.
pub fn set_favor_dynmods(on: bool) -> Result<()> {
    let read = || {
        fs::read_to_string("/proc/self/mountinfo")
            .map(|t| cgroup2_mounts(&t))
            .map_err(|e| Error(format!("read /proc/self/mountinfo: {e}")))
    };
    let mounts = read()?;
    let Some((mp, opts)) = mounts.first() else {
        return Err(Error(
            "cgroup favordynmods needs a cgroup2 hierarchy, and this host mounts none".into(),
        ));
    };
    if opts.iter().any(|o| o == "favordynmods") == on {
        return Ok(());
    }
    let data = favor_options(opts, on);
    nix::mount::mount(
        None::<&str>,
        mp.as_str(),
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some(data.as_str()),
    )
    .map_err(|e| Error(format!("remount {mp} with {data:?}: {e}")))?;
    let now = read()?;
    if now
        .first()
        .map(|(_, o)| o.iter().any(|o| o == "favordynmods"))
        != Some(on)
    {
        return Err(Error(format!(
            "remount {mp} with {data:?}: the kernel did not {} favordynmods (Linux 6.0 or newer has it)",
            if on { "take" } else { "drop" }
        )));
    }
    Ok(())
}

/// Where a host that mounted no cgroup filesystem gets one: the kernel's own mount point in sysfs.
pub const MOUNT_POINT: &str = "/sys/fs/cgroup";

/// A host whose init mounted no cgroup filesystem (busybox init, buildroot, a rescue shell, a
/// shell entered through `ip netns exec`, which mounts a fresh sysfs) gets the cgroup2
/// hierarchy mounted at /sys/fs/cgroup, as OpenRC and `cgroupfs-mount` mount it, in the
/// caller's mount namespace. `Ok(true)` when it was mounted now, `Ok(false)` when a cgroup
/// filesystem was there already. Call it before the first [`Layout::probe`].
pub fn mount_if_none() -> Result<bool> {
    let l = Layout::read();
    if !l.v1.is_empty() || l.unified.is_some() {
        // What the first probe would read again.
        let _ = LAYOUT.set(l);
        return Ok(false);
    }
    let mp = Path::new(MOUNT_POINT);
    if !mp.is_dir() {
        return Err(Error(format!(
            "cgroup: no cgroup filesystem is mounted and {MOUNT_POINT} does not exist (is sysfs \
             mounted at /sys? `mount -t sysfs sysfs /sys`)"
        )));
    }
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("cgroup2"),
        mp,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        Error(format!(
            "cgroup: no cgroup filesystem is mounted, and mounting cgroup2 at {MOUNT_POINT} \
             failed: {e}"
        ))
    })?;
    Ok(true)
}

mod bpf;
mod devices;
mod io;
mod kept;

pub use devices::DEFAULT_DEVICES;

/// The cgroup mounts as this process first read them ([`Layout::probe`]).
static LAYOUT: OnceLock<Layout> = OnceLock::new();

/// The cgroup mounts of this host, as seen in /proc/self/mountinfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// v1 hierarchies: (mount point, controller options such as `memory`, `cpu,cpuacct` or
    /// `name=systemd`). One entry per hierarchy (bind mounts of the same one are dropped).
    pub v1: Vec<(PathBuf, String)>,
    /// The cgroup2 mount, if any.
    pub unified: Option<PathBuf>,
    /// True when cgroup2 is the only cgroup filesystem with controllers (a "pure v2" host).
    pub v2_only: bool,
}

impl Layout {
    /// Parse /proc/self/mountinfo text.
    pub fn from_mountinfo(text: &str) -> Layout {
        let mut l = Layout::default();
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let mnt = PathBuf::from(crate::util::unescape_mountinfo(pre[4]));
            match post[0] {
                "cgroup2" if l.unified.is_none() => l.unified = Some(mnt),
                "cgroup" => {
                    // Keep controller names and `name=`; drop rw/ro and behaviour flags.
                    let opts: Vec<&str> = post[2]
                        .split(',')
                        .filter(|o| {
                            !matches!(
                                *o,
                                "rw" | "ro"
                                    | "clone_children"
                                    | "xattr"
                                    | "noprefix"
                                    | "cpuset_v2_mode"
                                    | "nsdelegate"
                            ) && !o.starts_with("release_agent=")
                        })
                        .collect();
                    let opts = opts.join(",");
                    if !opts.is_empty() && !l.v1.iter().any(|(_, o)| *o == opts) {
                        l.v1.push((mnt, opts));
                    }
                }
                _ => {}
            }
        }
        l.v2_only = l.unified.is_some() && l.v1.iter().all(|(_, o)| o.starts_with("name="));
        l
    }

    /// The host's layout, probed once.
    pub fn probe() -> &'static Layout {
        LAYOUT.get_or_init(Layout::read)
    }

    /// This process's cgroup mounts now.
    fn read() -> Layout {
        // Page-sized reads (std's reader probes a size-0 procfs file from 32 bytes up).
        let text = crate::util::fs::read_small(Path::new("/proc/self/mountinfo"));
        Layout::from_mountinfo(&text.unwrap_or_default())
    }

    /// The v1 mount point holding `controller` (or `name=xxx`).
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, o)| o.split(',').any(|c| c == controller))
            .map(|(p, _)| p.as_path())
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error(format!("cgroup: {what} {}: {e}", path.display()))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| {
        Error(format!(
            "cgroup: writing {value:?} to {}: {e}",
            path.display()
        ))
    })
}

/// [`write`] unless the file reads `value` already. For the CPU bandwidth files above all: each
/// write of a quota or period walks every cgroup of the hierarchy in the kernel
/// (`tg_set_cfs_bandwidth`), 0.5 ms apiece with 1000 containers, and a new cgroup already has
/// the defaults most containers keep.
fn write_changed(path: &Path, value: &str) -> Result<()> {
    match read(path) {
        Ok(cur) if cur == value.trim() => Ok(()),
        _ => write(path, value),
    }
}

fn read(path: &Path) -> Result<String> {
    crate::util::fs::read_small(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| io_err("reading", path, e))
}

/// A single-number file's value from its text as read: `None` when the file does not exist.
/// A single-number file's value (`None`: no such file); `dir` and `file` name it in errors.
fn parse_u64(dir: &Path, file: &str, text: std::io::Result<String>) -> Result<Option<u64>> {
    match text {
        Ok(t) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| Error(format!("cgroup: parsing {}: {e}", dir.join(file).display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", &dir.join(file), e)),
    }
}

/// The value of `key` in `key value` lines (cpu.stat, memory.stat, cgroup.events).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Poll `done` with a short, growing interval (50 µs doubling to 5 ms) until it holds or `limit` passes.
fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut wait = Duration::from_micros(50);
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_millis(5));
    }
}

/// Wait up to `limit` until `dir`'s `cgroup.events` says `populated 0`, woken by the kernel's
/// notification on that file (`POLLPRI`). False on timeout, or when the file cannot be read.
fn wait_unpopulated(dir: &Path, limit: Duration) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsFd;
    let Ok(mut f) = fs::File::open(dir.join("cgroup.events")) else {
        return false;
    };
    let deadline = Instant::now() + limit;
    let mut text = String::new();
    loop {
        text.clear();
        if f.seek(SeekFrom::Start(0)).is_err() || f.read_to_string(&mut text).is_err() {
            return false;
        }
        if keyed(&text, "populated") == Some(0) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            f.as_fd(),
            nix::poll::PollFlags::POLLPRI,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    }
}

/// The controllers this code drives.
const CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuset"];

/// A container's cgroup: `bivy/<name>` in every hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    name: String,
    /// (directory, controller options) for each v1 hierarchy.
    v1: Vec<(PathBuf, String)>,
    /// The directory in the cgroup2 hierarchy.
    unified: Option<PathBuf>,
    /// Controllers driven through the cgroup2 directory.
    v2: Vec<String>,
    /// Use the cgroup2 core files `cgroup.kill` / `cgroup.freeze` when the kernel has them.
    v2_core: bool,
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error(format!("cgroup: invalid container name {name:?}")));
    }
    Ok(())
}

/// Give one cgroup directory to the container root: the directory and the files that move
/// processes and enable controllers, those of its hierarchy's version (`v2`: the unified one).
/// A missing one is skipped (older kernels lack `cgroup.threads`).
fn delegate_dir(dir: &Path, v2: bool, uid: u32, gid: u32) -> Result<()> {
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .map_err(|e| io_err("chown (delegation)", p, e))
    };
    chown(dir)?;
    let files: &[&str] = if v2 {
        &["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"]
    } else {
        &["cgroup.procs", "tasks", "cgroup.clone_children"]
    };
    for f in files {
        let p = dir.join(f);
        match std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            r => r.map_err(|e| io_err("chown (delegation)", &p, e))?,
        }
    }
    Ok(())
}

impl Cgroup {
    fn paths(name: &str) -> Result<Cgroup> {
        check_name(name)?;
        let l = Layout::probe();
        if l.v1.is_empty() && l.unified.is_none() {
            return Err(Error(
                "cgroup: no cgroup filesystem is mounted (see /proc/self/mountinfo)".into(),
            ));
        }
        let v1 =
            l.v1.iter()
                .map(|(m, o)| (m.join("bivy").join(name), o.clone()))
                .collect();
        let unified = l.unified.as_ref().map(|u| u.join("bivy").join(name));
        let mut cg = Cgroup {
            name: name.to_string(),
            v1,
            unified,
            v2: Vec::new(),
            v2_core: true,
        };
        if let Some(u) = &l.unified {
            // The root's controllers are fixed for the boot (those bound to v1 stay there).
            static AVAIL: OnceLock<String> = OnceLock::new();
            let avail = AVAIL.get_or_init(|| {
                crate::util::fs::read_one_piece(&u.join("cgroup.controllers")).unwrap_or_default()
            });
            cg.v2 = avail
                .split_whitespace()
                .filter(|c| CONTROLLERS.contains(c) && l.v1_mount(c).is_none())
                .map(str::to_string)
                .collect();
        }
        Ok(cg)
    }

    /// Freeze and kill through the v1 freezer and signals only, as on kernels without
    /// `cgroup.freeze` (< 5.2) or `cgroup.kill` (< 5.14). For tests of those paths.
    pub fn without_v2_core(mut self) -> Cgroup {
        self.v2_core = false;
        self
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every directory of this cgroup (v1 ones, then the unified one).
    pub fn dirs(&self) -> Vec<&Path> {
        self.v1
            .iter()
            .map(|(p, _)| p.as_path())
            .chain(self.unified.as_deref())
            .collect()
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, o)| o.split(',').any(|c| c == controller))
            .map(|(p, _)| p.as_path())
    }

    /// Directory driving `controller`, and whether it is the cgroup2 one.
    fn ctrl(&self, controller: &str) -> Option<(&Path, bool)> {
        if let Some(d) = self.v1_dir(controller) {
            return Some((d, false));
        }
        if self.v2.iter().any(|c| c == controller) {
            return self.unified.as_deref().map(|d| (d, true));
        }
        None
    }

    /// Create `bivy/<name>` everywhere, apply `limits`, delegate to `owner` (host uid, gid of the
    /// container's root). An existing, empty cgroup of the same name (left by a crash) is removed
    /// first; one that still has processes is an error. On failure everything created is removed.
    pub fn create(name: &str, limits: &Limits, owner: Option<(u32, u32)>) -> Result<Cgroup> {
        let cg = Cgroup::paths(name)?;
        let l = Layout::probe();
        cg.clear_leftover()?;
        let r = cg
            .make_v1_dirs()
            .and_then(|()| cg.finish_create(l, limits, owner));
        if let Err(e) = r {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Make `bivy/<name>` in every v1 hierarchy ahead of a start (a spare monitor does, before
    /// it is asked for one), without limits or delegation, for [`Cgroup::create_from`] to rename
    /// to the container's cgroup: the controllers' state is allocated off the start's path.
    /// `Ok(false)`, nothing made, without a v1 hierarchy (cgroup2 renames no cgroup).
    pub fn premake(name: &str) -> Result<bool> {
        let l = Layout::probe();
        if l.v1.is_empty() {
            return Ok(false);
        }
        let mut cg = Cgroup::paths(name)?;
        cg.unified = None;
        cg.clear_leftover()?;
        if let Err(e) = cg.make_v1_dirs() {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(true)
    }

    /// [`Cgroup::create`] from the v1 directories [`Cgroup::premake`] made as `premade`: each
    /// renamed to `bivy/<name>`, the unified hierarchy's made, then limits and delegation. On
    /// failure nothing of either is left.
    pub fn create_from(
        premade: &str,
        name: &str,
        limits: &Limits,
        owner: Option<(u32, u32)>,
    ) -> Result<Cgroup> {
        let cg = Cgroup::paths(name)?;
        let mut pre = Cgroup::paths(premade)?;
        pre.unified = None;
        let l = Layout::probe();
        let r = cg.clear_leftover().and_then(|()| {
            let renamed = cg
                .v1
                .iter()
                .zip(&pre.v1)
                .try_for_each(|((to, _), (from, _))| {
                    fs::rename(from, to).map_err(|e| io_err("renaming", from, e))
                });
            renamed
                .and_then(|()| cg.finish_create(l, limits, owner))
                .inspect_err(|_| {
                    let _ = cg.remove();
                })
        });
        if r.is_err() {
            let _ = pre.remove();
        }
        r.map(|()| cg)
    }

    /// An existing, empty cgroup of this name (left by a crash) removed; one that still has
    /// processes is an error.
    fn clear_leftover(&self) -> Result<()> {
        if self.dirs().iter().any(|d| d.exists()) {
            let pids = self.pids();
            if !pids.is_empty() {
                return Err(Error(format!(
                    "cgroup bivy/{} already exists and holds processes {pids:?}",
                    self.name
                )));
            }
            // Left over by a crash: start clean (no stale limits or sub-cgroups).
            self.remove()?;
        }
        Ok(())
    }

    fn make_v1_dirs(&self) -> Result<()> {
        for (dir, opts) in &self.v1 {
            let parent = dir.parent().expect("bivy/<name> has a parent");
            let root = parent.parent().expect("bivy has a parent");
            let is_cpuset = opts.split(',').any(|c| c == "cpuset");
            mkdir(parent)?;
            if is_cpuset {
                // v1 cpuset: a new cgroup starts with empty cpus/mems and refuses tasks until they
                // are set; copy them down from the hierarchy root.
                copy_if_empty(root, parent, "cpuset.cpus")?;
                copy_if_empty(root, parent, "cpuset.mems")?;
            }
            mkdir(dir)?;
            if is_cpuset {
                copy_if_empty(parent, dir, "cpuset.cpus")?;
                copy_if_empty(parent, dir, "cpuset.mems")?;
                // Sub-cgroups made by the container inherit cpus/mems.
                write(&dir.join("cgroup.clone_children"), "1")?;
            }
        }
        Ok(())
    }

    /// After [`Cgroup::make_v1_dirs`]: the unified hierarchy's directory, limits, delegation.
    fn finish_create(&self, l: &Layout, limits: &Limits, owner: Option<(u32, u32)>) -> Result<()> {
        if let (Some(dir), Some(root)) = (&self.unified, &l.unified) {
            let parent = dir.parent().expect("bivy/<name> has a parent");
            mkdir(parent)?;
            if l.v2_only {
                // Enable our controllers down to bivy/ so bivy/<name> gets them. On a hybrid host
                // the unified hierarchy's root belongs to the init system: it is left alone.
                enable_controllers(root, &self.v2)?;
                enable_controllers(parent, &self.v2)?;
            }
            mkdir(dir)?;
        }
        self.set_limits(limits)?;
        if let Some((uid, gid)) = owner {
            self.delegate(uid, gid)?;
        }
        Ok(())
    }

    fn delegate(&self, uid: u32, gid: u32) -> Result<()> {
        for dir in self.dirs() {
            delegate_dir(dir, self.is_unified(dir), uid, gid)?;
        }
        Ok(())
    }

    /// Whether `dir`, one of [`Self::dirs`] or below one, is in the unified hierarchy.
    fn is_unified(&self, dir: &Path) -> bool {
        self.unified.as_deref().is_some_and(|u| dir.starts_with(u))
    }

    /// Every directory below this cgroup, in every hierarchy, parents before children (what a
    /// delegated manager such as systemd made in it).
    pub fn subdirs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = fs::read_dir(dir) else { return };
            let mut subs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            crate::util::sort::sort(&mut subs);
            for s in subs {
                out.push(s.clone());
                walk(&s, out);
            }
        }
        let mut out = Vec::new();
        for d in self.dirs() {
            walk(d, &mut out);
        }
        out
    }

    /// Make again directories [`Cgroup::subdirs`] listed (each must lie below one of this
    /// cgroup's directories), delegated to `owner` like the cgroup itself.
    pub fn make_subdirs(&self, dirs: &[PathBuf], owner: Option<(u32, u32)>) -> Result<()> {
        for d in dirs {
            let inside = self.dirs().iter().any(|top| {
                d.strip_prefix(top).is_ok_and(|rel| {
                    rel.components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
                })
            });
            if !inside {
                return Err(Error(format!(
                    "cgroup: {} is not below bivy/{}",
                    d.display(),
                    self.name
                )));
            }
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", d, e)),
            }
            if let Some((uid, gid)) = owner {
                delegate_dir(d, self.is_unified(d), uid, gid)?;
            }
        }
        Ok(())
    }

    /// Whether the cgroup of container `name` is frozen (false when it does not exist).
    /// Let go of the files kept open of cgroups that were removed (see `kept`).
    pub fn release_removed() {
        kept::sweep();
    }

    pub fn is_frozen_named(name: &str) -> bool {
        Cgroup::paths_kept(name).is_ok_and(|c| c.is_frozen())
    }

    /// [`Cgroup::paths`] of `name`, made once: its directories depend on the name alone (the
    /// layout is probed once), and a listing asks twice for every running container's (its
    /// state, its usage figures), each time ten hierarchies' paths (a bounded
    /// [`Memo`](crate::util::memo::Memo)).
    fn paths_kept(name: &str) -> Result<std::sync::Arc<Cgroup>> {
        use crate::util::memo::Memo;
        static KEPT: Memo<String, std::sync::Arc<Cgroup>> = Memo::new();
        if let Some(cg) = KEPT.get(name) {
            return Ok(cg);
        }
        let cg = std::sync::Arc::new(Cgroup::paths(name)?);
        KEPT.insert(name.to_string(), cg.clone());
        Ok(cg)
    }

    /// The usage figures of an existing container's cgroup; an error when it is gone. Its files
    /// are read without a look at its directories first (listings read every running
    /// container's); only figures that all came back missing send a look whether it is there.
    pub fn stats_named(name: &str) -> Result<Stats> {
        let cg = Cgroup::paths_kept(name)?;
        let s = cg.stats()?;
        let none = s.memory_usage.is_none() && s.cpu_ns.is_none() && s.processes == 0;
        if none {
            cg.must_exist(name)?;
        }
        Ok(s)
    }

    /// The cgroup of an existing container; fails when no hierarchy has `bivy/<name>`.
    pub fn open(name: &str) -> Result<Cgroup> {
        let cg = Cgroup::paths(name)?;
        cg.must_exist(name)?;
        Ok(cg)
    }

    /// An error unless some hierarchy has this cgroup's directory.
    fn must_exist(&self, name: &str) -> Result<()> {
        if self.dirs().iter().any(|d| d.is_dir()) {
            Ok(())
        } else {
            Err(Error(format!("cgroup bivy/{name} does not exist")))
        }
    }

    /// Move process `pid` (and so its future children) into the cgroup, in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Apply limits now; a `None` removes the limit.
    pub fn set_limits(&self, lim: &Limits) -> Result<()> {
        if let Some((d, v2)) = self.ctrl("memory") {
            if v2 && lim.swap_priority.is_some() {
                return Err(Error(
                    "cgroup: limits.memory.swap.priority needs cgroup v1 memory.swappiness; \
                     cgroup2 has no per-cgroup swappiness"
                        .into(),
                ));
            }
            if v2 {
                let (max, high) = match (lim.memory, lim.memory_soft) {
                    (Some(m), false) => (m.to_string(), "max".to_string()),
                    (Some(m), true) => ("max".to_string(), m.to_string()),
                    (None, _) => ("max".into(), "max".into()),
                };
                write(&d.join("memory.max"), &max)?;
                write(&d.join("memory.high"), &high)?;
                let swap = d.join("memory.swap.max");
                if swap.exists() {
                    let v = if lim.memory.is_some() && !lim.memory_swap {
                        "0"
                    } else {
                        "max"
                    };
                    write(&swap, v)?;
                }
            } else {
                let memsw = d.join("memory.memsw.limit_in_bytes");
                let has_memsw = memsw.exists();
                // memsw must stay >= limit_in_bytes: lift it first, lower it last.
                if has_memsw {
                    write(&memsw, "-1")?;
                }
                let (hard, soft) = match (lim.memory, lim.memory_soft) {
                    (Some(m), false) => (m.to_string(), "-1".to_string()),
                    (Some(m), true) => ("-1".to_string(), m.to_string()),
                    (None, _) => ("-1".into(), "-1".into()),
                };
                write(&d.join("memory.limit_in_bytes"), &hard)?;
                write(&d.join("memory.soft_limit_in_bytes"), &soft)?;
                if has_memsw && !lim.memory_soft && !lim.memory_swap {
                    if let Some(m) = lim.memory {
                        write(&memsw, &m.to_string())?;
                    }
                }
                // Unset: the parent's swappiness, which a new cgroup inherits (so unsetting the
                // key live puts it back, and a container that never set it is not touched).
                let swappiness = d.join("memory.swappiness");
                if swappiness.exists() {
                    let want = match lim.swap_priority {
                        // LXD's rule: 70 - priority (the top priority, 10, is the
                        // kernel's default swappiness, 60).
                        Some(p) => (70 - u64::from(p.min(10))).to_string(),
                        None => read(&d.parent().expect("has parent").join("memory.swappiness"))?,
                    };
                    if read(&swappiness)?.trim() != want.trim() {
                        write(&swappiness, want.trim())?;
                    }
                } else if lim.swap_priority.is_some() {
                    return Err(Error(format!(
                        "cgroup: limits.memory.swap.priority: no {}",
                        swappiness.display()
                    )));
                }
            }
        } else if lim.memory.is_some() || lim.swap_priority.is_some() {
            return Err(Error(
                "cgroup: limits.memory set but no memory controller is available".into(),
            ));
        }

        if let Some((d, v2)) = self.ctrl("cpuset") {
            let cpus = match &lim.cpuset {
                Some(c) => c.clone(),
                // v2: empty means "the parent's". v1: copy the parent's explicitly.
                // (a newline, not an empty write, which the kernel would never see)
                None if v2 => "\n".to_string(),
                None => read(&d.parent().expect("has parent").join("cpuset.cpus"))?,
            };
            write(&d.join("cpuset.cpus"), &cpus)?;
        } else if lim.cpuset.is_some() {
            return Err(Error(
                "cgroup: limits.cpu set but no cpuset controller is available".into(),
            ));
        }

        if let Some((d, v2)) = self.ctrl("cpu") {
            if v2 {
                let max = match lim.cpu_quota {
                    Some((q, p)) => format!("{q} {p}"),
                    None => "max 100000".into(),
                };
                write_changed(&d.join("cpu.max"), &max)?;
                // cgroup v1 shares (2..262144, default 1024) -> v2 weight (1..10000, default 100).
                let w = lim
                    .cpu_shares
                    .map_or(100, |s| 1 + (s.clamp(2, 262144) - 2) * 9999 / 262142);
                write_changed(&d.join("cpu.weight"), &w.to_string())?;
            } else {
                let quota = d.join("cpu.cfs_quota_us");
                let period = d.join("cpu.cfs_period_us");
                match lim.cpu_quota {
                    Some((q, p)) => {
                        // Lift the quota before changing the period (quota must fit the
                        // period).
                        if read(&period)? != p.to_string() {
                            write_changed(&quota, "-1")?;
                            write(&period, &p.to_string())?;
                        }
                        write_changed(&quota, &q.to_string())?;
                    }
                    None => {
                        write_changed(&quota, "-1")?;
                        write_changed(&period, "100000")?;
                    }
                }
                write_changed(
                    &d.join("cpu.shares"),
                    &lim.cpu_shares.unwrap_or(1024).to_string(),
                )?;
            }
        } else if lim.cpu_quota.is_some() || lim.cpu_shares.is_some() {
            return Err(Error(
                "cgroup: limits.cpu.allowance/priority set but no cpu controller is available"
                    .into(),
            ));
        }

        if let Some((d, _)) = self.ctrl("pids") {
            write_changed(
                &d.join("pids.max"),
                &lim.pids.map_or("max".to_string(), |p| p.to_string()),
            )?;
        } else if lim.pids.is_some() {
            return Err(Error(
                "cgroup: limits.processes set but no pids controller is available".into(),
            ));
        }
        self.set_io(&lim.io)
    }

    /// The v2 freeze file when the unified dir has core freezer support.
    fn v2_freeze(&self) -> Option<PathBuf> {
        self.unified
            .as_ref()
            .map(|d| d.join("cgroup.freeze"))
            .filter(|p| self.v2_core && p.exists())
    }

    /// Freeze every process; returns once the kernel reports the cgroup frozen (at most 5 s).
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    /// Thaw.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, on: bool) -> Result<()> {
        let what = if on { "freeze" } else { "thaw" };
        if let Some(f) = self.v2_freeze() {
            write(&f, if on { "1" } else { "0" })?;
        } else if let Some(d) = self.v1_dir("freezer") {
            write(
                &d.join("freezer.state"),
                if on { "FROZEN" } else { "THAWED" },
            )?;
        } else {
            return Err(Error(format!(
                "cgroup: cannot {what} bivy/{}: no freezer (v1 freezer or cgroup.freeze)",
                self.name
            )));
        }
        if poll(Duration::from_secs(5), || self.is_frozen() == on) {
            Ok(())
        } else {
            Err(Error(format!(
                "cgroup: {what} of bivy/{} did not complete within 5 s",
                self.name
            )))
        }
    }

    /// Whether the cgroup is (completely) frozen.
    pub fn is_frozen(&self) -> bool {
        // `frozen` is in cgroup.events on the kernels with cgroup.freeze (5.2+). Both read
        // through kept files, as the usage figures (listings ask each running container).
        if let Some(d) = self.unified.as_ref().filter(|_| self.v2_core) {
            let events = kept::read(&self.name, d, "cgroup.events");
            if let Some(v) = events.ok().and_then(|t| keyed(&t, "frozen")) {
                return v == 1;
            }
        }
        self.v1_dir("freezer")
            .and_then(|d| kept::read(&self.name, d, "freezer.state").ok())
            .is_some_and(|s| s.trim() == "FROZEN")
    }

    /// A single-number file's value through a kept file (`None`: no such file).
    fn kept_u64(&self, dir: &Path, file: &'static str) -> Result<Option<u64>> {
        parse_u64(dir, file, kept::read(&self.name, dir, file))
    }

    /// The unified directory, where the kernel has `cgroup.kill`.
    fn killable(&self) -> Option<&Path> {
        self.unified
            .as_deref()
            .filter(|d| self.v2_core && d.join("cgroup.kill").exists())
    }

    /// SIGKILL every process in the cgroup and its sub-cgroups through `cgroup.kill`, without
    /// waiting for them to go; false (nothing done) when the kernel has no `cgroup.kill` here.
    pub fn kill_nowait(&self) -> Result<bool> {
        match self.killable() {
            Some(dir) => write(&dir.join("cgroup.kill"), "1").map(|()| true),
            None => Ok(false),
        }
    }

    /// SIGKILL every process in the cgroup and its sub-cgroups, and wait (up to 5 s) until they
    /// are gone from it. Uses `cgroup.kill` when the kernel has it, else freeze, kill each pid, thaw.
    pub fn kill_all(&self) -> Result<()> {
        let mut done = false;
        if let Some(dir) = self.killable() {
            write(&dir.join("cgroup.kill"), "1")?;
            // cgroup.kill covers the unified subtree; a process moved elsewhere there but still in
            // a v1 bivy/<name> would survive it: the signal path below catches such stragglers.
            // The kernel says when the subtree is empty (a systemd container's processes take
            // 30-40 ms to exit here): no reading of its sixty cgroups' process lists meanwhile.
            done = wait_unpopulated(dir, Duration::from_millis(200)) && self.pids().is_empty();
        }
        if !done {
            // Freezing first stops a fork loop from outrunning us; signals to frozen tasks are
            // delivered on thaw.
            let frozen = self.freeze().is_ok();
            for _ in 0..3 {
                let pids = self.pids();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if frozen {
                    break;
                }
            }
            if frozen {
                self.thaw()?;
            }
        }
        if poll(Duration::from_secs(5), || self.pids().is_empty()) {
            Ok(())
        } else {
            Err(Error(format!(
                "cgroup: processes {:?} of bivy/{} survived SIGKILL for 5 s",
                self.pids(),
                self.name
            )))
        }
    }

    /// Every pid in the cgroup and its sub-cgroups, across hierarchies, sorted and deduplicated.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for d in self.dirs() {
            collect_pids(d, &mut out);
        }
        crate::util::sort::sort(&mut out);
        out.dedup();
        out
    }

    /// Usage figures: `None` for what this host does not count (the file does not exist); a
    /// file that exists but cannot be read or parsed is an error, never a zero.
    /// Read through files kept open between calls (`kept`): listings read every running
    /// container's.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        if let Some((d, v2)) = self.ctrl("memory") {
            if v2 {
                s.memory_usage = self.kept_u64(d, "memory.current")?;
                s.memory_peak = self.kept_u64(d, "memory.peak")?;
                s.swap_usage = self.kept_u64(d, "memory.swap.current")?;
                s.swap_peak = self.kept_u64(d, "memory.swap.peak")?;
            } else {
                s.memory_usage = self.kept_u64(d, "memory.usage_in_bytes")?;
                s.memory_peak = self.kept_u64(d, "memory.max_usage_in_bytes")?;
                // memsw counts memory + swap.
                let memsw = self.kept_u64(d, "memory.memsw.usage_in_bytes")?;
                s.swap_usage = memsw
                    .zip(s.memory_usage)
                    .map(|(sw, m)| sw.saturating_sub(m));
                let memsw_peak = self.kept_u64(d, "memory.memsw.max_usage_in_bytes")?;
                s.swap_peak = memsw_peak
                    .zip(s.memory_peak)
                    .map(|(sw, m)| sw.saturating_sub(m));
            }
        }
        if let Some(d) = self.v1_dir("cpuacct") {
            s.cpu_ns = self.kept_u64(d, "cpuacct.usage")?;
        } else if let Some(d) = &self.unified {
            let p = d.join("cpu.stat");
            match kept::read(&self.name, d, "cpu.stat") {
                Ok(text) => {
                    let usec = keyed(&text, "usage_usec").ok_or_else(|| {
                        Error(format!("cgroup: no usage_usec in {}", p.display()))
                    })?;
                    s.cpu_ns = Some(usec * 1000);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("reading", &p, e)),
            }
        }
        s.processes = match self.ctrl("pids") {
            Some((d, _)) => self.kept_u64(d, "pids.current")?.ok_or_else(|| {
                Error(format!(
                    "cgroup: {} missing",
                    d.join("pids.current").display()
                ))
            })?,
            None => self.pids().len() as u64,
        };
        Ok(s)
    }

    /// Remove the cgroup everywhere, sub-cgroups first (bottom-up). rmdir answers EBUSY while
    /// killed tasks are still exiting: that is retried, polling, for up to 2 s per directory.
    /// Missing directories are fine; the shared `bivy` parents stay.
    pub fn remove(&self) -> Result<()> {
        kept::forget(&self.name);
        let mut first_err = None;
        for d in self.dirs() {
            if let Err(e) = rmdir_tree(d) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The name a spare monitor's premade cgroup has, its pid after it ([`Cgroup::premake`]).
pub const SPARE_CGROUP: &str = ".spare-";

/// Remove the premade cgroups ([`Cgroup::premake`]) of spare monitors that are gone without
/// removing them (killed); those of live ones (this daemon's or another's) stay.
pub fn remove_orphan_premade() {
    let l = Layout::probe();
    let mut names: Vec<String> = Vec::new();
    for (m, _) in &l.v1 {
        for e in fs::read_dir(m.join("bivy")).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.strip_prefix(SPARE_CGROUP)
                .is_some_and(|p| p.parse::<u32>().is_ok())
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    for n in names {
        // `PID (comm) STATE ...`: a zombie is gone as well.
        let pid = &n[SPARE_CGROUP.len()..];
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = stat
            .split_once(" (")
            .and_then(|(_, r)| r.rsplit_once(") "))
            .is_some_and(|(comm, rest)| comm.starts_with("bivy-") && !rest.starts_with('Z'));
        if alive {
            continue;
        }
        if let Ok(mut cg) = Cgroup::paths(&n) {
            cg.unified = None;
            if let Err(e) = cg.remove() {
                eprintln!("bivy: removing a spare monitor's cgroup {n}: {e}");
            }
        }
    }
}

fn mkdir(p: &Path) -> Result<()> {
    match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("creating", p, e)),
    }
}

fn copy_if_empty(from: &Path, to: &Path, file: &str) -> Result<()> {
    if read(&to.join(file))?.is_empty() {
        write(&to.join(file), &read(&from.join(file))?)?;
    }
    Ok(())
}

fn enable_controllers(dir: &Path, ctrls: &[String]) -> Result<()> {
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ctrls {
        if !enabled.split_whitespace().any(|e| e == c) {
            write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
        }
    }
    Ok(())
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

fn rmdir_tree(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", dir, e)),
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path())?;
        }
    }
    let mut last = None;
    let gone = poll(Duration::from_secs(2), || match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => true,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            last = Some(e);
            false
        }
        Err(e) => {
            last = Some(e);
            true // not retryable; reported below
        }
    });
    match last {
        Some(e) if !gone || dir.exists() => Err(io_err("removing", dir, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_remount_keeps_the_other_options() {
        let m = cgroup2_mounts(HYBRID);
        assert_eq!(
            m,
            vec![(
                "/sys/fs/cgroup/unified".to_string(),
                vec!["rw".to_string(), "nsdelegate".to_string()]
            )]
        );
        assert_eq!(favor_options(&m[0].1, true), "nsdelegate,favordynmods");
        let on: Vec<String> = ["rw", "nsdelegate", "favordynmods", "memory_recursiveprot"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(favor_options(&on, false), "nsdelegate,memory_recursiveprot");
        assert_eq!(favor_options(&[], true), "favordynmods");
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
42 31 0:32 / /mnt/mem\\040copy rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn layout_hybrid() {
        let l = Layout::from_mountinfo(HYBRID);
        let opts: Vec<&str> = l.v1.iter().map(|(_, o)| o.as_str()).collect();
        assert_eq!(opts, ["cpu", "cpu,cpuacct", "memory", "name=systemd"]);
        assert_eq!(
            l.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert!(!l.v2_only);
        assert_eq!(
            l.v1_mount("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            l.v1_mount("name=systemd"),
            Some(Path::new("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(l.v1_mount("pids"), None);
    }

    #[test]
    fn layout_pure_v2() {
        let l = Layout::from_mountinfo("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n");
        assert_eq!(
            l,
            Layout {
                v1: vec![],
                unified: Some("/sys/fs/cgroup".into()),
                v2_only: true
            }
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(crate::util::unescape_mountinfo("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(crate::util::unescape_mountinfo("/plain\\"), "/plain\\");
    }
}
