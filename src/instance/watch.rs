//! One thread follows every running container's monitor: each monitor's pidfd is in one epoll
//! set, and when a monitor ends (its container stopped, from inside or by request) the
//! instance's callback runs on a short thread of its own, so a slow one (a restart after a
//! reboot, an ephemeral instance's delete) holds up no other. The daemon holds one fd per
//! running container and no thread (it held a thread each, 1,000 with 1,000 running).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// What runs when a followed monitor ends.
pub type OnExit = Box<dyn FnOnce() + Send>;

/// The next epoll token, and by token the followed pidfd (open while followed) and callback.
type Followed = (u64, HashMap<u64, (OwnedFd, OnExit)>);

struct Watcher {
    epoll: Epoll,
    followed: Mutex<Followed>,
}

fn watcher() -> std::io::Result<&'static Watcher> {
    static W: OnceLock<Watcher> = OnceLock::new();
    if let Some(w) = W.get() {
        return Ok(w);
    }
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let w = Watcher {
        epoll,
        followed: Mutex::new((0, HashMap::new())),
    };
    // Two callers racing here: one set wins, the other's (never used) is dropped.
    let mut fresh = false;
    let w = W.get_or_init(|| {
        fresh = true;
        w
    });
    if fresh {
        std::thread::Builder::new()
            .name("monitors".into())
            .spawn(move || run(w))?;
    }
    Ok(w)
}

fn run(w: &'static Watcher) {
    let mut events = [EpollEvent::empty(); 32];
    loop {
        let n = match w.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("bivy: following the containers' monitors failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let entry = w.followed.lock().expect("watch lock").1.remove(&ev.data());
            let Some((fd, on_exit)) = entry else { continue };
            let _ = w.epoll.delete(&fd);
            drop(fd);
            if let Err(e) = std::thread::Builder::new()
                .name("stopped".into())
                .spawn(on_exit)
            {
                eprintln!("bivy: a container stopped, but its follow-up could not start: {e}");
            }
        }
        // The ended monitors' (and their inits') pinned pidfds go now, not at the next sweep.
        crate::runtime::release_ended();
    }
}

/// Run `on_exit` once the process behind `pidfd` has ended (at once if it already has).
pub fn follow(pidfd: OwnedFd, on_exit: OnExit) -> std::io::Result<()> {
    let w = watcher()?;
    let mut f = w.followed.lock().expect("watch lock");
    let token = f.0;
    f.0 += 1;
    // Registered under the lock: the thread cannot see the event before the entry exists.
    w.epoll
        .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
    f.1.insert(token, (pidfd, on_exit));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pidfd_of(child: &std::process::Child) -> OwnedFd {
        crate::sys::pidfd_open(child.id() as i32).expect("pidfd")
    }

    #[test]
    fn each_callback_runs_once_when_its_process_ends() {
        let (tx, rx) = mpsc::channel();
        let mut a = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let mut b = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        for (name, c) in [("a", &a), ("b", &b)] {
            let tx = tx.clone();
            follow(pidfd_of(c), Box::new(move || tx.send(name).unwrap())).unwrap();
        }
        // Nothing has ended yet.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        b.kill().unwrap();
        b.wait().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("b"));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        a.kill().unwrap();
        a.wait().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("a"));
        // A process already gone when followed: at once.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_of(&c);
        c.wait().unwrap();
        follow(fd, Box::new(move || tx.send("c").unwrap())).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("c"));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
