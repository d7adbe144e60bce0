//! `cargo xtask fuzz [--seconds N] [--stable] [--no-build] [TARGET...]`: run the fuzz targets of
//! `tests/fuzz` (all of them, or the ones named), each for N seconds (default 60), one at a time.
//!
//! With libFuzzer: a nightly toolchain (found with `rustup toolchain list`, else installed with
//! `rustup toolchain install nightly --profile minimal`) and cargo-fuzz (else
//! `cargo install cargo-fuzz --locked`). The targets are built once (`cargo fuzz build -O -a`:
//! optimized, with debug assertions and overflow checks, AddressSanitizer) into
//! `target/fuzz/`, then each binary runs with a scratch corpus `target/fuzz-corpus/TARGET` (new
//! inputs go there; the seeds of `tests/fuzz/corpus/TARGET` are read too, never written), its
//! `$TMPDIR` in a fresh `target/fuzz-tmp/TARGET` (removed after) and its crashes written to
//! `target/fuzz-artifacts/TARGET/`. The whole log of each run is kept in
//! `target/fuzz-logs/TARGET.log`.
//!
//! Without nightly or cargo-fuzz (or with `--stable`): the same entry points run as the stable
//! mutation tests (`cargo test --lib fuzz_TARGET_deterministic` with `BIVY_FUZZ_SECONDS=N`),
//! which save a failing input in `target/fuzz-artifacts/TARGET/stable-crash-*`; this is said
//! loudly, as they are no coverage-guided fuzzing.
//!
//! Either way a summary table gives each target's executions (and, with libFuzzer, the coverage:
//! `cov` edges and `ft` features, the corpus size) and the task fails naming the reproducer of
//! every crash.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::util::{self, Result};

const FUZZ_DIR: &str = "tests/fuzz";

#[derive(Debug, PartialEq)]
struct Opts {
    seconds: u64,
    stable: bool,
    build: bool,
    targets: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        seconds: 60,
        stable: false,
        build: true,
        targets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a number")?;
                o.seconds = v
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("--seconds: {v:?} is not a number of seconds"))?;
            }
            "--stable" => o.stable = true,
            "--no-build" => o.build = false,
            s if s.starts_with('-') => {
                return Err(format!(
                    "unknown option {s} (usage: cargo xtask fuzz [--seconds N] [--stable] [--no-build] [TARGET...])"
                ))
            }
            t => o.targets.push(t.to_string()),
        }
    }
    Ok(o)
}

/// The `[[bin]]` names of the fuzz package's Cargo.toml, in order.
fn targets_of(toml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
            continue;
        }
        if in_bin {
            if let Some(v) = l.strip_prefix("name") {
                if let Some(v) = v.trim_start().strip_prefix('=') {
                    out.push(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    out
}

/// The first nightly toolchain of `rustup toolchain list`'s output.
fn nightly_in(list: &str) -> Option<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|t| *t == "nightly" || t.starts_with("nightly-"))
        .map(str::to_string)
}

/// What libFuzzer said about a run.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    execs: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<String>,
    rss_mb: Option<u64>,
}

/// The value after `key` in a libFuzzer status line (`cov: 123`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()
}

impl Stats {
    /// Take what a line of libFuzzer's output tells: status lines (`#N  KIND cov: C ft: F
    /// corp: U/S ... exec/s: E rss: RMb`) and the final stats (`stat::name: value`).
    fn line(&mut self, line: &str) {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix('#') {
            let n = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            if n.is_some() && field(l, "cov:").is_some() {
                self.execs = self.execs.max(n);
                let num = |k: &str| field(l, k).and_then(|v| v.parse().ok());
                self.cov = num("cov:").or(self.cov);
                self.ft = num("ft:").or(self.ft);
                self.exec_per_sec = num("exec/s:").or(self.exec_per_sec);
                if let Some(c) = field(l, "corp:") {
                    self.corpus = Some(c.to_string());
                }
                if let Some(r) = field(l, "rss:").and_then(|r| r.strip_suffix("Mb")) {
                    self.rss_mb = r.parse().ok().or(self.rss_mb);
                }
            }
        } else if let Some((k, v)) = l.strip_prefix("stat::").and_then(|s| s.split_once(':')) {
            let v: Option<u64> = v.trim().parse().ok();
            match k {
                "number_of_executed_units" => self.execs = v.or(self.execs),
                "average_exec_per_sec" => self.exec_per_sec = v.or(self.exec_per_sec),
                "peak_rss_mb" => self.rss_mb = v.or(self.rss_mb),
                _ => {}
            }
        }
    }
}

