//! The source side (`POST /1.0/instances/NAME` or `…/snapshots/SNAP` with `migration: true`): a
//! websocket operation whose metadata holds one secret per stream (`control`, `fs`). Each secret
//! admits one websocket, once (`instance::operations`); the operation fails when the target has
//! not connected both within 10 s, and can be cancelled (lxc cancels it when the target fails).
//!
//! Then, as LXD's `migrationSourceWs.Do`: send the offer (rsync, the on-disk id map, the
//! snapshots and their records, index header version 1), read the target's answer, send the
//! index header on `fs` when the target asked for it, one rsync session per snapshot and one for
//! the instance (two for a running instance copied `--stateless`: the second one frozen), then
//! wait for the target's `MigrationControl`. Nothing on this side changes; the instance's busy
//! mark (no delete or restore underneath the transfer) ends once its files are sent, so that
//! `lxc move` can delete it as soon as the target reports success.
//!
//! A live migration (`live`, a running instance with `migration.stateful=true`, CRIU here) has a
//! third stream, `criu`: the snapshots go first, then the instance is dumped (it stops with its
//! state saved), its volume goes on `fs` and the checkpoint on `criu`; the instance stays busy
//! until the target has restored it. Any failure after the dump starts it again from the
//! checkpoint ([`Job::resume`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::proto::{self, MigrationControl, MigrationHeader};
use super::rsync::{self, Features};
use super::wire::{self, Ws};
use crate::api::{self, status};
use crate::instance::db::{InstanceRecord, SnapshotRecord};
use crate::instance::idmap;
use crate::instance::interim::with_consistent;
use crate::instance::operations::{Class, Op};
use crate::instance::view::{record, resources, state_of};
use crate::instance::{Ctx, Error, Result};
use crate::runtime::State;
use crate::util::time;

/// A running instance that cannot be moved live: LXD's opening words, why, and what to do
/// instead (the error's kind kept: no CRIU here is 501).
fn live_refused(e: Error) -> Error {
    let say = |m: String| {
        format!(
            "Unable to perform container live migration: {m} (or copy or move it with \
             --stateless, or stop it first)"
        )
    };
    match e {
        Error::NotSupported(m) => Error::NotSupported(say(m)),
        e => Error::Invalid(say(e.message())),
    }
}

/// Start serving `name` (or its snapshot `snap`) to a target. The operation to answer with.
pub fn start(d: &Ctx, name: &str, snap: Option<&str>, req: &api::InstancePost) -> Result<Arc<Op>> {
    let rec = record(d, name)?;
    let target = match req.target.as_ref().filter(|t| !t.is_null()) {
        Some(t) => Some(Target::parse(t)?),
        None => None,
    };
    let snapshot = match snap {
        Some(s) => Some(
            rec.snapshot(s)
                .cloned()
                .ok_or_else(|| Error::NotFound("Snapshot not found".into()))?,
        ),
        None => None,
    };
    let running = snap.is_none() && matches!(state_of(d, name)?, State::Running { .. });
    let live = req.live && running;
    if live {
        crate::instance::stateful::check(d, name, &rec, "Live migration").map_err(live_refused)?;
    }
    if let Some(t) = &target {
        if t.criu.is_some() != live {
            return Err(Error::Invalid(
                "Invalid migration target: a criu secret exactly when the migration is live".into(),
            ));
        }
    }
    d.busy_insert(name, "migrate")?;
    let job = Job {
        d: d.self_arc(),
        name: name.to_string(),
        rec: InstanceRecord::clone(&rec),
        snapshot,
        running,
        live,
        dumped_at: None,
        instance_only: req.instance_only || req.container_only || snap.is_some(),
        allow_inconsistent: req.allow_inconsistent,
        busy: true,
        streams: Arc::new(Mutex::new(Vec::new())),
    };
    let streams = job.streams.clone();
    let push = target.is_some();
    Ok(serve(
        d,
        "Migrating instance",
        resources(name),
        (live, push),
        streams,
        move |op, secrets| match target {
            Some(t) => job.push(&t),
            None => job.run(op, secrets),
        },
    ))
}

