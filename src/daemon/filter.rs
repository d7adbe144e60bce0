//! The `filter=` query language of LXD 5.0 (`api_filtering`): `key eq value`, `ne`, `not`,
//! `and`, `or`, evaluated left to right with `and` binding tighter than `or`. Keys walk the JSON
//! of the object; `config.<key>` and `expanded_config.<key>` take the rest as one config key
//! (config keys contain dots), `devices.<dev>.<key>` likewise.

use serde_json::Value;

use super::response::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
}

fn lex(s: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut w = String::new();
            loop {
                match chars.next() {
                    Some(x) if x == c => break,
                    Some(x) => w.push(x),
                    None => {
                        return Err(Error::BadRequest(format!(
                            "Invalid filter {s:?}: unterminated quote"
                        )))
                    }
                }
            }
            out.push(Tok::Word(w));
        } else {
            let mut w = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() {
                    break;
                }
                w.push(x);
                chars.next();
            }
            out.push(Tok::Word(w));
        }
    }
    Ok(out)
}

/// A parsed filter.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Disjunction of conjunctions of (negated, key, op_is_eq, value).
    clauses: Vec<Vec<(bool, String, bool, String)>>,
}

impl Filter {
    /// Parse; an empty string matches everything.
    pub fn parse(s: &str) -> Result<Filter> {
        let toks = lex(s)?;
        let bad = |why: &str| Error::BadRequest(format!("Invalid filter {s:?}: {why}"));
        let mut clauses = vec![Vec::new()];
        let mut i = 0;
        let mut dangling = false;
        while i < toks.len() {
            dangling = false;
            let Tok::Word(w) = &toks[i];
            let mut neg = false;
            let mut key = w.clone();
            if w == "not" {
                neg = true;
                i += 1;
                let Some(Tok::Word(k)) = toks.get(i) else {
                    return Err(bad("expected a key after not"));
                };
                key = k.clone();
            }
            let op = match toks.get(i + 1) {
                Some(Tok::Word(o)) if o == "eq" => true,
                Some(Tok::Word(o)) if o == "ne" => false,
                _ => return Err(bad("expected eq or ne")),
            };
            let Some(Tok::Word(val)) = toks.get(i + 2) else {
                return Err(bad("expected a value"));
            };
            clauses
                .last_mut()
                .expect("one clause")
                .push((neg, key, op, val.clone()));
            i += 3;
            match toks.get(i) {
                None => {}
                Some(Tok::Word(c)) if c == "and" => {
                    i += 1;
                    dangling = true;
                }
                Some(Tok::Word(c)) if c == "or" => {
                    clauses.push(Vec::new());
                    i += 1;
                    dangling = true;
                }
                Some(Tok::Word(c)) => return Err(bad(&format!("unexpected {c:?}"))),
            }
        }
        if dangling {
            return Err(bad("dangling and/or"));
        }
        if clauses.len() == 1 && clauses[0].is_empty() {
            clauses.clear();
        }
        Ok(Filter { clauses })
    }

    /// Whether `obj` (the recursion=1 JSON of the object) matches.
    /// Whether it matches everything (no clause).
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if self.clauses.is_empty() {
            return true;
        }
        self.clauses.iter().any(|conj| {
            conj.iter().all(|(neg, key, eq, val)| {
                let found = lookup(obj, key).is_some_and(|v| value_matches(val, &v));
                (found == *eq) != *neg
            })
        })
    }
}

/// LXD's `filter.Match` for a field's value: the clause's value as a case-insensitive Go
/// pattern, whole unless it anchors itself; one that does not parse compared plainly, in any
/// case.
fn value_matches(pattern: &str, value: &str) -> bool {
    use crate::util::regex::{anchored, Regex};
    match Regex::new(&anchored(pattern), true) {
        Some(r) => r.is_match(value),
        None => pattern.eq_ignore_ascii_case(value),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn lookup(obj: &Value, key: &str) -> Option<String> {
    for prefix in ["config.", "expanded_config.", "properties."] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let field = &prefix[..prefix.len() - 1];
            return obj.get(field)?.get(rest).and_then(scalar);
        }
    }
    for prefix in ["devices.", "expanded_devices."] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let field = &prefix[..prefix.len() - 1];
            let (dev, k) = rest.split_once('.')?;
            return obj.get(field)?.get(dev)?.get(k).and_then(scalar);
        }
    }
    let mut cur = obj;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    scalar(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates() {
        let o = serde_json::json!({"name":"c1","status":"Running","config":{"image.os":"busybox"},"devices":{"root":{"pool":"default"}}});
        let t = |s: &str| Filter::parse(s).unwrap().matches(&o);
        assert!(t(""));
        assert!(Filter::parse("").unwrap().is_empty());
        assert!(!Filter::parse("name eq c1").unwrap().is_empty());
        assert!(t("name eq c1"));
        assert!(!t("name eq c2"));
        assert!(t("name ne c2"));
        assert!(t("status eq running"));
        assert!(t("config.image.os eq busybox"));
        assert!(t("devices.root.pool eq default"));
        assert!(t("name eq c2 or name eq c1"));
        assert!(!t("name eq c1 and status eq Stopped"));
        assert!(t("not name eq c2"));
        assert!(t("name eq \"c1\""));
        // Values are anchored case-insensitive patterns (LXD's filter.Match); one that does
        // not parse is compared plainly.
        assert!(t("name eq C.") && t("name eq ^c") && t("config.image.os eq bus.*"));
        assert!(!t("name eq c") && !t("name eq 1") && t("name ne c"));
        let odd = serde_json::json!({"name":"a(b"});
        assert!(Filter::parse("name eq A(B").unwrap().matches(&odd));
        assert!(Filter::parse("name foo c1").is_err());
        assert!(Filter::parse("name eq").is_err());
        assert!(Filter::parse("name eq c1 and").is_err());
    }
}
