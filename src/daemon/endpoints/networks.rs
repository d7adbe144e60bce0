//! `/1.0/networks`: managed bridges (create, show, edit, rename, delete, `/state`, `/leases`)
//! and the host's other interfaces, read-only (`managed: false`). Parse, call
//! `instance::networks`, render; LXD 5.0.2's shapes and messages (`lxd/networks.go`).

use std::collections::BTreeMap;
use std::path::Path;

use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use crate::api;
use crate::http::{Request, Response};
use crate::instance::networks;
use crate::instance::Ctx as Daemon;
use crate::net::netlink::{Link, Netlink};

/// The daemon's network namespace's links, by name (over netlink: `/sys/class/net` shows the
/// namespace that mounted sysfs, which need not be ours).
fn host_links() -> Result<BTreeMap<String, Link>> {
    let nl = Netlink::open().map_err(|e| Error::Internal(format!("netlink: {e}")))?;
    let links = nl
        .links()
        .map_err(|e| Error::Internal(format!("reading the host's links: {e}")))?;
    Ok(crate::util::sort::map(
        links.into_iter().map(|l| (l.name.clone(), l)),
    ))
}

/// The kind of a host interface as LXD names it: a link without a driver kind is a real device.
fn host_kind(l: &Link) -> &'static str {
    match l.kind.as_str() {
        _ if l.flags & libc::IFF_LOOPBACK as u32 != 0 => "loopback",
        "bridge" => "bridge",
        "bond" => "bond",
        "vlan" => "vlan",
        "" => "physical",
        _ => "unknown",
    }
}

/// A host interface as an unmanaged network.
fn host_network(d: &Daemon, l: &Link) -> api::Network {
    let used_by = {
        let data = &d.db.lock().expect("db lock").data;
        networks::used_by(data, &l.name)
    };
    api::Network {
        name: l.name.clone(),
        kind: host_kind(l).into(),
        used_by,
        ..Default::default()
    }
}

/// Managed networks, then host interfaces that are not one of them, by name.
fn all(d: &Daemon) -> Result<Vec<api::Network>> {
    let mut out =
        crate::util::sort::map(networks::list(d).into_iter().map(|n| (n.name.clone(), n)));
    for (n, l) in host_links()? {
        if let std::collections::btree_map::Entry::Vacant(e) = out.entry(n) {
            e.insert(host_network(d, &l));
        }
    }
    Ok(out.into_values().collect())
}

/// `GET /1.0/networks`.
pub fn list(d: &Daemon, req: &Request) -> Result<Response> {
    let nets = all(d)?;
    if recursion(req) > 0 {
        Ok(response::sync(&nets))
    } else {
        Ok(response::sync(
            &nets
                .iter()
                .map(|n| networks::url(&n.name))
                .collect::<Vec<_>>(),
        ))
    }
}

/// `GET /1.0/networks/NAME`.
pub fn get(d: &Daemon, name: &str) -> Result<Response> {
    if let Ok(rec) = networks::record(d, name) {
        let data = d.db.lock().expect("db lock").data.clone();
        let etag = response::etag(&networks::etag_source(name, &rec));
        return Ok(response::sync_etag(
            &networks::to_api(&data, name, &rec),
            Some(etag),
        ));
    }
    if let Some(l) = host_links()?.get(name) {
        return Ok(response::sync(&host_network(d, l)));
    }
    Err(Error::NotFound("Network not found".into()))
}

/// `POST /1.0/networks`.
pub fn create(d: &Daemon, req: &mut Request) -> Result<Response> {
    let body: api::NetworksPost = json(req)?;
    if body.name.is_empty() {
        return Err(Error::BadRequest("No name provided".into()));
    }
    networks::create(d, &body)?;
    Ok(response::created(&networks::url(&body.name)))
}