/// A source's operation. Push (`how.1`): a task the client waits for, in which `run` dials the
/// target's operation. Pull: a websocket operation whose metadata holds one secret per stream
/// (`control`, `fs`, and `criu` when live: `how.0`), open to callers without a trusted
/// certificate (the target dials in without one: the secrets are its credential), `run` given
/// the secrets in stream order. Cancelling it (lxc does when the target failed) fails it and
/// shuts the websockets in `streams`.
pub(super) fn serve(
    d: &Ctx,
    description: &str,
    resources: std::collections::BTreeMap<String, Vec<String>>,
    how: (bool, bool),
    streams: Arc<Mutex<Vec<crate::http::ws::Sender>>>,
    run: impl FnOnce(&Op, &[String]) -> Result<()> + Send + 'static,
) -> Arc<Op> {
    let (live, push) = how;
    let op = if push {
        d.ops.start(
            Class::Task,
            description,
            resources,
            None,
            vec![],
            move |op| run(&op, &[]),
        )
    } else {
        let secrets = super::secrets(live);
        let order: Vec<String> = super::streams(live)
            .iter()
            .map(|k| secrets[*k].clone())
            .collect();
        let op = d.ops.start(
            Class::Websocket,
            description,
            resources,
            Some(serde_json::to_value(&secrets).unwrap_or_default()),
            order.clone(),
            move |op| run(&op, &order),
        );
        op.open_to_untrusted();
        op
    };
    let weak = Arc::downgrade(&op);
    op.set_cancel(Box::new(move || {
        for s in streams.lock().expect("streams lock").iter() {
            s.shutdown();
        }
        if let Some(op) = weak.upgrade() {
            op.set_status(status::CANCELLED, "Operation cancelled".into());
        }
    }));
    op
}

/// Push mode's `target`: the target's operation, its certificate and its secrets
/// (`{"certificate": PEM, "operation": "https://…/1.0/operations/ID", "secrets": {…}}`).
pub(super) struct Target {
    pub operation: String,
    pub cert: Vec<u8>,
    pub control: String,
    pub fs: String,
    /// Live migration's third stream.
    pub criu: Option<String>,
}

impl Target {
    pub(super) fn parse(v: &serde_json::Value) -> Result<Target> {
        let bad = |what: &str| Error::Invalid(format!("Invalid migration target: {what}"));
        let field = |k: &str| v[k].as_str().unwrap_or_default();
        let secret = |k: &str| v["secrets"][k].as_str().map(String::from);
        let cert = crate::tls::pem_to_der(field("certificate"))
            .ok_or_else(|| bad("the certificate is not a PEM certificate"))?;
        wire::check_url(field("operation"))?;
        Ok(Target {
            operation: field("operation").to_string(),
            cert,
            control: secret("control").ok_or_else(|| bad("missing control secret"))?,
            fs: secret("fs").ok_or_else(|| bad("missing fs secret"))?,
            criu: secret("criu"),
        })
    }
}

/// One migration's state on the source.
struct Job {
    d: Arc<Ctx>,
    name: String,
    rec: InstanceRecord,
    /// The snapshot being sent as an instance, if that is what the target asked for.
    snapshot: Option<SnapshotRecord>,
    running: bool,
    /// A live migration: the instance is dumped (and stops) before its volume is sent, its
    /// checkpoint goes on the `criu` stream.
    live: bool,
    /// When this job dumped the instance (it is stopped with its state): any failure from then
    /// on starts it again from that state.
    dumped_at: Option<std::time::Instant>,
    instance_only: bool,
    allow_inconsistent: bool,
    /// Whether this job still holds the instance's busy mark.
    busy: bool,
    /// The websockets' senders, for the cancel hook.
    streams: Arc<Mutex<Vec<crate::http::ws::Sender>>>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.release();
    }
}

impl Job {
    fn release(&mut self) {
        if std::mem::take(&mut self.busy) {
            self.d.busy.lock().expect("busy lock").remove(&self.name);
        }
    }

    /// Pull: the target (or the client relaying) connects to this operation's websockets
    /// (`secrets`: control, fs, and criu when live).
    fn run(self, op: &Op, secrets: &[String]) -> Result<()> {
        let mut socks = wire::wait_for(op, secrets)?.into_iter();
        let (ctl, fsw) = (socks.next().expect("control"), socks.next().expect("fs"));
        self.drive(ctl, fsw, socks.next())
    }

    /// Push: dial the target's operation.
    fn push(self, t: &Target) -> Result<()> {
        let ctl = wire::dial(&t.operation, &t.control, &t.cert)?;
        let fsw = wire::dial(&t.operation, &t.fs, &t.cert)?;
        let criu = match &t.criu {
            Some(s) => Some(wire::dial(&t.operation, s, &t.cert)?),
            None => None,
        };
        self.drive(ctl, fsw, criu)
    }

