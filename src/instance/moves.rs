//! Moving an instance on this server: to a new name (`lxc move c1 c2`, stopped), and to another
//! storage pool under its name or a new one (`lxc move c1 [c2] -s POOL`, LXD's
//! `instance_pool_move`).
//!
//! A pool move copies the instance's volume and its snapshots' volumes onto the new pool, switches
//! the record over in one database write (its pool, its volumes, and a root disk of its own
//! naming the new pool, as LXD writes it), then deletes the old volumes. A daemon killed before
//! that write leaves only the copies, which no record names (removed at the next start); killed
//! after it, only the old volumes (the same). A running instance is moved as LXD moves it: its
//! state saved (a stateful stop), moved, and started from that state; without `live` it is
//! refused.

use super::create::{clone_instance, put_in_place, remove_volumes};
use super::view::{record, state_of, url};
use super::{config, Ctx, Error, Result};
use crate::runtime::State;
use crate::util::revert::Revert;

/// A pool move (`POST /1.0/instances/NAME` with `migration: true` and `pool`).
pub struct PoolMove<'a> {
    pub name: &'a str,
    /// The name it will have (its own when the request names none).
    pub new_name: &'a str,
    pub pool: &'a str,
    /// Leave its snapshots behind (they are deleted with the old volumes).
    pub instance_only: bool,
    /// A running instance is moved with its state (a stateful stop and start).
    pub live: bool,
}

/// What can be refused before the move's operation starts: a bad or taken new name, a missing
/// or unusable pool, a running instance without `live`, or one whose state cannot be saved.
pub fn check(d: &Ctx, m: &PoolMove<'_>) -> Result<()> {
    let rec = record(d, m.name)?;
    if m.new_name != m.name {
        config::validate_instance_name(m.new_name)?;
        name_free(d, m.new_name)?;
    }
    let pool = super::pools::usable_pool(d, m.pool)?;
    // A root disk's size must hold on the new pool before anything is copied there.
    let ed = {
        let db = d.db.lock().expect("db lock");
        config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices).1
    };
    if super::volumes::root_size(&ed).is_some() {
        let root = ed.iter().find(|(_, dev)| config::is_root_disk(dev));
        super::devices::root_size_on(root.map_or("root", |(n, _)| n), Some(pool.driver.name()))?;
    }
    if matches!(state_of(d, m.name)?, State::Running { .. }) {
        if !m.live {
            return Err(Error::Invalid(
                "Instance must be stopped to move between pools statelessly".into(),
            ));
        }
        super::stateful::check(d, m.name, &rec, "Moving a running instance between pools")?;
    }
    Ok(())
}

fn name_free(d: &Ctx, name: &str) -> Result<()> {
    let taken =
        d.db.lock()
            .expect("db lock")
            .data
            .instances
            .contains_key(name)
            || d.busy_with(name).is_some();
    if taken {
        return Err(Error::Conflict(format!("Name {name:?} already in use")));
    }
    Ok(())
}

/// Move the instance to its pool (the caller marked `m.name` busy): checked again, stopped
/// with its state when running, moved, and started from its state again. A failed move leaves
/// it where it was, started again from its state if it was running.
pub fn to_pool(d: &Ctx, m: &PoolMove<'_>) -> Result<()> {
    check(d, m)?;
    let renamed = m.new_name != m.name;
    if renamed {
        d.busy_insert(m.new_name, "move")?;
    }
    let result = (|| {
        let running = matches!(state_of(d, m.name)?, State::Running { .. });
        if running {
            super::stateful::stop(d, m.name)?;
        }
        let moved = switch_pool(d, m);
        let at = if moved.is_ok() { m.new_name } else { m.name };
        if running {
            super::lifecycle::start_with(d, at, true)?;
        }
        moved
    })();
    if renamed {
        d.busy.lock().expect("busy lock").remove(m.new_name);
    }
    result
}

