//! `POST /1.0/instances/NAME/exec`: a websocket operation per LXD's protocol.
//!
//! Non-interactive: sockets "0", "1", "2" (+ optional "control"); data in binary frames, an empty
//! text frame marks the end of a stream. Interactive: socket "0" mirrors a pty allocated inside
//! the container, plus "control" for window-resize and signals. The exit code is the operation's
//! `metadata.return`. A client that goes away mid-stream gets its command killed.
//!
//! The command starts once "0", "1" and "2" are connected; "control" is taken whenever it comes
//! (pylxd never connects it). After the command, "0" and "control" are closed; "1" and "2" are
//! left for the client to close (answered), for at most [`LINGER`], while the operation ends.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::super::request::json;
use super::super::response::{self, Error, Result};
use super::super::Daemon;
use crate::api::{self, StringMap};
use crate::http::{ws, Request, Response, Stream};
use crate::instance::config;
use crate::instance::operations::{secret, Class, Op};
use crate::runtime::{self, State};
use crate::util::lock;
use crate::util::pool::Joinable;

/// Time the client has to connect the required websockets (LXD: 5 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn default_env(uid: u32) -> StringMap {
    let mut e = StringMap::new();
    e.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    e.insert("LANG".into(), "C.UTF-8".into());
    if uid == 0 {
        e.insert("HOME".into(), "/root".into());
        e.insert("USER".into(), "root".into());
    }
    e
}

pub fn exec(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    let body: api::InstanceExecPost = json(req)?;
    let trace = crate::util::trace::Steps::new("exec", name);
    let rec = crate::instance::view::record(d, name)?;
    if body.command.is_empty() {
        return Err(Error::BadRequest("Command is empty".into()));
    }
    // (uid_t)-1 is no id: set*id would leave the command root's.
    if body.user == u32::MAX || body.group == u32::MAX {
        return Err(Error::BadRequest(
            "Invalid user or group: 4294967295 is no id".into(),
        ));
    }
    match runtime::state(&d.run_dir(name)) {
        Ok(State::Running { frozen: false, .. }) => {}
        Ok(State::Running { frozen: true, .. }) => {
            return Err(Error::BadRequest("Instance is frozen".into()))
        }
        _ => return Err(Error::BadRequest("Instance is not running".into())),
    }
    let (ec, _) = {
        let db = d.db.lock().expect("db lock");
        config::expand(&rec.profiles, &db.data.profiles, &rec.config, &rec.devices)
    };
    let mut env = default_env(body.user);
    for (k, v) in &ec {
        if let Some(var) = k.strip_prefix("environment.") {
            env.insert(var.to_string(), v.clone());
        }
    }
    env.extend(body.environment.clone());
    let cwd = if body.cwd.is_empty() {
        env.get("HOME").cloned().unwrap_or_else(|| "/".into())
    } else {
        body.cwd.clone()
    };
    let spec = runtime::ExecSpec {
        argv: body.command.clone(),
        env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        cwd,
        uid: body.user,
        gid: body.group,
        pty: body
            .interactive
            .then(|| (clamp(body.width, 80), clamp(body.height, 24))),
    };
    let mut resources = BTreeMap::new();
    resources.insert("containers".into(), vec![format!("/1.0/containers/{name}")]);
    resources.insert("instances".into(), vec![format!("/1.0/instances/{name}")]);
    let run_dir = d.run_dir(name);
    let log_dir = d.log_dir(name);
    if !body.wait_for_websocket {
        let meta =
            serde_json::json!({"command": body.command, "environment": env, "interactive": false});
        let record = body.record_output;
        let name = name.to_string();
        let op = d.ops.start(
            Class::Task,
            "Executing command",
            resources,
            Some(meta),
            vec![],
            move |op| run_detached(&op, &run_dir, &log_dir, &name, &spec, record),
        );
        return Ok(response::operation(&op.to_api()));
    }
    let mut fds = serde_json::Map::new();
    let names: &[&str] = if body.interactive {
        &["0", "control"]
    } else {
        &["0", "1", "2", "control"]
    };
    let mut secrets = BTreeMap::new();
    for n in names {
        let s = secret();
        fds.insert((*n).to_string(), serde_json::json!(s));
        secrets.insert((*n).to_string(), s);
    }
    let meta = serde_json::json!({"fds": fds, "command": body.command, "environment": env, "interactive": body.interactive});
    let all: Vec<String> = secrets.values().cloned().collect();
    trace.step("request checked");
    let op = d.ops.start(
        Class::Websocket,
        "Executing command",
        resources,
        Some(meta),
        all,
        move |op| {
            let r = run_attached(&op, &run_dir, &spec, &secrets, &trace);
            trace.step("done");
            r
        },
    );
    Ok(response::operation(&op.to_api()))
}

