//! YAML the way `lxc` and LXD write and read it (Go's yaml.v2), our own: the reader is
//! [`parse`] (what it takes: see `parse.rs`), typed reading is [`from_str`] and [`from_node`]
//! (yaml.v2's typing: see `de.rs`), and writing is [`to_string`]: field order as serialized,
//! strings that would read back as another type in double quotes, strings that cannot be
//! plain in single quotes, multi-line strings as literal blocks, sequences not indented under
//! their key.
//!
//! Values are written through their JSON serialization (the serializers the API already has),
//! read back into a [`Node`] tree in order.

mod de;
mod parse;

use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A YAML node. Parsed text gives `Null`, `Str` (quoted and block scalars), `Plain` (typed by
/// whatever reads it), `Seq` and `Map`; serialized values give `Null`, `Bool`, `Num`, `Str`,
/// `Seq` and `Map`.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    /// A number, as written.
    Num(String),
    Str(String),
    Plain(String),
    Seq(Vec<Node>),
    /// Keys in their order.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// A mapping's value for `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A scalar's text (not a null's).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) | Node::Plain(s) | Node::Num(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
                Ok(Node::Num(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
                Ok(Node::Num(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Node, E> {
                Ok(Node::Num(if n.is_nan() {
                    ".nan".into()
                } else if n.is_infinite() {
                    if n > 0.0 { ".inf" } else { "-.inf" }.into()
                } else {
                    n.to_string()
                }))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Node, E> {
                Ok(Node::Str(s))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = a.next_element()? {
                    v.push(n);
                }
                Ok(Node::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut m = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Node>()? {
                    m.push((k, v));
                }
                Ok(Node::Map(m))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse one YAML document (empty: null).
pub fn parse(text: &str) -> Result<Node, String> {
    parse::parse(text)
}

/// Parse YAML into `T`.
pub fn from_str<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    from_node(&parse(s)?)
}

/// [`from_str`] from bytes (UTF-8).
pub fn from_slice<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    let s = std::str::from_utf8(b).map_err(|e| format!("yaml: not UTF-8: {e}"))?;
    from_str(s)
}

/// Read a node as `T`.
pub fn from_node<T: DeserializeOwned>(n: &Node) -> Result<T, String> {
    T::deserialize(de::De(n)).map_err(|e| e.0)
}

/// `v` as a node tree, its fields in their serialized order.
pub fn to_node<T: Serialize + ?Sized>(v: &T) -> Result<Node, String> {
    let json = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// Serialize `v` as yaml.v2 would serialize the Go struct it mirrors (time fields plain).
pub fn to_string<T: Serialize + ?Sized>(v: &T) -> Result<String, String> {
    Ok(emit(&to_node(v)?, false))
}

/// Serialize `v` as yaml.v2 would serialize a generic map (`map[string]interface{}`): keys sorted,
/// and strings that read as timestamps double-quoted (e.g. `lxc monitor` events).
pub fn to_string_generic<T: Serialize + ?Sized>(v: &T) -> Result<String, String> {
    let sorted = serde_json::to_value(v).map_err(|e| e.to_string())?;
    Ok(emit(&to_node(&sorted)?, true))
}

/// A node tree as YAML text.
pub fn emit(n: &Node, ts: bool) -> String {
    let mut out = String::new();
    let e = Emitter { ts };
    match n {
        Node::Map(m) if !m.is_empty() => e.mapping(&mut out, m, 0),
        Node::Seq(s) if !s.is_empty() => e.sequence(&mut out, s, 0),
        other => {
            out.push_str(&e.scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

/// Emission settings: `ts` quotes timestamp-like strings.
struct Emitter {
    ts: bool,
}

fn pad(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

impl Emitter {
    fn mapping(&self, out: &mut String, m: &[(String, Node)], indent: usize) {
        for (k, v) in m {
            pad(out, indent);
            out.push_str(&self.key(k, indent));
            out.push(':');
            self.value_after_key(out, v, indent);
        }
    }

    /// The value part after `key:` (or after `- ` for sequences, with `indent` the item's column).
    fn value_after_key(&self, out: &mut String, v: &Node, indent: usize) {
        match v {
            Node::Map(m) if !m.is_empty() => {
                out.push('\n');
                self.mapping(out, m, indent + 2);
            }
            Node::Seq(s) if !s.is_empty() => {
                out.push('\n');
                self.sequence(out, s, indent);
            }
            other => {
                out.push(' ');
                out.push_str(&self.scalar(other, indent));
                out.push('\n');
            }
        }
    }

    fn sequence(&self, out: &mut String, s: &[Node], indent: usize) {
        for item in s {
            pad(out, indent);
            out.push('-');
            match item {
                Node::Map(m) if !m.is_empty() => {
                    // First pair on the dash line, the rest aligned under it.
                    let mut first = true;
                    for (k, v) in m {
                        if first {
                            out.push(' ');
                            first = false;
                        } else {
                            pad(out, indent + 2);
                        }
                        out.push_str(&self.key(k, indent + 2));
                        out.push(':');
                        self.value_after_key(out, v, indent + 2);
                    }
                }
                Node::Seq(inner) if !inner.is_empty() => {
                    out.push('\n');
                    self.sequence(out, inner, indent + 2);
                }
                other => {
                    out.push(' ');
                    out.push_str(&self.scalar(other, indent));
                    out.push('\n');
                }
            }
        }
    }

    fn key(&self, k: &str, indent: usize) -> String {
        if k.contains('\n') {
            return serde_json::to_string(k).unwrap_or_default();
        }
        string(k, indent)
    }

    fn scalar(&self, v: &Node, indent: usize) -> String {
        match v {
            Node::Null => "null".into(),
            Node::Bool(b) => b.to_string(),
            Node::Num(n) => n.clone(),
            Node::Str(s) if self.ts && looks_like_timestamp(s) => format!("\"{s}\""),
            Node::Str(s) => string(s, indent),
            Node::Plain(s) if plain_allowed(s) && !s.contains('\n') => s.clone(),
            Node::Plain(s) => string(s, indent),
            Node::Map(_) => "{}".into(),
            Node::Seq(_) => "[]".into(),
        }
    }
}

/// Whether yaml.v2 reads this as a timestamp (`2006-1-2`, optionally `T15:4:5[.frac][zone]`).
fn looks_like_timestamp(s: &str) -> bool {
    fn digits(s: &str, min: usize, max: usize) -> bool {
        (min..=max).contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
    }
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 || !digits(d[0], 4, 4) || !digits(d[1], 1, 2) || !digits(d[2], 1, 2) {
        return false;
    }
    let Some(time) = time else { return true };
    let (clock, zone) = match time.find(['Z', '+', '-']) {
        Some(i) => (&time[..i], &time[i..]),
        None => (time, ""),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let t: Vec<&str> = hms.split(':').collect();
    let zone_ok = zone.is_empty()
        || zone == "Z"
        || (zone.len() == 6
            && digits(&zone[1..3], 2, 2)
            && &zone[3..4] == ":"
            && digits(&zone[4..], 2, 2));
    t.len() == 3
        && t.iter().all(|p| digits(p, 1, 2))
        && (frac.is_empty() || digits(frac, 1, 9))
        && zone_ok
}

/// Whether yaml.v2 would resolve this plain scalar to something other than a string.
fn resolves_non_string(s: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N",
        "no", "No", "NO", "off", "Off", "OFF", "true", "True", "TRUE", "false", "False", "FALSE",
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
        ".NaN", ".NAN", "<<",
    ];
    if SPECIAL.contains(&s) {
        return true;
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let plain = body.replace('_', "");
    if plain.is_empty() {
        return false;
    }
    // Integers: decimal, 0x, 0o, 0b, and legacy octal.
    let int_like = if let Some(h) = plain.strip_prefix("0x") {
        !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())
    } else if let Some(o) = plain.strip_prefix("0o") {
        !o.is_empty() && o.chars().all(|c| ('0'..='7').contains(&c))
    } else if let Some(b) = plain.strip_prefix("0b") {
        !b.is_empty() && b.chars().all(|c| c == '0' || c == '1')
    } else {
        plain.chars().all(|c| c.is_ascii_digit())
    };
    if int_like {
        return true;
    }
    // Floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let (mant, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let mant_ok = match mant.split_once('.') {
        Some((a, b)) => {
            // `.5` and `5.` are floats, `.` is not.
            a.chars().all(|c| c.is_ascii_digit())
                && b.chars().all(|c| c.is_ascii_digit())
                && !(a.is_empty() && b.is_empty())
        }
        None => !mant.is_empty() && mant.chars().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
        }
    };
    mant_ok && exp_ok
}

fn plain_allowed(s: &str) -> bool {
    let first = s.chars().next().unwrap_or(' ');
    let second = s.chars().nth(1);
    if ",[]{}#&*!|>'\"%@`".contains(first) {
        return false;
    }
    if "-?:".contains(first) && (second.is_none() || second == Some(' ')) {
        return false;
    }
    if s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    if s.starts_with(' ') || s.ends_with(' ') || s.ends_with(':') {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.contains('\t') {
        return false;
    }
    true
}

fn string(s: &str, indent: usize) -> String {
    // Multi-line strings go in a literal block unless it could not hold them: leading line
    // breaks, spaces before a line break or at the end (yaml.v2 quotes those too).
    let multi = s.contains('\n');
    if s.chars().any(|c| c.is_control() && c != '\n')
        || multi && (s.starts_with('\n') || s.contains(" \n") || s.ends_with(' '))
    {
        return serde_json::to_string(s).unwrap_or_default();
    }
    if multi {
        let chomp = if !s.ends_with('\n') {
            "-"
        } else if s.ends_with("\n\n") {
            "+"
        } else {
            ""
        };
        let mut out = format!("|{chomp}");
        if s.starts_with(' ') {
            out = format!("|2{chomp}");
        }
        let body = s.strip_suffix('\n').unwrap_or(s);
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&" ".repeat(indent + 2));
                out.push_str(line);
            }
        }
        return out;
    }
    if resolves_non_string(s) {
        return format!("\"{s}\"");
    }
    if !plain_allowed(s) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InstancePut;

    #[test]
    fn quoting_matches_yaml_v2() {
        assert_eq!(string("0", 0), "\"0\"");
        assert_eq!(string("1.0", 0), "\"1.0\"");
        assert_eq!(string("6.2", 0), "\"6.2\"");
        assert_eq!(string("5.0.2", 0), "5.0.2");
        assert_eq!(string(".5", 0), "\".5\"");
        assert_eq!(string("1e3", 0), "\"1e3\"");
        assert_eq!(string(".", 0), ".");
        assert_eq!(string("0x1F", 0), "\"0x1F\"");
        assert_eq!(string("yes", 0), "\"yes\"");
        assert_eq!(string("- a", 0), "'- a'");
        assert_eq!(string("a: b", 0), "'a: b'");
        assert_eq!(string("", 0), "\"\"");
        assert_eq!(string("true", 0), "\"true\"");
        assert_eq!(string("RUNNING", 0), "RUNNING");
        assert_eq!(string("[{\"a\":1}]", 0), "'[{\"a\":1}]'");
        assert_eq!(string("/1.0/instances/cX", 0), "/1.0/instances/cX");
        assert_eq!(string("64MB", 0), "64MB");
        assert_eq!(string("a\nb\n", 2), "|\n    a\n    b");
    }

    #[test]
    fn instance_put_like_lxc_config_show() {
        let mut p = InstancePut {
            architecture: "x86_64".into(),
            profiles: vec!["default".into()],
            ..Default::default()
        };
        p.config.insert("volatile.idmap.base".into(), "0".into());
        p.config.insert("limits.memory".into(), "64MB".into());
        let y = to_string(&p).unwrap();
        assert_eq!(
            y,
            "architecture: x86_64\nconfig:\n  limits.memory: 64MB\n  volatile.idmap.base: \"0\"\ndevices: {}\nephemeral: false\nprofiles:\n- default\nstateful: false\ndescription: \"\"\n"
        );
    }

    #[test]
    fn config_edit_round_trip() {
        let mut p = InstancePut {
            architecture: "x86_64".into(),
            profiles: vec!["default".into(), "x".into()],
            ..Default::default()
        };
        p.config
            .insert("volatile.idmap.current".into(), "[{\"Isuid\":true}]".into());
        p.config
            .insert("user.multi".into(), "line one\nline two\n".into());
        p.config.insert("user.num".into(), "42".into());
        let mut dev = crate::api::StringMap::new();
        dev.insert("path".into(), "/".into());
        dev.insert("type".into(), "disk".into());
        p.devices.insert("root".into(), dev);
        let y = to_string(&p).unwrap();
        let back: InstancePut = from_str(&y).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn generic_maps_quote_timestamps() {
        let v = serde_json::json!({"type": "lifecycle", "timestamp": "2026-11-21T22:44:28.800110884Z", "location": "none"});
        assert_eq!(
            to_string_generic(&v).unwrap(),
            "location: none\ntimestamp: \"2026-11-21T22:44:28.800110884Z\"\ntype: lifecycle\n"
        );
        assert!(looks_like_timestamp("2026-11-21"));
        assert!(looks_like_timestamp("2026-11-21T22:44:28+01:00"));
        assert!(!looks_like_timestamp("2026-11-21x"));
        assert!(!looks_like_timestamp("1.35.0"));
    }

    fn p(text: &str) -> Node {
        parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn plain(s: &str) -> Node {
        Node::Plain(s.into())
    }

    fn map(pairs: &[(&str, Node)]) -> Node {
        Node::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn block_collections_in_their_compact_forms() {
        let y = "# comment\n---\na: 1\nb:\n  c: x y  # trailing\n  d:\n  - 1\n  - - n\n    - m\n  -\n    k: v\ne:\n- name: x\n  type: disk\n- {}\nf: ''\n...\n";
        assert_eq!(
            p(y),
            map(&[
                ("a", plain("1")),
                (
                    "b",
                    map(&[
                        ("c", plain("x y")),
                        (
                            "d",
                            Node::Seq(vec![
                                plain("1"),
                                Node::Seq(vec![plain("n"), plain("m")]),
                                map(&[("k", plain("v"))]),
                            ])
                        ),
                    ])
                ),
                (
                    "e",
                    Node::Seq(vec![
                        map(&[("name", plain("x")), ("type", plain("disk"))]),
                        Node::Map(vec![]),
                    ])
                ),
                ("f", Node::Str(String::new())),
            ])
        );
        assert_eq!(p(""), Node::Null);
        assert_eq!(p("# only\n\n"), Node::Null);
        assert_eq!(
            p("a:\nb: ~\nc: null\n"),
            map(&[("a", Node::Null), ("b", Node::Null), ("c", Node::Null)])
        );
        assert_eq!(
            p("- a\n  b\n\n  c\n- d"),
            Node::Seq(vec![plain("a b\nc"), plain("d")])
        );
        assert_eq!(
            p("url: http://x:8443/a#b\ntime: 12:30"),
            map(&[
                ("url", plain("http://x:8443/a#b")),
                ("time", plain("12:30"))
            ])
        );
    }

    #[test]
    fn flow_collections_and_quoted_scalars() {
        let y = "a: {x: 1, \"y\": 'it''s', z: [p, \"q r\", {}],\n    w: []}\nb: [ one ,\n  two ]\nc: \"tab\\there \\u00e9 \\x41\\\"\"\nd: 'multi\n  line\n\n  para'\n";
        assert_eq!(
            p(y),
            map(&[
                (
                    "a",
                    map(&[
                        ("x", plain("1")),
                        ("y", Node::Str("it's".into())),
                        (
                            "z",
                            Node::Seq(vec![plain("p"), Node::Str("q r".into()), Node::Map(vec![])])
                        ),
                        ("w", Node::Seq(vec![])),
                    ])
                ),
                ("b", Node::Seq(vec![plain("one"), plain("two")])),
                ("c", Node::Str("tab\there \u{e9} A\"".into())),
                ("d", Node::Str("multi line\npara".into())),
            ])
        );
        assert_eq!(p("\"a\\\n   b\""), Node::Str("ab".into()));
    }

    #[test]
    fn block_scalars_with_their_indicators() {
        let y = "lit: |\n  one\n    two\n\n  three\nstrip: |-\n  x\n\nkeep: |+\n  y\n\nfold: >\n  a\n  b\n\n  c\n    more\n  d\nind: |2\n    four\nlast: z\n";
        assert_eq!(
            p(y),
            map(&[
                ("lit", Node::Str("one\n  two\n\nthree\n".into())),
                ("strip", Node::Str("x".into())),
                ("keep", Node::Str("y\n\n".into())),
                ("fold", Node::Str("a b\nc\n  more\nd\n".into())),
                ("ind", Node::Str("  four\n".into())),
                ("last", plain("z")),
            ])
        );
        assert_eq!(
            p("- |\n  in a list\n- x"),
            Node::Seq(vec![Node::Str("in a list\n".into()), plain("x")])
        );
    }

    #[test]
    fn anchors_aliases_and_tags() {
        assert_eq!(
            p("a: &x {k: v}\nb: *x\nc: !!str 12\nd: !custom 3"),
            map(&[
                ("a", map(&[("k", plain("v"))])),
                ("b", map(&[("k", plain("v"))])),
                ("c", Node::Str("12".into())),
                ("d", plain("3")),
            ])
        );
        // A "billion laughs" stops at the budget.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + i - 1) as char;
            let cur = (b'a' + i) as char;
            bomb.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(parse(&bomb).unwrap_err().contains("too many nodes"));
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).unwrap_err().contains("nested deeper"));
        let deep = (0..1000)
            .map(|i| format!("{}- \n", " ".repeat(i * 2)))
            .collect::<String>();
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn what_is_refused() {
        for (y, want) in [
            ("a: 1\na: 2", "already defined"),
            ("a:\n\tb: 1", "tab"),
            ("a: 1\n---\nb: 2", "more than one"),
            ("<<: {a: 1}", "merge keys"),
            ("a: b: c", "mapping values"),
            ("a: 1\n  b: 2", "mapping values"),
            ("a: \"open", "end of stream"),
            ("a: [1, 2", "expected ','"),
            ("a: *nowhere", "unknown anchor"),
            ("a: \"\\q\"", "escape"),
            ("- a\nb: 1", "expected key"),
        ] {
            let e = parse(y).expect_err(y);
            assert!(
                e.contains(want) && e.starts_with("yaml: line "),
                "{y:?}: {e}"
            );
        }
    }

    #[test]
    fn typed_like_yaml_v2() {
        let y = "architecture: x86_64\nconfig:\n  limits.cpu: 2\n  security.nesting: true\n  user.x: null\n  user.hex: 0x10\ndevices:\n  root: {path: /, pool: default, type: disk}\nephemeral: yes\nprofiles: [default]\nstateful: off\ndescription: 1.50\n";
        let put: InstancePut = from_str(y).unwrap();
        assert_eq!(put.config["limits.cpu"], "2");
        assert_eq!(put.config["security.nesting"], "true");
        assert_eq!(put.config["user.x"], "");
        assert_eq!(put.config["user.hex"], "0x10");
        assert_eq!(put.devices["root"]["pool"], "default");
        assert!(put.ephemeral && !put.stateful);
        assert_eq!(put.description, "1.50");
        let e = from_str::<InstancePut>("ephemeral: maybe\n").unwrap_err();
        assert!(e.contains("ephemeral") && e.contains("maybe"), "{e}");
        let e = from_str::<InstancePut>("config: [a]\n").unwrap_err();
        assert!(e.contains("config"), "{e}");
        let n: i64 = from_str("-1_000").unwrap();
        assert_eq!(n, -1000);
        let v: Option<u32> = from_str("~").unwrap();
        assert_eq!(v, None);
    }

    #[test]
    fn image_metadata_as_distrobuilder_writes_it() {
        let y = "architecture: x86_64\ncreation_date: 1701234567\nexpiry_date: 1703826567\nproperties:\n  architecture: amd64\n  description: Debian bookworm amd64 (20231201_05:24)\n  os: Debian\n  release: bookworm\n  serial: \"20231201_05:24\"\ntemplates:\n  /etc/hostname:\n    when:\n    - create\n    - copy\n    create_only: false\n    template: hostname.tpl\n    properties: {}\n";
        let m: crate::api::ImageMetadata = from_str(y).unwrap();
        assert_eq!(m.creation_date, 1701234567);
        assert_eq!(
            m.properties["description"],
            "Debian bookworm amd64 (20231201_05:24)"
        );
        assert_eq!(m.templates["/etc/hostname"].when, vec!["create", "copy"]);
        let back: crate::api::ImageMetadata = from_str(&to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn any_string_written_reads_back_the_same() {
        const PIECES: &[&str] = &[
            " ", "\n", ":", "#", "-", "'", "\"", "\\", "a", "0", "1", ".", "{", "}", "[", "]", ",",
            "&", "*", "!", "|", ">", "?", "%", "@", "`", "\t", "\u{e9}", "~", "yes", "null", "e",
            "---", "- ", ": ", " #", "\r", "\u{1}", "x", "\n\n", "  ",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50000 {
            let len = (next() % 8) as usize;
            let s: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let mut m = std::collections::BTreeMap::new();
            m.insert(s.clone(), s.clone());
            m.insert("k".to_string(), s.clone());
            let text = to_string(&(&m, vec![s.clone()])).unwrap();
            let back: (std::collections::BTreeMap<String, String>, Vec<String>) =
                from_str(&text).unwrap_or_else(|e| panic!("{s:?}: {e}\n{text}"));
            assert_eq!((&back.0, &back.1), (&m, &vec![s.clone()]), "{s:?}:\n{text}");
        }
    }

    #[test]
    fn sequence_of_mappings() {
        let v = serde_json::json!({"env": {"drivers": [{"name": "dir", "version": "1"}]}});
        assert_eq!(
            to_string(&v).unwrap(),
            "env:\n  drivers:\n  - name: dir\n    version: \"1\"\n"
        );
    }
}
