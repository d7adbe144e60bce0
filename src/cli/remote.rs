//! `remote add|list|remove|rename|set-url|switch|get-default|set-default`, with lxc 5.0.2's
//! output and errors, and the trust tokens `config trust add` prints and `remote add` takes.
//!
//! `remote add NAME ADDR` (lxc's flow): connect over TLS without a pin and show the server
//! certificate's fingerprint for confirmation (on a terminal; `--accept-certificate` or a
//! matching `--fingerprint` skip it), pin it in `servercerts/NAME.crt`, `GET /1.0`, and when the
//! server does not trust us yet, add our client certificate with the trust password
//! (`POST /1.0/certificates`), then check that `GET /1.0` says trusted. `remote add NAME TOKEN`
//! does the same without questions: the token names the server's addresses and certificate
//! fingerprint, and the token string goes in `password` (as lxc 5.0 sends it). A failed add
//! leaves neither the remote nor its pinned certificate behind.

use std::io::{self, BufRead, Write};

use argh::FromArgs;
use serde::Serialize;

use super::conf::{Config, Remote};
use super::image::ServerInfo;
use super::table::{self, Format};
use super::{conf_dir, fail, is_tty, parse, CmdResult, Fail};
use crate::client::addr::{self, Addr};
use crate::client::Client;
use crate::util::revert::Revert;

const USAGE: &str = "Description:
  Manage the list of remote servers

Usage:
  bivy remote [command]

Available Commands:
  add         Add new remote servers
  get-default Show the default remote
  list        List the available remotes
  remove      Remove remotes
  rename      Rename remotes
  set-url     Set the URL for the remote
  switch      Switch the default remote
";

pub use crate::api::{CertificateAddToken as Token, NO_EXPIRY};

impl Token {
    /// The token of a token operation's metadata (`secret`, `fingerprint`, `addresses`,
    /// `request.name`, `expiresAt`), as LXD's `Operation.ToCertificateAddToken`.
    pub fn from_operation(meta: &serde_json::Value) -> Result<Token, String> {
        let text = |v: Option<&serde_json::Value>, what: &str| {
            v.and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("Failed to get {what}"))
        };
        let client_name = text(
            meta.get("request").and_then(|r| r.get("name")),
            "client name",
        )?;
        let secret = text(meta.get("secret"), "operation secret")?;
        let fingerprint = text(meta.get("fingerprint"), "operation fingerprint")?;
        let addresses = meta
            .get("addresses")
            .and_then(|a| a.as_array())
            .ok_or("Failed to get operation addresses")?
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .ok_or("Operation address is not a string")
            })
            .collect::<Result<Vec<_>, _>>()?;
        let expires_at = meta
            .get("expiresAt")
            .and_then(|e| e.as_str())
            .unwrap_or(NO_EXPIRY)
            .to_string();
        Ok(Token {
            client_name,
            fingerprint,
            addresses,
            secret,
            expires_at,
        })
    }
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Add new remote servers: bivy remote add [<remote>] <IP|FQDN|URL|token>
pub struct AddArgs {
    #[argh(positional)]
    /// the remote's name, then its address or a trust token
    words: Vec<String>,
    #[argh(switch, long = "accept-certificate")]
    /// accept certificate
    accept_certificate: bool,
    #[argh(option)]
    /// remote admin password (or token)
    password: Option<String>,
    #[argh(switch)]
    /// public image server
    public: bool,
    #[argh(option)]
    /// server protocol (lxd or simplestreams)
    protocol: Option<String>,
    #[argh(option, long = "auth-type")]
    /// server authentication type (tls)
    auth_type: Option<String>,
    #[argh(option)]
    /// the SHA-256 fingerprint the server certificate must have (instead of the prompt)
    fingerprint: Option<String>,
    #[argh(option)]
    /// project to use for the remote (only "default")
    project: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// List the available remotes.
pub struct ListArgs {
    #[argh(positional)]
    /// no arguments
    words: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (csv|json|table|yaml|compact)
    format: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Remote command arguments.
pub struct Words {
    #[argh(positional)]
    /// arguments
    words: Vec<String>,
}

pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        print!("{USAGE}");
        return Ok(0);
    };
    let rest = &args[1..];
    let cmd = format!("bivy remote {sub}");
    match sub.as_str() {
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        "add" => add(rest),
        "list" | "ls" => list(rest),
        other => {
            let (lo, hi, usage) = match other {
                "get-default" => (0, 0, "get-default\n\nShow the default remote"),
                "remove" | "rm" => (1, 1, "remove <remote>\n\nRemove remotes"),
                "switch" | "set-default" => (1, 1, "switch <remote>\n\nSwitch the default remote"),
                "rename" | "mv" => (2, 2, "rename <remote> <new-name>\n\nRename remotes"),
                "set-url" => (2, 2, "set-url <remote> <URL>\n\nSet the URL for the remote"),
                _ => {
                    eprint!("{USAGE}");
                    return fail(format!("unknown command \"{other}\" for \"bivy remote\""));
                }
            };
            let usage = format!("Usage:\n  bivy remote {usage}\n");
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                print!("{usage}");
                return Ok(0);
            }
            let w: Words = parse(&[&cmd], rest)?;
            let n = w.words.len();
            if n < lo || n > hi {
                eprint!("{usage}");
                if n == 0 {
                    return Err(Fail::Exit(1));
                }
                return fail("Invalid number of arguments");
            }
            let mut conf = Config::load(&conf_dir())?;
            match (other, w.words.as_slice()) {
                ("get-default", []) => {
                    println!("{}", conf.default_remote);
                    return Ok(0);
                }
                ("remove" | "rm", [name]) => remove(&mut conf, name)?,
                ("switch" | "set-default", [name]) => {
                    conf.remote(name).map_err(|_| doesnt_exist(name))?;
                    conf.default_remote = name.clone();
                }
                ("rename" | "mv", [old, new]) => rename(&mut conf, old, new)?,
                ("set-url", [name, url]) => set_url(&mut conf, name, url)?,
                _ => unreachable!("argument counts checked above"),
            }
            conf.save()?;
            Ok(0)
        }
    }
}

