//! `operation list|show|delete`, `monitor`, `version`, `query`.

use std::collections::BTreeMap;

use argh::FromArgs;

use super::table::{self, Format};
use super::{client, fail, parse, CmdResult, Fail, VERSION};
use crate::api::{Event, Operation, Server};
use crate::client::urlencode;
use crate::http::ws::Message;

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Arguments of read-only list/show commands.
pub struct Words {
    #[argh(positional)]
    /// arguments
    words: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (table, csv, json, yaml, compact)
    format: Option<String>,
}

fn words(cmd: &str, args: &[String]) -> Result<(String, Vec<String>, Format), Fail> {
    let Some(sub) = args.first() else {
        eprintln!("Usage:\n  bivy {cmd} [list|show|delete]");
        return Err(Fail::Exit(1));
    };
    if sub == "-h" || sub == "--help" {
        println!("Usage:\n  bivy {cmd} [list|show|delete]");
        return Err(Fail::Exit(0));
    }
    let w: Words = parse(&[&format!("bivy {cmd} {sub}")], &args[1..])?;
    let format = Format::parse(w.format.as_deref().unwrap_or("table"))?;
    Ok((sub.clone(), w.words, format))
}

/// Render `operation list` rows.
pub fn render_operations(ops: &[Operation], format: Format) -> Result<String, Fail> {
    match format {
        Format::Json => return Ok(serde_json::to_string(ops).map_err(|e| e.to_string())? + "\n"),
        Format::Yaml => return Ok(crate::util::yaml::to_string(ops)?),
        _ => {}
    }
    let mut sorted: Vec<&Operation> = ops.iter().collect();
    crate::util::sort::sort_by(&mut sorted, |a, b| {
        (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id))
    });
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|o| {
            vec![
                o.id.clone(),
                o.class.to_uppercase(),
                o.description.clone(),
                o.status.to_uppercase(),
                if o.may_cancel { "YES" } else { "NO" }.to_string(),
                table::date(&o.created_at),
            ]
        })
        .collect();
    Ok(table::render_rows(
        format,
        &[
            "ID",
            "TYPE",
            "DESCRIPTION",
            "STATUS",
            "CANCELABLE",
            "CREATED",
        ],
        &rows,
    ))
}

/// The first word may name a remote (`operation list b:`, `operation show b:ID`): its client
/// and the words with the prefix removed (an empty one dropped).
fn remote_words(w: &[String]) -> Result<(crate::client::Client, Vec<String>), Fail> {
    super::target_filters(w)
}

