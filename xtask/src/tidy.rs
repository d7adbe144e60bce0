//! `cargo xtask tidy`: the architecture invariants of `src/lib.rs`, checked by scanning text.
//!
//! Rules (each violation is printed as `file:line: message`; any violation fails):
//! - `unsafe` appears only under `src/sys/`, and every `unsafe` block, fn or impl has a
//!   `// SAFETY:` comment just above it.
//! - `src/instance/` imports neither `crate::http` nor `crate::daemon`.
//! - A file under `src/daemon/endpoints/` imports no other endpoint file.
//! - `src/cli/` and `src/client/` import none of `daemon`, `runtime`, `image`, `instance`, `sys`.
//! - Every `.rs` file under `src/` starts with a `//!` doc.
//! - Every crate in `Cargo.toml` `[dependencies]` has a row in the README's `## Dependencies`
//!   table.
//! - No `.sort*(` call in `src/` outside its tests: `crate::util::sort` sorts through one
//!   instantiation of the standard sort (each call site's own costs about 4.5 KB of binary).
//! - No `serde_json::from_str` (`from_slice` of the bytes: one deserializer per type instead of
//!   two, the same checks) and no `Map::from([...])` (`crate::util::sort::map`: its sort is
//!   instantiated per call site) in `src/` outside its tests.
//! - No import cycle between the files of `src/daemon/` or of `src/instance/` (`cycles`, which
//!   `cargo xtask cycles` prints with each edge's line).
//!
//! No parser crate: comments and string literals are blanked out first (so a word in a message
//! or a doc is never code), then `crate::`, `super::` and `self::` paths, `use` groups included,
//! are resolved against the file's module path. A rule about a directory that does not exist
//! finds nothing.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{self, Result};

pub fn run(args: &[String]) -> Result {
    if let Some(a) = args.first() {
        return Err(format!("tidy takes no arguments (got `{a}`)"));
    }
    let violations = check_tree(&util::root())?;
    for v in &violations {
        eprintln!("{v}");
    }
    if violations.is_empty() {
        eprintln!("xtask tidy: ok");
        Ok(())
    } else {
        Err(format!("{} violation(s)", violations.len()))
    }
}

