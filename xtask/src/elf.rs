//! The static-ELF check behind `xtask dist`: parse the ELF64 program headers and the dynamic
//! section ourselves (no readelf) and refuse any `PT_INTERP` or `DT_NEEDED`.
//!
//! Architecture invariant (src/lib.rs): nothing is loaded at run time. A static-pie binary (what
//! `+crt-static` gives on the gnu target) still has a `PT_DYNAMIC` for its own relocations, but
//! no interpreter and no needed libraries.

use std::path::Path;

use crate::util::Result;

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// What the check found in one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// `e_type` is ET_DYN (a PIE or a shared object) rather than ET_EXEC.
    pub pie: bool,
    /// The `PT_INTERP` path, if any.
    pub interp: Option<String>,
    /// `DT_NEEDED` entries; names are resolved through the string table when present.
    pub needed: Vec<String>,
    /// There is a `PT_DYNAMIC` segment (true for static-pie, false for a classic static exec).
    pub has_dynamic: bool,
}

impl ElfFacts {
    /// Static means: no interpreter and no needed libraries.
    pub fn is_static(&self) -> bool {
        self.interp.is_none() && self.needed.is_empty()
    }

    /// "static-pie", "static", or "dynamic".
    pub fn kind(&self) -> &'static str {
        match (self.is_static(), self.pie) {
            (true, true) => "static-pie",
            (true, false) => "static",
            (false, _) => "dynamic",
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}
fn usize_at(b: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64_at(b, off)?).ok()
}

struct Phdr {
    p_type: u32,
    offset: usize,
    vaddr: u64,
    filesz: usize,
}

/// Parse an x86_64 (ELF64, little-endian) image.
pub fn parse(b: &[u8]) -> Result<ElfFacts> {
    if b.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("not ELF64 little-endian".into());
    }
    let short = || "truncated ELF header".to_string();
    let e_type = u16_at(b, 0x10).ok_or_else(short)?;
    let phoff = usize_at(b, 0x20).ok_or_else(short)?;
    let phentsize = usize::from(u16_at(b, 0x36).ok_or_else(short)?);
    let phnum = usize::from(u16_at(b, 0x38).ok_or_else(short)?);
    if phentsize < 0x38 {
        return Err(format!("bad e_phentsize {phentsize}"));
    }
    let mut phdrs = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let bad = || format!("program header {i} out of bounds");
        phdrs.push(Phdr {
            p_type: u32_at(b, o).ok_or_else(bad)?,
            offset: usize_at(b, o + 0x08).ok_or_else(bad)?,
            vaddr: u64_at(b, o + 0x10).ok_or_else(bad)?,
            filesz: usize_at(b, o + 0x20).ok_or_else(bad)?,
        });
    }
    let mut facts = ElfFacts {
        pie: e_type == ET_DYN,
        ..ElfFacts::default()
    };
    if e_type != ET_DYN && e_type != ET_EXEC {
        return Err(format!("not an executable (e_type {e_type})"));
    }
    for ph in phdrs.iter().filter(|p| p.p_type == PT_INTERP) {
        let raw = b
            .get(ph.offset..ph.offset + ph.filesz)
            .ok_or("PT_INTERP out of bounds")?;
        let s = raw.split(|&c| c == 0).next().unwrap_or_default();
        facts.interp = Some(String::from_utf8_lossy(s).into_owned());
    }
    // The file offset of a virtual address, through the PT_LOAD segments (for DT_STRTAB).
    let file_off = |vaddr: u64| -> Option<usize> {
        phdrs.iter().filter(|p| p.p_type == 1).find_map(|p| {
            let end = p.vaddr.checked_add(u64::try_from(p.filesz).ok()?)?;
            if p.vaddr <= vaddr && vaddr < end {
                Some(p.offset + usize::try_from(vaddr - p.vaddr).ok()?)
            } else {
                None
            }
        })
    };
    for ph in phdrs.iter().filter(|p| p.p_type == PT_DYNAMIC) {
        facts.has_dynamic = true;
        let dynsec = b
            .get(ph.offset..ph.offset + ph.filesz)
            .ok_or("PT_DYNAMIC out of bounds")?;
        let mut needed_offsets = Vec::new();
        let mut strtab = None;
        for ent in dynsec.chunks_exact(16) {
            let tag = u64_at(ent, 0).expect("chunk has 16 bytes");
            let val = u64_at(ent, 8).expect("chunk has 16 bytes");
            match tag {
                DT_NULL => break,
                DT_NEEDED => needed_offsets.push(val),
                5 => strtab = Some(val), // DT_STRTAB
                _ => {}
            }
        }
        for off in needed_offsets {
            let name = strtab
                .and_then(file_off)
                .and_then(|s| usize::try_from(off).ok().map(|o| s + o))
                .and_then(|start| b.get(start..))
                .and_then(|rest| rest.split(|&c| c == 0).next())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_else(|| format!("<strtab+{off:#x}>"));
            facts.needed.push(name);
        }
    }
    Ok(facts)
}

/// Read and check one file: Ok(facts) if static, Err naming the interpreter and libraries if not.
pub fn check_static(path: &Path) -> Result<ElfFacts> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let facts = parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if !facts.is_static() {
        return Err(format!(
            "{} is not static: PT_INTERP={:?} DT_NEEDED={:?}",
            path.display(),
            facts.interp,
            facts.needed
        ));
    }
    Ok(facts)
}

/// `cargo xtask check-elf FILE...`
pub fn run(args: &[String]) -> Result {
    if args.is_empty() {
        return Err("usage: cargo xtask check-elf FILE...".into());
    }
    let mut bad = 0;
    for f in args {
        match check_static(Path::new(f)) {
            Ok(facts) => println!("{f}: {} (no PT_INTERP, no DT_NEEDED)", facts.kind()),
            Err(e) => {
                println!("FAIL {e}");
                bad += 1;
            }
        }
    }
    if bad == 0 {
        Ok(())
    } else {
        Err(format!("{bad} file(s) not static"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert!(parse(b"#!/bin/sh\n").is_err());
        assert!(parse(b"\x7fELF").is_err());
    }

    /// This test binary itself is built the default way: dynamic, with an interpreter and libc.
    #[test]
    fn own_test_binary_is_dynamic() {
        let exe = std::env::current_exe().expect("current_exe");
        let facts = parse(&std::fs::read(exe).expect("read self")).expect("parse self");
        assert_eq!(facts.kind(), "dynamic");
        assert!(
            facts
                .interp
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux")),
            "{facts:?}"
        );
        assert!(
            facts.needed.iter().any(|n| n.starts_with("libc.so")),
            "{facts:?}"
        );
    }

    /// Debian's busybox-static is a classic static ET_EXEC, when installed.
    #[test]
    fn busybox_static_is_static() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            crate::test_skip::skip(
                "busybox_static_is_static",
                "/bin/busybox absent (apt-get install busybox-static)",
            );
            return;
        }
        let facts = check_static(bb).expect("busybox-static is static");
        assert!(!facts.has_dynamic || facts.needed.is_empty());
    }
}
