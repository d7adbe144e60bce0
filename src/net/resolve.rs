//! Host name resolution of our own, so that the static binary never calls glibc's
//! `getaddrinfo` (whose NSS modules are shared libraries loaded at run time).
//!
//! [`connect_tcp`] is the one way the crate reaches a host by name: every outgoing TCP
//! connection (remotes, image downloads, simplestreams, migration) goes through it. A name is
//! resolved as glibc does with `hosts: files dns`:
//! - an IP literal is used as is (an IPv6 literal may carry a `%zone`, an interface name or
//!   index);
//! - `/etc/hosts` ([`Hosts`]): every address of every line naming it (names compared exactly,
//!   ASCII case ignored, one trailing dot dropped), in file order;
//! - `localhost` and names under `.localhost` are the loopback addresses when `/etc/hosts` does
//!   not name them (RFC 6761; systemd's `nss-myhostname` does the same);
//! - DNS ([`ResolvConf`]): the first three `nameserver`s of `/etc/resolv.conf` (127.0.0.1 when
//!   there is none), the names `search`/`domain` and `options ndots` give (the host name's domain
//!   when neither is set), `options timeout` (per server and try) and `attempts`; `edns0`
//!   advertises 1232-byte UDP replies, `use-vc` asks over TCP only. Other options are ignored.
//!   A and then AAAA are asked over UDP from a fresh socket connected to the server (so a random
//!   port), each query with a random id; a reply counts only when it comes from that server and
//!   carries that id and the same question. A truncated reply is asked again over TCP.
//!   SERVFAIL, REFUSED, FORMERR, NOTIMP or silence moves to the next server; when no server
//!   replies at all, the lookup ends there (as glibc's does). Answers are taken
//!   only for the asked name or the names its CNAME chain leads to (at most [`MAX_CNAMES`]
//!   links; a chain the reply does not finish is asked for again).
//!
//! Addresses are tried in that order, IPv4 before IPv6 for DNS answers (a host with a broken
//! IPv6 route then does not wait on it); there is no happy-eyeballs racing and no cache.
//! Errors name the host and say what failed: `no address for example.org: NXDOMAIN from
//! 10.0.0.1`, or every address tried and its error.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::dns::{self, Message, Question, CLASS_IN, TYPE_A, TYPE_AAAA, TYPE_CNAME};

/// Where the system's files are.
pub const HOSTS: &str = "/etc/hosts";
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// CNAME links followed for one name and type.
pub const MAX_CNAMES: usize = 8;
/// Servers asked (glibc's `MAXNS`).
pub const MAX_SERVERS: usize = 3;
/// Search domains used (glibc's former `MAXDNSRCH`).
pub const MAX_SEARCH: usize = 6;
/// The UDP payload size advertised with `options edns0` (the DNS flag day's value).
pub const EDNS_SIZE: u16 = 1232;

/// The parts of a `resolv.conf` the resolver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Every `nameserver` (port 53), in order, without duplicates, the unspecified address and
    /// IPv6 addresses with a zone left out.
    pub nameservers: Vec<SocketAddr>,
    /// The search list: the last `search` or `domain` line (a lone `.` means none), else the
    /// host name's domain.
    pub search: Vec<String>,
    /// `options ndots:N` (default 1, at most 15): a name with at least this many dots is asked
    /// as is before the search list is tried.
    pub ndots: usize,
    /// `options timeout:N` (default 5 s, 1 to 30).
    pub timeout: Duration,
    /// `options attempts:N` (default 2, 1 to 5): rounds over the servers.
    pub attempts: u32,
    /// `options edns0`.
    pub edns0: bool,
    /// `options use-vc` (or `usevc`): TCP only.
    pub use_vc: bool,
}

impl Default for ResolvConf {
    fn default() -> ResolvConf {
        ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
            edns0: false,
            use_vc: false,
        }
    }
}

