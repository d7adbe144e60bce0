//! The `lxc`-style command line. Depends only on `client`, `api`, `tls`, `http` (through `client`) and `util`.
//!
//! # Layout
//! - this file: argv dispatch, global flags, errors, `remote:` resolution (every verb takes
//!   `[remote:]name`, resolved against `conf` to that remote's client), shared helpers.
//! - `instance`: launch/init/start/stop/restart/pause/delete/move/copy/snapshot/restore/list/info.
//! - `exec`, `file`, `config` (with `trust`), `profile`, `image`, `storage` (pools, volume
//!   list), `network`, `misc` (operation, monitor, version, query).
//! - `alias`: the `alias` verbs and alias expansion (before anything else in [`main`]);
//!   `admin`: `admin waitready|shutdown` for the local daemon, `admin_init` its `admin init`
//!   (lxd init) and `preseed` the preseed documents it applies, `admin_recover` its
//!   `admin recover` (lxd recover); `install`: the binary and the
//!   service file of the host's init system; `completion`: the command table, the shell
//!   completion scripts and `__complete` (names from the daemon); `manpage`: the manual.
//! - `conf`: the client configuration (`$BIVY_CONF`: remotes, client identity, pinned server
//!   certificates); `remote`: the `remote` verbs, including `remote add`'s trust flow.
//! - `table` and `yaml`: output the way lxc prints it.
//!
//! Argument parsing is `argh` per verb. Where lxc's syntax is beyond argh (`exec c1 -- cmd`,
//! `config set c1 k=v k2=v2`, `--flag=value`, `-` for stdin), argv is pre-split here.

pub mod admin;
pub mod admin_init;
pub mod admin_recover;
pub mod alias;
pub mod backup;
pub mod completion;
pub mod conf;
pub mod config;
mod console;
pub mod exec;
pub mod file;
pub mod image;
pub mod install;
pub mod instance;
pub mod manpage;
pub mod metadata;
pub mod misc;
pub mod network;
pub mod preseed;
pub mod profile;
pub mod remote;
pub mod storage;
pub mod table;
mod term;
pub mod trust;

use argh::FromArgs;

use crate::client::{self, Client};

/// Why a command stopped early.
#[derive(Debug)]
pub enum Fail {
    /// Print `Error: <message>` and exit 1.
    Error(String),
    /// Output was already printed; exit with this code.
    Exit(i32),
}

impl From<client::Error> for Fail {
    fn from(e: client::Error) -> Fail {
        Fail::Error(e.0)
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail::Error(e)
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail::Error(e.to_string())
    }
}

pub type CmdResult = Result<i32, Fail>;

/// Shorthand for an error result.
pub fn fail<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Error(msg.into()))
}

const USAGE: &str = "Description:
  Command line client for bivy (LXD-compatible)

Usage:
  bivy [command]

Available Commands:
  admin       Manage the daemon (init, recover, waitready, shutdown)
  alias       Manage command aliases
  completion  Print the shell completion script (bash, zsh, fish)
  config      Manage instance and server configuration options
  console     Attach to instance consoles
  copy        Copy instances within the server
  delete      Delete instances and snapshots
  exec        Execute commands in instances
  export      Export instance backups
  file        Manage files in instances
  image       Manage images
  import      Import instance backups
  info        Show instance or server information
  init        Create instances from images
  install     Install this binary and the host's service file
  launch      Create and start instances from images
  list        List instances
  manpage     Write the manual pages into a directory
  monitor     Monitor a local or remote server
  move        Move or rename instances (alias: rename)
  network     Manage and attach instances to networks
  operation   List, show and delete background operations
  pause       Pause instances
  profile     Manage profiles
  publish     Publish instances as images
  query       Send a raw query to the server
  remote      Manage the list of remote servers
  restart     Restart instances
  restore     Restore instances from snapshots
  snapshot    Create instance snapshots
  start       Start instances
  stop        Stop instances
  storage     Manage storage pools and volumes
  version     Show local and remote versions
  daemon      Run the bivy daemon

Global Flags:
      --debug         Show all debug messages
  -h, --help          Print help
  -q, --quiet         Don't show progress information
";

/// The CLI version shown by `version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `bivy list | head -1`: Rust ignores SIGPIPE, so `print!` panics on a closed stdout. Exit
/// quietly instead, as a C program killed by SIGPIPE would look to the shell (128 + 13).
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// The client configuration directory: `$BIVY_CONF`, else `~/.config/bivy`. Nothing is created
/// there until remotes exist.
pub fn conf_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("BIVY_CONF").filter(|d| !d.is_empty()) {
        return d.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    std::path::Path::new(&home).join(".config").join("bivy")
}

