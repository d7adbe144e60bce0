//! rtnetlink, our own: links (bridge, dummy, veth, macvlan), their flags, MTU, MAC, master and
//! network namespace, IPv4/IPv6 addresses and routes, over a `NETLINK_ROUTE` socket.
//!
//! Why our own: the message set bivy needs is small (a dozen request shapes), the rtnetlink crates
//! pull in async runtimes or large generated trees, and `ip` is not on every host (and parsing its
//! output is worse). The socket is nix's safe one (`AddressFamily::Netlink`); the only syscall
//! nix lacks (`setsockopt(SOL_NETLINK, NETLINK_EXT_ACK)`) is in `crate::sys`.
//!
//! - A [`Netlink`] talks to the network namespace of the thread that opened it (the socket keeps
//!   that namespace even if used from elsewhere). [`in_netns`] runs a closure on a short-lived
//!   thread that joined another process's network namespace: the calling thread never moves, so
//!   the daemon's invariant "the daemon never changes namespace" holds for every thread that
//!   outlives the call.
//! - Requests carry `NLM_F_ACK`; every reply is matched by sequence number and port id (stale
//!   replies of an earlier request are skipped), dumps are read to `NLMSG_DONE` across as many
//!   datagrams as the kernel sends, each datagram is sized with `MSG_PEEK|MSG_TRUNC` first so a
//!   large one is never cut, and a dump the kernel marks interrupted (`NLM_F_DUMP_INTR`) is
//!   restarted.
//! - Errors name the operation and the link, keep the errno's kind (`EEXIST` is
//!   `AlreadyExists`, `ENODEV`/`ESRCH`/`ENOENT` are `NotFound`) and carry the kernel's extended
//!   ack text (`NETLINK_EXT_ACK`, `NLMSGERR_ATTR_MSG`) when it sent one.
//! - Message building and parsing are pure functions over byte slices ([`MsgBuilder`],
//!   [`parse_messages`], [`parse_attrs`]); a truncated or malformed reply is an `InvalidData`
//!   error, never a panic.
//! - Interface names are checked before anything is sent (1 to 15 bytes, no `/`, no whitespace,
//!   not `.` or `..`, the kernel's own rule in `dev_valid_name`).
//!
//! The files: this one the socket, the public types and the link operations; `wire` the message
//! format (constants, building, parsing); `ip` addresses and routes.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

mod ip;
mod peer;
mod wire;

use wire::*;
pub use wire::{
    parse_addr, parse_attrs, parse_done, parse_error, parse_link, parse_messages, parse_route,
    request_error, MsgBuilder, NlMsg,
};

/// Longest interface name (`IFNAMSIZ` minus the NUL).
pub const IFNAME_MAX: usize = 15;

/// How long a reply may take before the request is an error (the kernel answers at once; this
/// only bounds a wedged socket).
const REPLY_TIMEOUT_SECS: i64 = 30;

// ---- public types ----

/// A target network namespace: a process's (`IFLA_NET_NS_PID`) or an open namespace file
/// (`IFLA_NET_NS_FD`, e.g. `/proc/PID/ns/net` or a bind-mounted one).
#[derive(Debug, Clone, Copy)]
pub enum Netns<'a> {
    Pid(i32),
    Fd(BorrowedFd<'a>),
}

/// What a new link looks like. `netns` creates it directly in that namespace (used for a veth
/// peer, so the container's end never appears on the host under its final name).
#[derive(Debug, Clone)]
pub struct LinkSpec<'a> {
    pub name: &'a str,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub netns: Option<Netns<'a>>,
}

impl<'a> LinkSpec<'a> {
    /// A link named `name`, kernel-chosen MAC and MTU, down, in the current namespace.
    pub fn new(name: &'a str) -> LinkSpec<'a> {
        LinkSpec {
            name,
            mac: None,
            mtu: None,
            up: false,
            netns: None,
        }
    }
}

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` ("bridge", "veth", ...) or "" for links without one (physical, lo).
    pub kind: String,
    pub master: Option<u32>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// Operational state is `UP` (carrier and lower layers up).
    pub oper_up: bool,
    pub flags: u32,
    /// Its counters (`IFLA_STATS64`), when the kernel sent them.
    pub stats: Option<LinkStats>,
}

/// A link's counters, as `/proc/net/dev` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    /// Dropped and missed.
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// One address of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    /// `RT_SCOPE_*`: 0 universe, 253 link, 254 host.
    pub scope: u8,
}

/// One route, of any table and either family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub table: u32,
}

/// `IFLA_MACVLAN_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
}

impl MacvlanMode {
    fn value(self) -> u32 {
        match self {
            MacvlanMode::Private => 1,
            MacvlanMode::Vepa => 2,
            MacvlanMode::Bridge => 4,
            MacvlanMode::Passthru => 8,
        }
    }
}

