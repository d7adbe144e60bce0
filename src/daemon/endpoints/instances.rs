//! `/1.0/instances` (list) and `/1.0/instances/NAME[/state]`: show, edit (PUT/PATCH, live
//! limits applied), rename (or serialise for a migration), delete, and state changes. The model
//! and lifecycle are `crate::instance`'s; creation is `instance_create`'s.

use std::sync::Arc;
use std::time::Duration;

use super::super::filter::Filter;
use super::super::request::{json, recursion, recursion_fields};
use super::super::response::{self, Error, Result};
use super::super::Daemon;
use crate::api::{self, status};
use crate::http::{Request, Response};
use crate::instance::config;
use crate::instance::db::InstanceRecord;
use crate::instance::devices;
use crate::runtime::{self, State};
use crate::util::shared::Shared;

/// Default clean-stop timeout when the client gives none (LXD: 30 s for `lxc stop`... the client
/// sends -1 and LXD then waits forever; we cap at 10 minutes).
const STOP_TIMEOUT_MAX: Duration = Duration::from_secs(600);

use crate::instance::lifecycle::delete_now;
use crate::instance::lifecycle::{start, stop};
use crate::instance::moves::{self, PoolMove};
use crate::instance::view::state_of;
use crate::instance::view::{expanded, record, resources, url};

fn status_of(s: &State) -> (&'static str, u16) {
    match s {
        State::Running { frozen: true, .. } => ("Frozen", status::FROZEN),
        State::Running { .. } => ("Running", status::RUNNING),
        State::Stopped { .. } => ("Stopped", status::STOPPED),
    }
}

fn to_api(d: &Daemon, name: &str, rec: &InstanceRecord, st: &State) -> api::Instance {
    let (ec, ed) = expanded(d, rec);
    to_api_expanded(name, rec, st, (ec, ed))
}

/// [`to_api`] with the expanded config and devices given.
fn to_api_expanded(
    name: &str,
    rec: &InstanceRecord,
    st: &State,
    (ec, ed): (api::StringMap, api::Devices),
) -> api::Instance {
    let (s, code) = status_of(st);
    api::Instance {
        architecture: rec.architecture.clone(),
        config: rec.config.clone(),
        devices: rec.devices.clone(),
        ephemeral: rec.ephemeral,
        profiles: rec.profiles.clone(),
        stateful: rec.stateful,
        description: rec.description.clone(),
        created_at: rec.created_at.clone(),
        expanded_config: ec,
        expanded_devices: ed,
        name: name.to_string(),
        status: s.into(),
        status_code: code,
        last_used_at: rec.last_used_at.clone(),
        location: "none".into(),
        kind: "container".into(),
        project: "default".into(),
    }
}

fn etag_of(rec: &InstanceRecord) -> String {
    response::etag(&(
        &rec.architecture,
        &rec.config,
        &rec.devices,
        rec.ephemeral,
        &rec.profiles,
    ))
}

/// The costly parts of an instance's state a request wants: both unless it names fields by
/// selective recursion (LXD's `instances_state_selective_recursion`: `state.disk` and
/// `state.network`; a part not named is `null`, the rest of the state is always there).
#[derive(Clone, Copy)]
struct Parts {
    disk: bool,
    network: bool,
}

impl Parts {
    const ALL: Parts = Parts {
        disk: true,
        network: true,
    };

    fn of(req: &Request) -> Result<Parts> {
        let Some(fields) = recursion_fields(req) else {
            return Ok(Parts::ALL);
        };
        let mut p = Parts {
            disk: false,
            network: false,
        };
        for f in &fields {
            match f.as_str() {
                "state.disk" => p.disk = true,
                "state.network" => p.network = true,
                other => {
                    return Err(Error::BadRequest(format!(
                        "Invalid recursion field {other:?} (fields: state.disk, state.network)"
                    )))
                }
            }
        }
        Ok(p)
    }
}