/// Run the CLI (after alias expansion); returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    quiet_broken_pipe();
    let args = match alias::expand_argv(args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let mut rest: Vec<String> = Vec::new();
    let mut verb: Option<String> = None;
    let mut quiet = false;
    // Global flags may come before the verb.
    for a in args.into_iter().skip(1) {
        if verb.is_none() {
            match a.as_str() {
                "--debug" | "--verbose" | "-v" | "--force-local" => continue,
                "-q" | "--quiet" => {
                    quiet = true;
                    continue;
                }
                "-h" | "--help" | "help" => {
                    print!("{USAGE}");
                    return 0;
                }
                "--version" => {
                    println!("{VERSION}");
                    return 0;
                }
                _ => {
                    verb = Some(a);
                    continue;
                }
            }
        }
        rest.push(a);
    }
    let Some(verb) = verb else {
        print!("{USAGE}");
        return 0;
    };
    // lxc takes its global flags after the verb too, up to `--` (and, for `exec`, up to the
    // instance: what follows it is the command's).
    let mut kept = Vec::with_capacity(rest.len());
    let mut done = false;
    for a in rest {
        if !done {
            match a.as_str() {
                "--" => done = true,
                "-q" | "--quiet" => {
                    quiet = true;
                    continue;
                }
                "--debug" | "--verbose" | "--force-local" => continue,
                x if verb == "exec" && !x.starts_with('-') => done = true,
                _ => {}
            }
        }
        kept.push(a);
    }
    let rest = kept;
    if quiet {
        QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    match dispatch(&verb, rest) {
        Ok(code) => code,
        Err(Fail::Exit(code)) => code,
        Err(Fail::Error(msg)) => {
            eprintln!("Error: {msg}");
            1
        }
    }
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether progress output is suppressed (`-q`).
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

fn dispatch(verb: &str, rest: Vec<String>) -> CmdResult {
    let rest = normalize(rest);
    match verb {
        "launch" => instance::launch(&rest, true),
        "init" | "create" => instance::launch(&rest, false),
        "start" => instance::state(&rest, "start"),
        "stop" => instance::state(&rest, "stop"),
        "restart" => instance::state(&rest, "restart"),
        "pause" | "freeze" => instance::state(&rest, "freeze"),
        "delete" | "rm" => instance::delete(&rest),
        "move" | "mv" | "rename" => instance::rename(&rest),
        "copy" | "cp" => instance::copy(&rest),
        "snapshot" => instance::snapshot(&rest),
        "restore" => instance::restore(&rest),
        "list" | "ls" => instance::list(&rest),
        "info" => instance::info(&rest),
        "exec" => exec::run(rest),
        "console" => console::run(&rest),
        "file" => file::run(&rest),
        "config" => config::run(&rest),
        "profile" => profile::run(&rest),
        "image" => image::run(&rest),
        "publish" => image::publish(&rest),
        "export" => backup::export(&rest),
        "import" => backup::import(&rest),
        "operation" => misc::operation(&rest),
        "monitor" => misc::monitor(&rest),
        "version" => misc::version(&rest),
        "storage" => storage::run(&rest),
        "network" => network::run(&rest),
        "query" => misc::query(&rest),
        "remote" => remote::run(&rest),
        "alias" => alias::run(&rest),
        "admin" => admin::run(&rest),
        "install" => install::run(&rest),
        "completion" => completion::run(&rest),
        "manpage" => manpage::run(&rest),
        other => {
            eprint!("{USAGE}");
            eprintln!();
            eprintln!("Error: unknown command \"{other}\" for \"bivy\"");
            Err(Fail::Exit(1))
        }
    }
}

/// `--flag=value` becomes `--flag value` (argh has no `=` form), but `--console=TYPE`; stops at
/// `--`.
pub fn normalize(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut ended = false;
    for a in args {
        if !ended && a == "--" {
            ended = true;
            out.push(a);
            continue;
        }
        // `launch --console=TYPE` stays whole: its value is optional (`--console` alone).
        if !ended && a.starts_with("--") && !a.starts_with("--console=") {
            if let Some((k, v)) = a.split_once('=') {
                out.push(k.to_string());
                out.push(v.to_string());
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// Placeholder for a lone `-` (stdin/stdout), which argh would take for a flag.
pub const DASH: &str = "\u{1}-";

/// Parse a verb's arguments with argh; `--help` prints and exits 0, errors print and exit 1.
pub fn parse<T: FromArgs>(cmd: &[&str], args: &[String]) -> Result<T, Fail> {
    let mapped: Vec<&str> = args
        .iter()
        .map(|a| if a == "-" { DASH } else { a.as_str() })
        .collect();
    match T::from_args(cmd, &mapped) {
        Ok(v) => Ok(v),
        Err(e) => match e.status {
            Ok(()) => {
                print!("{}", e.output);
                Err(Fail::Exit(0))
            }
            Err(()) => {
                // Usage text first, then the error, like lxc.
                if let Err(help) = T::from_args(cmd, &["--help"]) {
                    eprint!("{}", help.output);
                    eprintln!();
                }
                let msg = e.output.trim_end();
                let msg = msg
                    .strip_prefix("Unrecognized argument: ")
                    .map_or(msg.to_string(), |f| format!("unknown flag: {f}"));
                eprintln!("Error: {msg}");
                Err(Fail::Exit(1))
            }
        },
    }
}

/// Undo the `-` placeholder of `parse` (`set NAME key -` reads the value from stdin).
pub fn undash(words: Vec<String>) -> Vec<String> {
    words
        .into_iter()
        .map(|w| if w == DASH { "-".to_string() } else { w })
        .collect()
}

/// lxc's argument count check (`CheckArgs`): outside `min..=max` the verb's help goes to stdout,
/// then it is `Error: Invalid number of arguments` (exit 1), except when no argument was given at
/// all: then the help alone, exit 0, as lxc does.
pub fn check_args<T: FromArgs>(
    cmd: &str,
    n: usize,
    min: usize,
    max: Option<usize>,
) -> Result<(), Fail> {
    if n >= min && max.is_none_or(|m| n <= m) {
        return Ok(());
    }
    if let Err(help) = T::from_args(&[cmd], &["--help"]) {
        print!("{}", help.output);
    }
    if n == 0 {
        return Err(Fail::Exit(0));
    }
    fail("Invalid number of arguments")
}

static CONF: std::sync::OnceLock<Result<conf::Config, String>> = std::sync::OnceLock::new();

/// The client configuration (`$BIVY_CONF/config.yml`), read once per run.
pub fn conf() -> Result<&'static conf::Config, Fail> {
    CONF.get_or_init(|| conf::Config::load(&conf_dir()))
        .as_ref()
        .map_err(|e| Fail::Error(e.clone()))
}

/// `[remote:]rest` split against the configured remotes: (remote, rest). No prefix means the
/// default remote; an unknown one is lxc's error.
pub fn split_remote(s: &str) -> Result<(String, &str), Fail> {
    Ok(conf()?.split(s)?)
}

/// The clients made in this run, by remote (identity and pinned certificate read once).
static CLIENTS: std::sync::Mutex<std::collections::BTreeMap<String, Client>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The client of a remote's LXD API.
pub fn client_of(remote: &str) -> Result<Client, Fail> {
    let mut cache = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(remote) {
        return Ok(c.clone());
    }
    let c = conf()?.instance_client(remote)?;
    cache.insert(remote.to_string(), c.clone());
    Ok(c)
}

/// `[remote:]name`: the client of the remote it names and the rest.
pub fn target(s: &str) -> Result<(Client, &str), Fail> {
    let (remote, rest) = split_remote(s)?;
    Ok((client_of(&remote)?, rest))
}

/// The first positional argument may name a remote (`list foo:`, `list foo:web`): its client,
/// and the filters with the prefix removed (an empty one dropped).
pub fn target_filters(filters: &[String]) -> Result<(Client, Vec<String>), Fail> {
    let Some((first, rest)) = filters.split_first() else {
        return Ok((client()?, Vec::new()));
    };
    let (c, first) = target(first)?;
    let mut out: Vec<String> = Vec::with_capacity(filters.len());
    if !first.is_empty() {
        out.push(first.to_string());
    }
    out.extend(rest.iter().cloned());
    Ok((c, out))
}

/// The client of the default remote (`local` unless switched).
pub fn client() -> Result<Client, Fail> {
    let remote = conf()?.default_remote.clone();
    client_of(&remote)
}

/// `/1.0/instances/<name>` with the name escaped.
pub fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{}", client::urlencode(name, false))
}

/// Parse `key=value` pairs.
pub fn key_values(args: &[String]) -> Result<Vec<(String, String)>, Fail> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => fail(format!("Bad key=value pair: {a}")),
        })
        .collect()
}

/// An I/O error worded like Go's (`open /x: no such file or directory`), as lxc prints them.
pub fn io_error(op: &str, path: &std::path::Path, e: &std::io::Error) -> String {
    let msg = e.to_string();
    let msg = msg.split(" (os error").next().unwrap_or(&msg);
    let mut chars = msg.chars();
    let msg = match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    };
    format!("{op} {}: {msg}", path.display())
}

