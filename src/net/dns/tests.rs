//! Unit tests of the DNS packet code, the local answers, forwarding bookkeeping and limits.

use super::*;

/// A query for `name` of type `qtype`, id `id`, optionally with an EDNS OPT record.
pub fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&0x0100u16.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&CLASS_IN.to_be_bytes());
    if edns {
        b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    b
}

fn lookup(n: &str) -> Vec<IpAddr> {
    match n {
        "c1" => vec![IpAddr::V4(Ipv4Addr::new(10, 9, 0, 5))],
        "v6" => vec![
            IpAddr::V4(Ipv4Addr::new(10, 9, 0, 7)),
            IpAddr::V6("fd42:b1:0:7:216:3eff:fe00:7".parse().unwrap()),
        ],
        _ => Vec::new(),
    }
}

const GW: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

fn reply_of(q: &[u8]) -> Message {
    match decide(q, "bivy", GW, &lookup) {
        Decision::Reply(r) => Message::parse(&r).unwrap(),
        d => panic!("not a reply: {d:?}"),
    }
}

#[test]
fn parse_query_with_edns() {
    let q = query(0xbeef, "Example.COM", TYPE_A, true);
    let m = Message::parse(&q).unwrap();
    assert_eq!(m.header.id, 0xbeef);
    assert!(!m.header.is_response());
    assert_eq!(m.questions.len(), 1);
    assert_eq!(m.questions[0].name(), "example.com");
    assert_eq!(m.questions[0].labels[0], b"Example");
    assert_eq!(m.edns_size(), Some(4096));
}

#[test]
fn truncated_everywhere() {
    let q = query(1, "c1.bivy", TYPE_A, true);
    for n in 0..q.len() {
        assert!(Message::parse(&q[..n]).is_err(), "{n}");
        // Never panics, whatever decide makes of it.
        let _ = decide(&q[..n], "bivy", GW, &lookup);
    }
    assert!(Message::parse(&q).is_ok());
    // Below a header: dropped; a header with a broken body: FORMERR.
    assert_eq!(decide(&q[..11], "bivy", GW, &lookup), Decision::Drop);
    let m = reply_of(&q[..14]);
    assert_eq!(m.header.rcode(), RCODE_FORMERR);
    assert_eq!(m.header.id, 1);
}

#[test]
fn compression_pointers_bounded() {
    // A pointer to itself, a forward pointer, and a two-pointer loop.
    let mut b = query(1, "", TYPE_A, false);
    b.truncate(12);
    let base = b.clone();
    b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(Message::parse(&b), Err(DnsError::BadPointer));
    let mut b = base.clone();
    b.extend_from_slice(&[0xc0, 14, 0, 0, 1, 0, 1]);
    assert_eq!(Message::parse(&b), Err(DnsError::BadPointer));
    let mut b = base.clone();
    b[5] = 2;
    // name 1 at 12: "a" then pointer to 19 (forward); name 2 at 19 pointer to 12.
    b.extend_from_slice(&[1, b'a', 0xc0, 19, 0, 1, 0]);
    b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert!(Message::parse(&b).is_err());
    // Valid backward pointers resolve.
    let mut b = base.clone();
    b[5] = 2;
    b.extend_from_slice(&[2, b'c', b'1', 4, b'b', b'i', b'v', b'y', 0, 0, 1, 0, 1]);
    b.extend_from_slice(&[1, b'x', 0xc0, 12, 0, 1, 0, 1]);
    let m = Message::parse(&b).unwrap();
    assert_eq!(m.questions[1].name(), "x.c1.bivy");
    // Reserved label types.
    let mut b = base.clone();
    b.extend_from_slice(&[0x40, 0, 0, 1, 0, 1]);
    assert_eq!(Message::parse(&b), Err(DnsError::BadLabel));
    // Over 255 bytes through pointers: a chain of 63-byte labels.
    let mut b = base.clone();
    let mut prev = None::<usize>;
    for _ in 0..5 {
        let at = b.len();
        b.push(63);
        b.extend_from_slice(&[b'a'; 63]);
        match prev {
            Some(p) => b.extend_from_slice(&[0xc0 | (p >> 8) as u8, p as u8]),
            None => b.push(0),
        }
        prev = Some(at);
    }
    let last = prev.unwrap();
    let (r, _) = (read_name(&b, last), ());
    assert_eq!(r, Err(DnsError::NameTooLong));
}

