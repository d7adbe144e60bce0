//! Tests of the device program: its rules parsed, its instructions interpreted against the
//! rules, and the kernel enforcing it in a cgroup of its own (as root).

use super::*;

#[test]
fn rules_parse_as_the_v1_controller_writes_them() {
    let r = parse_rule("c 1:3 rwm").unwrap();
    assert_eq!(
        r,
        Rule {
            kind: Some(DEV_CHAR),
            major: Some(1),
            minor: Some(3),
            access: ACC_ALL
        }
    );
    let r = parse_rule("b *:* m").unwrap();
    assert_eq!(
        (r.kind, r.major, r.minor, r.access),
        (Some(DEV_BLOCK), None, None, ACC_MKNOD)
    );
    let r = parse_rule("c 136:* rw").unwrap();
    assert_eq!(
        (r.major, r.minor, r.access),
        (Some(136), None, ACC_READ | ACC_WRITE)
    );
    assert_eq!(parse_rule("a").unwrap().access, ACC_ALL);
    for bad in [
        "",
        "x 1:3 rwm",
        "c 1:3 rwx",
        "c 1 rwm",
        "c 1:3 rwm extra",
        "c -1:3 r",
        "c 4294967295:1 r",
        "c",
    ] {
        assert!(parse_rule(bad).is_err(), "{bad:?} accepted");
    }
}

/// What the kernel would answer: the program run on one request, by a small interpreter of
/// the instructions `program` emits.
fn run(prog: &[u64], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
    let ctx = [(access << 16 | kind) as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let (code, dst, src) = (
            i as u8,
            ((i >> 8) & 0xf) as usize,
            ((i >> 12) & 0xf) as usize,
        );
        let off = (i >> 16) as u16 as i16;
        let imm = (i >> 32) as u32 as i32;
        pc += 1;
        match code {
            LDX_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[off as usize / 4]);
            }
            AND64_K => r[dst] &= imm as i64 as u64,
            RSH64_K => r[dst] >>= imm,
            MOV64_X => r[dst] = r[src],
            MOV64_K => r[dst] = imm as i64 as u64,
            JNE_K if r[dst] != imm as i64 as u64 => pc += off as usize,
            JNE_X if r[dst] != r[src] => pc += off as usize,
            JNE_K | JNE_X => {}
            EXIT => return r[0],
            _ => panic!("unexpected opcode {code:#x}"),
        }
    }
}

/// The same question answered from the rules directly.
fn allowed(rules: &[Rule], kind: i32, access: i32, major: u32, minor: u32) -> bool {
    rules.iter().any(|r| {
        r.kind.is_none_or(|k| k == kind)
            && access & r.access == access
            && r.major.is_none_or(|m| m == major)
            && r.minor.is_none_or(|m| m == minor)
    })
}

#[test]
fn the_program_allows_exactly_its_rules() {
    let text = [
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 136:* rwm",
        "c 10:200 rw",
        "b 7:0 r",
        "b 8:* w",
    ];
    let rules: Vec<Rule> = text.iter().map(|t| parse_rule(t).unwrap()).collect();
    let prog = program(&rules);
    let mut seen = [0usize; 2];
    for kind in [DEV_BLOCK, DEV_CHAR] {
        for access in 1..=ACC_ALL {
            for major in [0, 1, 7, 8, 10, 136, 4095] {
                for minor in [0, 1, 3, 200, 1 << 19] {
                    let want = allowed(&rules, kind, access, major, minor);
                    let got = run(&prog, kind, access, major, minor);
                    assert_eq!(
                        got,
                        u64::from(want),
                        "type {kind} access {access} {major}:{minor}"
                    );
                    seen[usize::from(want)] += 1;
                }
            }
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    // No rules: nothing at all.
    assert_eq!(run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3), 0);
    // "a": everything.
    assert_eq!(
        run(
            &program(&[parse_rule("a").unwrap()]),
            DEV_BLOCK,
            ACC_ALL,
            8,
            0
        ),
        1
    );
}

/// As root on a kernel with cgroup2 and device programs: a shell moved into a fresh cgroup
/// opens what the program allows and nothing else, and a new program replaces the old one.
#[test]
fn the_kernel_enforces_the_program_and_a_new_one_replaces_it() {
    let name = "the_kernel_enforces_the_program_and_a_new_one_replaces_it";
    if !crate::test_skip::require_root() {
        return;
    }
    let Some(unified) = super::super::Layout::probe().unified.clone() else {
        crate::test_skip::skip(name, "no cgroup2 hierarchy is mounted");
        return;
    };
    if let Err(e) = supported() {
        crate::test_skip::skip_kernel_lacks(name, "cgroup_bpf", &e);
        return;
    }
    let dir = unified.join(format!("bivy-bpf-test-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("mkdir cgroup");
    let opens = |dir: &Path| -> String {
        let script = format!(
            "echo $$ > {}/cgroup.procs || exit 9; \
             for d in null zero full; do (exec 3</dev/$d) 2>/dev/null && printf '%s ' $d; done; exit 0",
            dir.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = |t: &[&str]| -> Vec<Rule> { t.iter().map(|r| parse_rule(r).unwrap()).collect() };
    let result = std::panic::catch_unwind(|| {
        assert_eq!(opens(&dir), "null zero full ");
        install(&dir, &rules(&["c 1:3 rwm", "c 1:5 r"])).expect("install");
        assert_eq!(attached(&dir).unwrap().len(), 1);
        assert_eq!(opens(&dir), "null zero ");
        install(&dir, &rules(&["c 1:3 rwm", "c 1:7 rwm"])).expect("replace");
        assert_eq!(attached(&dir).unwrap().len(), 1, "the old program stayed");
        assert_eq!(opens(&dir), "null full ");
    });
    std::fs::remove_dir(&dir).expect("rmdir cgroup");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
