//! Storage pools and their drivers.
//!
//! A pool is a directory tree the daemon owns (`dir`), or a btrfs filesystem (an existing btrfs
//! path or a loop file the daemon creates and mounts). Every pool has the same layout under its
//! mount point, so the daemon code above the driver never branches on the driver:
//!
//! ```text
//! <pool>/containers/<volume>/               one instance: rootfs/, templates/, metadata.json
//! <pool>/containers-snapshots/<volume>/<s>/ its snapshots (read-only where the driver can)
//! <pool>/images/<fingerprint>/              an image unpacked once, read-only; instances clone it
//! <pool>/custom/<volume>/                   a custom volume (its files, directly)
//! <pool>/custom-snapshots/<volume>/<s>/      its snapshots (read-only where the driver can)
//! ```
//!
//! Volume directory names are UUIDs, so renames never move data. A driver only knows how to make,
//! clone and delete a volume at a path; what lives where is decided here.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::api::StringMap;

/// Space (bytes) and inodes used and in total on a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub used: u64,
    pub total: u64,
    pub inodes_used: u64,
    pub inodes_total: u64,
}

/// [`Usage`] of the filesystem holding `path`.
pub fn statvfs_usage(path: &Path) -> io::Result<Usage> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| io::Error::other(format!("statvfs {}: {e}", path.display())))?;
    let frag = st.fragment_size();
    Ok(Usage {
        used: st.blocks().saturating_sub(st.blocks_free()) * frag,
        total: st.blocks() * frag,
        inodes_used: st.files().saturating_sub(st.files_free()),
        inodes_total: st.files(),
    })
}

/// The filesystem type and source of the topmost mount at `dir`, if `dir` is a mount point
/// (from /proc/self/mountinfo, so bind mounts of the same filesystem count too).
pub fn mounted_at(dir: &Path) -> io::Result<Option<(String, String)>> {
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("resolve {}: {e}", dir.display()),
            ))
        }
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io::Error::new(e.kind(), format!("read /proc/self/mountinfo: {e}")))?;
    Ok(info
        .lines()
        .rev()
        .filter_map(crate::util::mountinfo_fields)
        .find(|(mp, _, _)| Path::new(mp) == dir)
        .map(|(_, t, s)| (t.to_string(), s.to_string())))
}

/// What a driver must do. Paths given to the volume calls are absolute and inside [`Driver::path`].
pub trait Driver: Send + Sync {
    /// The driver's name in the API (`dir`, `btrfs`).
    fn name(&self) -> &'static str;

    /// Where the pool is mounted (or lives): the root of the layout above.
    fn path(&self) -> PathBuf;

    /// Create the pool's backing storage for the first time (make the directory, or the loop file
    /// and its filesystem) and mount it. May fill in config the user left out (`source`, `size`),
    /// as LXD does. On error nothing is left behind.
    fn create(&self, config: &mut StringMap) -> io::Result<()>;

    /// Make an existing pool usable after a daemon or host restart (attach the loop file, mount).
    /// Idempotent: a pool that is already mounted is left alone.
    fn mount(&self) -> io::Result<()>;

    /// Undo `mount` (unmount, release the loop device). Refused by the kernel while in use.
    fn unmount(&self) -> io::Result<()>;

    /// Destroy the pool's storage (after its volumes are gone): unmount, release, remove files.
    fn delete(&self) -> io::Result<()>;

    /// Make an empty volume at `path` (a directory, or a btrfs subvolume).
    fn create_volume(&self, path: &Path) -> io::Result<()>;

    /// Make `dst` a copy of volume `src` that is independent of it: a btrfs snapshot, a reflink
    /// copy, or a plain copy; `readonly` makes the result read-only where the driver can.
    fn clone_volume(&self, src: &Path, dst: &Path, readonly: bool) -> io::Result<()>;

