//! `nic` devices: which keys they take (LXD 5.0.2's, each kept or refused), and turning an
//! instance's expanded NICs into the runtime's [`Nic`]s at start, with the volatile keys LXD
//! keeps (`volatile.<dev>.hwaddr`, stable for the instance's life; `volatile.<dev>.host_name`,
//! the host end of a veth while it runs).
//!
//! Kinds: `network=<managed bridge>`; `nictype=bridged` with `parent=<host bridge>` (a managed
//! one behaves as `network=`); `nictype=p2p` (a veth pair whose host end joins nothing);
//! `nictype=macvlan` with `parent`. MAC filtering (`security.mac_filtering`) is on by default on
//! managed bridges (LXD's default is off): a container can send only from its own MAC and never
//! answer DHCP for the bridge.

use std::collections::BTreeSet;

use super::config::parse_bool;
use super::db::Data;
use super::network_config::{parse_config, uses_network, Cidr4};
use super::{Error, Result};
use crate::api::{Devices, StringMap};
use crate::net::netlink::{format_mac, parse_mac};
use crate::runtime::{Nic, NicKind};

/// LXD's MAC prefix for instances.
const MAC_PREFIX: [u8; 3] = [0x00, 0x16, 0x3e];

fn nic_bool(dev_name: &str, dev: &StringMap, key: &str, default: bool) -> Result<bool> {
    match dev.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(v) => parse_bool(v).ok_or_else(|| {
            Error::Invalid(format!(
                "Device {dev_name:?}: Invalid value for device option {key:?}: {v:?} is not a boolean"
            ))
        }),
    }
}

/// What a NIC attaches to, resolved against the managed networks.
#[derive(Debug, Clone, PartialEq)]
pub enum Attach {
    /// A managed bridge (by `network=`, or `nictype=bridged` with a managed `parent`).
    Managed(String),
    /// An unmanaged host bridge.
    Bridge(String),
    P2p,
    Macvlan(String),
    /// A host link moved into the container.
    Physical(String),
}

