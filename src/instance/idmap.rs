//! Id maps: the host range, each container's map (shared, isolated, `raw.idmap` holes) and the
//! `volatile.idmap.*` JSON that LXD clients expect.

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::api::StringMap;
use crate::runtime::IdMapEntry;

/// Ids a container gets unless `security.idmap.size` says otherwise.
pub const DEFAULT_SIZE: u32 = 65536;

/// LXD's JSON shape for one map line (Go field names, no json tags upstream).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    #[serde(rename = "Isuid")]
    pub isuid: bool,
    #[serde(rename = "Isgid")]
    pub isgid: bool,
    #[serde(rename = "Hostid")]
    pub hostid: u32,
    #[serde(rename = "Nsid")]
    pub nsid: u32,
    #[serde(rename = "Maprange")]
    pub maprange: u32,
}

/// A container's full map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub uid: Vec<IdMapEntry>,
    pub gid: Vec<IdMapEntry>,
}

impl Map {
    /// LXD's volatile JSON.
    pub fn to_volatile(&self) -> String {
        let mut v: Vec<Entry> = Vec::new();
        let mut push = |e: &IdMapEntry, isuid: bool| {
            v.push(Entry {
                isuid,
                isgid: !isuid,
                hostid: e.hostid,
                nsid: e.nsid,
                maprange: e.count,
            });
        };
        for e in &self.uid {
            push(e, true);
        }
        for e in &self.gid {
            push(e, false);
        }
        serde_json::to_string(&v).expect("idmap serializes")
    }

    /// The map back: host ids to container ids (to unshift files shifted with `self`).
    pub fn inverse(&self) -> Map {
        let inv = |v: &[IdMapEntry]| {
            v.iter()
                .map(|e| IdMapEntry {
                    nsid: e.hostid,
                    hostid: e.nsid,
                    count: e.count,
                })
                .collect()
        };
        Map {
            uid: inv(&self.uid),
            gid: inv(&self.gid),
        }
    }

    pub fn from_volatile(s: &str) -> Option<Map> {
        let v: Vec<Entry> = serde_json::from_slice(s.as_bytes()).ok()?;
        let mut m = Map {
            uid: vec![],
            gid: vec![],
        };
        for e in v {
            let x = IdMapEntry {
                nsid: e.nsid,
                hostid: e.hostid,
                count: e.maprange,
            };
            if e.isuid {
                m.uid.push(x);
            }
            if e.isgid {
                m.gid.push(x);
            }
        }
        Some(m)
    }
}

/// `raw.idmap` lines: `both|uid|gid HOST NS` with optional `a-b` ranges of equal length.
pub fn parse_raw(raw: &str) -> Result<Vec<(bool, bool, IdMapEntry)>> {
    let mut out = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            Error::config(
                "raw.idmap",
                format!("Invalid raw.idmap line {}: {line:?}", i + 1),
            )
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            return Err(bad());
        }
        let (u, g) = match f[0] {
            "both" => (true, true),
            "uid" => (true, false),
            "gid" => (false, true),
            _ => return Err(bad()),
        };
        let range = |s: &str| -> Option<(u32, u32)> {
            match s.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                    // `0-4294967295` is 2^32 ids: more than a count can say, refused.
                    Some((a, b.checked_sub(a)?.checked_add(1)?))
                }
                None => Some((s.parse().ok()?, 1)),
            }
        };
        let (h, hn) = range(f[1]).ok_or_else(bad)?;
        let (n, nn) = range(f[2]).ok_or_else(bad)?;
        if hn != nn {
            return Err(bad());
        }
        out.push((
            u,
            g,
            IdMapEntry {
                nsid: n,
                hostid: h,
                count: hn,
            },
        ));
    }
    Ok(out)
}