    /// [`Driver::clone_volume`] for a clone made in the background, on an idle thread: where the
    /// clone is a copy, it gives up (`Interrupted`, nothing left) once `cancel` is set. A driver
    /// whose clones are snapshots ignores `cancel`.
    fn clone_volume_in_background(
        &self,
        src: &Path,
        dst: &Path,
        _cancel: &copy::Cancel,
    ) -> io::Result<()> {
        self.clone_volume(src, dst, false)
    }

    /// Whether `clone_volume` takes an atomic point-in-time copy (a btrfs snapshot). When it
    /// does not, the daemon freezes a running container around the copy.
    fn atomic_clone(&self) -> bool {
        false
    }

    /// Mark a finished volume read-only (image base volumes) where the driver can.
    fn set_readonly(&self, path: &Path) -> io::Result<()>;

    /// Delete the volume at `path`, whatever state a crash left it in (a plain directory, a
    /// subvolume, a read-only snapshot). A missing path is not an error.
    fn delete_volume(&self, path: &Path) -> io::Result<()>;

    /// Space used and total on the pool.
    fn usage(&self) -> io::Result<Usage>;

    /// The config keys an existing pool takes a new value for ([`Driver::update`] applies them);
    /// the others choose the storage itself and cannot change.
    fn live_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Apply `new` (validated by [`Pool::new`]; only [`Driver::live_keys`] differ from this
    /// pool's config) to the pool's storage.
    fn update(&self, _new: &StringMap) -> io::Result<()> {
        Ok(())
    }

    /// Limit the bytes volume `path` may hold to `size` (None: no limit), enforced by the
    /// filesystem (writes past it fail with EDQUOT). A driver without quotas refuses a limit.
    fn set_size(&self, path: &Path, size: Option<u64>) -> io::Result<()> {
        match size {
            None => Ok(()),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "not supported yet: size limits on {} volumes ({})",
                    self.name(),
                    path.display()
                ),
            )),
        }
    }

    /// Write volume `path` to `out` as a stream another pool (or host) can [`Driver::receive`].
    fn send(&self, path: &Path, out: &mut dyn Write) -> io::Result<()> {
        send_volume(path, out)
    }

    /// Make volume `path` (not existing yet) from a stream written by [`Driver::send`].
    fn receive(&self, path: &Path, input: &mut dyn Read) -> io::Result<()> {
        receive_volume(self, path, input)
    }
}

/// The generic volume stream: an uncompressed LXD unified image tarball of the volume
/// (metadata.yaml, rootfs/, templates/) with numeric owners, modes, times, xattrs (file
/// capabilities, ACLs), hard links and device nodes, as `publish` writes it.
pub fn send_volume(vol: &Path, out: &mut dyn Write) -> io::Result<()> {
    let view = layered::view(vol, false)?;
    let (vol, named) = (view.path(), vol);
    let meta = match std::fs::read(vol.join("metadata.json")) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| io::Error::other(format!("{}/metadata.json: {e}", named.display())))?,
        // An instance created empty: the stream still needs metadata.yaml's required keys.
        Err(_) => bare_metadata(),
    };
    let templates = vol.join("templates");
    crate::image::pack(
        &vol.join("rootfs"),
        &meta,
        templates.is_dir().then_some(templates.as_path()),
        crate::image::Compression::None,
        out,
    )
    .map_err(|e| io::Error::other(format!("sending {}: {e}", named.display())))
}

/// The `metadata.yaml` of a stream that has none of its own: only the keys an unpack requires.
fn bare_metadata() -> crate::api::ImageMetadata {
    crate::api::ImageMetadata {
        architecture: std::env::consts::ARCH.to_string(),
        creation_date: 1,
        ..Default::default()
    }
}

/// Receive a [`send_volume`] stream into a new volume at `vol`. On error nothing is left behind.
pub fn receive_volume<D: Driver + ?Sized>(
    driver: &D,
    vol: &Path,
    input: &mut dyn Read,
) -> io::Result<()> {
    driver.create_volume(vol)?;
    let res = unpack_volume(vol, input);
    if res.is_err() {
        let _ = driver.delete_volume(vol);
    }
    res
}

