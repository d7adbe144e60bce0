//! A typed client of the REST API, over the unix socket or HTTPS ([`Endpoint`]).
//!
//! Plain requests share a kept-alive connection (one per client, reused within
//! [`REUSE_WITHIN`] of its last response, so a command's requests do not each connect, and over
//! HTTPS do not each make a TLS handshake); streamed requests and websockets get a connection of
//! their own. Every request, websocket, upload and download goes through
//! [`Client::stream`], so they all work over both transports. Errors carry the envelope's `error`
//! string unchanged, so that the CLI prints `Error: <message>` exactly like `lxc`; failures to
//! reach a remote name it and its URL.

pub mod addr;
pub mod multipart;

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{self, Operation};
use crate::http::client::request;
use crate::http::ws::{self, Receiver, Sender};
use crate::http::Body;
use crate::util::stream::Stream;

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

/// A path segment escaped as Go's `url.PathEscape`, which LXD's `api.NewURL().Path(...)` applies
/// to each part of the URLs it lists: `/`, `;`, `,`, `?` and what is not ASCII are escaped with
/// the rest of what RFC 3986 reserves, but `$ & + : = @` pass.
pub fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'$' | b'&' | b'+' | b':' | b'=' | b'@' => out.push(b as char),
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
    /// `metadata` decoded as `T` (taken, not copied: a listing's is large).
    pub fn metadata<T: DeserializeOwned>(self) -> Result<T> {
        Ok(serde_json::from_value(self.envelope.metadata)?)
    }
}

/// Where a [`Client`] sends its requests.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The daemon's unix socket: the peer is trusted by its uid, no TLS.
    Unix(PathBuf),
    /// A daemon's HTTPS listener (see [`Https`]).
    Https(Box<Https>),
}

/// An HTTPS endpoint: where to connect and the TLS settings (pinned server certificate, client
/// identity) made once for all its connections.
#[derive(Debug, Clone)]
pub struct Https {
    /// DNS name or IP address, without brackets.
    pub host: String,
    pub port: u16,
    pub tls: crate::tls::Client,
    /// The SHA-256 fingerprint of the pinned server certificate, named when the server presents
    /// another one.
    pub pinned: Option<String>,
}

/// How long a TCP connect to a remote may take before it is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The typed API client.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    /// Names the server in connection errors: `remote NAME (https://…)`, or empty for the local
    /// socket (whose errors name the socket path).
    label: String,
    /// The connection the last plain request left open (shared by the client's clones).
    idle: Idle,
}

/// How soon after its last response an idle connection is used again; an older one is closed
/// and a new one made. Far below the daemon's idle timeout (120 s), so a connection the server
/// closed for being idle is never picked.
const REUSE_WITHIN: Duration = Duration::from_secs(2);

/// A kept-alive connection and when its last response ended.
type Kept = Option<(Box<dyn Stream>, std::time::Instant)>;

/// The client's kept-alive connection, shared by its clones.
#[derive(Clone, Default)]
struct Idle(std::sync::Arc<std::sync::Mutex<Kept>>);

impl fmt::Debug for Idle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Idle")
    }
}

impl Idle {
    fn take(&self) -> Option<Box<dyn Stream>> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.take()
            .filter(|(_, at)| at.elapsed() < REUSE_WITHIN)
            .map(|(s, _)| s)
    }
    fn put(&self, s: Box<dyn Stream>) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some((s, std::time::Instant::now()));
    }
}

/// Whether the connection a response came on can carry the next request: the server did not
/// say it closes, and the body's end is known without the connection's (a length, chunks, or
/// no body), so it was read to its end.
fn reusable(method: &str, status: u16, headers: &[(String, String)]) -> bool {
    let has = |name: &str, f: &dyn Fn(&str) -> bool| {
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && f(v))
    };
    if status == 101 || has("connection", &|v| v.to_ascii_lowercase().contains("close")) {
        return false;
    }
    method == "HEAD"
        || status == 204
        || status == 304
        || has("content-length", &|_| true)
        || has("transfer-encoding", &|v| {
            v.to_ascii_lowercase().contains("chunked")
        })
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

