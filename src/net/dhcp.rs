//! The DHCPv4 server of one managed bridge, in the daemon (LXD runs dnsmasq for this).
//!
//! Three layers, the first two pure and tested without sockets:
//! - [`Packet`]: BOOTP/DHCP packets ([`Packet::parse`], [`Packet::write`]). Parsing is
//!   bounds-checked and never panics: the fixed 236-byte header, the magic cookie, then options
//!   (pad, end, code/length/value; a repeated option is concatenated as RFC 3396 says). Option 52
//!   (overload: more options in `sname`/`file`) is ignored, as are unknown options; option 81
//!   (client FQDN) is read as an unknown option and the client gets no FQDN answer.
//! - [`DhcpLogic`]: the server's state machine, `handle(store, request, now) -> reply`, over a
//!   [`DhcpConfig`] and the bridge's [`LeaseStore`]. Authoritative for its subnet (as LXD's
//!   dnsmasq `--dhcp-authoritative`): a client asking for an address that is not its own gets a
//!   NAK. Allocation order: the MAC's static address, its previous address, the address it asks
//!   for, the first never-used address of the ranges, then the first expired one. DECLINE holds
//!   an address back for [`DECLINE_SECS`]; RELEASE forgets the lease. The host name from option
//!   12 is kept after sanitising it to one DNS label (an instance's name wins).
//! - [`DhcpServer`]: a thread with a UDP socket on `0.0.0.0:67` bound to the bridge
//!   (`SO_BINDTODEVICE`: it never sees or answers packets of other interfaces). Replies are
//!   broadcast to `255.255.255.255:68` on the bridge, or sent to `ciaddr` when the client has an
//!   address (renewal, INFORM). No raw sockets: a client that cannot receive broadcasts before
//!   having an address is not served (every common client can).
//!
//! Limits: no relay agents (packets with `giaddr` are ignored), no BOOTP-only clients, no
//! rapid commit, leases keyed by MAC (option 61 is read but not used as the key: LXD's static
//! leases are per MAC too).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::leases::LeaseStore;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// How long a declined address is not handed out.
pub const DECLINE_SECS: u64 = 600;
/// How long an OFFER holds an address for the client it was made to.
pub const OFFER_SECS: u64 = 60;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const HEADER_LEN: usize = 236;
/// Largest packet read or written (a DHCP message fits an Ethernet frame).
pub const MAX_PACKET: usize = 1500;

pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOST_NAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const BROADCAST: u8 = 28;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MSG_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAM_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const T1: u8 = 58;
    pub const T2: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const FQDN: u8 = 81;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }
}