#[test]
fn local_answers() {
    // A record, case-insensitive, id and question (case kept) echoed, AA, RD copied, EDNS.
    let q = query(7, "C1.Bivy", TYPE_A, true);
    let m = reply_of(&q);
    assert!(m.header.is_response());
    assert_eq!(m.header.id, 7);
    assert_eq!(m.header.rcode(), RCODE_NOERROR);
    assert_ne!(m.header.flags & 0x0400, 0);
    assert_ne!(m.header.flags & 0x0100, 0);
    assert_eq!(m.questions[0].labels[0], b"C1");
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].rdata, [10, 9, 0, 5]);
    assert_eq!(m.answers[0].labels, vec![b"C1".to_vec(), b"Bivy".to_vec()]);
    assert_eq!(m.edns_size(), Some(4096));
    // _gateway.
    let m = reply_of(&query(8, "_gateway.bivy", TYPE_A, false));
    assert_eq!(m.answers[0].rdata, GW.octets());
    assert!(m.additional.is_empty());
    // AAAA for a known name without IPv6: NOERROR, no answer.
    let m = reply_of(&query(9, "c1.bivy", TYPE_AAAA, false));
    assert_eq!(m.header.rcode(), RCODE_NOERROR);
    assert!(m.answers.is_empty());
    // A name with both: A answers A, AAAA answers AAAA, ANY both.
    let m = reply_of(&query(9, "v6.bivy", TYPE_AAAA, false));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].rtype, TYPE_AAAA);
    let want: Ipv6Addr = "fd42:b1:0:7:216:3eff:fe00:7".parse().unwrap();
    assert_eq!(m.answers[0].rdata, want.octets());
    let m = reply_of(&query(9, "v6.bivy", TYPE_A, false));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].rdata, [10, 9, 0, 7]);
    let m = reply_of(&query(9, "v6.bivy", TYPE_ANY, false));
    assert_eq!(m.answers.len(), 2);
    // Unknown names in our domain: NXDOMAIN, also deeper ones.
    for n in ["nope.bivy", "a.c1.bivy"] {
        let m = reply_of(&query(10, n, TYPE_A, false));
        assert_eq!(m.header.rcode(), RCODE_NXDOMAIN, "{n}");
    }
    // The domain itself exists.
    assert_eq!(
        reply_of(&query(11, "bivy", TYPE_A, false)).header.rcode(),
        0
    );
    // The bare name of a lease.
    assert_eq!(
        reply_of(&query(12, "c1", TYPE_A, false)).answers[0].rdata,
        [10, 9, 0, 5]
    );
    // Other names are forwarded, also an unknown bare name.
    for n in ["example.com", "nope", "bivy.example.com"] {
        assert!(
            matches!(
                decide(&query(13, n, TYPE_A, false), "bivy", GW, &lookup),
                Decision::Forward(_)
            ),
            "{n}"
        );
    }
    // A response, or a non-QUERY opcode, or two questions.
    let mut r = query(14, "c1.bivy", TYPE_A, false);
    r[2] |= 0x80;
    assert_eq!(decide(&r, "bivy", GW, &lookup), Decision::Drop);
    let mut u = query(15, "c1.bivy", TYPE_A, false);
    u[2] |= 5 << 3;
    assert_eq!(reply_of(&u).header.rcode(), RCODE_NOTIMP);
    let mut two = query(16, "c1.bivy", TYPE_A, false);
    two[5] = 0;
    assert_eq!(reply_of(&two).header.rcode(), RCODE_FORMERR);
    // Class CH in our domain: REFUSED.
    let mut ch = query(17, "c1.bivy", TYPE_A, false);
    let n = ch.len();
    ch[n - 1] = 3;
    assert_eq!(reply_of(&ch).header.rcode(), RCODE_REFUSED);
    // A multi-label domain.
    let m = match decide(
        &query(18, "c1.lxd.example", TYPE_A, false),
        "lxd.example",
        GW,
        &lookup,
    ) {
        Decision::Reply(r) => Message::parse(&r).unwrap(),
        d => panic!("{d:?}"),
    };
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn forward_id_rewrite() {
    let up1: SocketAddr = "127.0.0.1:5301".parse().unwrap();
    let up2: SocketAddr = "127.0.0.1:5302".parse().unwrap();
    let ups = [up1, up2];
    let c1: SocketAddr = "10.9.0.5:1000".parse().unwrap();
    let c2: SocketAddr = "10.9.0.6:1000".parse().unwrap();
    let mut inf = Inflight::new(2);
    let now = Instant::now();
    let mut ids = [100u16, 100, 200].into_iter();
    let mut next = || ids.next().unwrap();
    // Two clients using the same id get different upstream ids.
    let qa = query(42, "example.com", TYPE_A, false);
    let qb = query(42, "example.org", TYPE_A, false);
    let ma = Message::parse(&qa).unwrap();
    let mb = Message::parse(&qb).unwrap();
    let sa = inf.add(c1, &ma, &qa, now, &mut next).unwrap();
    let sb = inf.add(c2, &mb, &qb, now, &mut next).unwrap();
    assert_eq!(u16::from_be_bytes([sa[0], sa[1]]), 100);
    assert_eq!(u16::from_be_bytes([sb[0], sb[1]]), 200);
    assert_eq!(sa[2..], qa[2..]);
    // Replies: wrong source, wrong question, not a response: ignored.
    let mut ra = sa.clone();
    ra[2] |= 0x80;
    assert_eq!(inf.take_reply(up2, &mut ra.clone(), &ups), None);
    let mut wrong = sb.clone();
    wrong[..2].copy_from_slice(&100u16.to_be_bytes());
    wrong[2] |= 0x80;
    assert_eq!(inf.take_reply(up1, &mut wrong, &ups), None);
    assert_eq!(inf.take_reply(up1, &mut sa.clone(), &ups), None);
    // The right one: back to the client with its id, once.
    assert_eq!(inf.take_reply(up1, &mut ra, &ups), Some(c1));
    assert_eq!(u16::from_be_bytes([ra[0], ra[1]]), 42);
    let mut again = sa.clone();
    again[2] |= 0x80;
    assert_eq!(inf.take_reply(up1, &mut again, &ups), None);
    assert_eq!(inf.len(), 1);
    // Timeout: one retry on the next upstream, then SERVFAIL with the client's id.
    assert!(inf.expire(now).is_empty());
    let e = inf.expire(now + UPSTREAM_TIMEOUT);
    assert_eq!(
        e,
        vec![Expired::Retry {
            upstream: 1,
            query: sb.clone()
        }]
    );
    // Now only the second upstream's answer counts.
    let mut rb = sb.clone();
    rb[2] |= 0x80;
    assert_eq!(inf.take_reply(up1, &mut rb.clone(), &ups), None);
    let e = inf.expire(now + UPSTREAM_TIMEOUT * 2);
    match &e[..] {
        [Expired::Fail { client, reply }] => {
            assert_eq!(*client, c2);
            let m = Message::parse(reply).unwrap();
            assert_eq!(m.header.id, 42);
            assert_eq!(m.header.rcode(), RCODE_SERVFAIL);
        }
        e => panic!("{e:?}"),
    }
    assert!(inf.is_empty());
}

