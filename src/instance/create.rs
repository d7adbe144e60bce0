//! Creating an instance: from an image (unpacked once per pool, then cloned), from another
//! instance or one of its snapshots (on the same pool or across pools), or empty; its id map and
//! how its rootfs is stored; undone on any failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::db::InstanceRecord;
use super::interim::with_consistent;
use super::pools::Spare;
use super::view::{record, url};
use super::{config, idmap, Ctx, Error, Result};
use crate::api::{self, Devices, StringMap};
use crate::runtime;
use crate::storage::Pool;
use crate::util::revert::Revert;
use crate::util::time;

/// Where a new instance's root filesystem comes from.
pub enum Origin<'a> {
    Empty,
    Image(Box<api::Image>),
    /// An image on a remote (simplestreams) server, pulled by the operation.
    Remote(Box<api::InstanceSource>),
    /// Another instance on this server, or one of its snapshots.
    Copy {
        from: String,
        snapshot: Option<String>,
        instance_only: bool,
    },
    /// From another server (`source.type: migration`): the transfer runs in the operation.
    Migration(Box<api::InstanceSource>),
    /// Filled by the caller (a migration's transfer) into the new, empty volume.
    Received(Box<Fill<'a>>),
}

/// What fills a received instance's volume: given the pool, the new volume's directory (made,
/// empty), its volume name (for snapshot paths) and the undo list, it writes the instance's
/// files and makes one writable snapshot volume per received snapshot, and returns them.
pub type Fill<'a> =
    dyn FnOnce(&Arc<Pool>, &Path, &str, &mut Revert) -> Result<Received> + Send + 'a;

/// What a [`Fill`] made.
pub struct Received {
    /// The snapshots' records, oldest first, their volumes made (writable: `create_now` makes
    /// them read-only once their ids are right).
    pub snapshots: Vec<super::db::SnapshotRecord>,
    /// The id map the files were written with (the source's `volatile.last_state.idmap`).
    pub disk_idmap: String,
    /// A live migration's: the volume holds the checkpoint the instance is to start from.
    pub stateful: bool,
}

/// A new instance's settings, resolved by `create`.
pub struct NewInstance<'a> {
    pub name: &'a str,
    pub body: &'a api::InstancesPost,
    pub profiles: Vec<String>,
    pub config: StringMap,
    pub devices: Devices,
    /// The copy source's architecture; empty otherwise.
    pub architecture: String,
    pub pool: String,
}

/// The local image an instance source names (fingerprint, alias or properties).
pub fn resolve_image(d: &Ctx, s: &api::InstanceSource) -> Result<api::Image> {
    if !s.server.is_empty() {
        return Err(Error::not_yet("images from remote servers"));
    }
    if !s.fingerprint.is_empty() {
        return Ok(d.images.get(&s.fingerprint)?);
    }
    if !s.alias.is_empty() {
        let a = d
            .images
            .alias_get(&s.alias)
            .map_err(|_| Error::NotFound(format!("Image alias {:?} not found", s.alias)))?;
        return Ok(d.images.get(&a.target)?);
    }
    if !s.properties.is_empty() {
        let mut best: Option<api::Image> = None;
        for img in d.images.list()? {
            if s.properties
                .iter()
                .all(|(k, v)| img.put.properties.get(k) == Some(v))
                && best.as_ref().is_none_or(|b| img.created_at > b.created_at)
            {
                best = Some(img);
            }
        }
        return best
            .ok_or_else(|| Error::NotFound("No image matches the requested properties".into()));
    }
    Err(Error::Invalid(
        "Image source needs a fingerprint, an alias or properties".into(),
    ))
}

