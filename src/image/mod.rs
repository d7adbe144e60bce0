//! The local image store: import (unified or split, any compression), fingerprints, aliases,
//! metadata.yaml, safe unpacking, templates, publish and export.
//!
//! Layout under the store directory (`$BIVY_DIR/images`): `<fp>` (the unified tarball or the
//! metadata tarball), `<fp>.rootfs` (split images), `<fp>.metadata.yaml` (a copy, so lookups need
//! not decode the tarball), `<fp>.json` (the `api::Image` record),
//! `aliases.json`, `.lock` (flock taken while records change). Every write is atomic (temp file,
//! fsync, rename, fsync dir); an interrupted import leaves only `.import-<pid>-<n>.tmp` files that
//! `Store::open` removes once their process is gone.
//!
//! Import: the upload is streamed into temp files in the store directory while hashed (sha256 of
//! the file, or of metadata‖rootfs), then the whole tarball is decoded and read to its end
//! (truncation and corruption are caught here, not at unpack time), metadata.yaml is validated,
//! and under the lock the data files are renamed into place and `<fp>.json` written last: the
//! record is the commit point, so `list` never shows an image whose files are missing. Any early
//! return removes the temp files (a drop guard).
//!
//! Unpack and templates never write outside their target directory: see `unpack.rs`. `fuzz`
//! holds the fuzzing entry point of the tarball path (import checks, unpack, templates).
//!
//! INTERFACE CONTRACT (the daemon relies on these; keep the signatures): `Store` and its methods,
//! `Upload`, `ImportOpts`, `UnpackOpts`, `Error`, `template::Context`, `apply_templates`.

mod apply;
mod compress;
mod fuzz;
mod metadata;
mod pack;
pub mod simplestreams;
pub mod template;
mod unpack;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest;

use crate::api;
use crate::util::fs::{atomic_write, sync_dir};
use crate::util::revert::Revert;
use crate::util::time;

pub use apply::{
    apply_templates, render as render_templates, write as write_templates, TemplateFile,
};
pub use compress::{sniff, Compression, Encoder, Format};
#[doc(hidden)]
pub use fuzz::fuzz_unpack;
#[doc(hidden)]
pub use metadata::fuzz_metadata;
pub use metadata::{known_architecture, parse as parse_metadata};
pub use pack::{add_tree, pack, Adjust, Links};

/// Whether squashfs rootfs images can be unpacked here (`unsquashfs` on PATH).
pub fn have_unsquashfs() -> bool {
    unpack::which("unsquashfs").is_some()
}

/// Unpack a unified tarball (any compression) that is not in the store, e.g. a storage volume
/// stream, into `rootfs` and `templates` (both created), returning its parsed metadata.yaml.
pub fn unpack_tarball(
    tarball: &std::path::Path,
    rootfs: &std::path::Path,
    templates: &std::path::Path,
    opts: &UnpackOpts,
) -> Result<api::ImageMetadata> {
    let meta = unpack::unpack_unified_meta(tarball, rootfs, templates, opts)?
        .ok_or_else(|| Error::BadRequest("the stream has no metadata.yaml".into()))?;
    metadata::parse(&meta)
}

/// [`unpack_tarball`] from an uncompressed tar stream read once, front to back (a volume sent
/// by another server), with the same rules.
pub fn unpack_stream(
    stream: &mut dyn Read,
    rootfs: &std::path::Path,
    templates: &std::path::Path,
    opts: &UnpackOpts,
) -> Result<api::ImageMetadata> {
    let meta = unpack::unpack_unified_from(tar::Archive::new(stream), rootfs, templates, opts)?
        .ok_or_else(|| Error::BadRequest("the stream has no metadata.yaml".into()))?;
    metadata::parse(&meta)
}

/// Unpack the volumes of an instance backup tarball (LXD's layout: `backup/container/`,
/// `backup/snapshots/<name>/`) with the image unpack rules: for each `(prefix, dir)` the
/// volume's `rootfs/` and `templates/` into `dir` (both made here), returning each volume's
/// `metadata.yaml` when it has one.
pub fn unpack_backup(
    tarball: &std::path::Path,
    volumes: &[(String, std::path::PathBuf)],
    opts: &UnpackOpts,
) -> Result<Vec<Option<Vec<u8>>>> {
    unpack::unpack_backup(tarball, volumes, opts)
}

