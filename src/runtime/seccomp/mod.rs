//! Seccomp: instance config -> policy text -> BPF -> loaded filter.
//!
//! - [`build_policy`] mirrors LXD's `seccompGetPolicyContent`: the policy text for an instance.
//! - [`compile`] parses the text (`policy.rs`) and builds the BPF (`filter.rs`).
//! - [`load`] installs it with our own `seccomp()` call (`sys::seccomp`), never setting
//!   NO_NEW_PRIVS, so setuid programs in the container keep working.
//!
//! The default policy is data: `seccomp/default.policy`, embedded, one `# why` comment per rule.
//! Not done here: user notification (`security.syscalls.intercept.*`), refused as "not supported yet".

mod filter;
mod policy;
mod syscalls;

pub use filter::Program;
pub use policy::{parse, redundant_rules, Action, Arch, CmpOp, Cond, Mode, Policy, Rule};

use crate::runtime::{Error, Result};

/// The embedded default policy (LXD's default denylist plus `reject_force_umount`, errno EPERM).
pub const DEFAULT_POLICY: &str = include_str!("../../../seccomp/default.policy");

/// The seccomp-related instance config, as the daemon resolved it (profiles expanded).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// `raw.seccomp`: replaces the whole generated policy.
    pub raw: Option<String>,
    /// `security.syscalls.deny_default` (default true): include `seccomp/default.policy`.
    pub deny_default: bool,
    /// `security.syscalls.deny`: lines appended verbatim to the `[all]` section of the denylist.
    pub deny: String,
    /// `security.syscalls.allow`: when not empty, the policy is an allowlist of these lines.
    pub allow: String,
    /// `security.syscalls.deny_compat`: LXD blocks the x32 compat entry points with it; our filter
    /// refuses the whole x32 ABI always, so this only adds a note to the policy.
    pub deny_compat: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            raw: None,
            deny_default: true,
            deny: String::new(),
            allow: String::new(),
            deny_compat: false,
        }
    }
}

/// The policy text for an instance (LXD `seccompGetPolicyContent`).
pub fn build_policy(cfg: &PolicyConfig) -> Result<String> {
    if let Some(raw) = cfg.raw.as_deref().filter(|r| !r.trim().is_empty()) {
        parse(raw).map_err(|e| Error(format!("raw.seccomp: {e}")))?;
        return Ok(raw.to_string());
    }
    let mut p = String::new();
    if !cfg.allow.trim().is_empty() {
        p.push_str("2\nallowlist\n[all]\n");
        p.push_str(cfg.allow.trim_end());
        p.push('\n');
    } else {
        if cfg.deny_default {
            p.push_str(DEFAULT_POLICY);
            if !p.ends_with('\n') {
                p.push('\n');
            }
        } else {
            p.push_str("2\ndenylist\n");
        }
        if cfg.deny_compat {
            p.push_str("# security.syscalls.deny_compat: the x32 ABI is always refused (ENOSYS) by the compiled filter\n");
        }
        if !cfg.deny.trim().is_empty() {
            p.push_str("# security.syscalls.deny\n[all]\n");
            p.push_str(cfg.deny.trim_end());
            p.push('\n');
        }
    }
    // Refuse a config that would only fail at container start.
    parse(&p)?;
    Ok(p)
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" | "off" => Ok(false),
        "true" | "1" | "yes" | "on" => Ok(true),
        _ => Err(Error(format!(
            "invalid value for {key}: {value:?} is not a boolean"
        ))),
    }
}

/// Validate one seccomp-related config key (`raw.seccomp`, `security.syscalls.*`).
pub fn validate_config_value(key: &str, value: &str) -> Result<()> {
    let ctx = |e: Error| Error(format!("invalid value for {key}: {e}"));
    match key {
        "raw.seccomp" => {
            if !value.trim().is_empty() {
                compile(value).map_err(ctx)?;
            }
            Ok(())
        }
        "security.syscalls.deny_default" | "security.syscalls.deny_compat" => {
            parse_bool(key, value).map(drop)
        }
        "security.syscalls.deny" | "security.syscalls.blacklist" => {
            compile(&format!("2\ndenylist\n[all]\n{value}\n"))
                .map(drop)
                .map_err(ctx)
        }
        "security.syscalls.allow" | "security.syscalls.whitelist" => {
            compile(&format!("2\nallowlist\n[all]\n{value}\n"))
                .map(drop)
                .map_err(ctx)
        }
        k if k.starts_with("security.syscalls.intercept.") => {
            if parse_bool(key, value)? {
                Err(Error(format!(
                    "not supported yet: {key} (seccomp user notification)"
                )))
            } else {
                Ok(())
            }
        }
        _ => Err(Error(format!("unknown seccomp config key {key:?}"))),
    }
}

