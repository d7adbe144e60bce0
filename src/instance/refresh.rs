//! Refreshing an existing, stopped instance from another server (`lxc copy --refresh` on the
//! target): which snapshots to receive and which of the target's to delete ([`compare`], LXD
//! 5.0.2's `CompareSnapshots`: by name and creation date in seconds; with Incus's
//! `refresh_exclude_older`, source snapshots older than the target's newest are not sent and
//! target-only snapshots are kept), and the update of the instance from what a transfer wrote
//! into its volume in place ([`apply`]).
//!
//! The transfer writes into the instance's own volume (rsync with `--delete`, only what differs
//! moves), as LXD's does: an interrupted refresh leaves the volume partly updated and the
//! instance's record as it was, and a rerun converges (rsync sets every file's owner to the
//! source's, so the whole tree is brought back to container ids with the source's map whatever
//! state a previous run left it in). Received snapshots are new volumes, removed on failure.
//!
//! Between two instances of this server ([`local`]) the same plan applies; the missing
//! snapshots are cloned from the source's volumes and the instance's volume is replaced by a
//! clone of the source's (a snapshot on btrfs, a reflinked or plain copy on dir), swapped in
//! by the renames a restore makes, so a daemon killed in between finds the old volume back.

use std::path::PathBuf;
use std::sync::Arc;

use super::create::{seal_received, unshift_received, Received};
use super::db::SnapshotRecord;
use super::view::{record, state_of, url};
use super::{idmap, Ctx, Error, Result};
use crate::runtime;
use crate::storage::Pool;
use crate::util::revert::Revert;
use crate::util::time;

/// A snapshot as both sides compare them: its name and creation time in seconds.
pub type Stamp = (String, i64);

/// What a refresh does with snapshots: `sync` (source snapshots to receive, in the source's
/// order) and `delete` (the target's to delete first).
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub sync: Vec<String>,
    pub delete: Vec<String>,
}

/// Compare the source's snapshots with the target's.
pub fn compare(source: &[Stamp], target: &[Stamp], exclude_older: bool) -> Plan {
    let newest_target = target.iter().map(|(_, t)| *t).max();
    let mut delete = Vec::new();
    for (name, t) in target {
        match source.iter().find(|(n, _)| n == name) {
            Some((_, st)) if st == t => {}
            Some(_) => delete.push(name.clone()),
            None if exclude_older => {}
            None => delete.push(name.clone()),
        }
    }
    let sync = source
        .iter()
        .filter(|(name, t)| {
            let same = target.iter().any(|(n, tt)| n == name && tt == t);
            let older = exclude_older && newest_target.is_some_and(|newest| *t < newest);
            !same && !older
        })
        .map(|(n, _)| n.clone())
        .collect();
    Plan { sync, delete }
}

/// The target side's snapshots as [`compare`] takes them.
pub fn stamps(snapshots: &[SnapshotRecord]) -> Vec<Stamp> {
    snapshots
        .iter()
        .map(|s| (s.name.clone(), time::parse_secs(&s.created_at).unwrap_or(0)))
        .collect()
}

/// Checks before a refresh of `name` starts: it exists and is stopped.
pub fn check(d: &Ctx, name: &str) -> Result<()> {
    record(d, name)?;
    if !matches!(state_of(d, name)?, runtime::State::Stopped { .. }) {
        return Err(Error::Invalid("Cannot refresh a running instance".into()));
    }
    Ok(())
}

/// What fills a refreshed instance: given the pool, the instance's volume directory, its volume
/// name and the undo list, it updates the instance's files in place and makes one writable
/// snapshot volume per received snapshot, and returns them.
pub type Fill<'a> =
    dyn FnOnce(&Arc<Pool>, &std::path::Path, &str, &mut Revert) -> Result<Received> + 'a;

