//! Pulling images from a simplestreams server (LXD's `images:` remotes): a tiny HTTPS server in
//! this process (rustls, a throwaway CA made with `openssl`, the daemon trusting it through
//! `SSL_CERT_FILE`) serves `streams/v1/index.json`, a products file, and the busybox test image
//! split at test time into `lxd.tar.xz` (metadata.yaml + templates/) and `root.tar.xz`.
//! Covers an instance create from the server (a cached image with `update_source`), an explicit
//! `POST /1.0/images` pull with an alias, a rootfs whose sha256 is wrong, `refresh`, and the
//! unmodified `lxc` client (`lxc remote add --protocol simplestreams`, `lxc launch ss:bb`).
//! Root; skips loudly without `openssl`, `tar` or `xz`.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use common::tls::{make_certs, read_head, server_config};
use common::{Daemon, TempDir};

fn run(dir: &Path, prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// An HTTPS static file server on 127.0.0.1 (a thread per connection, one request each) until
/// dropped. Requests are logged.
struct Server {
    port: u16,
    files: Files,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(tls: Arc<ServerConfig>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let files: Files = Arc::default();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (f2, l2, s2) = (files.clone(), log.clone(), stop.clone());
    std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            let tcp = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => return,
            };
            let (tls, files, log) = (tls.clone(), f2.clone(), l2.clone());
            std::thread::spawn(move || {
                tcp.set_nonblocking(false).ok();
                tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
                let conn = ServerConnection::new(tls).expect("server conn");
                let mut s = StreamOwned::new(conn, tcp);
                let Ok(head) = read_head(&mut s) else { return };
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .to_string();
                log.lock().unwrap().push(path.clone());
                let body = files.lock().unwrap().get(&path).cloned();
                let out = match body {
                    Some(b) => {
                        let mut o = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        )
                        .into_bytes();
                        o.extend_from_slice(&b);
                        o
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = s.write_all(&out);
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
    Server {
        port,
        files,
        log,
        stop,
    }
}

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The busybox image split: (metadata tarball, rootfs tarball), both xz, made in `dir`. The
/// metadata gets `extra` appended to metadata.yaml's properties (a different image).
fn split_image(dir: &Path, extra: &str) -> (Vec<u8>, Vec<u8>) {
    let work = dir.join(format!("split{}", extra.len()));
    std::fs::create_dir_all(&work).expect("mkdir");
    let img = common::busybox_image();
    run(
        &work,
        "tar",
        &["--numeric-owner", "-xzf", img.to_str().expect("utf-8 path")],
    );
    if !extra.is_empty() {
        let y = work.join("metadata.yaml");
        let mut text = std::fs::read_to_string(&y).expect("metadata.yaml");
        text.push_str(&format!("\n# {extra}\n"));
        std::fs::write(&y, text).expect("metadata.yaml");
    }
    let mut meta_args = vec!["--numeric-owner", "-cJf", "meta.tar.xz", "metadata.yaml"];
    if work.join("templates").is_dir() {
        meta_args.push("templates");
    }
    run(&work, "tar", &meta_args);
    run(
        &work,
        "tar",
        &[
            "--numeric-owner",
            "-cJf",
            "root.tar.xz",
            "-C",
            "rootfs",
            ".",
        ],
    );
    (
        std::fs::read(work.join("meta.tar.xz")).expect("meta"),
        std::fs::read(work.join("root.tar.xz")).expect("root"),
    )
}

fn stream_arch() -> String {
    let out = Command::new("uname").arg("-m").output().expect("uname");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "ppc64le" => "ppc64el".into(),
        other => other.into(),
    }
}

/// One version: name, metadata tarball, rootfs tarball, the rootfs sha256 to announce (None:
/// the right one).
type Version<'a> = (&'a str, &'a [u8], &'a [u8], Option<String>);

/// Publish `versions` as product `bb` (aliases `bb`, `busybox/1`); their fingerprints.
fn publish(srv: &Server, versions: &[Version<'_>]) -> Vec<String> {
    let mut files = srv.files.lock().unwrap();
    let mut vers = serde_json::Map::new();
    let mut fps = Vec::new();
    for (name, meta, root, root_sha) in versions {
        let mp = format!("images/bb/{name}/lxd.tar.xz");
        let rp = format!("images/bb/{name}/root.tar.xz");
        files.insert(format!("/{mp}"), meta.to_vec());
        files.insert(format!("/{rp}"), root.to_vec());
        let mut both = meta.to_vec();
        both.extend_from_slice(root);
        let fp = sha256(&both);
        fps.push(fp.clone());
        vers.insert(
            name.to_string(),
            serde_json::json!({"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": mp, "sha256": sha256(meta),
                    "size": meta.len(), "combined_sha256": fp, "combined_rootxz_sha256": fp},
                "root.tar.xz": {"ftype": "root.tar.xz", "path": rp,
                    "sha256": root_sha.clone().unwrap_or_else(|| sha256(root)),
                    "size": root.len()},
            }}),
        );
    }
    let arch = stream_arch();
    let products = serde_json::json!({
        "content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
        "products": {format!("busybox:1:{arch}:default"): {
            "aliases": "bb,busybox/1", "arch": arch, "os": "Busybox", "release": "1",
            "release_title": "one", "variant": "default", "versions": vers}}
    });
    let index = serde_json::json!({"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json",
        "format": "products:1.0", "products": [format!("busybox:1:{arch}:default")]}}});
    files.insert(
        "/streams/v1/images.json".into(),
        serde_json::to_vec(&products).unwrap(),
    );
    files.insert(
        "/streams/v1/index.json".into(),
        serde_json::to_vec(&index).unwrap(),
    );
    fps
}