/// Go's `units.GetByteSizeString(n, 2)`: decimal units (`90B`, `39.80MB`).
pub fn size_decimal(n: u64) -> String {
    if n < 1000 {
        return format!("{n}B");
    }
    let mut v = n as f64;
    for unit in ["kB", "MB", "GB", "TB", "PB", "EB"] {
        v /= 1000.0;
        if v < 1000.0 {
            return format!("{v:.2}{unit}");
        }
    }
    format!("{v:.2}EB")
}

/// A progress callback for uploads, printing `LABEL: 42% (39.80MB/s)` on a terminal (not with
/// `-q`), and clearing the line when done, like lxc.
pub fn progress(label: String, total: u64) -> Box<dyn FnMut(u64) + Send> {
    use std::io::Write;
    let show = !quiet() && is_tty(1);
    let start = std::time::Instant::now();
    let mut last = u64::MAX;
    let mut width = 0;
    Box::new(move |done| {
        if !show || total == 0 {
            return;
        }
        let pct = done.min(total) * 100 / total;
        if pct == last {
            return;
        }
        last = pct;
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "{label}: {pct}% ({}/s)",
            size_decimal((done as f64 / secs) as u64)
        );
        width = width.max(line.len());
        print!("\r{line:<width$}");
        if done >= total {
            print!("\r{}\r", " ".repeat(width));
        }
        let _ = std::io::stdout().flush();
    })
}

