//! The raw `seccomp(2)` call, so that installing a filter does NOT set NO_NEW_PRIVS.
//!
//! seccompiler's `apply_filter` always calls `prctl(PR_SET_NO_NEW_PRIVS)`, which would make every
//! setuid program (sudo, su, ping, passwd) in the container lose its privileges. Without
//! NO_NEW_PRIVS the kernel requires CAP_SYS_ADMIN in the caller's user namespace: the container's
//! init has it (it is root of its own userns) until it execs, so the filter is loaded there.

use std::io;

/// `seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog)`: installs the filter on
/// every thread of the calling process (TSYNC), so no thread is left unfiltered.
/// Fails with EACCES when the caller has neither CAP_SYS_ADMIN in its user namespace nor
/// NO_NEW_PRIVS set, and EINVAL for a program the kernel's checker refuses.
pub fn set_mode_filter(prog: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which stays borrowed (alive, unmodified) for the whole call;
    // the kernel only reads `len` instructions from it and copies them. No other pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc > 0 {
        // TSYNC could not synchronise thread `rc` (it has a diverging filter stack); nothing was installed.
        return Err(io::Error::other(format!(
            "thread {rc} could not be synchronised (SECCOMP_FILTER_FLAG_TSYNC)"
        )));
    }
    Ok(())
}
