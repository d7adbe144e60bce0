//! Unit tests of the resolver: the files it reads, the names it asks, how replies are matched
//! and followed, against stub servers on 127.0.0.1 (random ports; nothing leaves the host).

use super::*;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

// ---- resolv.conf and /etc/hosts ----

#[test]
fn resolv_conf_is_parsed_as_glibc_reads_it() {
    let c = ResolvConf::parse(
        "# comment\n; other comment\nnameserver 10.0.0.1\nnameserver 10.0.0.1\n\
         nameserver fe80::1%eth0\nnameserver 0.0.0.0\nnameserver 2001:db8::53 # trailing\n\
         nameserver bogus\ndomain one.example\nsearch a.example b.example. bad..name\n\
         options ndots:3 timeout:0 attempts:9 edns0 rotate\n",
        "host.local.example",
    );
    assert_eq!(
        c.nameservers,
        vec![
            "10.0.0.1:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        ]
    );
    // The last of `domain`/`search` wins; a trailing dot is dropped, a bad name skipped.
    assert_eq!(c.search, ["a.example", "b.example"]);
    assert_eq!(c.ndots, 3);
    assert_eq!(c.timeout, Duration::from_secs(1));
    assert_eq!(c.attempts, 5);
    assert!(c.edns0);
    assert!(!c.use_vc);

    let d = ResolvConf::parse(
        "search x.example\ndomain y.example\noptions use-vc ndots:99 timeout:99",
        "h",
    );
    assert_eq!(d.search, ["y.example"]);
    assert!(d.use_vc);
    assert_eq!((d.ndots, d.timeout), (15, Duration::from_secs(30)));
}

#[test]
fn defaults_and_the_host_names_domain() {
    let c = ResolvConf::parse("", "box.lan.example");
    assert_eq!(c.search, ["lan.example"]);
    assert_eq!((c.ndots, c.attempts), (1, 2));
    assert_eq!(c.timeout, Duration::from_secs(5));
    assert_eq!(c.servers(), vec!["127.0.0.1:53".parse().unwrap()]);
    assert!(ResolvConf::parse("", "box").search.is_empty());
    // `search .` (systemd-resolved writes it) means no search domain.
    assert!(ResolvConf::parse("search .", "box.lan.example")
        .search
        .is_empty());
    let four = ResolvConf::parse(
        "nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4",
        "",
    );
    assert_eq!(four.nameservers.len(), 4);
    assert_eq!(four.servers().len(), MAX_SERVERS);
}

#[test]
fn names_asked_follow_ndots_and_the_search_list() {
    let c = ResolvConf::parse("search a.example b.example", "");
    assert_eq!(
        c.candidates("www"),
        ["www.a.example", "www.b.example", "www"]
    );
    assert_eq!(
        c.candidates("www.org"),
        ["www.org", "www.org.a.example", "www.org.b.example"]
    );
    assert_eq!(c.candidates("www.org."), ["www.org"]);
    let n2 = ResolvConf::parse("search a.example\noptions ndots:2", "");
    assert_eq!(n2.candidates("www.org"), ["www.org.a.example", "www.org"]);
    assert_eq!(ResolvConf::parse("", "").candidates("solo"), ["solo"]);
}

#[test]
fn hosts_entries_match_whole_names_ignoring_case() {
    let h = Hosts::parse(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost # both\n\
         10.1.1.1   Web.Example web   # comment\n# 10.9.9.9 web.example\n\
         fe80::1%eth0 zoned\nnot-an-ip broken\n10.1.1.2 web.example\n10.1.1.1 web.example\n",
    );
    assert_eq!(
        h.lookup("localhost"),
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST)
        ]
    );
    let web = vec![IpAddr::from([10, 1, 1, 1]), IpAddr::from([10, 1, 1, 2])];
    assert_eq!(h.lookup("WEB.example"), web);
    assert_eq!(h.lookup("web.example."), web);
    assert_eq!(h.lookup("web"), vec![IpAddr::from([10, 1, 1, 1])]);
    assert!(h.lookup("example").is_empty());
    assert!(h.lookup("eb.example").is_empty());
    assert!(h.lookup("zoned").is_empty());
    assert!(h.lookup("broken").is_empty());
}

