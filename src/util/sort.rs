//! Sorting through one copy of the standard library's sort. Each `slice::sort*` call with its
//! own element type or comparison closure instantiates the whole driftsort/ipnsort machinery
//! again, about 4.5 KB of code each: fifty call sites made 220 KB of the binary. These sort a
//! list of indices with one shared, non-generic instantiation and then move the elements into
//! place, which costs each call site a few hundred bytes.
//!
//! The sorts are stable (equal elements keep their order), as `slice::sort_by` is. `xtask tidy`
//! refuses `.sort*(` calls elsewhere in the daemon's code.
//!
//! Collecting into a `BTreeMap` is a sort too: its `FromIterator` gathers the pairs in a vector
//! and sorts it with a comparison closure that is generic over the iterator, so each `.collect()`
//! into a map made its own copy of the sort, 2–4 KB each (41 of them, about 100 KB of the
//! binary). [`map`] builds the map by inserting instead.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// The map of `pairs`, as `.collect::<BTreeMap<_, _>>()` makes it (a later pair replaces an
/// earlier one with the same key), without a sort instantiated for the call site.
pub fn map<K: Ord, V>(pairs: impl IntoIterator<Item = (K, V)>) -> BTreeMap<K, V> {
    let mut m = BTreeMap::new();
    m.extend(pairs);
    m
}

/// The set of `items`, as `.collect::<BTreeSet<_>>()` makes it, without its sort (one copy per
/// element type).
pub fn set<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    let mut s = BTreeSet::new();
    s.extend(items);
    s
}

/// The entries of `m` that `keep` accepts, copied (a `.filter().map(clone).collect()`, see [`map`]).
pub fn entries_where<V: Clone>(
    m: &BTreeMap<String, V>,
    keep: impl Fn(&str, &V) -> bool,
) -> BTreeMap<String, V> {
    map(m
        .iter()
        .filter(|(k, v)| keep(k, v))
        .map(|(k, v)| (k.clone(), v.clone())))
}

/// [`map`] of fallible pairs: the first error, or the map of them all.
pub fn try_map<K: Ord, V, E>(
    pairs: impl IntoIterator<Item = Result<(K, V), E>>,
) -> Result<BTreeMap<K, V>, E> {
    let mut m = BTreeMap::new();
    for p in pairs {
        let (k, v) = p?;
        m.insert(k, v);
    }
    Ok(m)
}

/// Sort `v` by `cmp`, stably.
pub fn sort_by<T>(v: &mut [T], cmp: impl Fn(&T, &T) -> Ordering) {
    if v.len() < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..v.len()).collect();
    sort_indices(&mut order, &|a, b| cmp(&v[a], &v[b]));
    permute(v, &order);
}

/// Sort `v` by the key `key` gives each element, stably.
pub fn sort_by_key<T, K: Ord>(v: &mut [T], key: impl Fn(&T) -> K) {
    sort_by(v, |a, b| key(a).cmp(&key(b)));
}

/// Sort `v` in its natural order, stably.
pub fn sort<T: Ord>(v: &mut [T]) {
    sort_by(v, T::cmp);
}

/// The one instantiation of the standard sort.
#[inline(never)]
fn sort_indices(order: &mut [usize], cmp: &dyn Fn(usize, usize) -> Ordering) {
    order.sort_by(|a, b| cmp(*a, *b));
}

/// Rearrange `v` so that position `i` holds what was at `order[i]`, by following each cycle of
/// the permutation with swaps.
fn permute<T>(v: &mut [T], order: &[usize]) {
    let mut done = vec![false; v.len()];
    for start in 0..v.len() {
        if done[start] {
            continue;
        }
        done[start] = true;
        let mut at = start;
        while order[at] != start {
            let from = order[at];
            v.swap(at, from);
            done[from] = true;
            at = from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_stably_like_the_standard_sort() {
        // A pseudo-random list with many equal keys, against slice::sort_by_key.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut v: Vec<(u8, usize)> = (0..500)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 17) as u8, i)
            })
            .collect();
        let mut want = v.clone();
        want.sort_by_key(|e| e.0);
        sort_by_key(&mut v, |e| e.0);
        assert_eq!(v, want);
        let mut s = vec!["b".to_string(), "a".into(), "c".into(), "a".into()];
        sort(&mut s);
        assert_eq!(s, ["a", "a", "b", "c"]);
        let mut r = vec![3, 1, 2];
        sort_by(&mut r, |a, b| b.cmp(a));
        assert_eq!(r, [3, 2, 1]);
        let mut one = vec![1];
        sort(&mut one);
        let mut none: Vec<u8> = vec![];
        sort(&mut none);
        assert_eq!((one, none), (vec![1], vec![]));
    }

    #[test]
    fn maps_as_collect_does() {
        let pairs = [("b", 1), ("a", 2), ("b", 3)];
        let want: BTreeMap<_, _> = pairs.into_iter().collect();
        assert_eq!(map(pairs), want);
        assert_eq!(map(pairs)["b"], 3);
        let ok: Result<BTreeMap<_, _>, ()> = try_map(pairs.map(Ok));
        assert_eq!(ok, Ok(want));
        let bad = try_map([Ok(("a", 1)), Err("no"), Err("later")]);
        assert_eq!(bad, Err("no"));
        assert_eq!(set([3, 1, 3]), BTreeSet::from_iter([1, 3]));
        let m = map([("a".to_string(), 1), ("b".into(), 2), ("c".into(), 3)]);
        let odd = entries_where(&m, |k, v| k != "c" && v % 2 == 1);
        assert_eq!(odd, map([("a".to_string(), 1)]));
    }
}
