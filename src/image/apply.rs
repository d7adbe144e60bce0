//! An image's templates applied to an instance's rootfs, in two halves: [`render`] reads and
//! renders the templates a trigger selects (no write), [`write`] puts what they rendered into a
//! rootfs through safe path resolution (never outside it). The daemon renders; the writing is
//! its own for a plain volume, and the container's init's, on the container's own overlay
//! before anything is mounted in it, for a layered one (runtime/init.rs): no second overlay is
//! mounted for it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{clean_path, template, unpack, Error, Result};
use crate::api;

/// A template's output for one file of the rootfs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateFile {
    /// The target: a clean absolute path in the rootfs.
    pub path: String,
    pub content: String,
    /// Written only when nothing is at `path` yet.
    #[serde(default)]
    pub create_only: bool,
}

/// The components of a template target, which must be a clean absolute path.
fn target_parts(path: &str) -> Result<Vec<&[u8]>> {
    clean_path(path.trim_start_matches('/').as_bytes())
        .filter(|p| !p.is_empty() && path.starts_with('/'))
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "template target {path:?} is not a clean absolute path"
            ))
        })
}

/// Render the templates of `metadata` whose `when` contains `trigger`, read from `templates`
/// without following a symlink in it. Errors name the template file and line.
pub fn render(
    metadata: &api::ImageMetadata,
    templates: &Path,
    trigger: &str,
    ctx: &template::Context,
) -> Result<Vec<TemplateFile>> {
    use rustix::fs::{FileType, Mode, OFlags};
    let wanted: Vec<_> = metadata
        .templates
        .iter()
        .filter(|(_, t)| t.when.iter().any(|w| w == trigger))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let tpl_root = unpack::open_root(templates)?;
    let mut out = Vec::with_capacity(wanted.len());
    for (path, t) in wanted {
        let tpl_parts = clean_path(t.template.as_bytes())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::BadRequest(format!("template {}: bad file name", t.template)))?;
        let (tname, tparents) = tpl_parts.split_last().expect("non-empty");
        let tdir = unpack::walk(&tpl_root, tparents, false, &tpl_parts)?;
        // O_NONBLOCK: a fifo planted in the templates must not hang us; only regular files are read.
        let tpl_err =
            |e: &dyn std::fmt::Display| Error::BadRequest(format!("template {}: {e}", t.template));
        let fd = rustix::fs::openat(
            &tdir,
            *tname,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| tpl_err(&e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| tpl_err(&e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(tpl_err(&"not a regular file"));
        }
        let mut src = String::new();
        File::from(fd)
            .take(4 << 20)
            .read_to_string(&mut src)
            .map_err(|e| tpl_err(&e))?;
        let vars = template::variables(ctx, trigger, path, &t.properties);
        let content = template::render(&t.template, &src, &vars)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        target_parts(path)?;
        out.push(TemplateFile {
            path: path.clone(),
            content,
            create_only: t.create_only,
        });
    }
    Ok(out)
}

/// Write rendered templates into `rootfs`, in order, as LXD does: missing parents are created
/// (0755, owned by the writer: container root), new files are 0644 owned by uid 0, existing
/// files are truncated and keep their owner and mode, and `create_only` ones skip an existing
/// file. A symlink at the target is replaced, not followed; one among the parents is refused.
pub fn write(files: &[TemplateFile], rootfs: &Path) -> Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    if files.is_empty() {
        return Ok(());
    }
    let root = unpack::open_root(rootfs)?;
    for f in files {
        let path = &f.path;
        let parts = target_parts(path)?;
        let (name, parents) = parts.split_last().expect("non-empty");
        let dir = unpack::walk(&root, parents, true, &parts)?;
        let io_err = |e: rustix::io::Errno| Error::Internal(format!("template target {path}: {e}"));
        let existing = rustix::fs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW).ok();
        let regular = existing
            .as_ref()
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
        if existing.is_some() && f.create_only {
            continue;
        }
        let fd = match regular {
            Some(true) => rustix::fs::openat(
                &dir,
                *name,
                OFlags::WRONLY | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err)?,
            other => {
                if other == Some(false) {
                    rustix::fs::unlinkat(&dir, *name, AtFlags::empty()).map_err(io_err)?;
                }
                let fd = rustix::fs::openat(
                    &dir,
                    *name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .map_err(io_err)?;
                rustix::fs::fchown(
                    &fd,
                    Some(rustix::fs::Uid::ROOT),
                    Some(rustix::fs::Gid::ROOT),
                )
                .map_err(io_err)?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644)).map_err(io_err)?;
                fd
            }
        };
        File::from(fd)
            .write_all(f.content.as_bytes())
            .map_err(|e| Error::Internal(format!("template target {path}: {e}")))?;
    }
    Ok(())
}

/// [`render`] the templates `trigger` selects and [`write`] them into `rootfs`.
pub fn apply_templates(
    metadata: &api::ImageMetadata,
    templates: &Path,
    rootfs: &Path,
    trigger: &str,
    ctx: &template::Context,
) -> Result<()> {
    write(&render(metadata, templates, trigger, ctx)?, rootfs)
}
