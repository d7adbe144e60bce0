//! bivy's nftables rules, applied through the `nft` program.
//!
//! Why the `nft` binary: the kernel's nftables interface is a netlink protocol of bytecode
//! (expressions, registers, set elements) that `nft` compiles from its rule language; carrying
//! that compiler and its ABI here would be thousands of lines for a dozen rules. `nft` is found
//! at run time (`$BIVY_NFT`, else `PATH`, else `/usr/sbin` and `/sbin`); a host without it gets
//! an error naming the package. Every change is one `nft -f -` transaction, so the kernel
//! applies all of it or none; nft's stderr is in the error.
//!
//! What bivy changes on the host, and only this:
//! - table `inet bivy`, one set of chains per managed bridge `BR`, named like LXD's
//!   (`inet lxd`): `fwd.BR` (hook forward: accept what enters or leaves `BR`), `in.BR` (hook
//!   input: DHCP, DNS and ICMP from `BR` to the host), `out.BR` (hook output: the same answers
//!   back), `pstrt.BR` (nat postrouting, priority 100: masquerade what leaves the bridge's subnet,
//!   only when NAT is on);
//! - table `bridge bivy` when the bridge has NIC filters: `fwd.BR` and `in.BR` (hooks forward and
//!   input of the bridge family, i.e. frames between ports and frames to the host) jump to
//!   `nic.BR`, which holds per-port rules: a container may only send with its MAC (Ethernet and
//!   ARP sender), with its IPv4/IPv6 address when one is set (plus `0.0.0.0` for DHCP discovery
//!   and ARP probes, `::` and link-local for IPv6 neighbour discovery), and never as a DHCP, DHCPv6
//!   or DNS server or an IPv6 router (LXD's `security.mac_filtering`, `ipv4_filtering`,
//!   `ipv6_filtering`);
//! - in a foreign table whose forward base chain drops by default (Docker's `ip filter FORWARD`
//!   with iptables-nft), and only when asked ([`Nft::accept_in_foreign`]): two rules,
//!   `iifname BR accept` and `oifname BR accept`, at the top of that chain or of `DOCKER-USER`
//!   when the chain jumps there (Docker's documented place for user rules), each with the
//!   comment `bivy:BR` by which [`Nft::remove_foreign_accepts`] finds and removes them. In
//!   nftables every base chain on a hook must accept a packet, so bivy's own accept cannot
//!   overrule Docker's drop (canonical/lxd#8716); this is the smallest change that can.
//!
//! Applying a bridge's rules again replaces its chains' contents (`add chain`, `flush chain`,
//! `add rule`): the result is the same ruleset, never duplicates. Chains that are no longer
//! needed (NAT turned off, no filters) are removed in the same transaction with the
//! `add chain`+`delete chain` idiom (nft 1.0.6 has no `destroy`). Tables left without chains
//! are deleted.
//!
//! Names: nft 1.0.6 does not accept quoted chain names in commands, so every name that ends up
//! unquoted (chains, foreign tables) must be a plain nft identifier, and interface names (always
//! quoted) are limited to letters, digits, `_`, `-` and `.`: nothing a name holds can change the
//! meaning of a rule (`*` would be a wildcard, `"` would end the string).

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// bivy's table name, in families `inet` and `bridge`.
pub const TABLE: &str = "bivy";

/// The `nft` program.
#[derive(Debug, Clone)]
pub struct Nft {
    path: PathBuf,
}

/// What one managed bridge needs from nftables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRules {
    pub bridge: String,
    /// The bridge's own address and prefix; `None` when IPv4 is off.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub ipv4_nat: bool,
    pub ipv6: Option<(Ipv6Addr, u8)>,
    pub ipv6_nat: bool,
    /// Per-port source filters; empty: no `bridge bivy` chains for this bridge.
    pub filters: Vec<NicFilter>,
}

/// What the container behind `host_veth` may send: only with `mac`, and with `ipv4`/`ipv6` when
/// set; never as a DHCP server or a router, never from the bridge's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicFilter {
    pub host_veth: String,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// A base chain of another program's table that hooks forward with policy drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignChain {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub policy: String,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// An interface name safe to put in a rule (quoted): a valid link name made of letters, digits,
