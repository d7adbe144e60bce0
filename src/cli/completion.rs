//! Shell completion: `bivy completion bash|zsh|fish` prints a script, and the hidden
//! `bivy __complete KIND [remote:]` lists names from a daemon for those scripts.
//!
//! - [`TABLE`] is the CLI's shape written down by hand: every command path (`image alias
//!   create`), the flags its `--help` shows and what its positional words name. The scripts are
//!   generated from it, and so are the man pages (`bivy manpage`). `tests/completion.rs` checks
//!   that it cannot drift: every verb of `bivy --help` is in it, every subcommand a parent's
//!   help lists is in it and the reverse, and every flag in it appears in that command's `--help`.
//! - The names a command's words take (instances, images, profiles, pools, networks, remotes)
//!   come from `bivy __complete KIND [remote:]`: one name per line (with `remote:` in front when
//!   one was given), nothing at all on any error (no daemon, unknown remote), exit 0. Remotes
//!   are printed as `name:`.
//! - zsh uses the bash function through `bashcompinit`.

use std::fmt::Write as _;

use super::{fail, CmdResult};

/// What the positional words of a command name, completed from the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Nothing to complete (free text, keys, or a command with subcommands).
    None,
    Instance,
    Image,
    Profile,
    Pool,
    Network,
    Remote,
    /// A local file name (the shell's own completion).
    File,
}

impl Arg {
    /// The `__complete` kind, and the name the scripts use.
    pub fn kind(self) -> &'static str {
        match self {
            Arg::None => "none",
            Arg::Instance => "instances",
            Arg::Image => "images",
            Arg::Profile => "profiles",
            Arg::Pool => "pools",
            Arg::Network => "networks",
            Arg::Remote => "remotes",
            Arg::File => "files",
        }
    }
}

/// One command: its path below `bivy`, its flags (as `--help` shows them), its words.
pub struct Cmd {
    pub path: &'static str,
    pub flags: &'static str,
    pub args: Arg,
}

const fn c(path: &'static str, flags: &'static str, args: Arg) -> Cmd {
    Cmd { path, flags, args }
}

use Arg::{File, Image, Instance, Network, None as No, Pool, Profile, Remote};

const STATE_FLAGS: &str = "-f --force --timeout --all --stateful";
const LAUNCH_FLAGS: &str = "-c --config -p --profile --no-profiles -e --ephemeral -s --storage -n --network --type --empty --vm";