/// Clone volume `src` (on `from`) to `dst` (on `to`, not existing yet): the driver's clone
/// within a pool, a file copy into a fresh volume across pools.
pub fn clone_between(from: &Pool, src: &Path, to: &Pool, dst: &Path, readonly: bool) -> Result<()> {
    let err = |e: std::io::Error| Error::Host(format!("copying {}: {e}", src.display()));
    if from.name == to.name {
        return to.driver.clone_volume(src, dst, readonly).map_err(err);
    }
    to.driver.create_volume(dst).map_err(err)?;
    // A layered volume's files as one tree, without its layers (its image volume is this
    // pool's; storage/layered.rs).
    let view = crate::storage::layered::view(src, false).map_err(err)?;
    crate::storage::copy::copy_entries(view.path(), dst, |n| {
        view.layered() && crate::storage::layered::is_layer_entry(n)
    })
    .map_err(err)?;
    if readonly {
        to.driver.set_readonly(dst).map_err(err)?;
    }
    Ok(())
}

/// Whether an instance made from the image volume `base` gets a layered volume (an overlay over
/// the image's, storage/layered.rs) rather than a copy: on a `dir` pool, where the kernel has
/// the overlays and the pool's filesystem idmapped mounts, for an unprivileged instance without
/// `security.nesting` (an overlay under a nested container's own overlays or Docker's cannot be
/// their upper layer). One that becomes privileged, nesting or shifted later is made plain at its
/// next start.
fn layer_over_image(pool: &Pool, base: &Path, expanded: &api::StringMap) -> bool {
    pool.driver.name() == "dir"
        && !config::flag(expanded, "security.privileged")
        && !config::flag(expanded, "security.nesting")
        && crate::storage::layered::usable_on(&pool.driver.path())
        && runtime::rootfs_supports_idmap(base)
}

