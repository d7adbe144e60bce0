//! The container child, between clone and execve of init, as numbered steps. Runs in the cloned
//! process (new user/pid/uts/ipc/net namespaces, pid 1; its mount namespace comes at step 4), single-threaded, and reports the
//! first failure to the monitor (which undoes everything). Nothing here returns on success: the
//! last step is execve.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::unistd::{Gid, Uid};

use super::chan::{self, Msg};
use super::confine::{self, CgroupLayout, Seccomp};
use super::{rootfs, Error, Spec};
use crate::sys;

/// What the monitor hands to the child (borrowed from the monitor's copy of memory).
pub struct Ctx<'a> {
    /// When the monitor's setup began (for `BIVY_TRACE` step timings).
    pub t0: std::time::Instant,
    pub spec: &'a Spec,
    /// `<stage>/root`: the rootfs, already mounted (idmapped or bound) in the monitor's namespace.
    pub root: &'a Path,
    /// `<stage>/dev`: the device nodes to bind in.
    pub dev: &'a Path,
    /// Host path of the console pty slave (`/dev/pts/N`).
    pub console: &'a Path,
    pub slave: &'a OwnedFd,
    pub seccomp: &'a Seccomp,
    pub label: Option<&'a str>,
    pub layout: &'a CgroupLayout,
    /// Disk devices the monitor staged, to mount inside the rootfs.
    pub disks: &'a [super::disks::Staged],
}

fn e(step: &str, x: impl std::fmt::Display) -> Error {
    Error(format!("{step}: {x}"))
}