/// The state as the API shows it. The usage figures of a running instance are the kernel's; one
/// that cannot be read is an error (unless the instance stopped meanwhile: then it is shown
/// stopped), and one the host does not count is left out.
/// `rec` and `ed` (its expanded devices) name the host end of each NIC.
fn state_api(
    d: &Daemon,
    name: &str,
    rec: &InstanceRecord,
    ed: &api::Devices,
    st: &State,
    parts: Parts,
) -> Result<api::InstanceState> {
    let (s, code) = status_of(st);
    // Disk usage is not counted on bivy's pools (as LXD on `dir` without quotas): `{}`.
    let mut out = api::InstanceState {
        status: s.into(),
        status_code: code,
        disk: parts.disk.then(Default::default),
        ..Default::default()
    };
    // A stopped instance uses nothing: zeros, as LXD shows them (clients read `usage`).
    if !matches!(st, State::Running { .. }) {
        out.memory = api::InstanceStateMemory {
            usage: Some(0),
            usage_peak: Some(0),
            swap_usage: Some(0),
            swap_usage_peak: Some(0),
        };
        out.cpu.usage = Some(0);
    }
    if let State::Running {
        init_pid,
        monitor_pid,
        ..
    } = st
    {
        let stats = match runtime::stats(&d.run_dir(name), *monitor_pid) {
            Ok(stats) => stats,
            Err(e) => {
                return match state_of(d, name)? {
                    now @ State::Stopped { .. } => state_api(d, name, rec, ed, &now, parts),
                    State::Running { .. } => Err(Error::Internal(format!(
                        "usage figures of instance {name:?}: {e}"
                    ))),
                };
            }
        };
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        out.pid = i64::from(*init_pid);
        // Read from the container's own network namespace (at least `lo`, as LXD reports).
        if parts.network {
            out.network = super::super::netstate::of_pid(*init_pid).ok();
        }
        // The host end of each veth, from the NIC's `volatile.<dev>.host_name`.
        if let Some(net) = out.network.as_mut() {
            for (dev, conf) in crate::instance::nics::nic_devices(ed) {
                let host = rec.config.get(&format!("volatile.{dev}.host_name"));
                let inside = conf.get("name").cloned().unwrap_or_else(|| dev.clone());
                if let (Some(h), Some(n)) = (host, net.get_mut(&inside)) {
                    n.host_name = h.clone();
                }
            }
        }
        out.processes = i(stats.processes);
        out.memory.usage = stats.memory_usage.map(i);
        out.memory.usage_peak = stats.memory_peak.map(i);
        out.memory.swap_usage = stats.swap_usage.map(i);
        out.memory.swap_usage_peak = stats.swap_peak.map(i);
        out.cpu.usage = stats.cpu_ns.map(i);
    }
    Ok(out)
}

/// `InstanceFull.backups`.
fn backups_api(rec: &InstanceRecord) -> Vec<serde_json::Value> {
    rec.backups
        .iter()
        .map(|b| serde_json::to_value(crate::instance::backups::to_api(b)).unwrap_or_default())
        .collect()
}

fn full(d: &Daemon, name: &str, rec: &InstanceRecord, parts: Parts) -> Result<api::InstanceFull> {
    let st = state_of(d, name)?;
    let instance = to_api(d, name, rec, &st);
    let state = state_api(d, name, rec, &instance.expanded_devices, &st, parts)?;
    Ok(api::InstanceFull {
        instance,
        backups: Some(backups_api(rec)),
        state: Some(state),
        snapshots: Some(crate::instance::snapshots::list_api(d, rec)),
    })
}

// ---------------------------------------------------------------------------------------------
// Collection

