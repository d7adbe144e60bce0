//! Instance verbs: launch, init, start/stop/restart/pause, delete, move, copy, snapshot, restore,
//! list and info.

use argh::FromArgs;
use serde_json::json;

use super::table::{self, Format};
use super::{client, fail, instance_path, parse, split_remote, target, CmdResult, Fail};
use crate::api::{
    Devices, Image, ImageAliasesEntry, Instance, InstanceFull, InstancePost, InstanceSource,
    InstanceStatePut, InstancesPost, InstancesPostPut, StringMap,
};
use crate::client::{urlencode, Client};
use crate::util::regex::{anchored, is_match};

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Create instances from images (launch also starts them; `launch --console` then attaches to
/// its console).
pub struct LaunchArgs {
    #[argh(positional)]
    /// image: [remote:]alias or fingerprint
    image: String,
    #[argh(positional)]
    /// instance name (the server picks one when omitted)
    name: Option<String>,
    #[argh(option, short = 'c')]
    /// config key/value to apply to the new instance
    config: Vec<String>,
    #[argh(option, short = 'p')]
    /// profile to apply to the new instance
    profile: Vec<String>,
    #[argh(switch, long = "no-profiles")]
    /// create the instance with no profiles applied
    no_profiles: bool,
    #[argh(switch, short = 'e')]
    /// ephemeral instance
    ephemeral: bool,
    #[argh(option, short = 's')]
    /// storage pool name
    storage: Option<String>,
    #[argh(option, short = 'n')]
    /// network name
    network: Option<String>,
    #[argh(option, long = "type", short = 't')]
    /// instance type: c<CPUs>-m<GiB of memory> (named cloud types are not supported)
    instance_type: Option<String>,
    #[argh(option, short = 'd')]
    /// new key/value to apply to a specific device (DEVICE,KEY=VALUE)
    device: Vec<String>,
    #[argh(switch)]
    /// create an empty instance (no image)
    empty: bool,
    #[argh(switch)]
    /// create a virtual machine (not supported)
    vm: bool,
}

/// `-d DEVICE,KEY=VALUE` arguments, by device (lxc's `parseDeviceOverrides`).
fn device_overrides(args: &[String]) -> Result<Devices, Fail> {
    let mut out = Devices::new();
    for entry in args {
        let Some((dev, kv)) = entry.split_once(',') else {
            return fail(format!(
                "Bad device override syntax, expecting <device>,<key>=<value>: {entry}"
            ));
        };
        let Some((k, v)) = kv.split_once('=') else {
            return fail(format!(
                "Bad device override syntax, expecting <device>,<key>=<value>: {entry}"
            ));
        };
        out.entry(dev.to_string())
            .or_default()
            .insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Apply device overrides as lxc does: to a device of the request itself, else to a copy of
/// the profiles' device of that name (the `default` profile when none is named), which the
/// instance then has of its own.
fn apply_device_overrides(
    c: &Client,
    devices: &mut Devices,
    overrides: Devices,
    profiles: Option<&[String]>,
) -> Result<(), Fail> {
    let mut from_profiles = Devices::new();
    if overrides.keys().any(|d| !devices.contains_key(d)) {
        let default = ["default".to_string()];
        for p in profiles.filter(|p| !p.is_empty()).unwrap_or(&default) {
            let prof: crate::api::Profile = c
                .get(&format!("/1.0/profiles/{}", urlencode(p, false)))
                .map_err(|e| format!("Failed loading profile {p:?} for device override: {e}"))?;
            from_profiles.extend(prof.devices);
        }
    }
    for (dev, kv) in overrides {
        let base = match devices.remove(&dev) {
            Some(d) => d,
            None => from_profiles.remove(&dev).ok_or_else(|| {
                format!("Cannot override config for device {dev:?}: Device not found in profile devices")
            })?,
        };
        let mut d = base;
        d.extend(kv);
        devices.insert(dev, d);
    }
    Ok(())
}

/// Resolve an image name (alias or fingerprint prefix) to its full fingerprint, like lxc.
pub fn resolve_image(c: &Client, name: &str) -> Result<String, Fail> {
    if let Ok(alias) =
        c.get::<ImageAliasesEntry>(&format!("/1.0/images/aliases/{}", urlencode(name, false)))
    {
        return Ok(alias.target);
    }
    match c.get::<Image>(&format!("/1.0/images/{}", urlencode(name, false))) {
        Ok(img) => Ok(img.fingerprint),
        Err(_) => fail("Image not found"),
    }
}

/// The instance name from a create operation's resources.
fn created_name(op: &crate::api::Operation) -> Option<String> {
    let res = op.resources.as_ref()?;
    let url = res
        .get("instances")
        .or_else(|| res.get("containers"))?
        .first()?;
    Some(url.rsplit('/').next()?.to_string())
}

pub fn launch(args: &[String], start: bool) -> CmdResult {
    let cmd = if start { "bivy launch" } else { "bivy init" };
    // `launch --console[=TYPE]` (a flag whose value is optional, which argh has not): taken
    // out before the rest is parsed.
    let mut console = None;
    let args: Vec<String> = args
        .iter()
        .filter(|a| match a.as_str() {
            "--console" if start => {
                console = Some("console".to_string());
                false
            }
            a if start && a.starts_with("--console=") => {
                console = Some(a["--console=".len()..].to_string());
                false
            }
            _ => true,
        })
        .cloned()
        .collect();
    match console.as_deref() {
        None | Some("console") => {}
        Some("vga") => return fail("not supported yet: VGA consoles (virtual machines)"),
        Some(t) => return fail(format!("Unknown console type {t:?}")),
    }
    // `init` with no image (lxc allows `init --empty NAME`).
    let a: LaunchArgs = parse(&[cmd], &args)?;
    if a.vm {
        return fail("not supported yet: virtual machines");
    }
    let overrides = device_overrides(&a.device)?;
    let mut config = StringMap::new();
    for kv in &a.config {
        match kv.split_once('=') {
            Some((k, v)) => {
                config.insert(k.to_string(), v.to_string());
            }
            None => return fail(format!("Bad key=value pair: {kv}")),
        }
    }
    let mut devices = Devices::new();
    if let Some(pool) = &a.storage {
        let mut d = StringMap::new();
        d.insert("type".into(), "disk".into());
        d.insert("path".into(), "/".into());
        d.insert("pool".into(), pool.clone());
        devices.insert("root".into(), d);
    }
    let (image, name) = if a.empty {
        (None, Some(a.image.clone()))
    } else {
        (Some(a.image.clone()), a.name.clone())
    };
    // `launch [remote:]image [remote:][name]`: the instance goes to the remote its name gives
    // (the default one without a name), the image comes from the remote the image gives.
    let (remote, name) = match name {
        Some(n) => {
            let (r, n) = split_remote(&n)?;
            (r, (!n.is_empty()).then(|| n.to_string()))
        }
        None => (super::conf()?.default_remote.clone(), None),
    };
    let c = super::client_of(&remote)?;
    match &name {
        Some(n) => println!("Creating {n}"),
        None => println!("Creating the instance"),
    }
    if let Some(net) = &a.network {
        // As lxc (after `Creating`): `network=NET` for a managed network when the server knows
        // `instance_nic_network`, else a bridged or macvlan nic with `parent=NET`.
        devices.insert("eth0".into(), super::network::launch_nic(&c, net)?);
    }
    let (source, servers) = match &image {
        Some(img) => {
            let (iremote, img) = split_remote(img)?;
            if iremote == remote {
                let source = InstanceSource {
                    kind: "image".into(),
                    fingerprint: resolve_image(&c, img)?,
                    ..Default::default()
                };
                (source, Vec::new())
            } else {
                let p = super::image::pull_source(&iremote, img)?;
                let source = InstanceSource {
                    kind: "image".into(),
                    mode: "pull".into(),
                    protocol: p.protocol.clone(),
                    certificate: p.certificate.clone(),
                    alias: p.alias.clone(),
                    fingerprint: p.fingerprint.clone(),
                    secret: p.secret.clone(),
                    ..Default::default()
                };
                (source, p.servers)
            }
        }
        None => {
            let source = InstanceSource {
                kind: "none".into(),
                ..Default::default()
            };
            (source, Vec::new())
        }
    };
    let profiles = if a.no_profiles {
        Some(Vec::new())
    } else if a.profile.is_empty() {
        None
    } else {
        Some(a.profile.clone())
    };
    apply_device_overrides(&c, &mut devices, overrides, profiles.as_deref())?;
    // A server with `instance_create_start` starts the instance in the create's operation: one
    // operation to wait for instead of two (the output stays lxc 5.0.2's).
    let start_in_create = start && super::network::has_extension(&c, "instance_create_start")?;
    let mut req = InstancesPost {
        put: InstancesPostPut {
            config: Some(config),
            devices: Some(devices),
            ephemeral: a.ephemeral,
            profiles,
            ..Default::default()
        },
        name: name.clone().unwrap_or_default(),
        source,
        kind: "container".into(),
        start: start_in_create,
        instance_type: a.instance_type.clone().unwrap_or_default(),
    };
    let op = if servers.is_empty() {
        let reply = c.query("POST", "/1.0/instances", Some(&req), None)?;
        match reply.operation_id() {
            Some(id) => match c.wait_operation(&id) {
                Ok(op) => Some(op),
                // The create's operation failed after making the instance: its start did.
                Err(e) if start_in_create && instance_exists(&c, name.as_deref()) => {
                    let n = name.as_deref().unwrap_or_default();
                    println!("Starting {n}");
                    return start_failed(n, e);
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        }
    } else {
        // The daemon pulls the image from another server: each of its addresses in turn, with
        // the transfer's progress shown.
        let op = super::image::try_servers("Failed instance creation", &servers, |server| {
            req.source.server = server.to_string();
            let reply = c.query("POST", "/1.0/instances", Some(&req), None)?;
            match reply.operation_id() {
                Some(id) => super::wait_progress(&c, &id, "Retrieving image").map(Some),
                None => Ok(None),
            }
        })?;
        Some(op)
    };
    let name = match (name, op.as_ref().and_then(created_name)) {
        (Some(n), _) => n,
        (None, Some(n)) => {
            println!("Instance name is: {n}");
            n
        }
        (None, None) => return fail("Failed to get the new instance name"),
    };
    if start {
        println!("Starting {name}");
    }
    if start && !start_in_create {
        let put = InstanceStatePut {
            action: "start".into(),
            timeout: -1,
            ..Default::default()
        };
        change_state(&c, &name, &put)?;
    }
    if console.is_some() {
        return super::console::run(&[format!("{remote}:{name}")]);
    }
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Change the state of instances.
pub struct StateArgs {
    #[argh(positional)]
    /// instance names
    names: Vec<String>,
    #[argh(switch, short = 'f')]
    /// force the instance to stop
    force: bool,
    #[argh(option)]
    /// time to wait for a clean stop, in seconds: the stop fails if the instance still runs
    /// then (-1: up to 10 minutes, then it is killed)
    timeout: Option<i64>,
    #[argh(switch)]
    /// run against all instances
    all: bool,
    #[argh(switch)]
    /// store the instance state (stop: checkpoint with CRIU; needs migration.stateful=true)
    stateful: bool,
    #[argh(switch)]
    /// ignore the instance state (start: discard a saved state instead of restoring it)
    stateless: bool,
}

/// Whether the instance `name` exists on `c` (false without a name).
fn instance_exists(c: &Client, name: Option<&str>) -> bool {
    name.is_some_and(|n| c.query("GET", &instance_path(n), None::<&()>, None).is_ok())
}

/// `PUT .../state` and wait. Like lxc, a start that fails while running (not one the server
/// refused outright) points at the instance log.
fn change_state(c: &Client, name: &str, put: &InstanceStatePut) -> Result<(), Fail> {
    let reply = c.query(
        "PUT",
        &format!("{}/state", instance_path(name)),
        Some(put),
        None,
    )?;
    if let Some(id) = reply.operation_id() {
        if let Err(e) = c.wait_operation(&id) {
            if put.action == "start" {
                return start_failed(name, e);
            }
            return fail(e.0);
        }
    }
    Ok(())
}

/// A start that failed while running: its error, pointing at the instance log as lxc does.
fn start_failed<T>(name: &str, e: crate::client::Error) -> Result<T, Fail> {
    fail(format!(
        "{}\nTry `bivy info --show-log {name}` for more info",
        e.0
    ))
}

/// The writable state of `src` (an instance, or `NAME/SNAPSHOT`) on `c`, as a copy starts from
/// it (lxc's): architecture, config, devices, profiles, description; and whether it runs.
fn copy_source(c: &Client, src: &str) -> Result<(Instance, bool), Fail> {
    Ok(match src.split_once('/') {
        Some((i, snap)) => {
            let s: crate::api::InstanceSnapshot = c.get(&format!(
                "{}/snapshots/{}",
                instance_path(i),
                urlencode(snap, false)
            ))?;
            let inst = Instance {
                architecture: s.architecture,
                config: s.config,
                devices: s.devices,
                profiles: s.profiles,
                ..Default::default()
            };
            (inst, false)
        }
        None => {
            let inst: Instance = c.get(&instance_path(src))?;
            let running = inst.status == "Running";
            (inst, running)
        }
    })
}

/// What a copy between remotes carries over.
struct Migrate<'a> {
    instance_only: bool,
    stateless: bool,
    ephemeral: bool,
    config: &'a [String],
    profiles: &'a [String],
    /// `--no-profiles`: the copy has none (unless `-p` names some).
    no_profiles: bool,
    /// `-d DEVICE,KEY=VALUE` overrides of the copy's own devices.
    devices: &'a [String],
    /// `-s POOL`: the copy's root disk on this pool.
    storage: Option<&'a str>,
    /// A move: the source's volatile keys go with it (its MACs, say), as lxc's.
    keep_volatile: bool,
    /// `pull` (the default), `push` or `relay`, as lxc's `--mode`.
    mode: &'a str,
    /// `--refresh`: update the target if it exists (a plain copy if not).
    refresh: bool,
    /// `--refresh-exclude-older` (Incus's).
    exclude_older: bool,
}

/// A new operation's id and the websocket secrets in its metadata.
fn op_secrets(
    reply: &crate::client::Reply,
    who: &str,
) -> Result<(String, std::collections::BTreeMap<String, String>), Fail> {
    let id = reply
        .operation_id()
        .ok_or_else(|| Fail::Error(format!("The {who} server made no migration operation")))?;
    let secrets = reply
        .envelope
        .metadata
        .get("metadata")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    Ok((id, secrets))
}

/// `copy`/`move` between remotes, as lxc 5.0.2 drives it. Pull (the default): the source makes
/// a websocket operation with one-time secrets; the target, given its address, certificate and
/// secrets, dials it and pulls the instance. Push: the target makes the websocket operation and
/// the source dials it. Relay: both make one and this client joins their websockets. A failure
/// on one side cancels the other's operation.
///
/// Whether the transfer was live (the source, running, was checkpointed: it is now stopped with
/// its state saved).
fn migrate(sr: &str, src: &str, dr: &str, dst: &str, m: &Migrate) -> Result<bool, Fail> {
    if !matches!(m.mode, "pull" | "push" | "relay") {
        return fail(format!(
            "Invalid migration mode {:?}: pull, push or relay",
            m.mode
        ));
    }
    let sc = super::client_of(sr)?;
    let dc = super::client_of(dr)?;
    let (source, running) = copy_source(&sc, src)?;
    let path = match src.split_once('/') {
        Some((i, snap)) => format!("{}/snapshots/{}", instance_path(i), urlencode(snap, false)),
        None => instance_path(src),
    };
    let base_image = source
        .config
        .get("volatile.base_image")
        .cloned()
        .unwrap_or_default();
    if m.refresh && src.contains('/') {
        return fail("--refresh can only be used with instances");
    }
    // As lxc: a refresh is never live, and it updates the target only if it exists.
    let live = running && !m.stateless && !m.refresh;
    let refreshing = m.refresh && dc.get::<serde_json::Value>(&instance_path(dst)).is_ok();
    let writable = writable_of(&source);
    let post = crate::api::InstancePost {
        name: dst.to_string(),
        migration: true,
        live,
        instance_only: m.instance_only,
        container_only: m.instance_only,
        ..Default::default()
    };
    let req = InstancesPost {
        put: copy_put(source, m)?,
        name: dst.to_string(),
        source: InstanceSource {
            kind: "migration".into(),
            mode: if m.mode == "pull" { "pull" } else { "push" }.into(),
            base_image,
            live,
            instance_only: m.instance_only,
            container_only: m.instance_only,
            refresh: m.refresh,
            refresh_exclude_older: m.exclude_older,
            ..Default::default()
        },
        kind: "container".into(),
        ..Default::default()
    };
    let transfer = transfer_by_mode(
        Transfer {
            sc: &sc,
            dc: &dc,
            sr,
            dr,
            source: &path,
            target: "/1.0/instances",
            post: serde_json::to_value(&post).expect("JSON"),
            req: serde_json::to_value(&req).expect("JSON"),
            live: post.live,
            label: "Transferring instance",
        },
        m.mode,
    );
    if refreshing && transfer.is_ok() {
        put_refreshed_config(&dc, dst, writable)?;
    }
    transfer.map(|()| live)
}

/// What lxc's PUT after a refresh takes from the source: config, devices, profiles,
/// description, ephemeral.
type Writable = (StringMap, crate::api::Devices, Vec<String>, String, bool);

/// The new instance's writable part in a copy, as lxc makes it: the source's own config (its
/// volatile keys left out) with the `-c` keys, its profiles or the `-p` ones (none with
/// `--no-profiles`), its own devices with the `-d` overrides (a device it lacks is made of the
/// override's keys alone), its root disk on the `-s` pool (a `root` disk made when it has none
/// of its own). A move keeps the volatile keys but the last power state.
fn copy_put(source: Instance, m: &Migrate) -> Result<InstancesPostPut, Fail> {
    let mut config = source.config;
    if m.keep_volatile {
        // What described the source running (its power state, its NICs' host-side names)
        // does not go with it.
        config.retain(|k, _| {
            k != "volatile.last_state.power"
                && !(k.starts_with("volatile.") && k.ends_with(".host_name"))
        });
    } else {
        config.retain(|k, _| !k.starts_with("volatile."));
    }
    for (k, v) in super::key_values(m.config)? {
        config.insert(k, v);
    }
    let profiles = if !m.profiles.is_empty() {
        m.profiles.to_vec()
    } else if m.no_profiles {
        Vec::new()
    } else {
        source.profiles
    };
    let mut devices = source.devices;
    for (dev, kv) in device_overrides(m.devices)? {
        devices.entry(dev).or_default().extend(kv);
    }
    if let Some(pool) = m.storage {
        let root = devices
            .iter()
            .find(|(_, d)| {
                d.get("type").map(String::as_str) == Some("disk")
                    && d.get("path").map(String::as_str) == Some("/")
                    && !d.contains_key("source")
            })
            .map(|(k, _)| k.clone());
        match root {
            Some(k) => {
                devices
                    .get_mut(&k)
                    .expect("found above")
                    .insert("pool".into(), pool.to_string());
            }
            // Over a `-d root,...` override, which is kept (lxc replaced it).
            None => devices.entry("root".into()).or_default().extend(
                [("type", "disk"), ("path", "/"), ("pool", pool)]
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
        }
    }
    Ok(InstancesPostPut {
        architecture: source.architecture,
        config: Some(config),
        devices: Some(devices),
        ephemeral: m.ephemeral,
        profiles: Some(profiles),
        description: source.description,
        ..Default::default()
    })
}

fn writable_of(i: &Instance) -> Writable {
    (
        i.config.clone(),
        i.devices.clone(),
        i.profiles.clone(),
        i.description.clone(),
        i.ephemeral,
    )
}

/// As lxc after a refresh: the source's writable config (config, devices, profiles,
/// description, ephemeral) onto the refreshed target `dst`, whose own volatile keys stay.
fn put_refreshed_config(dc: &Client, dst: &str, writable: Writable) -> Result<(), Fail> {
    let (config, devices, profiles, description, ephemeral) = writable;
    let cur: Instance = dc.get(&instance_path(dst))?;
    let mut cfg = config;
    cfg.retain(|k, _| !k.starts_with("volatile."));
    cfg.extend(
        cur.config
            .into_iter()
            .filter(|(k, _)| k.starts_with("volatile.")),
    );
    let put = json!({"architecture": cur.architecture, "config": cfg, "devices": devices,
        "profiles": profiles, "description": description, "ephemeral": ephemeral});
    dc.query("PUT", &instance_path(dst), Some(&put), None)?;
    Ok(())
}

/// One transfer between two servers, as lxc drives it (an instance's or a custom volume's).
pub(super) struct Transfer<'a> {
    pub sc: &'a Client,
    pub dc: &'a Client,
    /// The source's and the target's remote names.
    pub sr: &'a str,
    pub dr: &'a str,
    /// Where the source's request `post` and the target's `req` go.
    pub source: &'a str,
    pub target: &'a str,
    pub post: serde_json::Value,
    pub req: serde_json::Value,
    /// A live migration (a third stream, `criu`).
    pub live: bool,
    /// The progress line's words.
    pub label: &'a str,
}

/// Transfer `t` in `mode`: pull (the target dials the source's operation), push (the source
/// dials the target's) or relay (this client joins the two operations' websockets).
pub(super) fn transfer_by_mode(t: Transfer<'_>, mode: &str) -> Result<(), Fail> {
    let Transfer {
        sc,
        dc,
        sr,
        dr,
        source: path,
        target,
        mut post,
        mut req,
        live,
        label,
    } = t;
    let wait_target = |id: &str| {
        super::wait_progress(dc, id, label)
            .map(|_| ())
            .map_err(Fail::from)
    };
    if mode == "pull" {
        let (servers, certificate) = super::image::connection_info(sr)?;
        let (op, secrets) = op_secrets(&sc.query("POST", path, Some(&post), None)?, "source")?;
        req["source"]["operation"] = json!(format!(
            "{}/1.0/operations/{op}",
            servers[0].trim_end_matches('/')
        ));
        req["source"]["certificate"] = json!(certificate);
        req["source"]["secrets"] = json!(secrets);
        let target = dc
            .query("POST", target, Some(&req), None)
            .map_err(Fail::from)
            .and_then(|r| r.operation_id().map_or(Ok(()), |id| wait_target(&id)));
        if let Err(e) = target {
            let _ = sc.delete(&format!("/1.0/operations/{op}"));
            return Err(e);
        }
        sc.wait_operation(&op)?;
        return Ok(());
    }
    // Push and relay: the target's operation first, waiting for the source's streams.
    let (top, tsecrets) = op_secrets(&dc.query("POST", target, Some(&req), None)?, "target")?;
    let cancel_target = || {
        let _ = dc.delete(&format!("/1.0/operations/{top}"));
    };
    if mode == "push" {
        let (servers, certificate) = super::image::connection_info(dr)?;
        post["target"] = json!({
            "certificate": certificate,
            "operation": format!("{}/1.0/operations/{top}", servers[0].trim_end_matches('/')),
            "secrets": tsecrets,
        });
        let sop = match sc.query("POST", path, Some(&post), None) {
            Ok(r) => r.operation_id(),
            Err(e) => {
                cancel_target();
                return Err(e.into());
            }
        };
        wait_target(&top)?;
        if let Some(sop) = sop {
            sc.wait_operation(&sop)?;
        }
        return Ok(());
    }
    // Relay: the source's operation as in pull mode, and each stream joined to the target's.
    let (sop, ssecrets) = match sc.query("POST", path, Some(&post), None) {
        Ok(r) => op_secrets(&r, "source")?,
        Err(e) => {
            cancel_target();
            return Err(e.into());
        }
    };
    let mut pipes = Vec::new();
    for &k in crate::migration::streams(live) {
        let (Some(ss), Some(ts)) = (ssecrets.get(k), tsecrets.get(k)) else {
            cancel_target();
            let _ = sc.delete(&format!("/1.0/operations/{sop}"));
            return fail(format!("Missing {k} secret in a migration operation"));
        };
        let joined = sc
            .operation_websocket(&sop, ss)
            .and_then(|a| dc.operation_websocket(&top, ts).map(|b| (a, b)));
        match joined {
            Ok(((s_tx, s_rx), (t_tx, t_rx))) => {
                pipes.push(std::thread::spawn(move || relay_frames(s_rx, t_tx)));
                pipes.push(std::thread::spawn(move || relay_frames(t_rx, s_tx)));
            }
            Err(e) => {
                cancel_target();
                let _ = sc.delete(&format!("/1.0/operations/{sop}"));
                return Err(e.into());
            }
        }
    }
    let target = wait_target(&top);
    if target.is_err() {
        let _ = sc.delete(&format!("/1.0/operations/{sop}"));
    }
    let source = sc.wait_operation(&sop).map(|_| ()).map_err(Fail::from);
    for p in pipes {
        let _ = p.join();
    }
    target.and(source)
}

/// Copy one websocket's frames to another as they come (binary, text and the close), until
/// either side ends.
fn relay_frames(mut from: crate::http::ws::Receiver, to: crate::http::ws::Sender) {
    use crate::http::ws::Message;
    loop {
        let sent = match from.recv() {
            Ok(Message::Binary(b)) => to.send_binary(&b),
            Ok(Message::Text(t)) => to.send_text(&t),
            Ok(Message::Close(_)) | Err(_) => break,
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.close(1000);
    to.shutdown();
}

pub fn state(args: &[String], action: &str) -> CmdResult {
    let a: StateArgs = parse(
        &[&format!(
            "bivy {}",
            if action == "freeze" { "pause" } else { action }
        )],
        args,
    )?;
    // Each name may be on another remote (`start a b:c`); `--all` means the default remote's.
    let mut names: Vec<(Client, String)> = Vec::new();
    for n in &a.names {
        let (c, n) = target(n)?;
        names.push((c, n.to_string()));
    }
    if a.all {
        let c = client()?;
        let all: Vec<Instance> = c.get("/1.0/instances?recursion=1")?;
        names.extend(
            all.into_iter()
                .filter(|i| match action {
                    "start" => i.status != "Running",
                    _ => i.status == "Running",
                })
                .map(|i| (c.clone(), i.name)),
        );
    }
    if names.is_empty() {
        return fail("Missing instance name");
    }
    for (c, name) in &names {
        let c = c.clone();
        let mut act = action.to_string();
        let mut stateful = a.stateful;
        if action == "start" {
            let inst: Instance = c.get(&instance_path(name))?;
            if inst.status == "Frozen" {
                act = "unfreeze".into();
            }
            // As lxc: a saved state is restored unless --stateless says to discard it.
            if inst.stateful && !a.stateless {
                stateful = true;
            }
        }
        let put = InstanceStatePut {
            action: act,
            timeout: a.timeout.unwrap_or(-1),
            force: a.force,
            stateful,
        };
        change_state(&c, name, &put)?;
    }
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Delete instances and snapshots.
pub struct DeleteArgs {
    #[argh(positional)]
    /// instance names (NAME or NAME/SNAPSHOT)
    names: Vec<String>,
    #[argh(switch, short = 'f')]
    /// force the removal of running instances
    force: bool,
    #[argh(switch, short = 'i')]
    /// require user confirmation (ignored)
    interactive: bool,
}

pub fn delete(args: &[String]) -> CmdResult {
    let a: DeleteArgs = parse(&["bivy delete"], args)?;
    let _ = a.interactive;
    if a.names.is_empty() {
        return fail("Missing instance name");
    }
    for n in &a.names {
        let (c, n) = target(n)?;
        if let Some((inst, snap)) = n.split_once('/') {
            c.delete(&format!(
                "{}/snapshots/{}",
                instance_path(inst),
                urlencode(snap, false)
            ))?;
            continue;
        }
        let inst: Instance = c.get(&instance_path(n))?;
        if inst.status != "Stopped" && inst.status_code != crate::api::status::STOPPED {
            if !a.force {
                return fail("The instance is currently running, stop it first or pass --force");
            }
            let put = InstanceStatePut {
                action: "stop".into(),
                timeout: -1,
                force: true,
                stateful: false,
            };
            c.put(&format!("{}/state", instance_path(n)), &put, None)?;
            if inst.ephemeral {
                // An ephemeral instance goes away when stopped.
                continue;
            }
        }
        c.delete(&instance_path(n))?;
    }
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Rename instances or snapshots on the local server.
pub struct MoveArgs {
    #[argh(positional)]
    /// source (NAME or NAME/SNAPSHOT)
    source: String,
    #[argh(positional)]
    /// new name, or [remote:][name] on another server (optional with --storage)
    target: Option<String>,
    #[argh(option, short = 's')]
    /// storage pool to move the instance to, on its server (under its name or the new one)
    storage: Option<String>,
    #[argh(switch, long = "instance-only")]
    /// move the instance without its snapshots (between servers or pools)
    instance_only: bool,
    #[argh(switch)]
    /// move a running instance without its state (between servers: stopped after the copy;
    /// between pools: refused, it must be stopped)
    stateless: bool,
    #[argh(option, default = "String::from(\"pull\")")]
    /// between servers: transfer mode, pull (the target fetches), push (the source sends) or
    /// relay (this client passes the data on)
    mode: String,
    #[argh(option, short = 'c')]
    /// between servers: config key/value to apply to the moved instance
    config: Vec<String>,
    #[argh(option, short = 'p')]
    /// between servers: profile to apply to the moved instance
    profile: Vec<String>,
    #[argh(switch, long = "no-profiles")]
    /// between servers: the moved instance has no profiles
    no_profiles: bool,
    #[argh(option, short = 'd')]
    /// between servers: new key/value for a device of the moved instance (DEVICE,KEY=VALUE)
    device: Vec<String>,
}

pub fn rename(args: &[String]) -> CmdResult {
    let a: MoveArgs = parse(&["bivy move"], args)?;
    let (sr, src) = split_remote(&a.source)?;
    let reshaped =
        !a.config.is_empty() || !a.profile.is_empty() || a.no_profiles || !a.device.is_empty();
    let target = match (&a.target, &a.storage) {
        (Some(t), _) => t.clone(),
        // `move c1 -s POOL`: the same name, on the same server.
        (None, Some(_)) => a.source.clone(),
        (None, None) => return fail("bivy move: a target is needed (a new name, or --storage)"),
    };
    let (dr, dst) = split_remote(&target)?;
    if sr == dr && reshaped {
        // lxc renames or moves between pools without them, and says nothing.
        return fail(
            "--config, --profile, --no-profiles and --device apply to moves between servers",
        );
    }
    if let Some(pool) = a.storage.as_ref().filter(|_| sr == dr) {
        if src.contains('/') {
            return fail("Instance snapshots cannot be moved between pools");
        }
        let c = super::client_of(&sr)?;
        let body = InstancePost {
            name: if dst.is_empty() { src } else { dst }.to_string(),
            migration: true,
            pool: pool.clone(),
            instance_only: a.instance_only,
            live: !a.stateless,
            ..Default::default()
        };
        c.post(&instance_path(src), &body)?;
        return Ok(0);
    }
    if sr != dr {
        // Between servers: a copy, then the source goes (lxc's move).
        let dst = if dst.is_empty() { src } else { dst };
        if src.contains('/') {
            return fail("Snapshots can't be moved between servers: copy them instead");
        }
        migrate(
            &sr,
            src,
            &dr,
            dst,
            &Migrate {
                instance_only: a.instance_only,
                stateless: a.stateless,
                ephemeral: false,
                config: &a.config,
                profiles: &a.profile,
                no_profiles: a.no_profiles,
                devices: &a.device,
                storage: a.storage.as_deref(),
                keep_volatile: true,
                mode: &a.mode,
                refresh: false,
                exclude_older: false,
            },
        )?;
        let sc = super::client_of(&sr)?;
        let (inst, _) = copy_source(&sc, src)?;
        if inst.status == "Running" {
            let put = InstanceStatePut {
                action: "stop".into(),
                timeout: -1,
                force: true,
                stateful: false,
            };
            change_state(&sc, src, &put)?;
        }
        sc.delete(&instance_path(src))?;
        return Ok(0);
    }
    let c = super::client_of(&sr)?;
    if let Some((inst, snap)) = src.split_once('/') {
        let new = dst.split_once('/').map_or(dst, |(_, s)| s);
        c.post(
            &format!(
                "{}/snapshots/{}",
                instance_path(inst),
                urlencode(snap, false)
            ),
            &json!({"name": new}),
        )?;
        return Ok(0);
    }
    c.post(
        &instance_path(src),
        &InstancePost {
            name: dst.to_string(),
            ..Default::default()
        },
    )?;
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Copy instances within the server.
pub struct CopyArgs {
    #[argh(positional)]
    /// source instance (NAME or NAME/SNAPSHOT)
    source: String,
    #[argh(positional)]
    /// new instance name
    target: String,
    #[argh(switch, short = 'e')]
    /// ephemeral copy
    ephemeral: bool,
    #[argh(switch, long = "instance-only")]
    /// copy the instance without its snapshots
    instance_only: bool,
    #[argh(option, short = 'c')]
    /// config key/value to apply to the new instance
    config: Vec<String>,
    #[argh(option, short = 'p')]
    /// profile to apply to the new instance
    profile: Vec<String>,
    #[argh(switch)]
    /// between servers: copy a running instance without its state
    stateless: bool,
    #[argh(option, default = "String::from(\"pull\")")]
    /// between servers: transfer mode, pull (the target fetches), push (the source sends) or
    /// relay (this client passes the data on)
    mode: String,
    #[argh(switch)]
    /// update an existing copy: only missing snapshots and changed files are sent, and the
    /// target's snapshots the source lacks are deleted
    refresh: bool,
    #[argh(switch, long = "refresh-exclude-older")]
    /// with --refresh: skip source snapshots older than the target's newest and keep the
    /// target's own
    refresh_exclude_older: bool,
    #[argh(switch, long = "no-profiles")]
    /// create the instance with no profiles applied
    no_profiles: bool,
    #[argh(option, short = 'd')]
    /// new key/value to apply to a specific device (DEVICE,KEY=VALUE)
    device: Vec<String>,
    #[argh(option, short = 's')]
    /// storage pool name
    storage: Option<String>,
}

pub fn copy(args: &[String]) -> CmdResult {
    let a: CopyArgs = parse(&["bivy copy"], args)?;
    let (sr, src) = split_remote(&a.source)?;
    let (dr, dst) = split_remote(&a.target)?;
    let refresh = a.refresh || a.refresh_exclude_older;
    if refresh && a.no_profiles {
        return fail("--no-profiles cannot be used with --refresh");
    }
    if a.instance_only && src.contains('/') {
        return fail("--instance-only can't be passed when the source is a snapshot");
    }
    let m = Migrate {
        instance_only: a.instance_only,
        stateless: a.stateless,
        ephemeral: a.ephemeral,
        config: &a.config,
        profiles: &a.profile,
        no_profiles: a.no_profiles,
        devices: &a.device,
        storage: a.storage.as_deref(),
        keep_volatile: false,
        mode: &a.mode,
        refresh,
        exclude_older: a.refresh_exclude_older,
    };
    if sr != dr {
        let dst = if dst.is_empty() {
            src.split('/').next().unwrap_or(src)
        } else {
            dst
        };
        let live = migrate(&sr, src, &dr, dst, &m)?;
        if live {
            // A live copy leaves the source stopped with its state saved (as LXD's): a copy
            // keeps it running, so it resumes from that state.
            let put = InstanceStatePut {
                action: "start".into(),
                timeout: -1,
                force: false,
                stateful: true,
            };
            change_state(&super::client_of(&sr)?, src, &put)?;
        }
        return Ok(0);
    }
    if refresh && src.contains('/') {
        return fail("--refresh can only be used with instances");
    }
    let c = super::client_of(&sr)?;
    // Like lxc: the source's writable state (minus volatile keys), then the overrides.
    let (source, _) = copy_source(&c, src)?;
    let refreshing = refresh && c.get::<serde_json::Value>(&instance_path(dst)).is_ok();
    let writable = writable_of(&source);
    let req = InstancesPost {
        put: copy_put(source, &m)?,
        name: dst.to_string(),
        source: InstanceSource {
            kind: "copy".into(),
            source: src.to_string(),
            instance_only: a.instance_only,
            refresh,
            refresh_exclude_older: a.refresh_exclude_older,
            ..Default::default()
        },
        kind: "container".into(),
        ..Default::default()
    };
    c.post("/1.0/instances", &req)?;
    if refreshing {
        put_refreshed_config(&c, dst, writable)?;
    }
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Create instance snapshots.
pub struct SnapshotArgs {
    #[argh(positional)]
    /// instance name
    name: String,
    #[argh(positional)]
    /// snapshot name (the server picks one when omitted)
    snapshot: Option<String>,
    #[argh(switch)]
    /// whether or not to snapshot the instance's running state
    stateful: bool,
    #[argh(switch, long = "no-expiry")]
    /// ignore any configured auto-expiry for the instance
    no_expiry: bool,
    #[argh(switch)]
    /// if the snapshot name already exists, delete and create a new one
    reuse: bool,
}

pub fn snapshot(args: &[String]) -> CmdResult {
    let a: SnapshotArgs = parse(&["bivy snapshot"], args)?;
    let (c, name) = target(&a.name)?;
    if let Some(snap) = a.snapshot.as_deref().filter(|s| a.reuse && !s.is_empty()) {
        let path = format!(
            "{}/snapshots/{}",
            instance_path(name),
            urlencode(snap, false)
        );
        if c.get::<serde_json::Value>(&path).is_ok() {
            c.delete(&path)?;
        }
    }
    let mut body = json!({"name": a.snapshot.clone().unwrap_or_default(), "stateful": a.stateful, "expires_at": null});
    if a.no_expiry {
        body["expires_at"] = json!("0001-01-01T00:00:00Z");
    }
    c.post(&format!("{}/snapshots", instance_path(name)), &body)?;
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Restore instances from snapshots.
pub struct RestoreArgs {
    #[argh(positional)]
    /// instance name
    name: String,
    #[argh(positional)]
    /// snapshot name
    snapshot: String,
    #[argh(switch)]
    /// whether or not to restore the instance's running state from snapshot
    stateful: bool,
}

pub fn restore(args: &[String]) -> CmdResult {
    let a: RestoreArgs = parse(&["bivy restore"], args)?;
    let (c, name) = target(&a.name)?;
    let snap = if a.snapshot.contains('/') {
        a.snapshot.clone()
    } else {
        format!("{name}/{}", a.snapshot)
    };
    // As lxc: an InstancePut with only `restore` (and `stateful`) set; a server restores and
    // ignores the rest (LXD's `instancePut`), so no GET of the instance first.
    let body = serde_json::json!({"restore": snap, "stateful": a.stateful});
    c.put(&instance_path(name), &body, None)?;
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// list

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// List instances.
pub struct ListArgs {
    #[argh(positional)]
    /// filters: a name prefix or regex, or key=value (config key, status, type, architecture)
    filters: Vec<String>,
    #[argh(option, short = 'c')]
    /// columns (default "ns46tS"; fast "nsacPt")
    columns: Option<String>,
    #[argh(option, short = 'f')]
    /// format (table, csv, json, yaml, compact)
    format: Option<String>,
    #[argh(switch)]
    /// fast mode (same as --columns=nsacPt)
    fast: bool,
    #[argh(switch)]
    /// all projects (accepted, single project only)
    all_projects: bool,
}

fn column_header(c: char) -> Option<&'static str> {
    Some(match c {
        'n' => "NAME",
        's' => "STATE",
        '4' => "IPV4",
        '6' => "IPV6",
        't' => "TYPE",
        'S' => "SNAPSHOTS",
        'a' => "ARCHITECTURE",
        'c' => "CREATED AT",
        'l' => "LAST USED AT",
        'p' => "PID",
        'P' => "PROFILES",
        'N' => "PROCESSES",
        'm' => "MEMORY USAGE",
        'b' => "STORAGE POOL",
        'd' => "DESCRIPTION",
        'L' => "LOCATION",
        'e' => "PROJECT",
        'f' => "BASE IMAGE",
        'F' => "BASE IMAGE",
        'u' => "CPU USAGE",
        'D' => "DISK USAGE",
        _ => return None,
    })
}

fn is_active(i: &InstanceFull) -> bool {
    !matches!(i.instance.status.as_str(), "Stopped" | "Error" | "")
}

fn addresses(i: &InstanceFull, family: &str) -> String {
    if !is_active(i) {
        return String::new();
    }
    let Some(net) = i.state.as_ref().and_then(|s| s.network.as_ref()) else {
        return String::new();
    };
    let mut out = Vec::new();
    for (ifname, n) in net {
        if n.kind == "loopback" {
            continue;
        }
        for a in &n.addresses {
            if a.scope == "link" || a.scope == "local" {
                continue;
            }
            if a.family == family {
                out.push(format!("{} ({ifname})", a.address));
            }
        }
    }
    crate::util::sort::sort(&mut out);
    out.reverse();
    out.join("\n")
}

fn cell(i: &InstanceFull, col: char) -> String {
    let inst = &i.instance;
    let state = i.state.as_ref();
    match col {
        'n' => inst.name.clone(),
        's' => inst.status.to_uppercase(),
        '4' => addresses(i, "inet"),
        '6' => addresses(i, "inet6"),
        't' => {
            let t = if inst.kind.is_empty() {
                "CONTAINER".to_string()
            } else {
                inst.kind.to_uppercase()
            };
            if inst.ephemeral {
                format!("{t} (EPHEMERAL)")
            } else {
                t
            }
        }
        'S' => i.snapshots.as_ref().map_or(0, Vec::len).to_string(),
        'a' => inst.architecture.clone(),
        'c' => table::date(&inst.created_at),
        'l' => table::date(&inst.last_used_at),
        'p' => match state {
            Some(s) if is_active(i) && s.pid != 0 => s.pid.to_string(),
            _ => String::new(),
        },
        'P' => inst.profiles.join("\n"),
        'N' => match state {
            Some(s) if is_active(i) => s.processes.to_string(),
            _ => String::new(),
        },
        'm' => match state {
            Some(s) if is_active(i) => s
                .memory
                .usage
                .filter(|u| *u > 0)
                .map_or_else(String::new, table::size_iec),
            _ => String::new(),
        },
        'u' => match state {
            Some(s) if is_active(i) => s
                .cpu
                .usage
                .filter(|u| *u > 0)
                .map_or_else(String::new, |u| format!("{}s", u / 1_000_000_000)),
            _ => String::new(),
        },
        'D' => match state.and_then(|s| s.disk.as_ref()?.get("root")) {
            Some(d) if d.usage > 0 => table::size_iec(d.usage),
            _ => String::new(),
        },
        'b' => inst
            .expanded_devices
            .get("root")
            .and_then(|d| d.get("pool"))
            .cloned()
            .unwrap_or_default(),
        'd' => inst.description.clone(),
        'L' => inst.location.clone(),
        'e' => inst.project.clone(),
        'f' => inst
            .config
            .get("volatile.base_image")
            .map(|f| f.chars().take(12).collect())
            .unwrap_or_default(),
        'F' => inst
            .config
            .get("volatile.base_image")
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// lxc's `dotPrefixMatch`: `u.role` names `user.role` (as many parts, each a prefix).
fn dot_prefix_match(short: &str, full: &str) -> bool {
    let (s, f): (Vec<&str>, Vec<&str>) = (short.split('.').collect(), full.split('.').collect());
    s.len() == f.len() && s.iter().zip(&f).all(|(a, b)| b.starts_with(a))
}

/// lxc's shorthand filters (`type`, `status`, `architecture`, `location`, `ipv4`, `ipv6`; the key
/// in any case), each of a comma's alternatives tried; `None` for another key.
fn shorthand(i: &InstanceFull, key: &str, value: &str) -> Option<bool> {
    let inst = &i.instance;
    let key = key.to_ascii_lowercase();
    // The instance's field for the plain ones; `None` for the address ones.
    let field = match key.as_str() {
        "type" => Some(&inst.kind),
        "status" => Some(&inst.status),
        "architecture" => Some(&inst.architecture),
        "location" => Some(&inst.location),
        "ipv4" | "ipv6" => None,
        _ => return None,
    };
    let family = if key == "ipv4" { "inet" } else { "inet6" };
    let one = |v: &str| -> bool {
        if let Some(f) = field {
            return f.eq_ignore_ascii_case(v);
        }
        let net = v
            .split_once('/')
            .and_then(|(a, p)| Some((a.parse::<std::net::IpAddr>().ok()?, p.parse::<u8>().ok()?)));
        i.state
            .as_ref()
            .and_then(|st| st.network.as_ref())
            .into_iter()
            .flat_map(|n| n.values())
            .flat_map(|n| &n.addresses)
            .filter(|a| a.family == family)
            .any(|a| match (net, a.address.parse::<std::net::IpAddr>()) {
                (Some((base, len)), Ok(ip)) => crate::net::in_subnet(ip, base, len),
                _ => a.address == v,
            })
    };
    Some(value.split(',').any(one))
}

/// Whether an instance passes all of lxc's list filters (`shouldShow` of lxc 5.0.2): a bare
/// word is the whole name as a pattern, or a prefix of it; `KEY=VALUE` a shorthand filter or a
/// config key (its parts abbreviated, `u.role`) whose value the pattern matches whole.
pub fn matches_filters(i: &InstanceFull, filters: &[String]) -> bool {
    let inst = &i.instance;
    filters.iter().all(|f| match f.split_once('=') {
        None => is_match(&anchored(f), &inst.name) || inst.name.starts_with(f.as_str()),
        Some((k, v)) => {
            if let Some(hit) = shorthand(i, k, v) {
                return hit;
            }
            inst.expanded_config.get(k).map(String::as_str) == Some(v)
                || inst
                    .expanded_config
                    .iter()
                    .any(|(ck, cv)| dot_prefix_match(k, ck) && is_match(&anchored(v), cv))
        }
    })
}

/// Render the instance list as lxc does.
pub fn render_list(
    instances: &[InstanceFull],
    columns: &str,
    format: Format,
) -> Result<String, Fail> {
    match format {
        Format::Json => {
            return Ok(serde_json::to_string(instances).map_err(|e| e.to_string())? + "\n")
        }
        Format::Yaml => {
            // Go prints nil slices as [] in YAML (but null in JSON).
            let v: Vec<InstanceFull> = instances
                .iter()
                .cloned()
                .map(|mut i| {
                    i.backups.get_or_insert_with(Vec::new);
                    i.snapshots.get_or_insert_with(Vec::new);
                    if let Some(st) = i.state.as_mut() {
                        st.network.get_or_insert_with(Default::default);
                    }
                    i
                })
                .collect();
            return Ok(crate::util::yaml::to_string(&v)?);
        }
        _ => {}
    }
    let cols = parse_columns(columns)?;
    let headers: Vec<&str> = cols
        .iter()
        .map(|c| match c {
            Column::Short(c) => column_header(*c).unwrap_or_default(),
            Column::Key { name, .. } => name.as_str(),
        })
        .collect();
    let mut sorted: Vec<&InstanceFull> = instances.iter().collect();
    crate::util::sort::sort_by(&mut sorted, |a, b| a.instance.name.cmp(&b.instance.name));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|i| cols.iter().map(|c| c.cell(i)).collect())
        .collect();
    Ok(table::render_rows(format, &headers, &rows))
}

/// A column of `lxc list -c`: a shorthand letter, or a config or device key
/// (`[config:|devices:]KEY[:NAME[:MAXWIDTH]]`, a key always with a period).
enum Column {
    Short(char),
    Key {
        device: bool,
        key: String,
        name: String,
        /// Longest value shown (`None`: whole).
        max: Option<usize>,
    },
}

impl Column {
    fn cell(&self, i: &InstanceFull) -> String {
        let inst = &i.instance;
        let (device, key, max) = match self {
            Column::Short(c) => return cell(i, *c),
            Column::Key {
                device, key, max, ..
            } => (*device, key, *max),
        };
        let v = if device {
            key.split_once('.')
                .filter(|(_, k)| !k.contains('.'))
                .and_then(|(d, k)| {
                    inst.devices
                        .get(d)
                        .and_then(|m| m.get(k))
                        .or_else(|| inst.expanded_devices.get(d).and_then(|m| m.get(k)))
                })
        } else {
            inst.config
                .get(key)
                .or_else(|| inst.expanded_config.get(key))
        };
        let v = v.cloned().unwrap_or_default();
        match max {
            Some(n) if v.len() > n => v.chars().take(n).collect(),
            _ => v,
        }
    }

    /// Whether the column needs the instances' config or devices.
    fn is_key(&self) -> bool {
        matches!(self, Column::Key { .. })
    }
}

/// `lxc list -c` as lxc 5.0.2's `parseColumns` reads it.
fn parse_columns(columns: &str) -> Result<Vec<Column>, Fail> {
    let mut out = Vec::new();
    for entry in columns.split(',') {
        if entry.is_empty() {
            return fail(format!(
                "Empty column entry (redundant, leading or trailing command) in '{columns}'"
            ));
        }
        if !entry.contains('.') {
            for c in entry.chars() {
                if c == 'L' {
                    // bivy is never clustered.
                    return fail("Can't specify column L when not clustered");
                }
                if column_header(c).is_none() {
                    return fail(format!("Unknown column shorthand char '{c}' in '{entry}'"));
                }
                out.push(Column::Short(c));
            }
            continue;
        }
        let mut cc: Vec<&str> = entry.split(':').collect();
        let device = cc.len() > 1 && cc[0] == "devices";
        if cc.len() > 1 && matches!(cc[0], "config" | "devices") {
            cc.remove(0);
        }
        if cc.len() > 3 {
            return fail(format!(
                "Invalid config key column format (too many fields): '{entry}'"
            ));
        }
        let key = cc[0].to_string();
        let mut name = key.clone();
        if cc.len() > 1 {
            if cc[1].is_empty() && cc.len() != 3 {
                return fail(format!(
                    "Invalid name in '{entry}', empty string is only allowed when defining maxWidth"
                ));
            }
            name = cc[1].to_string();
        }
        let max = match cc.get(2) {
            None => None,
            Some(w) => match w.parse::<i64>() {
                Ok(-1) => None,
                Ok(0) => Some(name.len()),
                Ok(n) if n > 0 => Some(n as usize),
                Ok(_) => {
                    return fail(format!(
                        "Invalid max width (must -1, 0 or a positive integer) '{w}' in '{entry}'"
                    ))
                }
                Err(_) => {
                    return fail(format!(
                        "Invalid max width (must be an integer) '{w}' in '{entry}'"
                    ))
                }
            },
        };
        out.push(Column::Key {
            device,
            key,
            name,
            max,
        });
    }
    Ok(out)
}

pub fn list(args: &[String]) -> CmdResult {
    let a: ListArgs = parse(&["bivy list"], args)?;
    let _ = a.all_projects;
    let format = Format::parse(a.format.as_deref().unwrap_or("table"))?;
    let columns = match (&a.columns, a.fast) {
        (Some(c), _) => c.clone(),
        (None, true) => "nsacPt".to_string(),
        (None, false) => "ns46tS".to_string(),
    };
    let (c, filters) = super::target_filters(&a.filters)?;
    // JSON and YAML print whole documents: everything, as before.
    let path = match format {
        Format::Json | Format::Yaml => LIST_FULL.to_string(),
        _ => list_path(&columns),
    };
    // A table without filters or key columns shows nothing of the config or devices (but a
    // root disk's pool): each entry is decoded without them.
    let keys = parse_columns(&columns)?.iter().any(Column::is_key);
    let shown: Vec<InstanceFull> =
        if filters.is_empty() && !keys && !matches!(format, Format::Json | Format::Yaml) {
            let rows: Vec<crate::api::InstanceRow> = c.get_large(&path)?;
            rows.into_iter().map(|r| r.0).collect()
        } else {
            let all: Vec<InstanceFull> = c.get_large(&path)?;
            all.into_iter()
                .filter(|i| matches_filters(i, &filters))
                .collect()
        };
    print!("{}", render_list(&shown, &columns, format)?);
    Ok(0)
}

/// The listing's request: the state's costly parts (interfaces, disk usage) only when a column
/// shows them, by selective recursion's `fields` parameter (LXD 6's `lxc list` does the same).
/// A server without `instances_state_selective_recursion` ignores the parameter and sends all.
/// With neither shown, `state.disk` is asked for: an empty `fields` may be refused by LXD, and
/// disk usage costs bivy nothing.
fn list_path(columns: &str) -> String {
    let network = columns.contains(['4', '6']);
    let disk = columns.contains('D');
    let fields = match (network, disk) {
        (true, true) => return LIST_FULL.to_string(),
        (true, false) => "state.network",
        (false, _) => "state.disk",
    };
    format!("{LIST_FULL}&fields={fields}")
}

/// Every instance with its whole state.
const LIST_FULL: &str = "/1.0/instances?filter=&recursion=2";

// ---------------------------------------------------------------------------------------------
// info

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Show instance or server information.
pub struct InfoArgs {
    #[argh(positional)]
    /// instance name (server information when omitted)
    name: Option<String>,
    #[argh(switch, long = "show-log")]
    /// show the instance's recent log entries
    show_log: bool,
    #[argh(switch)]
    /// show the resources available to the server
    resources: bool,
}

/// Render `info NAME` like lxc.
pub fn render_info(i: &InstanceFull) -> String {
    let inst = &i.instance;
    let mut o = String::new();
    o += &format!("Name: {}\n", inst.name);
    o += &format!("Status: {}\n", inst.status.to_uppercase());
    let kind = if inst.kind.is_empty() {
        "container"
    } else {
        inst.kind.as_str()
    };
    if inst.ephemeral {
        o += &format!("Type: {kind} (ephemeral)\n");
    } else {
        o += &format!("Type: {kind}\n");
    }
    o += &format!("Architecture: {}\n", inst.architecture);
    if let Some(s) = &i.state {
        if s.pid != 0 {
            o += &format!("PID: {}\n", s.pid);
        }
    }
    let created = table::date(&inst.created_at);
    if !created.is_empty() {
        o += &format!("Created: {created}\n");
    }
    let used = table::date(&inst.last_used_at);
    if !used.is_empty() {
        o += &format!("Last Used: {used}\n");
    }
    if let Some(s) = i.state.as_ref().filter(|s| s.pid != 0 || s.processes > 0) {
        o += "\nResources:\n";
        o += &format!("  Processes: {}\n", s.processes);
        let disks: Vec<_> = s
            .disk
            .iter()
            .flatten()
            .filter(|(_, d)| d.usage != 0)
            .collect();
        if !disks.is_empty() {
            o += "  Disk usage:\n";
            for (name, d) in disks {
                o += &format!("    {name}: {}\n", table::size_iec(d.usage));
            }
        }
        // Like `lxc info`: a figure the server did not send (the host does not count it), or a
        // zero, is not shown.
        if let Some(cpu) = s.cpu.usage.filter(|u| *u > 0) {
            o += "  CPU usage:\n";
            o += &format!("    CPU usage (in seconds): {}\n", cpu / 1_000_000_000);
        }
        if let Some(mem) = s.memory.usage.filter(|u| *u > 0) {
            o += "  Memory usage:\n";
            o += &format!("    Memory (current): {}\n", table::size_iec(mem));
            if let Some(peak) = s.memory.usage_peak.filter(|u| *u > 0) {
                o += &format!("    Memory (peak): {}\n", table::size_iec(peak));
            }
            if let Some(swap) = s.memory.swap_usage.filter(|u| *u > 0) {
                o += &format!("    Swap (current): {}\n", table::size_iec(swap));
            }
            if let Some(swap_peak) = s.memory.swap_usage_peak.filter(|u| *u > 0) {
                o += &format!("    Swap (peak): {}\n", table::size_iec(swap_peak));
            }
        }
        if let Some(net) = s.network.as_ref().filter(|n| !n.is_empty()) {
            o += "  Network usage:\n";
            // Loopback first, then the rest by name.
            let mut names: Vec<&String> = net.keys().collect();
            crate::util::sort::sort_by_key(&mut names, |n| {
                (net[*n].kind != "loopback", (*n).clone())
            });
            for name in names {
                let n = &net[name];
                o += &format!("    {name}:\n");
                o += &format!("      Type: {}\n", n.kind);
                o += &format!("      State: {}\n", n.state.to_uppercase());
                if !n.host_name.is_empty() {
                    o += &format!("      Host interface: {}\n", n.host_name);
                }
                if !n.hwaddr.is_empty() {
                    o += &format!("      MAC address: {}\n", n.hwaddr);
                }
                if n.mtu != 0 {
                    o += &format!("      MTU: {}\n", n.mtu);
                }
                // Decimal units here (lxc's `GetByteSizeString`), binary ones for memory.
                o += &format!(
                    "      Bytes received: {}\n",
                    super::size_decimal(n.counters.bytes_received.max(0) as u64)
                );
                o += &format!(
                    "      Bytes sent: {}\n",
                    super::size_decimal(n.counters.bytes_sent.max(0) as u64)
                );
                o += &format!("      Packets received: {}\n", n.counters.packets_received);
                o += &format!("      Packets sent: {}\n", n.counters.packets_sent);
                o += "      IP addresses:\n";
                {
                    let w = n
                        .addresses
                        .iter()
                        .map(|a| a.family.len() + 1)
                        .max()
                        .unwrap_or(0);
                    for a in &n.addresses {
                        let label = format!("{}:", a.family);
                        o += &format!(
                            "        {label}{} {}/{} ({})\n",
                            " ".repeat(w - label.len()),
                            a.address,
                            a.netmask,
                            a.scope
                        );
                    }
                }
            }
        }
    }
    if let Some(snaps) = i.snapshots.as_ref().filter(|s| !s.is_empty()) {
        o += "\nSnapshots:\n";
        let rows: Vec<Vec<String>> = snaps
            .iter()
            .map(|s| {
                vec![
                    s.name.rsplit('/').next().unwrap_or(&s.name).to_string(),
                    table::date(&s.created_at),
                    table::date(&s.expires_at),
                    if s.stateful {
                        "YES".into()
                    } else {
                        "NO".into()
                    },
                ]
            })
            .collect();
        o += &table::render(&["NAME", "TAKEN AT", "EXPIRES AT", "STATEFUL"], &rows);
    }
    o
}

/// `info` for the server: its YAML, with Go's lowercase field names for the storage drivers
/// (their JSON names are capitalized, their YAML names are not).
pub fn render_server(server: &crate::api::Server) -> Result<String, Fail> {
    use crate::util::yaml::{self, Node};
    let mut v = yaml::to_node(server)?;
    if let Node::Map(top) = &mut v {
        if let Some((_, Node::Map(env))) = top.iter_mut().find(|(k, _)| k == "environment") {
            if let Some((_, Node::Seq(drivers))) = env
                .iter_mut()
                .find(|(k, _)| k == "storage_supported_drivers")
            {
                for d in drivers.iter_mut() {
                    if let Node::Map(m) = d {
                        for (k, _) in m.iter_mut() {
                            *k = k.to_lowercase();
                        }
                    }
                }
            }
        }
    }
    Ok(yaml::emit(&v, false))
}

pub fn info(args: &[String]) -> CmdResult {
    let a: InfoArgs = parse(&["bivy info"], args)?;
    // `info`, `info remote:` (the server) or `info [remote:]name`.
    let (c, name) = match &a.name {
        Some(n) => {
            let (c, n) = target(n)?;
            (c, (!n.is_empty()).then(|| n.to_string()))
        }
        None => (client()?, None),
    };
    match &name {
        None => {
            if a.resources {
                let v: serde_json::Value = c.get("/1.0/resources")?;
                super::print_yaml(&v)?;
                return Ok(0);
            }
            let server: crate::api::Server = c.get("/1.0")?;
            print!("{}", render_server(&server)?);
        }
        Some(n) => {
            let n = n.as_str();
            // Decoded from the body as `list` decodes its entries: one decoder for both.
            let full: InstanceFull = c.get_large(&format!("{}?recursion=1", instance_path(n)))?;
            print!("{}", render_info(&full));
            if a.show_log {
                let resp = c.raw(
                    "GET",
                    &format!("{}/logs/lxc.log", instance_path(n)),
                    &[],
                    crate::http::Body::Empty,
                )?;
                println!("\nLog:\n");
                if resp.status < 300 {
                    print!("{}", String::from_utf8_lossy(&resp.body));
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixtures copied from shared/reference/lxd-wire (see tests/cli_unit/README.md).
    fn fixture(name: &str) -> &'static str {
        match name {
            "list.txt" => include_str!("../../tests/cli_unit/list.txt"),
            "list_fast.txt" => include_str!("../../tests/cli_unit/list_fast.txt"),
            "instances_recursion2.json" => {
                include_str!("../../tests/cli_unit/instances_recursion2.json")
            }
            other => panic!("no fixture {other}"),
        }
    }

    fn reference_instances() -> Option<Vec<InstanceFull>> {
        let text = fixture("instances_recursion2.json");
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let list = v.get("metadata").cloned().unwrap_or(v);
        Some(serde_json::from_value(list).expect("reference list parses"))
    }

    /// The table printed at the end of a reference `lxc` session.
    fn reference_table(file: &str) -> Option<String> {
        let text = fixture(file);
        Some(
            text.lines()
                .filter(|l| l.starts_with('+') || l.starts_with('|'))
                .map(|l| format!("{l}\n"))
                .collect(),
        )
    }

    /// The instance list the server sent in a reference session (logged Go-quoted by `lxc --debug`).
    fn session_instances(file: &str) -> Option<Vec<InstanceFull>> {
        let text = fixture(file);
        let line = text.lines().find(|l| l.contains("msg=\"\\n\\t[\\n"))?;
        let start = line.find("msg=\"")? + 5;
        let quoted = &line[start..line.len() - 1];
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    other => out.push(other),
                }
            } else {
                out.push(c);
            }
        }
        Some(serde_json::from_str(&out).expect("session list parses"))
    }

    #[test]
    fn list_asks_for_the_state_parts_its_columns_show() {
        let q = |cols| list_path(cols).split_once('?').unwrap().1.to_string();
        assert_eq!(q("ns46tS"), "filter=&recursion=2&fields=state.network");
        assert_eq!(q("n,s,4"), "filter=&recursion=2&fields=state.network");
        assert_eq!(q("nsacPt"), "filter=&recursion=2&fields=state.disk");
        assert_eq!(q("nsD"), "filter=&recursion=2&fields=state.disk");
        assert_eq!(q("ns6D"), "filter=&recursion=2");
    }

    #[test]
    fn list_table_matches_lxc() {
        for (file, cols) in [("list.txt", "ns46tS"), ("list_fast.txt", "nsacPt")] {
            let (Some(list), Some(want)) = (session_instances(file), reference_table(file)) else {
                panic!("fixture {file} does not parse");
            };
            assert_eq!(
                render_list(&list, cols, Format::Table).unwrap(),
                want,
                "{file}"
            );
        }
    }

    #[test]
    fn list_table_from_api_capture() {
        let list = reference_instances().expect("fixture parses");
        let want = "\
+------+---------+------+------+-----------+-----------+
| NAME |  STATE  | IPV4 | IPV6 |   TYPE    | SNAPSHOTS |
+------+---------+------+------+-----------+-----------+
| cX   | RUNNING |      |      | CONTAINER | 1         |
+------+---------+------+------+-----------+-----------+
| cY   | STOPPED |      |      | CONTAINER | 1         |
+------+---------+------+------+-----------+-----------+
";
        assert_eq!(render_list(&list, "ns46tS", Format::Table).unwrap(), want);
    }

    /// Config and device columns as lxc 5.0.2 reads `-c`.
    #[test]
    fn key_columns() {
        let mut i = InstanceFull::default();
        i.instance.name = "c2".into();
        i.instance
            .expanded_config
            .insert("user.x".into(), "yes-indeed".into());
        i.instance.expanded_devices.insert(
            "root".into(),
            [("pool".to_string(), "default".to_string())].into(),
        );
        let list = vec![i];
        let csv = |c: &str| render_list(&list, c, Format::Csv);
        assert_eq!(csv("n,user.x").unwrap(), "c2,yes-indeed\n");
        assert_eq!(csv("config:user.x:X:3").unwrap(), "yes\n");
        assert_eq!(csv("devices:root.pool,n").unwrap(), "default,c2\n");
        let table = render_list(&list, "n,user.x:X", Format::Table).unwrap();
        assert!(
            table.contains(" X ") && table.contains("yes-indeed"),
            "{table}"
        );
        for bad in [
            "n,",
            ",n",
            "n,,s",
            "user.x:a:b:c",
            "user.x::",
            "user.x:a:-2",
            "nZ",
        ] {
            assert!(csv(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_csv_and_json() {
        let list = reference_instances().expect("fixture parses");
        let csv = render_list(&list, "ns", Format::Csv).unwrap();
        assert!(csv.lines().all(|l| l.split(',').count() == 2), "{csv}");
        let json = render_list(&list, "ns", Format::Json).unwrap();
        let back: Vec<InstanceFull> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), list.len());
    }

    #[test]
    fn info_matches_lxc_header() {
        let list = reference_instances().expect("fixture parses");
        let cx = list
            .iter()
            .find(|i| i.instance.name == "cX")
            .expect("cX in the fixture");
        let out = render_info(cx);
        assert!(out.starts_with("Name: cX\nStatus: "), "{out}");
        assert!(
            out.contains("Type: container\nArchitecture: x86_64\n"),
            "{out}"
        );
        // Memory in binary units, network bytes in decimal ones, as lxc prints them.
        assert!(out.contains("Memory (current): 492.00KiB\n"), "{out}");
        let mut big = cx.clone();
        let net = big
            .state
            .as_mut()
            .and_then(|s| s.network.as_mut())
            .expect("net");
        net.get_mut("eth0").expect("eth0").counters.bytes_received = 127_600;
        let out = render_info(&big);
        assert!(out.contains("Bytes received: 127.60kB\n"), "{out}");
    }

    #[test]
    fn ip_columns_skip_link_and_loopback() {
        let mut i = InstanceFull::default();
        i.instance.status = "Running".into();
        let mut st = crate::api::InstanceState::default();
        let mut net = std::collections::BTreeMap::new();
        let mut eth = crate::api::InstanceStateNetwork {
            kind: "broadcast".into(),
            ..Default::default()
        };
        for (fam, addr, scope) in [
            ("inet", "10.0.0.5", "global"),
            ("inet6", "fe80::1", "link"),
            ("inet", "10.0.0.9", "global"),
        ] {
            eth.addresses.push(crate::api::InstanceStateNetworkAddress {
                family: fam.into(),
                address: addr.into(),
                netmask: "24".into(),
                scope: scope.into(),
            });
        }
        net.insert("eth0".to_string(), eth);
        st.network = Some(net);
        i.state = Some(st);
        assert_eq!(cell(&i, '4'), "10.0.0.9 (eth0)\n10.0.0.5 (eth0)");
        assert_eq!(cell(&i, '6'), "");
    }

    #[test]
    fn filters() {
        let mut i = InstanceFull::default();
        i.instance.name = "web1".into();
        i.instance.status = "Running".into();
        i.instance
            .expanded_config
            .insert("user.role".into(), "front".into());
        let m = |f: &str| matches_filters(&i, &[f.to_string()]);
        // A bare word: the whole name as a pattern, or a prefix; never a substring.
        assert!(m("web") && m("web1") && m("w.b1") && m("^w.b"));
        assert!(!m("eb") && !m("1") && !m("db") && !m("web1x"));
        // Shorthand filters, any case, commas as alternatives.
        assert!(m("status=running") && m("STATUS=Running") && m("status=stopped,running"));
        assert!(!m("status=stopped"));
        // Config keys: abbreviated by parts, the value matched whole.
        assert!(m("user.role=front") && m("u.role=front") && m("user.role=fr.*"));
        assert!(!m("role=front") && !m("user.role=fro") && !m("config.user.role=front"));
        // Classes, alternatives and groups, as Go's syntax has them.
        assert!(m("w[a-f]b[0-9]") && m("web[13]") && !m("web[^1]"));
        assert!(m("db|web1") && m("(web|db)1") && m(r"(?:we)+b\d") && !m("db|web2"));
    }
}
