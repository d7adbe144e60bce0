//! rtnetlink, our own: links (bridge, dummy, veth, macvlan), their flags, MTU, MAC, master and
//! network namespace, IPv4/IPv6 addresses and routes, over a `NETLINK_ROUTE` socket.
//!
//! Why our own: the message set bivy needs is small (a dozen request shapes), the rtnetlink crates
//! pull in async runtimes or large generated trees, and `ip` is not on every host (and parsing its
//! output is worse). The socket is nix's safe one (`AddressFamily::Netlink`); the only syscall
//! nix lacks (`setsockopt(SOL_NETLINK, NETLINK_EXT_ACK)`) is in `crate::sys`.
//!
//! - A [`Netlink`] talks to the network namespace of the thread that opened it (the socket keeps
//!   that namespace even if used from elsewhere). [`in_netns`] runs a closure on a short-lived
//!   thread that joined another process's network namespace: the calling thread never moves, so
//!   the daemon's invariant "the daemon never changes namespace" holds for every thread that
//!   outlives the call.
//! - Requests carry `NLM_F_ACK`; every reply is matched by sequence number and port id (stale
//!   replies of an earlier request are skipped), dumps are read to `NLMSG_DONE` across as many
//!   datagrams as the kernel sends, each datagram is sized with `MSG_PEEK|MSG_TRUNC` first so a
//!   large one is never cut, and a dump the kernel marks interrupted (`NLM_F_DUMP_INTR`) is
//!   restarted.
//! - Errors name the operation and the link, keep the errno's kind (`EEXIST` is
//!   `AlreadyExists`, `ENODEV`/`ESRCH`/`ENOENT` are `NotFound`) and carry the kernel's extended
//!   ack text (`NETLINK_EXT_ACK`, `NLMSGERR_ATTR_MSG`) when it sent one.
//! - Message building and parsing are pure functions over byte slices ([`MsgBuilder`],
//!   [`parse_messages`], [`parse_attrs`]); a truncated or malformed reply is an `InvalidData`
//!   error, never a panic.
//! - Interface names are checked before anything is sent (1 to 15 bytes, no `/`, no whitespace,
//!   not `.` or `..`, the kernel's own rule in `dev_valid_name`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

// ---- constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h) ----

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an `NLMSG_ERROR`: the original request is cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR`: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;

const NLMSGERR_ATTR_MSG: u16 = 1;

const SOL_NETLINK: i32 = 270;
const NETLINK_EXT_ACK: i32 = 11;

const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_MACVLAN_MODE: u16 = 1;

const IFF_UP: u32 = 0x1;
const IF_OPER_UP: u8 = 6;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// Longest interface name (`IFNAMSIZ` minus the NUL).
pub const IFNAME_MAX: usize = 15;

/// How long a reply may take before the request is an error (the kernel answers at once; this
/// only bounds a wedged socket).
const REPLY_TIMEOUT_SECS: i64 = 30;

// ---- public types ----

/// A target network namespace: a process's (`IFLA_NET_NS_PID`) or an open namespace file
/// (`IFLA_NET_NS_FD`, e.g. `/proc/PID/ns/net` or a bind-mounted one).
#[derive(Debug, Clone, Copy)]
pub enum Netns<'a> {
    Pid(i32),
    Fd(BorrowedFd<'a>),
}

/// What a new link looks like. `netns` creates it directly in that namespace (used for a veth
/// peer, so the container's end never appears on the host under its final name).
#[derive(Debug, Clone)]
pub struct LinkSpec<'a> {
    pub name: &'a str,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub netns: Option<Netns<'a>>,
}

impl<'a> LinkSpec<'a> {
    /// A link named `name`, kernel-chosen MAC and MTU, down, in the current namespace.
    pub fn new(name: &'a str) -> LinkSpec<'a> {
        LinkSpec {
            name,
            mac: None,
            mtu: None,
            up: false,
            netns: None,
        }
    }
}

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` ("bridge", "veth", ...) or "" for links without one (physical, lo).
    pub kind: String,
    pub master: Option<u32>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// Operational state is `UP` (carrier and lower layers up).
    pub oper_up: bool,
    pub flags: u32,
}

/// One address of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    /// `RT_SCOPE_*`: 0 universe, 253 link, 254 host.
    pub scope: u8,
}

/// One route, of any table and either family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub table: u32,
}

/// `IFLA_MACVLAN_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
}

impl MacvlanMode {
    fn value(self) -> u32 {
        match self {
            MacvlanMode::Private => 1,
            MacvlanMode::Vepa => 2,
            MacvlanMode::Bridge => 4,
            MacvlanMode::Passthru => 8,
        }
    }
}

// ---- names and MACs ----

/// The kernel's rule for interface names (`dev_valid_name`): 1 to 15 bytes, no `/`, no
/// whitespace, not `.` or `..`. Also refuses `:` (alias syntax) and NUL.
pub fn check_name(name: &str) -> io::Result<()> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAME_MAX {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not allowed")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}: {why}"),
        )),
        None => Ok(()),
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case) to bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Bytes to `aa:bb:cc:dd:ee:ff` (lower case, as `ip` and LXD print it).
pub fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

