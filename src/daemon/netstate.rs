//! A running container's network interfaces, as `/1.0/instances/NAME/state` reports them
//! (`network`): read from the container's own network namespace, never made up.
//!
//! - counters from `/proc/PID/net/dev`, which shows the namespace of PID;
//! - names, flags, addresses and MAC addresses from `getifaddrs`, and the MTU from `SIOCGIFMTU`,
//!   both in a short-lived thread that joins the namespace with `setns` (only that thread moves;
//!   it ends right after).
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
use crate::sys;

/// The interfaces in the network namespace of `pid`, by name.
pub fn of_pid(pid: i32) -> io::Result<BTreeMap<String, InstanceStateNetwork>> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let mut out = std::thread::Builder::new()
        .name("netns-state".into())
        .spawn(
            move || -> io::Result<BTreeMap<String, InstanceStateNetwork>> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                interfaces()
            },
        )?
        .join()
        .map_err(|_| io::Error::other("reading the network namespace panicked"))??;
    add_counters(&mut out, &format!("/proc/{pid}/net/dev"))?;
    Ok(out)
}

/// Fill in the counters of `out`'s interfaces from a `net/dev` file.
fn add_counters(out: &mut BTreeMap<String, InstanceStateNetwork>, path: &str) -> io::Result<()> {
    let dev = std::fs::read_to_string(path)?;
    for (name, c) in parse_net_dev(&dev) {
        if let Some(n) = out.get_mut(&name) {
            n.counters = c;
        }
    }
    Ok(())
}

/// The interfaces of the daemon's own network namespace (the host's), with counters.
pub fn host_interfaces() -> io::Result<BTreeMap<String, InstanceStateNetwork>> {
    let mut out = interfaces()?;
    add_counters(&mut out, "/proc/self/net/dev")?;
    Ok(out)
}

/// Every interface of the calling thread's network namespace, without counters.
fn interfaces() -> io::Result<BTreeMap<String, InstanceStateNetwork>> {
    let mut out: BTreeMap<String, InstanceStateNetwork> = BTreeMap::new();
    let mut v4: BTreeMap<String, Vec<InstanceStateNetworkAddress>> = BTreeMap::new();
    let mut v6: BTreeMap<String, Vec<InstanceStateNetworkAddress>> = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let name = ifa.interface_name.clone();
        let n = out
            .entry(name.clone())
            .or_insert_with(|| InstanceStateNetwork {
                state: if ifa.flags.contains(InterfaceFlags::IFF_UP) {
                    "up"
                } else {
                    "down"
                }
                .into(),
                kind: kind_of(ifa.flags).into(),
                mtu: sys::link_mtu(&name).map(i64::from).unwrap_or(0),
                ..Default::default()
            });
        let Some(addr) = ifa.address.as_ref() else {
            continue;
        };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr().filter(|m| m.iter().any(|b| *b != 0)) {
                n.hwaddr = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
        } else if let Some(a) = addr.as_sockaddr_in() {
            let mask = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| m.ip().to_bits().count_ones())
                .unwrap_or(32);
            v4.entry(name)
                .or_default()
                .push(address(IpAddr::V4(a.ip()), mask));
        } else if let Some(a) = addr.as_sockaddr_in6() {
            let mask = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map(|m| m.ip().to_bits().count_ones())
                .unwrap_or(128);
            v6.entry(name)
                .or_default()
                .push(address(IpAddr::V6(a.ip()), mask));
        }
    }
    // IPv4 first, then IPv6, as LXD lists them.
    for (name, n) in out.iter_mut() {
        n.addresses.extend(v4.remove(name).unwrap_or_default());
        n.addresses.extend(v6.remove(name).unwrap_or_default());
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

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
