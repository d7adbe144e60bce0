//! A managed bridge's config: LXD 5.0.2's bridge keys (`lxd/network/driver_bridge.go`), each
//! kept or refused, parsed once into a [`BridgeConfig`]; the names a network may take; LXD's
//! defaults for a new bridge, with a free IPv4 subnet chosen against the host's routes and the
//! other bridges; whether a NIC device attaches to a network. Pure but for reading
//! `/proc/net/route` and `/dev/urandom`; the records and their lifecycle are `networks`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::config::parse_bool;
use super::db::Data;
use super::{Error, Result};
use crate::api::StringMap;
use crate::net::netlink::parse_mac;

/// The one network type bivy manages.
pub const BRIDGE: &str = "bridge";
/// `dns.domain` when unset (LXD's is `lxd`).
pub const DEFAULT_DOMAIN: &str = "bivy";
/// `ipv4.dhcp.expiry` when unset (LXD's default).
pub const DEFAULT_EXPIRY: &str = "1h";

/// An IPv4 address with its prefix length (`10.0.3.1/24`): the bridge's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr4 {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr4 {
    pub fn parse(s: &str) -> Option<Cidr4> {
        let (a, p) = s.split_once('/')?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        if p.starts_with('+') || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        Some(Cidr4 {
            addr: a.parse().ok()?,
            prefix,
        })
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(&self, o: &Cidr4) -> bool {
        let m = self.mask() & o.mask();
        u32::from(self.addr) & m == u32::from(o.addr) & m
    }
}

impl std::fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv6 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr6 {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Cidr6 {
    pub fn parse(s: &str) -> Option<Cidr6> {
        let (a, p) = s.split_once('/')?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 128)?;
        Some(Cidr6 {
            addr: a.parse().ok()?,
            prefix,
        })
    }

    fn mask(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix)
        }
    }

    pub fn overlaps(&self, o: &Cidr6) -> bool {
        let m = self.mask() & o.mask();
        u128::from(self.addr) & m == u128::from(o.addr) & m
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr) & self.mask()
    }
}

impl std::fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A bridge's config, parsed once (what `bridges` brings up).
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    pub ipv4: Option<Cidr4>,
    pub ipv4_nat: bool,
    pub ipv4_dhcp: bool,
    /// Inclusive ranges; empty means the whole subnet but the network, broadcast and bridge
    /// addresses.
    pub ipv4_ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub lease_secs: u32,
    pub ipv6: Option<Cidr6>,
    pub ipv6_nat: bool,
    pub domain: String,
    /// `dns.mode=managed` (`none`: the DNS server only forwards, no local names).
    pub dns: bool,
    pub mtu: Option<u32>,
    pub hwaddr: Option<[u8; 6]>,
}

fn bool_of(config: &StringMap, key: &str, default: bool) -> Result<bool> {
    match config.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(v) => parse_bool(v).ok_or_else(|| {
            Error::config(
                key,
                format!("Invalid value for network {key:?}: {v:?} is not a boolean"),
            )
        }),
    }
}

fn invalid(key: &str, v: &str, why: &str) -> Error {
    Error::config(
        key,
        format!("Invalid value for network {key:?} option {v:?}: {why}"),
    )
}

/// `ipv4.dhcp.expiry`: seconds, or a number with `s`, `m`, `h` or `d`, or `infinite`
/// (dnsmasq's lease-time syntax, which LXD passes through).
pub fn parse_expiry(v: &str) -> Option<u32> {
    if v == "infinite" {
        return Some(u32::MAX);
    }
    let (num, mult) = match v.char_indices().last()? {
        (i, 's') => (&v[..i], 1),
        (i, 'm') => (&v[..i], 60),
        (i, 'h') => (&v[..i], 3600),
        (i, 'd') => (&v[..i], 86400),
        _ => (v, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = num.parse::<u64>().ok()?.checked_mul(mult)?;
    // dnsmasq's floor is two minutes.
    (120..u32::MAX as u64)
        .contains(&secs)
        .then_some(secs as u32)
}

/// A network name as LXD takes it: a valid interface name (the bridge is named after it).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid("No name provided".into()));
    }
    if name.len() > 15 {
        return Err(Error::Invalid(format!(
            "Network name {name:?} is too long: a bridge name has at most 15 characters"
        )));
    }
    if name == "."
        || name == ".."
        || name.starts_with('-')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::Invalid(format!(
            "Invalid network name {name:?}: letters, digits, \"-\", \"_\" and \".\" only"
        )));
    }
    if name.parse::<u64>().is_ok() {
        return Err(Error::Invalid(format!(
            "Invalid network name {name:?}: it cannot be only digits"
        )));
    }
    Ok(())
}

