//! Proxy listeners and their relays, without config keys: sockets made in the daemon's own
//! namespaces or in a container's ([`Place`]), a listener per address, a relay per connection,
//! all closed together ([`Proxy`] dropped).
//!
//! - Where a socket is made decides its network namespace: sockets keep the namespace they were
//!   created in. A container's sockets are made on a short-lived thread that joined its network
//!   namespace ([`super::netlink::in_netns_fd`]): no long-lived daemon thread ever moves.
//! - A unix socket path inside a container is resolved in the container's root (its init's
//!   `/proc/PID/root`, opened once) with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: a
//!   symlink in the container cannot point it at the host. The socket is bound and connected
//!   through `/proc/self/fd/N` of what was resolved, never through the container's path again.
//!   A listening socket's file gets its owner and mode through an `O_PATH` descriptor of the
//!   node just made (never by path: the container could swap it for a symlink), and is removed
//!   when the listener closes if it is still the one made.
//! - Stream listeners (tcp, unix) accept without blocking in a poll loop; each connection is
//!   relayed by one thread polling both sockets (both directions, half-closes passed on). UDP:
//!   one thread per listening port keeps a socket per client towards the target (the replies go
//!   back to that client), idle ones closed after [`UDP_IDLE`], at most the connection limit.
//! - Every thread of a proxy also polls one eventfd: written once at close, it wakes them all.
//!   Closing joins the listener threads (the listening sockets are closed when it returns) and
//!   waits up to [`CLOSE_WAIT`] for the relays to end.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// How long a connect to the target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A UDP client silent this long loses its socket towards the target.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// How long closing a proxy waits for its relays to end.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);
const BUF: usize = 64 * 1024;
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// A unix socket address: a path or an abstract name (`@name`).
#[derive(Debug, Clone, PartialEq)]
pub enum UnixPath {
    Path(String),
    Abstract(Vec<u8>),
}

/// One address to listen on or connect to.
#[derive(Debug, Clone, PartialEq)]
pub enum Addr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(UnixPath),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "tcp:{a}"),
            Addr::Udp(a) => write!(f, "udp:{a}"),
            Addr::Unix(UnixPath::Path(p)) => write!(f, "unix:{p}"),
            Addr::Unix(UnixPath::Abstract(n)) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// A container's namespaces, held open for the proxy's life.
pub struct Ns {
    net: OwnedFd,
    root: OwnedFd,
    /// The host ids of the container's root, which makes its socket files (the daemon's root
    /// cannot create files on an idmapped rootfs that does not map it).
    maker: (u32, u32),
}

/// Where sockets are made.
#[derive(Clone)]
pub enum Place {
    /// The daemon's own network namespace and root.
    Host,
    /// A container's (the network namespace and root directory of its init).
    Container(Arc<Ns>),
}

impl Place {
    /// The namespaces of process `pid` (a container's init), opened now; `maker` are the host
    /// uid and gid of the container's root.
    pub fn of_pid(pid: i32, maker: (u32, u32)) -> io::Result<Place> {
        let open = |what: &str, flags: OFlags| {
            let p = format!("/proc/{pid}/{what}");
            rustix::fs::open(&p, flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("open {p}: {e}")))
        };
        Ok(Place::Container(Arc::new(Ns {
            net: open("ns/net", OFlags::RDONLY)?,
            root: open("root", OFlags::PATH | OFlags::DIRECTORY)?,
            maker,
        })))
    }

    /// Run `f` where sockets of this place are made: on this thread for the host, on a
    /// short-lived thread in the container's network namespace otherwise (`f` gets the
    /// container's root).
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Option<InRoot<'_>>) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        match self {
            Place::Host => f(None),
            Place::Container(ns) => {
                let ns = ns.clone();
                let net = ns.net.try_clone()?;
                super::netlink::in_netns_fd(net, move || {
                    f(Some(InRoot {
                        root: ns.root.as_fd(),
                        maker: ns.maker,
                    }))
                })
            }
        }
    }
}

/// A container's root, seen from a thread in its network namespace.
#[derive(Clone, Copy)]
struct InRoot<'a> {
    root: BorrowedFd<'a>,
    maker: (u32, u32),
}

/// Owner and mode of a listening unix socket's file (host ids).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnixOwner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// What a proxy listens on and where it connects: `connect[i]` serves `listen[i]`.
pub struct Spec {
    /// For log lines: `instance/device`.
    pub label: String,
    pub listen: Vec<Addr>,
    pub listen_place: Place,
    pub connect: Vec<Addr>,
    pub connect_place: Place,
    pub owner: UnixOwner,
    /// Connections (UDP: clients) at once, per proxy.
    pub max_conns: usize,
}

