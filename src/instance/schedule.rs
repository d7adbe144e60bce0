//! The snapshot config keys as LXD 5.0.2 reads them: `snapshots.expiry`, `snapshots.schedule`
//! and `snapshots.pattern`. Pure functions over Unix seconds; no clock, no I/O.
//!
//! Time zone: bivy evaluates schedules and renders date patterns in UTC. LXD uses the host's
//! local time zone; on a host whose zone is UTC the two agree.
//!
//! Where LXD's behaviour is a plain bug, bivy does the evident intent and says so here:
//! - LXD's runtime check asks robfig/cron for the next run after the current minute and so fires
//!   one minute early; [`Schedule::matches_minute`] answers for the minute itself.
//! - LXD's runtime splits multiple schedules on `,` while its validation splits on `, `, so
//!   `0,30 * * * *, @daily` validates but never fires; bivy splits on `, ` in both places.
//! - A cron field with no values at all (`,`) is accepted by robfig/cron and never fires; bivy
//!   rejects it, as it does `*-5` (robfig ignores what follows the `*`).

use crate::util::time::{civil_from_days, days_from_civil, weekday};

// ---------------------------------------------------------------------------------------------
// snapshots.expiry
// ---------------------------------------------------------------------------------------------

/// A parsed `snapshots.expiry`: how long after its creation a snapshot expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpiryDelta {
    pub minutes: u32,
    pub hours: u32,
    pub days: u32,
    pub weeks: u32,
    pub months: u32,
    pub years: u32,
}

/// Parse `snapshots.expiry`: terms `<number><unit>` separated by single spaces, the unit one of
/// `M` (minutes), `H` (hours), `d` (days), `w` (weeks), `m` (months), `y` (years); LXD 5.0.2 has
/// no seconds unit. Empty (or blank) means no expiry. As in LXD a unit may not be given twice,
/// except that a unit whose earlier value was 0 may be given again.
pub fn parse_expiry(s: &str) -> Result<Option<ExpiryDelta>, String> {
    let expr = s.trim();
    if expr.is_empty() {
        return Ok(None);
    }
    let bad = |detail: String| format!("invalid snapshots.expiry {s:?}: {detail}");
    let mut delta = ExpiryDelta::default();
    for term in expr.split(' ') {
        if term.is_empty() {
            return Err(bad("terms must be separated by single spaces".into()));
        }
        let unit = term.chars().last().unwrap_or(' ');
        let digits = &term[..term.len() - unit.len_utf8()];
        let slot = match unit {
            'M' => &mut delta.minutes,
            'H' => &mut delta.hours,
            'd' => &mut delta.days,
            'w' => &mut delta.weeks,
            'm' => &mut delta.months,
            'y' => &mut delta.years,
            _ => {
                return Err(bad(format!(
                    "term {term:?} must be <number><unit> with unit one of M (minutes), H (hours), \
                     d (days), w (weeks), m (months), y (years)"
                )))
            }
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("term {term:?} must start with a number")));
        }
        if *slot > 0 {
            return Err(bad(format!("unit {unit:?} is given more than once")));
        }
        *slot = digits
            .parse()
            .map_err(|_| bad(format!("number in {term:?} is too large")))?;
    }
    Ok(Some(delta))
}

/// Check a `snapshots.expiry` value.
pub fn validate_expiry(s: &str) -> Result<(), String> {
    parse_expiry(s).map(|_| ())
}

/// When a snapshot created at `created_unix_secs` expires: years, months and days (weeks count
/// as 7 days) are added on the calendar like Go's `time.AddDate` (so Jan 31 + 1 month is Mar 3,
/// or Mar 2 in a leap year), then hours and minutes as plain durations. UTC.
pub fn expires_at(created_unix_secs: i64, delta: ExpiryDelta) -> i64 {
    let days = created_unix_secs.div_euclid(86_400);
    let secs_of_day = created_unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let month_index =
        y * 12 + i64::from(m - 1) + i64::from(delta.years) * 12 + i64::from(delta.months);
    let (ny, nm) = (
        month_index.div_euclid(12),
        month_index.rem_euclid(12) as u32 + 1,
    );
    let new_days = days_from_civil(ny, nm, 1)
        + i64::from(d - 1)
        + i64::from(delta.days)
        + 7 * i64::from(delta.weeks);
    (new_days * 86_400 + secs_of_day)
        .saturating_add(i64::from(delta.hours) * 3600 + i64::from(delta.minutes) * 60)
}

