//! `POST /1.0/images` with source `url` (`lxc image import URL`): LXD's direct-URL protocol.
//!
//! We send `HEAD URL` with `LXD-Server-Architectures` and `LXD-Server-Version`; the web server
//! answers with `LXD-Image-Hash` (sha256) and `LXD-Image-URL` (where the unified image is, maybe
//! on another host or scheme). The image is then streamed into the store, which refuses it unless
//! its sha256 is that hash. `http://` and `https://` (through [`crate::tls`], roots from the system
//! trust store or `$SSL_CERT_FILE`).

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::operations::Class;
use super::response::{self, Error, Result};
use super::Daemon;
use crate::api;
use crate::http::client::{self, Conn};
use crate::http::{Body, Response};
use crate::image;
use crate::tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A parsed `http[s]://host[:port]/path`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Url {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path: String,
}

pub(super) fn parse(url: &str) -> Result<Url> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(Error::BadRequest(format!("Unsupported image URL {url:?}")));
    };
    let default_port = if tls { 443 } else { 80 };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| Error::BadRequest(format!("Bad port in image URL {url:?}")))?,
        ),
        _ => (hostport, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err(Error::BadRequest(format!("Bad image URL {url:?}")));
    }
    Ok(Url {
        tls,
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

fn connect_tcp(u: &Url) -> Result<TcpStream> {
    let addrs = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| Error::BadRequest(format!("Cannot resolve {}: {e}", u.host)))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::BadRequest(format!(
        "Cannot connect to {}:{}: {}",
        u.host,
        u.port,
        last.map_or_else(|| "no address".to_string(), |e| e.to_string())
    )))
}

/// Connect to `u`'s host, over TLS for `https://` (the trust store loaded once per import, on
/// first use, into `tls_client`).
pub(super) fn connect(u: &Url, tls_client: &mut Option<tls::Client>) -> Result<Box<dyn Conn>> {
    let tcp = connect_tcp(u)?;
    if !u.tls {
        return Ok(Box::new(tcp));
    }
    let c = match tls_client {
        Some(c) => c,
        None => tls_client
            .insert(tls::Client::system().map_err(|e| Error::BadRequest(format!("TLS: {e}")))?),
    };
    let s = c
        .connect(&u.host, tcp)
        .map_err(|e| Error::BadRequest(format!("{}:{}: {e}", u.host, u.port)))?;
    Ok(Box::new(s))
}

pub(super) fn host_header(u: &Url) -> String {
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    if u.port == if u.tls { 443 } else { 80 } {
        host
    } else {
        format!("{host}:{}", u.port)
    }
}

pub fn import_url(d: &Daemon, body: api::ImagesPost) -> Result<Response> {
    let src = body.source.clone().unwrap_or_default();
    let u = parse(&src.url)?;
    let archs = super::endpoints::architectures(&d.host.architecture).join(",");
    let d2 = d.self_arc();
    let op = d.ops.start(
        Class::Task,
        "Downloading image",
        BTreeMap::new(),
        None,
        vec![],
        move |op| {
            let mut tls_client = None;
            let mut s = connect(&u, &mut tls_client)?;
            let headers = vec![
                ("Host".to_string(), host_header(&u)),
                (
                    "User-Agent".to_string(),
                    format!("bivy {}", env!("CARGO_PKG_VERSION")),
                ),
                ("LXD-Server-Architectures".to_string(), archs.clone()),
                (
                    "LXD-Server-Version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
                ("Connection".to_string(), "close".to_string()),
            ];
            let (hash, image_url) = {
                let r = client::request(&mut *s, "HEAD", &u.path, &headers, Body::Empty)
                    .map_err(|e| Error::BadRequest(format!("{}: {e}", src.url)))?;
                if r.status >= 400 {
                    return Err(Error::BadRequest(format!("{}: HTTP {}", src.url, r.status)));
                }
                let hash = r
                    .header("LXD-Image-Hash")
                    .unwrap_or("")
                    .trim()
                    .to_lowercase();
                let image_url = r.header("LXD-Image-URL").unwrap_or("").trim().to_string();
                (hash, image_url)
            };
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::BadRequest(format!(
                    "{}: missing or bad LXD-Image-Hash header",
                    src.url
                )));
            }
            if image_url.is_empty() {
                return Err(Error::BadRequest(format!(
                    "{}: missing LXD-Image-URL header",
                    src.url
                )));
            }
            let iu = parse(&image_url)?;
            let mut s = connect(&iu, &mut tls_client)?;
            let mut h = headers.clone();
            h[0].1 = host_header(&iu);
            let mut r = client::request(&mut *s, "GET", &iu.path, &h, Body::Empty)
                .map_err(|e| Error::BadRequest(format!("{image_url}: {e}")))?;
            if r.status >= 400 {
                return Err(Error::BadRequest(format!("{image_url}: HTTP {}", r.status)));
            }
            let filename = iu.path.rsplit('/').next().unwrap_or("").to_string();
            let opts = image::ImportOpts {
                filename,
                public: body.put.public,
                auto_update: body.put.auto_update,
                properties: body.put.properties.clone(),
                profiles: vec!["default".into()],
                expected_fingerprint: Some(hash),
                update_source: None,
                cached: false,
            };
            let img = d2
                .images
                .import(image::Upload::Unified(&mut r.body), &opts)?;
            super::endpoints::image_created(&d2, &op, &img, &body.aliases)
        },
    );
    Ok(response::operation(&op.to_api()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse("http://127.0.0.1:8080/x/y.tar.gz").unwrap(),
            Url {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/x/y.tar.gz".into()
            }
        );
        assert_eq!(
            parse("http://example.org").unwrap(),
            Url {
                tls: false,
                host: "example.org".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            parse("http://[::1]:81/a").unwrap(),
            Url {
                tls: false,
                host: "::1".into(),
                port: 81,
                path: "/a".into()
            }
        );
        assert_eq!(
            parse("https://images.example.org/a/b.tar.gz?x=1").unwrap(),
            Url {
                tls: true,
                host: "images.example.org".into(),
                port: 443,
                path: "/a/b.tar.gz?x=1".into()
            }
        );
        assert_eq!(
            parse("https://[::1]:8443").unwrap(),
            Url {
                tls: true,
                host: "::1".into(),
                port: 8443,
                path: "/".into()
            }
        );
        let u = parse("https://h:443/").unwrap();
        assert_eq!(host_header(&u), "h");
        assert_eq!(host_header(&parse("https://h:80/").unwrap()), "h:80");
        assert_eq!(host_header(&parse("http://[::1]:81/").unwrap()), "[::1]:81");
        assert!(parse("httpss://x/y").is_err());
        assert!(parse("ftp://x/y").is_err());
        assert!(parse("http://x:99999/").is_err());
        assert!(parse("http://x/a b").is_err());
    }
}