/// Why a packet was not parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the fixed header and the cookie.
    TooShort(usize),
    /// No DHCP magic cookie (plain BOOTP).
    NoCookie,
    /// An option runs past the end of the packet.
    TruncatedOption(u8),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooShort(n) => write!(f, "packet too short ({n} bytes)"),
            ParseError::NoCookie => write!(f, "no DHCP magic cookie"),
            ParseError::TruncatedOption(c) => write!(f, "option {c} runs past the packet"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A BOOTP/DHCP packet. Options are kept in order, one entry per code (repeats concatenated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: [u8; 64],
    pub file: [u8; 128],
    pub options: Vec<(u8, Vec<u8>)>,
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn ip_opt(v: &[u8]) -> Option<Ipv4Addr> {
    (v.len() == 4).then(|| ip_at(v, 0))
}

impl Packet {
    /// An empty packet (op 0, no options).
    pub fn empty() -> Packet {
        Packet {
            op: 0,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [0; 16],
            sname: [0; 64],
            file: [0; 128],
            options: Vec::new(),
        }
    }

    /// Parse a packet; never panics.
    pub fn parse(b: &[u8]) -> Result<Packet, ParseError> {
        if b.len() < HEADER_LEN + 4 {
            return Err(ParseError::TooShort(b.len()));
        }
        if b[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
            return Err(ParseError::NoCookie);
        }
        let mut p = Packet::empty();
        p.op = b[0];
        p.htype = b[1];
        p.hlen = b[2];
        p.hops = b[3];
        p.xid = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        p.secs = u16::from_be_bytes([b[8], b[9]]);
        p.flags = u16::from_be_bytes([b[10], b[11]]);
        p.ciaddr = ip_at(b, 12);
        p.yiaddr = ip_at(b, 16);
        p.siaddr = ip_at(b, 20);
        p.giaddr = ip_at(b, 24);
        p.chaddr.copy_from_slice(&b[28..44]);
        p.sname.copy_from_slice(&b[44..108]);
        p.file.copy_from_slice(&b[108..236]);
        let mut i = HEADER_LEN + 4;
        while i < b.len() {
            let code = b[i];
            if code == opt::PAD {
                i += 1;
                continue;
            }
            if code == opt::END {
                break;
            }
            let Some(&len) = b.get(i + 1) else {
                return Err(ParseError::TruncatedOption(code));
            };
            let start = i + 2;
            let end = start + len as usize;
            let Some(val) = b.get(start..end) else {
                return Err(ParseError::TruncatedOption(code));
            };
            match p.options.iter_mut().find(|(c, _)| *c == code) {
                Some((_, v)) => v.extend_from_slice(val),
                None => p.options.push((code, val.to_vec())),
            }
            i = end;
        }
        Ok(p)
    }

    /// Serialise: header, cookie, options (values over 255 bytes split into several), end, padded
    /// to BOOTP's 300-byte minimum.
    pub fn write(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(548);
        b.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.extend_from_slice(&self.sname);
        b.extend_from_slice(&self.file);
        b.extend_from_slice(&MAGIC);
        for (code, val) in &self.options {
            if *code == opt::PAD || *code == opt::END {
                continue;
            }
            if val.is_empty() {
                b.extend_from_slice(&[*code, 0]);
            }
            for chunk in val.chunks(255) {
                b.push(*code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(opt::END);
        while b.len() < 300 {
            b.push(opt::PAD);
        }
        b
    }

    /// The value of option `code`.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// Set option `code` (replacing it).
    pub fn set_option(&mut self, code: u8, val: Vec<u8>) {
        match self.options.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => *v = val,
            None => self.options.push((code, val)),
        }
    }

    pub fn msg_type(&self) -> Option<MessageType> {
        match self.option(opt::MSG_TYPE)? {
            [t] => MessageType::from_u8(*t),
            _ => None,
        }
    }

    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        ip_opt(self.option(opt::REQUESTED_IP)?)
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        ip_opt(self.option(opt::SERVER_ID)?)
    }

    /// The client's Ethernet address (None unless htype 1 with hlen 6).
    pub fn mac(&self) -> Option<[u8; 6]> {
        if self.htype != 1 || self.hlen != 6 {
            return None;
        }
        let mut m = [0; 6];
        m.copy_from_slice(&self.chaddr[..6]);
        Some(m)
    }

    /// The host name (option 12) sanitised to one DNS label ("" when none is usable).
    pub fn hostname(&self) -> String {
        self.option(opt::HOST_NAME)
            .map(sanitize_hostname)
            .unwrap_or_default()
    }
}

/// The first label of `raw`, lowercased, only `[a-z0-9-]` (others dropped), no leading or
/// trailing `-`, at most 63 bytes.
pub fn sanitize_hostname(raw: &[u8]) -> String {
    let first = raw.split(|&c| c == b'.').next().unwrap_or(&[]);
    let mut s: String = first
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'-')
        .map(char::from)
        .take(63)
        .collect();
    while s.ends_with('-') {
        s.pop();
    }
    s.trim_start_matches('-').to_owned()
}

/// The configuration of one bridge's DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The bridge.
    pub ifname: String,
    /// The bridge's address (server identifier).
    pub server: Ipv4Addr,
    pub prefix: u8,
    /// Inclusive ranges; empty: the whole subnet but network, broadcast and server.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub lease_secs: u32,
    pub router: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
    /// Option 15; empty: not sent.
    pub domain: String,
    /// Option 26.
    pub mtu: Option<u16>,
}

impl DhcpConfig {
    pub fn netmask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        }
    }

    pub fn network(&self) -> u32 {
        u32::from(self.server) & self.netmask()
    }

    pub fn broadcast(&self) -> u32 {
        self.network() | !self.netmask()
    }

    /// Is `ip` a host address of the subnet (not network or broadcast)?
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n & self.netmask() == self.network() && n != self.network() && n != self.broadcast()
    }

    /// Check the configuration: a prefix of 8 to 30, ranges inside the subnet and ordered, a
    /// lease time of at least a minute.
    pub fn validate(&self) -> Result<(), String> {
        if !(8..=30).contains(&self.prefix) {
            return Err(format!(
                "DHCP needs a prefix length between 8 and 30, not {}",
                self.prefix
            ));
        }
        if !self.in_subnet(self.server) {
            return Err(format!(
                "server address {} is the network or broadcast address",
                self.server
            ));
        }
        for &(a, b) in &self.ranges {
            if !self.in_subnet(a) || !self.in_subnet(b) || u32::from(a) > u32::from(b) {
                return Err(format!(
                    "DHCP range {a}-{b} is not an ordered range inside {}/{}",
                    Ipv4Addr::from(self.network()),
                    self.prefix
                ));
            }
        }
        if self.lease_secs < 60 {
            return Err(format!(
                "DHCP lease time {}s is under a minute",
                self.lease_secs
            ));
        }
        if self.ifname.is_empty() || self.ifname.len() > 15 {
            return Err(format!("bad interface name {:?}", self.ifname));
        }
        Ok(())
    }

    /// The effective ranges as inclusive u32 pairs.
    fn pool(&self) -> Vec<(u32, u32)> {
        if self.ranges.is_empty() {
            vec![(self.network() + 1, self.broadcast() - 1)]
        } else {
            self.ranges
                .iter()
                .map(|&(a, b)| (u32::from(a), u32::from(b)))
                .collect()
        }
    }

    /// Is `ip` an address this server may hand out dynamically?
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        ip != self.server
            && self.in_subnet(ip)
            && self.pool().iter().any(|&(a, b)| a <= n && n <= b)
    }
}

