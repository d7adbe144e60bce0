//! `POST /1.0/instances`: a new instance from an image (local, or pulled from an image
//! server), a copy, an empty one, or a migration from another server; its name generated when
//! none is given.

use super::super::request::json;
use super::super::response::{self, Error, Result};
use super::super::Daemon;
use crate::api::{self, StringMap};
use crate::http::{Request, Response};
use crate::instance::config;
use crate::instance::create::{create_now, resolve_image, NewInstance, Origin};
use crate::instance::devices;
use crate::instance::operations::{Class, Op};
use crate::instance::view::{record, resources, state_of};
use crate::runtime;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A generated name (`lxc launch img` without a name).
fn generate_name(d: &Daemon) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry",
        "nimble", "proud", "quick", "sunny", "witty", "bold",
    ];
    const NOUN: &[&str] = &[
        "otter", "falcon", "badger", "heron", "lynx", "marten", "osprey", "panda", "quail",
        "raven", "seal", "tapir", "wren", "yak", "bison", "crane",
    ];
    loop {
        let s = crate::instance::operations::secret();
        let b = s.as_bytes();
        let name = format!(
            "{}-{}",
            ADJ[usize::from(b[0]) % ADJ.len()],
            NOUN[usize::from(b[1]) % NOUN.len()]
        );
        if !d
            .db
            .lock()
            .expect("db lock")
            .data
            .instances
            .contains_key(&name)
        {
            return name;
        }
    }
}

