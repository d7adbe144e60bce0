//! CRIU checkpoints of a container: the `criu` program found at run time, its dump (from the
//! caller, in the host's namespaces) and its restore (from the container's new monitor, in the
//! monitor's private mount namespace, so the restored tree is the monitor's child again).
//!
//! CRIU is an external program (there is no kernel interface to drive instead): `$BIVY_CRIU`, else
//! `criu` on `PATH`, checked once per process (`criu --version` at least 4.0, then `criu check`).
//! Debian 12's criu 3.17 cannot run on recent kernels; `shared/tools/criu/install-criu.sh` (copied
//! as `.ci/install-criu.sh`) installs 4.1.1 privately.
//!
//! What a container checkpoint needs (FINDINGS of the CRIU tool):
//! - the dump locks the network with nftables (`--network-lock nftables`; no iptables here);
//! - every mount bound in from outside the container's mount namespace is declared external on
//!   dump and given a new source on restore: the device nodes and `/dev/console` (from the
//!   monitor's staging tmpfs and the host's devpts) and the disk devices (staged by the monitor);
//! - the console is a pty of the host's devpts whose master the monitor holds: declared an
//!   external tty on dump, and the new monitor's slave is handed in with `--inherit-fd`;
//! - the restore runs with `--root` on the staged (idmapped) rootfs, `--restore-sibling` so the
//!   restored init is the monitor's child, into the cgroup the monitor made (same name, so
//!   CRIU's paths hold; the empty sub-cgroups it does not restore are made first).
//!
//! What the caller sees as the images directory holds CRIU's images plus [`META`], the list of
//! externals the restore must provide. CRIU's logs are written where the caller says and kept.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{control, files, helper, monitor, Error, Result, Spec};

/// The description of a checkpoint bivy keeps next to CRIU's images.
pub const META: &str = "bivy-checkpoint.json";

/// The lowest CRIU version that works here (3.17 fails on kernel 6.x: "Unexpected rt vDSO area").
const MIN_VERSION: (u32, u32) = (4, 0);

/// A CRIU that passed the checks.
#[derive(Debug, Clone)]
pub struct Criu {
    pub path: PathBuf,
    pub version: String,
}

/// Where CRIU is: `$BIVY_CRIU`, else the first `criu` on `PATH`.
fn locate() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BIVY_CRIU").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match fs::metadata(&p) {
            Ok(m) if m.is_file() && m.mode() & 0o111 != 0 => Ok(p),
            Ok(_) => Err(Error(format!(
                "CRIU not usable: $BIVY_CRIU={} is not an executable file",
                p.display()
            ))),
            Err(e) => Err(Error(format!(
                "CRIU not found: $BIVY_CRIU={}: {e} (install CRIU 4.x, e.g. with .ci/install-criu.sh DIR, and point $BIVY_CRIU at DIR/bin/criu)",
                p.display()
            ))),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("criu");
        if fs::metadata(&p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0) {
            return Ok(p);
        }
    }
    Err(Error(
        "CRIU not found: no criu on PATH and $BIVY_CRIU unset (install CRIU 4.x, e.g. with .ci/install-criu.sh DIR, and put DIR/bin on PATH or set $BIVY_CRIU)".into(),
    ))
}

/// `major.minor` of `criu --version` output ("Version: 4.1.1").
fn parse_version(out: &str) -> Option<(String, (u32, u32))> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?;
    let v = line.trim().to_string();
    let mut it = v.split('.');
    let major = it.next()?.trim().parse().ok()?;
    let minor = it
        .next()
        .and_then(|m| {
            m.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Some((v, (major, minor)))
}

/// The last lines of a CRIU log worth showing: its errors (without the iptables probing noise of
/// hosts without iptables), else its last lines.
pub fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let noise = |l: &str| {
        l.contains("iptables")
            || l.contains("ip6tables")
            || l.contains("RLIMIT_NOFILE")
            || l.contains("execvp(\"ip")
            || l.contains("cgroupd: recv req error")
    };
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error (") && !noise(l))
        .collect();
    let pick: Vec<&str> = if errors.is_empty() {
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(5)..].to_vec()
    } else {
        errors[errors.len().saturating_sub(6)..].to_vec()
    };
    pick.join("\n")
}