// ---------------------------------------------------------------------------------------------
// snapshots.schedule
// ---------------------------------------------------------------------------------------------

/// The aliases `snapshots.schedule` accepts besides cron specs.
pub const SCHEDULE_ALIASES: [&str; 9] = [
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@annually",
    "@yearly",
    "@startup",
    "@never",
];

/// A parsed `snapshots.schedule`: any number of cron triggers, plus whether `@startup` was given.
/// Empty (the default) and `@never` never fire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    specs: Vec<CronSpec>,
    startup: bool,
}

/// One five-field cron spec as bit sets, robfig/cron style: bit n set means value n matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CronSpec {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// The day-of-month / day-of-week field began with an unstepped `*` (or `?`). When either
    /// does, a day must match both fields; otherwise either (robfig/cron's `dayMatches`).
    dom_star: bool,
    dow_star: bool,
}

#[derive(Clone, Copy)]
enum Field {
    Minute,
    Hour,
    Dom,
    Month,
    Dow,
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DOW_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::Dom => "day-of-month",
            Field::Month => "month",
            Field::Dow => "day-of-week",
        }
    }

    fn bounds(self) -> (u64, u64) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::Dom => (1, 31),
            Field::Month => (1, 12),
            Field::Dow => (0, 6),
        }
    }

    /// A number, or for months and days of the week a three-letter English name (`jan`, `mon`).
    fn value(self, text: &str) -> Result<u64, String> {
        let names: &[&str] = match self {
            Field::Month => &MONTH_NAMES,
            Field::Dow => &DOW_NAMES,
            _ => &[],
        };
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            let first = if matches!(self, Field::Month) { 1 } else { 0 };
            return Ok(i as u64 + first);
        }
        parse_number(text).ok_or_else(|| {
            let what = if names.is_empty() {
                "a number"
            } else {
                "a number or name"
            };
            format!("{} {text:?} is not {what}", self.name())
        })
    }
}

/// Go's `strconv.Atoi` restricted to non-negative values: optional `+`, then ASCII digits.
fn parse_number(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One field: a comma-separated list of `*`, `?`, `N`, `N-M`, each optionally `/step`
/// (`N/step` means `N-max/step`). Returns the bits and whether it is an unstepped star.
fn parse_field(text: &str, field: Field) -> Result<(u64, bool), String> {
    let name = field.name();
    let (min, max) = field.bounds();
    let mut bits = 0u64;
    let mut star = false;
    let mut items = 0;
    for item in text.split(',').filter(|i| !i.is_empty()) {
        items += 1;
        let mut range_and_step = item.split('/');
        let range = range_and_step.next().unwrap_or("");
        let step_text = range_and_step.next();
        if range_and_step.next().is_some() {
            return Err(format!("too many slashes in {name} {item:?}"));
        }
        let mut item_star = false;
        let (start, mut end) = if range == "*" || range == "?" {
            item_star = true;
            (min, max)
        } else {
            let mut low_high = range.split('-');
            let low = low_high.next().unwrap_or("");
            let high = low_high.next();
            if low_high.next().is_some() {
                return Err(format!("too many hyphens in {name} {item:?}"));
            }
            if low == "*" || low == "?" {
                return Err(format!("{name} {item:?}: \"*\" cannot start a range"));
            }
            let start = field.value(low)?;
            (
                start,
                high.map(|h| field.value(h)).transpose()?.unwrap_or(start),
            )
        };
        let step = match step_text {
            None => 1,
            Some(t) => {
                let step = parse_number(t)
                    .ok_or_else(|| format!("{name} step {t:?} in {item:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{name} step in {item:?} must be positive"));
                }
                if !range.contains('-') {
                    end = max;
                }
                if step > 1 {
                    item_star = false;
                }
                step
            }
        };
        for v in [start, end] {
            if v < min || v > max {
                return Err(format!("{name} {v} out of range {min}-{max}"));
            }
        }
        if start > end {
            return Err(format!("{name} range {item:?} goes backwards"));
        }
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
        star |= item_star;
    }
    if items == 0 {
        return Err(format!("{name} field {text:?} has no values"));
    }
    Ok((bits, star))
}