// ---- message building (pure) ----

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink request: header, family header, attributes (nested ones through
/// [`MsgBuilder::begin_nest`]/[`MsgBuilder::end_nest`]).
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    /// A message of type `ty` with `flags` (`NLM_F_REQUEST` is added).
    pub fn new(ty: u16, flags: u16) -> MsgBuilder {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        MsgBuilder { buf }
    }

    /// Raw bytes (a family header), padded to 4.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.push(data);
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    /// Opens a nested attribute; returns the offset [`MsgBuilder::end_nest`] needs.
    pub fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The finished message with its length, sequence number and port id.
    pub fn finish(mut self, seq: u32, pid: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf[12..16].copy_from_slice(&pid.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn ifaddrmsg(family: u8, prefix: u8, scope: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut h = [0u8; IFADDRMSG_LEN];
    h[0] = family;
    h[1] = prefix;
    h[3] = scope;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn netns_attr(b: &mut MsgBuilder, ns: &Netns) {
    match ns {
        Netns::Pid(pid) => b.attr_u32(IFLA_NET_NS_PID, *pid as u32),
        Netns::Fd(fd) => b.attr_u32(IFLA_NET_NS_FD, fd.as_raw_fd() as u32),
    }
}

/// The attributes of a [`LinkSpec`] (name, MAC, MTU, namespace), after its ifinfomsg.
fn spec_attrs(b: &mut MsgBuilder, spec: &LinkSpec) {
    b.attr_str(IFLA_IFNAME, spec.name);
    if let Some(mac) = spec.mac {
        b.attr(IFLA_ADDRESS, &mac);
    }
    if let Some(mtu) = spec.mtu {
        b.attr_u32(IFLA_MTU, mtu);
    }
    if let Some(ns) = &spec.netns {
        netns_attr(b, ns);
    }
}

fn up_flags(up: bool) -> (u32, u32) {
    if up {
        (IFF_UP, IFF_UP)
    } else {
        (0, 0)
    }
}

/// Kind-specific `IFLA_INFO_DATA` of a new link.
enum InfoData<'a> {
    None,
    VethPeer(&'a LinkSpec<'a>),
    Macvlan(MacvlanMode),
}

/// `RTM_NEWLINK` with `NLM_F_CREATE|NLM_F_EXCL` for a link of `kind`.
fn newlink_msg(spec: &LinkSpec, kind: &str, link: Option<u32>, data: InfoData) -> MsgBuilder {
    let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    let (flags, change) = up_flags(spec.up);
    b.push(&ifinfomsg(AF_UNSPEC, 0, flags, change));
    spec_attrs(&mut b, spec);
    if let Some(link) = link {
        b.attr_u32(IFLA_LINK, link);
    }
    let info = b.begin_nest(IFLA_LINKINFO);
    b.attr_str(IFLA_INFO_KIND, kind);
    match data {
        InfoData::None => {}
        InfoData::VethPeer(peer) => {
            let d = b.begin_nest(IFLA_INFO_DATA);
            // VETH_INFO_PEER holds an ifinfomsg followed by the peer's own attributes.
            // Its IFF_UP is not asked for here: the kernel configures the peer before pairing
            // it, so opening it fails with ENOTCONN ([`Netlink::create_veth`] sets it up after).
            let p = b.begin_nest(VETH_INFO_PEER);
            b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
            spec_attrs(&mut b, peer);
            b.end_nest(p);
            b.end_nest(d);
        }
        InfoData::Macvlan(mode) => {
            let d = b.begin_nest(IFLA_INFO_DATA);
            b.attr_u32(IFLA_MACVLAN_MODE, mode.value());
            b.end_nest(d);
        }
    }
    b.end_nest(info);
    b
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn check_prefix(addr: &IpAddr, prefix: u8) -> io::Result<()> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid prefix length /{prefix} for {addr}"),
        ));
    }
    Ok(())
}

/// `RTM_NEWADDR`/`RTM_DELADDR` for `addr/prefix` on link `index` (IPv4 gets its broadcast).
fn addr_msg(ty: u16, flags: u16, index: u32, addr: IpAddr, prefix: u8) -> MsgBuilder {
    let mut b = MsgBuilder::new(ty, flags);
    b.push(&ifaddrmsg(
        family_of(&addr),
        prefix,
        RT_SCOPE_UNIVERSE,
        index,
    ));
    let bytes = ip_bytes(&addr);
    b.attr(IFA_LOCAL, &bytes);
    b.attr(IFA_ADDRESS, &bytes);
    if let IpAddr::V4(a) = addr {
        if prefix < 31 {
            let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let brd = Ipv4Addr::from(u32::from(a) | host);
            b.attr(IFA_BROADCAST, &brd.octets());
        }
    }
    b
}

/// `RTM_NEWROUTE`/`RTM_DELROUTE` in the main table.
fn route_msg(
    ty: u16,
    flags: u16,
    dst: IpAddr,
    prefix: u8,
    oif: u32,
    gateway: Option<IpAddr>,
) -> MsgBuilder {
    let mut b = MsgBuilder::new(ty, flags);
    let mut h = [0u8; RTMSG_LEN];
    h[0] = family_of(&dst);
    h[1] = prefix;
    h[4] = RT_TABLE_MAIN;
    h[5] = RTPROT_BOOT;
    h[6] = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    h[7] = RTN_UNICAST;
    b.push(&h);
    if prefix > 0 {
        b.attr(RTA_DST, &ip_bytes(&dst));
    }
    b.attr_u32(RTA_OIF, oif);
    if let Some(gw) = gateway {
        b.attr(RTA_GATEWAY, &ip_bytes(&gw));
    }
    b.attr_u32(RTA_TABLE, u32::from(RT_TABLE_MAIN));
    b
}

// ---- parsing (pure) ----

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("netlink: malformed reply: {what}"),
    )
}

fn u16_at(b: &[u8], at: usize) -> io::Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or_else(|| malformed("short field"))
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| malformed("short field"))
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into its messages; a length that runs past the end or under the header is
/// an error.
pub fn parse_messages(buf: &[u8]) -> io::Result<Vec<NlMsg<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < NLMSG_HDRLEN {
            return Err(malformed("truncated message header"));
        }
        let len = u32_at(rest, 0)? as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(malformed("message length out of bounds"));
        }
        out.push(NlMsg {
            ty: u16_at(rest, 4)?,
            flags: u16_at(rest, 6)?,
            seq: u32_at(rest, 8)?,
            pid: u32_at(rest, 12)?,
            payload: &rest[NLMSG_HDRLEN..len],
        });
        at += align4(len).min(rest.len());
    }
    Ok(out)
}