/// Root, `openssl`, `tar` and `xz`, or a recorded skip. The certificates in a fresh temp dir.
fn setup() -> Option<TempDir> {
    if !common::require_root() {
        return None;
    }
    for prog in ["openssl", "tar", "xz"] {
        if !common::have_cmd(prog) {
            common::skip(
                &common::current_test_name(),
                &format!("needs the {prog} command"),
            );
            return None;
        }
    }
    let dir = TempDir::new().expect("temp dir");
    make_certs(dir.path());
    Some(dir)
}

fn start_daemon(dir: &Path) -> Daemon {
    let ca = dir.join("ca.crt");
    Daemon::start_with(&[("SSL_CERT_FILE", ca.to_str().expect("utf-8 path"))]).expect("daemon")
}

fn call(d: &Daemon, method: &str, path: &str, body: &str) -> serde_json::Value {
    let (status, resp) = d
        .api(
            method,
            path,
            if body.is_empty() { None } else { Some(body) },
        )
        .expect("api");
    assert!(status < 300, "{method} {path}: {status} {resp}");
    if resp["type"] == "async" {
        let done = d.wait_operation(&resp).expect("operation");
        assert_eq!(
            done["metadata"]["status"],
            "Success",
            "{method} {path}: {done}\n{}",
            d.log_text()
        );
        done
    } else {
        resp
    }
}

fn images(d: &Daemon) -> Vec<serde_json::Value> {
    let (_, v) = d
        .api("GET", "/1.0/images?recursion=1", None)
        .expect("images");
    v["metadata"].as_array().cloned().unwrap_or_default()
}

