//! The DNS server of one managed bridge, in the daemon (LXD runs dnsmasq for this).
//!
//! It answers `<name>.<domain>` (and `<name>` alone, as dnsmasq does for DHCP names) from the
//! bridge's [`LeaseStore`], `_gateway.<domain>` with the bridge's address, NXDOMAIN for any other
//! name under the domain, and forwards everything else to upstream servers (the host's, from
//! `/etc/resolv.conf`: [`upstreams_from_resolv_conf`]). No cache.
//!
//! Layers, the first two pure and tested without sockets:
//! - wire: [`Message::parse`] reads a whole message (header, questions, records), names with
//!   compression pointers that must point strictly backwards (so a loop cannot exist) and at most
//!   255 bytes long; [`build_reply`] writes answers (A, AAAA) and errors (NXDOMAIN, SERVFAIL,
//!   REFUSED, FORMERR, NOTIMP), echoing the question and an EDNS OPT record when the query had
//!   one. Nothing panics on any input. The client side ([`build_query`], [`labels_of`],
//!   [`Record::rdata_name`]) serves bivy's own resolver, [`super::resolve`].
//! - [`decide`]: answer locally or forward; [`Inflight`]: the forwarded UDP queries, each sent
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
//! validation (replies are passed through), no PTR records for the leases.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::leases::LeaseStore;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// Largest UDP query read from a client.
pub const MAX_UDP_QUERY: usize = 4096;
/// Largest message (TCP, and upstream UDP replies).
pub const MAX_MESSAGE: usize = 65535;
/// Forwarded UDP queries waiting for an upstream at once.
pub const MAX_INFLIGHT: usize = 512;
/// Per-source rate: tokens per second and bucket size.
pub const RATE_PER_SEC: f64 = 200.0;
pub const RATE_BURST: f64 = 400.0;
/// Sources tracked by the rate limiter.
pub const MAX_SOURCES: usize = 4096;
/// Concurrent TCP connections.
pub const MAX_TCP_CONNS: usize = 32;
/// A TCP connection idle (or a message not arriving) this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long one upstream gets to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(2000);
/// TTL of local answers (dnsmasq's default for DHCP names: 0, never cached).
pub const LOCAL_TTL: u32 = 0;

const TICK: Duration = Duration::from_millis(200);
const MAX_NAME: usize = 255;
const MAX_JUMPS: usize = 64;

/// Why a message was not parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    Truncated,
    BadLabel,
    NameTooLong,
    BadPointer,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnsError::Truncated => "message truncated",
            DnsError::BadLabel => "bad label type",
            DnsError::NameTooLong => "name over 255 bytes",
            DnsError::BadPointer => "compression pointer not pointing backwards",
        })
    }
}

impl std::error::Error for DnsError {}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        let w = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        Some(Header {
            id: w(0)?,
            flags: w(2)?,
            qdcount: w(4)?,
            ancount: w(6)?,
            nscount: w(8)?,
            arcount: w(10)?,
        })
    }
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// A question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Labels as sent (case kept).
    pub labels: Vec<Vec<u8>>,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// The name, dotted, lowercased (non-printable bytes escaped as `\DDD`).
    pub fn name(&self) -> String {
        name_string(&self.labels)
    }

    /// The same question: type, class and name (ASCII case ignored).
    pub fn same(&self, o: &Question) -> bool {
        self.qtype == o.qtype && self.qclass == o.qclass && same_name(&self.labels, &o.labels)
    }
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub labels: Vec<Vec<u8>>,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
    /// Where `rdata` starts in the message (a name in it may point back into the message).
    pub rdata_at: usize,
}

impl Record {
    /// The name in this record's data (a CNAME's target), read from `msg`, the message the
    /// record was parsed from.
    pub fn rdata_name(&self, msg: &[u8]) -> Result<Vec<Vec<u8>>, DnsError> {
        let (labels, end) = read_name(msg, self.rdata_at)?;
        if end != self.rdata_at + self.rdata.len() {
            return Err(DnsError::Truncated);
        }
        Ok(labels)
    }
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

/// A name, dotted, lowercased (non-printable bytes escaped as `\DDD`).
pub fn name_string(labels: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        for &c in l {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                s.push(c as char);
            } else {
                s.push_str(&format!("\\{c:03}"));
            }
        }
    }
    s
}

