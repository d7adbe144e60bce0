//! `config trust add|list|remove|show|edit|list-tokens|revoke-token` against
//! `/1.0/certificates`, with lxc 5.0.2's output. The dates and common names in `list` come from
//! parsing each certificate here, as lxc does.
//!
//! `config trust add [remote:] [NAME|CERT]`: with a certificate file (or `-` for stdin) that
//! certificate is trusted; without one the server makes a trust token for the client NAME (or
//! `--name`), printed the way `remote add` takes it.

use std::io::Read;

use argh::FromArgs;
use serde::Serialize;

use super::remote::Token;
use super::table::{self, Format};
use super::{client, fail, parse, split_remote, CmdResult, Fail, DASH};
use crate::api::{Certificate, CertificatePut, Operation};
use crate::client::{urlencode, Client};

const USAGE: &str = "Description:
  Manage trusted clients

Usage:
  bivy config trust [command]

Available Commands:
  add          Add new trusted client (a certificate file, or a token when none is given)
  edit         Edit trust configurations as YAML
  list         List trusted clients
  list-tokens  List all active certificate add tokens
  remove       Remove trusted client
  revoke-token Revoke certificate add token
  show         Show trust configurations
";

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Add new trusted client: bivy config trust add [<remote>:] [<name>|<cert>]
pub struct AddArgs {
    #[argh(positional)]
    /// an optional remote, then a certificate file (`-` for stdin) or a client name (token)
    words: Vec<String>,
    #[argh(option)]
    /// alternative certificate name (the client name of a token)
    name: Option<String>,
    #[argh(option, long = "type", default = "String::from(\"client\")")]
    /// type of certificate (client or metrics)
    kind: String,
    #[argh(switch)]
    /// restrict the certificate to one or more projects
    restricted: bool,
    #[argh(option)]
    /// list of projects to restrict the certificate to
    projects: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Trust command arguments.
pub struct Words {
    #[argh(positional)]
    /// arguments
    words: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (csv|json|table|yaml|compact)
    format: Option<String>,
}

pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        print!("{USAGE}");
        return Ok(0);
    };
    let rest = &args[1..];
    let cmd = format!("bivy config trust {sub}");
    match sub.as_str() {
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        "add" => add(rest),
        "list" | "ls" | "list-tokens" | "remove" | "rm" | "show" | "edit" | "revoke-token" => {
            let w: Words = parse(&[&cmd], rest)?;
            let format = Format::parse(w.format.as_deref().unwrap_or("table"))?;
            let (lo, hi) = match sub.as_str() {
                "list" | "ls" | "list-tokens" => (0, 1),
                "remove" | "rm" => (1, 2),
                _ => (1, 1),
            };
            if w.words.len() < lo || w.words.len() > hi {
                if let Err(help) = Words::from_args(&[&cmd], &["--help"]) {
                    eprint!("{}", help.output);
                }
                if w.words.is_empty() {
                    return Err(Fail::Exit(1));
                }
                return fail("Invalid number of arguments");
            }
            let (remote, name) = match w.words.first() {
                Some(first) => {
                    let (r, n) = split_remote(first)?;
                    (r, n.to_string())
                }
                None => (super::conf()?.default_remote.clone(), String::new()),
            };
            let c = super::client_of(&remote)?;
            match sub.as_str() {
                "list" | "ls" => list(&c, format),
                "list-tokens" => list_tokens(&c, format),
                "remove" | "rm" => {
                    // Both `remote: FP` (legacy) and `remote:FP`.
                    let fp = w.words.get(1).cloned().unwrap_or(name);
                    c.delete(&cert_path(&fp))?;
                    Ok(0)
                }
                "show" => {
                    let cert = get_cert(&c, &name)?;
                    super::print_yaml(&cert)?;
                    Ok(0)
                }
                "edit" => edit(&c, &name),
                _ => revoke_token(&c, &remote, &name),
            }
        }
        other => {
            eprint!("{USAGE}");
            fail(format!(
                "unknown command \"{other}\" for \"bivy config trust\""
            ))
        }
    }
}

fn cert_path(fp: &str) -> String {
    format!("/1.0/certificates/{}", urlencode(fp, false))
}

fn get_cert(c: &Client, fp: &str) -> Result<Certificate, Fail> {
    if fp.is_empty() {
        return fail("Missing certificate fingerprint");
    }
    Ok(c.get(&cert_path(fp))?)
}

/// A time in seconds since the epoch as lxc prints certificate dates: `Jan 2, 2006 at 3:04pm
/// (UTC)`.
fn cert_date(secs: i64) -> String {
    table::long_date(&crate::util::time::format(secs, 0))
}

