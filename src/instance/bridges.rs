//! Managed bridges on the host: the link and its addresses (netlink), bivy's nftables chains
//! for it (`nft`), the forwarding sysctls it needs, and the daemon's DHCP and DNS servers with
//! the bridge's lease store (`$BIVY_DIR/networks/<name>/leases.json`).
//!
//! What bivy changes on the host, and nothing else: the bridge link; bivy's own nftables tables
//! (`inet bivy`, `bridge bivy`), with one set of chains per bridge; `net.ipv4.ip_forward=1`
//! when a bridge has IPv4, `net.ipv6.conf.all.forwarding=1` when it has IPv6 (both left set when
//! the bridge goes, as other users may rely on them); and, only where another ruleset's forward
//! chain drops by policy (Docker's `FORWARD`), two accept rules for the bridge in that chain (or
//! in Docker's `DOCKER-USER`), each tagged `bivy:<bridge>` and removed with the bridge.
//!
//! A bridge being made is marked by its directory before anything is made, so a daemon killed
//! half-way removes the rest at its next start (`recover`).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::bridge_state::Live;
use super::db::Data;
use super::networks::{parse_config, BridgeConfig};
use super::{nics, Ctx, Error, Result};
use crate::net::dhcp::{DhcpConfig, DhcpServer};
use crate::net::dns::{DnsConfig, DnsServer};
use crate::net::leases::{LeaseStore, StaticLease};
use crate::net::netlink::{LinkSpec, Netlink};
use crate::net::nft::{BridgeRules, Nft, NicFilter};

fn dir(d: &Ctx, name: &str) -> PathBuf {
    d.dir.join("networks").join(name)
}

fn host(e: impl std::fmt::Display) -> Error {
    Error::Host(e.to_string())
}

/// Whether a host link named `name` exists that is not a bridge bivy made for a network of
/// this daemon (a half-made one, marked by its directory, is ours).
pub fn foreign_link(d: &Ctx, name: &str) -> Result<bool> {
    let nl = Netlink::open().map_err(|e| host(format!("netlink: {e}")))?;
    let exists = nl
        .link(name)
        .map_err(|e| host(format!("netlink: {e}")))?
        .is_some();
    Ok(exists && !dir(d, name).exists())
}

/// A stable MAC for a bridge without `bridge.hwaddr`, from its name and the daemon's directory
/// (a bridge otherwise takes the lowest MAC of its ports, which changes as containers come and
/// go and breaks the neighbours' ARP caches).
fn derived_mac(d: &Ctx, name: &str) -> [u8; 6] {
    let mut input = d.dir.as_os_str().as_encoded_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(name.as_bytes());
    let h = ring::digest::digest(&ring::digest::SHA256, &input);
    let h = h.as_ref();
    [0x00, 0x16, 0x3e, h[0], h[1], h[2]]
}

fn write_sysctl(path: &str) -> Result<()> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        _ => std::fs::write(path, "1").map_err(|e| host(format!("setting {path} to 1: {e}"))),
    }
}

/// The DHCP entries the bridge's instance NICs pin: their MAC, static address and name. Those
/// of running instances come first, so that of two NICs asking for one address (see
/// [`LeaseStore::set_static`]) a running one keeps it after a daemon restart.
fn static_leases(on: &[nics::OnNetwork]) -> Vec<StaticLease> {
    let mut on: Vec<&nics::OnNetwork> = on.iter().collect();
    crate::util::sort::sort_by_key(&mut on, |n| n.host_name.is_none());
    on.into_iter()
        .filter_map(|n| {
            Some(StaticLease {
                mac: n.mac?,
                ip: n.ipv4,
                hostname: n.instance.clone(),
            })
        })
        .collect()
}

/// Give bridge `name`'s store its static entries from `on`; each conflict (two NICs asking for
/// one address) is logged, the other entries are served.
fn set_statics(name: &str, store: &mut LeaseStore, on: &[nics::OnNetwork]) -> io::Result<()> {
    for c in store.set_static(static_leases(on))? {
        eprintln!(
            "bivy: network {name}: instances {:?} and {:?} both have ipv4.address {}: {:?} keeps it, {:?} gets a dynamic address until one of them changes",
            c.holder, c.refused, c.ip, c.holder, c.refused
        );
    }
    Ok(())
}

