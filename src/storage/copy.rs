//! A faithful recursive copy of a volume's tree, for the `dir` driver (image base volume to new
//! container, snapshots, restores, copies).
//!
//! Everything is done with `*at()` calls relative to directory fds opened `O_NOFOLLOW`, so a
//! symlink in the source or in the destination is never followed and nothing is ever written
//! outside `dst`, even if the source tree (a running container's rootfs) changes under us.
//!
//! Per entry: `statat`, create (`mkdirat`, `openat(O_CREAT|O_EXCL)`, `symlinkat`, `mknodat`,
//! or `linkat` for a second name of a hard-linked inode), file data (`FICLONE`, then
//! `copy_file_range`, then `pread`/`pwrite`; holes kept with `SEEK_DATA`/`SEEK_HOLE`), then the
//! metadata in the only order that keeps it: owner (chown clears setuid bits and
//! `security.capability`), mode, xattrs, times. A directory gets its metadata after its
//! contents, so its times stick and a read-only mode or default ACL never gets in the way.
//!
//! Symlinks and device nodes have no usable fd for xattrs, so theirs are read and written
//! through `/proc/self/fd/<dirfd>/<name>` with the `l*xattr` calls: still relative to a directory
//! fd, and the last component is not followed.
//!
//! Regular files' data and metadata are handed to a second thread while this one walks the tree
//! and creates entries; file contents never change a directory's times, so the walker can finish
//! a directory while its files are still being filled.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, RawDir, ResolveFlags, SeekFrom, Stat, Timespec,
    Timestamps, XattrFlags,
};
use rustix::io::Errno;

/// What [`copy_tree`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files whose data was copied (a hard-linked inode counts once).
    pub files: u64,
    /// Bytes of regular-file data (apparent sizes, holes included).
    pub bytes: u64,
    /// Files cloned by `FICLONE` (shared extents, no data written).
    pub reflinked: u64,
    /// Device nodes left out because of [`CopyOptions::skip_devices`].
    pub skipped_devices: u64,
}

/// Knobs for [`copy_tree_opts`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions<'a> {
    /// Leave out block and character device nodes (e.g. when the copy will be used where mknod
    /// is refused); their number is logged and returned.
    pub skip_devices: bool,
    /// Give up (`ErrorKind::Interrupted`, the partial copy removed) once this is cancelled.
    pub cancel: Option<&'a Cancel>,
}

/// Stops a copy from another thread ([`CopyOptions::cancel`]): the copy gives up at its next
/// entry, and its threads, which may run at idle priority ([`crate::sys::run_when_idle`]), are
/// raised to the normal one, so that it ends soon whatever else runs.
#[derive(Debug, Default)]
pub struct Cancel {
    set: AtomicBool,
    /// The threads working for the copy.
    threads: Mutex<Vec<i32>>,
}

impl Cancel {
    pub fn cancel(&self) {
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        self.set.store(true, Ordering::SeqCst);
        for &tid in threads.iter() {
            crate::sys::thread_run_when_idle(tid, false);
        }
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }

    /// The calling thread works for the copy until the guard is dropped.
    fn enter(&self) -> Entered<'_> {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if self.set.load(Ordering::SeqCst) {
            crate::sys::run_when_idle(false);
        }
        threads.push(tid);
        Entered(self, tid)
    }
}

/// A thread working for a copy ([`Cancel::enter`]).
struct Entered<'a>(&'a Cancel, i32);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut threads = self.0.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|&t| t != self.1);
    }
}

/// Copy the tree at `src` to `dst` (which must not exist; its parent must). Preserves file type,
/// mode (incl. setuid/sticky), numeric owner, atime/mtime (ns, directories and symlinks too),
/// all xattrs, hard links within the tree, symlinks verbatim, device nodes, fifos, sockets, and
/// holes in sparse files. On error the partial `dst` is removed and the error names the path and
/// the step.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<CopyStats> {
    copy_tree_opts(src, dst, &CopyOptions::default())
}

/// Copy the entries of directory `src` that `skip` does not name into the existing directory
/// `dst`: directories with [`copy_tree`], files with `std::fs::copy` (a volume's top level:
/// `metadata.json`, `templates/`, `rootfs/`).
pub fn copy_entries(
    src: &Path,
    dst: &Path,
    skip: impl Fn(&std::ffi::OsStr) -> bool,
) -> io::Result<()> {
    let ctx = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    for e in std::fs::read_dir(src).map_err(|e| ctx(src, e))? {
        let e = e.map_err(|e| ctx(src, e))?;
        let name = e.file_name();
        if skip(&name) {
            continue;
        }
        let t = dst.join(&name);
        if e.file_type().map_err(|x| ctx(&e.path(), x))?.is_dir() {
            copy_tree(&e.path(), &t)?;
        } else {
            std::fs::copy(e.path(), &t).map_err(|x| ctx(&e.path(), x))?;
        }
    }
    Ok(())
}

/// [`copy_tree`] with options.
pub fn copy_tree_opts(src: &Path, dst: &Path, opts: &CopyOptions) -> io::Result<CopyStats> {
    let stats = copy_tree_inner(src, dst, opts, None)?;
    if stats.skipped_devices > 0 {
        eprintln!(
            "bivy: copy {}: left out {} device nodes",
            src.display(),
            stats.skipped_devices
        );
    }
    Ok(stats)
}

