//! `/1.0/certificates`: the trust store (list, add, show, edit, delete) and trust tokens, and
//! how an untrusted HTTPS client adds itself (the trust password or a token).

use serde::Deserialize;

use super::super::access::Caller;
use super::super::https;
use super::super::request::{json, recursion};
use super::super::response::{self, Error, Result};
use crate::api::{Certificate, CertificateAddToken as Token};
use crate::http::{Request, Response};
use crate::instance::db::CertRecord;
use crate::instance::trust::{self, NewCert};
use crate::instance::Ctx as Daemon;

fn render(fp: &str, rec: &CertRecord) -> Certificate {
    Certificate {
        name: rec.name.clone(),
        kind: rec.kind.clone(),
        restricted: rec.restricted,
        projects: rec.projects.clone(),
        certificate: rec.certificate.clone(),
        fingerprint: fp.to_string(),
    }
}

fn url(fp: &str) -> String {
    format!("/1.0/certificates/{fp}")
}

pub fn list(d: &Daemon, req: &Request) -> Result<Response> {
    let all = trust::all(d);
    if recursion(req) > 0 {
        let v: Vec<Certificate> = all.iter().map(|(fp, r)| render(fp, r)).collect();
        Ok(response::sync(&v))
    } else {
        let v: Vec<String> = all.iter().map(|(fp, _)| url(fp)).collect();
        Ok(response::sync(&v))
    }
}

/// LXD's `api.CertificatesPost` (with 5.0's `password` and newer clients' `trust_token`).
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Post {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    restricted: bool,
    projects: Option<Vec<String>>,
    /// Base64 DER, no PEM armour (PEM is taken too).
    certificate: String,
    password: String,
    token: bool,
    trust_token: String,
}

/// The DER of a `certificate` field: base64 of DER (LXD's form), or PEM.
fn decode_certificate(s: &str) -> Result<Vec<u8>> {
    let bad = || Error::BadRequest("Invalid certificate material".into());
    if s.contains("-----BEGIN") {
        return crate::tls::pem_to_der(s).ok_or_else(bad);
    }
    let compact: String = s.split_whitespace().collect();
    crate::util::base64::decode(&compact).ok_or_else(bad)
}

pub fn create(d: &Daemon, req: &mut Request, caller: &Caller) -> Result<Response> {
    let body: Post = json(req)?;
    let peer_cert = match caller {
        Caller::Remote { cert, .. } => cert.clone(),
        Caller::Local => None,
    };
    if caller.trusted(d) {
        if body.token {
            return make_token(d, &body);
        }
        let der = if !body.certificate.is_empty() {
            decode_certificate(&body.certificate)?
        } else {
            peer_cert
                .ok_or_else(|| Error::BadRequest("Can't use TLS data on non-TLS link".into()))?
        };
        return add(d, body, der);
    }
    // An untrusted HTTPS client: only with the password or a token, and slowed down after
    // repeated failures from its address. Every failure gets the same answer.
    let Caller::Remote { addr, .. } = caller else {
        return Err(Error::Forbidden("not authorized".into()));
    };
    let h = https::get();
    h.slow_down(*addr);
    let refused = || {
        h.login_result(*addr, false);
        Err(Error::Forbidden("not authorized".into()))
    };
    let secret = if !body.trust_token.is_empty() {
        Token::decode(&body.trust_token).ok().map(|t| t.secret)
    } else {
        Token::decode(&body.password).ok().map(|t| t.secret)
    };
    // A token adds the certificate the client presents, whatever the body says (LXD rebuilds
    // the request from the token's own data): a token must not add another's certificate.
    let der = if secret.is_some() {
        match peer_cert {
            Some(c) => c,
            None => return refused(),
        }
    } else if !body.certificate.is_empty() {
        decode_certificate(&body.certificate)?
    } else if let Some(c) = peer_cert {
        c
    } else {
        return refused();
    };
    let mut body = body;
    if let Some(secret) = secret {
        let Some(request) = trust::take_token(d, &secret) else {
            return refused();
        };
        // The certificate gets the name (and settings) the token was made with.
        if let Some(n) = request.get("name").and_then(|n| n.as_str()) {
            body.name = n.to_string();
        }
        body.restricted = request.get("restricted").and_then(|v| v.as_bool()) == Some(true);
        body.kind = request
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        body.projects = request
            .get("projects")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
    } else {
        let stored =
            d.db.lock()
                .expect("db lock")
                .data
                .config
                .get(trust::PASSWORD_KEY)
                .cloned()
                .unwrap_or_default();
        if body.password.is_empty()
            || stored.is_empty()
            || !trust::password_matches(&stored, &body.password)
        {
            return refused();
        }
    }
    h.login_result(*addr, true);
    add(d, body, der)
}

