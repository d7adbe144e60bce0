//! `admin init`: `lxd init` (5.0.2) for the daemon on the local socket. Every mode builds a
//! preseed document and applies it through [`super::preseed`] (checked first, idempotent,
//! undone on failure).
//!
//! - `--auto` (LXD's `RunAuto`, with its flag checks and messages): a `default` storage pool
//!   (`--storage-backend dir|btrfs`, `--storage-create-loop GiB`, `--storage-pool SOURCE`) when
//!   there is none, a `root` disk on it in the `default` profile when it has none; a managed
//!   bridge `bivybr<N>` (`ipv4.address=auto`, `ipv6.address=none`) and the profile's `eth0` on
//!   it when there is no managed network and the profile has no nic; `core.https_address` from
//!   `--network-address`/`--network-port` and `core.trust_password`. bivy's daemon makes a
//!   `default` dir pool at its first start, where LXD starts with none: while that pool is
//!   untouched (no driver but dir, its own source, nothing but the default profile's root disk
//!   using it), storage flags asking for another pool replace it, and ones asking for what it
//!   is change nothing; otherwise they are LXD's "Storage has already been configured" unless
//!   the `default` pool already is what they ask.
//! - `--preseed`: `lxd init --preseed`'s YAML on stdin.
//! - `--dump`: the server as a preseed document (`lxd init --dump`).
//! - No flag, stdin a terminal: `lxd init`'s questions in its words, where they apply to bivy
//!   (no clustering, MAAS, Fan, block devices, or storage drivers but dir and btrfs), then the
//!   same application. Without a terminal it refuses.

use std::io::{self, Write};

use argh::FromArgs;

use super::preseed::{self, NetworkSeed, PoolSeed, Preseed, ProfileSeed, State, Step};
use super::{fail, is_tty, parse, CmdResult, Fail};
use crate::api::{Devices, ProfilePut, StringMap};
use crate::client::{self, Client};

/// LXD's default HTTPS port.
const DEFAULT_PORT: u16 = 8443;

/// The storage drivers `lxd init` knows; bivy has the first two.
const LXD_BACKENDS: [&str; 6] = ["btrfs", "dir", "ceph", "cephfs", "lvm", "zfs"];

#[derive(FromArgs, Default)]
#[argh(help_triggers("-h", "--help"))]
/// Configure the bivy daemon on the local socket, as lxd init: storage pool, network bridge,
/// default profile, HTTPS listener. Asks its questions on a terminal; --auto, --preseed and
/// --dump need none.
pub struct InitArgs {
    #[argh(switch)]
    /// automatic (non-interactive) mode
    auto: bool,
    #[argh(switch)]
    /// pre-seed mode, expects YAML config from stdin
    preseed: bool,
    #[argh(switch)]
    /// dump YAML config to stdout
    dump: bool,
    #[argh(option)]
    /// address to bind bivy to (default: none)
    network_address: Option<String>,
    #[argh(option)]
    /// port to bind bivy to (default: 8443)
    network_port: Option<u16>,
    #[argh(option)]
    /// storage backend to use (btrfs or dir, default: dir)
    storage_backend: Option<String>,
    #[argh(option)]
    /// setup device based storage using DEVICE (not supported yet)
    storage_create_device: Option<String>,
    #[argh(option)]
    /// setup loop based storage with SIZE in GiB
    storage_create_loop: Option<u64>,
    #[argh(option)]
    /// storage pool to use or create (btrfs: an existing directory on btrfs, or where to make
    /// the loop file)
    storage_pool: Option<String>,
    #[argh(option)]
    /// password required to add new clients
    trust_password: Option<String>,
}

impl InitArgs {
    fn config_flags(&self) -> bool {
        self.network_address.is_some()
            || self.network_port.is_some()
            || self.storage_flags()
            || self.trust_password.is_some()
    }

    fn storage_flags(&self) -> bool {
        self.storage_backend.is_some()
            || self.storage_create_device.is_some()
            || self.storage_create_loop.is_some()
            || self.storage_pool.is_some()
    }
}

/// `bivy admin init …`.
pub fn run(args: &[String]) -> CmdResult {
    let a: InitArgs = parse(&["bivy admin init"], args)?;
    if a.auto && a.preseed {
        return fail("Can't use --auto and --preseed together");
    }
    if a.dump && (a.auto || a.preseed || a.config_flags()) {
        return fail("Can't use --dump with other flags");
    }
    if !a.auto && a.config_flags() {
        return fail("Configuration flags require --auto");
    }
    if !a.auto && !a.preseed && !a.dump && !is_tty(0) {
        return fail(
            "bivy admin init asks its questions on a terminal and stdin is not one: use --auto, --preseed (the YAML on stdin) or --dump",
        );
    }
    let c = Client::with_socket(client::socket_path());
    let mut st = State::read(&c)?;
    if a.dump {
        // `lxd init --dump` prints the YAML and a blank line.
        println!("{}", crate::util::yaml::to_string(&preseed::dump(&st))?);
        return Ok(0);
    }
    let (doc, mut steps) = if a.preseed {
        let mut text = String::new();
        io::Read::read_to_string(&mut io::stdin(), &mut text)
            .map_err(|e| format!("Failed to read the preseed from stdin: {e}"))?;
        (preseed::parse(&text)?, Vec::new())
    } else if a.auto {
        auto(&a, &mut st)?
    } else {
        let (doc, print) = interactive(&mut Terminal, &st, loop_default_gib())?;
        if print {
            println!("{}", crate::util::yaml::to_string(&doc)?);
        }
        (doc, Vec::new())
    };
    steps.extend(preseed::plan(&doc, &st)?);
    preseed::apply(&c, &steps)?;
    Ok(0)
}

