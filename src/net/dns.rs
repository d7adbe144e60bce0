//! The DNS server of one managed bridge, in the daemon (LXD runs dnsmasq for this).
//!
//! It answers `<name>.<domain>` (and `<name>` alone, as dnsmasq does for DHCP names) from the
//! bridge's [`LeaseStore`], `_gateway.<domain>` with the bridge's address, NXDOMAIN for any other
//! name under the domain, and forwards everything else to upstream servers (the host's, from
//! `/etc/resolv.conf`: [`upstreams_from_resolv_conf`]). No cache.
//!
//! Layers, the first two pure and tested without sockets:
//! - wire (`dns/wire.rs`): [`Message::parse`] reads a whole message (header, questions,
//!   records), names with compression pointers that must point strictly backwards (so a loop cannot exist) and at most
//!   255 bytes long; [`build_reply`] writes answers (A, AAAA, PTR) and errors (NXDOMAIN, SERVFAIL,
//!   REFUSED, FORMERR, NOTIMP), echoing the question and an EDNS OPT record when the query had
//!   one. Nothing panics on any input. The client side ([`build_query`], [`labels_of`],
//!   [`Record::rdata_name`]) serves bivy's own resolver, [`super::resolve`].
//! - [`decide`] (here): answer locally or forward; [`Inflight`] (`dns/forward.rs`, with the
//!   upstream servers of the host): the forwarded UDP queries, each sent
//!   upstream under a fresh random id (so concurrent clients with equal ids do not collide) and
//!   matched back by id, upstream address and question; a query unanswered after
//!   [`UPSTREAM_TIMEOUT`] is retried once on the next upstream, then gets SERVFAIL.
//! - [`DnsServer`]: UDP and TCP on `listen:port`. Threads with blocking sockets and short read
//!   timeouts: one for client UDP, one per address family for upstream replies, one accepting
//!   TCP and one per TCP connection (at most [`MAX_TCP_CONNS`]). Bounds: [`MAX_INFLIGHT`]
//!   forwarded UDP queries, a per-source token bucket ([`RATE_PER_SEC`], burst
//!   [`RATE_BURST`], [`MAX_SOURCES`] sources tracked), UDP queries up to 4096 bytes, TCP
//!   messages up to 65535, TCP idle timeout [`TCP_IDLE`].
//!
//! Limits: one upstream socket per address family (the port is not randomised per query; the
//! id is random, and replies must match the upstream address and the question), no DNSSEC
//! validation (replies are passed through). Reverse lookups (`in-addr.arpa` PTR) of a lease's
//! address answer its `<name>.<domain>`; other addresses are forwarded.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::leases::LeaseStore;

mod forward;
mod wire;

pub use forward::{
    host_upstreams, random_id, upstreams_from_resolv_conf, Expired, Inflight, MAX_INFLIGHT,
    UPSTREAM_TIMEOUT,
};
pub use wire::{
    build_query, build_reply, error_header, labels_of, name_string, read_framed, read_name,
    same_name, write_framed, Answer, DnsError, Header, Message, Question, Record, CLASS_ANY,
    CLASS_IN, LOCAL_TTL, RCODE_FORMERR, RCODE_NOERROR, RCODE_NOTIMP, RCODE_NXDOMAIN, RCODE_REFUSED,
    RCODE_SERVFAIL, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_CNAME, TYPE_OPT, TYPE_PTR,
};

/// Largest UDP query read from a client.
pub const MAX_UDP_QUERY: usize = 4096;
/// Largest message (TCP, and upstream UDP replies).
pub const MAX_MESSAGE: usize = 65535;
/// Per-source rate: tokens per second and bucket size.
pub const RATE_PER_SEC: f64 = 200.0;
pub const RATE_BURST: f64 = 400.0;
/// Sources tracked by the rate limiter.
pub const MAX_SOURCES: usize = 4096;
/// Concurrent TCP connections.
pub const MAX_TCP_CONNS: usize = 32;
/// A TCP connection idle (or a message not arriving) this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

const TICK: Duration = Duration::from_millis(200);

