//! `/1.0/instances/NAME/files`: pull, push, mkdir, symlink and delete inside an instance's
//! rootfs (a running one's as its init sees it, mounts included), never leaving it.
//!
//! Every path is resolved inside the root, so `..`, absolute symlinks and planted links all stay
//! inside: by the kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against a
//! stopped container's rootfs directory, and for a running unprivileged container a component
//! at a time as its root may walk it (`View::walk`).
//! What is made is made with `O_NOFOLLOW`; an existing file written to is the one its path
//! leads to inside (a last symlink followed there, as LXD's SFTP server does), opened again
//! through its descriptor once checked regular. Nothing outside the root is ever chmod-ed or
//! chown-ed. Ids are translated between container ids and the ids the host sees: through the
//! running map for a running container, for a stopped one's shifted rootfs through the map it
//! was shifted with; idmapped and privileged rootfs store container ids as they are.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::super::response::{self, Error, Result};
use crate::http::{Body, Request, Response};
use crate::instance::db::InstanceRecord;
use crate::instance::idmap;
use crate::instance::Ctx as Daemon;
use crate::runtime::IdMapEntry;

/// How on-disk ids relate to container ids.
struct Ids {
    uid: Vec<IdMapEntry>,
    gid: Vec<IdMapEntry>,
}

impl Ids {
    fn of(rec: &InstanceRecord) -> Ids {
        let last = rec
            .config
            .get("volatile.last_state.idmap")
            .map(String::as_str)
            .unwrap_or("[]");
        match idmap::Map::from_volatile(last) {
            Some(m) if !m.uid.is_empty() => Ids {
                uid: m.uid,
                gid: m.gid,
            },
            _ => Ids {
                uid: vec![],
                gid: vec![],
            },
        }
    }
    /// A running container's files as the host sees them: through the map it was started
    /// with (its running spec's, whatever its config says now), none when privileged.
    fn running(d: &Daemon, name: &str) -> Result<Ids> {
        let maps = crate::runtime::running_id_maps(&d.run_dir(name)).map_err(Error::from)?;
        let (uid, gid) = maps.unwrap_or_default();
        Ok(Ids { uid, gid })
    }
    fn to_disk(map: &[IdMapEntry], id: u32) -> Result<u32> {
        if map.is_empty() {
            return Ok(id);
        }
        map.iter()
            .find(|e| id >= e.nsid && id - e.nsid < e.count)
            .map(|e| e.hostid + (id - e.nsid))
            .ok_or_else(|| Error::BadRequest(format!("id {id} is not mapped in the instance")))
    }
    /// An inode owned by `uid` and `gid` (as the host sees them) is one the container's user
    /// namespace maps both ids of.
    fn maps(&self, uid: u32, gid: u32) -> bool {
        let has = |map: &[IdMapEntry], id: u32| {
            map.iter()
                .any(|e| id >= e.hostid && id - e.hostid < e.count)
        };
        has(&self.uid, uid) && has(&self.gid, gid)
    }
    fn from_disk(map: &[IdMapEntry], id: u32) -> u32 {
        if map.is_empty() {
            return id;
        }
        map.iter()
            .find(|e| id >= e.hostid && id - e.hostid < e.count)
            .map_or(65534, |e| e.nsid + (id - e.hostid))
    }
}

fn io_err(path: &str, e: rustix::io::Errno) -> Error {
    match e {
        rustix::io::Errno::NOENT => Error::NotFound(format!("{path}: no such file or directory")),
        rustix::io::Errno::LOOP => {
            Error::BadRequest(format!("{path}: refusing to follow a symlink"))
        }
        rustix::io::Errno::XDEV => Error::BadRequest(format!("{path}: path escapes the instance")),
        rustix::io::Errno::NOTEMPTY => Error::BadRequest(format!("{path}: directory not empty")),
        rustix::io::Errno::EXIST => Error::Conflict(format!("{path}: already exists")),
        rustix::io::Errno::NOTDIR => Error::BadRequest(format!("{path}: not a directory")),
        rustix::io::Errno::ISDIR => Error::BadRequest(format!("{path}: is a directory")),
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
            Error::Forbidden(format!("{path}: permission denied"))
        }
        rustix::io::Errno::ROFS => Error::BadRequest(format!("{path}: read-only file system")),
        e => Error::Internal(format!("{path}: {e}")),
    }
}