#[test]
fn literals_and_invalid_names() {
    assert_eq!(
        literal("10.0.0.1").unwrap(),
        Some("10.0.0.1:0".parse().unwrap())
    );
    assert_eq!(literal("::1").unwrap(), Some("[::1]:0".parse().unwrap()));
    let Some(SocketAddr::V6(z)) = literal("fe80::1%7").unwrap() else {
        panic!("no zone");
    };
    assert_eq!(z.scope_id(), 7);
    let Some(SocketAddr::V6(lo)) = literal("fe80::1%lo").unwrap() else {
        panic!("no zone");
    };
    assert_eq!(lo.scope_id(), 1);
    let e = literal("fe80::1%no-such-if0").unwrap_err();
    assert!(e.to_string().contains("no interface"), "{e}");
    assert_eq!(literal("example.org").unwrap(), None);

    let conf = ResolvConf::default();
    for bad in [
        "",
        ".",
        "a..b",
        "has space",
        "x:y",
        &"a".repeat(64),
        &"a.".repeat(128),
    ] {
        let e = lookup_name(&Hosts::default(), &conf, bad).unwrap_err();
        assert!(
            e.to_string().contains("not a valid host name"),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn localhost_without_a_hosts_entry() {
    let conf = ResolvConf::default();
    let lo = vec![
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ];
    assert_eq!(
        lookup_name(&Hosts::default(), &conf, "localhost").unwrap(),
        lo
    );
    assert_eq!(
        lookup_name(&Hosts::default(), &conf, "a.LocalHost.").unwrap(),
        lo
    );
    let h = Hosts::parse("127.0.1.1 localhost");
    assert_eq!(
        lookup_name(&h, &conf, "localhost").unwrap(),
        vec![IpAddr::from([127, 0, 1, 1])]
    );
}

// ---- replies ----

/// A record for a reply: owner, type, data (names in data written uncompressed).
struct Rr(&'static str, u16, Vec<u8>);

fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in name.split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn a(owner: &'static str, ip: [u8; 4]) -> Rr {
    Rr(owner, TYPE_A, ip.to_vec())
}

fn aaaa(owner: &'static str, ip: &str) -> Rr {
    Rr(
        owner,
        TYPE_AAAA,
        ip.parse::<Ipv6Addr>().unwrap().octets().to_vec(),
    )
}

fn cname(owner: &'static str, target: &str) -> Rr {
    Rr(owner, TYPE_CNAME, wire_name(target))
}

/// A reply to query `q` (its id and question) with `flags` (QR added) and `answers`.
fn reply(q: &Message, flags: u16, answers: &[Rr]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&q.header.id.to_be_bytes());
    b.extend_from_slice(&(0x8180 | flags).to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    let qu = &q.questions[0];
    b.extend_from_slice(&wire_name(&qu.name()));
    b.extend_from_slice(&qu.qtype.to_be_bytes());
    b.extend_from_slice(&qu.qclass.to_be_bytes());
    for Rr(owner, t, data) in answers {
        b.extend_from_slice(&wire_name(owner));
        b.extend_from_slice(&t.to_be_bytes());
        b.extend_from_slice(&CLASS_IN.to_be_bytes());
        b.extend_from_slice(&300u32.to_be_bytes());
        b.extend_from_slice(&(data.len() as u16).to_be_bytes());
        b.extend_from_slice(data);
    }
    b
}

fn query_msg(id: u16, name: &str, qtype: u16) -> Message {
    Message::parse(&dns::build_query(
        id,
        &dns::labels_of(name).unwrap(),
        qtype,
        None,
    ))
    .unwrap()
}

fn server() -> SocketAddr {
    "10.0.0.1:53".parse().unwrap()
}

fn answer_of(name: &str, qtype: u16, rrs: &[Rr]) -> Result<Outcome, String> {
    let q = query_msg(1, name, qtype);
    let raw = reply(&q, 0, rrs);
    let m = Message::parse(&raw).unwrap();
    answer(
        &m,
        &raw,
        &dns::labels_of(name).unwrap(),
        qtype,
        server(),
        &mut MAX_CNAMES.clone(),
    )
}

fn found(addrs: &[&str], next: Option<&str>) -> Outcome {
    Outcome::Found {
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        next: next.map(|n| dns::labels_of(n).unwrap()),
        server: server(),
    }
}

#[test]
fn replies_must_answer_the_query_asked() {
    let q = query_msg(0x1234, "www.example", TYPE_A);
    let good = reply(&q, 0, &[a("www.example", [1, 2, 3, 4])]);
    let question = &q.questions[0];
    assert!(matches(&good, 0x1234, question).is_some());
    // The name's case may differ (0x20 randomisation, servers echoing it differently).
    let upper = reply(&query_msg(0x1234, "WWW.Example", TYPE_A), 0, &[]);
    assert!(matches(&upper, 0x1234, question).is_some());
    assert!(matches(&good, 0x1235, question).is_none(), "other id");
    let other_name = reply(&query_msg(0x1234, "evil.example", TYPE_A), 0, &[]);
    assert!(
        matches(&other_name, 0x1234, question).is_none(),
        "other name"
    );
    let other_type = reply(&query_msg(0x1234, "www.example", TYPE_AAAA), 0, &[]);
    assert!(
        matches(&other_type, 0x1234, question).is_none(),
        "other type"
    );
    let q_bytes = dns::build_query(0x1234, &question.labels, TYPE_A, None);
    assert!(
        matches(&q_bytes, 0x1234, question).is_none(),
        "a query, not a reply"
    );
    assert!(
        matches(&good[..good.len() - 3], 0x1234, question).is_none(),
        "truncated"
    );
    assert!(matches(&[], 0x1234, question).is_none());
}

#[test]
fn answers_follow_the_cname_chain_and_nothing_else() {
    // Records of other names (poisoning attempts) are ignored.
    assert_eq!(
        answer_of(
            "www.example",
            TYPE_A,
            &[
                a("evil.example", [6, 6, 6, 6]),
                cname("www.example", "web.cdn.example"),
                a("other.example", [6, 6, 6, 7]),
                cname("web.cdn.example", "edge.cdn.example"),
                a("EDGE.cdn.example", [1, 2, 3, 4]),
                a("edge.cdn.example", [1, 2, 3, 5]),
                aaaa("edge.cdn.example", "2001:db8::1"),
            ]
        ),
        Ok(found(&["1.2.3.4", "1.2.3.5"], None))
    );
    assert_eq!(
        answer_of(
            "www.example",
            TYPE_AAAA,
            &[aaaa("www.example", "2001:db8::1")]
        ),
        Ok(found(&["2001:db8::1"], None))
    );
    // NODATA, and a chain the reply does not finish: its end is asked next.
    assert_eq!(answer_of("www.example", TYPE_A, &[]), Ok(found(&[], None)));
    assert_eq!(
        answer_of(
            "www.example",
            TYPE_A,
            &[cname("www.example", "far.example")]
        ),
        Ok(found(&[], Some("far.example")))
    );
    // A wrong-sized address is no address.
    assert_eq!(
        answer_of(
            "www.example",
            TYPE_A,
            &[Rr("www.example", TYPE_A, vec![1, 2, 3])]
        ),
        Ok(found(&[], None))
    );
    // A loop ends at the limit.
    let e = answer_of(
        "a.example",
        TYPE_A,
        &[
            cname("a.example", "b.example"),
            cname("b.example", "a.example"),
        ],
    )
    .unwrap_err();
    assert!(e.contains("CNAME chain longer than 8"), "{e}");
}

#[test]
fn a_compressed_cname_target_is_read_from_the_message() {
    let q = query_msg(1, "a.test", TYPE_A);
    // Target: "b" then a pointer to the question's name (offset 12): b.a.test.
    let mut raw = reply(&q, 0, &[Rr("a.test", TYPE_CNAME, vec![1, b'b', 0xc0, 12])]);
    raw[7] = 2;
    raw.extend_from_slice(&[1, b'b', 0xc0, 12]);
    raw.extend_from_slice(&TYPE_A.to_be_bytes());
    raw.extend_from_slice(&CLASS_IN.to_be_bytes());
    raw.extend_from_slice(&[0, 0, 0, 60, 0, 4, 9, 8, 7, 6]);
    let m = Message::parse(&raw).unwrap();
    let out = answer(
        &m,
        &raw,
        &dns::labels_of("a.test").unwrap(),
        TYPE_A,
        server(),
        &mut 8,
    );
    assert_eq!(out, Ok(found(&["9.8.7.6"], None)));
}

// ---- against stub servers ----

/// What a stub server does with one query: datagrams to send back.
type Handler = dyn Fn(&Message) -> Vec<Vec<u8>> + Send + Sync;

/// A DNS server on 127.0.0.1 (UDP, and TCP on the same port), answering with handlers and
/// recording the names asked.
struct Stub {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Stub {
    fn start(udp: Box<Handler>, tcp: Option<Box<Handler>>) -> Stub {
        let (sock, listener) = loop {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            match TcpListener::bind(sock.local_addr().unwrap()) {
                Ok(l) => break (sock, l),
                Err(_) => continue,
            }
        };
        let addr = sock.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (asked, stop) = (asked.clone(), stop.clone());
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let q = Message::parse(&buf[..n]).unwrap();
                    asked
                        .lock()
                        .unwrap()
                        .push(format!("udp {}", q.questions[0].name()));
                    for r in udp(&q) {
                        sock.send_to(&r, from).unwrap();
                    }
                }
            }));
        }
        if let Some(tcp) = tcp {
            let (asked, stop) = (asked.clone(), stop.clone());
            listener.set_nonblocking(true).unwrap();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    let q = Message::parse(&dns::read_framed(&mut s).unwrap()).unwrap();
                    asked
                        .lock()
                        .unwrap()
                        .push(format!("tcp {}", q.questions[0].name()));
                    for r in tcp(&q) {
                        dns::write_framed(&mut s, &r).unwrap();
                    }
                    s.flush().unwrap();
                }
            }));
        }
        Stub {
            addr,
            asked,
            stop,
            threads,
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
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

fn conf(servers: &[SocketAddr]) -> ResolvConf {
    ResolvConf {
        nameservers: servers.to_vec(),
        timeout: Duration::from_secs(1),
        attempts: 1,
        ..ResolvConf::default()
    }
}

/// A handler answering from a table of name → records, NXDOMAIN for names not in it.
fn zone(table: &'static [(&'static str, &'static [(u16, &'static str)])]) -> Box<Handler> {
    Box::new(move |q| {
        let qu = &q.questions[0];
        let Some((_, rrs)) = table.iter().find(|(n, _)| *n == qu.name()) else {
            return vec![reply(q, u16::from(dns::RCODE_NXDOMAIN), &[])];
        };
        let rrs: Vec<Rr> = rrs
            .iter()
            .filter(|(t, _)| *t == qu.qtype || *t == TYPE_CNAME)
            .map(|(t, v)| match *t {
                TYPE_A => Rr(
                    table_name(table, qu),
                    TYPE_A,
                    v.parse::<Ipv4Addr>().unwrap().octets().to_vec(),
                ),
                TYPE_AAAA => aaaa(table_name(table, qu), v),
                _ => cname(table_name(table, qu), v),
            })
            .collect();
        vec![reply(q, 0, &rrs)]
    })
}

