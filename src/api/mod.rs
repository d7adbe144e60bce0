//! REST wire types of the LXD 1.0 API, as LXD 5.0.2 puts them on the wire.
//!
//! This module owns field names, their order and their JSON shapes; it does no I/O and imports nothing
//! from the rest of the crate. Every struct mirrors one in LXD's `shared/api/*.go`; the field order
//! follows the captures in `shared/reference/lxd-wire` so that our JSON reads like LXD's.
//! Split types follow LXD: `Foo` (GET), `FooPut` (PUT/PATCH body), `FooPost` (POST body).

pub mod extensions;
pub mod network;
pub mod resources;

pub use network::{
    Network, NetworkLease, NetworkPost, NetworkPut, NetworkState, NetworkStateAddress,
    NetworkStateBridge, NetworkStateCounters, NetworksPost,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A string map as LXD sends it (`config`, `properties`, ...). Sorted, so responses are stable.
pub type StringMap = BTreeMap<String, String>;
/// Devices: name -> device config.
pub type Devices = BTreeMap<String, StringMap>;

/// The epoch in LXD's RFC 3339 form: LXD sends this for "never".
pub const ZERO_TIME: &str = "1970-01-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// Envelope (shared/api/response.go). All seven keys are always present.

/// Numeric status codes (shared/api/status_code.go).
pub mod status {
    pub const OPERATION_CREATED: u16 = 100;
    pub const STARTED: u16 = 101;
    pub const STOPPED: u16 = 102;
    pub const RUNNING: u16 = 103;
    pub const CANCELLING: u16 = 104;
    pub const PENDING: u16 = 105;
    pub const STARTING: u16 = 106;
    pub const STOPPING: u16 = 107;
    pub const ABORTING: u16 = 108;
    pub const FREEZING: u16 = 109;
    pub const FROZEN: u16 = 110;
    pub const THAWED: u16 = 111;
    pub const ERROR: u16 = 112;
    pub const READY: u16 = 113;
    pub const SUCCESS: u16 = 200;
    pub const FAILURE: u16 = 400;
    pub const CANCELLED: u16 = 401;

    /// The name LXD gives a status code (`StatusCode.String()`).
    pub fn name(code: u16) -> &'static str {
        match code {
            OPERATION_CREATED => "Operation created",
            STARTED => "Started",
            STOPPED => "Stopped",
            RUNNING => "Running",
            CANCELLING => "Cancelling",
            PENDING => "Pending",
            STARTING => "Starting",
            STOPPING => "Stopping",
            ABORTING => "Aborting",
            FREEZING => "Freezing",
            FROZEN => "Frozen",
            THAWED => "Thawed",
            ERROR => "Error",
            READY => "Ready",
            SUCCESS => "Success",
            FAILURE => "Failure",
            CANCELLED => "Cancelled",
            _ => "",
        }
    }
}

/// The response envelope (`api.ResponseRaw`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Response {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub status_code: u16,
    pub operation: String,
    pub error_code: u16,
    pub error: String,
    pub metadata: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------
// Server (shared/api/server.go)

/// `GET /1.0` for a trusted caller.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Server {
    pub config: StringMap,
    pub api_extensions: Vec<String>,
    pub api_status: String,
    pub api_version: String,
    pub auth: String,
    pub public: bool,
    pub auth_methods: Vec<String>,
    #[serde(default)]
    pub environment: ServerEnvironment,
}

/// `environment` of `GET /1.0`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ServerEnvironment {
    pub addresses: Vec<String>,
    pub architectures: Vec<String>,
    pub certificate: String,
    pub certificate_fingerprint: String,
    pub driver: String,
    pub driver_version: String,
    pub firewall: String,
    pub kernel: String,
    pub kernel_architecture: String,
    pub kernel_features: StringMap,
    pub kernel_version: String,
    pub lxc_features: StringMap,
    pub os_name: String,
    pub os_version: String,
    pub project: String,
    pub server: String,
    pub server_clustered: bool,
    pub server_event_mode: String,
    pub server_name: String,
    pub server_pid: i64,
    pub server_version: String,
    pub storage: String,
    pub storage_version: String,
    pub storage_supported_drivers: Vec<StorageDriverInfo>,
}