/// The server's state machine: the config and the offers made (held for [`OFFER_SECS`]).
#[derive(Debug)]
pub struct DhcpLogic {
    pub cfg: DhcpConfig,
    offers: Vec<([u8; 6], Ipv4Addr, u64)>,
}

/// At most this many outstanding offers (older ones are dropped first).
const MAX_OFFERS: usize = 1024;

impl DhcpLogic {
    pub fn new(cfg: DhcpConfig) -> DhcpLogic {
        DhcpLogic {
            cfg,
            offers: Vec::new(),
        }
    }

    fn offered_to_other(&self, ip: Ipv4Addr, mac: &[u8; 6], now: u64) -> bool {
        self.offers
            .iter()
            .any(|(m, i, until)| *i == ip && m != mac && *until > now)
    }

    /// May `mac` hold `ip`? Its static address, or (without one) a pool address nobody else
    /// holds.
    fn allowed(&self, store: &LeaseStore, mac: &[u8; 6], ip: Ipv4Addr, now: u64) -> bool {
        if let Some(st_ip) = store.static_ip(mac, now) {
            return ip == st_ip;
        }
        self.cfg.in_pool(ip) && !store.taken_by_other(ip, mac, now)
    }

    /// The address to offer `mac`: static, previous, requested, never used, expired.
    fn choose(
        &self,
        store: &LeaseStore,
        mac: &[u8; 6],
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = store.static_ip(mac, now) {
            return (self.cfg.in_subnet(ip) && ip != self.cfg.server).then_some(ip);
        }
        let free = |ip: Ipv4Addr| {
            self.allowed(store, mac, ip, now) && !self.offered_to_other(ip, mac, now)
        };
        if let Some((_, ip, _)) = self.offers.iter().find(|(m, _, u)| m == mac && *u > now) {
            if free(*ip) {
                return Some(*ip);
            }
        }
        if let Some(prev) = store.dynamic_for(mac) {
            if free(prev.ip) {
                return Some(prev.ip);
            }
        }
        if let Some(r) = requested {
            if free(r) && !store.ever_used(r) {
                return Some(r);
            }
        }
        for pass in 0..2 {
            for (a, b) in self.cfg.pool() {
                for n in a..=b {
                    let ip = Ipv4Addr::from(n);
                    if (pass == 1 || !store.ever_used(ip)) && free(ip) {
                        return Some(ip);
                    }
                }
            }
        }
        None
    }

