//! The container's mount table (LXC-like `proc:mixed sys:mixed cgroup:mixed`), then pivot_root.
//!
//! Two sides. [`host_side`]: proc, sysfs, the cgroup view and the masks, made as host root in the
//! monitor's mount namespace, which the container's is then copied from: the copy into a
//! namespace of the container's user namespace locks them, so container root can neither lift a
//! mask nor mount a fresh proc or sysfs (the kernel's "fully visible" rule). [`container_side`]:
//! /dev and the disk devices, made by container root in its own namespace. Paths inside the
//! rootfs are created with container root's fsuid, so they land with the container's ids on disk.
//!
//! Resulting layout:
//! - `/proc` (nosuid,nodev,noexec). Masked by a read-only `/dev/null` bind: kcore, keys,
//!   timer_list, latency_stats, sched_debug, sysrq-trigger; empty read-only tmpfs over acpi and scsi.
//!   Read-only: `/proc/sys` (except `/proc/sys/net`, left writable), `/proc/bus`, `/proc/fs`, `/proc/irq`.
//! - `/sys` sysfs read-only (of the container's network namespace), with
//!   `/sys/devices/virtual/net` writable; `/sys/fs/cgroup`: tmpfs plus each v1 hierarchy and the
//!   unified one, or just cgroup2 on a pure v2 host. The cgroup namespace roots them at the container.
//! - `/dev` tmpfs (0755): null zero full random urandom tty bound from nodes the monitor made (0666),
//!   devpts `newinstance,ptmxmode=0666,mode=0620,gid=5`, `ptmx -> pts/ptmx`, `console` (the monitor's
//!   pty slave), `shm` and `mqueue`, `fd stdin stdout stderr` symlinks.
//! - `security.nesting`: a fresh rw proc and sysfs at `/dev/.lxc/proc` and `/dev/.lxc/sys` (as LXD
//!   does), so a nested container manager can mount proc/sysfs (the kernel's "fully visible" rule).
//! - Disk devices last, at their paths (`disks.rs`).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::chan::{self, Msg};
use super::init::Ctx;
use super::monitor::DEV_NODES;
use super::Error;
use crate::sys;

