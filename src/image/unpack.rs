//! Safe unpacking of image tarballs into a new directory.
//!
//! Threat model: the tarball is hostile. Nothing may be created or changed outside the target
//! directory. Every member path is cleaned (absolute paths and `..` are refused), every parent
//! directory is walked one component at a time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS)` from the previous directory fd (so a symlink planted by an earlier
//! member is never followed), and the final component is created relative to its parent fd with
//! `O_NOFOLLOW | O_EXCL`. Hard links may only point at regular files this unpack already
//! extracted. Sizes are checked against `max_bytes` before anything is written.
//! This module must not use path-based std::fs calls inside the target.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::{clean_path, open_tar, Error, Result, UnpackOpts};
use crate::util::revert::Revert;

/// Member metadata applied after the data is written.
#[derive(Clone, Default)]
pub(crate) struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    mtime_nsec: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn show(rel: &[&[u8]]) -> String {
    String::from_utf8_lossy(&rel.join(&b'/')).into_owned()
}

fn bad(msg: String) -> Error {
    Error::BadRequest(msg)
}

/// Extracts members under one root directory.
pub(crate) struct Extractor<'a> {
    root: OwnedFd,
    opts: &'a UnpackOpts,
    /// The rules, checked on each member before anything is written.
    model: Model,
    /// Directories, fixed up (owner, mode, times, xattrs) once all members are written.
    dirs: Vec<(Vec<Vec<u8>>, Meta)>,
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

/// Open `root` as a directory fd for walking.
pub(crate) fn open_root(root: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Internal(format!("{}: {e}", root.display())))
}

/// Walk `dirs` from `root` one component at a time, never following a symlink, creating missing
/// directories (mode 0755, root-owned) when `create` is set. Returns an `O_PATH` directory fd.
pub(crate) fn walk(
    root: &OwnedFd,
    dirs: &[&[u8]],
    create: bool,
    whole: &[&[u8]],
) -> Result<OwnedFd> {
    let mut cur = rustix::fs::openat(
        root,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Internal(format!("reopening the target directory: {e}")))?;
    for c in dirs {
        let open = |cur: &OwnedFd| {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat2(cur, *c, flags, Mode::empty(), resolve_flags()) {
                // Kernels before 5.6: for one clean component (no `/`, no `..`), O_NOFOLLOW |
                // O_DIRECTORY gives the same guarantee.
                Err(Errno::NOSYS) => rustix::fs::openat(cur, *c, flags, Mode::empty()),
                r => r,
            }
        };
        let next = match open(&cur) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(Error::Internal(format!(
                            "creating parent of {}: {e}",
                            show(whole)
                        )))
                    }
                }
                open(&cur)
                    .map_err(|e| bad(format!("unsafe path in image: {}: {e}", show(whole))))?
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) | Err(Errno::XDEV) => {
                return Err(bad(format!(
                    "unsafe path in image: {} (a parent is a symlink or not a directory)",
                    show(whole)
                )))
            }
            Err(e) => return Err(bad(format!("unsafe path in image: {}: {e}", show(whole)))),
        };
        cur = next;
    }
    Ok(cur)
}