impl ResolvConf {
    /// Parse `text`; `hostname` gives the search domain when no `search` or `domain` line does
    /// (what follows its first dot).
    pub fn parse(text: &str, hostname: &str) -> ResolvConf {
        let mut c = ResolvConf::default();
        let mut search = None;
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut w = line.split_whitespace();
            match w.next() {
                Some("nameserver") => {
                    if let Some(Ok(ip)) = w.next().map(str::parse::<IpAddr>) {
                        let a = SocketAddr::new(ip, 53);
                        if !ip.is_unspecified() && !c.nameservers.contains(&a) {
                            c.nameservers.push(a);
                        }
                    }
                }
                Some("domain") => search = Some(w.next().into_iter().map(str::to_owned).collect()),
                Some("search") => search = Some(w.map(str::to_owned).collect()),
                Some("options") => {
                    for o in w {
                        let (k, v) = o.split_once(':').unwrap_or((o, ""));
                        let n = v.parse::<u64>().ok();
                        match (k, n) {
                            ("ndots", Some(n)) => c.ndots = n.min(15) as usize,
                            ("timeout", Some(n)) => {
                                c.timeout = Duration::from_secs(n.clamp(1, 30));
                            }
                            ("attempts", Some(n)) => c.attempts = n.clamp(1, 5) as u32,
                            ("edns0", _) => c.edns0 = true,
                            ("use-vc" | "usevc", _) => c.use_vc = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let search: Vec<String> = search.unwrap_or_else(|| {
            hostname
                .split_once('.')
                .map(|(_, d)| vec![d.to_owned()])
                .unwrap_or_default()
        });
        c.search = search
            .into_iter()
            .map(|d| d.trim_end_matches('.').to_owned())
            .filter(|d| dns::labels_of(d).is_some())
            .take(MAX_SEARCH)
            .collect();
        c
    }

    /// `path` parsed (a missing file is an empty one, as for glibc), with this host's name.
    pub fn load(path: &Path) -> io::Result<ResolvConf> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        Ok(ResolvConf::parse(&text, &host))
    }

    /// The servers asked: the first [`MAX_SERVERS`], or 127.0.0.1 when there is none.
    fn servers(&self) -> Vec<SocketAddr> {
        if self.nameservers.is_empty() {
            return vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))];
        }
        self.nameservers.iter().take(MAX_SERVERS).copied().collect()
    }

    /// The names asked for `name`, in order: as is first when it ends with a dot (then only
    /// that) or has at least `ndots` dots, then with each search domain, then as is.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(abs) = name.strip_suffix('.') {
            return vec![abs.to_owned()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_owned()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_owned())).collect()
        }
    }
}

/// The entries of an `/etc/hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    entries: Vec<(IpAddr, Vec<String>)>,
}

impl Hosts {
    /// Parse `text`: `ADDRESS NAME [ALIAS...]` lines, `#` comments; lines whose address does not
    /// parse (a zone, a typo) are skipped.
    pub fn parse(text: &str) -> Hosts {
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut w = line.split_whitespace();
            let Some(Ok(ip)) = w.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            let names: Vec<String> = w.map(str::to_ascii_lowercase).collect();
            if !names.is_empty() {
                entries.push((ip, names));
            }
        }
        Hosts { entries }
    }

    /// `path` parsed; a missing file has no entries.
    pub fn load(path: &Path) -> io::Result<Hosts> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Hosts::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Hosts::default()),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    /// The addresses of every line naming `name` (ASCII case ignored, a trailing dot dropped),
    /// in file order, without duplicates.
    pub fn lookup(&self, name: &str) -> Vec<IpAddr> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let mut out = Vec::new();
        for (ip, names) in &self.entries {
            if names.contains(&name) && !out.contains(ip) {
                out.push(*ip);
            }
        }
        out
    }
}

/// A resolver reading the given files at each lookup (so a changed `resolv.conf` counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

impl Resolver {
    /// The system's: [`HOSTS`] and [`RESOLV_CONF`].
    pub fn system() -> Resolver {
        Resolver::new(Path::new(HOSTS), Path::new(RESOLV_CONF))
    }

    pub fn new(hosts: &Path, resolv_conf: &Path) -> Resolver {
        Resolver {
            hosts: hosts.to_owned(),
            resolv_conf: resolv_conf.to_owned(),
        }
    }

