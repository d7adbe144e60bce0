//! Network interfaces of a container: made by the monitor after the clone and before init runs
//! (so init sees them at boot), or by the daemon for a running container (hot-plug). Either way
//! from the host's network namespace, over netlink: the container end is created directly in the
//! container's namespace (by init's pid) with its name, MAC, MTU and up, so nothing ever enters
//! the container's namespace to set it up. The kernel deletes a veth pair and a macvlan when the
//! container's namespace goes, so a stopped container leaves nothing behind. A physical NIC (a
//! host link moved in) is given back, renamed and reset as it was, by the monitor when the
//! container stops (it holds the namespace until then) or by [`unplug`] when it is removed.

use super::{Error, Nic, NicKind, Result};
use crate::net::netlink::{LinkSpec, MacvlanMode, Netlink, Netns};

fn e(nic: &Nic, what: &str, x: impl std::fmt::Display) -> Error {
    Error(format!("device {:?}: {what}: {x}", nic.device))
}

/// Make `nic` for the container whose init is `pid`. On failure nothing of it is left.
pub fn plug(nl: &Netlink, pid: i32, nic: &Nic) -> Result<()> {
    let peer = LinkSpec {
        name: &nic.name,
        mac: Some(nic.mac),
        mtu: nic.mtu,
        up: true,
        netns: Some(Netns::Pid(pid)),
    };
    match &nic.kind {
        NicKind::Veth { host_name, bridge } => {
            let host = LinkSpec {
                name: host_name,
                mac: None,
                mtu: nic.mtu,
                up: false,
                netns: None,
            };
            nl.create_veth(&host, &peer).map_err(|x| {
                e(
                    nic,
                    &format!("create veth pair {host_name}/{}", nic.name),
                    x,
                )
            })?;
            let attach = || -> std::io::Result<()> {
                if let Some(br) = bridge {
                    nl.set_master(host_name, Some(br))?;
                }
                nl.set_up(host_name, true)
            };
            if let Err(x) = attach() {
                let _ = nl.delete_link(host_name);
                return Err(e(
                    nic,
                    &format!(
                        "attach {host_name} to {}",
                        bridge.as_deref().unwrap_or("the host")
                    ),
                    x,
                ));
            }
        }
        NicKind::Macvlan { parent } => {
            nl.create_macvlan(&peer, parent, MacvlanMode::Bridge)
                .map_err(|x| e(nic, &format!("create macvlan on {parent}"), x))?;
        }
        NicKind::Physical {
            parent,
            host_mtu,
            host_mac,
        } => plug_physical(nl, pid, nic, parent, *host_mtu, *host_mac)?,
    }
    Ok(())
}

/// Move host link `parent` into the container as `nic.name`, with `nic`'s MAC and MTU, up. On
/// failure it is left on the host as it was.
fn plug_physical(
    nl: &Netlink,
    pid: i32,
    nic: &Nic,
    parent: &str,
    host_mtu: u32,
    host_mac: Option<[u8; 6]>,
) -> Result<()> {
    let reset = |nl: &Netlink| {
        let _ = nl.set_mtu(parent, host_mtu);
        if let Some(m) = host_mac {
            let _ = nl.set_mac(parent, m);
        }
    };
    let prepare = || -> std::io::Result<()> {
        nl.set_up(parent, false)?;
        if Some(nic.mac) != host_mac {
            nl.set_mac(parent, nic.mac)?;
        }
        if let Some(m) = nic.mtu {
            nl.set_mtu(parent, m)?;
        }
        nl.move_to(parent, Netns::Pid(pid), Some(&nic.name))
    };
    if let Err(x) = prepare() {
        reset(nl);
        return Err(e(nic, &format!("move {parent} into the container"), x));
    }
    let name = nic.name.clone();
    if let Err(x) = crate::net::netlink::in_netns(pid, move || Netlink::open()?.set_up(&name, true))
    {
        let _ = give_back(pid, nic, parent, host_mtu, host_mac);
        return Err(e(nic, "set it up in the container", x));
    }
    Ok(())
}

