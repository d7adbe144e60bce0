//! Devices other than the root disk and NICs: which keys `disk`, `unix-char`, `unix-block`,
//! `gpu`, `usb` and `none` devices take (LXD 5.0.2's, each either kept or refused), turning an
//! instance's expanded devices into the runtime's [`DiskMount`]s and [`UnixDev`]s at start, and
//! hot-plugging changes into a running instance: disks and nodes through the runtime
//! ([`runtime::hotplug`](crate::runtime::hotplug)), proxies and NICs through their modules.

use std::path::{Component, Path, PathBuf};

pub use super::config::is_root_disk;
use super::config::parse_bool;
use super::{Ctx, Error, Result};
use crate::api::{Devices, StringMap};
use crate::runtime::{DiskMount, UnixDev};

/// A plain absolute path: starts with `/`, no `.` or `..` parts.
fn plain_absolute(p: &str) -> bool {
    p.starts_with('/')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fn bool_key(name: &str, dev: &StringMap, key: &str, default: bool) -> Result<bool> {
    match dev.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(v) => parse_bool(v).ok_or_else(|| {
            Error::Invalid(format!(
                "Device {name:?}: Invalid value for device option {key:?}: {v:?} is not a boolean"
            ))
        }),
    }
}

/// Check a non-root disk device's keys (no host access: sources are checked at start).
pub fn validate_disk(name: &str, dev: &StringMap) -> Result<()> {
    let path = dev.get("path").map(String::as_str).unwrap_or("");
    let source = dev.get("source").map(String::as_str).unwrap_or("");
    let pool = dev.get("pool").map(String::as_str).unwrap_or("");
    for (k, v) in dev {
        match k.as_str() {
            "type" | "path" | "source" | "pool" => {}
            "readonly" | "required" | "shift" | "recursive" => {
                bool_key(name, dev, k, false)?;
            }
            "size" | "size.state" if !v.is_empty() => {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: Only the root disk may have a size quota"
                )))
            }
            "size" | "size.state" => {}
            "raw.mount.options" => {}
            "limits.read" | "limits.write" | "limits.max" => {
                io_rate(name, k, v)?;
            }
            "propagation" if crate::runtime::Propagation::parse(v).is_some() => {}
            "propagation" => {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: Invalid value for device option \"propagation\": {v:?} (private, shared, slave, unbindable, rprivate, rshared, rslave or runbindable)"
                )))
            }
            "optional" | "ceph.cluster_name" | "ceph.user_name"
            | "boot.priority" | "io.cache" => {
                return Err(Error::not_yet(&format!(
                    "disk device option {k:?} (device {name:?})"
                )))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: Invalid device option {k:?}"
                )))
            }
        }
    }
    if source.is_empty() || path.is_empty() {
        if !pool.is_empty() && path.is_empty() {
            return Err(Error::Invalid(format!(
                "Device {name:?}: Custom filesystem volumes require a path to be defined"
            )));
        }
        return Err(Error::Invalid(format!(
            "Device {name:?}: Disk entry is missing the required \"source\" or \"path\" property"
        )));
    }
    if !plain_absolute(path) {
        return Err(Error::Invalid(format!(
            "Device {name:?}: the path {path:?} must be absolute, without \".\" or \"..\""
        )));
    }
    if bool_key(name, dev, "recursive", false)? && bool_key(name, dev, "readonly", false)? {
        return Err(Error::Invalid(format!(
            "Device {name:?}: Recursive read-only bind-mounts aren't currently supported by the kernel"
        )));
    }
    if pool.is_empty() {
        if !plain_absolute(source) {
            return Err(Error::Invalid(format!(
                "Device {name:?}: Source path must be absolute for local sources (and without \".\" or \"..\")"
            )));
        }
        if source.starts_with("ceph:") || source.starts_with("cephfs:") {
            return Err(Error::not_yet("ceph disk sources"));
        }
    } else {
        if source.starts_with('/') {
            return Err(Error::Invalid(format!(
                "Device {name:?}: Storage volumes cannot be specified as absolute paths"
            )));
        }
        if source.contains('/') {
            return Err(Error::not_yet(&format!(
                "attaching storage volume snapshots or non-custom volumes (device {name:?}, source {source:?})"
            )));
        }
        if dev.contains_key("shift") {
            return Err(Error::Invalid(format!(
                "Device {name:?}: The \"shift\" property cannot be used with custom storage volumes (set \"security.shifted=true\" on the volume instead)"
            )));
        }
        if bool_key(name, dev, "recursive", false)? {
            return Err(Error::Invalid(format!(
                "Device {name:?}: The recursive option is only supported for additional bind-mounted paths"
            )));
        }
    }
    Ok(())
}

