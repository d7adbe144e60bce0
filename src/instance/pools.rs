//! The storage pools as the model uses them: opening and mounting them at start, finding an
//! instance's pool, unpacking an image once per pool, deleting volumes, and undoing what a
//! killed daemon left on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::db::{InstanceRecord, PoolRecord};
use super::{Ctx, Error, Result};
use crate::api::{Devices, StringMap};
use crate::image;
use crate::storage::{self, Pool};

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Host(format!("{what}: {e}"))
}

/// The root disk's pool in a set of (expanded) devices.
pub fn root_pool(devices: &Devices) -> Option<String> {
    devices
        .values()
        .find(|d| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("path").map(String::as_str) == Some("/")
                && !d.contains_key("source")
        })
        .and_then(|d| d.get("pool").cloned())
}

/// Open every pool in the database (creating the `default` dir pool on first start) and mount it.
/// A pool that fails to mount is logged and kept, marked unavailable.
pub fn open_all(d: &Ctx) -> std::io::Result<()> {
    let mut db = d.db.lock().expect("db lock");
    if db.data.pools.is_empty() {
        // First start (or a schema-1 state directory): the default dir pool, where bivy
        // before storage pools kept its volumes.
        let mut config = StringMap::new();
        config.insert(
            "source".into(),
            d.dir.join("storage-pools/default").display().to_string(),
        );
        db.update(|data| {
            data.pools.insert(
                "default".into(),
                PoolRecord {
                    driver: "dir".into(),
                    config,
                    description: String::new(),
                },
            )
        })?;
    }
    drop(db);
    recover_pools(d);
    let records = d.db.lock().expect("db lock").data.pools.clone();
    for (name, rec) in records {
        let pool = match Pool::new(&name, &rec.driver, &rec.config, &d.dir) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("bivy: storage pool {name}: {e}");
                d.pools
                    .unavailable
                    .lock()
                    .expect("pools lock")
                    .insert(name.clone(), e.to_string());
                continue;
            }
        };
        if let Err(e) = pool.driver.mount().and_then(|()| pool.make_layout(true)) {
            eprintln!("bivy: storage pool {name} is unavailable: {e}");
            d.pools
                .unavailable
                .lock()
                .expect("pools lock")
                .insert(name.clone(), e.to_string());
        }
        d.pools
            .pools
            .lock()
            .expect("pools lock")
            .insert(name, Arc::new(pool));
    }
    Ok(())
}

/// The open pool `name`, or a 404.
pub fn pool(d: &Ctx, name: &str) -> Result<Arc<Pool>> {
    d.pools
        .pools
        .lock()
        .expect("pools lock")
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("Storage pool {name:?} not found")))
}

/// The open pool `name`, refusing one that failed to mount.
pub fn usable_pool(d: &Ctx, name: &str) -> Result<Arc<Pool>> {
    if let Some(why) = d.pools.unavailable.lock().expect("pools lock").get(name) {
        return Err(Error::Host(format!(
            "Storage pool {name:?} is unavailable: {why}"
        )));
    }
    pool(d, name)
}

/// `<volume>.<suffix>`, beside volume directory `vol`.
fn beside(vol: &Path, suffix: &str) -> PathBuf {
    let mut name = vol.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    vol.with_file_name(name)
}

/// Where the data that replaces volume `vol` is made before [`swap_in`] puts it in place:
/// `<volume>.restore` beside it.
pub fn replacement(vol: &Path) -> PathBuf {
    beside(vol, "restore")
}

/// The data made at [`replacement`]`(vol)` takes the place of volume `vol` by two renames
/// through `<volume>.old` (a crash between them is undone at the next start, [`recover`]); on
/// failure `vol` is as it was. Returns where the replaced data now is, for the caller to remove.
pub fn swap_in(vol: &Path) -> std::io::Result<PathBuf> {
    let old = beside(vol, "old");
    std::fs::rename(vol, &old)?;
    if let Err(e) = std::fs::rename(replacement(vol), vol) {
        let _ = std::fs::rename(&old, vol);
        return Err(e);
    }
    Ok(old)
}

