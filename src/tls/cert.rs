//! Key pairs and self-signed certificates: the daemon's `server.crt`/`server.key` and the
//! client's `client.crt`/`client.key`, made on first use as LXD makes them (ECDSA P-384,
//! SHA-384 signature, ten years, `O=linuxcontainers.org, CN=user@host`).
//!
//! The cryptography is ring's (key generation, signing, SHA-256); this file only lays out the
//! X.509 structure in DER, and reads back the few fields the CLI shows (common name, validity).

use std::io;
use std::net::IpAddr;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_ASN1_SIGNING};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    Client,
    Server,
}

/// A certificate chain and its private key, loaded or made.
pub struct Identity {
    /// The end-entity certificate, DER.
    pub cert_der: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &fingerprint(&self.cert_der))
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Load the PEM pair at `crt`/`key`, or make a new pair there when neither file exists
    /// (the key 0600, the certificate 0644; each written atomically, the key first). A pair
    /// the user put there is used as it is: RSA, ECDSA and Ed25519 keys all work.
    pub fn load_or_make(crt: &Path, key: &Path, kind: CertKind) -> io::Result<Identity> {
        match (crt.exists(), key.exists()) {
            (true, true) => Identity::load(crt, key),
            (false, false) => {
                let (cert_pem, key_pem) = generate(kind)?;
                crate::util::fs::atomic_write(key, key_pem.as_bytes())
                    .map_err(|e| with_path(e, key))?;
                crate::util::fs::atomic_write(crt, cert_pem.as_bytes())
                    .map_err(|e| with_path(e, crt))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(crt, std::fs::Permissions::from_mode(0o644))?;
                Identity::load(crt, key)
            }
            (true, false) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} exists but its key {} does not",
                    crt.display(),
                    key.display()
                ),
            )),
            (false, true) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} exists but its certificate {} does not",
                    key.display(),
                    crt.display()
                ),
            )),
        }
    }

    /// Load a PEM certificate chain and key.
    pub fn load(crt: &Path, key: &Path) -> io::Result<Identity> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt)
            .map_err(|e| pem_error(e, crt))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(e, crt))?;
        let Some(first) = chain.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no certificate in it", crt.display()),
            ));
        };
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(e, key))?;
        Ok(Identity {
            cert_der: first.to_vec(),
            chain,
            key,
        })
    }

    /// The end-entity certificate in PEM.
    pub fn cert_pem(&self) -> String {
        der_to_pem(&self.cert_der)
    }

    pub(super) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(super) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn with_path(e: io::Error, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

fn pem_error(e: rustls::pki_types::pem::Error, p: &Path) -> io::Error {
    match e {
        rustls::pki_types::pem::Error::Io(e) => with_path(e, p),
        e => io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display())),
    }
}

/// The SHA-256 fingerprint of a DER certificate, lowercase hex (LXD's form).
pub fn fingerprint(cert_der: &[u8]) -> String {
    crate::util::hex(ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref())
}

/// A DER certificate in PEM armour.
pub fn der_to_pem(der: &[u8]) -> String {
    pem("CERTIFICATE", der)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = crate::util::base64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The first `CERTIFICATE` section of a PEM text, DER.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// A certificate's subject common name and validity (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Read the subject CN and validity of a DER certificate; `None` when it does not parse.
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (cert, _) = der::read(der, 0x30)?;
    let (tbs, _) = der::read(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der::read(rest, 0xa0)?.1;
    }
    let (_serial, rest) = der::read(rest, 0x02)?;
    let (_alg, rest) = der::read(rest, 0x30)?;
    let (_issuer, rest) = der::read(rest, 0x30)?;
    let (validity, rest) = der::read(rest, 0x30)?;
    let (subject, _) = der::read(rest, 0x30)?;
    let (nb, v) = der::read_any(validity)?;
    let (na, _) = der::read_any(v)?;
    Some(CertInfo {
        common_name: der::common_name(subject).unwrap_or_default(),
        not_before: der::parse_time(nb.0, nb.1)?,
        not_after: der::parse_time(na.0, na.1)?,
    })
}

/// Validity of a new certificate: LXD's ten years.
const VALID_DAYS: i64 = 3650;

