//! Typed messages over SOCK_SEQPACKET socketpairs between the runtime's processes (start() and
//! the monitor, the monitor and the container child, exec() and the command's waiter), optionally
//! carrying fds (SCM_RIGHTS). A closed peer (EOF) means "the other side exec'd or died".

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use super::{Error, Result};
use crate::sys;

/// One message.
#[derive(Debug)]
pub enum Msg {
    /// Parent to container child: maps written, cgroup joined, go on (and again once the
    /// monitor has made the host-side mounts).
    Go,
    /// Container child to monitor: in its namespaces (cgroup one included), ready for the
    /// host-side mounts (see `rootfs::host_side`).
    Ready,
    /// A setup step failed (the text names the step and path).
    Err(String),
    /// Monitor to start(): init exec'd (init host pid, monitor pid).
    Started(i32, i32),
    /// Exec child to exec(): the pty master (the fd rides along).
    PtyMaster,
    /// exec() to the command's waiter: the request (JSON; kept off any command line because the
    /// environment may hold secrets and /proc/PID/cmdline is world-readable), with the command's
    /// stdin, stdout and stderr unless it gets a pty.
    Request(String),
    /// Waiter to exec(): the command is exec'd; the waiter's host pid (its pidfd rides along).
    Running(i32),
    /// Waiter to exec(): the command ended with this code (128+N when killed by signal N).
    Exit(i32),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Go => b"G".to_vec(),
            Msg::Ready => b"Y".to_vec(),
            Msg::Err(e) => format!("E{e}").into_bytes(),
            Msg::Started(i, m) => format!("S{i} {m}").into_bytes(),
            Msg::PtyMaster => b"M".to_vec(),
            Msg::Request(r) => format!("R{r}").into_bytes(),
            Msg::Running(p) => format!("P{p}").into_bytes(),
            Msg::Exit(c) => format!("X{c}").into_bytes(),
        }
    }

    fn decode(b: &[u8]) -> Result<Msg> {
        let bad = || {
            Error(format!(
                "bad runtime message {:?}",
                String::from_utf8_lossy(b)
            ))
        };
        let rest = std::str::from_utf8(b.get(1..).unwrap_or_default()).map_err(|_| bad())?;
        match b.first() {
            Some(b'G') => Ok(Msg::Go),
            Some(b'Y') => Ok(Msg::Ready),
            Some(b'E') => Ok(Msg::Err(rest.to_string())),
            Some(b'M') => Ok(Msg::PtyMaster),
            Some(b'R') => Ok(Msg::Request(rest.to_string())),
            Some(b'P') => Ok(Msg::Running(rest.parse().map_err(|_| bad())?)),
            Some(b'X') => Ok(Msg::Exit(rest.parse().map_err(|_| bad())?)),
            Some(b'S') => {
                let (i, m) = rest.split_once(' ').ok_or_else(bad)?;
                Ok(Msg::Started(
                    i.parse().map_err(|_| bad())?,
                    m.parse().map_err(|_| bad())?,
                ))
            }
            _ => Err(bad()),
        }
    }
}

/// A connected pair, both ends close-on-exec.
pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error(format!("socketpair: {e}")))
}

pub fn send(sock: &OwnedFd, m: &Msg, fd: Option<RawFd>) -> Result<()> {
    send_fds(sock, m, fd.as_slice())
}

/// Send `m` with `fds` (at most [`MAX_FDS`]).
pub fn send_fds(sock: &OwnedFd, m: &Msg, fds: &[RawFd]) -> Result<()> {
    let data = m.encode();
    let iov = [IoSlice::new(&data)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(|e| Error(format!("send runtime message: {e}")))
}

/// The most fds one message carries.
pub const MAX_FDS: usize = 3;

/// The next message and the first fd it carried, or None at EOF.
pub fn recv(sock: &OwnedFd) -> Result<Option<(Msg, Option<OwnedFd>)>> {
    Ok(recv_fds(sock)?.map(|(m, fds)| (m, fds.into_iter().next())))
}

/// The next message and the fds it carried (close-on-exec), or None at EOF.
pub fn recv_fds(sock: &OwnedFd) -> Result<Option<(Msg, Vec<OwnedFd>)>> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        // The message's length first (a peek with MSG_TRUNC gives a whole SEQPACKET message's),
        // so that the buffer is no bigger than it: a large one is a fresh mapping to fault in.
        let len = match nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error(format!("receive runtime message: {e}"))),
            Ok(n) => n,
        };
        let mut buf = vec![0u8; len.max(1)];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let r = match r {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error(format!("receive runtime message: {e}"))),
            Ok(r) => r,
        };
        let mut fds = Vec::new();
        for c in r
            .cmsgs()
            .map_err(|e| Error(format!("receive runtime message: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(v) = c {
                for f in v {
                    let o =
                        sys::own_inherited_fd(f).map_err(|e| Error(format!("received fd: {e}")))?;
                    fds.push(o);
                }
            }
        }
        let n = r.bytes;
        if n == 0 {
            return Ok(None);
        }
        return Ok(Some((Msg::decode(&buf[..n])?, fds)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_an_fd() {
        let (a, b) = pair().unwrap();
        send(&a, &Msg::Ready, None).unwrap();
        send(&a, &Msg::Go, None).unwrap();
        send(&a, &Msg::Started(12, 34), None).unwrap();
        send(&a, &Msg::Err("mount proc on /x: EPERM".into()), None).unwrap();
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        send(&a, &Msg::PtyMaster, Some(f.as_raw_fd())).unwrap();
        assert!(matches!(recv(&b).unwrap(), Some((Msg::Ready, None))));
        assert!(matches!(recv(&b).unwrap(), Some((Msg::Go, None))));
        assert!(matches!(
            recv(&b).unwrap(),
            Some((Msg::Started(12, 34), None))
        ));
        assert!(
            matches!(recv(&b).unwrap(), Some((Msg::Err(e), None)) if e == "mount proc on /x: EPERM")
        );
        assert!(matches!(recv(&b).unwrap(), Some((Msg::PtyMaster, Some(_)))));
        let g = std::fs::File::open("/proc/self/status").unwrap();
        let fds = [f.as_raw_fd(), g.as_raw_fd(), f.as_raw_fd()];
        send_fds(&a, &Msg::Request("{}".into()), &fds).unwrap();
        send(&a, &Msg::Running(77), None).unwrap();
        send(&a, &Msg::Exit(-3), None).unwrap();
        match recv_fds(&b).unwrap() {
            Some((Msg::Request(r), got)) => assert_eq!((r.as_str(), got.len()), ("{}", 3)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(recv(&b).unwrap(), Some((Msg::Running(77), None))));
        assert!(matches!(recv(&b).unwrap(), Some((Msg::Exit(-3), None))));
        // A large message arrives whole (the buffer is sized by a peek).
        let big = "x".repeat(150_000);
        send(&a, &Msg::Request(big.clone()), None).unwrap();
        assert!(matches!(recv(&b).unwrap(), Some((Msg::Request(r), None)) if r == big));
        drop(a);
        assert!(recv(&b).unwrap().is_none(), "EOF after the peer closed");
        assert!(Msg::decode(b"Sx").is_err());
    }
}