/// Make the instance's volume plain if it is layered (storage/layered.rs): its merged tree
/// copied to [`replacement`], [`swap_in`], the layered one removed in the background. For what
/// an overlay cannot serve (a privileged, shifted or nesting start; writing a stopped
/// instance's files; a refresh). The caller holds the instance's lock.
pub fn make_plain(d: &Ctx, rec: &super::db::InstanceRecord) -> Result<()> {
    let p = usable_pool(d, &rec.pool)?;
    let vol = p.container(&rec.volume);
    if !crate::storage::layered::is_layered(&vol) {
        return Ok(());
    }
    let new = replacement(&vol);
    let _ = p.driver.delete_volume(&new);
    let fail = |e: std::io::Error| Error::Host(format!("making {} plain: {e}", vol.display()));
    if let Err(e) = crate::storage::layered::flatten_into(&vol, &new) {
        let _ = p.driver.delete_volume(&new);
        return Err(fail(e));
    }
    let mode = std::fs::symlink_metadata(&vol).map_err(fail)?.permissions();
    std::fs::set_permissions(&new, mode).map_err(fail)?;
    let old = swap_in(&vol).map_err(fail)?;
    if let Err(e) = remove_in_background(p.clone(), &old) {
        eprintln!("bivy: removing {}: {e}", old.display());
    }
    drop_kept_image_volume(d, &p, rec);
    Ok(())
}

/// The volumes being removed by [`remove_in_background`], and the signal of each one's end.
static REMOVING: (Mutex<Vec<PathBuf>>, Condvar) = (Mutex::new(Vec::new()), Condvar::new());

/// Remove `vol`, a volume of `pool` that nothing names any more, off the caller's path: it is
/// renamed aside at once (`<name>.gone-<n>`: its own name is free again for the next restore's
/// swap), and deleted by a thread of its own. A daemon that stops before the thread ends leaves
/// a volume no record names, which the next start removes ([`recover`]); a pool's delete waits
/// for the removals on it ([`wait_for_removals`]).
pub fn remove_in_background(pool: Arc<Pool>, vol: &Path) -> std::io::Result<()> {
    remove_in_background_after(pool, vol, || {})
}

/// [`remove_in_background`], its removal after `first` (the end of a container still using
/// the volume, say); the volume is moved aside at once.
pub fn remove_in_background_after(
    pool: Arc<Pool>,
    vol: &Path,
    first: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let aside = beside(vol, &format!("gone-{}-{n}", std::process::id()));
    std::fs::rename(vol, &aside)?;
    REMOVING
        .0
        .lock()
        .expect("removals lock")
        .push(aside.clone());
    let spawned = std::thread::Builder::new()
        .name("remove volume".into())
        .spawn({
            let (pool, aside) = (pool.clone(), aside.clone());
            move || {
                first();
                if let Err(e) = pool.driver.delete_volume(&aside) {
                    eprintln!("bivy: removing {}: {e}", aside.display());
                }
                removed(&aside);
            }
        });
    if let Err(e) = spawned {
        removed(&aside);
        return pool.driver.delete_volume(&aside).map_err(|d| {
            std::io::Error::other(format!(
                "no thread to remove it ({e}), and removing it: {d}"
            ))
        });
    }
    Ok(())
}

fn removed(path: &Path) {
    let mut r = REMOVING.0.lock().expect("removals lock");
    r.retain(|p| p != path);
    REMOVING.1.notify_all();
}

/// Wait until no volume under `root` is being removed by [`remove_in_background`].
pub fn wait_for_removals(root: &Path) {
    wait_while_removing(|p| p.starts_with(root));
}

/// Wait until no volume set aside from `vol` (`<vol>.<anything>`) is being removed.
fn wait_for_removals_from(vol: &Path) {
    let mut prefix = vol.as_os_str().to_os_string();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes();
    wait_while_removing(|p| p.as_os_str().as_encoded_bytes().starts_with(prefix));
}

fn wait_while_removing(removing: impl Fn(&Path) -> bool) {
    let mut r = REMOVING.0.lock().expect("removals lock");
    while r.iter().any(|p| removing(p)) {
        r = REMOVING.1.wait(r).expect("removals lock");
    }
}