/// A new ECDSA P-384 key (PKCS#8 PEM) and its self-signed certificate (PEM).
pub fn generate(kind: CertKind) -> io::Result<(String, String)> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let user = crate::util::passwd::user_name(nix::unistd::getuid().as_raw())
        .ok()
        .flatten()
        .unwrap_or_else(|| "root".into());
    let ips: Vec<IpAddr> = match kind {
        CertKind::Server => vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().expect("::1")],
        CertKind::Client => Vec::new(),
    };
    generate_for(kind, &format!("{user}@{host}"), &host, &ips)
}

/// [`generate`] with the names given.
pub fn generate_for(
    kind: CertKind,
    common_name: &str,
    dns: &str,
    ips: &[IpAddr],
) -> io::Result<(String, String)> {
    let now = crate::util::time::now_secs();
    generate_valid(
        kind,
        common_name,
        dns,
        ips,
        (now - 60, now + VALID_DAYS * 86400),
    )
}

/// [`generate_for`] valid from `not_before` to `not_after` (Unix seconds).
pub fn generate_valid(
    kind: CertKind,
    common_name: &str,
    dns: &str,
    ips: &[IpAddr],
    (not_before, not_after): (i64, i64),
) -> io::Result<(String, String)> {
    let rng = SystemRandom::new();
    let fail = |what: &str| io::Error::other(format!("making a key pair: {what}"));
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng)
        .map_err(|_| fail("key generation failed"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| fail(&e.to_string()))?;
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&rng, &mut serial).map_err(|_| fail("no randomness"))?;
    serial[0] &= 0x7f;
    let tbs = der::tbs_certificate(&der::TbsFields {
        serial: &serial,
        common_name,
        not_before,
        not_after,
        public_key: pair.public_key().as_ref(),
        kind,
        dns,
        ips,
    });
    let sig = pair.sign(&rng, &tbs).map_err(|_| fail("signing failed"))?;
    let cert = der::certificate(&tbs, sig.as_ref());
    Ok((der_to_pem(&cert), pem("PRIVATE KEY", pkcs8.as_ref())))
}

/// The DER (X.509) layout, written and read. Only what the certificates above need.
mod der {
    use super::CertKind;
    use std::net::IpAddr;

    const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const OID_SECP384R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const OID_ORG: &[u8] = &[0x55, 0x04, 0x0a];
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    const OID_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