/// What to do with a client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send this reply.
    Reply(Vec<u8>),
    /// Forward the query upstream.
    Forward(Box<Message>),
    /// Drop it (a response, or no header).
    Drop,
}

/// Decide how to answer message `b` for a bridge owning `domain`, whose address is `gateway`;
/// `lookup` gives a host's addresses (from the lease store).
pub fn decide(
    b: &[u8],
    domain: &str,
    gateway: Ipv4Addr,
    lookup: &dyn Fn(&str) -> Vec<IpAddr>,
) -> Decision {
    decide_with(b, domain, gateway, lookup, &|_| None)
}

/// [`decide`], with `reverse` giving the host name that holds an IPv4 address (a lease), for
/// PTR queries under `in-addr.arpa`.
pub fn decide_with(
    b: &[u8],
    domain: &str,
    gateway: Ipv4Addr,
    lookup: &dyn Fn(&str) -> Vec<IpAddr>,
    reverse: &dyn Fn(Ipv4Addr) -> Option<String>,
) -> Decision {
    let m = match query(b) {
        Ok(m) => m,
        Err(d) => return d,
    };
    let q = &m.questions[0];
    let dom: Vec<String> = domain
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let lower: Vec<Vec<u8>> = q.labels.iter().map(|l| l.to_ascii_lowercase()).collect();
    if let Some(ip) = reverse_v4(&lower) {
        if q.qtype == TYPE_PTR || q.qtype == TYPE_ANY {
            let name = if ip == gateway {
                Some("_gateway".to_string())
            } else {
                reverse(ip)
            };
            let fqdn = name.map(|n| match dom.is_empty() {
                true => n,
                false => format!("{n}.{}", dom.join(".")),
            });
            if let Some(answer) = fqdn.as_deref().and_then(Answer::ptr) {
                if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
                    return Decision::Reply(build_reply(&m, RCODE_REFUSED, false, &[]));
                }
                return Decision::Reply(build_reply(&m, RCODE_NOERROR, true, &[answer]));
            }
        }
        return Decision::Forward(Box::new(m));
    }
    let under_domain = !dom.is_empty()
        && lower.len() >= dom.len()
        && lower[lower.len() - dom.len()..]
            .iter()
            .zip(&dom)
            .all(|(a, b)| a == b.as_bytes());
    let host = if under_domain {
        match lower.len() - dom.len() {
            // The domain itself: exists, no records of the asked type.
            0 => return Decision::Reply(local_reply(&m, q, Some(Vec::new()))),
            1 => Some(&lower[0]),
            _ => return Decision::Reply(local_reply(&m, q, None)),
        }
    } else if lower.len() == 1 {
        Some(&lower[0])
    } else {
        None
    };
    if let Some(host) = host {
        let addrs = match std::str::from_utf8(host) {
            Ok("_gateway") => vec![IpAddr::V4(gateway)],
            Ok(h) if !h.is_empty() => lookup(h),
            _ => Vec::new(),
        };
        if under_domain || !addrs.is_empty() {
            let found = (!addrs.is_empty()).then_some(addrs);
            return Decision::Reply(local_reply(&m, q, found));
        }
    }
    Decision::Forward(Box::new(m))
}

/// A query this server takes: one question, a standard query; else the answer to give.
fn query(b: &[u8]) -> Result<Message, Decision> {
    let m = match Message::parse(b) {
        Ok(m) => m,
        Err(_) => {
            return Err(error_header(b, RCODE_FORMERR).map_or(Decision::Drop, Decision::Reply))
        }
    };
    if m.header.is_response() {
        return Err(Decision::Drop);
    }
    if m.header.opcode() != 0 {
        return Err(Decision::Reply(build_reply(&m, RCODE_NOTIMP, false, &[])));
    }
    if m.questions.len() != 1 {
        return Err(Decision::Reply(build_reply(&m, RCODE_FORMERR, false, &[])));
    }
    Ok(m)
}

/// How a bridge with `dns.mode=none` answers `b`: every query forwarded, no local names (as
/// LXD's dnsmasq then runs without its `-s DOMAIN`).
pub fn decide_forward_only(b: &[u8]) -> Decision {
    match query(b) {
        Ok(m) => Decision::Forward(Box::new(m)),
        Err(d) => d,
    }
}

