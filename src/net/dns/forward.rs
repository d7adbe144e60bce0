//! Forwarding to the upstream servers: which servers (the host's `resolv.conf`, past
//! systemd-resolved's stub), and [`Inflight`], the forwarded UDP queries, each sent upstream
//! under a fresh random id ([`random_id`]) and matched back by id, upstream address and question;
//! a query unanswered after [`UPSTREAM_TIMEOUT`] is retried once on the next upstream, then gets
//! SERVFAIL. Pure bookkeeping: the sockets are the server's.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::wire::{build_reply, Message, Question, RCODE_SERVFAIL};

/// Forwarded UDP queries waiting for an upstream at once.
pub const MAX_INFLIGHT: usize = 512;
/// How long one upstream gets to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(2000);

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
    crate::net::resolve::ResolvConf::parse(text, "").nameservers
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
