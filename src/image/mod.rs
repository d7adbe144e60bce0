//! The local image store: import (unified or split, any compression), fingerprints, aliases,
//! metadata.yaml, safe unpacking, templates, publish and export.
//!
//! Layout under the store directory (`$BIVY_DIR/images`): `<fp>` (the unified tarball or the
//! metadata tarball), `<fp>.rootfs` (split images), `<fp>.json` (the `api::Image` record),
//! `aliases.json`. Every write is atomic (temp file, fsync, rename, fsync dir); an interrupted
//! import leaves only `*.tmp*` files that `Store::open` removes.
//!
//! INTERFACE CONTRACT (the daemon relies on these; keep the signatures): `Store` and its methods,
//! `Upload`, `ImportOpts`, `UnpackOpts`, `Error`, `template::Context`, `apply_templates`.

pub mod template;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::api;

/// Errors, by the HTTP status the daemon maps them to.
#[derive(Debug)]
pub enum Error {
    /// 404
    NotFound(String),
    /// 409 (e.g. the image or alias already exists)
    Conflict(String),
    /// 400 (bad tarball, bad metadata, ambiguous prefix, hash mismatch...)
    BadRequest(String),
    /// 500
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound(m) | Error::Conflict(m) | Error::BadRequest(m) | Error::Internal(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// What is uploaded.
pub enum Upload<'a> {
    /// One tarball: metadata.yaml + rootfs/ + templates/.
    Unified(&'a mut dyn Read),
    /// A metadata tarball and a rootfs tarball (or squashfs).
    Split { metadata: &'a mut dyn Read, rootfs: &'a mut dyn Read },
}

/// Options of an import (from the `X-LXD-*` headers or the JSON body).
#[derive(Debug, Clone, Default)]
pub struct ImportOpts {
    pub filename: String,
    pub public: bool,
    pub auto_update: bool,
    /// Extra properties, merged over metadata.yaml's.
    pub properties: api::StringMap,
    pub profiles: Vec<String>,
    /// When set, the computed fingerprint must equal it.
    pub expected_fingerprint: Option<String>,
    pub cached: bool,
    pub update_source: Option<api::ImageSource>,
}

/// Options of an unpack into a container rootfs.
#[derive(Debug, Clone, Default)]
pub struct UnpackOpts {
    /// Skip device nodes (unprivileged containers cannot use them), logging each one.
    pub skip_devices: bool,
    /// Refuse an image whose expanded size passes this many bytes.
    pub max_bytes: u64,
}

/// The store.
pub struct Store {
    dir: PathBuf,
}

fn not_yet<T>(what: &str) -> Result<T> {
    Err(Error::Internal(format!("not supported yet: {what}")))
}

impl Store {
    /// Open (create) the store; removes leftovers of interrupted imports.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
        Ok(Store { dir: dir.to_path_buf() })
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// All images, sorted by fingerprint.
    pub fn list(&self) -> Result<Vec<api::Image>> {
        Ok(Vec::new())
    }
    /// Find by full fingerprint or unique prefix (ambiguous: BadRequest; none: NotFound).
    pub fn get(&self, fingerprint: &str) -> Result<api::Image> {
        Err(Error::NotFound(format!("Image not found: {fingerprint}")))
    }
    /// Import, streaming to disk while hashing; validates the tarball(s) and metadata.yaml.
    /// An image that already exists is a Conflict naming its fingerprint.
    pub fn import(&self, upload: Upload<'_>, opts: &ImportOpts) -> Result<api::Image> {
        let _ = (upload, opts);
        not_yet("image import")
    }
    /// Replace the writable fields.
    pub fn update(&self, fingerprint: &str, put: &api::ImagePut) -> Result<api::Image> {
        let _ = (fingerprint, put);
        not_yet("image update")
    }
    /// Delete the image files, its record and its aliases.
    pub fn delete(&self, fingerprint: &str) -> Result<()> {
        let _ = fingerprint;
        not_yet("image delete")
    }
    /// Record a use (last_used_at = now).
    pub fn touch(&self, fingerprint: &str) -> Result<()> {
        let _ = fingerprint;
        Ok(())
    }
    /// The parsed metadata.yaml.
    pub fn metadata(&self, fingerprint: &str) -> Result<api::ImageMetadata> {
        let _ = fingerprint;
        not_yet("image metadata")
    }
    /// Unpack the rootfs into `rootfs` (created, must not exist) and the templates directory into
    /// `templates` (created), never writing outside them. On-disk ownership is kept as in the tarball.
    pub fn unpack(&self, fingerprint: &str, rootfs: &Path, templates: &Path, opts: &UnpackOpts) -> Result<()> {
        let _ = (fingerprint, rootfs, templates, opts);
        not_yet("image unpack")
    }
    /// The file(s) to export: the unified tarball, or (metadata, rootfs) for a split image.
    pub fn files(&self, fingerprint: &str) -> Result<(PathBuf, Option<PathBuf>)> {
        let _ = fingerprint;
        not_yet("image export")
    }
    pub fn alias_list(&self) -> Result<Vec<api::ImageAliasesEntry>> {
        Ok(Vec::new())
    }
    pub fn alias_get(&self, name: &str) -> Result<api::ImageAliasesEntry> {
        Err(Error::NotFound(format!("Image alias not found: {name}")))
    }
    /// Create an alias (target must exist; name must be free).
    pub fn alias_create(&self, entry: &api::ImageAliasesEntry) -> Result<()> {
        let _ = entry;
        not_yet("image aliases")
    }
    pub fn alias_update(&self, name: &str, put: &api::ImageAliasesEntryPut) -> Result<()> {
        let _ = (name, put);
        not_yet("image aliases")
    }
    pub fn alias_rename(&self, name: &str, new_name: &str) -> Result<()> {
        let _ = (name, new_name);
        not_yet("image aliases")
    }
    pub fn alias_delete(&self, name: &str) -> Result<()> {
        let _ = name;
        not_yet("image aliases")
    }
}

/// Render the templates of `metadata` whose `when` contains `trigger` into the rootfs, through
/// safe path resolution (never outside `rootfs`). Errors name the template file and line.
pub fn apply_templates(
    metadata: &api::ImageMetadata,
    templates: &Path,
    rootfs: &Path,
    trigger: &str,
    ctx: &template::Context,
) -> Result<()> {
    let _ = (metadata, templates, rootfs, trigger, ctx);
    Ok(())
}
