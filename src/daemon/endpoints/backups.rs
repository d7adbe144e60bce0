//! Instance backups: `/1.0/instances/NAME/backups[/BACKUP[/export]]` (list, create, show,
//! rename, delete, download) and `POST /1.0/instances` with an `application/octet-stream` body
//! (a new instance from a backup tarball, `X-LXD-name` and `X-LXD-pool` overriding the
//! backup's). The model and the tarball format are `crate::instance::backups`'s.

use std::collections::BTreeMap;

use super::super::request::{json, recursion, spool_body};
use super::super::response::{self, Error, Result};
use super::super::Daemon;
use crate::api;
use crate::http::{Body, Request, Response};
use crate::instance::backups as model;
use crate::instance::view::{record, resources};

pub fn route(d: &Daemon, req: &mut Request, name: &str, sub: &[&str]) -> Result<Response> {
    let m = req.method.clone();
    match (sub, m.as_str()) {
        ([], "GET") => list(d, req, name),
        ([], "POST") => create(d, req, name),
        ([b], "GET") => {
            let b = model::find(d, name, b)?;
            Ok(response::sync(&model::to_api(&b)))
        }
        ([b], "POST") => rename(d, req, name, b),
        ([b], "DELETE") => delete(d, name, b),
        ([b, "export"], "GET") => export(d, name, b),
        ([] | [_] | [_, "export"], _) => {
            Err(Error::MethodNotAllowed(format!("method {m} not allowed")))
        }
        _ => Err(Error::NotFound("not found".into())),
    }
}

fn list(d: &Daemon, req: &Request, name: &str) -> Result<Response> {
    let rec = record(d, name)?;
    if recursion(req) > 0 {
        let out: Vec<api::InstanceBackup> = rec.backups.iter().map(model::to_api).collect();
        Ok(response::sync(&out))
    } else {
        let out: Vec<String> = rec
            .backups
            .iter()
            .map(|b| model::url(name, &b.name))
            .collect();
        Ok(response::sync(&out))
    }
}

/// The operation's resources as LXD's: the instance, and the backup as `/1.0/backups/NAME`
/// (`lxc export` takes the backup's name from it).
fn op_resources(name: &str, backup: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut r = resources(name);
    if let Some(b) = backup {
        r.insert("backups".into(), vec![format!("/1.0/backups/{b}")]);
    }
    r
}

/// `POST /1.0/instances/NAME/backups`: the tarball is made in the operation.
fn create(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::InstanceBackupsPost = json(req)?;
    let (bname, compression) = model::check_create(d, name, &body)?;
    let n = name.to_string();
    let b = bname.clone();
    let op = d.busy_task(
        name,
        "backup",
        "Backing up instance",
        op_resources(name, Some(&bname)),
        move |d, op| {
            let report =
                |p: String| op.set_metadata("create_backup_progress", serde_json::json!(p));
            model::create_backup(d, &n, &b, &body, compression, &report)
        },
    )?;
    Ok(response::operation(&op.to_api()))
}

fn rename(d: &Daemon, req: &mut Request, name: &str, backup: &str) -> Result<Response> {
    let body: api::InstanceBackupPost = json(req)?;
    model::find(d, name, backup)?;
    model::check_name(&body.name)?;
    let (n, old) = (name.to_string(), backup.to_string());
    let d2 = d.self_arc();
    let op = d.ops.start(
        crate::instance::operations::Class::Task,
        "Renaming instance backup",
        op_resources(name, None),
        None,
        vec![],
        move |_| model::rename(&d2, &n, &old, &body.name),
    );
    Ok(response::operation(&op.to_api()))
}

fn delete(d: &Daemon, name: &str, backup: &str) -> Result<Response> {
    model::find(d, name, backup)?;
    let (n, b) = (name.to_string(), backup.to_string());
    let d2 = d.self_arc();
    let op = d.ops.start(
        crate::instance::operations::Class::Task,
        "Removing instance backup",
        op_resources(name, None),
        None,
        vec![],
        move |_| model::delete(&d2, &n, &b),
    );
    Ok(response::operation(&op.to_api()))
}

/// `GET …/backups/NAME/export`: the tarball.
fn export(d: &Daemon, name: &str, backup: &str) -> Result<Response> {
    let b = model::find(d, name, backup)?;
    let path = model::file(d, &b);
    let f = std::fs::File::open(&path)
        .map_err(|e| Error::Internal(format!("opening backup {name}/{backup}: {e}")))?;
    let len = f.metadata().map(|m| m.len()).ok();
    d.events.lifecycle(
        "instance-backup-retrieved",
        &model::url(name, backup),
        serde_json::json!({}),
    );
    Ok(Response::new(200)
        .header("Content-Type", "application/octet-stream")
        .header(
            "Content-Disposition",
            &format!("attachment; filename={}", b.name),
        )
        .body(Body::Reader(Box::new(f), len)))
}

/// `POST /1.0/instances` with a backup tarball as the body: spooled to a file under the
/// daemon's directory, its index read and the new instance checked before the operation that
/// unpacks it starts; the spool file goes when the request or the operation ends.
pub fn import(d: &Daemon, req: &mut Request) -> Result<Response> {
    let name = req.header("X-LXD-name").unwrap_or("").to_string();
    let pool = req.header("X-LXD-pool").unwrap_or("").to_string();
    let spool = spool_body(req, &model::ensure_dir(d)?)?;
    let info = model::read_info(&spool.0)?;
    let plan = model::plan(
        d,
        &info,
        Some(name.as_str()).filter(|n| !n.is_empty()),
        Some(pool.as_str()).filter(|p| !p.is_empty()),
    )?;
    let target = plan.name.clone();
    d.busy_insert(&target, "create")?;
    let d2 = d.self_arc();
    let t = target.clone();
    let op = d.ops.start(
        crate::instance::operations::Class::Task,
        "Restoring backup",
        resources(&target),
        None,
        vec![],
        move |_| {
            let r = model::import(&d2, &spool.0, &info, plan);
            d2.busy.lock().expect("busy lock").remove(&t);
            drop(spool);
            r
        },
    );
    Ok(response::operation(&op.to_api()))
}
