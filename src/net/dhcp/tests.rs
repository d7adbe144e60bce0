//! Unit tests of the DHCP packet code and server logic (no sockets).

use super::*;
use crate::net::leases::StaticLease;

const M1: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 1];
const M2: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 2];
const M3: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 3];

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, d)
}

fn cfg() -> DhcpConfig {
    DhcpConfig {
        ifname: "br9".into(),
        server: ip(1),
        prefix: 24,
        ranges: vec![(ip(10), ip(12))],
        lease_secs: 3600,
        router: Some(ip(1)),
        dns: Some(ip(1)),
        domain: "bivy".into(),
        mtu: Some(1400),
    }
}

fn req(mac: [u8; 6], t: MessageType) -> Packet {
    let mut p = Packet::empty();
    p.op = 1;
    p.xid = 0x1234_5678;
    p.chaddr[..6].copy_from_slice(&mac);
    p.set_option(opt::MSG_TYPE, vec![t as u8]);
    p
}

fn discover(mac: [u8; 6]) -> Packet {
    req(mac, MessageType::Discover)
}

fn select(mac: [u8; 6], addr: Ipv4Addr, server: Ipv4Addr) -> Packet {
    let mut p = req(mac, MessageType::Request);
    p.set_option(opt::REQUESTED_IP, addr.octets().to_vec());
    p.set_option(opt::SERVER_ID, server.octets().to_vec());
    p
}

fn renew(mac: [u8; 6], addr: Ipv4Addr) -> Packet {
    let mut p = req(mac, MessageType::Request);
    p.ciaddr = addr;
    p
}

fn init_reboot(mac: [u8; 6], addr: Ipv4Addr) -> Packet {
    let mut p = req(mac, MessageType::Request);
    p.set_option(opt::REQUESTED_IP, addr.octets().to_vec());
    p
}

/// DISCOVER then REQUEST; the acknowledged address.
fn obtain(l: &mut DhcpLogic, s: &mut LeaseStore, mac: [u8; 6], now: u64) -> Ipv4Addr {
    let off = l.handle(s, &discover(mac), now).expect("offer");
    assert_eq!(off.msg_type(), Some(MessageType::Offer));
    let ack = l
        .handle(s, &select(mac, off.yiaddr, ip(1)), now)
        .expect("ack");
    assert_eq!(ack.msg_type(), Some(MessageType::Ack), "{ack:?}");
    assert_eq!(ack.yiaddr, off.yiaddr);
    ack.yiaddr
}

#[test]
fn parse_write_round_trip() {
    let mut p = select(M1, ip(10), ip(1));
    p.set_option(opt::HOST_NAME, b"c1".to_vec());
    p.set_option(200, vec![7; 600]); // split over three option entries
    p.set_option(201, vec![]);
    let w = p.write();
    assert!(w.len() >= 300);
    let back = Packet::parse(&w).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.option(200).unwrap().len(), 600);
    assert_eq!(back.msg_type(), Some(MessageType::Request));
    assert_eq!(back.requested_ip(), Some(ip(10)));
    assert_eq!(back.server_id(), Some(ip(1)));
    assert_eq!(back.mac(), Some(M1));
}

