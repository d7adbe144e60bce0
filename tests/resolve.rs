//! Host name resolution without glibc's NSS (`bivy::net::resolve`), in a network namespace of
//! the test's own: a stub DNS server on its 127.0.0.1:53 (UDP and TCP), `resolv.conf` and
//! `hosts` files the test writes. Nothing reaches the host's resolver or the network.
//!
//! - `resolver_in_a_namespace`: the library's resolver given those files: `/etc/hosts` first,
//!   the search list, a truncated UDP reply asked again over TCP, NXDOMAIN named in the error,
//!   and `connect_tcp` by name.
//! - `cli_reaches_a_remote_by_name`: the static binary itself, with the files bind-mounted over
//!   `/etc/resolv.conf` and `/etc/hosts` in a mount namespace of its own, adds a remote by its
//!   DNS name (a daemon listening in the namespace) and talks to it.
//!
//! Root (namespaces, port 53, bind mounts).

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bivy::net::dns::{self, Answer, Message};
use bivy::net::resolve::Resolver;
use common::{Netns, TempDir};
use serde_json::json;

/// Run `f` on a thread that has entered `ns`'s network namespace (threads it spawns inherit it).
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/proc/{}/ns/net", ns.pid());
    std::thread::spawn(move || {
        let fd = File::open(&path).expect("open the namespace");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A DNS server on 127.0.0.1:53 of the namespace it is started in: A records from `zone`,
/// NXDOMAIN for other names; over UDP, names in `truncate` get an empty reply with TC set.
struct Stub {
    stop: Arc<AtomicBool>,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

fn answer(q: &Message, zone: &HashMap<String, Vec<Ipv4Addr>>) -> Vec<u8> {
    let qu = &q.questions[0];
    match zone.get(&qu.name()) {
        None => dns::build_reply(q, dns::RCODE_NXDOMAIN, true, &[]),
        Some(ips) if qu.qtype == dns::TYPE_A => {
            let answers: Vec<Answer> = ips.iter().map(|ip| Answer::a(*ip)).collect();
            dns::build_reply(q, dns::RCODE_NOERROR, true, &answers)
        }
        Some(_) => dns::build_reply(q, dns::RCODE_NOERROR, true, &[]),
    }
}

impl Stub {
    fn start(zone: HashMap<String, Vec<Ipv4Addr>>, truncate: &'static [&'static str]) -> Stub {
        let here = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
        let udp = UdpSocket::bind(here).expect("bind udp 127.0.0.1:53");
        let tcp = TcpListener::bind(here).expect("bind tcp 127.0.0.1:53");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (udp_queries, tcp_queries) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let zone = Arc::new(zone);
        let mut threads = Vec::new();
        {
            let (stop, n, zone) = (stop.clone(), udp_queries.clone(), zone.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(q) = Message::parse(&buf[..len]) else {
                        continue;
                    };
                    n.fetch_add(1, Ordering::Relaxed);
                    let mut r = answer(&q, &zone);
                    if truncate.contains(&q.questions[0].name().as_str()) {
                        r = dns::build_reply(&q, dns::RCODE_NOERROR, true, &[]);
                        r[2] |= 0x02;
                    }
                    let _ = udp.send_to(&r, from);
                }
            }));
        }
        {
            let (stop, n) = (stop.clone(), tcp_queries.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    while let Ok(raw) = dns::read_framed(&mut s) {
                        let Ok(q) = Message::parse(&raw) else { break };
                        n.fetch_add(1, Ordering::Relaxed);
                        if dns::write_framed(&mut s, &answer(&q, &zone)).is_err() {
                            break;
                        }
                    }
                }
            }));
        }
        Stub {
            stop,
            udp_queries,
            tcp_queries,
            threads,
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.udp_queries.load(Ordering::Relaxed),
            self.tcp_queries.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn write_files(dir: &Path) {
    std::fs::write(
        dir.join("resolv.conf"),
        "# the test's own\nnameserver 127.0.0.1\nsearch corp.internal\noptions timeout:2 attempts:1\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("hosts"),
        "127.0.0.1 localhost\n127.0.0.9 Pinned.internal pinned\n",
    )
    .unwrap();
}

fn zone() -> HashMap<String, Vec<Ipv4Addr>> {
    let mut z = HashMap::new();
    z.insert("origin.corp.internal".into(), vec![Ipv4Addr::LOCALHOST]);
    z.insert("pinned.internal".into(), vec![Ipv4Addr::new(127, 0, 0, 66)]);
    // More A records than fit in 512 bytes: only TCP carries them all.
    let many: Vec<Ipv4Addr> = (1..=60).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    z.insert("big.internal".into(), many);
    z
}

#[test]
fn resolver_in_a_namespace() {
    require!(root);
    require!(cmd "unshare");
    require!(cmd "nsenter");
    let ns = Netns::new().expect("network namespace");
    let tmp = TempDir::new().expect("temp dir");
    write_files(tmp.path());
    let dir = tmp.path().to_path_buf();
    in_netns(&ns, move || {
        let stub = Stub::start(zone(), &["big.internal"]);
        let r = Resolver::new(&dir.join("hosts"), &dir.join("resolv.conf"));

        // /etc/hosts first: the name is never asked.
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(r.lookup("PINNED").unwrap(), vec![ip("127.0.0.9")]);
        assert_eq!(r.lookup("pinned.internal.").unwrap(), vec![ip("127.0.0.9")]);
        assert_eq!(stub.counts(), (0, 0));

        // The search list: `origin` is origin.corp.internal (A, then AAAA: no record).
        assert_eq!(r.lookup("origin").unwrap(), vec![ip("127.0.0.1")]);
        assert_eq!(stub.counts(), (2, 0));

        // Truncated over UDP: asked again over TCP, all 60 addresses.
        let big = r.lookup("big.internal").unwrap();
        assert_eq!(big.len(), 60);
        assert_eq!(big[59], ip("127.0.1.60"));
        assert_eq!(stub.counts(), (4, 2));

        let e = r.lookup("nowhere.example").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no address for nowhere.example: NXDOMAIN from 127.0.0.1 \
             (names tried: nowhere.example, nowhere.example.corp.internal)"
        );

        // connect_tcp by name, to a listener in the namespace.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = r
            .connect_tcp("origin", port, Duration::from_secs(2))
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
        drop(l);
        let e = r
            .connect_tcp("origin", port, Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(e.to_string(), "origin at 127.0.0.1: connection refused");
    });
}

#[test]
fn cli_reaches_a_remote_by_name() {
    require!(root);
    require!(cmd "unshare");
    require!(cmd "nsenter");
    let ns = Netns::new().expect("network namespace");
    let d = common::Daemon::start_in(&ns, &[]).expect("daemon in the namespace");
    let port = in_netns(&ns, || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let body = json!({"config": {
        "core.https_address": format!("127.0.0.1:{port}"),
        "core.trust_password": "sekret",
    }});
    let (code, v) = d
        .api("PATCH", "/1.0", Some(&body.to_string()))
        .expect("PATCH /1.0");
    assert_eq!(code, 200, "listening: {v}");

    let tmp = TempDir::new().expect("temp dir");
    write_files(tmp.path());
    let conf = tmp.path().join("conf");
    let (resolv, hosts) = (tmp.path().join("resolv.conf"), tmp.path().join("hosts"));
    // The stub runs on a thread in the namespace while the client runs there too.
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let server = {
        let (stop, done) = (stop.clone(), done.clone());
        let path = format!("/proc/{}/ns/net", ns.pid());
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("open the namespace");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let stub = Stub::start(zone(), &[]);
            done.store(true, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            stub.counts()
        })
    };
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let bivy = |args: &[&str]| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", ns.pid()))
            .args(["--", "unshare", "--mount", "--", "sh", "-c"])
            .arg("mount --bind \"$R\" /etc/resolv.conf && mount --bind \"$H\" /etc/hosts && exec \"$@\"")
            .arg("sh")
            .arg(common::bivy_bin())
            .args(args)
            .env("R", &resolv)
            .env("H", &hosts)
            .env("BIVY_CONF", &conf)
            .env("BIVY_DIR", d.dir());
        common::run_bounded(&mut c, Duration::from_secs(60)).expect("run bivy")
    };
    let url = format!("https://origin:{port}");
    let add = bivy(&[
        "remote",
        "add",
        "far",
        &url,
        "--accept-certificate",
        "--password",
        "sekret",
    ]);
    let list = bivy(&["list", "far:", "-f", "csv"]);
    let missing = bivy(&[
        "remote",
        "add",
        "gone",
        "https://nowhere.example:8443",
        "--accept-certificate",
    ]);
    stop.store(true, Ordering::Relaxed);
    let (udp, _) = server.join().expect("stub thread");

    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(add.status.success(), "remote add by name: {}", text(&add));
    assert!(list.status.success(), "list far: {}", text(&list));
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no address for nowhere.example: NXDOMAIN from 127.0.0.1"),
        "{}",
        text(&missing)
    );
    // The client asked the stub (A and AAAA for origin.corp.internal at least).
    assert!(udp >= 2, "{udp} queries");
    // The host's own files were never touched.
    assert!(!std::fs::read_to_string("/etc/hosts")
        .unwrap()
        .contains("Pinned.internal"));
}
