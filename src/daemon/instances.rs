//! Instances: the model (records + expansion + runtime state), the REST handlers for
//! `/1.0/instances[/NAME[/state|/logs|/console|/metadata]]`, the lifecycle (create, start, stop,
//! restart, freeze, rename, delete), recovery after a crash and autostart.
//!
//! Crash consistency: the database record is the commit point. Create unpacks into
//! `<volume>.tmp` and renames it into place before the record is written; delete removes the
//! record before the data. `recover` removes any volume no record names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::db::InstanceRecord;
use super::filter::Filter;
use super::idmap;
use super::operations::Class;
use super::response::{self, Error, Result};
use super::routes::{json, recursion};
use super::{config, Daemon};
use crate::api::{self, status, Devices, StringMap};
use crate::http::{Request, Response};
use crate::image;
use crate::runtime::{self, RootfsMode, State};
use crate::util::time;

/// Default clean-stop timeout when the client gives none (LXD: 30 s for `lxc stop`... the client
/// sends -1 and LXD then waits forever; we cap at 10 minutes).
const STOP_TIMEOUT_MAX: Duration = Duration::from_secs(600);

pub fn url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

fn resources(name: &str) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert("containers".into(), vec![format!("/1.0/containers/{name}")]);
    m.insert("instances".into(), vec![url(name)]);
    m
}

pub fn has_root_disk(devices: &Devices) -> bool {
    devices.values().any(|d| {
        d.get("type").map(String::as_str) == Some("disk")
            && d.get("path").map(String::as_str) == Some("/")
    })
}

fn not_found() -> Error {
    Error::NotFound("Instance not found".into())
}

fn record(d: &Daemon, name: &str) -> Result<InstanceRecord> {
    d.db.lock()
        .expect("db lock")
        .data
        .instances
        .get(name)
        .cloned()
        .ok_or_else(not_found)
}

fn expanded(d: &Daemon, rec: &InstanceRecord) -> (StringMap, Devices) {
    let db = d.db.lock().expect("db lock");
    config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
}

fn state_of(d: &Daemon, name: &str) -> State {
    runtime::state(&d.run_dir(name)).unwrap_or(State::Stopped { last_exit: None })
}

fn status_of(s: &State) -> (&'static str, u16) {
    match s {
        State::Running { frozen: true, .. } => ("Frozen", status::FROZEN),
        State::Running { .. } => ("Running", status::RUNNING),
        State::Stopped { .. } => ("Stopped", status::STOPPED),
    }
}

fn to_api(d: &Daemon, name: &str, rec: &InstanceRecord, st: &State) -> api::Instance {
    let (ec, ed) = expanded(d, rec);
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

fn state_api(d: &Daemon, name: &str, st: &State) -> api::InstanceState {
    let (s, code) = status_of(st);
    let mut out = api::InstanceState {
        status: s.into(),
        status_code: code,
        ..Default::default()
    };
    if let State::Running { init_pid, .. } = st {
        out.pid = i64::from(*init_pid);
        if let Ok(stats) = runtime::stats(&d.run_dir(name)) {
            out.processes = stats.processes as i64;
            out.memory.usage = stats.memory_usage as i64;
            out.memory.usage_peak = stats.memory_peak as i64;
            out.memory.swap_usage = stats.swap_usage as i64;
            out.memory.swap_usage_peak = stats.swap_peak as i64;
            out.cpu.usage = stats.cpu_ns as i64;
        }
    } else {
        out.processes = 0;
    }
    out
}

fn full(d: &Daemon, name: &str, rec: &InstanceRecord) -> api::InstanceFull {
    let st = state_of(d, name);
    api::InstanceFull {
        instance: to_api(d, name, rec, &st),
        backups: Some(vec![]),
        state: Some(state_api(d, name, &st)),
        snapshots: Some(vec![]),
    }
}

// ---------------------------------------------------------------------------------------------
// Collection

pub fn list(d: &Daemon, req: &Request) -> Result<Response> {
    let filter = Filter::parse(req.query("filter").unwrap_or(""))?;
    let rec_level = recursion(req);
    let records: Vec<(String, InstanceRecord)> =
        d.db.lock()
            .expect("db lock")
            .data
            .instances
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    let mut out: Vec<serde_json::Value> = Vec::new();
    for (name, rec) in records {
        let st = state_of(d, &name);
        let inst = to_api(d, &name, &rec, &st);
        let v = serde_json::to_value(&inst).unwrap_or_default();
        if !filter.matches(&v) {
            continue;
        }
        out.push(match rec_level {
            0 => serde_json::json!(url(&name)),
            1 => v,
            _ => serde_json::to_value(api::InstanceFull {
                instance: inst,
                backups: Some(vec![]),
                state: Some(state_api(d, &name, &st)),
                snapshots: Some(vec![]),
            })
            .unwrap_or_default(),
        });
    }
    Ok(response::sync(&out))
}

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
        let s = super::operations::secret();
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
    if req
        .header("Content-Type")
        .is_some_and(|c| c.starts_with("application/octet-stream"))
    {
        return Err(Error::not_yet("creating instances from backups"));
    }
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
    let profiles = body
        .put
        .profiles
        .clone()
        .unwrap_or_else(|| vec!["default".into()]);
    let config_in = body.put.config.clone().unwrap_or_default();
    let devices_in = body.put.devices.clone().unwrap_or_default();
    config::validate_config(&config_in, &StringMap::new())?;
    config::validate_devices(&devices_in)?;
    {
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
        if !has_root_disk(&devs) {
            return Err(Error::BadRequest("No root device could be found".into()));
        }
    }
    let source = body.source.clone();
    let image = match source.kind.as_str() {
        "image" => Some(resolve_image(d, &source)?),
        "none" | "" => None,
        "copy" => return Err(Error::not_yet("instance copy (source type \"copy\")")),
        "migration" => return Err(Error::not_yet("migration")),
        other => return Err(Error::BadRequest(format!("Unknown source type {other:?}"))),
    };
    let guard_name = name.clone();
    // Reserve the name now so two concurrent creates cannot both pass the check.
    d.busy_insert(&guard_name, "create")?;
    let d2 = d.self_arc();
    let op = d.ops.start(
        Class::Task,
        "Creating instance",
        resources(&name),
        None,
        vec![],
        move |_op| {
            let res = create_now(&d2, &name, &body, profiles, config_in, devices_in, image);
            d2.busy.lock().expect("busy lock").remove(&name);
            res
        },
    );
    Ok(response::operation(&op.to_api()))
}