// ---- names and MACs ----

/// The kernel's rule for interface names (`dev_valid_name`): 1 to 15 bytes, no `/`, no
/// whitespace, not `.` or `..`. Also refuses `:` (alias syntax) and NUL.
pub fn check_name(name: &str) -> io::Result<()> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAME_MAX {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not allowed")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}: {why}"),
        )),
        None => Ok(()),
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case) to bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Bytes to `aa:bb:cc:dd:ee:ff` (lower case, as `ip` and LXD print it).
pub fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

// ---- the socket ----

/// The data messages of a reply: (type, payload).
type Reply = Vec<(u16, Vec<u8>)>;

/// A `NETLINK_ROUTE` socket of the opening thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    pid: u32,
    seq: AtomicU32,
}

impl Netlink {
    /// Opens a socket bound to a kernel-chosen port, connected to the kernel (no other sender
    /// can reach it), with extended acks requested.
    pub fn open() -> io::Result<Netlink> {
        let e = |op: &str, err: nix::Error| {
            io::Error::new(io::Error::from(err).kind(), format!("netlink: {op}: {err}"))
        };
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|x| e("socket(NETLINK_ROUTE)", x))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|x| e("bind", x))?;
        socket::connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|x| e("connect", x))?;
        let addr: NetlinkAddr =
            socket::getsockname(fd.as_raw_fd()).map_err(|x| e("getsockname", x))?;
        // Extended acks are a nicety (kernels since 4.12): without them errors lack the text.
        let _ = crate::sys::set_sockopt_int(fd.as_fd(), SOL_NETLINK, NETLINK_EXT_ACK, 1);
        socket::setsockopt(
            &fd,
            socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(REPLY_TIMEOUT_SECS, 0),
        )
        .map_err(|x| e("SO_RCVTIMEO", x))?;
        Ok(Netlink {
            fd,
            pid: addr.pid(),
            seq: AtomicU32::new(1),
        })
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Receives one whole datagram, however large.
    /// One datagram into `buf`, in one receive: its whole size when it did not fit (then
    /// `buf` holds only its start; the caller grows `buf` and asks again).
    fn recv_datagram(&self, buf: &mut [u8], what: &str) -> io::Result<usize> {
        loop {
            match socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC) {
                Err(nix::Error::EINTR) => continue,
                Err(err) => {
                    let err = io::Error::from(err);
                    let text = if err.kind() == io::ErrorKind::WouldBlock {
                        format!("{what}: no reply from the kernel in {REPLY_TIMEOUT_SECS}s")
                    } else {
                        format!("{what}: receiving the reply: {err}")
                    };
                    return Err(io::Error::new(err.kind(), text));
                }
                Ok(n) => return Ok(n),
            }
        }
    }

    /// Sends `b` and collects the payloads of the reply's data messages until the ack, the
    /// error or `NLMSG_DONE`. `Ok(None)`: a dump the kernel marked interrupted (retry).
    fn exchange(&self, b: MsgBuilder, what: &str) -> io::Result<Option<Reply>> {
        let seq = self.next_seq();
        let msg = b.finish(seq, self.pid);
        loop {
            match socket::send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()) {
                Err(nix::Error::EINTR) => continue,
                Err(err) => {
                    let err = io::Error::from(err);
                    return Err(io::Error::new(
                        err.kind(),
                        format!("{what}: sending the request: {err}"),
                    ));
                }
                Ok(_) => break,
            }
        }
        // The receive buffer, one per thread: 64 KiB, twice the most the kernel puts in one
        // dump datagram unless a single message is larger. A datagram that did not fit grows
        // it and makes the reply "interrupted": its whole messages are read, the rest of the
        // reply too, and a dump is asked again.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
        }
        BUF.with_borrow_mut(|buf| self.collect(seq, buf, what))
    }

    /// The reply to request `seq` (see [`Netlink::exchange`]).
    fn collect(&self, seq: u32, buf: &mut Vec<u8>, what: &str) -> io::Result<Option<Reply>> {
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let size = self.recv_datagram(buf, what)?;
            let got = if size > buf.len() {
                interrupted = true;
                let n = whole_messages(buf).len();
                buf.resize(size, 0);
                n
            } else {
                size
            };
            for m in parse_messages(&buf[..got]).map_err(|x| annotate(what, x))? {
                if m.seq != seq || m.pid != self.pid {
                    continue; // a late reply to an earlier request
                }
                if m.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.ty {
                    NLMSG_NOOP => {}
                    NLMSG_OVERRUN => {
                        return Err(io::Error::other(format!("{what}: netlink overrun")));
                    }
                    NLMSG_ERROR | NLMSG_DONE => {
                        // DONE carries an int error too (0, or negative when the dump failed).
                        let (errno, ext) = if m.ty == NLMSG_DONE {
                            parse_done(m.flags, m.payload)
                        } else {
                            parse_error(m.flags, m.payload)
                        }
                        .map_err(|x| annotate(what, x))?;
                        if errno != 0 {
                            return Err(request_error(what, errno, ext.as_deref()));
                        }
                        return Ok(if interrupted { None } else { Some(out) });
                    }
                    // A single reply to a non-dump request is followed by the ack.
                    ty => out.push((ty, m.payload.to_vec())),
                }
            }
        }
    }

    /// A request that is answered by an ack (or an error).
    fn request(&self, b: MsgBuilder, what: &str) -> io::Result<()> {
        self.exchange(b, what).map(|_| ())
    }

    /// A dump: every data message of type `ty` in the reply, retried when interrupted.
    fn dump(&self, make: impl Fn() -> MsgBuilder, ty: u16, what: &str) -> io::Result<Vec<Vec<u8>>> {
        for _ in 0..10 {
            if let Some(msgs) = self.exchange(make(), what)? {
                return Ok(msgs
                    .into_iter()
                    .filter(|(t, _)| *t == ty)
                    .map(|(_, p)| p)
                    .collect());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!("{what}: the dump kept being interrupted by concurrent changes"),
        ))
    }

    // ---- links ----

    /// Every link of the namespace.
    pub fn links(&self) -> io::Result<Vec<Link>> {
        let make = || {
            let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_DUMP);
            b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
            b
        };
        self.dump(make, RTM_NEWLINK, "netlink: list links")?
            .iter()
            .map(|p| parse_link(p))
            .collect()
    }

    /// The link named `name`, `None` when there is none.
    pub fn link(&self, name: &str) -> io::Result<Option<Link>> {
        check_name(name)?;
        let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        b.attr_str(IFLA_IFNAME, name);
        match self.exchange(b, &format!("netlink: get link {name}")) {
            Ok(msgs) => {
                let msgs = msgs.unwrap_or_default();
                match msgs.iter().find(|(t, _)| *t == RTM_NEWLINK) {
                    Some((_, p)) => parse_link(p).map(Some),
                    None => Ok(None),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn index(&self, name: &str, what: &str) -> io::Result<u32> {
        match self.link(name)? {
            Some(l) => Ok(l.index),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{what}: no link named {name}"),
            )),
        }
    }

    fn create(&self, spec: &LinkSpec, kind: &str, b: MsgBuilder) -> io::Result<()> {
        check_name(spec.name)?;
        self.request(b, &format!("netlink: create {kind} {}", spec.name))
    }

    /// A bridge (`kind` "bridge").
    pub fn create_bridge(&self, spec: &LinkSpec) -> io::Result<()> {
        self.create(
            spec,
            "bridge",
            newlink_msg(spec, "bridge", None, InfoData::None),
        )
    }

    /// A dummy link (`CONFIG_DUMMY`; `Unsupported` on kernels without it).
    pub fn create_dummy(&self, spec: &LinkSpec) -> io::Result<()> {
        self.create(
            spec,
            "dummy",
            newlink_msg(spec, "dummy", None, InfoData::None),
        )
    }

    /// A veth pair. The peer may carry `netns`: it is then created directly in that namespace
    /// with its name, MAC and MTU (never visible here under any name), and set up there
    /// afterwards when `peer.up` (the kernel cannot open a veth end before it is paired). If
    /// that last step fails the pair is deleted.
    pub fn create_veth(&self, host: &LinkSpec, peer: &LinkSpec) -> io::Result<()> {
        check_name(peer.name)?;
        self.create(
            host,
            "veth",
            newlink_msg(host, "veth", None, InfoData::VethPeer(peer)),
        )?;
        if !peer.up {
            return Ok(());
        }
        let name = peer.name.to_owned();
        let set_up = move || Netlink::open()?.set_up(&name, true);
        let r = match peer.netns {
            None => self.set_up(peer.name, true),
            Some(Netns::Pid(pid)) => in_netns(pid, set_up),
            Some(Netns::Fd(fd)) => fd
                .try_clone_to_owned()
                .and_then(|fd| in_netns_fd(fd, set_up)),
        };
        if let Err(e) = r {
            let _ = self.delete_link(host.name);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "netlink: create veth {}: bring peer {} up: {e}",
                    host.name, peer.name
                ),
            ));
        }
        Ok(())
    }

    /// A macvlan on `parent` (a link of this namespace).
    pub fn create_macvlan(
        &self,
        spec: &LinkSpec,
        parent: &str,
        mode: MacvlanMode,
    ) -> io::Result<()> {
        check_name(spec.name)?;
        let what = format!("netlink: create macvlan {} on {parent}", spec.name);
        check_name(parent)?;
        let parent = self.index(parent, &what)?;
        self.request(
            newlink_msg(spec, "macvlan", Some(parent), InfoData::Macvlan(mode)),
            &what,
        )
    }

    /// `RTM_NEWLINK` without create flags on an existing link, found by name.
    fn set_by_name(
        &self,
        name: &str,
        what: &str,
        flags: (u32, u32),
        attrs: impl FnOnce(&mut MsgBuilder),
    ) -> io::Result<()> {
        check_name(name)?;
        let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, 0, flags.0, flags.1));
        b.attr_str(IFLA_IFNAME, name);
        attrs(&mut b);
        self.request(b, what)
    }

    /// Enslaves `name` to the bridge `master`, or frees it (`None`).
    pub fn set_master(&self, name: &str, master: Option<&str>) -> io::Result<()> {
        let what = match master {
            Some(m) => format!("netlink: set master of {name} to {m}"),
            None => format!("netlink: release {name} from its master"),
        };
        let idx = match master {
            Some(m) => {
                check_name(m)?;
                self.index(m, &what)?
            }
            None => 0,
        };
        self.set_by_name(name, &what, (0, 0), |b| b.attr_u32(IFLA_MASTER, idx))
    }

    pub fn set_up(&self, name: &str, up: bool) -> io::Result<()> {
        let what = format!("netlink: set {name} {}", if up { "up" } else { "down" });
        let flags = if up { IFF_UP } else { 0 };
        self.set_by_name(name, &what, (flags, IFF_UP), |_| {})
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> io::Result<()> {
        let what = format!("netlink: set mtu of {name} to {mtu}");
        self.set_by_name(name, &what, (0, 0), |b| b.attr_u32(IFLA_MTU, mtu))
    }

    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let what = format!("netlink: set address of {name} to {}", format_mac(mac));
        self.set_by_name(name, &what, (0, 0), |b| b.attr(IFLA_ADDRESS, &mac))
    }

    /// Renames a link. Kernels before 6.2 refuse while it is up (`EBUSY`, `ResourceBusy`): bring it
    /// down first.
    pub fn rename(&self, name: &str, new: &str) -> io::Result<()> {
        let what = format!("netlink: rename {name} to {new}");
        check_name(new)?;
        let idx = self.index(name, &what)?;
        let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, idx, 0, 0));
        b.attr_str(IFLA_IFNAME, new);
        self.request(b, &what)
    }

    /// Moves a link into another network namespace, renamed there to `new_name` if given.
    pub fn move_to(&self, name: &str, ns: Netns, new_name: Option<&str>) -> io::Result<()> {
        let what = match new_name {
            Some(n) => format!("netlink: move {name} to {ns:?} as {n}"),
            None => format!("netlink: move {name} to {ns:?}"),
        };
        if let Some(n) = new_name {
            check_name(n)?;
        }
        let idx = self.index(name, &what)?;
        let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, idx, 0, 0));
        netns_attr(&mut b, &ns);
        if let Some(n) = new_name {
            b.attr_str(IFLA_IFNAME, n);
        }
        self.request(b, &what)
    }

    /// Deletes a link (a veth takes its peer along). A missing link is `NotFound`.
    pub fn delete_link(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let mut b = MsgBuilder::new(RTM_DELLINK, NLM_F_ACK);
        b.push(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        b.attr_str(IFLA_IFNAME, name);
        self.request(b, &format!("netlink: delete link {name}"))
    }
}