fn doesnt_exist(name: &str) -> String {
    format!("Remote {name} doesn't exist")
}

/// A remote that may be changed: it exists and is not static.
fn changeable<'a>(conf: &'a Config, name: &str) -> Result<&'a Remote, String> {
    let r = conf.remote(name).map_err(|_| doesnt_exist(name))?;
    if r.is_static {
        return Err(format!("Remote {name} is static and cannot be modified"));
    }
    Ok(r)
}

fn remove(conf: &mut Config, name: &str) -> Result<(), String> {
    changeable(conf, name)?;
    if conf.default_remote == name {
        return Err("Can't remove the default remote".into());
    }
    conf.remotes.remove(name);
    let _ = std::fs::remove_file(conf.server_cert_path(name));
    Ok(())
}

fn rename(conf: &mut Config, old: &str, new: &str) -> Result<(), String> {
    let r = changeable(conf, old)?.clone();
    if conf.remotes.contains_key(new) {
        return Err(format!("Remote {new} already exists"));
    }
    if new.contains(':') {
        return Err("Remote names may not contain colons".into());
    }
    let (from, to) = (conf.server_cert_path(old), conf.server_cert_path(new));
    if from.exists() {
        std::fs::rename(&from, &to).map_err(|e| super::io_error("rename", &from, &e))?;
    }
    conf.remotes.remove(old);
    conf.remotes.insert(new.to_string(), r);
    if conf.default_remote == old {
        conf.default_remote = new.to_string();
    }
    Ok(())
}

fn set_url(conf: &mut Config, name: &str, url: &str) -> Result<(), String> {
    let r = changeable(conf, name)?;
    // lxc stores the URL as typed; an LXD remote's is normalised as `remote add` does, so that
    // `1.2.3.4` means https://1.2.3.4:8443 here too.
    let addr = if r.is_simplestreams() {
        url.to_string()
    } else {
        addr::normalize(url)?
    };
    if let Some(r) = conf.remotes.get_mut(name) {
        r.addr = addr;
    }
    Ok(())
}

