//! Hot-plug of disks and device nodes into a running container (LXD's live `disk`,
//! `unix-char`, `unix-block`, `gpu` and `usb` device changes).
//!
//! The daemon is multi-threaded and may not join namespaces, so a helper does the work
//! (`bivy __hotplug RUN_DIR`, the request as JSON on stdin), in four steps:
//!
//! 1. In a private mount namespace of its own (a copy of the host's, so sources are opened as
//!    the host sees them), it stages every new disk and node on a tmpfs at `<run_dir>/hotplug`
//!    exactly as the monitor does at start ([`disks::stage_disk`], [`disks::stage_node`]):
//!    sources opened without following symlinks, idmapped and made read-only as asked, nodes
//!    made by host root.
//! 2. Unprivileged containers: it joins the container's user namespace and copies its mount
//!    namespace once more from inside it. The kernel locks the flags of mounts copied into a
//!    less privileged namespace, so a read-only disk stays read-only for container root, as at
//!    start (where the container's namespace is a copy of the monitor's).
//! 3. It takes detached clones of the staged mounts (the clones keep the locks) and joins the
//!    container's mount namespace: its root is now the container's, so every path below is
//!    resolved inside the container and cannot reach the host.
//! 4. Removals first (unmounted; a node's placeholder removed), then each clone is moved onto
//!    its target (made as container root where missing, `RESOLVE_IN_ROOT`). A failed mount
//!    unmounts the ones this request made.
//!
//! The staging namespace dies with the helper; the moved mounts keep only what they show.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::control::{read_spec, running_spec};
use super::disks::{self, Staged};
use super::helper::{helper_command, live_pidfd, replace_file};
use super::{confine, files, DiskMount, Error, Result, RootfsMode, UnixDev};
use crate::sys;

/// What the helper is asked to do.
#[derive(Serialize, Deserialize, Debug)]
struct Req {
    disks: Vec<DiskMount>,
    nodes: Vec<UnixDev>,
    remove: Vec<Gone>,
}

/// A mount to take away: its path in the container, and whether it is a device node (whose
/// empty placeholder file goes too).
#[derive(Serialize, Deserialize, Debug)]
struct Gone {
    path: String,
    node: bool,
}

fn same_path(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Daemon side (see [`super::hotplug`]).
pub fn apply(
    run_dir: &Path,
    remove: &[String],
    disks: Vec<DiskMount>,
    nodes: Vec<UnixDev>,
) -> Result<()> {
    let gone = |name: &str| remove.iter().any(|r| r == name);
    apply_with(
        run_dir,
        &|d| gone(&d.name),
        &|u| gone(&u.name),
        disks,
        nodes,
        Vec::new(),
    )
}

/// Where the daemon writes a hot-plug request before its helper runs; removed once the running
/// spec records the result. A daemon killed in between leaves it (and the helper, which runs on,
/// holds a lock on it until it exits): [`reconcile`] then takes every path it names as unknown.
const PENDING: &str = "hotplug.pending";

/// The disk fields a user sets (`idmap` follows the instance's map, fixed while it runs).
fn same_disk(a: &DiskMount, b: &DiskMount) -> bool {
    a.name == b.name
        && a.source == b.source
        && same_path(&a.path, &b.path)
        && a.readonly == b.readonly
        && a.recursive == b.recursive
        && a.required == b.required
        && a.mount_options == b.mount_options
        && a.propagation == b.propagation
}

/// After a daemon restart: make the disks and nodes of a running container `disks` and `nodes`
/// (what its record says), for the devices `managed` names (the others, such as USB devices
/// that come and go with the host's, are left alone). A killed daemon may have hot-plugged a
/// change it never recorded, or recorded in the running spec a change whose record it never
/// wrote, or died while its helper ran (the [`PENDING`] request's paths are then unplugged and
/// plugged again as the record says).
pub fn reconcile(
    run_dir: &Path,
    disks: Vec<DiskMount>,
    nodes: Vec<UnixDev>,
    managed: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let pending_path = run_dir.join(PENDING);
    // Wait for a helper the killed daemon started: it holds the lock until it exits.
    let pending: Option<Req> = match fs::File::open(&pending_path) {
        Ok(f) => {
            let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| Error(format!("lock {}: {e}", pending_path.display())))?;
            let mut js = String::new();
            let _ = f.read_to_string(&mut js);
            serde_json::from_slice(js.as_bytes()).ok()
        }
        Err(_) => None,
    };
    let spec = running_spec(run_dir)?;
    let unsure: Vec<&str> = pending
        .iter()
        .flat_map(|r| {
            r.disks
                .iter()
                .map(|d| d.path.as_str())
                .chain(r.nodes.iter().map(|u| u.path.as_str()))
                .chain(r.remove.iter().map(|g| g.path.as_str()))
        })
        .collect();
    let is_unsure = |p: &str| unsure.iter().any(|u| same_path(u, p));
    let gone_d = |d: &DiskMount| {
        managed(&d.name) && (is_unsure(&d.path) || !disks.iter().any(|w| same_disk(w, d)))
    };
    let gone_u = |u: &UnixDev| managed(&u.name) && (is_unsure(&u.path) || !nodes.contains(u));
    let add_disks: Vec<DiskMount> = disks
        .iter()
        .filter(|w| !spec.disks.iter().any(|d| !gone_d(d) && same_disk(w, d)))
        .cloned()
        .collect();
    let add_nodes: Vec<UnixDev> = nodes
        .iter()
        .filter(|w| !spec.unix_devices.iter().any(|u| !gone_u(u) && u == *w))
        .cloned()
        .collect();
    // What the helper may have mounted without the spec knowing.
    let known = |p: &str| {
        spec.disks.iter().any(|d| same_path(&d.path, p))
            || spec.unix_devices.iter().any(|u| same_path(&u.path, p))
    };
    let extra: Vec<Gone> = pending
        .iter()
        .flat_map(|r| {
            r.disks
                .iter()
                .map(|d| (d.path.clone(), false))
                .chain(r.nodes.iter().map(|u| (u.path.clone(), true)))
        })
        .filter(|(p, _)| !known(p))
        .map(|(path, node)| Gone { path, node })
        .collect();
    let changes = !add_disks.is_empty()
        || !add_nodes.is_empty()
        || !extra.is_empty()
        || spec.disks.iter().any(gone_d)
        || spec.unix_devices.iter().any(gone_u);
    if changes {
        apply_with(run_dir, &gone_d, &gone_u, add_disks, add_nodes, extra)?;
    }
    let _ = fs::remove_file(&pending_path);
    Ok(())
}

