//! `storage list|show|create|delete|edit|get|set|unset|info`, after `lxc storage`
//! (lxc/storage.go) of LXD 5.0.2; `storage volume ...` is `storage/volume.rs`.

use std::collections::BTreeMap;
use std::io::Read;

use argh::FromArgs;
use serde::{Deserialize, Serialize};

use super::config::edit_yaml;
use super::table::{self, Format};
use super::{check_args, client, fail, is_tty, parse, undash, CmdResult, Fail};
use crate::api::{StoragePool, StringMap};
use crate::client::{urlencode, Client};

const USAGE: &str = "Usage:\n  bivy storage [command]\n\nAvailable Commands:\n  create      Create storage pools\n  delete      Delete storage pools\n  edit        Edit storage pool configurations as YAML\n  get         Get values for storage pool configuration keys\n  info        Show useful information about storage pools\n  list        List available storage pools\n  set         Set storage pool configuration keys\n  show        Show storage pool configurations and resources\n  unset       Unset storage pool configuration keys\n  volume      Manage storage volumes\n";

const EDIT_HEADER: &str = "### This is a YAML representation of a storage pool.\n### Any line starting with a '#' will be ignored.\n###\n### A storage pool consists of a set of configuration items.\n###\n### An example would look like:\n### name: default\n### driver: zfs\n### used_by: []\n### config:\n###   size: \"61203283968\"\n###   source: /home/chb/mnt/lxd_test/default.img\n###   zfs.pool_name: default\n\n";

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// List available storage pools.
pub struct ListArgs {
    #[argh(positional)]
    /// the remote ([<remote>:], only local)
    remote: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (csv|json|table|yaml|compact)
    format: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Create storage pools: <pool> <driver> [key=value...]
pub struct CreateArgs {
    #[argh(positional)]
    /// pool, driver and key=value pairs
    words: Vec<String>,
    #[argh(option)]
    /// storage pool description
    description: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Show useful information about storage pools.
pub struct InfoArgs {
    #[argh(positional)]
    /// the pool ([<remote>:]<pool>)
    words: Vec<String>,
    #[argh(switch)]
    /// show the used and free space in bytes
    bytes: bool,
}

/// An argh command of plain positional words, one per verb so that `--help` describes it.
macro_rules! words_command {
    ($name:ident, $about:literal, $words:literal) => {
        #[derive(FromArgs)]
        #[argh(help_triggers("-h", "--help"))]
        #[doc = $about]
        pub struct $name {
            #[argh(positional)]
            #[doc = $words]
            words: Vec<String>,
        }
    };
}

// After the macro, which the volume verbs use too.
mod volume;

words_command!(
    ShowArgs,
    "Show storage pool configurations and resources.",
    "the pool ([<remote>:]<pool>)"
);
words_command!(
    DeleteArgs,
    "Delete storage pools.",
    "the pool ([<remote>:]<pool>)"
);
words_command!(
    EditArgs,
    "Edit storage pool configurations as YAML (from stdin when it is not a terminal).",
    "the pool ([<remote>:]<pool>)"
);
words_command!(
    GetArgs,
    "Get values for storage pool configuration keys.",
    "the pool and the key (<pool> <key>)"
);
words_command!(
    SetArgs,
    "Set storage pool configuration keys: <pool> <key>=<value>... (or <pool> <key> <value>).",
    "the pool and key=value pairs"
);
words_command!(
    UnsetArgs,
    "Unset storage pool configuration keys.",
    "the pool and the key (<pool> <key>)"
);

/// `POST /1.0/storage-pools`.
#[derive(Serialize, Debug, Default)]
pub struct PoolsPost {
    pub config: StringMap,
    pub description: String,
    pub name: String,
    pub driver: String,
}

/// `PUT /1.0/storage-pools/NAME`.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct PoolPut {
    #[serde(default)]
    pub config: StringMap,
    #[serde(default)]
    pub description: String,
}

/// A pool as shown in the editor: all of it, of which only the writable part is sent back.
#[derive(Serialize, Deserialize, Debug, Default)]
struct PoolEdit {
    #[serde(default)]
    config: StringMap,
    #[serde(default)]
    description: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    used_by: Vec<String>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    locations: Vec<String>,
}

/// `GET /1.0/storage-pools/NAME/resources`.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub struct PoolResources {
    #[serde(default)]
    pub space: Usage,
    #[serde(default)]
    pub inodes: Usage,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub struct Usage {
    #[serde(default)]
    pub used: u64,
    #[serde(default)]
    pub total: u64,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn pool_path(name: &str) -> String {
    format!("/1.0/storage-pools/{}", urlencode(name, false))
}

/// `[remote:]pool`: the remote's client and the pool name; lxc refuses an empty one (`local:`).
fn pool_name(arg: &str) -> Result<(Client, &str), Fail> {
    let (c, name) = super::target(arg)?;
    if name.is_empty() {
        return fail("Missing pool name");
    }
    Ok((c, name))
}

/// A value of `-` reads stdin when it is not a terminal, as lxc's `getConfig` does.
fn value_or_stdin(v: &str) -> Result<String, Fail> {
    if v == "-" && !is_tty(0) {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| Fail::Error(format!("Can't read from stdin: {e}")))?;
        return Ok(buf);
    }
    Ok(v.to_string())
}

/// lxc's `getConfig`: `KEY VALUE` (legacy) or `KEY=VALUE...`.
pub fn config_pairs(args: &[String]) -> Result<Vec<(String, String)>, Fail> {
    if let [k, v] = args {
        if !k.contains('=') {
            return Ok(vec![(k.clone(), value_or_stdin(v)?)]);
        }
    }
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), value_or_stdin(v)?)),
            None => fail(format!("Invalid key=value configuration: {a}")),
        })
        .collect()
}

