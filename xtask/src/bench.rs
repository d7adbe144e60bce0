//! `cargo xtask bench [--runs N] [--bin PATH] [--scale N] [--cycles N] [--only cycles]
//! [--only density [--density N]] [--only storage]`: the
//! numbers we compare with LXD (`../shared/reference/lxd-bench.md`): static binary size,
//! daemon start and idle memory, image import, launch, exec, list, stop --force, start, and a
//! container's monitor memory. `--only cycles` runs the create/start/stop/delete cycles alone
//! on a fresh daemon, each phase timed; `--only density` launches `--density N` (1000) busybox
//! containers, lists them, execs in each, reads what each costs the host, stops and deletes them.
//! `--only storage` runs the storage drivers' rows alone (busybox, and the Debian test image's
//! launch, snapshot, restore, copy, stop and publish when it is built).
//!
//! A daemon is started with a temporary `BIVY_DIR` under `target/bench/`, driven through the
//! CLI (`bivy launch|exec|stop --force|start|list|delete`), and stopped at the end. A step that
//! fails is reported in the table with its error and the steps that need it are skipped, so a
//! partial daemon still gives partial numbers. The table goes to stdout and its own section of
//! `target/bench/results.md`. `--against lxd` is the side-by-side run with LXD (`bench_lxd.rs`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{self, BgDaemon};
use crate::util::{self, Result};

/// min / median / max of a set of samples, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            n,
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// Run `make(i)` for i in 0..n, timing each (wall clock, ms); stops at the first failure.
pub fn time_runs(n: usize, mut make: impl FnMut(usize) -> Command) -> Result<Stats> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        samples.push(time_one(&mut make(i))?);
    }
    Stats::of(&samples).ok_or_else(|| "no runs".into())
}

/// Run `cmd` once (stdin and stdout discarded), its wall time in ms; an error with the first
/// line of its stderr when it fails.
pub(crate) fn time_one(cmd: &mut Command) -> Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("run {}: {e}", util::show(cmd)))?;
    let el = t.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(format!(
            "`{}` failed ({}): {first}",
            util::show(cmd),
            out.status
        ));
    }
    Ok(util::ms(el))
}

/// Fields of /proc/PID/smaps_rollup (kB): Rss, Pss, Private_Clean, Private_Dirty, ...
pub fn smaps_rollup(pid: u32) -> Result<Vec<(String, u64)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("smaps_rollup of {pid}: {e}"))?;
    Ok(parse_kb_fields(&text))
}

/// Fields of /proc/PID/status that are in kB (VmRSS, RssAnon, RssFile, ...).
pub fn status_kb(pid: u32) -> Result<Vec<(String, u64)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("status of {pid}: {e}"))?;
    Ok(parse_kb_fields(&text))
}

/// `Name:   1234 kB` lines -> (Name, 1234).
pub fn parse_kb_fields(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut it = v.split_whitespace();
            let n = it.next()?.parse().ok()?;
            (it.next() == Some("kB")).then(|| (k.trim().to_owned(), n))
        })
        .collect()
}

pub fn field(fields: &[(String, u64)], name: &str) -> Option<u64> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

fn ppid(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `"pid": 1234` in a JSON body (instance state), without a JSON parser.
fn json_pid(body: &str) -> Option<u32> {
    let i = body.find("\"pid\"")?;
    let rest = body[i + 5..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&p| p > 0)
}

/// The result table.
#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<[String; 6]>,
}

impl Table {
    pub(crate) fn stats(&mut self, what: &str, r: &Result<Stats>, note: &str) {
        match r {
            Ok(s) => self.rows.push([
                what.into(),
                s.n.to_string(),
                format!("{:.1}", s.min),
                format!("**{:.1}**", s.median),
                format!("{:.1}", s.max),
                note.into(),
            ]),
            Err(e) => self.failed(what, e),
        }
    }
    fn value(&mut self, what: &str, value: String, note: &str) {
        self.rows.push([
            what.into(),
            "1".into(),
            String::new(),
            format!("**{value}**"),
            String::new(),
            note.into(),
        ]);
    }
    fn failed(&mut self, what: &str, e: &str) {
        let e = e.replace('|', "\\|").replace('\n', " ");
        self.rows.push([
            what.into(),
            "0".into(),
            String::new(),
            "failed".into(),
            String::new(),
            e,
        ]);
    }
    fn markdown(&self, header: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{header}\n");
        let _ = writeln!(s, "| what | n | min | median | max | notes |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4], r[5]
            );
        }
        s
    }
}

fn kb_to_mb(kb: u64) -> String {
    format!("{:.2} MB", kb as f64 / 1000.0)
}

fn memory_row(t: &mut Table, what: &str, pid: u32) {
    match (status_kb(pid), smaps_rollup(pid)) {
        (Ok(st), Ok(sm)) => {
            let rss = field(&st, "VmRSS").unwrap_or(0);
            let pss = field(&sm, "Pss").unwrap_or(0);
            let pd = field(&sm, "Private_Dirty").unwrap_or(0);
            let pc = field(&sm, "Private_Clean").unwrap_or(0);
            t.value(
                what,
                format!("Pss {}", kb_to_mb(pss)),
                &format!(
                    "VmRSS {}, Private_Dirty {}, Private_Clean {} (pid {pid})",
                    kb_to_mb(rss),
                    kb_to_mb(pd),
                    kb_to_mb(pc)
                ),
            );
        }
        (Err(e), _) | (_, Err(e)) => t.failed(what, &e),
    }
}

pub(crate) fn load_note() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "loadavg {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