fn valid_domain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether device `dev` attaches to network `name` (`network=NAME`, or a bridged NIC with
/// `parent=NAME`).
pub fn uses_network(dev: &StringMap, name: &str) -> bool {
    dev.get("type").map(String::as_str) == Some("nic")
        && (dev.get("network").map(String::as_str) == Some(name)
            || (dev.get("network").is_none_or(|n| n.is_empty())
                && dev.get("parent").map(String::as_str) == Some(name)))
}

/// Parse and check a bridge's config (after `fill_defaults`). Every key is kept or refused.
pub fn parse_config(config: &StringMap) -> Result<BridgeConfig> {
    for (k, v) in config {
        match k.as_str() {
            "ipv4.address" | "ipv4.nat" | "ipv4.dhcp" | "ipv4.dhcp.ranges" | "ipv4.dhcp.expiry"
            | "ipv6.address" | "ipv6.nat" | "dns.domain" | "dns.mode" | "bridge.mtu"
            | "bridge.hwaddr" => {}
            _ if k.starts_with("user.") => {}
            "ipv4.routing" | "ipv6.routing" | "ipv4.firewall" | "ipv6.firewall"
            | "bridge.driver" => match (k.as_str(), v.as_str()) {
                ("bridge.driver", "" | "native") => {}
                ("bridge.driver", _) => {
                    return Err(Error::not_yet(&format!(
                        "bridge.driver={v:?} (bivy makes native Linux bridges)"
                    )))
                }
                _ => {
                    if !bool_of(config, k, true)? {
                        return Err(Error::not_yet(&format!(
                            "{k}=false (bivy always routes and filters a managed bridge's traffic)"
                        )));
                    }
                }
            },
            "raw.dnsmasq" => {
                return Err(Error::config(
                    k,
                    "raw.dnsmasq does not apply: bivy serves DHCP and DNS itself, without dnsmasq",
                ))
            }
            "ipv4.nat.order"
            | "ipv4.nat.address"
            | "ipv6.nat.order"
            | "ipv6.nat.address"
            | "ipv4.dhcp.gateway"
            | "ipv4.routes"
            | "ipv6.routes"
            | "ipv6.dhcp"
            | "ipv6.dhcp.stateful"
            | "ipv6.dhcp.ranges"
            | "ipv6.dhcp.expiry"
            | "bridge.external_interfaces"
            | "bridge.mode"
            | "dns.search"
            | "maas.subnet.ipv4"
            | "maas.subnet.ipv6"
            | "fan.underlay_subnet"
            | "fan.overlay_subnet"
            | "fan.type"
            | "tunnel"
            | "security.acls"
            | "ipv4.ovn.ranges"
            | "ipv6.ovn.ranges"
            | "raw.dnsmasq6"
            | "dns.zone.forward"
            | "dns.zone.reverse.ipv4"
            | "dns.zone.reverse.ipv6" => {
                return Err(Error::not_yet(&format!("network config key {k:?}")))
            }
            _ if k.starts_with("tunnel.")
                || k.starts_with("security.acls.")
                || k.starts_with("bgp.") =>
            {
                return Err(Error::not_yet(&format!("network config key {k:?}")))
            }
            _ => {
                return Err(Error::config(
                    k,
                    format!("Invalid network configuration key {k:?}"),
                ))
            }
        }
    }
    let get = |k: &str| config.get(k).map(String::as_str).unwrap_or("");
    let ipv4 = match get("ipv4.address") {
        "" | "none" => None,
        "auto" => {
            return Err(Error::Invalid(
                "ipv4.address=auto is resolved when the network is created".into(),
            ))
        }
        v => {
            let c = Cidr4::parse(v).ok_or_else(|| {
                invalid(
                    "ipv4.address",
                    v,
                    "not an IPv4 address with a prefix length (CIDR)",
                )
            })?;
            if c.prefix > 30 || c.prefix < 8 {
                return Err(invalid(
                    "ipv4.address",
                    v,
                    "the prefix length must be between 8 and 30",
                ));
            }
            if c.addr == c.network() || c.addr == c.broadcast() {
                return Err(invalid(
                    "ipv4.address",
                    v,
                    "the bridge needs a host address, not the subnet's network or broadcast address",
                ));
            }
            if c.addr.is_loopback()
                || c.addr.is_multicast()
                || c.addr.is_unspecified()
                || c.addr.is_link_local()
            {
                return Err(invalid("ipv4.address", v, "not a usable unicast address"));
            }
            Some(c)
        }
    };
    let mut ipv4_ranges = Vec::new();
    if !get("ipv4.dhcp.ranges").is_empty() {
        let Some(net) = ipv4 else {
            return Err(Error::config(
                "ipv4.dhcp.ranges",
                "ipv4.dhcp.ranges needs ipv4.address",
            ));
        };
        for r in get("ipv4.dhcp.ranges").split(',') {
            let bad = || {
                invalid(
                    "ipv4.dhcp.ranges",
                    r,
                    "expected FIRST-LAST addresses inside the subnet",
                )
            };
            let (a, b) = r.trim().split_once('-').ok_or_else(bad)?;
            let (a, b): (Ipv4Addr, Ipv4Addr) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if !net.contains(a) || !net.contains(b) || u32::from(a) > u32::from(b) {
                return Err(bad());
            }
            ipv4_ranges.push((a, b));
        }
    }
    let lease_secs = match get("ipv4.dhcp.expiry") {
        "" => 3600,
        v => parse_expiry(v).ok_or_else(|| {
            invalid(
                "ipv4.dhcp.expiry",
                v,
                "a duration like 1h, 30m, 3600 (at least 2 minutes) or infinite",
            )
        })?,
    };
    let ipv6 = match get("ipv6.address") {
        "" | "none" => None,
        "auto" => {
            return Err(Error::Invalid(
                "ipv6.address=auto is resolved when the network is created".into(),
            ))
        }
        v => {
            let c = Cidr6::parse(v).ok_or_else(|| {
                invalid(
                    "ipv6.address",
                    v,
                    "not an IPv6 address with a prefix length (CIDR)",
                )
            })?;
            if c.prefix != 64 {
                return Err(invalid(
                    "ipv6.address",
                    v,
                    "bivy's router advertisements (SLAAC) need a /64",
                ));
            }
            if c.addr.is_loopback() || c.addr.is_multicast() || c.addr.is_unspecified() {
                return Err(invalid("ipv6.address", v, "not a usable unicast address"));
            }
            if c.addr.to_ipv4_mapped().is_some() {
                return Err(invalid("ipv6.address", v, "Not an IPv6 address"));
            }
            Some(c)
        }
    };
    let domain = match get("dns.domain") {
        "" => DEFAULT_DOMAIN.to_string(),
        v if valid_domain(v) => v.to_ascii_lowercase(),
        v => return Err(invalid("dns.domain", v, "not a valid DNS domain")),
    };
    let dns = match get("dns.mode") {
        "" | "managed" => true,
        "none" => false,
        "dynamic" => return Err(Error::not_yet("dns.mode=dynamic")),
        v => return Err(invalid("dns.mode", v, "one of managed, none")),
    };
    let mtu = match get("bridge.mtu") {
        "" => None,
        v => Some(
            v.parse::<u32>()
                .ok()
                .filter(|m| {
                    (1280..=65535).contains(m) || (68..=65535).contains(m) && ipv6.is_none()
                })
                .ok_or_else(|| {
                    invalid("bridge.mtu", v, "an MTU from 68 (1280 with IPv6) to 65535")
                })?,
        ),
    };
    let hwaddr = match get("bridge.hwaddr") {
        "" => None,
        v => Some(
            parse_mac(v)
                .filter(|m| m[0] & 1 == 0 && m != &[0; 6])
                .ok_or_else(|| {
                    invalid(
                        "bridge.hwaddr",
                        v,
                        "a unicast MAC address like 00:16:3e:12:34:56",
                    )
                })?,
        ),
    };
    Ok(BridgeConfig {
        ipv4,
        ipv4_nat: bool_of(config, "ipv4.nat", false)?,
        ipv4_dhcp: bool_of(config, "ipv4.dhcp", true)?,
        ipv4_ranges,
        lease_secs,
        ipv6,
        ipv6_nat: bool_of(config, "ipv6.nat", false)?,
        domain,
        dns,
        mtu,
        hwaddr,
    })
}

/// IPv4 routes of the host's network namespace as `(subnet, device)`, from `/proc/net/route`
/// (what LXD reads too). The default route is left out.
pub fn host_routes4() -> Vec<(Cidr4, String)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_proc_route(&text)
}

