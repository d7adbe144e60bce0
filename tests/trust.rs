//! The network side of the daemon (issue 11, server half): the HTTPS listener
//! (`core.https_address`, live), the trust store (`/1.0/certificates`), the trust password and
//! single-use trust tokens, what an untrusted caller reaches (the route table
//! `bivy::daemon::access::ROUTES`, walked), revocation of open connections, the trust store
//! across `kill -9`, and the attacks of the issue (clients that never finish the handshake or
//! send garbage, a connection flood from one address, password guessing).
//!
//! Clients: the unmodified `lxc` 5.0.2 (`LXD_CONF` in a temp dir), pylxd 2.4.2, and bivy's own
//! TLS client (`bivy::tls::Client`) with its HTTP client (`bivy::http::client`) for the requests
//! no stock client makes. Everything runs on loopback, with a free port per test. Root (the
//! daemon).

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bivy::daemon::access::ROUTES;
use bivy::http::{client, ws, Body};
use bivy::tls::{self, CertKind, Client, Identity, TlsStream};
use bivy::util::base64;
use serde_json::{json, Value};

use common::{Daemon, Lxc};

/// Read and write timeout on every test connection: longer than the longest login delay (16 s).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

// -------------------------------------------------------------------------------------------
// helpers

/// A port nobody listens on right now (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `PATCH /1.0` over the unix socket with these server config keys.
fn set_config(d: &Daemon, pairs: Value) -> (u16, Value) {
    d.api(
        "PATCH",
        "/1.0",
        Some(&json!({ "config": pairs }).to_string()),
    )
    .expect("PATCH /1.0")
}

fn server_config(d: &Daemon) -> Value {
    let (code, v) = d.api("GET", "/1.0", None).expect("GET /1.0");
    assert_eq!(code, 200, "{v}");
    v["metadata"]["config"].clone()
}

/// The trust store over the unix socket: fingerprint -> name.
fn trusted_certs(d: &Daemon) -> Vec<(String, String)> {
    let (code, v) = d
        .api("GET", "/1.0/certificates?recursion=1", None)
        .expect("GET /1.0/certificates");
    assert_eq!(code, 200, "{v}");
    v["metadata"]
        .as_array()
        .expect("certificate list")
        .iter()
        .map(|c| {
            (
                c["fingerprint"].as_str().unwrap_or_default().to_string(),
                c["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Add a certificate to the trust store over the unix socket; its fingerprint.
fn trust_der(d: &Daemon, der: &[u8], name: &str) -> String {
    let body = json!({"type": "client", "name": name, "certificate": base64::encode(der)});
    let (code, v) = d
        .api("POST", "/1.0/certificates", Some(&body.to_string()))
        .expect("POST /1.0/certificates");
    assert_eq!(code, 201, "{v}");
    tls::fingerprint(der)
}

/// A client key pair in `dir` (made on first use, as `lxc` makes its own).
fn identity(dir: &Path, name: &str) -> Identity {
    Identity::load_or_make(
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
        CertKind::Client,
    )
    .expect("client key pair")
}

fn cert_der_of(path: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tls::pem_to_der(&pem).unwrap_or_else(|| panic!("{} is no PEM certificate", path.display()))
}

/// A TCP connection to `dst` from the local address `src` (any of 127/8 is ours on loopback).
fn tcp_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only: {dst}");
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0))).map_err(io::Error::from)?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst)).map_err(io::Error::from)?;
    Ok(TcpStream::from(fd))
}

/// One request on an open connection (keep-alive: the body is read to its end): status and
/// body bytes.
fn request<S: Read + Write>(
    s: &mut S,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, Vec<u8>)> {
    let mut headers = vec![("Host".to_string(), "127.0.0.1".to_string())];
    let body = match body {
        Some(b) => {
            headers.push(("Content-Type".into(), "application/json".into()));
            Body::Bytes(b.as_bytes().to_vec())
        }
        None => Body::Empty,
    };
    let mut r = client::request(s, method, path, &headers, body)?;
    let mut out = Vec::new();
    r.body.read_to_end(&mut out)?;
    Ok((r.status, out))
}

fn as_json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

/// The daemon's HTTPS listener, from a client's side.
struct Remote {
    port: u16,
    /// The daemon's certificate (DER), pinned by every client here.
    cert: Vec<u8>,
}

impl Remote {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn handshake(&self, tcp: TcpStream, id: Option<&Identity>) -> io::Result<TlsStream> {
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        Client::pinned(Some(self.cert.clone()), id)?.connect("127.0.0.1", tcp)
    }

    /// A TLS connection from 127.0.0.1, presenting `id` when given.
    fn connect(&self, id: Option<&Identity>) -> TlsStream {
        let tcp = TcpStream::connect(self.addr()).expect("connect to the HTTPS listener");
        self.handshake(tcp, id).expect("TLS handshake")
    }

    /// One request on a fresh connection: status and JSON body (`Null` if not JSON).
    fn call(
        &self,
        id: Option<&Identity>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (code, b) = self.call_raw(id, method, path, body);
        (code, as_json(&b))
    }

    fn call_raw(
        &self,
        id: Option<&Identity>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Vec<u8>) {
        let mut s = self.connect(id);
        request(&mut s, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} over HTTPS: {e}"))
    }
}

/// Listen on a free loopback port; the listener as a client sees it.
fn listen(d: &Daemon) -> Remote {
    let port = free_port();
    let (code, v) = set_config(
        d,
        json!({"core.https_address": format!("127.0.0.1:{port}")}),
    );
    assert_eq!(code, 200, "setting core.https_address: {v}");
    Remote {
        port,
        cert: cert_der_of(&d.dir().join("server.crt")),
    }
}

/// A fresh `LXD_CONF` for the unmodified `lxc` (its own client key pair, no remotes).
fn lxc_conf<'a>(d: &'a Daemon, name: &str) -> Lxc<'a> {
    let conf = d.tmp().join(name);
    std::fs::create_dir_all(&conf).expect("LXD_CONF dir");
    Lxc { d, conf }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A trust token made over the unix socket: (operation id, the token string a client is given,
/// the operation's metadata).
fn make_token(d: &Daemon, name: &str) -> (String, String, Value) {
    let body = json!({"token": true, "name": name}).to_string();
    let (code, v) = d
        .api("POST", "/1.0/certificates", Some(&body))
        .expect("POST /1.0/certificates token");
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["metadata"]["class"], "token", "{v}");
    let meta = v["metadata"]["metadata"].clone();
    let id = v["metadata"]["id"]
        .as_str()
        .expect("operation id")
        .to_string();
    (id, token_string(&meta, None), meta)
}

/// LXD's token string: base64 of the JSON `lxc config trust add` prints, from the token
/// operation's metadata (with another secret when `secret` is given).
fn token_string(meta: &Value, secret: Option<&str>) -> String {
    let mut t = json!({
        "client_name": meta["request"]["name"],
        "fingerprint": meta["fingerprint"],
        "addresses": meta["addresses"],
        "secret": secret.map(Value::from).unwrap_or_else(|| meta["secret"].clone()),
    });
    if let Some(e) = meta.get("expiresAt") {
        t["expires_at"] = e.clone();
    }
    base64::encode(t.to_string().as_bytes())
}