/// The expanded disk devices other than root, resolved for the runtime, in mount order
/// (shallower paths first). `privileged` instances get no idmap. A custom volume must exist;
/// a host source is checked by the runtime when it opens it.
pub fn resolve_disks(
    d: &Ctx,
    data: &super::db::Data,
    devices: &Devices,
    privileged: bool,
) -> Result<Vec<DiskMount>> {
    let mut out: Vec<DiskMount> = Vec::new();
    for (name, dev) in devices {
        if dev.get("type").map(String::as_str) != Some("disk") || is_root_disk(dev) {
            continue;
        }
        validate_disk(name, dev)?;
        let path = dev["path"].clone();
        let source = &dev["source"];
        let readonly = bool_key(name, dev, "readonly", false)?;
        let required = bool_key(name, dev, "required", true)?;
        let recursive = bool_key(name, dev, "recursive", false)?;
        let (source, idmap) = match dev.get("pool").filter(|p| !p.is_empty()) {
            Some(pool) => {
                let (_, p) = super::volumes::path_for_disk(d, data, pool, source)?;
                // The pool's own path is the admin's, the volume below it root's alone: resolve
                // any symlink in the former now, so the runtime can refuse every symlink.
                let p = std::fs::canonicalize(&p).map_err(|e| {
                    Error::Host(format!("storage volume {source:?} at {}: {e}", p.display()))
                })?;
                (p, !privileged)
            }
            None => (
                PathBuf::from(source),
                !privileged && bool_key(name, dev, "shift", false)?,
            ),
        };
        if let Some(other) = out
            .iter()
            .find(|m| m.path.trim_end_matches('/') == path.trim_end_matches('/'))
        {
            return Err(Error::Invalid(format!(
                "More than one disk device uses the same path {:?} ({:?} and {name:?})",
                path, other.name
            )));
        }
        out.push(DiskMount {
            name: name.clone(),
            source,
            path,
            readonly,
            idmap,
            recursive,
            required,
            mount_options: dev.get("raw.mount.options").cloned().unwrap_or_default(),
            propagation: dev
                .get("propagation")
                .and_then(|p| crate::runtime::Propagation::parse(p))
                .unwrap_or_default(),
        });
    }
    crate::util::sort::sort_by_key(&mut out, |m| {
        (Path::new(&m.path).components().count(), m.path.clone())
    });
    Ok(out)
}

fn parse_key<T: std::str::FromStr>(name: &str, dev: &StringMap, key: &str) -> Result<Option<T>> {
    match dev.get(key).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Error::Invalid(format!(
                "Device {name:?}: Invalid value for device option {key:?}: {v:?}"
            ))
        }),
    }
}

/// The octal `mode` of a node (`0660` when unset, as LXD).
fn mode_key(name: &str, dev: &StringMap) -> Result<u32> {
    match dev.get("mode").map(String::as_str) {
        None | Some("") => Ok(0o660),
        Some(v) => u32::from_str_radix(v, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "Device {name:?}: Invalid value for device option \"mode\": {v:?} is not an octal file mode"
                ))
            }),
    }
}

/// A USB or PCI id: four hex digits.
fn hex4(name: &str, dev: &StringMap, key: &str) -> Result<()> {
    match dev.get(key).map(String::as_str) {
        None | Some("") => Ok(()),
        Some(v) if v.len() == 4 && v.chars().all(|c| c.is_ascii_hexdigit()) => Ok(()),
        Some(v) => Err(Error::Invalid(format!(
            "Device {name:?}: Invalid value for device option {key:?}: {v:?} is not a 4-digit hex id"
        ))),
    }
}

/// Check a `unix-char`, `unix-block`, `gpu`, `usb` or `none` device's keys (the host is looked
/// at when it starts or is hot-plugged).
pub fn validate_node_device(name: &str, dev: &StringMap) -> Result<()> {
    let t = dev.get("type").map(String::as_str).unwrap_or("");
    let keys: &[&str] = match t {
        "unix-char" | "unix-block" => &[
            "source", "path", "major", "minor", "uid", "gid", "mode", "required",
        ],
        "gpu" => &[
            "gputype",
            "vendorid",
            "productid",
            "id",
            "pci",
            "uid",
            "gid",
            "mode",
        ],
        "unix-hotplug" => &["vendorid", "productid", "uid", "gid", "mode", "required"],
        "usb" => &[
            "vendorid",
            "productid",
            "serial",
            "uid",
            "gid",
            "mode",
            "required",
        ],
        _ => &[],
    };
    for k in dev.keys() {
        if k != "type" && !keys.contains(&k.as_str()) {
            return Err(Error::Invalid(format!(
                "Device {name:?}: Invalid device option {k:?}"
            )));
        }
    }
    parse_key::<u32>(name, dev, "uid")?;
    parse_key::<u32>(name, dev, "gid")?;
    parse_key::<u32>(name, dev, "major")?;
    parse_key::<u32>(name, dev, "minor")?;
    mode_key(name, dev)?;
    bool_key(name, dev, "required", true)?;
    hex4(name, dev, "vendorid")?;
    hex4(name, dev, "productid")?;
    match t {
        "unix-char" | "unix-block" => {
            let source = dev.get("source").map(String::as_str).unwrap_or("");
            let path = dev.get("path").map(String::as_str).unwrap_or("");
            if source.is_empty() && path.is_empty() {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: Unix device entry is missing the required \"source\" or \"path\" property"
                )));
            }
            for p in [source, path].into_iter().filter(|p| !p.is_empty()) {
                if !plain_absolute(p) || p == "/" {
                    return Err(Error::Invalid(format!(
                        "Device {name:?}: the path {p:?} must be absolute, without \".\" or \"..\""
                    )));
                }
            }
        }
        "gpu" => match dev.get("gputype").map(String::as_str) {
            None | Some("") | Some("physical") => {}
            // LXD's: a virtual GPU or an SR-IOV function is for virtual machines only.
            Some(g @ ("mdev" | "sriov")) => {
                return Err(Error::Invalid(format!(
                    "Device validation failed for {name:?}: Unsupported device type (gputype \
                     {g:?} is for virtual machines)"
                )))
            }
            // NVIDIA's multi-instance GPUs need its container runtime (`nvidia.runtime`).
            Some("mig") => {
                return Err(Error::not_yet(&format!(
                    "gpu devices with gputype \"mig\" (device {name:?})"
                )))
            }
            Some(g) => {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: Invalid value for device option \"gputype\": {g:?}"
                )))
            }
        },
        _ => {}
    }
    Ok(())
}

