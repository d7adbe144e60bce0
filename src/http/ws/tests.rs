//! WebSocket tests: handshake vectors and validation, framing limits, protocol violations,
//! end-to-end echo through the server loop, thread safety of the halves, and a mutation fuzz.

use super::*;
use crate::http::{serve_connection, Limits};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

#[test]
fn base64_rfc4648_vectors() {
    let v: &[(&str, &str)] = &[
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, enc) in v {
        assert_eq!(base64_encode(plain.as_bytes()), *enc);
        assert_eq!(base64_decode(enc).as_deref(), Some(plain.as_bytes()));
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(base64_decode(&base64_encode(&all)), Some(all));
    for bad in [
        "Zg=", "Zg===", "Z===", "Zh==", "Zm9=", "Zm=v", "Zg==Zg==", "Zm9v!A==", "Zm9\n",
    ] {
        assert_eq!(base64_decode(bad), None, "{bad}");
    }
}

#[test]
fn halves_are_thread_safe() {
    fn sender<T: Clone + Send + Sync + 'static>() {}
    fn receiver<T: Send + 'static>() {}
    sender::<Sender>();
    receiver::<Receiver>();
}

#[test]
fn rfc6455_accept_example() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

fn ws_request(headers: &[(&str, &str)], method: &str) -> Request {
    Request::new(
        method.into(),
        "/ws".into(),
        vec![],
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Box::new(io::empty()),
    )
}

#[test]
fn accept_validation() {
    let good = [
        ("Host", "unix.socket"),
        ("Origin", "ws+unix://localhost"),
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let r = accept(&ws_request(&good, "GET"));
    assert_eq!(r.status, 101);
    assert!(r.headers.contains(&(
        "Sec-WebSocket-Accept".into(),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
    )));
    assert_eq!(accept(&ws_request(&good, "POST")).status, 400);
    for (drop, replace) in [
        (2, None),
        (3, None),
        (4, None),
        (5, None),
        (3, Some(("Connection", "keep-alive"))),
        (5, Some(("Sec-WebSocket-Version", "8"))),
        (4, Some(("Sec-WebSocket-Key", "c2hvcnQ="))),
        (4, Some(("Sec-WebSocket-Key", "not base64 at all"))),
    ] {
        let mut h: Vec<(&str, &str)> = good.to_vec();
        h.remove(drop);
        if let Some(r) = replace {
            h.push(r);
        }
        assert_eq!(accept(&ws_request(&h, "GET")).status, 400, "{h:?}");
    }
}

/// Start an echo WebSocket server on one end of a socket pair; returns the other end.
fn echo_server() -> (UnixStream, thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        let handler = |req: &mut Request| {
            let mut resp = accept(req);
            if resp.status == 101 {
                resp.upgrade = Some(Box::new(|s: Box<dyn Stream>| {
                    let (tx, mut rx) = split(s, Role::Server).unwrap();
                    loop {
                        match rx.recv() {
                            Ok(Message::Text(t)) => tx.send_text(&t).unwrap(),
                            Ok(Message::Binary(b)) => tx.send_binary(&b).unwrap(),
                            Ok(Message::Close(_)) | Err(_) => break,
                        }
                    }
                }));
            }
            resp
        };
        serve_connection(Box::new(b), &Limits::default(), &handler);
    });
    (a, t)
}

#[test]
fn end_to_end_echo() {
    let (c, t) = echo_server();
    let (tx, mut rx) = connect(Box::new(c), "/1.0/operations/x/websocket?secret=s", &[]).unwrap();
    tx.send_text("hello").unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Text("hello".into()));
    tx.send_binary(&[0, 1, 2, 255]).unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Binary(vec![0, 1, 2, 255]));
    tx.send_text("").unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Text(String::new()));
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
    tx.send_binary(&big).unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Binary(big));
    // Fragmented text with a ping in the middle (the server pongs; our receiver ignores it).
    tx.send_raw_frame(OP_TEXT, b"hel", Some([1, 2, 3, 4]))
        .unwrap();
    tx.ping().unwrap();
    tx.send_raw_frame(0x80 | OP_CONT, b"lo!", Some([9, 8, 7, 6]))
        .unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Text("hello!".into()));
    // Multi-byte UTF-8 split across fragments is fine.
    let s = "héllo wörld".as_bytes();
    tx.send_raw_frame(OP_TEXT, &s[..2], Some([0; 4])).unwrap();
    tx.send_raw_frame(0x80 | OP_CONT, &s[2..], Some([0; 4]))
        .unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Text("héllo wörld".into()));
    // Close handshake initiated by us: the server replies and returns Close.
    tx.close(1000).unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Close(Some(1000)));
    assert!(tx.send_text("late").is_err());
    assert!(rx.recv().is_err());
    t.join().unwrap();
}

