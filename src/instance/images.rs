//! Image orchestration in the model: what happens once an image is made (by a publish or a URL
//! import), for every path that makes one; which cached images have expired and when the
//! auto-update points are (the daemon's scheduler asks each minute).

use std::path::Path;

use super::{Ctx, Error, Result};
use crate::api;
use crate::image;
use crate::util::time;

/// The end of an operation that made an image (publish, URL import): its aliases, the
/// operation's `fingerprint`/`size` result and the lifecycle event.
pub fn image_created(
    d: &Ctx,
    op: &super::operations::Op,
    img: &api::Image,
    aliases: &[api::ImageAlias],
) -> Result<()> {
    for a in aliases {
        d.images.alias_create(&api::ImageAliasesEntry {
            name: a.name.clone(),
            description: a.description.clone(),
            target: img.fingerprint.clone(),
            kind: "container".into(),
        })?;
    }
    op.set_metadata("fingerprint", serde_json::json!(img.fingerprint));
    op.set_metadata("size", serde_json::json!(img.size));
    d.events.lifecycle(
        "image-created",
        &format!("/1.0/images/{}", img.fingerprint),
        serde_json::json!({}),
    );
    Ok(())
}

/// Publish a volume (an instance's, stopped, or a snapshot's) as an image.
pub fn publish_now(
    d: &Ctx,
    vol: &Path,
    architecture: &str,
    body: &api::ImagesPost,
    compression: image::Compression,
    op: &super::operations::Op,
) -> Result<()> {
    // A layered volume's files as one tree (storage/layered.rs).
    let view = crate::storage::layered::view(vol, false)
        .map_err(|e| Error::Host(format!("publishing: {e}")))?;
    let vol = view.path();
    let mut meta = read_metadata(vol, architecture)?;
    meta.creation_date = time::now_secs();
    meta.architecture = architecture.to_string();
    meta.properties.extend(body.put.properties.clone());
    // `lxc publish --expire`: the image's expiry, in its metadata as LXD writes it.
    let expires = body.put.expires_at.as_str();
    if let Some(t) = secs(expires) {
        meta.expiry_date = t;
    } else if !expires.is_empty() && expires != api::ZERO_TIME && expires != api::GO_ZERO_TIME {
        return Err(Error::Invalid(format!("Invalid expires_at {expires:?}")));
    }
    let templates = vol.join("templates");
    let opts = image::ImportOpts {
        filename: body.filename.clone(),
        public: body.put.public,
        auto_update: false,
        properties: body.put.properties.clone(),
        profiles: if body.put.profiles.is_empty() {
            vec!["default".into()]
        } else {
            body.put.profiles.clone()
        },
        ..Default::default()
    };
    let img = d.images.publish(
        &vol.join("rootfs"),
        &meta,
        templates.is_dir().then_some(templates.as_path()),
        compression,
        &opts,
    )?;
    image_created(d, op, &img, &body.aliases)
}

/// A volume's `metadata.json` (from its image), or a bare one for an instance made empty.
/// A volume's image metadata (`metadata.json`), or the minimal one LXD makes for a volume
/// that has none.
pub fn read_metadata(vol: &Path, architecture: &str) -> Result<api::ImageMetadata> {
    match std::fs::read(vol.join("metadata.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Host(format!("metadata.json: {e}"))),
        Err(_) => Ok(api::ImageMetadata {
            architecture: architecture.to_string(),
            ..Default::default()
        }),
    }
}

// Cached images and auto-update points (the daemon's scheduler asks these each minute).

fn secs(t: &str) -> Option<i64> {
    if t.is_empty() || t == api::ZERO_TIME || t == api::GO_ZERO_TIME {
        return None;
    }
    time::parse_secs(t).filter(|s| *s >= 0)
}

/// Whether a cached image is past `images.remote_cache_expiry` (`days`, 0 = never) at `now`
/// (unix seconds): counted from its last use, or its import if never used.
pub fn cache_expired(img: &api::Image, now: i64, days: i64) -> bool {
    if !img.cached || days <= 0 {
        return false;
    }
    let Some(since) = secs(&img.last_used_at).or_else(|| secs(&img.uploaded_at)) else {
        return false;
    };
    since + days * 86400 <= now
}

/// `images.auto_update_interval` (hours, default 6, 0 = never): whether `minute` (unix seconds
/// of a minute boundary) is an auto-update point.
pub fn auto_update_due(interval: Option<&str>, minute: i64) -> bool {
    let hours = interval.and_then(|v| v.parse::<i64>().ok()).unwrap_or(6);
    hours > 0 && minute % (hours * 3600) == 0
}

/// Delete the cached images past their expiry (the scheduler calls this hourly).
pub fn prune_cached(d: &Ctx, now: i64) {
    let days =
        d.db.lock()
            .expect("db lock")
            .data
            .config
            .get("images.remote_cache_expiry")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(10);
    let Ok(list) = d.images.list() else { return };
    for img in list {
        if !cache_expired(&img, now, days) {
            continue;
        }
        match d.images.delete(&img.fingerprint) {
            Ok(()) => {
                crate::instance::pools::delete_image_volumes(d, &img.fingerprint);
                eprintln!("bivy: deleted expired cached image {}", img.fingerprint);
                d.events.lifecycle(
                    "image-deleted",
                    &format!("/1.0/images/{}", img.fingerprint),
                    serde_json::json!({}),
                );
            }
            Err(e) => eprintln!(
                "bivy: deleting expired cached image {}: {e}",
                img.fingerprint
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(cached: bool, uploaded: &str, used: &str) -> api::Image {
        api::Image {
            cached,
            uploaded_at: uploaded.into(),
            last_used_at: used.into(),
            ..Default::default()
        }
    }

    #[test]
    fn auto_update_points() {
        let h = 3600;
        assert!(auto_update_due(None, 6 * h)); // default: every 6 hours
        assert!(!auto_update_due(None, 7 * h));
        assert!(auto_update_due(Some("1"), 7 * h));
        assert!(!auto_update_due(Some("1"), 7 * h + 60));
        assert!(!auto_update_due(Some("0"), 0)); // 0 disables
        assert!(auto_update_due(Some("bogus"), 12 * h)); // falls back to the default
    }

    #[test]
    fn expiry_decision() {
        let day = 86400;
        let t0 = secs("2024-01-01T00:00:00Z").unwrap();
        let up = "2024-01-01T00:00:00Z";
        let zero = api::ZERO_TIME;
        // Never used: counted from the upload.
        assert!(!cache_expired(&img(true, up, zero), t0 + 10 * day - 1, 10));
        assert!(cache_expired(&img(true, up, zero), t0 + 10 * day, 10));
        // Used later: counted from the use.
        let used = "2024-01-05T00:00:00Z";
        assert!(!cache_expired(&img(true, up, used), t0 + 10 * day, 10));
        assert!(cache_expired(&img(true, up, used), t0 + 14 * day, 10));
        // Not cached, or expiry disabled: never.
        assert!(!cache_expired(&img(false, up, zero), t0 + 100 * day, 10));
        assert!(!cache_expired(&img(true, up, zero), t0 + 100 * day, 0));
        assert!(!cache_expired(&img(true, "", ""), t0 + 100 * day, 10));
    }
}