pub fn list(d: &Daemon, req: &Request) -> Result<Response> {
    let filter = Filter::parse(req.query("filter").unwrap_or(""))?;
    let rec_level = recursion(req);
    let parts = Parts::of(req)?;
    let steps = crate::util::trace::Steps::new("list", &format!("recursion={rec_level}"));
    let (records, profiles) = crate::instance::view::listing(d);
    if rec_level == 0 && filter.is_empty() {
        let urls: Vec<String> = records.iter().map(|(name, _)| url(name)).collect();
        return Ok(response::sync(&urls));
    }
    let entry = |(name, rec): &(String, Shared<InstanceRecord>)| -> Result<Option<Vec<u8>>> {
        let st = state_of(d, name)?;
        let fail = |e: serde_json::Error| Error::Internal(format!("instance {name:?}: {e}"));
        let expand = || config::expand(&rec.profiles, &profiles, &rec.config, &rec.devices);
        // The instance's document: kept from an earlier listing while its record, the profiles
        // and its status are the same. The filter reads it as JSON; only made when there is one.
        let (json, ed): (Arc<[u8]>, Arc<api::Devices>) = if filter.is_empty() {
            let code = status_of(&st).1;
            match d.docs.get(name, rec, &profiles, code) {
                Some(kept) => kept,
                None => {
                    let inst = to_api_expanded(name, rec, &st, expand());
                    let json: Arc<[u8]> = serde_json::to_vec(&inst).map_err(fail)?.into();
                    let ed = Arc::new(inst.expanded_devices);
                    d.docs
                        .put(name, (rec, &profiles, code), json.clone(), ed.clone());
                    (json, ed)
                }
            }
        } else {
            let inst = to_api_expanded(name, rec, &st, expand());
            if !filter.matches(&serde_json::to_value(&inst).unwrap_or_default()) {
                return Ok(None);
            }
            let json = serde_json::to_vec(&inst).map_err(fail)?.into();
            (json, Arc::new(inst.expanded_devices))
        };
        Ok(Some(match rec_level {
            0 => serde_json::to_vec(&url(name)).map_err(fail)?,
            1 => json.to_vec(),
            _ => {
                let state = state_api(d, name, rec, &ed, &st, parts)?;
                full_json(
                    &json,
                    &backups_api(rec),
                    &state,
                    &crate::instance::snapshots::list_api(d, rec),
                )
                .map_err(fail)?
            }
        }))
    };
    // Each entry reads the instance's run state from its files, and with states its usage
    // figures and interfaces from the kernel (0.05 to 0.15 ms each), and is serialized: on a
    // few threads once there are several.
    let workers = if records.len() >= 8 {
        crate::util::par::workers()
    } else {
        1
    };
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(records.len());
    for e in crate::util::par::map(&records, workers, entry) {
        out.extend(e?);
    }
    steps.step(&format!("{} entries on {workers} threads", out.len()));
    if filter.is_empty() {
        d.docs.retain(|name| {
            records
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .is_ok()
        });
    }
    let resp = response::sync_serialized_list(&out);
    steps.step("response made");
    Ok(resp)
}

