//! `proxy` devices: LXD 5.0.2's keys (each kept or refused), parsed once, and starting and
//! stopping the running ones (their registry, in [`super::Ctx`], is `proxy_state`'s
//! [`Proxies`](super::proxy_state::Proxies)). The sockets and relays are `crate::net::proxy`'s.
//!
//! - `listen` and `connect`: `tcp:ADDR:PORTS`, `udp:ADDR:PORTS` (ports `80`, `8000-8002`,
//!   `80,443`; an IPv6 address in brackets; an empty address is `0.0.0.0` to listen on and
//!   `127.0.0.1` to connect to), `unix:/path`, `unix:@abstract`. `connect` has one port (every
//!   listening port goes there) or as many as `listen` (in order). Stream to stream (tcp, unix,
//!   mixed) and udp to udp; udp to a stream or back is not built.
//! - `bind=host` (default): listen in the daemon's network namespace and root, connect in the
//!   instance's; `bind=instance` (or LXD's older `guest`, `container`): the other way round.
//! - `uid`, `gid`, `mode` (default 0, 0, 0644, LXD's): the listening unix socket's file, ids of
//!   the side it is made on (an instance's are mapped through its init's id map).
//! - `security.uid`/`security.gid` other than 0, `nat=true`, `proxy_protocol=true`: not
//!   supported yet (the relays run in the daemon, as root).
//! - Started once the instance runs, closed when it stops or the device goes; a restarted
//!   daemon starts those of the running instances again. While the daemon is down nothing
//!   listens and the relayed connections are cut (they live in the daemon's threads).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::config::parse_bool;
use super::proxy_state::Running;
use super::{Ctx, Error, Result};
use crate::api::{Devices, StringMap};
use crate::net::proxy::{Addr, Place, Proxy, Spec, UnixOwner, UnixPath};
use crate::runtime::State;

/// Connections (UDP: clients) at once, per device.
pub const MAX_CONNS: usize = 1024;
/// Ports per device.
pub const MAX_PORTS: usize = 1000;

/// A proxy device's keys, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub listen: Vec<Addr>,
    /// One per listen address.
    pub connect: Vec<Addr>,
    pub bind_instance: bool,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

enum Kind {
    Tcp,
    Udp,
}

fn parse_ports(s: &str) -> std::result::Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("Invalid port {p:?}"))
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(part)?, port(part)?),
        };
        if b < a {
            return Err(format!("Invalid port range {part:?}"));
        }
        if out.len() + usize::from(b - a) + 1 > MAX_PORTS {
            return Err(format!("more than {MAX_PORTS} ports"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// `tcp:…`, `udp:…` or `unix:…` into one address per port; `listening` picks the meaning of an
/// empty host.
fn parse_addr(s: &str, listening: bool) -> std::result::Result<Vec<Addr>, String> {
    let (proto, rest) = s.split_once(':').unwrap_or((s, ""));
    let kind = match proto {
        "unix" if rest.is_empty() => return Err("Missing address".into()),
        "unix" => {
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() || name.len() > 100 {
                    return Err(format!("Invalid abstract socket name {rest:?}"));
                }
                return Ok(vec![Addr::Unix(UnixPath::Abstract(
                    name.as_bytes().to_vec(),
                ))]);
            }
            if !rest.starts_with('/')
                || rest.ends_with('/')
                || rest.contains('\0')
                || rest.split('/').any(|c| c == "." || c == "..")
            {
                return Err(format!(
                    "unix socket path {rest:?} must be absolute, without \".\" or \"..\" and name a file"
                ));
            }
            if rest.len() > 100 {
                return Err(format!("unix socket path {rest:?} is too long"));
            }
            return Ok(vec![Addr::Unix(UnixPath::Path(rest.to_string()))]);
        }
        "tcp" => Kind::Tcp,
        "udp" => Kind::Udp,
        _ => return Err(format!("Unknown protocol type {proto:?}")),
    };
    let (host, ports) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("Missing port in {s:?}"))?;
    let ip: IpAddr = if host.is_empty() {
        if listening {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        }
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("Invalid IPv6 address {v6:?}"))?
            .into()
    } else if host.contains(':') {
        return Err(format!(
            "Invalid address {rest:?}: an IPv6 address goes in brackets ([::1]:80)"
        ));
    } else {
        host.parse::<Ipv4Addr>()
            .map_err(|_| format!("{host:?} is not an IP address (host names are not resolved)"))?
            .into()
    };
    let ports = parse_ports(ports)?;
    Ok(ports
        .into_iter()
        .map(|p| {
            let a = SocketAddr::new(ip, p);
            match kind {
                Kind::Tcp => Addr::Tcp(a),
                Kind::Udp => Addr::Udp(a),
            }
        })
        .collect())
}