/// Check a `nic` device's keys against the records (no host access; parents are checked at
/// start) and say what it attaches to.
pub fn validate(data: &Data, name: &str, dev: &StringMap) -> Result<Attach> {
    let get = |k: &str| dev.get(k).map(String::as_str).unwrap_or("");
    let invalid = |m: String| Error::Invalid(format!("Device {name:?}: {m}"));
    for k in dev.keys() {
        match k.as_str() {
            "type"
            | "name"
            | "network"
            | "nictype"
            | "parent"
            | "hwaddr"
            | "mtu"
            | "host_name"
            | "ipv4.address"
            | "security.mac_filtering" => {}
            "ipv6.address"
            | "ipv4.routes"
            | "ipv6.routes"
            | "ipv4.routes.external"
            | "ipv6.routes.external"
            | "security.ipv4_filtering"
            | "security.ipv6_filtering"
            | "security.port_isolation"
            | "limits.ingress"
            | "limits.egress"
            | "limits.max"
            | "vlan"
            | "vlan.tagged"
            | "maas.subnet.ipv4"
            | "maas.subnet.ipv6"
            | "boot.priority"
            | "queue.tx.length"
            | "gvrp"
            | "mode"
            | "ipv4.gateway"
            | "ipv6.gateway"
            | "ipv4.host_address"
            | "ipv6.host_address"
            | "ipv4.neighbor_probe"
            | "ipv6.neighbor_probe"
            | "ipv4.host_table"
            | "ipv6.host_table" => {
                return Err(Error::not_yet(&format!(
                    "nic device option {k:?} (device {name:?})"
                )))
            }
            _ => return Err(invalid(format!("Invalid device option {k:?}"))),
        }
    }
    for k in ["name", "host_name"] {
        let v = get(k);
        if !v.is_empty()
            && (v.len() > 15
                || v == "."
                || v == ".."
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        {
            return Err(invalid(format!(
                "Invalid value for device option {k:?}: {v:?} is not a valid interface name (at most 15 letters, digits, \"-\", \"_\", \".\")"
            )));
        }
    }
    if !get("hwaddr").is_empty()
        && parse_mac(get("hwaddr")).is_none_or(|m| m[0] & 1 == 1 || m == [0; 6])
    {
        return Err(invalid(format!(
            "Invalid value for device option \"hwaddr\": {:?} is not a unicast MAC address",
            get("hwaddr")
        )));
    }
    if !get("mtu").is_empty()
        && get("mtu")
            .parse::<u32>()
            .ok()
            .is_none_or(|m| !(68..=65535).contains(&m))
    {
        return Err(invalid(format!(
            "Invalid value for device option \"mtu\": {:?} (68 to 65535)",
            get("mtu")
        )));
    }
    nic_bool(name, dev, "security.mac_filtering", true)?;
    let attach = if !get("network").is_empty() {
        for k in ["nictype", "parent"] {
            if !get(k).is_empty() {
                return Err(invalid(format!(
                    "Cannot use {k:?} property in conjunction with \"network\" property"
                )));
            }
        }
        let net = get("network");
        if !data.networks.contains_key(net) {
            return Err(Error::NotFound(format!(
                "Device {name:?}: Failed loading network {net:?}: Network not found"
            )));
        }
        Attach::Managed(net.to_string())
    } else {
        match get("nictype") {
            "bridged" if get("parent").is_empty() => {
                return Err(invalid("Missing device option \"parent\"".into()))
            }
            "bridged" if data.networks.contains_key(get("parent")) => {
                Attach::Managed(get("parent").to_string())
            }
            "bridged" => Attach::Bridge(get("parent").to_string()),
            "p2p" => Attach::P2p,
            "macvlan" if get("parent").is_empty() => {
                return Err(invalid("Missing device option \"parent\"".into()))
            }
            "macvlan" => Attach::Macvlan(get("parent").to_string()),
            "" => {
                return Err(invalid(
                    "Missing device option \"nictype\" or \"network\"".into(),
                ))
            }
            "physical" if get("parent").is_empty() => {
                return Err(invalid("Missing device option \"parent\"".into()))
            }
            "physical" if data.networks.contains_key(get("parent")) => {
                return Err(invalid(format!(
                    "{:?} is a managed network: a physical nic takes a host link of its own",
                    get("parent")
                )))
            }
            "physical" => Attach::Physical(get("parent").to_string()),
            "ipvlan" | "routed" | "sriov" | "ovn" => {
                return Err(Error::not_yet(&format!(
                    "nic devices of nictype {:?} (device {name:?})",
                    get("nictype")
                )))
            }
            other => return Err(invalid(format!("Invalid nictype {other:?}"))),
        }
    };
    if !get("ipv4.address").is_empty() {
        let Attach::Managed(net) = &attach else {
            return Err(invalid(
                "\"ipv4.address\" needs a managed network (bivy's DHCP server gives it)".into(),
            ));
        };
        let ip: std::net::Ipv4Addr = get("ipv4.address").parse().map_err(|_| {
            invalid(format!(
                "Invalid value for device option \"ipv4.address\": {:?}",
                get("ipv4.address")
            ))
        })?;
        let subnet = bridge_subnet(data, net);
        let Some(subnet) = subnet else {
            return Err(invalid(format!(
                "Network {net:?} has no IPv4 address, so no static IPv4 address can be given"
            )));
        };
        if !subnet.contains(ip)
            || ip == subnet.addr
            || ip == subnet.network()
            || ip == subnet.broadcast()
        {
            return Err(invalid(format!(
                "IP address {ip} is not a usable host address of network {net:?} ({subnet})"
            )));
        }
    }
    if matches!(attach, Attach::Macvlan(_) | Attach::Physical(_)) && !get("host_name").is_empty() {
        return Err(invalid(
            "\"host_name\" applies to veth pairs (bridged, p2p), not macvlan or physical".into(),
        ));
    }
    Ok(attach)
}

fn bridge_subnet(data: &Data, net: &str) -> Option<Cidr4> {
    parse_config(&data.networks.get(net)?.config).ok()?.ipv4
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| Error::Host(format!("reading /dev/urandom: {e}")))?;
    Ok(b)
}

/// A new MAC address in LXD's range (`00:16:3e:xx:xx:xx`).
pub fn new_mac() -> Result<[u8; 6]> {
    let r: [u8; 3] = random_bytes()?;
    Ok([
        MAC_PREFIX[0],
        MAC_PREFIX[1],
        MAC_PREFIX[2],
        r[0],
        r[1],
        r[2],
    ])
}

/// A new host-side veth name (`veth` and 8 hex digits, as LXD names them).
pub fn new_host_name() -> Result<String> {
    let r: [u8; 4] = random_bytes()?;
    Ok(format!("veth{}", crate::util::hex(&r)))
}

/// Give each NIC among `ed` that gets a generated MAC (no `hwaddr`, not `physical`) its
/// `volatile.<dev>.hwaddr` in `config` now, as LXD fills it for an instance it makes: the
/// instance's name on a managed network is bound to that MAC from then on, so no other client
/// can take the name of one that has not started yet (the DHCP server gives an instance's name
/// only to its NICs' MACs).
pub fn fill_hwaddrs(config: &mut StringMap, ed: &Devices) -> Result<()> {
    for (dev, conf) in nic_devices(ed) {
        let get = |k: &str| conf.get(k).map(String::as_str).unwrap_or("");
        if !get("hwaddr").is_empty() || get("nictype") == "physical" {
            continue;
        }
        let key = format!("volatile.{dev}.hwaddr");
        if config.get(&key).is_none_or(String::is_empty) {
            config.insert(key, format_mac(new_mac()?));
        }
    }
    Ok(())
}