#[test]
fn connect_refused_and_bad_accept() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let _ = b.read(&mut buf).unwrap();
        b.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n").unwrap();
    });
    assert!(connect(Box::new(a), "/x", &[]).is_err());
    t.join().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        serve_connection(Box::new(b), &Limits::default(), &|_req: &mut Request| {
            Response::new(404)
        })
    });
    let e = connect(Box::new(a), "/x", &[]).err().unwrap();
    assert!(e.to_string().contains("404"), "{e}");
    t.join().unwrap();
}

/// A receiver over one end of a pair; the raw other end plays the peer.
fn raw_pair(role: Role) -> (Sender, Receiver, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (tx, rx) = split(Box::new(a), role).unwrap();
    (tx, rx, b)
}

fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    f
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

#[test]
fn server_masking_ping_and_close() {
    let (_tx, mut rx, mut peer) = raw_pair(Role::Server);
    // RFC 6455 5.7 example: masked "Hello".
    peer.write_all(&[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ])
    .unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Text("Hello".into()));
    // Empty text frame.
    peer.write_all(&masked_frame(0x81, b"")).unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Text(String::new()));
    // Ping is answered with an unmasked pong carrying the payload.
    peer.write_all(&masked_frame(0x89, b"pi")).unwrap();
    peer.write_all(&masked_frame(0x8a, b"ignored pong"))
        .unwrap();
    peer.write_all(&masked_frame(0x82, &[7; 300])).unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Binary(vec![7; 300]));
    assert_eq!(read_n(&mut peer, 4), vec![0x8a, 0x02, b'p', b'i']);
    // Close: we reply with the same code and report it.
    peer.write_all(&masked_frame(0x88, &[0x03, 0xe9, b'b', b'y', b'e']))
        .unwrap();
    assert_eq!(rx.recv().unwrap(), Message::Close(Some(1001)));
    assert_eq!(read_n(&mut peer, 4), vec![0x88, 0x02, 0x03, 0xe9]);
}

fn expect_fail(role: Role, input: &[u8], code: u16) {
    let (_tx, mut rx, mut peer) = raw_pair(role);
    peer.write_all(input).unwrap();
    let e = rx.recv().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let mut close = read_n(&mut peer, 2);
    assert_eq!(close[0], 0x88);
    if role == Role::Client {
        assert_eq!(close[1], 0x82, "client close must be masked");
        let m = read_n(&mut peer, 6);
        close = vec![m[4] ^ m[0], m[5] ^ m[1]];
    } else {
        assert_eq!(close[1], 0x02);
        close = read_n(&mut peer, 2);
    }
    assert_eq!(
        u16::from_be_bytes([close[0], close[1]]),
        code,
        "input {input:x?}"
    );
    assert!(rx.recv().is_err());
}

