//! The target side (`POST /1.0/instances` with `source.type: migration`). `mode: pull`: dial the
//! source operation's `control` and `fs` websockets (its certificate pinned, the secrets as the
//! credential); `mode: push`: serve them in this create operation, for the source (or the client
//! relaying) to connect to. Then answer its offer (rsync, the features both have, its
//! snapshots, the index header version both speak), receive the index header, one rsync session per snapshot into the new
//! volume (each then cloned into the snapshot's volume) and one for the instance (two when the
//! source runs and sends a final sync), then make the record through `instance::create` (ids
//! unshifted from the source's on-disk map, then idmapped or shifted as for any new volume;
//! volatile keys regenerated) and tell the source `MigrationControl{success}`.
//!
//! Live (`source.live`, a third stream `criu`): the checkpoint is received into the new
//! instance's state directory and the instance is started from it before success is reported;
//! a restore that fails deletes the instance again (the source then resumes its own).
//!
//! On any failure the source is told why, and everything made here is removed (the create's
//! undo list); the source is unchanged. A source that aborts (`MigrationControl{success:
//! false}`) or goes away ends the transfer at once.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::proto::{self, MigrationControl, MigrationHeader};
use super::rsync::{self, Features};
use super::wire::{self, Ws};
use crate::api;
use crate::instance::create::{create_now, NewInstance, Origin, Received};
use crate::instance::db::SnapshotRecord;
use crate::instance::{Ctx, Error, Result};
use crate::storage::Pool;
use crate::util::revert::Revert;
use crate::util::time;

/// Checks made before the create operation starts (answered synchronously).
pub fn check(src: &api::InstanceSource) -> Result<()> {
    let push = match src.mode.as_str() {
        "" | "pull" => false,
        "push" => true,
        m => return Err(Error::Invalid(format!("Unknown migration mode {m:?}"))),
    };
    if src.live && src.refresh {
        return Err(Error::Invalid(
            "A refresh is never live: refresh from a stopped or --stateless source".into(),
        ));
    }
    if src.live {
        // Restoring needs CRIU here: refused before anything moves.
        crate::instance::stateful::require_criu().map_err(|e| {
            Error::NotSupported(format!(
                "Unable to perform container live migration: {e} (on the target; or copy or \
                 move it with --stateless)"
            ))
        })?;
    }
    if push {
        // The source dials this server's operation: nothing of its own to check.
        return Ok(());
    }
    for k in super::streams(src.live) {
        if !src.secrets.contains_key(*k) {
            return Err(Error::Invalid(format!("Missing {k} secret")));
        }
    }
    crate::tls::pem_to_der(&src.certificate).ok_or_else(|| {
        Error::Invalid("Migration source certificate is not a PEM certificate".into())
    })?;
    wire::check_url(&src.operation)
}

/// Transfer progress as LXD reports it in the operation (`fs_progress`: bytes received so far
/// and the rate, or the percentage and the rate when the source said how much it sends), at
/// most once a second.
pub struct Progress<'a> {
    report: &'a (dyn Fn(String) + Sync),
    total: std::sync::atomic::AtomicU64,
    /// The bytes the source expects to send (0: not known).
    expected: std::sync::atomic::AtomicU64,
    start: std::time::Instant,
    last: Mutex<std::time::Instant>,
}

