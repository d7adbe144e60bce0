//! `GET /1.0/resources` (shared/api/resource.go): the host's hardware as LXD reports it.
//!
//! Field names and `omitempty` follow LXD; a field LXD marks `omitempty` is left out when it
//! holds its zero value, the others are always sent. Values that cannot be read stay zero/empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The whole document.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct Resources {
    pub cpu: ResourcesCpu,
    pub memory: ResourcesMemory,
    pub gpu: ResourcesGpu,
    pub network: ResourcesNetwork,
    pub storage: ResourcesStorage,
    pub usb: ResourcesUsb,
    pub pci: ResourcesPci,
    pub system: ResourcesSystem,
}

// --- CPU ---------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesCpu {
    pub architecture: String,
    pub sockets: Vec<ResourcesCpuSocket>,
    /// Threads in all sockets.
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesCpuSocket {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    pub socket: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<ResourcesCpuCache>,
    pub cores: Vec<ResourcesCpuCore>,
    /// Average current frequency of the cores (MHz).
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_minimum: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_turbo: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesCpuCache {
    pub level: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes.
    pub size: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesCpuCore {
    pub core: u64,
    pub die: u64,
    pub threads: Vec<ResourcesCpuThread>,
    /// MHz.
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesCpuThread {
    /// The kernel's CPU number (what `limits.cpu` pins to).
    pub id: i64,
    pub numa_node: u64,
    /// Index of the thread within its core.
    pub thread: u64,
    pub online: bool,
    pub isolated: bool,
}

// --- Memory ------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesMemory {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ResourcesMemoryNode>,
    pub hugepages_total: u64,
    pub hugepages_used: u64,
    pub hugepages_size: u64,
    pub used: u64,
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesMemoryNode {
    pub numa_node: u64,
    pub hugepages_used: u64,
    pub hugepages_total: u64,
    pub used: u64,
    pub total: u64,
}

// --- GPU ---------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesGpu {
    pub cards: Vec<ResourcesGpuCard>,
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesGpuCard {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drm: Option<ResourcesGpuCardDrm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov: Option<ResourcesGpuCardSriov>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvidia: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mdev: Option<BTreeMap<String, serde_json::Value>>,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub usb_address: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesGpuCardDrm {
    pub id: u64,
    pub card_name: String,
    pub card_device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub control_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub control_device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub render_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub render_device: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesGpuCardSriov {
    pub current_vfs: u64,
    pub maximum_vfs: u64,
    pub vfs: Vec<ResourcesGpuCard>,
}

// --- Network -----------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesNetwork {
    pub cards: Vec<ResourcesNetworkCard>,
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesNetworkCard {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ResourcesNetworkCardPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov: Option<ResourcesNetworkCardSriov>,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firmware_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub usb_address: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesNetworkCardPort {
    /// Interface name.
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub port: u64,
    pub protocol: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_modes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_ports: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub port_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transceiver_type: String,
    pub auto_negotiation: bool,
    pub link_detected: bool,
    /// Mbit/s.
    #[serde(skip_serializing_if = "is_zero")]
    pub link_speed: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_duplex: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infiniband: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesNetworkCardSriov {
    pub current_vfs: u64,
    pub maximum_vfs: u64,
    pub vfs: Vec<ResourcesNetworkCard>,
}

// --- Storage -----------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesStorage {
    pub disks: Vec<ResourcesStorageDisk>,
    /// Disks plus partitions, as LXD counts them.
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesStorageDisk {
    /// Block device name (`sda`, `nvme0n1`).
    pub id: String,
    /// `major:minor`.
    pub device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// The bus the disk hangs off (`scsi`, `nvme`, `virtio`, ...).
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub read_only: bool,
    /// Bytes.
    pub size: u64,
    pub removable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_path: String,
    pub block_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firmware_version: String,
    pub rpm: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial: String,
    pub device_id: String,
    pub partitions: Vec<ResourcesStorageDiskPartition>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub usb_address: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesStorageDiskPartition {
    pub id: String,
    pub device: String,
    pub read_only: bool,
    pub size: u64,
    pub partition: u64,
}

// --- USB and PCI -------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesUsb {
    pub devices: Vec<ResourcesUsbDevice>,
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesUsbDevice {
    pub bus_address: u64,
    pub device_address: u64,
    pub interfaces: Vec<ResourcesUsbDeviceInterface>,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
    /// Mbit/s.
    pub speed: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesUsbDeviceInterface {
    pub class: String,
    pub class_id: u64,
    pub driver: String,
    pub driver_version: String,
    pub number: u64,
    pub subclass: String,
    pub subclass_id: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesPci {
    pub devices: Vec<ResourcesPciDevice>,
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesPciDevice {
    pub driver: String,
    pub driver_version: String,
    pub numa_node: u64,
    pub pci_address: String,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
    pub iommu_group: u64,
    pub vpd: ResourcesPciVpd,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesPciVpd {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<String, String>,
}

// --- System ------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesSystem {
    pub uuid: String,
    pub vendor: String,
    pub product: String,
    pub family: String,
    pub version: String,
    pub sku: String,
    pub serial: String,
    /// `physical`, `virtual-machine`, `container` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `null` when the host has no DMI tables (as LXD).
    pub firmware: Option<ResourcesSystemFirmware>,
    pub chassis: Option<ResourcesSystemChassis>,
    pub motherboard: Option<ResourcesSystemMotherboard>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesSystemFirmware {
    pub vendor: String,
    pub date: String,
    pub version: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesSystemChassis {
    pub vendor: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub serial: String,
    pub version: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ResourcesSystemMotherboard {
    pub vendor: String,
    pub product: String,
    pub serial: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitempty_fields_are_left_out() {
        let v = serde_json::to_value(Resources::default()).unwrap();
        assert_eq!(v["cpu"]["sockets"], serde_json::json!([]));
        assert!(v["memory"].get("nodes").is_none());
        assert_eq!(v["system"]["firmware"], serde_json::Value::Null);
        let card = serde_json::to_value(ResourcesGpuCard::default()).unwrap();
        assert_eq!(card, serde_json::json!({"numa_node": 0}));
        let disk = serde_json::to_value(ResourcesStorageDisk {
            kind: "virtio".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(disk["type"], "virtio");
        assert!(disk.get("model").is_none());
    }
}
