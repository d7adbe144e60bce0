//! Addresses and routes of a network namespace through a [`Netlink`] socket: dump, add and
//! delete IPv4/IPv6 addresses on a link, and routes of the main table (on-link or through a
//! gateway).

use std::io;
use std::net::IpAddr;

use super::wire::*;
use super::{check_name, Addr, Netlink, Route};

impl Netlink {
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
