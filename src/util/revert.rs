//! The one undo mechanism for multi-step changes: each step that succeeds pushes what undoes it;
//! on drop the undo steps run in reverse order, unless the change was committed.
//!
//! ```ignore
//! let mut revert = Revert::new();
//! make_file(&a)?;
//! revert.add(move || { let _ = std::fs::remove_file(&a); });
//! mount(&b)?;               // a failure here removes `a`
//! revert.commit();          // done: nothing is undone
//! ```

/// Undo steps, run last-first on drop unless [`Revert::commit`] was called.
#[derive(Default)]
#[must_use = "a Revert undoes its steps when dropped; commit() keeps them"]
pub struct Revert {
    steps: Vec<Box<dyn FnOnce() + Send>>,
}

impl Revert {
    pub fn new() -> Revert {
        Revert::default()
    }

    /// Add the undo of a step that just succeeded.
    pub fn add(&mut self, undo: impl FnOnce() + Send + 'static) {
        self.steps.push(Box::new(undo));
    }

    /// The change is complete: keep it all.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Revert {
    fn drop(&mut self) {
        while let Some(undo) = self.steps.pop() {
            undo();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn undoes_in_reverse_unless_committed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut r = Revert::new();
            for i in 0..3 {
                let l = log.clone();
                r.add(move || l.lock().unwrap().push(i));
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        log.lock().unwrap().clear();
        let mut r = Revert::new();
        let l = log.clone();
        r.add(move || l.lock().unwrap().push(9));
        r.commit();
        assert!(log.lock().unwrap().is_empty());
    }
}