impl CronSpec {
    /// Parse `<minute> <hour> <day-of-month> <month> <day-of-week>`, fields separated by single
    /// spaces as LXD's validator demands.
    fn parse(spec: &str) -> Result<CronSpec, String> {
        let fields: Vec<&str> = spec.split(' ').collect();
        if fields.len() != 5 || fields.iter().any(|f| f.is_empty()) {
            return Err(format!(
                "{spec:?} must be 5 fields separated by single spaces: \
                 <minute> <hour> <day-of-month> <month> <day-of-week>"
            ));
        }
        let (minute, _) = parse_field(fields[0], Field::Minute)?;
        let (hour, _) = parse_field(fields[1], Field::Hour)?;
        let (dom, dom_star) = parse_field(fields[2], Field::Dom)?;
        let (month, _) = parse_field(fields[3], Field::Month)?;
        let (dow, dow_star) = parse_field(fields[4], Field::Dow)?;
        Ok(CronSpec {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star,
            dow_star,
        })
    }

    fn matches(&self, day: i64, minute_of_day: i64) -> bool {
        self.hour & (1 << (minute_of_day / 60)) != 0
            && self.minute & (1 << (minute_of_day % 60)) != 0
            && self.day_matches(day)
    }

    fn day_matches(&self, day: i64) -> bool {
        let (_, month, dom) = civil_from_days(day);
        if self.month & (1 << month) == 0 {
            return false;
        }
        let dom_hit = self.dom & (1 << dom) != 0;
        let dow_hit = self.dow & (1 << weekday(day)) != 0;
        if self.dom_star || self.dow_star {
            dom_hit && dow_hit
        } else {
            dom_hit || dow_hit
        }
    }

    /// The first matching minute (Unix seconds) at or after minute `from` of day `day`,
    /// searching at most `SEARCH_DAYS` days.
    #[cfg(test)]
    fn first_at_or_after(&self, mut day: i64, mut from_minute: i64) -> Option<i64> {
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(day) {
                if let Some(m) = (from_minute..1440).find(|&m| {
                    self.hour & (1 << (m / 60)) != 0 && self.minute & (1 << (m % 60)) != 0
                }) {
                    return Some(day * 86_400 + m * 60);
                }
            }
            day += 1;
            from_minute = 0;
        }
        None
    }
}

/// How far [`Schedule::next_after`] looks: nine years, enough for Feb 29 across a skipped leap
/// year (2096 to 2104).
#[cfg(test)]
const SEARCH_DAYS: i64 = 9 * 366;

/// The minute and hour an alias fires at for a given subject (instance id). LXD spreads
/// `@hourly` & co. over the clock by a stable random choice seeded with the instance id; bivy
/// does the same with FNV-1a of the id's decimal form. The values are stable per id but not the
/// ones LXD would pick (those come from Go's math/rand).
pub fn alias_time(subject_id: i64) -> (u32, u32) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject_id.to_string().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((hash % 60) as u32, ((hash >> 32) % 24) as u32)
}

/// Parse `snapshots.schedule` with aliases firing at minute 0, hour 0 (plain cron meaning:
/// `@daily` is `0 0 * * *`).
pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    parse_schedule_at(s, 0, 0)
}

/// Parse `snapshots.schedule` for an instance, aliases spread over the clock by
/// [`alias_time`] as LXD does: `@hourly` is `M * * * *`, `@daily` `M H * * *`, `@midnight`
/// `M 0 * * *`, `@weekly` `M H * * 0`, `@monthly` `M H 1 * *`, `@annually`/`@yearly` `M H 1 1 *`.
pub fn parse_schedule_for(s: &str, subject_id: i64) -> Result<Schedule, String> {
    let (minute, hour) = alias_time(subject_id);
    parse_schedule_at(s, minute, hour)
}

