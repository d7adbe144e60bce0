//! `exec`: run a command in an instance over the exec websockets (api §1.6).
//!
//! Non-interactive: stdin -> fd "0" (binary frames, an empty text frame at EOF), fd "1" -> stdout,
//! fd "2" -> stderr, signals forwarded on "control". Interactive (a pty, when stdin and stdout are
//! terminals or with `-t`): the local terminal goes raw, fd "0" carries both directions, and the
//! window size is sent at start and on SIGWINCH. The exit code is the operation's `metadata.return`.

use std::io::{Read, Write};
use std::thread;

use argh::FromArgs;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;

use super::{fail, instance_path, parse, term, CmdResult, Fail};
use crate::api::{InstanceExecPost, StringMap};
use crate::client::{operation_return, Client};
use crate::http::ws::{Message, Receiver, Sender};

#[derive(FromArgs, Debug)]
#[argh(help_triggers("-h", "--help"))]
/// Execute commands in instances: bivy exec NAME [flags] [--] COMMAND...
pub struct ExecArgs {
    #[argh(positional)]
    /// instance name, then the command
    words: Vec<String>,
    #[argh(option)]
    /// environment variable to set (e.g. HOME=/home/foo)
    env: Vec<String>,
    #[argh(option)]
    /// directory to run the command in (default /root)
    cwd: Option<String>,
    #[argh(option)]
    /// user ID to run the command as (default 0)
    user: Option<u32>,
    #[argh(option)]
    /// group ID to run the command as (default 0)
    group: Option<u32>,
    #[argh(option)]
    /// override the terminal mode (auto, interactive or non-interactive)
    mode: Option<String>,
    #[argh(switch, short = 't')]
    /// force pseudo-terminal allocation
    force_interactive: bool,
    #[argh(switch, short = 'T')]
    /// disable pseudo-terminal allocation
    force_noninteractive: bool,
    #[argh(switch, short = 'n')]
    /// disable stdin (reads from /dev/null)
    disable_stdin: bool,
}

/// Split `exec` argv: flags and the instance name before `--`, the command after it (or, without
/// `--`, the words after the instance name).
pub fn split(args: Vec<String>) -> Result<(ExecArgs, String, Vec<String>), Fail> {
    let (head, tail) = match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (args, Vec::new()),
    };
    let a: ExecArgs = parse(&["bivy exec"], &head)?;
    let mut words = a.words.clone();
    if words.is_empty() {
        return fail("Missing instance name");
    }
    let name = words.remove(0);
    words.extend(tail);
    if words.is_empty() {
        return fail("Missing command");
    }
    Ok((a, name, words))
}

const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGABRT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
];

fn resize_message(w: u16, h: u16) -> String {
    serde_json::json!({"command": "window-resize", "args": {"width": w.to_string(), "height": h.to_string()}})
        .to_string()
}

fn signal_message(sig: i32) -> String {
    serde_json::json!({"command": "signal", "signal": sig}).to_string()
}

/// Copy websocket binary frames to `out` until a text frame (EOF barrier), a close or an error.
/// Returns false when the local side could not be written (e.g. a closed pipe).
fn pump_out(mut rx: Receiver, mut out: impl Write) -> bool {
    while let Ok(Message::Binary(b)) = rx.recv() {
        if out.write_all(&b).and_then(|_| out.flush()).is_err() {
            return false;
        }
    }
    true
}