#[test]
fn simplestreams_pull_launch_copy_refresh() {
    let Some(dir) = setup() else { return };
    let (meta, root) = split_image(dir.path(), "");
    let srv = serve(server_config(dir.path()));
    let server = format!("https://127.0.0.1:{}", srv.port);
    let fps = publish(&srv, &[("20240101_0000", &meta, &root, None)]);
    let fp = fps[0].clone();
    let mut d = start_daemon(dir.path());

    // (a) An instance from the server: the image is pulled, cached, with its update source.
    let body = format!(
        r#"{{"name":"c1","source":{{"type":"image","mode":"pull","server":"{server}","protocol":"simplestreams","alias":"bb"}}}}"#
    );
    call(&d, "POST", "/1.0/instances", &body);
    call(
        &d,
        "PUT",
        "/1.0/instances/c1/state",
        r#"{"action":"start","timeout":30}"#,
    );
    let inst = call(&d, "GET", "/1.0/instances/c1", "");
    assert_eq!(inst["metadata"]["status"], "Running", "{inst}");
    assert_eq!(
        inst["metadata"]["config"]["volatile.base_image"],
        fp.as_str()
    );
    let list = images(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    let img = &list[0];
    assert_eq!(img["fingerprint"], fp.as_str(), "{img}");
    assert_eq!(img["cached"], true, "{img}");
    assert_eq!(img["update_source"]["protocol"], "simplestreams", "{img}");
    assert_eq!(img["update_source"]["server"], server.as_str(), "{img}");
    assert_eq!(img["update_source"]["alias"], "bb", "{img}");
    assert_ne!(img["last_used_at"], "0001-01-01T00:00:00Z", "{img}");
    call(
        &d,
        "PUT",
        "/1.0/instances/c1/state",
        r#"{"action":"stop","force":true,"timeout":30}"#,
    );
    call(&d, "DELETE", "/1.0/instances/c1", "");

    // (b) An explicit pull with an alias: the same image, no longer cached, no new download.
    let fetched = srv.log.lock().unwrap().len();
    let body = format!(
        r#"{{"source":{{"type":"image","mode":"pull","server":"{server}","protocol":"simplestreams","alias":"busybox/1"}},"aliases":[{{"name":"mybb"}}],"auto_update":true}}"#
    );
    let done = call(&d, "POST", "/1.0/images", &body);
    assert_eq!(done["metadata"]["metadata"]["fingerprint"], fp.as_str());
    let log = srv.log.lock().unwrap().clone();
    assert!(
        !log[fetched..].iter().any(|p| p.ends_with(".tar.xz")),
        "{log:?}"
    );
    let a = call(&d, "GET", "/1.0/images/aliases/mybb", "");
    assert_eq!(a["metadata"]["target"], fp.as_str());
    let img = call(&d, "GET", &format!("/1.0/images/{fp}"), "");
    assert_eq!(img["metadata"]["cached"], false, "{img}");

    // refresh: nothing newer, then a new version (alias moves, old image goes).
    let done = call(&d, "POST", &format!("/1.0/images/{fp}/refresh"), "");
    assert_eq!(done["metadata"]["metadata"]["refreshed"], false, "{done}");
    let (meta2, _) = split_image(dir.path(), "version 2");
    let fps = publish(
        &srv,
        &[
            ("20240101_0000", &meta, &root, None),
            ("20240202_0000", &meta2, &root, None),
        ],
    );
    let done = call(&d, "POST", &format!("/1.0/images/{fp}/refresh"), "");
    assert_eq!(done["metadata"]["metadata"]["refreshed"], true, "{done}");
    let a = call(&d, "GET", "/1.0/images/aliases/mybb", "");
    assert_eq!(a["metadata"]["target"], fps[1].as_str());
    let list = images(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["fingerprint"], fps[1].as_str());
    call(&d, "DELETE", &format!("/1.0/images/{}", fps[1]), "");

    // (c) A rootfs that is not what the stream says: refused, nothing left behind.
    publish(
        &srv,
        &[("20240303_0000", &meta, &root, Some("0".repeat(64)))],
    );
    let body = format!(
        r#"{{"source":{{"type":"image","mode":"pull","server":"{server}","protocol":"simplestreams","alias":"bb"}}}}"#
    );
    let (status, resp) = d.api("POST", "/1.0/images", Some(&body)).expect("POST");
    assert_eq!(status, 202, "{resp}");
    let done = d.wait_operation(&resp).expect("operation");
    assert_eq!(done["metadata"]["status"], "Failure", "{done}");
    let err = done["metadata"]["err"].as_str().unwrap_or_default();
    assert!(err.contains("sha256"), "{done}");
    assert!(images(&d).is_empty());

    // Cached-image expiry: a cached image unused for longer than `images.remote_cache_expiry`
    // days (default 10) is deleted; the check runs at daemon start and hourly.
    let fps = publish(&srv, &[("20240404_0000", &meta, &root, None)]);
    let body = format!(
        r#"{{"name":"c3","source":{{"type":"image","mode":"pull","server":"{server}","protocol":"simplestreams","alias":"bb"}}}}"#
    );
    call(&d, "POST", "/1.0/instances", &body);
    call(&d, "DELETE", "/1.0/instances/c3", "");
    let img = call(&d, "GET", &format!("/1.0/images/{}", fps[0]), "");
    assert_eq!(img["metadata"]["cached"], true, "{img}");
    d.stop();
    let rec = d.dir().join("images").join(format!("{}.json", fps[0]));
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rec).expect("image record")).expect("json");
    v["last_used_at"] = "2000-01-01T00:00:00Z".into();
    v["uploaded_at"] = "2000-01-01T00:00:00Z".into();
    std::fs::write(&rec, serde_json::to_vec(&v).unwrap()).expect("write record");
    d.restart().expect("restart");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !images(&d).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(images(&d).is_empty(), "{:?}\n{}", images(&d), d.log_text());

    // A protocol no image server speaks is refused before anything is done.
    let body = format!(
        r#"{{"source":{{"type":"image","mode":"pull","server":"{server}","protocol":"ftp","alias":"bb"}}}}"#
    );
    let (status, resp) = d.api("POST", "/1.0/images", Some(&body)).expect("POST");
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap_or("")
            .contains("Unsupported image server protocol"),
        "{resp}"
    );
}