/// One row of the summary.
struct Row {
    target: String,
    ok: bool,
    seconds: f64,
    stats: Stats,
    /// Reproducers of a failure, or why it failed.
    notes: Vec<String>,
}

fn table(rows: &[Row], engine: &str) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut s = format!(
        "\n==== fuzz summary ({engine}) ====\n{:<16} {:<6} {:>7} {:>12} {:>8} {:>7} {:>8} {:>14} {:>6}\n",
        "target", "result", "seconds", "executions", "exec/s", "cov", "ft", "corpus", "rss MB"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<16} {:<6} {:>7.0} {:>12} {:>8} {:>7} {:>8} {:>14} {:>6}\n",
            r.target,
            if r.ok { "ok" } else { "FAIL" },
            r.seconds,
            opt(r.stats.execs),
            opt(r.stats.exec_per_sec),
            opt(r.stats.cov),
            opt(r.stats.ft),
            r.stats.corpus.as_deref().unwrap_or("-"),
            opt(r.stats.rss_mb),
        ));
    }
    for r in rows.iter().filter(|r| !r.notes.is_empty()) {
        for n in &r.notes {
            s.push_str(&format!("{}: {n}\n", r.target));
        }
    }
    s
}

pub fn run(args: &[String]) -> Result {
    let o = parse_args(args)?;
    let root = util::root();
    let toml_path = root.join(FUZZ_DIR).join("Cargo.toml");
    let toml =
        std::fs::read_to_string(&toml_path).map_err(|e| format!("{}: {e}", toml_path.display()))?;
    let all = targets_of(&toml);
    for t in &o.targets {
        if !all.contains(t) {
            return Err(format!("no fuzz target {t:?} (targets: {})", all.join(" ")));
        }
    }
    let targets = if o.targets.is_empty() {
        all
    } else {
        o.targets.clone()
    };
    let engine = if o.stable {
        Err("--stable was given".to_string())
    } else {
        libfuzzer(o.build)
    };
    let rows = match engine {
        Ok(bins) => targets
            .iter()
            .map(|t| run_libfuzzer(&bins, t, o.seconds))
            .collect::<Result<Vec<_>>>()?,
        Err(why) => {
            eprintln!(
                "xtask fuzz: WARNING: no libFuzzer ({why}): running the stable mutation tests \
                 instead (random mutations of the seeds, NOT coverage-guided fuzzing)"
            );
            run_stable(&targets, o.seconds)?
        }
    };
    let engine = if rows.iter().any(|r| r.stats.cov.is_some()) {
        "libFuzzer".to_string()
    } else {
        "stable mutation tests, no coverage guidance".to_string()
    };
    println!("{}", table(&rows, &engine));
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.target.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzz target(s) failed: {} (reproducers above, in target/fuzz-artifacts/)",
            failed.join(" ")
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// libFuzzer

/// `rustup run TOOLCHAIN ...`, without the variables of the `cargo xtask` that started us (they
/// name the stable toolchain's cargo and rustc).
fn rustup_run(toolchain: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", toolchain]).current_dir(util::root());
    for v in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        c.env_remove(v);
    }
    c
}