/// The fingerprints of the images unpacked on `pool` (finished ones, not `.tmp`), sorted. The
/// volume of a deleted image that layered volumes keep is not listed (as LXD hides a ZFS image
/// dataset its clones keep, `deleted/images/<fp>`).
pub fn image_volumes(d: &Ctx, pool: &Pool) -> Vec<String> {
    let mut fps: Vec<String> = std::fs::read_dir(pool.driver.path().join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_image_volume_name(n) && d.images.get(n).is_ok())
        .collect();
    crate::util::sort::sort(&mut fps);
    fps
}

/// All open pools.
pub fn all(d: &Ctx) -> Vec<Arc<Pool>> {
    d.pools
        .pools
        .lock()
        .expect("pools lock")
        .values()
        .cloned()
        .collect()
}

/// Where a pool notes that its volumes' modes were mended: volumes made since get their modes
/// when they are made (and an instance's at each start), so only an older tree needs the pass.
fn modes_stamp(pool: &Pool) -> PathBuf {
    super::markers::modes_file(&pool.driver.path())
}

/// Mend the modes of every usable pool's volumes (see [`Pool::mend_volume_modes`]) once per
/// pool (see [`modes_stamp`]): a start then does not look at each volume.
pub fn mend_volume_modes(d: &Ctx) {
    let todo: Vec<Arc<Pool>> = all(d)
        .into_iter()
        .filter(|p| !modes_stamp(p).exists())
        .collect();
    if todo.is_empty() {
        return;
    }
    // (pool, volume) -> whether its instance is privileged, read once under one lock.
    let privileged: BTreeMap<(String, String), bool> = {
        let db = d.db.lock().expect("db lock");
        crate::util::sort::map(db.data.instances.values().map(|r| {
            let (cfg, _) =
                super::config::expand(&r.profiles, &db.data.profiles, &r.config, &r.devices);
            (
                (r.pool.clone(), r.volume.clone()),
                super::config::flag(&cfg, "security.privileged"),
            )
        }))
    };
    for p in todo {
        p.mend_volume_modes(|vol| privileged.get(&(p.name.clone(), vol.to_string())).copied());
        let note = b"the modes of this pool's volumes were mended; volumes made since get theirs when made\n";
        if let Err(e) = crate::util::fs::atomic_write(&modes_stamp(&p), note) {
            eprintln!("bivy: {}: {e}", modes_stamp(&p).display());
        }
    }
}

/// The image's base volume on `pool`, unpacking it first if this pool does not have it yet.
/// Concurrent callers for the same image wait for one unpack.
pub fn image_volume(d: &Ctx, pool: &Pool, fingerprint: &str) -> Result<PathBuf> {
    let lock = image_lock(d, pool, fingerprint);
    let _held = lock.lock().expect("image lock");
    let path = pool.image(fingerprint);
    if path.join("metadata.json").exists() {
        return Ok(path);
    }
    let tmp = pool.image(&format!("{fingerprint}.tmp"));
    let _ = pool.driver.delete_volume(&tmp);
    pool.driver
        .create_volume(&tmp)
        .map_err(io_err("creating the image volume"))?;
    let res = (|| -> Result<()> {
        let meta = d.images.metadata(fingerprint)?;
        // Device nodes are left out: unprivileged containers cannot use them and every
        // container gets its /dev made at start.
        d.images.unpack(
            fingerprint,
            &tmp.join("rootfs"),
            &tmp.join("templates"),
            &image::UnpackOpts {
                skip_devices: true,
                max_bytes: d.images.max_unpacked(),
            },
        )?;
        let m = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Host(e.to_string()))?;
        crate::util::fs::atomic_write(&tmp.join("metadata.json"), &m)
            .map_err(io_err("writing metadata.json"))?;
        pool.driver
            .set_readonly(&tmp)
            .map_err(io_err("making the image volume read-only"))?;
        std::fs::rename(&tmp, &path).map_err(io_err("renaming the image volume"))?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = pool.driver.delete_volume(&tmp);
        return Err(e);
    }
    Ok(path)
}

