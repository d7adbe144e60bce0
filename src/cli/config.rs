//! `config get|set|unset|show|edit|device` for instances, and for the server when no instance is
//! named. Writes are GET (ETag) then PUT with `If-Match`, as lxc does. Also the editor helpers
//! used by the other `edit` verbs and the device commands shared with `profile device`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::Command;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{client, fail, instance_path, is_tty, target, CmdResult, Fail};
use crate::api::{
    Devices, Instance, InstancePut, Profile, ProfilePut, Server, ServerPut, StringMap,
};
use crate::client::{urlencode, Client};
use crate::util::yaml;

const USAGE: &str = "Usage:\n  bivy config [command]\n\nAvailable Commands:\n  device      Manage devices\n  edit        Edit instance or server configurations as YAML\n  get         Get values for instance or server configuration keys\n  metadata    Manage instance metadata files\n  set         Set instance or server configuration keys\n  show        Show instance or server configurations\n  template    Manage instance file templates\n  trust       Manage trusted clients\n  unset       Unset instance or server configuration keys\n";

/// Strip the boolean flags this command family knows from `args`.
fn take_flag(args: &[String], names: &[&str]) -> (bool, Vec<String>) {
    let mut found = false;
    let mut rest = Vec::new();
    for a in args {
        if names.contains(&a.as_str()) {
            found = true;
        } else {
            rest.push(a.clone());
        }
    }
    (found, rest)
}

fn help_requested(args: &[String]) -> bool {
    args.iter().any(|a| a == "-h" || a == "--help")
}

/// The words of `args`: a flag before `--` is unknown; after it (the first one dropped) any word
/// is a word, as lxc takes `config set c1 user.n -- -5`.
fn check_unknown_flags(args: &[String]) -> Result<Vec<String>, Fail> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    if let Some(f) = args[..end]
        .iter()
        .find(|a| a.starts_with('-') && a.len() > 1)
    {
        return fail(format!("unknown flag: {f}"));
    }
    let mut words = args.to_vec();
    if end < words.len() {
        words.remove(end);
    }
    Ok(words)
}

pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        eprint!("{USAGE}");
        return Err(Fail::Exit(1));
    };
    let rest = &args[1..];
    if sub == "trust" {
        return super::trust::run(rest);
    }
    if sub == "device" {
        return device(Target::Instance, rest);
    }
    if sub == "metadata" {
        return super::metadata::metadata(rest);
    }
    if sub == "template" {
        return super::metadata::template(rest);
    }
    if help_requested(rest) || sub == "-h" || sub == "--help" {
        print!("{USAGE}");
        return Ok(0);
    }
    match sub.as_str() {
        "get" => get(rest),
        "set" => set(rest),
        "unset" => unset(rest),
        "show" => show(rest),
        "edit" => edit(rest),
        other => {
            eprint!("{USAGE}");
            fail(format!("unknown command \"{other}\" for \"bivy config\""))
        }
    }
}

/// `config set` arguments: `[remote:]instance` (none for the default remote's server; `remote:`
/// for that remote's server) and the pairs.
pub type SetArgs = (Option<String>, Vec<(String, String)>);

/// Split `config set` arguments into (instance, pairs), following lxc: `set KEY VALUE` and
/// `set KEY=VALUE...` address the server; `set NAME KEY VALUE` and `set NAME KEY=VALUE...` an
/// instance. (`set NAME KEY=VALUE` with exactly two words, which lxc reads as the server key NAME,
/// addresses the instance when NAME has no dot, since server keys always do.)
pub fn split_set(args: &[String]) -> Result<SetArgs, Fail> {
    match args {
        [] | [_] if args.first().is_none_or(|a| !a.contains('=')) => fail("Missing key or value"),
        [k, v] if !k.contains('=') && (!v.contains('=') || k.contains('.')) => {
            Ok((None, vec![(k.clone(), v.clone())]))
        }
        [first, rest @ ..] if !first.contains('=') => {
            let name = first.clone();
            if let [k, v] = rest {
                if !k.contains('=') {
                    return Ok((Some(name), vec![(k.clone(), v.clone())]));
                }
            }
            Ok((Some(name), super::key_values(rest)?))
        }
        all => Ok((None, super::key_values(all)?)),
    }
}

