//! The per-container monitor (`bivy __monitor <run_dir> <status_fd>`): the process that sets a
//! container up, holds it while it runs and records its end. The caller's side (start, state,
//! stop) is `control.rs`; the helper plumbing it shares with `exec` and hot-plug is `helper.rs`.
//!
//! The monitor is the bivy binary re-executed from a sealed memfd (CVE-2019-5736), daemonized
//! (fork + setsid, reparented away from the daemon) with every inherited fd closed except its status
//! socket (CVE-2024-21626). It lives in a private mount namespace of its own, so nothing it mounts
//! (the staging tmpfs with device nodes, the idmapped rootfs) ever appears on the host. It holds the
//! console pty master, clones init, records the exit and removes the cgroup. Its control path is
//! signals: SIGTERM/SIGINT to the monitor = kill the container; `stop()` also signals init directly.
//! It serves the console on `console.sock` and exec requests on `exec.sock` (a waiter forked for
//! each, see `exec.rs`), both in the run directory.
//! While physical NICs are in the container, it holds the network namespace past init's death and
//! gives them back to the host.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::chan::{self, Msg};
use super::control::read_spec;
use super::helper::{err, inherited_socket, replace_file, trace, write_pidfile};
use super::{
    confine, criu, disks, exec, files, init, rootfs, userns, Error, ExitInfo, Result, RootfsMode,
    Spec,
};
use crate::sys;
use crate::util::fs::atomic_write;

/// `bivy __monitor <run_dir> <status_fd>`.
pub fn helper(args: &[String]) -> ! {
    // 1. Close every inherited fd except stdio and the status socket (CVE-2024-21626 style leaks).
    let (run_dir, status) = inherited_socket(args, "monitor");
    // 1b. A spare (`--spare`, made ahead of a start): wait for the run directory and the log
    //     (our stdout and stderr from now on); the end of the socket means it is not needed.
    //     After the log may come a user namespace with the container's id maps, for its
    //     idmapped mounts (the daemon keeps them, see `control::mapped_userns`).
    //     Its cgroup's v1 directories are made now, as `.spare-<pid>`, and renamed to the
    //     container's (see `make_cgroup`); they go with it when it is not needed.
    let spare = run_dir == "--spare";
    let (run_dir, userns, premade) = if spare {
        // Daemonized before it says it waits: the fork is not on a start's path.
        daemonize(&status);
        let _ = nix::sys::prctl::set_name(c"bivy-spare");
        // Asked now, while nothing waits for it (see `rootfs::host_side_for`).
        let _ = sys::overlay::proc_takes_pidns();
        let premade = format!("{}{}", confine::SPARE_CGROUP, std::process::id());
        let premade = matches!(confine::cgroup_premake(&premade), Ok(true)).then_some(premade);
        let unneeded = || {
            if let Some(p) = &premade {
                let _ = confine::cgroup_remove(p);
            }
            std::process::exit(0)
        };
        if chan::send(&status, &Msg::Ready, None).is_err() {
            unneeded();
        }
        match chan::recv_fds(&status) {
            Ok(Some((Msg::Request(dir), fds))) => {
                let mut fds = fds.into_iter();
                if let Some(log) = fds.next() {
                    let _ = nix::unistd::dup2_stdout(&log);
                    let _ = nix::unistd::dup2_stderr(&log);
                }
                (dir, fds.next(), premade)
            }
            _ => unneeded(),
        }
    } else {
        (run_dir, None, None)
    };
    // 2. Daemonized (a spare was, above).
    if !spare {
        daemonize(&status);
    }
    // A readable name in ps/top (the exe is /proc/self/fd/N, so comm would be "N").
    let _ = nix::sys::prctl::set_name(c"bivy-monitor");
    let run_dir = PathBuf::from(run_dir);
    let code = match run(&run_dir, status, userns, premade.as_deref()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bivy monitor: {e}");
            1
        }
    };
    // A premade cgroup a failed setup did not take (a taken one has another name now).
    if let Some(p) = &premade {
        let _ = confine::cgroup_remove(p);
    }
    std::process::exit(code)
}

