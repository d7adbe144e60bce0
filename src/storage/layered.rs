//! Copy-on-write instance volumes on `dir` pools: an overlay over the image's volume.
//!
//! A layered volume holds, besides the image's `metadata.json` and `templates/` (copied, small):
//! - `lower`: the absolute path of the image volume whose `rootfs/` is the read-only lower layer;
//! - `upper/` and `work/`: the overlay's upper and work directories. Files in `upper/` carry
//!   container ids on disk, as any idmapped rootfs's do; whiteouts and opaque directories are
//!   the `userxattr` kind (`user.overlay.*`), which host and container mounts both understand;
//! - `rootfs/`: empty, the mount point of a [`View`].
//!
//! A container mounts the overlay inside its user namespace over idmapped copies of both
//! (runtime/userns.rs). A snapshot, a restore and a copy on the same pool copy the volume as it
//! is, so only what the container changed. What needs the files as one tree (publish, export,
//! migration, a copy to another pool, the files of a stopped instance, the templates of a start
//! from a checkpoint) takes a [`View`]: the overlay mounted at `rootfs/` in a mount namespace of one thread's own, seen by
//! every other thread and process through `/proc/PID/task/TID/root`; nothing is mounted where
//! the host sees it, and a killed daemon leaves no mount behind. Where an overlay cannot go on
//! (a shifted, privileged or nesting start) the volume is first made plain ([`flatten_into`]).
//! Any other start's templates are written by the container's init on its own overlay
//! (runtime/init.rs), made durable by [`sync_upper`].

use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// The file naming a layered volume's lower image volume; a volume without it is plain.
pub const LOWER: &str = "lower";
const UPPER: &str = "upper";
const WORK: &str = "work";
/// A layered volume's entries that are its layers, not its data.
const LAYERS: [&str; 3] = [LOWER, UPPER, WORK];
const ROOTFS: &str = "rootfs";

fn ctx<'a>(what: &str, p: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

/// The image volume a layered volume lies over; `None` for a plain volume. The file is trusted
/// only to name an image volume of the volume's own pool (`<pool>/images/<fingerprint>`, real
/// directories all the way, no symlink): a volume received from a peer or a backup (an
/// rsync'd or `btrfs send` tree) could carry any `lower`, and the overlay is made, and read,
/// as root.
pub fn lower_of(vol: &Path) -> io::Result<Option<PathBuf>> {
    let f = vol.join(LOWER);
    let b = match std::fs::read(&f) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ctx("reading", &f)(e)),
    };
    let p = PathBuf::from(std::ffi::OsString::from_vec(b.trim_ascii_end().to_vec()));
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} names {}, which {why}: not a volume of this daemon's making",
                f.display(),
                p.display()
            ),
        ))
    };
    let Some(images) = pool_root_of(&std::path::absolute(vol)?).map(|r| r.join("images")) else {
        return refuse("is not beside an instance volume of a pool");
    };
    let fp_ok = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.len() == 64
            && n.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    });
    if p.parent() != Some(images.as_path()) || !fp_ok {
        return refuse("is not an image volume of the volume's pool");
    }
    let real_dir = |q: &Path| std::fs::symlink_metadata(q).is_ok_and(|m| m.file_type().is_dir());
    if !real_dir(&images) || !real_dir(&p) || !real_dir(&p.join(ROOTFS)) {
        return refuse("is missing or not a directory");
    }
    Ok(Some(p))
}

/// The root of the pool holding instance volume `vol` (`<pool>/containers/<volume>`) or
/// instance snapshot volume (`<pool>/containers-snapshots/<volume>/<snapshot>`).
fn pool_root_of(vol: &Path) -> Option<&Path> {
    let parent = vol.parent()?;
    if parent.file_name()? == "containers" {
        return parent.parent();
    }
    let up = parent.parent()?;
    (up.file_name()? == "containers-snapshots")
        .then(|| up.parent())
        .flatten()
}

/// Make a volume received from elsewhere (a peer's rsync'd tree, a backup's) plain as this
/// daemon sees volumes: a top-level `lower`, `upper` or `work` is not its data (an instance's
/// files are under `rootfs/`) and could make it pass for a layered volume.
pub fn forget_layers(vol: &Path) -> io::Result<()> {
    for n in LAYERS {
        let p = vol.join(n);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(ctx("removing", &p))?;
    }
    Ok(())
}

/// Whether `vol` is layered (a volume that cannot be read counts as plain; its use fails later
/// with the reason).
pub fn is_layered(vol: &Path) -> bool {
    vol.join(LOWER).symlink_metadata().is_ok()
}

/// Whether a layered volume's entry `name` is one of its layers (left out of a plain copy).
pub fn is_layer_entry(name: &std::ffi::OsStr) -> bool {
    LAYERS.iter().any(|n| name == *n)
}