/// The IPv4 address of a reverse name (`d.c.b.a.in-addr.arpa`, lowercased labels).
fn reverse_v4(labels: &[Vec<u8>]) -> Option<Ipv4Addr> {
    let [d, c, b, a, arpa1, arpa2] = labels else {
        return None;
    };
    if arpa1 != b"in-addr" || arpa2 != b"arpa" {
        return None;
    }
    let octet = |l: &Vec<u8>| -> Option<u8> {
        let s = std::str::from_utf8(l).ok()?;
        // Decimal without leading zeros, as reverse names are written.
        (s == "0" || !s.starts_with('0')).then_some(())?;
        s.parse().ok()
    };
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

/// A local answer for `q`: None is NXDOMAIN; otherwise the A records when asked for A, the
/// AAAA records when asked for AAAA, both for ANY (class IN or ANY), an empty NOERROR for other
/// types.
fn local_reply(m: &Message, q: &Question, addrs: Option<Vec<IpAddr>>) -> Vec<u8> {
    if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        return build_reply(m, RCODE_REFUSED, false, &[]);
    }
    match addrs {
        None => build_reply(m, RCODE_NXDOMAIN, true, &[]),
        Some(addrs) => {
            let any = q.qtype == TYPE_ANY;
            let answers: Vec<Answer> = addrs
                .into_iter()
                .filter_map(|a| match a {
                    IpAddr::V4(v4) if any || q.qtype == TYPE_A => Some(Answer::a(v4)),
                    IpAddr::V6(v6) if any || q.qtype == TYPE_AAAA => Some(Answer::aaaa(v6)),
                    _ => None,
                })
                .collect();
            build_reply(m, RCODE_NOERROR, true, &answers)
        }
    }
}

/// A per-source token bucket.
#[derive(Debug, Default)]
pub struct RateLimiter {
    sources: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// May `src` send one more query at `now`?
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if !self.sources.contains_key(&src) && self.sources.len() >= MAX_SOURCES {
            // Forget sources whose bucket has refilled (idle over the burst time).
            let idle = Duration::from_secs_f64(RATE_BURST / RATE_PER_SEC);
            self.sources
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < idle);
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, last) = self.sources.entry(src).or_insert((RATE_BURST, now));
        let dt = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + dt * RATE_PER_SEC).min(RATE_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The configuration of one bridge's DNS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub listen: IpAddr,
    /// 53.
    pub port: u16,
    /// The bridge (named in messages).
    pub ifname: String,
    pub domain: String,
    /// The bridge's address (`_gateway.<domain>`).
    pub gateway: Ipv4Addr,
    pub upstreams: Vec<SocketAddr>,
    /// `dns.mode=managed`: the instances' names (and `_gateway`) answered here; `none`: every
    /// query forwarded.
    pub local_names: bool,
}

/// The process holding local `proto` (`udp` or `tcp`) port `port` on `ip` (or on the wildcard
/// address), from `/proc/thread-self/net/{proto,proto6}` and `/proc/*/fd`: "process PID (COMM)".
pub fn port_holder(proto: &str, ip: IpAddr, port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for file in [proto.to_owned(), format!("{proto}6")] {
        let Ok(t) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
            continue;
        };
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            // TCP: listening sockets only (state 0A).
            if proto == "tcp" && f[3] != "0A" {
                continue;
            }
            let Some((a, p)) = f[1].split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            let addr = proc_addr(a);
            if addr.is_some_and(|x| x == ip || x.is_unspecified()) {
                inodes.push(f[9].to_owned());
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    let comm = std::fs::read_to_string(p.path().join("comm"))
                        .map(|c| c.trim().to_owned())
                        .unwrap_or_default();
                    return Some(format!("process {pid} ({comm})"));
                }
            }
        }
    }
    None
}

