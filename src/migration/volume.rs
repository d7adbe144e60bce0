//! Custom storage volumes between servers (`lxc storage volume copy|move a:POOL/V b:POOL/V`),
//! with LXD 5.0.2's protocol (`lxd/migrate_storage_volumes.go`), both sides.
//!
//! - Source: `POST /1.0/storage-pools/POOL/volumes/custom/NAME` with `migration: true` (and
//!   `volume_only`). Without `target` a websocket operation whose metadata holds the `control`
//!   and `fs` secrets (pull; the target or the client relaying dials it); with `target` a task
//!   that dials the target's operation (push).
//! - Target: `POST /1.0/storage-pools/POOL/volumes/custom` with `source.type: migration` (`mode`
//!   `pull`: dial the source's operation; `push`: serve a websocket operation of its own).
//!
//! On `control` the source offers rsync (every feature), the snapshot names and protobufs
//! (`localConfig` the snapshot's volume config) and index header version 1; the target answers.
//! On `fs`: the index header (`{"config": {"Volume": …, "VolumeSnapshots": […]}}`, Go field
//! names) and its answer, then one transfer per snapshot, oldest first, then the volume: an
//! rsync session each (LXD's), or between two bivy daemons a byte stream each (bivy's transfer,
//! no external program). The target tells `MigrationControl{success}` at the end.
//!
//! A volume's files are kept in the containers' id space, as LXD keeps a volume never attached
//! (or `security.shifted`); a volume LXD shifted on disk for an unprivileged container says so
//! in `volatile.idmap.last`, and its files are brought back to container ids here.
//! Refresh (`--refresh`, the target there already): the target asks for the snapshots it lacks
//! (by name, as LXD 5.0.2), deletes its own the source does not have (all kept with
//! `volume_only`), and rsync brings the volume up to date, here into a copy of it that is
//! swapped in at the end (a failure leaves the volume as it was).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::proto::{self, MigrationControl, MigrationHeader};
use super::rsync::{self, Features};
use super::sink::{Have, Progress, Watch};
use super::source::{send_by, send_index_header, serve, wait_result, Target};
use super::wire::{self, Ws};
use crate::api::{self, StringMap};
use crate::instance::db::{VolumeRecord, VolumeSnapshotRecord};
use crate::instance::operations::Op;
use crate::instance::volume_data::unshift_lxd;
use crate::instance::volume_snapshots::{claim, VolumeBusy};
use crate::instance::{volumes, Ctx, Error, Result};
use crate::storage::Pool;
use crate::util::revert::Revert;
use crate::util::time;

/// The keys that describe how LXD left a volume's files on disk: true of the source's disk,
/// not of this server's.
fn disk_key(k: &str) -> bool {
    k.starts_with("volatile.idmap.")
}

/// Start serving volume `name` on `pool` to a target (`req.migration`). The operation.
pub fn start(d: &Ctx, pool: &str, name: &str, req: &api::StorageVolumePost) -> Result<Arc<Op>> {
    let target = match req.target.as_ref().filter(|t| !t.is_null()) {
        Some(t) => Some(Target::parse(t)?),
        None => None,
    };
    if target.as_ref().is_some_and(|t| t.criu.is_some()) {
        return Err(Error::Invalid(
            "Invalid migration target: a volume has no criu stream".into(),
        ));
    }
    crate::instance::pools::usable_pool(d, pool)?;
    volumes::record(d, pool, name)?;
    let job = Job {
        d: d.self_arc(),
        pool: pool.to_string(),
        name: name.to_string(),
        volume_only: req.volume_only,
        streams: Arc::new(Mutex::new(Vec::new())),
    };
    let streams = job.streams.clone();
    let push = target.is_some();
    Ok(serve(
        d,
        "Migrating storage volume",
        volumes::resources(pool, name),
        (false, push),
        streams,
        move |op, secrets| match target {
            Some(t) => job.push(&t),
            None => job.run(op, secrets),
        },
    ))
}

/// One volume to send.
struct Job {
    d: Arc<Ctx>,
    pool: String,
    name: String,
    volume_only: bool,
    streams: Arc<Mutex<Vec<crate::http::ws::Sender>>>,
}

/// The volume as it is when the target has connected, marked busy (no snapshot, restore,
/// delete or move of it underneath the transfer) until the transfer ends. A target that never
/// connects (a client that gave up) holds nothing.
struct Sending<'a> {
    job: &'a Job,
    rec: VolumeRecord,
    _busy: VolumeBusy,
}