fn table_name(
    table: &'static [(&'static str, &'static [(u16, &'static str)])],
    q: &Question,
) -> &'static str {
    table
        .iter()
        .find(|(n, _)| *n == q.name())
        .map(|(n, _)| *n)
        .unwrap()
}

const ZONE: &[(&str, &[(u16, &str)])] = &[
    (
        "www.example",
        &[
            (TYPE_A, "192.0.2.1"),
            (TYPE_AAAA, "2001:db8::1"),
            (TYPE_A, "192.0.2.2"),
        ],
    ),
    ("v6only.example", &[(TYPE_AAAA, "2001:db8::6")]),
    ("alias.example", &[(TYPE_CNAME, "www.example")]),
    ("host.corp.example", &[(TYPE_A, "192.0.2.9")]),
    ("empty.example", &[]),
];

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn a_then_aaaa_from_the_server() {
    let stub = Stub::start(zone(ZONE), None);
    let c = conf(&[stub.addr]);
    let got = lookup_name(&Hosts::default(), &c, "www.example").unwrap();
    assert_eq!(got, ips(&["192.0.2.1", "192.0.2.2", "2001:db8::1"]));
    assert_eq!(stub.asked(), ["udp www.example", "udp www.example"]);
    assert_eq!(
        lookup_name(&Hosts::default(), &c, "v6only.example").unwrap(),
        ips(&["2001:db8::6"])
    );
    // The CNAME the server leaves unfinished is asked for (the zone answers one link only).
    assert_eq!(
        lookup_name(&Hosts::default(), &c, "alias.example").unwrap(),
        ips(&["192.0.2.1", "192.0.2.2", "2001:db8::1"])
    );
    assert!(stub.asked().ends_with(&[
        "udp alias.example".to_string(),
        "udp www.example".to_string(),
        "udp alias.example".to_string(),
        "udp www.example".to_string()
    ]));
}