/// A remote as `remote list -f json` prints lxc's config (Go field names: the struct has only
/// YAML tags).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RemoteJson<'a> {
    addr: &'a str,
    auth_type: &'a str,
    domain: &'a str,
    project: &'a str,
    protocol: &'a str,
    public: bool,
    global: bool,
    #[serde(rename = "Static")]
    is_static: bool,
}

/// `remote list`'s table rows, lxc's way: sorted by name, the default marked `(current)`, the
/// protocol and auth type filled in when unset.
pub fn list_rows(conf: &Config) -> Vec<Vec<String>> {
    let yes_no = |b: bool| if b { "YES" } else { "NO" }.to_string();
    let mut rows: Vec<Vec<String>> = conf
        .remotes
        .iter()
        .map(|(name, r)| {
            let auth = if !r.auth_type.is_empty() {
                r.auth_type.clone()
            } else if r.is_unix() {
                "file access".into()
            } else if r.is_simplestreams() {
                "none".into()
            } else {
                "tls".into()
            };
            let shown = if *name == conf.default_remote {
                format!("{name} (current)")
            } else {
                name.clone()
            };
            // `local` is the daemon's socket: show where it is.
            let url = if name == "local" && r.addr == super::conf::LOCAL_ADDR {
                format!("unix://{}", crate::client::socket_path().display())
            } else {
                r.addr.clone()
            };
            vec![
                shown,
                url,
                r.protocol().to_string(),
                auth,
                yes_no(r.public),
                yes_no(r.is_static),
                "NO".into(),
            ]
        })
        .collect();
    crate::util::sort::sort(&mut rows);
    rows
}

fn list(args: &[String]) -> CmdResult {
    let a: ListArgs = parse(&["bivy remote list"], args)?;
    if !a.words.is_empty() {
        return fail("Invalid number of arguments");
    }
    let format = Format::parse(a.format.as_deref().unwrap_or("table"))?;
    let conf = Config::load(&conf_dir())?;
    match format {
        Format::Json => {
            let raw = crate::util::sort::map(conf.remotes.iter().map(|(n, r)| {
                let j = RemoteJson {
                    addr: &r.addr,
                    auth_type: &r.auth_type,
                    domain: &r.domain,
                    project: &r.project,
                    protocol: &r.protocol,
                    public: r.public,
                    global: false,
                    is_static: r.is_static,
                };
                (n.as_str(), j)
            }));
            super::print_json(&raw)?;
        }
        Format::Yaml => super::print_yaml(&conf.remotes)?,
        _ => print!(
            "{}",
            table::render_rows(
                format,
                &[
                    "NAME",
                    "URL",
                    "PROTOCOL",
                    "AUTH TYPE",
                    "PUBLIC",
                    "STATIC",
                    "GLOBAL"
                ],
                &list_rows(&conf)
            )
        ),
    }
    Ok(0)
}

/// A fingerprint as typed: lowercase hex, colons and spaces dropped.
fn clean_fingerprint(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_lowercase()
}

/// Read a line from stdin (its end removed).
fn read_line() -> Result<String, String> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Whether the server certificate with fingerprint `fp` may be pinned: `--fingerprint` must
/// match it, `--accept-certificate` takes it, else the user confirms it on a terminal (lxc's
/// prompt). Without a terminal nobody can: that is an error naming the fingerprint.
fn confirm_certificate(a: &AddArgs, fp: &str, addr: &str) -> Result<(), String> {
    if let Some(want) = &a.fingerprint {
        if clean_fingerprint(want) != fp {
            return Err(format!(
                "Certificate fingerprint mismatch between --fingerprint and server \"{addr}\": the server presented {fp}"
            ));
        }
        return Ok(());
    }
    if a.accept_certificate {
        return Ok(());
    }
    if !is_tty(0) {
        return Err(format!(
            "the certificate of {addr} (fingerprint {fp}) needs confirming: there is no terminal to ask on; pass --fingerprint {fp} after checking it on the server (`bivy info` there shows certificate_fingerprint), or --accept-certificate"
        ));
    }
    println!("Certificate fingerprint: {fp}");
    print!("ok (y/n/[fingerprint])? ");
    let _ = io::stdout().flush();
    let line = read_line()?;
    if line != fp {
        let first = line.chars().next().map(|c| c.to_ascii_lowercase());
        match first {
            None | Some('n') => return Err("Server certificate NACKed by user".into()),
            Some('y') => {}
            Some(_) => return Err("Please type 'y', 'n' or the fingerprint:".into()),
        }
    }
    Ok(())
}

