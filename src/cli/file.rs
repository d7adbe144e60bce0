//! `file push|pull|delete|edit` over `/1.0/instances/NAME/files` (api §1.7).
//!
//! SAFETY RULE: `file pull` never chmods or chowns a destination it did not create. Real lxc
//! chmods its destination to the pulled file's mode, and pulling into /dev/null once left the
//! host's /dev/null at 0644, breaking every container. Here the mode is set only on a regular
//! file this process just created (through the new file's own descriptor); an existing
//! destination (a device, a fifo, a user's file) is written to and left as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argh::FromArgs;

use super::{fail, instance_path, parse, target, CmdResult, Fail, DASH};
use crate::client::{urlencode, Client};
use crate::http::Body;

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Push files into instances: bivy file push SRC... NAME/PATH
pub struct PushArgs {
    #[argh(positional)]
    /// sources then the target
    paths: Vec<String>,
    #[argh(switch, short = 'r')]
    /// recursively transfer files
    recursive: bool,
    #[argh(switch, short = 'p')]
    /// create any directories necessary
    create_dirs: bool,
    #[argh(option)]
    /// set the file's uid on push
    uid: Option<i64>,
    #[argh(option)]
    /// set the file's gid on push
    gid: Option<i64>,
    #[argh(option)]
    /// set the file's perms on push (octal)
    mode: Option<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Pull files from instances: bivy file pull NAME/PATH... DEST
pub struct PullArgs {
    #[argh(positional)]
    /// sources then the target
    paths: Vec<String>,
    #[argh(switch, short = 'r')]
    /// recursively transfer files
    recursive: bool,
    #[argh(switch, short = 'p')]
    /// create any directories necessary
    create_dirs: bool,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Delete files in instances: bivy file delete NAME/PATH...
pub struct DeleteArgs {
    #[argh(positional)]
    /// files to delete
    paths: Vec<String>,
}

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Edit files in instances: bivy file edit NAME/PATH
pub struct EditArgs {
    #[argh(positional)]
    /// file to edit
    path: String,
}

const USAGE: &str = "Usage:\n  bivy file [command]\n\nAvailable Commands:\n  delete      Delete files in instances\n  edit        Edit files in instances\n  pull        Pull files from instances\n  push        Push files into instances\n";

pub fn run(args: &[String]) -> CmdResult {
    let Some(sub) = args.first() else {
        eprint!("{USAGE}");
        return Err(Fail::Exit(1));
    };
    let rest = &args[1..];
    match sub.as_str() {
        "push" => push(rest),
        "pull" => pull(rest),
        "delete" | "rm" => delete(rest),
        "edit" => edit(rest),
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        other => {
            eprint!("{USAGE}");
            fail(format!("unknown command \"{other}\" for \"bivy file\""))
        }
    }
}

/// `[remote:]NAME/path` -> (the remote's client, instance, absolute path).
pub fn file_target(s: &str) -> Result<(Client, String, String), Fail> {
    let (c, rest) = target(s)?;
    let (name, path) = split_target(rest)?;
    Ok((c, name, path))
}

/// `NAME/path` -> (instance, absolute path).
pub fn split_target(s: &str) -> Result<(String, String), Fail> {
    match s.split_once('/') {
        Some((name, path)) if !name.is_empty() => Ok((
            name.to_string(),
            format!("/{}", path.trim_start_matches('/')),
        )),
        _ => fail(format!("Invalid target {s}")),
    }
}

fn files_path(name: &str, path: &str) -> String {
    format!(
        "{}/files?path={}",
        instance_path(name),
        urlencode(path, false)
    )
}

fn join_remote(dir: &str, base: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), base)
}

/// Owner and mode sent with a pushed file.
#[derive(Clone, Copy)]
struct Owner {
    uid: i64,
    gid: i64,
    mode: u32,
}

fn post_file(
    c: &Client,
    name: &str,
    path: &str,
    kind: &str,
    o: Owner,
    body: Body,
) -> Result<(), Fail> {
    let Owner { uid, gid, mode } = o;
    let headers = vec![
        ("X-LXD-uid".to_string(), uid.to_string()),
        ("X-LXD-gid".to_string(), gid.to_string()),
        ("X-LXD-mode".to_string(), format!("{mode:04o}")),
        ("X-LXD-type".to_string(), kind.to_string()),
        ("X-LXD-write".to_string(), "overwrite".to_string()),
    ];
    c.upload("POST", &files_path(name, path), &headers, body)?;
    Ok(())
}