/// The writable part of an instance, for a GET-then-PUT.
pub fn instance_put(i: &Instance) -> InstancePut {
    InstancePut {
        architecture: i.architecture.clone(),
        config: i.config.clone(),
        devices: i.devices.clone(),
        ephemeral: i.ephemeral,
        profiles: i.profiles.clone(),
        restore: String::new(),
        stateful: i.stateful,
        description: i.description.clone(),
    }
}

/// `[remote:][instance]`: the remote's client and the instance, `None` for the server itself.
fn server_or_instance(arg: Option<&String>) -> Result<(Client, Option<String>), Fail> {
    match arg {
        None => Ok((client()?, None)),
        Some(a) => {
            let (c, n) = target(a)?;
            Ok((c, (!n.is_empty()).then(|| n.to_string())))
        }
    }
}

fn get(args: &[String]) -> CmdResult {
    let (expanded, args) = take_flag(args, &["-e", "--expanded"]);
    let args = check_unknown_flags(&args)?;
    let (c, name, key) = match args.as_slice() {
        [key] => (client()?, None, key),
        [name, key] => {
            let (c, n) = server_or_instance(Some(name))?;
            (c, n, key)
        }
        _ => return fail("Usage: bivy config get [[remote:]NAME] KEY"),
    };
    match name {
        None => {
            let s: Server = c.get("/1.0")?;
            println!("{}", s.config.get(key).cloned().unwrap_or_default());
        }
        Some(name) => {
            let i: Instance = c.get(&instance_path(&name))?;
            let cfg = if expanded {
                &i.expanded_config
            } else {
                &i.config
            };
            println!("{}", cfg.get(key).cloned().unwrap_or_default());
        }
    }
    Ok(0)
}

/// The server's config as `PUT /1.0` takes it.
fn server_put(s: Server) -> ServerPut {
    let config = s.config.into_iter().map(|(k, v)| (k, v.into()));
    ServerPut {
        config: crate::util::sort::map(config),
    }
}

