//! `cargo xtask bench --against lxd [--runs N] [--running N] [--bin PATH] [--big-mib N]
//! [--only migration]`: the same operations
//! timed on bivy and on a real LXD 5.0.2 (Debian's `lxd` and `lxc`) in one run, interleaved:
//! each round runs the operation on one daemon and then on the other, the order alternating
//! from round to round, so both see the same disk and CPU noise. Medians, min/max and the ratio
//! LXD/bivy go to a section of their own in `target/bench/results.md` and to stdout.
//!
//! Each side is driven by its own CLI (`bivy …`, `lxc …`), both on a `dir` pool with the
//! busybox test image (the same unified tarball, `lxc image import`ed into LXD): launch from
//! the cached image, `exec -- true` (and pylxd's `execute`, when a python with pylxd is there),
//! `list` with N running, the same two over an HTTPS remote on
//! loopback, snapshot and restore of a running container, `stop --force`, copy of a stopped
//! container, start, clean stop, delete; the same launch, snapshot, restore and copy of a
//! Debian 12 container (systemd) when its test image is built; copies to a second server of the same kind (`lxc copy
//! s:c t:c` for both pairs: `dir` and `btrfs`, `--refresh`, a large container's throughput);
//! and launch to an IPv4 address on eth0 on a managed
//! bridge: bivy's own DHCP server (its daemon in a network namespace of its own, as `bench`
//! does) against LXD's dnsmasq (a bridge on the host with `ipv4.nat` and `ipv4.routing` off,
//! which keeps LXD from enabling forwarding). The address is seen the same way on both sides:
//! a route on eth0 in `/proc/PID/net/route` of a process of the container's cgroup.
//!
//! LXD runs as in `tests/lxd_interop.rs`: its own `LXD_DIR` in a temporary directory, `lxd
//! --group root` in a process group of its own, `lxd waitready`, `lxd init --preseed` (never
//! `--auto`, which probes random subnets), and `HTTPS_PROXY` at a closed loopback port, so its
//! startup fetch of instance types leaves nothing on the wire. While it runs, the LXD anchor's
//! egress guard (`guard.nft`: traffic to private ranges leaving through the uplink is dropped)
//! is loaded as a table of our own. Everything started or made is undone by drop guards on
//! success, error and panic: containers and networks, the LXD process (by its PID) and its
//! directory, the dnsmasq and container monitors it left (those naming its directory), the
//! nftables tables, bridge and `lxc.pivot` cgroups that were not there before, the bivy daemons
//! and their state. `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding` are compared with
//! their values before; a changed one is set back and the report says so.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{self, Stats};
use crate::daemon::{self, BgDaemon};
use crate::util::{self, Result};

/// How this bench's section starts in `results.md`.
const SECTION: &str = "## bivy vs LXD (";
const PASSWORD: &str = "bench";
/// LXD's managed bridge, on the host (bivy's is in its daemon's own network namespace).
const LXD_BRIDGE: &str = "lxbbench0";
const LXD_SUBNET: &str = "10.203.88.1/24";
const BIVY_BRIDGE: &str = "bvbench0";
const BIVY_SUBNET: &str = "10.203.0.1/22";
/// The nftables table (family inet) of the egress guard.
const GUARD_TABLE: &str = "bivy_bench_lxd_guard";
/// Sysctls neither daemon may leave changed.
const FORWARDING: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

#[derive(Debug, PartialEq)]
pub(crate) struct Opts {
    /// Rounds per operation (3x that for the quick ones: exec, list).
    pub runs: usize,
    /// Containers running during `list`.
    pub running: usize,
    pub bin: Option<PathBuf>,
    /// `--only migration`: the copies between two servers of a kind alone.
    pub only_migration: bool,
    /// MiB of the large container whose copy gives the throughput.
    pub big_mib: usize,
}

fn positive(v: Option<&String>, what: &str) -> Result<usize> {
    v.and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{what} (N > 0)"))
}

pub(crate) fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        runs: 5,
        running: 10,
        bin: None,
        only_migration: false,
        big_mib: 256,
    };
    let mut against = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--against" => against = Some(it.next().ok_or("--against lxd")?.as_str()),
            "--runs" => o.runs = positive(it.next(), "--runs N")?,
            "--running" => o.running = positive(it.next(), "--running N")?,
            "--bin" => o.bin = Some(PathBuf::from(it.next().ok_or("--bin PATH")?)),
            "--big-mib" => o.big_mib = positive(it.next(), "--big-mib N")?,
            "--only" => match it.next().map(String::as_str) {
                Some("migration") => o.only_migration = true,
                _ => return Err("--only migration (the one part that runs alone here)".into()),
            },
            other => {
                return Err(format!(
                    "unknown argument `{other}` for `bench --against lxd` (--runs N, --running N, --bin PATH, --big-mib N, --only migration)"
                ))
            }
        }
    }
    match against {
        Some("lxd") => Ok(o),
        Some(x) => Err(format!(
            "--against {x}: only `lxd` is supported (LXD 5.0.2 from Debian: apt-get install lxd lxd-client)"
        )),
        None => Err("--against lxd".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Bivy,
    Lxd,
}

/// Round `i`'s order: bivy first in even rounds, LXD first in odd ones.
fn order(i: usize) -> [Side; 2] {
    if i.is_multiple_of(2) {
        [Side::Bivy, Side::Lxd]
    } else {
        [Side::Lxd, Side::Bivy]
    }
}

/// One operation's samples (ms) on each side.
#[derive(Debug, Default)]
struct Ab {
    bivy: Vec<f64>,
    lxd: Vec<f64>,
}

impl Ab {
    fn push(&mut self, side: Side, ms: f64) {
        match side {
            Side::Bivy => self.bivy.push(ms),
            Side::Lxd => self.lxd.push(ms),
        }
    }
}

/// `n` rounds of `op(side, i)` (its time in ms) on both sides, interleaved; stops at the first
/// failure, naming the side.
fn ab(n: usize, mut op: impl FnMut(Side, usize) -> Result<f64>) -> Result<Ab> {
    let mut r = Ab::default();
    for i in 0..n {
        for side in order(i) {
            let ms = op(side, i).map_err(|e| format!("{side:?}: {e}"))?;
            r.push(side, ms);
        }
    }
    Ok(r)
}

enum Row {
    Done {
        what: String,
        bivy: Stats,
        lxd: Stats,
        note: String,
    },
    Failed {
        what: String,
        error: String,
    },
}

/// The comparison table: one row per operation, both sides' min/median/max and the ratio of
/// the medians; notes on the run below it.
#[derive(Default)]
struct AbTable {
    rows: Vec<Row>,
    notes: Vec<String>,
}

/// LXD's median over bivy's, as `12.3x`.
fn ratio(bivy: &Stats, lxd: &Stats) -> String {
    if bivy.median > 0.0 {
        format!("{:.1}x", lxd.median / bivy.median)
    } else {
        "-".into()
    }
}

impl AbTable {
    /// Record `r` under `what`; the error back when it failed (for `?` in the steps that need it).
    fn add(&mut self, what: &str, r: Result<Ab>, note: &str) -> Result {
        let r = r.and_then(|ab| match (Stats::of(&ab.bivy), Stats::of(&ab.lxd)) {
            (Some(bivy), Some(lxd)) => Ok((bivy, lxd)),
            _ => Err("no samples".into()),
        });
        match r {
            Ok((bivy, lxd)) => {
                self.rows.push(Row::Done {
                    what: what.into(),
                    bivy,
                    lxd,
                    note: note.into(),
                });
                Ok(())
            }
            Err(e) => {
                self.rows.push(Row::Failed {
                    what: what.into(),
                    error: e.clone(),
                });
                Err(format!("{what}: {e}"))
            }
        }
    }

    fn markdown(&self, header: &str) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut s = String::new();
        let _ = writeln!(s, "{header}\n");
        let _ = writeln!(
            s,
            "| what | n | bivy min | bivy median | bivy max | LXD min | LXD median | LXD max | LXD/bivy | notes |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            match r {
                Row::Done {
                    what,
                    bivy,
                    lxd,
                    note,
                } => {
                    let n = if bivy.n == lxd.n {
                        bivy.n.to_string()
                    } else {
                        format!("{}/{}", bivy.n, lxd.n)
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {n} | {:.1} | **{:.1}** | {:.1} | {:.1} | **{:.1}** | {:.1} | **{}** | {} |",
                        cell(what),
                        bivy.min,
                        bivy.median,
                        bivy.max,
                        lxd.min,
                        lxd.median,
                        lxd.max,
                        ratio(bivy, lxd),
                        cell(note)
                    );
                }
                Row::Failed { what, error } => {
                    let _ = writeln!(
                        s,
                        "| {} | 0 |  | failed |  |  | failed |  |  | {} |",
                        cell(what),
                        cell(error)
                    );
                }
            }
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

/// Run `cmd` with its output captured, killing it (the child we started, by its PID) after
/// `limit`; for setup and cleanup, never for a timed step.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", util::show(cmd)))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => {
            // Not reaped yet (the thread is still waiting), so the PID is still our child's.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = rx.recv();
            return Err(format!(
                "`{}` did not finish in {} s (killed)",
                util::show(cmd),
                limit.as_secs()
            ));
        }
    };
    out.map_err(|e| format!("run {}: {e}", util::show(cmd)))
}

