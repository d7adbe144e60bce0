//! Who is calling, and what an untrusted caller may reach.
//!
//! Unix-socket callers are trusted (the socket's mode and group are the gate). An HTTPS caller
//! is trusted while the SHA-256 of the certificate it presented is in the trust store (not
//! restricted) and the certificate is within its validity; that is
//! checked on every request, so a removed certificate loses access on connections it already
//! had open too (and `https::Https::revoke` closes them).
//!
//! [`ROUTES`] is the route table as data: each path pattern with its methods and the methods an
//! untrusted caller may use. The dispatcher (`routes`) refuses every other request from an
//! untrusted caller with 403 before any handler runs; the handlers of the public routes then
//! show such a caller only public objects (`GET /1.0`'s untrusted view, public images and
//! their aliases, an image or operation named by its one-time secret).
//!
//! An operation's websocket (`GET /1.0/operations/{id}/websocket?secret=S`) is open to untrusted
//! callers as in LXD (`AllowUntrusted`): the secret is the credential. A migration target dials
//! the source this way, with no client certificate. The handler admits an untrusted connection
//! only on an operation opened to it (a migration source's: exec and console websockets stay
//! closed, narrower than LXD) and only with a secret that is live for that operation (issued,
//! not used by an earlier connection, the operation still running); anything else is 403.

use std::net::IpAddr;

use super::Daemon;

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// On the unix socket.
    Local,
    /// On the HTTPS listener, with the client certificate it presented (if any).
    Remote {
        addr: IpAddr,
        cert: Option<Vec<u8>>,
        fingerprint: Option<String>,
    },
}

impl Caller {
    /// Whether the caller is trusted now.
    pub fn trusted(&self, d: &Daemon) -> bool {
        match self {
            Caller::Local => true,
            Caller::Remote {
                fingerprint, cert, ..
            } => {
                fingerprint
                    .as_deref()
                    .is_some_and(|fp| crate::instance::trust::is_trusted(d, fp))
                    && cert
                        .as_deref()
                        .is_some_and(crate::instance::trust::valid_now)
            }
        }
    }
}

/// One route: a path pattern (`{x}` is any one segment), its methods, and those open to
/// untrusted callers.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    pub untrusted: &'static [&'static str],
}

const fn r(
    path: &'static str,
    methods: &'static [&'static str],
    untrusted: &'static [&'static str],
) -> Route {
    Route {
        path,
        methods,
        untrusted,
    }
}

const NONE: &[&str] = &[];
/// `HEAD` goes wherever `GET` goes.
const GET: &[&str] = &["GET"];
const CRUD: &[&str] = &["GET", "PUT", "PATCH", "POST", "DELETE"];

/// Every route the daemon serves (`/1.0/containers/…` is served as `/1.0/instances/…`).
pub const ROUTES: &[Route] = &[
    r("/", GET, GET),
    r("/1.0", &["GET", "PUT", "PATCH"], GET),
    r("/1.0/events", GET, NONE),
    r("/1.0/operations", GET, NONE),
    // Untrusted: only with the operation's image `?secret=` (the handler checks it).
    r("/1.0/operations/{id}", &["GET", "DELETE"], &["GET"]),
    r("/1.0/operations/{id}/wait", GET, &["GET"]),
    // Untrusted: only with a live websocket secret of that operation (the handler checks).
    r("/1.0/operations/{id}/websocket", GET, GET),
    r("/1.0/instances", &["GET", "POST", "PUT"], NONE),
    r("/1.0/instances/{name}", CRUD, NONE),
    r("/1.0/instances/{name}/state", &["GET", "PUT"], NONE),
    r("/1.0/instances/{name}/exec", &["POST"], NONE),
    r(
        "/1.0/instances/{name}/console",
        &["GET", "POST", "DELETE"],
        NONE,
    ),
    r(
        "/1.0/instances/{name}/files",
        &["GET", "HEAD", "POST", "DELETE"],
        NONE,
    ),
    r("/1.0/instances/{name}/logs", GET, NONE),
    r(
        "/1.0/instances/{name}/logs/{file}",
        &["GET", "DELETE"],
        NONE,
    ),
    r(
        "/1.0/instances/{name}/metadata",
        &["GET", "PUT", "PATCH"],
        NONE,
    ),
    r(
        "/1.0/instances/{name}/metadata/templates",
        &["GET", "POST", "PUT", "DELETE"],
        NONE,
    ),
    r("/1.0/instances/{name}/snapshots", &["GET", "POST"], NONE),
    r("/1.0/instances/{name}/snapshots/{snap}", CRUD, NONE),
    r("/1.0/instances/{name}/backups", &["GET", "POST"], NONE),
    r(
        "/1.0/instances/{name}/backups/{backup}",
        &["GET", "POST", "DELETE"],
        NONE,
    ),
    r("/1.0/instances/{name}/backups/{backup}/export", GET, NONE),
    r("/1.0/profiles", &["GET", "POST"], NONE),
    r("/1.0/profiles/{name}", CRUD, NONE),
    // Untrusted: public images only (the handlers filter).
    r("/1.0/images", &["GET", "POST"], GET),
    r("/1.0/images/aliases", &["GET", "POST"], GET),
    // An alias may have slashes (`debian/12`): its name is the rest of the path.
    r("/1.0/images/aliases/{name...}", CRUD, GET),
    r("/1.0/images/{fp}", &["GET", "PUT", "PATCH", "DELETE"], GET),
    r("/1.0/images/{fp}/export", &["GET", "POST"], GET),
    r("/1.0/images/{fp}/secret", &["POST"], NONE),
    r("/1.0/images/{fp}/refresh", &["POST"], NONE),
    r("/1.0/resources", GET, NONE),
    r("/1.0/storage-pools", &["GET", "POST"], NONE),
    r(
        "/1.0/storage-pools/{pool}",
        &["GET", "PUT", "PATCH", "DELETE"],
        NONE,
    ),
    r("/1.0/storage-pools/{pool}/resources", GET, NONE),
    r("/1.0/storage-pools/{pool}/volumes", GET, NONE),
    r("/1.0/storage-pools/{pool}/volumes/{type}", GET, NONE),
    r("/1.0/storage-pools/{pool}/volumes/{type}/{vol}", GET, NONE),
    r("/1.0/networks", &["GET", "POST"], NONE),
    r(
        "/1.0/networks/{name}",
        &["GET", "PUT", "PATCH", "POST", "DELETE"],
        NONE,
    ),
    r("/1.0/networks/{name}/leases", GET, NONE),
    r("/1.0/networks/{name}/state", GET, NONE),
    r("/1.0/warnings", GET, NONE),
    r(
        "/1.0/warnings/{id}",
        &["GET", "PUT", "PATCH", "DELETE"],
        NONE,
    ),
    // Untrusted: adding oneself with the trust password or a token (the handler checks).
    r("/1.0/certificates", &["GET", "POST"], &["POST"]),
    r(
        "/1.0/certificates/{fp}",
        &["GET", "PUT", "PATCH", "DELETE"],
        NONE,
    ),
];

