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
//! - [`util`]: atomic file writes, modes, RFC 3339 time, the [`util::revert::Revert`] undo list,
//!   the [`util::stream::Stream`] byte-stream trait, user and group names from `/etc/passwd` and
//!   `/etc/group` (`passwd`), the `BIVY_TRACE=1` step timings of lifecycle operations (`trace`),
//!   small helpers instead of helper crates.
//! - [`http`]: our own HTTP/1.1 and WebSocket layer, server and client, with limits and timeouts
//!   (`stream`, `message`, `parse`, `body`, `write`, `server`, `client`, `ws`).
//! - [`tls`]: the TLS client (rustls with ring, roots from the system trust store); the only
//!   module that imports rustls. HTTP runs over it without knowing it.
//! - [`sys`]: the only module with `unsafe`: thin syscall wrappers.
//! - [`runtime`]: the privileged core: namespaces, id maps, idmapped rootfs, mounts, /dev, seccomp,
//!   AppArmor, capabilities, cgroups (`cgroup`, with `cgroup/devices` the v1 device rules and
//!   `cgroup/io` the block I/O limits), the monitor (`monitor`; `control` is the caller's side:
//!   start, state, stop; `helper` the sealed binary, pidfiles and pidfds all helpers share),
//!   exec (`exec`: a waiter the monitor forks for each request on its `exec.sock`) and hot-plug
//!   helpers, CRIU checkpoints (`criu`: the
//!   dump from the caller, the restore by a new monitor). It gets numbers and policies
//!   (`runtime::Spec`, `runtime::Limits`), never LXD config keys.
//! - [`image`]: the image store: import (with the unpack rules checked up front), fingerprints,
//!   aliases, unpack, templates, publish, export.
//! - [`storage`]: storage pools and drivers (dir, btrfs): volumes, clones, snapshots, the modes
//!   that keep host users out, the pool registry.
//! - [`instance`]: the model and lifecycle, without HTTP. [`instance::Ctx`] holds the state
//!   database, images, pools, operations, events, host facts and busy marks; `view` (record,
//!   expanded config, state), `config` and `limits` (LXD's keys, parsed once), `idmap`, `create`,
//!   `lifecycle` (start, stop, delete, live limits, undoing interim changes after a crash,
//!   recovery, autostart) over `interim` (the temporary changes operations make: a freeze around a
//!   copy, a stop around a restore), `volatile` (volatile-key writes) and `lxc_log` (the instance's
//!   log lines), `snapshots`, `restore` (an instance back to a snapshot), `stateful` (CRIU:
//!   stateful stop/start and snapshots), `schedule` (`snapshots.expiry` and `snapshots.schedule`),
//!   `snapshot_names` (`snapshots.pattern` and the names a snapshot may take), `backups` (instance
//!   backups in LXD's tarball format, and restoring them: `backups/records`, `export`, `index` for
//!   LXD's index.yaml and backup.yaml, `import`), `pools`, `markers` (each pool's record files,
//!   kept in step with the database), `recover` (`admin recover`: records rebuilt from them),
//!   `volumes` (custom storage volumes: create, copy, move, state) over `volume_records` (their
//!   records and users) and `volume_data` (copying and sizing their data), `volume_snapshots`
//!   (their snapshots, restore and schedule), `devices` (disk, unix, GPU and USB devices resolved
//!   for the runtime, and their hot-plug), `hostdev` (the host's GPUs and USB devices), `uevents`
//!   (USB devices coming and going), `nics`, `networks` (managed bridges' records and lifecycle)
//!   and `network_config` (their config keys), `bridges` (a bridge on the host), `proxy` (proxy
//!   devices), with the state `Ctx` holds for them in `bridge_state` (the bridges being served) and
//!   `proxy_state` (the running relays), `images`, `operations`, `events`; typed errors
//!   ([`instance::Error`], one variant per kind of failure).
//! - [`net`]: host networking without HTTP or config keys: netlink (`netlink/wire` the message
//!   format, `netlink/ip` addresses and routes), nftables rules (`nft`), the daemon's own DHCPv4
//!   and DNS servers (`dns/wire` the packet format, `dns/forward` forwarding) and their lease
//!   store, proxy devices' relays, and the host name resolver (`resolve`: `/etc/hosts` and DNS, and
//!   `connect_tcp`, the one connect by host name).
//! - [`migration`]: moving instances between servers with LXD's protocol (pull mode): the source's
//!   websocket operation and the target's dial, the protobuf control messages, the rsync
//!   transfer over the `fs` websocket (`bivy __netcat` relays rsync's remote shell).
//! - [`daemon`]: the REST server, HTTP only: `routes` (the table of paths), `endpoints/` (one file
//!   per resource: parse, call `instance`, render), `response` (the one mapping of errors to LXD's
//!   status codes and envelope), connection limits, image downloads and pulls (`fetch`, `pull`
//!   for simplestreams, `pull_lxd` for LXD servers, `download` what both share; still here),
//!   `/1.0/resources`.
//! - [`client`]: a typed client of the REST API over the unix socket or HTTPS (a pinned server
//!   certificate, the client's own identity).
//! - [`cli`]: the `lxc`-style command line, one file per noun (`storage/volume` for `storage
//!   volume`); `conf` holds the client configuration (`$BIVY_CONF`, lxc's `config.yml`), and
//!   every verb's `[remote:]` resolves to that remote's client.
//!
//! ## Architecture invariants (`cargo xtask tidy` checks the first five)
//! - `unsafe` appears only under `src/sys/` (and each block has a `// SAFETY:` comment).
//! - `instance` imports neither `http` nor `daemon`; no file of `daemon/endpoints/` imports
//!   another.
//! - `api` imports nothing from the crate; `client` and `cli` never import `daemon`, `runtime`,
//!   `image`, `instance` or `sys`.
//! - Every file under `src/` starts with a `//!` doc; every dependency has a row in the README.
//! - No import cycle between files of `daemon/` or of `instance/` (`cargo xtask cycles`, run by
//!   tidy, prints each with its edges' lines): a file imports only from files below it.
//! - The daemon process never changes namespace: namespace work happens in freshly exec'd,
//!   single-threaded helpers (`bivy __monitor`, `bivy __exec`), matched first thing in `main`,
//!   and the processes they fork (the monitor's exec waiters).
//! - `runtime::Spec` is fully resolved: the runtime reads no instance config and makes no policy choice.
//! - State on disk is replaced atomically (write, fsync, rename, fsync dir); a multi-step change
//!   undoes its steps on failure ([`util::revert::Revert`]) and records a temporary change to a
//!   running instance before making it (`instance::lifecycle::Interim`).
//! - No host user but root reaches anything under `$BIVY_DIR` (see the README's threat model).
//! - Nothing is loaded at run time: no shared library (so no glibc NSS: host names go through
//!   `net::resolve`, users and groups through `util::passwd`); external programs only where the
//!   kernel has no interface (criu, apparmor_parser, nft), with an error naming the missing
//!   program.

#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod http;
pub mod image;
pub mod instance;
pub mod migration;
pub mod net;
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