/// `base -> [0, size)` with the `raw` entries punched in.
fn build(base: u32, size: u32, raw: &[IdMapEntry]) -> Vec<IdMapEntry> {
    let mut holes: Vec<(u32, u32)> = raw
        .iter()
        .map(|e| (e.nsid, e.nsid.saturating_add(e.count)))
        .collect();
    crate::util::sort::sort(&mut holes);
    let mut out = Vec::new();
    let mut cur = 0u32;
    for (a, b) in holes {
        if a > cur && cur < size {
            let end = a.min(size);
            out.push(IdMapEntry {
                nsid: cur,
                hostid: base + cur,
                count: end - cur,
            });
        }
        cur = cur.max(b);
    }
    if cur < size {
        out.push(IdMapEntry {
            nsid: cur,
            hostid: base + cur,
            count: size - cur,
        });
    }
    out.extend_from_slice(raw);
    crate::util::sort::sort_by_key(&mut out, |e| e.nsid);
    out
}

/// Whether the expanded config asks for a range of the instance's own (isolated, no explicit
/// `security.idmap.base`): the range [`compute`] chooses among the others'.
pub fn chooses_range(config: &StringMap) -> bool {
    let get = |k: &str| config.get(k).map(String::as_str).filter(|v| !v.is_empty());
    get("security.idmap.isolated") == Some("true") && get("security.idmap.base").is_none()
}

/// The host id ranges (start, end) a map's uid lines take.
pub fn ranges(m: &Map) -> Vec<(u32, u32)> {
    m.uid
        .iter()
        .map(|e| (e.hostid, e.hostid.saturating_add(e.count)))
        .collect()
}

