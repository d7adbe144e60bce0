//! The daemon's DHCPv4 and DNS servers (`bivy::net::{dhcp,dns}`) against real clients, in
//! network namespaces this test makes (with `ip` from iproute2; the product code never runs it):
//! a "server" namespace with a bridge and a veth port, a "client" namespace with the peer.
//! busybox's `udhcpc` gets, renews and re-gets addresses; a static lease gives its fixed address;
//! a second interface of the server namespace that is not the bridge gets no answer. DNS answers
//! instance names from the leases, forwards the rest to a stub resolver on the server namespace's
//! loopback (never the host's resolvers), over UDP and TCP, retries on the next upstream, and a
//! taken port is an `AddrInUse` error naming it. A client of another MAC cannot take an instance's
//! name. Every namespace, process and file is removed.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bivy::net::dhcp::{DhcpConfig, DhcpServer};
use bivy::net::dns::{DnsConfig, DnsServer, Message};
use bivy::net::leases::{LeaseStore, StaticLease};

const CLIENT_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x77, 0x00, 0x01];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and processes of one test, removed on drop.
struct Lab {
    tag: String,
    netns: Vec<String>,
    children: Vec<Child>,
    dir: common::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab {
            tag: format!("bivy-{tag}-{}", std::process::id()),
            netns: Vec::new(),
            children: Vec::new(),
            dir: common::TempDir::new().unwrap(),
        }
    }

    fn ns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.tag);
        ip_cmd(&["netns", "add", &name]);
        self.netns.push(name.clone());
        ip_cmd(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Server namespace with bridge `br0` (10.77.0.1/24) and port `vh0`; client namespace with
    /// `vc0` (CLIENT_MAC). Returns (server, client).
    fn bridge_pair(&mut self) -> (String, String) {
        let s = self.ns("s");
        let c = self.ns("c");
        ip_cmd(&["-n", &s, "link", "add", "br0", "type", "bridge"]);
        ip_cmd(&[
            "-n", &s, "link", "add", "vh0", "type", "veth", "peer", "name", "vc0", "netns", &c,
        ]);
        ip_cmd(&["-n", &s, "link", "set", "vh0", "master", "br0", "up"]);
        ip_cmd(&["-n", &s, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        ip_cmd(&["-n", &s, "link", "set", "br0", "up"]);
        let mac = bivy::net::netlink::format_mac(CLIENT_MAC);
        ip_cmd(&["-n", &c, "link", "set", "vc0", "address", &mac, "up"]);
        (s, c)
    }

    /// A udhcpc script that records `EVENT IP` lines in `events` and configures the address.
    fn script(&self) -> (PathBuf, PathBuf) {
        let events = self.dir.path().join("events");
        let script = self.dir.path().join("udhcpc.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n  bound|renew) busybox ip addr flush dev \"$interface\"; busybox ip addr add \"$ip/$mask\" dev \"$interface\";;\nesac\necho \"$1 $ip\" >> {}\n",
                events.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        (script, events)
    }

    fn udhcpc(&self, ns: &str, ifname: &str, extra: &[&str]) -> Command {
        let (script, _) = self.script();
        let mut c = Command::new("ip");
        c.args([
            "netns", "exec", ns, "busybox", "udhcpc", "-i", ifname, "-f", "-s",
        ])
        .arg(script)
        .args(extra)
        .stdin(Stdio::null());
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Run `f` on a thread that entered network namespace `ns` (the test's own thread is left as
/// it is).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn events(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// One lease with udhcpc -n -q: the address bound.
fn one_shot(lab: &Lab, ns: &str, ifname: &str) -> Option<Ipv4Addr> {
    let (_, ev) = lab.script();
    let _ = std::fs::remove_file(&ev);
    let out = common::run_bounded(
        &mut lab.udhcpc(ns, ifname, &["-n", "-q", "-t", "3", "-T", "1"]),
        Duration::from_secs(20),
    )
    .unwrap();
    if !out.status.success() {
        return None;
    }
    events(&ev)
        .iter()
        .find_map(|l| l.strip_prefix("bound ").map(|ip| ip.parse().unwrap()))
}

fn dhcp_config() -> DhcpConfig {
    DhcpConfig {
        ifname: "br0".into(),
        server: SERVER_IP,
        prefix: 24,
        ranges: vec![(Ipv4Addr::new(10, 77, 0, 10), Ipv4Addr::new(10, 77, 0, 20))],
        lease_secs: 3600,
        router: Some(SERVER_IP),
        dns: Some(SERVER_IP),
        domain: "bivy".into(),
        mtu: None,
    }
}

#[test]
fn dhcp_with_udhcpc() {
    require!(root);
    require!(cmd "ip");
    require!(cmd "busybox");
    let mut lab = Lab::new("dhcp");
    let (s, c) = lab.bridge_pair();
    // A second, unmanaged interface of the server namespace, to a third namespace.
    let o = lab.ns("o");
    ip_cmd(&[
        "-n", &s, "link", "add", "vx0", "type", "veth", "peer", "name", "vo0", "netns", &o,
    ]);
    ip_cmd(&["-n", &s, "addr", "add", "10.78.0.1/24", "dev", "vx0"]);
    ip_cmd(&["-n", &s, "link", "set", "vx0", "up"]);
    ip_cmd(&["-n", &o, "link", "set", "vo0", "up"]);

    let lease_file = lab.dir.path().join("leases.json");
    let store = Arc::new(Mutex::new(LeaseStore::open(&lease_file).unwrap()));
    let st = store.clone();
    let server = in_netns(&s, move || DhcpServer::start(dhcp_config(), st)).unwrap();

    // A lease from the range, kept in foreground; the host name is recorded.
    let (_, ev) = lab.script();
    let child = lab
        .udhcpc(&c, "vc0", &["-x", "hostname:c1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    lab.children.push(child);
    wait_for("a bound event", Duration::from_secs(20), || {
        events(&ev).iter().any(|l| l.starts_with("bound "))
    });
    let bound: Ipv4Addr = events(&ev)
        .iter()
        .find_map(|l| l.strip_prefix("bound ").map(|ip| ip.parse().unwrap()))
        .unwrap();
    assert!((10..=20).contains(&bound.octets()[3]), "{bound}");
    let first_expiry = {
        let st = store.lock().unwrap();
        let l = st.leases();
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].mac, l[0].ip, l[0].hostname.as_str()),
            (CLIENT_MAC, bound, "c1")
        );
        assert_eq!(st.lookup_name("c1"), vec![bound]);
        l[0].expires
    };
    // Persisted.
    let on_disk = LeaseStore::open(&lease_file).unwrap().leases();
    assert_eq!(on_disk.len(), 1);

    // Renewal (SIGUSR1: a REQUEST from RENEWING, unicast, ciaddr set): same address.
    std::thread::sleep(Duration::from_millis(1100));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    wait_for("a renew event", Duration::from_secs(20), || {
        events(&ev).iter().any(|l| l.starts_with("renew "))
    });
    assert!(
        events(&ev).contains(&format!("renew {bound}")),
        "{:?}",
        events(&ev)
    );
    let renewed = store.lock().unwrap().leases()[0].expires;
    assert!(renewed > first_expiry, "{renewed} > {first_expiry}");
    let mut child = lab.children.pop().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // Malformed packets are counted and ignored.
    let before = server.malformed();
    in_netns(&c, || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_broadcast(true).unwrap();
        u.send_to(b"junk", "10.77.0.1:67").unwrap();
        u.send_to(&[1u8; 300], "10.77.0.1:67").unwrap();
    });
    wait_for("malformed count", Duration::from_secs(5), || {
        server.malformed() >= before + 2
    });

    // A new client run (no client-side state) gets its previous address back.
    assert_eq!(one_shot(&lab, &c, "vc0"), Some(bound));

    // A static lease: the fixed address, the instance name.
    store
        .lock()
        .unwrap()
        .set_static(vec![StaticLease {
            mac: CLIENT_MAC,
            ip: Some(Ipv4Addr::new(10, 77, 0, 50)),
            hostname: "inst1".into(),
        }])
        .unwrap();
    assert_eq!(
        one_shot(&lab, &c, "vc0"),
        Some(Ipv4Addr::new(10, 77, 0, 50))
    );
    assert_eq!(
        store.lock().unwrap().lookup_name("inst1"),
        vec![Ipv4Addr::new(10, 77, 0, 50)]
    );

    // Nothing answers on the interface that is not the bridge.
    assert_eq!(one_shot(&lab, &o, "vo0"), None);

    // Stopping is quick and frees the port.
    let t = Instant::now();
    server.stop();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(one_shot(&lab, &c, "vc0"), None);
}

#[test]
fn dhcp_bind_failure_names_port_and_interface() {
    require!(root);
    require!(cmd "ip");
    let mut lab = Lab::new("dhcpbind");
    let s = lab.ns("s");
    let store = Arc::new(Mutex::new(LeaseStore::in_memory()));
    let e = in_netns(&s, move || {
        let mut cfg = dhcp_config();
        cfg.ifname = "nosuch0".into();
        DhcpServer::start(cfg, store).err().unwrap()
    });
    let m = e.to_string();
    assert!(m.contains("nosuch0") && m.contains("67"), "{m}");
}

/// A stub upstream resolver on loopback: answers every A query with 192.0.2.99, over UDP and
/// TCP; counts queries.
struct Stub {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn stub_answer(q: &[u8]) -> Vec<u8> {
    let mut r = q.to_vec();
    r[2] |= 0x80;
    r[3] = 0x80;
    r[6..8].copy_from_slice(&1u16.to_be_bytes());
    r[10..12].copy_from_slice(&0u16.to_be_bytes());
    // Keep only header + question (drop any OPT record).
    let mut end = 12;
    while r[end] != 0 {
        end += 1 + r[end] as usize;
    }
    r.truncate(end + 5);
    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99]);
    r
}

impl Stub {
    /// Start in the calling thread's namespace.
    fn start() -> Stub {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    c.fetch_add(1, Ordering::SeqCst);
                    let _ = udp.send_to(&stub_answer(&buf[..n]), from);
                }
                if let Ok((mut t, _)) = tcp.accept() {
                    t.set_nonblocking(false).unwrap();
                    let mut len = [0u8; 2];
                    if t.read_exact(&mut len).is_ok() {
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if t.read_exact(&mut q).is_ok() {
                            c.fetch_add(1, Ordering::SeqCst);
                            let r = stub_answer(&q);
                            let mut out = (r.len() as u16).to_be_bytes().to_vec();
                            out.extend_from_slice(&r);
                            let _ = t.write_all(&out);
                        }
                    }
                }
            }
        });
        Stub { addr, count, stop }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    b
}

