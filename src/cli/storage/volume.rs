//! `storage volume list|create|delete|show|edit|get|set|unset|rename|attach|detach|
//! attach-profile|detach-profile|snapshot|restore|copy|move|info`, after `lxc storage volume`
//! (lxc/storage_volume.go) of LXD 5.0.2.

use argh::FromArgs;
use serde::{Deserialize, Serialize};

use super::{config_pairs, null_as_default, pool_name, pool_path};
use crate::api::StringMap;
use crate::cli::config::edit_yaml;
use crate::cli::table::{self, Format};
use crate::cli::{check_args, fail, is_tty, parse, undash, CmdResult, Fail};
use crate::client::{urlencode, Client};

const VOLUME_USAGE: &str = "Usage:\n  bivy storage volume [command]\n\nAvailable Commands:\n  attach         Attach new storage volumes to instances\n  attach-profile Attach new storage volumes to profiles\n  copy           Copy storage volumes\n  create         Create new custom storage volumes\n  delete         Delete storage volumes\n  detach         Detach storage volumes from instances\n  detach-profile Detach storage volumes from profiles\n  edit           Edit storage volume configurations as YAML\n  export         Export custom storage volume\n  get            Get values for storage volume configuration keys\n  import         Import custom storage volumes\n  info           Show storage volume state information\n  list           List storage volumes\n  move           Move storage volumes between pools\n  rename         Rename storage volumes\n  restore        Restore storage volume snapshots\n  set            Set storage volume configuration keys\n  show           Show storage volume configurations\n  snapshot       Snapshot storage volumes\n  unset          Unset storage volume configuration keys\n";