/// The first process exits (its spawner reaps it), the second one is orphaned away from the
/// daemon and leads its own session, so it survives the daemon and its terminal. It pins no
/// directory of the caller's (the run directory is absolute).
fn daemonize(status: &OwnedFd) {
    match sys::fork() {
        Ok(0) => {}
        Ok(_) => sys::exit_now(0),
        Err(e) => {
            let _ = chan::send(status, &Msg::Err(format!("fork monitor: {e}")), None);
            std::process::exit(1)
        }
    }
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::chdir("/");
}

/// Everything the monitor prepared; undone by `teardown`.
struct Prepared {
    cgroup: bool,
    stage: PathBuf,
}

fn teardown(spec: &Spec, p: &Prepared) {
    // The staged mounts go in a child while the cgroups are removed: their unmount drops the
    // last reference to a layered rootfs's overlay, whose end syncs its upper layer's whole
    // filesystem (7-9 ms here), and the removal of a systemd container's sixty cgroups takes as
    // long again. Both are done when the monitor exits.
    let unmounting = match sys::fork() {
        Ok(0) => {
            let _ = umount2(&p.stage, MntFlags::MNT_DETACH);
            sys::exit_now(0)
        }
        Ok(pid) => Some(Pid::from_raw(pid)),
        Err(_) => None,
    };
    if p.cgroup {
        // The processes of a dead pid namespace exit asynchronously; retry until the cgroup is empty.
        for i in 0..200 {
            if confine::cgroup_remove(spec.cgroup_name()).is_ok() {
                break;
            }
            if i % 20 == 0 {
                let _ = confine::cgroup_kill_all(spec.cgroup_name());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    match unmounting {
        Some(child) => {
            let _ = waitpid(child, None);
        }
        None => {
            let _ = umount2(&p.stage, MntFlags::MNT_DETACH);
        }
    }
    let _ = fs::remove_dir(&p.stage);
}

/// `userns`: a user namespace with the spec's id maps, for the idmapped mounts, when the daemon
/// gave one.
/// `premade`: the v1 cgroup directories a spare made ahead ([`confine::cgroup_premake`]).
fn run(
    run_dir: &Path,
    status: OwnedFd,
    userns: Option<OwnedFd>,
    premade: Option<&str>,
) -> Result<()> {
    let t0 = Instant::now();
    let spec = read_spec(run_dir)?;
    // The run directory, held for the container's life (see below, after the setup).
    let held = rustix::fs::open(
        run_dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| err("open", run_dir, e))?;
    // A restore request (from `restore()`): criu restores the tree instead of a new init.
    let rp = run_dir.join(files::RESTORE);
    let restore: Option<criu::RestoreReq> = match fs::read(&rp) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| err("parse", &rp, e))?),
        Err(_) => None,
    };
    let _ = fs::remove_file(&rp);
    let me = std::process::id() as i32;
    write_pidfile(&run_dir.join(files::MONITOR_PID), me)?;
    let mut prep = Prepared {
        cgroup: false,
        stage: run_dir.join(files::STAGE),
    };
    trace(t0, "spec read, pid recorded");
    match setup(
        t0,
        run_dir,
        &spec,
        &mut prep,
        restore.as_ref(),
        userns,
        premade,
    ) {
        Ok(Setup {
            init_pid,
            master,
            slave,
            seccomp,
            label,
        }) => {
            // init is our unreaped child: the pidfd names it, for the exec waiters' setns.
            let init_fd = sys::pidfd_open(init_pid).ok();
            // A restored container runs: the monitor uses no pool's files from now on (a new
            // one's were dropped at step 9c). Dropped before the start is answered: a pool
            // deleted just after it must not find its mount here.
            if restore.is_some() {
                crate::util::drop_pool_mounts(&[run_dir, &spec.console_log]);
            }
            // From here on the run directory is reached through its descriptor: a restore
            // moves it aside while this run ends (`control::kill_and_detach`) and starts the
            // next run in a new one at the old path.
            let run_dir = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
            let run_dir = run_dir.as_path();
            prep.stage = run_dir.join(files::STAGE);
            let _ = write_pidfile(&run_dir.join(files::DETACHABLE), me);
            let _ = chan::send(&status, &Msg::Started(init_pid, me), None);
            drop(status);
            trace(t0, "start answered");
            // The network namespace outlives init while physical NICs are in it: they go back
            // to the host (a virtual one would die with the namespace).
            let netns = fs::File::open(format!("/proc/{init_pid}/ns/net"))
                .ok()
                .map(OwnedFd::from);
            let target = init_fd.as_ref().map(|init| exec::Target {
                cgroup: spec.cgroup_name(),
                privileged: spec.rootfs_mode == RootfsMode::Privileged,
                label: label.as_deref(),
                seccomp: &seccomp,
                init: init.as_fd(),
            });
            let exit = supervise(&spec, init_pid, &master, run_dir, target.as_ref());
            if let Some(ns) = netns {
                let nics = read_spec(run_dir)
                    .map(|s| s.nics)
                    .unwrap_or_else(|_| spec.nics.clone());
                super::nics::give_back_all(&ns, &nics);
            }
            drop(slave);
            teardown(&spec, &prep);
            let p = run_dir.join(files::EXIT);
            let js = serde_json::to_vec(&exit).map_err(|e| Error(format!("encode exit: {e}")))?;
            atomic_write(&p, &js).map_err(|e| err("write", &p, e))?;
            let _ = fs::remove_file(run_dir.join(files::INIT_PID));
            let _ = fs::remove_file(run_dir.join(files::MONITOR_PID));
            Ok(())
        }
        Err(e) => {
            teardown(&spec, &prep);
            let _ = fs::remove_file(run_dir.join(files::MONITOR_PID));
            let _ = chan::send(&status, &Msg::Err(e.0.clone()), None);
            Err(e)
        }
    }
}

