//! `bivy admin init` (lxd init) against a real daemon, each test in a network namespace of its
//! own (the bridges it makes, and the `auto` subnet picked from the routes, stay there):
//! `--auto` makes the bridge and the default profile's devices and a second run writes nothing;
//! `--preseed` creates, updates by overriding keys, and is idempotent; a preseed failing half way
//! (a bad network key, a bad server key) leaves the server as it was, and one that cannot apply
//! changes nothing at all; `--dump` fed back is a no-op; `--auto` with btrfs replaces the
//! daemon's untouched first pool (and puts it back when the new one fails); the interactive
//! questions answered on a terminal (`script`), and the refusal without one.
//!
//! "Writes nothing" is checked on the daemon's state file, replaced (a new inode) on every
//! change the daemon records.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Daemon, Netns};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A daemon in a network namespace of the test's own, or `None` after recording a skip.
fn setup() -> Option<(Netns, Daemon)> {
    if !common::require_root() {
        return None;
    }
    for tool in ["nft", "nsenter", "unshare", "ip"] {
        if !common::have_cmd(tool) {
            common::skip(
                &common::current_test_name(),
                &format!("{tool} is not installed"),
            );
            return None;
        }
    }
    let ns = Netns::new().expect("network namespace");
    let d = Daemon::start_in(&ns, &[]).expect("daemon");
    Some((ns, d))
}

/// `bivy admin init --preseed` with `yaml` on stdin.
fn preseed(d: &Daemon, yaml: &str) -> Output {
    d.with_stdin(&["admin", "init", "--preseed"], yaml.as_bytes())
}

#[track_caller]
fn preseed_ok(d: &Daemon, yaml: &str) {
    let out = preseed(d, yaml);
    assert!(
        out.status.success(),
        "preseed failed: {}{}\n{yaml}\ndaemon log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        d.log_text()
    );
    assert_eq!(text(&out.stdout), "", "lxd init --preseed prints nothing");
}

/// The error of a preseed that must fail.
#[track_caller]
fn preseed_err(d: &Daemon, yaml: &str) -> String {
    let out = preseed(d, yaml);
    assert!(
        !out.status.success(),
        "preseed succeeded: {}\n{yaml}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

fn dump(d: &Daemon) -> String {
    d.ok(&["admin", "init", "--dump"])
}

/// The daemon's state files as they are now: every recorded change replaces the document or
/// grows its log.
fn db_state(d: &Daemon) -> (u64, i64, i64, u64) {
    let m = std::fs::metadata(d.database_path()).expect("database.json");
    let log = std::fs::metadata(d.dir().join("database.log")).map_or(0, |l| l.len());
    (m.ino(), m.mtime(), m.mtime_nsec(), log)
}

/// `metadata` of a GET.
#[track_caller]
fn get(d: &Daemon, path: &str) -> serde_json::Value {
    let (status, v) = d.api("GET", path, None).expect("api");
    assert_eq!(status, 200, "GET {path}: {v}");
    v["metadata"].clone()
}

fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.run("ip", &["link", "show", name]).0
}

#[test]
fn auto_makes_the_bridge_and_devices_then_changes_nothing() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&["admin", "init", "--auto"]);

    let net = get(&d, "/1.0/networks/bivybr0");
    assert_eq!(net["managed"], true, "{net}");
    assert_eq!(net["type"], "bridge", "{net}");
    let v4 = net["config"]["ipv4.address"].as_str().unwrap_or("");
    let octets: Vec<&str> = v4.trim_end_matches(".1/24").split('.').collect();
    assert!(
        v4.starts_with("10.") && v4.ends_with(".1/24") && octets.len() == 3,
        "auto picked {v4:?}"
    );
    assert_eq!(net["config"]["ipv6.address"], "none", "{net}");
    assert_eq!(net["config"]["ipv4.nat"], "true", "{net}");
    assert!(link_exists(&ns, "bivybr0"));
    let prof = get(&d, "/1.0/profiles/default");
    assert_eq!(
        prof["devices"]["eth0"],
        serde_json::json!({"name": "eth0", "network": "bivybr0", "type": "nic"})
    );
    assert_eq!(
        prof["devices"]["root"],
        serde_json::json!({"path": "/", "pool": "default", "type": "disk"})
    );
    assert_eq!(
        get(&d, "/1.0/storage-pools"),
        serde_json::json!(["/1.0/storage-pools/default"])
    );

    // Again: nothing is written, no second bridge appears.
    let (state, before) = (db_state(&d), dump(&d));
    d.ok(&["admin", "init", "--auto"]);
    assert_eq!(db_state(&d), state, "a second --auto changed the server");
    assert_eq!(dump(&d), before);
    assert!(!link_exists(&ns, "bivybr1"));

    // The listener: set once, then nothing.
    let listen = [
        "admin",
        "init",
        "--auto",
        "--network-address",
        "127.0.0.1",
        "--network-port",
        "8443",
    ];
    d.ok(&listen);
    assert_eq!(
        get(&d, "/1.0")["config"]["core.https_address"],
        "127.0.0.1:8443"
    );
    let state = db_state(&d);
    d.ok(&listen);
    assert_eq!(db_state(&d), state, "the same address was set again");

    // LXD's flag checks.
    let out = d.run(&["admin", "init", "--auto", "--network-port", "8443"]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "Error: --network-port can't be used without --network-address\n"
    );
}

