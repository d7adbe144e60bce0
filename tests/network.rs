//! Managed bridges and NICs, end to end, each test in a network namespace of its own (with its
//! own daemon in it; killing the namespace's holder takes every link and rule along): bivy's
//! DHCP to busybox's udhcpc, ping both ways, two containers reaching each other, DNS for
//! `<name>.bivy` from the host side and from a container, NAT rules present and removed, leases
//! and addresses kept across a `kill -9` of the daemon, static addresses (one NIC's per network,
//! as lxc sets them), p2p and macvlan NICs, a foreign forward chain with a drop policy
//! (Docker's), the refusals that make nothing, the leases and names of deleted instances,
//! removed NICs and renamed instances gone, and a bridge address unset meaning none.
//! Real containers, as root. No packet leaves the test's namespaces.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Netns};

fn setup() -> Option<(Netns, Daemon)> {
    common::netns_daemon(&["nft"])
}

/// The IPv4 address `iface` of `ct` got (non-link-local), waiting up to 20 s.
fn wait_ipv4(d: &Daemon, ct: &str, iface: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = d
            .api("GET", &format!("/1.0/instances/{ct}/state"), None)
            .expect("state");
        if let Some(addrs) = v["metadata"]["network"][iface]["addresses"].as_array() {
            if let Some(a) = addrs
                .iter()
                .find(|a| a["family"] == "inet" && a["scope"] == "global")
            {
                return a["address"].as_str().expect("address").to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{ct} got no IPv4 address on {iface}: {v}\ndaemon log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn launch_on(d: &Daemon, ct: &str, net: &str, extra: &[&str]) {
    d.ok(&["init", "bb", ct]);
    let mut args = vec!["config", "device", "add", ct, "eth0", "nic"];
    let n = format!("network={net}");
    args.push(&n);
    args.push("name=eth0");
    args.extend_from_slice(extra);
    d.ok(&args);
    d.ok(&["start", ct]);
}

fn fails(d: &Daemon, args: &[&str], want: &str) {
    failed_with("bivy", d.run(args), args, want);
}

/// `out` (stdout and stderr) of `who args`, which must have failed saying `want`.
fn failed_with(who: &str, out: std::process::Output, args: &[&str], want: &str) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{who} {args:?} succeeded: {text}");
    assert!(
        text.contains(want),
        "{who} {args:?}: want {want:?} in {text:?}"
    );
}

/// The addresses busybox's nslookup gets for `name` from the DNS server at `server`, asked from
/// the test's namespace (none when the name does not resolve).
fn dns_a(ns: &Netns, name: &str, server: &str) -> Vec<String> {
    let (_, out) = ns.run("busybox", &["nslookup", "-type=a", name, server]);
    out.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter(|l| l.starts_with("Address"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

/// The leases of managed network `net`, as `lxc network list-leases` reads them.
fn leases(d: &Daemon, net: &str) -> Vec<serde_json::Value> {
    let (_, v) = d
        .api("GET", &format!("/1.0/networks/{net}/leases"), None)
        .expect("leases");
    v["metadata"].as_array().expect("leases").clone()
}

/// Whether `net` has a lease of `ip` for `host`.
fn has_lease(d: &Daemon, net: &str, host: &str, ip: &str) -> bool {
    leases(d, net)
        .iter()
        .any(|l| l["hostname"] == host && l["address"] == ip)
}

fn nft_ruleset(ns: &Netns) -> String {
    let (ok, out) = ns.run("nft", &["list", "ruleset"]);
    assert!(ok, "nft list ruleset: {out}");
    out
}

#[test]
fn dhcp_ping_dns_and_nat_on_a_managed_bridge() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&[
        "network",
        "create",
        "bvt0",
        "ipv4.address=10.201.7.1/24",
        "ipv4.nat=true",
    ]);
    // The bridge, its address and bivy's rules are there.
    let (ok, out) = ns.run("ip", &["-4", "addr", "show", "dev", "bvt0"]);
    assert!(ok && out.contains("10.201.7.1/24"), "{out}");
    let rules = nft_ruleset(&ns);
    assert!(rules.contains("table inet bivy"), "{rules}");
    assert!(rules.contains("masquerade"), "{rules}");

    // A NIC's MAC is made with the instance or the device, as LXD makes it: the instance's name
    // on the network is bound to it before its first start (no other client can take it).
    d.ok(&["init", "bb", "s1"]);
    d.ok(&[
        "config",
        "device",
        "add",
        "s1",
        "eth0",
        "nic",
        "network=bvt0",
        "name=eth0",
    ]);
    let mac = d.ok(&["config", "get", "s1", "volatile.eth0.hwaddr"]);
    assert!(mac.trim().starts_with("00:16:3e:"), "{mac:?}");
    // Set by hand, as LXD lets it be (a unicast MAC), and used by the next start.
    d.ok(&[
        "config",
        "set",
        "s1",
        "volatile.eth0.hwaddr",
        "00:16:3e:12:34:56",
    ]);
    fails(
        &d,
        &[
            "config",
            "set",
            "s1",
            "volatile.eth0.hwaddr",
            "01:00:5e:00:00:01",
        ],
        "not a unicast MAC",
    );
    fails(
        &d,
        &["config", "set", "s1", "volatile.eth0.host_name", "vethx"],
        "managed by the daemon",
    );
    d.ok(&["start", "s1"]);
    let out = d.ok(&["exec", "s1", "--", "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(out.trim(), "00:16:3e:12:34:56");
    fails(
        &d,
        &[
            "config",
            "set",
            "s1",
            "volatile.eth0.hwaddr",
            "00:16:3e:12:34:57",
        ],
        "while the instance is stopped",
    );
    d.ok(&["delete", "--force", "s1"]);

    launch_on(&d, "c1", "bvt0", &[]);
    launch_on(&d, "c2", "bvt0", &[]);
    let ip1 = wait_ipv4(&d, "c1", "eth0");
    let ip2 = wait_ipv4(&d, "c2", "eth0");
    assert!(
        ip1.starts_with("10.201.7.") && ip2.starts_with("10.201.7."),
        "{ip1} {ip2}"
    );
    assert_ne!(ip1, ip2);

    // Host side to container, container to host and to the other container.
    let (ok, out) = ns.run("busybox", &["ping", "-c1", "-W2", &ip1]);
    assert!(ok, "ping {ip1} from the host side: {out}");
    d.ok(&["exec", "c1", "--", "ping", "-c1", "-W2", "10.201.7.1"]);
    d.ok(&["exec", "c1", "--", "ping", "-c1", "-W2", &ip2]);

    // DNS: c1.bivy from the host side and from c2; a name nobody has is NXDOMAIN.
    let (ok, out) = ns.run("busybox", &["nslookup", "c1.bivy", "10.201.7.1"]);
    assert!(
        ok && out.contains(&ip1),
        "nslookup c1.bivy from the host: {out}"
    );
    let out = d.ok(&["exec", "c2", "--", "nslookup", "c1.bivy", "10.201.7.1"]);
    assert!(out.contains(&ip1), "nslookup c1.bivy from c2: {out}");
    let out = d.run(&["exec", "c2", "--", "nslookup", "nosuch.bivy", "10.201.7.1"]);
    assert!(!out.status.success(), "nosuch.bivy resolved");
    // A container's own DNS server answers the others (the NIC filter drops DHCP and router
    // servers, and anything sent as the bridge's address, not port 53).
    d.ok(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "nc -ll -p 53 -e echo hi >/dev/null 2>&1 </dev/null &",
    ]);
    let ask = format!(
        "for i in 1 2 3 4 5; do nc -w 2 {ip1} 53 </dev/null | grep -q hi && exit 0; sleep 1; done; exit 1"
    );
    d.ok(&["exec", "c2", "--", "sh", "-c", &ask]);

    // Leases, as `lxc network list-leases` reads them.
    for (ct, ip) in [("c1", &ip1), ("c2", &ip2)] {
        assert!(
            has_lease(&d, "bvt0", ct, ip),
            "{ct} {ip} missing from {:?}",
            leases(&d, "bvt0")
        );
    }
    // The state names the host end of the veth.
    let (_, v) = d
        .api("GET", "/1.0/instances/c1/state", None)
        .expect("state");
    let host = v["metadata"]["network"]["eth0"]["host_name"]
        .as_str()
        .expect("host_name")
        .to_string();
    assert!(host.starts_with("veth"), "{v}");
    let (ok, out) = ns.run("ip", &["link", "show", "dev", &host]);
    assert!(ok && out.contains("master bvt0"), "{out}");
    // `bivy list` shows the address as lxc does.
    let out = d.ok(&["list", "c1", "--format", "csv", "-c", "n4"]);
    assert_eq!(out.trim(), format!("c1,{ip1} (eth0)"));

    // In use: no delete; once the containers are gone, delete removes bridge and rules.
    fails(&d, &["network", "delete", "bvt0"], "in use");
    d.ok(&["delete", "-f", "c1", "c2"]);
    d.ok(&["network", "delete", "bvt0"]);
    let (ok, _) = ns.run("ip", &["link", "show", "dev", "bvt0"]);
    assert!(!ok, "bvt0 still exists");
    let rules = nft_ruleset(&ns);
    assert!(!rules.contains("bvt0"), "{rules}");
}

#[test]
fn leases_and_rules_survive_a_daemon_kill() {
    let Some((ns, mut d)) = setup() else { return };
    d.ok(&["network", "create", "bvt1", "ipv4.address=10.201.8.1/24"]);
    launch_on(&d, "k1", "bvt1", &[]);
    let ip = wait_ipv4(&d, "k1", "eth0");
    let before = nft_ruleset(&ns);
    d.kill9();
    d.restart().expect("restart");
    // Same rules (no duplicates), same lease, still reachable.
    assert_eq!(nft_ruleset(&ns), before);
    assert!(has_lease(&d, "bvt1", "k1", &ip), "{:?}", leases(&d, "bvt1"));
    let (ok, out) = ns.run("busybox", &["ping", "-c1", "-W2", &ip]);
    assert!(ok, "{out}");
    // A restarted container asks again and gets the same address back.
    d.ok(&["restart", "-f", "k1"]);
    assert_eq!(wait_ipv4(&d, "k1", "eth0"), ip);
    d.ok(&["delete", "-f", "k1"]);
    d.ok(&["network", "delete", "bvt1"]);
}

#[test]
fn static_address_p2p_and_macvlan_nics() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&["network", "create", "bvt2", "ipv4.address=10.201.9.1/24"]);
    launch_on(
        &d,
        "s1",
        "bvt2",
        &["ipv4.address=10.201.9.77", "hwaddr=00:16:3e:01:02:03"],
    );
    assert_eq!(wait_ipv4(&d, "s1", "eth0"), "10.201.9.77");
    let v = leases(&d, "bvt2");
    assert!(
        v.iter().any(|l| l["hostname"] == "s1"
            && l["address"] == "10.201.9.77"
            && l["hwaddr"] == "00:16:3e:01:02:03"
            && l["type"] == "static"),
        "{v:?}"
    );

    // Another instance cannot take the same static address.
    d.ok(&["init", "bb", "s2"]);
    fails(
        &d,
        &[
            "config",
            "device",
            "add",
            "s2",
            "eth0",
            "nic",
            "network=bvt2",
            "ipv4.address=10.201.9.77",
        ],
        "IP address \"10.201.9.77\" already defined on another NIC (instance \"s1\"",
    );
    d.ok(&["delete", "s2"]);

    // p2p: the host end is named and joins nothing; macvlan on a parent of the test's own (a
    // veth end: this kernel has no dummy driver).
    for args in [
        vec![
            "link", "add", "mvp0", "type", "veth", "peer", "name", "mvq0",
        ],
        vec!["link", "set", "mvp0", "up"],
        vec!["link", "set", "mvq0", "up"],
    ] {
        let (ok, out) = ns.run("ip", &args);
        assert!(ok, "ip {args:?}: {out}");
    }
    d.ok(&["init", "bb", "p1"]);
    d.ok(&[
        "config",
        "device",
        "add",
        "p1",
        "eth0",
        "nic",
        "nictype=p2p",
        "host_name=vp1host",
    ]);
    d.ok(&[
        "config",
        "device",
        "add",
        "p1",
        "mv",
        "nic",
        "nictype=macvlan",
        "parent=mvp0",
        "name=eth1",
    ]);
    d.ok(&["start", "p1"]);
    let (ok, out) = ns.run("ip", &["link", "show", "dev", "vp1host"]);
    assert!(ok && !out.contains("master"), "{out}");
    let out = d.ok(&["exec", "p1", "--", "ip", "-o", "link"]);
    assert!(out.contains("eth0") && out.contains("eth1"), "{out}");
    let (_, v) = d.api("GET", "/1.0/instances/p1", None).expect("get");
    assert_eq!(
        v["metadata"]["config"]["volatile.eth0.host_name"], "vp1host",
        "{v}"
    );
    // Stopped: the host end is gone with the container's namespace, and forgotten.
    d.ok(&["stop", "-f", "p1"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.run("ip", &["link", "show", "dev", "vp1host"]).0 {
        assert!(Instant::now() < deadline, "vp1host outlived its container");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, v) = d.api("GET", "/1.0/instances/p1", None).expect("get");
    assert!(
        v["metadata"]["config"]["volatile.eth0.host_name"].is_null(),
        "{v}"
    );
    assert!(
        v["metadata"]["config"]["volatile.eth0.hwaddr"].is_string(),
        "{v}"
    );
    d.ok(&["delete", "-f", "s1", "p1"]);
    d.ok(&["network", "delete", "bvt2"]);
}

#[test]
fn bad_networks_and_nics_are_refused_with_nothing_made() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&["network", "create", "bvt3", "ipv4.address=10.201.10.1/24"]);
    fails(
        &d,
        &["network", "create", "bvt4", "ipv4.address=10.201.10.9/16"],
        "overlaps",
    );
    fails(
        &d,
        &[
            "network",
            "create",
            "averyverylongname0",
            "ipv4.address=10.202.0.1/24",
        ],
        "15 characters",
    );
    fails(
        &d,
        &["network", "create", "bvt5", "ipv4.address=10.202.0.0/24"],
        "ipv4.address",
    );
    fails(
        &d,
        &["network", "create", "bvt5", "nosuch.key=1"],
        "nosuch.key",
    );
    fails(&d, &["network", "create", "lo"], "already exists");
    let (ok, out) = ns.run("ip", &["-o", "link"]);
    assert!(
        ok && !out.contains("bvt4") && !out.contains("bvt5"),
        "{out}"
    );
    d.ok(&["init", "bb", "n1"]);
    fails(
        &d,
        &[
            "config",
            "device",
            "add",
            "n1",
            "eth0",
            "nic",
            "network=nosuch",
        ],
        "Network not found",
    );
    d.ok(&[
        "config",
        "device",
        "add",
        "n1",
        "eth0",
        "nic",
        "nictype=macvlan",
        "parent=nosuch0",
    ]);
    fails(&d, &["start", "n1"], "nosuch0");
    let (_, v) = d.api("GET", "/1.0/instances/n1", None).expect("get");
    assert_eq!(v["metadata"]["status"], "Stopped", "{v}");
    d.ok(&["delete", "n1"]);
    d.ok(&["network", "delete", "bvt3"]);
}

#[test]
fn a_foreign_forward_drop_policy_does_not_cut_containers_off() {
    let Some((ns, d)) = setup() else { return };
    // "Outside": a second namespace behind a veth pair, 192.0.2.0/24.
    let out_ns = Netns::new().expect("outside namespace");
    let peer = out_ns.pid().to_string();
    for args in [
        vec![
            "link", "add", "vout", "type", "veth", "peer", "name", "vin", "netns", &peer,
        ],
        vec!["addr", "add", "192.0.2.1/24", "dev", "vout"],
        vec!["link", "set", "vout", "up"],
    ] {
        let (ok, out) = ns.run("ip", &args);
        assert!(ok, "ip {args:?}: {out}");
    }
    for args in [
        vec!["addr", "add", "192.0.2.2/24", "dev", "vin"],
        vec!["link", "set", "vin", "up"],
    ] {
        let (ok, out) = out_ns.run("ip", &args);
        assert!(ok, "ip {args:?}: {out}");
    }
    // What Docker does to the host: a forward chain that drops by policy, in a table of its own.
    let mut nft = ns.cmd("nft");
    nft.args([
        "add table ip filter ; add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }",
    ]);
    let o = nft.output().expect("nft");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    d.ok(&[
        "network",
        "create",
        "bvt6",
        "ipv4.address=10.201.11.1/24",
        "ipv4.nat=true",
    ]);
    launch_on(&d, "f1", "bvt6", &[]);
    wait_ipv4(&d, "f1", "eth0");
    d.ok(&["exec", "f1", "--", "ping", "-c1", "-W2", "192.0.2.2"]);
    let (ok, chain) = ns.run("nft", &["list", "chain", "ip", "filter", "FORWARD"]);
    assert!(ok && chain.contains("bivy:bvt6"), "{chain}");
    d.ok(&["delete", "-f", "f1"]);
    d.ok(&["network", "delete", "bvt6"]);
    let (_, chain) = ns.run("nft", &["list", "chain", "ip", "filter", "FORWARD"]);
    assert!(!chain.contains("bivy:bvt6"), "{chain}");
}

#[test]
fn the_unmodified_lxc_drives_networks() {
    if !common::lxc_prerequisites() {
        return;
    }
    let Some((_ns, d)) = setup() else { return };
    let l = common::Lxc::new(&d);
    assert_eq!(
        l.ok(&[
            "network",
            "create",
            "bvt7",
            "ipv4.address=10.201.12.1/24",
            "ipv4.nat=false"
        ]),
        "Network bvt7 created\n"
    );
    let out = l.ok(&["network", "list", "--format", "csv"]);
    assert!(
        out.lines()
            .any(|r| r.starts_with("bvt7,bridge,YES,10.201.12.1/24,none,,0,CREATED")),
        "{out}"
    );
    let out = l.ok(&["network", "show", "bvt7"]);
    assert!(
        out.contains("ipv4.address: 10.201.12.1/24") && out.contains("managed: true"),
        "{out}"
    );
    l.ok(&["launch", "bb", "x1", "--network", "bvt7"]);
    let ip = wait_ipv4(&d, "x1", "eth0");
    let out = l.ok(&["list", "x1", "--format", "csv", "-c", "n4"]);
    assert_eq!(out.trim(), format!("x1,{ip} (eth0)"));
    let out = l.ok(&["network", "list-leases", "bvt7", "--format", "csv"]);
    assert!(out.contains("x1,") && out.contains(&ip), "{out}");
    assert!(
        out.contains("bvt7.gw,") && out.contains("10.201.12.1,GATEWAY"),
        "{out}"
    );
    l.ok(&["delete", "-f", "x1"]);
    assert_eq!(
        l.ok(&["network", "delete", "bvt7"]),
        "Network bvt7 deleted\n"
    );
}

/// `lxc` output (stdout and stderr) of a command that must fail.
fn lxc_fails(l: &common::Lxc, args: &[&str], want: &str) {
    failed_with("lxc", l.run(args), args, want);
}

/// QA's case with lxc 5.0.2: a static address is one NIC's on a network, refused when the config
/// would give it to a second (override, copy, profile added, profile changed; the holder
/// stopped), and the other instances' static addresses keep being served.
#[test]
fn a_static_address_is_refused_to_a_second_nic_as_lxc_sets_it() {
    if !common::lxc_prerequisites() {
        return;
    }
    let Some((_ns, d)) = setup() else { return };
    let l = common::Lxc::new(&d);
    l.ok(&["network", "create", "bvt8", "ipv4.address=10.201.13.1/24"]);
    l.ok(&["profile", "create", "netp"]);
    l.ok(&[
        "profile",
        "device",
        "add",
        "netp",
        "eth0",
        "nic",
        "network=bvt8",
        "name=eth0",
    ]);
    for c in ["c3", "c4", "c5", "c6"] {
        l.ok(&["init", "bb", c, "-p", "default", "-p", "netp"]);
    }
    l.ok(&[
        "config",
        "device",
        "override",
        "c3",
        "eth0",
        "ipv4.address=10.201.13.50",
        "hwaddr=00:16:3e:00:13:50",
    ]);
    let taken = "IP address \"10.201.13.50\" already defined on another NIC (instance \"c3\"";
    lxc_fails(&l, &["copy", "c3", "c3copy"], taken);
    lxc_fails(
        &l,
        &[
            "config",
            "device",
            "override",
            "c4",
            "eth0",
            "ipv4.address=10.201.13.50",
        ],
        taken,
    );
    // A copy given an address of its own is made.
    l.ok(&[
        "copy",
        "c3",
        "c3copy",
        "--device",
        "eth0,ipv4.address=10.201.13.51",
        "--device",
        "eth0,hwaddr=00:16:3e:00:13:51",
    ]);
    assert_eq!(
        l.ok(&["config", "device", "get", "c3copy", "eth0", "ipv4.address"]),
        "10.201.13.51\n"
    );
    // Another instance's change is served.
    l.ok(&[
        "config",
        "device",
        "override",
        "c5",
        "eth0",
        "ipv4.address=10.201.13.60",
        "hwaddr=00:16:3e:00:13:60",
    ]);
    let leases = l.ok(&["network", "list-leases", "bvt8", "--format", "csv"]);
    for want in [
        "c3,",
        "10.201.13.50,STATIC",
        "c3copy,",
        "10.201.13.51,STATIC",
        "c5,",
        "10.201.13.60,STATIC",
    ] {
        assert!(leases.contains(want), "{want} in {leases}");
    }
    // A profile added or changed that would give two instances one address.
    l.ok(&["profile", "create", "p2"]);
    l.ok(&[
        "profile",
        "device",
        "add",
        "p2",
        "eth1",
        "nic",
        "network=bvt8",
        "name=eth1",
        "ipv4.address=10.201.13.80",
    ]);
    l.ok(&["profile", "add", "c4", "p2"]);
    lxc_fails(
        &l,
        &["profile", "add", "c5", "p2"],
        "IP address \"10.201.13.80\" already defined on another NIC (instance \"c4\"",
    );
    lxc_fails(
        &l,
        &[
            "profile",
            "device",
            "set",
            "netp",
            "eth0",
            "ipv4.address=10.201.13.90",
        ],
        "IP address \"10.201.13.90\" already defined on another NIC (instance \"c",
    );
    let log = d.log_text();
    assert!(!log.contains("static leases"), "{log}");
    l.ok(&["delete", "c3", "c3copy", "c4", "c5", "c6"]);
    l.ok(&["profile", "delete", "netp"]);
    l.ok(&["profile", "delete", "p2"]);
    l.ok(&["network", "delete", "bvt8"]);
}

/// The UDP ports something listens on in the test's namespace (`/proc/net/udp`).
fn udp_ports(ns: &Netns) -> Vec<u16> {
    let (ok, text) = ns.run("cat", &["/proc/net/udp"]);
    assert!(ok, "{text}");
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.split_once(':'))
        .filter_map(|(_, port)| u16::from_str_radix(port, 16).ok())
        .collect()
}

/// QA's case with lxc 5.0.2: `network unset NET ipv4.address` (or an edit without the key)
/// leaves the bridge without IPv4, as LXD's: no address, no DHCP or DNS, no NAT, and the key
/// stays unset (it picked a new random subnet each time). The same for `ipv6.address`.
#[test]
fn an_unset_bridge_address_means_none() {
    if !common::lxc_prerequisites() {
        return;
    }
    let Some((ns, d)) = setup() else { return };
    let l = common::Lxc::new(&d);
    l.ok(&[
        "network",
        "create",
        "bvt9",
        "ipv4.address=10.201.14.1/24",
        "ipv4.nat=true",
        "ipv6.address=fd42:4242:4242:4242::1/64",
    ]);
    assert!(nft_ruleset(&ns).contains("masquerade"));
    assert!(udp_ports(&ns).contains(&67), "no DHCP server");
    let no_ipv4 = |what: &str| {
        let show = l.ok(&["network", "show", "bvt9"]);
        assert!(!show.contains("ipv4.address"), "{what}: {show}");
        let (_, addrs) = ns.run("ip", &["-4", "addr", "show", "dev", "bvt9"]);
        assert!(!addrs.contains("inet "), "{what}: {addrs}");
        let rules = nft_ruleset(&ns);
        assert!(!rules.contains("masquerade"), "{what}: {rules}");
        let ports = udp_ports(&ns);
        assert!(
            !ports.contains(&67) && !ports.contains(&53),
            "{what}: {ports:?}"
        );
    };
    for _ in 0..3 {
        l.ok(&["network", "unset", "bvt9", "ipv4.address"]);
        no_ipv4("unset");
    }
    l.ok(&["network", "unset", "bvt9", "ipv6.address"]);
    let show = l.ok(&["network", "show", "bvt9"]);
    assert!(!show.contains("ipv6.address"), "{show}");
    let (_, addrs) = ns.run(
        "ip",
        &["-6", "addr", "show", "dev", "bvt9", "scope", "global"],
    );
    assert!(!addrs.contains("inet6"), "{addrs}");
    // An edit without the key, after it was given again.
    l.ok(&["network", "set", "bvt9", "ipv4.address=10.201.14.1/24"]);
    assert!(udp_ports(&ns).contains(&67), "no DHCP server");
    let out = l.with_stdin(
        &["network", "edit", "bvt9"],
        b"config:\n  ipv4.nat: \"true\"\ndescription: no addresses\n",
    );
    assert!(out.status.success(), "{out:?}");
    no_ipv4("edit");
    l.ok(&["network", "delete", "bvt9"]);
}

#[test]
fn nics_are_hot_plugged_and_unplugged_on_a_running_container() {
    let Some((ns, mut d)) = setup() else { return };
    d.ok(&["network", "create", "bvt8", "ipv4.address=10.201.13.1/24"]);
    launch_on(&d, "h1", "bvt8", &[]);
    wait_ipv4(&d, "h1", "eth0");
    d.ok(&[
        "config",
        "device",
        "add",
        "h1",
        "eth1",
        "nic",
        "network=bvt8",
        "name=eth1",
    ]);
    let (_, v) = d.api("GET", "/1.0/instances/h1", None).expect("get");
    let cfg = &v["metadata"]["config"];
    let host = cfg["volatile.eth1.host_name"]
        .as_str()
        .expect("host_name")
        .to_string();
    let mac = cfg["volatile.eth1.hwaddr"]
        .as_str()
        .expect("hwaddr")
        .to_string();
    let out = d.ok(&["exec", "h1", "--", "cat", "/sys/class/net/eth1/address"]);
    assert_eq!(out.trim(), mac);
    let (ok, out) = ns.run("ip", &["link", "show", "dev", &host]);
    assert!(ok && out.contains("master bvt8"), "{out}");
    // From inside, the new interface reaches the bridge once it has an address.
    d.ok(&[
        "exec",
        "h1",
        "--",
        "udhcpc",
        "-q",
        "-n",
        "-i",
        "eth1",
        "-s",
        "/usr/share/udhcpc/default.script",
    ]);
    d.ok(&[
        "exec",
        "h1",
        "--",
        "ping",
        "-c1",
        "-W2",
        "-I",
        "eth1",
        "10.201.13.1",
    ]);
    // A NIC that cannot be made is refused and changes nothing.
    fails(
        &d,
        &[
            "config",
            "device",
            "add",
            "h1",
            "bad",
            "nic",
            "nictype=macvlan",
            "parent=nosuch0",
            "name=eth2",
        ],
        "nosuch0",
    );
    let (_, v) = d.api("GET", "/1.0/instances/h1", None).expect("get");
    assert!(v["metadata"]["devices"]["bad"].is_null(), "{v}");
    // Unplugged: gone inside and on the host, and forgotten.
    d.ok(&["config", "device", "remove", "h1", "eth1"]);
    let out = d.run(&["exec", "h1", "--", "cat", "/sys/class/net/eth1/address"]);
    assert!(!out.status.success(), "eth1 still in the container");
    let (ok, _) = ns.run("ip", &["link", "show", "dev", &host]);
    assert!(!ok, "{host} still on the host");
    let (_, v) = d.api("GET", "/1.0/instances/h1", None).expect("get");
    assert!(
        v["metadata"]["config"]["volatile.eth1.hwaddr"].is_null(),
        "{v}"
    );
    assert!(
        v["metadata"]["config"]["volatile.eth1.host_name"].is_null(),
        "{v}"
    );
    // An unnamed NIC hot-plugged beside eth0 gets the next free name, as at a start
    // (`lxc network attach` sends none).
    d.ok(&[
        "config",
        "device",
        "add",
        "h1",
        "net2",
        "nic",
        "network=bvt8",
    ]);
    let (_, v) = d.api("GET", "/1.0/instances/h1", None).expect("get");
    let mac = v["metadata"]["config"]["volatile.net2.hwaddr"]
        .as_str()
        .expect("hwaddr")
        .to_string();
    let out = d.ok(&["exec", "h1", "--", "cat", "/sys/class/net/eth1/address"]);
    assert_eq!(out.trim(), mac);
    // A static address set on a running NIC is its lease from now on; the NIC stays as it
    // is (LXD updates it in place).
    let index = |d: &Daemon| d.ok(&["exec", "h1", "--", "cat", "/sys/class/net/eth0/ifindex"]);
    let before = index(&d);
    d.ok(&[
        "config",
        "device",
        "set",
        "h1",
        "eth0",
        "ipv4.address=10.201.13.77",
    ]);
    assert_eq!(index(&d), before, "eth0 was made again");
    assert!(
        has_lease(&d, "bvt8", "h1", "10.201.13.77"),
        "{:?}",
        leases(&d, "bvt8")
    );
    // Restarts right after live changes: each run's host ends stay recorded (the watcher of
    // the stopped run must not clear the new run's), so a daemon restart re-plugs nothing.
    for i in 0..5 {
        d.ok(&["config", "set", "h1", &format!("user.round={i}")]);
        d.ok(&["restart", "-f", "h1"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (_, v) = d.api("GET", "/1.0/instances/h1", None).expect("get");
        for dev in ["eth0", "net2"] {
            let host = v["metadata"]["config"][format!("volatile.{dev}.host_name")]
                .as_str()
                .unwrap_or_else(|| {
                    panic!(
                        "round {i}: no host end recorded for {dev}: {}",
                        v["metadata"]["config"]
                    )
                })
                .to_string();
            let (ok, out) = ns.run("ip", &["link", "show", "dev", &host]);
            assert!(ok && out.contains("master bvt8"), "round {i}: {out}");
        }
    }
    let before = index(&d);
    d.kill9();
    d.restart().expect("restart");
    assert_eq!(index(&d), before, "eth0 was made again");
    d.ok(&["delete", "-f", "h1"]);
    d.ok(&["network", "delete", "bvt8"]);
}

#[test]
fn debian_gets_an_address_through_systemd_networkd() {
    let Some(img) = common::debian_image_or_skip() else {
        return;
    };
    let Some((ns, d)) = setup() else { return };
    d.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "debian",
    ]);
    d.ok(&["network", "create", "bvt9", "ipv4.address=10.201.14.1/24"]);
    d.ok(&["init", "debian", "deb"]);
    d.ok(&[
        "config",
        "device",
        "add",
        "deb",
        "eth0",
        "nic",
        "network=bvt9",
        "name=eth0",
    ]);
    let t = Instant::now();
    d.ok(&["start", "deb"]);
    let ip = wait_ipv4(&d, "deb", "eth0");
    eprintln!("debian: {ip} on eth0 {:?} after start", t.elapsed());
    assert!(ip.starts_with("10.201.14."), "{ip}");
    let (ok, out) = ns.run("busybox", &["ping", "-c1", "-W2", &ip]);
    assert!(ok, "{out}");
    // networkd sent the container's name, which DNS now answers.
    let (ok, out) = ns.run("busybox", &["nslookup", "deb.bivy", "10.201.14.1"]);
    assert!(ok && out.contains(&ip), "{out}");
    d.ok(&["delete", "-f", "deb"]);
    d.ok(&["network", "delete", "bvt9"]);
}

#[test]
fn ipv6_addresses_by_slaac_from_bivy_router_advertisements() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&[
        "network",
        "create",
        "bvt10",
        "ipv4.address=10.201.15.1/24",
        "ipv6.address=fd42:b1:0:7::1/64",
        "ipv6.nat=true",
    ]);
    launch_on(&d, "v6", "bvt10", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let (_, v) = d
            .api("GET", "/1.0/instances/v6/state", None)
            .expect("state");
        let found = v["metadata"]["network"]["eth0"]["addresses"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|a| a["family"] == "inet6" && a["scope"] == "global")
                    .and_then(|a| a["address"].as_str().map(str::to_string))
            });
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no SLAAC address: {v}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(addr.starts_with("fd42:b1:0:7:"), "{addr}");
    // Duplicate address detection keeps a new address tentative for about a second.
    let (ok, out) = ns.run("busybox", &["ping", "-6", "-c1", "-w5", &addr]);
    assert!(ok, "ping {addr}: {out}\n{}", nft_ruleset(&ns));
    let rules = nft_ruleset(&ns);
    assert!(rules.contains("fd42:b1:0:7::/64"), "{rules}");
    // The bridge's DNS answers AAAA with it (read from the instance's own namespace), and A
    // with its lease.
    let (ok, out) = ns.run(
        "busybox",
        &["nslookup", "-type=aaaa", "v6.bivy", "10.201.15.1"],
    );
    assert!(ok && out.contains(&addr), "{out}");
    d.ok(&["delete", "-f", "v6"]);
    d.ok(&["network", "delete", "bvt10"]);
}

