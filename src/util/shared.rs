//! [`Shared`]: a record shared by the copies of a document until one of them changes it.
//!
//! The state database changes a copy of its document and keeps it only once it is saved
//! (`instance::db`). With a thousand instances, copying each one's record, comparing it and
//! serializing it again on every change cost more than the change itself. A `Shared` record is
//! copied by reference; writing through it (`DerefMut`) copies that record alone, so what a
//! change left alone stays the same allocation, and "unchanged" is a pointer comparison.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A value behind a reference count: cloning shares it, changing it makes this copy its own.
#[derive(Default)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(value))
    }

    /// The two are one allocation (neither was changed since one was cloned from the other).
    pub fn same(a: &Shared<T>, b: &Shared<T>) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Shared<T> {
        Shared(Arc::clone(&self.0))
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Writing copies the value first when another copy of the document still holds it.
impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Shared<T> {
        Shared::new(value)
    }
}

/// The same allocation is equal without looking; otherwise the values are compared (a record
/// written through but left as it was is still equal).
impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Shared<T>) -> bool {
        Shared::same(self, other) || *self.0 == *other.0
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: serde::Serialize> serde::Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Shared<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shared<T>, D::Error> {
        T::deserialize(d).map(Shared::new)
    }
}

/// One entry of [`changes`]: the key, its value in the first map and in the second (`None`
/// where the key is absent).
pub type Change<'a, K, T> = (&'a K, Option<&'a Shared<T>>, Option<&'a Shared<T>>);

/// The entries of two maps of shared values that are not the same allocation, in key order.
/// One pass over both maps, one key comparison per entry: with a thousand instances, looking
/// each name up in the other map cost ten comparisons of it instead.
pub fn changes<'a, K: Ord, T>(
    a: &'a BTreeMap<K, Shared<T>>,
    b: &'a BTreeMap<K, Shared<T>>,
) -> Vec<Change<'a, K, T>> {
    let (mut x, mut y) = (a.iter().peekable(), b.iter().peekable());
    let mut out = Vec::new();
    loop {
        let next = match (x.peek(), y.peek()) {
            (None, None) => return out,
            (Some(&(k, v)), None) => (k, Some(v), None),
            (None, Some(&(k, v))) => (k, None, Some(v)),
            (Some(&(ka, va)), Some(&(kb, vb))) => match ka.cmp(kb) {
                Ordering::Less => (ka, Some(va), None),
                Ordering::Greater => (kb, None, Some(vb)),
                Ordering::Equal => {
                    x.next();
                    y.next();
                    if !Shared::same(va, vb) {
                        out.push((ka, Some(va), Some(vb)));
                    }
                    continue;
                }
            },
        };
        if next.1.is_some() {
            x.next();
        } else {
            y.next();
        }
        out.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_copies_only_the_written_copy() {
        let a = Shared::new(vec![1, 2]);
        let mut b = a.clone();
        assert!(Shared::same(&a, &b));
        let _ = &*b;
        assert!(Shared::same(&a, &b), "a read keeps it shared");
        b.push(3);
        assert!(!Shared::same(&a, &b));
        assert_eq!(*a, vec![1, 2], "the other copy keeps its value");
        assert_eq!(*b, vec![1, 2, 3]);
        let mut c = a.clone();
        let _ = &mut *c;
        assert!(
            !Shared::same(&a, &c),
            "a write copies even when nothing changed"
        );
        assert_eq!(a, c, "and the copies are still equal by value");
        assert_ne!(a, b);
    }

    #[test]
    fn serializes_as_its_value() {
        let a = Shared::new(vec!["x".to_string()]);
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(s, r#"["x"]"#);
        let back: Shared<Vec<String>> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn changes_are_the_entries_not_shared_in_key_order() {
        let a: BTreeMap<String, Shared<u32>> = [("a", 1), ("b", 2), ("c", 3), ("e", 5)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Shared::new(v)))
            .collect();
        let mut b = a.clone();
        *b.get_mut("b").unwrap().deref_mut() = 20;
        let moved = b.remove("c").unwrap();
        b.insert("d".into(), moved);
        b.remove("e");
        b.insert("f".into(), Shared::new(6));
        let got: Vec<_> = changes(&a, &b)
            .into_iter()
            .map(|(k, x, y)| (k.as_str(), x.map(|v| **v), y.map(|v| **v)))
            .collect();
        assert_eq!(
            got,
            [
                ("b", Some(2), Some(20)),
                ("c", Some(3), None),
                ("d", None, Some(3)),
                ("e", Some(5), None),
                ("f", None, Some(6)),
            ]
        );
        assert!(changes(&a, &a.clone()).is_empty());
        assert_eq!(changes(&BTreeMap::new(), &a).len(), 4);
    }
}