/// One supported storage driver (Go field names, no json tags upstream).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StorageDriverInfo {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Remote")]
    pub remote: bool,
}

/// `PUT`/`PATCH /1.0`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ServerPut {
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// Instances (shared/api/instance.go, instance_state.go, instance_exec.go)

/// The writable part of an instance.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct InstancePut {
    #[serde(default, deserialize_with = "nullable")]
    pub architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub devices: Devices,
    #[serde(default, deserialize_with = "nullable")]
    pub ephemeral: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub profiles: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restore: String,
    #[serde(default, deserialize_with = "nullable")]
    pub stateful: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
}

/// An instance as `GET /1.0/instances/NAME` returns it.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Instance {
    pub architecture: String,
    pub config: StringMap,
    pub devices: Devices,
    pub ephemeral: bool,
    pub profiles: Vec<String>,
    pub stateful: bool,
    pub description: String,
    pub created_at: String,
    pub expanded_config: StringMap,
    pub expanded_devices: Devices,
    pub name: String,
    pub status: String,
    pub status_code: u16,
    pub last_used_at: String,
    pub location: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub project: String,
}

/// `InstanceFull` (recursion=2): the instance plus its state, snapshots and backups.
/// Decoded by hand (below), not through `#[serde(flatten)]`.
#[derive(Serialize, Debug, Clone, Default)]
pub struct InstanceFull {
    #[serde(flatten)]
    pub instance: Instance,
    pub backups: Option<Vec<serde_json::Value>>,
    pub state: Option<InstanceState>,
    pub snapshots: Option<Vec<InstanceSnapshot>>,
}

/// Each key straight into its field: serde's `flatten` would first copy every key and value of
/// the document into a tree of its own and decode the instance from that, which doubled the
/// CLI's work on a listing. As the derived decoder of [`Instance`]: every field of the instance
/// is required, unknown keys are skipped, a missing `backups`, `state` or `snapshots` is `None`.
impl<'de> Deserialize<'de> for InstanceFull {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FullVisitor { lean: false })
    }
}

/// An [`InstanceFull`] for a listing's table: its `config`, `devices`, `expanded_config` and
/// `backups` are read past and left empty (no column shows them; they are most of each entry,
/// and a thousand entries are decoded by the CLI's `list`).
pub struct InstanceRow(pub InstanceFull);

impl<'de> Deserialize<'de> for InstanceRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FullVisitor { lean: true })
            .map(InstanceRow)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum FullKey {
    Architecture,
    Config,
    Devices,
    Ephemeral,
    Profiles,
    Stateful,
    Description,
    CreatedAt,
    ExpandedConfig,
    ExpandedDevices,
    Name,
    Status,
    StatusCode,
    LastUsedAt,
    Location,
    #[serde(rename = "type")]
    Kind,
    Project,
    Backups,
    State,
    Snapshots,
    #[serde(other)]
    Other,
}

/// The instance's fields, each as it is seen by [`FullVisitor`].
const INSTANCE_FIELDS: [&str; 17] = [
    "architecture",
    "config",
    "devices",
    "ephemeral",
    "profiles",
    "stateful",
    "description",
    "created_at",
    "expanded_config",
    "expanded_devices",
    "name",
    "status",
    "status_code",
    "last_used_at",
    "location",
    "type",
    "project",
];

/// Decodes an [`InstanceFull`]; `lean` reads past what [`InstanceRow`] leaves out.
struct FullVisitor {
    lean: bool,
}

