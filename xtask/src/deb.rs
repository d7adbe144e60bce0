//! `cargo xtask deb`: a Debian package of the static release binary.
//!
//! The binary comes from `xtask dist` (or `--bin FILE`); every other file is written by that
//! binary itself, so the package carries exactly what `bivy install` would put on a host:
//!
//! - `/usr/bin/bivy`; `/lib/systemd/system/bivy.service` and `/etc/init.d/bivy` (a conffile),
//!   from `bivy install --root STAGE --prefix /usr --group bivy --init systemd|sysvinit`: the
//!   daemon's socket belongs to the `bivy` group;
//! - `/usr/share/man/man1/*.1.gz` (`bivy manpage`), the bash, zsh and fish completions
//!   (`bivy completion`), `/usr/share/doc/bivy/{copyright,changelog.gz}`, and lintian overrides
//!   for its two false positives on a static-pie Rust binary (each with its reason);
//! - `DEBIAN/`: `control` (Version: `bivy --version`; Maintainer: `$DEBFULLNAME <$DEBEMAIL>`,
//!   else the repository's git user), `conffiles`, `md5sums`, and maintainer scripts that do
//!   what debhelper's generated ones do and nothing else: postinst adds the `bivy` system group
//!   if missing, registers the service (update-rc.d, deb-systemd-helper) and starts it (restarts
//!   on upgrade: the containers keep running); prerm stops it on removal; postrm forgets the
//!   service on purge. Nothing removes `/var/lib/bivy` or the group. With `$DPKG_ROOT` set
//!   (`dpkg --root … --force-script-chrootless`) the group is added below that root with
//!   `groupadd --prefix` and the running system's services are left alone.
//!
//! Staged in `OUT/stage` (removed after), built with `dpkg-deb --build --root-owner-group` into
//! `OUT` (`target/deb/` or `--out DIR`), then
//! checked with `lintian` when it is installed (its tags are printed; an error fails the task).
//! `--fast` stores the data uncompressed and skips lintian (the tests package a debug binary).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, Result};

const USAGE: &str = "usage: cargo xtask deb [--bin FILE] [--out DIR] [--fast]";

const POSTINST: &str = r#"#!/bin/sh
# bivy: the bivy group (its members may use the daemon's socket: they are root-equivalent),
# then the service registered and started as debhelper's snippets do. Nothing else.
set -e

if [ "$1" = configure ]; then
	if [ -n "${DPKG_ROOT:-}" ]; then
		# Installed into another root (dpkg --root --force-script-chrootless).
		# (groupadd's status 9: the group exists already.)
		rc=0
		groupadd --prefix "$DPKG_ROOT" --system bivy 2>/dev/null || rc=$?
		if [ "$rc" != 0 ] && [ "$rc" != 9 ]; then
			echo "bivy: groupadd --prefix $DPKG_ROOT --system bivy failed ($rc)" >&2
			exit 1
		fi
	elif ! getent group bivy >/dev/null; then
		addgroup --system --quiet bivy
	fi
fi

# The running system's service manager (not when installing into another root).
if [ -z "${DPKG_ROOT:-}" ]; then
	case "$1" in
	configure | abort-upgrade | abort-deconfigure | abort-remove)
		# systemd (as dh_installsystemd): enabled on first installation.
		deb-systemd-helper unmask bivy.service >/dev/null || true
		if deb-systemd-helper --quiet was-enabled bivy.service; then
			deb-systemd-helper enable bivy.service >/dev/null || true
		else
			deb-systemd-helper update-state bivy.service >/dev/null || true
		fi
		# sysvinit (as dh_installinit); an upgrade restarts the daemon, the containers
		# keep running.
		if [ -x /etc/init.d/bivy ]; then
			update-rc.d bivy defaults >/dev/null
			if [ -n "$2" ]; then action=restart; else action=start; fi
			invoke-rc.d --skip-systemd-native bivy "$action" || exit 1
		fi
		if [ -d /run/systemd/system ]; then
			systemctl --system daemon-reload >/dev/null || true
			if [ -n "$2" ]; then action=restart; else action=start; fi
			deb-systemd-invoke "$action" bivy.service >/dev/null || true
		fi
		;;
	esac
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
# bivy: the daemon stops when the package is removed (the containers keep running, as on any
# stop of the service). An upgrade leaves it running; the postinst restarts it.
set -e