/// The busybox test image, and the same image gzipped again (same content, another file, so
/// another fingerprint): two distinct images.
fn two_images(dir: &Path) -> (PathBuf, PathBuf) {
    let img = common::busybox_image();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&img).expect("busybox image"))
        .read_to_end(&mut tar)
        .expect("gunzip busybox image");
    let other = dir.join("busybox-again.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&other).expect("create image copy"),
        flate2::Compression::fast(),
    );
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip");
    assert_ne!(
        sha256_hex(&img),
        sha256_hex(&other),
        "the copy is another file"
    );
    (img, other)
}

fn sha256_hex(path: &Path) -> String {
    sha256_bytes(&std::fs::read(path).expect("read"))
}

fn sha256_bytes(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Import an image with the bivy CLI under `alias`; its fingerprint.
fn import(d: &Daemon, file: &Path, alias: &str) -> String {
    d.ok(&[
        "image",
        "import",
        file.to_str().expect("utf-8 path"),
        "--alias",
        alias,
    ]);
    let (code, v) = d
        .api("GET", &format!("/1.0/images/aliases/{alias}"), None)
        .expect("alias");
    assert_eq!(code, 200, "{v}");
    v["metadata"]["target"]
        .as_str()
        .expect("target")
        .to_string()
}

/// Whether a stream the server should have closed is closed: the next read gives the end or
/// an error, not a timeout (`limit`).
fn closed_by_peer<S: Read>(s: &mut S, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            // A TLS alert or the rest of an answer: keep reading to the end.
            Ok(_) if start.elapsed() < limit => continue,
            Ok(n) => return Err(format!("still sending ({n} bytes) after {limit:?}")),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("still open after {:?}", start.elapsed()))
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Whether the server has not closed this plain TCP connection yet (nothing to read either).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    let open = matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).expect("blocking");
    open
}

/// Wait (bounded) until nothing listens on `addr` any more.
fn refused_soon(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return true,
            _ if Instant::now() > deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The inode of the socket listening on 127.0.0.1:`port` (from /proc/net/tcp), if any.
fn listener_inode(port: u16) -> Option<String> {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .ok()?
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1] == want && f[3] == "0A")
        .map(|f| f[9].to_string())
}

/// The websocket handshake on a TLS connection: Ok, or the refusal.
fn websocket(s: TlsStream, path: &str) -> io::Result<(ws::Sender, ws::Receiver)> {
    ws::connect(Box::new(s), path, &[("Host".into(), "127.0.0.1".into())])
}

fn assert_refused(code: u16, v: &Value, what: &str) {
    assert_eq!(code, 403, "{what}: {v}");
    assert_eq!(v["error"], "not authorized", "{what}: {v}");
}

// -------------------------------------------------------------------------------------------
// 1. the unmodified lxc client over HTTPS with the trust password

#[test]
fn lxc_remote_with_trust_password() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let (code, v) = set_config(&d, json!({"core.trust_password": "s3cret-pw"}));
    assert_eq!(code, 200, "{v}");
    // Stored as a salted hash, shown as "true".
    assert_eq!(server_config(&d)["core.trust_password"], "true");
    let db = d.database_text();
    assert!(!db.contains("s3cret-pw"), "the password is stored in clear");

    let l = lxc_conf(&d, "lxc-remote");
    let url = format!("127.0.0.1:{}", r.port);
    let out = l.run(&[
        "remote",
        "add",
        "b",
        &url,
        "--accept-certificate",
        "--password",
        "wrong",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not authorized"), "{}", text(&out));
    assert!(
        trusted_certs(&d).is_empty(),
        "a wrong password added a certificate"
    );

    let out = l.ok(&[
        "remote",
        "add",
        "b",
        &url,
        "--accept-certificate",
        "--password",
        "s3cret-pw",
    ]);
    assert!(
        out.contains("Client certificate now trusted by server"),
        "{out}"
    );
    let mine = tls::fingerprint(&cert_der_of(&l.conf.join("client.crt")));
    let certs = trusted_certs(&d);
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(certs[0].0, mine, "the client's own certificate is trusted");
    // lxc pinned the daemon's certificate.
    assert_eq!(cert_der_of(&l.conf.join("servercerts/b.crt")), r.cert);

    assert_eq!(l.ok(&["list", "b:", "--format", "csv"]), "");
    let img = common::busybox_image();
    let out = l.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "b:",
        "--alias",
        "bb",
    ]);
    let fp = sha256_hex(&img);
    assert!(out.contains(&fp), "{out}");
    l.ok(&["launch", "b:bb", "b:c1"]);
    assert_eq!(
        l.ok(&["list", "b:", "--format", "csv", "-c", "ns"]).trim(),
        "c1,RUNNING"
    );
    let out = l.run(&["exec", "b:c1", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        l.ok(&["exec", "b:c1", "--", "sh", "-c", "echo out; echo err >&2"]),
        "out\n"
    );
    assert_eq!(
        l.ok(&["file", "pull", "b:c1/etc/hostname", "-"]).trim(),
        "c1"
    );
    let list = l.ok(&["image", "list", "b:", "--format", "csv", "-c", "lF"]);
    assert!(list.contains(&format!("bb,{fp}")), "{list}");
    let info = l.ok(&["info", "b:"]);
    assert!(info.contains("auth: trusted"), "{info}");
    assert!(info.contains(&format!("- 127.0.0.1:{}", r.port)), "{info}");
    // What lxc did over HTTPS, the unix socket sees.
    let (_, v) = d
        .api("GET", "/1.0/instances/c1/state", None)
        .expect("state");
    assert_eq!(v["metadata"]["status"], "Running", "{v}");
    l.ok(&["delete", "--force", "b:c1"]);
    l.ok(&["image", "delete", "b:bb"]);
    let (code, _) = d
        .api("GET", &format!("/1.0/images/{fp}"), None)
        .expect("image");
    assert_eq!(code, 404);
}

// -------------------------------------------------------------------------------------------
// 2. trust tokens

