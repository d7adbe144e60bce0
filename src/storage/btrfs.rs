//! The `btrfs` driver: volumes are subvolumes, clones are snapshots (read-only where asked).
//!
//! A pool lives either in an existing directory on a btrfs filesystem (`source=/some/dir`; nothing
//! is mounted), or on a loop file the daemon makes (`source` empty, or a file that does not exist
//! yet; default `<bivy_dir>/disks/<pool>.img`), formatted with `mkfs.btrfs` and mounted at
//! `<bivy_dir>/storage-pools/<pool>`. The loop device is attached with autoclear, so unmounting
//! the pool releases it. Everything but `mkfs.btrfs` goes through kernel interfaces.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC};

use super::{mounted_at, Driver, Usage};
use crate::api::StringMap;
use crate::sys;
use crate::sys::btrfs::SUBVOL_ROOT_INO;
use crate::util::revert::Revert;

/// Loop file size when the config gives none (LXD's minimum default).
pub const DEFAULT_SIZE: &str = "5GiB";
/// The smallest loop file accepted: `mkfs.btrfs` needs about 114 MiB, and a pool must hold images.
pub const MIN_SIZE: u64 = 256 << 20;
/// Mount options when the config gives none (as LXD): lets a container delete its own subvolumes.
pub const DEFAULT_MOUNT_OPTIONS: &str = "user_subvol_rm_allowed";
/// The only external program the driver runs.
const MKFS: &str = "mkfs.btrfs";
/// The layout directories bivy makes in a pool (see the module docs of [`super`]).
const LAYOUT: [&str; 5] = super::LAYOUT_DIRS;
/// How long `delete` waits for the kernel to release the loop device after the unmount.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

const KEY_SOURCE: &str = "source";
const KEY_SIZE: &str = "size";
const KEY_MOUNT_OPTIONS: &str = "btrfs.mount_options";

#[derive(Debug, Clone, PartialEq)]
enum Backing {
    /// A loop file mounted at `mount`.
    Loop {
        image: PathBuf,
        mount: PathBuf,
        size: u64,
        size_text: String,
    },
    /// An existing directory on a btrfs filesystem.
    Dir(PathBuf),
}

/// A btrfs storage pool.
#[derive(Debug)]
pub struct Btrfs {
    pool: String,
    backing: Backing,
    mount_options: String,
    /// Where to look for `mkfs.btrfs`: `$PATH`, then `/sbin` and `/usr/sbin`.
    mkfs_dirs: Vec<PathBuf>,
    /// Serialises create, mount, unmount and delete.
    lock: Mutex<()>,
}

fn annotate(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Parse a byte size as LXD does (`units.ParseByteSizeString`): an integer and an optional suffix,
/// decimal (`kB`, `MB`, `GB`, ...) or binary (`KiB`, `MiB`, `GiB`, ...).
pub fn parse_size(s: &str) -> io::Result<u64> {
    let bad = || invalid(format!("invalid size {s:?}"));
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mul = crate::util::byte_unit(suffix.trim_start()).ok_or_else(bad)?;
    n.checked_mul(mul).ok_or_else(bad)
}

/// Check `btrfs.mount_options`: a comma-separated list of plain options.
fn check_mount_options(s: &str) -> io::Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_=.:/+-".contains(c);
    if s.split(',')
        .any(|o| o.is_empty() || !o.chars().all(ok_char))
    {
        return Err(invalid(format!("invalid {KEY_MOUNT_OPTIONS} {s:?}")));
    }
    Ok(())
}

/// Where `mkfs.btrfs` may be: `$PATH`, then `/sbin` and `/usr/sbin`.
fn default_program_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/sbin", "/usr/sbin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    dirs
}

fn find_program(name: &str, dirs: &[PathBuf]) -> io::Result<PathBuf> {
    dirs.iter()
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{name} not found: install btrfs-progs to create btrfs pools on a loop file"
                ),
            )
        })
}

/// The `btrfs` program (btrfs-progs) for `send` and `receive`: applying a send stream has no
/// kernel interface of its own. Its absence is an error naming it and `what` needs it.
pub fn program(what: &str) -> io::Result<PathBuf> {
    find_program("btrfs", &default_program_dirs()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{what} needs the btrfs program (btrfs-progs): not found"),
        )
    })
}

/// A child's stderr read to the end on a thread of its own (it never blocks on a full pipe).
fn collect_stderr(mut stderr: std::process::ChildStderr) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut stderr, &mut s);
        s
    })
}

/// `btrfs send` of the read-only subvolume `subvol` to `out`, incremental from `parent` (a
/// read-only subvolume the receiver has) when given.
pub fn send(subvol: &Path, parent: Option<&Path>, out: &mut dyn io::Write) -> io::Result<()> {
    let err = |e: &dyn std::fmt::Display| {
        io::Error::other(format!("btrfs send of {}: {e}", subvol.display()))
    };
    let mut cmd = Command::new(program("sending a btrfs volume")?);
    cmd.args(["send", "-q"]);
    if let Some(p) = parent {
        cmd.arg("-p").arg(p);
    }
    let mut child = cmd
        .arg(subvol)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(&e))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let errs = collect_stderr(child.stderr.take().expect("piped stderr"));
    let copied = io::copy(&mut stdout, out);
    if copied.is_err() {
        let _ = child.kill();
    }
    drop(stdout);
    let status = child.wait().map_err(|e| err(&e))?;
    let msg = errs.join().unwrap_or_default();
    copied.map_err(|e| err(&e))?;
    if !status.success() {
        return Err(err(&msg.trim()));
    }
    Ok(())
}

