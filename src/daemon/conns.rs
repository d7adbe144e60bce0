//! Connection limits: how many connections the daemon serves at once, in all and per peer, and
//! the clear refusal past them.
//!
//! A peer is the client's uid on the unix socket, its IP address on the HTTPS listener. Every
//! connection counts, event streams included, so one user in the socket's group (or one
//! address) cannot take every slot: each non-root peer has [`PER_PEER`] of them, all non-root peers
//! together leave [`ROOT_RESERVE`] slots that only root can use, and root's CLI keeps working
//! under any other user's flood. The table holds one entry per peer with a connection open, so it
//! is bounded by [`MAX_CONNECTIONS`].
//!
//! A refused unix client gets `503` in LXD's error envelope, not a dropped connection (a refused
//! network client is closed before the TLS handshake): one refusal
//! thread reads the request head first (so the client's write does not fail on a closed socket),
//! bounded in time and in how many wait, then answers; past that bound the answer comes at once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The connection an accept loop got, or `None` after a failed accept. Out of descriptors (or
/// memory), the pending connection stays queued and the listener readable, so this waits a
/// little instead of letting the loop spin on it.
pub fn accepted<S>(conn: std::io::Result<S>) -> Option<S> {
    match conn {
        Ok(s) => Some(s),
        Err(e) => {
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
            ) {
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        }
    }
}

/// Connections served at once, in all.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections one non-root peer may hold at once.
pub const PER_PEER: usize = 128;
/// Slots only root may take.
pub const ROOT_RESERVE: usize = 64;
/// Refused connections waiting for their request at once; past it a refusal is answered at once.
const MAX_PENDING: usize = 256;
/// Longest a refusal waits for the request it answers.
const REFUSE_READ: Duration = Duration::from_millis(500);

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Uid(u32),
    /// A network client, by address.
    Addr(std::net::IpAddr),
}

impl Peer {
    /// The peer of a unix socket connection (its uid, from SO_PEERCRED).
    pub fn of_unix(s: &UnixStream) -> std::io::Result<Peer> {
        let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(std::io::Error::from)?;
        Ok(Peer::Uid(cred.uid()))
    }

    fn is_root(self) -> bool {
        self == Peer::Uid(0)
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The peer holds its share already.
    PeerFull(usize),
    /// The daemon serves all it may.
    Full(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::PeerFull(n) => write!(
                f,
                "Too many connections from this user ({n} open); close some and retry"
            ),
            Refused::Full(n) => write!(
                f,
                "Too many connections to the daemon ({n} open); retry later"
            ),
        }
    }
}

/// The open connections, in all and per peer.
#[derive(Default)]
pub struct Limits {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<Peer, usize>,
}

/// One admitted connection: its slot is given back on drop.
pub struct Slot {
    limits: Arc<Limits>,
    peer: Peer,
    /// Whether it counts in its peer's share (until [`Slot::leave_peer_share`]).
    shared: bool,
}

impl Slot {
    /// Count this connection in the total only, no longer in its peer's share: a network
    /// client that showed a trusted certificate (many of them may share one address: a host
    /// running parallel execs, clients behind one NAT).
    pub fn leave_peer_share(&mut self) {
        if std::mem::take(&mut self.shared) {
            self.limits
                .inner
                .lock()
                .expect("limits lock")
                .leave(self.peer);
        }
    }
}

impl Counts {
    fn leave(&mut self, peer: Peer) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.inner.lock().expect("limits lock");
        c.total -= 1;
        if self.shared {
            c.leave(self.peer);
        }
    }
}

impl Limits {
    /// Take a slot for a connection from `peer`, or say why not.
    pub fn admit(self: &Arc<Self>, peer: Peer) -> Result<Slot, Refused> {
        self.take(peer, false)
    }

    /// [`Limits::admit`] past the total, for a connection that takes the place of one just
    /// closed (its slot is given back once its thread sees it closed); the peer's own share
    /// still holds.
    pub fn admit_over(self: &Arc<Self>, peer: Peer) -> Result<Slot, Refused> {
        self.take(peer, true)
    }

    fn take(self: &Arc<Self>, peer: Peer, over: bool) -> Result<Slot, Refused> {
        let mut c = self.inner.lock().expect("limits lock");
        let mine = c.per_peer.get(&peer).copied().unwrap_or(0);
        if !peer.is_root() && mine >= PER_PEER {
            return Err(Refused::PeerFull(mine));
        }
        let cap = if peer.is_root() {
            MAX_CONNECTIONS
        } else {
            MAX_CONNECTIONS - ROOT_RESERVE
        };
        if !over && c.total >= cap {
            return Err(Refused::Full(c.total));
        }
        c.total += 1;
        *c.per_peer.entry(peer).or_insert(0) += 1;
        Ok(Slot {
            limits: self.clone(),
            peer,
            shared: true,
        })
    }

    /// Connections open now (in all).
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.inner.lock().expect("limits lock").total
    }
}

/// Answers refused connections with a 503 (see the module doc): one thread that waits (with
/// poll) for each refused client's request head, up to [`REFUSE_READ`], then answers. Past
/// [`MAX_PENDING`] waiting, a refused client is answered at once, without its request read.
pub struct Refuser {
    queue: Sender<(UnixStream, String)>,
    /// Refusals handed to the thread and not answered yet.
    waiting: Arc<AtomicUsize>,
}