/// The `root` disk device on `pool`.
fn root_disk(pool: &str) -> StringMap {
    strings([("path", "/"), ("pool", pool), ("type", "disk")])
}

/// A map of owned strings.
fn strings<const N: usize>(pairs: [(&str, &str); N]) -> StringMap {
    crate::util::sort::map(pairs.map(|(k, v)| (k.to_string(), v.to_string())))
}

/// The `eth0` nic device on managed network `net`.
fn eth0(net: &str) -> StringMap {
    strings([("name", "eth0"), ("network", net), ("type", "nic")])
}

/// `core.https_address` for an address and port (IPv6 in brackets).
fn https_address(addr: &str, port: u16) -> String {
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// The first `bivybr<N>` that names no network or interface of the server.
fn free_bridge_name(st: &State) -> String {
    (0..)
        .map(|i| format!("bivybr{i}"))
        .find(|n| st.network(n).is_none())
        .unwrap_or_default()
}

/// Whether the server's only pool is the `default` dir pool its daemon made at first start,
/// untouched: its own source, no description, used by nothing but the default profile's root
/// disk.
fn first_start_pool(st: &State) -> bool {
    let [p] = st.pools.as_slice() else {
        return false;
    };
    let own_source = p.config.len() == 1
        && p.config
            .get("source")
            .is_some_and(|s| s.ends_with("/storage-pools/default"));
    let profile_root_only = st.profile("default").is_none_or(|prof| {
        prof.devices
            .iter()
            .filter(|(_, d)| d.get("pool").is_some_and(|x| x == "default"))
            .all(|(name, d)| name == "root" && d.get("path").is_some_and(|x| x == "/"))
    });
    p.name == "default"
        && p.driver == "dir"
        && p.description.is_empty()
        && own_source
        && p.used_by.iter().all(|u| u == "/1.0/profiles/default")
        && profile_root_only
}

/// The steps that take the first-start pool away (the default profile's root disk first),
/// and `st` as it is after them.
fn replace_first_pool(st: &mut State) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(prof) = st.profiles.iter_mut().find(|p| p.name == "default") {
        let old = ProfilePut {
            config: prof.config.clone(),
            description: prof.description.clone(),
            devices: prof.devices.clone(),
        };
        prof.devices
            .retain(|_, d| d.get("pool").is_none_or(|x| x != "default"));
        if prof.devices != old.devices {
            let new = ProfilePut {
                devices: prof.devices.clone(),
                ..old.clone()
            };
            steps.push(Step::UpdateProfile {
                name: "default".into(),
                old,
                new,
            });
        }
    }
    let p = st.pools.remove(0);
    steps.push(Step::DeletePool(PoolSeed {
        config: p.config,
        description: p.description,
        name: p.name,
        driver: p.driver,
    }));
    steps
}

