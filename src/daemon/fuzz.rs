//! Fuzzing entry point of the REST JSON bodies ([`fuzz_rest_json`], used by `tests/fuzz` target
//! `rest_json` and by the deterministic test below): a request body decoded as the endpoints
//! decode it, into the wire types of the instance, profile, server config, network and storage
//! volume requests, then through the checks those endpoints run before they change anything.

use crate::api;
use crate::instance::config;
use crate::instance::db::{Data, NetworkRecord, ProfileRecord};
use crate::instance::devices;

use super::response::parse_json;

/// What the checks see: a bridge `lxdbr0` and the default profile with a root disk and a nic.
fn fuzz_data() -> Data {
    let mut data = Data::default();
    let map = |kv: &[(&str, &str)]| -> api::StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    data.networks.insert(
        "lxdbr0".into(),
        NetworkRecord {
            kind: "bridge".into(),
            config: map(&[("ipv4.address", "10.9.0.1/24"), ("ipv4.nat", "true")]),
            description: String::new(),
        },
    );
    let mut devices = api::Devices::new();
    devices.insert(
        "root".into(),
        map(&[("type", "disk"), ("path", "/"), ("pool", "default")]),
    );
    devices.insert(
        "eth0".into(),
        map(&[("type", "nic"), ("network", "lxdbr0"), ("name", "eth0")]),
    );
    data.profiles.insert(
        "default".into(),
        ProfileRecord {
            devices,
            ..Default::default()
        },
    );
    data
}

