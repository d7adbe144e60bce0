//! `BIVY_TRACE=1`: the daemon's lifecycle operations (create, start, stop, delete) log the time
//! of each of their steps on its stderr, as the monitor logs its own setup steps (see
//! `runtime`). Off, a step costs one branch: the environment is read once per process.

use std::sync::OnceLock;
use std::time::Instant;

fn on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("BIVY_TRACE").is_some())
}

/// The step timer of one operation (`start c1`): each [`Steps::step`] logs the time since it
/// began.
pub struct Steps(Option<(String, Instant)>);

impl Steps {
    pub fn new(op: &str, name: &str) -> Steps {
        Steps(on().then(|| (format!("{op} {name}"), Instant::now())))
    }

    pub fn step(&self, step: &str) {
        if let Some((what, t0)) = &self.0 {
            line(&format!("bivy trace: {what}:"), *t0, step);
        }
    }
}

/// Log `prefix`, the time since `t0` and `step` on stderr as one line in one write, so that the
/// lines of processes sharing a log (the monitor and its child) never interleave.
pub fn line(prefix: &str, t0: Instant, step: &str) {
    use std::io::Write;
    let l = format!(
        "{prefix} {:>8.3} ms  {step}\n",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let _ = std::io::stderr().write_all(l.as_bytes());
}
