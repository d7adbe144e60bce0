//! `cargo xtask cycles [--root WORKTREE] [DIR...]`: import cycles between the files of `src/daemon/` and
//! `src/instance/` (or of the directories named, `src` for the whole crate).
//!
//! The graph: one node per `.rs` file under `src/`; an edge from file A to file B when A names an
//! item of B's module by a `crate::`, `super::` or `self::` path (a `use` or an inline path), or
//! by a path through one of its own child modules (`mod wire;` then `use wire::Message`). Paths
//! are found and resolved as `tidy` finds them (comments and literals blanked), inline modules
//! (`mod tests { use super::*; }`) resolved from their own module, and a path is taken to point
//! at the file of its longest module prefix. Edges between files of the directories asked about
//! are kept; every strongly connected set of two or more files is a cycle, printed with one
//! closed path through it and the line of each edge. Fails when there is one; `tidy` fails too
//! (through [`violations`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::tidy::{module_path, paths, resolve, rs_files, strip, Line};
use crate::util::{self, Result};

pub fn run(args: &[String]) -> Result {
    let (root, args) = match args {
        [flag, dir, rest @ ..] if flag == "--root" => (std::path::PathBuf::from(dir), rest),
        _ => (util::root(), args),
    };
    let dirs: Vec<String> = if args.is_empty() {
        DIRS.iter().map(|d| d.to_string()).collect()
    } else {
        args.iter()
            .map(|a| a.trim_end_matches('/').to_string())
            .collect()
    };
    let graph = graph(&root)?;
    let cycles = cycles(&graph, &dirs);
    let files = graph.keys().filter(|f| in_dirs(f, &dirs)).count();
    let edges: usize = graph
        .iter()
        .filter(|(f, _)| in_dirs(f, &dirs))
        .map(|(_, to)| to.keys().filter(|t| in_dirs(t, &dirs)).count())
        .sum();
    println!(
        "xtask cycles: {} files, {edges} import edges between them, in {}",
        files,
        dirs.join(" ")
    );
    for c in &cycles {
        println!("cycle of {} files: {}", c.files.len(), c.files.join(" "));
        for w in c.path.windows(2) {
            println!("  {}:{} -> {}", w[0], graph[&w[0]][&w[1]], w[1]);
        }
    }
    if cycles.is_empty() {
        println!("xtask cycles: no cycle");
        Ok(())
    } else {
        Err(format!("{} import cycle(s)", cycles.len()))
    }
}

/// The directories whose files must import each other without a cycle (`tidy` checks them).
pub const DIRS: [&str; 2] = ["src/daemon", "src/instance"];

/// The cycles among the files of [`DIRS`] in the workspace at `root`, each as one line: its
/// files, then a closed path through them with the line of each edge.
pub fn violations(root: &Path) -> Result<Vec<String>> {
    let graph = graph(root)?;
    let dirs: Vec<String> = DIRS.iter().map(|d| d.to_string()).collect();
    Ok(cycles(&graph, &dirs)
        .iter()
        .map(|c| {
            let path: Vec<String> = c
                .path
                .windows(2)
                .map(|w| format!("{}:{} -> {}", w[0], graph[&w[0]][&w[1]], w[1]))
                .collect();
            format!(
                "import cycle between {} files ({}): {} (`cargo xtask cycles` shows it)",
                c.files.len(),
                c.files.join(" "),
                path.join(", ")
            )
        })
        .collect())
}

/// File (`src/...`) -> the files it imports from, each with the first line that does.
pub type Graph = BTreeMap<String, BTreeMap<String, usize>>;

fn in_dirs(file: &str, dirs: &[String]) -> bool {
    dirs.iter()
        .any(|d| file.starts_with(&format!("{d}/")) || file == format!("{d}.rs"))
}

/// The import graph of `src/` under `root`.
pub fn graph(root: &Path) -> Result<Graph> {
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files)?;
    let mut texts = Vec::new();
    for p in &files {
        let rel = p
            .strip_prefix(root)
            .map_err(|_| format!("{} is outside {}", p.display(), root.display()))?
            .to_string_lossy()
            .replace('\\', "/");
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        texts.push((rel, text));
    }
    Ok(graph_of(&texts))
}

