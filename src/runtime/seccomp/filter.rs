//! [`Policy`] -> classic BPF for `seccomp(SECCOMP_SET_MODE_FILTER)`.
//!
//! Layout of the program (all jumps relative; long ones use `BPF_JA`, whose offset is 32 bits):
//! ```text
//! ld  arch
//! jeq AUDIT_ARCH_I386 ? next : +1
//! ja  i386_section                        ; 32-bit programs and `int 0x80` from 64-bit code
//! jeq AUDIT_ARCH_X86_64 ? +1 : next
//! ret KILL_PROCESS                        ; no other ABI exists on an x86_64 kernel
//! ld  nr
//! jset 0x40000000 ? next : +1             ; x32 ABI (not built into this kernel; refused anyway)
//! ret ERRNO(ENOSYS)
//! segment 1 .. segment N                  ; x86_64 rules, built by seccompiler, see below
//! ret default_action
//! i386_section                            ; hand-built, same rules by their i386 numbers
//! ret default_action
//! ```
//! x86_64 rules are compiled by seccompiler, one `SeccompFilter` per run of consecutive rules with
//! the same action (seccompiler has one match action per filter). Each segment's "no match" answer
//! is a sentinel `SECCOMP_RET_TRACE|0xb1f7` (the policy parser never produces `trace`), and every
//! `ret sentinel` is then rewritten into `ja <next segment>` (same size: one instruction), so the
//! segments chain in file order and the first matching rule wins, as in LXC.
//! seccompiler's own arch check at the head of each segment passes (we only get there on x86_64),
//! and its `apply_filter` is not used (it sets NO_NEW_PRIVS: see host.md §4).

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use super::policy::{Action, Arch, CmpOp, Policy, Rule};
use super::syscalls;
use crate::runtime::{Error, Result};

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06;

// struct seccomp_data offsets.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// The kernel refuses programs longer than this (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

const SENTINEL_DATA: u32 = 0xb1f7;

/// A compiled filter, ready for [`super::load`].
#[derive(Clone)]
pub struct Program(pub Vec<libc::sock_filter>);

impl Program {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One instruction per line, `code jt jf k` in hex: the golden-file form.
    pub fn dump(&self) -> String {
        self.0
            .iter()
            .map(|i| format!("{:04x} {:02x} {:02x} {:08x}\n", i.code, i.jt, i.jf, i.k))
            .collect()
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Program({} instructions)", self.0.len())
    }
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret_value(a: Action) -> u32 {
    match a {
        Action::Allow => RET_ALLOW,
        Action::Errno(n) => RET_ERRNO | (n & 0xffff),
        Action::Kill => RET_KILL_PROCESS,
        Action::Trap => RET_TRAP,
        Action::Log => RET_LOG,
    }
}

fn to_seccompiler_action(a: Action) -> SeccompAction {
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Errno(n) => SeccompAction::Errno(n),
        Action::Kill => SeccompAction::KillProcess,
        Action::Trap => SeccompAction::Trap,
        Action::Log => SeccompAction::Log,
    }
}

fn number(table: &[(&str, u32)], name: &str) -> Option<u32> {
    table.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

fn cerr(r: &Rule, e: impl std::fmt::Display) -> Error {
    Error(format!("seccomp policy line {}: {e}", r.line))
}

/// One seccompiler segment for a run of x86_64 rules sharing `action`.
fn x86_64_segment(rules: &[&Rule], action: Action) -> Result<Vec<libc::sock_filter>> {
    let mut map: std::collections::BTreeMap<i64, Vec<SeccompRule>> = Default::default();
    // Syscalls with an unconditional rule in this segment: conditions on them are moot.
    let mut unconditional = std::collections::BTreeSet::new();
    for r in rules {
        let nr =
            i64::from(number(syscalls::X86_64, &r.name).expect("caller filtered on x86_64 names"));
        if r.conds.is_empty() {
            unconditional.insert(nr);
            map.insert(nr, Vec::new());
            continue;
        }
        if unconditional.contains(&nr) {
            continue;
        }
        let conds = r
            .conds
            .iter()
            .map(|c| {
                let op = match c.op {
                    CmpOp::Eq => SeccompCmpOp::Eq,
                    CmpOp::Ne => SeccompCmpOp::Ne,
                    CmpOp::Lt => SeccompCmpOp::Lt,
                    CmpOp::Le => SeccompCmpOp::Le,
                    CmpOp::Gt => SeccompCmpOp::Gt,
                    CmpOp::Ge => SeccompCmpOp::Ge,
                    CmpOp::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
                };
                // 64-bit comparisons, like libseccomp.
                SeccompCondition::new(c.index, SeccompCmpArgLen::Qword, op, c.value)
                    .map_err(|e| cerr(r, e))
            })
            .collect::<Result<Vec<_>>>()?;
        map.entry(nr)
            .or_default()
            .push(SeccompRule::new(conds).map_err(|e| cerr(r, e))?);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Trace(SENTINEL_DATA),
        to_seccompiler_action(action),
        TargetArch::x86_64,
    )
    .map_err(|e| cerr(rules[0], e))?;
    let prog: seccompiler::BpfProgram = filter.try_into().map_err(|e| cerr(rules[0], e))?;
    let len = prog.len();
    let sentinel = RET_TRACE | SENTINEL_DATA;
    Ok(prog
        .into_iter()
        .enumerate()
        .map(|(pc, i)| {
            if i.code == BPF_RET_K && i.k == sentinel {
                // Fall through to the first instruction after this segment.
                stmt(BPF_JA, (len - pc - 1) as u32)
            } else {
                libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                }
            }
        })
        .collect())
}

