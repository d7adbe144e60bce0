//! Docker inside a bivy container (issue 14, "Nesting"): Debian's own `docker.io` (20.10, with
//! containerd and runc) installed in a Debian 12 container launched with `security.nesting=true`
//! runs a container of its own, `docker run --rm busybox echo ok`, all offline.
//!
//! The containers have no way out to the network, so the debs come from the host: the packages
//! `docker.io` needs beyond what the Debian image already has (apt's own resolution against the
//! container's `/var/lib/dpkg/status`) are fetched with `apt-get download` into
//! `target/test-debs/` once and reused. They are pushed in and installed with `dpkg -i`; the
//! busybox image for docker is the busybox test image's rootfs, `docker import`ed inside.
//!
//! What this needs from the kernel and from bivy is in the README ("Docker inside a container").

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Daemon;

/// The packages docker's daemon needs (its `Depends`, resolved by apt; no `Recommends`).
const WANTED: &str = "docker.io";

/// `bivy <args>` bounded in time.
fn bivy(d: &Daemon, args: &[&str], limit: Duration) -> Output {
    let mut c = d.cli();
    c.args(args);
    common::run_bounded(&mut c, limit).expect("run bivy")
}

/// `sh -c SCRIPT` in `ct`: (exit code, stdout + stderr).
fn sh(d: &Daemon, ct: &str, script: &str) -> (i32, String) {
    let out = bivy(
        d,
        &["exec", ct, "--", "sh", "-c", script],
        Duration::from_secs(300),
    );
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// One package apt would install: name, version, architecture.
#[derive(Debug)]
struct Pkg {
    name: String,
    version: String,
    arch: String,
}

impl Pkg {
    /// The file name `apt-get download` gives it (an epoch's `:` is written `%3a`).
    fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// Parse `apt-get -s install`'s `Inst NAME (VERSION SOURCES [ARCH])` lines.
fn parse_simulation(text: &str) -> Vec<Pkg> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(" (")?;
            let version = rest.split_whitespace().next()?;
            let arch = rest.rsplit_once('[')?.1.split_once(']')?.0;
            Some(Pkg {
                name: name.to_owned(),
                version: version.to_owned(),
                arch: arch.to_owned(),
            })
        })
        .collect()
}

