//! The operations of `cargo xtask chaos` and the invariants checked after each (see `chaos`):
//! what an operation promises once acknowledged, what must hold whether or not it was, and the
//! teardown that proves every instance starts, stops and is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::chaos::{Kind, Rng, Trial, AFTER, BEFORE};
use crate::json::Json;
use crate::util::Result;

/// What an operation's acknowledgement promises (and, for some, what holds either way).
#[derive(Debug, Clone)]
pub enum Check {
    /// The instance exists (true) or is gone (false).
    Instance(String, bool),
    /// Acknowledged: the instance is Running.
    Running(String),
    /// Acknowledged: the instance is Stopped.
    Stopped(String),
    /// Whatever happened, the instance is Running (a temporary stop is undone).
    AlwaysRunning(String),
    /// Acknowledged: renamed; else exactly one of the two names exists.
    Renamed(String, String),
    /// `/root/mark` of the instance: the first value when acknowledged, else one of the rest
    /// (none: always the first).
    Mark(String, String, Vec<String>),
    Snapshot(String, String),
    /// An image alias exists (true) or not.
    Image(String, bool),
    Profile(String, bool),
    ProfileKey(String, String, String),
    InstanceKey(String, String, String),
    Pool(String, bool),
    Volume(String, String, bool),
    VolumeSnapshot(String, String, String),
    Network(String, bool),
    /// Acknowledged: the instance's root disk is on this pool; else on it or on the other
    /// (and whole: see `Mark` and `Snapshot`).
    OnPool(String, String, String),
    /// An instance's own device exists (true) or not.
    Device(String, String, bool),
    /// A profile's device exists (true) or not.
    ProfileDevice(String, String, bool),
    /// `bivy copy` (false) or `move` (true) of the first instance to the second, with its
    /// snapshot `snap0` (true) or without: acknowledged, the copy is there and the source is
    /// (copy) or is not (move); either way each of the two that exists is whole (its mark, its
    /// snapshot) and at least one does.
    Migrated {
        src: String,
        dst: String,
        moved: bool,
        snapshots: bool,
    },
}

/// An operation to run: the CLI's arguments, and what its acknowledgement promises.
pub struct Op {
    pub args: Vec<String>,
    pub checks: Vec<Check>,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| (*a).to_owned()).collect()
}

/// The operations a full disk is tried with.
const DISK_OPS: [Kind; 12] = [
    Kind::Launch,
    Kind::Snapshot,
    Kind::Copy,
    Kind::Restore,
    Kind::ImageImport,
    Kind::Publish,
    Kind::Profile,
    Kind::Config,
    Kind::VolumeCreate,
    Kind::VolumeSnapshot,
    Kind::VolumeCopy,
    Kind::NetworkCreate,
];

/// The operations a `concurrent` trial runs three of at once: none touches what another does
/// (snapshots `sx` of keep, r1 or s1; config of keep, r1 or s1 is only checked as a key).
const CONCURRENT_OPS: [Kind; 7] = [
    Kind::Launch,
    Kind::Snapshot,
    Kind::Profile,
    Kind::PoolCreate,
    Kind::VolumeCreate,
    Kind::VolumeSnapshot,
    Kind::NetworkCreate,
];