fn e(step: &str, p: &Path, x: impl std::fmt::Display) -> Error {
    Error(format!("{step} {}: {x}", p.display()))
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn mnt(
    src: &str,
    dst: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    mount(Some(src), dst, Some(fstype), flags, data)
        .map_err(|x| e(&format!("mount {fstype} on"), dst, x))
}

fn bind(src: &Path, dst: &Path, rec: bool) -> Result<(), Error> {
    let mut f = MsFlags::MS_BIND;
    if rec {
        f |= MsFlags::MS_REC;
    }
    mount(Some(src), dst, None::<&str>, f, None::<&str>)
        .map_err(|x| e(&format!("bind {} to", src.display()), dst, x))
}

/// Remount the bind mount at `p` read-only, keeping its other flags (the kernel refuses to drop
/// locked ones like nosuid in a user namespace).
fn remount_ro(p: &Path) -> Result<(), Error> {
    let st = statvfs(p).map_err(|x| e("statvfs", p, x))?;
    let mut f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (s, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(s) {
            f |= m;
        }
    }
    mount(None::<&str>, p, None::<&str>, f, None::<&str>).map_err(|x| e("remount read-only", p, x))
}

fn mkdir(p: &Path) -> Result<(), Error> {
    fs::create_dir_all(p).map_err(|x| e("create", p, x))
}

fn touch(p: &Path) -> Result<(), Error> {
    if p.symlink_metadata().is_ok() {
        return Ok(());
    }
    fs::File::create(p).map(drop).map_err(|x| e("create", p, x))
}

/// Step 4h (host side): the mounts made as host root in the monitor's mount namespace. For an
/// unprivileged container the monitor makes them ([`host_side_for`]) in the container's network
/// and cgroup namespaces, its proc instances for the container's pid namespace (`pidns`: the
/// mount option naming it), and with the container root's fsuid (so what it creates belongs to
/// the container), before the container child copies that namespace into one of its own user
/// namespace: the copy locks them (MNT_LOCKED, and their read-only, nosuid, nodev, noexec and
/// atime flags), so container root can neither unmount a mask nor mount a fresh proc or sysfs
/// beside them (the kernel lets a proc or sysfs be mounted only where one is fully visible). A
/// privileged container makes them itself (`pidns` None: its own).
pub fn host_side(ctx: &Ctx<'_>, pidns: Option<&str>) -> Result<(), Error> {
    let root = ctx.root;
    super::helper::trace(ctx.t0, "host side: proc");
    // /proc: a new instance for the container's pid namespace.
    let proc_ = root.join("proc");
    mkdir(&proc_)?;
    mnt("proc", &proc_, "proc", NOSUID_NODEV_NOEXEC, pidns)?;

    super::helper::trace(ctx.t0, "host side: sys");
    // /sys read-only (of the container's network namespace), network devices writable (they
    // belong to its netns). Mounted read-write, then made read-only as a mount: the first mount
    // of a network namespace's sysfs makes its superblock, and a read-only superblock would
    // make every mount of it read-only, the network devices' and a nesting manager's too.
    let sys = root.join("sys");
    mkdir(&sys)?;
    mnt("sysfs", &sys, "sysfs", NOSUID_NODEV_NOEXEC, None)?;
    mount(
        None::<&str>,
        &sys,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
    .map_err(|x| e("remount read-only", &sys, x))?;
    let vnet = sys.join("devices/virtual/net");
    if vnet.is_dir() {
        bind(&vnet, &vnet, true)?;
        match mount(
            None::<&str>,
            &vnet,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | NOSUID_NODEV_NOEXEC,
            None::<&str>,
        ) {
            Ok(()) => {}
            // Nested inside another container the kernel refuses this remount; the net devices
            // then stay read-only in sysfs.
            Err(nix::errno::Errno::EPERM) if super::host::nested() => {
                eprintln!(
                    "bivy: nested: {} stays read-only (remount refused)",
                    vnet.display()
                );
            }
            Err(x) => return Err(e("remount rw", &vnet, x)),
        }
    }

    super::helper::trace(ctx.t0, "host side: cgroup view");
    // The cgroup view for systemd and nested managers (of the container's cgroup namespace).
    cgroup_view(ctx, &sys.join("fs/cgroup"))?;

    super::helper::trace(ctx.t0, "host side: proc masks");
    // /proc masks and read-only parts.
    proc_masks(root, &ctx.dev.join("null"))?;

    // Nesting: fully visible proc and sysfs instances for a nested manager (nothing mounted on
    // them, so the kernel lets it mount its own), made on a small tmpfs of the staging area
    // that the container side moves to /dev/.lxc once its /dev is mounted.
    if ctx.spec.nesting {
        let nest = nest_dir(ctx);
        mnt(
            "tmpfs",
            &nest,
            "tmpfs",
            NOSUID_NODEV_NOEXEC,
            Some("mode=0755,size=16k"),
        )?;
        for (name, fstype, data) in [("proc", "proc", pidns), ("sys", "sysfs", None)] {
            let p = nest.join(name);
            mkdir(&p)?;
            mnt(fstype, &p, fstype, NOSUID_NODEV_NOEXEC, data)?;
        }
    }
    Ok(())
}

/// Where [`host_side`] makes the nesting instances (`<stage>/nest`, made by the monitor).
pub fn nest_dir(ctx: &Ctx<'_>) -> std::path::PathBuf {
    ctx.dev.with_file_name("nest")
}

/// Run [`host_side`] for the unprivileged container whose init (`init_pid`, our child, waiting
/// in its namespaces but still sharing our mount namespace) is ready: a child of ours joins its
/// pid, network and cgroup namespaces, and that child's own child (a member of the container's pid
/// namespace, as proc needs) makes the mounts as host root with container root's fsuid and fsgid
/// (`owner`, host ids). Called by the single-threaded monitor; returns when they are made and
/// the second helper is gone, as the first says, without waiting for the first's own end
/// (whoever reaps the caller's children reaps it: the monitor's loop).
pub fn host_side_for(init_pid: i32, ctx: &Ctx<'_>, owner: (u32, u32)) -> Result<(), Error> {
    let fail =
        |step: &str, x: &dyn std::fmt::Display| Error(format!("host-side mounts: {step}: {x}"));
    let pidfd = sys::pidfd_open(init_pid).map_err(|x| fail("pidfd_open", &x))?;
    if sys::overlay::proc_takes_pidns() && std::env::var_os(HOST_SIDE_HELPERS).is_none() {
        return host_side_here(&pidfd, init_pid, ctx, owner);
    }
    let (ours, theirs) = chan::pair()?;
    let pid = sys::fork().map_err(|x| fail("fork", &x))?;
    if pid == 0 {
        drop(ours);
        let code = match join_and_mount(&pidfd, ctx, owner, &theirs) {
            Ok(code) => code,
            Err(x) => {
                let _ = chan::send(&theirs, &Msg::Err(x.0), None);
                1
            }
        };
        sys::exit_now(code);
    }
    drop(theirs);
    // Ready once the mounts are made; an error; or the end of the stream once both helpers
    // are gone without a word.
    match chan::recv(&ours) {
        Ok(Some((Msg::Ready, _))) => Ok(()),
        msg => {
            let status = waitpid(Pid::from_raw(pid), None).map_err(|x| fail("wait", &x))?;
            match msg {
                Ok(Some((Msg::Err(x), _))) => Err(Error(x)),
                Err(x) => Err(x),
                _ => Err(fail("helper ended", &format!("{status:?}"))),
            }
        }
    }
}

/// Set in the daemon's environment (passed to the monitors), the host-side mounts are made by
/// helper processes as on kernels before 6.15, where the kernel would let the monitor make them
/// itself: the tests' way to that path.
pub(crate) const HOST_SIDE_HELPERS: &str = "BIVY_HOST_SIDE_HELPERS";

/// [`host_side`] by the monitor itself, where proc takes the pid namespace as an option (Linux
/// 6.15+): it joins the container's network and cgroup namespaces for the while (sysfs and the
/// cgroup view are theirs) with the container root's fsuid, and comes back. No process made:
/// before, two helpers did it (the second a member of the container's pid namespace, for proc).
fn host_side_here(
    pidfd: &std::os::fd::OwnedFd,
    init_pid: i32,
    ctx: &Ctx<'_>,
    owner: (u32, u32),
) -> Result<(), Error> {
    use nix::sched::CloneFlags as C;
    let fail =
        |step: &str, x: &dyn std::fmt::Display| Error(format!("host-side mounts: {step}: {x}"));
    let ours = |ns: &str| {
        fs::File::open(format!("/proc/thread-self/ns/{ns}"))
            .map_err(|x| fail(&format!("open our {ns} namespace"), &x))
    };
    let (net, cgroup) = (ours("net")?, ours("cgroup")?);
    nix::sched::setns(pidfd, C::CLONE_NEWNET | C::CLONE_NEWCGROUP)
        .map_err(|x| fail("join the container's namespaces", &x))?;
    fs_ids(owner);
    let made = host_side(ctx, Some(&format!("pidns=/proc/{init_pid}/ns/pid")));
    fs_ids((0, 0));
    // A change of fsuid made the monitor non-dumpable (the kernel's rule for any change of
    // credentials), which the processes it forks next would inherit: back as it was.
    let _ = nix::sys::prctl::set_dumpable(true);
    nix::sched::setns(&net, C::CLONE_NEWNET)
        .and_then(|()| nix::sched::setns(&cgroup, C::CLONE_NEWCGROUP))
        .map_err(|x| fail("come back to our namespaces", &x))?;
    made
}

/// What the calling thread creates from now on belongs to `owner` (uid, gid): its fsuid and
/// fsgid.
fn fs_ids(owner: (u32, u32)) {
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(owner.1));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(owner.0));
}

