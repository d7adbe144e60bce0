//! `cargo xtask dist`: the release binary, fully static, checked.
//!
//! Builds `bivy` for `x86_64-unknown-linux-gnu` with `-C target-feature=+crt-static` appended to
//! `$RUSTFLAGS` (only the gnu target exists on our machines; +crt-static gives static-pie), copies
//! it to `target/dist/bivy`, and fails unless the ELF has no `PT_INTERP` and no `DT_NEEDED`.
//! Passing `--target` explicitly keeps RUSTFLAGS away from build scripts and proc-macros, and keeps
//! this build's artifacts apart from the ordinary `target/release`.
//!
//! The link drops the unwind tables (`.eh_frame`, and with it `.eh_frame_hdr`'s table): the
//! release profile aborts on panic, so nothing ever unwinds, and the tables (0.77 MB, most of them
//! std's and glibc's, which are built with them) were an eighth of the binary. A small linker
//! script, written next to the binary and passed as an input file, discards them. What this
//! loses: a `RUST_BACKTRACE` backtrace on a panic prints no frames (the panic message and the
//! abort are unchanged).
//!
//! Relative relocations are packed (`-z pack-relative-relocs`, DT_RELR: glibc 2.36 applies them
//! in a static-pie's own start-up): the position-independent binary keeps its ASLR, and its
//! 200 KB table of one relocation per pointer becomes a 2.5 KB bitmap.
//!
//! LLVM's machine outliner runs (`-enable-machine-outliner=always`): it moves instruction
//! sequences repeated across functions into shared ones, 0.22 MB (3.6%) smaller. It refuses
//! sequences that touch the stack pointer, and nothing here unwinds (the tables are gone, see
//! above). The whole suite runs against this binary with `BIVY_TEST_EXE=target/dist/bivy`.
//!
//! The check also fails when glibc's name service got linked in (its `/etc/nsswitch.conf`, and
//! `getaddrinfo` with `dlopen` behind it, about 0.2 MB): it comes with any host name handed to
//! `std::net` as a string (`bind("1.2.3.4:80")` too: std tries the C resolver when parsing
//! fails). bivy resolves names itself (`net::resolve`) and hands std parsed addresses.
//!
//! zstd is built without its block compressors for levels above 3 (`ZSTD_EXCLUDE_*`, passed in
//! `CFLAGS_x86_64_unknown_linux_gnu`, which the `cc` builds of the C dependencies read; the other
//! libraries have no such macros): bivy compresses with zstd only at level 3 (dfast, see
//! `src/image/compress.rs`), and zstd itself sends a level whose strategy is left out down to the
//! next one built in. Decompression is untouched: every zstd stream still decodes, as fast. This
//! took about 115 KB off the binary.
//!
//! Extra arguments after `--` go to `cargo build` (used to measure profile variants, e.g.
//! `cargo xtask dist -- --config 'profile.release.opt-level="s"' --target-dir target/scratch`).

use std::path::PathBuf;

use crate::util::{self, Result};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const STATIC_FLAG: &str = "-C target-feature=+crt-static";
/// A string of glibc's name service switch, present when `getaddrinfo` is linked in.
const NSS_MARK: &str = "/etc/nsswitch.conf";
/// Discards the unwind tables (see the module doc). `INSERT BEFORE .text` keeps the linker's
/// default script and puts this rule ahead of its `.eh_frame` one (GNU ld and lld both).
/// zstd's block compressors bivy never runs (it compresses at level 3, the `dfast` strategy).
const ZSTD_EXCLUDES: &str =
    "-DZSTD_EXCLUDE_GREEDY_BLOCK_COMPRESSOR -DZSTD_EXCLUDE_LAZY_BLOCK_COMPRESSOR \
     -DZSTD_EXCLUDE_LAZY2_BLOCK_COMPRESSOR -DZSTD_EXCLUDE_BTLAZY2_BLOCK_COMPRESSOR \
     -DZSTD_EXCLUDE_BTOPT_BLOCK_COMPRESSOR -DZSTD_EXCLUDE_BTULTRA_BLOCK_COMPRESSOR";
