//! The trust store: which client certificates the HTTPS listener serves as trusted, how a
//! client gets in (the trust password, single-use trust tokens), and their expiry.
//!
//! Certificates live in the state document (`Data::certificates`, keyed by SHA-256
//! fingerprint), so every change is one atomic replace and survives `kill -9`. The password is
//! kept only as a salted PBKDF2-HMAC-SHA256 hash under `core.trust_password`. Tokens are token
//! operations (`class: token`) holding the secret, as in LXD: they do not outlive the daemon.

use std::num::NonZeroU32;
use std::sync::Arc;

use super::db::CertRecord;
use super::operations::{Class, Op};
use super::{Ctx, Error};
use crate::api::status;

/// The server key holding the password's hash.
pub const PASSWORD_KEY: &str = "core.trust_password";
/// The server key bounding a token's life.
pub const TOKEN_EXPIRY_KEY: &str = "core.remote_token_expiry";

const PBKDF2_ROUNDS: u32 = 100_000;
const HASH_PREFIX: &str = "pbkdf2-sha256";

/// `pbkdf2-sha256$ROUNDS$SALT$HASH` (hex) of a new password.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .expect("system randomness");
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ROUNDS).expect("nonzero"),
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "{HASH_PREFIX}${PBKDF2_ROUNDS}${}${}",
        crate::util::hex(&salt),
        crate::util::hex(&out)
    )
}

