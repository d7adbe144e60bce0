//! # bivy: a system-container manager in one static binary
//!
//! ## Bird's eye view
//! `bivy daemon` serves the LXD 1.0 REST API on `$BIVY_DIR/unix.socket`. Unmodified LXD clients
//! (`lxc` 5.0.2, pylxd 2.4) and bivy's own CLI (this same binary) drive it. Containers are started
//! and held by a small per-container monitor process (the binary re-executed from a sealed copy),
//! so they outlive the daemon; a restarted daemon reattaches to them through their run directory.
//!
//! ## Code map (in reading order)
//! - [`api`]: REST wire types, field for field as LXD 5.0.2 sends them. No I/O.
//! - [`util`]: atomic file writes, RFC 3339 time, small helpers instead of helper crates.
//! - [`http`]: our own HTTP/1.1 and WebSocket layer, server and client, with limits and timeouts.
//! - [`tls`]: the TLS client (rustls with ring, roots from the system trust store); the only
//!   module that imports rustls. HTTP runs over it without knowing it.
//! - [`sys`]: the only module with `unsafe`: thin syscall wrappers.
//! - [`runtime`]: the privileged core: namespaces, id maps, idmapped rootfs, mounts, /dev, seccomp,
//!   AppArmor, capabilities, cgroups, the monitor and exec helpers.
//! - [`image`]: the image store: import, fingerprints, aliases, unpack, templates, publish, export.
//! - [`storage`]: storage pools and drivers (dir, btrfs): volumes, clones, snapshots.
//! - [`daemon`]: the REST server: routes, operations, events, instances, profiles, state on disk.
//! - [`client`]: a typed client of the REST API over the unix socket.
//! - [`cli`]: the `lxc`-style command line.
//!
//! ## Architecture invariants
//! - `unsafe` appears only under `src/sys/` (and each block has a `// SAFETY:` comment).
//! - `api` imports nothing from the crate; `client` and `cli` never import `daemon`, `runtime`,
//!   `image` or `sys`.
//! - The daemon process never changes namespace: namespace work happens in freshly exec'd,
//!   single-threaded helpers (`bivy __monitor`, `bivy __exec`), matched first thing in `main`.
//! - `runtime::Spec` is fully resolved: the runtime reads no instance config and makes no policy choice.
//! - State on disk is replaced atomically (write, fsync, rename, fsync dir).
//! - Nothing is loaded at run time: no shared library; external programs only where the kernel has
//!   no interface (criu, apparmor_parser, nft), with an error naming the missing program.

#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod http;
pub mod image;
pub mod instance;
pub mod runtime;
pub mod storage;
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
pub mod util;

/// The one skip mechanism of the test suite (`BIVY_MUST_WORK`, `BIVY_SKIP_LOG`), shared with
/// `tests/common` and `xtask`.
#[cfg(test)]
#[allow(dead_code)] // each user needs a different part
#[path = "../tests/common/skip.rs"]
pub(crate) mod test_skip;
