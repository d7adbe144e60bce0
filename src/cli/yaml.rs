//! YAML output the way `lxc` prints it (Go's yaml.v2), and YAML input through `serde_norway`.
//!
//! serde_norway's own emitter quotes differently from yaml.v2 (`'0'` instead of `"0"`), so output
//! goes through this small emitter: field order as serialized, strings that would read back as
//! another type in double quotes, strings that cannot be plain in single quotes, multi-line strings
//! as literal blocks, sequences not indented under their key.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_norway::Value;

/// Serialize `v` as yaml.v2 would.
pub fn to_string<T: Serialize + ?Sized>(v: &T) -> Result<String, String> {
    let value = serde_norway::to_value(v).map_err(|e| e.to_string())?;
    let mut out = String::new();
    match &value {
        Value::Mapping(m) if !m.is_empty() => emit_mapping(&mut out, m, 0),
        Value::Sequence(s) if !s.is_empty() => emit_sequence(&mut out, s, 0),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    Ok(out)
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

fn emit_mapping(out: &mut String, m: &serde_norway::Mapping, indent: usize) {
    for (k, v) in m {
        pad(out, indent);
        out.push_str(&scalar(k, indent));
        out.push(':');
        emit_value_after_key(out, v, indent);
    }
}

/// The value part after `key:` (or after `- ` for sequences, with `indent` the item's column).
fn emit_value_after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            out.push('\n');
            emit_mapping(out, m, indent + 2);
        }
        Value::Sequence(s) if !s.is_empty() => {
            out.push('\n');
            emit_sequence(out, s, indent);
        }
        Value::Tagged(t) => emit_value_after_key(out, &t.value, indent),
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent));
            out.push('\n');
        }
    }
}

fn emit_sequence(out: &mut String, s: &[Value], indent: usize) {
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
                    out.push_str(&scalar(k, indent + 2));
                    out.push(':');
                    emit_value_after_key(out, v, indent + 2);
                }
            }
            Value::Sequence(inner) if !inner.is_empty() => {
                out.push('\n');
                emit_sequence(out, inner, indent + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other, indent));
                out.push('\n');
            }
        }
    }
}

fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s, indent),
        Value::Mapping(_) => "{}".into(),
        Value::Sequence(_) => "[]".into(),
        Value::Tagged(t) => scalar(&t.value, indent),
    }
}

/// Whether yaml.v2 would resolve this plain scalar to something other than a string.
fn resolves_non_string(s: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No",
        "NO", "off", "Off", "OFF", "true", "True", "TRUE", "false", "False", "FALSE", ".inf", ".Inf", ".INF",
        "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN", "<<",
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
            a.chars().all(|c| c.is_ascii_digit())
                && b.chars().all(|c| c.is_ascii_digit())
                && (!a.is_empty() || !b.is_empty())
                && !(a.is_empty() && b.is_empty())
                && (!a.is_empty() || !b.is_empty())
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
    mant_ok && exp_ok && !(mant.starts_with('.') && mant.len() == 1)
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
        let mut p = InstancePut { architecture: "x86_64".into(), profiles: vec!["default".into()], ..Default::default() };
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
        let mut p = InstancePut { architecture: "x86_64".into(), profiles: vec!["default".into(), "x".into()], ..Default::default() };
        p.config.insert("volatile.idmap.current".into(), "[{\"Isuid\":true}]".into());
        p.config.insert("user.multi".into(), "line one\nline two\n".into());
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
    fn sequence_of_mappings() {
        let v = serde_json::json!({"env": {"drivers": [{"name": "dir", "version": "1"}]}});
        assert_eq!(to_string(&v).unwrap(), "env:\n  drivers:\n  - name: dir\n    version: \"1\"\n");
    }
}
