//! The device cgroup on cgroup2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program, attached to the
//! container's directory in the unified hierarchy, allowing exactly the rules of the v1
//! controller's `devices.allow` syntax it is built from (`c 1:3 rwm`, `b *:* m`) and denying
//! everything else. The kernel runs it on every open and mknod of a device node by a task in
//! the cgroup or below, before the v1 controller (where there is one: on a hybrid host both
//! must allow).
//!
//! The program is a straight list of checks, as crun and LXD build it: load the request's type,
//! access, major and minor, then per rule compare and either return 1 (allow) or jump to the
//! next rule; return 0 at the end. A change (hot-plug) loads a new program from the whole list,
//! attaches it beside the old one (`BPF_F_ALLOW_MULTI`: while both are attached a request needs
//! both) and then detaches the old one, so no request is ever allowed by neither or by a stale
//! rule alone. Programs a task below may attach (a privileged container's own) can only narrow
//! this one: with `BPF_F_ALLOW_MULTI` every program from the cgroup up to the root must allow.
//!
//! The attachment holds the program: nothing stays open in the daemon or the monitor, and a new
//! daemon finds the attached programs with `BPF_PROG_QUERY`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::runtime::{Error, Result};
use crate::sys::bpf as sys;

/// The programs' name (in `bpftool prog`).
const NAME: &str = "bivy_devices";

/// `struct bpf_cgroup_dev_ctx`'s type and access bits.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One allow rule: the device type (None: both), major and minor (None: any), access bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: Option<i32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: i32,
}

/// A rule in `devices.allow` syntax: `TYPE MAJOR:MINOR ACCESS` with TYPE `a`, `b` or `c`,
/// `*` for any number, ACCESS letters of `rwm`; a bare `a` allows everything.
pub fn parse_rule(s: &str) -> Result<Rule> {
    let bad = || {
        Error(format!(
            "device cgroup rule {s:?}: expected e.g. \"c 1:3 rwm\""
        ))
    };
    let mut f = s.split_whitespace();
    let kind = match f.next().ok_or_else(bad)? {
        "a" => None,
        "b" => Some(DEV_BLOCK),
        "c" => Some(DEV_CHAR),
        _ => return Err(bad()),
    };
    let Some(nums) = f.next() else {
        return if kind.is_none() {
            Ok(Rule {
                kind: None,
                major: None,
                minor: None,
                access: ACC_ALL,
            })
        } else {
            Err(bad())
        };
    };
    let (ma, mi) = nums.split_once(':').ok_or_else(bad)?;
    let num = |x: &str| -> Result<Option<u32>> {
        if x == "*" {
            return Ok(None);
        }
        // The context's numbers are compared with a 32-bit signed immediate.
        match x.parse::<u32>() {
            Ok(n) if n <= i32::MAX as u32 => Ok(Some(n)),
            _ => Err(bad()),
        }
    };
    let mut access = 0;
    for c in f.next().unwrap_or("rwm").chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(bad()),
        };
    }
    if f.next().is_some() || access == 0 {
        return Err(bad());
    }
    Ok(Rule {
        kind,
        major: num(ma)?,
        minor: num(mi)?,
        access,
    })
}

/// One eBPF instruction (`struct bpf_insn`), as the kernel reads it.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | (src << 4)) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const AND64_K: u8 = 0x57; // dst &= imm
const RSH64_K: u8 = 0x77; // dst >>= imm
const MOV64_X: u8 = 0xbf; // dst = src
const MOV64_K: u8 = 0xb7; // dst = imm
const JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JNE_X: u8 = 0x5d; // if dst != src: pc += off
const EXIT: u8 = 0x95;

/// The program allowing exactly `rules` (registers: r2 type, r3 access, r4 major, r5 minor).
pub fn program(rules: &[Rule]) -> Vec<u64> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND64_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH64_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Each check jumps to the next rule; the block ends with "allow".
        let mut checks: Vec<Vec<u64>> = Vec::new();
        if let Some(k) = r.kind {
            checks.push(vec![insn(JNE_K, 2, 0, 0, k)]);
        }
        if r.access != ACC_ALL {
            // Every bit asked for must be in the rule: (access & allowed) == access.
            checks.push(vec![
                insn(MOV64_X, 1, 3, 0, 0),
                insn(AND64_K, 1, 0, 0, r.access),
                insn(JNE_X, 1, 3, 0, 0),
            ]);
        }
        if let Some(m) = r.major {
            checks.push(vec![insn(JNE_K, 4, 0, 0, m as i32)]);
        }
        if let Some(m) = r.minor {
            checks.push(vec![insn(JNE_K, 5, 0, 0, m as i32)]);
        }
        let len: usize = checks.iter().map(Vec::len).sum::<usize>() + 2;
        let mut done = 0;
        for c in checks {
            done += c.len();
            let (last, rest) = c.split_last().expect("a check is never empty");
            p.extend_from_slice(rest);
            // The jump's offset skips what is left of this rule's block.
            let skip = (len - done) as i16;
            p.push(*last | u64::from(skip as u16) << 16);
        }
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error(format!("device cgroup: open {}: {e}", dir.display())))
}

/// Whether this kernel runs cgroup device programs: a program allowing everything loads.
/// (Kernels without `CONFIG_CGROUP_BPF` or `CONFIG_BPF_SYSCALL` say ENOSYS or EINVAL.)
pub fn supported() -> std::result::Result<(), String> {
    let allow_all = [insn(MOV64_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)];
    sys::load_device_program(&allow_all, NAME)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Make `rules` the device program of the cgroup2 directory `dir`, replacing the one (or
/// ones) attached there before.
pub fn install(dir: &Path, rules: &[Rule]) -> Result<()> {
    let err = |what: &str, e: std::io::Error| {
        Error(format!(
            "device cgroup program ({what}, {}): {e}",
            dir.display()
        ))
    };
    let cg = open_dir(dir)?;
    let old = sys::device_programs(cg.as_fd()).map_err(|e| err("query", e))?;
    let prog = sys::load_device_program(&program(rules), NAME).map_err(|e| err("load", e))?;
    sys::attach_device_program(cg.as_fd(), prog.as_fd()).map_err(|e| err("attach", e))?;
    for id in old {
        sys::detach_device_program(cg.as_fd(), id)
            .map_err(|e| err("detach the previous program", e))?;
    }
    Ok(())
}

/// The ids of the device programs attached to the cgroup2 directory `dir`.
pub fn attached(dir: &Path) -> Result<Vec<u32>> {
    let cg = open_dir(dir)?;
    sys::device_programs(cg.as_fd())
        .map_err(|e| Error(format!("device cgroup: query {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests;