/// `_`, `-` and `.` only.
pub fn check_ifname(name: &str) -> io::Result<()> {
    super::netlink::check_name(name)?;
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
    {
        return Err(invalid(format!(
            "interface name {name:?} cannot be used in nftables rules: only letters, digits, '_', '-' and '.'"
        )));
    }
    Ok(())
}

/// A name nft takes unquoted (a table or chain of another program): nft's identifier syntax,
/// a letter or `_` first, then letters, digits, `_`, `-`, `.` and `/`.
pub fn check_identifier(name: &str) -> io::Result<()> {
    let mut b = name.bytes();
    let ok = match b.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
            b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/'))
        }
        _ => false,
    } && name.len() <= 256;
    if !ok {
        return Err(invalid(format!(
            "nftables name {name:?} is not a plain identifier; bivy does not change it"
        )));
    }
    Ok(())
}

fn check_family(f: &str) -> io::Result<()> {
    match f {
        "ip" | "ip6" | "inet" | "bridge" | "arp" | "netdev" => Ok(()),
        _ => Err(invalid(format!("unknown nftables family {f:?}"))),
    }
}

fn mac_text(m: [u8; 6]) -> String {
    super::netlink::format_mac(m)
}

fn subnet4(a: Ipv4Addr, prefix: u8) -> io::Result<String> {
    if prefix > 32 {
        return Err(invalid(format!("invalid IPv4 prefix /{prefix}")));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ok(format!("{}/{prefix}", Ipv4Addr::from(u32::from(a) & mask)))
}

fn subnet6(a: Ipv6Addr, prefix: u8) -> io::Result<String> {
    if prefix > 128 {
        return Err(invalid(format!("invalid IPv6 prefix /{prefix}")));
    }
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ok(format!("{}/{prefix}", Ipv6Addr::from(u128::from(a) & mask)))
}

/// `add chain` + `delete chain`: removes a chain whether or not it exists (its table must).
fn drop_chain(out: &mut String, family: &str, chain: &str) {
    out.push_str(&format!("add chain {family} {TABLE} {chain}\n"));
    out.push_str(&format!("delete chain {family} {TABLE} {chain}\n"));
}

/// The `nft -f` script that (re)creates bivy's tables and replaces this bridge's chains.
/// Pure: the same rules give the same text.
pub fn bridge_script(r: &BridgeRules) -> io::Result<String> {
    let br = r.bridge.as_str();
    check_ifname(br)?;
    for f in &r.filters {
        check_ifname(&f.host_veth)?;
    }
    let fam = "inet";
    let mut s = String::new();
    let rule = |s: &mut String, family: &str, chain: &str, text: &str| {
        s.push_str(&format!("add rule {family} {TABLE} {chain}.{br} {text}\n"));
    };
    s.push_str(&format!("add table {fam} {TABLE}\n"));
    for (chain, hook, prio) in [
        ("fwd", "forward", "0"),
        ("in", "input", "0"),
        ("out", "output", "0"),
    ] {
        s.push_str(&format!(
            "add chain {fam} {TABLE} {chain}.{br} {{ type filter hook {hook} priority {prio}; policy accept; }}\n"
        ));
        s.push_str(&format!("flush chain {fam} {TABLE} {chain}.{br}\n"));
    }
    rule(&mut s, fam, "fwd", &format!("iifname \"{br}\" accept"));
    rule(&mut s, fam, "fwd", &format!("oifname \"{br}\" accept"));
    // The bridge's servers (DHCP, DHCPv6, DNS) and ICMP, in and out.
    rule(
        &mut s,
        fam,
        "in",
        &format!("iifname \"{br}\" udp dport {{ 53, 67, 547 }} accept"),
    );
    rule(
        &mut s,
        fam,
        "in",
        &format!("iifname \"{br}\" tcp dport 53 accept"),
    );
    rule(
        &mut s,
        fam,
        "in",
        &format!("iifname \"{br}\" icmp type {{ echo-request, destination-unreachable, time-exceeded, parameter-problem }} accept"),
    );
    rule(
        &mut s,
        fam,
        "in",
        &format!("iifname \"{br}\" icmpv6 type {{ echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept"),
    );
    rule(
        &mut s,
        fam,
        "out",
        &format!("oifname \"{br}\" udp sport {{ 53, 67, 547 }} accept"),
    );
    rule(
        &mut s,
        fam,
        "out",
        &format!("oifname \"{br}\" tcp sport 53 accept"),
    );
    rule(
        &mut s,
        fam,
        "out",
        &format!("oifname \"{br}\" icmp type {{ echo-reply, destination-unreachable, time-exceeded, parameter-problem }} accept"),
    );
    rule(
        &mut s,
        fam,
        "out",
        &format!("oifname \"{br}\" icmpv6 type {{ echo-reply, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"),
    );
    let nat4 = match r.ipv4 {
        Some((a, p)) if r.ipv4_nat => Some(subnet4(a, p)?),
        Some((a, p)) => {
            subnet4(a, p)?;
            None
        }
        None => None,
    };
    let nat6 = match r.ipv6 {
        Some((a, p)) if r.ipv6_nat => Some(subnet6(a, p)?),
        Some((a, p)) => {
            subnet6(a, p)?;
            None
        }
        None => None,
    };
    if nat4.is_some() || nat6.is_some() {
        s.push_str(&format!(
            "add chain {fam} {TABLE} pstrt.{br} {{ type nat hook postrouting priority 100; policy accept; }}\n"
        ));
        s.push_str(&format!("flush chain {fam} {TABLE} pstrt.{br}\n"));
        if let Some(n) = &nat4 {
            rule(
                &mut s,
                fam,
                "pstrt",
                &format!("ip saddr {n} ip daddr != {n} masquerade"),
            );
        }
        if let Some(n) = &nat6 {
            rule(
                &mut s,
                fam,
                "pstrt",
                &format!("ip6 saddr {n} ip6 daddr != {n} masquerade"),
            );
        }
    } else {
        drop_chain(&mut s, fam, &format!("pstrt.{br}"));
    }

    let fam = "bridge";
    s.push_str(&format!("add table {fam} {TABLE}\n"));
    if r.filters.is_empty() {
        // The base chains first: they jump to nic.BR.
        for chain in ["fwd", "in", "nic"] {
            drop_chain(&mut s, fam, &format!("{chain}.{br}"));
        }
        return Ok(s);
    }
    s.push_str(&format!("add chain {fam} {TABLE} nic.{br}\n"));
    for (chain, hook) in [("fwd", "forward"), ("in", "input")] {
        s.push_str(&format!(
            "add chain {fam} {TABLE} {chain}.{br} {{ type filter hook {hook} priority 0; policy accept; }}\n"
        ));
        s.push_str(&format!("flush chain {fam} {TABLE} {chain}.{br}\n"));
    }
    s.push_str(&format!("flush chain {fam} {TABLE} nic.{br}\n"));
    rule(&mut s, fam, "fwd", &format!("jump nic.{br}"));
    rule(&mut s, fam, "in", &format!("jump nic.{br}"));
    for f in &r.filters {
        let i = format!("iifname \"{}\"", f.host_veth);
        let mac = mac_text(f.mac);
        rule(
            &mut s,
            fam,
            "nic",
            &format!("{i} ether saddr != {mac} drop"),
        );
        rule(
            &mut s,
            fam,
            "nic",
            &format!("{i} arp saddr ether != {mac} drop"),
        );
        if let Some(a) = f.ipv4 {
            rule(
                &mut s,
                fam,
                "nic",
                &format!("{i} arp saddr ip != {{ 0.0.0.0, {a} }} drop"),
            );
            rule(
                &mut s,
                fam,
                "nic",
                &format!("{i} ip saddr != {{ 0.0.0.0, {a} }} drop"),
            );
            rule(
                &mut s,
                fam,
                "nic",
                &format!("{i} ip saddr 0.0.0.0 udp dport != 67 drop"),
            );
        }
        if let Some(a) = f.ipv6 {
            rule(
                &mut s,
                fam,
                "nic",
                &format!("{i} ip6 saddr != {{ ::, fe80::/10, {a} }} drop"),
            );
        }
        // Never a DHCP server or a router; a DNS server of its own is fine, but nothing may
        // claim to come from the bridge's address (an answer as the network's resolver).
        rule(
            &mut s,
            fam,
            "nic",
            &format!("{i} udp sport {{ 67, 547 }} drop"),
        );
        if let Some((a, _)) = r.ipv4 {
            rule(&mut s, fam, "nic", &format!("{i} ip saddr {a} drop"));
        }
        if let Some((a, _)) = r.ipv6 {
            rule(&mut s, fam, "nic", &format!("{i} ip6 saddr {a} drop"));
        }
        rule(
            &mut s,
            fam,
            "nic",
            &format!("{i} icmpv6 type nd-router-advert drop"),
        );
    }
    Ok(s)
}

/// The script that removes every chain of `bridge` from bivy's tables (existing or not).
pub fn remove_script(bridge: &str) -> io::Result<String> {
    check_ifname(bridge)?;
    let mut s = String::new();
    s.push_str(&format!("add table inet {TABLE}\n"));
    for chain in ["fwd", "in", "out", "pstrt"] {
        drop_chain(&mut s, "inet", &format!("{chain}.{bridge}"));
    }
    s.push_str(&format!("add table bridge {TABLE}\n"));
    for chain in ["fwd", "in", "nic"] {
        drop_chain(&mut s, "bridge", &format!("{chain}.{bridge}"));
    }
    Ok(s)
}

/// The two accept rules for `bridge` in a foreign chain. Bridge-family chains see ports as
/// `iifname`, so there the bridge is matched with `meta ibrname`/`obrname`.
pub fn foreign_accept_script(
    family: &str,
    table: &str,
    chain: &str,
    bridge: &str,
) -> io::Result<String> {
    check_family(family)?;
    check_identifier(table)?;
    check_identifier(chain)?;
    check_ifname(bridge)?;
    let (i, o) = if family == "bridge" {
        ("meta ibrname", "meta obrname")
    } else {
        ("iifname", "oifname")
    };
    let c = format!("comment \"bivy:{bridge}\"");
    // `insert` puts a rule first: insert the oif rule, then the iif rule above it.
    Ok(format!(
        "insert rule {family} {table} {chain} {o} \"{bridge}\" accept {c}\n\
         insert rule {family} {table} {chain} {i} \"{bridge}\" accept {c}\n"
    ))
}

// ---- the ruleset as nft -j shows it (pure) ----

/// One chain of `nft -j list ruleset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    pub family: String,
    pub table: String,
    pub name: String,
    pub hook: Option<String>,
    pub policy: Option<String>,
}

