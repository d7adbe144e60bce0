//! Managed networks (`/1.0/networks`): the records, what uses them, and create, update, rename
//! and delete with LXD's rules and messages (`lxd/networks.go`). Their config keys are
//! `network_config`; bringing a bridge up on the host (link, addresses, nftables, DHCP and DNS)
//! is `bridges`.
//!
//! Only `bridge` networks are managed. Host interfaces are listed read-only (`managed: false`).

use super::db::{Data, NetworkRecord};
use super::network_config::check_clashes;
pub use super::network_config::{
    fill_defaults, host_routes4, parse_config, parse_expiry, resolve_auto, uses_network,
    validate_name, BridgeConfig, Cidr4, Cidr6, BRIDGE, DEFAULT_DOMAIN, DEFAULT_EXPIRY,
};
use super::{Ctx, Error, Result};
use crate::api;
pub use crate::net::netlink::{format_mac, parse_mac};

/// The API URL of a network.
pub fn url(name: &str) -> String {
    format!("/1.0/networks/{name}")
}

/// What uses a network, as LXD lists it: profiles whose devices name it, then instances whose
/// expanded devices do.
pub fn used_by(data: &Data, name: &str) -> Vec<String> {
    let mut out: Vec<String> = data
        .profiles
        .iter()
        .filter(|(_, p)| p.devices.values().any(|d| uses_network(d, name)))
        .map(|(n, _)| format!("/1.0/profiles/{n}"))
        .collect();
    out.extend(
        instances_using(data, name)
            .iter()
            .map(|n| super::view::url(n)),
    );
    out
}