/// Whether layered volumes can be made on the filesystem at `dir` (a pool's): the kernel mounts
/// the overlays they need, and the filesystem keeps `user.*` extended attributes (the overlay's
/// whiteouts and opaque directories). Tried once per directory.
pub fn usable_on(dir: &Path) -> bool {
    type Known = std::sync::Mutex<Vec<(PathBuf, bool)>>;
    static KNOWN: Known = Known::new(Vec::new());
    if !crate::sys::overlay::supported() {
        return false;
    }
    let mut known = KNOWN.lock().expect("layered probe cache");
    if let Some((_, yes)) = known.iter().find(|(d, _)| d == dir) {
        return *yes;
    }
    let probe = dir.join(format!(".layered-probe-{}", std::process::id()));
    let yes = std::fs::write(&probe, b"").is_ok()
        && rustix::fs::lsetxattr(
            &probe,
            "user.bivy.probe",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    if known.len() >= 64 {
        known.remove(0);
    }
    known.push((dir.to_path_buf(), yes));
    yes
}

/// Make `dst`, an empty new volume, a layered volume over the image volume `image`: the image's
/// files beside its rootfs copied, an upper directory with the owner, mode and extended
/// attributes of the image's root directory (the overlay's root is the upper one), an empty work
/// directory, the mount point, and `lower` last.
pub fn create(image: &Path, dst: &Path) -> io::Result<()> {
    let image = &std::path::absolute(image)?;
    super::copy::copy_entries(image, dst, |n| n == ROOTFS)?;
    let root = image.join(ROOTFS);
    let upper = dst.join(UPPER);
    dir_like(&root, &upper)?;
    for d in [WORK, ROOTFS] {
        let p = dst.join(d);
        std::fs::create_dir(&p).map_err(ctx("creating", &p))?;
    }
    let mut data = image.as_os_str().as_bytes().to_vec();
    data.push(b'\n');
    crate::util::fs::atomic_write(&dst.join(LOWER), &data).map_err(ctx("writing", &dst.join(LOWER)))
}

/// Make directory `dst` with the owner, mode and extended attributes of directory `src`.
fn dir_like(src: &Path, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let st = std::fs::symlink_metadata(src).map_err(ctx("reading", src))?;
    std::fs::create_dir(dst).map_err(ctx("creating", dst))?;
    std::os::unix::fs::lchown(dst, Some(st.uid()), Some(st.gid())).map_err(ctx("chown", dst))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(st.mode() & 0o7777))
        .map_err(ctx("chmod", dst))?;
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(src, &mut names).map_err(|e| ctx("listxattr", src)(e.into()))?;
    let mut value = vec![0u8; 64 * 1024];
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let len = rustix::fs::lgetxattr(src, name, &mut value)
            .map_err(|e| ctx("getxattr", src)(e.into()))?;
        rustix::fs::lsetxattr(dst, name, &value[..len], rustix::fs::XattrFlags::empty())
            .map_err(|e| ctx("setxattr", dst)(e.into()))?;
    }
    Ok(())
}