/// Returns only with the error that stopped the setup.
pub fn child(ctx: &Ctx<'_>, sock: &OwnedFd) -> Error {
    match setup(ctx, sock) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

/// Uninhabited: `setup` succeeds only by exec'ing.
pub enum Never {}

fn setup(ctx: &Ctx<'_>, sock: &OwnedFd) -> Result<Never, Error> {
    let spec = ctx.spec;

    super::helper::trace(ctx.t0, "child step 1");
    // 1. Wait until the monitor wrote our id maps and put us into the container's cgroup.
    match chan::recv(sock)? {
        Some((Msg::Go, _)) => {}
        other => {
            return Err(Error(format!(
                "monitor did not release the container: {other:?}"
            )))
        }
    }

    super::helper::trace(ctx.t0, "child step 2");
    // 2. Cgroup namespace only now, after the cgroup join, so its root is the container's cgroup
    //    (in the same clone it would be rooted at the monitor's cgroup: host.md 7c).
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|x| e("unshare(CLONE_NEWCGROUP)", x))?;

    super::helper::trace(ctx.t0, "child step 3");
    // 3. Become root of the user namespace before touching the rootfs: on an idmapped mount only
    //    mapped fsuids can create files, and host uid 0 is not mapped. Caps stay (root of the ns).
    nix::unistd::setgroups(&[]).map_err(|x| e("setgroups", x))?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|x| e("setresgid(0)", x))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|x| e("setresuid(0)", x))?;
    // If the monitor dies (killed, crashed), init dies with it and takes the pid namespace along,
    // rather than running on unsupervised. Set after the credential change, which clears it.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|x| e("PR_SET_PDEATHSIG", x))?;

    // 3b. A layered rootfs's templates, written now as container root through the container's
    //     own overlay (nothing is mounted in the rootfs yet: they land in its volume, as LXD
    //     writes them), with the same safe resolution as the daemon's (never outside it).
    if !spec.templates.is_empty() {
        crate::image::write_templates(&spec.templates, ctx.root)
            .map_err(|x| e("applying templates", x))?;
        super::helper::trace(ctx.t0, "child step 3b: templates written");
    }

    super::helper::trace(ctx.t0, "child step 4");
    // 4. Mounts inside the rootfs, then pivot_root into it. Unprivileged: we were cloned into the
    //    monitor's mount namespace; the monitor makes proc, sys, the cgroup view, /dev and the
    //    masks there (as host root: `rootfs::host_side`), then our own mount namespace is copied
    //    from it, which locks them. Privileged: we make them in the namespace we were cloned with.
    if spec.rootfs_mode == super::RootfsMode::Privileged {
        rootfs::host_side(ctx, None)?;
    } else {
        chan::send(sock, &Msg::Ready, None)?;
        match chan::recv(sock)? {
            Some((Msg::Go, _)) => {}
            other => {
                return Err(Error(format!(
                    "monitor did not make the host-side mounts: {other:?}"
                )))
            }
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|x| e("unshare(CLONE_NEWNS)", x))?;
    }
    rootfs::container_side(ctx)?;
    rootfs::pivot(ctx.root)?;

    super::helper::trace(ctx.t0, "child step 5");
    // 5. Identity and network: hostname in the new UTS ns; loopback up in the empty netns.
    nix::unistd::sethostname(&spec.hostname).map_err(|x| e("sethostname", x))?;
    sys::link_up("lo").map_err(|x| e("bring lo up", x))?;

    super::helper::trace(ctx.t0, "child step 6");
    // 6. Console: new session with the pty slave as controlling terminal and stdio.
    nix::unistd::setsid().map_err(|x| e("setsid", x))?;
    rustix::process::ioctl_tiocsctty(ctx.slave).map_err(|x| e("TIOCSCTTY on console", x))?;
    nix::unistd::dup2_stdin(ctx.slave).map_err(|x| e("dup2 console", x))?;
    nix::unistd::dup2_stdout(ctx.slave).map_err(|x| e("dup2 console", x))?;
    nix::unistd::dup2_stderr(ctx.slave).map_err(|x| e("dup2 console", x))?;

    super::helper::trace(ctx.t0, "child step 7");
    // 7. Confinement: capability bounding set (LXD's default drops, privileged or not), AppArmor
    //    label for the exec, then every fd but stdio marked close-on-exec.
    drop_caps()?;
    if let Some(l) = ctx.label {
        confine::apparmor_set_exec_label(l)?;
    }
    sys::close_range_from(3, true).map_err(|x| e("close_range", x))?;
    let argv = cstrings(&spec.init)?;
    let env = cstrings(
        &spec
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
    )?;
    if argv.is_empty() {
        return Err(Error("empty init command".into()));
    }
    sys::reset_signals();

    super::helper::trace(ctx.t0, "child step 8");
    // 8. seccomp last: after it only execve runs (tried again while the file is busy).
    confine::seccomp_load(ctx.seccomp)?;
    let x = sys::execve_when_free(&argv[0], &argv, &env);
    Err(e(&format!("execve {}", spec.init[0]), x))
}

/// Capabilities no container has, privileged or not: LXD's default `lxc.cap.drop`. In an
/// unprivileged container they grant nothing on the host either, but software inside decides by
/// them: with CAP_SYS_RAWIO systemd mounts debugfs (`sys-kernel-debug.mount`), which the
/// container may not do, and boots "degraded".
pub const DROPPED_CAPS: [caps::Capability; 5] = [
    caps::Capability::CAP_SYS_TIME,
    caps::Capability::CAP_SYS_MODULE,
    caps::Capability::CAP_SYS_RAWIO,
    caps::Capability::CAP_MAC_ADMIN,
    caps::Capability::CAP_MAC_OVERRIDE,
];

/// Drop [`DROPPED_CAPS`] from the bounding set (so no later exec gets them back).
pub fn drop_caps() -> Result<(), Error> {
    for c in DROPPED_CAPS {
        caps::drop(None, caps::CapSet::Bounding, c)
            .map_err(|x| e(&format!("drop {c} from bounding set"), x))?;
    }
    Ok(())
}

pub fn cstrings(v: &[String]) -> Result<Vec<CString>, Error> {
    v.iter()
        .map(|s| CString::new(s.as_str()).map_err(|_| Error(format!("NUL byte in {s:?}"))))
        .collect()
}