if [ -z "${DPKG_ROOT:-}" ] && [ "$1" = remove ]; then
	if [ -d /run/systemd/system ]; then
		deb-systemd-invoke stop bivy.service >/dev/null || true
	elif [ -x /etc/init.d/bivy ]; then
		invoke-rc.d --skip-systemd-native bivy stop || exit 1
	fi
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# bivy: on purge the service is forgotten. /var/lib/bivy (containers, images, state) and the
# bivy group are users' data: left in place.
set -e

if [ -z "${DPKG_ROOT:-}" ]; then
	if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
	fi
	if [ "$1" = purge ]; then
		update-rc.d bivy remove >/dev/null || true
		if command -v deb-systemd-helper >/dev/null; then
			deb-systemd-helper purge bivy.service >/dev/null || true
			deb-systemd-helper unmask bivy.service >/dev/null || true
		fi
	fi
fi
exit 0
"#;

const LINTIAN_OVERRIDES: &str = "\
# /usr/bin/bivy is a static-pie executable (ELF type DYN with no DT_NEEDED, by design), not a
# shared library.
bivy: shared-library-lacks-prerequisites [usr/bin/bivy]
";

const DESCRIPTION: &str = "\
Description: system-container manager with LXD's REST API, in one static binary
 bivy runs system containers (unprivileged, with their own init) and serves
 the LXD 1.0 REST API on /var/lib/bivy/unix.socket, so that the unmodified
 lxc client and pylxd can drive it; the same binary is its command line
 client. Containers outlive the daemon: stopping, restarting or upgrading
 the service leaves them running.
 .
 Members of the bivy group may use the daemon's socket, which makes them
 root-equivalent on this host.
";

fn copyright(year: &str) -> String {
    format!(
        "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bivy
Comment: /usr/bin/bivy is statically linked: it also holds the Rust crates listed
 in bivy's Cargo.lock (under the MIT, Apache-2.0, BSD or ISC licenses), the
 Rust standard library (MIT or Apache-2.0), the GNU C library (LGPL-2.1+) and
 the zstd, xz and bzip2 libraries (BSD-3-clause, 0BSD, bzip2-1.0.6).

Files: *
Copyright: {year} the bivy developers
License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the \"License\"); you may not
 use this software except in compliance with the License.
 .
 On Debian systems, the full text of the Apache License 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
"
    )
}

