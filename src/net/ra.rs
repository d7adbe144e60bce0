//! IPv6 router advertisements for a managed bridge with `ipv6.address`, so that containers
//! configure an address on its /64 by SLAAC (what LXD's dnsmasq does with `--enable-ra` and
//! `ra-stateless`). One thread per bridge, on a raw ICMPv6 socket bound to that bridge only:
//! an advertisement at start and every [`INTERVAL`], and one in answer to each router
//! solicitation. Nothing else is sent, and only on the bridge.
//!
//! The advertisement carries the prefix (on-link and autonomous), the bridge's MAC, the MTU when
//! set, and the bridge as the default router. The kernel fills in the ICMPv6 checksum (it always
//! does for raw ICMPv6 sockets) and picks the bridge's link-local address as the source; until
//! the bridge has one (no port yet, so no carrier), sends fail and are retried at the next tick.

use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{self as rnet, ipproto, sockopt, AddressFamily, SocketType};

/// Between unsolicited advertisements (RFC 4861 allows 4 to 1800 s; short, so a container that
/// missed one is not left waiting long).
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How long hosts may use us as their default router, seconds.
const ROUTER_LIFETIME: u16 = 1800;
const VALID_LIFETIME: u32 = 86400;
const PREFERRED_LIFETIME: u32 = 14400;

const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// What a bridge advertises.
#[derive(Debug, Clone, PartialEq)]
pub struct RaConfig {
    pub ifname: String,
    /// Any address in the /64 (the bridge's own): the prefix is its first 64 bits.
    pub prefix: Ipv6Addr,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
}

/// The advertisement's ICMPv6 message (checksum left 0 for the kernel).
pub fn build(cfg: &RaConfig) -> Vec<u8> {
    let mut m = vec![ND_ROUTER_ADVERT, 0, 0, 0, 64, 0];
    m.extend_from_slice(&ROUTER_LIFETIME.to_be_bytes());
    m.extend_from_slice(&[0; 8]); // reachable time, retrans timer: unspecified
                                  // Source link-layer address.
    m.extend_from_slice(&[1, 1]);
    m.extend_from_slice(&cfg.mac);
    if let Some(mtu) = cfg.mtu {
        m.extend_from_slice(&[5, 1, 0, 0]);
        m.extend_from_slice(&mtu.to_be_bytes());
    }
    // Prefix information: /64, on-link (L) and autonomous (A).
    let seg = cfg.prefix.octets();
    let mut prefix = [0u8; 16];
    prefix[..8].copy_from_slice(&seg[..8]);
    m.extend_from_slice(&[3, 4, 64, 0xc0]);
    m.extend_from_slice(&VALID_LIFETIME.to_be_bytes());
    m.extend_from_slice(&PREFERRED_LIFETIME.to_be_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&prefix);
    m
}

/// Whether `pkt` (an ICMPv6 message as a raw socket returns it) is a router solicitation.
pub fn is_solicitation(pkt: &[u8]) -> bool {
    pkt.len() >= 8 && pkt[0] == ND_ROUTER_SOLICIT && pkt[1] == 0
}

fn open(ifname: &str) -> io::Result<(OwnedFd, u32)> {
    let named = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("router advertisements on {ifname}: {what}: {e}"),
        )
    };
    let index =
        nix::net::if_::if_nametoindex(ifname).map_err(|e| named("interface index", e.into()))?;
    let fd = rnet::socket(AddressFamily::INET6, SocketType::RAW, Some(ipproto::ICMPV6))
        .map_err(|e| named("raw ICMPv6 socket", e.into()))?;
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )
    .map_err(|e| named("SO_BINDTODEVICE", e.into()))?;
    // Neighbour discovery demands hop limit 255 (receivers drop anything else).
    sockopt::set_ipv6_multicast_hops(&fd, 255).map_err(|e| named("multicast hops", e.into()))?;
    sockopt::set_ipv6_unicast_hops(&fd, Some(255)).map_err(|e| named("unicast hops", e.into()))?;
    sockopt::set_ipv6_multicast_loop(&fd, false).map_err(|e| named("multicast loop", e.into()))?;
    sockopt::set_ipv6_add_membership(&fd, &ALL_ROUTERS, index)
        .map_err(|e| named("join ff02::2", e.into()))?;
    sockopt::set_socket_timeout(
        &fd,
        sockopt::Timeout::Recv,
        Some(Duration::from_millis(500)),
    )
    .map_err(|e| named("receive timeout", e.into()))?;
    Ok((fd, index))
}

/// The advertiser of one bridge; stops when dropped.
pub struct RaServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RaServer {
    /// Open the bridge's socket (errors name the step) and start advertising.
    pub fn start(cfg: RaConfig) -> io::Result<RaServer> {
        let (fd, index) = open(&cfg.ifname)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("ra-{}", cfg.ifname))
            .spawn(move || run(fd, index, &cfg, &flag))?;
        Ok(RaServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RaServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(fd: OwnedFd, index: u32, cfg: &RaConfig, stop: &AtomicBool) {
    let msg = build(cfg);
    let dst = SocketAddrV6::new(ALL_NODES, 0, 0, index);
    let mut next = Instant::now();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            // Fails until the bridge has a link-local address; the next tick retries.
            let _ = rnet::sendto(fd.as_fd(), &msg, rnet::SendFlags::empty(), &dst);
            next = Instant::now() + INTERVAL;
        }
        match rnet::recvfrom(fd.as_fd(), &mut buf, rnet::RecvFlags::empty()) {
            Ok((n, _, _)) if is_solicitation(&buf[..n.min(buf.len())]) => {
                let _ = rnet::sendto(fd.as_fd(), &msg, rnet::SendFlags::empty(), &dst);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_layout() {
        let cfg = RaConfig {
            ifname: "br0".into(),
            prefix: "fd42:1:2:3::1".parse().unwrap(),
            mac: [0, 0x16, 0x3e, 1, 2, 3],
            mtu: Some(1400),
        };
        let m = build(&cfg);
        assert_eq!(m[0], 134);
        assert_eq!(&m[6..8], &1800u16.to_be_bytes());
        // Options after the 16-byte header: SLLA (8), MTU (8), prefix info (32).
        assert_eq!(m.len(), 16 + 8 + 8 + 32);
        assert_eq!(&m[16..24], &[1, 1, 0, 0x16, 0x3e, 1, 2, 3]);
        assert_eq!(&m[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0x78]);
        let p = &m[32..];
        assert_eq!(&p[..4], &[3, 4, 64, 0xc0]);
        let prefix: [u8; 16] = p[16..32].try_into().unwrap();
        assert_eq!(
            Ipv6Addr::from(prefix),
            "fd42:1:2:3::".parse::<Ipv6Addr>().unwrap()
        );
        let no_mtu = build(&RaConfig { mtu: None, ..cfg });
        assert_eq!(no_mtu.len(), 16 + 8 + 32);
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
    }
}
