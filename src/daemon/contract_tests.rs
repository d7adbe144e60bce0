//! The REST contract, without root: the daemon's handlers driven in-process on a temporary
//! directory with faked host facts (`Host::fake`), through the same entry point the servers use
//! (`routes::handle_as`). The envelope, status codes, ETags, validation errors, recursion, the
//! route table's untrusted view and the trust store. What needs the kernel (containers) stays in
//! `tests/`, run as root.

use std::io::Cursor;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use serde_json::{json, Value};

use super::access::{Caller, ROUTES};
use super::{https, routes, Daemon};
use crate::http::{Body, Request};
use crate::instance::Host;
use crate::tls::{CertKind, Identity};
use crate::util::tempdir::TempDir;

static HTTPS: Once = Once::new();

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bivy-contract-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A model context on a fresh directory (the daemon's identity is shared by all tests).
fn ctx(name: &str) -> (Arc<Daemon>, TempDir) {
    HTTPS.call_once(|| {
        // The key pair is made on a thread of its own; once it is loaded its files are not
        // needed again, so the directory goes with it.
        let identity = temp("identity");
        https::init(&identity).unwrap();
        assert!(
            https::get().identity().is_some(),
            "the test server's key pair"
        );
        let _ = std::fs::remove_dir_all(identity);
    });
    let dir = TempDir::new(&format!("contract-{name}"));
    (Daemon::open(dir.path(), Host::fake()).unwrap(), dir)
}

struct Reply {
    status: u16,
    json: Value,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

fn call_with(
    d: &Daemon,
    caller: &Caller,
    method: &str,
    target: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = crate::http::parse_query(query).unwrap_or_default();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !body.is_empty() {
        h.push(("Content-Type".into(), "application/json".into()));
    }
    let mut req = Request::new(
        method.into(),
        path.into(),
        query,
        h,
        Box::new(Cursor::new(body.into_bytes())),
    );
    let resp = routes::handle_as(d, &mut req, caller);
    let bytes = match resp.body {
        Body::Bytes(b) => b,
        Body::Empty => Vec::new(),
        Body::Reader(mut r, _) => {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut r, &mut v);
            v
        }
    };
    Reply {
        status: resp.status,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers: resp.headers,
    }
}

fn call(d: &Daemon, method: &str, target: &str, body: Option<Value>) -> Reply {
    call_with(d, &Caller::Local, method, target, body, &[])
}

fn remote(ip: [u8; 4], id: Option<&Identity>) -> Caller {
    Caller::Remote {
        addr: IpAddr::from(ip),
        cert: id.map(|i| i.cert_der.clone()),
        fingerprint: id.map(|i| crate::tls::fingerprint(&i.cert_der)),
    }
}

#[test]
fn envelope_status_codes_and_errors() {
    let (d, _dir) = ctx("envelope");
    let r = call(&d, "GET", "/1.0", None);
    assert_eq!(r.status, 200);
    for k in [
        "type",
        "status",
        "status_code",
        "operation",
        "error_code",
        "error",
        "metadata",
    ] {
        assert!(r.json.get(k).is_some(), "{k} missing from {}", r.json);
    }
    assert_eq!(r.json["type"], "sync");
    assert_eq!(r.json["metadata"]["auth"], "trusted");
    assert_eq!(
        r.json["metadata"]["environment"]["certificate_fingerprint"]
            .as_str()
            .map(str::len),
        Some(64)
    );

    let r = call(&d, "GET", "/1.0/nothing", None);
    assert_eq!((r.status, r.json["error_code"].as_u64()), (404, Some(404)));
    assert_eq!(r.json["type"], "error");
    assert_eq!(r.json["metadata"], Value::Null);

    let r = call(&d, "DELETE", "/1.0/operations", None);
    assert_eq!(r.status, 405, "{}", r.json);

    let r = call(&d, "GET", "/1.0/profiles?project=other", None);
    assert_eq!((r.status, r.error()), (404, "Project not found"));
    let r = call(&d, "GET", "/1.0/profiles?target=m1", None);
    assert_eq!(r.status, 400);

    // A body that is not JSON, and a config key nobody knows.
    let mut req = Request::new(
        "POST".into(),
        "/1.0/profiles".into(),
        vec![],
        vec![],
        Box::new(Cursor::new(b"{not json".to_vec())),
    );
    let resp = routes::handle_as(&d, &mut req, &Caller::Local);
    assert_eq!(resp.status, 400);
    let r = call(
        &d,
        "POST",
        "/1.0/profiles",
        Some(json!({"name": "p1", "config": {"no.such.key": "1"}})),
    );
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(r.error().contains("no.such.key"), "{}", r.error());
    let r = call(
        &d,
        "PATCH",
        "/1.0",
        Some(json!({"config": {"core.https_address": "not an address"}})),
    );
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(r.error().contains("core.https_address"), "{}", r.error());
}

#[test]
fn etags_patch_and_recursion() {
    let (d, _dir) = ctx("etag");
    let r = call(
        &d,
        "POST",
        "/1.0/profiles",
        Some(json!({"name": "p1", "description": "one", "config": {"limits.processes": "100"}})),
    );
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.header("Location"), Some("/1.0/profiles/p1"));

    let r = call(&d, "GET", "/1.0/profiles/p1", None);
    let etag = r.header("ETag").expect("ETag").to_string();
    // A stale If-Match: 412 and nothing changed.
    let stale = call_with(
        &d,
        &Caller::Local,
        "PUT",
        "/1.0/profiles/p1",
        Some(json!({"description": "two", "config": {}})),
        &[("If-Match", "\"0000\"")],
    );
    assert_eq!(stale.status, 412, "{}", stale.json);
    assert_eq!(
        call(&d, "GET", "/1.0/profiles/p1", None).json["metadata"]["description"],
        "one"
    );
    // The right one: PATCH merges (the config key stays).
    let ok = call_with(
        &d,
        &Caller::Local,
        "PATCH",
        "/1.0/profiles/p1",
        Some(json!({"description": "two"})),
        &[("If-Match", &etag)],
    );
    assert_eq!(ok.status, 200, "{}", ok.json);
    let m = call(&d, "GET", "/1.0/profiles/p1", None).json["metadata"].clone();
    assert_eq!(m["description"], "two");
    assert_eq!(m["config"]["limits.processes"], "100");
    // PUT replaces.
    assert_eq!(
        call(
            &d,
            "PUT",
            "/1.0/profiles/p1",
            Some(json!({"description": "three", "config": {}}))
        )
        .status,
        200
    );
    let m = call(&d, "GET", "/1.0/profiles/p1", None).json["metadata"].clone();
    assert_eq!(m["config"], json!({}));

    let urls = call(&d, "GET", "/1.0/profiles", None).json["metadata"].clone();
    assert!(urls
        .as_array()
        .unwrap()
        .contains(&json!("/1.0/profiles/p1")));
    let objs = call(&d, "GET", "/1.0/profiles?recursion=1", None).json["metadata"].clone();
    assert!(objs
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "p1" && p["description"] == "three"));
}