/// Create the missing parents of `path` in the instance (like `mkdir -p`), never touching
/// existing ones.
fn mkdir_parents(c: &Client, name: &str, path: &str, uid: i64, gid: i64) -> Result<(), Fail> {
    let mut cur = String::new();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        cur = format!("{cur}/{part}");
        if c.with_response("GET", &files_path(name, &cur), &[], Body::Empty, |r| {
            Ok(r.status < 300)
        })? {
            continue;
        }
        post_file(
            c,
            name,
            &cur,
            "directory",
            Owner {
                uid,
                gid,
                mode: 0o755,
            },
            Body::Empty,
        )?;
    }
    Ok(())
}

fn push(args: &[String]) -> CmdResult {
    let a: PushArgs = parse(&["bivy file push"], args)?;
    if a.paths.len() < 2 {
        return fail("Missing source or target");
    }
    let (sources, target) = a.paths.split_at(a.paths.len() - 1);
    let (c, name, tpath) = file_target(&target[0])?;
    let to_dir = tpath.ends_with('/') || sources.len() > 1 || a.recursive;
    let forced_mode = match &a.mode {
        Some(m) => {
            Some(u32::from_str_radix(m, 8).map_err(|_| Fail::Error(format!("Invalid mode {m}")))?)
        }
        None => None,
    };
    for src in sources {
        if src == DASH {
            if a.create_dirs {
                mkdir_parents(&c, &name, &tpath, a.uid.unwrap_or(0), a.gid.unwrap_or(0))?;
            }
            let stdin: Box<dyn Read + Send> = Box::new(io::stdin());
            let o = Owner {
                uid: a.uid.unwrap_or(0),
                gid: a.gid.unwrap_or(0),
                mode: forced_mode.unwrap_or(0o644),
            };
            post_file(&c, &name, &tpath, "file", o, Body::Reader(stdin, None))?;
            continue;
        }
        let local_path = Path::new(src);
        let base = local_path
            .file_name()
            .map(|b| b.to_string_lossy().to_string())
            .unwrap_or_default();
        let dest = if to_dir {
            join_remote(&tpath, &base)
        } else {
            tpath.clone()
        };
        let meta = fs::symlink_metadata(local_path)
            .map_err(|e| Fail::Error(super::io_error("open", local_path, &e)))?;
        if a.create_dirs {
            mkdir_parents(
                &c,
                &name,
                &dest,
                a.uid.unwrap_or(meta.uid() as i64),
                a.gid.unwrap_or(meta.gid() as i64),
            )?;
        }
        if meta.is_dir() {
            if !a.recursive {
                return fail(format!("{src} is a directory (use -r)"));
            }
            push_tree(&c, &name, local_path, &dest, &a, forced_mode)?;
        } else {
            push_one(&c, &name, local_path, &dest, &meta, &a, forced_mode)?;
        }
    }
    Ok(0)
}

fn push_one(
    c: &Client,
    name: &str,
    src: &Path,
    dest: &str,
    meta: &fs::Metadata,
    a: &PushArgs,
    forced: Option<u32>,
) -> Result<(), Fail> {
    let uid = a.uid.unwrap_or(meta.uid() as i64);
    let gid = a.gid.unwrap_or(meta.gid() as i64);
    let mode = forced.unwrap_or(meta.mode() & 0o7777);
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src)?;
        let body = Body::Bytes(target.to_string_lossy().as_bytes().to_vec());
        return post_file(c, name, dest, "symlink", Owner { uid, gid, mode }, body);
    }
    let f = File::open(src).map_err(|e| Fail::Error(super::io_error("open", src, &e)))?;
    let len = f.metadata()?.len();
    let progress = super::progress(format!("Pushing {} to {dest}", src.display()), len);
    let body = Body::Reader(
        Box::new(crate::client::ProgressReader::new(f, progress)),
        Some(len),
    );
    post_file(c, name, dest, "file", Owner { uid, gid, mode }, body)
}