/// Instances whose expanded devices attach to network `name`.
pub fn instances_using(data: &Data, name: &str) -> Vec<String> {
    data.instances
        .iter()
        .filter(|(_, r)| {
            let (_, ed) = super::config::expand(&r.profiles, &data.profiles, &r.config, &r.devices);
            ed.values().any(|d| uses_network(d, name))
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// The API view of a managed network.
pub fn to_api(data: &Data, name: &str, rec: &NetworkRecord) -> api::Network {
    api::Network {
        config: rec.config.clone(),
        description: rec.description.clone(),
        name: name.to_string(),
        kind: rec.kind.clone(),
        used_by: used_by(data, name),
        managed: true,
        status: "Created".into(),
        locations: vec!["none".into()],
    }
}

/// What a network's ETag covers (LXD: name, managed, type, description, config).
pub fn etag_source(name: &str, rec: &NetworkRecord) -> serde_json::Value {
    serde_json::json!([name, true, rec.kind, rec.description, rec.config])
}

fn record_in<'a>(data: &'a Data, name: &str) -> Result<&'a NetworkRecord> {
    data.networks
        .get(name)
        .ok_or_else(|| Error::NotFound("Network not found".into()))
}

/// The record of managed network `name`, or LXD's 404.
pub fn record(d: &Ctx, name: &str) -> Result<NetworkRecord> {
    record_in(&d.db.lock().expect("db lock").data, name).cloned()
}

/// Every managed network, by name.
pub fn list(d: &Ctx) -> Vec<api::Network> {
    let db = d.db.lock().expect("db lock");
    db.data
        .networks
        .iter()
        .map(|(n, r)| to_api(&db.data, n, r))
        .collect()
}

fn save(db: &mut super::db::Db, f: impl FnOnce(&mut Data)) -> Result<()> {
    db.update(f)
        .map_err(|e| Error::Host(format!("saving the network: {e}")))
}

/// Create a managed bridge: checked, defaults filled, brought up on the host, then recorded (a
/// failed bring-up removes what it made and records nothing).
pub fn create(d: &Ctx, req: &api::NetworksPost) -> Result<()> {
    validate_name(&req.name)?;
    match req.kind.as_str() {
        "" | BRIDGE => {}
        "macvlan" | "sriov" | "ovn" | "physical" => {
            return Err(Error::not_yet(&format!(
                "managed networks of type {:?} (bivy manages bridges)",
                req.kind
            )))
        }
        other => {
            return Err(Error::Invalid(format!(
                "Network type {other:?} is not supported"
            )))
        }
    }
    let mut config = req.config.clone();
    config.retain(|_, v| !v.is_empty());
    let routes = host_routes4();
    let mut db = d.db.lock().expect("db lock");
    if db.data.networks.contains_key(&req.name) {
        return Err(Error::Conflict(format!(
            "Network {:?} already exists",
            req.name
        )));
    }
    if super::bridges::foreign_link(d, &req.name)? {
        return Err(Error::Conflict(format!(
            "A network interface named {:?} already exists on the host",
            req.name
        )));
    }
    fill_defaults(&db.data, &mut config, &routes)?;
    let parsed = parse_config(&config)?;
    check_clashes(&db.data, &req.name, &parsed, &routes)?;
    let rec = NetworkRecord {
        kind: BRIDGE.into(),
        config,
        description: req.description.clone(),
    };
    // Recorded as being made first, so that a daemon killed during the bring-up removes the
    // half-made bridge at its next start instead of leaving it.
    super::bridges::up(d, &db.data, &req.name, &parsed)?;
    if let Err(e) = save(&mut db, |data| {
        data.networks.insert(req.name.clone(), rec);
    }) {
        super::bridges::down(d, &req.name);
        return Err(e);
    }
    drop(db);
    d.events
        .lifecycle("network-created", &url(&req.name), serde_json::json!({}));
    Ok(())
}

/// `PUT` (all of it) or `PATCH` (the keys given) of a network's config and description. The
/// bridge is changed live (addresses, rules, DHCP and DNS follow). `check` sees the current
/// record first (the caller's ETag check).
pub fn update(
    d: &Ctx,
    name: &str,
    put: &api::NetworkPut,
    description_given: bool,
    patch: bool,
    check: impl FnOnce(&NetworkRecord) -> Result<()>,
) -> Result<()> {
    let mut db = d.db.lock().expect("db lock");
    let cur = record_in(&db.data, name)?.clone();
    check(&cur)?;
    let mut next = cur.clone();
    super::config::merge_put(
        &mut next.config,
        &mut next.description,
        (&put.config, &put.description),
        description_given,
        patch,
    );
    let routes = host_routes4();
    // Only `auto` given is resolved: a key left out (unset, or an edit without it) means no
    // address of that family, as in LXD, not a new random subnet.
    resolve_auto(&db.data, &mut next.config, &routes)?;
    let parsed = parse_config(&next.config)?;
    if next == cur {
        return Ok(());
    }
    check_clashes(&db.data, name, &parsed, &routes)?;
    let old = parse_config(&cur.config)?;
    if parsed != old {
        super::bridges::up(d, &db.data, name, &parsed)?;
    }
    if let Err(e) = save(&mut db, |data| {
        data.networks.insert(name.to_string(), next);
    }) {
        let _ = super::bridges::up(d, &db.data, name, &old);
        return Err(e);
    }
    drop(db);
    d.events
        .lifecycle("network-updated", &url(name), serde_json::json!({}));
    Ok(())
}

/// Rename a network: refused while anything uses it (as LXD).
pub fn rename(d: &Ctx, name: &str, new: &str) -> Result<()> {
    validate_name(new)?;
    let mut db = d.db.lock().expect("db lock");
    let rec = record_in(&db.data, name)?.clone();
    if !used_by(&db.data, name).is_empty() {
        return Err(Error::Invalid("Network is currently in use".into()));
    }
    if db.data.networks.contains_key(new) {
        return Err(Error::Conflict(format!("Network {new:?} already exists")));
    }
    if super::bridges::foreign_link(d, new)? {
        return Err(Error::Conflict(format!(
            "A network interface named {new:?} already exists on the host"
        )));
    }
    let parsed = parse_config(&rec.config)?;
    super::bridges::down(d, name);
    let mut data = db.data.clone();
    data.networks.remove(name);
    if let Err(e) = super::bridges::up(d, &data, new, &parsed) {
        let _ = super::bridges::up(d, &db.data, name, &parsed);
        return Err(e);
    }
    if let Err(e) = save(&mut db, |data| {
        data.networks.remove(name);
        data.networks.insert(new.to_string(), rec);
    }) {
        super::bridges::down(d, new);
        let _ = super::bridges::up(d, &data, name, &parsed);
        return Err(e);
    }
    drop(db);
    d.events.lifecycle(
        "network-renamed",
        &url(new),
        serde_json::json!({"old_name": name}),
    );
    Ok(())
}

/// Delete a network: refused while anything uses it; the bridge, its rules, servers and leases
/// go with it.
pub fn delete(d: &Ctx, name: &str) -> Result<()> {
    let mut db = d.db.lock().expect("db lock");
    record_in(&db.data, name)?;
    if !used_by(&db.data, name).is_empty() {
        return Err(Error::Invalid("The network is currently in use".into()));
    }
    save(&mut db, |data| {
        data.networks.remove(name);
    })?;
    drop(db);
    // The record is gone (commit point); what cannot go now goes at the next start.
    super::bridges::down(d, name);
    d.events
        .lifecycle("network-deleted", &url(name), serde_json::json!({}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::network_config::tests::cfg;

    #[test]
    fn used_by_lists_profiles_then_instances() {
        let mut data = Data::default();
        let nic = cfg(&[("type", "nic"), ("network", "br0"), ("name", "eth0")]);
        data.profiles.insert(
            "default".into(),
            super::super::db::ProfileRecord {
                devices: [("eth0".to_string(), nic.clone())].into(),
                ..Default::default()
            },
        );
        data.instances.insert(
            "c1".into(),
            super::super::db::InstanceRecord {
                profiles: vec!["default".into()],
                ..Default::default()
            }
            .into(),
        );
        assert_eq!(
            used_by(&data, "br0"),
            vec!["/1.0/profiles/default", "/1.0/instances/c1"]
        );
        assert!(used_by(&data, "br1").is_empty());
        let bridged = cfg(&[("type", "nic"), ("nictype", "bridged"), ("parent", "br1")]);
        assert!(uses_network(&bridged, "br1"));
    }
}