impl<'de> serde::de::Visitor<'de> for FullVisitor {
    type Value = InstanceFull;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an instance")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        use FullKey as K;
        /// `to` from the next value (read past when `skip`); `slot` the instance's field it
        /// is, if one.
        fn set<'de, A: serde::de::MapAccess<'de>, T: Deserialize<'de>>(
            m: &mut A,
            to: &mut T,
            slot: Option<usize>,
            skip: bool,
        ) -> Result<Option<usize>, A::Error> {
            if skip {
                m.next_value::<serde::de::IgnoredAny>()?;
            } else {
                *to = m.next_value()?;
            }
            Ok(slot)
        }
        let lean = self.lean;
        let mut out = InstanceFull::default();
        let i = &mut out.instance;
        let mut seen = [false; INSTANCE_FIELDS.len()];
        while let Some(k) = m.next_key::<FullKey>()? {
            let slot = match k {
                K::Architecture => set(&mut m, &mut i.architecture, Some(0), false),
                K::Config => set(&mut m, &mut i.config, Some(1), lean),
                K::Devices => set(&mut m, &mut i.devices, Some(2), lean),
                K::Ephemeral => set(&mut m, &mut i.ephemeral, Some(3), false),
                K::Profiles => set(&mut m, &mut i.profiles, Some(4), false),
                K::Stateful => set(&mut m, &mut i.stateful, Some(5), false),
                K::Description => set(&mut m, &mut i.description, Some(6), false),
                K::CreatedAt => set(&mut m, &mut i.created_at, Some(7), false),
                K::ExpandedConfig => set(&mut m, &mut i.expanded_config, Some(8), lean),
                K::ExpandedDevices => set(&mut m, &mut i.expanded_devices, Some(9), false),
                K::Name => set(&mut m, &mut i.name, Some(10), false),
                K::Status => set(&mut m, &mut i.status, Some(11), false),
                K::StatusCode => set(&mut m, &mut i.status_code, Some(12), false),
                K::LastUsedAt => set(&mut m, &mut i.last_used_at, Some(13), false),
                K::Location => set(&mut m, &mut i.location, Some(14), false),
                K::Kind => set(&mut m, &mut i.kind, Some(15), false),
                K::Project => set(&mut m, &mut i.project, Some(16), false),
                K::Backups => set(&mut m, &mut out.backups, None, lean),
                K::State => set(&mut m, &mut out.state, None, false),
                K::Snapshots => set(&mut m, &mut out.snapshots, None, false),
                K::Other => m.next_value::<serde::de::IgnoredAny>().map(|_| None),
            }?;
            if let Some(s) = slot {
                seen[s] = true;
            }
        }
        match seen.iter().position(|s| !s) {
            Some(missing) => Err(serde::de::Error::missing_field(INSTANCE_FIELDS[missing])),
            None => Ok(out),
        }
    }
}

/// `POST /1.0/instances`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstancesPost {
    #[serde(flatten)]
    pub put: InstancesPostPut,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub source: InstanceSource,
    #[serde(default, deserialize_with = "nullable")]
    pub instance_type: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Start the new instance in the create's operation (`instance_create_start`).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub start: bool,
}

/// The `InstancePut` part of `InstancesPost`; `profiles` may be `null` (then the server applies `default`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstancesPostPut {
    #[serde(default, deserialize_with = "arch_any")]
    pub architecture: String,
    #[serde(default)]
    pub config: Option<StringMap>,
    #[serde(default)]
    pub devices: Option<Devices>,
    #[serde(default, deserialize_with = "nullable")]
    pub ephemeral: bool,
    #[serde(default)]
    pub profiles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub stateful: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
}