/// Files with data waiting for the filler thread; bounds the fds held open (two per job).
const QUEUE: usize = 64;
/// Buffer for one `getdents` batch.
const DIRBUF: usize = 32 * 1024;
/// Largest xattr name list and value (`XATTR_LIST_MAX`, `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 64 * 1024;
/// Buffer for the read/write fallback.
const RWBUF: usize = 256 * 1024;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn copy_tree_inner(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    fail_on: Option<&[u8]>,
) -> io::Result<CopyStats> {
    let fail = |step: &str, e: Errno| step_error(src, b"", None, step, e);
    let name = match dst.file_name() {
        Some(n) => n.as_bytes(),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("copy to {}: not a directory name", dst.display()),
            ))
        }
    };
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let sroot = rfs::open(src, DIR_FLAGS, Mode::empty()).map_err(|e| fail("open", e))?;
    let st = rfs::fstat(&sroot).map_err(|e| fail("fstat", e))?;
    let dparent = rfs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("copy to {}: open parent: {}", dst.display(), errno_text(e)),
        )
    })?;
    rfs::mkdirat(&dparent, name, Mode::from_raw_mode(0o700)).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("copy to {}: mkdir: {}", dst.display(), errno_text(e)),
        )
    })?;
    // Until the partial copy is removed, on an error.
    let _entered = opts.cancel.map(Cancel::enter);
    let result = (|| {
        let droot = rfs::openat(&dparent, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| fail("open destination", e))?;
        let shared = Shared {
            src,
            opts,
            dst_root: droot.try_clone()?,
            links: Mutex::new(HashMap::new()),
            reflink: AtomicBool::new(true),
            copy_range: AtomicBool::new(true),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            proc_ok: Path::new("/proc/self/fd").is_dir(),
            stop: AtomicBool::new(false),
            fail_on,
        };
        let mut stats = CopyStats::default();
        std::thread::scope(|scope| -> io::Result<()> {
            let (tx, rx) = mpsc::sync_channel::<FileJob>(QUEUE);
            // Without a second thread the walker fills files itself.
            let filler = std::thread::Builder::new()
                .name("bivy-copy".into())
                .spawn_scoped(scope, || {
                    let _entered = opts.cancel.map(Cancel::enter);
                    let mut w = Worker::new(&shared);
                    for job in rx {
                        if w.sh.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        w.fill(job)?;
                    }
                    Ok::<_, io::Error>(w.stats)
                })
                .ok();
            let mut w = Worker::new(&shared);
            if filler.is_some() {
                w.tx = Some(tx);
            } else {
                drop(tx);
            }
            let walked = w
                .copy_dir(&sroot, &droot)
                .and_then(|()| w.set_meta_fd(&sroot, &droot, &st, true));
            if walked.is_err() {
                shared.stop.store(true, Ordering::Relaxed);
            }
            // Closing the queue lets the filler finish; its error (which made the walker's next
            // send fail) is the one to report.
            w.tx = None;
            let filled = match filler.map(|f| f.join()) {
                None => Ok(CopyStats::default()),
                Some(Ok(r)) => r,
                Some(Err(_)) => Err(io::Error::other(format!(
                    "copy {}: file copy thread panicked",
                    src.display()
                ))),
            };
            let fstats = filled?;
            walked?;
            stats = w.stats;
            stats.files += fstats.files;
            stats.bytes += fstats.bytes;
            stats.reflinked += fstats.reflinked;
            Ok(())
        })?;
        Ok(stats)
    })();
    if result.is_err() {
        let _ = remove_tree(dparent.as_fd(), name);
    }
    result
}

/// State shared by the walker and the filler.
struct Shared<'a> {
    src: &'a Path,
    opts: &'a CopyOptions<'a>,
    dst_root: OwnedFd,
    /// (st_dev, st_ino) of an inode with more than one name -> its first path in the copy.
    links: Mutex<HashMap<(u64, u64), Vec<u8>>>,
    /// FICLONE still worth trying (not refused by the filesystem).
    reflink: AtomicBool,
    /// copy_file_range still worth trying.
    copy_range: AtomicBool,
    /// Our euid/egid: what a new inode gets, so a chown to them can be skipped.
    uid: u32,
    gid: u32,
    /// `/proc/self/fd` is there for the xattrs of symlinks and device nodes.
    proc_ok: bool,
    /// Set when the walker fails, so the filler stops early.
    stop: AtomicBool,
    /// Tests: fail on the entry with this name.
    fail_on: Option<&'a [u8]>,
}

/// A regular file created by the walker, waiting for its data and metadata.
struct FileJob {
    src: OwnedFd,
    dst: OwnedFd,
    st: Stat,
    /// Path relative to the roots, for error messages.
    rel: Vec<u8>,
}

struct Worker<'s, 'a> {
    sh: &'s Shared<'a>,
    stats: CopyStats,
    /// The current entry's path relative to the roots (`a/b/c`).
    rel: Vec<u8>,
    /// Free getdents buffers, one in use per directory level.
    dirbufs: Vec<Vec<u8>>,
    xnames: Vec<u8>,
    xvalue: Vec<u8>,
    rwbuf: Vec<u8>,
    /// `/proc/self/fd/<dirfd>/<name>\0` scratch, for xattrs of symlinks and device nodes.
    proc_src: Vec<u8>,
    proc_dst: Vec<u8>,
    tx: Option<mpsc::SyncSender<FileJob>>,
}