/// `config trust list` rows: TYPE, NAME, COMMON NAME, FINGERPRINT (12), ISSUE DATE, EXPIRY DATE,
/// sorted like lxc (by every column in turn).
pub fn list_rows(certs: &[Certificate]) -> Result<Vec<Vec<String>>, Fail> {
    let mut rows = Vec::new();
    for cert in certs {
        let der = crate::tls::pem_to_der(&cert.certificate)
            .ok_or_else(|| Fail::Error("Invalid certificate".into()))?;
        let info = crate::tls::cert_info(&der).ok_or_else(|| {
            Fail::Error(format!("cannot parse the certificate {}", cert.fingerprint))
        })?;
        rows.push(vec![
            cert.kind.clone(),
            cert.name.clone(),
            info.common_name,
            cert.fingerprint.chars().take(12).collect(),
            cert_date(info.not_before),
            cert_date(info.not_after),
        ]);
    }
    crate::util::sort::sort(&mut rows);
    Ok(rows)
}

fn list(c: &Client, format: Format) -> CmdResult {
    let certs: Vec<Certificate> = c.get("/1.0/certificates?recursion=1")?;
    match format {
        Format::Json => super::print_json(&certs)?,
        Format::Yaml => super::print_yaml(&certs)?,
        _ => print!(
            "{}",
            table::render_rows(
                format,
                &[
                    "TYPE",
                    "NAME",
                    "COMMON NAME",
                    "FINGERPRINT",
                    "ISSUE DATE",
                    "EXPIRY DATE"
                ],
                &list_rows(&certs)?
            )
        ),
    }
    Ok(0)
}

/// The token operations still usable (class `token`, running) with their tokens.
fn active_tokens(c: &Client) -> Result<Vec<(Operation, Token)>, Fail> {
    let by_status: std::collections::BTreeMap<String, Vec<Operation>> =
        c.get("/1.0/operations?recursion=1")?;
    Ok(by_status
        .into_values()
        .flatten()
        .filter(|op| op.class == "token" && op.status_code == crate::api::status::RUNNING)
        .filter_map(|op| {
            let token = Token::from_operation(op.metadata.as_ref()?).ok()?;
            Some((op, token))
        })
        .collect())
}

/// One row of `list-tokens` (`-f json` prints these, with lxc's field names).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DisplayToken {
    client_name: String,
    token: String,
    expires_at: String,
}

fn list_tokens(c: &Client, format: Format) -> CmdResult {
    let shown: Vec<DisplayToken> = active_tokens(c)?
        .into_iter()
        .map(|(_, t)| DisplayToken {
            expires_at: table::date(&t.expires_at),
            token: t.encode(),
            client_name: t.client_name,
        })
        .collect();
    match format {
        Format::Json => super::print_json(&shown)?,
        Format::Yaml => super::print_yaml(&shown)?,
        _ => {
            let mut rows: Vec<Vec<String>> = shown
                .iter()
                .map(|t| vec![t.client_name.clone(), t.token.clone(), t.expires_at.clone()])
                .collect();
            crate::util::sort::sort(&mut rows);
            print!(
                "{}",
                table::render_rows(format, &["NAME", "TOKEN", "EXPIRES AT"], &rows)
            );
        }
    }
    Ok(0)
}

fn revoke_token(c: &Client, remote: &str, name: &str) -> CmdResult {
    for (op, t) in active_tokens(c)? {
        if t.client_name == name {
            c.delete(&format!("/1.0/operations/{}", urlencode(&op.id, false)))?;
            if !super::quiet() {
                println!("Certificate add token for {name} deleted");
            }
            return Ok(0);
        }
    }
    fail(format!(
        "No certificate add token for member {name} on remote: {remote}"
    ))
}

const EDIT_HEADER: &str = "### This is a YAML representation of the certificate.\n### Any line starting with a '# will be ignored.\n###\n### Note that the fingerprint is shown but cannot be changed\n\n";

fn edit(c: &Client, fp: &str) -> CmdResult {
    if fp.is_empty() {
        return fail("Missing certificate fingerprint");
    }
    if !super::is_tty(0) {
        // lxc sends what stdin holds, without an ETag.
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        let new: CertificatePut = crate::util::yaml::from_str(&text)?;
        c.put(&cert_path(fp), &new, None)?;
        return Ok(0);
    }
    let (cert, etag): (Certificate, String) = c.get_etag(&cert_path(fp))?;
    let edited: Certificate = super::config::edit_yaml(&cert, EDIT_HEADER)?;
    let new = CertificatePut {
        name: edited.name,
        kind: edited.kind,
        restricted: edited.restricted,
        projects: edited.projects,
        certificate: edited.certificate,
    };
    c.put(&cert_path(fp), &new, Some(&etag))?;
    Ok(0)
}