/// Run `criu ARGS` with a bound on its run time; its stdout and stderr are returned.
fn run(criu: &Path, args: &[String], limit: Duration) -> Result<(bool, String)> {
    let mut c = Command::new(criu);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c
        .spawn()
        .map_err(|e| Error(format!("running {}: {e}", criu.display())))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((out.status.success(), text))
        }
        Ok(Err(e)) => Err(Error(format!("running {}: {e}", criu.display()))),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(Error(format!(
                "{} {} did not finish within {} s (killed)",
                criu.display(),
                args.first().map(String::as_str).unwrap_or(""),
                limit.as_secs()
            )))
        }
    }
}

/// CRIU, found and checked (once per process: a success is remembered, a failure is checked
/// again next time, so installing CRIU needs no daemon restart).
pub fn find() -> Result<&'static Criu> {
    static FOUND: OnceLock<Criu> = OnceLock::new();
    if let Some(c) = FOUND.get() {
        return Ok(c);
    }
    let path = locate()?;
    let (ok, out) = run(&path, &["--version".into()], Duration::from_secs(30))?;
    let parsed = parse_version(&out);
    let Some((version, (major, minor))) = parsed.filter(|_| ok) else {
        return Err(Error(format!(
            "CRIU at {} does not run: `criu --version` said {:?}",
            path.display(),
            out.trim()
        )));
    };
    if (major, minor) < MIN_VERSION {
        return Err(Error(format!(
            "CRIU at {} is version {version}; bivy needs {}.{} or newer (older ones fail on this kernel)",
            path.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        )));
    }
    let (ok, out) = run(&path, &["check".into()], Duration::from_secs(60))?;
    if !ok {
        let tail: Vec<&str> = out.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error(format!(
            "`{} check` failed (this kernel or CRIU lacks what checkpoints need): {}",
            path.display(),
            tail.join("\n")
        )));
    }
    let _ = FOUND.set(Criu { path, version });
    Ok(FOUND.get().expect("just set"))
}

/// One mount bound in from outside the container, as recorded at dump time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct External {
    /// The mount point inside the container.
    pub path: String,
    /// CRIU's key for it (`dev-null`, `dev-console`, `disk0`, ...).
    pub key: String,
}

/// What bivy records next to CRIU's images ([`META`]).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Meta {
    pub criu_version: String,
    /// `rdev:dev` (hex) of the console pty slave at dump time (CRIU's external tty id).
    pub console_tty: Option<String>,
    pub externals: Vec<External>,
    /// The container's cgroup name (below `bivy/`): CRIU puts the tasks back into the same one.
    pub cgroup: String,
    /// The sub-cgroups the container had made (host paths). CRIU restores only those that hold
    /// tasks, but systemd watches empty ones too (inotify on `cgroup.events`): they are made
    /// again before the restore.
    #[serde(default)]
    pub sub_cgroups: Vec<PathBuf>,
    /// The container's uid and gid maps at dump time: CRIU restores its user namespace with
    /// them, so the instance must still have them (its rootfs is idmapped with its own map).
    /// None in checkpoints made before bivy recorded them.
    #[serde(default)]
    pub id_maps: Option<(Vec<super::IdMapEntry>, Vec<super::IdMapEntry>)>,
}

/// bivy's description of the checkpoint in `images` ([`META`]).
fn read_meta(images: &Path) -> Result<Meta> {
    let mp = images.join(META);
    fs::read(&mp)
        .map_err(|e| Error(format!("read {}: {e}", mp.display())))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| Error(format!("parse {}: {e}", mp.display())))
        })
}

