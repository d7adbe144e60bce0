//! `cargo xtask test-image [busybox|debian|all]`: LXD unified test images, built offline.
//!
//! - `target/test-images/busybox.tar.gz`: Debian's busybox-static plus applet links, shaped like
//!   the LXD anchor's `make-busybox-image.sh` (`../shared/tools/lxd-anchor/`) (the image LXD was benchmarked with), so
//!   both daemons boot the same thing.
//! - `target/test-images/debian12.tar.zst`: Debian 12 with systemd as init, from debootstrap
//!   (the only network use: Debian's package mirror), cached under `target/debootstrap-cache/`.
//!
//! Tarballs are deterministic (sorted entries, one fixed mtime, GNU format, `gzip -n`) so the
//! image fingerprint (sha256 of the unified tarball, lxd-api.md §4.1) only changes when the inputs
//! do. The fixed time is `$SOURCE_DATE_EPOCH`, else the mtime of the input (busybox binary, or
//! the debootstrap cache stamp).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, UNIX_EPOCH};

use crate::util::{self, Result};

/// Where images go.
pub fn images_dir() -> PathBuf {
    util::target_dir().join("test-images")
}

pub fn run(args: &[String]) -> Result {
    let which = args.first().map(String::as_str).unwrap_or("busybox");
    match which {
        "busybox" => busybox().map(|_| ()),
        "debian" | "debian12" => debian().map(|_| ()),
        "all" => {
            // busybox first: it must work even when the Debian mirror is unreachable.
            busybox()?;
            debian().map(|_| ())
        }
        other => Err(format!("unknown image `{other}` (busybox, debian, all)")),
    }
}

// ---------------------------------------------------------------------------------------------
// shared pieces

fn set_mode(path: &Path, mode: u32) -> Result {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result {
    if let Some(parent) = path.parent() {
        util::mkdirs(parent)?;
    }
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path).map_err(|e| format!("rm {}: {e}", path.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    set_mode(path, mode)
}

fn mkdir_mode(path: &Path, mode: u32) -> Result {
    util::mkdirs(path)?;
    set_mode(path, mode)
}

fn mtime(path: &Path) -> Result<u64> {
    let m = fs::metadata(path).map_err(|e| format!("stat {}: {e}", path.display()))?;
    let t = m
        .modified()
        .map_err(|e| format!("mtime {}: {e}", path.display()))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

/// `$SOURCE_DATE_EPOCH` if set, else `fallback`.
fn build_epoch(fallback: u64) -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(fallback)
}

const HOSTNAME_TPL: &str = "{{ container.name }}\n";
const HOSTS_TPL: &str = "127.0.0.1 localhost\n127.0.1.1 {{ container.name }}\n::1 localhost\n";

/// metadata.yaml in LXD's `api.ImageMetadata` shape, with the hostname and hosts templates.
fn metadata_yaml(epoch: u64, os: &str, release: &str, description: &str) -> String {
    format!(
        "architecture: x86_64\n\
         creation_date: {epoch}\n\
         properties:\n  \
           description: {description}\n  \
           os: {os}\n  \
           release: \"{release}\"\n  \
           architecture: x86_64\n  \
           variant: default\n\
         templates:\n  \
           /etc/hostname:\n    \
             when: [create, copy]\n    \
             create_only: false\n    \
             template: hostname.tpl\n  \
           /etc/hosts:\n    \
             when: [create, copy]\n    \
             create_only: false\n    \
             template: hosts.tpl\n"
    )
}

fn write_templates(build: &Path) -> Result {
    let t = build.join("templates");
    mkdir_mode(&t, 0o755)?;
    write_file(&t.join("hostname.tpl"), HOSTNAME_TPL, 0o644)?;
    write_file(&t.join("hosts.tpl"), HOSTS_TPL, 0o644)
}

/// Unmount anything mounted at or below `dir` (a failed debootstrap can leave /proc, /sys or a
/// bind of the host's /dev there), and fail if something stays mounted: removing the tree then
/// could delete host files.
fn unmount_below(dir: &Path) -> Result {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(());
    };
    let below = |dir: &Path| -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| {
                PathBuf::from(
                    m.replace("\\040", " ")
                        .replace("\\011", "\t")
                        .replace("\\012", "\n")
                        .replace("\\134", "\\"),
                )
            })
            .filter(|m| m.starts_with(dir))
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        v
    };
    for m in below(&dir) {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    let left = below(&dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "still mounted below {}: {left:?}; unmount them and retry",
            dir.display()
        ))
    }
}