fn annotate(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn errno(what: &str, e: rustix::io::Errno) -> io::Error {
    annotate(what, e.into())
}

/// The parent directory of `path` (opened `O_PATH`, inside `root` when given) and the last
/// component.
fn open_parent(root: Option<InRoot<'_>>, path: &str) -> io::Result<(OwnedFd, String)> {
    let (parent, name) = path.rsplit_once('/').ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: not absolute"))
    })?;
    if name.is_empty() || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path}: no file name"),
        ));
    }
    let parent = if parent.is_empty() { "/" } else { parent };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = match root {
        None => rustix::fs::open(parent, flags, Mode::empty()),
        Some(r) => rustix::fs::openat2(r.root, parent, flags, Mode::empty(), RESOLVE),
    }
    .map_err(|e| errno(parent, e))?;
    Ok((dir, name.to_string()))
}

/// A listening unix socket's file, removed when dropped if it is still the one made.
struct Node {
    dir: OwnedFd,
    name: String,
    id: (u64, u64),
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(st) = rustix::fs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            if (st.st_dev, st.st_ino) == self.id {
                let _ = rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty());
            }
        }
    }
}

fn bind_unix_path(
    root: Option<InRoot<'_>>,
    path: &str,
    owner: UnixOwner,
) -> io::Result<(UnixListener, Node)> {
    let (dir, name) = open_parent(root, path)?;
    // A socket left by an earlier run is replaced; anything else is not ours to remove.
    match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Socket => {
            rustix::fs::unlinkat(&dir, &name, AtFlags::empty()).map_err(|e| errno(path, e))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} exists and is not a socket"),
            ))
        }
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(errno(path, e)),
    }
    let via = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    let l = match root {
        None => UnixListener::bind(&via),
        Some(r) => crate::sys::as_fs_ids(r.maker.0, r.maker.1, false, || UnixListener::bind(&via)),
    }
    .map_err(|e| annotate(path, e))?;
    let node = rustix::fs::openat(
        &dir,
        &name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(path, e))?;
    let st = rustix::fs::fstat(&node).map_err(|e| errno(path, e))?;
    let made = Node {
        dir,
        name,
        id: (st.st_dev, st.st_ino),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(io::Error::other(format!(
            "{path}: replaced while being made"
        )));
    }
    rustix::fs::chownat(
        &node,
        "",
        Some(rustix::fs::Uid::from_raw(owner.uid)),
        Some(rustix::fs::Gid::from_raw(owner.gid)),
        AtFlags::EMPTY_PATH,
    )
    .map_err(|e| errno(&format!("{path}: chown"), e))?;
    rustix::fs::chmod(
        format!("/proc/self/fd/{}", node.as_raw_fd()),
        Mode::from_raw_mode(owner.mode),
    )
    .map_err(|e| errno(&format!("{path}: chmod"), e))?;
    Ok((l, made))
}

enum Listener {
    Tcp(TcpListener),
    /// The node, when a path, is removed with the listener.
    Unix(UnixListener, #[allow(dead_code)] Option<Node>),
    Udp(UdpSocket),
}

fn listen(place: &Place, addr: &Addr, owner: UnixOwner) -> io::Result<Listener> {
    let addr = addr.clone();
    let what = format!("listen on {addr}");
    place
        .run(move |root| match addr {
            Addr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a)?)),
            Addr::Udp(a) => Ok(Listener::Udp(UdpSocket::bind(a)?)),
            Addr::Unix(UnixPath::Abstract(n)) => Ok(Listener::Unix(
                UnixListener::bind_addr(&UnixAddr::from_abstract_name(n)?)?,
                None,
            )),
            Addr::Unix(UnixPath::Path(p)) => {
                let (l, node) = bind_unix_path(root, &p, owner)?;
                Ok(Listener::Unix(l, Some(node)))
            }
        })
        .map_err(|e| annotate(&what, e))
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn connect(place: &Place, addr: &Addr) -> io::Result<Stream> {
    let addr = addr.clone();
    place.run(move |root| match addr {
        Addr::Tcp(a) => Ok(Stream::Tcp(TcpStream::connect_timeout(
            &a,
            CONNECT_TIMEOUT,
        )?)),
        Addr::Unix(UnixPath::Abstract(n)) => Ok(Stream::Unix(UnixStream::connect_addr(
            &UnixAddr::from_abstract_name(n)?,
        )?)),
        Addr::Unix(UnixPath::Path(p)) => match root {
            None => Ok(Stream::Unix(UnixStream::connect(&p)?)),
            Some(r) => {
                let node = rustix::fs::openat2(
                    r.root,
                    &p,
                    OFlags::PATH | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                )
                .map_err(|e| errno(&p, e))?;
                Ok(Stream::Unix(UnixStream::connect(format!(
                    "/proc/self/fd/{}",
                    node.as_raw_fd()
                ))?))
            }
        },
        Addr::Udp(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a stream cannot be relayed to a udp address",
        )),
    })
}