fn ts(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Member metadata from the header and its PAX records.
fn member_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(Meta, u64, bool)> {
    let h = entry.header();
    // Owners as the header and the PAX records give them, checked once both are read.
    let (mut uid, mut gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
    let mut m = Meta {
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        mtime: h.mtime().unwrap_or(0) as i64,
        ..Meta::default()
    };
    // Apparent size: the GNU sparse real size when there is one.
    let mut apparent = h.size().unwrap_or(0).max(entry.size());
    let mut pax_sparse = false;
    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| bad(format!("invalid image tarball: {e}")))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| bad(format!("invalid image tarball: {e}")))?;
            let Ok(key) = ext.key() else { continue };
            let val = ext.value_bytes();
            let num = || {
                std::str::from_utf8(val)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
            };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                m.xattrs.push((name.to_string(), val.to_vec()));
            } else if key == "uid" {
                uid = num().unwrap_or(uid);
            } else if key == "gid" {
                gid = num().unwrap_or(gid);
            } else if key == "mtime" {
                let s = String::from_utf8_lossy(val);
                let (sec, frac) = s.split_once('.').unwrap_or((&s, ""));
                if let Ok(sec) = sec.parse::<i64>() {
                    m.mtime = sec;
                    let digits: String =
                        frac.chars().chain(std::iter::repeat('0')).take(9).collect();
                    m.mtime_nsec = digits.parse().unwrap_or(0);
                }
            } else if key == "GNU.sparse.realsize" || key == "GNU.sparse.size" {
                apparent = apparent.max(num().unwrap_or(0));
                pax_sparse = true;
            } else if key.starts_with("GNU.sparse.") {
                pax_sparse = true;
            }
        }
    }
    // An id is 32 bits and -1 means "no change" to chown: a larger one was cut to its low bits
    // (2^32 became root), -1 left the unpacker's own.
    let id = |v: u64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| {
                bad(format!(
                    "invalid image tarball: {}: {what} {v} is not a valid id",
                    String::from_utf8_lossy(&entry.path_bytes())
                ))
            })
    };
    m.uid = id(uid, "uid")?;
    m.gid = id(gid, "gid")?;
    Ok((m, apparent, pax_sparse))
}

/// A hard link's target as a path under the tree: cleaned, with `link_prefix` (`rootfs/` in a
/// unified tarball, `backup/container/rootfs` in a backup; any number of components) stripped. `None` when it is unsafe, outside the prefix, or the root itself.
fn link_target<'a>(raw: &'a [u8], link_prefix: Option<&[u8]>) -> Option<Vec<&'a [u8]>> {
    let target = clean_path(raw)?;
    let target = match link_prefix {
        Some(p) => {
            let pre = clean_path(p)?;
            if target.len() < pre.len() || target[..pre.len()] != pre[..] {
                return None;
            }
            target[pre.len()..].to_vec()
        }
        None => target,
    };
    (!target.is_empty()).then_some(target)
}

/// What a path in the tree being unpacked is, as far as the unpack rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink,
    Other,
}

/// The rules [`Extractor`] enforces on a tarball, kept on a model of the tree (no file written):
/// parents must be directories (never a symlink a member planted), a directory is only replaced
/// by a non-directory while empty, hard links point at regular files extracted before them, and
/// the apparent size stays under the limit. The extractor consults it for every member, and an
/// import runs the whole tarball through it, so an image that cannot unpack is refused at import
/// rather than at its first launch.
pub(crate) struct Model {
    max_bytes: u64,
    skip_devices: bool,
    total: u64,
    nodes: HashMap<Vec<u8>, Node>,
}

impl Model {
    pub(crate) fn new(opts: &UnpackOpts) -> Model {
        Model {
            max_bytes: opts.max_bytes,
            skip_devices: opts.skip_devices,
            total: 0,
            nodes: HashMap::new(),
        }
    }

