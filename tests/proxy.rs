//! Proxy devices, end to end, each test in a network namespace of its own with its own daemon:
//! an HTTP server in a busybox container served on the namespace's loopback (many connections
//! at once, a port range), a UDP echo, `bind=instance` reaching a server on the host side, unix
//! sockets on both sides (owner, mode, a symlink that must not lead out of the container),
//! hot-plug and unplug, the listener closed at stop and made again by a daemon restarted after
//! `kill -9`, a taken port failing the start, and the refusals that make nothing.
//! Real containers, as root. No packet leaves the test's namespace.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Netns};

fn setup() -> Option<(Netns, Daemon)> {
    common::netns_daemon(&[])
}

/// Run `f` on a thread that joined the network namespace of `pid` (sockets made there stay
/// there).
fn in_netns<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns: OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .expect("open netns")
        .into();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

fn init_pid(d: &Daemon, ct: &str) -> u32 {
    let (_, v) = d
        .api("GET", &format!("/1.0/instances/{ct}/state"), None)
        .expect("state");
    v["metadata"]["pid"].as_u64().expect("pid") as u32
}

/// A running busybox container `ct` with an httpd on each of `ports` on its loopback, serving
/// `/www<PORT>`: "hello from CT" at `/` and "PORT" at `/port.html`.
fn web_container(d: &Daemon, ct: &str, ports: &[u16]) {
    d.ok(&["launch", "bb", ct]);
    let mut script = String::from("true");
    for p in ports {
        script.push_str(&format!(
            " && mkdir -p /www{p} && echo hello from {ct} > /www{p}/index.html && echo {p} > /www{p}/port.html && httpd -p 127.0.0.1:{p} -h /www{p}"
        ));
    }
    d.ok(&["exec", ct, "--", "sh", "-c", &script]);
}

/// `busybox wget -qO- URL` in the namespace: Some(body) or None when it failed.
fn wget(ns: &Netns, url: &str) -> Option<String> {
    let (ok, out) = ns.run("busybox", &["wget", "-qO-", url]);
    if !ok {
        eprintln!("wget {url}: {out}");
    }
    ok.then_some(out)
}

fn fails(d: &Daemon, args: &[&str], want: &str) {
    let out = d.run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "bivy {args:?} succeeded: {text}");
    assert!(
        text.contains(want),
        "bivy {args:?}: want {want:?} in {text:?}"
    );
}

/// Wait until connecting to `addr` in the namespace is refused (the listener is gone).
fn wait_refused(ns: &Netns, addr: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid = ns.pid();
        if in_netns(pid, move || TcpStream::connect(addr).is_err()) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} still accepts");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP/1.0 GET over an open stream; the response body.
fn http_get(s: &mut (impl Read + Write), path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

#[test]
fn http_server_in_a_container_served_on_the_host_loopback() {
    let Some((ns, d)) = setup() else { return };
    web_container(&d, "web", &[8080, 8001, 8002]);
    d.ok(&[
        "config",
        "device",
        "add",
        "web",
        "http",
        "proxy",
        "listen=tcp:127.0.0.1:18080",
        "connect=tcp:127.0.0.1:8080",
    ]);
    assert_eq!(
        wget(&ns, "http://127.0.0.1:18080/").as_deref(),
        Some("hello from web\n")
    );
    // Connections held open while many others come and go, all at once.
    let pid = ns.pid();
    let mut held: Vec<TcpStream> = in_netns(pid, || {
        (0..20)
            .map(|_| TcpStream::connect("127.0.0.1:18080").expect("connect"))
            .collect()
    });
    let ts: Vec<_> = (0..16)
        .map(|_| {
            let pid = ns.pid();
            std::thread::spawn(move || {
                in_netns(pid, || {
                    let mut s = TcpStream::connect("127.0.0.1:18080").expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    http_get(&mut s, "/")
                })
            })
        })
        .collect();
    for t in ts {
        assert_eq!(t.join().expect("client"), "hello from web\n");
    }
    for s in held.iter_mut().take(3) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(http_get(s, "/"), "hello from web\n");
    }
    // A port range mapped onto an equal range, and many ports onto one.
    d.ok(&[
        "config",
        "device",
        "add",
        "web",
        "range",
        "proxy",
        "listen=tcp:127.0.0.1:18001-18002",
        "connect=tcp:127.0.0.1:8001-8002",
    ]);
    d.ok(&[
        "config",
        "device",
        "add",
        "web",
        "many",
        "proxy",
        "listen=tcp:127.0.0.1:18101,18102",
        "connect=tcp:127.0.0.1:8001",
    ]);
    for (port, want) in [
        (18001, "8001"),
        (18002, "8002"),
        (18101, "8001"),
        (18102, "8001"),
    ] {
        assert_eq!(
            wget(&ns, &format!("http://127.0.0.1:{port}/port.html")).as_deref(),
            Some(format!("{want}\n").as_str()),
            "port {port}"
        );
    }
    // Removing the device closes its listener and the connections it relays.
    d.ok(&["config", "device", "remove", "web", "http"]);
    wait_refused(&ns, "127.0.0.1:18080");
    let mut s = held.pop().expect("held");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "a relayed connection outlived its device"
    );
    // The others stay.
    assert!(wget(&ns, "http://127.0.0.1:18001/").is_some());
    // Stopping the instance closes every listener of it.
    d.ok(&["stop", "-f", "web"]);
    wait_refused(&ns, "127.0.0.1:18001");
    wait_refused(&ns, "127.0.0.1:18101");
}