/// Go clients send `null` for empty maps and lists: treat it as empty.
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// pylxd sends `"architecture": "2"`, older clients a number: accept any scalar.
fn arch_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// `source` of `InstancesPost`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceSource {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub certificate: String,
    #[serde(default, deserialize_with = "nullable")]
    pub alias: String,
    #[serde(default, deserialize_with = "nullable")]
    pub fingerprint: String,
    #[serde(default, deserialize_with = "nullable")]
    pub properties: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub server: String,
    #[serde(default, deserialize_with = "nullable")]
    pub secret: String,
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
    #[serde(default, rename = "base-image")]
    pub base_image: String,
    #[serde(default, deserialize_with = "nullable")]
    pub mode: String,
    #[serde(default, deserialize_with = "nullable")]
    pub operation: String,
    #[serde(default, deserialize_with = "nullable")]
    pub source: String,
    #[serde(default, deserialize_with = "nullable")]
    pub live: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub instance_only: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub container_only: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub refresh: bool,
    /// Migration with `refresh`: source snapshots older than the target's newest are not sent
    /// and the target's own are kept (Incus's `--refresh-exclude-older`). Example: `false`.
    #[serde(default, deserialize_with = "nullable")]
    pub refresh_exclude_older: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub project: String,
    #[serde(default, deserialize_with = "nullable")]
    pub allow_inconsistent: bool,
    /// Migration (pull): the websocket secrets of the source's operation, by stream name.
    /// Example: `{"control": "9f…", "fs": "3c…"}`.
    #[serde(default, deserialize_with = "nullable")]
    pub secrets: BTreeMap<String, String>,
}

/// `POST /1.0/instances/NAME` (rename or migrate), and `POST …/snapshots/SNAP` with `migration`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstancePost {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub migration: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub live: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub instance_only: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub container_only: bool,
    /// Migration: send a running instance's files without freezing it. Example: `false`.
    #[serde(default, deserialize_with = "nullable")]
    pub allow_inconsistent: bool,
    /// With `migration`: move the instance to this storage pool on this server
    /// (`instance_pool_move`). Example: `"fast"`.
    #[serde(default, deserialize_with = "nullable")]
    pub pool: String,
    /// With `migration`: move the instance to this project (not supported: bivy has one
    /// project). Example: `""`.
    #[serde(default, deserialize_with = "nullable")]
    pub project: String,
    /// Migration in push mode: the target's operation to dial (`null` in pull mode).
    /// Example: `{"certificate": "-----BEGIN CERTIFICATE-----…", "operation":
    /// "https://10.0.0.2:8443/1.0/operations/ID", "secrets": {"control": "…", "fs": "…"}}`.
    #[serde(default)]
    pub target: Option<serde_json::Value>,
}

/// `PUT /1.0/instances/NAME/state`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceStatePut {
    pub action: String,
    #[serde(default, deserialize_with = "nullable")]
    pub timeout: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub force: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub stateful: bool,
}

/// `GET /1.0/instances/NAME/state`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceState {
    pub status: String,
    pub status_code: u16,
    /// `null` when selective recursion leaves it out (and from servers that send `null`).
    #[serde(default)]
    pub disk: Option<BTreeMap<String, InstanceStateDisk>>,
    pub memory: InstanceStateMemory,
    pub network: Option<BTreeMap<String, InstanceStateNetwork>>,
    pub pid: i64,
    pub processes: i64,
    pub cpu: InstanceStateCpu,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceStateDisk {
    pub usage: i64,
}

/// Memory figures of a running instance, bytes. A figure the host does not count is left out
/// (never sent as 0). Example: `{"usage": 1753088, "usage_peak": 4063232}`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceStateMemory {
    /// Memory in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<i64>,
    /// Highest memory use since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_peak: Option<i64>,
    /// Swap in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_usage: Option<i64>,
    /// Highest swap use since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_usage_peak: Option<i64>,
}

/// CPU figures of a running instance. Example: `{"usage": 112000000}`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceStateCpu {
    /// CPU time used, nanoseconds; left out when the host does not count it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceStateNetwork {
    pub addresses: Vec<InstanceStateNetworkAddress>,
    pub counters: InstanceStateNetworkCounters,
    pub hwaddr: String,
    pub host_name: String,
    pub mtu: i64,
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceStateNetworkAddress {
    pub family: String,
    pub address: String,
    pub netmask: String,
    pub scope: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceStateNetworkCounters {
    pub bytes_received: i64,
    pub bytes_sent: i64,
    pub packets_received: i64,
    pub packets_sent: i64,
    pub errors_received: i64,
    pub errors_sent: i64,
    pub packets_dropped_outbound: i64,
    pub packets_dropped_inbound: i64,
}

/// A snapshot (`shared/api/instance_snapshot.go`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceSnapshot {
    pub architecture: String,
    pub config: StringMap,
    pub devices: Devices,
    pub ephemeral: bool,
    pub profiles: Vec<String>,
    pub expires_at: String,
    pub created_at: String,
    pub expanded_config: StringMap,
    pub expanded_devices: Devices,
    pub last_used_at: String,
    pub name: String,
    pub size: i64,
    pub stateful: bool,
}

