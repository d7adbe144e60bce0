//! The host's GPUs and USB devices as `gpu` and `usb` devices find them (LXD 5.0.2's matching),
//! read from sysfs below a root (`/` on a host, a fake tree in tests). Each match becomes device
//! nodes (major:minor from the kernel's `dev` attribute), which the runtime makes and binds like
//! a `unix-char` device's.

use std::fs;
use std::path::{Path, PathBuf};

/// A device node found on the host: where it goes in the container and its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub path: String,
    pub major: u32,
    pub minor: u32,
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// `MAJOR:MINOR` from a sysfs `dev` attribute.
fn dev_numbers(p: &Path) -> Option<(u32, u32)> {
    let s = read(&p.join("dev"))?;
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    crate::util::sort::sort(&mut v);
    v
}

/// A hex id as sysfs writes it (`0x10de`) or as a user does (`10de`), lowercase, no prefix.
fn hex_id(s: &str) -> String {
    s.trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .to_ascii_lowercase()
}

/// What a `gpu` device (`gputype=physical`) selects; an unset field matches any card.
#[derive(Debug, Default, Clone)]
pub struct GpuMatch {
    pub vendorid: Option<String>,
    pub productid: Option<String>,
    /// The DRM card number.
    pub id: Option<String>,
    /// The PCI address (`0000:01:00.0`).
    pub pci: Option<String>,
}

/// The DRM nodes (`/dev/dri/cardN`, `/dev/dri/renderDN`) of every card that `m` selects, plus
/// NVIDIA's own nodes for NVIDIA cards (as LXD: the card's `/dev/nvidiaN` and the control
/// nodes that exist).
pub fn gpu_nodes(root: &Path, m: &GpuMatch) -> Vec<Node> {
    let drm = root.join("sys/class/drm");
    let mut out: Vec<Node> = Vec::new();
    let mut nvidia = false;
    for name in entries(&drm) {
        let Some(card) = name.strip_prefix("card") else {
            continue;
        };
        if card.parse::<u32>().is_err() {
            continue; // connectors: card0-HDMI-A-1
        }
        let dir = drm.join(&name);
        let dev: PathBuf = dir.join("device");
        let vendor = read(&dev.join("vendor")).map(|v| hex_id(&v));
        let product = read(&dev.join("device")).map(|v| hex_id(&v));
        let pci = fs::read_link(&dev)
            .ok()
            .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()));
        let want = |w: &Option<String>, have: Option<&str>| match w {
            None => true,
            Some(w) => have.is_some_and(|h| h.eq_ignore_ascii_case(w)),
        };
        if !want(&m.vendorid.as_deref().map(hex_id), vendor.as_deref())
            || !want(&m.productid.as_deref().map(hex_id), product.as_deref())
            || !want(&m.id, Some(card))
            || !want(&m.pci, pci.as_deref())
        {
            continue;
        }
        // The card's nodes: every DRM entry below its device (card, render, control).
        for node in entries(&dev.join("drm")) {
            if node.contains('-') {
                continue;
            }
            let Some((major, minor)) = dev_numbers(&dev.join("drm").join(&node)) else {
                continue;
            };
            if node.starts_with("card") || node.starts_with("renderD") {
                out.push(Node {
                    path: format!("/dev/dri/{node}"),
                    major,
                    minor,
                });
            }
        }
        if vendor.as_deref() == Some("10de") {
            nvidia = true;
            if let Some(minor) = pci.as_deref().and_then(|p| nvidia_minor(root, p)) {
                if let Some(n) = dev_node(root, &format!("nvidia{minor}")) {
                    out.push(n);
                }
            }
        }
    }
    if nvidia {
        for ctl in [
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools",
            "nvidia-modeset",
        ] {
            out.extend(dev_node(root, ctl));
        }
    }
    out.dedup();
    out
}

/// `Device Minor` of an NVIDIA card from its driver's proc file.
fn nvidia_minor(root: &Path, pci: &str) -> Option<u32> {
    let info = read(&root.join(format!("proc/driver/nvidia/gpus/{pci}/information")))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Device Minor:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A character node under the root's `/dev`, with its numbers, when it exists.
fn dev_node(root: &Path, name: &str) -> Option<Node> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = fs::metadata(root.join("dev").join(name)).ok()?;
    if !m.file_type().is_char_device() {
        return None;
    }
    Some(Node {
        path: format!("/dev/{name}"),
        major: rustix::fs::major(m.rdev()),
        minor: rustix::fs::minor(m.rdev()),
    })
}

/// What a `usb` device selects; an unset field matches any device.
#[derive(Debug, Default, Clone)]
pub struct UsbMatch {
    pub vendorid: Option<String>,
    pub productid: Option<String>,
    pub serial: Option<String>,
}