/// The import graph of `(path from the workspace root, text)` pairs.
pub fn graph_of(files: &[(String, String)]) -> Graph {
    // Module path -> file (`lib.rs` and `main.rs` are the root, which no edge targets).
    let modules: BTreeMap<Vec<String>, &str> = files
        .iter()
        .map(|(rel, _)| (module_path(rel), rel.as_str()))
        .filter(|(m, _)| !m.is_empty())
        .collect();
    // What each module's own `use` items bring in: a path through them is a path to where they
    // point (so `super::Ctx` reaches `ctx.rs` through `mod.rs`'s `pub use ctx::Ctx`).
    let imports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = files
        .iter()
        .map(|(rel, text)| (module_path(rel), module_imports(rel, text)))
        .collect();
    let target_of = |abs: &[String]| -> Option<&str> {
        let mut abs = abs.to_vec();
        for _ in 0..16 {
            // abs = ["crate", a, b, ...]: the longest prefix that is a file's module.
            let n = (1..abs.len())
                .rev()
                .find(|n| modules.contains_key(&abs[1..=*n]))?;
            let via = abs
                .get(n + 1)
                .and_then(|name| imports.get(&abs[1..=n])?.get(name));
            match via {
                Some(to) if to[..] != abs[..=n + 1] => {
                    let mut next = to.clone();
                    next.extend_from_slice(&abs[n + 2..]);
                    abs = next;
                }
                _ => return modules.get(&abs[1..=n]).copied(),
            }
        }
        None
    };
    let mut g = Graph::new();
    for (rel, text) in files {
        let edges = g.entry(rel.clone()).or_default();
        for (line, abs) in file_paths(rel, text) {
            if let Some(t) = target_of(&abs).filter(|t| *t != rel) {
                edges.entry(t.to_string()).or_insert(line);
            }
        }
    }
    g
}

/// The names a file's module-level `use` items (any visibility) bring in, each with the
/// absolute path it stands for. Paths outside the crate (`std::...`) are left out.
fn module_imports(rel: &str, text: &str) -> BTreeMap<String, Vec<String>> {
    let mut lines = strip(text);
    let children = child_modules(&lines);
    for l in &mut lines {
        l.code = qualify(&l.code, &children);
    }
    let module = module_path(rel);
    let mut code = String::new();
    let mut depth = 0i64;
    // Only what is outside every brace: module-level items.
    for l in &lines {
        for c in l.code.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            code.push(if depth == 0 || (depth == 1 && c == '{') {
                c
            } else {
                ' '
            });
        }
        code.push('\n');
    }
    // Braces of `use` groups were blanked with the rest: take `use` items from the text again.
    let mut out = BTreeMap::new();
    let text_code: String = lines.iter().map(|l| l.code.clone() + "\n").collect();
    let b = text_code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while let Some(k) = code[i..].find("use ") {
        let at = i + k;
        i = at + 4;
        if at > 0 && ident(b[at - 1]) {
            continue;
        }
        let Some(end) = text_code[at..].find(';') else {
            break;
        };
        for (name, path) in use_tree(&text_code[at + 4..at + end]) {
            if let Some(abs) = resolve(&module, &path) {
                out.insert(name, abs);
            }
        }
        i = at + end;
    }
    out
}

/// The (name, path) pairs of a `use` tree: `a::{b as c, d::{self, e}}` gives `c`: a::b,
/// `d`: a::d, `e`: a::d::e. Globs bring no name.
fn use_tree(s: &str) -> Vec<(String, Vec<String>)> {
    fn walk(s: &str, prefix: &[String], out: &mut Vec<(String, Vec<String>)>) {
        let s = s.trim();
        if let Some(open) = s.find('{') {
            let mut prefix = prefix.to_vec();
            prefix.extend(
                s[..open]
                    .split("::")
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from),
            );
            let inner = &s[open + 1..s.rfind('}').unwrap_or(s.len())];
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        walk(&inner[start..j], &prefix, out);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            walk(&inner[start..], &prefix, out);
            return;
        }
        let (path, alias) = match s.split_once(" as ") {
            Some((p, a)) => (p.trim(), Some(a.trim())),
            None => (s, None),
        };
        let mut full = prefix.to_vec();
        full.extend(
            path.split("::")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from),
        );
        if full.last().is_some_and(|l| l == "self") {
            full.pop();
        }
        if full.last().is_some_and(|l| l == "*") || full.is_empty() {
            return;
        }
        let name = alias.map_or_else(|| full.last().expect("not empty").clone(), String::from);
        if name != "_" {
            out.push((name, full));
        }
    }
    let mut out = Vec::new();
    walk(s, &[], &mut out);
    out
}

