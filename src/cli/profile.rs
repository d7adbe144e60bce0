//! `profile list|show|create|delete|edit|get|set|unset|add|remove|assign|rename|copy|device`.

use argh::FromArgs;

use super::config::{device, edit_yaml, Target};
use super::table::{self, Format};
use super::{client, fail, instance_path, parse, target, CmdResult, Fail};
use crate::api::{Instance, InstancePut, Profile, ProfilePost, ProfilePut, ProfilesPost};
use crate::client::{urlencode, Client};

const USAGE: &str = "Usage:\n  bivy profile [command]\n\nAvailable Commands:\n  add         Add profiles to instances\n  assign      Assign sets of profiles to instances\n  copy        Copy profiles\n  create      Create profiles\n  delete      Delete profiles\n  device      Manage devices\n  edit        Edit profile configurations as YAML\n  get         Get values for profile configuration keys\n  list        List profiles\n  remove      Remove profiles from instances\n  rename      Rename profiles\n  set         Set profile configuration keys\n  show        Show profile configurations\n  unset       Unset profile configuration keys\n";

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// List profiles.
pub struct ListArgs {
    #[argh(positional)]
    /// remote (`remote:`)
    remote: Option<String>,
    #[argh(option, short = 'f')]
    /// format (table, csv, json, yaml, compact)
    format: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Profile command arguments.
pub struct Words {
    #[argh(positional)]
    /// arguments
    words: Vec<String>,
    #[argh(option)]
    /// profile description (create)
    description: Option<String>,
}

fn path(name: &str) -> Result<String, Fail> {
    Ok(format!("/1.0/profiles/{}", urlencode(name, false)))
}

fn put_of(p: &Profile) -> ProfilePut {
    ProfilePut {
        config: p.config.clone(),
        description: p.description.clone(),
        devices: p.devices.clone(),
    }
}

fn instance_put(i: &Instance) -> InstancePut {
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

fn with_instance(
    c: &Client,
    name: &str,
    f: impl FnOnce(&mut Vec<String>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let p = instance_path(name);
    let (i, etag): (Instance, String) = c.get_etag(&p)?;
    let mut put = instance_put(&i);
    f(&mut put.profiles)?;
    c.put(&p, &put, Some(&etag))?;
    Ok(())
}

fn with_profile(
    c: &Client,
    name: &str,
    f: impl FnOnce(&mut ProfilePut) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let p = path(name)?;
    let (prof, etag): (Profile, String) = c.get_etag(&p)?;
    let mut put = put_of(&prof);
    f(&mut put)?;
    c.put(&p, &put, Some(&etag))?;
    Ok(())
}

/// Render `profile list` rows.
pub fn render_list(profiles: &[Profile], format: Format) -> Result<String, Fail> {
    match format {
        Format::Json => {
            return Ok(serde_json::to_string(profiles).map_err(|e| e.to_string())? + "\n")
        }
        Format::Yaml => return Ok(crate::util::yaml::to_string(profiles)?),
        _ => {}
    }
    let mut rows: Vec<Vec<String>> = profiles
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.description.clone(),
                p.used_by.len().to_string(),
            ]
        })
        .collect();
    crate::util::sort::sort(&mut rows);
    Ok(table::render_rows(
        format,
        &["NAME", "DESCRIPTION", "USED BY"],
        &rows,
    ))
}

pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        eprint!("{USAGE}");
        return Err(Fail::Exit(1));
    };
    let rest = &args[1..];
    if sub == "-h" || sub == "--help" {
        print!("{USAGE}");
        return Ok(0);
    }
    if sub == "device" {
        return device(Target::Profile, rest);
    }
    if sub == "list" || sub == "ls" {
        let a: ListArgs = parse(&["bivy profile list"], rest)?;
        let format = Format::parse(a.format.as_deref().unwrap_or("table"))?;
        let c = match &a.remote {
            Some(r) => target(r)?.0,
            None => client()?,
        };
        let list: Vec<Profile> = c.get("/1.0/profiles?recursion=1")?;
        print!("{}", render_list(&list, format)?);
        return Ok(0);
    }
    let w: Words = parse(&[&format!("bivy profile {sub}")], rest)?;
    // The first word (a profile, or the instance of add/remove/assign) names the remote.
    let (c, words) = match w.words.split_first() {
        Some((first, tail)) => {
            let (c, n) = target(first)?;
            let mut words = vec![n.to_string()];
            words.extend(tail.iter().cloned());
            (c, words)
        }
        None => (client()?, Vec::new()),
    };
    match (sub.as_str(), words.as_slice()) {
        ("show", [name]) => {
            let p: Profile = c.get(&path(name)?)?;
            super::print_yaml(&p)?;
        }
        ("create", [name]) => {
            let body = ProfilesPost {
                put: ProfilePut {
                    description: w.description.clone().unwrap_or_default(),
                    ..Default::default()
                },
                name: name.to_string(),
            };
            c.post("/1.0/profiles", &body)?;
            println!("Profile {name} created");
        }
        ("delete" | "rm", [name]) => {
            c.delete(&path(name)?)?;
            println!("Profile {name} deleted");
        }
        ("edit", [name]) => {
            let p = path(name)?;
            let (prof, etag): (Profile, String) = c.get_etag(&p)?;
            let new: ProfilePut = edit_yaml(&put_of(&prof), "### This is a YAML representation of the profile.\n### Any line starting with a '# will be ignored.\n\n")?;
            c.put(&p, &new, Some(&etag))?;
        }
        ("get", [name, key]) => {
            let p: Profile = c.get(&path(name)?)?;
            println!("{}", p.config.get(key).cloned().unwrap_or_default());
        }
        ("set", [name, rest @ ..]) if !rest.is_empty() => {
            let pairs = match rest {
                [k, v] if !k.contains('=') => vec![(k.clone(), v.clone())],
                kvs => super::key_values(kvs)?,
            };
            with_profile(&c, name, |p| {
                for (k, v) in pairs {
                    p.config.insert(k, v);
                }
                Ok(())
            })?;
        }
        ("unset", [name, key]) => with_profile(&c, name, |p| {
            if p.config.remove(key).is_none() {
                return fail(format!("Unknown configuration key: {key}"));
            }
            Ok(())
        })?,
        ("add", [inst, prof]) => {
            // Duplicates are the server's to refuse, as with lxc.
            with_instance(&c, inst, |ps| {
                ps.push(prof.clone());
                Ok(())
            })?;
            println!("Profile {prof} added to {inst}");
        }
        ("remove", [inst, prof]) => {
            with_instance(&c, inst, |ps| {
                let before = ps.len();
                ps.retain(|p| p != prof);
                if ps.len() == before {
                    return fail(format!("Profile {prof} isn't currently applied to {inst}"));
                }
                Ok(())
            })?;
            println!("Profile {prof} removed from {inst}");
        }
        ("assign" | "apply", [inst, list]) => {
            let new: Vec<String> = list
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            let empty = new.is_empty();
            with_instance(&c, inst, |ps| {
                *ps = new;
                Ok(())
            })?;
            if empty {
                println!("All profiles removed from {inst}");
            } else {
                println!("Profiles {list} applied to {inst}");
            }
        }
        ("rename" | "mv", [old, new]) => {
            c.post(&path(old)?, &ProfilePost { name: new.clone() })?;
            println!("Profile {old} renamed to {new}");
        }
        ("copy" | "cp", [src, dst]) => {
            // The copy may go to another remote (`profile copy p b:p2`; `b:` keeps the name).
            let p: Profile = c.get(&path(src)?)?;
            let (dc, dst) = target(dst)?;
            let name = if dst.is_empty() { src.as_str() } else { dst };
            dc.post(
                "/1.0/profiles",
                &ProfilesPost {
                    put: put_of(&p),
                    name: name.to_string(),
                },
            )?;
        }
        (other, _) => {
            eprint!("{USAGE}");
            return fail(format!("invalid arguments for \"profile {other}\""));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_list_like_lxc() {
        let p = Profile {
            name: "default".into(),
            description: "Default LXD profile".into(),
            used_by: vec!["/1.0/instances/cX".into(), "/1.0/instances/cY".into()],
            ..Default::default()
        };
        let want = "+---------+---------------------+---------+\n|  NAME   |     DESCRIPTION     | USED BY |\n+---------+---------------------+---------+\n| default | Default LXD profile | 2       |\n+---------+---------------------+---------+\n";
        assert_eq!(render_list(&[p], Format::Table).unwrap(), want);
    }
}
