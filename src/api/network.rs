//! Networks on the wire (`shared/api/network.go`, `network_lease.go`, `network_state.go` in LXD
//! 5.0.2): `/1.0/networks`, a network's `/state` and `/leases`, fields in LXD's order.

use serde::{Deserialize, Serialize};

use super::StringMap;

/// A network as `GET /1.0/networks/NAME` returns it. Unmanaged host interfaces have
/// `managed: false` and an empty config (LXD sends `null` for their `used_by` and `locations`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Network {
    #[serde(default, deserialize_with = "super::nullable")]
    pub config: StringMap,
    #[serde(default)]
    pub description: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "super::nullable")]
    pub used_by: Vec<String>,
    #[serde(default)]
    pub managed: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default, deserialize_with = "super::nullable")]
    pub locations: Vec<String>,
}

/// `POST /1.0/networks`: a new managed network. `type` empty means `bridge`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NetworksPost {
    #[serde(default)]
    pub config: StringMap,
    #[serde(default)]
    pub description: String,
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// `PUT`/`PATCH /1.0/networks/NAME`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct NetworkPut {
    #[serde(default)]
    pub config: StringMap,
    #[serde(default)]
    pub description: String,
}

/// `POST /1.0/networks/NAME`: a rename.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NetworkPost {
    pub name: String,
}

/// One entry of `GET /1.0/networks/NAME/leases`: `type` is `static` or `dynamic`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct NetworkLease {
    pub hostname: String,
    pub hwaddr: String,
    pub address: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub location: String,
}

/// `GET /1.0/networks/NAME/state`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NetworkState {
    #[serde(default, deserialize_with = "super::nullable")]
    pub addresses: Vec<NetworkStateAddress>,
    pub counters: NetworkStateCounters,
    pub hwaddr: String,
    pub mtu: i64,
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub bond: Option<serde_json::Value>,
    #[serde(default)]
    pub bridge: Option<NetworkStateBridge>,
    #[serde(default)]
    pub vlan: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct NetworkStateAddress {
    pub family: String,
    pub address: String,
    pub netmask: String,
    pub scope: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NetworkStateCounters {
    pub bytes_received: i64,
    pub bytes_sent: i64,
    pub packets_received: i64,
    pub packets_sent: i64,
}

/// The bridge section of a bridge network's state.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NetworkStateBridge {
    pub id: String,
    pub stp: bool,
    pub forward_delay: u64,
    pub vlan_default: u64,
    pub vlan_filtering: bool,
    pub upper_devices: Vec<String>,
}