fn clamp(v: i64, default: u16) -> u16 {
    if v <= 0 {
        default
    } else {
        u16::try_from(v).unwrap_or(u16::MAX)
    }
}

/// A command that could not be started: a missing program is LXD's "Command not found" with
/// `return` 127 (what `lxc exec` exits with), one that cannot be executed "Command not
/// executable" with 126; anything else is the runtime's error.
fn start_cmd(op: &Op, r: runtime::Result<runtime::ExecProcess>) -> Result<runtime::ExecProcess> {
    r.map_err(|e| {
        if e.0.contains("ENOENT") {
            op.set_metadata("return", serde_json::json!(127));
            Error::NotFound("Command not found".into())
        } else if e.0.starts_with("exec ") && e.0.contains("EACCES") {
            op.set_metadata("return", serde_json::json!(126));
            Error::BadRequest("Command not executable".into())
        } else {
            Error::from(e)
        }
    })
}

/// `wait-for-websocket: false`: no I/O, optionally recorded to log files.
fn run_detached(
    op: &Arc<Op>,
    run_dir: &std::path::Path,
    log_dir: &std::path::Path,
    name: &str,
    spec: &runtime::ExecSpec,
    record: bool,
) -> Result<()> {
    let devnull = |w: bool| -> Result<OwnedFd> {
        std::fs::OpenOptions::new()
            .read(!w)
            .write(w)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| Error::Internal(e.to_string()))
    };
    let (out, err) = if record {
        std::fs::create_dir_all(log_dir).map_err(|e| Error::Internal(e.to_string()))?;
        let f = |ext: &str| -> Result<OwnedFd> {
            let p = log_dir.join(format!("exec_{}.{ext}", op.id));
            std::fs::File::create(&p)
                .map(OwnedFd::from)
                .map_err(|e| Error::Internal(format!("{}: {e}", p.display())))
        };
        (f("stdout")?, f("stderr")?)
    } else {
        (devnull(true)?, devnull(true)?)
    };
    let mut spec = spec.clone();
    spec.pty = None;
    let p = start_cmd(
        op,
        runtime::exec(
            run_dir,
            &spec,
            Some(runtime::ExecStdio {
                stdin: devnull(false)?,
                stdout: out,
                stderr: err,
            }),
        ),
    )?;
    let code = p.wait()?;
    if record {
        op.set_metadata(
            "output",
            serde_json::json!({
                "1": format!("/1.0/instances/{name}/logs/exec_{}.stdout", op.id),
                "2": format!("/1.0/instances/{name}/logs/exec_{}.stderr", op.id),
            }),
        );
    }
    op.set_metadata("return", serde_json::json!(code));
    Ok(())
}

/// Run `job` on a pooled thread (`util::pool`: an exec's five or six pumps and watchers are
/// started without a thread made for each).
fn go(job: impl FnOnce() + Send + 'static) -> Result<Joinable> {
    crate::util::pool::run("exec-io", job)
        .map_err(|e| Error::Internal(format!("start a thread: {e}")))
}

/// Pump a websocket's data into `w` until the empty-text barrier, a close or an error; dropping
/// `w` at the end closes the command's stdin (or leaves the pty alone).
fn pump_in(rx: ws::Receiver, w: impl Write + Send + 'static) -> Result<Joinable> {
    go(move || pump(rx, w))
}

/// [`pump_in`]'s loop, on the calling thread.
fn pump(mut rx: ws::Receiver, mut w: impl Write) {
    while let Ok(m) = rx.recv() {
        let data = match m {
            ws::Message::Binary(b) => b,
            ws::Message::Text(t) if !t.is_empty() => t.into_bytes(),
            _ => break,
        };
        if w.write_all(&data).is_err() {
            break;
        }
    }
}

/// Pump one readable fd into a websocket as binary frames, then the empty-text barrier.
fn pump_out(mut src: std::fs::File, tx: ws::Sender) -> Result<Joinable> {
    go(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send_binary(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EIO from a pty master when the slave side closed
            }
        }
        let _ = tx.send_text("");
    })
}