#[test]
fn truncated_and_malformed() {
    let w = discover(M1).write();
    for n in 0..240 {
        assert!(matches!(
            Packet::parse(&w[..n]),
            Err(ParseError::TooShort(_))
        ));
    }
    let mut bad = w.clone();
    bad[236] = 0;
    assert_eq!(Packet::parse(&bad), Err(ParseError::NoCookie));
    // An option whose length runs past the end.
    let mut t = w[..240].to_vec();
    t.extend_from_slice(&[53, 5, 1]);
    assert_eq!(Packet::parse(&t), Err(ParseError::TruncatedOption(53)));
    t.truncate(241);
    assert_eq!(Packet::parse(&t), Err(ParseError::TruncatedOption(53)));
    // No end option, pads only: fine.
    let mut t = w[..240].to_vec();
    t.extend_from_slice(&[0, 0, 53, 1, 1]);
    assert_eq!(
        Packet::parse(&t).unwrap().msg_type(),
        Some(MessageType::Discover)
    );
    // Repeated options concatenate; a bad type length is no type.
    let mut t = w[..240].to_vec();
    t.extend_from_slice(&[12, 2, b'a', b'b', 12, 1, b'c', 53, 2, 1, 1, 255, 9, 9]);
    let p = Packet::parse(&t).unwrap();
    assert_eq!(p.option(12), Some(&b"abc"[..]));
    assert_eq!(p.msg_type(), None);
    // Unknown message type, wrong hardware type: no answer.
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let mut p = discover(M1);
    p.set_option(opt::MSG_TYPE, vec![99]);
    assert!(l.handle(&mut s, &p, 0).is_none());
    let mut p = discover(M1);
    p.hlen = 16;
    assert!(l.handle(&mut s, &p, 0).is_none());
    let mut p = discover(M1);
    p.op = 2;
    assert!(l.handle(&mut s, &p, 0).is_none());
}

#[test]
fn hostname_sanitised() {
    assert_eq!(sanitize_hostname(b"My_Host.example.com"), "myhost");
    assert_eq!(sanitize_hostname(b"--a b--"), "ab");
    assert_eq!(sanitize_hostname(b"\xff\x00"), "");
    assert_eq!(sanitize_hostname(&[b'a'; 100]).len(), 63);
}

#[test]
fn config_validation_and_default_pool() {
    assert!(cfg().validate().is_ok());
    let mut c = cfg();
    c.prefix = 31;
    assert!(c.validate().is_err());
    let mut c = cfg();
    c.ranges = vec![(ip(20), ip(10))];
    assert!(c.validate().is_err());
    c.ranges = vec![(ip(10), Ipv4Addr::new(10, 9, 1, 1))];
    assert!(c.validate().is_err());
    let mut c = cfg();
    c.ranges.clear();
    assert!(!c.in_pool(ip(0)));
    assert!(!c.in_pool(ip(255)));
    assert!(!c.in_pool(ip(1)));
    assert!(c.in_pool(ip(2)));
    assert!(c.in_pool(ip(254)));
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(c);
    assert_eq!(obtain(&mut l, &mut s, M1, 0), ip(2));
}

#[test]
fn offer_ack_options() {
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let off = l.handle(&mut s, &discover(M1), 100).unwrap();
    assert_eq!(off.op, 2);
    assert_eq!(off.xid, 0x1234_5678);
    assert_eq!(off.yiaddr, ip(10));
    assert_eq!(off.server_id(), Some(ip(1)));
    assert_eq!(off.option(opt::SUBNET_MASK), Some(&[255, 255, 255, 0][..]));
    assert_eq!(off.option(opt::BROADCAST), Some(&[10, 9, 0, 255][..]));
    assert_eq!(off.option(opt::ROUTER), Some(&[10, 9, 0, 1][..]));
    assert_eq!(off.option(opt::DNS), Some(&[10, 9, 0, 1][..]));
    assert_eq!(off.option(opt::DOMAIN_NAME), Some(&b"bivy"[..]));
    assert_eq!(off.option(opt::MTU), Some(&1400u16.to_be_bytes()[..]));
    assert_eq!(
        off.option(opt::LEASE_TIME),
        Some(&3600u32.to_be_bytes()[..])
    );
    assert_eq!(off.option(opt::T1), Some(&1800u32.to_be_bytes()[..]));
    assert_eq!(off.option(opt::T2), Some(&3150u32.to_be_bytes()[..]));
    // Nothing committed on an offer.
    assert!(s.dynamic().is_empty());
    let mut r = select(M1, ip(10), ip(1));
    r.set_option(opt::HOST_NAME, b"Web.1".to_vec());
    let ack = l.handle(&mut s, &r, 100).unwrap();
    assert_eq!(ack.msg_type(), Some(MessageType::Ack));
    assert_eq!(
        reply_destination(&r, &ack),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    );
    let lease = s.dynamic_for(&M1).unwrap();
    assert_eq!(
        (lease.ip, lease.hostname.as_str(), lease.expires),
        (ip(10), "web", 3700)
    );
    assert_eq!(s.lookup_name_at("web", 200), vec![ip(10)]);
}