const VOLUME_EDIT_HEADER: &str = "### This is a YAML representation of a storage volume.\n### Any line starting with a '# will be ignored.\n###\n### A storage volume consists of a set of configuration items.\n###\n### name: vol1\n### type: custom\n### used_by: []\n### config:\n###   size: \"61203283968\"\n";

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// List storage volumes.
pub struct VolumeListArgs {
    #[argh(positional)]
    /// the pool ([<remote>:]<pool>)
    words: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (csv|json|table|yaml|compact)
    format: Option<String>,
    #[argh(option, short = 'c')]
    /// columns (t: type, n: name, d: description, c: content type, u: used by)
    columns: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Create new custom storage volumes: <pool> <volume> [key=value...]
pub struct VolumeCreateArgs {
    #[argh(positional)]
    /// pool, volume and key=value pairs
    words: Vec<String>,
    #[argh(option, long = "type")]
    /// content type, block or filesystem (default filesystem)
    content_type: Option<String>,
}

words_command!(
    VolumeDeleteArgs,
    "Delete storage volumes.",
    "the pool and the volume (<pool> <volume>)"
);
words_command!(
    VolumeShowArgs,
    "Show storage volume configurations.",
    "the pool and the volume (<pool> <volume>)"
);
words_command!(
    VolumeEditArgs,
    "Edit storage volume configurations as YAML (from stdin when it is not a terminal).",
    "the pool and the volume (<pool> <volume>)"
);
words_command!(
    VolumeGetArgs,
    "Get values for storage volume configuration keys.",
    "the pool, the volume and the key (<pool> <volume> <key>)"
);
words_command!(
    VolumeSetArgs,
    "Set storage volume configuration keys: <pool> <volume> <key>=<value>...",
    "the pool, the volume and key=value pairs"
);
words_command!(
    VolumeUnsetArgs,
    "Unset storage volume configuration keys.",
    "the pool, the volume and the key (<pool> <volume> <key>)"
);
words_command!(
    VolumeRenameArgs,
    "Rename storage volumes.",
    "the pool, the volume and its new name (<pool> <old name> <new name>)"
);
words_command!(
    VolumeAttachArgs,
    "Attach new storage volumes to instances: <pool> <volume> <instance> [<device name>] <path>.",
    "the pool, the volume, the instance, the device name and the path"
);
words_command!(
    VolumeAttachProfileArgs,
    "Attach new storage volumes to profiles: <pool> <volume> <profile> [<device name>] [<path>].",
    "the pool, the volume, the profile, the device name and the path"
);
words_command!(
    VolumeDetachProfileArgs,
    "Detach storage volumes from profiles: <pool> <volume> <profile> [<device name>].",
    "the pool, the volume, the profile and the device name"
);
words_command!(
    VolumeRestoreArgs,
    "Restore storage volume snapshots.",
    "the pool, the volume and the snapshot (<pool> <volume> <snapshot>)"
);
words_command!(
    VolumeInfoArgs,
    "Show storage volume state information.",
    "the pool and the volume (<pool> <volume>)"
);

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Snapshot storage volumes: <pool> <volume> [<snapshot>].
pub struct VolumeSnapshotArgs {
    #[argh(positional)]
    /// the pool, the volume and the snapshot's name
    words: Vec<String>,
    #[argh(switch)]
    /// ignore any configured auto-expiry for the storage volume
    no_expiry: bool,
    #[argh(switch)]
    /// if the snapshot name already exists, delete and create a new one
    reuse: bool,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Copy storage volumes: <pool>/<volume> <pool>/<volume>.
pub struct VolumeCopyArgs {
    #[argh(positional)]
    /// the source and the target ([<remote>:]<pool>/<volume>)
    words: Vec<String>,
    #[argh(switch)]
    /// copy the volume without its snapshots
    volume_only: bool,
    #[argh(switch)]
    /// refresh and update the existing storage volume copies
    refresh: bool,
    #[argh(option)]
    /// transfer mode, one of pull (default), push or relay
    mode: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Move storage volumes between pools: <pool>/<volume> <pool>/<volume>.
pub struct VolumeMoveArgs {
    #[argh(positional)]
    /// the source and the target ([<remote>:]<pool>/<volume>)
    words: Vec<String>,
    #[argh(option)]
    /// transfer mode, one of pull (default), push or relay
    mode: Option<String>,
}

words_command!(
    VolumeDetachArgs,
    "Detach storage volumes from instances: <pool> <volume> <instance> [<device name>].",
    "the pool, the volume, the instance and the device name"
);

/// The writable part of a volume (`api.StorageVolumePut`).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct VolumePut {
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: StringMap,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
}

/// A storage volume as listed (`api.StorageVolume`, field order of LXD 5.0.2).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Volume {
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: StringMap,
    #[serde(default)]
    pub description: String,
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub used_by: Vec<String>,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub content_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    #[serde(default)]
    pub created_at: String,
}

/// lxc's volume sort (`byNameAndType`): by the first column's text, then the second, empty last.
fn sort_volume_rows(rows: &mut [Vec<String>]) {
    crate::util::sort::sort_by(rows, |a, b| {
        let (a0, b0) = (a.first(), b.first());
        if a0 != b0 {
            return a0.cmp(&b0);
        }
        match (a.get(1).map(String::as_str), b.get(1).map(String::as_str)) {
            (Some(""), Some("")) => std::cmp::Ordering::Equal,
            (Some(""), _) => std::cmp::Ordering::Greater,
            (_, Some("")) => std::cmp::Ordering::Less,
            (x, y) => x.cmp(&y),
        }
    });
}

/// Render `storage volume list` (default columns `tndcu`; `L` only exists on clusters).
pub fn render_volumes(vols: &[Volume], columns: &str, format: Format) -> Result<String, Fail> {
    match format {
        Format::Json => return Ok(serde_json::to_string(vols).map_err(|e| e.to_string())? + "\n"),
        Format::Yaml => return Ok(crate::util::yaml::to_string(vols)?),
        _ => {}
    }
    let mut headers = Vec::new();
    let mut getters: Vec<fn(&Volume) -> String> = Vec::new();
    for entry in columns.split(',') {
        if entry.is_empty() {
            return fail(format!(
                "Empty column entry (redundant, leading or trailing command) in '{columns}'"
            ));
        }
        for c in entry.chars() {
            let (h, g): (&str, fn(&Volume) -> String) = match c {
                't' => ("TYPE", |v| {
                    if v.name.contains('/') {
                        format!("{} (snapshot)", v.kind)
                    } else {
                        v.kind.clone()
                    }
                }),
                'n' => ("NAME", |v| v.name.clone()),
                'd' => ("DESCRIPTION", |v| v.description.clone()),
                'c' => ("CONTENT-TYPE", |v| {
                    if v.content_type.is_empty() {
                        "filesystem".into()
                    } else {
                        v.content_type.clone()
                    }
                }),
                'u' => ("USED BY", |v| v.used_by.len().to_string()),
                'L' => return fail("Can't specify column L when not clustered"),
                'U' => return fail("not supported yet: storage volume list column U"),
                other => {
                    return fail(format!(
                        "Unknown column shorthand char '{other}' in '{entry}'"
                    ))
                }
            };
            headers.push(h);
            getters.push(g);
        }
    }
    let mut rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| getters.iter().map(|g| g(v)).collect())
        .collect();
    sort_volume_rows(&mut rows);
    Ok(table::render_rows(format, &headers, &rows))
}