/// The most read of a file that says it is empty (a pseudo-file of procfs or sysfs).
const PSEUDO_FILE_MAX: u64 = 16 << 20;

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Split an absolute path into (parent, last component).
fn split(path: &str) -> Result<(String, String)> {
    if !path.starts_with('/') {
        return Err(Error::BadRequest("Path must be absolute".into()));
    }
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::BadRequest(format!("Invalid path {path:?}")));
    }
    Ok((
        if parent.is_empty() {
            "/".into()
        } else {
            parent.to_string()
        },
        name.to_string(),
    ))
}

pub fn handle(d: &Daemon, req: &mut Request, name: &str, rec: &InstanceRecord) -> Result<Response> {
    let path = req.query("path").unwrap_or("").to_string();
    if path.is_empty() {
        return Err(Error::BadRequest("Missing path argument".into()));
    }
    if path.contains('\0') {
        return Err(Error::BadRequest("Invalid path".into()));
    }
    // `lxc file delete c1/root/x` sends `root/x`: LXD's SFTP server resolves a relative path from
    // the container's `/`, so bivy does too.
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let v = view(d, name, rec, !matches!(req.method.as_str(), "GET" | "HEAD"))?;
    match req.method.as_str() {
        "GET" | "HEAD" => pull(&v, &path, req.method == "HEAD"),
        "POST" => push(&v, req, &path),
        "DELETE" => remove(&v, &path),
        m => Err(Error::MethodNotAllowed(format!("method {m} not allowed"))),
    }
}

/// Where an instance's files are ([`view`]).
struct View {
    root: OwnedFd,
    ids: Ids,
    /// A running unprivileged container's root's host ids: what reads, writes, makes and
    /// deletes its files (see [`View::act`]).
    maker: Option<(u32, u32)>,
}

impl View {
    /// Run `f`, which reads, writes, makes or deletes through the inode open as `inode` (the
    /// file, or the directory an entry is made in or deleted from), as the container's root
    /// would: its host ids, with the filesystem capabilities only on an inode its user namespace
    /// maps (`sys::as_ns_root`), so the mode bits of anything else apply to it as to its root.
    /// A container's root cannot write a host file that a disk device shows it read-only to it,
    /// and a symlink it plants must not make a request do it with the daemon's rights (LXD runs
    /// its file requests inside the container's user namespace). A stopped or privileged
    /// container's files are the daemon's to act on: paths never leave the root, and a
    /// stopped one's root has no mounts.
    fn act<T>(&self, inode: &OwnedFd, path: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.act_on(&[inode], path, f)
    }

    /// Open `path` (`O_PATH`) inside the root: its last component a symlink itself unless
    /// `follow_last`. A stopped or privileged container's by the kernel
    /// (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`); a running unprivileged one's walked here a
    /// component at a time as its root would walk it: each directory searched only when its
    /// root may (its capabilities over a directory its user namespace maps, else the mode
    /// bits), each symlink followed from the root (absolute) or from where it is, `..` never
    /// above the root. The kernel's walk would pass any directory with the daemon's rights: a
    /// symlink the container's root planted then led a request into a host directory shown to it
    /// that it cannot enter itself.
    fn walk(&self, path: &str, follow_last: bool) -> Result<OwnedFd> {
        let Some((uid, gid)) = self.maker else {
            let mut flags = OFlags::PATH | OFlags::CLOEXEC;
            if !follow_last {
                flags |= OFlags::NOFOLLOW;
            }
            return rustix::fs::openat2(&self.root, path, flags, Mode::empty(), RESOLVE)
                .map_err(|e| io_err(path, e));
        };
        let at = |e| io_err(path, e);
        let again = |fd: &OwnedFd| {
            rustix::fs::openat(fd, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(at)
        };
        // Each directory walked through with its stat (read once, when it was opened).
        let root = again(&self.root)?;
        let root_st = rustix::fs::fstat(&root).map_err(at)?;
        let mut stack = vec![(root, root_st)];
        let mut todo: std::collections::VecDeque<String> =
            path.split('/').map(str::to_string).collect();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            let last = todo.iter().all(|c| c.is_empty() || c == ".");
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let (dir, st) = stack.last().expect("the root stays");
            let mode = st.st_mode;
            let search = if self.ids.maps(st.st_uid, st.st_gid) {
                true
            } else if st.st_uid == uid {
                mode & 0o100 != 0
            } else if st.st_gid == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !search {
                return Err(io_err(path, rustix::io::Errno::ACCESS));
            }
            let fd = rustix::fs::openat(
                dir,
                c.as_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(at)?;
            let fst = rustix::fs::fstat(&fd).map_err(at)?;
            let ft = rustix::fs::FileType::from_raw_mode(fst.st_mode);
            if ft == rustix::fs::FileType::Symlink && (!last || follow_last) {
                links += 1;
                if links > 40 {
                    return Err(io_err(path, rustix::io::Errno::LOOP));
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(at)?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                for part in target.split('/').rev() {
                    todo.push_front(part.to_string());
                }
                continue;
            }
            if last {
                return Ok(fd);
            }
            if ft != rustix::fs::FileType::Directory {
                return Err(io_err(path, rustix::io::Errno::NOTDIR));
            }
            stack.push((fd, fst));
        }
        again(&stack.last().expect("the root stays").0)
    }

    /// [`View::walk`] to a directory (symlinks followed).
    fn walk_dir(&self, path: &str) -> Result<OwnedFd> {
        let fd = self.walk(path, true)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(path, e))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
            return Err(io_err(path, rustix::io::Errno::NOTDIR));
        }
        Ok(fd)
    }