#[test]
fn trust_tokens_are_single_use_expire_and_can_be_revoked() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    // No listener yet: no token (its addresses would be empty).
    let (code, v) = d
        .api(
            "POST",
            "/1.0/certificates",
            Some(r#"{"token":true,"name":"x"}"#),
        )
        .expect("POST");
    assert_eq!(code, 400, "{v}");
    let r = listen(&d);

    // Consumed by lxc: the certificate gets the token's name.
    let (op, token, meta) = make_token(&d, "first");
    assert_eq!(
        meta["fingerprint"],
        tls::fingerprint(&r.cert).as_str(),
        "{meta}"
    );
    assert_eq!(
        meta["addresses"],
        json!([format!("127.0.0.1:{}", r.port)]),
        "{meta}"
    );
    let l1 = lxc_conf(&d, "lxc-token-1");
    l1.ok(&["remote", "add", "x", &token]);
    let certs = trusted_certs(&d);
    let fp1 = tls::fingerprint(&cert_der_of(&l1.conf.join("client.crt")));
    assert_eq!(certs, vec![(fp1, "first".to_string())]);
    assert_eq!(l1.ok(&["list", "x:", "--format", "csv"]), "");
    let (_, v) = d
        .api("GET", &format!("/1.0/operations/{op}"), None)
        .expect("op");
    assert_eq!(
        v["metadata"]["status"], "Success",
        "a used token is done: {v}"
    );

    // The same token again, from another client: refused, nothing added.
    let l2 = lxc_conf(&d, "lxc-token-2");
    let out = l2.run(&["remote", "add", "x", &token]);
    assert!(
        !out.status.success(),
        "a token was used twice: {}",
        text(&out)
    );
    assert!(text(&out).contains("not authorized"), "{}", text(&out));
    assert_eq!(trusted_certs(&d).len(), 1);

    // A token for another server (its fingerprint is not this daemon's): lxc refuses it.
    let (_, _, meta) = make_token(&d, "elsewhere");
    let mut other = meta.clone();
    other["fingerprint"] = json!("ab".repeat(32));
    let l3 = lxc_conf(&d, "lxc-token-3");
    let out = l3.run(&["remote", "add", "x", &token_string(&other, None)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(trusted_certs(&d).len(), 1);

    // A wrong secret: refused, and the real token is not used up by the attempt.
    let (_, token, meta) = make_token(&d, "secret");
    let wrong = token_string(&meta, Some(&"0".repeat(64)));
    let l4 = lxc_conf(&d, "lxc-token-4");
    let out = l4.run(&["remote", "add", "x", &wrong]);
    assert!(
        !out.status.success(),
        "a wrong secret was taken: {}",
        text(&out)
    );
    assert!(text(&out).contains("not authorized"), "{}", text(&out));
    assert_eq!(trusted_certs(&d).len(), 1);
    l4.ok(&["remote", "add", "x", &token]);
    assert_eq!(trusted_certs(&d).len(), 2);

    // Revoked (the operation cancelled): unusable.
    let (op, token, _) = make_token(&d, "revoked");
    let (code, v) = d
        .api("DELETE", &format!("/1.0/operations/{op}"), None)
        .expect("DELETE op");
    assert_eq!(code, 200, "{v}");
    let (_, v) = d
        .api("GET", &format!("/1.0/operations/{op}"), None)
        .expect("op");
    assert_eq!(v["metadata"]["status"], "Cancelled", "{v}");
    let l5 = lxc_conf(&d, "lxc-token-5");
    let out = l5.run(&["remote", "add", "x", &token]);
    assert!(
        !out.status.success(),
        "a revoked token was taken: {}",
        text(&out)
    );
    assert_eq!(trusted_certs(&d).len(), 2);

    // Newer clients send the token in `trust_token`.
    let (_, token, _) = make_token(&d, "newer");
    let id = identity(d.tmp(), "newer");
    let body = json!({"trust_token": token}).to_string();
    let (code, v) = r.call(Some(&id), "POST", "/1.0/certificates", Some(&body));
    assert_eq!(code, 201, "{v}");
    assert!(trusted_certs(&d).contains(&(tls::fingerprint(&id.cert_der), "newer".into())));
    let (_, v) = r.call(Some(&id), "GET", "/1.0", None);
    assert_eq!(v["metadata"]["auth"], "trusted", "{v}");
    assert_eq!(trusted_certs(&d).len(), 3);

    // A token adds the certificate its client presents, never one named in the body.
    let (_, token, _) = make_token(&d, "presented");
    let (me, other) = (identity(d.tmp(), "me"), identity(d.tmp(), "other"));
    let body = json!({
        "trust_token": token,
        "certificate": bivy::util::base64::encode(&other.cert_der),
        "type": "metrics",
    })
    .to_string();
    let (code, v) = r.call(Some(&me), "POST", "/1.0/certificates", Some(&body));
    assert_eq!(code, 201, "{v}");
    let certs = trusted_certs(&d);
    assert!(certs.contains(&(tls::fingerprint(&me.cert_der), "presented".into())));
    assert!(!certs
        .iter()
        .any(|(fp, _)| fp == &tls::fingerprint(&other.cert_der)));
    assert_eq!(certs.len(), 4);
    // Restricted certificates are not supported (bivy has no per-project checks: such a
    // client would have every right): refused as a token and as a trust change.
    let (code, v) = d
        .api(
            "POST",
            "/1.0/certificates",
            Some(r#"{"token":true,"name":"r","restricted":true}"#),
        )
        .expect("POST");
    assert_eq!(code, 501, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("restricted"),
        "{v}"
    );
    let fp = tls::fingerprint(&me.cert_der);
    let (code, v) = d
        .api(
            "PATCH",
            &format!("/1.0/certificates/{fp}"),
            Some(r#"{"restricted":true}"#),
        )
        .expect("PATCH");
    assert_eq!(code, 501, "{v}");
    let (_, v) = r.call(Some(&me), "GET", "/1.0", None);
    assert_eq!(v["metadata"]["auth"], "trusted", "{v}");
    // A certificate past its validity is refused (and one presented is not trusted).
    let now = bivy::util::time::now_secs();
    let (pem, _) = bivy::tls::cert::generate_valid(
        CertKind::Client,
        "old",
        "old",
        &[],
        (now - 7200, now - 3600),
    )
    .expect("cert");
    let der = tls::pem_to_der(&pem).expect("der");
    let body = json!({"certificate": bivy::util::base64::encode(&der), "name": "old"}).to_string();
    let (code, v) = d
        .api("POST", "/1.0/certificates", Some(&body))
        .expect("POST");
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("expired"),
        "{v}"
    );

    // Expired (core.remote_token_expiry): refused by the server, with lxc and directly.
    let (code, v) = set_config(&d, json!({"core.remote_token_expiry": "2S"}));
    assert_eq!(code, 200, "{v}");
    let (op, token, meta) = make_token(&d, "expired");
    assert!(meta["expiresAt"].is_string(), "no expiry in {meta}");
    let (_, token2, _) = make_token(&d, "expired-too");
    std::thread::sleep(Duration::from_secs(3));
    let l6 = lxc_conf(&d, "lxc-token-6");
    let out = l6.run(&["remote", "add", "x", &token]);
    assert!(
        !out.status.success(),
        "an expired token was taken: {}",
        text(&out)
    );
    let (_, v) = d
        .api("GET", &format!("/1.0/operations/{op}"), None)
        .expect("op");
    assert_ne!(v["metadata"]["status"], "Success", "{v}");
    let late = identity(d.tmp(), "late");
    let body = json!({"trust_token": token2}).to_string();
    let (code, v) = r.call(Some(&late), "POST", "/1.0/certificates", Some(&body));
    assert_refused(code, &v, "an expired token");
    let body = json!({"password": token2}).to_string();
    let (code, v) = r.call(Some(&late), "POST", "/1.0/certificates", Some(&body));
    assert_refused(code, &v, "an expired token in `password`");
    assert_eq!(trusted_certs(&d).len(), 4);
    // An invalid expiry is refused when set.
    let (code, v) = set_config(&d, json!({"core.remote_token_expiry": "2 parsecs"}));
    assert_eq!(code, 400, "{v}");
}

// -------------------------------------------------------------------------------------------
// 3. an untrusted client walks the route table

/// What fills each `{x}` of a route pattern: by the placeholder and the segment before it.
struct Names {
    op: String,
    instance: String,
    snapshot: String,
    image: String,
    alias: String,
    cert: String,
    network: String,
}

fn fill(pattern: &str, n: &Names) -> String {
    let segs: Vec<&str> = pattern.split('/').collect();
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        if !s.starts_with('{') {
            out.push(s.to_string());
            continue;
        }
        let before = if i > 0 { segs[i - 1] } else { "" };
        let v = match (*s, before) {
            ("{id}", "operations") => n.op.clone(),
            ("{id}", "warnings") => "6d1a0e32-8f8b-4e47-9a52-6f0e0c1f7a11".into(),
            ("{name}", "instances") => n.instance.clone(),
            ("{name}", "profiles") => "default".into(),
            ("{name...}", "aliases") => n.alias.clone(),
            ("{name}", "networks") => n.network.clone(),
            ("{file}", "logs") => "lxc.log".into(),
            ("{snap}", "snapshots") => n.snapshot.clone(),
            // A backup that does not exist: the untrusted caller must be refused before that matters.
            ("{backup}", "backups") => "backup0".into(),
            ("{fp}", "images") => n.image.clone(),
            ("{fp}", "certificates") => n.cert.clone(),
            ("{pool}", "storage-pools") => "default".into(),
            ("{type}", "volumes") => "container".into(),
            ("{vol}", _) => n.instance.clone(),
            _ => panic!("route {pattern}: this test does not know what to put for {s}"),
        };
        out.push(v);
    }
    out.join("/")
}

/// The answer an untrusted caller must get on a route the table opens to it (the objects
/// named are the public ones, the operation one it has no secret for).
fn expected_untrusted(pattern: &str, method: &str) -> u16 {
    match (pattern, method) {
        ("/" | "/1.0", "GET") => 200,
        ("/1.0/images" | "/1.0/images/aliases", "GET") => 200,
        (
            "/1.0/images/aliases/{name...}" | "/1.0/images/{fp}" | "/1.0/images/{fp}/export",
            "GET",
        ) => 200,
        // Without the operation's secret.
        ("/1.0/operations/{id}" | "/1.0/operations/{id}/wait", "GET") => 403,
        // Without a live websocket secret of a migration source (tests/migration.rs has one).
        ("/1.0/operations/{id}/websocket", "GET") => 403,
        // Without a password or token.
        ("/1.0/certificates", "POST") => 403,
        _ => panic!(
            "{method} {pattern} is open to untrusted callers and this test does not know what they \
             must get there: add it to expected_untrusted"
        ),
    }
}

/// Every route × method of the table as `who` (untrusted): only the public ones answer, the
/// rest is 403. HEAD is tried wherever GET is, and must answer as for a trusted caller.
fn walk_routes(r: &Remote, who: Option<&Identity>, trusted: &Identity, n: &Names) -> usize {
    let mut tried = 0;
    for route in ROUTES {
        let mut paths = vec![fill(route.path, n)];
        if route.path.starts_with("/1.0/instances") {
            paths.push(paths[0].replacen("/1.0/instances", "/1.0/containers", 1));
        }
        let mut methods: Vec<&str> = route.methods.to_vec();
        if methods.contains(&"GET") && !methods.contains(&"HEAD") {
            methods.push("HEAD");
        }
        for path in &paths {
            for &m in &methods {
                tried += 1;
                let body = matches!(m, "POST" | "PUT" | "PATCH").then_some("{}");
                let (code, raw) = r.call_raw(who, m, path, body);
                let v = as_json(&raw);
                let open = route
                    .untrusted
                    .contains(&if m == "HEAD" { "GET" } else { m });
                let what = format!("untrusted {m} {path} (route {})", route.path);
                if !open {
                    assert_eq!(code, 403, "{what}: {v}");
                    if m != "HEAD" {
                        assert_eq!(v["error"], "not authorized", "{what}: {v}");
                    }
                } else if m == "HEAD" {
                    let (want, _) = r.call_raw(Some(trusted), "HEAD", path, None);
                    assert_eq!(code, want, "{what}: as for a trusted caller");
                } else {
                    assert_eq!(code, expected_untrusted(route.path, m), "{what}: {v}");
                }
            }
        }
    }
    tried
}

#[test]
fn untrusted_clients_reach_only_public_routes() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let (pub_file, priv_file) = two_images(d.tmp());
    let fp_pub = import(&d, &pub_file, "pub");
    let fp_priv = import(&d, &priv_file, "priv");
    let (code, v) = d
        .api(
            "PATCH",
            &format!("/1.0/images/{fp_pub}"),
            Some(r#"{"public":true}"#),
        )
        .expect("PATCH image");
    assert_eq!(code, 200, "{v}");
    d.ok(&["launch", "priv", "c1"]);
    d.ok(&["snapshot", "c1", "s1"]);
    let trusted = identity(d.tmp(), "trusted");
    let trusted_fp = trust_der(&d, &trusted.cert_der, "trusted");
    let stranger = identity(d.tmp(), "stranger");
    let (_, v) = d.api("GET", "/1.0/networks", None).expect("networks");
    let network = v["metadata"][0]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or("lo")
        .to_string();
    let config_before = server_config(&d);
    let (tok_op, _, tok_meta) = make_token(&d, "pending");

    for who in [None, Some(&stranger)] {
        let label = if who.is_some() {
            "an untrusted certificate"
        } else {
            "no certificate"
        };
        // An operation websocket, with the right secret of a live exec: 403 all the same.
        let body = r#"{"command":["sleep","30"],"wait-for-websocket":true,"interactive":false}"#;
        let (code, exec) = d
            .api("POST", "/1.0/instances/c1/exec", Some(body))
            .expect("exec");
        assert_eq!(code, 202, "{exec}");
        let exec_id = exec["metadata"]["id"].as_str().expect("exec op id");
        let fd0 = exec["metadata"]["metadata"]["fds"]["0"]
            .as_str()
            .expect("fds");
        let e = websocket(
            r.connect(who),
            &format!("/1.0/operations/{exec_id}/websocket?secret={fd0}"),
        )
        .err()
        .unwrap_or_else(|| panic!("{label}: an operation websocket was opened"));
        assert!(e.to_string().contains("HTTP 403"), "{label}: {e}");
        let e = websocket(r.connect(who), "/1.0/events")
            .err()
            .unwrap_or_else(|| panic!("{label}: the event stream was opened"));
        assert!(e.to_string().contains("HTTP 403"), "{label}: {e}");
        let _ = d.api("DELETE", &format!("/1.0/operations/{exec_id}"), None);

        // A download secret for the private image, made over the unix socket.
        let (code, sec) = d
            .api("POST", &format!("/1.0/images/{fp_priv}/secret"), Some("{}"))
            .expect("image secret");
        assert_eq!(code, 202, "{sec}");
        let sec_op = sec["metadata"]["id"].as_str().expect("op id").to_string();
        let secret = sec["metadata"]["metadata"]["secret"]
            .as_str()
            .expect("secret")
            .to_string();

        let names = Names {
            op: sec_op.clone(),
            instance: "c1".into(),
            snapshot: "s1".into(),
            image: fp_pub.clone(),
            alias: "pub".into(),
            cert: trusted_fp.clone(),
            network: network.clone(),
        };
        let tried = walk_routes(&r, who, &trusted, &names);
        assert!(tried > 100, "{label}: only {tried} requests");

        // GET /1.0: the untrusted view.
        let (code, v) = r.call(who, "GET", "/1.0", None);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["metadata"]["auth"], "untrusted", "{label}: {v}");
        for k in ["config", "environment"] {
            assert!(v["metadata"].get(k).is_none(), "{label}: {k} shown: {v}");
        }
        // Public images and their aliases only.
        let (_, v) = r.call(who, "GET", "/1.0/images", None);
        assert_eq!(
            v["metadata"],
            json!([format!("/1.0/images/{fp_pub}")]),
            "{label}: {v}"
        );
        let (_, v) = r.call(who, "GET", "/1.0/images?recursion=1", None);
        let fps: Vec<&str> = v["metadata"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|i| i["fingerprint"].as_str())
            .collect();
        assert_eq!(fps, vec![fp_pub.as_str()], "{label}: {v}");
        let (_, v) = r.call(who, "GET", "/1.0/images/aliases?recursion=1", None);
        let aliases: Vec<&str> = v["metadata"]
            .as_array()
            .expect("aliases")
            .iter()
            .filter_map(|a| a["name"].as_str())
            .collect();
        assert_eq!(aliases, vec!["pub"], "{label}: {v}");
        for path in [
            "/1.0/images/aliases/priv".to_string(),
            format!("/1.0/images/{fp_priv}"),
            format!("/1.0/images/{fp_priv}/export"),
            format!("/1.0/images/{}", &fp_priv[..12]),
            format!("/1.0/images/{fp_priv}?secret={}", "0".repeat(64)),
            format!("/1.0/images/{fp_priv}/export?secret={}", "0".repeat(64)),
        ] {
            let (code, v) = r.call(who, "GET", &path, None);
            assert_eq!(code, 404, "{label}: GET {path}");
            // Word for word what a missing one gets: nothing tells a hidden image or alias (or
            // a prefix of one) from none.
            let missing = if path.contains("/aliases/") {
                "/1.0/images/aliases/nosuch".to_string()
            } else {
                path.replace(&fp_priv[..12], "0123456789ab")
            };
            let (code, none) = r.call(who, "GET", &missing, None);
            assert_eq!(code, 404, "{label}: GET {missing}");
            assert_eq!(v["error"], none["error"], "{label}: GET {path} / {missing}");
        }
        let (code, body) = r.call_raw(who, "GET", &format!("/1.0/images/{fp_pub}/export"), None);
        assert_eq!(code, 200, "{label}");
        assert_eq!(
            sha256_bytes(&body),
            fp_pub,
            "{label}: the public image's file"
        );

        // With the secret: the image, its operation, and one export.
        let (code, v) = r.call(
            who,
            "GET",
            &format!("/1.0/images/{fp_priv}?secret={secret}"),
            None,
        );
        assert_eq!(code, 200, "{label}: {v}");
        assert_eq!(v["metadata"]["fingerprint"], fp_priv.as_str());
        let (code, v) = r.call(
            who,
            "GET",
            &format!("/1.0/operations/{sec_op}?secret={secret}"),
            None,
        );
        assert_eq!(code, 200, "{label}: {v}");
        let (code, v) = r.call(
            who,
            "GET",
            &format!("/1.0/operations/{sec_op}/wait?secret={secret}&timeout=0"),
            None,
        );
        assert_eq!(code, 200, "{label}: {v}");
        // A trust token's operation is never shown, even with its own secret.
        let tok_secret = tok_meta["secret"].as_str().expect("secret");
        let (code, v) = r.call(
            who,
            "GET",
            &format!("/1.0/operations/{tok_op}?secret={tok_secret}"),
            None,
        );
        assert_eq!(code, 403, "{label}: {v}");
        let export = format!("/1.0/images/{fp_priv}/export?secret={secret}");
        let (code, body) = r.call_raw(who, "GET", &export, None);
        assert_eq!(
            code,
            200,
            "{label}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        assert_eq!(
            sha256_bytes(&body),
            fp_priv,
            "{label}: the private image's file"
        );
        let (code, _) = r.call_raw(who, "GET", &export, None);
        assert_eq!(code, 404, "{label}: an export secret worked twice");
        let (code, _) = r.call(
            who,
            "GET",
            &format!("/1.0/images/{fp_priv}?secret={secret}"),
            None,
        );
        assert_eq!(code, 404, "{label}: a used secret still shows the image");
    }

    // Nothing the walk sent changed anything.
    assert_eq!(server_config(&d), config_before);
    for path in [
        "/1.0/instances/c1",
        "/1.0/instances/c1/snapshots/s1",
        "/1.0/images/aliases/pub",
        "/1.0/images/aliases/priv",
        "/1.0/profiles/default",
        "/1.0/storage-pools/default",
    ] {
        let (code, v) = d.api("GET", path, None).expect("GET");
        assert_eq!(code, 200, "{path} after the walk: {v}");
    }
    let (_, v) = d.api("GET", "/1.0/images", None).expect("images");
    assert_eq!(v["metadata"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, v) = d
        .api("GET", &format!("/1.0/images/{fp_priv}"), None)
        .expect("image");
    assert_eq!(v["metadata"]["public"], false, "{v}");
    assert_eq!(
        trusted_certs(&d),
        vec![(trusted_fp, "trusted".to_string())],
        "the trust store changed"
    );
    let (_, v) = d
        .api("GET", "/1.0/instances/c1/state", None)
        .expect("state");
    assert_eq!(v["metadata"]["status"], "Running", "{v}");
}

// -------------------------------------------------------------------------------------------
// 4. revocation

#[test]
fn removed_certificate_loses_open_connections() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let gone = identity(d.tmp(), "gone");
    let stays = identity(d.tmp(), "stays");
    let fp = trust_der(&d, &gone.cert_der, "gone");
    trust_der(&d, &stays.cert_der, "stays");

    // A keep-alive connection with two answered requests, an open event stream, and another
    // client's keep-alive connection.
    let mut conn = r.connect(Some(&gone));
    for path in ["/1.0", "/1.0/instances"] {
        let (code, b) = request(&mut conn, "GET", path, None).expect("request");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&b));
    }
    let (_, b) = request(&mut conn, "GET", "/1.0", None).expect("request");
    assert_eq!(as_json(&b)["metadata"]["auth"], "trusted");
    let (_, mut events) = websocket(r.connect(Some(&gone)), "/1.0/events").expect("events");
    let mut other = r.connect(Some(&stays));
    let (code, _) = request(&mut other, "GET", "/1.0/instances", None).expect("request");
    assert_eq!(code, 200);

    let (code, v) = d
        .api("DELETE", &format!("/1.0/certificates/{fp}"), None)
        .expect("DELETE certificate");
    assert_eq!(code, 200, "{v}");

    // Both of its connections end now, without a request of its own.
    conn.tcp()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    closed_by_peer(&mut conn, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("keep-alive connection of a removed certificate: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match events.recv() {
            Ok(ws::Message::Close(_)) => break,
            Ok(_) if Instant::now() < deadline => continue,
            Ok(m) => panic!("event stream still delivering: {m:?}"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("event stream of a removed certificate still open: {e}")
            }
            Err(_) => break,
        }
    }
    // Anew: untrusted.
    let (_, v) = r.call(Some(&gone), "GET", "/1.0", None);
    assert_eq!(v["metadata"]["auth"], "untrusted", "{v}");
    let (code, v) = r.call(Some(&gone), "GET", "/1.0/instances", None);
    assert_refused(code, &v, "a removed certificate");
    // The other certificate's connection is untouched.
    let (code, _) = request(&mut other, "GET", "/1.0/instances", None).expect("request");
    assert_eq!(code, 200, "another client's connection was closed too");
}