struct Opts {
    runs: usize,
    bin: Option<PathBuf>,
    /// Containers running for the `list` at scale (LXD's bench uses 50).
    scale: usize,
    /// create/start/stop/delete cycles before the daemon's memory is read again.
    cycles: usize,
    /// `--only cycles`: the daemon start and the cycles alone (a quick churn figure).
    only_cycles: bool,
    /// `--only density`: `density` busybox containers running at once, alone.
    only_density: bool,
    /// Containers for `--only density`.
    density: usize,
    /// `--only criu`: stateful stop/start and live moves alone.
    only_criu: bool,
    /// `--only breakdown`: the per-step breakdown of a launch and an exec alone.
    only_breakdown: bool,
    /// `--only storage`: the storage drivers' rows alone (busybox and the Debian image).
    only_storage: bool,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        runs: 10,
        bin: None,
        scale: 50,
        cycles: 1000,
        only_cycles: false,
        only_density: false,
        density: 1000,
        only_criu: false,
        only_breakdown: false,
        only_storage: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                o.runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--runs N (N > 0)")?
            }
            "--bin" => o.bin = Some(PathBuf::from(it.next().ok_or("--bin PATH")?)),
            "--scale" => o.scale = it.next().and_then(|v| v.parse().ok()).ok_or("--scale N")?,
            "--cycles" => o.cycles = it.next().and_then(|v| v.parse().ok()).ok_or("--cycles N")?,
            // The issue's name for the churn alone: `--only cycles --cycles N`.
            "--churn" => {
                o.cycles = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--churn N (N > 0)")?;
                o.only_cycles = true;
            }
            "--density" => {
                o.density = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--density N (N > 0)")?
            }
            "--only" => match it.next().map(String::as_str) {
                Some("cycles") => o.only_cycles = true,
                Some("density") => o.only_density = true,
                Some("criu") => o.only_criu = true,
                Some("breakdown") => o.only_breakdown = true,
                Some("storage") => o.only_storage = true,
                _ => {
                    return Err(
                        "--only cycles|density|criu|breakdown|storage (the parts that run alone)"
                            .into(),
                    )
                }
            },
            other => {
                return Err(format!(
                    "unknown argument `{other}` (--runs N, --bin PATH, --scale N, --cycles N, --churn N, --density N, --only cycles|density|criu|breakdown|storage)"
                ))
            }
        }
    }
    Ok(o)
}

/// The bivy binary to measure: `--bin PATH`, else `target/dist/bivy` (built when absent).
pub(crate) fn bivy_bin(bin: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(b) = bin {
        return Ok(b);
    }
    let b = util::target_dir().join("dist/bivy");
    if b.is_file() {
        eprintln!(
            "xtask: using existing {} (run `cargo xtask dist` to rebuild)",
            util::rel(&b)
        );
        Ok(b)
    } else {
        crate::dist::build(&[])
    }
}

pub fn run(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--against") {
        return crate::bench_lxd::run(args);
    }
    let o = parse_opts(args)?;
    let bin = bivy_bin(o.bin)?;
    let image = crate::image::busybox()?;
    let out_dir = util::target_dir().join("bench");
    util::mkdirs(&out_dir)?;
    let mut t = Table::default();
    let before = load_note();

    // 1. static binary size
    match crate::elf::check_static(&bin) {
        Ok(f) => {
            let size = fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
            t.value(
                "binary size",
                format!("{size} B"),
                &format!("{}, {}", util::rel(&bin), f.kind()),
            );
        }
        Err(e) => t.failed("binary size (static check)", &e),
    }

    // 2. daemon start + idle memory
    let run_dir = out_dir.join(format!("run-{}", std::process::id()));
    let dir = run_dir.join("bivy");
    let mut d = match daemon::start(&bin, &dir, &run_dir.join("daemon.log")) {
        Ok(d) => d,
        Err(e) => {
            t.failed("daemon start", &e);
            return finish(&t, &out_dir, &before, None);
        }
    };
    t.value(
        "daemon start (spawn -> socket accepts)",
        format!("{:.1} ms", util::ms(d.ready_after)),
        "empty BIVY_DIR",
    );
    std::thread::sleep(Duration::from_secs(1));
    memory_row(&mut t, "daemon idle memory, 0 containers", d.pid);

    // A part that runs alone on this daemon: the busybox image, the part, then the instances
    // it leaves deleted.
    type Part<'a> = Box<dyn Fn(&mut BgDaemon, &mut Table) -> Result + 'a>;
    let alone: Option<(Part, Vec<String>)> = if o.only_density {
        let leftovers = (0..o.density).map(|i| format!("dn{i}")).collect();
        Some((Box::new(|d, t| density(d, t, o.density)), leftovers))
    } else if o.only_criu {
        let part = |d: &mut BgDaemon, t: &mut Table| {
            criu(d, t, o.runs).and_then(|()| live_move(d, t, o.runs))
        };
        Some((Box::new(part), Vec::new()))
    } else if o.only_breakdown {
        let part = |_: &mut BgDaemon, t: &mut Table| {
            crate::breakdown::run(&bin, &image, &run_dir, t, o.runs)
        };
        Some((Box::new(part), Vec::new()))
    } else if o.only_storage {
        Some((
            Box::new(|d: &mut BgDaemon, t: &mut Table| storage(d, t, o.runs)),
            Vec::new(),
        ))
    } else if o.only_cycles {
        Some((
            Box::new(|d, t| cycles(d, t, o.cycles)),
            vec!["cyc".to_string()],
        ))
    } else {
        None
    };
    if let Some((part, leftovers)) = alone {
        let img = image.to_string_lossy().into_owned();
        let r = must(&d, &["image", "import", &img, "--alias", "busybox"])
            .and_then(|()| part(&mut d, &mut t));
        if let Err(e) = r {
            eprintln!("xtask: bench stopped early: {e}");
        }
        for name in &leftovers {
            let _ = d.cli(&["delete", "--force", name]).output();
        }
        d.stop();
        return finish(&t, &out_dir, &before, Some(&run_dir));
    }

    let result = containers(&d, &mut t, &image, o.runs)
        .map(|()| {
            // Not fatal: without CRIU the row says why.
            if let Err(e) = criu(&d, &mut t, o.runs) {
                t.failed("CRIU stateful stop/start", &e);
            } else if let Err(e) = live_move(&d, &mut t, o.runs) {
                t.failed("live move between two daemons (CRIU)", &e);
            }
        })
        .and_then(|()| https(&d, &mut t, o.runs))
        .and_then(|()| storage(&d, &mut t, o.runs))
        .and_then(|()| scale(&d, &mut t, o.scale))
        .and_then(|()| cycles(&d, &mut t, o.cycles));
    if let Err(e) = result {
        eprintln!("xtask: bench stopped early: {e}");
    }
    cleanup(&d, o.runs);
    if let Err(e) = crate::breakdown::run(&bin, &image, &run_dir, &mut t, o.runs) {
        t.failed("per-step breakdown of a launch and an exec", &e);
    }
    if let Err(e) = network(&bin, &image, &run_dir, &mut t, o.runs, o.scale) {
        eprintln!("xtask: network bench stopped early: {e}");
    }
    finish(&t, &out_dir, &before, Some(&run_dir))
}

/// The IPv4 address `ct`'s eth0 has (global scope), if any, from its state (the daemon writes
/// compact JSON with the fields in a fixed order; xtask has no JSON parser).
fn eth0_ipv4(d: &BgDaemon, ct: &str) -> Option<String> {
    let body = d.get(&format!("/1.0/instances/{ct}/state")).ok()?;
    first_global_inet(&body, "eth0")
}

