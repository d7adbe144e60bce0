//! `config metadata show|edit` and `config template list|show|create|edit|delete`: an
//! instance's image metadata (`metadata.yaml`) and its template files (api §1.3,
//! `/1.0/instances/NAME/metadata[/templates]`), as lxc 5.0.2's `config_metadata.go` and
//! `config_template.go`.

use std::io::{self, Read, Write};

use super::config::{edit_bytes, edit_yaml};
use super::table::{self, Format};
use super::{fail, instance_path, is_tty, parse, target, CmdResult, Fail};
use crate::api::ImageMetadata;
use crate::client::{parse_envelope, urlencode, Client};
use crate::http::Body;

const METADATA_USAGE: &str = "Usage:\n  bivy config metadata [command]\n\nAvailable Commands:\n  edit        Edit instance metadata files\n  show        Show instance metadata files\n";

const TEMPLATE_USAGE: &str = "Usage:\n  bivy config template [command]\n\nAvailable Commands:\n  create      Create new instance file templates\n  delete      Delete instance file templates\n  edit        Edit instance file templates\n  list        List instance file templates\n  show        Show content of instance file templates\n";

const METADATA_HEADER: &str = "### This is a YAML representation of the instance metadata.\n### Any line starting with a '# will be ignored.\n###\n### A sample configuration looks like:\n###\n### architecture: x86_64\n### creation_date: 1477146654\n### expiry_date: 0\n### properties:\n###   architecture: x86_64\n###   description: BusyBox x86_64\n###   name: busybox-x86_64\n###   os: BusyBox\n### templates:\n###   /template:\n###     when:\n###     - \"\"\n###     create_only: false\n###     template: template.tpl\n###     properties: {}\n\n";

#[derive(argh::FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Instance metadata and template commands.
struct Words {
    #[argh(positional)]
    /// arguments
    words: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (csv, json, table, yaml, compact) of template list
    format: Option<String>,
}

/// `[remote:]instance`: its client and its API path; an empty name is refused as lxc does.
fn instance(word: &str) -> Result<(Client, String), Fail> {
    let (c, name) = target(word)?;
    if name.is_empty() {
        return fail("Missing instance name");
    }
    Ok((c, instance_path(name)))
}

/// The subcommand and its parsed words; `None` once the usage was printed for `--help`. No
/// subcommand is the usage on stderr and exit 1.
fn sub_words<'a>(
    args: &'a [String],
    usage: &str,
    noun: &str,
) -> Result<Option<(&'a String, Words)>, Fail> {
    let Some(sub) = args.first() else {
        eprint!("{usage}");
        return Err(Fail::Exit(1));
    };
    if matches!(sub.as_str(), "-h" | "--help") {
        print!("{usage}");
        return Ok(None);
    }
    let w: Words = parse(&[&format!("bivy config {noun} {sub}")], &args[1..])?;
    Ok(Some((sub, w)))
}

pub fn metadata(args: &[String]) -> CmdResult {
    let Some((sub, w)) = sub_words(args, METADATA_USAGE, "metadata")? else {
        return Ok(0);
    };
    match (sub.as_str(), w.words.as_slice()) {
        ("show", [name]) => {
            let (c, path) = instance(name)?;
            let meta: ImageMetadata = c.get(&format!("{path}/metadata"))?;
            super::print_yaml(&meta)?;
        }
        ("edit", [name]) => {
            let (c, path) = instance(name)?;
            let path = format!("{path}/metadata");
            // From standard input when it is not a terminal (no ETag, as lxc), else the editor
            // on the current metadata, sent back with the ETag it was read with.
            let (new, etag) = if is_tty(0) {
                let (cur, etag): (ImageMetadata, String) = c.get_etag(&path)?;
                (edit_yaml(&cur, METADATA_HEADER)?, Some(etag))
            } else {
                (edit_yaml(&ImageMetadata::default(), "")?, None)
            };
            c.put(&path, &new, etag.as_deref())?;
        }
        ("show" | "edit", _) => return fail("Missing instance name"),
        (other, _) => {
            eprint!("{METADATA_USAGE}");
            return fail(format!(
                "unknown command \"{other}\" for \"bivy config metadata\""
            ));
        }
    }
    Ok(0)
}

fn template_path(path: &str, file: &str) -> String {
    format!("{path}/metadata/templates?path={}", urlencode(file, false))
}

/// A template file's content (`GET ...?path=NAME` answers with the bytes, or an error envelope).
fn template_get(c: &Client, path: &str, file: &str) -> Result<Vec<u8>, Fail> {
    let resp = c.raw("GET", &template_path(path, file), &[], Body::Empty)?;
    if resp.status >= 300 {
        parse_envelope(resp.status, &resp.body)?;
        return fail(format!("HTTP error {}", resp.status));
    }
    Ok(resp.body)
}

/// Store a template file (lxc's `CreateInstanceTemplateFile`: a `POST` of the raw bytes).
fn template_put(c: &Client, path: &str, file: &str, data: Vec<u8>) -> Result<(), Fail> {
    let headers = [(
        "Content-Type".to_string(),
        "application/octet-stream".to_string(),
    )];
    let resp = c.raw(
        "POST",
        &template_path(path, file),
        &headers,
        Body::Bytes(data),
    )?;
    parse_envelope(resp.status, &resp.body)?;
    Ok(())
}

pub fn template(args: &[String]) -> CmdResult {
    let Some((sub, w)) = sub_words(args, TEMPLATE_USAGE, "template")? else {
        return Ok(0);
    };
    match (sub.as_str(), w.words.as_slice()) {
        ("list" | "ls", [name]) => {
            let (c, path) = instance(name)?;
            let names: Vec<String> = c.get(&format!("{path}/metadata/templates"))?;
            let format = Format::parse(w.format.as_deref().unwrap_or("table"))?;
            match format {
                Format::Json => super::print_json(&names)?,
                Format::Yaml => super::print_yaml(&names)?,
                _ => {
                    let rows: Vec<Vec<String>> = names.into_iter().map(|n| vec![n]).collect();
                    print!("{}", table::render_rows(format, &["FILENAME"], &rows));
                }
            }
        }
        ("show", [name, file]) => {
            let (c, path) = instance(name)?;
            io::stdout().write_all(&template_get(&c, &path, file)?)?;
        }
        ("create", [name, file]) => {
            let (c, path) = instance(name)?;
            template_put(&c, &path, file, Vec::new())?;
        }
        ("edit", [name, file]) => {
            let (c, path) = instance(name)?;
            if !is_tty(0) {
                let mut data = Vec::new();
                io::stdin().read_to_end(&mut data)?;
                template_put(&c, &path, file, data)?;
            } else {
                let cur = template_get(&c, &path, file)?;
                let new = edit_bytes(&cur, "tpl")?;
                template_put(&c, &path, file, new)?;
            }
        }
        ("delete" | "rm", [name, file]) => {
            let (c, path) = instance(name)?;
            let resp = c.raw("DELETE", &template_path(&path, file), &[], Body::Empty)?;
            parse_envelope(resp.status, &resp.body)?;
        }
        ("list" | "ls" | "show" | "create" | "edit" | "delete" | "rm", _) => {
            eprint!("{TEMPLATE_USAGE}");
            return fail(format!("invalid arguments for \"config template {sub}\""));
        }
        (other, _) => {
            eprint!("{TEMPLATE_USAGE}");
            return fail(format!(
                "unknown command \"{other}\" for \"bivy config template\""
            ));
        }
    }
    Ok(0)
}
