//! Root tests of `bivy::net::netlink` against the real kernel. Each test runs on a thread that
//! unshared its own network namespace (nothing touches the host's links; the namespace and every
//! link in it vanish when the thread ends), and a second namespace, when needed, is held by a
//! `unshare -n sleep` child the test starts and kills by PID.

mod common;

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bivy::net::netlink::{self, LinkSpec, MacvlanMode, Netlink, Netns};

/// Runs `f` on a thread in a fresh network namespace of its own; a panic in `f` fails the test.
fn in_own_netns(f: impl FnOnce() + Send + 'static) {
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// A process holding a second network namespace (`common::Netns`: killed and reaped on drop).
use common::Netns as NsHolder;

fn root() -> bool {
    common::require_root()
}

fn get(nl: &Netlink, name: &str) -> netlink::Link {
    nl.link(name)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn bridge_veth_and_master() {
    if !root() {
        return;
    }
    in_own_netns(move || {
        let nl = Netlink::open().unwrap();
        let mac = [0x02, 0x16, 0x3e, 0, 0, 1];
        nl.create_bridge(&LinkSpec {
            name: "br0",
            mac: Some(mac),
            mtu: Some(1400),
            up: true,
            netns: None,
        })
        .unwrap();
        let br = get(&nl, "br0");
        assert_eq!(br.kind, "bridge");
        assert_eq!(br.mac, Some(mac));
        assert_eq!(br.mtu, 1400);
        assert!(br.up);
        assert!(nl
            .links()
            .unwrap()
            .iter()
            .any(|l| l.name == "br0" && l.index == br.index));

        // A port: the host end of a veth pair.
        nl.create_veth(&LinkSpec::new("vp0"), &LinkSpec::new("vp1"))
            .unwrap();
        assert_eq!(get(&nl, "vp0").kind, "veth");
        nl.set_master("vp0", Some("br0")).unwrap();
        assert_eq!(get(&nl, "vp0").master, Some(br.index));
        nl.set_master("vp0", None).unwrap();
        assert_eq!(get(&nl, "vp0").master, None);

        nl.delete_link("vp0").unwrap();
        assert!(
            nl.link("vp1").unwrap().is_none(),
            "a veth takes its peer along"
        );
        nl.delete_link("br0").unwrap();
        assert!(nl.link("br0").unwrap().is_none());
        let e = nl.delete_link("br0").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("delete link br0"), "{e}");
    });
}

#[test]
fn dummy_link() {
    if !root() {
        return;
    }
    let name = common::skip::current_test_name();
    in_own_netns(move || {
        let nl = Netlink::open().unwrap();
        nl.create_bridge(&LinkSpec::new("br0")).unwrap();
        let br = get(&nl, "br0");
        match nl.create_dummy(&LinkSpec::new("dm0")) {
            Ok(()) => {
                assert_eq!(get(&nl, "dm0").kind, "dummy");
                nl.set_master("dm0", Some("br0")).unwrap();
                assert_eq!(get(&nl, "dm0").master, Some(br.index));
                nl.delete_link("dm0").unwrap();
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                assert!(e.to_string().contains("create dummy dm0"), "{e}");
                common::skip::skip_kernel_lacks(&name, "dummy", &e.to_string());
            }
            Err(e) => panic!("{e}"),
        }
    });
}

#[test]
fn veth_peer_created_in_another_netns_and_links_moved() {
    if !root() {
        return;
    }
    in_own_netns(|| {
        let nl = Netlink::open().unwrap();
        let other = NsHolder::new().expect("network namespace");
        let pid = other.pid() as i32;
        let mac = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];
        nl.create_veth(
            &LinkSpec {
                name: "vh0",
                mac: None,
                mtu: Some(1450),
                up: true,
                netns: None,
            },
            &LinkSpec {
                name: "eth0",
                mac: Some(mac),
                mtu: Some(1450),
                up: true,
                netns: Some(Netns::Pid(pid)),
            },
        )
        .unwrap();
        let host = get(&nl, "vh0");
        assert!(host.up);
        assert_eq!(host.mtu, 1450);
        assert!(
            nl.link("eth0").unwrap().is_none(),
            "the peer never appears here"
        );
        let peer = netlink::in_netns(pid, || Netlink::open()?.link("eth0"))
            .unwrap()
            .unwrap();
        assert_eq!(peer.kind, "veth");
        assert_eq!(peer.mac, Some(mac));
        assert_eq!(peer.mtu, 1450);
        assert!(peer.up);
        // Both ends up: the host end's carrier comes up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !get(&nl, "vh0").oper_up {
            assert!(
                Instant::now() < deadline,
                "vh0 never became operationally up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        // Moving an existing link in, renamed on arrival, by pid and by namespace fd.
        nl.create_veth(&LinkSpec::new("vm0"), &LinkSpec::new("vm1"))
            .unwrap();
        nl.move_to("vm1", Netns::Pid(pid), Some("eth1")).unwrap();
        assert!(nl.link("vm1").unwrap().is_none());
        let names = netlink::in_netns(pid, || {
            Ok(Netlink::open()?
                .links()?
                .into_iter()
                .map(|l| l.name)
                .collect::<Vec<_>>())
        })
        .unwrap();
        assert!(names.contains(&"eth1".to_string()), "{names:?}");
        assert!(names.contains(&"eth0".to_string()), "{names:?}");
        let nsfile = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nl.create_veth(&LinkSpec::new("vf0"), &LinkSpec::new("vf1"))
            .unwrap();
        nl.move_to("vf1", Netns::Fd(std::os::fd::AsFd::as_fd(&nsfile)), None)
            .unwrap();
        let moved = netlink::in_netns(pid, || Netlink::open()?.link("vf1")).unwrap();
        assert!(moved.is_some());

        // Changing an existing link: mtu, mac, up/down, rename (down only).
        let mac2 = [0x02, 0, 0, 0, 0, 9];
        nl.set_mtu("vm0", 1300).unwrap();
        nl.set_mac("vm0", mac2).unwrap();
        nl.set_up("vm0", true).unwrap();
        let l = get(&nl, "vm0");
        assert_eq!((l.mtu, l.mac, l.up), (1300, Some(mac2), true));
        // (Kernels before 6.2 refuse to rename a link that is up: callers bring it down.)
        nl.set_up("vm0", false).unwrap();
        assert!(!get(&nl, "vm0").up);
        nl.rename("vm0", "vm9").unwrap();
        assert!(nl.link("vm0").unwrap().is_none());
        assert_eq!(get(&nl, "vm9").index, l.index);

        for n in ["vh0", "vm9", "vf0"] {
            nl.delete_link(n).unwrap();
        }
        let left = netlink::in_netns(pid, || {
            Ok(Netlink::open()?
                .links()?
                .into_iter()
                .map(|l| l.name)
                .collect::<Vec<_>>())
        })
        .unwrap();
        assert_eq!(
            left,
            vec!["lo".to_string()],
            "peers go with their host ends"
        );
        drop(other);
    });
}

#[test]
fn macvlan_on_a_parent() {
    if !root() {
        return;
    }
    in_own_netns(|| {
        let nl = Netlink::open().unwrap();
        // The parent is a veth end (kernels without CONFIG_DUMMY have no dummy links).
        nl.create_veth(&LinkSpec::new("par0"), &LinkSpec::new("par1"))
            .unwrap();
        let mac = [0x02, 0x16, 0x3e, 0, 0, 7];
        nl.create_macvlan(
            &LinkSpec {
                name: "mv0",
                mac: Some(mac),
                mtu: None,
                up: true,
                netns: None,
            },
            "par0",
            MacvlanMode::Bridge,
        )
        .unwrap();
        let mv = get(&nl, "mv0");
        assert_eq!(mv.kind, "macvlan");
        assert_eq!(mv.mac, Some(mac));
        assert!(mv.up);
        nl.create_macvlan(&LinkSpec::new("mv1"), "par0", MacvlanMode::Private)
            .unwrap();
        let e = nl
            .create_macvlan(&LinkSpec::new("mv2"), "nosuch0", MacvlanMode::Bridge)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("nosuch0"), "{e}");
        assert!(nl.link("mv2").unwrap().is_none());
        nl.delete_link("par0").unwrap();
        assert!(
            nl.link("mv0").unwrap().is_none(),
            "macvlans go with their parent"
        );
    });
}