/// One instance backup (`shared/api/instance_backup.go`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct InstanceBackup {
    pub name: String,
    pub created_at: String,
    pub expires_at: String,
    pub instance_only: bool,
    pub container_only: bool,
    pub optimized_storage: bool,
}

/// `POST /1.0/instances/NAME/backups`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct InstanceBackupsPost {
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub expires_at: String,
    pub instance_only: bool,
    pub container_only: bool,
    pub optimized_storage: bool,
    pub compression_algorithm: String,
}

/// `POST /1.0/storage-pools/POOL/volumes/custom/VOL/backups`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct StorageVolumeBackupsPost {
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub expires_at: String,
    pub volume_only: bool,
    pub optimized_storage: bool,
    pub compression_algorithm: String,
}

/// `POST /1.0/instances/NAME/backups/BACKUP` (rename).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct InstanceBackupPost {
    pub name: String,
}

/// `POST /1.0/instances/NAME/exec`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceExecPost {
    #[serde(default, deserialize_with = "nullable")]
    pub command: Vec<String>,
    #[serde(default, rename = "wait-for-websocket")]
    pub wait_for_websocket: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub interactive: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub environment: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub width: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub height: i64,
    #[serde(default, rename = "record-output")]
    pub record_output: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub user: u32,
    #[serde(default, deserialize_with = "nullable")]
    pub group: u32,
    #[serde(default, deserialize_with = "nullable")]
    pub cwd: String,
}

/// A message on the exec control websocket.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct InstanceExecControl {
    #[serde(default, deserialize_with = "nullable")]
    pub command: String,
    #[serde(default, deserialize_with = "nullable")]
    pub args: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub signal: i32,
}

// ---------------------------------------------------------------------------------------------
// Profiles (shared/api/profile.go)

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ProfilePut {
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub devices: Devices,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Profile {
    pub config: StringMap,
    pub description: String,
    pub devices: Devices,
    pub name: String,
    pub used_by: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ProfilesPost {
    #[serde(flatten)]
    pub put: ProfilePut,
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ProfilePost {
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Images (shared/api/image.go)

/// An image alias as it appears inside an `Image`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ImageAlias {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
}

/// Where a cached image came from (`update_source`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ImageSource {
    #[serde(default, deserialize_with = "nullable")]
    pub alias: String,
    #[serde(default, deserialize_with = "nullable")]
    pub certificate: String,
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
    #[serde(default, deserialize_with = "nullable")]
    pub server: String,
    #[serde(default, deserialize_with = "nullable")]
    pub image_type: String,
}

/// The writable part of an image.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ImagePut {
    #[serde(default, deserialize_with = "nullable")]
    pub auto_update: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub properties: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub public: bool,
    #[serde(default = "zero_time")]
    pub expires_at: String,
    #[serde(default, deserialize_with = "nullable")]
    pub profiles: Vec<String>,
}

fn zero_time() -> String {
    ZERO_TIME.to_string()
}

/// An image as `GET /1.0/images/FP` returns it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Image {
    #[serde(flatten)]
    pub put: ImagePut,
    pub aliases: Vec<ImageAlias>,
    pub architecture: String,
    pub cached: bool,
    pub filename: String,
    pub fingerprint: String,
    pub size: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub update_source: Option<ImageSource>,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
    pub last_used_at: String,
    pub uploaded_at: String,
}

