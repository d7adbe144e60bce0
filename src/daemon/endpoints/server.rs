//! `/1.0`: server info and config, and the (empty) certificate list.

use super::super::request::json;
use super::super::response::{self, Error, Result};
use super::super::{config, Daemon};
use crate::api::{self, extensions::API_EXTENSIONS};
use crate::http::{Request, Response};

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
            addresses: vec![],
            architectures: crate::instance::host::architectures(&d.host.architecture),
            certificate: String::new(),
            certificate_fingerprint: String::new(),
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

pub fn server_get(d: &Daemon) -> Result<Response> {
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
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        config::validate_server_key(k, &v)?;
        if k == "core.https_address" && !v.is_empty() {
            return Err(Error::not_yet("core.https_address (the HTTPS listener)"));
        }
        if k == "core.trust_password" && !v.is_empty() {
            return Err(Error::not_yet("core.trust_password (HTTPS remotes)"));
        }
        if v.is_empty() {
            next.remove(k);
        } else {
            next.insert(k.clone(), v);
        }
    }
    db.update(|data| data.config = next)
        .map_err(|e| Error::Internal(format!("saving config: {e}")))?;
    d.apply_server_config(&db.data.config);
    Ok(response::empty())
}

fn server_config_view(c: &api::StringMap) -> api::StringMap {
    c.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if k == "core.trust_password" {
                    "true".into()
                } else {
                    v.clone()
                },
            )
        })
        .collect()
}