/// The CLI's commands (see the module doc). Kept sorted by path.
pub const TABLE: &[Cmd] = &[
    c("admin", "", No),
    c("admin init", "--auto --preseed --dump --network-address --network-port --storage-backend --storage-create-device --storage-create-loop --storage-pool --trust-password", No),
    c("admin recover", "", No),
    c("admin shutdown", "-t --timeout -f --force", No),
    c("admin waitready", "-t --timeout", No),
    c("alias", "", No),
    c("alias add", "", No),
    c("alias list", "-f --format", No),
    c("alias remove", "", No),
    c("alias rename", "", No),
    c("completion", "", No),
    c("completion bash", "", No),
    c("completion fish", "", No),
    c("completion zsh", "", No),
    c("config", "", No),
    c("config device", "", No),
    c("config device add", "", Instance),
    c("config device get", "", Instance),
    c("config device list", "", Instance),
    c("config device override", "", Instance),
    c("config device remove", "", Instance),
    c("config device set", "", Instance),
    c("config device show", "", Instance),
    c("config device unset", "", Instance),
    c("config edit", "", Instance),
    c("config get", "", Instance),
    c("config metadata", "", No),
    c("config metadata edit", "", Instance),
    c("config metadata show", "", Instance),
    c("config set", "", Instance),
    c("config show", "", Instance),
    c("config template", "", No),
    c("config template create", "", Instance),
    c("config template delete", "", Instance),
    c("config template edit", "", Instance),
    c("config template list", "-f --format", Instance),
    c("config template show", "", Instance),
    c("config trust", "", No),
    c("config trust add", "--name --type --restricted --projects", No),
    c("config trust edit", "", No),
    c("config trust list", "-f --format", Remote),
    c("config trust list-tokens", "-f --format", Remote),
    c("config trust remove", "", No),
    c("config trust revoke-token", "", No),
    c("config trust show", "", No),
    c("config unset", "", Instance),
    c("console", "--show-log", Instance),
    c("copy", "-e --ephemeral --instance-only -c --config -p --profile --no-profiles -d --device -s --storage --stateless --mode --refresh", Instance),
    c("delete", "-f --force -i --interactive", Instance),
    c("exec", "--env --cwd --user --group --mode -t --force-interactive -T --force-noninteractive -n --disable-stdin", Instance),
    c("export", "--instance-only --optimized-storage --compression", Instance),
    c("file", "", No),
    c("file delete", "", Instance),
    c("file edit", "", Instance),
    c("file pull", "-r --recursive -p --create-dirs", Instance),
    c("file push", "-r --recursive -p --create-dirs --uid --gid --mode", File),
    c("image", "", No),
    c("image alias", "", No),
    c("image alias create", "--description", No),
    c("image alias delete", "", No),
    c("image alias list", "-f --format", Remote),
    c("image alias rename", "", No),
    c("image copy", "--alias --copy-aliases --auto-update --public --mode", Image),
    c("image delete", "", Image),
    c("image edit", "", Image),
    c("image export", "", Image),
    c("image get-property", "", Image),
    c("image import", "--alias --public", File),
    c("image info", "", Image),
    c("image list", "-f --format -c --columns", Remote),
    c("image refresh", "", Image),
    c("image set-property", "", Image),
    c("image show", "", Image),
    c("image unset-property", "", Image),
    c("import", "-s --storage", File),
    c("info", "--show-log --resources", Instance),
    c("init", LAUNCH_FLAGS, Image),
    c("install", "--prefix --init --sysconfdir --root --group --dry-run --force --uninstall", No),
    c("launch", LAUNCH_FLAGS, Image),
    c("list", "-c --columns -f --format --fast --all-projects", Remote),
    c("manpage", "", File),
    c("monitor", "--type -f --format --pretty --loglevel", Remote),
    c("move", "--instance-only --stateless -s --storage -c --config -p --profile --no-profiles -d --device --mode", Instance),
    c("network", "", No),
    c("network attach", "", Network),
    c("network attach-profile", "", Network),
    c("network create", "-t --type --description --target", No),
    c("network delete", "", Network),
    c("network detach", "", Network),
    c("network detach-profile", "", Network),
    c("network edit", "", Network),
    c("network get", "--target", Network),
    c("network info", "--target", Network),
    c("network list", "-f --format", Remote),
    c("network list-leases", "-f --format", Network),
    c("network rename", "", Network),
    c("network set", "--target", Network),
    c("network show", "--target", Network),
    c("network unset", "--target", Network),
    c("operation", "", No),
    c("operation delete", "", No),
    c("operation list", "-f --format", Remote),
    c("operation show", "", No),
    c("pause", STATE_FLAGS, Instance),
    c("profile", "", No),
    c("profile add", "", Instance),
    c("profile assign", "", Instance),
    c("profile copy", "", Profile),
    c("profile create", "--description", No),
    c("profile delete", "", Profile),
    c("profile device", "", No),
    c("profile device add", "", Profile),
    c("profile device get", "", Profile),
    c("profile device list", "", Profile),
    c("profile device override", "", Profile),
    c("profile device remove", "", Profile),
    c("profile device set", "", Profile),
    c("profile device show", "", Profile),
    c("profile device unset", "", Profile),
    c("profile edit", "", Profile),
    c("profile get", "", Profile),
    c("profile list", "-f --format", Remote),
    c("profile remove", "", Instance),
    c("profile rename", "", Profile),
    c("profile set", "", Profile),
    c("profile show", "", Profile),
    c("profile unset", "", Profile),
    c("publish", "--alias --compression --public -f --force --expire --reuse", Instance),
    c("query", "-X --request -d --data --wait --raw", No),
    c("remote", "", No),
    c("remote add", "--accept-certificate --password --public --protocol --auth-type --fingerprint --project", No),
    c("remote get-default", "", No),
    c("remote list", "-f --format", No),
    c("remote remove", "", Remote),
    c("remote rename", "", Remote),
    c("remote set-url", "", Remote),
    c("remote switch", "", Remote),
    c("restart", STATE_FLAGS, Instance),
    c("restore", "--stateful", Instance),
    c("snapshot", "--stateful --no-expiry", Instance),
    c("start", STATE_FLAGS, Instance),
    c("stop", STATE_FLAGS, Instance),
    c("storage", "", No),
    c("storage create", "--description", No),
    c("storage delete", "", Pool),
    c("storage edit", "", Pool),
    c("storage get", "", Pool),
    c("storage info", "--bytes", Pool),
    c("storage list", "-f --format", Remote),
    c("storage set", "", Pool),
    c("storage show", "", Pool),
    c("storage unset", "", Pool),
    c("storage volume", "", No),
    c("storage volume attach", "", Pool),
    c("storage volume attach-profile", "", Pool),
    c("storage volume copy", "--volume-only --refresh --mode", Pool),
    c("storage volume create", "--type", Pool),
    c("storage volume delete", "", Pool),
    c("storage volume detach", "", Pool),
    c("storage volume detach-profile", "", Pool),
    c("storage volume edit", "", Pool),
    c("storage volume export", "--volume-only --optimized-storage --compression", Pool),
    c("storage volume get", "", Pool),
    c("storage volume import", "", Pool),
    c("storage volume info", "", Pool),
    c("storage volume list", "-f --format -c --columns", Pool),
    c("storage volume move", "--mode", Pool),
    c("storage volume rename", "", Pool),
    c("storage volume restore", "", Pool),
    c("storage volume set", "", Pool),
    c("storage volume show", "", Pool),
    c("storage volume snapshot", "--no-expiry --reuse", Pool),
    c("storage volume unset", "", Pool),
    c("version", "", Remote),
];

