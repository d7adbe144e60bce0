//! Custom volume backups (`/1.0/storage-pools/POOL/volumes/custom/VOL/backups`, `lxc storage
//! volume export`) and a new volume from one (`lxc storage volume import`), in LXD 5.0.2's
//! tarball: `backup/index.yaml` (`type: custom`, `config: {volume, volume_snapshots}`), the
//! volume's files under `backup/volume/`, each snapshot's under `backup/volume-snapshots/NAME/`
//! (unless volume-only). Files keep the ids they have on disk, the containers' own (custom
//! volumes are mounted idmapped). The tarballs live beside the instance backups' and are
//! recorded on the volume. An optimized backup (`--optimized-storage`, on a btrfs pool) holds
//! `btrfs send` streams instead of the trees: `backup/volume.bin` and
//! `backup/volume-snapshots/NAME.bin`, as LXD's.

use std::io::{self, Write};
use std::path::Path;

use super::export::{add_file, Counting};
use super::index::index_time;
use super::records::{ensure_dir, expiry};
use crate::api::{self, StringMap};
use crate::image;
use crate::instance::db::{BackupRecord, VolumeRecord, VolumeSnapshotRecord};
use crate::instance::volume_data::unshift_lxd;
use crate::instance::volume_records::record;
use crate::instance::{Ctx, Error, Result};
use crate::util::revert::Revert;
use crate::util::time;

/// A volume backup's URL.
pub fn volume_url(pool: &str, vol: &str, backup: &str) -> String {
    format!("/1.0/storage-pools/{pool}/volumes/custom/{vol}/backups/{backup}")
}

/// LXD's `StoragePoolVolumeBackup`.
pub fn volume_to_api(b: &BackupRecord) -> serde_json::Value {
    serde_json::json!({
        "name": b.name, "created_at": b.created_at, "expires_at": b.expires_at,
        "volume_only": b.instance_only, "optimized_storage": b.optimized_storage,
    })
}

/// Backup `backup` of volume `vol` on `pool`.
pub fn volume_find(d: &Ctx, pool: &str, vol: &str, backup: &str) -> Result<BackupRecord> {
    record(d, pool, vol)?
        .backups
        .iter()
        .find(|b| b.name == backup)
        .cloned()
        .ok_or_else(|| Error::NotFound("Storage volume backup not found".into()))
}

/// Checks before a volume backup is made: its name (given, or `backupN` after the highest),
/// free; the compression; the expiry; for an optimized one on a btrfs pool, the `btrfs` program
/// (on another pool, as LXD, a plain backup is made).
pub fn volume_check_create(
    d: &Ctx,
    pool: &str,
    vol: &str,
    req: &api::StorageVolumeBackupsPost,
) -> Result<(String, image::Compression)> {
    let rec = record(d, pool, vol)?;
    let bname = if req.name.is_empty() {
        super::records::next_of(rec.backups.iter().map(|b| b.name.as_str()))
    } else {
        req.name.clone()
    };
    super::check_name(&bname)?;
    if rec.backups.iter().any(|b| b.name == bname) {
        return Err(Error::Conflict(format!("Backup {bname:?} already exists")));
    }
    if req.optimized_storage
        && crate::instance::pools::usable_pool(d, pool)?.driver.name() == "btrfs"
    {
        super::records::btrfs_program()?;
    }
    let compression = image::Compression::from_name(&super::records::algorithm_of(
        d,
        &req.compression_algorithm,
    ))?;
    expiry(&req.expires_at)?;
    Ok((bname, compression))
}