impl<'a> Progress<'a> {
    pub fn new(report: &'a (dyn Fn(String) + Sync)) -> Progress<'a> {
        let now = std::time::Instant::now();
        Progress {
            report,
            total: 0.into(),
            expected: 0.into(),
            start: now,
            last: Mutex::new(now),
        }
    }

    pub(super) fn add(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last.lock().expect("progress lock");
        if last.elapsed() >= std::time::Duration::from_secs(1) {
            *last = std::time::Instant::now();
            self.show(total, false);
        }
    }

    /// The source's estimate of what it sends, for a percentage (an estimate: shown at most
    /// 99% until the end).
    pub(super) fn expect(&self, bytes: u64) {
        self.expected
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The final figure, whenever the transfer ends.
    pub(super) fn finish(&self) {
        self.show(self.total.load(std::sync::atomic::Ordering::Relaxed), true);
    }

    fn show(&self, total: u64, done: bool) {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let h = crate::util::human_bytes;
        let rate = h(total as f64 / secs);
        let expected = self.expected.load(std::sync::atomic::Ordering::Relaxed);
        let pct = total.saturating_mul(100).checked_div(expected);
        (self.report)(match pct {
            Some(_) if done => format!("100% ({rate}/s)"),
            Some(p) => format!("{}% ({rate}/s)", p.min(99)),
            None => format!("{} ({rate}/s)", h(total as f64)),
        });
    }
}

/// What a transfer makes on this server.
pub enum Goal<'a> {
    /// A new instance, as `args` describes it.
    Create(NewInstance<'a>),
    /// An existing, stopped instance brought up to date (`--refresh`): only the snapshots it
    /// lacks and the files that differ move; its snapshots the source does not have (or has
    /// from another time) are deleted first, unless `exclude_older` keeps them, and `deleted`
    /// is told their names before.
    Refresh {
        name: &'a str,
        exclude_older: bool,
        deleted: &'a dyn Fn(&[String]),
    },
}

/// Receive what `goal` says from `src` (checked by [`check`]), in the operation's thread;
/// `progress` is told how the transfer goes. Pull mode: dial the source's operation.
pub fn receive(
    d: &Ctx,
    goal: Goal<'_>,
    src: &api::InstanceSource,
    progress: &Progress<'_>,
) -> Result<()> {
    let cert = crate::tls::pem_to_der(&src.certificate).ok_or_else(|| {
        Error::Invalid("Migration source certificate is not a PEM certificate".into())
    })?;
    let ctl = wire::dial(&src.operation, &src.secrets["control"], &cert)?;
    let dial = |k: &str| {
        wire::dial(&src.operation, &src.secrets[k], &cert).inspect_err(|e| abort(&ctl, e))
    };
    let fs = dial("fs")?;
    let criu = match src.live {
        true => Some(dial("criu")?),
        false => None,
    };
    receive_on(d, goal, ctl, fs, criu, progress)
}

/// [`receive`] or [`receive_pushed`], as `src.mode` says (`op` and its `secrets` for push).
pub fn receive_by(
    d: &Ctx,
    goal: Goal<'_>,
    src: &api::InstanceSource,
    op: &crate::instance::operations::Op,
    secrets: &std::collections::BTreeMap<String, String>,
    progress: &Progress<'_>,
) -> Result<()> {
    if src.mode == "push" {
        receive_pushed(d, goal, op, secrets, progress)
    } else {
        receive(d, goal, src, progress)
    }
}

/// Push mode (and relay): the source, or the client relaying for it, connects to this
/// operation's websockets, whose `secrets` are in its metadata ([`super::secrets`]).
pub fn receive_pushed(
    d: &Ctx,
    goal: Goal<'_>,
    op: &crate::instance::operations::Op,
    secrets: &std::collections::BTreeMap<String, String>,
    progress: &Progress<'_>,
) -> Result<()> {
    let list: Vec<String> = super::streams(secrets.contains_key("criu"))
        .iter()
        .map(|k| secrets[*k].clone())
        .collect();
    let mut socks = wire::wait_for(op, &list)?.into_iter();
    let (ctl, fs) = (socks.next().expect("control"), socks.next().expect("fs"));
    receive_on(d, goal, ctl, fs, socks.next(), progress)
}

/// The transfer on connected websockets, whoever dialed.
fn receive_on(
    d: &Ctx,
    mut goal: Goal<'_>,
    mut ctl: Ws,
    fs: Ws,
    criu: Option<Ws>,
    progress: &Progress<'_>,
) -> Result<()> {
    let live = criu.is_some();
    // The snapshots this server has (a refresh compares them with the source's), and the
    // config a snapshot record takes when an old source sends names only.
    let (have, config) = match &mut goal {
        Goal::Create(args) => {
            // The keys this server computes for itself; the rest of a moved instance's
            // volatile keys (its base image, its MAC addresses) stay as the source had them.
            args.config.retain(|k, _| {
                !(k.starts_with("volatile.idmap.")
                    || k == "volatile.last_state.idmap"
                    || k == "volatile.uuid")
            });
            (None, args.config.clone())
        }
        Goal::Refresh {
            name,
            exclude_older,
            ..
        } => match crate::instance::view::record(d, name) {
            Ok(rec) => (
                Some(Have {
                    stamps: crate::instance::refresh::stamps(&rec.snapshots),
                    exclude_older: *exclude_older,
                    by_name: false,
                }),
                rec.config.clone(),
            ),
            Err(e) => {
                abort(&ctl, &e);
                return Err(e);
            }
        },
    };
    // The base image, when this server has it: an rsync transfer then starts from its files, so
    // only what differs from them travels.
    let base = match &goal {
        Goal::Create(args) => Some(args.body.source.base_image.as_str())
            .filter(|fp| !fp.is_empty() && d.images.get(fp).is_ok())
            .map(String::from),
        Goal::Refresh { .. } => None,
    };
    let target_btrfs = match &goal {
        Goal::Create(args) => crate::instance::pools::usable_pool(d, &args.pool)
            .is_ok_and(|p| p.driver.name() == "btrfs"),
        Goal::Refresh { .. } => false,
    };
    // A live migration restores the instance here: it must have migration.stateful.
    let stateful_key = match &goal {
        Goal::Create(args) if live => {
            let db = d.db.lock().expect("db lock");
            let (ec, _) = crate::instance::config::expand(
                &args.profiles,
                &db.data.profiles,
                &args.config,
                &args.devices,
            );
            crate::instance::config::flag(&ec, "migration.stateful")
        }
        _ => true,
    };
    let negotiated = if stateful_key {
        negotiate(&mut ctl, "an instance", have, target_btrfs, live)
    } else {
        let e = Error::Invalid(
            "Unable to perform container live migration: the instance would not have \
             migration.stateful=true here (set it in its own config, not only in a profile of \
             the source's)"
                .into(),
        );
        abort(&ctl, &e);
        Err(e)
    };
    let (offer, features, delete, xfer) = match negotiated {
        Ok(x) => x,
        Err(e) => {
            for tx in [Some(&ctl.tx), Some(&fs.tx), criu.as_ref().map(|w| &w.tx)]
                .into_iter()
                .flatten()
            {
                tx.shutdown();
            }
            return Err(e);
        }
    };
    if let Goal::Refresh { name, deleted, .. } = &goal {
        // As LXD: the target's snapshots that differ from the source's go before the transfer.
        deleted(&delete);
        for s in &delete {
            if let Err(e) = crate::instance::snapshots::delete_now(d, name, s) {
                abort(&ctl, &e);
                return Err(e);
            }
        }
    }
    // From here the source may abort: a reader on `control` ends the transfer when it does.
    let mut data = vec![fs.tx.clone()];
    data.extend(criu.as_ref().map(|w| w.tx.clone()));
    let watch = Watch::start(ctl, data);
    let mut fs = fs;
    let mut criu = criu;
    let refresh = matches!(goal, Goal::Refresh { .. });
    let fill = |pool: &Arc<Pool>, tmp: &Path, volume: &str, revert: &mut Revert| {
        let t = Transfer {
            d,
            base: base.as_deref(),
            offer: &offer,
            features,
            xfer,
            config: &config,
            refresh,
            progress,
        };
        t.run(pool, tmp, volume, revert, &mut fs, criu.as_mut())
    };
    let res = match goal {
        Goal::Create(args) if live => {
            let name = args.name;
            create_now(d, args, Origin::Received(Box::new(fill))).and_then(|()| restore(d, name))
        }
        Goal::Create(args) => create_now(d, args, Origin::Received(Box::new(fill))),
        Goal::Refresh { name, .. } => crate::instance::refresh::apply(d, name, Box::new(fill)),
    };
    progress.finish();
    watch.finish(res)
}

/// The source's abort, watched on `control` while a transfer runs: a `MigrationControl{success:
/// false}`, or the source going away, shuts the data streams so the transfer ends at once.
pub(super) struct Watch {
    ctl_tx: crate::http::ws::Sender,
    reader: std::thread::JoinHandle<()>,
    aborted: Arc<Mutex<Option<String>>>,
    data: Vec<crate::http::ws::Sender>,
}

impl Watch {
    pub(super) fn start(ctl: Ws, data: Vec<crate::http::ws::Sender>) -> Watch {
        let aborted = Arc::new(Mutex::new(None::<String>));
        let seen = aborted.clone();
        let Ws {
            tx: ctl_tx,
            rx: mut ctl_rx,
        } = ctl;
        let shut = data.clone();
        let reader = std::thread::spawn(move || {
            let why = match wire::recv_msg(&mut ctl_rx).map(|b| MigrationControl::decode(&b)) {
                Ok(Ok(c)) if !c.success => c.message.unwrap_or_else(|| "migration failed".into()),
                Ok(_) => return,
                Err(e) => e.to_string(),
            };
            *seen.lock().expect("abort lock") = Some(why);
            for tx in shut {
                tx.shutdown();
            }
        });
        Watch {
            ctl_tx,
            reader,
            aborted,
            data,
        }
    }

    /// Tell the source how the transfer `res` ended (with the source's own reason when it
    /// aborted too), let it close first, then close every stream. `res`, as the client sees it.
    pub(super) fn finish(self, res: Result<()>) -> Result<()> {
        let res = match (res, self.aborted.lock().expect("abort lock").take()) {
            // Both sides' reasons: which failed first is a race (a full disk here breaks the
            // source's pipe, and its abort can arrive before this side's own error is read).
            (Err(e), Some(why)) => Err(Error::Host(format!(
                "{e} (the migration source failed: {why})"
            ))),
            (r, _) => r,
        };
        let m = match &res {
            Ok(()) => MigrationControl {
                success: true,
                message: None,
            },
            Err(e) => MigrationControl {
                success: false,
                message: Some(e.to_string()),
            },
        };
        // On success the data is complete here: a source gone since changes nothing.
        let _ = wire::send_msg(&self.ctl_tx, &m.encode());
        // The source closes the stream once it has the result, its instance or volume let go
        // by then: wait for that a little, so that a client told the copy is done finds the
        // source free (lxc waits for this operation only).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.reader.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for tx in std::iter::once(&self.ctl_tx).chain(&self.data) {
            tx.end();
        }
        let _ = self.reader.join();
        res
    }
}

/// A live migration's last step here: start the new instance `name` from the checkpoint it
/// received. If that fails, the instance is deleted again (the source then resumes its own).
fn restore(d: &Ctx, name: &str) -> Result<()> {
    let t = std::time::Instant::now();
    match crate::instance::lifecycle::start_with(d, name, true) {
        Ok(()) => {
            eprintln!(
                "bivy: {name}: restored from the migrated checkpoint in {} ms",
                t.elapsed().as_millis()
            );
            Ok(())
        }
        Err(e) => {
            if let Err(x) = crate::instance::lifecycle::delete_now(d, name) {
                eprintln!("bivy: {name}: removing the instance whose restore failed: {x}");
            }
            Err(Error::Host(format!(
                "restoring the migrated instance from its checkpoint: {e}"
            )))
        }
    }
}

/// Tell the source why we stop (best effort).
pub(super) fn abort(ctl: &Ws, e: &Error) {
    let m = MigrationControl {
        success: false,
        message: Some(e.to_string()),
    };
    let _ = wire::send_msg(&ctl.tx, &m.encode());
}

/// Read the offer, answer it; the offer (its snapshots cut to those to receive), the rsync
/// features to use, the target's snapshots to delete, and bivy's transfer the volumes come by
/// instead of rsync, if any: one a bivy source offered (btrfs send when the new instance's pool
/// is btrfs too, else byte streams), unless this is a refresh, whose point is rsync's moving
/// only what changed. `have`: for a refresh, the snapshots this server has.
pub(super) fn negotiate(
    ctl: &mut Ws,
    what: &str,
    have: Option<Have>,
    target_btrfs: bool,
    live: bool,
) -> Result<(MigrationHeader, Features, Vec<String>, Option<&'static str>)> {
    let r = (|| {
        let mut offer = MigrationHeader::decode(&wire::recv_msg(&mut ctl.rx)?)
            .map_err(|e| Error::Host(e.to_string()))?;
        if (offer.criu == Some(proto::CRIU_RSYNC)) != live {
            return Err(Error::Invalid(
                "Unable to perform container live migration: the source's offer and the \
                 request disagree on whether it is live"
                    .into(),
            ));
        }
        let offered: Vec<String> = offer
            .rsync_feature_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let has = |n: &str| offered.iter().any(|o| o == n);
        let mut delete = Vec::new();
        if let Some(Have {
            stamps: have,
            exclude_older,
            by_name,
        }) = &have
        {
            if !has("delete") {
                return Err(Error::not_yet(
                    "refreshing from a source whose rsync does not delete (no \"delete\" feature)",
                ));
            }
            // An old source sends names only: without dates every snapshot is sent again.
            let legacy = offer.snapshots.len() != offer.snapshot_names.len();
            let stamps: Vec<crate::instance::refresh::Stamp> = offer
                .snapshot_names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let t = if *by_name {
                        0
                    } else if legacy {
                        i64::MIN
                    } else {
                        offer.snapshots[i].creation_date.unwrap_or(i64::MIN)
                    };
                    (n.clone(), t)
                })
                .collect();
            let plan = crate::instance::refresh::compare(&stamps, have, *exclude_older);
            let keep = |n: &String| plan.sync.contains(n);
            if !legacy {
                let names = offer.snapshot_names.clone();
                offer.snapshots = names
                    .iter()
                    .zip(std::mem::take(&mut offer.snapshots))
                    .filter(|(n, _)| keep(n))
                    .map(|(_, s)| s)
                    .collect();
            }
            offer.snapshot_names.retain(keep);
            delete = plan.delete;
        }
        let mine = super::offered_transfers();
        let both =
            |t: &str| offer.bivy_transfer.iter().any(|o| o == t) && mine.iter().any(|m| m == t);
        let xfer = if have.is_some() {
            None
        } else if both(proto::XFER_BTRFS)
            && target_btrfs
            && crate::storage::btrfs::program("").is_ok()
        {
            Some(proto::XFER_BTRFS)
        } else if both(proto::XFER_STREAM) {
            Some(proto::XFER_STREAM)
        } else {
            None
        };
        if xfer.is_none() && live {
            // bivy's checkpoint travels on the criu stream with bivy's transfers only.
            return Err(Error::not_yet(
                "live migration from a server other than bivy (its CRIU images over rsync); \
                 copy or move it with --stateless",
            ));
        }
        if xfer.is_none() {
            rsync::program()?;
        }
        eprintln!(
            "bivy: receiving {what} by {}",
            match xfer {
                Some(proto::XFER_BTRFS) => "btrfs send/receive",
                Some(_) => "bivy's byte-stream transfer",
                None => "rsync (LXD's transfer)",
            }
        );
        let resp = MigrationHeader {
            // Whatever the source offered (btrfs, zfs…), rsync is the fallback both have.
            fs: proto::FS_RSYNC,
            bivy_transfer: xfer.iter().map(|t| t.to_string()).collect(),
            criu: offer.criu,
            snapshot_names: offer.snapshot_names.clone(),
            snapshots: offer.snapshots.clone(),
            predump: Some(false),
            rsync_features: Some(proto::RsyncFeatures {
                xattrs: Some(has("xattrs")),
                delete: Some(has("delete")),
                compress: Some(has("compress")),
                bidirectional: Some(has("bidirectional")),
            }),
            refresh: Some(have.is_some()),
            index_header_version: Some(
                offer
                    .index_header_version
                    .unwrap_or(0)
                    .min(super::INDEX_HEADER_VERSION),
            ),
            ..Default::default()
        };
        wire::send_msg(&ctl.tx, &resp.encode())?;
        Ok((offer, Features::agreed(&resp), delete, xfer))
    })();
    if let Err(e) = &r {
        abort(ctl, e);
    }
    r
}

