//! The HTTPS listener (`core.https_address`): the daemon's certificate, binding and rebinding
//! live, the TLS handshake per connection, the open connections by client certificate (so a
//! removed certificate loses them at once), and the slow-down of repeated failed logins.
//!
//! Each connection is admitted against the per-address limits first (`conns`), then gets a
//! thread whose handshake must finish within [`HANDSHAKE_TIMEOUT`]; after it, the connection is
//! served by the same HTTP and WebSocket code as the unix socket, with the caller known by the
//! certificate it presented (`access::Caller`). When every network slot is taken, a new
//! connection closes the oldest one whose client is not trusted (connections past their
//! handshake with no certificate or an unknown one: idle keep-alive ones held by anyone), else
//! the oldest one still in its handshake, and takes its place: connections held open from many
//! addresses cannot keep a trusted client out, since a client's own handshake (a few
//! milliseconds) would have to be the oldest of them all to be closed. A connection that shows
//! a trusted certificate leaves its address's share (`conns::Slot::leave_peer_share`): one
//! host's many parallel execs are not refused.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::access::Caller;
use super::conns::{self, Peer};
use super::response::{Error, Result};
use super::Daemon;
use crate::tls::{self, CertKind, Identity};
use crate::util::lock;
use crate::util::stream::Stream;

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The port when `core.https_address` names none (LXD's).
pub const DEFAULT_PORT: u16 = 8443;
/// Failed logins an address may make before answers slow down.
const FREE_FAILURES: u32 = 3;
/// The longest wait before a login from a failing address is checked.
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(16);
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Addresses whose failures are remembered at once (oldest forgotten first past it).
const MAX_FAILING_ADDRESSES: usize = 4096;

/// The listener's state: one per daemon.
pub struct Https {
    /// The daemon's key pair and TLS settings, loaded (or made, on the first start) by a thread
    /// of its own so that start-up does not wait on key generation and two fsyncs.
    tls: OnceLock<std::result::Result<(Identity, tls::Server), String>>,
    running: Mutex<Option<Running>>,
    limits: Arc<conns::Limits>,
    /// Connections past their handshake, oldest first (by id).
    open: Mutex<BTreeMap<u64, OpenConn>>,
    /// Connections in their TLS handshake, oldest first (by id), with a handle to close each.
    handshaking: Mutex<BTreeMap<u64, TcpStream>>,
    next_id: AtomicU64,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// An open connection: the fingerprint of its client certificate, and a handle to close it.
type OpenConn = (Option<String>, Box<dyn Stream>);

struct Running {
    text: String,
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
}

impl Running {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread blocked in accept(2) (EINVAL); it sees `stop` and drops the socket.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

static HTTPS: OnceLock<Arc<Https>> = OnceLock::new();

/// The daemon's listener state (after [`init`]).
pub fn get() -> &'static Arc<Https> {
    HTTPS.get().expect("https::init runs at start")
}

/// Load the daemon's key pair (`server.crt`/`server.key` in its directory), making it on the
/// first start, or use the pair the administrator put there. This happens on a thread of its
/// own; what needs the pair waits for it ([`Https::identity`]). A pair that cannot be loaded is
/// logged, and the listener and tokens then answer with that error.
pub fn init(dir: &Path) -> std::result::Result<(), String> {
    let h = Arc::new(Https {
        tls: OnceLock::new(),
        running: Mutex::new(None),
        limits: Arc::new(conns::Limits::default()),
        open: Mutex::new(BTreeMap::new()),
        handshaking: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
        failures: Mutex::new(HashMap::new()),
    });
    let _ = HTTPS.set(h.clone());
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("identity".into())
        .spawn(move || {
            let made = Identity::load_or_make(
                &dir.join("server.crt"),
                &dir.join("server.key"),
                CertKind::Server,
            )
            .and_then(|id| tls::Server::new(&id).map(|s| (id, s)))
            .map_err(|e| format!("server certificate: {e}"));
            if let Err(e) = &made {
                eprintln!("bivy: {e}");
            }
            let _ = h.tls.set(made);
        })
        .map_err(|e| format!("starting threads: {e}"))?;
    Ok(())
}

/// Parse a `core.https_address`: `IP:PORT`, `[IPv6]:PORT`, a bare IP (port 8443), or `:PORT`
/// (every address).
pub fn parse_address(s: &str) -> std::result::Result<SocketAddr, String> {
    let s = s.trim();
    let bad = || format!("Invalid address {s:?}: expected IP, IP:PORT, [IPv6]:PORT or :PORT");
    if let Some(port) = s.strip_prefix(':').filter(|p| !p.contains(':')) {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::from([0u16; 8]), port));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| bad())
}