/// Make backup `bname` of volume `vol` (checked by [`volume_check_create`]); `report` is told the
/// progress. The tarball is written beside its final name, synced, renamed, then recorded.
pub fn volume_create(
    d: &Ctx,
    pool_name: &str,
    vol: &str,
    bname: &str,
    req: &api::StorageVolumeBackupsPost,
    compression: image::Compression,
    report: &dyn Fn(String),
) -> Result<()> {
    let rec = record(d, pool_name, vol)?;
    let pool = crate::instance::pools::usable_pool(d, pool_name)?;
    let dir = ensure_dir(d)?;
    let uuid = crate::instance::operations::uuid();
    let (final_path, tmp) = (dir.join(&uuid), dir.join(format!("{uuid}.tmp")));
    let mut revert = Revert::new();
    {
        let (a, b) = (tmp.clone(), final_path.clone());
        revert.add(move || {
            let _ = std::fs::remove_file(a);
            let _ = std::fs::remove_file(b);
        });
    }
    let snaps: &[VolumeSnapshotRecord] = if req.volume_only { &[] } else { &rec.snapshots };
    let optimized = req.optimized_storage && pool.driver.name() == "btrfs";
    let index = index_yaml(pool_name, pool.driver.name(), vol, &rec, snaps, optimized)?;
    let mut trees = Vec::new();
    for s in snaps {
        trees.push((
            pool.custom_snapshot(&rec.volume, &s.volume),
            format!("backup/volume-snapshots/{}", s.name),
        ));
    }
    let main = pool.custom(&rec.volume);
    if optimized {
        // `btrfs send` takes read-only subvolumes: a snapshot of the volume's, removed after
        // (a killed daemon's at its next start, as any volume no record names).
        let view = pool.custom(&format!("{}.backup-{uuid}", rec.volume));
        pool.driver
            .clone_volume(&main, &view, true)
            .map_err(|e| Error::Host(format!("snapshotting {}: {e}", main.display())))?;
        trees.push((view.clone(), "backup/volume".to_string()));
        let r = write_tarball(&tmp, compression, &index, &trees, true, report);
        if let Err(e) = pool.driver.delete_volume(&view) {
            eprintln!("bivy: {}: {e}", view.display());
        }
        r?;
    } else {
        trees.push((main, "backup/volume".to_string()));
        write_tarball(&tmp, compression, &index, &trees, false, report)?;
    }
    std::fs::rename(&tmp, &final_path)
        .map_err(|e| Error::Host(format!("{}: {e}", final_path.display())))?;
    let _ = crate::util::fs::sync_dir(&dir);
    let b = BackupRecord {
        name: bname.to_string(),
        created_at: time::now(),
        expires_at: expiry(&req.expires_at)?,
        instance_only: req.volume_only,
        optimized_storage: optimized,
        compression_algorithm: compression.name().into(),
        file: uuid,
    };
    {
        let mut db = d.db.lock().expect("db lock");
        let cur = crate::instance::volume_records::record_in(&db.data, pool_name, vol)?;
        if cur.backups.iter().any(|x| x.name == bname) {
            return Err(Error::Conflict(format!("Backup {bname:?} already exists")));
        }
        db.update(|data| {
            if let Some(r) = data.volumes.get_mut(pool_name).and_then(|m| m.get_mut(vol)) {
                r.backups.push(b);
            }
        })
        .map_err(|e| Error::Host(format!("saving the backup record: {e}")))?;
    }
    revert.commit();
    d.events.lifecycle(
        "storage-volume-backup-created",
        &volume_url(pool_name, vol, bname),
        serde_json::json!({}),
    );
    Ok(())
}

/// LXD's index.yaml for a custom volume (`backup.Info` with `config.Config{Volume,
/// VolumeSnapshots}`), in its field order.
fn index_yaml(
    pool: &str,
    driver: &str,
    vol: &str,
    rec: &VolumeRecord,
    snaps: &[VolumeSnapshotRecord],
    optimized: bool,
) -> Result<String> {
    let v = serde_json::json!({
        "name": vol, "backend": driver, "pool": pool,
        "snapshots": snaps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "optimized": optimized, "optimized_header": false, "type": "custom",
        "config": {
            "volume": {
                "config": rec.config, "description": rec.description, "name": vol,
                "type": "custom", "used_by": [], "location": "none",
                "content_type": rec.content_type, "project": "default",
                "created_at": rec.created_at,
            },
            "volume_snapshots": snaps.iter().map(|s| serde_json::json!({
                "description": s.description, "expires_at": s.expires_at, "name": s.name,
                "config": s.config, "content_type": rec.content_type,
                "created_at": s.created_at,
            })).collect::<Vec<_>>(),
        },
    });
    crate::util::yaml::to_string(&v).map_err(|e| Error::Host(format!("writing index.yaml: {e}")))
}

