//! `https://` image imports (LXD's direct-URL protocol over TLS) against a tiny HTTPS server in
//! this process: rustls on the server side, a throwaway CA and a server certificate for the IP
//! 127.0.0.1 made with the `openssl` command, the daemon trusting that CA through
//! `SSL_CERT_FILE`. Covers the REST call, `lxc image import https://...`, a hash that does not
//! match, a server certificate the daemon does not trust, and an `http://` server that points
//! the download at an `https://` one. Root (the daemon); skips loudly without `openssl`.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use common::tls::{make_certs, read_head, server_config};
use common::{Daemon, TempDir};

/// Serve up to `conns` connections on 127.0.0.1 (TLS when `tls` is set), one request each:
/// `respond(head, own_port)` makes the whole response. Stops after 90 s without enough
/// connections. Returns the port and a thread that yields each request head (or `ERROR ...`
/// for a connection that failed, a refused TLS handshake for one).
fn serve(
    tls: Option<Arc<ServerConfig>>,
    conns: usize,
    respond: impl Fn(&str, u16) -> Vec<u8> + Send + 'static,
) -> (u16, JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let start = Instant::now();
        while seen.len() < conns && start.elapsed() < Duration::from_secs(90) {
            let tcp = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            tcp.set_nonblocking(false).expect("blocking");
            tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
            tcp.set_write_timeout(Some(Duration::from_secs(30))).ok();
            let r = match &tls {
                Some(cfg) => {
                    let conn = ServerConnection::new(cfg.clone()).expect("server conn");
                    let mut s = StreamOwned::new(conn, tcp);
                    exchange(&mut s, port, &respond).and_then(|head| {
                        s.conn.send_close_notify();
                        s.flush()?;
                        Ok(head)
                    })
                }
                None => exchange(&mut { tcp }, port, &respond),
            };
            seen.push(r.unwrap_or_else(|e| format!("ERROR {e}")));
        }
        seen
    });
    (port, h)
}

fn exchange(
    s: &mut (impl Read + Write),
    port: u16,
    respond: &dyn Fn(&str, u16) -> Vec<u8>,
) -> std::io::Result<String> {
    let head = read_head(s)?;
    s.write_all(&respond(&head, port))?;
    s.flush()?;
    Ok(head)
}

/// The direct-URL protocol: `HEAD /meta` answers `hash` and `image_url` (`{port}` replaced by
/// the server's own port), any other request gets the image file.
fn lxd_direct(
    image: PathBuf,
    hash: String,
    image_url: String,
) -> impl Fn(&str, u16) -> Vec<u8> + Send + 'static {
    move |head, port| {
        if head.starts_with("HEAD /meta ") {
            let url = image_url.replace("{port}", &port.to_string());
            format!(
                "HTTP/1.1 200 OK\r\nLXD-Image-Hash: {hash}\r\nLXD-Image-URL: {url}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        } else {
            let data = std::fs::read(&image).expect("image");
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            )
            .into_bytes();
            out.extend_from_slice(&data);
            out
        }
    }
}