/// `POST /1.0/images` with a JSON body.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ImagesPost {
    #[serde(flatten)]
    pub put: ImagePut,
    #[serde(default, deserialize_with = "nullable")]
    pub filename: String,
    #[serde(default)]
    pub source: Option<ImagesPostSource>,
    #[serde(default, deserialize_with = "nullable")]
    pub compression_algorithm: String,
    #[serde(default, deserialize_with = "nullable")]
    pub aliases: Vec<ImageAlias>,
}

/// `source` of `ImagesPost`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ImagesPostSource {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub fingerprint: String,
    #[serde(default, deserialize_with = "nullable")]
    pub alias: String,
    #[serde(default, deserialize_with = "nullable")]
    pub server: String,
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
    #[serde(default, deserialize_with = "nullable")]
    pub certificate: String,
    #[serde(default, deserialize_with = "nullable")]
    pub secret: String,
    #[serde(default, deserialize_with = "nullable")]
    pub mode: String,
    #[serde(default, deserialize_with = "nullable")]
    pub url: String,
    #[serde(default, deserialize_with = "nullable")]
    pub project: String,
}

/// An alias as `/1.0/images/aliases/NAME` returns it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ImageAliasesEntry {
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub target: String,
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// `PUT`/`PATCH /1.0/images/aliases/NAME`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ImageAliasesEntryPut {
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub target: String,
}

/// `POST /1.0/images/aliases/NAME` (rename).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ImageAliasesEntryPost {
    pub name: String,
}

/// metadata.yaml of an image (`api.ImageMetadata`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ImageMetadata {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub creation_date: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub expiry_date: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub properties: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub templates: BTreeMap<String, ImageMetadataTemplate>,
}

/// One entry of `templates` in metadata.yaml.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ImageMetadataTemplate {
    #[serde(default, deserialize_with = "nullable")]
    pub when: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub create_only: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub template: String,
    #[serde(default, deserialize_with = "nullable")]
    pub properties: StringMap,
}

// ---------------------------------------------------------------------------------------------
// Operations and events (shared/api/operation.go, event.go)

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Operation {
    pub id: String,
    pub class: String,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    pub status: String,
    pub status_code: u16,
    pub resources: Option<BTreeMap<String, Vec<String>>>,
    pub metadata: Option<serde_json::Value>,
    pub may_cancel: bool,
    pub err: String,
    pub location: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub metadata: serde_json::Value,
    pub location: String,
    pub project: String,
}

// ---------------------------------------------------------------------------------------------
// Storage pools and networks (read-only for now)

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StoragePool {
    pub config: StringMap,
    pub description: String,
    pub name: String,
    pub driver: String,
    pub used_by: Vec<String>,
    pub status: String,
    pub locations: Vec<String>,
}

/// `PUT`/`PATCH /1.0/storage-pools/NAME`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct StoragePoolPut {
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
}

/// `POST /internal/recover/validate` and `/internal/recover/import` (LXD's
/// `internalRecoverValidatePost`): the pools to scan besides those the server has.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RecoverPost {
    #[serde(default, deserialize_with = "nullable")]
    pub pools: Vec<RecoverPool>,
}

/// One pool to scan that the server has no record of (LXD's `api.StoragePoolsPost`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RecoverPool {
    pub name: String,
    pub driver: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
}

/// What `POST /internal/recover/validate` found (LXD's `internalRecoverValidateResult`), and
/// (bivy's addition) the pools on the daemon's own disk that no record names.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RecoverValidateResult {
    #[serde(default, deserialize_with = "nullable")]
    pub unknown_volumes: Vec<RecoverVolume>,
    #[serde(default, deserialize_with = "nullable")]
    pub dependency_errors: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub unknown_pools: Vec<RecoverPool>,
}

/// One volume found on a pool without a record (LXD's `internalRecoverValidateVolume`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RecoverVolume {
    pub name: String,
    /// `container` or `custom`.
    #[serde(rename = "type")]
    pub kind: String,
    pub snapshot_count: usize,
    pub pool: String,
    pub project: String,
}

