//! `/1.0`: server info (the trusted view and the untrusted one) and server config, with the
//! HTTPS listener and the trust password applied live.

use super::super::https;
use super::super::request::json;
use super::super::response::{self, Error, Result};
use super::super::{config, Daemon};
use crate::api::{self, extensions::API_EXTENSIONS};
use crate::http::{Request, Response};
use crate::instance::trust;

fn server(d: &Daemon) -> api::Server {
    let cfg = d.db.lock().expect("db lock").data.config.clone();
    let mut config = api::StringMap::new();
    for (k, v) in cfg {
        // The trust password is never shown, only that one is set (LXD shows `true`).
        config.insert(
            k.clone(),
            if k == "core.trust_password" {
                "true".into()
            } else {
                v
            },
        );
    }
    // What bivy does on this host, not what the kernel could: idmapped mounts as probed on
    // `$BIVY_DIR` at start; no seccomp user notification (syscall interception) exists in bivy,
    // and no shiftfs.
    let flag = |b: bool| if b { "true" } else { "false" }.to_string();
    let mut kernel_features = api::StringMap::new();
    kernel_features.insert("idmapped_mounts".into(), flag(d.host.idmapped_mounts));
    kernel_features.insert("seccomp_listener".into(), flag(false));
    kernel_features.insert("shiftfs".into(), flag(false));
    api::Server {
        config,
        api_extensions: API_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        api_status: "stable".into(),
        api_version: "1.0".into(),
        auth: "trusted".into(),
        public: false,
        auth_methods: vec!["tls".into()],
        environment: api::ServerEnvironment {
            addresses: https::get().addresses(),
            architectures: crate::instance::host::architectures(&d.host.architecture),
            certificate: https::get()
                .identity()
                .map(|i| i.cert_pem())
                .unwrap_or_default(),
            certificate_fingerprint: https::get()
                .identity()
                .map(|i| crate::tls::fingerprint(&i.cert_der))
                .unwrap_or_default(),
            driver: "bivy".into(),
            driver_version: env!("CARGO_PKG_VERSION").into(),
            firewall: String::new(),
            kernel: "Linux".into(),
            kernel_architecture: d.host.architecture.clone(),
            kernel_features,
            kernel_version: d.host.kernel_version.clone(),
            lxc_features: api::StringMap::new(),
            os_name: d.host.os_name.clone(),
            os_version: d.host.os_version.clone(),
            project: "default".into(),
            server: "bivy".into(),
            server_clustered: false,
            server_event_mode: "full-mesh".into(),
            server_name: d.host.hostname.clone(),
            server_pid: i64::from(std::process::id()),
            server_version: env!("CARGO_PKG_VERSION").into(),
            storage: "dir".into(),
            storage_version: "1".into(),
            storage_supported_drivers: crate::storage::supported_drivers()
                .into_iter()
                .map(|(name, version)| api::StorageDriverInfo {
                    name: name.into(),
                    version,
                    remote: false,
                })
                .collect(),
        },
    }
}

/// LXD's `api.ServerUntrusted`: all an untrusted caller learns.
#[derive(serde::Serialize)]
struct Untrusted {
    api_extensions: Vec<String>,
    api_status: &'static str,
    api_version: &'static str,
    auth: &'static str,
    public: bool,
    auth_methods: Vec<&'static str>,
}

pub fn server_get(d: &Daemon, trusted: bool) -> Result<Response> {
    if !trusted {
        return Ok(response::sync(&Untrusted {
            api_extensions: API_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
            api_status: "stable",
            api_version: "1.0",
            auth: "untrusted",
            public: false,
            auth_methods: vec!["tls"],
        }));
    }
    let s = server(d);
    let etag = response::etag(&s.config);
    Ok(response::sync_etag(&s, Some(etag)))
}

pub fn server_put(d: &Daemon, req: &mut Request, patch: bool) -> Result<Response> {
    let body: api::ServerPut = json(req)?;
    let mut db = d.db.lock().expect("db lock");
    response::check_etag(
        req.header("If-Match"),
        &response::etag(&server_config_view(&db.data.config)),
    )?;
    let mut next = if patch {
        db.data.config.clone()
    } else {
        api::StringMap::new()
    };
    for (k, v) in &body.config {
        let v = config::server_value(v);
        config::validate_server_key(k, &v)?;
        if v.is_empty() {
            next.remove(k);
        } else if k == trust::PASSWORD_KEY {
            // Stored only as a salted hash. `true` is what GET shows for a set password, so a
            // client sending the whole config back keeps the password it does not know.
            match db.data.config.get(k) {
                Some(old) if v == "true" => next.insert(k.clone(), old.clone()),
                _ => next.insert(k.clone(), trust::hash_password(&v)),
            };
        } else {
            next.insert(k.clone(), v);
        }
    }
    // The host's cgroup2 option is changed before the config is saved (a kernel without it
    // changes nothing), and put back if saving fails.
    let favor_old = db.data.config.get(config::FAVOR_DYNMODS).cloned();
    let favor_new = next.get(config::FAVOR_DYNMODS).cloned();
    let favor_changed = favor_old != favor_new;
    if favor_changed {
        config::apply_favor_dynmods(favor_old.as_deref(), favor_new.as_deref())?;
    }
    // A new listen address is bound before the config is saved (a port in use changes
    // nothing); it is let go again if saving fails.
    const ADDR: &str = "core.https_address";
    let old_addr = db.data.config.get(ADDR).cloned().unwrap_or_default();
    let new_addr = next.get(ADDR).cloned().unwrap_or_default();
    let h = https::get();
    if new_addr != old_addr && !new_addr.is_empty() {
        h.set_address(&d.self_arc(), &new_addr)?;
    }
    if let Err(e) = db.update(|data| data.config = next) {
        if new_addr != old_addr && !new_addr.is_empty() {
            let _ = h.set_address(&d.self_arc(), &old_addr);
        }
        if favor_changed {
            let _ = config::apply_favor_dynmods(favor_new.as_deref(), favor_old.as_deref());
        }
        return Err(Error::Internal(format!("saving config: {e}")));
    }
    if new_addr.is_empty() && !old_addr.is_empty() {
        h.set_address(&d.self_arc(), "")?;
    }
    d.apply_server_config(&db.data.config);
    Ok(response::empty())
}

fn server_config_view(c: &api::StringMap) -> api::StringMap {
    let mut view = c.clone();
    if let Some(v) = view.get_mut("core.trust_password") {
        *v = "true".into();
    }
    view
}

/// `POST /internal/recover/validate` (`lxd recover`'s scan): the instances and custom volumes
/// on the pools that the database lacks, and what must exist before they can come back.
pub fn recover_validate(d: &Daemon, req: &mut Request) -> Result<Response> {
    let body: api::RecoverPost = json(req)?;
    Ok(response::sync(&crate::instance::recover::validate(
        d, &body,
    )?))
}

/// `POST /internal/recover/import`: record what the scan finds and take up its instances.
pub fn recover_import(d: &Daemon, req: &mut Request) -> Result<Response> {
    let body: api::RecoverPost = json(req)?;
    crate::instance::recover::import(d, &body)?;
    Ok(response::empty())
}