#[test]
fn preseed_creates_updates_and_is_idempotent_and_dump_round_trips() {
    let Some((ns, mut d)) = setup() else { return };
    d.on_cleanup(|d| {
        let _ = d.api("DELETE", "/1.0/profiles/web", None);
    });
    let doc = "\
config:
  images.auto_update_interval: 12
storage_pools:
- name: p2
  driver: dir
  description: second pool
networks:
- name: br1
  type: bridge
  config:
    ipv4.address: 10.201.7.1/24
    ipv4.nat: false
    ipv6.address: none
profiles:
- name: default
  devices:
    eth0: {name: eth0, network: br1, type: nic}
- name: web
  description: web servers
  config:
    limits.processes: 200
  devices:
    root: {path: /, pool: p2, type: disk}
";
    preseed_ok(&d, doc);
    assert_eq!(
        get(&d, "/1.0")["config"]["images.auto_update_interval"],
        "12"
    );
    let pool = get(&d, "/1.0/storage-pools/p2");
    assert_eq!(pool["driver"], "dir");
    assert_eq!(pool["description"], "second pool");
    let net = get(&d, "/1.0/networks/br1");
    assert_eq!(net["config"]["ipv4.address"], "10.201.7.1/24");
    assert_eq!(net["config"]["ipv4.nat"], "false");
    assert!(link_exists(&ns, "br1"));
    let prof = get(&d, "/1.0/profiles/default");
    assert_eq!(prof["devices"]["eth0"]["network"], "br1");
    assert_eq!(prof["devices"]["root"]["pool"], "default", "kept");
    assert_eq!(prof["description"], "Default bivy profile", "kept");
    let web = get(&d, "/1.0/profiles/web");
    assert_eq!(web["description"], "web servers");
    assert_eq!(web["config"]["limits.processes"], "200");
    assert_eq!(web["devices"]["root"]["pool"], "p2");

    // The same document again writes nothing.
    let state = db_state(&d);
    preseed_ok(&d, doc);
    assert_eq!(db_state(&d), state, "a second preseed changed the server");

    // An update overrides the keys given and keeps the rest; `auto` keeps the address.
    preseed_ok(
        &d,
        "networks:\n- name: br1\n  description: lab\n  config:\n    ipv4.address: auto\n    dns.domain: lab\n",
    );
    let net = get(&d, "/1.0/networks/br1");
    assert_eq!(net["description"], "lab");
    assert_eq!(net["config"]["ipv4.address"], "10.201.7.1/24");
    assert_eq!(net["config"]["ipv4.nat"], "false");
    assert_eq!(net["config"]["dns.domain"], "lab");

    // The dump has what was made, in lxd init --dump's shape, and fed back changes nothing.
    let dumped = dump(&d);
    for want in [
        "config:\n  images.auto_update_interval: \"12\"\nnetworks:\n- config:\n",
        "  description: lab\n  name: br1\n  type: bridge\n  project: default\n",
        "  description: second pool\n  name: p2\n  driver: dir\n",
        "  description: web servers\n  devices:\n    root:\n      path: /\n      pool: p2\n      type: disk\n  name: web\n",
    ] {
        assert!(dumped.contains(want), "{want:?} not in:\n{dumped}");
    }
    assert!(
        !dumped.contains("name: lo\n"),
        "unmanaged interfaces: {dumped}"
    );
    let state = db_state(&d);
    preseed_ok(&d, &dumped);
    assert_eq!(db_state(&d), state, "the dump fed back changed the server");
    assert_eq!(dump(&d), dumped);
}