/// Refuse to restore the checkpoint in `images` into a container started with `spec` when its
/// id maps differ from the ones it was dumped with (restored processes would own nothing in
/// the rootfs).
pub fn check_maps(spec: &Spec, images: &Path) -> Result<()> {
    let meta = read_meta(images)?;
    let show = |m: &[super::IdMapEntry]| {
        m.iter()
            .map(|e| format!("{}:{}:{}", e.nsid, e.hostid, e.count))
            .collect::<Vec<_>>()
            .join(",")
    };
    match meta.id_maps {
        Some((u, g)) if u != spec.uid_map || g != spec.gid_map => Err(Error(format!(
            "the saved state of {} was taken with uid map [{}] and gid map [{}], but the instance \
             now has [{}] and [{}]: a checkpoint restores its user namespace as it was (start it \
             with --stateless, or give it its old map back)",
            spec.name,
            show(&u),
            show(&g),
            show(&spec.uid_map),
            show(&spec.gid_map)
        ))),
        _ => Ok(()),
    }
}

/// The request the caller leaves in the run directory for a monitor that restores.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RestoreReq {
    pub criu: PathBuf,
    pub images: PathBuf,
    pub log: PathBuf,
}

/// `path` (a cgroup directory below `bivy/<old>` in some hierarchy) below `bivy/<new>` instead.
fn rebase_cgroup(path: &Path, old: &str, new: &str) -> PathBuf {
    let parts: Vec<&std::ffi::OsStr> = path.iter().collect();
    let mut out = PathBuf::new();
    let mut i = 0;
    while i < parts.len() {
        out.push(parts[i]);
        if parts[i] == "bivy" && parts.get(i + 1).is_some_and(|n| *n == old) {
            out.push(new);
            i += 1;
        }
        i += 1;
    }
    out
}

/// The external mounts of a running container: its device nodes and console (bound from the
/// monitor's staging tmpfs and the host's devpts), its disk devices and its unix devices' nodes.
fn externals(spec: &Spec, mountinfo: &str) -> Vec<External> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = crate::util::unescape_mountinfo(mp);
        if out.iter().any(|e: &External| e.path == mp) {
            continue;
        }
        let key = if let Some(node) = mp
            .strip_prefix("/dev/")
            .filter(|n| *n == "console" || monitor::DEV_NODES.iter().any(|(name, _, _)| name == n))
        {
            Some(format!("dev-{node}"))
        } else {
            spec.disks
                .iter()
                .position(|d| d.path == mp)
                .map(|i| format!("disk{i}"))
                .or_else(|| {
                    spec.unix_devices
                        .iter()
                        .position(|u| u.path == mp)
                        .map(|i| format!("unix{i}"))
                })
        };
        if let Some(key) = key {
            out.push(External { path: mp, key });
        }
    }
    out
}

/// How many exec waiters (processes named `bivy-exec`, each serving one session) are in the
/// container's cgroup.
fn exec_sessions(cgroup: &str) -> usize {
    super::confine::cgroup_pids(cgroup)
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bivy-exec")
        })
        .count()
}