    fn reply(&self, req: &Packet, kind: MessageType) -> Packet {
        let mut r = Packet::empty();
        r.op = 2;
        r.htype = req.htype;
        r.hlen = req.hlen;
        r.xid = req.xid;
        r.flags = req.flags;
        r.giaddr = req.giaddr;
        r.chaddr = req.chaddr;
        r.set_option(opt::MSG_TYPE, vec![kind as u8]);
        r.set_option(opt::SERVER_ID, self.cfg.server.octets().to_vec());
        r
    }

    fn add_params(&self, r: &mut Packet, with_lease: bool) {
        let c = &self.cfg;
        if with_lease {
            let l = c.lease_secs;
            r.set_option(opt::LEASE_TIME, l.to_be_bytes().to_vec());
            r.set_option(opt::T1, (l / 2).to_be_bytes().to_vec());
            r.set_option(opt::T2, (l / 8 * 7).to_be_bytes().to_vec());
        }
        r.set_option(opt::SUBNET_MASK, c.netmask().to_be_bytes().to_vec());
        r.set_option(opt::BROADCAST, c.broadcast().to_be_bytes().to_vec());
        if let Some(rt) = c.router {
            r.set_option(opt::ROUTER, rt.octets().to_vec());
        }
        if let Some(d) = c.dns {
            r.set_option(opt::DNS, d.octets().to_vec());
        }
        if !c.domain.is_empty() {
            r.set_option(opt::DOMAIN_NAME, c.domain.as_bytes().to_vec());
        }
        if let Some(m) = c.mtu {
            r.set_option(opt::MTU, m.to_be_bytes().to_vec());
        }
    }

    fn nak(&self, req: &Packet, why: &str) -> Packet {
        let mut r = self.reply(req, MessageType::Nak);
        r.flags |= 0x8000;
        r.set_option(opt::MESSAGE, why.as_bytes().to_vec());
        r
    }

