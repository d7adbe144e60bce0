//! argv dispatch only: hidden helper verbs first (before any thread, log or state exists), then
//! `daemon`, then the CLI.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "__netcat") {
        bivy::migration::rsync::netcat_main(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == "__complete") {
        std::process::exit(bivy::cli::completion::complete_main(&args[2..]));
    }
    if args.get(1).is_some_and(|a| a.starts_with("__")) {
        bivy::runtime::helper_main(&args[1..]);
    }
    if args.get(1).is_some_and(|a| a == "daemon") {
        std::process::exit(bivy::daemon::main(&args[2..]));
    }
    std::process::exit(bivy::cli::main(args));
}
