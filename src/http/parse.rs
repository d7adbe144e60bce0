//! Parsing a request head: the head scanner (where a head ends), request line, header fields,
//! percent-encoding and query strings, with the checks that turn malformed input into a status.
//!
//! Pure functions over bytes: no I/O (the server loop reads, then calls these).

use super::server::Limits;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub http11: bool,
    pub headers: Vec<(String, String)>,
}

/// Parse a complete request head. `Err((status, reason))` for malformed input.
pub(crate) fn parse_request_head(
    head: &[u8],
    limits: &Limits,
) -> Result<Head, (u16, &'static str)> {
    if head.contains(&0) {
        return Err((400, "NUL in request head"));
    }
    let lines = head_lines(head).map_err(|e| (400, e))?;
    let (first, rest) = lines.split_first().ok_or((400, "empty request"))?;
    if rest.len() > limits.max_headers {
        return Err((431, "too many header fields"));
    }
    let mut parts = first.split(|&c| c == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err((400, "malformed request line")),
    };
    if method.is_empty() || !method.iter().all(|&c| is_tchar(c)) {
        return Err((400, "invalid method"));
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            return Err((505, "unsupported HTTP version"))
        }
        _ => return Err((400, "malformed HTTP version")),
    };
    if target.is_empty() || !target.iter().all(|&c| c > 0x20 && c < 0x7f) {
        return Err((400, "invalid request target"));
    }
    // Checked above: printable ASCII.
    let target = String::from_utf8_lossy(target).into_owned();
    let mut origin = target.as_str();
    if let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    {
        origin = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    if !(origin.starts_with('/') || origin == "*") {
        return Err((400, "invalid request target"));
    }
    let origin = origin.split('#').next().unwrap_or("");
    let (raw_path, raw_query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = percent_decode(raw_path, false).ok_or((400, "invalid path encoding"))?;
    if path.contains('\0') {
        return Err((400, "NUL in path"));
    }
    let query = parse_query(raw_query).ok_or((400, "invalid query encoding"))?;
    let headers = parse_header_lines(rest).map_err(|e| (400, e))?;
    Ok(Head {
        method: String::from_utf8_lossy(method).into_owned(),
        target,
        path,
        query,
        http11,
        headers,
    })
}

/// Percent-decode `s` (`+` becomes a space when `plus_as_space`, as in query strings).
/// `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str, plus_as_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encode everything but RFC 3986 unreserved characters and, when `keep_slash`, `/`.
pub fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && c == b'/')
        {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(c >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(c & 15) as usize]));
        }
    }
    out
}

pub(super) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parse a query string (without `?`) into decoded pairs; `None` if an escape is malformed.
pub fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in q.split('&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Some(out)
}

pub(super) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub(crate) fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Accumulates a message head (up to and including the empty line) from successive buffers.
/// Leading empty lines are skipped (RFC 9112 2.2). Lines may end in CRLF or a bare LF.
#[derive(Default)]
pub(crate) struct HeadScanner {
    pub head: Vec<u8>,
    line_start: usize,
    /// Bytes seen including skipped leading line ends.
    pub total: usize,
}

impl HeadScanner {
    /// Feed available bytes; returns (consumed, complete).
    pub fn feed(&mut self, avail: &[u8]) -> (usize, bool) {
        for (i, &c) in avail.iter().enumerate() {
            self.total += 1;
            if self.head.is_empty() && (c == b'\r' || c == b'\n') {
                continue;
            }
            self.head.push(c);
            if c == b'\n' {
                let end = self.head.len() - 1;
                let line = &self.head[self.line_start..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    return (i + 1, true);
                }
                self.line_start = self.head.len();
            }
        }
        (avail.len(), false)
    }
}

/// Split a complete head into lines (without line ends, without the final empty line).
/// A CR anywhere but just before LF is an error.
pub(super) fn head_lines(head: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(nl) = rest.iter().position(|&c| c == b'\n') {
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err("bare CR in head");
        }
        if line.is_empty() {
            break;
        }
        lines.push(line);
        rest = &rest[nl + 1..];
    }
    Ok(lines)
}

/// Parse header lines into (name, value) pairs. Rejects obs-fold, invalid names, control bytes.
pub(super) fn parse_header_lines(lines: &[&[u8]]) -> Result<Vec<(String, String)>, &'static str> {
    let mut headers = Vec::with_capacity(lines.len());
    for line in lines {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err("obsolete line folding");
        }
        let colon = line
            .iter()
            .position(|&c| c == b':')
            .ok_or("header line without colon")?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err("invalid header name");
        }
        let value = &line[colon + 1..];
        if value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
            return Err("invalid byte in header value");
        }
        let value = trim_ows(value);
        // Names are tchar (ASCII) so this cannot fail; values may be obs-text (lossy).
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

pub(super) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding() {
        assert_eq!(percent_decode("a+b%41", false).as_deref(), Some("a+bA"));
        assert_eq!(percent_decode("a+b%41", true).as_deref(), Some("a bA"));
        assert_eq!(percent_decode("%4", true), None);
        assert_eq!(percent_decode("%", true), None);
        assert_eq!(percent_decode("%C3%A9", true).as_deref(), Some("é"));
        assert_eq!(percent_encode("a b/é", true), "a%20b/%C3%A9");
        assert_eq!(
            percent_decode(&percent_encode("x?&=+ /y", false), false).as_deref(),
            Some("x?&=+ /y")
        );
    }
}