fn parse_proc_route(text: &str) -> Vec<(Cidr4, String)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // The file is in host byte order of a little-endian kernel's in-memory network order.
        let (dst, mask) = (u32::from_be(dst.to_le()), u32::from_be(mask.to_le()));
        if mask == 0 {
            continue;
        }
        out.push((
            Cidr4 {
                addr: Ipv4Addr::from(dst),
                prefix: mask.count_ones() as u8,
            },
            f[0].to_string(),
        ));
    }
    out
}

/// Where a new or changed bridge's subnets would clash: another managed network's subnet, or a
/// host route on a device other than this bridge.
pub fn check_clashes(
    data: &Data,
    name: &str,
    c: &BridgeConfig,
    routes: &[(Cidr4, String)],
) -> Result<()> {
    for (other, rec) in &data.networks {
        if other == name {
            continue;
        }
        let Ok(o) = parse_config(&rec.config) else {
            continue;
        };
        if let (Some(a), Some(b)) = (c.ipv4, o.ipv4) {
            if a.overlaps(&b) {
                return Err(Error::Invalid(format!(
                    "Subnet {a} overlaps with network {other:?} ({b})"
                )));
            }
        }
        if let (Some(a), Some(b)) = (c.ipv6, o.ipv6) {
            if a.overlaps(&b) {
                return Err(Error::Invalid(format!(
                    "Subnet {a} overlaps with network {other:?} ({b})"
                )));
            }
        }
    }
    if let Some(a) = c.ipv4 {
        for (r, dev) in routes {
            if dev != name && a.overlaps(r) {
                return Err(Error::Invalid(format!(
                    "Subnet {a} overlaps with the host's route to {}/{} on {dev:?}",
                    r.network(),
                    r.prefix
                )));
            }
        }
    }
    Ok(())
}