/// Copy stdin to the websocket as binary frames, then (when `barrier`) send the empty text frame.
fn pump_in(tx: Sender, disabled: bool, barrier: bool) {
    if !disabled {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send_binary(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
    if barrier {
        let _ = tx.send_text("");
    }
}

/// Read and drop everything (keeps pings answered).
fn drain(mut rx: Receiver) {
    while let Ok(m) = rx.recv() {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
}

pub fn run(args: Vec<String>) -> CmdResult {
    let (a, name, command) = split(args)?;
    let (client, name) = super::target(&name)?;
    let name = name.to_string();
    let interactive = match a.mode.as_deref() {
        Some("interactive") => true,
        Some("non-interactive") => false,
        Some("auto") | None => {
            if a.force_interactive {
                true
            } else if a.force_noninteractive {
                false
            } else {
                super::is_tty(0) && super::is_tty(1)
            }
        }
        Some(other) => return fail(format!("Invalid mode \"{other}\"")),
    };
    let mut environment = StringMap::new();
    environment.insert(
        "TERM".into(),
        std::env::var("TERM").unwrap_or_else(|_| "dumb".into()),
    );
    for kv in &a.env {
        match kv.split_once('=') {
            Some((k, v)) => environment.insert(k.into(), v.into()),
            None => environment.insert(kv.clone(), std::env::var(kv).unwrap_or_default()),
        };
    }
    let (width, height) = if interactive {
        term::size().unwrap_or((80, 24))
    } else {
        (0, 0)
    };
    let req = InstanceExecPost {
        command,
        wait_for_websocket: true,
        interactive,
        environment,
        width: i64::from(width),
        height: i64::from(height),
        record_output: false,
        user: a.user.unwrap_or(0),
        group: a.group.unwrap_or(0),
        cwd: a.cwd.clone().unwrap_or_default(),
    };

    // Block the forwarded signals before any thread exists, so every thread inherits the mask
    // and they arrive only through the signalfd.
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(*s);
    }
    if interactive {
        mask.add(Signal::SIGWINCH);
    }
    let mut old_mask = SigSet::empty();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&mask),
        Some(&mut old_mask),
    );
    let io = Io {
        stdout: Box::new(std::io::stdout()),
        stderr: Box::new(std::io::stderr()),
        no_stdin: a.disable_stdin,
    };
    let result = run_blocked(&client, &name, req, interactive, io, &mask);
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old_mask),
        None,
    );
    result
}

/// Where the command's output goes (the terminal, or buffers in tests).
pub struct Io {
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
    pub no_stdin: bool,
}