fn add(d: &Daemon, body: Post, der: Vec<u8>) -> Result<Response> {
    let fp = trust::add(
        d,
        NewCert {
            name: body.name,
            kind: body.kind,
            restricted: body.restricted,
            projects: body.projects.unwrap_or_default(),
            der,
        },
    )?;
    d.events
        .lifecycle("certificate-created", &url(&fp), serde_json::json!({}));
    Ok(response::created(&url(&fp)))
}

fn make_token(d: &Daemon, body: &Post) -> Result<Response> {
    if body.restricted {
        return Err(Error::not_yet(
            "restricted certificates (bivy checks no per-project access: a restricted client would have every right)",
        ));
    }
    if body.name.is_empty() {
        return Err(Error::BadRequest(
            "A name is required for a trust token".into(),
        ));
    }
    let h = https::get();
    // Listening on a wildcard address of a host whose only addresses are left out of the list
    // (loopback): the token names none, as LXD's does; the client is told where to connect.
    if h.bound().is_none() {
        return Err(Error::BadRequest(
            "Can't issue token when server isn't listening on network (set core.https_address)"
                .into(),
        ));
    }
    let request = serde_json::json!({
        "name": body.name,
        "type": if body.kind.is_empty() { "client" } else { body.kind.as_str() },
        "restricted": body.restricted,
        "projects": body.projects.clone().unwrap_or_default(),
        "certificate": "",
        "password": "",
        "token": true,
    });
    let id = h
        .identity()
        .ok_or_else(|| Error::Internal("the server certificate could not be loaded".into()))?;
    let fp = crate::tls::fingerprint(&id.cert_der);
    let op = trust::create_token(d, request, &fp, h.addresses())?;
    Ok(response::operation(&op.to_api()))
}

pub fn get(d: &Daemon, fp: &str) -> Result<Response> {
    let (fp, rec) = trust::find(d, fp)?;
    let etag = response::etag(&render(&fp, &rec));
    Ok(response::sync_etag(&render(&fp, &rec), Some(etag)))
}

/// LXD's `api.CertificatePut`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Put {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    restricted: Option<bool>,
    projects: Option<Vec<String>>,
    certificate: Option<String>,
}

pub fn put(d: &Daemon, req: &mut Request, fp: &str, patch: bool) -> Result<Response> {
    let (fp, old) = trust::find(d, fp)?;
    response::check_etag(req.header("If-Match"), &response::etag(&render(&fp, &old)))?;
    let body: Put = json(req)?;
    let pick = |new: Option<String>, old: &str| match (new, patch) {
        (Some(v), _) => v,
        (None, true) => old.to_string(),
        (None, false) => String::new(),
    };
    let certificate = match body.certificate.filter(|c| !c.is_empty()) {
        Some(c) => crate::tls::der_to_pem(&decode_certificate(&c)?),
        None => String::new(),
    };
    let next = CertRecord {
        name: pick(body.name, &old.name),
        kind: pick(body.kind, &old.kind),
        restricted: body.restricted.unwrap_or(patch && old.restricted),
        projects: body.projects.unwrap_or_else(|| {
            if patch {
                old.projects.clone()
            } else {
                Vec::new()
            }
        }),
        certificate,
    };
    trust::update(d, &fp, next)?;
    d.events
        .lifecycle("certificate-updated", &url(&fp), serde_json::json!({}));
    Ok(response::empty())
}

pub fn delete(d: &Daemon, fp: &str) -> Result<Response> {
    let (fp, _) = trust::find(d, fp)?;
    trust::remove(d, &fp)?;
    // Its open connections end now, not at their next request.
    https::get().revoke(&fp);
    d.events
        .lifecycle("certificate-deleted", &url(&fp), serde_json::json!({}));
    Ok(response::empty())
}