/// A volume argument as lxc parses it (`parseVolume("custom", arg)`): `TYPE/NAME` or `NAME`.
fn parse_volume(arg: &str) -> (String, String) {
    match arg.split_once('/') {
        Some((t @ ("custom" | "image" | "container" | "virtual-machine"), n)) => {
            (n.to_string(), t.to_string())
        }
        _ => (arg.to_string(), "custom".to_string()),
    }
}

/// A volume's URL; `VOLUME/SNAPSHOT` is that snapshot's, as lxc reads the name.
fn volume_path(pool: &str, kind: &str, name: &str) -> String {
    let base = format!("{}/volumes/{}", pool_path(pool), urlencode(kind, false));
    match name.split_once('/') {
        Some((vol, snap)) => format!(
            "{base}/{}/snapshots/{}",
            urlencode(vol, false),
            urlencode(snap, false)
        ),
        None => format!("{base}/{}", urlencode(name, false)),
    }
}

/// Read a volume, change its writable part, and PUT it back with the volume's ETag.
fn update_volume(c: &Client, path: &str, f: impl FnOnce(&mut VolumePut)) -> Result<(), Fail> {
    let (vol, etag): (Volume, String) = c.get_etag(path)?;
    let mut put = VolumePut {
        config: vol.config,
        description: vol.description,
    };
    f(&mut put);
    c.put(path, &put, Some(&etag))?;
    Ok(())
}

type DevicesEdit<'a> =
    Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> Result<(), Fail> + 'a>;

/// Change the devices of the object at `path` (GET, change, PUT of its `keys` with its ETag).
fn update_devices(c: &Client, path: &str, keys: &[&str], f: DevicesEdit<'_>) -> Result<(), Fail> {
    let (obj, etag): (serde_json::Value, String) = c.get_etag(path)?;
    let mut put = serde_json::Map::new();
    for k in keys {
        if let Some(v) = obj.get(*k) {
            put.insert(k.to_string(), v.clone());
        }
    }
    let devices = put
        .entry("devices")
        .or_insert_with(|| serde_json::json!({}));
    if devices.is_null() {
        *devices = serde_json::json!({});
    }
    f(devices.as_object_mut().expect("devices is an object"))?;
    c.put(path, &serde_json::Value::Object(put), Some(&etag))?;
    Ok(())
}

/// Change a profile's devices, as lxc's `profileDeviceAdd`.
fn update_profile_devices(
    c: &Client,
    profile: &str,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let path = format!("/1.0/profiles/{}", urlencode(profile, false));
    update_devices(c, &path, &["config", "description", "devices"], Box::new(f))
}

/// `[remote:]pool/volume` of `copy` and `move`: the remote's client, the pool and the volume.
fn pool_volume(arg: &str) -> Result<(Client, String, String, String), Fail> {
    let (remote, rest) = crate::cli::split_remote(arg)?;
    let c = crate::cli::target(arg)?.0;
    match rest.split_once('/') {
        Some((p, v)) if !p.is_empty() && !v.is_empty() => {
            Ok((c, remote, p.to_string(), v.to_string()))
        }
        _ => fail(format!(
            "Invalid argument {arg:?}: expected <pool>/<volume>"
        )),
    }
}

/// A custom volume copied between two servers (`storage volume copy|move a:P/V b:P/V`), as lxc
/// 5.0.2 drives it: the source serves the volume as a migration, the target receives it.
struct Between<'a> {
    sc: &'a Client,
    dc: &'a Client,
    sr: &'a str,
    dr: &'a str,
    /// (pool, volume) on each side.
    src: (&'a str, &'a str),
    dst: (&'a str, &'a str),
}

impl Between<'_> {
    fn copy(&self, mode: &str, volume_only: bool, refresh: bool) -> Result<(), Fail> {
        let (sp, sv) = self.src;
        let (dp, dv) = self.dst;
        if sv.contains('/') {
            return fail(
                "not supported yet: copying a volume snapshot between servers (copy the volume)",
            );
        }
        let source = volume_path(sp, "custom", sv);
        let vol: Volume = self.sc.get(&source)?;
        let post = serde_json::json!({
            "name": sv, "pool": sp, "migration": true, "target": null,
            "volume_only": volume_only,
        });
        let req = serde_json::json!({
            "config": vol.config, "description": vol.description, "name": dv,
            "type": "custom", "content_type": vol.content_type,
            "source": {
                "name": sv, "type": "migration", "pool": sp, "certificate": "",
                "mode": if mode == "pull" { "pull" } else { "push" },
                "volume_only": volume_only, "refresh": refresh,
            },
        });
        let target = format!("{}/volumes/custom", pool_path(dp));
        crate::cli::instance::transfer_by_mode(
            crate::cli::instance::Transfer {
                sc: self.sc,
                dc: self.dc,
                sr: self.sr,
                dr: self.dr,
                source: &source,
                target: &target,
                post,
                req,
                live: false,
                label: "Copying the storage volume",
            },
            mode,
        )
    }
}