/// Three different operations of [`CONCURRENT_OPS`], to run at once.
pub fn plan_concurrent(t: &mut Trial, rng: &mut Rng) -> Result<Vec<Op>> {
    let mut kinds: Vec<Kind> = Vec::new();
    while kinds.len() < 3 {
        let k = *rng.pick(&CONCURRENT_OPS);
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    eprintln!(
        "chaos: trial {} concurrent: {}",
        t.n,
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    kinds.into_iter().map(|k| plan_kind(t, k, rng)).collect()
}

/// Choose the trial's operation (details by `rng`) and make what it needs first.
pub fn plan(t: &mut Trial, rng: &mut Rng) -> Result<Op> {
    let kind = match t.kind {
        Kind::DiskFull | Kind::InodesFull => {
            let k = *rng.pick(&DISK_OPS);
            eprintln!("chaos: trial {} on a full disk: {}", t.n, k.name());
            k
        }
        k => k,
    };
    plan_kind(t, kind, rng)
}

fn plan_kind(t: &mut Trial, kind: Kind, rng: &mut Rng) -> Result<Op> {
    let pool = |t: &Trial, rng: &mut Rng| -> &'static str {
        if t.btrfs && rng.chance(1, 2) {
            "bt"
        } else {
            "default"
        }
    };
    let op = match kind {
        Kind::Launch => {
            let mut a = s(&["launch", "bb", "n1"]);
            if t.btrfs && rng.chance(1, 2) {
                a.extend(s(&["-s", "bt"]));
            }
            if rng.chance(1, 2) {
                a.extend(s(&["--network", "chbr0"]));
            }
            Op {
                args: a,
                checks: vec![
                    Check::Instance("n1".into(), true),
                    Check::Running("n1".into()),
                ],
            }
        }
        Kind::Snapshot => {
            let name = *rng.pick(&["s1", "r1", "keep"]);
            Op {
                args: s(&["snapshot", name, "sx"]),
                checks: vec![Check::Snapshot(name.into(), "sx".into())],
            }
        }
        Kind::Copy => {
            let src = *rng.pick(&["s1", "r1", "s1/snap0", "r1/snap0"]);
            let mut a = s(&["copy", src, "c2"]);
            // Not with a snapshot as the source (refused, as lxc and LXD refuse it); the draw is
            // made all the same, so a seed's trials stay as they were.
            if rng.chance(1, 2) && !src.contains('/') {
                a.push("--instance-only".into());
            }
            let mark = if src.contains('/') { BEFORE } else { AFTER };
            Op {
                args: a,
                checks: vec![
                    Check::Instance("c2".into(), true),
                    Check::Mark("c2".into(), mark.into(), vec![mark.into()]),
                ],
            }
        }
        Kind::PoolMove => {
            // s1 (stopped, with snap0) to the other pool: the trial's btrfs pool or a second dir
            // pool made for this.
            let from = pool_of(t, "s1")?;
            let to = if t.btrfs {
                if from == "bt" {
                    "default"
                } else {
                    "bt"
                }
            } else {
                t.ok(&["storage", "create", "d2", "dir"])?;
                "d2"
            };
            let mut checks = vec![
                Check::Instance("s1".into(), true),
                Check::OnPool("s1".into(), to.into(), from.clone()),
                Check::Mark("s1".into(), AFTER.into(), vec![AFTER.into()]),
            ];
            let mut a = s(&["move", "s1", "-s", to]);
            if rng.chance(1, 3) {
                a.push("--instance-only".into());
            } else {
                checks.push(Check::Snapshot("s1".into(), "snap0".into()));
            }
            Op { args: a, checks }
        }
        Kind::Rename => Op {
            args: s(&["move", "s1", "s1b"]),
            checks: vec![Check::Renamed("s1".into(), "s1b".into())],
        },
        Kind::Restore => {
            let name = *rng.pick(&["s1", "r1"]);
            let mut checks = vec![Check::Mark(
                name.into(),
                BEFORE.into(),
                vec![BEFORE.into(), AFTER.into()],
            )];
            if name == "r1" {
                checks.push(Check::AlwaysRunning("r1".into()));
            }
            Op {
                args: s(&["restore", name, "snap0"]),
                checks,
            }
        }
        Kind::ImageImport => {
            t.ok(&["image", "delete", "bb"])?;
            let img = t.env.image.to_str().ok_or("utf-8")?.to_owned();
            Op {
                args: vec![
                    "image".into(),
                    "import".into(),
                    img,
                    "--alias".into(),
                    "bb".into(),
                ],
                checks: vec![Check::Image("bb".into(), true)],
            }
        }
        Kind::ImageDelete => Op {
            args: s(&["image", "delete", "bb"]),
            checks: vec![Check::Image("bb".into(), false)],
        },
        Kind::Publish => {
            let src = *rng.pick(&["s1", "s1/snap0", "r1/snap0"]);
            Op {
                args: s(&["publish", src, "--alias", "pub1"]),
                checks: vec![Check::Image("pub1".into(), true)],
            }
        }
        Kind::Profile => match rng.below(4) {
            0 => Op {
                args: s(&["profile", "set", "pr1", "user.k", "v1"]),
                checks: vec![Check::ProfileKey(
                    "pr1".into(),
                    "user.k".into(),
                    "v1".into(),
                )],
            },
            1 => Op {
                // Applies to every instance, running ones live.
                args: s(&["profile", "set", "default", "limits.processes", "700"]),
                checks: vec![Check::ProfileKey(
                    "default".into(),
                    "limits.processes".into(),
                    "700".into(),
                )],
            },
            2 => Op {
                args: s(&["profile", "create", "pr2"]),
                checks: vec![Check::Profile("pr2".into(), true)],
            },
            _ => Op {
                args: s(&["profile", "delete", "pr1"]),
                checks: vec![Check::Profile("pr1".into(), false)],
            },
        },
        Kind::Config => {
            let (name, key, value) = *rng.pick(&[
                ("keep", "limits.memory", "200MB"),
                ("r1", "limits.processes", "300"),
                ("s1", "user.x", "1"),
                ("keep", "user.x", "2"),
            ]);
            Op {
                args: s(&["config", "set", name, key, value]),
                checks: vec![Check::InstanceKey(name.into(), key.into(), value.into())],
            }
        }
        Kind::PoolCreate => {
            let a = if t.env.no_btrfs.is_none() && rng.chance(1, 2) {
                s(&["storage", "create", "p2", "btrfs", "size=256MiB"])
            } else {
                s(&["storage", "create", "p2", "dir"])
            };
            Op {
                args: a,
                checks: vec![Check::Pool("p2".into(), true)],
            }
        }
        Kind::PoolDelete => {
            if t.env.no_btrfs.is_none() && rng.chance(1, 2) {
                t.ok(&["storage", "create", "p3", "btrfs", "size=256MiB"])?;
            } else {
                t.ok(&["storage", "create", "p3", "dir"])?;
            }
            Op {
                args: s(&["storage", "delete", "p3"]),
                checks: vec![Check::Pool("p3".into(), false)],
            }
        }
        Kind::VolumeCreate => {
            let p = pool(t, rng);
            Op {
                args: s(&["storage", "volume", "create", p, "v2"]),
                checks: vec![Check::Volume(p.into(), "v2".into(), true)],
            }
        }
        Kind::VolumeSnapshot => Op {
            args: s(&["storage", "volume", "snapshot", "default", "vol1", "vs1"]),
            checks: vec![Check::VolumeSnapshot(
                "default".into(),
                "vol1".into(),
                "vs1".into(),
            )],
        },
        Kind::VolumeCopy => {
            let p = pool(t, rng);
            let mut a = s(&["storage", "volume", "copy", "default/vol1"]);
            a.push(format!("{p}/v3"));
            if rng.chance(1, 2) {
                a.push("--volume-only".into());
            }
            Op {
                args: a,
                checks: vec![Check::Volume(p.into(), "v3".into(), true)],
            }
        }
        Kind::VolumeDelete => Op {
            args: s(&["storage", "volume", "delete", "default", "vol1"]),
            checks: vec![Check::Volume("default".into(), "vol1".into(), false)],
        },
        Kind::NetworkCreate => Op {
            args: s(&[
                "network",
                "create",
                "chbr1",
                "ipv4.address=10.202.0.1/24",
                "ipv4.nat=true",
                "ipv6.address=none",
            ]),
            checks: vec![Check::Network("chbr1".into(), true)],
        },
        Kind::NetworkDelete => Op {
            args: s(&["network", "delete", "chbr0"]),
            checks: vec![Check::Network("chbr0".into(), false)],
        },
        Kind::Delete => {
            let name = *rng.pick(&["s1", "r1"]);
            Op {
                args: s(&["delete", name, "--force"]),
                checks: vec![Check::Instance(name.into(), false)],
            }
        }
        Kind::StartStop => {
            if rng.chance(1, 2) {
                Op {
                    args: s(&["start", "s1"]),
                    checks: vec![Check::Running("s1".into())],
                }
            } else {
                Op {
                    args: s(&["stop", "r1", "--force"]),
                    checks: vec![Check::Stopped("r1".into())],
                }
            }
        }
        Kind::Device => plan_device(t, rng)?,
        Kind::Migration => {
            // The trial's daemon as a remote of its own (see `Trial::cli`): its HTTPS address
            // is in the trial's network namespace, where any port is free.
            t.ok(&["config", "set", "core.https_address", "127.0.0.1:8443"])?;
            t.ok(&["config", "set", "core.trust_password", "chaos"])?;
            t.ok(&[
                "remote",
                "add",
                "self",
                "127.0.0.1:8443",
                "--accept-certificate",
                "--password",
                "chaos",
            ])?;
            let moved = rng.chance(1, 2);
            let mut a = s(&[if moved { "move" } else { "copy" }, "self:s1", "local:m2"]);
            let snapshots = rng.chance(2, 3);
            if !snapshots {
                a.push("--instance-only".into());
            }
            Op {
                args: a,
                checks: vec![Check::Migrated {
                    src: "s1".into(),
                    dst: "m2".into(),
                    moved,
                    snapshots,
                }],
            }
        }
        Kind::Concurrent
        | Kind::KillMonitor
        | Kind::KillInit
        | Kind::DiskFull
        | Kind::InodesFull => return Err(format!("{} is not an operation", kind.name())),
    };
    Ok(op)
}

/// The host directory `device` trials plug in (below the trial's directory).
pub fn device_source(t: &Trial) -> Result<String> {
    let host = t.dir.join("hostdir");
    fs::create_dir_all(&host).map_err(|e| format!("{}: {e}", host.display()))?;
    fs::write(host.join("hello"), "hello\n").map_err(|e| e.to_string())?;
    host.to_str()
        .map(str::to_owned)
        .ok_or_else(|| "utf-8 trial directory".into())
}

/// A `device` trial's operation: a disk or unix-char device added to or removed from a running
/// instance (`keep` or `r1`), or a profile's disk device added or removed while `keep` and `r1`
/// use the profile. A removal's device is added first.
fn plan_device(t: &mut Trial, rng: &mut Rng) -> Result<Op> {
    let src = format!("source={}", device_source(t)?);
    let name = *rng.pick(&["keep", "r1"]);
    let remove = rng.chance(1, 2);
    let (add, dev): (Vec<String>, &str) = match rng.below(3) {
        0 => (
            s(&[
                "config",
                "device",
                "add",
                name,
                "hx",
                "disk",
                &src,
                "path=/mnt/x",
            ]),
            "hx",
        ),
        1 => (
            s(&[
                "config",
                "device",
                "add",
                name,
                "nul",
                "unix-char",
                "source=/dev/null",
                "path=/dev/chaosnull",
            ]),
            "nul",
        ),
        _ => {
            for i in ["keep", "r1"] {
                t.ok(&["profile", "add", i, "pr1"])?;
            }
            let a = s(&[
                "profile",
                "device",
                "add",
                "pr1",
                "px",
                "disk",
                &src,
                "path=/mnt/p",
            ]);
            if remove {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                t.ok(&a)?;
                return Ok(Op {
                    args: s(&["profile", "device", "remove", "pr1", "px"]),
                    checks: vec![Check::ProfileDevice("pr1".into(), "px".into(), false)],
                });
            }
            return Ok(Op {
                args: a,
                checks: vec![Check::ProfileDevice("pr1".into(), "px".into(), true)],
            });
        }
    };
    if remove {
        let a: Vec<&str> = add.iter().map(String::as_str).collect();
        t.ok(&a)?;
        return Ok(Op {
            args: s(&["config", "device", "remove", name, dev]),
            checks: vec![Check::Device(name.into(), dev.into(), false)],
        });
    }
    Ok(Op {
        args: add,
        checks: vec![Check::Device(name.into(), dev.into(), true)],
    })
}

/// After the kill (or the fault): the operation's promises, then the invariants.
pub fn after(t: &mut Trial, checks: &[Check], acked: bool) {
    // Give a restarted daemon's start (recovery, autostart) a moment to settle.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for c in checks {
        match promised(t, c, acked) {
            Ok(Some(v)) => t.violation(&format!(
                "{} ({c:?}): {v}",
                if acked {
                    "acknowledged"
                } else {
                    "not acknowledged"
                }
            )),
            Ok(None) => {}
            Err(e) => t.violation(&format!("checking {c:?}: {e}")),
        }
    }
    for v in invariants(t) {
        t.violation(&v);
    }
}

