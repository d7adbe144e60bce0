//! Simplestreams (the `images:` remotes' protocol), the parsing half: `streams/v1/index.json`
//! names the products files; a products file holds products (one per os/release/arch/variant),
//! each with dated versions whose items are the files of one image build. A container image is
//! the `lxd.tar.xz` metadata item plus a rootfs item (`root.squashfs` or `root.tar.xz`); its
//! fingerprint is the sha256 of the two files concatenated, which the metadata item carries as
//! `combined_squashfs_sha256` / `combined_rootxz_sha256` (older streams: `combined_sha256`).
//! No I/O here: the daemon (`daemon::pull`) downloads and verifies.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One downloadable file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Item {
    /// Relative to the server's root.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub ftype: String,
}

/// A container image a simplestreams server offers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Candidate {
    pub fingerprint: String,
    pub product: String,
    pub version: String,
    /// LXD's name (`x86_64`), not the stream's (`amd64`).
    pub architecture: String,
    /// The product's aliases (`debian/12`, `debian/12/default`, ...).
    pub aliases: Vec<String>,
    /// The stream's architecture name (`amd64`): `ALIAS/amd64` also names the image.
    pub stream_arch: String,
    pub metadata: Item,
    pub rootfs: Item,
    pub squashfs: bool,
    pub properties: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    index: BTreeMap<String, IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(default)]
    datatype: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct Products {
    #[serde(default)]
    products: BTreeMap<String, Product>,
}

#[derive(Deserialize)]
struct Product {
    #[serde(default)]
    aliases: String,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    release: String,
    #[serde(default)]
    release_title: String,
    #[serde(default)]
    variant: String,
    #[serde(default)]
    versions: BTreeMap<String, Version>,
}

#[derive(Deserialize)]
struct Version {
    #[serde(default)]
    items: BTreeMap<String, RawItem>,
}

#[derive(Deserialize)]
struct RawItem {
    #[serde(default)]
    ftype: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    sha256: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    combined_sha256: String,
    #[serde(default)]
    combined_rootxz_sha256: String,
    #[serde(default)]
    combined_squashfs_sha256: String,
}

impl RawItem {
    fn item(&self) -> Item {
        Item {
            path: self.path.clone(),
            sha256: self.sha256.to_ascii_lowercase(),
            size: self.size,
            ftype: self.ftype.clone(),
        }
    }
}

/// Stream architecture names to LXD's (as LXD's `osarch` maps them).
pub fn lxd_arch(stream: &str) -> String {
    match stream {
        "amd64" | "x86_64" => "x86_64",
        "i386" | "i686" => "i686",
        "arm64" | "aarch64" => "aarch64",
        "armhf" | "armv7l" => "armv7l",
        "armel" | "armv6l" => "armv6l",
        "ppc64el" | "ppc64le" => "ppc64le",
        "powerpc" | "ppc" => "ppc",
        "ppc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loongarch64",
        other => other,
    }
    .to_string()
}