/// The tarball into `out` (synced): index.yaml, then each `(dir, member prefix)`: its tree, or
/// (`optimized`) its `btrfs send` stream as `<prefix>.bin`.
fn write_tarball(
    out: &Path,
    compression: image::Compression,
    index: &str,
    trees: &[(std::path::PathBuf, String)],
    optimized: bool,
    report: &dyn Fn(String),
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Host(format!("writing the backup: {e}"));
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| Error::Host(format!("{}: {e}", out.display())))?
    };
    let mut w = Counting::new(io::BufWriter::new(f), report);
    {
        let mut enc = image::Encoder::new(compression, &mut w).map_err(|e| err(&e))?;
        {
            let mut b = tar::Builder::new(&mut enc);
            b.mode(tar::HeaderMode::Complete);
            add_file(&mut b, "backup/index.yaml", index.as_bytes()).map_err(|e| err(&e))?;
            let mut links = image::Links::new();
            let spool = out.with_extension("send");
            for (dir, prefix) in trees {
                if optimized {
                    super::export::add_stream(&mut b, dir, &format!("{prefix}.bin"), &spool)?;
                } else {
                    image::add_tree(&mut b, dir, prefix, &mut links, &|_, _| true)
                        .map_err(Error::from)?;
                }
            }
            let _ = std::fs::remove_file(&spool);
            b.finish().map_err(|e| err(&e))?;
        }
        enc.finish().map_err(|e| err(&e))?;
    }
    w.flush().map_err(|e| err(&e))?;
    w.show();
    let f = w.into_inner().into_inner().map_err(|e| err(&e.error()))?;
    f.sync_all().map_err(|e| err(&e))
}

/// What a custom volume backup's index.yaml says, as far as an import needs it.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct VolumeInfo {
    pub name: String,
    pub backend: String,
    pub optimized: Option<bool>,
    pub optimized_header: Option<bool>,
    #[serde(rename = "type")]
    pub kind: String,
    pub config: Option<VolumeConfig>,
}

#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct VolumeConfig {
    pub volume: Option<IndexVolume>,
    #[serde(deserialize_with = "api::nullable")]
    pub volume_snapshots: Vec<IndexVolume>,
}

/// A volume or volume snapshot in index.yaml.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct IndexVolume {
    pub name: String,
    #[serde(deserialize_with = "api::nullable")]
    pub config: StringMap,
    #[serde(deserialize_with = "api::nullable")]
    pub description: String,
    #[serde(deserialize_with = "api::nullable")]
    pub content_type: String,
    #[serde(deserialize_with = "api::nullable")]
    pub created_at: String,
    #[serde(deserialize_with = "api::nullable")]
    pub expires_at: String,
}

/// Read a custom volume backup's index; anything but a plain filesystem volume backup is
/// refused.
pub fn volume_read_info(tarball: &Path) -> Result<VolumeInfo> {
    let bad = |m: String| Error::Invalid(m);
    let raw = image::read_member(tarball, "backup/index.yaml", 16 << 20)?
        .ok_or_else(|| bad("Backup is missing index.yaml".into()))?;
    let info: VolumeInfo = crate::util::yaml::from_slice(&raw)
        .map_err(|e| bad(format!("Backup index.yaml is invalid: {e}")))?;
    if info.kind != "custom" {
        return Err(bad(format!(
            "Backup is of type {:?}, not a custom volume's (import it with `import`)",
            info.kind
        )));
    }
    if info.optimized == Some(true) {
        if info.backend != "btrfs" {
            return Err(Error::Invalid(format!(
                "not supported yet: optimized backups of the {:?} storage driver",
                info.backend
            )));
        }
        if info.optimized_header == Some(true) {
            super::index::check_optimized_header(tarball)?;
        }
    }
    let ct = info
        .config
        .as_ref()
        .and_then(|c| c.volume.as_ref())
        .map_or("", |v| v.content_type.as_str());
    if !ct.is_empty() && ct != "filesystem" {
        return Err(Error::not_yet(&format!(
            "importing {ct:?} custom volumes (filesystem only)"
        )));
    }
    Ok(info)
}