fn rules(on: &[nics::OnNetwork], name: &str, c: &BridgeConfig) -> BridgeRules {
    BridgeRules {
        bridge: name.to_string(),
        ipv4: c.ipv4.map(|a| (a.addr, a.prefix)),
        ipv4_nat: c.ipv4_nat,
        ipv6: c.ipv6.map(|a| (a.addr, a.prefix)),
        ipv6_nat: c.ipv6_nat,
        filters: on
            .iter()
            .filter(|n| n.mac_filtering)
            .filter_map(|n| {
                Some(NicFilter {
                    host_veth: n.host_name.clone()?,
                    mac: n.mac?,
                    ipv4: None,
                    ipv6: None,
                })
            })
            .collect(),
    }
}

/// Bring bridge `name` up (or in line with a changed config): link, addresses, sysctls, rules,
/// lease store, DHCP and DNS. `data` is the state it is to serve (its instances' NICs).
/// Idempotent: a daemon start runs it for every network.
pub fn up(d: &Ctx, data: &Data, name: &str, c: &BridgeConfig) -> Result<()> {
    let dir = dir(d, name);
    let fresh = !dir.exists();
    // `networks/` too is private (the daemon's start would mend it otherwise).
    for p in [dir.parent().unwrap_or(&dir), dir.as_path()] {
        crate::util::fs::create_dir_mode(p, 0o700)
            .map_err(|e| host(format!("{}: {e}", p.display())))?;
    }
    let r = up_inner(d, data, name, c);
    if r.is_err() && fresh {
        down(d, name);
    }
    r
}

