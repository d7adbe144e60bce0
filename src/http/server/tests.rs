//! End-to-end tests of the server loop (and the client against it) over in-memory and
//! socketpair streams: parsing, limits, framing both ways, keep-alive, 100-continue, timeouts.

use super::*;
use crate::http::{client, Body, SliceStream};
use std::os::unix::net::UnixStream;
use std::thread;

fn small_limits() -> Limits {
    Limits {
        max_head: 1024,
        max_headers: 10,
        head_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(400),
        body_read_timeout: Duration::from_millis(400),
    }
}

fn echo(req: &mut Request) -> Response {
    if req.path == "/panic" {
        panic!("handler panic (expected in this test)");
    }
    if req.path == "/noread" {
        return Response::new(200).body(Body::Bytes(b"skipped".to_vec()));
    }
    let body = match req.read_body(1 << 20) {
        Ok(b) => b,
        Err(_) => return Response::new(413),
    };
    let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!(
        "{} {} [{}] {}",
        req.method,
        req.path,
        q.join("|"),
        String::from_utf8_lossy(&body)
    );
    if req.path == "/stream" {
        return Response::new(200).body(Body::Reader(
            Box::new(io::Cursor::new(text.into_bytes())),
            None,
        ));
    }
    Response::new(200)
        .header("Content-Type", "text/plain")
        .body(Body::Bytes(text.into_bytes()))
}

/// Run the server over in-memory input; returns everything it wrote.
fn run(input: &[u8]) -> String {
    let s = SliceStream::new(input.to_vec());
    let out = s.output.clone();
    serve_connection(Box::new(s), &small_limits(), &echo);
    let o = out.lock().unwrap().clone();
    String::from_utf8_lossy(&o).into_owned()
}

fn status_of(out: &str) -> u16 {
    out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// An error answer carries LXD's JSON error envelope, whatever layer produced it.
fn assert_error_envelope(out: &str, status: u16) {
    assert!(
        out.contains("Content-Type: application/json\r\n"),
        "error must be JSON: {out:?}"
    );
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(v["type"], "error", "{out:?}");
    assert_eq!(v["error_code"], status, "{out:?}");
    assert_eq!(v["status_code"], 0, "{out:?}");
    assert_eq!(v["metadata"], serde_json::Value::Null, "{out:?}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{out:?}"
    );
}

#[test]
fn request_parsing_table() {
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET / HTTP/1.1\nHost: x\n\n", 200),
        (b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET / HTTP/1.0\r\n\r\n", 200),
        (b"GET http://unix.socket/1.0 HTTP/1.1\r\n\r\n", 200),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n A: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA : b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA(b: c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n: c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\0c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 400),
        (b"GET /\0 HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / FOO/1.1\r\n\r\n", 400),
        (b"GET / http/1.1\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"G@T / HTTP/1.1\r\n\r\n", 400),
        (b"GET noslash HTTP/1.1\r\n\r\n", 400),
        (b"GET /a%zz HTTP/1.1\r\n\r\n", 400),
        (b"GET /a%ff HTTP/1.1\r\n\r\n", 400),
        (b"GET /a%00 HTTP/1.1\r\n\r\n", 400),
        (b"GET /?a=%g0 HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nxx", 200),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nExpect: something\r\n\r\n", 417),
        (b"GET / HTTP/1.1\r\nH: 1\r\nH: 2\r\nH: 3\r\nH: 4\r\nH: 5\r\nH: 6\r\nH: 7\r\nH: 8\r\nH: 9\r\nH: 10\r\nH: 11\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x", 400),
    ];
    for (input, want) in cases {
        let out = run(input);
        assert_eq!(
            status_of(&out),
            *want,
            "input {:?} gave {out:?}",
            String::from_utf8_lossy(input)
        );
        if *want != 200 {
            assert!(
                out.contains("Connection: close\r\n"),
                "error must close: {out:?}"
            );
            assert_error_envelope(&out, *want);
        }
    }
    // Nothing at all: silent close.
    assert_eq!(run(b""), "");
}

#[test]
fn path_and_query_decoding() {
    let out =
        run(b"GET /1.0/instances/a%20b%2Fc?recursion=1&filter=a+b%2Bc&flag&=x HTTP/1.1\r\n\r\n");
    assert!(
        out.ends_with("GET /1.0/instances/a b/c [recursion=1|filter=a b+c|flag=|=x] "),
        "{out}"
    );
}

#[test]
fn oversized_head_is_431() {
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 5000));
    big.extend_from_slice(b"\r\n\r\n");
    let out = run(&big);
    assert_eq!(status_of(&out), 431, "{out}");
    assert_error_envelope(&out, 431);
    // A huge request line with no end at all.
    let out = run(&vec![b'A'; 100_000]);
    assert_eq!(status_of(&out), 431);
    assert_error_envelope(&out, 431);
}

