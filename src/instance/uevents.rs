//! Devices that come and go while instances run: the kernel's uevents (netlink
//! `NETLINK_KOBJECT_UEVENT`, no udev needed) plug a matching `usb` or `unix-hotplug` device's node
//! into every running instance that asks for it, and take it out when the device goes, as LXD
//! does. Only the kernel's own messages are believed (sender port 0).
//!
//! `usb` devices match a USB device's `idVendor`/`idProduct`/`serial`; `unix-hotplug` devices
//! match any device node whose USB ancestor has the given ids (a serial adapter's `ttyUSB0`,
//! say). Both are also resolved at start and when added ([`present`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::Ctx;
use crate::api::{Devices, StringMap};
use crate::runtime::UnixDev;

/// One kernel uevent: `ACTION@DEVPATH` and its `KEY=VALUE` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub vars: BTreeMap<String, String>,
}

impl Uevent {
    fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str)
    }
}

/// Parse a kernel uevent message (NUL-separated; udev's own `libudev` messages are refused).
pub fn parse(buf: &[u8]) -> Option<Uevent> {
    let mut parts = buf.split(|b| *b == 0).filter(|p| !p.is_empty());
    let head = std::str::from_utf8(parts.next()?).ok()?;
    let (action, devpath) = head.split_once('@')?;
    let mut vars = BTreeMap::new();
    for p in parts {
        let s = std::str::from_utf8(p).ok()?;
        if let Some((k, v)) = s.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    if vars.get("ACTION").is_some_and(|a| a != action) {
        return None;
    }
    Some(Uevent {
        action: action.to_string(),
        devpath: devpath.to_string(),
        vars,
    })
}

/// A node a uevent brings or takes away, for one device of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Plug(UnixDev),
    Unplug { name: String, path: String },
}

fn get(dev: &StringMap, k: &str) -> Option<String> {
    dev.get(k).filter(|v| !v.is_empty()).cloned()
}

/// The node of a device, owned and moded as the instance's device `dev` says.
fn node(name: &str, dev: &StringMap, path: String, block: bool, maj: u32, min: u32) -> UnixDev {
    let num = |k: &str, d: u32| dev.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    UnixDev {
        name: name.to_string(),
        path,
        block,
        major: maj,
        minor: min,
        uid: num("uid", 0),
        gid: num("gid", 0),
        mode: dev
            .get("mode")
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(0o660),
    }
}

/// The USB ids (`idVendor`, `idProduct`) of `dir` or its closest ancestor that has them.
fn usb_ids(dir: &Path) -> Option<(String, String)> {
    let mut cur = std::fs::canonicalize(dir).ok()?;
    loop {
        let v = std::fs::read_to_string(cur.join("idVendor"));
        let p = std::fs::read_to_string(cur.join("idProduct"));
        if let (Ok(v), Ok(p)) = (v, p) {
            return Some((v.trim().to_ascii_lowercase(), p.trim().to_ascii_lowercase()));
        }
        if !cur.pop() || cur == Path::new("/sys") || cur == Path::new("/") {
            return None;
        }
    }
}

fn id_eq(want: &Option<String>, have: &str) -> bool {
    want.as_deref()
        .is_none_or(|w| w.eq_ignore_ascii_case(have.trim_start_matches("0x")))
}