fn run_blocked(
    c: &Client,
    name: &str,
    req: InstanceExecPost,
    interactive: bool,
    io: Io,
    mask: &SigSet,
) -> CmdResult {
    let Io {
        stdout,
        stderr,
        no_stdin,
    } = io;
    let reply = c.query(
        "POST",
        &format!("{}/exec", instance_path(name)),
        Some(&req),
        None,
    )?;
    let Some(op_id) = reply.operation_id() else {
        return fail("the server did not start an exec operation");
    };
    let op: serde_json::Value = reply.metadata()?;
    let fds: StringMap = crate::client::operation_fds(&op);
    let secret = |fd: &str| -> Result<String, Fail> {
        fds.get(fd)
            .cloned()
            .ok_or_else(|| Fail::Error(format!("the exec operation has no websocket \"{fd}\"")))
    };

    // The control socket first, as lxc does: the server starts the command once the data
    // sockets are connected, and a control socket that came after a quick command's end would
    // find the operation over (refused). Then the data sockets at once: over HTTPS each is a
    // TLS handshake, and the server does its half of them in parallel.
    let control = match fds.get("control") {
        Some(s) => Some(c.operation_websocket(&op_id, s)?),
        None => None,
    };
    let mut names = vec!["0"];
    if !interactive {
        names.extend(["1", "2"]);
    }
    let secrets: Vec<String> = names.iter().map(|n| secret(n)).collect::<Result<_, _>>()?;
    let mut sockets = thread::scope(|scope| {
        let handles: Vec<_> = secrets
            .iter()
            .map(|s| scope.spawn(|| c.operation_websocket(&op_id, s)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| crate::client::err("a websocket connection failed"))
            })
            .collect::<crate::client::Result<Vec<_>>>()
    })?
    .into_iter();
    let (tx0, rx0) = sockets.next().expect("fd 0 was asked for");
    let outs = match (sockets.next(), sockets.next()) {
        (Some(o), Some(e)) => Some((o, e)),
        _ => None,
    };
    // Wait for the end of the operation from now on, over a connection of its own, so its
    // handshake overlaps the command instead of following it.
    let waiter = {
        let (c, id) = (c.clone(), op_id.clone());
        thread::spawn(move || c.wait_operation_final(&id))
    };

    // Signals -> control messages.
    if let Some((ctx, crx)) = control {
        thread::spawn(move || drain(crx));
        if let Ok(sfd) = SignalFd::new(mask) {
            thread::spawn(move || {
                while let Ok(Some(info)) = sfd.read_signal() {
                    let sig = info.ssi_signo as i32;
                    let msg = if sig == Signal::SIGWINCH as i32 {
                        match term::size() {
                            Some((w, h)) => resize_message(w, h),
                            None => continue,
                        }
                    } else {
                        signal_message(sig)
                    };
                    if ctx.send_text(&msg).is_err() {
                        break;
                    }
                }
            });
        }
    }

    let _raw = if interactive && super::is_tty(0) {
        term::RawMode::enable().ok()
    } else {
        None
    };
    {
        let tx = tx0.clone();
        // A terminal session gets the barrier too when its stdin reaches EOF (piped input:
        // the server hangs the terminal up, as lxc and LXD do); never when stdin is not read.
        thread::spawn(move || pump_in(tx, no_stdin, !interactive || !no_stdin));
    }
    match outs {
        None => {
            // Interactive: fd 0 carries the pty output back. Once the server's write barrier
            // arrives, close our direction too: the server finishes the operation only when both
            // directions of the pty mirror are done (the local stdin may never reach EOF).
            let _ = pump_out(rx0, stdout);
            let _ = tx0.close(1000);
        }
        Some(((tx1, rx1), (tx2, rx2))) => {
            thread::spawn(move || drain(rx0));
            let t1 = thread::spawn(move || pump_out(rx1, stdout));
            let t2 = thread::spawn(move || pump_out(rx2, stderr));
            if !t1.join().unwrap_or(true) {
                // Our stdout is gone (`bivy exec c -- yes | head -1`): stop like a process killed
                // by SIGPIPE. The server sees the control socket close and kills the command.
                return Err(Fail::Exit(141));
            }
            let _ = t2.join();
            let _ = tx1.close(1000);
            let _ = tx2.close(1000);
        }
    }
    let done = waiter
        .join()
        .unwrap_or_else(|_| crate::client::err("waiting for the exec operation failed"));
    drop(_raw);
    let _ = tx0.close(1000);
    let done = done?;
    let code = operation_return(&done);
    if done.status_code != crate::api::status::SUCCESS {
        // Like lxc: the error, and the command's exit code when there is one (127: not found).
        eprintln!(
            "Error: {}",
            if done.err.is_empty() {
                done.status.to_lowercase()
            } else {
                done.err.clone()
            }
        );
        return Err(Fail::Exit(code.filter(|c| *c != 0).unwrap_or(1)));
    }
    Ok(code.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn split_at_double_dash() {
        let (a, name, cmd) = split(s(&[
            "c1",
            "--env",
            "FOO=bar",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $FOO; exit 3",
        ]))
        .unwrap();
        assert_eq!(name, "c1");
        assert_eq!(cmd, s(&["sh", "-c", "echo $FOO; exit 3"]));
        assert_eq!(a.env, s(&["FOO=bar"]));
        assert_eq!(a.cwd.as_deref(), Some("/tmp"));
    }

    #[test]
    fn split_without_double_dash_and_flags_after_dash() {
        let (_, name, cmd) = split(s(&["c1", "ls"])).unwrap();
        assert_eq!((name.as_str(), cmd), ("c1", s(&["ls"])));
        let (a, name, cmd) = split(s(&["-T", "c1", "--", "ls", "-la", "--", "x"])).unwrap();
        assert!(a.force_noninteractive);
        assert_eq!((name.as_str(), cmd), ("c1", s(&["ls", "-la", "--", "x"])));
        assert!(split(s(&["c1"])).is_err());
    }

    #[test]
    fn control_messages_use_string_sizes() {
        assert_eq!(
            resize_message(80, 24),
            r#"{"args":{"height":"24","width":"80"},"command":"window-resize"}"#
        );
        assert_eq!(signal_message(15), r#"{"command":"signal","signal":15}"#);
    }

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn envelope(kind: &str, code: u16, metadata: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": kind, "status": if code == 100 { "Operation created" } else { "Success" }, "status_code": code,
            "operation": if kind == "async" { "/1.0/operations/op1" } else { "" },
            "error_code": 0, "error": "", "metadata": metadata}))
        .unwrap()
    }

    fn fake_exec_handler(req: &mut crate::http::Request, seen: &Shared) -> crate::http::Response {
        use crate::http::ws::{self, Role};
        use crate::http::Response;
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/1.0/instances/c1/exec") => {
                let body = req.read_body(1 << 20).unwrap_or_default();
                seen.clone().write_all(&body).unwrap();
                let interactive = serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|v| v["interactive"] == true);
                let fds = if interactive {
                    serde_json::json!({"0": "pty", "control": "sc"})
                } else {
                    serde_json::json!({"0": "s0", "1": "s1", "2": "s2", "control": "sc"})
                };
                let op = serde_json::json!({"id": "op1", "class": "websocket", "status": "Running", "status_code": 103,
                    "metadata": {"fds": fds}});
                Response::json(202, envelope("async", 100, op))
                    .header("Location", "/1.0/operations/op1")
            }
            ("GET", "/1.0/operations/op1/websocket") => {
                let secret = req.query("secret").unwrap_or("").to_string();
                let mut r = ws::accept(req);
                r.upgrade = Some(Box::new(move |stream| {
                    let Ok((tx, mut rx)) = ws::split(stream, Role::Server) else {
                        return;
                    };
                    match secret.as_str() {
                        "s1" => {
                            let _ = tx.send_binary(b"hi\n");
                            let _ = tx.send_text("");
                        }
                        "s2" => {
                            let _ = tx.send_binary(b"oops\n");
                            let _ = tx.send_text("");
                        }
                        "pty" => {
                            let _ = tx.send_binary(b"$ ");
                            let _ = tx.close(1000);
                        }
                        _ => {
                            while let Ok(m) = rx.recv() {
                                if matches!(m, Message::Close(_)) {
                                    break;
                                }
                            }
                        }
                    }
                }));
                r
            }
            ("GET", "/1.0/operations/op1/wait") => {
                let op = serde_json::json!({"id": "op1", "class": "websocket", "description": "Executing command",
                    "created_at": "", "updated_at": "", "status": "Success", "status_code": 200, "resources": null,
                    "metadata": {"return": 3}, "may_cancel": false, "err": "", "location": "none"});
                Response::json(200, envelope("sync", 200, op))
            }
            _ => Response::json(404, b"{}".to_vec()),
        }
    }

    /// Start the fake exec server on a unix socket in a fresh directory.
    fn fake_server(tag: &str) -> (Client, Shared, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("bivy-exec-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("unix.socket");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let seen = Shared::default();
        let seen2 = seen.clone();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let seen = seen2.clone();
                thread::spawn(move || {
                    let h = move |r: &mut crate::http::Request| fake_exec_handler(r, &seen);
                    crate::http::serve_connection(Box::new(s), &crate::http::Limits::default(), &h);
                });
            }
        });
        let c = Client::with_socket(sock);
        (c, seen, dir)
    }

    fn exec_with(c: &Client, interactive: bool) -> (i32, Shared, Shared) {
        let (out, err) = (Shared::default(), Shared::default());
        let req = InstanceExecPost {
            command: vec!["sh".into()],
            wait_for_websocket: true,
            interactive,
            ..Default::default()
        };
        let io = Io {
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
            no_stdin: true,
        };
        let code = match run_blocked(c, "c1", req, interactive, io, &SigSet::empty()) {
            Ok(c) => c,
            Err(Fail::Error(e)) => panic!("exec failed: {e}"),
            Err(Fail::Exit(c)) => c,
        };
        (code, out, err)
    }

    #[test]
    fn exec_against_a_fake_server() {
        let (c, seen, dir) = fake_server("plain");
        let (code, out, err) = exec_with(&c, false);
        assert_eq!(code, 3);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(err.0.lock().unwrap().as_slice(), b"oops\n");
        let body: serde_json::Value = serde_json::from_slice(&seen.0.lock().unwrap()).unwrap();
        assert_eq!(body["wait-for-websocket"], true);
        assert_eq!(body["interactive"], false);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn interactive_exec_uses_one_stream() {
        let (c, _seen, dir) = fake_server("pty");
        let (code, out, err) = exec_with(&c, true);
        assert_eq!(code, 3);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"$ ");
        assert!(err.0.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