pub fn create_now(d: &Ctx, args: NewInstance<'_>, origin: Origin<'_>) -> Result<()> {
    let NewInstance {
        name,
        body,
        profiles,
        config: mut cfg,
        devices,
        architecture: copy_arch,
        pool: pool_name,
    } = args;
    let trace = crate::util::trace::Steps::new("create", name);
    let pool = super::pools::usable_pool(d, &pool_name)?;
    let empty_origin = matches!(origin, Origin::Empty);
    let volume = super::operations::uuid();
    let final_dir = pool.container(&volume);
    let tmp = pool.container(&format!("{volume}.tmp"));
    // Undo: every volume this makes, last first (the instance's, before or after its rename).
    let mut revert = Revert::new();
    revert.add(remove_volumes(&pool, vec![tmp.clone(), final_dir.clone()]));
    let mut architecture = d.host.architecture.clone();
    let (expanded_cfg, _) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&profiles, &db.data.profiles, &cfg, &devices)
    };
    let privileged = config::flag(&expanded_cfg, "security.privileged");
    let mut snapshots = Vec::new();
    // A received volume's snapshots, to be made read-only once their ids are right.
    let mut received_snaps = Vec::new();
    let mut stateful = false;
    match origin {
        Origin::Remote(_) | Origin::Migration(_) => {
            return Err(Error::Host(
                "remote source not fetched before create".into(),
            ))
        }
        Origin::Received(fill) => {
            pool.driver
                .create_volume(&tmp)
                .map_err(|e| Error::Host(format!("creating the volume: {e}")))?;
            let got = fill(&pool, &tmp, &volume, &mut revert)?;
            if !copy_arch.is_empty() {
                architecture = copy_arch.clone();
            }
            // Files written with the source's map are brought back to container ids here;
            // below they are idmapped or shifted as any new volume's are.
            received_snaps = unshift_received(&pool, &volume, &tmp, &got)?;
            // What came from elsewhere is never a layered volume of ours (storage/layered.rs).
            for p in std::iter::once(&tmp).chain(&received_snaps) {
                crate::storage::layered::forget_layers(p)
                    .map_err(|e| Error::Host(format!("receiving: {e}")))?;
            }
            cfg.remove("volatile.last_state.idmap");
            stateful = got.stateful;
            snapshots = got.snapshots;
        }
        Origin::Empty => {
            pool.driver
                .create_volume(&tmp)
                .map_err(|e| Error::Host(format!("creating the volume: {e}")))?;
            std::fs::create_dir_all(tmp.join("rootfs")).map_err(|e| Error::Host(e.to_string()))?;
        }
        Origin::Image(ref img) => {
            let base = super::pools::image_volume(d, &pool, &img.fingerprint)?;
            trace.step("image volume ready");
            if layer_over_image(&pool, &base, &expanded_cfg) {
                // Copy-on-write: the volume holds what the instance changes (storage/layered.rs).
                // A layered spare made ahead is taken (a rename) where there is one.
                let fp = &img.fingerprint;
                if !super::pools::take_spare(d, &pool, fp, Spare::Layered, &tmp) {
                    super::pools::layer_over(d, &pool, fp, &base, &tmp)?;
                }
                super::pools::refill_spare(d, &pool, fp, Spare::Layered);
            } else {
                if !super::pools::take_spare(d, &pool, &img.fingerprint, Spare::Copy, &tmp) {
                    pool.driver
                        .clone_volume(&base, &tmp, false)
                        .map_err(|e| Error::Host(format!("cloning the image volume: {e}")))?;
                }
                super::pools::refill_spare(d, &pool, &img.fingerprint, Spare::Copy);
            }
            architecture = img.architecture.clone();
            for (k, v) in &img.put.properties {
                cfg.entry(format!("image.{k}")).or_insert_with(|| v.clone());
            }
            cfg.insert("volatile.base_image".into(), img.fingerprint.clone());
            if tmp
                .join("templates")
                .read_dir()
                .is_ok_and(|mut r| r.next().is_some())
            {
                cfg.insert("volatile.apply_template".into(), "create".into());
            }
            // The image's last use is bookkeeping (cache expiry): written durably, but off the
            // launch's path.
            let (d2, fp) = (d.self_arc(), img.fingerprint.clone());
            let _ = std::thread::Builder::new()
                .name("bivy-touch".into())
                .spawn(move || d2.images.touch(&fp));
        }
        Origin::Copy {
            ref from,
            ref snapshot,
            instance_only,
        } => {
            let src = record(d, from)?;
            let src_pool = super::pools::usable_pool(d, &src.pool)?;
            architecture = copy_arch.clone();
            match snapshot {
                Some(s) => {
                    let sr = src
                        .snapshot(s)
                        .ok_or_else(|| Error::NotFound(format!("Snapshot {s:?} not found")))?;
                    let path = src_pool.snapshot(&src.volume, &sr.volume);
                    clone_between(&src_pool, &path, &pool, &tmp, false)?;
                }
                None => {
                    snapshots = clone_instance(
                        d,
                        from,
                        &src,
                        &pool,
                        (&tmp, &volume),
                        instance_only,
                        &mut revert,
                    )?;
                }
            }
            if cfg.contains_key("volatile.base_image") {
                cfg.insert("volatile.apply_template".into(), "copy".into());
            }
        }
    }
    if !body.put.architecture.is_empty()
        && empty_origin
        && body.put.architecture.parse::<u32>().is_err()
    {
        architecture = body.put.architecture.clone();
    }
    trace.step("volume made");
    cfg.insert("volatile.uuid".into(), super::operations::uuid());
    // The id map this instance will use, and how its rootfs is stored.
    // An isolated range stays in the way of other creates and starts until the record is in.
    let (map, _chosen) = choose_map(d, &expanded_cfg, None, None)?;
    let copied_shift = cfg
        .get("volatile.last_state.idmap")
        .is_some_and(|v| v != "[]");
    if privileged {
        cfg.insert("volatile.idmap.next".into(), "[]".into());
        cfg.entry("volatile.last_state.idmap".into())
            .or_insert_with(|| "[]".into());
    } else {
        cfg.insert(
            "volatile.idmap.base".into(),
            map.uid.first().map_or(0, |e| e.hostid).to_string(),
        );
        cfg.insert("volatile.idmap.next".into(), map.to_volatile());
        // Idmapped mounts where the filesystem has them (no chown); otherwise shift the ids on
        // disk once and record the map they were shifted to (LXD's volatile.last_state.idmap).
        // A copy keeps its source's on-disk state.
        if !copied_shift && runtime::rootfs_supports_idmap(&tmp) {
            cfg.insert("volatile.last_state.idmap".into(), "[]".into());
        } else if !copied_shift {
            runtime::shift_rootfs(&tmp.join("rootfs"), &map.uid, &map.gid)?;
            cfg.insert("volatile.last_state.idmap".into(), map.to_volatile());
            for p in &received_snaps {
                runtime::shift_rootfs(&p.join("rootfs"), &map.uid, &map.gid)?;
            }
        }
    }
    // Received snapshots: their files are now as the instance's; say so, and freeze them.
    let disk = cfg
        .get("volatile.last_state.idmap")
        .cloned()
        .unwrap_or_else(|| "[]".into());
    seal_received(
        &pool,
        &cfg,
        &disk,
        snapshots.iter_mut().zip(&received_snaps),
    )?;
    trace.step("id map chosen");
    let (_, expanded_devs) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&profiles, &db.data.profiles, &cfg, &devices)
    };
    put_in_place(&pool, (&tmp, &final_dir), privileged, &expanded_devs)?;
    super::nics::fill_hwaddrs(&mut cfg, &expanded_devs)?;
    if !snapshots.is_empty() {
        revert.add(remove_volumes(&pool, vec![pool.snapshots_of(&volume)]));
    }
    let now = time::now();
    let rec = InstanceRecord {
        architecture,
        config: cfg,
        devices,
        ephemeral: body.put.ephemeral,
        profiles,
        description: body.put.description.clone(),
        created_at: now,
        last_used_at: api::ZERO_TIME.into(),
        stateful,
        volume,
        pool: pool_name,
        snapshots,
        backups: Vec::new(),
    };
    let mut db = d.db.lock().expect("db lock");
    if db.data.instances.contains_key(name) {
        return Err(Error::Conflict(format!("Instance {name:?} already exists")));
    }
    // A create that starts (`start: true`) is synced with its start's record, or by the
    // operation once the start failed (`Db::sync`), before the operation ends: one sync saved.
    let insert = |data: &mut super::db::Data| data.instances.insert(name.to_string(), rec.into());
    if body.start {
        db.update_unsynced(insert)
    } else {
        db.update(insert)
    }
    .map_err(|e| Error::Host(format!("saving instance: {e}")))?;
    // Its networks' DHCP servers bind its name to its NICs' MACs from now on (a create that
    // starts leaves that to its start, which refreshes the same networks).
    let nets = if body.start {
        Default::default()
    } else {
        super::nics::networks_of(&db.data, &expanded_devs)
    };
    drop(db);
    super::bridges::refresh(d, nets);
    trace.step("recorded");
    revert.commit();
    d.events
        .lifecycle("instance-created", &url(name), serde_json::json!({}));
    Ok(())
}

