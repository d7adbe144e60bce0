//! TLS, both ends: rustls with the ring provider. The only module that imports rustls.
//!
//! - Client side ([`Client`]): roots from the system trust store for image downloads
//!   ([`Client::system`]), or one pinned server certificate for bivy and LXD remotes
//!   ([`Client::pinned`]), optionally presenting a client certificate.
//! - Server side ([`Server`]): the daemon's HTTPS listener. It asks every client for a
//!   certificate and accepts any (self-signed ones are the norm, as with LXD); whether that
//!   certificate is trusted is the daemon's decision, by its fingerprint.
//! - [`TlsStream`]: a finished session over TCP that reader and writer threads share, so HTTP
//!   and websockets run on it as on a plain socket ([`crate::util::stream::Stream`]).
//! - [`cert`]: key pairs and self-signed certificates, fingerprints, PEM.
//!
//! Trust store for [`Client::system`]: the PEM bundle in `$SSL_CERT_FILE` and the PEM files in
//! the `$SSL_CERT_DIR` directories (`:`-separated) when either is set; otherwise the first of the
//! usual system bundles that exists ([`SYSTEM_BUNDLES`]). TLS 1.2 and 1.3 only, rustls' default
//! (modern, AEAD-only) suites; server names are verified as usual, IP addresses included.

pub mod cert;
mod stream;

pub use cert::{cert_info, der_to_pem, fingerprint, pem_to_der, CertInfo, CertKind, Identity};
pub use stream::TlsStream;

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, ServerConnection, SignatureScheme,
};

/// System CA bundles, tried in order (Debian/Ubuntu/Alpine, Fedora/RHEL, BSD/macOS-style).
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Client settings: the trusted roots plus rustls' defaults. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
}

/// `Debug` without the rustls config (keys, tickets) in it.
macro_rules! opaque_debug {
    ($t:ident) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    };
}

opaque_debug!(Client);

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
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup_error)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            config: Arc::new(config),
        })
    }

    /// For a bivy or LXD server: its certificate pinned (the exact DER must come back), or with
    /// `None` any certificate accepted (first contact: the caller reads it back with
    /// [`TlsStream::peer_certificate`] and asks the user). With an identity, it is presented as
    /// the client certificate when the server asks for one.
    pub fn pinned(server_cert: Option<Vec<u8>>, identity: Option<&Identity>) -> io::Result<Client> {
        let provider = provider();
        let verifier = Arc::new(Pinned {
            cert: server_cert,
            sigs: Signatures(provider.clone()),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(setup_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain(), id.key())
                .map_err(setup_error)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Client {
            config: Arc::new(config),
        })
    }

    /// Run the TLS handshake for `host` (a DNS name or an IP address, without brackets) over a
    /// connected `tcp`, whose timeouts apply to the handshake too.
    pub fn connect(&self, host: &str, tcp: TcpStream) -> io::Result<TlsStream> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid TLS server name {host:?}"),
            )
        })?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(setup_error)?;
        TlsStream::handshake(conn.into(), tcp).map_err(handshake_error)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup_error(e: rustls::Error) -> io::Error {
    io::Error::other(format!("TLS setup: {e}"))
}

