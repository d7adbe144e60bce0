//! Writing an instance's volatile keys (`volatile.last_state.power`, ...) and its
//! `last_used_at` in the state database, without touching anything else of its record.

use super::Ctx;

/// Set `volatile.last_state.power` (and optionally other keys) without touching anything else.
/// Keys that already have these values write nothing (a stop and the watcher that sees the
/// monitor end both record `STOPPED`).
pub fn set_volatile(d: &Ctx, name: &str, kv: &[(&str, Option<String>)]) {
    update_volatile(d, name, kv, None);
}

/// [`set_volatile`], and `last_used_at` too when given, in one write of the database.
pub fn update_volatile(d: &Ctx, name: &str, kv: &[(&str, Option<String>)], used: Option<String>) {
    let mut db = d.db.lock().expect("db lock");
    let Some(r) = db.data.instances.get(name) else {
        return;
    };
    if used.is_none() && kv.iter().all(|(k, v)| r.config.get(*k) == v.as_ref()) {
        return;
    }
    let old: Vec<(String, String)> = kv
        .iter()
        .filter_map(|(k, v)| {
            let o = r.config.get(*k)?;
            (Some(o) != v.as_ref()).then(|| ((*k).to_string(), o.clone()))
        })
        .collect();
    if !old.is_empty() {
        let mut s = d.superseded.lock().expect("superseded lock");
        let list = s.entry(name.to_string()).or_default();
        list.extend(old);
        let over = list.len().saturating_sub(super::ctx::SUPERSEDED_KEPT);
        list.drain(..over);
    }
    let _ = db.update(|data| {
        if let Some(r) = data.instances.get_mut(name) {
            for (k, v) in kv {
                match v {
                    Some(v) => {
                        r.config.insert((*k).to_string(), v.clone());
                    }
                    None => {
                        r.config.remove(*k);
                    }
                }
            }
            if let Some(t) = used {
                r.last_used_at = t;
            }
        }
    });
}