    /// The addresses of `host` (see the module doc); an error naming it when there is none.
    pub fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        if let Some(ip) = literal(host)? {
            return Ok(vec![ip.ip()]);
        }
        lookup_name(
            &Hosts::load(&self.hosts)?,
            &ResolvConf::load(&self.resolv_conf)?,
            host,
        )
    }

    /// A TCP connection to `host:port`: each address of [`Resolver::lookup`] in turn, each
    /// given `timeout` to connect.
    pub fn connect_tcp(&self, host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
        if let Some(mut a) = literal(host)? {
            a.set_port(port);
            return TcpStream::connect_timeout(&a, timeout);
        }
        let addrs: Vec<SocketAddr> = self
            .lookup(host)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        connect_any(host, &addrs, timeout)
    }
}

/// [`Resolver::lookup`] with the system's files.
pub fn lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    Resolver::system().lookup(host)
}

/// [`Resolver::connect_tcp`] with the system's files: the one way the crate connects to a host
/// by name.
pub fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    Resolver::system().connect_tcp(host, port, timeout)
}

/// An I/O error's text without Rust's ` (os error N)` suffix, starting lowercase.
fn short(e: &io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s);
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// Connect to the first of `addrs` that takes it; the error names `host` and each address's
/// failure (`example.org at 192.0.2.1: connection refused; at 2001:db8::1: ...`).
fn connect_any(host: &str, addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut failures = Vec::new();
    let mut kind = io::ErrorKind::NotFound;
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => {
                kind = e.kind();
                failures.push(format!("at {}: {}", a.ip(), short(&e)));
            }
        }
    }
    Err(io::Error::new(
        kind,
        format!("{host} {}", failures.join("; ")),
    ))
}

/// `host` as an IP literal (port 0), or None when it is a name. An IPv6 literal may end with
/// `%ZONE`, an interface name or index; an unknown interface is an error.
fn literal(host: &str) -> io::Result<Option<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, 0)));
    }
    let Some((ip, zone)) = host.split_once('%') else {
        return Ok(None);
    };
    let Ok(ip) = ip.parse::<Ipv6Addr>() else {
        return Ok(None);
    };
    let scope = match zone.parse::<u32>() {
        Ok(n) => n,
        Err(_) => nix::net::if_::if_nametoindex(zone).map_err(|e| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host}: no interface {zone:?}: {e}"),
            )
        })?,
    };
    Ok(Some(SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, scope))))
}

/// How one query ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The name exists: its addresses of the type (none: NODATA), and where its CNAME chain
    /// stopped without them, when it did (to be asked next).
    Found {
        addrs: Vec<IpAddr>,
        next: Option<Vec<Vec<u8>>>,
        server: SocketAddr,
    },
    /// NXDOMAIN.
    NoName { server: SocketAddr },
}

/// Why a query got no answer; `unreachable` when no server replied at all (silence or a
/// refused connection), so asking for other names or types is pointless.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    why: String,
    unreachable: bool,
}

impl Failure {
    fn answered(why: String) -> Failure {
        Failure {
            why,
            unreachable: false,
        }
    }
}

/// A server named in messages: its address, with the port when not 53.
fn server_name(s: SocketAddr) -> String {
    if s.port() == 53 {
        s.ip().to_string()
    } else {
        s.to_string()
    }
}

