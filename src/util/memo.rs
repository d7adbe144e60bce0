//! A map kept for the life of the process between calls that would otherwise read or make the
//! same thing again (a listing asks for every running container's files and paths each time).
//! Bounded: once [`LIMIT`] entries are kept, all go at the next insert (the entries of things
//! long gone with them) and are made again as asked.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// The most entries a [`Memo`] keeps.
pub const LIMIT: usize = 4096;

/// See the module's doc. Usable as a `static` (`Memo::new()` is `const`).
pub struct Memo<K, V>(Mutex<Option<HashMap<K, V>>>);

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    pub const fn new() -> Memo<K, V> {
        Memo(Mutex::new(None))
    }

    fn map(&self) -> MutexGuard<'_, Option<HashMap<K, V>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what is kept for `k`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.map().as_ref().and_then(|m| m.get(k).cloned())
    }

    /// Keep `v` for `k` (all that was kept goes first when there are [`LIMIT`] entries).
    pub fn insert(&self, k: K, v: V) {
        let mut g = self.map();
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() >= LIMIT {
            m.clear();
        }
        m.insert(k, v);
    }

    /// Forget `k`.
    pub fn remove<Q: Hash + Eq + ?Sized>(&self, k: &Q)
    where
        K: Borrow<Q>,
    {
        if let Some(m) = self.map().as_mut() {
            m.remove(k);
        }
    }
}

impl<K: Hash + Eq, V: Clone> Default for Memo<K, V> {
    fn default() -> Memo<K, V> {
        Memo::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_forgets_and_empties_when_full() {
        static M: Memo<String, u32> = Memo::new();
        assert_eq!(M.get("a"), None);
        M.insert("a".into(), 1);
        M.insert("a".into(), 2);
        assert_eq!(M.get("a"), Some(2));
        M.remove("a");
        assert_eq!(M.get("a"), None);
        for i in 0..LIMIT {
            M.insert(i.to_string(), 0);
        }
        assert_eq!(M.get("0"), Some(0), "{LIMIT} kept");
        M.insert("last".into(), 9);
        assert_eq!(M.get("0"), None, "emptied when full");
        assert_eq!(M.get("last"), Some(9));
    }
}
