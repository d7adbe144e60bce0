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

    /// Mark a finished volume read-only (image base volumes) where the driver can.
    fn set_readonly(&self, path: &Path) -> io::Result<()>;

    /// Delete the volume at `path`, whatever state a crash left it in (a plain directory, a
    /// subvolume, a read-only snapshot). A missing path is not an error.
    fn delete_volume(&self, path: &Path) -> io::Result<()>;

    /// Space used and total on the pool.
    fn usage(&self) -> io::Result<Usage>;
}