/// Unpack a [`send_volume`] stream, read once front to back, into the existing empty volume
/// `vol`, with the image unpacker's rules (no member lands outside `rootfs/` or `templates/`,
/// whatever its path or the links before it). On error what it made is removed.
pub fn unpack_volume(vol: &Path, input: &mut dyn Read) -> io::Result<()> {
    let meta = crate::image::unpack_stream(
        input,
        &vol.join("rootfs"),
        &vol.join("templates"),
        &crate::image::UnpackOpts {
            skip_devices: false,
            max_bytes: 0,
        },
    )
    .map_err(|e| io::Error::other(format!("receiving {}: {e}", vol.display())))?;
    let m = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
    crate::util::fs::atomic_write(&vol.join("metadata.json"), &m)
}

/// Send the directory tree `dir` (a checkpoint's images) as one stream, in [`send_volume`]'s
/// format (the tree as its rootfs).
pub fn send_tree(dir: &Path, out: &mut dyn Write) -> io::Result<()> {
    crate::image::pack(
        dir,
        &bare_metadata(),
        None,
        crate::image::Compression::None,
        out,
    )
    .map_err(|e| io::Error::other(format!("sending {}: {e}", dir.display())))
}

/// Receive a [`send_tree`] stream into the new directory `dir`, unpacked as safely as an image
/// (no device nodes, nothing outside `dir`); on error nothing is left.
pub fn receive_tree(dir: &Path, input: &mut dyn Read) -> io::Result<()> {
    let name = dir
        .file_name()
        .map_or_else(Default::default, |n| n.to_os_string());
    let mut scratch = std::ffi::OsString::from(".");
    scratch.push(&name);
    scratch.push(".templates");
    let scratch = dir.with_file_name(scratch);
    let r = crate::image::unpack_stream(
        input,
        dir,
        &scratch,
        &crate::image::UnpackOpts {
            skip_devices: true,
            max_bytes: 0,
        },
    );
    let _ = std::fs::remove_dir_all(&scratch);
    r.map(drop)
        .map_err(|e| io::Error::other(format!("receiving {}: {e}", dir.display())))
}

/// Receive a [`send_tree`] stream into the existing empty directory `dir` (a custom volume's
/// root), unpacked as safely as an image (no device nodes, nothing outside `dir`). On error
/// the caller removes `dir`.
pub fn receive_tree_into(dir: &Path, input: &mut dyn Read) -> io::Result<()> {
    crate::image::unpack_trees_stream(
        input,
        &[("rootfs".to_string(), dir.to_path_buf())],
        &crate::image::UnpackOpts {
            skip_devices: true,
            max_bytes: 0,
        },
    )
    .map_err(|e| io::Error::other(format!("receiving {}: {e}", dir.display())))
}

/// About how many bytes [`send_volume`] writes for `vol` (a header per entry, file data padded
/// to 512 bytes; long names and xattrs not counted), for a progress percentage.
pub fn stream_size(vol: &Path) -> u64 {
    let mut total = 1024;
    // A layered volume's layers: its image's files and the changed ones (an upper bound).
    let mut dirs = match layered::lower_of(vol) {
        Ok(Some(lower)) => vec![lower.join("rootfs"), vol.join("upper")],
        _ => vec![vol.join("rootfs")],
    };
    dirs.push(vol.join("templates"));
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += 512;
            if m.is_file() {
                total += m.len().div_ceil(512) * 512;
            } else if m.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    total
}

pub mod btrfs;
pub mod copy;
pub mod dir;
pub mod layered;

/// Storage drivers this build has, with the version reported in `/1.0` (LXD's
/// `storage_supported_drivers`). btrfs is listed only when the kernel has it.
pub fn supported_drivers() -> Vec<(&'static str, String)> {
    let mut v = vec![("dir", "1".to_string())];
    if kernel_has_fs("btrfs") {
        v.push(("btrfs", "1".to_string()));
    }
    v
}

