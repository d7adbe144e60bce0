//! Host facts the runtime needs, probed once per process: the default id range for containers
//! (root's /etc/subuid and /etc/subgid entries, else 1000000:1000000000), idmapped-mount support,
//! the kernel version and the cgroup layout; and whether bivy runs nested ([`nested`]).

use std::path::Path;
use std::sync::OnceLock;

use super::IdMapEntry;

/// Everything probed about the host.
pub struct Host {
    pub uid_range: IdMapEntry,
    pub gid_range: IdMapEntry,
    /// Kernel release (`uname -r`) and its (major, minor).
    pub kernel_release: String,
    pub kernel_version: (u32, u32),
    /// Whether `/var/lib` (where container roots normally live) can be idmapped.
    pub idmap_var_lib: bool,
    /// The cgroup hierarchies as mounted on the host.
    pub cgroup_v1: Vec<(String, String)>,
    pub cgroup_unified: Option<std::path::PathBuf>,
    pub cgroup_v2_only: bool,
}

const DEFAULT_RANGE: IdMapEntry = IdMapEntry {
    nsid: 0,
    hostid: 1_000_000,
    count: 1_000_000_000,
};

/// Root's range from a subuid/subgid file's text (`root:100000:65536`; the first root line wins;
/// entries below 65536 ids are ignored as LXD does).
pub fn parse_subid(text: &str) -> Option<IdMapEntry> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (user, start, count) = (f.next()?, f.next()?, f.next()?);
        if user != "root" && user != "0" {
            return None;
        }
        let (hostid, count) = (
            start.trim().parse().ok()?,
            count.trim().parse::<u32>().ok()?,
        );
        (count >= 65536).then_some(IdMapEntry {
            nsid: 0,
            hostid,
            count,
        })
    })
}

/// Default (uid, gid) ranges for containers: `0 <hostid> <count>` map entries.
pub fn host_id_range() -> (IdMapEntry, IdMapEntry) {
    let h = host();
    (h.uid_range, h.gid_range)
}

pub fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(probe)
}

/// Inside a user namespace whose map is not the full range (bivy nested in a container), the
/// default range is carved out of what this namespace has: ids from 65536 up of its largest
/// extent (LXD does the same), when at least 65536 ids are left.
pub fn carve_from_map(map_text: &str) -> Option<IdMapEntry> {
    let extents: Vec<(u32, u32)> = map_text
        .lines()
        .filter_map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3).then(|| (f[0], f[2]))
        })
        .collect();
    if extents
        .iter()
        .any(|&(ns, count)| ns == 0 && count == u32::MAX)
    {
        return None; // the initial namespace (or a full map): not nested
    }
    let (start, count) = extents.into_iter().max_by_key(|&(_, c)| c)?;
    let end = u64::from(start) + u64::from(count);
    let from = start.max(65536);
    let size = end.checked_sub(u64::from(from))?;
    (size >= 65536).then(|| IdMapEntry {
        nsid: 0,
        hostid: from,
        count: u32::try_from(size).unwrap_or(u32::MAX),
    })
}

fn probe() -> Host {
    let sub = |f: &str, map: &str| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| parse_subid(&t))
            .or_else(|| {
                std::fs::read_to_string(map)
                    .ok()
                    .and_then(|t| carve_from_map(&t))
            })
            .unwrap_or(DEFAULT_RANGE)
    };
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut it = kernel_release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok());
    let kernel_version = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let l = super::confine::cgroup_layout();
    let var_lib = Path::new("/var/lib");
    Host {
        uid_range: sub("/etc/subuid", "/proc/self/uid_map"),
        gid_range: sub("/etc/subgid", "/proc/self/gid_map"),
        kernel_release,
        kernel_version,
        idmap_var_lib: var_lib.exists()
            && super::userns::rootfs_supports_idmap_with(var_lib, &DEFAULT_RANGE),
        cgroup_v1: l.v1,
        cgroup_unified: l.unified,
        cgroup_v2_only: l.v2_only,
    }
}

/// Whether this process runs in a user namespace with a partial map (bivy nested in a
/// container); some setup steps then degrade, each saying so. Apart from [`host`]'s probe,
/// which makes a user namespace (1 ms), so that a container's monitor asks it alone.
pub fn nested() -> bool {
    static NESTED: OnceLock<bool> = OnceLock::new();
    *NESTED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| carve_from_map(&m).is_some() || !m.contains("4294967295"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_parsing() {
        assert_eq!(
            parse_subid("alice:1:70000\nroot:100000:65536\n"),
            Some(IdMapEntry {
                nsid: 0,
                hostid: 100000,
                count: 65536
            })
        );
        assert_eq!(parse_subid("root:100000:1000\n"), None);
        assert_eq!(parse_subid("garbage\n"), None);
    }

    #[test]
    fn nested_ranges_are_carved() {
        assert_eq!(carve_from_map("         0          0 4294967295\n"), None);
        assert_eq!(
            carve_from_map("0 100000 300000\n"),
            Some(IdMapEntry {
                nsid: 0,
                hostid: 65536,
                count: 234464
            })
        );
        assert_eq!(carve_from_map("0 100000 65536\n"), None);
    }
}
