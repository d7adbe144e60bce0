//! Tests of the whole reader on a fake sysfs tree (a laptop-ish machine) and on this host.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::cpu::parse_cpu_list;
use super::cpu::tests::CPUINFO;
use super::memory::parse_meminfo;
use super::memory::tests::MEMINFO;
use super::*;

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
