//! `bivy export` and `bivy import`: instance backups as `lxc` 5.0.2 makes and restores them
//! (`lxc/export.go`, `lxc/import.go`). Export asks the server for a backup (expiring in a
//! day), downloads its tarball and deletes it; import uploads a tarball as the body of
//! `POST /1.0/instances` (`X-LXD-name`, `X-LXD-pool`).

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use argh::FromArgs;
use serde_json::json;

use super::{fail, instance_path, parse, split_remote, CmdResult, Fail};
use crate::client::{urlencode, ProgressReader};
use crate::http::Body;

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Export instances as backup tarballs: bivy export [<remote>:]<instance> [target]
pub struct ExportArgs {
    #[argh(positional)]
    /// the instance, then the file to write (backup.tar.gz by default; - for stdout)
    args: Vec<String>,
    #[argh(switch, long = "instance-only")]
    /// whether or not to only backup the instance (without snapshots)
    instance_only: bool,
    #[argh(switch, long = "optimized-storage")]
    /// use storage driver optimized format (can only be restored on a similar pool)
    optimized_storage: bool,
    #[argh(option)]
    /// compression algorithm to use (none for uncompressed)
    compression: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Import instance backups: bivy import [<remote>:] <backup file> [<instance name>]
pub struct ImportArgs {
    #[argh(positional)]
    /// optional remote, the backup file (- for stdin), then the new instance's name
    args: Vec<String>,
    #[argh(option, short = 's')]
    /// storage pool name
    storage: Option<String>,
}

pub fn export(args: &[String]) -> CmdResult {
    let a: ExportArgs = parse(&["bivy export"], args)?;
    let (Some(src), 1..=2) = (a.args.first(), a.args.len()) else {
        return fail("Invalid number of arguments");
    };
    let (remote, name) = split_remote(src)?;
    let c = super::client_of(&remote)?;
    let expires = crate::util::time::format(crate::util::time::now_secs() + 86400, 0);
    let body = json!({
        "name": "",
        "expires_at": expires,
        "container_only": a.instance_only,
        "instance_only": a.instance_only,
        "optimized_storage": a.optimized_storage,
        "compression_algorithm": a.compression.clone().unwrap_or_default(),
    });
    let base = format!("{}/backups", instance_path(name));
    let target = a
        .args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "backup.tar.gz".into());
    fetch_backup(&c, &base, &body, "instance", &target).map(|()| 0)
}

/// Ask for a backup at `base` (`…/backups`) with `body`, download its tarball to `target` (`-`:
/// stdout) and delete it, as lxc does whatever happened; `what` names the kind in errors.
fn fetch_backup(
    c: &crate::client::Client,
    base: &str,
    body: &serde_json::Value,
    what: &str,
    target: &str,
) -> Result<(), Fail> {
    let reply = c
        .query("POST", base, Some(body), None)
        .map_err(|e| Fail::Error(format!("Create {what} backup: {e}")))?;
    let Some(id) = reply.operation_id() else {
        return fail("the server did not start a backup operation");
    };
    let op = super::wait_progress(c, &id, "Backing up")?;
    let backup = op
        .resources
        .as_ref()
        .and_then(|r| r.get("backups"))
        .and_then(|b| b.first())
        .map(|b| b.trim_start_matches("/1.0/backups/").to_string())
        .ok_or_else(|| Fail::Error("the server did not name the backup".into()))?;
    let bpath = format!("{base}/{}", urlencode(&backup, false));
    let res = (|| -> Result<(), Fail> {
        let to_stdout = target == "-";
        c.download(&format!("{bpath}/export"), |mut r| {
            let len = r
                .header("Content-Length")
                .and_then(|l| l.parse::<u64>().ok())
                .unwrap_or(0);
            let mut out: Box<dyn Write> = if to_stdout {
                Box::new(io::stdout().lock())
            } else {
                let p = PathBuf::from(target);
                Box::new(
                    File::create(&p)
                        .map_err(|e| crate::client::Error(format!("{}: {e}", p.display())))?,
                )
            };
            let cb = if to_stdout {
                Box::new(|_| {}) as Box<dyn FnMut(u64) + Send>
            } else {
                super::progress("Exporting the backup".into(), len)
            };
            let mut body = ProgressReader::new(&mut r.body, cb);
            io::copy(&mut body, &mut out)?;
            out.flush()?;
            Ok(())
        })
        .map_err(|e| {
            if !to_stdout {
                let _ = std::fs::remove_file(target);
            }
            Fail::Error(format!("Fetch {what} backup file: {e}"))
        })?;
        if !to_stdout && !super::quiet() {
            println!("Backup exported successfully!");
        }
        Ok(())
    })();
    // The backup is deleted once downloaded (or not), as lxc does.
    if let Ok(Some(op)) = c.delete(&bpath) {
        let _ = c.wait_operation(&op.id);
    }
    res
}

