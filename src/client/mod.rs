//! A typed client of the REST API over the unix socket.
//!
//! One connection per request (the daemon may close after each response anyway); websockets get a
//! connection of their own. Errors carry the envelope's `error` string unchanged, so that the CLI
//! prints `Error: <message>` exactly like `lxc`.

pub mod multipart;

use std::fmt;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{self, Operation};
use crate::http::client::request;
use crate::http::ws::{self, Receiver, Sender};
use crate::http::Body;

/// An error to show the user: the server's message, or what failed locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error(format!("failed to parse the server response: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for building an [`Error`].
pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// Percent-encode a query value or path segment (RFC 3986 unreserved characters pass; `/` passes
/// only when `keep_slash`).
pub fn urlencode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A response whose body was read whole.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The result of a JSON request: the envelope plus the ETag header.
pub struct Reply {
    pub envelope: api::Response,
    pub etag: Option<String>,
}

impl Reply {
    /// The operation id of an async reply.
    pub fn operation_id(&self) -> Option<String> {
        if self.envelope.kind != "async" {
            return None;
        }
        let op = self
            .envelope
            .operation
            .trim_start_matches("/1.0/operations/");
        let op = op.split('?').next().unwrap_or(op);
        (!op.is_empty()).then(|| op.to_string())
    }
    /// `metadata` decoded as `T`.
    pub fn metadata<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_value(self.envelope.metadata.clone())?)
    }
}

/// The typed API client.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// Where the daemon's socket is: `$BIVY_SOCKET`, `$BIVY_DIR/unix.socket`, `/var/lib/bivy/unix.socket`.
pub fn socket_path() -> PathBuf {
    if let Some(s) = std::env::var_os("BIVY_SOCKET").filter(|s| !s.is_empty()) {
        return PathBuf::from(s);
    }
    if let Some(d) = std::env::var_os("BIVY_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(d).join("unix.socket");
    }
    PathBuf::from("/var/lib/bivy/unix.socket")
}