/// The device that `detach` removes: the one named, or the one disk naming the volume.
fn volume_device(
    devs: &serde_json::Map<String, serde_json::Value>,
    pool: &str,
    vol: &str,
    wanted: Option<String>,
) -> Result<String, Fail> {
    if let Some(n) = wanted {
        return Ok(n);
    }
    let mut found = None;
    for (n, d) in devs {
        if d["type"] == "disk" && d["pool"] == pool && d["source"] == vol {
            if found.is_some() {
                return fail("More than one device matches, specify the device name");
            }
            found = Some(n.clone());
        }
    }
    match found {
        Some(n) => Ok(n),
        None => fail("No device found for this storage volume"),
    }
}

/// A volume snapshot as listed (`api.StorageVolumeSnapshot`).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct VolumeSnapshot {
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub expires_at: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: StringMap,
    pub name: String,
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub created_at: String,
}

/// `storage volume info` as lxc prints it: the volume, its usage (when the server reports
/// one), then its snapshots.
pub fn render_volume_info(
    vol: &Volume,
    kind: &str,
    used: Option<i64>,
    snaps: &[VolumeSnapshot],
) -> String {
    let mut o = format!("Name: {}\n", vol.name);
    if !vol.description.is_empty() {
        o += &format!("Description: {}\n", vol.description);
    }
    o += &format!("Type: {kind}\n");
    if !vol.content_type.is_empty() {
        o += &format!("Content type: {}\n", vol.content_type);
    }
    if let Some(u) = used {
        o += &format!("Usage: {}\n", table::size_iec(u));
    }
    if !snaps.is_empty() {
        o += "\nSnapshots:\n";
        let rows: Vec<Vec<String>> = snaps
            .iter()
            .map(|s| {
                // lxc prints Go's zero time for a snapshot that never expires.
                let exp = match table::date(&s.expires_at) {
                    e if e.is_empty() => "0001/01/01 00:00 UTC".to_string(),
                    e => e,
                };
                vec![
                    s.name.rsplit('/').next().unwrap_or(&s.name).to_string(),
                    s.description.clone(),
                    exp,
                ]
            })
            .collect();
        o += &table::render(&["NAME", "DESCRIPTION", "EXPIRES AT"], &rows);
    }
    o
}

/// Change an instance's own devices (and wait), as lxc's `instanceDeviceAdd` and `storage
/// volume detach` do.
fn update_instance_devices(
    c: &Client,
    instance: &str,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let keys = [
        "architecture",
        "config",
        "devices",
        "ephemeral",
        "profiles",
        "stateful",
        "description",
    ];
    update_devices(c, &crate::cli::instance_path(instance), &keys, Box::new(f))
}

/// What `attach` and `attach-profile` name: `<pool> <volume> <instance or profile> [<device>]
/// [<path>]`.
struct Attach {
    c: Client,
    pool: String,
    /// The instance or the profile.
    target: String,
    /// The volume's name and type (`parse_volume`).
    name: String,
    kind: String,
    dev_name: String,
    dev_path: String,
}

/// The words of `attach` and `attach-profile`, parsed as lxc parses both: 3 words name the
/// device after the volume, a 4th is the path, with 5 the 4th is the device name and the 5th the
/// path.
fn attach_words<T: FromArgs>(cmd: &str, words: Vec<String>) -> Result<Attach, Fail> {
    check_args::<T>(cmd, words.len(), 3, Some(5))?;
    let (c, pool) = pool_name(&words[0])?;
    let pool = pool.to_string();
    let (dev_name, dev_path) = match words.len() {
        3 => (words[1].clone(), String::new()),
        4 => (words[1].clone(), words[3].clone()),
        _ => (words[3].clone(), words[4].clone()),
    };
    let (name, kind) = parse_volume(&words[1]);
    Ok(Attach {
        c,
        pool,
        target: words[2].clone(),
        name,
        kind,
        dev_name,
        dev_path,
    })
}