fn resolve_image(d: &Daemon, s: &api::InstanceSource) -> Result<api::Image> {
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
    Err(Error::BadRequest(
        "Image source needs a fingerprint, an alias or properties".into(),
    ))
}

/// Removes a half-made volume unless disarmed.
struct VolumeRevert(Option<PathBuf>);

impl Drop for VolumeRevert {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn create_now(
    d: &Daemon,
    name: &str,
    body: &api::InstancesPost,
    profiles: Vec<String>,
    mut cfg: StringMap,
    devices: Devices,
    image: Option<api::Image>,
) -> Result<()> {
    let volume = super::operations::uuid();
    let final_dir = d.volume_dir(&volume);
    let tmp = d.volume_dir(&format!("{volume}.tmp"));
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::Internal(format!("{}: {e}", tmp.display())))?;
    let mut revert = VolumeRevert(Some(tmp.clone()));
    let mut architecture = d.host.architecture.clone();
    let (expanded_cfg, _) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&profiles, &db.data.profiles, &cfg, &devices)
    };
    let privileged = config::flag(&expanded_cfg, "security.privileged");
    if let Some(img) = &image {
        let meta = d.images.metadata(&img.fingerprint)?;
        architecture = img.architecture.clone();
        d.images.unpack(
            &img.fingerprint,
            &tmp.join("rootfs"),
            &tmp.join("templates"),
            &image::UnpackOpts {
                skip_devices: !privileged,
                max_bytes: 64 << 30,
            },
        )?;
        let m = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Internal(e.to_string()))?;
        crate::util::fs::atomic_write(&tmp.join("metadata.json"), &m)
            .map_err(|e| Error::Internal(e.to_string()))?;
        for (k, v) in &img.put.properties {
            cfg.entry(format!("image.{k}")).or_insert_with(|| v.clone());
        }
        cfg.insert("volatile.base_image".into(), img.fingerprint.clone());
        if !meta.templates.is_empty() {
            cfg.insert("volatile.apply_template".into(), "create".into());
        }
        let _ = d.images.touch(&img.fingerprint);
    } else {
        std::fs::create_dir_all(tmp.join("rootfs")).map_err(|e| Error::Internal(e.to_string()))?;
    }
    if !body.put.architecture.is_empty()
        && image.is_none()
        && body.put.architecture.parse::<u32>().is_err()
    {
        architecture = body.put.architecture.clone();
    }
    cfg.insert("volatile.uuid".into(), super::operations::uuid());
    // The id map this instance will use, and how its rootfs is stored.
    let taken = isolated_bases(d);
    let map = idmap::compute(&expanded_cfg, &taken)?;
    if privileged {
        cfg.insert("volatile.idmap.next".into(), "[]".into());
        cfg.insert("volatile.last_state.idmap".into(), "[]".into());
    } else {
        cfg.insert(
            "volatile.idmap.base".into(),
            map.uid.first().map_or(0, |e| e.hostid).to_string(),
        );
        cfg.insert("volatile.idmap.next".into(), map.to_volatile());
        // Idmapped mounts where the filesystem has them (no chown); otherwise shift the ids on
        // disk once and record the map they were shifted to (LXD's volatile.last_state.idmap).
        if runtime::rootfs_supports_idmap(&tmp) {
            cfg.insert("volatile.last_state.idmap".into(), "[]".into());
        } else {
            runtime::shift_rootfs(&tmp.join("rootfs"), &map.uid, &map.gid)?;
            cfg.insert("volatile.last_state.idmap".into(), map.to_volatile());
        }
    }
    std::fs::rename(&tmp, &final_dir)
        .map_err(|e| Error::Internal(format!("{}: {e}", final_dir.display())))?;
    revert.0 = Some(final_dir.clone());
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
        stateful: false,
        volume,
    };
    let mut db = d.db.lock().expect("db lock");
    if db.data.instances.contains_key(name) {
        return Err(Error::Conflict(format!("Instance {name:?} already exists")));
    }
    db.update(|data| data.instances.insert(name.to_string(), rec))
        .map_err(|e| Error::Internal(format!("saving instance: {e}")))?;
    drop(db);
    revert.0 = None;
    d.events
        .lifecycle("instance-created", &url(name), serde_json::json!({}));
    Ok(())
}

