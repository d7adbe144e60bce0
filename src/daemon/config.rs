//! Server config keys (`core.*`, `images.*`, `backups.*`): what the daemon accepts in `PUT /1.0`.
//! Instance keys are the model's (`instance::config`).

use super::response::{Error, Result};
use crate::instance::config::parse_bool;

/// A config value of `PUT /1.0` as text: LXD's clients send strings, some tools numbers or
/// booleans; `null` removes the key.
pub fn server_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// bivy's own (LXD has none): the kernel's `favordynmods` for the host's cgroup2 hierarchy,
/// applied when set (`true` on, `false` off) and when it changes; unset leaves the host as it
/// is (see `runtime::set_cgroup_favor_dynmods`).
pub const FAVOR_DYNMODS: &str = "core.cgroup_favordynmods";

/// Apply [`FAVOR_DYNMODS`] going from `old` to `new` (values as stored, `None` unset): `true`
/// turns it on, `false` off, and unsetting a `true` turns it off.
pub fn apply_favor_dynmods(old: Option<&str>, new: Option<&str>) -> Result<()> {
    let want = match (new.and_then(parse_bool), old.and_then(parse_bool)) {
        (Some(v), _) => v,
        (None, Some(true)) => false,
        (None, _) => return Ok(()),
    };
    crate::runtime::set_cgroup_favor_dynmods(want)
        .map_err(|e| Error::BadRequest(format!("{FAVOR_DYNMODS}: {e}")))
}

/// Server config keys we know (`core.*`, `images.*`, `backups.*`).
pub fn validate_server_key(key: &str, value: &str) -> Result<()> {
    match key {
        // The HTTPS listener (`daemon::https`) and the trust store (`instance::trust`).
        "core.https_address" => match value {
            "" => Ok(()),
            v => super::https::parse_address(v)
                .map(|_| ())
                .map_err(|why| Error::BadRequest(format!("Invalid value for {key:?}: {why}"))),
        },
        "core.trust_password" => Ok(()),
        "core.remote_token_expiry" => match value {
            "" => Ok(()),
            v => crate::instance::trust::parse_expiry(v)
                .map(|_| ())
                .map_err(|why| Error::BadRequest(format!("Invalid value for {key:?}: {why}"))),
        },
        // Image downloads go through them (`fetch::Fetcher`).
        "core.proxy_http" | "core.proxy_https" => {
            if !value.trim().is_empty() {
                super::fetch::parse_proxy(key, value.trim())?;
            }
            Ok(())
        }
        "core.proxy_ignore_hosts" => Ok(()),
        // Minutes the daemon waits for running operations when it stops (daemon/mod.rs).
        "core.shutdown_timeout" | "images.remote_cache_expiry" | "images.auto_update_interval" => {
            if value.is_empty() || value.parse::<u64>().is_ok() {
                Ok(())
            } else {
                Err(Error::BadRequest(format!(
                    "Invalid value for {key:?}: expected an integer"
                )))
            }
        }
        "images.auto_update_cached" | FAVOR_DYNMODS => match parse_bool(value) {
            Some(_) => Ok(()),
            None => Err(Error::BadRequest(format!(
                "Invalid value for {key:?}: expected true or false"
            ))),
        },
        // bivy's own (LXD has no limit): the most an image may expand to, checked at import
        // and unpack against compression and sparse-file bombs.
        "images.max_unpacked_size" => match crate::storage::btrfs::parse_size(value) {
            _ if value.is_empty() => Ok(()),
            Ok(n) if n > 0 => Ok(()),
            _ => Err(Error::BadRequest(format!(
                "Invalid value for {key:?}: expected a size above zero (like 64GiB)"
            ))),
        },
        // Publish (`images.*`) and backups (`instance::backups`) without their own.
        "images.compression_algorithm" | "backups.compression_algorithm" => match value {
            "" | "gzip" | "xz" | "zstd" | "bzip2" | "none" => Ok(()),
            _ => Err(Error::BadRequest(format!(
                "Invalid value for {key:?}: unsupported compression {value:?}"
            ))),
        },
        _ => Err(Error::BadRequest(format!(
            "Unknown configuration key: {key}"
        ))),
    }
}