/// A storage volume (`api.StorageVolume` of LXD 5.0.2, field for field).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct StorageVolume {
    /// The volume's config (`size`, `security.shifted`, ...).
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    /// Its name, e.g. `vol1` (`c1/snap0` for an instance snapshot's volume).
    pub name: String,
    /// `custom`, `container` or `image`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What uses it: `/1.0/instances/c1`, `/1.0/profiles/p1`, `/1.0/images/FP`.
    #[serde(default, deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    /// `none` on a standalone server.
    #[serde(default)]
    pub location: String,
    /// `filesystem` (or `block`, which bivy does not make).
    #[serde(default)]
    pub content_type: String,
    /// Always `default`.
    #[serde(default)]
    pub project: String,
    /// RFC 3339, e.g. `2024-01-02T03:04:05Z`.
    #[serde(default)]
    pub created_at: String,
}

/// `PUT`/`PATCH /1.0/storage-pools/POOL/volumes/custom/NAME`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StorageVolumePut {
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    /// A snapshot of the volume to restore (its name within the volume).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restore: String,
}

/// Where a new volume comes from (`api.StorageVolumeSource`): an empty `type` (a new, empty
/// volume), `copy` of a volume on this server, or `migration` from another server.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StorageVolumeSource {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// `""` (empty volume), `copy` or `migration`.
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub pool: String,
    /// Copy without the source's snapshots.
    #[serde(default)]
    pub volume_only: bool,
    /// Update an existing copy (not built).
    #[serde(default)]
    pub refresh: bool,
    /// Migration: `pull` (this server dials the source's operation) or `push` (the source, or
    /// the client relaying, dials this one's).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub mode: String,
    /// Migration (pull): the source's operation URL.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub operation: String,
    /// Migration (pull): the source server's certificate (PEM), pinned when dialing it.
    #[serde(default, deserialize_with = "nullable")]
    pub certificate: String,
    /// Migration (pull): the websocket secrets of the source's operation, by stream name.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub secrets: BTreeMap<String, String>,
}

/// `POST /1.0/storage-pools/POOL/volumes[/custom]`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StorageVolumesPost {
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    pub name: String,
    /// `custom` (the only type a client can create).
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default)]
    pub source: StorageVolumeSource,
    /// `filesystem` (the default) or `block`.
    #[serde(default, deserialize_with = "nullable")]
    pub content_type: String,
}

/// A custom volume's snapshot (`api.StorageVolumeSnapshot` of LXD 5.0.2, field for field).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct StorageVolumeSnapshot {
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    /// RFC 3339; LXD's zero time when it never expires.
    #[serde(default, deserialize_with = "nullable")]
    pub expires_at: String,
    /// The volume's config when the snapshot was taken.
    #[serde(default, deserialize_with = "nullable")]
    pub config: StringMap,
    /// `snap0` (one snapshot) or `vol1/snap0` (in a list).
    pub name: String,
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub created_at: String,
}

/// `POST /1.0/storage-pools/POOL/volumes/custom/NAME/snapshots`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StorageVolumeSnapshotsPost {
    /// Empty: named after the volume's `snapshots.pattern`.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// None: the volume's `snapshots.expiry` applies.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `POST /1.0/storage-pools/POOL/volumes/custom/NAME`: rename (or move, migrate: not built).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StorageVolumePost {
    pub name: String,
    /// Another pool to move the volume to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    #[serde(default)]
    pub migration: bool,
    /// Another project (bivy has one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// Migration in push mode: the target's operation, certificate and secrets.
    #[serde(default)]
    pub target: Option<serde_json::Value>,
    /// Migration: the volume without its snapshots.
    #[serde(default)]
    pub volume_only: bool,
}

/// LXD's zero `time.Time` ("0001-01-01T00:00:00Z"): a snapshot's `expires_at` when it never expires.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A trusted certificate as `/1.0/certificates` returns it (LXD's `api.Certificate`), fields in
/// lxc's YAML order.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Certificate {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub restricted: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub projects: Vec<String>,
    #[serde(default)]
    pub certificate: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// Its writable part (`api.CertificatePut`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct CertificatePut {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub restricted: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub projects: Vec<String>,
    #[serde(default)]
    pub certificate: String,
}