/// Bind `/dev/<name>` over an empty file at `p` after checking it is the char device maj:min with
/// mode 0666 (see the nested case in step 3).
fn reuse_dev_node(p: &Path, name: &str, maj: u64, min: u64) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let src = Path::new("/dev").join(name);
    let md = fs::metadata(&src).map_err(|e| err("stat", &src, e))?;
    let rdev = md.rdev();
    if !md.file_type().is_char_device()
        || nix::sys::stat::major(rdev) != maj
        || nix::sys::stat::minor(rdev) != min
        || md.mode() & 0o777 != 0o666
    {
        return Err(Error(format!(
            "cannot create /dev/{name} in a nested user namespace (mknod: EPERM) and {} is not a 0666 char device {maj}:{min}",
            src.display()
        )));
    }
    fs::File::create(p).map_err(|e| err("create", p, e))?;
    mount(Some(&src), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| err("bind", p, e))?;
    Ok(())
}

/// Device nodes the container gets (made here on the staging tmpfs, bind-mounted in by the child).
pub(crate) const DEV_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// What a successful setup leaves the monitor.
struct Setup {
    /// init's host pid.
    init_pid: i32,
    /// The console pty's master, and a slave fd of the monitor's own.
    master: OwnedFd,
    slave: OwnedFd,
    /// The confinement init got, which exec'd commands get too.
    seccomp: confine::Seccomp,
    label: Option<String>,
}

/// What steps 3-5 of [`setup`] staged for init.
struct Staging {
    /// The rootfs, the device nodes, the staged disks and unix devices (below the staging tmpfs).
    root: PathBuf,
    dev: PathBuf,
    staged: Vec<disks::Staged>,
    seccomp: confine::Seccomp,
    label: Option<String>,
}

