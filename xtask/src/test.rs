//! `cargo xtask test`: THE test command (README, `.ci/run`).
//!
//! Runs `cargo test --workspace --all-targets -- --test-threads=1`: integration tests start real
//! containers as root, and running them one at a time keeps them from fighting over the host.
//! Output streams through; at the end we print each test binary's `test result:` line and every
//! `SKIP` the harness (`tests/common`) logged, so skipped coverage is visible even when cargo
//! captured the test's output.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;

use crate::util::{self, Result};

pub fn run(args: &[String]) -> Result {
    // Container tests need the busybox image; building it here (about 2 s, offline) spares each
    // test binary a nested cargo run.
    let busybox = util::target_dir().join("test-images/busybox.tar.gz");
    if !busybox.is_file() {
        if let Err(e) = crate::image::busybox() {
            eprintln!("xtask: warning: cannot build the busybox test image: {e}");
        }
    }
    let skip_log = util::target_dir().join("test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    util::mkdirs(util::target_dir())?;
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--all-targets",
        "--",
        "--test-threads=1",
    ])
    .args(args)
    .env("BIVY_SKIP_LOG", &skip_log)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    eprintln!("xtask: {}", util::show(&cmd));
    let t = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;

    // Merge stdout and stderr line by line so "Running <binary>" (stderr) pairs with its
    // "test result:" (stdout).
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    let h1 = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            let _ = tx.send((false, line));
        }
    });
    let h2 = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            let _ = tx2.send((true, line));
        }
    });
    let mut current = String::from("?");
    let mut summary = Vec::new();
    for (is_err, line) in rx {
        if is_err {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            // "unittests src/lib.rs (target/debug/deps/bivy-0123abcd)" -> "bivy unittests src/lib.rs"
            let (what, bin) = rest.split_once(" (").unwrap_or((rest, ""));
            let file = bin.trim_end_matches(')').rsplit('/').next().unwrap_or("");
            let krate = file.rsplit_once('-').map_or(file, |(k, _)| k);
            current = format!("{krate} {what}").trim().to_owned();
        } else if trimmed.starts_with("Doc-tests") {
            current = trimmed.to_owned();
        } else if trimmed.starts_with("test result:") {
            summary.push(format!("{current}: {trimmed}"));
        }
    }
    let _ = h1.join();
    let _ = h2.join();
    let status = child
        .wait()
        .map_err(|e| format!("wait for cargo test: {e}"))?;

    println!(
        "\n==== test summary ({:.0}s) ====",
        t.elapsed().as_secs_f64()
    );
    for s in &summary {
        println!("{s}");
    }
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skips: Vec<&str> = skips.lines().filter(|l| !l.is_empty()).collect();
    println!("skipped: {}", skips.len());
    for s in &skips {
        println!("  {s}");
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}