/// Move a physical NIC out of the namespace of `pid` (or of the namespace file `ns`) back to
/// ours under its host name, reset to its MTU and MAC.
fn give_back(
    pid: i32,
    nic: &Nic,
    parent: &str,
    host_mtu: u32,
    host_mac: Option<[u8; 6]>,
) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|x| e(nic, "open the container's network namespace", x))?;
    give_back_from(
        std::os::fd::OwnedFd::from(ns),
        nic,
        parent,
        host_mtu,
        host_mac,
    )
}

/// [`give_back`] from an open network namespace file.
pub(crate) fn give_back_from(
    ns: std::os::fd::OwnedFd,
    nic: &Nic,
    parent: &str,
    host_mtu: u32,
    host_mac: Option<[u8; 6]>,
) -> Result<()> {
    let home = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|x| e(nic, "open our network namespace", x))?;
    let (name, host) = (nic.name.clone(), parent.to_string());
    crate::net::netlink::in_netns_fd(ns, move || {
        let nl = Netlink::open()?;
        let _ = nl.set_up(&name, false);
        nl.move_to(
            &name,
            Netns::Fd(std::os::fd::AsFd::as_fd(&home)),
            Some(&host),
        )
    })
    .map_err(|x| e(nic, &format!("give {parent} back to the host"), x))?;
    let nl = Netlink::open().map_err(|x| e(nic, "netlink", x))?;
    let _ = nl.set_mtu(parent, host_mtu);
    if let Some(m) = host_mac {
        let _ = nl.set_mac(parent, m);
    }
    Ok(())
}

/// Give every physical NIC of `nics` back from the namespace file `ns` (the monitor, once the
/// container has stopped; what cannot be given back is reported and the rest still done).
pub(crate) fn give_back_all(ns: &std::os::fd::OwnedFd, nics: &[Nic]) {
    for nic in nics {
        if let NicKind::Physical {
            parent,
            host_mtu,
            host_mac,
        } = &nic.kind
        {
            let r = ns
                .try_clone()
                .map_err(|x| e(nic, "dup", x))
                .and_then(|ns| give_back_from(ns, nic, parent, *host_mtu, *host_mac));
            if let Err(x) = r {
                eprintln!("bivy monitor: {x}");
            }
        }
    }
}

/// Record a running container's NICs after a hot-plug (`gone` device names removed, `added`
/// appended), so the monitor gives its physical NICs back when it stops.
pub fn record(run_dir: &std::path::Path, gone: &[String], added: &[Nic]) -> Result<()> {
    let mut spec = super::control::running_spec(run_dir)?;
    spec.nics.retain(|n| !gone.contains(&n.device));
    spec.nics.extend(added.iter().cloned());
    write_spec(run_dir, &spec)
}

/// Replace the running spec (after a hot-plug or a reconcile changed its NICs).
fn write_spec(run_dir: &std::path::Path, spec: &super::Spec) -> Result<()> {
    let js = serde_json::to_vec_pretty(spec).map_err(|x| Error(format!("encode spec: {x}")))?;
    super::helper::replace_file(&run_dir.join(super::files::SPEC), &js)
}

/// The NICs a hot-plug is about to unplug and plug (`run/<name>/nics.pending`, written before it
/// touches anything and removed once the running spec records the result), so that a daemon
/// killed in between leaves a trace of what it may have changed.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Pending {
    gone: Vec<Nic>,
    added: Vec<Nic>,
}

const PENDING: &str = "nics.pending";

/// Write the intent of a NIC hot-plug (see [`Pending`]).
pub fn intend(run_dir: &std::path::Path, gone: &[Nic], added: &[Nic]) -> Result<()> {
    let p = Pending {
        gone: gone.to_vec(),
        added: added.to_vec(),
    };
    let js = serde_json::to_vec(&p).map_err(|x| Error(format!("encode {PENDING}: {x}")))?;
    super::helper::replace_file(&run_dir.join(PENDING), &js)
}

/// The hot-plug is recorded (or undone): its intent goes.
pub fn settled(run_dir: &std::path::Path) {
    let _ = std::fs::remove_file(run_dir.join(PENDING));
}

