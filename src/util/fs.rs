//! Atomic file replacement: write a temp file, fsync it, rename over the target, fsync the directory.
//! Also the private scratch directories of the fuzzing entry points ([`fuzz_scratch_dir`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Flags that make a new regular file and write it, never following a symlink and never
/// opening one that is there already (`O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC`).
pub const NEW_FILE: rustix::fs::OFlags = rustix::fs::OFlags::WRONLY
    .union(rustix::fs::OFlags::CREATE)
    .union(rustix::fs::OFlags::EXCL)
    .union(rustix::fs::OFlags::NOFOLLOW)
    .union(rustix::fs::OFlags::CLOEXEC);

/// Read a small text file (procfs, cgroupfs, pid files) without the size probe `fs::read_to_string`
/// makes first: one open and a read or two, where the list of many containers reads thousands.
pub fn read_small(path: &Path) -> io::Result<String> {
    read_text(path, false)
}

/// [`read_small`] for a file the kernel renders in one piece: a single-value cgroup file,
/// `cgroup.events`, `/proc/PID/stat`, or a small regular file such as a pid file. One read
/// that leaves room in the buffer is then the whole file (a regular file's short read is its
/// end, and a one-record seq_file is rendered whole before it is copied out), so the read at
/// the end that returns nothing is not made. Not for files of many records (`cgroup.procs`,
/// `mountinfo`): seq_file ends a read early where the next record does not fit its page.
pub fn read_one_piece(path: &Path) -> io::Result<String> {
    read_text(path, true)
}

fn read_text(path: &Path, one_piece: bool) -> io::Result<String> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if one_piece && n < chunk.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The names of the entries of `dir` (none when it cannot be read): one directory read where a
/// loop would otherwise look each name up (the daemon's start goes over every instance).
pub fn names_in(dir: &Path) -> std::collections::HashSet<std::ffi::OsString> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect()
}

/// Atomically replace `path` with `data` (mode 0600).
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    atomic_write_mode(path, data, 0o600)
}

/// Atomically replace `path` with `data`, the new file's permission bits exactly `mode` (set on
/// the temp file before the rename, whatever the umask).
pub fn atomic_write_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    replace(path, data, mode, true)
}

/// Replace `path` with `data` (mode 0600) through a rename, without syncing: the file is
/// whole or as it was, but after a crash of the host it may be the old one. For a write that a
/// synced one follows before anyone is told ([`sync_file`] otherwise).
pub fn replace_unsynced(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, 0o600, false)
}

/// Make what was written to `path` and its name in its directory durable.
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()?;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    File::open(dir)?.sync_all()
}

fn replace(path: &Path, data: &[u8], mode: u32, sync: bool) -> io::Result<()> {
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
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
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

/// The name of the empty directory kept in a parent of directories that come and go (run and
/// log directories), for [`make_dir_from_spare`] to rename.
const SPARE_DIR: &str = ".spare-dir";

/// Make directory `dir` (its parent exists) with permission bits `mode`, as [`create_dir_mode`]
/// does, by renaming the spare directory its parent keeps ([`make_spare_dir`]) when there is one
/// and `dir` is not there: a rename allocates no inode, which on a busy ext4 without a journal
/// costs up to a millisecond (see [`spread_subdirs`]). Whether the spare was taken.
pub fn make_dir_from_spare(dir: &Path, mode: u32) -> io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    if let Some(parent) = dir.parent() {
        let spare = parent.join(SPARE_DIR);
        if renameat_with(CWD, &spare, CWD, dir, RenameFlags::NOREPLACE).is_ok() {
            ensure_mode(dir, mode)?;
            return Ok(true);
        }
    }
    create_dir_mode(dir, mode).map(|()| false)
}