#[test]
fn allocation_distinct_and_exhaustion() {
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let a = obtain(&mut l, &mut s, M1, 0);
    let b = obtain(&mut l, &mut s, M2, 0);
    let c = obtain(&mut l, &mut s, M3, 0);
    assert_eq!((a, b, c), (ip(10), ip(11), ip(12)));
    // Pool full: no offer to a fourth client.
    assert!(l.handle(&mut s, &discover([9; 6]), 0).is_none());
    // After expiry the fourth client gets an expired address.
    let d = obtain(&mut l, &mut s, [9; 6], 4000);
    assert!([a, b, c].contains(&d));
}

#[test]
fn offers_are_held_for_their_client() {
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let o1 = l.handle(&mut s, &discover(M1), 0).unwrap().yiaddr;
    let o2 = l.handle(&mut s, &discover(M2), 0).unwrap().yiaddr;
    assert_ne!(o1, o2);
    // M2 cannot take M1's offered address.
    let n = l.handle(&mut s, &init_reboot(M2, o1), 0).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    // After the offer lapses, it can.
    let a = l
        .handle(&mut s, &init_reboot(M2, o1), OFFER_SECS + 1)
        .unwrap();
    assert_eq!(a.msg_type(), Some(MessageType::Ack));
}

#[test]
fn keeps_previous_address_and_renews() {
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let _ = obtain(&mut l, &mut s, M2, 0);
    let a = obtain(&mut l, &mut s, M1, 0);
    assert_eq!(a, ip(11));
    // Renewal with ciaddr: ACK unicast, lease extended.
    let r = renew(M1, a);
    let ack = l.handle(&mut s, &r, 1800).unwrap();
    assert_eq!(ack.msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, a);
    assert_eq!(ack.ciaddr, a);
    assert_eq!(reply_destination(&r, &ack), SocketAddrV4::new(a, 68));
    assert_eq!(s.dynamic_for(&M1).unwrap().expires, 1800 + 3600);
    // Long expired, nobody else took it: the same address again.
    assert_eq!(obtain(&mut l, &mut s, M1, 100_000), a);
    // Host name kept across a renewal that does not send it.
    let mut r = select(M1, a, ip(1));
    r.set_option(opt::HOST_NAME, b"c1".to_vec());
    l.handle(&mut s, &r, 100_000).unwrap();
    l.handle(&mut s, &renew(M1, a), 100_010).unwrap();
    assert_eq!(s.dynamic_for(&M1).unwrap().hostname, "c1");
}

#[test]
fn nak_for_wrong_address() {
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let a = obtain(&mut l, &mut s, M1, 0);
    // Another client's address.
    let n = l.handle(&mut s, &init_reboot(M2, a), 10).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    assert_eq!(
        reply_destination(&renew(M2, a), &n),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    );
    // Renewing another client's address.
    let n = l.handle(&mut s, &renew(M2, a), 10).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    // Outside the range, in the subnet; the server's own; another subnet.
    for bad in [ip(50), ip(1), Ipv4Addr::new(192, 168, 1, 5), ip(255)] {
        let n = l.handle(&mut s, &init_reboot(M2, bad), 10).unwrap();
        assert_eq!(n.msg_type(), Some(MessageType::Nak), "{bad}");
    }
    // A REQUEST for another server: ignored, and nothing changes.
    assert!(l.handle(&mut s, &select(M2, ip(11), ip(2)), 10).is_none());
    assert!(s.dynamic_for(&M2).is_none());
    // A REQUEST without any address: ignored.
    assert!(l
        .handle(&mut s, &req(M2, MessageType::Request), 10)
        .is_none());
    // NAKed for the address of its own lease (the range changed): the lease and its name go.
    let mut r = renew(M1, a);
    r.set_option(opt::HOST_NAME, b"c1".to_vec());
    assert_eq!(
        l.handle(&mut s, &r, 20).unwrap().msg_type(),
        Some(MessageType::Ack)
    );
    assert_eq!(s.lookup_name_at("c1", 30), vec![a]);
    l.cfg.ranges = vec![(ip(13), ip(14))];
    let n = l.handle(&mut s, &renew(M1, a), 30).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    assert!(s.lookup_name_at("c1", 30).is_empty());
    assert!(s.dynamic_for(&M1).is_none());
}

