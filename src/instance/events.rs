//! The event hub behind `GET /1.0/events`: subscribers with type filters, each fed by its own
//! bounded queue (drained by its connection's writer thread), so that a slow client can never
//! block the daemon. A subscriber whose queue overflows or whose connection fails is dropped.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

use crate::api;
use crate::util::time;

/// Who made the request a lifecycle event comes from (LXD's `requestor`): the user on the unix
/// socket, or the client certificate's fingerprint and address on HTTPS.
#[derive(serde::Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Requestor {
    pub username: String,
    pub protocol: String,
    pub address: String,
}

thread_local! {
    /// The requestor of the request this thread serves (set per connection, and carried into
    /// the operations a request starts).
    static REQUESTOR: RefCell<Option<Requestor>> = const { RefCell::new(None) };
}

/// Set (or clear) the requestor of this thread's requests.
pub fn set_requestor(r: Option<Requestor>) {
    REQUESTOR.with(|c| *c.borrow_mut() = r);
}

/// The requestor of this thread's request, if it serves one.
pub fn requestor() -> Option<Requestor> {
    REQUESTOR.with(|c| c.borrow().clone())
}

/// How many events may wait for one subscriber before it is dropped.
const QUEUE: usize = 4096;

struct Sub {
    id: u64,
    types: Vec<String>,
    tx: SyncSender<String>,
}

/// Owned by the daemon for its whole life; subscribers end when their websocket does.
#[derive(Default)]
pub struct Events {
    subs: Mutex<Vec<Sub>>,
    next_id: AtomicU64,
}

impl Events {
    /// Emit an event of `kind` ("operation", "logging", "lifecycle").
    pub fn emit(&self, kind: &str, metadata: serde_json::Value) {
        let mut subs = self.subs.lock().expect("events lock");
        if subs.is_empty() {
            return;
        }
        let ev = api::Event {
            kind: kind.to_string(),
            timestamp: time::now(),
            metadata,
            location: "none".into(),
            project: "default".into(),
        };
        let text = serde_json::to_string(&ev).expect("events serialize");
        subs.retain(|s| {
            if !s.types.is_empty() && !s.types.iter().any(|t| t == kind) {
                return true;
            }
            match s.tx.try_send(text.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }

    /// A lifecycle event (`instance-started`, ...) for a resource URL; the requestor is the
    /// current request's (absent for what the daemon does by itself, as LXD omits it).
    pub fn lifecycle(&self, action: &str, source: &str, context: serde_json::Value) {
        let mut v = serde_json::json!({"action": action, "source": source, "context": context});
        if let Some(r) = requestor() {
            v["requestor"] = serde_json::to_value(r).unwrap_or_default();
        }
        self.emit("lifecycle", v);
    }

    /// A new subscriber to events of `types` (empty: every type), and its id. It is dropped
    /// (its receiver sees the end) when it falls [`QUEUE`] events behind, the receiver goes, or
    /// [`Events::unsubscribe`] ends it.
    pub fn subscribe(&self, types: Vec<String>) -> (u64, Receiver<String>) {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subs
            .lock()
            .expect("events lock")
            .push(Sub { id, types, tx });
        (id, rx)
    }

    /// End subscriber `id` (its client went): its receiver sees the end at once, not at the
    /// next event.
    pub fn unsubscribe(&self, id: u64) {
        self.subs
            .lock()
            .expect("events lock")
            .retain(|s| s.id != id);
    }
}

#[cfg(test)]
mod requestor_tests {
    use super::*;

    #[test]
    fn lifecycle_events_name_the_requestor_of_this_thread() {
        let ev = Events::default();
        let (_, rx) = ev.subscribe(vec!["lifecycle".into()]);
        ev.lifecycle(
            "instance-started",
            "/1.0/instances/c1",
            serde_json::json!({}),
        );
        let v: serde_json::Value = serde_json::from_str(&rx.recv().unwrap()).unwrap();
        assert!(v["metadata"].get("requestor").is_none(), "{v}");
        set_requestor(Some(Requestor {
            username: "ab12".into(),
            protocol: "tls".into(),
            address: "192.0.2.1:5000".into(),
        }));
        ev.lifecycle(
            "instance-started",
            "/1.0/instances/c1",
            serde_json::json!({}),
        );
        let v: serde_json::Value = serde_json::from_str(&rx.recv().unwrap()).unwrap();
        assert_eq!(
            v["metadata"]["requestor"],
            serde_json::json!({"username": "ab12", "protocol": "tls", "address": "192.0.2.1:5000"})
        );
        set_requestor(None);
    }
}