#[test]
fn addresses_and_routes() {
    if !root() {
        return;
    }
    in_own_netns(|| {
        let nl = Netlink::open().unwrap();
        nl.create_bridge(&LinkSpec {
            up: true,
            ..LinkSpec::new("br1")
        })
        .unwrap();
        // A port with carrier so the bridge is operationally up.
        nl.create_veth(
            &LinkSpec {
                up: true,
                ..LinkSpec::new("bp0")
            },
            &LinkSpec {
                up: true,
                ..LinkSpec::new("bp1")
            },
        )
        .unwrap();
        nl.set_master("bp0", Some("br1")).unwrap();
        let br = get(&nl, "br1").index;
        let v4: IpAddr = "10.77.0.1".parse().unwrap();
        let v6: IpAddr = "fd77::1".parse().unwrap();
        nl.add_addr("br1", v4, 24).unwrap();
        nl.add_addr("br1", v4, 24).unwrap(); // already there: fine
        nl.add_addr("br1", v6, 64).unwrap();
        let addrs = nl.addrs().unwrap();
        let mine: Vec<_> = addrs.iter().filter(|a| a.index == br).collect();
        assert!(
            mine.iter()
                .any(|a| a.addr == v4 && a.prefix == 24 && a.scope == 0),
            "{addrs:?}"
        );
        assert!(
            mine.iter().any(|a| a.addr == v6 && a.prefix == 64),
            "{addrs:?}"
        );
        assert_eq!(mine.iter().filter(|a| a.addr == v4).count(), 1);

        let routes = nl.routes().unwrap();
        let net: IpAddr = "10.77.0.0".parse().unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.dst == net && r.prefix == 24 && r.oif == Some(br) && r.table == 254),
            "connected route missing: {routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r.dst == v4 && r.prefix == 32 && r.table == 255),
            "local route of the address missing: {routes:?}"
        );

        let dst: IpAddr = "10.78.0.0".parse().unwrap();
        let gw: IpAddr = "10.77.0.2".parse().unwrap();
        nl.add_route(dst, 16, "br1", Some(gw)).unwrap();
        let e = nl.add_route(dst, 16, "br1", Some(gw)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        let r = nl.routes().unwrap();
        assert!(
            r.iter().any(|r| r.dst == dst
                && r.prefix == 16
                && r.gateway == Some(gw)
                && r.oif == Some(br)),
            "{r:?}"
        );
        let dst6: IpAddr = "fd78::".parse().unwrap();
        nl.add_route(dst6, 64, "br1", None).unwrap();
        assert!(nl
            .routes()
            .unwrap()
            .iter()
            .any(|r| r.dst == dst6 && r.prefix == 64));
        nl.del_route(dst6, 64, "br1", None).unwrap();
        nl.del_route(dst, 16, "br1", Some(gw)).unwrap();
        let r = nl.routes().unwrap();
        assert!(!r.iter().any(|r| r.dst == dst || r.dst == dst6), "{r:?}");
        let e = nl.del_route(dst, 16, "br1", Some(gw)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

        nl.del_addr("br1", v4, 24).unwrap();
        nl.del_addr("br1", v6, 64).unwrap();
        let addrs = nl.addrs().unwrap();
        assert!(
            !addrs.iter().any(|a| a.addr == v4 || a.addr == v6),
            "{addrs:?}"
        );
        assert!(!nl
            .routes()
            .unwrap()
            .iter()
            .any(|r| r.dst == net && r.prefix == 24));
        let e = nl.add_addr("br1", v4, 33).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        nl.delete_link("bp0").unwrap();
        nl.delete_link("br1").unwrap();
    });
}