fn update_server(
    c: &Client,
    f: impl FnOnce(&mut std::collections::BTreeMap<String, serde_json::Value>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let (s, etag): (Server, String) = c.get_etag("/1.0")?;
    let mut put = server_put(s);
    f(&mut put.config)?;
    c.put("/1.0", &put, Some(&etag))?;
    Ok(())
}

fn update_instance(
    c: &Client,
    name: &str,
    f: impl FnOnce(&mut InstancePut, &Instance) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let (i, etag): (Instance, String) = c.get_etag(&instance_path(name))?;
    let mut put = instance_put(&i);
    f(&mut put, &i)?;
    c.put(&instance_path(name), &put, Some(&etag))?;
    Ok(())
}

fn set(args: &[String]) -> CmdResult {
    let args = check_unknown_flags(args)?;
    let args = &args[..];
    let (name, pairs) = split_set(args)?;
    let (c, name) = server_or_instance(name.as_ref())?;
    match name {
        None => update_server(&c, |cfg| {
            for (k, v) in pairs {
                cfg.insert(k, serde_json::Value::String(v));
            }
            Ok(())
        })?,
        Some(n) => update_instance(&c, &n, |put, _| {
            for (k, v) in pairs {
                put.config.insert(k, v);
            }
            Ok(())
        })?,
    }
    Ok(0)
}

fn unset(args: &[String]) -> CmdResult {
    let args = check_unknown_flags(args)?;
    let args = &args[..];
    let (c, name, key) = match args {
        [key] => (client()?, None, key),
        [name, key] => {
            let (c, n) = server_or_instance(Some(name))?;
            (c, n, key)
        }
        _ => return fail("Usage: bivy config unset [[remote:]NAME] KEY"),
    };
    match name {
        None => update_server(&c, |cfg| {
            if cfg.remove(key).is_none() {
                return fail(format!("Can't unset key '{key}', it's not currently set"));
            }
            Ok(())
        })?,
        Some(name) => update_instance(&c, &name, |put, _| {
            if put.config.remove(key).is_none() {
                return fail(format!("Can't unset key '{key}', it's not currently set"));
            }
            Ok(())
        })?,
    }
    Ok(0)
}

fn show(args: &[String]) -> CmdResult {
    let (expanded, args) = take_flag(args, &["-e", "--expanded"]);
    let args = check_unknown_flags(&args)?;
    if args.len() > 1 {
        return fail("Usage: bivy config show [[remote:]NAME]");
    }
    let (c, name) = server_or_instance(args.first())?;
    match name {
        None => {
            let s: Server = c.get("/1.0")?;
            super::print_yaml(&server_put(s))?;
        }
        Some(name) => {
            let name = name.as_str();
            if let Some((inst, snap)) = name.split_once('/') {
                let v: serde_json::Value = c.get(&format!(
                    "{}/snapshots/{}",
                    instance_path(inst),
                    urlencode(snap, false)
                ))?;
                super::print_yaml(&v)?;
                return Ok(0);
            }
            let i: Instance = c.get(&instance_path(name))?;
            let mut put = instance_put(&i);
            if expanded {
                put.config = i.expanded_config.clone();
                put.devices = i.expanded_devices.clone();
            }
            super::print_yaml(&put)?;
        }
    }
    Ok(0)
}

/// Run the editor on `content` (in a temp file with this extension) and return what was saved.
pub fn edit_bytes(content: &[u8], ext: &str) -> Result<Vec<u8>, Fail> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("VISUAL").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "vi".to_string());
    let path: PathBuf = std::env::temp_dir().join(format!(
        "bivy_editor_{}_{}.{ext}",
        std::process::id(),
        nanos()
    ));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(content)?;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let out = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => Ok(out?),
        Ok(s) => fail(format!("editor exited with {s}")),
        Err(e) => fail(format!("failed to run the editor {editor}: {e}")),
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The edit flow of lxc: YAML from stdin when it is not a terminal, else the editor, re-opened
/// on a parse error until the user gives up.
pub fn edit_yaml<T: Serialize + DeserializeOwned>(current: &T, header: &str) -> Result<T, Fail> {
    if !is_tty(0) {
        let mut buf = String::new();
        io::stdin().read_to_string(&mut buf)?;
        return Ok(yaml::from_str(&buf)?);
    }
    let mut text = format!("{header}{}", yaml::to_string(current)?);
    loop {
        let out = edit_bytes(text.as_bytes(), "yaml")?;
        let s = String::from_utf8_lossy(&out).to_string();
        match yaml::from_str::<T>(&s) {
            Ok(v) => return Ok(v),
            Err(e) => {
                eprintln!("Config parsing error: {e}");
                eprintln!("Press enter to open the editor again or ctrl+c to abort change");
                let mut line = String::new();
                if io::stdin().read_line(&mut line)? == 0 {
                    return fail(format!("Config parsing error: {e}"));
                }
                text = s;
            }
        }
    }
}

const INSTANCE_HEADER: &str = "### This is a YAML representation of the configuration.\n### Any line starting with a '# will be ignored.\n###\n### A sample configuration looks like:\n### name: instance1\n### profiles:\n### - default\n### config:\n###   volatile.eth0.hwaddr: 00:16:3e:e9:f8:7f\n### devices:\n###   homedir:\n###     path: /extra\n###     source: /home/user\n###     type: disk\n### ephemeral: false\n###\n### Note that the name is shown but cannot be changed\n\n";