/// The NIC devices among `ed`, by device name.
pub fn nic_devices(ed: &Devices) -> impl Iterator<Item = (&String, &StringMap)> {
    ed.iter()
        .filter(|(_, d)| d.get("type").map(String::as_str) == Some("nic"))
}

/// The managed networks the NICs among `devs` attach to.
pub fn networks_of(data: &Data, devs: &Devices) -> BTreeSet<String> {
    crate::util::sort::set(
        data.networks
            .keys()
            .filter(|n| nic_devices(devs).any(|(_, c)| uses_network(c, n)))
            .cloned(),
    )
}

/// The static addresses among the NICs `ed`: `(device, managed network, ipv4.address)`.
fn static_addresses(data: &Data, ed: &Devices) -> Vec<(String, String, std::net::Ipv4Addr)> {
    nic_devices(ed)
        .filter_map(|(dev, conf)| {
            let ip = conf.get("ipv4.address")?.parse().ok()?;
            let net = data.networks.keys().find(|n| uses_network(conf, n))?;
            Some((dev.clone(), net.clone(), ip))
        })
        .collect()
}

/// The instance other than `inst` one of whose NICs on managed network `net` has the static
/// address `ip`.
fn other_holder(data: &Data, net: &str, ip: std::net::Ipv4Addr, inst: &str) -> Option<String> {
    on_network(data, net)
        .into_iter()
        .find(|o| o.instance != inst && o.ipv4 == Some(ip))
        .map(|o| o.instance)
}

/// Refuse a config change that gives a NIC of instance `inst` (its expanded devices `new`) a
/// static `ipv4.address` that another NIC on the same managed network has in the records:
/// another instance's, running or stopped (LXD checks the config, not the running state), or
/// another of its own, with LXD's wording and the holder named. Only the addresses `new` gives
/// and `old` (the expanded devices before the change; none for a new instance) did not give the
/// same device are checked, so a conflict that records made earlier hold does not block an
/// unrelated change (the bridge serves one of the two and logs the other, see
/// [`crate::net::leases::LeaseStore::set_static`]). `data` is the records with the change's
/// other parts made (a changed profile's new devices).
pub fn check_static_addresses(data: &Data, inst: &str, old: &Devices, new: &Devices) -> Result<()> {
    let before = static_addresses(data, old);
    let after = static_addresses(data, new);
    for (dev, net, ip) in &after {
        if before
            .iter()
            .any(|(d, n, i)| d == dev && n == net && i == ip)
        {
            continue;
        }
        let holder = after
            .iter()
            .find(|(d, n, i)| d != dev && n == net && i == ip)
            .map(|(d, _, _)| format!("device {d:?} of the same instance"))
            .or_else(|| other_holder(data, net, *ip, inst).map(|o| format!("instance {o:?}")));
        if let Some(holder) = holder {
            return Err(Error::Invalid(format!(
                "Device {dev:?}: IP address \"{ip}\" already defined on another NIC ({holder}, on network {net:?})"
            )));
        }
    }
    Ok(())
}

/// A started instance's NICs: what the runtime makes, the volatile keys to set first
/// (`hwaddr` made once and kept; `host_name` chosen for this run), and the managed networks
/// they join.
pub struct Resolved {
    pub nics: Vec<Nic>,
    pub volatile: Vec<(String, Option<String>)>,
    pub networks: BTreeSet<String>,
}

/// Resolve instance `inst`'s expanded NICs for a start (`config` is its own config, where the
/// volatile keys live). A static address another instance reserved on the same network is
/// refused.
pub fn resolve(data: &Data, inst: &str, config: &StringMap, ed: &Devices) -> Result<Resolved> {
    resolve_beside(data, inst, config, ed, BTreeSet::new())
}