fn id_key(name: &str, dev: &StringMap, key: &str, default: u32) -> Result<u32> {
    match dev.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(v) => v.parse::<u32>().map_err(|_| {
            Error::Invalid(format!(
                "Device {name:?}: Invalid value for device option {key:?}: {v:?} is not a user or group id"
            ))
        }),
    }
}

/// Check a `proxy` device's keys (no host access: addresses are bound at start).
pub fn validate(name: &str, dev: &StringMap) -> Result<Parsed> {
    let get = |k: &str| dev.get(k).map(String::as_str).unwrap_or("");
    let invalid = |m: String| Error::Invalid(format!("Device {name:?}: {m}"));
    for k in dev.keys() {
        match k.as_str() {
            "type" | "listen" | "connect" | "bind" | "uid" | "gid" | "mode" | "nat"
            | "proxy_protocol" | "security.uid" | "security.gid" => {}
            _ => return Err(invalid(format!("Invalid device option {k:?}"))),
        }
    }
    for k in ["nat", "proxy_protocol"] {
        match get(k) {
            "" => {}
            v => match parse_bool(v) {
                None => {
                    return Err(invalid(format!(
                        "Invalid value for device option {k:?}: {v:?} is not a boolean"
                    )))
                }
                Some(false) => {}
                Some(true) if k == "nat" => {
                    return Err(Error::not_yet(&format!(
                        "proxy devices in NAT mode (nat=true, device {name:?})"
                    )))
                }
                Some(true) => {
                    return Err(Error::not_yet(&format!(
                        "the PROXY protocol header (proxy_protocol=true, device {name:?})"
                    )))
                }
            },
        }
    }
    for k in ["security.uid", "security.gid"] {
        if id_key(name, dev, k, 0)? != 0 {
            return Err(Error::not_yet(&format!(
                "proxy devices dropping privileges ({k}, device {name:?}): the relay runs as root"
            )));
        }
    }
    let bind_instance = match get("bind") {
        "" | "host" => false,
        "instance" | "guest" | "container" => true,
        v => {
            return Err(invalid(format!(
                "Invalid value for device option \"bind\": {v:?} (Must be \"host\" or \"instance\")"
            )))
        }
    };
    for k in ["listen", "connect"] {
        if get(k).is_empty() {
            return Err(invalid(format!("Missing device option {k:?}")));
        }
    }
    let listen = parse_addr(get("listen"), true)
        .map_err(|e| invalid(format!("Invalid value for device option \"listen\": {e}")))?;
    let mut connect = parse_addr(get("connect"), false)
        .map_err(|e| invalid(format!("Invalid value for device option \"connect\": {e}")))?;
    if connect.len() == 1 {
        connect = vec![connect[0].clone(); listen.len()];
    } else if connect.len() != listen.len() {
        return Err(invalid(format!(
            "Mismatch between listen port(s) and connect port(s) count ({} and {}): connect has one port or as many as listen",
            listen.len(),
            connect.len()
        )));
    }
    let udp = |a: &Addr| matches!(a, Addr::Udp(_));
    if udp(&listen[0]) != udp(&connect[0]) {
        return Err(Error::not_yet(&format!(
            "proxying between udp and a stream socket (device {name:?}: {} to {})",
            listen[0], connect[0]
        )));
    }
    let unix_path = matches!(listen[0], Addr::Unix(UnixPath::Path(_)));
    if !unix_path && ["uid", "gid", "mode"].iter().any(|k| !get(k).is_empty()) {
        return Err(invalid(
            "Only proxy devices for non-abstract unix sockets can carry uid, gid, or mode properties"
                .into(),
        ));
    }
    let mode = match get("mode") {
        "" => 0o644,
        v => u32::from_str_radix(v, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(format!(
                    "Invalid value for device option \"mode\": {v:?} is not an octal file mode (0644)"
                ))
            })?,
    };
    Ok(Parsed {
        listen,
        connect,
        bind_instance,
        uid: id_key(name, dev, "uid", 0)?,
        gid: id_key(name, dev, "gid", 0)?,
        mode,
    })
}