/// Every route in the table, with `{x}` filled in, for every method it has.
fn table_requests() -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for r in ROUTES {
        let path = r
            .path
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        for m in r.methods {
            out.push((m.to_string(), path.clone(), r.untrusted.contains(m)));
        }
    }
    out
}

#[test]
fn untrusted_callers_reach_only_the_public_routes() {
    let (d, dir) = ctx("untrusted");
    let id = Identity::load_or_make(
        &dir.path().join("c.crt"),
        &dir.path().join("c.key"),
        CertKind::Client,
    )
    .unwrap();
    for caller in [
        remote([192, 0, 2, 1], None),
        remote([192, 0, 2, 2], Some(&id)),
    ] {
        for (m, path, open) in table_requests() {
            // (A password attempt is the public use of POST /1.0/certificates.)
            let body = (m != "GET").then(|| json!({}));
            let r = call_with(&d, &caller, &m, &path, body, &[]);
            let refused = (r.status, r.error()) == (403, "not authorized");
            if open {
                // Open, and answered by its handler: only a refused login is a 403.
                let login = m == "POST" && path == "/1.0/certificates";
                assert!(!refused || login, "{m} {path}: {}", r.json);
            } else {
                assert!(
                    refused,
                    "{m} {path} reached by an untrusted caller: {}",
                    r.json
                );
            }
        }
        let r = call_with(&d, &caller, "GET", "/1.0", None, &[]);
        assert_eq!(r.status, 200);
        let m = &r.json["metadata"];
        assert_eq!(m["auth"], "untrusted");
        assert!(
            m.get("config").is_none() && m.get("environment").is_none(),
            "{m}"
        );
        assert_eq!(m["auth_methods"], json!(["tls"]));
    }
}