    /// Check one member (`rel` cleaned, relative to the tree) and record what it makes.
    /// `link_prefix` is stripped from hard link targets (`rootfs/` in a unified tarball).
    pub(crate) fn member<R: Read>(
        &mut self,
        rel: &[&[u8]],
        entry: &mut tar::Entry<'_, R>,
        link_prefix: Option<&[u8]>,
    ) -> Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        // The extractor skips these (tar applies them to the member that follows).
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let rel_s = show(rel);
        // The extractor reads every member's metadata: a malformed PAX record fails here first.
        let (_, apparent, pax_sparse) = member_meta(entry)?;
        // Nor can it make a name the kernel refuses.
        if rel.iter().any(|c| c.len() > 255 || c.contains(&0)) {
            return Err(bad(format!(
                "invalid image tarball: {rel_s}: a file name is longer than 255 bytes or holds a NUL"
            )));
        }
        if kind.is_file() || kind == T::GNUSparse || kind == T::Continuous {
            self.total = self.total.saturating_add(apparent);
            if self.max_bytes > 0 && self.total > self.max_bytes {
                return Err(bad(format!(
                    "image is too large: expanding {rel_s} passes the limit of {} bytes",
                    self.max_bytes
                )));
            }
            if pax_sparse {
                return Err(bad(format!("not supported yet: PAX sparse file {rel_s}")));
            }
        }
        let Some((_, parents)) = rel.split_last() else {
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(bad(format!(
                    "invalid image tarball: the root is a {kind:?}"
                )))
            };
        };
        self.check_parents(parents, rel)?;
        let key = rel.join(&b'/');
        let node = match kind {
            T::Directory => Node::Dir,
            T::Regular | T::Continuous | T::GNUSparse => Node::File,
            // The extractor cannot make a symlink to nothing: refused here, so at import too.
            T::Symlink if entry.link_name_bytes().is_none_or(|l| l.is_empty()) => {
                return Err(bad(format!(
                    "invalid image tarball: symlink {rel_s} has no target"
                )));
            }
            T::Symlink => Node::Symlink,
            T::Link => {
                let raw = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let refuse = || {
                    bad(format!(
                        "unsafe hard link in image: {rel_s} -> {} (target must be a file extracted before it)",
                        String::from_utf8_lossy(&raw)
                    ))
                };
                let target = link_target(&raw, link_prefix).ok_or_else(refuse)?;
                if self.nodes.get(&target.join(&b'/')) != Some(&Node::File) {
                    return Err(refuse());
                }
                Node::File
            }
            T::Char | T::Block if self.skip_devices => return Ok(()),
            T::Char | T::Block | T::Fifo => Node::Other,
            // Skipped by the extractor.
            _ => return Ok(()),
        };
        match self.nodes.get(&key) {
            Some(Node::Dir) if node == Node::Dir => return Ok(()),
            Some(Node::Dir) => {
                let mut prefix = key.clone();
                prefix.push(b'/');
                if self.nodes.keys().any(|k| k.starts_with(&prefix)) {
                    return Err(bad(format!(
                        "invalid image tarball: {rel_s} replaces a directory that is not empty"
                    )));
                }
            }
            _ => {}
        }
        self.nodes.insert(key, node);
        Ok(())
    }

    /// Every parent of `whole` is a directory or is not there yet (then made as one).
    fn check_parents(&mut self, parents: &[&[u8]], whole: &[&[u8]]) -> Result<()> {
        for i in 1..=parents.len() {
            let key = parents[..i].join(&b'/');
            match self.nodes.get(&key) {
                None => {
                    self.nodes.insert(key, Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(n) => {
                    return Err(bad(format!(
                        "unsafe path in image: {} (its parent {} is a {})",
                        show(whole),
                        show(&parents[..i]),
                        match n {
                            Node::Symlink => "symlink",
                            Node::File => "file",
                            _ => "special file",
                        }
                    )))
                }
            }
        }
        Ok(())
    }

    /// Whether a template with target `path` can be written into the tree at start: a clean
    /// absolute path whose parents are directories (or missing) and that is not a directory.
    pub(crate) fn check_template_target(&self, path: &str) -> Result<()> {
        let parts = clean_path(path.as_bytes())
            .filter(|p| {
                !p.is_empty() && path.starts_with('/') && !path.split('/').any(|c| c == "..")
            })
            .ok_or_else(|| {
                bad(format!(
                    "invalid metadata.yaml: template target {path:?} is not a clean absolute path"
                ))
            })?;
        for i in 1..parts.len() {
            match self.nodes.get(&parts[..i].join(&b'/')) {
                None | Some(Node::Dir) => {}
                Some(_) => {
                    return Err(bad(format!(
                        "invalid metadata.yaml: template target {path}: {} is not a directory in the image",
                        show(&parts[..i])
                    )))
                }
            }
        }
        if self.nodes.get(&parts.join(&b'/')) == Some(&Node::Dir) {
            return Err(bad(format!(
                "invalid metadata.yaml: template target {path} is a directory in the image"
            )));
        }
        Ok(())
    }
}

impl<'a> Extractor<'a> {
    pub(crate) fn new(root: &Path, opts: &'a UnpackOpts) -> Result<Extractor<'a>> {
        Ok(Extractor {
            root: open_root(root)?,
            opts,
            model: Model::new(opts),
            dirs: Vec::new(),
        })
    }

    /// Extract one member at the cleaned relative path `rel` (empty = the root itself).
    /// `link_prefix` is stripped from hard link targets (`rootfs/` in a unified tarball).
    pub(crate) fn extract<R: Read>(
        &mut self,
        rel: &[&[u8]],
        entry: &mut tar::Entry<'_, R>,
        link_prefix: Option<&[u8]>,
    ) -> Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        self.model.member(rel, entry, link_prefix)?;
        let (meta, _, _) = member_meta(entry)?;
        let rel_s = show(rel);
        if rel.is_empty() {
            self.dirs.push((Vec::new(), meta));
            return Ok(());
        }
        let (name, parents) = rel.split_last().expect("non-empty path");
        let parent = walk(&self.root, parents, true, rel)?;
        // Replace whatever non-directory is there (never follow it).
        let existing = rustix::fs::statat(&parent, *name, AtFlags::SYMLINK_NOFOLLOW).ok();
        if let Some(st) = &existing {
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if !(is_dir && kind.is_dir()) {
                let flags = if is_dir {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                rustix::fs::unlinkat(&parent, *name, flags)
                    .map_err(|e| bad(format!("cannot replace {rel_s}: {e}")))?;
            }
        }
        let io_err = |e: &dyn std::fmt::Display| Error::Internal(format!("unpacking {rel_s}: {e}"));
        let owner = |m: &Meta| (Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)));
        match kind {
            T::Directory => {
                match rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(&e)),
                }
                self.dirs
                    .push((rel.iter().map(|c| c.to_vec()).collect(), meta));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let fd = rustix::fs::openat(
                    &parent,
                    *name,
                    crate::util::fs::NEW_FILE,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_err(&e))?;
                let mut f = File::from(fd);
                write_sparse(entry, &mut f).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::InvalidData
                    | io::ErrorKind::InvalidInput => {
                        bad(format!("invalid image tarball: {rel_s}: {e}"))
                    }
                    _ => io_err(&e),
                })?;
                let (u, g) = owner(&meta);
                rustix::fs::fchown(&f, u, g).map_err(|e| io_err(&e))?;
                rustix::fs::fchmod(&f, Mode::from_raw_mode(meta.mode)).map_err(|e| io_err(&e))?;
                set_xattrs(&f, &meta, &rel_s)?;
                rustix::fs::futimens(&f, &ts(meta.mtime, meta.mtime_nsec))
                    .map_err(|e| io_err(&e))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        bad(format!(
                            "invalid image tarball: symlink {rel_s} has no target"
                        ))
                    })?
                    .into_owned();
                // The target is only text: it is never followed here.
                rustix::fs::symlinkat(target.as_slice(), &parent, *name).map_err(|e| io_err(&e))?;
                let (u, g) = owner(&meta);
                rustix::fs::chownat(&parent, *name, u, g, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(&e))?;
                rustix::fs::utimensat(
                    &parent,
                    *name,
                    &ts(meta.mtime, meta.mtime_nsec),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err(&e))?;
            }
            T::Link => {
                // The model checked it: a regular file extracted before, under the same root.
                let raw = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let target = link_target(&raw, link_prefix).expect("the model checked it");
                let (tname, tparents) = target.split_last().expect("non-empty target");
                let tparent = walk(&self.root, tparents, false, &target)?;
                rustix::fs::linkat(&tparent, *tname, &parent, *name, AtFlags::empty())
                    .map_err(|e| io_err(&e))?;
            }
            T::Char | T::Block | T::Fifo => {
                let ft = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = if kind == T::Fifo {
                    0
                } else {
                    if self.opts.skip_devices {
                        eprintln!("image unpack: skipping device node {rel_s}");
                        return Ok(());
                    }
                    let h = entry.header();
                    let (maj, min) = (
                        h.device_major().ok().flatten(),
                        h.device_minor().ok().flatten(),
                    );
                    rustix::fs::makedev(maj.unwrap_or(0), min.unwrap_or(0))
                };
                rustix::fs::mknodat(&parent, *name, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| io_err(&e))?;
                let (u, g) = owner(&meta);
                rustix::fs::chownat(&parent, *name, u, g, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(&e))?;
                rustix::fs::chmodat(
                    &parent,
                    *name,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(|e| io_err(&e))?;
                rustix::fs::utimensat(
                    &parent,
                    *name,
                    &ts(meta.mtime, meta.mtime_nsec),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err(&e))?;
            }
            other => {
                eprintln!("image unpack: skipping {rel_s}: unsupported member type {other:?}");
            }
        }
        Ok(())
    }

    /// Apply directory owners, modes, xattrs and times, deepest first (so a parent's mtime is
    /// not bumped by its children afterwards).
    pub(crate) fn finish(mut self) -> Result<()> {
        crate::util::sort::sort_by_key(&mut self.dirs, |(p, _)| std::cmp::Reverse(p.len()));
        for (path, meta) in &self.dirs {
            let rel: Vec<&[u8]> = path.iter().map(|c| c.as_slice()).collect();
            let rel_s = show(&rel);
            let fd = match rel.split_last() {
                None => rustix::fs::openat(
                    &self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
                Some((name, parents)) => {
                    let parent = walk(&self.root, parents, false, &rel)?;
                    rustix::fs::openat(
                        &parent,
                        *name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                }
            };
            // A directory replaced later by another member type is gone: nothing to fix.
            let Ok(fd) = fd else { continue };
            let e = |e: Errno| Error::Internal(format!("unpacking {rel_s}/: {e}"));
            rustix::fs::fchown(
                &fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(e)?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(e)?;
            set_xattrs(&fd, meta, &rel_s)?;
            rustix::fs::futimens(&fd, &ts(meta.mtime, meta.mtime_nsec)).map_err(e)?;
        }
        Ok(())
    }
}

fn set_xattrs(fd: impl AsFd, meta: &Meta, rel_s: &str) -> Result<()> {
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(&fd, name.as_str(), value, XattrFlags::empty()).map_err(|e| {
            Error::Internal(format!("unpacking {rel_s}: setting xattr {name}: {e}"))
        })?;
    }
    Ok(())
}

/// Copy a member's data, leaving holes where whole blocks are zero.
fn write_sparse(r: &mut dyn Read, f: &mut File) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    let mut hole = false;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(n as i64))?;
            hole = true;
        } else {
            f.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    if hole {
        f.set_len(pos)?;
    }
    Ok(())
}

