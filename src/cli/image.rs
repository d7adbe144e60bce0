//! `image list|import|info|show|edit|delete|export|alias|copy` and `publish` (api §1.8).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use argh::FromArgs;
use serde_json::json;

use super::config::edit_yaml;
use super::table::{self, Format};
use super::{client, fail, instance_path, parse, split_remote, target, CmdResult, Fail};
use crate::api::{
    Image, ImageAliasesEntry, ImageAliasesEntryPost, ImagePut, Instance, InstanceStatePut,
    Operation,
};
use crate::client::multipart::{Multipart, Part};
use crate::client::{urlencode, Client, ProgressReader};
use crate::http::Body;

const USAGE: &str = "Usage:\n  bivy image [command]\n\nAvailable Commands:\n  alias       Manage image aliases\n  copy        Copy images between servers\n  delete      Delete images\n  edit        Edit image properties\n  export      Export and download images\n  get-property Get image properties\n  import      Import images into the image store\n  info        Show useful information about images\n  list        List images\n  refresh     Refresh images\n  set-property Set image properties\n  show        Show image properties\n  unset-property Unset image properties\n";

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// List images.
pub struct ListArgs {
    #[argh(positional)]
    /// filters: alias or fingerprint prefix, or property=value
    filters: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (table, csv, json, yaml, compact)
    format: Option<String>,
    #[argh(option, short = 'c')]
    /// columns (default "lfpdatsu")
    columns: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Import images into the image store: bivy image import FILE [ROOTFS] [key=value...]
pub struct ImportArgs {
    #[argh(positional)]
    /// image file (unified, or metadata of a split image), then optional rootfs and properties
    args: Vec<String>,
    #[argh(option)]
    /// new aliases for the image
    alias: Vec<String>,
    #[argh(switch)]
    /// make the image public
    public: bool,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Image command arguments.
pub struct Words {
    #[argh(positional)]
    /// arguments
    words: Vec<String>,
    #[argh(option)]
    /// new aliases (copy)
    alias: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (table, csv, json, yaml, compact)
    format: Option<String>,
    #[argh(option)]
    /// alias description
    description: Option<String>,
    #[argh(switch, long = "copy-aliases")]
    /// copy the source image aliases (copy)
    copy_aliases: bool,
    #[argh(switch, long = "auto-update")]
    /// keep the image up to date after initial copy (copy)
    auto_update: bool,
    #[argh(switch)]
    /// make the image public (copy)
    public: bool,
    #[argh(option)]
    /// transfer mode: pull, the only one built (copy)
    mode: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Publish instances as images: bivy publish NAME[/SNAPSHOT] [key=value...]
pub struct PublishArgs {
    #[argh(positional)]
    /// instance (or snapshot), then image properties
    args: Vec<String>,
    #[argh(option)]
    /// new alias to define at target
    alias: Vec<String>,
    #[argh(option)]
    /// compression algorithm to use (none for uncompressed)
    compression: Option<String>,
    #[argh(switch)]
    /// make the image public
    public: bool,
    #[argh(switch, short = 'f')]
    /// stop the instance if currently running
    force: bool,
    #[argh(option)]
    /// image expiry date (accepted, ignored)
    expire: Option<String>,
    #[argh(switch, long = "reuse")]
    /// if the image alias already exists, delete and create a new one
    reuse: bool,
}

/// Resolve an alias or fingerprint prefix to a full fingerprint.
fn resolve(c: &Client, name: &str) -> Result<String, Fail> {
    super::instance::resolve_image(c, name)
}

/// Where a daemon pulls an image from another server: the `source` fields lxc sends for a launch
/// from another remote's image (`CreateInstanceFromImage`) and for `image copy` (`CopyImage`).
#[derive(Debug, Default)]
pub struct PullSource {
    /// The source server's URLs, tried in order.
    pub servers: Vec<String>,
    pub protocol: String,
    /// The source server's certificate (PEM) the daemon pins.
    pub certificate: String,
    /// The alias to pull (a public image named by alias), else empty and `fingerprint` set.
    pub alias: String,
    pub fingerprint: String,
    /// The one-time download secret of a private image.
    pub secret: String,
    /// The image as the source describes it (none for simplestreams, which is not asked).
    pub image: Option<Image>,
}

/// What `GET /1.0` tells about a server, read leniently (an untrusted client gets no
/// environment, LXD sends `null` for empty lists).
#[derive(serde::Deserialize, Default, Debug)]
pub struct ServerInfo {
    #[serde(default)]
    pub auth: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default, deserialize_with = "super::null_default")]
    pub auth_methods: Vec<String>,
    #[serde(default, deserialize_with = "super::null_default")]
    pub environment: ServerInfoEnv,
}

/// The part of `environment` a client uses.
#[derive(serde::Deserialize, Default, Debug)]
pub struct ServerInfoEnv {
    #[serde(default, deserialize_with = "super::null_default")]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "super::null_default")]
    pub certificate: String,
}

/// How another server reaches `remote` (an LXD-protocol remote): lxc's `GetConnectionInfo`, the
/// remote's own URL (over HTTPS) then the addresses the server says it listens on; and the
/// certificate to pin (the one pinned here, else the one the server shows).
pub fn connection_info(remote: &str) -> Result<(Vec<String>, String), Fail> {
    let conf = super::conf()?;
    let r = conf.remote(remote)?;
    let c = conf.lxd_client(remote, r)?;
    let server: ServerInfo = c.get("/1.0")?;
    let mut servers = Vec::new();
    if r.addr.starts_with("https://") {
        servers.push(r.addr.clone());
    }
    for a in &server.environment.addresses {
        let url = format!("https://{a}");
        if !a.starts_with(':') && !servers.contains(&url) {
            servers.push(url);
        }
    }
    if servers.is_empty() {
        return fail("The source server isn't listening on the network");
    }
    let certificate = match conf.server_cert(remote)? {
        Some(der) => crate::tls::der_to_pem(&der),
        None => server.environment.certificate.clone(),
    };
    Ok((servers, certificate))
}

/// The pull source for image `reference` (alias or fingerprint prefix) of `remote`.
pub fn pull_source(remote: &str, reference: &str) -> Result<PullSource, Fail> {
    let conf = super::conf()?;
    let r = conf.remote(remote)?;
    if r.is_simplestreams() {
        // Simplestreams images are all public and named by alias; the daemon resolves it.
        return Ok(PullSource {
            servers: vec![r.addr.clone()],
            protocol: "simplestreams".into(),
            alias: reference.to_string(),
            ..PullSource::default()
        });
    }
    let c = conf.lxd_client(remote, r)?;
    let (alias, fp) = match c.get::<ImageAliasesEntry>(&format!(
        "/1.0/images/aliases/{}",
        urlencode(reference, false)
    )) {
        Ok(a) => (reference.to_string(), a.target),
        Err(_) => (String::new(), reference.to_string()),
    };
    let img: Image = c.get(&image_path(&fp))?;
    let secret = if img.put.public {
        String::new()
    } else {
        // A token operation whose metadata carries the secret; it stays until used or expired.
        let reply = c.query::<()>(
            "POST",
            &format!("{}/secret", image_path(&img.fingerprint)),
            None,
            None,
        )?;
        reply
            .envelope
            .metadata
            .get("metadata")
            .and_then(|m| m.get("secret"))
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .ok_or_else(|| Fail::Error("No secret provided by the image server".into()))?
    };
    let (servers, certificate) = connection_info(remote)?;
    let (alias, fingerprint) = if !alias.is_empty() && img.put.public {
        (alias, String::new())
    } else {
        (String::new(), img.fingerprint.clone())
    };
    Ok(PullSource {
        servers,
        protocol: "lxd".into(),
        certificate,
        alias,
        fingerprint,
        secret,
        image: Some(img),
    })
}

/// Run `f` with each server URL in turn until one works (lxc's `tryCreateInstance` and
/// `tryCopyImage`): a failure to reach the server moves on to the next, any other failure stops.
/// The errors are lxc's (`WHAT: ERR`, or one line per server when they differ).
pub fn try_servers(
    what: &str,
    servers: &[String],
    mut f: impl FnMut(&str) -> crate::client::Result<Option<Operation>>,
) -> Result<Operation, Fail> {
    let mut errors: Vec<(String, String)> = Vec::new();
    for server in servers {
        match f(server) {
            Ok(Some(op)) => return Ok(op),
            Ok(None) => return Ok(Operation::default()),
            Err(e) => {
                let unreachable = [
                    "connect",
                    "connection",
                    "timed out",
                    "unreachable",
                    "no route",
                ]
                .iter()
                .any(|w| e.0.to_lowercase().contains(w));
                errors.push((server.clone(), e.0));
                if !unreachable {
                    break;
                }
            }
        }
    }
    let Some((_, first)) = errors.first() else {
        return fail(what.to_string());
    };
    if errors.iter().all(|(_, e)| e == first) {
        return fail(format!("{what}: {first}"));
    }
    let lines: Vec<String> = errors.iter().map(|(u, e)| format!("{u}: {e}")).collect();
    fail(format!("{what}:\n - {}", lines.join("\n - ")))
}

fn image_path(fp: &str) -> String {
    format!("/1.0/images/{}", urlencode(fp, false))
}

fn column(img: &Image, col: char) -> Option<String> {
    Some(match col {
        'l' => {
            let mut names: Vec<&str> = img.aliases.iter().map(|a| a.name.as_str()).collect();
            crate::util::sort::sort(&mut names);
            match names.len() {
                0 => String::new(),
                1 => names[0].to_string(),
                n => format!("{} ({} more)", names[0], n - 1),
            }
        }
        'L' => {
            let mut names: Vec<&str> = img.aliases.iter().map(|a| a.name.as_str()).collect();
            crate::util::sort::sort(&mut names);
            names.join("\n")
        }
        'f' => img.fingerprint.chars().take(12).collect(),
        'F' => img.fingerprint.clone(),
        'p' => if img.put.public { "yes" } else { "no" }.to_string(),
        'd' => img
            .put
            .properties
            .get("description")
            .cloned()
            .unwrap_or_default(),
        'a' => img.architecture.clone(),
        't' => {
            if img.kind.is_empty() {
                "CONTAINER".into()
            } else {
                img.kind.to_uppercase()
            }
        }
        's' => format!("{:.2}MB", img.size as f64 / 1024.0 / 1024.0),
        'u' => table::long_date(&img.uploaded_at),
        _ => return None,
    })
}

fn header(col: char) -> &'static str {
    match col {
        'l' | 'L' => "ALIAS",
        'f' | 'F' => "FINGERPRINT",
        'p' => "PUBLIC",
        'd' => "DESCRIPTION",
        'a' => "ARCHITECTURE",
        't' => "TYPE",
        's' => "SIZE",
        _ => "UPLOAD DATE",
    }
}