/// Unpack the trees of a tarball under each `(prefix, dir)`'s `prefix/` into the existing empty
/// directory `dir`, with the image unpack rules.
pub fn unpack_trees(
    tarball: &std::path::Path,
    trees: &[(String, std::path::PathBuf)],
    opts: &UnpackOpts,
) -> Result<()> {
    unpack::unpack_trees(tarball, trees, opts)
}

/// [`unpack_trees`] from an uncompressed tar stream read once, front to back.
pub fn unpack_trees_stream(
    stream: &mut dyn Read,
    trees: &[(String, std::path::PathBuf)],
    opts: &UnpackOpts,
) -> Result<()> {
    unpack::unpack_trees_from(tar::Archive::new(stream), trees, opts)
}

/// Hand the member `name` of a tarball (any compression) to `f`, refused past `limit` bytes (0:
/// no limit); `false` when there is none.
pub fn with_member(
    tarball: &std::path::Path,
    name: &str,
    limit: u64,
    f: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
) -> Result<bool> {
    unpack::with_member(tarball, name, limit, f)
}

/// The first member named `name` of a tarball (any compression), refused past `limit` bytes.
pub fn read_member(tarball: &std::path::Path, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    unpack::read_member(tarball, name, limit)
}

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
    Split {
        metadata: &'a mut dyn Read,
        rootfs: &'a mut dyn Read,
    },
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
    /// Refuse an image whose expanded size (apparent sizes of its files) passes this many bytes;
    /// 0 means no limit.
    pub max_bytes: u64,
}

/// The store.
pub struct Store {
    dir: PathBuf,
    /// `images.max_unpacked_size`: the most an image may expand to (apparent sizes of its files),
    /// checked at import and at unpack.
    max_unpacked: std::sync::atomic::AtomicU64,
}

/// `images.max_unpacked_size` when unset: far above any real system image, far below what a
/// compression or sparse-file bomb claims.
pub const DEFAULT_MAX_UNPACKED: u64 = 64 << 30;

/// The temp files of an import: removed when dropped unless the import committed (every early
/// return of an import leaves nothing behind).
struct TempFiles {
    paths: Vec<PathBuf>,
    revert: Revert,
}

impl TempFiles {
    fn new() -> TempFiles {
        TempFiles {
            paths: Vec::new(),
            revert: Revert::new(),
        }
    }

    /// A new temp file name in `dir`, removed on failure.
    fn add(&mut self, dir: &Path) -> PathBuf {
        let p = dir.join(temp_name());
        self.paths.push(p.clone());
        let q = p.clone();
        self.revert.add(move || {
            let _ = std::fs::remove_file(q);
        });
        p
    }

    fn keep(self) {
        self.revert.commit();
    }
}

/// Names of temp files: `.import-<pid>-<n>.tmp`, removed by `Store::open`.
fn temp_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        ".import-{}-{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the process that made a temp file (`.import-<pid>-<n>.tmp`, or atomic_write's
/// `.<name>.tmp<pid>`) is still running: its file may be an import in flight.
fn owner_alive(name: &str) -> bool {
    let pid = match name.strip_prefix(".import-") {
        Some(rest) => rest.split('-').next().unwrap_or(""),
        None => name.rsplit(".tmp").next().unwrap_or(""),
    };
    match pid.parse::<u32>() {
        Ok(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        Err(_) => false,
    }
}

fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copy `r` into a new file at `path` while hashing; returns the bytes copied.
fn stage(r: &mut dyn Read, path: &Path, ctx: &mut digest::Context) -> Result<u64> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| internal(path.display(), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::BadRequest(format!("reading the upload: {e}"))),
        };
        ctx.update(&buf[..n]);
        f.write_all(&buf[..n])
            .map_err(|e| internal(path.display(), e))?;
        total += n as u64;
    }
    f.sync_all().map_err(|e| internal(path.display(), e))?;
    Ok(total)
}

/// What the tarball scan looks for.
#[derive(Clone, Copy, PartialEq)]
enum ScanKind {
    /// metadata.yaml + rootfs/ + templates/
    Unified,
    /// metadata.yaml + templates/
    Metadata,
    /// the filesystem itself
    Rootfs,
}