pub fn operation(args: &[String]) -> CmdResult {
    let (sub, w, format) = words("operation", args)?;
    let (c, w) = remote_words(&w)?;
    match (sub.as_str(), w.as_slice()) {
        ("list" | "ls", []) => {
            let by_status: BTreeMap<String, Vec<Operation>> =
                c.get("/1.0/operations?recursion=1")?;
            let all: Vec<Operation> = by_status.into_values().flatten().collect();
            print!("{}", render_operations(&all, format)?);
        }
        ("show", [id]) => {
            let op: Operation = c.get(&format!("/1.0/operations/{}", urlencode(id, false)))?;
            super::print_yaml(&op)?;
        }
        ("delete" | "rm", [id]) => {
            c.delete(&format!("/1.0/operations/{}", urlencode(id, false)))?;
            println!("Operation {id} deleted");
        }
        (other, _) => return fail(format!("invalid arguments for \"operation {other}\"")),
    }
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Monitor a local or remote server: print its events.
pub struct MonitorArgs {
    #[argh(positional)]
    /// remote (`remote:`)
    remote: Option<String>,
    #[argh(option, long = "type")]
    /// event type to listen for (operation, logging, lifecycle); repeatable
    kind: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (yaml, json, pretty)
    format: Option<String>,
    #[argh(switch)]
    /// pretty rendering (short for --format=pretty)
    pretty: bool,
    #[argh(option, long = "loglevel")]
    /// minimum log level to show (accepted, ignored)
    _loglevel: Option<String>,
}

/// Render one event the way `lxc monitor` does (YAML then a blank line).
pub fn render_event(ev: &Event, format: &str) -> Result<String, Fail> {
    Ok(match format {
        "json" => serde_json::to_string(ev).map_err(|e| e.to_string())? + "\n",
        "pretty" => {
            let desc = ev
                .metadata
                .get("description")
                .or_else(|| ev.metadata.get("action"))
                .or_else(|| ev.metadata.get("message"));
            let what = desc.and_then(|d| d.as_str()).unwrap_or("");
            format!("{} {} {}\n", ev.timestamp, ev.kind, what)
        }
        // lxc prints the event as a generic map (sorted keys), then two newlines.
        _ => crate::util::yaml::to_string_generic(ev)? + "\n\n",
    })
}

pub fn monitor(args: &[String]) -> CmdResult {
    let a: MonitorArgs = parse(&["bivy monitor"], args)?;
    let format = if a.pretty {
        "pretty".to_string()
    } else {
        a.format.clone().unwrap_or_else(|| "yaml".into())
    };
    if !matches!(format.as_str(), "yaml" | "json" | "pretty") {
        return fail(format!("Invalid format \"{format}\""));
    }
    let c = match &a.remote {
        Some(r) => super::target(r)?.0,
        None => client()?,
    };
    let (_tx, mut rx) = c.events(&a.kind.join(","))?;
    loop {
        match rx.recv() {
            Ok(Message::Text(t)) => {
                let Ok(ev) = serde_json::from_slice::<Event>(t.as_bytes()) else {
                    continue;
                };
                print!("{}", render_event(&ev, &format)?);
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            Ok(Message::Binary(_)) => {}
            Ok(Message::Close(_)) => return Ok(0),
            Err(e) => return fail(e.to_string()),
        }
    }
}

pub fn version(args: &[String]) -> CmdResult {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("Usage:\n  bivy version [<remote>:]\n\nShow local and remote versions");
        return Ok(0);
    }
    let c = match args {
        [] => client(),
        [r] => super::target(r).map(|(c, _)| c),
        _ => return fail("Usage: bivy version [<remote>:]"),
    };
    println!("Client version: {VERSION}");
    let server = c.ok().and_then(|c| c.get::<Server>("/1.0").ok());
    match server {
        Some(s) if !s.environment.server_version.is_empty() => {
            println!("Server version: {}", s.environment.server_version)
        }
        _ => println!("Server version: unreachable"),
    }
    Ok(0)
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Send a raw query to the server: bivy query [-X METHOD] [-d DATA] [--wait] PATH
pub struct QueryArgs {
    #[argh(positional)]
    /// API path, e.g. /1.0/instances?recursion=1
    path: String,
    #[argh(option, short = 'X', default = "String::from(\"GET\")")]
    /// action (HTTP method)
    request: String,
    #[argh(option, short = 'd')]
    /// input data (JSON)
    data: Option<String>,
    #[argh(switch)]
    /// wait for the operation to complete
    wait: bool,
    #[argh(switch)]
    /// print the raw response
    raw: bool,
}

/// JSON indented with tabs, as `lxc query` prints it.
pub fn pretty_json(v: &serde_json::Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"\t"),
    );
    let _ = v.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

pub fn query(args: &[String]) -> CmdResult {
    let a: QueryArgs = parse(&["bivy query"], args)?;
    let (c, path) = super::target(&a.path)?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let body: Option<serde_json::Value> = match &a.data {
        Some(d) => Some(
            serde_json::from_slice(d.as_bytes())
                .map_err(|e| Fail::Error(format!("invalid JSON in --data: {e}")))?,
        ),
        None => None,
    };
    if a.raw {
        let resp = c.raw(
            &a.request,
            &path,
            &[],
            body.map_or(crate::http::Body::Empty, |b| {
                crate::http::Body::Bytes(b.to_string().into_bytes())
            }),
        )?;
        std::io::Write::write_all(&mut std::io::stdout(), &resp.body)?;
        return Ok(0);
    }
    let reply = c.query(&a.request, &path, body.as_ref(), None)?;
    let meta = match (a.wait, reply.operation_id()) {
        (true, Some(id)) => serde_json::to_value(c.wait_operation(&id)?)
            .map_err(|e| e.to_string())?
            .get("metadata")
            .cloned()
            .unwrap_or_default(),
        _ => reply.envelope.metadata.clone(),
    };
    if !meta.is_null() {
        println!("{}\n", pretty_json(&meta));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_rows() {
        let op = Operation {
            id: "2ac27b79-9dfe-4ff1-b793-a576f7e59eab".into(),
            class: "task".into(),
            description: "Starting instance".into(),
            status: "Success".into(),
            created_at: "2026-11-21T20:28:59.75912494Z".into(),
            ..Default::default()
        };
        let out = render_operations(&[op], Format::Table).unwrap();
        assert!(out.contains("| 2ac27b79-9dfe-4ff1-b793-a576f7e59eab | TASK | Starting instance | SUCCESS | NO         | 2026/11/21 20:28 UTC |"), "{out}");
    }

    #[test]
    fn query_output_uses_tabs() {
        let v = serde_json::json!({"b": [1], "a": "x"});
        assert_eq!(
            pretty_json(&v),
            "{\n\t\"a\": \"x\",\n\t\"b\": [\n\t\t1\n\t]\n}"
        );
    }

    #[test]
    fn monitor_yaml() {
        let ev = Event {
            kind: "lifecycle".into(),
            timestamp: "2026-11-21T20:29:32.966639578Z".into(),
            metadata: serde_json::json!({"action": "instance-stopped", "source": "/1.0/instances/cX"}),
            location: "none".into(),
            project: "default".into(),
        };
        assert_eq!(
            render_event(&ev, "yaml").unwrap(),
            "location: none\nmetadata:\n  action: instance-stopped\n  source: /1.0/instances/cX\nproject: default\ntimestamp: \"2026-11-21T20:29:32.966639578Z\"\ntype: lifecycle\n\n\n"
        );
    }
}
