//! Parser for the LXC/LXD "version 2" seccomp policy text (the format of `seccomp/default.policy`,
//! `raw.seccomp` and the generated instance policies).
//!
//! Owns only text -> [`Policy`]; no BPF here (see `filter.rs`). Every error names its line.
//!
//! Accepted grammar (a subset of LXC's `parse_config_v2`, what LXD generates plus argument
//! conditions):
//! ```text
//! 2
//! denylist [action]       # also: blacklist, allowlist, whitelist; optional default action
//! reject_force_umount     # anywhere: umount2(.., MNT_FORCE) -> EPERM, in every arch
//! [all]                   # also [x86_64] [amd64] [i386] [x86]; other arches are parsed and skipped
//! name [action] [idx,value,op(,value2)]...
//! ```
//! Actions: `kill` (kill the process), `errno N`, `trap`, `allow`, `log`. `notify` and `trace` fail
//! with "not supported yet". Without an action a rule takes the mode's rule default (LXC's):
//! `kill` in a denylist, `allow` in an allowlist. Comments start with `#`, also after a rule.

use super::syscalls;
use crate::runtime::{Error, Result};

/// Whether unlisted syscalls are allowed (denylist) or refused (allowlist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Denylist,
    Allowlist,
}

/// What the filter answers for a matching syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fail the call with this errno.
    Errno(u32),
    /// Kill the whole process (SIGSYS, not catchable). LXC's `kill` kills the thread; killing the
    /// process avoids leaving a half-dead multithreaded program behind.
    Kill,
    /// Send a catchable SIGSYS.
    Trap,
    /// Allow and log to the audit log.
    Log,
}

/// Which ABIs a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `[all]`: x86_64 and i386 (each by its own number; a name missing in one ABI is skipped there).
    All,
    X86_64,
    I386,
    /// A section for an architecture this kernel cannot run (`[arm64]`, ...): parsed, never compiled.
    Foreign,
}

/// Comparison of one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

/// `arg[index] <op> value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub index: u8,
    pub op: CmpOp,
    pub value: u64,
}

/// One rule: first match wins, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1-based line in the policy text (0 for rules the parser synthesised).
    pub line: usize,
    pub arch: Arch,
    pub name: String,
    pub action: Action,
    /// All must hold (AND). Empty: unconditional.
    pub conds: Vec<Cond>,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Answer for syscalls no rule matches.
    pub default_action: Action,
    pub rules: Vec<Rule>,
}

const MNT_FORCE: u64 = 1;

fn err(line: usize, msg: impl std::fmt::Display) -> Error {
    Error(format!("seccomp policy line {line}: {msg}"))
}

fn parse_action(words: &[&str], line: usize) -> Result<(Action, usize)> {
    match words.first().copied() {
        Some("kill") | Some("kill_process") | Some("kill_thread") => Ok((Action::Kill, 1)),
        Some("trap") => Ok((Action::Trap, 1)),
        Some("allow") => Ok((Action::Allow, 1)),
        Some("log") => Ok((Action::Log, 1)),
        Some("errno") => {
            let n = words
                .get(1)
                .ok_or_else(|| err(line, "`errno` needs a number"))?;
            let n: u32 = n
                .parse()
                .map_err(|_| err(line, format!("bad errno {n:?}")))?;
            // SECCOMP_RET_DATA is 16 bits and the kernel caps errno at MAX_ERRNO (4095).
            if n > 4095 {
                return Err(err(line, format!("errno {n} out of range (0-4095)")));
            }
            Ok((Action::Errno(n), 2))
        }
        Some(a @ ("notify" | "trace")) => Err(err(
            line,
            format!("not supported yet: seccomp action `{a}`"),
        )),
        _ => Ok((Action::Kill, 0)), // no action word: caller substitutes the mode's default
    }
}

