//! The bivy CLI end to end against `bivy daemon`: images, launch, list, exec (plain, stdin,
//! interactive), files (and the pull safety rule), config, profiles, lifecycle, errors.
//! Real containers, as root; skips (loudly) without root. The fixtures beside this file feed the
//! output unit tests in `src/cli/`.

#[path = "../common/mod.rs"]
mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Daemon;

fn with_stdin(d: &Daemon, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = d
        .cli()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bivy");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("bivy output")
}

#[test]
fn bivy_cli_end_to_end() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");

    // Server and images.
    let version = d.ok(&["version"]);
    assert!(
        version.starts_with("Client version: ") && version.contains("Server version: "),
        "{version}"
    );
    assert!(!version.contains("unreachable"), "{version}");
    assert!(d.ok(&["info"]).contains("api_version: \"1.0\""));
    let img = common::busybox_image();
    let out = d.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8 path"),
        "--alias",
        "busybox",
    ]);
    assert!(
        out.starts_with("Image imported with fingerprint: "),
        "{out}"
    );
    assert!(d
        .ok(&["image", "list", "--format", "csv"])
        .contains("busybox,"));
    let dup = d.run(&["image", "import", img.to_str().expect("utf-8 path")]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&dup.stderr).starts_with("Error: "),
        "{dup:?}"
    );

    // Launch; list as table, csv and json.
    assert_eq!(
        d.ok(&["launch", "busybox", "c1"]),
        "Creating c1\nStarting c1\n"
    );
    assert!(d.ok(&["list"]).contains("| c1   | RUNNING |"));
    assert_eq!(
        d.ok(&["list", "--format", "csv", "-c", "ns"]),
        "c1,RUNNING\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&d.ok(&["list", "--format", "json"])).expect("json");
    assert_eq!(json[0]["name"], "c1");
    assert_eq!(json[0]["state"]["status"], "Running");

    // exec: exit code, stdin, env and cwd, stderr.
    let out = d.run(&["exec", "c1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = with_stdin(&d, &["exec", "c1", "--", "cat"], b"through stdin\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    let out = d.ok(&[
        "exec",
        "c1",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $FOO; pwd",
    ]);
    assert_eq!(out, "bar\n/tmp\n");
    let out = d.run(&["exec", "c1", "--", "sh", "-c", "echo to-stderr >&2"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");

    // Interactive, under a pty from util-linux `script`; the window size reaches the pty.
    if common::have_cmd("script") {
        let cmdline = format!(
            "stty cols 100 rows 30; BIVY_DIR={} {} exec c1 -- sh -c 'tty; stty size; exit 3'",
            d.dir().display(),
            common::bivy_bin().display()
        );
        let out = common::run_bounded(
            Command::new("script").args(["-qec", &cmdline, "/dev/null"]),
            Duration::from_secs(60),
        )
        .expect("script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("/dev/pts/"), "no pty: {text:?}");
        assert!(text.contains("30 100"), "window size not sent: {text:?}");
        assert_eq!(out.status.code(), Some(3), "{text}");
    } else {
        common::skip(
            "bivy_cli_end_to_end (pty part)",
            "needs `script` (util-linux)",
        );
    }

    // Files both ways, with mode and owner; stdin and stdout.
    let local = d.tmp().join("pushed.txt");
    std::fs::write(&local, "hello from host\n").expect("write local");
    let lp = local.to_str().expect("utf-8");
    d.ok(&[
        "file",
        "push",
        "--mode",
        "0640",
        "--uid",
        "1000",
        "--gid",
        "1000",
        lp,
        "c1/root/pushed.txt",
    ]);
    assert_eq!(
        d.ok(&[
            "exec",
            "c1",
            "--",
            "stat",
            "-c",
            "%a %u %g",
            "/root/pushed.txt"
        ]),
        "640 1000 1000\n"
    );
    let pulled = d.tmp().join("pulled.txt");
    d.ok(&[
        "file",
        "pull",
        "c1/root/pushed.txt",
        pulled.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(&pulled).expect("pulled"),
        "hello from host\n"
    );
    assert_eq!(
        std::fs::metadata(&pulled).expect("stat").mode() & 0o7777,
        0o640
    );
    assert_eq!(
        d.ok(&["file", "pull", "c1/root/pushed.txt", "-"]),
        "hello from host\n"
    );
    let out = with_stdin(&d, &["file", "push", "-", "c1/root/from-stdin"], b"piped\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        d.ok(&["exec", "c1", "--", "cat", "/root/from-stdin"]),
        "piped\n"
    );
    // The pull safety rule: a destination bivy did not create keeps its mode (/dev/null!).
    let before = std::fs::metadata("/dev/null")
        .expect("stat /dev/null")
        .mode();
    d.ok(&["file", "pull", "c1/root/pushed.txt", "/dev/null"]);
    assert_eq!(
        std::fs::metadata("/dev/null")
            .expect("stat /dev/null")
            .mode(),
        before
    );
    std::fs::set_permissions(&pulled, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    d.ok(&[
        "file",
        "pull",
        "c1/root/pushed.txt",
        pulled.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::metadata(&pulled).expect("stat").mode() & 0o7777,
        0o600
    );
    d.ok(&["file", "delete", "c1/root/from-stdin"]);
    assert!(!d
        .run(&["file", "pull", "c1/root/from-stdin", "-"])
        .status
        .success());

    // Config.
    d.ok(&["config", "set", "c1", "user.note", "hello"]);
    d.ok(&["config", "set", "c1", "user.a=1", "user.b=2"]);
    assert_eq!(d.ok(&["config", "get", "c1", "user.note"]), "hello\n");
    let show = d.ok(&["config", "show", "c1"]);
    assert!(
        show.contains("  user.a: \"1\"\n") && show.contains("  user.note: hello\n"),
        "{show}"
    );
    d.ok(&["config", "unset", "c1", "user.note"]);
    assert_eq!(d.ok(&["config", "get", "c1", "user.note"]), "\n");
    let edited = show.replace("user.a: \"1\"", "user.a: \"edited\"");
    let out = with_stdin(&d, &["config", "edit", "c1"], edited.as_bytes());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.ok(&["config", "get", "c1", "user.a"]), "edited\n");

    // Profiles.
    assert_eq!(d.ok(&["profile", "create", "p1"]), "Profile p1 created\n");
    d.ok(&["profile", "set", "p1", "user.from-profile", "yes"]);
    assert_eq!(
        d.ok(&["profile", "add", "c1", "p1"]),
        "Profile p1 added to c1\n"
    );
    assert!(d
        .ok(&["config", "show", "c1", "--expanded"])
        .contains("user.from-profile: \"yes\""));
    assert!(d.ok(&["profile", "list"]).contains("| p1      |"));
    assert_eq!(
        d.ok(&["profile", "assign", "c1", "default"]),
        "Profiles default applied to c1\n"
    );

    // Lifecycle.
    let info = d.ok(&["info", "c1"]);
    assert!(
        info.starts_with("Name: c1\nStatus: RUNNING\n") && info.contains("PID: "),
        "{info}"
    );
    d.ok(&["stop", "c1", "--force"]);
    assert_eq!(
        d.ok(&["list", "--format", "csv", "-c", "ns"]),
        "c1,STOPPED\n"
    );
    d.ok(&["start", "c1"]);
    d.ok(&["restart", "c1", "--force"]);
    assert_eq!(
        d.ok(&["list", "--format", "csv", "-c", "ns"]),
        "c1,RUNNING\n"
    );
    let busy = d.run(&["delete", "c1"]);
    assert_eq!(
        String::from_utf8_lossy(&busy.stderr),
        "Error: The instance is currently running, stop it first or pass --force\n"
    );
    d.ok(&["delete", "--force", "c1"]);
    assert_eq!(d.ok(&["list", "--format", "csv"]), "");
    assert_eq!(d.ok(&["profile", "delete", "p1"]), "Profile p1 deleted\n");
}

#[test]
fn bivy_cli_errors() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let out = d.run(&["info", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error: Instance not found\n"
    );
    // As lxc: a simplestreams remote has no instances, an unknown one is named.
    let out = d.run(&["list", "images:"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error: The remote isn't a private LXD server\n"
    );
    let out = d.run(&["list", "nope:"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error: The remote \"nope\" doesn't exist\n"
    );
    let out = d.run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .ends_with("Error: unknown command \"frobnicate\" for \"bivy\"\n"));
    let out = d.run(&["list", "--bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with("Error: unknown flag: --bogus\n"),
        "{out:?}"
    );
    assert!(d.run(&["launch", "--help"]).status.success());
}

/// `bivy network` as lxc 5.0.2 behaves, on what works with any server: argument-count errors,
/// read-only unmanaged interfaces, and the nic devices `network attach/detach`,
/// `attach-profile/detach-profile` and `init --network` write (`lo` as the parent: the instances
/// are never started, so nothing touches a host interface).
#[test]
fn bivy_network_cli() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let err = |args: &[&str]| {
        let out = d.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // As lxc: no verb is the usage on stderr, exit 0; no argument is the verb's help on stdout,
    // exit 0; a wrong count is the help and `Invalid number of arguments`, exit 1.
    let out = d.run(&["network"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("list-leases"));
    let out = d.run(&["network", "create"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: bivy network create"));
    assert_eq!(
        err(&["network", "get", "lo"]),
        "Error: Invalid number of arguments\n"
    );
    assert_eq!(
        err(&["network", "frob"]),
        "Error: unknown command \"frob\" for \"bivy network\"\n"
    );
    assert_eq!(
        err(&["network", "list", "local:lo"]),
        "Error: Filtering isn't supported yet\n"
    );

    // Unmanaged interfaces: listed and shown, never changed.
    assert!(!d.ok(&["network", "list"]).contains("| lo "));
    let show = d.ok(&["network", "show", "lo"]);
    assert!(
        show.contains("name: lo\ntype: loopback\n") && show.contains("managed: false\n"),
        "{show}"
    );
    assert_eq!(
        err(&["network", "set", "lo", "mtu=1400"]),
        "Error: Only managed networks can be modified\n"
    );

    // attach/detach: lxc's device for an unmanaged interface, named after the network.
    let img = common::busybox_image();
    d.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "busybox",
    ]);
    d.ok(&["init", "busybox", "c1"]);
    assert_eq!(d.ok(&["network", "attach", "lo", "c1"]), "");
    assert_eq!(
        d.ok(&["config", "device", "show", "c1"]),
        "lo:\n  nictype: macvlan\n  parent: lo\n  type: nic\n"
    );
    assert_eq!(
        err(&["network", "attach", "lo", "c1"]),
        "Error: Device already exists: lo\n"
    );
    d.ok(&["network", "attach", "lo", "c1", "second", "eth5"]);
    assert_eq!(
        d.ok(&["config", "device", "get", "c1", "second", "name"]),
        "eth5\n"
    );
    assert_eq!(
        err(&["network", "detach", "lo", "c1"]),
        "Error: More than one device matches, specify the device name\n"
    );
    d.ok(&["network", "detach", "lo", "c1", "second"]);
    d.ok(&["network", "detach", "lo", "c1"]);
    assert_eq!(d.ok(&["config", "device", "list", "c1"]), "");
    assert_eq!(
        err(&["network", "detach", "lo", "c1"]),
        "Error: No device found for this network\n"
    );

    d.ok(&["network", "attach-profile", "lo", "default", "n0"]);
    assert!(d
        .ok(&["profile", "device", "show", "default"])
        .contains("n0:\n  nictype: macvlan\n  parent: lo\n  type: nic\n"));
    d.ok(&["network", "detach-profile", "lo", "default"]);
    assert!(!d
        .ok(&["profile", "device", "show", "default"])
        .contains("n0:"));

    // init --network: eth0 on the network (an unmanaged interface: a macvlan on it).
    d.ok(&["init", "busybox", "c2", "--network", "lo"]);
    assert_eq!(
        d.ok(&["config", "device", "show", "c2"]),
        "eth0:\n  name: eth0\n  nictype: macvlan\n  parent: lo\n  type: nic\n"
    );
    let out = d.run(&["init", "busybox", "c3", "--network", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Creating c3\n");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("Error: Failed loading network \"nope\": "),
        "{out:?}"
    );
    d.ok(&["delete", "c1", "c2"]);
}