fn push_tree(
    c: &Client,
    name: &str,
    src: &Path,
    dest: &str,
    a: &PushArgs,
    forced: Option<u32>,
) -> Result<(), Fail> {
    let meta = fs::symlink_metadata(src)?;
    let uid = a.uid.unwrap_or(meta.uid() as i64);
    let gid = a.gid.unwrap_or(meta.gid() as i64);
    post_file(
        c,
        name,
        dest,
        "directory",
        Owner {
            uid,
            gid,
            mode: meta.mode() & 0o7777,
        },
        Body::Empty,
    )?;
    let mut entries: Vec<_> = fs::read_dir(src)?.collect::<Result<_, _>>()?;
    crate::util::sort::sort_by_key(&mut entries, |e| e.file_name());
    for e in entries {
        let p = e.path();
        let m = fs::symlink_metadata(&p)?;
        let d = join_remote(dest, &e.file_name().to_string_lossy());
        if m.is_dir() {
            push_tree(c, name, &p, &d, a, forced)?;
        } else {
            push_one(c, name, &p, &d, &m, a, forced)?;
        }
    }
    Ok(())
}

/// Open a pull destination for writing. Returns the file and whether this call created it.
/// A new regular file gets `mode` (set on its own descriptor, past the umask); an existing path is
/// opened as it is, with its mode and owner untouched (regular files are truncated).
pub fn open_pull_dest(path: &Path, mode: u32) -> io::Result<(File, bool)> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
            Ok((f, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(path)?;
            let f = if meta.is_file() {
                OpenOptions::new().write(true).truncate(true).open(path)?
            } else {
                OpenOptions::new().write(true).open(path)?
            };
            Ok((f, false))
        }
        Err(e) => Err(e),
    }
}

/// Make `dest` a symlink to `target`, as the server does on push: an existing symlink is
/// replaced (through a rename, never half done), anything else there is an error.
fn write_symlink(target: &str, dest: &Path) -> crate::client::Result<()> {
    let fail = |e: &io::Error| crate::client::Error(super::io_error("symlink", dest, e));
    match std::os::unix::fs::symlink(target, dest) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(&e)),
    }
    let existing = fs::symlink_metadata(dest).map_err(|e| fail(&e))?;
    if !existing.file_type().is_symlink() {
        return Err(crate::client::Error(format!(
            "{}: exists and is not a symlink",
            dest.display()
        )));
    }
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.bivy-tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| fs::rename(&tmp, dest))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            fail(&e)
        })
}

fn header_mode(r: &crate::http::client::ClientResponse<'_>) -> u32 {
    r.header("X-LXD-mode")
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        .unwrap_or(0o644)
}

fn pull(args: &[String]) -> CmdResult {
    let a: PullArgs = parse(&["bivy file pull"], args)?;
    if a.paths.len() < 2 {
        return fail("Missing source or target");
    }
    let (sources, target) = a.paths.split_at(a.paths.len() - 1);
    let target = &target[0];
    if target == DASH {
        for s in sources {
            let (c, name, path) = file_target(s)?;
            c.download(&files_path(&name, &path), |mut r| {
                if r.header("X-LXD-type") == Some("directory") {
                    return Err(crate::client::Error(format!("{path} is a directory")));
                }
                let mut out = io::stdout().lock();
                io::copy(&mut r.body, &mut out)?;
                out.flush()?;
                Ok(())
            })?;
        }
        return Ok(0);
    }
    let tpath = PathBuf::from(target);
    let target_is_dir = tpath.is_dir();
    if !target_is_dir && (sources.len() > 1 || target.ends_with('/')) {
        if a.create_dirs {
            fs::create_dir_all(&tpath)?;
        } else {
            return fail(format!("Target path {target} is not a directory"));
        }
    }
    let into_dir = tpath.is_dir();
    for s in sources {
        let (c, name, path) = file_target(s)?;
        let base = Path::new(&path)
            .file_name()
            .map(|b| b.to_os_string())
            .unwrap_or_default();
        let dest = if into_dir {
            tpath.join(&base)
        } else {
            tpath.clone()
        };
        if a.create_dirs {
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)?;
            }
        }
        // A directory pulled to a path that is not there yet goes below it, by its own name
        // (lxc makes the path, then the directory in it).
        let nest = (a.recursive && !into_dir && !dest.exists()).then_some(base.as_os_str());
        pull_one(&c, &name, &path, &dest, a.recursive, nest)?;
    }
    Ok(0)
}

