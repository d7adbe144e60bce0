//! A running container's network interfaces, as `/1.0/instances/NAME/state` reports them
//! (`network`): read from the container's own network namespace, never made up.
//!
//! - names, flags, MTU, MAC addresses, counters (`IFLA_STATS64`, as `/proc/net/dev` shows them)
//!   and addresses from netlink dumps that name the namespace by its id in ours
//!   (`net::netlink` peer ids): nothing enters the namespace. One netlink socket per thread
//!   serves every container a listing reads.
//!
//! Field values follow LXD (`lxd/instance/drivers/driver_lxc.go` networkState): `state` is
//! `up`/`down` from `IFF_UP`; `type` is `loopback`, `point-to-point`, `broadcast` or `unknown`
//! from the flags; `netmask` is a prefix length; `scope` is `local` for loopback addresses,
//! `link` for link-local ones and `global` otherwise.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use nix::net::if_::InterfaceFlags;

use crate::api::{InstanceStateNetwork, InstanceStateNetworkAddress, InstanceStateNetworkCounters};
use crate::net::netlink::{Addr, Link, Netlink};

/// The interfaces in the network namespace of `pid` (a running container's init), by name.
pub fn of_pid(pid: i32) -> io::Result<BTreeMap<String, InstanceStateNetwork>> {
    thread_local! {
        static NL: std::cell::OnceCell<Netlink> = const { std::cell::OnceCell::new() };
    }
    let path = format!("/proc/{pid}/ns/net");
    // One stat names the namespace (the file is opened only to ask for its id the first time).
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path)?);
    NL.with(|cell| {
        let nl = match cell.get() {
            Some(nl) => nl,
            None => {
                let _ = cell.set(Netlink::open_strict()?);
                cell.get().expect("just set")
            }
        };
        let id = match known_nsid(pid, inode) {
            Some(id) => id,
            None => {
                // Named by the open file itself: what it is now, should it have changed.
                let ns = std::fs::File::open(&path)?;
                let id = nl.nsid(std::os::fd::AsFd::as_fd(&ns))?;
                remember_nsid(
                    pid,
                    std::os::unix::fs::MetadataExt::ino(&ns.metadata()?),
                    id,
                );
                id
            }
        };
        Ok(from_netlink(&nl.links_of(id)?, &nl.addrs_of(id)?))
    })
}

/// Namespace ids already asked for, by (init pid, namespace inode), and the
/// `runtime::ended_count` they were asked at. A namespace keeps its id in ours while it lives;
/// an init that still has that pid and that namespace, with no monitor ended since (so no init
/// let its pid go), is in that very namespace. Saves the kernel a request per container and
/// listing.
type Nsids = (u64, std::collections::HashMap<(i32, u64), i32>);

fn nsids() -> std::sync::MutexGuard<'static, Nsids> {
    static NSIDS: std::sync::LazyLock<std::sync::Mutex<Nsids>> =
        std::sync::LazyLock::new(Default::default);
    let mut g = NSIDS.lock().unwrap_or_else(|p| p.into_inner());
    let now = crate::runtime::ended_count();
    if g.0 != now || g.1.len() >= 4096 {
        *g = (now, Default::default());
    }
    g
}

fn known_nsid(pid: i32, inode: u64) -> Option<i32> {
    nsids().1.get(&(pid, inode)).copied()
}

fn remember_nsid(pid: i32, inode: u64, id: i32) {
    nsids().1.insert((pid, inode), id);
}

/// The interfaces of the daemon's own network namespace (the host's), with counters.
pub fn host_interfaces() -> io::Result<BTreeMap<String, InstanceStateNetwork>> {
    let nl = Netlink::open()?;
    Ok(from_netlink(&nl.links()?, &nl.addrs()?))
}