    fn drive(mut self, mut ctl: Ws, mut fsw: Ws, mut criu: Option<Ws>) -> Result<()> {
        {
            let mut streams = self.streams.lock().expect("streams lock");
            streams.extend([ctl.tx.clone(), fsw.tx.clone()]);
            streams.extend(criu.as_ref().map(|w| w.tx.clone()));
        }
        let r = self.transfer(&mut ctl, &mut fsw, criu.as_mut());
        if r.is_ok() {
            // Let go before the streams close: the client deletes a moved instance then.
            self.release();
        }
        if let Err(e) = &r {
            let abort = MigrationControl {
                success: false,
                message: Some(e.to_string()),
            };
            let _ = wire::send_msg(&ctl.tx, &abort.encode());
        }
        for w in [Some(&ctl), Some(&fsw), criu.as_ref()]
            .into_iter()
            .flatten()
        {
            w.tx.end();
        }
        match r {
            Err(e) if self.dumped_at.is_some() => Err(self.resume(e)),
            r => r,
        }
    }

    /// After a failure past the dump: start the instance again from its checkpoint, so that it
    /// runs on as before; `e` and what became of the instance. The job still holds the busy
    /// mark (a live migration keeps it until the target has answered).
    fn resume(&mut self, e: Error) -> Error {
        let r = crate::instance::lifecycle::start_with(&self.d, &self.name, true);
        self.release();
        match r {
            Ok(()) => Error::Host(format!(
                "{e} (the instance was resumed here from its checkpoint)"
            )),
            Err(r) => Error::Host(format!(
                "{e}; resuming the instance from its checkpoint failed too: {r} (it is stopped \
                 with its state saved)"
            )),
        }
    }

    fn config(&self) -> &api::StringMap {
        self.snapshot
            .as_ref()
            .map_or(&self.rec.config, |s| &s.config)
    }

    fn pool(&self) -> Result<Arc<crate::storage::Pool>> {
        crate::instance::pools::usable_pool(&self.d, &self.rec.pool)
    }

    /// The offer: rsync with every feature, the on-disk id map, the snapshots.
    fn offer(&self) -> MigrationHeader {
        let disk = self
            .config()
            .get("volatile.last_state.idmap")
            .map_or("[]", String::as_str);
        let mut idmap = Vec::new();
        if let Some(m) = idmap::Map::from_volatile(disk) {
            for (isuid, list) in [(true, &m.uid), (false, &m.gid)] {
                for e in list {
                    idmap.push(proto::IdMap {
                        isuid,
                        isgid: !isuid,
                        hostid: e.hostid as i32,
                        nsid: e.nsid as i32,
                        maprange: e.count as i32,
                    });
                }
            }
        }
        let snaps: &[SnapshotRecord] = if self.instance_only {
            &[]
        } else {
            &self.rec.snapshots
        };
        MigrationHeader {
            fs: proto::FS_RSYNC,
            criu: match (self.live, self.running) {
                (true, _) => Some(proto::CRIU_RSYNC),
                (false, true) => Some(proto::CRIU_NONE),
                (false, false) => None,
            },
            idmap,
            snapshot_names: snaps.iter().map(|s| s.name.clone()).collect(),
            snapshots: snaps.iter().map(snapshot_proto).collect(),
            predump: Some(false),
            rsync_features: Some(proto::RsyncFeatures::all()),
            index_header_version: Some(super::INDEX_HEADER_VERSION),
            bivy_transfer: super::offered_transfers(),
            ..Default::default()
        }
    }