/// The attributes in `buf` as (type without the nested/byte-order flags, payload).
pub fn parse_attrs(buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = u16_at(buf, at)? as usize;
        let ty = u16_at(buf, at + 2)? & NLA_TYPE_MASK;
        if len < 4 || at + len > buf.len() {
            return Err(malformed("attribute length out of bounds"));
        }
        out.push((ty, &buf[at + 4..at + len]));
        at += align4(len);
    }
    Ok(out)
}

fn attr<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn attr_u32(attrs: &[(u16, &[u8])], ty: u16) -> io::Result<Option<u32>> {
    match attr(attrs, ty) {
        None => Ok(None),
        Some(v) => u32_at(v, 0).map(Some),
    }
}

fn attr_string(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn ip_from(family: u8, v: &[u8]) -> io::Result<IpAddr> {
    match (family, v.len()) {
        (AF_INET, 4) => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (AF_INET6, 16) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(v);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => Err(malformed("address of unexpected family or length")),
    }
}

/// A `RTM_NEWLINK` payload to a [`Link`].
pub fn parse_link(payload: &[u8]) -> io::Result<Link> {
    if payload.len() < IFINFOMSG_LEN {
        return Err(malformed("short ifinfomsg"));
    }
    let index = u32_at(payload, 4)?;
    let flags = u32_at(payload, 8)?;
    let attrs = parse_attrs(&payload[IFINFOMSG_LEN..])?;
    let name = attr(&attrs, IFLA_IFNAME)
        .map(attr_string)
        .ok_or_else(|| malformed("link without a name"))?;
    let mut kind = String::new();
    if let Some(info) = attr(&attrs, IFLA_LINKINFO) {
        let info = parse_attrs(info)?;
        if let Some(k) = attr(&info, IFLA_INFO_KIND) {
            kind = attr_string(k);
        }
    }
    let mac = match attr(&attrs, IFLA_ADDRESS) {
        Some(v) if v.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(v);
            Some(m)
        }
        _ => None,
    };
    let oper_up = match attr(&attrs, IFLA_OPERSTATE) {
        Some(v) => v.first() == Some(&IF_OPER_UP),
        None => false,
    };
    Ok(Link {
        index,
        name,
        kind,
        master: attr_u32(&attrs, IFLA_MASTER)?.filter(|&m| m != 0),
        mtu: attr_u32(&attrs, IFLA_MTU)?.unwrap_or(0),
        mac,
        up: flags & IFF_UP != 0,
        oper_up,
        flags,
    })
}

/// A `RTM_NEWADDR` payload to an [`Addr`] (`None` for families other than IPv4/IPv6).
pub fn parse_addr(payload: &[u8]) -> io::Result<Option<Addr>> {
    if payload.len() < IFADDRMSG_LEN {
        return Err(malformed("short ifaddrmsg"));
    }
    let family = payload[0];
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let attrs = parse_attrs(&payload[IFADDRMSG_LEN..])?;
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on point-to-point links).
    let Some(raw) = attr(&attrs, IFA_LOCAL).or_else(|| attr(&attrs, IFA_ADDRESS)) else {
        return Ok(None);
    };
    Ok(Some(Addr {
        index: u32_at(payload, 4)?,
        addr: ip_from(family, raw)?,
        prefix: payload[1],
        scope: payload[3],
    }))
}

/// A `RTM_NEWROUTE` payload to a [`Route`] (`None` for families other than IPv4/IPv6).
pub fn parse_route(payload: &[u8]) -> io::Result<Option<Route>> {
    if payload.len() < RTMSG_LEN {
        return Err(malformed("short rtmsg"));
    }
    let family = payload[0];
    let unspecified = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return Ok(None),
    };
    let attrs = parse_attrs(&payload[RTMSG_LEN..])?;
    let dst = match attr(&attrs, RTA_DST) {
        Some(v) => ip_from(family, v)?,
        None => unspecified,
    };
    let gateway = match attr(&attrs, RTA_GATEWAY) {
        Some(v) => Some(ip_from(family, v)?),
        None => None,
    };
    Ok(Some(Route {
        dst,
        prefix: payload[1],
        oif: attr_u32(&attrs, RTA_OIF)?,
        gateway,
        table: attr_u32(&attrs, RTA_TABLE)?.unwrap_or(u32::from(payload[4])),
    }))
}

/// An `NLMSG_ERROR` payload: the (positive) errno, 0 for an ack, and the kernel's extended-ack
/// text if any.
pub fn parse_error(flags: u16, payload: &[u8]) -> io::Result<(i32, Option<String>)> {
    let err = u32_at(payload, 0).map_err(|_| malformed("short error message"))? as i32;
    let errno = err.checked_neg().unwrap_or(i32::MAX);
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // After the errno comes the original request: its header only when capped, else whole.
        let orig = if flags & NLM_F_CAPPED != 0 || errno == 0 {
            NLMSG_HDRLEN
        } else {
            let l = u32_at(payload, 4).map_err(|_| malformed("short error message"))? as usize;
            align4(l.max(NLMSG_HDRLEN))
        };
        let tlvs = payload
            .get(4 + orig..)
            .ok_or_else(|| malformed("error attributes out of bounds"))?;
        let attrs = parse_attrs(tlvs)?;
        msg = attr(&attrs, NLMSGERR_ATTR_MSG)
            .map(attr_string)
            .filter(|s| !s.is_empty());
    }
    Ok((errno, msg))
}

/// An `NLMSG_DONE` payload: the dump's errno (0 when it succeeded; old kernels may send no
/// payload) and the extended-ack text, which follows the errno directly.
pub fn parse_done(flags: u16, payload: &[u8]) -> io::Result<(i32, Option<String>)> {
    if payload.len() < 4 {
        return Ok((0, None));
    }
    let errno = (u32_at(payload, 0)? as i32)
        .checked_neg()
        .unwrap_or(i32::MAX);
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let attrs = parse_attrs(&payload[4..])?;
        msg = attr(&attrs, NLMSGERR_ATTR_MSG)
            .map(attr_string)
            .filter(|s| !s.is_empty());
    }
    Ok((errno, msg))
}

