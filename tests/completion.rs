//! Shell completion: the command table (`src/cli/completion.rs`) against the CLI's own `--help`
//! output, so that it cannot drift; the bash script sourced in bash (`complete -p`, a
//! COMP_WORDS/COMP_CWORD run for verbs, subcommands, flags and names from a daemon); the
//! `__complete` lister, quiet on errors.

mod common;

use std::process::{Command, Output, Stdio};

use bivy::cli::completion::{children, TABLE};
use common::{bivy_bin, Daemon, TempDir};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bivy(args: &[&str]) -> Output {
    Command::new(bivy_bin())
        .args(args)
        // A client configuration of nobody's: help must not depend on one.
        .env("BIVY_CONF", "/nonexistent/bivy-conf")
        .env("BIVY_DIR", "/nonexistent/bivy-dir")
        .stdin(Stdio::null())
        .output()
        .expect("run bivy")
}

/// `bivy PATH... --help`, stdout and stderr.
fn help(path: &str) -> String {
    let mut args: Vec<&str> = path.split_whitespace().collect();
    args.push("--help");
    let out = bivy(&args);
    text(&out.stdout) + &text(&out.stderr)
}

/// The names listed under `Available Commands:` in a help text, else the alternatives of a
/// `bivy PATH [a ARG | b | c ARG]` usage line.
fn listed_commands(help: &str, path: &str) -> Vec<String> {
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Available Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    if !listed.is_empty() || path.is_empty() {
        return listed;
    }
    let usage = format!("bivy {path} [");
    help.lines()
        .find_map(|l| l.trim().strip_prefix(&usage)?.strip_suffix(']'))
        .filter(|alts| alts.contains('|'))
        .map(|alts| {
            alts.split('|')
                .filter_map(|a| a.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|w| w == word)
}

#[test]
fn table_matches_the_help_of_every_command() {
    // Every verb of `bivy --help` (but the daemon, which is no client verb) and nothing else.
    let top = help("");
    let mut verbs = listed_commands(&top, "");
    verbs.retain(|v| v != "daemon");
    verbs.sort();
    let mut table_verbs = children("");
    table_verbs.sort();
    assert_eq!(verbs, table_verbs, "bivy --help vs the completion table");

    let mut problems = Vec::new();
    for cmd in TABLE {
        let h = help(cmd.path);
        // Every flag of the table is in the command's --help.
        for flag in cmd.flags.split_whitespace() {
            if !has_word(&h, flag) {
                problems.push(format!("{}: {flag} not in its --help", cmd.path));
            }
        }
        // Subcommands: what the help lists is in the table, and what the table has is named
        // by the help.
        let subs = children(cmd.path);
        // (Some leaves answer --help with their parent's help: that lists their siblings.)
        let parent_help = cmd.path.rsplit_once(' ').map(|(p, _)| help(p));
        let own = parent_help.as_deref() != Some(h.as_str());
        for listed in listed_commands(&h, cmd.path).into_iter().filter(|_| own) {
            if !subs.contains(&listed.as_str()) {
                problems.push(format!(
                    "{}: `{listed}` listed by --help, not in the table",
                    cmd.path
                ));
            }
        }
        for sub in &subs {
            if !has_word(&h, sub) {
                problems.push(format!(
                    "{} {sub}: not named by `bivy {} --help`",
                    cmd.path, cmd.path
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Run the bash completion function on a command line (cursor at its end), with the script
/// sourced from `bivy completion bash`; the candidates, one a line. `env` is given to bash (and
/// so to `bivy __complete`).
fn complete_bash(line: &str, env: &[(&str, &str)]) -> Vec<String> {
    let tmp = TempDir::new().expect("tmp");
    let script = tmp.path().join("bivy.bash");
    let out = bivy(&["completion", "bash"]);
    assert!(out.status.success());
    std::fs::write(&script, &out.stdout).unwrap();
    let bin_dir = bivy_bin().parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            r#"set -u
source "$1"
read -r -a COMP_WORDS <<< "$2"
COMP_CWORD=${#COMP_WORDS[@]}
# A trailing space starts a new, empty word.
[[ $2 == *" " ]] && COMP_WORDS+=("") || COMP_CWORD=$((COMP_CWORD - 1))
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
_bivy
printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(&script)
        .arg(line)
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .envs(env.iter().copied())
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_verbs_subcommands_and_flags() {
    let tmp = TempDir::new().expect("tmp");
    let script = tmp.path().join("bivy.bash");
    std::fs::write(&script, bivy(&["completion", "bash"]).stdout).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p bivy")
        .arg("bash")
        .arg(&script)
        .output()
        .expect("bash");
    assert_eq!(
        text(&out.stdout),
        "complete -o default -F _bivy bivy\n",
        "{}",
        text(&out.stderr)
    );

    let none: &[(&str, &str)] = &[("BIVY_DIR", "/nonexistent/bivy-dir")];
    assert_eq!(complete_bash("bivy la", none), ["launch"]);
    assert_eq!(
        complete_bash("bivy re", none),
        ["remote", "restart", "restore"]
    );
    assert_eq!(
        complete_bash("bivy launch --", none),
        [
            "--config",
            "--profile",
            "--no-profiles",
            "--ephemeral",
            "--storage",
            "--network",
            "--type",
            "--empty",
            "--vm"
        ]
    );
    assert_eq!(complete_bash("bivy launch --st", none), ["--storage"]);
    assert_eq!(complete_bash("bivy image al", none), ["alias"]);
    assert_eq!(
        complete_bash("bivy image alias ", none),
        ["create", "delete", "list", "rename"]
    );
    assert_eq!(
        complete_bash("bivy storage volume list -", none),
        ["-f", "--format", "-c", "--columns"]
    );
    assert_eq!(
        complete_bash("bivy completion ", none),
        ["bash", "fish", "zsh"]
    );
    // Flags and their values before the subcommand do not derail the path.
    assert_eq!(
        complete_bash("bivy -q image --x alias ", none),
        ["create", "delete", "list", "rename"]
    );
    // With no daemon the names are the remotes only, and nothing fails.
    let conf = tmp.path().join("conf");
    let env = [
        ("BIVY_DIR", "/nonexistent/bivy-dir"),
        ("BIVY_CONF", conf.to_str().unwrap()),
    ];
    assert_eq!(complete_bash("bivy start ", &env), ["images:", "local:"]);
    assert_eq!(complete_bash("bivy start lo", &env), ["local:"]);
}

#[test]
fn complete_lists_names_from_the_daemon() {
    require!(root);
    let d = Daemon::start().expect("daemon");
    let img = common::busybox_image();
    d.ok(&[
        "image",
        "import",
        img.to_str().unwrap(),
        "--alias",
        "busybox",
    ]);
    d.ok(&["init", "busybox", "c1"]);
    d.ok(&["init", "busybox", "c2"]);
    d.ok(&["profile", "create", "p1"]);
    let lines = |args: &[&str]| -> Vec<String> {
        let out = d.run(&[&["__complete"][..], args].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        text(&out.stdout).lines().map(str::to_string).collect()
    };
    assert_eq!(lines(&["instances"]), ["c1", "c2"]);
    assert_eq!(lines(&["instances", "local:"]), ["local:c1", "local:c2"]);
    assert_eq!(lines(&["images"]), ["busybox"]);
    assert_eq!(lines(&["profiles"]), ["default", "p1"]);
    assert_eq!(lines(&["pools"]), ["default"]);
    assert_eq!(lines(&["remotes"]), ["images:", "local:"]);
    let _ = lines(&["networks"]); // the host's interfaces: any
                                  // Errors are silent: an unknown remote, a public simplestreams remote, no daemon.
    assert!(lines(&["instances", "nosuch:"]).is_empty());
    assert!(lines(&["images", "images:"]).is_empty());
    let out = d
        .cli()
        .env("BIVY_DIR", "/nonexistent/bivy-dir")
        .args(["__complete", "instances"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
    // A usage error is one.
    assert_eq!(d.run(&["__complete", "things"]).status.code(), Some(2));

    // Through the bash function.
    let conf = d.tmp().join("bivy-conf");
    let env = [
        ("BIVY_DIR", d.dir().to_str().unwrap()),
        ("BIVY_CONF", conf.to_str().unwrap()),
    ];
    assert_eq!(
        complete_bash("bivy start ", &env),
        ["c1", "c2", "images:", "local:"]
    );
    assert_eq!(complete_bash("bivy start c", &env), ["c1", "c2"]);
    assert_eq!(complete_bash("bivy launch bu", &env), ["busybox"]);
    assert_eq!(complete_bash("bivy profile show p", &env), ["p1"]);
    // `local:c` is split at the colon by bash: the candidates are what follows it.
    assert_eq!(complete_bash("bivy exec local:c", &env), ["c1", "c2"]);
}

#[test]
fn zsh_and_fish_scripts_complete() {
    require!(cmd "zsh");
    require!(cmd "fish");
    let tmp = TempDir::new().expect("tmp");
    let bin_dir = bivy_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:/usr/bin:/bin", bin_dir.display());
    let conf = tmp.path().join("conf");

    // zsh: the bash function through bashcompinit (zsh filters the candidates itself, so the
    // function hands over every word of the position).
    let zsh = tmp.path().join("_bivy");
    std::fs::write(&zsh, bivy(&["completion", "zsh"]).stdout).unwrap();
    let run = |script: &str| -> String {
        let out = Command::new("zsh")
            .arg("-c")
            .arg(script)
            .arg(&zsh)
            .env("PATH", &path)
            .env("BIVY_DIR", "/nonexistent/bivy-dir")
            .env("BIVY_CONF", &conf)
            .env("HOME", tmp.path())
            .output()
            .expect("run zsh");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let out = run(r#"autoload -U compinit && compinit -u -D && source "$0"
t() { COMP_LINE=$1; COMP_POINT=${#1}; COMP_WORDS=(${=1}); [[ $1 == *" " ]] && COMP_WORDS+=("")
      COMP_CWORD=$(( ${#COMP_WORDS} - 1 )); _bivy; print -r -- "${COMPREPLY[*]}"; }
t "bivy la"; t "bivy launch --"; t "bivy image alias "; t "bivy start "
whence -w _bivy"#);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].split(' ').any(|w| w == "launch") && lines[0].split(' ').any(|w| w == "storage"),
        "{out}"
    );
    assert!(lines[1].starts_with("-c --config -p --profile"), "{out}");
    assert_eq!(lines[2], "create delete list rename", "{out}");
    assert_eq!(lines[3], "images: local:", "{out}");
    assert_eq!(lines[4], "_bivy: function", "{out}");

    // fish: its own `complete -C` runs the completion of a command line.
    let fish = tmp.path().join("bivy.fish");
    std::fs::write(&fish, bivy(&["completion", "fish"]).stdout).unwrap();
    let complete = |line: &str| -> Vec<String> {
        let out = Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg("source $argv[1]; complete -C $argv[2]")
            .arg(&fish)
            .arg(line)
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env("BIVY_DIR", "/nonexistent/bivy-dir")
            .env("BIVY_CONF", &conf)
            .env("HOME", tmp.path())
            .output()
            .expect("run fish");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            text(&out.stderr)
        );
        text(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(complete("bivy la"), ["launch"]);
    assert_eq!(complete("bivy launch --st"), ["--storage"]);
    assert_eq!(
        complete("bivy image alias "),
        ["create", "delete", "list", "rename"]
    );
    assert_eq!(complete("bivy start "), ["images:", "local:"]);
}

#[test]
fn manpages_render_without_warnings() {
    require!(cmd "man");
    let tmp = TempDir::new().expect("tmp");
    let dir = tmp.path().join("man1");
    let out = bivy(&["manpage", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // bivy.1, one page per verb of the table, and the daemon's.
    let mut want: Vec<String> = children("").iter().map(|v| format!("bivy-{v}.1")).collect();
    want.push("bivy-daemon.1".into());
    want.push("bivy.1".into());
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        text(&out.stdout),
        format!("Wrote {} manual pages into {}\n", want.len(), dir.display())
    );
    for name in &names {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.join(name))
            .env("MANWIDTH", "80")
            .env("LANG", "C.UTF-8")
            .output()
            .expect("run man");
        let page = text(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: {}",
            text(&out.stderr)
        );
        let stem = name.trim_end_matches(".1");
        assert!(
            page.contains(&format!("NAME\n       {stem} - ")),
            "{name}:\n{page}"
        );
    }
    // The text is each command's help.
    let page = std::fs::read_to_string(dir.join("bivy-launch.1")).unwrap();
    assert!(
        page.contains("\n  \\-s, \\-\\-storage     storage pool name\n"),
        "{page}"
    );
    let page = std::fs::read_to_string(dir.join("bivy-storage.1")).unwrap();
    assert!(
        page.contains("\n.SS \"bivy storage volume list\"\n"),
        "{page}"
    );
    // A usage error.
    assert_eq!(bivy(&["manpage"]).status.code(), Some(1));
}