/// An address of /proc/net/{udp,tcp}[6]: the kernel prints the network-order words as host
/// integers.
fn proc_addr(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(hex, 16).ok()?.to_ne_bytes(),
        ))),
        32 => {
            let mut o = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn bind_error(e: io::Error, proto: &str, addr: SocketAddr, ifname: &str) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        let who = port_holder(proto, addr.ip(), addr.port())
            .map(|h| format!(" by {h}"))
            .unwrap_or_default();
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "DNS for {ifname}: {addr} ({proto}) is already in use{who}; stop that DNS server"
            ),
        )
    } else {
        io::Error::new(
            e.kind(),
            format!("DNS for {ifname}: binding {addr} ({proto}): {e}"),
        )
    }
}

/// The sockets to the upstream servers.
struct Upstreams {
    addrs: Vec<SocketAddr>,
    v4: UdpSocket,
    v6: Option<UdpSocket>,
}

impl Upstreams {
    fn send(&self, idx: usize, buf: &[u8]) {
        let Some(to) = self.addrs.get(idx) else {
            return;
        };
        let sock = match to {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        };
        if let Some(s) = sock {
            let _ = s.send_to(buf, to);
        }
    }
}

struct Shared {
    cfg: DnsConfig,
    store: Arc<Mutex<LeaseStore>>,
    stop: AtomicBool,
    inflight: Mutex<Inflight>,
    upstreams: Upstreams,
    client_udp: UdpSocket,
    tcp_conns: AtomicUsize,
    tcp_streams: Mutex<HashMap<u64, TcpStream>>,
    v6: Option<V6Lookup>,
}

/// A host's IPv6 addresses, by name (the instance layer reads them from the instance's own
/// network namespace: SLAAC leaves no lease to read them from).
pub type V6Lookup = Arc<dyn Fn(&str) -> Vec<Ipv6Addr> + Send + Sync>;

impl Shared {
    fn decide(&self, msg: &[u8]) -> Decision {
        if !self.cfg.local_names {
            return decide_forward_only(msg);
        }
        let store = &self.store;
        let lookup = |name: &str| {
            let mut out: Vec<IpAddr> = store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lookup_name(name)
                .into_iter()
                .map(IpAddr::V4)
                .collect();
            if let Some(v6) = &self.v6 {
                out.extend(v6(name).into_iter().map(IpAddr::V6));
            }
            out
        };
        let reverse = |ip: Ipv4Addr| {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lookup_addr(ip)
        };
        decide_with(msg, &self.cfg.domain, self.cfg.gateway, &lookup, &reverse)
    }
}

/// A running DNS server of one bridge; [`DnsServer::stop`] (or drop) ends its threads.
pub struct DnsServer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl DnsServer {
    /// Serve DNS on `cfg.listen:cfg.port` (UDP and TCP). A port already taken is an
    /// `AddrInUse` error naming the address, the port and, when found, the process holding it.
    pub fn start(
        cfg: DnsConfig,
        store: Arc<Mutex<LeaseStore>>,
        v6: Option<V6Lookup>,
    ) -> io::Result<DnsServer> {
        let mut cfg = cfg;
        let me = SocketAddr::new(cfg.listen, cfg.port);
        // Never forward to ourselves.
        cfg.upstreams
            .retain(|u| *u != me && !(u.port() == cfg.port && u.ip().is_unspecified()));
        let udp = UdpSocket::bind(me).map_err(|e| bind_error(e, "udp", me, &cfg.ifname))?;
        let tcp = TcpListener::bind(me).map_err(|e| bind_error(e, "tcp", me, &cfg.ifname))?;
        udp.set_read_timeout(Some(TICK))?;
        let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        v4.set_read_timeout(Some(TICK))?;
        let up6 = if cfg.upstreams.iter().any(SocketAddr::is_ipv6) {
            let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
            s.set_read_timeout(Some(TICK))?;
            Some(s)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            inflight: Mutex::new(Inflight::new(cfg.upstreams.len())),
            upstreams: Upstreams {
                addrs: cfg.upstreams.clone(),
                v4,
                v6: up6,
            },
            client_udp: udp,
            cfg,
            store,
            stop: AtomicBool::new(false),
            tcp_conns: AtomicUsize::new(0),
            tcp_streams: Mutex::new(HashMap::new()),
            v6,
        });
        let mut server = DnsServer {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let name = |what: &str| format!("dns-{what}-{}", shared.cfg.ifname);
        let s = shared.clone();
        server.threads.push(
            std::thread::Builder::new()
                .name(name("udp"))
                .spawn(move || udp_loop(&s))?,
        );
        let s = shared.clone();
        server.threads.push(
            std::thread::Builder::new()
                .name(name("up4"))
                .spawn(move || upstream_loop(&s, false))?,
        );
        if shared.upstreams.v6.is_some() {
            let s = shared.clone();
            server.threads.push(
                std::thread::Builder::new()
                    .name(name("up6"))
                    .spawn(move || upstream_loop(&s, true))?,
            );
        }
        let s = shared.clone();
        server.threads.push(
            std::thread::Builder::new()
                .name(name("tcp"))
                .spawn(move || tcp_loop(&s, tcp))?,
        );
        Ok(server)
    }