fn status(t: &Trial, name: &str) -> Result<String> {
    Ok(t.get(&format!("/1.0/instances/{name}/state"))?
        .get("status")
        .as_str()
        .unwrap_or("")
        .to_owned())
}

/// A broken promise, if any.
fn promised(t: &Trial, c: &Check, acked: bool) -> Result<Option<String>> {
    let inst = |n: &str| t.exists(&format!("/1.0/instances/{n}"));
    let want = |cond: bool, what: String| Ok((!cond).then_some(what));
    match c {
        Check::Instance(n, present) => {
            if !acked {
                return Ok(None);
            }
            let e = inst(n)?;
            want(e == *present, format!("instance {n} exists: {e}"))
        }
        Check::Running(n) | Check::Stopped(n) => {
            if !acked {
                return Ok(None);
            }
            let want_st = if matches!(c, Check::Running(_)) {
                "Running"
            } else {
                "Stopped"
            };
            let st = status(t, n)?;
            want(st == want_st, format!("{n} is {st}"))
        }
        Check::AlwaysRunning(n) => {
            let st = status(t, n)?;
            want(
                st == "Running",
                format!("{n} is {st}, not Running as before"),
            )
        }
        Check::Renamed(from, to) => {
            let (a, b) = (inst(from)?, inst(to)?);
            if acked {
                want(!a && b, format!("{from} exists: {a}, {to} exists: {b}"))
            } else {
                want(a != b, format!("{from} exists: {a}, {to} exists: {b}"))
            }
        }
        Check::Mark(n, acked_value, others) => {
            if !inst(n)? {
                return if acked {
                    Ok(Some(format!("{n} is gone")))
                } else {
                    Ok(None)
                };
            }
            let m = t.mark(n)?;
            if acked || others.is_empty() {
                want(&m == acked_value, format!("{n}:/root/mark is {m:?}"))
            } else {
                want(others.contains(&m), format!("{n}:/root/mark is {m:?}"))
            }
        }
        Check::Snapshot(n, snap) => {
            if !acked {
                return Ok(None);
            }
            let e = t.exists(&format!("/1.0/instances/{n}/snapshots/{snap}"))?;
            want(e, format!("snapshot {n}/{snap} missing"))
        }
        Check::Image(alias, present) => {
            if !acked {
                return Ok(None);
            }
            let e = t.exists(&format!("/1.0/images/aliases/{alias}"))?;
            want(e == *present, format!("image alias {alias} exists: {e}"))
        }
        Check::Profile(p, present) => {
            if !acked {
                return Ok(None);
            }
            let e = t.exists(&format!("/1.0/profiles/{p}"))?;
            want(e == *present, format!("profile {p} exists: {e}"))
        }
        Check::ProfileKey(p, k, v) => {
            if !acked {
                return Ok(None);
            }
            let got = t.get(&format!("/1.0/profiles/{p}"))?;
            let got = got.get("config").get(k).as_str().map(str::to_owned);
            want(
                got.as_deref() == Some(v),
                format!("profile {p} {k}={got:?}"),
            )
        }
        Check::InstanceKey(n, k, v) => {
            if !acked {
                return Ok(None);
            }
            let got = t.get(&format!("/1.0/instances/{n}"))?;
            let got = got.get("config").get(k).as_str().map(str::to_owned);
            want(got.as_deref() == Some(v), format!("{n} {k}={got:?}"))
        }
        Check::OnPool(n, to, from) => {
            let got = pool_of(t, n)?;
            if acked {
                want(&got == to, format!("{n} on pool {got}, not {to}"))
            } else {
                want(
                    &got == to || &got == from,
                    format!("{n} on pool {got}, neither {from} nor {to}"),
                )
            }
        }
        Check::Pool(p, present) => {
            if !acked {
                return Ok(None);
            }
            let e = t.exists(&format!("/1.0/storage-pools/{p}"))?;
            want(e == *present, format!("pool {p} exists: {e}"))
        }
        Check::Volume(p, v, present) => {
            if !acked {
                return Ok(None);
            }
            let e = t.exists(&format!("/1.0/storage-pools/{p}/volumes/custom/{v}"))?;
            want(e == *present, format!("volume {p}/{v} exists: {e}"))
        }
        Check::VolumeSnapshot(p, v, snap) => {
            if !acked {
                return Ok(None);
            }
            let e = t.exists(&format!(
                "/1.0/storage-pools/{p}/volumes/custom/{v}/snapshots/{snap}"
            ))?;
            want(e, format!("volume snapshot {p}/{v}/{snap} missing"))
        }
        Check::Network(n, present) => {
            if !acked {
                return Ok(None);
            }
            let e = t.exists(&format!("/1.0/networks/{n}"))?;
            want(e == *present, format!("network {n} exists: {e}"))
        }
        Check::Device(n, dev, present) => {
            if !acked {
                return Ok(None);
            }
            let got = t.get(&format!("/1.0/instances/{n}"))?;
            let e = !got.get("devices").get(dev).is_null();
            want(e == *present, format!("device {dev} of {n} exists: {e}"))
        }
        Check::ProfileDevice(p, dev, present) => {
            if !acked {
                return Ok(None);
            }
            let got = t.get(&format!("/1.0/profiles/{p}"))?;
            let e = !got.get("devices").get(dev).is_null();
            want(
                e == *present,
                format!("device {dev} of profile {p} exists: {e}"),
            )
        }
        Check::Migrated {
            src,
            dst,
            moved,
            snapshots,
        } => {
            let (a, b) = (inst(src)?, inst(dst)?);
            eprintln!(
                "chaos: trial {} {}: {src} exists: {a}, {dst} exists: {b}",
                t.n,
                if *moved { "move" } else { "copy" }
            );
            let mut bad = Vec::new();
            match (acked, *moved) {
                (true, false) if !(a && b) => bad.push("a copy, not both there".to_owned()),
                (true, true) if a || !b => bad.push("a move, not only the target there".into()),
                (false, false) if !a => bad.push("a copy, the source gone".into()),
                (false, true) if !a && !b => bad.push("a move, neither there".into()),
                _ => {}
            }
            // Each that exists is whole: its marker file, and its snapshot (the source's
            // always, the target's unless --instance-only).
            for (n, there, snap) in [(src, a, true), (dst, b, *snapshots)] {
                if !there {
                    continue;
                }
                let m = t.mark(n)?;
                if m != AFTER {
                    bad.push(format!("{n}:/root/mark is {m:?}"));
                }
                let has = t.exists(&format!("/1.0/instances/{n}/snapshots/snap0"))?;
                if has != snap {
                    bad.push(format!("{n} has snapshot snap0: {has}"));
                }
            }
            want(
                bad.is_empty(),
                format!("{src} exists: {a}, {dst} exists: {b}: {}", bad.join("; ")),
            )
        }
    }
}

