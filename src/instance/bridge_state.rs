//! The managed bridges the daemon serves ([`Bridges`], in [`super::Ctx`]): each one's parsed
//! config, lease store and running DHCP, DNS and router-advertisement servers ([`Live`]).
//! Bringing a bridge up and down is `bridges`'; this file imports nothing that uses `Ctx`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::network_config::BridgeConfig;
use crate::net::dhcp::DhcpServer;
use crate::net::dns::DnsServer;
use crate::net::leases::LeaseStore;

/// A managed bridge the daemon serves.
pub struct Live {
    pub config: BridgeConfig,
    pub store: Arc<Mutex<LeaseStore>>,
    pub(super) dhcp: Option<DhcpServer>,
    pub(super) dns: Option<DnsServer>,
    pub(super) ra: Option<crate::net::ra::RaServer>,
    /// Why the DNS server is not running, when it should be (port 53 taken).
    pub dns_error: Option<String>,
}

/// The bridges the daemon serves, by network name.
#[derive(Default)]
pub struct Bridges(pub(super) Mutex<BTreeMap<String, Live>>);

impl Bridges {
    /// The lease store of bridge `name`, if it is up.
    pub fn store(&self, name: &str) -> Option<Arc<Mutex<LeaseStore>>> {
        self.0
            .lock()
            .expect("bridges lock")
            .get(name)
            .map(|l| Arc::clone(&l.store))
    }

    /// Why bridge `name`'s DNS server is not running, if it is not.
    pub fn dns_error(&self, name: &str) -> Option<String> {
        self.0
            .lock()
            .expect("bridges lock")
            .get(name)
            .and_then(|l| l.dns_error.clone())
    }
}