/// The unmodified `lxc` client: a simplestreams remote and `lxc launch ss:bb`.
#[test]
fn lxc_launch_from_simplestreams_remote() {
    if !common::lxc_prerequisites() {
        return;
    }
    let Some(dir) = setup() else { return };
    let (meta, root) = split_image(dir.path(), "");
    let srv = serve(server_config(dir.path()));
    let fps = publish(&srv, &[("20240101_0000", &meta, &root, None)]);
    let d = start_daemon(dir.path());
    let l = common::Lxc::new(&d);
    let ca = dir.path().join("ca.crt");
    let lxc = |args: &[&str]| {
        let mut c = l.cmd(args);
        c.env("SSL_CERT_FILE", &ca);
        let out = common::run_bounded(&mut c, Duration::from_secs(300)).expect("run lxc");
        assert!(
            out.status.success(),
            "lxc {args:?}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    lxc(&[
        "remote",
        "add",
        "ss",
        &format!("https://127.0.0.1:{}", srv.port),
        "--protocol",
        "simplestreams",
        "--public",
    ]);
    let list = lxc(&["image", "list", "ss:", "--format", "csv", "-c", "lf"]);
    assert!(list.contains("bb"), "{list}");
    lxc(&["launch", "ss:bb", "c2"]);
    let info = lxc(&["list", "c2", "--format", "csv", "-c", "ns"]);
    assert!(info.contains("c2,RUNNING"), "{info}");
    let imgs = lxc(&["image", "list", "--format", "csv", "-c", "F"]);
    assert!(imgs.contains(&fps[0]), "{imgs}");
    lxc(&[
        "image",
        "copy",
        "ss:busybox/1",
        "local:",
        "--alias",
        "copied",
    ]);
    let a = lxc(&["image", "alias", "list", "--format", "csv"]);
    assert!(a.contains("copied"), "{a}");
    lxc(&["delete", "--force", "c2"]);
}

/// bivy's own client: a simplestreams remote, `bivy launch ss:bb` and `bivy image copy`; the
/// daemon pulls, the client only names the server and the alias.
#[test]
fn bivy_launch_from_simplestreams_remote() {
    if !common::require_root() {
        return;
    }
    let Some(dir) = setup() else { return };
    let (meta, root) = split_image(dir.path(), "");
    let srv = serve(server_config(dir.path()));
    let fps = publish(&srv, &[("20240101_0000", &meta, &root, None)]);
    let d = start_daemon(dir.path());
    let url = format!("https://127.0.0.1:{}", srv.port);
    d.ok(&["remote", "add", "ss", &url, "--protocol", "simplestreams"]);
    assert!(d
        .ok(&["remote", "list", "-f", "csv"])
        .contains(&format!("ss,{url},simplestreams,none,YES,NO,NO\n")));
    let out = d.run(&["image", "list", "ss:"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported yet"),
        "{out:?}"
    );
    d.ok(&["launch", "ss:bb", "c2"]);
    assert_eq!(d.ok(&["list", "-c", "ns", "-f", "csv"]), "c2,RUNNING\n");
    assert!(d
        .ok(&["image", "list", "-c", "F", "-f", "csv"])
        .contains(&fps[0]));
    d.ok(&[
        "image",
        "copy",
        "ss:busybox/1",
        "local:",
        "--alias",
        "copied",
    ]);
    let a = d.ok(&["image", "alias", "list", "-f", "csv"]);
    assert!(a.contains("copied"), "{a}");
    d.ok(&["delete", "--force", "c2"]);
}