#[test]
fn udp_echo_into_a_container() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&["launch", "bb", "u1"]);
    // An echo server in the container's network namespace (the test's own socket, made there).
    let pid = init_pid(&d, "u1");
    let echo = in_netns(pid, || {
        UdpSocket::bind("127.0.0.1:9053").expect("bind in container")
    });
    std::thread::spawn(move || {
        let mut b = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut b) {
            let _ = echo.send_to(&b[..n], from);
        }
    });
    d.ok(&[
        "config",
        "device",
        "add",
        "u1",
        "dns",
        "proxy",
        "listen=udp:127.0.0.1:19053",
        "connect=udp:127.0.0.1:9053",
    ]);
    let nspid = ns.pid();
    let got: Vec<String> = in_netns(nspid, || {
        (0..3)
            .map(|i| {
                let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.send_to(format!("ping {i}").as_bytes(), "127.0.0.1:19053")
                    .expect("send");
                let mut b = [0u8; 100];
                let (n, _) = c.recv_from(&mut b).expect("echo back");
                String::from_utf8_lossy(&b[..n]).into_owned()
            })
            .collect()
    });
    assert_eq!(got, ["ping 0", "ping 1", "ping 2"]);
    d.ok(&["config", "device", "remove", "u1", "dns"]);
    // The port is free again in the namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_netns(nspid, || UdpSocket::bind("127.0.0.1:19053").is_err()) {
        assert!(Instant::now() < deadline, "udp listener still bound");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `busybox httpd` in the namespace (the host side) serving "from the host"; killed by pid.
struct HostHttpd {
    child: Child,
    _dir: common::TempDir,
}