/// An instance's config and devices through the checks of a create or an update, then the
/// expansion with its profiles and the translation of its limits.
fn instance_checks(data: &Data, profiles: &[String], cfg: &api::StringMap, devs: &api::Devices) {
    let current: api::StringMap = [("volatile.uuid", "d7826c13-ede5-4bf5-8455-eafda4eb16b1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if config::validate_config(cfg, &current, 2).is_err() {
        return;
    }
    if devices::validate_devices(devs, data).is_err() {
        return;
    }
    let (expanded, _) = config::expand(profiles, &data.profiles, cfg, devs);
    let _ = config::limits(&expanded, 1 << 30, 2);
    let _ = config::flag(&expanded, "security.privileged");
}

/// Fuzzing entry point: `data` as the body of each request below. Must never panic; a decoded
/// `InstancePut` or `NetworkPut` written back as JSON decodes to the same value.
#[doc(hidden)]
pub fn fuzz_rest_json(data: &[u8]) {
    let db = fuzz_data();
    // POST /1.0/instances
    if let Ok(b) = parse_json::<api::InstancesPost>(data) {
        let _ = config::validate_instance_name(&b.name);
        let profiles = b.put.profiles.unwrap_or_else(|| vec!["default".into()]);
        let cfg = b.put.config.unwrap_or_default();
        let user: api::StringMap = cfg
            .into_iter()
            .filter(|(k, _)| !k.starts_with("volatile."))
            .collect();
        instance_checks(&db, &profiles, &user, &b.put.devices.unwrap_or_default());
    }
    // PUT and PATCH /1.0/instances/NAME (decoded through a `serde_json::Value`, as PATCH looks
    // at the keys the body has)
    if let Ok(v) = parse_json::<serde_json::Value>(data) {
        if let Ok(put) = serde_json::from_value::<api::InstancePut>(v) {
            let again: api::InstancePut =
                serde_json::from_slice(&serde_json::to_vec(&put).expect("serializes"))
                    .expect("an InstancePut written back decodes");
            assert_eq!(again, put, "InstancePut changed when written back");
            for p in &put.profiles {
                let _ = config::validate_profile_name(p);
            }
            instance_checks(&db, &put.profiles, &put.config, &put.devices);
        }
    }
    // POST /1.0/instances/NAME (rename), PUT /1.0/instances/NAME/state
    if let Ok(b) = parse_json::<api::InstancePost>(data) {
        let _ = config::validate_instance_name(&b.name);
    }
    let _ = parse_json::<api::InstanceStatePut>(data);
    let _ = parse_json::<api::InstanceExecPost>(data);
    // POST /1.0/profiles, PUT /1.0/profiles/NAME
    if let Ok(b) = parse_json::<api::ProfilesPost>(data) {
        if config::validate_profile_name(&b.name).is_ok() {
            instance_checks(&db, &[], &b.put.config, &b.put.devices);
        }
    }
    if let Ok(p) = parse_json::<api::ProfilePut>(data) {
        instance_checks(&db, &["default".into()], &p.config, &p.devices);
    }
    // PUT /1.0 (the server's config)
    if let Ok(b) = parse_json::<api::ServerPut>(data) {
        for (k, v) in &b.config {
            let _ = super::config::validate_server_key(k, &super::config::server_value(v));
        }
    }
    // POST /1.0/networks, PUT /1.0/networks/NAME
    if let Ok(b) = parse_json::<api::NetworksPost>(data) {
        if crate::instance::networks::validate_name(&b.name).is_ok() {
            network_checks(&db, b.config);
        }
    }
    if let Ok(b) = parse_json::<api::NetworkPut>(data) {
        let again: api::NetworkPut =
            serde_json::from_slice(&serde_json::to_vec(&b).expect("serializes"))
                .expect("a NetworkPut written back decodes");
        assert_eq!(again, b, "NetworkPut changed when written back");
        network_checks(&db, b.config);
    }
    // POST /1.0/storage-pools/POOL/volumes/custom
    if let Ok(b) = parse_json::<api::StorageVolumesPost>(data) {
        if crate::instance::volumes::validate_name(&b.name).is_ok() {
            let _ = crate::instance::volumes::validate_config("dir", &b.name, &b.config);
        }
    }
}

/// A bridge's config through the defaults and the checks of a create (no `auto` IPv6, which
/// reads random bytes).
fn network_checks(db: &Data, mut cfg: api::StringMap) {
    cfg.retain(|_, v| !v.is_empty());
    if cfg.get("ipv6.address").map(String::as_str) == Some("auto") {
        return;
    }
    if crate::instance::networks::fill_defaults(db, &mut cfg, &[]).is_ok() {
        let _ = crate::instance::networks::parse_config(&cfg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_rest_json_deterministic() {
        let tokens: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"null",
            b"true",
            b"-1",
            b"1e400",
            b"18446744073709551616",
            b"\\u0000",
            b"\\ud800",
            b"\"limits.cpu\":\"0-65535\"",
            b"\"limits.memory\":\"50%\"",
            b"\"limits.cpu.allowance\":\"25ms/100ms\"",
            b"\"raw.idmap\":\"both 1000 1000\"",
            b"\"security.syscalls.deny\":\"mknod\"",
            b"\"snapshots.schedule\":\"*/5 * * * *\"",
            b"\"snapshots.expiry\":\"2w 3d\"",
            b"\"snapshots.pattern\":\"snap%d-{{ creation_date|date:'2006-01-02' }}\"",
            b"\"linux.kernel_modules\":\"ip_tables,br_netfilter\"",
            b"\"type\":\"proxy\",\"listen\":\"tcp:0.0.0.0:80\",\"connect\":\"tcp:127.0.0.1:80\"",
            b"\"type\":\"disk\",\"source\":\"/srv\",\"path\":\"/mnt\"",
            b"\"type\":\"nic\",\"nictype\":\"bridged\",\"parent\":\"lxdbr0\"",
            b"\"ipv4.address\":\"10.0.0.1/8\"",
            b"\"ipv4.dhcp.ranges\":\"10.9.0.10-10.9.0.20\"",
            b"\"core.https_address\":\"[::]:8443\"",
            b"\"images.max_unpacked_size\":\"64GiB\"",
        ];
        crate::http::fuzz::tests::fuzz_corpus_and_mutations(
            "rest_json",
            0x1f83_d9ab_fb41_bd6b,
            tokens,
            fuzz_rest_json,
        );
    }
}