type Res<T> = Result<T, (&'static str, Errno)>;

impl<'s, 'a> Worker<'s, 'a> {
    fn new(sh: &'s Shared<'a>) -> Self {
        Worker {
            sh,
            stats: CopyStats::default(),
            rel: Vec::with_capacity(256),
            dirbufs: Vec::new(),
            xnames: Vec::new(),
            xvalue: Vec::new(),
            rwbuf: Vec::new(),
            proc_src: Vec::with_capacity(64),
            proc_dst: Vec::with_capacity(64),
            tx: None,
        }
    }

    fn err(&self, name: Option<&[u8]>, step: &str, e: Errno) -> io::Error {
        step_error(self.sh.src, &self.rel, name, step, e)
    }

    /// Copy the contents of directory `sdir` into the empty directory `ddir`.
    fn copy_dir(&mut self, sdir: &OwnedFd, ddir: &OwnedFd) -> io::Result<()> {
        let mut buf = self
            .dirbufs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(DIRBUF));
        let mut result = Ok(());
        {
            let mut it = RawDir::new(sdir, buf.spare_capacity_mut());
            while let Some(ent) = it.next() {
                let ent = match ent {
                    Ok(e) => e,
                    Err(e) => {
                        result = Err(self.err(None, "getdents", e));
                        break;
                    }
                };
                let name = ent.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let len = self.rel.len();
                if len > 0 {
                    self.rel.push(b'/');
                }
                self.rel.extend_from_slice(name);
                let r = self.copy_entry(sdir, ddir, ent.file_name());
                self.rel.truncate(len);
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
            }
        }
        self.dirbufs.push(buf);
        result
    }

    /// Copy one entry; `self.rel` already names it.
    fn copy_entry(&mut self, sdir: &OwnedFd, ddir: &OwnedFd, name: &CStr) -> io::Result<()> {
        let fail = |w: &Self, (step, e): (&str, Errno)| w.err(None, step, e);
        if self.sh.fail_on == Some(name.to_bytes()) {
            return Err(fail(self, ("injected", Errno::IO)));
        }
        if self.sh.opts.cancel.is_some_and(Cancel::is_set) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                format!("copy {}: cancelled", self.sh.src.display()),
            ));
        }
        let st = rfs::statat(sdir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(self, ("statat", e)))?;
        let ft = FileType::from_raw_mode(st.st_mode as _);
        if ft == FileType::Directory {
            rfs::mkdirat(ddir, name, Mode::from_raw_mode(0o700))
                .map_err(|e| fail(self, ("mkdirat", e)))?;
            let s = rfs::openat(sdir, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| fail(self, ("open", e)))?;
            let d = rfs::openat(ddir, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| fail(self, ("open destination", e)))?;
            self.copy_dir(&s, &d)?;
            return self.set_meta_fd(&s, &d, &st, false);
        }
        if matches!(ft, FileType::BlockDevice | FileType::CharacterDevice)
            && self.sh.opts.skip_devices
        {
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        if st.st_nlink > 1 {
            // Another name of an inode already copied becomes a hard link to the copy. The lock is
            // held while the first name is created so that the map never names a missing file.
            let sh = self.sh;
            let mut links = sh
                .links
                .lock()
                .map_err(|_| io::Error::other("copy: hard link table poisoned"))?;
            let key = (st.st_dev as u64, st.st_ino as u64);
            if let Some(first) = links.get(&key) {
                return self.link(first, ddir, name);
            }
            let job = self
                .create(sdir, ddir, name, &st, ft)
                .map_err(|e| fail(self, e))?;
            links.insert(key, self.rel.clone());
            drop(links);
            return self.finish(sdir, ddir, name, st, ft, job);
        }
        let job = self
            .create(sdir, ddir, name, &st, ft)
            .map_err(|e| fail(self, e))?;
        self.finish(sdir, ddir, name, st, ft, job)
    }

    /// Create the non-directory entry `name` in `ddir`; a regular file comes back as open
    /// (source, destination) fds.
    fn create(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        st: &Stat,
        ft: FileType,
    ) -> Res<Option<(OwnedFd, OwnedFd)>> {
        match ft {
            FileType::RegularFile => {
                // O_NONBLOCK: if the entry was swapped for a fifo after statat, don't hang on it.
                let s = rfs::openat(
                    sdir,
                    name,
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC
                        | OFlags::NOCTTY
                        | OFlags::NONBLOCK,
                    Mode::empty(),
                )
                .map_err(|e| ("open", e))?;
                let d = rfs::openat(
                    ddir,
                    name,
                    crate::util::fs::NEW_FILE,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| ("create", e))?;
                Ok(Some((s, d)))
            }
            FileType::Symlink => {
                let mut target = [0u8; 4096];
                let n = rfs::readlinkat_raw(sdir, name, &mut target[..])
                    .map_err(|e| ("readlinkat", e))?;
                if n >= target.len() {
                    return Err(("readlinkat", Errno::NAMETOOLONG));
                }
                rfs::symlinkat(&target[..n], ddir, name).map_err(|e| ("symlinkat", e))?;
                Ok(None)
            }
            _ => {
                let perm = Mode::from_raw_mode((st.st_mode & 0o777) as _);
                rfs::mknodat(ddir, name, ft, perm, st.st_rdev as _).map_err(|e| ("mknodat", e))?;
                Ok(None)
            }
        }
    }

    /// Metadata of a created entry: a regular file goes to the filler, the rest is done here.
    fn finish(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        st: Stat,
        ft: FileType,
        job: Option<(OwnedFd, OwnedFd)>,
    ) -> io::Result<()> {
        if let Some((src, dst)) = job {
            let job = FileJob {
                src,
                dst,
                st,
                rel: self.rel.clone(),
            };
            return match &self.tx {
                // The filler only hangs up after an error, which it reports itself.
                Some(tx) => tx
                    .send(job)
                    .map_err(|_| io::Error::other("copy: file copy thread stopped")),
                None => self.fill(job),
            };
        }
        self.set_meta_at(sdir, ddir, name, &st, ft == FileType::Symlink)
    }

    /// Second name of an inode whose first name in the copy is `first` (relative to the root).
    fn link(&self, first: &[u8], ddir: &OwnedFd, name: &CStr) -> io::Result<()> {
        let (dir, base) = match first.iter().rposition(|&b| b == b'/') {
            Some(i) => (&first[..i], &first[i + 1..]),
            None => (&b""[..], first),
        };
        let opened;
        let from: BorrowedFd<'_> = if dir.is_empty() {
            self.sh.dst_root.as_fd()
        } else {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            opened = match rfs::openat2(&self.sh.dst_root, dir, flags, Mode::empty(), resolve) {
                // Before Linux 5.6: the directories on this path were all made by us.
                Err(Errno::NOSYS) => rfs::openat(
                    &self.sh.dst_root,
                    dir,
                    flags | OFlags::NOFOLLOW,
                    Mode::empty(),
                ),
                r => r,
            }
            .map_err(|e| self.err(None, "open hard link target", e))?;
            opened.as_fd()
        };
        rfs::linkat(from, base, ddir, name, AtFlags::empty())
            .map_err(|e| self.err(None, "linkat", e))
    }

    /// The filler's part of a regular file: data, then metadata.
    fn fill(&mut self, job: FileJob) -> io::Result<()> {
        self.rel.clear();
        self.rel.extend_from_slice(&job.rel);
        let reflinked = self
            .copy_data(&job.src, &job.dst, &job.st)
            .map_err(|(s, e)| self.err(None, s, e))?;
        self.stats.files += 1;
        self.stats.bytes += job.st.st_size as u64;
        self.stats.reflinked += reflinked as u64;
        self.set_meta_fd(&job.src, &job.dst, &job.st, false)
    }

    /// File data: FICLONE, else copy_file_range or read/write over the data extents.
    fn copy_data(&mut self, s: &OwnedFd, d: &OwnedFd, st: &Stat) -> Res<bool> {
        let size = st.st_size as u64;
        if size == 0 {
            return Ok(false);
        }
        if self.sh.reflink.load(Ordering::Relaxed) {
            match rfs::ioctl_ficlone(d, s) {
                Ok(()) => return Ok(true),
                Err(Errno::OPNOTSUPP | Errno::NOTTY | Errno::NOSYS | Errno::XDEV | Errno::BADF) => {
                    self.sh.reflink.store(false, Ordering::Relaxed)
                }
                // Something about this file (e.g. btrfs nodatacow vs datacow): copy it.
                Err(_) => {}
            }
        }
        // Fewer allocated blocks than the size says: there are holes worth keeping.
        let sparse = (st.st_blocks as u64).saturating_mul(512) < size;
        if !sparse {
            return self.copy_range(s, d, 0, size);
        }
        let mut off = 0;
        while off < size {
            let data = match rfs::seek(s, SeekFrom::Data(off)) {
                Ok(o) => o,
                Err(Errno::NXIO) => break,
                // No SEEK_DATA here: copy it all (holes become zeros).
                Err(Errno::INVAL | Errno::OPNOTSUPP) if off == 0 => {
                    return self.copy_range(s, d, 0, size);
                }
                Err(e) => return Err(("lseek", e)),
            };
            if data >= size {
                break;
            }
            let hole = rfs::seek(s, SeekFrom::Hole(data))
                .map_err(|e| ("lseek", e))?
                .min(size);
            self.copy_range(s, d, data, hole)?;
            off = hole;
        }
        rfs::ftruncate(d, size).map_err(|e| ("ftruncate", e))?;
        Ok(false)
    }

    /// Copy bytes [off, end) at the same offsets.
    fn copy_range(&mut self, s: &OwnedFd, d: &OwnedFd, mut off: u64, end: u64) -> Res<bool> {
        while off < end && self.sh.copy_range.load(Ordering::Relaxed) {
            let (mut i, mut o) = (off, off);
            let len = (end - off).min(1 << 30) as usize;
            match rfs::copy_file_range(s, Some(&mut i), d, Some(&mut o), len) {
                Ok(0) => return Ok(false), // the file shrank under us
                Ok(n) => off += n as u64,
                Err(Errno::INTR) => {}
                Err(
                    Errno::XDEV
                    | Errno::INVAL
                    | Errno::OPNOTSUPP
                    | Errno::NOSYS
                    | Errno::BADF
                    | Errno::PERM,
                ) => self.sh.copy_range.store(false, Ordering::Relaxed),
                Err(e) => return Err(("copy_file_range", e)),
            }
        }
        if off < end && self.rwbuf.is_empty() {
            self.rwbuf = vec![0; RWBUF];
        }
        while off < end {
            let want = ((end - off) as usize).min(self.rwbuf.len());
            let n = match rustix::io::pread(s, &mut self.rwbuf[..want], off) {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(("read", e)),
            };
            let mut done = 0;
            while done < n {
                match rustix::io::pwrite(d, &self.rwbuf[done..n], off + done as u64) {
                    Ok(0) => return Err(("write", Errno::NOSPC)),
                    Ok(w) => done += w,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(("write", e)),
                }
            }
            off += n as u64;
        }
        Ok(false)
    }

    /// Owner, mode, xattrs and times of a regular file or directory, through fds.
    fn set_meta_fd(
        &mut self,
        s: &OwnedFd,
        d: &OwnedFd,
        st: &Stat,
        always_chown: bool,
    ) -> io::Result<()> {
        let (uid, gid) = (st.st_uid, st.st_gid);
        if always_chown || uid != self.sh.uid || gid != self.sh.gid {
            rfs::fchown(
                d,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
            )
            .map_err(|e| self.err(None, "fchown", e))?;
        }
        rfs::fchmod(d, Mode::from_raw_mode((st.st_mode & 0o7777) as _))
            .map_err(|e| self.err(None, "fchmod", e))?;
        self.ensure_xattr_bufs();
        let n = match rfs::flistxattr(s, &mut self.xnames[..]) {
            Ok(n) => n,
            Err(Errno::OPNOTSUPP) => 0,
            Err(e) => return Err(self.err(None, "flistxattr", e)),
        };
        let mut start = 0;
        while start < n {
            let end = start
                + self.xnames[start..n]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(n - start);
            let xname = &self.xnames[start..end];
            start = end + 1;
            let len = match rfs::fgetxattr(s, xname, &mut self.xvalue[..]) {
                Ok(l) => l,
                Err(Errno::NODATA) => continue, // removed meanwhile
                Err(e) => return Err(self.err(Some(xname), "fgetxattr", e)),
            };
            rfs::fsetxattr(d, xname, &self.xvalue[..len], XattrFlags::empty())
                .map_err(|e| self.err(Some(xname), "fsetxattr", e))?;
        }
        rfs::futimens(d, &times(st)).map_err(|e| self.err(None, "futimens", e))
    }

    /// Owner, mode, xattrs and times of a symlink, device node, fifo or socket, by name.
    fn set_meta_at(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        st: &Stat,
        symlink: bool,
    ) -> io::Result<()> {
        let (uid, gid) = (st.st_uid, st.st_gid);
        if uid != self.sh.uid || gid != self.sh.gid {
            rfs::chownat(
                ddir,
                name,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.err(None, "fchownat", e))?;
        }
        if !symlink {
            // Not a symlink (we just made it), so following is moot.
            rfs::chmodat(
                ddir,
                name,
                Mode::from_raw_mode((st.st_mode & 0o7777) as _),
                AtFlags::empty(),
            )
            .map_err(|e| self.err(None, "fchmodat", e))?;
        }
        self.xattrs_at(sdir, ddir, name, symlink)?;
        rfs::utimensat(ddir, name, &times(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(None, "utimensat", e))
    }

    /// Copy the xattrs of an entry that has no fd to use (symlink, device node, fifo, socket)
    /// through `/proc/self/fd/<dirfd>/<name>` with the `l*xattr` calls. `user.*` xattrs that the
    /// kernel refuses on a symlink are left out.
    fn xattrs_at(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        symlink: bool,
    ) -> io::Result<()> {
        if !self.sh.proc_ok {
            return Ok(());
        }
        self.ensure_xattr_bufs();
        proc_path(&mut self.proc_src, sdir, name);
        let Ok(spath) = CStr::from_bytes_with_nul(&self.proc_src) else {
            return Ok(());
        };
        let n = match rfs::llistxattr(spath, &mut self.xnames[..]) {
            Ok(n) => n,
            Err(Errno::OPNOTSUPP) => 0,
            Err(e) => return Err(self.err(None, "llistxattr", e)),
        };
        if n == 0 {
            return Ok(());
        }
        proc_path(&mut self.proc_dst, ddir, name);
        let Ok(dpath) = CStr::from_bytes_with_nul(&self.proc_dst) else {
            return Ok(());
        };
        let mut start = 0;
        while start < n {
            let end = start
                + self.xnames[start..n]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(n - start);
            let xname = &self.xnames[start..end];
            start = end + 1;
            let len = match rfs::lgetxattr(spath, xname, &mut self.xvalue[..]) {
                Ok(l) => l,
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(self.err(Some(xname), "lgetxattr", e)),
            };
            match rfs::lsetxattr(dpath, xname, &self.xvalue[..len], XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::PERM) if symlink && xname.starts_with(b"user.") => {}
                Err(e) => return Err(self.err(Some(xname), "lsetxattr", e)),
            }
        }
        Ok(())
    }

    fn ensure_xattr_bufs(&mut self) {
        if self.xnames.is_empty() {
            self.xnames = vec![0; XATTR_MAX];
            self.xvalue = vec![0; XATTR_MAX];
        }
    }
}