/// Create both unpack targets; they are removed again unless the returned revert is committed.
fn targets(rootfs: &Path, templates: &Path) -> Result<Revert> {
    let mut revert = Revert::new();
    for dir in [rootfs, templates] {
        create_target(dir)?;
        let dir = dir.to_path_buf();
        revert.add(move || {
            let _ = std::fs::remove_dir_all(dir);
        });
    }
    Ok(revert)
}

/// Templates never carry device nodes; the size limit is the rootfs one.
fn template_opts(opts: &UnpackOpts) -> UnpackOpts {
    UnpackOpts {
        skip_devices: true,
        max_bytes: opts.max_bytes,
    }
}

/// A member's cleaned path components, or an error naming the unsafe path.
fn member_parts(raw: &[u8]) -> Result<Vec<&[u8]>> {
    clean_path(raw).ok_or_else(|| {
        bad(format!(
            "unsafe path in image: {}",
            String::from_utf8_lossy(raw)
        ))
    })
}

/// Create the target directory (its parents as needed); it must not exist.
fn create_target(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Internal(format!("{}: {e}", parent.display())))?;
    }
    std::fs::create_dir(dir).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => {
            Error::Conflict(format!("{} already exists", dir.display()))
        }
        _ => Error::Internal(format!("{}: {e}", dir.display())),
    })
}