pub fn create(d: &Daemon, req: &mut Request) -> Result<Response> {
    let body: api::InstancesPost = json(req)?;
    if !body.kind.is_empty() && body.kind != "container" {
        return Err(Error::BadRequest(format!(
            "Instance type {:?} is not supported (containers only)",
            body.kind
        )));
    }
    let name = if body.name.is_empty() {
        generate_name(d)
    } else {
        body.name.clone()
    };
    config::validate_instance_name(&name)?;
    let mut source = body.source.clone();
    // A pull with the source's `criu` secret is live whatever `live` says (LXD's sink: pylxd's
    // live migrate sends the secret alone).
    if source.kind == "migration" && source.mode != "push" && source.secrets.contains_key("criu") {
        source.live = true;
    }
    let start = body.start;
    let exists =
        d.db.lock()
            .expect("db lock")
            .data
            .instances
            .contains_key(&name);
    if start && source.refresh && exists {
        return Err(Error::not_yet(
            "start with a refresh (refresh, then start the instance)",
        ));
    }
    if source.kind == "migration" && source.refresh && exists {
        return refresh(d, &name, &source, body.put.config.as_ref());
    }
    if source.kind == "copy"
        && source.refresh
        && exists
        && source.server.is_empty()
        && source.mode != "push"
    {
        return refresh_local(d, &name, &source);
    }
    let mut profiles = body.put.profiles.clone();
    let mut config_in = body.put.config.clone().unwrap_or_default();
    if !body.instance_type.is_empty() {
        // Under the config's own keys, as LXD's.
        for (k, v) in crate::instance::limits::instance_type_limits(&body.instance_type)
            .map_err(Error::BadRequest)?
        {
            config_in
                .entry(k.to_string())
                .and_modify(|cur| {
                    if cur.is_empty() {
                        *cur = v.clone();
                    }
                })
                .or_insert(v);
        }
    }
    let mut devices_in = body.put.devices.clone().unwrap_or_default();
    let mut architecture = String::new();
    let origin = match source.kind.as_str() {
        "image" if !source.server.is_empty() => {
            super::super::pull::check_protocol(&source.protocol)?;
            Origin::Remote(Box::new(source.clone()))
        }
        "image" => Origin::Image(Box::new(resolve_image(d, &source)?)),
        // Only an explicit "none" makes an empty instance; a missing type is an error (LXD).
        "none" => Origin::Empty,
        "copy" => {
            if !source.server.is_empty() || source.mode == "push" {
                return Err(Error::not_yet("copies between servers (migration)"));
            }
            if body.put.stateful {
                return Err(Error::not_yet(
                    "stateful copies (a copy of a running instance with its state); copy it without --stateful, or take a stateful snapshot",
                ));
            }
            let (from, snap) = match source.source.split_once('/') {
                Some((i, s)) => (i.to_string(), Some(s.to_string())),
                None => (source.source.clone(), None),
            };
            let rec = record(d, &from).map_err(|_| {
                Error::NotFound(format!("Source instance {:?} not found", source.source))
            })?;
            if source.refresh {
                // A refresh onto a missing instance is a plain copy; lxc's PUT of the source's
                // config follows, its volatile keys the source's: this instance keeps its own.
                d.refreshed
                    .lock()
                    .expect("refreshed lock")
                    .insert(name.clone(), volatile_of(&rec.config));
            }
            // LXD's merge: the request's config, devices and profiles win; the source fills in
            // the rest, minus volatile keys other than the base image and the on-disk id shift.
            let (src_cfg, src_devs, src_profiles, src_arch) = match &snap {
                Some(s) => {
                    let sr = rec.snapshot(s).ok_or_else(|| {
                        Error::NotFound(format!("Snapshot {:?} not found", source.source))
                    })?;
                    (
                        sr.config.clone(),
                        sr.devices.clone(),
                        sr.profiles.clone(),
                        sr.architecture.clone(),
                    )
                }
                None => (
                    rec.config.clone(),
                    rec.devices.clone(),
                    rec.profiles.clone(),
                    rec.architecture.clone(),
                ),
            };
            for (k, v) in src_cfg {
                let keep = !k.starts_with("volatile.")
                    || k == "volatile.base_image"
                    || k == "volatile.last_state.idmap";
                if keep && !config_in.contains_key(&k) {
                    config_in.insert(k, v);
                }
            }
            for (k, v) in src_devs {
                devices_in.entry(k).or_insert(v);
            }
            if profiles.is_none() {
                profiles = Some(src_profiles);
            }
            architecture = src_arch;
            Origin::Copy {
                from,
                snapshot: snap,
                instance_only: source.instance_only || source.container_only,
            }
        }
        "migration" => {
            crate::migration::sink::check(&source)?;
            architecture = match body.put.architecture.parse::<i32>() {
                Ok(n) => crate::migration::arch_name(n).to_string(),
                Err(_) => body.put.architecture.clone(),
            };
            Origin::Migration(Box::new(source.clone()))
        }
        // LXD's wording: "Unknown source type %s".
        other => return Err(Error::BadRequest(format!("Unknown source type {other}"))),
    };
    let profiles = profiles.unwrap_or_else(|| vec!["default".into()]);
    // volatile keys in a create request (`lxc copy` sends volatile.base_image) are stored; the
    // ones the daemon computes are overwritten.
    let user_keys = config::user_keys(&config_in);
    config::validate_config(&user_keys, &StringMap::new(), d.host.ncpus)?;
    devices::validate_devices(&devices_in, &d.db.lock().expect("db lock").data)?;
    let pool_name = {
        let db = d.db.lock().expect("db lock");
        if db.data.instances.contains_key(&name) {
            return Err(Error::Conflict(format!("Instance {name:?} already exists")));
        }
        for p in &profiles {
            if !db.data.profiles.contains_key(p) {
                return Err(Error::BadRequest(format!(
                    "Requested profile {p:?} doesn't exist"
                )));
            }
        }
        let (_, devs) = config::expand(&profiles, &db.data.profiles, &config_in, &devices_in);
        if let Some(why) = crate::instance::view::root_disk_problem(&devs) {
            return Err(Error::BadRequest(why.into()));
        }
        // A copy keeps its source's devices (as LXD's): one with a static address is refused
        // unless the request gives the copy its own (`lxc copy --device`).
        let none = api::Devices::new();
        crate::instance::nics::check_static_addresses(&db.data, &name, &none, &devs).map_err(
            |e| match (&origin, e) {
                (Origin::Copy { .. }, crate::instance::Error::Invalid(m)) => {
                    crate::instance::Error::Invalid(format!(
                        "{m}: a copy keeps its source's devices; give it an address of its own (lxc copy --device <device>,ipv4.address=<address>)"
                    ))
                }
                (_, e) => e,
            },
        )?;
        crate::instance::pools::root_pool(&devs).ok_or_else(|| {
            Error::BadRequest("The root disk device has no \"pool\" property".into())
        })?
    };
    crate::instance::pools::usable_pool(d, &pool_name)?;
    let guard_name = name.clone();
    // Reserve the name now so two concurrent creates cannot both pass the check.
    d.busy_insert(&guard_name, "create")?;
    let copy_from = match &origin {
        Origin::Copy { from, .. } => Some(from.clone()),
        _ => None,
    };
    // A copy's source must not be deleted or restored underneath it.
    if let Some(f) = &copy_from {
        if let Err(e) = d.busy_insert(f, "copy") {
            d.busy.lock().expect("busy lock").remove(&guard_name);
            return Err(e.into());
        }
    }
    let d2 = d.self_arc();
    let push = match &origin {
        Origin::Migration(s) if s.mode == "push" => Some(s.live),
        _ => None,
    };
    let op = create_op(d, &name.clone(), push, move |op, secrets| {
        let args = NewInstance {
            name: &name,
            body: &body,
            profiles,
            config: config_in,
            devices: devices_in,
            architecture,
            pool: pool_name,
        };
        // An image on a simplestreams server is pulled first (cached), as LXD does.
        let res = match origin {
            Origin::Remote(s) => super::super::pull::for_instance(&d2, &op, &s).and_then(|img| {
                create_now(&d2, args, Origin::Image(Box::new(img))).map_err(Error::from)
            }),
            Origin::Migration(s) => {
                let report = |p: String| op.set_metadata("fs_progress", serde_json::json!(p));
                let progress = crate::migration::sink::Progress::new(&report);
                // A refresh onto a missing instance is a plain copy; lxc's PUT of the source's
                // config follows, its volatile keys those of this request: this instance keeps
                // its own.
                let echo = s.refresh.then(|| volatile_of(&args.config));
                let goal = crate::migration::sink::Goal::Create(args);
                let r = crate::migration::sink::receive_by(&d2, goal, &s, &op, &secrets, &progress);
                if let (Ok(()), Some(echo)) = (&r, echo) {
                    d2.refreshed
                        .lock()
                        .expect("refreshed lock")
                        .insert(name.clone(), echo);
                }
                r.map_err(Error::from)
            }
            o => create_now(&d2, args, o).map_err(Error::from),
        };
        // `start` (instance_create_start): the new instance starts in this operation, still
        // marked busy; one that arrived running (a live migration) is left as it is. A failed
        // start leaves it created, as a failed `PUT .../state` would.
        let res = res.and_then(|()| if start { start_new(&d2, &name) } else { Ok(()) });
        // The record of a create that starts was not synced (see `create_now`): the start's
        // record has synced it unless the start failed or made none.
        let synced = if start {
            d2.db.lock().expect("db lock").sync()
        } else {
            Ok(())
        };
        let res =
            res.and_then(|()| synced.map_err(|e| Error::Internal(format!("saving instance: {e}"))));
        let mut busy = d2.busy.lock().expect("busy lock");
        busy.remove(&name);
        if let Some(f) = &copy_from {
            busy.remove(f);
        }
        res
    });
    Ok(response::operation(&op.to_api()))
}

