//! Fuzzing entry point for the HTTP layer ([`fuzz_parse_request`], used by `tests/fuzz` and by a
//! deterministic mutation test here), and the mutation helpers the WebSocket fuzz test shares.

use std::io::{self, Read};
use std::time::Duration;

use super::body::{body_framing, Decoder, Framing};
use super::parse::{parse_request_head, HeadScanner};
use super::ws::{self, Message};
use super::{client, serve_connection, Body, Limits, Request, Response, SliceStream, Stream};

/// Fuzzing entry point: run `data` through the request head parser, the body decoders, the whole
/// server loop (with a handler that reads, skips or streams bodies and accepts WebSocket
/// upgrades) and the client response parser. Must never panic.
#[doc(hidden)]
pub fn fuzz_parse_request(data: &[u8]) {
    let limits = Limits {
        max_head: 8 * 1024,
        max_headers: 64,
        head_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        body_read_timeout: Duration::from_secs(5),
    };
    // The head parser alone.
    let mut sc = HeadScanner::default();
    let (used, done) = sc.feed(data);
    if done {
        if let Ok(h) = parse_request_head(&sc.head, &limits) {
            let _ = body_framing(&h.headers);
        }
        let _ = client::parse_response_head(&sc.head);
    }
    // The body decoders alone, on what follows the head (or on everything).
    let rest = if done { &data[used..] } else { data };
    for framing in [
        Framing::Chunked,
        Framing::Length(rest.len() as u64 / 2 + 1),
        Framing::Eof,
    ] {
        let mut dec = Decoder::new(framing);
        let mut r = rest;
        let mut buf = [0u8; 61];
        for _ in 0..100_000 {
            match dec.read(&mut r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    // The server loop end to end.
    let handler = |req: &mut Request| -> Response {
        if req.is_websocket() {
            let resp = ws::accept(req);
            if resp.status == 101 {
                let mut resp = resp;
                resp.upgrade = Some(Box::new(|s: Box<dyn Stream>| {
                    if let Ok((_tx, mut rx)) = ws::split(s, ws::Role::Server) {
                        for _ in 0..64 {
                            if !matches!(rx.recv(), Ok(Message::Text(_) | Message::Binary(_))) {
                                break;
                            }
                        }
                    }
                }));
                return resp;
            }
            return resp;
        }
        if req.path.contains("skip") {
            return Response::new(204);
        }
        let body = match req.read_body(1 << 16) {
            Ok(b) => b,
            Err(_) => return Response::new(413),
        };
        if req.path.contains("stream") {
            return Response::new(200).body(Body::Reader(Box::new(io::Cursor::new(body)), None));
        }
        Response::json(200, body)
    };
    serve_connection(Box::new(SliceStream::new(data.to_vec())), &limits, &handler);
    // The client response parser on the same bytes.
    let mut s = SliceStream::new(data.to_vec());
    if let Ok(mut resp) = client::request(&mut s, "GET", "/", &[], Body::Empty) {
        let _ = io::copy(&mut (&mut resp.body).take(1 << 20), &mut io::sink());
    };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny deterministic PRNG for the mutation test (no crate).
    struct XorShift(u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Mutate `seed` a few random ways (bit flips, byte insert/delete, splices of interesting
    /// tokens, truncation).
    fn mutate(rng: &mut XorShift, seed: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
        let mut d = seed.to_vec();
        for _ in 0..1 + rng.below(6) {
            match rng.below(7) {
                0 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    d[i] ^= 1 << rng.below(8);
                }
                1 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    d[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(d.len() + 1);
                    d.insert(i, rng.next() as u8);
                }
                3 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    let n = rng.below(d.len() - i).min(16);
                    d.drain(i..i + n);
                }
                4 => {
                    let i = rng.below(d.len() + 1);
                    let t = tokens[rng.below(tokens.len())];
                    d.splice(i..i, t.iter().copied());
                }
                5 => {
                    let n = rng.below(d.len() + 1);
                    d.truncate(n);
                }
                _ => {
                    if !d.is_empty() {
                        let a = rng.below(d.len());
                        let b = rng.below(d.len());
                        let (lo, hi) = (a.min(b), a.max(b));
                        let copy = d[lo..hi].to_vec();
                        let at = rng.below(d.len() + 1);
                        d.splice(at..at, copy);
                    }
                }
            }
        }
        d
    }

    pub(crate) fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(target);
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            out.push(std::fs::read(p).unwrap());
        }
        assert!(!out.is_empty(), "empty corpus {dir:?}");
        out
    }

    /// Where a failing input of the mutation tests is saved: `$BIVY_FUZZ_ARTIFACTS` or
    /// `target/fuzz-artifacts`, in a directory named after the target.
    fn artifact_dir(target: &str) -> std::path::PathBuf {
        std::env::var_os("BIVY_FUZZ_ARTIFACTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-artifacts")
            })
            .join(target)
    }

    /// Run `target` on one input; if it panics, save the input (its path is printed) and let
    /// the panic go on.
    fn run_one(name: &str, what: &str, input: &[u8], target: fn(&[u8])) {
        let r = std::panic::catch_unwind(|| target(input));
        if let Err(panic) = r {
            let dir = artifact_dir(name);
            let path = dir.join(format!("stable-crash-{what}"));
            match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
                Ok(()) => eprintln!(
                    "fuzz {name}: input {what} panics; reproducer saved in {} \
                     (BIVY_FUZZ_INPUT={} cargo test --lib fuzz_{name}_deterministic)",
                    path.display(),
                    path.display()
                ),
                Err(e) => eprintln!("fuzz {name}: input {what} panics; cannot save it: {e}"),
            }
            std::panic::resume_unwind(panic);
        }
    }

    /// The mutation test of fuzz target `name` (its seeds in `tests/fuzz/corpus/NAME`): `target`
    /// on every seed, then on mutations of random seeds drawn from a PRNG started at `rng_seed`
    /// (so a failure replays exactly): `$BIVY_FUZZ_ITERS` of them (default 3000), or as many as
    /// fit in `$BIVY_FUZZ_SECONDS` when that is set (`cargo xtask fuzz` without nightly).
    /// `$BIVY_FUZZ_INPUT=FILE` runs only that file (a reproducer, from here or from libFuzzer).
    /// A panicking input is saved (see [`artifact_dir`]); the count of inputs run is printed.
    pub(crate) fn fuzz_corpus_and_mutations(
        name: &str,
        rng_seed: u64,
        tokens: &[&[u8]],
        target: fn(&[u8]),
    ) {
        if let Some(file) = std::env::var_os("BIVY_FUZZ_INPUT") {
            let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
            target(&input);
            return;
        }
        let seeds = corpus(name);
        let t = std::time::Instant::now();
        let mut rng = XorShift(rng_seed);
        for (i, s) in seeds.iter().enumerate() {
            run_one(name, &format!("seed{i}"), s, target);
        }
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let seconds = env("BIVY_FUZZ_SECONDS");
        let iters =
            env("BIVY_FUZZ_ITERS").unwrap_or(if seconds.is_some() { u64::MAX } else { 3000 });
        let mut n = 0u64;
        while n < iters {
            if seconds.is_some_and(|s| n.is_multiple_of(64) && t.elapsed().as_secs() >= s) {
                break;
            }
            let seed = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed, tokens);
            run_one(name, &format!("mutation{n}"), &input, target);
            n += 1;
        }
        eprintln!(
            "fuzz {name}: {} inputs ({} seeds, {n} mutations) in {:.1}s",
            seeds.len() as u64 + n,
            seeds.len(),
            t.elapsed().as_secs_f64()
        );
    }

    #[test]
    fn fuzz_http_request_deterministic() {
        let tokens: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b"\0",
            b" ",
            b":",
            b"%",
            b"%zz",
            b"?",
            b"&",
            b"=",
            b"+",
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: 18446744073709551616\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\n\r\n",
            b"Expect: 100-continue\r\n",
            b"Connection: close\r\n",
            b"Upgrade: websocket\r\n",
            b"HTTP/1.0",
            b"HTTP/9.9",
            b"\x81\x85",
            b"\x88\x80",
            b"GET /stream HTTP/1.1\r\n\r\n",
        ];
        fuzz_corpus_and_mutations(
            "http_request",
            0x9e37_79b9_7f4a_7c15,
            tokens,
            fuzz_parse_request,
        );
    }
}