#[test]
fn hosts_file_comes_first() {
    let stub = Stub::start(zone(ZONE), None);
    let h = Hosts::parse("10.7.7.7 www.example\n");
    assert_eq!(
        lookup_name(&h, &conf(&[stub.addr]), "WWW.example").unwrap(),
        ips(&["10.7.7.7"])
    );
    assert!(stub.asked().is_empty());
}

#[test]
fn errors_name_the_host_and_the_server() {
    let stub = Stub::start(zone(ZONE), None);
    let c = conf(&[stub.addr]);
    let e = lookup_name(&Hosts::default(), &c, "nope.example").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        format!("no address for nope.example: NXDOMAIN from {}", stub.addr)
    );
    // NXDOMAIN for A: AAAA is not asked.
    assert_eq!(stub.asked(), ["udp nope.example"]);
    let e = lookup_name(&Hosts::default(), &c, "empty.example").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no address for empty.example: no A or AAAA record from {}",
            stub.addr
        )
    );
    assert_eq!(server_name(server()), "10.0.0.1");
}

#[test]
fn search_domains_are_tried_in_order() {
    let stub = Stub::start(zone(ZONE), None);
    let mut c = conf(&[stub.addr]);
    c.search = vec!["lan.example".into(), "corp.example".into()];
    assert_eq!(
        lookup_name(&Hosts::default(), &c, "host").unwrap(),
        ips(&["192.0.2.9"])
    );
    assert_eq!(
        stub.asked(),
        [
            "udp host.lan.example",
            "udp host.corp.example",
            "udp host.corp.example"
        ]
    );
    let e = lookup_name(&Hosts::default(), &c, "gone").unwrap_err();
    assert!(
        e.to_string()
            .ends_with("(names tried: gone.lan.example, gone.corp.example, gone)"),
        "{e}"
    );
}