/// Plug one node (a USB device that appeared); one already there is left as it is.
pub fn plug_node(run_dir: &Path, node: UnixDev) -> Result<()> {
    let spec = running_spec(run_dir)?;
    if spec.unix_devices.contains(&node) {
        return Ok(());
    }
    apply_with(
        run_dir,
        &|_| false,
        &|_| false,
        Vec::new(),
        vec![node],
        Vec::new(),
    )
}

/// Unplug the node of device `name` at `path` (a USB device that went), if it has one.
pub fn unplug_node(run_dir: &Path, name: &str, path: &str) -> Result<()> {
    let spec = running_spec(run_dir)?;
    if !spec
        .unix_devices
        .iter()
        .any(|u| u.name == name && u.path == path)
    {
        return Ok(());
    }
    apply_with(
        run_dir,
        &|_| false,
        &|u| u.name == name && u.path == path,
        Vec::new(),
        Vec::new(),
        Vec::new(),
    )
}

/// [`apply`] with the mounts to take away chosen by `gone_d` and `gone_u`, and `extra` paths
/// to unmount that the spec does not list.
fn apply_with(
    run_dir: &Path,
    gone_d: &dyn Fn(&DiskMount) -> bool,
    gone_u: &dyn Fn(&UnixDev) -> bool,
    disks: Vec<DiskMount>,
    nodes: Vec<UnixDev>,
    extra: Vec<Gone>,
) -> Result<()> {
    let mut spec = running_spec(run_dir)?;
    let gone: Vec<Gone> = spec
        .disks
        .iter()
        .filter(|d| gone_d(d))
        .map(|d| Gone {
            path: d.path.clone(),
            node: false,
        })
        .chain(
            spec.unix_devices
                .iter()
                .filter(|u| gone_u(u))
                .map(|u| Gone {
                    path: u.path.clone(),
                    node: true,
                }),
        )
        .chain(extra)
        .collect();
    if gone.is_empty() && disks.is_empty() && nodes.is_empty() {
        return Ok(());
    }
    // Paths that stay taken, and the new ones: no two devices on one path.
    let mut taken: Vec<(String, String)> = spec
        .disks
        .iter()
        .filter(|d| !gone_d(d))
        .map(|d| (d.name.clone(), d.path.clone()))
        .chain(
            spec.unix_devices
                .iter()
                .filter(|u| !gone_u(u))
                .map(|u| (u.name.clone(), u.path.clone())),
        )
        .collect();
    let new_paths = disks
        .iter()
        .map(|d| (&d.name, &d.path))
        .chain(nodes.iter().map(|u| (&u.name, &u.path)));
    for (name, path) in new_paths {
        if let Some((other, _)) = taken.iter().find(|(_, p)| same_path(p, path)) {
            return Err(Error(format!(
                "More than one device uses the path {path:?} ({other:?} and {name:?})"
            )));
        }
        taken.push((name.clone(), path.clone()));
    }
    // The device cgroup allows the new nodes before they appear.
    let rules: Vec<String> = nodes.iter().map(UnixDev::cgroup_rule).collect();
    let before: Vec<String> = spec.unix_devices.iter().map(UnixDev::cgroup_rule).collect();
    let during: Vec<String> = before.iter().chain(&rules).cloned().collect();
    confine::cgroup_allow_devices(spec.cgroup_name(), &rules, &during)?;
    let req = Req {
        disks: disks.clone(),
        nodes: nodes.clone(),
        remove: gone,
    };
    // What a daemon killed from here until the spec is written leaves for the next one.
    let pending = run_dir.join(PENDING);
    let js = serde_json::to_vec(&req).map_err(|e| Error(format!("encode hotplug request: {e}")))?;
    replace_file(&pending, &js)?;
    if let Err(e) = run_helper(run_dir, &req) {
        let _ = fs::remove_file(&pending);
        let undo: Vec<String> = rules.into_iter().filter(|r| !before.contains(r)).collect();
        let _ = confine::cgroup_deny_devices(spec.cgroup_name(), &undo, &before);
        return Err(e);
    }
    // Record what the container now has, then deny the nodes no device allows any more.
    let old_rules: Vec<String> = spec
        .unix_devices
        .iter()
        .filter(|u| gone_u(u))
        .map(UnixDev::cgroup_rule)
        .collect();
    spec.disks.retain(|d| !gone_d(d));
    spec.unix_devices.retain(|u| !gone_u(u));
    spec.disks.extend(disks);
    spec.unix_devices.extend(nodes);
    let still: Vec<String> = spec.unix_devices.iter().map(UnixDev::cgroup_rule).collect();
    let deny: Vec<String> = old_rules
        .into_iter()
        .filter(|r| !still.contains(r) && !confine::device_allowed_by_default(r))
        .collect();
    confine::cgroup_deny_devices(spec.cgroup_name(), &deny, &still)?;
    let js = serde_json::to_vec_pretty(&spec).map_err(|e| Error(format!("encode spec: {e}")))?;
    replace_file(&run_dir.join(files::SPEC), &js)?;
    let _ = fs::remove_file(&pending);
    Ok(())
}

