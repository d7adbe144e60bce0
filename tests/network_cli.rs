//! `bivy network` on a managed bridge, end to end against `bivy daemon`: create, list, show,
//! get/set/unset, edit from stdin, rename, info, list-leases, attach/detach with `network=`,
//! delete; lxc 5.0.2's messages and tables. The daemon runs in a network namespace of the
//! test's own (its bridge, 10.254.77.0/24, and rules never reach the host's); no container is
//! started.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{Daemon, Netns};

#[test]
fn managed_bridge_cli() {
    if !common::require_root() {
        return;
    }
    let ns = Netns::new().expect("network namespace");
    let d = Daemon::start_in(&ns, &[]).expect("daemon");
    let create = d.run(&[
        "network",
        "create",
        "bvt0",
        "ipv4.address=10.254.77.1/24",
        "ipv6.address=none",
        "ipv4.nat=false",
        "--description",
        "bivy test",
    ]);
    assert!(create.status.success(), "{create:?}");
    assert_eq!(
        String::from_utf8_lossy(&create.stdout),
        "Network bvt0 created\n"
    );

    let list = d.ok(&["network", "list", "--format", "csv"]);
    assert!(
        list.contains("bvt0,bridge,YES,10.254.77.1/24,none,bivy test,0,CREATED\n"),
        "{list}"
    );
    let table = d.ok(&["network", "list"]);
    assert!(
        table.contains("| bvt0 ") && table.contains("| 10.254.77.1/24 |"),
        "{table}"
    );
    let show = d.ok(&["network", "show", "bvt0"]);
    assert!(
        show.starts_with("config:\n  ipv4.address: 10.254.77.1/24\n")
            && show.contains("description: bivy test\nname: bvt0\ntype: bridge\n")
            && show.contains("managed: true\nstatus: Created\n"),
        "{show}"
    );

    // get/set/unset, both set syntaxes; get prints nothing for an unset key.
    assert_eq!(
        d.ok(&["network", "get", "bvt0", "ipv4.address"]),
        "10.254.77.1/24\n"
    );
    d.ok(&[
        "network",
        "set",
        "bvt0",
        "ipv4.nat=true",
        "ipv4.dhcp.expiry=2h",
    ]);
    d.ok(&["network", "set", "bvt0", "dns.domain", "bvt"]);
    assert_eq!(d.ok(&["network", "get", "bvt0", "ipv4.nat"]), "true\n");
    assert_eq!(d.ok(&["network", "get", "bvt0", "dns.domain"]), "bvt\n");
    d.ok(&["network", "unset", "bvt0", "ipv4.dhcp.expiry"]);
    assert_eq!(d.ok(&["network", "get", "bvt0", "ipv4.dhcp.expiry"]), "");

    // edit from stdin: the writable part only, like lxc.
    let mut child = d
        .cli()
        .args(["network", "edit", "bvt0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bivy");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            b"config:\n  ipv4.address: 10.254.77.1/24\n  ipv6.address: none\ndescription: edited\n",
        )
        .expect("write stdin");
    let out = child.wait_with_output().expect("bivy edit");
    assert!(out.status.success(), "{out:?}");
    let show = d.ok(&["network", "show", "bvt0"]);
    assert!(
        show.contains("description: edited\n") && !show.contains("ipv4.nat"),
        "{show}"
    );

    assert_eq!(
        d.ok(&["network", "rename", "bvt0", "bvt1"]),
        "Network bvt0 renamed to bvt1\n"
    );
    let info = d.ok(&["network", "info", "bvt1"]);
    assert!(
        info.starts_with("Name: bvt1\nMAC address: ")
            && info.contains("\nIP addresses:\n  inet\t10.254.77.1/24 (global)\n")
            && info.contains("\nNetwork usage:\n  Bytes received: ")
            && info.contains("\nBridge:\n  ID: "),
        "{info}"
    );
    let leases = d.ok(&["network", "list-leases", "bvt1"]);
    let header: Vec<&str> = leases
        .lines()
        .nth(1)
        .unwrap_or("")
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["HOSTNAME", "MAC ADDRESS", "IP ADDRESS", "TYPE"],
        "{leases}"
    );
    // The bridge's own address is listed as LXD lists it.
    assert!(
        leases.contains("| bvt1.gw ")
            && leases.contains("| 10.254.77.1 ")
            && leases.contains("| GATEWAY |"),
        "{leases}"
    );

    // attach/detach on a managed network: `network=`, device and interface names as given.
    let img = common::busybox_image();
    d.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "busybox",
    ]);
    d.ok(&["init", "busybox", "c1"]);
    d.ok(&["network", "attach", "bvt1", "c1", "eth0", "eth0"]);
    assert_eq!(
        d.ok(&["config", "device", "show", "c1"]),
        "eth0:\n  name: eth0\n  network: bvt1\n  type: nic\n"
    );
    let used = d.ok(&["network", "list", "--format", "csv"]);
    assert!(used.contains(",edited,1,"), "used_by: {used}");
    d.ok(&["network", "detach", "bvt1", "c1"]);
    assert_eq!(d.ok(&["config", "device", "list", "c1"]), "");
    d.ok(&["init", "busybox", "c2", "--network", "bvt1"]);
    assert_eq!(
        d.ok(&["config", "device", "show", "c2"]),
        "eth0:\n  name: eth0\n  network: bvt1\n  type: nic\n"
    );
    d.ok(&["delete", "c1", "c2"]);

    assert_eq!(
        d.ok(&["network", "delete", "bvt1"]),
        "Network bvt1 deleted\n"
    );
    assert!(!d.ok(&["network", "list"]).contains("bvt1"));
}