struct Opts {
    bin: Option<PathBuf>,
    out: PathBuf,
    fast: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        bin: None,
        out: util::target_dir().join("deb"),
        fast: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bin" => o.bin = Some(util::root().join(it.next().ok_or(USAGE)?)),
            "--out" => o.out = util::root().join(it.next().ok_or(USAGE)?),
            "--fast" => o.fast = true,
            other => return Err(format!("unexpected argument `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result {
    let o = parse(args)?;
    for prog in ["dpkg-deb", "gzip", "md5sum"] {
        if !util::have(prog) {
            return Err(format!(
                "`{prog}` is needed (Debian packages dpkg, gzip, coreutils)"
            ));
        }
    }
    let bin = match &o.bin {
        Some(b) => b.clone(),
        None => crate::dist::build(&[])?,
    };
    let deb = build(&bin, &o.out, o.fast)?;
    let size = std::fs::metadata(&deb)
        .map_err(|e| format!("stat {}: {e}", deb.display()))?
        .len();
    println!("{}: {size} bytes", util::rel(&deb));
    if o.fast {
        return Ok(());
    }
    if !util::have("lintian") {
        eprintln!(
            "xtask: lintian is not installed (apt-get install lintian): the package is not checked"
        );
        return Ok(());
    }
    // lintian leaves Berkeley DB files (`mldbm-elf-*`) in its temporary directory: give it one
    // of ours and remove it after.
    let tmp = o.out.join("lintian-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    let out = Command::new("lintian")
        .args(["--display-info", "--tag-display-limit", "0"])
        .arg(&deb)
        .env("TMPDIR", &tmp)
        .output()
        .map_err(|e| format!("lintian: {e}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = out?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    print!(
        "lintian:\n{}",
        if text.trim().is_empty() {
            "  (no tags)\n".into()
        } else {
            text.clone()
        }
    );
    if text.lines().any(|l| l.starts_with("E: ")) {
        return Err("lintian reported errors".into());
    }
    Ok(())
}

fn cmd_out(step: &str, cmd: &mut Command) -> Result<String> {
    util::output(step, cmd)
}

/// `bivy ARGS` with a client configuration of nobody's (no user alias may change a verb).
fn bivy(bin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args).env("BIVY_CONF", "/nonexistent/xtask-deb");
    c
}

fn write(path: &Path, data: impl AsRef<[u8]>, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        util::mkdirs(dir)?;
    }
    std::fs::write(path, data).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn gzip(path: &Path) -> Result {
    util::run("gzip", Command::new("gzip").args(["-9n", "--"]).arg(path))
}

/// Every regular file below `dir` (relative), sorted.
fn files(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    for e in rd {
        let e = e.map_err(|e| e.to_string())?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| e.to_string())?;
        if ft.is_dir() {
            files(&p, base, out)?;
        } else {
            out.push(p.strip_prefix(base).expect("below base").to_path_buf());
        }
    }
    out.sort();
    Ok(())
}

/// The maintainer: `$DEBFULLNAME <$DEBEMAIL>`, else the repository's git user.
fn maintainer() -> Result<String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let (Some(n), Some(e)) = (env("DEBFULLNAME"), env("DEBEMAIL")) {
        return Ok(format!("{n} <{e}>"));
    }
    let git = |k: &str| {
        Command::new("git")
            .current_dir(util::root())
            .args(["config", k])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (git("user.name"), git("user.email")) {
        (Some(n), Some(e)) => Ok(format!("{n} <{e}>")),
        _ => Err(
            "no maintainer: set DEBFULLNAME and DEBEMAIL (or git's user.name and user.email)"
                .into(),
        ),
    }
}

/// The date of the last commit (a reproducible changelog date), RFC 2822, and its year.
fn release_date() -> Result<(String, String)> {
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(e) if !e.is_empty() => e,
        _ => cmd_out(
            "git log",
            Command::new("git")
                .current_dir(util::root())
                .args(["log", "-1", "--format=%ct"]),
        )?
        .trim()
        .to_string(),
    };
    let at = format!("@{epoch}");
    let date = cmd_out("date", Command::new("date").args(["-u", "-R", "-d", &at]))?;
    let year = cmd_out("date", Command::new("date").args(["-u", "+%Y", "-d", &at]))?;
    Ok((date.trim().to_string(), year.trim().to_string()))
}

/// Stage and build the package; returns its path.
pub fn build(bin: &Path, out_dir: &Path, fast: bool) -> Result<PathBuf> {
    let version = cmd_out("bivy --version", &mut bivy(bin, &["--version"]))?
        .trim()
        .to_string();
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~".contains(c))
    {
        return Err(format!(
            "unusable version from {} --version: {version:?}",
            bin.display()
        ));
    }
    let maintainer = maintainer()?;
    let (date, year) = release_date()?;
    let stage = out_dir.join("stage");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| format!("remove {}: {e}", stage.display()))?;
    }
    util::mkdirs(&stage)?;
    let root = stage.to_str().ok_or("non-UTF-8 target dir")?;

    // The binary and the service files, written by `bivy install` as on any host.
    for init in ["systemd", "sysvinit"] {
        cmd_out(
            "bivy install",
            &mut bivy(
                bin,
                &[
                    "install", "--root", root, "--prefix", "/usr", "--group", "bivy", "--init",
                    init,
                ],
            ),
        )?;
    }
    // A package's unit lives in /lib/systemd/system (/etc/systemd/system is the admin's).
    util::mkdirs(stage.join("lib/systemd/system"))?;
    std::fs::rename(
        stage.join("etc/systemd/system/bivy.service"),
        stage.join("lib/systemd/system/bivy.service"),
    )
    .map_err(|e| format!("move the unit: {e}"))?;
    std::fs::remove_dir(stage.join("etc/systemd/system"))
        .and_then(|()| std::fs::remove_dir(stage.join("etc/systemd")))
        .map_err(|e| format!("remove etc/systemd: {e}"))?;

    // Man pages, gzipped.
    let man = stage.join("usr/share/man/man1");
    cmd_out(
        "bivy manpage",
        &mut bivy(bin, &["manpage", man.to_str().ok_or("non-UTF-8 path")?]),
    )?;
    let mut pages = Vec::new();
    files(&man, &man, &mut pages)?;
    for p in pages {
        gzip(&man.join(p))?;
    }

    // Completions.
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/bivy"),
        ("zsh", "usr/share/zsh/vendor-completions/_bivy"),
        ("fish", "usr/share/fish/vendor_completions.d/bivy.fish"),
    ] {
        let text = cmd_out("bivy completion", &mut bivy(bin, &["completion", shell]))?;
        write(&stage.join(path), text, 0o644)?;
    }

    // Documentation, and lintian's false positives with the reason for each.
    write(
        &stage.join("usr/share/lintian/overrides/bivy"),
        LINTIAN_OVERRIDES,
        0o644,
    )?;
    let doc = stage.join("usr/share/doc/bivy");
    write(&doc.join("copyright"), copyright(&year), 0o644)?;
    let changelog = format!(
        "bivy ({version}) unstable; urgency=medium\n\n  * Package built by `cargo xtask deb`.\n\n -- {maintainer}  {date}\n"
    );
    write(&doc.join("changelog"), changelog, 0o644)?;
    gzip(&doc.join("changelog"))?;

    // Control files.
    let mut data_files = Vec::new();
    files(&stage, &stage, &mut data_files)?;
    let mut md5 = String::new();
    let mut size_kb = 0u64;
    for f in &data_files {
        let sum = cmd_out("md5sum", Command::new("md5sum").arg(stage.join(f)))?;
        let sum = sum.split_whitespace().next().unwrap_or("");
        let _ = writeln!(md5, "{sum}  {}", f.display());
        let len = std::fs::metadata(stage.join(f))
            .map_err(|e| e.to_string())?
            .len();
        size_kb += len.div_ceil(1024);
    }
    let control = format!(
        "Package: bivy\nVersion: {version}\nArchitecture: amd64\nMaintainer: {maintainer}\nInstalled-Size: {size_kb}\nPre-Depends: init-system-helpers (>= 1.54~)\nDepends: adduser\nSuggests: rsync, squashfs-tools, btrfs-progs, nftables\nSection: admin\nPriority: optional\n{DESCRIPTION}"
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control, 0o644)?;
    write(&debian.join("conffiles"), "/etc/init.d/bivy\n", 0o644)?;
    write(&debian.join("md5sums"), md5, 0o644)?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    // Directories 0755 whatever the umask.
    fix_dirs(&stage)?;

    let deb = out_dir.join(format!("bivy_{version}_amd64.deb"));
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("--build").arg("--root-owner-group");
    if fast {
        cmd.arg("-Znone");
    }
    cmd.arg(&stage).arg(&deb);
    util::run("dpkg-deb --build", &mut cmd)?;
    std::fs::remove_dir_all(&stage).map_err(|e| format!("remove {}: {e}", stage.display()))?;
    Ok(deb)
}

fn fix_dirs(dir: &Path) -> Result {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        if e.file_type().map_err(|e| e.to_string())?.is_dir() {
            fix_dirs(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintainer_scripts_parse_and_keep_users_data() {
        for (name, s) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
            let out = Command::new("sh")
                .args(["-n", "-c", s])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                s.starts_with("#!/bin/sh\n") && s.contains("\nset -e\n"),
                "{name}"
            );
            assert!(
                !s.contains("rm ") && !s.contains("delgroup"),
                "{name} removes something"
            );
            assert!(!s.contains("/etc/group"), "{name} parses /etc/group");
        }
        assert!(POSTINST.contains("addgroup --system --quiet bivy"));
        assert!(DESCRIPTION
            .lines()
            .skip(1)
            .all(|l| l.starts_with(' ') && l.len() <= 80));
    }
}
