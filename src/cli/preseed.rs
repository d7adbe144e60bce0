//! The preseed document of `lxd init` (LXD 5.0's `api.InitLocalPreseed`) for `bivy admin init`:
//! read and checked ([`parse`]), compared with what the server has into the changes that make it
//! so ([`plan`]), and applied with every change undone if a later one fails ([`apply`]); and the
//! server's own state as such a document ([`dump`], `--dump`).
//!
//! - Sections: `config` (server keys, one `PATCH /1.0`), `networks` (managed bridges),
//!   `storage_pools`, `profiles`. LXD's other sections (`cluster`, `projects`,
//!   `storage_volumes`, `certificates`) are "not supported yet" unless empty; any other key is
//!   refused. So is any unknown key of an item: nothing in the document is accepted and ignored.
//! - As LXD: a missing object is created; an existing one is updated by overriding the keys the
//!   document gives (its config keys, its devices' keys, a non-empty description); nothing is
//!   removed. Unlike LXD, an update that would change nothing is not sent, so applying the same
//!   document twice changes nothing the second time, and `ipv4.address`/`ipv6.address: auto`
//!   keeps the address the server picked for an existing network instead of picking another.
//! - Everything is checked before the first change: the document (names, types, drivers, device
//!   types, the pools and networks devices name) and the server's current state (a pool's
//!   driver or a network's type cannot change, a host interface is no managed network).
//! - Order: storage pools, networks, profiles (whose devices name the first two), then the
//!   server config. Each create is undone by a delete and each update by putting back what was
//!   read before it; the server config comes last and the daemon applies its `PATCH` whole or
//!   not at all, so it never needs undoing (the trust password, kept hashed, could not be put
//!   back). An update checks that the object is still what the plan read (and sends its ETag).
//! - The trust password cannot be compared (the server shows `true` for a set one): `true` keeps
//!   the current password, any other value is sent each time.

use std::collections::BTreeMap;
use std::fmt;

use crate::util::yaml::{self, Node};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::api::{
    Devices, Network, NetworkPut, NetworksPost, Profile, ProfilePut, ProfilesPost, Server,
    StoragePool, StoragePoolPut, StringMap,
};
use crate::client::{urlencode, Client};
use crate::util::revert::Revert;

/// The trust password's server key (shown as `true` when set).
pub const TRUST_PASSWORD: &str = "core.trust_password";

/// LXD's preseed sections that bivy does not apply yet, and why.
const UNSUPPORTED: [(&str, &str); 4] = [
    ("cluster", "clustering"),
    ("projects", "projects (bivy has the default project only)"),
    ("storage_volumes", "storage volumes in a preseed"),
    ("certificates", "certificates in a preseed"),
];

/// Storage drivers LXD has and bivy does not.
const OTHER_DRIVERS: [&str; 4] = ["ceph", "cephfs", "lvm", "zfs"];

/// A preseed document, in `lxd init --dump`'s field order.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Preseed {
    pub config: StringMap,
    pub networks: Vec<NetworkSeed>,
    pub storage_pools: Vec<PoolSeed>,
    pub profiles: Vec<ProfileSeed>,
}

/// A network (`api.InitNetworksProjectPost`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSeed {
    #[serde(default, deserialize_with = "strings")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "scalar")]
    pub description: String,
    #[serde(deserialize_with = "scalar")]
    pub name: String,
    #[serde(default, rename = "type", deserialize_with = "scalar")]
    pub kind: String,
    #[serde(default, deserialize_with = "scalar")]
    pub project: String,
}

/// A storage pool (`api.StoragePoolsPost`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolSeed {
    #[serde(default, deserialize_with = "strings")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "scalar")]
    pub description: String,
    #[serde(deserialize_with = "scalar")]
    pub name: String,
    #[serde(default, deserialize_with = "scalar")]
    pub driver: String,
}

/// A profile (`api.ProfilesPost`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileSeed {
    #[serde(default, deserialize_with = "strings")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "scalar")]
    pub description: String,
    #[serde(default, deserialize_with = "devices")]
    pub devices: Devices,
    #[serde(deserialize_with = "scalar")]
    pub name: String,
}

/// A YAML scalar as Go's yaml.v2 reads it into a `string` (`true`, `8443`, as written); `null`
/// is "".
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::default())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::default())
            }
        }
        d.deserialize_str(V)
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Scalar::deserialize(d)?.0)
}

fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<StringMap, D::Error> {
    let m = Option::<BTreeMap<Scalar, Scalar>>::deserialize(d)?.unwrap_or_default();
    Ok(crate::util::sort::map(
        m.into_iter().map(|(k, v)| (k.0, v.0)),
    ))
}

