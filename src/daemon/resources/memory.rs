//! Memory: totals and hugepages from `/proc/meminfo`, per NUMA node from
//! `/sys/devices/system/node/nodeN/meminfo`.

use std::fs;
use std::io;
use std::path::Path;

use super::sysfs::list;
use crate::api::resources::*;

/// The /proc/meminfo (or node meminfo) values LXD uses, in bytes; hugepage counts are pages.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub used: u64,
    pub cached: u64,
    pub buffers: u64,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    pub hugepages_size: u64,
}

/// Parse /proc/meminfo or /sys/devices/system/node/nodeN/meminfo (`Node 0 MemTotal: ... kB`).
pub(super) fn parse_meminfo(text: &str) -> MemInfo {
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

pub(super) fn memory(root: &Path) -> io::Result<ResourcesMemory> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::daemon::resources) const MEMINFO: &str =
        "MemTotal:       16000000 kB\nMemFree:         4000000 kB\n\
MemAvailable:    9000000 kB\nBuffers:          500000 kB\nCached:          3500000 kB\n\
SwapCached:            0 kB\nHugePages_Total:      10\nHugePages_Free:        4\n\
HugePages_Rsvd:        0\nHugepagesize:       2048 kB\n";

    #[test]
    fn meminfo() {
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
}