/// Checks the handshake signatures against the certificate's key, with the provider's
/// algorithms (what both custom verifiers below share with rustls' own).
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server certificate check by exact match with the pinned one (or none, on first contact).
#[derive(Debug)]
struct Pinned {
    cert: Option<Vec<u8>>,
    sigs: Signatures,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.cert {
            Some(pin) if pin.as_slice() != end_entity.as_ref() => {
                Err(rustls::Error::General(format!(
                    "server certificate mismatch: expected {}, got {}",
                    fingerprint(pin),
                    fingerprint(end_entity)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.sigs.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.sigs.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.sigs.schemes()
    }
}

/// The daemon's side: requests a client certificate, accepts any that proves possession of its
/// key (the handshake signature is checked), and lets clients without one in (they are
/// untrusted: `GET /1.0`, public images, adding themselves with a password or token).
#[derive(Debug)]
struct AnyClientCert(Signatures);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// The daemon's TLS settings: its certificate, TLS 1.2 and 1.3, client certificates requested.
#[derive(Clone)]
pub struct Server {
    config: Arc<ServerConfig>,
}

opaque_debug!(Server);

impl Server {
    pub fn new(identity: &Identity) -> io::Result<Server> {
        let provider = provider();
        let verifier = Arc::new(AnyClientCert(Signatures(provider.clone())));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(setup_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain(), identity.key())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("server key: {e}")))?;
        // Resumption by stateless tickets (encrypted with a key that rotates every 6 hours):
        // a client's next connection skips the P-384 signature, and the server keeps nothing
        // per client. A resumed session carries the client certificate it was made with, so
        // trust is still decided by that certificate's fingerprint on every request.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(setup_error)?;
        // Enough tickets from one full handshake for every connection a client opens next:
        // `exec` opens four websockets at once plus one to wait for the end, each of which
        // resumes (0.35 ms) instead of signing again (2.9 ms). A ticket is used once.
        config.send_tls13_tickets = 6;
        Ok(Server {
            config: Arc::new(config),
        })
    }

    /// Run the server handshake over `tcp` (its timeouts bound it).
    pub fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let conn = ServerConnection::new(self.config.clone()).map_err(setup_error)?;
        TlsStream::handshake(conn.into(), tcp)
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
        crate::util::sort::sort(&mut paths);
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

    fn identity(dir: &Path, name: &str, kind: CertKind) -> Identity {
        Identity::load_or_make(
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
            kind,
        )
        .unwrap()
    }

    /// A server on loopback answering each connection's first line with the client's
    /// certificate fingerprint (or "none"), then echoing.
    fn echo_server(server: Server) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in l.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let Ok(mut s) = server.accept(tcp) else {
                        return;
                    };
                    let who = s.peer_certificate().map(|c| fingerprint(&c));
                    let _ = writeln!(s, "{}", who.as_deref().unwrap_or("none"));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn pinned_client_and_any_client_certificate_server() {
        use crate::util::stream::Stream;
        use std::io::{BufRead, BufReader, Read, Write};
        let dir = std::env::temp_dir().join(format!("bivy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sid = identity(&dir, "server", CertKind::Server);
        let cid = identity(&dir, "client", CertKind::Client);
        let mode = |n: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode("server.key"), 0o600);
        assert_eq!(mode("server.crt"), 0o644);
        // Loading again gives the same pair.
        assert_eq!(
            identity(&dir, "server", CertKind::Server).cert_der,
            sid.cert_der
        );
        let addr = echo_server(Server::new(&sid).unwrap());

        // Pinned to the right certificate, with a client certificate: the server sees it, and
        // a reader thread and a writer thread share the session.
        let c = Client::pinned(Some(sid.cert_der.clone()), Some(&cid)).unwrap();
        let s = c
            .connect("127.0.0.1", TcpStream::connect(addr).unwrap())
            .unwrap();
        assert_eq!(s.peer_certificate().as_deref(), Some(&sid.cert_der[..]));
        let mut r = BufReader::new(s.try_clone_stream().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), fingerprint(&cid.cert_der));
        let mut w = s.try_clone_stream().unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
        let mut got = vec![0u8; payload.len()];
        r.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == payload, "echo differs");
        s.shutdown_write().unwrap();

        // The next connection of the same client resumes its session, and the server still
        // knows its certificate.
        let s = c
            .connect("127.0.0.1", TcpStream::connect(addr).unwrap())
            .unwrap();
        assert!(s.resumed(), "the second handshake resumes");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), fingerprint(&cid.cert_der));

        // No client certificate: still served, as an anonymous client.
        let c = Client::pinned(Some(sid.cert_der.clone()), None).unwrap();
        let s = c
            .connect("127.0.0.1", TcpStream::connect(addr).unwrap())
            .unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "none");

        // Pinned to another certificate: refused, naming both fingerprints.
        let e = Client::pinned(Some(cid.cert_der.clone()), None)
            .unwrap()
            .connect("127.0.0.1", TcpStream::connect(addr).unwrap())
            .err()
            .expect("a pinned mismatch fails");
        let msg = e.to_string();
        assert!(msg.contains("certificate mismatch"), "{msg}");
        assert!(msg.contains(&fingerprint(&sid.cert_der)), "{msg}");

        // First contact (nothing pinned): the certificate is read back.
        let s = Client::pinned(None, None)
            .unwrap()
            .connect("127.0.0.1", TcpStream::connect(addr).unwrap())
            .unwrap();
        assert_eq!(s.peer_certificate().unwrap(), sid.cert_der);

        // The system-roots client does not trust a self-signed server.
        if let Ok(sys) = Client::system() {
            let e = sys
                .connect("127.0.0.1", TcpStream::connect(addr).unwrap())
                .err()
                .expect("self-signed is not trusted by the system roots");
            assert!(e.to_string().contains("TLS certificate rejected"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn half_a_pair_is_an_error() {
        let dir = std::env::temp_dir().join(format!("bivy-tls-half-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.crt"), "x").unwrap();
        let e = Identity::load_or_make(&dir.join("x.crt"), &dir.join("x.key"), CertKind::Client)
            .unwrap_err();
        assert!(e.to_string().contains("x.key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