/// [`resolve`] for NICs joining others the instance has (interface names `taken`): an unnamed
/// one gets the first `ethN` free of them too.
fn resolve_beside(
    data: &Data,
    inst: &str,
    config: &StringMap,
    ed: &Devices,
    taken: BTreeSet<String>,
) -> Result<Resolved> {
    let mut out = Resolved {
        nics: Vec::new(),
        volatile: Vec::new(),
        networks: BTreeSet::new(),
    };
    let mut names: BTreeSet<String> = taken;
    names.extend(
        nic_devices(ed).filter_map(|(_, d)| d.get("name").filter(|n| !n.is_empty()).cloned()),
    );
    let mut macs: BTreeSet<[u8; 6]> = BTreeSet::new();
    for (dev, conf) in nic_devices(ed) {
        let attach = validate(data, dev, conf)?;
        let get = |k: &str| conf.get(k).map(String::as_str).unwrap_or("");
        let name = match get("name") {
            "" => {
                let n = (0..)
                    .map(|i| format!("eth{i}"))
                    .find(|n| !names.contains(n))
                    .expect("a free name");
                names.insert(n.clone());
                n
            }
            n => n.to_string(),
        };
        let hw_key = format!("volatile.{dev}.hwaddr");
        // A physical NIC keeps its own MAC unless given one.
        let physical = match &attach {
            Attach::Physical(parent) => Some(host_link(parent, dev)?),
            _ => None,
        };
        let mac = match parse_mac(get("hwaddr")) {
            Some(m) => m,
            None if physical.is_some() => physical.as_ref().and_then(|l| l.mac).unwrap_or([0; 6]),
            None => match config.get(&hw_key).and_then(|v| parse_mac(v)) {
                Some(m) => m,
                None => {
                    let m = new_mac()?;
                    out.volatile.push((hw_key, Some(format_mac(m))));
                    m
                }
            },
        };
        if !macs.insert(mac) {
            return Err(Error::Invalid(format!(
                "Device {dev:?}: MAC address {} is used by another nic of the instance",
                format_mac(mac)
            )));
        }
        let mut mtu = get("mtu").parse::<u32>().ok();
        let host_name = || -> Result<String> {
            match get("host_name") {
                "" => new_host_name(),
                h => Ok(h.to_string()),
            }
        };
        let kind = match &attach {
            Attach::Managed(net) => {
                if let Some(ip) = conf.get("ipv4.address").and_then(|v| v.parse().ok()) {
                    if let Some(o) = other_holder(data, net, ip, inst) {
                        return Err(Error::Invalid(format!(
                            "Device {dev:?}: IP address {ip} is already reserved on network {net:?} by instance {o:?}"
                        )));
                    }
                }
                out.networks.insert(net.clone());
                if mtu.is_none() {
                    mtu = data
                        .networks
                        .get(net)
                        .and_then(|r| parse_config(&r.config).ok())
                        .and_then(|c| c.mtu);
                }
                NicKind::Veth {
                    host_name: host_name()?,
                    bridge: Some(net.clone()),
                }
            }
            Attach::Bridge(br) => NicKind::Veth {
                host_name: host_name()?,
                bridge: Some(br.clone()),
            },
            Attach::P2p => NicKind::Veth {
                host_name: host_name()?,
                bridge: None,
            },
            Attach::Macvlan(parent) => NicKind::Macvlan {
                parent: parent.clone(),
            },
            Attach::Physical(parent) => {
                let l = physical.as_ref().expect("read above");
                NicKind::Physical {
                    parent: parent.clone(),
                    host_mtu: l.mtu,
                    host_mac: l.mac,
                }
            }
        };
        if let NicKind::Veth { host_name, .. } = &kind {
            out.volatile
                .push((format!("volatile.{dev}.host_name"), Some(host_name.clone())));
        }
        out.nics.push(Nic {
            device: dev.clone(),
            name,
            mac,
            mtu,
            kind,
        });
    }
    Ok(out)
}

/// Host link `parent` for a physical nic: it must exist and be free (no bridge or bond holds
/// it, and it is not one of bivy's own bridges' or a container's veth).
fn host_link(parent: &str, dev: &str) -> Result<crate::net::netlink::Link> {
    let nl =
        crate::net::netlink::Netlink::open().map_err(|e| Error::Host(format!("netlink: {e}")))?;
    let l = nl
        .link(parent)
        .map_err(|e| Error::Host(format!("Device {dev:?}: {parent}: {e}")))?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "Device {dev:?}: Parent device {parent:?} doesn't exist on the host"
            ))
        })?;
    if l.master.is_some() || l.kind == "bridge" || l.name == "lo" {
        return Err(Error::Invalid(format!(
            "Device {dev:?}: {parent:?} is a bridge, loopback or held by one: a physical nic takes a free host link"
        )));
    }
    Ok(l)
}

/// The volatile keys a stopped instance no longer has (`volatile.<dev>.host_name`).
pub fn stopped_volatile(config: &StringMap) -> Vec<(String, Option<String>)> {
    config
        .keys()
        .filter(|k| k.starts_with("volatile.") && k.ends_with(".host_name"))
        .map(|k| (k.clone(), None))
        .collect()
}

