//! Background operations: the registry behind `/1.0/operations`, their state machine
//! (Pending -> Running -> Success | Failure | Cancelled), waiting, cancelling and the
//! websockets a websocket-class operation hands out secrets for.
//!
//! A finished operation stays readable for [`KEEP_FINISHED`] so that clients reading the result
//! after the fact (pylxd's `/wait`, exit codes) do not miss it (LXD bug #2797), the newest
//! [`MAX_FINISHED`] of them at most.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use super::events::Events;
use super::Error;
use crate::api::{self, status};
use crate::util::stream::Stream;
use crate::util::time;

/// How long a finished operation stays listed.
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);

/// How many finished operations stay listed at most (the newest): under a steady stream of
/// operations (40 a second in `cargo xtask bench --churn`) a minute's worth held 2,400 of them,
/// about 5 MB of the daemon's heap.
pub const MAX_FINISHED: usize = 256;

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Task,
    Websocket,
    Token,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Task => "task",
            Class::Websocket => "websocket",
            Class::Token => "token",
        }
    }
}

struct Inner {
    status_code: u16,
    updated_at: String,
    metadata: Option<serde_json::Value>,
    err: String,
    finished: Option<Instant>,
    cancel: Option<Box<dyn FnOnce() + Send>>,
    /// secret -> its websocket: each secret admits one connection, once.
    sockets: HashMap<String, Slot>,
    /// Whether a caller without a trusted certificate may connect with a secret (a migration
    /// source's operation, which the target server dials); exec and console operations: no.
    untrusted_sockets: bool,
}

/// One websocket secret's state.
enum Slot {
    /// Not connected yet: the secret is live.
    Waiting,
    /// Connected; the operation has not taken the stream yet.
    Connected(Box<dyn Stream>),
    /// Taken by the operation: the secret is used up.
    Taken,
}

impl Slot {
    fn connected(&self) -> bool {
        matches!(self, Slot::Connected(_))
    }