// -------------------------------------------------------------------------------------------
// 5. the trust store across kill -9

#[test]
fn trust_store_survives_kill9() {
    if !common::require_root() {
        return;
    }
    let mut d = Daemon::start().expect("daemon");
    // Key pairs made up front: the loop below only talks to the daemon.
    let pairs: Vec<(String, String)> = (0..150)
        .map(|_| tls::cert::generate(CertKind::Client).expect("key pair"))
        .collect();
    let pairs = Arc::new(pairs);
    let mut acked: Vec<String> = Vec::new();
    let mut next = 0usize;
    for round in 0..3 {
        let socket = d.socket();
        let done = Arc::new(Mutex::new(Vec::<String>::new()));
        let (p, dn, start) = (pairs.clone(), done.clone(), next);
        let adder = std::thread::spawn(move || {
            for (i, (crt, _)) in p.iter().enumerate().skip(start) {
                let der = tls::pem_to_der(crt).expect("pem");
                let body = json!({"name": format!("k{i}"), "certificate": base64::encode(&der)});
                match common::http_unix(
                    &socket,
                    "POST",
                    "/1.0/certificates",
                    Some(&body.to_string()),
                    Duration::from_secs(30),
                ) {
                    Ok((201, _)) => dn.lock().expect("lock").push(tls::fingerprint(&der)),
                    Ok((code, b)) => panic!("adding k{i}: {code} {}", String::from_utf8_lossy(&b)),
                    // The daemon died under it.
                    Err(_) => return i,
                }
            }
            p.len()
        });
        // Kill once some were acknowledged, in the middle of the stream of changes.
        let want = 5 + round * 7;
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.lock().expect("lock").len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        d.kill9();
        next = adder.join().expect("adder thread");
        let round_acked = done.lock().expect("lock").clone();
        assert!(
            round_acked.len() >= want,
            "round {round}: {} acknowledged",
            round_acked.len()
        );
        acked.extend(round_acked);
        assert!(
            next < pairs.len(),
            "round {round}: every add finished before the kill"
        );

        d.restart().expect("restart after kill -9");
        let db = d.database();
        let stored = db["certificates"]
            .as_object()
            .expect("certificates in the database");
        let listed: Vec<String> = trusted_certs(&d).into_iter().map(|(f, _)| f).collect();
        for fp in &acked {
            assert!(
                stored.contains_key(fp),
                "round {round}: {fp} acknowledged, then lost"
            );
            assert!(listed.contains(fp), "round {round}: {fp} not listed");
        }
        // The one in flight at each kill is all or nothing; nothing else is there.
        assert!(
            listed.len() <= acked.len() + round + 1,
            "{} listed, {} acknowledged",
            listed.len(),
            acked.len()
        );
        next += 1;
    }
    // The restored store is the one the listener uses.
    let r = listen(&d);
    let (crt, key) = &pairs[0];
    std::fs::write(d.tmp().join("k0.crt"), crt).expect("write");
    std::fs::write(d.tmp().join("k0.key"), key).expect("write");
    let id = Identity::load(&d.tmp().join("k0.crt"), &d.tmp().join("k0.key")).expect("k0");
    let (code, v) = r.call(Some(&id), "GET", "/1.0", None);
    assert_eq!(code, 200);
    assert_eq!(v["metadata"]["auth"], "trusted", "{v}");
}