/// A /24 in 10.0.0.0/8 that no managed network and no host route uses, for `ipv4.address=auto`
/// (read from the kernel and the records; nothing is probed on the wire). Random like LXD's,
/// so two hosts rarely pick the same.
fn pick_subnet4(data: &Data, routes: &[(Cidr4, String)]) -> Result<Cidr4> {
    let taken: Vec<Cidr4> = data
        .networks
        .values()
        .filter_map(|r| parse_config(&r.config).ok()?.ipv4)
        .chain(routes.iter().map(|(r, _)| *r))
        .collect();
    let mut seed = [0u8; 2];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let start = u16::from_le_bytes(seed);
    for i in 0..=u16::MAX {
        let n = start.wrapping_add(i);
        let c = Cidr4 {
            addr: Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 1),
            prefix: 24,
        };
        if !taken.iter().any(|t| t.overlaps(&c)) {
            return Ok(c);
        }
    }
    Err(Error::Invalid(
        "Failed to automatically find an unused IPv4 subnet, manual configuration required".into(),
    ))
}

/// LXD's defaults for a new bridge: `ipv4.address=auto` (with `ipv4.nat=true`) when not given.
/// `ipv6.address` is `none` unless given (bivy's IPv6 is an address and router advertisements
/// on a /64 the admin picks). `auto` values are resolved here, once.
pub fn fill_defaults(
    data: &Data,
    config: &mut StringMap,
    routes: &[(Cidr4, String)],
) -> Result<()> {
    if config.get("ipv4.address").is_none_or(|v| v.is_empty()) {
        config.insert("ipv4.address".into(), "auto".into());
    }
    if config.get("ipv6.address").is_none_or(|v| v.is_empty()) {
        config.insert("ipv6.address".into(), "none".into());
    }
    resolve_auto(data, config, routes)
}