/// Connections in flight, to bound them and to wait for them at close.
#[derive(Default)]
struct Conns {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Conns {
    fn try_add(&self, max: usize) -> bool {
        let mut n = self.n.lock().expect("conns lock");
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn done(&self) {
        *self.n.lock().expect("conns lock") -= 1;
        self.cv.notify_all();
    }

    fn wait_zero(&self, limit: Duration) {
        let n = self.n.lock().expect("conns lock");
        let _ = self.cv.wait_timeout_while(n, limit, |n| *n > 0);
    }
}

/// What every thread of a proxy shares.
struct Shared {
    label: String,
    stop: OwnedFd,
    conns: Conns,
    max: usize,
    connect_place: Place,
}

impl Shared {
    fn stopped(&self) -> bool {
        let mut fds = [PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// A running proxy: its listeners and relays. Dropping it closes them all.
pub struct Proxy {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on every address of `spec` (all or nothing: an address that cannot be listened on
    /// fails the whole start and closes the others), then serve them.
    pub fn start(spec: Spec) -> io::Result<Proxy> {
        if spec.listen.len() != spec.connect.len() || spec.listen.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a proxy needs one connect address per listen address",
            ));
        }
        for (l, c) in spec.listen.iter().zip(&spec.connect) {
            if matches!(l, Addr::Udp(_)) != matches!(c, Addr::Udp(_)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot relay {l} to {c} (udp only to udp)"),
                ));
            }
        }
        let mut bound = Vec::new();
        for a in &spec.listen {
            bound.push(listen(&spec.listen_place, a, spec.owner)?);
        }
        let stop = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| errno("eventfd", e))?;
        let shared = Arc::new(Shared {
            label: spec.label,
            stop,
            conns: Conns::default(),
            max: spec.max_conns.max(1),
            connect_place: spec.connect_place,
        });
        let mut p = Proxy {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for (l, target) in bound.into_iter().zip(spec.connect) {
            let sh = shared.clone();
            let t = std::thread::Builder::new()
                .name("bivy-proxy".into())
                .spawn(move || match l {
                    Listener::Udp(s) => serve_udp(&sh, s, target),
                    l => serve_stream(&sh, l, target),
                })?;
            p.threads.push(t);
        }
        Ok(p)
    }

    /// Connections (UDP: clients) open now.
    pub fn connections(&self) -> usize {
        *self.shared.conns.n.lock().expect("conns lock")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.shared.stop, &1u64.to_ne_bytes());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.conns.wait_zero(CLOSE_WAIT);
    }
}

/// Poll `fd` for `flags` and the proxy's stop; `Ok(true)` when stopped.
fn wait(sh: &Shared, fd: BorrowedFd<'_>, flags: PollFlags, timeout: PollTimeout) -> bool {
    let mut fds = [
        PollFd::new(sh.stop.as_fd(), PollFlags::POLLIN),
        PollFd::new(fd, flags),
    ];
    match poll(&mut fds, timeout) {
        Ok(_) => fds[0].revents().is_some_and(|r| !r.is_empty()),
        Err(nix::errno::Errno::EINTR) => false,
        Err(e) => {
            eprintln!("bivy: proxy {}: poll: {e}", sh.label);
            true
        }
    }
}

fn serve_stream(sh: &Arc<Shared>, l: Listener, target: Addr) {
    let accept = || -> io::Result<Stream> {
        match &l {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Udp(_) => unreachable!("udp is served by serve_udp"),
        }
    };
    let fd = match &l {
        Listener::Tcp(l) => l.set_nonblocking(true).map(|()| l.as_fd()),
        Listener::Unix(l, _) => l.set_nonblocking(true).map(|()| l.as_fd()),
        Listener::Udp(_) => return,
    };
    let Ok(fd) = fd else { return };
    loop {
        if wait(sh, fd, PollFlags::POLLIN, PollTimeout::NONE) {
            return;
        }
        loop {
            let s = match accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: pause rather than spin.
                    eprintln!("bivy: proxy {}: accept: {e}", sh.label);
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            };
            if !sh.conns.try_add(sh.max) {
                eprintln!(
                    "bivy: proxy {}: {} connections open, refusing another",
                    sh.label, sh.max
                );
                continue;
            }
            let sh2 = sh.clone();
            let target = target.clone();
            let spawned = std::thread::Builder::new()
                .name("bivy-proxy-conn".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    match connect(&sh2.connect_place, &target) {
                        Ok(b) if !sh2.stopped() => relay(&sh2, s, b),
                        Ok(_) => {}
                        Err(e) => eprintln!("bivy: proxy {}: connect to {target}: {e}", sh2.label),
                    }
                    sh2.conns.done();
                });
            if let Err(e) = spawned {
                eprintln!("bivy: proxy {}: thread: {e}", sh.label);
                sh.conns.done();
            }
        }
    }
}