// -------------------------------------------------------------------------------------------
// 6. attacks

/// Clients that never finish (or start) the TLS handshake, or send garbage, do not stop a good
/// client; the daemon closes them itself.
#[test]
fn stalled_and_garbage_clients_do_not_block_others() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let silent = TcpStream::connect(r.addr()).expect("connect");
    let mut half = TcpStream::connect(r.addr()).expect("connect");
    // The first bytes of a TLS record holding a ClientHello, and no more.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    let mut http = TcpStream::connect(r.addr()).expect("connect");
    http.write_all(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut noise = TcpStream::connect(r.addr()).expect("connect");
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    noise.write_all(&junk).expect("write");

    // A good client is served while they hang on.
    let id = identity(d.tmp(), "good");
    trust_der(&d, &id.cert_der, "good");
    let (code, v) = r.call(Some(&id), "GET", "/1.0", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["auth"], "trusted", "{v}");
    let (code, _) = r.call(None, "GET", "/1.0", None);
    assert_eq!(code, 200);
    assert!(
        still_open(&silent),
        "the silent client was dropped before the good one was served"
    );
    assert!(
        still_open(&half),
        "the half handshake was dropped before the good one was served"
    );

    // Garbage is refused; stalled handshakes are cut off (the handshake timeout).
    for (what, mut s) in [
        ("plain HTTP", http),
        ("noise", noise),
        ("silent", silent),
        ("half", half),
    ] {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        closed_by_peer(&mut s, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what} client: {e}"));
    }
    let (code, _) = r.call(Some(&id), "GET", "/1.0", None);
    assert_eq!(code, 200);
}