fn sha256_hex(path: &Path) -> String {
    let data = std::fs::read(path).expect("image");
    ring::digest::digest(&ring::digest::SHA256, &data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Root and `openssl`, or a recorded skip. The certificates in a fresh temp dir.
fn setup() -> Option<TempDir> {
    if !common::require_root() {
        return None;
    }
    if !common::have_cmd("openssl") {
        common::skip(
            &common::current_test_name(),
            "needs the openssl command (apt-get install openssl)",
        );
        return None;
    }
    let dir = TempDir::new().expect("temp dir");
    make_certs(dir.path());
    Some(dir)
}

fn start_daemon(ca: &Path) -> Daemon {
    Daemon::start_with(&[("SSL_CERT_FILE", ca.to_str().expect("utf-8 path"))]).expect("daemon")
}

/// `POST /1.0/images` with source type `url` (what `lxc image import URL` sends), waited for.
fn import_url(d: &Daemon, url: &str, alias: &str) -> serde_json::Value {
    let body = format!(
        r#"{{"source":{{"type":"url","mode":"pull","protocol":"direct","url":"{url}"}},"aliases":[{{"name":"{alias}"}}]}}"#
    );
    let (status, resp) = d.api("POST", "/1.0/images", Some(&body)).expect("POST");
    assert_eq!(status, 202, "{resp}");
    d.wait_operation(&resp).expect("operation")
}

fn image_count(d: &Daemon) -> usize {
    let (_, v) = d.api("GET", "/1.0/images", None).expect("GET images");
    v["metadata"].as_array().expect("image list").len()
}

#[test]
fn https_image_import_checks_hash_and_certificate() {
    let Some(dir) = setup() else { return };
    let img = common::busybox_image();
    let hash = sha256_hex(&img);
    let tls = server_config(dir.path());
    let d = start_daemon(&dir.path().join("ca.crt"));

    // The import, both requests over TLS.
    let (port, server) = serve(
        Some(tls.clone()),
        2,
        lxd_direct(
            img.clone(),
            hash.clone(),
            "https://127.0.0.1:{port}/busybox.tar.gz".into(),
        ),
    );
    let done = import_url(&d, &format!("https://127.0.0.1:{port}/meta"), "fromhttps");
    assert_eq!(
        done["metadata"]["status"],
        "Success",
        "{done}\n{}",
        d.log_text()
    );
    assert_eq!(done["metadata"]["metadata"]["fingerprint"], hash.as_str());
    let seen = server.join().expect("server");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("HEAD /meta HTTP/1.1\r\n"), "{seen:?}");
    let lower = seen[0].to_ascii_lowercase();
    assert!(
        lower.contains("lxd-server-architectures:") && lower.contains("lxd-server-version:"),
        "{seen:?}"
    );
    assert!(
        lower.contains(&format!("host: 127.0.0.1:{port}\r\n")),
        "{seen:?}"
    );
    assert!(
        seen[1].starts_with("GET /busybox.tar.gz HTTP/1.1\r\n"),
        "{seen:?}"
    );
    let (_, alias) = d
        .api("GET", "/1.0/images/aliases/fromhttps", None)
        .expect("alias");
    assert_eq!(alias["metadata"]["target"], hash.as_str(), "{alias}");
    assert_eq!(image_count(&d), 1);

    // A server that lies about the hash: refused, nothing left behind.
    let (port, server) = serve(
        Some(tls.clone()),
        2,
        lxd_direct(
            img.clone(),
            "0".repeat(64),
            "https://127.0.0.1:{port}/busybox.tar.gz".into(),
        ),
    );
    let done = import_url(&d, &format!("https://127.0.0.1:{port}/meta"), "liar");
    assert_eq!(done["metadata"]["status"], "Failure", "{done}");
    let _ = server.join();
    assert_eq!(image_count(&d), 1);
    let (status, _) = d
        .api("GET", "/1.0/images/aliases/liar", None)
        .expect("alias");
    assert_eq!(status, 404);
    drop(d);

    // A daemon that trusts another CA only: the handshake fails, naming the certificate problem.
    let d = start_daemon(&dir.path().join("other.crt"));
    let (port, server) = serve(
        Some(tls),
        1,
        lxd_direct(img, hash, "https://127.0.0.1:{port}/busybox.tar.gz".into()),
    );
    let done = import_url(&d, &format!("https://127.0.0.1:{port}/meta"), "untrusted");
    assert_eq!(done["metadata"]["status"], "Failure", "{done}");
    let err = done["metadata"]["err"].as_str().unwrap_or_default();
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{done}"
    );
    let seen = server.join().expect("server");
    assert!(seen.len() == 1 && seen[0].starts_with("ERROR"), "{seen:?}");
    assert_eq!(image_count(&d), 0);
}

/// The `http://` metadata server hands out an `https://` image URL on another port.
#[test]
fn http_metadata_can_point_at_an_https_image() {
    let Some(dir) = setup() else { return };
    let img = common::busybox_image();
    let hash = sha256_hex(&img);
    let d = start_daemon(&dir.path().join("ca.crt"));
    let (tls_port, tls_server) = serve(
        Some(server_config(dir.path())),
        1,
        lxd_direct(img.clone(), hash.clone(), String::new()),
    );
    let (port, server) = serve(
        None,
        1,
        lxd_direct(
            img,
            hash.clone(),
            format!("https://127.0.0.1:{tls_port}/images/busybox.tar.gz"),
        ),
    );
    let done = import_url(&d, &format!("http://127.0.0.1:{port}/meta"), "mixed");
    assert_eq!(
        done["metadata"]["status"],
        "Success",
        "{done}\n{}",
        d.log_text()
    );
    assert_eq!(done["metadata"]["metadata"]["fingerprint"], hash.as_str());
    let seen = server.join().expect("server");
    assert!(seen[0].starts_with("HEAD /meta "), "{seen:?}");
    let seen = tls_server.join().expect("tls server");
    assert!(
        seen[0].starts_with("GET /images/busybox.tar.gz "),
        "{seen:?}"
    );
}