fn managed_only(d: &Daemon, name: &str, what: &str) -> Result<()> {
    match networks::record(d, name) {
        Ok(_) => Ok(()),
        Err(_) if host_links()?.contains_key(name) => Err(Error::BadRequest(format!(
            "{what} a network not managed by bivy is not possible"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `PUT`/`PATCH /1.0/networks/NAME`.
pub fn put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    managed_only(d, name, "Changing")?;
    let if_match = req.header("If-Match").map(str::to_string);
    let body: serde_json::Value = json(req)?;
    let put: api::NetworkPut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    let description_given = body.get("description").is_some();
    networks::update(d, name, &put, description_given, patch, |cur| {
        response::check_etag(
            if_match.as_deref(),
            &response::etag(&networks::etag_source(name, cur)),
        )
        .map_err(|e| crate::instance::Error::PreconditionFailed(e.message().to_string()))
    })?;
    Ok(response::empty())
}

/// `POST /1.0/networks/NAME`: rename.
pub fn rename(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::NetworkPost = json(req)?;
    if body.name.is_empty() {
        return Err(Error::BadRequest("No name provided".into()));
    }
    managed_only(d, name, "Renaming")?;
    networks::rename(d, name, &body.name)?;
    Ok(response::created(&networks::url(&body.name)))
}

/// `DELETE /1.0/networks/NAME`.
pub fn delete(d: &Daemon, name: &str) -> Result<Response> {
    managed_only(d, name, "Deleting")?;
    networks::delete(d, name)?;
    Ok(response::empty())
}

/// `GET /1.0/networks/NAME/leases`: the bridge's address (`type: gateway`, as LXD lists it),
/// then its static and dynamic leases.
pub fn leases(d: &Daemon, name: &str) -> Result<Response> {
    managed_only(d, name, "Listing leases of")?;
    let rec = networks::record(d, name)?;
    let mut out = Vec::new();
    if let Ok(c) = networks::parse_config(&rec.config) {
        let hwaddr = host_links()?
            .get(name)
            .and_then(|l| l.mac)
            .map(networks::format_mac)
            .unwrap_or_default();
        let gw = |address: String| api::NetworkLease {
            hostname: format!("{name}.gw"),
            hwaddr: hwaddr.clone(),
            address,
            kind: "gateway".into(),
            location: String::new(),
        };
        out.extend(c.ipv4.map(|a| gw(a.addr.to_string())));
        out.extend(c.ipv6.map(|a| gw(a.addr.to_string())));
    }
    out.extend(crate::instance::bridges::leases(d, name));
    Ok(response::sync(&out))
}

/// `GET /1.0/networks/NAME/state`: the interface's addresses, counters, MAC, MTU, state and,
/// for a bridge, its ports.
pub fn state(d: &Daemon, name: &str) -> Result<Response> {
    let _ = d;
    let links = host_links()?;
    let Some(link) = links.get(name) else {
        return Err(Error::NotFound("Network not found".into()));
    };
    let mut ifs = super::super::netstate::host_interfaces()
        .map_err(|e| Error::Internal(format!("reading the host's interfaces: {e}")))?;
    let Some(i) = ifs.remove(name) else {
        return Err(Error::NotFound("Network not found".into()));
    };
    // A bridge's ports are the links it is master of. Its settings come from sysfs when sysfs
    // shows our namespace (same ifindex); bivy's bridges keep the kernel's defaults otherwise.
    let bridge = (link.kind == "bridge").then(|| {
        let base = Path::new("/sys/class/net").join(name);
        let read = |f: &str| {
            std::fs::read_to_string(base.join(f))
                .map(|s| s.trim().to_string())
                .ok()
        };
        let ours = read("ifindex").is_some_and(|i| i == link.index.to_string());
        let sys = |f: &str, default: &str| {
            if ours {
                read(f).unwrap_or_else(|| default.to_string())
            } else {
                default.to_string()
            }
        };
        let mut upper: Vec<String> = links
            .values()
            .filter(|l| l.master == Some(link.index))
            .map(|l| l.name.clone())
            .collect();
        crate::util::sort::sort(&mut upper);
        let mac = link.mac.map(networks::format_mac).unwrap_or_default();
        api::NetworkStateBridge {
            id: sys(
                "bridge/bridge_id",
                &format!("8000.{}", mac.replace(':', "")),
            ),
            stp: sys("bridge/stp_state", "0") == "1",
            forward_delay: sys("bridge/forward_delay", "1500").parse().unwrap_or(0),
            vlan_default: sys("bridge/default_pvid", "1").parse().unwrap_or(0),
            vlan_filtering: sys("bridge/vlan_filtering", "0") == "1",
            upper_devices: upper,
        }
    });
    let st = api::NetworkState {
        addresses: i
            .addresses
            .into_iter()
            .map(|a| api::NetworkStateAddress {
                family: a.family,
                address: a.address,
                netmask: a.netmask,
                scope: a.scope,
            })
            .collect(),
        counters: api::NetworkStateCounters {
            bytes_received: i.counters.bytes_received,
            bytes_sent: i.counters.bytes_sent,
            packets_received: i.counters.packets_received,
            packets_sent: i.counters.packets_sent,
        },
        hwaddr: i.hwaddr,
        mtu: i.mtu,
        state: i.state,
        kind: i.kind,
        bond: None,
        bridge,
        vlan: None,
    };
    Ok(response::sync(&st))
}