#[test]
fn a_failed_preseed_leaves_the_server_as_it_was() {
    let Some((ns, d)) = setup() else { return };
    d.ok(&["admin", "init", "--auto"]);
    let before = dump(&d);
    let nets = get(&d, "/1.0/networks?recursion=1");
    let profiles = get(&d, "/1.0/profiles?recursion=1");
    let unchanged = |d: &Daemon| {
        assert_eq!(dump(d), before);
        assert_eq!(get(d, "/1.0/networks?recursion=1"), nets);
        assert_eq!(get(d, "/1.0/profiles?recursion=1"), profiles);
        assert!(!link_exists(&ns, "good1"), "a created bridge was left");
    };

    // A bad key in the third network: the pool, the first network and the update of the
    // existing bridge are undone.
    let err = preseed_err(
        &d,
        "\
config:
  images.auto_update_interval: 3
storage_pools:
- name: p3
  driver: dir
networks:
- name: bivybr0
  description: changed
  config:
    ipv4.nat: false
- name: good1
  config:
    ipv4.address: 10.202.0.1/24
- name: bad1
  config:
    ipv4.bogus: 1
profiles:
- name: default
  config:
    limits.processes: 100
- name: extra
",
    );
    assert!(
        err.starts_with("Error: Failed to create network \"bad1\": ") && err.contains("ipv4.bogus"),
        "{err}"
    );
    assert!(
        err.ends_with("(the 3 changes made before it were undone)\n"),
        "{err}"
    );
    unchanged(&d);

    // The server config is applied last; its failure undoes the rest.
    let err = preseed_err(
        &d,
        "\
config:
  core.https_address: nope
networks:
- name: good1
  config:
    ipv4.address: 10.202.0.1/24
profiles:
- name: default
  devices:
    eth1: {name: eth1, network: good1, type: nic}
- name: extra
",
    );
    assert!(
        err.starts_with("Error: Failed to update server configuration: "),
        "{err}"
    );
    assert!(
        err.ends_with("(the 3 changes made before it were undone)\n"),
        "{err}"
    );
    unchanged(&d);

    // What cannot apply is refused before any change.
    let state = db_state(&d);
    for (doc, want) in [
        (
            "networks:\n- name: good2\ncluster:\n  enabled: true\n",
            "Error: not supported yet: clustering (\"cluster\")\n",
        ),
        (
            "networks:\n- name: good2\nprofiles:\n- name: x\n  devices:\n    root: {type: disk, path: /, pool: nope}\n",
            "Error: profile \"x\": device \"root\" names storage pool \"nope\", which neither exists nor is in the preseed\n",
        ),
        (
            "networks:\n- name: good2\n  typo: 1\n",
            "Error: networks item 1 (\"good2\"): unknown field `typo`",
        ),
        (
            "networks:\n- name: lo\n",
            "Error: network \"lo\" is an interface of the host, not a managed network",
        ),
        (
            "storage_pools:\n- name: default\n  driver: btrfs\n",
            "Error: storage pool \"default\" exists with driver \"dir\"",
        ),
    ] {
        let err = preseed_err(&d, doc);
        assert!(err.starts_with(want), "{doc}: {err}");
    }
    assert_eq!(db_state(&d), state, "a refused preseed changed the server");
    assert!(!link_exists(&ns, "good2"));
}

