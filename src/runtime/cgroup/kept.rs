//! The files a listing reads for every running container (its usage figures and
//! `cgroup.events`), kept open between listings and read again from offset 0: cgroupfs renders
//! a file afresh for each read at offset 0, so a kept file answers what a fresh open would, and
//! a listing saves an open and a close (most of a read's cost: the walk down a six-component
//! path) for each of them.
//!
//! - Kept by cgroup name, then file name; a file that does not exist is remembered as absent
//!   (a cgroup's set of files does not change while it exists).
//! - A cgroup removed (its container stopped) answers `ENODEV` on its kept files: the read drops
//!   the cgroup's files and opens the path again, which then fails as a read of a missing file
//!   would. [`sweep`] (as each monitor ends) lets go of every removed cgroup's files.
//! - At most three eighths of the open-files limit are kept (`helper::fd_share`); past it,
//!   files are opened each time.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// A cgroup's kept files by file name (the files read are named alike in no two of its
/// directories).
type Files = HashMap<&'static str, Entry>;

enum Entry {
    Open(Arc<File>),
    /// The file does not exist (at this path).
    Absent(PathBuf),
}

struct Kept {
    by_cgroup: HashMap<String, Files>,
    open: usize,
}

fn kept() -> MutexGuard<'static, Kept> {
    static KEPT: LazyLock<Mutex<Kept>> = LazyLock::new(|| {
        Mutex::new(Kept {
            by_cgroup: HashMap::new(),
            open: 0,
        })
    });
    KEPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// The whole text of file `file` in `dir`, a directory of cgroup `cgroup`'s, from a kept file
/// when there is one (the path is made only when the file is opened).
pub(super) fn read(cgroup: &str, dir: &Path, file: &'static str) -> io::Result<String> {
    let found = kept()
        .by_cgroup
        .get(cgroup)
        .and_then(|files| match files.get(file) {
            Some(Entry::Open(f)) => Some(Some(f.clone())),
            Some(Entry::Absent(_)) => Some(None),
            None => None,
        });
    match found {
        Some(Some(f)) => match read_from_start(&f) {
            Ok(t) => return Ok(t),
            // Removed (ENODEV) or otherwise unreadable: its cgroup's files go, the path is
            // read afresh below.
            Err(_) => forget(cgroup),
        },
        Some(None) => return Err(io::ErrorKind::NotFound.into()),
        None => {}
    }
    let path = dir.join(file);
    let (f, text) = match File::open(&path) {
        Ok(f) => {
            let text = read_from_start(&f)?;
            (Entry::Open(Arc::new(f)), text)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Absent, unless the cgroup is gone: then nothing is remembered of it.
            if dir.is_dir() {
                remember(cgroup, file, Entry::Absent(path));
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    remember(cgroup, file, f);
    Ok(text)
}

fn remember(cgroup: &str, file: &'static str, e: Entry) {
    let mut k = kept();
    let new = matches!(e, Entry::Open(_));
    if new && k.open >= super::super::helper::fd_share(super::super::helper::Kept::CgroupFiles) {
        return;
    }
    let files = k.by_cgroup.entry(cgroup.to_string()).or_default();
    if let Some(Entry::Open(_)) = files.insert(file, e) {
        k.open -= 1;
    }
    if new {
        k.open += 1;
    }
}

impl Kept {
    /// Let go of cgroup `cgroup`'s files.
    fn drop_cgroup(&mut self, cgroup: &str) {
        if let Some(files) = self.by_cgroup.remove(cgroup) {
            self.open -= files
                .values()
                .filter(|f| matches!(f, Entry::Open(_)))
                .count();
        }
    }
}

/// Let go of cgroup `cgroup`'s kept files.
pub(super) fn forget(cgroup: &str) {
    kept().drop_cgroup(cgroup);
}

/// Let go of the kept files of every cgroup that was removed (one read each).
pub(super) fn sweep() {
    let mut k = kept();
    let gone: Vec<String> = k
        .by_cgroup
        .iter()
        .filter(|(_, files)| {
            let open = files.values().find_map(|f| match f {
                Entry::Open(f) => Some(f),
                Entry::Absent(_) => None,
            });
            match open {
                Some(f) => read_from_start(f).is_err(),
                // Only absent files: gone when their directory is.
                None => !files.values().any(|f| match f {
                    Entry::Absent(p) => p.parent().is_some_and(Path::is_dir),
                    Entry::Open(_) => false,
                }),
            }
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        k.drop_cgroup(&name);
    }
}

/// How many files are kept (for tests).
#[cfg(test)]
pub(super) fn open_count() -> usize {
    kept().open
}

/// The file's text from offset 0, in one read when it fits in 4 KiB (these all do; cgroupfs
/// gives a file's whole text to one read that has room for it).
fn read_from_start(f: &File) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match f.read_at(&mut chunk, buf.len() as u64) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a real cgroup: a kept file answers fresh values, a missing file is remembered as
    /// absent, a removed cgroup's files go at the next read or sweep, and one made again under
    /// the same name is read afresh.
    #[test]
    fn kept_files_read_fresh_and_go_with_their_cgroup() {
        let Some(root) = super::super::Layout::probe().unified.clone() else {
            eprintln!("SKIP kept_files_read_fresh_and_go_with_their_cgroup: no cgroup2 mount");
            return;
        };
        let name = format!("bivy-kept-test-{}", std::process::id());
        let dir = root.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("SKIP kept_files_read_fresh_and_go_with_their_cgroup: {e}");
            return;
        }
        let events = "cgroup.events";
        let before = open_count();
        assert!(read(&name, &dir, events).unwrap().contains("populated 0"));
        assert_eq!(open_count(), before + 1);
        let e = read(&name, &dir, "no.such.file").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(open_count(), before + 1);

        // A process moved in: the kept file says so.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        assert!(read(&name, &dir, events).unwrap().contains("populated 1"));
        child.kill().unwrap();
        child.wait().unwrap();
        let t = std::time::Instant::now();
        while !read(&name, &dir, events).unwrap().contains("populated 0") {
            assert!(t.elapsed().as_secs() < 5, "still populated");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(open_count(), before + 1);

        // Removed: the next read fails as a fresh one would, and keeps nothing.
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(
            read(&name, &dir, events).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(open_count(), before);

        // Made again: read afresh; removed again: the sweep lets it go.
        std::fs::create_dir(&dir).unwrap();
        assert!(read(&name, &dir, events).unwrap().contains("populated 0"));
        assert_eq!(open_count(), before + 1);
        std::fs::remove_dir(&dir).unwrap();
        sweep();
        assert_eq!(open_count(), before);
    }
}