const NO_EH_FRAME_SCRIPT: &str =
    "SECTIONS { /DISCARD/ : { *(.eh_frame) *(.eh_frame.*) } } INSERT BEFORE .text;\n";

/// Build and check; returns the path of `target/dist/bivy`.
pub fn build(extra: &[String]) -> Result<PathBuf> {
    let script_dir = util::target_dir().join("dist");
    util::mkdirs(&script_dir)?;
    let script = script_dir.join("no-eh-frame.ld");
    std::fs::write(&script, NO_EH_FRAME_SCRIPT)
        .map_err(|e| format!("write {}: {e}", script.display()))?;
    let flags = format!(
        "{STATIC_FLAG} -C link-arg={} -C link-arg=-Wl,-z,pack-relative-relocs \
         -C llvm-args=-enable-machine-outliner=always",
        script.display()
    );
    let rustflags = util::append_flags(std::env::var_os("RUSTFLAGS").as_deref(), &flags);
    let cflags_var = format!("CFLAGS_{}", TARGET.replace('-', "_"));
    let cflags = util::append_flags(std::env::var_os(&cflags_var).as_deref(), ZSTD_EXCLUDES);
    let mut cmd = util::cargo();
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--package",
        "bivy",
        "--bin",
        "bivy",
        "--target",
        TARGET,
    ])
    .args(extra)
    .env("RUSTFLAGS", &rustflags)
    .env(&cflags_var, &cflags)
    // CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS; drop it so the static flag applies.
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    eprintln!(
        "xtask: RUSTFLAGS='{rustflags}' {cflags_var}='{cflags}' {}",
        util::show(&cmd)
    );
    util::timed("cargo build --release", || {
        util::run("release build", &mut cmd)
    })?;

    let target_dir = target_dir_from(extra).unwrap_or_else(util::target_dir);
    let built = target_dir.join(TARGET).join("release/bivy");
    let dist_dir = util::target_dir().join("dist");
    util::mkdirs(&dist_dir)?;
    let out = dist_dir.join("bivy");
    let tmp = dist_dir.join(".bivy.tmp");
    std::fs::copy(&built, &tmp)
        .map_err(|e| format!("copy {} to {}: {e}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", out.display()))?;

    let facts = crate::elf::check_static(&out)?;
    let bytes = std::fs::read(&out).map_err(|e| format!("read {}: {e}", out.display()))?;
    if bytes
        .windows(NSS_MARK.len())
        .any(|w| w == NSS_MARK.as_bytes())
    {
        return Err(format!(
            "{}: glibc's name service is linked in ({NSS_MARK:?} found): some code hands std::net \
             a host name string (ToSocketAddrs for &str/String); give it a parsed SocketAddr, or \
             resolve with bivy::net::resolve",
            util::rel(&out)
        ));
    }
    let size = std::fs::metadata(&out)
        .map_err(|e| format!("stat {}: {e}", out.display()))?
        .len();
    println!(
        "{}: {} bytes, {} (no PT_INTERP, no DT_NEEDED)",
        util::rel(&out),
        size,
        facts.kind()
    );
    Ok(out)
}

/// `--target-dir X` or `--target-dir=X` among the extra cargo arguments.
fn target_dir_from(extra: &[String]) -> Option<PathBuf> {
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        if a == "--target-dir" {
            return it.next().map(|d| util::root().join(d));
        }
        if let Some(d) = a.strip_prefix("--target-dir=") {
            return Some(util::root().join(d));
        }
    }
    None
}

pub fn run(args: &[String]) -> Result {
    let extra = match args.first().map(String::as_str) {
        None => &args[..0],
        Some("--") => &args[1..],
        Some(other) => {
            return Err(format!(
                "unexpected argument `{other}` (cargo arguments go after `--`)"
            ))
        }
    };
    build(extra).map(|_| ())
}
