//! `/1.0/profiles`.

use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use super::super::Daemon;
use crate::api::{self};
use crate::http::{Request, Response};
use crate::instance::config;
use crate::instance::db::ProfileRecord;
use crate::instance::devices;

fn used_by(data: &crate::instance::db::Data, profile: &str) -> Vec<String> {
    data.instances
        .iter()
        .filter(|(_, i)| i.profiles.iter().any(|p| p == profile))
        .map(|(n, _)| format!("/1.0/instances/{n}"))
        .collect()
}

fn profile_api(data: &crate::instance::db::Data, name: &str, p: &ProfileRecord) -> api::Profile {
    api::Profile {
        config: p.config.clone(),
        description: p.description.clone(),
        devices: p.devices.clone(),
        name: name.to_string(),
        used_by: used_by(data, name),
    }
}

fn profile_etag(p: &ProfileRecord) -> String {
    response::etag(&(&p.config, &p.description, &p.devices))
}

pub fn profiles_list(d: &Daemon, req: &Request) -> Result<Response> {
    let db = d.db.lock().expect("db lock");
    if recursion(req) > 0 {
        let v: Vec<api::Profile> = db
            .data
            .profiles
            .iter()
            .map(|(n, p)| profile_api(&db.data, n, p))
            .collect();
        Ok(response::sync(&v))
    } else {
        let v: Vec<String> = db
            .data
            .profiles
            .keys()
            .map(|n| format!("/1.0/profiles/{n}"))
            .collect();
        Ok(response::sync(&v))
    }
}

pub fn profile_get(d: &Daemon, name: &str) -> Result<Response> {
    let db = d.db.lock().expect("db lock");
    let p = db
        .data
        .profiles
        .get(name)
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    Ok(response::sync_etag(
        &profile_api(&db.data, name, p),
        Some(profile_etag(p)),
    ))
}

pub fn profile_create(d: &Daemon, req: &mut Request) -> Result<Response> {
    let mut body: api::ProfilesPost = json(req)?;
    devices::drop_unset_keys(&mut body.put.devices);
    config::validate_profile_name(&body.name)?;
    config::validate_config(&body.put.config, &api::StringMap::new(), d.host.ncpus)?;
    devices::validate_devices(&body.put.devices, &d.db.lock().expect("db lock").data)?;
    let mut db = d.db.lock().expect("db lock");
    if db.data.profiles.contains_key(&body.name) {
        return Err(Error::Conflict(format!(
            "Profile {:?} already exists",
            body.name
        )));
    }
    let rec = ProfileRecord {
        config: body.put.config,
        description: body.put.description,
        devices: body.put.devices,
    };
    db.update(|data| data.profiles.insert(body.name.clone(), rec))
        .map_err(|e| Error::Internal(e.to_string()))?;
    d.events.lifecycle(
        "profile-created",
        &format!("/1.0/profiles/{}", body.name),
        serde_json::json!({}),
    );
    Ok(response::created(&format!("/1.0/profiles/{}", body.name)))
}