/// Check a `snapshots.schedule` value.
pub fn validate_schedule(s: &str) -> Result<(), String> {
    parse_schedule(s).map(|_| ())
}

fn parse_schedule_at(s: &str, minute: u32, hour: u32) -> Result<Schedule, String> {
    let mut schedule = Schedule::default();
    if s.is_empty() {
        return Ok(schedule);
    }
    let bad = |detail: String| format!("invalid snapshots.schedule {s:?}: {detail}");
    // LXD lower-cases the whole value, then splits on comma-space (a bare comma is a cron list).
    let lower = s.to_ascii_lowercase();
    for trigger in lower.split(", ") {
        let spec = match trigger {
            "@hourly" => format!("{minute} * * * *"),
            "@daily" => format!("{minute} {hour} * * *"),
            "@midnight" => format!("{minute} 0 * * *"),
            "@weekly" => format!("{minute} {hour} * * 0"),
            "@monthly" => format!("{minute} {hour} 1 * *"),
            "@annually" | "@yearly" => format!("{minute} {hour} 1 1 *"),
            "@startup" => {
                schedule.startup = true;
                continue;
            }
            "@never" => continue,
            t if t.starts_with('@') => {
                return Err(bad(format!(
                    "unknown alias {t:?} (known: {})",
                    SCHEDULE_ALIASES.join(", ")
                )))
            }
            t => t.to_string(),
        };
        schedule.specs.push(CronSpec::parse(&spec).map_err(bad)?);
    }
    Ok(schedule)
}

impl Schedule {
    /// Whether the minute containing `unix_secs` is a scheduled one (UTC). The daemon asks this
    /// once a minute.
    pub fn matches_minute(&self, unix_secs: i64) -> bool {
        let day = unix_secs.div_euclid(86_400);
        let minute_of_day = unix_secs.rem_euclid(86_400) / 60;
        self.specs
            .iter()
            .any(|spec| spec.matches(day, minute_of_day))
    }

    /// The start (Unix seconds, UTC) of the first scheduled minute strictly after `unix_secs`;
    /// `None` when the schedule has no cron trigger or none fires within nine years (`0 0 30 2 *`).
    #[cfg(test)]
    pub fn next_after(&self, unix_secs: i64) -> Option<i64> {
        let next_minute = (unix_secs.div_euclid(60) + 1) * 60;
        let day = next_minute.div_euclid(86_400);
        let minute_of_day = next_minute.rem_euclid(86_400) / 60;
        self.specs
            .iter()
            .filter_map(|spec| spec.first_at_or_after(day, minute_of_day))
            .min()
    }

    /// Whether `@startup` was given: snapshot when the instance starts.
    pub fn is_startup(&self) -> bool {
        self.startup
    }

    /// Whether any cron trigger (or time alias) was given, i.e. whether the schedule can fire
    /// by the clock at all.
    pub fn is_periodic(&self) -> bool {
        !self.specs.is_empty()
    }
}