fn run_attached(
    op: &Arc<Op>,
    run_dir: &std::path::Path,
    spec: &runtime::ExecSpec,
    secrets: &BTreeMap<String, String>,
    trace: &crate::util::trace::Steps,
) -> Result<()> {
    let interactive = spec.pty.is_some();
    let required: Vec<String> = if interactive {
        vec![secrets["0"].clone()]
    } else {
        ["0", "1", "2"]
            .iter()
            .map(|k| secrets[*k].clone())
            .collect()
    };
    let mut socks = op
        .take_sockets(&required, CONNECT_TIMEOUT)
        .ok_or_else(|| Error::Internal("Timed out waiting for websockets to connect".into()))?;
    trace.step("websockets connected");
    // The control socket is optional (pylxd never connects it): the command does not wait for it.
    let control = socks.remove(&secrets["control"]);
    let split = |s: Box<dyn Stream>| {
        ws::split(s, ws::Role::Server).map_err(|e| Error::Internal(format!("websocket: {e}")))
    };
    let (tx0, rx0) = split(socks.remove(&secrets["0"]).expect("required socket"))?;
    let _ = tx0.ping();

    if interactive {
        let mut p = start_cmd(op, runtime::exec(run_dir, spec, None))?;
        let master = p
            .pty_master
            .take()
            .ok_or_else(|| Error::Internal("exec helper returned no pty".into()))?;
        let master_file = std::fs::File::from(master);
        let reader = master_file
            .try_clone()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let out = pump_out(reader, tx0.clone())?;
        let writer = master_file
            .try_clone()
            .map_err(|e| Error::Internal(e.to_string()))?;
        // The input's end (its barrier: stdin at EOF, or the client gone) hangs up the
        // terminal, as LXD's closing of the pty master does: `echo cmd | lxc exec -t c -- sh`
        // ends.
        let hangup = p.signaller();
        let inp = go(move || {
            let fd = writer.try_clone().map(OwnedFd::from).map_err(|_| ());
            pump(rx0, writer);
            // A moment for what was typed to be read (`echo cmd | lxc exec -t`: the command
            // runs, then the shell sees the hang-up).
            if hangup.ended_within(Duration::from_millis(250)) {
                return;
            }
            hangup.send(libc::SIGHUP);
            if let Ok(fd) = fd {
                // The foreground job of the session too (a shell's running command).
                let _ = crate::sys::pty_signal(fd.as_fd(), libc::SIGHUP);
            }
        })?;
        let resize = OwnedFd::from(master_file);
        let ctl = Control::start(
            op,
            &secrets["control"],
            control,
            Actions::exec(p.signaller(), Some(resize)),
        )?;
        let code = p.wait()?;
        out.join();
        op.set_metadata("return", serde_json::json!(code));
        tx0.end();
        inp.join();
        drop(ctl);
        return Ok(());
    }

    let (tx1, rx1) = split(socks.remove(&secrets["1"]).expect("required socket"))?;
    let (tx2, rx2) = split(socks.remove(&secrets["2"]).expect("required socket"))?;
    let _ = tx1.ping();
    let _ = tx2.ping();
    let pipe = || nix::unistd::pipe().map_err(|e| Error::Internal(format!("pipe: {e}")));
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let p = start_cmd(
        op,
        runtime::exec(
            run_dir,
            spec,
            Some(runtime::ExecStdio {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            }),
        ),
    )?;
    trace.step("command started");
    let killer = p.signaller();
    let o1 = pump_out(std::fs::File::from(out_r), tx1.clone())?;
    let o2 = pump_out(std::fs::File::from(err_r), tx2.clone())?;
    let stdin = std::fs::File::from(in_w);
    let inp = pump_in(rx0, stdin)?;
    // Anything read on an output socket while the command runs means the client went away: kill
    // the command (its pidfd makes a late kill harmless). After the command, the same read waits
    // for the client's close, which it answers (see LINGER).
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();
    let watch = |mut rx: ws::Receiver, k: runtime::Signaller| {
        let ended = ended_tx.clone();
        go(move || {
            if rx.recv().is_ok() {
                k.send(libc::SIGKILL);
            }
            rx.sender().shutdown();
            let _ = ended.send(());
        })
    };
    watch(rx1, killer.clone())?;
    watch(rx2, killer.clone())?;
    drop(ended_tx);
    // Dropped last, on every way out of here.
    let _outputs = Outputs {
        tx: [tx1, tx2],
        ended: Some(ended_rx),
    };
    let ctl = Control::start(
        op,
        &secrets["control"],
        control,
        Actions::exec(killer, None),
    )?;
    let code = p.wait()?;
    trace.step("command exited");
    o1.join();
    o2.join();
    trace.step("output sent");
    op.set_metadata("return", serde_json::json!(code));
    tx0.end();
    drop(ctl);
    inp.join();
    Ok(())
}