/// What uevent `ev` means for an instance with expanded `devices` (`sysfs`: where `/sys` is).
pub fn changes(ev: &Uevent, devices: &Devices, sysfs: &Path) -> Vec<Change> {
    let Some(devname) = ev.var("DEVNAME") else {
        return Vec::new();
    };
    let path = format!("/dev/{}", devname.trim_start_matches("/dev/"));
    let (Some(maj), Some(min)) = (
        ev.var("MAJOR").and_then(|m| m.parse::<u32>().ok()),
        ev.var("MINOR").and_then(|m| m.parse::<u32>().ok()),
    ) else {
        return Vec::new();
    };
    let dir = sysfs.join(ev.devpath.trim_start_matches('/'));
    let adding = ev.action == "add";
    if !adding && ev.action != "remove" {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (name, dev) in devices {
        let t = dev.get("type").map(String::as_str).unwrap_or("");
        let ids = match t {
            "usb" if ev.var("DEVTYPE") == Some("usb_device") => {
                // PRODUCT=vid/pid/bcd, in hex without leading zeros.
                let mut it = ev.var("PRODUCT").unwrap_or("").split('/');
                let vid = format!("{:0>4}", it.next().unwrap_or(""));
                let pid = format!("{:0>4}", it.next().unwrap_or(""));
                Some((vid, pid))
            }
            "unix-hotplug" if adding => usb_ids(&dir),
            // A device that is gone has no sysfs left to ask: its node goes if it was plugged.
            "unix-hotplug" => Some((String::new(), String::new())),
            _ => None,
        };
        let Some((vid, pid)) = ids else { continue };
        if !adding {
            out.push(Change::Unplug {
                name: name.clone(),
                path: path.clone(),
            });
            continue;
        }
        if !id_eq(&get(dev, "vendorid"), &vid) || !id_eq(&get(dev, "productid"), &pid) {
            continue;
        }
        if t == "usb" {
            if let Some(want) = get(dev, "serial") {
                let have = std::fs::read_to_string(dir.join("serial")).unwrap_or_default();
                if have.trim() != want {
                    continue;
                }
            }
        }
        let block = ev.var("SUBSYSTEM") == Some("block");
        out.push(Change::Plug(node(name, dev, path.clone(), block, maj, min)));
    }
    out
}

/// The nodes of the `unix-hotplug` devices among `devices` present now (at start or when the
/// device is added): every char and block device whose USB ancestor matches.
pub fn present(devices: &Devices, sysfs: &Path) -> Vec<UnixDev> {
    let mut out = Vec::new();
    // The unix-hotplug devices alone: a usb device is matched on its own uevents only.
    let only = crate::util::sort::entries_where(devices, |_, d| {
        d.get("type").map(String::as_str) == Some("unix-hotplug")
    });
    if only.is_empty() {
        return out;
    }
    for (kind, block) in [("char", false), ("block", true)] {
        let base = sysfs.join("dev").join(kind);
        let Ok(rd) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in rd.flatten() {
            let dir = e.path();
            let Ok(uevent) = std::fs::read_to_string(dir.join("uevent")) else {
                continue;
            };
            let mut msg = b"add@/x\0".to_vec();
            for line in uevent.lines() {
                msg.extend_from_slice(line.as_bytes());
                msg.push(0);
            }
            if block {
                msg.extend_from_slice(b"SUBSYSTEM=block\0");
            }
            let Some(mut ev) = parse(&msg) else { continue };
            ev.devpath = std::fs::canonicalize(&dir)
                .ok()
                .and_then(|p| {
                    p.strip_prefix(sysfs)
                        .ok()
                        .map(|p| format!("/{}", p.display()))
                })
                .unwrap_or_default();
            for c in changes(&ev, &only, sysfs) {
                if let Change::Plug(n) = c {
                    out.push(n);
                }
            }
        }
    }
    crate::util::sort::sort_by_key(&mut out, |n| (n.name.clone(), n.path.clone()));
    out
}

/// Start the listener thread (for the daemon's life). A host where the socket cannot be opened
/// (a sandbox without netlink) logs why: hot-plugged USB devices then reach instances at their
/// next start only.
pub fn spawn(d: Arc<Ctx>) {
    let sock = match open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bivy: uevents: {e}: USB and unix-hotplug devices are plugged at start only");
            return;
        }
    };
    let r = std::thread::Builder::new()
        .name("uevents".into())
        .stack_size(128 * 1024)
        .spawn(move || listen(&d, &sock));
    if let Err(e) = r {
        eprintln!("bivy: uevents: thread: {e}");
    }
}

fn open() -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{netlink, AddressFamily, SocketFlags, SocketType};
    let s = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::KOBJECT_UEVENT),
    )?;
    rustix::net::bind(&s, &netlink::SocketAddrNetlink::new(0, 1))?;
    Ok(s)
}

fn listen(d: &Arc<Ctx>, sock: &std::os::fd::OwnedFd) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (n, from) = match rustix::net::recvfrom(sock, &mut buf, rustix::net::RecvFlags::empty())
        {
            Ok((n, _, from)) => (n, from),
            // ENOBUFS: the kernel dropped events in a storm; go on with the next ones.
            Err(rustix::io::Errno::NOBUFS) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                eprintln!("bivy: uevents: {e}; listener stopped");
                return;
            }
        };
        let kernel = from
            .and_then(|a| rustix::net::netlink::SocketAddrNetlink::try_from(a).ok())
            .is_some_and(|a| a.pid() == 0);
        if !kernel {
            continue;
        }
        let Some(ev) = parse(&buf[..n.min(buf.len())]) else {
            continue;
        };
        if ev.var("DEVNAME").is_some() {
            apply(d, &ev);
        }
    }
}

