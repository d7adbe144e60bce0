//! Instances' API documents kept between listings ([`Docs`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::db::{InstanceRecord, Profiles};
use crate::api::Devices;
use crate::util::shared::Shared;

/// Each instance's API document (its `GET` without recursion's extras) as a listing last
/// serialized it, kept with what it was made from: the record and the profiles (held, so that
/// no other takes their address while the bytes stand for them) and the status code. A listing
/// of many instances serializes again only the documents whose instance changed: with a
/// thousand, their config maps were most of the daemon's work on every `list`.
#[derive(Default)]
pub struct Docs(Mutex<HashMap<String, Doc>>);

struct Doc {
    rec: Shared<InstanceRecord>,
    profiles: Shared<Profiles>,
    code: u16,
    json: Arc<[u8]>,
    devices: Arc<Devices>,
}

impl Docs {
    /// The document of `name` and its expanded devices, if the kept one was made from this
    /// record, these profiles and this status code.
    pub fn get(
        &self,
        name: &str,
        rec: &Shared<InstanceRecord>,
        profiles: &Shared<Profiles>,
        code: u16,
    ) -> Option<(Arc<[u8]>, Arc<Devices>)> {
        let docs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        docs.get(name)
            .filter(|d| {
                Shared::same(&d.rec, rec) && Shared::same(&d.profiles, profiles) && d.code == code
            })
            .map(|d| (d.json.clone(), d.devices.clone()))
    }

    /// Keep `json` (and the expanded `devices`) as the document of `name` made from these.
    pub fn put(
        &self,
        name: &str,
        (rec, profiles, code): (&Shared<InstanceRecord>, &Shared<Profiles>, u16),
        json: Arc<[u8]>,
        devices: Arc<Devices>,
    ) {
        let doc = Doc {
            rec: rec.clone(),
            profiles: profiles.clone(),
            code,
            json,
            devices,
        };
        let mut docs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        docs.insert(name.to_string(), doc);
    }

    /// Let go of the documents of instances `keep` does not name (gone or renamed).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut docs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        docs.retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept document stands only for the very record and profiles it was made from, at the
    /// status it was made at: a change through either (copied on write while the document
    /// holds them) or another status misses.
    #[test]
    fn a_kept_document_goes_with_a_change() {
        let docs = Docs::default();
        let mut data = super::super::db::Data::default();
        data.instances
            .insert("c1".into(), Shared::new(InstanceRecord::default()));
        let rec = data.instances["c1"].clone();
        let profiles = data.profiles.clone();
        let json: Arc<[u8]> = Arc::from(&b"{}"[..]);
        docs.put("c1", (&rec, &profiles, 103), json, Arc::default());
        assert!(docs.get("c1", &rec, &profiles, 103).is_some());
        assert!(docs.get("c1", &rec, &profiles, 102).is_none(), "status");
        assert!(docs.get("c2", &rec, &profiles, 103).is_none(), "name");
        let mut next = data.clone();
        next.instances
            .get_mut("c1")
            .unwrap()
            .config
            .insert("k".into(), "v".into());
        assert!(
            docs.get("c1", &next.instances["c1"], &next.profiles, 103)
                .is_none(),
            "record"
        );
        let mut next = data.clone();
        next.profiles
            .insert("p".into(), super::super::db::ProfileRecord::default());
        assert!(
            docs.get("c1", &next.instances["c1"], &next.profiles, 103)
                .is_none(),
            "profiles"
        );
        assert!(docs
            .get("c1", &data.instances["c1"], &data.profiles, 103)
            .is_some());
        docs.retain(|n| n != "c1");
        assert!(docs.get("c1", &rec, &profiles, 103).is_none(), "let go");
    }
}
