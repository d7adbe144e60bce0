//! Where each millisecond of one launch, one exec and one restore of a running container goes
//! (`cargo xtask bench --only breakdown`, also part of the full bench): a daemon of its own runs with `BIVY_TRACE=1`, so
//! it logs each step of create, start, the runtime's start and exec with its time, and each
//! container's monitor logs its own setup steps to `monitor.log` in its run directory. Each
//! launch and exec is timed from the CLI as well; what the daemon's steps do not account for is
//! the CLI's own start, its HTTP requests and the operation waits.
//!
//! Every figure is the median over the runs of one step's share: the time from the step logged
//! before it (in the same operation or process) to it.

use std::path::Path;
use std::time::Duration;

use crate::bench::{must, time_one, Stats, Table};
use crate::daemon::{self, BgDaemon};
use crate::util::Result;

/// One step's shares over the runs, in the order steps were first seen.
#[derive(Default)]
struct Shares(Vec<(String, Vec<f64>)>);

impl Shares {
    fn add(&mut self, what: &str, ms: f64) {
        match self.0.iter_mut().find(|(w, _)| w == what) {
            Some((_, v)) => v.push(ms),
            None => self.0.push((what.to_string(), vec![ms])),
        }
    }

    fn rows(&self, t: &mut Table, note: &str) {
        for (what, v) in &self.0 {
            t.stats(what, &Stats::of(v).ok_or_else(|| "no runs".into()), note);
        }
    }
}

/// The steps of one traced operation in `log`: lines `<prefix> <ms> ms  <step>`, as
/// (step, time since the operation began).
fn steps(log: &str, prefix: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (ms, step) = rest.trim_start().split_once(" ms  ")?;
            Some((step.trim().to_string(), ms.trim().parse().ok()?))
        })
        .collect()
}

/// Record each step's share (time since the step before it) under `label: step`; the time of
/// the last step (the operation's whole time), if any.
fn add_steps(s: &mut Shares, label: &str, steps: &[(String, f64)]) -> Option<f64> {
    let mut prev = 0.0;
    for (step, at) in steps {
        s.add(&format!("{label}: {step}"), (at - prev).max(0.0));
        prev = *at;
    }
    steps.last().map(|(_, at)| *at)
}

/// [`add_steps`] for the setup steps the monitor of `name`'s current run logged.
fn add_monitor_steps(s: &mut Shares, d: &BgDaemon, name: &str, label: &str) {
    let mon = std::fs::read_to_string(d.dir.join("run").join(name).join("monitor.log"))
        .unwrap_or_default();
    add_steps(s, label, &steps(&mon, "bivy monitor:"));
}