fn edit(args: &[String]) -> CmdResult {
    let args = check_unknown_flags(args)?;
    let args = &args[..];
    if args.len() > 1 {
        return fail("Usage: bivy config edit [[remote:]NAME]");
    }
    let (c, name) = server_or_instance(args.first())?;
    match name {
        None => {
            let (s, etag): (Server, String) = c.get_etag("/1.0")?;
            let cur = server_put(s);
            let new: ServerPut = edit_yaml(&cur, "### This is a YAML representation of the server configuration.\n### Any line starting with a '# will be ignored.\n\n")?;
            c.put("/1.0", &new, Some(&etag))?;
        }
        Some(name) => {
            let (i, etag): (Instance, String) = c.get_etag(&instance_path(&name))?;
            let new: InstancePut = edit_yaml(&instance_put(&i), INSTANCE_HEADER)?;
            c.put(&instance_path(&name), &new, Some(&etag))?;
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// Devices, shared by `config device` and `profile device`.

/// Which kind of object a `device` command edits.
#[derive(Clone, Copy)]
pub enum Target {
    Instance,
    Profile,
}

/// The writable part of an instance or a profile, with its ETag.
struct Editable {
    path: String,
    etag: String,
    instance: Option<(InstancePut, Devices)>,
    profile: Option<ProfilePut>,
}

impl Editable {
    fn load(c: &Client, target: Target, name: &str) -> Result<Editable, Fail> {
        match target {
            Target::Instance => {
                let path = instance_path(name);
                let (i, etag): (Instance, String) = c.get_etag(&path)?;
                Ok(Editable {
                    path,
                    etag,
                    instance: Some((instance_put(&i), i.expanded_devices)),
                    profile: None,
                })
            }
            Target::Profile => {
                let path = format!("/1.0/profiles/{}", urlencode(name, false));
                let (p, etag): (Profile, String) = c.get_etag(&path)?;
                let put = ProfilePut {
                    config: p.config,
                    description: p.description,
                    devices: p.devices,
                };
                Ok(Editable {
                    path,
                    etag,
                    instance: None,
                    profile: Some(put),
                })
            }
        }
    }
    fn devices(&mut self) -> &mut Devices {
        match (&mut self.instance, &mut self.profile) {
            (Some((i, _)), _) => &mut i.devices,
            (_, Some(p)) => &mut p.devices,
            _ => unreachable!("an editable is an instance or a profile"),
        }
    }
    fn expanded_has(&self, dev: &str) -> bool {
        self.instance
            .as_ref()
            .is_some_and(|(_, e)| e.contains_key(dev))
    }
    fn save(&self, c: &Client) -> Result<(), Fail> {
        match (&self.instance, &self.profile) {
            (Some((i, _)), _) => c.put(&self.path, i, Some(&self.etag))?,
            (_, Some(p)) => c.put(&self.path, p, Some(&self.etag))?,
            _ => None,
        };
        Ok(())
    }
}

const DEVICE_USAGE: &str = "Usage:\n  bivy config device [command]\n\nAvailable Commands:\n  add         Add instance devices\n  get         Get values for device configuration keys\n  list        List instance devices\n  override    Copy profile inherited devices and override configuration keys\n  remove      Remove instance devices\n  set         Set device configuration keys\n  show        Show full device configuration\n  unset       Unset device configuration keys\n";

pub fn device(target: Target, args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        eprint!("{DEVICE_USAGE}");
        return Err(Fail::Exit(1));
    };
    let rest = &args[1..];
    if sub == "-h" || sub == "--help" || help_requested(rest) {
        print!("{DEVICE_USAGE}");
        return Ok(0);
    }
    let rest = check_unknown_flags(rest)?;
    let rest = &rest[..];
    // The instance or profile (the first word) may be on another remote.
    let (c, words) = match rest.split_first() {
        Some((first, tail)) => {
            let (c, n) = super::target(first)?;
            let mut words = vec![n.to_string()];
            words.extend(tail.iter().cloned());
            (c, words)
        }
        None => (client()?, Vec::new()),
    };
    let rest = words.as_slice();
    let what = match target {
        Target::Instance => "instance",
        Target::Profile => "profile",
    };
    match (sub.as_str(), rest) {
        ("add", [name, dev, kind, kvs @ ..]) => {
            let mut e = Editable::load(&c, target, name)?;
            if e.devices().contains_key(dev) {
                return fail("The device already exists");
            }
            let mut d = StringMap::new();
            d.insert("type".into(), kind.clone());
            for (k, v) in super::key_values(kvs)? {
                d.insert(k, v);
            }
            e.devices().insert(dev.clone(), d);
            e.save(&c)?;
            println!("Device {dev} added to {name}");
        }
        ("remove" | "rm", [name, devs @ ..]) if !devs.is_empty() => {
            let mut e = Editable::load(&c, target, name)?;
            for dev in devs {
                if e.devices().remove(dev).is_none() {
                    if e.expanded_has(dev) {
                        return fail("Device from profile(s) cannot be removed from individual instance. Override device or modify profile instead");
                    }
                    return fail("Device doesn't exist");
                }
            }
            e.save(&c)?;
            println!("Device {} removed from {name}", devs.join(", "));
        }
        ("show", [name]) => {
            let mut e = Editable::load(&c, target, name)?;
            super::print_yaml(e.devices())?;
        }
        ("list" | "ls", [name]) => {
            let mut e = Editable::load(&c, target, name)?;
            for k in e.devices().keys() {
                println!("{k}");
            }
        }
        ("get", [name, dev, key]) => {
            let mut e = Editable::load(&c, target, name)?;
            let Some(d) = e.devices().get(dev) else {
                return fail("Device doesn't exist");
            };
            println!("{}", d.get(key).cloned().unwrap_or_default());
        }
        ("set", [name, dev, rest @ ..]) if !rest.is_empty() => {
            let pairs = match rest {
                [k, v] if !k.contains('=') => vec![(k.clone(), v.clone())],
                kvs => super::key_values(kvs)?,
            };
            let mut e = Editable::load(&c, target, name)?;
            let Some(d) = e.devices().get_mut(dev) else {
                return fail("Device doesn't exist");
            };
            for (k, v) in pairs {
                d.insert(k, v);
            }
            e.save(&c)?;
        }
        ("unset", [name, dev, key]) => {
            let mut e = Editable::load(&c, target, name)?;
            let Some(d) = e.devices().get_mut(dev) else {
                return fail("Device doesn't exist");
            };
            d.remove(key);
            e.save(&c)?;
        }
        ("override", [name, dev, kvs @ ..]) if matches!(target, Target::Instance) => {
            let mut e = Editable::load(&c, target, name)?;
            if e.devices().contains_key(dev) {
                return fail("The device already exists");
            }
            let Some(mut d) = e
                .instance
                .as_ref()
                .and_then(|(_, exp)| exp.get(dev).cloned())
            else {
                return fail("The profile device doesn't exist");
            };
            for (k, v) in super::key_values(kvs)? {
                d.insert(k, v);
            }
            e.devices().insert(dev.clone(), d);
            e.save(&c)?;
            println!("Device {dev} overridden for {name}");
        }
        (other, _) => {
            eprint!("{DEVICE_USAGE}");
            return fail(format!("invalid arguments for \"{what} device {other}\""));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn config_set_splitting() {
        let (n, p) = split_set(&s(&["c1", "limits.memory", "64MB"])).unwrap();
        assert_eq!(
            (n.as_deref(), p),
            (Some("c1"), pairs(&[("limits.memory", "64MB")]))
        );
        let (n, p) = split_set(&s(&["c1", "a.b=1", "c.d=x=y"])).unwrap();
        assert_eq!(
            (n.as_deref(), p),
            (Some("c1"), pairs(&[("a.b", "1"), ("c.d", "x=y")]))
        );
        let (n, p) = split_set(&s(&["c1", "limits.cpu=2"])).unwrap();
        assert_eq!(
            (n.as_deref(), p),
            (Some("c1"), pairs(&[("limits.cpu", "2")]))
        );
        let (n, p) = split_set(&s(&["core.https_address", "[::]:8443"])).unwrap();
        assert_eq!(
            (n, p),
            (None, pairs(&[("core.https_address", "[::]:8443")]))
        );
        let (n, p) = split_set(&s(&["core.a=1", "core.b=2"])).unwrap();
        assert_eq!((n, p), (None, pairs(&[("core.a", "1"), ("core.b", "2")])));
        let (n, p) = split_set(&s(&["local:c1", "user.x", "a=b"])).unwrap();
        assert_eq!(
            (n.as_deref(), p),
            (Some("local:c1"), pairs(&[("user.x", "a=b")]))
        );
        let (n, p) = split_set(&s(&["b:", "core.https_address", ":8443"])).unwrap();
        assert_eq!(
            (n.as_deref(), p),
            (Some("b:"), pairs(&[("core.https_address", ":8443")]))
        );
        assert!(split_set(&s(&["c1"])).is_err());
        assert!(split_set(&s(&["c1", "k=v", "bad"])).is_err());
    }
}