/// What a spare made ahead of a launch is: a copy of the image's volume (a pool whose clones
/// are copies), or a layered volume over it (storage/layered.rs: a `dir` pool's unprivileged
/// instances).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Spare {
    Copy,
    Layered,
}

impl Spare {
    const ALL: [Spare; 2] = [Spare::Copy, Spare::Layered];

    fn suffix(self) -> &'static str {
        match self {
            Spare::Copy => ".spare",
            Spare::Layered => ".layered-spare",
        }
    }
}

/// Where a pool keeps a spare of an image's volume: a launch takes it with a rename instead of
/// making its volume, and a new one is made in the background ([`refill_spare`]), below
/// `<spare>.tmp` and renamed here when complete.
fn spare_path(pool: &Pool, fingerprint: &str, kind: Spare) -> PathBuf {
    pool.image(&format!("{fingerprint}{}", kind.suffix()))
}

/// The image whose complete spare `name` (an entry of a pool's `images/`) is, if it is one.
fn spare_of(name: &str) -> Option<&str> {
    Spare::ALL
        .iter()
        .find_map(|k| name.strip_suffix(k.suffix()))
}

/// Whether a name in a pool's `images/` is an image's volume (not a spare, not a volume being
/// made).
fn is_image_volume_name(n: &str) -> bool {
    !n.contains('.')
}

/// Move the spare of the image `fingerprint` of kind `kind` (see [`spare_path`]) to `dst`:
/// whether there was one. A spare still being made is not waited for.
pub fn take_spare(d: &Ctx, pool: &Pool, fingerprint: &str, kind: Spare, dst: &Path) -> bool {
    if kind == Spare::Copy && pool.driver.atomic_clone() {
        return false;
    }
    let lock = image_lock(d, pool, fingerprint);
    let _held = lock.lock().expect("image lock");
    std::fs::rename(spare_path(pool, fingerprint, kind), dst).is_ok()
}

/// A spare being made ([`refill_spare`]): one at a time for each pool and image.
struct Refill {
    pool: String,
    fingerprint: String,
    kind: Spare,
    /// Makes its copy give up, soon.
    cancel: Arc<storage::copy::Cancel>,
}

/// The spares being made; [`REFILLED`] is told when one ends.
static REFILLING: Mutex<Vec<Refill>> = Mutex::new(Vec::new());
static REFILLED: Condvar = Condvar::new();

/// Stop the spares being made that `which` matches, and wait until their
/// makers have removed what they made: each copy is cancelled (it gives up at its next entry,
/// its threads raised from idle priority). Not to be called with an image lock held (a maker
/// takes one at its end).
fn stop_refills(which: impl Fn(&Refill) -> bool) {
    let mut busy = REFILLING.lock().expect("spare lock");
    for r in busy.iter().filter(|r| which(r)) {
        r.cancel.cancel();
    }
    while busy.iter().any(&which) {
        busy = REFILLED.wait(busy).expect("spare lock");
    }
}