/// One rule of `nft -j list ruleset` (what bivy needs of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    /// Targets of `jump`/`goto` verdicts in the rule.
    pub jumps: Vec<String>,
}

/// The tables, chains and rules of `nft -j list ruleset` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<(String, String)>,
    pub chains: Vec<ChainInfo>,
    pub rules: Vec<RuleInfo>,
}

fn jumps_in(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "jump" || k == "goto" {
                    if let Some(t) = v.get("target").and_then(|t| t.as_str()) {
                        out.push(t.to_owned());
                    }
                }
                jumps_in(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| jumps_in(v, out)),
        _ => {}
    }
}

/// Parses `nft -j list ruleset`; anything unexpected is an `InvalidData` error.
pub fn parse_ruleset(json: &str) -> io::Result<Ruleset> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("nft -j list ruleset: unexpected output: {why}"),
        )
    };
    let v: serde_json::Value =
        serde_json::from_slice(json.as_bytes()).map_err(|e| bad(&e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .ok_or_else(|| bad("no \"nftables\" array"))?;
    let s = |o: &serde_json::Value, k: &str| -> io::Result<String> {
        o.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(&format!("missing {k:?}")))
    };
    let mut rs = Ruleset::default();
    for item in items {
        if let Some(t) = item.get("table") {
            rs.tables.push((s(t, "family")?, s(t, "name")?));
        } else if let Some(c) = item.get("chain") {
            rs.chains.push(ChainInfo {
                family: s(c, "family")?,
                table: s(c, "table")?,
                name: s(c, "name")?,
                hook: c.get("hook").and_then(|x| x.as_str()).map(str::to_owned),
                policy: c.get("policy").and_then(|x| x.as_str()).map(str::to_owned),
            });
        } else if let Some(r) = item.get("rule") {
            let mut jumps = Vec::new();
            if let Some(e) = r.get("expr") {
                jumps_in(e, &mut jumps);
            }
            rs.rules.push(RuleInfo {
                family: s(r, "family")?,
                table: s(r, "table")?,
                chain: s(r, "chain")?,
                handle: r
                    .get("handle")
                    .and_then(|h| h.as_u64())
                    .ok_or_else(|| bad("rule without a handle"))?,
                comment: r.get("comment").and_then(|x| x.as_str()).map(str::to_owned),
                jumps,
            });
        }
    }
    Ok(rs)
}