/// Parse and compile a policy. Parse errors name the line.
pub fn compile(policy: &str) -> Result<Program> {
    filter::build(&parse(policy)?)
}

/// Install the filter on every thread of the calling process (TSYNC) and so on all it forks/execs.
/// Needs CAP_SYS_ADMIN in the caller's user namespace (we never set NO_NEW_PRIVS): call it in the
/// container's init after the user namespace is set up and before the exec of init.
pub fn load(prog: &Program) -> Result<()> {
    crate::sys::seccomp::set_mode_filter(&prog.0).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EACCES) {
            " (needs CAP_SYS_ADMIN in the current user namespace; NO_NEW_PRIVS is deliberately not set)"
        } else {
            ""
        };
        Error(format!("loading the seccomp filter ({} instructions): {e}{hint}", prog.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_parses_and_compiles() {
        let p = parse(DEFAULT_POLICY).expect("default policy parses");
        assert_eq!(p.mode, Mode::Denylist);
        assert_eq!(p.default_action, Action::Allow);
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "umount2",
                "kexec_load",
                "kexec_file_load",
                "open_by_handle_at",
                "init_module",
                "finit_module",
                "delete_module"
            ]
        );
        assert!(
            p.rules.iter().all(|r| r.action == Action::Errno(1)),
            "every default rule is EPERM"
        );
        let prog = compile(DEFAULT_POLICY).expect("default policy compiles");
        assert!(prog.len() > 20 && prog.len() < 200, "{}", prog.len());
    }

    #[test]
    fn default_policy_has_no_redundant_rules() {
        let p = parse(DEFAULT_POLICY).unwrap();
        assert_eq!(redundant_rules(&p), Vec::<String>::new());
    }

    #[test]
    fn every_default_rule_has_a_why_comment() {
        let lines: Vec<&str> = DEFAULT_POLICY.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with('[') || i < 2 {
                continue;
            }
            let mut j = i;
            let mut found = false;
            while j > 0 && lines[j - 1].trim_start().starts_with('#') {
                j -= 1;
                found |= lines[j].trim_start().starts_with("# why:");
            }
            assert!(
                found,
                "line {}: {l:?} has no `# why:` comment above it",
                i + 1
            );
        }
    }

    #[test]
    fn redundant_and_duplicate_rules_are_found() {
        let p = parse("2\ndenylist\n[all]\nmknod errno 1\nmknod errno 1\nchmod\nchmod errno 13 [1,0,SCMP_CMP_EQ]\nsync allow\n")
            .unwrap();
        let r = redundant_rules(&p);
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(
            r[0].contains("line 5") && r[0].contains("duplicates line 4"),
            "{r:?}"
        );
        assert!(
            r[1].contains("line 7") && r[1].contains("shadowed") && r[1].contains("line 6"),
            "{r:?}"
        );
        assert!(
            r[2].contains("line 8") && r[2].contains("default action"),
            "{r:?}"
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        let check = |text: &str, want: &str| {
            let e = compile(text).unwrap_err().0;
            assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
        };
        check("", "line 1");
        check("3\ndenylist\n", "line 1: expected the version line");
        check("2\nmaybelist\n", "line 2: expected denylist or allowlist");
        check(
            "2\ndenylist\n[all]\nnot_a_syscall errno 1\n",
            "line 4: unknown syscall \"not_a_syscall\"",
        );
        check("2\ndenylist\n# c\n\nmknod errno x\n", "line 5: bad errno");
        check(
            "2\ndenylist\nmknod errno 1 [9,0,SCMP_CMP_EQ]\n",
            "line 3: argument index 9",
        );
        check("2\ndenylist\nmknod notify\n", "line 3: not supported yet");
        check("2\ndenylist\n[vax]\n", "line 3: unknown architecture");
        check(
            "2\ndenylist\n[i386]\nkexec_file_load\n",
            "line 4: unknown syscall",
        );
    }

    #[test]
    fn rule_defaults_follow_lxc() {
        let p = parse("2\ndenylist\nmknod\n").unwrap();
        assert_eq!(p.rules[0].action, Action::Kill);
        let p = parse("2\nallowlist errno 1\nread\n").unwrap();
        assert_eq!(
            (p.rules[0].action, p.default_action),
            (Action::Allow, Action::Errno(1))
        );
        let p = parse("2\nwhitelist\nread\n").unwrap();
        assert_eq!(p.default_action, Action::Kill);
    }

    #[test]
    fn build_policy_mirrors_lxd() {
        let def = build_policy(&PolicyConfig::default()).unwrap();
        assert_eq!(def, DEFAULT_POLICY);

        let cfg = PolicyConfig {
            deny: "mknod errno 1\nmknodat errno 1".into(),
            ..Default::default()
        };
        let p = build_policy(&cfg).unwrap();
        assert!(
            p.starts_with(DEFAULT_POLICY) && p.ends_with("[all]\nmknod errno 1\nmknodat errno 1\n"),
            "{p}"
        );

        let cfg = PolicyConfig {
            deny_default: false,
            deny: "mknod".into(),
            ..Default::default()
        };
        assert_eq!(
            build_policy(&cfg).unwrap(),
            "2\ndenylist\n# security.syscalls.deny\n[all]\nmknod\n"
        );

        let cfg = PolicyConfig {
            allow: "read\nwrite".into(),
            deny: "ignored".into(),
            ..Default::default()
        };
        assert_eq!(
            build_policy(&cfg).unwrap(),
            "2\nallowlist\n[all]\nread\nwrite\n"
        );

        let cfg = PolicyConfig {
            raw: Some("2\nallowlist\nread\n".into()),
            deny: "x".into(),
            ..Default::default()
        };
        assert_eq!(build_policy(&cfg).unwrap(), "2\nallowlist\nread\n");

        let cfg = PolicyConfig {
            deny: "mknod errno".into(),
            ..Default::default()
        };
        assert!(build_policy(&cfg)
            .unwrap_err()
            .0
            .contains("`errno` needs a number"));
    }

    #[test]
    fn config_validation() {
        assert!(validate_config_value("security.syscalls.deny", "mknod\nmknodat errno 1").is_ok());
        assert!(validate_config_value("security.syscalls.deny", "nosuchcall").is_err());
        assert!(validate_config_value("security.syscalls.allow", "read\nwrite").is_ok());
        assert!(validate_config_value("security.syscalls.deny_default", "false").is_ok());
        assert!(validate_config_value("security.syscalls.deny_default", "maybe").is_err());
        assert!(validate_config_value("raw.seccomp", "2\ndenylist\nmknod\n").is_ok());
        assert!(validate_config_value("raw.seccomp", "2\ndenylist\nmknod kaboom\n").is_err());
        assert!(validate_config_value("security.syscalls.intercept.mknod", "false").is_ok());
        let e = validate_config_value("security.syscalls.intercept.mknod", "true").unwrap_err();
        assert!(e.0.contains("not supported yet"), "{e}");
        assert!(validate_config_value("security.nesting", "true").is_err());
    }

    /// Golden BPF of the default policy: a change to the policy or the builder shows up here.
    #[test]
    fn default_program_golden() {
        let got = compile(DEFAULT_POLICY).unwrap().dump();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp/default.bpf.golden");
        if std::env::var_os("BIVY_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want =
            std::fs::read_to_string(path).expect("golden file (BIVY_UPDATE_GOLDEN=1 writes it)");
        assert_eq!(
            got, want,
            "BPF of seccomp/default.policy changed; review and rerun with BIVY_UPDATE_GOLDEN=1"
        );
    }

    /// A classic-BPF interpreter for the instructions our programs use, run on a synthetic
    /// `seccomp_data`: checks the program's decisions without loading it.
    fn run(prog: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog.0[pc];
            pc += 1;
            let cond = |c: bool| if c { i.jt as usize } else { i.jf as usize };
            match i.code {
                0x20 => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += cond(acc == i.k),
                0x25 => pc += cond(acc > i.k),
                0x35 => pc += cond(acc >= i.k),
                0x45 => pc += cond(acc & i.k != 0),
                0x06 => return i.k,
                c => panic!("unexpected BPF opcode {c:#x} at {}", pc - 1),
            }
        }
    }

    const X86_64: u32 = 0xc000_003e;
    const I386: u32 = 0x4000_0003;
    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0001;
    const ENOSYS: u32 = 0x0005_0026;
    const KILL: u32 = 0x8000_0000;

    #[test]
    fn default_program_decisions() {
        let p = compile(DEFAULT_POLICY).unwrap();
        let no = [0u64; 6];
        assert_eq!(run(&p, X86_64, 39, no), ALLOW, "getpid");
        assert_eq!(run(&p, X86_64, 175, no), EPERM, "init_module");
        assert_eq!(run(&p, X86_64, 320, no), EPERM, "kexec_file_load");
        assert_eq!(
            run(&p, X86_64, 166, [0, 1, 0, 0, 0, 0]),
            EPERM,
            "umount2 MNT_FORCE"
        );
        assert_eq!(
            run(&p, X86_64, 166, [0, 2 | 8, 0, 0, 0, 0]),
            ALLOW,
            "umount2 MNT_DETACH|UMOUNT_NOFOLLOW"
        );
        assert_eq!(
            run(&p, X86_64, 166, [0, 1 << 32, 0, 0, 0, 0]),
            ALLOW,
            "umount2 high bits only"
        );
        assert_eq!(run(&p, X86_64, 39 | 0x4000_0000, no), ENOSYS, "x32 getpid");
        assert_eq!(
            run(&p, X86_64, 175 | 0x4000_0000, no),
            ENOSYS,
            "x32 anything"
        );
        assert_eq!(run(&p, I386, 20, no), ALLOW, "i386 getpid");
        assert_eq!(
            run(&p, I386, 175, no),
            ALLOW,
            "i386 175 is rt_sigprocmask, not init_module"
        );
        assert_eq!(run(&p, I386, 128, no), EPERM, "i386 init_module");
        assert_eq!(
            run(&p, I386, 52, [0, 1, 0, 0, 0, 0]),
            EPERM,
            "i386 umount2 MNT_FORCE"
        );
        assert_eq!(
            run(&p, I386, 52, [0, 2, 0, 0, 0, 0]),
            ALLOW,
            "i386 umount2 MNT_DETACH"
        );
        assert_eq!(run(&p, I386, 22, no), ALLOW, "i386 umount (no flags)");
        assert_eq!(
            run(&p, 0x4000_00b7 | 0x8000_0000, 39, no),
            KILL,
            "aarch64 on x86_64: impossible"
        );
    }

    #[test]
    fn mixed_actions_keep_file_order() {
        let p = compile(
            "2\ndenylist\n[all]\nmknod errno 13\nchmod\nmknod errno 1\nchown errno 1 [2,100,SCMP_CMP_GE]\n[i386]\ngetppid trap\n[x86_64]\ngetppid log\n",
        )
        .unwrap();
        let no = [0u64; 6];
        assert_eq!(
            run(&p, X86_64, 133, no),
            0x0005_000d,
            "mknod: first rule (EACCES) wins"
        );
        assert_eq!(
            run(&p, X86_64, 90, no),
            KILL,
            "chmod: bare name in a denylist kills"
        );
        assert_eq!(
            run(&p, X86_64, 92, [0, 0, 100, 0, 0, 0]),
            EPERM,
            "chown gid >= 100"
        );
        assert_eq!(
            run(&p, X86_64, 92, [0, 0, 99, 0, 0, 0]),
            ALLOW,
            "chown gid < 100"
        );
        assert_eq!(run(&p, X86_64, 110, no), 0x7ffc_0000, "x86_64 getppid: log");
        assert_eq!(run(&p, I386, 64, no), 0x0003_0000, "i386 getppid: trap");
        assert_eq!(run(&p, I386, 14, no), 0x0005_000d, "i386 mknod");
        assert_eq!(
            run(&p, I386, 16, [0, 0, 100, 0, 0, 0]),
            ALLOW,
            "i386 16 is lchown16, not chown"
        );
        assert_eq!(
            run(&p, I386, 182, [0, 0, 100, 0, 0, 0]),
            EPERM,
            "i386 chown (182)"
        );
    }

    #[test]
    fn allowlist_decisions() {
        let p = compile("2\nallowlist errno 38\n[all]\nread\nwrite\n").unwrap();
        let no = [0u64; 6];
        assert_eq!(run(&p, X86_64, 0, no), ALLOW);
        assert_eq!(run(&p, X86_64, 1, no), ALLOW);
        assert_eq!(run(&p, X86_64, 39, no), ENOSYS);
        assert_eq!(run(&p, I386, 3, no), ALLOW, "i386 read");
        assert_eq!(
            run(&p, I386, 20, no),
            ENOSYS,
            "i386 getpid: the allowlist's default"
        );
    }

    #[test]
    fn i386_section_uses_i386_numbers() {
        let prog = compile(DEFAULT_POLICY).unwrap();
        let ks: Vec<u32> = prog
            .0
            .iter()
            .filter(|i| i.code == 0x15)
            .map(|i| i.k)
            .collect();
        // i386: init_module 128, delete_module 129, kexec_load 283, open_by_handle_at 342,
        // finit_module 350, umount2 52 (kexec_file_load has no i386 entry).
        for nr in [128, 129, 283, 342, 350, 52] {
            assert!(ks.contains(&nr), "i386 nr {nr} missing");
        }
    }
}