/// An `InstanceFull` document from its instance's document (an object) and the rest, as
/// serializing the whole `InstanceFull` writes it: the instance's members, then `backups`,
/// `state` and `snapshots`.
fn full_json(
    instance: &[u8],
    backups: &[serde_json::Value],
    state: &api::InstanceState,
    snapshots: &[api::InstanceSnapshot],
) -> serde_json::Result<Vec<u8>> {
    let Some(open) = instance.strip_suffix(b"}") else {
        return Err(serde::ser::Error::custom(
            "an instance's document is not an object",
        ));
    };
    let mut out = Vec::with_capacity(instance.len() + 1024);
    out.extend_from_slice(open);
    out.extend_from_slice(b",\"backups\":");
    serde_json::to_writer(&mut out, backups)?;
    out.extend_from_slice(b",\"state\":");
    serde_json::to_writer(&mut out, state)?;
    out.extend_from_slice(b",\"snapshots\":");
    serde_json::to_writer(&mut out, snapshots)?;
    out.push(b'}');
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// One instance

pub fn route(d: &Daemon, req: &mut Request, name: &str, sub: &[&str]) -> Result<Response> {
    let m = req.method.clone();
    match (sub, m.as_str()) {
        ([], "GET") => get(d, req, name),
        ([], "PUT") => put(d, req, name, false),
        ([], "PATCH") => put(d, req, name, true),
        ([], "POST") => rename(d, req, name),
        ([], "DELETE") => delete(d, name),
        (["state"], "GET") => {
            let rec = record(d, name)?;
            let (_, ed) = expanded(d, &rec);
            Ok(response::sync(&state_api(
                d,
                name,
                &rec,
                &ed,
                &state_of(d, name)?,
                Parts::ALL,
            )?))
        }
        (["state"], "PUT") => state_put(d, req, name),
        (["console"], "DELETE") => {
            record(d, name)?;
            let _ = std::fs::write(d.log_dir(name).join("console.log"), b"");
            Ok(response::empty())
        }
        (["sftp"], _) => Err(Error::not_yet("sftp (lxc file mount)")),
        ([], _)
        | (["state"], _)
        | (["exec"], _)
        | (["files"], _)
        | (["logs"], _)
        | (["metadata"], _) => Err(Error::MethodNotAllowed(format!("method {m} not allowed"))),
        _ => Err(Error::NotFound("not found".into())),
    }
}

fn get(d: &Daemon, req: &Request, name: &str) -> Result<Response> {
    let rec = record(d, name)?;
    let etag = etag_of(&rec);
    if recursion(req) > 0 {
        let parts = Parts::of(req)?;
        Ok(response::sync_etag(
            &full(d, name, &rec, parts)?,
            Some(etag),
        ))
    } else {
        let st = state_of(d, name)?;
        Ok(response::sync_etag(&to_api(d, name, &rec, &st), Some(etag)))
    }
}

fn put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    let mut body: serde_json::Value = json(req)?;
    // A null config value is an empty one, as Go decodes it into LXD's map: an unset.
    if let Some(c) = body.get_mut("config").and_then(|c| c.as_object_mut()) {
        for v in c.values_mut().filter(|v| v.is_null()) {
            *v = "".into();
        }
    }
    let mut put: api::InstancePut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    if !put.restore.is_empty() {
        if patch {
            return Err(Error::BadRequest("Restore isn't allowed with PATCH".into()));
        }
        let snap = crate::instance::restore::check_restore(d, name, &put.restore, put.stateful)?;
        let n = name.to_string();
        return super::super::request::busy_task(
            d,
            name,
            "restore",
            "Restoring snapshot",
            move |d, _| crate::instance::restore::restore_now_with(d, &n, &snap, put.stateful),
        );
    }
    let _busy = d.claim(name, "update")?;
    let mut db = d.db.lock().expect("db lock");
    let cur = crate::instance::view::record_in(&db.data, name)?;
    response::check_etag(req.header("If-Match"), &etag_of(&cur))?;
    // After `lxc copy --refresh` its PUT of the source's config carries the source's volatile
    // keys: where they are what the refresh received, this instance's own values stay.
    let echo = d.refreshed.lock().expect("refreshed lock").remove(name);
    if let Some(echo) = echo.filter(|_| !patch) {
        put.config.retain(|k, v| {
            !(k.starts_with("volatile.") && cur.config.get(k) != Some(v) && echo.get(k) == Some(v))
        });
    }
    // Keys the daemon keeps (all `volatile.*` but a NIC's MAC) come back as a client read them,
    // maybe before a start or stop changed them (pylxd's `save()` sends its whole old config):
    // a value the daemon replaced or removed is taken for the daemon's own, which stays (LXD
    // would write the stale one). Any other value is refused below, as a key no user sets.
    {
        let superseded = d.superseded.lock().expect("superseded lock");
        let stale = |k: &str, v: &str| {
            superseded
                .get(name)
                .is_some_and(|l| l.iter().any(|(sk, sv)| sk == k && sv == v))
        };
        let daemons = |k: &str| k.starts_with("volatile.") && !config::is_nic_mac_key(k);
        put.config
            .retain(|k, v| !(daemons(k) && !cur.config.contains_key(k) && stale(k, v)));
        for (k, v) in put.config.iter_mut() {
            if daemons(k) && cur.config.get(k) != Some(v) && stale(k, v) {
                v.clone_from(&cur.config[k]);
            }
        }
    }
    let mut next = cur.clone();
    if patch {
        if body.get("config").is_some() {
            for (k, v) in &put.config {
                if v.is_empty() {
                    next.config.remove(k);
                } else {
                    next.config.insert(k.clone(), v.clone());
                }
            }
        }
        if body.get("devices").is_some() {
            for (k, v) in &put.devices {
                next.devices.insert(k.clone(), v.clone());
            }
        }
        if body.get("profiles").is_some() {
            next.profiles = put.profiles.clone();
        }
        if body.get("ephemeral").is_some() {
            next.ephemeral = put.ephemeral;
        }
        if body.get("description").is_some() {
            next.description = put.description.clone();
        }
    } else {
        // PUT replaces the user keys; volatile keys the client left out are kept.
        let mut c = crate::util::sort::entries_where(&put.config, |_, v| !v.is_empty());
        for (k, v) in &cur.config {
            if k.starts_with("volatile.") && !put.config.contains_key(k) {
                c.insert(k.clone(), v.clone());
            }
        }
        next.config = c;
        next.devices = put.devices.clone();
        next.profiles = put.profiles.clone();
        next.ephemeral = put.ephemeral;
        next.description = put.description.clone();
    }
    if !put.architecture.is_empty() && put.architecture != cur.architecture {
        return Err(Error::BadRequest(
            "The architecture of an instance cannot be changed".into(),
        ));
    }
    crate::instance::devices::drop_unset_keys(&mut next.devices);
    config::validate_config(&next.config, &cur.config, d.host.ncpus)?;
    for p in &next.profiles {
        if !db.data.profiles.contains_key(p) {
            return Err(Error::BadRequest(format!(
                "Requested profile {p:?} doesn't exist"
            )));
        }
    }
    let (ec, ed) = config::expand(
        &next.profiles,
        &db.data.profiles,
        &next.config,
        &next.devices,
    );
    if let Some(why) = crate::instance::view::root_disk_problem(&ed) {
        return Err(Error::BadRequest(why.into()));
    }
    if let Some(p) = crate::instance::pools::root_pool(&ed).filter(|p| *p != cur.pool) {
        return Err(Error::BadRequest(format!(
            "Cannot update root disk device pool name to {p:?} (the instance is on {:?})",
            cur.pool
        )));
    }
    devices::validate_devices(&next.devices, &db.data)?;
    let running = matches!(state_of(d, name)?, State::Running { .. });
    let macs =
        |c: &api::StringMap| crate::util::sort::entries_where(c, |k, _| config::is_nic_mac_key(k));
    if running && macs(&cur.config) != macs(&next.config) {
        return Err(Error::BadRequest(
            "A NIC's MAC address (volatile.<device>.hwaddr) changes while the instance is stopped"
                .into(),
        ));
    }
    // The managed networks whose rules and leases follow this instance's NICs, before or after
    // (running or not: a removed NIC's lease goes with it).
    let (oc, od) = config::expand(&cur.profiles, &db.data.profiles, &cur.config, &cur.devices);
    let mut nets = crate::instance::nics::networks_of(&db.data, &od);
    nets.extend(crate::instance::nics::networks_of(&db.data, &ed));
    // A static address another NIC on its network has is refused (LXD checks the config).
    crate::instance::nics::check_static_addresses(&db.data, name, &od, &ed)?;
    if running {
        // Devices that cannot change live are refused. `security.privileged`, `security.idmap.*`
        // and `raw.idmap` are taken for the next start, as LXD takes them: the running
        // container keeps the map it started with (its spec's).
        crate::instance::devices::check_live_change(&od, &ed, true)?;
        let root = d.volume_dir(&cur).join("rootfs");
        let limits_of = |c: &api::StringMap, devs: &api::Devices| -> Result<runtime::Limits> {
            let mut l = config::limits(c, d.host.total_memory, d.host.ncpus)?;
            l.io = crate::instance::devices::io_limits(d, &db.data, devs, &root)?;
            Ok(l)
        };
        let limits = limits_of(&ec, &ed)?;
        // The limits first: one the kernel refuses (a memory limit below what the container
        // uses) fails the update and changes nothing, as LXD's does.
        let run_dir = d.run_dir(name);
        let put_back = || {
            if let Ok(l) = limits_of(&oc, &od) {
                if let Err(e) = runtime::set_limits(&run_dir, &l) {
                    eprintln!("bivy: {name}: putting its limits back: {e}");
                }
            }
        };
        if let Err(e) = runtime::set_limits(&run_dir, &limits) {
            put_back();
            return Err(Error::BadRequest(format!("Failed to apply limits: {e}")));
        }
        // NICs and proxies are hot-plugged; the NICs' volatile keys are recorded with the new
        // config.
        if let State::Running { init_pid, .. } = state_of(d, name)? {
            let kv = crate::instance::devices::hotplug(
                d,
                &db.data,
                name,
                &cur.config,
                init_pid,
                &od,
                &ed,
            )
            .inspect_err(|_| put_back())?;
            for (k, v) in kv {
                match v {
                    Some(v) => next.config.insert(k, v),
                    None => next.config.remove(&k),
                };
            }
        }
    }
    if !running {
        // A new NIC's MAC, made now (a running instance's come from the hot-plug above).
        crate::instance::nics::fill_hwaddrs(&mut next.config, &ed)?;
    }
    db.update(|data| data.instances.insert(name.to_string(), next))
        .map_err(|e| Error::Internal(e.to_string()))?;
    drop(db);
    crate::instance::bridges::refresh(d, nets);
    // The root disk's size (a qgroup limit), also applied at every start.
    crate::instance::volumes::apply_root_size(d, name)?;
    d.events
        .lifecycle("instance-updated", &url(name), serde_json::json!({}));
    if patch {
        return Ok(response::empty());
    }
    // LXD answers a PUT with an operation (which `lxc config set` waits for).
    let op = d.ops.done("Updating instance", resources(name), None);
    Ok(response::operation(&op.to_api()))
}

