//! The system: what kind of machine this is (container, VM, physical) and its DMI identity
//! (`/sys/class/dmi/id`: product, firmware, chassis, motherboard).

use std::fs;
use std::path::Path;

use super::sysfs::Attrs;
use crate::api::resources::*;

/// SMBIOS chassis types (DMTF DSP0134), as LXD names them.
const CHASSIS_TYPES: [&str; 36] = [
    "Other",
    "Unknown",
    "Desktop",
    "Low Profile Desktop",
    "Pizza Box",
    "Mini Tower",
    "Tower",
    "Portable",
    "Laptop",
    "Notebook",
    "Hand Held",
    "Docking Station",
    "All in One",
    "Sub Notebook",
    "Space-saving",
    "Lunch Box",
    "Main Server Chassis",
    "Expansion Chassis",
    "SubChassis",
    "Bus Expansion Chassis",
    "Peripheral Chassis",
    "RAID Chassis",
    "Rack Mount Chassis",
    "Sealed-case PC",
    "Multi-system chassis",
    "Compact PCI",
    "Advanced TCA",
    "Blade",
    "Blade Enclosure",
    "Tablet",
    "Convertible",
    "Detachable",
    "IoT Gateway",
    "Embedded PC",
    "Mini PC",
    "Stick PC",
];

/// `container`, `virtual-machine`, `physical` or `unknown`, from what the host tells: a
/// container manager's marker, the CPU's `hypervisor` flag (x86) or /sys/hypervisor.
fn system_type(root: &Path) -> String {
    let container = root.join("run/systemd/container").exists()
        || fs::read(root.join("proc/1/environ"))
            .map(|e| e.split(|b| *b == 0).any(|v| v.starts_with(b"container=")))
            .unwrap_or(false);
    if container {
        return "container".into();
    }
    if Attrs(root)
        .str("sys/hypervisor/type")
        .is_some_and(|t| !t.is_empty())
    {
        return "virtual-machine".into();
    }
    let cpuinfo = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .take(1)
        .flat_map(|l| {
            l.split_once(':')
                .map(|x| x.1)
                .unwrap_or("")
                .split_whitespace()
        })
        .collect();
    if flags.contains(&"hypervisor") {
        "virtual-machine".into()
    } else if !flags.is_empty() {
        "physical".into() // x86 sets the flag under every hypervisor
    } else {
        "unknown".into()
    }
}

pub(super) fn system(root: &Path) -> ResourcesSystem {
    let dmi = root.join("sys/class/dmi/id");
    let mut out = ResourcesSystem {
        kind: system_type(root),
        ..Default::default()
    };
    if !dmi.is_dir() {
        return out;
    }
    let dmi_id = Attrs(&dmi);
    let r = |f: &str| dmi_id.string(f);
    out.uuid = r("product_uuid");
    out.vendor = r("sys_vendor");
    out.product = r("product_name");
    out.family = r("product_family");
    out.version = r("product_version");
    out.sku = r("product_sku");
    out.serial = r("product_serial");
    out.firmware = Some(ResourcesSystemFirmware {
        vendor: r("bios_vendor"),
        date: r("bios_date"),
        version: r("bios_version"),
    });
    out.chassis = Some(ResourcesSystemChassis {
        vendor: r("chassis_vendor"),
        kind: dmi_id
            .u64("chassis_type")
            .and_then(|t| CHASSIS_TYPES.get((t as usize).checked_sub(1)?))
            .map(|s| s.to_string())
            .unwrap_or_default(),
        serial: r("chassis_serial"),
        version: r("chassis_version"),
    });
    out.motherboard = Some(ResourcesSystemMotherboard {
        vendor: r("board_vendor"),
        product: r("board_name"),
        serial: r("board_serial"),
        version: r("board_version"),
    });
    out
}