#[test]
fn inflight_bounded() {
    let mut inf = Inflight::new(1);
    let now = Instant::now();
    let mut n = 0u16;
    let mut next = || {
        n = n.wrapping_add(1);
        n
    };
    let c: SocketAddr = "10.9.0.5:1000".parse().unwrap();
    let q = query(1, "example.com", TYPE_A, false);
    let m = Message::parse(&q).unwrap();
    for _ in 0..MAX_INFLIGHT {
        assert!(inf.add(c, &m, &q, now, &mut next).is_some());
    }
    assert!(inf.add(c, &m, &q, now, &mut next).is_none());
    // No upstream: nothing forwarded.
    assert!(Inflight::new(0).add(c, &m, &q, now, &mut next).is_none());
}

#[test]
fn rate_limit() {
    let mut r = RateLimiter::default();
    let now = Instant::now();
    let a: IpAddr = "10.9.0.5".parse().unwrap();
    let b: IpAddr = "10.9.0.6".parse().unwrap();
    let mut ok = 0;
    for _ in 0..1000 {
        if r.allow(a, now) {
            ok += 1;
        }
    }
    assert_eq!(ok, RATE_BURST as usize);
    assert!(r.allow(b, now));
    assert!(!r.allow(a, now));
    assert!(r.allow(a, now + Duration::from_millis(10)));
    // The source table is bounded.
    let mut r = RateLimiter::default();
    for i in 0..MAX_SOURCES as u32 {
        assert!(r.allow(IpAddr::V4(Ipv4Addr::from(i)), now));
    }
    assert!(!r.allow(IpAddr::V4(Ipv4Addr::from(u32::MAX)), now));
    assert!(r.allow(
        IpAddr::V4(Ipv4Addr::from(u32::MAX)),
        now + Duration::from_secs(3)
    ));
}