/// Make the spare directory of `parent` ([`make_dir_from_spare`]) unless it is there: 0700
/// until it is taken (its parent may be traversable by anyone).
pub fn make_spare_dir(parent: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .mode(0o700)
        .create(parent.join(SPARE_DIR))
    {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Ask the filesystem to spread the directories made in `dir` over its allocation groups, as it
/// does for top-level directories (`chattr +T`, `FS_TOPDIR_FL`, honoured by ext2/3/4's Orlov
/// allocator). For directories whose children are separate trees made and removed as instances come
/// and go (volumes, run and log directories). Without it every child lands in the block group of
/// the one before, and on ext4 without a journal a new inode there is found only after a scan past
/// every inode of the group freed in the last minute (six minutes while its inode table block is
/// dirty: `recently_deleted()` in `fs/ext4/ialloc.c`): under create/delete churn a busybox rootfs
/// (300 inodes) took 60-150 ms to copy instead of 5. A placement hint only: `Ok(false)` where the
/// filesystem has no such flag (btrfs, xfs and tmpfs refuse it); once it is set, later calls change
/// nothing.
pub fn spread_subdirs(dir: &Path) -> io::Result<bool> {
    use rustix::fs::{IFlags, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let unsupported = |e: rustix::io::Errno| {
        matches!(
            e,
            rustix::io::Errno::NOTTY | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL
        )
    };
    let flags = match rustix::fs::ioctl_getflags(&fd) {
        Ok(f) => f,
        Err(e) if unsupported(e) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if flags.contains(IFlags::TOPDIR) {
        return Ok(true);
    }
    match rustix::fs::ioctl_setflags(&fd, flags | IFlags::TOPDIR) {
        Ok(()) => Ok(true),
        Err(e) if unsupported(e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// [`spread_subdirs`] for the daemon's own tree: a failure other than "not supported here" is
/// logged (`what` names the directory), never returned.
pub fn spread_subdirs_or_log(dir: &Path, what: &str) {
    if let Err(e) = spread_subdirs(dir) {
        eprintln!(
            "bivy: {} ({what}): setting the top-directory flag: {e}",
            dir.display()
        );
    }
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
    use std::path::PathBuf;

    #[test]
    fn read_small_reads_whole_files_of_any_size() {
        let dir = std::env::temp_dir().join(format!("bivy-fs-small-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        for n in [0, 1, 4095, 4096, 4097, 8192, 20_000] {
            let text: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            fs::write(&p, &text).unwrap();
            assert_eq!(read_small(&p).unwrap(), text, "{n} bytes");
            assert_eq!(read_one_piece(&p).unwrap(), text, "{n} bytes, one piece");
        }
        // procfs files report size 0: read to their end all the same.
        for stat in [
            read_small(Path::new("/proc/self/stat")).unwrap(),
            read_one_piece(Path::new("/proc/self/stat")).unwrap(),
        ] {
            assert!(stat.contains(')') && stat.ends_with('\n'), "{stat}");
        }
        // A file of many records longer than a page comes whole from read_small.
        let maps = read_small(Path::new("/proc/self/maps")).unwrap();
        assert!(maps.ends_with('\n'), "{maps}");
        assert!(read_small(&dir.join("missing")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

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

    fn topdir(p: &Path) -> bool {
        let f = File::open(p).unwrap();
        rustix::fs::ioctl_getflags(&f)
            .unwrap()
            .contains(rustix::fs::IFlags::TOPDIR)
    }

    #[test]
    fn spread_subdirs_sets_the_top_directory_flag() {
        // Under target/: the filesystem the daemon's tree is on in the tests and the bench.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("test-spread-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let r = spread_subdirs(&dir).expect("spread_subdirs");
        if !r {
            fs::remove_dir_all(&dir).unwrap();
            crate::test_skip::skip(
                &crate::test_skip::current_test_name(),
                "the filesystem under target/ has no top-directory flag (not ext2/3/4)",
            );
            return;
        }
        assert!(topdir(&dir));
        // Set once: a second call finds it and changes nothing.
        assert!(spread_subdirs(&dir).unwrap());
        assert!(topdir(&dir));
        // Not inherited: a directory made inside is an ordinary one.
        fs::create_dir(dir.join("child")).unwrap();
        assert!(!topdir(&dir.join("child")));
        // A missing directory, or a file, is an error.
        assert!(spread_subdirs(&dir.join("missing")).is_err());
        fs::write(dir.join("file"), b"").unwrap();
        assert!(spread_subdirs(&dir.join("file")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spread_subdirs_is_a_no_op_where_the_flag_does_not_exist() {
        // tmpfs has inode flags but not this one.
        let shm = Path::new("/dev/shm");
        let is_tmpfs = nix::sys::statfs::statfs(shm)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !is_tmpfs {
            crate::test_skip::skip(
                &crate::test_skip::current_test_name(),
                "/dev/shm is not a tmpfs",
            );
            return;
        }
        let dir = shm.join(format!("bivy-spread-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        let r = spread_subdirs(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert!(!r.expect("unsupported is not an error"));
    }
}