#[test]
fn stray_and_forged_replies_are_skipped() {
    // Before the real answer: a reply with another id, one for another name, one for another
    // type, a query, and garbage. Only the matching reply counts.
    let stub = Stub::start(
        Box::new(|q| {
            let mut other_id = q.clone();
            other_id.header.id = q.header.id.wrapping_add(1);
            let qu = &q.questions[0];
            let other_name = query_msg(q.header.id, "evil.example", qu.qtype);
            let other_type = query_msg(q.header.id, &qu.name(), dns::TYPE_ANY);
            // The forged answers carry addresses of their own, each for the name asked.
            let ip = |last: u8| match qu.qtype {
                TYPE_A => a("www.example", [192, 0, 2, last]),
                _ => aaaa("www.example", &format!("2001:db8::{last}")),
            };
            // The good reply with QR cleared: a query.
            let mut query = reply(q, 0, &[ip(4)]);
            query[2] &= 0x7f;
            vec![
                reply(&other_id, 0, &[ip(1)]),
                reply(&other_name, 0, &[ip(2)]),
                reply(&other_type, 0, &[ip(3)]),
                query,
                vec![0xff; 7],
                reply(q, 0, &[ip(7)]),
            ]
        }),
        None,
    );
    let got = lookup_name(&Hosts::default(), &conf(&[stub.addr]), "www.example").unwrap();
    assert_eq!(got, ips(&["192.0.2.7", "2001:db8::7"]));
}

