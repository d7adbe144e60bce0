//! The instance lifecycle: start, stop, delete, live limits, undoing after a crash the temporary
//! changes operations make (`interim`), watching running instances, recovery at start and
//! autostart. Creating is `create`'s, restoring a snapshot `restore`'s. No HTTP: handlers call
//! in here.

use std::sync::Arc;
use std::time::Duration;

use super::create::Chosen;
use super::interim::Interim;
use super::lxc_log::log_line;
use super::view::{expanded, record, state_of, url};
use super::volatile::{set_volatile, update_volatile};
use super::{config, idmap, Ctx, Error, Result};
use crate::api::{self, Devices, StringMap};
use crate::image;
use crate::runtime::{self, RootfsMode, State};
use crate::util::time;

/// At daemon start: undo the changes ([`Interim`]) that operations killed with the daemon left
/// behind.
fn undo_interim(d: &Arc<Ctx>, name: &str) {
    if Interim::Frozen.path(d, name).exists() {
        match state_of(d, name) {
            Ok(State::Running { frozen: true, .. }) => {
                eprintln!(
                    "bivy: {name}: thawing (frozen by an operation the daemon did not finish)"
                );
                if let Err(e) = runtime::unfreeze(&d.run_dir(name)) {
                    eprintln!("bivy: {name}: thawing: {e}");
                    return;
                }
            }
            Ok(_) => {}
            // Unknown state: keep the record and try again at the next start.
            Err(e) => {
                eprintln!("bivy: {e}");
                return;
            }
        }
        Interim::Frozen.end(d, name);
    }
    if Interim::Stopped.path(d, name).exists() {
        match state_of(d, name) {
            Ok(State::Stopped { .. }) => {
                eprintln!(
                    "bivy: {name}: starting again (stopped by a restore the daemon did not finish)"
                );
                if let Err(e) = start(d, name) {
                    eprintln!("bivy: {name}: starting: {e}");
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("bivy: {e}");
                return;
            }
        }
        Interim::Stopped.end(d, name);
    }
}

/// Push the current limits to a running instance (after a config or profile change).
pub fn apply_live_limits(d: &Ctx, name: &str) {
    let Ok(rec) = record(d, name) else { return };
    match state_of(d, name) {
        Ok(State::Running { .. }) => {}
        Ok(State::Stopped { .. }) => return,
        Err(e) => {
            eprintln!("bivy: {name}: limits not applied live: {e}");
            return;
        }
    }
    let (ec, ed) = expanded(d, &rec);
    let root = d.volume_dir(&rec).join("rootfs");
    let io = super::devices::io_limits(d, &d.db.lock().expect("db lock").data, &ed, &root);
    match (config::limits(&ec, d.host.total_memory, d.host.ncpus), io) {
        (Ok(mut l), Ok(io)) => {
            l.io = io;
            if let Err(e) = runtime::set_limits(&d.run_dir(name), &l) {
                eprintln!("bivy: {name}: applying limits: {e}");
            }
        }
        (Err(e), _) | (_, Err(e)) => eprintln!("bivy: {name}: limits not applied live: {e}"),
    }
}

pub fn delete_now(d: &Ctx, name: &str) -> Result<()> {
    let trace = crate::util::trace::Steps::new("delete", name);
    if matches!(state_of(d, name)?, State::Running { .. }) {
        return Err(Error::Invalid("Instance is running".into()));
    }
    let (rec, nets) = {
        let mut db = d.db.lock().expect("db lock");
        let rec = super::view::record_in(&db.data, name)?;
        let (_, ed) =
            super::config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices);
        let nets = super::nics::networks_of(&db.data, &ed);
        db.update(|data| data.instances.remove(name))
            .map_err(|e| Error::Host(e.to_string()))?;
        (rec, nets)
    };
    trace.step("record removed");
    crate::util::lock(&d.runs).remove(name);
    crate::util::lock(&d.superseded).remove(name);
    // Its NICs' leases and names on the managed networks go with it.
    super::bridges::refresh(d, nets);
    // The record is gone (commit point); data removal failures are retried by `recover`.
    super::pools::delete_instance_volumes(d, &rec);
    super::backups::delete_files(d, &rec);
    trace.step("volumes deleted");
    let _ = std::fs::remove_dir_all(d.log_dir(name));
    let _ = std::fs::remove_dir_all(d.run_dir(name));
    trace.step("log and run directories removed");
    d.events
        .lifecycle("instance-deleted", &url(name), serde_json::json!({}));
    Ok(())
}

/// Start an instance (the caller holds its busy mark). A saved state (stateful stop) is
/// discarded, as LXD's stateless start does.
pub fn start(d: &Ctx, name: &str) -> Result<()> {
    start_with(d, name, false)
}