/// The stopped instance's volumes copied to the pool, the record switched, the old volumes
/// deleted.
fn switch_pool(d: &Ctx, m: &PoolMove<'_>) -> Result<()> {
    let rec = record(d, m.name)?;
    let pool = super::pools::usable_pool(d, m.pool)?;
    let volume = super::operations::uuid();
    let tmp = pool.container(&format!("{volume}.tmp"));
    let final_dir = pool.container(&volume);
    let mut revert = Revert::new();
    revert.add(remove_volumes(&pool, vec![tmp.clone(), final_dir.clone()]));
    let snapshots = clone_instance(
        d,
        m.name,
        &rec,
        &pool,
        (&tmp, &volume),
        m.instance_only,
        &mut revert,
    )?;
    if !snapshots.is_empty() {
        revert.add(remove_volumes(&pool, vec![pool.snapshots_of(&volume)]));
    }
    let (ec, ed) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
    };
    let privileged = config::flag(&ec, "security.privileged");
    put_in_place(&pool, (&tmp, &final_dir), privileged, &ed)?;
    let nets = {
        let mut db = d.db.lock().expect("db lock");
        // The record as it is now (its config may have changed meanwhile); its volumes must be
        // the ones copied.
        let mut next = super::view::record_in(&db.data, m.name)?;
        if (&next.pool, &next.volume, &next.snapshots) != (&rec.pool, &rec.volume, &rec.snapshots) {
            return Err(Error::Conflict(format!(
                "Instance {:?} changed its volumes during the move",
                m.name
            )));
        }
        next.pool = m.pool.to_string();
        next.volume = volume;
        next.snapshots = snapshots;
        // The root disk, its own or a profile's, becomes its own naming the new pool (the
        // snapshots' were rewritten by the clone).
        next.devices = config::with_root_pool(&next.devices, &ed, m.pool);
        db.update(|data| {
            data.instances.remove(m.name);
            data.instances.insert(m.new_name.to_string(), next.clone());
        })
        .map_err(|e| Error::Host(format!("saving the instance record: {e}")))?;
        let (_, ed) = config::expand(
            &next.profiles,
            &db.data.profiles,
            &next.config,
            &next.devices,
        );
        super::nics::networks_of(&db.data, &ed)
    };
    revert.commit();
    super::pools::delete_instance_volumes(d, &rec);
    if m.new_name != m.name {
        renamed(d, m.name, m.new_name, nets);
    }
    d.events
        .lifecycle("instance-updated", &url(m.new_name), serde_json::json!({}));
    Ok(())
}

/// Rename the stopped instance `name` to `new` (the caller marked `name` busy).
pub fn rename(d: &Ctx, name: &str, new: &str) -> Result<()> {
    config::validate_instance_name(new)?;
    record(d, name)?;
    if matches!(state_of(d, name)?, State::Running { .. }) {
        return Err(Error::Invalid(
            "Renaming of running instance not allowed".into(),
        ));
    }
    // The managed networks its NICs are on: their static leases carry its name.
    let nets = {
        let mut db = d.db.lock().expect("db lock");
        if db.data.instances.contains_key(new) || d.busy_with(new).is_some() {
            return Err(Error::Conflict(format!("Name {new:?} already in use")));
        }
        db.update(|data| {
            if let Some(mut r) = data.instances.remove(name) {
                // A pending create or copy trigger (not started since) wins over rename.
                if r.config.contains_key("volatile.base_image") {
                    r.config
                        .entry("volatile.apply_template".into())
                        .or_insert_with(|| "rename".into());
                }
                data.instances.insert(new.to_string(), r);
            }
        })
        .map_err(|e| Error::Host(format!("saving the instance record: {e}")))?;
        let r = &db.data.instances[new];
        let (_, ed) = config::expand(&r.profiles, &db.data.profiles, &r.config, &r.devices);
        super::nics::networks_of(&db.data, &ed)
    };
    renamed(d, name, new, nets);
    d.events.lifecycle(
        "instance-renamed",
        &url(new),
        serde_json::json!({"old_name": name}),
    );
    Ok(())
}

/// After a record took a new name: the static leases of its networks carry the new one, and
/// its run number, run and log directories follow.
fn renamed(d: &Ctx, name: &str, new: &str, nets: impl IntoIterator<Item = String>) {
    super::bridges::refresh(d, nets);
    crate::util::lock(&d.runs).remove(name);
    let _ = std::fs::rename(d.log_dir(name), d.log_dir(new));
    let _ = std::fs::remove_dir_all(d.run_dir(name));
}
