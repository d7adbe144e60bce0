//! Snapshot names, as LXD 5.0.2 makes and checks them: `snapshots.pattern` (a pongo2-style date
//! template rendered in UTC, Go's time layouts, and `%d` numbered past the highest taken), and
//! the names a snapshot may have. Pure functions over Unix seconds; no clock, no I/O. The other
//! snapshot keys (`snapshots.expiry`, `snapshots.schedule`) are `schedule`.

use crate::util::time::{civil_from_days, days_from_civil, weekday};

/// The pattern LXD uses when `snapshots.pattern` is unset.
pub const DEFAULT_SNAPSHOT_PATTERN: &str = "snap%d";

/// The name for a new snapshot, as LXD's `NextSnapshotName`: render the pattern's date template
/// (see [`render_pattern`]); then a `%d` (at most one) becomes one more than the highest number
/// any existing snapshot name shows in that place (0 when none; gaps are not reused: snap0,
/// snap1, snap5 give snap6). A pattern without `%d` whose name is taken gets `-%d` appended and
/// numbered the same way (backup, backup-0, ...). Empty `pattern` means `snap%d`.
pub fn snapshot_name(pattern: &str, existing: &[&str], now_unix: i64) -> Result<String, String> {
    let pattern = if pattern.is_empty() {
        DEFAULT_SNAPSHOT_PATTERN
    } else {
        pattern
    };
    let rendered = render_pattern(pattern, now_unix)?;
    let name = match rendered.matches("%d").count() {
        0 if !existing.contains(&rendered.as_str()) => rendered,
        0 => number(&format!("{rendered}-%d"), existing),
        1 => number(&rendered, existing),
        _ => {
            return Err(format!(
                "invalid snapshots.pattern {pattern:?}: it may contain \"%d\" only once"
            ))
        }
    };
    validate_snapshot_name(&name)
        .map_err(|e| format!("snapshots.pattern {pattern:?} gives a bad name: {e}"))?;
    Ok(name)
}

/// Replace the one `%d` in `pattern` by the next free index.
fn number(pattern: &str, existing: &[&str]) -> String {
    let (prefix, suffix) = pattern.split_once("%d").unwrap_or((pattern, ""));
    let mut next = 0i64;
    for n in existing
        .iter()
        .filter_map(|name| scan_index(name, prefix, suffix))
    {
        if n >= next {
            next = n.saturating_add(1);
        }
    }
    format!("{prefix}{next}{suffix}")
}

/// The number in `name` where the pattern has `%d`, read like Go's
/// `fmt.Sscanf(name, prefix+"%d"+suffix)`: an optional sign and digits after `prefix`, then
/// `suffix`; anything after the suffix is ignored (so `snap5.old` counts as 5 for `snap%d`).
fn scan_index(name: &str, prefix: &str, suffix: &str) -> Option<i64> {
    let rest = name.strip_prefix(prefix)?;
    let sign_len = usize::from(rest.starts_with(['+', '-']));
    let body = &rest[sign_len..];
    // Go scans underscores as digits, then fails to convert them.
    let len = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'_')
        .count();
    let digits = &rest[..sign_len + len];
    if len == 0 || digits.contains('_') || !rest[sign_len + len..].starts_with(suffix) {
        return None;
    }
    digits.parse().ok()
}