fn first_global_inet(body: &str, iface: &str) -> Option<String> {
    let start = body.find(&format!("\"{iface}\":{{\"addresses\":["))?;
    let rest = &body[start..];
    let addrs = &rest[..rest.find(']')?];
    addrs.split('}').find_map(|a| {
        if !a.contains("\"family\":\"inet\"") || !a.contains("\"scope\":\"global\"") {
            return None;
        }
        let v = &a[a.find("\"address\":\"")? + 11..];
        Some(v[..v.find('"')?].to_string())
    })
}

/// Launch `ct` from `image` on the bench's bridge; the time until eth0 has an IPv4 address.
fn launch_to_address(d: &BgDaemon, image: &str, ct: &str) -> Result<Duration> {
    let t0 = std::time::Instant::now();
    must(d, &["launch", image, ct, "--network", "bvbench0"])?;
    let deadline = t0 + Duration::from_secs(60);
    loop {
        if eth0_ipv4(d, ct).is_some() {
            return Ok(t0.elapsed());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{ct}: no IPv4 address on eth0 after 60 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Managed bridge figures, with a daemon of its own in a new network namespace: `launch` to an
/// address on eth0 (busybox's udhcpc; Debian's networkd), and the daemon's memory with `n`
/// leases served.
fn network(
    bin: &Path,
    image: &Path,
    run_dir: &Path,
    t: &mut Table,
    runs: usize,
    n: usize,
) -> Result {
    let d = match daemon::start_in_new_netns(
        bin,
        &run_dir.join("net/bivy"),
        &run_dir.join("net/daemon.log"),
    ) {
        Ok(d) => d,
        Err(e) => {
            t.failed("daemon in a network namespace", &e);
            return Err(e);
        }
    };
    let result = (|| -> Result {
        must(
            &d,
            &[
                "image",
                "import",
                &image.to_string_lossy(),
                "--alias",
                "busybox",
            ],
        )?;
        must(
            &d,
            &[
                "network",
                "create",
                "bvbench0",
                "ipv4.address=10.203.0.1/22",
            ],
        )?;
        memory_row(
            t,
            "daemon memory, one bridge with DHCP and DNS, 0 leases",
            d.pid,
        );
        let mut samples = Vec::new();
        for i in 0..runs {
            samples.push(launch_to_address(&d, "busybox", &format!("a{i}"))?);
        }
        let ms: Vec<f64> = samples.iter().map(|d| util::ms(*d)).collect();
        t.stats(
            "`bivy launch` to an IPv4 address on eth0 (busybox, udhcpc)",
            &Stats::of(&ms).ok_or_else(|| "no samples".to_string()),
            "daemon's own DHCP on a managed bridge",
        );
        if let Some(deb) = ["debian12.tar.zst", "debian12.tar.gz"]
            .iter()
            .map(|f| util::target_dir().join("test-images").join(f))
            .find(|p| p.is_file())
        {
            must(
                &d,
                &[
                    "image",
                    "import",
                    &deb.to_string_lossy(),
                    "--alias",
                    "debian",
                ],
            )?;
            let mut samples = Vec::new();
            for i in 0..3 {
                samples.push(launch_to_address(&d, "debian", &format!("deb{i}"))?);
            }
            let ms: Vec<f64> = samples.iter().map(|d| util::ms(*d)).collect();
            t.stats(
                "`bivy launch` to an IPv4 address on eth0 (Debian 12, systemd-networkd)",
                &Stats::of(&ms).ok_or_else(|| "no samples".to_string()),
                "3 runs",
            );
            for i in 0..3 {
                must(&d, &["delete", "--force", &format!("deb{i}")])?;
            }
        }
        for i in runs..n {
            must(
                &d,
                &[
                    "launch",
                    "busybox",
                    &format!("a{i}"),
                    "--network",
                    "bvbench0",
                ],
            )?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while (0..n.max(runs)).any(|i| eth0_ipv4(&d, &format!("a{i}")).is_none()) {
            if std::time::Instant::now() > deadline {
                return Err(format!("not all {n} containers got an address in 120 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        memory_row(
            t,
            &format!("daemon memory, {} containers with DHCP leases", n.max(runs)),
            d.pid,
        );
        for i in 0..n.max(runs) {
            must(&d, &["delete", "--force", &format!("a{i}")])?;
        }
        must(&d, &["network", "delete", "bvbench0"])
    })();
    if let Err(e) = &result {
        t.failed("network figures", e);
    }
    d.stop();
    result
}

/// The container steps; returns Err when a step that the rest needs failed (already in the table).
fn containers(d: &BgDaemon, t: &mut Table, image: &Path, runs: usize) -> Result {
    let img = image.to_string_lossy().into_owned();
    let r = time_runs(1, |_| {
        d.cli(&["image", "import", &img, "--alias", "busybox"])
    });
    t.stats("`bivy image import` busybox (1 MB)", &r, "");
    r?;

    let r = time_runs(runs, |i| d.cli(&["launch", "busybox", &format!("b{i}")]));
    t.stats("`bivy launch busybox bN` (image cached)", &r, "");
    r?;

    let r = time_runs(runs * 3, |_| d.cli(&["exec", "b0", "--", "true"]));
    t.stats("`bivy exec b0 -- true`", &r, "");

    let r = time_runs(runs, |_| d.cli(&["list"]));
    t.stats(&format!("`bivy list` with {runs} running"), &r, "");

    match d
        .get("/1.0/instances/b0/state")
        .ok()
        .as_deref()
        .and_then(json_pid)
    {
        Some(init) => {
            memory_row(t, "container payload (busybox init)", init);
            match ppid(init) {
                Some(mon) if mon > 1 => {
                    memory_row(t, "per-container monitor (parent of init)", mon)
                }
                _ => t.failed("per-container monitor", "no parent of the container init"),
            }
        }
        None => t.failed(
            "per-container memory",
            "no \"pid\" in GET /1.0/instances/b0/state",
        ),
    }
    memory_row(t, &format!("daemon memory, {runs} containers"), d.pid);

    let r = time_runs(runs, |i| d.cli(&["stop", "--force", &format!("b{i}")]));
    t.stats("`bivy stop --force bN`", &r, "");
    r?;

    let r = time_runs(runs, |i| d.cli(&["start", &format!("b{i}")]));
    t.stats("`bivy start bN` (stopped container)", &r, "");
    r?;

    let r = time_runs(runs, |i| d.cli(&["delete", "--force", &format!("b{i}")]));
    t.stats("`bivy delete --force bN` (running)", &r, "");
    r.map(|_| ())
}

/// Stateful stop and start (CRIU) of a busybox container running a counter, alternately;
/// needs CRIU in the daemon's environment (`$BIVY_CRIU`, `target/criu`, or PATH).
fn criu(d: &BgDaemon, t: &mut Table, runs: usize) -> Result {
    let r = launch_counter(d, "cs").and_then(|()| {
        let (mut stops, mut starts) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            stops.push(time_runs(1, |_| d.cli(&["stop", "cs", "--stateful"]))?.median);
            starts.push(time_runs(1, |_| d.cli(&["start", "cs"]))?.median);
        }
        Ok((stops, starts))
    });
    let _ = d.cli(&["delete", "--force", "cs"]).output();
    let (stops, starts) = r?;
    let no_runs = || "no runs".to_string();
    t.stats(
        "`bivy stop --stateful cs` (busybox + counter, CRIU dump)",
        &Stats::of(&stops).ok_or_else(no_runs),
        "",
    );
    t.stats(
        "`bivy start cs` from the saved state (CRIU restore)",
        &Stats::of(&starts).ok_or_else(no_runs),
        "pids and memory kept",
    );
    Ok(())
}

/// Launch busybox container `name` with `migration.stateful=true`, running a detached counter
/// (a process that checkpoints well: no sockets, no open files).
fn launch_counter(d: &BgDaemon, name: &str) -> Result {
    must(
        d,
        &["launch", "busybox", name, "-c", "migration.stateful=true"],
    )?;
    must(
        d,
        &[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.1; done' \
             </dev/null >/dev/null 2>&1 &",
        ],
    )
}

/// Live moves of a busybox container running a counter between `d` and a second daemon on
/// loopback, back and forth: the whole `bivy move`, and the downtime (from the start of the
/// source's dump until the target has restored it, as the source daemon logs it).
fn live_move(d: &BgDaemon, t: &mut Table, runs: usize) -> Result {
    let base = d.dir.parent().unwrap_or(&d.dir).join("live-b");
    let _ = fs::remove_dir_all(&base);
    util::mkdirs(&base)?;
    let b = daemon::start(&d.bin, &base.join("bivy"), &base.join("daemon.log"))?;
    let conf = base.join("conf");
    util::mkdirs(&conf)?;
    let cli = |args: &[&str]| {
        let mut c = d.cli(args);
        c.env("BIVY_CONF", &conf);
        c
    };
    let r = (|| -> Result<Vec<f64>> {
        for (x, name) in [(d, "la"), (&b, "lb")] {
            let addr = format!("127.0.0.1:{}", free_port()?);
            must(x, &["config", "set", "core.https_address", &addr])?;
            must(x, &["config", "set", "core.trust_password", "bench"])?;
            let add = [
                "remote",
                "add",
                name,
                &addr,
                "--accept-certificate",
                "--password",
                "bench",
            ];
            time_one(&mut cli(&add))?;
        }
        launch_counter(d, "lm")?;
        let mut moves = Vec::new();
        for i in 0..runs * 2 {
            let (from, to) = if i % 2 == 0 {
                ("la", "lb")
            } else {
                ("lb", "la")
            };
            moves.push(time_one(&mut cli(&[
                "move",
                &format!("{from}:lm"),
                &format!("{to}:lm"),
            ]))?);
        }
        Ok(moves)
    })();
    let _ = d.cli(&["delete", "--force", "lm"]).output();
    let _ = b.cli(&["delete", "--force", "lm"]).output();
    b.stop();
    let moves = r?;
    // "bivy: lm: live migration done, N ms after the dump began", in both daemons' logs.
    let mut downtime = Vec::new();
    for log in [&d.log, &b.log] {
        let text = fs::read_to_string(log).unwrap_or_default();
        for l in text.lines() {
            if let Some(rest) = l.split("lm: live migration done, ").nth(1) {
                if let Some(ms) = rest.split(" ms").next().and_then(|n| n.parse::<f64>().ok()) {
                    downtime.push(ms);
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&base);
    t.stats(
        "`bivy move a:lm b:lm` of a running busybox + counter (live, CRIU)",
        &Stats::of(&moves).ok_or_else(|| "no runs".to_string()),
        "two daemons on loopback, back and forth",
    );
    t.stats(
        "live move downtime: the source's dump until the target restored it",
        &Stats::of(&downtime).ok_or_else(|| "no downtime in the daemons' logs".to_string()),
        "as the source daemon logs it",
    );
    Ok(())
}

/// A port free on loopback now.
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// The HTTPS listener: a remote on loopback driven by bivy's CLI and by the real `lxc`, the TLS
/// handshake (curl's connect-to-handshake-done time), and the daemon's memory with 100 idle TLS
/// connections open.
fn https(d: &BgDaemon, t: &mut Table, runs: usize) -> Result {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    must(d, &["config", "set", "core.https_address", &addr])?;
    must(d, &["config", "set", "core.trust_password", "bench"])?;
    must(d, &["launch", "busybox", "h0"])?;
    let conf = d.dir.join("bench-remote-conf");
    let _ = fs::remove_dir_all(&conf);
    util::mkdirs(&conf)?;
    let bivy_remote = d
        .cli(&[
            "remote",
            "add",
            "h",
            &addr,
            "--accept-certificate",
            "--password",
            "bench",
        ])
        .env("BIVY_CONF", &conf)
        .output();
    match bivy_remote {
        Ok(o) if o.status.success() => {
            let cli = |args: &[&str]| {
                let mut c = d.cli(args);
                c.env("BIVY_CONF", &conf);
                c
            };
            let r = time_runs(runs * 3, |_| cli(&["exec", "h:h0", "--", "true"]));
            t.stats("`bivy exec h:h0 -- true` over HTTPS (loopback)", &r, "");
            let r = time_runs(runs * 3, |_| cli(&["list", "h:"]));
            t.stats("`bivy list h:` over HTTPS, 1 running", &r, "");
        }
        Ok(o) => t.failed(
            "bivy CLI over HTTPS",
            &format!(
                "bivy remote add: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => t.failed("bivy CLI over HTTPS", &e.to_string()),
    }
    if Command::new("lxc").arg("--version").output().is_ok() {
        let lconf = d.dir.join("bench-lxc-conf");
        let _ = fs::remove_dir_all(&lconf);
        util::mkdirs(&lconf)?;
        let lxc = |args: &[&str]| {
            let mut c = Command::new("lxc");
            c.args(args).env("LXD_CONF", &lconf).stdin(Stdio::null());
            c
        };
        let added = lxc(&[
            "remote",
            "add",
            "h",
            &addr,
            "--accept-certificate",
            "--password",
            "bench",
        ])
        .output();
        if added.as_ref().is_ok_and(|o| o.status.success()) {
            let r = time_runs(runs * 3, |_| lxc(&["exec", "h:h0", "--", "true"]));
            t.stats("`lxc exec h:h0 -- true` (lxc 5.0.2) over HTTPS", &r, "");
            let r = time_runs(runs * 3, |_| lxc(&["list", "h:"]));
            t.stats("`lxc list h:` (lxc 5.0.2) over HTTPS, 1 running", &r, "");
        } else {
            t.failed("lxc over HTTPS", "lxc remote add failed");
        }
    }
    // The handshake alone: curl's time from TCP connected to TLS done.
    let url = format!("https://{addr}/1.0");
    let mut samples = Vec::new();
    for _ in 0..runs * 3 {
        let out = Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{time_connect} %{time_appconnect}",
                &url,
            ])
            .output();
        let Ok(out) = out else { break };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [c, a] = v[..] {
            samples.push((a - c) * 1000.0);
        }
    }
    match Stats::of(&samples) {
        Some(st) => t.stats("TLS handshake (curl, TLS 1.3, ECDSA P-384)", &Ok(st), ""),
        None => t.failed("TLS handshake", "curl gave no timings"),
    }
    // 100 idle TLS connections (openssl s_client, stdin held open), then the daemon's memory.
    let mut clients = Vec::new();
    for _ in 0..100 {
        let c = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match c {
            Ok(c) => clients.push(c),
            Err(e) => {
                t.failed("100 idle HTTPS connections", &format!("openssl: {e}"));
                break;
            }
        }
    }
    if clients.len() == 100 {
        std::thread::sleep(Duration::from_secs(2));
        memory_row(t, "daemon memory, 100 idle HTTPS connections", d.pid);
    }
    for mut c in clients {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = d.cli(&["delete", "--force", "h0"]).output();
    let _ = d.cli(&["config", "unset", "core.https_address"]).output();
    let _ = fs::remove_dir_all(&conf);
    Ok(())
}

/// Bytes the daemon process has caused to be written to storage (`/proc/PID/io`).
fn write_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Run `bivy ARGS`, failing with its stderr.
pub(crate) fn must(d: &BgDaemon, args: &[&str]) -> Result {
    let out = d
        .cli(args)
        .output()
        .map_err(|e| format!("bivy {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "bivy {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Per storage driver (dir, and btrfs on a loop file when the host can): launch from a cached
/// image, bytes written per launch, snapshot, restore, copy and publish; then the Debian image's
/// first launch (which unpacks it into the pool) against a second one (a clone).
fn storage(d: &BgDaemon, t: &mut Table, runs: usize) -> Result {
    let mut pools = vec![("default", "dir")];
    let btrfs = fs::read_to_string("/proc/filesystems")
        .is_ok_and(|f| f.lines().any(|l| l.ends_with("btrfs")));
    if btrfs {
        match must(d, &["storage", "create", "benchbt", "btrfs", "size=4GiB"]) {
            Ok(()) => pools.push(("benchbt", "btrfs")),
            Err(e) => t.failed("btrfs pool on a loop file", &e),
        }
    } else {
        t.failed("btrfs pool", "the kernel has no btrfs");
    }
    let debian = util::target_dir().join("test-images/debian12.tar.zst");
    if debian.is_file() {
        let _ = must(
            d,
            &[
                "image",
                "import",
                &debian.to_string_lossy(),
                "--alias",
                "debian",
            ],
        );
    }
    for (pool, driver) in &pools {
        let p = |i: usize| format!("{driver}{i}");
        // The first launch unpacks the image into the pool; it is not in the medians.
        must(
            d,
            &["launch", "busybox", &format!("{driver}-first"), "-s", pool],
        )?;
        let w0 = write_bytes(d.pid);
        let r = time_runs(runs, |i| d.cli(&["launch", "busybox", &p(i), "-s", pool]));
        let w1 = write_bytes(d.pid);
        t.stats(
            &format!("{driver}: `bivy launch busybox` (image unpacked in the pool)"),
            &r,
            "",
        );
        r?;
        if let (Some(a), Some(b)) = (w0, w1) {
            t.value(
                &format!("{driver}: bytes written by the daemon per launch"),
                format!("{:.1} KiB", (b - a) as f64 / runs as f64 / 1024.0),
                "/proc/PID/io write_bytes",
            );
        }
        let base = p(0);
        let r = time_runs(runs, |i| d.cli(&["snapshot", &base, &format!("s{i}")]));
        t.stats(&format!("{driver}: `bivy snapshot` (running)"), &r, "");
        r?;
        let r = time_runs(runs, |_| d.cli(&["restore", &base, "s0"]));
        t.stats(
            &format!("{driver}: `bivy restore` (running: stop, restore, start)"),
            &r,
            "",
        );
        let r = time_runs(runs, |i| {
            d.cli(&["copy", &base, &format!("{driver}-cr{i}"), "--instance-only"])
        });
        t.stats(&format!("{driver}: `bivy copy` (running source)"), &r, "");
        let stopped = p(1);
        must(d, &["stop", "--force", &stopped])?;
        let r = time_runs(runs, |i| {
            d.cli(&["copy", &stopped, &format!("{driver}-cs{i}")])
        });
        t.stats(&format!("{driver}: `bivy copy` (stopped source)"), &r, "");
        let r = time_runs(1, |_| {
            d.cli(&[
                "publish",
                &format!("{base}/s0"),
                "--alias",
                &format!("pub-{driver}"),
            ])
        });
        t.stats(
            &format!("{driver}: `bivy publish` of a busybox snapshot"),
            &r,
            "",
        );
        let _ = must(d, &["image", "delete", &format!("pub-{driver}")]);
        let r = time_runs(runs, |i| d.cli(&["delete", &format!("{base}/s{i}")]));
        t.stats(&format!("{driver}: `bivy delete` of a snapshot"), &r, "");
        if debian.is_file() {
            for (what, name) in [
                ("first (unpacks into the pool)", "deb-a"),
                ("second (clone)", "deb-b"),
            ] {
                let r = time_runs(1, |_| {
                    d.cli(&["launch", "debian", &format!("{driver}-{name}"), "-s", pool])
                });
                t.stats(&format!("{driver}: Debian 12 launch, {what}"), &r, "");
            }
            // The issue's Debian figures (about 20,000 files): snapshot, restore and copy.
            let deb = format!("{driver}-deb-b");
            let n = runs.min(3);
            let r = time_runs(n, |i| d.cli(&["snapshot", &deb, &format!("ds{i}")]));
            t.stats(
                &format!("{driver}: Debian 12 `bivy snapshot` (running)"),
                &r,
                "",
            );
            let r = time_runs(n, |_| d.cli(&["restore", &deb, "ds0"]));
            t.stats(
                &format!("{driver}: Debian 12 `bivy restore` (running: stop, restore, start)"),
                &r,
                "",
            );
            let r = time_runs(n, |i| {
                d.cli(&["copy", &deb, &format!("{driver}-dc{i}"), "--instance-only"])
            });
            t.stats(
                &format!("{driver}: Debian 12 `bivy copy` (running source)"),
                &r,
                "",
            );
            for i in 0..n {
                let _ = must(d, &["delete", "--force", &format!("{driver}-dc{i}")]);
            }
            let r = time_runs(1, |_| d.cli(&["stop", &deb]));
            t.stats(&format!("{driver}: Debian 12 clean stop"), &r, "");
            let r = time_runs(1, |_| {
                d.cli(&[
                    "publish",
                    &format!("{driver}-deb-b"),
                    "--alias",
                    &format!("pubdeb-{driver}"),
                ])
            });
            t.stats(
                &format!("{driver}: `bivy publish` Debian 12 (gzip)"),
                &r,
                "",
            );
            let _ = must(d, &["image", "delete", &format!("pubdeb-{driver}")]);
            for name in ["deb-a", "deb-b"] {
                let _ = must(d, &["delete", "--force", &format!("{driver}-{name}")]);
            }
        }
        let mut names = vec![format!("{driver}-first")];
        for i in 0..runs {
            names.extend([p(i), format!("{driver}-cr{i}"), format!("{driver}-cs{i}")]);
        }
        for n in names {
            let _ = must(d, &["delete", "--force", &n]);
        }
    }
    if pools.len() > 1 {
        if let Err(e) = must(d, &["storage", "delete", "benchbt"]) {
            t.failed("deleting the btrfs pool", &e);
        }
    }
    Ok(())
}

/// `list` with `n` running containers (bivy's CLI and, when installed, the real `lxc`).
fn scale(d: &BgDaemon, t: &mut Table, n: usize) -> Result {
    if n == 0 {
        return Ok(());
    }
    let r = time_runs(n, |i| d.cli(&["launch", "busybox", &format!("s{i}")]));
    t.stats(&format!("`bivy launch` x{n}, sequential"), &r, "");
    r?;
    let r = time_runs(10, |_| d.cli(&["list"]));
    t.stats(&format!("`bivy list` with {n} running"), &r, "");
    if Command::new("lxc").arg("--version").output().is_ok() {
        let conf = d.dir.join("lxc-conf");
        let _ = fs::create_dir_all(&conf);
        let r = time_runs(10, |_| {
            let mut c = Command::new("lxc");
            c.arg("list")
                .env("LXD_SOCKET", daemon::socket(&d.dir))
                .env("LXD_CONF", &conf);
            c
        });
        t.stats(
            &format!("`lxc list` (lxc 5.0.2 against bivy) with {n} running"),
            &r,
            "",
        );
    }
    memory_row(t, &format!("daemon memory, {n} containers"), d.pid);
    let r = time_runs(n, |i| d.cli(&["delete", "--force", &format!("s{i}")]));
    t.stats(&format!("`bivy delete --force` x{n}"), &r, "");
    r.map(|_| ())
}

/// A `/proc/meminfo` field in kB.
fn meminfo_kb(name: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    field(&parse_kb_fields(&text), name).unwrap_or(0)
}

/// The kernel's own memory: slab, page tables, kernel stacks (kB).
fn kernel_kb() -> u64 {
    ["Slab", "PageTables", "KernelStack"]
        .iter()
        .map(|f| meminfo_kb(f))
        .sum()
}

/// Restart the daemon on its directory: a row with the time from the spawn until its socket
/// accepts, and the first `bivy list` after that (the daemon's recovery and adoption of the
/// running containers are done by then).
fn cold_start(d: &mut BgDaemon, t: &mut Table, what: &str) -> Result {
    d.restart()?;
    let list = time_one(&mut d.cli(&["list", "--format", "csv"]))?;
    t.value(
        what,
        format!("{:.1} ms", util::ms(d.ready_after)),
        &format!("spawn -> socket accepts; the first `bivy list` after it {list:.1} ms"),
    );
    Ok(())
}

/// Density: `n` busybox containers running at once (launched one after another), listed, an
/// exec in each, then stopped and deleted; the memory each takes on the host: its monitor's
/// and its init's Pss (summed over all), and the kernel's share (the growth of its slab, page
/// tables and kernel stacks: namespaces, cgroups, mounts, sockets, tasks).
fn density(d: &mut BgDaemon, t: &mut Table, n: usize) -> Result {
    let avail0 = meminfo_kb("MemAvailable");
    let kernel0 = kernel_kb();
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        samples.push(time_one(&mut d.cli(&[
            "launch",
            "busybox",
            &format!("dn{i}"),
        ]))?);
    }
    t.stats(
        &format!("`bivy launch` x{n}, sequential"),
        &Stats::of(&samples).ok_or("no runs".into()),
        "",
    );
    // Flat as the store grows: the first tenth beside the last.
    let tenth = (n / 10).max(1);
    for (part, s) in [
        ("first", &samples[..tenth]),
        ("last", &samples[n - tenth..]),
    ] {
        t.stats(
            &format!("  the {part} {tenth} of them"),
            &Stats::of(s).ok_or("no runs".into()),
            "",
        );
    }
    t.value(
        &format!("{n} containers running after"),
        format!("{:.1} s", started.elapsed().as_secs_f64()),
        "launches one after another",
    );
    std::thread::sleep(Duration::from_secs(2));
    // The first listing opens what later ones keep (each container's cgroup files, its
    // namespace's id): shown on its own, the median is of the ones after it.
    let first = time_one(&mut d.cli(&["list"]))?;
    let r = time_runs(10, |_| d.cli(&["list"]));
    t.stats(
        &format!("`bivy list` with {n} running"),
        &r,
        &format!("the first one {first:.1} ms"),
    );
    let r = time_runs(n, |i| d.cli(&["exec", &format!("dn{i}"), "--", "true"]));
    t.stats(&format!("`bivy exec dnI -- true` in each of {n}"), &r, "");
    r?;
    let (mut mon_pss, mut init_pss, mut seen) = (0u64, 0u64, 0usize);
    for i in 0..n {
        let pid = d
            .get(&format!("/1.0/instances/dn{i}/state"))
            .ok()
            .as_deref()
            .and_then(json_pid);
        let Some(init) = pid else { continue };
        let pss = |p: u32| smaps_rollup(p).ok().and_then(|f| field(&f, "Pss"));
        if let (Some(ip), Some(mp)) = (pss(init), ppid(init).and_then(pss)) {
            init_pss += ip;
            mon_pss += mp;
            seen += 1;
        }
    }
    let avail1 = meminfo_kb("MemAvailable");
    let kernel1 = kernel_kb();
    memory_row(t, &format!("daemon memory, {n} containers"), d.pid);
    let per = |kb: u64| format!("{:.0} kB", kb as f64 / seen.max(1) as f64);
    t.value(
        "per container: monitor Pss",
        per(mon_pss),
        &format!("mean over {seen} containers"),
    );
    t.value("per container: init (busybox) Pss", per(init_pss), "");
    t.value(
        "per container: the kernel's share",
        per(kernel1.saturating_sub(kernel0)),
        "growth of Slab + PageTables + KernelStack in /proc/meminfo (namespaces, cgroups, mounts, page tables, task structs)",
    );
    t.value(
        "host memory available before / after",
        format!("{} / {} MB", avail0 / 1000, avail1 / 1000),
        "MemAvailable (other processes of the machine move it too)",
    );
    fds_threads_row(t, &format!("daemon fds and threads, {n} containers"), d.pid);
    cold_start(d, t, &format!("daemon cold start with {n} running"))?;
    let r = time_runs(n, |i| d.cli(&["stop", "--force", &format!("dn{i}")]));
    t.stats(&format!("`bivy stop --force` x{n}"), &r, "");
    r?;
    cold_start(
        d,
        t,
        &format!("daemon cold start with {n} defined, stopped"),
    )?;
    // What a change costs with the store full: each one writes the state database.
    let r = time_runs(10, |i| {
        d.cli(&["config", "set", "dn0", "user.bench", &i.to_string()])
    });
    t.stats(&format!("`bivy config set` with {n} defined"), &r, "");
    let r = time_runs(10, |i| d.cli(&["launch", "busybox", &format!("dx{i}")]));
    t.stats(&format!("`bivy launch` with {n} defined"), &r, "");
    for i in 0..10 {
        let _ = d.cli(&["delete", "--force", &format!("dx{i}")]).output();
    }
    r?;
    let r = time_runs(n, |i| d.cli(&["delete", &format!("dn{i}")]));
    t.stats(&format!("`bivy delete` x{n}"), &r, "");
    r.map(|_| ())
}

/// Open fds and threads of `pid` (`/proc/PID/fd`, `Threads:` of `/proc/PID/status`).
fn fds_threads(pid: u32) -> Result<(usize, u64)> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("fds of {pid}: {e}"))?
        .count();
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("status of {pid}: {e}"))?;
    let threads = text
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Threads: in the status of {pid}"))?;
    Ok((fds, threads))
}

fn fds_threads_row(t: &mut Table, what: &str, pid: u32) {
    match fds_threads(pid) {
        Ok((fds, threads)) => t.value(
            what,
            format!("{fds} fds, {threads} threads"),
            &format!("pid {pid}"),
        ),
        Err(e) => t.failed(what, &e),
    }
}

/// `n` create/start/stop/delete cycles, each phase timed (the CLI's run included); the
/// daemon's memory, fds and threads before and after (they must stay flat), and sampled every
/// 100 cycles into `churn.csv` beside the results (cycle, Pss kB, VmRSS kB, anonymous kB, fds,
/// threads), with the samples at 1,000 and at the end compared in the table. The anonymous
/// memory is the daemon's own (heap, stacks); the rest of its Pss is the binary's code paged in.
fn cycles(d: &BgDaemon, t: &mut Table, n: usize) -> Result {
    if n == 0 {
        return Ok(());
    }
    memory_row(t, "daemon memory before the cycles", d.pid);
    fds_threads_row(t, "daemon fds and threads before the cycles", d.pid);
    const PHASES: [(&str, &[&str]); 4] = [
        ("create", &["init", "busybox", "cyc"]),
        ("start", &["start", "cyc"]),
        ("stop --force", &["stop", "--force", "cyc"]),
        ("delete", &["delete", "cyc"]),
    ];
    let mut samples: [Vec<f64>; 4] = Default::default();
    let mut per_cycle = Vec::with_capacity(n);
    let mut series = vec![churn_sample(d.pid, 0)];
    let started = Instant::now();
    for i in 0..n {
        if i > 0 && i % 100 == 0 {
            series.push(churn_sample(d.pid, i));
        }
        let c0 = Instant::now();
        for (k, (_, args)) in PHASES.iter().enumerate() {
            let t0 = Instant::now();
            let out = d
                .cli(args)
                .output()
                .map_err(|e| format!("bivy {args:?}: {e}"))?;
            samples[k].push(util::ms(t0.elapsed()));
            if !out.status.success() {
                let e = format!(
                    "cycle {i}: bivy {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                t.failed("create/start/stop/delete cycles", &e);
                return Err(e);
            }
        }
        per_cycle.push(util::ms(c0.elapsed()));
    }
    let total = started.elapsed();
    t.value(
        &format!("{n} create/start/stop/delete cycles"),
        format!("{:.1} s", total.as_secs_f64()),
        &format!("{:.1} ms per cycle", util::ms(total) / n as f64),
    );
    let no_runs = || "no runs".to_string();
    t.stats("one cycle", &Stats::of(&per_cycle).ok_or_else(no_runs), "");
    for (k, (phase, args)) in PHASES.iter().enumerate() {
        t.stats(
            &format!("cycle phase: `bivy {}`", args.join(" ")),
            &Stats::of(&samples[k]).ok_or_else(no_runs),
            phase,
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    series.push(churn_sample(d.pid, n));
    let csv: String = std::iter::once("cycle,pss_kb,rss_kb,anon_kb,fds,threads\n".to_string())
        .chain(series.iter().map(|s| {
            format!(
                "{},{},{},{},{},{}\n",
                s.cycle, s.pss_kb, s.rss_kb, s.anon_kb, s.fds, s.threads
            )
        }))
        .collect();
    let path = util::target_dir().join("bench/churn.csv");
    if let Some(dir) = path.parent() {
        util::mkdirs(dir)?;
    }
    fs::write(&path, csv).map_err(|e| format!("{}: {e}", path.display()))?;
    if let (Some(at1k), Some(end)) = (series.iter().find(|s| s.cycle == 1000), series.last()) {
        if end.cycle > 1000 && at1k.pss_kb > 0 {
            let pct = (end.pss_kb as f64 - at1k.pss_kb as f64) * 100.0 / at1k.pss_kb as f64;
            t.value(
                &format!("daemon Pss after {} cycles against after 1000", end.cycle),
                format!("{pct:+.1}%"),
                &format!(
                    "{} -> {} (anonymous {} -> {}); fds {} -> {}, threads {} -> {}; every 100 cycles in {}",
                    kb_to_mb(at1k.pss_kb),
                    kb_to_mb(end.pss_kb),
                    kb_to_mb(at1k.anon_kb),
                    kb_to_mb(end.anon_kb),
                    at1k.fds,
                    end.fds,
                    at1k.threads,
                    end.threads,
                    util::rel(&path)
                ),
            );
        }
    }
    memory_row(t, &format!("daemon memory after {n} cycles"), d.pid);
    fds_threads_row(
        t,
        &format!("daemon fds and threads after {n} cycles"),
        d.pid,
    );
    Ok(())
}

/// The daemon's memory, fds and threads after `cycle` churn cycles.
struct ChurnSample {
    cycle: usize,
    pss_kb: u64,
    rss_kb: u64,
    anon_kb: u64,
    fds: usize,
    threads: u64,
}

fn churn_sample(pid: u32, cycle: usize) -> ChurnSample {
    let rollup = smaps_rollup(pid).unwrap_or_default();
    let pss_kb = field(&rollup, "Pss").unwrap_or(0);
    let anon_kb = field(&rollup, "Anonymous").unwrap_or(0);
    let rss_kb = status_kb(pid)
        .ok()
        .and_then(|f| field(&f, "VmRSS"))
        .unwrap_or(0);
    let (fds, threads) = fds_threads(pid).unwrap_or((0, 0));
    ChurnSample {
        cycle,
        pss_kb,
        rss_kb,
        anon_kb,
        fds,
        threads,
    }
}

/// Best effort: remove what the bench created, then stop the daemon.
fn cleanup(d: &BgDaemon, runs: usize) {
    for i in 0..runs {
        let _ = d
            .cli(&["delete", "--force", &format!("b{i}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    d.stop();
}

/// The current time as `2026-12-03 15:14 UTC` (from `date`).
pub(crate) fn utc_now() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn finish(t: &Table, out_dir: &Path, before: &str, run_dir: Option<&Path>) -> Result {
    let header = format!(
        "{BIVY_SECTION}{}; {before} before, {} after; times in ms)",
        utc_now(),
        load_note()
    );
    let md = t.markdown(&header);
    print!("{md}");
    write_section(out_dir, BIVY_SECTION, &md)?;
    if let Some(run_dir) = run_dir {
        remove_run_dir(run_dir);
    }
    Ok(())
}

/// How the section of `cargo xtask bench` starts in `results.md`.
const BIVY_SECTION: &str = "## bivy bench (";

/// Put `section` (a markdown `## ` section starting with `prefix`) into
/// `out_dir/results.md` in place of the previous one, keeping the other sections (`bench` and
/// `bench --against lxd` each write their own).
pub(crate) fn write_section(out_dir: &Path, prefix: &str, section: &str) -> Result {
    let path = out_dir.join("results.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    util::write_atomic(&path, replace_section(&old, prefix, section))?;
    eprintln!("xtask: wrote {}", util::rel(&path));
    Ok(())
}

/// `doc` with the `## ` section whose heading starts with `prefix` replaced by `section` (or
/// `section` appended when there is none).
pub(crate) fn replace_section(doc: &str, prefix: &str, section: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut skipping = false;
    let mut placed = false;
    let section = section.trim_end();
    for line in doc.lines() {
        if line.starts_with("## ") {
            skipping = line.starts_with(prefix);
            if skipping && !placed {
                kept.extend([section, ""]);
                placed = true;
            }
        }
        if !skipping {
            kept.push(line);
        }
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    if !placed {
        if !kept.is_empty() {
            kept.push("");
        }
        kept.push(section);
    }
    let mut out = kept.join("\n");
    out.push('\n');
    out
}

/// Remove a run's directory, unless something is still mounted below it (a container that did
/// not stop).
pub(crate) fn remove_run_dir(run_dir: &Path) {
    let still = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m).starts_with(run_dir));
    if still {
        eprintln!("xtask: leaving {} (still mounted below)", run_dir.display());
    } else {
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(run_dir)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_inet_is_found_in_a_state() {
        let body = r#"{"metadata":{"network":{"eth0":{"addresses":[{"family":"inet6","address":"fe80::1","netmask":"64","scope":"link"},{"family":"inet","address":"10.203.0.7","netmask":"22","scope":"global"}],"counters":{}},"lo":{"addresses":[{"family":"inet","address":"127.0.0.1","netmask":"8","scope":"local"}]}}}}"#;
        assert_eq!(
            first_global_inet(body, "eth0").as_deref(),
            Some("10.203.0.7")
        );
        assert_eq!(first_global_inet(body, "lo"), None);
        assert_eq!(first_global_inet(body, "eth1"), None);
    }

    #[test]
    fn stats_median() {
        assert_eq!(
            Stats::of(&[3.0, 1.0, 2.0]),
            Some(Stats {
                n: 3,
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(
            Stats::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn kb_fields_of_self() {
        let st = status_kb(std::process::id()).expect("status");
        assert!(field(&st, "VmRSS").is_some_and(|v| v > 0));
        let sm = smaps_rollup(std::process::id()).expect("smaps_rollup");
        assert!(field(&sm, "Pss").is_some_and(|v| v > 0));
        assert!(field(&sm, "Private_Dirty").is_some());
    }

    #[test]
    fn pid_from_json() {
        assert_eq!(
            json_pid(r#"{"metadata":{"status":"Running","pid": 4242,"x":1}}"#),
            Some(4242)
        );
        assert_eq!(json_pid(r#"{"pid":0}"#), None);
        assert_eq!(json_pid("{}"), None);
    }

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let a = "## bivy bench (1)\n\n| a |\n";
        let b = "## bivy vs LXD (2)\n\n| b |\n";
        // Into an empty file.
        assert_eq!(replace_section("", "## bivy bench (", a), a);
        // Appended after another section, blank line between.
        let both = replace_section(a, "## bivy vs LXD (", b);
        assert_eq!(both, format!("{a}\n{b}"));
        // Replaced in place, the other kept.
        let a2 = "## bivy bench (3)\n\n| a2 |\n";
        assert_eq!(
            replace_section(&both, "## bivy bench (", a2),
            format!("{a2}\n{b}")
        );
        let b2 = "## bivy vs LXD (4)\n\n| b2 |\n";
        assert_eq!(
            replace_section(&both, "## bivy vs LXD (", b2),
            format!("{a}\n{b2}")
        );
    }

    #[test]
    fn time_runs_counts_and_fails() {
        let s = time_runs(3, |_| Command::new("true")).expect("true runs");
        assert_eq!(s.n, 3);
        let e = time_runs(2, |_| Command::new("false")).expect_err("false fails");
        assert!(e.contains("failed"), "{e}");
    }
}