#[test]
fn bad_requests_are_clear_errors() {
    if !root() {
        return;
    }
    in_own_netns(|| {
        let nl = Netlink::open().unwrap();
        let e = nl
            .create_bridge(&LinkSpec::new("a-name-too-long0"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("a-name-too-long0"), "{e}");
        let e = nl
            .create_veth(&LinkSpec::new("ok0"), &LinkSpec::new("bad/name"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(nl.link("ok0").unwrap().is_none(), "nothing created");

        nl.create_bridge(&LinkSpec::new("dup0")).unwrap();
        let e = nl.create_bridge(&LinkSpec::new("dup0")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(e.to_string().contains("create bridge dup0"), "{e}");
        let e = nl
            .create_veth(&LinkSpec::new("dup0"), &LinkSpec::new("peer0"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(nl.link("peer0").unwrap().is_none());

        let e = nl.set_master("dup0", Some("nosuch0")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = nl.set_up("nosuch0", true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("nosuch0"), "{e}");
        let e = nl.set_mtu("dup0", 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        eprintln!("kernel's text for a too-small MTU: {e}");
        let e = nl
            .add_addr("nosuch0", "10.1.1.1".parse().unwrap(), 24)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = netlink::in_netns(i32::MAX, || Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        nl.delete_link("dup0").unwrap();
    });
}