impl Https {
    /// The daemon's key pair and TLS settings (waiting for them at start).
    fn tls(&self) -> std::result::Result<&(Identity, tls::Server), String> {
        self.tls.wait().as_ref().map_err(Clone::clone)
    }

    /// The daemon's certificate and key, when they could be loaded or made.
    pub fn identity(&self) -> Option<&Identity> {
        self.tls().ok().map(|(id, _)| id)
    }

    /// Serve on `text` from now on (`""`: stop listening). A new address is bound before the old
    /// one is let go, so a failure (a port in use) leaves the old listener serving.
    pub fn set_address(&self, d: &Arc<Daemon>, text: &str) -> Result<()> {
        let mut running = lock(&self.running);
        if text.trim().is_empty() {
            if let Some(r) = running.take() {
                r.stop();
            }
            return Ok(());
        }
        let addr = parse_address(text).map_err(Error::BadRequest)?;
        self.tls().map_err(Error::Internal)?;
        if running.as_ref().is_some_and(|r| r.addr == addr) {
            if let Some(r) = running.as_mut() {
                r.text = text.to_string();
            }
            return Ok(());
        }
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            // The old listener may hold the port (same port, overlapping address): let it go
            // and try again, and take it back if that fails too.
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && running
                        .as_ref()
                        .is_some_and(|r| r.addr.port() == addr.port()) =>
            {
                let old = running.take().expect("checked");
                let (old_text, old_addr) = (old.text.clone(), old.addr);
                old.stop();
                match bind_retrying(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        if let Ok(l) = bind_retrying(old_addr) {
                            *running = Some(self.start(d, old_text, old_addr, l));
                        }
                        return Err(bind_error(addr, &e));
                    }
                }
            }
            Err(e) => return Err(bind_error(addr, &e)),
        };
        let bound = listener.local_addr().unwrap_or(addr);
        if let Some(old) = running.take() {
            old.stop();
        }
        *running = Some(self.start(d, text.to_string(), bound, listener));
        Ok(())
    }

    fn start(&self, d: &Arc<Daemon>, text: String, addr: SocketAddr, l: TcpListener) -> Running {
        let listener = Arc::new(l);
        let stop = Arc::new(AtomicBool::new(false));
        let (dc, lc, sc) = (d.clone(), listener.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("https".into())
            .spawn(move || accept_loop(&dc, &lc, &sc));
        if let Err(e) = spawned {
            eprintln!("bivy: starting the HTTPS listener thread: {e}");
        }
        Running {
            text,
            addr,
            listener,
            stop,
        }
    }

    /// The address actually bound (its port resolved), when listening.
    pub fn bound(&self) -> Option<SocketAddr> {
        lock(&self.running).as_ref().map(|r| r.addr)
    }

    /// `environment.addresses`: the addresses clients can reach the listener on. A wildcard
    /// bind lists the host's global addresses, leaving out loopback, link-local and the
    /// addresses of bridges and container or VPN plumbing (veth, docker, virbr, tun).
    pub fn addresses(&self) -> Vec<String> {
        let Some(addr) = self.bound() else {
            return Vec::new();
        };
        let fmt = |ip: IpAddr| SocketAddr::new(ip, addr.port()).to_string();
        if !addr.ip().is_unspecified() {
            return vec![fmt(addr.ip())];
        }
        host_addresses(addr.is_ipv6())
            .into_iter()
            .map(fmt)
            .collect()
    }

    /// Close the connection that has been in its TLS handshake longest (all the network slots
    /// are taken); false when none is.
    fn close_oldest_handshake(&self) -> bool {
        let Some((_, oldest)) = lock(&self.handshaking).pop_first() else {
            return false;
        };
        let _ = oldest.shutdown(std::net::Shutdown::Both);
        true
    }

    /// Close the oldest connection past its handshake whose client is not trusted (no
    /// certificate, or one not in the trust store): all the network slots are taken, and
    /// untrusted clients holding them (idle keep-alive ones, say) must not keep a trusted one
    /// out. False when none is.
    fn close_oldest_untrusted(&self, d: &Daemon) -> bool {
        // The trust store is read without `open` held (a revoke holds them the other way).
        let candidates: Vec<(u64, Option<String>)> = lock(&self.open)
            .iter()
            .map(|(id, (fp, _))| (*id, fp.clone()))
            .collect();
        let Some(id) = candidates
            .into_iter()
            .find(|(_, fp)| {
                fp.as_deref()
                    .is_none_or(|f| !crate::instance::trust::is_trusted(d, f))
            })
            .map(|(id, _)| id)
        else {
            return false;
        };
        match lock(&self.open).remove(&id) {
            Some((_, s)) => {
                let _ = s.shutdown_both();
                true
            }
            None => false,
        }
    }

    /// Close every connection made with this certificate (it was removed from the trust store).
    pub fn revoke(&self, fingerprint: &str) {
        for (fp, s) in lock(&self.open).values() {
            if fp.as_deref() == Some(fingerprint) {
                let _ = s.shutdown_both();
            }
        }
    }

    /// Before checking a password or token from `ip`: wait longer the more it failed lately.
    pub fn slow_down(&self, ip: IpAddr) {
        let n = match lock(&self.failures).get(&ip) {
            Some((n, at)) if at.elapsed() < FAILURE_MEMORY => *n,
            _ => 0,
        };
        if n >= FREE_FAILURES {
            let secs = 1u64 << (n - FREE_FAILURES).min(4);
            std::thread::sleep(Duration::from_secs(secs).min(MAX_FAILURE_DELAY));
        }
    }

    /// Record a refused login from `ip` (`ok`: a successful one, which clears the record).
    pub fn login_result(&self, ip: IpAddr, ok: bool) {
        let mut f = lock(&self.failures);
        if ok {
            f.remove(&ip);
            return;
        }
        if f.len() >= MAX_FAILING_ADDRESSES && !f.contains_key(&ip) {
            f.retain(|_, (_, at)| at.elapsed() < FAILURE_MEMORY);
            if f.len() >= MAX_FAILING_ADDRESSES {
                if let Some(oldest) = f.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                    f.remove(&oldest);
                }
            }
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_MEMORY {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
    }
}

/// A just-released port can take a moment to bind again.
fn bind_retrying(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..20 {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(last.unwrap_or_else(|| io::Error::other("bind failed")))
}

fn bind_error(addr: SocketAddr, e: &io::Error) -> Error {
    let why = e.to_string();
    let why = why
        .split(" (os error")
        .next()
        .unwrap_or(&why)
        .to_lowercase();
    Error::BadRequest(format!("Cannot listen on https socket {addr}: {why}"))
}

fn accept_loop(d: &Arc<Daemon>, listener: &TcpListener, stop: &AtomicBool) {
    let h = get();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) || d.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let Some(tcp) = conns::accepted(conn) else {
            continue;
        };
        let Ok(peer) = tcp.peer_addr() else { continue };
        let ip = canonical(peer.ip());
        // Past the limits the connection is closed before any TLS work is spent on it, unless
        // the oldest untrusted connection, or else the oldest handshake in progress, gives up
        // its place (see the module doc).
        let slot = match h.limits.admit(Peer::Addr(ip)) {
            Ok(slot) => slot,
            Err(conns::Refused::Full(_))
                if h.close_oldest_untrusted(d) || h.close_oldest_handshake() =>
            {
                match h.limits.admit_over(Peer::Addr(ip)) {
                    Ok(slot) => slot,
                    Err(_) => continue,
                }
            }
            Err(_) => continue,
        };
        let dc = d.clone();
        let _ = crate::util::pool::spawn("https-conn", move || {
            let mut slot = slot;
            serve(&dc, tcp, SocketAddr::new(ip, peer.port()), &mut slot);
            drop(slot);
            crate::instance::events::set_requestor(None);
        });
    }
}