fn parse_number(s: &str, line: usize) -> Result<u64> {
    let s = s.trim();
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if let Some(n) = s.strip_prefix('-') {
        // LXC accepts negative numbers (e.g. AT_FDCWD); they compare as 64-bit two's complement.
        n.parse::<u64>().map(|v| v.wrapping_neg())
    } else {
        s.parse::<u64>()
    };
    r.map_err(|_| err(line, format!("bad number {s:?} in argument condition")))
}

fn parse_cond(s: &str, line: usize) -> Result<Cond> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| {
            err(
                line,
                format!("bad argument condition {s:?}, expected [idx,value,op]"),
            )
        })?;
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    if parts.len() < 3 || parts.len() > 4 {
        return Err(err(
            line,
            format!("bad argument condition {s:?}, expected [idx,value,op(,value2)]"),
        ));
    }
    let index: u8 = parts[0]
        .parse()
        .map_err(|_| err(line, format!("bad argument index {:?}", parts[0])))?;
    if index > 5 {
        return Err(err(
            line,
            format!("argument index {index} out of range (0-5)"),
        ));
    }
    let value = parse_number(parts[1], line)?;
    let op = match parts[2] {
        "SCMP_CMP_EQ" | "==" => CmpOp::Eq,
        "SCMP_CMP_NE" | "!=" => CmpOp::Ne,
        "SCMP_CMP_LT" | "<" => CmpOp::Lt,
        "SCMP_CMP_LE" | "<=" => CmpOp::Le,
        "SCMP_CMP_GT" | ">" => CmpOp::Gt,
        "SCMP_CMP_GE" | ">=" => CmpOp::Ge,
        "SCMP_CMP_MASKED_EQ" | "&=" => {
            let v2 = parts
                .get(3)
                .ok_or_else(|| err(line, "SCMP_CMP_MASKED_EQ needs [idx,mask,op,value]"))?;
            let v2 = parse_number(v2, line)?;
            return Ok(Cond {
                index,
                op: CmpOp::MaskedEq(value),
                value: v2,
            });
        }
        o => return Err(err(line, format!("unknown comparison {o:?}"))),
    };
    Ok(Cond { index, op, value })
}

fn known(arch: Arch, name: &str) -> bool {
    let in64 = syscalls::X86_64.iter().any(|(n, _)| *n == name);
    let in32 = syscalls::I386.iter().any(|(n, _)| *n == name);
    match arch {
        Arch::All => in64 || in32,
        Arch::X86_64 => in64,
        Arch::I386 => in32,
        Arch::Foreign => true,
    }
}