/// What a refresh target has: its snapshots' names and creation times (`stamps`), whether the
/// source's older than its newest are left out (`exclude_older`, its own then kept), and
/// whether they are compared by name only (`by_name`: LXD's volume snapshots carry no dates;
/// `stamps` then have 0 for each).
pub(super) struct Have {
    pub stamps: Vec<crate::instance::refresh::Stamp>,
    pub exclude_older: bool,
    pub by_name: bool,
}

/// The filesystem part, inside the create or the refresh: index header, snapshots, the
/// instance.
struct Transfer<'a> {
    d: &'a Ctx,
    /// The base image's fingerprint, when this server has it.
    base: Option<&'a str>,
    /// The offer, its snapshots those to receive.
    offer: &'a MigrationHeader,
    features: Features,
    /// bivy's transfer the volumes come by (`proto::XFER_*`); none: rsync sessions.
    xfer: Option<&'static str>,
    /// What a snapshot record takes when the source sends names only.
    config: &'a api::StringMap,
    refresh: bool,
    progress: &'a Progress<'a>,
}

impl Transfer<'_> {
    fn run(
        &self,
        pool: &Arc<Pool>,
        tmp: &Path,
        volume: &str,
        revert: &mut Revert,
        fs: &mut Ws,
        criu: Option<&mut Ws>,
    ) -> Result<Received> {
        let Transfer {
            d,
            base,
            offer,
            features,
            xfer,
            config,
            refresh,
            progress,
        } = *self;
        let seen = |n: u64| progress.add(n);
        let info = receive_index_header(offer, fs, refresh)?;
        let records = snapshot_records(offer, &info, config);
        check_snapshot_records(&records, d.host.ncpus, &d.db.lock().expect("db lock").data)?;
        // Each received snapshot gets a volume of its own (writable until `create_now` is done).
        let snapshot_volume = |revert: &mut Revert, rec: &mut SnapshotRecord| {
            rec.volume = crate::instance::operations::uuid();
            let dst = pool.snapshot(volume, &rec.volume);
            let p = pool.clone();
            let undo = dst.clone();
            revert.add(move || {
                let _ = p.driver.delete_volume(&undo);
            });
            dst
        };
        let mut snapshots = Vec::new();
        if xfer.is_some() {
            if let Some(n) = offer.bivy_size.filter(|n| *n > 0) {
                progress.expect(n as u64);
            }
        }
        match xfer {
            Some(proto::XFER_STREAM) => {
                for mut rec in records {
                    let dst = snapshot_volume(revert, &mut rec);
                    let mut r = wire::StreamReader::new(&mut fs.rx, &seen);
                    pool.driver
                        .receive(&dst, &mut r)
                        .and_then(|()| r.finish())
                        .map_err(|e| {
                            Error::Host(format!("receiving snapshot {:?}: {e}", rec.name))
                        })?;
                    snapshots.push(rec);
                }
                let mut r = wire::StreamReader::new(&mut fs.rx, &seen);
                crate::storage::unpack_volume(tmp, &mut r)
                    .and_then(|()| r.finish())
                    .map_err(|e| Error::Host(format!("receiving the instance: {e}")))?;
            }
            Some(_) => {
                // btrfs: every stream received read-only into a directory of the pool's (each
                // names the one before as its parent, which `btrfs receive -C` finds only
                // there), then each made writable and moved into place.
                let recv = pool.container(&format!("{volume}.receive"));
                crate::util::fs::create_dir_mode(&recv, 0o700)
                    .map_err(|e| Error::Host(format!("{}: {e}", recv.display())))?;
                let res = (|| -> Result<()> {
                    let mut receive = |what: &str| -> Result<std::path::PathBuf> {
                        let mut r = wire::StreamReader::new(&mut fs.rx, &seen);
                        crate::storage::btrfs::receive(&recv, &mut r)
                            .and_then(|sub| r.finish().map(|()| sub))
                            .map_err(|e| Error::Host(format!("receiving {what}: {e}")))
                    };
                    let mut got = Vec::new();
                    for rec in &records {
                        got.push(receive(&format!("snapshot {:?}", rec.name))?);
                    }
                    let main = receive("the instance")?;
                    // Writable (a read-only subvolume cannot move to another directory: its
                    // `..` changes); `create_now` makes the snapshots read-only again.
                    let place = |sub: &Path, dst: &Path| -> Result<()> {
                        let err =
                            |e: std::io::Error| Error::Host(format!("{}: {e}", dst.display()));
                        crate::storage::btrfs::make_writable(sub).map_err(err)?;
                        if let Some(parent) = dst.parent() {
                            crate::storage::make_volume_parent(parent).map_err(err)?;
                        }
                        std::fs::rename(sub, dst).map_err(err)
                    };
                    for (mut rec, sub) in records.into_iter().zip(got) {
                        let dst = snapshot_volume(revert, &mut rec);
                        place(&sub, &dst)?;
                        snapshots.push(rec);
                    }
                    // The instance's volume was made empty by the create.
                    pool.driver
                        .delete_volume(tmp)
                        .map_err(|e| Error::Host(format!("{}: {e}", tmp.display())))?;
                    place(&main, tmp)
                })();
                for e in std::fs::read_dir(&recv).into_iter().flatten().flatten() {
                    let _ = pool.driver.delete_volume(&e.path());
                }
                let _ = std::fs::remove_dir(&recv);
                res?;
            }
            None => {
                if let Some(fp) = base.filter(|_| features.delete) {
                    // The new volume starts as a clone of the image's (made empty by the
                    // create): rsync sends what differs from it (and deletes what the source
                    // does not have, hence only with the `delete` feature).
                    eprintln!("bivy: receiving onto a clone of base image {fp}");
                    let image = crate::instance::pools::image_volume(d, pool, fp)?;
                    pool.driver
                        .delete_volume(tmp)
                        .and_then(|()| pool.driver.clone_volume(&image, tmp, false))
                        .map_err(|e| Error::Host(format!("seeding from the base image: {e}")))?;
                }
                let mut sessions = rsync::Sessions::default();
                for mut rec in records {
                    rsync::recv(tmp, fs, features, sessions.begin(), &seen)?;
                    let dst = snapshot_volume(revert, &mut rec);
                    pool.driver
                        .clone_volume(tmp, &dst, false)
                        .map_err(|e| Error::Host(format!("making snapshot {:?}: {e}", rec.name)))?;
                    snapshots.push(rec);
                }
                rsync::recv(tmp, fs, features, sessions.begin(), &seen)?;
                if offer.criu == Some(proto::CRIU_NONE) {
                    // The source runs: a final pass with it frozen follows.
                    rsync::recv(tmp, fs, features, sessions.begin(), &seen)?;
                }
            }
        }
        let criu_received = criu.is_some();
        if let Some(criu) = criu {
            // The checkpoint, into the instance's state directory (a btrfs stream brought the
            // source's along: this one replaces it).
            let state = tmp.join(crate::instance::stateful::STATE_DIR);
            if state.exists() {
                std::fs::remove_dir_all(&state)
                    .map_err(|e| Error::Host(format!("{}: {e}", state.display())))?;
            }
            let mut r = wire::StreamReader::new(&mut criu.rx, &seen);
            crate::storage::receive_tree(&state, &mut r)
                .and_then(|()| r.finish())
                .map_err(|e| Error::Host(format!("receiving the checkpoint: {e}")))?;
        }
        // On disk before the source is told of success: `move` deletes the source then.
        std::fs::File::open(tmp)
            .and_then(|f| rustix::fs::syncfs(&f).map_err(std::io::Error::from))
            .map_err(|e| Error::Host(format!("syncing the received volumes: {e}")))?;
        let disk_idmap = serde_json::to_string(
            &offer
                .idmap
                .iter()
                .map(|m| {
                    serde_json::json!({"Isuid": m.isuid, "Isgid": m.isgid, "Hostid": m.hostid,
                    "Nsid": m.nsid, "Maprange": m.maprange})
                })
                .collect::<Vec<_>>(),
        )
        .expect("JSON");
        Ok(Received {
            snapshots,
            disk_idmap,
            stateful: criu_received,
        })
    }
}

