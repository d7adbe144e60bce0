//! Writing responses: status line and reason phrase, safe header lines, the body's framing
//! (Content-Length, chunked, to close), HEAD and no-body statuses, and the JSON error envelope
//! the server answers with when a request never reaches a handler.

use std::io::{self, Read, Write};

use super::body::{parse_decimal, write_streamed};
use super::parse::is_tchar;
use super::{Body, Response};

/// Standard reason phrase for a status code ("" when unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The body of an error answer, in LXD's error envelope. Errors found below the handlers (a bad
/// request line, an oversized head, a broken body) look to clients exactly like a handler's.
pub fn error_envelope(status: u16, msg: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "type": "error",
        "status": "",
        "status_code": 0,
        "operation": "",
        "error_code": status,
        "error": msg,
        "metadata": null,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Answer a request the server could not hand to the handler, then the caller closes.
pub(super) fn write_simple(w: &mut dyn Write, status: u16, msg: &str) -> io::Result<()> {
    let body = error_envelope(status, msg);
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

pub(super) fn write_head(
    w: &mut dyn Write,
    status: u16,
    headers: &[(String, String)],
    extra: &str,
) -> io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (k, v) in headers {
        // Never let a handler split the response with CR/LF in a header.
        if k.bytes().all(is_tchar)
            && !k.is_empty()
            && !v.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0)
        {
            h.push_str(k);
            h.push_str(": ");
            h.push_str(v);
            h.push_str("\r\n");
        }
    }
    h.push_str(extra);
    h.push_str("\r\n");
    w.write_all(h.as_bytes())
}

/// Write a response; returns whether the connection may be kept alive.
pub(super) fn write_response(
    w: &mut dyn Write,
    resp: Response,
    head_only: bool,
    http11: bool,
    mut keep: bool,
) -> io::Result<bool> {
    let status = resp.status;
    let no_body = status < 200 || status == 204 || status == 304;
    // A HEAD handler may announce the length of the body it would send.
    let head_len = if head_only {
        resp.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.clone())
    } else {
        None
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .into_iter()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("content-length")
                && !k.eq_ignore_ascii_case("transfer-encoding")
                && !k.eq_ignore_ascii_case("connection")
        })
        .collect();
    let mut body = resp.body;
    if no_body {
        body = Body::Empty;
    }
    let (len, chunked) = match &body {
        Body::Empty => (Some(0), false),
        Body::Bytes(b) => (Some(b.len() as u64), false),
        Body::Reader(_, Some(n)) => (Some(*n), false),
        Body::Reader(_, None) => {
            if !http11 && !head_only {
                keep = false;
            }
            (None, http11)
        }
    };
    let mut extra = String::new();
    if let Some(v) = head_len.filter(|v| parse_decimal(v.trim()).is_some()) {
        extra.push_str(&format!("Content-Length: {}\r\n", v.trim()));
    } else if let Some(n) = len {
        if !no_body {
            extra.push_str(&format!("Content-Length: {n}\r\n"));
        }
    } else if chunked && !head_only {
        extra.push_str("Transfer-Encoding: chunked\r\n");
    }
    if !keep {
        extra.push_str("Connection: close\r\n");
    } else if !http11 {
        extra.push_str("Connection: keep-alive\r\n");
    }
    write_head(w, status, &headers, &extra)?;
    if head_only {
        w.flush()?;
        return Ok(keep);
    }
    match body {
        Body::Empty => {}
        Body::Bytes(b) => w.write_all(&b)?,
        Body::Reader(mut r, Some(n)) => {
            let copied = io::copy(&mut (&mut r).take(n), w)?;
            if copied != n {
                // Framing broken: the peer must see the connection end.
                w.flush()?;
                return Ok(false);
            }
        }
        // Streamed as it is produced (a log, an export): every piece is flushed at once.
        Body::Reader(mut r, None) => write_streamed(&mut r, w, chunked, true)?,
    }
    w.flush()?;
    Ok(keep)
}
