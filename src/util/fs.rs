//! Atomic file replacement: write a temp file, fsync it, rename over the target, fsync the directory.
//! Also the private scratch directories of the fuzzing entry points ([`fuzz_scratch_dir`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Atomically replace `path` with `data` (mode 0600).
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    atomic_write_mode(path, data, 0o600)
}

/// Atomically replace `path` with `data`, the new file's permission bits exactly `mode` (set on
/// the temp file before the rename, whatever the umask).
pub fn atomic_write_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        if mode != 0o600 {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Set the permission bits of `path` to exactly `mode` when they differ, without following a
/// final symlink (a symlink is left alone). Returns the old bits when it changed them.
pub fn ensure_mode(path: &Path, mode: u32) -> io::Result<Option<u32>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = fs::symlink_metadata(path)?;
    if md.file_type().is_symlink() {
        return Ok(None);
    }
    let old = md.mode() & 0o7777;
    if old == mode {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(Some(old))
}

/// [`ensure_mode`] for the daemon's own tree: logs what it mended (`what` says why), and an
/// error is logged too, not returned (a read-only snapshot cannot be changed: its parent
/// directory is what protects it).
pub fn mend_mode(path: &Path, mode: u32, what: &str) {
    match ensure_mode(path, mode) {
        Ok(Some(old)) => eprintln!(
            "bivy: permissions of {} ({what}) mended: {old:04o} -> {mode:04o}",
            path.display()
        ),
        Ok(None) => {}
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("bivy: setting the permissions of {}: {e}", path.display()),
    }
}

/// `create_dir_all`, then the last directory's permission bits set to `mode` (whatever the
/// umask made of it, and whether it existed or not).
pub fn create_dir_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    ensure_mode(path, mode).map(drop)
}

/// fsync a directory (after creating or removing entries in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A directory of this thread's own, `$TMPDIR/bivy-fuzz-TAG-PID-N` (mode 0700), made on first
/// use and removed with its contents when the thread ends: the scratch space of a fuzzing entry
/// point (libFuzzer runs one thread; `cargo test` runs tests on several).
#[doc(hidden)]
pub fn fuzz_scratch_dir(tag: &'static str) -> std::path::PathBuf {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::os::unix::fs::DirBuilderExt;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Dirs(HashMap<&'static str, PathBuf>);
    impl Drop for Dirs {
        fn drop(&mut self) {
            for d in self.0.values() {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
    thread_local! {
        static DIRS: RefCell<Dirs> = RefCell::new(Dirs(HashMap::new()));
    }
    static N: AtomicU64 = AtomicU64::new(0);
    DIRS.with(|d| {
        d.borrow_mut()
            .0
            .entry(tag)
            .or_insert_with(|| {
                let n = N.fetch_add(1, Ordering::Relaxed);
                let dir = std::env::temp_dir()
                    .join(format!("bivy-fuzz-{tag}-{}-{n}", std::process::id()));
                let _ = fs::remove_dir_all(&dir);
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
                dir
            })
            .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("bivy-fs-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