impl HostHttpd {
    fn start(ns: &Netns, port: u16) -> HostHttpd {
        let dir = common::TempDir::new().expect("tmp");
        std::fs::write(dir.path().join("index.html"), "from the host\n").expect("page");
        let child = ns
            .cmd("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("httpd");
        let h = HostHttpd { child, _dir: dir };
        let pid = ns.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !in_netns(pid, move || TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            assert!(Instant::now() < deadline, "host httpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }
}

impl Drop for HostHttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bind_instance_and_unix_sockets_on_both_sides() {
    let Some((ns, d)) = setup() else { return };
    let _httpd = HostHttpd::start(&ns, 17000);
    web_container(&d, "b1", &[8080]);
    // Listening in the container, connecting on the host.
    d.ok(&[
        "config",
        "device",
        "add",
        "b1",
        "up",
        "proxy",
        "bind=instance",
        "listen=tcp:127.0.0.1:7000",
        "connect=tcp:127.0.0.1:17000",
    ]);
    let out = d.ok(&["exec", "b1", "--", "wget", "-qO-", "http://127.0.0.1:7000/"]);
    assert_eq!(out, "from the host\n");
    // Nothing listens on the host side's 7000.
    assert!(in_netns(ns.pid(), || TcpStream::connect("127.0.0.1:7000").is_err()));

    // A unix socket inside the container, owned by the container's root (mode 0644, LXD's
    // default), reaching the host's server.
    d.ok(&[
        "config",
        "device",
        "add",
        "b1",
        "sock",
        "proxy",
        "bind=instance",
        "listen=unix:/tmp/in.sock",
        "connect=tcp:127.0.0.1:17000",
    ]);
    let out = d.ok(&[
        "exec",
        "b1",
        "--",
        "stat",
        "-c",
        "%F %u:%g %a",
        "/tmp/in.sock",
    ]);
    assert_eq!(out.trim(), "socket 0:0 644");
    let pid = init_pid(&d, "b1");
    let mut s = UnixStream::connect(format!("/proc/{pid}/root/tmp/in.sock")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(http_get(&mut s, "/"), "from the host\n");
    // uid, gid and mode are the container's ids.
    d.ok(&[
        "config",
        "device",
        "add",
        "b1",
        "sock2",
        "proxy",
        "bind=instance",
        "listen=unix:/tmp/in2.sock",
        "connect=tcp:127.0.0.1:17000",
        "uid=1000",
        "gid=100",
        "mode=0660",
    ]);
    let out = d.ok(&[
        "exec",
        "b1",
        "--",
        "stat",
        "-c",
        "%u:%g %a",
        "/tmp/in2.sock",
    ]);
    assert_eq!(out.trim(), "1000:100 660");
    // A symlink in the container leads nowhere outside it: /tmp/evil -> /etc is the container's
    // /etc.
    d.ok(&["exec", "b1", "--", "ln", "-s", "/etc", "/tmp/evil"]);
    let host_path = std::path::Path::new("/etc/bivy-proxy-test.sock");
    assert!(!host_path.exists());
    d.ok(&[
        "config",
        "device",
        "add",
        "b1",
        "evil",
        "proxy",
        "bind=instance",
        "listen=unix:/tmp/evil/bivy-proxy-test.sock",
        "connect=tcp:127.0.0.1:17000",
    ]);
    assert!(!host_path.exists(), "a container symlink led to the host");
    d.ok(&[
        "exec",
        "b1",
        "--",
        "test",
        "-S",
        "/etc/bivy-proxy-test.sock",
    ]);
    // Removing the device removes its socket file.
    d.ok(&["config", "device", "remove", "b1", "sock"]);
    let out = d.run(&["exec", "b1", "--", "test", "-e", "/tmp/in.sock"]);
    assert!(!out.status.success(), "/tmp/in.sock outlived its device");

    // A unix socket on the host side relaying to the container's web server.
    let host_sock = d.tmp().join("web.sock");
    d.ok(&[
        "config",
        "device",
        "add",
        "b1",
        "hostsock",
        "proxy",
        &format!("listen=unix:{}", host_sock.display()),
        "connect=tcp:127.0.0.1:8080",
        "mode=0600",
    ]);
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(&host_sock).expect("host socket");
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let mut s = UnixStream::connect(&host_sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(http_get(&mut s, "/"), "hello from b1\n");
    d.ok(&["stop", "-f", "b1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while host_sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the host socket outlived the instance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_restarted_daemon_listens_again() {
    let Some((ns, mut d)) = setup() else { return };
    web_container(&d, "r1", &[8080]);
    d.ok(&[
        "config",
        "device",
        "add",
        "r1",
        "http",
        "proxy",
        "listen=tcp:127.0.0.1:18080",
        "connect=tcp:127.0.0.1:8080",
    ]);
    assert!(
        wget(&ns, "http://127.0.0.1:18080/").is_some(),
        "daemon log:\n{}",
        d.log_text()
    );
    d.kill9();
    // Down: nothing listens (the gap the README states).
    wait_refused(&ns, "127.0.0.1:18080");
    d.restart().expect("restart");
    assert_eq!(
        wget(&ns, "http://127.0.0.1:18080/").as_deref(),
        Some("hello from r1\n"),
        "daemon log:\n{}",
        d.log_text()
    );
    // A proxy on a stopped instance starts with it.
    d.ok(&["stop", "-f", "r1"]);
    wait_refused(&ns, "127.0.0.1:18080");
    d.ok(&["start", "r1"]);
    d.ok(&[
        "exec",
        "r1",
        "--",
        "httpd",
        "-p",
        "127.0.0.1:8080",
        "-h",
        "/www8080",
    ]);
    assert_eq!(
        wget(&ns, "http://127.0.0.1:18080/").as_deref(),
        Some("hello from r1\n")
    );
}

#[test]
fn a_taken_port_fails_the_start_and_bad_keys_make_nothing() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&["init", "bb", "t1"]);
    let base = ["config", "device", "add", "t1", "p", "proxy"];
    let bad = |extra: &[&str], want: &str| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        fails(&d, &a, want);
    };
    let l = "listen=tcp:127.0.0.1:18080";
    let c = "connect=tcp:127.0.0.1:8080";
    bad(&[l, c, "nat=true"], "not supported yet");
    bad(&[l, c, "proxy_protocol=true"], "not supported yet");
    bad(&[l, c, "security.uid=1000"], "not supported yet");
    bad(&[l, "connect=udp:127.0.0.1:53"], "not supported yet");
    bad(&[l], "Missing device option \"connect\"");
    bad(&["listen=tcp:localhost:80", c], "not an IP address");
    bad(&[l, "connect=tcp:127.0.0.1:1-2"], "Mismatch");
    bad(&[l, c, "bind=sideways"], "bind");
    bad(&[l, c, "mode=0600"], "non-abstract unix");
    bad(&[l, c, "color=blue"], "Invalid device option");
    let out = d.ok(&["config", "device", "list", "t1"]);
    assert!(
        !out.lines().any(|l| l.trim() == "p"),
        "a refused device was kept: {out}"
    );

    // A port already taken on the host side: the start fails, naming it, and the instance is
    // stopped again.
    let pid = ns.pid();
    let taken = in_netns(pid, || TcpListener::bind("127.0.0.1:18080").expect("bind"));
    d.ok(&["config", "device", "add", "t1", "p", "proxy", l, c]);
    fails(&d, &["start", "t1"], "127.0.0.1:18080");
    let (_, v) = d
        .api("GET", "/1.0/instances/t1/state", None)
        .expect("state");
    assert_eq!(v["metadata"]["status"], "Stopped", "{v}");
    drop(taken);
    d.ok(&["start", "t1"]);
    // Hot-plugging a device on a taken port fails and leaves the config as it was.
    let taken = in_netns(pid, || TcpListener::bind("127.0.0.1:18081").expect("bind"));
    fails(
        &d,
        &[
            "config",
            "device",
            "add",
            "t1",
            "q",
            "proxy",
            "listen=tcp:127.0.0.1:18081",
            c,
        ],
        "Address already in use",
    );
    drop(taken);
    let out = d.ok(&["config", "device", "list", "t1"]);
    assert!(!out.lines().any(|l| l.trim() == "q"), "{out}");
}

#[test]
fn a_profile_change_hot_plugs_into_its_running_instances() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&["profile", "create", "web"]);
    web_container(&d, "w1", &[8080]);
    web_container(&d, "w2", &[8080]);
    for ct in ["w1", "w2"] {
        d.ok(&["profile", "add", ct, "web"]);
    }
    // A proxy added to the profile is plugged into each running instance at once: both want
    // the same host port, so the second listener fails and the change is undone everywhere
    // (nothing listens, the profile is as it was).
    fails(
        &d,
        &[
            "profile",
            "device",
            "add",
            "web",
            "http",
            "proxy",
            "listen=tcp:127.0.0.1:18080",
            "connect=tcp:127.0.0.1:8080",
        ],
        "Address already in use",
    );
    wait_refused(&ns, "127.0.0.1:18080");
    let (_, v) = d.api("GET", "/1.0/profiles/web", None).expect("profile");
    assert!(
        v["metadata"]["devices"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{v}"
    );
    // With one instance on the profile it works, and removing it from the profile unplugs it.
    d.ok(&["profile", "remove", "w2", "web"]);
    d.ok(&[
        "profile",
        "device",
        "add",
        "web",
        "http",
        "proxy",
        "listen=tcp:127.0.0.1:18080",
        "connect=tcp:127.0.0.1:8080",
    ]);
    assert_eq!(
        wget(&ns, "http://127.0.0.1:18080/").as_deref(),
        Some("hello from w1\n")
    );
    d.ok(&["profile", "device", "remove", "web", "http"]);
    wait_refused(&ns, "127.0.0.1:18080");
}