/// The most of an index header the target takes.
const INDEX_HEADER_MAX: usize = 8 << 20;

/// A buffer that refuses to grow past [`INDEX_HEADER_MAX`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + b.len() > INDEX_HEADER_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("over {} MiB", INDEX_HEADER_MAX >> 20),
            ));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// LXD's index header, when both speak it (else `Null`), answered with `refresh`.
pub(super) fn receive_index_header(
    offer: &MigrationHeader,
    fs: &mut Ws,
    refresh: bool,
) -> Result<serde_json::Value> {
    if offer.index_header_version.unwrap_or(0) < 1 {
        return Ok(serde_json::Value::Null);
    }
    // LXD's headers are a few KB per snapshot; a peer sending more is refused, not buffered.
    let mut buf = Capped(Vec::new());
    wire::read_stream(&mut fs.rx, &mut buf)
        .map_err(|e| Error::Host(format!("reading the migration index header: {e}")))?;
    let info = serde_json::from_slice(&buf.0)
        .map_err(|e| Error::Host(format!("decoding the migration index header: {e}")))?;
    let answer = serde_json::json!({"StatusCode": 200, "Error": "", "Refresh": refresh});
    let body = serde_json::to_vec(&answer).expect("JSON");
    wire::write_stream(&fs.tx, &mut body.as_slice())
        .map_err(|e| Error::Host(format!("answering the migration index header: {e}")))?;
    Ok(info)
}