/// Whether `/proc/filesystems` lists `fs`.
pub fn kernel_has_fs(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some(fs)))
        .unwrap_or(false)
}

/// LXD's rule for pool names: not empty, no `/`, no leading `.` or `-`, no whitespace, at most 63
/// characters of letters, digits, `-`, `_` and `.`.
pub fn validate_pool_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Storage pool name cannot be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "Storage pool name {name:?} is longer than 63 characters"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!(
            "Storage pool name {name:?} cannot start with \".\" or \"-\""
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "Storage pool name {name:?} contains the invalid character {c:?}"
        ));
    }
    Ok(())
}

/// The open pools, by name (one registry per daemon).
#[derive(Default)]
pub struct Pools {
    pub(crate) pools: std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<Pool>>>,
    /// Pools whose `mount` failed at start-up, with the reason (their instances cannot start).
    pub(crate) unavailable: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// One lock per `pool/fingerprint`, so concurrent launches unpack an image once.
    pub(crate) image_locks:
        std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<std::sync::Mutex<()>>>>,
}

impl Pools {
    /// The open pool `name`.
    pub fn get(&self, name: &str) -> Option<std::sync::Arc<Pool>> {
        self.pools.lock().expect("pools lock").get(name).cloned()
    }
}

/// A pool: its name and its driver, plus the layout below the driver's path.
pub struct Pool {
    pub name: String,
    pub driver: Box<dyn Driver>,
}

impl Pool {
    /// A pool handle for `driver` with `config` (not yet mounted or created).
    pub fn new(name: &str, driver: &str, config: &StringMap, bivy_dir: &Path) -> io::Result<Pool> {
        let driver: Box<dyn Driver> = match driver {
            "dir" => Box::new(dir::Dir::new(name, config, bivy_dir)?),
            "btrfs" => Box::new(btrfs::Btrfs::new(name, config, bivy_dir)?),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Storage driver {other:?} is not supported (bivy has: dir, btrfs)"),
                ))
            }
        };
        Ok(Pool {
            name: name.to_string(),
            driver,
        })
    }

    /// An instance's volume.
    pub fn container(&self, volume: &str) -> PathBuf {
        self.driver.path().join("containers").join(volume)
    }

    /// The directory holding an instance's snapshot volumes.
    pub fn snapshots_of(&self, volume: &str) -> PathBuf {
        self.driver.path().join("containers-snapshots").join(volume)
    }

    /// One snapshot volume of an instance.
    pub fn snapshot(&self, volume: &str, snap_volume: &str) -> PathBuf {
        self.snapshots_of(volume).join(snap_volume)
    }

    /// A custom volume (`volume` is its directory name, a UUID).
    pub fn custom(&self, volume: &str) -> PathBuf {
        self.driver.path().join("custom").join(volume)
    }

    /// The directory holding a custom volume's snapshots.
    pub fn custom_snapshots_of(&self, volume: &str) -> PathBuf {
        self.driver.path().join("custom-snapshots").join(volume)
    }

    /// One snapshot of a custom volume.
    pub fn custom_snapshot(&self, volume: &str, snap_volume: &str) -> PathBuf {
        self.custom_snapshots_of(volume).join(snap_volume)
    }

    /// An image's base volume (unpacked once, read-only).
    pub fn image(&self, fingerprint: &str) -> PathBuf {
        self.driver.path().join("images").join(fingerprint)
    }

    /// Make the layout's top directories, and give them and the pool's root their modes
    /// ([`POOL_ROOT_MODE`], [`LAYOUT_MODES`]) and the top-directory flag, so the volumes made
    /// in them are spread over the filesystem ([`crate::util::fs::spread_subdirs`]). `mend` says
    /// the tree may be an older one: what had other modes is then logged.
    pub fn make_layout(&self, mend: bool) -> io::Result<()> {
        let root = self.driver.path();
        let set = |p: &Path, mode: u32, what: &str| -> io::Result<()> {
            if mend {
                crate::util::fs::mend_mode(p, mode, what);
                Ok(())
            } else {
                crate::util::fs::ensure_mode(p, mode).map(drop)
            }
        };
        set(&root, POOL_ROOT_MODE, "storage pool root")?;
        for (d, mode) in LAYOUT_MODES {
            let p = root.join(d);
            match std::fs::create_dir(&p) {
                Ok(()) => crate::util::fs::ensure_mode(&p, mode).map(drop)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    set(&p, mode, "storage pool layout")?
                }
                Err(e) => return Err(e),
            };
            // Each volume is a tree of its own, made and deleted as instances come and go.
            crate::util::fs::spread_subdirs_or_log(&p, "storage pool layout");
        }
        Ok(())
    }

    /// Mend the modes of every volume on the pool (an older bivy made them 0755): instance
    /// volumes get [`instance_volume_mode`] (`privileged` says, by volume name, whether its
    /// instance is privileged; `None` for a volume no instance names), snapshot and image
    /// volumes [`VOLUME_MODE`]. Read-only snapshots cannot change; their parents protect them.
    pub fn mend_volume_modes(&self, privileged: impl Fn(&str) -> Option<bool>) {
        let root = self.driver.path();
        let entries = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        };
        for v in entries(&root.join("containers")) {
            let name = v.file_name().map(|n| n.to_string_lossy().into_owned());
            let mode = name
                .as_deref()
                .and_then(&privileged)
                .map_or(VOLUME_MODE, instance_volume_mode);
            crate::util::fs::mend_mode(&v, mode, "instance volume");
        }
        for parent in entries(&root.join("containers-snapshots")) {
            crate::util::fs::mend_mode(&parent, VOLUME_MODE, "snapshots of an instance");
            for v in entries(&parent) {
                crate::util::fs::mend_mode(&v, VOLUME_MODE, "snapshot volume");
            }
        }
        for v in entries(&root.join("images")) {
            crate::util::fs::mend_mode(&v, VOLUME_MODE, "image volume");
        }
    }
}

