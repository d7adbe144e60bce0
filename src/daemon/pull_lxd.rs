//! Pulling images from LXD-protocol servers (another bivy, or LXD): `lxc image copy r:img
//! local:`, `lxc launch r:img c`, and auto-update of such images. As LXD's `ImageDownload` for
//! `protocol: lxd`: the server's certificate (PEM, from the client's pinned copy) is the only one
//! accepted; the image is named by alias (public aliases) or fingerprint; a private image is
//! read with the one-time `secret` its owner made (`POST /1.0/images/FP/secret`). The export
//! comes unified or split (multipart), and its fingerprint is checked on import.

use std::io::Read;

use super::download::{already_here, imported, Pull, Verify};
use super::fetch;
use super::multipart;
use super::operations::Op;
use super::response::{Error, Result};
use super::Daemon;
use crate::api;
use crate::http::client;
use crate::http::Body;
use crate::image;

/// Most JSON read from the server in one reply.
const MAX_JSON: u64 = 16 << 20;

/// A connection factory for one LXD server.
struct Server {
    base: fetch::Url,
    fetcher: fetch::Fetcher,
    secret: String,
}

impl Server {
    fn new(d: &Daemon, p: &Pull) -> Result<Server> {
        let base = fetch::parse(&p.server)?;
        if !base.tls {
            return Err(Error::BadRequest(format!(
                "{}: LXD servers are reached over https://",
                p.server
            )));
        }
        let cert = if p.certificate.trim().is_empty() {
            None
        } else {
            Some(crate::tls::pem_to_der(&p.certificate).ok_or_else(|| {
                Error::BadRequest("Image source certificate is not a PEM certificate".into())
            })?)
        };
        Ok(Server {
            base,
            fetcher: fetch::Fetcher::for_server(d, cert)?,
            secret: p.secret.clone(),
        })
    }

    /// `GET path` on the server (with the secret when there is one), handing the response to
    /// `then`.
    fn get<T>(
        &mut self,
        path: &str,
        then: impl FnOnce(&mut client::ClientResponse<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut u = self.base.clone();
        u.path = path.to_string();
        if !self.secret.is_empty() {
            u.path.push_str(&format!(
                "?secret={}",
                crate::client::urlencode(&self.secret, false)
            ));
        }
        let (mut s, target) = self.fetcher.connect(&u)?;
        let headers = fetch::get_headers(&u);
        let mut r = client::request(&mut *s, "GET", &target, &headers, Body::Empty)
            .map_err(|e| Error::BadRequest(format!("{}{path}: {e}", self.origin())))?;
        then(&mut r)
    }

    fn origin(&self) -> String {
        format!("https://{}", fetch::host_header(&self.base))
    }

    /// `GET path` as LXD's JSON envelope: its metadata (an error envelope is the error).
    fn json(&mut self, path: &str) -> Result<serde_json::Value> {
        let at = format!("{}{path}", self.origin());
        self.get(path, |r| {
            let mut v = Vec::new();
            (&mut r.body)
                .take(MAX_JSON)
                .read_to_end(&mut v)
                .map_err(|e| Error::BadRequest(format!("{at}: {e}")))?;
            let env = crate::client::parse_envelope(r.status, &v)
                .map_err(|e| Error::BadRequest(format!("{at}: {e}")))?;
            Ok(env.metadata)
        })
    }
}

/// The fingerprint an alias or fingerprint names on the server.
fn resolve(s: &mut Server, alias: &str, fingerprint: &str) -> Result<String> {
    // As LXD's `ImageDownload`: the name (the fingerprint field when given: lxc puts a public
    // image's alias there, and an image copied so records it as its update source) is an
    // alias of the server's if it has one, else a fingerprint or a prefix of one.
    let name = if fingerprint.is_empty() {
        alias
    } else {
        fingerprint
    };
    if name.is_empty() {
        return Err(Error::BadRequest("Image source names no image".into()));
    }
    let found = s.json(&format!(
        "/1.0/images/aliases/{}",
        crate::client::urlencode(name, false)
    ));
    match found {
        Ok(a) => a
            .get("target")
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| Error::BadRequest(format!("Image alias {name:?} has no target"))),
        Err(_) if !fingerprint.is_empty() => Ok(fingerprint.to_string()),
        Err(e) => Err(e),
    }
}

/// The newest fingerprint the source's alias names now (for refresh).
pub(super) fn latest(d: &Daemon, p: &Pull) -> Result<String> {
    let mut s = Server::new(d, p)?;
    resolve(&mut s, &p.alias, &p.fingerprint)
}

/// Pull `p` from an LXD server into the store (or find it there).
pub(super) fn pull(d: &Daemon, op: Option<&Op>, p: &Pull) -> Result<api::Image> {
    let mut s = Server::new(d, p)?;
    let want = resolve(&mut s, &p.alias, &p.fingerprint)?;
    let info: api::Image = serde_json::from_value(s.json(&format!("/1.0/images/{want}"))?)
        .map_err(|e| Error::BadRequest(format!("{}: image record: {e}", p.server)))?;
    let fp = info.fingerprint.clone();
    if fp.len() != 64 || !fp.starts_with(&want.to_ascii_lowercase()) {
        return Err(Error::BadRequest(format!(
            "{}: asked for image {want}, the server described {fp:?}",
            p.server
        )));
    }
    if let Some(img) = already_here(d, p, &fp)? {
        return Ok(img);
    }
    let opts = image::ImportOpts {
        filename: info.filename.clone(),
        public: p.public,
        auto_update: p.auto_update,
        properties: info.put.properties.clone(),
        profiles: p.profiles.clone(),
        expected_fingerprint: Some(fp.clone()),
        cached: p.cached,
        update_source: Some(api::ImageSource {
            // The name as asked for (lxc names a public image by its alias in the fingerprint
            // field), so that a refresh follows the alias to its newest image, as LXD's does.
            alias: [&p.alias, &p.fingerprint]
                .into_iter()
                .find(|n| !n.is_empty())
                .unwrap_or(&fp)
                .clone(),
            certificate: p.certificate.clone(),
            protocol: "lxd".into(),
            server: p.server.clone(),
            image_type: "container".into(),
        }),
    };
    if let Some(op) = op {
        op.set_metadata("download_progress", serde_json::json!("image: 0%"));
    }
    let at = format!("{}/1.0/images/{fp}/export", s.origin());
    let res = s.get(&format!("/1.0/images/{fp}/export"), |r| {
        if r.status >= 300 {
            let mut v = Vec::new();
            let _ = (&mut r.body).take(MAX_JSON).read_to_end(&mut v);
            let why = crate::client::parse_envelope(r.status, &v)
                .err()
                .map(|e| e.0)
                .unwrap_or_else(|| format!("HTTP {}", r.status));
            return Err(Error::BadRequest(format!("{at}: {why}")));
        }
        let len = r
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        let ctype = r.header("Content-Type").unwrap_or("").to_string();
        let mut prog = Verify::unchecked(&mut r.body, "image", len, op);
        if let Some(b) = multipart::boundary(&ctype) {
            let boundary =
                b.map_err(|()| Error::BadRequest(format!("{at}: no multipart boundary")))?;
            multipart::import_split(d, &mut prog, &boundary, &opts)
        } else {
            d.images
                .import(image::Upload::Unified(&mut prog), &opts)
                .map_err(Error::from)
        }
    });
    imported(d, res, &fp)
}