/// Every path of a file, resolved, with its line: inline modules from their own module path,
/// paths through the file's child modules as `self::` paths.
fn file_paths(rel: &str, text: &str) -> Vec<(usize, Vec<String>)> {
    let mut lines = strip(text);
    let children = child_modules(&lines);
    for l in &mut lines {
        l.code = qualify(&l.code, &children);
    }
    // The module each line is in: the file's, plus the inline `mod NAME {` blocks open there.
    let base = module_path(rel);
    let mut stack: Vec<(String, i64)> = Vec::new();
    let mut depth: i64 = 0;
    let mut segments: Vec<(Vec<String>, Vec<Line>, usize)> = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        let mut module = base.clone();
        module.extend(stack.iter().map(|(m, _)| m.clone()));
        match segments.last_mut() {
            Some((m, ls, _)) if *m == module => ls.push(l.clone()),
            _ => segments.push((module, vec![l.clone()], n)),
        }
        if let Some(name) = inline_mod(&l.code) {
            stack.push((name, depth));
        }
        for c in l.code.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if stack.last().is_some_and(|(_, d)| *d == depth) {
                        stack.pop();
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for (module, ls, first) in segments {
        for (line, p) in paths(&ls, &module) {
            out.push((first + line, p));
        }
    }
    out
}

/// `mod NAME {` on a line (any visibility): NAME.
fn inline_mod(code: &str) -> Option<String> {
    let t = code.trim_start();
    let t = t.strip_prefix("pub").map_or(t, |r| {
        let r = r.trim_start();
        r.strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .map_or(r, |(_, r)| r)
    });
    let rest = t.trim_start().strip_prefix("mod ")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    rest[name.len()..]
        .trim_start()
        .starts_with('{')
        .then_some(name)
}

/// The child modules a file declares (`mod NAME;`, any visibility).
fn child_modules(lines: &[Line]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in lines {
        let t = l.code.trim();
        let Some(i) = t.find("mod ") else { continue };
        if !(i == 0 || t[..i].trim_end().ends_with("pub") || t[..i].trim_end().ends_with(')')) {
            continue;
        }
        let rest = &t[i + 4..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].trim() == ";" {
            out.insert(name);
        }
    }
    out
}

/// `code` with each `NAME::` of a child module that starts a path written `self::NAME::`.
fn qualify(code: &str, children: &BTreeSet<String>) -> String {
    if children.is_empty() {
        return code.to_string();
    }
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        let starts_path = (i == 0 || !(ident(b[i - 1]) || b[i - 1] == b':'))
            && children.iter().any(|c| {
                code[i..].starts_with(c.as_str()) && code[i + c.len()..].starts_with("::")
            });
        if starts_path {
            out.push_str("self::");
        }
        let ch = code[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A set of files each of which imports, through the others, from each other one.
#[derive(Debug, PartialEq)]
pub struct Cycle {
    /// The files, sorted.
    pub files: Vec<String>,
    /// A shortest closed path from the first file back to it.
    pub path: Vec<String>,
}

/// The cycles among the files in `dirs`: each strongly connected set of two or more files.
pub fn cycles(g: &Graph, dirs: &[String]) -> Vec<Cycle> {
    let nodes: Vec<&String> = g.keys().filter(|f| in_dirs(f, dirs)).collect();
    let succ = |f: &String| -> Vec<&String> {
        g.get(f)
            .map(|m| m.keys().filter(|t| in_dirs(t, dirs)).collect())
            .unwrap_or_default()
    };
    // Reachability by depth-first search from every node (the graphs here are small).
    let reach = |from: &String| -> BTreeSet<&String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(f) = todo.pop() {
            for t in succ(f) {
                if seen.insert(t) {
                    todo.push(t);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<&String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done: BTreeSet<&String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(n) || !reaches[n].contains(n) {
            continue;
        }
        let scc: BTreeSet<&String> = nodes
            .iter()
            .copied()
            .filter(|m| reaches[n].contains(m) && reaches[m].contains(n))
            .collect();
        done.extend(scc.iter().copied());
        // One closed walk visiting every file of the set: shortest paths from file to file.
        let path_to = |from: &String, to: &String| -> Vec<String> {
            let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([from]);
            while let Some(f) = queue.pop_front() {
                for t in succ(f).into_iter().filter(|t| scc.contains(t)) {
                    if !prev.contains_key(t) && t != from {
                        prev.insert(t, f);
                        queue.push_back(t);
                    }
                    if t == to {
                        let mut p = vec![to.clone()];
                        let mut c = f;
                        while c != from {
                            p.push(c.clone());
                            c = prev[c];
                        }
                        p.reverse();
                        return p;
                    }
                }
            }
            Vec::new()
        };
        let first = *scc.iter().next().expect("not empty");
        let mut walk = vec![first.clone()];
        walk.extend(path_to(first, first));
        out.push(Cycle {
            files: scc.iter().map(|f| f.to_string()).collect(),
            path: walk,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn edges_from_paths_children_and_inline_modules() {
        let g = graph_of(&files(&[
            ("src/lib.rs", "//! r\npub mod a;\n"),
            (
                "src/a.rs",
                "//! a\nmod b;\npub use b::X;\nuse crate::c::{self, Y};\n",
            ),
            (
                "src/a/b.rs",
                "//! b\npub struct X;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
            ),
            (
                "src/c.rs",
                "//! c\npub struct Y;\n// crate::a::b in a comment\nfn f() { \"crate::a\"; }\n",
            ),
        ]));
        assert_eq!(
            g["src/a.rs"].keys().collect::<Vec<_>>(),
            ["src/a/b.rs", "src/c.rs"]
        );
        assert_eq!(g["src/a.rs"]["src/a/b.rs"], 3);
        // `super::*` in b's inline tests is b itself; a comment and a string are no import.
        assert!(g["src/a/b.rs"].is_empty(), "{g:?}");
        assert!(g["src/c.rs"].is_empty(), "{g:?}");
    }

    #[test]
    fn paths_through_imports_reach_the_defining_file() {
        let g = graph_of(&files(&[
            (
                "src/m/mod.rs",
                "//! m\npub mod ctx;\npub mod x;\npub use ctx::{Ctx as C, self};\n",
            ),
            ("src/m/ctx.rs", "//! c\npub struct Ctx;\n"),
            (
                "src/m/x.rs",
                "//! x\nuse super::C;\nfn f() { super::ctx::Ctx; }\n",
            ),
        ]));
        assert_eq!(g["src/m/x.rs"].keys().collect::<Vec<_>>(), ["src/m/ctx.rs"]);
        assert_eq!(
            g["src/m/mod.rs"].keys().collect::<Vec<_>>(),
            ["src/m/ctx.rs"]
        );
        assert_eq!(
            use_tree("crate::a::{b as c, d::{self, e}, f::*}"),
            [
                (
                    "c".to_string(),
                    vec!["crate".to_string(), "a".into(), "b".into()]
                ),
                (
                    "d".to_string(),
                    vec!["crate".to_string(), "a".into(), "d".into()]
                ),
                (
                    "e".to_string(),
                    vec!["crate".to_string(), "a".into(), "d".into(), "e".into()]
                ),
            ]
        );
    }

    #[test]
    fn violations_name_each_cycle_of_the_checked_directories() {
        let root = std::env::temp_dir().join(format!("xtask-cycles-{}", std::process::id()));
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        write("src/lib.rs", "//! r\npub mod daemon;\npub mod other;\n");
        write("src/daemon/mod.rs", "//! d\nmod a;\nmod b;\n");
        write(
            "src/daemon/a.rs",
            "//! a\nuse super::b::B;\npub struct A;\n",
        );
        write(
            "src/daemon/b.rs",
            "//! b\nuse super::a::A;\npub struct B;\n",
        );
        // A cycle outside the checked directories is not one of theirs.
        write("src/other/mod.rs", "//! o\nmod c;\nmod e;\n");
        write("src/other/c.rs", "//! c\nuse super::e::E;\npub struct C;\n");
        write("src/other/e.rs", "//! e\nuse super::c::C;\npub struct E;\n");
        let v = violations(&root);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(
            v.expect("tree readable"),
            ["import cycle between 2 files (src/daemon/a.rs src/daemon/b.rs): src/daemon/a.rs:2 -> src/daemon/b.rs, src/daemon/b.rs:2 -> src/daemon/a.rs (`cargo xtask cycles` shows it)"]
        );
    }

    #[test]
    fn cycles_are_found_in_the_directories_asked_about() {
        let g = graph_of(&files(&[
            ("src/d/x.rs", "//! x\nuse crate::d::y::F;\n"),
            ("src/d/y.rs", "//! y\nuse crate::d::z::G;\n"),
            ("src/d/z.rs", "//! z\nuse super::x::H;\n"),
            (
                "src/d/w.rs",
                "//! w\nuse crate::d::x::H;\nuse crate::e::I;\n",
            ),
            ("src/e.rs", "//! e\nuse crate::d::w::J;\n"),
        ]));
        let c = cycles(&g, &["src/d".to_string()]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].files, ["src/d/x.rs", "src/d/y.rs", "src/d/z.rs"]);
        assert_eq!(
            c[0].path,
            ["src/d/x.rs", "src/d/y.rs", "src/d/z.rs", "src/d/x.rs"]
        );
        // w -> e -> w leaves src/d: only seen when src/e is asked about too.
        assert_eq!(cycles(&g, &["src/d".into(), "src/e".into()]).len(), 2);
    }
}
