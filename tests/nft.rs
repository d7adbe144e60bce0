//! Root tests of `bivy::net::nft` with the real `nft` and kernel. Each test runs on a thread
//! that unshared its own network namespace; `nft` children spawned from that thread start in it,
//! so the host's ruleset is never read or changed (everything vanishes with the namespace).
//! Container namespaces, when needed, are held by `unshare -n sleep` children started and killed
//! by PID. No packet leaves the test's namespaces.

mod common;

use std::io;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use bivy::net::netlink::{self, LinkSpec, Netlink, Netns};
use bivy::net::nft::{BridgeRules, ForeignChain, Nft, NicFilter};

fn in_own_netns(f: impl FnOnce() + Send + 'static) {
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// Root and `nft`, else a recorded skip.
fn ready() -> Option<Nft> {
    if !common::require_root() {
        return None;
    }
    match Nft::find() {
        Ok(n) => Some(n),
        Err(e) => {
            common::skip::skip(&common::skip::current_test_name(), &e.to_string());
            None
        }
    }
}

/// `nft ARGS` in the calling thread's namespace; its stdout.
fn nft(n: &Nft, args: &[&str]) -> String {
    let out = Command::new(n.path()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn load(n: &Nft, script: &str) {
    let mut c = Command::new(n.path())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "nft -f - failed:\n{script}");
}

fn rules(bridge: &str) -> BridgeRules {
    BridgeRules {
        bridge: bridge.into(),
        ipv4: Some(("10.0.3.1".parse().unwrap(), 24)),
        ipv4_nat: true,
        ipv6: Some(("fd42:1:2:3::1".parse().unwrap(), 64)),
        ipv6_nat: true,
        filters: vec![NicFilter {
            host_veth: "vethx1".into(),
            mac: [0x00, 0x16, 0x3e, 1, 2, 3],
            ipv4: Some("10.0.3.5".parse().unwrap()),
            ipv6: None,
        }],
    }
}

#[test]
fn bridge_rules_apply_idempotently_and_remove() {
    let Some(n) = ready() else { return };
    in_own_netns(move || {
        assert_eq!(nft(&n, &["list", "ruleset"]), "");
        n.apply_bridge(&rules("bivybr0")).unwrap();
        let first = nft(&n, &["list", "ruleset"]);
        for want in [
            "table inet bivy",
            "chain fwd.bivybr0",
            "chain in.bivybr0",
            "chain out.bivybr0",
            "chain pstrt.bivybr0",
            "ip saddr 10.0.3.0/24 ip daddr != 10.0.3.0/24 masquerade",
            "ip6 saddr fd42:1:2:3::/64 ip6 daddr != fd42:1:2:3::/64 masquerade",
            "table bridge bivy",
            "iifname \"vethx1\" ether saddr != 00:16:3e:01:02:03 drop",
        ] {
            assert!(first.contains(want), "{want:?} missing from\n{first}");
        }
        n.apply_bridge(&rules("bivybr0")).unwrap();
        let second = nft(&n, &["list", "ruleset"]);
        assert_eq!(first, second, "applying twice changed the ruleset");
        assert_eq!(second.matches("masquerade").count(), 2);

        // A second bridge has its own chains; NAT and filters off remove the chains they had.
        let mut other = rules("bivybr1");
        other.ipv4 = Some(("10.0.4.1".parse().unwrap(), 24));
        n.apply_bridge(&other).unwrap();
        other.ipv4_nat = false;
        other.ipv6_nat = false;
        other.filters.clear();
        n.apply_bridge(&other).unwrap();
        let both = nft(&n, &["list", "ruleset"]);
        assert!(both.contains("chain fwd.bivybr1"), "{both}");
        assert!(!both.contains("pstrt.bivybr1"), "{both}");
        assert!(!both.contains("nic.bivybr1"), "{both}");
        assert!(both.contains("pstrt.bivybr0"), "{both}");

        n.remove_bridge("bivybr0").unwrap();
        let left = nft(&n, &["list", "ruleset"]);
        assert!(!left.contains("bivybr0"), "{left}");
        assert!(left.contains("table inet bivy"), "{left}");
        assert!(
            !left.contains("table bridge bivy"),
            "the bridge table is deleted once empty:\n{left}"
        );
        n.remove_bridge("bivybr0").unwrap(); // missing is fine
        n.remove_bridge("bivybr1").unwrap();
        assert_eq!(nft(&n, &["list", "tables"]), "", "tables left behind");

        let e = n.apply_bridge(&rules("br\"0")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    });
}

#[test]
fn nft_errors_carry_its_stderr() {
    let Some(n) = ready() else { return };
    in_own_netns(move || {
        // A chain of a table that does not exist: nft refuses, and its words are in the error.
        let c = ForeignChain {
            family: "ip".into(),
            table: "nosuch".into(),
            chain: "FORWARD".into(),
            policy: "drop".into(),
        };
        let e = n.accept_in_foreign(&c, "br0").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("accept bridge br0 in ip nosuch FORWARD"), "{s}");
        assert!(s.contains("No such file or directory"), "nft's stderr: {s}");
    });
}

fn docker_table(with_user: bool) -> String {
    if with_user {
        "table ip filter {\n chain DOCKER-USER {\n  return\n }\n \
         chain FORWARD {\n  type filter hook forward priority 0; policy drop;\n  jump DOCKER-USER\n }\n}\n"
            .into()
    } else {
        "table ip filter {\n chain FORWARD {\n  type filter hook forward priority 0; policy drop;\n }\n}\n"
            .into()
    }
}

fn bivy_rules_in(n: &Nft, chain: &str) -> usize {
    let out = nft(n, &["list", "chain", "ip", "filter", chain]);
    out.lines()
        .filter(|l| l.contains("comment \"bivy:br0\""))
        .count()
}

#[test]
fn docker_forward_drop_is_found_and_opened() {
    let Some(n) = ready() else { return };
    in_own_netns(move || {
        n.apply_bridge(&rules("br0")).unwrap();
        assert!(
            n.foreign_forward_drops().unwrap().is_empty(),
            "bivy's own chains are not foreign"
        );
        for with_user in [false, true] {
            load(&n, &docker_table(with_user));
            let found = n.foreign_forward_drops().unwrap();
            assert_eq!(
                found,
                vec![ForeignChain {
                    family: "ip".into(),
                    table: "filter".into(),
                    chain: "FORWARD".into(),
                    policy: "drop".into(),
                }]
            );
            let target = if with_user { "DOCKER-USER" } else { "FORWARD" };
            n.accept_in_foreign(&found[0], "br0").unwrap();
            n.accept_in_foreign(&found[0], "br0").unwrap();
            assert_eq!(bivy_rules_in(&n, target), 2, "once, whatever the calls");
            let listing = nft(&n, &["list", "chain", "ip", "filter", target]);
            let first_rule = listing
                .lines()
                .map(str::trim)
                .find(|l| l.contains("accept") || l.contains("return") || l.contains("jump"))
                .unwrap();
            assert!(
                first_rule.starts_with("iifname \"br0\" accept"),
                "the accepts come first:\n{listing}"
            );
            if with_user {
                assert_eq!(bivy_rules_in(&n, "FORWARD"), 0);
            }
            n.remove_foreign_accepts("br0").unwrap();
            assert_eq!(bivy_rules_in(&n, target), 0);
            n.remove_foreign_accepts("br0").unwrap();
            load(&n, "delete table ip filter\n");
        }
        n.remove_bridge("br0").unwrap();
        assert_eq!(nft(&n, &["list", "tables"]), "");
    });
}

/// A process holding a second network namespace (`common::Netns`: killed and reaped on drop).
use common::Netns as NsHolder;

/// A "container" on bridge `br`: veth `host` in this namespace, `eth0` with `addr/24` and a
/// default route via `gw` in the holder's.
fn attach(nl: &Netlink, ns: &NsHolder, br: &str, host: &str, mac: [u8; 6], addr: &str, gw: &str) {
    nl.create_veth(
        &LinkSpec {
            up: true,
            ..LinkSpec::new(host)
        },
        &LinkSpec {
            name: "eth0",
            mac: Some(mac),
            mtu: None,
            up: true,
            netns: Some(Netns::Pid(ns.pid() as i32)),
        },
    )
    .unwrap();
    nl.set_master(host, Some(br)).unwrap();
    let addr: IpAddr = addr.parse().unwrap();
    let gw: IpAddr = gw.parse().unwrap();
    netlink::in_netns(ns.pid() as i32, move || {
        let nl = Netlink::open()?;
        nl.set_up("lo", true)?;
        nl.add_addr("eth0", addr, 24)?;
        nl.add_route("0.0.0.0".parse().unwrap(), 0, "eth0", Some(gw))
    })
    .unwrap();
}

/// `busybox ping` from the holder's namespace; true when a reply came.
fn ping(ns: &NsHolder, dst: &'static str, src: Option<&'static str>) -> bool {
    netlink::in_netns(ns.pid() as i32, move || {
        let mut c = Command::new("busybox");
        c.args(["ping", "-c", "1", "-W", "2"]);
        if let Some(s) = src {
            c.args(["-I", s]);
        }
        Ok(c.arg(dst)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success())
    })
    .unwrap()
}

#[test]
fn traffic_passes_a_foreign_drop_only_after_accept_in_foreign() {
    let Some(n) = ready() else { return };
    if !common::skip::have_cmd("busybox") {
        common::skip::skip(&common::skip::current_test_name(), "busybox not found");
        return;
    }
    in_own_netns(move || {
        let nl = Netlink::open().unwrap();
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        let (a, b) = (
            NsHolder::new().expect("network namespace"),
            NsHolder::new().expect("network namespace"),
        );
        let mac_a = [0x00, 0x16, 0x3e, 0, 0, 0xa];
        for (br, addr) in [("tbr0", "10.99.0.1"), ("tbr1", "10.98.0.1")] {
            nl.create_bridge(&LinkSpec {
                up: true,
                ..LinkSpec::new(br)
            })
            .unwrap();
            nl.add_addr(br, addr.parse().unwrap(), 24).unwrap();
        }
        attach(&nl, &a, "tbr0", "vha", mac_a, "10.99.0.2", "10.99.0.1");
        attach(
            &nl,
            &b,
            "tbr1",
            "vhb",
            [0x00, 0x16, 0x3e, 0, 0, 0xb],
            "10.98.0.2",
            "10.98.0.1",
        );
        let br0 = BridgeRules {
            bridge: "tbr0".into(),
            ipv4: Some(("10.99.0.1".parse().unwrap(), 24)),
            ipv4_nat: false,
            ipv6: None,
            ipv6_nat: false,
            filters: vec![NicFilter {
                host_veth: "vha".into(),
                mac: mac_a,
                ipv4: Some("10.99.0.2".parse().unwrap()),
                ipv6: None,
            }],
        };
        let br1 = BridgeRules {
            bridge: "tbr1".into(),
            ipv4: Some(("10.98.0.1".parse().unwrap(), 24)),
            filters: vec![],
            ..br0.clone()
        };
        n.apply_bridge(&br0).unwrap();
        n.apply_bridge(&br1).unwrap();
        assert!(ping(&a, "10.99.0.1", None), "a cannot reach its bridge");
        assert!(
            ping(&a, "10.98.0.2", None),
            "routed traffic without a foreign drop"
        );

        load(&n, &docker_table(true));
        assert!(
            !ping(&a, "10.98.0.2", None),
            "the foreign drop does not drop"
        );
        let found = n.foreign_forward_drops().unwrap();
        assert_eq!(found.len(), 1);
        n.accept_in_foreign(&found[0], "tbr0").unwrap();
        n.accept_in_foreign(&found[0], "tbr1").unwrap();
        assert!(
            ping(&a, "10.98.0.2", None),
            "accept_in_foreign did not open the path"
        );

        // The NIC filter: a second address on a's eth0 is a spoofed source, dropped by the bridge.
        netlink::in_netns(a.pid() as i32, || {
            Netlink::open()?.add_addr("eth0", "10.99.0.50".parse().unwrap(), 24)
        })
        .unwrap();
        assert!(
            ping(&a, "10.98.0.2", Some("10.99.0.2")),
            "its own address passes"
        );
        // ARP answers from the spoofed address are dropped too (arp saddr ip); permanent
        // neighbour entries on both sides leave the IPv4 source rule alone to stop the ping.
        if common::skip::have_cmd("ip") {
            let br_mac = nl.link("tbr0").unwrap().unwrap().mac.unwrap();
            let st = Command::new("ip")
                .args(["neigh", "replace", "10.99.0.50", "lladdr"])
                .arg(netlink::format_mac(mac_a))
                .args(["dev", "tbr0", "nud", "permanent"])
                .status()
                .unwrap();
            assert!(st.success(), "ip neigh replace on the host");
            let br_mac = netlink::format_mac(br_mac);
            netlink::in_netns(a.pid() as i32, move || {
                let st = Command::new("ip")
                    .args(["neigh", "replace", "10.99.0.1", "lladdr", &br_mac])
                    .args(["dev", "eth0", "nud", "permanent"])
                    .status()?;
                assert!(st.success());
                Ok(())
            })
            .unwrap();
        }
        assert!(
            !ping(&a, "10.98.0.2", Some("10.99.0.50")),
            "a spoofed source passed the bridge filter"
        );
        assert!(
            !ping(&a, "10.99.0.1", Some("10.99.0.50")),
            "spoofed to the host"
        );

        n.remove_foreign_accepts("tbr0").unwrap();
        n.remove_foreign_accepts("tbr1").unwrap();
        assert!(!ping(&a, "10.98.0.2", None), "the accepts were not removed");
        load(&n, "delete table ip filter\n");
        n.remove_bridge("tbr0").unwrap();
        n.remove_bridge("tbr1").unwrap();
        assert_eq!(nft(&n, &["list", "tables"]), "");
        for l in ["vha", "vhb", "tbr0", "tbr1"] {
            nl.delete_link(l).unwrap();
        }
        drop((a, b));
    });
}
