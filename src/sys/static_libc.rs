//! `pthread_getattr_np` of our own, for the static binary only.
//!
//! glibc's reads `/proc/self/maps` with `sscanf` to find the main thread's stack, and that one
//! call links glibc's whole `scanf` family and the `strtod`/`strtold`/`strtof128` it needs (about
//! 85 KB of the static binary: `cargo xtask dist`'s size). std calls `pthread_getattr_np` only to
//! learn where a thread's stack ends, so that an overflow into the guard page is reported as
//! "thread '…' has overflowed its stack" rather than as a plain SIGSEGV. This one answers for
//! the main thread exactly as glibc does (the mapping holding `__libc_stack_end`, cut to
//! `RLIMIT_STACK` and to the mapping below it), and `ENOSYS` for the other threads, whose stack
//! block only glibc's thread descriptor knows: std then takes their guard as unknown, and an
//! overflow there ends the process with SIGSEGV, unnamed.
//!
//! Dynamic builds (tests, `cargo run`) keep glibc's, whose other threads' answers they use.

#[cfg(target_feature = "crt-static")]
use std::ffi::c_void;

#[cfg(target_feature = "crt-static")]
// SAFETY: glibc defines this variable with this type in every static binary (dl-support.c).
unsafe extern "C" {
    /// The top of the main thread's stack, as the kernel laid it out (glibc's).
    static __libc_stack_end: *mut c_void;
}

/// The main thread's stack as `(lowest address, size)`, from the text of `/proc/self/maps`.
#[cfg_attr(not(target_feature = "crt-static"), allow(dead_code))]
fn main_stack(maps: &str, stack_end: usize, page: usize, rlimit: u64) -> Option<(usize, usize)> {
    let top = (stack_end & !(page - 1)) + page;
    let mut last_to = 0usize;
    for (from, to, _, _) in maps.lines().filter_map(super::maps_line) {
        if from <= stack_end && stack_end < to {
            let limit = usize::try_from(rlimit).unwrap_or(usize::MAX);
            let size = limit.saturating_sub(to - top) & !(page - 1);
            let size = size.min(top - last_to);
            return Some((top - size, size));
        }
        last_to = to;
    }
    None
}

/// See the module's text.
///
/// # Safety
///
/// `attr` must point to writable memory for a `pthread_attr_t`, as for glibc's.
#[cfg(target_feature = "crt-static")]
// SAFETY: no other definition of this symbol is linked (glibc's archive member is left out
// because this one is found first); the signature is glibc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_getattr_np(
    thread: libc::pthread_t,
    attr: *mut libc::pthread_attr_t,
) -> libc::c_int {
    // SAFETY: plain calls without arguments that can be invalid.
    let main = unsafe { libc::pthread_equal(thread, libc::pthread_self()) != 0 }
        && rustix::thread::gettid() == rustix::process::getpid();
    if !main {
        return libc::ENOSYS;
    }
    // /proc files have no size: a buffer big enough for most processes' maps at once.
    let mut maps = Vec::with_capacity(16 << 10);
    let read = std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut maps));
    let (Ok(_), Ok(maps)) = (read, std::str::from_utf8(&maps)) else {
        return libc::ENOSYS;
    };
    // SAFETY: sysconf takes a plain integer.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let rlimit = rustix::process::getrlimit(rustix::process::Resource::Stack)
        .current
        .unwrap_or(u64::MAX);
    // SAFETY: glibc sets this variable before any Rust code runs and never changes it.
    let stack_end = unsafe { __libc_stack_end } as usize;
    let Some((low, size)) = main_stack(maps, stack_end, page, rlimit) else {
        return libc::ENOSYS;
    };
    // SAFETY: `attr` is valid for writes (the caller's contract); it is initialized before the
    // stack is set, and destroyed again if that fails, as glibc's own leaves nothing to free.
    unsafe {
        let r = libc::pthread_attr_init(attr);
        if r != 0 {
            return r;
        }
        let r = libc::pthread_attr_setstack(attr, low as *mut c_void, size);
        if r != 0 {
            libc::pthread_attr_destroy(attr);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::main_stack;

    const MAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fe:00 123 /usr/bin/bivy
7ffc00000000-7ffc00010000 rw-p 00000000 00:00 0
7ffc10000000-7ffc10021000 rw-p 00000000 00:00 0                          [stack]
7ffc10100000-7ffc10102000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn the_main_stack_as_glibc_finds_it() {
        let page = 4096;
        let end = 0x7ffc_1002_0ff8;
        // 8 MiB of rlimit: 8 MiB below the top of the mapping.
        let (low, size) = main_stack(MAPS, end, page, 8 << 20).expect("found");
        assert_eq!(low + size, 0x7ffc_1002_1000);
        assert_eq!(low, 0x7ffc_1002_1000 - (8 << 20));
        // Unlimited: down to the end of the mapping below.
        let (low, _) = main_stack(MAPS, end, page, u64::MAX).expect("found");
        assert_eq!(low, 0x7ffc_0001_0000);
        // 64 KiB: within the stack mapping.
        let (low, size) = main_stack(MAPS, end, page, 64 << 10).expect("found");
        assert_eq!((low, size), (0x7ffc_1002_1000 - (64 << 10), 64 << 10));
        assert!(main_stack(MAPS, 0x1000, page, 8 << 20).is_none());
    }
}