/// Room for a thousand connections and more in this test process.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = 4096.max(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, want).expect("raise RLIMIT_NOFILE");
}

/// 1,000 connections from one address: past its share they are closed before any TLS work, the
/// daemon's threads and memory stay bounded, and another address is served all along.
#[test]
fn connection_flood_from_one_address() {
    if !common::require_root() {
        return;
    }
    raise_nofile();

    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let pid = d.pid().expect("pid");
    let id = identity(d.tmp(), "good");
    trust_der(&d, &id.cert_der, "good");
    // Warm up: the listener has served once.
    let (code, _) = r.call(Some(&id), "GET", "/1.0", None);
    assert_eq!(code, 200);
    let rss_before = common::proc_status(pid, "VmRSS");
    let threads_before = common::proc_status(pid, "Threads");

    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let flood_start = Instant::now();
    let mut held = Vec::new();
    let mut failed = 0;
    for _ in 0..1000 {
        match tcp_from(flooder, r.addr()) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    // One more from the flooding address gets nowhere: its share is taken (by connections
    // still in their handshake: only while their handshake timeout, 10 s, has not run out).
    let more = tcp_from(flooder, r.addr()).and_then(|tcp| r.handshake(tcp, Some(&id)));
    if flood_start.elapsed() < Duration::from_secs(8) {
        assert!(
            more.is_err(),
            "the flooding address got a 1,001st connection served"
        );
    } else {
        eprintln!(
            "flood took {:?}: not checking the 1,001st",
            flood_start.elapsed()
        );
    }
    // A good client from another address is served during the flood (accepted after every
    // connection of the flood: the daemon has seen them all by now).
    let (code, v) = r.call(Some(&id), "GET", "/1.0", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["auth"], "trusted", "{v}");
    let threads_during = common::proc_status(pid, "Threads");
    let rss_during = common::proc_status(pid, "VmRSS");
    eprintln!(
        "flood: {} connections held, {failed} failed; daemon threads {threads_before} -> \
         {threads_during}, VmRSS {rss_before} kB -> {rss_during} kB",
        held.len()
    );
    assert!(
        threads_during <= threads_before + 128 + 16,
        "{threads_during} daemon threads with 1,000 connections from one address (before: {threads_before})"
    );
    assert!(
        rss_during < rss_before + 200 * 1024,
        "VmRSS grew from {rss_before} kB to {rss_during} kB"
    );
    // Once the flood stops, the address is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served = tcp_from(flooder, r.addr())
            .and_then(|tcp| r.handshake(tcp, Some(&id)))
            .and_then(|mut s| request(&mut s, "GET", "/1.0", None));
        match served {
            Ok((200, _)) => break,
            other if Instant::now() > deadline => {
                panic!("127.0.0.2 not served again after the flood: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let rss_after = common::proc_status(pid, "VmRSS");
    assert!(
        rss_after < rss_before + 200 * 1024,
        "VmRSS grew from {rss_before} kB to {rss_after} kB"
    );
}

/// Password (and token) guessing from one address is slowed down; the right password still
/// works afterwards; every refusal looks the same.
#[test]
fn repeated_wrong_passwords_are_slowed_down() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let (code, v) = set_config(&d, json!({"core.trust_password": "right"}));
    assert_eq!(code, 200, "{v}");
    let id = identity(d.tmp(), "guesser");
    let (_, _, meta) = make_token(&d, "t");
    let bogus_token = token_string(&meta, Some(&"1".repeat(64)));
    let attempts = [
        json!({"password": "wrong1"}),
        json!({"password": bogus_token}),
        json!({"trust_token": bogus_token}),
        json!({"password": "wrong4"}),
        json!({"password": "wrong5"}),
    ];
    let mut refusals = Vec::new();
    let mut took = Vec::new();
    for a in &attempts {
        let start = Instant::now();
        let (code, v) = r.call(Some(&id), "POST", "/1.0/certificates", Some(&a.to_string()));
        took.push(start.elapsed());
        assert_refused(code, &v, &format!("attempt {a}"));
        refusals.push((v["error"].clone(), v["error_code"].clone()));
    }
    assert!(
        refusals.windows(2).all(|w| w[0] == w[1]),
        "refusals differ: {refusals:?}"
    );
    assert!(
        took[4] >= Duration::from_secs(1),
        "the 5th wrong password in a row was answered in {:?}",
        took[4]
    );
    eprintln!("wrong passwords answered after {took:?}");
    assert!(trusted_certs(&d).is_empty());
    // No password at all is refused the same way.
    let (code, v) = r.call(Some(&id), "POST", "/1.0/certificates", Some("{}"));
    assert_refused(code, &v, "no password");
    // The right one (after its delay) still gets in.
    let body = json!({"password": "right", "name": "guesser"}).to_string();
    let (code, v) = r.call(Some(&id), "POST", "/1.0/certificates", Some(&body));
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        trusted_certs(&d),
        vec![(tls::fingerprint(&id.cert_der), "guesser".to_string())]
    );
    let (_, v) = r.call(Some(&id), "GET", "/1.0", None);
    assert_eq!(v["metadata"]["auth"], "trusted", "{v}");
    // Without a client certificate there is nothing to trust.
    let (code, v) = r.call(
        None,
        "POST",
        "/1.0/certificates",
        Some(r#"{"password":"right"}"#),
    );
    assert_refused(code, &v, "no client certificate");
}

// -------------------------------------------------------------------------------------------
/// Handshakes held open from many addresses fill every network slot (each address has 128): a
/// client's connection then takes the place of the oldest of them, instead of being closed
/// unserved until they time out.
#[test]
fn stalled_handshakes_from_many_addresses_do_not_keep_clients_out() {
    if !common::require_root() {
        return;
    }
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    // 960 connections (the slots network peers share) from 127.0.0.2-9, none saying a word.
    let mut flood = Vec::new();
    for host in 2..=9u8 {
        for _ in 0..120 {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, host, 0)).expect("bind");
            connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, r.port)).expect("connect");
            flood.push(fd);
        }
    }
    // The daemon has taken them all into their handshakes by now.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, v) = r.call(None, "GET", "/1.0", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["auth"], "untrusted", "{v}");
    drop(flood);
}

