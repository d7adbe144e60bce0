//! Pulling images from image servers, as LXD's `ImageDownload`. LXD-protocol servers (another
//! bivy, LXD) are `pull_lxd`'s, what both protocols share is `download`'s; this file does
//! simplestreams servers (`images:` remotes):
//! the client names the server and an alias or fingerprint; we read `streams/v1/index.json` and
//! the products file(s) it lists ([`crate::image::simplestreams`]), pick the image for the host's
//! architecture, download its metadata tarball and rootfs (squashfs only when `unsquashfs` is
//! here), verify each file's sha256 and the combined fingerprint, and import a split image with
//! its `update_source`. Images pulled for an instance are `cached` and expire after
//! `images.remote_cache_expiry` days without use.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::download::{already_here, imported, Pull, Verify};
use super::fetch;
use super::operations::{Class, Op};
use super::response::{self, Error, Result};
use super::Daemon;
use crate::api;
use crate::http::client;
use crate::http::{Body, Response};
use crate::image::{self, simplestreams as ss};

/// Largest index/products JSON accepted.
const MAX_JSON: u64 = 256 << 20;
/// Largest metadata tarball accepted (it is held in memory).
const MAX_METADATA: u64 = 256 << 20;

/// The protocol named, as stored (LXD's default when empty is `lxd`).
pub(super) fn check_protocol(protocol: &str) -> Result<&'static str> {
    match protocol {
        "simplestreams" => Ok("simplestreams"),
        "lxd" | "" => Ok("lxd"),
        other => Err(Error::BadRequest(format!(
            "Unsupported image server protocol {other:?}"
        ))),
    }
}

fn join(server: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        path.to_string()
    } else {
        format!(
            "{}/{}",
            server.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }
}

/// `GET url` (following up to 5 redirects), handing the body and its length to `f`.
fn with_get<T>(
    fetcher: &mut fetch::Fetcher,
    url: &str,
    f: impl FnOnce(&mut dyn Read, Option<u64>) -> Result<T>,
) -> Result<T> {
    let mut url = url.to_string();
    for _ in 0..6 {
        let u = fetch::parse(&url)?;
        let (mut s, target) = fetcher.connect(&u)?;
        let headers = fetch::get_headers(&u);
        let mut r = client::request(&mut *s, "GET", &target, &headers, Body::Empty)
            .map_err(|e| Error::BadRequest(format!("{url}: {e}")))?;
        if (300..400).contains(&r.status) {
            if let Some(loc) = r.header("Location") {
                url = if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc.to_string()
                } else if loc.starts_with('/') {
                    let scheme = if u.tls { "https" } else { "http" };
                    format!("{scheme}://{}{loc}", fetch::host_header(&u))
                } else {
                    return Err(Error::BadRequest(format!("{url}: bad redirect {loc:?}")));
                };
                continue;
            }
        }
        if r.status >= 300 {
            return Err(Error::BadRequest(format!("{url}: HTTP {}", r.status)));
        }
        let len = r
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        return f(&mut r.body, len);
    }
    Err(Error::BadRequest(format!("{url}: too many redirects")))
}

fn read_capped(r: &mut dyn Read, cap: u64, what: &str) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut v)
        .map_err(|e| Error::BadRequest(format!("{what}: {e}")))?;
    if v.len() as u64 > cap {
        return Err(Error::BadRequest(format!("{what}: too large")));
    }
    Ok(v)
}

/// Every container image the server offers.
pub(super) fn catalog(fetcher: &mut fetch::Fetcher, server: &str) -> Result<Vec<ss::Candidate>> {
    let idx_url = join(server, "streams/v1/index.json");
    let idx = with_get(fetcher, &idx_url, |r, _| read_capped(r, MAX_JSON, &idx_url))?;
    let mut all = Vec::new();
    for p in ss::products_paths(&idx).map_err(|e| Error::BadRequest(format!("{idx_url}: {e}")))? {
        let url = join(server, &p);
        let data = with_get(fetcher, &url, |r, _| read_capped(r, MAX_JSON, &url))?;
        all.extend(ss::candidates(&data).map_err(|e| Error::BadRequest(format!("{url}: {e}")))?);
    }
    Ok(all)
}