/// Run `cmd` (bounded to 5 minutes); an error with its stderr when it fails.
fn must(cmd: &mut Command) -> Result {
    let out = run_bounded(cmd, Duration::from_secs(300))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            util::show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// the host: forwarding sysctls, the egress guard, LXD's table and bridge

/// The interfaces the default routes (IPv4 and IPv6) leave through, `eth0` when none.
fn uplinks() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let v4 = fs::read_to_string("/proc/net/route").unwrap_or_default();
    for l in v4.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            v.push(f[0].to_owned());
        }
    }
    let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for l in v6.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
            v.push(f[9].to_owned());
        }
    }
    v.sort();
    v.dedup();
    if v.is_empty() {
        v.push("eth0".into());
    }
    v
}

/// The IPv4 name servers of `/etc/resolv.conf` (the guard lets DNS to them through).
fn resolvers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
        .collect()
}

/// The LXD anchor's `guard.nft` as a table of our own: DNS to the host's resolvers passes,
/// other traffic to private ranges leaving through an uplink is dropped (counted), and nothing
/// is forwarded from LXD's bridge to an uplink.
fn guard_rules(uplinks: &[String], resolvers: &[String], bridge: &str) -> String {
    let mut s = format!(
        "table inet {GUARD_TABLE} {{\n  chain outguard {{\n    type filter hook output priority 0; policy accept;\n"
    );
    for r in resolvers {
        let _ = writeln!(s, "    ip daddr {r} udp dport 53 accept");
        let _ = writeln!(s, "    ip daddr {r} tcp dport 53 accept");
    }
    for u in uplinks {
        let _ = writeln!(
            s,
            "    oifname \"{u}\" ip daddr {{ 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 }} counter drop"
        );
        let _ = writeln!(s, "    oifname \"{u}\" ip6 daddr fd00::/64 accept");
        let _ = writeln!(s, "    oifname \"{u}\" ip6 daddr fc00::/7 counter drop");
    }
    // Only towards an uplink: frames bridged between containers also pass this hook (with
    // br_netfilter), and they stay on the machine.
    s.push_str(
        "  }\n  chain forwardguard {\n    type filter hook forward priority 0; policy accept;\n",
    );
    for u in uplinks {
        let _ = writeln!(s, "    iifname \"{bridge}\" oifname \"{u}\" counter drop");
    }
    s.push_str("  }\n}\n");
    s
}