fn image_matches(img: &Image, filters: &[String]) -> bool {
    filters.iter().all(|f| match f.split_once('=') {
        Some((k, v)) => img.put.properties.get(k).map(String::as_str) == Some(v),
        None => {
            img.fingerprint.starts_with(f.as_str())
                || img.aliases.iter().any(|a| a.name.starts_with(f.as_str()))
        }
    })
}

/// Render `image list` like lxc.
pub fn render_list(images: &[Image], columns: &str, format: Format) -> Result<String, Fail> {
    match format {
        Format::Json => return Ok(serde_json::to_string(images).map_err(|e| e.to_string())? + "\n"),
        Format::Yaml => return Ok(crate::util::yaml::to_string(images)?),
        _ => {}
    }
    let cols: Vec<char> = columns.chars().filter(|c| *c != ',').collect();
    let mut headers = Vec::new();
    for c in &cols {
        if column(&Image::default(), *c).is_none() {
            return fail(format!(
                "Unknown column shorthand char '{c}' in '{columns}'"
            ));
        }
        headers.push(header(*c));
    }
    let mut rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            cols.iter()
                .map(|c| column(i, *c).unwrap_or_default())
                .collect()
        })
        .collect();
    crate::util::sort::sort(&mut rows);
    Ok(table::render_rows(format, &headers, &rows))
}

pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        eprint!("{USAGE}");
        return Err(Fail::Exit(1));
    };
    let rest = &args[1..];
    match sub.as_str() {
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        "list" | "ls" => list(rest),
        "import" => import(rest),
        "alias" => alias(rest),
        _ => simple(sub, rest),
    }
}

fn list(args: &[String]) -> CmdResult {
    let a: ListArgs = parse(&["bivy image list"], args)?;
    let format = Format::parse(a.format.as_deref().unwrap_or("table"))?;
    if let Some(first) = a.filters.first() {
        let (remote, _) = split_remote(first)?;
        if super::conf()?.remote(&remote)?.is_simplestreams() {
            return fail(format!(
                "not supported yet: listing the images of simplestreams remote \"{remote}\""
            ));
        }
    }
    let (c, filters) = image_server_filters(&a.filters)?;
    let all: Vec<Image> = c.get("/1.0/images?recursion=1")?;
    let shown: Vec<Image> = all
        .into_iter()
        .filter(|i| image_matches(i, &filters))
        .collect();
    print!(
        "{}",
        render_list(&shown, a.columns.as_deref().unwrap_or("lfpdatsu"), format)?
    );
    Ok(0)
}

/// Create (or with `reuse`, replace) aliases pointing at `fp`.
fn create_aliases(c: &Client, fp: &str, aliases: &[String], reuse: bool) -> Result<(), Fail> {
    if aliases.is_empty() {
        return Ok(());
    }
    let existing: Vec<ImageAliasesEntry> =
        c.get("/1.0/images/aliases?recursion=1").unwrap_or_default();
    for a in aliases {
        let a = a.as_str();
        if existing.iter().any(|e| e.name == a) {
            if !reuse {
                return fail(format!("Alias already exists: {a}"));
            }
            c.delete(&format!("/1.0/images/aliases/{}", urlencode(a, false)))?;
        }
        c.post(
            "/1.0/images/aliases",
            &ImageAliasesEntry {
                description: String::new(),
                target: fp.into(),
                name: a.into(),
                kind: String::new(),
            },
        )?;
    }
    Ok(())
}

