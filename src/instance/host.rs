//! Facts about the host, probed once at start.

use std::path::Path;

/// Facts about the host, probed once at start.
#[derive(Debug, Clone)]
pub struct Host {
    pub hostname: String,
    pub kernel_version: String,
    pub architecture: String,
    pub total_memory: u64,
    pub ncpus: usize,
    pub os_name: String,
    pub os_version: String,
    /// Whether an idmapped mount of `$BIVY_DIR` works (kernel and filesystem): then new
    /// unprivileged volumes on it are idmapped at start instead of shifted on disk, as
    /// `instances::create` decides per volume with the same probe.
    pub idmapped_mounts: bool,
}

impl Host {
    /// Fixed facts, for tests that drive the model and the handlers without the host's.
    pub fn fake() -> Host {
        Host {
            hostname: "testhost".into(),
            kernel_version: "6.1.0-test".into(),
            architecture: "x86_64".into(),
            total_memory: 4 << 30,
            ncpus: 2,
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            idmapped_mounts: false,
        }
    }

    pub fn probe(dir: &Path) -> Host {
        let uts = nix::sys::utsname::uname().ok();
        let s = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uts.as_ref()
                .map(|u| f(u).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let osr = |k: &str| {
            os_release
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let total_memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        Host {
            hostname: s(|u| u.nodename()),
            kernel_version: s(|u| u.release()),
            architecture: s(|u| u.machine()),
            total_memory,
            ncpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os_name: osr("NAME"),
            os_version: osr("VERSION_ID"),
            idmapped_mounts: crate::runtime::rootfs_supports_idmap(dir),
        }
    }
}

/// The personalities this host runs (x86_64 also runs i686).
pub fn architectures(machine: &str) -> Vec<String> {
    match machine {
        "x86_64" => vec!["x86_64".into(), "i686".into()],
        "aarch64" => vec!["aarch64".into(), "armv7l".into()],
        m => vec![m.to_string()],
    }
}
