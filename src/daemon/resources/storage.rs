//! Disks and their partitions, from `/sys/class/block` (whole disks backed by a device only).

use std::fs;
use std::path::{Path, PathBuf};

use super::sysfs::{list, pci_address, read_str, subsystem, usb_address, Attrs};
use crate::api::resources::*;

pub(super) fn storage(root: &Path) -> ResourcesStorage {
    let base = root.join("sys/class/block");
    let names = list(&base);
    let mut out = ResourcesStorage::default();
    for name in &names {
        let entry = base.join(name);
        let devlink = entry.join("device");
        // Only whole disks backed by a device: no partitions, loop, zram, dm, ...
        let Ok(dev) = fs::canonicalize(&devlink) else {
            continue;
        };
        let mut partitions = Vec::new();
        for sub in names
            .iter()
            .filter(|s| s.starts_with(name.as_str()) && *s != name)
        {
            let p = base.join(sub);
            let part = Attrs(&p);
            let Some(number) = part.u64("partition") else {
                continue;
            };
            partitions.push(ResourcesStorageDiskPartition {
                id: sub.clone(),
                device: part.string("dev"),
                read_only: part.is_one("ro"),
                size: part.u64("size").unwrap_or(0) * 512,
                partition: number,
            });
        }
        let (disk, device) = (Attrs(&entry), Attrs(&dev));
        let first = |files: &[PathBuf]| files.iter().find_map(|f| read_str(f)).unwrap_or_default();
        out.disks.push(ResourcesStorageDisk {
            id: name.clone(),
            device: disk.string("dev"),
            model: device.string("model"),
            kind: subsystem(&dev).unwrap_or_default(),
            read_only: disk.is_one("ro"),
            size: disk.u64("size").unwrap_or(0) * 512,
            removable: disk.is_one("removable"),
            wwn: first(&[entry.join("wwid"), dev.join("wwid")]),
            numa_node: device.numa_node(),
            block_size: disk.u64("queue/logical_block_size").unwrap_or(0),
            firmware_version: first(&[dev.join("firmware_rev"), dev.join("rev")]),
            serial: first(&[entry.join("serial"), dev.join("serial")]),
            partitions,
            pci_address: pci_address(&dev).unwrap_or_default(),
            usb_address: usb_address(&dev).unwrap_or_default(),
            ..Default::default()
        });
    }
    out.total = out
        .disks
        .iter()
        .map(|d| 1 + d.partitions.len() as u64)
        .sum();
    out
}