/// The i386 section: for each rule, `ld nr; jeq; (ld arg; cmp)*; ret action`, a failed test
/// jumping to the next rule. Arguments of a 32-bit syscall are 32 bits wide, zero-extended in
/// `seccomp_data`, so only the low word is compared; a condition with a value above 32 bits is
/// decided statically.
fn i386_section(rules: &[&Rule], default: Action) -> Vec<libc::sock_filter> {
    let mut out = Vec::new();
    for r in rules {
        let Some(nr) = number(syscalls::I386, &r.name) else {
            continue;
        };
        let start = out.len();
        // Instructions whose jt (true) or jf (false) must point at the next rule.
        let mut fix_jt = Vec::new();
        let mut fix_jf = Vec::new();
        out.push(stmt(BPF_LD_W_ABS, DATA_NR));
        fix_jf.push(out.len());
        out.push(jump(BPF_JEQ_K, nr, 0, 0));
        let mut never = false;
        for c in &r.conds {
            let wide = c.value > u64::from(u32::MAX);
            match (c.op, wide) {
                // A zero-extended 32-bit argument never equals / exceeds a wider value ...
                (CmpOp::Eq | CmpOp::Gt | CmpOp::Ge, true) => never = true,
                // ... and always differs from / is below it.
                (CmpOp::Ne | CmpOp::Lt | CmpOp::Le, true) => continue,
                _ => {}
            }
            let v = c.value as u32;
            out.push(stmt(BPF_LD_W_ABS, DATA_ARGS + 8 * u32::from(c.index)));
            match c.op {
                CmpOp::Eq => {
                    fix_jf.push(out.len());
                    out.push(jump(BPF_JEQ_K, v, 0, 0));
                }
                CmpOp::Ne => {
                    fix_jt.push(out.len());
                    out.push(jump(BPF_JEQ_K, v, 0, 0));
                }
                CmpOp::Gt => {
                    fix_jf.push(out.len());
                    out.push(jump(BPF_JGT_K, v, 0, 0));
                }
                CmpOp::Ge => {
                    fix_jf.push(out.len());
                    out.push(jump(BPF_JGE_K, v, 0, 0));
                }
                CmpOp::Lt => {
                    fix_jt.push(out.len());
                    out.push(jump(BPF_JGE_K, v, 0, 0));
                }
                CmpOp::Le => {
                    fix_jt.push(out.len());
                    out.push(jump(BPF_JGT_K, v, 0, 0));
                }
                CmpOp::MaskedEq(mask) => {
                    if mask > u64::from(u32::MAX) && (c.value >> 32) & (mask >> 32) != 0 {
                        never = true;
                    }
                    out.push(stmt(BPF_AND_K, mask as u32));
                    fix_jf.push(out.len());
                    out.push(jump(BPF_JEQ_K, v, 0, 0));
                }
            }
        }
        if never {
            out.truncate(start);
            continue;
        }
        out.push(stmt(BPF_RET_K, ret_value(r.action)));
        let next = out.len();
        // A rule is at most 2 + 6 * 3 + 1 instructions, so these offsets fit in a u8.
        for pc in fix_jt {
            out[pc].jt = (next - pc - 1) as u8;
        }
        for pc in fix_jf {
            out[pc].jf = (next - pc - 1) as u8;
        }
    }
    out.push(stmt(BPF_RET_K, ret_value(default)));
    out
}

/// Build the BPF program for a parsed policy.
pub fn build(p: &Policy) -> Result<Program> {
    let for64: Vec<&Rule> = p
        .rules
        .iter()
        .filter(|r| {
            matches!(r.arch, Arch::All | Arch::X86_64)
                && number(syscalls::X86_64, &r.name).is_some()
        })
        .collect();
    let for32: Vec<&Rule> = p
        .rules
        .iter()
        .filter(|r| matches!(r.arch, Arch::All | Arch::I386))
        .collect();

    let mut body = Vec::new();
    let mut i = 0;
    while i < for64.len() {
        let action = for64[i].action;
        let mut j = i;
        while j < for64.len() && for64[j].action == action {
            j += 1;
        }
        body.extend(x86_64_segment(&for64[i..j], action)?);
        i = j;
    }
    body.push(stmt(BPF_RET_K, ret_value(p.default_action)));

    let mut prog = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_I386, 0, 1),
        // Over the 5 header instructions below and the x86_64 body.
        stmt(BPF_JA, (5 + body.len()) as u32),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32),
    ];
    prog.extend(body);
    prog.extend(i386_section(&for32, p.default_action));
    if prog.len() > MAX_INSNS {
        return Err(Error(format!(
            "seccomp policy too large: {} BPF instructions (the kernel takes at most {MAX_INSNS})",
            prog.len()
        )));
    }
    Ok(Program(prog))
}
