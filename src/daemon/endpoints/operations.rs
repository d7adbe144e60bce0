//! `/1.0/operations` and `/1.0/events`: listing, waiting on, cancelling and connecting to
//! operations, and the event stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::super::request::recursion;
use super::super::response::{self, Error, Result};
use crate::http::{ws, Request, Response};
use crate::instance::Ctx as Daemon;

pub fn operations_list(d: &Daemon, req: &Request) -> Result<Response> {
    let rec = recursion(req);
    let mut by_status: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for op in d.ops.list() {
        let a = op.to_api();
        let key = a.status.to_lowercase();
        let v = if rec > 0 {
            serde_json::to_value(&a).unwrap_or_default()
        } else {
            serde_json::json!(format!("/1.0/operations/{}", a.id))
        };
        by_status.entry(key).or_default().push(v);
    }
    Ok(response::sync(&by_status))
}

fn find_op(d: &Daemon, id: &str) -> Result<Arc<crate::instance::operations::Op>> {
    d.ops
        .get(id)
        .ok_or_else(|| Error::NotFound("Operation not found".into()))
}

/// An operation an untrusted caller names with its secret (`?secret=`: the one in its
/// metadata, as an image download token has); any other is 403 for it.
fn check_untrusted(req: &Request, op: &crate::instance::operations::Op) -> Result<()> {
    let a = op.to_api();
    let same = op.metadata_secret_is(req.query("secret").unwrap_or(""));
    // Trust tokens are never shown to the untrusted: the secret is what lets a client in.
    let trust_token = a
        .metadata
        .as_ref()
        .is_some_and(|m| m.get("request").is_some());
    if same && !trust_token {
        Ok(())
    } else {
        Err(Error::Forbidden("not authorized".into()))
    }
}

pub fn operation_get(d: &Daemon, req: &Request, id: &str, trusted: bool) -> Result<Response> {
    let op = find_op(d, id)?;
    if !trusted {
        check_untrusted(req, &op)?;
    }
    Ok(response::sync(&op.to_api()))
}

pub fn operation_cancel(d: &Daemon, id: &str) -> Result<Response> {
    find_op(d, id)?.cancel()?;
    Ok(response::empty())
}

pub fn operation_wait(d: &Daemon, req: &Request, id: &str, trusted: bool) -> Result<Response> {
    let op = find_op(d, id)?;
    if !trusted {
        check_untrusted(req, &op)?;
    }
    let timeout = req
        .query("timeout")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(-1);
    op.wait(if timeout < 0 {
        None
    } else {
        Some(Duration::from_secs(timeout as u64))
    });
    Ok(response::sync(&op.to_api()))
}

/// Connect to one of an operation's websockets. The secret is the credential (untrusted
/// callers reach this route: a migration target dials its source without a certificate), so
/// only a live secret of this operation is admitted, and from an untrusted caller only on an
/// operation opened to it (a migration source); anything else, an unknown operation included
/// for the untrusted, is 403.
pub fn operation_websocket(
    d: &Daemon,
    req: &mut Request,
    id: &str,
    trusted: bool,
) -> Result<Response> {
    let secret = req.query("secret").unwrap_or("").to_string();
    let op = match find_op(d, id) {
        Ok(op) => op,
        Err(_) if !trusted => return Err(Error::Forbidden("Invalid websocket secret".into())),
        Err(e) => return Err(e),
    };
    if !op.has_secret(&secret, trusted) {
        return Err(Error::Forbidden("Invalid websocket secret".into()));
    }
    let resp = ws::accept(req);
    if resp.status != 101 {
        return Ok(resp);
    }
    let mut resp = resp;
    resp.upgrade = Some(Box::new(move |stream| {
        if let Err(s) = op.connect(&secret, stream) {
            let _ = s.shutdown_both();
        }
    }));
    Ok(resp)
}

pub fn events(d: &Daemon, req: &mut Request) -> Result<Response> {
    if !req.is_websocket() {
        return Err(Error::BadRequest(
            "The events endpoint needs a websocket upgrade".into(),
        ));
    }
    let types: Vec<String> = req
        .query("type")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    for t in &types {
        if !matches!(t.as_str(), "operation" | "logging" | "lifecycle") {
            return Err(Error::BadRequest(format!(
                "{t:?} isn't a supported event type"
            )));
        }
    }
    let mut resp = ws::accept(req);
    if resp.status != 101 {
        return Ok(resp);
    }
    // Subscribed before the handshake's answer goes out: a client that has it may look at an
    // operation and then wait for its events (`lxc` does), and an operation that ended in
    // between, before a subscription made after the answer, had its event lost and the client
    // waiting for ever. Events from here on are queued for the websocket.
    let (id, rx) = d.events.subscribe(types);
    let events = d.events.clone();
    resp.upgrade = Some(Box::new(move |stream| serve_events(events, id, rx, stream)));
    Ok(resp)
}

/// Serve one websocket subscriber (`id` in the hub `events`, its queue `rx`) until it goes away.
fn serve_events(
    events: std::sync::Arc<crate::instance::events::Events>,
    id: u64,
    rx: std::sync::mpsc::Receiver<String>,
    stream: Box<dyn crate::http::Stream>,
) {
    let Ok((sender, mut receiver)) = ws::split(stream, ws::Role::Server) else {
        return;
    };
    // Reader: notices the client closing (or sending anything) and stops the writer, which
    // waits for the next event: its queue is ended (else a client gone while no event came
    // held its connection and both threads until the next event).
    let closer = sender.clone();
    let reader = std::thread::spawn(move || {
        while let Ok(msg) = receiver.recv() {
            if let ws::Message::Close(_) = msg {
                break;
            }
        }
        closer.shutdown();
        events.unsubscribe(id);
    });
    let _ = sender.ping();
    // Writer: this thread; ends when the hub drops our queue or a send fails.
    for text in rx {
        if sender.send_text(&text).is_err() {
            break;
        }
    }
    sender.shutdown();
    let _ = reader.join();
}