/// Make a new spare clone of the image `fingerprint` on `pool` on a background thread that
/// runs only on otherwise idle CPUs ([`crate::sys::run_when_idle`]), unless the pool's clones
/// are snapshots, a spare is there or one is being made. It is copied to `<fp>.spare.tmp/v`
/// without holding the image's lock (a launch meanwhile copies the image itself) and renamed
/// under it, if the image is still there. Nothing is left behind on failure; a daemon killed
/// meanwhile leaves the `.tmp`, which the next start removes. Deleting the image or the pool
/// stops the copy and waits for its removal ([`stop_refills`]).
pub fn refill_spare(d: &Ctx, pool: &Arc<Pool>, fingerprint: &str, kind: Spare) {
    if (kind == Spare::Copy && pool.driver.atomic_clone())
        || spare_path(pool, fingerprint, kind).exists()
        || !pool.image(fingerprint).join("metadata.json").exists()
    {
        return;
    }
    let cancel = Arc::new(storage::copy::Cancel::default());
    {
        let mut busy = REFILLING.lock().expect("spare lock");
        if busy
            .iter()
            .any(|r| r.pool == pool.name && r.fingerprint == fingerprint && r.kind == kind)
        {
            return;
        }
        busy.push(Refill {
            pool: pool.name.clone(),
            fingerprint: fingerprint.to_string(),
            kind,
            cancel: cancel.clone(),
        });
    }
    let (d, pool, fp) = (d.self_arc(), pool.clone(), fingerprint.to_string());
    let made = move |cancel: &storage::copy::Cancel| {
        let (base, spare) = (pool.image(&fp), spare_path(&pool, &fp, kind));
        // The copy goes into a directory of its own below `images/`, made and left at the
        // normal priority: at idle priority the thread may wait long for a CPU, and it must not
        // hold `images/` (the directory a launch renames the spare out of) meanwhile.
        let tmp = pool.image(&format!("{fp}{}.tmp", kind.suffix()));
        let copy = tmp.join("v");
        let _ = pool.driver.delete_volume(&tmp);
        let r = crate::storage::make_volume_parent(&tmp)
            .and_then(|()| {
                crate::sys::run_when_idle(true);
                let r = match kind {
                    Spare::Copy => pool.driver.clone_volume_in_background(&base, &copy, cancel),
                    Spare::Layered => pool
                        .driver
                        .create_volume(&copy)
                        .and_then(|()| storage::layered::create(&base, &copy)),
                };
                crate::sys::run_when_idle(false);
                r
            })
            .and_then(|()| {
                let lock = image_lock(&d, &pool, &fp);
                let _held = lock.lock().expect("image lock");
                if base.join("metadata.json").exists() && !spare.exists() {
                    std::fs::rename(&copy, &spare)?;
                }
                pool.driver.delete_volume(&tmp)
            });
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::Interrupted {
                eprintln!(
                    "bivy: making a spare volume ({kind:?}) of image {fp} on pool {}: {e}",
                    pool.name
                );
            }
            let _ = pool.driver.delete_volume(&tmp);
        }
    };
    // A refill is known by its cancel handle.
    let unmark = |cancel: &Arc<storage::copy::Cancel>| {
        REFILLING
            .lock()
            .expect("spare lock")
            .retain(|r| !Arc::ptr_eq(&r.cancel, cancel));
        REFILLED.notify_all();
    };
    let mine = cancel.clone();
    let r = std::thread::Builder::new()
        .name("bivy-spare".into())
        .spawn(move || {
            made(&mine);
            unmark(&mine);
        });
    if let Err(e) = r {
        unmark(&cancel);
        eprintln!("bivy: making a spare copy of image {fingerprint}: {e}");
    }
}

fn image_lock(d: &Ctx, pool: &Pool, fingerprint: &str) -> Arc<Mutex<()>> {
    d.pools
        .image_locks
        .lock()
        .expect("pools lock")
        .entry(format!("{}/{fingerprint}", pool.name))
        .or_default()
        .clone()
}

/// Delete an instance's volume and its snapshots' volumes (its record is already gone; what
/// fails here is retried by `recover` at the next start).
pub fn delete_instance_volumes(d: &Ctx, rec: &InstanceRecord) {
    let Ok(p) = pool(d, &rec.pool) else { return };
    let snaps = p.snapshots_of(&rec.volume);
    let mut paths: Vec<PathBuf> = rec
        .snapshots
        .iter()
        .map(|s| p.snapshot(&rec.volume, &s.volume))
        .collect();
    paths.push(p.container(&rec.volume));
    for path in paths {
        if let Err(e) = p.driver.delete_volume(&path) {
            eprintln!("bivy: deleting volume {}: {e}", path.display());
        }
    }
    // A delete ends with all of the instance's data gone, a restore's old volume included.
    wait_for_removals_from(&p.container(&rec.volume));
    drop_kept_image_volume(d, &p, rec);
    match std::fs::remove_dir(&snaps) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("bivy: deleting {}: {e}", snaps.display()),
    }
}

