//! exec into a running container: the caller side (`exec`, `resize_pty`) and the `bivy __exec`
//! helper, a child of the caller spawned from the sealed binary. The helper joins the container's
//! cgroup, then all of init's namespaces through a pidfd, forks (to really be in the pid namespace),
//! and the grandchild applies the same confinement as init and execs the command. The helper stays
//! outside as the waiter: it forwards signals to the command and exits with its status.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use super::chan::{self, Msg};
use super::control::read_spec;
use super::helper::{dup_inheritable, helper_command, live_pidfd};
use super::{
    confine, files, init, Error, ExecProcess, ExecSpec, ExecStdio, Result, RootfsMode, State,
};
use crate::sys;

/// [`ExecSpec`] as it travels to the helper (JSON on its command line).
#[derive(Serialize, Deserialize)]
struct Req {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    uid: u32,
    gid: u32,
    pty: Option<(u16, u16)>,
}

/// Set the window size of a pty (master or slave).
pub fn resize_pty(master: &OwnedFd, w: u16, h: u16) -> Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: h,
        ws_col: w,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, ws).map_err(|e| Error(format!("resize pty: {e}")))
}

pub fn exec(run_dir: &Path, spec: &ExecSpec, stdio: Option<ExecStdio>) -> Result<ExecProcess> {
    match super::state(run_dir)? {
        State::Running { frozen: false, .. } => {}
        State::Running { frozen: true, .. } => {
            return Err(Error(format!(
                "container in {} is frozen",
                run_dir.display()
            )));
        }
        State::Stopped { .. } => {
            return Err(Error(format!(
                "container in {} is not running",
                run_dir.display()
            )))
        }
    }
    if spec.argv.is_empty() {
        return Err(Error("exec: empty command".into()));
    }
    let req = Req {
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        uid: spec.uid,
        gid: spec.gid,
        pty: spec.pty,
    };
    let js = serde_json::to_string(&req).map_err(|e| Error(format!("encode exec request: {e}")))?;
    let (ours, theirs) = chan::pair()?;
    // dup() gives a copy without CLOEXEC; the original is closed now so only the child holds an end.
    let inherit = dup_inheritable(&theirs)?;
    drop(theirs);
    let mut cmd = helper_command("bivy-exec")?;
    cmd.arg("__exec")
        .arg(run_dir)
        .arg(inherit.as_raw_fd().to_string());
    match (spec.pty, stdio) {
        (Some(_), _) => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        (None, Some(s)) => {
            cmd.stdin(Stdio::from(s.stdin))
                .stdout(Stdio::from(s.stdout))
                .stderr(Stdio::from(s.stderr));
        }
        (None, None) => {}
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error(format!("spawn exec helper: {e}")))?;
    drop(cmd);
    drop(inherit);
    let pid = child.id() as i32;
    let reap = |e: Error| {
        let _ = waitpid(Pid::from_raw(pid), None);
        e
    };
    chan::send(&ours, &Msg::Request(js), None).map_err(reap)?;
    let mut pty_master = None;
    loop {
        match chan::recv(&ours).map_err(reap)? {
            None => break,
            Some((Msg::PtyMaster, Some(fd))) => pty_master = Some(fd),
            Some((Msg::Err(e), _)) => return Err(reap(Error(e))),
            Some((m, _)) => {
                return Err(reap(Error(format!(
                    "unexpected message from exec helper: {m:?}"
                ))))
            }
        }
    }
    if spec.pty.is_some() && pty_master.is_none() {
        return Err(reap(Error(
            "exec helper did not send the pty master".into(),
        )));
    }
    Ok(ExecProcess { pid, pty_master })
}

/// Signals the helper forwards to the command.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGALRM,
    Signal::SIGPWR,
];

