//! `alias add|list|rename|remove` and alias expansion, as lxc 5.0.2 has them.
//!
//! User aliases live under `aliases:` in `$BIVY_CONF/config.yml` (name → target, both split on
//! single spaces). Before the verb is looked at, [`expand`] matches the first arguments after
//! any leading flags against the alias names (a name of several words matches as many
//! arguments); the built-in `shell` alias is tried only when no user alias matches. In the
//! target, `@ARGS@` (a word of its own) takes the arguments after the alias, `@ARG1@`, `@ARG2@`
//! (anywhere in a word) the numbered ones, which `@ARGS@` then leaves out; with no `@ARGS@` the
//! remaining arguments are appended. A target starting with `/` runs that program instead (leading flags are dropped).
//!
//! Where lxc differs by accident, bivy is deterministic: when several aliases match, the one
//! with the most words wins (then the first by name), where lxc takes one at random (Go's map
//! order); `@ARG0@` is an error, where lxc panics. Expansion happens once: the result is run in
//! this process, and an external program gets `BIVY_ALIASES=1` so a `bivy` it runs expands
//! nothing (lxc's `LXC_ALIASES=1`).

use std::collections::BTreeMap;

use argh::FromArgs;

use super::conf::Config;
use super::table::{self, Format};
use super::{conf_dir, fail, parse, CmdResult, Fail};

const USAGE: &str = "Description:
  Manage command aliases

Usage:
  bivy alias [command]

Available Commands:
  add         Add new aliases
  list        List aliases
  remove      Remove aliases
  rename      Rename aliases
";

/// lxc's built-in aliases, tried when no user alias matches.
const DEFAULT_ALIASES: &[(&str, &str)] = &[("shell", "exec @ARGS@ -- su -l")];

/// The environment variable that turns expansion off (set for an alias's external program).
pub const NO_EXPAND_ENV: &str = "BIVY_ALIASES";

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// List aliases.
struct ListArgs {
    #[argh(positional)]
    /// no arguments
    words: Vec<String>,
    #[argh(option, short = 'f')]
    /// format (csv|json|table|yaml|compact)
    format: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Alias command arguments.
struct Words {
    #[argh(positional)]
    /// arguments
    words: Vec<String>,
}

/// `bivy alias …`.
pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        print!("{USAGE}");
        return Ok(0);
    };
    let rest = &args[1..];
    let (n, usage) = match sub.as_str() {
        "-h" | "--help" => {
            print!("{USAGE}");
            return Ok(0);
        }
        "list" | "ls" => return list(rest),
        "add" => (
            2,
            "add <alias> <target>\n\nAdd new aliases\n\nExamples:\n  bivy alias add list \"list -c ns46S\"\n    Overwrite the \"list\" command to pass -c ns46S.",
        ),
        "rename" | "mv" => (
            2,
            "rename <old alias> <new alias>\n\nRename aliases\n\nExamples:\n  bivy alias rename list my-list\n    Rename existing alias \"list\" to \"my-list\".",
        ),
        "remove" | "rm" => (
            1,
            "remove <alias>\n\nRemove aliases\n\nExamples:\n  bivy alias remove my-list\n    Remove the \"my-list\" alias.",
        ),
        other => {
            eprint!("{USAGE}");
            return fail(format!("unknown command \"{other}\" for \"bivy alias\""));
        }
    };
    let usage = format!("Usage:\n  bivy alias {usage}\n");
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        print!("{usage}");
        return Ok(0);
    }
    let w: Words = parse(&[&format!("bivy alias {sub}")], rest)?;
    if w.words.len() != n {
        eprint!("{usage}");
        if w.words.is_empty() {
            return Err(Fail::Exit(1));
        }
        return fail("Invalid number of arguments");
    }
    let mut conf = Config::load(&conf_dir())?;
    change(&mut conf.aliases, sub, &w.words)?;
    conf.save()?;
    Ok(0)
}