/// A static address given to an instance while another client's lease holds it: that client
/// keeps it until it renews (refused then), the instance gets a dynamic address meanwhile, and
/// the static one after; never the same address to two clients.
#[test]
fn a_static_address_is_not_taken_from_a_live_lease() {
    let now = crate::net::leases::unix_now();
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let held = obtain(&mut l, &mut s, M2, now);
    s.set_static(vec![StaticLease {
        mac: M1,
        ip: Some(held),
        hostname: "c1".into(),
    }])
    .unwrap();
    let meanwhile = obtain(&mut l, &mut s, M1, now);
    assert_ne!(meanwhile, held);
    let other = obtain(&mut l, &mut s, M3, now);
    assert!(other != held && other != meanwhile, "{other}");
    let n = l.handle(&mut s, &renew(M2, held), now + 60).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    let n = l.handle(&mut s, &renew(M1, meanwhile), now + 60).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    assert_eq!(obtain(&mut l, &mut s, M1, now + 60), held);
}

#[test]
fn static_leases() {
    let mut s = LeaseStore::in_memory();
    s.set_static(vec![
        StaticLease {
            mac: M1,
            ip: Some(ip(100)),
            hostname: "c1".into(),
        },
        StaticLease {
            mac: M2,
            ip: None,
            hostname: "c2".into(),
        },
    ])
    .unwrap();
    let mut l = DhcpLogic::new(cfg());
    // The fixed address, outside the dynamic range, even when asking for another.
    let mut d = discover(M1);
    d.set_option(opt::REQUESTED_IP, ip(10).octets().to_vec());
    assert_eq!(l.handle(&mut s, &d, 0).unwrap().yiaddr, ip(100));
    assert_eq!(obtain(&mut l, &mut s, M1, 0), ip(100));
    let n = l.handle(&mut s, &init_reboot(M1, ip(10)), 0).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    // Nobody else gets it.
    let n = l.handle(&mut s, &init_reboot(M3, ip(100)), 0).unwrap();
    assert_eq!(n.msg_type(), Some(MessageType::Nak));
    // The instance name, not the DHCP host name.
    let a = obtain(&mut l, &mut s, M2, 0);
    let mut r = renew(M2, a);
    r.set_option(opt::HOST_NAME, b"other".to_vec());
    l.handle(&mut s, &r, 5).unwrap();
    assert_eq!(s.lookup_name_at("c2", 10), vec![a]);
    assert_eq!(s.lookup_name_at("c1", 10), vec![ip(100)]);
    assert!(s.lookup_name_at("other", 10).is_empty());
}

#[test]
fn expiry_frees_for_others_only_when_needed() {
    let mut c = cfg();
    c.ranges = vec![(ip(10), ip(11))];
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(c);
    let a = obtain(&mut l, &mut s, M1, 0);
    assert_eq!(s.leases_at(3599).len(), 1);
    assert_eq!(s.leases_at(3600).len(), 0);
    // A new client after M1 expired gets the never-used address first.
    assert_eq!(obtain(&mut l, &mut s, M2, 4000), ip(11));
    // Then the expired one.
    assert_eq!(obtain(&mut l, &mut s, M3, 4000), a);
}