#[test]
fn truncated_replies_are_asked_again_over_tcp() {
    let stub = Stub::start(Box::new(|q| vec![reply(q, 0x0200, &[])]), Some(zone(ZONE)));
    let got = lookup_name(&Hosts::default(), &conf(&[stub.addr]), "www.example").unwrap();
    assert_eq!(got, ips(&["192.0.2.1", "192.0.2.2", "2001:db8::1"]));
    assert_eq!(
        stub.asked(),
        [
            "udp www.example",
            "tcp www.example",
            "udp www.example",
            "tcp www.example"
        ]
    );
    // `use-vc`: TCP only.
    let mut c = conf(&[stub.addr]);
    c.use_vc = true;
    let before = stub.asked().len();
    lookup_name(&Hosts::default(), &c, "www.example").unwrap();
    assert_eq!(
        stub.asked()[before..],
        ["tcp www.example", "tcp www.example"]
    );
}

#[test]
fn a_failing_or_silent_server_passes_to_the_next() {
    let failing = Stub::start(
        Box::new(|q| vec![reply(q, u16::from(dns::RCODE_SERVFAIL), &[])]),
        None,
    );
    let silent = Stub::start(Box::new(|_| Vec::new()), None);
    let good = Stub::start(zone(ZONE), None);
    let c = conf(&[failing.addr, silent.addr, good.addr]);
    let got = lookup_name(&Hosts::default(), &c, "v6only.example").unwrap();
    assert_eq!(got, ips(&["2001:db8::6"]));
    assert_eq!(failing.asked().len(), 2);
    assert_eq!(silent.asked().len(), 2);

    let e = lookup_name(&Hosts::default(), &conf(&[failing.addr]), "www.example").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("no address for www.example: SERVFAIL from {}", failing.addr)
    );
    // No server replies: the other names of the search list and AAAA are not asked.
    let mut c = conf(&[silent.addr]);
    c.search = vec!["lan.example".into()];
    let before = silent.asked().len();
    let e = lookup_name(&Hosts::default(), &c, "www").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no address for www: no answer from {} within 1 s (1 attempt)",
            silent.addr
        )
    );
    assert_eq!(silent.asked()[before..], ["udp www.lan.example"]);
}

#[test]
fn connect_by_name_from_the_files() {
    let dir = std::env::temp_dir().join(format!("bivy-resolve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    let resolv = dir.join("resolv.conf");
    std::fs::write(&hosts, "127.0.0.1 origin.test\n").unwrap();
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let r = Resolver::new(&hosts, &resolv);

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s = r
        .connect_tcp("origin.test", port, Duration::from_secs(2))
        .unwrap();
    assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
    let s = r
        .connect_tcp("127.0.0.1", port, Duration::from_secs(2))
        .unwrap();
    assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
    drop(l);
    let e = r
        .connect_tcp("origin.test", port, Duration::from_secs(2))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(
        e.to_string(),
        "origin.test at 127.0.0.1: connection refused"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