/// `rm -rf --one-file-system`, after unmounting anything below.
fn remove_tree(dir: &Path) -> Result {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_below(dir)?;
    util::run(
        "remove old tree",
        Command::new("rm")
            .arg("-rf")
            .arg("--one-file-system")
            .arg(dir),
    )
}

/// How the tarball is compressed.
#[derive(Clone, Copy)]
enum Compress {
    /// `gzip -n -LEVEL` (no name, no timestamp in the header).
    Gzip(u32),
    /// `zstd -LEVEL -T1` (single-threaded, so the output does not depend on the core count).
    Zstd(u32),
}

/// `tar` the `build` dir (metadata.yaml, rootfs, templates) deterministically into `out`.
/// `force_root` records every file as 0:0 (for trees we made ourselves as any user); otherwise the
/// numeric owners on disk are kept (a debootstrapped rootfs has root:shadow, _apt and so on).
fn pack(build: &Path, out: &Path, epoch: u64, force_root: bool, compress: Compress) -> Result {
    let t = Instant::now();
    let tmp = out.with_extension("partial");
    let file = fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let mut tar = Command::new("tar");
    tar.env("LC_ALL", "C")
        .args(["--sort=name", "--format=gnu", "--numeric-owner"])
        .arg(format!("--mtime=@{epoch}"));
    if force_root {
        tar.args(["--owner=0", "--group=0"]);
    }
    tar.arg("-C")
        .arg(build)
        .args(["-cf", "-", "metadata.yaml", "rootfs", "templates"]);
    let mut tar_child = tar
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pack: cannot run tar: {e}"))?;
    let tar_out = tar_child.stdout.take().expect("stdout was piped");
    let mut gz = match compress {
        Compress::Gzip(level) => {
            let mut c = Command::new("gzip");
            c.arg("-n").arg(format!("-{level}"));
            c
        }
        Compress::Zstd(level) => {
            let mut c = Command::new("zstd");
            c.args(["-q", "-T1", "--no-progress"])
                .arg(format!("-{level}"));
            c
        }
    };
    let gz_status = gz
        .stdin(tar_out)
        .stdout(file)
        .status()
        .map_err(|e| format!("pack: cannot run gzip: {e}"))?;
    let tar_status = tar_child
        .wait()
        .map_err(|e| format!("pack: wait for tar: {e}"))?;
    if !tar_status.success() {
        return Err(format!("pack: tar failed ({tar_status})"));
    }
    if !gz_status.success() {
        return Err(format!("pack: compressor failed ({gz_status})"));
    }
    fs::rename(&tmp, out).map_err(|e| format!("rename {}: {e}", out.display()))?;
    eprintln!(
        "xtask: packed {} in {:.1}s",
        util::rel(out),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn report(out: &Path) -> Result {
    let size = fs::metadata(out)
        .map_err(|e| format!("stat {}: {e}", out.display()))?
        .len();
    let sha = util::sha256(out)?;
    println!("{}  {size} bytes  sha256 {sha}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// busybox

/// Find a statically linked busybox: /bin/busybox, else the file busybox-static installed,
/// else install busybox-static (root only) and look again.
fn find_busybox() -> Result<PathBuf> {
    let candidates = || -> Vec<PathBuf> {
        let mut v = vec![
            PathBuf::from("/bin/busybox"),
            PathBuf::from("/usr/bin/busybox"),
        ];
        if let Ok(out) = Command::new("dpkg")
            .args(["-L", "busybox-static"])
            .stderr(Stdio::null())
            .output()
        {
            v.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.ends_with("/busybox"))
                    .map(PathBuf::from),
            );
        }
        v
    };
    let find = || {
        candidates()
            .into_iter()
            .find(|p| p.is_file() && crate::elf::check_static(p).is_ok())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    util::ensure_debs(&["busybox-static"])
        .map_err(|e| format!("no statically linked busybox found: {e}"))?;
    find().ok_or_else(|| "no statically linked busybox after installing busybox-static".into())
}

/// "1.35.0" from "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary."
fn busybox_version(bb: &Path) -> Result<String> {
    let out = Command::new(bb)
        .output()
        .map_err(|e| format!("run {}: {e}", bb.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|v| v.trim_start_matches('v').to_owned())
        .ok_or_else(|| format!("cannot read the busybox version from `{}`", bb.display()))
}

/// Build `target/test-images/busybox.tar.gz` and return its path.
pub fn busybox() -> Result<PathBuf> {
    let t = Instant::now();
    let bb = find_busybox()?;
    let version = busybox_version(&bb)?;
    let epoch = build_epoch(mtime(&bb)?);
    let dir = images_dir();
    util::mkdirs(&dir)?;
    let build = dir.join(".build-busybox");
    remove_tree(&build)?;
    let r = build.join("rootfs");
    mkdir_mode(&build, 0o755)?;
    mkdir_mode(&r, 0o755)?;
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "var",
        "var/log", "mnt",
    ] {
        mkdir_mode(&r.join(d), 0o755)?;
    }
    for d in ["tmp", "var/tmp"] {
        mkdir_mode(&r.join(d), 0o1777)?;
    }
    mkdir_mode(&r.join("root"), 0o700)?;
    fs::copy(&bb, r.join("bin/busybox")).map_err(|e| format!("copy {}: {e}", bb.display()))?;
    set_mode(&r.join("bin/busybox"), 0o755)?;

    // One absolute symlink per applet (bin/sh, sbin/init, ...), like `busybox --install -s`,
    // but without needing chroot (so it also works as non-root).
    let list = util::output("busybox --list-full", Command::new(&bb).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = r.join(applet);
        if applet == "bin/busybox" || fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            if !parent.exists() {
                mkdir_mode(parent, 0o755)?;
            }
        }
        symlink("/bin/busybox", &link).map_err(|e| format!("symlink {}: {e}", link.display()))?;
    }
    if fs::symlink_metadata(r.join("sbin/init")).is_err() {
        return Err("busybox has no init applet".into());
    }

    let etc = r.join("etc");
    write_file(
        &etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write_file(&etc.join("group"), "root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    write_file(&etc.join("shadow"), "root::0:0:99999:7:::\n", 0o640)?;
    // busybox init: no getty; one respawned long sleep so init blocks in wait() instead of
    // waking every second. SIGPWR (what LXD sends on a clean stop) makes busybox init halt.
    // rcS: the hostname, then a DHCP client on every interface but lo (as LXD's images get an
    // address on eth0 at boot); udhcpc stays in the background and renews.
    write_file(
        &etc.join("inittab"),
        "::sysinit:/etc/init.d/rcS\n::respawn:/bin/sleep 2147483647\n::shutdown:/bin/sync\n",
        0o644,
    )?;
    mkdir_mode(&etc.join("init.d"), 0o755)?;
    write_file(&etc.join("init.d/rcS"), BUSYBOX_RCS, 0o755)?;
    for d in ["usr/share", "usr/share/udhcpc"] {
        mkdir_mode(&r.join(d), 0o755)?;
    }
    write_file(
        &r.join("usr/share/udhcpc/default.script"),
        UDHCPC_SCRIPT,
        0o755,
    )?;
    write_file(&etc.join("hostname"), "busybox\n", 0o644)?;
    write_file(
        &etc.join("hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
        0o644,
    )?;
    write_file(&etc.join("fstab"), "", 0o644)?;
    write_templates(&build)?;
    write_file(
        &build.join("metadata.yaml"),
        &metadata_yaml(
            epoch,
            "busybox",
            &version,
            &format!("BusyBox {version} static test image (built locally)"),
        ),
        0o644,
    )?;

    let out = dir.join("busybox.tar.gz");
    pack(&build, &out, epoch, true, Compress::Gzip(9))?;
    remove_tree(&build)?;
    eprintln!(
        "xtask: busybox image built in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    report(&out)?;
    Ok(out)
}

/// The busybox image's boot script.
const BUSYBOX_RCS: &str = r#"#!/bin/sh
# bivy test image: set the hostname, then run a DHCP client on each interface but lo.
/bin/hostname -F /etc/hostname
for i in /sys/class/net/*; do
  n=${i##*/}
  [ "$n" = lo ] && continue
  udhcpc -f -S -i "$n" -x "hostname:$(hostname)" -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
done
"#;

/// udhcpc's event script: apply a lease to the interface, the default route and resolv.conf.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# bivy test image: udhcpc event script ($1: deconfig, bound, renew, nak, leasefail).
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    fi
    if [ -n "$router" ]; then
      ip route del default dev "$interface" 2>/dev/null
      for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    fi
    {
      [ -n "$domain" ] && echo "search $domain"
      for d in $dns; do echo "nameserver $d"; done
    } >/etc/resolv.conf
    ;;
esac
exit 0
"#;

/// systemd-networkd's config for eth0 in the Debian image (as LXD's images have it).
const NETWORKD_ETH0: &str = "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=ipv6\n\n[DHCPv4]\nUseDomains=true\n";

// ---------------------------------------------------------------------------------------------
// debian

/// Packages on top of `--variant=minbase`. No ifupdown or network manager: tests need no network
/// config inside the image. No iputils-ping: it relies on a file capability (an xattr) that the
/// GNU-format tarball does not carry.
const DEBIAN_INCLUDE: &str = "systemd-sysv,dbus,iproute2,procps,netbase,less";
const DEBIAN_SUITE: &str = "bookworm";

/// What the linuxcontainers images (the ones `images:` remotes serve, which LXD users boot) do
/// to every systemd container from their generator, and nothing more: the stock image otherwise.
/// Units masked with a /dev/null link.
const MASKED_UNITS: &[&str] = &[
    "dev-hugepages.mount",
    "run-ribchester-general.mount",
    "systemd-hwdb-update.service",
    "systemd-journald-audit.socket",
    "systemd-modules-load.service",
    "systemd-pstore.service",
];

/// The generator's override for every service (systemd 252 here): sandboxing options that need
/// mounts over /proc and /sys an unprivileged container may not make.
const SERVICE_DROPIN: &str = "\
# Written by `cargo xtask test-image debian`: what the linuxcontainers images' generator writes.
[Service]
ProcSubset=all
ProtectProc=default
ProtectControlGroups=no
ProtectKernelTunables=no
NoNewPrivileges=no
LoadCredential=
";

/// The generator's `systemd-sysctl` override: a sysctl the container may not set is not a failure.
const SYSCTL_DROPIN: &str = "\
# Written by `cargo xtask test-image debian`: what the linuxcontainers images' generator writes.
[Service]
ExecStart=
ExecStart=-/lib/systemd/systemd-sysctl
";

fn mirror() -> String {
    std::env::var("BIVY_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into())
}

/// The debootstrapped tree, cached: `target/debootstrap-cache/<suite>-minbase-<key>/rootfs`,
/// complete once `<...>/stamp` exists. Downloaded .debs are kept in `debootstrap-cache/debs`.
fn debootstrap_cached() -> Result<PathBuf> {
    let cache = util::target_dir().join("debootstrap-cache");
    let key = {
        // A short, stable key of what was asked for (FNV-1a; no hashing crate needed).
        let mut h: u64 = 0xcbf29ce484222325;
        for b in format!("{DEBIAN_SUITE} {DEBIAN_INCLUDE} {}", mirror()).bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        format!("{:08x}", h & 0xffff_ffff)
    };
    let base = cache.join(format!("{DEBIAN_SUITE}-minbase-{key}"));
    let rootfs = base.join("rootfs");
    let stamp = base.join("stamp");
    if stamp.is_file() && rootfs.join("sbin/init").exists() {
        eprintln!("xtask: using cached debootstrap {}", util::rel(&rootfs));
        return Ok(rootfs);
    }
    if util::euid() != 0 {
        return Err("debootstrap needs root (run as root, or build only `busybox`)".into());
    }
    util::ensure_debs(&["debootstrap"]).map_err(|e| format!("debootstrap step: {e}"))?;
    let debs = cache.join("debs");
    util::mkdirs(&debs)?;
    let partial = base.join("rootfs.partial");
    remove_tree(&partial)?;
    remove_tree(&rootfs)?;
    util::mkdirs(&base)?;
    let mirror = mirror();
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={DEBIAN_INCLUDE}"))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(DEBIAN_SUITE)
        .arg(&partial)
        .arg(&mirror);
    eprintln!("xtask: {} (a few minutes the first time)", util::show(&cmd));
    let t = Instant::now();
    let res = util::run("debootstrap", &mut cmd);
    // debootstrap mounts /proc and /sys (and may bind /dev) inside the target; never leave them.
    let unmounted = unmount_below(&partial);
    if let Err(e) = res {
        return Err(format!(
            "{e}\n  step: debootstrap of Debian {DEBIAN_SUITE} from {mirror} (needs that mirror reachable; \
             set BIVY_DEBIAN_MIRROR to use another). See {}/debootstrap/debootstrap.log. \
             The busybox image does not need the network: `cargo xtask test-image busybox`.",
            util::rel(&partial)
        ));
    }
    unmounted?;
    fs::rename(&partial, &rootfs).map_err(|e| format!("rename {}: {e}", partial.display()))?;
    fs::write(
        &stamp,
        format!("{DEBIAN_SUITE} {DEBIAN_INCLUDE} {mirror}\n"),
    )
    .map_err(|e| format!("write {}: {e}", stamp.display()))?;
    eprintln!("xtask: debootstrap took {:.0}s", t.elapsed().as_secs_f64());
    Ok(rootfs)
}

/// Remove the entries of a directory (not the directory itself), staying on one filesystem.
fn empty_dir(dir: &Path) -> Result {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut rm = Command::new("rm");
    rm.args(["-rf", "--one-file-system", "--"]);
    let mut any = false;
    for e in entries.flatten() {
        rm.arg(e.path());
        any = true;
    }
    if any {
        util::run("clean", &mut rm)?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => util::run(
            "rm",
            Command::new("rm")
                .arg("-rf")
                .arg("--one-file-system")
                .arg(path),
        ),
        Ok(_) => fs::remove_file(path).map_err(|e| format!("rm {}: {e}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Turn a debootstrapped tree (a copy) into a container rootfs.
fn shape_debian(r: &Path) -> Result {
    let etc = r.join("etc");
    // Each container gets its own machine id on first boot (empty file = "not yet set").
    write_file(&etc.join("machine-id"), "", 0o444)?;
    let dbus_id = r.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok_and(|m| m.is_file()) {
        fs::remove_file(&dbus_id).map_err(|e| format!("rm {}: {e}", dbus_id.display()))?;
    }
    write_file(&etc.join("hostname"), "debian\n", 0o644)?;
    write_file(
        &etc.join("hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    write_file(&etc.join("fstab"), "", 0o644)?;
    // debootstrap copied the build host's resolv.conf; the image must not carry it.
    write_file(&etc.join("resolv.conf"), "", 0o644)?;

    let sysd = etc.join("systemd/system");
    util::mkdirs(&sysd)?;
    for unit in MASKED_UNITS {
        let link = sysd.join(unit);
        remove_if_exists(&link)?;
        symlink("/dev/null", &link).map_err(|e| format!("mask {unit}: {e}"))?;
    }
    write_file(
        &sysd.join("service.d/zzz-lxc-service.conf"),
        SERVICE_DROPIN,
        0o644,
    )?;
    write_file(
        &sysd.join("systemd-sysctl.service.d/zzz-lxc-override.conf"),
        SYSCTL_DROPIN,
        0o644,
    )?;

    // eth0 by DHCP through systemd-networkd, enabled as `systemctl enable` would (not
    // systemd-networkd-wait-online: a container without eth0 would wait two minutes for it).
    write_file(
        &etc.join("systemd/network/eth0.network"),
        NETWORKD_ETH0,
        0o644,
    )?;
    for (wants, unit) in [
        ("multi-user.target.wants", "systemd-networkd.service"),
        ("sockets.target.wants", "systemd-networkd.socket"),
    ] {
        let dir = sysd.join(wants);
        util::mkdirs(&dir)?;
        let link = dir.join(unit);
        remove_if_exists(&link)?;
        symlink(format!("/lib/systemd/system/{unit}"), &link)
            .map_err(|e| format!("enable {unit}: {e}"))?;
    }

    // Device nodes come from the runtime, never from an image; caches and logs are not content.
    empty_dir(&r.join("dev"))?;
    empty_dir(&r.join("run"))?;
    empty_dir(&r.join("tmp"))?;
    empty_dir(&r.join("var/tmp"))?;
    empty_dir(&r.join("var/cache/apt/archives"))?;
    mkdir_mode(&r.join("var/cache/apt/archives/partial"), 0o755)?;
    empty_dir(&r.join("var/lib/apt/lists"))?;
    mkdir_mode(&r.join("var/lib/apt/lists/partial"), 0o755)?;
    remove_if_exists(&r.join("debootstrap"))?;
    for log in ["bootstrap.log", "dpkg.log", "alternatives.log", "apt"] {
        remove_if_exists(&r.join("var/log").join(log))?;
    }
    // Backup files of passwd/group/shadow written by the package scripts.
    for f in [
        "passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-",
    ] {
        remove_if_exists(&etc.join(f))?;
    }
    Ok(())
}

/// Build `target/test-images/debian12.tar.zst` and return its path.
///
/// zstd, not gzip: measured on this 158 MB tar, `zstd -3 -T1` packs in 2.6 s to 55.4 MB and
/// unpacks in 0.4 s, where `gzip -6` took 38 s (2 busy cores) for 63.8 MB and 3.7 s to unpack.
/// LXD and bivy both detect zstd by its magic.
pub fn debian() -> Result<PathBuf> {
    let t = Instant::now();
    let cached = debootstrap_cached()?;
    let epoch = build_epoch(mtime(
        &cached.parent().expect("rootfs has a parent").join("stamp"),
    )?);
    let dir = images_dir();
    util::mkdirs(&dir)?;
    let build = dir.join(".build-debian12");
    remove_tree(&build)?;
    mkdir_mode(&build, 0o755)?;
    let r = build.join("rootfs");
    let t_copy = Instant::now();
    util::run(
        "copy the debootstrap cache",
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(&cached)
            .arg(&r),
    )?;
    eprintln!(
        "xtask: copied rootfs in {:.1}s",
        t_copy.elapsed().as_secs_f64()
    );
    shape_debian(&r)?;
    write_templates(&build)?;
    write_file(
        &build.join("metadata.yaml"),
        &metadata_yaml(
            epoch,
            "debian",
            "bookworm",
            "Debian 12 (bookworm) systemd test image (built locally)",
        ),
        0o644,
    )?;
    let out = dir.join("debian12.tar.zst");
    // A gzip image from an older xtask would only mislead.
    let _ = fs::remove_file(dir.join("debian12.tar.gz"));
    util::ensure_debs(&["zstd"])?;
    pack(&build, &out, epoch, false, Compress::Zstd(3))?;
    remove_tree(&build)?;
    eprintln!(
        "xtask: debian12 image built in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    report(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_has_required_fields() {
        let m = metadata_yaml(1700000000, "busybox", "1.35.0", "d");
        assert!(m.starts_with("architecture: x86_64\ncreation_date: 1700000000\n"));
        assert!(m.contains("  /etc/hostname:\n    when: [create, copy]\n"));
        assert!(m.contains("    template: hostname.tpl\n"));
        assert!(m.contains("  release: \"1.35.0\"\n"));
    }

    #[test]
    fn unmount_below_missing_dir_is_ok() {
        unmount_below(Path::new("/nonexistent/xtask-test")).expect("nothing mounted");
    }
}