/// The error for a failed request: `what` (operation and link), the errno's text and the
/// kernel's own explanation, with the errno's kind.
pub fn request_error(what: &str, errno: i32, ext: Option<&str>) -> io::Error {
    let os = io::Error::from_raw_os_error(errno);
    let kind = match errno {
        libc::ENODEV | libc::ESRCH | libc::ENOENT => io::ErrorKind::NotFound,
        libc::EEXIST => io::ErrorKind::AlreadyExists,
        libc::EPERM | libc::EACCES => io::ErrorKind::PermissionDenied,
        libc::EOPNOTSUPP => io::ErrorKind::Unsupported,
        libc::EINVAL | libc::ERANGE => io::ErrorKind::InvalidInput,
        libc::EBUSY => io::ErrorKind::ResourceBusy,
        _ => os.kind(),
    };
    let text = match ext {
        Some(m) => format!("{what}: {m} ({os})"),
        None => format!("{what}: {os}"),
    };
    io::Error::new(kind, text)
}

// ---- the socket ----

/// The data messages of a reply: (type, payload).
type Reply = Vec<(u16, Vec<u8>)>;

/// A `NETLINK_ROUTE` socket of the opening thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    pid: u32,
    seq: AtomicU32,
}

impl Netlink {
    /// Opens a socket bound to a kernel-chosen port, connected to the kernel (no other sender
    /// can reach it), with extended acks requested.
    pub fn open() -> io::Result<Netlink> {
        let e = |op: &str, err: nix::Error| {
            io::Error::new(io::Error::from(err).kind(), format!("netlink: {op}: {err}"))
        };
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|x| e("socket(NETLINK_ROUTE)", x))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|x| e("bind", x))?;
        socket::connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|x| e("connect", x))?;
        let addr: NetlinkAddr =
            socket::getsockname(fd.as_raw_fd()).map_err(|x| e("getsockname", x))?;
        // Extended acks are a nicety (kernels since 4.12): without them errors lack the text.
        let _ = crate::sys::set_sockopt_int(fd.as_fd(), SOL_NETLINK, NETLINK_EXT_ACK, 1);
        socket::setsockopt(
            &fd,
            socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(REPLY_TIMEOUT_SECS, 0),
        )
        .map_err(|x| e("SO_RCVTIMEO", x))?;
        Ok(Netlink {
            fd,
            pid: addr.pid(),
            seq: AtomicU32::new(1),
        })
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Receives one whole datagram, however large.
    fn recv_datagram(&self, buf: &mut Vec<u8>, what: &str) -> io::Result<usize> {
        let io_err = |err: nix::Error| {
            let err = io::Error::from(err);
            let text = if err.kind() == io::ErrorKind::WouldBlock {
                format!("{what}: no reply from the kernel in {REPLY_TIMEOUT_SECS}s")
            } else {
                format!("{what}: receiving the reply: {err}")
            };
            io::Error::new(err.kind(), text)
        };
        loop {
            let size = socket::recv(
                self.fd.as_raw_fd(),
                &mut buf[..],
                MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            );
            let size = match size {
                Err(nix::Error::EINTR) => continue,
                r => r.map_err(io_err)?,
            };
            if size > buf.len() {
                buf.resize(size, 0);
            }
            match socket::recv(self.fd.as_raw_fd(), &mut buf[..], MsgFlags::empty()) {
                Err(nix::Error::EINTR) => continue,
                r => return r.map_err(io_err),
            }
        }
    }

    /// Sends `b` and collects the payloads of the reply's data messages until the ack, the
    /// error or `NLMSG_DONE`. `Ok(None)`: a dump the kernel marked interrupted (retry).
    fn exchange(&self, b: MsgBuilder, what: &str) -> io::Result<Option<Reply>> {
        let seq = self.next_seq();
        let msg = b.finish(seq, self.pid);
        loop {
            match socket::send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()) {
                Err(nix::Error::EINTR) => continue,
                Err(err) => {
                    let err = io::Error::from(err);
                    return Err(io::Error::new(
                        err.kind(),
                        format!("{what}: sending the request: {err}"),
                    ));
                }
                Ok(_) => break,
            }
        }
        let mut buf = vec![0u8; 32 * 1024];
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = self.recv_datagram(&mut buf, what)?;
            for m in parse_messages(&buf[..n]).map_err(|x| annotate(what, x))? {
                if m.seq != seq || m.pid != self.pid {
                    continue; // a late reply to an earlier request
                }
                if m.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.ty {
                    NLMSG_NOOP => {}
                    NLMSG_OVERRUN => {
                        return Err(io::Error::other(format!("{what}: netlink overrun")));
                    }
                    NLMSG_ERROR | NLMSG_DONE => {
                        // DONE carries an int error too (0, or negative when the dump failed).
                        let (errno, ext) = if m.ty == NLMSG_DONE {
                            parse_done(m.flags, m.payload)
                        } else {
                            parse_error(m.flags, m.payload)
                        }
                        .map_err(|x| annotate(what, x))?;
                        if errno != 0 {
                            return Err(request_error(what, errno, ext.as_deref()));
                        }
                        return Ok(if interrupted { None } else { Some(out) });
                    }
                    // A single reply to a non-dump request is followed by the ack.
                    ty => out.push((ty, m.payload.to_vec())),
                }
            }
        }
    }

    /// A request that is answered by an ack (or an error).
    fn request(&self, b: MsgBuilder, what: &str) -> io::Result<()> {
        self.exchange(b, what).map(|_| ())
    }

    /// A dump: every data message of type `ty` in the reply, retried when interrupted.
    fn dump(&self, make: impl Fn() -> MsgBuilder, ty: u16, what: &str) -> io::Result<Vec<Vec<u8>>> {
        for _ in 0..10 {
            if let Some(msgs) = self.exchange(make(), what)? {
                return Ok(msgs
                    .into_iter()
                    .filter(|(t, _)| *t == ty)
                    .map(|(_, p)| p)
                    .collect());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!("{what}: the dump kept being interrupted by concurrent changes"),
        ))
    }

    // ---- links ----

    /// Every link of the namespace.
    pub fn links(&self) -> io::Result<Vec<Link>> {
        let make = || {
            let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_DUMP);
            b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
            b
        };
        self.dump(make, RTM_NEWLINK, "netlink: list links")?
            .iter()
            .map(|p| parse_link(p))
            .collect()
    }

    /// The link named `name`, `None` when there is none.
    pub fn link(&self, name: &str) -> io::Result<Option<Link>> {
        check_name(name)?;
        let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        b.attr_str(IFLA_IFNAME, name);
        match self.exchange(b, &format!("netlink: get link {name}")) {
            Ok(msgs) => {
                let msgs = msgs.unwrap_or_default();
                match msgs.iter().find(|(t, _)| *t == RTM_NEWLINK) {
                    Some((_, p)) => parse_link(p).map(Some),
                    None => Ok(None),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn index(&self, name: &str, what: &str) -> io::Result<u32> {
        match self.link(name)? {
            Some(l) => Ok(l.index),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{what}: no link named {name}"),
            )),
        }
    }

    fn create(&self, spec: &LinkSpec, kind: &str, b: MsgBuilder) -> io::Result<()> {
        check_name(spec.name)?;
        self.request(b, &format!("netlink: create {kind} {}", spec.name))
    }

    /// A bridge (`kind` "bridge").
    pub fn create_bridge(&self, spec: &LinkSpec) -> io::Result<()> {
        self.create(
            spec,
            "bridge",
            newlink_msg(spec, "bridge", None, InfoData::None),
        )
    }

    /// A dummy link (`CONFIG_DUMMY`; `Unsupported` on kernels without it).
    pub fn create_dummy(&self, spec: &LinkSpec) -> io::Result<()> {
        self.create(
            spec,
            "dummy",
            newlink_msg(spec, "dummy", None, InfoData::None),
        )
    }

    /// A veth pair. The peer may carry `netns`: it is then created directly in that namespace
    /// with its name, MAC and MTU (never visible here under any name), and set up there
    /// afterwards when `peer.up` (the kernel cannot open a veth end before it is paired). If
    /// that last step fails the pair is deleted.
    pub fn create_veth(&self, host: &LinkSpec, peer: &LinkSpec) -> io::Result<()> {
        check_name(peer.name)?;
        self.create(
            host,
            "veth",
            newlink_msg(host, "veth", None, InfoData::VethPeer(peer)),
        )?;
        if !peer.up {
            return Ok(());
        }
        let name = peer.name.to_owned();
        let set_up = move || Netlink::open()?.set_up(&name, true);
        let r = match peer.netns {
            None => self.set_up(peer.name, true),
            Some(Netns::Pid(pid)) => in_netns(pid, set_up),
            Some(Netns::Fd(fd)) => fd
                .try_clone_to_owned()
                .and_then(|fd| in_netns_fd(fd, set_up)),
        };
        if let Err(e) = r {
            let _ = self.delete_link(host.name);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "netlink: create veth {}: bring peer {} up: {e}",
                    host.name, peer.name
                ),
            ));
        }
        Ok(())
    }

    /// A macvlan on `parent` (a link of this namespace).
    pub fn create_macvlan(
        &self,
        spec: &LinkSpec,
        parent: &str,
        mode: MacvlanMode,
    ) -> io::Result<()> {
        check_name(spec.name)?;
        let what = format!("netlink: create macvlan {} on {parent}", spec.name);
        check_name(parent)?;
        let parent = self.index(parent, &what)?;
        self.request(
            newlink_msg(spec, "macvlan", Some(parent), InfoData::Macvlan(mode)),
            &what,
        )
    }

    /// `RTM_NEWLINK` without create flags on an existing link, found by name.
    fn set_by_name(
        &self,
        name: &str,
        what: &str,
        flags: (u32, u32),
        attrs: impl FnOnce(&mut MsgBuilder),
    ) -> io::Result<()> {
        check_name(name)?;
        let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, 0, flags.0, flags.1));
        b.attr_str(IFLA_IFNAME, name);
        attrs(&mut b);
        self.request(b, what)
    }

    /// Enslaves `name` to the bridge `master`, or frees it (`None`).
    pub fn set_master(&self, name: &str, master: Option<&str>) -> io::Result<()> {
        let what = match master {
            Some(m) => format!("netlink: set master of {name} to {m}"),
            None => format!("netlink: release {name} from its master"),
        };
        let idx = match master {
            Some(m) => {
                check_name(m)?;
                self.index(m, &what)?
            }
            None => 0,
        };
        self.set_by_name(name, &what, (0, 0), |b| b.attr_u32(IFLA_MASTER, idx))
    }

    pub fn set_up(&self, name: &str, up: bool) -> io::Result<()> {
        let what = format!("netlink: set {name} {}", if up { "up" } else { "down" });
        let flags = if up { IFF_UP } else { 0 };
        self.set_by_name(name, &what, (flags, IFF_UP), |_| {})
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> io::Result<()> {
        let what = format!("netlink: set mtu of {name} to {mtu}");
        self.set_by_name(name, &what, (0, 0), |b| b.attr_u32(IFLA_MTU, mtu))
    }

    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let what = format!("netlink: set address of {name} to {}", format_mac(mac));
        self.set_by_name(name, &what, (0, 0), |b| b.attr(IFLA_ADDRESS, &mac))
    }

    /// Renames a link. Kernels before 6.2 refuse while it is up (`EBUSY`, `ResourceBusy`): bring it
    /// down first.
    pub fn rename(&self, name: &str, new: &str) -> io::Result<()> {
        let what = format!("netlink: rename {name} to {new}");
        check_name(new)?;
        let idx = self.index(name, &what)?;
        let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, idx, 0, 0));
        b.attr_str(IFLA_IFNAME, new);
        self.request(b, &what)
    }

    /// Moves a link into another network namespace, renamed there to `new_name` if given.
    pub fn move_to(&self, name: &str, ns: Netns, new_name: Option<&str>) -> io::Result<()> {
        let what = match new_name {
            Some(n) => format!("netlink: move {name} to {ns:?} as {n}"),
            None => format!("netlink: move {name} to {ns:?}"),
        };
        if let Some(n) = new_name {
            check_name(n)?;
        }
        let idx = self.index(name, &what)?;
        let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, idx, 0, 0));
        netns_attr(&mut b, &ns);
        if let Some(n) = new_name {
            b.attr_str(IFLA_IFNAME, n);
        }
        self.request(b, &what)
    }

    /// Deletes a link (a veth takes its peer along). A missing link is `NotFound`.
    pub fn delete_link(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let mut b = MsgBuilder::new(RTM_DELLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        b.attr_str(IFLA_IFNAME, name);
        self.request(b, &format!("netlink: delete link {name}"))
    }

    // ---- addresses ----

    /// Every IPv4 and IPv6 address of the namespace.
    pub fn addrs(&self) -> io::Result<Vec<Addr>> {
        let make = || {
            let mut b = MsgBuilder::new(RTM_GETADDR, NLM_F_DUMP);
            b.push(&ifaddrmsg(AF_UNSPEC, 0, 0, 0));
            b
        };
        let mut out = Vec::new();
        for p in self.dump(make, RTM_NEWADDR, "netlink: list addresses")? {
            out.extend(parse_addr(&p)?);
        }
        Ok(out)
    }

    /// Adds `addr/prefix` to `name` (IPv4 with its broadcast); an address already there is fine.
    pub fn add_addr(&self, name: &str, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let what = format!("netlink: add address {addr}/{prefix} to {name}");
        check_prefix(&addr, prefix)?;
        check_name(name)?;
        let idx = self.index(name, &what)?;
        let b = addr_msg(
            RTM_NEWADDR,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            idx,
            addr,
            prefix,
        );
        match self.request(b, &what) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    /// Removes `addr/prefix` from `name`; a missing address is an error (`EADDRNOTAVAIL`).
    pub fn del_addr(&self, name: &str, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let what = format!("netlink: delete address {addr}/{prefix} from {name}");
        check_prefix(&addr, prefix)?;
        check_name(name)?;
        let idx = self.index(name, &what)?;
        self.request(addr_msg(RTM_DELADDR, NLM_F_ACK, idx, addr, prefix), &what)
    }

    // ---- routes ----

    /// Every route of both families in every table (main, local, ...).
    pub fn routes(&self) -> io::Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let make = || {
                let mut b = MsgBuilder::new(RTM_GETROUTE, NLM_F_DUMP);
                let mut h = [0u8; RTMSG_LEN];
                h[0] = family;
                b.push(&h);
                b
            };
            for p in self.dump(make, RTM_NEWROUTE, "netlink: list routes")? {
                out.extend(parse_route(&p)?);
            }
        }
        Ok(out)
    }

    /// Adds `dst/prefix` via `dev` (and `gateway`) to the main table.
    pub fn add_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        dev: &str,
        gateway: Option<IpAddr>,
    ) -> io::Result<()> {
        let what = format!("netlink: add route {dst}/{prefix} dev {dev}");
        self.route_op(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            dst,
            prefix,
            dev,
            gateway,
            &what,
        )
    }

    /// Removes the route `add_route` with the same arguments added.
    pub fn del_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        dev: &str,
        gateway: Option<IpAddr>,
    ) -> io::Result<()> {
        let what = format!("netlink: delete route {dst}/{prefix} dev {dev}");
        self.route_op(RTM_DELROUTE, 0, dst, prefix, dev, gateway, &what)
    }

    #[allow(clippy::too_many_arguments)]
    fn route_op(
        &self,
        ty: u16,
        flags: u16,
        dst: IpAddr,
        prefix: u8,
        dev: &str,
        gateway: Option<IpAddr>,
        what: &str,
    ) -> io::Result<()> {
        check_prefix(&dst, prefix)?;
        if gateway.is_some_and(|g| g.is_ipv4() != dst.is_ipv4()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what}: gateway and destination of different families"),
            ));
        }
        check_name(dev)?;
        let oif = self.index(dev, what)?;
        self.request(
            route_msg(ty, flags | NLM_F_ACK, dst, prefix, oif, gateway),
            what,
        )
    }
}