/// Render the pongo2 date template LXD allows in `snapshots.pattern`:
/// `{{ creation_date|date:"<Go layout>" }}` (single or double quotes), with `creation_date` the
/// time of the snapshot in UTC. Other template syntax is refused.
pub fn render_pattern(pattern: &str, now_unix: i64) -> Result<String, String> {
    let bad = |detail: &str| format!("invalid snapshots.pattern {pattern:?}: {detail}");
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        if after.starts_with('%') || after.starts_with('#') {
            return Err(bad(
                "only {{ creation_date|date:\"...\" }} templates are supported",
            ));
        }
        if !after.starts_with('{') {
            out.push_str(&rest[..=open]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..open]);
        let close = after
            .find("}}")
            .ok_or_else(|| bad("a \"{{\" is never closed"))?;
        out.push_str(&render_expression(&after[1..close], now_unix).map_err(|e| bad(&e))?);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn render_expression(expr: &str, now_unix: i64) -> Result<String, String> {
    let (var, filter) = match expr.split_once('|') {
        Some((v, f)) => (v.trim(), Some(f.trim())),
        None => (expr.trim(), None),
    };
    if var != "creation_date" {
        return Err(format!(
            "unknown template variable {var:?} (only creation_date is available)"
        ));
    }
    let Some(filter) = filter else {
        return Err(
            "creation_date needs a date filter, e.g. {{ creation_date|date:\"2006-01-02\" }}"
                .into(),
        );
    };
    let arg = filter
        .strip_prefix("date")
        .map(str::trim_start)
        .and_then(|f| f.strip_prefix(':'))
        .map(str::trim)
        .ok_or_else(|| format!("unsupported filter {filter:?} (only date is available)"))?;
    let layout = ['"', '\'']
        .iter()
        .find_map(|q| arg.strip_prefix(*q)?.strip_suffix(*q))
        .ok_or_else(|| format!("the date filter needs a quoted Go layout, not {arg:?}"))?;
    Ok(go_format(layout, now_unix))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Format Unix seconds in UTC with a Go reference-time layout (`Mon Jan 2 15:04:05 MST 2006`),
/// covering Go's layout elements; text that is no element is copied.
pub fn go_format(layout: &str, unix_secs: i64) -> String {
    let day = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (year, month, dom) = civil_from_days(day);
    let (hour, minute, second) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let yday = day - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let month_name = MONTHS[month as usize - 1];
    let day_name = DAYS[weekday(day) as usize];

    let mut out = String::new();
    let mut rest = layout;
    while !rest.is_empty() {
        let b = rest.as_bytes();
        let at = |i: usize| b.get(i).copied().unwrap_or(0);
        let (text, len): (String, usize) = match b[0] {
            _ if rest.starts_with("January") => (month_name.into(), 7),
            _ if rest.starts_with("Jan") => (month_name[..3].into(), 3),
            _ if rest.starts_with("Monday") => (day_name.into(), 6),
            _ if rest.starts_with("Mon") => (day_name[..3].into(), 3),
            _ if rest.starts_with("MST") => ("UTC".into(), 3),
            b'0' if (b'1'..=b'6').contains(&at(1)) => match at(1) {
                b'1' => (format!("{month:02}"), 2),
                b'2' => (format!("{dom:02}"), 2),
                b'3' => (format!("{hour12:02}"), 2),
                b'4' => (format!("{minute:02}"), 2),
                b'5' => (format!("{second:02}"), 2),
                _ => (format!("{:02}", year.rem_euclid(100)), 2),
            },
            _ if rest.starts_with("002") => (format!("{yday:03}"), 3),
            _ if rest.starts_with("15") => (format!("{hour:02}"), 2),
            b'1' => (format!("{month}"), 1),
            _ if rest.starts_with("2006") => (format!("{year:04}"), 4),
            b'2' => (format!("{dom}"), 1),
            _ if rest.starts_with("__2") => (format!("{yday:>3}"), 3),
            _ if rest.starts_with("_2006") => (format!("_{year:04}"), 5),
            _ if rest.starts_with("_2") => (format!("{dom:>2}"), 2),
            b'3' => (format!("{hour12}"), 1),
            b'4' => (format!("{minute}"), 1),
            b'5' => (format!("{second}"), 1),
            _ if rest.starts_with("PM") => ((if hour >= 12 { "PM" } else { "AM" }).into(), 2),
            _ if rest.starts_with("pm") => ((if hour >= 12 { "pm" } else { "am" }).into(), 2),
            _ if rest.starts_with("-07:00:00") => ("+00:00:00".into(), 9),
            _ if rest.starts_with("-070000") => ("+000000".into(), 7),
            _ if rest.starts_with("-07:00") => ("+00:00".into(), 6),
            _ if rest.starts_with("-0700") => ("+0000".into(), 5),
            _ if rest.starts_with("-07") => ("+00".into(), 3),
            _ if rest.starts_with("Z07:00:00") => ("Z".into(), 9),
            _ if rest.starts_with("Z070000") => ("Z".into(), 7),
            _ if rest.starts_with("Z07:00") => ("Z".into(), 6),
            _ if rest.starts_with("Z0700") => ("Z".into(), 5),
            _ if rest.starts_with("Z07") => ("Z".into(), 3),
            b'.' | b',' if at(1) == b'0' || at(1) == b'9' => {
                // Fractional seconds: whole seconds only here, so zeros or nothing.
                let n = 1 + b[1..].iter().take_while(|&&c| c == at(1)).count();
                if at(n).is_ascii_digit() {
                    (rest[..1].into(), 1)
                } else if at(1) == b'0' {
                    (format!("{}{}", &rest[..1], "0".repeat(n - 1)), n)
                } else {
                    (String::new(), n)
                }
            }
            _ => {
                let len = rest.chars().next().map_or(1, char::len_utf8);
                (rest[..len].into(), len)
            }
        };
        out.push_str(&text);
        rest = &rest[len..];
    }
    out
}

/// Check a snapshot's own name (without the `instance/` part). LXD 5.0.2 refuses spaces and `/`;
/// bivy also refuses an empty name, `.` and `..`, NUL and names over 255 bytes, since the name
/// becomes a directory name.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("snapshot name must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("invalid snapshot name {name:?}"));
    }
    if name.contains([' ', '/', '\0']) {
        return Err(format!(
            "invalid snapshot name {name:?}: it cannot contain spaces or slashes"
        ));
    }
    if name.len() > 255 {
        return Err(format!(
            "invalid snapshot name {name:?}: longer than 255 bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn pattern_numbering() {
        let now = at(2024, 2, 29, 13, 4) + 5;
        let name = |p: &str, existing: &[&str]| snapshot_name(p, existing, now).unwrap();
        assert_eq!(name("", &[]), "snap0");
        assert_eq!(name("snap%d", &["snap0", "snap1"]), "snap2");
        // Gaps are not reused: one past the highest.
        assert_eq!(name("", &["snap0", "snap1", "snap5"]), "snap6");
        assert_eq!(name("", &["snap3"]), "snap4");
        assert_eq!(name("", &["snap5", "snap2"]), "snap6");
        // Names that do not fit the pattern are ignored; so are negative numbers.
        assert_eq!(
            name("", &["other", "snapx", "snap-2", "snap", "snap1_0"]),
            "snap0"
        );
        // Like Go's Sscanf, text after the pattern is ignored and a sign is read.
        assert_eq!(name("", &["snap5.old", "snap+7"]), "snap8");
        assert_eq!(
            name("auto-%d-x", &["auto-3-x", "auto-9-y", "auto-4-xz"]),
            "auto-5-x"
        );
        assert_eq!(name("%d", &["1", "a"]), "2");
        assert_eq!(name("", &["snap99999999999999999999"]), "snap0");
        // Without %d: the plain name, then name-0, name-1, ...
        assert_eq!(name("backup", &[]), "backup");
        assert_eq!(name("backup", &["snap0"]), "backup");
        assert_eq!(name("backup", &["backup"]), "backup-0");
        assert_eq!(
            name("backup", &["backup", "backup-0", "backup-3"]),
            "backup-4"
        );

        assert_eq!(
            snapshot_name("s%d-%d", &[], now).unwrap_err(),
            "invalid snapshots.pattern \"s%d-%d\": it may contain \"%d\" only once"
        );
        assert_eq!(
            snapshot_name("my snap", &[], now).unwrap_err(),
            "snapshots.pattern \"my snap\" gives a bad name: invalid snapshot name \"my snap\": \
             it cannot contain spaces or slashes"
        );
    }

    #[test]
    fn pattern_dates() {
        let now = at(2024, 2, 29, 13, 4) + 5;
        let name = |p: &str, existing: &[&str]| snapshot_name(p, existing, now).unwrap();
        let lxd_doc = "snap-{{ creation_date|date:'2006-01-02_15-04-05' }}";
        assert_eq!(name(lxd_doc, &[]), "snap-2024-02-29_13-04-05");
        assert_eq!(
            name(lxd_doc, &["snap-2024-02-29_13-04-05"]),
            "snap-2024-02-29_13-04-05-0"
        );
        assert_eq!(
            name("{{creation_date|date:\"20060102\"}}-%d", &["20240229-0"]),
            "20240229-1"
        );
        assert_eq!(
            name(
                "d{{ creation_date | date : '2006' }}{{ creation_date|date:'01' }}",
                &[]
            ),
            "d202402"
        );
        assert_eq!(name("{a}{b", &[]), "{a}{b");

        for (pattern, detail) in [
            (
                "{{ foo }}",
                "unknown template variable \"foo\" (only creation_date is available)",
            ),
            (
                "{{ creation_date }}",
                "creation_date needs a date filter, e.g. {{ creation_date|date:\"2006-01-02\" }}",
            ),
            (
                "{{ creation_date|upper }}",
                "unsupported filter \"upper\" (only date is available)",
            ),
            (
                "{{ creation_date|date:2006 }}",
                "the date filter needs a quoted Go layout, not \"2006\"",
            ),
            (
                "{% if x %}a{% endif %}",
                "only {{ creation_date|date:\"...\" }} templates are supported",
            ),
            ("snap{{ creation_date", "a \"{{\" is never closed"),
        ] {
            assert_eq!(
                snapshot_name(pattern, &[], now).unwrap_err(),
                format!("invalid snapshots.pattern {pattern:?}: {detail}")
            );
        }
        // A layout with a space renders, but the name is refused.
        assert!(snapshot_name("{{ creation_date|date:'2006-01-02 15:04' }}", &[], now).is_err());
    }

    #[test]
    fn go_layouts() {
        let t = at(2024, 2, 29, 13, 4) + 5; // a Thursday
        assert_eq!(
            go_format("Mon Jan _2 15:04:05 MST 2006", t),
            "Thu Feb 29 13:04:05 UTC 2024"
        );
        assert_eq!(
            go_format("Monday January 2 3:4:5 PM pm 06", t),
            "Thursday February 29 1:4:5 PM pm 24"
        );
        assert_eq!(go_format("002 __2 _2 1 01 03", t), "060  60 29 2 02 01");
        assert_eq!(go_format("05.000 05,000 05.999|", t), "05.000 05,000 05|");
        assert_eq!(
            go_format("-0700 -07:00 -07 Z07:00 Z0700 Z", t),
            "+0000 +00:00 +00 Z Z Z"
        );
        assert_eq!(go_format(".01 _2006 x€y", t), ".02 _2024 x€y");
        let morning = at(2023, 1, 5, 0, 7);
        assert_eq!(
            go_format("2006-01-02T15:04 03PM _2 __2", morning),
            "2023-01-05T00:07 12AM  5   5"
        );
    }

    #[test]
    fn snapshot_names() {
        for ok in ["snap0", "2024-02-29_13-04-05", "a.b", "...", "x*y", "ünï"] {
            assert_eq!(validate_snapshot_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(
            validate_snapshot_name(""),
            Err("snapshot name must not be empty".into())
        );
        for dots in [".", ".."] {
            assert_eq!(
                validate_snapshot_name(dots),
                Err(format!("invalid snapshot name {dots:?}"))
            );
        }
        for bad in ["a b", "a/b", "/", "a\0b"] {
            assert_eq!(
                validate_snapshot_name(bad),
                Err(format!(
                    "invalid snapshot name {bad:?}: it cannot contain spaces or slashes"
                ))
            );
        }
        assert!(validate_snapshot_name(&"x".repeat(255)).is_ok());
        assert!(validate_snapshot_name(&"x".repeat(256))
            .unwrap_err()
            .ends_with("longer than 255 bytes"));
    }
}