/// The words `bivy completion` takes.
pub const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// The subcommands of `path` ("" for the verbs), in table order.
pub fn children(path: &str) -> Vec<&'static str> {
    TABLE
        .iter()
        .filter_map(|c| {
            let rest = if path.is_empty() {
                c.path
            } else {
                c.path.strip_prefix(path)?.strip_prefix(' ')?
            };
            (!rest.contains(' ')).then_some(rest)
        })
        .collect()
}

/// The table entry of a command path.
pub fn find(path: &str) -> Option<&'static Cmd> {
    TABLE.iter().find(|c| c.path == path)
}

/// The one-line description of each verb, from `bivy --help`.
pub fn verb_summary(verb: &str) -> Option<&'static str> {
    super::USAGE.lines().find_map(|l| {
        let l = l.strip_prefix("  ")?;
        let (name, desc) = l.split_once(' ')?;
        (name == verb).then(|| desc.trim())
    })
}

/// `bivy completion SHELL`.
pub fn run(args: &[String]) -> CmdResult {
    match args.first().map(String::as_str) {
        Some("bash") => print!("{}", bash()),
        Some("zsh") => print!("{}", zsh()),
        Some("fish") => print!("{}", fish()),
        Some("-h" | "--help") => {
            print!("{HELP}");
        }
        None => {
            eprint!("{HELP}");
            return fail("a shell is needed: bash, zsh or fish");
        }
        Some(other) => {
            return fail(format!(
                "unknown shell {other:?} for \"bivy completion\" (bash, zsh or fish)"
            ))
        }
    }
    Ok(0)
}