#[test]
fn decline_and_release() {
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let a = obtain(&mut l, &mut s, M1, 0);
    let mut d = req(M1, MessageType::Decline);
    d.set_option(opt::REQUESTED_IP, a.octets().to_vec());
    // For another server: ignored.
    d.set_option(opt::SERVER_ID, ip(2).octets().to_vec());
    assert!(l.handle(&mut s, &d, 5).is_none());
    assert!(s.dynamic_for(&M1).is_some());
    d.set_option(opt::SERVER_ID, ip(1).octets().to_vec());
    // Someone else cannot decline M1's address.
    let mut other = d.clone();
    other.chaddr[..6].copy_from_slice(&M2);
    assert!(l.handle(&mut s, &other, 5).is_none());
    assert!(s.dynamic_for(&M1).is_some());
    assert!(l.handle(&mut s, &d, 5).is_none());
    assert!(s.dynamic_for(&M1).is_none());
    // The declined address is not offered again for a while.
    let b = obtain(&mut l, &mut s, M1, 6);
    assert_ne!(a, b);
    assert_eq!(obtain(&mut l, &mut s, M2, 6), ip(12));
    let _ = l.handle(&mut s, &discover(M3), 6).is_none();
    // RELEASE frees.
    let mut r = req(M1, MessageType::Release);
    r.ciaddr = b;
    r.set_option(opt::SERVER_ID, ip(1).octets().to_vec());
    assert!(l.handle(&mut s, &r, 7).is_none());
    assert!(s.dynamic_for(&M1).is_none());
    // A RELEASE of an address that is not the client's: nothing.
    let mut r = req(M1, MessageType::Release);
    r.ciaddr = ip(12);
    assert!(l.handle(&mut s, &r, 7).is_none());
    assert!(s.dynamic_for(&M2).is_some());
}

#[test]
fn inform() {
    let mut s = LeaseStore::in_memory();
    let mut l = DhcpLogic::new(cfg());
    let mut p = req(M1, MessageType::Inform);
    p.ciaddr = ip(77);
    let a = l.handle(&mut s, &p, 0).unwrap();
    assert_eq!(a.msg_type(), Some(MessageType::Ack));
    assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert!(a.option(opt::LEASE_TIME).is_none());
    assert!(a.option(opt::ROUTER).is_some());
    assert_eq!(reply_destination(&p, &a), SocketAddrV4::new(ip(77), 68));
    assert!(s.dynamic().is_empty());
}

#[test]
fn persist_failure_means_no_ack() {
    let dir = std::env::temp_dir().join(format!("bivy-dhcp-ro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("missing-dir").join("leases.json");
    let mut s = LeaseStore::open(&path).unwrap();
    let mut l = DhcpLogic::new(cfg());
    let off = l.handle(&mut s, &discover(M1), 0).unwrap();
    assert!(l
        .handle(&mut s, &select(M1, off.yiaddr, ip(1)), 0)
        .is_none());
    assert!(s.dynamic().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fuzz_dhcp_packet_deterministic() {
    let tokens: &[&[u8]] = &[
        &[99, 130, 83, 99],
        &[53, 1, 1],
        &[53, 1, 3],
        &[53, 1, 4],
        &[53, 1, 7],
        &[53, 1, 8],
        &[50, 4, 10, 9, 0, 5],
        &[54, 4, 10, 9, 0, 1],
        &[12, 3, b'a', b'.', b'b'],
        &[52, 1, 3],
        &[81, 3, 0, 0, 0],
        &[255],
        &[0],
        &[61, 0],
        &[53, 255],
    ];
    crate::http::fuzz::tests::fuzz_corpus_and_mutations(
        "dhcp_packet",
        0x5851_f42d_4c95_7f2d,
        tokens,
        fuzz_packet,
    );
}
