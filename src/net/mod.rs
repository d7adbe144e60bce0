//! Host networking for managed bridges and instance NICs, without HTTP and without LXD config
//! keys: netlink (links, addresses, routes), nftables rules through `nft`, the daemon's own
//! DHCPv4 and DNS servers with their lease store, and the host name resolver.
//!
//! - `netlink`: rtnetlink over a `NETLINK_ROUTE` socket of the calling thread's network namespace.
//! - `nft`: bivy's table and per-bridge chains, applied with `nft -f -`, and the check for a
//!   foreign forward chain that drops (Docker's `FORWARD` policy).
//! - `dhcp`: DHCPv4 packets and the per-bridge server.
//! - `dns`: DNS packets and the per-bridge resolver (instance names, forwarding upstream).
//! - `leases`: the lease store shared by both, persisted atomically.
//! - `ra`: IPv6 router advertisements (SLAAC) for a bridge with an IPv6 /64.
//! - `proxy`: proxy devices' listeners and relays, in the daemon's or a container's namespace.
//! - `resolve`: host names to addresses (`/etc/hosts`, then DNS with `dns`'s packets) and the
//!   one TCP connect by name; no glibc NSS.

pub mod dhcp;
pub mod dns;
pub mod leases;
pub mod netlink;
pub mod nft;
pub mod proxy;
pub mod ra;
pub mod resolve;

/// One address of `/proc/<pid>/net/if_inet6` (the IPv6 addresses of that process's network
/// namespace, readable from the host without entering it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inet6 {
    pub addr: std::net::Ipv6Addr,
    pub prefix: u8,
    /// 0x00 global, 0x20 link, 0x10 host.
    pub scope: u8,
    /// `IFA_F_*`.
    pub flags: u32,
    pub ifname: String,
}

impl Inet6 {
    /// A global address done with duplicate address detection.
    pub fn usable(&self) -> bool {
        const TENTATIVE: u32 = 0x40;
        const DADFAILED: u32 = 0x08;
        self.scope == 0 && self.flags & (TENTATIVE | DADFAILED) == 0
    }
}

/// Parse `/proc/<pid>/net/if_inet6`: `ADDR32HEX IFINDEX PREFIX SCOPE FLAGS NAME` per line, all
/// hex but the name. Bad lines are skipped.
pub fn parse_if_inet6(text: &str) -> Vec<Inet6> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [addr, _idx, prefix, scope, flags, name] = f[..] else {
                return None;
            };
            if addr.len() != 32 {
                return None;
            }
            let bits = u128::from_str_radix(addr, 16).ok()?;
            Some(Inet6 {
                addr: std::net::Ipv6Addr::from(bits),
                prefix: u8::from_str_radix(prefix, 16).ok()?,
                scope: u8::from_str_radix(scope, 16).ok()?,
                flags: u32::from_str_radix(flags, 16).ok()?,
                ifname: name.to_string(),
            })
        })
        .collect()
}

/// Whether `a` is in `net/prefix`.
pub fn in_subnet6(a: std::net::Ipv6Addr, net: std::net::Ipv6Addr, prefix: u8) -> bool {
    let p = u32::from(prefix.min(128));
    let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
    u128::from(a) & mask == u128::from(net) & mask
}

/// Whether `a` is in `net/prefix`, either family (never across families).
pub fn in_subnet(a: std::net::IpAddr, net: std::net::IpAddr, prefix: u8) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (a, net) {
        (V4(a), V4(n)) => in_subnet6(a.to_ipv6_mapped(), n.to_ipv6_mapped(), prefix.min(32) + 96),
        (V6(a), V6(n)) => in_subnet6(a, n, prefix),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_of_either_family() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(in_subnet(ip("10.1.2.3"), ip("10.1.0.0"), 16));
        assert!(!in_subnet(ip("10.2.2.3"), ip("10.1.0.0"), 16));
        assert!(in_subnet(ip("10.2.2.3"), ip("10.1.0.0"), 0));
        assert!(in_subnet(ip("fd42::5"), ip("fd42::"), 64));
        assert!(!in_subnet(ip("fd43::5"), ip("fd42::"), 64));
        assert!(!in_subnet(ip("::ffff:10.1.2.3"), ip("10.1.0.0"), 16));
    }

    #[test]
    fn if_inet6_lines() {
        let t = "fd4200b1000000070216 3efffe000007 02 40 00 00 eth0\n\
                 fd4200b1000000070216 3efffe000007 02 40 00 00 eth0\n\
                 fd4200b1000000070216 3efffe000007 02 40 00 00 eth0\n";
        assert!(
            parse_if_inet6(t).is_empty(),
            "spaces inside the address: bad lines"
        );
        let t = "fd4200b10000000702163efffe000007 02 40 00 00     eth0\n\
                 fe80000000000000021 63efffe000007 02 40 20 80 eth0\n\
                 fe800000000000000216 3efffe000007 02 40 20 80 eth0\n\
                 fd4200b10000000700000000000000aa 02 40 00 40 eth0\n\
                 00000000000000000000000000000001 01 80 10 80 lo\n";
        let a = parse_if_inet6(t);
        assert_eq!(a.len(), 3, "{a:?}");
        assert_eq!(
            a[0].addr,
            "fd42:b1:0:7:216:3eff:fe00:7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
        assert_eq!(
            (a[0].prefix, a[0].scope, a[0].ifname.as_str()),
            (64, 0, "eth0")
        );
        assert!(a[0].usable());
        assert!(!a[1].usable(), "tentative");
        assert!(!a[2].usable(), "loopback is host scope");
        let net: std::net::Ipv6Addr = "fd42:b1:0:7::1".parse().unwrap();
        assert!(in_subnet6(a[0].addr, net, 64));
        assert!(!in_subnet6(a[0].addr, "fd42:b1:0:8::".parse().unwrap(), 64));
        assert!(in_subnet6(a[0].addr, net, 0));
    }
}
