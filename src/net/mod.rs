//! Host networking for managed bridges and instance NICs, without HTTP and without LXD config
//! keys: netlink (links, addresses, routes), nftables rules through `nft`, the daemon's own
//! DHCPv4 and DNS servers with their lease store, and the host name resolver.
//!
//! - `netlink`: rtnetlink over a `NETLINK_ROUTE` socket of the calling thread's network namespace.
//! - `nft`: bivy's table and per-bridge chains, applied with `nft -f -`, and the check for a
//!   foreign forward chain that drops (Docker's `FORWARD` policy).
//! - `dhcp`: DHCPv4 packets and the per-bridge server.
//! - `dns`: DNS packets and the per-bridge resolver (instance names, forwarding upstream).
//! - `leases`: the lease store shared by both, persisted atomically.
//! - `ra`: IPv6 router advertisements (SLAAC) for a bridge with an IPv6 /64.
//! - `proxy`: proxy devices' listeners and relays, in the daemon's or a container's namespace.
//! - `resolve`: host names to addresses (`/etc/hosts`, then DNS with `dns`'s packets) and the
//!   one TCP connect by name; no glibc NSS.

pub mod dhcp;
pub mod dns;
pub mod leases;
pub mod netlink;
pub mod nft;
pub mod proxy;
pub mod ra;
pub mod resolve;