/// Wait for an operation, showing its progress (`download_progress`, `fs_progress`) as `LABEL: …` on a terminal (not with
/// `-q`), the way lxc's progress renderer does; the line is cleared at the end. A failed
/// operation is an error, as with [`Client::wait_operation`].
pub fn wait_progress(c: &Client, id: &str, label: &str) -> client::Result<crate::api::Operation> {
    use std::io::Write;
    if quiet() || !is_tty(1) {
        return c.wait_operation(id);
    }
    let path = format!(
        "/1.0/operations/{}/wait?timeout=1",
        client::urlencode(id, false)
    );
    let mut width = 0;
    let op = loop {
        let op: crate::api::Operation = c.get(&path)?;
        if op.status_code >= 200 {
            break op;
        }
        // Any `*_progress` key, as lxc's renderer takes (`download_progress`, `fs_progress`).
        let progress = op
            .metadata
            .as_ref()
            .and_then(|m| m.as_object())
            .and_then(|m| {
                m.iter()
                    .find(|(k, v)| k.ends_with("_progress") && v.is_string())
            })
            .and_then(|(_, p)| p.as_str());
        if let Some(p) = progress {
            let line = format!("{label}: {p}");
            width = width.max(line.chars().count());
            print!("\r{line:<width$}");
            let _ = std::io::stdout().flush();
        }
    };
    if width > 0 {
        print!("\r{}\r", " ".repeat(width));
        let _ = std::io::stdout().flush();
    }
    if op.status_code != crate::api::status::SUCCESS {
        return client::err(if op.err.is_empty() {
            format!("operation {}", op.status.to_lowercase())
        } else {
            op.err
        });
    }
    Ok(op)
}

/// Whether a file descriptor is a terminal.
pub fn is_tty(fd: i32) -> bool {
    use std::io::IsTerminal;
    match fd {
        0 => std::io::stdin().is_terminal(),
        1 => std::io::stdout().is_terminal(),
        _ => std::io::stderr().is_terminal(),
    }
}

/// Deserialize `null` as the type's default (LXD sends `null` for empty lists and maps).
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Print JSON (compact, as `lxc ... --format json`).
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<(), Fail> {
    println!(
        "{}",
        serde_json::to_string(v).map_err(|e| Fail::Error(e.to_string()))?
    );
    Ok(())
}

/// Print YAML the way lxc does.
pub fn print_yaml<T: serde::Serialize + ?Sized>(v: &T) -> Result<(), Fail> {
    print!("{}", crate::util::yaml::to_string(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_io_errors() {
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = std::fs::File::open("/nonexistent-bivy").err().unwrap_or(e);
        assert_eq!(
            io_error("open", std::path::Path::new("/nonexistent-bivy"), &e),
            "open /nonexistent-bivy: no such file or directory"
        );
    }

    #[test]
    fn decimal_sizes() {
        assert_eq!(size_decimal(90), "90B");
        assert_eq!(size_decimal(39_800_000), "39.80MB");
    }

    #[test]
    fn normalize_equals_flags() {
        let v = normalize(vec![
            "--format=json".into(),
            "x".into(),
            "--".into(),
            "--a=b".into(),
        ]);
        assert_eq!(v, vec!["--format", "json", "x", "--", "--a=b"]);
    }
}