/// Every violation in the workspace at `root`, sorted by file and line.
pub fn check_tree(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files)?;
    files.sort();
    for path in &files {
        let rel = path
            .strip_prefix(root)
            .map_err(|_| format!("{} is outside {}", path.display(), root.display()))?;
        let rel = rel.to_string_lossy().replace('\\', "/");
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (line, msg) in check_file(&rel, &text) {
            out.push(format!("{rel}:{line}: {msg}"));
        }
    }
    out.extend(crate::cycles::violations(root)?);
    let cargo = read(&root.join("Cargo.toml"))?;
    let readme = read(&root.join("README.md"))?;
    let listed = readme_dependencies(&readme);
    for (line, name) in cargo_dependencies(&cargo) {
        if !listed.iter().any(|l| l == &name) {
            out.push(format!(
                "Cargo.toml:{line}: dependency `{name}` has no row in README.md's `## Dependencies` table"
            ));
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

pub fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result {
    let rd = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| format!("{}: {e}", p.display()))?;
        if ft.is_dir() {
            rs_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// The violations in one file, `rel` being its path from the workspace root (`src/...`), as
/// (1-based line, message).
pub fn check_file(rel: &str, text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    if !text
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.starts_with("//!"))
    {
        out.push((
            1,
            "file does not start with a `//!` doc saying what it owns".to_string(),
        ));
    }
    let lines = strip(text);
    let in_sys = rel.starts_with("src/sys/");
    for (i, l) in lines.iter().enumerate() {
        if !has_word(&l.code, "unsafe") {
            continue;
        }
        if !in_sys {
            out.push((
                i + 1,
                "`unsafe` outside src/sys/ (add a safe wrapper there)".to_string(),
            ));
        }
        if !safety_comment_above(&lines, i) {
            out.push((
                i + 1,
                "`unsafe` without a `// SAFETY:` comment just above".to_string(),
            ));
        }
    }
    // The tests at the end of a file (`#[cfg(test)]` onwards) and tests.rs are not shipped.
    let shipped = if rel.ends_with("/tests.rs") || rel == "src/util/sort.rs" {
        0
    } else {
        lines
            .iter()
            .position(|l| l.code.contains("#[cfg(test)]"))
            .unwrap_or(lines.len())
    };
    for (i, l) in lines[..shipped].iter().enumerate() {
        const SORTS: &[&str] = &[
            ".sort(",
            ".sort_by(",
            ".sort_by_key(",
            ".sort_by_cached_key(",
            ".sort_unstable",
        ];
        if SORTS.iter().any(|m| l.code.contains(m)) {
            out.push((
                i + 1,
                "a slice sort here instantiates the whole sort again (~4.5 KB): use \
                 crate::util::sort"
                    .to_string(),
            ));
        }
        if l.code.contains("serde_json::from_str") {
            out.push((
                i + 1,
                "serde_json::from_str instantiates each type's deserializer again for &str: use \
                 serde_json::from_slice(s.as_bytes())"
                    .to_string(),
            ));
        }
        if l.code.contains("Map::from([") || l.code.contains("Set::from([") {
            out.push((
                i + 1,
                "a map made from an array sorts it with its own copy of the sort: use \
                 crate::util::sort::map"
                    .to_string(),
            ));
        }
    }
    let module = module_path(rel);
    for (line, path) in paths(&lines, &module) {
        if let Some(msg) = layering(rel, &module, &path) {
            out.push((line, msg));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The layering rule `path` (absolute, from `crate`) breaks when used in file `rel`, if any.
fn layering(rel: &str, module: &[String], path: &[String]) -> Option<String> {
    let top = path.get(1).map(String::as_str)?;
    let shown = path.join("::");
    if rel.starts_with("src/instance/") && matches!(top, "http" | "daemon") {
        return Some(format!(
            "src/instance/ must not use `{shown}` (instance knows no HTTP)"
        ));
    }
    if (rel.starts_with("src/cli/") || rel.starts_with("src/client/"))
        && matches!(top, "daemon" | "runtime" | "image" | "instance" | "sys")
    {
        return Some(format!(
            "cli/ and client/ must not use `{shown}` (they talk to the daemon over the API)"
        ));
    }
    // An endpoint file is `daemon::endpoints::<name>` (plus any submodules of its own).
    if rel.starts_with("src/daemon/endpoints/") && module.len() >= 3 {
        let own = &module[2];
        let is_endpoints = path.len() >= 4 && path[1] == "daemon" && path[2] == "endpoints";
        if is_endpoints && &path[3] != own {
            return Some(format!(
                "endpoint file `{own}` must not use another endpoint file (`{shown}`): move what they share out of endpoints/"
            ));
        }
    }
    None
}

/// One source line split into code (comments and literal contents blanked to spaces) and the
/// text of the comments on it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Line {
    pub code: String,
    pub comment: String,
}

/// Split Rust source into [`Line`]s. Handles line, block (nested) and doc comments, strings with
/// escapes, raw and byte strings, char literals and lifetimes. Quotes stay in the code so that a
/// blanked literal is still visibly a literal.
pub fn strip(text: &str) -> Vec<Line> {
    let chars: Vec<char> = text.chars().collect();
    let mut lines = vec![Line::default()];
    let mut i = 0;
    let push = |lines: &mut Vec<Line>, c: char, code: bool| {
        if c == '\n' {
            lines.push(Line::default());
        } else if code {
            lines.last_mut().expect("never empty").code.push(c);
        } else {
            let l = lines.last_mut().expect("never empty");
            l.code.push(' ');
            l.comment.push(c);
        }
    };
    // Blank a literal's content: newlines are kept, everything else becomes a space.
    let blank = |lines: &mut Vec<Line>, c: char| {
        if c == '\n' {
            lines.push(Line::default());
        } else {
            lines.last_mut().expect("never empty").code.push(' ');
        }
    };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                push(&mut lines, chars[i], false);
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    push(&mut lines, '/', false);
                    push(&mut lines, '*', false);
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    push(&mut lines, '*', false);
                    push(&mut lines, '/', false);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    push(&mut lines, chars[i], false);
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br"..", with any number of #.
        let prev_ident = i > 0 && ident(chars[i - 1]);
        let raw_start = match (c, next) {
            ('r', Some('"' | '#')) if !prev_ident => Some(i + 1),
            ('b', Some('r')) if !prev_ident && matches!(chars.get(i + 2), Some('"' | '#')) => {
                Some(i + 2)
            }
            _ => None,
        };
        if let Some(mut j) = raw_start {
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) == Some(&'"') {
                for &p in &chars[i..=j] {
                    push(&mut lines, p, true);
                }
                i = j + 1;
                while i < chars.len() {
                    if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
                        for _ in 0..=hashes {
                            push(&mut lines, chars[i], true);
                            i += 1;
                        }
                        break;
                    }
                    blank(&mut lines, chars[i]);
                    i += 1;
                }
                continue;
            }
        }
        if c == '"' {
            push(&mut lines, '"', true);
            i += 1;
            while i < chars.len() {
                match chars[i] {
                    '\\' => {
                        blank(&mut lines, ' ');
                        if let Some(&e) = chars.get(i + 1) {
                            blank(&mut lines, e);
                        }
                        i += 2;
                    }
                    '"' => {
                        push(&mut lines, '"', true);
                        i += 1;
                        break;
                    }
                    other => {
                        blank(&mut lines, other);
                        i += 1;
                    }
                }
            }
            continue;
        }
        if c == '\'' {
            // A char literal ('a', '\n', '\'', '\u{1F600}') or a lifetime ('a, 'static).
            let end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&k| chars[k] == '\'' && k > i + 2)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                push(&mut lines, '\'', true);
                for _ in i + 1..end {
                    blank(&mut lines, ' ');
                }
                push(&mut lines, '\'', true);
                i = end + 1;
                continue;
            }
        }
        push(&mut lines, c, true);
        i += 1;
    }
    lines
}

