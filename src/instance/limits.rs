//! The `limits.*` config syntax, parsed once into the numbers the runtime applies
//! (`runtime::Limits`): memory sizes, CPU counts and sets, CPU allowances.

/// The limits an instance type stands for (`InstancesPost.instance_type`, `lxc launch -t`), as
/// LXD's `instanceParseType`: `c<CPUs>-m<GiB>` (either part alone; fractions allowed),
/// `limits.cpu` rounded up with the rest as `limits.cpu.allowance`, `limits.memory` in MB of
/// 1024 per GiB. Named cloud types (`t2.micro`, `aws:t2.micro`) come, in LXD, from a list it
/// downloads; bivy has none, so they are refused as LXD refuses a type it does not know.
pub fn instance_type_limits(value: &str) -> Result<Vec<(&'static str, String)>, String> {
    let unknown = || format!("Provided instance type doesn't exist: {value}");
    // Zero, or too small to be a limit (a CPU share under 1%, memory under 1 MB): refused with
    // the type, not as a limit the user did not write.
    let bad = || format!("Bad custom instance type: {value}");
    if value.contains(':') {
        return Err(unknown());
    }
    let (mut cpu, mut memory) = (0f32, 0f32);
    for field in value.split('-') {
        let (kind, num) = match field.as_bytes().first() {
            Some(b'c' | b'm') if field.len() >= 2 => field.split_at(1),
            _ => return Err(unknown()),
        };
        let v: f32 = num
            .parse()
            .ok()
            .filter(|v: &f32| v.is_finite() && *v > 0.0 && *v < 1e6)
            .ok_or_else(bad)?;
        if kind == "c" {
            cpu = v;
        } else {
            memory = v;
        }
    }
    let mut out = Vec::new();
    if cpu > 0.0 {
        let cores = cpu.ceil() as u32;
        out.push(("limits.cpu", cores.to_string()));
        let time = (cpu / cores as f32 * 100.0) as u32;
        if time == 0 {
            return Err(bad());
        }
        if time < 100 {
            out.push(("limits.cpu.allowance", format!("{time}%")));
        }
    }
    if memory > 0.0 {
        let mb = (memory * 1024.0) as i64;
        if mb == 0 {
            return Err(bad());
        }
        out.push(("limits.memory", format!("{mb}MB")));
    }
    Ok(out)
}

/// `limits.memory`: `512MiB`, `1GB`, `100kB`, `50%` (of `total_ram`), or plain bytes.
/// Units as LXD (`units.ParseByteSizeString`): B, kB/KB, MB, GB, TB, PB, EB (powers of 1000) and
/// KiB, MiB, GiB, TiB, PiB, EiB (powers of 1024).
pub fn parse_memory(s: &str, total_ram: u64) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("invalid memory size {s:?} (examples: 512MiB, 1GB, 50%)");
    if let Some(p) = s.strip_suffix('%') {
        let pct: f64 = p.trim().parse().map_err(|_| bad())?;
        // Any share above 0, as LXD takes it (past 100%, more than the host has: no limit in
        // effect).
        if !(pct > 0.0 && pct.is_finite()) {
            return Err(format!(
                "invalid memory percentage {s:?} (must be more than 0%)"
            ));
        }
        return Ok((total_ram as f64 * pct / 100.0).min(i64::MAX as f64) as u64);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = (&s[..split], s[split..].trim());
    let mult = crate::util::byte_unit(unit).ok_or_else(bad)?;
    if num.is_empty() {
        return Err(bad());
    }
    let v = if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let v = f * mult as f64;
        if !v.is_finite() || v >= u64::MAX as f64 {
            return Err(bad());
        }
        v as u64
    } else {
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(bad)?
    };
    if v == 0 {
        return Err(format!("invalid memory size {s:?}: must be more than 0"));
    }
    Ok(v)
}

/// `limits.cpu`: a count (`2` -> `0-1`, more than `ncpus` is all of them) or a set of cpus
/// (`0-3,7`; those past `ncpus` left out, all of them when none is left).
/// Returns the cpuset list.
pub fn parse_cpu(s: &str, ncpus: usize) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && !s.contains(',')
        && !s.contains('-')
    {
        let n: usize = s.parse().map_err(|_| format!("invalid cpu count {s:?}"))?;
        if n == 0 {
            return Err(format!("invalid cpu count {n}: at least 1"));
        }
        // More than the host has is all of them, as LXD balances it (a config from a bigger
        // host, by a copy or a migration, starts here).
        let n = n.min(ncpus.max(1));
        return Ok(if n == 1 {
            "0".into()
        } else {
            format!("0-{}", n - 1)
        });
    }
    let bad = |why: &str| format!("invalid cpu set {s:?}: {why}");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut parts = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: usize = a.parse().map_err(|_| bad("not a number"))?;
        let b: usize = b.parse().map_err(|_| bad("not a number"))?;
        if a > b {
            return Err(bad("range goes backwards"));
        }
        // CPUs the host lacks are left out, as LXD's balancing leaves them out when it pins (a
        // config from a bigger host, by a copy or a migration, starts here).
        let last = ncpus.max(1) - 1;
        if a > last {
            continue;
        }
        let b = b.min(last);
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    if parts.is_empty() {
        // None of them here: all of them, as LXD then does.
        return parse_cpu(&ncpus.max(1).to_string(), ncpus);
    }
    Ok(parts.join(","))
}

/// A resolved `limits.cpu.allowance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Relative weight as v1 `cpu.shares` (1024 = 100%).
    Shares(u64),
    /// Hard cap: (quota_us, period_us).
    Quota(u64, u64),
}