/// A member path's components: leading slashes are stripped (as GNU tar and LXD do: an
/// absolute member lands under the root), `.` and empty components dropped; `None` when a
/// component is `..`.
pub(crate) fn clean_path(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Open a (possibly compressed) tarball.
pub(crate) fn open_tar(path: &Path) -> Result<tar::Archive<Box<dyn Read>>> {
    let mut f = File::open(path).map_err(|e| internal(path.display(), e))?;
    let mut head = Vec::with_capacity(compress::SNIFF_LEN);
    (&mut f)
        .take(compress::SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| internal(path.display(), e))?;
    let fmt = compress::sniff(&head);
    let r: Box<dyn Read> = Box::new(io::Cursor::new(head).chain(f));
    Ok(tar::Archive::new(compress::decoder(fmt, r)?))
}

/// The format of a stored file.
fn file_format(path: &Path) -> Result<compress::Format> {
    let f = File::open(path).map_err(|e| internal(path.display(), e))?;
    let mut head = Vec::new();
    f.take(compress::SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| internal(path.display(), e))?;
    Ok(compress::sniff(&head))
}

/// What [`scan`] found in a tarball.
struct Scanned {
    /// metadata.yaml, when there is one.
    meta: Option<Vec<u8>>,
    /// Whether a `rootfs/` member was seen.
    has_rootfs: bool,
    /// The rootfs as unpacking would make it (when `check` was given and the tarball has one).
    rootfs: Option<unpack::Model>,
}

/// Read a whole tarball, checking it decodes to the end; returns metadata.yaml (when wanted) and
/// whether a rootfs/ member was seen. With `check`, every rootfs and templates member also goes
/// through the unpack rules ([`unpack::Model`]), so what would fail to unpack fails here.
fn scan(
    path: &Path,
    kind: ScanKind,
    stop_at_metadata: bool,
    check: Option<&UnpackOpts>,
) -> Result<Scanned> {
    let bad = |e: io::Error| Error::BadRequest(format!("invalid image tarball: {e}"));
    let mut ar = open_tar(path)?;
    let mut meta = None;
    let mut rootfs = false;
    let mut rootfs_model = check.map(unpack::Model::new);
    let mut templates_model = check.map(unpack::Model::new);
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path_bytes().into_owned();
        let Some(parts) = clean_path(&raw) else {
            return Err(Error::BadRequest(format!(
                "invalid image tarball: unsafe member path {:?} (with \"..\")",
                String::from_utf8_lossy(&raw)
            )));
        };
        if kind == ScanKind::Rootfs {
            if let Some(m) = &mut rootfs_model {
                m.member(&parts, &mut entry, None)?;
            }
            continue;
        }
        match parts.as_slice() {
            [b"metadata.yaml"] if entry.header().entry_type().is_file() => {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(1 << 20)
                    .read_to_end(&mut buf)
                    .map_err(bad)?;
                if buf.len() >= 1 << 20 {
                    return Err(Error::BadRequest(
                        "invalid image tarball: metadata.yaml is larger than 1 MiB".into(),
                    ));
                }
                meta = Some(buf);
                if stop_at_metadata {
                    return Ok(Scanned {
                        meta,
                        has_rootfs: rootfs,
                        rootfs: None,
                    });
                }
            }
            [b"rootfs", rest @ ..] if kind == ScanKind::Unified => {
                rootfs = true;
                if let Some(m) = &mut rootfs_model {
                    m.member(rest, &mut entry, Some(b"rootfs"))?;
                }
            }
            [b"rootfs", ..] => rootfs = true,
            [b"templates", rest @ ..] => {
                if let Some(m) = &mut templates_model {
                    m.member(rest, &mut entry, Some(b"templates"))?;
                }
            }
            [b"rootfs.img"] => {
                return Err(Error::BadRequest(
                    "not supported yet: virtual-machine images (rootfs.img)".into(),
                ))
            }
            _ => {}
        }
    }
    // Drain what follows the end-of-archive blocks so the decoder checks its trailer (crc, size).
    io::copy(ar.into_inner().by_ref(), &mut io::sink()).map_err(bad)?;
    Ok(Scanned {
        meta,
        has_rootfs: rootfs,
        rootfs: if kind == ScanKind::Metadata {
            None
        } else {
            rootfs_model
        },
    })
}