/// The expanded `unix-char`, `unix-block`, `gpu` and `usb` devices as device nodes, looking at
/// the host now (a unix device's numbers come from its source unless given; a missing source
/// with `required=false`, and a `usb` device matching nothing, are left out).
pub fn resolve_nodes(devices: &Devices) -> Result<Vec<UnixDev>> {
    resolve_nodes_in(Path::new("/"), devices)
}

fn resolve_nodes_in(root: &Path, devices: &Devices) -> Result<Vec<UnixDev>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out: Vec<UnixDev> = Vec::new();
    for (name, dev) in devices {
        let t = dev.get("type").map(String::as_str).unwrap_or("");
        if !matches!(t, "unix-char" | "unix-block" | "gpu" | "usb") {
            continue;
        }
        validate_node_device(name, dev)?;
        let uid = parse_key::<u32>(name, dev, "uid")?.unwrap_or(0);
        let gid = parse_key::<u32>(name, dev, "gid")?.unwrap_or(0);
        let mode = mode_key(name, dev)?;
        let get = |k: &str| dev.get(k).filter(|v| !v.is_empty()).cloned();
        let node = |path: String, block: bool, major: u32, minor: u32| UnixDev {
            name: name.clone(),
            path,
            block,
            major,
            minor,
            uid,
            gid,
            mode,
        };
        match t {
            "unix-char" | "unix-block" => {
                let block = t == "unix-block";
                let source = get("source").or_else(|| get("path")).unwrap_or_default();
                let path = get("path").unwrap_or_else(|| source.clone());
                let (major, minor) = (
                    parse_key::<u32>(name, dev, "major")?,
                    parse_key::<u32>(name, dev, "minor")?,
                );
                let (major, minor) = match (major, minor) {
                    (Some(a), Some(b)) => (a, b),
                    _ => match std::fs::metadata(&source) {
                        Ok(m) => {
                            let ft = m.file_type();
                            if (block && !ft.is_block_device()) || (!block && !ft.is_char_device())
                            {
                                return Err(Error::Invalid(format!(
                                    "Device {name:?}: {source:?} is not a {} device",
                                    if block { "block" } else { "character" }
                                )));
                            }
                            let r = m.rdev();
                            (
                                major.unwrap_or(rustix::fs::major(r)),
                                minor.unwrap_or(rustix::fs::minor(r)),
                            )
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            if bool_key(name, dev, "required", true)? {
                                return Err(Error::Invalid(format!(
                                    "Device {name:?}: Missing source path {source:?} (major and minor are not given; required=false skips a missing device)"
                                )));
                            }
                            continue;
                        }
                        Err(e) => {
                            return Err(Error::Host(format!("Device {name:?}: {source}: {e}")))
                        }
                    },
                };
                out.push(node(path, block, major, minor));
            }
            "gpu" => {
                let m = super::hostdev::GpuMatch {
                    vendorid: get("vendorid"),
                    productid: get("productid"),
                    id: get("id"),
                    pci: get("pci"),
                };
                let found = super::hostdev::gpu_nodes(root, &m);
                if found.is_empty() {
                    return Err(Error::Invalid(format!(
                        "Device {name:?}: Failed to detect requested GPU device"
                    )));
                }
                out.extend(
                    found
                        .into_iter()
                        .map(|n| node(n.path, false, n.major, n.minor)),
                );
            }
            _ => {
                let m = super::hostdev::UsbMatch {
                    vendorid: get("vendorid"),
                    productid: get("productid"),
                    serial: get("serial"),
                };
                let found = super::hostdev::usb_nodes(root, &m);
                if found.is_empty() && bool_key(name, dev, "required", false)? {
                    return Err(Error::Invalid(format!(
                        "Device {name:?}: no USB device matches (required=true)"
                    )));
                }
                out.extend(
                    found
                        .into_iter()
                        .map(|n| node(n.path, false, n.major, n.minor)),
                );
            }
        }
    }
    // unix-hotplug: what matches now (the rest as it comes, see `uevents`).
    let hotplug = super::uevents::present(devices, &root.join("sys"));
    for (name, dev) in devices {
        if dev.get("type").map(String::as_str) == Some("unix-hotplug")
            && bool_key(name, dev, "required", false)?
            && !hotplug.iter().any(|h| h.name == *name)
        {
            return Err(Error::Invalid(format!(
                "Device {name:?}: no device matches (required=true)"
            )));
        }
    }
    out.extend(hotplug);
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[..i].iter().find(|b| b.path == a.path) {
            return Err(Error::Invalid(format!(
                "More than one device uses the path {:?} ({:?} and {:?})",
                a.path, b.name, a.name
            )));
        }
    }
    Ok(out)
}