fn devices<'de, D: Deserializer<'de>>(d: D) -> Result<Devices, D::Error> {
    type Raw = BTreeMap<Scalar, Option<BTreeMap<Scalar, Scalar>>>;
    let m = Option::<Raw>::deserialize(d)?.unwrap_or_default();
    Ok(crate::util::sort::map(m.into_iter().map(|(k, v)| {
        let dev = v.unwrap_or_default().into_iter().map(|(k, v)| (k.0, v.0));
        (k.0, crate::util::sort::map(dev))
    })))
}

/// Whether a section's value asks for nothing (`null`, `[]`, `{}`).
fn is_empty(v: &Node) -> bool {
    match v {
        Node::Null => true,
        Node::Seq(s) => s.is_empty(),
        Node::Map(m) => m.is_empty(),
        _ => false,
    }
}

/// The items of a list section, each with its place named in errors.
fn items<T: serde::de::DeserializeOwned>(section: &str, v: Node) -> Result<Vec<T>, String> {
    let list = match v {
        Node::Null => return Ok(Vec::new()),
        Node::Seq(s) => s,
        _ => return Err(format!("{section}: expected a list")),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, item)| {
            let name = item
                .get("name")
                .and_then(Node::as_str)
                .map(|n| format!(" ({n:?})"))
                .unwrap_or_default();
            yaml::from_node(&item).map_err(|e| format!("{section} item {}{name}: {e}", i + 1))
        })
        .collect()
}

/// Read a preseed document and check it on its own (see [`validate`]).
pub fn parse(text: &str) -> Result<Preseed, String> {
    let v = yaml::parse(text).map_err(|e| format!("Failed to parse the preseed: {e}"))?;
    let map =
        match v {
            Node::Null => return Ok(Preseed::default()),
            Node::Map(m) => m,
            _ => return Err(
                "the preseed must be a YAML mapping (config, networks, storage_pools, profiles)"
                    .into(),
            ),
        };
    let mut doc = Preseed::default();
    for (key, v) in map {
        match key.as_str() {
            "config" => {
                let m: Option<BTreeMap<Scalar, Scalar>> =
                    yaml::from_node(&v).map_err(|e| format!("config: {e}"))?;
                doc.config = crate::util::sort::map(
                    m.unwrap_or_default().into_iter().map(|(k, v)| (k.0, v.0)),
                );
            }
            "networks" => doc.networks = items("networks", v)?,
            "storage_pools" => doc.storage_pools = items("storage_pools", v)?,
            "profiles" => doc.profiles = items("profiles", v)?,
            other => match UNSUPPORTED.iter().find(|(k, _)| *k == other) {
                Some(_) if is_empty(&v) => {}
                Some((_, what)) => return Err(format!("not supported yet: {what} ({other:?})")),
                None => {
                    return Err(format!(
                        "unknown preseed key {other:?} (bivy applies config, networks, storage_pools and profiles)"
                    ))
                }
            },
        }
    }
    validate(&doc)?;
    Ok(doc)
}

/// Check a document on its own: names given and listed once per section, networks of a type
/// bivy manages in the default project, storage drivers bivy has, device names.
pub fn validate(doc: &Preseed) -> Result<(), String> {
    if doc.config.keys().any(String::is_empty) {
        return Err("config: empty key".into());
    }
    fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            if n.is_empty() {
                return Err(format!("a {what} without a name"));
            }
            if n.contains('/') {
                return Err(format!("{what} name {n:?}: \"/\" is not allowed"));
            }
            if !seen.insert(n) {
                return Err(format!("{what} {n:?} is listed twice"));
            }
        }
        Ok(())
    }
    unique("network", doc.networks.iter().map(|n| n.name.as_str()))?;
    unique(
        "storage pool",
        doc.storage_pools.iter().map(|p| p.name.as_str()),
    )?;
    unique("profile", doc.profiles.iter().map(|p| p.name.as_str()))?;
    for n in &doc.networks {
        match n.kind.as_str() {
            "" | "bridge" => {}
            "macvlan" | "sriov" | "ovn" | "physical" => {
                return Err(format!(
                    "not supported yet: managed networks of type {:?} (network {:?}; bivy manages bridges)",
                    n.kind, n.name
                ))
            }
            other => return Err(format!("network {:?}: unknown type {other:?}", n.name)),
        }
        if !matches!(n.project.as_str(), "" | "default") {
            return Err(format!(
                "not supported yet: projects (network {:?} is in project {:?})",
                n.name, n.project
            ));
        }
    }
    for p in &doc.storage_pools {
        if OTHER_DRIVERS.contains(&p.driver.as_str()) {
            return Err(format!(
                "not supported yet: storage driver {:?} (storage pool {:?}; bivy has dir and btrfs)",
                p.driver, p.name
            ));
        }
    }
    for p in &doc.profiles {
        if p.devices.keys().any(|d| d.is_empty() || d.contains('/')) {
            return Err(format!(
                "profile {:?}: a device name is empty or has a \"/\"",
                p.name
            ));
        }
    }
    Ok(())
}