/// `btrfs receive` of one send stream from `input` into the directory `recv` (confined to it:
/// `-C`), which it must leave with exactly one new subvolume: that subvolume (read-only, as
/// received; a later stream may name it as its parent).
pub fn receive(recv: &Path, input: &mut dyn io::Read) -> io::Result<PathBuf> {
    let err = |e: &dyn std::fmt::Display| io::Error::other(format!("btrfs receive: {e}"));
    let list = || -> io::Result<Vec<PathBuf>> {
        Ok(fs::read_dir(recv)?.flatten().map(|e| e.path()).collect())
    };
    let before = list()?;
    let mut child = Command::new(program("receiving a btrfs volume")?)
        .args(["receive", "-q", "-e", "-C"])
        .arg(recv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(&e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let errs = collect_stderr(child.stderr.take().expect("piped stderr"));
    let copied = io::copy(input, &mut stdin);
    drop(stdin);
    if copied.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| err(&e))?;
    let msg = errs.join().unwrap_or_default();
    let made: Vec<PathBuf> = list()?
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let fail = |why: String| {
        for p in &made {
            let _ = destroy_subvolume(p);
        }
        Err(err(&why))
    };
    if let Err(e) = copied {
        return fail(format!("{e} ({})", msg.trim()));
    }
    if !status.success() {
        return fail(msg.trim().to_string());
    }
    match &made[..] {
        [sub] if is_subvolume(sub).unwrap_or(false) => Ok(sub.clone()),
        _ => fail(format!(
            "the stream made {} entries, not one subvolume",
            made.len()
        )),
    }
}

/// Make the read-only subvolume `subvol` (a received one) writable in place.
pub fn make_writable(subvol: &Path) -> io::Result<()> {
    let f = open_dir(subvol).map_err(|e| annotate(e, format!("open {}", subvol.display())))?;
    sys::btrfs::set_readonly(f.as_fd(), false)
        .map_err(|e| annotate(e, format!("make {} writable", subvol.display())))
}

/// Whether any directory below `vol` is the root of another subvolume (which `btrfs send`
/// would leave out).
pub fn has_nested_subvolume(vol: &Path) -> io::Result<bool> {
    let dev = fs::symlink_metadata(vol)?.dev();
    let mut dirs = vec![vol.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)?.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if !m.is_dir() {
                continue;
            }
            if m.ino() == SUBVOL_ROOT_INO || m.dev() != dev {
                return Ok(true);
            }
            dirs.push(e.path());
        }
    }
    Ok(false)
}

fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn is_btrfs(path: &Path) -> io::Result<bool> {
    let st = statfs(path).map_err(io::Error::from)?;
    Ok(st.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// Whether `path` is the root of a btrfs subvolume (a directory with inode 256 on btrfs).
fn is_subvolume(path: &Path) -> io::Result<bool> {
    let md = fs::symlink_metadata(path)?;
    Ok(md.is_dir() && md.ino() == SUBVOL_ROOT_INO && is_btrfs(path)?)
}

/// The parent directory of `path` (opened) and its last component, for the subvolume ioctls.
fn parent_and_name(path: &Path) -> io::Result<(File, &[u8])> {
    use std::os::unix::ffi::OsStrExt;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid(format!("{}: not a volume path", path.display())));
    };
    Ok((open_dir(parent)?, name.as_bytes()))
}

/// Destroy the subvolume at `path`: clear its read-only flag (so what is inside can be destroyed),
/// destroy the subvolumes nested in it, then the subvolume itself.
fn destroy_subvolume(path: &Path) -> io::Result<()> {
    let dev = {
        let f = open_dir(path).map_err(|e| annotate(e, format!("open {}", path.display())))?;
        let ro = sys::btrfs::is_readonly(f.as_fd())
            .map_err(|e| annotate(e, format!("get subvolume flags of {}", path.display())))?;
        if ro {
            sys::btrfs::set_readonly(f.as_fd(), false)
                .map_err(|e| annotate(e, format!("clear read-only flag of {}", path.display())))?;
        }
        f.metadata()?.dev()
    };
    clear_dir(path, dev, false)?;
    let (parent, name) = parent_and_name(path)?;
    sys::btrfs::snap_destroy(parent.as_fd(), name)
        .map_err(|e| annotate(e, format!("destroy subvolume {}", path.display())))
}

/// Destroy every subvolume below `dir` (whose device is `dev`); with `remove`, also delete the
/// plain files and directories, leaving `dir` empty. Never crosses into another mount.
fn clear_dir(dir: &Path, dev: u64, remove: bool) -> io::Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| annotate(e, format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| annotate(e, format!("read {}", dir.display())))?;
        let p = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| annotate(e, format!("stat {}", p.display())))?;
        if ft.is_dir() {
            let md = fs::symlink_metadata(&p)
                .map_err(|e| annotate(e, format!("stat {}", p.display())))?;
            if md.dev() != dev {
                // Every subvolume has a device number of its own; anything else is a mount point.
                if md.ino() == SUBVOL_ROOT_INO && is_btrfs(&p)? {
                    destroy_subvolume(&p)?;
                    continue;
                }
                return Err(io::Error::other(format!(
                    "delete {}: a mount point, refusing to delete across it",
                    p.display()
                )));
            }
            clear_dir(&p, dev, remove)?;
            if remove {
                fs::remove_dir(&p).map_err(|e| annotate(e, format!("remove {}", p.display())))?;
            }
        } else if remove {
            fs::remove_file(&p).map_err(|e| annotate(e, format!("remove {}", p.display())))?;
        }
    }
    Ok(())
}