/// The nodes (`/dev/bus/usb/BBB/DDD`) of the USB devices `m` selects (root hubs and
/// interfaces are not devices).
pub fn usb_nodes(root: &Path, m: &UsbMatch) -> Vec<Node> {
    let base = root.join("sys/bus/usb/devices");
    let mut out = Vec::new();
    for name in entries(&base) {
        if name.contains(':') || name.starts_with("usb") {
            continue;
        }
        let dir = base.join(&name);
        let eq = |want: &Option<String>, attr: &str, hex: bool| match want {
            None => true,
            Some(w) => read(&dir.join(attr)).is_some_and(|h| {
                if hex {
                    hex_id(&h) == hex_id(w)
                } else {
                    h == *w
                }
            }),
        };
        if !eq(&m.vendorid, "idVendor", true)
            || !eq(&m.productid, "idProduct", true)
            || !eq(&m.serial, "serial", false)
        {
            continue;
        }
        let (Some(bus), Some(devnum), Some((major, minor))) = (
            read(&dir.join("busnum")).and_then(|b| b.parse::<u32>().ok()),
            read(&dir.join("devnum")).and_then(|b| b.parse::<u32>().ok()),
            dev_numbers(&dir),
        ) else {
            continue;
        };
        out.push(Node {
            path: format!("/dev/bus/usb/{bus:03}/{devnum:03}"),
            major,
            minor,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::tempdir::TempDir;

    fn w(root: &Path, p: &str, v: &str) {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    }

    fn ln(root: &Path, p: &str, target: &str) {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    fn tree() -> TempDir {
        let d = TempDir::new("hostdev");
        let r = d.path();
        // Two cards: an Intel one (card0, renderD128) and an NVIDIA one (card1, renderD129).
        for (card, render, pci, vendor, product) in [
            ("0", "128", "0000:00:02.0", "0x8086", "0x5916"),
            ("1", "129", "0000:01:00.0", "0x10de", "0x1eb8"),
        ] {
            let dev = format!("sys/devices/pci0000:00/{pci}");
            w(r, &format!("{dev}/vendor"), &format!("{vendor}\n"));
            w(r, &format!("{dev}/device"), &format!("{product}\n"));
            w(
                r,
                &format!("{dev}/drm/card{card}/dev"),
                &format!("226:{card}\n"),
            );
            w(
                r,
                &format!("{dev}/drm/renderD{render}/dev"),
                &format!("226:{render}\n"),
            );
            ln(
                r,
                &format!("sys/class/drm/card{card}/device"),
                &format!("../../../devices/pci0000:00/{pci}"),
            );
        }
        ln(r, "sys/class/drm/card0-HDMI-A-1/device", "../card0");
        w(
            r,
            "proc/driver/nvidia/gpus/0000:01:00.0/information",
            "Model: Tesla T4\nDevice Minor: 0\n",
        );
        let u = "sys/bus/usb/devices";
        w(r, &format!("{u}/usb1/busnum"), "1\n");
        for (n, dn, v, p, s, minor) in [
            ("1-1", "3", "0557", "2221", "A1", "2"),
            ("1-2", "4", "1a86", "7523", "B2", "3"),
        ] {
            w(r, &format!("{u}/{n}/busnum"), "1\n");
            w(r, &format!("{u}/{n}/devnum"), &format!("{dn}\n"));
            w(r, &format!("{u}/{n}/idVendor"), &format!("{v}\n"));
            w(r, &format!("{u}/{n}/idProduct"), &format!("{p}\n"));
            w(r, &format!("{u}/{n}/serial"), &format!("{s}\n"));
            w(r, &format!("{u}/{n}/dev"), &format!("189:{minor}\n"));
            w(r, &format!("{u}/{n}:1.0/bInterfaceClass"), "03\n");
        }
        d
    }

    fn paths(v: &[Node]) -> Vec<&str> {
        v.iter().map(|n| n.path.as_str()).collect()
    }

    #[test]
    fn gpus_are_selected_by_vendor_product_id_and_pci() {
        let t = tree();
        let all = gpu_nodes(t.path(), &GpuMatch::default());
        assert_eq!(
            paths(&all),
            [
                "/dev/dri/card0",
                "/dev/dri/renderD128",
                "/dev/dri/card1",
                "/dev/dri/renderD129"
            ]
        );
        assert_eq!(
            all[1],
            Node {
                path: "/dev/dri/renderD128".into(),
                major: 226,
                minor: 128
            }
        );
        let intel = GpuMatch {
            vendorid: Some("8086".into()),
            ..Default::default()
        };
        assert_eq!(
            paths(&gpu_nodes(t.path(), &intel)),
            ["/dev/dri/card0", "/dev/dri/renderD128"]
        );
        let by_id = GpuMatch {
            id: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(
            paths(&gpu_nodes(t.path(), &by_id)),
            ["/dev/dri/card1", "/dev/dri/renderD129"]
        );
        let by_pci = GpuMatch {
            pci: Some("0000:00:02.0".into()),
            productid: Some("0x5916".into()),
            ..Default::default()
        };
        assert_eq!(gpu_nodes(t.path(), &by_pci).len(), 2);
        let none = GpuMatch {
            vendorid: Some("1002".into()),
            ..Default::default()
        };
        assert!(gpu_nodes(t.path(), &none).is_empty());
    }

    #[test]
    fn usb_devices_are_selected_by_vendor_product_and_serial() {
        let t = tree();
        let m = |v: Option<&str>, p: Option<&str>, s: Option<&str>| UsbMatch {
            vendorid: v.map(String::from),
            productid: p.map(String::from),
            serial: s.map(String::from),
        };
        assert_eq!(
            paths(&usb_nodes(t.path(), &m(None, None, None))),
            ["/dev/bus/usb/001/003", "/dev/bus/usb/001/004"]
        );
        let one = usb_nodes(t.path(), &m(Some("1A86"), Some("7523"), None));
        assert_eq!(
            one,
            [Node {
                path: "/dev/bus/usb/001/004".into(),
                major: 189,
                minor: 3
            }]
        );
        assert!(usb_nodes(t.path(), &m(Some("1a86"), None, Some("A1"))).is_empty());
        assert_eq!(usb_nodes(t.path(), &m(None, None, Some("A1"))).len(), 1);
    }
}