/// Start an instance; `stateful`: from its saved state (CRIU restore, see `stateful`).
pub fn start_with(d: &Ctx, name: &str, stateful: bool) -> Result<()> {
    let trace = crate::util::trace::Steps::new("start", name);
    let rec = record(d, name)?;
    if let State::Running { frozen, .. } = state_of(d, name)? {
        if frozen {
            return runtime::unfreeze(&d.run_dir(name)).map_err(Error::from);
        }
        return Err(Error::Invalid("The instance is already running".into()));
    }
    if stateful {
        super::stateful::check_restorable(d, name, &rec)?;
    } else {
        super::stateful::discard(d, name, &rec)?;
    }
    trace.step("state checked");
    let (ec, ed) = expanded(d, &rec);
    for (dev, conf) in &ed {
        let t = conf.get("type").map(String::as_str).unwrap_or("");
        if !matches!(
            t,
            "disk"
                | "none"
                | "nic"
                | "proxy"
                | "unix-char"
                | "unix-block"
                | "gpu"
                | "usb"
                | "unix-hotplug"
        ) {
            return Err(Error::not_yet(&format!("device {dev:?} of type {t:?}")));
        }
    }
    let privileged = config::flag(&ec, "security.privileged");
    let vol = d.volume_dir(&rec);
    let rootfs = vol.join("rootfs");
    // One look at the database for what the devices resolve against (custom volumes, networks).
    // Nothing in here locks it again (the pools have locks of their own) or waits long: stats,
    // sysfs, a netlink query for a physical NIC. Their errors are taken in the order they were
    // before: disks, unix devices, NICs, and the I/O limits after the id map and templates.
    let (disks, nics, io) = {
        let db = d.db.lock().expect("db lock");
        (
            super::devices::resolve_disks(d, &db.data, &ed, privileged),
            super::nics::resolve(&db.data, name, &rec.config, &ed),
            super::devices::io_limits(d, &db.data, &ed, &rootfs),
        )
    };
    let disks = disks?;
    let unix_devices = super::devices::resolve_nodes(&ed)?;
    let nics = nics?;
    super::volumes::apply_root_size(d, name)?;
    trace.step("devices resolved");
    let last = rec
        .config
        .get("volatile.last_state.idmap")
        .cloned()
        .unwrap_or_else(|| "[]".into());
    // Id map: the one the config asks for now (`security.idmap.*` and `raw.idmap`, its own or
    // a profile's, may have changed while it was stopped; LXD recomputes `volatile.idmap.next`
    // on such a change). An isolated instance keeps the range it holds while no other
    // instance's map meets it; a rootfs shifted on disk keeps its range regardless (it cannot
    // move: re-shifting is not supported yet). Recorded as next and current at the start.
    let (map, _chosen) = if privileged {
        (None, Chosen::none())
    } else {
        let keep = rec
            .config
            .get("volatile.idmap.base")
            .and_then(|b| b.parse().ok());
        let (m, c) = if last == "[]" {
            super::create::choose_map(d, &ec, Some(name), keep)?
        } else {
            (idmap::compute(&ec, keep, Vec::new)?, Chosen::none())
        };
        (Some(m), c)
    };
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
    // A layered volume is mounted as an overlay inside the container's user namespace, over
    // idmapped layers; privileged, shifted and nesting containers get a plain one first.
    let nesting = config::flag(&ec, "security.nesting");
    if mode != RootfsMode::Idmapped || nesting {
        super::pools::make_plain(d, &rec)?;
    }
    let lower = crate::storage::layered::lower_of(&vol)
        .map_err(|e| Error::Host(format!("{}: {e}", vol.display())))?;
    // security.privileged may have changed since the volume was made.
    crate::util::fs::ensure_mode(&vol, crate::storage::instance_volume_mode(privileged))
        .map_err(|e| Error::Host(format!("{}: {e}", vol.display())))?;
    // Templates pending from create/copy/rename, then `start` templates, rendered here. A
    // layered volume's are written by init on the container's own overlay (runtime/init.rs):
    // no overlay is mounted for them; a plain volume's are written beside the run directory's
    // making (below), before the monitor takes the rootfs.
    let meta: Option<api::ImageMetadata> = std::fs::read(vol.join("metadata.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let pending = rec.config.get("volatile.apply_template");
    let applies =
        |t: &api::ImageMetadataTemplate| t.when.iter().any(|w| w == "start" || Some(w) == pending);
    let templating = meta
        .as_ref()
        .is_some_and(|m| m.templates.values().any(applies));
    let rendered: Vec<image::TemplateFile> = match meta.as_ref().filter(|_| templating) {
        None => Vec::new(),
        Some(meta) => {
            let ctx = image::template::Context {
                name: name.to_string(),
                architecture: rec.architecture.clone(),
                privileged,
                ephemeral: rec.ephemeral,
                config: ec.clone(),
                devices: ed.clone(),
            };
            let dir = vol.join("templates");
            let mut files = Vec::new();
            if let Some(trigger) = pending {
                files.extend(image::render_templates(meta, &dir, trigger, &ctx)?);
            }
            files.extend(image::render_templates(meta, &dir, "start", &ctx)?);
            files
        }
    };
    // By init, on a layered volume the container mounts (not one a checkpoint restores: criu
    // runs no init of ours).
    let init_writes = lower.is_some() && !stateful && !rendered.is_empty();
    let templates = || -> Result<()> {
        if init_writes || rendered.is_empty() {
            return Ok(());
        }
        // A layered volume's files are written through its overlay (the instance is stopped
        // and this start holds its lock: no other overlay has its upper layer yet).
        let view = match lower {
            Some(_) => Some(
                crate::storage::layered::view(&vol, true)
                    .map_err(|e| Error::Host(format!("applying templates: {e}")))?,
            ),
            None => None,
        };
        let rootfs = view
            .as_ref()
            .map_or(rootfs.clone(), |v| v.path().join("rootfs"));
        image::write_templates(&rendered, &rootfs)?;
        // Its overlay's end (a sync of the pool's whole filesystem, on the thread that held
        // it) comes after the start's answer.
        if let Some(v) = view {
            v.end_later(runtime::after_next_answer);
        }
        Ok(())
    };
    trace.step("id map");
    let mut limits = config::limits(&ec, d.host.total_memory, d.host.ncpus)?;
    limits.io = io?;
    let mut env: Vec<(String, String)> = vec![("container".into(), "lxc".into())];
    for (k, v) in &ec {
        if let Some(var) = k.strip_prefix("environment.") {
            env.push((var.to_string(), v.clone()));
        }
    }
    let log_dir = d.log_dir(name);
    let make_log_dir = || {
        crate::util::fs::make_dir_from_spare(&log_dir, 0o755)
            .map(drop)
            .map_err(|e| Error::Host(format!("{}: {e}", log_dir.display())))
    };
    let (spec_rootfs, rootfs_lower) = match &lower {
        Some(l) => (
            std::path::absolute(&vol)
                .map_err(|e| Error::Host(format!("{}: {e}", vol.display())))?,
            Some(l.join("rootfs")),
        ),
        None => (rootfs.clone(), None),
    };
    let spec = runtime::Spec {
        name: name.to_string(),
        rootfs: spec_rootfs,
        rootfs_lower,
        rootfs_mode: mode,
        uid_map: map.as_ref().map(|m| m.uid.clone()).unwrap_or_default(),
        gid_map: map.as_ref().map(|m| m.gid.clone()).unwrap_or_default(),
        hostname: name.to_string(),
        init: vec!["/sbin/init".into()],
        env,
        limits,
        nesting,
        seccomp_policy: seccomp_policy(&ec)?,
        apparmor_raw: ec.get("raw.apparmor").cloned().unwrap_or_default(),
        console_log: log_dir.join("console.log"),
        // Another name while a run a restore killed still ends in the usual one.
        cgroup: {
            let base = d
                .cgroup_suffix
                .as_ref()
                .map_or_else(|| name.to_string(), |sfx| format!("{name}.{sfx}"));
            Some(runtime::free_cgroup_name(&base)).filter(|c| c != name)
        },
        disks,
        nics: nics.nics,
        unix_devices,
        templates: if init_writes {
            rendered.clone()
        } else {
            Vec::new()
        },
    };
    // linux.kernel_modules: loaded on the host before the container starts, as LXD does.
    if let Some(v) = ec.get("linux.kernel_modules") {
        make_log_dir()?;
        let modules =
            config::kernel_modules(v).map_err(|e| Error::config("linux.kernel_modules", e))?;
        for m in modules {
            if let Err(e) = load_kernel_module(m) {
                log_line(&log_dir, &format!("start failed: {e}"));
                return Err(e);
            }
        }
    }
    let run_dir = d.run_dir(name);
    // The NICs' MACs (kept for the instance's life) and host ends (this run's) are recorded
    // before the start, so the bridge's rules and leases can name them.
    let nic_keys: Vec<(&str, Option<String>)> = nics
        .volatile
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    new_run(d, name);
    set_volatile(d, name, &nic_keys);
    trace.step("spec ready");
    // The start's record: the power state, the templates applied, the id map in use. Written
    // while the runtime starts (the state document's fsync beside the monitor's setup, on
    // another core), put back as it was if the start fails; a restore records it after.
    let mut kv: Vec<(&'static str, Option<String>)> = vec![
        ("volatile.last_state.power", Some("RUNNING".into())),
        ("volatile.apply_template", None),
    ];
    if let Some(m) = &map {
        let v = m.to_volatile();
        kv.push(("volatile.idmap.current", Some(v.clone())));
        kv.push(("volatile.idmap.next", Some(v)));
        if let Some(e) = m.uid.first() {
            kv.push(("volatile.idmap.base", Some(e.hostid.to_string())));
        }
    }
    let before: Vec<(&'static str, Option<String>)> = {
        let db = d.db.lock().expect("db lock");
        let cur = db.data.instances.get(name).map(|r| &r.config);
        kv.iter()
            .map(|(k, _)| (*k, cur.and_then(|c| c.get(*k)).cloned()))
            .collect()
    };
    let recording = if stateful {
        None
    } else {
        let (d2, n, kv2) = (d.self_arc(), name.to_string(), kv.clone());
        crate::util::pool::run("record", move || {
            update_volatile(&d2, &n, &kv2, Some(time::now()))
        })
        .ok()
    };
    let recorded = |ok: bool| match (recording, ok) {
        (Some(j), true) => j.join(),
        (Some(j), false) => {
            j.join();
            set_volatile(d, name, &before);
        }
        (None, true) => update_volatile(d, name, &kv, Some(time::now())),
        (None, false) => {}
    };
    let started = if stateful {
        make_log_dir()
            .and_then(|()| templates())
            .and_then(|()| super::stateful::restore(d, name, &rec, &spec, &run_dir))
    } else if templating && !init_writes {
        // The templates on a thread of their own while the log and run directories are made.
        std::thread::scope(|s| {
            let applied = s.spawn(templates);
            let prepared = make_log_dir()
                .and_then(|()| runtime::prepare(&spec, &run_dir, None).map_err(Error::from));
            let applied = applied
                .join()
                .unwrap_or_else(|_| Err(Error::Host("applying templates: panicked".into())));
            trace.step("templates and run directory");
            applied.and(prepared)
        })
        .and_then(|p| runtime::start_prepared(&spec, p).map_err(Error::from))
        .map(drop)
    } else {
        make_log_dir()
            .and_then(|()| runtime::start(&spec, &run_dir).map_err(Error::from))
            .map(drop)
    };
    // The log and run directories' spares (made ahead, taken by a rename) made again, once the
    // start is answered.
    let parents = [d.dir.join("logs"), d.dir.join("run")];
    runtime::after_next_answer(move || make_spare_dirs(&parents));
    if let Err(e) = started {
        log_line(&log_dir, &format!("start failed: {e}"));
        recorded(false);
        nics_stopped(d, name, runs(d, name));
        return Err(e);
    }
    trace.step("runtime started");
    if init_writes {
        // What init wrote made durable once the start is answered (the view's end did it).
        let vol = vol.clone();
        runtime::after_next_answer(move || crate::storage::layered::sync_upper(&vol));
    }
    super::bridges::refresh(d, nics.networks);
    // Proxy devices listen once the container runs; one that cannot fails the start.
    if let Err(e) = super::proxy::start_all(d, name, &ed) {
        log_line(&log_dir, &format!("start failed: {e}"));
        if let Err(e2) = runtime::stop(&run_dir, runtime::StopMode::Force) {
            log_line(&log_dir, &format!("stopping after the failed start: {e2}"));
        }
        recorded(false);
        nics_stopped(d, name, runs(d, name));
        return Err(e);
    }
    trace.step("networks and proxies");
    log_line(&log_dir, "started");
    recorded(true);
    trace.step("recorded");
    watch(d.self_arc(), name.to_string());
    d.events
        .lifecycle("instance-started", &url(name), serde_json::json!({}));
    trace.step("watched");
    if let Some(spec) = ec.get("snapshots.schedule") {
        if super::schedule::parse_schedule(spec).is_ok_and(|s| s.is_startup()) {
            if let Err(e) = super::snapshots::snapshot_now(d, name, "", None) {
                log_line(&log_dir, &format!("@startup snapshot failed: {e}"));
            }
        }
    }
    Ok(())
}

/// The spare directories of `parents` (see `util::fs::make_dir_from_spare`), made where missing.
fn make_spare_dirs(parents: &[std::path::PathBuf]) {
    for p in parents {
        if let Err(e) = crate::util::fs::make_spare_dir(p) {
            eprintln!("bivy: making a spare directory in {}: {e}", p.display());
        }
    }
}

/// Make sure kernel module `name` is loaded on the host (LXD's `util.LoadModule`): present in
/// `/sys/module` (loaded or built in), else `modprobe -b NAME`, whose failure fails the start.
fn load_kernel_module(name: &str) -> Result<()> {
    if std::path::Path::new("/sys/module")
        .join(name.replace('-', "_"))
        .exists()
    {
        return Ok(());
    }
    let out = std::process::Command::new("modprobe")
        .args(["-b", name])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::Host(format!(
                "linux.kernel_modules: cannot load {name:?}: running modprobe: {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Host(format!(
            "linux.kernel_modules: cannot load {name:?}: modprobe: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
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
    runtime::seccomp::build_policy(&cfg).map_err(|e| Error::Invalid(format!("seccomp policy: {e}")))
}

/// Stop an instance (the caller holds its busy mark).
pub fn stop(d: &Ctx, name: &str, mode: runtime::StopMode) -> Result<()> {
    let trace = crate::util::trace::Steps::new("stop", name);
    stop_unrecorded(d, name, mode)?;
    trace.step("runtime stopped");
    record_stopped(d, name);
    trace.step("recorded");
    Ok(())
}

/// [`stop`] without its record (`volatile.last_state.power`), for an operation that starts the
/// instance again (a restore: its record says RUNNING throughout, an [`Interim`] record covers a
/// daemon killed in between) and records STOPPED itself when that start fails.
pub fn stop_unrecorded(d: &Ctx, name: &str, mode: runtime::StopMode) -> Result<()> {
    if !matches!(state_of(d, name)?, State::Running { .. }) {
        return Err(Error::Invalid("The instance is already stopped".into()));
    }
    runtime::stop(&d.run_dir(name), mode)?;
    super::proxy::stopped(d, name);
    Ok(())
}

/// [`stop_unrecorded`], forced, for a start that follows at once (a restore): the container is
/// killed and left to end beside the next run (`runtime::kill_and_detach`), whose start need
/// not wait for its processes' end. Waited for as a stop is when the two runs could not be
/// side by side: a NIC that is not a veth pair (a macvlan's address, a physical NIC given back
/// at the end) or a veth whose host name the user fixed. `None`: it was waited for.
pub fn kill_for_restart(d: &Ctx, name: &str) -> Result<Option<runtime::Ending>> {
    if !matches!(state_of(d, name)?, State::Running { .. }) {
        return Err(Error::Invalid("The instance is already stopped".into()));
    }
    let steps = crate::util::trace::Steps::new("kill for restart", name);
    let run_dir = d.run_dir(name);
    let side_by_side = runtime::running_nics(&run_dir).is_ok_and(|nics| {
        let Ok(rec) = record(d, name) else {
            return false;
        };
        let (_, ed) = expanded(d, &rec);
        nics.iter().all(|n| {
            matches!(n.kind, runtime::NicKind::Veth { .. })
                && ed
                    .get(&n.device)
                    .and_then(|c| c.get("host_name"))
                    .is_none_or(|h| h.is_empty())
        })
    });
    if !side_by_side {
        stop_unrecorded(d, name, runtime::StopMode::Force)?;
        return Ok(None);
    }
    steps.step("nics checked");
    let keep = Interim::ALL.map(Interim::file_name);
    let ending = runtime::kill_and_detach(&run_dir, &keep)?;
    steps.step("killed and detached");
    super::proxy::stopped(d, name);
    if ending.is_some() {
        // Its end is announced now, whenever it comes (it may come after the next run began,
        // when its watcher sees that run): `stopped` leaves it out.
        crate::util::lock(&ANNOUNCED).insert(runs(d, name));
        d.events
            .lifecycle("instance-stopped", &url(name), serde_json::json!({}));
    }
    Ok(ending)
}

/// The runs ([`Ctx::runs`]) whose `instance-stopped` [`kill_for_restart`] sent at their kill.
static ANNOUNCED: std::sync::Mutex<std::collections::BTreeSet<u64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// What finishes a run [`kill_for_restart`] left ending, off the caller's path: waits for its
/// end, removes its moved-aside run directory and logs how it ended (its watcher sees the next
/// run's state instead).
pub fn finish_ending(
    d: &Ctx,
    name: &str,
    ending: Option<runtime::Ending>,
) -> impl FnOnce() + Send + 'static {
    let log_dir = d.log_dir(name);
    move || {
        if let Some(e) = ending.and_then(runtime::Ending::finish) {
            log_exit(&log_dir, &e);
        }
    }
}

/// How init ended, for `lxc info --show-log`: a clean stop reads "stopped by request (...)", a
/// forced or timed-out one "killed by request (...)".
fn log_exit(log_dir: &std::path::Path, e: &runtime::ExitInfo) {
    log_line(log_dir, &format!("{} (code {})", e.reason, e.code));
}

/// Record that the instance is stopped (`volatile.last_state.power`), durably with what was
/// written unsynced before it.
pub fn record_stopped(d: &Ctx, name: &str) {
    set_volatile(
        d,
        name,
        &[("volatile.last_state.power", Some("STOPPED".into()))],
    );
    if let Err(e) = d.db.lock().expect("db lock").sync() {
        eprintln!("bivy: {name}: syncing the database: {e}");
    }
}

/// The host is shutting down (SIGPWR to the daemon, LXD's convention): stop every running
/// instance, the highest `boot.stop.priority` first and those of one priority together, each
/// given `boot.host_shutdown_timeout` seconds (default 30) to stop cleanly before it is killed.
/// Each keeps its busy mark (the daemon exits next) so `volatile.last_state.power` stays
/// `RUNNING` and the autostart of the next boot brings it back, as LXD does.
pub fn host_shutdown(d: &Ctx) {
    let names: Vec<String> =
        d.db.lock()
            .expect("db lock")
            .data
            .instances
            .keys()
            .cloned()
            .collect();
    let mut todo: Vec<(i64, String, u64)> = Vec::new();
    for name in names {
        if !matches!(state_of(d, &name), Ok(State::Running { .. })) {
            continue;
        }
        let Ok(rec) = record(d, &name) else { continue };
        let (ec, _) = expanded(d, &rec);
        let int = |k: &str| ec.get(k).and_then(|v| v.parse::<i64>().ok());
        let prio = int("boot.stop.priority").unwrap_or(0);
        let timeout = int("boot.host_shutdown_timeout").map_or(30, |t| t.max(0).unsigned_abs());
        todo.push((prio, name, timeout));
    }
    crate::util::sort::sort_by(&mut todo, |a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for group in todo.chunk_by(|a, b| a.0 == b.0) {
        std::thread::scope(|s| {
            for (prio, name, timeout) in group {
                s.spawn(move || {
                    // A stop, delete or restart in flight owns the instance.
                    if d.busy_insert(name, "host shutdown").is_err() {
                        return;
                    }
                    let mode = runtime::StopMode::Clean(Duration::from_secs(*timeout));
                    let how = match runtime::stop(&d.run_dir(name), mode) {
                        Ok(()) => match state_of(d, name) {
                            Ok(State::Stopped { last_exit: Some(e) }) => e.reason,
                            Ok(other) => format!("{other:?}"),
                            Err(e) => e.to_string(),
                        },
                        Err(e) => format!("stop failed: {e}"),
                    };
                    log_line(
                        &d.log_dir(name),
                        &format!("host shutdown (boot.stop.priority {prio}): {how}"),
                    );
                });
            }
        });
    }
}

/// The number of `name`'s current run ([`Ctx::runs`]; 0: none since this daemon began).
fn runs(d: &Ctx, name: &str) -> u64 {
    crate::util::lock(&d.runs).get(name).copied().unwrap_or(0)
}

/// Number a start of `name` before it records its NICs' host ends: from one sequence for all
/// instances, so a name deleted (its entry with it) and made again never meets an old run's
/// number in a late watcher.
fn new_run(d: &Ctx, name: &str) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::util::lock(&d.runs).insert(name.to_string(), n);
}

/// A stopped instance's NICs are gone with its network namespace: close its proxy devices,
/// forget the NICs' host ends (those of run `run`, unless a later start recorded its own) and
/// bring its bridges' rules in line.
fn nics_stopped(d: &Ctx, name: &str, run: u64) {
    super::proxy::stopped(d, name);
    let nets = {
        let mut db = d.db.lock().expect("db lock");
        let Ok(rec) = super::view::record_in(&db.data, name) else {
            return;
        };
        let (_, ed) =
            super::config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices);
        let nets = super::nics::networks_of(&db.data, &ed);
        // Checked under the database's lock: a start counts itself before it records.
        let keys = super::nics::stopped_volatile(&rec.config);
        if !keys.is_empty() && runs(d, name) == run {
            let _ = db.update(|data| {
                if let Some(r) = data.instances.get_mut(name) {
                    for (k, _) in &keys {
                        r.config.remove(k);
                    }
                }
            });
        }
        nets
    };
    super::bridges::refresh(d, nets);
}

/// Follow a running container until it stops (one thread follows them all: `watch.rs`), then
/// [`stopped`].
fn watch(d: Arc<Ctx>, name: String) {
    let Ok(Some(fd)) = runtime::monitor_pidfd(&d.run_dir(&name)) else {
        return;
    };
    let n = name.clone();
    let run = runs(&d, &name);
    if let Err(e) = super::watch::follow(fd, Box::new(move || stopped(d, name, run))) {
        eprintln!("bivy: {n}: its stop will not be noticed: {e}");
    }
}

/// A followed container's monitor ended (run `run`): record it, restart it after an
/// in-container reboot, delete it when ephemeral.
fn stopped(d: Arc<Ctx>, name: String, run: u64) {
    // A run a restore killed: its end was announced (and is logged) by the restore.
    let announced = crate::util::lock(&ANNOUNCED).remove(&run);
    let last = match state_of(&d, &name) {
        Ok(State::Stopped { last_exit }) => last_exit,
        Ok(State::Running { .. }) => return, // restarted in the meantime; its own watcher follows it
        Err(e) => {
            eprintln!("bivy: {name}: stopped, but its state cannot be read: {e}");
            return;
        }
    };
    if !announced {
        if let Some(e) = &last {
            log_exit(&d.log_dir(&name), e);
        }
        d.events
            .lifecycle("instance-stopped", &url(&name), serde_json::json!({}));
    }
    nics_stopped(&d, &name, run);
    let Ok(rec) = record(&d, &name) else { return };
    // An explicit stop/restart/delete operation owns what happens next.
    if d.busy.lock().expect("busy lock").contains_key(&name) {
        return;
    }
    // A killed monitor left the container's cgroup behind: remove it now (marked busy, so
    // no start runs meanwhile), not at the next start. Only then: after a clean end the
    // mark would race with the user's next step (a delete right after `stop` found the
    // instance "busy: stop in progress" in 1 of ~900 churn cycles).
    if runtime::monitor_left_remains(&d.run_dir(&name)) && d.busy_insert(&name, "stop").is_ok() {
        runtime::reap_dead_monitor(&d.run_dir(&name));
        d.busy.lock().expect("busy lock").remove(&name);
    }
    set_volatile(
        &d,
        &name,
        &[("volatile.last_state.power", Some("STOPPED".into()))],
    );
    // `reboot` inside: the kernel ends init with SIGHUP; start it again like LXD does, an
    // ephemeral instance too (only a stop deletes it).
    if last.is_some_and(|e| e.code == 128 + libc::SIGHUP) {
        if d.busy_insert(&name, "restart").is_ok() {
            if let Err(e) = start(&d, &name) {
                eprintln!("bivy: {name}: restart after reboot failed: {e}");
            }
            d.busy.lock().expect("busy lock").remove(&name);
        }
        return;
    }
    if rec.ephemeral && d.busy_insert(&name, "delete").is_ok() {
        let _ = delete_now(&d, &name);
        d.busy.lock().expect("busy lock").remove(&name);
    }
}

/// Finish or undo what a killed daemon left: volumes without a record (half-made creates,
/// half-done deletes), a missing default profile, watchers and proxy devices for running
/// containers.
pub fn recover(d: &Arc<Ctx>) -> std::io::Result<()> {
    let trace = crate::util::trace::Steps::new("recover", "");
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
    }
    super::pools::recover(d);
    trace.step("pools' volumes and records checked");
    super::backups::remove_orphans(d);
    super::bridges::recover(d);
    trace.step("backups and bridges");
    crate::util::fs::create_dir_mode(&d.dir.join("run"), 0o711)?;
    crate::util::fs::create_dir_mode(&d.dir.join("logs"), 0o700)?;
    // An instance's run and log directories come and go with it (see spread_subdirs).
    crate::util::fs::spread_subdirs_or_log(&d.dir.join("run"), "run directories");
    crate::util::fs::spread_subdirs_or_log(&d.dir.join("logs"), "log directories");
    // Their spares, which starts take with a rename (see make_dir_from_spare).
    make_spare_dirs(&[d.dir.join("run"), d.dir.join("logs")]);
    // Runs a restore killed and moved aside whose end a killed daemon did not see.
    runtime::finish_ended_runs(&d.dir.join("run"));
    // An instance without a run directory has never run since the host booted (or was
    // deleted): no monitor, no interim changes, nothing to take up but a stateful stop's
    // leftovers. One directory read instead of a look at each one's run files.
    let with_run_dir = crate::util::fs::names_in(&d.dir.join("run"));
    let names: Vec<String> =
        d.db.lock()
            .expect("db lock")
            .data
            .instances
            .iter()
            .filter(|(n, r)| r.stateful || with_run_dir.contains(std::ffi::OsStr::new(n.as_str())))
            .map(|(n, _)| n.clone())
            .collect();
    // Each one's files are its own: two threads take them up when there are many.
    let workers = if names.len() >= 16 {
        crate::util::par::workers()
    } else {
        1
    };
    trace.step("run directories read");
    crate::util::par::map(&names, workers, |n| adopt(d, n.clone()));
    trace.step(&format!("{} instances taken up", names.len()));
    Ok(())
}

/// Take up an instance this daemon did not start: finish or undo what a killed daemon left
/// half-done on it and, when it runs, listen for its proxy devices and watch it (at start, and
/// for an instance `recover` brings back).
pub fn adopt(d: &Arc<Ctx>, n: String) {
    // One read of its run directory says what there is to look at (a daemon's start takes up
    // every instance that ran since boot; most have nothing left to undo).
    let mut present = crate::util::fs::names_in(&d.run_dir(&n));
    let interim = |p: &std::collections::HashSet<std::ffi::OsString>| {
        Interim::ALL
            .iter()
            .any(|i| p.contains(std::ffi::OsStr::new(i.file_name())))
    };
    if interim(&present) {
        undo_interim(d, &n);
        present = crate::util::fs::names_in(&d.run_dir(&n));
    }
    super::stateful::recover(d, &n);
    if !runtime::may_have_monitor(&present) {
        return;
    }
    // Stopped: its monitor may have been killed while no daemon ran. (A daemon's start takes
    // up every instance that ran since boot: no exit record is read for the stopped ones.)
    if !runtime::is_running(&d.run_dir(&n)) {
        runtime::reap_dead_monitor(&d.run_dir(&n));
        return;
    }
    match state_of(d, &n) {
        Ok(State::Running { .. }) => {
            // Proxy devices live in the daemon: a new daemon listens again.
            if let Ok(rec) = record(d, &n) {
                let (_, ed) = expanded(d, &rec);
                // Disks and nodes as recorded, whatever a killed daemon's hot-plug left.
                if let Err(e) = super::devices::reconcile(d, &n, &ed) {
                    eprintln!("bivy: {n}: {e}");
                    log_line(&d.log_dir(&n), &format!("devices not reconciled: {e}"));
                }
                // NICs too (a hot-plug's veth, macvlan or physical NIC).
                let run_dir = d.run_dir(&n);
                let nics_ok = super::nics::consistent(&rec.config, &run_dir, &ed);
                if let (false, Ok(State::Running { init_pid, .. })) = (nics_ok, state_of(d, &n)) {
                    let data = d.db.lock().expect("db lock").data.clone();
                    match super::nics::reconcile(&data, &n, &rec.config, &run_dir, init_pid, &ed) {
                        Ok(kv) if !kv.is_empty() => {
                            let kv: Vec<(&str, Option<String>)> =
                                kv.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                            set_volatile(d, &n, &kv);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("bivy: {n}: {e}");
                            log_line(&d.log_dir(&n), &format!("NICs not reconciled: {e}"));
                        }
                    }
                }
                if let Err(e) = super::proxy::start_all(d, &n, &ed) {
                    eprintln!("bivy: {n}: {e}");
                    log_line(&d.log_dir(&n), &format!("proxy devices not restarted: {e}"));
                }
            }
            watch(d.clone(), n)
        }
        // Its monitor may have been killed while no daemon ran.
        Ok(State::Stopped { .. }) => runtime::reap_dead_monitor(&d.run_dir(&n)),
        Err(e) => eprintln!("bivy: {e}"),
    }
}

/// Start instances with `boot.autostart=true` (or unset and last running) on the first daemon
/// start after a host boot; later daemon restarts leave stopped instances alone.
pub fn autostart(d: &Arc<Ctx>) {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let marker = d.dir.join("run").join("boot_id");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(boot_id.as_str()) {
        return;
    }
    let _ = crate::util::fs::atomic_write(&marker, boot_id.as_bytes());
    let records = super::view::all_records(d);
    // (-priority, name, delay): highest boot.autostart.priority first, then by name.
    let mut todo: Vec<(i64, String, u64)> = Vec::new();
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
            let delay = ec
                .get("boot.autostart.delay")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            todo.push((-prio, name, delay));
        }
    }
    crate::util::sort::sort(&mut todo);
    let d = d.clone();
    std::thread::spawn(move || {
        for (_, name, delay) in todo {
            match state_of(&d, &name) {
                Ok(State::Stopped { .. }) => {}
                Ok(State::Running { .. }) => continue,
                Err(e) => {
                    eprintln!("bivy: autostart of {name} skipped: {e}");
                    continue;
                }
            }
            if d.busy_insert(&name, "start").is_ok() {
                let started = start(&d, &name);
                d.busy.lock().expect("busy lock").remove(&name);
                match started {
                    Err(e) => eprintln!("bivy: autostart of {name} failed: {e}"),
                    // boot.autostart.delay: seconds to wait after this one started, before the
                    // next (LXD's semantics).
                    Ok(()) => {
                        if delay > 0 {
                            std::thread::sleep(std::time::Duration::from_secs(delay));
                        }
                    }
                }
            }
        }
    });
}
