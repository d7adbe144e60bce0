//! Another network namespace seen from ours, without entering it: the namespace gets an id in
//! ours (`RTM_NEWNSID`, as `ip netns set` does; kept by the kernel while it lives) and the link
//! and address dumps name it (`IFLA_TARGET_NETNSID`, `IFA_TARGET_NETNSID`, Linux 4.20+). No
//! thread has to `setns` into it, which reading a running container's interfaces for every
//! `list` otherwise costs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::wire::*;
use super::{Addr, Link, Netlink};

const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const IFLA_TARGET_NETNSID: u16 = 46;
const IFA_TARGET_NETNSID: u16 = 10;
/// `IFLA_EXT_MASK` and its `RTEXT_FILTER_SKIP_STATS`: the link dump leaves out the IPv6
/// statistics (`IFLA_INET6_STATS`, `IFLA_INET6_ICMP6STATS`, summed over every CPU for each link),
/// which nothing here reads; `IFLA_STATS64`, the interface's counters, stays.
const IFLA_EXT_MASK: u16 = 29;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
/// `NETLINK_GET_STRICT_CHK`: the address dumps honour `IFA_TARGET_NETNSID` only in strict mode
/// (without it they would answer for our own namespace).
const NETLINK_GET_STRICT_CHK: i32 = 12;

impl Netlink {
    /// A socket whose dump requests the kernel checks strictly (see [`Netlink::links_of`]).
    pub fn open_strict() -> io::Result<Netlink> {
        let nl = Netlink::open()?;
        crate::sys::set_sockopt_int(nl.fd.as_fd(), SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            .map_err(|e| io::Error::new(e.kind(), format!("netlink: strict checking: {e}")))?;
        Ok(nl)
    }

    fn get_nsid(&self, ns: BorrowedFd<'_>) -> io::Result<Option<i32>> {
        let mut b = MsgBuilder::new(RTM_GETNSID, NLM_F_ACK);
        b.push(&[AF_UNSPEC, 0, 0, 0]);
        b.attr_u32(NETNSA_FD, ns.as_raw_fd() as u32);
        let reply = self
            .exchange(b, "netlink: get a namespace id")?
            .unwrap_or_default();
        for (ty, p) in reply {
            if ty != RTM_NEWNSID || p.len() < 4 {
                continue;
            }
            let attrs = parse_attrs(&p[4..])?;
            if let Some(v) = attr_u32(&attrs, NETNSA_NSID)? {
                let id = v as i32;
                return Ok((id >= 0).then_some(id));
            }
        }
        Ok(None)
    }

    /// The id of the network namespace `ns` in ours, given one when it has none.
    pub fn nsid(&self, ns: BorrowedFd<'_>) -> io::Result<i32> {
        if let Some(id) = self.get_nsid(ns)? {
            return Ok(id);
        }
        let mut b = MsgBuilder::new(RTM_NEWNSID, NLM_F_ACK);
        b.push(&[AF_UNSPEC, 0, 0, 0]);
        b.attr_u32(NETNSA_FD, ns.as_raw_fd() as u32);
        b.attr_u32(NETNSA_NSID, u32::MAX); // -1: the kernel picks
        match self.request(b, "netlink: give a namespace an id") {
            // Another request gave it one meanwhile.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            r => r?,
        }
        self.get_nsid(ns)?
            .ok_or_else(|| io::Error::other("netlink: the namespace got no id"))
    }

    /// Every link of the namespace with id `nsid` (see [`Netlink::nsid`]).
    pub fn links_of(&self, nsid: i32) -> io::Result<Vec<Link>> {
        let make = || {
            let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_DUMP);
            b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
            b.attr_u32(IFLA_TARGET_NETNSID, nsid as u32);
            b.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
            b
        };
        self.dump(make, RTM_NEWLINK, "netlink: list links of a namespace")?
            .iter()
            .map(|p| parse_link(p))
            .collect()
    }

    /// Every IPv4 and IPv6 address of the namespace with id `nsid`; needs [`Netlink::open_strict`].
    pub fn addrs_of(&self, nsid: i32) -> io::Result<Vec<Addr>> {
        let make = || {
            let mut b = MsgBuilder::new(RTM_GETADDR, NLM_F_DUMP);
            b.push(&ifaddrmsg(AF_UNSPEC, 0, 0, 0));
            b.attr_u32(IFA_TARGET_NETNSID, nsid as u32);
            b
        };
        let mut out = Vec::new();
        for p in self.dump(make, RTM_NEWADDR, "netlink: list addresses of a namespace")? {
            out.extend(parse_addr(&p)?);
        }
        Ok(out)
    }
}
