//! `/1.0/networks`: the host's interfaces, read-only (managed networks are not built yet).

use super::super::request::recursion;
use super::super::response::{self, Error, Result};
use crate::api::{self};
use crate::http::{Request, Response};
use crate::instance::Ctx as Daemon;

/// Host interfaces as unmanaged networks (what `lxc network list` shows for a host without
/// managed networks).
fn host_networks() -> Vec<api::Network> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let base = std::path::Path::new("/sys/class/net").join(&n);
            let kind = if base.join("bridge").exists() {
                "bridge"
            } else if n == "lo" {
                "loopback"
            } else {
                "physical"
            };
            out.push(api::Network {
                config: api::StringMap::new(),
                description: String::new(),
                name: n.clone(),
                kind: kind.into(),
                used_by: vec![],
                managed: false,
                status: String::new(),
                locations: vec![],
            });
        }
    }
    out
}

pub fn networks_list(_d: &Daemon, req: &Request) -> Result<Response> {
    let nets = host_networks();
    if recursion(req) > 0 {
        Ok(response::sync(&nets))
    } else {
        Ok(response::sync(
            &nets
                .iter()
                .map(|n| format!("/1.0/networks/{}", n.name))
                .collect::<Vec<_>>(),
        ))
    }
}

pub fn network_get(_d: &Daemon, name: &str) -> Result<Response> {
    host_networks()
        .into_iter()
        .find(|n| n.name == name)
        .map(|n| response::sync(&n))
        .ok_or_else(|| Error::NotFound("Network not found".into()))
}