/// Resolve a name that is no IP literal: `/etc/hosts`, then `localhost`, then DNS.
fn lookup_name(hosts: &Hosts, conf: &ResolvConf, host: &str) -> io::Result<Vec<IpAddr>> {
    let not_found = |why: String| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address for {host}: {why}"),
        )
    };
    let odd = |c: char| !c.is_ascii_graphic() || matches!(c, ':' | '%' | '/' | '\\');
    if dns::labels_of(host).is_none() || host.contains(odd) {
        return Err(not_found("not a valid host name".into()));
    }
    let from_file = hosts.lookup(host);
    if !from_file.is_empty() {
        return Ok(from_file);
    }
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]);
    }
    let names = conf.candidates(host);
    // What went wrong: a server failure outweighs an answer that there is no such name.
    let mut failure: Option<String> = None;
    let mut negative: Option<String> = None;
    let mut tried = Vec::new();
    'names: for name in &names {
        let Some(labels) = dns::labels_of(name) else {
            continue;
        };
        tried.push(name.as_str());
        let mut addrs = Vec::new();
        for qtype in [TYPE_A, TYPE_AAAA] {
            match resolve_type(conf, &labels, qtype) {
                Ok(Outcome::Found {
                    addrs: a, server, ..
                }) => {
                    if a.is_empty() && negative.is_none() {
                        negative =
                            Some(format!("no A or AAAA record from {}", server_name(server)));
                    }
                    addrs.extend(a);
                }
                Ok(Outcome::NoName { server }) => {
                    if negative.is_none() {
                        negative = Some(format!("NXDOMAIN from {}", server_name(server)));
                    }
                    // No such name: no AAAA either.
                    break;
                }
                Err(e) if e.unreachable => {
                    // As glibc: no server answers, so the other names would not be answered
                    // either.
                    failure = Some(e.why);
                    break 'names;
                }
                Err(e) => failure = Some(e.why),
            }
        }
        if !addrs.is_empty() {
            return Ok(addrs);
        }
    }
    let mut why = failure
        .or(negative)
        .unwrap_or_else(|| "no name to ask".into());
    if tried.len() > 1 {
        why.push_str(&format!(" (names tried: {})", tried.join(", ")));
    }
    Err(not_found(why))
}

/// Ask for `labels`/`qtype`, following the CNAME chain into further queries when a reply does
/// not finish it; at most [`MAX_CNAMES`] links in all.
fn resolve_type(conf: &ResolvConf, labels: &[Vec<u8>], qtype: u16) -> Result<Outcome, Failure> {
    let mut name = labels.to_vec();
    let mut links = MAX_CNAMES;
    loop {
        let out = query(conf, &name, qtype, &mut links)?;
        match out {
            Outcome::Found {
                next: Some(next), ..
            } => name = next,
            out => return Ok(out),
        }
    }
}

/// One question to the servers: each in turn for each attempt, until one answers NOERROR or
/// NXDOMAIN.
fn query(
    conf: &ResolvConf,
    labels: &[Vec<u8>],
    qtype: u16,
    links: &mut usize,
) -> Result<Outcome, Failure> {
    let mut last = String::from("no server to ask");
    let mut silent = Vec::new();
    let mut unreachable = true;
    for _ in 0..conf.attempts {
        for server in conf.servers() {
            match exchange(conf, server, labels, qtype) {
                Ok((m, raw)) => match m.header.rcode() {
                    dns::RCODE_NOERROR => {
                        return answer(&m, &raw, labels, qtype, server, links)
                            .map_err(Failure::answered)
                    }
                    dns::RCODE_NXDOMAIN => return Ok(Outcome::NoName { server }),
                    rcode => {
                        unreachable = false;
                        last = format!("{} from {}", rcode_name(rcode), server_name(server));
                    }
                },
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    if !silent.contains(&server) {
                        silent.push(server);
                    }
                    last = format!(
                        "no answer from {} within {} s ({} attempt{})",
                        silent
                            .iter()
                            .map(|s| server_name(*s))
                            .collect::<Vec<_>>()
                            .join(", "),
                        conf.timeout.as_secs(),
                        conf.attempts,
                        if conf.attempts == 1 { "" } else { "s" }
                    );
                }
                Err(e) => {
                    // A reply that does not parse or match is an answer of sorts.
                    unreachable &= e.kind() != io::ErrorKind::InvalidData;
                    last = format!("asking {}: {}", server_name(server), short(&e));
                }
            }
        }
    }
    Err(Failure {
        why: last,
        unreachable,
    })
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        dns::RCODE_FORMERR => "FORMERR".into(),
        dns::RCODE_SERVFAIL => "SERVFAIL".into(),
        dns::RCODE_NOTIMP => "NOTIMP".into(),
        dns::RCODE_REFUSED => "REFUSED".into(),
        n => format!("rcode {n}"),
    }
}

/// The question of a query for `labels`/`qtype`.
fn question(labels: &[Vec<u8>], qtype: u16) -> Question {
    Question {
        labels: labels.to_vec(),
        qtype,
        qclass: CLASS_IN,
    }
}