/// The proxy devices among `ed`, by device name.
pub fn proxy_devices(ed: &Devices) -> impl Iterator<Item = (&String, &StringMap)> {
    ed.iter()
        .filter(|(_, d)| d.get("type").map(String::as_str) == Some("proxy"))
}

/// Map `id` of the instance whose init is `pid` to a host id (`/proc/PID/{uid,gid}_map`).
fn host_id(pid: i32, which: &str, id: u32) -> Result<u32> {
    let path = format!("/proc/{pid}/{which}_map");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Host(format!("{path}: {e}")))?;
    for line in text.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [inside, outside, count] = f[..] {
            let id = u64::from(id);
            if id >= inside && id - inside < count {
                return u32::try_from(outside + (id - inside))
                    .map_err(|_| Error::Host(format!("{path}: id out of range")));
            }
        }
    }
    Err(Error::Invalid(format!(
        "{which} {id} is not mapped in the instance"
    )))
}

fn start_one(inst: &str, pid: i32, place: &Place, dev: &str, conf: &StringMap) -> Result<Proxy> {
    let p = validate(dev, conf)?;
    let (uid, gid) = if p.bind_instance {
        (host_id(pid, "uid", p.uid)?, host_id(pid, "gid", p.gid)?)
    } else {
        (p.uid, p.gid)
    };
    let (listen_place, connect_place) = if p.bind_instance {
        (place.clone(), Place::Host)
    } else {
        (Place::Host, place.clone())
    };
    Proxy::start(Spec {
        label: format!("{inst}/{dev}"),
        listen: p.listen,
        listen_place,
        connect: p.connect,
        connect_place,
        owner: UnixOwner {
            uid,
            gid,
            mode: p.mode,
        },
        max_conns: MAX_CONNS,
    })
    .map_err(|e| Error::Host(format!("Failed to start device {dev:?}: {e}")))
}

/// Start the proxy devices among `devs` of instance `inst` (init `pid`); all or none.
fn start_devices(inst: &str, pid: i32, devs: &Devices) -> Result<BTreeMap<String, Running>> {
    let mut out = BTreeMap::new();
    if proxy_devices(devs).next().is_none() {
        return Ok(out);
    }
    let maker = (host_id(pid, "uid", 0)?, host_id(pid, "gid", 0)?);
    let place = Place::of_pid(pid, maker)
        .map_err(|e| Error::Host(format!("proxy devices of {inst:?}: {e}")))?;
    for (dev, conf) in proxy_devices(devs) {
        let proxy = start_one(inst, pid, &place, dev, conf)?;
        out.insert(dev.clone(), Running { pid, proxy });
    }
    Ok(out)
}

fn running_pid(d: &Ctx, inst: &str) -> Option<i32> {
    match super::view::state_of(d, inst) {
        Ok(State::Running { init_pid, .. }) => Some(init_pid),
        _ => None,
    }
}

/// Start the proxy devices of running instance `inst` (expanded devices `ed`): at its start and
/// at daemon start. What an earlier run left is closed first.
pub fn start_all(d: &Ctx, inst: &str, ed: &Devices) -> Result<()> {
    let old = d.proxies.live.lock().expect("proxies lock").remove(inst);
    drop(old);
    let Some(pid) = running_pid(d, inst) else {
        return Err(Error::Host(format!(
            "proxy devices of {inst:?}: the instance is not running"
        )));
    };
    let started = start_devices(inst, pid, ed)?;
    if !started.is_empty() {
        d.proxies
            .live
            .lock()
            .expect("proxies lock")
            .insert(inst.to_string(), started);
    }
    Ok(())
}

