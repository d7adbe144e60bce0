//! The filesystem transfer as LXD 5.0.2 runs it (`lxd/rsync/rsync.go`): the real `rsync`, found
//! at run time, with LXD's option sets on both ends (an extra option on one end desynchronises
//! the protocol), over the `fs` websocket.
//!
//! - Sender: `rsync -ar --devices --numeric-ids --partial --sparse [features] PATH/
//!   localhost:/tmp/foo -e "sh -c \"/proc/PID/exe __netcat NAME\""`. rsync thinks it talks to a
//!   remote shell; the shell is `bivy __netcat` ([`netcat_main`]), which relays its stdio to an
//!   abstract unix socket the daemon listens on, and the daemon relays that onto the websocket
//!   (LXD's `lxd netcat`). `/proc/PID/exe` is the running daemon's own binary, even if the file
//!   was replaced since.
//! - Receiver: `rsync --server -vlogDtpre.iLsfx --numeric-ids --devices --partial --sparse
//!   [features] --modify-window=-1|--ignore-times . PATH` with stdin and stdout on the
//!   websocket.
//! - Features: `--xattrs --filter=-x security.selinux` (the filter with rsync 3.1.3 or newer, as
//!   LXD), `--delete`, `--compress --compress-level=2`.
//! - Each session's bytes go in binary frames; each side ends its direction with an empty text
//!   frame.
//!
//! Which files are sent is the receiver's choice (its generator decides; the option is the
//! receiver's alone, so the protocol is unchanged), by [`Compare`]. Snapshots are received one
//! after another into the same tree, and rsync's quick check (same size and modification time
//! to the second) would keep a snapshot's content over a later same-size write made in the same
//! second (LXD 5.0.2 loses that write; fixed upstream only in 2024 with `--modify-window=-1`,
//! which still misses writes within one timestamp tick). So every session after the first into
//! a tree compares content (`--ignore-times`: each file through rsync's delta algorithm), and
//! the first compares size and time to the nanosecond (`--modify-window=-1`): its tree holds an
//! older state (an earlier transfer's, or the base image's), and a file written since was written
//! at least a stop, a start or a transfer later. Comparing content there too made a refresh
//! read and checksum every file on both hosts: 130 of the 183 ms of a busybox container's
//! refresh, and the whole container's data for a big one.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wire::{self, Ws};
use crate::instance::{Error, Result};

/// How long the sender's rsync may take to start its remote shell (LXD: 10 s).
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The rsync features both ends use (the intersection of what each offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub xattrs: bool,
    pub delete: bool,
    pub compress: bool,
}

impl Features {
    /// From LXD's feature names.
    pub fn from_names(names: &[&str]) -> Features {
        Features {
            xattrs: names.contains(&"xattrs"),
            delete: names.contains(&"delete"),
            compress: names.contains(&"compress"),
        }
    }

    /// The features an answer `resp` agreed on: those it names, or LXD 3.7's set when it does
    /// not say `bidirectional` (an older peer expects that set without saying so).
    pub fn agreed(resp: &super::proto::MigrationHeader) -> Features {
        let mut names = resp.rsync_feature_names();
        if !names.contains(&"bidirectional") {
            names = vec!["xattrs", "delete", "compress"];
        }
        Features::from_names(&names)
    }

    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.xattrs {
            a.push("--xattrs".to_string());
            if at_least_3_1_3() {
                a.push("--filter=-x security.selinux".to_string());
            }
        }
        if self.delete {
            a.push("--delete".to_string());
        }
        if self.compress {
            a.push("--compress".to_string());
            a.push("--compress-level=2".to_string());
        }
        a
    }
}

/// The `rsync` program, or an error that names it.
pub fn program() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/bin".into());
    dirs.push("/bin".into());
    dirs.iter()
        .filter(|d| d.is_absolute())
        .map(|d| d.join("rsync"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Host(
                "moving instances between servers needs rsync on the host (apt-get install rsync): \
                 rsync not found on PATH"
                    .into(),
            )
        })
}

