//! The `dir` driver: volumes are plain directories under the pool's directory. Clones are
//! copies made by [`super::copy::copy_tree`], which reflinks file data (FICLONE) where the
//! filesystem can (btrfs, xfs) and copies it otherwise (ext4).

use std::io;
use std::path::{Path, PathBuf};

use super::{Driver, Usage};
use crate::api::StringMap;

pub struct Dir {
    path: PathBuf,
    /// The pool's directory is bivy's own (`storage-pools/NAME`), not a `source` the admin gave:
    /// a delete removes it too. A given source (a directory of theirs, a mount point) stays, as
    /// LXD's delete empties it and leaves it.
    own: bool,
}

impl Dir {
    /// `source` (optional) is the directory holding the pool; LXD's default is
    /// `$BIVY_DIR/storage-pools/NAME`.
    pub fn new(name: &str, config: &StringMap, bivy_dir: &Path) -> io::Result<Dir> {
        for k in config.keys() {
            if k != "source" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Invalid config key {k:?} for a dir storage pool (it has: source)"),
                ));
            }
        }
        let path = match config.get("source").filter(|s| !s.is_empty()) {
            Some(s) if !s.starts_with('/') => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Storage pool source {s:?} must be an absolute path"),
                ))
            }
            Some(s) => PathBuf::from(s),
            None => bivy_dir.join("storage-pools").join(name),
        };
        let own = path == bivy_dir.join("storage-pools").join(name);
        Ok(Dir { path, own })
    }
}

impl Driver for Dir {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn create(&self, config: &mut StringMap) -> io::Result<()> {
        // An existing source must be empty (LXD refuses a non-empty one too): a pool never
        // adopts or later deletes data it did not make.
        match std::fs::read_dir(&self.path) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "Source path {:?} isn't empty",
                            self.path.display().to_string()
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::util::fs::create_dir_mode(&self.path, super::POOL_ROOT_MODE).map_err(
                    |e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())),
                )?;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", self.path.display()),
                ))
            }
        }
        config.insert("source".into(), self.path.display().to_string());
        Ok(())
    }

    fn mount(&self) -> io::Result<()> {
        if self.path.exists() {
            return Ok(());
        }
        crate::util::fs::create_dir_mode(&self.path, super::POOL_ROOT_MODE)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }

    fn unmount(&self) -> io::Result<()> {
        Ok(())
    }

    fn delete(&self) -> io::Result<()> {
        // Only what the layout made; a user's data under a custom source is never removed.
        for d in super::LAYOUT_DIRS {
            match std::fs::remove_dir(self.path.join(d)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", self.path.join(d).display()),
                    ))
                }
            }
        }
        if !self.own {
            return Ok(());
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.path.display()),
            )),
        }
    }

    fn create_volume(&self, path: &Path) -> io::Result<()> {
        if let Some(p) = path.parent() {
            super::make_volume_parent(p)?;
        }
        std::fs::create_dir(path)
            .and_then(|()| crate::util::fs::ensure_mode(path, super::VOLUME_MODE).map(drop))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn clone_volume(&self, src: &Path, dst: &Path, _readonly: bool) -> io::Result<()> {
        copy_volume(src, dst, &super::copy::CopyOptions::default())
    }

    fn clone_volume_in_background(
        &self,
        src: &Path,
        dst: &Path,
        cancel: &super::copy::Cancel,
    ) -> io::Result<()> {
        let opts = super::copy::CopyOptions {
            cancel: Some(cancel),
            ..Default::default()
        };
        copy_volume(src, dst, &opts)
    }

    fn set_readonly(&self, _path: &Path) -> io::Result<()> {
        // Plain directories have no read-only flag that root respects; the daemon never writes
        // to image and snapshot volumes.
        Ok(())
    }

    fn delete_volume(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("deleting {}: {e}", path.display()),
            )),
        }
    }

    fn usage(&self) -> io::Result<Usage> {
        super::statvfs_usage(&self.path)
    }
}

/// A volume's copy: its parent made if missing, the volume's mode set.
fn copy_volume(src: &Path, dst: &Path, opts: &super::copy::CopyOptions) -> io::Result<()> {
    if let Some(p) = dst.parent() {
        super::make_volume_parent(p)?;
    }
    super::copy::copy_tree_opts(src, dst, opts)?;
    crate::util::fs::ensure_mode(dst, super::VOLUME_MODE)
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dst.display())))
}