    /// [`View::act`] where the capabilities must hold over each of `inodes`.
    fn act_on<T>(
        &self,
        inodes: &[&OwnedFd],
        path: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some((uid, gid)) = self.maker else {
            return f();
        };
        let mut mapped = true;
        for inode in inodes {
            let st = rustix::fs::fstat(inode).map_err(|e| io_err(path, e))?;
            mapped &= self.ids.maps(st.st_uid, st.st_gid);
        }
        crate::sys::as_ns_root(uid, gid, mapped, f)
    }
}

/// Where the files of `rec` are, how their owners read, and as whom new ones are made. A
/// running container's files are those its init sees (`/proc/PID/root`: its mounts, so disk
/// devices, custom volumes, its own tmpfs mounts and /proc as LXD's SFTP server inside it sees
/// them), owned as the host sees them through its id map, and acted on as its root ([`View::act`];
/// new files are made with its root's host ids, which an idmapped tree needs too). A stopped
/// one's are its volume's rootfs directory: a layered volume's merged tree (storage/layered.rs)
/// to read, made plain first to `write` (no overlay may be left on it when it starts).
fn view(d: &Daemon, name: &str, rec: &InstanceRecord, write: bool) -> Result<View> {
    if let Ok(crate::runtime::State::Running { init_pid, .. }) =
        crate::instance::view::state_of(d, name)
    {
        let proc_root = format!("/proc/{init_pid}/root");
        let root = rustix::fs::open(
            proc_root.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Internal(format!("{proc_root}: {e}")))?;
        let ids = Ids::running(d, name)?;
        let maker = if ids.uid.is_empty() {
            None
        } else {
            Some((Ids::to_disk(&ids.uid, 0)?, Ids::to_disk(&ids.gid, 0)?))
        };
        return Ok(View { root, ids, maker });
    }
    let vol = d.volume_dir(rec);
    if write && crate::storage::layered::is_layered(&vol) {
        // Not while a start or another change has it (a start mounts the layers).
        let _busy = d.claim(name, "making its volume plain")?;
        if !matches!(
            crate::instance::view::state_of(d, name),
            Ok(crate::runtime::State::Stopped { .. })
        ) {
            return Err(Error::Conflict(format!("Instance {name:?} is starting")));
        }
        crate::instance::pools::make_plain(d, rec)?;
    }
    // The overlay stays reachable through the opened root after the view's namespace is gone.
    let layers =
        crate::storage::layered::view(&vol, false).map_err(|e| Error::Internal(e.to_string()))?;
    let rootfs = layers.path().join("rootfs");
    let root = rustix::fs::open(
        &rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Internal(format!("{}: {e}", rootfs.display())))?;
    Ok(View {
        root,
        ids: Ids::of(rec),
        maker: None,
    })
}