/// Device types hot-plugged through the runtime: mounts and nodes (`none` masks one).
fn is_local(dev: &StringMap) -> bool {
    !is_root_disk(dev)
        && matches!(
            dev.get("type").map(String::as_str),
            Some("disk" | "unix-char" | "unix-block" | "gpu" | "usb" | "unix-hotplug" | "none")
        )
}

/// Hot-plug a running instance's disk and node changes from `old` to `new` (expanded devices),
/// all or none (see `runtime::hotplug`).
fn hotplug_local(
    d: &Ctx,
    data: &super::db::Data,
    inst: &str,
    old: &Devices,
    new: &Devices,
) -> Result<()> {
    let names = crate::util::sort::set(old.keys().chain(new.keys()));
    let mut remove = Vec::new();
    let mut added = Devices::new();
    for n in names {
        let (o, w) = (old.get(n), new.get(n));
        if o == w {
            continue;
        }
        if o.is_some_and(is_local) {
            remove.push(n.clone());
        }
        if let Some(w) = w.filter(|w| is_local(w)) {
            added.insert(n.clone(), w.clone());
        }
    }
    if remove.is_empty() && added.is_empty() {
        return Ok(());
    }
    // The runtime idmaps only what a container with an id map mounts: `privileged` changes
    // nothing for a privileged one, whose spec has no map.
    let disks = resolve_disks(d, data, &added, false)?;
    let nodes = resolve_nodes(&added)?;
    crate::runtime::hotplug(&d.run_dir(inst), &remove, disks, nodes).map_err(Error::from)
}

/// After a daemon restart: make a running instance's disks and `unix-char`/`unix-block` nodes
/// what its record's expanded devices `ed` say. A daemon killed in a hot-plug may have plugged
/// or unplugged them without recording it (the helper runs on), or recorded nothing of a change
/// it half made. GPU and USB devices are left as they are (their nodes follow the host's).
pub fn reconcile(d: &Ctx, inst: &str, ed: &Devices) -> Result<()> {
    let plain = |dev: &StringMap| {
        !is_root_disk(dev)
            && matches!(
                dev.get("type").map(String::as_str),
                Some("disk" | "unix-char" | "unix-block")
            )
    };
    let wanted = crate::util::sort::entries_where(ed, |_, v| plain(v));
    // As a hot-plug resolves them (see `hotplug_local`); the database only names the pools.
    let disks = resolve_disks(d, &d.db.lock().expect("db lock").data, &wanted, false)?;
    let nodes = resolve_nodes(&wanted)?;
    let managed = |name: &str| ed.get(name).is_none_or(plain);
    crate::runtime::hotplug_reconcile(&d.run_dir(inst), disks, nodes, &managed).map_err(Error::from)
}

/// A disk's I/O limit: bytes per second (`10MB`, `1GiB`: LXD's units) or operations per second
/// (`100iops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoRate {
    Bps(u64),
    Iops(u64),
}

fn io_rate(name: &str, key: &str, v: &str) -> Result<Option<IoRate>> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::Invalid(format!(
            "Device {name:?}: Invalid value for device option {key:?}: {v:?} (bytes per second such as 10MB, or 100iops)"
        ))
    };
    let lower = v.to_ascii_lowercase();
    if let Some(n) = lower.strip_suffix("iops") {
        return n
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| Some(IoRate::Iops(n)))
            .ok_or_else(bad);
    }
    if v.ends_with('%') {
        return Err(bad());
    }
    super::limits::parse_memory(v, 0)
        .ok()
        .filter(|n| *n > 0)
        .map(|n| Some(IoRate::Bps(n)))
        .ok_or_else(bad)
}