/// For a managed network: the NICs of instances on it, as `(instance, mac, static ipv4, host veth
/// when running, mac filtering)`.
pub struct OnNetwork {
    pub instance: String,
    pub mac: Option<[u8; 6]>,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub host_name: Option<String>,
    pub mac_filtering: bool,
}

/// Every NIC of every instance attached to managed network `net`.
pub fn on_network(data: &Data, net: &str) -> Vec<OnNetwork> {
    let mut out = Vec::new();
    for (inst, r) in &data.instances {
        let (_, ed) = super::config::expand(&r.profiles, &data.profiles, &r.config, &r.devices);
        for (dev, conf) in nic_devices(&ed) {
            if !uses_network(conf, net) {
                continue;
            }
            let mac = conf.get("hwaddr").and_then(|v| parse_mac(v)).or_else(|| {
                r.config
                    .get(&format!("volatile.{dev}.hwaddr"))
                    .and_then(|v| parse_mac(v))
            });
            out.push(OnNetwork {
                instance: inst.clone(),
                mac,
                ipv4: conf.get("ipv4.address").and_then(|v| v.parse().ok()),
                host_name: r
                    .config
                    .get(&format!("volatile.{dev}.host_name"))
                    .filter(|h| !h.is_empty())
                    .cloned(),
                mac_filtering: conf
                    .get("security.mac_filtering")
                    .and_then(|v| parse_bool(v))
                    .unwrap_or(true),
            });
        }
    }
    out
}

/// Whether a running instance's NICs are as recorded without looking further (the usual case
/// after a restart): no hot-plug pending, and the running spec has exactly the record's NIC
/// devices, each veth with the record's host end.
pub fn consistent(config: &StringMap, run_dir: &std::path::Path, ed: &Devices) -> bool {
    let made = crate::runtime::running_nics(run_dir).unwrap_or_default();
    crate::runtime::pending_nics(run_dir).is_empty()
        && made.len() == nic_devices(ed).count()
        && made.iter().all(|m| {
            ed.contains_key(&m.device)
                && match &m.kind {
                    NicKind::Veth { host_name, .. } => {
                        config.get(&format!("volatile.{}.host_name", m.device)) == Some(host_name)
                    }
                    _ => true,
                }
        })
}

/// After a daemon restart: make the running instance's NICs (init `pid`) what its record's
/// expanded devices `ed` and `config` say, whatever a killed daemon's hot-plug left (see
/// `runtime::reconcile_nics`). Each recorded NIC is what it was made as when the running spec
/// or a pending hot-plug has it with the record's host end and MAC; otherwise it is resolved
/// afresh from the record (a veth keeps the record's host end name). A veth whose host end the
/// record lacks keeps the one it was made with, which the returned volatile keys record.
pub fn reconcile(
    data: &Data,
    inst: &str,
    config: &StringMap,
    run_dir: &std::path::Path,
    pid: i32,
    ed: &Devices,
) -> Result<Vec<(String, Option<String>)>> {
    let mut adopted = Vec::new();
    let mut made = crate::runtime::running_nics(run_dir).unwrap_or_default();
    made.extend(crate::runtime::pending_nics(run_dir));
    let mut want: Vec<Nic> = Vec::new();
    for (dev, conf) in nic_devices(ed) {
        let one: Devices = crate::util::sort::map([(dev.clone(), conf.clone())]);
        let fresh = resolve(data, inst, config, &one).map(|r| r.nics.into_iter().next());
        let mut fresh = match fresh {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            // A physical NIC already in the container is not on the host to be read again.
            Err(e) => match made
                .iter()
                .find(|m| m.device == *dev && matches!(m.kind, NicKind::Physical { .. }))
            {
                Some(m) => m.clone(),
                None => return Err(e),
            },
        };
        if let NicKind::Veth { host_name, .. } = &mut fresh.kind {
            let key = format!("volatile.{dev}.host_name");
            match config.get(&key) {
                Some(h) => *host_name = h.clone(),
                None => {
                    if let Some(NicKind::Veth { host_name: h, .. }) =
                        made.iter().find(|m| m.device == *dev).map(|m| &m.kind)
                    {
                        *host_name = h.clone();
                        adopted.push((key, Some(h.clone())));
                    }
                }
            }
        }
        let same = |m: &&Nic| {
            m.device == *dev && m.kind == fresh.kind && m.mac == fresh.mac && m.mtu == fresh.mtu
        };
        let mut nic = made.iter().find(same).cloned().unwrap_or(fresh);
        // An unnamed NIC resolved alone may take a name another one has.
        if want.iter().any(|w| w.name == nic.name) {
            nic.name = (0..)
                .map(|i| format!("eth{i}"))
                .find(|n| !want.iter().any(|w| w.name == *n))
                .expect("a free name");
        }
        want.push(nic);
    }
    crate::runtime::reconcile_nics(run_dir, pid, &want).map_err(Error::from)?;
    Ok(adopted)
}