// ------------------------------------------------------------------------------------------
// the records: bivy's state database, read as the daemon wrote it

/// What the database records, as the invariants need it.
#[derive(Default, Debug)]
pub struct Records {
    /// name -> (pool, volume, snapshot volumes)
    pub instances: BTreeMap<String, (String, String, BTreeSet<String>)>,
    /// pool -> volume dir -> snapshot volume dirs (custom volumes)
    pub volumes: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// pool -> driver
    pub pools: BTreeMap<String, String>,
    pub networks: BTreeSet<String>,
}

/// The stored state: the database document with the changes of its log (`database.log`, which
/// continues the document whose `log` its first line names; a last line cut short is a change
/// never acknowledged, as the daemon reads it).
fn stored(bivy: &Path) -> Result<Json> {
    let p = bivy.join("database.json");
    let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut db = Json::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    let lp = bivy.join("database.log");
    let log = match fs::read_to_string(&lp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", lp.display())),
    };
    let mut lines = log.split_inclusive('\n').peekable();
    let header = lines
        .next()
        .and_then(|h| Json::parse(h.strip_suffix('\n')?).ok());
    let ours = db.get("log").as_i64().filter(|&n| n > 0);
    if ours.is_none() || header.is_none_or(|h| h.get("log").as_i64() != ours) {
        return Ok(db);
    }
    let Json::Obj(top) = &mut db else {
        return Err(format!("{}: not an object", p.display()));
    };
    let mut n = 0;
    while let Some(line) = lines.next() {
        n += 1;
        let change = match line.strip_suffix('\n').map(Json::parse) {
            Some(Ok(c)) => c,
            _ if lines.peek().is_none() => break,
            _ => return Err(format!("{}: change {n} is not JSON", lp.display())),
        };
        if let Json::Obj(instances) = top.entry("instances".into()).or_insert(Json::Null) {
            for (name, rec) in change.get("set").members() {
                instances.insert(name.to_owned(), rec.clone());
            }
            for name in change.get("del").items() {
                instances.remove(name.as_str().unwrap_or_default());
            }
        }
        for (k, v) in change.get("rest").members() {
            if k != "schema" && k != "log" {
                top.insert(k.to_owned(), v.clone());
            }
        }
    }
    Ok(db)
}