/// The image `alias` or `fingerprint` names for this host. As LXD's `ImageDownload`, either is
/// looked up as an alias first, then as a fingerprint prefix (`lxc image copy` sends an alias in
/// the fingerprint field for simplestreams remotes).
fn choose(d: &Daemon, all: &[ss::Candidate], alias: &str, fp: &str) -> Result<ss::Candidate> {
    let squashfs_ok = image::have_unsquashfs();
    let name = if fp.is_empty() { alias } else { fp };
    if name.is_empty() {
        return Err(Error::BadRequest(
            "Image source needs an alias or a fingerprint".into(),
        ));
    }
    if let Some(c) = ss::find_alias(all, name, &d.host.architecture, squashfs_ok) {
        return Ok(c.clone());
    }
    let hexish = name.bytes().all(|b| b.is_ascii_hexdigit());
    let c = ss::find_fingerprint(all, name)
        .ok()
        .filter(|_| hexish)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "Image {name:?} not found on the server (architecture {})",
                d.host.architecture
            ))
        })?;
    if c.squashfs && !squashfs_ok {
        // The same build as root.tar.xz, if the server has it.
        if let Some(x) = all
            .iter()
            .find(|x| !x.squashfs && x.product == c.product && x.version == c.version)
        {
            return Ok(x.clone());
        }
        return Err(Error::BadRequest(format!(
            "Image {} has a squashfs rootfs, which needs `unsquashfs` (squashfs-tools) on this host",
            c.fingerprint
        )));
    }
    Ok(c.clone())
}

/// Pull `p` into the store (or find it there): LXD's `ImageDownload`.
pub(super) fn pull(d: &Daemon, op: Option<&Op>, p: &Pull) -> Result<api::Image> {
    if p.protocol == "lxd" {
        return super::pull_lxd::pull(d, op, p);
    }
    let mut fetcher = fetch::Fetcher::new(d);
    let all = catalog(&mut fetcher, &p.server)?;
    let c = choose(d, &all, &p.alias, &p.fingerprint)?;
    download(d, op, p, &c, &mut fetcher)
}

fn download(
    d: &Daemon,
    op: Option<&Op>,
    p: &Pull,
    c: &ss::Candidate,
    fetcher: &mut fetch::Fetcher,
) -> Result<api::Image> {
    if let Some(img) = already_here(d, p, &c.fingerprint)? {
        return Ok(img);
    }
    if let Some(op) = op {
        op.set_metadata("download_progress", serde_json::json!("metadata: 0%"));
    }
    let meta_url = join(&p.server, &c.metadata.path);
    let meta = with_get(fetcher, &meta_url, |r, len| {
        let mut v = Verify::new(r, &c.metadata.sha256, "metadata", len, op);
        read_capped(&mut v, MAX_METADATA, &meta_url)
    })?;
    let opts = image::ImportOpts {
        filename: c
            .metadata
            .path
            .rsplit('/')
            .next()
            .unwrap_or("lxd.tar.xz")
            .to_string(),
        public: p.public,
        auto_update: p.auto_update,
        properties: c.properties.clone(),
        profiles: p.profiles.clone(),
        expected_fingerprint: Some(c.fingerprint.clone()),
        cached: p.cached,
        update_source: Some(api::ImageSource {
            // The alias, so that a refresh finds the newest image of it.
            alias: if p.alias.is_empty() {
                p.fingerprint.clone()
            } else {
                p.alias.clone()
            },
            certificate: p.certificate.clone(),
            protocol: "simplestreams".into(),
            server: p.server.clone(),
            image_type: "container".into(),
        }),
    };
    let root_url = join(&p.server, &c.rootfs.path);
    let res = with_get(fetcher, &root_url, |r, len| {
        let mut v = Verify::new(r, &c.rootfs.sha256, "rootfs", len, op);
        let mut m = io::Cursor::new(&meta[..]);
        d.images
            .import(
                image::Upload::Split {
                    metadata: &mut m,
                    rootfs: &mut v,
                },
                &opts,
            )
            .map_err(Error::from)
    });
    imported(d, res, &c.fingerprint)
}

/// The instance-create pull (`source.server` set): a cached image, auto-updated per
/// `images.auto_update_cached`; marked used.
pub(super) fn for_instance(d: &Daemon, op: &Op, s: &api::InstanceSource) -> Result<api::Image> {
    let protocol = check_protocol(&s.protocol)?;
    let auto_update =
        d.db.lock()
            .expect("db lock")
            .data
            .config
            .get("images.auto_update_cached")
            .is_none_or(|v| v == "true" || v == "1");
    let img = pull(
        d,
        Some(op),
        &Pull {
            protocol: protocol.into(),
            server: s.server.clone(),
            secret: s.secret.clone(),
            alias: s.alias.clone(),
            fingerprint: s.fingerprint.clone(),
            certificate: s.certificate.clone(),
            cached: true,
            auto_update,
            public: false,
            profiles: vec!["default".into()],
        },
    )?;
    let _ = d.images.touch(&img.fingerprint);
    Ok(d.images.get(&img.fingerprint)?)
}

