//! `cargo xtask chaos [--trials N] [--seed S] [--trial I] [--kind K]... [--bin PATH] [--round-robin]
//! [--btrfs]`:
//! kill -9 at any moment, then check that nothing acknowledged was lost and nothing is left
//! that no record owns (issue 16).
//!
//! Each trial has a world of its own: a daemon with its own `BIVY_DIR` under `/var/tmp`, in a
//! network namespace a `sleep` of ours holds (so a restarted daemon finds the links and rules
//! the killed one made, as the network tests do), the busybox test image, a long-running
//! container whose init PID is recorded, a stopped and a running instance with a snapshot and a
//! marker file that differs from the snapshot's, a profile, a custom volume with a snapshot, a
//! managed bridge with an explicit 10.x subnet, and (one trial in three, where btrfs pools can
//! be made; every trial with `--btrfs`) a btrfs pool on a loop file. Then one operation of the trial's kind:
//!
//! - a daemon kill kind (launch, snapshot, copy, rename, a move to another pool, restore, image import and delete,
//!   publish, profile and config changes, pool create and delete, custom volume create,
//!   snapshot, copy and delete, network create and delete, instance delete, start and stop;
//!   `device`: a `disk` (a host directory of the trial's at `/mnt/x`) or `unix-char`
//!   (`/dev/null` at `/dev/chaosnull`) device hot-plugged into or out of a running instance,
//!   or a profile's disk device added or removed while running instances use the profile;
//!   `migration`: `bivy copy` or `bivy move` of the stopped instance with a snapshot from the
//!   remote `self:` (the trial's daemon over HTTPS) to `local:` (the same daemon through its
//!   socket), so the daemon is both the migration's source and its target;
//!   `concurrent`: three of launch, snapshot, config, profile, pool, volume and network
//!   creation at once, each on its own objects):
//!   the operation is started through the CLI, the daemon is SIGKILLed after a random delay
//!   from 0 to the operation's typical duration, and restarted (one trial in four kills the
//!   new daemon too, 0..50 ms into its start, while it recovers, and starts another);
//! - `kill-monitor` and `kill-init`: a container's monitor or init is SIGKILLed;
//! - `disk-full` and `inodes-full`: `BIVY_DIR` is on a small ext4 loop filesystem whose blocks
//!   (or inodes) a file of ours fills before an operation; it must succeed or fail with an
//!   error that says so; then the filler goes and the daemon is killed and restarted too.
//!
//! Then the invariants ([`chaos_check`](crate::chaos_check)): what the CLI acknowledged is
//! there, nothing half-made, frozen, mounted, looped, cgrouped, bridged or in nftables without a
//! record, the long-running container kept its init, and every instance starts, stops and is
//! deleted, every image launches and every pool, volume, profile and network is deleted, and
//! no daemon of the trial panicked (its log). A
//! violation is printed with the seed, trial, kind and kill delay (reproduce with
//! `--seed S --trial I`) and fails the run; the trial's daemon log is kept in `target/chaos/`.
//!
//! Everything a trial makes is removed at its end, also on failure: our daemon by its pid, the
//! processes in the cgroups named after our `BIVY_DIR` (our containers and monitors), mounts and
//! loop devices below the trial's directory, the namespace holder.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::chaos_check::{self as check, Check};
use crate::daemon::{self, BgDaemon};
use crate::json::Json;
use crate::util::{self, Result};

// ------------------------------------------------------------------------------------------
// PRNG: xorshift64*, seeded through splitmix64 so nearby seeds give unrelated streams.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

// ------------------------------------------------------------------------------------------
// trial kinds

/// What a trial does to the world, with the typical duration (ms, debug build) of the operation
/// a daemon kill lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Launch,
    Snapshot,
    Copy,
    Rename,
    PoolMove,
    Restore,
    ImageImport,
    ImageDelete,
    Publish,
    Profile,
    Config,
    PoolCreate,
    PoolDelete,
    VolumeCreate,
    VolumeSnapshot,
    VolumeCopy,
    VolumeDelete,
    NetworkCreate,
    NetworkDelete,
    Delete,
    StartStop,
    Device,
    Migration,
    Concurrent,
    KillMonitor,
    KillInit,
    DiskFull,
    InodesFull,
}