#[test]
fn bodies_content_length_and_chunked() {
    let out = run(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    assert!(out.ends_with("POST /x [] hello"), "{out}");
    let out = run(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: yes\r\n\r\n");
    assert!(out.ends_with("POST /x [] hello world"), "{out}");
    // LF-only chunk lines are tolerated.
    let out = run(b"POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n2\nab\n0\n\n");
    assert!(out.ends_with("POST /x [] ab"), "{out}");
    // Chunked response for an unknown-length body.
    let out = run(b"POST /stream HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n12\r\nPOST /stream [] hi\r\n0\r\n\r\n"),
        "{out}"
    );
    // HTTP/1.0 cannot take chunked: the body runs to the close.
    let out = run(b"POST /stream HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi");
    assert!(
        out.contains("Connection: close\r\n") && out.ends_with("\r\n\r\nPOST /stream [] hi"),
        "{out}"
    );
}

#[test]
fn bad_chunks_are_400() {
    for body in [
        &b"fffffffffffffffff\r\n"[..],
        b"ffffffffffffffff\r\n",
        b"zz\r\nab\r\n0\r\n\r\n",
        b"\r\n",
        b"2\r\nabc\r\n0\r\n\r\n",
        b"-1\r\n",
        b"0\r\nBad Trailer\r\n\r\n",
    ] {
        let mut input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(body);
        let out = run(&input);
        assert_eq!(
            status_of(&out),
            400,
            "{:?} gave {out}",
            String::from_utf8_lossy(body)
        );
        assert!(out.contains("Connection: close"));
        assert_error_envelope(&out, 400);
    }
    // A chunk-size line longer than allowed.
    let mut input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    input.extend(std::iter::repeat_n(b'e', 10_000));
    assert_eq!(status_of(&run(&input)), 400);
}

#[test]
fn pipelined_keep_alive_head_and_close() {
    let out = run(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nzGET /never HTTP/1.1\r\n\r\n");
    let responses: Vec<&str> = out.split("HTTP/1.1 ").filter(|s| !s.is_empty()).collect();
    assert_eq!(responses.len(), 3, "{out}");
    assert!(responses[0].ends_with("GET /a [] "));
    // HEAD: length announced, no body.
    assert!(
        responses[1].contains("Content-Length: 11\r\n") && responses[1].ends_with("\r\n\r\n"),
        "{out}"
    );
    assert!(
        responses[2].contains("Connection: close\r\n") && responses[2].ends_with("POST /c [] z")
    );
    // HTTP/1.0 keep-alive.
    let out = run(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /c HTTP/1.0\r\n\r\n");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains("Connection: keep-alive\r\n"));
    // Unread body is drained so the next request still parses.
    let out =
        run(b"POST /noread HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /after HTTP/1.1\r\n\r\n");
    assert!(out.ends_with("GET /after [] "), "{out}");
}

#[test]
fn head_keeps_handler_length_and_status_without_body() {
    let handler = |req: &mut Request| -> Response {
        match req.path.as_str() {
            "/len" => Response::new(200).header("Content-Length", "1234"),
            "/nc" => Response::new(204).body(Body::Bytes(b"dropped".to_vec())),
            _ => Response::new(200).body(Body::Reader(
                Box::new(io::Cursor::new(b"xyz".to_vec())),
                None,
            )),
        }
    };
    let s = SliceStream::new(
        b"HEAD /len HTTP/1.1\r\n\r\nGET /nc HTTP/1.1\r\n\r\nHEAD /chunk HTTP/1.1\r\n\r\n".to_vec(),
    );
    let out = s.output.clone();
    serve_connection(Box::new(s), &small_limits(), &handler);
    let out = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    );
}

#[test]
fn handler_panic_is_500() {
    let out = run(b"GET /panic HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&out), 500);
    assert!(out.contains("Connection: close"));
    assert_error_envelope(&out, 500);
    assert_eq!(out.matches("HTTP/1.1").count(), 1);
}

fn spawn_server(limits: Limits) -> (UnixStream, thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || serve_connection(Box::new(b), &limits, &echo));
    (a, t)
}

#[test]
fn client_keep_alive_and_chunked_both_ways() {
    let (mut c, t) = spawn_server(Limits::default());
    {
        let mut r = client::request(&mut c, "GET", "/one?x=1", &[], Body::Empty).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        let mut s = String::new();
        r.body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "GET /one [x=1] ");
    }
    {
        let body = Body::Reader(Box::new(io::Cursor::new(vec![b'q'; 100_000])), None);
        let mut r = client::request(
            &mut c,
            "POST",
            "/stream",
            &[("Host".into(), "h".into())],
            body,
        )
        .unwrap();
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let mut s = String::new();
        r.body.read_to_string(&mut s).unwrap();
        assert_eq!(s.len(), "POST /stream [] ".len() + 100_000);
    }
    {
        let body = Body::Reader(Box::new(io::Cursor::new(b"abc".to_vec())), Some(3));
        let mut r = client::request(&mut c, "PUT", "/three", &[], body).unwrap();
        let mut s = String::new();
        r.body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "PUT /three [] abc");
    }
    {
        let mut r = client::request(&mut c, "HEAD", "/four", &[], Body::Empty).unwrap();
        let mut s = String::new();
        r.body.read_to_string(&mut s).unwrap();
        assert_eq!((r.status, s.as_str()), (200, ""));
    }
    {
        let mut r = client::request(
            &mut c,
            "GET",
            "/five",
            &[("Connection".into(), "close".into())],
            Body::Empty,
        )
        .unwrap();
        let mut s = String::new();
        r.body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "GET /five [] ");
    }
    t.join().unwrap();
    assert!(client::request(&mut c, "GET", "/", &[], Body::Empty).is_err());
    assert!(client::request(&mut c, "GET", "/a b", &[], Body::Empty).is_err());
}

