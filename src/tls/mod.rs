//! TLS client side: rustls with the ring provider, roots from the system trust store.
//!
//! The only module that imports rustls. [`connect`] wraps a connected `TcpStream` in a
//! [`ClientStream`] after a completed handshake, so certificate problems surface there with a
//! clear error rather than on the first read. The HTTP layer knows nothing of TLS: its client
//! runs on any `Read + Write` stream ([`crate::http::client::Conn`]).
//!
//! Trust store: the PEM bundle in `$SSL_CERT_FILE` and the PEM files in the `$SSL_CERT_DIR`
//! directories (`:`-separated) when either is set; otherwise the first of the usual system
//! bundles that exists ([`SYSTEM_BUNDLES`]). TLS 1.2 and 1.3 (rustls' safe defaults); server
//! names are verified as usual, IP addresses included (against the certificate's IP SANs).

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// System CA bundles, tried in order (Debian/Ubuntu/Alpine, Fedora/RHEL, BSD/macOS-style).
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A TLS client connection over TCP: `Read + Write` of the plaintext.
pub type ClientStream = StreamOwned<ClientConnection, TcpStream>;

/// Client settings: the trusted roots plus rustls' defaults. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Roots from the system trust store (see the module doc).
    pub fn system() -> io::Result<Client> {
        Client::with_roots(system_roots()?)
    }

    /// Roots from these PEM files (bundles) only.
    pub fn from_pem_files(files: &[PathBuf]) -> io::Result<Client> {
        Client::with_roots(roots_from(files, &[])?)
    }

    fn with_roots(roots: RootCertStore) -> io::Result<Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            config: Arc::new(config),
        })
    }

    /// Run the TLS handshake for `host` (a DNS name or an IP address, without brackets) over a
    /// connected `tcp`, whose timeouts apply to the handshake too.
    pub fn connect(&self, host: &str, tcp: TcpStream) -> io::Result<ClientStream> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid TLS server name {host:?}"),
            )
        })?;
        let conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| io::Error::other(format!("TLS setup: {e}")))?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(handshake_error)?;
        }
        Ok(s)
    }
}

/// A handshake failure, naming the certificate problem when there is one (the caller names the
/// server).
fn handshake_error(e: io::Error) -> io::Error {
    let kind = e.kind();
    let detail = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            let hint = match c {
                rustls::CertificateError::UnknownIssuer => {
                    " (its CA is not in the trust store: SSL_CERT_FILE or the system bundle)"
                }
                _ => "",
            };
            format!("TLS certificate rejected: {c}{hint}")
        }
        Some(r) => format!("TLS handshake failed: {r}"),
        None if kind == io::ErrorKind::UnexpectedEof => {
            "TLS handshake failed: connection closed by the server".to_string()
        }
        None => format!("TLS handshake failed: {e}"),
    };
    io::Error::new(kind, detail)
}

/// The trust store from `$SSL_CERT_FILE` / `$SSL_CERT_DIR`, or else the first system bundle.
fn system_roots() -> io::Result<RootCertStore> {
    let file = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty());
    let dirs = std::env::var_os("SSL_CERT_DIR").filter(|v| !v.is_empty());
    if file.is_some() || dirs.is_some() {
        let files: Vec<PathBuf> = file.into_iter().map(PathBuf::from).collect();
        let dirs: Vec<PathBuf> = dirs
            .as_deref()
            .map(|d| std::env::split_paths(d).collect())
            .unwrap_or_default();
        return roots_from(&files, &dirs);
    }
    let found: Vec<PathBuf> = SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .take(1)
        .collect();
    roots_from(&found, &[])
}

/// Trusted roots from PEM bundles and directories of PEM files. A file that cannot be read is
/// an error; a directory entry that is not a PEM certificate is skipped; no root at all is an
/// error.
fn roots_from(files: &[PathBuf], dirs: &[PathBuf]) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for f in files {
        let certs = read_pem(f).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading CA certificates from {}: {e}", f.display()),
            )
        })?;
        roots.add_parsable_certificates(certs);
    }
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths.iter().filter(|p| p.is_file()) {
            if let Ok(certs) = read_pem(p) {
                roots.add_parsable_certificates(certs);
            }
        }
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no CA certificates found: set SSL_CERT_FILE or install ca-certificates",
        ));
    }
    Ok(roots)
}

/// Every `CERTIFICATE` section of a PEM file (other sections are ignored).
fn read_pem(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let bad = |e: rustls::pki_types::pem::Error| match e {
        rustls::pki_types::pem::Error::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    };
    CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .map(|c| c.map_err(bad))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_roots_is_a_clear_error() {
        let e = roots_from(&[], &[PathBuf::from("/nonexistent-bivy-dir")]).unwrap_err();
        assert!(e.to_string().contains("no CA certificates found"), "{e}");
        let e = Client::from_pem_files(&[PathBuf::from("/nonexistent-bivy.pem")]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-bivy.pem"), "{e}");
        // A file with no certificate in it.
        let p = std::env::temp_dir().join(format!("bivy-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&p, b"not a certificate\n").unwrap();
        let e = Client::from_pem_files(std::slice::from_ref(&p)).unwrap_err();
        let _ = std::fs::remove_file(&p);
        assert!(e.to_string().contains("no CA certificates found"), "{e}");
    }

    #[test]
    fn system_bundle_parses_when_present() {
        let Some(p) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) else {
            crate::test_skip::skip(
                "system_bundle_parses_when_present",
                "no system CA bundle (apt-get install ca-certificates)",
            );
            return;
        };
        let roots = roots_from(&[p.to_path_buf()], &[]).unwrap();
        assert!(roots.len() > 10, "{} roots in {}", roots.len(), p.display());
    }
}