    /// Answer one request at unix time `now` (None: no answer). Lease changes go to `store`
    /// (persisted by it); a store that cannot persist means no ACK.
    pub fn handle(&mut self, store: &mut LeaseStore, req: &Packet, now: u64) -> Option<Packet> {
        if req.op != 1 || req.giaddr != Ipv4Addr::UNSPECIFIED {
            return None;
        }
        let mac = req.mac()?;
        self.offers.retain(|(_, _, until)| *until > now);
        match req.msg_type()? {
            MessageType::Discover => {
                let ip = self.choose(store, &mac, req.requested_ip(), now)?;
                self.offers.retain(|(m, _, _)| *m != mac);
                if self.offers.len() >= MAX_OFFERS {
                    self.offers.remove(0);
                }
                self.offers.push((mac, ip, now + OFFER_SECS));
                let mut r = self.reply(req, MessageType::Offer);
                r.yiaddr = ip;
                self.add_params(&mut r, true);
                Some(r)
            }
            MessageType::Request => {
                let ip = match req.server_id() {
                    Some(sid) if sid != self.cfg.server => {
                        // The client chose another server.
                        self.offers.retain(|(m, _, _)| *m != mac);
                        return None;
                    }
                    // SELECTING.
                    Some(_) => req.requested_ip()?,
                    // INIT-REBOOT (requested IP) or RENEWING/REBINDING (ciaddr).
                    None => match req.requested_ip() {
                        Some(ip) => ip,
                        None if req.ciaddr != Ipv4Addr::UNSPECIFIED => req.ciaddr,
                        None => return None,
                    },
                };
                if !self.allowed(store, &mac, ip, now)
                    || self.offered_to_other(ip, &mac, now)
                    || !self.cfg.in_subnet(ip)
                    || ip == self.cfg.server
                {
                    // The client is told the address is not its own: a lease it had on it goes,
                    // and its name with it.
                    if store.dynamic_for(&mac).is_some_and(|l| l.ip == ip) {
                        if let Err(e) = store.release_mac(mac) {
                            eprintln!(
                                "dhcp {}: dropping the NAKed lease of {ip}: {e}",
                                self.cfg.ifname
                            );
                        }
                    }
                    return Some(self.nak(req, "address not available"));
                }
                self.offers.retain(|(m, _, _)| *m != mac);
                let is_static = store.static_ip(&mac, now).is_some();
                if !is_static {
                    let host = req.hostname();
                    let host = if host.is_empty() {
                        store
                            .dynamic_for(&mac)
                            .map(|l| l.hostname.clone())
                            .unwrap_or_default()
                    } else {
                        host
                    };
                    let expires = now + u64::from(self.cfg.lease_secs);
                    if let Err(e) = store.commit(mac, ip, &host, expires) {
                        eprintln!("dhcp {}: not acknowledging {ip}: {e}", self.cfg.ifname);
                        return None;
                    }
                }
                let mut r = self.reply(req, MessageType::Ack);
                r.yiaddr = ip;
                r.ciaddr = req.ciaddr;
                self.add_params(&mut r, true);
                Some(r)
            }
            MessageType::Decline => {
                if req.server_id() != Some(self.cfg.server) {
                    return None;
                }
                let ip = req.requested_ip()?;
                // Only the holder of the address may decline it.
                let holds = store.dynamic_for(&mac).is_some_and(|l| l.ip == ip)
                    || self.offers.iter().any(|(m, i, _)| *m == mac && *i == ip);
                if holds {
                    self.offers.retain(|(m, _, _)| *m != mac);
                    if let Err(e) = store.decline(ip, now + DECLINE_SECS, now) {
                        eprintln!("dhcp {}: decline of {ip}: {e}", self.cfg.ifname);
                    }
                }
                None
            }
            MessageType::Release => {
                if req.server_id().is_some_and(|s| s != self.cfg.server) {
                    return None;
                }
                if store.dynamic_for(&mac).is_some_and(|l| l.ip == req.ciaddr) {
                    if let Err(e) = store.release_mac(mac) {
                        eprintln!("dhcp {}: release of {}: {e}", self.cfg.ifname, req.ciaddr);
                    }
                }
                None
            }
            MessageType::Inform => {
                let mut r = self.reply(req, MessageType::Ack);
                r.ciaddr = req.ciaddr;
                self.add_params(&mut r, false);
                Some(r)
            }
            MessageType::Offer | MessageType::Ack | MessageType::Nak => None,
        }
    }
}

/// Where a reply goes: NAKs and replies to clients without an address are broadcast; a client
/// with `ciaddr` gets it unicast.
pub fn reply_destination(req: &Packet, reply: &Packet) -> SocketAddrV4 {
    if reply.msg_type() != Some(MessageType::Nak) && req.ciaddr != Ipv4Addr::UNSPECIFIED {
        SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    }
}

/// A running DHCP server of one bridge; [`DhcpServer::stop`] (or drop) ends its thread.
pub struct DhcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    malformed: Arc<AtomicU64>,
    ifname: String,
}

/// The poll interval of the server loop (how fast `stop` returns).
const TICK: Duration = Duration::from_millis(200);