/// `copy --refresh` from `from` onto `name`, both on this server (`name` stopped and marked
/// busy by the caller): its snapshots compared as with another server's (the ones to delete
/// named to `deleted` before they go), the missing ones cloned, its files replaced by the
/// source's (a running source frozen or snapshotted atomically for the copy).
pub fn local(
    d: &Ctx,
    name: &str,
    from: &str,
    exclude_older: bool,
    deleted: &dyn Fn(&[String]),
) -> Result<()> {
    if from == name {
        return Err(Error::Invalid(
            "Cannot refresh an instance from itself".into(),
        ));
    }
    check(d, name)?;
    let src = record(d, from)
        .map_err(|_| Error::NotFound(format!("Source instance {from:?} not found")))?;
    let plan = compare(
        &stamps(&src.snapshots),
        &stamps(&record(d, name)?.snapshots),
        exclude_older,
    );
    deleted(&plan.delete);
    for s in &plan.delete {
        super::snapshots::delete_now(d, name, s)?;
    }
    let src_pool = super::pools::usable_pool(d, &src.pool)?;
    let disk_idmap = src
        .config
        .get("volatile.last_state.idmap")
        .cloned()
        .unwrap_or_else(|| "[]".into());
    let fill = move |pool: &Arc<Pool>,
                     main: &std::path::Path,
                     volume: &str,
                     revert: &mut Revert|
          -> Result<Received> {
        let mut snapshots = Vec::new();
        for n in &plan.sync {
            let sr = src
                .snapshot(n)
                .ok_or_else(|| Error::NotFound(format!("Snapshot {n:?} not found")))?;
            let mut rec = sr.clone();
            rec.volume = super::operations::uuid();
            let dst = pool.snapshot(volume, &rec.volume);
            let (p, undo) = (pool.clone(), dst.clone());
            revert.add(move || {
                let _ = p.driver.delete_volume(&undo);
            });
            super::create::clone_between(
                &src_pool,
                &src_pool.snapshot(&src.volume, &sr.volume),
                pool,
                &dst,
                false,
            )?;
            snapshots.push(rec);
        }
        let new = super::pools::replacement(main);
        let _ = pool.driver.delete_volume(&new);
        let src_main = src_pool.container(&src.volume);
        let res = super::interim::with_consistent(d, from, &src_pool, || {
            super::create::clone_between(&src_pool, &src_main, pool, &new, false)
        })
        .and_then(|()| {
            super::pools::swap_in(main).map_err(|e| Error::Host(format!("refreshing: {e}")))
        });
        let old = match res {
            Ok(old) => old,
            Err(e) => {
                let _ = pool.driver.delete_volume(&new);
                return Err(e);
            }
        };
        if let Err(e) = super::pools::remove_in_background(pool.clone(), &old) {
            eprintln!("bivy: deleting the volume a refresh replaced: {e}");
        }
        Ok(Received {
            snapshots,
            disk_idmap,
            stateful: false,
        })
    };
    apply(d, name, Box::new(fill))
}

/// Refresh `name` (stopped, marked busy by the caller) from what `fill` writes, then record the
/// received snapshots with the instance's own ones, oldest first.
pub fn apply(d: &Ctx, name: &str, fill: Box<Fill<'_>>) -> Result<()> {
    check(d, name)?;
    let rec = record(d, name)?;
    let pool = super::pools::usable_pool(d, &rec.pool)?;
    let main = pool.container(&rec.volume);
    let mut revert = Revert::new();
    let mut got = fill(&pool, &main, &rec.volume, &mut revert)?;
    let snaps: Vec<PathBuf> = unshift_received(&pool, &rec.volume, &main, &got)?;
    // Then as this instance keeps its files: idmapped (container ids) or shifted to its map.
    let disk = rec
        .config
        .get("volatile.last_state.idmap")
        .cloned()
        .unwrap_or_else(|| "[]".into());
    if let Some(m) = idmap::Map::from_volatile(&disk).filter(|m| !m.uid.is_empty()) {
        for p in std::iter::once(&main).chain(&snaps) {
            runtime::shift_rootfs(&p.join("rootfs"), &m.uid, &m.gid)?;
        }
    }
    seal_received(
        &pool,
        &rec.config,
        &disk,
        got.snapshots.iter_mut().zip(&snaps),
    )?;
    let mut db = d.db.lock().expect("db lock");
    db.update(|data| {
        if let Some(r) = data.instances.get_mut(name) {
            r.snapshots
                .retain(|s| !got.snapshots.iter().any(|g| g.name == s.name));
            r.snapshots.append(&mut got.snapshots);
            crate::util::sort::sort_by_key(&mut r.snapshots, |s| {
                time::parse_secs(&s.created_at).unwrap_or(0)
            });
        }
    })
    .map_err(|e| Error::Host(format!("saving instance: {e}")))?;
    drop(db);
    revert.commit();
    d.events
        .lifecycle("instance-updated", &url(name), serde_json::json!({}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[(&str, i64)]) -> Vec<Stamp> {
        v.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn snapshots_compare_by_name_and_date() {
        let src = s(&[("s0", 10), ("s1", 20), ("s2", 30)]);
        // The target has s0, an s1 made at another time, and one the source no longer has.
        let dst = s(&[("s0", 10), ("s1", 21), ("old", 5)]);
        let p = compare(&src, &dst, false);
        assert_eq!(p.sync, ["s1", "s2"]);
        assert_eq!(p.delete, ["s1", "old"]);
        // Nothing to do when both agree.
        assert_eq!(
            compare(&src, &src, false),
            Plan {
                sync: vec![],
                delete: vec![]
            }
        );
        // A new target: everything is sent.
        assert_eq!(compare(&src, &[], false).sync, ["s0", "s1", "s2"]);
    }

    #[test]
    fn exclude_older_keeps_the_targets_history() {
        // The source pruned s0 and s1; the backup host keeps them and gets only what is newer
        // than its newest.
        let src = s(&[("s2", 30), ("s3", 40)]);
        let dst = s(&[("s0", 10), ("s1", 20), ("s2", 30)]);
        let p = compare(&src, &dst, true);
        assert_eq!(p.sync, ["s3"]);
        assert!(p.delete.is_empty());
        // A source snapshot older than the target's newest is not sent back.
        let src = s(&[("s0", 10), ("s9", 25)]);
        let p = compare(&src, &dst, true);
        assert!(p.sync.is_empty(), "{p:?}");
        // Without the flag, LXD's: the extra ones go, the missing one comes.
        let p = compare(&src, &dst, false);
        assert_eq!(p.sync, ["s9"]);
        assert_eq!(p.delete, ["s1", "s2"]);
    }
}
