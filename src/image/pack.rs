//! Publish: pack a rootfs into a unified image tarball (metadata.yaml, rootfs/..., templates/...),
//! keeping numeric owners, modes, times, xattrs (as PAX `SCHILY.xattr.*`, which carries
//! `security.capability` and POSIX ACLs), hard links, symlinks, device nodes and fifos.
//! Sockets are skipped. The rootfs is read without following any symlink in it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::api;

use super::compress::{Compression, Encoder};
use super::{Error, Result};

fn ioe(what: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("packing {}: {e}", what.display()))
}

/// Write a unified image tarball of `rootfs` (+ `templates`) with `metadata` as metadata.yaml.
pub fn pack(
    rootfs: &Path,
    metadata: &api::ImageMetadata,
    templates: Option<&Path>,
    compression: Compression,
    out: &mut dyn Write,
) -> Result<()> {
    let yaml = crate::util::yaml::to_string(metadata)
        .map_err(|e| Error::Internal(format!("metadata.yaml: {e}")))?;
    let mut enc =
        Encoder::new(compression, out).map_err(|e| Error::Internal(format!("compressor: {e}")))?;
    {
        let mut b = tar::Builder::new(&mut enc);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(yaml.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(metadata.creation_date.max(0) as u64);
        b.append_data(&mut h, "metadata.yaml", yaml.as_bytes())
            .map_err(|e| ioe(Path::new("metadata.yaml"), e))?;
        let mut links = HashMap::new();
        add_tree(&mut b, rootfs, "rootfs", &mut links, &keep)?;
        if let Some(t) = templates {
            if t.exists() {
                add_tree(&mut b, t, "templates", &mut links, &keep)?;
            }
        }
        b.finish().map_err(|e| ioe(rootfs, e))?;
    }
    enc.finish().map_err(|e| ioe(rootfs, e))
}

/// What [`add_tree`] lets its caller change in each member before it is written: the header
/// (owner) and the xattrs; `false` leaves the member out.
pub type Adjust<'a> = dyn Fn(&mut tar::Header, &mut Vec<(String, Vec<u8>)>) -> bool + 'a;

/// Keep every member as it is on disk.
fn keep(_: &mut tar::Header, _: &mut Vec<(String, Vec<u8>)>) -> bool {
    true
}

/// Hard links already written: (device, inode) to the member name.
pub type Links = HashMap<(u64, u64), std::path::PathBuf>;

/// The xattrs of `path` (not following a final symlink).
fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let n = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(ioe(path, e)),
    };
    if n == 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; n];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(|e| ioe(path, e))?;
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let len = rustix::fs::lgetxattr_query(path, name.as_str()).map_err(|e| ioe(path, e))?;
        let mut val = vec![0u8; len];
        let len =
            rustix::fs::lgetxattr(path, name.as_str(), &mut val[..]).map_err(|e| ioe(path, e))?;
        val.truncate(len);
        out.push((name, val));
    }
    Ok(out)
}

/// Add `dir` and everything below it as `name/...`, read without following any symlink in it,
/// each member through `adjust`. Member names are the bytes of the file names, whatever they
/// are (not UTF-8 in old data, say), as Go's and GNU tar write them.
pub fn add_tree<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    name: &str,
    links: &mut Links,
    adjust: &Adjust<'_>,
) -> Result<()> {
    add_tree_as(b, dir, Path::new(name), links, adjust)
}

fn add_tree_as<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    links: &mut Links,
    adjust: &Adjust<'_>,
) -> Result<()> {
    add_one(b, dir, name, links, adjust)?;
    let mut kids: Vec<_> = fs::read_dir(dir)
        .map_err(|e| ioe(dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| ioe(dir, e))?;
    crate::util::sort::sort_by(&mut kids, |a, b| a.as_bytes().cmp(b.as_bytes()));
    for k in kids {
        let path = dir.join(&k);
        let child = name.join(&k);
        if fs::symlink_metadata(&path)
            .map_err(|e| ioe(&path, e))?
            .is_dir()
        {
            add_tree_as(b, &path, &child, links, adjust)?;
        } else {
            add_one(b, &path, &child, links, adjust)?;
        }
    }
    Ok(())
}

fn add_one<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    links: &mut Links,
    adjust: &Adjust<'_>,
) -> Result<()> {
    use tar::EntryType as T;
    let md = fs::symlink_metadata(path).map_err(|e| ioe(path, e))?;
    let ft = md.file_type();
    if ft.is_socket() {
        return Ok(());
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid().into());
    h.set_gid(md.gid().into());
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    let mut x = xattrs(path)?;
    if !adjust(&mut h, &mut x) {
        return Ok(());
    }
    if !x.is_empty() {
        let keys: Vec<(String, &[u8])> = x
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        b.append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(|e| ioe(path, e))?;
    }
    let err = |e: io::Error| ioe(path, e);
    if ft.is_dir() {
        h.set_entry_type(T::Directory);
        let mut dir = name.as_os_str().to_owned();
        dir.push("/");
        b.append_data(&mut h, dir, io::empty()).map_err(err)?;
    } else if ft.is_symlink() {
        h.set_entry_type(T::Symlink);
        let target = fs::read_link(path).map_err(err)?;
        b.append_link(&mut h, name, target).map_err(err)?;
    } else if ft.is_file() {
        if md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                h.set_entry_type(T::Link);
                b.append_link(&mut h, name, first).map_err(err)?;
                return Ok(());
            }
            links.insert((md.dev(), md.ino()), name.to_path_buf());
        }
        h.set_entry_type(T::Regular);
        h.set_size(md.len());
        let f: File = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(err)?;
        b.append_data(&mut h, name, std::io::Read::take(f, md.len()))
            .map_err(err)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        h.set_entry_type(if ft.is_char_device() {
            T::Char
        } else if ft.is_block_device() {
            T::Block
        } else {
            T::Fifo
        });
        let rdev = md.rdev();
        h.set_device_major(rustix::fs::major(rdev)).map_err(err)?;
        h.set_device_minor(rustix::fs::minor(rdev)).map_err(err)?;
        b.append_data(&mut h, name, io::empty()).map_err(err)?;
    }
    Ok(())
}