/// `bivy __exec <run_dir> <sock_fd>`; the request arrives on the socket.
pub fn helper(args: &[String]) -> ! {
    let (Some(run_dir), Some(fd)) = (
        args.first(),
        args.get(1).and_then(|f| f.parse::<i32>().ok()),
    ) else {
        eprintln!("usage: bivy __exec RUN_DIR SOCK_FD");
        std::process::exit(2)
    };
    if fd < 3 {
        eprintln!("bivy exec: socket fd {fd} collides with stdio");
        std::process::exit(2)
    }
    let _ = sys::close_range(3, fd as u32 - 1, false);
    let _ = sys::close_range_from(fd as u32 + 1, false);
    let sock = match sys::own_inherited_fd(fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bivy exec: socket fd {fd}: {e}");
            std::process::exit(2)
        }
    };
    let _ = nix::sys::prctl::set_name(c"bivy-exec");
    let js = match chan::recv(&sock) {
        Ok(Some((Msg::Request(js), _))) => js,
        other => {
            eprintln!("bivy exec: no request: {other:?}");
            std::process::exit(2)
        }
    };
    match run(Path::new(run_dir), &js, sock) {
        Ok(code) => std::process::exit(code),
        Err((sock, e)) => {
            let _ = chan::send(&sock, &Msg::Err(e.0), None);
            std::process::exit(126)
        }
    }
}