/// Sum of the `counter packets N` of an `nft list table` output.
fn counted_packets(listing: &str) -> u64 {
    listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn nft_table_exists(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// What the bench changes on the host, undone by `restore` (or on drop).
struct Host {
    forwarding: Vec<(&'static str, String)>,
    lxd_table_before: bool,
    guard: bool,
    done: bool,
}

impl Host {
    /// Record the forwarding sysctls, check no earlier run's leftovers are in the way, and load
    /// the egress guard.
    fn prepare(run_dir: &Path) -> Result<Host> {
        let mut forwarding = Vec::new();
        for p in FORWARDING {
            let v = fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"))?;
            forwarding.push((p, v.trim().to_owned()));
        }
        if link_exists(LXD_BRIDGE) {
            return Err(format!(
                "a link named {LXD_BRIDGE} exists already (another `bench --against lxd`, or a killed one: `ip link del {LXD_BRIDGE}`)"
            ));
        }
        if nft_table_exists("inet", GUARD_TABLE) {
            return Err(format!(
                "nft table inet {GUARD_TABLE} exists already (another `bench --against lxd`, or a killed one: `nft delete table inet {GUARD_TABLE}`)"
            ));
        }
        let mut h = Host {
            forwarding,
            lxd_table_before: nft_table_exists("inet", "lxd"),
            guard: false,
            done: false,
        };
        let rules = guard_rules(
            &uplinks(),
            &resolvers(&fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
            LXD_BRIDGE,
        );
        let file = run_dir.join("guard.nft");
        util::write_atomic(&file, &rules)?;
        h.guard = true;
        util::run(
            "loading the egress guard",
            Command::new("nft").arg("-f").arg(&file),
        )?;
        Ok(h)
    }

    /// Undo; what was found, for the report.
    fn restore(&mut self) -> Vec<String> {
        self.done = true;
        let mut notes = Vec::new();
        if self.guard {
            let listing = Command::new("nft")
                .args(["list", "table", "inet", GUARD_TABLE])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let n = counted_packets(&listing);
            notes.push(format!(
                "egress guard (nft table inet {GUARD_TABLE}) dropped {n} packets while LXD ran"
            ));
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", GUARD_TABLE])
                .stderr(Stdio::null())
                .status();
            self.guard = false;
        }
        if !self.lxd_table_before && nft_table_exists("inet", "lxd") {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", "lxd"])
                .status();
        }
        if link_exists(LXD_BRIDGE) {
            notes.push(format!(
                "{LXD_BRIDGE} was still there after LXD stopped; removed"
            ));
            let _ = Command::new("ip")
                .args(["link", "del", LXD_BRIDGE])
                .status();
        }
        for (p, before) in &self.forwarding {
            let now = fs::read_to_string(p).unwrap_or_default().trim().to_owned();
            if &now == before {
                notes.push(format!("{p}: {before} before and after"));
            } else {
                let back = fs::write(p, format!("{before}\n"));
                notes.push(format!(
                    "**{p} was changed from {before} to {now} during the run; set back to {before}{}**",
                    match back {
                        Ok(()) => String::new(),
                        Err(e) => format!(" FAILED: {e}"),
                    }
                ));
            }
        }
        notes
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if !self.done {
            for n in self.restore() {
                eprintln!("xtask: {n}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LXD

/// Where liblxc makes its `lxc.pivot` cgroup (in each hierarchy) when it starts a container.
fn lxc_pivots() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")))
        .map(|p| p.join("lxc.pivot"))
        .collect()
}

/// PIDs (not ours) whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != me)
        .filter(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// An LXD daemon of our own: its directory, the process we started.
struct Lxd {
    dir: PathBuf,
    child: Child,
    /// The `lxc.pivot` cgroups that were not there before it started.
    new_pivots: Vec<PathBuf>,
    /// Spawn until `lxd waitready` returned.
    ready_after: Duration,
}

impl Lxd {
    fn start(dir: &Path, https_port: u16) -> Result<Lxd> {
        util::mkdirs(dir)?;
        let new_pivots = lxc_pivots().into_iter().filter(|p| !p.is_dir()).collect();
        let out = fs::File::create(dir.join("lxd.stdout"))
            .map_err(|e| format!("create {}/lxd.stdout: {e}", dir.display()))?;
        let t = Instant::now();
        let child = Command::new("lxd")
            .args(["--group", "root", "--logfile"])
            .arg(dir.join("lxd.log"))
            .env("LXD_DIR", dir)
            // Its daily fetch of instance types (also at start) goes to a closed loopback port
            // instead of resolving and reaching images.linuxcontainers.org.
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start lxd: {e}"))?;
        let mut lxd = Lxd {
            dir: dir.to_path_buf(),
            child,
            new_pivots,
            ready_after: Duration::ZERO,
        };
        must(&mut lxd.lxd(&["waitready", "--timeout=60"]))
            .map_err(|e| format!("{e}; log: {}", lxd.log()))?;
        lxd.ready_after = t.elapsed();
        let preseed = format!(
            "config:\n  core.https_address: 127.0.0.1:{https_port}\n  core.trust_password: {PASSWORD}\n\
             storage_pools:\n- name: default\n  driver: dir\n\
             profiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n"
        );
        let file = dir.join("preseed.yaml");
        fs::write(&file, preseed).map_err(|e| format!("write {}: {e}", file.display()))?;
        let f = fs::File::open(&file).map_err(|e| e.to_string())?;
        let out = lxd
            .lxd(&["init", "--preseed"])
            .stdin(f)
            .output()
            .map_err(|e| format!("lxd init --preseed: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "lxd init --preseed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(lxd)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `lxc ARGS` against this daemon's socket, with a client config of its own.
    fn lxc(&self, args: &[&str]) -> Command {
        let mut c = Command::new("lxc");
        c.args(args)
            .env("LXD_DIR", &self.dir)
            .env("LXD_SOCKET", self.dir.join("unix.socket"))
            .env("LXD_CONF", self.dir.join("client"))
            .stdin(Stdio::null());
        c
    }

    /// `lxd ARGS` (waitready, init, shutdown) for this daemon.
    fn lxd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("lxd");
        c.args(args).env("LXD_DIR", &self.dir).stdin(Stdio::null());
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("lxd.log")).unwrap_or_default()
    }

    /// Lines of `lxc ARGS` (csv listings).
    fn lines(&self, args: &[&str]) -> Vec<String> {
        run_bounded(&mut self.lxc(args), Duration::from_secs(120))
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Lxd {
    fn drop(&mut self) {
        let bounded = |c: &mut Command| run_bounded(c, Duration::from_secs(120));
        if self.child.try_wait().ok().flatten().is_none() {
            for name in self.lines(&["list", "-c", "n", "--format", "csv"]) {
                let _ = bounded(&mut self.lxc(&["delete", "--force", &name]));
            }
            for l in self.lines(&["network", "list", "--format", "csv"]) {
                let f: Vec<&str> = l.split(',').collect();
                if f.len() > 2 && f[2] == "YES" {
                    let _ = bounded(&mut self.lxc(&["network", "delete", f[0]]));
                }
            }
            let _ = bounded(&mut self.lxd(&["shutdown", "--timeout=60"]));
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                eprintln!(
                    "xtask: lxd {} still running after shutdown; SIGKILL",
                    self.pid()
                );
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        // What our LXD started and left (its dnsmasq, container monitors): they name its dir.
        let dir = self.dir.to_string_lossy().into_owned();
        let left = pids_mentioning(&dir);
        if !left.is_empty() {
            eprintln!("xtask: stopping what lxd left running: {left:?}");
            for p in &left {
                let _ = Command::new("kill")
                    .args(["-TERM", &p.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(500));
            for p in pids_mentioning(&dir) {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
        }
        // What LXD mounted under its directory (shmounts, devlxd), deepest first.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        bench::remove_run_dir(&self.dir);
        for p in &self.new_pivots {
            let _ = fs::remove_dir(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bivy

/// Instance names in a `GET /1.0/instances` body.
fn instance_names(body: &str) -> Vec<String> {
    body.split("\"/1.0/instances/")
        .skip(1)
        .filter_map(|r| Some(r[..r.find('"')?].to_owned()))
        .collect()
}

/// A bivy daemon we started: its instances deleted and it stopped on drop.
struct Bivy(BgDaemon);

impl Drop for Bivy {
    fn drop(&mut self) {
        let d = &self.0;
        if let Ok(body) = d.get("/1.0/instances") {
            for name in instance_names(&body) {
                let _ = run_bounded(
                    &mut d.cli(&["delete", "--force", &name]),
                    Duration::from_secs(120),
                );
            }
        }
        let _ = run_bounded(
            &mut d.cli(&["network", "delete", BIVY_BRIDGE]),
            Duration::from_secs(60),
        );
        d.stop();
    }
}

/// The run's directory (bivy's state, client configs), removed on drop.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        bench::remove_run_dir(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// the measurements

/// Does a `/proc/PID/net/route` listing have a route through eth0 (eth0 has an IPv4 address)?
fn eth0_routed(route: &str) -> bool {
    route
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().next() == Some("eth0"))
}

/// A process of the container's cgroup: `parent/name` or `parent/name.SUFFIX` (bivy adds a
/// per-daemon suffix) in one of the hierarchies.
fn cgroup_pid(parent: &str, name: &str) -> Option<u32> {
    let dotted = format!("{name}.");
    ["pids", "memory", "systemd", "unified", ""]
        .iter()
        .find_map(|h| {
            let dir = Path::new("/sys/fs/cgroup").join(h).join(parent);
            fs::read_dir(dir).ok()?.flatten().find_map(|e| {
                let f = e.file_name();
                let f = f.to_str()?;
                if f != name && !f.starts_with(&dotted) {
                    return None;
                }
                let procs = fs::read_to_string(e.path().join("cgroup.procs")).ok()?;
                procs.lines().next()?.trim().parse().ok()
            })
        })
}

/// Run `launch` (timed from its start) and wait for eth0 of the container (cgroup `parent`,
/// `name`) to have an IPv4 address, polling its `/proc/PID/net/route` every millisecond.
fn launch_to_address(launch: &mut Command, parent: &str, name: &str) -> Result<f64> {
    let t0 = Instant::now();
    bench::time_one(launch)?;
    let deadline = t0 + Duration::from_secs(60);
    let mut pid = None;
    loop {
        if pid.is_none() {
            // Only a process in a network namespace of its own (not a monitor on the host).
            pid = cgroup_pid(parent, name).filter(|p| {
                let ns = |p: &str| fs::read_link(format!("/proc/{p}/ns/net")).ok();
                ns(&p.to_string()).is_some_and(|n| Some(n) != ns("self"))
            });
        }
        if let Some(pid) = pid {
            let route = fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap_or_default();
            if eth0_routed(&route) {
                return Ok(util::ms(t0.elapsed()));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no IPv4 address on eth0 of {name} after 60 s (container process: {pid:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Ctx<'a> {
    bivy: &'a BgDaemon,
    lxd: &'a Lxd,
    /// Client configs holding the `h:` HTTPS remote.
    bivy_conf: PathBuf,
    lxc_conf: PathBuf,
}

impl Ctx<'_> {
    /// `bivy ARGS` or `lxc ARGS` against the local daemon.
    fn cli(&self, side: Side, args: &[&str]) -> Command {
        match side {
            Side::Bivy => self.bivy.cli(args),
            Side::Lxd => self.lxd.lxc(args),
        }
    }

    /// Same with the client config that has the `h:` remote.
    fn remote(&self, side: Side, args: &[&str]) -> Command {
        let mut c = self.cli(side, args);
        match side {
            Side::Bivy => c.env("BIVY_CONF", &self.bivy_conf),
            Side::Lxd => c.env("LXD_CONF", &self.lxc_conf),
        };
        c
    }

    /// Untimed, on both sides.
    fn both(&self, args: &[&str]) -> Result {
        for side in [Side::Bivy, Side::Lxd] {
            must(&mut self.cli(side, args)).map_err(|e| format!("{side:?}: {e}"))?;
        }
        Ok(())
    }

    /// Time `args(i)` on both sides, `n` interleaved rounds.
    fn time(&self, n: usize, args: impl Fn(usize) -> Vec<String>) -> Result<Ab> {
        ab(n, |side, i| {
            let a = args(i);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            bench::time_one(&mut self.cli(side, &a))
        })
    }
}

/// A python with pylxd: `$BIVY_PYTHON`, else `target/pyvenv/bin/python` (the tests' rule).
fn pylxd_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BIVY_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = util::target_dir().join("pyvenv/bin/python");
    venv.exists().then_some(venv)
}

/// pylxd's `execute(["true"])` on `instance`, timed inside python (one process per side and
/// round: a warm-up exec, then three timed ones), `runs` interleaved rounds.
fn pylxd_execs(c: &Ctx, py: &Path, runs: usize, instance: &str) -> Result<Ab> {
    const SCRIPT: &str = r#"
import sys, time, urllib.parse, pylxd
c = pylxd.Client(endpoint="http+unix://" + urllib.parse.quote(sys.argv[1], safe=""))
i = c.instances.get(sys.argv[2])
i.execute(["true"])
for _ in range(3):
    t = time.perf_counter()
    r = i.execute(["true"])
    ms = (time.perf_counter() - t) * 1000
    if r.exit_code != 0:
        sys.exit("exit code %d" % r.exit_code)
    print("%.3f" % ms)
"#;
    let mut r = Ab::default();
    for i in 0..runs {
        for side in order(i) {
            let socket = match side {
                Side::Bivy => daemon::socket(&c.bivy.dir),
                Side::Lxd => c.lxd.dir.join("unix.socket"),
            };
            let out = Command::new(py)
                .args(["-c", SCRIPT])
                .arg(&socket)
                .arg(instance)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{side:?}: {}: {e}", py.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{side:?}: pylxd: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                let ms = l
                    .trim()
                    .parse()
                    .map_err(|_| format!("{side:?}: pylxd printed {l:?}"))?;
                r.push(side, ms);
            }
        }
    }
    Ok(r)
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The container operations, in an order where each finds what it needs; stops at the first
/// failure (in the table).
fn containers(c: &Ctx, t: &mut AbTable, o: &Opts, image: &Path) -> Result {
    let runs = o.runs;
    let img = image.to_string_lossy().into_owned();
    let r = c.time(1, |_| v(&["image", "import", &img, "--alias", "busybox"]));
    t.add("image import (busybox, 1 MB)", r, "")?;
    // Each CLI's first run (config files) is not measured.
    c.both(&["list"])?;

    let l = |i: usize| format!("ab-l{i}");
    let r = c.time(runs, |i| v(&["launch", "busybox", &l(i)]));
    t.add("launch busybox (image cached, no NIC)", r, "to RUNNING")?;

    let r = c.time(runs * 3, |_| v(&["exec", "ab-l0", "--", "true"]));
    t.add("exec -- true", r, "unix socket")?;
    match pylxd_python() {
        Some(py) => {
            let r = pylxd_execs(c, &py, runs, "ab-l0");
            t.add(
                "exec -- true from pylxd (`execute`)",
                r,
                "pylxd 2.4.2's own `Instance.execute` on the unix socket, timed in python: POST exec, three websockets, the operation's wait",
            )?;
        }
        None => t.notes.push(
            "pylxd row left out: no python with pylxd (`BIVY_PYTHON`, or `target/pyvenv` as CI makes it)".into(),
        ),
    }

    let running = o.running.max(runs);
    for j in runs..running {
        c.both(&["launch", "busybox", &format!("ab-n{j}")])?;
    }
    let r = c.time(runs * 3, |_| v(&["list"]));
    t.add(
        &format!("list with {running} running"),
        r,
        "default columns",
    )?;
    for j in runs..running {
        c.both(&["delete", "--force", &format!("ab-n{j}")])?;
    }

    // HTTPS remotes on loopback.
    let r = ab(runs * 3, |side, _| {
        bench::time_one(&mut c.remote(side, &["exec", "h:ab-l0", "--", "true"]))
    });
    t.add("exec -- true over HTTPS (loopback)", r, "")?;
    let r = ab(runs * 3, |side, _| {
        bench::time_one(&mut c.remote(side, &["list", "h:"]))
    });
    t.add(
        &format!("list over HTTPS (loopback), {runs} running"),
        r,
        "",
    )?;

    let r = c.time(runs, |i| v(&["snapshot", "ab-l0", &format!("s{i}")]));
    t.add("snapshot (running)", r, "")?;
    let r = c.time(runs, |i| v(&["restore", "ab-l0", &format!("s{i}")]));
    t.add("restore (running)", r, "")?;

    let r = c.time(runs, |i| v(&["stop", "--force", &l(i)]));
    t.add("stop --force", r, "")?;

    let src = l(1.min(runs - 1));
    let cp = |i: usize| format!("ab-c{i}");
    let r = c.time(runs, |i| v(&["copy", &src, &cp(i), "--instance-only"]));
    t.add("copy (stopped source)", r, "--instance-only")?;
    let r = c.time(runs, |i| v(&["start", &cp(i)]));
    t.add("start (stopped container)", r, "")?;
    let r = c.time(runs, |i| v(&["stop", &cp(i), "--timeout", "30"]));
    t.add("stop (clean)", r, "SIGPWR, busybox init halts")?;
    let r = c.time(runs, |i| v(&["delete", &cp(i)]));
    t.add("delete (stopped)", r, "")?;
    let r = c.time(runs, |i| v(&["delete", &l(i)]));
    t.add("delete (stopped, with snapshots on #0)", r, "")?;
    // A failure there (LXD's systemd, say) leaves the other parts of the run to go on.
    if let Err(e) = debian(c, t, runs) {
        t.notes.push(format!("Debian container rows stopped: {e}"));
    }
    Ok(())
}

/// The Debian 12 test image's rows (systemd, about 10,000 files), when it is built: a launch
/// after the first (which unpacks the image on each side, untimed), then snapshot, restore and
/// copy of a running container: the issue's "≤ 50 ms for the Debian image" beside LXD's.
fn debian(c: &Ctx, t: &mut AbTable, runs: usize) -> Result {
    let debian = util::target_dir().join("test-images/debian12.tar.zst");
    if !debian.is_file() {
        t.notes.push(format!(
            "Debian container rows left out: {} is not built (`cargo xtask test-image debian`)",
            util::rel(&debian)
        ));
        return Ok(());
    }
    // Each timed step waits for the systemd boots the step before started (LXD's take a
    // second or two of both CPUs) to settle, so that neither side is timed beside them.
    let settle = || std::thread::sleep(Duration::from_secs(3));
    let time = |args: &dyn Fn(usize) -> Vec<String>| {
        c.time(runs, |i| {
            settle();
            args(i)
        })
    };
    let deb = debian.to_string_lossy().into_owned();
    c.both(&["image", "import", &deb, "--alias", "debian"])?;
    c.both(&["launch", "debian", "ab-d"])?;
    let l = |i: usize| format!("ab-dl{i}");
    let r = time(&|i| v(&["launch", "debian", &l(i)]));
    t.add(
        "launch Debian 12 (image unpacked by a first launch)",
        r,
        "to RUNNING (systemd then boots); each step after 3 s for the boots before it to settle",
    )?;
    for i in 0..runs {
        c.both(&["delete", "--force", &l(i)])?;
    }
    let r = time(&|i| v(&["snapshot", "ab-d", &format!("s{i}")]));
    t.add("snapshot Debian 12 (running)", r, "")?;
    let r = time(&|i| v(&["restore", "ab-d", &format!("s{i}")]));
    t.add(
        "restore Debian 12 (running)",
        r,
        "a forced stop, the restore and a start",
    )?;
    let cp = |i: usize| format!("ab-dc{i}");
    let r = time(&|i| v(&["copy", "ab-d", &cp(i), "--instance-only"]));
    t.add("copy Debian 12 (running source)", r, "--instance-only")?;
    for i in 0..runs {
        c.both(&["delete", &cp(i)])?;
    }
    c.both(&["delete", "--force", "ab-d"])?;
    // The copies to a second server import the image again.
    c.both(&["image", "delete", "debian"])
}

/// A second server of each kind, and one `lxc` client config per kind naming the first server
/// `s:` and the second `t:`: the unmodified `lxc` drives both pairs' copies.
struct Pair {
    /// The second servers, held until the pair is dropped (instances deleted, stopped).
    _bivy: Bivy,
    _lxd: Lxd,
    run_dir: PathBuf,
}

impl Pair {
    fn start(bin: &Path, run_dir: &Path, bivy_addr: &str, lxd_addr: &str) -> Result<Pair> {
        let lxd_dir = std::env::temp_dir().join(format!("bivy-bench-lxd2-{}", std::process::id()));
        let (bport, lport) = (free_port()?, free_port()?);
        let lxd = Lxd::start(&lxd_dir, lport)?;
        let bivy = Bivy(daemon::start(
            bin,
            &run_dir.join("bivy2"),
            &run_dir.join("daemon2.log"),
        )?);
        let b2 = format!("127.0.0.1:{bport}");
        must(&mut bivy.0.cli(&["config", "set", "core.https_address", &b2]))?;
        must(
            &mut bivy
                .0
                .cli(&["config", "set", "core.trust_password", PASSWORD]),
        )?;
        let p = Pair {
            _bivy: bivy,
            _lxd: lxd,
            run_dir: run_dir.to_path_buf(),
        };
        let l2 = format!("127.0.0.1:{lport}");
        for (side, src, dst) in [(Side::Bivy, bivy_addr, &b2), (Side::Lxd, lxd_addr, &l2)] {
            util::mkdirs(p.conf(side))?;
            for (name, addr) in [("s", src), ("t", dst.as_str())] {
                must(&mut p.lxc(
                    side,
                    &[
                        "remote",
                        "add",
                        name,
                        addr,
                        "--accept-certificate",
                        "--password",
                        PASSWORD,
                    ],
                ))?;
            }
            must(&mut p.lxc(side, &["list", "t:"]))?;
        }
        Ok(p)
    }

    fn conf(&self, side: Side) -> PathBuf {
        self.run_dir.join(match side {
            Side::Bivy => "lxc-pair-bivy",
            Side::Lxd => "lxc-pair-lxd",
        })
    }

    /// `lxc ARGS` with this kind's pair as `s:` and `t:`.
    fn lxc(&self, side: Side, args: &[&str]) -> Command {
        let mut c = Command::new("lxc");
        c.args(args)
            .env("LXD_CONF", self.conf(side))
            .stdin(Stdio::null());
        c
    }

    fn both(&self, args: &[&str]) -> Result {
        for side in [Side::Bivy, Side::Lxd] {
            must(&mut self.lxc(side, args)).map_err(|e| format!("{side:?}: {e}"))?;
        }
        Ok(())
    }

    /// `sh -c SCRIPT` in instance `ct` on both kinds.
    fn sh(&self, ct: &str, script: &str) -> Result {
        self.both(&["exec", ct, "--", "sh", "-c", script])
    }

    /// `lxc ARGS` on both kinds, best effort (cleanup).
    fn both_quietly(&self, args: &[&str]) {
        for side in [Side::Bivy, Side::Lxd] {
            let _ = run_bounded(&mut self.lxc(side, args), Duration::from_secs(120));
        }
    }
}

/// Copies between two servers of a kind on loopback, each pair driven by the unmodified `lxc`
/// (pull mode, its default): a stopped busybox container with one snapshot, on `dir` and on
/// `btrfs` loop pools; `--refresh` after one changed file; a container holding `big_mib` MiB of
/// random data, for the throughput. bivy's pair uses its own transfers (byte streams on dir,
/// btrfs send on btrfs; rsync for the refresh), LXD's rsync (dir) and btrfs send (btrfs).
fn migration(p: &Pair, t: &mut AbTable, o: &Opts) -> Result {
    let runs = o.runs;
    p.both(&["launch", "s:busybox", "s:mg-src"])?;
    p.sh("s:mg-src", "echo one > /data && sync")?;
    p.both(&["snapshot", "s:mg-src", "s0"])?;
    p.sh("s:mg-src", "echo two > /data && sync")?;
    p.both(&["stop", "s:mg-src", "--force"])?;
    let r = ab(runs, |side, i| {
        bench::time_one(&mut p.lxc(side, &["copy", "s:mg-src", &format!("t:mg-c{i}")]))
    });
    t.add(
        "copy to another server: busybox, stopped, 1 snapshot (dir)",
        r,
        "`lxc copy s:c t:c` on loopback, pull mode",
    )?;
    let r = ab(runs, |side, i| {
        let change = format!("echo {i} > /data && sync");
        for args in [
            &["start", "s:mg-src"][..],
            &["exec", "s:mg-src", "--", "sh", "-c", &change],
            &["stop", "s:mg-src", "--force"],
        ] {
            must(&mut p.lxc(side, args))?;
        }
        bench::time_one(&mut p.lxc(
            side,
            &["copy", "s:mg-src", &format!("t:mg-c{i}"), "--refresh"],
        ))
    });
    t.add(
        "copy --refresh to another server after one changed file (dir)",
        r,
        "rsync on both sides",
    )?;
    for i in 0..runs {
        p.both_quietly(&["delete", &format!("t:mg-c{i}")]);
    }

    let mib = o.big_mib;
    p.both(&["launch", "s:busybox", "s:mg-big"])?;
    let fill = format!("dd if=/dev/urandom of=/big bs=1M count={mib} 2>/dev/null && sync");
    p.sh("s:mg-big", &fill)?;
    p.both(&["stop", "s:mg-big", "--force"])?;
    let big_runs = runs.min(3);
    let r = ab(big_runs, |side, i| {
        let name = format!("t:mg-b{i}");
        let ms = bench::time_one(&mut p.lxc(side, &["copy", "s:mg-big", &name]))?;
        must(&mut p.lxc(side, &["delete", &name]))?;
        Ok(ms)
    });
    let note = match &r {
        Ok(ab) => {
            let rate = |v: &[f64]| {
                Stats::of(v).map_or(0.0, |s| mib as f64 * 1.048_576 / (s.median / 1000.0))
            };
            format!(
                "{mib} MiB of random data: bivy {:.0} MB/s, LXD {:.0} MB/s",
                rate(&ab.bivy),
                rate(&ab.lxd)
            )
        }
        Err(_) => String::new(),
    };
    t.add("copy to another server: a large container (dir)", r, &note)?;
    p.both_quietly(&["delete", "s:mg-big"]);

    // The Debian test image's container (systemd, about 10,000 files), when the image is built.
    let debian = util::target_dir().join("test-images/debian12.tar.zst");
    if debian.is_file() {
        let deb = debian.to_string_lossy().into_owned();
        p.both(&["image", "import", &deb, "s:", "--alias", "debian"])?;
        p.both(&["init", "s:debian", "s:mg-deb"])?;
        let r = ab(runs.min(3), |side, i| {
            let name = format!("t:mg-d{i}");
            let ms = bench::time_one(&mut p.lxc(side, &["copy", "s:mg-deb", &name]))?;
            must(&mut p.lxc(side, &["delete", &name]))?;
            Ok(ms)
        });
        t.add(
            "copy to another server: Debian 12 container, stopped (dir)",
            r,
            "`lxc init` from the Debian test image",
        )?;
        p.both_quietly(&["delete", "s:mg-deb"]);
    }

    // btrfs loop pools on all four; removed whatever happens.
    let res = (|| -> Result {
        for r in ["s:", "t:"] {
            p.both(&["storage", "create", &format!("{r}bt"), "btrfs", "size=1GiB"])?;
        }
        p.both(&["launch", "s:busybox", "s:mg-bt", "-s", "bt"])?;
        p.sh("s:mg-bt", "echo one > /data && sync")?;
        p.both(&["snapshot", "s:mg-bt", "s0"])?;
        p.both(&["stop", "s:mg-bt", "--force"])?;
        let r = ab(runs, |side, i| {
            let name = format!("t:mg-bt{i}");
            let ms = bench::time_one(&mut p.lxc(side, &["copy", "s:mg-bt", &name, "-s", "bt"]))?;
            must(&mut p.lxc(side, &["delete", &name]))?;
            Ok(ms)
        });
        t.add(
            "copy to another server: busybox, stopped, 1 snapshot (btrfs)",
            r,
            "both sides' btrfs send/receive",
        )
    })();
    p.both_quietly(&["delete", "s:mg-bt", "--force"]);
    for r in ["s:", "t:"] {
        p.both_quietly(&["storage", "delete", &format!("{r}bt")]);
    }
    res
}

/// The Debian test image has no udev (debootstrap's minbase): systemd-networkd leaves links
/// "pending" for udev unless /sys is read-only, as bivy mounts it and LXD (`sys:rw` for
/// unprivileged containers) does not. So LXD's Debian containers get bivy's /sys, through
/// liblxc's own key (the first line clears LXD's list).
const LXD_SYS_RO: &str =
    "raw.lxc=lxc.mount.auto =\nlxc.mount.auto = proc:mixed sys:ro cgroup:mixed";

/// Launch to an IPv4 address on eth0 on a managed bridge: bivy in a daemon of its own in a new
/// network namespace, LXD on a bridge on the host.
fn network(
    c: &Ctx,
    t: &mut AbTable,
    bin: &Path,
    image: &Path,
    run_dir: &Path,
    runs: usize,
) -> Result {
    let bivy = Bivy(daemon::start_in_new_netns(
        bin,
        &run_dir.join("net/bivy"),
        &run_dir.join("net/daemon.log"),
    )?);
    let img = image.to_string_lossy().into_owned();
    must(&mut bivy.0.cli(&["image", "import", &img, "--alias", "busybox"]))?;
    let create = |side: Side| -> Command {
        match side {
            Side::Bivy => bivy.0.cli(&[
                "network",
                "create",
                BIVY_BRIDGE,
                &format!("ipv4.address={BIVY_SUBNET}"),
                "ipv4.nat=false",
                "ipv6.address=none",
            ]),
            Side::Lxd => c.lxd.lxc(&[
                "network",
                "create",
                LXD_BRIDGE,
                &format!("ipv4.address={LXD_SUBNET}"),
                "ipv4.nat=false",
                "ipv4.routing=false",
                "ipv6.address=none",
            ]),
        }
    };
    let r = ab(1, |side, _| bench::time_one(&mut create(side)));
    t.add(
        "network create (bridge, DHCP)",
        r,
        &format!("bivy {BIVY_SUBNET} in its netns; LXD {LXD_SUBNET}, dnsmasq"),
    )?;
    let name = |i: usize| format!("ab-a{i}");
    let r = ab(runs, |side, i| {
        let n = name(i);
        match side {
            Side::Bivy => launch_to_address(
                &mut bivy
                    .0
                    .cli(&["launch", "busybox", &n, "--network", BIVY_BRIDGE]),
                "bivy",
                &n,
            ),
            Side::Lxd => launch_to_address(
                &mut c
                    .lxd
                    .lxc(&["launch", "busybox", &n, "--network", LXD_BRIDGE]),
                "",
                &format!("lxc.payload.{n}"),
            ),
        }
    });
    t.add(
        "launch to an IPv4 address on eth0 (udhcpc)",
        r,
        "bivy's DHCP vs dnsmasq; /proc/PID/net/route polled every 1 ms",
    )?;
    for i in 0..runs {
        must(&mut bivy.0.cli(&["delete", "--force", &name(i)]))?;
        must(&mut c.lxd.lxc(&["delete", "--force", &name(i)]))?;
    }
    // Debian 12 with systemd-networkd, when its test image was built (`cargo xtask test-image
    // debian`); each container deleted (untimed) once it has its address, so the next round
    // starts on a quiet machine.
    let debian = util::target_dir().join("test-images/debian12.tar.zst");
    if debian.is_file() {
        let deb = debian.to_string_lossy().into_owned();
        // The migration part may have imported it already (into the same daemon as `s:`).
        let imported = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        if !imported(&mut bivy.0.cli(&["image", "info", "debian"])) {
            must(&mut bivy.0.cli(&["image", "import", &deb, "--alias", "debian"]))?;
        }
        if !imported(&mut c.lxd.lxc(&["image", "info", "debian"])) {
            must(&mut c.lxd.lxc(&["image", "import", &deb, "--alias", "debian"]))?;
        }
        // Each side unpacks the image into its pool at its first launch: not measured.
        for side in [Side::Bivy, Side::Lxd] {
            let (mut launch, mut delete) = match side {
                Side::Bivy => (
                    bivy.0.cli(&["launch", "debian", "ab-dw"]),
                    bivy.0.cli(&["delete", "--force", "ab-dw"]),
                ),
                Side::Lxd => (
                    c.lxd.lxc(&["launch", "debian", "ab-dw", "-c", LXD_SYS_RO]),
                    c.lxd.lxc(&["delete", "--force", "ab-dw"]),
                ),
            };
            must(&mut launch)?;
            must(&mut delete)?;
        }
        let dname = |i: usize| format!("ab-d{i}");
        let r = ab(runs, |side, i| {
            let n = dname(i);
            let (took, mut delete) = match side {
                Side::Bivy => (
                    launch_to_address(
                        &mut bivy
                            .0
                            .cli(&["launch", "debian", &n, "--network", BIVY_BRIDGE]),
                        "bivy",
                        &n,
                    ),
                    bivy.0.cli(&["delete", "--force", &n]),
                ),
                Side::Lxd => (
                    launch_to_address(
                        &mut c.lxd.lxc(&[
                            "launch",
                            "debian",
                            &n,
                            "--network",
                            LXD_BRIDGE,
                            "-c",
                            LXD_SYS_RO,
                        ]),
                        "",
                        &format!("lxc.payload.{n}"),
                    ),
                    c.lxd.lxc(&["delete", "--force", &n]),
                ),
            };
            must(&mut delete)?;
            took
        });
        t.add(
            "launch to an IPv4 address on eth0 (Debian 12, systemd-networkd)",
            r,
            "bivy's DHCP vs dnsmasq; image already unpacked on each side; LXD with /sys read-only",
        )?;
    } else {
        t.notes.push(format!(
            "Debian row left out: {} is not built (`cargo xtask test-image debian`)",
            util::rel(&debian)
        ));
    }
    must(&mut c.lxd.lxc(&["network", "delete", LXD_BRIDGE]))?;
    Ok(())
}

/// The HTTPS remote `h:` in a client config of its own, on each side.
fn add_remotes(c: &Ctx, bivy_addr: &str, lxd_addr: &str) -> Result {
    util::mkdirs(&c.bivy_conf)?;
    util::mkdirs(&c.lxc_conf)?;
    for (side, addr) in [(Side::Bivy, bivy_addr), (Side::Lxd, lxd_addr)] {
        must(&mut c.remote(
            side,
            &[
                "remote",
                "add",
                "h",
                addr,
                "--accept-certificate",
                "--password",
                PASSWORD,
            ],
        ))?;
        // The first use (session setup, certificate caches) is not measured.
        must(&mut c.remote(side, &["list", "h:"]))?;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// What the bench needs installed: a missing `lxd`, `lxc` or `nft` is an error naming its
/// package; a missing dnsmasq is installed (LXD's bridges need it).
fn prerequisites() -> Result {
    if util::euid() != 0 {
        return Err("needs root (it starts LXD and containers)".into());
    }
    for (prog, pkg) in [
        ("lxd", "lxd"),
        ("lxc", "lxd-client"),
        ("nft", "nftables"),
        ("rsync", "rsync"),
        ("unshare", "util-linux"),
    ] {
        if !util::have(prog) {
            return Err(format!(
                "`{prog}` is not installed (apt-get install --no-install-recommends {pkg})"
            ));
        }
    }
    if !util::have("dnsmasq") && !Path::new("/usr/sbin/dnsmasq").exists() {
        util::ensure_debs(&["dnsmasq-base"]).map_err(|e| {
            format!("LXD's bridges need dnsmasq (apt-get install --no-install-recommends dnsmasq-base): {e}")
        })?;
    }
    let v = util::output("lxd --version", Command::new("lxd").arg("--version"))?;
    if !v.trim().starts_with("5.0.") {
        eprintln!(
            "xtask: lxd {} (this bench was written against 5.0.2)",
            v.trim()
        );
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result {
    let o = parse_opts(args)?;
    prerequisites()?;
    let bin = bench::bivy_bin(o.bin.clone())?;
    let image = crate::image::busybox()?;
    let out_dir = util::target_dir().join("bench");
    let run_dir = out_dir.join(format!("lxd-run-{}", std::process::id()));
    util::mkdirs(&run_dir)?;
    // Removed last, after the daemons using it have stopped.
    let _run_dir = RunDir(run_dir.clone());
    let before = bench::load_note();
    let mut t = AbTable::default();

    // Drop order is the reverse of these: bivy, then LXD, then the host's state.
    let mut host = Host::prepare(&run_dir)?;
    let bivy_port = free_port()?;
    let lxd_port = free_port()?;
    let lxd_dir = std::env::temp_dir().join(format!("bivy-bench-lxd-{}", std::process::id()));
    let result = (|| -> Result {
        let lxd = Lxd::start(&lxd_dir, lxd_port)?;
        let bivy = Bivy(daemon::start(
            &bin,
            &run_dir.join("bivy"),
            &run_dir.join("daemon.log"),
        )?);
        t.add(
            "daemon start (spawn to ready), empty state",
            Ok(Ab {
                bivy: vec![util::ms(bivy.0.ready_after)],
                lxd: vec![util::ms(lxd.ready_after)],
            }),
            "bivy: socket accepts; LXD: `lxd waitready`",
        )?;
        let bivy_addr = format!("127.0.0.1:{bivy_port}");
        must(
            &mut bivy
                .0
                .cli(&["config", "set", "core.https_address", &bivy_addr]),
        )?;
        must(
            &mut bivy
                .0
                .cli(&["config", "set", "core.trust_password", PASSWORD]),
        )?;
        let c = Ctx {
            bivy: &bivy.0,
            lxd: &lxd,
            bivy_conf: run_dir.join("bivy-remote-conf"),
            lxc_conf: run_dir.join("lxc-remote-conf"),
        };
        let lxd_addr = format!("127.0.0.1:{lxd_port}");
        add_remotes(&c, &bivy_addr, &lxd_addr)?;
        if o.only_migration {
            let img = image.to_string_lossy().into_owned();
            c.both(&["image", "import", &img, "--alias", "busybox"])?;
        } else {
            containers(&c, &mut t, &o, &image)?;
        }
        let pair = Pair::start(&bin, &run_dir, &bivy_addr, &lxd_addr)?;
        migration(&pair, &mut t, &o)?;
        drop(pair);
        if o.only_migration {
            return Ok(());
        }
        network(&c, &mut t, &bin, &image, &run_dir, o.runs)
    })();
    if let Err(e) = &result {
        if !matches!(t.rows.last(), Some(Row::Failed { .. })) {
            t.rows.push(Row::Failed {
                what: "setup".into(),
                error: e.clone(),
            });
        }
    }
    let cleanup_start = Instant::now();
    // The daemons are gone (dropped in the closure); now the host.
    t.notes.extend(host.restore());
    eprintln!(
        "xtask: cleaned up in {:.1} s",
        cleanup_start.elapsed().as_secs_f64()
    );
    let lxd_version =
        util::output("lxd --version", Command::new("lxd").arg("--version")).unwrap_or_default();
    t.notes.insert(
        0,
        format!(
            "Both daemons in turn on the same image and dir pool; {} rounds per operation (3x for exec and list); \
             the order alternates each round. bivy {}; LXD {} (Debian) with its own LXD_DIR, no lxcfs; \
             each side's own CLI (`bivy`, `lxc`).",
            o.runs,
            util::rel(&bin),
            lxd_version.trim()
        ),
    );
    let header = format!(
        "{SECTION}{}; {before} before, {} after; times in ms)",
        bench::utc_now(),
        bench::load_note()
    );
    let md = t.markdown(&header);
    print!("{md}");
    bench::write_section(&out_dir, SECTION, &md)?;
    result.map_err(|e| format!("bench stopped early: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        assert_eq!(
            parse_opts(&args(&["--against", "lxd"])).unwrap(),
            Opts {
                runs: 5,
                running: 10,
                bin: None,
                only_migration: false,
                big_mib: 256,
            }
        );
        assert_eq!(
            parse_opts(&args(&[
                "--runs",
                "3",
                "--against",
                "lxd",
                "--running",
                "20"
            ]))
            .unwrap(),
            Opts {
                runs: 3,
                running: 20,
                bin: None,
                only_migration: false,
                big_mib: 256,
            }
        );
        let e = parse_opts(&args(&["--against", "docker"])).unwrap_err();
        assert!(e.contains("only `lxd`"), "{e}");
        assert!(parse_opts(&args(&["--against"])).is_err());
        assert!(parse_opts(&args(&["--against", "lxd", "--runs", "0"])).is_err());
        assert!(parse_opts(&args(&["--against", "lxd", "--runs", "x"])).is_err());
        let e = parse_opts(&args(&["--against", "lxd", "--cycles", "3"])).unwrap_err();
        assert!(e.contains("--cycles"), "{e}");
    }

    #[test]
    fn rounds_alternate_and_interleave() {
        assert_eq!(order(0), [Side::Bivy, Side::Lxd]);
        assert_eq!(order(1), [Side::Lxd, Side::Bivy]);
        let mut seen = Vec::new();
        let r = ab(3, |side, i| {
            seen.push((side, i));
            Ok(match side {
                Side::Bivy => 1.0 + i as f64,
                Side::Lxd => 10.0 + i as f64,
            })
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (Side::Bivy, 0),
                (Side::Lxd, 0),
                (Side::Lxd, 1),
                (Side::Bivy, 1),
                (Side::Bivy, 2),
                (Side::Lxd, 2)
            ]
        );
        assert_eq!(r.bivy, [1.0, 2.0, 3.0]);
        assert_eq!(r.lxd, [10.0, 11.0, 12.0]);
        let e = ab(2, |side, _| match side {
            Side::Bivy => Ok(1.0),
            Side::Lxd => Err("boom".into()),
        })
        .unwrap_err();
        assert_eq!(e, "Lxd: boom");
    }

    #[test]
    fn table_has_medians_and_ratio() {
        let mut t = AbTable::default();
        t.add(
            "launch",
            Ok(Ab {
                bivy: vec![20.0, 10.0, 30.0],
                lxd: vec![200.0, 100.0, 300.0, 250.0],
            }),
            "a | b",
        )
        .unwrap();
        let e = t
            .add("copy", Err("`lxc copy` failed".into()), "")
            .unwrap_err();
        assert!(e.starts_with("copy: "), "{e}");
        t.notes.push("ip_forward 0 before and after".into());
        let md = t.markdown("## bivy vs LXD (x)");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "## bivy vs LXD (x)");
        assert_eq!(
            lines[4],
            "| launch | 3/4 | 10.0 | **20.0** | 30.0 | 100.0 | **225.0** | 300.0 | **11.2x** | a \\| b |"
        );
        assert_eq!(
            lines[5],
            "| copy | 0 |  | failed |  |  | failed |  |  | `lxc copy` failed |"
        );
        assert_eq!(lines[7], "- ip_forward 0 before and after");
        // Same number of cells in every row as in the header.
        let cells = |l: &str| l.matches(" |").count();
        assert_eq!(cells(lines[2]), cells(lines[4]));
        assert_eq!(cells(lines[2]), cells(lines[5]));
    }

    #[test]
    fn ratio_of_medians() {
        let s = |m: f64| Stats {
            n: 1,
            min: m,
            median: m,
            max: m,
        };
        assert_eq!(ratio(&s(4.0), &s(10.0)), "2.5x");
        assert_eq!(ratio(&s(0.0), &s(10.0)), "-");
    }

    #[test]
    fn guard_drops_private_ranges_on_the_uplink_only() {
        let g = guard_rules(&["eth0".into()], &["10.255.255.53".into()], "lxbbench0");
        assert!(g.starts_with(&format!("table inet {GUARD_TABLE} {{")));
        assert!(g.contains("ip daddr 10.255.255.53 udp dport 53 accept"));
        assert!(g.contains(
            "oifname \"eth0\" ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 } counter drop"
        ));
        assert!(g.contains("iifname \"lxbbench0\" oifname \"eth0\" counter drop"));
        // The resolver is let through before the drop.
        assert!(g.find("dport 53 accept").unwrap() < g.find("counter drop").unwrap());
        assert_eq!(g.matches('{').count(), g.matches('}').count());
    }

    #[test]
    fn parsers() {
        assert_eq!(
            resolvers("# x\nnameserver 10.255.255.53\nnameserver fd00::1\nsearch y\n"),
            ["10.255.255.53"]
        );
        assert_eq!(
            counted_packets("counter packets 3 bytes 180 drop\n counter packets 0 bytes 0 drop\ncounter packets 2 bytes 1"),
            5
        );
        assert_eq!(
            instance_names(r#"{"metadata":["/1.0/instances/ab-l0","/1.0/instances/x"]}"#),
            ["ab-l0", "x"]
        );
        let route = "Iface\tDestination\tGateway\nlo\t0000007F\t00000000\n";
        assert!(!eth0_routed(route));
        assert!(eth0_routed(&format!(
            "{route}eth0\t0058CB0A\t00000000\t0001\n"
        )));
        assert!(!eth0_routed("Iface\tDestination\n"));
    }

    #[test]
    fn bounded_run_kills_what_overruns() {
        let out = run_bounded(Command::new("true").arg("x"), Duration::from_secs(5)).unwrap();
        assert!(out.status.success());
        let t = Instant::now();
        let e =
            run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
