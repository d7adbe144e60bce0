//! `POST /1.0/images` with source `url` (`lxc image import URL`): LXD's direct-URL protocol.
//!
//! We send `HEAD URL` with `LXD-Server-Architectures` and `LXD-Server-Version`; the web server
//! answers with `LXD-Image-Hash` (sha256) and `LXD-Image-URL` (where the unified image is, maybe
//! on another host or scheme). The image is then streamed into the store, which refuses it unless
//! its sha256 is that hash. `http://` and `https://` (through [`crate::tls`], roots from the system
//! trust store or `$SSL_CERT_FILE`).
//!
//! Every download (this and the simplestreams pulls) goes through a [`Fetcher`], which honours
//! the server's `core.proxy_http` (for `http://` URLs: requests in absolute form to the proxy),
//! `core.proxy_https` (for `https://` URLs: a `CONNECT` tunnel, TLS end to end with the origin)
//! and `core.proxy_ignore_hosts`, as LXD does.

use std::collections::BTreeMap;
use std::net::TcpStream;
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        // `[v6]` alone has no port; `[v6]:port` and `host:port` have one.
        Some((h, p)) if !hostport.ends_with(']') && (!h.starts_with('[') || h.ends_with(']')) => (
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

/// A TCP connection to `u`'s host and port ([`crate::net::resolve::connect_tcp`]: no NSS).
fn connect_tcp(u: &Url) -> Result<TcpStream> {
    let s = crate::net::resolve::connect_tcp(&u.host, u.port, CONNECT_TIMEOUT)
        .map_err(|e| Error::BadRequest(format!("Cannot connect to {}:{}: {e}", u.host, u.port)))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    Ok(s)
}

/// The proxy settings of the server config (`core.proxy_*`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Proxies {
    /// `core.proxy_http`: the proxy for `http://` URLs.
    pub(super) http: Option<Url>,
    /// `core.proxy_https`: the proxy for `https://` URLs.
    pub(super) https: Option<Url>,
    /// `core.proxy_ignore_hosts`: hosts reached directly.
    pub(super) ignore: Vec<String>,
}

/// A proxy address: `http://host:port` (or `host:port`). Credentials and `https://` proxies are
/// refused: bivy cannot use them yet, and must not pretend to.
pub(super) fn parse_proxy(key: &str, v: &str) -> Result<Url> {
    let url = if v.contains("://") {
        v.to_string()
    } else {
        format!("http://{v}")
    };
    if url.starts_with("https://") {
        return Err(Error::BadRequest(format!(
            "not supported yet: {key} with an https:// proxy"
        )));
    }
    let u =
        parse(&url).map_err(|_| Error::BadRequest(format!("Invalid proxy for {key}: {v:?}")))?;
    if u.host.contains('@') {
        return Err(Error::BadRequest(format!(
            "not supported yet: {key} with credentials"
        )));
    }
    Ok(u)
}

