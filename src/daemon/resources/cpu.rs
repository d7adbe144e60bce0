//! CPUs: sockets, cores and threads from `/sys/devices/system/cpu` (topology, caches, cpufreq,
//! NUMA links, isolated list) joined with the names and clocks in `/proc/cpuinfo`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use super::sysfs::{list, Attrs};
use crate::api::resources::*;

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
pub(super) fn parse_cpu_list(s: &str) -> Vec<i64> {
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
        let cache = Attrs(&p);
        let Some(level) = cache.u64("level") else {
            continue;
        };
        let size = cache
            .str("size")
            .and_then(|s| match s.strip_suffix('K') {
                Some(k) => k.parse::<u64>().ok().map(|n| n * 1024),
                None => match s.strip_suffix('M') {
                    Some(m) => m.parse::<u64>().ok().map(|n| n * 1024 * 1024),
                    None => s.parse().ok(),
                },
            })
            .unwrap_or(0);
        let kind = cache.str("type").unwrap_or_else(|| "Unknown".into());
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

/// A cpufreq kHz file of a `cpuN` directory, in MHz.
fn read_mhz(cpu: Attrs, name: &str) -> Option<u64> {
    cpu.u64(name).map(|k| k / 1000)
}

pub(super) fn cpu(root: &Path, machine: &str) -> io::Result<ResourcesCpu> {
    let base = root.join("sys/devices/system/cpu");
    let cpuinfo = parse_cpuinfo(&fs::read_to_string(root.join("proc/cpuinfo"))?);
    let isolated = Attrs(&base)
        .str("isolated")
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
        let cpu = Attrs(&dir);
        let topo = dir.join("topology");
        if !topo.is_dir() {
            continue; // offline CPUs have no topology (LXD skips them too)
        }
        let num = |f: &str| Attrs(&topo).i64(f).filter(|n| *n >= 0).unwrap_or(0) as u64;
        let (sock, core_id, die) = (num("physical_package_id"), num("core_id"), num("die_id"));
        let info = cpuinfo.get(&(id as u64)).cloned().unwrap_or_default();
        let (socket, cores) = sockets.entry(sock).or_insert_with(|| {
            let s = ResourcesCpuSocket {
                name: info.name.clone(),
                vendor: info.vendor.clone(),
                socket: sock,
                cache: cpu_caches(&dir.join("cache")),
                frequency_minimum: read_mhz(cpu, "cpufreq/cpuinfo_min_freq")
                    .or_else(|| read_mhz(cpu, "cpufreq/scaling_min_freq"))
                    .unwrap_or(0),
                frequency_turbo: read_mhz(cpu, "cpufreq/cpuinfo_max_freq")
                    .or_else(|| read_mhz(cpu, "cpufreq/scaling_max_freq"))
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
                frequency: read_mhz(cpu, "cpufreq/scaling_cur_freq").unwrap_or(info.mhz),
            });
        let online = cpu.u64("online").map(|v| v != 0).unwrap_or(true);
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
        crate::util::sort::sort_by_key(&mut cores, |c| (c.core, c.die));
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::daemon::resources) const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\
model name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 2712.345\nflags\t\t: fpu vme hypervisor\n\n\
processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 1999.9\n\n\
processor\t: 2\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 800.000\n\n\
processor\t: 3\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-7300U CPU @ 2.60GHz\ncpu MHz\t\t: 801.000\n\n";

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
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert!(parse_cpu_list("\n").is_empty());
    }
}