const HELP: &str = "\
Description:
  Print the shell completion script of bivy: verbs, subcommands, flags, and the names of
  remotes, instances, images, profiles, storage pools and networks from the daemon.

Usage:
  bivy completion bash|zsh|fish

Examples:
  bivy completion bash > /etc/bash_completion.d/bivy
  bivy completion zsh > \"${fpath[1]}/_bivy\"
  bivy completion fish > ~/.config/fish/completions/bivy.fish
";

/// The bash `case` arm per command path: `subs`, `flags` and `kind`.
fn bash_cases() -> String {
    let mut out = String::new();
    let mut paths: Vec<&str> = vec![""];
    paths.extend(TABLE.iter().map(|c| c.path));
    for path in paths {
        let subs = children(path).join(" ");
        let (flags, kind) = match find(path) {
            Some(c) => (c.flags, c.args.kind()),
            None => ("", "none"),
        };
        let _ = writeln!(
            out,
            "\t\"{path}\") subs=\"{subs}\" flags=\"{flags}\" kind={kind} ;;"
        );
    }
    out
}

/// The bash completion script (also zsh's, through bashcompinit).
pub fn bash() -> String {
    BASH_TEMPLATE.replace("@CASES@", &bash_cases())
}

const BASH_TEMPLATE: &str = r#"# bash completion for bivy (generated by `bivy completion bash`)

# _bivy_table PATH: sets subs, flags and kind for a command path ("" for the verbs).
_bivy_table() {
	subs="" flags="" kind=none
	case "$1" in
@CASES@	*) return 1 ;;
	esac
}

# _bivy_reply COMPGEN-ARGS...: COMPREPLY from compgen, one candidate a line.
_bivy_reply() {
	local out IFS
	out=$(compgen "$@")
	IFS=$'\n'
	COMPREPLY=($out)
}

_bivy() {
	# zsh (through bashcompinit): arrays from 0 and word splitting as in bash (and no
	# variable named `path`, which zsh ties to PATH).
	[ -n "${ZSH_VERSION-}" ] && setopt localoptions ksharrays shwordsplit
	local subs flags kind cmdpath="" w i cur line
	# The word being completed, whole: bash splits `remote:name` at the colon.
	line=${COMP_LINE:0:$COMP_POINT}
	cur=${line##*[[:space:]]}
	# The command path: the words before the cursor that name a subcommand of the path so far.
	for ((i = 1; i < COMP_CWORD; i++)); do
		w=${COMP_WORDS[i]}
		case "$w" in -*) continue ;; esac
		_bivy_table "$cmdpath"
		case " $subs " in
		*" $w "*) cmdpath=${cmdpath:+$cmdpath }$w ;;
		esac
	done
	_bivy_table "$cmdpath" || return 0
	COMPREPLY=()
	case "$cur" in
	-*)
		_bivy_reply -W "$flags" -- "$cur"
		return 0
		;;
	esac
	if [ -n "$subs" ]; then
		_bivy_reply -W "$subs" -- "$cur"
		return 0
	fi
	case "$kind" in
	none) return 0 ;;
	files)
		_bivy_reply -f -- "$cur"
		return 0
		;;
	esac
	local names remote=""
	case "$cur" in
	*:*) remote=${cur%%:*}: ;;
	esac
	names=$("${COMP_WORDS[0]}" __complete "$kind" $remote 2>/dev/null)
	if [ -z "$remote" ] && [ "$kind" != remotes ]; then
		names="$names