/// `POST /1.0/images` with `source: {type: "image", mode: "pull", protocol: "simplestreams"}`.
pub(super) fn images_post(d: &Daemon, body: api::ImagesPost) -> Result<Response> {
    let src = body.source.clone().unwrap_or_default();
    if !src.mode.is_empty() && src.mode != "pull" {
        return Err(Error::not_yet(&format!(
            "image copies in {:?} mode (push/relay between servers)",
            src.mode
        )));
    }
    if src.server.is_empty() {
        return Err(Error::BadRequest("Image source has no server".into()));
    }
    let protocol = check_protocol(&src.protocol)?;
    let d2 = d.self_arc();
    let op = d.ops.start(
        Class::Task,
        "Downloading image",
        BTreeMap::new(),
        None,
        vec![],
        move |op| {
            let img = pull(
                &d2,
                Some(&op),
                &Pull {
                    protocol: protocol.into(),
                    server: src.server.clone(),
                    secret: src.secret.clone(),
                    alias: src.alias.clone(),
                    fingerprint: src.fingerprint.clone(),
                    certificate: src.certificate.clone(),
                    cached: false,
                    auto_update: body.put.auto_update,
                    public: body.put.public,
                    profiles: if body.put.profiles.is_empty() {
                        vec!["default".into()]
                    } else {
                        body.put.profiles.clone()
                    },
                },
            )?;
            crate::instance::images::image_created(&d2, &op, &img, &body.aliases)
                .map_err(Error::from)
        },
    );
    Ok(response::operation(&op.to_api()))
}

/// `POST /1.0/images/FP/refresh` for an image pulled from a simplestreams server: pull the
/// newest image of the same alias; when it differs, move the aliases to it and delete the old
/// one (LXD's `autoUpdateImage`). Metadata `{"refreshed": bool}`.
pub(super) fn refresh(d: &Daemon, old: api::Image, src: api::ImageSource) -> Result<Response> {
    let protocol = check_protocol(&src.protocol)?;
    let d2 = d.self_arc();
    let url = format!("/1.0/images/{}", old.fingerprint);
    let mut res = BTreeMap::new();
    res.insert("images".to_string(), vec![url]);
    let op = d.ops.start(
        Class::Task,
        "Updating image",
        res,
        None,
        vec![],
        move |op| {
            let d = &*d2;
            let mut p = Pull {
                protocol: protocol.into(),
                server: src.server.clone(),
                secret: String::new(),
                alias: src.alias.clone(),
                fingerprint: String::new(),
                certificate: src.certificate.clone(),
                cached: old.cached,
                auto_update: old.put.auto_update,
                public: old.put.public,
                profiles: old.put.profiles.clone(),
            };
            let mut fetcher = fetch::Fetcher::new(d);
            let newest = if protocol == "lxd" {
                super::pull_lxd::latest(d, &p)?
            } else {
                let all = catalog(&mut fetcher, &src.server)?;
                choose(d, &all, &src.alias, "")?.fingerprint
            };
            if newest == old.fingerprint {
                op.set_metadata("refreshed", serde_json::json!(false));
                return Ok::<(), Error>(());
            }
            p.fingerprint = newest;
            let new = pull(d, Some(&op), &p)?;
            for a in d.images.alias_list()? {
                if a.target == old.fingerprint {
                    d.images.alias_update(
                        &a.name,
                        &api::ImageAliasesEntryPut {
                            description: a.description.clone(),
                            target: new.fingerprint.clone(),
                        },
                    )?;
                }
            }
            if d.images.delete(&old.fingerprint).is_ok() {
                crate::instance::pools::delete_image_volumes(d, &old.fingerprint);
                d.events.lifecycle(
                    "image-deleted",
                    &format!("/1.0/images/{}", old.fingerprint),
                    serde_json::json!({}),
                );
            }
            op.set_metadata("refreshed", serde_json::json!(true));
            op.set_metadata("fingerprint", serde_json::json!(new.fingerprint));
            Ok(())
        },
    );
    Ok(response::operation(&op.to_api()))
}

/// Refresh every image with `auto_update` and an update source (the scheduler calls this every
/// `images.auto_update_interval` hours); each refresh is its own operation.
pub(super) fn auto_update(d: &Daemon) {
    let Ok(list) = d.images.list() else { return };
    for img in list {
        if !img.put.auto_update {
            continue;
        }
        let Some(src) = img.update_source.clone() else {
            continue;
        };
        let fp = img.fingerprint.clone();
        if let Err(e) = refresh(d, img, src) {
            eprintln!("bivy: auto-update of image {fp}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::human_bytes as human;

    #[test]
    fn urls_and_protocols() {
        assert_eq!(
            join("https://h:1/", "streams/v1/index.json"),
            "https://h:1/streams/v1/index.json"
        );
        assert_eq!(join("https://h", "/a/b"), "https://h/a/b");
        assert_eq!(join("https://h", "http://o/x"), "http://o/x");
        assert_eq!(check_protocol("simplestreams").unwrap(), "simplestreams");
        assert_eq!(check_protocol("lxd").unwrap(), "lxd");
        assert_eq!(check_protocol("").unwrap(), "lxd");
        assert!(check_protocol("ftp").is_err());
        assert_eq!(human(1234.0), "1.23kB");
    }
}