pub const KINDS: [Kind; 28] = [
    Kind::Launch,
    Kind::Snapshot,
    Kind::Copy,
    Kind::Rename,
    Kind::PoolMove,
    Kind::Restore,
    Kind::ImageImport,
    Kind::ImageDelete,
    Kind::Publish,
    Kind::Profile,
    Kind::Config,
    Kind::PoolCreate,
    Kind::PoolDelete,
    Kind::VolumeCreate,
    Kind::VolumeSnapshot,
    Kind::VolumeCopy,
    Kind::VolumeDelete,
    Kind::NetworkCreate,
    Kind::NetworkDelete,
    Kind::Delete,
    Kind::StartStop,
    Kind::Device,
    Kind::Migration,
    Kind::Concurrent,
    Kind::KillMonitor,
    Kind::KillInit,
    Kind::DiskFull,
    Kind::InodesFull,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Launch => "launch",
            Kind::Snapshot => "snapshot",
            Kind::Copy => "copy",
            Kind::Rename => "rename",
            Kind::PoolMove => "pool-move",
            Kind::Restore => "restore",
            Kind::ImageImport => "image-import",
            Kind::ImageDelete => "image-delete",
            Kind::Publish => "publish",
            Kind::Profile => "profile",
            Kind::Config => "config",
            Kind::PoolCreate => "pool-create",
            Kind::PoolDelete => "pool-delete",
            Kind::VolumeCreate => "volume-create",
            Kind::VolumeSnapshot => "volume-snapshot",
            Kind::VolumeCopy => "volume-copy",
            Kind::VolumeDelete => "volume-delete",
            Kind::NetworkCreate => "network-create",
            Kind::NetworkDelete => "network-delete",
            Kind::Delete => "delete",
            Kind::StartStop => "start-stop",
            Kind::Device => "device",
            Kind::Migration => "migration",
            Kind::Concurrent => "concurrent",
            Kind::KillMonitor => "kill-monitor",
            Kind::KillInit => "kill-init",
            Kind::DiskFull => "disk-full",
            Kind::InodesFull => "inodes-full",
        }
    }

    /// The typical duration of the operation through the CLI (ms, debug build, this 2-core VM,
    /// as the summary's "op median" column measures it; a btrfs pool's create and delete, a
    /// publish's compression and a first launch's unpack are the slow ones): the kill delay is
    /// uniform in 0..this, so it lands before, in and (sometimes) after the operation.
    fn typical_ms(self) -> u64 {
        match self {
            Kind::Launch => 60,
            Kind::Snapshot => 12,
            Kind::Copy => 40,
            Kind::Rename => 8,
            Kind::PoolMove => 60,
            Kind::Restore => 15,
            Kind::ImageImport => 60,
            Kind::ImageDelete => 10,
            Kind::Publish => 450,
            Kind::Profile => 7,
            Kind::Config => 7,
            Kind::PoolCreate => 150,
            Kind::PoolDelete => 100,
            Kind::VolumeCreate => 6,
            Kind::VolumeSnapshot => 7,
            Kind::VolumeCopy => 10,
            Kind::VolumeDelete => 6,
            Kind::NetworkCreate => 70,
            Kind::NetworkDelete => 60,
            Kind::Delete => 25,
            Kind::StartStop => 35,
            Kind::Device => 45,
            Kind::Migration => 600,
            Kind::Concurrent => 60,
            Kind::KillMonitor | Kind::KillInit | Kind::DiskFull | Kind::InodesFull => 0,
        }
    }

    fn from_name(s: &str) -> Option<Kind> {
        KINDS.iter().copied().find(|k| k.name() == s)
    }
}

// ------------------------------------------------------------------------------------------
// options and the run