/// Does `raw` answer query `id` for `q`? A response, that id, exactly that one question.
fn matches(raw: &[u8], id: u16, q: &Question) -> Option<Message> {
    let m = Message::parse(raw).ok()?;
    (m.header.is_response()
        && m.header.id == id
        && m.header.opcode() == 0
        && m.questions.len() == 1
        && m.questions[0].same(q))
    .then_some(m)
}

/// Ask `server` once: over UDP (unless `use-vc`), again over TCP when the reply is truncated.
/// Returns the matching reply and its bytes.
fn exchange(
    conf: &ResolvConf,
    server: SocketAddr,
    labels: &[Vec<u8>],
    qtype: u16,
) -> io::Result<(Message, Vec<u8>)> {
    let q = question(labels, qtype);
    if !conf.use_vc {
        let id = dns::random_id();
        let edns = conf.edns0.then_some(EDNS_SIZE);
        let query = dns::build_query(id, labels, qtype, edns);
        let (m, raw) = exchange_udp(server, &query, id, &q, conf.timeout)?;
        // TC: the answer did not fit; ask over TCP.
        if m.header.flags & 0x0200 == 0 {
            return Ok((m, raw));
        }
    }
    let id = dns::random_id();
    let query = dns::build_query(id, labels, qtype, None);
    exchange_tcp(server, &query, id, &q, conf.timeout)
}

fn exchange_udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    q: &Question,
    timeout: Duration,
) -> io::Result<(Message, Vec<u8>)> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)?;
    // Connected: the kernel drops datagrams from anyone else.
    sock.connect(server)?;
    sock.send(query)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; dns::MAX_MESSAGE];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        sock.set_read_timeout(Some(left))?;
        let n = sock.recv(&mut buf)?;
        if let Some(m) = matches(&buf[..n], id, q) {
            return Ok((m, buf[..n].to_vec()));
        }
    }
}

fn exchange_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    q: &Question,
    timeout: Duration,
) -> io::Result<(Message, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    dns::write_framed(&mut s, query)?;
    let raw = dns::read_framed(&mut s)?;
    let m = matches(&raw, id, q).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a TCP reply that does not answer the query",
        )
    })?;
    Ok((m, raw))
}

/// The addresses a NOERROR reply gives for `labels`/`qtype`: records of the type (class IN)
/// owned by the name or by a name its CNAME chain in the reply leads to, each link taken from
/// `links`; records of other names are ignored. When the chain ends on another name without
/// such records, that name is `next` (to be asked).
fn answer(
    m: &Message,
    raw: &[u8],
    labels: &[Vec<u8>],
    qtype: u16,
    server: SocketAddr,
    links: &mut usize,
) -> Result<Outcome, String> {
    let mut name = labels.to_vec();
    loop {
        let owned = |r: &&dns::Record| r.class == CLASS_IN && dns::same_name(&r.labels, &name);
        let addrs: Vec<IpAddr> = m
            .answers
            .iter()
            .filter(owned)
            .filter(|r| r.rtype == qtype)
            .filter_map(|r| match qtype {
                TYPE_A => <[u8; 4]>::try_from(&r.rdata[..]).ok().map(IpAddr::from),
                _ => <[u8; 16]>::try_from(&r.rdata[..]).ok().map(IpAddr::from),
            })
            .collect();
        if !addrs.is_empty() {
            return Ok(Outcome::Found {
                addrs,
                next: None,
                server,
            });
        }
        let Some(cname) = m
            .answers
            .iter()
            .filter(owned)
            .find(|r| r.rtype == TYPE_CNAME)
        else {
            // NODATA for the asked name, or a chain to finish with another query.
            let next = (!dns::same_name(&name, labels)).then_some(name);
            return Ok(Outcome::Found {
                addrs: Vec::new(),
                next,
                server,
            });
        };
        if *links == 0 {
            return Err(format!(
                "CNAME chain longer than {MAX_CNAMES} links at {}",
                dns::name_string(&name)
            ));
        }
        *links -= 1;
        name = cname
            .rdata_name(raw)
            .map_err(|e| format!("a bad CNAME from {}: {e}", server_name(server)))?;
    }
}

#[cfg(test)]
mod tests;