/// The route a path falls under, if any.
pub fn find(path: &str) -> Option<&'static Route> {
    let path = path.trim_end_matches('/');
    let segs: Vec<&str> = if path.is_empty() {
        vec![""]
    } else {
        path.split('/').skip(1).collect()
    };
    ROUTES.iter().find(|r| {
        let pat: Vec<&str> = if r.path == "/" {
            vec![""]
        } else {
            r.path.split('/').skip(1).collect()
        };
        let rest = pat.last().is_some_and(|p| p.ends_with("...}"));
        (pat.len() == segs.len()
            || rest && segs.len() > pat.len() && segs[pat.len()..].iter().all(|s| !s.is_empty()))
            && pat.iter().zip(&segs).enumerate().all(|(i, (p, s))| {
                (p.starts_with('{') && !s.is_empty())
                    || p == s
                    || (i == 1 && *p == "instances" && *s == "containers")
            })
    })
}

/// Whether an untrusted caller may make this request at all.
pub fn untrusted_may(method: &str, path: &str) -> bool {
    let method = if method == "HEAD" { "GET" } else { method };
    find(path).is_some_and(|r| r.untrusted.contains(&method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_reach_only_the_public_routes() {
        assert!(untrusted_may("GET", "/"));
        assert!(untrusted_may("GET", "/1.0"));
        assert!(untrusted_may("GET", "/1.0/"));
        assert!(untrusted_may("HEAD", "/1.0"));
        assert!(!untrusted_may("HEAD", "/1.0/instances"));
        assert!(untrusted_may("POST", "/1.0/certificates"));
        assert!(untrusted_may("GET", "/1.0/images/abc/export"));
        assert!(untrusted_may("GET", "/1.0/images/aliases/x"));
        assert!(untrusted_may("GET", "/1.0/images/aliases/debian/12"));
        assert!(!untrusted_may("GET", "/1.0/images/aliases/debian//12"));
        assert!(!untrusted_may("PUT", "/1.0"));
        assert!(!untrusted_may("GET", "/1.0/certificates"));
        assert!(!untrusted_may("GET", "/1.0/events"));
        assert!(!untrusted_may("GET", "/1.0/instances"));
        assert!(!untrusted_may("GET", "/1.0/containers/c1"));
        assert!(!untrusted_may("POST", "/1.0/images/abc/secret"));
        assert!(untrusted_may("GET", "/1.0/operations/x/websocket"));
        assert!(!untrusted_may("DELETE", "/1.0/operations/x"));
        assert!(!untrusted_may("DELETE", "/1.0/images/abc"));
        assert!(!untrusted_may("GET", "/1.0/nothing"));
        assert!(!untrusted_may("GET", "/1.0/images//export"));
        assert_eq!(
            find("/1.0/containers/c1/snapshots/s").map(|r| r.path),
            Some("/1.0/instances/{name}/snapshots/{snap}")
        );
    }

    #[test]
    fn table_patterns_are_distinct() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(!a.methods.is_empty(), "{}", a.path);
            for m in a.untrusted {
                assert!(a.methods.contains(m), "{} {m}", a.path);
            }
            assert!(
                ROUTES[..i].iter().all(|b| b.path != a.path),
                "{} twice",
                a.path
            );
        }
    }
}