/// Steps 3-5 of [`setup`]: the staging tmpfs at `stage` with the device nodes, the rootfs and the
/// disks below it, the confinement compiled. `userns`: one with the spec's id maps, else made.
fn stage(
    t0: Instant,
    spec: &Spec,
    stage: &Path,
    owner: (u32, u32),
    linked: Vec<Option<disks::Linked>>,
    userns: Option<OwnedFd>,
) -> Result<Staging> {
    trace(t0, "before step 3");
    // 3. Staging tmpfs (mounted by host root, so device nodes on it work when bind-mounted into the
    //    userns; a tmpfs mounted inside the userns would be nodev). Host /dev nodes are never reused:
    //    their modes are whatever the host has (0644 /dev/null once broke containers).
    crate::util::fs::create_dir_mode(stage, 0o711).map_err(|e| err("create", stage, e))?;
    mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| err("mount tmpfs on", stage, e))?;
    let dev = stage.join("dev");
    let root = stage.join("root");
    // `nest`: where the nesting instances of proc and sysfs are made (see rootfs::host_side).
    let nest = stage.join("nest");
    for d in [&dev, &root, &nest] {
        fs::create_dir(d).map_err(|e| err("create", d, e))?;
    }
    for (name, maj, min) in DEV_NODES {
        let p = dev.join(name);
        match mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(*maj, *min),
        ) {
            Ok(()) => {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
                    .map_err(|e| err("chmod", &p, e))?;
                std::os::unix::fs::chown(&p, Some(owner.0), Some(owner.1))
                    .map_err(|e| err("chown", &p, e))?;
            }
            // Nested (bivy inside a container): no mknod in a user namespace. Reuse our own
            // /dev node only when it is exactly the device and world-usable (an outer manager
            // made it); never a node with whatever mode a host happens to have.
            Err(nix::errno::Errno::EPERM) => reuse_dev_node(&p, name, *maj, *min)?,
            Err(e) => return Err(err("mknod", &p, e)),
        }
    }

    trace(t0, "before step 4");
    // 4. Root filesystem at <stage>/root. Idmapped: a detached idmapped clone of the rootfs mount
    //    attached here (in our private namespace only); otherwise a recursive bind.
    match spec.rootfs_mode {
        RootfsMode::Idmapped => {
            let ns = match userns {
                Some(ns) => ns,
                None => userns::userns_fd(&spec.uid_map, &spec.gid_map)?,
            };
            trace(t0, "step 4: userns for the idmap ready");
            let t = userns::idmapped_tree(&spec.rootfs, &ns)?;
            trace(t0, "step 4: idmapped tree ready");
            let t = match &spec.rootfs_lower {
                None => t,
                Some(lower) => {
                    // The layers, idmapped, attached here for the overlay's maker to take (its
                    // copy of this namespace has them). They stay until the teardown's unmount
                    // of the staging tmpfs (the overlay holds them anyway): an unmount here
                    // waits for an RCU grace period. The maker ends on its own; the monitor's
                    // loop reaps it.
                    let l = userns::idmapped_tree(lower, &ns)?;
                    let (at_lower, at_vol) = (stage.join("lower"), stage.join("layers"));
                    for (tree, at) in [(&l, &at_lower), (&t, &at_vol)] {
                        fs::create_dir(at).map_err(|e| err("create", at, e))?;
                        sys::move_mount_to(tree.as_fd(), at)
                            .map_err(|e| err("move_mount a rootfs layer to", at, e))?;
                    }
                    let o = userns::overlay_in_userns(&ns, &at_lower, &at_vol)?;
                    trace(t0, "step 4: rootfs overlay ready");
                    o
                }
            };
            sys::move_mount_to(t.as_fd(), &root)
                .map_err(|e| err("move_mount idmapped rootfs to", &root, e))?;
        }
        RootfsMode::Shifted | RootfsMode::Privileged if spec.rootfs_lower.is_some() => {
            return Err(Error(
                "a layered rootfs is mounted idmapped only (the daemon flattens it first)".into(),
            ));
        }
        RootfsMode::Shifted | RootfsMode::Privileged => {
            mount(
                Some(&spec.rootfs),
                &root,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| err("bind rootfs", &spec.rootfs, e))?;
        }
    }

    trace(t0, "before step 4b");
    // 4b. Disk devices: each source opened without following symlinks, copied, idmapped and made
    //     read-only as asked, attached below the staging tmpfs (see disks.rs).
    let staged = disks::stage(spec, stage, linked)?;

    trace(t0, "before step 5");
    // 5. Confinement prepared before the clone, so the child only has to apply it.
    let seccomp = confine::seccomp_compile(&spec.seccomp_policy)?;
    let privileged = spec.rootfs_mode == RootfsMode::Privileged;
    let label =
        confine::apparmor_prepare(&spec.name, spec.nesting, privileged, &spec.apparmor_raw)?;
    Ok(Staging {
        root,
        dev,
        staged,
        seccomp,
        label,
    })
}

