//! YAML output the way `lxc` prints it (Go's yaml.v2), and YAML input through `serde_norway`.
//!
//! serde_norway's own emitter quotes differently from yaml.v2 (`'0'` instead of `"0"`), so output
//! goes through this small emitter: field order as serialized, strings that would read back as
//! another type in double quotes, strings that cannot be plain in single quotes, multi-line strings
//! as literal blocks, sequences not indented under their key.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_norway::Value;

/// Serialize `v` as yaml.v2 would serialize the Go struct it mirrors (time fields plain).
pub fn to_string<T: Serialize + ?Sized>(v: &T) -> Result<String, String> {
    emit(v, false)
}

/// Serialize `v` as yaml.v2 would serialize a generic map (`map[string]interface{}`): keys sorted,
/// and strings that read as timestamps double-quoted (e.g. `lxc monitor` events).
pub fn to_string_generic<T: Serialize + ?Sized>(v: &T) -> Result<String, String> {
    let sorted = serde_json::to_value(v).map_err(|e| e.to_string())?;
    emit(&sorted, true)
}

fn emit<T: Serialize + ?Sized>(v: &T, ts: bool) -> Result<String, String> {
    let value = serde_norway::to_value(v).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let e = Emitter { ts };
    match &value {
        Value::Mapping(m) if !m.is_empty() => e.mapping(&mut out, m, 0),
        Value::Sequence(s) if !s.is_empty() => e.sequence(&mut out, s, 0),
        other => {
            out.push_str(&e.scalar(other, 0));
            out.push('\n');
        }
    }
    Ok(out)
}

/// Emission settings: `ts` quotes timestamp-like strings.
struct Emitter {
    ts: bool,
}

/// Parse YAML into `T`.
pub fn from_str<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_norway::from_str(s).map_err(|e| e.to_string())
}

fn pad(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

impl Emitter {
    fn mapping(&self, out: &mut String, m: &serde_norway::Mapping, indent: usize) {
        for (k, v) in m {
            pad(out, indent);
            out.push_str(&self.scalar(k, indent));
            out.push(':');
            self.value_after_key(out, v, indent);
        }
    }

    /// The value part after `key:` (or after `- ` for sequences, with `indent` the item's column).
    fn value_after_key(&self, out: &mut String, v: &Value, indent: usize) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                self.mapping(out, m, indent + 2);
            }
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                self.sequence(out, s, indent);
            }
            Value::Tagged(t) => self.value_after_key(out, &t.value, indent),
            other => {
                out.push(' ');
                out.push_str(&self.scalar(other, indent));
                out.push('\n');
            }
        }
    }

    fn sequence(&self, out: &mut String, s: &[Value], indent: usize) {
        for item in s {
            pad(out, indent);
            out.push('-');
            match item {
                Value::Mapping(m) if !m.is_empty() => {
                    // First pair on the dash line, the rest aligned under it.
                    let mut first = true;
                    for (k, v) in m {
                        if first {
                            out.push(' ');
                            first = false;
                        } else {
                            pad(out, indent + 2);
                        }
                        out.push_str(&self.scalar(k, indent + 2));
                        out.push(':');
                        self.value_after_key(out, v, indent + 2);
                    }
                }
                Value::Sequence(inner) if !inner.is_empty() => {
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

    fn scalar(&self, v: &Value, indent: usize) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) if self.ts && looks_like_timestamp(s) => format!("\"{s}\""),
            Value::String(s) => string(s, indent),
            Value::Mapping(_) => "{}".into(),
            Value::Sequence(_) => "[]".into(),
            Value::Tagged(t) => self.scalar(&t.value, indent),
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
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return serde_json::to_string(s).unwrap_or_default();
    }
    if s.contains('\n') {
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

    #[test]
    fn sequence_of_mappings() {
        let v = serde_json::json!({"env": {"drivers": [{"name": "dir", "version": "1"}]}});
        assert_eq!(
            to_string(&v).unwrap(),
            "env:\n  drivers:\n  - name: dir\n    version: \"1\"\n"
        );
    }
}