pub(super) fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        eprint!("{VOLUME_USAGE}");
        return Err(Fail::Exit(1));
    };
    let rest = &args[1..];
    let cmd = format!("bivy storage volume {sub}");
    let cmd = cmd.as_str();
    match sub.as_str() {
        "-h" | "--help" => {
            print!("{VOLUME_USAGE}");
            Ok(0)
        }
        "export" => crate::cli::backup::volume_export(rest),
        "import" => crate::cli::backup::volume_import(rest),
        "list" | "ls" => {
            let a: VolumeListArgs = parse(&[cmd], rest)?;
            check_args::<VolumeListArgs>(cmd, a.words.len(), 1, Some(1))?;
            let (c, name) = pool_name(&a.words[0])?;
            let format = Format::parse(a.format.as_deref().unwrap_or("table"))?;
            let vols: Vec<Volume> = c.get(&format!("{}/volumes?recursion=1", pool_path(name)))?;
            print!(
                "{}",
                render_volumes(&vols, a.columns.as_deref().unwrap_or("tndcu"), format)?
            );
            Ok(0)
        }
        "create" => {
            let a: VolumeCreateArgs = parse(&[cmd], rest)?;
            check_args::<VolumeCreateArgs>(cmd, a.words.len(), 2, None)?;
            let words = undash(a.words);
            let (c, pool) = pool_name(&words[0])?;
            let mut config = StringMap::new();
            for kv in &words[2..] {
                match kv.split_once('=') {
                    Some((k, v)) => config.insert(k.to_string(), v.to_string()),
                    None => return fail(format!("Bad key=value pair: {kv}")),
                };
            }
            let body = serde_json::json!({
                "config": config,
                "description": "",
                "name": words[1],
                "type": "custom",
                "content_type": a.content_type.unwrap_or_else(|| "filesystem".into()),
            });
            c.post(&format!("{}/volumes/custom", pool_path(pool)), &body)?;
            if !crate::cli::quiet() {
                println!("Storage volume {} created", words[1]);
            }
            Ok(0)
        }
        "delete" | "rm" => {
            let words = undash(parse::<VolumeDeleteArgs>(&[cmd], rest)?.words);
            check_args::<VolumeDeleteArgs>(cmd, words.len(), 2, Some(2))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            c.delete(&volume_path(pool, &kind, &name))?;
            if !crate::cli::quiet() {
                println!("Storage volume {} deleted", words[1]);
            }
            Ok(0)
        }
        "show" => {
            let words = undash(parse::<VolumeShowArgs>(&[cmd], rest)?.words);
            check_args::<VolumeShowArgs>(cmd, words.len(), 2, Some(2))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let mut v: Volume = c.get(&volume_path(pool, &kind, &name))?;
            crate::util::sort::sort(&mut v.used_by);
            crate::cli::print_yaml(&v)?;
            Ok(0)
        }
        "get" => {
            let words = undash(parse::<VolumeGetArgs>(&[cmd], rest)?.words);
            check_args::<VolumeGetArgs>(cmd, words.len(), 3, Some(3))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let v: Volume = c.get(&volume_path(pool, &kind, &name))?;
            if let Some(val) = v.config.get(&words[2]) {
                println!("{val}");
            }
            Ok(0)
        }
        "set" => {
            let words = undash(parse::<VolumeSetArgs>(&[cmd], rest)?.words);
            check_args::<VolumeSetArgs>(cmd, words.len(), 3, None)?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let pairs = config_pairs(&words[2..])?;
            update_volume(&c, &volume_path(pool, &kind, &name), |p| {
                for (k, v) in pairs {
                    p.config.insert(k, v);
                }
            })?;
            Ok(0)
        }
        "unset" => {
            let words = undash(parse::<VolumeUnsetArgs>(&[cmd], rest)?.words);
            check_args::<VolumeUnsetArgs>(cmd, words.len(), 3, Some(3))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let key = words[2].clone();
            update_volume(&c, &volume_path(pool, &kind, &name), |p| {
                p.config.remove(&key);
            })?;
            Ok(0)
        }
        "edit" => {
            let words = undash(parse::<VolumeEditArgs>(&[cmd], rest)?.words);
            check_args::<VolumeEditArgs>(cmd, words.len(), 2, Some(2))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let path = volume_path(pool, &kind, &name);
            if !is_tty(0) {
                // lxc sends what stdin holds, without an ETag.
                let new: VolumePut = edit_yaml(&VolumePut::default(), "")?;
                c.put(&path, &new, None)?;
                return Ok(0);
            }
            let (vol, etag): (Volume, String) = c.get_etag(&path)?;
            let new: Volume = edit_yaml(&vol, VOLUME_EDIT_HEADER)?;
            let put = VolumePut {
                config: new.config,
                description: new.description,
            };
            c.put(&path, &put, Some(&etag))?;
            Ok(0)
        }
        "rename" => {
            let words = undash(parse::<VolumeRenameArgs>(&[cmd], rest)?.words);
            check_args::<VolumeRenameArgs>(cmd, words.len(), 3, Some(3))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            // A snapshot (`VOLUME/SNAP`) is renamed within its volume, as lxc checks.
            let new =
                match name.split_once('/') {
                    None => words[2].clone(),
                    Some((_, s)) if s.contains('/') => return fail("Invalid snapshot name"),
                    Some((vol, _)) => match words[2].split_once('/') {
                        Some((p, s)) if p == vol && !s.is_empty() => s.to_string(),
                        Some(_) => return fail(
                            "Invalid new snapshot name, parent volume must be the same as source",
                        ),
                        None => return fail("Invalid new snapshot name"),
                    },
                };
            c.post(
                &volume_path(pool, &kind, &name),
                &serde_json::json!({ "name": new }),
            )?;
            if !crate::cli::quiet() {
                println!("Renamed storage volume from \"{name}\" to \"{new}\"");
            }
            Ok(0)
        }
        "attach" | "attach-profile" => {
            let a = if sub == "attach" {
                let words = undash(parse::<VolumeAttachArgs>(&[cmd], rest)?.words);
                attach_words::<VolumeAttachArgs>(cmd, words)?
            } else {
                let words = undash(parse::<VolumeAttachProfileArgs>(&[cmd], rest)?.words);
                attach_words::<VolumeAttachProfileArgs>(cmd, words)?
            };
            let Attach {
                c,
                pool,
                target,
                name,
                kind,
                dev_name,
                dev_path,
            } = a;
            if sub == "attach" {
                if kind != "custom" {
                    return fail("Only \"custom\" volumes can be attached to instances");
                }
                update_instance_devices(&c, &target, |devs| {
                    if devs.contains_key(&dev_name) {
                        return fail("The device already exists");
                    }
                    devs.insert(
                        dev_name,
                        serde_json::json!({"type": "disk", "pool": pool, "source": name, "path": dev_path}),
                    );
                    Ok(())
                })?;
            } else {
                // lxc checks that the volume exists first.
                let vol: Volume = c.get(&volume_path(&pool, &kind, &name))?;
                update_profile_devices(&c, &target, |devs| {
                    if devs.contains_key(&dev_name) {
                        return fail("The device already exists");
                    }
                    let mut dev =
                        serde_json::json!({"type": "disk", "pool": pool, "source": vol.name});
                    if vol.content_type != "block" {
                        dev["path"] = serde_json::Value::String(dev_path);
                    }
                    devs.insert(dev_name, dev);
                    Ok(())
                })?;
            }
            Ok(0)
        }
        "detach" | "detach-profile" => {
            let words = if sub == "detach" {
                undash(parse::<VolumeDetachArgs>(&[cmd], rest)?.words)
            } else {
                undash(parse::<VolumeDetachProfileArgs>(&[cmd], rest)?.words)
            };
            check_args::<VolumeDetachArgs>(cmd, words.len(), 3, Some(4))?;
            let (c, pool) = pool_name(&words[0])?;
            let pool = pool.to_string();
            let vol = words[1].clone();
            let wanted = words.get(3).cloned();
            let remove = |devs: &mut serde_json::Map<String, serde_json::Value>| {
                let name = volume_device(devs, &pool, &vol, wanted)?;
                if devs.remove(&name).is_none() {
                    return fail("The specified device doesn't exist");
                }
                Ok(())
            };
            if sub == "detach" {
                update_instance_devices(&c, &words[2], remove)?;
            } else {
                update_profile_devices(&c, &words[2], remove)?;
            }
            Ok(0)
        }
        "snapshot" => {
            let a: VolumeSnapshotArgs = parse(&[cmd], rest)?;
            let words = undash(a.words);
            check_args::<VolumeSnapshotArgs>(cmd, words.len(), 2, Some(3))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let path = volume_path(pool, &kind, &name);
            let snap = words.get(2).cloned().unwrap_or_default();
            if a.reuse && !snap.is_empty() {
                let snap_path = format!("{path}/snapshots/{}", urlencode(&snap, false));
                if c.get::<VolumeSnapshot>(&snap_path).is_ok() {
                    c.delete(&snap_path)?;
                }
            }
            let mut body = serde_json::json!({"name": snap});
            if a.no_expiry {
                body["expires_at"] = serde_json::Value::String(crate::api::GO_ZERO_TIME.into());
            }
            c.post(&format!("{path}/snapshots"), &body)?;
            Ok(0)
        }
        "restore" => {
            let words = undash(parse::<VolumeRestoreArgs>(&[cmd], rest)?.words);
            check_args::<VolumeRestoreArgs>(cmd, words.len(), 3, Some(3))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let path = volume_path(pool, &kind, &name);
            let (vol, etag): (Volume, String) = c.get_etag(&path)?;
            let body = serde_json::json!({
                "config": vol.config,
                "description": vol.description,
                "restore": words[2],
            });
            c.put(&path, &body, Some(&etag))?;
            Ok(0)
        }
        "info" => {
            let words = undash(parse::<VolumeInfoArgs>(&[cmd], rest)?.words);
            check_args::<VolumeInfoArgs>(cmd, words.len(), 2, Some(2))?;
            let (c, pool) = pool_name(&words[0])?;
            let (name, kind) = parse_volume(&words[1]);
            let path = volume_path(pool, &kind, &name);
            let vol: Volume = c.get(&path)?;
            let (snaps, used): (Vec<VolumeSnapshot>, Option<i64>) = if kind == "custom" {
                // As lxc: the usage is left out when the server cannot tell it.
                let state: Option<serde_json::Value> = c.get(&format!("{path}/state")).ok();
                (
                    c.get(&format!("{path}/snapshots?recursion=1"))?,
                    state.and_then(|s| s["usage"]["used"].as_i64()),
                )
            } else {
                (Vec::new(), None)
            };
            print!("{}", render_volume_info(&vol, &kind, used, &snaps));
            Ok(0)
        }
        "copy" | "cp" | "move" | "mv" => {
            let moving = matches!(sub.as_str(), "move" | "mv");
            let (words, mode, volume_only, refresh) = if moving {
                let a: VolumeMoveArgs = parse(&[cmd], rest)?;
                (undash(a.words), a.mode, false, false)
            } else {
                let a: VolumeCopyArgs = parse(&[cmd], rest)?;
                (undash(a.words), a.mode, a.volume_only, a.refresh)
            };
            check_args::<VolumeCopyArgs>(cmd, words.len(), 2, Some(2))?;
            let mode = mode.unwrap_or_else(|| "pull".into());
            if !matches!(mode.as_str(), "pull" | "push" | "relay") {
                return fail(format!(
                    "Invalid migration mode {mode:?}: pull, push or relay"
                ));
            }
            let (c, src_remote, src_pool, src_vol) = pool_volume(&words[0])?;
            let (dc, dst_remote, dst_pool, dst_vol) = pool_volume(&words[1])?;
            if src_remote != dst_remote {
                let v = Between {
                    sc: &c,
                    dc: &dc,
                    sr: &src_remote,
                    dr: &dst_remote,
                    src: (&src_pool, &src_vol),
                    dst: (&dst_pool, &dst_vol),
                };
                v.copy(&mode, volume_only, refresh)?;
                if moving {
                    c.delete(&volume_path(&src_pool, "custom", &src_vol))
                        .map_err(|e| {
                            Fail::Error(format!("Failed deleting source volume after copy: {e}"))
                        })?;
                }
                if !crate::cli::quiet() {
                    println!(
                        "Storage volume {} successfully!",
                        if moving { "moved" } else { "copied" }
                    );
                }
                return Ok(0);
            }
            if moving && src_pool == dst_pool {
                c.post(
                    &volume_path(&src_pool, "custom", &src_vol),
                    &serde_json::json!({"name": dst_vol}),
                )?;
                if !crate::cli::quiet() {
                    println!("Renamed storage volume from \"{src_vol}\" to \"{dst_vol}\"");
                }
                return Ok(0);
            }
            if moving {
                c.post(
                    &volume_path(&src_pool, "custom", &src_vol),
                    &serde_json::json!({"name": dst_vol, "pool": dst_pool}),
                )?;
                if !crate::cli::quiet() {
                    println!("Storage volume moved successfully!");
                }
                return Ok(0);
            }
            let src: Volume = c.get(&volume_path(&src_pool, "custom", &src_vol))?;
            let body = serde_json::json!({
                "config": src.config,
                "description": src.description,
                "name": dst_vol,
                "type": "custom",
                "content_type": src.content_type,
                "source": {
                    "name": src_vol,
                    "type": "copy",
                    "pool": src_pool,
                    "volume_only": volume_only,
                    "refresh": refresh,
                },
            });
            c.post(&format!("{}/volumes/custom", pool_path(&dst_pool)), &body)?;
            if !crate::cli::quiet() {
                println!("Storage volume copied successfully!");
            }
            Ok(0)
        }
        other => fail(format!("not supported yet: storage volume {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_info_like_lxc() {
        // lxc 5.0.2's `storage volume info default a` against bivy, verbatim.
        let want =
            "Name: a\nType: custom\nContent type: filesystem\nUsage: 4.00KiB\n\nSnapshots:\n\
+-------+-------------+----------------------+\n\
| NAME  | DESCRIPTION |      EXPIRES AT      |\n\
+-------+-------------+----------------------+\n\
| snap0 |             | 0001/01/01 00:00 UTC |\n\
+-------+-------------+----------------------+\n\
| two   |             | 2026/12/04 19:33 UTC |\n\
+-------+-------------+----------------------+\n";
        let v = Volume {
            name: "a".into(),
            kind: "custom".into(),
            content_type: "filesystem".into(),
            ..Default::default()
        };
        let snap = |name: &str, exp: &str| VolumeSnapshot {
            name: name.into(),
            expires_at: exp.into(),
            created_at: "2026-12-03T19:33:31Z".into(),
            ..Default::default()
        };
        let snaps = [
            snap("a/snap0", "0001-01-01T00:00:00Z"),
            snap("a/two", "2026-12-04T19:33:31.5Z"),
        ];
        assert_eq!(render_volume_info(&v, "custom", Some(4096), &snaps), want);
    }

    fn vol(name: &str, kind: &str, used: usize) -> Volume {
        Volume {
            name: name.into(),
            kind: kind.into(),
            used_by: vec!["/1.0/instances/x".into(); used],
            location: "none".into(),
            content_type: "filesystem".into(),
            created_at: "2026-11-21T20:28:53.158562992Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn volume_list_like_lxc() {
        let vols = vec![
            vol("vol1", "custom", 0),
            vol("cY", "container", 1),
            vol("cX/snap0", "container", 0),
            vol(
                "52736835c351e0e0d4c4f4d0ac8b3d9d6a9e5c9a0c1e2d3f4a5b6c7d8e9f0a1b",
                "image",
                1,
            ),
            vol("cX", "container", 1),
        ];
        let want = "\
+----------------------+------------------------------------------------------------------+-------------+--------------+---------+
|         TYPE         |                               NAME                               | DESCRIPTION | CONTENT-TYPE | USED BY |
+----------------------+------------------------------------------------------------------+-------------+--------------+---------+
| container            | cX                                                               |             | filesystem   | 1       |
+----------------------+------------------------------------------------------------------+-------------+--------------+---------+
| container            | cY                                                               |             | filesystem   | 1       |
+----------------------+------------------------------------------------------------------+-------------+--------------+---------+
| container (snapshot) | cX/snap0                                                         |             | filesystem   | 0       |
+----------------------+------------------------------------------------------------------+-------------+--------------+---------+
| custom               | vol1                                                             |             | filesystem   | 0       |
+----------------------+------------------------------------------------------------------+-------------+--------------+---------+
| image                | 52736835c351e0e0d4c4f4d0ac8b3d9d6a9e5c9a0c1e2d3f4a5b6c7d8e9f0a1b |             | filesystem   | 1       |
+----------------------+------------------------------------------------------------------+-------------+--------------+---------+
";
        assert_eq!(render_volumes(&vols, "tndcu", Format::Table).unwrap(), want);
        assert_eq!(
            render_volumes(&vols[..2], "nt", Format::Csv).unwrap(),
            "cY,container\nvol1,custom\n"
        );
        match render_volumes(&vols, "tL", Format::Table) {
            Err(Fail::Error(m)) => assert_eq!(m, "Can't specify column L when not clustered"),
            _ => panic!("L accepted"),
        }
        let yaml = render_volumes(&vols[..1], "tndcu", Format::Yaml).unwrap();
        assert_eq!(
            yaml,
            "- config: {}\n  description: \"\"\n  name: vol1\n  type: custom\n  used_by: []\n  location: none\n  content_type: filesystem\n  created_at: 2026-11-21T20:28:53.158562992Z\n"
        );
    }
}