#[test]
fn resolv_conf() {
    let dir = std::env::temp_dir().join(format!("bivy-dns-resolv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let real = dir.join("resolv.conf");
    let t = "# comment\nsearch x\nnameserver 192.0.2.1\nnameserver 2001:db8::1\nnameserver fe80::1%eth0\nnameserver 192.0.2.1\noptions edns0\n";
    assert_eq!(
        upstreams_from_resolv_conf(t, &real),
        vec![
            "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        ]
    );
    let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
    // resolved's file missing: the stub itself.
    assert_eq!(
        upstreams_from_resolv_conf(stub, &real),
        vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
    );
    std::fs::write(&real, "nameserver 198.51.100.7\n").unwrap();
    assert_eq!(
        upstreams_from_resolv_conf(stub, &real),
        vec!["198.51.100.7:53".parse::<SocketAddr>().unwrap()]
    );
    assert!(upstreams_from_resolv_conf("", &real).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn proc_addresses() {
    assert_eq!(
        proc_addr(&format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]))),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    assert_eq!(
        proc_addr("00000000000000000000000000000000"),
        Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    );
    assert_eq!(proc_addr("zz"), None);
}

#[test]
fn port_holder_finds_this_process() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    let h = port_holder("udp", IpAddr::V4(Ipv4Addr::LOCALHOST), port).unwrap();
    assert!(h.contains(&std::process::id().to_string()), "{h}");
    let e = UdpSocket::bind(("127.0.0.1", port)).unwrap_err();
    let e = bind_error(
        e,
        "udp",
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        "br9",
    );
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.to_string().contains("process"), "{e}");
}

#[test]
fn fuzz_dns_packet_deterministic() {
    let tokens: &[&[u8]] = &[
        &[0xc0, 12],
        &[0xc0, 0],
        &[0xff, 0xff],
        &[0x40],
        &[0],
        &[63],
        &[0, 41, 0x10, 0],
        &[2, b'c', b'1', 4, b'b', b'i', b'v', b'y', 0],
        &[8, b'_', b'g', b'a', b't', b'e', b'w', b'a', b'y'],
        &[0, 0xff, 0, 0xff],
        &[0x80],
    ];
    crate::http::fuzz::tests::fuzz_corpus_and_mutations(
        "dns_packet",
        0x2f69_3d5b_9a1c_7e35,
        tokens,
        fuzz_packet,
    );
}

#[test]
fn client_queries_and_names() {
    let labels = labels_of("Www.Example.org.").unwrap();
    assert_eq!(
        labels,
        [b"Www".to_vec(), b"Example".to_vec(), b"org".to_vec()]
    );
    assert_eq!(
        build_query(0x1234, &labels, TYPE_AAAA, None),
        query(0x1234, "Www.Example.org", TYPE_AAAA, false)
    );
    // With EDNS: the OPT record advertises the size given (the helper's is 4096).
    assert_eq!(
        build_query(7, &labels, TYPE_A, Some(4096)),
        query(7, "Www.Example.org", TYPE_A, true)
    );
    let m = Message::parse(&build_query(7, &labels, TYPE_A, Some(1232))).unwrap();
    assert_eq!((m.edns_size(), m.header.is_response()), (Some(1232), false));
    assert!(same_name(&labels, &labels_of("www.EXAMPLE.org").unwrap()));
    assert!(!same_name(&labels, &labels_of("www.example").unwrap()));
    for bad in [
        "",
        ".",
        "a..b",
        ".a",
        "a.b..",
        &"x".repeat(64),
        &format!("{}x", "x.".repeat(127)),
    ] {
        assert_eq!(labels_of(bad), None, "{bad:?}");
    }
    // 253 characters: the longest name (255 bytes on the wire).
    let long = format!("{}{}", "x.".repeat(126), "x");
    assert_eq!(long.len(), 253);
    assert_eq!(labels_of(&long).map(|l| l.len()), Some(127));
}

#[test]
fn cname_targets_are_read_with_compression() {
    // A reply for a.test with CNAME -> "b" + pointer to the question name (offset 12).
    let mut b = query(1, "a.test", TYPE_A, false);
    b[2] |= 0x80;
    b[7] = 1;
    b.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'b', 0xc0, 12]);
    let m = Message::parse(&b).unwrap();
    let r = &m.answers[0];
    assert_eq!(name_string(&r.rdata_name(&b).unwrap()), "b.a.test");
    // rdata longer than the name in it: refused.
    let mut longer = b.clone();
    let n = longer.len();
    longer[n - 5] = 5;
    longer.push(0);
    let m = Message::parse(&longer).unwrap();
    assert_eq!(m.answers[0].rdata_name(&longer), Err(DnsError::Truncated));
}

