//! Reading sysfs: typed attribute files of a device directory ([`Attrs`]), the facts LXD reports
//! for every device ([`Device`]: driver, NUMA node, vendor and product), the links that place a
//! device on a bus, and the `pci.ids` / `usb.ids` name databases.
//!
//! Every read is lenient: a missing or unparsable file is `None` (or empty, or zero) and never an
//! error, because sysfs differs between kernels and devices.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// A directory whose attribute files (`vendor`, `numa_node`, `size`, ...) are read as typed
/// values, trimmed. A missing or unparsable file reads as `None`.
#[derive(Clone, Copy)]
pub(super) struct Attrs<'a>(pub &'a Path);

impl Attrs<'_> {
    pub fn str(self, name: &str) -> Option<String> {
        read_str(&self.0.join(name))
    }
    /// The file's text, or "" when it cannot be read.
    pub fn string(self, name: &str) -> String {
        self.str(name).unwrap_or_default()
    }
    pub fn u64(self, name: &str) -> Option<u64> {
        self.str(name)?.parse().ok()
    }
    pub fn i64(self, name: &str) -> Option<i64> {
        self.str(name)?.parse().ok()
    }
    /// A hexadecimal value, with or without `0x`.
    pub fn hex(self, name: &str) -> Option<u64> {
        u64::from_str_radix(self.str(name)?.trim_start_matches("0x"), 16).ok()
    }
    /// Whether the file holds `1` (`ro`, `removable`, `carrier`).
    pub fn is_one(self, name: &str) -> bool {
        self.u64(name) == Some(1)
    }
    /// A `0x1af4` id file as LXD sends it (`1af4`).
    pub fn id(self, name: &str) -> String {
        self.str(name)
            .map(|s| s.trim_start_matches("0x").to_string())
            .unwrap_or_default()
    }
    /// The PCI class code (`0x030000`) shifted to its base class (`0x03`: display).
    pub fn pci_base_class(self) -> Option<u64> {
        self.hex("class").map(|c| c >> 16)
    }
    /// NUMA node of a device: its `numa_node` file when positive, else 0.
    pub fn numa_node(self) -> u64 {
        self.i64("numa_node")
            .filter(|n| *n > 0)
            .map(|n| n as u64)
            .unwrap_or(0)
    }
    /// SR-IOV virtual functions of a PCI device, `(current, maximum)`, when it supports them.
    pub fn sriov(self) -> Option<(u64, u64)> {
        let max = self.u64("sriov_totalvfs")?;
        Some((self.u64("sriov_numvfs").unwrap_or(0), max))
    }
}

/// What LXD reports about any device directory: the bound driver and its version, the NUMA
/// node, and (for a PCI device read with [`Device::read_pci`]) its ids and their names.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Device {
    pub driver: String,
    pub driver_version: String,
    pub numa_node: u64,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
}

impl Device {
    /// Driver and NUMA node of the device at `dev`; `release` is the kernel's version, which
    /// LXD gives in-tree drivers that have no module `version`.
    pub fn read(dev: &Path, release: &str) -> Device {
        let (driver, driver_version) = driver(dev, release);
        Device {
            driver,
            driver_version,
            numa_node: Attrs(dev).numa_node(),
            ..Default::default()
        }
    }

    /// [`Device::read`], plus the PCI `vendor` and `device` ids and their names in `pci.ids`.
    pub fn read_pci(dev: &Path, release: &str, ids: &IdDbs) -> Device {
        let a = Attrs(dev);
        let (vendor_id, product_id) = (a.id("vendor"), a.id("device"));
        let (vendor, product) = IdDbs::names(&ids.pci, &vendor_id, &product_id);
        Device {
            vendor,
            vendor_id,
            product,
            product_id,
            ..Device::read(dev, release)
        }
    }
}

pub(super) fn read_str(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The numeric-aware sorted names in a directory (`cpu2` before `cpu10`).
pub(super) fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    crate::util::sort::sort_by_key(&mut v, |a| natural_key(a));
    v
}