// Who may reach what (the threat model in the README): with idmapped mounts, a file that a
// container's root makes is owned by host uid 0 on disk, so a setuid file in a rootfs is a
// setuid-root file on the host. No host user but root may reach any volume: LXD's modes.

/// A pool's root: traversable, not listable.
pub const POOL_ROOT_MODE: u32 = 0o711;
/// The layout's top directories and their modes: instance volumes sit under a traversable
/// directory and close themselves; snapshots and image volumes are closed at the top.
pub const LAYOUT_MODES: [(&str, u32); 5] = [
    ("containers", 0o711),
    ("containers-snapshots", 0o700),
    ("images", 0o700),
    ("custom", 0o700),
    ("custom-snapshots", 0o700),
];
/// The layout's top directories (the names of [`LAYOUT_MODES`]).
pub const LAYOUT_DIRS: [&str; 5] = [
    "containers",
    "containers-snapshots",
    "images",
    "custom",
    "custom-snapshots",
];
/// A custom volume's own directory: its files belong to the containers that mount it (through
/// an idmapped mount), and a non-root user of a container must be able to reach into it, as on
/// LXD; `custom/` above it keeps host users out.
pub const CUSTOM_VOLUME_MODE: u32 = 0o711;
/// Every volume a driver makes: only root.
pub const VOLUME_MODE: u32 = 0o700;

/// Make the missing directories above a volume (an instance's snapshot directory), closed
/// like a volume; existing ones are left as they are.
pub fn make_volume_parent(parent: &Path) -> io::Result<()> {
    if parent.is_dir() {
        return Ok(());
    }
    crate::util::fs::create_dir_mode(parent, VOLUME_MODE)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", parent.display())))
}

