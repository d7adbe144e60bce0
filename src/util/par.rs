//! `map` over a slice on a few threads, for the per-item work of a listing that waits on the
//! kernel (cgroup files, netlink): results in the items' order.

/// `f` applied to every item, on up to `workers` threads (the caller's included); results in
/// order. One thread when there is one worker or a single item.
pub fn map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = workers.clamp(1, items.len().max(1));
    if workers == 1 {
        return items.iter().map(&f).collect();
    }
    // Worker `w` takes items w, w + workers, ...: neighbours (often alike in cost) spread out.
    let run = |w: usize| -> Vec<(usize, R)> {
        items
            .iter()
            .enumerate()
            .skip(w)
            .step_by(workers)
            .map(|(i, t)| (i, f(t)))
            .collect()
    };
    let mut parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..workers).map(|w| s.spawn(move || run(w))).collect();
        let mut parts = vec![run(0)];
        for h in handles {
            match h.join() {
                Ok(p) => parts.push(p),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        parts
    });
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in parts.drain(..).flatten() {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("every item mapped once"))
        .collect()
}

/// How many threads a listing's per-item work may use: the CPUs, at most four (asked once:
/// std reads the process's cgroup files to answer).
pub fn workers() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_order_whatever_the_workers() {
        let items: Vec<u32> = (0..37).collect();
        for w in [0, 1, 2, 3, 8, 100] {
            let out = super::map(&items, w, |x| x * 2);
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>(), "{w}");
        }
        assert!(super::map(&[] as &[u32], 4, |x| *x).is_empty());
    }
}
