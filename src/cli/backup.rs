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
    let reply = c
        .query("POST", &base, Some(&body), None)
        .map_err(|e| Fail::Error(format!("Create instance backup: {e}")))?;
    let Some(id) = reply.operation_id() else {
        return fail("the server did not start a backup operation");
    };
    let op = super::wait_progress(&c, &id, "Backing up instance")?;
    let backup = op
        .resources
        .as_ref()
        .and_then(|r| r.get("backups"))
        .and_then(|b| b.first())
        .map(|b| b.trim_start_matches("/1.0/backups/").to_string())
        .ok_or_else(|| Fail::Error("the server did not name the backup".into()))?;
    let bpath = format!("{base}/{}", urlencode(&backup, false));
    let target = a
        .args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "backup.tar.gz".into());
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
                let p = PathBuf::from(&target);
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
                let _ = std::fs::remove_file(&target);
            }
            Fail::Error(format!("Fetch instance backup file: {e}"))
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
    res.map(|()| 0)
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
    let mut headers = vec![(
        "Content-Type".to_string(),
        "application/octet-stream".to_string(),
    )];
    if let Some(p) = a.storage.as_deref().filter(|p| !p.is_empty()) {
        headers.push(("X-LXD-pool".into(), p.to_string()));
    }
    if let Some(n) = rest.get(1) {
        headers.push(("X-LXD-name".into(), n.clone()));
    }
    let body = if file == "-" {
        Body::Reader(Box::new(io::stdin()), None)
    } else {
        let f = File::open(file)
            .map_err(|e| Fail::Error(super::io_error("open", file.as_ref(), &e)))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        Body::Reader(
            Box::new(ProgressReader::new(
                f,
                super::progress("Importing instance".into(), len),
            )),
            Some(len),
        )
    };
    c.upload("POST", "/1.0/instances", &headers, body)?;
    Ok(0)
}