/// Every interface of a namespace from its links and addresses.
fn from_netlink(links: &[Link], addrs: &[Addr]) -> BTreeMap<String, InstanceStateNetwork> {
    let mut out: BTreeMap<String, InstanceStateNetwork> = BTreeMap::new();
    for l in links {
        let flags = InterfaceFlags::from_bits_truncate(l.flags as _);
        let mut n = InstanceStateNetwork {
            state: if l.up { "up" } else { "down" }.into(),
            kind: kind_of(flags).into(),
            mtu: i64::from(l.mtu),
            ..Default::default()
        };
        if let Some(mac) = l.mac.filter(|m| m.iter().any(|b| *b != 0)) {
            n.hwaddr = crate::net::netlink::format_mac(mac);
        }
        if let Some(c) = l.stats {
            let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            n.counters = InstanceStateNetworkCounters {
                bytes_received: i(c.rx_bytes),
                packets_received: i(c.rx_packets),
                errors_received: i(c.rx_errors),
                packets_dropped_inbound: i(c.rx_dropped),
                bytes_sent: i(c.tx_bytes),
                packets_sent: i(c.tx_packets),
                errors_sent: i(c.tx_errors),
                packets_dropped_outbound: i(c.tx_dropped),
            };
        }
        // IPv4 first, then IPv6, as LXD lists them; each in the kernel's order.
        for v6 in [false, true] {
            n.addresses.extend(
                addrs
                    .iter()
                    .filter(|a| a.index == l.index && a.addr.is_ipv6() == v6)
                    .map(|a| address(a.addr, u32::from(a.prefix))),
            );
        }
        out.insert(l.name.clone(), n);
    }
    out
}

fn kind_of(flags: InterfaceFlags) -> &'static str {
    if flags.contains(InterfaceFlags::IFF_LOOPBACK) {
        "loopback"
    } else if flags.contains(InterfaceFlags::IFF_POINTOPOINT) {
        "point-to-point"
    } else if flags.contains(InterfaceFlags::IFF_BROADCAST) {
        "broadcast"
    } else {
        "unknown"
    }
}