/// The output sockets ("1", "2") of a non-interactive exec whose command has ended (or whose
/// exec failed): left for the client to close while the operation ends, then closed after at
/// most [`LINGER`]; their watchers say when the client has closed each.
struct Outputs {
    tx: [ws::Sender; 2],
    ended: Option<std::sync::mpsc::Receiver<()>>,
}

impl Drop for Outputs {
    fn drop(&mut self) {
        let Some(ended) = self.ended.take() else {
            return;
        };
        let close = |tx: &[ws::Sender; 2]| {
            for t in tx {
                t.end();
            }
        };
        let tx = self.tx.clone();
        let lingered = go(move || {
            let deadline = std::time::Instant::now() + LINGER;
            for _ in 0..2 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if ended.recv_timeout(left).is_err() {
                    break;
                }
            }
            close(&tx);
        });
        if lingered.is_err() {
            close(&self.tx);
        }
    }
}

/// How long an output socket ("1", "2") of a finished non-interactive exec waits for the client
/// to close it. Its end was marked by the empty text frame; `lxc` and `bivy` close their side
/// when they read it. pylxd (ws4py) closes after it has seen the operation end, and its
/// `execute` returns only once its socket manager has woken up after that close: a socket the
/// server had already closed leaves the manager asleep in its 100 ms poll (each pylxd
/// `execute` then took 100 to 200 ms). A client that waits for the server's close instead
/// gets it after this long.
const LINGER: Duration = Duration::from_millis(250);

/// The control socket's loop (signals, window size): started at once when the client has
/// connected the socket, else when it does while the command runs or the console is attached
/// (LXD does not wait for it either; pylxd never connects it).
struct Control {
    slot: Arc<std::sync::Mutex<ControlSlot>>,
}

#[derive(Default)]
struct ControlSlot {
    ended: bool,
    running: Option<(ws::Sender, Joinable)>,
}

/// What a control socket's messages and its end do: a `signal` goes to the command, if any
/// (exec); `window-resize` resizes the pty, if any; the socket's close (the client's, or ours
/// as the session ends) runs `closed`: exec's command is killed, a console session ends.
struct Actions {
    killer: Option<runtime::Signaller>,
    pty: Option<OwnedFd>,
    closed: Box<dyn FnOnce() + Send>,
}

impl Actions {
    /// An exec's: signals go to the command, which is killed when the socket closes (LXD's
    /// semantics; its pidfd keeps a kill after the command was reaped harmless).
    fn exec(killer: runtime::Signaller, pty: Option<OwnedFd>) -> Actions {
        let k = killer.clone();
        Actions {
            killer: Some(killer),
            pty,
            closed: Box::new(move || k.send(libc::SIGKILL)),
        }
    }
}

impl Control {
    fn start(
        op: &Arc<Op>,
        secret: &str,
        connected: Option<Box<dyn Stream>>,
        actions: Actions,
    ) -> Result<Control> {
        let slot = Arc::new(std::sync::Mutex::new(ControlSlot::default()));
        if let Some(c) = connected {
            lock(&slot).running = control_loop(c, actions);
            return Ok(Control { slot });
        }
        let (op, secret, late) = (op.clone(), secret.to_string(), slot.clone());
        go(move || loop {
            let got = op.take_late_socket(&secret, Duration::from_millis(50));
            let mut s = lock(&late);
            if s.ended {
                return;
            }
            if let Some(c) = got {
                s.running = control_loop(c, actions);
                return;
            }
        })?;
        Ok(Control { slot })
    }
}

/// Dropped when the command has ended, the console was detached (or the session failed): the
/// control socket is closed and a late one is no longer taken.
impl Drop for Control {
    fn drop(&mut self) {
        let running = {
            let mut s = lock(&self.slot);
            s.ended = true;
            s.running.take()
        };
        if let Some((tx, h)) = running {
            tx.end();
            h.join();
        }
    }
}