/// The nightly toolchain, installed with rustup if there is none.
fn nightly() -> Result<String> {
    if !util::have("rustup") {
        return Err("rustup is not installed".into());
    }
    let list = |step| util::output(step, Command::new("rustup").args(["toolchain", "list"]));
    if let Some(t) = nightly_in(&list("rustup toolchain list")?) {
        return Ok(t);
    }
    eprintln!(
        "xtask fuzz: no nightly toolchain: rustup toolchain install nightly --profile minimal"
    );
    util::run(
        "install nightly",
        Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
    )?;
    nightly_in(&list("rustup toolchain list")?)
        .ok_or_else(|| "rustup installed no nightly toolchain".to_string())
}

/// Find (or install) nightly and cargo-fuzz, build the targets; the binaries' directory.
fn libfuzzer(build: bool) -> Result<PathBuf> {
    let toolchain = nightly()?;
    let fuzz_ok = |tc: &str| {
        rustup_run(tc)
            .args(["cargo", "fuzz", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !fuzz_ok(&toolchain) {
        eprintln!("xtask fuzz: cargo-fuzz is missing: cargo install cargo-fuzz --locked");
        util::run(
            "install cargo-fuzz",
            util::cargo().args(["install", "cargo-fuzz", "--locked"]),
        )?;
        if !fuzz_ok(&toolchain) {
            return Err("cargo fuzz does not run after installing cargo-fuzz".into());
        }
    }
    let host = util::output("rustc -vV", rustup_run(&toolchain).args(["rustc", "-vV"]))?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or("rustc -vV names no host")?;
    let target_dir = util::target_dir().join("fuzz");
    if build {
        let mut cmd = rustup_run(&toolchain);
        cmd.args(["cargo", "fuzz", "build", "-O", "-a", "--fuzz-dir", FUZZ_DIR])
            .arg("--target-dir")
            .arg(&target_dir);
        eprintln!("xtask: {}", util::show(&cmd));
        util::timed("fuzz build", || util::run("cargo fuzz build", &mut cmd))?;
    }
    Ok(target_dir.join(host).join("release"))
}

/// The files of `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether a libFuzzer output line is only progress (`#N NEW ...`, `#N REDUCE ...`).
fn is_progress(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with('#')
        && ["NEW", "REDUCE", "RELOAD"]
            .iter()
            .any(|k| l.split_whitespace().nth(1) == Some(k))
}

fn run_libfuzzer(bins: &Path, target: &str, seconds: u64) -> Result<Row> {
    let bin = bins.join(target);
    if !bin.is_file() {
        return Err(format!(
            "{} is not built (run without --no-build)",
            util::rel(&bin)
        ));
    }
    let t = util::target_dir();
    let corpus = t.join("fuzz-corpus").join(target);
    let seeds = util::root().join(FUZZ_DIR).join("corpus").join(target);
    let artifacts = t.join("fuzz-artifacts").join(target);
    let tmp = t.join("fuzz-tmp").join(target);
    let logs = t.join("fuzz-logs");
    let _ = std::fs::remove_dir_all(&tmp);
    for d in [&corpus, &artifacts, &tmp, &logs] {
        util::mkdirs(d)?;
    }
    let before = files_in(&artifacts);
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=30", "-rss_limit_mb=2048"])
        .arg(&corpus)
        .arg(&seeds)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("xtask fuzz: {target} for {seconds}s: {}", util::show(&cmd));
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let mut stats = Stats::default();
    let mut log = String::new();
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let err = child.stderr.take().expect("piped");
    for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
        stats.line(&line);
        log.push_str(&line);
        log.push('\n');
        let l = line.trim_start();
        if l.starts_with('#') && !is_progress(l) {
            eprintln!("  {target}: {l}");
        } else if !is_progress(l) {
            tail.push_back(line);
            if tail.len() > 200 {
                tail.pop_front();
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("wait for {}: {e}", bin.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let log_path = logs.join(format!("{target}.log"));
    let _ = std::fs::write(&log_path, &log);
    let _ = std::fs::remove_dir_all(&tmp);
    let mut notes = Vec::new();
    if !status.success() {
        for l in &tail {
            eprintln!("  {target}| {l}");
        }
        let new: Vec<PathBuf> = files_in(&artifacts)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if new.is_empty() {
            notes.push(format!(
                "libFuzzer failed ({status}) without a reproducer; log: {}",
                util::rel(&log_path)
            ));
        }
        for p in new {
            notes.push(format!(
                "reproducer {} (replay: BIVY_FUZZ_INPUT={} cargo test --lib fuzz_{target}_deterministic); log: {}",
                util::rel(&p),
                p.display(),
                util::rel(&log_path)
            ));
        }
    }
    Ok(Row {
        target: target.to_string(),
        ok: status.success(),
        seconds,
        stats,
        notes,
    })
}

// ---------------------------------------------------------------------------------------------
// The stable fallback

/// `fuzz NAME: N inputs (...) in S.Ss` printed by the mutation tests: (name, inputs, seconds).
fn stable_line(line: &str) -> Option<(String, u64, f64)> {
    let rest = line.trim().strip_prefix("fuzz ")?;
    let (name, rest) = rest.split_once(": ")?;
    let (n, rest) = rest.split_once(" inputs")?;
    let secs = rest.rsplit_once(" in ")?.1.strip_suffix('s')?;
    Some((name.to_string(), n.parse().ok()?, secs.parse().ok()?))
}

fn run_stable(targets: &[String], seconds: u64) -> Result<Vec<Row>> {
    let artifacts = util::target_dir().join("fuzz-artifacts");
    let mut rows = Vec::new();
    for target in targets {
        let dir = artifacts.join(target);
        let before = files_in(&dir);
        let mut cmd = util::cargo();
        cmd.args(["test", "--lib", "--"])
            .arg(format!("fuzz_{target}_deterministic"))
            .args(["--nocapture", "--test-threads=1"])
            .env("BIVY_FUZZ_SECONDS", seconds.to_string())
            .env("BIVY_FUZZ_ARTIFACTS", &artifacts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        eprintln!("xtask fuzz: {target} for {seconds}s: {}", util::show(&cmd));
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run cargo test: {e}"))?;
        let mut stats = Stats::default();
        let err = child.stderr.take().expect("piped");
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            eprintln!("  {target}| {line}");
            if let Some((name, n, _)) = stable_line(&line) {
                if name == *target {
                    stats.execs = Some(n);
                }
            }
        }
        let status = child
            .wait()
            .map_err(|e| format!("wait for cargo test: {e}"))?;
        let secs = start.elapsed().as_secs_f64();
        stats.exec_per_sec = stats.execs.map(|n| (n as f64 / secs.max(0.001)) as u64);
        let mut notes = Vec::new();
        let ok = status.success() && stats.execs.is_some();
        if !ok {
            let new: Vec<PathBuf> = files_in(&dir)
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            if new.is_empty() {
                notes.push(format!("cargo test failed ({status}) without a reproducer"));
            }
            for p in new {
                notes.push(format!(
                    "reproducer {} (replay: BIVY_FUZZ_INPUT={} cargo test --lib fuzz_{target}_deterministic)",
                    util::rel(&p),
                    p.display()
                ));
            }
        }
        rows.push(Row {
            target: target.clone(),
            ok,
            seconds: secs,
            stats,
            notes,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            a(&[]).unwrap(),
            Opts {
                seconds: 60,
                stable: false,
                build: true,
                targets: vec![]
            }
        );
        let o = a(&["--seconds", "20", "tar_unpack", "--stable", "template"]).unwrap();
        assert_eq!(o.seconds, 20);
        assert!(o.stable);
        assert_eq!(o.targets, ["tar_unpack", "template"]);
        assert!(a(&["--seconds"]).is_err());
        assert!(a(&["--seconds", "0"]).is_err());
        assert!(a(&["--seconds", "x"]).is_err());
        assert!(a(&["--fast"]).is_err());
        assert!(!a(&["--no-build"]).unwrap().build);
    }

    #[test]
    fn targets_of_the_fuzz_package() {
        let toml = "[package]\nname = \"bivy-fuzz\"\n\n[dependencies]\nx = \"1\"\n\n[[bin]]\nname = \"a\"\npath = \"a.rs\"\n\n[[bin]]\nname=\"b_c\"\n";
        assert_eq!(targets_of(toml), ["a", "b_c"]);
        // The real one: every target has a source and a seed corpus, and the README lists it.
        let dir = util::root().join(FUZZ_DIR);
        let real = targets_of(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap());
        assert!(real.len() >= 11, "{real:?}");
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        for t in &real {
            assert!(dir.join(format!("fuzz_targets/{t}.rs")).is_file(), "{t}");
            assert!(!files_in(&dir.join("corpus").join(t)).is_empty(), "{t}");
            assert!(readme.contains(&format!("`{t}`")), "README lacks {t}");
        }
    }

    #[test]
    fn nightly_from_rustup() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert_eq!(
            nightly_in(list).as_deref(),
            Some("nightly-x86_64-unknown-linux-gnu")
        );
        assert_eq!(
            nightly_in("stable-x86_64-unknown-linux-gnu (default)\n"),
            None
        );
        assert_eq!(
            nightly_in("nightly (default)\n").as_deref(),
            Some("nightly")
        );
    }

    #[test]
    fn libfuzzer_output() {
        let mut s = Stats::default();
        for l in [
            "INFO: Seed: 1234",
            "#2\tINITED cov: 100 ft: 120 corp: 5/3Kb exec/s: 0 rss: 40Mb",
            "#1024\tNEW    cov: 150 ft: 200 corp: 9/4Kb lim: 4096 exec/s: 512 rss: 41Mb L: 7/300 MS: 1 ChangeBit-",
            "#65536\tpulse  cov: 160 ft: 230 corp: 12/5Kb lim: 4096 exec/s: 3276 rss: 45Mb",
            "#70000\tDONE   cov: 161 ft: 231 corp: 12/5Kb lim: 4096 exec/s: 3500 rss: 46Mb",
            "Done 70000 runs in 20 second(s)",
            "stat::number_of_executed_units: 70012",
            "stat::average_exec_per_sec:     3500",
            "stat::new_units_added:          7",
            "stat::peak_rss_mb:              47",
        ] {
            s.line(l);
        }
        assert_eq!(
            s,
            Stats {
                execs: Some(70012),
                exec_per_sec: Some(3500),
                cov: Some(161),
                ft: Some(231),
                corpus: Some("12/5Kb".into()),
                rss_mb: Some(47),
            }
        );
        assert!(is_progress("#1024\tNEW    cov: 150"));
        assert!(is_progress("#9\tREDUCE cov: 1"));
        assert!(!is_progress("#70000\tDONE   cov: 161"));
        assert!(!is_progress("==123==ERROR: AddressSanitizer"));
    }

    #[test]
    fn stable_output() {
        assert_eq!(
            stable_line("fuzz tar_unpack: 12345 inputs (15 seeds, 12330 mutations) in 20.1s"),
            Some(("tar_unpack".into(), 12345, 20.1))
        );
        assert_eq!(stable_line("test foo ... ok"), None);
    }

    #[test]
    fn summary_names_reproducers() {
        let rows = [
            Row {
                target: "template".into(),
                ok: true,
                seconds: 20.0,
                stats: Stats {
                    execs: Some(1000),
                    cov: Some(5),
                    ..Default::default()
                },
                notes: vec![],
            },
            Row {
                target: "tar_unpack".into(),
                ok: false,
                seconds: 3.0,
                stats: Stats::default(),
                notes: vec!["reproducer target/fuzz-artifacts/tar_unpack/crash-1".into()],
            },
        ];
        let t = table(&rows, "libFuzzer");
        assert!(t.contains("template         ok"), "{t}");
        assert!(t.contains("tar_unpack       FAIL"), "{t}");
        assert!(t.contains("tar_unpack: reproducer target/fuzz-artifacts/tar_unpack/crash-1"));
    }
}