/// The trust password (or token): `--password`, else asked for on a terminal without echo, else
/// read as a line from stdin (as lxc does when stdin is not a terminal).
fn password(a: &AddArgs, name: &str) -> Result<String, String> {
    if let Some(p) = &a.password {
        return Ok(p.clone());
    }
    if is_tty(0) {
        print!("Admin password (or token) for {name}: ");
        let _ = io::stdout().flush();
        let p = super::term::read_password().map_err(|e| e.to_string())?;
        println!();
        return Ok(p);
    }
    let p = read_line()?;
    if p.is_empty() {
        return Err(format!(
            "no password or token for {name}: pass --password or give it on stdin"
        ));
    }
    Ok(p)
}

/// Make the client certificate when there is none yet (lxc's message first).
fn ensure_identity(conf: &Config) -> Result<(), String> {
    if !conf.has_client_certificate() {
        eprintln!("Generating a client certificate. This may take a minute...");
    }
    conf.identity().map(drop)
}

/// `POST /1.0/certificates` adding our client certificate (the one the connection presents)
/// with a trust password or token in `password`, the fields lxc 5.0 sends.
fn add_certificate(c: &Client, password: &str) -> crate::client::Result<()> {
    let body = serde_json::json!({
        "name": "",
        "type": "client",
        "restricted": false,
        "projects": null,
        "certificate": "",
        "password": password,
        "token": false,
    });
    c.query("POST", "/1.0/certificates", Some(&body), None)?;
    Ok(())
}

fn add(args: &[String]) -> CmdResult {
    let a: AddArgs = parse(&["bivy remote add"], args)?;
    let (name, addr) = match a.words.as_slice() {
        [n] => (n, n),
        [n, addr] => (n, addr),
        _ => {
            if let Err(help) = AddArgs::from_args(&["bivy remote add"], &["--help"]) {
                eprint!("{}", help.output);
            }
            if a.words.is_empty() {
                return Err(Fail::Exit(1));
            }
            return fail("Invalid number of arguments");
        }
    };
    if name.contains(':') {
        return fail("Remote names may not contain colons");
    }
    let mut conf = Config::load(&conf_dir())?;
    if let Some(r) = conf.remotes.get(name.as_str()) {
        return fail(format!("Remote {name} exists as <{}>", r.addr));
    }
    if let Some(p) = a.project.as_deref().filter(|p| *p != "default") {
        return fail(format!("not supported yet: projects (\"{p}\")"));
    }
    match a.auth_type.as_deref() {
        None | Some("tls") => {}
        Some("candid") => return fail("not supported yet: candid authentication"),
        Some(other) => return fail(format!("Invalid authentication type: {other}")),
    }
    let protocol = a.protocol.clone().unwrap_or_else(|| "lxd".into());
    if let Ok(token) = Token::decode(addr) {
        return add_token(&mut conf, name, addr, &token);
    }
    if protocol == "simplestreams" {
        if !addr.starts_with("https://") {
            return fail("Only https URLs are supported for simplestreams");
        }
        conf.remotes.insert(
            name.clone(),
            Remote {
                addr: addr.clone(),
                public: true,
                protocol,
                ..Remote::default()
            },
        );
        conf.save()?;
        return Ok(0);
    } else if protocol != "lxd" {
        return fail(format!("Invalid protocol: {protocol}"));
    }
    let addr = addr::normalize(addr)?;
    match addr::parse(&addr)? {
        Addr::Unix(_) => {
            let remote = Remote {
                addr,
                auth_type: "tls".into(),
                protocol,
                ..Remote::default()
            };
            // Checked like lxc: the socket must answer.
            conf.lxd_client(name, &remote)?.get::<ServerInfo>("/1.0")?;
            conf.remotes.insert(name.clone(), remote);
            conf.save()?;
            Ok(0)
        }
        Addr::Https { host, port } => add_https(&mut conf, &a, name, &addr, &host, port),
    }
}

