//! exec into a running container. The caller's side ([`exec`], [`ExecProcess`], [`resize_pty`])
//! asks the container's monitor on `exec.sock` in the run directory, and the monitor forks a
//! waiter for the request ([`serve_from_monitor`]): no process is made from the binary for an
//! exec. A monitor started by an older bivy has no such socket; a `bivy __exec` helper, a child
//! of the caller spawned from the sealed binary, is the waiter then ([`helper`]).
//!
//! The waiter joins the container's cgroup, then all of init's namespaces through a pidfd, and
//! forks (to really be in the pid namespace); the grandchild applies the same confinement as
//! init and execs the command. The waiter stays outside: it tells the caller the command runs
//! (with a pidfd of it: the caller signals the command directly) and then its exit status.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use super::chan::{self, Msg};
use super::control::read_spec;
use super::helper::{
    dup_inheritable, helper_command, inherited_socket, live_pidfd, spawn_with_socket,
};
use super::{confine, files, init, Error, ExecSpec, ExecStdio, Result, RootfsMode, State};
use crate::sys;

/// [`ExecSpec`] as it travels to the waiter (JSON in a [`Msg::Request`]).
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

/// A running exec'd command.
pub struct ExecProcess {
    /// Host pid of the command.
    pub pid: i32,
    /// The pty master when `ExecSpec::pty` was set.
    pub pty_master: Option<OwnedFd>,
    command: Arc<OwnedFd>,
    waiter: OwnedFd,
    /// The `bivy __exec` helper, our child, when the monitor did not serve the request.
    helper: Option<i32>,
}

/// Sends signals to an exec'd command (through a pidfd: never a recycled pid).
#[derive(Clone)]
pub struct Signaller(Arc<OwnedFd>);

impl Signaller {
    /// Send signal number `sig`; a command that has ended is left alone.
    pub fn send(&self, sig: i32) {
        let _ = sys::pidfd_send_raw(self.0.as_fd(), sig);
    }

    /// Whether the command has ended, waiting up to `limit` for it.
    pub fn ended_within(&self, limit: std::time::Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut p = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
        matches!(poll(&mut p, PollTimeout::from(ms)), Ok(1))
    }
}

impl ExecProcess {
    pub fn signaller(&self) -> Signaller {
        Signaller(self.command.clone())
    }

    /// Wait for the command's end: its exit code, 128+N when killed by signal N.
    pub fn wait(self) -> Result<i32> {
        let r = match chan::recv(&self.waiter) {
            Ok(Some((Msg::Exit(c), _))) => Ok(c),
            Ok(Some((Msg::Err(e), _))) => Err(Error(e)),
            Ok(Some((m, _))) => Err(Error(format!(
                "unexpected message from the exec waiter: {m:?}"
            ))),
            // The waiter is in the container's cgroup: it ends unheard only when that is
            // killed (a forced stop, the OOM killer), which SIGKILLs the command with it. LXD
            // reports such a command as killed by SIGKILL: 137.
            Ok(None) => Ok(128 + libc::SIGKILL),
            Err(e) => Err(e),
        };
        reap(self.helper);
        r
    }
}

fn reap(helper: Option<i32>) {
    if let Some(pid) = helper {
        let _ = waitpid(Pid::from_raw(pid), None);
    }
}

