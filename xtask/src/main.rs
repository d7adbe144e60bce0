//! `cargo xtask <task>`: the project's build, image, test, demo, bench and fuzz tooling.
//!
//! Tasks run host tools (`cargo`, `tar`, `gzip`, `debootstrap`, `apt-get`) through
//! `std::process::Command`; xtask itself has no crate dependencies, so it builds in seconds.
//! Every path is relative to the workspace root, whatever the caller's working directory.

mod bench;
mod bench_lxd;
mod breakdown;
mod chaos;
mod chaos_check;
mod cycles;
mod daemon;
mod deb;
mod demo;
mod dist;
mod elf;
mod fuzz;
mod image;
mod json;
mod test;
/// The one skip mechanism of the test suite, shared with `tests/common` and the crate's unit
/// tests.
#[cfg(test)]
#[allow(dead_code)] // each user needs a different part
#[path = "../../tests/common/skip.rs"]
mod test_skip;
mod tidy;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  dist                         static release build -> target/dist/bivy, ELF checked (no PT_INTERP, no DT_NEEDED)
  deb [--bin FILE] [--out DIR] [--fast]
                               Debian package of the static binary (service files, man pages,
                               completions, the bivy group) -> target/deb/, checked by lintian
  test-image [busybox|debian|all]
                               build LXD unified test images under target/test-images/ (default: busybox)
  test [FILTER...]             cargo test --workspace --all-targets -- --test-threads=1, then a summary
  tidy                         architecture invariants by text scan of src/: unsafe only in src/sys/ and
                               with // SAFETY:, layering imports, //! docs, README dependency rows, no
                               import cycle between the files of src/daemon or src/instance (cycles)
  cycles [--root DIR] [DIR...] import cycles between the files of src/daemon and src/instance (or of the
                               directories named, `src` for all), each with a closed path and its lines
  demo [stop]                  install what is missing, build, start a daemon, launch a busybox container
  bench [--runs N] [--cycles N] [--only cycles]
                               measure size, launch, start, exec, stop, list, memory -> target/bench/results.md
                               (--only cycles: the create/start/stop/delete churn alone, per phase)
  bench --against lxd [--runs N] [--running N] [--big-mib N] [--only migration]
                               the same operations on bivy and a private LXD 5.0.2, interleaved;
                               medians and LXD/bivy ratios -> its section of target/bench/results.md
  fuzz [--seconds N] [--stable] [--no-build] [TARGET...]
                               run the tests/fuzz targets (all, or those named) N seconds each (60) with
                               libFuzzer (nightly + cargo-fuzz, installed if missing), else the stable
                               mutation tests; a summary of executions and coverage, reproducers of crashes
  chaos [--trials N] [--seed S] [--trial I] [--kind K]... [--bin PATH] [--round-robin] [--btrfs]
                               random operations with the daemon killed (kill -9) at a random moment,
                               container monitors and inits killed, a full disk and inode table;
                               then the invariants (nothing acknowledged lost, nothing left without
                               a record, the long-running container's init kept); a summary
  check-elf FILE...            only the static-ELF check, on any file";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match task.as_str() {
        "dist" => dist::run(rest),
        "deb" => deb::run(rest),
        "test-image" => image::run(rest),
        "test" => test::run(rest),
        "tidy" => tidy::run(rest),
        "cycles" => cycles::run(rest),
        "demo" => demo::run(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "chaos" => chaos::run(rest),
        "check-elf" => elf::run(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