/// The intent a hot-plug left, if any.
fn read_pending(run_dir: &std::path::Path) -> Option<Pending> {
    std::fs::read(run_dir.join(PENDING))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The NICs a pending hot-plug (one a killed daemon left) was plugging and unplugging.
pub fn pending(run_dir: &std::path::Path) -> Vec<Nic> {
    let p = read_pending(run_dir).unwrap_or_default();
    p.added.into_iter().chain(p.gone).collect()
}

/// Whether `nic` is in the container of init `pid` now.
fn present(nl: &Netlink, pid: i32, nic: &Nic) -> Result<bool> {
    let inside = |name: &str| {
        let name = name.to_string();
        crate::net::netlink::in_netns(pid, move || Ok(Netlink::open()?.link(&name)?.is_some()))
            .map_err(|x| e(nic, "look in the container", x))
    };
    match &nic.kind {
        NicKind::Veth { host_name, .. } => nl
            .link(host_name)
            .map(|l| l.is_some())
            .map_err(|x| e(nic, &format!("look for {host_name}"), x)),
        NicKind::Macvlan { .. } => inside(&nic.name),
        NicKind::Physical { parent, .. } => {
            let on_host = nl
                .link(parent)
                .map_err(|x| e(nic, &format!("look for {parent}"), x))?
                .is_some();
            Ok(!on_host && inside(&nic.name)?)
        }
    }
}

/// After a daemon restart: make the NICs of the running container (init `pid`) exactly `want`
/// (its record's, in order), whatever a killed daemon's hot-plug left: every NIC it may have
/// made (the running spec's and a pending hot-plug's) that is not wanted is removed when
/// present, every wanted one missing is made, and the running spec then records `want`.
pub fn reconcile(run_dir: &std::path::Path, pid: i32, want: &[Nic]) -> Result<()> {
    let pending = read_pending(run_dir);
    let mut spec = super::control::running_spec(run_dir)?;
    if pending.is_none() && spec.nics == want {
        return Ok(());
    }
    let nl = Netlink::open().map_err(|x| Error(format!("netlink: {x}")))?;
    let mut known: Vec<Nic> = spec.nics.clone();
    if let Some(p) = &pending {
        known.extend(p.added.iter().cloned());
        known.extend(p.gone.iter().cloned());
    }
    let mut seen: Vec<&Nic> = Vec::new();
    for nic in &known {
        if want.contains(nic) || seen.contains(&nic) {
            continue;
        }
        seen.push(nic);
        if present(&nl, pid, nic)? {
            unplug(&nl, pid, nic)?;
        }
    }
    for nic in want {
        if !present(&nl, pid, nic)? {
            plug(&nl, pid, nic)?;
        }
    }
    spec.nics = want.to_vec();
    write_spec(run_dir, &spec)?;
    settled(run_dir);
    Ok(())
}

/// Remove `nic` from a running container (hot-unplug): deleting the host end of a veth pair
/// deletes both ends; a macvlan is deleted inside the container's namespace; a physical NIC is
/// given back to the host.
pub fn unplug(nl: &Netlink, pid: i32, nic: &Nic) -> Result<()> {
    match &nic.kind {
        NicKind::Veth { host_name, .. } => nl
            .delete_link(host_name)
            .map_err(|x| e(nic, &format!("delete {host_name}"), x)),
        NicKind::Macvlan { .. } => {
            let name = nic.name.clone();
            crate::net::netlink::in_netns(pid, move || Netlink::open()?.delete_link(&name))
                .map_err(|x| e(nic, "delete the macvlan", x))
        }
        NicKind::Physical {
            parent,
            host_mtu,
            host_mac,
        } => give_back(pid, nic, parent, *host_mtu, *host_mac),
    }
}

/// Make all of `nics` for init `pid` (the monitor, before releasing init); on failure the ones
/// made are removed.
pub fn plug_all(pid: i32, nics: &[Nic]) -> Result<()> {
    if nics.is_empty() {
        return Ok(());
    }
    let nl = Netlink::open().map_err(|x| Error(format!("netlink: {x}")))?;
    for (i, nic) in nics.iter().enumerate() {
        if let Err(x) = plug(&nl, pid, nic) {
            for done in &nics[..i] {
                let _ = unplug(&nl, pid, done);
            }
            return Err(x);
        }
    }
    Ok(())
}