/// The unmodified `lxc` 5.0.2 client: `lxc image import https://...` (it sends only https URLs).
#[test]
fn lxc_image_import_https_url() {
    if !common::lxc_prerequisites() {
        return;
    }
    let Some(dir) = setup() else { return };
    let img = common::busybox_image();
    let hash = sha256_hex(&img);
    let d = start_daemon(&dir.path().join("ca.crt"));
    let l = common::Lxc::new(&d);
    let (port, server) = serve(
        Some(server_config(dir.path())),
        2,
        lxd_direct(
            img,
            hash.clone(),
            "https://127.0.0.1:{port}/busybox.tar.gz".into(),
        ),
    );
    let out = l.ok(&[
        "image",
        "import",
        &format!("https://127.0.0.1:{port}/meta"),
        "--alias",
        "vialxc",
    ]);
    assert!(out.contains(&hash), "{out}");
    let _ = server.join();
    let list = l.ok(&["image", "list", "--format", "csv", "-c", "lF"]);
    assert!(list.contains(&format!("vialxc,{hash}")), "{list}");
}

/// A CONNECT proxy on 127.0.0.1 for `n` tunnels (or 60 s): answers 200 and relays bytes both
/// ways.
/// Returns the port and, at the end, the CONNECT lines it served.
fn connect_proxy(n: usize) -> (u16, JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let start = Instant::now();
        while seen.len() < n && start.elapsed() < Duration::from_secs(60) {
            let mut client = match l.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            client.set_nonblocking(false).expect("blocking");
            let head = read_head(&mut client).expect("CONNECT head");
            let first = head.lines().next().unwrap_or("").to_string();
            seen.push(first.clone());
            let authority = first.split(' ').nth(1).unwrap_or("").to_string();
            let origin = std::net::TcpStream::connect(&authority).expect("origin");
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .expect("200");
            let (mut c2, mut o2) = (
                client.try_clone().expect("clone"),
                origin.try_clone().expect("clone"),
            );
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut o2);
                let _ = o2.shutdown(std::net::Shutdown::Write);
            });
            let (mut origin, mut client) = (origin, client);
            let _ = std::io::copy(&mut origin, &mut client);
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = up.join();
        }
        seen
    });
    (port, h)
}

/// `core.proxy_https`: an `https://` download goes through a CONNECT tunnel, with TLS (and the
/// certificate check) end to end with the origin.
#[test]
fn https_import_through_a_connect_proxy() {
    let Some(dir) = setup() else { return };
    let img = common::busybox_image();
    let hash = sha256_hex(&img);
    let d = start_daemon(&dir.path().join("ca.crt"));
    let (tls_port, tls_server) = serve(
        Some(server_config(dir.path())),
        2,
        lxd_direct(
            img,
            hash.clone(),
            "https://127.0.0.1:{port}/busybox.tar.gz".into(),
        ),
    );
    let (proxy, tunnels) = connect_proxy(2);
    let (code, body) = d
        .api(
            "PATCH",
            "/1.0",
            Some(&format!(
                r#"{{"config":{{"core.proxy_https":"http://127.0.0.1:{proxy}"}}}}"#
            )),
        )
        .expect("PATCH /1.0");
    assert_eq!(code, 200, "{body}");
    let done = import_url(
        &d,
        &format!("https://127.0.0.1:{tls_port}/meta"),
        "tunnelled",
    );
    assert_eq!(
        done["metadata"]["status"],
        "Success",
        "{done}\n{}",
        d.log_text()
    );
    assert_eq!(done["metadata"]["metadata"]["fingerprint"], hash.as_str());
    let want = format!("CONNECT 127.0.0.1:{tls_port} HTTP/1.1");
    assert_eq!(tunnels.join().expect("proxy"), [want.clone(), want]);
    let seen = tls_server.join().expect("tls server");
    assert!(
        seen[0].starts_with("HEAD /meta ") && seen[1].starts_with("GET /busybox.tar.gz "),
        "{seen:?}"
    );
}