/// Whether `word` occurs in `code` as a whole identifier.
pub fn has_word(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// Whether the comment lines (and attributes) right above line `i` contain `SAFETY:`.
fn safety_comment_above(lines: &[Line], i: usize) -> bool {
    for l in lines[..i].iter().rev() {
        let code = l.code.trim();
        if l.comment.contains("SAFETY:") {
            return true;
        }
        let comment_only = code.is_empty() && !l.comment.is_empty();
        let attribute = code.starts_with("#[") && code.ends_with(']');
        if !(comment_only || attribute) {
            return false;
        }
    }
    false
}

/// The module path of a file under `src/`: `src/daemon/endpoints/mod.rs` is
/// `["daemon", "endpoints"]`, `src/http/server/tests.rs` is `["http", "server", "tests"]`, and
/// `src/lib.rs` and `src/main.rs` are the crate root `[]`.
pub fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_prefix("src/").unwrap_or(rel);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod"))
        || parts == ["lib"]
        || parts == ["main"]
    {
        parts.pop();
    }
    parts
}

/// Every `crate::`, `super::` and `self::` path in the code, `use` groups expanded, resolved to
/// an absolute path starting with `crate`, with the line it starts on. Paths that climb above
/// the crate root are dropped.
pub fn paths(lines: &[Line], module: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut code = String::new();
    let mut line_of = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        code.push_str(&l.code);
        code.push('\n');
        line_of.resize(code.len(), n + 1);
    }
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate", "super", "self"].iter().find(|w| {
            bytes[i..].starts_with(w.as_bytes())
                && code[i + w.len()..].trim_start().starts_with("::")
                && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':'))
        });
        if starts.is_none() {
            i += 1;
            continue;
        }
        let (trees, end) = parse_tree(&code, i);
        if restricts_visibility(&code[..i]) {
            // `pub(in crate::a::b)` names where an item is seen, not what it uses.
            i = end.max(i + 1);
            continue;
        }
        for t in trees {
            if let Some(abs) = resolve(module, &t) {
                out.push((line_of[i], abs));
            }
        }
        i = end.max(i + 1);
    }
    out
}

/// Whether the code before a path ends with `pub(in`: the path is a visibility restriction.
fn restricts_visibility(before: &str) -> bool {
    let Some(b) = before.trim_end().strip_suffix("in") else {
        return false;
    };
    b.trim_end()
        .strip_suffix('(')
        .is_some_and(|b| b.trim_end().ends_with("pub"))
}