fn tar_err(e: io::Error) -> Error {
    bad(format!("invalid image tarball: {e}"))
}

/// Unpack a unified tarball: `rootfs/` into `rootfs`, `templates/` into `templates`.
pub(crate) fn unpack_unified(
    tarball: &Path,
    rootfs: &Path,
    templates: &Path,
    opts: &UnpackOpts,
) -> Result<()> {
    unpack_unified_meta(tarball, rootfs, templates, opts).map(drop)
}

/// [`unpack_unified`], also returning the bytes of the top-level `metadata.yaml` (if any).
pub(crate) fn unpack_unified_meta(
    tarball: &Path,
    rootfs: &Path,
    templates: &Path,
    opts: &UnpackOpts,
) -> Result<Option<Vec<u8>>> {
    unpack_unified_from(open_tar(tarball)?, rootfs, templates, opts)
}

/// [`unpack_unified_meta`] from a tar stream read once, front to back.
pub(crate) fn unpack_unified_from<R: Read>(
    mut ar: tar::Archive<R>,
    rootfs: &Path,
    templates: &Path,
    opts: &UnpackOpts,
) -> Result<Option<Vec<u8>>> {
    let guard = targets(rootfs, templates)?;
    let mut meta = None;
    let mut root = Extractor::new(rootfs, opts)?;
    let tpl_opts = template_opts(opts);
    let mut tpl = Extractor::new(templates, &tpl_opts)?;
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let parts = member_parts(&raw)?;
        match parts.split_first() {
            Some((first, rest)) if *first == b"rootfs" => {
                root.extract(rest, &mut entry, Some(b"rootfs"))?
            }
            Some((first, rest)) if *first == b"templates" => {
                tpl.extract(rest, &mut entry, Some(b"templates"))?
            }
            Some((first, [])) if *first == b"metadata.yaml" => {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(1 << 20)
                    .read_to_end(&mut buf)
                    .map_err(tar_err)?;
                meta = Some(buf);
            }
            _ => {} // anything else at the top
        }
    }
    root.finish()?;
    tpl.finish()?;
    guard.commit();
    Ok(meta)
}