/// Run `spec` in the container of `run_dir`. Without `stdio` (and without a pty) the command
/// gets the caller's stdio.
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
    let (waiter, helper) = match connect(run_dir)? {
        Some(c) => (c, None),
        None => spawn_helper(run_dir)?,
    };
    let fds: Vec<RawFd> = match (spec.pty, &stdio) {
        (Some(_), _) => vec![],
        (None, Some(s)) => vec![
            s.stdin.as_raw_fd(),
            s.stdout.as_raw_fd(),
            s.stderr.as_raw_fd(),
        ],
        (None, None) => vec![0, 1, 2],
    };
    // On failure our end closes first, so that a helper still waiting for its request ends.
    let fail = |waiter: OwnedFd, e: Error| {
        drop(waiter);
        reap(helper);
        e
    };
    if let Err(e) = chan::send_fds(&waiter, &Msg::Request(js), &fds) {
        return Err(fail(waiter, e));
    }
    drop(stdio);
    let mut pty_master = None;
    loop {
        let e = match chan::recv(&waiter) {
            Ok(Some((Msg::PtyMaster, Some(fd)))) => {
                pty_master = Some(fd);
                continue;
            }
            Ok(Some((Msg::Running(pid), Some(fd)))) => {
                if spec.pty.is_some() && pty_master.is_none() {
                    Error("the exec waiter did not send the pty master".into())
                } else {
                    return Ok(ExecProcess {
                        pid,
                        pty_master,
                        command: Arc::new(fd),
                        waiter,
                        helper,
                    });
                }
            }
            Ok(Some((Msg::Err(e), _))) => Error(e),
            Ok(Some((m, _))) => Error(format!("unexpected message from the exec waiter: {m:?}")),
            Ok(None) => Error("the exec waiter ended before the command started".into()),
            Err(e) => e,
        };
        return Err(fail(waiter, e));
    }
}

/// A connection to the monitor's `exec.sock`; None when the monitor has none (one started by
/// an older bivy) or no longer listens.
fn connect(run_dir: &Path) -> Result<Option<OwnedFd>> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    // Through the directory's fd, so that no run directory's path is too long for an address.
    let dir = open_dir(run_dir)?;
    let addr = UnixAddr::new(sock_path(dir.as_fd()).as_str())
        .map_err(|e| Error(format!("exec socket address: {e}")))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error(format!("socket: {e}")))?;
    match connect(sock.as_raw_fd(), &addr) {
        Ok(()) => Ok(Some(sock)),
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => Ok(None),
        Err(e) => Err(Error(format!(
            "connect to {}: {e}",
            run_dir.join(files::EXEC_SOCK).display()
        ))),
    }
}

/// An `O_PATH` fd of the run directory, to name `exec.sock` through.
fn open_dir(run_dir: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        run_dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error(format!("open {}: {e}", run_dir.display())))
}

/// `exec.sock` named through an fd of its directory.
fn sock_path(dir: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}/{}", dir.as_raw_fd(), files::EXEC_SOCK)
}

/// The monitor's listening socket for exec requests, `exec.sock` in the run directory (0600).
/// Called by the monitor, which has one thread, so the umask change is its own.
pub(crate) fn listen(run_dir: &Path) -> Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let dir = open_dir(run_dir)?;
    let path = sock_path(dir.as_fd());
    let _ = std::fs::remove_file(&path);
    let addr =
        UnixAddr::new(path.as_str()).map_err(|e| Error(format!("exec socket address: {e}")))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| Error(format!("socket: {e}")))?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let r = bind(sock.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    r.map_err(|e| {
        Error(format!(
            "bind {}: {e}",
            run_dir.join(files::EXEC_SOCK).display()
        ))
    })?;
    listen(&sock, Backlog::new(64).unwrap_or(Backlog::MAXCONN)).map_err(|e| {
        Error(format!(
            "listen on {}: {e}",
            run_dir.join(files::EXEC_SOCK).display()
        ))
    })?;
    Ok(sock)
}

/// Spawn a `bivy __exec` helper as the waiter; our end of its socket and its pid.
fn spawn_helper(run_dir: &Path) -> Result<(OwnedFd, Option<i32>)> {
    let mut cmd = helper_command("bivy-exec")?;
    cmd.arg("__exec")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let (ours, child) = spawn_with_socket(cmd, "exec helper", run_dir.as_os_str())?;
    Ok((ours, Some(child.id() as i32)))
}

/// What a waiter needs of its container: the monitor has it from the container's setup, the
/// helper reads it from the run directory.
pub(crate) struct Target<'a> {
    pub cgroup: &'a str,
    pub privileged: bool,
    pub label: Option<&'a str>,
    pub seccomp: &'a confine::Seccomp,
    /// A pidfd of the container's init.
    pub init: BorrowedFd<'a>,
}

