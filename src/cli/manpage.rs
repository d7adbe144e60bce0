//! `bivy manpage DIR`: the manual, one roff page per verb (`bivy-launch.1`, `bivy-image.1`, ...)
//! and `bivy.1`, generated from the command table of [`super::completion`] (which commands
//! exist, below which verb) and each command's own `--help` text (what it says).
//!
//! The help texts are taken by running this binary (`/proc/self/exe PATH... --help`, with a
//! client configuration of nobody's so that no user alias changes a verb), exactly as a user
//! sees them. Each page: NAME (the verb's line in `bivy --help`), SYNOPSIS, DESCRIPTION (the
//! verb's help, verbatim in a no-fill block), COMMANDS (each subcommand's help), SEE ALSO.

use std::fmt::Write as _;
use std::path::Path;

use super::completion::{children, verb_summary, TABLE};
use super::{fail, io_error, CmdResult, Fail};

const HELP: &str = "\
Description:
  Write the manual pages of bivy into DIR (created if missing): bivy.1 and one page per
  verb (bivy-launch.1, bivy-image.1, ...), from each command's --help text.

Usage:
  bivy manpage DIR

Example:
  bivy manpage /usr/local/share/man/man1 && mandb -q
";

/// `bivy manpage DIR`.
pub fn run(args: &[String]) -> CmdResult {
    let dir = match args {
        [a] if a == "-h" || a == "--help" => {
            print!("{HELP}");
            return Ok(0);
        }
        [d] if !d.starts_with('-') => Path::new(d),
        _ => {
            eprint!("{HELP}");
            return fail("one argument is needed: the directory to write the pages into");
        }
    };
    let pages = pages(&mut run_help)?;
    std::fs::create_dir_all(dir).map_err(|e| io_error("mkdir", dir, &e))?;
    for (name, text) in &pages {
        let path = dir.join(name);
        crate::util::fs::atomic_write_mode(&path, text.as_bytes(), 0o644)
            .map_err(|e| io_error("write", &path, &e))?;
    }
    println!("Wrote {} manual pages into {}", pages.len(), dir.display());
    Ok(0)
}