#[test]
fn slowloris_is_cut_off_by_head_timeout() {
    // The head timeout (400 ms here) bounds the whole head, not each read: a client that
    // trickles a byte every 20 ms is answered 408 while it is still trickling. The writer
    // keeps going for 30 s and the read waits up to 20 s, both far past the timeout, so a
    // per-read timeout (never firing while bytes arrive) fails this without timing anything.
    let (mut c, t) = spawn_server(small_limits());
    let start = Instant::now();
    let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut c = c.try_clone().unwrap();
        let gave_up = gave_up.clone();
        thread::spawn(move || {
            for b in b"GET / HTTP/1.1\r\nX-Slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'))
            {
                if c.write_all(&[*b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
                if start.elapsed() > Duration::from_secs(30) {
                    gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
            }
        })
    };
    let mut out = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = c.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(
        !gave_up.load(std::sync::atomic::Ordering::SeqCst),
        "the 408 came only after the client stopped sending"
    );
    t.join().unwrap();
    let _ = c.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
}

#[test]
fn idle_keep_alive_closes_silently() {
    let (mut c, t) = spawn_server(small_limits());
    {
        let mut r = client::request(&mut c, "GET", "/", &[], Body::Empty).unwrap();
        io::copy(&mut r.body, &mut io::sink()).unwrap();
    }
    let start = Instant::now();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    assert!(out.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(300));
    t.join().unwrap();
}

#[test]
fn body_read_timeout_is_408() {
    let (mut c, t) = spawn_server(small_limits());
    c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_error_envelope(&String::from_utf8_lossy(&out), 408);
    t.join().unwrap();
}

#[test]
fn expect_100_continue() {
    let (mut c, t) = spawn_server(Limits::default());
    c.write_all(b"POST /e HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 25];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"data").unwrap();
    let mut r = BufReader::new(&mut c);
    let head = client::read_head(&mut r, 4096).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let mut body = [0u8; 15];
    r.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"POST /e [] data");
    drop(r);
    // Handler that never reads: no 100, response closes the connection.
    c.write_all(b"POST /noread HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n")
            && out.contains("Connection: close")
            && out.ends_with("skipped"),
        "{out}"
    );
    t.join().unwrap();
}

/// An answer given before the request is whole (here a NUL in the path, refused from the head
/// alone) leaves the connection open for the rest of the request: the server lingers, reading
/// and dropping it, instead of closing at once. A client (or a proxy in front of the daemon)
/// still sending its body would otherwise fail its write (EPIPE, or a TCP reset) and could lose
/// the answer.
#[test]
fn an_early_error_reaches_a_client_still_sending() {
    use std::io::{Read, Write};
    let (server_end, mut c) = UnixStream::pair().expect("pair");
    let server = thread::spawn(move || {
        serve_connection(Box::new(server_end), &Limits::default(), &echo);
    });
    let body = vec![b'x'; 256 * 1024];
    let head = format!(
        "PUT /1.0/x%00y HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).expect("head");
    // The server answers from the head; the body comes after that answer was sent.
    thread::sleep(Duration::from_millis(200));
    c.write_all(&body).expect("the body after an early answer");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    c.read_to_end(&mut out).expect("read the answer");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("NUL in path"), "{text}");
    server.join().expect("server");
}