/// Whether the local rsync is 3.1.3 or newer (LXD's `rsync.AtLeast("3.1.3")`), read once.
fn at_least_3_1_3() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        let Ok(p) = program() else { return false };
        let Ok(out) = Command::new(p)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let ver = text
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
            .unwrap_or("");
        let nums: Vec<u32> = ver.split('.').map_while(|p| p.parse().ok()).collect();
        nums >= vec![3, 1, 3]
    })
}

/// Collect a child's stderr on a thread (so it never blocks on a full pipe).
fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(r) = r {
            let _ = r.take(64 * 1024).read_to_end(&mut v);
        }
        String::from_utf8_lossy(&v).trim().to_string()
    })
}

fn failed(what: &str, path: &Path, status: impl std::fmt::Display, stderr: &str) -> Error {
    Error::Host(format!(
        "rsync {what} of {} failed ({status}): {stderr}",
        path.display()
    ))
}

/// Send the tree at `path` (its content, not the directory itself) as one session.
pub fn send(path: &Path, ws: &mut Ws, f: Features) -> Result<()> {
    let rsync = program()?;
    let name = format!("bivy/rsync/{}", crate::instance::operations::uuid());
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| Error::Host(format!("rsync relay socket: {e}")))?;
    let listener = UnixListener::bind_addr(&addr)
        .map_err(|e| Error::Host(format!("rsync relay socket: {e}")))?;
    let shell = format!("sh -c \"/proc/{}/exe __netcat {name}\"", std::process::id());
    // A layered volume is sent as one tree, without its layers (storage/layered.rs).
    let view = crate::storage::layered::view(path, false)
        .map_err(|e| Error::Host(format!("sending {}: {e}", path.display())))?;
    let layers: &[&str] = if view.layered() {
        &["--exclude=/lower", "--exclude=/upper", "--exclude=/work"]
    } else {
        &[]
    };
    let mut src = view.path().as_os_str().to_owned();
    src.push("/");
    let mut child = Command::new(rsync)
        .args(["-ar", "--devices", "--numeric-ids", "--partial", "--sparse"])
        .args(layers)
        .args(f.args())
        .arg(&src)
        .args(["localhost:/tmp/foo", "-e", &shell])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Host(format!("running rsync: {e}")))?;
    let stderr = drain(child.stderr.take());
    let conn = match accept(&listener, &mut child) {
        Ok(c) => c,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let msg = stderr.join().unwrap_or_default();
            return Err(Error::Host(format!(
                "rsync failed to start its transfer: {e} {msg}"
            )));
        }
    };
    drop(listener);
    let res = relay(conn, ws);
    let status = match &res {
        Ok(()) => child.wait(),
        Err(_) => {
            let _ = child.kill();
            child.wait()
        }
    };
    let msg = stderr.join().unwrap_or_default();
    res.map_err(|e| failed("send", path, e, &msg))?;
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(failed("send", path, s, &msg)),
        Err(e) => Err(failed("send", path, e, &msg)),
    }
}