fn is_ours(family: &str, table: &str) -> bool {
    table == TABLE && (family == "inet" || family == "bridge")
}

/// Base chains on the forward hook with policy drop outside bivy's tables.
pub fn foreign_drops(rs: &Ruleset) -> Vec<ForeignChain> {
    rs.chains
        .iter()
        .filter(|c| !is_ours(&c.family, &c.table))
        .filter(|c| c.hook.as_deref() == Some("forward") && c.policy.as_deref() == Some("drop"))
        .map(|c| ForeignChain {
            family: c.family.clone(),
            table: c.table.clone(),
            chain: c.name.clone(),
            policy: c.policy.clone().unwrap_or_default(),
        })
        .collect()
}

/// Where the accepts for `c` go: `DOCKER-USER` of the same table when `c` jumps there, else `c`.
pub fn accept_target(rs: &Ruleset, c: &ForeignChain) -> String {
    let docker_user = "DOCKER-USER";
    let exists = rs
        .chains
        .iter()
        .any(|x| x.family == c.family && x.table == c.table && x.name == docker_user);
    let jumped = rs.rules.iter().any(|r| {
        r.family == c.family
            && r.table == c.table
            && r.chain == c.chain
            && r.jumps.iter().any(|j| j == docker_user)
    });
    if exists && jumped {
        docker_user.to_owned()
    } else {
        c.chain.clone()
    }
}