/// An IPv4 client on a dual-stack socket as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn serve(d: &Arc<Daemon>, tcp: TcpStream, peer: SocketAddr, slot: &mut conns::Slot) {
    let h = get();
    let _ = tcp.set_nodelay(true);
    if tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err()
        || tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok((_, server)) = h.tls() else { return };
    let handshake = h.next_id.fetch_add(1, Ordering::Relaxed);
    if let Ok(handle) = tcp.try_clone() {
        lock(&h.handshaking).insert(handshake, handle);
    }
    let accepted = server.accept(tcp);
    lock(&h.handshaking).remove(&handshake);
    let Ok(s) = accepted else {
        return;
    };
    let _ = s.tcp().set_read_timeout(None);
    let _ = s.tcp().set_write_timeout(None);
    let cert = s.peer_certificate();
    let fingerprint = cert.as_deref().map(tls::fingerprint);
    if fingerprint
        .as_deref()
        .is_some_and(|f| crate::instance::trust::is_trusted(d, f))
    {
        slot.leave_peer_share();
    }
    let id = h.next_id.fetch_add(1, Ordering::Relaxed);
    match s.try_clone_stream() {
        Ok(handle) => {
            lock(&h.open).insert(id, (fingerprint.clone(), handle));
        }
        Err(_) => return,
    }
    crate::instance::events::set_requestor(Some(crate::instance::events::Requestor {
        username: fingerprint.clone().unwrap_or_default(),
        protocol: "tls".into(),
        address: peer.to_string(),
    }));
    let caller = Caller::Remote {
        addr: peer.ip(),
        cert,
        fingerprint,
    };
    let limits = crate::http::Limits::default();
    crate::http::serve_connection(Box::new(s), &limits, &|req| {
        super::routes::handle_as(d, req, &caller)
    });
    lock(&h.open).remove(&id);
}

