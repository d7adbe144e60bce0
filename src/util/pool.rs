//! Threads that stay a while for the next job: the daemon's connection and operation threads.
//! A job handed to an idle thread costs one wakeup; a new thread costs its creation besides
//! (its stack mapped, its TLS set up, about 40 µs more on the 2-core VM), and every request
//! used to make one, every websocket of an exec another. At most [`MAX_IDLE`] threads wait,
//! each for [`IDLE_FOR`] at most, so an idle daemon soon holds none (its idle memory is
//! measured). Only for fire-and-forget jobs that set their own thread-local state: a job
//! finds the thread as the last job left it (its name is set for each job).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Threads left waiting for a job at most; one finishing a job when this many wait ends.
pub const MAX_IDLE: usize = 16;

/// How long a thread waits for its next job before it ends.
pub const IDLE_FOR: Duration = Duration::from_secs(5);

type Job = (&'static str, Box<dyn FnOnce() + Send>);

#[derive(Default)]
struct State {
    /// Jobs handed over, each to a thread counted out of `idle` when it was queued.
    queue: VecDeque<Job>,
    /// Threads waiting that no queued job is promised to.
    idle: usize,
}

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    })
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Run `job` on a waiting thread, or on a new one named `name` (at most 15 bytes shown) when
/// none waits. An error (no thread could be made) drops the job unrun, as
/// `std::thread::Builder::spawn` does.
pub fn spawn(name: &'static str, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    spawn_on(pool(), name, job)
}

fn spawn_on(
    p: &'static Pool,
    name: &'static str,
    job: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    {
        let mut st = p.lock();
        if st.idle > 0 {
            st.idle -= 1;
            st.queue.push_back((name, Box::new(job)));
            p.wake.notify_one();
            return Ok(());
        }
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            job();
            serve(p, name);
        })
        .map(drop)
}

/// The end of a job handed over by [`run`].
pub struct Joinable(Arc<(Mutex<bool>, Condvar)>);

impl Joinable {
    /// Wait until the job has returned (or panicked).
    pub fn join(self) {
        let (done, cv) = &*self.0;
        let mut d = done.lock().unwrap_or_else(|p| p.into_inner());
        while !*d {
            d = cv.wait(d).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// [`spawn`] with a [`Joinable`] to wait for the job's end by, for jobs that a request waits
/// for (an exec's pumps).
pub fn run(name: &'static str, job: impl FnOnce() + Send + 'static) -> std::io::Result<Joinable> {
    struct Mark(Arc<(Mutex<bool>, Condvar)>);
    impl Drop for Mark {
        fn drop(&mut self) {
            let (done, cv) = &*self.0;
            *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
    }
    let end = Arc::new((Mutex::new(false), Condvar::new()));
    let mark = Mark(end.clone());
    spawn(name, move || {
        let _mark = mark;
        job()
    })?;
    Ok(Joinable(end))
}

/// Take and run jobs until none came for [`IDLE_FOR`], or enough threads wait already.
fn serve(p: &'static Pool, mut name: &'static str) {
    loop {
        let (next, job) = {
            let mut st = p.lock();
            if st.idle >= MAX_IDLE {
                return;
            }
            st.idle += 1;
            let deadline = Instant::now() + IDLE_FOR;
            loop {
                // A queued job was promised to a waiting thread when queued: this one is it.
                if let Some(j) = st.queue.pop_front() {
                    break j;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    st.idle -= 1;
                    return;
                }
                st = p
                    .wake
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        if next != name {
            name = next;
            set_name(name);
        }
        job();
    }
}

/// The calling thread's name, as the kernel shows it (`comm`, 15 bytes).
fn set_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    if let Ok(c) = std::ffi::CStr::from_bytes_until_nul(&buf) {
        let _ = nix::sys::prctl::set_name(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn private_pool() -> &'static Pool {
        Box::leak(Box::new(Pool {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }))
    }

    fn thread_id() -> i32 {
        nix::unistd::gettid().as_raw()
    }

    fn wait_idle(p: &Pool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.lock().idle < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.lock().idle, n, "threads waiting");
    }

    #[test]
    fn a_waiting_thread_takes_the_next_job() {
        let p = private_pool();
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        spawn_on(p, "pool-test", move || t.send(thread_id()).unwrap()).unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        wait_idle(p, 1);
        let t = tx.clone();
        spawn_on(p, "pool-test2", move || {
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            t.send(thread_id()).unwrap();
            assert_eq!(comm.trim(), "pool-test2");
        })
        .unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, second, "the waiting thread ran it");
        wait_idle(p, 1);
    }

    #[test]
    fn many_at_once_all_run_and_few_stay() {
        let p = private_pool();
        let (tx, rx) = mpsc::channel();
        for i in 0..40u64 {
            let t = tx.clone();
            spawn_on(p, "pool-many", move || {
                std::thread::sleep(Duration::from_millis(5));
                t.send(i).unwrap()
            })
            .unwrap();
        }
        let mut got: Vec<u64> = (0..40)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..40).collect::<Vec<_>>());
        // Once they are done, no more than MAX_IDLE wait.
        std::thread::sleep(Duration::from_millis(100));
        let st = p.lock();
        assert!(
            st.idle <= MAX_IDLE && st.queue.is_empty(),
            "{} idle",
            st.idle
        );
    }

    #[test]
    fn run_is_joined_after_the_job_even_when_it_panics() {
        let (tx, rx) = mpsc::channel();
        let j = run("pool-test", move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(1).unwrap();
        })
        .unwrap();
        j.join();
        assert_eq!(rx.try_recv(), Ok(1), "joined before the job ended");
        let j = run("pool-test", || panic!("a job's panic")).unwrap();
        j.join();
    }
}