/// The files of a volume as one tree, for as long as the view lives. A plain volume's view is
/// the volume itself; a layered one's is the volume with its overlay mounted at `rootfs/`, seen
/// through the mount namespace of a thread that holds it.
pub struct View {
    path: PathBuf,
    hold: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl View {
    /// The volume, as [`view`] shows it: `<path>/rootfs` is the merged tree.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Whether the view is an overlay (the volume is layered).
    pub fn layered(&self) -> bool {
        self.hold.is_some()
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.hold.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl View {
    /// End the view (unmount its overlay) when and where `defer` runs what it is given: the
    /// end of a writable overlay syncs its upper layer's whole filesystem.
    pub fn end_later(mut self, defer: impl FnOnce(Box<dyn FnOnce() + Send>)) {
        if let Some(hold) = self.hold.take() {
            defer(Box::new(move || {
                let (stop, thread) = hold;
                drop(stop);
                let _ = thread.join();
            }));
        }
    }
}

/// A [`View`] of `vol`. Read-only: the upper layer as one more lower one, so a running
/// container's own overlay is not disturbed (what it changes meanwhile may or may not show, as
/// when a plain running rootfs is read). `writable`: the upper and work directories as such; only
/// for a volume no container has mounted (its instance stopped, under its lock).
pub fn view(vol: &Path, writable: bool) -> io::Result<View> {
    let Some(lower) = lower_of(vol)? else {
        return Ok(View {
            path: vol.to_path_buf(),
            hold: None,
        });
    };
    let vol = &std::path::absolute(vol)?;
    let cs = crate::sys::cpath;
    let (lower_root, upper, work) = (
        cs(&lower.join(ROOTFS))?,
        cs(&vol.join(UPPER))?,
        cs(&vol.join(WORK))?,
    );
    let target = vol.join(ROOTFS);
    let vol_at = vol.clone();
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<i32>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("bivy-view".into())
        .spawn(move || {
            let mount = || -> io::Result<i32> {
                use nix::mount::MsFlags;
                use nix::sched::CloneFlags;
                nix::sched::unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                // The copy of the host's mounts must not keep other pools' filesystems busy.
                crate::util::drop_pool_mounts(&[&vol_at, &lower]);
                let ro = [upper.as_c_str(), lower_root.as_c_str()];
                let rw = [lower_root.as_c_str()];
                let layers = if writable {
                    crate::sys::overlay::Layers {
                        lowers: &rw,
                        upper_work: Some((upper.as_c_str(), work.as_c_str())),
                    }
                } else {
                    crate::sys::overlay::Layers {
                        lowers: &ro,
                        upper_work: None,
                    }
                };
                let m = crate::sys::overlay::mount(&layers)?;
                crate::sys::move_mount_to(std::os::fd::AsFd::as_fd(&m), &target)?;
                Ok(nix::unistd::gettid().as_raw())
            };
            let r = mount();
            let ok = r.is_ok();
            let _ = ready_tx.send(r);
            if ok {
                // Held until the view is dropped (the sender goes): then the thread ends, and
                // its mount namespace, the overlay with it.
                let _ = stop_rx.recv();
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(tid)) => {
            let mut path = format!("/proc/{}/task/{tid}/root", std::process::id()).into_bytes();
            path.extend_from_slice(vol.as_os_str().as_bytes());
            Ok(View {
                path: PathBuf::from(std::ffi::OsString::from_vec(path)),
                hold: Some((stop_tx, thread)),
            })
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(io::Error::new(
                e.kind(),
                format!("mounting the overlay of {}: {e}", vol.display()),
            ))
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(format!(
                "mounting the overlay of {}: its thread ended",
                vol.display()
            )))
        }
    }
}

/// Make what a container's start wrote into layered volume `vol` (the templates init wrote
/// through its overlay) durable: its upper layer's filesystem synced, as the end of a writable
/// overlay does (one flush; cheaper here than an fsync per file and directory). Best effort.
pub fn sync_upper(vol: &Path) {
    use rustix::fs::{Mode, OFlags};
    if let Ok(upper) = rustix::fs::open(
        vol.join(UPPER),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        let _ = rustix::fs::syncfs(&upper);
    }
}

/// Make `dst` (which must not exist) a plain copy of volume `vol`: its merged tree as `rootfs/`
/// and its other files, without the layers.
pub fn flatten_into(vol: &Path, dst: &Path) -> io::Result<()> {
    let v = view(vol, false)?;
    std::fs::create_dir(dst).map_err(ctx("creating", dst))?;
    super::copy::copy_entries(v.path(), dst, |n| v.layered() && is_layer_entry(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_names_only_an_image_volume_of_the_same_pool() {
        let tmp = crate::util::tempdir::TempDir::new("bivy-layered-lower");
        let pool = tmp.path().join("pool");
        let fp = "a".repeat(64);
        let image = pool.join("images").join(&fp);
        std::fs::create_dir_all(image.join("rootfs")).unwrap();
        let vol = pool.join("containers/v1");
        std::fs::create_dir_all(&vol).unwrap();
        let snap = pool.join("containers-snapshots/v1/s1");
        std::fs::create_dir_all(&snap).unwrap();
        // None without the file; the pool's own image volume, from an instance or a snapshot.
        assert!(lower_of(&vol).unwrap().is_none());
        for v in [&vol, &snap] {
            std::fs::write(v.join(LOWER), format!("{}\n", image.display())).unwrap();
            assert_eq!(lower_of(v).unwrap().as_deref(), Some(image.as_path()));
        }
        // Anything else is refused: elsewhere on the host, another pool's, a non-fingerprint
        // name, a relative path, one through a symlink, a missing one.
        let other = tmp.path().join("other/images").join(&fp);
        std::fs::create_dir_all(other.join("rootfs")).unwrap();
        let link = pool.join("images").join("b".repeat(64));
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let bad_rootfs = pool.join("images").join("c".repeat(64));
        std::fs::create_dir_all(&bad_rootfs).unwrap();
        std::os::unix::fs::symlink("/", bad_rootfs.join("rootfs")).unwrap();
        for bad in [
            "/".to_string(),
            other.display().to_string(),
            pool.join("images/not-a-fingerprint").display().to_string(),
            format!("../../images/{fp}"),
            link.display().to_string(),
            bad_rootfs.display().to_string(),
            pool.join("images")
                .join("d".repeat(64))
                .display()
                .to_string(),
            format!("{}/../images/{fp}", pool.join("images").display()),
        ] {
            std::fs::write(vol.join(LOWER), &bad).unwrap();
            let e = lower_of(&vol).unwrap_err();
            assert!(
                e.to_string()
                    .contains("not a volume of this daemon's making"),
                "{bad}: {e}"
            );
        }
        // A volume outside a pool's layout is never layered.
        let loose = tmp.path().join("loose");
        std::fs::create_dir_all(&loose).unwrap();
        std::fs::write(loose.join(LOWER), image.display().to_string()).unwrap();
        assert!(lower_of(&loose).is_err());
        // What came from elsewhere loses its layers.
        std::fs::create_dir_all(vol.join("upper/etc")).unwrap();
        std::fs::create_dir_all(vol.join(ROOTFS)).unwrap();
        forget_layers(&vol).unwrap();
        assert!(lower_of(&vol).unwrap().is_none());
        assert!(!vol.join("upper").exists() && vol.join(ROOTFS).is_dir());
    }
}
