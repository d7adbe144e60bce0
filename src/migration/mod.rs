//! Moving instances between servers with LXD 5.0.2's migration protocol. Pull mode (lxc's
//! default): the source serves a websocket operation (`POST /1.0/instances/NAME` with
//! `migration: true`, [`source`]) and the target dials it (`POST /1.0/instances` with source type
//! `migration`, [`sink`]). Push mode: the target serves the websocket operation (source mode
//! `push`) and the source dials it (`target` in its request). Relay: both serve one and the
//! client joins them. Whoever dials, the roles on the streams are the same. Two websockets: `control` carries the protobuf header exchange and the final
//! result ([`proto`], framed by [`wire`]); `fs` carries the optional JSON index header and then
//! one rsync session per snapshot, oldest first, and one for the instance ([`rsync`]).
//!
//! Between two bivy daemons the volumes travel as plain byte streams instead of rsync sessions
//! (bivy's own transfer, offered in a header field LXD ignores and chosen by the target:
//! `proto::XFER_STREAM`), so no external program is needed, or, between two btrfs pools, as
//! `btrfs send` streams, each snapshot incremental from the one before (`proto::XFER_BTRFS`); a
//! refresh, and any transfer with LXD, uses LXD's rsync.
//!
//! Live migration (a running instance with `migration.stateful=true`, between two bivy daemons
//! with CRIU): a third websocket, `criu`, and `criu: CRIU_RSYNC` in both headers. The source
//! sends the snapshots, then dumps the instance (`stop --stateful`: its processes stop), sends
//! its volume and then the checkpoint on `criu` as a byte stream; the target makes the instance
//! and restores it from the checkpoint before it reports success. A failure anywhere after the
//! dump starts the source again from its checkpoint. One-shot: this kernel has no soft-dirty
//! tracking, so no iterative pre-copy.
//!
//! Custom storage volumes travel the same way with fewer parts ([`volume`]: no id map, no
//! CRIU, byte streams or rsync).
//!
//! This module drives the model (`crate::instance`) and speaks HTTP only through the websocket
//! layer; the REST handlers parse the requests and call [`source::start`] and [`sink::receive`].

pub mod proto;
pub mod rsync;
pub mod sink;
pub mod source;
pub mod volume;
pub mod wire;

/// LXD's architecture numbers (`shared/osarch`), as `Snapshot.architecture` carries them.
const ARCHITECTURES: &[(i32, &str)] = &[
    (1, "i686"),
    (2, "x86_64"),
    (3, "armv7l"),
    (4, "aarch64"),
    (5, "ppc"),
    (6, "ppc64"),
    (7, "ppc64le"),
    (8, "s390x"),
    (9, "mips"),
    (10, "mips64"),
    (11, "riscv32"),
    (12, "riscv64"),
    (13, "armv6l"),
    (14, "armv8l"),
];

/// LXD's number of an architecture name (0: unknown).
pub fn arch_id(name: &str) -> i32 {
    ARCHITECTURES
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(0, |(i, _)| *i)
}

/// The architecture name of LXD's number (empty: unknown).
pub fn arch_name(id: i32) -> &'static str {
    ARCHITECTURES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("", |(_, n)| n)
}

/// A migration's websockets, in the order they are used: `control`, `fs`, and `criu` when live.
pub fn streams(live: bool) -> &'static [&'static str] {
    const ALL: [&str; 3] = ["control", "fs", "criu"];
    &ALL[..if live { 3 } else { 2 }]
}

/// New one-time secrets for an operation's [`streams`] (the operation's metadata, as LXD's).
pub fn secrets(live: bool) -> std::collections::BTreeMap<String, String> {
    crate::util::sort::map(
        streams(live)
            .iter()
            .map(|k| (k.to_string(), crate::instance::operations::secret())),
    )
}

/// The transfers of bivy's own this daemon may use besides LXD's rsync ([`proto::XFER_BTRFS`]
/// where the pools allow, [`proto::XFER_STREAM`]), best first. `BIVY_MIGRATION_TRANSFER` in the
/// daemon's environment narrows them: `rsync` (LXD's transfer to bivy peers too) or `stream`
/// (no btrfs send); the tests of each path use it.
pub fn offered_transfers() -> Vec<String> {
    let all = [proto::XFER_BTRFS, proto::XFER_STREAM];
    let keep: &[&str] = match std::env::var("BIVY_MIGRATION_TRANSFER").as_deref() {
        Ok("rsync") => &[],
        Ok("stream") => &[proto::XFER_STREAM],
        _ => &all,
    };
    keep.iter().map(|t| t.to_string()).collect()
}

/// The index header version both sides speak (`lxd/migration/utils.go`).
pub const INDEX_HEADER_VERSION: u32 = 1;

/// How long the source waits for the target to connect both websockets (LXD: 10 s).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_numbers() {
        assert_eq!(arch_id("x86_64"), 2);
        assert_eq!(arch_name(4), "aarch64");
        assert_eq!(arch_id("vax"), 0);
        assert_eq!(arch_name(99), "");
    }
}