fn annotate(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Runs `f` on a short-lived thread that joined the network namespace of `pid` (setns on that
/// thread only; the calling thread never moves). A [`Netlink`] opened inside `f` talks to that
/// namespace; a child process spawned inside `f` starts in it.
pub fn in_netns<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
    in_netns_fd(OwnedFd::from(ns), f)
}

/// [`in_netns`] for an open namespace file (`/proc/PID/ns/net` or a bind mount of one).
pub fn in_netns_fd<T: Send + 'static>(
    ns: OwnedFd,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let handle = std::thread::Builder::new()
        .name("bivy-netns".into())
        .spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("join network namespace: setns: {e}"),
                )
            })?;
            drop(ns);
            f()
        })?;
    handle
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["eth0", "br-x_1", "a", "123456789012345", "veth.1"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "a/b",
            "a b",
            "a\tb",
            "a:1",
            "a\0",
        ] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(e.to_string().contains("invalid interface name"), "{e}");
        }
    }

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("00:16:3E:aa:0b:ff").unwrap();
        assert_eq!(m, [0x00, 0x16, 0x3e, 0xaa, 0x0b, 0xff]);
        assert_eq!(format_mac(m), "00:16:3e:aa:0b:ff");
        for bad in [
            "",
            "00:16:3e:aa:0b",
            "00:16:3e:aa:0b:ff:00",
            "0:16:3e:aa:0b:ff",
            "00:16:3e:aa:0b:fg",
            "00-16-3e-aa-0b-ff",
            "+0:16:3e:aa:0b:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