/// Whether `password` matches a hash made by [`hash_password`] (in constant time).
pub fn password_matches(stored: &str, password: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [HASH_PREFIX, rounds, salt, hash] = parts[..] else {
        return false;
    };
    let (Some(rounds), Some(salt), Some(hash)) = (
        rounds.parse::<u32>().ok().and_then(NonZeroU32::new),
        unhex(salt),
        unhex(hash),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a client certificate with this fingerprint is trusted: in the store, and not
/// restricted (a record an older bivy stored: see [`refuse_restricted`]).
pub fn is_trusted(ctx: &Ctx, fingerprint: &str) -> bool {
    ctx.db
        .lock()
        .expect("db lock")
        .data
        .certificates
        .get(fingerprint)
        .is_some_and(|c| !c.restricted)
}

/// A restricted certificate (LXD's: confined to its `projects`, never an admin) is refused:
/// bivy has no per-project access checks, so a restricted client would be an admin.
fn refuse_restricted(restricted: bool) -> Result<(), Error> {
    if restricted {
        return Err(Error::not_yet(
            "restricted certificates (bivy checks no per-project access: a restricted client would have every right)",
        ));
    }
    Ok(())
}

/// Refuse a certificate outside its validity now, as LXD's `certificateValidate` does (and a
/// presented one is not trusted then either: see [`valid_now`]).
pub fn check_validity(der: &[u8]) -> Result<(), Error> {
    let info = crate::tls::cert_info(der)
        .ok_or_else(|| Error::Invalid("Invalid certificate: not a DER X.509 certificate".into()))?;
    let now = crate::util::time::now_secs();
    if now < info.not_before {
        return Err(Error::Invalid(
            "The provided certificate isn't valid yet".into(),
        ));
    }
    if now > info.not_after {
        return Err(Error::Invalid("The provided certificate is expired".into()));
    }
    Ok(())
}

/// Whether a presented certificate is within its validity now (LXD's `CheckTrustState`
/// trusts no certificate outside it).
pub fn valid_now(der: &[u8]) -> bool {
    check_validity(der).is_ok()
}

/// A certificate to add.
#[derive(Debug, Clone)]
pub struct NewCert {
    pub name: String,
    pub kind: String,
    pub restricted: bool,
    pub projects: Vec<String>,
    pub der: Vec<u8>,
}

/// `client` (the default) or `metrics`.
pub fn check_kind(kind: &str) -> Result<&'static str, Error> {
    match kind {
        "" | "client" => Ok("client"),
        "metrics" => Err(Error::not_yet(
            "metrics certificates (bivy has no /1.0/metrics)",
        )),
        other => Err(Error::Invalid(format!(
            "Unknown certificate type {other:?}"
        ))),
    }
}

/// Add a certificate to the trust store; its fingerprint.
pub fn add(ctx: &Ctx, c: NewCert) -> Result<String, Error> {
    let kind = check_kind(&c.kind)?;
    refuse_restricted(c.restricted)?;
    check_validity(&c.der)?;
    let info = crate::tls::cert_info(&c.der)
        .ok_or_else(|| Error::Invalid("Invalid certificate: not a DER X.509 certificate".into()))?;
    let fp = crate::tls::fingerprint(&c.der);
    let name = if c.name.is_empty() {
        info.common_name
    } else {
        c.name
    };
    let mut db = ctx.db.lock().expect("db lock");
    if db.data.certificates.contains_key(&fp) {
        return Err(Error::Conflict("Certificate already in trust store".into()));
    }
    let rec = CertRecord {
        name,
        kind: kind.into(),
        restricted: c.restricted,
        projects: c.projects,
        certificate: crate::tls::der_to_pem(&c.der),
    };
    db.update(|d| d.certificates.insert(fp.clone(), rec))
        .map_err(|e| Error::Host(format!("saving the trust store: {e}")))?;
    Ok(fp)
}

/// The certificate whose fingerprint starts with `prefix` (unique).
pub fn find(ctx: &Ctx, prefix: &str) -> Result<(String, CertRecord), Error> {
    let db = ctx.db.lock().expect("db lock");
    let mut hits = db
        .data
        .certificates
        .iter()
        .filter(|(fp, _)| !prefix.is_empty() && fp.starts_with(&prefix.to_ascii_lowercase()));
    match (hits.next(), hits.next()) {
        (Some((fp, rec)), None) => Ok((fp.clone(), rec.clone())),
        (Some(_), Some(_)) => Err(Error::Invalid(format!(
            "More than one certificate matches {prefix:?}"
        ))),
        (None, _) => Err(Error::NotFound("Certificate not found".into())),
    }
}

/// Every trusted certificate, by fingerprint.
pub fn all(ctx: &Ctx) -> Vec<(String, CertRecord)> {
    let db = ctx.db.lock().expect("db lock");
    db.data
        .certificates
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Replace the writable fields of a certificate: name, type, restricted, projects. A new
/// certificate body is refused (LXD refuses changing it too, short of self-renewal).
pub fn update(ctx: &Ctx, fp: &str, new: CertRecord) -> Result<(), Error> {
    let kind = check_kind(&new.kind)?;
    refuse_restricted(new.restricted)?;
    let mut db = ctx.db.lock().expect("db lock");
    let Some(old) = db.data.certificates.get(fp).cloned() else {
        return Err(Error::NotFound("Certificate not found".into()));
    };
    if !new.certificate.is_empty()
        && crate::tls::pem_to_der(&new.certificate) != crate::tls::pem_to_der(&old.certificate)
    {
        return Err(Error::Invalid(
            "Changing the certificate itself is not supported: add the new one and remove the old"
                .into(),
        ));
    }
    let rec = CertRecord {
        name: new.name,
        kind: kind.into(),
        restricted: new.restricted,
        projects: new.projects,
        certificate: old.certificate,
    };
    db.update(|d| d.certificates.insert(fp.to_string(), rec))
        .map_err(|e| Error::Host(format!("saving the trust store: {e}")))?;
    Ok(())
}

/// Remove a certificate from the trust store.
pub fn remove(ctx: &Ctx, fp: &str) -> Result<(), Error> {
    let mut db = ctx.db.lock().expect("db lock");
    if !db.data.certificates.contains_key(fp) {
        return Err(Error::NotFound("Certificate not found".into()));
    }
    db.update(|d| d.certificates.remove(fp))
        .map_err(|e| Error::Host(format!("saving the trust store: {e}")))?;
    Ok(())
}

/// Seconds a `core.remote_token_expiry` value stands for: space-separated `<n><unit>` with LXD's
/// units (`M` minutes, `H` hours, `d` days, `w` weeks, `m` months of 30 days, `y` years of 365)
/// and bivy's `S` seconds.
pub fn parse_expiry(s: &str) -> Result<u64, String> {
    let mut total: u64 = 0;
    for part in s.split_whitespace() {
        let unit_at = part
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("missing unit in {part:?}"))?;
        let (n, unit) = part.split_at(unit_at);
        let n: u64 = n.parse().map_err(|_| format!("bad number in {part:?}"))?;
        let secs = match unit {
            "S" => 1,
            "M" => 60,
            "H" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "m" => 30 * 86_400,
            "y" => 365 * 86_400,
            _ => return Err(format!("unknown unit in {part:?} (S, M, H, d, w, m or y)")),
        };
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or("expiry too large")?;
    }
    if total == 0 {
        return Err("an expiry of zero".into());
    }
    Ok(total)
}

/// Make a trust token operation for a client to come: `request` is the `POST /1.0/certificates`
/// body (its name is the new certificate's), `fingerprint` and `addresses` the server's.
pub fn create_token(
    ctx: &Ctx,
    request: serde_json::Value,
    fingerprint: &str,
    addresses: Vec<String>,
) -> Result<Arc<Op>, Error> {
    let expiry = {
        let db = ctx.db.lock().expect("db lock");
        db.data.config.get(TOKEN_EXPIRY_KEY).cloned()
    };
    let mut meta = serde_json::json!({
        "request": request,
        "secret": super::operations::secret(),
        "fingerprint": fingerprint,
        "addresses": addresses,
    });
    if let Some(e) = expiry.filter(|e| !e.is_empty()) {
        let secs = parse_expiry(&e).map_err(|why| {
            Error::config(
                TOKEN_EXPIRY_KEY,
                format!("Invalid {TOKEN_EXPIRY_KEY}: {why}"),
            )
        })?;
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
        meta["expiresAt"] = crate::util::time::rfc3339(at).into();
    }
    let op = ctx.ops.create(
        Class::Token,
        "Certificate add token",
        Default::default(),
        Some(meta),
        vec![],
    );
    op.set_status(status::RUNNING, String::new());
    let weak = Arc::downgrade(&op);
    op.set_cancel(Box::new(move || {
        if let Some(o) = weak.upgrade() {
            o.set_status(status::CANCELLED, String::new());
        }
    }));
    Ok(op)
}

/// Use up the token with this secret: its request (the name and settings of the certificate
/// to add). An expired token ends, and is refused like an unknown one.
pub fn take_token(ctx: &Ctx, secret: &str) -> Option<serde_json::Value> {
    for op in ctx.ops.list() {
        if op.class != Class::Token || op.is_final() {
            continue;
        }
        let api = op.to_api();
        let Some(meta) = api.metadata.as_ref() else {
            continue;
        };
        // Image download secrets are token operations too; only trust tokens have a request.
        let (Some(request), Some(mine)) = (
            meta.get("request"),
            meta.get("secret").and_then(|s| s.as_str()),
        ) else {
            continue;
        };
        if !crate::util::same_secret(mine, secret) {
            continue;
        }
        let expired = meta
            .get("expiresAt")
            .and_then(|e| e.as_str())
            .and_then(crate::util::time::parse)
            .is_some_and(|at| at <= std::time::SystemTime::now());
        if expired {
            op.set_status(status::CANCELLED, "Trust token expired".into());
            return None;
        }
        op.set_status(status::SUCCESS, String::new());
        return Some(request.clone());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_outside_their_validity_are_refused() {
        use crate::tls::cert::generate_valid;
        use crate::tls::{pem_to_der, CertKind};
        let now = crate::util::time::now_secs();
        let der = |from: i64, to: i64| {
            let (pem, _) =
                generate_valid(CertKind::Client, "c", "c", &[], (from, to)).expect("cert");
            pem_to_der(&pem).expect("der")
        };
        assert!(check_validity(&der(now - 60, now + 3600)).is_ok());
        let e = check_validity(&der(now - 7200, now - 3600)).unwrap_err();
        assert!(e.message().contains("expired"), "{e:?}");
        let e = check_validity(&der(now + 3600, now + 7200)).unwrap_err();
        assert!(e.message().contains("isn't valid yet"), "{e:?}");
        assert!(!valid_now(&der(now - 7200, now - 3600)));
        assert!(refuse_restricted(true).is_err() && refuse_restricted(false).is_ok());
    }

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("pbkdf2-sha256$100000$"), "{h}");
        assert!(!h.contains("s3cret"));
        assert!(password_matches(&h, "s3cret"));
        assert!(!password_matches(&h, "s3cret "));
        assert!(!password_matches(&h, ""));
        assert_ne!(h, hash_password("s3cret"), "salted");
        for bad in [
            "",
            "true",
            "s3cret",
            "pbkdf2-sha256$0$00$00",
            "pbkdf2-sha256$1$zz$00",
        ] {
            assert!(!password_matches(bad, "s3cret"), "{bad}");
        }
    }

    #[test]
    fn expiry_units() {
        assert_eq!(parse_expiry("1H"), Ok(3600));
        assert_eq!(parse_expiry("1d 2H"), Ok(86_400 + 7200));
        assert_eq!(parse_expiry("5S"), Ok(5));
        assert_eq!(parse_expiry("2w"), Ok(14 * 86_400));
        for bad in ["", "H", "1", "1x", "-1H", "0M", "99999999999999999999y"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_string_is_lxds() {
        // A token as LXD 5.0 prints it (base64 of the JSON), decoded and re-encoded.
        let t = crate::api::CertificateAddToken {
            client_name: "c".into(),
            fingerprint: "ab".into(),
            addresses: vec!["127.0.0.1:8443".into()],
            secret: "s".into(),
            expires_at: crate::api::NO_EXPIRY.into(),
        };
        let enc = t.encode();
        let json = String::from_utf8(crate::util::base64::decode(&enc).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"client_name":"c","fingerprint":"ab","addresses":["127.0.0.1:8443"],"secret":"s","expires_at":"0001-01-01T00:00:00Z"}"#
        );
        assert_eq!(crate::api::CertificateAddToken::decode(&enc), Ok(t));
        assert!(crate::api::CertificateAddToken::decode("not base64!").is_err());
        assert!(
            crate::api::CertificateAddToken::decode(&crate::util::base64::encode(b"[1]")).is_err()
        );
    }
}