/// The checks of an import on the staged file(s): the tarball(s) decode to their end, every
/// member passes the unpack rules, metadata.yaml is there and valid, and every template target
/// can be written into the rootfs. Returns metadata.yaml, raw and parsed.
fn check_staged(
    meta_tmp: &Path,
    rootfs_tmp: Option<&Path>,
    rules: &UnpackOpts,
) -> Result<(Vec<u8>, api::ImageMetadata)> {
    let (meta_yaml, model) = match rootfs_tmp {
        None => {
            let sc = scan(meta_tmp, ScanKind::Unified, false, Some(rules))?;
            let meta = sc.meta.ok_or_else(|| {
                Error::BadRequest("invalid image tarball: metadata.yaml is missing".into())
            })?;
            if !sc.has_rootfs {
                return Err(Error::BadRequest(
                    "invalid image tarball: rootfs/ is missing".into(),
                ));
            }
            (meta, sc.rootfs)
        }
        Some(rootfs_tmp) => {
            let sc = scan(meta_tmp, ScanKind::Metadata, false, Some(rules))?;
            let meta = sc.meta.ok_or_else(|| {
                Error::BadRequest("invalid metadata tarball: metadata.yaml is missing".into())
            })?;
            let model = match file_format(rootfs_tmp)? {
                // unsquashfs unpacks it; its own checks apply then.
                compress::Format::Squashfs => None,
                compress::Format::Qcow2 => {
                    return Err(Error::BadRequest(
                        "not supported yet: virtual-machine images (qcow2 rootfs)".into(),
                    ))
                }
                _ => scan(rootfs_tmp, ScanKind::Rootfs, false, Some(rules))?.rootfs,
            };
            (meta, model)
        }
    };
    let meta = metadata::parse(&meta_yaml)?;
    // Every template must be writable at start, into the rootfs as it unpacks.
    if let Some(model) = &model {
        for path in meta.templates.keys() {
            model.check_template_target(path)?;
        }
    }
    Ok((meta_yaml, meta))
}

impl Store {
    /// Open (create) the store; removes leftovers of interrupted imports.
    pub fn open(dir: &Path) -> Result<Store> {
        crate::util::fs::create_dir_mode(dir, 0o700).map_err(|e| internal(dir.display(), e))?;
        let rd = std::fs::read_dir(dir).map_err(|e| internal(dir.display(), e))?;
        let names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for name in &names {
            if name.starts_with('.') && name.contains(".tmp") && !owner_alive(name) {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        let store = Store {
            dir: dir.to_path_buf(),
            max_unpacked: DEFAULT_MAX_UNPACKED.into(),
        };
        // An import killed between moving its data into place and writing its record leaves
        // data no record owns: never adopted by a later import, removed here (under the store
        // lock, which a commit holds from its first rename to its record).
        let _lock = store.lock()?;
        let names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| internal(dir.display(), e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for name in &names {
            let fp = name
                .strip_suffix(".rootfs")
                .or_else(|| name.strip_suffix(".metadata.yaml"))
                .unwrap_or(name);
            let is_fp = fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit());
            if is_fp && !names.iter().any(|n| *n == format!("{fp}.json")) {
                eprintln!(
                    "bivy: removing {} (image data of an import that did not finish)",
                    dir.join(name).display()
                );
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        drop(_lock);
        Ok(store)
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Set `images.max_unpacked_size` (bytes).
    pub fn set_max_unpacked(&self, bytes: u64) {
        self.max_unpacked
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// `images.max_unpacked_size` (bytes).
    pub fn max_unpacked(&self) -> u64 {
        self.max_unpacked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The rules an unpack of this store's images follows (see [`unpack::Model`]).
    fn unpack_rules(&self) -> UnpackOpts {
        UnpackOpts {
            skip_devices: true,
            max_bytes: self.max_unpacked(),
        }
    }

    fn record_path(&self, fp: &str) -> PathBuf {
        self.dir.join(format!("{fp}.json"))
    }
    fn data_path(&self, fp: &str) -> PathBuf {
        self.dir.join(fp)
    }
    /// A copy of metadata.yaml, so `metadata` need not decode the tarball.
    fn yaml_path(&self, fp: &str) -> PathBuf {
        self.dir.join(format!("{fp}.metadata.yaml"))
    }
    fn rootfs_path(&self, fp: &str) -> PathBuf {
        self.dir.join(format!("{fp}.rootfs"))
    }

    /// An exclusive lock over the store's records (flock on `.lock`; also excludes other
    /// threads, which open their own file description).
    fn lock(&self) -> Result<File> {
        let p = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| internal(p.display(), e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| internal(p.display(), e))?;
        Ok(f)
    }

    fn read_record(&self, fp: &str) -> Result<api::Image> {
        let p = self.record_path(fp);
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound("Image not found".into()))
            }
            Err(e) => return Err(internal(p.display(), e)),
        };
        serde_json::from_slice(&data).map_err(|e| internal(p.display(), e))
    }

    fn write_record(&self, img: &api::Image) -> Result<()> {
        let mut rec = img.clone();
        rec.aliases.clear();
        let p = self.record_path(&img.fingerprint);
        let data = serde_json::to_vec_pretty(&rec).map_err(|e| internal(p.display(), e))?;
        atomic_write(&p, &data).map_err(|e| internal(p.display(), e))
    }

    fn fingerprints(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| internal(self.dir.display(), e))?;
        let mut out: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let fp = n.strip_suffix(".json")?;
                is_fingerprint(fp).then(|| fp.to_string())
            })
            .collect();
        crate::util::sort::sort(&mut out);
        Ok(out)
    }

    /// Full fingerprint from a full one or a unique prefix.
    fn resolve(&self, prefix: &str) -> Result<String> {
        let nf = || Error::NotFound("Image not found".into());
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(nf());
        }
        let prefix = prefix.to_ascii_lowercase();
        let all: Vec<String> = self
            .fingerprints()?
            .into_iter()
            .filter(|f| f.starts_with(&prefix))
            .collect();
        match all.len() {
            0 => Err(nf()),
            1 => Ok(all.into_iter().next().expect("one element")),
            n => Err(Error::BadRequest(format!(
                "Image prefix {prefix:?} is ambiguous: {n} images match"
            ))),
        }
    }