/// Decode a JSON envelope; an `error` envelope (or a non-2xx status) becomes an [`Error`].
pub fn parse_envelope(status: u16, body: &[u8]) -> Result<api::Response> {
    match serde_json::from_slice::<api::Response>(body) {
        Ok(env) if env.kind == "error" || !env.error.is_empty() && status >= 400 => {
            Err(Error(if env.error.is_empty() {
                format!("HTTP {status}")
            } else {
                env.error
            }))
        }
        Ok(env) => Ok(env),
        Err(_) if status >= 400 => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            err(if text.is_empty() {
                format!("HTTP error {status}")
            } else {
                text.to_string()
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The websocket secrets (`metadata.fds`) of a websocket operation's JSON.
pub fn operation_fds(op: &serde_json::Value) -> crate::api::StringMap {
    op.get("metadata")
        .and_then(|m| m.get("fds"))
        .and_then(|f| serde_json::from_value(f.clone()).ok())
        .unwrap_or_default()
}

/// The exit code an exec operation reported (`metadata.return`).
pub fn operation_return(op: &Operation) -> Option<i32> {
    op.metadata
        .as_ref()?
        .get("return")?
        .as_i64()
        .map(|v| v as i32)
}

impl Client {
    /// A client for the default socket. Nothing is connected until the first request.
    pub fn connect() -> Result<Client> {
        Ok(Client {
            socket: socket_path(),
        })
    }

    pub fn with_socket(socket: PathBuf) -> Client {
        Client { socket }
    }

    fn stream(&self) -> Result<UnixStream> {
        UnixStream::connect(&self.socket).map_err(|e| {
            let msg = e.to_string();
            let msg = msg
                .split(" (os error")
                .next()
                .unwrap_or(&msg)
                .to_lowercase();
            Error(format!(
                "cannot connect to the bivy daemon at {}: {msg}",
                self.socket.display()
            ))
        })
    }

    /// Send a request and hand the streamed response to `f`.
    pub fn with_response<R>(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Body,
        f: impl FnOnce(crate::http::client::ClientResponse<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut stream = self.stream()?;
        let mut all = headers.to_vec();
        if !all
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
        {
            all.push(("Connection".into(), "close".into()));
        }
        let resp = request(&mut stream, method, path, &all, body)?;
        f(resp)
    }

    /// Send a request and read the whole response body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Body,
    ) -> Result<RawResponse> {
        self.with_response(method, path, headers, body, |mut resp| {
            let mut buf = Vec::new();
            resp.body.read_to_end(&mut buf)?;
            Ok(RawResponse {
                status: resp.status,
                headers: resp.headers.clone(),
                body: buf,
            })
        })
    }

    /// A JSON request (`body` serialized when given), `If-Match` sent when `etag` is given.
    pub fn query<B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        etag: Option<&str>,
    ) -> Result<Reply> {
        let mut headers = Vec::new();
        let body = match body {
            Some(b) => {
                headers.push(("Content-Type".to_string(), "application/json".to_string()));
                Body::Bytes(serde_json::to_vec(b)?)
            }
            None => Body::Empty,
        };
        if let Some(e) = etag.filter(|e| !e.is_empty()) {
            headers.push((
                "If-Match".to_string(),
                format!("\"{}\"", e.trim_matches('"')),
            ));
        }
        let resp = self.raw(method, path, &headers, body)?;
        let envelope = parse_envelope(resp.status, &resp.body)?;
        let etag = resp.header("etag").map(|e| e.trim_matches('"').to_string());
        Ok(Reply { envelope, etag })
    }

    /// `GET` and decode `metadata`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.query::<()>("GET", path, None, None)?.metadata()
    }

    /// `GET` and decode `metadata`, also returning the ETag (empty when the server sent none).
    pub fn get_etag<T: DeserializeOwned>(&self, path: &str) -> Result<(T, String)> {
        let r = self.query::<()>("GET", path, None, None)?;
        Ok((r.metadata()?, r.etag.unwrap_or_default()))
    }

    /// Send a request and, when the reply is an operation, wait for it. Returns the final
    /// operation (if any) or the sync reply's metadata as an operation-less `None`.
    pub fn send_wait<B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        etag: Option<&str>,
    ) -> Result<Option<Operation>> {
        let reply = self.query(method, path, body, etag)?;
        match reply.operation_id() {
            Some(id) => Ok(Some(self.wait_operation(&id)?)),
            None => Ok(None),
        }
    }

    pub fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Option<Operation>> {
        self.send_wait("POST", path, Some(body), None)
    }

    pub fn put<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        etag: Option<&str>,
    ) -> Result<Option<Operation>> {
        self.send_wait("PUT", path, Some(body), etag)
    }

    pub fn patch<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        etag: Option<&str>,
    ) -> Result<Option<Operation>> {
        self.send_wait("PATCH", path, Some(body), etag)
    }

    pub fn delete(&self, path: &str) -> Result<Option<Operation>> {
        self.send_wait::<()>("DELETE", path, None, None)
    }

    /// Block until the operation is final (`/wait?timeout=-1`) and return it, failed or not.
    pub fn wait_operation_final(&self, id: &str) -> Result<Operation> {
        self.get(&format!(
            "/1.0/operations/{}/wait?timeout=-1",
            urlencode(id, false)
        ))
    }

    /// Block until the operation is final (`/wait?timeout=-1`); a failed or cancelled operation
    /// becomes an [`Error`] with the operation's `err`.
    pub fn wait_operation(&self, id: &str) -> Result<Operation> {
        let op = self.wait_operation_final(id)?;
        if op.status_code != api::status::SUCCESS {
            return err(if op.err.is_empty() {
                format!("operation {}", op.status.to_lowercase())
            } else {
                op.err
            });
        }
        Ok(op)
    }

    /// Open a websocket on `path` (with query) over a fresh connection.
    pub fn websocket(&self, path: &str) -> Result<(Sender, Receiver)> {
        let stream = self.stream()?;
        Ok(ws::connect(Box::new(stream), path, &[])?)
    }

    /// Attach to one of an operation's websockets.
    pub fn operation_websocket(&self, id: &str, secret: &str) -> Result<(Sender, Receiver)> {
        self.websocket(&format!(
            "/1.0/operations/{}/websocket?secret={}",
            urlencode(id, false),
            urlencode(secret, false)
        ))
    }

    /// The event stream (`types` comma-separated, empty for all).
    pub fn events(&self, types: &str) -> Result<(Sender, Receiver)> {
        if types.is_empty() {
            self.websocket("/1.0/events")
        } else {
            self.websocket(&format!("/1.0/events?type={}", urlencode(types, false)))
        }
    }

    /// Upload a raw body (`POST`), e.g. an image or a file; waits for a resulting operation.
    pub fn upload(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Body,
    ) -> Result<(api::Response, Option<Operation>)> {
        let resp = self.raw(method, path, headers, body)?;
        let env = parse_envelope(resp.status, &resp.body)?;
        let reply = Reply {
            envelope: env,
            etag: None,
        };
        let op = match reply.operation_id() {
            Some(id) => Some(self.wait_operation(&id)?),
            None => None,
        };
        Ok((reply.envelope, op))
    }

    /// Download: `GET` a raw body and hand the response to `f` (a JSON error becomes an [`Error`]).
    pub fn download<R>(
        &self,
        path: &str,
        f: impl FnOnce(crate::http::client::ClientResponse<'_>) -> Result<R>,
    ) -> Result<R> {
        self.with_response("GET", path, &[], Body::Empty, |mut resp| {
            if resp.status >= 400 {
                let mut buf = Vec::new();
                resp.body.read_to_end(&mut buf)?;
                parse_envelope(resp.status, &buf)?;
                return err(format!("HTTP error {}", resp.status));
            }
            f(resp)
        })
    }
}

/// A reader that reports the running byte count to a callback (for progress output).
pub struct ProgressReader<R> {
    inner: R,
    done: u64,
    callback: Box<dyn FnMut(u64) + Send>,
}

impl<R: Read> ProgressReader<R> {
    pub fn new(inner: R, callback: Box<dyn FnMut(u64) + Send>) -> Self {
        ProgressReader {
            inner,
            done: 0,
            callback,
        }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.callback)(self.done);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_error_message_is_kept() {
        let body = br#"{"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"Instance not found","metadata":null}"#;
        assert_eq!(
            parse_envelope(404, body).unwrap_err().0,
            "Instance not found"
        );
        assert_eq!(parse_envelope(500, b"boom\n").unwrap_err().0, "boom");
    }

    #[test]
    fn async_reply_gives_operation_id() {
        let body = br#"{"type":"async","status":"Operation created","status_code":100,"operation":"/1.0/operations/abc-1","error_code":0,"error":"","metadata":{}}"#;
        let r = Reply {
            envelope: parse_envelope(202, body).unwrap(),
            etag: None,
        };
        assert_eq!(r.operation_id().as_deref(), Some("abc-1"));
    }

    #[test]
    fn urlencode_paths() {
        assert_eq!(urlencode("/root/a b.txt", false), "%2Froot%2Fa%20b.txt");
        assert_eq!(urlencode("/root/x", true), "/root/x");
    }

    #[test]
    fn socket_lookup_order() {
        // Only checks the fallback shape; the environment is shared between tests.
        let p = socket_path();
        assert!(p.ends_with("unix.socket") || std::env::var_os("BIVY_SOCKET").is_some());
    }
}