impl Job {
    fn run(self, op: &Op, secrets: &[String]) -> Result<()> {
        let mut socks = wire::wait_for(op, secrets)?.into_iter();
        let (ctl, fsw) = (socks.next().expect("control"), socks.next().expect("fs"));
        self.drive(ctl, fsw)
    }

    fn push(self, t: &Target) -> Result<()> {
        let ctl = wire::dial(&t.operation, &t.control, &t.cert)?;
        let fsw = wire::dial(&t.operation, &t.fs, &t.cert)?;
        self.drive(ctl, fsw)
    }

    fn drive(self, mut ctl: Ws, mut fsw: Ws) -> Result<()> {
        self.streams
            .lock()
            .expect("streams lock")
            .extend([ctl.tx.clone(), fsw.tx.clone()]);
        let r = claim(&self.d, &self.pool, &self.name, "migrate").and_then(|busy| {
            let s = Sending {
                job: &self,
                rec: volumes::record(&self.d, &self.pool, &self.name)?,
                _busy: busy,
            };
            s.transfer(&mut ctl, &mut fsw)
        });
        if let Err(e) = &r {
            let abort = MigrationControl {
                success: false,
                message: Some(e.to_string()),
            };
            let _ = wire::send_msg(&ctl.tx, &abort.encode());
        }
        for w in [&ctl, &fsw] {
            w.tx.end();
        }
        r
    }
}

impl Sending<'_> {
    fn snapshots(&self) -> &[VolumeSnapshotRecord] {
        if self.job.volume_only {
            &[]
        } else {
            &self.rec.snapshots
        }
    }

    fn offer(&self, pool: &Pool) -> MigrationHeader {
        let snaps = self.snapshots();
        let mut transfers = super::offered_transfers();
        transfers.retain(|t| t == proto::XFER_STREAM);
        let size = std::iter::once(pool.custom(&self.rec.volume))
            .chain(
                snaps
                    .iter()
                    .map(|s| pool.custom_snapshot(&self.rec.volume, &s.volume)),
            )
            .map(|p| volumes::tree_usage(&p).unwrap_or(0))
            .sum::<u64>();
        MigrationHeader {
            fs: proto::FS_RSYNC,
            snapshot_names: snaps.iter().map(|s| s.name.clone()).collect(),
            snapshots: snaps.iter().map(snapshot_proto).collect(),
            rsync_features: Some(proto::RsyncFeatures::all()),
            index_header_version: Some(super::INDEX_HEADER_VERSION),
            bivy_size: (!transfers.is_empty()).then_some(size as i64),
            bivy_transfer: transfers,
            ..Default::default()
        }
    }

    /// LXD's index header for a volume: backup.yaml's `Volume` and `VolumeSnapshots`, Go names.
    fn index_header(&self, sent: &[String]) -> serde_json::Value {
        let snaps: Option<Vec<serde_json::Value>> = (!self.job.volume_only).then(|| {
            self.rec
                .snapshots
                .iter()
                .filter(|s| sent.contains(&s.name))
                .map(|s| {
                    serde_json::json!({
                        "description": s.description, "expires_at": s.expires_at,
                        "name": s.name, "config": s.config, "content_type": self.rec.content_type,
                        "created_at": s.created_at,
                    })
                })
                .collect()
        });
        serde_json::json!({"config": {
            "Container": null, "Snapshots": null, "Pool": null, "Profiles": null,
            "Volume": {
                "config": self.rec.config, "description": self.rec.description,
                "name": self.job.name, "type": "custom", "used_by": null, "location": "none",
                "content_type": self.rec.content_type, "project": "default",
                "created_at": self.rec.created_at,
            },
            "VolumeSnapshots": snaps,
        }})
    }

    fn transfer(&self, ctl: &mut Ws, fs: &mut Ws) -> Result<()> {
        let pool = crate::instance::pools::usable_pool(&self.job.d, &self.job.pool)?;
        let offer = self.offer(&pool);
        wire::send_msg(&ctl.tx, &offer.encode())?;
        let resp = MigrationHeader::decode(&wire::recv_msg(&mut ctl.rx)?)
            .map_err(|e| Error::Host(e.to_string()))?;
        let stream = match resp.bivy_transfer.first() {
            Some(t) if offer.bivy_transfer.contains(t) => true,
            Some(t) => {
                return Err(Error::Host(format!(
                    "the target chose a transfer that was not offered: {t:?}"
                )))
            }
            None => false,
        };
        if !stream && resp.fs != proto::FS_RSYNC {
            return Err(Error::not_yet(&format!(
                "migration type {} (bivy sends only rsync)",
                resp.fs
            )));
        }
        let features = Features::agreed(&resp);
        if !stream {
            rsync::program()?;
        }
        // A refresh (LXD's target, the volume there already) asks for the snapshots it lacks.
        let send: Vec<String> = if resp.refresh == Some(true) {
            resp.snapshot_names
                .iter()
                .filter(|n| offer.snapshot_names.contains(n))
                .cloned()
                .collect()
        } else {
            offer.snapshot_names.clone()
        };
        if resp.index_header_version.unwrap_or(0) >= 1 {
            send_index_header(fs, &self.index_header(&send))?;
        }
        let mut trees: Vec<PathBuf> = Vec::new();
        for n in &send {
            let s = self
                .rec
                .snapshot(n)
                .ok_or_else(|| Error::NotFound(format!("Snapshot {n:?} not found")))?;
            trees.push(pool.custom_snapshot(&self.rec.volume, &s.volume));
        }
        trees.push(pool.custom(&self.rec.volume));
        for t in &trees {
            if stream {
                send_by(fs, t, |w| crate::storage::send_tree(t, w))?;
            } else {
                rsync::send(t, fs, features)?;
            }
        }
        wait_result(ctl)
    }
}