/// The paths of the image products files `index.json` lists.
pub fn products_paths(index_json: &[u8]) -> Result<Vec<String>, String> {
    let idx: Index =
        serde_json::from_slice(index_json).map_err(|e| format!("bad simplestreams index: {e}"))?;
    let out: Vec<String> = idx
        .index
        .values()
        .filter(|e| e.datatype == "image-downloads" && !e.path.is_empty())
        .map(|e| e.path.clone())
        .collect();
    if out.is_empty() {
        return Err("simplestreams index lists no image-downloads products".into());
    }
    Ok(out)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every container image of a products file (each version, each rootfs kind).
pub fn candidates(products_json: &[u8]) -> Result<Vec<Candidate>, String> {
    let p: Products = serde_json::from_slice(products_json)
        .map_err(|e| format!("bad simplestreams products file: {e}"))?;
    let mut out = Vec::new();
    for (pname, prod) in &p.products {
        let aliases: Vec<String> = prod
            .aliases
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        for (vname, ver) in &prod.versions {
            let Some(meta) = ver.items.values().find(|i| i.ftype == "lxd.tar.xz") else {
                continue;
            };
            for root in ver.items.values() {
                let (fp, squashfs) = match root.ftype.as_str() {
                    "squashfs" => (meta.combined_squashfs_sha256.clone(), true),
                    "root.tar.xz" => (
                        if meta.combined_rootxz_sha256.is_empty() {
                            meta.combined_sha256.clone()
                        } else {
                            meta.combined_rootxz_sha256.clone()
                        },
                        false,
                    ),
                    _ => continue,
                };
                if !is_hex64(&fp) || root.path.is_empty() || meta.path.is_empty() {
                    continue;
                }
                let mut properties = BTreeMap::new();
                for (k, v) in [
                    ("os", &prod.os),
                    ("release", &prod.release),
                    ("variant", &prod.variant),
                    ("architecture", &prod.arch),
                    ("serial", vname),
                    ("type", &root.ftype),
                ] {
                    if !v.is_empty() {
                        properties.insert(k.to_string(), v.to_string());
                    }
                }
                let title = if prod.release_title.is_empty() {
                    &prod.release
                } else {
                    &prod.release_title
                };
                properties.insert(
                    "description".into(),
                    format!("{} {} {} ({})", prod.os, title, prod.arch, vname)
                        .trim()
                        .to_string(),
                );
                out.push(Candidate {
                    fingerprint: fp.to_ascii_lowercase(),
                    product: pname.clone(),
                    version: vname.clone(),
                    architecture: lxd_arch(&prod.arch),
                    stream_arch: prod.arch.clone(),
                    aliases: aliases.clone(),
                    metadata: meta.item(),
                    rootfs: root.item(),
                    squashfs,
                    properties,
                });
            }
        }
    }
    Ok(out)
}

/// The image an alias names for `arch` (LXD's name): `ALIAS` for the host's architecture or
/// `ALIAS/STREAMARCH` for any, newest version first, squashfs preferred when `squashfs_ok`.
pub fn find_alias<'a>(
    all: &'a [Candidate],
    alias: &str,
    arch: &str,
    squashfs_ok: bool,
) -> Option<&'a Candidate> {
    all.iter()
        .filter(|c| squashfs_ok || !c.squashfs)
        .filter(|c| {
            c.aliases.iter().any(|a| {
                (a == alias && c.architecture == arch)
                    || alias
                        .strip_prefix(a.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                        .is_some_and(|r| r == c.stream_arch || r == c.architecture)
            })
        })
        .max_by(|a, b| {
            (&a.version, a.squashfs == squashfs_ok).cmp(&(&b.version, b.squashfs == squashfs_ok))
        })
}

/// The image whose fingerprint starts with `prefix` (an error if several different ones do).
pub fn find_fingerprint<'a>(all: &'a [Candidate], prefix: &str) -> Result<&'a Candidate, String> {
    let prefix = prefix.to_ascii_lowercase();
    let mut hits = all.iter().filter(|c| c.fingerprint.starts_with(&prefix));
    let first = hits
        .next()
        .ok_or_else(|| format!("Image {prefix:?} not found on the simplestreams server"))?;
    if hits.any(|c| c.fingerprint != first.fingerprint) {
        return Err(format!("Image prefix {prefix:?} is ambiguous"));
    }
    Ok(first)
}