/// What the server has, as the plan needs it.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Server config (`core.trust_password` shows as `true` when set).
    pub config: StringMap,
    /// The storage drivers the server has.
    pub drivers: Vec<String>,
    /// Managed networks and the host's interfaces.
    pub networks: Vec<Network>,
    pub pools: Vec<StoragePool>,
    pub profiles: Vec<Profile>,
}

impl State {
    /// Read it from the server.
    pub fn read(c: &Client) -> Result<State, String> {
        let server: Server = c
            .get("/1.0")
            .map_err(|e| format!("Failed to retrieve the server configuration: {e}"))?;
        Ok(State {
            config: server.config,
            drivers: server
                .environment
                .storage_supported_drivers
                .into_iter()
                .map(|d| d.name)
                .collect(),
            networks: c
                .get("/1.0/networks?recursion=1")
                .map_err(|e| format!("Failed to retrieve the networks: {e}"))?,
            pools: c
                .get("/1.0/storage-pools?recursion=1")
                .map_err(|e| format!("Failed to retrieve the storage pools: {e}"))?,
            profiles: c
                .get("/1.0/profiles?recursion=1")
                .map_err(|e| format!("Failed to retrieve the profiles: {e}"))?,
        })
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&StoragePool> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }
}

/// The server's state as a preseed document, as `lxd init --dump` prints it: the server
/// config, the managed networks, the storage pools and the profiles. Applying it changes
/// nothing.
pub fn dump(st: &State) -> Preseed {
    Preseed {
        config: st.config.clone(),
        networks: st
            .networks
            .iter()
            .filter(|n| n.managed)
            .map(|n| NetworkSeed {
                config: n.config.clone(),
                description: n.description.clone(),
                name: n.name.clone(),
                kind: n.kind.clone(),
                project: "default".into(),
            })
            .collect(),
        storage_pools: st
            .pools
            .iter()
            .map(|p| PoolSeed {
                config: p.config.clone(),
                description: p.description.clone(),
                name: p.name.clone(),
                driver: p.driver.clone(),
            })
            .collect(),
        profiles: st
            .profiles
            .iter()
            .map(|p| ProfileSeed {
                config: p.config.clone(),
                description: p.description.clone(),
                devices: p.devices.clone(),
                name: p.name.clone(),
            })
            .collect(),
    }
}

/// One change to the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreatePool(PoolSeed),
    UpdatePool {
        name: String,
        old: StoragePoolPut,
        new: StoragePoolPut,
    },
    /// Only `--auto`'s replacement of the daemon's untouched first-start pool.
    DeletePool(PoolSeed),
    CreateNetwork(NetworkSeed),
    UpdateNetwork {
        name: String,
        old: NetworkPut,
        new: NetworkPut,
    },
    CreateProfile(ProfileSeed),
    UpdateProfile {
        name: String,
        old: ProfilePut,
        new: ProfilePut,
    },
    /// Server config keys to set (an empty value unsets), with their values before.
    Config {
        old: StringMap,
        new: StringMap,
    },
}