fn rename(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::InstancePost = json(req)?;
    if body.migration && !body.project.is_empty() {
        return Err(Error::not_yet(
            "moving an instance to another project (bivy has the default project only)",
        ));
    }
    if body.migration && !body.pool.is_empty() {
        let new_name = match body.name.as_str() {
            "" => name.to_string(),
            n => n.to_string(),
        };
        let m = PoolMove {
            name,
            new_name: &new_name,
            pool: &body.pool,
            instance_only: body.instance_only || body.container_only,
            live: body.live,
        };
        moves::check(d, &m)?;
        let (n, pool) = (name.to_string(), body.pool.clone());
        let (instance_only, live) = (m.instance_only, m.live);
        return super::super::request::busy_task(
            d,
            name,
            "move",
            "Migrating instance",
            move |d, _| {
                moves::to_pool(
                    d,
                    &PoolMove {
                        name: &n,
                        new_name: &new_name,
                        pool: &pool,
                        instance_only,
                        live,
                    },
                )
            },
        );
    }
    if body.migration {
        let op = crate::migration::source::start(d, name, None, &body)?;
        return Ok(response::operation(&op.to_api()));
    }
    let guard = d.claim(name, "rename")?;
    moves::rename(d, name, &body.name)?;
    drop(guard);
    let op = d.ops.done("Renaming instance", resources(name), None);
    Ok(response::operation(&op.to_api()))
}