/// A volume snapshot as LXD's protobuf carries it (`localConfig` its volume config; LXD leaves
/// the dates 0, bivy sends them).
fn snapshot_proto(s: &VolumeSnapshotRecord) -> proto::Snapshot {
    let secs = |t: &str| match t {
        "" | api::ZERO_TIME | api::GO_ZERO_TIME => Some(0),
        t => Some(time::parse_secs(t).unwrap_or(0)),
    };
    proto::Snapshot {
        name: s.name.clone(),
        local_config: proto::configs(&s.config),
        creation_date: secs(&s.created_at),
        expiry_date: secs(&s.expires_at),
        ..Default::default()
    }
}

/// Checks made before the target's operation starts (answered synchronously): the mode, the
/// pull fields, the name free, the config one this server's pool takes.
pub fn check(d: &Ctx, pool: &str, req: &api::StorageVolumesPost) -> Result<()> {
    let src = &req.source;
    match src.mode.as_str() {
        "" | "pull" => {
            for k in super::streams(false) {
                if !src.secrets.contains_key(*k) {
                    return Err(Error::Invalid(format!("Missing {k} secret")));
                }
            }
            crate::tls::pem_to_der(&src.certificate)
                .ok_or_else(|| Error::Invalid("Invalid certificate".into()))?;
            wire::check_url(&src.operation)?;
        }
        "push" => {}
        m => return Err(Error::not_yet(&format!("Mode '{m}' not implemented"))),
    }
    volumes::validate_name(&req.name)?;
    if !matches!(req.content_type.as_str(), "" | volumes::FILESYSTEM) {
        return Err(Error::not_yet(
            "block custom volumes (content_type \"block\" is for virtual machines, which bivy does not run)",
        ));
    }
    let p = crate::instance::pools::usable_pool(d, pool)?;
    volumes::validate_config(p.driver.name(), &req.name, &new_config(&req.config))?;
    if volumes::record(d, pool, &req.name).is_ok() {
        if !src.refresh {
            return Err(Error::Conflict("Volume by that name already exists".into()));
        }
        // A refresh moves only what changed: rsync's job.
        rsync::program()?;
        crate::instance::volume_snapshots::refuse_if_running(
            d,
            pool,
            &req.name,
            "Cannot refresh custom volume used by running instances",
        )?;
    }
    Ok(())
}

/// A received volume's config: the request's, without the keys about the source's disk.
fn new_config(c: &StringMap) -> StringMap {
    crate::util::sort::entries_where(c, |k, _| !disk_key(k))
}

