//! metadata.yaml: parsing and validation (`architecture` and `creation_date` are required).

use crate::api;
use crate::util::yaml;

use super::{Error, Result};

/// Architecture names LXD knows (`shared/osarch`), canonical names first, then the aliases it
/// accepts (Debian/Ubuntu/Go spellings).
const ARCHITECTURES: &[&str] = &[
    "i686",
    "x86_64",
    "armv6l",
    "armv7l",
    "armv8l",
    "aarch64",
    "ppc",
    "ppc64",
    "ppc64le",
    "s390x",
    "mips",
    "mips64",
    "riscv32",
    "riscv64",
    "loongarch64", // canonical
    "i386",
    "i586",
    "386",
    "x86",
    "amd64",
    "x86-64",
    "x64",
    "armel",
    "armhf",
    "arm",
    "armhfp",
    "armv7a",
    "armv7hl",
    "armv7hnl",
    "armv7nhl",
    "armv7hnl",
    "armv8",
    "arm64",
    "powerpc",
    "ppc64el",
    "powerpc64",
    "ppc64le",
    "mipsel",
    "mips64el",
    "loong64", // aliases
];

/// Whether LXD would accept `arch` in metadata.yaml.
pub fn known_architecture(arch: &str) -> bool {
    ARCHITECTURES.contains(&arch)
}

/// Parse and validate metadata.yaml.
pub fn parse(data: &[u8]) -> Result<api::ImageMetadata> {
    let text = std::str::from_utf8(data)
        .map_err(|e| Error::BadRequest(format!("invalid metadata.yaml: not UTF-8: {e}")))?;
    let value =
        yaml::parse(text).map_err(|e| Error::BadRequest(format!("invalid metadata.yaml: {e}")))?;
    if !matches!(value, yaml::Node::Map(_)) {
        return Err(Error::BadRequest(
            "invalid metadata.yaml: not a mapping".into(),
        ));
    }
    let has = |k: &str| value.get(k).is_some_and(|v| !v.is_null());
    if !has("architecture") {
        return Err(Error::BadRequest(
            "invalid metadata.yaml: missing required field \"architecture\"".into(),
        ));
    }
    if !has("creation_date") {
        return Err(Error::BadRequest(
            "invalid metadata.yaml: missing required field \"creation_date\"".into(),
        ));
    }
    let meta: api::ImageMetadata = yaml::from_node(&value)
        .map_err(|e| Error::BadRequest(format!("invalid metadata.yaml: {e}")))?;
    if !known_architecture(&meta.architecture) {
        return Err(Error::BadRequest(format!(
            "invalid metadata.yaml: unknown architecture {:?}",
            meta.architecture
        )));
    }
    if meta.creation_date <= 0 {
        return Err(Error::BadRequest(format!(
            "invalid metadata.yaml: bad creation_date {}",
            meta.creation_date
        )));
    }
    for (path, t) in &meta.templates {
        if !path.starts_with('/') {
            return Err(Error::BadRequest(format!(
                "invalid metadata.yaml: template target {path:?} is not absolute"
            )));
        }
        if t.template.is_empty()
            || t.template.contains('/') && t.template.split('/').any(|c| c == "..")
        {
            return Err(Error::BadRequest(format!(
                "invalid metadata.yaml: bad template file {:?}",
                t.template
            )));
        }
    }
    Ok(meta)
}

/// Fuzzing entry point (`tests/fuzz` target `image_metadata`, and the deterministic test): the
/// bytes as an image's metadata.yaml. What parses is valid by the rules above, and written back
/// as YAML it parses to the same metadata. Must never panic.
#[doc(hidden)]
pub fn fuzz_metadata(data: &[u8]) {
    let Ok(meta) = parse(data) else { return };
    assert!(known_architecture(&meta.architecture));
    assert!(meta.creation_date > 0);
    assert!(meta.templates.keys().all(|p| p.starts_with('/')));
    let yaml = yaml::to_string(&meta).expect("metadata serializes");
    let again = parse(yaml.as_bytes())
        .unwrap_or_else(|e| panic!("metadata written back does not parse: {e}\n{yaml}"));
    assert_eq!(again, meta, "metadata changed when written back:\n{yaml}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_busybox_metadata() {
        let y = b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: busybox\n  release: \"1.35\"\ntemplates:\n  /etc/hostname:\n    when: [create, copy]\n    create_only: false\n    template: hostname.tpl\n";
        let m = parse(y).unwrap();
        assert_eq!(m.architecture, "x86_64");
        assert_eq!(m.creation_date, 1_700_000_000);
        assert_eq!(m.expiry_date, 0);
        assert_eq!(m.properties["release"], "1.35");
        let t = &m.templates["/etc/hostname"];
        assert_eq!(t.when, ["create", "copy"]);
        assert_eq!(t.template, "hostname.tpl");
    }

    #[test]
    fn rejects_bad_metadata() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"creation_date: 1\n",
                "missing required field \"architecture\"",
            ),
            (
                b"architecture: x86_64\n",
                "missing required field \"creation_date\"",
            ),
            (
                b"architecture: vax\ncreation_date: 1\n",
                "unknown architecture \"vax\"",
            ),
            (
                b"architecture: x86_64\ncreation_date: soon\n",
                "invalid metadata.yaml",
            ),
            (b"- a\n- b\n", "not a mapping"),
            (b"architecture: [x\n", "invalid metadata.yaml"),
            (
                b"architecture: x86_64\ncreation_date: 1\ntemplates:\n  etc/x: {template: x.tpl}\n",
                "is not absolute",
            ),
        ];
        for (y, want) in cases {
            match parse(y) {
                Err(Error::BadRequest(m)) => assert!(m.contains(want), "{m} !~ {want}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(y)),
            }
        }
    }

    #[test]
    fn accepts_aliases_of_architectures() {
        for a in ["amd64", "arm64", "aarch64", "i686", "riscv64"] {
            let y = format!("architecture: {a}\ncreation_date: 5\n");
            assert_eq!(parse(y.as_bytes()).unwrap().architecture, a);
        }
    }

    #[test]
    fn fuzz_image_metadata_deterministic() {
        let tokens: &[&[u8]] = &[
            b"\n",
            b": ",
            b"- ",
            b"  ",
            b"\t",
            b"architecture: x86_64\n",
            b"creation_date: 1700000000\n",
            b"expiry_date: ~\n",
            b"templates:\n  /etc/x:\n    template: x.tpl\n",
            b"when: [create, copy]",
            b"create_only: yes",
            b"properties: {a: b}",
            b"&a ",
            b"*a",
            b"!!binary ",
            b"!!str ",
            b"{",
            b"[",
            b"'",
            b"\"",
            b"---\n",
            b"...\n",
            b"? ",
            b"<<: *a\n",
            b"-9223372036854775808",
            b"0x7f",
            b"1e9",
            b".nan",
        ];
        crate::http::fuzz::tests::fuzz_corpus_and_mutations(
            "image_metadata",
            0x3c6e_f372_fe94_f82b,
            tokens,
            fuzz_metadata,
        );
    }
}