/// Render `storage list` rows (non-clustered columns of lxc).
pub fn render_pools(pools: &[StoragePool], format: Format) -> Result<String, Fail> {
    match format {
        Format::Json => return Ok(serde_json::to_string(pools).map_err(|e| e.to_string())? + "\n"),
        Format::Yaml => return Ok(crate::util::yaml::to_string(pools)?),
        _ => {}
    }
    let mut rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.driver.clone(),
                p.config.get("source").cloned().unwrap_or_default(),
                p.description.clone(),
                p.used_by.len().to_string(),
                p.status.to_uppercase(),
            ]
        })
        .collect();
    crate::util::sort::sort(&mut rows);
    Ok(table::render_rows(
        format,
        &[
            "NAME",
            "DRIVER",
            "SOURCE",
            "DESCRIPTION",
            "USED BY",
            "STATE",
        ],
        &rows,
    ))
}

/// `%XX` decoding of a URL path or query component (Go's `url.Parse` does this).
fn unescape(s: &str, plus_as_space: bool) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_as_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `used by` entries of `lxc storage info`, grouped by entity type (`instances`,
/// `profiles`, `images`, `volumes`, ...). Snapshots are left out (their parent is listed), and a
/// project or cluster member in the URL's query is shown after the name.
pub fn used_by_groups(used_by: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in used_by {
        let (path, query) = u.split_once('?').unwrap_or((u, ""));
        let path = unescape(path, false);
        let fields: Vec<&str> = path
            .strip_prefix("/1.0/")
            .unwrap_or(&path)
            .split('/')
            .collect();
        let n = fields.len();
        let (mut kind, mut name) = ("unrecognized".to_string(), path.clone());
        if n > 1 {
            if fields[n - 2] == "snapshots" {
                continue;
            }
            kind = fields[0].to_string();
            name = fields[1].to_string();
            if fields[0] == "storage-pools" && n > 3 {
                kind = fields[2].to_string();
                name = fields[3].to_string();
                if kind == "volumes" && n > 4 {
                    name = fields[4].to_string();
                }
            }
        }
        let mut project = String::new();
        let mut target = String::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match unescape(k, true).as_str() {
                "project" if project.is_empty() => project = unescape(v, true),
                "target" if target.is_empty() => target = unescape(v, true),
                _ => {}
            }
        }
        let mut attribs = Vec::new();
        if !project.is_empty() {
            attribs.push(format!("project {project:?}"));
        }
        if !target.is_empty() {
            attribs.push(format!("location {target:?}"));
        }
        if !attribs.is_empty() {
            name = format!("{name} ({})", attribs.join(", "));
        }
        groups.entry(kind).or_default().push(name);
    }
    groups
}

/// Render `storage info`: two YAML documents printed back to back, `info:` then `used by:`.
pub fn render_info(pool: &StoragePool, res: &PoolResources, bytes: bool) -> Result<String, Fail> {
    let size = |n: u64| {
        if bytes {
            n.to_string()
        } else {
            table::size_iec(n as i64)
        }
    };
    let mut info = BTreeMap::new();
    info.insert("name", pool.name.clone());
    info.insert("driver", pool.driver.clone());
    info.insert("description", pool.description.clone());
    info.insert("total space", size(res.space.total));
    info.insert("space used", size(res.space.used));
    let info = crate::util::sort::map([("info", info)]);
    let used = crate::util::sort::map([("used by", used_by_groups(&pool.used_by))]);
    Ok(
        crate::util::yaml::to_string_generic(&info)?
            + &crate::util::yaml::to_string_generic(&used)?,
    )
}