#[test]
fn physical_nic_moves_in_and_back_out() {
    let Some((ns, d)) = setup() else { return };
    // The "physical" link: one end of a veth pair of the test's own (no dummy driver here); the
    // other end stays on the host to talk to the container through it.
    for args in [
        vec![
            "link", "add", "phy0", "mtu", "1400", "type", "veth", "peer", "name", "phy0p",
        ],
        vec!["addr", "add", "10.250.0.1/24", "dev", "phy0p"],
        vec!["link", "set", "phy0p", "up"],
    ] {
        let (ok, out) = ns.run("ip", &args);
        assert!(ok, "ip {args:?}: {out}");
    }
    // (`ip`, not /sys/class/net: the test's sysfs shows the host's namespace.)
    let link_field = |link: &str, key: &str| {
        let (_, out) = ns.run("ip", &["-o", "link", "show", "dev", link]);
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .map(|w| w.to_string())
            .unwrap_or_default()
    };
    let mac_of = |link: &str| link_field(link, "link/ether");
    let host_mac = mac_of("phy0");
    d.ok(&["init", "bb", "ph"]);
    d.ok(&[
        "config",
        "device",
        "add",
        "ph",
        "wan",
        "nic",
        "nictype=physical",
        "parent=phy0",
        "name=wan0",
        "mtu=1300",
    ]);
    d.ok(&["start", "ph"]);
    // In the container under its name, with its MTU and its own MAC; gone from the host.
    let out = d.ok(&[
        "exec",
        "ph",
        "--",
        "cat",
        "/sys/class/net/wan0/mtu",
        "/sys/class/net/wan0/address",
    ]);
    assert_eq!(out, format!("1300\n{host_mac}\n"));
    assert!(
        !ns.run("ip", &["link", "show", "dev", "phy0"]).0,
        "phy0 still on the host"
    );
    // It carries traffic.
    d.ok(&[
        "exec",
        "ph",
        "--",
        "ip",
        "addr",
        "add",
        "10.250.0.2/24",
        "dev",
        "wan0",
    ]);
    let (ok, out) = ns.run("busybox", &["ping", "-c1", "-w5", "10.250.0.2"]);
    assert!(ok, "{out}");
    // Stopped: back on the host under its name, with its MTU.
    d.ok(&["stop", "-f", "ph"]);
    assert_eq!(
        link_field("phy0", "mtu"),
        "1400",
        "phy0 not given back as it was"
    );
    assert_eq!(mac_of("phy0"), host_mac);
    // A parent that is not there: the start is refused, naming it.
    d.ok(&["config", "device", "set", "ph", "wan", "parent", "nosuch0"]);
    fails(
        &d,
        &["start", "ph"],
        "Parent device \"nosuch0\" doesn't exist on the host",
    );
    // Hot-plugged into a running container and removed again.
    d.ok(&["config", "device", "remove", "ph", "wan"]);
    d.ok(&["start", "ph"]);
    d.ok(&[
        "config",
        "device",
        "add",
        "ph",
        "wan",
        "nic",
        "nictype=physical",
        "parent=phy0",
        "name=wan0",
        "hwaddr=00:16:3e:12:34:56",
    ]);
    let out = d.ok(&["exec", "ph", "--", "cat", "/sys/class/net/wan0/address"]);
    assert_eq!(out, "00:16:3e:12:34:56\n");
    assert!(!ns.run("ip", &["link", "show", "dev", "phy0"]).0);
    d.ok(&["config", "device", "remove", "ph", "wan"]);
    assert!(
        ns.run("ip", &["link", "show", "dev", "phy0"]).0,
        "not given back on removal"
    );
    assert_eq!(mac_of("phy0"), host_mac, "its MAC not restored");
    d.ok(&["delete", "-f", "ph"]);
    let (ok, _) = ns.run("ip", &["link", "del", "phy0"]);
    assert!(ok);
}

