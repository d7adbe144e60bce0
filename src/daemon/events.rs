//! The event hub behind `GET /1.0/events`: subscribers with type filters, each fed by its own
//! bounded queue and writer thread, so that a slow client can never block the daemon.
//! A subscriber whose queue overflows or whose connection fails is dropped.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Mutex;

use crate::api;
use crate::http::ws;
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

    /// Serve one websocket subscriber until it goes away. `types` empty means every type.
    pub fn serve(&self, stream: Box<dyn crate::http::Stream>, types: Vec<String>) {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let Ok((sender, mut receiver)) = ws::split(stream, ws::Role::Server) else {
            return;
        };
        self.subs
            .lock()
            .expect("events lock")
            .push(Sub { types, tx });
        // Reader: notices the client closing (or sending anything) and stops the writer.
        let closer = sender.clone();
        let reader = std::thread::spawn(move || {
            while let Ok(msg) = receiver.recv() {
                if let ws::Message::Close(_) = msg {
                    break;
                }
            }
            closer.shutdown();
        });
        let _ = sender.ping();
        // Writer: this thread; ends when the hub drops our queue or a send fails.
        for text in rx {
            if sender.send_text(&text).is_err() {
                break;
            }
        }
        sender.shutdown();
        let _ = reader.join();
    }
}