struct Opts {
    trials: u64,
    seed: u64,
    only_trial: Option<u64>,
    kinds: Vec<Kind>,
    bin: Option<PathBuf>,
    round_robin: bool,
    btrfs: bool,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        trials: 200,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        only_trial: None,
        kinds: Vec::new(),
        bin: None,
        round_robin: false,
        btrfs: false,
    };
    let mut it = args.iter();
    let num = |v: Option<&String>, what: &str| -> Result<u64> {
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{what} N (a number)"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--trials" => o.trials = num(it.next(), "--trials")?,
            "--seed" => o.seed = num(it.next(), "--seed")?,
            "--trial" => o.only_trial = Some(num(it.next(), "--trial")?),
            "--kind" => {
                let k = it.next().ok_or("--kind NAME")?;
                o.kinds.push(Kind::from_name(k).ok_or_else(|| {
                    format!(
                        "unknown kind `{k}` (one of: {})",
                        KINDS.map(Kind::name).join(", ")
                    )
                })?);
            }
            "--bin" => o.bin = Some(PathBuf::from(it.next().ok_or("--bin PATH")?)),
            "--round-robin" => o.round_robin = true,
            "--btrfs" => o.btrfs = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}` (--trials N, --seed S, --trial I, --kind K, --bin PATH, --round-robin, --btrfs)"
                ))
            }
        }
    }
    if o.kinds.is_empty() {
        o.kinds = KINDS.to_vec();
    }
    Ok(o)
}

/// The machine's facts every trial uses.
pub struct Env {
    pub bin: PathBuf,
    pub image: PathBuf,
    /// Why btrfs pools cannot be made here, if they cannot.
    pub no_btrfs: Option<String>,
    /// Why disk-full trials cannot run here, if they cannot.
    pub no_ext4: Option<String>,
    /// `--btrfs`: every world has the btrfs pool (else one in three).
    pub always_btrfs: bool,
    pub logs: PathBuf,
}

/// One trial's outcome.
pub struct Outcome {
    pub kind: Kind,
    /// `acked`, `cut` (the kill came first), `refused` (an error before the kill), `failed`
    /// (a clear error: disk full), `done` (monitor and init kinds).
    pub result: &'static str,
    pub op_ms: Option<u64>,
    /// When the daemon was killed (ms after the operation started), in kill kinds.
    pub delay_ms: Option<u64>,
    pub violations: Vec<String>,
}

fn bivy_bin(bin: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(b) = bin {
        return fs::canonicalize(&b).map_err(|e| format!("--bin {}: {e}", b.display()));
    }
    util::run(
        "cargo build --bin bivy",
        util::cargo().args(["build", "--bin", "bivy"]),
    )?;
    Ok(util::target_dir().join("debug/bivy"))
}

fn btrfs_supported() -> Option<String> {
    let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("btrfs"))
    {
        return Some("the kernel has no btrfs".into());
    }
    if !util::have("mkfs.btrfs") && !Path::new("/usr/sbin/mkfs.btrfs").exists() {
        return Some("needs mkfs.btrfs (apt-get install btrfs-progs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    None
}

fn ext4_supported() -> Option<String> {
    let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("ext4"))
    {
        return Some("the kernel has no ext4".into());
    }
    if !util::have("mkfs.ext4") && !Path::new("/usr/sbin/mkfs.ext4").exists() {
        return Some("needs mkfs.ext4 (e2fsprogs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    None
}

pub fn run(args: &[String]) -> Result {
    let o = parse_opts(args)?;
    if util::euid() != 0 {
        return Err("chaos needs root (it runs containers)".into());
    }
    for tool in ["unshare", "nsenter", "ip", "nft"] {
        if !util::have(tool) {
            return Err(format!("chaos needs `{tool}` on PATH"));
        }
    }
    let bin = bivy_bin(o.bin)?;
    let bb = crate::image::images_dir().join("busybox.tar.gz");
    let image = if bb.is_file() {
        bb
    } else {
        crate::image::busybox()?
    };
    let logs = util::target_dir().join("chaos");
    util::mkdirs(&logs)?;
    let env = Env {
        bin,
        image,
        no_btrfs: btrfs_supported(),
        no_ext4: ext4_supported(),
        always_btrfs: o.btrfs,
        logs,
    };
    if let Some(why) = &env.no_btrfs {
        eprintln!("chaos: no btrfs pools: {why}");
    }
    let trials: Vec<u64> = match o.only_trial {
        Some(i) => vec![i],
        None => (0..o.trials).collect(),
    };
    eprintln!(
        "chaos: seed {} trials {} kinds {} binary {}",
        o.seed,
        trials.len(),
        o.kinds.len(),
        env.bin.display()
    );
    let t0 = Instant::now();
    let mut outcomes = Vec::new();
    let mut skipped: BTreeMap<&'static str, String> = BTreeMap::new();
    if let Some(why) = &env.no_btrfs {
        skipped.insert("btrfs pools", why.clone());
    }
    for &i in &trials {
        let mut rng = Rng::new(o.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let kind = if o.round_robin {
            o.kinds[(i % o.kinds.len() as u64) as usize]
        } else {
            *rng.pick(&o.kinds)
        };
        if matches!(kind, Kind::DiskFull | Kind::InodesFull) {
            if let Some(why) = &env.no_ext4 {
                skipped.insert(kind.name(), why.clone());
                continue;
            }
        }
        let t = Instant::now();
        let out = run_trial(&env, o.seed, i, kind, &mut rng);
        eprintln!(
            "chaos: trial {i} {}: {}{}{} ({:.1}s){}",
            kind.name(),
            out.result,
            out.delay_ms
                .map(|d| format!(", killed at {d} ms"))
                .unwrap_or_default(),
            out.op_ms
                .map(|d| format!(", done in {d} ms"))
                .unwrap_or_default(),
            t.elapsed().as_secs_f64(),
            if out.violations.is_empty() {
                String::new()
            } else {
                format!(", {} violation(s)", out.violations.len())
            }
        );
        outcomes.push(out);
    }
    let summary = summary(&outcomes, o.seed, t0.elapsed(), &skipped);
    println!("{summary}");
    let _ = fs::write(env.logs.join("summary.md"), &summary);
    let bad: usize = outcomes.iter().map(|o| o.violations.len()).sum();
    if bad > 0 {
        Err(format!(
            "{bad} invariant violation(s) in {} trials (seed {}); daemon logs in {}",
            outcomes.len(),
            o.seed,
            util::rel(&env.logs)
        ))
    } else {
        Ok(())
    }
}

/// Per kind: trials, outcomes by name, the operation's times, violations.
type KindTally = (usize, BTreeMap<&'static str, usize>, Vec<u64>, usize);

fn summary(
    outcomes: &[Outcome],
    seed: u64,
    took: Duration,
    skipped: &BTreeMap<&'static str, String>,
) -> String {
    use std::fmt::Write as _;
    let mut per: BTreeMap<Kind, KindTally> = BTreeMap::new();
    for o in outcomes {
        let e = per.entry(o.kind).or_default();
        e.0 += 1;
        *e.1.entry(o.result).or_default() += 1;
        e.2.extend(o.op_ms);
        e.3 += o.violations.len();
    }
    let mut s = String::new();
    let violations: usize = outcomes.iter().map(|o| o.violations.len()).sum();
    let _ = writeln!(
        s,
        "chaos: {} trials (seed {seed}) in {:.0}s, {violations} violation(s)\n",
        outcomes.len(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| kind | trials | outcomes | op median ms (when it finished) | violations |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (k, (n, res, mut ms, v)) in per {
        ms.sort_unstable();
        let med = ms
            .get(ms.len() / 2)
            .map(|m| m.to_string())
            .unwrap_or_default();
        let res = res
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(s, "| {} | {n} | {res} | {med} | {v} |", k.name());
    }
    for (k, why) in skipped {
        let _ = writeln!(s, "\nSKIP {k}: {why}");
    }
    for o in outcomes {
        for v in &o.violations {
            let _ = writeln!(s, "\n{v}");
        }
    }
    s
}

// ------------------------------------------------------------------------------------------
// a trial's world

/// A process of ours holding a network namespace (`unshare --net sleep`), `lo` up.
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> Result<Netns> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "86400"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare --net: {e}"))?;
        let ns = Netns { holder };
        let own = fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_link(format!("/proc/{}/ns/net", ns.pid())).ok() == Some(own.clone()) {
            if Instant::now() > deadline {
                return Err("unshare --net made no namespace".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ns.run("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `program args` in the namespace; its stdout.
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("nsenter {program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {args:?} in the trial's netns: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A trial: its directory, namespace, daemon, and what the checks need to know.
pub struct Trial<'a> {
    pub env: &'a Env,
    pub seed: u64,
    pub n: u64,
    pub kind: Kind,
    pub delay_ms: Option<u64>,
    /// When the daemon started after the kill was killed too (ms after its spawn), if it was.
    pub restart_kill_ms: Option<u64>,
    pub dir: PathBuf,
    pub bivy: PathBuf,
    log: PathBuf,
    netns: Netns,
    daemon: Option<(BgDaemon, Child)>,
    /// The cgroup suffix the daemon gives this `BIVY_DIR` (`<name>.<suffix>`).
    pub suffix: String,
    /// The ext4 loop filesystem of disk-full trials (its mount point and image file).
    pub fs: Option<(PathBuf, PathBuf)>,
    /// The world has the btrfs pool `bt`.
    pub btrfs: bool,
    /// The long-running container's init PID, while the trial promises it stays.
    pub keep_pid: Option<u32>,
    pub violations: Vec<String>,
}

/// The marker file's contents: in the snapshots, then after them, and in `keep`.
pub const BEFORE: &str = "before";
pub const AFTER: &str = "after";

fn run_trial(env: &Env, seed: u64, n: u64, kind: Kind, rng: &mut Rng) -> Outcome {
    let mut out = Outcome {
        kind,
        result: "setup failed",
        op_ms: None,
        delay_ms: None,
        violations: Vec::new(),
    };
    let mut t = match Trial::new(env, seed, n, kind, rng) {
        Ok(t) => t,
        Err(e) => {
            out.violations.push(format!(
                "VIOLATION seed={seed} trial={n} kind={}: setup: {e}",
                kind.name()
            ));
            return out;
        }
    };
    match t.body(rng) {
        Ok((result, ms)) => {
            out.result = result;
            out.op_ms = ms;
        }
        Err(e) => t.violation(&format!("the trial could not go on: {e}")),
    }
    t.finish();
    out.delay_ms = t.delay_ms;
    out.violations = std::mem::take(&mut t.violations);
    out
}

impl<'a> Trial<'a> {
    fn new(env: &'a Env, seed: u64, n: u64, kind: Kind, rng: &mut Rng) -> Result<Trial<'a>> {
        let dir = PathBuf::from(format!(
            "/var/tmp/bivy-chaos-{}-{seed}-{n}",
            std::process::id()
        ));
        if dir.exists() {
            return Err(format!("{} exists", dir.display()));
        }
        util::mkdirs(&dir)?;
        let netns = Netns::new()?;
        let mut t = Trial {
            env,
            seed,
            n,
            kind,
            delay_ms: None,
            restart_kill_ms: None,
            bivy: dir.join("bivy"),
            log: dir.join("daemon.log"),
            dir,
            netns,
            daemon: None,
            suffix: String::new(),
            fs: None,
            btrfs: false,
            keep_pid: None,
            violations: Vec::new(),
        };
        if matches!(kind, Kind::DiskFull | Kind::InodesFull) {
            t.make_small_fs(kind == Kind::InodesFull)?;
        }
        t.suffix = cgroup_suffix(&t.bivy)?;
        t.start_daemon()?;
        t.world(rng)?;
        Ok(t)
    }

    /// A 160 MiB ext4 loop filesystem as the home of `BIVY_DIR` (few inodes for `inodes`).
    fn make_small_fs(&mut self, inodes: bool) -> Result {
        let img = self.dir.join("fs.img");
        let mnt = self.dir.join("fs");
        util::mkdirs(&mnt)?;
        let f = fs::File::create(&img).map_err(|e| format!("create {}: {e}", img.display()))?;
        f.set_len(160 << 20).map_err(|e| e.to_string())?;
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args(["-q", "-F", "-m", "0"]);
        if inodes {
            mkfs.args(["-N", "3000"]);
        }
        util::output("mkfs.ext4", mkfs.arg(&img))?;
        util::output(
            "mount the trial's ext4",
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        )?;
        self.bivy = mnt.join("bivy");
        self.fs = Some((mnt, img));
        Ok(())
    }

    fn start_daemon(&mut self) -> Result {
        let (d, child) =
            daemon::start_in_netns(&self.env.bin, &self.bivy, &self.log, self.netns.pid(), &[])?;
        self.daemon = Some((d, child));
        Ok(())
    }

    /// SIGKILL exactly our daemon and reap it.
    pub fn kill_daemon(&mut self) {
        if let Some((_, mut child)) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Spawn a daemon on our `BIVY_DIR` and SIGKILL it `ms` later, whether it is ready or not.
    fn kill_while_starting(&mut self, ms: u64) -> Result {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.netns.pid()))
            .arg("--")
            .arg(&self.env.bin)
            .arg("daemon")
            .env("BIVY_DIR", &self.bivy)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn a daemon: {e}"))?;
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        self.restart_kill_ms = Some(ms);
        Ok(())
    }

    /// kill -9 and a new daemon on the same `BIVY_DIR`, in the same namespace.
    pub fn restart(&mut self) -> Result {
        self.kill_daemon();
        self.start_daemon()
    }

    pub fn violation(&mut self, what: &str) {
        let mut delay = self
            .delay_ms
            .map(|d| format!(" delay={d}ms"))
            .unwrap_or_default();
        if let Some(ms) = self.restart_kill_ms {
            delay.push_str(&format!(" restart-killed-at={ms}ms"));
        }
        let v = format!(
            "VIOLATION seed={} trial={} kind={}{delay}: {what}",
            self.seed,
            self.n,
            self.kind.name()
        );
        eprintln!("{v}");
        self.violations.push(v);
    }

    fn d(&self) -> Result<&BgDaemon> {
        self.daemon
            .as_ref()
            .map(|(d, _)| d)
            .ok_or_else(|| "no daemon running".into())
    }

    /// `bivy <args>` against our daemon, not yet run. A command naming the remote `self` (our
    /// daemon's HTTPS address, 127.0.0.1 in its network namespace: `migration` trials) runs in
    /// that namespace.
    pub fn cli(&self, args: &[&str]) -> Result<Command> {
        let d = self.d()?;
        let mut c = if args.iter().any(|a| *a == "self" || a.starts_with("self:")) {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{}/ns/net", self.netns.pid()))
                .arg("--")
                .arg(&d.bin)
                .args(args)
                .env("BIVY_DIR", &d.dir)
                .stdin(Stdio::null());
            c
        } else {
            d.cli(args)
        };
        c.env("BIVY_CONF", self.dir.join("conf"));
        Ok(c)
    }

    /// Run `bivy <args>` (bounded: 120 s); (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = bounded(&mut self.cli(args)?, Duration::from_secs(120))
            .map_err(|e| format!("bivy {}: {e}", args.join(" ")))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `bivy <args>`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let (ok, so, se) = self.run(args)?;
        if ok {
            Ok(so)
        } else {
            Err(format!("bivy {}: {}", args.join(" "), se.trim()))
        }
    }

    /// GET a REST path; its `metadata`, or an error with the status code and message.
    pub fn get(&self, path: &str) -> Result<Json> {
        let body = self.d()?.get(path)?;
        let v = Json::parse(&body).map_err(|e| format!("GET {path}: {e}: {body}"))?;
        if v.get("type").as_str() == Some("error") {
            return Err(format!(
                "GET {path}: {} {}",
                v.get("error_code").as_i64().unwrap_or(0),
                v.get("error").as_str().unwrap_or("")
            ));
        }
        Ok(v.get("metadata").clone())
    }

    /// Does GET `path` answer 404 (gone) rather than 200 (there)?
    pub fn exists(&self, path: &str) -> Result<bool> {
        match self.get(path) {
            Ok(_) => Ok(true),
            Err(e) if e.contains(" 404 ") => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn netns_run(&self, program: &str, args: &[&str]) -> Result<String> {
        self.netns.run(program, args)
    }

    /// The marker file of `name` (`/root/mark`).
    pub fn mark(&self, name: &str) -> Result<String> {
        self.ok(&["file", "pull", &format!("{name}/root/mark"), "-"])
            .map(|s| s.trim().to_owned())
    }

    fn set_mark(&self, name: &str, value: &str) -> Result {
        let f = self.dir.join(format!("mark-{value}"));
        fs::write(&f, format!("{value}\n")).map_err(|e| e.to_string())?;
        self.ok(&[
            "file",
            "push",
            f.to_str().ok_or("utf-8")?,
            &format!("{name}/root/mark"),
        ])
        .map(|_| ())
    }

    pub fn init_pid(&self, name: &str) -> Result<Option<u32>> {
        let st = self.get(&format!("/1.0/instances/{name}/state"))?;
        Ok(st.get("pid").as_i64().filter(|&p| p > 0).map(|p| p as u32))
    }

    /// The world every trial starts from.
    fn world(&mut self, rng: &mut Rng) -> Result {
        let img = self
            .env
            .image
            .to_str()
            .ok_or("utf-8 image path")?
            .to_owned();
        self.ok(&["image", "import", &img, "--alias", "bb"])?;
        let btrfs = rng.chance(1, 3) || self.env.always_btrfs;
        if self.env.no_btrfs.is_none() && self.fs.is_none() && btrfs {
            self.ok(&["storage", "create", "bt", "btrfs", "size=512MiB"])?;
            self.btrfs = true;
        }
        self.ok(&[
            "network",
            "create",
            "chbr0",
            "ipv4.address=10.201.0.1/24",
            "ipv4.nat=true",
            "ipv6.address=none",
        ])?;
        self.ok(&["launch", "bb", "keep"])?;
        self.set_mark("keep", AFTER)?;
        self.keep_pid = self.init_pid("keep")?;
        if self.keep_pid.is_none() {
            return Err("keep has no init pid".into());
        }
        let pool = |t: &Self, rng: &mut Rng| -> Vec<&'static str> {
            if t.btrfs && rng.chance(1, 2) {
                vec!["-s", "bt"]
            } else {
                Vec::new()
            }
        };
        let mut a = vec!["init", "bb", "s1"];
        a.extend(pool(self, rng));
        self.ok(&a)?;
        let mut a = vec!["launch", "bb", "r1"];
        a.extend(pool(self, rng));
        self.ok(&a)?;
        for name in ["s1", "r1"] {
            self.set_mark(name, BEFORE)?;
            self.ok(&["snapshot", name, "snap0"])?;
            self.set_mark(name, AFTER)?;
        }
        self.ok(&["profile", "create", "pr1"])?;
        self.ok(&["profile", "set", "pr1", "user.k", "v0"])?;
        self.ok(&["storage", "volume", "create", "default", "vol1"])?;
        self.ok(&["storage", "volume", "snapshot", "default", "vol1", "vs0"])?;
        Ok(())
    }

    /// The trial's action and checks; the outcome's name and the op's time when it finished.
    fn body(&mut self, rng: &mut Rng) -> Result<(&'static str, Option<u64>)> {
        match self.kind {
            Kind::KillMonitor | Kind::KillInit => {
                let r = self.kill_container_process(rng)?;
                Ok((r, None))
            }
            Kind::DiskFull | Kind::InodesFull => self.full_disk(rng),
            _ => self.kill_during(rng),
        }
    }

    /// Start the trial's operation, kill -9 the daemon at a random moment, restart, check.
    fn kill_during(&mut self, rng: &mut Rng) -> Result<(&'static str, Option<u64>)> {
        let ops = if self.kind == Kind::Concurrent {
            check::plan_concurrent(self, rng)?
        } else {
            vec![check::plan(self, rng)?]
        };
        let delay = rng.below(self.kind.typical_ms().max(1));
        self.delay_ms = Some(delay);
        let t0 = Instant::now();
        let mut children = Vec::new();
        for op in &ops {
            let args: Vec<&str> = op.args.iter().map(String::as_str).collect();
            let child = self
                .cli(&args)?
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn bivy {}: {e}", op.args.join(" ")))?;
            children.push((child, None, None));
        }
        // Until the kill, watch for the ends of the operations (their durations, for the
        // summary).
        let kill_at = t0 + Duration::from_millis(delay);
        loop {
            for (child, before, ms) in children.iter_mut() {
                if before.is_none() {
                    *before = child.try_wait().map_err(|e| e.to_string())?;
                    if before.is_some() {
                        *ms = Some(t0.elapsed().as_millis() as u64);
                    }
                }
            }
            let now = Instant::now();
            if now >= kill_at {
                break;
            }
            std::thread::sleep(Duration::from_millis(1).min(kill_at - now));
        }
        self.kill_daemon();
        let mut results = Vec::new();
        let mut all_acked = true;
        let mut finished = None;
        for ((child, before, ms), op) in children.iter_mut().zip(&ops) {
            let status = wait_bounded(child, Duration::from_secs(30))?;
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            let acked = status.success();
            all_acked &= acked;
            if acked {
                finished = finished.max(*ms);
            }
            if !acked && before.is_some() {
                self.violation(&format!(
                    "bivy {} failed before the kill (a harness setup problem?): {}",
                    op.args.join(" "),
                    stderr.trim()
                ));
            }
            results.push(if acked {
                "acked"
            } else if before.is_some() {
                "refused"
            } else {
                "cut"
            });
        }
        // One trial in four kills the next daemon too, while it starts (its recovery of what
        // the first left), 0..50 ms after it was spawned.
        if rng.chance(1, 4) {
            let d2 = rng.below(50);
            self.kill_while_starting(d2)?;
        }
        self.start_daemon()?;
        for (op, r) in ops.iter().zip(&results) {
            check::after(self, &op.checks, *r == "acked");
        }
        let result = if results.contains(&"refused") {
            "refused"
        } else if all_acked {
            "acked"
        } else if results.contains(&"acked") {
            "some acked"
        } else {
            "cut"
        };
        Ok((result, finished.filter(|_| all_acked)))
    }

    /// kill -9 a container's monitor or init; the instance must end stopped or running, its
    /// data kept, and a daemon restart must agree.
    fn kill_container_process(&mut self, rng: &mut Rng) -> Result<&'static str> {
        let name = *rng.pick(&["keep", "r1"]);
        let pid = if self.kind == Kind::KillMonitor {
            let f = self.bivy.join(format!("run/{name}/monitor.pid"));
            let text = fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            text.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| format!("{}: no pid in {text:?}", f.display()))?
        } else {
            self.init_pid(name)?
                .ok_or_else(|| format!("{name} has no init"))?
        };
        if name == "keep" {
            self.keep_pid = None;
        }
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        // The daemon learns of it: the instance is Stopped (or, for a monitor, still Running
        // with its init) within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = self.get(&format!("/1.0/instances/{name}/state"))?;
            let status = st.get("status").as_str().unwrap_or("").to_owned();
            let pid_now = st.get("pid").as_i64().unwrap_or(0);
            let init_alive = pid_now > 0 && Path::new(&format!("/proc/{pid_now}")).exists();
            let settled = match (self.kind, status.as_str()) {
                (Kind::KillInit, "Stopped") => true,
                (Kind::KillMonitor, "Stopped") => true,
                (Kind::KillMonitor, "Running") => init_alive,
                _ => false,
            };
            if settled {
                break;
            }
            if Instant::now() > deadline {
                self.violation(&format!(
                    "{name}: still {status} (pid {pid_now}, alive {init_alive}) 15 s after its {} was killed",
                    if self.kind == Kind::KillMonitor { "monitor" } else { "init" }
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        check::after(
            self,
            &[Check::Mark(name.into(), AFTER.into(), vec![])],
            true,
        );
        self.restart()?;
        check::after(
            self,
            &[Check::Mark(name.into(), AFTER.into(), vec![])],
            true,
        );
        Ok("done")
    }

    /// Fill the small filesystem (blocks or inodes), run an operation: it must succeed or
    /// fail saying the disk is full; nothing half-made after the filler goes; then kill -9 and
    /// restart, and check again.
    fn full_disk(&mut self, rng: &mut Rng) -> Result<(&'static str, Option<u64>)> {
        let (mnt, _) = self.fs.clone().ok_or("no small filesystem")?;
        // What the operation needs first is made before the disk fills.
        let op = check::plan(self, rng)?;
        let filler = mnt.join("filler");
        if self.kind == Kind::InodesFull {
            util::mkdirs(&filler)?;
            let mut i = 0u32;
            while fs::File::create(filler.join(format!("f{i}"))).is_ok() {
                i += 1;
                if i > 1_000_000 {
                    return Err("cannot fill the inode table".into());
                }
            }
            // Leave 0..40 inodes free.
            for j in 0..rng.below(40) as u32 {
                let _ = fs::remove_file(filler.join(format!("f{}", i.saturating_sub(j + 1))));
            }
        } else {
            // dd until ENOSPC, then give back 0..3 MiB.
            let _ = Command::new("dd")
                .args(["if=/dev/zero", "bs=1M", "status=none"])
                .arg(format!("of={}", filler.display()))
                .stderr(Stdio::null())
                .status();
            let len = fs::metadata(&filler).map(|m| m.len()).unwrap_or(0);
            // Mostly too little for a container's rootfs (about 2 MiB): the failures are where
            // a half-done change would be left.
            let give = if rng.chance(2, 3) {
                rng.below(1 << 20)
            } else {
                rng.below(3 << 20)
            };
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&filler)
                .map_err(|e| e.to_string())?;
            f.set_len(len.saturating_sub(give))
                .map_err(|e| e.to_string())?;
            drop(f);
        }
        let args: Vec<&str> = op.args.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let (ok, _, stderr) = self.run(&args)?;
        let ms = t0.elapsed().as_millis() as u64;
        let lower = stderr.to_ascii_lowercase();
        if !ok
            && !["space", "quota", "inode"]
                .iter()
                .any(|w| lower.contains(w))
        {
            self.violation(&format!(
                "bivy {} failed on a full disk without saying so: {}",
                op.args.join(" "),
                stderr.trim()
            ));
        }
        if self.run(&["list"]).map(|r| !r.0).unwrap_or(true) {
            self.violation("`bivy list` fails after an operation on a full disk");
        }
        if filler.is_dir() {
            fs::remove_dir_all(&filler).map_err(|e| e.to_string())?;
        } else {
            fs::remove_file(&filler).map_err(|e| e.to_string())?;
        }
        check::after(self, &op.checks, ok);
        self.restart()?;
        check::after(self, &op.checks, ok);
        Ok((if ok { "acked" } else { "failed" }, ok.then_some(ms)))
    }

    /// Every instance started, stopped and deleted, every image launched, then everything
    /// deleted and nothing left; then the trial's leftovers are removed whatever happened.
    fn finish(&mut self) {
        if self.daemon.is_some() {
            if let Err(e) = check::teardown(self) {
                self.violation(&format!("teardown: {e}"));
            }
        }
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains("panicked")) {
            self.violation(&format!("the daemon panicked: {l}"));
        }
        if !self.violations.is_empty() {
            let keep = self
                .env
                .logs
                .join(format!("seed{}-trial{}.log", self.seed, self.n));
            let _ = fs::copy(&self.log, &keep);
            eprintln!("chaos: daemon log kept in {}", keep.display());
        }
        self.cleanup();
    }

    /// Remove everything the trial made, whatever state it is in: only our own processes
    /// (the daemon's pid, processes in the cgroups named after our `BIVY_DIR`), and mounts and
    /// loop devices below our directory.
    fn cleanup(&mut self) {
        if let Some((d, mut child)) = self.daemon.take() {
            d.stop();
            let _ = child.wait();
        }
        for pid in check::own_processes(&self.bivy, &self.suffix) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(100));
        check::remove_own_cgroups(&self.suffix);
        for m in check::mounts_below(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        for (dev, _) in check::loops_below(&self.dir) {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
        if check::mounts_below(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "chaos: not removing {}: still mounted below",
                self.dir.display()
            );
        }
    }
}

/// The daemon's cgroup suffix for `dir` (`ctx.rs`: the first 4 bytes of sha256 of the path, in
/// hex; none for `/var/lib/bivy`).
fn cgroup_suffix(dir: &Path) -> Result<String> {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sha256sum: {e}"))?;
    {
        use std::io::Write;
        let mut i = c.stdin.take().ok_or("stdin")?;
        i.write_all(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    let hex = String::from_utf8_lossy(&out.stdout);
    hex.get(..8)
        .map(str::to_owned)
        .ok_or_else(|| "sha256sum: no output".into())
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no exit after {limit:?} (killed)"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Run `cmd` capturing its output, SIGKILLed after `limit`.
pub fn bounded(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut so = child.stdout.take().ok_or("stdout")?;
    let mut se = child.stderr.take().ok_or("stderr")?;
    let a = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let b = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = wait_bounded(&mut child, limit)?;
    Ok(Output {
        status,
        stdout: a.join().unwrap_or_default(),
        stderr: b.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prng_is_reproducible_and_spreads() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7).next()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(7);
        let mut seen = [0u32; 24];
        for _ in 0..24_000 {
            seen[r.below(24) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
        assert_ne!(Rng::new(1).next(), Rng::new(2).next());
    }

    #[test]
    fn kinds_have_names_both_ways() {
        for k in KINDS {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert!(parse_opts(&["--kind".into(), "nope".into()]).is_err());
        let o = parse_opts(&["--trials".into(), "3".into(), "--seed".into(), "9".into()]).unwrap();
        assert_eq!((o.trials, o.seed, o.kinds.len()), (3, 9, KINDS.len()));
    }
}