    /// The upstream servers used (after removing our own address).
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.shared.upstreams.addrs
    }

    /// Stop every thread and wait for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for s in self
            .shared
            .tcp_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.tcp_conns.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn udp_loop(s: &Shared) {
    let mut buf = vec![0u8; MAX_UDP_QUERY + 1];
    let mut rate = RateLimiter::default();
    while !s.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let expired = s
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now);
        for e in expired {
            match e {
                Expired::Retry { upstream, query } => s.upstreams.send(upstream, &query),
                Expired::Fail { client, reply } => {
                    let _ = s.client_udp.send_to(&reply, client);
                }
            }
        }
        let (n, from) = match s.client_udp.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                eprintln!("dns {}: receive: {e}", s.cfg.ifname);
                std::thread::sleep(TICK);
                continue;
            }
        };
        if n > MAX_UDP_QUERY || !rate.allow(from.ip(), Instant::now()) {
            continue;
        }
        let msg = &buf[..n];
        match s.decide(msg) {
            Decision::Drop => {}
            Decision::Reply(r) => {
                let _ = s.client_udp.send_to(&r, from);
            }
            Decision::Forward(m) => {
                if s.upstreams.addrs.is_empty() {
                    let _ = s
                        .client_udp
                        .send_to(&build_reply(&m, RCODE_REFUSED, false, &[]), from);
                    continue;
                }
                let q = s.inflight.lock().unwrap_or_else(|e| e.into_inner()).add(
                    from,
                    &m,
                    msg,
                    Instant::now(),
                    &mut random_id,
                );
                match q {
                    Some(q) => s.upstreams.send(0, &q),
                    None => {
                        let _ = s
                            .client_udp
                            .send_to(&build_reply(&m, RCODE_SERVFAIL, false, &[]), from);
                    }
                }
            }
        }
    }
}

fn upstream_loop(s: &Shared, v6: bool) {
    let sock = if v6 {
        match &s.upstreams.v6 {
            Some(x) => x,
            None => return,
        }
    } else {
        &s.upstreams.v4
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    while !s.stop.load(Ordering::SeqCst) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        };
        let reply = &mut buf[..n];
        let client = s
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_reply(from, reply, &s.upstreams.addrs);
        if let Some(c) = client {
            let _ = s.client_udp.send_to(reply, c);
        }
    }
}