fn address(ip: IpAddr, prefix: u32) -> InstanceStateNetworkAddress {
    let (family, scope) = match ip {
        IpAddr::V4(a) => (
            "inet",
            if a.is_loopback() {
                "local"
            } else if a.is_link_local() {
                "link"
            } else {
                "global"
            },
        ),
        IpAddr::V6(a) => (
            "inet6",
            if a.is_loopback() {
                "local"
            } else if a.is_unicast_link_local() {
                "link"
            } else {
                "global"
            },
        ),
    };
    InstanceStateNetworkAddress {
        family: family.into(),
        address: ip.to_string(),
        netmask: prefix.to_string(),
        scope: scope.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/PID/net/dev`: per interface, receive then transmit columns
    /// (bytes packets errs drop fifo frame compressed multicast | bytes packets errs drop ...).
    fn parse_net_dev(text: &str) -> Vec<(String, InstanceStateNetworkCounters)> {
        let mut out = Vec::new();
        for line in text.lines().skip(2) {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let f: Vec<i64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            if f.len() < 12 {
                continue;
            }
            out.push((
                name.trim().to_string(),
                InstanceStateNetworkCounters {
                    bytes_received: f[0],
                    packets_received: f[1],
                    errors_received: f[2],
                    packets_dropped_inbound: f[3],
                    bytes_sent: f[8],
                    packets_sent: f[9],
                    errors_sent: f[10],
                    packets_dropped_outbound: f[11],
                },
            ));
        }
        out
    }

    /// The counters netlink gives are those `/proc/net/dev` shows: read between two reads of
    /// the file, each lies between its two values (they only grow).
    #[test]
    fn netlink_counters_are_net_dev_s() {
        let proc_dev = || {
            let text = std::fs::read_to_string("/proc/self/net/dev").expect("net/dev");
            parse_net_dev(&text)
        };
        let before = proc_dev();
        let now = host_interfaces().expect("host interfaces");
        let after = proc_dev();
        assert!(!before.is_empty());
        let fields = |c: &InstanceStateNetworkCounters| {
            [
                c.bytes_received,
                c.packets_received,
                c.errors_received,
                c.packets_dropped_inbound,
                c.bytes_sent,
                c.packets_sent,
                c.errors_sent,
                c.packets_dropped_outbound,
            ]
        };
        let mut nonzero = false;
        for ((name, lo), (_, hi)) in before.iter().zip(&after) {
            let Some(n) = now.get(name) else { continue };
            let got = fields(&n.counters);
            nonzero |= got.iter().any(|v| *v > 0);
            for ((l, g), h) in fields(lo).iter().zip(got).zip(fields(hi)) {
                assert!(*l <= g && g <= h, "{name}: {l} <= {g} <= {h}");
            }
        }
        assert!(nonzero, "no counter read: {now:?}");
    }

    #[test]
    fn net_dev_columns() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     336       4    1    2    0     0          0         0      560       7    3    5    0     0       0          0
  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0
";
        let v = parse_net_dev(text);
        assert_eq!(v.len(), 2);
        let (name, c) = &v[0];
        assert_eq!(name, "lo");
        assert_eq!(
            (
                c.bytes_received,
                c.packets_received,
                c.errors_received,
                c.packets_dropped_inbound
            ),
            (336, 4, 1, 2)
        );
        assert_eq!(
            (
                c.bytes_sent,
                c.packets_sent,
                c.errors_sent,
                c.packets_dropped_outbound
            ),
            (560, 7, 3, 5)
        );
        assert_eq!(v[1].0, "eth0");
        assert_eq!(v[1].1.bytes_sent, 2000);
    }

    #[test]
    fn interfaces_from_links_and_addresses() {
        use std::net::IpAddr;
        let link = |index: u32, name: &str, flags: u32, mac: Option<[u8; 6]>| Link {
            index,
            name: name.into(),
            kind: String::new(),
            master: None,
            mtu: if index == 1 { 65536 } else { 1500 },
            mac,
            up: flags & 1 != 0,
            oper_up: false,
            flags,
            stats: None,
        };
        let addr = |index: u32, a: &str, prefix: u8| Addr {
            index,
            addr: a.parse::<IpAddr>().unwrap(),
            prefix,
            scope: 0,
        };
        let links = [
            link(1, "lo", 0x1 | 0x8, Some([0; 6])),
            link(2, "eth0", 0x2, Some([0, 0x16, 0x3e, 1, 2, 3])),
        ];
        let addrs = [
            addr(2, "fe80::216:3eff:fe01:203", 64),
            addr(1, "127.0.0.1", 8),
            addr(2, "10.0.0.2", 24),
            addr(2, "fd00::2", 64),
        ];
        let out = from_netlink(&links, &addrs);
        let lo = &out["lo"];
        assert_eq!(
            (lo.state.as_str(), lo.kind.as_str(), lo.mtu),
            ("up", "loopback", 65536)
        );
        assert_eq!(lo.hwaddr, "", "an all-zero MAC is none");
        let eth = &out["eth0"];
        assert_eq!(
            (eth.state.as_str(), eth.kind.as_str()),
            ("down", "broadcast")
        );
        assert_eq!(eth.hwaddr, "00:16:3e:01:02:03");
        let got: Vec<(&str, &str, &str)> = eth
            .addresses
            .iter()
            .map(|a| (a.address.as_str(), a.netmask.as_str(), a.scope.as_str()))
            .collect();
        // IPv4 first, then IPv6 in the kernel's order.
        assert_eq!(
            got,
            [
                ("10.0.0.2", "24", "global"),
                ("fe80::216:3eff:fe01:203", "64", "link"),
                ("fd00::2", "64", "global"),
            ]
        );
    }

    #[test]
    fn address_scopes() {
        let a = address("127.0.0.1".parse().unwrap(), 8);
        assert_eq!(
            (a.family.as_str(), a.netmask.as_str(), a.scope.as_str()),
            ("inet", "8", "local")
        );
        assert_eq!(address("::1".parse().unwrap(), 128).scope, "local");
        assert_eq!(address("fe80::1".parse().unwrap(), 64).scope, "link");
        assert_eq!(address("10.0.0.2".parse().unwrap(), 24).scope, "global");
    }
}