impl Btrfs {
    /// A btrfs pool named `pool_name` with its (validated) config; `bivy_dir` holds the default
    /// loop file (`disks/`) and the mount point (`storage-pools/`). Touches nothing on disk.
    pub fn new(pool_name: &str, config: &StringMap, bivy_dir: &Path) -> io::Result<Btrfs> {
        if pool_name.is_empty()
            || pool_name == "."
            || pool_name == ".."
            || pool_name.contains(['/', '\0'])
        {
            return Err(invalid(format!("invalid pool name {pool_name:?}")));
        }
        for k in config.keys() {
            if ![KEY_SOURCE, KEY_SIZE, KEY_MOUNT_OPTIONS].contains(&k.as_str()) {
                return Err(invalid(format!("unknown btrfs pool config key {k:?}")));
            }
        }
        let get = |k: &str| config.get(k).map(String::as_str).unwrap_or("");
        let mount_options = match get(KEY_MOUNT_OPTIONS) {
            "" => DEFAULT_MOUNT_OPTIONS.to_string(),
            o => o.to_string(),
        };
        check_mount_options(&mount_options)?;
        let source = get(KEY_SOURCE);
        let size_text = get(KEY_SIZE);
        let dir_source = if source.is_empty() {
            None
        } else {
            let p = Path::new(source);
            if !p.is_absolute() || source.contains('\0') {
                return Err(invalid(format!(
                    "{KEY_SOURCE} {source:?}: not an absolute path"
                )));
            }
            match fs::metadata(p) {
                Ok(m) if m.is_dir() => Some(p.to_path_buf()),
                Ok(m) if m.is_file() => None,
                Ok(_) => {
                    return Err(invalid(format!(
                        "{KEY_SOURCE} {source}: neither a directory nor a loop file"
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(annotate(e, format!("stat {source}"))),
            }
        };
        let backing = match dir_source {
            Some(dir) => {
                if !size_text.is_empty() {
                    return Err(invalid(format!(
                        "{KEY_SIZE}: does not apply to a pool on an existing directory ({source})"
                    )));
                }
                Backing::Dir(dir)
            }
            None => {
                let size_text = if size_text.is_empty() {
                    DEFAULT_SIZE
                } else {
                    size_text
                };
                let size = parse_size(size_text)?;
                if size < MIN_SIZE {
                    return Err(invalid(format!(
                        "{KEY_SIZE} {size_text}: less than the minimum of 256MiB"
                    )));
                }
                let image = if source.is_empty() {
                    bivy_dir.join("disks").join(format!("{pool_name}.img"))
                } else {
                    PathBuf::from(source)
                };
                Backing::Loop {
                    image,
                    mount: bivy_dir.join("storage-pools").join(pool_name),
                    size,
                    size_text: size_text.to_string(),
                }
            }
        };
        Ok(Btrfs {
            pool: pool_name.to_string(),
            backing,
            mount_options,
            mkfs_dirs: default_program_dirs(),
            lock: Mutex::new(()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A volume path must be strictly inside the pool and plain (no `.` or `..`).
    fn check_volume_path(&self, path: &Path) -> io::Result<()> {
        let root = self.path();
        let plain = path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain || !path.starts_with(&root) || path == root {
            return Err(invalid(format!(
                "{}: not a volume path inside pool {} ({})",
                path.display(),
                self.pool,
                root.display()
            )));
        }
        Ok(())
    }

    /// Whether the loop pool is mounted at `mount`; an error if something else is mounted there.
    fn loop_mounted(image: &Path, mount: &Path) -> io::Result<bool> {
        let Some((fstype, source)) = mounted_at(mount)? else {
            return Ok(false);
        };
        let backing = source
            .strip_prefix("/dev/")
            .filter(|n| n.starts_with("loop"))
            .and_then(sys::loopdev::backing_file);
        let image = fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
        if fstype == "btrfs" && backing.as_deref() == Some(image.as_path()) {
            return Ok(true);
        }
        Err(io::Error::other(format!(
            "{}: already mounted from {source} ({fstype}), not from {}",
            mount.display(),
            image.display()
        )))
    }

    /// Attach `image` to a free loop device (autoclear) and mount it at `mount`.
    fn attach_and_mount(&self, image: &Path, mount: &Path) -> io::Result<()> {
        let (dev, _fd) = sys::loopdev::attach_autoclear(image)
            .map_err(|e| annotate(e, format!("attach {} to a loop device", image.display())))?;
        self.mount_dev(&dev, image, mount)
        // `_fd` closes here: from now on the mount alone holds the loop device.
    }

    /// Mount the pool's filesystem from the loop device `dev` (backed by `image`) at `mount`.
    fn mount_dev(&self, dev: &Path, image: &Path, mount: &Path) -> io::Result<()> {
        nix::mount::mount(
            Some(dev),
            mount,
            Some("btrfs"),
            MsFlags::empty(),
            Some(self.mount_options.as_str()),
        )
        .map_err(|e| {
            annotate(
                io::Error::from(e),
                format!(
                    "mount {} ({}) at {}",
                    dev.display(),
                    image.display(),
                    mount.display()
                ),
            )
        })
    }

    fn create_loop(&self, image: &Path, mount: &Path, size: u64) -> io::Result<()> {
        match fs::symlink_metadata(image) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("create pool image {}: already exists", image.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(annotate(e, format!("stat {}", image.display()))),
        }
        // Find the program before making anything, so a missing one leaves nothing behind.
        let mkfs = find_program(MKFS, &self.mkfs_dirs)?;
        let mut undo = Revert::new();

        if let Some(parent) = image.parent() {
            if self.is_default_image(image) {
                crate::util::fs::create_dir_mode(parent, 0o700)
                    .map_err(|e| annotate(e, format!("create {}", parent.display())))?;
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(image)
            .map_err(|e| annotate(e, format!("create pool image {}", image.display())))?;
        let made = image.to_path_buf();
        undo.add(move || {
            let _ = fs::remove_file(made);
        });
        file.set_len(size)
            .map_err(|e| annotate(e, format!("size pool image {}", image.display())))?;
        drop(file);

        let out = Command::new(&mkfs)
            .arg("-q")
            .arg(image)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| annotate(e, format!("run {}", mkfs.display())))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(io::Error::other(format!(
                "{MKFS} {} failed ({}): {}",
                image.display(),
                out.status,
                stderr.trim()
            )));
        }

        if let Some(parent) = mount.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| annotate(e, format!("create {}", parent.display())))?;
        }
        match fs::create_dir(mount) {
            Ok(()) => {
                let made = mount.to_path_buf();
                undo.add(move || {
                    let _ = fs::remove_dir(made);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if mounted_at(mount)?.is_some() {
                    return Err(io::Error::other(format!(
                        "create pool {}: {} is already a mount point",
                        self.pool,
                        mount.display()
                    )));
                }
                let mut entries = fs::read_dir(mount)
                    .map_err(|e| annotate(e, format!("read {}", mount.display())))?;
                if entries.next().is_some() {
                    return Err(io::Error::other(format!(
                        "create pool {}: {} is not empty",
                        self.pool,
                        mount.display()
                    )));
                }
            }
            Err(e) => return Err(annotate(e, format!("create {}", mount.display()))),
        }
        self.attach_and_mount(image, mount)?;
        undo.commit();
        Ok(())
    }

    fn is_default_image(&self, image: &Path) -> bool {
        match &self.backing {
            Backing::Loop { mount, .. } => mount
                .parent()
                .and_then(Path::parent)
                .is_some_and(|bivy| image == bivy.join("disks").join(format!("{}.img", self.pool))),
            Backing::Dir(_) => false,
        }
    }

    fn unmount_locked(&self) -> io::Result<()> {
        let Backing::Loop { image, mount, .. } = &self.backing else {
            return Ok(());
        };
        if Self::loop_mounted(image, mount)? {
            nix::mount::umount2(mount, MntFlags::empty()).map_err(|e| {
                annotate(io::Error::from(e), format!("unmount {}", mount.display()))
            })?;
        }
        Ok(())
    }

    /// Mount `image` at `mount` again from the loop device that still backs it (a delete that
    /// could not release it).
    fn mount_held(&self, image: &Path, mount: &Path) -> io::Result<()> {
        let image = fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
        let dev = sys::loopdev::attached_to(&image)?
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::other("no loop device backs it any more"))?;
        self.mount_dev(&dev, &image, mount)
    }

    /// Wait until no loop device is attached to `image` any more; else an error naming the
    /// processes whose mount namespaces still hold it.
    fn wait_released(image: &Path) -> io::Result<()> {
        let image = fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
        let start = Instant::now();
        loop {
            let devs = sys::loopdev::attached_to(&image)
                .map_err(|e| annotate(e, "list loop devices in /sys/block"))?;
            if devs.is_empty() {
                return Ok(());
            }
            if start.elapsed() > RELEASE_TIMEOUT {
                let holders = sys::loopdev::mounted_in(&devs[0]);
                let by = if holders.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (still mounted in the mount namespace of {})",
                        holders.join(", ")
                    )
                };
                return Err(io::Error::other(format!(
                    "loop device {} still attached to {} after unmount{by}",
                    devs[0].display(),
                    image.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Driver for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn path(&self) -> PathBuf {
        match &self.backing {
            Backing::Loop { mount, .. } => mount.clone(),
            Backing::Dir(d) => d.clone(),
        }
    }

    fn create(&self, config: &mut StringMap) -> io::Result<()> {
        let _g = self.guard();
        match &self.backing {
            Backing::Dir(dir) => {
                if !is_btrfs(dir).map_err(|e| annotate(e, format!("statfs {}", dir.display())))? {
                    return Err(invalid(format!(
                        "create pool {}: {} is not on a btrfs filesystem",
                        self.pool,
                        dir.display()
                    )));
                }
                Ok(())
            }
            Backing::Loop {
                image,
                mount,
                size,
                size_text,
            } => {
                self.create_loop(image, mount, *size)
                    .map_err(|e| annotate(e, format!("create pool {}", self.pool)))?;
                config.insert(KEY_SOURCE.into(), image.to_string_lossy().into_owned());
                config.insert(KEY_SIZE.into(), size_text.clone());
                config.insert(KEY_MOUNT_OPTIONS.into(), self.mount_options.clone());
                Ok(())
            }
        }
    }

    fn mount(&self) -> io::Result<()> {
        let _g = self.guard();
        match &self.backing {
            Backing::Dir(dir) => {
                if !is_btrfs(dir).map_err(|e| annotate(e, format!("statfs {}", dir.display())))? {
                    return Err(io::Error::other(format!(
                        "mount pool {}: {} is not on a btrfs filesystem",
                        self.pool,
                        dir.display()
                    )));
                }
                Ok(())
            }
            Backing::Loop { image, mount, .. } => {
                if Self::loop_mounted(image, mount)? {
                    return Ok(());
                }
                if !image.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "mount pool {}: image {} not found",
                            self.pool,
                            image.display()
                        ),
                    ));
                }
                fs::create_dir_all(mount)
                    .map_err(|e| annotate(e, format!("create {}", mount.display())))?;
                self.attach_and_mount(image, mount)
            }
        }
    }

    fn unmount(&self) -> io::Result<()> {
        let _g = self.guard();
        self.unmount_locked()
    }

    fn delete(&self) -> io::Result<()> {
        let _g = self.guard();
        match &self.backing {
            Backing::Dir(dir) => {
                for d in LAYOUT {
                    let p = dir.join(d);
                    match fs::remove_dir(&p) {
                        Ok(()) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                            ) => {}
                        Err(e) => return Err(annotate(e, format!("remove {}", p.display()))),
                    }
                }
                Ok(())
            }
            Backing::Loop { image, mount, .. } => {
                self.unmount_locked()?;
                if let Err(e) = Self::wait_released(image) {
                    // The filesystem is still mounted elsewhere (another mount namespace): the
                    // pool stays as it was, mounted again from the loop device still backing it.
                    return Err(match self.mount_held(image, mount) {
                        Ok(()) => e,
                        Err(m) => io::Error::other(format!("{e}; and mounting it again: {m}")),
                    });
                }
                match fs::remove_file(image) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(annotate(e, format!("remove {}", image.display()))),
                }
                match fs::remove_dir(mount) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(annotate(e, format!("remove {}", mount.display()))),
                }
            }
        }
    }

    fn live_keys(&self) -> &'static [&'static str] {
        match self.backing {
            Backing::Loop { .. } => &[KEY_SIZE],
            Backing::Dir(_) => &[],
        }
    }

    /// A loop pool's `size` grows its loop file, the loop device and the filesystem, mounted
    /// (`BTRFS_IOC_RESIZE` to the device's size); it never shrinks.
    fn update(&self, new: &StringMap) -> io::Result<()> {
        let _g = self.guard();
        let Backing::Loop { image, mount, .. } = &self.backing else {
            return Ok(());
        };
        let Some(text) = new.get(KEY_SIZE) else {
            return Ok(());
        };
        let want = parse_size(text)?;
        let have = fs::metadata(image)
            .map_err(|e| annotate(e, format!("stat {}", image.display())))?
            .len();
        if want < have {
            return Err(invalid(format!(
                "{KEY_SIZE} {text}: a pool cannot shrink (its loop file {} holds {have} bytes)",
                image.display()
            )));
        }
        if want == have {
            return Ok(());
        }
        if !Self::loop_mounted(image, mount)? {
            return Err(io::Error::other(format!(
                "pool {} is not mounted: its size can change once it is",
                self.pool
            )));
        }
        OpenOptions::new()
            .write(true)
            .open(image)
            .and_then(|f| f.set_len(want))
            .map_err(|e| annotate(e, format!("grow {}", image.display())))?;
        let canonical = fs::canonicalize(image).unwrap_or_else(|_| image.clone());
        for dev in sys::loopdev::attached_to(&canonical)? {
            sys::loopdev::set_capacity(&dev)
                .map_err(|e| annotate(e, format!("resize loop device {}", dev.display())))?;
        }
        let root =
            File::open(mount).map_err(|e| annotate(e, format!("open {}", mount.display())))?;
        sys::btrfs::resize_max(root.as_fd())
            .map_err(|e| annotate(e, format!("grow the filesystem at {}", mount.display())))
    }

    fn create_volume(&self, path: &Path) -> io::Result<()> {
        self.check_volume_path(path)?;
        if let Some(parent) = path.parent() {
            super::make_volume_parent(parent)?;
        }
        let (parent, name) = parent_and_name(path)?;
        sys::btrfs::subvol_create(parent.as_fd(), name)
            .map_err(|e| annotate(e, format!("create subvolume {}", path.display())))?;
        crate::util::fs::ensure_mode(path, super::VOLUME_MODE)
            .map(drop)
            .map_err(|e| annotate(e, format!("chmod {}", path.display())))
    }

    fn clone_volume(&self, src: &Path, dst: &Path, readonly: bool) -> io::Result<()> {
        self.check_volume_path(src)?;
        self.check_volume_path(dst)?;
        // A snapshot of a plain directory would be a snapshot of the whole subvolume holding it.
        let is_sub =
            is_subvolume(src).map_err(|e| annotate(e, format!("stat {}", src.display())))?;
        if !is_sub {
            return Err(invalid(format!(
                "snapshot {} to {}: source is not a btrfs subvolume",
                src.display(),
                dst.display()
            )));
        }
        if let Some(parent) = dst.parent() {
            super::make_volume_parent(parent)?;
        }
        let src_fd = open_dir(src).map_err(|e| annotate(e, format!("open {}", src.display())))?;
        let (parent, name) = parent_and_name(dst)?;
        sys::btrfs::snap_create(parent.as_fd(), name, src_fd.as_fd(), readonly).map_err(|e| {
            annotate(
                e,
                format!("snapshot {} to {}", src.display(), dst.display()),
            )
        })?;
        // A read-only snapshot keeps its source's mode (a volume's, closed already).
        if !readonly {
            crate::util::fs::ensure_mode(dst, super::VOLUME_MODE)
                .map_err(|e| annotate(e, format!("chmod {}", dst.display())))?;
        }
        Ok(())
    }

    fn atomic_clone(&self) -> bool {
        true
    }

    fn set_readonly(&self, path: &Path) -> io::Result<()> {
        self.check_volume_path(path)?;
        if !is_subvolume(path).map_err(|e| annotate(e, format!("stat {}", path.display())))? {
            return Err(invalid(format!(
                "set {} read-only: not a btrfs subvolume",
                path.display()
            )));
        }
        let f = open_dir(path).map_err(|e| annotate(e, format!("open {}", path.display())))?;
        sys::btrfs::set_readonly(f.as_fd(), true)
            .map_err(|e| annotate(e, format!("set {} read-only", path.display())))
    }

    fn delete_volume(&self, path: &Path) -> io::Result<()> {
        self.check_volume_path(path)?;
        let md = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(annotate(e, format!("stat {}", path.display()))),
        };
        if !md.is_dir() {
            return fs::remove_file(path)
                .map_err(|e| annotate(e, format!("remove {}", path.display())));
        }
        if is_subvolume(path).map_err(|e| annotate(e, format!("statfs {}", path.display())))? {
            return destroy_subvolume(path);
        }
        // A half-made volume: a plain directory, perhaps holding subvolumes.
        clear_dir(path, md.dev(), true)?;
        fs::remove_dir(path).map_err(|e| annotate(e, format!("remove {}", path.display())))
    }

    fn usage(&self) -> io::Result<Usage> {
        super::statvfs_usage(&self.path())
    }

    /// A qgroup limit on the bytes the subvolume references (its files, shared extents
    /// included), after turning quota groups on for the pool's filesystem the first time.
    fn set_size(&self, path: &Path, size: Option<u64>) -> io::Result<()> {
        self.check_volume_path(path)?;
        if !is_subvolume(path).map_err(|e| annotate(e, format!("stat {}", path.display())))? {
            if size.is_none() {
                return Ok(()); // no limit to remove
            }
            return Err(invalid(format!(
                "size limit on {}: not a btrfs subvolume",
                path.display()
            )));
        }
        let vol = open_dir(path).map_err(|e| annotate(e, format!("open {}", path.display())))?;
        let id = sys::btrfs::subvol_id(vol.as_fd())
            .map_err(|e| annotate(e, format!("subvolume id of {}", path.display())))?;
        let root = open_dir(&self.path())
            .map_err(|e| annotate(e, format!("open {}", self.path().display())))?;
        if size.is_some() {
            sys::btrfs::quota_enable(root.as_fd()).map_err(|e| {
                annotate(
                    e,
                    format!("enable btrfs quotas on {}", self.path().display()),
                )
            })?;
        }
        // Through the pool's root, not the volume: a volume already over its limit (a size set
        // below what it held) would refuse the call that raises or removes the limit.
        match sys::btrfs::qgroup_limit(root.as_fd(), id, size) {
            // Quotas were never turned on: there is no limit to remove.
            Err(e) if size.is_none() && e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            r => r.map_err(|e| annotate(e, format!("btrfs qgroup limit on {}", path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cfg(pairs: &[(&str, &str)]) -> StringMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A fresh directory under `target/` (a real disk filesystem, unlike a tmpfs `/tmp`).
    fn scratch(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("tmp-btrfs-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5GiB").unwrap(), 5 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("10kB").unwrap(), 10_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        for bad in [
            "",
            "GiB",
            "5 XB",
            "-1GiB",
            "1.5GiB",
            "5gib",
            "99999999999EiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_validation() {
        let bivy = Path::new("/nonexistent/bivy");
        let b = Btrfs::new("p", &cfg(&[]), bivy).unwrap();
        assert_eq!(
            b.backing,
            Backing::Loop {
                image: bivy.join("disks/p.img"),
                mount: bivy.join("storage-pools/p"),
                size: 5 << 30,
                size_text: "5GiB".into(),
            }
        );
        assert_eq!(b.mount_options, DEFAULT_MOUNT_OPTIONS);
        assert_eq!(b.path(), bivy.join("storage-pools/p"));
        assert_eq!(b.name(), "btrfs");

        let b = Btrfs::new(
            "p",
            &cfg(&[("source", "/nonexistent/x.img"), ("size", "1GB")]),
            bivy,
        )
        .unwrap();
        assert!(
            matches!(&b.backing, Backing::Loop { image, size: 1_000_000_000, .. }
            if image == Path::new("/nonexistent/x.img"))
        );

        // An existing directory: the pool lives there; size does not apply.
        let d = scratch("cfg");
        let b = Btrfs::new("p", &cfg(&[("source", d.to_str().unwrap())]), bivy).unwrap();
        assert_eq!(b.path(), d);
        let e = Btrfs::new(
            "p",
            &cfg(&[("source", d.to_str().unwrap()), ("size", "1GiB")]),
            bivy,
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not apply"), "{e}");
        // ... and it must be on btrfs (target/ is not, in any sane setup).
        if !is_btrfs(&d).unwrap() {
            let e = b.create(&mut StringMap::new()).unwrap_err();
            assert!(e.to_string().contains("not on a btrfs filesystem"), "{e}");
        }
        fs::remove_dir_all(&d).unwrap();

        let bad: &[&[(&str, &str)]] = &[
            &[("zfs.pool_name", "x")],
            &[("size", "1TiBs")],
            &[("size", "100MiB")],
            &[("source", "relative.img")],
            &[("btrfs.mount_options", "a,,b")],
            &[("btrfs.mount_options", "x y")],
        ];
        for c in bad {
            assert!(Btrfs::new("p", &cfg(c), bivy).is_err(), "{c:?} accepted");
        }
        for name in ["", ".", "..", "a/b"] {
            assert!(
                Btrfs::new(name, &cfg(&[]), bivy).is_err(),
                "{name:?} accepted"
            );
        }
        let b = Btrfs::new(
            "p",
            &cfg(&[("btrfs.mount_options", "compress=zstd:1,noatime")]),
            bivy,
        )
        .unwrap();
        assert_eq!(b.mount_options, "compress=zstd:1,noatime");

        // Volume paths must be inside the pool.
        let root = b.path();
        assert!(b.check_volume_path(&root.join("containers/a")).is_ok());
        assert!(b.check_volume_path(&root).is_err());
        assert!(b.check_volume_path(Path::new("/etc")).is_err());
        assert!(b
            .check_volume_path(&root.join("containers/../../x"))
            .is_err());
    }

    #[test]
    fn mkfs_missing_or_failing_leaves_nothing() {
        let d = scratch("mkfs");
        let empty = d.join("empty-bin");
        fs::create_dir(&empty).unwrap();
        let mut b = Btrfs::new("m", &cfg(&[("size", "300MiB")]), &d).unwrap();
        b.mkfs_dirs = vec![empty.clone()];
        let mut config = StringMap::new();
        let e = b.create(&mut config).unwrap_err();
        assert!(
            e.to_string().contains(
                "mkfs.btrfs not found: install btrfs-progs to create btrfs pools on a loop file"
            ),
            "{e}"
        );
        assert!(config.is_empty());
        let image = d.join("disks/m.img");
        assert!(!image.exists());
        assert!(!d.join("storage-pools/m").exists());

        // A mkfs.btrfs that fails: its stderr is in the error, and the image file is removed.
        let fake = d.join("fake-bin");
        fs::create_dir(&fake).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let p = fake.join("mkfs.btrfs");
            let mut f = File::create(&p).unwrap();
            f.write_all(b"#!/bin/sh\necho 'ERROR: boom' >&2\nexit 1\n")
                .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        b.mkfs_dirs = vec![empty, fake];
        let e = b.create(&mut config).unwrap_err();
        assert!(e.to_string().contains("ERROR: boom"), "{e}");
        assert!(e.to_string().contains(&image.display().to_string()), "{e}");
        assert!(!image.exists());
        assert!(!d.join("storage-pools/m").exists());
        assert!(sys::loopdev::attached_to(&image)
            .unwrap_or_default()
            .is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    /// Why the real-filesystem test cannot run here, if it cannot.
    fn unsupported() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("not root".into());
        }
        let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fss
            .lines()
            .any(|l| l.split_whitespace().last() == Some("btrfs"))
        {
            return Some("btrfs not in /proc/filesystems".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Some("no /dev/loop-control".into());
        }
        if let Err(e) = find_program(MKFS, &default_program_dirs()) {
            return Some(e.to_string());
        }
        None
    }

    /// Unmounts, detaches and removes the scratch directory, whatever happened.
    struct Cleanup {
        dir: PathBuf,
        mount: PathBuf,
        image: PathBuf,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            while let Ok(Some(_)) = mounted_at(&self.mount) {
                if nix::mount::umount2(&self.mount, MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
            if let Ok(devs) = sys::loopdev::attached_to(&self.image) {
                for d in devs {
                    let _ = sys::loopdev::detach(&d);
                }
            }
            if let Ok(None) = mounted_at(&self.mount) {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }

    fn write(p: &Path, s: &str) -> io::Result<()> {
        fs::write(p, s)
    }

    #[test]
    fn btrfs_pool() {
        if let Some(why) = unsupported() {
            crate::test_skip::skip("btrfs_pool", &why);
            return;
        }
        let dir = scratch("pool");
        let image = dir.join("disks/tp.img");
        let mount = dir.join("storage-pools/tp");
        let _cleanup = Cleanup {
            dir: dir.clone(),
            mount: mount.clone(),
            image: image.clone(),
        };

        // A mount that fails (an option btrfs rejects) undoes everything create did.
        let bad = Btrfs::new(
            "bad",
            &cfg(&[("btrfs.mount_options", "nosuchoption")]),
            &dir,
        )
        .unwrap();
        let bad_image = dir.join("disks/bad.img");
        let _bad_cleanup = Cleanup {
            dir: dir.join("unused"),
            mount: dir.join("storage-pools/bad"),
            image: bad_image.clone(),
        };
        let e = bad.create(&mut StringMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("create pool bad: mount /dev/loop"),
            "{e}"
        );
        assert!(!bad_image.exists());
        assert!(!dir.join("storage-pools/bad").exists());
        Btrfs::wait_released(&bad_image).unwrap();

        let b = Btrfs::new("tp", &cfg(&[("size", "300MiB")]), &dir).unwrap();
        let mut config = StringMap::new();
        b.create(&mut config).unwrap();
        assert_eq!(config.get("source").unwrap(), image.to_str().unwrap());
        assert_eq!(config.get("size").unwrap(), "300MiB");
        assert_eq!(
            config.get("btrfs.mount_options").unwrap(),
            DEFAULT_MOUNT_OPTIONS
        );
        assert_eq!(fs::metadata(&image).unwrap().len(), 300 << 20);
        assert!(is_btrfs(&mount).unwrap());
        assert_eq!(sys::loopdev::attached_to(&image).unwrap().len(), 1);
        // A second create refuses to overwrite the image.
        assert!(b.create(&mut StringMap::new()).is_err());
        assert!(is_btrfs(&mount).unwrap());

        // The daemon reconstructs the pool from the filled-in config; mount is idempotent.
        let b = Btrfs::new("tp", &config, &dir).unwrap();
        b.mount().unwrap();
        b.mount().unwrap();
        assert_eq!(sys::loopdev::attached_to(&image).unwrap().len(), 1);

        let root = b.path();
        let a = root.join("containers/a");
        b.create_volume(&a).unwrap();
        assert!(is_subvolume(&a).unwrap());
        write(&a.join("f"), "one").unwrap();

        let s1 = root.join("containers-snapshots/a/s1");
        b.clone_volume(&a, &s1, true).unwrap();
        write(&a.join("f"), "two").unwrap();
        write(&a.join("g"), "new").unwrap();
        assert_eq!(fs::read_to_string(s1.join("f")).unwrap(), "one");
        assert!(!s1.join("g").exists());
        let e = fs::write(s1.join("h"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let e = fs::write(s1.join("f"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

        // A read-write clone of the read-only snapshot.
        let c = root.join("containers/c");
        b.clone_volume(&s1, &c, false).unwrap();
        write(&c.join("f"), "three").unwrap();
        assert_eq!(fs::read_to_string(s1.join("f")).unwrap(), "one");

        // A plain directory is not cloned (that would snapshot the whole pool).
        let plain = root.join("containers/plain");
        fs::create_dir_all(plain.join("rootfs")).unwrap();
        write(&plain.join("rootfs/x"), "x").unwrap();
        assert!(b
            .clone_volume(&plain, &root.join("containers/p2"), false)
            .is_err());
        assert!(!root.join("containers/p2").exists());
        // ... and is deleted as a half-made volume, even holding a subvolume.
        b.create_volume(&plain.join("rootfs/inner")).unwrap();
        b.delete_volume(&plain).unwrap();
        assert!(!plain.exists());

        // An image volume: nested subvolume inside, then read-only.
        let img = root.join("images/abc");
        b.create_volume(&img).unwrap();
        b.create_volume(&img.join("nested")).unwrap();
        write(&img.join("nested/n"), "n").unwrap();
        b.set_readonly(&img).unwrap();
        assert_eq!(
            fs::write(img.join("y"), "y").unwrap_err().raw_os_error(),
            Some(libc::EROFS)
        );

        let u = b.usage().unwrap();
        assert!(
            u.total > 200 << 20 && u.used > 0 && u.used < u.total,
            "{u:?}"
        );

        // Survives an unmount and a mount (a restart).
        b.unmount().unwrap();
        b.unmount().unwrap();
        assert!(mounted_at(&mount).unwrap().is_none());
        b.mount().unwrap();
        assert_eq!(fs::read_to_string(a.join("f")).unwrap(), "two");

        // A pool in an existing directory on btrfs (here: inside this pool's filesystem).
        let sub = root.join("outer");
        fs::create_dir(&sub).unwrap();
        let d = Btrfs::new("dp", &cfg(&[("source", sub.to_str().unwrap())]), &dir).unwrap();
        d.create(&mut StringMap::new()).unwrap();
        d.mount().unwrap();
        assert_eq!(d.path(), sub);
        let v = sub.join("containers/v");
        d.create_volume(&v).unwrap();
        d.clone_volume(&v, &sub.join("images/w"), true).unwrap();
        assert!(d.delete_volume(&a).is_err(), "a path outside the pool");
        d.delete_volume(&v).unwrap();
        d.delete_volume(&sub.join("images/w")).unwrap();
        d.unmount().unwrap();
        d.delete().unwrap();
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 0);
        fs::remove_dir(&sub).unwrap();

        for v in [&a, &s1, &c, &img] {
            b.delete_volume(v).unwrap();
            assert!(!v.exists(), "{}", v.display());
        }
        b.delete_volume(&root.join("containers/missing")).unwrap();

        b.delete().unwrap();
        assert!(!image.exists());
        assert!(!mount.exists());
        assert!(sys::loopdev::attached_to(&image).unwrap().is_empty());
        let any = fs::read_dir("/sys/block")
            .unwrap()
            .filter_map(|e| sys::loopdev::backing_file(&e.ok()?.file_name().to_string_lossy()))
            .any(|f| f.to_string_lossy().contains(image.to_str().unwrap()));
        assert!(!any, "a loop device still names {}", image.display());
        fs::remove_dir_all(&dir).unwrap();
    }
}