/// One direction of a relay: bytes read from one side, not yet written to the other.
struct Pipe {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; BUF],
            start: 0,
            end: 0,
            eof: false,
            done: false,
        }
    }

    fn wants_read(&self) -> bool {
        !self.eof && self.end < self.buf.len()
    }

    fn has_data(&self) -> bool {
        self.start < self.end
    }

    /// Move what can be moved without blocking from `src` to `dst`.
    fn pump(&mut self, src: &mut Stream, dst: &mut Stream) -> io::Result<()> {
        loop {
            let mut progress = false;
            if self.wants_read() {
                match src.io().read(&mut self.buf[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        self.end += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(e),
                }
            }
            if self.has_data() {
                match dst.io().write(&self.buf[self.start..self.end]) {
                    Ok(n) => {
                        self.start += n;
                        progress |= n > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(e),
                }
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
            }
            if self.eof && !self.has_data() && !self.done {
                dst.shutdown_write();
                self.done = true;
            }
            if !progress {
                return Ok(());
            }
        }
    }
}

fn relay(sh: &Shared, mut a: Stream, mut b: Stream) {
    if a.set_nonblocking().is_err() || b.set_nonblocking().is_err() {
        return;
    }
    let (mut ab, mut ba) = (Pipe::new(), Pipe::new());
    while !(ab.done && ba.done) {
        let mut fa = PollFlags::empty();
        let mut fb = PollFlags::empty();
        if ab.wants_read() {
            fa |= PollFlags::POLLIN;
        }
        if ba.has_data() {
            fa |= PollFlags::POLLOUT;
        }
        if ba.wants_read() {
            fb |= PollFlags::POLLIN;
        }
        if ab.has_data() {
            fb |= PollFlags::POLLOUT;
        }
        let mut fds = vec![PollFd::new(sh.stop.as_fd(), PollFlags::POLLIN)];
        if !fa.is_empty() {
            fds.push(PollFd::new(a.fd(), fa));
        }
        if !fb.is_empty() {
            fds.push(PollFd::new(b.fd(), fb));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        drop(fds);
        if ab.pump(&mut a, &mut b).is_err() || ba.pump(&mut b, &mut a).is_err() {
            return;
        }
    }
}

struct Client {
    peer: SocketAddr,
    up: UdpSocket,
    last: Instant,
}

fn serve_udp(sh: &Arc<Shared>, sock: UdpSocket, target: Addr) {
    let Addr::Udp(target) = target else { return };
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = vec![
            PollFd::new(sh.stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
        ];
        for c in &clients {
            fds.push(PollFd::new(c.up.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            break;
        }
        // Replies first (the indices match `clients` before new ones are added).
        for (i, c) in clients.iter_mut().enumerate() {
            if !ready[2 + i] {
                continue;
            }
            loop {
                match c.up.recv(&mut buf) {
                    Ok(n) => {
                        let _ = sock.send_to(&buf[..n], c.peer);
                        c.last = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // WouldBlock, or an ICMP error of an earlier datagram: nothing more now.
                    Err(_) => break,
                }
            }
        }
        if ready[1] {
            loop {
                let (n, peer) = match sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let i = match clients.iter().position(|c| c.peer == peer) {
                    Some(i) => i,
                    None => {
                        if clients.len() >= sh.max {
                            // The least recently heard-from client makes room.
                            if let Some(old) = clients
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, c)| c.last)
                                .map(|(i, _)| i)
                            {
                                clients.swap_remove(old);
                                sh.conns.done();
                            }
                        }
                        let up = sh.connect_place.run(move |_| {
                            let any: SocketAddr = if target.is_ipv4() {
                                "0.0.0.0:0".parse().expect("address")
                            } else {
                                "[::]:0".parse().expect("address")
                            };
                            let u = UdpSocket::bind(any)?;
                            u.connect(target)?;
                            u.set_nonblocking(true)?;
                            Ok(u)
                        });
                        match up {
                            Ok(up) => {
                                sh.conns.try_add(usize::MAX);
                                clients.push(Client {
                                    peer,
                                    up,
                                    last: Instant::now(),
                                });
                                clients.len() - 1
                            }
                            Err(e) => {
                                eprintln!("bivy: proxy {}: udp to {target}: {e}", sh.label);
                                continue;
                            }
                        }
                    }
                };
                let _ = clients[i].up.send(&buf[..n]);
                clients[i].last = Instant::now();
            }
        }
        let before = clients.len();
        clients.retain(|c| c.last.elapsed() < UDP_IDLE);
        for _ in clients.len()..before {
            sh.conns.done();
        }
    }
    for _ in &clients {
        sh.conns.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> UnixOwner {
        UnixOwner {
            uid: 0,
            gid: 0,
            mode: 0o644,
        }
    }

    fn spec(listen: Vec<Addr>, connect: Vec<Addr>) -> Spec {
        Spec {
            label: "test/p".into(),
            listen,
            listen_place: Place::Host,
            connect,
            connect_place: Place::Host,
            owner: owner(),
            max_conns: 4,
        }
    }

    /// A tcp echo server on loopback, serving `n` connections.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().expect("clone");
                    let _ = io::copy(&mut r, &mut s);
                });
            }
        });
        a
    }

    fn free_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
    }

    #[test]
    fn tcp_relay_both_ways_and_close() {
        let target = echo_server();
        let front = free_port();
        let p = Proxy::start(spec(vec![Addr::Tcp(front)], vec![Addr::Tcp(target)])).unwrap();
        let mut conns: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(front).expect("connect"))
            .collect();
        for (i, c) in conns.iter_mut().enumerate() {
            let msg = format!("hello {i}");
            c.write_all(msg.as_bytes()).unwrap();
            let mut got = vec![0; msg.len()];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, msg.as_bytes());
        }
        // A big transfer with a half-close: everything comes back, then EOF.
        let mut c = TcpStream::connect(front).unwrap();
        let data: Vec<u8> = (0..2_000_000u32).map(|i| i as u8).collect();
        let mut w = c.try_clone().unwrap();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            w.write_all(&d2).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        t.join().unwrap();
        assert!(back == data, "{} bytes back of {}", back.len(), data.len());
        // Limit: 4 at once (3 open + 1 more); the next is closed at once.
        std::thread::sleep(Duration::from_millis(200));
        let _fourth = TcpStream::connect(front).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut fifth = TcpStream::connect(front).unwrap();
        fifth
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(fifth.read(&mut b), Ok(0) | Err(_)));
        drop(p);
        // Closed: the listener is gone and open connections end.
        assert!(TcpStream::connect(front).is_err());
        conns[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(matches!(conns[0].read(&mut b), Ok(0) | Err(_)));
    }

    #[test]
    fn unix_listener_file_is_made_and_removed() {
        let dir = std::env::temp_dir().join(format!("bivy-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let target = echo_server();
        let p = Proxy::start(spec(
            vec![Addr::Unix(UnixPath::Path(path.to_str().unwrap().into()))],
            vec![Addr::Tcp(target)],
        ))
        .unwrap();
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.permissions().mode() & 0o777, 0o644);
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        drop(p);
        assert!(!path.exists());
        // A regular file at the path is not replaced.
        std::fs::write(&path, b"x").unwrap();
        let e = Proxy::start(spec(
            vec![Addr::Unix(UnixPath::Path(path.to_str().unwrap().into()))],
            vec![Addr::Tcp(target)],
        ))
        .err()
        .expect("refused");
        assert!(e.to_string().contains("not a socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn udp_relay() {
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 1500];
            while let Ok((n, from)) = echo.recv_from(&mut b) {
                let _ = echo.send_to(&b[..n], from);
            }
        });
        let front = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let p = Proxy::start(spec(vec![Addr::Udp(front)], vec![Addr::Udp(target)])).unwrap();
        for i in 0..2 {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let msg = format!("datagram {i}");
            c.send_to(msg.as_bytes(), front).unwrap();
            let mut b = [0u8; 100];
            let (n, from) = c.recv_from(&mut b).unwrap();
            assert_eq!(from, front);
            assert_eq!(&b[..n], msg.as_bytes());
        }
        assert_eq!(p.connections(), 2);
        drop(p);
        assert!(UdpSocket::bind(front).is_ok(), "the port is free again");
    }

    #[test]
    fn mismatched_kinds_are_refused() {
        let a = free_port();
        assert!(Proxy::start(spec(vec![Addr::Tcp(a)], vec![Addr::Udp(a)])).is_err());
        assert!(Proxy::start(spec(vec![Addr::Tcp(a)], vec![])).is_err());
    }
}