/// `bivy PATH... --help` (stdout then stderr), by running this binary.
fn run_help(path: &str) -> Result<String, Fail> {
    let out = std::process::Command::new("/proc/self/exe")
        .args(path.split_whitespace())
        .arg("--help")
        .env("BIVY_CONF", "/nonexistent/bivy-manpage")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Fail::Error(format!("running bivy {path} --help: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if text.trim().is_empty() {
        return fail(format!("bivy {path} --help printed nothing"));
    }
    Ok(text)
}

/// Every page, `(file name, roff)`; `help` gives a command path's help text ("" for `bivy`).
pub fn pages(
    help: &mut dyn FnMut(&str) -> Result<String, Fail>,
) -> Result<Vec<(String, String)>, Fail> {
    let version = super::VERSION;
    let mut verbs: Vec<&str> = children("");
    verbs.push("daemon");
    let mut out = vec![("bivy.1".to_string(), main_page(&help("")?, &verbs, version))];
    for verb in verbs {
        let mut page = String::new();
        let summary = verb_summary(verb).unwrap_or("");
        header(&mut page, &format!("bivy-{verb}"), version);
        let _ = writeln!(page, ".SH NAME\nbivy\\-{} \\- {}", esc(verb), esc(summary));
        let text = help(verb)?;
        let _ = writeln!(page, ".SH SYNOPSIS");
        match synopsis(&text) {
            Some(s) => block(&mut page, s),
            None => block(&mut page, &format!("bivy {verb} [command] [flags]")),
        }
        let _ = writeln!(page, ".SH DESCRIPTION");
        block(&mut page, text.trim_end());
        // The subcommands, depth first, each with its own help (a help already shown, as
        // for the commands that answer with their parent's, is not repeated).
        let mut shown = vec![text];
        let subs: Vec<&str> = TABLE
            .iter()
            .map(|c| c.path)
            .filter(|p| p.strip_prefix(verb).is_some_and(|r| r.starts_with(' ')))
            .collect();
        if !subs.is_empty() {
            let _ = writeln!(page, ".SH COMMANDS");
        }
        for sub in subs {
            let _ = writeln!(page, ".SS \"bivy {}\"", esc(sub));
            let text = help(sub)?;
            if shown.contains(&text) {
                let parent = sub.rsplit_once(' ').map_or(verb, |p| p.0);
                let _ = writeln!(
                    page,
                    "Its arguments are described with \\fBbivy {}\\fR above.",
                    esc(parent)
                );
            } else {
                block(&mut page, text.trim_end());
                shown.push(text);
            }
        }
        let _ = writeln!(page, ".SH SEE ALSO\n.BR bivy (1)");
        out.push((format!("bivy-{verb}.1"), page));
    }
    Ok(out)
}

fn header(page: &mut String, name: &str, version: &str) {
    let _ = writeln!(
        page,
        ".TH \"{}\" \"1\" \"\" \"bivy {}\" \"bivy manual\"\n.ad l\n.nh",
        name.to_uppercase(),
        esc(version)
    );
}

fn main_page(usage: &str, verbs: &[&str], version: &str) -> String {
    let mut page = String::new();
    header(&mut page, "bivy", version);
    let _ = writeln!(
        page,
        ".SH NAME\nbivy \\- system-container manager with LXD's REST API, in one static binary"
    );
    let _ = writeln!(page, ".SH SYNOPSIS");
    block(
        &mut page,
        "bivy [command] [flags]\nbivy daemon [--group GROUP]",
    );
    let _ = writeln!(page, ".SH DESCRIPTION");
    let _ = writeln!(
        page,
        "\\fBbivy daemon\\fR serves the LXD 1.0 REST API on \\fI$BIVY_DIR/unix.socket\\fR; \
         the other verbs are its command line client, in the layout of LXD's \\fBlxc\\fR. \
         Containers run under a monitor process of their own and outlive the daemon."
    );
    block(&mut page, usage.trim_end());
    let _ = writeln!(page, ".SH ENVIRONMENT");
    for (var, what) in [
        (
            "BIVY_DIR",
            "the daemon's directory (default /var/lib/bivy): state, storage, unix.socket",
        ),
        (
            "BIVY_SOCKET",
            "the socket the client uses (default $BIVY_DIR/unix.socket)",
        ),
        (
            "BIVY_CONF",
            "the client configuration directory (default ~/.config/bivy): remotes, aliases",
        ),
    ] {
        let _ = writeln!(page, ".TP\n.B {var}\n{}", esc(what));
    }
    let _ = writeln!(page, ".SH SEE ALSO");
    let list: Vec<String> = verbs
        .iter()
        .map(|v| format!(".BR bivy\\-{} (1)", esc(v)))
        .collect();
    let _ = writeln!(page, "{}", list.join(",\n"));
    page
}

/// The usage line of an argh help (`Usage: bivy x ...`), or of a hand-written one.
fn synopsis(help: &str) -> Option<&str> {
    let mut lines = help.lines();
    while let Some(l) = lines.next() {
        if let Some(u) = l.strip_prefix("Usage: ") {
            return Some(u.trim());
        }
        if l.trim() == "Usage:" {
            return lines
                .next()
                .map(str::trim)
                .filter(|u| u.starts_with("bivy"));
        }
    }
    None
}

/// Text in a no-fill block, escaped.
fn block(page: &mut String, text: &str) {
    let _ = writeln!(page, ".nf");
    for line in text.lines() {
        let _ = writeln!(page, "{}", esc_line(line));
    }
    let _ = writeln!(page, ".fi");
}

/// Escape text for roff: backslashes and minus signs.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// [`esc`], and a line that starts with `.` or `'` (a roff request) made text.
fn esc_line(line: &str) -> String {
    let e = esc(line);
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_escapes() {
        assert_eq!(esc("a-b\\c"), "a\\-b\\ec");
        assert_eq!(esc_line(".hidden"), "\\&.hidden");
        assert_eq!(esc_line("'quote"), "\\&'quote");
        assert_eq!(esc_line("  -c, --config"), "  \\-c, \\-\\-config");
    }

    #[test]
    fn pages_from_help_texts() {
        let mut fake = |path: &str| -> Result<String, Fail> {
            Ok(match path {
                "" => "Usage:\n  bivy [command]\n".to_string(),
                "config get" | "config set" => "Usage:\n  bivy config [command]\n".to_string(),
                p => format!("Usage: bivy {p} [-f]\n\nDoes {p}.\n.dot line\n"),
            })
        };
        let pages = pages(&mut fake).unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(names[0], "bivy.1");
        assert!(names.contains(&"bivy-launch.1") && names.contains(&"bivy-daemon.1"));
        assert!(names.contains(&"bivy-install.1") && names.contains(&"bivy-completion.1"));
        assert!(!names.iter().any(|n| n.contains(' ')));
        let launch = &pages.iter().find(|p| p.0 == "bivy-launch.1").unwrap().1;
        assert!(launch.starts_with(".TH \"BIVY-LAUNCH\" \"1\" \"\" \"bivy "));
        assert!(launch
            .contains("\n.SH NAME\nbivy\\-launch \\- Create and start instances from images\n"));
        assert!(launch.contains("\n.SH SYNOPSIS\n.nf\nbivy launch [\\-f]\n.fi\n"));
        assert!(launch.contains("\\&.dot line\n"));
        assert!(!launch.contains(".SH COMMANDS"));
        let image = &pages.iter().find(|p| p.0 == "bivy-image.1").unwrap().1;
        assert!(image.contains("\n.SH COMMANDS\n.SS \"bivy image alias\"\n"));
        assert!(image.contains(
            "\n.SS \"bivy image alias create\"\n.nf\nUsage: bivy image alias create [\\-f]\n"
        ));
        let config = &pages.iter().find(|p| p.0 == "bivy-config.1").unwrap().1;
        // config get and set answer with the same help: shown once.
        assert!(config.contains(".SS \"bivy config set\"\nIts arguments are described with \\fBbivy config\\fR above.\n"));
        let main = &pages[0].1;
        assert!(main.contains(".BR bivy\\-launch (1),\n"));
        assert!(main.contains(".B BIVY_DIR\n"));
    }
}