/// The first helper of [`host_side_for`] (Linux before 6.15): joins the namespaces, forks the
/// second, which mounts; says Ready on `done` once the second ended, its mounts made.
fn join_and_mount(
    pidfd: &std::os::fd::OwnedFd,
    ctx: &Ctx<'_>,
    owner: (u32, u32),
    done: &std::os::fd::OwnedFd,
) -> Result<i32, Error> {
    use nix::sched::CloneFlags as C;
    nix::sched::setns(
        pidfd,
        C::CLONE_NEWPID | C::CLONE_NEWNET | C::CLONE_NEWCGROUP,
    )
    .map_err(|x| {
        Error(format!(
            "host-side mounts: join the container's namespaces: {x}"
        ))
    })?;
    let pid = sys::fork().map_err(|x| Error(format!("host-side mounts: fork: {x}")))?;
    if pid == 0 {
        fs_ids(owner);
        return host_side(ctx, None).map(|()| 0);
    }
    // The second, a member of the container's pid namespace, gone before the container goes on.
    match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, 0)) => {
            chan::send(done, &Msg::Ready, None)?;
            Ok(0)
        }
        Ok(WaitStatus::Exited(_, code)) => Ok(code),
        Ok(st) => Err(Error(format!(
            "host-side mounts: the mounting helper ended: {st:?}"
        ))),
        Err(x) => Err(Error(format!("host-side mounts: wait: {x}"))),
    }
}