/// Upload `file` (`-`: stdin) with `headers` as the body of `POST path`.
fn upload_backup(
    c: &crate::client::Client,
    path: &str,
    mut headers: Vec<(String, String)>,
    file: &str,
    label: &str,
) -> Result<(), Fail> {
    headers.push((
        "Content-Type".to_string(),
        "application/octet-stream".to_string(),
    ));
    let body = if file == "-" {
        Body::Reader(Box::new(io::stdin()), None)
    } else {
        let f = File::open(file)
            .map_err(|e| Fail::Error(super::io_error("open", file.as_ref(), &e)))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        Body::Reader(
            Box::new(ProgressReader::new(f, super::progress(label.into(), len))),
            Some(len),
        )
    };
    c.upload("POST", path, &headers, body)?;
    Ok(())
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Export custom storage volumes: bivy storage volume export [<remote>:]<pool> <volume> [<path>]
pub struct VolumeExportArgs {
    #[argh(positional)]
    /// the pool, the volume, then the file to write (backup.tar.gz by default; - for stdout)
    args: Vec<String>,
    #[argh(switch, long = "volume-only")]
    /// export the volume without its snapshots
    volume_only: bool,
    #[argh(switch, long = "optimized-storage")]
    /// use storage driver optimized format (not supported yet for volumes)
    optimized_storage: bool,
    #[argh(option)]
    /// compression algorithm to use (none for uncompressed)
    compression: Option<String>,
}

/// `bivy storage volume export`: as lxc's (`lxc/storage_volume.go` export).
pub fn volume_export(args: &[String]) -> CmdResult {
    let a: VolumeExportArgs = parse(&["bivy storage volume export"], args)?;
    let (2..=3, Some(pool), Some(vol)) = (a.args.len(), a.args.first(), a.args.get(1)) else {
        return fail("Invalid number of arguments");
    };
    let (remote, pool) = split_remote(pool)?;
    let c = super::client_of(&remote)?;
    let expires = crate::util::time::format(crate::util::time::now_secs() + 86400, 0);
    let body = json!({
        "name": "",
        "expires_at": expires,
        "volume_only": a.volume_only,
        "optimized_storage": a.optimized_storage,
        "compression_algorithm": a.compression.clone().unwrap_or_default(),
    });
    let base = format!(
        "/1.0/storage-pools/{}/volumes/custom/{}/backups",
        urlencode(pool, false),
        urlencode(vol, false)
    );
    let target = a
        .args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "backup.tar.gz".into());
    fetch_backup(&c, &base, &body, "volume", &target).map(|()| 0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Import custom storage volumes: bivy storage volume import [<remote>:]<pool> <backup file> [<volume name>]
pub struct VolumeImportArgs {
    #[argh(positional)]
    /// the pool, the backup file (- for stdin), then the new volume's name
    args: Vec<String>,
}

/// `bivy storage volume import`.
pub fn volume_import(args: &[String]) -> CmdResult {
    let a: VolumeImportArgs = parse(&["bivy storage volume import"], args)?;
    let (2..=3, Some(pool), Some(file)) = (a.args.len(), a.args.first(), a.args.get(1)) else {
        return fail("Invalid number of arguments");
    };
    let (remote, pool) = split_remote(pool)?;
    let c = super::client_of(&remote)?;
    let mut headers = Vec::new();
    if let Some(n) = a.args.get(2) {
        headers.push(("X-LXD-name".into(), n.clone()));
    }
    let path = format!(
        "/1.0/storage-pools/{}/volumes/custom",
        urlencode(pool, false)
    );
    upload_backup(&c, &path, headers, file, "Importing custom volume")?;
    Ok(0)
}

pub fn import(args: &[String]) -> CmdResult {
    let a: ImportArgs = parse(&["bivy import"], args)?;
    let mut rest: &[String] = &a.args;
    let mut remote = None;
    if let Some(first) = rest.first().filter(|f| f.ends_with(':')) {
        remote = Some(split_remote(first)?.0);
        rest = &rest[1..];
    }
    let (Some(file), 1..=2) = (rest.first(), rest.len()) else {
        return fail("Invalid number of arguments");
    };
    let c = match &remote {
        Some(r) => super::client_of(r)?,
        None => super::client()?,
    };
    let mut headers = Vec::new();
    if let Some(p) = a.storage.as_deref().filter(|p| !p.is_empty()) {
        headers.push(("X-LXD-pool".into(), p.to_string()));
    }
    if let Some(n) = rest.get(1) {
        headers.push(("X-LXD-name".into(), n.clone()));
    }
    upload_backup(&c, "/1.0/instances", headers, file, "Importing instance")?;
    Ok(0)
}