/// Whether a root disk's `size` can be kept on a pool of `driver` (`None`: the disk names no
/// pool bivy has): a btrfs qgroup limit; dir pools would need project quotas, which bivy does not
/// set up, and a silently ignored size would be a promise not kept.
pub(super) fn root_size_on(name: &str, driver: Option<&str>) -> Result<()> {
    match driver {
        Some("btrfs") => Ok(()),
        Some(driver) => Err(Error::not_yet(&format!(
            "device {name:?}: root disk \"size\" on a {driver} pool (needs filesystem project quotas, which bivy does not set up; btrfs pools have size limits)"
        ))),
        None => Err(Error::not_yet(&format!(
            "device {name:?}: root disk \"size\" without a btrfs \"pool\""
        ))),
    }
}

/// Check the root disk's keys: LXD's, each kept or refused.
pub fn validate_root_disk(name: &str, dev: &StringMap) -> Result<()> {
    for (k, v) in dev {
        match k.as_str() {
            "type" | "path" | "pool" | "size" => {}
            "limits.read" | "limits.write" | "limits.max" => {
                io_rate(name, k, v)?;
            }
            "size.state" | "raw.mount.options" | "boot.priority" | "io.cache" | "readonly"
            | "recursive" | "propagation" | "shift" | "required" | "optional" | "source" => {
                return Err(Error::not_yet(&format!(
                    "root disk option {k:?} (device {name:?})"
                )))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: Invalid device option {k:?}"
                )))
            }
        }
    }
    Ok(())
}

/// The whole disk (`MAJ:MIN`) under `path`: the block device itself for a device node, else
/// the one holding its filesystem; a partition's parent disk (the kernel throttles disks).
fn backing_disk(path: &Path) -> std::result::Result<(u32, u32), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dev = if m.file_type().is_block_device() {
        m.rdev()
    } else {
        m.dev()
    };
    let (ma, mi) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{ma}:{mi}"));
    if !sys.exists() {
        return Err(format!(
            "{} is not on a block device bivy can throttle (its filesystem is on {ma}:{mi})",
            path.display()
        ));
    }
    if !sys.join("partition").exists() {
        return Ok((ma, mi));
    }
    let parent = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| p.parent().map(|p| p.join("dev")))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .ok_or_else(|| format!("the disk of partition {ma}:{mi} not found"))?;
    let (a, b) = parent
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("bad dev {parent:?}"))?;
    Ok((
        a.parse().map_err(|_| format!("bad dev {parent:?}"))?,
        b.parse().map_err(|_| format!("bad dev {parent:?}"))?,
    ))
}