/// Close the proxy devices of `inst` that serve an init that is no longer running (all of them
/// once it stopped; none of a run started since).
pub fn stopped(d: &Ctx, inst: &str) {
    let pid = running_pid(d, inst);
    let gone: Vec<Running> = {
        let mut live = d.proxies.live.lock().expect("proxies lock");
        let Some(m) = live.get_mut(inst) else { return };
        let names: Vec<String> = m
            .iter()
            .filter(|(_, r)| Some(r.pid) != pid)
            .map(|(n, _)| n.clone())
            .collect();
        let gone = names.iter().filter_map(|n| m.remove(n)).collect();
        if m.is_empty() {
            live.remove(inst);
        }
        gone
    };
    // Dropped outside the lock: closing waits for the relays.
    drop(gone);
}

/// Hot-plug: bring running instance `inst`'s proxies from `old` to `new` expanded devices:
/// removed and changed ones closed, added and changed ones started. On a failure the ones
/// started are closed and the closed ones started again, and the error says what failed.
pub fn hotplug(d: &Ctx, inst: &str, old: &Devices, new: &Devices) -> Result<()> {
    let changed = |n: &String| old.get(n) != new.get(n);
    let changed_in = |ds: &Devices| -> Devices {
        let kept = proxy_devices(ds).filter(|(n, _)| changed(n));
        crate::util::sort::map(kept.map(|(n, c)| (n.clone(), c.clone())))
    };
    let gone = changed_in(old);
    let added = changed_in(new);
    if gone.is_empty() && added.is_empty() {
        return Ok(());
    }
    let Some(pid) = running_pid(d, inst) else {
        return Ok(()); // stopped meanwhile: the next start uses the new devices
    };
    // Close first: a changed device may listen where it did.
    let closed: Vec<Running> = {
        let mut live = d.proxies.live.lock().expect("proxies lock");
        let m = live.entry(inst.to_string()).or_default();
        gone.keys().filter_map(|n| m.remove(n)).collect()
    };
    drop(closed);
    match start_devices(inst, pid, &added) {
        Ok(started) => {
            if !started.is_empty() {
                d.proxies
                    .live
                    .lock()
                    .expect("proxies lock")
                    .entry(inst.to_string())
                    .or_default()
                    .extend(started);
            }
            Ok(())
        }
        Err(e) => {
            let again = start_devices(inst, pid, &gone);
            let note = match again {
                Ok(again) => {
                    d.proxies
                        .live
                        .lock()
                        .expect("proxies lock")
                        .entry(inst.to_string())
                        .or_default()
                        .extend(again);
                    String::new()
                }
                Err(e2) => {
                    format!(" (and the previous proxy devices could not be restarted: {e2})")
                }
            };
            Err(match e {
                Error::Host(m) => Error::Host(format!("{m}{note}")),
                e if note.is_empty() => e,
                e => Error::Host(format!("{e}{note}")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kv: &[(&str, &str)]) -> StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn v(kv: &[(&str, &str)]) -> Result<Parsed> {
        let mut dev = m(&[("type", "proxy")]);
        dev.extend(m(kv));
        validate("p", &dev)
    }

    fn tcp(s: &str) -> Addr {
        Addr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn addresses_and_ports() {
        let p = v(&[
            ("listen", "tcp:127.0.0.1:18080"),
            ("connect", "tcp:127.0.0.1:8080"),
        ])
        .unwrap();
        assert_eq!(p.listen, vec![tcp("127.0.0.1:18080")]);
        assert_eq!(p.connect, vec![tcp("127.0.0.1:8080")]);
        assert!(!p.bind_instance);
        // A range mapped to an equal range, and many to one.
        let p = v(&[
            ("listen", "tcp:0.0.0.0:8000-8002"),
            ("connect", "tcp:127.0.0.1:9000-9002"),
        ])
        .unwrap();
        assert_eq!(p.listen.len(), 3);
        assert_eq!(p.connect[2], tcp("127.0.0.1:9002"));
        let p = v(&[
            ("listen", "tcp:[::1]:80,443"),
            ("connect", "unix:/run/app.sock"),
            ("bind", "instance"),
        ])
        .unwrap();
        assert_eq!(p.listen, vec![tcp("[::1]:80"), tcp("[::1]:443")]);
        assert_eq!(
            p.connect,
            vec![Addr::Unix(UnixPath::Path("/run/app.sock".into())); 2]
        );
        assert!(p.bind_instance);
        let p = v(&[("listen", "udp::53"), ("connect", "udp::5353")]).unwrap();
        assert_eq!(p.listen, vec![Addr::Udp("0.0.0.0:53".parse().unwrap())]);
        assert_eq!(
            p.connect,
            vec![Addr::Udp("127.0.0.1:5353".parse().unwrap())]
        );
        let p = v(&[
            ("listen", "unix:@abs"),
            ("connect", "tcp:10.0.0.1:80"),
            ("bind", "container"),
        ])
        .unwrap();
        assert_eq!(
            p.listen,
            vec![Addr::Unix(UnixPath::Abstract(b"abs".to_vec()))]
        );
        let p = v(&[
            ("listen", "unix:/tmp/x.sock"),
            ("connect", "tcp:127.0.0.1:80"),
            ("uid", "1000"),
            ("mode", "0660"),
        ])
        .unwrap();
        assert_eq!((p.uid, p.gid, p.mode), (1000, 0, 0o660));
    }

    #[test]
    fn bad_keys_are_refused() {
        let bad = |kv: &[(&str, &str)], want: &str| {
            let e = v(kv).unwrap_err().to_string();
            assert!(e.contains(want), "{kv:?}: {e}");
        };
        let base = [
            ("listen", "tcp:127.0.0.1:80"),
            ("connect", "tcp:127.0.0.1:80"),
        ];
        bad(
            &[("connect", "tcp:127.0.0.1:80")],
            "Missing device option \"listen\"",
        );
        bad(
            &[("listen", "tcp:127.0.0.1:80")],
            "Missing device option \"connect\"",
        );
        bad(
            &[("listen", "sctp:1.2.3.4:80"), base[1]],
            "Unknown protocol",
        );
        bad(&[("listen", "tcp:1.2.3.4"), base[1]], "Missing port");
        bad(
            &[("listen", "tcp:localhost:80"), base[1]],
            "not an IP address",
        );
        bad(&[("listen", "tcp:::1:80"), base[1]], "brackets");
        bad(&[("listen", "tcp:1.2.3.4:0"), base[1]], "Invalid port");
        bad(
            &[("listen", "tcp:1.2.3.4:90-80"), base[1]],
            "Invalid port range",
        );
        bad(&[("listen", "tcp:1.2.3.4:1-2000"), base[1]], "more than");
        bad(&[("listen", "unix:rel.sock"), base[1]], "absolute");
        bad(&[("listen", "unix:/a/../b"), base[1]], "absolute");
        bad(
            &[
                ("listen", "tcp:1.2.3.4:80"),
                ("connect", "tcp:1.2.3.4:80-81"),
            ],
            "Mismatch",
        );
        bad(
            &[
                ("listen", "tcp:1.2.3.4:80-82"),
                ("connect", "tcp:1.2.3.4:80-81"),
            ],
            "Mismatch",
        );
        bad(&[base[0], base[1], ("bind", "sideways")], "\"bind\"");
        bad(
            &[base[0], base[1], ("nosuch", "1")],
            "Invalid device option",
        );
        bad(&[base[0], base[1], ("mode", "0644")], "non-abstract unix");
        bad(
            &[("listen", "unix:/x.sock"), base[1], ("mode", "999")],
            "octal",
        );
        bad(&[base[0], base[1], ("nat", "maybe")], "not a boolean");
        bad(&[base[0], base[1], ("security.uid", "x")], "not a user");
        for (k, val) in [
            ("nat", "true"),
            ("proxy_protocol", "true"),
            ("security.uid", "1000"),
            ("security.gid", "1000"),
        ] {
            assert!(
                matches!(
                    v(&[base[0], base[1], (k, val)]),
                    Err(Error::NotSupported(_))
                ),
                "{k}"
            );
        }
        assert!(matches!(
            v(&[("listen", "udp:1.2.3.4:53"), base[1]]),
            Err(Error::NotSupported(_))
        ));
        // The defaults, said out loud, are fine.
        assert!(v(&[base[0], base[1], ("nat", "false"), ("security.uid", "0")]).is_ok());
    }
}