/// Untrusted clients holding every network slot past their handshakes (idle keep-alive
/// connections from many addresses, each under its address's share) do not keep a trusted
/// client out: the oldest untrusted connection gives up its place. A trusted client is not held
/// to its address's share (a host running many execs at once).
#[test]
fn idle_untrusted_connections_do_not_keep_trusted_clients_out() {
    if !common::require_root() {
        return;
    }
    raise_nofile();
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let id = identity(d.tmp(), "good");
    trust_der(&d, &id.cert_der, "good");
    let stranger = identity(d.tmp(), "stranger");
    // 960 connections (the slots network peers share) from 127.0.0.2-9, past their handshake
    // (half with no certificate, half with an untrusted one), each served once and kept open.
    let mut held = Vec::new();
    for host in 2..=9u8 {
        for i in 0..120 {
            let tcp = tcp_from(Ipv4Addr::new(127, 0, 0, host), r.addr()).expect("connect");
            let who = (i % 2 == 0).then_some(&stranger);
            let mut s = r.handshake(tcp, who).expect("untrusted handshake");
            let (code, _) = request(&mut s, "GET", "/1.0", None).expect("GET /1.0");
            assert_eq!(code, 200);
            held.push(s);
        }
    }
    for _ in 0..3 {
        let (code, v) = r.call(Some(&id), "GET", "/1.0", None);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["metadata"]["auth"], "trusted", "{v}");
    }
    drop(held);
    // 300 connections of the trusted client from one address, all open at once: all served.
    let mut mine = Vec::new();
    for n in 0..300 {
        let tcp = tcp_from(Ipv4Addr::new(127, 0, 0, 10), r.addr()).expect("connect");
        let mut s = r
            .handshake(tcp, Some(&id))
            .unwrap_or_else(|e| panic!("trusted connection {n}: {e}"));
        let (code, _) = request(&mut s, "GET", "/1.0", None)
            .unwrap_or_else(|e| panic!("trusted connection {n}: {e}"));
        assert_eq!(code, 200, "trusted connection {n}");
        mine.push(s);
    }
}