/// Whether a layered volume on `pool` (an instance's or a snapshot's, one being made or being
/// removed included) lies over the image volume `image` (storage/layered.rs): such an image
/// volume outlives its image, until the last volume over it goes ([`delete_instance_volumes`]).
pub fn image_volume_in_use(pool: &Pool, image: &Path) -> bool {
    let image = std::path::absolute(image).unwrap_or_else(|_| image.to_path_buf());
    let root = pool.driver.path();
    let over = |v: &Path| {
        storage::layered::lower_of(v)
            .ok()
            .flatten()
            .is_some_and(|l| l == image)
    };
    let entries = |d: PathBuf| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
    };
    // A volume being removed in the background (`<volume>.gone-…`) no longer counts.
    let kept = |v: &Path| !v.to_string_lossy().contains(".gone-") && over(v);
    entries(root.join("containers")).any(|v| kept(&v))
        || entries(root.join("containers-snapshots")).any(|s| entries(s).any(|v| kept(&v)))
}

/// Make the new volume `dst` a layered volume over `base`, the volume of image `fingerprint` on
/// `pool` (storage/layered.rs), under the image's lock: an image delete either comes first
/// (then `base` is gone and this fails) or sees `dst` lie over it and keeps it.
pub fn layer_over(d: &Ctx, pool: &Pool, fingerprint: &str, base: &Path, dst: &Path) -> Result<()> {
    let lock = image_lock(d, pool, fingerprint);
    let _held = lock.lock().expect("image lock");
    pool.driver
        .create_volume(dst)
        .and_then(|()| storage::layered::create(base, dst))
        .map_err(|e| Error::Host(format!("layering over the image volume: {e}")))
}

/// Drop the volume of a deleted image that layered volumes kept, once none does (after one of
/// the instance `rec`'s volumes went or was made plain).
pub(super) fn drop_kept_image_volume(d: &Ctx, p: &Pool, rec: &InstanceRecord) {
    let Some(fp) = rec.config.get("volatile.base_image") else {
        return;
    };
    let path = p.image(fp);
    if !path.exists() || d.images.get(fp).is_ok() {
        return;
    }
    let lock = image_lock(d, p, fp);
    let _held = lock.lock().expect("image lock");
    if d.images.get(fp).is_err() && !image_volume_in_use(p, &path) {
        if let Err(e) = p.driver.delete_volume(&path) {
            eprintln!("bivy: deleting image volume {}: {e}", path.display());
        }
    }
}

/// Drop an image's base volumes from every pool (the image was deleted), and wait for a spare
/// being made of it to be gone too (its maker, finding no image, keeps nothing).
pub fn delete_image_volumes(d: &Ctx, fingerprint: &str) {
    for p in all(d) {
        let lock = image_lock(d, &p, fingerprint);
        let _held = lock.lock().expect("image lock");
        let spares = Spare::ALL.map(|k| spare_path(&p, fingerprint, k));
        for path in spares.into_iter().chain([p.image(fingerprint)]) {
            if path.exists() && !image_volume_in_use(&p, &path) {
                if let Err(e) = p.driver.delete_volume(&path) {
                    eprintln!("bivy: deleting image volume {}: {e}", path.display());
                }
            }
        }
    }
    stop_refills(|r| r.fingerprint == fingerprint);
}

/// Drop every image volume and spare from `pool` (it is being deleted), each under its image's
/// lock (a spare being made fails and is removed by its maker).
pub fn delete_pool_image_volumes(d: &Ctx, pool: &Pool) {
    stop_refills(|r| r.pool == pool.name);
    let Ok(rd) = std::fs::read_dir(pool.driver.path().join("images")) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let fp = n.split('.').next().unwrap_or_default();
        let lock = image_lock(d, pool, fp);
        let _held = lock.lock().expect("image lock");
        let path = e.path();
        if let Err(e) = pool.driver.delete_volume(&path) {
            eprintln!("bivy: deleting image volume {}: {e}", path.display());
        }
    }
}