    /// The volumes to send, oldest snapshot first, the instance (or the snapshot sent as one)
    /// last.
    fn volumes(&self, pool: &crate::storage::Pool, send: &[String]) -> Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for n in send {
            let s = self
                .rec
                .snapshot(n)
                .ok_or_else(|| Error::NotFound(format!("Snapshot {n:?} not found")))?;
            v.push(pool.snapshot(&self.rec.volume, &s.volume));
        }
        v.push(match &self.snapshot {
            Some(s) => pool.snapshot(&self.rec.volume, &s.volume),
            None => pool.container(&self.rec.volume),
        });
        Ok(v)
    }

    /// Whether the volumes can go as btrfs send streams: a btrfs pool, the `btrfs` program, files
    /// in container ids (the target's unshift would have to write into read-only subvolumes),
    /// no subvolume nested in them (send leaves those out).
    fn btrfs_sendable(&self, pool: &crate::storage::Pool, vols: &[PathBuf]) -> bool {
        let plain = |c: &api::StringMap| {
            idmap::Map::from_volatile(
                c.get("volatile.last_state.idmap")
                    .map_or("[]", String::as_str),
            )
            .is_none_or(|m| m.uid.is_empty() && m.gid.is_empty())
        };
        pool.driver.name() == "btrfs"
            && crate::storage::btrfs::program("").is_ok()
            && plain(self.config())
            && self.rec.snapshots.iter().all(|s| plain(&s.config))
            && vols
                .iter()
                .all(|v| matches!(crate::storage::btrfs::has_nested_subvolume(v), Ok(false)))
    }

    /// Run `f` on a read-only snapshot of the instance's volume `main` (taken atomically; removed
    /// after, and a killed daemon's at its next start, as any snapshot volume no record names).
    fn readonly_view(
        &self,
        pool: &crate::storage::Pool,
        main: &std::path::Path,
        f: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        let view = pool.snapshot(
            &self.rec.volume,
            &format!("migration-{}", crate::instance::operations::uuid()),
        );
        pool.driver
            .clone_volume(main, &view, true)
            .map_err(|e| Error::Host(format!("snapshotting {}: {e}", main.display())))?;
        let r = f(&view);
        if let Err(e) = pool.driver.delete_volume(&view) {
            eprintln!("bivy: {}: {e}", view.display());
        }
        r
    }

    /// Run `f` on a consistent view of the instance's volume `main`: itself when the instance is
    /// stopped (or `allow_inconsistent`), else a read-only snapshot of it where the pool makes
    /// them atomically (removed after; a killed daemon's is removed at its next start, as any
    /// snapshot volume no record names), else itself with the instance frozen.
    fn consistent_view(
        &self,
        pool: &crate::storage::Pool,
        main: &std::path::Path,
        f: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        if self.allow_inconsistent || self.snapshot.is_some() {
            return f(main);
        }
        if self.running && pool.driver.atomic_clone() {
            return self.readonly_view(pool, main, f);
        }
        with_consistent(&self.d, &self.name, pool, || f(main))
    }

    /// LXD's index header: `{"config": {"Container": …, "Snapshots": […]}}` (backup.yaml's
    /// fields, Go names).
    fn index_header(&self, sent: &[String]) -> serde_json::Value {
        let (arch, config, devices, profiles, ephemeral, description, created) =
            match &self.snapshot {
                Some(s) => (
                    &s.architecture,
                    &s.config,
                    &s.devices,
                    &s.profiles,
                    s.ephemeral,
                    &s.description,
                    &s.created_at,
                ),
                None => (
                    &self.rec.architecture,
                    &self.rec.config,
                    &self.rec.devices,
                    &self.rec.profiles,
                    self.rec.ephemeral,
                    &self.rec.description,
                    &self.rec.created_at,
                ),
            };
        let snaps: Vec<serde_json::Value> = self
            .rec
            .snapshots
            .iter()
            .filter(|s| sent.contains(&s.name))
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "architecture": s.architecture, "config": s.config,
                    "devices": s.devices, "profiles": s.profiles, "ephemeral": s.ephemeral,
                    "description": s.description, "created_at": s.created_at,
                    "expires_at": s.expires_at, "stateful": s.stateful,
                    "last_used_at": api::GO_ZERO_TIME,
                })
            })
            .collect();
        serde_json::json!({"config": {
            "Container": {
                "name": self.name, "architecture": arch, "config": config, "devices": devices,
                "profiles": profiles, "ephemeral": ephemeral, "description": description,
                "created_at": created, "type": "container", "stateful": false,
            },
            "Snapshots": snaps,
        }})
    }

    fn transfer(&mut self, ctl: &mut Ws, fs: &mut Ws, criu: Option<&mut Ws>) -> Result<()> {
        let pool = self.pool()?;
        let mut offer = self.offer();
        if !offer.bivy_transfer.is_empty() {
            let all = self.volumes(&pool, &offer.snapshot_names)?;
            if !self.btrfs_sendable(&pool, &all) {
                offer.bivy_transfer.retain(|t| t != proto::XFER_BTRFS);
            }
            // For the target's percentage: what a stream of every volume weighs.
            offer.bivy_size = Some(
                all.iter()
                    .map(|v| crate::storage::stream_size(v))
                    .sum::<u64>() as i64,
            );
        }
        wire::send_msg(&ctl.tx, &offer.encode())?;
        let resp = MigrationHeader::decode(&wire::recv_msg(&mut ctl.rx)?)
            .map_err(|e| Error::Host(e.to_string()))?;
        let bivy = match resp.bivy_transfer.first() {
            Some(t) if offer.bivy_transfer.contains(t) => Some(t.as_str()),
            Some(t) => {
                return Err(Error::Host(format!(
                    "the target chose a transfer that was not offered: {t:?}"
                )))
            }
            None => None,
        };
        if self.live && (resp.criu != Some(proto::CRIU_RSYNC) || bivy.is_none()) {
            return Err(Error::not_yet(
                "live migration to a server other than bivy (the target did not accept bivy's \
                 checkpoint transfer); copy or move it with --stateless",
            ));
        }
        if bivy.is_none() && resp.fs != proto::FS_RSYNC {
            return Err(Error::not_yet(&format!(
                "migration type {} (bivy sends only rsync)",
                resp.fs
            )));
        }
        let features = Features::agreed(&resp);
        if bivy.is_none() {
            rsync::program()?;
        }
        let send: Vec<String> = if resp.refresh == Some(true) {
            let want: Vec<String> = resp
                .snapshot_names
                .iter()
                .filter(|n| offer.snapshot_names.contains(n))
                .cloned()
                .collect();
            want
        } else {
            offer.snapshot_names.clone()
        };
        if resp.index_header_version.unwrap_or(0) >= 1 {
            send_index_header(fs, &self.index_header(&send))?;
        }
        let criu = match (self.live, criu) {
            (true, None) => return Err(Error::Host("live migration without a criu stream".into())),
            (_, criu) => criu,
        };
        let mut vols = self.volumes(&pool, &send)?;
        let main = vols.pop().expect("the instance's volume");
        // Live: the snapshots go while the instance runs, then it is dumped and its volume,
        // stopped, goes as it is.
        match bivy {
            Some(proto::XFER_STREAM) => {
                for v in &vols {
                    send_stream(v, fs)?;
                }
                if self.live {
                    self.dump()?;
                    send_stream(&main, fs)?;
                } else {
                    // One pass, consistent: from an atomic snapshot, or frozen.
                    self.consistent_view(&pool, &main, |v| send_stream(v, fs))?;
                }
            }
            Some(proto::XFER_BTRFS) => {
                // Each snapshot from the one before it; the instance from the newest.
                let mut parent: Option<&std::path::Path> = None;
                for v in &vols {
                    send_btrfs(v, parent, fs)?;
                    parent = Some(v);
                }
                if self.snapshot.is_some() {
                    send_btrfs(&main, parent, fs)?;
                } else {
                    if self.live {
                        self.dump()?;
                    }
                    // `btrfs send` takes read-only subvolumes: a snapshot of the instance's.
                    self.readonly_view(&pool, &main, |v| send_btrfs(v, parent, fs))?;
                }
            }
            Some(t) => return Err(Error::Host(format!("unknown transfer {t:?}"))),
            None => {
                for v in &vols {
                    rsync::send(v, fs, features)?;
                }
                let final_sync = resp.criu == Some(proto::CRIU_NONE);
                if final_sync {
                    // The first pass with the instance running, the second (small) one frozen.
                    rsync::send(&main, fs, features)?;
                }
                if self.allow_inconsistent || self.snapshot.is_some() {
                    rsync::send(&main, fs, features)?;
                } else {
                    with_consistent(&self.d, &self.name, &pool, || {
                        rsync::send(&main, fs, features)
                    })?;
                }
            }
        }
        if let Some(criu) = criu {
            // The checkpoint; the target restores it before it answers, and until then the
            // instance stays here, busy, stopped with its state (a failure resumes it:
            // [`Job::resume`]).
            let state = main.join(crate::instance::stateful::STATE_DIR);
            let mut w = wire::StreamWriter::new(&criu.tx);
            crate::storage::send_tree(&state, &mut w)
                .and_then(|()| w.finish())
                .map_err(|e| Error::Host(format!("sending the checkpoint: {e}")))?;
            wait_result(ctl)?;
            // Moved: it runs on the target. Here it stays stopped with its saved state (lxc move
            // deletes it next; after a copy, `start` resumes this one too).
            if let Some(t) = self.dumped_at.take() {
                eprintln!(
                    "bivy: {}: live migration done, {} ms after the dump began",
                    self.name,
                    t.elapsed().as_millis()
                );
            }
            return Ok(());
        }
        self.release();
        wait_result(ctl)
    }

    /// A live migration's dump: the instance stops with its state saved in its volume
    /// (`stop --stateful`); from now on a failure resumes it.
    fn dump(&mut self) -> Result<()> {
        let t = std::time::Instant::now();
        crate::instance::stateful::stop(&self.d, &self.name)?;
        self.dumped_at = Some(t);
        eprintln!(
            "bivy: {}: dumped for a live migration in {} ms",
            self.name,
            t.elapsed().as_millis()
        );
        Ok(())
    }
}

