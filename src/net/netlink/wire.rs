//! The netlink wire format, as pure functions over byte slices: the constants of
//! `linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h` and `linux/if_addr.h`, requests
//! built with [`MsgBuilder`] (links, addresses, routes), and replies parsed into messages,
//! attributes, [`Link`]s, [`Addr`]s, [`Route`]s and errors. A truncated or malformed reply is an
//! `InvalidData` error, never a panic. No socket here (`netlink.rs` has it).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use super::{Addr, Link, LinkSpec, LinkStats, MacvlanMode, Netns, Route};

// ---- constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h) ----

// ---- constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h) ----

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLMSG_NOOP: u16 = 1;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_OVERRUN: u16 = 4;

pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
/// In an `NLMSG_ERROR`: the original request is cut to its header.
pub(super) const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR`: extended-ack attributes follow.
pub(super) const NLM_F_ACK_TLVS: u16 = 0x200;

pub(super) const NLMSGERR_ATTR_MSG: u16 = 1;

pub(super) const SOL_NETLINK: i32 = 270;
pub(super) const NETLINK_EXT_ACK: i32 = 11;

pub(super) const NLA_F_NESTED: u16 = 1 << 15;
pub(super) const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

pub(super) const RTM_NEWLINK: u16 = 16;
pub(super) const RTM_DELLINK: u16 = 17;
pub(super) const RTM_GETLINK: u16 = 18;
pub(super) const RTM_NEWADDR: u16 = 20;
pub(super) const RTM_DELADDR: u16 = 21;
pub(super) const RTM_GETADDR: u16 = 22;
pub(super) const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_DELROUTE: u16 = 25;
pub(super) const RTM_GETROUTE: u16 = 26;

pub(super) const AF_UNSPEC: u8 = 0;
pub(super) const AF_INET: u8 = 2;
pub(super) const AF_INET6: u8 = 10;

pub(super) const IFINFOMSG_LEN: usize = 16;
pub(super) const IFADDRMSG_LEN: usize = 8;
pub(super) const RTMSG_LEN: usize = 12;

pub(super) const IFLA_ADDRESS: u16 = 1;
pub(super) const IFLA_IFNAME: u16 = 3;
pub(super) const IFLA_MTU: u16 = 4;
pub(super) const IFLA_LINK: u16 = 5;
pub(super) const IFLA_MASTER: u16 = 10;
pub(super) const IFLA_OPERSTATE: u16 = 16;
/// `struct rtnl_link_stats64`: u64 counters, rx/tx packets, bytes, errors, dropped first.
pub(super) const IFLA_STATS64: u16 = 23;
pub(super) const IFLA_LINKINFO: u16 = 18;
pub(super) const IFLA_NET_NS_PID: u16 = 19;
pub(super) const IFLA_NET_NS_FD: u16 = 28;
pub(super) const IFLA_INFO_KIND: u16 = 1;
pub(super) const IFLA_INFO_DATA: u16 = 2;
pub(super) const VETH_INFO_PEER: u16 = 1;
pub(super) const IFLA_MACVLAN_MODE: u16 = 1;

pub(super) const IFF_UP: u32 = 0x1;
pub(super) const IF_OPER_UP: u8 = 6;

pub(super) const IFA_ADDRESS: u16 = 1;
pub(super) const IFA_LOCAL: u16 = 2;
pub(super) const IFA_BROADCAST: u16 = 4;

pub(super) const RTA_DST: u16 = 1;
pub(super) const RTA_OIF: u16 = 4;
pub(super) const RTA_GATEWAY: u16 = 5;
pub(super) const RTA_TABLE: u16 = 15;

pub(super) const RT_TABLE_MAIN: u8 = 254;
pub(super) const RTPROT_BOOT: u8 = 3;
pub(super) const RT_SCOPE_UNIVERSE: u8 = 0;
pub(super) const RT_SCOPE_LINK: u8 = 253;
pub(super) const RTN_UNICAST: u8 = 1;

// ---- message building (pure) ----

pub(super) fn align4(n: usize) -> usize {
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

pub(super) fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

pub(super) fn ifaddrmsg(family: u8, prefix: u8, scope: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut h = [0u8; IFADDRMSG_LEN];
    h[0] = family;
    h[1] = prefix;
    h[3] = scope;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

pub(super) fn netns_attr(b: &mut MsgBuilder, ns: &Netns) {
    match ns {
        Netns::Pid(pid) => b.attr_u32(IFLA_NET_NS_PID, *pid as u32),
        Netns::Fd(fd) => b.attr_u32(IFLA_NET_NS_FD, fd.as_raw_fd() as u32),
    }
}

/// The attributes of a [`LinkSpec`] (name, MAC, MTU, namespace), after its ifinfomsg.
pub(super) fn spec_attrs(b: &mut MsgBuilder, spec: &LinkSpec) {
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

pub(super) fn up_flags(up: bool) -> (u32, u32) {
    if up {
        (IFF_UP, IFF_UP)
    } else {
        (0, 0)
    }
}

/// Kind-specific `IFLA_INFO_DATA` of a new link.
pub(super) enum InfoData<'a> {
    None,
    VethPeer(&'a LinkSpec<'a>),
    Macvlan(MacvlanMode),
}

/// `RTM_NEWLINK` with `NLM_F_CREATE|NLM_F_EXCL` for a link of `kind`.
pub(super) fn newlink_msg(
    spec: &LinkSpec,
    kind: &str,
    link: Option<u32>,
    data: InfoData,
) -> MsgBuilder {
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

pub(super) fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub(super) fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

pub(super) fn check_prefix(addr: &IpAddr, prefix: u8) -> io::Result<()> {
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
pub(super) fn addr_msg(ty: u16, flags: u16, index: u32, addr: IpAddr, prefix: u8) -> MsgBuilder {
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
pub(super) fn route_msg(
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

pub(super) fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("netlink: malformed reply: {what}"),
    )
}

pub(super) fn u16_at(b: &[u8], at: usize) -> io::Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or_else(|| malformed("short field"))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
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

/// The start of `buf` that holds only whole messages (of a datagram cut short).
pub fn whole_messages(buf: &[u8]) -> &[u8] {
    let mut at = 0;
    while buf.len() - at >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            break;
        }
        at += align4(len).min(buf.len() - at);
    }
    &buf[..at]
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

pub(super) fn attr<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

pub(super) fn attr_u32(attrs: &[(u16, &[u8])], ty: u16) -> io::Result<Option<u32>> {
    match attr(attrs, ty) {
        None => Ok(None),
        Some(v) => u32_at(v, 0).map(Some),
    }
}

pub(super) fn attr_string(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

pub(super) fn ip_from(family: u8, v: &[u8]) -> io::Result<IpAddr> {
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
    let stats = attr(&attrs, IFLA_STATS64).and_then(parse_stats64);
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
        stats,
    })
}

/// The counters of a `struct rtnl_link_stats64` (None when shorter than its first 16 fields).
fn parse_stats64(v: &[u8]) -> Option<LinkStats> {
    let f = |i: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(
            v.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    Some(LinkStats {
        rx_packets: f(0)?,
        tx_packets: f(1)?,
        rx_bytes: f(2)?,
        tx_bytes: f(3)?,
        rx_errors: f(4)?,
        tx_errors: f(5)?,
        // As /proc/net/dev counts them: missed packets are dropped ones.
        rx_dropped: f(6)?.saturating_add(f(15)?),
        tx_dropped: f(7)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_cut_short_keeps_its_whole_messages() {
        let mut d = header(16, 0, 1, 2, &[1, 2, 3, 4]);
        let first = d.len();
        d.extend(header(16, 0, 1, 2, &[5; 12]));
        let both = d.len();
        assert_eq!(whole_messages(&d).len(), both);
        assert_eq!(whole_messages(&d[..both - 1]).len(), first);
        assert_eq!(whole_messages(&d[..first + 10]).len(), first);
        assert_eq!(whole_messages(&d[..first - 1]).len(), 0);
        assert_eq!(
            parse_messages(whole_messages(&d[..both - 3]))
                .unwrap()
                .len(),
            1
        );
    }

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
                stats: None,
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