/// Step 6 of [`setup`]: the cgroup (owned by container root for delegation when unprivileged)
/// and its device rules (LXD's default list plus the instance's device nodes). Whether this
/// run made the cgroup (teardown removes it then, killing what is in it), and the outcome.
fn make_cgroup(
    t0: Instant,
    spec: &Spec,
    privileged: bool,
    owner: (u32, u32),
    premade: Option<&str>,
) -> (bool, Result<()>) {
    let (name, limits, owner) = (
        spec.cgroup_name(),
        &spec.limits,
        (!privileged).then_some(owner),
    );
    let made = match premade {
        Some(p) => confine::cgroup_create_from(p, name, limits, owner),
        None => confine::cgroup_create(name, limits, owner),
    };
    if let Err(e) = made {
        return (false, Err(e));
    }
    trace(t0, "step 6: cgroup made");
    let rules: Vec<String> = spec
        .unix_devices
        .iter()
        .map(super::UnixDev::cgroup_rule)
        .collect();
    let r = confine::cgroup_restrict_devices(spec.cgroup_name(), &rules);
    trace(t0, "step 6: device rules set");
    (true, r)
}

/// Monitor setup.
fn setup(
    t0: Instant,
    run_dir: &Path,
    spec: &Spec,
    prep: &mut Prepared,
    restore: Option<&criu::RestoreReq>,
    userns: Option<OwnedFd>,
    premade: Option<&str>,
) -> Result<Setup> {
    let privileged = spec.rootfs_mode == RootfsMode::Privileged;
    let owner = if privileged {
        (0, 0)
    } else {
        let u = userns::to_host(&spec.uid_map, 0)
            .ok_or_else(|| Error("uid_map does not map container root".into()))?;
        let g = userns::to_host(&spec.gid_map, 0)
            .ok_or_else(|| Error("gid_map does not map container root".into()))?;
        (u, g)
    };

    trace(t0, "before step 1");
    // 1. Signals: SIGCHLD (init's end) and SIGTERM/SIGINT (our control path) go to a signalfd,
    //    blocked now so none is lost; the child unblocks them before exec.
    sys::ignore_signal(libc::SIGPIPE);
    sys::ignore_signal(libc::SIGHUP);
    block_signals()?;

    trace(t0, "before step 2");
    // 2. A private mount namespace for the monitor: the staging mounts below never reach the host.
    //    Disks whose propagation follows the host's are copied on the way (see disks.rs).
    let linked = disks::staging_namespace(&spec.disks)?;

    // 3-5 and, beside them on a thread of its own, 6: the cgroup's files are written while the
    // rootfs is staged (neither needs the other; about 2 ms each, see `cargo xtask bench --only
    // breakdown`). The thread is joined before init is cloned, so the clone is single-threaded
    // as before; the children forked meanwhile (the id map's user namespace, the overlay's maker)
    // make only async-signal-safe calls.
    let (cgroup, staging) = std::thread::scope(|s| {
        let cgroup = s.spawn(|| make_cgroup(t0, spec, privileged, owner, premade));
        let staging = stage(t0, spec, &prep.stage, owner, linked, userns);
        let cgroup = cgroup.join().unwrap_or_else(|_| {
            (
                false,
                Err(Error("the thread making the cgroup panicked".into())),
            )
        });
        (cgroup, staging)
    });
    prep.cgroup = cgroup.0;
    cgroup.1?;
    let Staging {
        root,
        dev,
        staged,
        seccomp,
        label,
    } = staging?;
    if let Some(l) = &label {
        let p = run_dir.join(files::LABEL);
        replace_file(&p, l.as_bytes())?;
    }

    trace(t0, "before step 7");
    // 7. Console pty on the host devpts: the monitor keeps the master (and a slave fd, so reading the
    //    master never sees EIO); the slave becomes /dev/console and init's stdio.
    use rustix::fs::{Mode as RMode, OFlags};
    let master = rustix::pty::openpt(
        rustix::pty::OpenptFlags::RDWR
            | rustix::pty::OpenptFlags::NOCTTY
            | rustix::pty::OpenptFlags::CLOEXEC,
    )
    .map_err(|e| Error(format!("open console pty: {e}")))?;
    rustix::pty::grantpt(&master).map_err(|e| Error(format!("grantpt: {e}")))?;
    rustix::pty::unlockpt(&master).map_err(|e| Error(format!("unlockpt: {e}")))?;
    let pts = PathBuf::from(
        rustix::pty::ptsname(&master, Vec::new())
            .map_err(|e| Error(format!("ptsname: {e}")))?
            .into_string()
            .unwrap_or_default(),
    );
    let slave = rustix::fs::open(
        &pts,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        RMode::empty(),
    )
    .map_err(|e| err("open", &pts, e))?;
    rustix::fs::fchown(
        &slave,
        Some(rustix::fs::Uid::from_raw(owner.0)),
        Some(rustix::fs::Gid::from_raw(owner.1)),
    )
    .map_err(|e| err("chown", &pts, e))?;

    // A session keyring of the container's own (as LXC's `lxc.keyring.session`): init (or the
    // tree criu restores) would otherwise inherit the daemon's, and possessing a keyring grants
    // its possessor rights on every key in it, across user namespaces. Joined here as host root,
    // so it is charged to root's key quota and not to the container's uid, which all containers
    // share (200 keys by default).
    sys::join_new_session_keyring()
        .map_err(|e| Error(format!("join a new session keyring: {e}")))?;

    // 8'. A restore: criu rebuilds the namespaces and the tree from the checkpoint, as our child
    //     (--restore-sibling), in the cgroup just made, on the staged rootfs and mounts.
    if let Some(req) = restore {
        trace(t0, "before criu restore");
        let pid = criu::restore_in_monitor(
            req,
            spec,
            run_dir,
            &root,
            &dev,
            &pts,
            &slave,
            &staged,
            (!privileged).then_some(owner),
        )?;
        let kill = |e: Error| {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
            e
        };
        write_pidfile(&run_dir.join(files::INIT_PID), pid).map_err(kill)?;
        trace(t0, "restored");
        return Ok(Setup {
            init_pid: pid,
            master,
            slave,
            seccomp,
            label,
        });
    }

    trace(t0, "before step 8");
    // 8. Clone init into new namespaces (user unless privileged, pid, uts, ipc, net; mount when
    //    privileged). The cgroup namespace comes later, from the child, once we have put it into
    //    its cgroup; an unprivileged child's mount namespace later still, copied from ours once
    //    the host-side mounts are made (see init.rs step 4).
    let (psock, csock) = chan::pair()?;
    let mut flags =
        libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;
    if privileged {
        flags |= libc::CLONE_NEWNS;
    } else {
        flags |= libc::CLONE_NEWUSER;
    }
    let layout = confine::cgroup_layout();
    let ctx = init::Ctx {
        t0,
        spec,
        root: &root,
        dev: &dev,
        console: &pts,
        slave: &slave,
        seccomp: &seccomp,
        label: label.as_deref(),
        layout: &layout,
        disks: &staged,
    };
    let pid = sys::clone_fork(flags).map_err(|e| Error(format!("clone container init: {e}")))?;
    if pid == 0 {
        drop(psock);
        let e = init::child(&ctx, &csock);
        let _ = chan::send(&csock, &Msg::Err(e.0), None);
        sys::exit_now(1);
    }
    drop(csock);
    let kill_child = |e: Error| {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        e
    };

    trace(t0, "before step 9");
    // 9. Parent side: maps, cgroup, then let the child go and wait for execve (EOF) or its error.
    if !privileged {
        userns::write_maps(pid, &spec.uid_map, &spec.gid_map).map_err(kill_child)?;
    }
    trace(t0, "step 9: maps written");
    confine::cgroup_add_pid(spec.cgroup_name(), pid).map_err(kill_child)?;
    trace(t0, "step 9: in the cgroup");
    super::nics::plug_all(pid, &spec.nics).map_err(kill_child)?;
    trace(t0, "step 9: nics plugged");
    chan::send(&psock, &Msg::Go, None).map_err(kill_child)?;
    if !privileged {
        // 9b. The child is in its namespaces: the host-side mounts, in ours, then go on.
        match chan::recv(&psock).map_err(kill_child)? {
            Some((Msg::Ready, _)) => {}
            Some((Msg::Err(e), _)) => return Err(kill_child(Error(e))),
            other => {
                return Err(kill_child(Error(format!(
                    "unexpected message from init: {other:?}"
                ))))
            }
        }
        rootfs::host_side_for(pid, &ctx, owner).map_err(kill_child)?;
        trace(t0, "step 9b: host-side mounts made");
        chan::send(&psock, &Msg::Go, None).map_err(kill_child)?;
    }
    // 9c. While init makes its own mounts and execs: the monitor uses no pool's files from now
    //     on (the rootfs and the disks are mounts of their own on the staging tmpfs), and a pool
    //     deleted just after the start must not find its mount here. A child copying our
    //     namespace meanwhile needs none either.
    crate::util::drop_pool_mounts(&[run_dir, &spec.console_log]);
    trace(t0, "step 9c: pool mounts dropped");
    match chan::recv(&psock).map_err(kill_child)? {
        None => {}
        Some((Msg::Err(e), _)) => return Err(kill_child(Error(e))),
        Some((m, _)) => {
            return Err(kill_child(Error(format!(
                "unexpected message from init: {m:?}"
            ))))
        }
    }
    write_pidfile(&run_dir.join(files::INIT_PID), pid).map_err(kill_child)?;
    trace(t0, "init exec'd");
    Ok(Setup {
        init_pid: pid,
        master,
        slave,
        seccomp,
        label,
    })
}