/// An I/O error without Rust's ` (os error N)` suffix, starting lowercase like Go's.
pub fn os_message(e: &io::Error) -> String {
    let msg = e.to_string();
    let msg = msg.split(" (os error").next().unwrap_or(&msg);
    let mut chars = msg.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The TLS handshake over `tcp` (the one call into the TLS client's connect).
fn tls_handshake(h: &Https, tcp: TcpStream) -> io::Result<crate::tls::TlsStream> {
    h.tls.connect(&h.host, tcp)
}

/// A TCP connection to `host:port`, trying each resolved address in turn
/// ([`crate::net::resolve::connect_tcp`]: no NSS).
fn tcp_connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let s = crate::net::resolve::connect_tcp(host, port, CONNECT_TIMEOUT)?;
    // Requests are small and answered at once: no Nagle delay.
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The certificate a TLS server at `host:port` presents (DER), whatever it is: a handshake
/// without pinning or client certificate, then the connection is closed with nothing sent. For
/// first contact (`remote add`), where the user or a token vouches for the fingerprint.
pub fn peer_certificate(host: &str, port: u16) -> io::Result<Vec<u8>> {
    let tls = crate::tls::Client::pinned(None, None)?;
    let tcp = tcp_connect(host, port)?;
    let _ = tcp.set_read_timeout(Some(CONNECT_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(CONNECT_TIMEOUT));
    let s = tls.connect(host, tcp)?;
    let cert = s.peer_certificate();
    let _ = s.shutdown_both();
    cert.ok_or_else(|| io::Error::other("the server presented no certificate"))
}

impl Client {
    /// A client for the default socket. Nothing is connected until the first request.
    pub fn connect() -> Result<Client> {
        Ok(Client::with_socket(socket_path()))
    }

    pub fn with_socket(socket: PathBuf) -> Client {
        Client {
            endpoint: Endpoint::Unix(socket),
            label: String::new(),
            idle: Idle::default(),
        }
    }

    /// A client for another unix socket; `label` names it in errors (`remote NAME (unix://…)`).
    pub fn unix_labelled(socket: PathBuf, label: String) -> Client {
        Client {
            endpoint: Endpoint::Unix(socket),
            label,
            idle: Idle::default(),
        }
    }

    /// A client for an HTTPS endpoint; `label` names it in errors (`remote NAME (https://…)`).
    pub fn https(label: String, https: Https) -> Client {
        Client {
            endpoint: Endpoint::Https(Box::new(https)),
            label,
            idle: Idle::default(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `Host` for requests: `host:port` (IPv6 in brackets) over HTTPS; none on the socket (the
    /// HTTP layer fills in its placeholder).
    fn host_header(&self) -> Option<(String, String)> {
        match &self.endpoint {
            Endpoint::Unix(_) => None,
            Endpoint::Https(h) => Some(("Host".to_string(), addr::authority(&h.host, h.port))),
        }
    }

    /// A fresh connection to the server: the socket, or TCP plus a completed TLS handshake.
    pub fn stream(&self) -> Result<Box<dyn Stream>> {
        match &self.endpoint {
            Endpoint::Unix(path) => match UnixStream::connect(path) {
                Ok(s) => Ok(Box::new(s)),
                Err(e) if self.label.is_empty() => Err(Error(format!(
                    "cannot connect to the bivy daemon at {}: {}",
                    path.display(),
                    os_message(&e)
                ))),
                Err(e) => Err(Error(format!(
                    "cannot connect to {}: {}",
                    self.label,
                    os_message(&e)
                ))),
            },
            Endpoint::Https(h) => {
                let tcp = tcp_connect(&h.host, h.port).map_err(|e| {
                    Error(format!(
                        "cannot connect to {}: {}",
                        self.label,
                        os_message(&e)
                    ))
                })?;
                match tls_handshake(h, tcp) {
                    Ok(s) => Ok(Box::new(s)),
                    Err(e) if e.to_string().contains("certificate mismatch") => {
                        Err(Error(self.mismatch(h)))
                    }
                    Err(e) => Err(Error(format!("cannot connect to {}: {e}", self.label))),
                }
            }
        }
    }

    /// The error for a server whose certificate is not the pinned one: both fingerprints, the
    /// presented one learnt from a second, unpinned handshake (nothing is sent over it).
    fn mismatch(&self, h: &Https) -> String {
        let presented = peer_certificate(&h.host, h.port)
            .map(|der| crate::tls::fingerprint(&der))
            .unwrap_or_else(|_| "unknown".to_string());
        format!(
            "the certificate of {} changed: pinned {}, presented {presented}; if the change is expected, remove the remote and add it again",
            self.label,
            h.pinned.as_deref().unwrap_or("none"),
        )
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
        let all = self.headers_with(headers, "close");
        let resp = request(&mut stream, method, path, &all, body)?;
        f(resp)
    }

    /// `headers` with this server's `Host` and, unless the caller set one, `Connection:
    /// connection`.
    fn headers_with(
        &self,
        headers: &[(String, String)],
        connection: &str,
    ) -> Vec<(String, String)> {
        let mut all = headers.to_vec();
        if let Some(h) = self.host_header() {
            all.push(h);
        }
        if !all
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
        {
            all.push(("Connection".into(), connection.into()));
        }
        all
    }

    /// Send a request and read the whole response body, on the kept-alive connection when
    /// there is one (a `GET` that finds it closed is sent again on a new one), which is kept for
    /// the next request when the response allows.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Body,
    ) -> Result<RawResponse> {
        let all = self.headers_with(headers, "keep-alive");
        let exchange = |stream: &mut Box<dyn Stream>, body: Body| -> io::Result<RawResponse> {
            let mut resp = request(stream, method, path, &all, body)?;
            // Sized from the head (up to 64 MiB): a listing's body is megabytes.
            let announced = resp
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            let mut buf = Vec::with_capacity(announced.unwrap_or(0).min(64 << 20));
            resp.body.read_to_end(&mut buf)?;
            Ok(RawResponse {
                status: resp.status,
                headers: std::mem::take(&mut resp.headers),
                body: buf,
            })
        };
        let (mut stream, reused) = match self.idle.take() {
            Some(s) => (s, true),
            None => (self.stream()?, false),
        };
        let resp = match exchange(&mut stream, body) {
            Ok(r) => r,
            // Closed while idle (the daemon restarted, say): nothing was done; only a GET, which
            // changes nothing, is sent again.
            Err(_) if reused && method == "GET" => {
                stream = self.stream()?;
                exchange(&mut stream, Body::Empty)?
            }
            Err(e) => return Err(e.into()),
        };
        if reusable(method, resp.status, &resp.headers) {
            self.idle.put(stream);
        }
        Ok(resp)
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
        let mut r = self.query::<()>("GET", path, None, None)?;
        let etag = r.etag.take().unwrap_or_default();
        Ok((r.metadata()?, etag))
    }

    /// [`Self::get`] for large documents (listings): a success is decoded straight from the
    /// body as `T`, with no `Value` tree; anything else is [`parse_envelope`]'s error. (Not
    /// for every `GET`: each `T` decoded this way costs the binary its own decoder.)
    pub fn get_large<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        #[derive(serde::Deserialize)]
        struct Typed<T> {
            #[serde(rename = "type", default)]
            kind: String,
            #[serde(default)]
            error: String,
            metadata: T,
        }
        let resp = self.raw("GET", path, &[], Body::Empty)?;
        // One pass over the body when it is what was asked for (a listing's body is large).
        if resp.status < 400 {
            if let Ok(t) = serde_json::from_slice::<Typed<T>>(&resp.body) {
                if t.kind != "error" && t.error.is_empty() {
                    return Ok(t.metadata);
                }
            }
        }
        // An error's envelope is the error; anything [`parse_envelope`] lets through is decoded
        // as above, for its error (never through a `Value`: a second decoder of `T`).
        parse_envelope(resp.status, &resp.body)?;
        let t: Typed<T> = serde_json::from_slice(&resp.body)?;
        Ok(t.metadata)
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
        let headers: Vec<(String, String)> = self.host_header().into_iter().collect();
        Ok(ws::connect(stream, path, &headers)?)
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
    #[test]
    fn path_segments_are_escaped_as_gos_path_escape() {
        use super::path_escape;
        assert_eq!(path_escape("debian/12"), "debian%2F12");
        assert_eq!(path_escape("q?y"), "q%3Fy");
        assert_eq!(path_escape("sp ace"), "sp%20ace");
        assert_eq!(path_escape("a%b#c;d,e"), "a%25b%23c%3Bd%2Ce");
        assert_eq!(path_escape("a:b@c=d&e+f$"), "a:b@c=d&e+f$");
        assert_eq!(path_escape("ünï"), "%C3%BCn%C3%AF");
        assert_eq!(path_escape("x.y-z_~"), "x.y-z_~");
    }

    use super::*;

    /// A server on a fresh socket serving each connection with the HTTP layer (keep-alive
    /// honoured) on a thread of its own; the count of connections it accepted.
    fn counting_server(
        tag: &str,
    ) -> (
        Client,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        crate::util::tempdir::TempDir,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = crate::util::tempdir::TempDir::new(&format!("client-{tag}"));
        let sock = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let limits = crate::http::Limits::default();
                    crate::http::serve_connection(Box::new(conn), &limits, &|req| {
                        let close = req.path == "/close";
                        let r = crate::http::Response::json(200, br#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":{}}"#.to_vec());
                        if close {
                            r.header("Connection", "close")
                        } else {
                            r
                        }
                    });
                });
            }
        });
        (Client::with_socket(sock), accepted, dir)
    }

    #[test]
    fn requests_share_a_kept_alive_connection() {
        use std::sync::atomic::Ordering;
        let (c, accepted, _dir) = counting_server("reuse");
        for _ in 0..3 {
            assert_eq!(c.raw("GET", "/a", &[], Body::Empty).unwrap().status, 200);
        }
        assert_eq!(c.raw("POST", "/b", &[], Body::Empty).unwrap().status, 200);
        // A clone shares it.
        assert_eq!(
            c.clone().raw("GET", "/a", &[], Body::Empty).unwrap().status,
            200
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // The server closes after this one: the next request connects again.
        c.raw("GET", "/close", &[], Body::Empty).unwrap();
        c.raw("GET", "/a", &[], Body::Empty).unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A connection the server closed while it was idle: a GET is sent again, on a new one.
        if let Some(s) = c.idle.take() {
            let _ = s.shutdown_both();
            c.idle.put(s);
        }
        assert_eq!(c.raw("GET", "/a", &[], Body::Empty).unwrap().status, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // An idle one older than REUSE_WITHIN is not used.
        {
            let mut g = c.idle.0.lock().unwrap();
            let (_, at) = g.as_mut().expect("an idle connection");
            *at -= REUSE_WITHIN;
        }
        c.raw("GET", "/a", &[], Body::Empty).unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

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