/// Fuzzing entry point (`tests/fuzz` target `simplestreams`, and the deterministic test): the
/// bytes as a server's `index.json` and as a products file. Every image found has a sha256
/// fingerprint and both files, and is found again by each of its aliases and by a prefix of
/// its fingerprint. Must never panic.
#[doc(hidden)]
pub fn fuzz_streams(data: &[u8]) {
    if let Ok(paths) = products_paths(data) {
        assert!(!paths.is_empty() && paths.iter().all(|p| !p.is_empty()));
    }
    let Ok(all) = candidates(data) else { return };
    for c in &all {
        assert!(is_hex64(&c.fingerprint) && c.fingerprint == c.fingerprint.to_ascii_lowercase());
        assert!(!c.metadata.path.is_empty() && !c.rootfs.path.is_empty());
        let hit = find_fingerprint(&all, &c.fingerprint[..12]);
        assert!(hit
            .as_ref()
            .map_or(true, |h| h.fingerprint == c.fingerprint));
        for alias in &c.aliases {
            assert!(
                find_alias(&all, alias, &c.architecture, c.squashfs).is_some(),
                "an image is found by its alias"
            );
            let by_arch = format!("{alias}/{}", c.stream_arch);
            let _ = find_alias(&all, &by_arch, "s390x", true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{"format":"index:1.0","index":{
        "images":{"datatype":"image-downloads","path":"streams/v1/images.json",
                  "format":"products:1.0","products":["debian:12:amd64:default"]},
        "other":{"datatype":"content-download","path":"x.json"}}}"#;

    fn h(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn products() -> String {
        format!(
            r#"{{"content_id":"images","datatype":"image-downloads","format":"products:1.0",
            "products":{{
              "debian:12:amd64:default":{{"aliases":"debian/12/default,debian/12","arch":"amd64",
                "os":"Debian","release":"12","release_title":"bookworm","variant":"default",
                "versions":{{
                  "20240101_05:24":{{"items":{{
                    "lxd.tar.xz":{{"ftype":"lxd.tar.xz","path":"images/d/old/lxd.tar.xz",
                      "sha256":"{a}","size":10,"combined_rootxz_sha256":"{b}",
                      "combined_squashfs_sha256":"{c}"}},
                    "root.tar.xz":{{"ftype":"root.tar.xz","path":"images/d/old/rootfs.tar.xz",
                      "sha256":"{a}","size":20}}}}}},
                  "20240202_05:24":{{"items":{{
                    "lxd.tar.xz":{{"ftype":"lxd.tar.xz","path":"images/d/new/lxd.tar.xz",
                      "sha256":"{a}","size":10,"combined_rootxz_sha256":"{d}",
                      "combined_squashfs_sha256":"{e}","combined_disk-kvm-img_sha256":"{a}"}},
                    "root.tar.xz":{{"ftype":"root.tar.xz","path":"images/d/new/rootfs.tar.xz",
                      "sha256":"{a}","size":20}},
                    "root.squashfs":{{"ftype":"squashfs","path":"images/d/new/rootfs.squashfs",
                      "sha256":"{a}","size":30}},
                    "disk.qcow2":{{"ftype":"disk-kvm.img","path":"images/d/new/disk.qcow2",
                      "sha256":"{a}","size":30}}}}}}}}}},
              "debian:12:arm64:default":{{"aliases":"debian/12","arch":"arm64","os":"Debian",
                "release":"12","variant":"default","versions":{{
                  "20240202_05:24":{{"items":{{
                    "lxd.tar.xz":{{"ftype":"lxd.tar.xz","path":"m","sha256":"{a}",
                      "combined_sha256":"{f}"}},
                    "root.tar.xz":{{"ftype":"root.tar.xz","path":"r","sha256":"{a}"}}}}}}}}}}}}}}"#,
            a = h('a'),
            b = h('b'),
            c = h('c'),
            d = h('d'),
            e = h('e'),
            f = h('f')
        )
    }

    #[test]
    fn index_lists_image_products() {
        assert_eq!(
            products_paths(INDEX.as_bytes()).unwrap(),
            vec!["streams/v1/images.json".to_string()]
        );
        assert!(products_paths(b"{\"index\":{}}").is_err());
        assert!(products_paths(b"nope").is_err());
    }

    #[test]
    fn candidates_and_lookup() {
        let all = candidates(products().as_bytes()).unwrap();
        // old: rootxz only (its squashfs item is missing); new: rootxz + squashfs; arm64: one.
        assert_eq!(all.len(), 4);
        let c = find_alias(&all, "debian/12", "x86_64", false).unwrap();
        assert_eq!(c.fingerprint, h('d'));
        assert_eq!(c.rootfs.path, "images/d/new/rootfs.tar.xz");
        assert_eq!(c.metadata.path, "images/d/new/lxd.tar.xz");
        assert_eq!(c.properties["os"], "Debian");
        let c = find_alias(&all, "debian/12/default", "x86_64", true).unwrap();
        assert_eq!(c.fingerprint, h('e'));
        assert!(c.squashfs);
        let c = find_alias(&all, "debian/12", "aarch64", false).unwrap();
        assert_eq!(c.fingerprint, h('f'));
        assert_eq!(c.architecture, "aarch64");
        let c = find_alias(&all, "debian/12/arm64", "x86_64", false).unwrap();
        assert_eq!(c.fingerprint, h('f'));
        assert!(find_alias(&all, "debian/11", "x86_64", false).is_none());
        assert!(find_alias(&all, "debian/12", "s390x", false).is_none());
        assert_eq!(
            find_fingerprint(&all, "BBB").unwrap().version,
            "20240101_05:24"
        );
        assert!(find_fingerprint(&all, "0").is_err());
        assert_eq!(lxd_arch("amd64"), "x86_64");
        assert_eq!(lxd_arch("ppc64el"), "ppc64le");
    }

    #[test]
    fn fuzz_simplestreams_deterministic() {
        let tokens: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"\\u0000",
            b"\\ud800",
            b"null",
            b"1e999",
            b"-1",
            b"18446744073709551616",
            b"\"ftype\":\"lxd.tar.xz\"",
            b"\"ftype\":\"squashfs\"",
            b"\"ftype\":\"root.tar.xz\"",
            b"\"aliases\":\"a,b/c, ,\"",
            b"\"arch\":\"amd64\"",
            b"\"datatype\":\"image-downloads\"",
            b"\"combined_sha256\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"",
        ];
        crate::http::fuzz::tests::fuzz_corpus_and_mutations(
            "simplestreams",
            0xa54f_f53a_5f1d_36f1,
            tokens,
            fuzz_streams,
        );
    }
}