/// Unpack the volumes of an instance backup tarball (LXD's layout) in one pass: for each
/// `(prefix, dir)`, the members under `prefix/rootfs/` into `dir/rootfs` and those under
/// `prefix/templates/` into `dir/templates` (both created), with the same rules as an image
/// (`max_bytes` for each volume and for all of them together); each volume's
/// `prefix/metadata.yaml` is returned. Other members are left alone.
pub(crate) fn unpack_backup(
    tarball: &Path,
    volumes: &[(String, std::path::PathBuf)],
    opts: &UnpackOpts,
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut guards = Vec::new();
    let tpl_opts = template_opts(opts);
    let mut ex = Vec::new();
    let mut prefixes = Vec::new();
    for (prefix, dir) in volumes {
        let (rootfs, templates) = (dir.join("rootfs"), dir.join("templates"));
        guards.push(targets(&rootfs, &templates)?);
        ex.push((
            Extractor::new(&rootfs, opts)?,
            Extractor::new(&templates, &tpl_opts)?,
        ));
        let pre = member_parts(prefix.as_bytes())?
            .iter()
            .map(|c| c.to_vec())
            .collect::<Vec<_>>();
        prefixes.push((
            pre,
            format!("{prefix}/rootfs").into_bytes(),
            format!("{prefix}/templates").into_bytes(),
        ));
    }
    let mut metas = vec![None; volumes.len()];
    let mut has_rootfs = vec![false; volumes.len()];
    let mut total = 0u64;
    let mut ar = open_tar(tarball)?;
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let parts = member_parts(&raw)?;
        let Some(i) = prefixes.iter().position(|(pre, _, _)| {
            parts.len() > pre.len() && parts[..pre.len()].iter().zip(pre).all(|(a, b)| *a == b)
        }) else {
            continue;
        };
        let (pre, root_link, tpl_link) = &prefixes[i];
        let rest = &parts[pre.len()..];
        // The limit holds for the whole backup too, not only for each volume.
        if entry.header().entry_type().is_file() {
            total = total.saturating_add(entry.size());
            if opts.max_bytes > 0 && total > opts.max_bytes {
                return Err(bad(format!(
                    "backup is too large: expanding {} passes the limit of {} bytes",
                    String::from_utf8_lossy(&raw),
                    opts.max_bytes
                )));
            }
        }
        let (root, tpl) = &mut ex[i];
        match rest.split_first() {
            Some((first, rest)) if *first == b"rootfs" => {
                has_rootfs[i] = true;
                root.extract(rest, &mut entry, Some(root_link))?
            }
            Some((first, rest)) if *first == b"templates" => {
                tpl.extract(rest, &mut entry, Some(tpl_link))?
            }
            Some((first, [])) if *first == b"metadata.yaml" => {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(1 << 20)
                    .read_to_end(&mut buf)
                    .map_err(tar_err)?;
                metas[i] = Some(buf);
            }
            _ => {}
        }
    }
    for (root, tpl) in ex {
        root.finish()?;
        tpl.finish()?;
    }
    missing_trees(volumes, &has_rootfs, "/rootfs")?;
    for g in guards {
        g.commit();
    }
    Ok(metas)
}

