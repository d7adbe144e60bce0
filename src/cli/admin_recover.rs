//! `bivy admin recover`: LXD's `lxd recover` (5.0.2) dialog for the local daemon. It lists the
//! pools the daemon has, offers the ones found on its disk without a record, asks for others
//! (name, driver, source, more config), scans them (`POST /internal/recover/validate`), shows
//! the instances and custom volumes the database lacks and what they need that is missing
//! (profiles, networks, a name taken), waits while the user creates those, and on a yes records
//! them (`POST /internal/recover/import`). Answers may come from a pipe, one per line.

use super::admin_init::{Ask, Prompt, Terminal};
use super::{fail, CmdResult, Fail};
use crate::api::{self, RecoverPool, RecoverPost, RecoverValidateResult};
use crate::client::{self, Client};

const USAGE: &str = "Description:
  Recover missing instances and volumes from existing and unknown storage pools

  This command is mostly used for disaster recovery. It will ask you about unknown storage pools
  and attempt to access them, along with existing storage pools, and identify any missing
  instances and volumes that exist on the pools but are not in the bivy database. It will then
  offer to recreate these database records.

Usage:
  bivy admin recover [flags]
";

/// `bivy admin recover`.
pub fn run(args: &[String]) -> CmdResult {
    match args.first().map(String::as_str) {
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return Ok(0);
        }
        Some(other) => {
            eprint!("{USAGE}");
            return fail(format!(
                "unknown argument {other:?} for \"bivy admin recover\""
            ));
        }
        None => {}
    }
    let c = Client::with_socket(client::socket_path());
    dialog(&c, &mut Terminal)
}

/// ` - PREFIXname (backend="dir", source="/path")` as lxd recover lists pools.
fn pool_line(prefix: &str, name: &str, driver: &str, config: &api::StringMap) -> String {
    let source = config.get("source").map(String::as_str).unwrap_or("");
    format!(" - {prefix}{name} (backend={driver:?}, source={source:?})\n")
}

fn validate(c: &Client, req: &RecoverPost) -> Result<RecoverValidateResult, Fail> {
    Ok(
        c.query("POST", "/internal/recover/validate", Some(req), None)?
            .metadata()?,
    )
}

fn dialog(c: &Client, p: &mut dyn Prompt) -> CmdResult {
    let existing: Vec<api::StoragePool> = c.get("/1.0/storage-pools?recursion=1")?;
    let mut req = RecoverPost::default();
    if existing.is_empty() {
        p.out("This bivy server currently has no storage pools.\n");
    } else {
        p.out("This bivy server currently has the following storage pools:\n");
        for e in &existing {
            p.out(&pool_line("", &e.name, &e.driver, &e.config));
        }
    }
    let found = validate(c, &req)?.unknown_pools;
    if !found.is_empty() {
        p.out(
            "These storage pools are on this host's disk but the database has no record of them:\n",
        );
        for f in &found {
            p.out(&pool_line("", &f.name, &f.driver, &f.config));
        }
        if Ask(p).bool(
            "Would you like to recover those storage pools? (yes/no) [default=yes]: ",
            true,
        )? {
            req.pools.extend(found);
        }
    }
    while Ask(p).bool(
        "Would you like to recover another storage pool? (yes/no) [default=no]: ",
        false,
    )? {
        req.pools.push(ask_pool(p)?);
    }
    p.out("The recovery process will be scanning the following storage pools:\n");
    for e in &existing {
        p.out(&pool_line(
            "EXISTING: ",
            &format!("{:?}", e.name),
            &e.driver,
            &e.config,
        ));
    }
    for n in &req.pools {
        p.out(&pool_line(
            "NEW: ",
            &format!("{:?}", n.name),
            &n.driver,
            &n.config,
        ));
    }
    if !Ask(p).bool(
        "Would you like to continue with scanning for lost volumes? (yes/no) [default=yes]: ",
        true,
    )? {
        return Ok(0);
    }
    p.out("Scanning for unknown volumes...\n");
    let result = loop {
        let r = validate(c, &req)?;
        if r.unknown_volumes.is_empty() && r.dependency_errors.is_empty() {
            p.out("No unknown volumes found. Nothing to do.\n");
            return Ok(0);
        }
        if !r.unknown_volumes.is_empty() {
            p.out("The following unknown volumes have been found:\n");
        }
        for v in &r.unknown_volumes {
            let what = if v.kind == "custom" {
                "Volume"
            } else {
                "Container"
            };
            let snaps = if v.snapshot_count > 0 {
                format!(" (includes {} snapshots)", v.snapshot_count)
            } else {
                String::new()
            };
            p.out(&format!(
                " - {what} {:?} on pool {:?} in project {:?}{snaps}\n",
                v.name, v.pool, v.project
            ));
        }
        if r.dependency_errors.is_empty() {
            break r;
        }
        p.out("You are currently missing the following:\n");
        for e in &r.dependency_errors {
            p.out(&format!(" - {e}\n"));
        }
        Ask(p).answer(
            "Please create those missing entries and then hit ENTER: ",
            "",
        )?;
    };
    if !Ask(p).bool(
        "Would you like those to be recovered? (yes/no) [default=no]: ",
        false,
    )? {
        return Ok(0);
    }
    p.out("Starting recovery...\n");
    c.query("POST", "/internal/recover/import", Some(&req), None)?;
    let n = result.unknown_volumes.len();
    p.out(&format!(
        "Recovered {n} volume{}.\n",
        if n == 1 { "" } else { "s" }
    ));
    Ok(0)
}

/// One pool the user names (LXD's questions, with the drivers bivy has).
fn ask_pool(p: &mut dyn Prompt) -> Result<RecoverPool, Fail> {
    let mut a = Ask(p);
    let name = a.string("Name of the storage pool: ", "", None)?;
    let driver = a.choice(
        "Name of the storage backend (btrfs, dir): ",
        &["btrfs", "dir"],
        "",
    )?;
    let src = a.string(
        "Source of the storage pool (block device, volume group, dataset, path, ... as applicable): ",
        "",
        None,
    )?;
    let mut config = api::StringMap::new();
    config.insert("source".into(), src);
    loop {
        let kv = a.answer(
            "Additional storage pool configuration property (KEY=VALUE, empty when done): ",
            "",
        )?;
        if kv.is_empty() {
            break;
        }
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                config.insert(k.to_string(), v.to_string());
            }
            _ => a.0.err("Invalid input, try again.\n\n"),
        }
    }
    Ok(RecoverPool {
        name,
        driver,
        config,
        description: String::new(),
    })
}