/// Receive volume `req.name` on `pool` (checked by [`check`]) in the operation `op`: pull
/// dials the source's operation, push waits on `op`'s `secrets`.
pub fn receive(
    d: &Ctx,
    pool: &str,
    req: &api::StorageVolumesPost,
    op: &Op,
    secrets: &std::collections::BTreeMap<String, String>,
    progress: &Progress<'_>,
) -> Result<()> {
    let (mut ctl, fs) = if req.source.mode == "push" {
        let list: Vec<String> = super::streams(false)
            .iter()
            .map(|k| secrets[*k].clone())
            .collect();
        let mut socks = wire::wait_for(op, &list)?.into_iter();
        (socks.next().expect("control"), socks.next().expect("fs"))
    } else {
        let src = &req.source;
        let cert = crate::tls::pem_to_der(&src.certificate)
            .ok_or_else(|| Error::Invalid("Invalid certificate".into()))?;
        let ctl = wire::dial(&src.operation, &src.secrets["control"], &cert)?;
        let fs = wire::dial(&src.operation, &src.secrets["fs"], &cert)
            .inspect_err(|e| super::sink::abort(&ctl, e))?;
        (ctl, fs)
    };
    // A refresh: the volume is there (a missing one makes a plain copy, as LXD).
    let existing = match req.source.refresh {
        true => volumes::record(d, pool, &req.name).ok(),
        false => None,
    };
    let busy = match &existing {
        Some(_) => Some(claim(d, pool, &req.name, "refresh").inspect_err(|e| {
            super::sink::abort(&ctl, e);
        })?),
        None => None,
    };
    let have = existing.as_ref().map(|r| Have {
        stamps: r.snapshots.iter().map(|s| (s.name.clone(), 0)).collect(),
        exclude_older: false,
        by_name: true,
    });
    let (offer, features, delete, xfer) =
        match super::sink::negotiate(&mut ctl, "a storage volume", have, false, false) {
            Ok(x) => x,
            Err(e) => {
                ctl.tx.shutdown();
                fs.tx.shutdown();
                return Err(e);
            }
        };
    if existing.is_some() && !req.source.volume_only {
        // As LXD: the target's snapshots the source does not have go first.
        for s in &delete {
            if let Err(e) = crate::instance::volume_snapshots::delete(d, pool, &req.name, s) {
                super::sink::abort(&ctl, &e);
                return Err(e);
            }
        }
    }
    let watch = Watch::start(ctl, vec![fs.tx.clone()]);
    let mut fs = fs;
    let sink = Sink {
        d,
        pool,
        req,
        offer: &offer,
        features,
        stream: xfer.is_some(),
        existing: existing.as_ref(),
        progress,
    };
    let res = sink.run(&mut fs);
    progress.finish();
    let res = watch.finish(res);
    drop(busy);
    if res.is_ok() {
        d.events.lifecycle(
            if existing.is_some() {
                "storage-volume-updated"
            } else {
                "storage-volume-created"
            },
            &volumes::url(pool, &req.name),
            serde_json::json!({"type": volumes::CUSTOM}),
        );
    }
    res
}

/// The receiving side's transfer, once the offer is answered.
struct Sink<'a> {
    d: &'a Ctx,
    pool: &'a str,
    req: &'a api::StorageVolumesPost,
    /// The offer, its snapshots those to receive.
    offer: &'a MigrationHeader,
    features: Features,
    /// bivy's byte streams (else rsync sessions).
    stream: bool,
    /// A refresh: the volume as it is here.
    existing: Option<&'a VolumeRecord>,
    progress: &'a Progress<'a>,
}