/// Read a pool, change its writable part, and PUT it back with the pool's ETag.
fn update_pool(c: &Client, name: &str, f: impl FnOnce(&mut PoolPut)) -> Result<(), Fail> {
    let path = pool_path(name);
    let (pool, etag): (StoragePool, String) = c.get_etag(&path)?;
    let mut put = PoolPut {
        config: pool.config,
        description: pool.description,
    };
    f(&mut put);
    c.put(&path, &put, Some(&etag))?;
    Ok(())
}

pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        eprint!("{USAGE}");
        return Err(Fail::Exit(1));
    };
    let rest = &args[1..];
    let cmd = format!("bivy storage {sub}");
    match sub.as_str() {
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        "list" | "ls" => {
            let a: ListArgs = parse(&[&cmd], rest)?;
            check_args::<ListArgs>(&cmd, a.remote.len(), 0, Some(1))?;
            let c = match a.remote.first() {
                Some(r) => super::target(&format!("{}:", r.trim_end_matches(':')))?.0,
                None => client()?,
            };
            let format = Format::parse(a.format.as_deref().unwrap_or("table"))?;
            let pools: Vec<StoragePool> = c.get("/1.0/storage-pools?recursion=1")?;
            print!("{}", render_pools(&pools, format)?);
            Ok(0)
        }
        "create" => {
            let a: CreateArgs = parse(&[&cmd], rest)?;
            check_args::<CreateArgs>(&cmd, a.words.len(), 2, None)?;
            let words = undash(a.words);
            let (c, name) = super::target(&words[0])?;
            let name = name.to_string();
            let mut config = StringMap::new();
            for kv in &words[2..] {
                match kv.split_once('=') {
                    Some((k, v)) => config.insert(k.to_string(), v.to_string()),
                    None => return fail(format!("Bad key=value pair: [{kv}]")),
                };
            }
            let body = PoolsPost {
                config,
                description: a.description.unwrap_or_default(),
                name: name.clone(),
                driver: words[1].clone(),
            };
            c.post("/1.0/storage-pools", &body)?;
            if !super::quiet() {
                println!("Storage pool {name} created");
            }
            Ok(0)
        }
        "info" => {
            let a: InfoArgs = parse(&[&cmd], rest)?;
            check_args::<InfoArgs>(&cmd, a.words.len(), 1, Some(1))?;
            let (c, name) = pool_name(&a.words[0])?;
            let pool: StoragePool = c.get(&pool_path(name))?;
            let res: PoolResources = c.get(&format!("{}/resources", pool_path(name)))?;
            print!("{}", render_info(&pool, &res, a.bytes)?);
            Ok(0)
        }
        "volume" => volume::run(rest),
        "show" => pool_verb::<ShowArgs>(sub, &cmd, rest, |a| a.words),
        "delete" | "rm" => pool_verb::<DeleteArgs>(sub, &cmd, rest, |a| a.words),
        "edit" => pool_verb::<EditArgs>(sub, &cmd, rest, |a| a.words),
        "get" => pool_verb::<GetArgs>(sub, &cmd, rest, |a| a.words),
        "set" => pool_verb::<SetArgs>(sub, &cmd, rest, |a| a.words),
        "unset" => pool_verb::<UnsetArgs>(sub, &cmd, rest, |a| a.words),
        other => {
            eprint!("{USAGE}");
            fail(format!("unknown command \"{other}\" for \"bivy storage\""))
        }
    }
}