fn add_https(
    conf: &mut Config,
    a: &AddArgs,
    name: &str,
    addr: &str,
    host: &str,
    port: u16,
) -> CmdResult {
    if !a.public {
        ensure_identity(conf)?;
    }
    let der = crate::client::peer_certificate(host, port).map_err(|e| {
        format!(
            "cannot connect to {addr}: {}",
            crate::client::os_message(&e)
        )
    })?;
    let fp = crate::tls::fingerprint(&der);
    confirm_certificate(a, &fp, addr)?;
    let mut revert = Revert::new();
    conf.save_server_cert(name, &der)?;
    let pinned = conf.server_cert_path(name);
    revert.add(move || {
        let _ = std::fs::remove_file(pinned);
    });
    let public = Remote {
        addr: addr.to_string(),
        public: true,
        ..Remote::default()
    };
    if a.public {
        // Checked: a public server answers `GET /1.0` without trust.
        conf.lxd_client(name, &public)?.get::<ServerInfo>("/1.0")?;
        conf.remotes.insert(name.to_string(), public);
        conf.save()?;
        revert.commit();
        return Ok(0);
    }
    let remote = Remote {
        addr: addr.to_string(),
        auth_type: "tls".into(),
        protocol: "lxd".into(),
        ..Remote::default()
    };
    let c = conf.lxd_client(name, &remote)?;
    let srv: ServerInfo = c.get("/1.0")?;
    if !srv.public && !srv.auth_methods.is_empty() && !srv.auth_methods.iter().any(|m| m == "tls") {
        return fail("Authentication type 'tls' not supported by server");
    }
    if srv.public {
        conf.remotes.insert(name.to_string(), public);
        conf.save()?;
        revert.commit();
        return Ok(0);
    }
    if srv.auth != "trusted" {
        let pw = password(a, name)?;
        add_certificate(&c, &pw)?;
        let srv: ServerInfo = c.get("/1.0")?;
        if srv.auth != "trusted" {
            return fail("Server doesn't trust us after authentication");
        }
        println!("Client certificate now trusted by server: {name}");
    }
    conf.remotes.insert(name.to_string(), remote);
    conf.save()?;
    revert.commit();
    Ok(0)
}

/// Why adding through one of a token's addresses failed.
enum TokenFail {
    /// The address could not be reached: try the next one.
    Unavailable(String),
    /// Anything else: stop.
    Other(String),
}

/// `remote add NAME TOKEN` (lxc's `RunToken`): each address of the token in turn until one is
/// reachable, then on the terminal an address the user types.
fn add_token(conf: &mut Config, name: &str, raw: &str, token: &Token) -> CmdResult {
    ensure_identity(conf)?;
    let mut unavailable = Vec::new();
    for a in &token.addresses {
        let url = addr::normalize(&format!("https://{a}"))?;
        match add_from_token(conf, name, &url, raw, &token.fingerprint) {
            Ok(()) => return Ok(0),
            Err(TokenFail::Unavailable(e)) => unavailable.push(format!("{url}: {e}")),
            Err(TokenFail::Other(e)) => return fail(e),
        }
    }
    println!("All server addresses are unavailable");
    if !is_tty(0) {
        return fail(format!(
            "Failed to add remote:\n - {}",
            unavailable.join("\n - ")
        ));
    }
    print!("Please provide an alternate server address (empty to abort): ");
    let _ = io::stdout().flush();
    let line = read_line()?;
    if line.is_empty() {
        return fail("Failed to add remote");
    }
    let url = addr::normalize(&line)?;
    match add_from_token(conf, name, &url, raw, &token.fingerprint) {
        Ok(()) => Ok(0),
        Err(TokenFail::Unavailable(e) | TokenFail::Other(e)) => fail(e),
    }
}

