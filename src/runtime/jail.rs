//! Running a host program that may write only below one directory: `bivy __write-only-below DIR
//! PROGRAM ARGS...` makes a private mount namespace, turns every mount in it read-only, puts a
//! writable copy of DIR's mount back on DIR, and execs PROGRAM there. Used for the rsync that
//! receives a migration from a peer: whatever the peer's stream holds (a symlink planted to lead
//! a later file out of the tree, a path with `..`), rsync can create nothing outside the
//! instance's volume (`EROFS`).

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, MsFlags};

use super::helper::helper_command;
use super::{Error, Result};
use crate::sys;

/// A command running `program` able to write only below `dir` (add its arguments).
pub fn command(dir: &Path, program: &Path) -> Result<Command> {
    let mut c = helper_command("bivy-jail")?;
    c.arg("__write-only-below").arg(dir).arg(program);
    Ok(c)
}

/// `bivy __write-only-below DIR PROGRAM ARGS...`.
pub fn helper(args: &[String]) -> ! {
    let (Some(dir), Some(prog)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bivy __write-only-below DIR PROGRAM ARGS...");
        std::process::exit(2)
    };
    let _ = sys::close_range_from(3, false);
    if let Err(e) = confine(Path::new(dir)) {
        eprintln!("bivy: {e}");
        std::process::exit(126)
    }
    let e = Command::new(prog).args(&args[2..]).exec();
    eprintln!("bivy: exec {prog}: {e}");
    std::process::exit(127)
}

fn confine(dir: &Path) -> Result<()> {
    let e = |what: &str, x: &dyn std::fmt::Display| Error(format!("{what}: {x}"));
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|x| e("unshare(CLONE_NEWNS)", &x))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|x| e("make / private", &x))?;
    // The writable copy first, then everything read-only, then the copy back on top.
    let rw = sys::open_tree_clone(dir, true)
        .map_err(|x| e(&format!("open_tree {}", dir.display()), &x))?;
    let root = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|x| e("open /", &x))?;
    sys::mount_setattr_flags(root.as_fd(), sys::MOUNT_ATTR_RDONLY, true)
        .map_err(|x| e("make every mount read-only", &x))?;
    sys::move_mount_to(rw.as_fd(), dir)
        .map_err(|x| e(&format!("mount on {}", dir.display()), &x))?;
    Ok(())
}