/// The verbs taking a pool and plain words.
fn pool_verb<T: FromArgs>(
    sub: &str,
    cmd: &str,
    args: &[String],
    words: impl FnOnce(T) -> Vec<String>,
) -> CmdResult {
    let words = undash(words(parse(&[cmd], args)?));
    let (min, max) = match sub {
        "show" | "delete" | "rm" | "edit" => (1, Some(1)),
        "get" | "unset" => (2, Some(2)),
        _ => (2, None),
    };
    check_args::<T>(cmd, words.len(), min, max)?;
    let (c, name) = pool_name(&words[0])?;
    match sub {
        "show" => {
            let mut p: StoragePool = c.get(&pool_path(name))?;
            crate::util::sort::sort(&mut p.used_by);
            super::print_yaml(&p)?;
        }
        "delete" | "rm" => {
            c.delete(&pool_path(name))?;
            if !super::quiet() {
                println!("Storage pool {name} deleted");
            }
        }
        "edit" => {
            let path = pool_path(name);
            if !is_tty(0) {
                // lxc sends what stdin holds, without an ETag.
                let new: PoolPut = edit_yaml(&PoolPut::default(), "")?;
                c.put(&path, &new, None)?;
                return Ok(0);
            }
            let (pool, etag): (StoragePool, String) = c.get_etag(&path)?;
            let current = PoolEdit {
                config: pool.config,
                description: pool.description,
                name: pool.name,
                driver: pool.driver,
                used_by: pool.used_by,
                status: pool.status,
                locations: pool.locations,
            };
            let new: PoolEdit = edit_yaml(&current, EDIT_HEADER)?;
            let put = PoolPut {
                config: new.config,
                description: new.description,
            };
            c.put(&path, &put, Some(&etag))?;
        }
        "get" => {
            let p: StoragePool = c.get(&pool_path(name))?;
            if let Some(v) = p.config.get(&words[1]) {
                println!("{v}");
            }
        }
        "set" => {
            let pairs = config_pairs(&words[1..])?;
            update_pool(&c, name, |p| {
                for (k, v) in pairs {
                    p.config.insert(k, v);
                }
            })?;
        }
        _ => {
            // unset: lxc sets the key to "" (which the server drops); drop it here directly.
            let key = &words[1];
            update_pool(&c, name, |p| {
                p.config.remove(key);
            })?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /1.0/storage-pools/default` of the LXD 5.0.2 reference session.
    fn default_pool() -> StoragePool {
        let v: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/cli_unit/storage_pool_default.json"
        ))
        .unwrap();
        serde_json::from_value(v["metadata"].clone()).unwrap()
    }

    #[test]
    fn storage_list_like_lxc() {
        // The table `lxc storage list` printed for this pool (tests/cli_unit/storage_list.txt).
        let want = "\
+---------+--------+------------------------------------+-------------+---------+---------+
|  NAME   | DRIVER |               SOURCE               | DESCRIPTION | USED BY |  STATE  |
+---------+--------+------------------------------------+-------------+---------+---------+
| default | dir    | /var/lib/lxd/storage-pools/default |             | 5       | CREATED |
+---------+--------+------------------------------------+-------------+---------+---------+
";
        assert_eq!(
            render_pools(&[default_pool()], Format::Table).unwrap(),
            want
        );
        let recorded = include_str!("../../tests/cli_unit/storage_list.txt");
        assert!(recorded.contains(want), "fixture and pinned table differ");
        assert_eq!(
            render_pools(&[default_pool()], Format::Csv).unwrap(),
            "default,dir,/var/lib/lxd/storage-pools/default,,5,CREATED\n"
        );
    }

    #[test]
    fn storage_info_like_lxc() {
        let res = PoolResources {
            space: Usage {
                used: 1_320_702_444,
                total: 62_671_097_856,
            },
            inodes: Usage::default(),
        };
        let want = "\
info:
  description: \"\"
  driver: dir
  name: default
  space used: 1.23GiB
  total space: 58.37GiB
used by:
  instances:
  - cX
  - cY
  profiles:
  - default
";
        assert_eq!(render_info(&default_pool(), &res, false).unwrap(), want);
        let bytes = render_info(&default_pool(), &res, true).unwrap();
        assert!(
            bytes.contains("  space used: \"1320702444\"\n  total space: \"62671097856\"\n"),
            "{bytes}"
        );
    }

    #[test]
    fn storage_info_unused_pool_and_odd_used_by() {
        let pool = StoragePool {
            name: "p1".into(),
            driver: "btrfs".into(),
            description: "fast".into(),
            ..Default::default()
        };
        assert_eq!(
            render_info(&pool, &PoolResources::default(), false).unwrap(),
            "info:\n  description: fast\n  driver: btrfs\n  name: p1\n  space used: 0B\n  total space: 0B\nused by: {}\n"
        );
        let g = used_by_groups(&[
            "/1.0/images/abc?project=p2".into(),
            "/1.0/storage-pools/default/volumes/custom/vol1".into(),
            "/1.0/storage-pools/default/volumes/custom/vol1/snapshots/s0".into(),
            "/1.0/instances/c%201?project=x&target=m1".into(),
            "weird".into(),
            "/weird".into(),
        ]);
        assert_eq!(g["images"], vec!["abc (project \"p2\")"]);
        assert_eq!(g["volumes"], vec!["vol1"]);
        assert_eq!(g["instances"], vec!["c 1 (project \"x\", location \"m1\")"]);
        // Go splits "/weird" into ["", "weird"]: type "", name "weird".
        assert_eq!(g["unrecognized"], vec!["weird"]);
        assert_eq!(g[""], vec!["weird"]);
    }

    #[test]
    fn set_pairs_like_lxc() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_pairs(&w(&["size", "5GiB"])).unwrap(),
            vec![("size".to_string(), "5GiB".to_string())]
        );
        assert_eq!(
            config_pairs(&w(&["a=1", "b=x=y"])).unwrap(),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x=y".to_string())
            ]
        );
        match config_pairs(&w(&["a=1", "b"])) {
            Err(Fail::Error(m)) => assert_eq!(m, "Invalid key=value configuration: b"),
            _ => panic!("bad pair accepted"),
        }
    }
}