/// Handle control messages (see [`Actions`]) until the socket closes.
fn control_loop(stream: Box<dyn Stream>, actions: Actions) -> Option<(ws::Sender, Joinable)> {
    let (tx, mut rx) = ws::split(stream, ws::Role::Server).ok()?;
    let Actions {
        killer,
        pty,
        closed,
    } = actions;
    let h = go(move || {
        loop {
            match rx.recv() {
                Ok(ws::Message::Text(t)) if !t.is_empty() => {
                    let Ok(c) = serde_json::from_slice::<api::InstanceExecControl>(t.as_bytes())
                    else {
                        continue;
                    };
                    match c.command.as_str() {
                        "signal" => {
                            if let Some(k) = &killer {
                                k.send(c.signal);
                            }
                        }
                        "window-resize" => {
                            let w = c
                                .args
                                .get("width")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(80);
                            let h = c
                                .args
                                .get("height")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(24);
                            if let Some(p) = &pty {
                                let _ = runtime::resize_pty(p, w, h);
                            }
                        }
                        _ => {}
                    }
                }
                Ok(ws::Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        closed();
    })
    .ok()?;
    Some((tx, h))
}

/// `POST /1.0/instances/NAME/console`: attach to the console pty held by the container's monitor
/// (websockets "0" and "control"). One client at a time; the console log pauses meanwhile.
pub fn console(d: &Daemon, req: &mut Request, name: &str) -> Result<Response> {
    #[derive(serde::Deserialize, Default)]
    struct ConsolePost {
        #[serde(default)]
        width: i64,
        #[serde(default)]
        height: i64,
        #[serde(default, rename = "type")]
        kind: String,
    }
    let body: ConsolePost = json(req)?;
    if !body.kind.is_empty() && body.kind != "console" {
        return Err(Error::BadRequest(format!(
            "Console type {:?} is not supported (containers have a text console)",
            body.kind
        )));
    }
    if !d
        .db
        .lock()
        .expect("db lock")
        .data
        .instances
        .contains_key(name)
    {
        return Err(Error::NotFound("Instance not found".into()));
    }
    if !matches!(runtime::state(&d.run_dir(name)), Ok(State::Running { .. })) {
        return Err(Error::BadRequest("Instance is not running".into()));
    }
    let (s0, sc) = (secret(), secret());
    let meta = serde_json::json!({"fds": {"0": s0, "control": sc}});
    let mut resources = BTreeMap::new();
    resources.insert("instances".into(), vec![format!("/1.0/instances/{name}")]);
    let run_dir = d.run_dir(name);
    let size = (clamp(body.width, 80), clamp(body.height, 24));
    let op = d.ops.start(
        Class::Websocket,
        "Showing console",
        resources,
        Some(meta),
        vec![s0.clone(), sc.clone()],
        move |op| {
            let mut socks = op
                .take_sockets(std::slice::from_ref(&s0), CONNECT_TIMEOUT)
                .ok_or_else(|| {
                    Error::Internal("Timed out waiting for websockets to connect".into())
                })?;
            let control = socks.remove(&sc);
            let (tx0, rx0) = ws::split(
                socks.remove(&s0).expect("required socket"),
                ws::Role::Server,
            )
            .map_err(|e| Error::Internal(format!("websocket: {e}")))?;
            let attach = runtime::console_attach(&run_dir)?;
            let _ = runtime::resize_pty(&attach.master, size.0, size.1);
            let master = std::fs::File::from(
                attach
                    .master
                    .try_clone()
                    .map_err(|e| Error::Internal(e.to_string()))?,
            );
            let resize = attach
                .master
                .try_clone()
                .map_err(|e| Error::Internal(e.to_string()))?;
            // `lxc console` detaches (ctrl-a q) by closing the control socket: end the session then.
            let end = tx0.clone();
            let ctl = Control::start(
                &op,
                &sc,
                control,
                Actions {
                    killer: None,
                    pty: Some(resize),
                    closed: Box::new(move || end.end()),
                },
            )?;
            // Console output -> websocket, polling so that it stops as soon as we detach (a reader
            // left behind would steal output from the monitor's log).
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let out = {
                let (stop, tx) = (stop.clone(), tx0.clone());
                let src = attach
                    .master
                    .try_clone()
                    .map_err(|e| Error::Internal(e.to_string()))?;
                std::thread::spawn(move || {
                    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                    use std::os::fd::AsFd;
                    let mut buf = vec![0u8; 32 * 1024];
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let mut fds = [PollFd::new(src.as_fd(), PollFlags::POLLIN)];
                        if !matches!(poll(&mut fds, PollTimeout::from(200u16)), Ok(n) if n > 0) {
                            continue;
                        }
                        match rustix::io::read(&src, &mut buf) {
                            Ok(n) if n > 0 => {
                                if tx.send_binary(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                            _ => break,
                        }
                    }
                    // The console went away (the container stopped): end the session.
                    if !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        tx.end();
                    }
                })
            };
            let pumped = pump_in(rx0, master).map(|p| p.join());
            // Detach: stop our reader first, then hand the console back to the monitor.
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = out.join();
            drop(attach);
            tx0.end();
            drop(ctl);
            pumped
        },
    );
    Ok(response::operation(&op.to_api()))
}