/// Apply `add`, `rename` or `remove` (their checks and lxc's errors) to the alias map.
fn change(aliases: &mut BTreeMap<String, String>, sub: &str, words: &[String]) -> Result<(), Fail> {
    match (sub, words) {
        ("add", [name, target]) => {
            if aliases.contains_key(name) {
                return fail(format!("Alias {name} already exists"));
            }
            aliases.insert(name.clone(), target.clone());
        }
        ("rename" | "mv", [old, new]) => {
            let Some(target) = aliases.get(old).cloned() else {
                return fail(format!("Alias {old} doesn't exist"));
            };
            if aliases.contains_key(new) {
                return fail(format!("Alias {new} already exists"));
            }
            aliases.remove(old);
            aliases.insert(new.clone(), target);
        }
        ("remove" | "rm", [name]) => {
            if aliases.remove(name).is_none() {
                return fail(format!("Alias {name} doesn't exist"));
            }
        }
        _ => return fail("Invalid number of arguments"),
    }
    Ok(())
}

fn list(args: &[String]) -> CmdResult {
    let a: ListArgs = parse(&["bivy alias list"], args)?;
    if !a.words.is_empty() {
        eprint!("Usage:\n  bivy alias list [flags]\n");
        return fail("Invalid number of arguments");
    }
    let format = Format::parse(a.format.as_deref().unwrap_or("table"))?;
    let conf = Config::load(&conf_dir())?;
    match format {
        Format::Json => super::print_json(&conf.aliases)?,
        Format::Yaml => super::print_yaml(&conf.aliases)?,
        _ => {
            let rows: Vec<Vec<String>> = conf
                .aliases
                .iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .collect();
            print!(
                "{}",
                table::render_rows(format, &["ALIAS", "TARGET"], &rows)
            );
        }
    }
    Ok(0)
}

/// What `argv` becomes after alias expansion.
#[derive(Debug, PartialEq, Eq)]
pub enum Expanded {
    /// No alias matched: run `argv` as given.
    None,
    /// Run this `argv` (program name first) in this process.
    Bivy(Vec<String>),
    /// The alias names a program (`/…`): run it with these arguments (program first).
    External(Vec<String>),
}

/// The alias whose words start `args` (the arguments after the leading flags): its key and
/// value, split on spaces as lxc does. The longest key wins, then the first by name.
fn find<'a>(
    aliases: impl Iterator<Item = (&'a str, &'a str)>,
    args: &[String],
) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let mut best: Option<(Vec<&str>, Vec<&str>)> = None;
    for (k, v) in aliases {
        let key: Vec<&str> = k.split(' ').collect();
        let matches = key.len() <= args.len() && key.iter().zip(args).all(|(a, b)| *a == b);
        if matches && best.as_ref().is_none_or(|(bk, _)| key.len() > bk.len()) {
            best = Some((key, v.split(' ').collect()));
        }
    }
    best
}

/// `@ARGn@` references in one word of a target: (the text, n).
fn numbered(word: &str) -> Result<Vec<(&str, usize)>, String> {
    let mut out = Vec::new();
    let mut rest = word;
    let mut offset = 0;
    while let Some(i) = rest.find("@ARG") {
        let after = &rest[i + 4..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && after[digits..].starts_with('@') {
            let start = offset + i;
            let text = &word[start..start + 4 + digits + 1];
            let n: usize = after[..digits]
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("Invalid argument {text:?}"))?;
            out.push((text, n));
            offset = start + text.len();
            rest = &word[offset..];
        } else {
            offset += i + 4;
            rest = &word[offset..];
        }
    }
    Ok(out)
}