/// Wait for the remote-shell relay to connect (bounded; an rsync that exits first fails it).
fn accept(l: &UnixListener, child: &mut Child) -> io::Result<UnixStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + SPAWN_TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if let Some(st) = child.try_wait()? {
            return Err(io::Error::other(format!("rsync exited ({st})")));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("rsync failed to spawn after 10s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Relay the rsync connection and the websocket both ways until each direction has ended.
fn relay(conn: UnixStream, ws: &mut Ws) -> io::Result<()> {
    let mut up = conn.try_clone()?;
    let tx = ws.tx.clone();
    let t = std::thread::spawn(move || wire::write_stream(&tx, &mut up));
    let mut down = &conn;
    let r = wire::read_stream(&mut ws.rx, &mut down);
    match &r {
        Ok(_) => {
            let _ = conn.shutdown(std::net::Shutdown::Write);
        }
        Err(_) => {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
    let w = t
        .join()
        .map_err(|_| io::Error::other("relay thread panicked"))?;
    r?;
    w.map(|_| ())
}

/// A writer that reports how many bytes went through it.
struct Counted<'a, W: Write> {
    inner: W,
    seen: &'a dyn Fn(u64),
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        (self.seen)(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How a receiving session tells which files to ask for (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Size and modification time to the nanosecond (`--modify-window=-1`).
    Times,
    /// Every file's content (`--ignore-times`).
    Content,
}

impl Compare {
    fn arg(self) -> &'static str {
        match self {
            Compare::Times => "--modify-window=-1",
            Compare::Content => "--ignore-times",
        }
    }
}

/// The sessions received into one tree, counted: the first compares times, the later ones
/// content ([`Compare`]).
#[derive(Debug, Default)]
pub struct Sessions(usize);

impl Sessions {
    /// How the session beginning now compares.
    pub fn begin(&mut self) -> Compare {
        self.0 += 1;
        if self.0 == 1 {
            Compare::Times
        } else {
            Compare::Content
        }
    }
}

/// Receive one session into `path` (made by the caller), comparing as `compare` says; `seen`
/// is told of every byte received.
pub fn recv(
    path: &Path,
    ws: &mut Ws,
    f: Features,
    compare: Compare,
    seen: &dyn Fn(u64),
) -> Result<()> {
    let rsync = program()?;
    // What the peer sends is not trusted: rsync may write below `path` and nowhere else.
    let mut child = crate::runtime::write_only_below(path, &rsync)
        .map_err(|e| Error::Host(format!("rsync receiver: {e}")))?
        .args([
            "--server",
            "-vlogDtpre.iLsfx",
            "--numeric-ids",
            "--devices",
            "--partial",
            "--sparse",
        ])
        .args(f.args())
        .arg(compare.arg())
        .arg(".")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Host(format!("running rsync: {e}")))?;
    let stderr = drain(child.stderr.take());
    let mut out = child.stdout.take().expect("piped stdout");
    let tx = ws.tx.clone();
    let t = std::thread::spawn(move || wire::write_stream(&tx, &mut out));
    let mut stdin = Counted {
        inner: child.stdin.take().expect("piped stdin"),
        seen,
    };
    let r = wire::read_stream(&mut ws.rx, &mut stdin);
    drop(stdin);
    if r.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    let w = t
        .join()
        .map_err(|_| Error::Host("relay thread panicked".into()))?;
    let msg = stderr.join().unwrap_or_default();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(failed("receive", path, s, &msg)),
        Err(e) => return Err(failed("receive", path, e, &msg)),
    }
    r.map_err(|e| failed("receive", path, e, &msg))?;
    w.map_err(|e| failed("receive", path, e, &msg))?;
    Ok(())
}

/// `bivy __netcat NAME`: rsync's remote shell on the sending side. Relays stdin to the abstract
/// unix socket NAME and the socket to stdout; exits when the socket's end is read. Exits 1 with a
/// message on stderr (which rsync shows) when the socket cannot be reached.
pub fn netcat_main(args: &[String]) -> ! {
    let Some(name) = args.first() else {
        eprintln!("bivy __netcat: usage: __netcat NAME");
        std::process::exit(2)
    };
    let conn =
        SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixStream::connect_addr(&a));
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bivy __netcat: {name}: {e}");
            std::process::exit(1)
        }
    };
    let mut up = match conn.try_clone() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bivy __netcat: {e}");
            std::process::exit(1)
        }
    };
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    // Stdout is line-buffered: every piece is flushed, or rsync waits for bytes held here.
    let mut down = &conn;
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; wire::CHUNK];
    let r = loop {
        match down.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    std::process::exit(i32::from(r.is_err()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_session_into_a_tree_compares_times_the_later_ones_content() {
        let mut s = Sessions::default();
        assert_eq!(s.begin(), Compare::Times);
        assert_eq!(s.begin(), Compare::Content);
        assert_eq!(s.begin(), Compare::Content);
        assert_eq!(Compare::Times.arg(), "--modify-window=-1");
        assert_eq!(Compare::Content.arg(), "--ignore-times");
    }

    #[test]
    fn feature_arguments() {
        let all = Features::from_names(&["xattrs", "delete", "compress", "bidirectional"]);
        let a = all.args();
        assert_eq!(a[0], "--xattrs");
        assert!(a.ends_with(&[
            "--delete".into(),
            "--compress".into(),
            "--compress-level=2".into()
        ]));
        let none = Features::from_names(&[]);
        assert!(none.args().is_empty());
        assert_eq!(
            Features::from_names(&["delete"]),
            Features {
                xattrs: false,
                delete: true,
                compress: false
            }
        );
    }
}
