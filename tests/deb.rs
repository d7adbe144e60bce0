//! `cargo xtask deb`: the package (of this test run's binary, `--fast`) holds the binary, the
//! service files `bivy install` writes, man pages, completions and the documents, with the
//! right owners and modes and checksums; and `dpkg --root` installs it into a temporary root
//! (the maintainer scripts run outside a chroot with `DPKG_ROOT` set: the group is added in that
//! root, never on this host), removes and purges it, and leaves the users' data there.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{bivy_bin, TempDir};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(cmd: &mut Command) -> String {
    let out: Output = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `cargo xtask deb --bin <this run's bivy> --out DIR --fast` (xtask built in a target dir of
/// its own: the `cargo test` running us may hold the lock on target/).
fn build_deb(out: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ok(Command::new(cargo)
        .current_dir(common::root())
        .args(["run", "--quiet", "--package", "xtask", "--target-dir"])
        .arg(common::target_dir().join("harness-xtask"))
        .args(["--", "deb", "--fast", "--bin"])
        .arg(bivy_bin())
        .arg("--out")
        .arg(out)
        .env("DEBFULLNAME", "bivy tests")
        .env("DEBEMAIL", "tests@bivy.invalid"));
    let version = ok(Command::new(bivy_bin()).arg("--version"));
    let deb = out.join(format!("bivy_{}_amd64.deb", version.trim()));
    assert!(deb.is_file(), "{} missing", deb.display());
    assert!(!out.join("stage").exists(), "the staging tree is left");
    deb
}

fn field<'a>(control: &'a str, name: &str) -> Option<&'a str> {
    control
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn deb_holds_what_bivy_install_writes_and_installs_into_a_root() {
    require!(cmd "dpkg-deb");
    let tmp = TempDir::new().expect("tmp");
    let deb = build_deb(tmp.path());

    // Control fields.
    let info = ok(Command::new("dpkg-deb").arg("--field").arg(&deb));
    let version = ok(Command::new(bivy_bin()).arg("--version"));
    assert_eq!(field(&info, "Package"), Some("bivy"));
    assert_eq!(field(&info, "Version"), Some(version.trim()));
    assert_eq!(field(&info, "Architecture"), Some("amd64"));
    assert_eq!(
        field(&info, "Maintainer"),
        Some("bivy tests <tests@bivy.invalid>")
    );
    assert_eq!(field(&info, "Depends"), Some("adduser"));
    assert_eq!(
        field(&info, "Pre-Depends"),
        Some("init-system-helpers (>= 1.54~)")
    );

    // Contents: owners, modes, the exact file list.
    let listing = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut files: Vec<(String, String)> = Vec::new();
    for l in listing.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cols[1], "root/root", "{l}");
        if !cols[0].starts_with('d') {
            files.push((
                cols[5].trim_start_matches('.').to_string(),
                cols[0].to_string(),
            ));
        } else {
            assert_eq!(cols[0], "drwxr-xr-x", "{l}");
        }
    }
    files.sort();
    let mut want: Vec<(String, String)> = [
        ("/usr/bin/bivy", "-rwxr-xr-x"),
        ("/lib/systemd/system/bivy.service", "-rw-r--r--"),
        ("/etc/init.d/bivy", "-rwxr-xr-x"),
        ("/usr/share/bash-completion/completions/bivy", "-rw-r--r--"),
        ("/usr/share/zsh/vendor-completions/_bivy", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/bivy.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/bivy/copyright", "-rw-r--r--"),
        ("/usr/share/doc/bivy/changelog.gz", "-rw-r--r--"),
        ("/usr/share/lintian/overrides/bivy", "-rw-r--r--"),
        ("/usr/share/man/man1/bivy.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/bivy-daemon.1.gz", "-rw-r--r--"),
    ]
    .iter()
    .map(|(p, m)| (p.to_string(), m.to_string()))
    .collect();
    for verb in bivy::cli::completion::children("") {
        want.push((
            format!("/usr/share/man/man1/bivy-{verb}.1.gz"),
            "-rw-r--r--".into(),
        ));
    }
    want.sort();
    assert_eq!(files, want);

    // The files are what the binary writes on a host.
    let x = tmp.path().join("x");
    ok(Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(&deb)
        .arg(&x));
    let host = tmp.path().join("host");
    for init in ["systemd", "sysvinit"] {
        ok(Command::new(bivy_bin())
            .args([
                "install", "--prefix", "/usr", "--group", "bivy", "--init", init, "--root",
            ])
            .arg(&host));
    }
    let same = |a: &str, b: &Path| {
        assert_eq!(fs::read(x.join(a)).unwrap(), fs::read(b).unwrap(), "{a}");
    };
    same("usr/bin/bivy", &bivy_bin());
    same(
        "lib/systemd/system/bivy.service",
        &host.join("etc/systemd/system/bivy.service"),
    );
    same("etc/init.d/bivy", &host.join("etc/init.d/bivy"));
    let unit = fs::read_to_string(x.join("lib/systemd/system/bivy.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/bivy daemon --group bivy\n"),
        "{unit}"
    );
    let bash = ok(Command::new(bivy_bin()).args(["completion", "bash"]));
    assert_eq!(
        fs::read_to_string(x.join("usr/share/bash-completion/completions/bivy")).unwrap(),
        bash
    );
    assert_eq!(
        fs::read_to_string(x.join("DEBIAN/conffiles")).unwrap(),
        "/etc/init.d/bivy\n"
    );
    ok(Command::new("md5sum")
        .args(["--check", "--quiet", "DEBIAN/md5sums"])
        .current_dir(&x));
    let copyright = fs::read_to_string(x.join("usr/share/doc/bivy/copyright")).unwrap();
    assert!(copyright.contains("\nLicense: Apache-2.0\n"), "{copyright}");
    for script in ["postinst", "prerm", "postrm"] {
        ok(Command::new("sh")
            .arg("-n")
            .arg(x.join("DEBIAN").join(script)));
    }

    // Installed and removed by dpkg into a root of its own.
    if !common::require_root() {
        return;
    }
    skip_unless!(
        common::have_cmd("groupadd"),
        "needs groupadd (Debian package passwd)"
    );
    let host_group = fs::read_to_string("/etc/group").unwrap();
    let r = tmp.path().join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "etc",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    fs::write(r.join("var/lib/dpkg/available"), "").unwrap();
    fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(r.join("etc/gshadow"), "root:*::\n").unwrap();
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(r.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    let dpkg = |args: &[&str]| -> String {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", r.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
            ])
            .args(args);
        ok(&mut c)
    };
    dpkg(&["--install", deb.to_str().unwrap()]);
    let status = dpkg(&["--status", "bivy"]);
    assert!(
        status.contains("\nStatus: install ok installed\n"),
        "{status}"
    );
    assert!(r.join("usr/bin/bivy").is_file());
    assert!(r.join("etc/init.d/bivy").is_file());
    let group = fs::read_to_string(r.join("etc/group")).unwrap();
    let line = group
        .lines()
        .find(|l| l.starts_with("bivy:"))
        .unwrap_or_else(|| panic!("no bivy group: {group}"));
    let gid: u32 = line.split(':').nth(2).unwrap().parse().unwrap();
    assert!(gid < 1000, "not a system group: {line}");
    // A second configure finds the group.
    dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(r.join("etc/group")).unwrap(), group);

    // Users' data, then remove and purge.
    let data = r.join("var/lib/bivy/containers/c1");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("marker"), "mine").unwrap();
    dpkg(&["--remove", "bivy"]);
    assert!(!r.join("usr/bin/bivy").exists());
    assert!(
        r.join("etc/init.d/bivy").exists(),
        "a removed package keeps its conffiles"
    );
    dpkg(&["--purge", "bivy"]);
    assert!(!r.join("etc/init.d/bivy").exists());
    assert!(!r.join("lib/systemd/system/bivy.service").exists());
    assert_eq!(fs::read_to_string(data.join("marker")).unwrap(), "mine");
    assert_eq!(
        fs::read_to_string(r.join("etc/group")).unwrap(),
        group,
        "the group stays"
    );
    // Nothing of it reached this host.
    assert_eq!(fs::read_to_string("/etc/group").unwrap(), host_group);
}

/// The tags that come from packaging this test run's debug binary uncompressed (`--fast`), not
/// from the package's making: a dynamically linked, unstripped binary and no compression.
const DEBUG_BUILD_TAGS: &str = "missing-dependency-on-libc,unstripped-binary-or-object,\
uses-no-compression-for-control-tarball,uses-no-compression-for-data-tarball";

#[test]
fn deb_passes_lintian() {
    require!(cmd "dpkg-deb");
    skip_unless!(
        common::have_cmd("lintian"),
        "needs lintian (Debian package lintian)"
    );
    let tmp = TempDir::new().expect("tmp");
    let deb = build_deb(tmp.path());
    let out = Command::new("lintian")
        .args([
            "--tag-display-limit",
            "0",
            "--suppress-tags",
            DEBUG_BUILD_TAGS,
        ])
        .arg(&deb)
        // lintian leaves Berkeley DB files (`mldbm-elf-*`) in its temporary directory.
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run lintian");
    let report = text(&out.stdout);
    // No error and no warning (the false positive of a static-pie binary is overridden in the
    // package, with its reason).
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(bad.is_empty(), "lintian:\n{report}{}", text(&out.stderr));
}