$("${COMP_WORDS[0]}" __complete remotes 2>/dev/null)"
	fi
	_bivy_reply -W "$names" -- "$cur"
	# bash replaces only the part after the last colon (when `:` is a word break).
	case "$cur" in
	*:*)
		if [[ $COMP_WORDBREAKS == *:* ]]; then
			local pre=${cur%"${cur##*:}"}
			COMPREPLY=("${COMPREPLY[@]#"$pre"}")
		fi
		;;
	esac
	# A remote ends in `:`: no space after it.
	if [ ${#COMPREPLY[@]} -eq 1 ] && [[ ${COMPREPLY[0]} == *: ]]; then
		compopt -o nospace 2>/dev/null
	fi
	return 0
}

complete -o default -F _bivy bivy
"#;

/// The zsh script: the bash function through zsh's bashcompinit.
pub fn zsh() -> String {
    format!(
        "#compdef bivy\n# zsh completion for bivy (generated by `bivy completion zsh`): the bash\n# completion through bashcompinit.\nautoload -U +X bashcompinit && bashcompinit\n{}",
        bash().trim_start_matches("# bash completion for bivy (generated by `bivy completion bash`)\n")
    )
}

/// The fish script: one `complete` line per subcommand and flag, conditioned on the path.
pub fn fish() -> String {
    let mut out = String::from(FISH_HEAD);
    let paths: Vec<&str> = TABLE.iter().map(|c| c.path).collect();
    let _ = writeln!(out, "set -g __bivy_paths '{}'\n", paths.join("' '"));
    let mut all: Vec<&str> = vec![""];
    all.extend(paths.iter().copied());
    for path in all {
        for sub in children(path) {
            let desc = if path.is_empty() {
                verb_summary(sub).unwrap_or("")
            } else {
                ""
            };
            let _ = write!(
                out,
                "complete -c bivy -f -n '__bivy_at \"{path}\"' -a {sub}"
            );
            if !desc.is_empty() {
                let _ = write!(out, " -d '{}'", desc.replace('\'', "\\'"));
            }
            out.push('\n');
        }
        let Some(cmd) = find(path) else { continue };
        for flag in cmd.flags.split_whitespace() {
            let opt = match flag.strip_prefix("--") {
                Some(long) => format!("-l {long}"),
                None => format!("-s {}", flag.trim_start_matches('-')),
            };
            let _ = writeln!(out, "complete -c bivy -n '__bivy_at \"{path}\"' {opt}");
        }
        match cmd.args {
            Arg::None => {}
            Arg::File => {
                let _ = writeln!(out, "complete -c bivy -F -n '__bivy_at \"{path}\"'");
            }
            a => {
                let _ = writeln!(
                    out,
                    "complete -c bivy -f -n '__bivy_at \"{path}\"' -a '(__bivy_names {})'",
                    a.kind()
                );
            }
        }
    }
    out
}

const FISH_HEAD: &str = r#"# fish completion for bivy (generated by `bivy completion fish`)

# The command path of the command line so far: words that extend a known path.
function __bivy_path
    set -l words (commandline -opc)
    set -l path ""
    for w in $words[2..-1]
        string match -q -- '-*' $w; and continue
        set -l next (string trim -- "$path $w")
        contains -- $next $__bivy_paths; and set path $next
    end
    echo $path
end

function __bivy_at
    test (__bivy_path) = "$argv[1]"
end

# Names from the daemon: for `remote:` prefixes that remote's, else the default's and the remotes.
function __bivy_names
    command -q bivy; or return
    set -l cur (commandline -ct)
    if string match -q -- '*:*' $cur
        bivy __complete $argv[1] (string replace -r ':.*' ':' -- $cur) 2>/dev/null
    else
        bivy __complete $argv[1] 2>/dev/null
        test "$argv[1]" != remotes; and bivy __complete remotes 2>/dev/null
    end
end

"#;

/// `bivy __complete KIND [remote:]`: names for the completion scripts, one a line; nothing on
/// any error. Returns the exit code (always 0, but 2 for a usage error).
pub fn complete_main(args: &[String]) -> i32 {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let remote = args.get(1).map(|r| r.trim_end_matches(':').to_string());
    if args.len() > 2
        || !matches!(
            kind,
            "remotes" | "instances" | "images" | "profiles" | "pools" | "networks"
        )
    {
        eprintln!(
            "Usage: bivy __complete remotes|instances|images|profiles|pools|networks [remote:]"
        );
        return 2;
    }
    for n in names(kind, remote.as_deref()) {
        match &remote {
            Some(r) if kind != "remotes" => println!("{r}:{n}"),
            _ => println!("{n}"),
        }
    }
    0
}

/// The names of one kind, empty on any error.
fn names(kind: &str, remote: Option<&str>) -> Vec<String> {
    let Ok(conf) = super::conf() else {
        return Vec::new();
    };
    if kind == "remotes" {
        return conf.remotes.keys().map(|r| format!("{r}:")).collect();
    }
    let remote = remote.map_or_else(|| conf.default_remote.clone(), str::to_string);
    let Ok(client) = super::client_of(&remote) else {
        return Vec::new();
    };
    let path = match kind {
        "instances" => "/1.0/instances",
        "images" => "/1.0/images/aliases",
        "profiles" => "/1.0/profiles",
        "pools" => "/1.0/storage-pools",
        "networks" => "/1.0/networks",
        _ => return Vec::new(),
    };
    let Ok(urls) = client.get::<Vec<String>>(path) else {
        return Vec::new();
    };
    let prefix = format!("{path}/");
    urls.iter()
        .filter_map(|u| u.strip_prefix(&prefix))
        .filter_map(|n| crate::http::percent_decode(n, false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_every_parent_exists() {
        for w in TABLE.windows(2) {
            assert!(w[0].path < w[1].path, "{} before {}", w[0].path, w[1].path);
        }
        for c in TABLE {
            if let Some((parent, _)) = c.path.rsplit_once(' ') {
                assert!(find(parent).is_some(), "{} has no parent", c.path);
                assert!(find(parent).unwrap().flags.is_empty() || children(parent).is_empty());
            }
            for f in c.flags.split_whitespace() {
                assert!(
                    f.starts_with("--") && f.len() > 3 || f.len() == 2 && f.starts_with('-'),
                    "{}: {f}",
                    c.path
                );
            }
        }
    }

    #[test]
    fn children_of_paths() {
        assert!(children("").contains(&"launch"));
        assert!(!children("").contains(&"image alias"));
        assert_eq!(
            children("image alias"),
            ["create", "delete", "list", "rename"]
        );
        assert!(children("launch").is_empty());
        assert_eq!(
            verb_summary("launch"),
            Some("Create and start instances from images")
        );
    }

    #[test]
    fn scripts_carry_the_table() {
        let b = bash();
        assert!(b.contains("\t\"launch\") subs=\"\" flags=\"-c --config"));
        assert!(b.contains(
            "\t\"image alias\") subs=\"create delete list rename\" flags=\"\" kind=none ;;"
        ));
        assert!(b.contains("\t\"start\") subs=\"\" flags=\"-f --force --timeout --all --stateful\" kind=instances ;;"));
        assert!(b.ends_with("complete -o default -F _bivy bivy\n"));
        let z = zsh();
        assert!(z.starts_with("#compdef bivy\n"));
        assert!(z.contains("bashcompinit\n") && z.contains("_bivy()"));
        let f = fish();
        assert!(f.contains("complete -c bivy -f -n '__bivy_at \"\"' -a launch -d 'Create and start instances from images'\n"));
        assert!(f.contains("complete -c bivy -n '__bivy_at \"launch\"' -s c\n"));
        assert!(f.contains("complete -c bivy -n '__bivy_at \"launch\"' -l storage\n"));
        assert!(f.contains(
            "complete -c bivy -f -n '__bivy_at \"start\"' -a '(__bivy_names instances)'\n"
        ));
    }

    #[test]
    fn bash_script_parses() {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &bash()])
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
