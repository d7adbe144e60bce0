//! Fuzzing entry point of the image tarball path ([`fuzz_unpack`], used by `tests/fuzz` target
//! `tar_unpack` and by the deterministic test below): the bytes as an uploaded image, through the
//! import's checks, the unpack and the templates, into a scratch directory. Kept out of
//! `unpack.rs`, which must not use path-based calls inside its target; this harness lists and
//! removes what the unpack made.

use std::path::Path;

use super::{apply_templates, check_staged, template, unpack, Error, UnpackOpts};

/// What may exist in the sandbox after a run, besides the contents of the targets.
const EXPECTED: &[&str] = &[
    "image",
    "out",
    "out/rootfs",
    "out/templates",
    "out/split-rootfs",
    "out/split-templates",
];

/// Every path under `dir` (relative to `base`) that is not inside one of the targets.
fn outside(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p
            .strip_prefix(base)
            .expect("under the base")
            .to_string_lossy()
            .into_owned();
        let target = EXPECTED[2..].contains(&rel.as_str());
        if !EXPECTED.contains(&rel.as_str()) {
            out.push(rel);
        } else if !target && e.file_type().is_ok_and(|t| t.is_dir()) {
            outside(base, &p, out);
        }
    }
}

/// `data` with the checksum of each tar header recomputed (an uncompressed tarball: the headers
/// are found by walking the member sizes), so that mutations reach the members instead of dying
/// on a checksum. Compressed data is left as it is.
fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    if super::sniff(&d) != super::Format::Tar {
        return d;
    }
    let mut off = 0usize;
    while off.checked_add(512).is_some_and(|end| end <= d.len()) {
        let h = &mut d[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let field = &h[124..136];
        let size = if field[0] & 0x80 != 0 {
            field[4..].iter().fold(0u64, |n, &b| {
                n.saturating_mul(256).saturating_add(u64::from(b))
            })
        } else {
            let digits: String = field
                .iter()
                .map(|&b| b as char)
                .filter(|c| c.is_digit(8))
                .collect();
            u64::from_str_radix(&digits, 8).unwrap_or(0)
        };
        let Some(next) = usize::try_from(size.div_ceil(512).saturating_mul(512))
            .ok()
            .and_then(|n| off.checked_add(512)?.checked_add(n))
        else {
            break;
        };
        off = next;
    }
    d
}

/// Fuzzing entry point: `data` as an uploaded image (tar header checksums fixed up), unified and
/// then split (the same bytes as the metadata tarball and as the rootfs), each time through the import's checks, the unpack
/// into fresh targets and, for an image the import accepts, its `create` templates. Must never
/// panic, never write outside the targets, leave nothing behind when it fails, and unpack every
/// image the import accepted (an image that cannot unpack must be refused at import).
#[doc(hidden)]
pub fn fuzz_unpack(data: &[u8]) {
    let sb = crate::util::fs::fuzz_scratch_dir("unpack");
    let input = sb.join("image");
    let out = sb.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::write(&input, fix_checksums(data))
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    std::fs::create_dir(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let rules = UnpackOpts {
        skip_devices: true,
        max_bytes: 64 << 20,
    };
    let ctx = template::Context {
        name: "c1".into(),
        architecture: "x86_64".into(),
        ..Default::default()
    };
    for split in [false, true] {
        let prefix = if split { "split-" } else { "" };
        let rootfs = out.join(format!("{prefix}rootfs"));
        let templates = out.join(format!("{prefix}templates"));
        let checked = check_staged(&input, split.then_some(input.as_path()), &rules);
        let unpacked = if split {
            unpack::unpack_split(&input, &input, &rootfs, &templates, &rules)
        } else {
            unpack::unpack_unified(&input, &rootfs, &templates, &rules)
        };
        match (&checked, &unpacked) {
            (Ok(_), Err(Error::BadRequest(e))) => {
                panic!("the import accepts an image that does not unpack (split: {split}): {e}")
            }
            (_, Err(_)) => assert!(
                !rootfs.exists() && !templates.exists(),
                "a failed unpack left its targets behind"
            ),
            (Ok((_, meta)), Ok(())) => {
                let _ = apply_templates(meta, &templates, &rootfs, "create", &ctx);
            }
            (Err(_), Ok(())) => {}
        }
    }
    let mut stray = Vec::new();
    outside(&sb, &sb, &mut stray);
    assert!(stray.is_empty(), "written outside the targets: {stray:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_tar_unpack_deterministic() {
        let tokens: &[&[u8]] = &[
            b"rootfs/",
            b"templates/",
            b"metadata.yaml\0",
            b"../",
            b"/",
            b"ustar\x0000",
            b"ustar  \0",
            b"0000644\0",
            b"0000000\0",
            b"00000000012\0",
            b"77777777777\0",
            b"\x80\0\0\0\0\0\0\0\0\0\0\xff",
            b"0",
            b"1",
            b"2",
            b"3",
            b"5",
            b"6",
            b"7",
            b"L",
            b"K",
            b"S",
            b"x",
            b"g",
            b"30 SCHILY.xattr.user.a=b\n",
            b"19 path=rootfs/etc\n",
            b"26 GNU.sparse.realsize=99\n",
            b"16 linkpath=/x\n",
            b"\0\0\0\0\0\0\0\0",
        ];
        crate::http::fuzz::tests::fuzz_corpus_and_mutations(
            "tar_unpack",
            0x510e_527f_ade6_82d1,
            tokens,
            fuzz_unpack,
        );
    }
}