/// lxc's `expandAlias` on a whole `argv` (program name first).
pub fn expand(aliases: &BTreeMap<String, String>, argv: &[String]) -> Result<Expanded, String> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok(Expanded::None);
    };
    let flags = args.iter().take_while(|a| a.starts_with('-')).count();
    let (flag_args, orig) = args.split_at(flags);
    let found = find(aliases.iter().map(|(k, v)| (k.as_str(), v.as_str())), orig)
        .or_else(|| find(DEFAULT_ALIASES.iter().copied(), orig));
    let Some((key, value)) = found else {
        return Ok(Expanded::None);
    };
    let mut at_args: Vec<&String> = orig[key.len()..].iter().collect();
    let mut refs: BTreeMap<usize, String> = BTreeMap::new();
    for word in &value {
        for (_, n) in numbered(word)? {
            let Some(arg) = at_args.get(n - 1) else {
                return Err(format!(
                    "Found alias {:?} references an argument outside the given number",
                    key.join(" ")
                ));
            };
            refs.insert(n, (*arg).clone());
        }
    }
    let mut i = 0;
    at_args.retain(|_| {
        i += 1;
        !refs.contains_key(&i)
    });
    let mut out: Vec<String> = Vec::new();
    let mut used_args = false;
    for word in &value {
        if *word == "@ARGS@" {
            out.extend(at_args.iter().map(|a| (*a).clone()));
            used_args = true;
            continue;
        }
        let mut w = (*word).to_string();
        for (text, n) in numbered(word)? {
            w = w.replace(text, &refs[&n]);
        }
        out.push(w);
    }
    if !used_args {
        out.extend(at_args.iter().map(|a| (*a).clone()));
    }
    if value[0].starts_with('/') {
        return Ok(Expanded::External(out));
    }
    let mut full = Vec::with_capacity(1 + flag_args.len() + out.len());
    full.push(prog.clone());
    full.extend(flag_args.iter().cloned());
    full.extend(out);
    Ok(Expanded::Bivy(full))
}