/// The block I/O limits of an instance's disks (`limits.read`, `limits.write`, `limits.max`),
/// per disk holding their sources (the root disk's: `root`, its volume); disks sharing one
/// get the lowest of their limits.
pub fn io_limits(
    d: &Ctx,
    data: &super::db::Data,
    devices: &Devices,
    root: &Path,
) -> Result<Vec<crate::runtime::IoLimit>> {
    let mut out: Vec<crate::runtime::IoLimit> = Vec::new();
    for (name, dev) in devices {
        if dev.get("type").map(String::as_str) != Some("disk") {
            continue;
        }
        let rate = |k: &str| io_rate(name, k, dev.get(k).map(String::as_str).unwrap_or(""));
        let max = rate("limits.max")?;
        let (read, write) = (rate("limits.read")?.or(max), rate("limits.write")?.or(max));
        if read.is_none() && write.is_none() {
            continue;
        }
        let path = if is_root_disk(dev) {
            root.to_path_buf()
        } else if let Some(pool) = dev.get("pool").filter(|p| !p.is_empty()) {
            super::volumes::path_for_disk(d, data, pool, &dev["source"])?.1
        } else {
            PathBuf::from(dev.get("source").cloned().unwrap_or_default())
        };
        let (major, minor) = match backing_disk(&path) {
            Ok(x) => x,
            Err(_) if !bool_key(name, dev, "required", true)? && !path.exists() => continue,
            Err(e) => {
                return Err(Error::not_yet(&format!(
                    "disk limits of device {name:?}: {e}"
                )))
            }
        };
        let i = match out
            .iter()
            .position(|l| (l.major, l.minor) == (major, minor))
        {
            Some(i) => i,
            None => {
                out.push(crate::runtime::IoLimit {
                    major,
                    minor,
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        let l = &mut out[i];
        let lower = |slot: &mut Option<u64>, v: u64| {
            *slot = Some(slot.map_or(v, |o| o.min(v)));
        };
        match read {
            Some(IoRate::Bps(n)) => lower(&mut l.read_bps, n),
            Some(IoRate::Iops(n)) => lower(&mut l.read_iops, n),
            None => {}
        }
        match write {
            Some(IoRate::Bps(n)) => lower(&mut l.write_bps, n),
            Some(IoRate::Iops(n)) => lower(&mut l.write_iops, n),
            None => {}
        }
    }
    Ok(out)
}

/// Refuse a change of the (expanded) devices of a running instance other than its root disk
/// (and, with `hotplug`, the devices [`hotplug`] plugs: disks, unix devices, GPUs, USB
/// devices, `none`, NICs and proxies). Without `hotplug`, every change is refused.
pub fn check_live_change(old: &Devices, new: &Devices, hotplug: bool) -> Result<()> {
    let names = crate::util::sort::set(old.keys().chain(new.keys()));
    let live = |d: Option<&StringMap>| {
        d.is_none_or(|d| {
            is_local(d) || matches!(d.get("type").map(String::as_str), Some("nic" | "proxy"))
        })
    };
    for n in names {
        let (o, w) = (old.get(n), new.get(n));
        if o == w || o.is_some_and(is_root_disk) || w.is_some_and(is_root_disk) {
            continue;
        }
        if hotplug && live(o) && live(w) {
            continue;
        }
        let kind =
            |d: Option<&StringMap>| d.and_then(|d| d.get("type")).cloned().unwrap_or_default();
        let what = match (o, w) {
            (None, Some(_)) => format!("adding {} devices to a running instance", kind(w)),
            (Some(_), None) => format!("removing {} devices from a running instance", kind(o)),
            _ => format!("changing {} devices of a running instance", kind(w)),
        };
        return Err(Error::not_yet(&format!(
            "{what} (device {n:?}; stop the instance first)"
        )));
    }
    Ok(())
}

/// Volatile keys to set (`Some`) or remove (`None`) in an instance's config.
pub type VolatileChanges = Vec<(String, Option<String>)>;

/// Hot-plug a running instance's device changes from `old` to `new` (its expanded devices):
/// disks and nodes, proxies, then NICs in its network namespace (`pid`'s); a failure puts back
/// what the earlier steps changed.
/// The NICs' volatile keys to record in the instance's config (`None`: remove the key).
pub fn hotplug(
    d: &Ctx,
    data: &super::db::Data,
    name: &str,
    config: &StringMap,
    pid: i32,
    old: &Devices,
    new: &Devices,
) -> Result<VolatileChanges> {
    hotplug_local(d, data, name, old, new)?;
    let undo_local = || {
        if let Err(e) = hotplug_local(d, data, name, new, old) {
            eprintln!("bivy: {name}: undoing a device hot-plug: {e}");
        }
    };
    super::proxy::hotplug(d, name, old, new).inspect_err(|_| undo_local())?;
    let run_dir = d.run_dir(name);
    super::nics::hotplug(data, name, config, &run_dir, pid, old, new).inspect_err(|_| {
        // The proxies and mounts go back as they were (best effort).
        let _ = super::proxy::hotplug(d, name, new, old);
        undo_local();
    })
}

/// A device name as LXD's `validate.IsDeviceName` takes it (1 to 63 characters of letters,
/// digits, `.`, `-`, `:` and `_`, not starting with `.`), but without `/`, which bivy refuses
/// as it always has (device names become parts of paths and keys).
fn check_device_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "Invalid device name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > 63 {
        return bad("Name must be 1-63 characters long");
    }
    if name.starts_with('.') {
        return bad("Name must not start with \".\" character");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
    {
        return bad("Name can only contain alphanumeric, hyphen, colon, underscore and full stop characters");
    }
    Ok(())
}

/// A device key set to "" is unset (LXD's config store drops empty values; lxc's
/// `config device unset` sends one).
pub fn drop_unset_keys(devices: &mut crate::api::Devices) {
    for d in devices.values_mut() {
        d.retain(|_, v| !v.is_empty());
    }
}

/// Validate devices: a `type` each; known types only; disk, nic and proxy keys (a nic's network
/// must exist in `data`).
pub fn validate_devices(devices: &crate::api::Devices, data: &super::db::Data) -> Result<()> {
    for (name, d) in devices {
        check_device_name(name)?;
        if d.get("type").map(String::as_str) == Some("disk") {
            if let Some(pool) = d.get("pool").filter(|p| !p.is_empty()) {
                if !data.pools.contains_key(pool) {
                    return Err(Error::Invalid(format!(
                        "Device {name:?}: storage pool {pool:?} not found"
                    )));
                }
                // A custom volume as the source: it must be there (LXD's disk validation loads
                // it), or the instance could never start (a copy or move to a server without
                // it was taken, and a move then deleted the source).
                if let Some(vol) = d.get("source").filter(|s| !s.is_empty()) {
                    if d.get("path").map(String::as_str) != Some("/")
                        && super::volume_records::record_in(data, pool, vol).is_err()
                    {
                        return Err(Error::Invalid(format!(
                            "Device {name:?}: failed loading custom volume: storage volume {vol:?} not found on storage pool {pool:?}"
                        )));
                    }
                }
            }
        }
        match d.get("type").map(String::as_str) {
            Some("disk") if d.get("path").map(String::as_str) != Some("/") => {
                validate_disk(name, d)?;
            }
            Some("disk") => {
                validate_root_disk(name, d)?;
                // A root disk's size is a btrfs qgroup limit on the instance's volume
                // (`volumes::apply_root_size`); dir pools would need project quotas, which bivy
                // does not set up: a silently ignored size would be a promise not kept.
                if let Some(size) = d.get("size").filter(|v| !v.is_empty()) {
                    crate::storage::btrfs::parse_size(size).map_err(|e| {
                        Error::Invalid(format!("Device {name:?}: invalid size {size:?}: {e}"))
                    })?;
                    let pool = d.get("pool").map_or("", String::as_str);
                    root_size_on(name, data.pools.get(pool).map(|p| p.driver.as_str()))?;
                }
            }
            Some("nic") => {
                super::nics::validate(data, name, d)?;
            }
            Some("proxy") => {
                super::proxy::validate(name, d)?;
            }
            Some("none" | "unix-char" | "unix-block" | "gpu" | "usb" | "unix-hotplug") => {
                validate_node_device(name, d)?;
            }
            Some(t @ ("infiniband" | "tpm" | "pci")) => {
                return Err(Error::not_yet(&format!("{t} devices (device {name:?})")))
            }
            Some(t) => {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: unknown device type {t:?}"
                )))
            }
            None => {
                return Err(Error::Invalid(format!(
                    "Device {name:?}: missing device type"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_lxds_without_slashes() {
        for ok in ["eth0", "root", "a.b-c:d_e", &"n".repeat(63)] {
            assert!(check_device_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "..", "a/b", "x\ny", "e=v", "a b", &"n".repeat(64)] {
            assert!(check_device_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn disk_devices_name_existing_pools() {
        let mut data = super::super::db::Data::default();
        data.pools.insert("default".into(), Default::default());
        let dev = |pool: &str, path: &str| {
            let d: StringMap = [("type", "disk"), ("pool", pool), ("path", path)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            crate::api::Devices::from([("root".to_string(), d)])
        };
        assert!(validate_devices(&dev("default", "/"), &data).is_ok());
        let err = validate_devices(&dev("nosuch", "/"), &data).unwrap_err();
        assert!(err.to_string().contains("\"nosuch\" not found"), "{err}");
        assert!(validate_devices(&dev("nosuch", "/mnt"), &data).is_err());
    }

    fn dev(kv: &[(&str, &str)]) -> StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn disk_keys() {
        let ok = |kv: &[(&str, &str)]| validate_disk("d", &dev(kv));
        assert!(ok(&[("type", "disk"), ("source", "/srv/a"), ("path", "/a")]).is_ok());
        assert!(ok(&[
            ("type", "disk"),
            ("pool", "p"),
            ("source", "v"),
            ("path", "/a"),
            ("readonly", "true")
        ])
        .is_ok());
        assert!(ok(&[("type", "disk"), ("source", "srv/a"), ("path", "/a")]).is_err());
        assert!(ok(&[("type", "disk"), ("source", "/srv/../etc"), ("path", "/a")]).is_err());
        assert!(ok(&[("type", "disk"), ("source", "/srv/a"), ("path", "a")]).is_err());
        assert!(ok(&[("type", "disk"), ("source", "/srv/a"), ("path", "/a/../..")]).is_err());
        assert!(ok(&[("type", "disk"), ("source", "/srv/a"), ("path", "")]).is_err());
        assert!(ok(&[
            ("type", "disk"),
            ("source", "/srv/a"),
            ("path", "/a"),
            ("readonly", "maybe")
        ])
        .is_err());
        for p in ["shared", "rslave", "private", "runbindable"] {
            assert!(ok(&[
                ("type", "disk"),
                ("source", "/srv/a"),
                ("path", "/a"),
                ("propagation", p)
            ])
            .is_ok());
        }
        assert!(matches!(
            ok(&[
                ("type", "disk"),
                ("source", "/srv/a"),
                ("path", "/a"),
                ("propagation", "rbind")
            ]),
            Err(Error::Invalid(_))
        ));
        assert!(ok(&[
            ("type", "disk"),
            ("source", "/srv/a"),
            ("path", "/a"),
            ("nosuch", "1")
        ])
        .is_err());
        assert!(ok(&[
            ("type", "disk"),
            ("pool", "p"),
            ("source", "v"),
            ("path", "/a"),
            ("shift", "true")
        ])
        .is_err());
    }

    #[test]
    fn node_device_keys() {
        let ok = |kv: &[(&str, &str)]| validate_node_device("d", &dev(kv));
        assert!(ok(&[("type", "unix-char"), ("source", "/dev/ttyS0")]).is_ok());
        assert!(ok(&[
            ("type", "unix-block"),
            ("path", "/dev/sdb"),
            ("major", "8"),
            ("minor", "16"),
            ("mode", "0600"),
            ("uid", "1000")
        ])
        .is_ok());
        assert!(ok(&[("type", "unix-char")]).is_err());
        assert!(ok(&[("type", "unix-char"), ("source", "dev/ttyS0")]).is_err());
        assert!(ok(&[("type", "unix-char"), ("path", "/dev/../etc/x")]).is_err());
        assert!(ok(&[("type", "unix-char"), ("path", "/dev/x"), ("mode", "0999")]).is_err());
        assert!(ok(&[("type", "unix-char"), ("path", "/dev/x"), ("uid", "-1")]).is_err());
        assert!(ok(&[("type", "unix-char"), ("path", "/dev/x"), ("nosuch", "1")]).is_err());
        assert!(ok(&[("type", "usb"), ("vendorid", "1a86"), ("productid", "7523")]).is_ok());
        assert!(ok(&[("type", "usb"), ("vendorid", "1a8")]).is_err());
        assert!(ok(&[("type", "gpu"), ("id", "0")]).is_ok());
        assert!(matches!(
            ok(&[("type", "gpu"), ("gputype", "mig")]),
            Err(Error::NotSupported(_))
        ));
        for vm_only in ["mdev", "sriov"] {
            assert!(matches!(
                ok(&[("type", "gpu"), ("gputype", vm_only)]),
                Err(Error::Invalid(m)) if m.contains("Unsupported device type")
            ));
        }
        assert!(ok(&[("type", "none")]).is_ok());
        assert!(ok(&[("type", "none"), ("path", "/x")]).is_err());
    }

    #[test]
    fn unix_devices_resolve_from_their_source() {
        let mut ds = Devices::new();
        ds.insert(
            "null".into(),
            dev(&[
                ("type", "unix-char"),
                ("source", "/dev/null"),
                ("path", "/dev/n2"),
            ]),
        );
        ds.insert(
            "fixed".into(),
            dev(&[
                ("type", "unix-block"),
                ("path", "/dev/fake"),
                ("major", "7"),
                ("minor", "200"),
                ("mode", "0600"),
                ("gid", "5"),
            ]),
        );
        ds.insert(
            "gone".into(),
            dev(&[
                ("type", "unix-char"),
                ("source", "/dev/bivy-no-such-device"),
                ("required", "false"),
            ]),
        );
        let n = resolve_nodes(&ds).unwrap();
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(
            (n[0].name.as_str(), n[0].block, n[0].major, n[0].minor),
            ("fixed", true, 7, 200)
        );
        assert_eq!((n[0].mode, n[0].gid, n[0].uid), (0o600, 5, 0));
        assert_eq!(
            (n[1].path.as_str(), n[1].major, n[1].minor, n[1].mode),
            ("/dev/n2", 1, 3, 0o660)
        );
        // Required and missing: refused. A char source for a block device: refused.
        ds.get_mut("gone").unwrap().remove("required");
        assert!(resolve_nodes(&ds)
            .unwrap_err()
            .to_string()
            .contains("Missing source path"));
        ds.remove("gone");
        ds.get_mut("null")
            .unwrap()
            .insert("type".into(), "unix-block".into());
        assert!(resolve_nodes(&ds)
            .unwrap_err()
            .to_string()
            .contains("not a block device"));
        // Two devices on one path.
        ds.get_mut("null")
            .unwrap()
            .insert("type".into(), "unix-char".into());
        ds.get_mut("null")
            .unwrap()
            .insert("path".into(), "/dev/fake".into());
        assert!(resolve_nodes(&ds)
            .unwrap_err()
            .to_string()
            .contains("More than one device"));
    }

    #[test]
    fn live_changes_are_refused_but_root_and_equal_pass() {
        let mut a = Devices::new();
        a.insert(
            "root".into(),
            dev(&[("type", "disk"), ("path", "/"), ("pool", "default")]),
        );
        let mut b = a.clone();
        assert!(check_live_change(&a, &b, true).is_ok());
        b.insert(
            "data".into(),
            dev(&[("type", "disk"), ("source", "/srv"), ("path", "/srv")]),
        );
        // Disks are hot-plugged; without hot-plug every change is refused.
        assert!(check_live_change(&a, &b, true).is_ok());
        assert!(check_live_change(&b, &a, true).is_ok());
        let e = check_live_change(&a, &b, false).unwrap_err().to_string();
        assert!(
            e.starts_with("not supported yet: adding disk devices to a running instance"),
            "{e}"
        );
        let e = check_live_change(&b, &a, false).unwrap_err().to_string();
        assert!(e.contains("removing disk devices"), "{e}");
        // A root disk change is never refused here (its pool is checked elsewhere).
        let mut r = a.clone();
        r.get_mut("root")
            .unwrap()
            .insert("size".into(), "1GiB".into());
        assert!(check_live_change(&a, &r, false).is_ok());
        // NICs and proxies are hot-plugged through the instance, not through a profile.
        let mut c = a.clone();
        c.insert(
            "web".into(),
            dev(&[
                ("type", "proxy"),
                ("listen", "tcp:127.0.0.1:80"),
                ("connect", "tcp:127.0.0.1:80"),
            ]),
        );
        assert!(check_live_change(&a, &c, true).is_ok());
        assert!(check_live_change(&c, &a, true).is_ok());
        let e = check_live_change(&a, &c, false).unwrap_err().to_string();
        assert!(e.contains("adding proxy devices"), "{e}");
    }
}