/// Send LXD's index header on `fs` and check the target's answer (`StatusCode` 200).
pub(super) fn send_index_header(fs: &mut Ws, header: &serde_json::Value) -> Result<()> {
    let body = serde_json::to_vec(header).expect("JSON");
    wire::write_stream(&fs.tx, &mut body.as_slice())
        .map_err(|e| Error::Host(format!("sending the migration index header: {e}")))?;
    let mut answer = Vec::new();
    wire::read_stream(&mut fs.rx, &mut answer)
        .map_err(|e| Error::Host(format!("reading the index header answer: {e}")))?;
    let a: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| Error::Host(format!("decoding the migration index header answer: {e}")))?;
    if a["StatusCode"].as_i64() != Some(200) {
        return Err(Error::Host(format!(
            "the target refused the migration: {}",
            a["Error"].as_str().unwrap_or("")
        )));
    }
    Ok(())
}

/// The target's `MigrationControl` at the end: its success, or its error.
pub(super) fn wait_result(ctl: &mut Ws) -> Result<()> {
    let done = MigrationControl::decode(&wire::recv_msg(&mut ctl.rx)?)
        .map_err(|e| Error::Host(e.to_string()))?;
    if !done.success {
        return Err(Error::Host(
            done.message.unwrap_or_else(|| "migration failed".into()),
        ));
    }
    Ok(())
}