#[test]
fn protocol_violations() {
    // Unmasked frame to a server.
    expect_fail(Role::Server, &[0x81, 0x02, b'h', b'i'], 1002);
    // Masked frame to a client.
    expect_fail(Role::Client, &masked_frame(0x81, b"hi"), 1002);
    // Reserved bits, bad opcodes.
    expect_fail(Role::Server, &masked_frame(0xc1, b"hi"), 1002);
    expect_fail(Role::Server, &masked_frame(0x83, b"hi"), 1002);
    expect_fail(Role::Server, &masked_frame(0x8b, b"hi"), 1002);
    // Control frames: too long, fragmented.
    expect_fail(Role::Server, &masked_frame(0x89, &[0; 126]), 1002);
    expect_fail(Role::Server, &masked_frame(0x09, b""), 1002);
    // Continuation without start; new message inside a fragmented one.
    expect_fail(Role::Server, &masked_frame(0x80, b"x"), 1002);
    let mut two = masked_frame(0x01, b"a");
    two.extend(masked_frame(0x81, b"b"));
    expect_fail(Role::Server, &two, 1002);
    // Invalid UTF-8 text and close reason.
    expect_fail(Role::Server, &masked_frame(0x81, &[0xff, 0xfe]), 1007);
    expect_fail(Role::Client, &[0x81, 0x02, 0xc3, 0x28], 1007);
    expect_fail(Role::Server, &masked_frame(0x88, &[0x03, 0xe8, 0xff]), 1007);
    expect_fail(Role::Server, &masked_frame(0x88, &[0x03]), 1002);
    expect_fail(Role::Server, &masked_frame(0x88, &[0x03, 0xed]), 1002);
    // Oversized: a single frame, and a fragmented message growing past the limit.
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&((MAX_MESSAGE as u64) + 1).to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    expect_fail(Role::Server, &huge, 1009);
    let mut neg = vec![0x82, 0x7f];
    neg.extend_from_slice(&u64::MAX.to_be_bytes());
    expect_fail(Role::Client, &neg, 1002);
}

#[test]
fn fragmented_message_over_limit() {
    let (_tx, mut rx, mut peer) = raw_pair(Role::Client);
    let writer = thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        let mut head = vec![0x02, 0x7f];
        head.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
        let mut cont = vec![0x00, 0x7f];
        cont.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
        let _ = peer.write_all(&head).and_then(|_| peer.write_all(&chunk));
        for _ in 0..17 {
            if peer
                .write_all(&cont)
                .and_then(|_| peer.write_all(&chunk))
                .is_err()
            {
                break;
            }
        }
        peer
    });
    let e = rx.recv().unwrap_err();
    assert!(e.to_string().contains("too big"), "{e}");
    rx.sender().shutdown();
    drop(writer.join().unwrap());
}

#[test]
fn shutdown_wakes_blocked_receiver_and_senders_do_not_interleave() {
    let (tx, mut rx, mut peer) = raw_pair(Role::Server);
    let t = thread::spawn(move || rx.recv());
    thread::sleep(Duration::from_millis(50));
    // Many threads sending: every frame arrives whole.
    let mut hs = Vec::new();
    for i in 0..4u8 {
        let tx = tx.clone();
        hs.push(thread::spawn(move || {
            for _ in 0..50 {
                tx.send_binary(&vec![i; 70_000]).unwrap();
            }
        }));
    }
    let reader = thread::spawn(move || {
        for _ in 0..200 {
            let h = read_n(&mut peer, 10);
            assert_eq!(&h[..2], &[0x82, 0x7f]);
            let n = u64::from_be_bytes(h[2..10].try_into().unwrap()) as usize;
            let body = read_n(&mut peer, n);
            assert!(body.iter().all(|&b| b == body[0]));
        }
        peer
    });
    for h in hs {
        h.join().unwrap();
    }
    let _peer = reader.join().unwrap();
    tx.shutdown();
    assert!(t.join().unwrap().is_err());
}

#[test]
fn fuzz_ws_frame_deterministic() {
    let tokens: &[&[u8]] = &[
        &[0x81],
        &[0x01],
        &[0x80],
        &[0x88, 0x02, 0x03, 0xe8],
        &[0x89, 0x00],
        &[0x8a, 0x80, 0, 0, 0, 0],
        &[0x7e, 0xff, 0xff],
        &[0x7f, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0],
        &[0xc3, 0x28],
        &[0xf0, 0x9f, 0x98, 0x80],
        &[0x70],
        &[0x00, 0x00, 0x00, 0x00],
    ];
    crate::http::fuzz::tests::fuzz_corpus_and_mutations(
        "ws_frame",
        0x2545_f491_4f6c_dd1d,
        tokens,
        fuzz_ws_frames,
    );
}