/// `bivy __exec <run_dir> <sock_fd>`; the request arrives on the socket.
pub fn helper(args: &[String]) -> ! {
    let (run_dir, sock) = inherited_socket(args, "exec");
    let _ = nix::sys::prctl::set_name(c"bivy-exec");
    let run_dir = Path::new(&run_dir);
    let target = || -> Result<(super::Spec, Option<String>, confine::Seccomp, OwnedFd)> {
        let spec = read_spec(run_dir)?;
        let label = std::fs::read_to_string(run_dir.join(files::LABEL)).ok();
        let seccomp = confine::seccomp_compile(&spec.seccomp_policy)?;
        let Some((_, init)) = live_pidfd(&run_dir.join(files::INIT_PID)) else {
            return Err(Error(format!("container {} is not running", spec.name)));
        };
        Ok((spec, label, seccomp, init))
    };
    match target() {
        Ok((spec, label, seccomp, init)) => {
            let t = Target {
                cgroup: spec.cgroup_name(),
                privileged: spec.rootfs_mode == RootfsMode::Privileged,
                label: label.as_deref(),
                seccomp: &seccomp,
                init: init.as_fd(),
            };
            serve(&t, sock)
        }
        Err(e) => {
            // The request is read first, so that the caller's send never fails on a closed end.
            let _ = chan::recv(&sock);
            let _ = chan::send(&sock, &Msg::Err(e.0), None);
            std::process::exit(126)
        }
    }
}

/// In a child the monitor forked for the connection `conn` to its `exec.sock`: every other fd
/// the monitor holds is closed, then the request is served. Never returns.
pub(crate) fn serve_from_monitor(t: &Target<'_>, conn: OwnedFd) -> ! {
    let keep = [conn.as_raw_fd(), t.init.as_raw_fd()];
    if let Err(e) = sys::close_all_but(&keep) {
        let _ = chan::send(
            &conn,
            &Msg::Err(format!("close the monitor's fds: {e}")),
            None,
        );
        sys::exit_now(126);
    }
    let _ = nix::sys::prctl::set_name(c"bivy-exec");
    // A caller that connects and never asks does not keep a waiter forever.
    let _ = nix::sys::socket::setsockopt(
        &conn,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(10, 0),
    );
    serve(t, conn)
}

/// The waiter: read the request on `conn`, run it, report. Never returns.
fn serve(t: &Target<'_>, conn: OwnedFd) -> ! {
    let code = match run(t, &conn) {
        Ok(code) => match chan::send(&conn, &Msg::Exit(code), None) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        Err(e) => {
            let _ = chan::send(&conn, &Msg::Err(e.0), None);
            126
        }
    };
    sys::exit_now(code)
}