/// A wildcard listener on a host whose only interface is loopback (a network namespace of the
/// test's own): LXD issues the token with no addresses (the client names the server itself).
#[test]
fn a_wildcard_listener_on_a_loopback_only_host_issues_tokens() {
    let Some((_ns, d)) = common::netns_daemon(&[]) else {
        return;
    };
    let (code, v) = set_config(&d, json!({"core.https_address": "0.0.0.0:8443"}));
    assert_eq!(code, 200, "setting core.https_address: {v}");
    let (_, _, meta) = make_token(&d, "lo-only");
    assert_eq!(meta["addresses"], json!([]), "{meta}");
}

// 7. core.https_address, live

#[test]
fn https_address_set_changed_and_unset_live() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let a = listen(&d);
    let (code, v) = a.call(None, "GET", "/1.0", None);
    assert_eq!(code, 200, "{v}");
    let (_, v) = d.api("GET", "/1.0", None).expect("GET /1.0");
    assert_eq!(
        v["metadata"]["environment"]["addresses"],
        json!([format!("127.0.0.1:{}", a.port)])
    );
    assert_eq!(
        v["metadata"]["environment"]["certificate_fingerprint"],
        tls::fingerprint(&a.cert).as_str()
    );

    // Moved: the old port refuses, the new one serves.
    let b = listen(&d);
    assert!(refused_soon(a.addr()), "old port {} still accepts", a.port);
    let (code, _) = b.call(None, "GET", "/1.0", None);
    assert_eq!(code, 200);
    let mut kept = b.connect(None);
    let (code, _) = request(&mut kept, "GET", "/1.0", None).expect("request");
    assert_eq!(code, 200);

    // A port in use: a clear error naming it, and the old listener (the same socket) serves on.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let inode = listener_inode(b.port).expect("listener in /proc/net/tcp");
    let (code, v) = set_config(&d, json!({"core.https_address": taken.to_string()}));
    assert_eq!(code, 400, "{v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(&taken.to_string()) && err.contains("in use"),
        "{v}"
    );
    assert_eq!(
        server_config(&d)["core.https_address"],
        format!("127.0.0.1:{}", b.port)
    );
    assert_eq!(
        listener_inode(b.port).as_deref(),
        Some(inode.as_str()),
        "the old listener was closed and made again"
    );
    let (code, _) = b.call(None, "GET", "/1.0", None);
    assert_eq!(code, 200);
    let (code, _) = request(&mut kept, "GET", "/1.0", None).expect("request");
    assert_eq!(code, 200, "an open connection was lost");
    drop(holder);
    // Nonsense is refused, and changes nothing.
    let (code, v) = set_config(&d, json!({"core.https_address": "not an address"}));
    assert_eq!(code, 400, "{v}");
    let (code, _) = b.call(None, "GET", "/1.0", None);
    assert_eq!(code, 200);

    // Unset: the port closes.
    let (code, v) = set_config(&d, json!({"core.https_address": ""}));
    assert_eq!(code, 200, "{v}");
    assert!(
        refused_soon(b.addr()),
        "port {} still accepts after unset",
        b.port
    );
    assert!(server_config(&d).get("core.https_address").is_none());
    let (_, v) = d.api("GET", "/1.0", None).expect("GET /1.0");
    assert_eq!(v["metadata"]["environment"]["addresses"], json!([]), "{v}");
}

// -------------------------------------------------------------------------------------------
// 8. pylxd over HTTPS

const PYLXD_SCRIPT: &str = r#"
import json, os, warnings
warnings.filterwarnings("ignore")
import urllib3
urllib3.disable_warnings()
from pylxd import Client
from pylxd.exceptions import LXDAPIException
c = Client(endpoint=os.environ["EP"], cert=(os.environ["CRT"], os.environ["KEY"]), verify=False)
out = {"before": c.trusted}
try:
    c.authenticate("not-the-password")
    out["wrong"] = "accepted"
except LXDAPIException as e:
    out["wrong"] = str(e)
out["after_wrong"] = c.trusted
c.authenticate(os.environ["PW"])
out["after"] = c.trusted
out["instances"] = sorted(i.name for i in c.instances.all())
out["status"] = c.instances.get("c1").status
out["images"] = sorted(i.fingerprint for i in c.images.all())
out["addresses"] = c.host_info["environment"]["addresses"]
print(json.dumps(out))
"#;

#[test]
fn pylxd_over_https() {
    if !common::require_root() {
        return;
    }
    let Some(py) = common::python() else {
        common::skip(
            &common::current_test_name(),
            "needs a python with pylxd 2.4.2 (target/pyvenv or BIVY_PYTHON)",
        );
        return;
    };
    let d = Daemon::start().expect("daemon");
    let r = listen(&d);
    let (code, v) = set_config(&d, json!({"core.trust_password": "py-pw"}));
    assert_eq!(code, 200, "{v}");
    let img = common::busybox_image();
    let fp = import(&d, &img, "busybox");
    d.ok(&["init", "busybox", "c1"]);
    let (crt, key) = tls::cert::generate(CertKind::Client).expect("key pair");
    let (crt_path, key_path) = (d.tmp().join("py.crt"), d.tmp().join("py.key"));
    std::fs::write(&crt_path, &crt).expect("write");
    std::fs::write(&key_path, &key).expect("write");

    let out = common::run_bounded(
        Command::new(py)
            .args(["-c", PYLXD_SCRIPT])
            .env("EP", format!("https://127.0.0.1:{}", r.port))
            .env("CRT", &crt_path)
            .env("KEY", &key_path)
            .env("PW", "py-pw")
            // requests lets these override `verify=False` on a session (psf/requests#3829).
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE"),
        Duration::from_secs(120),
    )
    .expect("python");
    assert!(
        out.status.success(),
        "pylxd failed: {}\ndaemon log:\n{}",
        text(&out),
        d.log_text()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("pylxd output {stdout:?}: {e}"));
    assert_eq!(v["before"], false, "{v}");
    assert!(
        v["wrong"]
            .as_str()
            .is_some_and(|w| w.contains("not authorized")),
        "{v}"
    );
    assert_eq!(v["after_wrong"], false, "{v}");
    assert_eq!(v["after"], true, "{v}");
    assert_eq!(v["instances"], json!(["c1"]), "{v}");
    assert_eq!(v["status"], "Stopped", "{v}");
    assert_eq!(v["images"], json!([fp]), "{v}");
    assert_eq!(
        v["addresses"],
        json!([format!("127.0.0.1:{}", r.port)]),
        "{v}"
    );
    let der = tls::pem_to_der(&crt).expect("pem");
    let certs = trusted_certs(&d);
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(certs[0].0, tls::fingerprint(&der));
}
