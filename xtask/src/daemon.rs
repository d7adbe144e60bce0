//! A `bivy daemon` started by xtask (demo, bench): spawned in its own process group with
//! `BIVY_DIR` set, output to `<dir>/../daemon.log`, ready once `$BIVY_DIR/unix.socket` accepts.
//! Only ever signals the pid it started.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Result};

pub struct BgDaemon {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub pid: u32,
    pub log: PathBuf,
    /// Time from spawn until the socket accepted a connection.
    pub ready_after: Duration,
}

pub fn socket(dir: &Path) -> PathBuf {
    dir.join("unix.socket")
}

/// Start `bin daemon` with `BIVY_DIR=dir`; the process outlives xtask unless stopped.
pub fn start(bin: &Path, dir: &Path, log: &Path) -> Result<BgDaemon> {
    let mut cmd = Command::new(bin);
    cmd.arg("daemon");
    // CRIU where CI and the tests install it (`.ci/install-criu.sh target/criu`), unless the
    // environment names one.
    let criu = util::target_dir().join("criu/bin/criu");
    if std::env::var_os("BIVY_CRIU").is_none() && criu.is_file() {
        cmd.env("BIVY_CRIU", criu);
    }
    spawn(cmd, bin, dir, log)
}

/// [`start`] with more environment for the daemon (`BIVY_TRACE=1`).
pub fn start_env(bin: &Path, dir: &Path, log: &Path, env: &[(&str, &str)]) -> Result<BgDaemon> {
    let mut cmd = Command::new(bin);
    cmd.arg("daemon").envs(env.iter().copied());
    spawn(cmd, bin, dir, log)
}

/// Same, in a new network namespace with only `lo` up (`unshare` execs the shell, which execs
/// the daemon: one pid): the bridges and rules it makes never touch the host's.
pub fn start_in_new_netns(bin: &Path, dir: &Path, log: &Path) -> Result<BgDaemon> {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$0\" daemon",
    ])
    .arg(bin);
    spawn(cmd, bin, dir, log)
}

/// Start `bin daemon` in the network namespace `holder` (a process's pid) holds, through
/// `nsenter` (which execs the daemon: one pid). The caller keeps the [`Child`], so it can
/// SIGKILL and reap exactly this daemon (`chaos` does), and restart one in the same namespace:
/// the links and rules the first made are still there for the second.
pub fn start_in_netns(
    bin: &Path,
    dir: &Path,
    log: &Path,
    holder: u32,
    env: &[(&str, &str)],
) -> Result<(BgDaemon, Child)> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{holder}/ns/net"))
        .arg("--")
        .arg(bin)
        .arg("daemon")
        .envs(env.iter().copied());
    spawn_child(cmd, bin, dir, log)
}

fn spawn(cmd: Command, bin: &Path, dir: &Path, log: &Path) -> Result<BgDaemon> {
    let (d, child) = spawn_child(cmd, bin, dir, log)?;
    // Dropping `child` does not kill or reap it; the daemon keeps running on its own.
    std::mem::forget(child);
    Ok(d)
}

fn spawn_child(mut cmd: Command, bin: &Path, dir: &Path, log: &Path) -> Result<(BgDaemon, Child)> {
    util::mkdirs(dir)?;
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("create {}: {e}", log.display()))?;
    let t = Instant::now();
    let mut child = cmd
        .env("BIVY_DIR", dir)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        // Own process group: a Ctrl-C in the terminal that ran xtask does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start {} daemon: {e}", bin.display()))?;
    let pid = child.id();
    let sock = socket(dir);
    let deadline = t + Duration::from_secs(30);
    loop {
        if UnixStream::connect(&sock).is_ok() {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "`bivy daemon` exited ({st}) before listening on {}; log {}:\n{}",
                sock.display(),
                log.display(),
                fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "`bivy daemon` not accepting on {} after 30s; log {}",
                sock.display(),
                log.display()
            ));
        }
        // Fine enough for a start of a few milliseconds (the figure `ready_after` reports).
        std::thread::sleep(Duration::from_micros(500));
    }
    let ready_after = t.elapsed();
    fs::write(dir.join("../daemon.pid"), format!("{pid}\n"))
        .map_err(|e| format!("write pid file: {e}"))?;
    Ok((
        BgDaemon {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            pid,
            log: log.to_path_buf(),
            ready_after,
        },
        child,
    ))
}

fn alive(pid: u32) -> bool {
    // A zombie (state Z) has exited.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(|st| st != "Z")
        })
        .unwrap_or(false)
}

/// Is `pid` a `bivy daemon` (so a stale pid file cannot make us signal an unrelated process)?
pub fn is_bivy_daemon(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"bivy"))
                && args.get(1) == Some(&b"daemon".as_slice())
        })
        .unwrap_or(false)
}

/// SIGTERM exactly `pid`, wait up to 20 s, then SIGKILL.
pub fn stop_pid(pid: u32) {
    if !alive(pid) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("xtask: daemon {pid} ignored SIGTERM; SIGKILL");
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

impl BgDaemon {
    /// `bivy <args>` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("BIVY_DIR", &self.dir).args(args).stdin(Stdio::null());
        c
    }

    /// GET a REST path over the unix socket; the response body.
    pub fn get(&self, path: &str) -> Result<String> {
        let mut s = UnixStream::connect(socket(&self.dir)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: bivy\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((_, body)) => Ok(body.to_owned()),
            None => Err(format!("GET {path}: no HTTP response")),
        }
    }

    pub fn stop(&self) {
        stop_pid(self.pid);
    }

    /// Stop this daemon and start `bivy daemon` again on the same directory, as [`start`]
    /// does; `pid` and `ready_after` are then the new start's.
    pub fn restart(&mut self) -> Result {
        self.stop();
        let (bin, dir, log) = (self.bin.clone(), self.dir.clone(), self.log.clone());
        *self = start(&bin, &dir, &log)?;
        Ok(())
    }
}