fn times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// `/proc/self/fd/<dir>/<name>\0` into `buf`.
fn proc_path(buf: &mut Vec<u8>, dir: &OwnedFd, name: &CStr) {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    buf.clear();
    let _ = write!(buf, "/proc/self/fd/{}/", dir.as_raw_fd());
    buf.extend_from_slice(name.to_bytes_with_nul());
}

/// The text of an errno without std's " (os error N)" suffix.
fn errno_text(e: Errno) -> String {
    let s = io::Error::from(e).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// "copy <src>/<rel>: <step> [<xattr>]: <error>", keeping the error's kind.
fn step_error(src: &Path, rel: &[u8], xattr: Option<&[u8]>, step: &str, e: Errno) -> io::Error {
    let mut path = PathBuf::from(src);
    if !rel.is_empty() {
        path.push(std::ffi::OsStr::from_bytes(rel));
    }
    let msg = match xattr {
        Some(x) => format!(
            "copy {}: {step} {}: {}",
            path.display(),
            String::from_utf8_lossy(x),
            errno_text(e)
        ),
        None => format!("copy {}: {step}: {}", path.display(), errno_text(e)),
    };
    io::Error::new(io::Error::from(e).kind(), msg)
}

/// Remove `name` in `parent` and everything under it, never following a symlink. Directories are
/// made writable first (a copied read-only directory would otherwise keep its contents).
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = rfs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    let _ = rfs::fchmod(&dir, Mode::from_raw_mode(0o700));
    let mut names = Vec::new();
    {
        let mut buf = Vec::<u8>::with_capacity(DIRBUF);
        let mut it = RawDir::new(&dir, buf.spare_capacity_mut());
        while let Some(ent) = it.next() {
            let n = ent?.file_name().to_bytes().to_vec();
            if n != b"." && n != b".." {
                names.push(n);
            }
        }
    }
    for n in &names {
        remove_tree(dir.as_fd(), n)?;
    }
    rfs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A fresh scratch directory under target/ (not /tmp: it may be tmpfs without reflink or
    /// user xattrs, and the copy should run on the disk the pools use).
    fn scratch(name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("copytest-{name}-{}", std::process::id()));
        let _ = remove_path(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn remove_path(p: &Path) -> io::Result<()> {
        let parent = rfs::open(
            p.parent().unwrap(),
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        remove_tree(parent.as_fd(), p.file_name().unwrap().as_bytes())
    }

    fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
        let t = Timestamps {
            last_access: Timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1 as _,
            },
            last_modification: Timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1 as _,
            },
        };
        rfs::utimensat(rfs::CWD, p, &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn lchown(p: &Path, uid: u32, gid: u32) {
        rfs::chownat(
            rfs::CWD,
            p,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut names = vec![0u8; XATTR_MAX];
        let mut value = vec![0u8; XATTR_MAX];
        let n = rfs::llistxattr(p, &mut names[..]).unwrap();
        let mut out = BTreeMap::new();
        for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let l = rfs::lgetxattr(p, name, &mut value[..]).unwrap();
            out.insert(name.to_vec(), value[..l].to_vec());
        }
        out
    }

    /// v2 `vfs_cap_data` for cap_net_raw+ep, as `setcap cap_net_raw+ep` writes it: magic
    /// 0x02000000 | VFS_CAP_FLAGS_EFFECTIVE (le32), then permitted/inheritable for caps 0-31 and
    /// 32-63; CAP_NET_RAW is bit 13.
    const CAP_NET_RAW_EP: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// A POSIX ACL xattr (version 2, then tag/perm/id entries): u::rw-, u:1000:r--, g::r--,
    /// m::r--, o::---.
    fn acl() -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 6u16, u32::MAX),
            (0x02, 4, 1000),
            (0x04, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// Build the fixture; returns the paths (relative) whose times were set explicitly, with
    /// (atime, mtime).
    /// (path, (atime s, ns), (mtime s, ns)).
    type Times = Vec<(&'static str, (i64, i64), (i64, i64))>;

    fn fixture(src: &Path, root: bool) -> Times {
        fs::create_dir(src).unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        fs::write(src.join("small"), b"hello\n").unwrap();
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(src.join("big"), &big).unwrap();
        {
            use std::os::unix::fs::FileExt;
            let f = fs::File::create(src.join("sparse")).unwrap();
            f.write_all_at(&[0xabu8; 4096], 0).unwrap();
            f.write_all_at(&[0xcdu8; 4096], 50 << 20).unwrap();
            f.set_len(100 << 20).unwrap();
        }
        fs::create_dir_all(src.join("a/b/c")).unwrap();
        fs::write(src.join("a/b/c/deep"), b"deep").unwrap();
        fs::create_dir(src.join("private")).unwrap();
        fs::write(src.join("private/secret"), b"s").unwrap();
        fs::create_dir(src.join("tmp")).unwrap();
        fs::write(src.join("tmp/suid"), b"#!/bin/sh\n").unwrap();
        fs::write(src.join("h1"), b"hard").unwrap();
        fs::hard_link(src.join("h1"), src.join("a/h2")).unwrap();
        symlink("/etc/passwd", src.join("abs")).unwrap();
        symlink("nowhere/at/all", src.join("dangling")).unwrap();
        rustix::fs::mknodat(
            rfs::CWD,
            src.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        drop(std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap());
        rfs::setxattr(src.join("small"), "user.x", b"value", XattrFlags::empty()).unwrap();
        fs::write(src.join("owned"), b"o").unwrap();
        fs::write(src.join("cap"), b"c").unwrap();
        fs::write(src.join("acl"), b"a").unwrap();
        fs::create_dir(src.join("acldir")).unwrap();
        fs::write(src.join("acldir/inherits"), b"i").unwrap();
        if root {
            lchown(&src.join("tmp/suid"), 1000, 1000);
            lchown(&src.join("owned"), 12345, 54321);
            lchown(&src.join("dangling"), 777, 778);
            rfs::mknodat(
                rfs::CWD,
                src.join("null"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rfs::makedev(1, 3),
            )
            .unwrap();
            lchown(&src.join("null"), 5, 6);
            let sx = XattrFlags::empty();
            rfs::setxattr(src.join("cap"), "security.capability", &CAP_NET_RAW_EP, sx).unwrap();
            rfs::setxattr(src.join("acl"), "system.posix_acl_access", &acl(), sx).unwrap();
            rfs::setxattr(src.join("acldir"), "system.posix_acl_default", &acl(), sx).unwrap();
            rfs::lsetxattr(src.join("abs"), "trusted.t", b"on a symlink", sx).unwrap();
            rfs::setxattr(src.join("small"), "trusted.y", b"\0binary\xff", sx).unwrap();
        }
        chmod(&src.join("tmp/suid"), 0o4755);
        chmod(&src.join("private"), 0o700);
        chmod(&src.join("tmp"), 0o1777);
        chmod(&src.join("a/b"), 0o555);
        let times = vec![
            ("small", (1_000_000_000, 111), (1_100_000_000, 222_333_444)),
            ("sparse", (1_200_000_000, 0), (1_300_000_000, 999_999_999)),
            ("abs", (1_400_000_000, 5), (1_500_000_000, 6)),
            ("fifo", (1_400_000_001, 7), (1_500_000_001, 8)),
            ("a/b/c/deep", (10, 1), (20, 2)),
            ("a/b/c", (30, 3), (40, 4)),
            ("a/b", (50, 5), (60, 6)),
            ("a", (70, 7), (80, 8)),
            ("tmp", (90, 9), (100, 10)),
            ("", (110, 11), (120, 12)),
        ];
        for (p, at, mt) in &times {
            set_times(&src.join(p), *at, *mt);
        }
        times
    }

    /// Every entry under `src` has a twin under `dst` with the same type, mode, owner, size,
    /// mtime, content, link target, device number and xattrs.
    fn assert_same_tree(src: &Path, dst: &Path, rel: &Path) {
        let (s, d) = (src.join(rel), dst.join(rel));
        let (sm, dm) = (
            fs::symlink_metadata(&s).unwrap(),
            fs::symlink_metadata(&d).unwrap(),
        );
        let what = rel.display();
        assert_eq!(sm.mode(), dm.mode(), "mode of {what}");
        assert_eq!(
            (sm.uid(), sm.gid()),
            (dm.uid(), dm.gid()),
            "owner of {what}"
        );
        assert_eq!(sm.rdev(), dm.rdev(), "rdev of {what}");
        assert_eq!(
            (sm.mtime(), sm.mtime_nsec()),
            (dm.mtime(), dm.mtime_nsec()),
            "mtime of {what}"
        );
        assert_eq!(xattrs(&s), xattrs(&d), "xattrs of {what}");
        let ft = sm.file_type();
        if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&s)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            let mut dnames: Vec<_> = fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            dnames.sort();
            assert_eq!(names, dnames, "entries of {what}");
            for n in names {
                assert_same_tree(src, dst, &rel.join(n));
            }
        } else {
            assert_eq!(sm.size(), dm.size(), "size of {what}");
            if ft.is_symlink() {
                assert_eq!(
                    fs::read_link(&s).unwrap(),
                    fs::read_link(&d).unwrap(),
                    "target of {what}"
                );
            } else if ft.is_file() {
                assert!(
                    fs::read(&s).unwrap() == fs::read(&d).unwrap(),
                    "content of {what}"
                );
            }
        }
    }

    #[test]
    fn copy_tree_fixture() {
        let root = is_root();
        if !root {
            // The rest of the test still runs without the root-only parts.
            crate::test_skip::skip(
                "copy_tree_fixture (root part)",
                "not root (owners, devices, security/trusted xattrs)",
            );
        }
        let base = scratch("fixture");
        let (src, dst) = (base.join("src"), base.join("dst"));
        let times = fixture(&src, root);
        let stats = copy_tree(&src, &dst).unwrap();
        // Times first: reading the copy for the comparison below moves atimes.
        for (p, at, mt) in &times {
            let m = fs::symlink_metadata(dst.join(p)).unwrap();
            assert_eq!((m.atime(), m.atime_nsec()), *at, "atime of {p}");
            assert_eq!((m.mtime(), m.mtime_nsec()), *mt, "mtime of {p}");
        }
        assert_same_tree(&src, &dst, Path::new(""));

        let mode = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().mode();
        assert_eq!(mode("tmp/suid"), 0o104_755);
        assert_eq!(mode("tmp"), 0o041_777);
        assert_eq!(mode("private"), 0o040_700);
        assert_eq!(mode("a/b"), 0o040_555);
        assert_eq!(mode("fifo"), 0o010_640);
        assert!(fs::symlink_metadata(dst.join("sock"))
            .unwrap()
            .file_type()
            .is_socket_like());
        let (h1, h2) = (
            fs::metadata(dst.join("h1")).unwrap(),
            fs::metadata(dst.join("a/h2")).unwrap(),
        );
        assert_eq!((h1.nlink(), h2.nlink()), (2, 2));
        assert_eq!(h1.ino(), h2.ino());
        assert_ne!(h1.ino(), fs::metadata(src.join("h1")).unwrap().ino());
        assert_eq!(
            fs::read_link(dst.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("nowhere/at/all")
        );
        let sp = fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(sp.len(), 100 << 20);
        assert!(
            sp.blocks() * 512 < 1 << 20,
            "sparse copy uses {} blocks",
            sp.blocks()
        );
        assert_eq!(
            xattrs(&dst.join("small"))
                .get(&b"user.x"[..])
                .map(|v| &v[..]),
            Some(&b"value"[..])
        );
        assert_eq!(
            stats.bytes,
            6 + (1 << 20) + (100 << 20) + 4 + 1 + 10 + 4 + 1 + 1 + 1 + 1
        );
        assert_eq!(stats.files, 12, "{stats:?}");
        if root {
            let m = fs::symlink_metadata(dst.join("owned")).unwrap();
            assert_eq!((m.uid(), m.gid()), (12345, 54321));
            let m = fs::symlink_metadata(dst.join("tmp/suid")).unwrap();
            assert_eq!((m.uid(), m.gid()), (1000, 1000));
            let m = fs::symlink_metadata(dst.join("dangling")).unwrap();
            assert_eq!((m.uid(), m.gid()), (777, 778));
            let m = fs::symlink_metadata(dst.join("null")).unwrap();
            assert!(m.file_type().is_char_device_like());
            assert_eq!(m.rdev(), rfs::makedev(1, 3));
            assert_eq!(
                xattrs(&dst.join("cap"))
                    .get(&b"security.capability"[..])
                    .map(|v| &v[..]),
                Some(&CAP_NET_RAW_EP[..])
            );
            assert_eq!(
                xattrs(&dst.join("acl")).get(&b"system.posix_acl_access"[..]),
                Some(&acl())
            );
            assert_eq!(
                xattrs(&dst.join("acldir")).get(&b"system.posix_acl_default"[..]),
                Some(&acl())
            );
            assert_eq!(
                xattrs(&dst.join("abs"))
                    .get(&b"trusted.t"[..])
                    .map(|v| &v[..]),
                Some(&b"on a symlink"[..])
            );
        }
        remove_path(&base).unwrap();
    }

    trait FileTypeLike {
        fn is_socket_like(&self) -> bool;
        fn is_char_device_like(&self) -> bool;
    }
    impl FileTypeLike for fs::FileType {
        fn is_socket_like(&self) -> bool {
            std::os::unix::fs::FileTypeExt::is_socket(self)
        }
        fn is_char_device_like(&self) -> bool {
            std::os::unix::fs::FileTypeExt::is_char_device(self)
        }
    }

    #[test]
    fn copy_tree_refuses_existing_dst() {
        let base = scratch("exists");
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(dst.join("keep"), b"k").unwrap();
        let e = copy_tree(&src, &dst).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(e.to_string().contains("mkdir"), "{e}");
        assert_eq!(fs::read(dst.join("keep")).unwrap(), b"k");
        assert!(!dst.join("f").exists());
        // A missing parent or source is an error too, and creates nothing.
        assert!(copy_tree(&src, &base.join("no/such/dst")).is_err());
        let e = copy_tree(&base.join("nosrc"), &base.join("dst2")).unwrap_err();
        assert!(e.to_string().starts_with("copy "), "{e}");
        assert!(!base.join("dst2").exists());
        remove_path(&base).unwrap();
    }

    #[test]
    fn copy_tree_error_removes_partial_dst() {
        let base = scratch("partial");
        let (src, dst) = (base.join("src"), base.join("dst"));
        fixture(&src, is_root());
        // Fail on an entry deep in the tree, after other files and directories (one of them
        // read-only) were made.
        let e = copy_tree_inner(&src, &dst, &CopyOptions::default(), Some(b"deep")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("copy {}/a/b/c/deep: injected: ", src.display())),
            "{msg}"
        );
        assert!(!msg.ends_with('.'), "{msg}");
        assert!(
            fs::symlink_metadata(&dst).is_err(),
            "partial copy left behind"
        );
        // The same copy without the injected error succeeds into the same place.
        copy_tree(&src, &dst).unwrap();
        remove_path(&base).unwrap();
    }

    /// A cancelled copy stops and leaves no partial destination.
    #[test]
    fn copy_tree_cancelled() {
        let base = scratch("cancel");
        let (src, dst) = (base.join("src"), base.join("dst"));
        fixture(&src, is_root());
        let cancel = Cancel::default();
        cancel.cancel();
        let opts = CopyOptions {
            cancel: Some(&cancel),
            ..CopyOptions::default()
        };
        let e = copy_tree_opts(&src, &dst, &opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "{e}");
        assert!(e.to_string().contains("cancelled"), "{e}");
        assert!(fs::symlink_metadata(&dst).is_err(), "partial copy left");
        let cancel = Cancel::default();
        let opts = CopyOptions {
            cancel: Some(&cancel),
            ..CopyOptions::default()
        };
        copy_tree_opts(&src, &dst, &opts).unwrap();
        assert_same_tree(&src, &dst, Path::new(""));
        remove_path(&base).unwrap();
    }

    /// A real error, an unreadable file, fails the copy and leaves no partial destination.
    /// Root reads any file, so as root (CI) the check runs in a re-run of this test as `nobody`
    /// (`BIVY_COPY_AS_NOBODY` names its scratch directory, which root made and gave to nobody).
    #[test]
    fn copy_tree_unreadable_file_is_an_error() {
        const NOBODY: u32 = 65534;
        if is_root() {
            use std::os::unix::process::CommandExt;
            let base = scratch("unreadable");
            fs::create_dir_all(&base).unwrap();
            rustix::fs::chown(&base, Some(rustix::process::Uid::from_raw(NOBODY)), None).unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "storage::copy::tests::copy_tree_unreadable_file_is_an_error",
                ])
                .args(["--nocapture", "--test-threads=1"])
                .env("BIVY_COPY_AS_NOBODY", &base)
                .uid(NOBODY)
                .gid(NOBODY)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "as nobody: {stdout}\n{stderr}");
            // The re-run really ran the check (a filter that matched nothing would pass too).
            assert!(
                stdout.contains("UNREADABLE-CHECKED") && stdout.contains("1 passed"),
                "{stdout}"
            );
            remove_path(&base).unwrap();
            return;
        }
        let base = match std::env::var_os("BIVY_COPY_AS_NOBODY") {
            Some(b) => PathBuf::from(b),
            None => scratch("unreadable"),
        };
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::write(src.join("dir/readable"), b"r").unwrap();
        fs::write(src.join("unreadable"), b"u").unwrap();
        chmod(&src.join("unreadable"), 0);
        let e = copy_tree(&src, &dst).unwrap_err();
        assert!(e.to_string().contains("unreadable: open"), "{e}");
        assert!(
            fs::symlink_metadata(&dst).is_err(),
            "partial copy left behind"
        );
        println!("UNREADABLE-CHECKED");
        remove_path(&src).unwrap();
    }

    #[test]
    fn copy_tree_never_escapes() {
        let base = scratch("escape");
        let (src, dst, outside) = (base.join("src"), base.join("dst"), base.join("outside"));
        fs::create_dir(&outside).unwrap();
        fs::create_dir(&src).unwrap();
        // Symlinks that a path-based copier would write through, named like the directories and
        // files that follow them in a tar-like walk.
        symlink(&outside, src.join("etc")).unwrap();
        symlink("../outside", src.join("rel")).unwrap();
        symlink("../../outside/passwd", src.join("passwd")).unwrap();
        fs::create_dir(src.join("dir")).unwrap();
        fs::write(src.join("dir/file"), b"inside").unwrap();
        fs::hard_link(src.join("dir/file"), src.join("second")).unwrap();
        let stats = copy_tree(&src, &dst).unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "wrote outside dst"
        );
        for l in ["etc", "rel", "passwd"] {
            assert!(fs::symlink_metadata(dst.join(l))
                .unwrap()
                .file_type()
                .is_symlink());
        }
        assert_eq!(fs::read_link(dst.join("etc")).unwrap(), outside);
        assert_eq!(fs::read(dst.join("second")).unwrap(), b"inside");
        assert_eq!(fs::metadata(dst.join("second")).unwrap().nlink(), 2);
        // Copying a symlink as the root is refused, not followed.
        let e = copy_tree(&src.join("etc"), &base.join("dst2")).unwrap_err();
        assert!(e.to_string().contains(": open: "), "{e}");
        assert!(fs::symlink_metadata(base.join("dst2")).is_err());
        remove_path(&base).unwrap();
    }

    #[test]
    fn copy_tree_skip_devices() {
        if !crate::test_skip::require_root() {
            return;
        }
        let base = scratch("nodev");
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir(&src).unwrap();
        rfs::mknodat(
            rfs::CWD,
            src.join("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rfs::makedev(1, 3),
        )
        .unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        let opts = CopyOptions {
            skip_devices: true,
            ..CopyOptions::default()
        };
        let stats = copy_tree_opts(&src, &dst, &opts).unwrap();
        assert_eq!((stats.files, stats.skipped_devices), (1, 1));
        assert!(!dst.join("null").exists());
        remove_path(&base).unwrap();
    }

    /// Timing on a real tree: `BIVY_COPY_SRC=/path/to/rootfs cargo test --release copy_tree_timing
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn copy_tree_timing() {
        let Some(src) = std::env::var_os("BIVY_COPY_SRC") else {
            println!("SKIP copy_tree_timing: BIVY_COPY_SRC not set");
            return;
        };
        // BIVY_COPY_DST: copy there and keep it. Deleting a copy right before the next timing run
        // would measure ext4's slow allocation of recently freed inodes instead.
        let keep = std::env::var_os("BIVY_COPY_DST").map(PathBuf::from);
        let base = scratch("timing");
        let dst = keep.unwrap_or_else(|| base.join("dst"));
        let t = std::time::Instant::now();
        let stats = copy_tree(Path::new(&src), &dst).unwrap();
        let took = t.elapsed();
        println!(
            "copy_tree {}: {stats:?} in {took:?}",
            Path::new(&src).display()
        );
        remove_path(&base).unwrap();
    }
}