    fn with_aliases(&self, mut img: api::Image, aliases: &[api::ImageAliasesEntry]) -> api::Image {
        img.aliases = aliases
            .iter()
            .filter(|a| a.target == img.fingerprint)
            .map(|a| api::ImageAlias {
                name: a.name.clone(),
                description: a.description.clone(),
            })
            .collect();
        img
    }

    /// All images, sorted by fingerprint.
    pub fn list(&self) -> Result<Vec<api::Image>> {
        let aliases = self.read_aliases()?;
        let mut out = Vec::new();
        for fp in self.fingerprints()? {
            match self.read_record(&fp) {
                Ok(img) => out.push(self.with_aliases(img, &aliases)),
                Err(Error::NotFound(_)) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    /// Find by full fingerprint or unique prefix (ambiguous: BadRequest; none: NotFound).
    pub fn get(&self, fingerprint: &str) -> Result<api::Image> {
        let fp = self.resolve(fingerprint)?;
        let img = self.read_record(&fp)?;
        Ok(self.with_aliases(img, &self.read_aliases()?))
    }

    /// Import, streaming to disk while hashing; validates the tarball(s) and metadata.yaml.
    /// An image that already exists is a Conflict naming its fingerprint.
    pub fn import(&self, upload: Upload<'_>, opts: &ImportOpts) -> Result<api::Image> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut temps = TempFiles::new();
        let meta_tmp = temps.add(&self.dir);
        let (size, rootfs_tmp) = match upload {
            Upload::Unified(r) => (stage(r, &meta_tmp, &mut ctx)?, None),
            Upload::Split { metadata, rootfs } => {
                let rootfs_tmp = temps.add(&self.dir);
                let a = stage(metadata, &meta_tmp, &mut ctx)?;
                let b = stage(rootfs, &rootfs_tmp, &mut ctx)?;
                (a + b, Some(rootfs_tmp))
            }
        };
        let fp = hex(ctx.finish().as_ref());
        self.commit(temps, &fp, size, rootfs_tmp.as_deref(), opts)
    }

    /// Validate the staged file(s) and move them into place as image `fp`.
    fn commit(
        &self,
        temps: TempFiles,
        fp: &str,
        size: u64,
        rootfs_tmp: Option<&Path>,
        opts: &ImportOpts,
    ) -> Result<api::Image> {
        let meta_tmp = temps.paths[0].clone();
        if let Some(want) = &opts.expected_fingerprint {
            if !want.is_empty() && want.to_ascii_lowercase() != fp {
                return Err(Error::BadRequest(format!(
                    "Fingerprint doesn't match: expected {want}, got {fp}"
                )));
            }
        }
        let dup = || Error::Conflict("Image with same fingerprint already exists".into());
        if self.record_path(fp).exists() {
            return Err(dup());
        }
        let (meta_yaml, meta) = check_staged(&meta_tmp, rootfs_tmp, &self.unpack_rules())?;

        let now = time::now();
        let mut properties = meta.properties.clone();
        properties.extend(opts.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        let img = api::Image {
            put: api::ImagePut {
                auto_update: opts.auto_update,
                properties,
                public: opts.public,
                expires_at: if meta.expiry_date > 0 {
                    time::format(meta.expiry_date, 0)
                } else {
                    api::ZERO_TIME.into()
                },
                profiles: if opts.profiles.is_empty() {
                    vec!["default".into()]
                } else {
                    opts.profiles.clone()
                },
            },
            aliases: Vec::new(),
            architecture: meta.architecture.clone(),
            cached: opts.cached,
            filename: opts.filename.clone(),
            fingerprint: fp.to_string(),
            size: size as i64,
            update_source: opts.update_source.clone(),
            kind: "container".into(),
            created_at: time::format(meta.creation_date, 0),
            last_used_at: api::ZERO_TIME.into(),
            uploaded_at: now,
        };

        // The record is the commit point: data files first, then `<fp>.json`, all under the lock
        // so that two concurrent imports of one image dedupe.
        let _lock = self.lock()?;
        if self.record_path(fp).exists() {
            return Err(dup());
        }
        if let Some(rootfs_tmp) = rootfs_tmp {
            let dst = self.rootfs_path(fp);
            std::fs::rename(rootfs_tmp, &dst).map_err(|e| internal(dst.display(), e))?;
        } else {
            // Whatever is there belongs to no record (checked above, under the lock); a unified
            // image must not pick it up as its rootfs.
            let _ = std::fs::remove_file(self.rootfs_path(fp));
        }
        let dst = self.data_path(fp);
        std::fs::rename(&meta_tmp, &dst).map_err(|e| internal(dst.display(), e))?;
        temps.keep();
        let yaml = self.yaml_path(fp);
        let res = atomic_write(&yaml, &meta_yaml).map_err(|e| internal(yaml.display(), e));
        if let Err(e) = res.and_then(|()| self.write_record(&img)) {
            for p in [self.data_path(fp), self.rootfs_path(fp), yaml] {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        let _ = sync_dir(&self.dir);
        Ok(img)
    }

    /// Publish: pack `rootfs` (+ `templates`) into a unified tarball and import it.
    pub fn publish(
        &self,
        rootfs: &Path,
        metadata: &api::ImageMetadata,
        templates: Option<&Path>,
        compression: Compression,
        opts: &ImportOpts,
    ) -> Result<api::Image> {
        let mut temps = TempFiles::new();
        let tmp = temps.add(&self.dir);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| internal(tmp.display(), e))?;
        let mut w = HashWriter {
            inner: io::BufWriter::new(f),
            ctx: digest::Context::new(&digest::SHA256),
            n: 0,
        };
        pack::pack(rootfs, metadata, templates, compression, &mut w)?;
        let f = w
            .inner
            .into_inner()
            .map_err(|e| internal(tmp.display(), e.error()))?;
        f.sync_all().map_err(|e| internal(tmp.display(), e))?;
        let fp = hex(w.ctx.finish().as_ref());
        self.commit(temps, &fp, w.n, None, opts)
    }

    /// Replace the writable fields.
    pub fn update(&self, fingerprint: &str, put: &api::ImagePut) -> Result<api::Image> {
        let fp = self.resolve(fingerprint)?;
        let _lock = self.lock()?;
        let mut img = self.read_record(&fp)?;
        img.put = put.clone();
        if img.put.expires_at.is_empty() {
            img.put.expires_at = api::ZERO_TIME.into();
        }
        self.write_record(&img)?;
        drop(_lock);
        self.get(&fp)
    }
    /// Delete the image files, its record and its aliases.
    pub fn delete(&self, fingerprint: &str) -> Result<()> {
        let fp = self.resolve(fingerprint)?;
        let _lock = self.lock()?;
        let mut aliases = self.read_aliases()?;
        let before = aliases.len();
        aliases.retain(|a| a.target != fp);
        if aliases.len() != before {
            self.write_aliases(&aliases)?;
        }
        let rec = self.record_path(&fp);
        std::fs::remove_file(&rec).map_err(|e| internal(rec.display(), e))?;
        for p in [
            self.data_path(&fp),
            self.rootfs_path(&fp),
            self.yaml_path(&fp),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(internal(p.display(), e)),
            }
        }
        let _ = sync_dir(&self.dir);
        Ok(())
    }
    /// Set the `cached` flag (an image pulled for an instance, deleted when unused for
    /// `images.remote_cache_expiry` days).
    pub fn set_cached(&self, fingerprint: &str, cached: bool) -> Result<()> {
        let fp = self.resolve(fingerprint)?;
        let _lock = self.lock()?;
        let mut img = self.read_record(&fp)?;
        img.cached = cached;
        self.write_record(&img)
    }
    /// Record a use (last_used_at = now).
    pub fn touch(&self, fingerprint: &str) -> Result<()> {
        let fp = self.resolve(fingerprint)?;
        let _lock = self.lock()?;
        let mut img = self.read_record(&fp)?;
        img.last_used_at = time::now();
        self.write_record(&img)
    }
    /// The parsed metadata.yaml.
    pub fn metadata(&self, fingerprint: &str) -> Result<api::ImageMetadata> {
        let fp = self.resolve(fingerprint)?;
        if let Ok(yaml) = std::fs::read(self.yaml_path(&fp)) {
            return metadata::parse(&yaml);
        }
        let kind = if self.rootfs_path(&fp).exists() {
            ScanKind::Metadata
        } else {
            ScanKind::Unified
        };
        let meta = scan(&self.data_path(&fp), kind, true, None)?.meta;
        let meta =
            meta.ok_or_else(|| Error::Internal(format!("image {fp}: metadata.yaml is missing")))?;
        metadata::parse(&meta)
    }
    /// Unpack the rootfs into `rootfs` (created, must not exist) and the templates directory into
    /// `templates` (created), never writing outside them. On-disk ownership is kept as in the tarball.
    pub fn unpack(
        &self,
        fingerprint: &str,
        rootfs: &Path,
        templates: &Path,
        opts: &UnpackOpts,
    ) -> Result<()> {
        let fp = self.resolve(fingerprint)?;
        let data = self.data_path(&fp);
        let split = self.rootfs_path(&fp);
        if split.exists() {
            unpack::unpack_split(&data, &split, rootfs, templates, opts)
        } else {
            unpack::unpack_unified(&data, rootfs, templates, opts)
        }
    }
    /// Apparent size of the regular files of the image's rootfs (to check quotas before unpacking).
    pub fn rootfs_size(&self, fingerprint: &str) -> Result<u64> {
        let fp = self.resolve(fingerprint)?;
        let split = self.rootfs_path(&fp);
        if split.exists() {
            if file_format(&split)? == compress::Format::Squashfs {
                return Err(Error::Internal(
                    "not supported yet: size of a squashfs rootfs".into(),
                ));
            }
            unpack::rootfs_size(&split, None)
        } else {
            unpack::rootfs_size(&self.data_path(&fp), Some(b"rootfs"))
        }
    }
    /// The file(s) to export: the unified tarball, or (metadata, rootfs) for a split image.
    pub fn files(&self, fingerprint: &str) -> Result<(PathBuf, Option<PathBuf>)> {
        let fp = self.resolve(fingerprint)?;
        self.read_record(&fp)?;
        let split = self.rootfs_path(&fp);
        Ok((self.data_path(&fp), split.exists().then_some(split)))
    }

    fn read_aliases(&self) -> Result<Vec<api::ImageAliasesEntry>> {
        let p = self.dir.join("aliases.json");
        match std::fs::read(&p) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| internal(p.display(), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(internal(p.display(), e)),
        }
    }
    fn write_aliases(&self, aliases: &[api::ImageAliasesEntry]) -> Result<()> {
        let p = self.dir.join("aliases.json");
        let data = serde_json::to_vec_pretty(aliases).map_err(|e| internal(p.display(), e))?;
        atomic_write(&p, &data).map_err(|e| internal(p.display(), e))
    }
    fn check_alias_name(name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::BadRequest("Alias name missing".into()));
        }
        // Slashes are LXD's usual `distro/release` names; an empty part (`a//b`, `/a`, `a/`)
        // could not be named in a path.
        if name.split('/').any(str::is_empty) || name.chars().any(|c| c.is_control()) {
            return Err(Error::BadRequest(format!(
                "Alias name {name:?} is invalid: it may not contain control characters or an empty part between slashes"
            )));
        }
        Ok(())
    }

    pub fn alias_list(&self) -> Result<Vec<api::ImageAliasesEntry>> {
        let mut a = self.read_aliases()?;
        crate::util::sort::sort_by(&mut a, |x, y| x.name.cmp(&y.name));
        Ok(a)
    }
    pub fn alias_get(&self, name: &str) -> Result<api::ImageAliasesEntry> {
        self.read_aliases()?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::NotFound("Image alias not found".into()))
    }
    /// Create an alias (target must exist; name must be free).
    pub fn alias_create(&self, entry: &api::ImageAliasesEntry) -> Result<()> {
        Self::check_alias_name(&entry.name)?;
        let target = self.resolve(&entry.target)?;
        let _lock = self.lock()?;
        self.read_record(&target)?;
        let mut aliases = self.read_aliases()?;
        if aliases.iter().any(|a| a.name == entry.name) {
            return Err(Error::Conflict(format!(
                "Alias {:?} already exists",
                entry.name
            )));
        }
        let mut e = entry.clone();
        e.target = target;
        if e.kind.is_empty() {
            e.kind = "container".into();
        }
        aliases.push(e);
        self.write_aliases(&aliases)
    }
    pub fn alias_update(&self, name: &str, put: &api::ImageAliasesEntryPut) -> Result<()> {
        let target = self.resolve(&put.target)?;
        let _lock = self.lock()?;
        self.read_record(&target)?;
        let mut aliases = self.read_aliases()?;
        let a = aliases
            .iter_mut()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::NotFound("Image alias not found".into()))?;
        a.description = put.description.clone();
        a.target = target;
        self.write_aliases(&aliases)
    }
    pub fn alias_rename(&self, name: &str, new_name: &str) -> Result<()> {
        Self::check_alias_name(new_name)?;
        let _lock = self.lock()?;
        let mut aliases = self.read_aliases()?;
        if aliases.iter().any(|a| a.name == new_name) {
            return Err(Error::Conflict(format!(
                "Alias {new_name:?} already exists"
            )));
        }
        let a = aliases
            .iter_mut()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::NotFound("Image alias not found".into()))?;
        a.name = new_name.to_string();
        self.write_aliases(&aliases)
    }
    pub fn alias_delete(&self, name: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut aliases = self.read_aliases()?;
        let before = aliases.len();
        aliases.retain(|a| a.name != name);
        if aliases.len() == before {
            return Err(Error::NotFound("Image alias not found".into()));
        }
        self.write_aliases(&aliases)
    }
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W: Write> {
    inner: W,
    ctx: digest::Context,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Unpack a unified image tarball that is not in a store, with the same rules as `Store::unpack`.
pub fn unpack_unified_file(
    tarball: &Path,
    rootfs: &Path,
    templates: &Path,
    opts: &UnpackOpts,
) -> Result<()> {
    unpack::unpack_unified(tarball, rootfs, templates, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        type Case<'a> = (&'a [u8], Option<&'a [&'a [u8]]>);
        let cases: &[Case] = &[
            (b"rootfs/bin/sh", Some(&[b"rootfs", b"bin", b"sh"])),
            (b"./rootfs/./etc/", Some(&[b"rootfs", b"etc"])),
            (b"metadata.yaml", Some(&[b"metadata.yaml"])),
            (b"./", Some(&[])),
            (b"rootfs//x", Some(&[b"rootfs", b"x"])),
            (b"/etc/passwd", Some(&[b"etc", b"passwd"])),
            (
                b"//rootfs/etc/inittab",
                Some(&[b"rootfs", b"etc", b"inittab"]),
            ),
            (b"/rootfs/../x", None),
            (b"rootfs/../../evil", None),
            (b"..", None),
            (b"a/..b", Some(&[b"a", b"..b"])),
        ];
        for (raw, want) in cases {
            assert_eq!(
                clean_path(raw).as_deref(),
                *want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn temp_file_owners() {
        let me = std::process::id();
        assert!(owner_alive(&format!(".import-{me}-3.tmp")));
        assert!(owner_alive(&format!(".aliases.json.tmp{me}")));
        assert!(!owner_alive(".import-999999999-3.tmp"));
        assert!(!owner_alive(".x.tmpjunk"));
    }
}