#[test]
fn a_removed_nic_takes_its_lease_and_name_along() {
    let Some((ns, d)) = setup() else { return };
    let gw = "10.201.19.1";
    d.ok(&["network", "create", "bvt9", "ipv4.address=10.201.19.1/24"]);
    launch_on(&d, "tmpc", "bvt9", &[]);
    let ip1 = wait_ipv4(&d, "tmpc", "eth0");
    assert_eq!(dns_a(&ns, "tmpc.bivy", gw), vec![ip1.clone()]);
    let leases = |d: &common::Daemon| serde_json::Value::from(leases(d, "bvt9")).to_string();

    // Deleted: its lease and name go; the next instance of that name has its own address only.
    d.ok(&["delete", "-f", "tmpc"]);
    assert!(dns_a(&ns, "tmpc.bivy", gw).is_empty(), "{}", leases(&d));
    assert!(
        !leases(&d).contains(&format!("\"{ip1}\"")),
        "{}",
        leases(&d)
    );
    launch_on(&d, "tmpc", "bvt9", &[]);
    let ip2 = wait_ipv4(&d, "tmpc", "eth0");
    assert_eq!(dns_a(&ns, "tmpc.bivy", gw), vec![ip2.clone()]);

    // A second NIC, detached while running: its lease goes.
    d.ok(&[
        "config",
        "device",
        "add",
        "tmpc",
        "eth1",
        "nic",
        "network=bvt9",
        "name=eth1",
    ]);
    d.ok(&[
        "exec",
        "tmpc",
        "--",
        "udhcpc",
        "-q",
        "-n",
        "-i",
        "eth1",
        "-x",
        "hostname:tmpc",
        "-s",
        "/usr/share/udhcpc/default.script",
    ]);
    assert_eq!(dns_a(&ns, "tmpc.bivy", gw).len(), 2, "{}", leases(&d));
    d.ok(&["network", "detach", "bvt9", "tmpc", "eth1"]);
    assert_eq!(
        dns_a(&ns, "tmpc.bivy", gw),
        vec![ip2.clone()],
        "{}",
        leases(&d)
    );

    // Renamed while stopped: the old name no longer resolves, the new one does.
    d.ok(&["stop", "-f", "tmpc"]);
    d.ok(&["rename", "tmpc", "tmpd"]);
    assert!(dns_a(&ns, "tmpc.bivy", gw).is_empty(), "{}", leases(&d));
    assert_eq!(dns_a(&ns, "tmpd.bivy", gw), vec![ip2.clone()]);

    // Its NIC removed while stopped: the lease goes.
    d.ok(&["config", "device", "remove", "tmpd", "eth0"]);
    assert!(dns_a(&ns, "tmpd.bivy", gw).is_empty(), "{}", leases(&d));
    assert!(
        !leases(&d).contains(&format!("\"{ip2}\"")),
        "{}",
        leases(&d)
    );
    d.ok(&["delete", "tmpd"]);
    d.ok(&["network", "delete", "bvt9"]);
}