/// `--auto`: the preseed of LXD's automatic mode, and the steps to make before it (the
/// first-start pool's replacement); `st` is updated as those steps will leave the server.
fn auto(a: &InitArgs, st: &mut State) -> Result<(Preseed, Vec<Step>), Fail> {
    if let Some(b) = &a.storage_backend {
        if !LXD_BACKENDS.contains(&b.as_str()) {
            return fail(format!(
                "The requested backend '{b}' isn't supported by bivy admin init"
            ));
        }
        if !matches!(b.as_str(), "dir" | "btrfs") {
            return fail(format!(
                "not supported yet: storage backend '{b}' (bivy has btrfs and dir)"
            ));
        }
        if !st.drivers.contains(b) {
            return fail(format!(
                "The requested backend '{b}' isn't available on your system (missing tools)"
            ));
        }
    }
    if a.storage_create_device.is_some() {
        return fail(
            "not supported yet: --storage-create-device (storage pools on a block device)",
        );
    }
    let backend = a.storage_backend.clone().unwrap_or_else(|| "dir".into());
    if backend == "dir" && (a.storage_create_loop.is_some() || a.storage_pool.is_some()) {
        return fail(
            "None of --storage-pool, --storage-create-device or --storage-create-loop may be used with the 'dir' backend",
        );
    }
    if a.storage_create_loop == Some(0) {
        return fail("--storage-create-loop must be at least 1 (GiB)");
    }
    if a.network_address.is_none() {
        if a.network_port.is_some() {
            return fail("--network-port can't be used without --network-address");
        }
        if a.trust_password.is_some() {
            return fail("--trust-password can't be used without --network-address");
        }
    }

    let mut wanted = PoolSeed {
        name: "default".into(),
        driver: backend,
        ..Default::default()
    };
    if let Some(n) = a.storage_create_loop {
        wanted.config.insert("size".into(), format!("{n}GiB"));
    }
    if let Some(s) = &a.storage_pool {
        wanted.config.insert("source".into(), s.clone());
    }
    let mut pre = Vec::new();
    if !st.pools.is_empty() && a.storage_flags() {
        let matches = st.pool("default").is_some_and(|p| {
            p.driver == wanted.driver
                && wanted
                    .config
                    .iter()
                    .all(|(k, v)| p.config.get(k) == Some(v))
        });
        if !matches {
            if !first_start_pool(st) {
                return fail("Storage has already been configured");
            }
            pre = replace_first_pool(st);
        }
    }

    let mut doc = Preseed::default();
    if let Some(addr) = &a.network_address {
        doc.config.insert(
            "core.https_address".into(),
            https_address(addr, a.network_port.unwrap_or(DEFAULT_PORT)),
        );
        if let Some(pw) = &a.trust_password {
            doc.config
                .insert(preseed::TRUST_PASSWORD.into(), pw.clone());
        }
    }
    let mut devices = Devices::new();
    if st.pools.is_empty() {
        doc.storage_pools.push(wanted);
    }
    let profile = st.profile("default");
    let has = |kind: &str, path: Option<&str>| {
        profile.is_some_and(|p| {
            p.devices.values().any(|d| {
                d.get("type").is_some_and(|t| t == kind)
                    && path.is_none_or(|want| d.get("path").is_some_and(|x| x == want))
            })
        })
    };
    let default_pool = st.pool("default").is_some() || !doc.storage_pools.is_empty();
    if default_pool && !has("disk", Some("/")) {
        devices.insert("root".into(), root_disk("default"));
    }
    if !st.networks.iter().any(|n| n.managed) && !has("nic", None) {
        let name = free_bridge_name(st);
        let mut config = StringMap::new();
        config.insert("ipv4.address".into(), "auto".into());
        config.insert("ipv6.address".into(), "none".into());
        devices.insert("eth0".into(), eth0(&name));
        doc.networks.push(NetworkSeed {
            config,
            name,
            project: "default".into(),
            ..Default::default()
        });
    }
    if !devices.is_empty() {
        doc.profiles.push(ProfileSeed {
            devices,
            name: "default".into(),
            ..Default::default()
        });
    }
    Ok((doc, pre))
}

/// Where the questions go and the answers come from.
pub trait Prompt {
    /// Print `question` and read one answer line, trimmed; `None` at the end of input.
    fn line(&mut self, question: &str) -> io::Result<Option<String>>;
    /// The same without echo (a password).
    fn password(&mut self, question: &str) -> io::Result<String>;
    /// Text for stdout.
    fn out(&mut self, text: &str);
    /// Text for stderr.
    fn err(&mut self, text: &str);
}

/// The terminal on stdin and stdout.
pub(super) struct Terminal;

impl Prompt for Terminal {
    fn line(&mut self, question: &str) -> io::Result<Option<String>> {
        print!("{question}");
        io::stdout().flush()?;
        let mut s = String::new();
        if io::stdin().read_line(&mut s)? == 0 {
            return Ok(None);
        }
        Ok(Some(s.trim().to_string()))
    }

    fn password(&mut self, question: &str) -> io::Result<String> {
        print!("{question}");
        io::stdout().flush()?;
        let pw = super::term::read_password();
        println!();
        pw
    }

    fn out(&mut self, text: &str) {
        print!("{text}");
        let _ = io::stdout().flush();
    }

    fn err(&mut self, text: &str) {
        eprint!("{text}");
    }
}

/// lxd's `cli.Ask*` helpers over a [`Prompt`].
pub(super) struct Ask<'a>(pub(super) &'a mut dyn Prompt);

type Check<'a> = &'a dyn Fn(&str) -> Result<(), String>;