/// Expand `argv` with the user's aliases (`$BIVY_CONF/config.yml`; an unreadable configuration
/// means no aliases, as with lxc). An external program is run here, and its exit code returned
/// as `Err`.
pub fn expand_argv(argv: Vec<String>) -> Result<Vec<String>, i32> {
    if std::env::var_os(NO_EXPAND_ENV).is_some_and(|v| v == "1") {
        return Ok(argv);
    }
    let aliases = Config::load(&conf_dir())
        .map(|c| c.aliases)
        .unwrap_or_default();
    match expand(&aliases, &argv) {
        Ok(Expanded::None) => Ok(argv),
        Ok(Expanded::Bivy(args)) => Ok(args),
        Ok(Expanded::External(args)) => {
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(&args[0])
                .args(&args[1..])
                .env(NO_EXPAND_ENV, "1")
                .exec();
            eprintln!("Error: Processing aliases failed: {e}");
            Err(1)
        }
        Err(e) => {
            eprintln!("Error: {e}");
            Err(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    fn aliases(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn bivy(s: &str) -> Expanded {
        Expanded::Bivy(argv(s))
    }

    #[test]
    fn no_match_and_appended_args() {
        let a = aliases(&[("ll", "list -c ns46S")]);
        assert_eq!(expand(&a, &argv("bivy list")), Ok(Expanded::None));
        assert_eq!(expand(&a, &argv("bivy")), Ok(Expanded::None));
        assert_eq!(expand(&a, &argv("bivy ll")), Ok(bivy("bivy list -c ns46S")));
        assert_eq!(
            expand(&a, &argv("bivy ll c1 c2")),
            Ok(bivy("bivy list -c ns46S c1 c2"))
        );
        // Leading flags are kept in front; the alias is matched after them.
        assert_eq!(
            expand(&a, &argv("bivy -q --debug ll c1")),
            Ok(bivy("bivy -q --debug list -c ns46S c1"))
        );
        // An alias may shadow a verb (expanded once, not again).
        let a = aliases(&[("list", "list -c n")]);
        assert_eq!(expand(&a, &argv("bivy list")), Ok(bivy("bivy list -c n")));
    }

    #[test]
    fn args_and_numbered_args() {
        let a = aliases(&[
            ("sh", "exec @ARGS@ -- sh"),
            ("cat", "file pull @ARG1@/etc/@ARG2@ -"),
            ("mix", "exec @ARG2@ -- echo @ARGS@ x@ARG2@y"),
        ]);
        assert_eq!(
            expand(&a, &argv("bivy sh c1")),
            Ok(bivy("bivy exec c1 -- sh"))
        );
        assert_eq!(
            expand(&a, &argv("bivy cat c1 hostname")),
            Ok(bivy("bivy file pull c1/etc/hostname -"))
        );
        // Numbered arguments leave @ARGS@; with @ARGS@ nothing is appended.
        assert_eq!(
            expand(&a, &argv("bivy mix a b c")),
            Ok(bivy("bivy exec b -- echo a c xby"))
        );
        assert_eq!(
            expand(&a, &argv("bivy cat c1")),
            Err("Found alias \"cat\" references an argument outside the given number".into())
        );
        let zero = aliases(&[("z", "list @ARG0@")]);
        assert_eq!(
            expand(&zero, &argv("bivy z a")),
            Err("Invalid argument \"@ARG0@\"".into())
        );
        // Not a reference: left as it is.
        let lit = aliases(&[("l", "list @ARG@ @ARGx@ user@ARG1@")]);
        assert_eq!(
            expand(&lit, &argv("bivy l a b")),
            Ok(bivy("bivy list @ARG@ @ARGx@ usera b"))
        );
    }

    #[test]
    fn multi_word_keys_longest_first_and_builtin_shell() {
        let a = aliases(&[("image", "image"), ("image ls", "image list -c lfd")]);
        assert_eq!(
            expand(&a, &argv("bivy image ls debian")),
            Ok(bivy("bivy image list -c lfd debian"))
        );
        assert_eq!(
            expand(&a, &argv("bivy image show x")),
            Ok(bivy("bivy image show x"))
        );
        assert_eq!(
            expand(&BTreeMap::new(), &argv("bivy shell c1")),
            Ok(bivy("bivy exec c1 -- su -l"))
        );
        // A user alias named shell wins over the built-in one.
        let own = aliases(&[("shell", "exec @ARGS@ -- sh")]);
        assert_eq!(
            expand(&own, &argv("bivy shell c1")),
            Ok(bivy("bivy exec c1 -- sh"))
        );
    }

    #[test]
    fn external_programs() {
        let a = aliases(&[("hi", "/bin/echo hello @ARG1@")]);
        assert_eq!(
            expand(&a, &argv("bivy -q hi you there")),
            Ok(Expanded::External(argv("/bin/echo hello you there")))
        );
    }

    #[test]
    fn add_rename_remove_like_lxc() {
        let mut a = BTreeMap::new();
        let w = |s: &str| argv(s);
        assert!(change(&mut a, "add", &w("ll")).is_err());
        change(
            &mut a,
            "add",
            &["ll".to_string(), "list -c ns46S".to_string()],
        )
        .unwrap();
        let err = |r: Result<(), Fail>| match r {
            Err(Fail::Error(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(change(&mut a, "add", &["ll".to_string(), "x".to_string()])),
            "Alias ll already exists"
        );
        assert_eq!(
            err(change(&mut a, "rename", &w("nope x"))),
            "Alias nope doesn't exist"
        );
        change(&mut a, "add", &w("other list")).unwrap();
        assert_eq!(
            err(change(&mut a, "mv", &w("ll other"))),
            "Alias other already exists"
        );
        change(&mut a, "rename", &w("ll l2")).unwrap();
        assert_eq!(a.get("l2").map(String::as_str), Some("list -c ns46S"));
        assert!(!a.contains_key("ll"));
        change(&mut a, "rm", &w("l2")).unwrap();
        assert_eq!(
            err(change(&mut a, "remove", &w("l2"))),
            "Alias l2 doesn't exist"
        );
    }

    #[test]
    fn aliases_round_trip_in_config_yml() {
        let mut c = Config::defaults(std::path::Path::new("/x"));
        c.aliases.insert("ll".into(), "list -c ns46S".into());
        c.aliases.insert("image ls".into(), "image list".into());
        let text = c.to_yaml().unwrap();
        assert!(
            text.ends_with("aliases:\n  image ls: image list\n  ll: list -c ns46S\n"),
            "{text}"
        );
        let back = Config::parse(std::path::Path::new("/x"), &text).unwrap();
        assert_eq!(back.aliases, c.aliases);
        assert_eq!(back.to_yaml().unwrap(), text);
    }
}