fn up_inner(d: &Ctx, data: &Data, name: &str, c: &BridgeConfig) -> Result<()> {
    let nl = Netlink::open().map_err(|e| host(format!("netlink: {e}")))?;
    let nle = |what: &str, e: io::Error| host(format!("network {name:?}: {what}: {e}"));
    match nl.link(name).map_err(|e| nle("reading links", e))? {
        Some(l) if l.kind != "bridge" => {
            return Err(Error::Conflict(format!(
                "A network interface named {name:?} already exists on the host and is not a bridge ({})",
                if l.kind.is_empty() { "a device" } else { l.kind.as_str() }
            )))
        }
        Some(_) => {}
        None => nl
            .create_bridge(&LinkSpec {
                name,
                mac: None,
                mtu: None,
                up: false,
                netns: None,
            })
            .map_err(|e| nle("creating the bridge", e))?,
    }
    let mac = c.hwaddr.unwrap_or_else(|| derived_mac(d, name));
    nl.set_mac(name, mac)
        .map_err(|e| nle("setting its MAC address", e))?;
    // Without `bridge.mtu`, 1500 as LXD sets it (so unsetting the key puts it back).
    nl.set_mtu(name, c.mtu.unwrap_or(1500))
        .map_err(|e| nle("setting its MTU", e))?;
    nl.set_up(name, true)
        .map_err(|e| nle("bringing it up", e))?;
    // Addresses: exactly the configured ones (IPv6 link-local addresses are the kernel's).
    let index = nl
        .link(name)
        .map_err(|e| nle("reading the link", e))?
        .map(|l| l.index)
        .ok_or_else(|| host(format!("network {name:?}: the bridge vanished")))?;
    let want: Vec<(IpAddr, u8)> = c
        .ipv4
        .map(|a| (IpAddr::V4(a.addr), a.prefix))
        .into_iter()
        .chain(c.ipv6.map(|a| (IpAddr::V6(a.addr), a.prefix)))
        .collect();
    for a in nl.addrs().map_err(|e| nle("reading addresses", e))? {
        let link_local = matches!(a.addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if a.index == index && !link_local && !want.contains(&(a.addr, a.prefix)) {
            nl.del_addr(name, a.addr, a.prefix)
                .map_err(|e| nle(&format!("removing address {}/{}", a.addr, a.prefix), e))?;
        }
    }
    for (a, p) in &want {
        nl.add_addr(name, *a, *p)
            .map_err(|e| nle(&format!("adding address {a}/{p}"), e))?;
    }
    if c.ipv4.is_some() {
        write_sysctl("/proc/sys/net/ipv4/ip_forward")?;
    }
    if c.ipv6.is_some() {
        write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding")?;
    }
    // Firewall: bivy's chains, and a way through another ruleset's forward drop policy.
    let on = nics::on_network(data, name);
    let nft = Nft::find().map_err(|e| host(format!("network {name:?}: {e}")))?;
    nft.apply_bridge(&rules(&on, name, c))
        .map_err(|e| nle("applying its nftables rules", e))?;
    for chain in nft
        .foreign_forward_drops()
        .map_err(|e| nle("reading the host's nftables ruleset", e))?
    {
        nft.accept_in_foreign(&chain, name).map_err(|e| {
            nle(
                &format!(
                    "letting its traffic through the forward chain {} {} {} (policy {})",
                    chain.family, chain.table, chain.chain, chain.policy
                ),
                e,
            )
        })?;
        eprintln!(
            "bivy: network {name}: the host's forward chain {} {} {} drops by policy (Docker sets this); added accept rules for {name} to it, tagged \"bivy:{name}\"",
            chain.family, chain.table, chain.chain
        );
    }
    // Leases, then the servers (restarted with the new config).
    let mut bridges = d.bridges.0.lock().expect("bridges lock");
    let store = match bridges.remove(name) {
        Some(old) => {
            drop(old.dhcp);
            drop(old.dns);
            drop(old.ra);
            old.store
        }
        None => Arc::new(Mutex::new(
            LeaseStore::open(&dir(d, name).join("leases.json"))
                .map_err(|e| nle("opening its leases", e))?,
        )),
    };
    {
        let mut st = store.lock().expect("lease lock");
        set_statics(name, &mut st, &on).map_err(|e| nle("saving its static leases", e))?;
        // Leases from a subnet the bridge no longer has go (a changed ipv4.address).
        st.retain_addresses(|ip| c.ipv4.is_some_and(|a| a.contains(ip)))
            .map_err(|e| nle("saving its leases", e))?;
    }
    let mut live = Live {
        config: c.clone(),
        store: Arc::clone(&store),
        dhcp: None,
        dns: None,
        ra: None,
        dns_error: None,
    };
    if let Some(v6) = c.ipv6 {
        let cfg = crate::net::ra::RaConfig {
            ifname: name.to_string(),
            prefix: v6.addr,
            mac,
            mtu: c.mtu,
        };
        live.ra = Some(
            crate::net::ra::RaServer::start(cfg)
                .map_err(|e| nle("starting its router advertisements", e))?,
        );
    }
    if let Some(v4) = c.ipv4 {
        if c.ipv4_dhcp {
            let cfg = DhcpConfig {
                ifname: name.to_string(),
                server: v4.addr,
                prefix: v4.prefix,
                ranges: c.ipv4_ranges.clone(),
                lease_secs: c.lease_secs,
                router: Some(v4.addr),
                dns: Some(v4.addr),
                domain: c.domain.clone(),
                mtu: c.mtu.map(|m| m.min(u16::MAX as u32) as u16),
            };
            live.dhcp = Some(
                DhcpServer::start(cfg, Arc::clone(&store))
                    .map_err(|e| nle("starting its DHCP server", e))?,
            );
        }
        // `dns.mode=none` still forwards (LXD's dnsmasq does), without local names.
        let cfg = DnsConfig {
            listen: IpAddr::V4(v4.addr),
            port: 53,
            ifname: name.to_string(),
            domain: c.domain.clone(),
            gateway: v4.addr,
            upstreams: crate::net::dns::host_upstreams().unwrap_or_else(|e| {
                eprintln!("bivy: network {name}: no upstream resolvers (names outside {} are refused): {e}", c.domain);
                Vec::new()
            }),
            local_names: c.dns,
        };
        match DnsServer::start(cfg, Arc::clone(&store), v6_lookup(d, c)) {
            Ok(s) => live.dns = Some(s),
            Err(e) => {
                // DNS alone fails; DHCP keeps working (LXD's dnsmasq would fail both).
                let msg = format!("network {name}: DNS not served: {e}");
                eprintln!("bivy: {msg}");
                live.dns_error = Some(msg);
            }
        }
    }
    bridges.insert(name.to_string(), live);
    Ok(())
}

/// Take bridge `name` down and remove everything bivy made for it: servers, rules, the link,
/// its leases. Failures are logged (the next start retries what is left).
/// AAAA records for a bridge with IPv6: an instance's global addresses in the bridge's subnet,
/// read from its own network namespace (`/proc/<init>/net/if_inet6`) when asked, so they are
/// whatever SLAAC (or the instance's own configuration) gave it. Tentative addresses are left
/// out.
fn v6_lookup(d: &Ctx, c: &BridgeConfig) -> Option<crate::net::dns::V6Lookup> {
    let subnet = c.ipv6?;
    let me = d.me.get()?.clone();
    Some(Arc::new(move |name: &str| {
        let Some(d) = me.upgrade() else {
            return Vec::new();
        };
        let inst = {
            let db = d.db.lock().expect("db lock");
            db.data
                .instances
                .keys()
                .find(|n| n.eq_ignore_ascii_case(name))
                .cloned()
        };
        let Some(inst) = inst else {
            return Vec::new();
        };
        let Ok(crate::runtime::State::Running { init_pid, .. }) = super::view::state_of(&d, &inst)
        else {
            return Vec::new();
        };
        let text =
            std::fs::read_to_string(format!("/proc/{init_pid}/net/if_inet6")).unwrap_or_default();
        crate::net::parse_if_inet6(&text)
            .into_iter()
            .filter(|a| a.usable() && crate::net::in_subnet6(a.addr, subnet.addr, subnet.prefix))
            .map(|a| a.addr)
            .collect()
    }))
}

pub fn down(d: &Ctx, name: &str) {
    if let Some(live) = d.bridges.0.lock().expect("bridges lock").remove(name) {
        drop(live);
    }
    match Nft::find() {
        Ok(nft) => {
            if let Err(e) = nft.remove_bridge(name) {
                eprintln!("bivy: network {name}: removing its nftables chains: {e}");
            }
            if let Err(e) = nft.remove_foreign_accepts(name) {
                eprintln!("bivy: network {name}: removing its accept rules: {e}");
            }
        }
        Err(e) => eprintln!("bivy: network {name}: {e}"),
    }
    match Netlink::open().and_then(|nl| nl.delete_link(name)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("bivy: network {name}: deleting the bridge: {e}"),
    }
    let p = dir(d, name);
    if let Err(e) = std::fs::remove_dir_all(&p) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("bivy: {}: {e}", p.display());
        }
    }
}