fn annotate(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Runs `f` on a short-lived thread that joined the network namespace of `pid` (setns on that
/// thread only; the calling thread never moves). A [`Netlink`] opened inside `f` talks to that
/// namespace; a child process spawned inside `f` starts in it.
pub fn in_netns<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
    in_netns_fd(OwnedFd::from(ns), f)
}

/// [`in_netns`] for an open namespace file (`/proc/PID/ns/net` or a bind mount of one).
pub fn in_netns_fd<T: Send + 'static>(
    ns: OwnedFd,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let handle = std::thread::Builder::new()
        .name("bivy-netns".into())
        .spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("join network namespace: setns: {e}"),
                )
            })?;
            drop(ns);
            f()
        })?;
    handle
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ty: u16, flags: u16, seq: u32, pid: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&pid.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    #[test]
    fn names_are_checked() {
        for ok in ["eth0", "br-x_1", "a", "123456789012345", "veth.1"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "a/b",
            "a b",
            "a\tb",
            "a:1",
            "a\0",
        ] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(e.to_string().contains("invalid interface name"), "{e}");
        }
    }

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("00:16:3E:aa:0b:ff").unwrap();
        assert_eq!(m, [0x00, 0x16, 0x3e, 0xaa, 0x0b, 0xff]);
        assert_eq!(format_mac(m), "00:16:3e:aa:0b:ff");
        for bad in [
            "",
            "00:16:3e:aa:0b",
            "00:16:3e:aa:0b:ff:00",
            "0:16:3e:aa:0b:ff",
            "00:16:3e:aa:0b:fg",
            "00-16-3e-aa-0b-ff",
            "+0:16:3e:aa:0b:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, 7, IFF_UP, IFF_UP));
        b.attr_str(IFLA_IFNAME, "br0"); // 4 bytes: padded to 8
        b.attr(IFLA_ADDRESS, &[1, 2, 3, 4, 5, 6]); // 6 bytes: padded to 12
        b.attr_u32(IFLA_MTU, 1400);
        let n = b.begin_nest(IFLA_LINKINFO);
        b.attr_str(IFLA_INFO_KIND, "bridge");
        b.end_nest(n);
        let msg = b.finish(42, 99);
        assert_eq!(msg.len() % 4, 0);
        let msgs = parse_messages(&msg).unwrap();
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!((m.ty, m.seq, m.pid), (RTM_NEWLINK, 42, 99));
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        let link = parse_link(m.payload).unwrap();
        assert_eq!(
            link,
            Link {
                index: 7,
                name: "br0".into(),
                kind: "bridge".into(),
                master: None,
                mtu: 1400,
                mac: Some([1, 2, 3, 4, 5, 6]),
                up: true,
                oper_up: false,
                flags: IFF_UP,
            }
        );
        // The nested attribute carries NLA_F_NESTED on the wire, stripped by the parser.
        let attrs = parse_attrs(&m.payload[IFINFOMSG_LEN..]).unwrap();
        assert_eq!(attrs.len(), 4);
        assert_eq!(attrs[3].0, IFLA_LINKINFO);
    }

    #[test]
    fn veth_peer_message_nests_an_ifinfomsg() {
        let host = LinkSpec::new("vethA");
        let peer = LinkSpec {
            name: "eth0",
            mac: Some([0, 0x16, 0x3e, 1, 2, 3]),
            mtu: Some(1450),
            up: true,
            netns: Some(Netns::Pid(1234)),
        };
        let msg = newlink_msg(&host, "veth", None, InfoData::VethPeer(&peer)).finish(1, 0);
        let m = &parse_messages(&msg).unwrap()[0];
        assert_eq!(
            m.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let attrs = parse_attrs(&m.payload[IFINFOMSG_LEN..]).unwrap();
        assert_eq!(attr(&attrs, IFLA_IFNAME), Some(&b"vethA\0"[..]));
        let info = parse_attrs(attr(&attrs, IFLA_LINKINFO).unwrap()).unwrap();
        assert_eq!(attr(&info, IFLA_INFO_KIND), Some(&b"veth\0"[..]));
        let data = parse_attrs(attr(&info, IFLA_INFO_DATA).unwrap()).unwrap();
        let p = attr(&data, VETH_INFO_PEER).unwrap();
        // The peer's ifinfomsg cannot ask for IFF_UP (ENOTCONN): it is set afterwards.
        assert_eq!(u32_at(p, 8).unwrap(), 0);
        let pa = parse_attrs(&p[IFINFOMSG_LEN..]).unwrap();
        assert_eq!(attr(&pa, IFLA_IFNAME), Some(&b"eth0\0"[..]));
        assert_eq!(attr(&pa, IFLA_ADDRESS), Some(&[0, 0x16, 0x3e, 1, 2, 3][..]));
        assert_eq!(attr_u32(&pa, IFLA_MTU).unwrap(), Some(1450));
        assert_eq!(attr_u32(&pa, IFLA_NET_NS_PID).unwrap(), Some(1234));
        // The host side stays down and in this namespace.
        assert_eq!(u32_at(m.payload, 12).unwrap(), 0);
        assert_eq!(attr(&attrs, IFLA_NET_NS_PID), None);
    }

    #[test]
    fn macvlan_message_names_parent_and_mode() {
        let msg = newlink_msg(
            &LinkSpec::new("mv0"),
            "macvlan",
            Some(5),
            InfoData::Macvlan(MacvlanMode::Bridge),
        )
        .finish(1, 0);
        let m = &parse_messages(&msg).unwrap()[0];
        let attrs = parse_attrs(&m.payload[IFINFOMSG_LEN..]).unwrap();
        assert_eq!(attr_u32(&attrs, IFLA_LINK).unwrap(), Some(5));
        let info = parse_attrs(attr(&attrs, IFLA_LINKINFO).unwrap()).unwrap();
        let data = parse_attrs(attr(&info, IFLA_INFO_DATA).unwrap()).unwrap();
        assert_eq!(attr_u32(&data, IFLA_MACVLAN_MODE).unwrap(), Some(4));
    }

    #[test]
    fn address_message_has_broadcast_for_ipv4_only() {
        let msg = addr_msg(RTM_NEWADDR, 0, 3, "10.1.2.1".parse().unwrap(), 24).finish(1, 0);
        let m = &parse_messages(&msg).unwrap()[0];
        let attrs = parse_attrs(&m.payload[IFADDRMSG_LEN..]).unwrap();
        assert_eq!(attr(&attrs, IFA_BROADCAST), Some(&[10, 1, 2, 255][..]));
        let a = parse_addr(m.payload).unwrap().unwrap();
        assert_eq!(a.addr, "10.1.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((a.index, a.prefix, a.scope), (3, 24, 0));
        let msg = addr_msg(RTM_NEWADDR, 0, 3, "10.1.2.1".parse().unwrap(), 32).finish(1, 0);
        let m = &parse_messages(&msg).unwrap()[0];
        let attrs = parse_attrs(&m.payload[IFADDRMSG_LEN..]).unwrap();
        assert_eq!(attr(&attrs, IFA_BROADCAST), None);
        let msg = addr_msg(RTM_NEWADDR, 0, 3, "fd42::1".parse().unwrap(), 64).finish(1, 0);
        let m = &parse_messages(&msg).unwrap()[0];
        let attrs = parse_attrs(&m.payload[IFADDRMSG_LEN..]).unwrap();
        assert_eq!(attr(&attrs, IFA_BROADCAST), None);
        assert_eq!(
            parse_addr(m.payload).unwrap().unwrap().addr,
            "fd42::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn route_message_round_trips() {
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        let msg = route_msg(
            RTM_NEWROUTE,
            0,
            "10.9.0.0".parse().unwrap(),
            16,
            4,
            Some(gw),
        )
        .finish(1, 0);
        let m = &parse_messages(&msg).unwrap()[0];
        let r = parse_route(m.payload).unwrap().unwrap();
        assert_eq!(
            r,
            Route {
                dst: "10.9.0.0".parse().unwrap(),
                prefix: 16,
                oif: Some(4),
                gateway: Some(gw),
                table: 254,
            }
        );
        // A default route has no RTA_DST; the parser fills the family's unspecified address.
        let msg = route_msg(RTM_NEWROUTE, 0, "::".parse().unwrap(), 0, 2, None).finish(1, 0);
        let m = &parse_messages(&msg).unwrap()[0];
        let r = parse_route(m.payload).unwrap().unwrap();
        assert_eq!(r.dst, "::".parse::<IpAddr>().unwrap());
        assert_eq!((r.prefix, r.gateway), (0, None));
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut d = header(RTM_NEWLINK, 2, 5, 7, &[0u8; 3]);
        d.extend(header(NLMSG_DONE, 2, 5, 7, &0i32.to_ne_bytes()));
        let msgs = parse_messages(&d).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].payload.len(), 3);
        assert_eq!(msgs[1].ty, NLMSG_DONE);
    }

    #[test]
    fn truncated_and_malformed_input_is_an_error() {
        let good = header(RTM_NEWLINK, 0, 1, 1, &[0u8; 20]);
        for cut in 1..good.len() {
            // Either an error or (when the cut lands after the message) fewer bytes: never a panic.
            let _ = parse_messages(&good[..cut]);
        }
        assert!(parse_messages(&good[..10]).is_err());
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_messages(&bad).is_err());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_messages(&bad).is_err());
        // Attributes: a length under 4 or past the end.
        assert!(parse_attrs(&[2, 0, 1, 0]).is_err());
        assert!(parse_attrs(&[9, 0, 1, 0, 1, 2]).is_err());
        assert!(parse_attrs(&[]).unwrap().is_empty());
        // Family headers.
        assert!(parse_link(&[0u8; 8]).is_err());
        assert!(parse_link(&[0u8; 16]).is_err()); // no name
        assert!(parse_addr(&[2u8; 4]).is_err());
        assert!(parse_route(&[2u8; 4]).is_err());
        let mut addr = ifaddrmsg(AF_INET, 24, 0, 1).to_vec();
        addr.extend_from_slice(&[7, 0, IFA_LOCAL as u8, 0, 1, 2, 3]); // a 3-byte IPv4 address
        assert!(parse_addr(&addr).is_err());
        assert!(parse_error(0, &[1, 2]).is_err());
        // Every prefix of a real link message parses or fails, without panicking.
        let mut b = MsgBuilder::new(RTM_NEWLINK, 0);
        b.push(&ifinfomsg(AF_UNSPEC, 1, 0, 0));
        b.attr_str(IFLA_IFNAME, "x");
        let n = b.begin_nest(IFLA_LINKINFO);
        b.attr_str(IFLA_INFO_KIND, "veth");
        b.end_nest(n);
        let msg = b.finish(1, 1);
        for cut in 0..msg.len() {
            let _ = parse_link(&msg[16..cut.max(16)]);
        }
    }

    #[test]
    fn error_messages_carry_the_extended_ack() {
        // errno -17, the original request (20 bytes), then NLMSGERR_ATTR_MSG.
        let orig = header(RTM_NEWLINK, NLM_F_REQUEST, 3, 9, &[0u8; 4]);
        let mut p = (-17i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&orig);
        let text = b"Link already exists\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let (errno, msg) = parse_error(NLM_F_ACK_TLVS, &p).unwrap();
        assert_eq!(errno, libc::EEXIST);
        assert_eq!(msg.as_deref(), Some("Link already exists"));
        // Capped: only the header of the request precedes the attributes.
        let mut p = (-19i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&orig[..16]);
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let (errno, msg) = parse_error(NLM_F_ACK_TLVS | NLM_F_CAPPED, &p).unwrap();
        assert_eq!((errno, msg.is_some()), (libc::ENODEV, true));
        // Without TLVs, no text; an ack is errno 0.
        assert_eq!(parse_error(0, &p).unwrap(), (libc::ENODEV, None));
        assert_eq!(parse_error(0, &0i32.to_ne_bytes()).unwrap(), (0, None));
        // Attributes claimed but cut: an error, not a panic.
        assert!(parse_error(NLM_F_ACK_TLVS, &(-1i32).to_ne_bytes()).is_err());
    }

    #[test]
    fn request_errors_keep_kind_and_text() {
        let e = request_error("netlink: create bridge br0", libc::EEXIST, Some("exists"));
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let s = e.to_string();
        assert!(s.starts_with("netlink: create bridge br0: exists ("), "{s}");
        let e = request_error("netlink: delete link x", libc::ENODEV, None);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("No such device"), "{e}");
    }
}