impl Proxies {
    /// From the server config; values were checked when they were set.
    pub(super) fn from_config(config: &api::StringMap) -> Proxies {
        let get = |k: &str| config.get(k).filter(|v| !v.trim().is_empty());
        Proxies {
            http: get("core.proxy_http").and_then(|v| parse_proxy("core.proxy_http", v).ok()),
            https: get("core.proxy_https").and_then(|v| parse_proxy("core.proxy_https", v).ok()),
            ignore: get("core.proxy_ignore_hosts")
                .map(|v| {
                    v.split(',')
                        .map(|h| h.trim().to_lowercase())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The proxy to reach `u` through, if any (`NO_PROXY` rules: `*`, a host or IP, a domain
    /// and its subdomains, `.domain` for subdomains only, `host:port`, an IP network `a.b.c.d/n`).
    pub(super) fn for_url(&self, u: &Url) -> Option<&Url> {
        let proxy = if u.tls {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        let host = u.host.to_lowercase();
        let ignored = self.ignore.iter().any(|rule| {
            let (rule_host, rule_port) = match rule.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => {
                    (h, p.parse::<u16>().ok())
                }
                _ => (rule.as_str(), None),
            };
            if rule_port.is_some_and(|p| p != u.port) {
                return false;
            }
            let rule_host = rule_host.trim_start_matches('[').trim_end_matches(']');
            rule_host == "*"
                || host == rule_host
                || rule_host
                    .strip_prefix('.')
                    .is_some_and(|d| host.ends_with(&format!(".{d}")))
                || (!rule_host.starts_with('.') && host.ends_with(&format!(".{rule_host}")))
                || in_network(&host, rule_host)
        });
        (!ignored).then_some(proxy)
    }
}

/// Is `host` an IP address inside the network `rule` (`a.b.c.d/n` or `x::/n`)?
fn in_network(host: &str, rule: &str) -> bool {
    use std::net::IpAddr;
    let Some((net, bits)) = rule.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(net), Ok(bits)) = (
        host.parse::<IpAddr>(),
        net.parse::<IpAddr>(),
        bits.parse::<u32>(),
    ) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Downloads for one task: the proxy settings and the TLS trust store (loaded on first use).
pub(super) struct Fetcher {
    tls: Option<tls::Client>,
    proxies: Proxies,
}

impl Fetcher {
    /// With the daemon's current `core.proxy_*` settings.
    pub(super) fn new(d: &Daemon) -> Fetcher {
        let config = d.db.lock().expect("db lock").data.config.clone();
        Fetcher {
            tls: None,
            proxies: Proxies::from_config(&config),
        }
    }

    /// For an LXD server: its certificate pinned (`None`: the system roots, for a server with a
    /// CA-signed certificate).
    pub(super) fn for_server(d: &Daemon, cert: Option<Vec<u8>>) -> Result<Fetcher> {
        let mut f = Fetcher::new(d);
        if let Some(c) = cert {
            f.tls = Some(
                tls::Client::pinned(Some(c), None)
                    .map_err(|e| Error::BadRequest(format!("TLS: {e}")))?,
            );
        }
        Ok(f)
    }

    /// Connect for a request to `u`: directly or through its proxy, over TLS for `https://`.
    /// Returns the stream and the request target to use on it (the path, or the absolute URL
    /// when an HTTP proxy forwards the request).
    pub(super) fn connect(&mut self, u: &Url) -> Result<(Box<dyn Conn>, String)> {
        let proxy = self.proxies.for_url(u);
        let Some(proxy) = proxy else {
            let tcp = connect_tcp(u)?;
            return Ok((self.tls_over(u, tcp)?, u.path.clone()));
        };
        let mut tcp = connect_tcp(proxy)?;
        if !u.tls {
            let scheme_host = format!("http://{}", host_header(u));
            return Ok((Box::new(tcp), format!("{scheme_host}{}", u.path)));
        }
        // https through the proxy: a CONNECT tunnel, then TLS with the origin inside it.
        use std::io::{Read, Write};
        let authority = format!("{}:{}", host_header_host(u), u.port);
        write!(
            tcp,
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        )
        .map_err(|e| Error::BadRequest(format!("proxy {}: {e}", proxy.host)))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(Error::BadRequest(format!(
                    "proxy {}: response head too long",
                    proxy.host
                )));
            }
            match tcp.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                Ok(_) => {
                    return Err(Error::BadRequest(format!(
                        "proxy {}: closed during CONNECT",
                        proxy.host
                    )))
                }
                Err(e) => return Err(Error::BadRequest(format!("proxy {}: {e}", proxy.host))),
            }
        }
        let head = String::from_utf8_lossy(&head);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let line = head.lines().next().unwrap_or("");
            return Err(Error::BadRequest(format!(
                "proxy {}: CONNECT {authority}: {line}",
                proxy.host
            )));
        }
        Ok((self.tls_over(u, tcp)?, u.path.clone()))
    }

    fn tls_over(&mut self, u: &Url, tcp: TcpStream) -> Result<Box<dyn Conn>> {
        if !u.tls {
            return Ok(Box::new(tcp));
        }
        let c = match &mut self.tls {
            Some(c) => c,
            None => self
                .tls
                .insert(tls::Client::system().map_err(|e| Error::BadRequest(format!("TLS: {e}")))?),
        };
        let s = c
            .connect(&u.host, tcp)
            .map_err(|e| Error::BadRequest(format!("{}:{}: {e}", u.host, u.port)))?;
        Ok(Box::new(s))
    }
}

/// `u`'s host as it goes in an authority (IPv6 in brackets).
fn host_header_host(u: &Url) -> String {
    if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    }
}