fn tcp_loop(s: &Arc<Shared>, listener: TcpListener) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut next_id = 0u64;
    while !s.stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        }
        let (stream, _) = match listener.accept() {
            Ok(x) => x,
            Err(_) => continue,
        };
        if s.tcp_conns.load(Ordering::SeqCst) >= MAX_TCP_CONNS {
            drop(stream);
            continue;
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        s.tcp_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, clone);
        s.tcp_conns.fetch_add(1, Ordering::SeqCst);
        let sh = s.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dns-conn-{}", s.cfg.ifname))
            .spawn(move || {
                tcp_conn(&sh, stream);
                sh.tcp_streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                sh.tcp_conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            s.tcp_streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            s.tcp_conns.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn tcp_conn(s: &Shared, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(TCP_IDLE));
    let _ = stream.set_write_timeout(Some(TCP_IDLE));
    let peer = match stream.peer_addr() {
        Ok(p) => p.ip(),
        Err(_) => return,
    };
    let mut rate = RateLimiter::default();
    while !s.stop.load(Ordering::SeqCst) {
        let Ok(msg) = read_framed(&mut stream) else {
            return;
        };
        if !rate.allow(peer, Instant::now()) {
            return;
        }
        let reply = match s.decide(&msg) {
            Decision::Drop => return,
            Decision::Reply(r) => r,
            Decision::Forward(m) => {
                if s.upstreams.addrs.is_empty() {
                    build_reply(&m, RCODE_REFUSED, false, &[])
                } else {
                    forward_tcp(&s.upstreams.addrs, &msg)
                        .unwrap_or_else(|| build_reply(&m, RCODE_SERVFAIL, false, &[]))
                }
            }
        };
        if write_framed(&mut stream, &reply).is_err() {
            return;
        }
    }
}

/// Forward over TCP: the first upstream, then once the next one.
fn forward_tcp(upstreams: &[SocketAddr], msg: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams.iter().take(2) {
        let once = || -> io::Result<Vec<u8>> {
            let mut c = TcpStream::connect_timeout(up, UPSTREAM_TIMEOUT)?;
            c.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
            c.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
            write_framed(&mut c, msg)?;
            read_framed(&mut c)
        };
        if let Ok(r) = once() {
            if r.len() >= 2 && r[..2] == msg[..2] {
                return Some(r);
            }
        }
    }
    None
}

/// Fuzzing entry point (`tests/fuzz`, and the deterministic test): the message as a client's
/// query (decide, then the reply must parse and carry the id) and as an upstream's reply to a
/// pending query. Must never panic.
#[doc(hidden)]
pub fn fuzz_packet(data: &[u8]) {
    let lookup = |n: &str| {
        if n == "c1" {
            vec![
                IpAddr::V4(Ipv4Addr::new(10, 9, 0, 5)),
                IpAddr::V4(Ipv4Addr::new(10, 9, 0, 6)),
                IpAddr::V6(Ipv6Addr::new(0xfd42, 0, 0, 7, 0x216, 0x3eff, 0xfe00, 5)),
            ]
        } else {
            Vec::new()
        }
    };
    match decide(data, "bivy", Ipv4Addr::new(10, 9, 0, 1), &lookup) {
        Decision::Reply(r) => {
            let m = Message::parse(&r).expect("a reply parses");
            assert!(m.header.is_response());
            assert_eq!(r[..2], data[..2]);
        }
        Decision::Forward(m) => {
            let up: SocketAddr = "127.0.0.1:53".parse().expect("address");
            let client: SocketAddr = "10.9.0.5:5353".parse().expect("address");
            let mut inf = Inflight::new(2);
            let now = Instant::now();
            let mut ids = 0x4242u16..;
            let mut next = || ids.next().unwrap_or(0);
            if let Some(q) = inf.add(client, &m, data, now, &mut next) {
                let mut reply = q.clone();
                if reply.len() > 2 {
                    reply[2] |= 0x80;
                }
                if let Some(c) = inf.take_reply(up, &mut reply, &[up]) {
                    assert_eq!(c, client);
                    assert_eq!(reply[..2], data[..2]);
                }
                let _ = inf.expire(now + UPSTREAM_TIMEOUT);
                let _ = inf.expire(now + UPSTREAM_TIMEOUT * 2);
            }
        }
        Decision::Drop => {}
    }
    // As an upstream reply to a pending query with this id.
    if let Ok(m) = Message::parse(data) {
        if let Some(q) = m.questions.first() {
            let mut qm = m.clone();
            qm.header.flags &= 0x7fff;
            qm.questions = vec![q.clone()];
            let mut inf = Inflight::new(1);
            let raw = build_reply(&qm, 0, false, &[]);
            let id = m.header.id;
            let mut fixed = || id;
            let up: SocketAddr = "127.0.0.1:53".parse().expect("address");
            if inf.add(up, &qm, &raw, Instant::now(), &mut fixed).is_some() {
                let mut reply = data.to_vec();
                let _ = inf.take_reply(up, &mut reply, &[up]);
            }
        }
    }
}

#[cfg(test)]
mod tests;
