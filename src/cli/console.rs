//! `console`: attach to an instance's console (`ctrl+a q` detaches), or show its log.
//!
//! The daemon hands out websockets "control" and "0" (api: POST .../console); detaching closes
//! the control socket, which ends the session on the server, as with lxc. The server closing
//! "0" (the container stopped) ends the client too, without waiting for a key.

use std::io::{Read, Write};
use std::thread;

use argh::FromArgs;

use super::{fail, instance_path, parse, term, CmdResult};
use crate::api::StringMap;
use crate::http::ws::Message;

#[derive(FromArgs, Debug)]
#[argh(help_triggers("-h", "--help"))]
/// Attach to instance consoles: bivy console NAME [--show-log]
pub struct ConsoleArgs {
    #[argh(positional)]
    /// instance name
    name: String,
    #[argh(switch)]
    /// retrieve the instance's console log
    show_log: bool,
}

/// Where ctrl+a q is in `buf`, given whether the previous read ended on ctrl+a.
/// Returns (bytes to forward before the escape, detach?, ends on a pending ctrl+a).
fn scan_escape(buf: &[u8], mut pending: bool) -> (Vec<u8>, bool, bool) {
    let mut out = Vec::with_capacity(buf.len());
    for &b in buf {
        if pending {
            pending = false;
            if b == b'q' {
                return (out, true, false);
            }
            out.push(1);
        }
        if b == 1 {
            pending = true;
        } else {
            out.push(b);
        }
    }
    (out, false, pending)
}

pub fn run(args: &[String]) -> CmdResult {
    let a: ConsoleArgs = parse(&["bivy console"], args)?;
    let (c, name) = super::target(&a.name)?;
    let name = name.to_string();
    if a.show_log {
        let log = c.download(&format!("{}/console", instance_path(&name)), |mut resp| {
            let mut buf = Vec::new();
            resp.body.read_to_end(&mut buf)?;
            Ok(buf)
        })?;
        std::io::stdout()
            .write_all(&log)
            .map_err(|e| super::Fail::Error(e.to_string()))?;
        return Ok(0);
    }
    let (w, h) = term::size().unwrap_or((80, 24));
    let req = serde_json::json!({"width": w, "height": h, "type": "console"});
    let reply = c.query(
        "POST",
        &format!("{}/console", instance_path(&name)),
        Some(&req),
        None,
    )?;
    let Some(op_id) = reply.operation_id() else {
        return fail("the server did not start a console operation");
    };
    let op: serde_json::Value = reply.metadata()?;
    let fds: StringMap = crate::client::operation_fds(&op);
    let (Some(sc), Some(s0)) = (fds.get("control"), fds.get("0")) else {
        return fail("the console operation has no websockets");
    };
    let (ctx, mut crx) = c.operation_websocket(&op_id, sc)?;
    let (tx0, mut rx0) = c.operation_websocket(&op_id, s0)?;
    thread::spawn(move || while crx.recv().is_ok() {});
    println!("To detach from the console, press: <ctrl>+a q\r");
    let raw = if super::is_tty(0) {
        term::RawMode::enable().ok()
    } else {
        None
    };
    // The output's end (the server closed "0") wakes the input loop: the pipe's write end goes
    // with the output thread.
    let (ended, ending) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| super::Fail::Error(format!("pipe: {e}")))?;
    let output = thread::spawn(move || {
        let _ending = ending;
        let mut out = std::io::stdout();
        while let Ok(Message::Binary(b)) = rx0.recv() {
            if out.write_all(&b).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 4096];
    let mut pending = false;
    loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(ended.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            break;
        }
        if !ready(&fds[0]) {
            continue;
        }
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (data, detach, p) = scan_escape(&buf[..n], pending);
        pending = p;
        if !data.is_empty() && tx0.send_binary(&data).is_err() {
            break;
        }
        if detach {
            break;
        }
    }
    // Detach: close the control socket (the server ends the session), then wait for it.
    let _ = ctx.close(1000);
    let done = c.wait_operation_final(&op_id);
    drop(raw);
    tx0.shutdown();
    let _ = output.join();
    done?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::scan_escape;

    #[test]
    fn escape_sequence() {
        assert_eq!(scan_escape(b"ab", false), (b"ab".to_vec(), false, false));
        assert_eq!(scan_escape(b"a\x01q", false), (b"a".to_vec(), true, false));
        assert_eq!(scan_escape(b"a\x01", false), (b"a".to_vec(), false, true));
        assert_eq!(scan_escape(b"q", true), (vec![], true, false));
        assert_eq!(scan_escape(b"x", true), (b"\x01x".to_vec(), false, false));
    }
}
