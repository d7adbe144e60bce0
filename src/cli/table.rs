//! Output rendering shared by the list commands: `lxc`'s ASCII tables (tablewriter with a line
//! between rows, centred headers, no wrapping), csv, and the date and size formats lxc prints.

use crate::util;

/// The width of each column: its header or its widest cell line.
fn column_widths(headers: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(headers.len()) {
            for line in cell.split('\n') {
                widths[i] = widths[i].max(line.chars().count());
            }
        }
    }
    widths
}

/// A row's cells split into lines, and the row's height in lines.
fn cell_lines(row: &[String], ncol: usize) -> (Vec<Vec<&str>>, usize) {
    let lines: Vec<Vec<&str>> = (0..ncol)
        .map(|i| row.get(i).map_or(vec![""], |c| c.split('\n').collect()))
        .collect();
    let height = lines.iter().map(Vec::len).max().unwrap_or(1);
    (lines, height)
}

/// Render a table exactly like lxc: `+---+` borders, centred headers, a rule after every row.
/// Cells may hold several lines (`\n`).
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let ncol = headers.len();
    let widths = column_widths(headers, rows);
    let mut rule = String::from("+");
    for w in &widths {
        rule.push_str(&"-".repeat(w + 2));
        rule.push('+');
    }
    rule.push('\n');

    let mut out = rule.clone();
    out.push('|');
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(gap - left)
        ));
    }
    out.push('\n');
    out.push_str(&rule);
    for row in rows {
        let (lines, height) = cell_lines(row, ncol);
        for l in 0..height {
            out.push('|');
            for (i, w) in widths.iter().enumerate() {
                let text = lines[i].get(l).copied().unwrap_or("");
                out.push_str(&format!(
                    " {}{} |",
                    text,
                    " ".repeat(w - text.chars().count())
                ));
            }
            out.push('\n');
        }
        out.push_str(&rule);
    }
    out
}

/// lxc's `compact` format: the table without borders, two spaces before every column and after
/// the last, headers centred, trailing spaces kept.
pub fn compact(headers: &[&str], rows: &[Vec<String>]) -> String {
    let ncol = headers.len();
    let widths = column_widths(headers, rows);
    let mut out = String::new();
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - h.chars().count();
        out.push_str(&format!(
            "  {}{}{}",
            " ".repeat(gap / 2),
            h,
            " ".repeat(gap - gap / 2)
        ));
    }
    out.push_str("  \n");
    for row in rows {
        let (lines, height) = cell_lines(row, ncol);
        for l in 0..height {
            for (i, w) in widths.iter().enumerate() {
                let text = lines[i].get(l).copied().unwrap_or("");
                out.push_str(&format!(
                    "  {}{}",
                    text,
                    " ".repeat(w - text.chars().count())
                ));
            }
            out.push_str("  \n");
        }
    }
    out
}

/// Rows as csv (Go's encoding/csv: quote when needed, `\n` line ends, no header).
pub fn csv(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| {
                if c.contains(['"', ',', '\n', '\r']) || c.starts_with(' ') {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.clone()
                }
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Output formats of the list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
    Yaml,
    Compact,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            "compact" => Ok(Format::Compact),
            other => Err(format!("Invalid format {other:?}")),
        }
    }
}

/// Render rows in a tabular format (table, compact or csv).
pub fn render_rows(format: Format, headers: &[&str], rows: &[Vec<String>]) -> String {
    match format {
        Format::Csv => csv(rows),
        Format::Compact => compact(headers, rows),
        _ => render(headers, rows),
    }
}

/// (year, month, day, hour, minute) in UTC of an RFC 3339 time; `None` for "never" (year 1 or 1970 epoch).
fn parts(ts: &str) -> Option<(i64, u32, u32, u32, u32)> {
    if ts.is_empty() || ts.starts_with("0001-01-01") || ts == crate::api::ZERO_TIME {
        return None;
    }
    let secs = util::time::parse_secs(ts)?;
    let (y, mo, d) = util::time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    Some((y, mo, d, (sod / 3600) as u32, ((sod % 3600) / 60) as u32))
}

/// `2006/01/02 15:04 MST` in UTC, empty for never.
pub fn date(ts: &str) -> String {
    match parts(ts) {
        Some((y, mo, d, h, mi)) => format!("{y:04}/{mo:02}/{d:02} {h:02}:{mi:02} UTC"),
        None => String::new(),
    }
}

/// `Jan 2, 2006 at 3:04pm (MST)` in UTC (image list).
pub fn long_date(ts: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    match parts(ts) {
        Some((y, mo, d, h, mi)) => {
            let (h12, ampm) = match h {
                0 => (12, "am"),
                1..=11 => (h, "am"),
                12 => (12, "pm"),
                _ => (h - 12, "pm"),
            };
            format!(
                "{} {d}, {y} at {h12}:{mi:02}{ampm} (UTC)",
                MONTHS[(mo - 1) as usize]
            )
        }
        None => String::new(),
    }
}

/// Go `units.GetByteSizeStringIEC(n, 2)`: `0B`, `90B`, `508.00KiB`, `2.70MiB`.
pub fn size_iec(n: i64) -> String {
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"] {
        v /= 1024.0;
        if v < 1024.0 {
            return format!("{v:.2}{unit}");
        }
    }
    format!("{v:.2}EiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_like_lxc() {
        let t = render(
            &["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"],
            &[vec![
                "cX".into(),
                "RUNNING".into(),
                "".into(),
                "".into(),
                "CONTAINER".into(),
                "0".into(),
            ]],
        );
        assert_eq!(
            t,
            "+------+---------+------+------+-----------+-----------+\n\
             | NAME |  STATE  | IPV4 | IPV6 |   TYPE    | SNAPSHOTS |\n\
             +------+---------+------+------+-----------+-----------+\n\
             | cX   | RUNNING |      |      | CONTAINER | 0         |\n\
             +------+---------+------+------+-----------+-----------+\n"
        );
    }

    #[test]
    fn multiline_cells() {
        let t = render(&["A", "B"], &[vec!["x\ny".into(), "z".into()]]);
        assert_eq!(
            t,
            "+---+---+\n| A | B |\n+---+---+\n| x | z |\n| y |   |\n+---+---+\n"
        );
    }

    #[test]
    fn compact_like_lxc() {
        let t = compact(
            &["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"],
            &[vec![
                "t1".into(),
                "STOPPED".into(),
                "".into(),
                "".into(),
                "CONTAINER".into(),
                "2".into(),
            ]],
        );
        assert_eq!(
            t,
            "  NAME   STATE   IPV4  IPV6    TYPE     SNAPSHOTS  \n  t1    STOPPED              CONTAINER  2          \n"
        );
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(
            csv(&[vec!["a".into(), "b,c".into(), "d\ne".into()]]),
            "a,\"b,c\",\"d\ne\"\n"
        );
    }

    #[test]
    fn dates_and_sizes() {
        assert_eq!(
            date("2026-11-21T20:28:53.158562992Z"),
            "2026/11/21 20:28 UTC"
        );
        assert_eq!(date("1970-01-01T00:00:00Z"), "");
        assert_eq!(
            long_date("2026-11-21T20:25:01Z"),
            "Nov 21, 2026 at 8:25pm (UTC)"
        );
        assert_eq!(size_iec(634880), "620.00KiB");
        assert_eq!(size_iec(2830336), "2.70MiB");
        assert_eq!(size_iec(90), "90B");
    }
}