// `snapshots.pattern` is `snapshot_names` (re-exported for the daemon's snapshot endpoints).
pub use super::snapshot_names::{snapshot_name, validate_snapshot_name};

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    fn delta(s: &str) -> ExpiryDelta {
        parse_expiry(s).unwrap().unwrap()
    }

    fn sched(s: &str) -> Schedule {
        parse_schedule(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn sched_err(s: &str) -> String {
        parse_schedule(s).unwrap_err()
    }

    /// The next `n` firing times after `t`.
    fn upcoming(s: &Schedule, mut t: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t).unwrap();
            out.push(t);
        }
        out
    }

    // ---- expiry ----

    #[test]
    fn expiry_parses_every_unit() {
        assert_eq!(parse_expiry(""), Ok(None));
        assert_eq!(parse_expiry("  "), Ok(None));
        assert_eq!(
            delta("1M 2H 3d 4w 5m 6y"),
            ExpiryDelta {
                minutes: 1,
                hours: 2,
                days: 3,
                weeks: 4,
                months: 5,
                years: 6
            }
        );
        assert_eq!(delta(" 7d ").days, 7);
        assert_eq!(delta("007d").days, 7);
        // A unit whose earlier value was 0 may be given again (LXD's check is "already > 0").
        assert_eq!(delta("0d 3d").days, 3);
        assert_eq!(delta("0d"), ExpiryDelta::default());
        assert!(validate_expiry("2w 1d").is_ok());
    }

    #[test]
    fn expiry_errors_name_the_value() {
        let cases = [
            ("1s", "term \"1s\" must be <number><unit>"),
            ("1S", "term \"1S\" must be <number><unit>"),
            ("1D", "term \"1D\" must be <number><unit>"),
            ("d", "term \"d\" must start with a number"),
            ("-1d", "term \"-1d\" must start with a number"),
            ("1.5d", "term \"1.5d\" must start with a number"),
            ("1d  2H", "terms must be separated by single spaces"),
            ("1d\t2H", "term \"1d\\t2H\" must start with a number"),
            ("1d 2d", "unit 'd' is given more than once"),
            ("3d 0d", "unit 'd' is given more than once"),
            ("99999999999d", "number in \"99999999999d\" is too large"),
        ];
        for (input, detail) in cases {
            let err = parse_expiry(input).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid snapshots.expiry {input:?}: {detail}")),
                "{input:?} gave {err:?}"
            );
            assert!(validate_expiry(input).is_err());
        }
    }

    #[test]
    fn expiry_arithmetic_follows_go_add_date() {
        let t = at(2024, 1, 31, 10, 20) + 7;
        assert_eq!(expires_at(t, delta("3d")), at(2024, 2, 3, 10, 20) + 7);
        assert_eq!(expires_at(t, delta("1w")), at(2024, 2, 7, 10, 20) + 7);
        // Month ends normalise like time.AddDate: Feb 31 is Mar 2 in a leap year, Mar 3 otherwise.
        assert_eq!(expires_at(t, delta("1m")), at(2024, 3, 2, 10, 20) + 7);
        assert_eq!(
            expires_at(at(2023, 1, 31, 0, 0), delta("1m")),
            at(2023, 3, 3, 0, 0)
        );
        assert_eq!(
            expires_at(at(2024, 2, 29, 0, 0), delta("1y")),
            at(2025, 3, 1, 0, 0)
        );
        assert_eq!(
            expires_at(at(2024, 2, 29, 0, 0), delta("4y")),
            at(2028, 2, 29, 0, 0)
        );
        assert_eq!(
            expires_at(at(2023, 12, 15, 0, 0), delta("1m")),
            at(2024, 1, 15, 0, 0)
        );
        assert_eq!(
            expires_at(at(2023, 1, 15, 0, 0), delta("13m")),
            at(2024, 2, 15, 0, 0)
        );
        assert_eq!(
            expires_at(at(2024, 12, 31, 23, 0), delta("2H 30M")),
            at(2025, 1, 1, 1, 30)
        );
        assert_eq!(
            expires_at(at(2024, 1, 1, 0, 0), delta("1M 2H 3d 4w 5m 6y")),
            at(2030, 7, 2, 2, 1)
        );
        assert_eq!(expires_at(t, delta("0d")), t);
        // Before the epoch too.
        assert_eq!(
            expires_at(at(1969, 12, 31, 12, 0), delta("1d")),
            at(1970, 1, 1, 12, 0)
        );
    }

    // ---- schedule: aliases ----

    #[test]
    fn every_alias() {
        let t = at(2024, 5, 15, 10, 30); // a Wednesday
        assert_eq!(
            upcoming(&sched("@hourly"), t, 2),
            [at(2024, 5, 15, 11, 0), at(2024, 5, 15, 12, 0)]
        );
        assert_eq!(sched("@daily").next_after(t), Some(at(2024, 5, 16, 0, 0)));
        assert_eq!(
            sched("@midnight").next_after(t),
            Some(at(2024, 5, 16, 0, 0))
        );
        assert_eq!(sched("@weekly").next_after(t), Some(at(2024, 5, 19, 0, 0)));
        assert_eq!(sched("@monthly").next_after(t), Some(at(2024, 6, 1, 0, 0)));
        assert_eq!(sched("@annually").next_after(t), Some(at(2025, 1, 1, 0, 0)));
        assert_eq!(sched("@yearly"), sched("@annually"));
        assert_eq!(sched("@DAILY"), sched("@daily"));

        let startup = sched("@startup");
        assert!(startup.is_startup() && !startup.is_periodic());
        assert_eq!(startup.next_after(t), None);
        for never in ["@never", ""] {
            let s = sched(never);
            assert!(!s.is_startup() && !s.is_periodic(), "{never:?}");
            assert_eq!(s.next_after(t), None);
            assert!(!s.matches_minute(at(2024, 1, 1, 0, 0)));
        }
        assert!(!sched("@daily").is_startup());
        assert!(validate_schedule("@startup, @hourly").is_ok());
    }

    #[test]
    fn aliases_for_an_instance_are_spread_but_stable() {
        let (minute, hour) = alias_time(42);
        assert!(minute < 60 && hour < 24);
        assert_eq!(alias_time(42), (minute, hour));
        assert_ne!(
            (0..20)
                .map(alias_time)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            1
        );
        let t = at(2024, 5, 15, 10, 30);
        let day = |h: u32| at(2024, 5, 15, i64::from(h), i64::from(minute));
        let hourly = parse_schedule_for("@hourly", 42).unwrap();
        assert!(hourly.matches_minute(day(3)) && hourly.matches_minute(day(17)));
        assert!(!hourly.matches_minute(day(3) + 60));
        let daily = parse_schedule_for("@daily", 42).unwrap();
        assert!(daily.matches_minute(day(hour)));
        assert_eq!(
            daily.next_after(t).map(|n| (n % 86_400) / 60),
            Some(i64::from(hour * 60 + minute))
        );
        let midnight = parse_schedule_for("@midnight", 42).unwrap();
        assert!(midnight.matches_minute(day(0)));
        // Cron specs are not moved.
        assert_eq!(
            parse_schedule_for("5 4 * * *", 42).unwrap(),
            sched("5 4 * * *")
        );
    }

    // ---- schedule: cron fields ----

    #[test]
    fn ranges_steps_lists_and_names() {
        let t = at(2024, 5, 15, 10, 0) - 60; // 09:59 on a Wednesday
        let minutes = |s: &str, n| -> Vec<i64> {
            upcoming(&sched(s), t, n)
                .iter()
                .map(|x| (x % 3600) / 60)
                .collect()
        };
        assert_eq!(minutes("*/15 * * * *", 5), [0, 15, 30, 45, 0]);
        assert_eq!(minutes("5-20/5 * * * *", 5), [5, 10, 15, 20, 5]);
        assert_eq!(minutes("10/20 * * * *", 4), [10, 30, 50, 10]);
        assert_eq!(minutes("1,2,40-42 * * * *", 6), [1, 2, 40, 41, 42, 1]);
        assert_eq!(minutes("+7 * * * *", 1), [7]);
        assert_eq!(minutes("? * * * *", 2), [0, 1]);
        assert_eq!(minutes("1,,2 * * * *", 2), [1, 2]);
        assert_eq!(sched("*/1 * * * *"), sched("* * * * *"));

        let workdays = sched("0,30 9-17 * * mon-fri");
        assert_eq!(workdays, sched("0,30 9-17 * * 1-5"));
        assert_eq!(workdays, sched("0,30 9-17 * * MON-Fri"));
        // Friday 17:30 is followed by Monday 09:00.
        assert_eq!(
            workdays.next_after(at(2024, 5, 17, 17, 30)),
            Some(at(2024, 5, 20, 9, 0))
        );
        assert_eq!(sched("0 0 1 jan-mar/2 *"), sched("0 0 1 1,3 *"));
        assert_eq!(sched("0 0 1 DEC *"), sched("0 0 1 12 *"));
        assert_eq!(sched("0 0 * * sun"), sched("0 0 * * 0"));
        assert_eq!(sched("0 0 * * 6"), sched("0 0 * * sat"));
    }

    #[test]
    fn day_of_month_and_week_match_either_when_both_restricted() {
        let start = at(2024, 9, 1, 0, 0); // a Sunday
        let days = |s: &str| -> Vec<u32> {
            upcoming(&sched(s), start, 5)
                .iter()
                .map(|x| civil_from_days(x.div_euclid(86_400)).2)
                .collect()
        };
        assert_eq!(days("0 0 13 * fri"), [6, 13, 20, 27, 4]);
        assert_eq!(days("0 0 13 * *"), [13, 13, 13, 13, 13]);
        assert_eq!(days("0 0 * * fri"), [6, 13, 20, 27, 4]);
        assert_eq!(days("0 0 * 9 fri"), [6, 13, 20, 27, 5]);
        // A stepped star is a restriction (robfig clears the star for steps above 1).
        assert_eq!(days("0 0 */10 * fri"), [6, 11, 13, 20, 21]);
        // An unstepped star (also `*/1` and `?`) is not: both must match.
        assert_eq!(days("0 0 13 * */1"), [13, 13, 13, 13, 13]);
        assert_eq!(days("0 0 ? * fri"), [6, 13, 20, 27, 4]);
    }

    #[test]
    fn matches_minute_covers_the_whole_minute() {
        let s = sched("59 23 31 12 *");
        let t = at(2024, 12, 31, 23, 59);
        assert!(s.matches_minute(t));
        assert!(s.matches_minute(t + 59));
        assert!(!s.matches_minute(t - 1));
        assert!(!s.matches_minute(t + 60));
        assert!(sched("0 0 * * *").matches_minute(0));
        assert!(sched("* * * * thu").matches_minute(0)); // 1970-01-01 was a Thursday
        assert!(!sched("* * * * wed").matches_minute(0));
        assert!(sched("59 23 31 12 *").matches_minute(-1)); // 1969-12-31 23:59:59
        let every = sched("* * * * *");
        assert!((0..200).all(|i| every.matches_minute(1_700_000_000 + i * 37)));
    }

    #[test]
    fn next_after_crosses_boundaries() {
        // Strictly after: a scheduled minute itself is not its own next run.
        let s = sched("0 0 * * *");
        assert_eq!(
            s.next_after(at(2024, 1, 31, 0, 0)),
            Some(at(2024, 2, 1, 0, 0))
        );
        assert_eq!(
            s.next_after(at(2024, 1, 31, 0, 0) - 1),
            Some(at(2024, 1, 31, 0, 0))
        );
        // Month and year ends.
        assert_eq!(
            sched("59 23 31 12 *").next_after(at(2024, 12, 31, 23, 59)),
            Some(at(2025, 12, 31, 23, 59))
        );
        assert_eq!(
            sched("0 12 31 * *").next_after(at(2024, 4, 1, 0, 0)),
            Some(at(2024, 5, 31, 12, 0))
        );
        assert_eq!(
            sched("30 * * * *").next_after(at(2024, 12, 31, 23, 45)),
            Some(at(2025, 1, 1, 0, 30))
        );
        // Feb 29, including the skipped leap year 2100.
        let leap = sched("0 0 29 2 *");
        assert_eq!(
            leap.next_after(at(2024, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        assert_eq!(
            leap.next_after(at(2096, 3, 1, 0, 0)),
            Some(at(2104, 2, 29, 0, 0))
        );
        // Days that never come.
        assert_eq!(sched("0 0 30 2 *").next_after(0), None);
        assert_eq!(sched("0 0 31 4,6,9,11 *").next_after(0), None);
    }

    #[test]
    fn several_specs() {
        let s = sched("0 6 * * *, 0 18 * * *");
        assert!(s.is_periodic());
        assert_eq!(
            upcoming(&s, at(2024, 5, 15, 12, 0), 3),
            [
                at(2024, 5, 15, 18, 0),
                at(2024, 5, 16, 6, 0),
                at(2024, 5, 16, 18, 0)
            ]
        );
        assert!(s.matches_minute(at(2024, 5, 15, 6, 0)));
        assert!(s.matches_minute(at(2024, 5, 15, 18, 0)));
        assert!(!s.matches_minute(at(2024, 5, 15, 12, 0)));
        let mixed = sched("@startup, @hourly, 30 * * * *");
        assert!(mixed.is_startup());
        assert_eq!(
            upcoming(&mixed, at(2024, 5, 15, 12, 10), 2),
            [at(2024, 5, 15, 12, 30), at(2024, 5, 15, 13, 0)]
        );
        // A bare comma is a cron list inside one spec.
        assert_eq!(sched("0,30 * * * *").specs.len(), 1);
        assert_eq!(sched("0,30 * * * *, @daily").specs.len(), 2);
        assert_eq!(sched("@never, 0 0 * * *"), sched("0 0 * * *"));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let five = "must be 5 fields separated by single spaces: \
                    <minute> <hour> <day-of-month> <month> <day-of-week>";
        let cases = [
            ("61 * * * *", "minute 61 out of range 0-59".to_string()),
            ("* 24 * * *", "hour 24 out of range 0-23".into()),
            ("* * 0 * *", "day-of-month 0 out of range 1-31".into()),
            ("* * 32 * *", "day-of-month 32 out of range 1-31".into()),
            ("* * * 13 *", "month 13 out of range 1-12".into()),
            ("* * * 0 *", "month 0 out of range 1-12".into()),
            ("* * * * 7", "day-of-week 7 out of range 0-6".into()),
            ("0 0 * * 5-7", "day-of-week 7 out of range 0-6".into()),
            ("61/5 * * * *", "minute 61 out of range 0-59".into()),
            (
                "*/0 * * * *",
                "minute step in \"*/0\" must be positive".into(),
            ),
            (
                "*/x * * * *",
                "minute step \"x\" in \"*/x\" is not a number".into(),
            ),
            ("5-1 * * * *", "minute range \"5-1\" goes backwards".into()),
            (
                "1-2-3 * * * *",
                "too many hyphens in minute \"1-2-3\"".into(),
            ),
            (
                "*/2/3 * * * *",
                "too many slashes in minute \"*/2/3\"".into(),
            ),
            (
                "*-5 * * * *",
                "minute \"*-5\": \"*\" cannot start a range".into(),
            ),
            ("x * * * *", "minute \"x\" is not a number".into()),
            ("mon * * * *", "minute \"mon\" is not a number".into()),
            (
                "* * * foo *",
                "month \"foo\" is not a number or name".into(),
            ),
            (
                "* * * * monday",
                "day-of-week \"monday\" is not a number or name".into(),
            ),
            ("-1 * * * *", "minute \"\" is not a number".into()),
            ("0 * * * ,", "day-of-week field \",\" has no values".into()),
            (", * * * *", format!("\"\" {five}")),
            ("* * * *", format!("\"* * * *\" {five}")),
            ("* * * * * *", format!("\"* * * * * *\" {five}")),
            ("0  * * * *", format!("\"0  * * * *\" {five}")),
            (" 0 * * * *", format!("\" 0 * * * *\" {five}")),
            ("0\t* * * *", format!("\"0\\t* * * *\" {five}")),
            ("0 * * * *, ", format!("\"\" {five}")),
            (
                "0 * * * *,@daily",
                "day-of-week \"@daily\" is not a number or name".into(),
            ),
            (
                "@every 1h",
                format!(
                    "unknown alias \"@every 1h\" (known: {})",
                    SCHEDULE_ALIASES.join(", ")
                ),
            ),
            (
                "@reboot",
                format!(
                    "unknown alias \"@reboot\" (known: {})",
                    SCHEDULE_ALIASES.join(", ")
                ),
            ),
        ];
        for (input, detail) in cases {
            assert_eq!(
                sched_err(input),
                format!("invalid snapshots.schedule {input:?}: {detail}"),
                "for {input:?}"
            );
            assert!(validate_schedule(input).is_err());
        }
        // The message quotes the value as given, not lower-cased.
        assert_eq!(
            sched_err("0 0 * FOO *"),
            "invalid snapshots.schedule \"0 0 * FOO *\": month \"foo\" is not a number or name"
        );
    }
}