/// The runtime's view of a NIC a running instance has now (its `volatile` host end), to
/// unplug it.
fn running_nic(config: &StringMap, dev: &str, conf: &StringMap) -> Option<Nic> {
    let name = conf.get("name").cloned().unwrap_or_else(|| dev.to_string());
    let kind = match conf.get("nictype").map(String::as_str) {
        Some("macvlan") => NicKind::Macvlan {
            parent: conf.get("parent").cloned().unwrap_or_default(),
        },
        _ => NicKind::Veth {
            host_name: config.get(&format!("volatile.{dev}.host_name"))?.clone(),
            bridge: None,
        },
    };
    Some(Nic {
        device: dev.to_string(),
        name,
        mac: [0; 6],
        mtu: None,
        kind,
    })
}

/// The NIC keys a running NIC takes without being made again, as LXD's bridged NIC updates
/// them (`UpdatableFields`): its static addresses (the bridge's leases) and its filtering
/// (the bridge's rules), both applied by the bridges' refresh that follows an update.
const LIVE_KEYS: &[&str] = &[
    "ipv4.address",
    "ipv6.address",
    "security.mac_filtering",
    "security.ipv4_filtering",
    "security.ipv6_filtering",
];

/// Whether two versions of a device differ at most in [`LIVE_KEYS`].
fn same_but_live_keys(old: Option<&StringMap>, new: Option<&StringMap>) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => {
            let rest =
                |d: &StringMap| crate::util::sort::entries_where(d, |k, _| !LIVE_KEYS.contains(&k));
            rest(o) == rest(n)
        }
        (o, n) => o == n,
    }
}