    /// The stream, if connected (the slot is then used up).
    fn take(&mut self) -> Option<Box<dyn Stream>> {
        match std::mem::replace(self, Slot::Taken) {
            Slot::Connected(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// One operation. Shared between the registry, the thread running it and websocket handlers.
pub struct Op {
    pub id: String,
    pub class: Class,
    pub description: String,
    created_at: String,
    resources: BTreeMap<String, Vec<String>>,
    inner: Mutex<Inner>,
    cond: Condvar,
    events: Arc<Events>,
}

impl Op {
    /// The wire form.
    pub fn to_api(&self) -> api::Operation {
        let i = self.inner.lock().expect("op lock");
        self.render(&i)
    }

    fn render(&self, i: &Inner) -> api::Operation {
        api::Operation {
            id: self.id.clone(),
            class: self.class.name().into(),
            description: self.description.clone(),
            created_at: self.created_at.clone(),
            updated_at: i.updated_at.clone(),
            status: status::name(i.status_code).into(),
            status_code: i.status_code,
            resources: if self.resources.is_empty() {
                None
            } else {
                Some(self.resources.clone())
            },
            metadata: i.metadata.clone(),
            may_cancel: i.cancel.is_some() && i.finished.is_none(),
            err: i.err.clone(),
            location: "none".into(),
        }
    }

    fn changed(&self, i: &mut Inner) {
        i.updated_at = time::now();
        let v = serde_json::to_value(self.render(i)).unwrap_or_default();
        self.cond.notify_all();
        self.events.emit("operation", v);
    }

    /// Merge keys into the metadata object and notify.
    pub fn set_metadata(&self, key: &str, value: serde_json::Value) {
        let mut i = self.inner.lock().expect("op lock");
        match &mut i.metadata {
            Some(serde_json::Value::Object(m)) => {
                m.insert(key.to_string(), value);
            }
            _ => {
                let mut m = serde_json::Map::new();
                m.insert(key.to_string(), value);
                i.metadata = Some(serde_json::Value::Object(m));
            }
        }
        self.changed(&mut i);
    }

    /// Set what cancelling does (makes `may_cancel` true).
    pub fn set_cancel(&self, f: Box<dyn FnOnce() + Send>) {
        self.inner.lock().expect("op lock").cancel = Some(f);
    }

    pub fn set_status(&self, code: u16, err: String) {
        let mut i = self.inner.lock().expect("op lock");
        if i.finished.is_some() {
            return;
        }
        i.status_code = code;
        i.err = err;
        if code >= 200 {
            i.finished = Some(Instant::now());
            i.cancel = None;
        }
        self.changed(&mut i);
    }

    pub fn is_final(&self) -> bool {
        self.inner.lock().expect("op lock").finished.is_some()
    }

    /// Block until final or until `timeout` (None = forever).
    pub fn wait(&self, timeout: Option<Duration>) {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut i = self.inner.lock().expect("op lock");
        while i.finished.is_none() {
            match deadline {
                None => i = self.cond.wait(i).expect("op lock"),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    i = self.cond.wait_timeout(i, d - now).expect("op lock").0;
                }
            }
        }
    }

    /// Cancel: run the cancel hook (if any).
    pub fn cancel(&self) -> Result<(), Error> {
        let f = {
            let mut i = self.inner.lock().expect("op lock");
            if i.finished.is_some() {
                return Err(Error::Invalid("Operation is already done".into()));
            }
            i.cancel.take()
        };
        match f {
            Some(f) => {
                f();
                Ok(())
            }
            None => Err(Error::Invalid("This operation can't be cancelled".into())),
        }
    }

    /// Let callers without a trusted certificate connect with a secret (migration sources).
    pub fn open_to_untrusted(&self) {
        self.inner.lock().expect("op lock").untrusted_sockets = true;
    }

    /// Whether `secret` is the one in this operation's metadata (`metadata.secret`, as image
    /// download tokens and trust tokens hold it), compared in constant time.
    pub fn metadata_secret_is(&self, secret: &str) -> bool {
        let inner = self.inner.lock().expect("op lock");
        inner
            .metadata
            .as_ref()
            .and_then(|m| m.get("secret"))
            .and_then(|s| s.as_str())
            .is_some_and(|mine| crate::util::same_secret(mine, secret))
    }

    /// Whether `secret` is a live websocket secret of this running operation: one that no
    /// connection has used yet (compared in constant time). An untrusted caller's secret counts
    /// only on an operation opened to it.
    pub fn has_secret(&self, secret: &str, trusted: bool) -> bool {
        let i = self.inner.lock().expect("op lock");
        i.finished.is_none()
            && (trusted || i.untrusted_sockets)
            && i.sockets
                .iter()
                .any(|(k, v)| matches!(v, Slot::Waiting) && crate::util::same_secret(k, secret))
    }

    /// Deposit a connected websocket stream for `secret`. Fails if unknown, already used or the
    /// operation has finished.
    pub fn connect(&self, secret: &str, stream: Box<dyn Stream>) -> Result<(), Box<dyn Stream>> {
        let mut i = self.inner.lock().expect("op lock");
        if i.finished.is_some() {
            return Err(stream);
        }
        match i.sockets.get_mut(secret) {
            Some(slot @ Slot::Waiting) => {
                *slot = Slot::Connected(stream);
                self.cond.notify_all();
                Ok(())
            }
            _ => Err(stream),
        }
    }

    /// Wait until the streams for `required` secrets are connected or `timeout` passes; then take
    /// every connected stream (secret -> stream). Err lists nothing: the caller names the failure.
    pub fn take_sockets(
        &self,
        required: &[String],
        timeout: Duration,
    ) -> Option<HashMap<String, Box<dyn Stream>>> {
        let deadline = Instant::now() + timeout;
        let mut i = self.inner.lock().expect("op lock");
        loop {
            if required
                .iter()
                .all(|s| i.sockets.get(s).is_some_and(Slot::connected))
            {
                break;
            }
            let now = Instant::now();
            if now >= deadline || i.finished.is_some() {
                return None;
            }
            i = self
                .cond
                .wait_timeout(i, deadline - now)
                .expect("op lock")
                .0;
        }
        let mut out = HashMap::new();
        for (k, v) in i.sockets.iter_mut() {
            if let Some(s) = v.take() {
                out.insert(k.clone(), s);
            }
        }
        Some(out)
    }

    /// Wait (bounded) for one more socket after the required ones (e.g. the optional control).
    pub fn take_late_socket(&self, secret: &str, timeout: Duration) -> Option<Box<dyn Stream>> {
        let deadline = Instant::now() + timeout;
        let mut i = self.inner.lock().expect("op lock");
        loop {
            if let Some(slot) = i.sockets.get_mut(secret) {
                if let Some(s) = slot.take() {
                    return Some(s);
                }
            } else {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            i = self
                .cond
                .wait_timeout(i, deadline - now)
                .expect("op lock")
                .0;
        }
    }
}

/// The registry. Owned by the daemon; operations end by finishing and ageing out.
pub struct Operations {
    map: Mutex<HashMap<String, Arc<Op>>>,
    events: Arc<Events>,
}

impl Operations {
    pub fn new(events: Arc<Events>) -> Operations {
        Operations {
            map: Mutex::new(HashMap::new()),
            events,
        }
    }

    /// Create an operation (`resources`: e.g. `instances` -> URLs), optionally with websocket
    /// secrets (names -> secret) and initial metadata, and run `body` on its own thread.
    /// The body's error (any type that displays as the message users see) fails the operation.
    pub fn start<E: std::fmt::Display>(
        &self,
        class: Class,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        metadata: Option<serde_json::Value>,
        secrets: Vec<String>,
        body: impl FnOnce(Arc<Op>) -> Result<(), E> + Send + 'static,
    ) -> Arc<Op> {
        let op = self.create(class, description, resources, metadata, secrets);
        let run = op.clone();
        let who = super::events::requestor();
        let job = move || {
            super::events::set_requestor(who);
            run.set_status(status::RUNNING, String::new());
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(run.clone())));
            match res {
                Ok(Ok(())) => run.set_status(status::SUCCESS, String::new()),
                Ok(Err(e)) => run.set_status(status::FAILURE, e.to_string()),
                Err(_) => run.set_status(status::FAILURE, "internal error (panic)".into()),
            }
            // Answered: background work a start left for after its answer may go on.
            crate::runtime::answered();
            super::events::set_requestor(None);
        };
        if let Err(e) = crate::util::pool::spawn("operation", job) {
            // The job (and the operation's handle in it) is gone unrun: the operation fails.
            op.set_status(status::FAILURE, format!("starting its thread: {e}"));
        }
        op
    }

    /// A task operation for work already done synchronously (LXD answers these requests with
    /// an operation that clients wait for).
    pub fn done(
        &self,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        metadata: Option<serde_json::Value>,
    ) -> Arc<Op> {
        self.start(
            Class::Task,
            description,
            resources,
            metadata,
            vec![],
            |_| Ok::<(), Error>(()),
        )
    }

    /// Register an operation without running anything (token operations).
    pub fn create(
        &self,
        class: Class,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        metadata: Option<serde_json::Value>,
        secrets: Vec<String>,
    ) -> Arc<Op> {
        let now = time::now();
        let op = Arc::new(Op {
            id: uuid(),
            class,
            description: description.to_string(),
            created_at: now.clone(),
            resources,
            inner: Mutex::new(Inner {
                status_code: status::PENDING,
                updated_at: now,
                metadata,
                err: String::new(),
                finished: None,
                cancel: None,
                sockets: secrets.into_iter().map(|s| (s, Slot::Waiting)).collect(),
                untrusted_sockets: false,
            }),
            cond: Condvar::new(),
            events: self.events.clone(),
        });
        let v = serde_json::to_value(op.to_api()).unwrap_or_default();
        self.events.emit("operation", v);
        let mut map = self.map.lock().expect("ops lock");
        prune_finished(&mut map);
        map.insert(op.id.clone(), op.clone());
        op
    }

    pub fn get(&self, id: &str) -> Option<Arc<Op>> {
        self.map.lock().expect("ops lock").get(id).cloned()
    }

    /// Every operation, oldest first.
    pub fn list(&self) -> Vec<Arc<Op>> {
        let mut v: Vec<Arc<Op>> = self
            .map
            .lock()
            .expect("ops lock")
            .values()
            .cloned()
            .collect();
        crate::util::sort::sort_by(&mut v, |a, b| a.created_at.cmp(&b.created_at));
        v
    }

    /// Finish a token operation (or remove a finished one).
    pub fn remove(&self, id: &str) {
        self.map.lock().expect("ops lock").remove(id);
    }
}

/// A random UUID v4.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::util::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random 32-byte secret, hex (LXD's `RandomCryptoString`).
pub fn secret() -> String {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    crate::util::hex(&b)
}

/// Drop the finished operations older than [`KEEP_FINISHED`], then the oldest finished ones
/// beyond [`MAX_FINISHED`]; running ones always stay.
fn prune_finished(map: &mut HashMap<String, Arc<Op>>) {
    let finished_at = |o: &Op| o.inner.lock().expect("op lock").finished;
    map.retain(|_, o| finished_at(o).is_none_or(|t| t.elapsed() <= KEEP_FINISHED));
    let mut done: Vec<(Instant, String)> = map
        .iter()
        .filter_map(|(id, o)| finished_at(o).map(|t| (t, id.clone())))
        .collect();
    if done.len() > MAX_FINISHED {
        crate::util::sort::sort(&mut done);
        for (_, id) in &done[..done.len() - MAX_FINISHED] {
            map.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_to_success_and_failure() {
        let ops = Operations::new(Arc::new(Events::default()));
        let ok = ops.start(Class::Task, "t", BTreeMap::new(), None, vec![], |op| {
            op.set_metadata("return", serde_json::json!(3));
            Ok::<(), Error>(())
        });
        ok.wait(Some(Duration::from_secs(5)));
        let a = ok.to_api();
        assert_eq!(a.status, "Success");
        assert_eq!(a.metadata.unwrap()["return"], 3);
        let bad = ops.start(Class::Task, "t", BTreeMap::new(), None, vec![], |_| {
            Err(Error::Invalid("nope".into()))
        });
        bad.wait(Some(Duration::from_secs(5)));
        assert_eq!(bad.to_api().err, "nope");
        assert_eq!(bad.to_api().status_code, 400);
        assert_eq!(ops.list().len(), 2);
    }

    #[test]
    fn finished_operations_are_kept_at_most_max_finished() {
        let ops = Operations::new(Arc::new(Events::default()));
        let running = ops.create(Class::Task, "t", BTreeMap::new(), None, vec![]);
        let mut ids = Vec::new();
        for _ in 0..MAX_FINISHED + 10 {
            let op = ops.start(Class::Task, "t", BTreeMap::new(), None, vec![], |_| {
                Ok::<(), Error>(())
            });
            op.wait(Some(Duration::from_secs(5)));
            ids.push(op.id.clone());
        }
        // The next creation prunes: the newest MAX_FINISHED finished ones and the running one.
        ops.create(Class::Task, "t", BTreeMap::new(), None, vec![]);
        assert_eq!(ops.list().len(), MAX_FINISHED + 2);
        assert!(ops.get(&running.id).is_some(), "a running operation stays");
        assert!(ops.get(&ids[0]).is_none(), "the oldest finished one went");
        assert!(ops.get(ids.last().unwrap()).is_some(), "the newest stays");
    }

    #[test]
    fn each_websocket_secret_admits_one_connection_once() {
        let ops = Operations::new(Arc::new(Events::default()));
        let op = ops.create(
            Class::Websocket,
            "t",
            BTreeMap::new(),
            None,
            vec!["a".into()],
        );
        let stream =
            || -> Box<dyn Stream> { Box::new(std::os::unix::net::UnixStream::pair().unwrap().0) };
        assert!(op.has_secret("a", true));
        assert!(!op.has_secret("a", false), "not opened to the untrusted");
        assert!(!op.has_secret("b", true) && !op.has_secret("", true));
        assert!(op.connect("b", stream()).is_err());
        assert!(op.connect("a", stream()).is_ok());
        // Connected: used, even before the operation takes it.
        assert!(!op.has_secret("a", true));
        assert!(op.connect("a", stream()).is_err());
        let got = op
            .take_sockets(&["a".into()], Duration::from_secs(1))
            .unwrap();
        assert_eq!(got.len(), 1);
        assert!(!op.has_secret("a", true));
        assert!(op.connect("a", stream()).is_err());
        // A finished operation admits nothing.
        let op2 = ops.create(
            Class::Websocket,
            "t",
            BTreeMap::new(),
            None,
            vec!["c".into()],
        );
        op2.set_status(status::FAILURE, "gone".into());
        assert!(!op2.has_secret("c", true));
        assert!(op2.connect("c", stream()).is_err());
    }

    #[test]
    fn uuid_shape() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