impl Sink<'_> {
    fn run(&self, fs: &mut Ws) -> Result<()> {
        let pool = crate::instance::pools::usable_pool(self.d, self.pool)?;
        let info = super::sink::receive_index_header(self.offer, fs, self.existing.is_some())?;
        if self.stream {
            if let Some(n) = self.offer.bivy_size.filter(|n| *n > 0) {
                self.progress.expect(n as u64);
            }
        }
        let seen = |n: u64| self.progress.add(n);
        let mut revert = Revert::new();
        let (volume, main) = match self.existing {
            // Received into a copy of the volume (rsync moves what differs), swapped in at the
            // end.
            Some(cur) => {
                let work = crate::instance::pools::replacement(&pool.custom(&cur.volume));
                let _ = pool.driver.delete_volume(&work);
                pool.driver
                    .clone_volume(&pool.custom(&cur.volume), &work, false)
                    .map_err(|e| Error::Host(format!("copying the volume to refresh: {e}")))?;
                let (p, w) = (Arc::clone(&pool), work.clone());
                revert.add(move || {
                    let _ = p.driver.delete_volume(&w);
                });
                (cur.volume.clone(), work)
            }
            None => {
                let volume = crate::instance::operations::uuid();
                let main = pool.custom(&volume);
                pool.driver
                    .create_volume(&main)
                    .map_err(|e| Error::Host(format!("Failed to create storage volume: {e}")))?;
                let (p, m, v) = (Arc::clone(&pool), main.clone(), volume.clone());
                revert.add(move || {
                    let _ = p.driver.delete_volume(&m);
                    let _ = std::fs::remove_dir(p.custom_snapshots_of(&v));
                });
                (volume, main)
            }
        };
        let host = |e: std::io::Error| Error::Host(format!("{}: {e}", main.display()));
        let mut snapshots = Vec::new();
        let records = snapshot_records(self.offer, &info, &self.req.config);
        check_records(pool.driver.name(), &self.req.name, &records)?;
        let mut sessions = rsync::Sessions::default();
        for mut rec in records {
            rec.volume = crate::instance::operations::uuid();
            let dst = pool.custom_snapshot(&volume, &rec.volume);
            let what = format!("snapshot {:?}", rec.name);
            if self.stream {
                pool.driver.create_volume(&dst).map_err(host)?;
            }
            {
                let (p, dst) = (Arc::clone(&pool), dst.clone());
                revert.add(move || {
                    let _ = p.driver.delete_volume(&dst);
                });
            }
            if self.stream {
                self.receive_tree(fs, &dst, &what, &seen)?;
                unshift_lxd(&dst, &rec.config)?;
                pool.driver.set_readonly(&dst).map_err(host)?;
            } else {
                rsync::recv(&main, fs, self.features, sessions.begin(), &seen)?;
                unshift_lxd(&main, &rec.config)?;
                pool.driver
                    .clone_volume(&main, &dst, true)
                    .map_err(|e| Error::Host(format!("making {what}: {e}")))?;
            }
            rec.config.retain(|k, _| !disk_key(k));
            snapshots.push(rec);
        }
        if self.stream {
            self.receive_tree(fs, &main, "the volume", &seen)?;
        } else {
            rsync::recv(&main, fs, self.features, sessions.begin(), &seen)?;
        }
        unshift_lxd(&main, &self.req.config)?;
        crate::util::fs::ensure_mode(&main, crate::storage::CUSTOM_VOLUME_MODE).map_err(host)?;
        let config = new_config(&self.req.config);
        crate::instance::volume_data::apply_size(&pool, &main, config.get("size"))
            .map_err(|e| Error::Host(format!("Failed to set the volume's size: {e}")))?;
        // On disk before the source is told of success: `move` deletes the source then.
        std::fs::File::open(&main)
            .and_then(|f| rustix::fs::syncfs(&f).map_err(std::io::Error::from))
            .map_err(|e| Error::Host(format!("syncing the received volume: {e}")))?;
        if self.existing.is_some() {
            crate::instance::volume_snapshots::swap_in(&pool, &volume)?;
            let name = &self.req.name;
            let saved = self.d.db.lock().expect("db lock").update(|data| {
                if let Some(r) = data
                    .volumes
                    .get_mut(self.pool)
                    .and_then(|v| v.get_mut(name))
                {
                    r.config = config;
                    r.description = self.req.description.clone();
                    r.snapshots.extend(snapshots);
                }
            });
            saved.map_err(|e| Error::Host(format!("saving the volume: {e}")))?;
            revert.commit();
            return Ok(());
        }
        let rec = VolumeRecord {
            config,
            description: self.req.description.clone(),
            content_type: volumes::FILESYSTEM.into(),
            created_at: time::now(),
            volume,
            snapshots,
            backups: Vec::new(),
        };
        volumes::insert_new(self.d, self.pool, &self.req.name, rec)?;
        revert.commit();
        Ok(())
    }

    /// One byte stream into the existing empty directory `dir`.
    fn receive_tree(&self, fs: &mut Ws, dir: &Path, what: &str, seen: &dyn Fn(u64)) -> Result<()> {
        let mut r = wire::StreamReader::new(&mut fs.rx, seen);
        crate::storage::receive_tree_into(dir, &mut r)
            .and_then(|()| r.finish())
            .map_err(|e| Error::Host(format!("receiving {what}: {e}")))
    }
}