fn isolated_bases(d: &Daemon) -> Vec<u32> {
    let db = d.db.lock().expect("db lock");
    db.data
        .instances
        .values()
        .filter(|r| {
            r.config
                .get("security.idmap.isolated")
                .is_some_and(|v| v == "true")
        })
        .filter_map(|r| {
            r.config
                .get("volatile.idmap.base")
                .and_then(|v| v.parse().ok())
        })
        .collect()
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
            record(d, name)?;
            Ok(response::sync(&state_api(d, name, &state_of(d, name))))
        }
        (["state"], "PUT") => state_put(d, req, name),
        (["exec"], "POST") => super::exec::exec(d, req, name),
        (["files"], "GET" | "HEAD" | "POST" | "DELETE") => {
            let rec = record(d, name)?;
            super::files::handle(d, req, &rec)
        }
        (["logs"], "GET") => logs_list(d, name),
        (["logs", file], "GET") => log_get(d, name, file),
        (["logs", file], "DELETE") => log_delete(d, name, file),
        (["console"], "GET") => log_get(d, name, "console.log"),
        (["console"], "POST") => super::exec::console(d, req, name),
        (["console"], "DELETE") => {
            record(d, name)?;
            let _ = std::fs::write(d.log_dir(name).join("console.log"), b"");
            Ok(response::empty())
        }
        (["metadata"], "GET") => metadata_get(d, name),
        (["metadata", "templates"], "GET") => templates(d, req, name),
        (["metadata"], "PUT") => metadata_put(d, req, name, false),
        (["metadata"], "PATCH") => metadata_put(d, req, name, true),
        (["metadata", "templates"], "POST" | "PUT") => template_put(d, req, name),
        (["metadata", "templates"], "DELETE") => template_delete(d, req, name),
        (["snapshots"], "GET") => {
            record(d, name)?;
            Ok(response::sync(&Vec::<String>::new()))
        }
        (["snapshots", ..], _) => Err(Error::not_yet("snapshots")),
        (["backups"], "GET") => {
            record(d, name)?;
            Ok(response::sync(&Vec::<String>::new()))
        }
        (["backups", ..], _) => Err(Error::not_yet("instance backups")),
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
        Ok(response::sync_etag(&full(d, name, &rec), Some(etag)))
    } else {
        let st = state_of(d, name);
        Ok(response::sync_etag(&to_api(d, name, &rec, &st), Some(etag)))
    }
}

fn put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let put: api::InstancePut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    if !put.restore.is_empty() {
        if patch {
            return Err(Error::BadRequest("Restore isn't allowed with PATCH".into()));
        }
        return Err(Error::not_yet("snapshot restore"));
    }
    let _busy = d.claim(name, "update")?;
    let mut db = d.db.lock().expect("db lock");
    let cur = db.data.instances.get(name).cloned().ok_or_else(not_found)?;
    response::check_etag(req.header("If-Match"), &etag_of(&cur))?;
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
        let mut c: StringMap = put
            .config
            .clone()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
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
    config::validate_config(&next.config, &cur.config)?;
    config::validate_devices(&next.devices)?;
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
    if !has_root_disk(&ed) {
        return Err(Error::BadRequest("No root device could be found".into()));
    }
    let running = matches!(state_of(d, name), State::Running { .. });
    if running {
        // Keys that only take effect at start are refused on a running instance when changed.
        let (oc, _) = config::expand(&cur.profiles, &db.data.profiles, &cur.config, &cur.devices);
        for k in [
            "security.privileged",
            "security.idmap.isolated",
            "security.idmap.base",
            "security.idmap.size",
            "raw.idmap",
        ] {
            if oc.get(k) != ec.get(k) {
                return Err(Error::BadRequest(format!(
                    "{k} can't be changed while the instance is running"
                )));
            }
        }
        config::limits(&ec, d.host.total_memory, d.host.ncpus)?;
    }
    db.update(|data| data.instances.insert(name.to_string(), next))
        .map_err(|e| Error::Internal(e.to_string()))?;
    drop(db);
    if running {
        apply_live_limits(d, name);
    }
    d.events
        .lifecycle("instance-updated", &url(name), serde_json::json!({}));
    if patch {
        return Ok(response::empty());
    }
    // LXD answers a PUT with an operation (which `lxc config set` waits for).
    let op = d.ops.start(
        Class::Task,
        "Updating instance",
        resources(name),
        None,
        vec![],
        |_| Ok(()),
    );
    Ok(response::operation(&op.to_api()))
}