/// Bring the rules and static leases of the bridges in `names` in line with the records (an
/// instance on them started, stopped or changed its NICs).
pub fn refresh(d: &Ctx, names: impl IntoIterator<Item = String>) {
    let mut names = names.into_iter().peekable();
    // Most instances have no NIC on a managed network: nothing to read or apply then.
    if names.peek().is_none() {
        return;
    }
    let data = d.db.lock().expect("db lock").data.clone();
    for name in names {
        let Some(rec) = data.networks.get(&name) else {
            continue;
        };
        let Ok(c) = parse_config(&rec.config) else {
            continue;
        };
        let on = nics::on_network(&data, &name);
        let r = Nft::find().and_then(|nft| nft.apply_bridge(&rules(&on, &name, &c)));
        if let Err(e) = r {
            eprintln!("bivy: network {name}: applying its nftables rules: {e}");
        }
        if let Some(store) = d.bridges.store(&name) {
            if let Err(e) = set_statics(&name, &mut store.lock().expect("lease lock"), &on) {
                eprintln!("bivy: network {name}: saving its static leases: {e}");
            }
        }
    }
}

/// At daemon start: every recorded network up; what a killed daemon left half-made (a
/// directory without a record) removed. A network that fails to come up is logged and left down
/// (the daemon and the other networks carry on).
pub fn recover(d: &Ctx) {
    let data = d.db.lock().expect("db lock").data.clone();
    if let Ok(rd) = std::fs::read_dir(d.dir.join("networks")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !data.networks.contains_key(&n) {
                eprintln!("bivy: network {n}: removing what an interrupted create left");
                down(d, &n);
            }
        }
    }
    for (name, rec) in &data.networks {
        let r = parse_config(&rec.config).and_then(|c| up(d, &data, name, &c));
        if let Err(e) = r {
            eprintln!("bivy: network {name}: not brought up: {e}");
        }
    }
}

/// The leases of network `name` as LXD lists them: the gateway's name, then every lease.
pub fn leases(d: &Ctx, name: &str) -> Vec<crate::api::NetworkLease> {
    let Some(store) = d.bridges.store(name) else {
        return Vec::new();
    };
    let leases = store.lock().expect("lease lock").leases();
    leases
        .into_iter()
        .map(|l| crate::api::NetworkLease {
            hostname: l.hostname,
            hwaddr: super::networks::format_mac(l.mac),
            address: l.ip.to_string(),
            kind: if l.is_static { "static" } else { "dynamic" }.into(),
            location: String::new(),
        })
        .collect()
}
