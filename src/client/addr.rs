//! Remote addresses: what a user types (`1.2.3.4`, `host:port`, `[::1]:8443`, `https://…`,
//! `unix:///path`) normalised the way `lxc remote add` stores it (`https://HOST:PORT`, default
//! port 8443), and a stored address split back into what a connection needs.

/// The port of an LXD HTTPS listener when none is given.
pub const DEFAULT_PORT: u16 = 8443;

/// Where a stored remote address points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// `unix://` (the default socket) or `unix:///path`: the path, empty for the default.
    Unix(String),
    /// `https://HOST[:PORT][/…]`: the host without brackets, the port (443 when absent).
    Https { host: String, port: u16 },
}

/// `host:port` as it goes in a URL or a `Host` header (IPv6 in brackets).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Split `HOST[:PORT]` (`[v6]:port`, `[v6]`, a bare IPv6 address) into the host without brackets
/// and the port, if any.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let bad = || format!("invalid address \"{s}\"");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').ok_or_else(bad)?;
        (h, Some(p))
    } else {
        // No colon, or a bare IPv6 address (several).
        (s, None)
    };
    if host.is_empty() || host.contains(['/', '[', ']', '@', ' ']) {
        return Err(bad());
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("invalid port \"{p}\" in \"{s}\"")),
        },
    };
    Ok((host.to_string(), port))
}

/// Normalise an address typed to `remote add` the way lxc does: a path or `unix:` URL stays a
/// unix address; anything else becomes `https://HOST:PORT` (brackets around IPv6, port 8443 when
/// none is given; a URL's path is dropped, as lxc drops it). Errors are lxc's.
pub fn normalize(addr: &str) -> Result<String, String> {
    if let Some((scheme, rest)) = addr.split_once("://") {
        match scheme {
            "unix" => return Ok(format!("unix://{rest}")),
            "https" => {
                let hostport = rest.split('/').next().unwrap_or("");
                let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
                let (host, port) = split_host_port(hostport)?;
                return Ok(format!(
                    "https://{}",
                    authority(&host, port.unwrap_or(DEFAULT_PORT))
                ));
            }
            other => return Err(format!("Invalid URL scheme \"{other}\" in \"{addr}\"")),
        }
    }
    if addr.starts_with('/') {
        return Ok(format!("unix://{addr}"));
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        return Ok(format!("unix://{path}"));
    }
    let (host, port) = split_host_port(addr)?;
    Ok(format!(
        "https://{}",
        authority(&host, port.unwrap_or(DEFAULT_PORT))
    ))
}

/// Parse a stored remote address (`https://…` or `unix://…`). A URL without a port means 443,
/// as for any https URL (addresses `remote add` stores always carry one).
pub fn parse(addr: &str) -> Result<Addr, String> {
    if let Some(path) = addr.strip_prefix("unix:") {
        return Ok(Addr::Unix(path.trim_start_matches("//").to_string()));
    }
    let Some(rest) = addr.strip_prefix("https://") else {
        return Err(format!(
            "unsupported remote address \"{addr}\" (https:// or unix://)"
        ));
    };
    let hostport = rest.split('/').next().unwrap_or("");
    let (host, port) = split_host_port(hostport)?;
    Ok(Addr::Https {
        host,
        port: port.unwrap_or(443),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_like_lxc() {
        for (input, want) in [
            ("1.2.3.4", "https://1.2.3.4:8443"),
            ("1.2.3.4:9443", "https://1.2.3.4:9443"),
            ("host.example", "https://host.example:8443"),
            ("host.example:1234", "https://host.example:1234"),
            ("[::1]:8443", "https://[::1]:8443"),
            ("[::1]", "https://[::1]:8443"),
            ("::1", "https://[::1]:8443"),
            ("fd00::5", "https://[fd00::5]:8443"),
            ("https://h", "https://h:8443"),
            ("https://h:99/some/path", "https://h:99"),
            ("https://[fd00::1]:7", "https://[fd00::1]:7"),
            ("unix://", "unix://"),
            ("unix:///run/x.socket", "unix:///run/x.socket"),
            ("/run/x.socket", "unix:///run/x.socket"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        assert_eq!(
            normalize("http://h").unwrap_err(),
            "Invalid URL scheme \"http\" in \"http://h\""
        );
        assert!(normalize("h:0").is_err());
        assert!(normalize("h:99999").is_err());
        assert!(normalize("h:x").is_err());
        assert!(normalize("[::1").is_err());
    }

    #[test]
    fn stored_addresses_parse() {
        assert_eq!(parse("unix://"), Ok(Addr::Unix(String::new())));
        assert_eq!(parse("unix:///a/b"), Ok(Addr::Unix("/a/b".into())));
        assert_eq!(
            parse("https://[::1]:9"),
            Ok(Addr::Https {
                host: "::1".into(),
                port: 9
            })
        );
        assert_eq!(
            parse("https://images.linuxcontainers.org"),
            Ok(Addr::Https {
                host: "images.linuxcontainers.org".into(),
                port: 443
            })
        );
        assert!(parse("ftp://x").is_err());
        assert_eq!(authority("::1", 8443), "[::1]:8443");
        assert_eq!(authority("10.0.0.1", 8443), "10.0.0.1:8443");
    }
}
