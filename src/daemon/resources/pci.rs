//! PCI devices (`/sys/bus/pci/devices`) and the GPUs among them (display controllers), plus DRM
//! cards that are not on PCI.

use std::fs;
use std::path::{Path, PathBuf};

use super::sysfs::{link_name, list, usb_address, Attrs, Device, IdDbs};
use crate::api::resources::*;

/// PCI base class of display controllers (`0x03xxxx`).
const CLASS_DISPLAY: u64 = 0x03;

pub(super) fn pci(root: &Path, release: &str, ids: &IdDbs) -> ResourcesPci {
    let base = root.join("sys/bus/pci/devices");
    let mut out = ResourcesPci::default();
    for addr in list(&base) {
        let dev = base.join(&addr);
        let Device {
            driver,
            driver_version,
            numa_node,
            vendor,
            vendor_id,
            product,
            product_id,
        } = Device::read_pci(&dev, release, ids);
        out.devices.push(ResourcesPciDevice {
            driver,
            driver_version,
            numa_node,
            pci_address: addr,
            vendor,
            vendor_id,
            product,
            product_id,
            iommu_group: link_name(&dev.join("iommu_group"))
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            vpd: ResourcesPciVpd::default(),
        });
    }
    out.total = out.devices.len() as u64;
    out
}

/// The DRM nodes under `<device>/drm`: `cardN`, `controlDN`, `renderDN`.
fn gpu_drm(dev: &Path) -> Option<ResourcesGpuCardDrm> {
    let drm = dev.join("drm");
    let mut out: Option<ResourcesGpuCardDrm> = None;
    for name in list(&drm) {
        let devnum = Attrs(&drm.join(&name)).string("dev");
        if let Some(n) = name
            .strip_prefix("card")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let d = out.get_or_insert_with(Default::default);
            d.id = n;
            d.card_name = name.clone();
            d.card_device = devnum;
        } else if name.starts_with("controlD") {
            let d = out.get_or_insert_with(Default::default);
            d.control_name = name.clone();
            d.control_device = devnum;
        } else if name.starts_with("renderD") {
            let d = out.get_or_insert_with(Default::default);
            d.render_name = name.clone();
            d.render_device = devnum;
        }
    }
    out
}

pub(super) fn gpu(root: &Path, release: &str, ids: &IdDbs) -> ResourcesGpu {
    let mut out = ResourcesGpu::default();
    let mut seen: Vec<PathBuf> = Vec::new();
    // Display controllers on the PCI bus, as LXD finds them.
    let base = root.join("sys/bus/pci/devices");
    for addr in list(&base) {
        let dev = base.join(&addr);
        if Attrs(&dev).pci_base_class() != Some(CLASS_DISPLAY) {
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
        let sriov = Attrs(&dev)
            .sriov()
            .map(|(current_vfs, maximum_vfs)| ResourcesGpuCardSriov {
                current_vfs,
                maximum_vfs,
                vfs: Vec::new(),
            });
        seen.extend(fs::canonicalize(&dev).ok());
        out.cards.push(ResourcesGpuCard {
            driver,
            driver_version,
            drm: gpu_drm(&dev),
            sriov,
            numa_node,
            pci_address: addr,
            vendor,
            vendor_id,
            product,
            product_id,
            ..Default::default()
        });
    }
    // DRM cards not on PCI (platform or USB display devices).
    let drm = root.join("sys/class/drm");
    for name in list(&drm) {
        if !name.starts_with("card") || name.contains('-') {
            continue;
        }
        let Ok(dev) = fs::canonicalize(drm.join(&name).join("device")) else {
            continue;
        };
        if seen.contains(&dev) {
            continue;
        }
        let d = Device::read(&dev, release);
        seen.push(dev.clone());
        out.cards.push(ResourcesGpuCard {
            driver: d.driver,
            driver_version: d.driver_version,
            drm: gpu_drm(&dev),
            numa_node: d.numa_node,
            usb_address: usb_address(&dev).unwrap_or_default(),
            ..Default::default()
        });
    }
    out.total = out.cards.len() as u64;
    out
}