/// Hot-plug: bring a running instance's NICs (init `pid`) from `old` to `new` expanded devices:
/// removed and changed ones unplugged, added and changed ones plugged (made in the container's
/// namespace, up). All or nothing: on a failure what was done is undone. Returns the volatile
/// keys to record with the new config (the managed networks' rules follow with
/// `bridges::refresh`).
pub fn hotplug(
    data: &Data,
    inst: &str,
    config: &StringMap,
    run_dir: &std::path::Path,
    pid: i32,
    old: &Devices,
    new: &Devices,
) -> Result<Vec<(String, Option<String>)>> {
    let changed = |n: &String| !same_but_live_keys(old.get(n), new.get(n));
    // What the runtime recorded it made (a physical NIC's host state is only there), else what
    // the config says.
    let running: Vec<Nic> = crate::runtime::running_nics(run_dir).unwrap_or_default();
    let gone: Vec<Nic> = nic_devices(old)
        .filter(|(n, _)| changed(n))
        .filter_map(|(n, c)| {
            running
                .iter()
                .find(|r| r.device == **n)
                .cloned()
                .or_else(|| running_nic(config, n, c))
        })
        .collect();
    let added: Devices = crate::util::sort::map(
        nic_devices(new)
            .filter(|(n, _)| changed(n))
            .map(|(n, c)| (n.clone(), c.clone())),
    );
    if gone.is_empty() && added.is_empty() {
        return Ok(Vec::new());
    }
    // New NICs' names must not clash with the ones staying: their names as made (an unnamed
    // one got the first free `ethN` at the start), else as configured.
    let staying: BTreeSet<String> =
        crate::util::sort::set(nic_devices(new).filter(|(n, _)| !changed(n)).map(|(n, c)| {
            match running.iter().find(|r| r.device == **n) {
                Some(r) => r.name.clone(),
                None => c.get("name").cloned().unwrap_or_else(|| n.clone()),
            }
        }));
    // A changed device keeps its MAC unless the change set one.
    let mut cfg = config.clone();
    for (n, c) in &added {
        if c.get("hwaddr").is_some_and(|h| !h.is_empty()) {
            cfg.remove(&format!("volatile.{n}.hwaddr"));
        }
    }
    let resolved = resolve_beside(data, inst, &cfg, &added, staying.clone())?;
    for nic in &resolved.nics {
        if staying.contains(&nic.name) {
            return Err(Error::Invalid(format!(
                "Device {:?}: the instance already has an interface named {:?}",
                nic.device, nic.name
            )));
        }
    }
    let nl =
        crate::net::netlink::Netlink::open().map_err(|e| Error::Host(format!("netlink: {e}")))?;
    // What it is about to change, first: a daemon killed from here on is reconciled at restart.
    crate::runtime::intend_nics(run_dir, &gone, &resolved.nics)?;
    let settle = |unplugged: &[Nic]| {
        let devices: Vec<String> = unplugged.iter().map(|n| n.device.clone()).collect();
        if let Err(e) = crate::runtime::record_nics(run_dir, &devices, &[]) {
            eprintln!("bivy: {inst}: recording its NICs: {e}");
        }
        crate::runtime::nics_settled(run_dir);
    };
    let mut revert = crate::util::revert::Revert::new();
    for (i, nic) in gone.iter().enumerate() {
        if let Err(e) = crate::runtime::unplug_nic(&nl, pid, nic) {
            settle(&gone[..i]);
            return Err(e.into());
        }
    }
    // What was unplugged cannot be put back as it was (its MAC and peer are gone with it); a
    // failed plug below still leaves the removed ones removed and says so.
    for nic in &resolved.nics {
        if let Err(e) = crate::runtime::plug_nic(&nl, pid, nic) {
            drop(revert);
            settle(&gone);
            return Err(Error::Host(format!(
                "{e}{}",
                if gone.is_empty() {
                    String::new()
                } else {
                    " (the removed devices stay removed)".into()
                }
            )));
        }
        let n = nic.clone();
        let pid_ = pid;
        revert.add(move || {
            if let Ok(nl) = crate::net::netlink::Netlink::open() {
                let _ = crate::runtime::unplug_nic(&nl, pid_, &n);
            }
        });
    }
    revert.commit();
    let gone_devices: Vec<String> = gone.iter().map(|n| n.device.clone()).collect();
    if let Err(e) = crate::runtime::record_nics(run_dir, &gone_devices, &resolved.nics) {
        eprintln!("bivy: {inst}: recording its NICs: {e}");
    }
    crate::runtime::nics_settled(run_dir);
    // Clear what the removed devices had, then set what the plugged ones have (a changed
    // device's new host name replaces its cleared one: the later entry wins).
    let mut all: Vec<(String, Option<String>)> = Vec::new();
    for nic in &gone {
        if !new.contains_key(&nic.device) {
            all.push((format!("volatile.{}.hwaddr", nic.device), None));
        }
        all.push((format!("volatile.{}.host_name", nic.device), None));
    }
    all.extend(resolved.volatile);
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for (k, v) in all {
        out.retain(|(o, _)| *o != k);
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::db::NetworkRecord;

    fn m(kv: &[(&str, &str)]) -> StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn data() -> Data {
        let mut d = Data::default();
        d.networks.insert(
            "br0".into(),
            NetworkRecord {
                kind: "bridge".into(),
                config: m(&[("ipv4.address", "10.7.0.1/24"), ("bridge.mtu", "1400")]),
                description: String::new(),
            },
        );
        d
    }

    #[test]
    fn nic_keys() {
        let d = data();
        let v = |kv: &[(&str, &str)]| validate(&d, "eth0", &m(kv));
        assert_eq!(
            v(&[("type", "nic"), ("network", "br0")]).unwrap(),
            Attach::Managed("br0".into())
        );
        assert_eq!(
            v(&[("type", "nic"), ("nictype", "bridged"), ("parent", "br0")]).unwrap(),
            Attach::Managed("br0".into())
        );
        assert_eq!(
            v(&[
                ("type", "nic"),
                ("nictype", "bridged"),
                ("parent", "docker0")
            ])
            .unwrap(),
            Attach::Bridge("docker0".into())
        );
        assert_eq!(
            v(&[("type", "nic"), ("nictype", "p2p")]).unwrap(),
            Attach::P2p
        );
        assert!(matches!(
            v(&[("type", "nic"), ("network", "nosuch")]),
            Err(Error::NotFound(_))
        ));
        assert!(v(&[("type", "nic"), ("network", "br0"), ("parent", "x")]).is_err());
        assert!(v(&[("type", "nic"), ("nictype", "macvlan")]).is_err());
        assert!(v(&[("type", "nic")]).is_err());
        assert!(matches!(
            v(&[("type", "nic"), ("nictype", "physical"), ("parent", "x")]),
            Ok(Attach::Physical(p)) if p == "x"
        ));
        assert!(v(&[("type", "nic"), ("nictype", "physical")]).is_err());
        assert!(v(&[
            ("type", "nic"),
            ("nictype", "physical"),
            ("parent", "x"),
            ("host_name", "h")
        ])
        .is_err());
        assert!(matches!(
            v(&[("type", "nic"), ("nictype", "ipvlan"), ("parent", "x")]),
            Err(Error::NotSupported(_))
        ));
        assert!(matches!(
            v(&[("type", "nic"), ("network", "br0"), ("limits.max", "1M")]),
            Err(Error::NotSupported(_))
        ));
        assert!(v(&[("type", "nic"), ("network", "br0"), ("nosuch", "1")]).is_err());
        assert!(v(&[
            ("type", "nic"),
            ("network", "br0"),
            ("name", "a-name-way-too-long")
        ])
        .is_err());
        assert!(v(&[
            ("type", "nic"),
            ("network", "br0"),
            ("hwaddr", "01:00:00:00:00:01")
        ])
        .is_err());
        assert!(v(&[
            ("type", "nic"),
            ("network", "br0"),
            ("ipv4.address", "10.7.0.50")
        ])
        .is_ok());
        assert!(v(&[
            ("type", "nic"),
            ("network", "br0"),
            ("ipv4.address", "10.7.0.1")
        ])
        .is_err());
        assert!(v(&[
            ("type", "nic"),
            ("network", "br0"),
            ("ipv4.address", "10.8.0.5")
        ])
        .is_err());
        assert!(v(&[
            ("type", "nic"),
            ("nictype", "p2p"),
            ("ipv4.address", "10.7.0.5")
        ])
        .is_err());
    }

    #[test]
    fn a_static_address_is_one_nics_only() {
        let mut d = data();
        let nic = |ip: &str| m(&[("type", "nic"), ("network", "br0"), ("ipv4.address", ip)]);
        let devs = |list: &[(&str, &str)]| -> Devices {
            list.iter()
                .map(|(dev, ip)| (dev.to_string(), nic(ip)))
                .collect()
        };
        let stopped = crate::instance::db::InstanceRecord {
            devices: devs(&[("eth0", "10.7.0.50")]),
            ..Default::default()
        };
        d.instances.insert("c3".into(), stopped.into());
        let none = Devices::new();
        // Another instance's (stopped) address: refused, naming it.
        let e = check_static_addresses(&d, "c4", &none, &devs(&[("eth0", "10.7.0.50")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Device \"eth0\": IP address \"10.7.0.50\" already defined on another NIC (instance \"c3\", on network \"br0\")"
        );
        // Its own record is not another NIC; two of its own NICs are.
        assert!(check_static_addresses(&d, "c3", &none, &devs(&[("eth0", "10.7.0.50")])).is_ok());
        let e = check_static_addresses(
            &d,
            "c4",
            &none,
            &devs(&[("eth0", "10.7.0.60"), ("eth1", "10.7.0.60")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("already defined on another NIC (device \"eth"),
            "{e}"
        );
        assert!(check_static_addresses(&d, "c4", &none, &devs(&[("eth0", "10.7.0.51")])).is_ok());
        // A conflict the records already hold does not block a change that keeps it.
        let held = devs(&[("eth0", "10.7.0.50")]);
        assert!(check_static_addresses(&d, "c3copy", &held, &held).is_ok());
    }

    #[test]
    fn resolve_keeps_the_mac_and_picks_names() {
        let d = data();
        let mut ed = Devices::new();
        ed.insert(
            "eth0".into(),
            m(&[("type", "nic"), ("network", "br0"), ("name", "eth0")]),
        );
        ed.insert("x".into(), m(&[("type", "nic"), ("nictype", "p2p")]));
        ed.insert("root".into(), m(&[("type", "disk"), ("path", "/")]));
        let config = m(&[("volatile.eth0.hwaddr", "00:16:3e:aa:bb:cc")]);
        let r = resolve(&d, "c1", &config, &ed).unwrap();
        assert_eq!(r.nics.len(), 2);
        assert_eq!(r.nics[0].mac, [0, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
        assert_eq!(r.nics[0].mtu, Some(1400));
        assert_eq!(r.nics[1].name, "eth1");
        assert!(r.networks.contains("br0"));
        // A new MAC for x is recorded, and each veth gets a host name for this run.
        assert!(r
            .volatile
            .iter()
            .any(|(k, v)| k == "volatile.x.hwaddr" && v.is_some()));
        assert!(!r.volatile.iter().any(|(k, _)| k == "volatile.eth0.hwaddr"));
        assert_eq!(
            r.volatile
                .iter()
                .filter(|(k, _)| k.ends_with(".host_name"))
                .count(),
            2
        );
        match &r.nics[0].kind {
            NicKind::Veth { host_name, bridge } => {
                assert!(host_name.starts_with("veth") && host_name.len() == 12);
                assert_eq!(bridge.as_deref(), Some("br0"));
            }
            k => panic!("{k:?}"),
        }
    }
}