/// The host's global addresses (IPv4, and IPv6 too when `v6`), leaving out loopback,
/// link-local, and interfaces that are bridges or container or tunnel plumbing.
fn host_addresses(v6: bool) -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let name = a.interface_name.as_str();
        let flags = a.flags;
        if !flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
            || flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
            || is_plumbing(name)
        {
            continue;
        }
        let Some(sa) = a.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(s6) = sa.as_sockaddr_in6().filter(|_| v6) {
            IpAddr::V6(s6.ip())
        } else {
            continue;
        };
        let link_local = match ip {
            IpAddr::V4(a) => a.is_link_local(),
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        if !link_local && !ip.is_loopback() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Interfaces whose addresses a remote client cannot use to reach this host.
fn is_plumbing(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "veth", "docker", "virbr", "lxdbr", "bivybr", "br-", "cni", "flannel", "tun", "tap", "vnet",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        let a = |s: &str| parse_address(s).map(|a| a.to_string());
        assert_eq!(a("127.0.0.1:9443").unwrap(), "127.0.0.1:9443");
        assert_eq!(a("127.0.0.1").unwrap(), "127.0.0.1:8443");
        assert_eq!(a("0.0.0.0:8443").unwrap(), "0.0.0.0:8443");
        assert_eq!(a("[::]:8443").unwrap(), "[::]:8443");
        assert_eq!(a("[::1]").unwrap(), "[::1]:8443");
        assert_eq!(a("::").unwrap(), "[::]:8443");
        assert_eq!(a(":9000").unwrap(), "[::]:9000");
        for bad in ["", "host.example:8443", "127.0.0.1:99999", ":x", "1.2.3.4:"] {
            assert!(a(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plumbing_interfaces_are_left_out() {
        for n in ["veth1234", "docker0", "virbr0", "lxdbr0", "tun0"] {
            assert!(is_plumbing(n), "{n}");
        }
        assert!(!is_plumbing("eth0"));
        assert!(!is_plumbing("enp1s0"));
        // Whatever the host has, no loopback or link-local address is listed.
        for ip in host_addresses(true) {
            assert!(!ip.is_loopback(), "{ip}");
        }
    }
}
