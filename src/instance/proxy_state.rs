//! The running proxy devices ([`Proxies`], in [`super::Ctx`]): each relay with the init it
//! serves, by instance and device. Starting and stopping them is `proxy`'s; this file imports
//! nothing that uses `Ctx`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::net::proxy::Proxy;

/// A running device: the proxy and the init it serves.
pub(super) struct Running {
    pub(super) pid: i32,
    pub(super) proxy: Proxy,
}

/// The running proxy devices, by instance and device.
#[derive(Default)]
pub struct Proxies {
    pub(super) live: Mutex<BTreeMap<String, BTreeMap<String, Running>>>,
}

impl Proxies {
    /// Device names running for `inst`, with their connection counts.
    pub fn running(&self, inst: &str) -> Vec<(String, usize)> {
        self.live
            .lock()
            .expect("proxies lock")
            .get(inst)
            .map(|m| {
                m.iter()
                    .map(|(n, r)| (n.clone(), r.proxy.connections()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
