//! The single place where results become HTTP responses: LXD's envelope (sync, async, error)
//! and the error -> status mapping.

use serde::Serialize;

use crate::api;
use crate::http::{Body, Response};

/// A request failure, by the HTTP status it maps to. Messages follow LXD's wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    BadRequest(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed(String),
    Conflict(String),
    PreconditionFailed(String),
    PayloadTooLarge(String),
    Internal(String),
    NotImplemented(String),
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::Conflict(_) => 409,
            Error::PreconditionFailed(_) => 412,
            Error::PayloadTooLarge(_) => 413,
            Error::Internal(_) => 500,
            Error::NotImplemented(_) => 501,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Error::BadRequest(m)
            | Error::Forbidden(m)
            | Error::NotFound(m)
            | Error::MethodNotAllowed(m)
            | Error::Conflict(m)
            | Error::PreconditionFailed(m)
            | Error::PayloadTooLarge(m)
            | Error::Internal(m)
            | Error::NotImplemented(m) => m,
        }
    }
    /// "not supported yet: WHAT" as a 501.
    pub fn not_yet(what: &str) -> Error {
        Error::NotImplemented(format!("not supported yet: {what}"))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<crate::image::Error> for Error {
    fn from(e: crate::image::Error) -> Error {
        use crate::image::Error as I;
        match e {
            I::NotFound(m) => Error::NotFound(m),
            I::Conflict(m) => Error::Conflict(m),
            I::BadRequest(m) => Error::BadRequest(m),
            I::Internal(m) => Error::Internal(m),
        }
    }
}

/// The one mapping from the model's errors to LXD's status codes.
impl From<crate::instance::Error> for Error {
    fn from(e: crate::instance::Error) -> Error {
        use crate::instance::Error as E;
        let m = e.message();
        match e {
            E::Invalid(_) | E::InvalidConfig { .. } => Error::BadRequest(m),
            E::NotFound(_) => Error::NotFound(m),
            E::Conflict(_) | E::Busy { .. } => Error::Conflict(m),
            E::PreconditionFailed(_) => Error::PreconditionFailed(m),
            E::TooLarge(_) => Error::PayloadTooLarge(m),
            E::Forbidden(_) => Error::Forbidden(m),
            E::NotSupported(_) => Error::NotImplemented(m),
            E::Host(_) => Error::Internal(m),
        }
    }
}

impl From<crate::runtime::Error> for Error {
    fn from(e: crate::runtime::Error) -> Error {
        if e.0.starts_with("not supported yet") {
            Error::NotImplemented(e.0)
        } else {
            Error::Internal(e.0)
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn envelope(
    kind: &str,
    status: u16,
    operation: String,
    error_code: u16,
    error: String,
    metadata: serde_json::Value,
) -> Vec<u8> {
    envelope_of(kind, status, &operation, error_code, &error, &metadata)
}

/// LXD's envelope (`api.ResponseRaw`, its fields in Go's order) around `metadata`, serialized
/// straight from its type: no intermediate `Value` tree (a listing's documents are large).
fn envelope_of<T: Serialize + ?Sized>(
    kind: &str,
    status: u16,
    operation: &str,
    error_code: u16,
    error: &str,
    metadata: &T,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a, T: Serialize + ?Sized> {
        #[serde(rename = "type")]
        kind: &'a str,
        status: &'a str,
        status_code: u16,
        operation: &'a str,
        error_code: u16,
        error: &'a str,
        metadata: &'a T,
    }
    let is_error = kind == "error";
    let e = Envelope {
        kind,
        status: if is_error {
            ""
        } else {
            api::status::name(status)
        },
        status_code: if is_error { 0 } else { status },
        operation,
        error_code,
        error,
        metadata,
    };
    serde_json::to_vec(&e).unwrap_or_else(|err| {
        // A document that cannot be serialized (never expected): the envelope without it.
        eprintln!("bivy: a response could not be serialized: {err}");
        let e = Envelope {
            metadata: &serde_json::Value::Null,
            kind: e.kind,
            status: e.status,
            status_code: e.status_code,
            operation: e.operation,
            error_code: e.error_code,
            error: e.error,
        };
        serde_json::to_vec(&e).expect("an envelope always serializes")
    })
}

/// A sync 200 response.
pub fn sync<T: Serialize>(metadata: &T) -> Response {
    sync_etag(metadata, None)
}

/// A sync 200 response with an ETag header.
pub fn sync_etag<T: Serialize>(metadata: &T, etag: Option<String>) -> Response {
    let body = envelope_of("sync", api::status::SUCCESS, "", 0, "", metadata);
    let mut r = Response::json(200, body);
    if let Some(e) = etag {
        r = r.header("ETag", &format!("\"{e}\""));
    }
    r
}

/// A sync 200 response whose metadata is a list of documents already serialized (each one
/// JSON text; made on the threads that gathered them, so that a long listing's serialization
/// is shared too).
pub fn sync_serialized_list(items: &[Vec<u8>]) -> Response {
    // The envelope ends with its metadata: `...,"metadata":null}`; the list goes in its place.
    let mut body = envelope_of("sync", api::status::SUCCESS, "", 0, "", &());
    let tail = b"null}";
    debug_assert!(body.ends_with(tail));
    body.truncate(body.len() - tail.len());
    body.reserve(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Response::json(200, body)
}

/// A sync 201 with a `Location` header (created objects).
pub fn created(location: &str) -> Response {
    let body = envelope(
        "sync",
        api::status::SUCCESS,
        String::new(),
        0,
        String::new(),
        serde_json::json!({}),
    );
    Response::json(201, body).header("Location", location)
}

/// An empty sync 200.
pub fn empty() -> Response {
    sync(&serde_json::json!({}))
}

/// An async 202 for an operation.
pub fn operation(op: &api::Operation) -> Response {
    let url = format!("/1.0/operations/{}", op.id);
    let value = serde_json::to_value(op).unwrap_or(serde_json::Value::Null);
    let body = envelope(
        "async",
        api::status::OPERATION_CREATED,
        url.clone(),
        0,
        String::new(),
        value,
    );
    Response::json(202, body).header("Location", &url)
}

/// The body of an error response with `code` and `message`, for the few places that write a
/// response without the HTTP layer (a connection refused past the limits).
pub fn error_body(code: u16, message: &str) -> Vec<u8> {
    envelope(
        "error",
        0,
        String::new(),
        code,
        message.to_string(),
        serde_json::Value::Null,
    )
}

/// An error response.
pub fn error(e: &Error) -> Response {
    let body = envelope(
        "error",
        0,
        String::new(),
        e.status(),
        e.message().to_string(),
        serde_json::Value::Null,
    );
    Response::json(e.status(), body)
}

/// The ETag of a value: sha256 of its JSON, hex (as LXD's `util.EtagHash`).
pub fn etag<T: Serialize>(v: &T) -> String {
    let data = serde_json::to_vec(v).unwrap_or_default();
    hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref())
}

/// Lowercase hex.
pub use crate::util::hex;

/// Check `If-Match` against the current ETag: a mismatch is a 412.
pub fn check_etag(if_match: Option<&str>, current: &str) -> Result<()> {
    match if_match {
        Some(v) if !v.trim().is_empty() => {
            let v = v.trim().trim_matches('"');
            if v == current {
                Ok(())
            } else {
                Err(Error::PreconditionFailed("ETag doesn't match".into()))
            }
        }
        _ => Ok(()),
    }
}

/// Parse a JSON request body, with LXD-style errors.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("Failed to parse request: {e}")))
}

/// A raw (non-JSON) body response.
pub fn raw(status: u16, content_type: &str, body: Body) -> Response {
    Response::new(status)
        .header("Content-Type", content_type)
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_has_all_keys() {
        let body = envelope(
            "error",
            0,
            String::new(),
            404,
            "Instance not found".into(),
            serde_json::Value::Null,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"Instance not found","metadata":null})
        );
    }

    #[test]
    fn a_serialized_list_is_the_envelope_of_the_same_list() {
        let docs = [
            serde_json::json!({"name": "a\"b"}),
            serde_json::json!([1, 2]),
        ];
        for n in 0..=docs.len() {
            let items: Vec<Vec<u8>> = docs[..n]
                .iter()
                .map(|d| serde_json::to_vec(d).unwrap())
                .collect();
            let crate::http::Body::Bytes(got) = sync_serialized_list(&items).body else {
                panic!("not bytes");
            };
            let want = envelope_of("sync", api::status::SUCCESS, "", 0, "", &docs[..n]);
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    #[test]
    fn etag_check() {
        assert!(check_etag(None, "abc").is_ok());
        assert!(check_etag(Some("\"abc\""), "abc").is_ok());
        assert_eq!(
            check_etag(Some("\"abd\""), "abc").unwrap_err().status(),
            412
        );
    }
}