fn add_from_token(
    conf: &mut Config,
    name: &str,
    url: &str,
    token: &str,
    fingerprint: &str,
) -> Result<(), TokenFail> {
    let unavailable = |e: String| TokenFail::Unavailable(format!("Unavailable remote server: {e}"));
    let Addr::Https { host, port } = addr::parse(url).map_err(TokenFail::Other)? else {
        return Err(TokenFail::Other(format!("{url} is not an https address")));
    };
    let der = crate::client::peer_certificate(&host, port)
        .map_err(|e| unavailable(crate::client::os_message(&e)))?;
    if crate::tls::fingerprint(&der) != clean_fingerprint(fingerprint) {
        return Err(TokenFail::Other(format!(
            "Certificate fingerprint mismatch between certificate token and server \"{url}\""
        )));
    }
    let mut revert = Revert::new();
    conf.save_server_cert(name, &der)
        .map_err(TokenFail::Other)?;
    let pinned = conf.server_cert_path(name);
    revert.add(move || {
        let _ = std::fs::remove_file(pinned);
    });
    let remote = Remote {
        addr: url.to_string(),
        auth_type: "tls".into(),
        protocol: "lxd".into(),
        ..Remote::default()
    };
    let c = conf.lxd_client(name, &remote).map_err(TokenFail::Other)?;
    add_certificate(&c, token)
        .map_err(|e| TokenFail::Other(format!("Failed to create certificate: {e}")))?;
    let srv: ServerInfo = c.get("/1.0").map_err(|e| TokenFail::Other(e.0))?;
    if srv.auth != "trusted" {
        return Err(TokenFail::Other(
            "Server doesn't trust us after authentication".into(),
        ));
    }
    conf.remotes.insert(name.to_string(), remote);
    conf.save().map_err(TokenFail::Other)?;
    revert.commit();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token `lxc config trust add` printed (LXD 5.0.2), its JSON as LXD marshals it.
    const LXD_TOKEN_JSON: &str = r#"{"client_name":"c1","fingerprint":"57bb0ff4340b5bb28517e062023101adf788c37846dc8b619eb2c3cb4ef29436","addresses":["10.98.30.229:8443","[fd42::1]:8443"],"secret":"2b2284d44db32675923fe0d2020477e0e9be11801ff70c435e032b97028c35cd","expires_at":"0001-01-01T00:00:00Z"}"#;

    #[test]
    fn token_round_trip() {
        let s = crate::util::base64::encode(LXD_TOKEN_JSON.as_bytes());
        let t = Token::decode(&s).unwrap();
        assert_eq!(t.client_name, "c1");
        assert_eq!(t.addresses, ["10.98.30.229:8443", "[fd42::1]:8443"]);
        assert_eq!(t.expires_at, NO_EXPIRY);
        // Encoding gives back the same bytes LXD makes.
        assert_eq!(t.encode(), s);
        assert_eq!(Token::decode(&format!("{s}\n")).unwrap(), t);
    }

    #[test]
    fn token_checks_like_lxd() {
        let enc = |j: &str| crate::util::base64::encode(j.as_bytes());
        assert!(Token::decode("1.2.3.4").is_err());
        assert!(Token::decode("host").is_err());
        assert!(Token::decode(&enc("[]")).is_err());
        assert_eq!(
            Token::decode(&enc(
                r#"{"fingerprint":"f","addresses":["a"],"secret":"s"}"#
            )),
            Err("No client name in certificate add token".into())
        );
        assert_eq!(
            Token::decode(&enc(
                r#"{"client_name":"c","fingerprint":"f","addresses":null,"secret":"s"}"#
            )),
            Err("No server addresses in certificate add token".into())
        );
        assert_eq!(
            Token::decode(&enc(
                r#"{"client_name":"c","fingerprint":"f","addresses":["a"]}"#
            )),
            Err("No secret in certificate add token".into())
        );
        assert_eq!(
            Token::decode(&enc(
                r#"{"client_name":"c","addresses":["a"],"secret":"s"}"#
            )),
            Err("No certificate fingerprint in certificate add token".into())
        );
    }

    #[test]
    fn token_from_operation_metadata() {
        let meta = serde_json::json!({
            "secret": "s3",
            "fingerprint": "ff",
            "addresses": ["127.0.0.1:8443"],
            "request": {"name": "laptop", "type": "client", "token": true},
            "expiresAt": "2027-01-02T03:04:05.123456789Z",
        });
        let t = Token::from_operation(&meta).unwrap();
        assert_eq!(
            t,
            Token {
                client_name: "laptop".into(),
                fingerprint: "ff".into(),
                addresses: vec!["127.0.0.1:8443".into()],
                secret: "s3".into(),
                expires_at: "2027-01-02T03:04:05.123456789Z".into(),
            }
        );
        let no_expiry = serde_json::json!({"secret": "s", "fingerprint": "f", "addresses": [], "request": {"name": "n"}});
        assert_eq!(
            Token::from_operation(&no_expiry).unwrap().expires_at,
            NO_EXPIRY
        );
        assert!(Token::from_operation(&serde_json::json!({"secret": "s"})).is_err());
    }

    #[test]
    fn remote_list_like_lxc() {
        let mut conf = Config::defaults(std::path::Path::new("/x"));
        conf.remotes.insert(
            "b".into(),
            Remote {
                addr: "https://10.0.0.2:8443".into(),
                auth_type: "tls".into(),
                protocol: "lxd".into(),
                ..Remote::default()
            },
        );
        conf.default_remote = "b".into();
        let rows = list_rows(&conf);
        let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, ["b (current)", "images", "local"]);
        assert_eq!(
            rows[0][1..],
            ["https://10.0.0.2:8443", "lxd", "tls", "NO", "NO", "NO"]
        );
        assert_eq!(rows[1][2..], ["simplestreams", "none", "YES", "NO", "NO"]);
        assert_eq!(rows[2][2..], ["lxd", "file access", "NO", "YES", "NO"]);
    }

    #[test]
    fn remove_rename_and_set_url_checks() {
        let mut conf = Config::defaults(std::path::Path::new("/nonexistent-bivy-conf"));
        assert_eq!(
            remove(&mut conf, "local").unwrap_err(),
            "Remote local is static and cannot be modified"
        );
        assert_eq!(
            remove(&mut conf, "zz").unwrap_err(),
            "Remote zz doesn't exist"
        );
        assert_eq!(
            rename(&mut conf, "images", "local").unwrap_err(),
            "Remote local already exists"
        );
        rename(&mut conf, "images", "imgs").unwrap();
        assert!(conf.remotes.contains_key("imgs") && !conf.remotes.contains_key("images"));
        conf.default_remote = "imgs".into();
        assert_eq!(
            remove(&mut conf, "imgs").unwrap_err(),
            "Can't remove the default remote"
        );
        conf.remotes.insert(
            "b".into(),
            Remote {
                addr: "https://10.0.0.2:8443".into(),
                ..Remote::default()
            },
        );
        set_url(&mut conf, "b", "10.0.0.3").unwrap();
        assert_eq!(conf.remotes["b"].addr, "https://10.0.0.3:8443");
        rename(&mut conf, "imgs", "images").unwrap();
        assert_eq!(conf.default_remote, "images");
        remove(&mut conf, "b").unwrap();
        assert!(!conf.remotes.contains_key("b"));
    }

    #[test]
    fn fingerprints_as_typed() {
        assert_eq!(clean_fingerprint("AB:cd 12"), "abcd12");
    }
}