fn run_helper(run_dir: &Path, req: &Req) -> Result<()> {
    let js = serde_json::to_vec(req).map_err(|e| Error(format!("encode hotplug request: {e}")))?;
    let mut cmd = helper_command("bivy-hotplug")?;
    cmd.arg("__hotplug")
        .arg(run_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error(format!("spawn the hot-plug helper: {e}")))?;
    if let Some(mut i) = child.stdin.take() {
        // A helper that dies early closes its end: its exit status tells why.
        let _ = i.write_all(&js);
    }
    let mut msg = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut msg);
    }
    let st = child
        .wait()
        .map_err(|e| Error(format!("wait for the hot-plug helper: {e}")))?;
    if st.success() {
        return Ok(());
    }
    let msg = msg.trim();
    Err(Error(if msg.is_empty() {
        format!("hot-plug helper failed ({st})")
    } else {
        msg.to_string()
    }))
}

/// `bivy __hotplug RUN_DIR` (request on stdin).
pub fn helper(args: &[String]) -> ! {
    let Some(run_dir) = args.first() else {
        eprintln!("usage: bivy __hotplug RUN_DIR");
        std::process::exit(2)
    };
    let _ = sys::close_range_from(3, false);
    let _ = nix::sys::prctl::set_name(c"bivy-hotplug");
    let mut js = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut js) {
        eprintln!("hot-plug: read the request: {e}");
        std::process::exit(2)
    }
    match run(Path::new(run_dir), &js) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{}", e.0);
            std::process::exit(1)
        }
    }
}

fn ns_err(what: &str) -> impl Fn(nix::errno::Errno) -> Error + '_ {
    move |e| Error(format!("hot-plug: {what}: {e}"))
}