/// Bring received files back to container ids: the instance's volume at `main` with the map
/// the transfer's header names, each received snapshot with the map its own record names (LXD
/// shifts an instance's files at a start with a new map but leaves its snapshots as they were
/// taken). The snapshots' volumes, in order.
pub(super) fn unshift_received(
    pool: &Pool,
    volume: &str,
    main: &Path,
    got: &Received,
) -> Result<Vec<PathBuf>> {
    let unshift = |path: &Path, disk: &str| -> Result<()> {
        match idmap::Map::from_volatile(disk).filter(|m| !m.uid.is_empty()) {
            Some(m) => {
                let inv = m.inverse();
                Ok(runtime::shift_rootfs(
                    &path.join("rootfs"),
                    &inv.uid,
                    &inv.gid,
                )?)
            }
            None => Ok(()),
        }
    };
    unshift(main, &got.disk_idmap)?;
    let mut paths = Vec::new();
    for s in &got.snapshots {
        let path = pool.snapshot(volume, &s.volume);
        let disk = s
            .config
            .get("volatile.last_state.idmap")
            .unwrap_or(&got.disk_idmap);
        unshift(&path, disk)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Received snapshots, their files now as the instance's (`disk`, its on-disk map): their
/// records say so and carry this server's id keys from the instance's config `cfg`, not the
/// source's; their volumes become read-only.
pub(super) fn seal_received<'a>(
    pool: &Pool,
    cfg: &StringMap,
    disk: &str,
    snaps: impl Iterator<Item = (&'a mut super::db::SnapshotRecord, &'a PathBuf)>,
) -> Result<()> {
    for (s, p) in snaps {
        s.config.retain(|k, _| !k.starts_with("volatile.idmap."));
        for k in ["volatile.idmap.base", "volatile.idmap.next"] {
            if let Some(v) = cfg.get(k) {
                s.config.insert(k.into(), v.clone());
            }
        }
        s.config
            .insert("volatile.last_state.idmap".into(), disk.to_string());
        pool.driver
            .set_readonly(p)
            .map_err(|e| Error::Host(format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

/// Clone instance `name`'s volume (`src` its record; kept consistent while it runs) into
/// `tmp` on `pool`, the directory that becomes `volume`, and unless `instance_only` its
/// snapshots' volumes beside `volume` (read-only), each made volume's undo added to `revert`.
/// The snapshots' records with their new volumes, oldest first.
pub(super) fn clone_instance(
    d: &Ctx,
    name: &str,
    src: &InstanceRecord,
    pool: &Arc<Pool>,
    (tmp, volume): (&Path, &str),
    instance_only: bool,
    revert: &mut Revert,
) -> Result<Vec<super::db::SnapshotRecord>> {
    let src_pool = super::pools::usable_pool(d, &src.pool)?;
    let path = src_pool.container(&src.volume);
    with_consistent(d, name, &src_pool, || {
        clone_between(&src_pool, &path, pool, tmp, false)
    })?;
    let mut snapshots = Vec::new();
    if instance_only {
        return Ok(snapshots);
    }
    // Each snapshot's root disk names the pool it is on now (a restore brings its devices
    // back), worked out under one lock.
    let devices: Vec<Devices> = {
        let db = d.db.lock().expect("db lock");
        src.snapshots
            .iter()
            .map(|sr| {
                let (_, ed) =
                    config::expand(&sr.profiles, &db.data.profiles, &sr.config, &sr.devices);
                config::with_root_pool(&sr.devices, &ed, &pool.name)
            })
            .collect()
    };
    for (sr, devices) in src.snapshots.iter().zip(devices) {
        let sv = super::operations::uuid();
        let dst = pool.snapshot(volume, &sv);
        revert.add(remove_volumes(pool, vec![dst.clone()]));
        clone_between(
            &src_pool,
            &src_pool.snapshot(&src.volume, &sr.volume),
            pool,
            &dst,
            true,
        )?;
        let mut rec = sr.clone();
        rec.volume = sv;
        rec.devices = devices;
        snapshots.push(rec);
    }
    Ok(snapshots)
}

/// A new instance volume made in `tmp` becomes `final_dir`: closed to the mode its
/// (un)privileged instance needs, renamed into place, and limited to its root disk's `size`
/// (`devices` expanded).
pub(super) fn put_in_place(
    pool: &Pool,
    (tmp, final_dir): (&Path, &Path),
    privileged: bool,
    devices: &Devices,
) -> Result<()> {
    crate::util::fs::ensure_mode(tmp, crate::storage::instance_volume_mode(privileged))
        .map_err(|e| Error::Host(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(tmp, final_dir)
        .map_err(|e| Error::Host(format!("{}: {e}", final_dir.display())))?;
    if let Some(size) = super::volumes::root_size(devices) {
        super::volumes::apply_size(pool, final_dir, Some(&size))
            .map_err(|e| Error::Host(format!("Failed to set the root disk size: {e}")))?;
    }
    Ok(())
}

/// The undo of made volumes: delete each (whatever state it is in; a missing one is fine).
pub(super) fn remove_volumes(
    pool: &Arc<Pool>,
    paths: Vec<PathBuf>,
) -> impl FnOnce() + Send + 'static {
    let pool = pool.clone();
    move || {
        for p in &paths {
            if let Err(e) = pool.driver.delete_volume(p) {
                eprintln!("bivy: cleaning up {}: {e}", p.display());
            }
        }
    }
}

/// Host id ranges that creates and starts have chosen for isolated instances and not recorded
/// yet: in the way of others choosing at the same time (see [`choose_map`]).
static CHOSEN: std::sync::Mutex<Vec<(u32, u32)>> = std::sync::Mutex::new(Vec::new());

/// The ranges of a map [`choose_map`] chose, in the way of other choices until dropped (once
/// the caller has recorded the map, or gave up). Never dropped while the database lock is held:
/// the choice takes that lock inside this one.
pub(super) struct Chosen(Vec<(u32, u32)>);

impl Chosen {
    /// Nothing reserved: a map that takes no range of its own.
    pub(super) fn none() -> Chosen {
        Chosen(Vec::new())
    }
}

impl Drop for Chosen {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut chosen = crate::util::lock(&CHOSEN);
        for r in &self.0 {
            if let Some(i) = chosen.iter().position(|c| c == r) {
                chosen.swap_remove(i);
            }
        }
    }
}

/// The id map of an instance whose expanded config is `ec` ([`idmap::compute`]). An isolated
/// one gets a host range no other instance's map (recorded, or chosen and not yet recorded)
/// meets: the one it holds (`keep`, its `volatile.idmap.base`) while that is so, else the first
/// free one; `me` names the instance, whose own record is not in the way.
pub(super) fn choose_map(
    d: &Ctx,
    ec: &StringMap,
    me: Option<&str>,
    keep: Option<u32>,
) -> Result<(idmap::Map, Chosen)> {
    if !idmap::chooses_range(ec) {
        return Ok((idmap::compute(ec, None, Vec::new)?, Chosen::none()));
    }
    let mut chosen = crate::util::lock(&CHOSEN);
    let map = idmap::compute(ec, keep, || {
        let mut taken = held_ranges(&d.db.lock().expect("db lock").data, me);
        taken.extend(chosen.iter().copied());
        taken
    })?;
    let mine = idmap::ranges(&map);
    chosen.extend(mine.iter().copied());
    Ok((map, Chosen(mine)))
}

/// The host id ranges the instances' maps take (`volatile.idmap.next`), but `except`'s: the
/// shared range, isolated ranges and `raw.idmap` lines alike, whatever made an instance
/// isolated (its own config or a profile's).
fn held_ranges(data: &super::db::Data, except: Option<&str>) -> Vec<(u32, u32)> {
    data.instances
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != except)
        .filter_map(|(_, r)| idmap::Map::from_volatile(r.config.get("volatile.idmap.next")?))
        .flat_map(|m| idmap::ranges(&m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instance_holds_the_ranges_of_its_map_whatever_made_it_isolated() {
        let map = |base: u32| {
            idmap::Map {
                uid: vec![crate::runtime::IdMapEntry {
                    nsid: 0,
                    hostid: base,
                    count: 65536,
                }],
                gid: vec![],
            }
            .to_volatile()
        };
        let mut data = super::super::db::Data::default();
        for (name, own, base) in [
            ("shared", None, 100000),
            ("own", Some("true"), 165536),
            ("by-profile", None, 231072),
            ("me", Some("true"), 296608),
        ] {
            let mut r = InstanceRecord::default();
            if let Some(v) = own {
                r.config.insert("security.idmap.isolated".into(), v.into());
            }
            r.config.insert("volatile.idmap.next".into(), map(base));
            data.instances.insert(name.into(), r.into());
        }
        data.instances
            .insert("never-started".into(), InstanceRecord::default().into());
        let mut held = held_ranges(&data, Some("me"));
        held.sort();
        assert_eq!(held, [(100000, 165536), (165536, 231072), (231072, 296608)]);
    }
}