fn delete(d: &Daemon, name: &str) -> Result<Response> {
    let rec = record(d, name)?;
    if config::flag(&rec.config, "security.protection.delete") {
        return Err(Error::BadRequest("Instance is protected".into()));
    }
    if matches!(state_of(d, name)?, State::Running { .. }) {
        return Err(Error::BadRequest("Instance is running".into()));
    }
    let n = name.to_string();
    super::super::request::busy_task(d, name, "delete", "Deleting instance", move |d, _| {
        delete_now(d, &n)
    })
}

// ---------------------------------------------------------------------------------------------
// State changes

fn state_put(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::InstanceStatePut = json(req)?;
    record(d, name)?;
    let what: &'static str = match body.action.as_str() {
        "start" => "start",
        "stop" => "stop",
        "restart" => "restart",
        "freeze" => "freeze",
        "unfreeze" => "unfreeze",
        other => return Err(Error::BadRequest(format!("Unknown action {other:?}"))),
    };
    let desc = match what {
        "start" => "Starting instance",
        "stop" => "Stopping instance",
        "restart" => "Restarting instance",
        "freeze" => "Freezing instance",
        _ => "Unfreezing instance",
    };
    // LXD's answers to a pause or resume with nothing to do.
    if what == "freeze" || what == "unfreeze" {
        match state_of(d, name)? {
            State::Stopped { .. } => {
                return Err(Error::BadRequest("The container isn't running".into()))
            }
            State::Running { frozen: true, .. } if what == "freeze" => {
                return Err(Error::BadRequest("The container is already frozen".into()))
            }
            State::Running { frozen: false, .. } if what == "unfreeze" => {
                return Err(Error::BadRequest("The container is already running".into()))
            }
            State::Running { .. } => {}
        }
    }
    let n = name.to_string();
    // A force stop while a clean one waits (for an init that ignores it) takes over, as LXD's
    // reusable stop lock lets it: the container is killed and the waiting stop ends with it.
    if what == "stop" && body.force && !body.stateful && d.busy_with(name) == Some("stop") {
        return Ok(force_during_stop(d, name));
    }
    super::super::request::busy_task(d, name, what, desc, move |d2, _| {
        // LXD: with a timeout and without force a stop is a shutdown, which fails when the
        // instance has not stopped in time and leaves it running; with none (lxc's -1) bivy
        // waits up to `STOP_TIMEOUT_MAX`, then kills; a timeout of 0 (also a body without one)
        // is a forced stop (LXD's `instanceStatePut`).
        let mode = if body.force || body.timeout == 0 {
            runtime::StopMode::Force
        } else if body.timeout < 0 {
            runtime::StopMode::Clean(STOP_TIMEOUT_MAX)
        } else {
            runtime::StopMode::Shutdown(
                Duration::from_secs(body.timeout as u64).min(STOP_TIMEOUT_MAX),
            )
        };
        match what {
            "start" => {
                crate::instance::lifecycle::start_with(d2, &n, body.stateful).map_err(Error::from)
            }
            // Stateful: dump (CRIU) and stop; the instance keeps its state (`stateful: true`).
            "stop" if body.stateful => crate::instance::stateful::stop(d2, &n).map_err(Error::from),
            "restart" if body.stateful => crate::instance::stateful::stop(d2, &n)
                .and_then(|()| crate::instance::lifecycle::start_with(d2, &n, true))
                .map_err(Error::from),
            "stop" => stop(d2, &n, mode).map_err(Error::from).and_then(|()| {
                // An ephemeral instance is deleted when it stops (LXD semantics).
                if record(d2, &n).is_ok_and(|r| r.ephemeral) {
                    delete_now(d2, &n)?;
                }
                Ok(())
            }),
            "restart" => stop(d2, &n, mode)
                .and_then(|()| start(d2, &n))
                .map_err(Error::from),
            "freeze" => runtime::freeze(&d2.run_dir(&n))
                .map_err(Error::from)
                .map(|()| {
                    d2.events
                        .lifecycle("instance-paused", &url(&n), serde_json::json!({}));
                }),
            _ => runtime::unfreeze(&d2.run_dir(&n))
                .map_err(Error::from)
                .map(|()| {
                    d2.events
                        .lifecycle("instance-resumed", &url(&n), serde_json::json!({}));
                }),
        }
    })
}

