//! An instance's `lxc.log` (what `lxc info --show-log` shows): timestamped lines appended by
//! the lifecycle and the stateful start and stop.

use crate::util::time;

/// Append a timestamped line to the instance's `lxc.log` (what `lxc info --show-log` shows).
pub fn log_line(log_dir: &std::path::Path, msg: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("lxc.log"))
    {
        // One write per line: O_APPEND keeps concurrent writers' lines whole (writeln! would
        // write the timestamp and the message separately, and lines interleaved).
        let line = format!("{} {msg}\n", time::now());
        let _ = f.write_all(line.as_bytes());
    }
}