fn headers(resp: Response, st: &rustix::fs::Stat, ids: &Ids, kind: &str) -> Response {
    let mtime =
        crate::util::time::format(st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0));
    resp.header(
        "X-LXD-uid",
        &Ids::from_disk(&ids.uid, st.st_uid).to_string(),
    )
    .header(
        "X-LXD-gid",
        &Ids::from_disk(&ids.gid, st.st_gid).to_string(),
    )
    .header("X-LXD-mode", &format!("{:04o}", st.st_mode & 0o7777))
    .header("X-LXD-modified", &mtime)
    .header("X-LXD-type", kind)
}

fn pull(v: &View, path: &str, head: bool) -> Result<Response> {
    let ids = &v.ids;
    let fd = v.walk(path, false)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err(path, e))?;
    let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
    match ft {
        rustix::fs::FileType::Symlink => {
            let target =
                rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(|e| io_err(path, e))?;
            let r = Response::new(200).header("Content-Type", "application/octet-stream");
            let body = if head {
                Body::Empty
            } else {
                Body::Bytes(target.into_bytes())
            };
            Ok(headers(r, &st, ids, "symlink").body(body))
        }
        rustix::fs::FileType::Directory => {
            let dfd = v.act(&fd, path, || {
                reopen(&fd, OFlags::RDONLY | OFlags::DIRECTORY, path)
            })?;
            let mut names = Vec::new();
            let dir = rustix::fs::Dir::read_from(&dfd).map_err(|e| io_err(path, e))?;
            for ent in dir {
                let ent = ent.map_err(|e| io_err(path, e))?;
                let n = ent.file_name().to_string_lossy().into_owned();
                if n != "." && n != ".." {
                    names.push(n);
                }
            }
            crate::util::sort::sort(&mut names);
            let r = if head {
                Response::new(200)
            } else {
                response::sync(&names)
            };
            Ok(headers(r, &st, ids, "directory"))
        }
        rustix::fs::FileType::RegularFile => {
            let ffd = v.act(&fd, path, || {
                reopen(&fd, OFlags::RDONLY | OFlags::NONBLOCK, path)
            })?;
            let mut f = std::fs::File::from(ffd);
            let len = st.st_size as u64;
            let r = Response::new(200).header("Content-Type", "application/octet-stream");
            let body = if head {
                Body::Empty
            } else if len == 0 {
                // procfs and sysfs files (a running container's /proc, /sys) say size 0 and
                // have text: read whole, to a bound.
                let mut text = Vec::new();
                (&mut f)
                    .take(PSEUDO_FILE_MAX)
                    .read_to_end(&mut text)
                    .map_err(|e| Error::Internal(format!("{path}: {e}")))?;
                Body::Bytes(text)
            } else {
                Body::Reader(Box::new(f.take(len)), Some(len))
            };
            Ok(headers(r, &st, ids, "file").body(body))
        }
        _ => Err(Error::BadRequest(format!(
            "{path}: not a regular file, directory or symlink"
        ))),
    }
}

fn header_id(req: &Request, name: &str) -> Result<Option<u32>> {
    match req.header(name) {
        None | Some("") | Some("-1") => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::BadRequest(format!("Invalid {name} header {v:?}"))),
    }
}

