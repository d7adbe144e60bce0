//! Typed messages over SOCK_SEQPACKET socketpairs between the runtime's processes (start() and
//! the monitor, the monitor and the container child, exec() and the exec helper), optionally
//! carrying one fd (SCM_RIGHTS). A closed peer (EOF) means "the other side exec'd or died".

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
    /// exec() to the exec helper: the request (JSON), kept off the command line because the
    /// environment may hold secrets and /proc/PID/cmdline is world-readable.
    Request(String),
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
    let data = m.encode();
    let iov = [IoSlice::new(&data)];
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => vec![],
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(|e| Error(format!("send runtime message: {e}")))
}

/// The next message and the fd it carried, or None at EOF.
pub fn recv(sock: &OwnedFd) -> Result<Option<(Msg, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
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
        let mut fd = None;
        for c in r
            .cmsgs()
            .map_err(|e| Error(format!("receive runtime message: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(v) = c {
                for f in v {
                    let o =
                        sys::own_inherited_fd(f).map_err(|e| Error(format!("received fd: {e}")))?;
                    fd.get_or_insert(o);
                }
            }
        }
        let n = r.bytes;
        if n == 0 {
            return Ok(None);
        }
        return Ok(Some((Msg::decode(&buf[..n])?, fd)));
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
        drop(a);
        assert!(recv(&b).unwrap().is_none(), "EOF after the peer closed");
        assert!(Msg::decode(b"Sx").is_err());
    }
}