/// Parse a path or `use` tree starting at `at`: `a::b::{c, d::{e as f}, self}` gives
/// `[a,b,c]`, `[a,b,d,e]`, `[a,b]`. Returns the paths and where parsing stopped.
fn parse_tree(code: &str, at: usize) -> (Vec<Vec<String>>, usize) {
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut prefix: Vec<String> = Vec::new();
    let mut i = at;
    loop {
        i = skip_ws(i);
        if i < b.len() && b[i] == b'{' {
            let mut out = Vec::new();
            i += 1;
            loop {
                i = skip_ws(i);
                if i >= b.len() {
                    return (out, i);
                }
                if b[i] == b'}' {
                    return (out, i + 1);
                }
                if b[i] == b',' {
                    i += 1;
                    continue;
                }
                let (subs, end) = parse_tree(code, i);
                for s in subs {
                    let mut p = prefix.clone();
                    if s != ["self"] {
                        p.extend(s);
                    }
                    out.push(p);
                }
                if end == i {
                    i += 1; // `*` or a stray token: nothing to resolve
                    continue;
                }
                i = end;
                // Skip `as name`.
                let j = skip_ws(i);
                if code[j..].starts_with("as ") {
                    i = skip_ws(j + 3);
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        if i == start {
            // A glob (`a::*`) names its prefix; a stray token names nothing.
            if b.get(i) == Some(&b'*') {
                return (vec![prefix], i + 1);
            }
            return (
                if prefix.is_empty() {
                    vec![]
                } else {
                    vec![prefix]
                },
                i,
            );
        }
        prefix.push(code[start..i].to_string());
        let j = skip_ws(i);
        if code[j..].starts_with("::") {
            i = j + 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// `path` as seen from `module`, made absolute (`["crate", ...]`); `None` above the root.
pub fn resolve(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut abs = vec!["crate".to_string()];
    abs.extend(base);
    abs.extend(rest.iter().cloned());
    Some(abs)
}

/// The crate names in `Cargo.toml`'s `[dependencies]` (and `[dependencies.<name>]` tables),
/// with their line numbers.
pub fn cargo_dependencies(toml: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for (n, line) in toml.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let header = t.trim_start_matches('[').trim_end_matches(']').trim();
            in_deps = header == "dependencies";
            if let Some(name) = header.strip_prefix("dependencies.") {
                out.push((n + 1, name.trim().trim_matches('"').to_string()));
            }
            continue;
        }
        if !in_deps || t.is_empty() || t.starts_with('#') {
            continue;
        }
        let key = t
            .split(['=', '.'])
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if !key.is_empty() {
            out.push((n + 1, key.to_string()));
        }
    }
    out
}

/// The first column of the table in README's `## Dependencies` section (names unquoted).
pub fn readme_dependencies(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_section = false;
    for line in readme.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            in_section = h.trim() == "Dependencies";
            continue;
        }
        if !in_section {
            continue;
        }
        let Some(row) = line.trim().strip_prefix('|') else {
            continue;
        };
        let cell = row
            .split('|')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('`')
            .trim();
        if cell.is_empty() || cell.chars().all(|c| c == '-' || c == ':') || cell == "Crate" {
            continue;
        }
        out.push(cell.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(rel: &str, text: &str) -> Vec<String> {
        check_file(rel, text)
            .into_iter()
            .map(|(l, m)| format!("{l}: {m}"))
            .collect()
    }

    #[test]
    fn strip_blanks_comments_and_literals() {
        let l = strip("let s = \"unsafe // no\"; // unsafe here\nlet c = '\"'; /* a\n unsafe */ x");
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].code.trim_end(), "let s = \"            \";");
        assert_eq!(l[0].comment, "// unsafe here");
        assert_eq!(l[1].code.trim_end(), "let c = ' ';");
        assert_eq!(l[2].code.trim(), "x");
        assert!(l[2].comment.contains("unsafe"));
        // Raw strings, byte strings, escapes, lifetimes and nested block comments.
        let l = strip(
            "r#\"a \" unsafe\"# b\"\\\"unsafe\" fn f<'a>(x: &'a u8) /* /* */ unsafe */ '\\''",
        );
        assert!(!has_word(&l[0].code, "unsafe"), "{:?}", l[0].code);
        assert!(l[0].code.contains("fn f<'a>(x: &'a u8)"), "{:?}", l[0].code);
        assert!(l[0].code.trim_end().ends_with("'  '"), "{:?}", l[0].code);
        // Line count is preserved through multi-line strings.
        assert_eq!(strip("\"a\nb\"\nc").len(), 3);
    }

    #[test]
    fn words_are_whole_identifiers() {
        assert!(has_word("let x = unsafe { f() };", "unsafe"));
        assert!(has_word("unsafe fn f()", "unsafe"));
        assert!(!has_word("#![deny(unsafe_code)]", "unsafe"));
        assert!(!has_word("not_unsafe()", "unsafe"));
    }

    #[test]
    fn unsafe_rules() {
        let ok = "//! d\n// SAFETY: fine.\n// More words.\nlet r = unsafe { f() };\n";
        assert!(msgs("src/sys/mod.rs", ok).is_empty());
        let attr = "//! d\n// SAFETY: fine.\n#[allow(clippy::x)]\nunsafe impl Send for X {}\n";
        assert!(msgs("src/sys/a.rs", attr).is_empty());
        assert_eq!(
            msgs(
                "src/sys/mod.rs",
                "//! d\nlet a = 1;\nlet r = unsafe { f() };\n"
            ),
            ["3: `unsafe` without a `// SAFETY:` comment just above"]
        );
        assert_eq!(
            msgs(
                "src/sys/mod.rs",
                "//! d\n// SAFETY: for the first\nf();\nunsafe fn g() {}\n"
            ),
            ["4: `unsafe` without a `// SAFETY:` comment just above"]
        );
        assert_eq!(
            msgs("src/runtime/x.rs", ok),
            ["4: `unsafe` outside src/sys/ (add a safe wrapper there)"]
        );
        let words = "//! unsafe\n// unsafe\nlet s = \"unsafe\";\n#![deny(unsafe_code)]\n";
        assert!(msgs("src/runtime/x.rs", words).is_empty());
    }

    #[test]
    fn sort_rule() {
        let m = msgs("src/a.rs", "//! d\nfn f(v: &mut Vec<u8>) { v.sort(); }\n");
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("crate::util::sort"), "{m:?}");
        assert!(msgs(
            "src/a.rs",
            "//! d\nfn f() {}\n#[cfg(test)]\nmod t { fn g(v: &mut Vec<u8>) { v.sort(); } }\n"
        )
        .is_empty());
        assert!(msgs(
            "src/a/tests.rs",
            "//! d\nfn g(v: &mut Vec<u8>) { v.sort(); }\n"
        )
        .is_empty());
    }

    #[test]
    fn instantiation_rules() {
        let m = msgs(
            "src/a.rs",
            "//! d\nfn f(s: &str) { let v: V = serde_json::from_str(s); let m = BTreeMap::from([(1, 2)]); }\n",
        );
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.iter().any(|s| s.contains("from_slice")), "{m:?}");
        assert!(m.iter().any(|s| s.contains("util::sort::map")), "{m:?}");
        assert!(msgs(
            "src/a.rs",
            "//! d\nfn f() {}\n#[cfg(test)]\nmod t { fn g() { serde_json::from_str(\"1\"); } }\n"
        )
        .is_empty());
    }

    #[test]
    fn doc_rule() {
        assert!(msgs("src/a.rs", "\n//! Owns a.\nfn f() {}\n").is_empty());
        assert_eq!(
            msgs("src/a.rs", "/// f\nfn f() {}\n"),
            ["1: file does not start with a `//!` doc saying what it owns"]
        );
        assert_eq!(msgs("src/a.rs", "").len(), 1);
    }

    #[test]
    fn module_paths_and_resolution() {
        assert_eq!(module_path("src/lib.rs"), Vec::<String>::new());
        assert_eq!(module_path("src/http/mod.rs"), ["http"]);
        assert_eq!(
            module_path("src/http/server/tests.rs"),
            ["http", "server", "tests"]
        );
        let m = module_path("src/instance/create.rs");
        let p = |s: &str| {
            paths(&strip(s), &m)
                .into_iter()
                .map(|(l, p)| (l, p.join("::")))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            p("use super::config;"),
            [(1, "crate::instance::config".to_string())]
        );
        assert_eq!(
            p("use super::super::daemon::Daemon;"),
            [(1, "crate::daemon::Daemon".to_string())]
        );
        assert_eq!(p("use super::super::super::x;"), []);
        assert_eq!(
            p("use crate::{api,\n  http::{self, Body as B}, daemon::x::*};"),
            [
                (1, "crate::api".to_string()),
                (1, "crate::http".to_string()),
                (1, "crate::http::Body".to_string()),
                (1, "crate::daemon::x".to_string()),
            ]
        );
        assert_eq!(
            p("let x = crate :: http::f(self::g());"),
            [
                (1, "crate::http::f".to_string()),
                (1, "crate::instance::create::g".to_string()),
            ]
        );
        // Not paths: a field named crate_x, a string, `bivy::` from the binary.
        assert_eq!(p("x.crate_x::y; \"crate::http\"; bivy::daemon::run();"), []);
        // A visibility restriction is no import; what follows it may be.
        assert_eq!(
            p("pub(in crate::daemon) fn f() -> self::X {}\npub ( in super::super ) struct S;"),
            [(1, "crate::instance::create::X".to_string())]
        );
    }

    #[test]
    fn layering_rules() {
        let instance = "//! i\nuse crate::http::Response;\nuse super::super::daemon::Daemon;\nuse crate::api;\n";
        assert_eq!(
            msgs("src/instance/create.rs", instance),
            [
                "2: src/instance/ must not use `crate::http::Response` (instance knows no HTTP)",
                "3: src/instance/ must not use `crate::daemon::Daemon` (instance knows no HTTP)",
            ]
        );
        assert!(msgs("src/daemon/x.rs", instance).is_empty());
        let ep = "//! e\nuse super::images;\nuse super::super::response;\nuse crate::daemon::endpoints::instances::helper;\nuse super::instances::sub;\n";
        assert_eq!(
            msgs("src/daemon/endpoints/instances.rs", ep),
            ["2: endpoint file `instances` must not use another endpoint file (`crate::daemon::endpoints::images`): move what they share out of endpoints/"]
        );
        // The endpoints' mod.rs lists them; that is not one endpoint importing another.
        assert!(msgs(
            "src/daemon/endpoints/mod.rs",
            "//! r\nuse self::images::get;\n"
        )
        .is_empty());
        let cli = "//! c\nuse crate::client::Client;\nuse crate::{api, runtime::Spec};\nfn f() { crate::sys::fork(); }\n";
        assert_eq!(
            msgs("src/cli/exec.rs", cli),
            [
                "3: cli/ and client/ must not use `crate::runtime::Spec` (they talk to the daemon over the API)",
                "4: cli/ and client/ must not use `crate::sys::fork` (they talk to the daemon over the API)",
            ]
        );
        assert_eq!(
            msgs("src/client/mod.rs", "//! c\nuse super::image::x;\n").len(),
            1
        );
    }

    #[test]
    fn dependency_lists() {
        let toml = "[package]\nname = \"bivy\"\n\n[dependencies]\nlibc = \"0.2\"\nnix = { version = \"0.31\" }\n# c\nserde.workspace = true\n\n[dependencies.rustls]\nversion = \"0.23\"\n\n[dev-dependencies]\nx = \"1\"\n";
        assert_eq!(
            cargo_dependencies(toml),
            [
                (5, "libc".into()),
                (6, "nix".into()),
                (8, "serde".into()),
                (10, "rustls".into())
            ]
        );
        let readme = "# x\n| Crate | Why |\n|---|---|\n| no | other section |\n## Dependencies\n\nText.\n\n| Crate | Why |\n|---|---|\n| libc | a |\n| `nix` | b |\n\n## Storage\n| serde | not here |\n";
        assert_eq!(readme_dependencies(readme), ["libc", "nix"]);
    }

    /// The tree itself is tidy (what `cargo xtask tidy` checks, as a test).
    #[test]
    fn tree_is_tidy() {
        let v = check_tree(&util::root()).expect("tree readable");
        assert!(v.is_empty(), "xtask tidy:\n{}", v.join("\n"));
    }
}