/// An instance volume's mode: 0100 for an unprivileged instance, 0700 for a privileged one
/// (as LXD). Either way only root gets through it.
pub fn instance_volume_mode(privileged: bool) -> u32 {
    if privileged {
        0o700
    } else {
        0o100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn mountinfo_parsing() {
        let l =
            r"36 35 98:0 / /mnt/a\040b rw,noatime master:1 - btrfs /dev/loop3 rw,space_cache=v2";
        assert_eq!(
            crate::util::mountinfo_fields(l),
            Some(("/mnt/a b".to_string(), "btrfs", "/dev/loop3"))
        );
        assert_eq!(crate::util::unescape_mountinfo(r"a\134b\011c"), "a\\b\tc");
    }

    #[test]
    fn a_hostile_volume_stream_writes_nothing_outside_the_volume() {
        let tmp = crate::util::tempdir::TempDir::new("bivy-hostile-stream");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let meta = b"architecture: x86_64\ncreation_date: 1\n";
        let mut add = |h: &mut tar::Header, name: &str, data: &[u8]| {
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Raw names: the builder itself refuses `..`.
            let raw = name.as_bytes();
            h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
            h.set_cksum();
            b.append(h, data).unwrap();
        };
        add(&mut tar::Header::new_gnu(), "metadata.yaml", meta);
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_link_name(&outside).unwrap();
        add(&mut l, "rootfs/x", b"");
        add(&mut tar::Header::new_gnu(), "rootfs/x/evil", b"evil");
        add(&mut tar::Header::new_gnu(), "rootfs/../../escape", b"evil");
        let stream = b.into_inner().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let r = unpack_volume(&vol, &mut &stream[..]);
        assert!(r.is_err(), "a hostile stream was taken");
        assert!(!outside.join("evil").exists(), "written through a symlink");
        assert!(!tmp.path().join("escape").exists() && !vol.join("escape").exists());
        assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0, "left behind");
    }

    #[test]
    fn send_receive_round_trip() {
        if !crate::test_skip::require_root() {
            return;
        }
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("test-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let d = dir::Dir::new("t", &StringMap::new(), &base).expect("dir");
        d.mount().expect("mount");
        let src = d.path().join("containers/a");
        d.create_volume(&src).expect("volume");
        std::fs::create_dir_all(src.join("rootfs/etc")).unwrap();
        std::fs::create_dir_all(src.join("templates")).unwrap();
        std::fs::write(src.join("rootfs/etc/hostname"), "a\n").unwrap();
        std::os::unix::fs::chown(src.join("rootfs/etc/hostname"), Some(1234), Some(4321)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", src.join("rootfs/link")).unwrap();
        rustix::fs::setxattr(
            src.join("rootfs/etc/hostname"),
            "user.k",
            b"v",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::fs::write(src.join("templates/hostname.tpl"), "{{ container.name }}\n").unwrap();
        std::fs::write(
            src.join("metadata.json"),
            r#"{"architecture":"x86_64","creation_date":1700000000,"properties":{"os":"t"}}"#,
        )
        .unwrap();
        let mut stream = Vec::new();
        d.send(&src, &mut stream).expect("send");
        let est = stream_size(&src);
        assert!(
            est * 2 >= stream.len() as u64 && est <= stream.len() as u64 * 2,
            "estimate {est} for {} bytes",
            stream.len()
        );
        let dst = d.path().join("containers/b");
        d.receive(&dst, &mut &stream[..]).expect("receive");
        let f = dst.join("rootfs/etc/hostname");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\n");
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 4321));
        let mut v = [0u8; 8];
        let n = rustix::fs::getxattr(&f, "user.k", &mut v).unwrap();
        assert_eq!(&v[..n], b"v");
        assert_eq!(
            std::fs::read_link(dst.join("rootfs/link")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert!(dst.join("templates/hostname.tpl").is_file());
        let meta: crate::api::ImageMetadata =
            serde_json::from_slice(&std::fs::read(dst.join("metadata.json")).unwrap()).unwrap();
        assert_eq!(meta.properties.get("os").map(String::as_str), Some("t"));
        // A truncated stream fails and leaves no volume and no spool file.
        let bad = d.path().join("containers/c");
        assert!(d.receive(&bad, &mut &stream[..stream.len() / 3]).is_err());
        assert!(!bad.exists() && !bad.with_extension("stream").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