/// A new volume `name` (the index's when empty) on `pool_name` from the tarball, with its
/// snapshots, config and description; on any failure nothing of it is left.
pub fn volume_import(
    d: &Ctx,
    pool_name: &str,
    name: &str,
    tarball: &Path,
    info: &VolumeInfo,
) -> Result<String> {
    let name = if name.is_empty() {
        info.name.as_str()
    } else {
        name
    };
    crate::instance::volumes::validate_name(name)?;
    let pool = crate::instance::pools::usable_pool(d, pool_name)?;
    let optimized = info.optimized == Some(true);
    if optimized && pool.driver.name() != "btrfs" {
        return Err(Error::Invalid(format!(
            "Optimized backup storage driver {:?} differs from the target storage pool driver {:?}",
            info.backend,
            pool.driver.name()
        )));
    }
    let empty = IndexVolume::default();
    let cfg = info.config.as_ref();
    let main = cfg.and_then(|c| c.volume.as_ref()).unwrap_or(&empty);
    let snaps: &[IndexVolume] = cfg.map_or(&[], |c| &c.volume_snapshots);
    let config = crate::instance::config::user_keys(&main.config);
    crate::instance::volumes::validate_config(pool.driver.name(), name, &config)?;
    if crate::instance::volume_records::record(d, pool_name, name).is_ok() {
        return Err(Error::Conflict("Volume by that name already exists".into()));
    }
    let volume = crate::instance::operations::uuid();
    let mut revert = Revert::new();
    let made = |path: std::path::PathBuf, revert: &mut Revert| -> Result<()> {
        pool.driver
            .create_volume(&path)
            .map_err(|e| Error::Host(format!("Failed to create storage volume: {e}")))?;
        let p = pool.clone();
        revert.add(move || {
            let _ = p.driver.delete_volume(&path);
        });
        Ok(())
    };
    // Checked before anything is made: stored as they came, bad times broke every listing.
    let times = snaps
        .iter()
        .map(|s| {
            Ok((
                index_time("created_at", &s.created_at, zero)?,
                index_time("expires_at", &s.expires_at, zero)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut trees = Vec::new();
    let mut records = Vec::new();
    if !snaps.is_empty() {
        // Undone last: the snapshots' directory, once their volumes are gone.
        let dir = pool.custom_snapshots_of(&volume);
        revert.add(move || {
            let _ = std::fs::remove_dir(&dir);
        });
    }
    for (s, (created_at, expires_at)) in snaps.iter().zip(times) {
        crate::instance::volumes::validate_name(&s.name)?;
        let sv = crate::instance::operations::uuid();
        let path = pool.custom_snapshot(&volume, &sv);
        made(path.clone(), &mut revert)?;
        trees.push((format!("backup/volume-snapshots/{}", s.name), path));
        records.push(VolumeSnapshotRecord {
            name: s.name.clone(),
            description: s.description.clone(),
            config: crate::instance::config::user_keys(&s.config),
            created_at,
            expires_at,
            volume: sv,
        });
    }
    let path = pool.custom(&volume);
    made(path.clone(), &mut revert)?;
    trees.push(("backup/volume".to_string(), path.clone()));
    if optimized {
        super::import::receive_streams(&pool, &volume, &trees, tarball, 0, &mut revert)?;
    } else {
        image::unpack_trees(
            tarball,
            &trees,
            &image::UnpackOpts {
                skip_devices: false,
                max_bytes: 0,
            },
        )?;
    }
    // LXD writes a volume's files with the ids they have on its disk, shifted for an
    // unprivileged container if one used it (its volatile.idmap.last says so).
    for ((_, p), s) in trees.iter().zip(snaps) {
        unshift_lxd(p, &s.config)?;
    }
    unshift_lxd(&path, &main.config)?;
    crate::util::fs::ensure_mode(&path, crate::storage::CUSTOM_VOLUME_MODE)
        .map_err(|e| Error::Host(format!("{}: {e}", path.display())))?;
    for (_, p) in &trees[..trees.len() - 1] {
        pool.driver
            .set_readonly(p)
            .map_err(|e| Error::Host(format!("{}: {e}", p.display())))?;
    }
    crate::instance::volume_data::apply_size(&pool, &path, config.get("size"))
        .map_err(|e| Error::Host(format!("Failed to set the volume's size: {e}")))?;
    let rec = VolumeRecord {
        config,
        description: main.description.clone(),
        content_type: "filesystem".into(),
        created_at: time::now(),
        volume,
        snapshots: records,
        backups: Vec::new(),
    };
    crate::instance::volumes::insert_new(d, pool_name, name, rec)?;
    revert.commit();
    d.events.lifecycle(
        "storage-volume-created",
        &crate::instance::volume_records::url(pool_name, name),
        serde_json::json!({"type": "custom"}),
    );
    Ok(name.to_string())
}

/// A time as stored: the index's, or LXD's zero time.
fn zero() -> String {
    api::GO_ZERO_TIME.into()
}

/// Rename backup `old` of volume `vol` to `new`.
pub fn volume_rename(d: &Ctx, pool: &str, vol: &str, old: &str, new: &str) -> Result<()> {
    super::check_name(new)?;
    let mut db = d.db.lock().expect("db lock");
    let rec = crate::instance::volume_records::record_in(&db.data, pool, vol)?;
    if !rec.backups.iter().any(|b| b.name == old) {
        return Err(Error::NotFound("Storage volume backup not found".into()));
    }
    if rec.backups.iter().any(|b| b.name == new) {
        return Err(Error::Conflict(format!("Backup {new:?} already exists")));
    }
    db.update(|data| {
        if let Some(r) = data.volumes.get_mut(pool).and_then(|m| m.get_mut(vol)) {
            for b in r.backups.iter_mut().filter(|b| b.name == old) {
                b.name = new.to_string();
            }
        }
    })
    .map_err(|e| Error::Host(format!("saving the backup record: {e}")))
}

/// Delete backup `backup` of volume `vol`: its record, then its file.
pub fn volume_delete(d: &Ctx, pool: &str, vol: &str, backup: &str) -> Result<()> {
    let b = volume_find(d, pool, vol, backup)?;
    {
        let mut db = d.db.lock().expect("db lock");
        db.update(|data| {
            if let Some(r) = data.volumes.get_mut(pool).and_then(|m| m.get_mut(vol)) {
                r.backups.retain(|x| x.name != backup);
            }
        })
        .map_err(|e| Error::Host(format!("saving the backup record: {e}")))?;
    }
    let _ = std::fs::remove_file(super::file(d, &b));
    Ok(())
}

/// Delete the custom volume backups whose `expires_at` is past `now` (unix seconds).
pub fn volume_prune_expired(d: &Ctx, now: i64) {
    let due: Vec<(String, String, String)> = {
        let db = d.db.lock().expect("db lock");
        db.data
            .volumes
            .iter()
            .flat_map(|(p, m)| m.iter().map(move |(v, r)| (p, v, r)))
            .flat_map(|(p, v, r)| r.backups.iter().map(move |b| (p, v, b)))
            .filter(|(_, _, b)| super::records::expired(b, now))
            .map(|(p, v, b)| (p.clone(), v.clone(), b.name.clone()))
            .collect()
    };
    for (p, v, b) in due {
        match volume_delete(d, &p, &v, &b) {
            Ok(()) => eprintln!("bivy: deleted expired backup {p}/{v}/{b}"),
            Err(e) => eprintln!("bivy: deleting expired backup {p}/{v}/{b}: {e}"),
        }
    }
}
