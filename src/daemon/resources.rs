//! `GET /1.0/resources`: the host's hardware, read from /proc and /sys the way LXD's
//! `lxd/resources` reads it. Every reader takes the root of the tree to read (`/` on the host,
//! a fake tree in tests). Nothing is guessed: what cannot be read stays zero or empty.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::response::{self, Error, Result};
use crate::api::resources::*;
use crate::http::Response;

/// The handler.
pub fn get() -> Result<Response> {
    let res = read_host().map_err(|e| Error::Internal(format!("Failed to read resources: {e}")))?;
    Ok(response::sync(&res))
}

/// Everything, from the running host.
fn read_host() -> io::Result<Resources> {
    let u = nix::sys::utsname::uname().map_err(io::Error::from)?;
    read(
        Path::new("/"),
        &u.machine().to_string_lossy(),
        &u.release().to_string_lossy(),
    )
}

/// Everything, from the tree under `root`. `machine` and `release` are `uname -m` and `uname -r`
/// (the architecture, and the version LXD gives in-tree drivers).
fn read(root: &Path, machine: &str, release: &str) -> io::Result<Resources> {
    let ids = IdDbs::load(root);
    Ok(Resources {
        cpu: cpu(root, machine)?,
        memory: memory(root)?,
        gpu: gpu(root, release, &ids),
        network: network(root, release, &ids),
        storage: storage(root),
        usb: usb(root, release, &ids),
        pci: pci(root, release, &ids),
        system: system(root),
    })
}

// --- small sysfs helpers -----------------------------------------------------------------------

fn read_str(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_str(p)?.parse().ok()
}

fn read_i64(p: &Path) -> Option<i64> {
    read_str(p)?.parse().ok()
}

fn read_hex(p: &Path) -> Option<u64> {
    u64::from_str_radix(read_str(p)?.trim_start_matches("0x"), 16).ok()
}

/// A `0x1af4` id file as LXD sends it (`1af4`).
fn read_id(p: &Path) -> String {
    read_str(p)
        .map(|s| s.trim_start_matches("0x").to_string())
        .unwrap_or_default()
}

/// The numeric-aware sorted names in a directory (`cpu2` before `cpu10`).
fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort_by_key(|a| natural_key(a));
    v
}