fn log_from(log: &Path, offset: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(text.get(offset..).unwrap_or_default()).into_owned()
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

/// Time a few quiet moments for the daemon's background work (the `dir` pool's spare copy of
/// the image, the image's last use) so that each run starts on a quiet machine.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

pub(crate) fn run(bin: &Path, image: &Path, run_dir: &Path, t: &mut Table, runs: usize) -> Result {
    let dir = run_dir.join("trace");
    let log = run_dir.join("trace-daemon.log");
    let d = daemon::start_env(bin, &dir, &log, &[("BIVY_TRACE", "1")])?;
    let names: Vec<String> = (0..runs).map(|i| format!("tb{i}")).collect();
    let r = measure(&d, &log, image, t, &names);
    for n in names.iter().map(String::as_str).chain(["tw"]) {
        let _ = d.cli(&["delete", "--force", n]).output();
    }
    d.stop();
    r
}

fn measure(d: &BgDaemon, log: &Path, image: &Path, t: &mut Table, names: &[String]) -> Result {
    let img = image.to_string_lossy().into_owned();
    must(d, &["image", "import", &img, "--alias", "busybox"])?;
    // The first launch unpacks the image into the pool: not what is measured.
    must(d, &["launch", "busybox", "tw"])?;
    settle();

    let mut launch = Shares::default();
    for name in names {
        let off = log_len(log);
        let total = time_one(&mut d.cli(&["launch", "busybox", name]))?;
        settle();
        let text = log_from(log, off);
        let mut ops = 0.0;
        for op in ["create", "start"] {
            let s = steps(&text, &format!("bivy trace: {op} {name}:"));
            ops += add_steps(&mut launch, &format!("launch, daemon: {op}"), &s).unwrap_or(0.0);
        }
        let s = steps(&text, &format!("bivy trace: runtime start {name}:"));
        add_steps(&mut launch, "launch, in start: runtime start", &s);
        add_monitor_steps(&mut launch, d, name, "launch, in runtime start: monitor");
        launch.add(
            "launch: CLI start, HTTP requests and operation waits (total - create - start)",
            (total - ops).max(0.0),
        );
        launch.add("launch: total, from the CLI", total);
    }
    launch.rows(t, "`BIVY_TRACE=1`; each step's share");

    let mut exec = Shares::default();
    let target = &names[0];
    for _ in 0..names.len() * 3 {
        let off = log_len(log);
        let total = time_one(&mut d.cli(&["exec", target, "--", "true"]))?;
        let text = log_from(log, off);
        let s = steps(&text, &format!("bivy trace: exec {target}:"));
        let daemon = add_steps(&mut exec, "exec, daemon", &s).unwrap_or(0.0);
        exec.add(
            "exec: CLI start, HTTP request, websocket handshakes and operation wait (total - daemon)",
            (total - daemon).max(0.0),
        );
        exec.add("exec: total, from the CLI", total);
    }
    exec.rows(t, "`BIVY_TRACE=1`; each step's share");

    // The restore of a running container to a snapshot: a kill beside the snapshot's clone,
    // then a start.
    let mut restore = Shares::default();
    must(d, &["snapshot", target, "bs0"])?;
    settle();
    for _ in 0..names.len() * 2 {
        let off = log_len(log);
        let total = time_one(&mut d.cli(&["restore", target, "bs0"]))?;
        settle();
        let text = log_from(log, off);
        let s = steps(&text, &format!("bivy trace: restore {target}:"));
        let daemon = add_steps(&mut restore, "restore, daemon", &s).unwrap_or(0.0);
        for (op, label) in [
            ("kill for restart", "restore, in the daemon's stop"),
            ("kill and detach", "restore, in kill for restart"),
            ("restore the stopped", "restore, after the stop"),
            ("start", "restore, start"),
            ("runtime start", "restore, in start: runtime start"),
        ] {
            let s = steps(&text, &format!("bivy trace: {op} {target}:"));
            add_steps(&mut restore, &format!("{label}: {op}"), &s);
        }
        add_monitor_steps(
            &mut restore,
            d,
            target,
            "restore, in runtime start: monitor",
        );
        restore.add(
            "restore: CLI start, HTTP requests and operation wait (total - daemon)",
            (total - daemon).max(0.0),
        );
        restore.add("restore: total, from the CLI", total);
    }
    restore.rows(t, "`BIVY_TRACE=1`; each step's share");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_shares() {
        let log = "bivy trace: create c1:    1.500 ms  volume made\n\
                   bivy trace: create c10:    9.000 ms  other\n\
                   noise\n\
                   bivy trace: create c1:    2.000 ms  recorded\n";
        let s = steps(log, "bivy trace: create c1:");
        assert_eq!(
            s,
            vec![("volume made".into(), 1.5), ("recorded".into(), 2.0)]
        );
        let mut sh = Shares::default();
        assert_eq!(add_steps(&mut sh, "create", &s), Some(2.0));
        assert_eq!(sh.0[0], ("create: volume made".into(), vec![1.5]));
        assert_eq!(sh.0[1], ("create: recorded".into(), vec![0.5]));
    }
}