/// `stop --force` of an instance whose clean stop is in progress: an operation that kills it
/// and ends once the waiting stop has recorded the end and let the instance go.
fn force_during_stop(d: &Daemon, name: &str) -> Response {
    let d2 = d.self_arc();
    let n = name.to_string();
    let class = crate::instance::operations::Class::Task;
    let op = d.ops.start(
        class,
        "Stopping instance",
        resources(name),
        None,
        vec![],
        move |_| {
            runtime::stop(&d2.run_dir(&n), runtime::StopMode::Force).map_err(|e| e.to_string())?;
            let t = std::time::Instant::now();
            while d2.busy_with(&n) == Some("stop") && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok::<(), String>(())
        },
    );
    response::operation(&op.to_api())
}

// ---------------------------------------------------------------------------------------------
// Start-up

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing's entry spliced from the kept instance document is the whole `InstanceFull`
    /// serialized at once, byte for byte.
    #[test]
    fn a_full_document_from_its_parts_is_the_whole_serialized() {
        let mut inst = api::Instance {
            name: "c1".into(),
            status: "Running".into(),
            status_code: status::RUNNING,
            ..Default::default()
        };
        inst.config
            .insert("volatile.idmap.base".into(), "100000".into());
        inst.expanded_devices.insert(
            "root".into(),
            [("path".to_string(), "/".to_string())].into(),
        );
        let state = api::InstanceState {
            status: "Running".into(),
            pid: 42,
            ..Default::default()
        };
        let snapshots = vec![api::InstanceSnapshot {
            name: "s0".into(),
            ..Default::default()
        }];
        let backups = vec![serde_json::json!({"name": "b0"})];
        let whole = serde_json::to_vec(&api::InstanceFull {
            instance: inst.clone(),
            backups: Some(backups.clone()),
            state: Some(state.clone()),
            snapshots: Some(snapshots.clone()),
        })
        .unwrap();
        let doc = serde_json::to_vec(&inst).unwrap();
        let spliced = full_json(&doc, &backups, &state, &snapshots).unwrap();
        assert_eq!(
            String::from_utf8(spliced).unwrap(),
            String::from_utf8(whole).unwrap()
        );
        assert!(full_json(b"[]", &backups, &state, &snapshots).is_err());
    }
}