/// Plug or unplug `ev`'s node in every running instance whose devices ask for it.
fn apply(d: &Ctx, ev: &Uevent) {
    let instances: Vec<(String, Devices)> = {
        let db = d.db.lock().expect("db lock");
        db.data
            .instances
            .iter()
            .map(|(n, r)| {
                let (_, devs) =
                    super::config::expand(&r.profiles, &db.data.profiles, &r.config, &r.devices);
                (n.clone(), devs)
            })
            .filter(|(_, devs)| {
                devs.values().any(|x| {
                    matches!(
                        x.get("type").map(String::as_str),
                        Some("usb" | "unix-hotplug")
                    )
                })
            })
            .collect()
    };
    for (name, devs) in instances {
        if !matches!(
            super::view::state_of(d, &name),
            Ok(crate::runtime::State::Running { .. })
        ) {
            continue;
        }
        let run = d.run_dir(&name);
        for c in changes(ev, &devs, Path::new("/sys")) {
            let r = match &c {
                Change::Plug(n) => crate::runtime::plug_node(&run, n.clone()),
                Change::Unplug { name: dev, path } => crate::runtime::unplug_node(&run, dev, path),
            };
            if let Err(e) = r {
                eprintln!("bivy: {name}: {} {}: {e}", ev.action, ev.devpath);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::tempdir::TempDir;

    fn dev(kv: &[(&str, &str)]) -> StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn msg(head: &str, vars: &[&str]) -> Vec<u8> {
        let mut m = format!("{head}\0").into_bytes();
        for v in vars {
            m.extend_from_slice(v.as_bytes());
            m.push(0);
        }
        m
    }

    #[test]
    fn kernel_messages_parse_and_udev_ones_do_not() {
        let m = msg(
            "add@/devices/pci0000:00/usb1/1-2",
            &[
                "ACTION=add",
                "DEVPATH=/devices/pci0000:00/usb1/1-2",
                "MAJOR=189",
            ],
        );
        let ev = parse(&m).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.devpath, "/devices/pci0000:00/usb1/1-2");
        assert_eq!(ev.var("MAJOR"), Some("189"));
        assert!(parse(b"libudev\0\xfe\xed\xca\xfe").is_none());
        assert!(parse(&msg("add@/x", &["ACTION=remove"])).is_none());
        assert!(parse(b"").is_none());
    }

    #[test]
    fn usb_events_plug_and_unplug_matching_devices() {
        let t = TempDir::new("uevents");
        let sys = t.path();
        std::fs::create_dir_all(sys.join("devices/usb1/1-2")).unwrap();
        std::fs::write(sys.join("devices/usb1/1-2/serial"), "S1\n").unwrap();
        let mut devices = Devices::new();
        devices.insert(
            "modem".into(),
            dev(&[("type", "usb"), ("vendorid", "046d"), ("mode", "0600")]),
        );
        devices.insert(
            "other".into(),
            dev(&[("type", "usb"), ("vendorid", "1a86"), ("serial", "S1")]),
        );
        devices.insert("disk".into(), dev(&[("type", "disk")]));
        let add = parse(&msg(
            "add@/devices/usb1/1-2",
            &[
                "ACTION=add",
                "SUBSYSTEM=usb",
                "DEVTYPE=usb_device",
                "PRODUCT=46d/c52b/1211",
                "MAJOR=189",
                "MINOR=5",
                "DEVNAME=bus/usb/001/006",
            ],
        ))
        .unwrap();
        let c = changes(&add, &devices, sys);
        assert_eq!(c.len(), 1, "{c:?}");
        let Change::Plug(n) = &c[0] else { panic!() };
        assert_eq!(
            (
                n.name.as_str(),
                n.path.as_str(),
                n.major,
                n.minor,
                n.mode,
                n.block
            ),
            ("modem", "/dev/bus/usb/001/006", 189, 5, 0o600, false)
        );
        // Interfaces are not devices.
        let mut iface = add.clone();
        iface.vars.insert("DEVTYPE".into(), "usb_interface".into());
        assert!(changes(&iface, &devices, sys).is_empty());
        // The serial must match when given.
        let mut other = add.clone();
        other.vars.insert("PRODUCT".into(), "1a86/7523/264".into());
        assert_eq!(changes(&other, &devices, sys).len(), 1);
        std::fs::write(sys.join("devices/usb1/1-2/serial"), "S2\n").unwrap();
        assert!(changes(&other, &devices, sys).is_empty());
        // Remove: every usb device's node at that path goes (the runtime knows which it has).
        let mut rm = add.clone();
        rm.action = "remove".into();
        let c = changes(&rm, &devices, sys);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c.contains(&Change::Unplug {
            name: "modem".into(),
            path: "/dev/bus/usb/001/006".into()
        }));
    }

    #[test]
    fn unix_hotplug_matches_a_usb_ancestor() {
        let t = TempDir::new("uevents-hp");
        let sys = t.path();
        let usbdev = sys.join("devices/usb1/1-3");
        let tty = usbdev.join("1-3:1.0/ttyUSB0/tty/ttyUSB0");
        std::fs::create_dir_all(&tty).unwrap();
        std::fs::write(usbdev.join("idVendor"), "1a86\n").unwrap();
        std::fs::write(usbdev.join("idProduct"), "7523\n").unwrap();
        std::fs::write(tty.join("uevent"), "MAJOR=188\nMINOR=0\nDEVNAME=ttyUSB0\n").unwrap();
        std::fs::create_dir_all(sys.join("dev/char")).unwrap();
        std::os::unix::fs::symlink(&tty, sys.join("dev/char/188:0")).unwrap();
        let mut devices = Devices::new();
        devices.insert(
            "serial".into(),
            dev(&[
                ("type", "unix-hotplug"),
                ("vendorid", "1a86"),
                ("productid", "7523"),
            ]),
        );
        let found = present(&devices, sys);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].path.as_str(), found[0].major, found[0].minor),
            ("/dev/ttyUSB0", 188, 0)
        );
        devices
            .get_mut("serial")
            .unwrap()
            .insert("productid".into(), "0001".into());
        assert!(present(&devices, sys).is_empty());
    }
}