/// Resolve the `auto` values of a bridge's config: `ipv4.address=auto` (a free /24, with
/// `ipv4.nat=true` unless given) and `ipv6.address=auto` (a random ULA /64, with `ipv6.nat=true`
/// unless given, as LXD's bridge fills it). A changed config
/// gets only this: a key it leaves out means no address of that family (LXD's bridge treats an
/// absent `ipv4.address` or `ipv6.address` as `none`; `auto` is the default at creation only).
pub fn resolve_auto(data: &Data, config: &mut StringMap, routes: &[(Cidr4, String)]) -> Result<()> {
    if config.get("ipv4.address").map(String::as_str) == Some("auto") {
        let c = pick_subnet4(data, routes)?;
        config.insert("ipv4.address".into(), c.to_string());
        config
            .entry("ipv4.nat".into())
            .or_insert_with(|| "true".into());
    }
    if config.get("ipv6.address").map(String::as_str) == Some("auto") {
        let mut r = [0u8; 5];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
            .map_err(|e| Error::Host(format!("reading /dev/urandom: {e}")))?;
        let addr = Ipv6Addr::new(
            0xfd00 | r[0] as u16,
            u16::from_be_bytes([r[1], r[2]]),
            u16::from_be_bytes([r[3], r[4]]),
            0,
            0,
            0,
            0,
            1,
        );
        config.insert("ipv6.address".into(), format!("{addr}/64"));
        config
            .entry("ipv6.nat".into())
            .or_insert_with(|| "true".into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::instance::db::NetworkRecord;

    /// A config or device from its key/value pairs.
    pub(crate) fn cfg(kv: &[(&str, &str)]) -> StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cidr() {
        let a = Cidr4::parse("10.0.3.1/24").unwrap();
        assert_eq!(a.network(), Ipv4Addr::new(10, 0, 3, 0));
        assert_eq!(a.broadcast(), Ipv4Addr::new(10, 0, 3, 255));
        assert!(a.overlaps(&Cidr4::parse("10.0.0.0/16").unwrap()));
        assert!(!a.overlaps(&Cidr4::parse("10.0.4.1/24").unwrap()));
        assert!(Cidr4::parse("10.0.3.1").is_none());
        assert!(Cidr4::parse("10.0.3.1/33").is_none());
        assert!(Cidr4::parse("10.0.3.1/024").is_none());
    }

    #[test]
    fn names() {
        assert!(validate_name("bivybr0").is_ok());
        assert!(validate_name("eth10").is_ok());
        assert!(validate_name("a-very-long-name").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("123").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn config_is_kept_or_refused() {
        let c = parse_config(&cfg(&[
            ("ipv4.address", "10.9.8.1/24"),
            ("ipv4.nat", "true"),
            (
                "ipv4.dhcp.ranges",
                "10.9.8.10-10.9.8.20,10.9.8.100-10.9.8.100",
            ),
            ("ipv4.dhcp.expiry", "30m"),
            ("ipv6.address", "none"),
            ("dns.domain", "Example.org"),
            ("bridge.mtu", "1400"),
            ("bridge.hwaddr", "00:16:3e:12:34:56"),
            ("user.x", "y"),
        ]))
        .unwrap();
        assert_eq!(c.ipv4, Cidr4::parse("10.9.8.1/24"));
        assert!(c.ipv4_nat && c.ipv4_dhcp && c.dns);
        assert_eq!(c.ipv4_ranges.len(), 2);
        assert_eq!(c.lease_secs, 1800);
        assert_eq!(c.domain, "example.org");
        assert_eq!(c.mtu, Some(1400));
        let bad = |kv: &[(&str, &str)]| parse_config(&cfg(kv)).unwrap_err();
        assert!(matches!(
            bad(&[("nosuch", "1")]),
            Error::InvalidConfig { .. }
        ));
        assert!(matches!(
            bad(&[("ipv4.routes", "10.1.0.0/16")]),
            Error::NotSupported(_)
        ));
        assert!(matches!(
            bad(&[("raw.dnsmasq", "x")]),
            Error::InvalidConfig { .. }
        ));
        bad(&[("ipv4.address", "10.9.8.0/24")]);
        bad(&[("ipv4.address", "10.9.8.255/24")]);
        bad(&[("ipv4.address", "10.9.8.1")]);
        bad(&[
            ("ipv4.address", "10.9.8.1/24"),
            ("ipv4.dhcp.ranges", "10.9.9.1-10.9.9.9"),
        ]);
        bad(&[
            ("ipv4.address", "10.9.8.1/24"),
            ("ipv4.dhcp.ranges", "10.9.8.9-10.9.8.1"),
        ]);
        bad(&[("ipv4.dhcp.expiry", "5s")]);
        bad(&[("ipv4.nat", "maybe")]);
        bad(&[("dns.domain", "a..b")]);
        bad(&[("bridge.mtu", "10")]);
        bad(&[("bridge.hwaddr", "01:00:5e:00:00:01")]);
        bad(&[("ipv6.address", "fd00::1/48")]);
        bad(&[("ipv6.address", "::ffff:10.1.1.1/64")]);
        assert!(matches!(
            bad(&[("ipv4.firewall", "false")]),
            Error::NotSupported(_)
        ));
        assert!(parse_config(&cfg(&[("ipv4.firewall", "true")])).is_ok());
    }

    #[test]
    fn expiry() {
        assert_eq!(parse_expiry("1h"), Some(3600));
        assert_eq!(parse_expiry("3600"), Some(3600));
        assert_eq!(parse_expiry("2d"), Some(172800));
        assert_eq!(parse_expiry("infinite"), Some(u32::MAX));
        assert_eq!(parse_expiry("1"), None);
        assert_eq!(parse_expiry("h"), None);
        assert_eq!(parse_expiry("-1h"), None);
    }

    #[test]
    fn routes_and_clashes() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = parse_proc_route(text);
        assert_eq!(
            r,
            vec![(Cidr4::parse("192.168.2.0/24").unwrap(), "eth0".to_string())]
        );
        let mut data = Data::default();
        data.networks.insert(
            "br1".into(),
            NetworkRecord {
                kind: BRIDGE.into(),
                config: cfg(&[("ipv4.address", "10.1.1.1/24")]),
                description: String::new(),
            },
        );
        let c = |a: &str| parse_config(&cfg(&[("ipv4.address", a)])).unwrap();
        let e = check_clashes(&data, "br2", &c("10.1.1.5/16"), &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlaps with network \"br1\""), "{e}");
        let e = check_clashes(&data, "br2", &c("192.168.2.7/24"), &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host's route") && e.contains("eth0"), "{e}");
        assert!(check_clashes(&data, "br1", &c("10.1.1.1/24"), &r).is_ok());
        assert!(check_clashes(&data, "br2", &c("10.1.2.1/24"), &r).is_ok());
        let mut config = StringMap::new();
        fill_defaults(&data, &mut config, &r).unwrap();
        let picked = Cidr4::parse(&config["ipv4.address"]).unwrap();
        assert_eq!(picked.prefix, 24);
        assert!(check_clashes(&data, "br2", &parse_config(&config).unwrap(), &r).is_ok());
        assert_eq!(config["ipv4.nat"], "true");
        assert_eq!(config["ipv6.address"], "none");
        // A changed config without the keys has no addresses; `auto` given is resolved.
        let mut changed = cfg(&[("ipv4.nat", "true")]);
        resolve_auto(&data, &mut changed, &r).unwrap();
        assert_eq!(changed, cfg(&[("ipv4.nat", "true")]));
        let c = parse_config(&changed).unwrap();
        assert!(c.ipv4.is_none() && c.ipv6.is_none());
        let mut changed = cfg(&[("ipv4.address", "auto"), ("ipv4.nat", "false")]);
        resolve_auto(&data, &mut changed, &r).unwrap();
        assert!(Cidr4::parse(&changed["ipv4.address"]).is_some());
        assert_eq!(changed["ipv4.nat"], "false");
        // A ULA /64 is masqueraded unless the config says otherwise (LXD's FillConfig).
        let mut changed = cfg(&[("ipv6.address", "auto")]);
        resolve_auto(&data, &mut changed, &r).unwrap();
        assert!(Cidr6::parse(&changed["ipv6.address"]).is_some_and(|c| c.prefix == 64));
        assert_eq!(changed["ipv6.nat"], "true");
        let mut changed = cfg(&[("ipv6.address", "auto"), ("ipv6.nat", "false")]);
        resolve_auto(&data, &mut changed, &r).unwrap();
        assert_eq!(changed["ipv6.nat"], "false");
    }
}