fn parse_duration_us(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some((v * mult) as u64)
}

/// `limits.cpu.allowance`: `50%` -> [`Allowance::Shares`] (LXD: 1024 * pct / 100), or
/// `25ms/100ms` -> [`Allowance::Quota`] (the kernel takes periods of 1 ms to 1 s, quotas >= 1 ms).
pub fn parse_allowance(s: &str) -> Result<Allowance, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let pct: u64 = p
            .trim()
            .parse()
            .map_err(|_| format!("invalid cpu allowance {s:?} (examples: 50%, 25ms/100ms)"))?;
        if pct == 0 {
            return Err(format!("invalid cpu allowance {s:?}: must be more than 0%"));
        }
        return Ok(Allowance::Shares((1024 * pct / 100).max(2)));
    }
    let (q, p) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid cpu allowance {s:?} (examples: 50%, 25ms/100ms)"))?;
    let bad = || format!("invalid cpu allowance {s:?}: durations like 25ms/100ms");
    let (q, p) = (
        parse_duration_us(q).ok_or_else(bad)?,
        parse_duration_us(p).ok_or_else(bad)?,
    );
    if !(1000..=1_000_000).contains(&p) {
        return Err(format!(
            "invalid cpu allowance {s:?}: the period must be between 1ms and 1s"
        ));
    }
    if q < 1000 {
        return Err(format!(
            "invalid cpu allowance {s:?}: the quota must be at least 1ms"
        ));
    }
    Ok(Allowance::Quota(q, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_types_as_lxd() {
        let t = |v: &str| instance_type_limits(v);
        let own = |v: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            v.iter().map(|(k, v)| (*k, v.to_string())).collect()
        };
        assert_eq!(
            t("c2-m4"),
            Ok(own(&[("limits.cpu", "2"), ("limits.memory", "4096MB")]))
        );
        assert_eq!(
            t("c1.5"),
            Ok(own(&[("limits.cpu", "2"), ("limits.cpu.allowance", "75%")]))
        );
        assert_eq!(t("m0.5"), Ok(own(&[("limits.memory", "512MB")])));
        for bad in ["t2.micro", "aws:t2.micro", "c", "x2", "", "c2-", "c2-m4-q1"] {
            assert!(t(bad).unwrap_err().contains("doesn't exist"), "{bad}");
        }
        // Zero, or too small to be a limit: a bad type, never a limit the user did not write.
        for bad in ["c0", "m0", "c0-m1", "c0.001", "m0.0001", "cNaN", "c1e9"] {
            assert!(t(bad).unwrap_err().contains("Bad custom"), "{bad}");
        }
        for bad in ["c-1", "cX", "mNaN", "cinf"] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_sizes() {
        let gib = 1u64 << 30;
        assert_eq!(parse_memory("512MiB", gib).unwrap(), 512 << 20);
        assert_eq!(parse_memory("1GB", gib).unwrap(), 1_000_000_000);
        assert_eq!(parse_memory("1.5GiB", gib).unwrap(), 3 << 29);
        assert_eq!(parse_memory("100kB", gib).unwrap(), 100_000);
        assert_eq!(parse_memory("4096", gib).unwrap(), 4096);
        assert_eq!(parse_memory("50%", 8 * gib).unwrap(), 4 * gib);
        assert_eq!(parse_memory("200%", gib).unwrap(), 2 * gib);
        for bad in [
            "",
            "abc",
            "10XB",
            "0",
            "-5MiB",
            "-5%",
            "inf%",
            "0%",
            "MiB",
            "99999999999999999999EiB",
        ] {
            assert!(parse_memory(bad, gib).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn cpu_sets() {
        assert_eq!(parse_cpu("2", 4).unwrap(), "0-1");
        assert_eq!(parse_cpu("1", 4).unwrap(), "0");
        assert_eq!(parse_cpu("0-3,7", 8).unwrap(), "0-3,7");
        assert_eq!(parse_cpu("1,3", 4).unwrap(), "1,3");
        assert_eq!(parse_cpu("2-2", 4).unwrap(), "2");
        // More than the host has: all of them (a config from a bigger host still starts).
        assert_eq!(parse_cpu("5", 4).unwrap(), "0-3");
        assert_eq!(parse_cpu("99999", 2).unwrap(), "0-1");
        // A set naming CPUs the host lacks: those left out; none left: all of them.
        assert_eq!(parse_cpu("0-7", 4).unwrap(), "0-3");
        assert_eq!(parse_cpu("1,6-9", 4).unwrap(), "1");
        assert_eq!(parse_cpu("0-64", 2).unwrap(), "0-1");
        assert_eq!(parse_cpu("8-9", 2).unwrap(), "0-1");
        for bad in ["0", "", "3-1", "a", "1,,2", "-1"] {
            assert!(parse_cpu(bad, 4).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn allowances() {
        assert_eq!(parse_allowance("50%").unwrap(), Allowance::Shares(512));
        assert_eq!(parse_allowance("100%").unwrap(), Allowance::Shares(1024));
        assert_eq!(
            parse_allowance("25ms/100ms").unwrap(),
            Allowance::Quota(25_000, 100_000)
        );
        assert_eq!(
            parse_allowance("200ms/1s").unwrap(),
            Allowance::Quota(200_000, 1_000_000)
        );
        for bad in ["", "0%", "x%", "25ms", "25/100", "500us/100ms", "1ms/2s"] {
            assert!(parse_allowance(bad).is_err(), "{bad:?} should fail");
        }
    }
}