/// Dump the running container of `run_dir` into `images` (which must exist and be empty).
/// `leave_running`: it keeps running (a snapshot); else CRIU kills it once the dump is complete
/// and this returns after its monitor has recorded the end. A failed dump leaves the container
/// running as it was (CRIU resumes the tasks). CRIU's log goes to `log`; its errors are in the
/// error returned.
pub fn dump(run_dir: &Path, images: &Path, log: &Path, leave_running: bool) -> Result<()> {
    let criu = find()?;
    let spec = control::running_spec(run_dir)?;
    let (init_pid, _init_fd) = helper::live_pidfd(&run_dir.join(files::INIT_PID))
        .ok_or_else(|| Error(format!("container {} is not running", spec.name)))?;
    let Some((_, monitor_fd)) = helper::live_pidfd(&run_dir.join(files::MONITOR_PID)) else {
        return Err(Error(format!("container {} is not running", spec.name)));
    };
    if super::confine::cgroup_is_frozen(spec.cgroup_name()) {
        return Err(Error(format!(
            "container {} is frozen (paused): unpause it before a checkpoint",
            spec.name
        )));
    }
    // A command of an exec session still running hangs from its waiter (outside the
    // container), not from init: CRIU dumps init's tree without it, and a stop then kills it.
    let sessions = exec_sessions(spec.cgroup_name());
    if sessions > 0 {
        return Err(Error(format!(
            "{sessions} exec session(s) still running in container {}: their commands are not \
             in the checkpoint of init's processes and would be lost; end them first (a \
             command started in the background with setsid, whose session has ended, is kept)",
            spec.name
        )));
    }
    let mi_path = format!("/proc/{init_pid}/mountinfo");
    let mountinfo =
        fs::read_to_string(&mi_path).map_err(|e| Error(format!("read {mi_path}: {e}")))?;
    let ext = externals(&spec, &mountinfo);
    let console = format!("/proc/{init_pid}/root/dev/console");
    let console_tty = fs::metadata(&console)
        .ok()
        .filter(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_char_device()
        })
        .map(|m| format!("{:x}:{:x}", m.rdev(), m.dev()));
    let meta = Meta {
        criu_version: criu.version.clone(),
        console_tty: console_tty.clone(),
        externals: ext.clone(),
        cgroup: spec.cgroup_name().to_string(),
        sub_cgroups: super::confine::cgroup_subdirs(spec.cgroup_name())?,
        id_maps: Some((spec.uid_map.clone(), spec.gid_map.clone())),
    };
    let mp = images.join(META);
    let js = serde_json::to_vec_pretty(&meta).map_err(|e| Error(format!("encode {META}: {e}")))?;
    crate::util::fs::atomic_write_mode(&mp, &js, 0o600)
        .map_err(|e| Error(format!("write {}: {e}", mp.display())))?;

    let mut args: Vec<String> = vec![
        "dump".into(),
        "--tree".into(),
        init_pid.to_string(),
        "--images-dir".into(),
        images.display().to_string(),
        "--log-file".into(),
        log.display().to_string(),
        "-v4".into(),
        "--network-lock".into(),
        "nftables".into(),
        "--file-locks".into(),
    ];
    for e in &ext {
        args.push("--external".into());
        args.push(format!("mnt[{}]:{}", e.path, e.key));
    }
    if let Some(t) = &console_tty {
        args.push("--external".into());
        args.push(format!("tty[{t}]"));
    }
    let req = run_dir.join(files::STOP_REQUEST);
    if leave_running {
        args.push("--leave-running".into());
    } else {
        // The monitor records the end as a checkpoint, not a crash.
        fs::write(&req, b"checkpoint")
            .map_err(|e| Error(format!("write {}: {e}", req.display())))?;
    }
    let res = run(&criu.path, &args, Duration::from_secs(600));
    let ok = matches!(res, Ok((true, _)));
    if !ok {
        if !leave_running && helper::live_pid(&run_dir.join(files::INIT_PID)).is_some() {
            let _ = fs::remove_file(&req);
        }
        let why = match res {
            Err(e) => e.0,
            Ok((_, out)) => {
                let t = log_tail(log);
                if t.is_empty() {
                    out.trim().to_string()
                } else {
                    t
                }
            }
        };
        return Err(Error(format!(
            "checkpoint of {} failed (CRIU's log: {}):\n{why}",
            spec.name,
            log.display()
        )));
    }
    if !leave_running && !helper::wait_pidfd(&monitor_fd, Duration::from_secs(30)) {
        return Err(Error(format!(
            "checkpoint of {} written, but its monitor did not exit",
            spec.name
        )));
    }
    Ok(())
}