fn push(v: &View, req: &mut Request, path: &str) -> Result<Response> {
    let ids = &v.ids;
    let uid = header_id(req, "X-LXD-uid")?;
    let gid = header_id(req, "X-LXD-gid")?;
    let mode = match req.header("X-LXD-mode") {
        None | Some("") => None,
        Some(m) => Some(
            u32::from_str_radix(m.trim(), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| Error::BadRequest(format!("Invalid X-LXD-mode {m:?}")))?,
        ),
    };
    let kind = req.header("X-LXD-type").unwrap_or("file").to_string();
    let append = match req.header("X-LXD-write").unwrap_or("overwrite") {
        "overwrite" | "" => false,
        "append" => true,
        w => return Err(Error::BadRequest(format!("Invalid X-LXD-write {w:?}"))),
    };
    let (parent, name) = split(path)?;
    let pfd = v.walk_dir(&parent)?;
    let disk_uid = uid.map(|u| Ids::to_disk(&ids.uid, u)).transpose()?;
    let disk_gid = gid.map(|g| Ids::to_disk(&ids.gid, g)).transpose()?;
    let owner = |fd: &OwnedFd, created: bool| -> Result<()> {
        // New objects default to container root; existing ones keep their owner unless asked.
        let (u, g) = if created {
            (
                Some(disk_uid.map_or_else(|| Ids::to_disk(&ids.uid, 0), Ok)?),
                Some(disk_gid.map_or_else(|| Ids::to_disk(&ids.gid, 0), Ok)?),
            )
        } else {
            (disk_uid, disk_gid)
        };
        if u.is_some() || g.is_some() {
            v.act(fd, path, || {
                rustix::fs::fchown(fd, u.map(disk_uid_of), g.map(disk_gid_of))
                    .map_err(|e| io_err(path, e))
            })?;
        }
        Ok(())
    };
    let chmod = |fd: &OwnedFd, m: u32| {
        v.act(fd, path, || {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(m)).map_err(|e| io_err(path, e))
        })
    };
    match kind.as_str() {
        "directory" => {
            let made = v.act(&pfd, path, || {
                match rustix::fs::mkdirat(
                    &pfd,
                    name.as_str(),
                    Mode::from_raw_mode(mode.unwrap_or(0o755)),
                ) {
                    Ok(()) => Ok(true),
                    Err(rustix::io::Errno::EXIST) => Ok(false),
                    Err(e) => Err(io_err(path, e)),
                }
            })?;
            // An existing directory is left as it is (LXD 5.0.2).
            if made {
                let dfd = rustix::fs::openat(
                    &pfd,
                    name.as_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(path, e))?;
                let dfd = v.act(&dfd, path, || reopen(&dfd, OFlags::RDONLY, path))?;
                owner(&dfd, true)?;
                chmod(&dfd, mode.unwrap_or(0o755))?;
            }
        }
        "symlink" => {
            let target = req
                .read_body(4096)
                .map_err(|e| Error::BadRequest(format!("symlink target: {e}")))?;
            let target = String::from_utf8(target)
                .map_err(|_| Error::BadRequest("symlink target is not UTF-8".into()))?;
            let made = v.act(&pfd, path, || {
                Ok(rustix::fs::symlinkat(target.as_str(), &pfd, name.as_str()))
            })?;
            match made {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {
                    let st = rustix::fs::statat(
                        &pfd,
                        name.as_str(),
                        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| io_err(path, e))?;
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        != rustix::fs::FileType::Symlink
                    {
                        return Err(Error::Conflict(format!(
                            "{path}: exists and is not a symlink"
                        )));
                    }
                    unlink(v, &pfd, &name, path, rustix::fs::AtFlags::empty())?;
                    v.act(&pfd, path, || {
                        rustix::fs::symlinkat(target.as_str(), &pfd, name.as_str())
                            .map_err(|e| io_err(path, e))
                    })?;
                }
                Err(e) => return Err(io_err(path, e)),
            }
            let u = disk_uid.map_or_else(|| Ids::to_disk(&ids.uid, 0), Ok)?;
            let g = disk_gid.map_or_else(|| Ids::to_disk(&ids.gid, 0), Ok)?;
            // The link just made is the maker's own.
            let link = rustix::fs::openat(
                &pfd,
                name.as_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(path, e))?;
            // Through the link's own descriptor: that very inode, whatever the name holds now.
            v.act(&link, path, || {
                rustix::fs::chownat(
                    &link,
                    "",
                    Some(disk_uid_of(u)),
                    Some(disk_gid_of(g)),
                    rustix::fs::AtFlags::EMPTY_PATH | rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err(path, e))
            })?;
        }
        "file" => {
            let made = v.act(&pfd, path, || {
                Ok(rustix::fs::openat(
                    &pfd,
                    name.as_str(),
                    crate::util::fs::NEW_FILE,
                    Mode::from_raw_mode(0o600),
                ))
            })?;
            let (fd, created) = match made {
                Ok(fd) => (fd, true),
                Err(rustix::io::Errno::EXIST) => {
                    // An existing file is written where its path leads inside the container, a
                    // last symlink followed there too (as LXD's SFTP server opens it:
                    // /etc/resolv.conf often is one). What is found is checked before it is
                    // opened for writing (a FIFO or a device node is never written to), then
                    // that very inode is opened again through its descriptor; truncated only
                    // once it is known regular.
                    let not_regular = || Error::BadRequest(format!("{path}: not a regular file"));
                    let found = v.walk(path, true)?;
                    let st = rustix::fs::fstat(&found).map_err(|e| io_err(path, e))?;
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        != rustix::fs::FileType::RegularFile
                    {
                        return Err(not_regular());
                    }
                    let mut flags = OFlags::WRONLY | OFlags::NONBLOCK;
                    if append {
                        flags |= OFlags::APPEND;
                    }
                    let fd = v.act(&found, path, || reopen(&found, flags, path))?;
                    let st2 = rustix::fs::fstat(&fd).map_err(|e| io_err(path, e))?;
                    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
                        return Err(not_regular());
                    }
                    if !append {
                        rustix::fs::ftruncate(&fd, 0).map_err(|e| io_err(path, e))?;
                    }
                    (fd, false)
                }
                Err(e) => return Err(io_err(path, e)),
            };
            let res = (|| -> Result<()> {
                // An existing file keeps its owner and mode (LXD 5.0.2 sets them on new ones).
                if created {
                    owner(&fd, true)?;
                    chmod(&fd, mode.unwrap_or(0o644))?;
                }
                let mut f = std::fs::File::from(
                    fd.as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| Error::Internal(e.to_string()))?,
                );
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = req
                        .body()
                        .read(&mut buf)
                        .map_err(|e| Error::BadRequest(format!("reading upload: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n])
                        .map_err(|e| Error::Internal(format!("{path}: {e}")))?;
                }
                Ok(())
            })();
            if res.is_err() && created {
                let _ = unlink(v, &pfd, &name, path, rustix::fs::AtFlags::empty());
            }
            res?;
        }
        other => return Err(Error::BadRequest(format!("Invalid X-LXD-type {other:?}"))),
    }
    Ok(response::empty())
}

