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
//! ```
//!
//! Volume directory names are UUIDs, so renames never move data. A driver only knows how to make,
//! clone and delete a volume at a path; what lives where is decided here.

use std::io;
use std::path::{Path, PathBuf};

use crate::api::StringMap;

/// Space used and available on a pool, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub used: u64,
    pub total: u64,
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
}

pub mod btrfs;
pub mod copy;
pub mod dir;

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

    /// An image's base volume (unpacked once, read-only).
    pub fn image(&self, fingerprint: &str) -> PathBuf {
        self.driver.path().join("images").join(fingerprint)
    }

    /// Make the layout's top directories.
    pub fn make_layout(&self) -> io::Result<()> {
        for d in ["containers", "containers-snapshots", "images"] {
            std::fs::create_dir_all(self.driver.path().join(d))?;
        }
        Ok(())
    }
}