/// The headers of a one-shot `GET` from an image server: its `Host`, our user agent (LXD's form,
/// which servers may key on), and `Connection: close`.
pub(super) fn get_headers(u: &Url) -> Vec<(String, String)> {
    vec![
        ("Host".to_string(), host_header(u)),
        (
            "User-Agent".to_string(),
            format!("LXD 5.0.2 (bivy {})", env!("CARGO_PKG_VERSION")),
        ),
        ("Connection".to_string(), "close".to_string()),
    ]
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
    let archs = crate::instance::host::architectures(&d.host.architecture).join(",");
    let d2 = d.self_arc();
    let op = d.ops.start(
        Class::Task,
        "Downloading image",
        BTreeMap::new(),
        None,
        vec![],
        move |op| {
            let mut fetcher = Fetcher::new(&d2);
            let (mut s, target) = fetcher.connect(&u)?;
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
                let r = client::request(&mut *s, "HEAD", &target, &headers, Body::Empty)
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
            let (mut s, target) = fetcher.connect(&iu)?;
            let mut h = headers.clone();
            h[0].1 = host_header(&iu);
            let mut r = client::request(&mut *s, "GET", &target, &h, Body::Empty)
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
            crate::instance::images::image_created(&d2, &op, &img, &body.aliases)
                .map_err(Error::from)
        },
    );
    Ok(response::operation(&op.to_api()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_choice_and_ignore_rules() {
        let mut config = api::StringMap::new();
        config.insert("core.proxy_http".into(), "127.0.0.1:3128".into());
        config.insert(
            "core.proxy_https".into(),
            "http://proxy.example:8080".into(),
        );
        config.insert(
            "core.proxy_ignore_hosts".into(),
            "localhost, .internal,example.org,10.0.0.0/8,fd00::/8,mirror.net:8443".into(),
        );
        let p = Proxies::from_config(&config);
        let via = |url: &str| {
            p.for_url(&parse(url).unwrap())
                .map(|u| format!("{}:{}", u.host, u.port))
        };
        assert_eq!(
            via("http://images.net/x").as_deref(),
            Some("127.0.0.1:3128")
        );
        assert_eq!(
            via("https://images.net/x").as_deref(),
            Some("proxy.example:8080")
        );
        for direct in [
            "http://localhost/x",
            "http://a.internal/x",
            "http://example.org/x",
            "https://www.example.org/x",
            "http://10.1.2.3/x",
            "http://[fd00::1]/x",
            "https://mirror.net:8443/x",
        ] {
            assert_eq!(via(direct), None, "{direct}");
        }
        // `.internal` is for subdomains only; a port rule only for that port; no false suffix.
        assert!(via("http://internal/x").is_some());
        assert!(via("https://mirror.net/x").is_some());
        assert!(via("http://notexample.org/x").is_some());
        assert!(via("http://11.0.0.1/x").is_some());
        // Nothing set: direct.
        assert_eq!(
            Proxies::default().for_url(&parse("http://a/").unwrap()),
            None
        );
        assert!(parse_proxy("core.proxy_http", "https://p:1").is_err());
        assert!(parse_proxy("core.proxy_http", "http://u:p@p:1").is_err());
    }

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
