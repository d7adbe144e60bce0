//! Network interfaces of a container: made by the monitor after the clone and before init runs
//! (so init sees them at boot), or by the daemon for a running container (hot-plug). Either way
//! from the host's network namespace, over netlink: the container end is created directly in the
//! container's namespace (by init's pid) with its name, MAC, MTU and up, so nothing ever enters
//! the container's namespace to set it up. The kernel deletes a veth pair and a macvlan when the
//! container's namespace goes, so a stopped container leaves nothing behind.

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
    }
    Ok(())
}

/// Remove `nic` from a running container (hot-unplug): deleting the host end of a veth pair
/// deletes both ends; a macvlan is deleted inside the container's namespace.
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
