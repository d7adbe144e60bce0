//! The event hub behind `GET /1.0/events`: subscribers with type filters, each fed by its own
//! bounded queue (drained by its connection's writer thread), so that a slow client can never
//! block the daemon. A subscriber whose queue overflows or whose connection fails is dropped.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

use crate::api;
use crate::util::time;

/// How many events may wait for one subscriber before it is dropped.
const QUEUE: usize = 4096;

struct Sub {
    types: Vec<String>,
    tx: SyncSender<String>,
}

/// Owned by the daemon for its whole life; subscribers end when their websocket does.
#[derive(Default)]
pub struct Events {
    subs: Mutex<Vec<Sub>>,
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

    /// A lifecycle event (`instance-started`, ...) for a resource URL.
    pub fn lifecycle(&self, action: &str, source: &str, context: serde_json::Value) {
        self.emit(
            "lifecycle",
            serde_json::json!({"action": action, "source": source, "context": context, "requestor": {"username": "root", "protocol": "unix", "address": "@"}}),
        );
    }

    /// A new subscriber to events of `types` (empty: every type). It is dropped (its receiver
    /// sees the end) when it falls [`QUEUE`] events behind or the receiver goes.
    pub fn subscribe(&self, types: Vec<String>) -> Receiver<String> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        self.subs
            .lock()
            .expect("events lock")
            .push(Sub { types, tx });
        rx
    }
}