pub fn profile_put(d: &Daemon, req: &mut Request, name: &str, patch: bool) -> Result<Response> {
    let body: serde_json::Value = json(req)?;
    let mut db = d.db.lock().expect("db lock");
    let cur = db
        .data
        .profiles
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    response::check_etag(req.header("If-Match"), &profile_etag(&cur))?;
    let put: api::ProfilePut = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))?;
    let mut next = if patch {
        cur.clone()
    } else {
        ProfileRecord::default()
    };
    if patch {
        if body.get("config").is_some() {
            for (k, v) in put.config {
                if v.is_empty() {
                    next.config.remove(&k);
                } else {
                    next.config.insert(k, v);
                }
            }
        }
        if body.get("devices").is_some() {
            next.devices.extend(put.devices);
        }
        if body.get("description").is_some() {
            next.description = put.description;
        }
    } else {
        next = ProfileRecord {
            config: put.config,
            description: put.description,
            devices: put.devices,
        };
    }
    devices::drop_unset_keys(&mut next.devices);
    config::validate_config(&next.config, &api::StringMap::new(), d.host.ncpus)?;
    devices::validate_devices(&next.devices, &db.data)?;
    // Running instances using the profile: their expanded devices before and after.
    let mut live: Vec<(String, i32, api::Devices, api::Devices)> = Vec::new();
    // The managed networks of every instance using it (running or not: a NIC the profile no
    // longer gives loses its lease).
    let mut nets = std::collections::BTreeSet::new();
    // The records as they would be: a static address the profile gives is checked against the
    // other instances' NICs with it too.
    let mut after = db.data.clone();
    after.profiles.insert(name.to_string(), next.clone());
    // Every instance using the profile must still have a root disk.
    for (iname, inst) in &db.data.instances {
        if inst.profiles.iter().any(|p| p == name) {
            let (_, devs) =
                config::expand(&inst.profiles, &after.profiles, &inst.config, &inst.devices);
            if let Some(why) = crate::instance::view::root_disk_problem(&devs) {
                return Err(Error::BadRequest(format!("Instance {iname:?}: {why}")));
            }
            let (_, old) = config::expand(
                &inst.profiles,
                &db.data.profiles,
                &inst.config,
                &inst.devices,
            );
            crate::instance::nics::check_static_addresses(&after, iname, &old, &devs)?;
            nets.extend(crate::instance::nics::networks_of(&db.data, &old));
            nets.extend(crate::instance::nics::networks_of(&db.data, &devs));
            if let crate::runtime::State::Running { init_pid, .. } =
                crate::instance::view::state_of(d, iname)?
            {
                crate::instance::devices::check_live_change(&old, &devs, true)?;
                if old != devs {
                    live.push((iname.clone(), init_pid, old, devs));
                }
            }
        }
    }
    // NIC and proxy changes are hot-plugged into each of them, all or none.
    let mut done: Vec<(usize, crate::instance::devices::VolatileChanges)> = Vec::new();
    let undo = |data: &crate::instance::db::Data, done: &[(usize, Vec<_>)]| {
        for (j, _) in done.iter().rev() {
            let (n, p, o, w) = &live[*j];
            let cfg = &data.instances[n].config;
            if let Err(u) = crate::instance::devices::hotplug(d, data, n, cfg, *p, w, o) {
                eprintln!("bivy: {n}: undoing a profile's device change: {u}");
            }
        }
    };
    for (i, (iname, pid, old, new)) in live.iter().enumerate() {
        let cfg = &db.data.instances[iname].config;
        match crate::instance::devices::hotplug(d, &db.data, iname, cfg, *pid, old, new) {
            Ok(kv) => done.push((i, kv)),
            Err(e) => {
                undo(&db.data, &done);
                return Err(e.into());
            }
        }
    }
    // What the undo needs if saving fails (only when something was plugged).
    let before = (!done.is_empty()).then(|| (db.data.clone(), done.clone()));
    db.update(|data| {
        data.profiles.insert(name.to_string(), next);
        for (i, kv) in done {
            if let Some(inst) = data.instances.get_mut(&live[i].0) {
                for (k, v) in kv {
                    match v {
                        Some(v) => inst.config.insert(k, v),
                        None => inst.config.remove(&k),
                    };
                }
            }
        }
    })
    .map_err(|e| {
        if let Some((data, done)) = &before {
            undo(data, done);
        }
        Error::Internal(e.to_string())
    })?;
    let affected: Vec<String> = db
        .data
        .instances
        .iter()
        .filter(|(_, i)| i.profiles.iter().any(|p| p == name))
        .map(|(n, _)| n.clone())
        .collect();
    drop(db);
    // Root disk sizes (qgroup limits) follow too; a failure is reported after all are tried
    // (each start applies them again).
    let mut size_err = None;
    for n in affected {
        crate::instance::lifecycle::apply_live_limits(d, &n);
        if let Err(e) = crate::instance::volumes::apply_root_size(d, &n) {
            eprintln!("bivy: {n}: {e}");
            size_err.get_or_insert(e);
        }
    }
    crate::instance::bridges::refresh(d, nets);
    d.events.lifecycle(
        "profile-updated",
        &format!("/1.0/profiles/{name}"),
        serde_json::json!({}),
    );
    if let Some(e) = size_err {
        return Err(e.into());
    }
    Ok(response::empty())
}

pub fn profile_rename(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::ProfilePost = json(req)?;
    config::validate_profile_name(&body.name)?;
    if name == "default" {
        return Err(Error::Forbidden(
            "The \"default\" profile cannot be renamed".into(),
        ));
    }
    let mut db = d.db.lock().expect("db lock");
    let cur = db
        .data
        .profiles
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NotFound("Profile not found".into()))?;
    if db.data.profiles.contains_key(&body.name) {
        return Err(Error::Conflict(format!(
            "Name {:?} already in use",
            body.name
        )));
    }
    db.update(|data| {
        data.profiles.remove(name);
        data.profiles.insert(body.name.clone(), cur);
        for inst in data.instances.values_mut() {
            for p in inst.profiles.iter_mut() {
                if p == name {
                    *p = body.name.clone();
                }
            }
        }
    })
    .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(response::created(&format!("/1.0/profiles/{}", body.name)))
}

pub fn profile_delete(d: &Daemon, name: &str) -> Result<Response> {
    if name == "default" {
        return Err(Error::Forbidden(
            "The \"default\" profile cannot be deleted".into(),
        ));
    }
    let mut db = d.db.lock().expect("db lock");
    if !db.data.profiles.contains_key(name) {
        return Err(Error::NotFound("Profile not found".into()));
    }
    if !used_by(&db.data, name).is_empty() {
        return Err(Error::BadRequest("Profile is currently in use".into()));
    }
    db.update(|data| data.profiles.remove(name))
        .map_err(|e| Error::Internal(e.to_string()))?;
    d.events.lifecycle(
        "profile-deleted",
        &format!("/1.0/profiles/{name}"),
        serde_json::json!({}),
    );
    Ok(response::empty())
}