fn bind_socket(ifname: &str) -> io::Result<UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let named = |what: &str, e: nix::Error| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("DHCP on {ifname}: {what} for UDP port {SERVER_PORT}: {e}"),
        )
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| named("socket", e))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| named("SO_REUSEADDR", e))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(|e| named("SO_BROADCAST", e))?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )
    .map_err(|e| named("SO_BINDTODEVICE", e))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(0, 0, 0, 0, SERVER_PORT),
    )
    .map_err(|e| named("binding 0.0.0.0", e))?;
    let s = UdpSocket::from(fd);
    s.set_read_timeout(Some(TICK))?;
    Ok(s)
}

impl DhcpServer {
    /// Start serving `cfg.ifname` (UDP `0.0.0.0:67` bound to that interface only).
    pub fn start(cfg: DhcpConfig, store: Arc<Mutex<LeaseStore>>) -> io::Result<DhcpServer> {
        cfg.validate().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("DHCP on {}: {e}", cfg.ifname),
            )
        })?;
        let sock = bind_socket(&cfg.ifname)?;
        let stop = Arc::new(AtomicBool::new(false));
        let malformed = Arc::new(AtomicU64::new(0));
        let ifname = cfg.ifname.clone();
        let (st, mf) = (stop.clone(), malformed.clone());
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{ifname}"))
            .spawn(move || serve(sock, DhcpLogic::new(cfg), store, st, mf))?;
        Ok(DhcpServer {
            stop,
            thread: Some(thread),
            malformed,
            ifname,
        })
    }

    /// How many packets were dropped as malformed.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Stop the thread and wait for it (within one poll interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    sock: UdpSocket,
    mut logic: DhcpLogic,
    store: Arc<Mutex<LeaseStore>>,
    stop: Arc<AtomicBool>,
    malformed: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::SeqCst) {
        let (n, _from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                eprintln!("dhcp {}: receive: {e}", logic.cfg.ifname);
                std::thread::sleep(TICK);
                continue;
            }
        };
        let req = match Packet::parse(&buf[..n]) {
            Ok(p) => p,
            Err(_) => {
                malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let now = super::leases::unix_now();
        let reply = {
            let mut st = store.lock().unwrap_or_else(|e| e.into_inner());
            logic.handle(&mut st, &req, now)
        };
        if let Some(reply) = reply {
            let to = reply_destination(&req, &reply);
            if let Err(e) = sock.send_to(&reply.write(), SocketAddr::V4(to)) {
                eprintln!("dhcp {}: reply to {to}: {e}", logic.cfg.ifname);
            }
        }
    }
}

/// Fuzzing entry point (`tests/fuzz`, and the deterministic test below): parse, write and
/// re-parse (must give the same packet), and run the server logic on it. Must never panic.
#[doc(hidden)]
pub fn fuzz_packet(data: &[u8]) {
    let Ok(p) = Packet::parse(data) else {
        return;
    };
    let again = Packet::parse(&p.write()).expect("a written packet parses");
    assert_eq!(again, p);
    let mut store = LeaseStore::in_memory();
    let _ = store.set_static(vec![super::leases::StaticLease {
        mac: [0, 0x16, 0x3e, 1, 2, 3],
        ip: Some(Ipv4Addr::new(10, 9, 0, 50)),
        hostname: "st".into(),
    }]);
    let mut logic = DhcpLogic::new(DhcpConfig {
        ifname: "fuzz0".into(),
        server: Ipv4Addr::new(10, 9, 0, 1),
        prefix: 24,
        ranges: vec![(Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 20))],
        lease_secs: 3600,
        router: Some(Ipv4Addr::new(10, 9, 0, 1)),
        dns: Some(Ipv4Addr::new(10, 9, 0, 1)),
        domain: "bivy".into(),
        mtu: Some(1500),
    });
    for now in [1000, 1000, 5000] {
        if let Some(r) = logic.handle(&mut store, &p, now) {
            let w = r.write();
            let back = Packet::parse(&w).expect("a reply parses");
            assert_eq!(back, r);
            let _ = reply_destination(&p, &r);
        }
    }
}

#[cfg(test)]
mod tests;