/// What a source says of its snapshots is checked as anything made here is (LXD creates each
/// through `CreateInternal`, with its checks): a name the API takes, once; config keys and
/// devices that are valid. A bad one fails the migration before anything is received.
fn check_snapshot_records(
    records: &[SnapshotRecord],
    ncpus: usize,
    data: &crate::instance::db::Data,
) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for rec in records {
        crate::instance::snapshot_names::validate_snapshot_name(&rec.name)
            .map_err(|e| Error::Invalid(format!("The source's snapshot: {e}")))?;
        if !seen.insert(rec.name.as_str()) {
            return Err(Error::Invalid(format!(
                "The source names snapshot {:?} twice",
                rec.name
            )));
        }
        let bad = |e: Error| Error::Invalid(format!("The source's snapshot {:?}: {e}", rec.name));
        crate::instance::config::validate_config(
            &crate::instance::config::user_keys(&rec.config),
            &api::StringMap::new(),
            ncpus,
        )
        .map_err(bad)?;
        crate::instance::devices::validate_devices(&rec.devices, data).map_err(bad)?;
    }
    Ok(())
}

/// The snapshots' records from the offer's protobufs, with the index header's description and
/// exact creation time where it has them (an offer of names only, from an old LXD, gives each
/// the instance's config, as LXD does).
fn snapshot_records(
    offer: &MigrationHeader,
    info: &serde_json::Value,
    config: &api::StringMap,
) -> Vec<SnapshotRecord> {
    let extra = |name: &str, key: &str| {
        info["config"]["Snapshots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .and_then(|s| s[key].as_str())
            .map(String::from)
    };
    let date = |v: Option<i64>| match v {
        Some(s) if s > 0 => time::format(s, 0),
        _ => api::GO_ZERO_TIME.to_string(),
    };
    let legacy = offer.snapshots.len() != offer.snapshot_names.len();
    offer
        .snapshot_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let p = if legacy { None } else { offer.snapshots.get(i) };
            let mut rec = SnapshotRecord {
                name: name.clone(),
                description: extra(name, "description").unwrap_or_default(),
                expires_at: api::GO_ZERO_TIME.into(),
                ..Default::default()
            };
            match p {
                Some(p) => {
                    rec.architecture = super::arch_name(p.architecture).to_string();
                    let pairs = |cs: &[super::proto::Config]| {
                        let kv = cs.iter().map(|c| (c.key.clone(), c.value.clone()));
                        crate::util::sort::map(kv)
                    };
                    rec.config = pairs(&p.local_config);
                    rec.devices = crate::util::sort::map(
                        p.local_devices
                            .iter()
                            .map(|d| (d.name.clone(), pairs(&d.config))),
                    );
                    rec.profiles = p.profiles.clone();
                    rec.ephemeral = p.ephemeral;
                    rec.stateful = p.stateful;
                    rec.created_at =
                        extra(name, "created_at").unwrap_or_else(|| date(p.creation_date));
                    rec.expires_at = date(p.expiry_date);
                }
                None => {
                    rec.config = config.clone();
                    rec.created_at = time::now();
                }
            }
            rec
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn received_snapshots_are_checked_as_local_ones() {
        let data = crate::instance::db::Data::default();
        let rec = |name: &str, cfg: &[(&str, &str)]| SnapshotRecord {
            name: name.into(),
            config: cfg
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let check = |recs: &[SnapshotRecord]| check_snapshot_records(recs, 2, &data);
        assert!(check(&[rec("s0", &[("user.x", "1")]), rec("s1", &[])]).is_ok());
        for bad in ["a/b", "../../evil", "", " ", "..", "x y"] {
            assert!(check(&[rec(bad, &[])]).is_err(), "{bad:?}");
        }
        assert!(check(&[rec("s0", &[]), rec("s0", &[])]).is_err());
        for cfg in [
            ("bogus.key", "x"),
            ("limits.memory", "notanumber"),
            ("raw.lxc", "x"),
        ] {
            assert!(check(&[rec("s0", &[cfg])]).is_err(), "{cfg:?}");
        }
        let mut dev = rec("s0", &[]);
        dev.devices.insert(
            "d".into(),
            [("type", "nonsense")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        assert!(check(&[dev]).is_err());
    }

    use super::*;

    #[test]
    fn progress_shows_a_percentage_when_the_size_is_known() {
        let seen = Mutex::new(Vec::<String>::new());
        let report = |s: String| seen.lock().unwrap().push(s);
        let p = Progress::new(&report);
        p.expect(1000);
        p.add(420);
        p.show(420, false);
        p.add(700); // past the estimate: still not done
        p.show(1120, false);
        p.finish();
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("42% ("), "{got:?}");
        assert!(got[1].starts_with("99% ("), "{got:?}");
        assert!(
            got[2].starts_with("100% (") && got[2].ends_with("/s)"),
            "{got:?}"
        );
    }

    #[test]
    fn progress_reports_at_most_once_a_second_and_at_the_end() {
        let seen = Mutex::new(Vec::<String>::new());
        let report = |s: String| seen.lock().unwrap().push(s);
        let p = Progress::new(&report);
        p.add(1500);
        p.add(500);
        assert!(
            seen.lock().unwrap().is_empty(),
            "not within the first second"
        );
        p.finish();
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("2.00kB ("), "{got:?}");
        assert!(got[0].ends_with("/s)"), "{got:?}");
    }
}