#[test]
fn trust_password_adds_a_client_until_its_certificate_is_removed() {
    let (d, dir) = ctx("password");
    let id = Identity::load_or_make(
        &dir.path().join("c.crt"),
        &dir.path().join("c.key"),
        CertKind::Client,
    )
    .unwrap();
    let me = remote([192, 0, 2, 10], Some(&id));
    let r = call(
        &d,
        "PATCH",
        "/1.0",
        Some(json!({"config": {"core.trust_password": "s3cret"}})),
    );
    assert_eq!(r.status, 200, "{}", r.json);
    // Shown as `true`, stored as a salted hash only.
    assert_eq!(
        call(&d, "GET", "/1.0", None).json["metadata"]["config"]["core.trust_password"],
        "true"
    );
    // Document and change log: neither holds it in clear.
    let stored = std::fs::read_to_string(dir.path().join("database.json")).unwrap()
        + &std::fs::read_to_string(dir.path().join("database.log")).unwrap_or_default();
    assert!(!stored.contains("s3cret"));
    assert!(stored.contains("pbkdf2-sha256$"));
    // Sending the shown `true` back (a client echoing the config) keeps the password.
    let r = call(
        &d,
        "PUT",
        "/1.0",
        Some(json!({"config": {"core.trust_password": "true"}})),
    );
    assert_eq!(r.status, 200, "{}", r.json);

    let wrong = call_with(
        &d,
        &me,
        "POST",
        "/1.0/certificates",
        Some(json!({"type": "client", "password": "guess"})),
        &[],
    );
    assert_eq!((wrong.status, wrong.error()), (403, "not authorized"));
    assert_eq!(
        call(&d, "GET", "/1.0/certificates", None).json["metadata"],
        json!([])
    );
    let r = call_with(&d, &me, "GET", "/1.0/instances", None, &[]);
    assert_eq!(r.status, 403);

    let ok = call_with(
        &d,
        &me,
        "POST",
        "/1.0/certificates",
        Some(json!({"type": "client", "password": "s3cret", "name": "laptop"})),
        &[],
    );
    assert_eq!(ok.status, 201, "{}", ok.json);
    let fp = crate::tls::fingerprint(&id.cert_der);
    assert_eq!(
        ok.header("Location"),
        Some(format!("/1.0/certificates/{fp}").as_str())
    );
    assert_eq!(
        call_with(&d, &me, "GET", "/1.0/instances", None, &[]).status,
        200
    );
    assert_eq!(
        call_with(&d, &me, "GET", "/1.0", None, &[]).json["metadata"]["auth"],
        "trusted"
    );
    // Adding it again is a conflict.
    let again = call_with(
        &d,
        &me,
        "POST",
        "/1.0/certificates",
        Some(json!({"type": "client"})),
        &[],
    );
    assert_eq!(again.status, 409, "{}", again.json);

    // Show by prefix, edit with the ETag, list with recursion.
    let r = call(&d, "GET", &format!("/1.0/certificates/{}", &fp[..12]), None);
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["metadata"]["name"], "laptop");
    assert_eq!(r.json["metadata"]["fingerprint"], fp.as_str());
    let etag = r.header("ETag").unwrap().to_string();
    let r = call_with(
        &d,
        &Caller::Local,
        "PATCH",
        &format!("/1.0/certificates/{fp}"),
        Some(json!({"name": "desk"})),
        &[("If-Match", &etag)],
    );
    assert_eq!(r.status, 200, "{}", r.json);
    let list = call(&d, "GET", "/1.0/certificates?recursion=1", None).json["metadata"].clone();
    assert_eq!(list[0]["name"], "desk");
    assert_eq!(list[0]["type"], "client");
    let r = call(
        &d,
        "PATCH",
        &format!("/1.0/certificates/{fp}"),
        Some(json!({"type": "nonsense"})),
    );
    assert_eq!(r.status, 400, "{}", r.json);

    // Removed: the client is untrusted again at its next request.
    assert_eq!(
        call(&d, "DELETE", &format!("/1.0/certificates/{fp}"), None).status,
        200
    );
    assert_eq!(
        call_with(&d, &me, "GET", "/1.0/instances", None, &[]).status,
        403
    );
    assert_eq!(
        call(&d, "GET", &format!("/1.0/certificates/{fp}"), None).status,
        404
    );
}