/// The debs `WANTED` needs on top of the packages in `status` (a dpkg status file), downloaded
/// into `target/test-debs/` unless already there. `Err` says why they cannot be had.
fn fetch_debs(status: &Path) -> Result<Vec<PathBuf>, String> {
    if !common::have_cmd("apt-get") {
        return Err("needs apt-get on the host to fetch docker.io's debs".into());
    }
    let apt = |args: &[&str], dir: &Path| -> Result<String, String> {
        let out = common::run_bounded(
            Command::new("apt-get")
                .current_dir(dir)
                // Only reads the host's package lists: no lock, no sandbox user for downloads.
                .args([
                    "-q",
                    "-o",
                    "Debug::NoLocking=1",
                    "-o",
                    "APT::Sandbox::User=root",
                ])
                .args(args),
            Duration::from_secs(600),
        )
        .map_err(|e| format!("apt-get: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "apt-get {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let cache = common::target_dir().join("test-debs");
    fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let status_opt = format!("Dir::State::status={}", status.display());
    let sim = apt(
        &[
            "-s",
            "-o",
            &status_opt,
            "install",
            "--no-install-recommends",
            WANTED,
        ],
        &cache,
    )?;
    let pkgs = parse_simulation(&sim);
    if !pkgs.iter().any(|p| p.name == WANTED) {
        return Err(format!(
            "apt on the host does not know {WANTED} (no Debian 12 package lists?): {sim}"
        ));
    }
    let missing: Vec<String> = pkgs
        .iter()
        .filter(|p| !cache.join(p.file_name()).is_file())
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    if !missing.is_empty() {
        // Downloaded beside the cache and moved in whole: an interrupted fetch is never reused.
        let part = cache.join(format!(".partial-{}", std::process::id()));
        fs::create_dir_all(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        let mut args = vec!["download"];
        args.extend(missing.iter().map(String::as_str));
        let got = apt(&args, &part);
        if got.is_ok() {
            for e in fs::read_dir(&part).map_err(|e| e.to_string())?.flatten() {
                fs::rename(e.path(), cache.join(e.file_name())).map_err(|e| e.to_string())?;
            }
        }
        let _ = fs::remove_dir_all(&part);
        got?;
    }
    pkgs.iter()
        .map(|p| {
            let f = cache.join(p.file_name());
            if f.is_file() {
                Ok(f)
            } else {
                Err(format!("{} missing after apt-get download", f.display()))
            }
        })
        .collect()
}

#[test]
fn docker_runs_a_container_inside_a_nesting_container() {
    if !common::require_root() {
        return;
    }
    let Some(img) = common::debian_image_or_skip() else {
        return;
    };
    let d = Daemon::start().expect("daemon");
    let ok = |args: &[&str]| {
        let out = bivy(&d, args, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "bivy {args:?} failed ({}): {}{}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log_text()
        );
    };
    ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "debian",
    ]);
    // LXD's docker guidance: security.nesting=true (its intercept.mknod/setxattr keys are not
    // needed on this kernel; see the README).
    ok(&["launch", "debian", "dk", "-c", "security.nesting=true"]);

    // What the image already has decides what to fetch.
    let status = d.tmp().join("dpkg-status");
    ok(&[
        "file",
        "pull",
        "dk/var/lib/dpkg/status",
        status.to_str().expect("utf-8"),
    ]);
    let debs = match fetch_debs(&status) {
        Ok(v) => v,
        Err(why) => {
            common::skip(
                &common::current_test_name(),
                &format!("cannot get docker.io's debs on the host: {why}"),
            );
            return;
        }
    };

    // systemd must be up: docker.io's postinst starts containerd and docker through it.
    let t = Instant::now();
    loop {
        let (_, s) = sh(&d, "dk", "systemctl is-system-running");
        if matches!(s.trim(), "running" | "degraded") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "systemd not up after 120 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (rc, out) = sh(&d, "dk", "mkdir -p /root/debs");
    assert_eq!(rc, 0, "{out}");
    for deb in &debs {
        let name = deb.file_name().and_then(|n| n.to_str()).expect("deb name");
        ok(&[
            "file",
            "push",
            deb.to_str().expect("utf-8"),
            &format!("dk/root/debs/{name}"),
        ]);
    }
    let (rc, out) = sh(
        &d,
        "dk",
        "DEBIAN_FRONTEND=noninteractive dpkg -i /root/debs/*.deb",
    );
    assert_eq!(rc, 0, "dpkg -i failed: {out}");

    // The postinst started the daemon; wait until it answers.
    let t = Instant::now();
    let info = loop {
        let (rc, out) = sh(&d, "dk", "docker info 2>&1");
        if rc == 0 {
            break out;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "dockerd not answering after 60 s: {out}\n{}",
            sh(&d, "dk", "journalctl -u docker -u containerd --no-pager").1
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // overlay2 in the user namespace (userxattr), not the slow vfs copy driver.
    assert!(
        info.contains("Storage Driver: overlay2") && info.contains("userxattr: true"),
        "{info}"
    );

    ok(&[
        "file",
        "push",
        common::busybox_image().to_str().expect("utf-8"),
        "dk/root/busybox.tar.gz",
    ]);
    let (rc, out) = sh(
        &d,
        "dk",
        "set -e; cd /root; mkdir bb; tar -C bb -xzf busybox.tar.gz; \
         tar -C bb/rootfs -c . | docker import - busybox >/dev/null; \
         docker run --rm busybox echo ok",
    );
    assert!(
        rc == 0 && out.lines().any(|l| l == "ok"),
        "docker run failed ({rc}): {out}\n{}",
        sh(
            &d,
            "dk",
            "journalctl -u docker -u containerd --no-pager | tail -40"
        )
        .1
    );
    // Overlay whiteouts in the user namespace: a file removed in docker's container is gone.
    let (rc, out) = sh(
        &d,
        "dk",
        "docker run --rm busybox sh -c 'rm /bin/ls && test ! -e /bin/ls && echo gone'",
    );
    assert!(rc == 0 && out.lines().any(|l| l == "gone"), "{out}");
    let (rc, out) = sh(&d, "dk", "docker ps -aq | wc -l");
    assert!(rc == 0 && out.trim() == "0", "--rm left a container: {out}");

    ok(&["delete", "--force", "dk"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_lines_parse() {
        let text = "NOTE: This is only a simulation!\n\
            Inst runc (1.1.5+ds1-1+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64])\n\
            Inst foo (1:2.0-1 Debian:12.15/oldstable [all])\n\
            Conf runc (1.1.5+ds1-1+deb12u1 Debian:12.15/oldstable [amd64])\n";
        let p = parse_simulation(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].file_name(), "runc_1.1.5+ds1-1+deb12u1_amd64.deb");
        assert_eq!(p[1].file_name(), "foo_1%3a2.0-1_all.deb");
    }
}