/// `base` with `over`'s keys set (LXD's preseed merge: nothing is removed).
fn overridden(base: &StringMap, over: &StringMap) -> StringMap {
    let mut m = base.clone();
    m.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

/// `over`'s description when it gives one, else `base`.
fn described(base: &str, over: &str) -> String {
    if over.is_empty() { base } else { over }.to_string()
}

/// Whether a network address key has an address the server picked (`auto` given again keeps
/// it).
fn keeps_auto(key: &str, want: &str, have: Option<&String>) -> bool {
    matches!(key, "ipv4.address" | "ipv6.address")
        && want == "auto"
        && have.is_some_and(|h| !h.is_empty() && h != "none")
}

fn pool_put(p: &StoragePool) -> StoragePoolPut {
    StoragePoolPut {
        config: p.config.clone(),
        description: p.description.clone(),
    }
}

fn network_put(n: &Network) -> NetworkPut {
    NetworkPut {
        config: n.config.clone(),
        description: n.description.clone(),
    }
}

fn profile_put(p: &Profile) -> ProfilePut {
    ProfilePut {
        config: p.config.clone(),
        description: p.description.clone(),
        devices: p.devices.clone(),
    }
}

/// The changes that make the server hold `doc`, in the order they are applied; an error (and
/// no change) when the document cannot apply to this server.
pub fn plan(doc: &Preseed, st: &State) -> Result<Vec<Step>, String> {
    validate(doc)?;
    let mut steps = Vec::new();
    for p in &doc.storage_pools {
        match st.pool(&p.name) {
            Some(cur) => {
                if !p.driver.is_empty() && p.driver != cur.driver {
                    return Err(format!(
                        "storage pool {:?} exists with driver {:?}; the preseed asks for {:?} (a pool's driver cannot change)",
                        p.name, cur.driver, p.driver
                    ));
                }
                let old = pool_put(cur);
                let new = StoragePoolPut {
                    config: overridden(&cur.config, &p.config),
                    description: described(&cur.description, &p.description),
                };
                if new != old {
                    steps.push(Step::UpdatePool {
                        name: p.name.clone(),
                        old,
                        new,
                    });
                }
            }
            None => {
                if p.driver.is_empty() {
                    return Err(format!(
                        "storage pool {:?}: no driver given (bivy has {})",
                        p.name,
                        st.drivers.join(", ")
                    ));
                }
                if !st.drivers.contains(&p.driver) {
                    return Err(format!(
                        "storage pool {:?}: driver {:?} is not available on this server (it has {})",
                        p.name,
                        p.driver,
                        st.drivers.join(", ")
                    ));
                }
                steps.push(Step::CreatePool(p.clone()));
            }
        }
    }
    for n in &doc.networks {
        match st.network(&n.name) {
            Some(cur) if !cur.managed => {
                return Err(format!(
                    "network {:?} is an interface of the host, not a managed network: choose another name",
                    n.name
                ))
            }
            Some(cur) => {
                let kind = if n.kind.is_empty() { "bridge" } else { &n.kind };
                if kind != cur.kind {
                    return Err(format!(
                        "network {:?} exists with type {:?}; the preseed asks for {kind:?} (a network's type cannot change)",
                        n.name, cur.kind
                    ));
                }
                let old = network_put(cur);
                let mut config = cur.config.clone();
                for (k, v) in &n.config {
                    if !keeps_auto(k, v, cur.config.get(k)) {
                        config.insert(k.clone(), v.clone());
                    }
                }
                let new = NetworkPut {
                    config,
                    description: described(&cur.description, &n.description),
                };
                if new != old {
                    steps.push(Step::UpdateNetwork {
                        name: n.name.clone(),
                        old,
                        new,
                    });
                }
            }
            None => steps.push(Step::CreateNetwork(n.clone())),
        }
    }
    for p in &doc.profiles {
        let cur = st.profile(&p.name);
        let mut devices = cur.map(|c| c.devices.clone()).unwrap_or_default();
        for (name, d) in &p.devices {
            // A device the profile has gets the keys given; a new one must be whole.
            let merged = match devices.get(name) {
                Some(have) => overridden(have, d),
                None => d.clone(),
            };
            if merged.get("type").is_none_or(|t| t.is_empty()) {
                return Err(format!("profile {:?}: device {name:?} has no type", p.name));
            }
            check_reference(doc, st, &p.name, name, &merged)?;
            devices.insert(name.clone(), merged);
        }
        match cur {
            Some(cur) => {
                let old = profile_put(cur);
                let new = ProfilePut {
                    config: overridden(&cur.config, &p.config),
                    description: described(&cur.description, &p.description),
                    devices,
                };
                if new != old {
                    steps.push(Step::UpdateProfile {
                        name: p.name.clone(),
                        old,
                        new,
                    });
                }
            }
            None => steps.push(Step::CreateProfile(p.clone())),
        }
    }
    let mut old = StringMap::new();
    let mut new = StringMap::new();
    for (k, v) in &doc.config {
        let have = st.config.get(k);
        let same = match have {
            None => v.is_empty(),
            // A set password shows as `true`; any other value is a password to set.
            Some(_) if k == TRUST_PASSWORD => v == "true",
            Some(h) => h == v,
        };
        if !same {
            old.insert(k.clone(), have.cloned().unwrap_or_default());
            new.insert(k.clone(), v.clone());
        }
    }
    if !new.is_empty() {
        steps.push(Step::Config { old, new });
    }
    Ok(steps)
}

/// A profile device's `pool` or `network` must exist or be in the document.
fn check_reference(
    doc: &Preseed,
    st: &State,
    profile: &str,
    dev: &str,
    d: &StringMap,
) -> Result<(), String> {
    let kind = d.get("type").map(String::as_str);
    if let Some(pool) = d.get("pool").filter(|_| kind == Some("disk")) {
        if st.pool(pool).is_none() && !doc.storage_pools.iter().any(|p| &p.name == pool) {
            return Err(format!(
                "profile {profile:?}: device {dev:?} names storage pool {pool:?}, which neither exists nor is in the preseed"
            ));
        }
    }
    if let Some(net) = d.get("network").filter(|_| kind == Some("nic")) {
        let managed = st.network(net).is_some_and(|n| n.managed);
        if !managed && !doc.networks.iter().any(|n| &n.name == net) {
            return Err(format!(
                "profile {profile:?}: device {dev:?} names network {net:?}, which is neither a managed network nor in the preseed"
            ));
        }
    }
    Ok(())
}

fn pool_path(name: &str) -> String {
    format!("/1.0/storage-pools/{}", urlencode(name, false))
}

fn network_path(name: &str) -> String {
    format!("/1.0/networks/{}", urlencode(name, false))
}

fn profile_path(name: &str) -> String {
    format!("/1.0/profiles/{}", urlencode(name, false))
}

fn pool_post(p: &PoolSeed) -> serde_json::Value {
    serde_json::json!({
        "config": p.config,
        "description": p.description,
        "name": p.name,
        "driver": p.driver,
    })
}

/// An undo step: its failure is reported, the other undo steps still run.
fn undo(
    revert: &mut Revert,
    c: &Client,
    what: String,
    f: impl FnOnce(&Client) -> crate::client::Result<()> + Send + 'static,
) {
    let c = c.clone();
    revert.add(move || {
        if let Err(e) = f(&c) {
            eprintln!("Error: failed to undo ({what}): {e}");
        }
    });
}

/// The object at `path` must still be what the plan read: (its ETag).
fn unchanged<T, W>(
    c: &Client,
    path: &str,
    what: &str,
    old: &W,
    view: impl Fn(&T) -> W,
) -> Result<String, String>
where
    T: serde::de::DeserializeOwned,
    W: PartialEq,
{
    let (cur, etag): (T, String) = c
        .get_etag(path)
        .map_err(|e| format!("Failed to retrieve {what}: {e}"))?;
    if view(&cur) != *old {
        return Err(format!("{what} changed while bivy admin init ran"));
    }
    Ok(etag)
}

impl Step {
    /// Make the change and add its undo to `revert`.
    fn apply(&self, c: &Client, revert: &mut Revert) -> Result<(), String> {
        match self {
            Step::CreatePool(p) => {
                c.post("/1.0/storage-pools", &pool_post(p))
                    .map_err(|e| format!("Failed to create storage pool {:?}: {e}", p.name))?;
                let path = pool_path(&p.name);
                undo(
                    revert,
                    c,
                    format!("delete storage pool {:?}", p.name),
                    move |c| c.delete(&path).map(|_| ()),
                );
            }
            Step::UpdatePool { name, old, new } => {
                let path = pool_path(name);
                let what = format!("storage pool {name:?}");
                let etag = unchanged(c, &path, &what, old, pool_put)?;
                c.put(&path, new, Some(&etag))
                    .map_err(|e| format!("Failed to update storage pool {name:?}: {e}"))?;
                let old = old.clone();
                undo(
                    revert,
                    c,
                    format!("restore storage pool {name:?}"),
                    move |c| c.put(&path, &old, None).map(|_| ()),
                );
            }
            Step::DeletePool(p) => {
                c.delete(&pool_path(&p.name))
                    .map_err(|e| format!("Failed to delete storage pool {:?}: {e}", p.name))?;
                let body = pool_post(p);
                undo(
                    revert,
                    c,
                    format!("create storage pool {:?} again", p.name),
                    move |c| c.post("/1.0/storage-pools", &body).map(|_| ()),
                );
            }
            Step::CreateNetwork(n) => {
                let body = NetworksPost {
                    config: n.config.clone(),
                    description: n.description.clone(),
                    name: n.name.clone(),
                    kind: n.kind.clone(),
                };
                c.post("/1.0/networks", &body)
                    .map_err(|e| format!("Failed to create network {:?}: {e}", n.name))?;
                let path = network_path(&n.name);
                undo(
                    revert,
                    c,
                    format!("delete network {:?}", n.name),
                    move |c| c.delete(&path).map(|_| ()),
                );
            }
            Step::UpdateNetwork { name, old, new } => {
                let path = network_path(name);
                let what = format!("network {name:?}");
                let etag = unchanged(c, &path, &what, old, network_put)?;
                c.put(&path, new, Some(&etag))
                    .map_err(|e| format!("Failed to update network {name:?}: {e}"))?;
                let old = old.clone();
                undo(revert, c, format!("restore network {name:?}"), move |c| {
                    c.put(&path, &old, None).map(|_| ())
                });
            }
            Step::CreateProfile(p) => {
                let body = ProfilesPost {
                    put: ProfilePut {
                        config: p.config.clone(),
                        description: p.description.clone(),
                        devices: p.devices.clone(),
                    },
                    name: p.name.clone(),
                };
                c.post("/1.0/profiles", &body)
                    .map_err(|e| format!("Failed to create profile {:?}: {e}", p.name))?;
                let path = profile_path(&p.name);
                undo(
                    revert,
                    c,
                    format!("delete profile {:?}", p.name),
                    move |c| c.delete(&path).map(|_| ()),
                );
            }
            Step::UpdateProfile { name, old, new } => {
                let path = profile_path(name);
                let what = format!("profile {name:?}");
                let etag = unchanged(c, &path, &what, old, profile_put)?;
                c.put(&path, new, Some(&etag))
                    .map_err(|e| format!("Failed to update profile {name:?}: {e}"))?;
                let old = old.clone();
                undo(revert, c, format!("restore profile {name:?}"), move |c| {
                    c.put(&path, &old, None).map(|_| ())
                });
            }
            Step::Config { old, new } => {
                let (server, etag): (Server, String) = c
                    .get_etag("/1.0")
                    .map_err(|e| format!("Failed to retrieve the server configuration: {e}"))?;
                for (k, v) in old {
                    if server.config.get(k).cloned().unwrap_or_default() != *v {
                        return Err(format!(
                            "server configuration key {k:?} changed while bivy admin init ran"
                        ));
                    }
                }
                let body = serde_json::json!({ "config": new });
                c.patch("/1.0", &body, Some(&etag))
                    .map_err(|e| format!("Failed to update server configuration: {e}"))?;
                // No undo: this is the last step (see the module doc).
            }
        }
        Ok(())
    }
}

/// Apply the steps in order; when one fails, undo the ones made (last first) and return its
/// error, saying how many were undone.
pub fn apply(c: &Client, steps: &[Step]) -> Result<(), String> {
    debug_assert!(steps
        .iter()
        .rev()
        .skip(1)
        .all(|s| !matches!(s, Step::Config { .. })));
    let mut revert = Revert::new();
    for (done, s) in steps.iter().enumerate() {
        if let Err(e) = s.apply(c, &mut revert) {
            drop(revert);
            return Err(match done {
                0 => e,
                1 => format!("{e} (the change made before it was undone)"),
                n => format!("{e} (the {n} changes made before it were undone)"),
            });
        }
    }
    revert.commit();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A fresh bivy daemon: the first-start `default` dir pool, the default profile with its
    /// root disk, the loopback interface.
    fn fresh() -> State {
        let mut devices = Devices::new();
        devices.insert(
            "root".into(),
            map(&[("path", "/"), ("pool", "default"), ("type", "disk")]),
        );
        State {
            config: StringMap::new(),
            drivers: vec!["btrfs".into(), "dir".into()],
            networks: vec![Network {
                name: "lo".into(),
                kind: "loopback".into(),
                ..Default::default()
            }],
            pools: vec![StoragePool {
                config: map(&[("source", "/var/lib/bivy/storage-pools/default")]),
                name: "default".into(),
                driver: "dir".into(),
                used_by: vec!["/1.0/profiles/default".into()],
                status: "Created".into(),
                ..Default::default()
            }],
            profiles: vec![Profile {
                description: "Default bivy profile".into(),
                devices,
                name: "default".into(),
                ..Default::default()
            }],
        }
    }

    /// What the server would hold after the steps (as the daemon does them).
    fn simulate(st: &mut State, steps: &[Step]) {
        for s in steps {
            match s.clone() {
                Step::CreatePool(p) => {
                    let mut config = p.config;
                    config
                        .entry("source".into())
                        .or_insert_with(|| format!("/var/lib/bivy/storage-pools/{}", p.name));
                    st.pools.push(StoragePool {
                        config,
                        description: p.description,
                        name: p.name,
                        driver: p.driver,
                        ..Default::default()
                    });
                }
                Step::UpdatePool { name, new, .. } => {
                    let p = st.pools.iter_mut().find(|p| p.name == name).unwrap();
                    p.config = new.config;
                    p.description = new.description;
                }
                Step::DeletePool(p) => st.pools.retain(|x| x.name != p.name),
                Step::CreateNetwork(n) => {
                    let mut config = n.config;
                    if config.get("ipv4.address").is_none_or(|a| a == "auto") {
                        config.insert("ipv4.address".into(), "10.1.2.1/24".into());
                        config.insert("ipv4.nat".into(), "true".into());
                    }
                    st.networks.push(Network {
                        config,
                        description: n.description,
                        name: n.name,
                        kind: "bridge".into(),
                        managed: true,
                        ..Default::default()
                    });
                }
                Step::UpdateNetwork { name, new, .. } => {
                    let n = st.networks.iter_mut().find(|n| n.name == name).unwrap();
                    n.config = new.config;
                    n.description = new.description;
                }
                Step::CreateProfile(p) => st.profiles.push(Profile {
                    config: p.config,
                    description: p.description,
                    devices: p.devices,
                    name: p.name,
                    used_by: Vec::new(),
                }),
                Step::UpdateProfile { name, new, .. } => {
                    let p = st.profiles.iter_mut().find(|p| p.name == name).unwrap();
                    p.config = new.config;
                    p.description = new.description;
                    p.devices = new.devices;
                }
                Step::Config { new, .. } => {
                    for (k, v) in new {
                        if v.is_empty() {
                            st.config.remove(&k);
                        } else if k == TRUST_PASSWORD {
                            st.config.insert(k, "true".into());
                        } else {
                            st.config.insert(k, v);
                        }
                    }
                }
            }
        }
    }

    const DOC: &str = "\
config:
  core.https_address: 127.0.0.1:8443
  images.auto_update_interval: 0
networks:
- name: br1
  type: bridge
  config:
    ipv4.address: auto
    ipv4.nat: true
    ipv6.address: none
storage_pools:
- name: fast
  driver: dir
  description: the fast one
profiles:
- name: default
  devices:
    eth0:
      name: eth0
      network: br1
      type: nic
- name: web
  config:
    limits.processes: 100
  devices:
    root: {path: /, pool: fast, type: disk}
";

    #[test]
    fn parses_lxd_preseed_with_scalars_as_strings() {
        let doc = parse(DOC).unwrap();
        assert_eq!(doc.config.get("images.auto_update_interval").unwrap(), "0");
        assert_eq!(doc.networks[0].config.get("ipv4.nat").unwrap(), "true");
        assert_eq!(
            doc.profiles[1].config.get("limits.processes").unwrap(),
            "100"
        );
        assert_eq!(doc.profiles[1].devices["root"]["pool"], "fast");
        assert_eq!(doc.storage_pools[0].description, "the fast one");
        // The print of LXD's interactive mode: empty unsupported sections are fine.
        let doc = parse("config: {}\nnetworks: []\nstorage_pools: []\nprofiles: []\nprojects: []\ncluster: null\n").unwrap();
        assert_eq!(doc, Preseed::default());
        assert_eq!(parse("").unwrap(), Preseed::default());
        // `null` unsets a server key.
        let doc = parse("config:\n  core.https_address: null\n").unwrap();
        assert_eq!(doc.config.get("core.https_address").unwrap(), "");
    }

    #[test]
    fn refuses_what_it_would_not_apply() {
        let err = |t: &str| parse(t).unwrap_err();
        assert_eq!(
            err("cluster:\n  enabled: true\n"),
            "not supported yet: clustering (\"cluster\")"
        );
        assert!(err("projects:\n- name: p1\n").starts_with("not supported yet: projects"));
        assert!(
            err("storage_volumes:\n- name: v\n").starts_with("not supported yet: storage volumes")
        );
        assert!(err("bogus: 1\n").starts_with("unknown preseed key \"bogus\""));
        let e = err("networks:\n- name: br0\n  confg: {}\n");
        assert!(
            e.starts_with("networks item 1 (\"br0\"): unknown field `confg`"),
            "{e}"
        );
        let e = err("profiles:\n- description: x\n");
        assert!(e.contains("missing field `name`"), "{e}");
        assert_eq!(
            err("networks:\n- name: a\n- name: a\n"),
            "network \"a\" is listed twice"
        );
        assert!(err("networks:\n- name: m\n  type: macvlan\n")
            .starts_with("not supported yet: managed networks of type \"macvlan\""));
        assert!(
            err("networks:\n- name: m\n  project: p\n").starts_with("not supported yet: projects")
        );
        assert!(err("storage_pools:\n- name: z\n  driver: zfs\n")
            .starts_with("not supported yet: storage driver \"zfs\""));
        assert!(err("config:\n  a: [1]\n").starts_with("config:"));
        assert!(err("- a\n").starts_with("the preseed must be a YAML mapping"));
    }

    #[test]
    fn plan_creates_then_is_idempotent() {
        let doc = parse(DOC).unwrap();
        let mut st = fresh();
        let steps = plan(&doc, &st).unwrap();
        let kinds: Vec<String> = steps
            .iter()
            .map(|s| {
                format!("{s:?}")
                    .split([' ', '('])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "CreatePool",
                "CreateNetwork",
                "UpdateProfile",
                "CreateProfile",
                "Config"
            ]
        );
        let Step::UpdateProfile { new, .. } = &steps[2] else {
            panic!()
        };
        // The root disk is kept, eth0 added.
        assert_eq!(new.devices.len(), 2);
        assert_eq!(new.description, "Default bivy profile");
        simulate(&mut st, &steps);
        assert_eq!(plan(&doc, &st).unwrap(), Vec::new());
        // The dump of the result, applied, changes nothing either.
        let dumped = dump(&st);
        assert!(dumped.networks.iter().all(|n| n.name != "lo"));
        assert_eq!(plan(&dumped, &st).unwrap(), Vec::new());
        // And it reads back as it was written.
        let text = crate::util::yaml::to_string(&dumped).unwrap();
        assert_eq!(parse(&text).unwrap(), dumped);
    }

    #[test]
    fn updates_override_keys_and_keep_the_rest() {
        let mut st = fresh();
        st.networks.push(Network {
            config: map(&[
                ("ipv4.address", "10.9.9.1/24"),
                ("ipv4.nat", "true"),
                ("ipv6.address", "none"),
            ]),
            description: "old".into(),
            name: "br0".into(),
            kind: "bridge".into(),
            managed: true,
            ..Default::default()
        });
        let doc = parse(
            "networks:\n- name: br0\n  config:\n    ipv4.address: auto\n    dns.domain: lab\n",
        )
        .unwrap();
        let steps = plan(&doc, &st).unwrap();
        let [Step::UpdateNetwork { old, new, .. }] = steps.as_slice() else {
            panic!("{steps:?}")
        };
        // `auto` keeps the address picked before; the new key is added; nothing removed.
        assert_eq!(new.config.get("ipv4.address").unwrap(), "10.9.9.1/24");
        assert_eq!(new.config.get("dns.domain").unwrap(), "lab");
        assert_eq!(new.config.len(), 4);
        assert_eq!(new.description, "old");
        assert_eq!(old.config.len(), 3);
        // An explicit address replaces it.
        let doc =
            parse("networks:\n- name: br0\n  config:\n    ipv4.address: 10.8.0.1/24\n").unwrap();
        let steps = plan(&doc, &st).unwrap();
        let [Step::UpdateNetwork { new, .. }] = steps.as_slice() else {
            panic!()
        };
        assert_eq!(new.config.get("ipv4.address").unwrap(), "10.8.0.1/24");
        // Device keys are overridden one by one.
        let doc = parse(
            "profiles:\n- name: default\n  devices:\n    root: {pool: default, size: 1GiB}\n",
        )
        .unwrap();
        let steps = plan(&doc, &st).unwrap();
        let [Step::UpdateProfile { new, .. }] = steps.as_slice() else {
            panic!()
        };
        assert_eq!(
            new.devices["root"],
            map(&[
                ("path", "/"),
                ("pool", "default"),
                ("size", "1GiB"),
                ("type", "disk")
            ])
        );
    }

    #[test]
    fn refuses_what_the_server_cannot_become() {
        let mut st = fresh();
        st.networks.push(Network {
            name: "eth0".into(),
            kind: "physical".into(),
            ..Default::default()
        });
        let err = |t: &str, st: &State| plan(&parse(t).unwrap(), st).unwrap_err();
        assert!(err("networks:\n- name: eth0\n", &st).contains("is an interface of the host"));
        assert!(
            err("storage_pools:\n- name: default\n  driver: btrfs\n", &st)
                .contains("a pool's driver cannot change")
        );
        assert!(err("storage_pools:\n- name: p\n", &st).contains("no driver given"));
        st.drivers.retain(|d| d != "btrfs");
        assert!(err("storage_pools:\n- name: p\n  driver: btrfs\n", &st)
            .contains("is not available on this server"));
        assert!(err(
            "profiles:\n- name: x\n  devices:\n    root: {type: disk, path: /, pool: nope}\n",
            &st
        )
        .contains("names storage pool \"nope\""));
        // Merged into the profile's own root disk, the pool key alone is checked too.
        assert!(err(
            "profiles:\n- name: default\n  devices:\n    root: {pool: nope}\n",
            &st
        )
        .contains("names storage pool \"nope\""));
        assert_eq!(
            err(
                "profiles:\n- name: p\n  devices:\n    eth0: {name: eth0}\n",
                &st
            ),
            "profile \"p\": device \"eth0\" has no type"
        );
        // A host interface is no managed network for a nic's `network=`.
        assert!(err(
            "profiles:\n- name: x\n  devices:\n    eth0: {type: nic, network: eth0}\n",
            &st
        )
        .contains("names network \"eth0\""));
    }

    #[test]
    fn server_config_and_the_trust_password() {
        let mut st = fresh();
        st.config = map(&[("core.https_address", ":8443"), (TRUST_PASSWORD, "true")]);
        // The dump's `true` keeps the password; the same address is no change; unsetting an
        // unset key is none either.
        let doc = parse("config:\n  core.trust_password: true\n  core.https_address: ':8443'\n  core.proxy_http: ''\n").unwrap();
        assert_eq!(plan(&doc, &st).unwrap(), Vec::new());
        let doc =
            parse("config:\n  core.trust_password: s3cret\n  core.https_address: null\n").unwrap();
        assert_eq!(
            plan(&doc, &st).unwrap(),
            vec![Step::Config {
                old: map(&[("core.https_address", ":8443"), (TRUST_PASSWORD, "true")]),
                new: map(&[("core.https_address", ""), (TRUST_PASSWORD, "s3cret")]),
            }]
        );
    }
}