#[test]
fn certificates_added_by_a_trusted_caller() {
    let (d, dir) = ctx("addcert");
    let id = Identity::load_or_make(
        &dir.path().join("c.crt"),
        &dir.path().join("c.key"),
        CertKind::Client,
    )
    .unwrap();
    // Base64 DER, as lxc and pylxd send it.
    let b64 = crate::util::base64::encode(&id.cert_der);
    let r = call(
        &d,
        "POST",
        "/1.0/certificates",
        Some(json!({"type": "client", "certificate": b64})),
    );
    assert_eq!(r.status, 201, "{}", r.json);
    let fp = crate::tls::fingerprint(&id.cert_der);
    let m = call(&d, "GET", &format!("/1.0/certificates/{fp}"), None).json["metadata"].clone();
    // Without a name, the certificate's common name.
    assert!(m["name"].as_str().unwrap().contains('@'), "{m}");
    assert_eq!(m["certificate"], id.cert_pem().as_str());
    // Garbage, and no certificate at all on the unix socket.
    let r = call(
        &d,
        "POST",
        "/1.0/certificates",
        Some(json!({"certificate": "bm90IGEgY2VydA=="})),
    );
    assert_eq!(r.status, 400, "{}", r.json);
    let r = call(&d, "POST", "/1.0/certificates", Some(json!({})));
    assert_eq!(r.status, 400, "{}", r.json);
    // A token needs the network listener (it carries its addresses).
    let r = call(
        &d,
        "POST",
        "/1.0/certificates",
        Some(json!({"name": "n", "token": true})),
    );
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(r.error().contains("listening"), "{}", r.error());
}

/// An events websocket has every event from the moment its handshake is answered: `lxc` looks
/// at an operation once it has the answer, then waits for the operation's events, and one that
/// ended in between (before the upgraded connection was served) was lost, leaving `lxc` waiting
/// for ever (a CI run: `lxc storage volume import` of a refused tarball, 300 s).
#[test]
fn an_events_websocket_has_the_events_after_its_handshake() {
    use crate::http::ws;
    let (d, _dir) = ctx("events-handshake");
    let mut req = Request::new(
        "GET".into(),
        "/1.0/events".into(),
        crate::http::parse_query("type=lifecycle").unwrap(),
        vec![
            ("Upgrade".into(), "websocket".into()),
            ("Connection".into(), "Upgrade".into()),
            (
                "Sec-WebSocket-Key".into(),
                "dGhlIHNhbXBsZSBub25jZQ==".into(),
            ),
            ("Sec-WebSocket-Version".into(), "13".into()),
        ],
        Box::new(Cursor::new(Vec::new())),
    );
    let resp = routes::handle_as(&d, &mut req, &Caller::Local);
    assert_eq!(resp.status, 101);
    // The client has the answer; the event comes before the connection is served.
    d.events
        .lifecycle("instance-started", "/1.0/instances/c1", json!({}));
    let (server, client) = std::os::unix::net::UnixStream::pair().unwrap();
    let upgrade = resp.upgrade.expect("an upgrade");
    let served = std::thread::spawn(move || upgrade(Box::new(server)));
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let (_tx, mut rx) = ws::split(Box::new(client), ws::Role::Client).unwrap();
    let text = loop {
        match rx.recv().expect("the event, within 10 s") {
            ws::Message::Text(t) => break t,
            ws::Message::Binary(_) => {}
            ws::Message::Close(c) => panic!("closed ({c:?}) without the event"),
        }
    };
    let v: Value = serde_json::from_slice(text.as_bytes()).unwrap();
    assert_eq!(v["metadata"]["action"], "instance-started", "{v}");
    drop(rx);
    drop(_tx);
    // The server's writer notices the client gone at its next event.
    d.events
        .lifecycle("instance-stopped", "/1.0/instances/c1", json!({}));
    served.join().unwrap();
}