fn bivy_comment(bridge: &str) -> String {
    format!("bivy:{bridge}")
}

// ---- running nft ----

impl Nft {
    /// `$BIVY_NFT`, else `nft` on `PATH`, else in `/usr/sbin` or `/sbin`.
    pub fn find() -> io::Result<Nft> {
        if let Some(p) = std::env::var_os("BIVY_NFT") {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(Nft { path: p });
            }
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "nft not found: BIVY_NFT names {}, which is not a file",
                    p.display()
                ),
            ));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
        for d in dirs {
            let p = d.join("nft");
            if p.is_file() {
                return Ok(Nft { path: p });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "nft not found: install nftables (the `nft` program, package `nftables`), or set BIVY_NFT to its path",
        ))
    }

    /// A given `nft` program.
    pub fn at(path: &Path) -> Nft {
        Nft {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs nft with `args` and `stdin`; its stdout, or an error with its stderr.
    fn run(&self, what: &str, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
        let mut child = Command::new(&self.path)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{what}: run {}: {e}", self.path.display()),
                )
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as nft's failure below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(io::Error::other(format!(
                "{what}: nft {} failed ({}): {}",
                args.join(" "),
                out.status,
                err.trim()
            )));
        }
        String::from_utf8(out.stdout).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: nft printed non-UTF-8"),
            )
        })
    }

    fn apply(&self, what: &str, script: &str) -> io::Result<()> {
        self.run(what, &["-f", "-"], Some(script)).map(|_| ())
    }

    /// The current ruleset (`nft -j list ruleset`).
    pub fn ruleset(&self) -> io::Result<Ruleset> {
        let out = self.run(
            "list the nftables ruleset",
            &["-j", "list", "ruleset"],
            None,
        )?;
        parse_ruleset(&out)
    }

    /// (Re)creates bivy's tables and replaces `r.bridge`'s chains, in one transaction.
    pub fn apply_bridge(&self, r: &BridgeRules) -> io::Result<()> {
        let script = bridge_script(r)?;
        self.apply(
            &format!("apply nftables rules of bridge {}", r.bridge),
            &script,
        )?;
        self.drop_empty_tables()
    }

    /// Removes `bridge`'s chains (missing ones are fine) and bivy's tables once empty.
    pub fn remove_bridge(&self, bridge: &str) -> io::Result<()> {
        let script = remove_script(bridge)?;
        self.apply(
            &format!("remove nftables rules of bridge {bridge}"),
            &script,
        )?;
        self.drop_empty_tables()
    }

    fn drop_empty_tables(&self) -> io::Result<()> {
        let rs = self.ruleset()?;
        let mut script = String::new();
        for (family, table) in &rs.tables {
            if is_ours(family, table)
                && !rs
                    .chains
                    .iter()
                    .any(|c| &c.family == family && &c.table == table)
            {
                script.push_str(&format!("delete table {family} {table}\n"));
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        self.apply("delete bivy's empty nftables tables", &script)
    }

    /// Base chains on the forward hook with policy drop in other programs' tables (Docker's
    /// `ip filter FORWARD` with iptables-nft): bivy's bridges get no forwarding while one exists,
    /// whatever bivy's own chains accept.
    pub fn foreign_forward_drops(&self) -> io::Result<Vec<ForeignChain>> {
        Ok(foreign_drops(&self.ruleset()?))
    }

    /// Inserts `iifname BR accept` and `oifname BR accept` (comment `bivy:BR`) at the top of
    /// `c`, or of `DOCKER-USER` when `c` jumps there. Idempotent: rules already there are kept;
    /// an incomplete pair is replaced.
    pub fn accept_in_foreign(&self, c: &ForeignChain, bridge: &str) -> io::Result<()> {
        let rs = self.ruleset()?;
        let target = accept_target(&rs, c);
        let what = format!(
            "accept bridge {bridge} in {} {} {target}",
            c.family, c.table
        );
        let script = foreign_accept_script(&c.family, &c.table, &target, bridge)?;
        let comment = bivy_comment(bridge);
        let present: Vec<&RuleInfo> = rs
            .rules
            .iter()
            .filter(|r| {
                r.family == c.family
                    && r.table == c.table
                    && r.chain == target
                    && r.comment.as_deref() == Some(comment.as_str())
            })
            .collect();
        if present.len() == 2 {
            return Ok(());
        }
        let mut full = String::new();
        for r in present {
            full.push_str(&format!(
                "delete rule {} {} {} handle {}\n",
                r.family, r.table, r.chain, r.handle
            ));
        }
        full.push_str(&script);
        self.apply(&what, &full)
    }

    /// Deletes every rule with the comment `bivy:BR` in any table (by handle).
    pub fn remove_foreign_accepts(&self, bridge: &str) -> io::Result<()> {
        check_ifname(bridge)?;
        let rs = self.ruleset()?;
        let comment = bivy_comment(bridge);
        let mut script = String::new();
        for r in rs
            .rules
            .iter()
            .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
        {
            check_family(&r.family)?;
            check_identifier(&r.table)?;
            check_identifier(&r.chain)?;
            script.push_str(&format!(
                "delete rule {} {} {} handle {}\n",
                r.family, r.table, r.chain, r.handle
            ));
        }
        if script.is_empty() {
            return Ok(());
        }
        self.apply(
            &format!("remove bivy's accepts for {bridge} from foreign chains"),
            &script,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BridgeRules {
        BridgeRules {
            bridge: "bivybr0".into(),
            ipv4: Some(("10.0.3.1".parse().unwrap(), 24)),
            ipv4_nat: true,
            ipv6: Some(("fd42:1:2:3::1".parse().unwrap(), 64)),
            ipv6_nat: false,
            filters: vec![NicFilter {
                host_veth: "veth1a2b".into(),
                mac: [0x00, 0x16, 0x3e, 0xaa, 0xbb, 0xcc],
                ipv4: Some("10.0.3.5".parse().unwrap()),
                ipv6: Some("fd42:1:2:3::5".parse().unwrap()),
            }],
        }
    }

    #[test]
    fn bridge_script_is_exact() {
        let expected = r#"add table inet bivy
add chain inet bivy fwd.bivybr0 { type filter hook forward priority 0; policy accept; }
flush chain inet bivy fwd.bivybr0
add chain inet bivy in.bivybr0 { type filter hook input priority 0; policy accept; }
flush chain inet bivy in.bivybr0
add chain inet bivy out.bivybr0 { type filter hook output priority 0; policy accept; }
flush chain inet bivy out.bivybr0
add rule inet bivy fwd.bivybr0 iifname "bivybr0" accept
add rule inet bivy fwd.bivybr0 oifname "bivybr0" accept
add rule inet bivy in.bivybr0 iifname "bivybr0" udp dport { 53, 67, 547 } accept
add rule inet bivy in.bivybr0 iifname "bivybr0" tcp dport 53 accept
add rule inet bivy in.bivybr0 iifname "bivybr0" icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept
add rule inet bivy in.bivybr0 iifname "bivybr0" icmpv6 type { echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept
add rule inet bivy out.bivybr0 oifname "bivybr0" udp sport { 53, 67, 547 } accept
add rule inet bivy out.bivybr0 oifname "bivybr0" tcp sport 53 accept
add rule inet bivy out.bivybr0 oifname "bivybr0" icmp type { echo-reply, destination-unreachable, time-exceeded, parameter-problem } accept
add rule inet bivy out.bivybr0 oifname "bivybr0" icmpv6 type { echo-reply, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
add chain inet bivy pstrt.bivybr0 { type nat hook postrouting priority 100; policy accept; }
flush chain inet bivy pstrt.bivybr0
add rule inet bivy pstrt.bivybr0 ip saddr 10.0.3.0/24 ip daddr != 10.0.3.0/24 masquerade
add table bridge bivy
add chain bridge bivy nic.bivybr0
add chain bridge bivy fwd.bivybr0 { type filter hook forward priority 0; policy accept; }
flush chain bridge bivy fwd.bivybr0
add chain bridge bivy in.bivybr0 { type filter hook input priority 0; policy accept; }
flush chain bridge bivy in.bivybr0
flush chain bridge bivy nic.bivybr0
add rule bridge bivy fwd.bivybr0 jump nic.bivybr0
add rule bridge bivy in.bivybr0 jump nic.bivybr0
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" ether saddr != 00:16:3e:aa:bb:cc drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" arp saddr ether != 00:16:3e:aa:bb:cc drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" arp saddr ip != { 0.0.0.0, 10.0.3.5 } drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" ip saddr != { 0.0.0.0, 10.0.3.5 } drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" ip saddr 0.0.0.0 udp dport != 67 drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" ip6 saddr != { ::, fe80::/10, fd42:1:2:3::5 } drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" udp sport { 67, 547 } drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" ip saddr 10.0.3.1 drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" ip6 saddr fd42:1:2:3::1 drop
add rule bridge bivy nic.bivybr0 iifname "veth1a2b" icmpv6 type nd-router-advert drop
"#;
        let got = bridge_script(&rules()).unwrap();
        assert_eq!(got, expected, "\n{got}");
        assert_eq!(bridge_script(&rules()).unwrap(), got, "deterministic");
    }

    #[test]
    fn without_nat_or_filters_the_chains_are_dropped() {
        let mut r = rules();
        r.ipv4_nat = false;
        r.ipv6 = Some(("fd42::1".parse().unwrap(), 64));
        r.ipv6_nat = true;
        let s = bridge_script(&r).unwrap();
        assert!(s.contains("add rule inet bivy pstrt.bivybr0 ip6 saddr fd42::/64 ip6 daddr != fd42::/64 masquerade\n"), "{s}");
        assert!(!s.contains("ip saddr 10.0.3.0/24"), "{s}");
        r.ipv6_nat = false;
        r.filters.clear();
        let s = bridge_script(&r).unwrap();
        let tail = "add chain inet bivy pstrt.bivybr0\ndelete chain inet bivy pstrt.bivybr0\n\
                    add table bridge bivy\n\
                    add chain bridge bivy fwd.bivybr0\ndelete chain bridge bivy fwd.bivybr0\n\
                    add chain bridge bivy in.bivybr0\ndelete chain bridge bivy in.bivybr0\n\
                    add chain bridge bivy nic.bivybr0\ndelete chain bridge bivy nic.bivybr0\n";
        assert!(s.ends_with(tail), "{s}");
        assert!(!s.contains("masquerade"));
    }

    #[test]
    fn subnets_are_masked() {
        assert_eq!(
            subnet4("10.1.2.3".parse().unwrap(), 16).unwrap(),
            "10.1.0.0/16"
        );
        assert_eq!(
            subnet4("10.1.2.3".parse().unwrap(), 0).unwrap(),
            "0.0.0.0/0"
        );
        assert_eq!(
            subnet4("10.1.2.3".parse().unwrap(), 32).unwrap(),
            "10.1.2.3/32"
        );
        assert!(subnet4("10.1.2.3".parse().unwrap(), 33).is_err());
        assert_eq!(
            subnet6("fd00:1:2:3::9".parse().unwrap(), 48).unwrap(),
            "fd00:1:2::/48"
        );
        assert!(subnet6("::1".parse().unwrap(), 129).is_err());
        let mut r = rules();
        r.ipv4 = Some(("10.0.0.1".parse().unwrap(), 40));
        r.ipv4_nat = false;
        assert!(
            bridge_script(&r).is_err(),
            "a bad prefix is refused even without NAT"
        );
    }

    #[test]
    fn names_that_could_inject_syntax_are_refused() {
        for bad in [
            "br\"0",
            "br0;x",
            "br0 x",
            "br*",
            "br{0}",
            "br\\0",
            "br$x",
            "br#0",
            "",
            "averyveryverylongname",
        ] {
            let mut r = rules();
            r.bridge = bad.into();
            let e = bridge_script(&r).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(remove_script(bad).is_err(), "{bad:?}");
            let mut r = rules();
            r.filters[0].host_veth = bad.into();
            assert!(bridge_script(&r).is_err(), "{bad:?}");
        }
        for bad in ["", "9x", "a b", "a;b", "a\"", "a}"] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
            assert!(foreign_accept_script("ip", bad, "FORWARD", "br0").is_err());
            assert!(foreign_accept_script("ip", "filter", bad, "br0").is_err());
        }
        assert!(foreign_accept_script("ip;", "filter", "FORWARD", "br0").is_err());
        check_identifier("DOCKER-USER").unwrap();
        check_identifier("_x.y/z").unwrap();
    }

    #[test]
    fn remove_and_foreign_scripts_are_exact() {
        assert_eq!(
            remove_script("br0").unwrap(),
            "add table inet bivy\n\
             add chain inet bivy fwd.br0\ndelete chain inet bivy fwd.br0\n\
             add chain inet bivy in.br0\ndelete chain inet bivy in.br0\n\
             add chain inet bivy out.br0\ndelete chain inet bivy out.br0\n\
             add chain inet bivy pstrt.br0\ndelete chain inet bivy pstrt.br0\n\
             add table bridge bivy\n\
             add chain bridge bivy fwd.br0\ndelete chain bridge bivy fwd.br0\n\
             add chain bridge bivy in.br0\ndelete chain bridge bivy in.br0\n\
             add chain bridge bivy nic.br0\ndelete chain bridge bivy nic.br0\n"
        );
        assert_eq!(
            foreign_accept_script("ip", "filter", "DOCKER-USER", "br0").unwrap(),
            "insert rule ip filter DOCKER-USER oifname \"br0\" accept comment \"bivy:br0\"\n\
             insert rule ip filter DOCKER-USER iifname \"br0\" accept comment \"bivy:br0\"\n"
        );
        assert!(foreign_accept_script("bridge", "f", "FORWARD", "br0")
            .unwrap()
            .contains("meta ibrname \"br0\" accept"));
    }

    const DOCKER_JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "bivy", "handle": 1}},
      {"chain": {"family": "inet", "table": "bivy", "name": "fwd.br0", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
      {"table": {"family": "ip", "name": "filter", "handle": 3}},
      {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 1}},
      {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 4, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "ip6", "table": "x", "name": "fw", "handle": 4, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 5, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "DOCKER-USER"}}]}},
      {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER", "handle": 3, "comment": "bivy:br0", "expr": [{"accept": null}]}}
    ]}"#;

    #[test]
    fn foreign_drops_are_found_in_json() {
        let rs = parse_ruleset(DOCKER_JSON).unwrap();
        assert_eq!(rs.tables.len(), 2);
        assert_eq!(rs.rules[0].jumps, vec!["DOCKER-USER".to_string()]);
        assert_eq!(rs.rules[1].comment.as_deref(), Some("bivy:br0"));
        let f = foreign_drops(&rs);
        assert_eq!(
            f,
            vec![ForeignChain {
                family: "ip".into(),
                table: "filter".into(),
                chain: "FORWARD".into(),
                policy: "drop".into()
            }]
        );
        assert_eq!(accept_target(&rs, &f[0]), "DOCKER-USER");
        // Without the jump, DOCKER-USER is not where packets go: the chain itself is used.
        let mut rs2 = rs.clone();
        rs2.rules.remove(0);
        assert_eq!(accept_target(&rs2, &f[0]), "FORWARD");
    }

    #[test]
    fn malformed_json_is_an_error() {
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"nftables": 3}"#,
            r#"{"nftables": [{"chain": {"family": "ip"}}]}"#,
            r#"{"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "c"}}]}"#,
        ] {
            let e = parse_ruleset(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        assert_eq!(
            parse_ruleset(r#"{"nftables": []}"#).unwrap(),
            Ruleset::default()
        );
    }

    #[test]
    fn a_missing_program_is_named_in_the_error() {
        let n = Nft::at(Path::new("/nonexistent/nft"));
        let e = n.run("probe", &["--version"], None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/nft"), "{e}");
    }
}