/// Pull `path` to `dest`; a directory with `recursive`, into `dest/nest` when `nest` is given
/// (`dest` made first).
fn pull_one(
    c: &Client,
    name: &str,
    path: &str,
    dest: &Path,
    recursive: bool,
    nest: Option<&std::ffi::OsStr>,
) -> Result<(), Fail> {
    enum Got {
        Done,
        Dir(Vec<String>, u32),
    }
    let got = c.download(&files_path(name, path), |mut r| {
        let mode = header_mode(&r);
        match r.header("X-LXD-type").unwrap_or("file") {
            "directory" => {
                let mut buf = Vec::new();
                r.body.read_to_end(&mut buf)?;
                let env = crate::client::parse_envelope(r.status, &buf)?;
                let names: Vec<String> = serde_json::from_value(env.metadata).unwrap_or_default();
                Ok(Got::Dir(names, mode))
            }
            "symlink" => {
                let mut target = String::new();
                r.body.read_to_string(&mut target)?;
                write_symlink(target.trim_end_matches('\n'), dest)?;
                Ok(Got::Done)
            }
            _ => {
                let (mut f, _created) = open_pull_dest(dest, mode)
                    .map_err(|e| crate::client::Error(super::io_error("open", dest, &e)))?;
                io::copy(&mut r.body, &mut f)?;
                Ok(Got::Done)
            }
        }
    })?;
    if let Got::Dir(names, mode) = got {
        if !recursive {
            return fail(format!("{path} is a directory (use -r)"));
        }
        let nested;
        let dest = match nest {
            Some(base) => {
                fs::create_dir_all(dest)?;
                nested = dest.join(base);
                nested.as_path()
            }
            None => dest,
        };
        match fs::create_dir(dest) {
            Ok(()) => fs::set_permissions(dest, fs::Permissions::from_mode(mode & 0o7777))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dest.is_dir() => {}
            Err(e) => return fail(format!("{}: {e}", dest.display())),
        }
        for n in names {
            pull_one(
                c,
                name,
                &join_remote(path, &n),
                &dest.join(&n),
                recursive,
                None,
            )?;
        }
    }
    Ok(())
}

fn delete(args: &[String]) -> CmdResult {
    let a: DeleteArgs = parse(&["bivy file delete"], args)?;
    if a.paths.is_empty() {
        return fail("Missing target");
    }
    for p in &a.paths {
        let (c, name, path) = file_target(p)?;
        c.delete(&files_path(&name, &path))?;
    }
    Ok(0)
}

fn edit(args: &[String]) -> CmdResult {
    let a: EditArgs = parse(&["bivy file edit"], args)?;
    let (c, name, path) = file_target(&a.path)?;
    let (content, mode, uid, gid) = c.download(&files_path(&name, &path), |mut r| {
        let mode = header_mode(&r);
        let uid = r
            .header("X-LXD-uid")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0i64);
        let gid = r
            .header("X-LXD-gid")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0i64);
        let mut buf = Vec::new();
        r.body.read_to_end(&mut buf)?;
        Ok((buf, mode, uid, gid))
    })?;
    let new = if super::is_tty(0) {
        super::config::edit_bytes(
            &content,
            Path::new(&path)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("txt"),
        )?
    } else {
        let mut buf = Vec::new();
        io::stdin().read_to_end(&mut buf)?;
        buf
    };
    post_file(
        &c,
        &name,
        &path,
        "file",
        Owner { uid, gid, mode },
        Body::Bytes(new),
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            split_target("c1/etc/hosts").unwrap(),
            ("c1".into(), "/etc/hosts".into())
        );
        assert_eq!(
            split_target("c1//root/x").unwrap(),
            ("c1".into(), "/root/x".into())
        );
        assert!(split_target("c1").is_err());
    }

    #[test]
    fn pull_never_chmods_what_it_did_not_create() {
        // /dev/null keeps its mode.
        let before = fs::metadata("/dev/null").unwrap().mode();
        let (mut f, created) = open_pull_dest(Path::new("/dev/null"), 0o644).unwrap();
        f.write_all(b"x").unwrap();
        assert!(!created);
        assert_eq!(fs::metadata("/dev/null").unwrap().mode(), before);

        let dir = std::env::temp_dir().join(format!("bivy-pull-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // An existing regular file keeps its mode, and gets the new content.
        let existing = dir.join("existing");
        fs::write(&existing, b"old content").unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o600)).unwrap();
        let (mut f, created) = open_pull_dest(&existing, 0o755).unwrap();
        f.write_all(b"new").unwrap();
        drop(f);
        assert!(!created);
        assert_eq!(fs::metadata(&existing).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::read(&existing).unwrap(), b"new");
        // A file it creates gets the pulled mode exactly (past the umask).
        let fresh = dir.join("fresh");
        let (_f, created) = open_pull_dest(&fresh, 0o775).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o775);
        fs::remove_dir_all(&dir).unwrap();
    }
}