/// Unpack trees of a tarball in one pass: for each `(prefix, dir)`, the members under `prefix/`
/// into the existing empty directory `dir` (the caller removes it on error), with the image rules (`max_bytes` for all of them together); other
/// members are left alone. A custom volume's backup (`backup/volume/`, its snapshots').
pub(crate) fn unpack_trees(
    tarball: &Path,
    trees: &[(String, std::path::PathBuf)],
    opts: &UnpackOpts,
) -> Result<()> {
    unpack_trees_from(open_tar(tarball)?, trees, opts)
}

/// [`unpack_trees`] from a tar stream read once, front to back (a volume sent by another
/// server).
pub(crate) fn unpack_trees_from<R: Read>(
    mut ar: tar::Archive<R>,
    trees: &[(String, std::path::PathBuf)],
    opts: &UnpackOpts,
) -> Result<()> {
    let mut ex = Vec::new();
    let mut prefixes = Vec::new();
    for (prefix, dir) in trees {
        ex.push(Extractor::new(dir, opts)?);
        let pre = member_parts(prefix.as_bytes())?
            .iter()
            .map(|c| c.to_vec())
            .collect::<Vec<_>>();
        prefixes.push((pre, prefix.clone().into_bytes()));
    }
    let mut total = 0u64;
    let mut seen = vec![false; trees.len()];
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let parts = member_parts(&raw)?;
        let Some(i) = prefixes.iter().position(|(pre, _)| {
            parts.len() >= pre.len() && parts[..pre.len()].iter().zip(pre).all(|(a, b)| *a == b)
        }) else {
            continue;
        };
        // The tree's own directory says the tree is there (an empty volume has nothing else);
        // what is below it is unpacked.
        seen[i] = true;
        if parts.len() == prefixes[i].0.len() {
            continue;
        }
        if entry.header().entry_type().is_file() {
            total = total.saturating_add(entry.size());
            if opts.max_bytes > 0 && total > opts.max_bytes {
                return Err(bad(format!(
                    "backup is too large: expanding {} passes the limit of {} bytes",
                    String::from_utf8_lossy(&raw),
                    opts.max_bytes
                )));
            }
        }
        let (pre, link) = &prefixes[i];
        ex[i].extract(&parts[pre.len()..], &mut entry, Some(link))?;
    }
    for e in ex {
        e.finish()?;
    }
    missing_trees(trees, &seen, "")
}

/// Refuse a tarball that lacks a tree its index named (`suffix` under each prefix): an import
/// would otherwise make it an empty volume, and restoring an empty snapshot empties the
/// instance (LXD's unpack fails on it too, tar finding no such member).
fn missing_trees(
    trees: &[(String, std::path::PathBuf)],
    seen: &[bool],
    suffix: &str,
) -> Result<()> {
    let missing: Vec<String> = trees
        .iter()
        .zip(seen)
        .filter(|(_, seen)| !**seen)
        .map(|((prefix, _), _)| format!("{prefix}{suffix}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(bad(format!(
        "the tarball lacks {} (named by its index)",
        missing.join(", ")
    )))
}