fn remove(v: &View, path: &str) -> Result<Response> {
    let (parent, name) = split(path)?;
    let pfd = v.walk_dir(&parent)?;
    let st = rustix::fs::statat(&pfd, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err(path, e))?;
    let flags =
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            rustix::fs::AtFlags::REMOVEDIR
        } else {
            rustix::fs::AtFlags::empty()
        };
    unlink(v, &pfd, &name, path, flags)?;
    Ok(response::empty())
}

/// Open the inode open as `fd` (an `O_PATH` descriptor) again with `flags`, through its
/// descriptor: that very inode, its permission checked now.
fn reopen(fd: &OwnedFd, flags: OFlags, path: &str) -> Result<OwnedFd> {
    let again = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(again.as_str(), flags | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err(path, e))
}

/// Remove entry `name` of the directory open as `pfd` as the container's root would: its
/// capabilities over the directory, and in a sticky directory (`/tmp`) over the entry too.
fn unlink(
    v: &View,
    pfd: &OwnedFd,
    name: &str,
    path: &str,
    flags: rustix::fs::AtFlags,
) -> Result<()> {
    let sticky = rustix::fs::fstat(pfd)
        .map(|st| st.st_mode & 0o1000 != 0)
        .map_err(|e| io_err(path, e))?;
    let entry = rustix::fs::openat(
        pfd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(path, e))?;
    let go = || rustix::fs::unlinkat(pfd, name, flags).map_err(|e| io_err(path, e));
    if sticky {
        v.act_on(&[pfd, &entry], path, go)
    } else {
        v.act(pfd, path, go)
    }
}

fn disk_uid_of(u: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u)
}

fn disk_gid_of(g: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paths() {
        assert_eq!(
            split("/etc/hostname").unwrap(),
            ("/etc".into(), "hostname".into())
        );
        assert_eq!(split("/x").unwrap(), ("/".into(), "x".into()));
        assert_eq!(split("/a/b/").unwrap(), ("/a".into(), "b".into()));
        assert!(split("relative").is_err());
        assert!(split("/").is_err());
        assert!(split("/a/..").is_err());
    }

    #[test]
    fn maps_ids() {
        let m = vec![IdMapEntry {
            nsid: 0,
            hostid: 1_000_000,
            count: 65536,
        }];
        assert_eq!(Ids::to_disk(&m, 5).unwrap(), 1_000_005);
        assert!(Ids::to_disk(&m, 70000).is_err());
        assert_eq!(Ids::from_disk(&m, 1_000_005), 5);
        assert_eq!(Ids::from_disk(&m, 0), 65534);
        assert_eq!(Ids::to_disk(&[], 5).unwrap(), 5);
    }
}