/// Parse a policy. Errors name the 1-based line.
pub fn parse(text: &str) -> Result<Policy> {
    let mut lines = text.lines().enumerate().map(|(i, l)| {
        let l = l.split('#').next().unwrap_or("").trim();
        (i + 1, l)
    });
    let mut next_content = || lines.by_ref().find(|(_, l)| !l.is_empty());

    match next_content() {
        Some((_, "2")) => {}
        Some((n, "1")) => {
            return Err(err(
                n,
                "not supported yet: version 1 seccomp policies (use version 2)",
            ))
        }
        Some((n, v)) => {
            return Err(err(
                n,
                format!("expected the version line `2`, found {v:?}"),
            ))
        }
        None => return Err(err(1, "empty policy (expected the version line `2`)")),
    }
    let (mode_line, mode_text) =
        next_content().ok_or_else(|| err(1, "missing the mode line (denylist or allowlist)"))?;
    let mut words = mode_text.split_whitespace();
    let mode = match words.next() {
        Some("denylist" | "blacklist") => Mode::Denylist,
        Some("allowlist" | "whitelist") => Mode::Allowlist,
        Some(w) => {
            return Err(err(
                mode_line,
                format!("expected denylist or allowlist, found {w:?}"),
            ))
        }
        None => unreachable!("non-empty line has a word"),
    };
    let rest_words: Vec<&str> = words.collect();
    let (rule_default, mut default_action) = match mode {
        Mode::Denylist => (Action::Kill, Action::Allow),
        Mode::Allowlist => (Action::Allow, Action::Kill),
    };
    if !rest_words.is_empty() {
        let (a, used) = parse_action(&rest_words, mode_line)?;
        if used == 0 || used != rest_words.len() {
            return Err(err(
                mode_line,
                format!("bad default action {:?}", rest_words.join(" ")),
            ));
        }
        default_action = a;
    }
    let rest: Vec<(usize, &str)> = lines.collect();

    let mut arch = Arch::All;
    let mut rules = Vec::new();
    for (n, l) in rest {
        if l.is_empty() {
            continue;
        }
        if let Some(sec) = l.strip_prefix('[') {
            let sec = sec
                .strip_suffix(']')
                .ok_or_else(|| err(n, format!("bad section header {l:?}")))?;
            arch = match sec.trim() {
                "all" => Arch::All,
                "x86_64" | "amd64" => Arch::X86_64,
                "i386" | "x86" => Arch::I386,
                "x32" | "arm64" | "aarch64" | "arm" | "armel" | "armhf" | "ppc64le" | "ppc64"
                | "ppc" | "s390x" | "s390" | "mips" | "mipsel" | "mips64" | "mips64el"
                | "riscv64" => Arch::Foreign,
                s => return Err(err(n, format!("unknown architecture section [{s}]"))),
            };
            continue;
        }
        if l == "reject_force_umount" {
            rules.push(Rule {
                line: n,
                arch: Arch::All,
                name: "umount2".into(),
                action: Action::Errno(libc::EPERM as u32),
                conds: vec![Cond {
                    index: 1,
                    op: CmpOp::MaskedEq(MNT_FORCE),
                    value: MNT_FORCE,
                }],
            });
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        let name = words[0];
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(err(n, format!("bad syscall name {name:?}")));
        }
        if !known(arch, name) {
            return Err(err(n, format!("unknown syscall {name:?} for this section")));
        }
        let (mut action, used) = parse_action(&words[1..], n)?;
        if used == 0 {
            action = rule_default;
        }
        let mut conds = Vec::new();
        for w in &words[1 + used..] {
            if !w.starts_with('[') {
                return Err(err(
                    n,
                    format!("unexpected {w:?} (expected an action or [idx,value,op])"),
                ));
            }
            conds.push(parse_cond(w, n)?);
        }
        rules.push(Rule {
            line: n,
            arch,
            name: name.to_string(),
            action,
            conds,
        });
    }
    Ok(Policy {
        mode,
        default_action,
        rules,
    })
}

fn overlaps(a: Arch, b: Arch) -> bool {
    a == b || (a == Arch::All && b != Arch::Foreign) || (b == Arch::All && a != Arch::Foreign)
}

/// Rules that can never take effect: an exact duplicate of an earlier rule, a rule after an
/// unconditional rule for the same syscall (first match wins), and a rule whose action is the
/// policy's default. Returns one message per finding, naming both lines; empty when clean.
/// Compilation does not refuse these (appended `security.syscalls.deny` lines may repeat the
/// defaults); the golden test keeps `seccomp/default.policy` clean.
pub fn redundant_rules(p: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in p.rules.iter().enumerate() {
        if r.action == p.default_action {
            out.push(format!(
                "line {}: `{}` has the default action, so it does nothing",
                r.line, r.name
            ));
            continue;
        }
        for e in &p.rules[..i] {
            if e.name != r.name || !overlaps(e.arch, r.arch) {
                continue;
            }
            if e.conds == r.conds && e.arch == r.arch {
                out.push(format!(
                    "line {}: `{}` duplicates line {}",
                    r.line, r.name, e.line
                ));
                break;
            }
            if e.conds.is_empty() && (e.arch == r.arch || e.arch == Arch::All) {
                out.push(format!(
                    "line {}: `{}` is shadowed by the unconditional rule on line {}",
                    r.line, r.name, e.line
                ));
                break;
            }
        }
    }
    out
}
