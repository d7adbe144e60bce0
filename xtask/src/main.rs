//! `cargo xtask <task>`: dist, test-image, bench.

fn main() {
    eprintln!("xtask: no task yet");
    std::process::exit(2);
}