impl Ask<'_> {
    /// An answer, the default for an empty one; the end of input is an error.
    pub(super) fn answer(&mut self, question: &str, default: &str) -> Result<String, Fail> {
        match self.0.line(question)? {
            None => fail(format!(
                "no answer to {:?} (end of input)",
                question.trim_end()
            )),
            Some(a) if a.is_empty() => Ok(default.to_string()),
            Some(a) => Ok(a),
        }
    }

    fn invalid(&mut self) {
        self.0.err("Invalid input, try again.\n\n");
    }

    pub(super) fn bool(&mut self, question: &str, default: bool) -> Result<bool, Fail> {
        let def = if default { "yes" } else { "no" };
        loop {
            match self.answer(question, def)?.to_lowercase().as_str() {
                "yes" | "y" => return Ok(true),
                "no" | "n" => return Ok(false),
                _ => self.invalid(),
            }
        }
    }

    pub(super) fn string(
        &mut self,
        question: &str,
        default: &str,
        check: Option<Check<'_>>,
    ) -> Result<String, Fail> {
        loop {
            let a = self.answer(question, default)?;
            match check {
                Some(f) => match f(&a) {
                    Ok(()) => return Ok(a),
                    Err(e) => self.0.err(&format!("Invalid input: {e}\n\n")),
                },
                None if !a.is_empty() => return Ok(a),
                None => self.invalid(),
            }
        }
    }

    pub(super) fn choice(
        &mut self,
        question: &str,
        choices: &[&str],
        default: &str,
    ) -> Result<String, Fail> {
        loop {
            let a = self.answer(question, default)?;
            if choices.contains(&a.as_str()) {
                return Ok(a);
            }
            self.invalid();
        }
    }

    fn int(
        &mut self,
        question: &str,
        min: i64,
        max: i64,
        default: &str,
        check: Option<&dyn Fn(i64) -> Result<(), String>>,
    ) -> Result<i64, Fail> {
        loop {
            let a = self.answer(question, default)?;
            let n = match a.parse::<i64>() {
                Ok(n) => n,
                Err(e) => {
                    self.0.err(&format!("Invalid input: {e}\n\n"));
                    continue;
                }
            };
            if n < min || n > max {
                self.0.err("Invalid input: out of range\n\n");
                continue;
            }
            if let Some(Err(e)) = check.map(|f| f(n)) {
                self.0.err(&format!("Invalid input: {e}\n\n"));
                continue;
            }
            return Ok(n);
        }
    }

    /// Asked twice until both agree.
    fn password(&mut self, question: &str) -> Result<String, Fail> {
        loop {
            let first = self.0.password(question)?;
            let again = self.0.password("Again: ")?;
            if first == again {
                return Ok(first);
            }
            self.invalid();
        }
    }
}

/// An interface name as the kernel takes it.
fn interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("Network interface name must be between 1 and 15 characters".into());
    }
    if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("Invalid network interface name {s:?}"));
    }
    Ok(())
}

/// `auto`, `none`, or an address in CIDR notation of the family.
fn cidr_or_keyword(v6: bool) -> impl Fn(&str) -> Result<(), String> {
    move |s: &str| {
        if s == "auto" || s == "none" {
            return Ok(());
        }
        let ok = s.split_once('/').is_some_and(|(addr, len)| {
            let max = if v6 { 128 } else { 32 };
            let addr_ok = if v6 {
                addr.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                addr.parse::<std::net::Ipv4Addr>().is_ok()
            };
            addr_ok && len.parse::<u8>().is_ok_and(|l| l <= max)
        });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "Not an IPv{} network address in CIDR notation: {s:?}",
                if v6 { 6 } else { 4 }
            ))
        }
    }
}

/// The default size of a new loop file: a fifth of the filesystem holding the daemon's
/// directory, between 5 and 30 GiB (as lxd init).
fn loop_default_gib() -> u64 {
    let sock = client::socket_path();
    let dir = sock.parent().unwrap_or(std::path::Path::new("/"));
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.fragment_size() * s.blocks() / (1 << 30) / 5)
        .unwrap_or(0)
        .clamp(5, 30)
}