fn run(run_dir: &Path, js: &str) -> Result<()> {
    let req: Req = serde_json::from_slice(js.as_bytes())
        .map_err(|e| Error(format!("hot-plug: parse the request: {e}")))?;
    // Held until the helper exits: a daemon started after the one that spawned it was killed
    // waits for it before it reconciles (see `reconcile`).
    let _lock = fs::File::open(run_dir.join(PENDING))
        .ok()
        .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
    let spec = read_spec(run_dir)?;
    let privileged = spec.rootfs_mode == RootfsMode::Privileged;
    let Some((_, pidfd)) = live_pidfd(&run_dir.join(files::INIT_PID)) else {
        return Err(Error(format!("container {} is not running", spec.name)));
    };
    // 1. Staging, in a private copy of the host's mount namespace.
    let mut staged: Vec<Staged> = Vec::new();
    let adding = !req.disks.is_empty() || !req.nodes.is_empty();
    if adding {
        let linked =
            disks::staging_namespace(&req.disks).map_err(|e| Error(format!("hot-plug: {e}")))?;
        let stage = run_dir.join(HOTPLUG_STAGE);
        match crate::util::fs::create_dir_mode(&stage, 0o711) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error(format!("create {}: {e}", stage.display()))),
        }
        mount(
            Some("tmpfs"),
            &stage,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=1m"),
        )
        .map_err(ns_err("mount the staging tmpfs"))?;
        let mut ns: Option<OwnedFd> = None;
        for ((i, d), l) in req.disks.iter().enumerate().zip(linked) {
            if let Some(s) = disks::stage_disk(&spec, d, &mut ns, &stage.join(i.to_string()), l)? {
                staged.push(s);
            }
        }
        for (i, u) in req.nodes.iter().enumerate() {
            staged.push(disks::stage_node(&spec, u, &stage.join(format!("u{i}")))?);
        }
        // 2. A copy made from inside the container's user namespace locks the mounts' flags.
        if !privileged {
            nix::sched::setns(pidfd.as_fd(), CloneFlags::CLONE_NEWUSER)
                .map_err(ns_err("join the container's user namespace"))?;
            become_container_root()?;
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(ns_err(
                "unshare(CLONE_NEWNS) in the container's user namespace",
            ))?;
        }
    }
    // 3. Detached clones, then the container's mount namespace (and its root).
    let mut trees: Vec<(Staged, OwnedFd)> = Vec::new();
    for s in staged {
        let t = disks::clone_staged(&s)
            .map_err(|e| Error(format!("device {:?}: open_tree: {e}", s.name)))?;
        trees.push((s, t));
    }
    let mut join = CloneFlags::CLONE_NEWNS;
    if !privileged && !adding {
        join |= CloneFlags::CLONE_NEWUSER;
    }
    nix::sched::setns(pidfd.as_fd(), join).map_err(ns_err("join the container's namespaces"))?;
    drop(pidfd);
    if join.contains(CloneFlags::CLONE_NEWUSER) {
        become_container_root()?;
    }
    nix::unistd::chdir("/").map_err(ns_err("chdir /"))?;
    // 4. Removals, then the new mounts (all or none).
    for g in &req.remove {
        unmount(&g.path)?;
        if g.node {
            remove_placeholder(&g.path);
        }
    }
    let mut done: Vec<&Staged> = Vec::new();
    for (s, t) in &trees {
        let r = disks::resolve_target(Path::new("/"), &s.path, s.dir)
            .map_err(|e| format!("path {}: {e}", s.path))
            .and_then(|target| {
                sys::move_mount_fd(t.as_fd(), target.as_fd())
                    .map_err(|e| format!("mount on {}: {e}", s.path))
            });
        if let Err(e) = r {
            for d in done.iter().rev() {
                let _ = unmount(&d.path);
            }
            let removed = if req.remove.is_empty() {
                ""
            } else {
                " (the removed devices stay removed)"
            };
            return Err(Error(format!("device {:?}: {e}{removed}", s.name)));
        }
        done.push(s);
    }
    Ok(())
}

/// After joining the container's user namespace: act as its root (host root is unmapped there,
/// so what it made would be refused by the idmapped rootfs).
fn become_container_root() -> Result<()> {
    use nix::unistd::{Gid, Uid};
    nix::unistd::setgroups(&[]).map_err(ns_err("setgroups"))?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(ns_err("setresgid"))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(ns_err("setresuid"))?;
    Ok(())
}

/// Where the helper stages (in its own mount namespace only).
const HOTPLUG_STAGE: &str = "hotplug";

/// Unmount what is at `path` in the container (nothing there is fine: a `required=false` disk
/// whose source was missing).
fn unmount(path: &str) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error(format!("hot-plug: unmount {path}: {e}"))),
    }
}

/// Remove a node's placeholder: the empty regular file the mount was made on, nothing else.
fn remove_placeholder(path: &str) {
    if let Ok(m) = fs::symlink_metadata(path) {
        if m.file_type().is_file() && m.len() == 0 {
            let _ = fs::remove_file(path);
        }
    }
}