/// The start a create with `start` asks for, unless the instance is running already.
fn start_new(d: &Daemon, name: &str) -> Result<()> {
    if let runtime::State::Running { .. } = state_of(d, name)? {
        return Ok(());
    }
    crate::instance::lifecycle::start(d, name).map_err(Error::from)
}

/// A create's operation. For a pushed migration (push and relay modes; `push` says whether it
/// is live) a websocket operation whose metadata holds the secrets the source, or the client
/// relaying for it, connects with, open to callers without a trusted certificate (the secrets
/// are their credential), as LXD's; otherwise a task. `run` gets the operation and those
/// secrets.
fn create_op(
    d: &Daemon,
    name: &str,
    push: Option<bool>,
    run: impl FnOnce(Arc<Op>, BTreeMap<String, String>) -> Result<()> + Send + 'static,
) -> Arc<Op> {
    let secrets = match push {
        Some(live) => crate::migration::secrets(live),
        None => BTreeMap::new(),
    };
    let push = push.is_some();
    let (class, metadata) = if push {
        (Class::Websocket, serde_json::to_value(&secrets).ok())
    } else {
        (Class::Task, None)
    };
    let list = secrets.values().cloned().collect();
    let op = d.ops.start(
        class,
        "Creating instance",
        resources(name),
        metadata,
        list,
        move |op| run(op, secrets),
    );
    if push {
        op.open_to_untrusted();
    }
    op
}