/// The file name without its directories (lxc names an added certificate after its file).
fn base_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.to_string())
}

fn add(args: &[String]) -> CmdResult {
    let a: AddArgs = parse(&["bivy config trust add"], args)?;
    if a.kind != "client" && a.kind != "metrics" {
        return fail(format!("Unknown certificate type \"{}\"", a.kind));
    }
    // `[remote:]` first (a word ending in a colon that names a remote), then one word.
    let mut words = a.words.as_slice();
    let c = match words.first() {
        Some(w) if w.ends_with(':') && !std::path::Path::new(w).exists() => {
            let (remote, _) = split_remote(w)?;
            words = &words[1..];
            super::client_of(&remote)?
        }
        _ => client()?,
    };
    if words.len() > 1 {
        return fail("Invalid number of arguments");
    }
    let projects: Option<Vec<String>> = a
        .projects
        .as_deref()
        .map(|p| p.split(',').map(str::to_string).collect());
    let cert_file = words
        .first()
        .filter(|w| *w == DASH || std::path::Path::new(w).exists());
    match cert_file {
        Some(file) => {
            let pem = if file == DASH {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(file).map_err(|e| {
                    Fail::Error(super::io_error("open", std::path::Path::new(file), &e))
                })?
            };
            let der = crate::tls::pem_to_der(&pem)
                .ok_or_else(|| Fail::Error(format!("no certificate found in {file}")))?;
            let name = a.name.clone().unwrap_or_else(|| {
                if file == DASH {
                    "stdin".into()
                } else {
                    base_name(file)
                }
            });
            let body = serde_json::json!({
                "name": name,
                "type": a.kind,
                "restricted": a.restricted,
                "projects": projects,
                "certificate": crate::util::base64::encode(&der),
                "password": "",
                "token": false,
            });
            c.query("POST", "/1.0/certificates", Some(&body), None)?;
            Ok(0)
        }
        None => {
            if a.kind == "metrics" {
                return fail("Cannot use metrics type certificate when using a token");
            }
            let name = match (words.first(), &a.name) {
                (_, Some(n)) => n.clone(),
                (Some(w), None) => w.clone(),
                (None, None) => ask_name()?,
            };
            let body = serde_json::json!({
                "name": name,
                "type": "client",
                "restricted": a.restricted,
                "projects": projects,
                "certificate": "",
                "password": "",
                "token": true,
            });
            let reply = c.query("POST", "/1.0/certificates", Some(&body), None)?;
            // The reply is the token operation itself (it stays running until used).
            let op: Operation = reply.metadata()?;
            let meta = op.metadata.unwrap_or_default();
            let token = Token::from_operation(&meta).map_err(|e| {
                format!("Failed converting token operation to certificate add token: {e}")
            })?;
            if !super::quiet() {
                println!("Client {name} certificate add token:");
            }
            println!("{}", token.encode());
            Ok(0)
        }
    }
}

/// lxc asks for the client name of a token on a terminal.
fn ask_name() -> Result<String, Fail> {
    use std::io::{BufRead, Write};
    if !super::is_tty(0) {
        return fail(
            "a client name is needed for the token: give it as an argument or with --name",
        );
    }
    loop {
        print!("Please provide client name: ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            return fail("no client name given");
        }
        let line = line.trim();
        if !line.is_empty() {
            return Ok(line.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_like_lxc() {
        // 2026-12-03T14:05:00Z
        assert_eq!(cert_date(1_796_306_700), "Dec 3, 2026 at 2:05pm (UTC)");
    }

    #[test]
    fn certificate_yaml_order() {
        let c = Certificate {
            name: "laptop".into(),
            kind: "client".into(),
            certificate: "PEM".into(),
            fingerprint: "ab".into(),
            ..Default::default()
        };
        assert_eq!(
            crate::util::yaml::to_string(&c).unwrap(),
            "name: laptop\ntype: client\nrestricted: false\nprojects: []\ncertificate: PEM\nfingerprint: ab\n"
        );
        let back: Certificate =
            serde_json::from_str(r#"{"name":"n","type":"client","restricted":false,"projects":null,"certificate":"","fingerprint":"f"}"#).unwrap();
        assert!(back.projects.is_empty());
    }
}