/// Hand the first regular member named `name` of a (possibly compressed) tarball to `f`, after
/// checking its size against `limit`; `false` when there is none.
pub(crate) fn with_member(
    tarball: &Path,
    name: &str,
    limit: u64,
    f: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
) -> Result<bool> {
    let want = member_parts(name.as_bytes())?;
    let mut ar = open_tar(tarball)?;
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        if clean_path(&raw).is_some_and(|p| p == want) {
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(bad(format!("{name} is not a regular file")));
            }
            if limit > 0 && entry.size() > limit {
                return Err(bad(format!(
                    "{name} is too large: {} bytes pass the limit of {limit} bytes",
                    entry.size()
                )));
            }
            f(&mut entry)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The first member named `name` of a (possibly compressed) tarball, at most `limit` bytes;
/// `None` when there is none.
pub(crate) fn read_member(tarball: &Path, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let want = member_parts(name.as_bytes())?;
    let mut ar = open_tar(tarball)?;
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        if clean_path(&raw).is_some_and(|p| p == want) {
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(bad(format!("{name} is not a regular file")));
            }
            if entry.size() > limit {
                return Err(bad(format!("{name} is larger than {limit} bytes")));
            }
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(tar_err)?;
            return Ok(Some(buf));
        }
    }
    Ok(None)
}

/// Unpack a split image: the rootfs tarball (or squashfs) is the filesystem itself; the
/// metadata tarball holds `templates/`.
pub(crate) fn unpack_split(
    meta: &Path,
    rootfs_file: &Path,
    rootfs: &Path,
    templates: &Path,
    opts: &UnpackOpts,
) -> Result<()> {
    let guard = targets(rootfs, templates)?;

    let tpl_opts = template_opts(opts);
    let mut tpl = Extractor::new(templates, &tpl_opts)?;
    let mut ar = open_tar(meta)?;
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let parts = member_parts(&raw)?;
        if let Some((first, rest)) = parts.split_first() {
            if *first == b"templates" {
                tpl.extract(rest, &mut entry, Some(b"templates"))?;
            }
        }
    }
    tpl.finish()?;

    let mut head = Vec::new();
    File::open(rootfs_file)
        .and_then(|f| {
            f.take(super::compress::SNIFF_LEN as u64)
                .read_to_end(&mut head)
        })
        .map_err(|e| Error::Internal(format!("{}: {e}", rootfs_file.display())))?;
    if super::compress::sniff(&head) == super::compress::Format::Squashfs {
        unsquashfs(rootfs_file, rootfs)?;
    } else {
        let mut root = Extractor::new(rootfs, opts)?;
        let mut ar = open_tar(rootfs_file)?;
        for entry in ar.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw = entry.path_bytes().into_owned();
            let parts = clean_path(&raw).ok_or_else(|| {
                bad(format!(
                    "unsafe path in image: {}",
                    String::from_utf8_lossy(&raw)
                ))
            })?;
            root.extract(&parts, &mut entry, None)?;
        }
        root.finish()?;
    }
    guard.commit();
    Ok(())
}

/// Find a program on PATH.
pub(crate) fn which(prog: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn unsquashfs(file: &Path, rootfs: &Path) -> Result<()> {
    let prog = which("unsquashfs").ok_or_else(|| {
        Error::Internal(
            "unpacking a squashfs image needs `unsquashfs` (squashfs-tools) on PATH: not found"
                .into(),
        )
    })?;
    let out = std::process::Command::new(prog)
        .args(["-f", "-n", "-d"])
        .arg(rootfs)
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Internal(format!("running unsquashfs: {e}")))?;
    if !out.status.success() {
        return Err(bad(format!(
            "unsquashfs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Total apparent size of the regular files of a rootfs tarball (members under `prefix`, or all).
pub(crate) fn rootfs_size(tarball: &Path, prefix: Option<&[u8]>) -> Result<u64> {
    let mut ar = open_tar(tarball)?;
    let mut total = 0u64;
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let Some(parts) = clean_path(&raw) else {
            continue;
        };
        if let Some(p) = prefix {
            if parts.first() != Some(&p) {
                continue;
            }
        }
        if entry.header().entry_type().is_file()
            || entry.header().entry_type() == tar::EntryType::GNUSparse
        {
            let (_, apparent, _) = member_meta(&mut entry)?;
            total = total.saturating_add(apparent);
        }
    }
    Ok(total)
}