fn natural_key(s: &str) -> (String, u64, String) {
    let head: String = s.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let rest = &s[head.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let tail = rest[digits.len()..].to_string();
    (head, digits.parse().unwrap_or(0), tail)
}

pub(super) fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// A driver bound to a device: name and version (the module's `version`, else the kernel's).
fn driver(dev: &Path, release: &str) -> (String, String) {
    match link_name(&dev.join("driver")) {
        Some(name) => {
            let ver =
                read_str(&dev.join("driver/module/version")).unwrap_or_else(|| release.to_string());
            (name, ver)
        }
        None => (String::new(), String::new()),
    }
}

/// The subsystem a (canonical) device directory belongs to.
pub(super) fn subsystem(dev: &Path) -> Option<String> {
    link_name(&dev.join("subsystem"))
}

/// PCI address of a device, looking through a virtio device to its PCI parent.
pub(super) fn pci_address(dev: &Path) -> Option<String> {
    let mut d = fs::canonicalize(dev).ok()?;
    if subsystem(&d).as_deref() == Some("virtio") {
        d = d.parent()?.to_path_buf();
    }
    if subsystem(&d).as_deref() != Some("pci") {
        return None;
    }
    Some(d.file_name()?.to_string_lossy().into_owned())
}

/// `bus:dev` of the USB device a device sits on, if any.
pub(super) fn usb_address(dev: &Path) -> Option<String> {
    let d = fs::canonicalize(dev).ok()?;
    if !d.to_string_lossy().contains("/usb") {
        return None;
    }
    let mut p: Option<&Path> = Some(&d);
    while let Some(cur) = p {
        if let (Some(bus), Some(num)) = (Attrs(cur).u64("busnum"), Attrs(cur).u64("devnum")) {
            return Some(format!("{bus}:{num}"));
        }
        p = cur.parent();
    }
    None
}

/// Vendor id -> (vendor name, product id -> product name).
type IdDb = BTreeMap<String, (String, BTreeMap<String, String>)>;

/// Vendor and product names from the host's `pci.ids` / `usb.ids`, when installed.
#[derive(Default)]
pub(super) struct IdDbs {
    pub pci: IdDb,
    pub usb: IdDb,
}

impl IdDbs {
    pub fn load(root: &Path) -> IdDbs {
        let first = |paths: &[&str]| {
            paths
                .iter()
                .find_map(|p| fs::read_to_string(root.join(p)).ok())
                .map(|t| parse_ids(&t))
                .unwrap_or_default()
        };
        IdDbs {
            pci: first(&[
                "usr/share/misc/pci.ids",
                "usr/share/hwdata/pci.ids",
                "usr/share/pci.ids",
            ]),
            usb: first(&[
                "var/lib/usbutils/usb.ids",
                "usr/share/misc/usb.ids",
                "usr/share/hwdata/usb.ids",
                "usr/share/usb.ids",
            ]),
        }
    }

    pub fn names(db: &IdDb, vendor: &str, product: &str) -> (String, String) {
        match db.get(vendor) {
            Some((v, products)) => (
                v.clone(),
                products.get(product).cloned().unwrap_or_default(),
            ),
            None => (String::new(), String::new()),
        }
    }
}

/// The vendor/device part of a `pci.ids`-style file: `vvvv  Name`, then `\tdddd  Name` lines.
/// Stops at the class sections (`C xx`), which use the same layout.
fn parse_ids(text: &str) -> IdDb {
    let mut out: IdDb = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('\t') {
            if rest.starts_with('\t') {
                continue; // subsystem lines
            }
            if let (Some(v), Some((id, name))) = (&cur, rest.split_once("  ")) {
                if let Some(e) = out.get_mut(v) {
                    e.1.insert(id.to_lowercase(), name.trim().to_string());
                }
            }
            continue;
        }
        let Some((id, name)) = line.split_once("  ") else {
            cur = None;
            continue;
        };
        if id.len() != 4 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            if id.starts_with("C ") {
                break;
            }
            cur = None;
            continue;
        }
        let id = id.to_lowercase();
        out.insert(id.clone(), (name.trim().to_string(), BTreeMap::new()));
        cur = Some(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_database() {
        let db = parse_ids("8086  Intel Corporation\n\t5916  HD Graphics 620\nC 03  Display controller\n\t00  VGA\n");
        assert_eq!(IdDbs::names(&db, "8086", "5916").1, "HD Graphics 620");
        assert_eq!(
            IdDbs::names(&db, "8086", "0000"),
            ("Intel Corporation".into(), String::new())
        );
        assert!(!db.contains_key("C 03"));
    }
}
