//! Devices other than the root disk: which keys a `disk` device takes (LXD 5.0.2's, each either
//! kept or refused), turning an instance's expanded disk devices into the runtime's
//! [`DiskMount`]s at start, and refusing device changes on a running instance (other than NICs
//! and proxies, hot-plugged). Other device types are refused at start (`lifecycle::start`).

use std::path::{Component, Path, PathBuf};

use super::config::parse_bool;
use super::{Ctx, Error, Result};
use crate::api::{Devices, StringMap};
use crate::runtime::DiskMount;

/// Whether `dev` is the root disk.
pub fn is_root_disk(dev: &StringMap) -> bool {
    dev.get("type").map(String::as_str) == Some("disk")
        && dev.get("path").map(String::as_str) == Some("/")
}

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
            "optional" | "propagation" | "limits.read" | "limits.write" | "limits.max"
            | "raw.mount.options" | "ceph.cluster_name" | "ceph.user_name" | "boot.priority"
            | "io.cache" => {
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
pub fn resolve_disks(d: &Ctx, devices: &Devices, privileged: bool) -> Result<Vec<DiskMount>> {
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
                let (_, p) = super::volumes::path_for_disk(d, pool, source)?;
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
        });
    }
    crate::util::sort::sort_by_key(&mut out, |m| {
        (Path::new(&m.path).components().count(), m.path.clone())
    });
    Ok(out)
}

/// Refuse a change of the (expanded) devices of a running instance other than its root disk
/// (and, with `hotplug`, its NICs and proxies, which are hot-plugged: `nics::hotplug`,
/// `proxy::hotplug`): adding, removing or changing another device takes effect only at start,
/// and its hot-plug is not built.
pub fn check_live_change(old: &Devices, new: &Devices, hotplug: bool) -> Result<()> {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let live = |d: Option<&StringMap>| {
        d.is_none_or(|d| matches!(d.get("type").map(String::as_str), Some("nic" | "proxy")))
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
/// proxies, then NICs in its network namespace (`pid`'s); a NIC failure puts the proxies back.
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
    super::proxy::hotplug(d, name, old, new)?;
    super::nics::hotplug(data, name, config, pid, old, new).inspect_err(|_| {
        // The proxies go back as they were (best effort).
        let _ = super::proxy::hotplug(d, name, new, old);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(
            ok(&[
                ("type", "disk"),
                ("source", "/srv/a"),
                ("path", "/a"),
                ("propagation", "shared")
            ]),
            Err(Error::NotSupported(_))
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
        let e = check_live_change(&a, &b, true).unwrap_err().to_string();
        assert!(
            e.starts_with("not supported yet: adding disk devices to a running instance"),
            "{e}"
        );
        let e = check_live_change(&b, &a, true).unwrap_err().to_string();
        assert!(e.contains("removing disk devices"), "{e}");
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
