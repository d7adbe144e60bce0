//! The local terminal: raw mode (restored on drop), window size and password input, via rustix
//! termios.

use std::io;

use rustix::termios::{self, OptionalActions, Termios};

/// Puts stdin's terminal in raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enable() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// (width, height) of the terminal on stdout (else stdin), if any.
pub fn size() -> Option<(u16, u16)> {
    let ws = termios::tcgetwinsize(io::stdout())
        .or_else(|_| termios::tcgetwinsize(io::stdin()))
        .ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Read one line from stdin with echo off (a password), restoring the terminal after; the line
/// end is not part of the result.
pub fn read_password() -> io::Result<String> {
    let stdin = io::stdin();
    let saved = termios::tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(termios::LocalModes::ECHO);
    termios::tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let _ = termios::tcsetattr(&stdin, OptionalActions::Now, &saved);
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