/// The questions of `lxd init`, as they apply to bivy: the preseed document they make, and
/// whether it is to be printed.
pub fn interactive(p: &mut dyn Prompt, st: &State, loop_gib: u64) -> Result<(Preseed, bool), Fail> {
    let mut ask = Ask(p);
    let mut doc = Preseed::default();
    let mut devices = Devices::new();

    if ask.bool(
        "Would you like to use bivy clustering? (yes/no) [default=no]: ",
        false,
    )? {
        return fail("not supported yet: clustering");
    }

    // Storage. The daemon made a pool at its first start: a new one is then no longer the
    // default answer.
    let new_pool = st.pools.is_empty();
    let q = format!(
        "Do you want to configure a new storage pool? (yes/no) [default={}]: ",
        if new_pool { "yes" } else { "no" }
    );
    if ask.bool(&q, new_pool)? {
        let name = loop {
            let n = ask.string(
                "Name of the new storage pool [default=default]: ",
                "default",
                None,
            )?;
            if n.contains('/') {
                ask.0
                    .err("Invalid input: \"/\" is not allowed in a pool name\n\n");
                continue;
            }
            if st.pool(&n).is_some() {
                ask.0.out(&format!(
                    "The requested storage pool \"{n}\" already exists. Please choose another name.\n"
                ));
                continue;
            }
            break n;
        };
        devices.insert("root".into(), root_disk(&name));
        let mut backends: Vec<&str> = st
            .drivers
            .iter()
            .map(String::as_str)
            .filter(|d| matches!(*d, "btrfs" | "dir"))
            .collect();
        crate::util::sort::sort(&mut backends);
        let driver = match backends.as_slice() {
            [] => return fail("No storage backends available"),
            [one] => one.to_string(),
            many => ask.choice(
                &format!(
                    "Name of the storage backend to use ({}) [default=dir]: ",
                    many.join(", ")
                ),
                many,
                "dir",
            )?,
        };
        let mut pool = PoolSeed {
            name,
            driver,
            ..Default::default()
        };
        if pool.driver == "btrfs" {
            if ask.bool("Create a new BTRFS pool? (yes/no) [default=yes]: ", true)? {
                let size_ok = |s: &str| {
                    let n = s.strip_suffix("GiB").unwrap_or(s);
                    match n.parse::<i64>() {
                        Ok(n) if n < 1 => Err("Minimum size is 1GiB".to_string()),
                        Ok(_) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                let size = ask.string(
                    &format!(
                        "Size in GiB of the new loop device (1GiB minimum) [default={loop_gib}GiB]: "
                    ),
                    &format!("{loop_gib}GiB"),
                    Some(&size_ok),
                )?;
                let size = if size.ends_with("GiB") {
                    size
                } else {
                    format!("{size}GiB")
                };
                pool.config.insert("size".into(), size);
            } else {
                let source = ask.string(
                    "Path of the existing directory on a btrfs filesystem: ",
                    "",
                    None,
                )?;
                pool.config.insert("source".into(), source);
            }
        }
        doc.storage_pools.push(pool);
    }

    // Networking.
    let managed = st.networks.iter().any(|n| n.managed);
    let q = format!(
        "Would you like to create a new local network bridge? (yes/no) [default={}]: ",
        if managed { "no" } else { "yes" }
    );
    if ask.bool(&q, !managed)? {
        let default_name = free_bridge_name(st);
        let name = loop {
            let n = ask.string(
                &format!("What should the new bridge be called? [default={default_name}]: "),
                &default_name,
                Some(&interface_name),
            )?;
            if st.network(&n).is_some() {
                ask.0.out(&format!(
                    "The requested network bridge \"{n}\" already exists. Please choose another name.\n"
                ));
                continue;
            }
            break n;
        };
        devices.insert("eth0".into(), eth0(&name));
        let mut config = StringMap::new();
        for (family, v6, default) in [("IPv4", false, "auto"), ("IPv6", true, "none")] {
            let key = if v6 { "ipv6" } else { "ipv4" };
            let addr = ask.string(
                &format!(
                    "What {family} address should be used? (CIDR subnet notation, \u{201c}auto\u{201d} or \u{201c}none\u{201d}) [default={default}]: "
                ),
                default,
                Some(&cidr_or_keyword(v6)),
            )?;
            if addr != "auto" && addr != "none" {
                let nat = ask.bool(
                    &format!("Would you like bivy to NAT {family} traffic on your bridge? [default=yes]: "),
                    true,
                )?;
                config.insert(format!("{key}.nat"), nat.to_string());
            }
            config.insert(format!("{key}.address"), addr);
        }
        doc.networks.push(NetworkSeed {
            config,
            name,
            project: "default".into(),
            ..Default::default()
        });
    } else if ask.bool(
        "Would you like to configure bivy to use an existing bridge or host interface? (yes/no) [default=no]: ",
        false,
    )? {
        let net = loop {
            let n = ask.string("Name of the existing bridge or host interface: ", "", None)?;
            match st.network(&n) {
                Some(net) if net.kind != "loopback" => break net,
                _ => ask.0.out(
                    "The requested interface doesn't exist. Please choose another one.\n",
                ),
            }
        };
        let nictype = if net.kind == "bridge" { "bridged" } else { "macvlan" };
        let dev = strings([
            ("name", "eth0"),
            ("nictype", nictype),
            ("parent", net.name.as_str()),
            ("type", "nic"),
        ]);
        devices.insert("eth0".into(), dev);
    }

    // The daemon.
    if ask.bool(
        "Would you like the bivy server to be available over the network? (yes/no) [default=no]: ",
        false,
    )? {
        let is_ip = |s: &str| {
            if s == "all" || s.parse::<std::net::IpAddr>().is_ok() {
                Ok(())
            } else {
                Err(format!("{s:?} is not an IP address"))
            }
        };
        let addr = ask.string(
            "Address to bind bivy to (not including port) [default=all]: ",
            "all",
            Some(&is_ip),
        )?;
        let addr = if addr == "all" {
            "::".to_string()
        } else {
            addr
        };
        let current = st.config.get("core.https_address").cloned();
        let bindable = |port: i64| {
            let a = https_address(&addr, port as u16);
            if current.as_deref() == Some(a.as_str()) {
                return Ok(()); // already ours
            }
            // A parsed address: a string would pull in the C resolver (getaddrinfo).
            let sa: std::net::SocketAddr =
                a.parse().map_err(|_| format!("Invalid address {a:?}"))?;
            std::net::TcpListener::bind(sa)
                .map(drop)
                .map_err(|e| format!("Can't bind address {a:?}: {e}"))
        };
        let port = ask.int(
            &format!("Port to bind bivy to [default={DEFAULT_PORT}]: "),
            1,
            65535,
            &DEFAULT_PORT.to_string(),
            Some(&bindable),
        )?;
        doc.config.insert(
            "core.https_address".into(),
            https_address(&addr, port as u16),
        );
        let pw = ask.password("Trust password for new clients: ")?;
        if pw.is_empty() {
            ask.0
                .out("No password set, client certificates will have to be manually trusted.\n");
        } else {
            doc.config.insert(preseed::TRUST_PASSWORD.into(), pw);
        }
    }
    if !ask.bool(
        "Would you like stale cached images to be updated automatically? (yes/no) [default=yes]: ",
        true,
    )? {
        doc.config
            .insert("images.auto_update_interval".into(), "0".into());
    }

    doc.profiles.push(ProfileSeed {
        devices,
        name: "default".into(),
        ..Default::default()
    });
    let print = ask.bool(
        "Would you like a YAML \"bivy admin init\" preseed to be printed? (yes/no) [default=no]: ",
        false,
    )?;
    Ok((doc, print))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Network, Profile, StoragePool};

    fn map(kv: &[(&str, &str)]) -> StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn fresh() -> State {
        let mut devices = Devices::new();
        devices.insert("root".into(), root_disk("default"));
        State {
            config: StringMap::new(),
            drivers: vec!["btrfs".into(), "dir".into()],
            networks: vec![Network {
                name: "lo".into(),
                kind: "loopback".into(),
                ..Default::default()
            }],
            pools: vec![StoragePool {
                config: map(&[("source", "/var/lib/bivy/storage-pools/default")]),
                name: "default".into(),
                driver: "dir".into(),
                used_by: vec!["/1.0/profiles/default".into()],
                ..Default::default()
            }],
            profiles: vec![Profile {
                description: "Default bivy profile".into(),
                devices,
                name: "default".into(),
                ..Default::default()
            }],
        }
    }

    fn args(f: impl FnOnce(&mut InitArgs)) -> InitArgs {
        let mut a = InitArgs {
            auto: true,
            ..Default::default()
        };
        f(&mut a);
        a
    }

    fn auto_err(a: &InitArgs, st: &State) -> String {
        match auto(a, &mut st.clone()) {
            Err(Fail::Error(e)) => e,
            other => panic!("{:?}", other.map(|(d, s)| (d, s.len()))),
        }
    }

    #[test]
    fn auto_on_a_fresh_daemon_adds_the_bridge_and_eth0() {
        let mut st = fresh();
        let (doc, pre) = auto(&args(|_| {}), &mut st).unwrap();
        assert!(pre.is_empty());
        assert!(doc.storage_pools.is_empty());
        assert_eq!(doc.networks.len(), 1);
        assert_eq!(doc.networks[0].name, "bivybr0");
        assert_eq!(
            doc.networks[0].config,
            map(&[("ipv4.address", "auto"), ("ipv6.address", "none")])
        );
        // The profile already has its root disk: only eth0 is added.
        assert_eq!(doc.profiles.len(), 1);
        assert_eq!(
            doc.profiles[0].devices.keys().collect::<Vec<_>>(),
            vec!["eth0"]
        );
        assert_eq!(doc.profiles[0].devices["eth0"], eth0("bivybr0"));
        assert!(doc.config.is_empty());
        // A host interface of that name moves it on; a managed network, or a nic in the
        // profile, means no bridge at all.
        st.networks.push(Network {
            name: "bivybr0".into(),
            kind: "physical".into(),
            ..Default::default()
        });
        let (doc, _) = auto(&args(|_| {}), &mut st.clone()).unwrap();
        assert_eq!(doc.networks[0].name, "bivybr1");
        st.networks[1].managed = true;
        let (doc, _) = auto(&args(|_| {}), &mut st.clone()).unwrap();
        assert_eq!(doc, Preseed::default());
    }

    #[test]
    fn auto_without_pools_makes_default_and_root() {
        let mut st = fresh();
        st.pools.clear();
        st.profiles[0].devices.clear();
        let (doc, _) = auto(
            &args(|a| {
                a.storage_backend = Some("btrfs".into());
                a.storage_create_loop = Some(2);
            }),
            &mut st,
        )
        .unwrap();
        assert_eq!(doc.storage_pools[0].driver, "btrfs");
        assert_eq!(doc.storage_pools[0].config, map(&[("size", "2GiB")]));
        assert_eq!(doc.profiles[0].devices["root"], root_disk("default"));
        assert_eq!(doc.profiles[0].devices.len(), 2);
    }

    #[test]
    fn auto_replaces_only_the_untouched_first_pool() {
        let mut st = fresh();
        let a = args(|a| {
            a.storage_backend = Some("btrfs".into());
            a.storage_pool = Some("/srv/btrfs/bivy".into());
        });
        let (doc, pre) = auto(&a, &mut st).unwrap();
        // The root disk goes, the pool goes, then both come back on btrfs.
        assert!(matches!(&pre[0], Step::UpdateProfile { new, .. } if new.devices.is_empty()));
        assert!(matches!(&pre[1], Step::DeletePool(p) if p.name == "default" && p.driver == "dir"));
        assert!(st.pools.is_empty());
        assert_eq!(
            doc.storage_pools[0].config,
            map(&[("source", "/srv/btrfs/bivy")])
        );
        assert_eq!(doc.profiles[0].devices["root"], root_disk("default"));
        // The pool as asked already: nothing to do. Plain `dir` on the first pool: nothing.
        let mut done = fresh();
        done.pools[0].driver = "btrfs".into();
        done.pools[0].config = map(&[("source", "/srv/btrfs/bivy")]);
        done.networks[0].managed = true;
        let (doc, pre) = auto(&a, &mut done.clone()).unwrap();
        assert!(pre.is_empty() && doc == Preseed::default(), "{doc:?}");
        let (_, pre) = auto(
            &args(|a| a.storage_backend = Some("dir".into())),
            &mut fresh(),
        )
        .unwrap();
        assert!(pre.is_empty());
        // A used pool is storage already configured, as LXD says.
        let mut used = fresh();
        used.pools[0].used_by.push("/1.0/images/abc".into());
        assert_eq!(auto_err(&a, &used), "Storage has already been configured");
    }

    #[test]
    fn auto_flag_checks_like_lxd() {
        let st = fresh();
        assert_eq!(
            auto_err(&args(|a| a.storage_backend = Some("xfs".into())), &st),
            "The requested backend 'xfs' isn't supported by bivy admin init"
        );
        assert!(
            auto_err(&args(|a| a.storage_backend = Some("zfs".into())), &st)
                .starts_with("not supported yet: storage backend 'zfs'")
        );
        let mut no_btrfs = fresh();
        no_btrfs.drivers = vec!["dir".into()];
        assert_eq!(
            auto_err(
                &args(|a| a.storage_backend = Some("btrfs".into())),
                &no_btrfs
            ),
            "The requested backend 'btrfs' isn't available on your system (missing tools)"
        );
        assert!(auto_err(&args(|a| a.storage_create_loop = Some(3)), &st)
            .starts_with("None of --storage-pool"));
        assert_eq!(
            auto_err(&args(|a| a.network_port = Some(9443)), &st),
            "--network-port can't be used without --network-address"
        );
        assert_eq!(
            auto_err(&args(|a| a.trust_password = Some("x".into())), &st),
            "--trust-password can't be used without --network-address"
        );
        assert!(auto_err(
            &args(|a| a.storage_create_device = Some("/dev/sdb".into())),
            &st
        )
        .starts_with("not supported yet: --storage-create-device"));
        let (doc, _) = auto(
            &args(|a| {
                a.network_address = Some("::".into());
                a.trust_password = Some("pw".into());
            }),
            &mut fresh(),
        )
        .unwrap();
        assert_eq!(
            doc.config,
            map(&[
                ("core.https_address", "[::]:8443"),
                ("core.trust_password", "pw")
            ])
        );
        assert_eq!(https_address("127.0.0.1", 9443), "127.0.0.1:9443");
        assert_eq!(https_address("[fd00::1]", 1), "[fd00::1]:1");
    }

    /// Canned answers; what was asked and said.
    struct Script {
        answers: std::collections::VecDeque<String>,
        transcript: String,
    }

    impl Script {
        fn new(answers: &[&str]) -> Script {
            Script {
                answers: answers.iter().map(|a| a.to_string()).collect(),
                transcript: String::new(),
            }
        }
    }

    impl Prompt for Script {
        fn line(&mut self, q: &str) -> io::Result<Option<String>> {
            self.transcript.push_str(q);
            let a = self.answers.pop_front();
            self.transcript.push_str(a.as_deref().unwrap_or("<EOF>"));
            self.transcript.push('\n');
            Ok(a)
        }
        fn password(&mut self, q: &str) -> io::Result<String> {
            self.transcript.push_str(q);
            self.transcript.push_str("***\n");
            Ok(self.answers.pop_front().unwrap_or_default())
        }
        fn out(&mut self, t: &str) {
            self.transcript.push_str(t);
        }
        fn err(&mut self, t: &str) {
            self.transcript.push_str(t);
        }
    }

    #[test]
    fn interactive_defaults_on_a_fresh_daemon() {
        let mut s = Script::new(&["", "", "", "", "", "", "", "", ""]);
        let (doc, print) = interactive(&mut s, &fresh(), 5).unwrap();
        assert!(!print);
        let want = "\
Would you like to use bivy clustering? (yes/no) [default=no]: 
Do you want to configure a new storage pool? (yes/no) [default=no]: 
Would you like to create a new local network bridge? (yes/no) [default=yes]: 
What should the new bridge be called? [default=bivybr0]: 
What IPv4 address should be used? (CIDR subnet notation, \u{201c}auto\u{201d} or \u{201c}none\u{201d}) [default=auto]: 
What IPv6 address should be used? (CIDR subnet notation, \u{201c}auto\u{201d} or \u{201c}none\u{201d}) [default=none]: 
Would you like the bivy server to be available over the network? (yes/no) [default=no]: 
Would you like stale cached images to be updated automatically? (yes/no) [default=yes]: 
Would you like a YAML \"bivy admin init\" preseed to be printed? (yes/no) [default=no]: 
";
        assert_eq!(s.transcript, want);
        assert!(s.answers.is_empty());
        // The same document --auto makes, plus the profile entry lxd init always has.
        let (auto_doc, _) = auto(&args(|_| {}), &mut fresh()).unwrap();
        assert_eq!(doc, auto_doc);
    }

    #[test]
    fn interactive_every_branch() {
        // A port free here (the answer is checked by binding it).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let answers = [
            "no",          // clustering
            "yes",         // new pool
            "default",     // taken
            "fast",        // name
            "zfs",         // not a choice
            "btrfs",       // backend
            "yes",         // new btrfs pool
            "0",           // too small
            "3",           // size
            "y",           // bridge
            "lo",          // taken
            "br-lab",      // name
            "10.5.0.1/33", // bad
            "10.5.0.1/24",
            "n", // no NAT
            "fd00:1::1/64",
            "",          // NAT (yes)
            "maybe",     // bad bool
            "yes",       // over the network
            "127.0.0.1", // address
            "70000",     // out of range
            &port,
            "pw1",
            "pw2", // mismatch
            "pw",
            "pw",
            "no",  // images auto update
            "yes", // print
        ];
        let mut s = Script::new(&answers);
        let (doc, print) = interactive(&mut s, &fresh(), 7).unwrap();
        assert!(print);
        assert!(s.answers.is_empty(), "{:?}", s.answers);
        let t = &s.transcript;
        for want in [
            "The requested storage pool \"default\" already exists. Please choose another name.\n",
            "Name of the storage backend to use (btrfs, dir) [default=dir]: zfs\nInvalid input, try again.\n\n",
            "Size in GiB of the new loop device (1GiB minimum) [default=7GiB]: 0\nInvalid input: Minimum size is 1GiB\n\n",
            "The requested network bridge \"lo\" already exists. Please choose another name.\n",
            "Invalid input: Not an IPv4 network address in CIDR notation: \"10.5.0.1/33\"\n\n",
            "Would you like bivy to NAT IPv4 traffic on your bridge? [default=yes]: n\n",
            "Invalid input: out of range\n\n",
            "Trust password for new clients: ***\nAgain: ***\nInvalid input, try again.\n\n",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
        assert_eq!(
            doc.storage_pools,
            vec![PoolSeed {
                config: map(&[("size", "3GiB")]),
                name: "fast".into(),
                driver: "btrfs".into(),
                ..Default::default()
            }]
        );
        assert_eq!(
            doc.networks[0].config,
            map(&[
                ("ipv4.address", "10.5.0.1/24"),
                ("ipv4.nat", "false"),
                ("ipv6.address", "fd00:1::1/64"),
                ("ipv6.nat", "true"),
            ])
        );
        assert_eq!(doc.profiles[0].devices["root"], root_disk("fast"));
        assert_eq!(doc.profiles[0].devices["eth0"], eth0("br-lab"));
        assert_eq!(
            doc.config,
            map(&[
                ("core.https_address", &format!("127.0.0.1:{port}")),
                ("core.trust_password", "pw"),
                ("images.auto_update_interval", "0"),
            ])
        );
        // What it makes applies to that server.
        assert_eq!(preseed::plan(&doc, &fresh()).unwrap().len(), 4);
    }

    #[test]
    fn interactive_existing_interface_and_end_of_input() {
        let mut st = fresh();
        st.networks.push(Network {
            name: "eth1".into(),
            kind: "physical".into(),
            ..Default::default()
        });
        let mut s = Script::new(&["", "", "no", "yes", "nope", "eth1", "", "", ""]);
        let (doc, _) = interactive(&mut s, &st, 5).unwrap();
        assert!(s
            .transcript
            .contains("The requested interface doesn't exist. Please choose another one.\n"));
        assert_eq!(
            doc.profiles[0].devices["eth0"],
            map(&[
                ("name", "eth0"),
                ("nictype", "macvlan"),
                ("parent", "eth1"),
                ("type", "nic")
            ])
        );
        assert!(doc.networks.is_empty());
        let mut s = Script::new(&["", "yes"]);
        match interactive(&mut s, &fresh(), 5) {
            Err(Fail::Error(e)) => assert_eq!(
                e,
                "no answer to \"Name of the new storage pool [default=default]:\" (end of input)"
            ),
            other => panic!("{:?}", other.map(|(d, _)| d)),
        }
        let mut s = Script::new(&["yes"]);
        assert!(matches!(
            interactive(&mut s, &fresh(), 5),
            Err(Fail::Error(e)) if e == "not supported yet: clustering"
        ));
    }
}
