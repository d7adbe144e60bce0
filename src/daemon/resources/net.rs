//! Network cards: interfaces in `/sys/class/net` grouped by the device they sit on, plus PCI
//! network controllers that have no interface on the host.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::sysfs::{list, pci_address, usb_address, Attrs, Device, IdDbs};
use crate::api::resources::*;

/// PCI base class of network controllers (`0x02xxxx`).
const CLASS_NETWORK: u64 = 0x02;

pub(super) fn network(root: &Path, release: &str, ids: &IdDbs) -> ResourcesNetwork {
    let mut out = ResourcesNetwork::default();
    // card key (PCI address or device path) -> index in out.cards
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let net = root.join("sys/class/net");
    for name in list(&net) {
        let iface = net.join(&name);
        let Ok(dev) = fs::canonicalize(iface.join("device")) else {
            continue; // virtual interface (lo, bridges, veth, ...)
        };
        let pci = pci_address(&dev);
        let key = pci
            .clone()
            .unwrap_or_else(|| dev.to_string_lossy().into_owned());
        let i = *index.entry(key).or_insert_with(|| {
            // The driver is the interface's own (virtio_net, not virtio-pci); NUMA node, ids
            // and SR-IOV are the PCI function's.
            let d = Device::read(&dev, release);
            let mut card = ResourcesNetworkCard {
                driver: d.driver,
                driver_version: d.driver_version,
                numa_node: d.numa_node,
                usb_address: usb_address(&dev).unwrap_or_default(),
                ..Default::default()
            };
            if let Some(addr) = &pci {
                let pdev = root.join("sys/bus/pci/devices").join(addr);
                let p = Device::read_pci(&pdev, release, ids);
                card.numa_node = p.numa_node;
                card.pci_address = addr.clone();
                (card.vendor, card.vendor_id, card.product, card.product_id) =
                    (p.vendor, p.vendor_id, p.product, p.product_id);
                card.sriov = Attrs(&pdev).sriov().map(|(current_vfs, maximum_vfs)| {
                    ResourcesNetworkCardSriov {
                        current_vfs,
                        maximum_vfs,
                        vfs: Vec::new(),
                    }
                });
            }
            out.cards.push(card);
            out.cards.len() - 1
        });
        let card = &mut out.cards[i];
        let a = Attrs(&iface);
        let protocol = match a.u64("type") {
            Some(32) => "infiniband",
            _ => "ethernet",
        };
        let carrier = a.is_one("carrier");
        let speed = a.i64("speed").filter(|s| *s > 0).unwrap_or(0) as u64;
        let duplex = a
            .str("duplex")
            .filter(|d| d != "unknown")
            .unwrap_or_default();
        card.ports.push(ResourcesNetworkCardPort {
            id: name.clone(),
            address: a.string("address"),
            port: a.u64("dev_port").unwrap_or(card.ports.len() as u64),
            protocol: protocol.into(),
            link_detected: carrier,
            link_speed: if carrier { speed } else { 0 },
            link_duplex: if carrier { duplex } else { String::new() },
            ..Default::default()
        });
    }
    // Network controllers with no interface on the host (unbound, or handed to a VM) are cards
    // without ports.
    let base = root.join("sys/bus/pci/devices");
    for addr in list(&base) {
        let dev = base.join(&addr);
        if index.contains_key(&addr) || Attrs(&dev).pci_base_class() != Some(CLASS_NETWORK) {
            continue;
        }
        let Device {
            driver,
            driver_version,
            numa_node,
            vendor,
            vendor_id,
            product,
            product_id,
        } = Device::read_pci(&dev, release, ids);
        out.cards.push(ResourcesNetworkCard {
            driver,
            driver_version,
            numa_node,
            pci_address: addr,
            vendor,
            vendor_id,
            product,
            product_id,
            ..Default::default()
        });
    }
    out.total = out.cards.len() as u64;
    out
}