fn natural_key(s: &str) -> (String, u64, String) {
    let head: String = s.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let rest = &s[head.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let tail = rest[digits.len()..].to_string();
    (head, digits.parse().unwrap_or(0), tail)
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// NUMA node of a device: its `numa_node` file when positive, else 0.
fn numa_node_file(dev: &Path) -> u64 {
    read_i64(&dev.join("numa_node"))
        .filter(|n| *n > 0)
        .map(|n| n as u64)
        .unwrap_or(0)
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
fn subsystem(dev: &Path) -> Option<String> {
    link_name(&dev.join("subsystem"))
}

/// PCI address of a device, looking through a virtio device to its PCI parent.
fn pci_address(dev: &Path) -> Option<String> {
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
fn usb_address(dev: &Path) -> Option<String> {
    let d = fs::canonicalize(dev).ok()?;
    if !d.to_string_lossy().contains("/usb") {
        return None;
    }
    let mut p: Option<&Path> = Some(&d);
    while let Some(cur) = p {
        if let (Some(bus), Some(num)) =
            (read_u64(&cur.join("busnum")), read_u64(&cur.join("devnum")))
        {
            return Some(format!("{bus}:{num}"));
        }
        p = cur.parent();
    }
    None
}

/// Vendor and product names from the host's `pci.ids` / `usb.ids`, when installed.
#[derive(Default)]
struct IdDbs {
    pci: BTreeMap<String, (String, BTreeMap<String, String>)>,
    usb: BTreeMap<String, (String, BTreeMap<String, String>)>,
}

impl IdDbs {
    fn load(root: &Path) -> IdDbs {
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

    fn names(
        db: &BTreeMap<String, (String, BTreeMap<String, String>)>,
        vendor: &str,
        product: &str,
    ) -> (String, String) {
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
fn parse_ids(text: &str) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    let mut out: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
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

// --- CPU ---------------------------------------------------------------------------------------

/// What /proc/cpuinfo says about one processor.
#[derive(Debug, Default, Clone, PartialEq)]
struct CpuInfo {
    vendor: String,
    name: String,
    /// `cpu MHz`, truncated.
    mhz: u64,
}

/// /proc/cpuinfo by processor number. `model name` (x86) or `cpu` (powerpc) names the CPU.
fn parse_cpuinfo(text: &str) -> BTreeMap<u64, CpuInfo> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(u64, CpuInfo)> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => {
                if let Some((n, info)) = cur.take() {
                    out.insert(n, info);
                }
                cur = v.parse().ok().map(|n| (n, CpuInfo::default()));
            }
            "vendor_id" => {
                if let Some((_, i)) = cur.as_mut() {
                    i.vendor = v.to_string();
                }
            }
            "model name" | "cpu" => {
                if let Some((_, i)) = cur.as_mut() {
                    i.name = v.to_string();
                }
            }
            "cpu MHz" => {
                if let Some((_, i)) = cur.as_mut() {
                    i.mhz = v.parse::<f64>().map(|f| f as u64).unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    if let Some((n, info)) = cur {
        out.insert(n, info);
    }
    out
}

/// A kernel cpu list (`0-3,8,10-11`).
fn parse_cpu_list(s: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for chunk in s.trim().split(',').filter(|c| !c.is_empty()) {
        match chunk.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(chunk.trim().parse::<i64>().ok()),
        }
    }
    out
}

fn cpu_caches(dir: &Path) -> Vec<ResourcesCpuCache> {
    let mut out = Vec::new();
    for e in list(dir) {
        let p = dir.join(&e);
        let Some(level) = read_u64(&p.join("level")) else {
            continue;
        };
        let size = read_str(&p.join("size"))
            .and_then(|s| match s.strip_suffix('K') {
                Some(k) => k.parse::<u64>().ok().map(|n| n * 1024),
                None => match s.strip_suffix('M') {
                    Some(m) => m.parse::<u64>().ok().map(|n| n * 1024 * 1024),
                    None => s.parse().ok(),
                },
            })
            .unwrap_or(0);
        let kind = read_str(&p.join("type")).unwrap_or_else(|| "Unknown".into());
        out.push(ResourcesCpuCache { level, kind, size });
    }
    out
}

/// The NUMA node a `cpuN` directory links to (`node0`), else 0.
fn cpu_numa_node(dir: &Path) -> u64 {
    list(dir)
        .iter()
        .filter_map(|n| n.strip_prefix("node")?.parse().ok())
        .next()
        .unwrap_or(0)
}

/// kHz file -> MHz.
fn read_mhz(p: &Path) -> Option<u64> {
    read_u64(p).map(|k| k / 1000)
}

fn cpu(root: &Path, machine: &str) -> io::Result<ResourcesCpu> {
    let base = root.join("sys/devices/system/cpu");
    let cpuinfo = parse_cpuinfo(&fs::read_to_string(root.join("proc/cpuinfo"))?);
    let isolated = read_str(&base.join("isolated"))
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    fs::read_dir(&base)?; // the directory must be there

    // socket -> (socket data, (die, core) -> core data)
    type Cores = BTreeMap<(u64, u64), ResourcesCpuCore>;
    let mut sockets: BTreeMap<u64, (ResourcesCpuSocket, Cores)> = BTreeMap::new();
    let mut total = 0;
    for name in list(&base) {
        let Some(id) = name.strip_prefix("cpu").and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let dir = base.join(&name);
        let topo = dir.join("topology");
        if !topo.is_dir() {
            continue; // offline CPUs have no topology (LXD skips them too)
        }
        let num = |f: &str| read_i64(&topo.join(f)).filter(|n| *n >= 0).unwrap_or(0) as u64;
        let (sock, core_id, die) = (num("physical_package_id"), num("core_id"), num("die_id"));
        let info = cpuinfo.get(&(id as u64)).cloned().unwrap_or_default();
        let (socket, cores) = sockets.entry(sock).or_insert_with(|| {
            let s = ResourcesCpuSocket {
                name: info.name.clone(),
                vendor: info.vendor.clone(),
                socket: sock,
                cache: cpu_caches(&dir.join("cache")),
                frequency_minimum: read_mhz(&dir.join("cpufreq/cpuinfo_min_freq"))
                    .or_else(|| read_mhz(&dir.join("cpufreq/scaling_min_freq")))
                    .unwrap_or(0),
                frequency_turbo: read_mhz(&dir.join("cpufreq/cpuinfo_max_freq"))
                    .or_else(|| read_mhz(&dir.join("cpufreq/scaling_max_freq")))
                    .unwrap_or(0),
                ..Default::default()
            };
            (s, BTreeMap::new())
        });
        if socket.vendor.is_empty() {
            socket.vendor = info.vendor.clone();
        }
        if socket.name.is_empty() {
            socket.name = info.name.clone();
        }
        let core = cores
            .entry((die, core_id))
            .or_insert_with(|| ResourcesCpuCore {
                core: core_id,
                die,
                threads: Vec::new(),
                // cpufreq when the kernel has it, else what /proc/cpuinfo reports.
                frequency: read_mhz(&dir.join("cpufreq/scaling_cur_freq")).unwrap_or(info.mhz),
            });
        let online = read_u64(&dir.join("online"))
            .map(|v| v != 0)
            .unwrap_or(true);
        core.threads.push(ResourcesCpuThread {
            id,
            numa_node: cpu_numa_node(&dir),
            thread: core.threads.len() as u64,
            online,
            isolated: isolated.contains(&id),
        });
        total += 1;
    }

    let mut out = ResourcesCpu {
        architecture: machine.to_string(),
        sockets: Vec::new(),
        total,
    };
    for (_, (mut socket, cores)) in sockets {
        let mut cores: Vec<ResourcesCpuCore> = cores.into_values().collect();
        cores.sort_by_key(|c| (c.core, c.die));
        let freqs: Vec<u64> = cores
            .iter()
            .map(|c| c.frequency)
            .filter(|f| *f > 0)
            .collect();
        if !freqs.is_empty() {
            socket.frequency = freqs.iter().sum::<u64>() / freqs.len() as u64;
        }
        socket.cores = cores;
        out.sockets.push(socket);
    }
    Ok(out)
}

// --- Memory ------------------------------------------------------------------------------------

/// The /proc/meminfo (or node meminfo) values LXD uses, in bytes; hugepage counts are pages.
#[derive(Debug, Default, Clone, PartialEq)]
struct MemInfo {
    total: u64,
    free: u64,
    used: u64,
    cached: u64,
    buffers: u64,
    hugepages_total: u64,
    hugepages_free: u64,
    hugepages_size: u64,
}

/// Parse /proc/meminfo or /sys/devices/system/node/nodeN/meminfo (`Node 0 MemTotal: ... kB`).
fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let key = k.split_whitespace().last().unwrap_or("");
        let mut parts = v.split_whitespace();
        let Some(n) = parts.next().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let n = match parts.next() {
            Some("kB") => n * 1024,
            _ => n,
        };
        match key {
            "MemTotal" => m.total = n,
            "MemFree" => m.free = n,
            "MemUsed" => m.used = n,
            "Cached" => m.cached = n,
            "Buffers" => m.buffers = n,
            "HugePages_Total" => m.hugepages_total = n,
            "HugePages_Free" => m.hugepages_free = n,
            "Hugepagesize" => m.hugepages_size = n,
            _ => {}
        }
    }
    m
}

fn memory(root: &Path) -> io::Result<ResourcesMemory> {
    let info = parse_meminfo(&fs::read_to_string(root.join("proc/meminfo"))?);
    let size = info.hugepages_size;
    let mut out = ResourcesMemory {
        nodes: Vec::new(),
        hugepages_total: info.hugepages_total * size,
        hugepages_used: info.hugepages_total.saturating_sub(info.hugepages_free) * size,
        hugepages_size: size,
        used: info
            .total
            .saturating_sub(info.free)
            .saturating_sub(info.cached)
            .saturating_sub(info.buffers),
        total: info.total,
    };
    let nodes = root.join("sys/devices/system/node");
    for name in list(&nodes) {
        let Some(n) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(text) = fs::read_to_string(nodes.join(&name).join("meminfo")) else {
            continue;
        };
        let ni = parse_meminfo(&text);
        out.nodes.push(ResourcesMemoryNode {
            numa_node: n,
            hugepages_used: ni.hugepages_total.saturating_sub(ni.hugepages_free) * size,
            hugepages_total: ni.hugepages_total * size,
            used: ni.used,
            total: ni.total,
        });
    }
    Ok(out)
}

// --- PCI ---------------------------------------------------------------------------------------

fn pci_ids(dev: &Path, ids: &IdDbs) -> (String, String, String, String) {
    let vendor_id = read_id(&dev.join("vendor"));
    let product_id = read_id(&dev.join("device"));
    let (vendor, product) = IdDbs::names(&ids.pci, &vendor_id, &product_id);
    (vendor, vendor_id, product, product_id)
}

fn pci(root: &Path, release: &str, ids: &IdDbs) -> ResourcesPci {
    let base = root.join("sys/bus/pci/devices");
    let mut out = ResourcesPci::default();
    for addr in list(&base) {
        let dev = base.join(&addr);
        let (driver, driver_version) = driver(&dev, release);
        let (vendor, vendor_id, product, product_id) = pci_ids(&dev, ids);
        out.devices.push(ResourcesPciDevice {
            driver,
            driver_version,
            numa_node: numa_node_file(&dev),
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

// --- GPU ---------------------------------------------------------------------------------------

/// The DRM nodes under `<device>/drm`: `cardN`, `controlDN`, `renderDN`.
fn gpu_drm(dev: &Path) -> Option<ResourcesGpuCardDrm> {
    let drm = dev.join("drm");
    let mut out: Option<ResourcesGpuCardDrm> = None;
    for name in list(&drm) {
        let devnum = read_str(&drm.join(&name).join("dev")).unwrap_or_default();
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

fn gpu(root: &Path, release: &str, ids: &IdDbs) -> ResourcesGpu {
    let mut out = ResourcesGpu::default();
    let mut seen: Vec<PathBuf> = Vec::new();
    // Display controllers on the PCI bus (class 0x03xxxx), as LXD finds them.
    let base = root.join("sys/bus/pci/devices");
    for addr in list(&base) {
        let dev = base.join(&addr);
        if read_hex(&dev.join("class")).map(|c| c >> 16) != Some(0x03) {
            continue;
        }
        let (driver, driver_version) = driver(&dev, release);
        let (vendor, vendor_id, product, product_id) = pci_ids(&dev, ids);
        let sriov = read_u64(&dev.join("sriov_totalvfs")).map(|max| ResourcesGpuCardSriov {
            current_vfs: read_u64(&dev.join("sriov_numvfs")).unwrap_or(0),
            maximum_vfs: max,
            vfs: Vec::new(),
        });
        seen.extend(fs::canonicalize(&dev).ok());
        out.cards.push(ResourcesGpuCard {
            driver,
            driver_version,
            drm: gpu_drm(&dev),
            sriov,
            numa_node: numa_node_file(&dev),
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
        let (driver, driver_version) = driver(&dev, release);
        seen.push(dev.clone());
        out.cards.push(ResourcesGpuCard {
            driver,
            driver_version,
            drm: gpu_drm(&dev),
            numa_node: numa_node_file(&dev),
            usb_address: usb_address(&dev).unwrap_or_default(),
            ..Default::default()
        });
    }
    out.total = out.cards.len() as u64;
    out
}

// --- Network -----------------------------------------------------------------------------------

fn network(root: &Path, release: &str, ids: &IdDbs) -> ResourcesNetwork {
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
            let (driver, driver_version) = driver(&dev, release);
            let mut card = ResourcesNetworkCard {
                driver,
                driver_version,
                usb_address: usb_address(&dev).unwrap_or_default(),
                ..Default::default()
            };
            if let Some(addr) = &pci {
                let pdev = root.join("sys/bus/pci/devices").join(addr);
                let (vendor, vendor_id, product, product_id) = pci_ids(&pdev, ids);
                card.numa_node = numa_node_file(&pdev);
                card.pci_address = addr.clone();
                (card.vendor, card.vendor_id, card.product, card.product_id) =
                    (vendor, vendor_id, product, product_id);
                card.sriov =
                    read_u64(&pdev.join("sriov_totalvfs")).map(|max| ResourcesNetworkCardSriov {
                        current_vfs: read_u64(&pdev.join("sriov_numvfs")).unwrap_or(0),
                        maximum_vfs: max,
                        vfs: Vec::new(),
                    });
            } else {
                card.numa_node = numa_node_file(&dev);
            }
            out.cards.push(card);
            out.cards.len() - 1
        });
        let card = &mut out.cards[i];
        let protocol = match read_u64(&iface.join("type")) {
            Some(32) => "infiniband",
            _ => "ethernet",
        };
        let carrier = read_u64(&iface.join("carrier")) == Some(1);
        let speed = read_i64(&iface.join("speed"))
            .filter(|s| *s > 0)
            .unwrap_or(0) as u64;
        let duplex = read_str(&iface.join("duplex"))
            .filter(|d| d != "unknown")
            .unwrap_or_default();
        card.ports.push(ResourcesNetworkCardPort {
            id: name.clone(),
            address: read_str(&iface.join("address")).unwrap_or_default(),
            port: read_u64(&iface.join("dev_port")).unwrap_or(card.ports.len() as u64),
            protocol: protocol.into(),
            link_detected: carrier,
            link_speed: if carrier { speed } else { 0 },
            link_duplex: if carrier { duplex } else { String::new() },
            ..Default::default()
        });
    }
    // Network controllers (class 0x02xxxx) with no interface on the host (unbound, or
    // handed to a VM) are cards without ports.
    let base = root.join("sys/bus/pci/devices");
    for addr in list(&base) {
        let dev = base.join(&addr);
        if index.contains_key(&addr) || read_hex(&dev.join("class")).map(|c| c >> 16) != Some(0x02)
        {
            continue;
        }
        let (driver, driver_version) = driver(&dev, release);
        let (vendor, vendor_id, product, product_id) = pci_ids(&dev, ids);
        out.cards.push(ResourcesNetworkCard {
            driver,
            driver_version,
            numa_node: numa_node_file(&dev),
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

// --- Storage -----------------------------------------------------------------------------------

fn storage(root: &Path) -> ResourcesStorage {
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
            let Some(number) = read_u64(&p.join("partition")) else {
                continue;
            };
            partitions.push(ResourcesStorageDiskPartition {
                id: sub.clone(),
                device: read_str(&p.join("dev")).unwrap_or_default(),
                read_only: read_u64(&p.join("ro")) == Some(1),
                size: read_u64(&p.join("size")).unwrap_or(0) * 512,
                partition: number,
            });
        }
        let first = |files: &[PathBuf]| files.iter().find_map(|f| read_str(f)).unwrap_or_default();
        out.disks.push(ResourcesStorageDisk {
            id: name.clone(),
            device: read_str(&entry.join("dev")).unwrap_or_default(),
            model: read_str(&dev.join("model")).unwrap_or_default(),
            kind: subsystem(&dev).unwrap_or_default(),
            read_only: read_u64(&entry.join("ro")) == Some(1),
            size: read_u64(&entry.join("size")).unwrap_or(0) * 512,
            removable: read_u64(&entry.join("removable")) == Some(1),
            wwn: first(&[entry.join("wwid"), dev.join("wwid")]),
            numa_node: numa_node_file(&dev),
            block_size: read_u64(&entry.join("queue/logical_block_size")).unwrap_or(0),
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

// --- USB ---------------------------------------------------------------------------------------

fn usb(root: &Path, release: &str, ids: &IdDbs) -> ResourcesUsb {
    let base = root.join("sys/bus/usb/devices");
    let names = list(&base);
    let mut out = ResourcesUsb::default();
    for name in &names {
        // Interfaces are `dev:cfg.if`; root hubs are `usbN`.
        if name.contains(':') || name.starts_with("usb") {
            continue;
        }
        let dev = base.join(name);
        let vendor_id = read_str(&dev.join("idVendor")).unwrap_or_default();
        let product_id = read_str(&dev.join("idProduct")).unwrap_or_default();
        let (mut vendor, mut product) = IdDbs::names(&ids.usb, &vendor_id, &product_id);
        if vendor.is_empty() {
            vendor = read_str(&dev.join("manufacturer")).unwrap_or_default();
        }
        if product.is_empty() {
            product = read_str(&dev.join("product")).unwrap_or_default();
        }
        let prefix = format!("{name}:");
        let interfaces = names
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .map(|n| {
                let i = base.join(n);
                let (driver, driver_version) = driver(&i, release);
                ResourcesUsbDeviceInterface {
                    class_id: read_hex(&i.join("bInterfaceClass")).unwrap_or(0),
                    subclass_id: read_hex(&i.join("bInterfaceSubClass")).unwrap_or(0),
                    number: read_hex(&i.join("bInterfaceNumber")).unwrap_or(0),
                    driver,
                    driver_version,
                    ..Default::default()
                }
            })
            .collect();
        out.devices.push(ResourcesUsbDevice {
            bus_address: read_u64(&dev.join("busnum")).unwrap_or(0),
            device_address: read_u64(&dev.join("devnum")).unwrap_or(0),
            interfaces,
            vendor,
            vendor_id,
            product,
            product_id,
            speed: read_str(&dev.join("speed"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0),
        });
    }
    out.total = out.devices.len() as u64;
    out
}

// --- System ------------------------------------------------------------------------------------

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
    if read_str(&root.join("sys/hypervisor/type")).is_some_and(|t| !t.is_empty()) {
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

fn system(root: &Path) -> ResourcesSystem {
    let dmi = root.join("sys/class/dmi/id");
    let mut out = ResourcesSystem {
        kind: system_type(root),
        ..Default::default()
    };
    if !dmi.is_dir() {
        return out;
    }
    let r = |f: &str| read_str(&dmi.join(f)).unwrap_or_default();
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
        kind: read_u64(&dmi.join("chassis_type"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\
model name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 2712.345\nflags\t\t: fpu vme hypervisor\n\n\
processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 1999.9\n\n\
processor\t: 2\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 800.000\n\n\
processor\t: 3\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 801.000\n\n";

    const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:         4000000 kB\n\
MemAvailable:    9000000 kB\nBuffers:          500000 kB\nCached:          3500000 kB\n\
SwapCached:            0 kB\nHugePages_Total:      10\nHugePages_Free:        4\n\
HugePages_Rsvd:        0\nHugepagesize:       2048 kB\n";

    fn w(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// A relative symlink `rel` -> `target` (relative to the link's directory), like sysfs's.
    fn ln(root: &Path, rel: &str, target: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }

    fn fake_root(name: &str) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-resources")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    /// A laptop-ish tree: 1 socket, 2 cores x 2 threads (+ an offline cpu4), an Intel GPU,
    /// a virtio NIC, a virtio disk with one partition, a loop device, a USB mouse, DMI.
    fn build_tree(root: &Path) {
        w(root, "proc/cpuinfo", CPUINFO);
        w(root, "proc/meminfo", MEMINFO);
        let cpu = "sys/devices/system/cpu";
        for (n, core) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
            let t = format!("{cpu}/cpu{n}/topology");
            w(root, &format!("{t}/physical_package_id"), "0\n");
            w(root, &format!("{t}/core_id"), &format!("{core}\n"));
            w(root, &format!("{t}/die_id"), "0\n");
            fs::create_dir_all(root.join(format!("{cpu}/cpu{n}/node0"))).unwrap();
            if n > 0 {
                w(root, &format!("{cpu}/cpu{n}/online"), "1\n");
            }
        }
        w(root, &format!("{cpu}/cpu4/online"), "0\n"); // offline: no topology
        w(root, &format!("{cpu}/isolated"), "3\n");
        w(root, &format!("{cpu}/online"), "0-3\n");
        w(root, &format!("{cpu}/cpu0/cache/index0/level"), "1\n");
        w(root, &format!("{cpu}/cpu0/cache/index0/type"), "Data\n");
        w(root, &format!("{cpu}/cpu0/cache/index0/size"), "32K\n");
        w(root, &format!("{cpu}/cpu0/cache/index3/level"), "3\n");
        w(root, &format!("{cpu}/cpu0/cache/index3/type"), "Unified\n");
        w(root, &format!("{cpu}/cpu0/cache/index3/size"), "3072K\n");
        w(
            root,
            &format!("{cpu}/cpu0/cpufreq/scaling_cur_freq"),
            "3000000\n",
        );
        w(
            root,
            &format!("{cpu}/cpu0/cpufreq/cpuinfo_min_freq"),
            "400000\n",
        );
        w(
            root,
            &format!("{cpu}/cpu0/cpufreq/cpuinfo_max_freq"),
            "3500000\n",
        );
        w(
            root,
            "sys/devices/system/node/node0/meminfo",
            "Node 0 MemTotal: 16000000 kB\nNode 0 MemFree: 4000000 kB\nNode 0 MemUsed: 12000000 kB\n\
Node 0 HugePages_Total:    10\nNode 0 HugePages_Free:     4\n",
        );

        // PCI: a GPU, a virtio NIC, a virtio disk controller, an unbound NIC.
        let pci = "sys/devices/pci0000:00";
        ln(
            root,
            "sys/bus/pci/drivers/i915/module",
            "../../../../module/i915",
        );
        w(root, "sys/module/i915/version", "1.6.0\n");
        fs::create_dir_all(root.join("sys/bus/pci/drivers/virtio-pci")).unwrap();
        fs::create_dir_all(root.join("sys/bus/virtio/drivers/virtio_net")).unwrap();
        fs::create_dir_all(root.join("sys/bus/virtio/drivers/virtio_blk")).unwrap();
        for (addr, class, vendor, device, drv) in [
            ("0000:00:02.0", "0x030000", "0x8086", "0x5916", Some("i915")),
            (
                "0000:00:03.0",
                "0x020000",
                "0x1af4",
                "0x1041",
                Some("virtio-pci"),
            ),
            (
                "0000:00:04.0",
                "0x010000",
                "0x1af4",
                "0x1042",
                Some("virtio-pci"),
            ),
            ("0000:00:05.0", "0x020000", "0x8086", "0x1533", None),
        ] {
            let d = format!("{pci}/{addr}");
            w(root, &format!("{d}/class"), class);
            w(root, &format!("{d}/vendor"), vendor);
            w(root, &format!("{d}/device"), device);
            w(root, &format!("{d}/numa_node"), "-1\n");
            ln(root, &format!("{d}/subsystem"), "../../../bus/pci");
            if let Some(drv) = drv {
                ln(
                    root,
                    &format!("{d}/driver"),
                    &format!("../../../bus/pci/drivers/{drv}"),
                );
            }
            ln(
                root,
                &format!("sys/bus/pci/devices/{addr}"),
                &format!("../../../devices/pci0000:00/{addr}"),
            );
        }
        ln(
            root,
            &format!("{pci}/0000:00:02.0/iommu_group"),
            "../../../kernel/iommu_groups/7",
        );
        w(
            root,
            &format!("{pci}/0000:00:02.0/drm/card0/dev"),
            "226:0\n",
        );
        w(
            root,
            &format!("{pci}/0000:00:02.0/drm/renderD128/dev"),
            "226:128\n",
        );
        ln(
            root,
            "sys/class/drm/card0",
            "../../devices/pci0000:00/0000:00:02.0/drm/card0",
        );
        ln(
            root,
            &format!("{pci}/0000:00:02.0/drm/card0/device"),
            "../..",
        );

        let v1 = format!("{pci}/0000:00:03.0/virtio1");
        ln(root, &format!("{v1}/subsystem"), "../../../../bus/virtio");
        ln(
            root,
            &format!("{v1}/driver"),
            "../../../../bus/virtio/drivers/virtio_net",
        );
        w(root, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        w(root, "sys/class/net/eth0/carrier", "1\n");
        w(root, "sys/class/net/eth0/speed", "1000\n");
        w(root, "sys/class/net/eth0/duplex", "full\n");
        w(root, "sys/class/net/eth0/type", "1\n");
        w(root, "sys/class/net/eth0/dev_port", "0\n");
        ln(
            root,
            "sys/class/net/eth0/device",
            "../../../devices/pci0000:00/0000:00:03.0/virtio1",
        );
        w(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n");

        let v2 = format!("{pci}/0000:00:04.0/virtio2");
        ln(root, &format!("{v2}/subsystem"), "../../../../bus/virtio");
        ln(
            root,
            &format!("{v2}/driver"),
            "../../../../bus/virtio/drivers/virtio_blk",
        );
        let b = "sys/class/block";
        w(root, &format!("{b}/vda/dev"), "254:0\n");
        w(root, &format!("{b}/vda/size"), "2097152\n");
        w(root, &format!("{b}/vda/ro"), "0\n");
        w(root, &format!("{b}/vda/removable"), "0\n");
        w(root, &format!("{b}/vda/serial"), "DISK01\n");
        w(root, &format!("{b}/vda/queue/logical_block_size"), "512\n");
        ln(
            root,
            &format!("{b}/vda/device"),
            "../../../devices/pci0000:00/0000:00:04.0/virtio2",
        );
        w(root, &format!("{b}/vda1/dev"), "254:1\n");
        w(root, &format!("{b}/vda1/size"), "2095104\n");
        w(root, &format!("{b}/vda1/ro"), "0\n");
        w(root, &format!("{b}/vda1/partition"), "1\n");
        w(root, &format!("{b}/loop0/dev"), "7:0\n");
        w(root, &format!("{b}/loop0/size"), "0\n");

        let u = "sys/bus/usb/devices";
        w(root, &format!("{u}/usb1/busnum"), "1\n");
        w(root, &format!("{u}/1-1/busnum"), "1\n");
        w(root, &format!("{u}/1-1/devnum"), "3\n");
        w(root, &format!("{u}/1-1/idVendor"), "0557\n");
        w(root, &format!("{u}/1-1/idProduct"), "2221\n");
        w(root, &format!("{u}/1-1/speed"), "1.5\n");
        w(root, &format!("{u}/1-1/manufacturer"), "ATEN\n");
        w(
            root,
            &format!("{u}/1-1/product"),
            "Hermon USB hidmouse Device\n",
        );
        w(root, &format!("{u}/1-1:1.0/bInterfaceClass"), "03\n");
        w(root, &format!("{u}/1-1:1.0/bInterfaceSubClass"), "01\n");
        w(root, &format!("{u}/1-1:1.0/bInterfaceNumber"), "00\n");

        w(
            root,
            "usr/share/misc/pci.ids",
            "# comment\n8086  Intel Corporation\n\t1533  I210 Gigabit Network Connection\n\
\t5916  HD Graphics 620\n\t\t17aa 2245  ThinkPad\n1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n\
C 00  Unclassified device\n\t00  Non-VGA unclassified device\n",
        );

        let dmi = "sys/class/dmi/id";
        w(root, &format!("{dmi}/sys_vendor"), "LENOVO\n");
        w(root, &format!("{dmi}/product_name"), "20HRCTO1WW\n");
        w(
            root,
            &format!("{dmi}/product_uuid"),
            "7fa1c0cc-2271-11b2-a85c-aab32a05d71a\n",
        );
        w(root, &format!("{dmi}/chassis_type"), "10\n");
        w(root, &format!("{dmi}/bios_vendor"), "LENOVO\n");
        w(root, &format!("{dmi}/board_name"), "20HRCTO1WW\n");
    }

    #[test]
    fn cpuinfo_parses_per_processor() {
        let m = parse_cpuinfo(CPUINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[&0].vendor, "GenuineIntel");
        assert_eq!(m[&0].name, "Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz");
        assert_eq!(m[&0].mhz, 2712);
        assert_eq!(m[&1].mhz, 1999);
        // powerpc names the CPU with `cpu`, and has no vendor.
        let ppc = parse_cpuinfo("processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\n");
        assert_eq!(ppc[&0].name, "POWER9 (raw), altivec supported");
        assert_eq!(ppc[&0].vendor, "");
    }

    #[test]
    fn cpu_lists_and_meminfo() {
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert!(parse_cpu_list("\n").is_empty());
        let m = parse_meminfo(MEMINFO);
        assert_eq!(m.total, 16_000_000 * 1024);
        assert_eq!(m.free, 4_000_000 * 1024);
        assert_eq!(m.cached, 3_500_000 * 1024);
        assert_eq!(m.buffers, 500_000 * 1024);
        assert_eq!((m.hugepages_total, m.hugepages_free), (10, 4));
        assert_eq!(m.hugepages_size, 2048 * 1024);
        let n = parse_meminfo("Node 1 MemTotal:  100 kB\nNode 1 MemUsed:   40 kB\n");
        assert_eq!((n.total, n.used), (102_400, 40_960));
    }

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

    #[test]
    fn fake_tree() {
        let root = fake_root("tree");
        build_tree(&root);
        let r = read(&root, "x86_64", "6.1.0-test").unwrap();

        // CPU: one socket, cores 0 and 1 with two threads each, cpu4 (offline) not counted.
        assert_eq!(r.cpu.architecture, "x86_64");
        assert_eq!(r.cpu.total, 4);
        assert_eq!(r.cpu.sockets.len(), 1);
        let s = &r.cpu.sockets[0];
        assert_eq!(s.vendor, "GenuineIntel");
        assert_eq!(s.name, "Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz");
        assert_eq!((s.frequency_minimum, s.frequency_turbo), (400, 3500));
        assert_eq!(s.cache.len(), 2);
        assert_eq!(
            (s.cache[1].level, s.cache[1].kind.as_str(), s.cache[1].size),
            (3, "Unified", 3072 * 1024)
        );
        assert_eq!(s.cores.len(), 2);
        assert_eq!(s.cores[0].core, 0);
        // core 0: cpufreq (3000 MHz); core 1: /proc/cpuinfo of its first thread (cpu1).
        assert_eq!((s.cores[0].frequency, s.cores[1].frequency), (3000, 1999));
        assert_eq!(s.frequency, (3000 + 1999) / 2);
        let ids: Vec<(i64, u64)> = s.cores[1]
            .threads
            .iter()
            .map(|t| (t.id, t.thread))
            .collect();
        assert_eq!(ids, vec![(1, 0), (3, 1)]);
        assert!(s.cores[1].threads[1].isolated && !s.cores[1].threads[0].isolated);
        assert!(s.cores.iter().flat_map(|c| &c.threads).all(|t| t.online));

        // Memory.
        let m = &r.memory;
        assert_eq!(m.total, 16_000_000 * 1024);
        assert_eq!(
            m.used,
            (16_000_000 - 4_000_000 - 3_500_000 - 500_000) * 1024
        );
        assert_eq!(m.hugepages_size, 2 << 20);
        assert_eq!(
            (m.hugepages_total, m.hugepages_used),
            (10 * (2 << 20), 6 * (2 << 20))
        );
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.nodes[0].used, 12_000_000 * 1024);
        assert_eq!(m.nodes[0].hugepages_used, 6 * (2 << 20));

        // GPU: the PCI display controller with its DRM nodes, listed once.
        assert_eq!(r.gpu.total, 1);
        let g = &r.gpu.cards[0];
        assert_eq!(
            (g.driver.as_str(), g.driver_version.as_str()),
            ("i915", "1.6.0")
        );
        assert_eq!(g.pci_address, "0000:00:02.0");
        assert_eq!(
            (g.vendor.as_str(), g.vendor_id.as_str()),
            ("Intel Corporation", "8086")
        );
        assert_eq!(
            (g.product.as_str(), g.product_id.as_str()),
            ("HD Graphics 620", "5916")
        );
        let drm = g.drm.as_ref().unwrap();
        assert_eq!(
            (drm.id, drm.card_name.as_str(), drm.card_device.as_str()),
            (0, "card0", "226:0")
        );
        assert_eq!(
            (drm.render_name.as_str(), drm.render_device.as_str()),
            ("renderD128", "226:128")
        );

        // Network: eth0 on the virtio NIC (PCI address of the virtio parent), plus the
        // unbound I210 without ports; lo is virtual.
        assert_eq!(r.network.total, 2);
        let n = &r.network.cards[0];
        assert_eq!(n.pci_address, "0000:00:03.0");
        assert_eq!(
            (n.driver.as_str(), n.driver_version.as_str()),
            ("virtio_net", "6.1.0-test")
        );
        assert_eq!(n.product, "Virtio 1.0 network device");
        assert_eq!(n.ports.len(), 1);
        let p = &n.ports[0];
        assert_eq!(
            (p.id.as_str(), p.address.as_str(), p.protocol.as_str()),
            ("eth0", "52:54:00:12:34:56", "ethernet")
        );
        assert!(p.link_detected);
        assert_eq!((p.link_speed, p.link_duplex.as_str()), (1000, "full"));
        let i210 = &r.network.cards[1];
        assert_eq!(
            (i210.pci_address.as_str(), i210.driver.as_str()),
            ("0000:00:05.0", "")
        );
        assert!(i210.ports.is_empty());

        // Storage: vda with its partition; loop0 has no device and is left out.
        assert_eq!(r.storage.disks.len(), 1);
        assert_eq!(r.storage.total, 2);
        let d = &r.storage.disks[0];
        assert_eq!(
            (d.id.as_str(), d.device.as_str(), d.kind.as_str()),
            ("vda", "254:0", "virtio")
        );
        assert_eq!(d.size, 1 << 30);
        assert_eq!(
            (d.block_size, d.serial.as_str(), d.pci_address.as_str()),
            (512, "DISK01", "0000:00:04.0")
        );
        assert!(!d.read_only && !d.removable);
        assert_eq!(d.partitions.len(), 1);
        assert_eq!(
            (d.partitions[0].id.as_str(), d.partitions[0].partition),
            ("vda1", 1)
        );
        assert_eq!(d.partitions[0].size, 2_095_104 * 512);

        // USB: the mouse, not the root hub; names from the device when there is no usb.ids.
        assert_eq!(r.usb.total, 1);
        let u = &r.usb.devices[0];
        assert_eq!((u.bus_address, u.device_address), (1, 3));
        assert_eq!(
            (
                u.vendor.as_str(),
                u.vendor_id.as_str(),
                u.product_id.as_str()
            ),
            ("ATEN", "0557", "2221")
        );
        assert_eq!(u.speed, 1.5);
        assert_eq!(u.interfaces.len(), 1);
        assert_eq!(
            (u.interfaces[0].class_id, u.interfaces[0].subclass_id),
            (3, 1)
        );

        // PCI: all four, ids without 0x, numa_node -1 -> 0.
        assert_eq!(r.pci.total, 4);
        assert_eq!(r.pci.devices[0].iommu_group, 7);
        assert_eq!(r.pci.devices[1].vendor_id, "1af4");
        assert_eq!(r.pci.devices[1].driver, "virtio-pci");
        assert_eq!(r.pci.devices[3].driver, "");

        // System.
        assert_eq!(r.system.vendor, "LENOVO");
        assert_eq!(r.system.uuid, "7fa1c0cc-2271-11b2-a85c-aab32a05d71a");
        assert_eq!(r.system.kind, "virtual-machine"); // the `hypervisor` flag
        assert_eq!(r.system.chassis.as_ref().unwrap().kind, "Notebook");
        assert_eq!(r.system.motherboard.as_ref().unwrap().product, "20HRCTO1WW");
        assert_eq!(r.system.firmware.as_ref().unwrap().vendor, "LENOVO");

        // It serializes in LXD's shape.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["cpu"]["sockets"][0]["cores"][0]["threads"][0]["numa_node"],
            0
        );
        assert_eq!(v["storage"]["disks"][0]["type"], "virtio");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn empty_tree_is_an_error_only_for_cpu_and_memory() {
        let root = fake_root("empty");
        assert!(read(&root, "x86_64", "6.1").is_err());
        w(&root, "proc/cpuinfo", "");
        w(&root, "proc/meminfo", "MemTotal: 1024 kB\n");
        fs::create_dir_all(root.join("sys/devices/system/cpu")).unwrap();
        let r = read(&root, "x86_64", "6.1").unwrap();
        assert_eq!((r.cpu.total, r.memory.total), (0, 1 << 20));
        assert!(r.gpu.cards.is_empty() && r.storage.disks.is_empty() && r.pci.devices.is_empty());
        assert_eq!(r.system.firmware, None);
        assert_eq!(r.system.kind, "unknown");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn this_host() {
        let r = read_host().unwrap();
        let online = parse_cpu_list(&fs::read_to_string("/sys/devices/system/cpu/online").unwrap());
        assert_eq!(r.cpu.total, online.len() as u64);
        let threads: u64 = r
            .cpu
            .sockets
            .iter()
            .flat_map(|s| &s.cores)
            .map(|c| c.threads.len() as u64)
            .sum();
        assert_eq!(threads, r.cpu.total);
        let mem = parse_meminfo(&fs::read_to_string("/proc/meminfo").unwrap());
        assert_eq!(r.memory.total, mem.total);
        assert!(r.memory.used <= r.memory.total);
    }
}
