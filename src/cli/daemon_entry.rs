//! The one place the CLI reaches the daemon: `bivy daemon ...` is handed to `crate::daemon::main`.
//! (Until the daemon lands, this says so.)

/// Run the daemon with `args` (`args[0] == "daemon"`); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let _ = args;
    eprintln!("Error: not supported yet: daemon");
    1
}
