//! Custom volume backups: `/1.0/storage-pools/POOL/volumes/custom/VOL/backups[/BACKUP[/export]]`
//! (list, create, show, rename, delete, download) and `POST /1.0/storage-pools/POOL/volumes/custom`
//! with an `application/octet-stream` body (a new volume from a backup tarball, `X-LXD-name`
//! overriding the backup's name). The model and the tarball format are
//! `crate::instance::backups`'s (`volume_*`).

use std::collections::BTreeMap;

use super::super::request::{json, recursion, spool_body};
use super::super::response::{self, Error, Result};
use super::super::Daemon;
use crate::api;
use crate::http::{Body, Request, Response};
use crate::instance::backups as model;
use crate::instance::operations::Class;

pub fn route(
    d: &Daemon,
    req: &mut Request,
    pool: &str,
    kind: &str,
    vol: &str,
    sub: &[&str],
) -> Result<Response> {
    if kind != "custom" {
        return Err(Error::BadRequest(format!(
            "Invalid storage volume type {kind:?}: only custom volumes have backups"
        )));
    }
    let m = req.method.clone();
    match (sub, m.as_str()) {
        ([], "GET") => list(d, req, pool, vol),
        ([], "POST") => create(d, req, pool, vol),
        ([b], "GET") => Ok(response::sync(&model::volume_to_api(&model::volume_find(
            d, pool, vol, b,
        )?))),
        ([b], "POST") => {
            let body: api::InstanceBackupPost = json(req)?;
            model::volume_find(d, pool, vol, b)?;
            model::check_name(&body.name)?;
            let (p, v, old) = (pool.to_string(), vol.to_string(), b.to_string());
            let d2 = d.self_arc();
            task(d, "Renaming custom volume backup", pool, vol, move || {
                model::volume_rename(&d2, &p, &v, &old, &body.name)
            })
        }
        ([b], "DELETE") => {
            model::volume_find(d, pool, vol, b)?;
            let (p, v, b) = (pool.to_string(), vol.to_string(), b.to_string());
            let d2 = d.self_arc();
            task(d, "Removing custom volume backup", pool, vol, move || {
                model::volume_delete(&d2, &p, &v, &b)
            })
        }
        ([b, "export"], "GET") => export(d, pool, vol, b),
        ([] | [_] | [_, "export"], _) => {
            Err(Error::MethodNotAllowed(format!("method {m} not allowed")))
        }
        _ => Err(Error::NotFound("not found".into())),
    }
}

/// LXD's resources for a volume backup operation: the volume as `/1.0/storage_volumes/VOL`,
/// and the backup as `/1.0/backups/NAME` (`lxc storage volume export` takes its name there).
fn op_resources(vol: &str, backup: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut r = BTreeMap::new();
    r.insert(
        "storage_volumes".to_string(),
        vec![format!("/1.0/storage_volumes/{vol}")],
    );
    if let Some(b) = backup {
        r.insert("backups".into(), vec![format!("/1.0/backups/{b}")]);
    }
    r
}

fn task(
    d: &Daemon,
    what: &str,
    _pool: &str,
    vol: &str,
    f: impl FnOnce() -> crate::instance::Result<()> + Send + 'static,
) -> Result<Response> {
    let op = d.ops.start(
        Class::Task,
        what,
        op_resources(vol, None),
        None,
        vec![],
        move |_| f(),
    );
    Ok(response::operation(&op.to_api()))
}

fn list(d: &Daemon, req: &Request, pool: &str, vol: &str) -> Result<Response> {
    let rec = crate::instance::volume_records::record(d, pool, vol)?;
    if recursion(req) > 0 {
        let out: Vec<serde_json::Value> = rec.backups.iter().map(model::volume_to_api).collect();
        Ok(response::sync(&out))
    } else {
        let out: Vec<String> = rec
            .backups
            .iter()
            .map(|b| model::volume_url(pool, vol, &b.name))
            .collect();
        Ok(response::sync(&out))
    }
}

/// `POST …/backups`: the tarball is made in the operation.
fn create(d: &Daemon, req: &mut Request, pool: &str, vol: &str) -> Result<Response> {
    let body: api::StorageVolumeBackupsPost = json(req)?;
    let (bname, compression) = model::volume_check_create(d, pool, vol, &body)?;
    let (p, v, b) = (pool.to_string(), vol.to_string(), bname.clone());
    let d2 = d.self_arc();
    let op = d.ops.start(
        Class::Task,
        "Creating custom volume backup",
        op_resources(vol, Some(&bname)),
        None,
        vec![],
        move |op| {
            let report =
                |s: String| op.set_metadata("create_backup_progress", serde_json::json!(s));
            model::volume_create(&d2, &p, &v, &b, &body, compression, &report)
        },
    );
    Ok(response::operation(&op.to_api()))
}

/// `GET …/backups/NAME/export`: the tarball.
fn export(d: &Daemon, pool: &str, vol: &str, backup: &str) -> Result<Response> {
    let b = model::volume_find(d, pool, vol, backup)?;
    let path = model::file(d, &b);
    let f = std::fs::File::open(&path)
        .map_err(|e| Error::Internal(format!("opening backup {vol}/{backup}: {e}")))?;
    let len = f.metadata().map(|m| m.len()).ok();
    d.events.lifecycle(
        "storage-volume-backup-retrieved",
        &model::volume_url(pool, vol, backup),
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

/// `POST /1.0/storage-pools/POOL/volumes/custom` with a backup tarball as the body: spooled,
/// its index read and checked before the operation that unpacks it starts.
pub fn import(d: &Daemon, req: &mut Request, pool: &str) -> Result<Response> {
    let name = req.header("X-LXD-name").unwrap_or("").to_string();
    let spool = spool_body(req, &model::ensure_dir(d)?)?;
    let info = model::volume_read_info(&spool.0)?;
    let target = if name.is_empty() {
        info.name.clone()
    } else {
        name
    };
    crate::instance::volumes::validate_name(&target)?;
    crate::instance::pools::pool(d, pool)?;
    if crate::instance::volume_records::record(d, pool, &target).is_ok() {
        return Err(Error::Conflict("Volume by that name already exists".into()));
    }
    let (p, t) = (pool.to_string(), target.clone());
    let d2 = d.self_arc();
    let op = d.ops.start(
        Class::Task,
        "Importing custom volume",
        op_resources(&target, None),
        None,
        vec![],
        move |_| {
            let r = model::volume_import(&d2, &p, &t, &spool.0, &info).map(drop);
            drop(spool);
            r
        },
    );
    Ok(response::operation(&op.to_api()))
}