/// A certificate add token (LXD's `api.CertificateAddToken`): what `config trust add` prints,
/// base64 (standard, padded) of this JSON, field order as LXD marshals it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateAddToken {
    pub client_name: String,
    pub fingerprint: String,
    pub addresses: Vec<String>,
    pub secret: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` for a token that does not expire.
    pub expires_at: String,
}

/// Go's zero `time.Time`, as a token without expiry carries it.
pub const NO_EXPIRY: &str = "0001-01-01T00:00:00Z";

impl CertificateAddToken {
    /// Decode a token string, with LXD's checks (`shared.CertificateTokenDecode`).
    pub fn decode(s: &str) -> Result<CertificateAddToken, String> {
        let json = crate::util::base64::decode(s.trim()).ok_or("not base64")?;
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            client_name: String,
            #[serde(default)]
            fingerprint: String,
            #[serde(default, deserialize_with = "nullable")]
            addresses: Vec<String>,
            #[serde(default)]
            secret: String,
            #[serde(default)]
            expires_at: Option<String>,
        }
        let r: Raw = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
        if r.client_name.is_empty() {
            return Err("No client name in certificate add token".into());
        }
        if r.addresses.is_empty() {
            return Err("No server addresses in certificate add token".into());
        }
        if r.secret.is_empty() {
            return Err("No secret in certificate add token".into());
        }
        if r.fingerprint.is_empty() {
            return Err("No certificate fingerprint in certificate add token".into());
        }
        Ok(CertificateAddToken {
            client_name: r.client_name,
            fingerprint: r.fingerprint,
            addresses: r.addresses,
            secret: r.secret,
            expires_at: r.expires_at.unwrap_or_else(|| NO_EXPIRY.to_string()),
        })
    }

    /// The token string.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a token always serializes");
        crate::util::base64::encode(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_maps_are_empty() {
        let p: ProfilesPost =
            serde_json::from_str(r#"{"name":"p1","config":null,"devices":null,"description":""}"#)
                .unwrap();
        assert!(p.put.config.is_empty() && p.put.devices.is_empty());
        let i: InstancePut =
            serde_json::from_str(r#"{"config":null,"devices":null,"profiles":null}"#).unwrap();
        assert!(i.profiles.is_empty());
    }

    /// `InstanceFull`'s own decoder reads what serializing it writes, skips keys it does not
    /// know and, like the derived decoders, wants every field of the instance.
    #[test]
    fn an_instance_full_decodes_as_it_serializes() {
        let mut full = InstanceFull {
            instance: Instance {
                name: "c1".into(),
                kind: "container".into(),
                status_code: status::RUNNING,
                ..Default::default()
            },
            state: Some(InstanceState {
                pid: 7,
                ..Default::default()
            }),
            snapshots: Some(vec![]),
            backups: None,
        };
        full.instance.config.insert("k".into(), "v".into());
        let json = serde_json::to_value(&full).unwrap();
        let back: InstanceFull = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        let mut more = json.clone();
        more["newer_field"] = serde_json::json!({"a": [1, 2]});
        more.as_object_mut().unwrap().remove("backups");
        let back: InstanceFull = serde_json::from_value(more).unwrap();
        assert_eq!(back.instance.config["k"], "v");
        assert_eq!(back.state.unwrap().pid, 7);
        assert!(back.backups.is_none());
        let row: InstanceRow = serde_json::from_value(json.clone()).unwrap();
        assert!(
            row.0.instance.config.is_empty(),
            "a row reads past the config"
        );
        assert_eq!(row.0.instance.name, "c1");
        assert_eq!(row.0.state.unwrap().pid, 7);
        let mut less = json;
        less.as_object_mut().unwrap().remove("status_code");
        let e = serde_json::from_value::<InstanceFull>(less).unwrap_err();
        assert!(e.to_string().contains("missing field `status_code`"), "{e}");
    }
}
