//! The lease store of one managed bridge, shared by its DHCP server (which allocates) and its DNS
//! server (which answers `<name>.<domain>` from it).
//!
//! Two kinds of entries:
//! - static entries, given by the daemon from the instance NICs on the bridge ([`StaticLease`]:
//!   MAC, instance name, and the NIC's `ipv4.address` when set). They are not persisted here
//!   (the instance config is their source) and are replaced as a whole by
//!   [`LeaseStore::set_static`]. An entry with an address reserves it for that MAC (of two
//!   asking for one address, one keeps it and the other is served without it: one conflict
//!   never stops the others' being served); an entry
//!   without one still names the MAC's dynamic lease (the instance name wins over the host
//!   name the client sent), and its instance name is that MAC's only: a lease of another MAC
//!   whose client sent that name is published without a name (as dnsmasq's `dhcp-host` names
//!   keep theirs). A MAC that leaves the static entries (its NIC or its instance was
//!   removed) loses its dynamic lease, as LXD clears a removed NIC's leases.
//! - dynamic leases handed out by the DHCP server, persisted in one JSON file
//!   (`{"version":1,"leases":[{"mac","ip","hostname","expires"}]}`), replaced atomically on
//!   every change (write, fsync, rename, fsync dir). Expired leases are kept (one per MAC, one
//!   per address) so that a client coming back gets its previous address when still free; they
//!   are reused for other clients only when the pool has no never-used address left.
//!
//! A missing file is an empty store; a file that does not parse is an error naming it (never
//! silently dropped: an operator must see it). Declined addresses (DHCPDECLINE: someone else
//! answers ARP for it) are held in memory only.

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::netlink::{format_mac, parse_mac};

/// One lease as shown to the API and used by DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub hostname: String,
    /// Unix seconds; 0 for a static lease.
    pub expires: u64,
    pub is_static: bool,
}

/// An instance NIC on the bridge: its MAC, the instance name (DNS name) and the reserved
/// address when the NIC has `ipv4.address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticLease {
    pub mac: [u8; 6],
    pub ip: Option<Ipv4Addr>,
    pub hostname: String,
}

/// A static address two entries ask for ([`LeaseStore::set_static`]): the NIC of instance
/// `holder` keeps it, the one of instance `refused` is served without it (a dynamic address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConflict {
    pub ip: Ipv4Addr,
    pub holder: String,
    pub refused: String,
}

#[derive(Serialize, Deserialize)]
struct FileLease {
    mac: String,
    ip: Ipv4Addr,
    #[serde(default)]
    hostname: String,
    expires: u64,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    leases: Vec<FileLease>,
}

/// A dynamic lease record (expired ones included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynLease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub hostname: String,
    pub expires: u64,
}

/// The leases of one bridge. See the module docs.
#[derive(Debug)]
pub struct LeaseStore {
    /// None: in memory only (tests, fuzzing).
    path: Option<PathBuf>,
    dynamic: Vec<DynLease>,
    statics: Vec<StaticLease>,
    /// Declined addresses and the unix time until which they are not handed out.
    declined: Vec<(Ipv4Addr, u64)>,
}