/// Push the current limits to a running instance (after a config or profile change).
pub fn apply_live_limits(d: &Daemon, name: &str) {
    let Ok(rec) = record(d, name) else { return };
    if !matches!(state_of(d, name), State::Running { .. }) {
        return;
    }
    let (ec, _) = expanded(d, &rec);
    if let Ok(l) = config::limits(&ec, d.host.total_memory, d.host.ncpus) {
        if let Err(e) = runtime::set_limits(&d.run_dir(name), &l) {
            eprintln!("bivy: {name}: applying limits: {e}");
        }
    }
}

fn rename(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::InstancePost = json(req)?;
    if body.migration {
        return Err(Error::not_yet("migration"));
    }
    config::validate_instance_name(&body.name)?;
    record(d, name)?;
    let new = body.name.clone();
    let guard = d.claim(name, "rename")?;
    if matches!(state_of(d, name), State::Running { .. }) {
        return Err(Error::BadRequest(
            "Renaming of running instance not allowed".into(),
        ));
    }
    {
        let mut db = d.db.lock().expect("db lock");
        if db.data.instances.contains_key(&new)
            || d.busy.lock().expect("busy lock").contains_key(&new)
        {
            return Err(Error::Conflict(format!("Name {new:?} already in use")));
        }
        db.update(|data| {
            if let Some(mut r) = data.instances.remove(name) {
                if r.config.contains_key("volatile.base_image") {
                    r.config
                        .insert("volatile.apply_template".into(), "rename".into());
                }
                data.instances.insert(new.clone(), r);
            }
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
    }
    drop(guard);
    let _ = std::fs::rename(d.log_dir(name), d.log_dir(&new));
    let _ = std::fs::remove_dir_all(d.run_dir(name));
    d.events.lifecycle(
        "instance-renamed",
        &url(&new),
        serde_json::json!({"old_name": name}),
    );
    let op = d.ops.start(
        Class::Task,
        "Renaming instance",
        resources(name),
        None,
        vec![],
        |_| Ok(()),
    );
    Ok(response::operation(&op.to_api()))
}

fn delete(d: &Daemon, name: &str) -> Result<Response> {
    let rec = record(d, name)?;
    if config::flag(&rec.config, "security.protection.delete") {
        return Err(Error::BadRequest("Instance is protected".into()));
    }
    if matches!(state_of(d, name), State::Running { .. }) {
        return Err(Error::BadRequest("Instance is running".into()));
    }
    d.busy_insert(name, "delete")?;
    let d2 = d.self_arc();
    let n = name.to_string();
    let op = d.ops.start(
        Class::Task,
        "Deleting instance",
        resources(name),
        None,
        vec![],
        move |_| {
            let r = delete_now(&d2, &n);
            d2.busy.lock().expect("busy lock").remove(&n);
            r
        },
    );
    Ok(response::operation(&op.to_api()))
}

fn delete_now(d: &Daemon, name: &str) -> Result<()> {
    if matches!(state_of(d, name), State::Running { .. }) {
        return Err(Error::BadRequest("Instance is running".into()));
    }
    let rec = {
        let mut db = d.db.lock().expect("db lock");
        let rec = db.data.instances.get(name).cloned().ok_or_else(not_found)?;
        db.update(|data| data.instances.remove(name))
            .map_err(|e| Error::Internal(e.to_string()))?;
        rec
    };
    // The record is gone (commit point); data removal failures are retried by `recover`.
    let _ = std::fs::remove_dir_all(d.volume_dir(&rec.volume));
    let _ = std::fs::remove_dir_all(d.log_dir(name));
    let _ = std::fs::remove_dir_all(d.run_dir(name));
    d.events
        .lifecycle("instance-deleted", &url(name), serde_json::json!({}));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// State changes

fn state_put(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::InstanceStatePut = json(req)?;
    record(d, name)?;
    if body.stateful {
        return Err(Error::not_yet("stateful stop/start (needs CRIU)"));
    }
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
    d.busy_insert(name, what)?;
    let d2 = d.self_arc();
    let n = name.to_string();
    let op = d.ops.start(
        Class::Task,
        desc,
        resources(name),
        None,
        vec![],
        move |_| {
            let timeout = if body.timeout < 0 {
                STOP_TIMEOUT_MAX
            } else {
                Duration::from_secs(body.timeout as u64).min(STOP_TIMEOUT_MAX)
            };
            let r = match what {
                "start" => start(&d2, &n),
                "stop" => stop(&d2, &n, body.force, timeout).and_then(|()| {
                    // An ephemeral instance is deleted when it stops (LXD semantics).
                    if record(&d2, &n).is_ok_and(|r| r.ephemeral) {
                        delete_now(&d2, &n)?;
                    }
                    Ok(())
                }),
                "restart" => stop(&d2, &n, body.force, timeout).and_then(|()| start(&d2, &n)),
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
            };
            d2.busy.lock().expect("busy lock").remove(&n);
            r
        },
    );
    Ok(response::operation(&op.to_api()))
}

/// Set `volatile.last_state.power` (and optionally other keys) without touching anything else.
fn set_volatile(d: &Daemon, name: &str, kv: &[(&str, Option<String>)]) {
    let mut db = d.db.lock().expect("db lock");
    if !db.data.instances.contains_key(name) {
        return;
    }
    let _ = db.update(|data| {
        if let Some(r) = data.instances.get_mut(name) {
            for (k, v) in kv {
                match v {
                    Some(v) => {
                        r.config.insert((*k).to_string(), v.clone());
                    }
                    None => {
                        r.config.remove(*k);
                    }
                }
            }
        }
    });
}

/// Start an instance (the caller holds its busy mark).
pub fn start(d: &Daemon, name: &str) -> Result<()> {
    let rec = record(d, name)?;
    if let State::Running { frozen, .. } = state_of(d, name) {
        if frozen {
            return runtime::unfreeze(&d.run_dir(name)).map_err(Error::from);
        }
        return Err(Error::BadRequest("The instance is already running".into()));
    }
    let (ec, ed) = expanded(d, &rec);
    for (dev, conf) in &ed {
        let t = conf.get("type").map(String::as_str).unwrap_or("");
        let is_root = t == "disk" && conf.get("path").map(String::as_str) == Some("/");
        if !is_root && t != "none" {
            return Err(Error::not_yet(&format!(
                "device {dev:?} of type {t:?} (only the root disk is supported yet)"
            )));
        }
    }
    for k in ["snapshots.schedule", "snapshots.expiry"] {
        if ec.get(k).is_some_and(|v| !v.is_empty()) {
            return Err(Error::not_yet(k));
        }
    }
    let privileged = config::flag(&ec, "security.privileged");
    let vol = d.volume_dir(&rec.volume);
    let rootfs = vol.join("rootfs");
    // Id map: next becomes current.
    let map = if privileged {
        None
    } else {
        let next = rec
            .config
            .get("volatile.idmap.next")
            .cloned()
            .unwrap_or_default();
        let m = idmap::Map::from_volatile(&next)
            .filter(|m| !m.uid.is_empty())
            .map_or_else(|| idmap::compute(&ec, &isolated_bases(d)), Ok)?;
        Some(m)
    };
    let last = rec
        .config
        .get("volatile.last_state.idmap")
        .cloned()
        .unwrap_or_else(|| "[]".into());
    let mode = if privileged {
        if last != "[]" {
            return Err(Error::not_yet(
                "making a shifted rootfs privileged (unshifting)",
            ));
        }
        RootfsMode::Privileged
    } else if last == "[]" {
        RootfsMode::Idmapped
    } else {
        let m = map.as_ref().expect("unprivileged has a map");
        if idmap::Map::from_volatile(&last).as_ref() != Some(m) {
            return Err(Error::not_yet("re-shifting a rootfs to a changed id map"));
        }
        RootfsMode::Shifted
    };
    // Templates pending from create/copy/rename, then `start` templates.
    let meta_path = vol.join("metadata.json");
    if let Ok(bytes) = std::fs::read(&meta_path) {
        if let Ok(meta) = serde_json::from_slice::<api::ImageMetadata>(&bytes) {
            let ctx = image::template::Context {
                name: name.to_string(),
                architecture: rec.architecture.clone(),
                privileged,
                ephemeral: rec.ephemeral,
                config: ec.clone(),
                devices: ed.clone(),
            };
            if let Some(trigger) = rec.config.get("volatile.apply_template") {
                image::apply_templates(&meta, &vol.join("templates"), &rootfs, trigger, &ctx)?;
            }
            image::apply_templates(&meta, &vol.join("templates"), &rootfs, "start", &ctx)?;
        }
    }
    let limits = config::limits(&ec, d.host.total_memory, d.host.ncpus)?;
    let mut env: Vec<(String, String)> = vec![("container".into(), "lxc".into())];
    for (k, v) in &ec {
        if let Some(var) = k.strip_prefix("environment.") {
            env.push((var.to_string(), v.clone()));
        }
    }
    let log_dir = d.log_dir(name);
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| Error::Internal(format!("{}: {e}", log_dir.display())))?;
    let spec = runtime::Spec {
        name: name.to_string(),
        rootfs,
        rootfs_mode: mode,
        uid_map: map.as_ref().map(|m| m.uid.clone()).unwrap_or_default(),
        gid_map: map.as_ref().map(|m| m.gid.clone()).unwrap_or_default(),
        hostname: name.to_string(),
        init: vec!["/sbin/init".into()],
        env,
        limits,
        nesting: config::flag(&ec, "security.nesting"),
        seccomp_policy: seccomp_policy(&ec)?,
        apparmor_raw: ec.get("raw.apparmor").cloned().unwrap_or_default(),
        console_log: log_dir.join("console.log"),
        cgroup: d.cgroup_suffix.as_ref().map(|sfx| format!("{name}.{sfx}")),
    };
    let run_dir = d.run_dir(name);
    if let Err(e) = runtime::start(&spec, &run_dir) {
        log_line(&log_dir, &format!("start failed: {e}"));
        return Err(e.into());
    }
    log_line(&log_dir, "started");
    let mut kv: Vec<(&str, Option<String>)> = vec![
        ("volatile.last_state.power", Some("RUNNING".into())),
        ("volatile.apply_template", None),
    ];
    if let Some(m) = &map {
        kv.push(("volatile.idmap.current", Some(m.to_volatile())));
    }
    set_volatile(d, name, &kv);
    {
        let mut db = d.db.lock().expect("db lock");
        let now = time::now();
        let _ = db.update(|data| {
            if let Some(r) = data.instances.get_mut(name) {
                r.last_used_at = now;
            }
        });
    }
    watch(d.self_arc(), name.to_string());
    d.events
        .lifecycle("instance-started", &url(name), serde_json::json!({}));
    Ok(())
}

/// Append a timestamped line to the instance's `lxc.log` (what `lxc info --show-log` shows).
fn log_line(log_dir: &std::path::Path, msg: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("lxc.log"))
    {
        let _ = writeln!(f, "{} {msg}", time::now());
    }
}

/// The seccomp policy text for an instance (`raw.seccomp`, `security.syscalls.*`).
fn seccomp_policy(ec: &StringMap) -> Result<String> {
    let get = |k: &str| ec.get(k).cloned().unwrap_or_default();
    let cfg = runtime::seccomp::PolicyConfig {
        raw: ec.get("raw.seccomp").filter(|v| !v.is_empty()).cloned(),
        deny_default: ec
            .get("security.syscalls.deny_default")
            .is_none_or(|v| v != "false"),
        deny: get("security.syscalls.deny"),
        allow: get("security.syscalls.allow"),
        deny_compat: config::flag(ec, "security.syscalls.deny_compat"),
    };
    runtime::seccomp::build_policy(&cfg)
        .map_err(|e| Error::BadRequest(format!("seccomp policy: {e}")))
}

/// Stop an instance (the caller holds its busy mark).
pub fn stop(d: &Daemon, name: &str, force: bool, timeout: Duration) -> Result<()> {
    if !matches!(state_of(d, name), State::Running { .. }) {
        return Err(Error::BadRequest("The instance is already stopped".into()));
    }
    let mode = if force {
        runtime::StopMode::Force
    } else {
        runtime::StopMode::Clean(timeout)
    };
    runtime::stop(&d.run_dir(name), mode)?;
    set_volatile(
        d,
        name,
        &[("volatile.last_state.power", Some("STOPPED".into()))],
    );
    Ok(())
}

/// Follow a running container until it stops: record it, restart it after an in-container
/// reboot, delete it when ephemeral.
fn watch(d: Arc<Daemon>, name: String) {
    let Ok(Some(fd)) = runtime::monitor_pidfd(&d.run_dir(&name)) else {
        return;
    };
    std::thread::spawn(move || {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        loop {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(n) if n > 0 => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => continue,
                Err(_) => return,
            }
        }
        let last = match state_of(&d, &name) {
            State::Stopped { last_exit } => last_exit,
            State::Running { .. } => return, // restarted in the meantime; its own watcher follows it
        };
        d.events
            .lifecycle("instance-stopped", &url(&name), serde_json::json!({}));
        let Ok(rec) = record(&d, &name) else { return };
        // An explicit stop/restart/delete operation owns what happens next.
        if d.busy.lock().expect("busy lock").contains_key(&name) {
            return;
        }
        set_volatile(
            &d,
            &name,
            &[("volatile.last_state.power", Some("STOPPED".into()))],
        );
        if rec.ephemeral {
            if d.busy_insert(&name, "delete").is_ok() {
                let _ = delete_now(&d, &name);
                d.busy.lock().expect("busy lock").remove(&name);
            }
            return;
        }
        // `reboot` inside: the kernel ends init with SIGHUP; start it again like LXD does.
        if last.is_some_and(|e| e.code == 128 + libc::SIGHUP)
            && d.busy_insert(&name, "restart").is_ok()
        {
            if let Err(e) = start(&d, &name) {
                eprintln!("bivy: {name}: restart after reboot failed: {e}");
            }
            d.busy.lock().expect("busy lock").remove(&name);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Publish

/// `POST /1.0/images` with source `instance`: pack a stopped instance into a new image.
pub fn publish(d: &Daemon, body: api::ImagesPost) -> Result<Response> {
    let src = body.source.clone().unwrap_or_default();
    let name = src.name.clone();
    if name.contains('/') {
        return Err(Error::not_yet("publishing snapshots"));
    }
    let rec = record(d, &name)?;
    if matches!(state_of(d, &name), State::Running { .. }) {
        return Err(Error::BadRequest(
            "The instance is running; stop it first (lxc publish --force does)".into(),
        ));
    }
    if rec
        .config
        .get("volatile.last_state.idmap")
        .is_some_and(|v| v != "[]")
    {
        return Err(Error::not_yet(
            "publishing an instance whose rootfs is shifted",
        ));
    }
    let algo = if body.compression_algorithm.is_empty() {
        d.db.lock()
            .expect("db lock")
            .data
            .config
            .get("images.compression_algorithm")
            .cloned()
            .unwrap_or_default()
    } else {
        body.compression_algorithm.clone()
    };
    let compression = image::Compression::from_name(&algo)?;
    d.busy_insert(&name, "publish")?;
    let d2 = d.self_arc();
    let res = resources(&name);
    let op = d.ops.start(
        Class::Task,
        "Publishing instance",
        res,
        None,
        vec![],
        move |op| {
            let r = publish_now(&d2, &name, &rec, &body, compression, &op);
            d2.busy.lock().expect("busy lock").remove(&name);
            r
        },
    );
    Ok(response::operation(&op.to_api()))
}

fn publish_now(
    d: &Daemon,
    name: &str,
    rec: &InstanceRecord,
    body: &api::ImagesPost,
    compression: image::Compression,
    op: &super::operations::Op,
) -> Result<()> {
    let (meta, vol) = metadata_of(d, name)?;
    let mut meta = meta;
    meta.creation_date = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs() as i64);
    meta.architecture = rec.architecture.clone();
    meta.properties.extend(body.put.properties.clone());
    let templates = vol.join("templates");
    let opts = image::ImportOpts {
        filename: body.filename.clone(),
        public: body.put.public,
        auto_update: false,
        properties: body.put.properties.clone(),
        profiles: if body.put.profiles.is_empty() {
            vec!["default".into()]
        } else {
            body.put.profiles.clone()
        },
        ..Default::default()
    };
    let img = d.images.publish(
        &vol.join("rootfs"),
        &meta,
        templates.is_dir().then_some(templates.as_path()),
        compression,
        &opts,
    )?;
    super::endpoints::image_created(d, op, &img, &body.aliases)
}

// ---------------------------------------------------------------------------------------------
// Logs, metadata

fn logs_list(d: &Daemon, name: &str) -> Result<Response> {
    record(d, name)?;
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d.log_dir(name)) {
        for e in rd.flatten() {
            out.push(format!(
                "/1.0/instances/{name}/logs/{}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    Ok(response::sync(&out))
}

fn log_path(d: &Daemon, name: &str, file: &str) -> Result<PathBuf> {
    if file.is_empty() || file.contains('/') || file.starts_with('.') {
        return Err(Error::BadRequest(format!("Invalid log file name {file:?}")));
    }
    Ok(d.log_dir(name).join(file))
}

fn log_get(d: &Daemon, name: &str, file: &str) -> Result<Response> {
    record(d, name)?;
    let p = log_path(d, name, file)?;
    match std::fs::File::open(&p) {
        Ok(f) => {
            let len = f.metadata().map(|m| m.len()).ok();
            Ok(response::raw(
                200,
                "application/octet-stream",
                crate::http::Body::Reader(Box::new(f), len),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if file == "console.log" || file == "lxc.log" {
                Ok(response::raw(
                    200,
                    "application/octet-stream",
                    crate::http::Body::Empty,
                ))
            } else {
                Err(Error::NotFound("Log file not found".into()))
            }
        }
        Err(e) => Err(Error::Internal(format!("{}: {e}", p.display()))),
    }
}

fn log_delete(d: &Daemon, name: &str, file: &str) -> Result<Response> {
    record(d, name)?;
    if file == "console.log" || file == "lxc.log" {
        return Err(Error::BadRequest("Only exec logs can be deleted".into()));
    }
    let p = log_path(d, name, file)?;
    std::fs::remove_file(&p).map_err(|_| Error::NotFound("Log file not found".into()))?;
    Ok(response::empty())
}

fn metadata_of(d: &Daemon, name: &str) -> Result<(api::ImageMetadata, PathBuf)> {
    let rec = record(d, name)?;
    let vol = d.volume_dir(&rec.volume);
    let meta = match std::fs::read(vol.join("metadata.json")) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::Internal(format!("metadata.json: {e}")))?,
        Err(_) => api::ImageMetadata {
            architecture: rec.architecture.clone(),
            ..Default::default()
        },
    };
    Ok((meta, vol))
}

fn metadata_get(d: &Daemon, name: &str) -> Result<Response> {
    let (meta, _) = metadata_of(d, name)?;
    let etag = response::etag(&meta);
    Ok(response::sync_etag(&meta, Some(etag)))
}

/// `PUT`/`PATCH .../metadata`: replace or merge the instance's metadata.yaml (as JSON).
fn metadata_put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let _busy = d.claim(name, "update metadata")?;
    let (cur, vol) = metadata_of(d, name)?;
    response::check_etag(req.header("If-Match"), &response::etag(&cur))?;
    let new: api::ImageMetadata = if patch {
        let mut merged = serde_json::to_value(&cur).map_err(|e| Error::Internal(e.to_string()))?;
        if let (Some(m), Some(b)) = (merged.as_object_mut(), body.as_object()) {
            for (k, v) in b {
                m.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(merged)
    } else {
        serde_json::from_value(body)
    }
    .map_err(|e| Error::BadRequest(format!("Invalid metadata: {e}")))?;
    if !image::known_architecture(&new.architecture) {
        return Err(Error::BadRequest(format!(
            "Invalid metadata: unknown architecture {:?}",
            new.architecture
        )));
    }
    for (path, t) in &new.templates {
        if !path.starts_with('/') || t.template.is_empty() || t.template.contains('/') {
            return Err(Error::BadRequest(format!(
                "Invalid metadata: bad template entry for {path:?}"
            )));
        }
    }
    let data = serde_json::to_vec_pretty(&new).map_err(|e| Error::Internal(e.to_string()))?;
    crate::util::fs::atomic_write(&vol.join("metadata.json"), &data)
        .map_err(|e| Error::Internal(format!("metadata.json: {e}")))?;
    Ok(response::empty())
}

fn template_name(req: &Request) -> Result<String> {
    let p = req.query("path").unwrap_or("");
    if p.is_empty() || p.contains('/') || p.starts_with('.') || p.contains('\0') {
        return Err(Error::BadRequest(format!("Invalid template name {p:?}")));
    }
    Ok(p.to_string())
}

/// `POST .../metadata/templates?path=NAME`: store a template file (the body).
fn template_put(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let file = template_name(req)?;
    let (_, vol) = metadata_of(d, name)?;
    let data = req
        .read_body(super::routes::MAX_JSON)
        .map_err(|e| Error::BadRequest(format!("template body: {e}")))?;
    let dir = vol.join("templates");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
    crate::util::fs::atomic_write(&dir.join(&file), &data)
        .map_err(|e| Error::Internal(format!("{file}: {e}")))?;
    Ok(response::empty())
}

fn template_delete(d: &Daemon, req: &Request, name: &str) -> Result<Response> {
    let file = template_name(req)?;
    let (_, vol) = metadata_of(d, name)?;
    std::fs::remove_file(vol.join("templates").join(&file))
        .map_err(|_| Error::NotFound("Template not found".into()))?;
    Ok(response::empty())
}

fn templates(d: &Daemon, req: &Request, name: &str) -> Result<Response> {
    let (_, vol) = metadata_of(d, name)?;
    match req.query("path") {
        None => {
            // The template files present (what LXD lists), not the metadata's references.
            let mut names: Vec<String> = std::fs::read_dir(vol.join("templates"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            Ok(response::sync(&names))
        }
        Some(p) => {
            if p.is_empty() || p.contains('/') || p.starts_with('.') {
                return Err(Error::BadRequest(format!("Invalid template name {p:?}")));
            }
            let path = vol.join("templates").join(p);
            let data =
                std::fs::read(&path).map_err(|_| Error::NotFound("Template not found".into()))?;
            Ok(response::raw(
                200,
                "application/octet-stream",
                crate::http::Body::Bytes(data),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up

/// Finish or undo what a killed daemon left: volumes without a record (half-made creates,
/// half-done deletes), a missing default profile, watchers for running containers.
pub fn recover(d: &Arc<Daemon>) -> std::io::Result<()> {
    {
        let mut db = d.db.lock().expect("db lock");
        if !db.data.profiles.contains_key("default") {
            let mut root = StringMap::new();
            root.insert("path".into(), "/".into());
            root.insert("pool".into(), "default".into());
            root.insert("type".into(), "disk".into());
            let mut devices = Devices::new();
            devices.insert("root".into(), root);
            db.update(|data| {
                data.profiles.insert(
                    "default".into(),
                    super::db::ProfileRecord {
                        config: StringMap::new(),
                        description: "Default bivy profile".into(),
                        devices,
                    },
                )
            })?;
        }
        let containers = d.dir.join("storage-pools/default/containers");
        std::fs::create_dir_all(&containers)?;
        let known: std::collections::HashSet<String> = db
            .data
            .instances
            .values()
            .map(|r| r.volume.clone())
            .collect();
        for e in std::fs::read_dir(&containers)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&n) {
                eprintln!("bivy: removing leftover volume {n}");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    std::fs::create_dir_all(d.dir.join("run"))?;
    std::fs::create_dir_all(d.dir.join("logs"))?;
    let names: Vec<String> =
        d.db.lock()
            .expect("db lock")
            .data
            .instances
            .keys()
            .cloned()
            .collect();
    for n in names {
        if matches!(state_of(d, &n), State::Running { .. }) {
            watch(d.clone(), n);
        }
    }
    Ok(())
}

/// Start instances with `boot.autostart=true` (or unset and last running) on the first daemon
/// start after a host boot; later daemon restarts leave stopped instances alone.
pub fn autostart(d: &Arc<Daemon>) {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let marker = d.dir.join("run").join("boot_id");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(boot_id.as_str()) {
        return;
    }
    let _ = crate::util::fs::atomic_write(&marker, boot_id.as_bytes());
    let records: Vec<(String, InstanceRecord)> =
        d.db.lock()
            .expect("db lock")
            .data
            .instances
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    let mut todo: Vec<(i64, String)> = Vec::new();
    for (name, rec) in records {
        let (ec, _) = expanded(d, &rec);
        let auto = match ec.get("boot.autostart").map(String::as_str) {
            Some("true") => true,
            Some(_) => false,
            None => {
                rec.config
                    .get("volatile.last_state.power")
                    .map(String::as_str)
                    == Some("RUNNING")
            }
        };
        if auto {
            let prio = ec
                .get("boot.autostart.priority")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            todo.push((-prio, name));
        }
    }
    todo.sort();
    let d = d.clone();
    std::thread::spawn(move || {
        for (_, name) in todo {
            if matches!(state_of(&d, &name), State::Running { .. }) {
                continue;
            }
            if d.busy_insert(&name, "start").is_ok() {
                if let Err(e) = start(&d, &name) {
                    eprintln!("bivy: autostart of {name} failed: {e}");
                }
                d.busy.lock().expect("busy lock").remove(&name);
            }
        }
    });
}