fn fingerprint_of(op: Option<&Operation>, env: &crate::api::Response) -> Option<String> {
    let from_op = op
        .and_then(|o| o.metadata.as_ref())
        .and_then(|m| m.get("fingerprint"))
        .and_then(|f| f.as_str());
    let from_env = env.metadata.get("fingerprint").and_then(|f| f.as_str());
    from_op.or(from_env).map(str::to_string)
}

fn import(args: &[String]) -> CmdResult {
    let a: ImportArgs = parse(&["bivy image import"], args)?;
    let Some(first) = a.args.first() else {
        return fail("Missing image file");
    };
    let mut rootfs: Option<String> = None;
    let mut props = Vec::new();
    let mut remote: Option<String> = None;
    for x in &a.args[1..] {
        if x.ends_with(':') && remote.is_none() && !Path::new(x).exists() {
            // `image import FILE [ROOTFS] [remote:]`
            remote = Some(split_remote(x)?.0);
        } else if x.contains('=') && !Path::new(x).exists() {
            props.push(x.clone());
        } else if rootfs.is_none() {
            rootfs = Some(x.clone());
        } else {
            return fail(format!("Bad key=value pair: {x}"));
        }
    }
    let props = super::key_values(&props)?;
    let prop_header: String = props
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k, false), urlencode(v, false)))
        .collect::<Vec<_>>()
        .join("&");
    let open = |p: &str| -> Result<(File, u64), Fail> {
        let f =
            File::open(p).map_err(|e| Fail::Error(super::io_error("open", Path::new(p), &e)))?;
        let len = f.metadata()?.len();
        Ok((f, len))
    };
    let base = |p: &str| {
        Path::new(p)
            .file_name()
            .map(|b| b.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let mut headers = vec![(
        "X-LXD-public".to_string(),
        if a.public { "1" } else { "0" }.to_string(),
    )];
    if !prop_header.is_empty() {
        headers.push(("X-LXD-properties".to_string(), prop_header));
    }
    let body = match &rootfs {
        None => {
            let (f, len) = open(first)?;
            headers.push(("Content-Type".into(), "application/octet-stream".into()));
            headers.push(("X-LXD-filename".into(), base(first)));
            Body::Reader(
                Box::new(ProgressReader::new(
                    f,
                    super::progress("Transferring image".into(), len),
                )),
                Some(len),
            )
        }
        Some(r) => {
            let (mf, mlen) = open(first)?;
            let (rf, rlen) = open(r)?;
            let m = Multipart::new(
                &Multipart::random_boundary(),
                vec![
                    Part {
                        name: "metadata".into(),
                        filename: base(first),
                        reader: Box::new(mf),
                        len: mlen,
                    },
                    Part {
                        name: "rootfs".into(),
                        filename: base(r),
                        reader: Box::new(rf),
                        len: rlen,
                    },
                ],
            );
            headers.push(("Content-Type".into(), m.content_type.clone()));
            let len = m.len;
            Body::Reader(
                Box::new(ProgressReader::new(
                    m,
                    super::progress("Transferring image".into(), len),
                )),
                Some(len),
            )
        }
    };
    let c = match &remote {
        Some(r) => super::client_of(r)?,
        None => client()?,
    };
    let (env, op) = c.upload("POST", "/1.0/images", &headers, body)?;
    let Some(fp) = fingerprint_of(op.as_ref(), &env) else {
        return fail("the server did not report the image fingerprint");
    };
    create_aliases(&c, &fp, &a.alias, false)?;
    println!("Image imported with fingerprint: {fp}");
    Ok(0)
}

fn alias(args: &[String]) -> CmdResult {
    let sub = args.first().map(String::as_str).unwrap_or("");
    let w: Words = parse(
        &[&format!("bivy image alias {sub}")],
        args.get(1..).unwrap_or(&[]),
    )?;
    // The first word names the remote: `alias create [remote:]NAME FP`, `alias list [remote:]`.
    let (c, words) = match w.words.split_first() {
        Some((first, rest)) => {
            let (c, first) = target(first)?;
            let mut words = vec![first.to_string()];
            words.extend(rest.iter().cloned());
            (c, words)
        }
        None => (client()?, Vec::new()),
    };
    match (sub, words.as_slice()) {
        ("create", [name, target]) => {
            let fp = resolve(&c, target)?;
            let entry = ImageAliasesEntry {
                description: w.description.clone().unwrap_or_default(),
                target: fp,
                name: name.clone(),
                kind: String::new(),
            };
            c.post("/1.0/images/aliases", &entry)?;
        }
        ("delete" | "rm", [name]) => {
            c.delete(&format!("/1.0/images/aliases/{}", urlencode(name, false)))?;
        }
        ("rename" | "mv", [old, new]) => {
            c.post(
                &format!("/1.0/images/aliases/{}", urlencode(old, false)),
                &ImageAliasesEntryPost { name: new.clone() },
            )?;
        }
        ("list" | "ls", filters) => {
            let format = Format::parse(w.format.as_deref().unwrap_or("table"))?;
            let all: Vec<ImageAliasesEntry> = c.get("/1.0/images/aliases?recursion=1")?;
            let mut shown = Vec::new();
            for a in all {
                let mut ok = true;
                for f in filters.iter().filter(|f| !f.is_empty()) {
                    ok &= a.name.starts_with(f.as_str());
                }
                if ok {
                    shown.push(a);
                }
            }
            match format {
                Format::Json => super::print_json(&shown)?,
                Format::Yaml => super::print_yaml(&shown)?,
                _ => {
                    let mut rows: Vec<Vec<String>> = shown
                        .iter()
                        .map(|a| {
                            let t = if a.kind.is_empty() {
                                "CONTAINER".into()
                            } else {
                                a.kind.to_uppercase()
                            };
                            vec![
                                a.name.clone(),
                                a.target.chars().take(12).collect(),
                                t,
                                a.description.clone(),
                            ]
                        })
                        .collect();
                    crate::util::sort::sort(&mut rows);
                    print!(
                        "{}",
                        table::render_rows(
                            format,
                            &["ALIAS", "FINGERPRINT", "TYPE", "DESCRIPTION"],
                            &rows
                        )
                    );
                }
            }
        }
        _ => {
            eprintln!("Usage:\n  bivy image alias [create ALIAS FINGERPRINT | delete ALIAS | rename OLD NEW | list]");
            return Err(Fail::Exit(1));
        }
    }
    Ok(0)
}

fn render_info(img: &Image) -> String {
    let mut o = String::new();
    o += &format!("Fingerprint: {}\n", img.fingerprint);
    o += &format!("Size: {:.2}MB\n", img.size as f64 / 1024.0 / 1024.0);
    o += &format!("Architecture: {}\n", img.architecture);
    o += &format!(
        "Type: {}\n",
        if img.kind.is_empty() {
            "container"
        } else {
            &img.kind
        }
    );
    o += &format!("Public: {}\n", if img.put.public { "yes" } else { "no" });
    o += "Timestamps:\n";
    let when = |s: &str| {
        let d = table::date(s);
        if d.is_empty() {
            "never".to_string()
        } else {
            d
        }
    };
    if !table::date(&img.created_at).is_empty() {
        o += &format!("    Created: {}\n", when(&img.created_at));
    }
    o += &format!("    Uploaded: {}\n", when(&img.uploaded_at));
    o += &format!("    Expires: {}\n", when(&img.put.expires_at));
    o += &format!("    Last used: {}\n", when(&img.last_used_at));
    o += "Properties:\n";
    for (k, v) in &img.put.properties {
        o += &format!("    {k}: {v}\n");
    }
    o += "Aliases:\n";
    for a in &img.aliases {
        if a.description.is_empty() {
            o += &format!("    - {}\n", a.name);
        } else {
            o += &format!("    - {} ({})\n", a.name, a.description);
        }
    }
    o += &format!("Cached: {}\n", if img.cached { "yes" } else { "no" });
    o += &format!(
        "Auto update: {}\n",
        if img.put.auto_update {
            "enabled"
        } else {
            "disabled"
        }
    );
    o += "Profiles:\n";
    for p in &img.put.profiles {
        o += &format!("    - {p}\n");
    }
    o
}

fn simple(sub: &str, args: &[String]) -> CmdResult {
    let w: Words = parse(&[&format!("bivy image {sub}")], args)?;
    if matches!(sub, "copy" | "cp") {
        return copy(&w);
    }
    // Every image named may be on another remote (`image delete a:x b:y`); the first one's
    // remote serves the commands with one image.
    let images = match sub {
        "delete" | "rm" | "refresh" => w.words.len(),
        _ => w.words.len().min(1),
    };
    let mut named: Vec<(Client, String)> = Vec::new();
    for word in &w.words[..images] {
        let (c, n) = image_target(word)?;
        named.push((c, n.to_string()));
    }
    let c = match named.first() {
        Some((c, _)) => c.clone(),
        None => client()?,
    };
    let mut bare: Vec<String> = named.iter().map(|(_, n)| n.clone()).collect();
    bare.extend(w.words[images..].iter().cloned());
    match (sub, bare.as_slice()) {
        ("info", [name]) => {
            let img: Image = c.get(&image_path(&resolve(&c, name)?))?;
            print!("{}", render_info(&img));
        }
        ("show", [name]) => {
            let img: Image = c.get(&image_path(&resolve(&c, name)?))?;
            super::print_yaml(&img.put)?;
        }
        ("edit", [name]) => {
            let p = image_path(&resolve(&c, name)?);
            let (img, etag): (Image, String) = c.get_etag(&p)?;
            let new: ImagePut = edit_yaml(&img.put, "### This is a YAML representation of the image properties.\n### Any line starting with a '# will be ignored.\n\n")?;
            c.put(&p, &new, Some(&etag))?;
        }
        ("get-property", [name, key]) => {
            let img: Image = c.get(&image_path(&resolve(&c, name)?))?;
            match img.put.properties.get(key.as_str()) {
                Some(v) => println!("{v}"),
                None => return fail("Property not found"),
            }
        }
        ("set-property", [name, key, value]) => {
            set_property(&c, name, key, Some(value))?;
        }
        ("unset-property", [name, key]) => {
            set_property(&c, name, key, None)?;
        }
        ("delete" | "rm", names) if !names.is_empty() => {
            for (c, n) in &named {
                c.delete(&image_path(&resolve(c, n)?))?;
            }
        }
        ("export", [name, rest @ ..]) if rest.len() <= 1 => {
            let fp = resolve(&c, name)?;
            export(&c, &fp, rest.first().map(String::as_str))?;
            println!("Image exported successfully!");
        }
        ("refresh", names) => {
            for (c, n) in names.iter().zip(&named).map(|(n, (c, _))| (c, n)) {
                let fp = resolve(c, n)?;
                c.post(&format!("{}/refresh", image_path(&fp)), &json!({}))?;
            }
        }
        _ => {
            eprint!("{USAGE}");
            return fail(format!("invalid arguments for \"image {sub}\""));
        }
    }
    Ok(0)
}

/// `image set-property` and `unset-property`: the image's writable part, with `key` set to
/// `value` or removed (LXD 5.0.2's `unset-property` set it to ""; later LXD removes it, as
/// here), sent back with the ETag it was read with.
fn set_property(c: &Client, name: &str, key: &str, value: Option<&String>) -> Result<(), Fail> {
    let p = image_path(&resolve(c, name)?);
    let (img, etag): (Image, String) = c.get_etag(&p)?;
    let mut put = img.put;
    match value {
        Some(v) => {
            put.properties.insert(key.to_string(), v.clone());
        }
        None => {
            if put.properties.remove(key).is_none() {
                return fail("Property not found");
            }
        }
    }
    c.put(&p, &put, Some(&etag))?;
    Ok(())
}

/// The client of an LXD remote for image commands: public remotes too (their public images are
/// readable without trust), simplestreams ones are not served here.
fn image_client(remote: &str) -> Result<Client, Fail> {
    let conf = super::conf()?;
    let r = conf.remote(remote)?;
    if r.public {
        return Ok(conf.lxd_client(remote, r)?);
    }
    super::client_of(remote)
}

/// `[remote:]image`: its remote's client and the image name.
fn image_target(s: &str) -> Result<(Client, &str), Fail> {
    let (remote, name) = split_remote(s)?;
    Ok((image_client(&remote)?, name))
}

/// [`super::target_filters`] for image servers.
fn image_server_filters(filters: &[String]) -> Result<(Client, Vec<String>), Fail> {
    let Some((first, rest)) = filters.split_first() else {
        return Ok((client()?, Vec::new()));
    };
    let (c, first) = image_target(first)?;
    let mut out: Vec<String> = Vec::new();
    if !first.is_empty() {
        out.push(first.to_string());
    }
    out.extend(rest.iter().cloned());
    Ok((c, out))
}

/// `image copy [remote:]IMAGE remote: [--alias A] [--copy-aliases] [--auto-update] [--public]`:
/// the target daemon pulls the image from the source server (lxc's `CopyImage` in pull mode),
/// the transfer's progress shown; then the aliases are made to point at it.
fn copy(w: &Words) -> CmdResult {
    let [src, dst] = w.words.as_slice() else {
        eprint!("{USAGE}");
        return fail("invalid arguments for \"image copy\"");
    };
    if let Some(m) = w.mode.as_deref().filter(|m| *m != "pull") {
        return fail(format!(
            "not supported yet: image copy --mode {m} (only pull)"
        ));
    }
    let (sremote, sname) = split_remote(src)?;
    let (dremote, dname) = split_remote(dst)?;
    if !dname.is_empty() {
        return fail("Can't provide a name for the target image");
    }
    let dc = super::client_of(&dremote)?;
    if sremote == dremote {
        // lxc refuses a copy within one server; bivy makes the new aliases there.
        let fp = resolve(&dc, sname)?;
        create_aliases(&dc, &fp, &w.alias, false)?;
        println!("Image copied successfully!");
        return Ok(0);
    }
    let p = pull_source(&sremote, sname)?;
    let mut aliases = w.alias.clone();
    if w.copy_aliases {
        match &p.image {
            Some(img) => aliases.extend(img.aliases.iter().map(|a| a.name.clone())),
            None => {
                return fail(format!(
                    "not supported yet: --copy-aliases from simplestreams remote \"{sremote}\""
                ))
            }
        }
    }
    let mut body = json!({
        "auto_update": w.auto_update,
        "public": w.public,
        "profiles": null,
        "source": {
            "type": "image",
            "mode": "pull",
            "server": "",
            "protocol": p.protocol,
            "certificate": p.certificate,
            "alias": p.alias,
            "fingerprint": p.fingerprint,
            "secret": p.secret,
        },
    });
    let op = try_servers("Failed remote image download", &p.servers, |server| {
        body["source"]["server"] = json!(server);
        let reply = dc.query("POST", "/1.0/images", Some(&body), None)?;
        match reply.operation_id() {
            Some(id) => super::wait_progress(&dc, &id, "Copying the image").map(Some),
            None => Ok(None),
        }
    })?;
    println!("Image copied successfully!");
    let fp = op
        .metadata
        .as_ref()
        .and_then(|m| m.get("fingerprint"))
        .and_then(|f| f.as_str())
        .map(str::to_string)
        .or_else(|| p.image.as_ref().map(|i| i.fingerprint.clone()));
    if !aliases.is_empty() {
        let Some(fp) = fp else {
            return fail("the server did not report the image fingerprint");
        };
        // As lxc's ensureImageAliases: an alias that exists is moved to the new image.
        crate::util::sort::sort(&mut aliases);
        aliases.dedup();
        create_aliases(&dc, &fp, &aliases, true)?;
    }
    Ok(0)
}

/// `Content-Disposition: ...filename=NAME` -> NAME.
fn disposition_filename(h: &str) -> Option<String> {
    let i = h.find("filename=")?;
    Some(h[i + 9..].trim().trim_matches('"').to_string())
}

fn export(c: &Client, fp: &str, target: Option<&str>) -> Result<(), Fail> {
    let target = target
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    c.download(&format!("{}/export", image_path(fp)), |mut r| {
        let ctype = r.header("Content-Type").unwrap_or("").to_string();
        let fname = r
            .header("Content-Disposition")
            .and_then(disposition_filename)
            .unwrap_or_else(|| format!("{fp}.tar.gz"));
        // A file target gets the server's file name's extension, as lxc adds it
        // (`img` becomes `img.tar.gz`).
        let dest_for = |name: &str| {
            if target.is_dir() {
                target.join(name)
            } else {
                match name.split_once('.') {
                    Some((_, ext)) if !ext.is_empty() => {
                        PathBuf::from(format!("{}.{ext}", target.display()))
                    }
                    _ => target.clone(),
                }
            }
        };
        if let Some(b) = ctype
            .strip_prefix("multipart/form-data")
            .and_then(|rest| rest.split("boundary=").nth(1))
        {
            let boundary = b.trim_matches('"').to_string();
            let mut buf = Vec::new();
            r.body.read_to_end(&mut buf)?;
            let parts = split_multipart(&buf, &boundary);
            for (name, filename, data) in parts {
                let out = if target.is_dir() {
                    target.join(if filename.is_empty() {
                        name.clone()
                    } else {
                        filename
                    })
                } else if name == "metadata" {
                    target.clone()
                } else {
                    PathBuf::from(format!("{}.root", target.display()))
                };
                write_new(&out, &data)?;
            }
            return Ok(());
        }
        let dest = dest_for(&fname);
        let mut f = File::create(&dest)
            .map_err(|e| crate::client::Error(format!("{}: {e}", dest.display())))?;
        io::copy(&mut r.body, &mut f)?;
        Ok(())
    })?;
    Ok(())
}

fn write_new(p: &Path, data: &[u8]) -> Result<(), crate::client::Error> {
    fs::write(p, data).map_err(|e| crate::client::Error(format!("{}: {e}", p.display())))
}

/// Parse a whole multipart body into (name, filename, data) parts.
pub fn split_multipart(body: &[u8], boundary: &str) -> Vec<(String, String, Vec<u8>)> {
    let delim = format!("--{boundary}").into_bytes();
    let find = |hay: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?
            .windows(delim.len())
            .position(|w| w == delim.as_slice())
            .map(|p| p + from)
    };
    let mut out = Vec::new();
    let Some(mut pos) = find(body, 0) else {
        return out;
    };
    loop {
        let start = pos + delim.len();
        if body.get(start..start + 2) == Some(b"--") {
            break;
        }
        let Some(next) = find(body, start) else { break };
        let part = &body[start..next];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        if let Some(h) = part.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&part[..h]).to_string();
            let field = |key: &str| {
                head.lines()
                    .flat_map(|l| l.split(';'))
                    .filter_map(|kv| {
                        kv.trim()
                            .strip_prefix(&format!("{key}="))
                            .map(|v| v.trim_matches('"').to_string())
                    })
                    .next()
                    .unwrap_or_default()
            };
            out.push((field("name"), field("filename"), part[h + 4..].to_vec()));
        }
        pos = next;
    }
    out
}