/// Undo a pool create that a killed daemon left between making the storage and writing the
/// record: loop files in `$BIVY_DIR/disks` and directories in `$BIVY_DIR/storage-pools` that no
/// pool names are unmounted and removed (a directory only when it holds nothing but the empty
/// layout). Runs before the pools are opened.
pub fn recover_pools(d: &Ctx) {
    let records = d.db.lock().expect("db lock").data.pools.clone();
    let pools_dir = d.dir.join("storage-pools");
    let creating: std::collections::HashSet<String> = std::fs::read_dir(creating_dir(d))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let named = |n: &str| records.contains_key(n);
    let mounted = |p: &std::path::Path| storage::mounted_at(p).is_ok_and(|m| m.is_some());
    let unmount = |p: &std::path::Path| {
        if mounted(p) {
            eprintln!(
                "bivy: unmounting {} (a pool create that did not finish)",
                p.display()
            );
            if let Err(e) = nix::mount::umount(p) {
                eprintln!("bivy: umount {}: {e}", p.display());
            }
        }
    };
    for e in std::fs::read_dir(d.dir.join("disks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = e.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".img"))
        else {
            continue;
        };
        if named(stem) {
            continue;
        }
        let mnt = pools_dir.join(stem);
        unmount(&mnt);
        if !creating.contains(stem) {
            // A finished pool whose record is gone (a lost or older database): kept for
            // `bivy admin recover`.
            eprintln!(
                "bivy: keeping {}: no storage pool record names it (`bivy admin recover` finds it)",
                path.display()
            );
            continue;
        }
        if !mounted(&mnt) {
            eprintln!("bivy: removing {} (no pool uses it)", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
    for e in std::fs::read_dir(&pools_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if named(&n) {
            continue;
        }
        let path = e.path();
        unmount(&path);
        if mounted(&path) {
            continue;
        }
        if !creating.contains(&n) && super::markers::pool_file(&path).exists() {
            eprintln!(
                "bivy: keeping {}: no storage pool record names it (`bivy admin recover` finds it)",
                path.display()
            );
            continue;
        }
        let _ = std::fs::remove_file(super::markers::pool_file(&path));
        let _ = std::fs::remove_dir(path.join(super::markers::DIR));
        for sub in storage::LAYOUT_DIRS {
            let _ = std::fs::remove_dir(path.join(sub));
        }
        if std::fs::remove_dir(&path).is_ok() {
            eprintln!("bivy: removed {} (no pool uses it)", path.display());
        }
    }
    for n in &creating {
        let _ = std::fs::remove_file(creating_dir(d).join(n));
    }
}

/// Where a pool create notes that it has begun (`<name>`, empty), from before it makes any
/// storage until its record is saved: what a killed create left is removed at the next start
/// only when noted there, so a pool whose record was lost is never taken for one.
pub fn creating_dir(d: &Ctx) -> PathBuf {
    d.dir.join("pools-creating")
}

/// Undo what a killed daemon left on the pools: volumes no record names (half-made creates and
/// copies, half-done deletes), snapshot volumes no snapshot names, a restore caught between its
/// two renames, image volumes being unpacked or of deleted images, custom volumes and custom
/// volume snapshots no record names.
pub fn recover(d: &Ctx) {
    let trace = crate::util::trace::Steps::new("recover pools", "");
    let data = d.db.lock().expect("db lock").data.clone();
    super::markers::ensure_all(&d.dir, &data);
    trace.step("markers");
    let instances = &data.instances;
    let images: std::collections::HashSet<String> = d
        .images
        .list()
        .map(|l| l.into_iter().map(|i| i.fingerprint).collect())
        .unwrap_or_default();
    for p in all(d) {
        if d.pools
            .unavailable
            .lock()
            .expect("pools lock")
            .contains_key(&p.name)
        {
            continue;
        }
        let mine: BTreeMap<&str, &InstanceRecord> = crate::util::sort::map(
            instances
                .values()
                .filter(|r| r.pool == p.name)
                .map(|r| (r.volume.as_str(), &**r)),
        );
        let remove = |path: &std::path::Path| {
            eprintln!("bivy: removing leftover volume {}", path.display());
            if let Err(e) = p.driver.delete_volume(path) {
                eprintln!("bivy: {e}");
            }
        };
        let containers = p.driver.path().join("containers");
        // A restore swaps `<vol>` for `<vol>.restore` by way of `<vol>.old`: if the daemon died
        // between the renames, the old volume goes back (the restore did not happen).
        let mut present = crate::util::fs::names_in(&containers);
        for vol in mine.keys() {
            if present.contains(std::ffi::OsStr::new(vol)) {
                continue;
            }
            let cur = containers.join(vol);
            let old = beside(&cur, "old");
            let old_name = old.file_name().unwrap_or_default();
            if present.contains(old_name) {
                eprintln!("bivy: undoing an interrupted restore of volume {vol}");
                if std::fs::rename(&old, &cur).is_ok() {
                    present.remove(old_name);
                    present.insert(vol.into());
                }
            }
        }
        let root = p.driver.path();
        // A volume whose record file is there lost its database record (`bivy admin recover`
        // brings it back); one without was being made or deleted.
        let keep = |path: &std::path::Path, what: &str| {
            let kept = path.exists();
            if kept {
                eprintln!(
                    "bivy: keeping {what} {}: the database has no record of it (`bivy admin recover` finds it)",
                    path.display()
                );
            }
            kept
        };
        // The directory read once: what the renames above left.
        for name in &present {
            let n = name.to_string_lossy();
            if !mine.contains_key(&*n)
                && !keep(&super::markers::instance_file(&root, &n), "instance volume")
            {
                remove(&containers.join(name));
            }
        }
        trace.step("containers");
        let snaps = p.driver.path().join("containers-snapshots");
        for e in std::fs::read_dir(&snaps).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            match mine.get(n.as_str()) {
                None if super::markers::instance_file(&root, &n).exists() => {}
                None => {
                    for s in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                        remove(&s.path());
                    }
                    let _ = std::fs::remove_dir(e.path());
                }
                Some(r) => {
                    for s in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                        let sn = s.file_name().to_string_lossy().into_owned();
                        if !r.snapshots.iter().any(|x| x.volume == sn) {
                            remove(&s.path());
                        }
                    }
                }
            }
        }
        trace.step("snapshots");
        let customs = volume_dirs(&data, &p.name);
        // A custom volume's restore swaps it the same way.
        for vol in &customs {
            let cur = p.custom(vol);
            let old = beside(&cur, "old");
            if !cur.exists() && old.exists() {
                eprintln!("bivy: undoing an interrupted restore of custom volume {vol}");
                let _ = std::fs::rename(&old, &cur);
            }
        }
        for e in std::fs::read_dir(p.driver.path().join("custom"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if !customs.contains(&n)
                && !keep(&super::markers::volume_file(&root, &n), "custom volume")
            {
                remove(&e.path());
            }
        }
        let custom_snaps = snapshot_dirs(&data, &p.name);
        for e in std::fs::read_dir(p.driver.path().join("custom-snapshots"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            let named = custom_snaps.get(&n);
            if !customs.contains(&n) && super::markers::volume_file(&root, &n).exists() {
                continue;
            }
            for s in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                let sn = s.file_name().to_string_lossy().into_owned();
                if !named.is_some_and(|v| v.contains(&sn)) {
                    remove(&s.path());
                }
            }
            if named.is_none_or(|v| v.is_empty()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        for e in std::fs::read_dir(p.driver.path().join("images"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            // A complete spare of a known image stays (a launch can take it).
            let fp = spare_of(&n).unwrap_or(&n);
            // One a layered volume lies over stays while it does (storage/layered.rs).
            if !images.contains(fp) && !image_volume_in_use(&p, &e.path()) {
                remove(&e.path());
            }
        }
    }
}

/// The volume directories on `pool` that records name (for [`recover`]).
fn volume_dirs(data: &super::db::Data, pool: &str) -> std::collections::HashSet<String> {
    data.volumes
        .get(pool)
        .map(|v| v.values().map(|r| r.volume.clone()).collect())
        .unwrap_or_default()
}

/// The snapshot directories of volume records on `pool`, by volume directory (for
/// [`recover`]).
fn snapshot_dirs(
    data: &super::db::Data,
    pool: &str,
) -> std::collections::HashMap<String, Vec<String>> {
    data.volumes
        .get(pool)
        .map(|v| {
            v.values()
                .map(|r| {
                    (
                        r.volume.clone(),
                        r.snapshots.iter().map(|s| s.volume.clone()).collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
