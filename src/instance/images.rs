//! Image orchestration in the model: what happens once an image is made (by a publish or a URL
//! import), for every path that makes one.

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
    let mut meta = read_metadata(vol, architecture)?;
    meta.creation_date = time::now_secs();
    meta.architecture = architecture.to_string();
    meta.properties.extend(body.put.properties.clone());
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