fn udp_ask(server: SocketAddr, id: u16, name: &str) -> Message {
    let u = UdpSocket::bind("0.0.0.0:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    u.send_to(&query(id, name), server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = u.recv_from(&mut buf).expect("a DNS reply");
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.header.id, id);
    m
}

fn tcp_ask(server: SocketAddr, id: u16, name: &str) -> Message {
    let mut t = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let q = query(id, name);
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&q);
    t.write_all(&out).unwrap();
    let mut len = [0u8; 2];
    t.read_exact(&mut len).unwrap();
    let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut r).unwrap();
    Message::parse(&r).unwrap()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter(|r| r.rtype == 1 && r.rdata.len() == 4)
        .map(|r| Ipv4Addr::new(r.rdata[0], r.rdata[1], r.rdata[2], r.rdata[3]))
        .collect()
}

#[test]
fn dns_answers_and_forwards() {
    require!(root);
    require!(cmd "ip");
    require!(cmd "busybox");
    let mut lab = Lab::new("dns");
    let (s, c) = lab.bridge_pair();
    ip_cmd(&["-n", &c, "addr", "add", "10.77.0.5/24", "dev", "vc0"]);
    let mut store = LeaseStore::in_memory();
    store
        .commit(CLIENT_MAC, Ipv4Addr::new(10, 77, 0, 5), "c1", u64::MAX / 2)
        .unwrap();
    let store = Arc::new(Mutex::new(store));
    let dns = SocketAddr::from((SERVER_IP, 53));

    let st = store.clone();
    let (server, stub) = in_netns(&s, move || {
        let stub = Stub::start();
        // The first upstream is dead (a closed port): each query is retried on the stub.
        let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let cfg = DnsConfig {
            listen: SERVER_IP.into(),
            port: 53,
            ifname: "br0".into(),
            domain: "bivy".into(),
            gateway: SERVER_IP,
            // Our own address is dropped from the upstreams (no loop).
            upstreams: vec![dead_addr, stub.addr, dns],
            local_names: true,
        };
        let server = DnsServer::start(cfg, st, None).unwrap();
        assert_eq!(server.upstreams(), &[dead_addr, stub.addr]);
        (server, stub)
    });

    let stub_count = stub.count.clone();
    in_netns(&s, move || {
        // Local names, UDP and TCP, case-insensitive.
        let m = udp_ask(dns, 1, "C1.bivy");
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 77, 0, 5)]);
        assert_eq!(
            a_records(&tcp_ask(dns, 2, "c1.bivy")),
            vec![Ipv4Addr::new(10, 77, 0, 5)]
        );
        assert_eq!(
            a_records(&udp_ask(dns, 3, "_gateway.bivy")),
            vec![SERVER_IP]
        );
        assert_eq!(udp_ask(dns, 4, "nope.bivy").header.rcode(), 3);
        assert_eq!(stub_count.load(Ordering::SeqCst), 0);
        // Forwarded, UDP and TCP.
        let m = udp_ask(dns, 5, "example.test");
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(192, 0, 2, 99)]);
        assert_eq!(
            a_records(&tcp_ask(dns, 6, "example.test")),
            vec![Ipv4Addr::new(192, 0, 2, 99)]
        );
        assert_eq!(stub_count.load(Ordering::SeqCst), 2);
        // Concurrent clients with the same id each get their own answer.
        let socks: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
            .collect();
        for (i, u) in socks.iter().enumerate() {
            u.send_to(&query(77, &format!("host{i}.example.test")), dns)
                .unwrap();
        }
        for (i, u) in socks.iter().enumerate() {
            u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 512];
            let (n, _) = u.recv_from(&mut buf).unwrap();
            let m = Message::parse(&buf[..n]).unwrap();
            assert_eq!(m.header.id, 77);
            assert_eq!(m.questions[0].name(), format!("host{i}.example.test"));
        }
    });

    // A real client from the client namespace.
    let nslookup = |args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &c, "busybox", "nslookup"])
            .args(args)
            .arg("10.77.0.1");
        let out = common::run_bounded(&mut cmd, Duration::from_secs(15)).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = nslookup(&["-type=a", "c1.bivy"]);
    assert!(text.contains("10.77.0.5"), "{text}");
    // And back: the lease's address names it (a PTR record, as dnsmasq answers for LXD).
    let text = nslookup(&["10.77.0.5"]);
    assert!(text.contains("c1.bivy"), "{text}");

    // The port taken: AddrInUse naming the address and this process.
    let st = store.clone();
    let e = in_netns(&s, move || {
        DnsServer::start(
            DnsConfig {
                listen: SERVER_IP.into(),
                port: 53,
                ifname: "br0".into(),
                domain: "bivy".into(),
                gateway: SERVER_IP,
                upstreams: vec![],
                local_names: true,
            },
            st,
            None,
        )
        .err()
        .unwrap()
    });
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    let m = e.to_string();
    assert!(m.contains("10.77.0.1:53"), "{m}");
    assert!(
        m.contains(&format!("process {}", std::process::id())),
        "{m}"
    );

    // Stopped: quickly, and the port is free again.
    let t = Instant::now();
    server.stop();
    assert!(t.elapsed() < Duration::from_secs(3));
    in_netns(&s, move || {
        UdpSocket::bind(dns).unwrap();
        TcpListener::bind(dns).unwrap();
    });
    drop(stub);
}