pub fn records(bivy: &Path) -> Result<Records> {
    let db = stored(bivy)?;
    let mut r = Records::default();
    let str_of = |v: &Json, k: &str| v.get(k).as_str().unwrap_or("").to_owned();
    for (name, i) in db.get("instances").members() {
        let snaps = i
            .get("snapshots")
            .items()
            .iter()
            .map(|s| str_of(s, "volume"))
            .collect();
        r.instances.insert(
            name.to_owned(),
            (str_of(i, "pool"), str_of(i, "volume"), snaps),
        );
    }
    for (pool, vols) in db.get("volumes").members() {
        let m = r.volumes.entry(pool.to_owned()).or_default();
        for (_, v) in vols.members() {
            let snaps = v
                .get("snapshots")
                .items()
                .iter()
                .map(|s| str_of(s, "volume"))
                .collect();
            m.insert(str_of(v, "volume"), snaps);
        }
    }
    for (name, p) in db.get("pools").members() {
        r.pools.insert(name.to_owned(), str_of(p, "driver"));
    }
    for (name, _) in db.get("networks").members() {
        r.networks.insert(name.to_owned());
    }
    Ok(r)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ------------------------------------------------------------------------------------------
// host facts: mounts, loop devices, cgroups

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo's `\ooo` escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Loop devices whose backing file is below `dir`: (device, backing file).
pub fn loops_below(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for name in entries(Path::new("/sys/block")) {
        if !name.starts_with("loop") {
            continue;
        }
        let f = format!("/sys/block/{name}/loop/backing_file");
        if let Ok(b) = fs::read_to_string(&f) {
            let b = PathBuf::from(b.trim().trim_end_matches(" (deleted)"));
            if b.starts_with(dir) {
                v.push((format!("/dev/{name}"), b));
            }
        }
    }
    v
}

/// The cgroup hierarchies bivy makes a `bivy/` directory in.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut v: Vec<PathBuf> = entries(root)
        .into_iter()
        .map(|e| root.join(e))
        .filter(|p| p.join("bivy").is_dir())
        .collect();
    if root.join("bivy").is_dir() {
        v.push(root.to_path_buf());
    }
    v
}

/// Our instances' cgroups: (hierarchy, instance name, path). An instance's is
/// `<name>.<suffix>`, or `<name>.<suffix>.<n>` for a run started while a restore's killed run
/// still ended in the first.
fn own_cgroups(suffix: &str) -> Vec<(PathBuf, String, PathBuf)> {
    let tail = format!(".{suffix}");
    let mut v = Vec::new();
    for h in hierarchies() {
        for e in entries(&h.join("bivy")) {
            let name = e.strip_suffix(&tail).or_else(|| {
                let (b, n) = e.rsplit_once('.')?;
                (!n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                    .then_some(b)?
                    .strip_suffix(&tail)
            });
            if let Some(name) = name {
                let p = h.join("bivy").join(&e);
                if p.is_dir() {
                    v.push((h.clone(), name.to_owned(), p));
                }
            }
        }
    }
    v
}

fn walk_dirs(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    for e in entries(p) {
        let c = p.join(e);
        if c.is_dir() {
            walk_dirs(&c, out);
        }
    }
}

/// Processes of this trial: those in our cgroups (our containers) and our monitors.
pub fn own_processes(bivy: &Path, suffix: &str) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for (_, _, p) in own_cgroups(suffix) {
        let mut dirs = Vec::new();
        walk_dirs(&p, &mut dirs);
        for d in dirs {
            let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    for name in entries(&bivy.join("run")) {
        let f = bivy.join("run").join(name).join("monitor.pid");
        let pid = fs::read_to_string(f)
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()));
        if let Some(pid) = pid {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains("monitor") {
                pids.insert(pid);
            }
        }
    }
    pids
}

/// rmdir our cgroups, deepest first.
pub fn remove_own_cgroups(suffix: &str) {
    for (_, _, p) in own_cgroups(suffix) {
        let mut dirs = Vec::new();
        walk_dirs(&p, &mut dirs);
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// The paths `device` trials plug devices at, in a container.
fn is_trial_device_path(p: &str) -> bool {
    p.starts_with("/mnt/") || p.starts_with("/dev/chaos")
}

/// The container paths of an instance's (API view) expanded disk and unix devices, root disk
/// aside: what its mount namespace must show.
fn mounted_devices(inst: &Json) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, d) in inst.get("expanded_devices").members() {
        let ty = d.get("type").as_str().unwrap_or("");
        if !matches!(ty, "disk" | "unix-char" | "unix-block") {
            continue;
        }
        let path = d.get("path").as_str().filter(|p| !p.is_empty());
        let path = path.or_else(|| d.get("source").as_str()).unwrap_or("");
        if !path.is_empty() && path != "/" {
            out.insert(path.trim_end_matches('/').to_owned());
        }
    }
    out
}

/// The mount points of process `pid`'s mount namespace, as its root sees them.
pub fn mount_points_of(pid: i64) -> Result<BTreeSet<String>> {
    let f = format!("/proc/{pid}/mountinfo");
    let info = fs::read_to_string(&f).map_err(|e| format!("{f}: {e}"))?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect())
}

// ------------------------------------------------------------------------------------------
// the invariants

/// Everything that must hold whatever the operation did; each violation as a sentence.
pub fn invariants(t: &Trial) -> Vec<String> {
    let mut v = Vec::new();
    if let Err(e) = invariants_into(t, &mut v) {
        v.push(format!("cannot check: {e}"));
    }
    v
}