/// Read a (possibly compressed) name at `pos`: its labels and the position after it.
pub fn read_name(b: &[u8], pos: usize) -> Result<(Vec<Vec<u8>>, usize), DnsError> {
    let mut labels = Vec::new();
    let mut at = pos;
    let mut end = None;
    let mut total = 1;
    let mut jumps = 0;
    loop {
        let len = *b.get(at).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((labels, end.unwrap_or(at + 1)));
                }
                let l = b
                    .get(at + 1..at + 1 + len as usize)
                    .ok_or(DnsError::Truncated)?;
                total += len as usize + 1;
                if total > MAX_NAME {
                    return Err(DnsError::NameTooLong);
                }
                labels.push(l.to_vec());
                at += 1 + len as usize;
            }
            0xc0 => {
                let lo = *b.get(at + 1).ok_or(DnsError::Truncated)?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                // Strictly backwards: every jump lowers the position, so no loop.
                if target >= at {
                    return Err(DnsError::BadPointer);
                }
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(DnsError::BadPointer);
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(DnsError::BadLabel),
        }
    }
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, DnsError> {
    Ok(u16::from_be_bytes([
        *b.get(i).ok_or(DnsError::Truncated)?,
        *b.get(i + 1).ok_or(DnsError::Truncated)?,
    ]))
}

fn read_records(b: &[u8], pos: &mut usize, n: u16) -> Result<Vec<Record>, DnsError> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (labels, p) = read_name(b, *pos)?;
        let rtype = u16_at(b, p)?;
        let class = u16_at(b, p + 2)?;
        let ttl = (u32::from(u16_at(b, p + 4)?) << 16) | u32::from(u16_at(b, p + 6)?);
        let rdlen = u16_at(b, p + 8)? as usize;
        let rdata = b
            .get(p + 10..p + 10 + rdlen)
            .ok_or(DnsError::Truncated)?
            .to_vec();
        *pos = p + 10 + rdlen;
        out.push(Record {
            labels,
            rtype,
            class,
            ttl,
            rdata,
            rdata_at: p + 10,
        });
    }
    Ok(out)
}

impl Message {
    /// Parse a whole message; never panics. Trailing bytes are ignored.
    pub fn parse(b: &[u8]) -> Result<Message, DnsError> {
        let header = Header::parse(b).ok_or(DnsError::Truncated)?;
        let mut pos = 12;
        let mut questions = Vec::new();
        for _ in 0..header.qdcount {
            let (labels, p) = read_name(b, pos)?;
            questions.push(Question {
                labels,
                qtype: u16_at(b, p)?,
                qclass: u16_at(b, p + 2)?,
            });
            pos = p + 4;
        }
        let answers = read_records(b, &mut pos, header.ancount)?;
        let authority = read_records(b, &mut pos, header.nscount)?;
        let additional = read_records(b, &mut pos, header.arcount)?;
        Ok(Message {
            header,
            questions,
            answers,
            authority,
            additional,
        })
    }

    /// The EDNS UDP payload size of the OPT record, when there is one.
    pub fn edns_size(&self) -> Option<u16> {
        self.additional
            .iter()
            .find(|r| r.rtype == TYPE_OPT)
            .map(|r| r.class)
    }
}

/// An answer record for the question's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

impl Answer {
    pub fn a(ip: Ipv4Addr) -> Answer {
        Answer {
            rtype: TYPE_A,
            ttl: LOCAL_TTL,
            rdata: ip.octets().to_vec(),
        }
    }
    pub fn aaaa(ip: Ipv6Addr) -> Answer {
        Answer {
            rtype: TYPE_AAAA,
            ttl: LOCAL_TTL,
            rdata: ip.octets().to_vec(),
        }
    }
}