#[test]
fn reverse_lookups_of_leases_answer_their_names() {
    let reverse = |ip: Ipv4Addr| (ip == Ipv4Addr::new(10, 9, 0, 5)).then(|| "c1".to_string());
    let ask = |name: &str, qtype: u16| {
        let q = query(7, name, qtype, false);
        (q.clone(), decide_with(&q, "bivy", GW, &lookup, &reverse))
    };
    let ptr_of = |d: Decision| -> String {
        let Decision::Reply(r) = d else {
            panic!("not a reply: {d:?}")
        };
        let m = Message::parse(&r).unwrap();
        assert_eq!(m.header.rcode(), RCODE_NOERROR);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].rtype, TYPE_PTR);
        let labels = m.answers[0].rdata_name(&r).unwrap();
        labels
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join(".")
    };
    assert_eq!(ptr_of(ask("5.0.9.10.in-addr.arpa", TYPE_PTR).1), "c1.bivy");
    assert_eq!(ptr_of(ask("5.0.9.10.IN-ADDR.ARPA", TYPE_ANY).1), "c1.bivy");
    assert_eq!(
        ptr_of(ask("1.0.9.10.in-addr.arpa", TYPE_PTR).1),
        "_gateway.bivy"
    );
    // No lease there, another type, or not an address: upstream's to answer.
    for (name, qtype) in [
        ("6.0.9.10.in-addr.arpa", TYPE_PTR),
        ("5.0.9.10.in-addr.arpa", TYPE_A),
        ("05.0.9.10.in-addr.arpa", TYPE_PTR),
        ("300.0.9.10.in-addr.arpa", TYPE_PTR),
        ("0.9.10.in-addr.arpa", TYPE_PTR),
    ] {
        assert!(
            matches!(ask(name, qtype).1, Decision::Forward(_)),
            "{name} {qtype}"
        );
    }
}

/// `dns.mode=none`: nothing answered from the leases, `_gateway` or the reverse zone; every
/// query goes upstream, and the malformed ones get what the managed mode gives them.
#[test]
fn forward_only_answers_no_local_name() {
    for name in [
        "c1.bivy",
        "c1",
        "_gateway.bivy",
        "5.0.9.10.in-addr.arpa",
        "example.com",
    ] {
        let q = query(7, name, TYPE_A, false);
        assert!(
            matches!(decide_forward_only(&q), Decision::Forward(_)),
            "{name}"
        );
    }
    let q = query(1, "c1.bivy", TYPE_A, true);
    assert_eq!(decide_forward_only(&q[..11]), Decision::Drop);
    assert_eq!(
        decide_forward_only(&q[..14]),
        decide(&q[..14], "bivy", GW, &lookup)
    );
}