/// A refused connection waiting for its request head.
struct Pending {
    s: UnixStream,
    why: String,
    until: Instant,
    /// The last bytes read, to find the end of the head across reads.
    tail: Vec<u8>,
}

impl Refuser {
    /// Start the refusal thread.
    pub fn start() -> std::io::Result<Refuser> {
        let (tx, rx) = channel::<(UnixStream, String)>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let w = waiting.clone();
        std::thread::Builder::new()
            .name("refuse".into())
            .stack_size(64 * 1024)
            .spawn(move || refuse_loop(&rx, &w))?;
        Ok(Refuser { queue: tx, waiting })
    }

    /// Refuse `s` with a 503: after reading its request when fewer than [`MAX_PENDING`] wait,
    /// at once otherwise.
    pub fn refuse(&self, s: UnixStream, why: &Refused) {
        if self.waiting.load(Ordering::Relaxed) >= MAX_PENDING {
            answer_503(s, &why.to_string());
            return;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.queue.send((s, why.to_string())) {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            let (s, why) = e.0;
            answer_503(s, &why);
        }
    }
}

fn refuse_loop(rx: &Receiver<(UnixStream, String)>, waiting: &AtomicUsize) {
    use std::os::fd::AsFd;
    let mut pending: Vec<Pending> = Vec::new();
    let add = |(s, why): (UnixStream, String), pending: &mut Vec<Pending>| {
        if s.set_nonblocking(true).is_ok() {
            pending.push(Pending {
                s,
                why,
                until: Instant::now() + REFUSE_READ,
                tail: Vec::new(),
            });
        } else {
            waiting.fetch_sub(1, Ordering::Relaxed);
        }
    };
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(p) => add(p, &mut pending),
                Err(_) => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            add(p, &mut pending);
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<nix::poll::PollFd<'_>> = pending
                .iter()
                .map(|p| nix::poll::PollFd::new(p.s.as_fd(), nix::poll::PollFlags::POLLIN))
                .collect();
            // Short, so new refusals are picked up soon.
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u8));
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let now = Instant::now();
        // Backwards: swap_remove only moves an entry already seen.
        for i in (0..pending.len()).rev() {
            let p = &mut pending[i];
            let mut done = now >= p.until;
            if ready.get(i).copied().unwrap_or(false) {
                let mut buf = [0u8; 4096];
                match p.s.read(&mut buf) {
                    Ok(0) => done = true,
                    Ok(n) => {
                        p.tail.extend_from_slice(&buf[..n]);
                        done |= p.tail.windows(4).any(|w| w == b"\r\n\r\n");
                        let keep = p.tail.len().saturating_sub(3);
                        p.tail.drain(..keep);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => done = true,
                }
            }
            if done {
                let p = pending.swap_remove(i);
                answer_503(p.s, &p.why);
                waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Answer 503 in LXD's error envelope, then close.
fn answer_503(mut s: UnixStream, why: &str) {
    let body = super::response::error_body(503, why);
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    // A few hundred bytes fit any socket buffer; a client that reads nothing is not waited for.
    let _ = s.set_nonblocking(true);
    let _ = s.write_all(&out);
    let _ = s.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_taking_a_closed_ones_place_passes_the_total_not_its_share() {
        let l = Arc::new(Limits::default());
        let mut held = Vec::new();
        let mut ip = 1u32;
        while l.open() < MAX_CONNECTIONS - ROOT_RESERVE {
            match l.admit(Peer::Addr(std::net::Ipv4Addr::from(ip).into())) {
                Ok(s) => held.push(s),
                Err(Refused::PeerFull(_)) => ip += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let last = Peer::Addr(std::net::Ipv4Addr::from(ip).into());
        assert!(matches!(l.admit(last), Err(Refused::Full(_))));
        let over = l.admit_over(last).expect("in the place of a closed one");
        assert_eq!(l.open(), MAX_CONNECTIONS - ROOT_RESERVE + 1);
        while l.admit_over(last).map(|s| held.push(s)).is_ok() {}
        assert_eq!(l.admit_over(last).err(), Some(Refused::PeerFull(PER_PEER)));
        drop(over);
        drop(held);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn per_peer_and_root_reserve() {
        let l = Arc::new(Limits::default());
        let user = Peer::Uid(1000);
        let mut held: Vec<Slot> = (0..PER_PEER)
            .map(|_| l.admit(user).expect("slot"))
            .collect();
        assert_eq!(l.admit(user).err(), Some(Refused::PeerFull(PER_PEER)));
        // Other users fill the rest but the root reserve.
        let mut uid = 2000;
        while l.open() < MAX_CONNECTIONS - ROOT_RESERVE {
            match l.admit(Peer::Uid(uid)) {
                Ok(s) => held.push(s),
                Err(Refused::PeerFull(_)) => uid += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(matches!(l.admit(Peer::Uid(99_999)), Err(Refused::Full(_))));
        // Root still gets in, up to the very end.
        let roots: Vec<Slot> = (0..ROOT_RESERVE)
            .map(|_| l.admit(Peer::Uid(0)).expect("root"))
            .collect();
        assert!(matches!(l.admit(Peer::Uid(0)), Err(Refused::Full(_))));
        drop(roots);
        drop(held);
        assert_eq!(l.open(), 0);
        assert!(
            l.inner.lock().unwrap().per_peer.is_empty(),
            "the table is emptied"
        );
    }
}