    /// Tag, length (short or long form), content.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn oid(o: &[u8]) -> Vec<u8> {
        tlv(0x06, o)
    }

    /// A non-negative INTEGER from big-endian bytes.
    fn uint(b: &[u8]) -> Vec<u8> {
        let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
        let mut v = Vec::with_capacity(b.len() + 1);
        if b.first().is_none_or(|x| x & 0x80 != 0) {
            v.push(0);
        }
        v.extend_from_slice(&b);
        tlv(0x02, &v)
    }

    /// UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
    fn time(secs: i64) -> Vec<u8> {
        let days = secs.div_euclid(86400);
        let rem = secs.rem_euclid(86400);
        let (y, m, d) = crate::util::time::civil_from_days(days);
        let hms = format!(
            "{m:02}{d:02}{:02}{:02}{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        );
        if (1950..2050).contains(&y) {
            tlv(0x17, format!("{:02}{hms}", y % 100).as_bytes())
        } else {
            tlv(0x18, format!("{y:04}{hms}").as_bytes())
        }
    }

    fn name(common_name: &str) -> Vec<u8> {
        let attr = |o: &[u8], v: &str| tlv(0x31, &seq(&[&oid(o), &tlv(0x0c, v.as_bytes())]));
        seq(&[
            &attr(OID_ORG, "linuxcontainers.org"),
            &attr(OID_CN, common_name),
        ])
    }

    fn extension(id: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
        let crit = if critical {
            tlv(0x01, &[0xff])
        } else {
            Vec::new()
        };
        seq(&[&oid(id), &crit, &tlv(0x04, value)])
    }

    pub struct TbsFields<'a> {
        pub serial: &'a [u8],
        pub common_name: &'a str,
        pub not_before: i64,
        pub not_after: i64,
        pub public_key: &'a [u8],
        pub kind: CertKind,
        pub dns: &'a str,
        pub ips: &'a [IpAddr],
    }

    pub fn tbs_certificate(f: &TbsFields) -> Vec<u8> {
        let alg = seq(&[&oid(OID_ECDSA_SHA384)]);
        let spki = seq(&[
            &seq(&[&oid(OID_EC_PUBLIC_KEY), &oid(OID_SECP384R1)]),
            &tlv(0x03, &[&[0u8][..], f.public_key].concat()),
        ]);
        // digitalSignature | keyEncipherment: bits 0 and 2, five unused bits.
        let key_usage = extension(OID_KEY_USAGE, true, &tlv(0x03, &[0x05, 0xa0]));
        let eku = match f.kind {
            CertKind::Server => OID_SERVER_AUTH,
            CertKind::Client => OID_CLIENT_AUTH,
        };
        let ext_key_usage = extension(OID_EXT_KEY_USAGE, false, &seq(&[&oid(eku)]));
        let basic = extension(OID_BASIC_CONSTRAINTS, true, &seq(&[]));
        let mut names = vec![tlv(0x82, f.dns.as_bytes())];
        for ip in f.ips {
            names.push(match ip {
                IpAddr::V4(a) => tlv(0x87, &a.octets()),
                IpAddr::V6(a) => tlv(0x87, &a.octets()),
            });
        }
        let san = extension(OID_SUBJECT_ALT_NAME, false, &tlv(0x30, &names.concat()));
        let exts = tlv(0xa3, &seq(&[&key_usage, &ext_key_usage, &basic, &san]));
        seq(&[
            &tlv(0xa0, &uint(&[2])),
            &uint(f.serial),
            &alg,
            &name(f.common_name),
            &seq(&[&time(f.not_before), &time(f.not_after)]),
            &name(f.common_name),
            &spki,
            &exts,
        ])
    }

    pub fn certificate(tbs: &[u8], sig: &[u8]) -> Vec<u8> {
        let alg = seq(&[&oid(OID_ECDSA_SHA384)]);
        let bits = tlv(0x03, &[&[0u8][..], sig].concat());
        seq(&[tbs, &alg, &bits])
    }

    /// One element of any tag: ((tag, content), rest).
    #[allow(clippy::type_complexity)]
    pub fn read_any(b: &[u8]) -> Option<((u8, &[u8]), &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = len << 8 | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        Some(((tag, b.get(hdr..end)?), &b[end..]))
    }

    /// One element of tag `tag`: (content, rest).
    pub fn read(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let ((t, c), rest) = read_any(b)?;
        (t == tag).then_some((c, rest))
    }

    /// The first CN attribute of a Name.
    pub fn common_name(mut name: &[u8]) -> Option<String> {
        while !name.is_empty() {
            let (set, rest) = read(name, 0x31)?;
            name = rest;
            let (atv, _) = read(set, 0x30)?;
            let (o, v) = read(atv, 0x06)?;
            if o == OID_CN {
                let ((_, s), _) = read_any(v)?;
                return Some(String::from_utf8_lossy(s).into_owned());
            }
        }
        None
    }

    /// UTCTime (0x17) or GeneralizedTime (0x18) in UTC, to Unix seconds.
    pub fn parse_time(tag: u8, s: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(s).ok()?.strip_suffix('Z')?;
        let (y, rest) = match tag {
            0x17 => {
                let yy: i64 = s.get(..2)?.parse().ok()?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
            }
            0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        if rest.len() != 10 || !rest.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let n = |i: usize| rest[i..i + 2].parse::<u32>().ok();
        let days = crate::util::time::days_from_civil(y, n(0)?, n(2)?);
        Some(days * 86400 + i64::from(n(4)?) * 3600 + i64::from(n(6)?) * 60 + i64::from(n(8)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_parses_and_verifies() {
        let (crt, key) = generate_for(
            CertKind::Server,
            "root@box",
            "box",
            &[IpAddr::from([127, 0, 0, 1])],
        )
        .unwrap();
        let der = pem_to_der(&crt).unwrap();
        // The signature is the certificate's own key's over its TBS part.
        let (cert, _) = der::read(&der, 0x30).unwrap();
        let ((_, tbs_content), after_tbs) = der::read_any(cert).unwrap();
        let tbs = &cert[..cert.len() - after_tbs.len()];
        assert!(tbs.len() > tbs_content.len());
        let (_alg, rest) = der::read(after_tbs, 0x30).unwrap();
        let (sig, _) = der::read(rest, 0x03).unwrap();
        let spki_key = {
            let mut r = tbs_content;
            for tag in [0xa0, 0x02, 0x30, 0x30, 0x30, 0x30] {
                r = der::read(r, tag).unwrap().1;
            }
            let (spki, _) = der::read(r, 0x30).unwrap();
            let (_, rest) = der::read(spki, 0x30).unwrap();
            der::read(rest, 0x03).unwrap().0[1..].to_vec()
        };
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P384_SHA384_ASN1,
            &spki_key,
        )
        .verify(tbs, &sig[1..])
        .expect("self-signature verifies");
        let info = cert_info(&der).unwrap();
        assert_eq!(info.common_name, "root@box");
        let now = crate::util::time::now_secs();
        assert!(
            info.not_before <= now && now - info.not_before < 120,
            "{info:?}"
        );
        assert!(
            (info.not_after - now - VALID_DAYS * 86400).abs() < 120,
            "{info:?}"
        );
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(PrivateKeyDer::from_pem_slice(key.as_bytes()).is_ok());
        assert_eq!(fingerprint(&der).len(), 64);
    }

    #[test]
    fn lxd_certificate_fields_are_read() {
        // The server certificate LXD 5.0.2 made on this kind of machine (reference/lxd-wire).
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB+TCCAX6gAwIBAgIRAMogvM8jPygb9wnep7MzNHswCgYIKoZIzj0EAwMwMDEc\nMBoGA1UEChMTbGludXhjb250YWluZXJzLm9yZzEQMA4GA1UEAwwHcm9vdEB2bTAe\nFw0yNjExMjEyMDI0NTdaFw0zNjExMTgyMDI0NTdaMDAxHDAaBgNVBAoTE2xpbnV4\nY29udGFpbmVycy5vcmcxEDAOBgNVBAMMB3Jvb3RAdm0wdjAQBgcqhkjOPQIBBgUr\ngQQAIgNiAARchxeFfTOTIYQ5HF0P6tc//3RNFxyZ0Fcw+ZXZPeWQ97n/6jQfgg3p\nL+fYdxdfDJFMj7/yxY8f5NEP4XoS8DHO5FWZyaRNOd1JxCUiZ95x10qv3gMOCH0D\noNJq1TyG/2CjXDBaMA4GA1UdDwEB/wQEAwIFoDATBgNVHSUEDDAKBggrBgEFBQcD\nATAMBgNVHRMBAf8EAjAAMCUGA1UdEQQeMByCAnZthwR/AAABhxAAAAAAAAAAAAAA\nAAAAAAABMAoGCCqGSM49BAMDA2kAMGYCMQDyCk6aDYqCjjmuJDgHHp2sFFD2oL7B\n1oICyFj//tzTl1X4oyqTD7TA7LWLE6AdYI4CMQDuphIq9NShiFwpyKtkTvOmysH2\n8WXhKKdPXddWKEWTKZkXlbKg8PO0Ecq4OtILkjs=\n-----END CERTIFICATE-----\n";
        let der = pem_to_der(pem).unwrap();
        assert_eq!(
            fingerprint(&der),
            "51685f8b522935e0c06d214e06a2be4e2315db4a220ced1d6677128435d9bbf6"
        );
        let info = cert_info(&der).unwrap();
        assert_eq!(info.common_name, "root@vm");
        // 2026-11-21T20:24:57Z .. 2036-11-18T20:24:57Z
        assert_eq!(info.not_before, 1_795_292_697);
        assert_eq!(info.not_after, 2_110_652_697);
        assert_eq!(der_to_pem(&der), pem);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(cert_info(b""), None);
        assert_eq!(cert_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(cert_info(&[0x30, 0x03, 0x02, 0x01]), None);
        assert_eq!(pem_to_der("hello"), None);
    }
}