/// Current unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LeaseStore {
    /// Open the store persisted at `path` (a missing file is an empty store; a corrupt one is an
    /// error naming the file).
    pub fn open(path: &Path) -> io::Result<LeaseStore> {
        let dynamic = match std::fs::read(path) {
            Ok(data) => parse_file(&data).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("lease file {}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading lease file {}: {e}", path.display()),
                ))
            }
        };
        Ok(LeaseStore {
            path: Some(path.to_path_buf()),
            dynamic,
            statics: Vec::new(),
            declined: Vec::new(),
        })
    }

    /// A store that is never written to disk (tests, fuzzing).
    pub fn in_memory() -> LeaseStore {
        LeaseStore {
            path: None,
            dynamic: Vec::new(),
            statics: Vec::new(),
            declined: Vec::new(),
        }
    }

    /// The file this store persists to.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn persist(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = FileFormat {
            version: 1,
            leases: self
                .dynamic
                .iter()
                .map(|l| FileLease {
                    mac: format_mac(l.mac),
                    ip: l.ip,
                    hostname: l.hostname.clone(),
                    expires: l.expires,
                })
                .collect(),
        };
        let data = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        crate::util::fs::atomic_write(path, &data).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("writing lease file {}: {e}", path.display()),
            )
        })
    }

    /// Replace the static entries (the instance NICs of this bridge). A dynamic lease of another
    /// MAC on an address now reserved stays until it runs out or its client renews (and is
    /// refused), as dnsmasq keeps it: its client still uses the address, which must not be given
    /// to anyone else meanwhile (see [`LeaseStore::static_ip`]). The lease of a MAC that had a
    /// static entry and has none now goes (its NIC or instance is gone, and its name with it).
    ///
    /// Two entries reserving one address (configuration checks refuse it, but records made
    /// before them, or by two racing requests, may still hold it): the entry that reserved it
    /// before keeps it, else the first in `entries`; the other is kept without the address (its
    /// name still names its dynamic lease) and returned, so that one conflict never stops the
    /// other entries' being served.
    pub fn set_static(&mut self, mut entries: Vec<StaticLease>) -> io::Result<Vec<StaticConflict>> {
        let old = &self.statics;
        let held_before = |e: &StaticLease| old.iter().any(|o| o.mac == e.mac && o.ip == e.ip);
        // Those that held their address before go first; the others keep their order.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        crate::util::sort::sort_by_key(&mut order, |&i| !held_before(&entries[i]));
        let mut holders: Vec<(Ipv4Addr, String)> = Vec::new();
        let mut conflicts = Vec::new();
        for i in order {
            let Some(ip) = entries[i].ip else {
                continue;
            };
            match holders.iter().find(|(h, _)| *h == ip) {
                Some((_, holder)) => {
                    conflicts.push(StaticConflict {
                        ip,
                        holder: holder.clone(),
                        refused: entries[i].hostname.clone(),
                    });
                    entries[i].ip = None;
                }
                None => holders.push((ip, entries[i].hostname.clone())),
            }
        }
        let gone: HashSet<[u8; 6]> = self
            .statics
            .iter()
            .map(|s| s.mac)
            .filter(|m| !entries.iter().any(|e| e.mac == *m))
            .collect();
        self.statics = entries;
        let before = self.dynamic.len();
        let statics = &self.statics;
        let now = unix_now();
        self.dynamic.retain(|l| {
            !gone.contains(&l.mac)
                && !statics
                    .iter()
                    .any(|s| s.ip == Some(l.ip) && s.mac != l.mac && l.expires <= now)
        });
        if self.dynamic.len() != before {
            self.persist()?;
        }
        Ok(conflicts)
    }

    /// The static entries.
    pub fn statics(&self) -> &[StaticLease] {
        &self.statics
    }

    /// The static address of `mac`, unless another MAC's unexpired dynamic lease still holds it:
    /// until that client renews (and is refused) or its lease runs out, `mac` is served as a
    /// dynamic client, as dnsmasq serves a configured address leased to another.
    pub fn static_ip(&self, mac: &[u8; 6], now: u64) -> Option<Ipv4Addr> {
        let ip = self.static_for(mac)?.ip?;
        let held = self
            .dynamic
            .iter()
            .any(|l| l.ip == ip && &l.mac != mac && l.expires > now);
        (!held).then_some(ip)
    }

    /// The static entry of `mac`.
    pub fn static_for(&self, mac: &[u8; 6]) -> Option<&StaticLease> {
        self.statics.iter().find(|s| &s.mac == mac)
    }

    /// The dynamic lease record of `mac`, expired or not.
    pub fn dynamic_for(&self, mac: &[u8; 6]) -> Option<&DynLease> {
        self.dynamic.iter().find(|l| &l.mac == mac)
    }

    /// Every dynamic record, expired ones included.
    pub fn dynamic(&self) -> &[DynLease] {
        &self.dynamic
    }

    /// Static leases (those with an address) and unexpired dynamic leases, now.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases_at(unix_now())
    }

    /// [`LeaseStore::leases`] at time `now`.
    pub fn leases_at(&self, now: u64) -> Vec<Lease> {
        let mut out: Vec<Lease> = self
            .statics
            .iter()
            .filter_map(|s| {
                Some(Lease {
                    mac: s.mac,
                    ip: self.static_ip(&s.mac, now)?,
                    hostname: s.hostname.clone(),
                    expires: 0,
                    is_static: true,
                })
            })
            .collect();
        for l in &self.dynamic {
            if l.expires <= now {
                continue;
            }
            let st = self.static_for(&l.mac);
            if self.static_ip(&l.mac, now).is_some() {
                continue;
            }
            // An instance's name is its own NICs': another MAC's client that sent it gets none.
            let hostname = match st {
                Some(s) => s.hostname.clone(),
                None if self
                    .statics
                    .iter()
                    .any(|s| s.hostname.eq_ignore_ascii_case(&l.hostname)) =>
                {
                    String::new()
                }
                None => l.hostname.clone(),
            };
            out.push(Lease {
                mac: l.mac,
                ip: l.ip,
                hostname,
                expires: l.expires,
                is_static: false,
            });
        }
        out
    }

    /// The addresses of host `name` (case-insensitive), for DNS.
    pub fn lookup_name(&self, name: &str) -> Vec<Ipv4Addr> {
        self.lookup_name_at(name, unix_now())
    }

    /// [`LeaseStore::lookup_name`] at time `now`.
    pub fn lookup_name_at(&self, name: &str, now: u64) -> Vec<Ipv4Addr> {
        if name.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for l in self.leases_at(now) {
            if l.hostname.eq_ignore_ascii_case(name) && !out.contains(&l.ip) {
                out.push(l.ip);
            }
        }
        out
    }

    /// The host name holding `ip` now (a lease with a name), for reverse DNS.
    pub fn lookup_addr(&self, ip: Ipv4Addr) -> Option<String> {
        self.leases()
            .into_iter()
            .find(|l| l.ip == ip && !l.hostname.is_empty())
            .map(|l| l.hostname)
    }

    /// Is `ip` reserved by a static entry of another MAC, held by an unexpired lease of another
    /// MAC, or declined until after `now`?
    pub fn taken_by_other(&self, ip: Ipv4Addr, mac: &[u8; 6], now: u64) -> bool {
        self.statics
            .iter()
            .any(|s| s.ip == Some(ip) && &s.mac != mac)
            || self
                .dynamic
                .iter()
                .any(|l| l.ip == ip && &l.mac != mac && l.expires > now)
            || self.is_declined(ip, now)
    }

    /// Is `ip` declined until after `now`?
    pub fn is_declined(&self, ip: Ipv4Addr, now: u64) -> bool {
        self.declined
            .iter()
            .any(|&(d, until)| d == ip && until > now)
    }

    /// Does any record (expired or not, any MAC) hold `ip`, or a static entry reserve it?
    pub fn ever_used(&self, ip: Ipv4Addr) -> bool {
        self.dynamic.iter().any(|l| l.ip == ip) || self.statics.iter().any(|s| s.ip == Some(ip))
    }

    /// Record `mac`'s lease of `ip` until `expires` (replacing its previous record and any other
    /// record of `ip`) and persist.
    pub fn commit(
        &mut self,
        mac: [u8; 6],
        ip: Ipv4Addr,
        hostname: &str,
        expires: u64,
    ) -> io::Result<()> {
        let new = DynLease {
            mac,
            ip,
            hostname: hostname.to_owned(),
            expires,
        };
        let old = self.dynamic.clone();
        self.dynamic.retain(|l| l.mac != mac && l.ip != ip);
        self.dynamic.push(new);
        if let Err(e) = self.persist() {
            self.dynamic = old;
            return Err(e);
        }
        Ok(())
    }

    /// Forget `mac`'s dynamic lease (DHCPRELEASE, or an instance NIC removed) and persist.
    pub fn release_mac(&mut self, mac: [u8; 6]) -> io::Result<()> {
        let before = self.dynamic.len();
        let old = self.dynamic.clone();
        self.dynamic.retain(|l| l.mac != mac);
        if self.dynamic.len() != before {
            if let Err(e) = self.persist() {
                self.dynamic = old;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Mark `ip` unusable until `until` (DHCPDECLINE) and drop any lease on it.
    pub fn decline(&mut self, ip: Ipv4Addr, until: u64, now: u64) -> io::Result<()> {
        self.declined.retain(|&(d, u)| d != ip && u > now);
        // Bounded: one entry per address of the subnet at most, and old ones are dropped above.
        self.declined.push((ip, until));
        let before = self.dynamic.len();
        let old = self.dynamic.clone();
        self.dynamic.retain(|l| l.ip != ip);
        if self.dynamic.len() != before {
            if let Err(e) = self.persist() {
                self.dynamic = old;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Drop dynamic records whose address fails `keep` (the subnet changed) and persist.
    pub fn retain_addresses(&mut self, keep: impl Fn(Ipv4Addr) -> bool) -> io::Result<()> {
        let before = self.dynamic.len();
        self.dynamic.retain(|l| keep(l.ip));
        if self.dynamic.len() != before {
            self.persist()?;
        }
        Ok(())
    }
}

fn parse_file(data: &[u8]) -> Result<Vec<DynLease>, String> {
    let f: FileFormat = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    if f.version != 1 {
        return Err(format!("unknown version {}", f.version));
    }
    let mut out: Vec<DynLease> = Vec::with_capacity(f.leases.len());
    for l in f.leases {
        let mac = parse_mac(&l.mac).ok_or_else(|| format!("bad MAC address {:?}", l.mac))?;
        // One record per MAC and per address: a later record replaces an earlier one.
        out.retain(|o| o.mac != mac && o.ip != l.ip);
        out.push(DynLease {
            mac,
            ip: l.ip,
            hostname: l.hostname,
            expires: l.expires,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 1];
    const M2: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 2];

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bivy-leases-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mac_round_trip() {
        assert_eq!(format_mac(M1), "00:16:3e:00:00:01");
        assert_eq!(parse_mac("00:16:3E:00:00:01"), Some(M1));
        assert_eq!(parse_mac("00:16:3e:00:00"), None);
        assert_eq!(parse_mac("00:16:3e:00:00:1"), None);
        assert_eq!(parse_mac("00:16:3e:00:00:zz"), None);
    }

    #[test]
    fn missing_is_empty_and_persists_atomically() {
        let d = tmpdir("persist");
        let p = d.join("leases.json");
        let mut s = LeaseStore::open(&p).unwrap();
        assert!(s.leases_at(0).is_empty());
        s.commit(M1, Ipv4Addr::new(10, 0, 0, 5), "c1", 100).unwrap();
        s.commit(M2, Ipv4Addr::new(10, 0, 0, 6), "c2", 50).unwrap();
        let s2 = LeaseStore::open(&p).unwrap();
        assert_eq!(s2.dynamic().len(), 2);
        assert_eq!(
            s2.lookup_name_at("C1", 10),
            vec![Ipv4Addr::new(10, 0, 0, 5)]
        );
        // Expired at 60: c2 gone from leases but its record is kept.
        assert_eq!(s2.leases_at(60).len(), 1);
        assert!(s2.dynamic_for(&M2).is_some());
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let d = tmpdir("corrupt");
        let p = d.join("leases.json");
        std::fs::write(&p, b"{not json").unwrap();
        let e = LeaseStore::open(&p).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        std::fs::write(
            &p,
            br#"{"version":1,"leases":[{"mac":"xx","ip":"10.0.0.1","expires":1}]}"#,
        )
        .unwrap();
        let e = LeaseStore::open(&p).unwrap_err();
        assert!(e.to_string().contains("bad MAC"), "{e}");
        std::fs::write(&p, br#"{"version":2,"leases":[]}"#).unwrap();
        assert!(LeaseStore::open(&p).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn statics_reserve_and_name() {
        let mut s = LeaseStore::in_memory();
        let ip5 = Ipv4Addr::new(10, 0, 0, 5);
        s.commit(M2, ip5, "other", 100).unwrap();
        s.commit(M1, Ipv4Addr::new(10, 0, 0, 9), "dhcpname", 100)
            .unwrap();
        s.set_static(vec![
            StaticLease {
                mac: M1,
                ip: None,
                hostname: "c1".into(),
            },
            StaticLease {
                mac: [1; 6],
                ip: Some(ip5),
                hostname: "c3".into(),
            },
        ])
        .unwrap();
        // M2's lease on the reserved address is gone.
        assert!(s.dynamic_for(&M2).is_none());
        assert!(s.taken_by_other(ip5, &M2, 0));
        assert!(!s.taken_by_other(ip5, &[1; 6], 0));
        // The instance name wins over the DHCP host name.
        assert_eq!(s.lookup_name_at("c1", 0), vec![Ipv4Addr::new(10, 0, 0, 9)]);
        assert!(s.lookup_name_at("dhcpname", 0).is_empty());
        assert_eq!(s.lookup_name_at("c3", 0), vec![ip5]);
        let l = s.leases_at(0);
        assert_eq!(l.len(), 2);
        assert!(l
            .iter()
            .any(|l| l.is_static && l.ip == ip5 && l.expires == 0));
    }

    #[test]
    fn one_conflict_keeps_the_other_statics() {
        let mut s = LeaseStore::in_memory();
        let (ip50, ip60, ip61) = (
            Ipv4Addr::new(10, 0, 0, 50),
            Ipv4Addr::new(10, 0, 0, 60),
            Ipv4Addr::new(10, 0, 0, 61),
        );
        let e = |mac: [u8; 6], ip: Ipv4Addr, name: &str| StaticLease {
            mac,
            ip: Some(ip),
            hostname: name.into(),
        };
        let c3 = e(M1, ip50, "c3");
        let copy = e([3; 6], ip50, "c3copy");
        assert!(s
            .set_static(vec![c3.clone(), e(M2, ip60, "c5")])
            .unwrap()
            .is_empty());
        // A copy asks for c3's address: c3 keeps it (it held it before, though listed later),
        // the copy is served without it, and the conflict is told.
        s.commit([3; 6], ip50, "c3copy", 100).unwrap();
        let c = s
            .set_static(vec![copy.clone(), c3.clone(), e(M2, ip60, "c5")])
            .unwrap();
        assert_eq!(
            c,
            vec![StaticConflict {
                ip: ip50,
                holder: "c3".into(),
                refused: "c3copy".into()
            }]
        );
        assert_eq!(s.static_for(&M1).and_then(|l| l.ip), Some(ip50));
        assert_eq!(s.static_for(&[3; 6]).map(|l| l.ip), Some(None));
        assert!(s.dynamic_for(&[3; 6]).is_none());
        assert!(s.taken_by_other(ip50, &[3; 6], 0));
        // Another instance's change still takes effect while the conflict stays.
        let c = s.set_static(vec![copy, c3, e(M2, ip61, "c5")]).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(s.static_for(&M2).and_then(|l| l.ip), Some(ip61));
        assert_eq!(s.lookup_name_at("c5", 0), vec![ip61]);
        assert_eq!(s.lookup_name_at("c3", 0), vec![ip50]);
        // Neither held it before: the first keeps it.
        let mut fresh = LeaseStore::in_memory();
        let c = fresh
            .set_static(vec![e(M2, ip60, "a"), e(M1, ip60, "b")])
            .unwrap();
        assert_eq!(c[0].holder, "a");
        assert_eq!(fresh.lookup_name_at("a", 0), vec![ip60]);
    }

    /// A static address another MAC holds a live lease on: that lease stays (its client still
    /// uses the address), the static owner is served as a dynamic client until it runs out.
    #[test]
    fn a_static_address_leased_to_another_waits_for_that_lease() {
        let mut s = LeaseStore::in_memory();
        let ip = Ipv4Addr::new(10, 0, 0, 3);
        let now = unix_now();
        s.commit(M2, ip, "c2", now + 3600).unwrap();
        s.set_static(vec![StaticLease {
            mac: M1,
            ip: Some(ip),
            hostname: "c1".into(),
        }])
        .unwrap();
        assert_eq!(s.dynamic_for(&M2).map(|l| l.ip), Some(ip));
        assert_eq!(s.static_ip(&M1, now), None);
        assert_eq!(s.lookup_name_at("c2", now), vec![ip]);
        assert!(s.lookup_name_at("c1", now).is_empty());
        // Nobody new gets it meanwhile; once the lease ran out, its owner does.
        assert!(s.taken_by_other(ip, &[3; 6], now));
        assert_eq!(s.static_ip(&M1, now + 3600), Some(ip));
        assert_eq!(s.lookup_name_at("c1", now + 3600), vec![ip]);
    }

    #[test]
    fn release_and_decline() {
        let mut s = LeaseStore::in_memory();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        s.commit(M1, ip, "c1", 100).unwrap();
        assert!(s.taken_by_other(ip, &M2, 10));
        assert!(!s.taken_by_other(ip, &M2, 100));
        s.release_mac(M1).unwrap();
        assert!(s.dynamic_for(&M1).is_none());
        s.commit(M1, ip, "c1", 100).unwrap();
        s.decline(ip, 50, 10).unwrap();
        assert!(s.dynamic_for(&M1).is_none());
        assert!(s.taken_by_other(ip, &M1, 20));
        assert!(!s.taken_by_other(ip, &M1, 50));
        // A commit replaces the MAC's previous record and any other record of the address.
        s.commit(M1, ip, "a", 100).unwrap();
        s.commit(M2, ip, "b", 100).unwrap();
        assert_eq!(s.dynamic().len(), 1);
        s.commit(M2, Ipv4Addr::new(10, 0, 0, 6), "b", 100).unwrap();
        assert_eq!(s.dynamic().len(), 1);
    }
}