fn run(t: &Target<'_>, conn: &OwnedFd) -> Result<i32> {
    let (req, stdio) = match chan::recv_fds(conn)? {
        Some((Msg::Request(js), fds)) => {
            let req: Req = serde_json::from_slice(js.as_bytes())
                .map_err(|e| Error(format!("parse exec request: {e}")))?;
            (req, fds)
        }
        Some((m, _)) => return Err(Error(format!("unexpected exec request: {m:?}"))),
        None => return Err(Error("no exec request".into())),
    };
    if req.pty.is_none() && stdio.len() != 3 {
        return Err(Error(format!(
            "an exec request without a pty needs 3 fds, not {}",
            stdio.len()
        )));
    }
    // 1. A session keyring of the command's own, not the daemon's (see the monitor's step 8).
    sys::join_new_session_keyring()
        .map_err(|e| Error(format!("join a new session keyring: {e}")))?;
    // 2. Join the cgroup while the host's cgroupfs is still visible.
    confine::cgroup_add_pid(t.cgroup, std::process::id() as i32)?;
    // 3. All of init's namespaces at once (setns with a pidfd is atomic).
    use nix::sched::CloneFlags as C;
    let mut ns = C::CLONE_NEWNS
        | C::CLONE_NEWPID
        | C::CLONE_NEWUTS
        | C::CLONE_NEWIPC
        | C::CLONE_NEWNET
        | C::CLONE_NEWCGROUP;
    if !t.privileged {
        ns |= C::CLONE_NEWUSER;
    }
    // Init's time namespace too: a CRIU restore puts init in one of its own, and a command
    // outside it would make the next checkpoint's tree span two (which CRIU cannot restore).
    // A kernel without time namespaces refuses the flag (EINVAL), and joining a time namespace
    // takes rights over its owner that a nested bivy lacks for its host's (EPERM; init is in
    // that one unless CRIU restored it): joined without it then.
    let time = C::from_bits_retain(libc::CLONE_NEWTIME);
    match nix::sched::setns(t.init, ns | time) {
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EPERM) => nix::sched::setns(t.init, ns),
        r => r,
    }
    .map_err(|e| Error(format!("setns into init: {e}")))?;
    // 4. Fork: the child is in the container's pid namespace. It reports on a pair of its own
    //    (its end closes when it execs), relayed to the caller.
    let (ours, theirs) = chan::pair()?;
    let pid = sys::fork().map_err(|e| Error(format!("fork: {e}")))?;
    if pid == 0 {
        drop(ours);
        let e = child(&req, &theirs, stdio, t.label, t.seccomp);
        let _ = chan::send(&theirs, &Msg::Err(e.0), None);
        sys::exit_now(127);
    }
    drop(theirs);
    drop(stdio);
    let fail = |e: Error| {
        let _ = waitpid(Pid::from_raw(pid), None);
        e
    };
    loop {
        match chan::recv(&ours).map_err(fail)? {
            None => break,
            Some((Msg::PtyMaster, Some(fd))) => {
                chan::send(conn, &Msg::PtyMaster, Some(fd.as_raw_fd())).map_err(fail)?
            }
            Some((Msg::Err(e), _)) => return Err(fail(Error(e))),
            Some((m, _)) => {
                return Err(fail(Error(format!(
                    "unexpected message from the command's process: {m:?}"
                ))))
            }
        }
    }
    // 5. The command runs: the caller gets a pidfd of it (our unreaped child: no pid reuse).
    let command = sys::pidfd_open(pid)
        .map_err(|e| Error(format!("pidfd_open {pid}: {e}")))
        .map_err(fail)?;
    chan::send(conn, &Msg::Running(pid), Some(command.as_raw_fd())).map_err(fail)?;
    drop(command);
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error(format!("wait for the command: {e}"))),
        }
    }
}

fn child(
    req: &Req,
    sock: &OwnedFd,
    stdio: Vec<OwnedFd>,
    label: Option<&str>,
    seccomp: &confine::Seccomp,
) -> Error {
    let e = |step: &str, x: &dyn std::fmt::Display| Error(format!("{step}: {x}"));
    // The caller's stdin, stdout and stderr: copied above 2 first, so that none is overwritten
    // before it is copied whatever numbers they arrived with.
    let mut high = Vec::with_capacity(stdio.len());
    for fd in &stdio {
        match dup_inheritable(fd) {
            Ok(h) => high.push(h),
            Err(x) => return x,
        }
    }
    drop(stdio);
    if let [i, o, er] = &high[..] {
        for r in [
            nix::unistd::dup2_stdin(i),
            nix::unistd::dup2_stdout(o),
            nix::unistd::dup2_stderr(er),
        ] {
            if let Err(x) = r {
                return e("dup2 stdio", &x);
            }
        }
    }
    drop(high);
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
    // A working directory that is not there (a missing HOME, `--cwd /nonexistent`) leaves the
    // command in `/`, as LXD's attach only warns.
    if nix::unistd::chdir(req.cwd.as_str()).is_err() {
        if let Err(x) = nix::unistd::chdir("/") {
            return e("chdir /", &x);
        }
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
    let x = sys::execve_when_free(&prog, &argv, &env);
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