/// Send volume `vol` on `fs` as one byte stream ([`proto::XFER_STREAM`]). A failure sends no
/// barrier: the target never takes a partial volume for a whole one.
fn send_stream(vol: &std::path::Path, fs: &mut Ws) -> Result<()> {
    send_by(fs, vol, |w| crate::storage::send_volume(vol, w))
}

/// Send what `f` writes about `what` on `fs` as one byte stream; no barrier on failure.
pub(super) fn send_by(
    fs: &mut Ws,
    what: &std::path::Path,
    f: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut w = wire::StreamWriter::new(&fs.tx);
    f(&mut w)
        .and_then(|()| w.finish())
        .map_err(|e| Error::Host(format!("sending {}: {e}", what.display())))
}

/// Send the read-only subvolume `vol` on `fs` as one `btrfs send` stream
/// ([`proto::XFER_BTRFS`]), incremental from `parent` when given; no barrier on failure.
fn send_btrfs(vol: &std::path::Path, parent: Option<&std::path::Path>, fs: &mut Ws) -> Result<()> {
    let mut w = wire::StreamWriter::new(&fs.tx);
    crate::storage::btrfs::send(vol, parent, &mut w)
        .and_then(|()| w.finish())
        .map_err(|e| Error::Host(e.to_string()))
}

/// A snapshot's record as LXD's protobuf carries it.
fn snapshot_proto(s: &SnapshotRecord) -> proto::Snapshot {
    let secs = |t: &str| {
        if t == api::ZERO_TIME || t.is_empty() {
            time::parse_secs(api::GO_ZERO_TIME)
        } else {
            time::parse_secs(t)
        }
    };
    proto::Snapshot {
        name: s.name.clone(),
        local_config: proto::configs(&s.config),
        profiles: s.profiles.clone(),
        ephemeral: s.ephemeral,
        local_devices: s
            .devices
            .iter()
            .map(|(n, c)| proto::Device {
                name: n.clone(),
                config: proto::configs(c),
            })
            .collect(),
        architecture: super::arch_id(&s.architecture),
        stateful: s.stateful,
        creation_date: secs(&s.created_at),
        last_used_date: secs(api::GO_ZERO_TIME),
        expiry_date: secs(&s.expires_at),
    }
}
