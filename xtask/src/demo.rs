//! `cargo xtask demo`: from a fresh machine to a running busybox container, in one command.
//!
//! Steps: install the Debian packages the demo needs if missing (root), build the static
//! binary (`xtask dist`), build the busybox test image, start `bivy daemon` in the background
//! with `BIVY_DIR=target/demo/bivy`, then `bivy image import`, `bivy launch busybox c1`,
//! `bivy list` and `bivy exec c1 -- uname -a`, each printed with its output.
//! The daemon keeps running; `cargo xtask demo stop` deletes c1 and stops it.

use std::path::PathBuf;

use crate::daemon;
use crate::util::{self, Result};

/// What the demo needs from Debian: a static busybox for the image, a C compiler for ring.
const DEMO_DEBS: &[&str] = &["busybox-static", "gcc", "libc6-dev"];

fn demo_root() -> PathBuf {
    util::target_dir().join("demo")
}

fn stop_previous() {
    let pidfile = demo_root().join("daemon.pid");
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        if daemon::is_bivy_daemon(pid) {
            let bin = util::target_dir().join("dist/bivy");
            let dir = demo_root().join("bivy");
            let _ = std::process::Command::new(&bin)
                .env("BIVY_DIR", &dir)
                .args(["delete", "--force", "c1"])
                .stdin(std::process::Stdio::null())
                .status();
            eprintln!("xtask: stopping the previous demo daemon (pid {pid})");
            daemon::stop_pid(pid);
        }
    }
    let _ = std::fs::remove_file(pidfile);
}

pub fn run(args: &[String]) -> Result {
    if args.first().map(String::as_str) == Some("stop") {
        stop_previous();
        println!("demo stopped");
        return Ok(());
    }
    util::ensure_debs(DEMO_DEBS)?;
    let bin = crate::dist::build(&[])?;
    let image = crate::image::busybox()?;
    stop_previous();
    let root = demo_root();
    let dir = root.join("bivy");
    // A fresh state dir each time: the demo shows a first launch. (Nothing can be mounted below it:
    // the previous daemon's containers were deleted above.)
    if dir.exists() {
        util::run(
            "clean demo dir",
            std::process::Command::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(&dir),
        )?;
    }
    let d = daemon::start(&bin, &dir, &root.join("daemon.log"))?;
    println!(
        "bivy daemon running: pid {}, BIVY_DIR={}, log {}",
        d.pid,
        dir.display(),
        util::rel(&d.log)
    );
    let image_arg = image.to_string_lossy().into_owned();
    let steps: [&[&str]; 4] = [
        &["image", "import", &image_arg, "--alias", "busybox"],
        &["launch", "busybox", "c1"],
        &["list"],
        &["exec", "c1", "--", "uname", "-a"],
    ];
    for step in steps {
        println!(
            "\n$ BIVY_DIR={} {} {}",
            dir.display(),
            util::rel(&bin),
            step.join(" ")
        );
        let status = d
            .cli(step)
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit())
            .status()
            .map_err(|e| format!("run bivy: {e}"))?;
        if !status.success() {
            return Err(format!(
                "`bivy {}` failed ({status}); daemon log: {} (daemon still running: `cargo xtask demo stop`)",
                step.join(" "),
                util::rel(&d.log)
            ));
        }
    }
    println!(
        "\nThe daemon keeps running. Try: BIVY_DIR={} {} exec c1 -- sh\nStop it: cargo xtask demo stop",
        dir.display(),
        util::rel(&bin)
    );
    Ok(())
}