fn invariants_into(t: &Trial, v: &mut Vec<String>) -> Result {
    match t.run(&["list"]) {
        Ok((true, _, _)) => {}
        Ok((false, _, e)) => v.push(format!("`bivy list` fails: {}", e.trim())),
        Err(e) => v.push(format!("`bivy list`: {e}")),
    }
    let list = t.get("/1.0/instances?recursion=1")?;
    let rec = records(&t.bivy)?;
    let mut running = BTreeSet::new();
    let mut nics = 0usize;
    let mut device_paths: Vec<(String, i64, BTreeSet<String>)> = Vec::new();
    let api_names: BTreeSet<String> = list
        .items()
        .iter()
        .filter_map(|i| i.get("name").as_str().map(str::to_owned))
        .collect();
    let db_names: BTreeSet<String> = rec.instances.keys().cloned().collect();
    if api_names != db_names {
        v.push(format!(
            "the API lists {api_names:?}, the database records {db_names:?}"
        ));
    }
    for i in list.items() {
        let name = i.get("name").as_str().unwrap_or("?");
        let st = t.get(&format!("/1.0/instances/{name}/state"))?;
        let status = st.get("status").as_str().unwrap_or("");
        let pid = st.get("pid").as_i64().unwrap_or(0);
        match status {
            "Running" => {
                if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
                    v.push(format!("{name} is Running with init {pid}, which is gone"));
                }
                running.insert(name.to_owned());
                for (_, d) in i.get("expanded_devices").members() {
                    if d.get("type").as_str() == Some("nic") && !d.get("network").is_null() {
                        nics += 1;
                    }
                }
                device_paths.push((name.to_owned(), pid, mounted_devices(i)));
            }
            "Stopped" => {}
            other => v.push(format!("{name} is {other:?} (half-made, frozen or stuck)")),
        }
    }
    if let (Some(want), true) = (t.keep_pid, api_names.contains("keep")) {
        let got = t.init_pid("keep")?;
        if got != Some(want) {
            v.push(format!("keep's init was {want}, now {got:?}"));
        }
    }
    // Devices: what the record says a running container has is what its mount namespace
    // shows, at the paths `device` trials use.
    for (name, pid, want) in &device_paths {
        let Ok(points) = mount_points_of(*pid) else {
            continue; // it stopped since
        };
        for p in want {
            if !points.contains(p) {
                v.push(format!("{name}: a device at {p} is recorded, not mounted"));
            }
        }
        for p in points.iter().filter(|p| is_trial_device_path(p)) {
            if !want.contains(p) {
                v.push(format!("{name}: {p} is mounted, no device records it"));
            }
        }
    }
    // No hot-plug helper of ours still runs (it stages in a mount namespace of its own).
    for pid in entries(Path::new("/proc")) {
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("__hotplug") && cmd.contains(&*t.bivy.to_string_lossy()) {
            v.push(format!("a hot-plug helper still runs: {pid} {cmd}"));
        }
    }
    // Volumes, per pool.
    let pools_dir = t.bivy.join("storage-pools");
    for p in entries(&pools_dir) {
        if !rec.pools.contains_key(&p) {
            v.push(format!("storage-pools/{p}: no pool records it"));
        }
    }
    for pool in rec.pools.keys() {
        let root = pools_dir.join(pool);
        let inst: BTreeMap<&str, &BTreeSet<String>> = rec
            .instances
            .values()
            .filter(|(p, _, _)| p == pool)
            .map(|(_, vol, snaps)| (vol.as_str(), snaps))
            .collect();
        for e in entries(&root.join("containers")) {
            if !inst.contains_key(e.as_str()) {
                v.push(format!("{pool}/containers/{e}: no instance records it"));
            }
        }
        for (vol, snaps) in &inst {
            if !root.join("containers").join(vol).join("rootfs").is_dir() {
                v.push(format!("{pool}/containers/{vol}: recorded, but no rootfs"));
            }
            // A layered volume's image volume stays while it lies over it.
            let over_missing = |dir: &Path| {
                std::fs::read_to_string(dir.join("lower"))
                    .is_ok_and(|l| !Path::new(l.trim()).join("rootfs").is_dir())
            };
            if over_missing(&root.join("containers").join(vol)) {
                v.push(format!(
                    "{pool}/containers/{vol}: lies over a missing image volume"
                ));
            }
            for s in *snaps {
                let dir = root.join("containers-snapshots").join(vol).join(s);
                if !dir.is_dir() {
                    v.push(format!(
                        "{pool}/containers-snapshots/{vol}/{s}: recorded, missing"
                    ));
                } else if over_missing(&dir) {
                    v.push(format!(
                        "{pool}/containers-snapshots/{vol}/{s}: lies over a missing image volume"
                    ));
                }
            }
        }
        for e in entries(&root.join("containers-snapshots")) {
            let snaps = inst.get(e.as_str());
            for s in entries(&root.join("containers-snapshots").join(&e)) {
                if !snaps.is_some_and(|x| x.contains(&s)) {
                    v.push(format!(
                        "{pool}/containers-snapshots/{e}/{s}: no snapshot records it"
                    ));
                }
            }
        }
        let empty = BTreeMap::new();
        let vols = rec.volumes.get(pool).unwrap_or(&empty);
        for e in entries(&root.join("custom")) {
            if !vols.contains_key(&e) {
                v.push(format!("{pool}/custom/{e}: no volume records it"));
            }
        }
        for (vol, snaps) in vols {
            if !root.join("custom").join(vol).is_dir() {
                v.push(format!("{pool}/custom/{vol}: recorded, missing"));
            }
            for s in snaps {
                if !root.join("custom-snapshots").join(vol).join(s).is_dir() {
                    v.push(format!(
                        "{pool}/custom-snapshots/{vol}/{s}: recorded, missing"
                    ));
                }
            }
        }
        for e in entries(&root.join("custom-snapshots")) {
            let snaps = vols.get(&e);
            for s in entries(&root.join("custom-snapshots").join(&e)) {
                if !snaps.is_some_and(|x| x.contains(&s)) {
                    v.push(format!(
                        "{pool}/custom-snapshots/{e}/{s}: no volume snapshot records it"
                    ));
                }
            }
        }
    }
    // Images.
    let images: BTreeSet<String> = t
        .get("/1.0/images")?
        .items()
        .iter()
        .filter_map(|u| u.as_str())
        .filter_map(|u| u.rsplit('/').next().map(str::to_owned))
        .collect();
    for e in entries(&t.bivy.join("images")) {
        let fp: String = e.chars().take(64).collect();
        let is_fp = fp.len() == 64 && fp.chars().all(|c| c.is_ascii_hexdigit());
        if is_fp {
            if !images.contains(&fp) {
                v.push(format!("images/{e}: no image records it"));
            }
        } else if e != "aliases.json" && e != ".lock" {
            v.push(format!("images/{e}: a stray file"));
        }
    }
    for pool in rec.pools.keys() {
        // The image volumes layered volumes lie over (`lower`): kept after their image's delete.
        let root = pools_dir.join(pool);
        let mut lowers = BTreeSet::new();
        for vol in entries(&root.join("containers")) {
            lowers.insert(root.join("containers").join(vol));
        }
        for vol in entries(&root.join("containers-snapshots")) {
            for s in entries(&root.join("containers-snapshots").join(&vol)) {
                lowers.insert(root.join("containers-snapshots").join(&vol).join(s));
            }
        }
        let lowers: BTreeSet<PathBuf> = lowers
            .iter()
            .filter_map(|v| std::fs::read_to_string(v.join("lower")).ok())
            .map(|l| PathBuf::from(l.trim()))
            .collect();
        for e in entries(&root.join("images")) {
            // A `dir` pool's spare copy of an image or spare layered volume over it (a launch
            // takes it); a half-made one (`.spare.tmp`, `.layered-spare.tmp`) is removed by
            // the start.
            let fp = [".spare", ".layered-spare"]
                .iter()
                .find_map(|s| e.strip_suffix(s))
                .unwrap_or(&e);
            if !images.contains(fp) && !lowers.contains(&root.join("images").join(&e)) {
                v.push(format!("{pool}/images/{e}: no image records it"));
            }
        }
    }
    for e in entries(&t.bivy.join("pools-creating")) {
        v.push(format!("pools-creating/{e}: left by a pool create"));
    }
    for e in entries(&t.bivy.join("disks")) {
        let pool = e.strip_suffix(".img").unwrap_or(&e);
        if !rec.pools.contains_key(pool) {
            v.push(format!("disks/{e}: no pool records it"));
        }
    }
    // Mounts and loop devices.
    let fs_mount = t.fs.as_ref().map(|(m, _)| m.clone());
    let fs_img = t.fs.as_ref().map(|(_, i)| i.clone());
    for m in mounts_below(&t.dir) {
        let ok = Some(&m) == fs_mount.as_ref()
            || rec
                .pools
                .iter()
                .any(|(p, drv)| drv == "btrfs" && m == pools_dir.join(p));
        if !ok {
            v.push(format!("{} is mounted without a reason", m.display()));
        }
    }
    for (dev, file) in loops_below(&t.dir) {
        let ok = Some(&file) == fs_img.as_ref()
            || rec
                .pools
                .keys()
                .any(|p| file == t.bivy.join("disks").join(format!("{p}.img")));
        if !ok {
            v.push(format!("{dev} ({}) without a pool", file.display()));
        }
    }
    // Cgroups: one per running instance, none frozen; no run a restore killed left unfinished
    // (its run directory moved aside, its cgroup beside the next run's).
    for e in entries(&t.bivy.join("run")) {
        if e.starts_with(".ended.") {
            v.push(format!("run/{e}: a killed run that no daemon finished"));
        }
    }
    let mut seen = BTreeSet::new();
    for (h, name, path) in own_cgroups(&t.suffix) {
        if !seen.insert((h.clone(), name.clone())) {
            v.push(format!("a second cgroup {} of {name}", path.display()));
        }
        if !running.contains(&name) {
            v.push(format!(
                "cgroup {} without a running instance",
                path.display()
            ));
            continue;
        }
        let state = fs::read_to_string(path.join("freezer.state")).unwrap_or_default();
        if !state.trim().is_empty() && state.trim() != "THAWED" {
            v.push(format!(
                "{name} is frozen ({}: {})",
                h.display(),
                state.trim()
            ));
        }
        let freeze = fs::read_to_string(path.join("cgroup.freeze")).unwrap_or_default();
        if freeze.trim() == "1" {
            v.push(format!(
                "{name} is frozen (cgroup.freeze in {})",
                h.display()
            ));
        }
    }
    // The trial's network namespace: bridges, veths and nftables rules.
    let link_names = |kind: &str| -> Result<Vec<(String, Option<String>)>> {
        let out = t.netns_run("ip", &["-o", "link", "show", "type", kind])?;
        Ok(out
            .lines()
            .map(|l| {
                let name = l.split(": ").nth(1).unwrap_or("");
                let name = name.split('@').next().unwrap_or(name).to_owned();
                let master = l
                    .split_whitespace()
                    .skip_while(|w| *w != "master")
                    .nth(1)
                    .map(str::to_owned);
                (name, master)
            })
            .collect())
    };
    let bridges: BTreeSet<String> = link_names("bridge")?.into_iter().map(|(n, _)| n).collect();
    let veths = link_names("veth")?;
    for (name, master) in &veths {
        if !master.as_ref().is_some_and(|m| rec.networks.contains(m)) {
            v.push(format!(
                "veth {name} is on no managed network (master {master:?})"
            ));
        }
    }
    let veths = veths.len();
    for b in &bridges {
        if !rec.networks.contains(b) {
            v.push(format!("bridge {b} without a network record"));
        }
    }
    for n in &rec.networks {
        if !bridges.contains(n) {
            v.push(format!("network {n} has no bridge"));
        }
    }
    if veths != nics {
        v.push(format!(
            "{veths} veth(s) in the namespace, {nics} nic(s) on running instances"
        ));
    }
    let rules = t.netns_run("nft", &["list", "ruleset"])?;
    for l in rules.lines() {
        let l = l.trim();
        if let Some(chain) = l.strip_prefix("chain ") {
            let chain = chain.trim_end_matches(" {").trim();
            if let Some((_, bridge)) = chain.split_once('.') {
                if !rec.networks.contains(bridge) {
                    v.push(format!("nft chain {chain} without a network"));
                }
            }
        }
        if let Some(i) = l.find("comment \"bivy:") {
            let b = l[i + 14..].split('"').next().unwrap_or("");
            if !rec.networks.contains(b) {
                v.push(format!("nft rule `{l}` without a network"));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// teardown

/// Every instance started, stopped and deleted; every image launched and deleted; volumes,
/// profiles, networks and pools deleted; then nothing may be left.
pub fn teardown(t: &mut Trial) -> Result {
    let mut bad = Vec::new();
    let names: Vec<String> = t
        .get("/1.0/instances")?
        .items()
        .iter()
        .filter_map(|u| u.as_str())
        .filter_map(|u| u.rsplit('/').next().map(str::to_owned))
        .collect();
    // The `device` trials' devices are removed (hot-unplugged from running instances) and
    // are gone from the containers' mount namespaces.
    let mut unplug: Vec<Vec<String>> = Vec::new();
    for n in &names {
        for (dev, d) in t
            .get(&format!("/1.0/instances/{n}"))?
            .get("devices")
            .members()
        {
            if is_trial_device_path(d.get("path").as_str().unwrap_or("")) {
                unplug.push(vec![
                    "config".into(),
                    "device".into(),
                    "remove".into(),
                    n.clone(),
                    dev.to_owned(),
                ]);
            }
        }
    }
    for u in t.get("/1.0/profiles")?.items() {
        let Some(p) = u.as_str().and_then(|u| u.rsplit('/').next()) else {
            continue;
        };
        for (dev, d) in t
            .get(&format!("/1.0/profiles/{p}"))?
            .get("devices")
            .members()
        {
            if is_trial_device_path(d.get("path").as_str().unwrap_or("")) {
                unplug.push(vec![
                    "profile".into(),
                    "device".into(),
                    "remove".into(),
                    p.to_owned(),
                    dev.to_owned(),
                ]);
            }
        }
    }
    for a in &unplug {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        if let Err(e) = t.ok(&a) {
            bad.push(format!("cannot remove a device: {e}"));
        }
    }
    if !unplug.is_empty() {
        for n in &names {
            let Some(pid) = t.init_pid(n)? else { continue };
            let left: Vec<String> = mount_points_of(i64::from(pid))
                .unwrap_or_default()
                .into_iter()
                .filter(|p| is_trial_device_path(p))
                .collect();
            if !left.is_empty() {
                bad.push(format!(
                    "{n}: {left:?} still mounted after its devices were removed"
                ));
            }
        }
    }
    for n in &names {
        if status(t, n)? == "Stopped" {
            if let Err(e) = t.ok(&["start", n]) {
                bad.push(format!("cannot start {n}: {e}"));
            }
        }
        if let Err(e) = t.ok(&["stop", n, "--force"]) {
            bad.push(format!("cannot stop {n}: {e}"));
        }
        if let Err(e) = t.ok(&["delete", n, "--force"]) {
            bad.push(format!("cannot delete {n}: {e}"));
        }
    }
    let images: Vec<String> = t
        .get("/1.0/images")?
        .items()
        .iter()
        .filter_map(|u| u.as_str())
        .filter_map(|u| u.rsplit('/').next().map(str::to_owned))
        .collect();
    for fp in &images {
        match t.ok(&["launch", fp, "probe"]) {
            Ok(_) => {
                if let Err(e) = t.ok(&["delete", "probe", "--force"]) {
                    bad.push(format!("cannot delete probe of image {fp}: {e}"));
                }
            }
            Err(e) => bad.push(format!("image {fp} does not launch: {e}")),
        }
        if let Err(e) = t.ok(&["image", "delete", fp]) {
            bad.push(format!("cannot delete image {fp}: {e}"));
        }
    }
    let pools: Vec<String> = t
        .get("/1.0/storage-pools")?
        .items()
        .iter()
        .filter_map(|u| u.as_str())
        .filter_map(|u| u.rsplit('/').next().map(str::to_owned))
        .collect();
    for p in &pools {
        let vols = t.get(&format!("/1.0/storage-pools/{p}/volumes/custom"))?;
        for u in vols.items().iter().filter_map(|u| u.as_str()) {
            let Some(name) = u.rsplit('/').next() else {
                continue;
            };
            if name.contains("%2F") || u.contains("/snapshots/") {
                continue;
            }
            if let Err(e) = t.ok(&["storage", "volume", "delete", p, name]) {
                bad.push(format!("cannot delete volume {p}/{name}: {e}"));
            }
        }
    }
    for u in t.get("/1.0/profiles")?.items() {
        let Some(p) = u.as_str().and_then(|u| u.rsplit('/').next()) else {
            continue;
        };
        if p != "default" {
            if let Err(e) = t.ok(&["profile", "delete", p]) {
                bad.push(format!("cannot delete profile {p}: {e}"));
            }
        }
    }
    for n in records(&t.bivy)?.networks {
        if let Err(e) = t.ok(&["network", "delete", &n]) {
            bad.push(format!("cannot delete network {n}: {e}"));
        }
    }
    for p in &pools {
        if p != "default" {
            if let Err(e) = t.ok(&["storage", "delete", p]) {
                bad.push(format!("cannot delete pool {p}: {e}"));
            }
        }
    }
    for b in bad {
        t.violation(&b);
    }
    // Nothing is left: the same invariants over an empty world.
    for v in invariants(t) {
        t.violation(&format!("after deleting everything: {v}"));
    }
    let default = t.bivy.join("storage-pools/default");
    for sub in [
        "containers",
        "containers-snapshots",
        "custom",
        "custom-snapshots",
        "images",
    ] {
        for e in entries(&default.join(sub)) {
            t.violation(&format!(
                "after deleting everything: default/{sub}/{e} remains"
            ));
        }
    }
    Ok(())
}

/// The pool of instance `n`'s root disk (its expanded devices).
fn pool_of(t: &Trial, n: &str) -> Result<String> {
    let got = t.get(&format!("/1.0/instances/{n}"))?;
    got.get("expanded_devices")
        .get("root")
        .get("pool")
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{n} has no root disk pool"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn records_are_the_document_with_its_log() {
        let dir = std::env::temp_dir().join(format!("xtask-records-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let rec = |vol: &str| format!(r#"{{"pool":"default","volume":"{vol}","snapshots":[]}}"#);
        fs::write(
            dir.join("database.json"),
            format!(
                r#"{{"instances":{{"a":{},"b":{}}},"schema":7,"log":3,"pools":{{"default":{{"driver":"dir"}}}}}}"#,
                rec("va"),
                rec("vb")
            ),
        )
        .unwrap();
        let log = |header: u64, tail: &str| {
            let lines = [
                format!(r#"{{"set":{{"c":{}}},"del":["a"]}}"#, rec("vc")),
                r#"{"set":{},"del":[],"rest":{"schema":7,"log":3,"pools":{},"networks":{"n":{}}}}"#
                    .into(),
            ];
            let text = format!("{{\"log\":{header}}}\n{}\n{}\n{tail}", lines[0], lines[1]);
            fs::write(dir.join("database.log"), text).unwrap();
        };
        log(3, r#"{"set":{"d":"#);
        let r = records(&dir).unwrap();
        assert_eq!(r.instances.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(r.instances["c"].1, "vc");
        assert!(r.pools.is_empty());
        assert_eq!(r.networks.iter().collect::<Vec<_>>(), ["n"]);
        // Another document's log is not read.
        log(2, "");
        let r = records(&dir).unwrap();
        assert_eq!(r.instances.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(r.pools["default"], "dir");
        // A bad line before the last is an error.
        log(3, "{}\n");
        fs::write(
            dir.join("database.log"),
            fs::read_to_string(dir.join("database.log"))
                .unwrap()
                .replacen("{\"set\":{\"c", "{\"set\":{c", 1),
        )
        .unwrap();
        assert!(records(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