/// What a source says of the snapshots is checked as a client's request would be: valid and
/// distinct names, a config this server's pool takes.
fn check_records(driver: &str, volume: &str, recs: &[VolumeSnapshotRecord]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for r in recs {
        crate::instance::snapshot_names::validate_snapshot_name(&r.name)
            .map_err(|e| Error::Invalid(format!("Snapshot {:?} from the source: {e}", r.name)))?;
        if !seen.insert(r.name.as_str()) {
            return Err(Error::Invalid(format!(
                "Snapshot {:?} sent twice by the source",
                r.name
            )));
        }
        volumes::validate_config(driver, volume, &new_config(&r.config))?;
    }
    Ok(())
}

/// The snapshots' records: names from the offer, config, description, expiry and creation
/// time from the index header where it has them (LXD's target does the same), else the
/// volume's config and now.
fn snapshot_records(
    offer: &MigrationHeader,
    info: &serde_json::Value,
    config: &StringMap,
) -> Vec<VolumeSnapshotRecord> {
    let entry = |name: &str| {
        info["config"]["VolumeSnapshots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let time_or = |v: &serde_json::Value, default: &str| match v.as_str() {
        Some(t) if t != api::GO_ZERO_TIME && time::parse_secs(t).is_some() => t.to_string(),
        _ => default.to_string(),
    };
    offer
        .snapshot_names
        .iter()
        .map(|name| {
            let e = entry(name);
            VolumeSnapshotRecord {
                name: name.clone(),
                description: e["description"].as_str().unwrap_or_default().to_string(),
                config: serde_json::from_value(e["config"].clone())
                    .unwrap_or_else(|_| config.clone()),
                created_at: time_or(&e["created_at"], &time::now()),
                expires_at: time_or(&e["expires_at"], api::GO_ZERO_TIME),
                volume: String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_records_take_the_index_header_where_it_has_them() {
        let offer = MigrationHeader {
            snapshot_names: vec!["s0".into(), "s1".into()],
            ..Default::default()
        };
        let info = serde_json::json!({"config": {"VolumeSnapshots": [
            {"name": "s1", "description": "second", "config": {"size": "1GiB"},
             "created_at": "2026-01-02T03:04:05Z", "expires_at": "2027-01-01T00:00:00Z"},
        ]}});
        let vol: StringMap = [("k".to_string(), "v".to_string())].into();
        let recs = snapshot_records(&offer, &info, &vol);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].name, "s0");
        assert_eq!(recs[0].config, vol, "no entry: the volume's config");
        assert_eq!(recs[0].expires_at, api::GO_ZERO_TIME);
        assert_eq!(recs[1].description, "second");
        assert_eq!(recs[1].config["size"], "1GiB");
        assert_eq!(recs[1].created_at, "2026-01-02T03:04:05Z");
        assert_eq!(recs[1].expires_at, "2027-01-01T00:00:00Z");
    }

    #[test]
    fn hostile_snapshot_records_are_refused() {
        let rec = |name: &str| VolumeSnapshotRecord {
            name: name.into(),
            ..Default::default()
        };
        assert!(check_records("dir", "v", &[rec("s0"), rec("s1")]).is_ok());
        for bad in [
            vec![rec("../x")],
            vec![rec("a/b")],
            vec![rec("")],
            vec![rec("s"), rec("s")],
        ] {
            assert!(check_records("dir", "v", &bad).is_err(), "{bad:?}");
        }
        let mut odd = rec("s0");
        odd.config.insert("no.such.key".into(), "1".into());
        assert!(check_records("dir", "v", &[odd]).is_err());
    }

    #[test]
    fn a_time_that_is_not_one_is_not_kept() {
        let offer = MigrationHeader {
            snapshot_names: vec!["s0".into()],
            ..Default::default()
        };
        let info = serde_json::json!({"config": {"VolumeSnapshots": [
            {"name": "s0", "created_at": "yesterday", "expires_at": "never"},
        ]}});
        let recs = snapshot_records(&offer, &info, &StringMap::new());
        assert_ne!(recs[0].created_at, "yesterday");
        assert_eq!(recs[0].expires_at, api::GO_ZERO_TIME);
    }

    #[test]
    fn the_source_disk_keys_are_not_kept() {
        let c: StringMap = [
            ("volatile.idmap.last", "[]"),
            ("volatile.idmap.next", "[]"),
            ("size", "1GiB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(new_config(&c).keys().collect::<Vec<_>>(), ["size"]);
    }
}