#[test]
fn an_instance_name_is_its_own_nics_only() {
    require!(root);
    require!(cmd "ip");
    require!(cmd "busybox");
    let mut lab = Lab::new("names");
    let (s, c) = lab.bridge_pair();
    // Instance c2 (running or stopped: only its NIC's MAC matters), whose MAC is not the client's.
    let c2 = StaticLease {
        mac: [0x00, 0x16, 0x3e, 0x77, 0x00, 0x02],
        ip: Some(Ipv4Addr::new(10, 77, 0, 52)),
        hostname: "c2".into(),
    };
    let mut store = LeaseStore::in_memory();
    store.set_static(vec![c2.clone()]).unwrap();
    let store = Arc::new(Mutex::new(store));
    let dns = SocketAddr::from((SERVER_IP, 53));
    let (st, st2) = (store.clone(), store.clone());
    let (dhcp, server) = in_netns(&s, move || {
        let cfg = DnsConfig {
            listen: SERVER_IP.into(),
            port: 53,
            ifname: "br0".into(),
            domain: "bivy".into(),
            gateway: SERVER_IP,
            upstreams: vec![],
            local_names: true,
        };
        (
            DhcpServer::start(dhcp_config(), st).unwrap(),
            DnsServer::start(cfg, st2, None).unwrap(),
        )
    });
    let lease = |lab: &Lab, name: &str| {
        let (_, ev) = lab.script();
        let _ = std::fs::remove_file(&ev);
        let host = format!("hostname:{name}");
        let out = common::run_bounded(
            &mut lab.udhcpc(&c, "vc0", &["-n", "-q", "-t", "3", "-T", "1", "-x", &host]),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    // A made-up MAC asking for c2's name gets an address but not the name.
    lease(&lab, "c2");
    let ask = |name: &'static str| in_netns(&s, move || a_records(&udp_ask(dns, 9, name)));
    assert_eq!(ask("c2.bivy"), vec![Ipv4Addr::new(10, 77, 0, 52)]);
    // A name no instance has yet is the client's, until an instance of that name comes.
    lease(&lab, "c9");
    let taken = ask("c9.bivy");
    assert_eq!(taken.len(), 1, "{taken:?}");
    let c9 = StaticLease {
        mac: [0x00, 0x16, 0x3e, 0x77, 0x00, 0x09],
        ip: Some(Ipv4Addr::new(10, 77, 0, 59)),
        hostname: "C9".into(),
    };
    store.lock().unwrap().set_static(vec![c2, c9]).unwrap();
    assert_eq!(ask("c9.bivy"), vec![Ipv4Addr::new(10, 77, 0, 59)]);
    // The lease itself stays, without a name.
    let leases = store.lock().unwrap().leases();
    assert!(
        leases
            .iter()
            .any(|l| l.mac == CLIENT_MAC && l.ip == taken[0] && l.hostname.is_empty()),
        "{leases:?}"
    );
    server.stop();
    dhcp.stop();
}