/// Fork a waiter for each connection waiting on the exec socket (the monitor's loop reaps them).
fn serve_exec_requests(listener: &OwnedFd, t: &exec::Target<'_>) {
    use nix::sys::socket::{accept4, SockFlag};
    while let Ok(fd) = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
        // accept4 made it: nothing else owns it.
        let Ok(conn) = sys::own_inherited_fd(fd) else {
            continue;
        };
        match sys::fork() {
            Ok(0) => exec::serve_from_monitor(t, conn),
            Ok(_) => {}
            Err(e) => {
                let _ = chan::send(&conn, &Msg::Err(format!("fork an exec waiter: {e}")), None);
            }
        }
    }
}

fn monitor_sigset() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        s.add(sig);
    }
    s
}

fn block_signals() -> Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&monitor_sigset()), None)
        .map_err(|e| Error(format!("block signals: {e}")))
}

/// The most the console log holds before it is rotated: a container that writes to its
/// console without end must not fill the host's disk (LXD bounds its console log too).
const CONSOLE_LOG_MAX: u64 = 1 << 20;

/// The console log (`console.log`): appended to, and once it would pass [`CONSOLE_LOG_MAX`]
/// renamed to `console.log.1` (replacing the one before) and begun again, so it never holds
/// more than twice that.
struct ConsoleLog {
    path: PathBuf,
    file: Option<File>,
    len: u64,
}