/// In the restoring monitor (its private mount namespace, staging done, cgroup made, console pty
/// open): run `criu restore` so that the restored init is our child. Returns its host pid.
#[allow(clippy::too_many_arguments)]
pub(crate) fn restore_in_monitor(
    req: &RestoreReq,
    spec: &Spec,
    run_dir: &Path,
    root: &Path,
    dev: &Path,
    console: &Path,
    slave: &OwnedFd,
    staged: &[super::disks::Staged],
    owner: Option<(u32, u32)>,
) -> Result<i32> {
    let meta = read_meta(&req.images)?;
    // Renamed since the dump: the tree goes into the new name's cgroup (CRIU's root cgroup
    // replaced), its sub-cgroups made there.
    let renamed = meta.cgroup != spec.cgroup_name();
    let subs: Vec<PathBuf> = meta
        .sub_cgroups
        .iter()
        .map(|p| rebase_cgroup(p, &meta.cgroup, spec.cgroup_name()))
        .collect();
    super::confine::cgroup_make_subdirs(spec.cgroup_name(), &subs, owner)?;
    // The restored tasks open some images themselves (through CRIU's directory fd), partly
    // before their credentials are set up in their user namespace: the directory must be
    // searchable by anyone (CRIU makes the images 0644). The volume above stays closed.
    fs::set_permissions(&req.images, fs::Permissions::from_mode(0o711))
        .map_err(|e| Error(format!("chmod {}: {e}", req.images.display())))?;
    let pidfile = run_dir.join("criu-restore.pid");
    let _ = fs::remove_file(&pidfile);
    let mut args: Vec<String> = vec![
        "restore".into(),
        "--images-dir".into(),
        req.images.display().to_string(),
        "--log-file".into(),
        req.log.display().to_string(),
        "-v4".into(),
        "--root".into(),
        root.display().to_string(),
        "--restore-detached".into(),
        "--restore-sibling".into(),
        "--pidfile".into(),
        pidfile.display().to_string(),
        "--file-locks".into(),
    ];
    if renamed {
        args.push("--cgroup-root".into());
        args.push(format!("/bivy/{}", spec.cgroup_name()));
    }
    for e in &meta.externals {
        let src = if e.key == "dev-console" {
            console.to_path_buf()
        } else if let Some(node) = e.key.strip_prefix("dev-") {
            dev.join(node)
        } else {
            staged
                .iter()
                .find(|s| s.path == e.path)
                .map(|s| s.staged.clone())
                .ok_or_else(|| {
                    Error(format!(
                        "the checkpoint has a disk device at {} that the instance no longer has (restore needs the same disk devices)",
                        e.path
                    ))
                })?
        };
        args.push("--external".into());
        args.push(format!("mnt[{}]:{}", e.key, src.display()));
    }
    // The console slave, inherited by criu under its number, stands for the dumped one.
    let inherited = match &meta.console_tty {
        Some(t) => {
            let fd = helper::dup_inheritable(slave)?;
            args.push("--inherit-fd".into());
            args.push(format!("fd[{}]:tty[{t}]", fd.as_raw_fd()));
            Some(fd)
        }
        None => None,
    };
    let res = run(&req.criu, &args, Duration::from_secs(600));
    drop(inherited);
    match res {
        Ok((true, _)) => {}
        Ok((false, out)) => {
            let t = log_tail(&req.log);
            return Err(Error(format!(
                "restore of {} failed (CRIU's log: {}):\n{}",
                spec.name,
                req.log.display(),
                if t.is_empty() {
                    out.trim().to_string()
                } else {
                    t
                }
            )));
        }
        Err(e) => return Err(e),
    }
    let pid: i32 = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            Error(format!(
                "restore of {}: CRIU wrote no pid to {}",
                spec.name,
                pidfile.display()
            ))
        })?;
    let _ = fs::remove_file(&pidfile);
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("Version: 4.1.1\nGitID: v4.1.1\n"),
            Some(("4.1.1".into(), (4, 1)))
        );
        assert_eq!(
            parse_version("Version: 3.17.1\n"),
            Some(("3.17.1".into(), (3, 17)))
        );
        assert_eq!(parse_version("Version: 4\n"), Some(("4".into(), (4, 0))));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn log_tail_shows_the_errors_without_the_noise() {
        let dir = std::env::temp_dir().join(format!("bivy-criu-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("dump.log");
        fs::write(
            &p,
            "(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self\n\
             (00.02) Dumping ghost file for fd 13\n\
             Error (criu/util.c:641): execvp(\"iptables-save\", ...) failed\n\
             (00.03) Error (criu/files-reg.c:1031): Can't dump ghost file /tmp/big of 2097152 size\n\
             (00.04) Error (criu/cr-dump.c:2111): Dumping FAILED.\n",
        )
        .unwrap();
        assert_eq!(
            log_tail(&p),
            "(00.03) Error (criu/files-reg.c:1031): Can't dump ghost file /tmp/big of 2097152 size\n\
             (00.04) Error (criu/cr-dump.c:2111): Dumping FAILED."
        );
        // No error line: the last lines.
        fs::write(&p, "a\nb\nc\nd\ne\nf\n").unwrap();
        assert_eq!(log_tail(&p), "b\nc\nd\ne\nf");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_checkpoint_restores_only_into_the_maps_it_was_taken_with() {
        let map = |host: u32| serde_json::json!([{"nsid": 0, "hostid": host, "count": 65536}]);
        let spec = |host: u32| -> Spec {
            serde_json::from_value(serde_json::json!({
                "name": "c", "rootfs": "/r", "rootfs_mode": "Idmapped",
                "uid_map": map(host), "gid_map": map(host),
                "hostname": "c", "init": ["/sbin/init"], "env": [], "limits": {
                    "memory": null, "memory_soft": false, "memory_swap": false, "cpuset": null,
                    "cpu_quota": null, "cpu_shares": null, "pids": null},
                "nesting": false, "seccomp_policy": "", "apparmor_raw": "", "console_log": "/l"
            }))
            .unwrap()
        };
        let dir = std::env::temp_dir().join(format!("bivy-criu-maps-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let meta = |maps: serde_json::Value| {
            let m = serde_json::json!({"criu_version": "4.1.1", "console_tty": null,
                "externals": [], "cgroup": "c", "id_maps": maps});
            fs::write(dir.join(META), m.to_string()).unwrap();
        };
        meta(serde_json::json!([map(1000000), map(1000000)]));
        assert!(check_maps(&spec(1000000), &dir).is_ok());
        let e = check_maps(&spec(1065536), &dir).unwrap_err().0;
        assert!(
            e.contains("uid map [0:1000000:65536]") && e.contains("[0:1065536:65536]"),
            "{e}"
        );
        // A checkpoint from before the maps were recorded is taken as it is.
        meta(serde_json::Value::Null);
        assert!(check_maps(&spec(1065536), &dir).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn external_mounts_of_a_container() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "name": "c", "rootfs": "/r", "rootfs_mode": "Idmapped", "uid_map": [], "gid_map": [],
            "hostname": "c", "init": ["/sbin/init"], "env": [], "limits": {
                "memory": null, "memory_soft": false, "memory_swap": false, "cpuset": null,
                "cpu_quota": null, "cpu_shares": null, "pids": null},
            "nesting": false, "seccomp_policy": "", "apparmor_raw": "", "console_log": "/l",
            "disks": [{"name": "d", "source": "/srv", "path": "/mnt/data", "readonly": false,
                "idmap": false, "recursive": false, "required": true}]
        }))
        .unwrap();
        let mi = "92 68 254:0 /r / rw - ext4 /dev/vda rw\n\
                  108 107 0:40 /dev/null /dev/null rw - tmpfs tmpfs rw\n\
                  115 107 0:26 /0 /dev/console rw - devpts devpts rw\n\
                  114 107 0:46 / /dev/pts rw - devpts devpts rw\n\
                  118 93 0:40 /dev/null /proc/keys ro - tmpfs tmpfs rw\n\
                  130 92 254:0 /srv /mnt/data rw - ext4 /dev/vda rw\n";
        let e = externals(&spec, mi);
        let keys: Vec<(&str, &str)> = e
            .iter()
            .map(|x| (x.path.as_str(), x.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("/dev/null", "dev-null"),
                ("/dev/console", "dev-console"),
                ("/mnt/data", "disk0")
            ]
        );
    }
}