/// The start of a refresh of `name`: marked busy, then checked (stopped); unmarked if not.
fn begin_refresh(d: &Daemon, name: &str) -> Result<()> {
    d.busy_insert(name, "refresh")?;
    if let Err(e) = crate::instance::refresh::check(d, name) {
        d.busy.lock().expect("busy lock").remove(name);
        return Err(e.into());
    }
    Ok(())
}

/// The end of a refresh's operation: on success the source's volatile keys `echo` are kept for
/// lxc's PUT of the source's config that follows (this instance keeps its own); the instance's
/// busy mark goes either way.
fn end_refresh(
    d: &Daemon,
    name: &str,
    echo: StringMap,
    r: crate::instance::Result<()>,
) -> Result<()> {
    if r.is_ok() {
        d.refreshed
            .lock()
            .expect("refreshed lock")
            .insert(name.to_string(), echo);
    }
    d.busy.lock().expect("busy lock").remove(name);
    r.map_err(Error::from)
}

/// The `volatile.*` keys of `config`.
fn volatile_of(config: &StringMap) -> StringMap {
    crate::util::sort::entries_where(config, |k, _| k.starts_with("volatile."))
}

/// `copy --refresh` between two instances of this server, onto an existing one (a missing one
/// is a plain copy, as LXD's): stopped, marked busy; the target snapshots the refresh deletes
/// are named in the operation's metadata (`deleted_snapshots`) before they go.
fn refresh_local(d: &Daemon, name: &str, source: &api::InstanceSource) -> Result<Response> {
    if source.source.contains('/') {
        return Err(Error::BadRequest(
            "Refreshing from a snapshot is not supported: copy the snapshot to a new instance"
                .into(),
        ));
    }
    let src = record(d, &source.source)
        .map_err(|_| Error::NotFound(format!("Source instance {:?} not found", source.source)))?;
    // lxc's PUT after the refresh carries the source's volatile keys: this instance keeps its own.
    let echo = volatile_of(&src.config);
    begin_refresh(d, name)?;
    let d2 = d.self_arc();
    let name = name.to_string();
    let (from, exclude_older) = (source.source.clone(), source.refresh_exclude_older);
    let op = create_op(d, &name.clone(), None, move |op, _| {
        let deleted =
            |names: &[String]| op.set_metadata("deleted_snapshots", serde_json::json!(names));
        let r = crate::instance::refresh::local(&d2, &name, &from, exclude_older, &deleted);
        end_refresh(&d2, &name, echo, r)
    });
    Ok(response::operation(&op.to_api()))
}

/// `--refresh` onto an existing instance (a missing one is a plain copy, as LXD's): stopped,
/// marked busy for the transfer; the target snapshots the refresh deletes are named in the
/// operation's metadata (`deleted_snapshots`) before they go.
fn refresh(
    d: &Daemon,
    name: &str,
    source: &api::InstanceSource,
    config: Option<&StringMap>,
) -> Result<Response> {
    let echo = config.map(volatile_of).unwrap_or_default();
    crate::migration::sink::check(source)?;
    begin_refresh(d, name)?;
    let d2 = d.self_arc();
    let name = name.to_string();
    let s = source.clone();
    let push = (s.mode == "push").then_some(s.live);
    let op = create_op(d, &name.clone(), push, move |op, secrets| {
        let report = |p: String| op.set_metadata("fs_progress", serde_json::json!(p));
        let progress = crate::migration::sink::Progress::new(&report);
        let deleted =
            |names: &[String]| op.set_metadata("deleted_snapshots", serde_json::json!(names));
        let goal = crate::migration::sink::Goal::Refresh {
            name: &name,
            exclude_older: s.refresh_exclude_older,
            deleted: &deleted,
        };
        let r = crate::migration::sink::receive_by(&d2, goal, &s, &op, &secrets, &progress);
        end_refresh(&d2, &name, echo, r)
    });
    Ok(response::operation(&op.to_api()))
}