/// Compute an instance's map from its expanded config. An isolated one keeps the base it holds
/// (`keep`) while no range of `taken` (the host ranges other instances hold, asked only for an
/// isolated instance) meets it, else gets the first free slot after the shared range.
pub fn compute(
    config: &StringMap,
    keep: Option<u32>,
    taken: impl FnOnce() -> Vec<(u32, u32)>,
) -> Result<Map> {
    let (u, g) = crate::runtime::host_id_range();
    let (ubase, ucount, gbase, gcount) = (u.hostid, u.count, g.hostid, g.count);
    let get = |k: &str| config.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let size: u32 = match get("security.idmap.size") {
        Some(v) => v.parse().map_err(|_| {
            Error::config(
                "security.idmap.size",
                format!("Invalid security.idmap.size {v:?}"),
            )
        })?,
        None => DEFAULT_SIZE,
    };
    let offset: u32 = if let Some(b) = get("security.idmap.base") {
        let b: u32 = b.parse().map_err(|_| {
            Error::config(
                "security.idmap.base",
                format!("Invalid security.idmap.base {b:?}"),
            )
        })?;
        b.checked_sub(ubase).ok_or_else(|| {
            Error::config(
                "security.idmap.base",
                "security.idmap.base is below the host's range",
            )
        })?
    } else if chooses_range(config) {
        let taken = taken();
        let fits = |off: u32| off.saturating_add(size) <= ucount.min(gcount);
        let free = |off: u32| {
            let start = ubase.saturating_add(off);
            start
                .checked_add(size)
                .is_some_and(|end| fits(off) && !taken.iter().any(|&(b, e)| start < e && b < end))
        };
        // Its own range while nothing else meets it, else the first free slot of `size` ids
        // after the shared range.
        match keep
            .and_then(|b| b.checked_sub(ubase))
            .filter(|&off| off >= DEFAULT_SIZE && free(off))
        {
            Some(off) => off,
            None => {
                let mut k = 1u32;
                loop {
                    let off = k
                        .checked_mul(size.max(DEFAULT_SIZE))
                        .filter(|&off| fits(off))
                        .ok_or_else(|| match k {
                            1 => Error::Invalid(format!(
                                "Not enough ids in the host range for a map of {size}"
                            )),
                            _ => Error::Conflict("no free id range left".into()),
                        })?;
                    if free(off) {
                        break off;
                    }
                    k += 1;
                }
            }
        }
    } else {
        0
    };
    if offset
        .checked_add(size)
        .is_none_or(|end| end > ucount.min(gcount))
    {
        return Err(Error::Invalid(format!(
            "Not enough ids in the host range for a map of {size}"
        )));
    }
    let raw = parse_raw(get("raw.idmap").unwrap_or(""))?;
    let ru: Vec<IdMapEntry> = raw.iter().filter(|r| r.0).map(|r| r.2).collect();
    let rg: Vec<IdMapEntry> = raw.iter().filter(|r| r.1).map(|r| r.2).collect();
    Ok(Map {
        uid: build(ubase + offset, size, &ru),
        gid: build(gbase + offset, size, &rg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_isolated_range_is_kept_while_free_and_never_meets_another() {
        let (u, g) = crate::runtime::host_id_range();
        if u.count.min(g.count) < 6 * DEFAULT_SIZE {
            return;
        }
        let base = u.hostid;
        let slot = |k: u32| base + k * DEFAULT_SIZE;
        let iso: StringMap = [("security.idmap.isolated".to_string(), "true".to_string())].into();
        let start = |keep: Option<u32>, taken: &[(u32, u32)]| {
            compute(&iso, keep, || taken.to_vec()).expect("a map").uid[0].hostid
        };
        // Nothing in the way: the first slot after the shared range, or the one it holds.
        assert_eq!(start(None, &[]), slot(1));
        assert_eq!(start(Some(slot(3)), &[]), slot(3));
        // Its own base is kept only while no other range meets it: here a bigger map that
        // starts inside slot 2 and ends inside slot 3 (bases alone would not show it).
        let bigger = [(base, slot(1)), (slot(2) + 10, slot(3) + 10)];
        assert_eq!(start(Some(slot(3)), &bigger), slot(1));
        assert_eq!(start(Some(slot(4)), &bigger), slot(4));
        let full = [(base, slot(2) + 1), (slot(3) - 1, slot(4))];
        assert_eq!(start(None, &full), slot(4));
        // The shared range is never an isolated instance's own.
        assert_eq!(start(Some(base), &[]), slot(1));
        // A size the host range cannot hold says so.
        let mut huge = iso.clone();
        huge.insert("security.idmap.size".into(), u.count.to_string());
        let e = compute(&huge, None, Vec::new).expect_err("too big");
        assert!(e.to_string().contains("Not enough ids"), "{e}");
    }

    #[test]
    fn raw_ranges_past_u32_are_refused() {
        // Found by the rest_json fuzz target: the count of `0-4294967295` overflowed.
        assert!(parse_raw("both 0-4294967295 0-4294967295").is_err());
        assert!(parse_raw("both 5-3 5-3").is_err());
        assert_eq!(parse_raw("both 1000-1001 0-1").unwrap().len(), 1);
    }

    #[test]
    fn raw_punches_holes() {
        let m = build(
            1_000_000,
            65536,
            &[IdMapEntry {
                nsid: 1000,
                hostid: 1000,
                count: 1,
            }],
        );
        assert_eq!(
            m,
            vec![
                IdMapEntry {
                    nsid: 0,
                    hostid: 1_000_000,
                    count: 1000
                },
                IdMapEntry {
                    nsid: 1000,
                    hostid: 1000,
                    count: 1
                },
                IdMapEntry {
                    nsid: 1001,
                    hostid: 1_001_001,
                    count: 64535
                },
            ]
        );
    }

    #[test]
    fn parses_raw() {
        let r = parse_raw("both 1000 1000\nuid 50-52 500-502\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1],
            (
                true,
                false,
                IdMapEntry {
                    nsid: 500,
                    hostid: 50,
                    count: 3
                }
            )
        );
        assert!(parse_raw("both 1-3 1-2").is_err());
        assert!(parse_raw("all 1 1").is_err());
    }

    #[test]
    fn volatile_round_trip() {
        let m = Map {
            uid: vec![IdMapEntry {
                nsid: 0,
                hostid: 1_000_000,
                count: 65536,
            }],
            gid: vec![IdMapEntry {
                nsid: 0,
                hostid: 1_000_000,
                count: 65536,
            }],
        };
        let s = m.to_volatile();
        assert_eq!(
            s,
            r#"[{"Isuid":true,"Isgid":false,"Hostid":1000000,"Nsid":0,"Maprange":65536},{"Isuid":false,"Isgid":true,"Hostid":1000000,"Nsid":0,"Maprange":65536}]"#
        );
        assert_eq!(Map::from_volatile(&s).unwrap(), m);
    }
}