/// Step 4 (container side), in the child's own mount namespace after [`host_side`]: the rootfs
/// re-bound onto itself (so pivot_root takes it), /dev (a tmpfs of the container's, whose device
/// nodes are binds: CRIU dumps and restores its content, which it cannot do below locked
/// mounts), the nesting instances at /dev/.lxc, and the disk devices (left unlocked, so a
/// hot-unplug can take them away).
pub fn container_side(ctx: &Ctx<'_>) -> Result<(), Error> {
    let root = ctx.root;
    super::helper::trace(ctx.t0, "child step 4a");
    // 4a. Re-bind the rootfs onto itself: the copy inherited from the monitor's namespace is locked
    //     in our user namespace, and pivot_root refuses a locked new root (EINVAL). The mounts
    //     below it stay locked in the copy.
    bind(root, root, true)?;

    // The nesting instances: a copy of the staged tree (its proc and sysfs stay locked in it).
    let nest = if ctx.spec.nesting {
        let p = nest_dir(ctx);
        Some(sys::open_tree_clone(&p, true).map_err(|x| e("open_tree", &p, x))?)
    } else {
        None
    };

    super::helper::trace(ctx.t0, "child step 4b");
    // 4b. /dev.
    dev(ctx)?;
    if let Some(t) = nest {
        let p = root.join("dev/.lxc");
        mkdir(&p)?;
        sys::move_mount_to(std::os::fd::AsFd::as_fd(&t), &p)
            .map_err(|x| e("move_mount to", &p, x))?;
    }

    super::helper::trace(ctx.t0, "child step 4c");
    // 4c. Disk devices, at their paths resolved inside the rootfs (see disks.rs).
    super::disks::mount_all(root, ctx.disks)?;
    Ok(())
}