fn write_labels(out: &mut Vec<u8>, labels: &[Vec<u8>]) {
    for l in labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

/// A reply to `q`: its id, opcode and RD echoed, RA set, AA as given, the first question echoed,
/// `answers` for that name (compressed to point at the question), an OPT record (4096) when the
/// query had one.
pub fn build_reply(q: &Message, rcode: u8, aa: bool, answers: &[Answer]) -> Vec<u8> {
    let question = q.questions.first();
    let answers = if question.is_some() { answers } else { &[] };
    let edns = q.edns_size().is_some();
    let flags = 0x8000
        | (u16::from(q.header.opcode()) << 11)
        | if aa { 0x0400 } else { 0 }
        | (q.header.flags & 0x0100)
        | 0x0080
        | u16::from(rcode & 0xf);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&q.header.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&u16::from(question.is_some()).to_be_bytes());
    out.extend_from_slice(&(answers.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(edns).to_be_bytes());
    if let Some(qu) = question {
        write_labels(&mut out, &qu.labels);
        out.extend_from_slice(&qu.qtype.to_be_bytes());
        out.extend_from_slice(&qu.qclass.to_be_bytes());
    }
    for a in answers {
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&a.rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&a.ttl.to_be_bytes());
        out.extend_from_slice(&(a.rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&a.rdata);
    }
    if edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&4096u16.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// Two names are the same: equal labels, ASCII case ignored.
pub fn same_name(a: &[Vec<u8>], b: &[Vec<u8>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// The labels of dotted name `name` (one trailing dot allowed), or None when it is no name:
/// empty, an empty label, a label over 63 bytes, over 255 bytes in all.
pub fn labels_of(name: &str) -> Option<Vec<Vec<u8>>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() + 2 > MAX_NAME {
        return None;
    }
    name.split('.')
        .map(|l| (!l.is_empty() && l.len() <= 63).then(|| l.as_bytes().to_vec()))
        .collect()
}

/// A standard query (RD set) with id `id` for `labels`, type `qtype`, class IN; with an EDNS
/// OPT record advertising `edns` bytes of UDP payload when given.
pub fn build_query(id: u16, labels: &[Vec<u8>], qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
    write_labels(&mut out, labels);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// A header-only error reply to a query whose body did not parse (None: not even a query
/// header, or a response: dropped).
pub fn error_header(b: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let h = Header::parse(b)?;
    if h.is_response() {
        return None;
    }
    let flags = 0x8000 | (h.flags & 0x7900) | 0x0080 | u16::from(rcode);
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&h.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

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
    let m = match Message::parse(b) {
        Ok(m) => m,
        Err(_) => return error_header(b, RCODE_FORMERR).map_or(Decision::Drop, Decision::Reply),
    };
    if m.header.is_response() {
        return Decision::Drop;
    }
    if m.header.opcode() != 0 {
        return Decision::Reply(build_reply(&m, RCODE_NOTIMP, false, &[]));
    }
    if m.questions.len() != 1 {
        return Decision::Reply(build_reply(&m, RCODE_FORMERR, false, &[]));
    }
    let q = &m.questions[0];
    let dom: Vec<String> = domain
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let lower: Vec<Vec<u8>> = q.labels.iter().map(|l| l.to_ascii_lowercase()).collect();
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

/// The upstream servers of a `resolv.conf` text: its `nameserver` lines (port 53; scoped IPv6
/// addresses skipped). When the only one is systemd-resolved's stub `127.0.0.53`, the servers of
/// `resolved` (`/run/systemd/resolve/resolv.conf`) instead, if it has any.
pub fn upstreams_from_resolv_conf(text: &str, resolved: &Path) -> Vec<SocketAddr> {
    let list = nameservers(text);
    let stub = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
    if list.len() == 1 && list[0].ip() == stub {
        if let Ok(t) = std::fs::read_to_string(resolved) {
            let real: Vec<SocketAddr> = nameservers(&t)
                .into_iter()
                .filter(|a| a.ip() != stub)
                .collect();
            if !real.is_empty() {
                return real;
            }
        }
    }
    list
}

fn nameservers(text: &str) -> Vec<SocketAddr> {
    super::resolve::ResolvConf::parse(text, "").nameservers
}

/// The host's upstream servers: [`upstreams_from_resolv_conf`] of `/etc/resolv.conf` (a missing
/// file: none, queries outside the domain are then refused).
pub fn host_upstreams() -> io::Result<Vec<SocketAddr>> {
    match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(t) => Ok(upstreams_from_resolv_conf(
            &t,
            Path::new("/run/systemd/resolve/resolv.conf"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading /etc/resolv.conf: {e}"),
        )),
    }
}

/// One forwarded UDP query.
#[derive(Debug, Clone)]
struct Pending {
    client: SocketAddr,
    orig_id: u16,
    query: Vec<u8>,
    question: Question,
    upstream: usize,
    retried: bool,
    deadline: Instant,
}

/// What [`Inflight::expire`] asks the caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// Send `query` (id already rewritten) to upstream number `upstream`.
    Retry { upstream: usize, query: Vec<u8> },
    /// Answer `client` with `reply` (SERVFAIL).
    Fail { client: SocketAddr, reply: Vec<u8> },
}

/// The forwarded UDP queries, keyed by the id they were sent upstream with.
#[derive(Debug)]
pub struct Inflight {
    map: HashMap<u16, Pending>,
    n_upstreams: usize,
}

impl Inflight {
    pub fn new(n_upstreams: usize) -> Inflight {
        Inflight {
            map: HashMap::new(),
            n_upstreams,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Register query `m` (raw bytes `raw`) of `client` for forwarding with a fresh id from
    /// `random_id` (called until it gives an unused one); returns the bytes to send to upstream
    /// 0, or None when full (or no upstream).
    pub fn add(
        &mut self,
        client: SocketAddr,
        m: &Message,
        raw: &[u8],
        now: Instant,
        random_id: &mut dyn FnMut() -> u16,
    ) -> Option<Vec<u8>> {
        if self.map.len() >= MAX_INFLIGHT || self.n_upstreams == 0 || raw.len() < 12 {
            return None;
        }
        let question = m.questions.first()?.clone();
        let mut id = random_id();
        let mut tries = 0;
        while self.map.contains_key(&id) {
            tries += 1;
            if tries > 1000 {
                return None;
            }
            id = random_id();
        }
        let mut query = raw.to_vec();
        query[..2].copy_from_slice(&id.to_be_bytes());
        self.map.insert(
            id,
            Pending {
                client,
                orig_id: m.header.id,
                query: query.clone(),
                question,
                upstream: 0,
                retried: false,
                deadline: now + UPSTREAM_TIMEOUT,
            },
        );
        Some(query)
    }

    /// An upstream's reply `reply` from `from`: when it matches a pending query (id, the
    /// upstream it was sent to, the question), the client to send it to, with the client's id
    /// put back in `reply`.
    pub fn take_reply(
        &mut self,
        from: SocketAddr,
        reply: &mut [u8],
        upstreams: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let m = Message::parse(reply).ok()?;
        if !m.header.is_response() {
            return None;
        }
        let p = self.map.get(&m.header.id)?;
        if upstreams.get(p.upstream) != Some(&from) {
            return None;
        }
        if !m.questions.first().is_some_and(|q| q.same(&p.question)) {
            return None;
        }
        let p = self.map.remove(&m.header.id)?;
        reply[..2].copy_from_slice(&p.orig_id.to_be_bytes());
        Some(p.client)
    }

    /// Queries past their deadline at `now`: retried once on the next upstream, then failed.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let mut out = Vec::new();
        let late: Vec<u16> = self
            .map
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(p) = self.map.get_mut(&id) else {
                continue;
            };
            if !p.retried {
                p.retried = true;
                p.upstream = (p.upstream + 1) % self.n_upstreams.max(1);
                p.deadline = now + UPSTREAM_TIMEOUT;
                out.push(Expired::Retry {
                    upstream: p.upstream,
                    query: p.query.clone(),
                });
            } else if let Some(p) = self.map.remove(&id) {
                let reply = match Message::parse(&p.query) {
                    Ok(mut m) => {
                        m.header.id = p.orig_id;
                        build_reply(&m, RCODE_SERVFAIL, false, &[])
                    }
                    Err(_) => continue,
                };
                out.push(Expired::Fail {
                    client: p.client,
                    reply,
                });
            }
        }
        out
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
                "DNS for {ifname}: {addr} ({proto}) is already in use{who}; stop that DNS server or set dns.mode=none"
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
        decide(msg, &self.cfg.domain, self.cfg.gateway, &lookup)
    }
}

/// A running DNS server of one bridge; [`DnsServer::stop`] (or drop) ends its threads.
pub struct DnsServer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A random 16-bit query id.
pub fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Never expected; fall back on the clock's low bits.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return n as u16;
    }
    u16::from_ne_bytes(b)
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

/// One TCP-framed message (a 2-byte length, then the message).
pub fn read_framed(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut msg)?;
    Ok(msg)
}

/// Write `msg` TCP-framed.
pub fn write_framed(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out)
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
