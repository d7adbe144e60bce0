//! The `lxc`-style command line. Depends only on `client`, `api` and `util`.

/// Run the CLI; returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let _ = args;
    eprintln!("Error: not supported yet: the bivy CLI");
    1
}