fn cgroup_view(ctx: &Ctx<'_>, cg: &Path) -> Result<(), Error> {
    if !cg.is_dir() {
        return Ok(());
    }
    let l = ctx.layout;
    if l.v2_only {
        return mnt("cgroup2", cg, "cgroup2", NOSUID_NODEV_NOEXEC, None);
    }
    mnt(
        "tmpfs",
        cg,
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        Some("mode=0755,size=1m"),
    )?;
    for (mp, opts) in &l.v1 {
        let Some(base) = Path::new(mp).file_name().and_then(|b| b.to_str()) else {
            continue;
        };
        let dst = cg.join(base);
        mkdir(&dst)?;
        mnt("cgroup", &dst, "cgroup", NOSUID_NODEV_NOEXEC, Some(opts))?;
        // Combined hierarchies (`cpu,cpuacct`) also get one symlink per controller, as on hosts.
        if base.contains(',') {
            for part in base.split(',') {
                let _ = symlink(base, cg.join(part));
            }
        }
    }
    if let Some(u) = &l.unified {
        let base = u.file_name().and_then(|b| b.to_str()).unwrap_or("unified");
        let dst = cg.join(base);
        mkdir(&dst)?;
        mnt("cgroup2", &dst, "cgroup2", NOSUID_NODEV_NOEXEC, None)?;
    }
    Ok(())
}

fn dev(ctx: &Ctx<'_>) -> Result<(), Error> {
    let d = ctx.root.join("dev");
    mkdir(&d)?;
    mnt(
        "tmpfs",
        &d,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=65536k"),
    )?;
    // Device nodes: made by the monitor on a host-owned tmpfs (0666, owned by container root),
    // bound over empty files here. mknod in the userns would be EPERM, and host /dev nodes carry
    // whatever mode the host has.
    for (name, _, _) in DEV_NODES {
        let dst = d.join(name);
        touch(&dst)?;
        bind(&ctx.dev.join(name), &dst, false)?;
    }
    let pts = d.join("pts");
    mkdir(&pts)?;
    mnt(
        "devpts",
        &pts,
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        symlink(target, d.join(name)).map_err(|x| e("symlink", &d.join(name), x))?;
    }
    let console = d.join("console");
    touch(&console)?;
    bind(ctx.console, &console, false)?;
    let shm = d.join("shm");
    mkdir(&shm)?;
    mnt(
        "tmpfs",
        &shm,
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    let mq = d.join("mqueue");
    mkdir(&mq)?;
    mnt("mqueue", &mq, "mqueue", NOSUID_NODEV_NOEXEC, None)?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).map_err(|x| e("chmod", &d, x))?;
    Ok(())
}

/// Files under /proc hidden behind a read-only /dev/null.
const PROC_MASK_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "latency_stats",
    "sched_debug",
    "sysrq-trigger",
];
/// Directories under /proc hidden behind an empty read-only tmpfs.
const PROC_MASK_DIRS: &[&str] = &["acpi", "scsi"];
/// Directories under /proc made read-only.
const PROC_RO: &[&str] = &["sys", "bus", "fs", "irq"];

fn proc_masks(root: &Path, null: &Path) -> Result<(), Error> {
    let p = root.join("proc");
    for f in PROC_MASK_FILES {
        let t = p.join(f);
        if t.exists() {
            bind(null, &t, false)?;
            remount_ro(&t)?;
        }
    }
    for d in PROC_MASK_DIRS {
        let t = p.join(d);
        if t.is_dir() {
            mnt(
                "tmpfs",
                &t,
                "tmpfs",
                NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
                Some("size=0"),
            )?;
        }
    }
    // /proc/sys/net stays writable: bind it onto itself first, so the recursive self-bind of
    // /proc/sys carries it as a submount, and only the top mount is then made read-only.
    let net = p.join("sys/net");
    if net.is_dir() {
        bind(&net, &net, false)?;
    }
    for d in PROC_RO {
        let t = p.join(d);
        if t.is_dir() {
            bind(&t, &t, true)?;
            remount_ro(&t)?;
        }
    }
    Ok(())
}

/// pivot_root into `root` with the old root stacked on top and detached (no put_old directory).
pub fn pivot(root: &Path) -> Result<(), Error> {
    nix::unistd::chdir(root).map_err(|x| e("chdir", root, x))?;
    nix::unistd::pivot_root(".", ".").map_err(|x| e("pivot_root", root, x))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|x| e("detach old root", root, x))?;
    nix::unistd::chdir("/").map_err(|x| e("chdir", Path::new("/"), x))?;
    Ok(())
}