fn run(run_dir: &Path, js: &str, sock: OwnedFd) -> std::result::Result<i32, (OwnedFd, Error)> {
    macro_rules! t {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((sock, e)),
            }
        };
    }
    let req: Req = t!(serde_json::from_slice(js.as_bytes())
        .map_err(|e| Error(format!("parse exec request: {e}"))));
    let spec = t!(read_spec(run_dir));
    let privileged = spec.rootfs_mode == RootfsMode::Privileged;
    let label = std::fs::read_to_string(run_dir.join(files::LABEL)).ok();
    let seccomp = t!(confine::seccomp_compile(&spec.seccomp_policy));
    // 1. Find init, pinned by a pidfd (verified against its recorded start time).
    let Some((init_pid, pidfd)) = live_pidfd(&run_dir.join(files::INIT_PID)) else {
        return Err((
            sock,
            Error(format!("container {} is not running", spec.name)),
        ));
    };
    // 1b. A session keyring of the command's own, not the daemon's (see the monitor's step 8).
    t!(sys::join_new_session_keyring()
        .map_err(|e| Error(format!("join a new session keyring: {e}"))));
    // 2. Join the cgroup while the host's cgroupfs is still visible.
    t!(confine::cgroup_add_pid(
        spec.cgroup_name(),
        std::process::id() as i32
    ));
    // 3. All of init's namespaces at once (setns with a pidfd is atomic).
    use nix::sched::CloneFlags as C;
    let mut ns = C::CLONE_NEWNS
        | C::CLONE_NEWPID
        | C::CLONE_NEWUTS
        | C::CLONE_NEWIPC
        | C::CLONE_NEWNET
        | C::CLONE_NEWCGROUP;
    if !privileged {
        ns |= C::CLONE_NEWUSER;
    }
    t!(nix::sched::setns(pidfd.as_fd(), ns)
        .map_err(|e| Error(format!("setns into init {init_pid}: {e}"))));
    drop(pidfd);
    // 4. Block the signals we forward (and SIGCHLD) before forking, so none is lost.
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    t!(
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(|e| Error(format!("block signals: {e}")))
    );
    // 5. Fork: the child is in the container's pid namespace.
    let pid = t!(sys::fork().map_err(|e| Error(format!("fork: {e}"))));
    if pid == 0 {
        let e = child(&req, &sock, label.as_deref(), &seccomp);
        let _ = chan::send(&sock, &Msg::Err(e.0), None);
        sys::exit_now(127);
    }
    drop(sock);
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).ok();
    loop {
        if let Some(s) = &sfd {
            match s.read_signal() {
                Ok(Some(si)) if si.ssi_signo != libc::SIGCHLD as u32 => {
                    let _ = nix::sys::signal::kill(
                        Pid::from_raw(pid),
                        Signal::try_from(si.ssi_signo as i32).ok(),
                    );
                    continue;
                }
                _ => {}
            }
        }
        match waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Ok(126),
        }
        if sfd.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn child(req: &Req, sock: &OwnedFd, label: Option<&str>, seccomp: &confine::Seccomp) -> Error {
    let e = |step: &str, x: &dyn std::fmt::Display| Error(format!("{step}: {x}"));
    // 6. pty: allocated in the container's devpts (its /dev/ptmx, we are in its mount namespace),
    //    the master goes back to the caller.
    if let Some((w, h)) = req.pty {
        use rustix::fs::{Mode, OFlags};
        let master = match rustix::fs::open(
            "/dev/ptmx",
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(m) => m,
            Err(x) => return e("open container /dev/ptmx", &x),
        };
        if let Err(x) = rustix::pty::unlockpt(&master) {
            return e("unlockpt", &x);
        }
        let slave = match rustix::pty::ioctl_tiocgptpeer(
            &master,
            rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY,
        ) {
            Ok(s) => s,
            Err(x) => return e("open pty slave", &x),
        };
        let _ = resize_pty(&master, w, h);
        if let Err(x) = chan::send(sock, &Msg::PtyMaster, Some(master.as_raw_fd())) {
            return x;
        }
        drop(master);
        if let Err(x) = nix::unistd::setsid() {
            return e("setsid", &x);
        }
        if let Err(x) = rustix::process::ioctl_tiocsctty(&slave) {
            return e("TIOCSCTTY", &x);
        }
        for r in [
            nix::unistd::dup2_stdin(&slave),
            nix::unistd::dup2_stdout(&slave),
            nix::unistd::dup2_stderr(&slave),
        ] {
            if let Err(x) = r {
                return e("dup2 pty", &x);
            }
        }
    }
    // 7. Working directory, confinement as init's, then the user's ids, then exec.
    if let Err(x) = nix::unistd::chdir(req.cwd.as_str()) {
        return e(&format!("chdir {}", req.cwd), &x);
    }
    if let Err(x) = init::drop_caps() {
        return x;
    }
    if let Some(l) = label {
        if let Err(x) = confine::apparmor_set_exec_label(l.trim()) {
            return x;
        }
    }
    let argv = match init::cstrings(&req.argv) {
        Ok(a) => a,
        Err(x) => return x,
    };
    let env = match init::cstrings(
        &req.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
    ) {
        Ok(a) => a,
        Err(x) => return x,
    };
    let path = req
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let prog = resolve(&req.argv[0], path);
    let prog = match CString::new(prog.as_os_str().as_encoded_bytes()) {
        Ok(p) => p,
        Err(x) => return e("program path", &x),
    };
    // seccomp needs CAP_SYS_ADMIN (no no_new_privs), so it comes before switching to the user's ids;
    // the default policy does not touch set*id or execve.
    if let Err(x) = confine::seccomp_load(seccomp) {
        return x;
    }
    if let Err(x) = nix::unistd::setgroups(&[]) {
        return e("setgroups", &x);
    }
    if let Err(x) = nix::unistd::setresgid(
        Gid::from_raw(req.gid),
        Gid::from_raw(req.gid),
        Gid::from_raw(req.gid),
    ) {
        return e(&format!("setresgid({})", req.gid), &x);
    }
    if let Err(x) = nix::unistd::setresuid(
        Uid::from_raw(req.uid),
        Uid::from_raw(req.uid),
        Uid::from_raw(req.uid),
    ) {
        return e(&format!("setresuid({})", req.uid), &x);
    }
    sys::reset_signals();
    if let Err(x) = sys::close_range_from(3, true) {
        return e("close_range", &x);
    }
    let Err(x) = nix::unistd::execve(&prog, &argv, &env);
    e(&format!("exec {}", req.argv[0]), &x)
}

/// `argv[0]` resolved through `PATH` inside the container (we are in its mount namespace).
fn resolve(arg0: &str, path: &str) -> PathBuf {
    if arg0.contains('/') {
        return PathBuf::from(arg0);
    }
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(arg0))
}
