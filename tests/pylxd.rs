//! pylxd 2.4.2 (the Python client) drives `bivy daemon` through `LXD_DIR`.
//! CI installs pylxd into `target/pyvenv`; elsewhere set `BIVY_PYTHON` to a python with pylxd.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn pylxd_end_to_end() {
    if !common::require_root() {
        return;
    }
    let Some(py) = common::python() else {
        common::skip(
            &common::current_test_name(),
            "needs a python with pylxd 2.4.2 (target/pyvenv or BIVY_PYTHON)",
        );
        return;
    };
    let d = common::Daemon::start().expect("daemon");
    let img = common::busybox_image();
    d.ok(&[
        "image",
        "import",
        img.to_str().expect("utf-8"),
        "--alias",
        "busybox",
    ]);
    let script = common::root().join("tests/pylxd_smoke.py");
    let out = common::run_bounded(
        Command::new(py).arg(script).env("LXD_DIR", d.dir()),
        Duration::from_secs(300),
    )
    .expect("python");
    assert!(
        out.status.success(),
        "pylxd failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
}