#[test]
fn auto_btrfs_replaces_the_untouched_first_pool() {
    if let Err(why) = common::btrfs_supported() {
        if common::require_root() {
            common::skip(&common::current_test_name(), &why);
        }
        return;
    }
    let Some((_ns, mut d)) = setup() else { return };
    // The btrfs `default` pool (a loop mount) goes before the daemon does.
    d.on_cleanup(|d| {
        let (_, p) = d.api("GET", "/1.0/profiles/default", None).expect("api");
        let mut put = p["metadata"].clone();
        if let Some(devs) = put["devices"].as_object_mut() {
            devs.retain(|_, v| v["pool"] != "default");
        }
        let _ = d.api("PUT", "/1.0/profiles/default", Some(&put.to_string()));
        let _ = d.api("DELETE", "/1.0/storage-pools/default", None);
    });
    let before = dump(&d);

    // Not a btrfs directory: the daemon's error, and the first pool and root disk are back.
    let dir = d.tmp().join("not-btrfs");
    std::fs::create_dir(&dir).expect("mkdir");
    let out = d.run(&[
        "admin",
        "init",
        "--auto",
        "--storage-backend",
        "btrfs",
        "--storage-pool",
        dir.to_str().expect("utf-8"),
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.starts_with("Error: Failed to create storage pool \"default\": ")
            && err.contains("not on a btrfs filesystem")
            && err.ends_with("(the 2 changes made before it were undone)\n"),
        "{err}"
    );
    assert_eq!(dump(&d), before);

    let loop_auto = [
        "admin",
        "init",
        "--auto",
        "--storage-backend",
        "btrfs",
        "--storage-create-loop",
        "1",
    ];
    d.ok(&loop_auto);
    let pool = get(&d, "/1.0/storage-pools/default");
    assert_eq!(pool["driver"], "btrfs", "{pool}");
    assert_eq!(pool["config"]["size"], "1GiB", "{pool}");
    let prof = get(&d, "/1.0/profiles/default");
    assert_eq!(prof["devices"]["root"]["pool"], "default");
    assert_eq!(prof["devices"]["eth0"]["network"], "bivybr0");

    // The pool as asked: nothing to do. Another one: storage is configured, as LXD says.
    let state = db_state(&d);
    d.ok(&loop_auto);
    assert_eq!(db_state(&d), state, "a second --auto changed the server");
    let out = d.run(&["admin", "init", "--auto", "--storage-backend", "dir"]);
    assert_eq!(
        text(&out.stderr),
        "Error: Storage has already been configured\n"
    );
    assert_eq!(db_state(&d), state);
}

#[test]
fn interactive_on_a_terminal_and_refused_without_one() {
    let Some((_ns, d)) = setup() else { return };
    let out = d.run(&["admin", "init"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with("Error: bivy admin init asks its questions on a terminal"),
        "{}",
        text(&out.stderr)
    );
    if !common::have_cmd("script") {
        common::skip(
            &common::current_test_name(),
            "script (util-linux) is not installed",
        );
        return;
    }
    // clustering, new pool (default no), new bridge, its name, IPv4, NAT, IPv6 (default none),
    // over the network, images auto-update, print the preseed.
    let answers = "no\n\nyes\nlab0\n10.203.0.1/24\nno\n\nno\nno\nyes\n";
    let bin = common::bivy_bin();
    let mut cmd = Command::new("script");
    cmd.args([
        "-qec",
        &format!("{} admin init", bin.display()),
        "/dev/null",
    ])
    .env("BIVY_DIR", d.dir())
    .env("BIVY_CONF", d.tmp().join("bivy-conf"))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn script");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(answers.as_bytes())
        .expect("answers");
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !waiter.is_finished() {
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = waiter.join().expect("join").expect("script");
    // The terminal turns line ends into CRLF.
    let shown = text(&out.stdout).replace("\r\n", "\n");
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    for want in [
        "Would you like to use bivy clustering? (yes/no) [default=no]: ",
        "Do you want to configure a new storage pool? (yes/no) [default=no]: ",
        "What should the new bridge be called? [default=bivybr0]: ",
        "Would you like bivy to NAT IPv4 traffic on your bridge? [default=yes]: ",
        "Would you like a YAML \"bivy admin init\" preseed to be printed? (yes/no) [default=no]: ",
        "  name: lab0\n",
    ] {
        assert!(shown.contains(want), "{want:?} not in:\n{shown}");
    }
    let net = get(&d, "/1.0/networks/lab0");
    assert_eq!(net["config"]["ipv4.address"], "10.203.0.1/24");
    assert_eq!(net["config"]["ipv4.nat"], "false");
    assert_eq!(net["config"]["ipv6.address"], "none");
    let prof = get(&d, "/1.0/profiles/default");
    assert_eq!(prof["devices"]["eth0"]["network"], "lab0");
    assert_eq!(prof["devices"]["root"]["pool"], "default");
    assert_eq!(
        get(&d, "/1.0")["config"]["images.auto_update_interval"],
        "0"
    );
}