impl ConsoleLog {
    fn open(path: &Path) -> ConsoleLog {
        let mut log = ConsoleLog {
            path: path.to_path_buf(),
            file: None,
            len: 0,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .ok();
        self.len = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }

    fn write(&mut self, data: &[u8]) {
        if self.len + data.len() as u64 > CONSOLE_LOG_MAX {
            let _ = fs::rename(&self.path, self.path.with_extension("log.1"));
            self.reopen();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(data).is_ok() {
                self.len += data.len() as u64;
            }
        }
    }
}

/// The monitor's loop: copy console output to the log, hand the console to a client, fork a
/// waiter for each exec request, react to signals, until init is reaped.
fn supervise(
    spec: &Spec,
    init_pid: i32,
    master: &OwnedFd,
    run_dir: &Path,
    target: Option<&exec::Target<'_>>,
) -> ExitInfo {
    let sfd = SignalFd::with_flags(
        &monitor_sigset(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
    .ok();
    let mut log = ConsoleLog::open(&spec.console_log);
    let mut buf = [0u8; 4096];
    let mut master_open = true;
    // The console socket (`lxc console`): one attached client owns the master until it goes.
    let console_path = run_dir.join(files::CONSOLE);
    let _ = fs::remove_file(&console_path);
    // Made 0600 from the start (the monitor has one thread, so the umask change is its own):
    // whoever connects gets the console, and the run directory is traversable.
    let old_umask = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let console = std::os::unix::net::UnixListener::bind(&console_path).ok();
    nix::sys::stat::umask(old_umask);
    if let Some(l) = &console {
        let _ = l.set_nonblocking(true);
    }
    let mut attached: Option<std::os::unix::net::UnixStream> = None;
    // Without it (no pidfd of init, or the socket could not be made: logged) exec falls back
    // to a helper process of the caller's.
    let exec_sock = target.and_then(|_| match exec::listen(run_dir) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("bivy monitor: exec socket: {e}");
            None
        }
    });
    let status = loop {
        let mut fds = Vec::with_capacity(5);
        if let Some(s) = &sfd {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if let Some(l) = &exec_sock {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        if let Some(l) = &console {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        if let Some(a) = &attached {
            fds.push(PollFd::new(a.as_fd(), PollFlags::POLLIN));
        }
        let log_master = master_open && attached.is_none();
        if log_master {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
        }
        // Without a signalfd (should not happen) fall back to polling waitpid once a second.
        let _ = poll(
            &mut fds,
            if sfd.is_some() {
                PollTimeout::NONE
            } else {
                PollTimeout::from(1000u16)
            },
        );
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if let (Some(l), Some(t)) = (&exec_sock, target) {
            serve_exec_requests(l, t);
        }
        if let Some(l) = &console {
            if let Ok((conn, _)) = l.accept() {
                if let Ok(fd) = conn.try_clone().map(OwnedFd::from) {
                    if attached.is_some() {
                        let _ = chan::send(
                            &fd,
                            &chan::Msg::Err("the console is already attached".into()),
                            None,
                        );
                    } else if chan::send(&fd, &chan::Msg::PtyMaster, Some(master.as_raw_fd()))
                        .is_ok()
                        && conn.set_nonblocking(true).is_ok()
                    {
                        attached = Some(conn);
                    }
                }
            }
        }
        if let Some(a) = &mut attached {
            let mut b = [0u8; 64];
            match a.read(&mut b) {
                Ok(0) => attached = None,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => attached = None,
                _ => {}
            }
        }
        if log_master && ready.last() == Some(&true) {
            match rustix::io::read(master, &mut buf) {
                Ok(n) if n > 0 => log.write(&buf[..n]),
                Ok(_) => master_open = false,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(_) => master_open = false,
            }
        }
        if let Some(s) = &sfd {
            while let Ok(Some(si)) = s.read_signal() {
                if si.ssi_signo == libc::SIGTERM as u32 || si.ssi_signo == libc::SIGINT as u32 {
                    let req = run_dir.join(files::STOP_REQUEST);
                    if !req.exists() {
                        let _ = replace_file(&req, b"force");
                    }
                    let _ = nix::sys::signal::kill(Pid::from_raw(init_pid), Signal::SIGKILL);
                }
            }
        }
        let mut done = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) if p.as_raw() == init_pid => {
                    done = Some((c, "exited".to_string()))
                }
                Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == init_pid => {
                    done = Some((128 + s as i32, format!("killed by signal {}", s as i32)))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some(d) = done {
            break d;
        }
    };
    let _ = fs::remove_file(&console_path);
    if exec_sock.is_some() {
        let _ = fs::remove_file(run_dir.join(files::EXEC_SOCK));
    }
    // Drain what init wrote last.
    if master_open {
        let _ = rustix::io::ioctl_fionbio(master, true);
        while let Ok(n) = rustix::io::read(master, &mut buf) {
            if n == 0 {
                break;
            }
            log.write(&buf[..n]);
        }
    }
    let mut requested = String::new();
    let _ = File::open(run_dir.join(files::STOP_REQUEST))
        .and_then(|mut f| f.read_to_string(&mut requested));
    let reason = match requested.trim() {
        "clean" => format!("stopped by request ({})", status.1),
        "force" => format!("killed by request ({})", status.1),
        "checkpoint" => "checkpointed (stateful stop)".to_string(),
        _ => status.1,
    };
    ExitInfo {
        code: status.0,
        reason,
    }
}