pub fn publish(args: &[String]) -> CmdResult {
    let a: PublishArgs = parse(&["bivy publish"], args)?;
    let Some(src) = a.args.first() else {
        return fail("Missing instance name");
    };
    let (remote, src) = split_remote(src)?;
    // `publish [remote:]NAME [remote:] [key=value...]`: the image is made where the instance is.
    let mut rest = &a.args[1..];
    if let Some(first) = rest
        .first()
        .filter(|f| f.ends_with(':') && !f.contains('='))
    {
        let (dst, _) = split_remote(first)?;
        if dst != remote {
            return fail(format!(
                "not supported yet: publishing to another remote ({remote} to {dst})"
            ));
        }
        rest = &rest[1..];
    }
    let props = crate::util::sort::map(super::key_values(rest)?);
    let c = super::client_of(&remote)?;
    let (inst_name, kind) = match src.split_once('/') {
        Some((i, _)) => (i.to_string(), "snapshot"),
        None => (src.to_string(), "instance"),
    };
    let mut restart = false;
    if kind == "instance" {
        let i: Instance = c.get(&instance_path(&inst_name))?;
        if i.status == "Running" {
            if !a.force {
                return fail("The instance is currently running. Use --force to have it stopped and restarted");
            }
            let put = InstanceStatePut {
                action: "stop".into(),
                timeout: -1,
                force: true,
                stateful: false,
            };
            c.put(&format!("{}/state", instance_path(&inst_name)), &put, None)?;
            restart = true;
        }
    }
    // Unset fields are left out rather than sent as null (lxc sends null; both mean "default").
    let mut body = json!({
        "auto_update": false,
        "public": a.public,
        "expires_at": "0001-01-01T00:00:00Z",
        "filename": "",
        "source": {"type": kind, "name": src},
        "compression_algorithm": a.compression.clone().unwrap_or_default(),
    });
    if !props.is_empty() {
        body["properties"] = json!(props);
    }
    let _ = &a.expire;
    let reply = c.query("POST", "/1.0/images", Some(&body), None);
    let result = (|| -> Result<String, Fail> {
        let reply = reply?;
        let op = match reply.operation_id() {
            Some(id) => Some(c.wait_operation(&id)?),
            None => None,
        };
        fingerprint_of(op.as_ref(), &reply.envelope)
            .ok_or_else(|| Fail::Error("the server did not report the image fingerprint".into()))
    })();
    if restart {
        let put = InstanceStatePut {
            action: "start".into(),
            timeout: -1,
            force: false,
            stateful: false,
        };
        c.put(&format!("{}/state", instance_path(&inst_name)), &put, None)?;
    }
    let fp = result?;
    create_aliases(&c, &fp, &a.alias, a.reuse)?;
    println!("Instance published with fingerprint: {fp}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_images() -> Vec<Image> {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/cli_unit/images_recursion1.json"))
                .unwrap();
        serde_json::from_value(v["metadata"].clone()).unwrap()
    }

    #[test]
    fn image_list_like_lxc() {
        let images = reference_images();
        let text = include_str!("../../tests/cli_unit/image_list.txt");
        let want: String = text
            .lines()
            .filter(|l| l.starts_with('+') || l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            render_list(&images, "lfpdatsu", Format::Table).unwrap(),
            want
        );
    }

    #[test]
    fn multipart_round_trip() {
        let parts = vec![
            Part {
                name: "metadata".into(),
                filename: "m.tar".into(),
                reader: Box::new(io::Cursor::new(b"M\r\n--x".to_vec())),
                len: 6,
            },
            Part {
                name: "rootfs".into(),
                filename: "r.tar".into(),
                reader: Box::new(io::Cursor::new(b"RR".to_vec())),
                len: 2,
            },
        ];
        let mut m = Multipart::new("bnd", parts);
        let mut buf = Vec::new();
        m.read_to_end(&mut buf).unwrap();
        let got = split_multipart(&buf, "bnd");
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            ("metadata".into(), "m.tar".into(), b"M\r\n--x".to_vec())
        );
        assert_eq!(got[1], ("rootfs".into(), "r.tar".into(), b"RR".to_vec()));
    }

    #[test]
    fn content_disposition() {
        assert_eq!(
            disposition_filename("inline;filename=busybox.tar.gz").as_deref(),
            Some("busybox.tar.gz")
        );
        assert_eq!(
            disposition_filename("attachment; filename=\"a b.tar\"").as_deref(),
            Some("a b.tar")
        );
    }
}
