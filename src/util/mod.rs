//! Small in-house helpers instead of helper crates.

pub mod base64;
pub mod fs;
pub mod memo;
pub mod par;
pub mod passwd;
pub mod pool;
pub mod regex;
pub mod revert;
pub mod shared;
pub mod sort;
pub mod stream;
#[cfg(test)]
pub mod tempdir;
pub mod time;
pub mod trace;
pub mod yaml;

/// Lock `m`; a lock poisoned by a thread that panicked holding it is taken as it is.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Undo the `\ooo` octal escapes (`\040` for a space) of paths in /proc/self/mountinfo.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/<pid>/mountinfo`: the mount point, filesystem type and source.
pub fn mountinfo_fields(line: &str) -> Option<(String, &str, &str)> {
    let (pre, post) = line.split_once(" - ")?;
    let mount_point = unescape_mountinfo(pre.split(' ').nth(4)?);
    let mut post = post.split(' ');
    let fstype = post.next()?;
    let source = post.next()?;
    Some((mount_point, fstype, source))
}

/// Drop this thread's mount namespace's copies of storage pools' mounts (a private namespace:
/// a container's monitor once the container runs, a daemon thread's view of a layered volume).
/// Every mount point directly in a directory named `storage-pools`: our daemon's loop pools
/// (`<bivy dir>/storage-pools/NAME`), another bivy daemon's, LXD's, whose filesystem a copy held
/// here would keep busy after its owner unmounted it, so that its pool could not be deleted.
/// Each is unmounted until it is no mount point here (`EINVAL`): a copy that had a pool mounted
/// twice there would otherwise keep the lower one. A mount that holds one of the paths `keep`
/// stays.
pub fn drop_pool_mounts(keep: &[&std::path::Path]) {
    use std::path::{Path, PathBuf};
    let Ok(info) = std::fs::read_to_string("/proc/thread-self/mountinfo") else {
        return;
    };
    let points = info
        .lines()
        .filter_map(mountinfo_fields)
        .map(|(mount_point, _, _)| PathBuf::from(mount_point))
        .filter(|p| {
            p.parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "storage-pools")
                && !keep.iter().any(|k| k.starts_with(p))
        });
    for path in points {
        for _ in 0..16 {
            if nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

/// The multiplier of a byte-size unit as LXD reads them (`units.ParseByteSizeString`): none,
/// `B` or `bytes`; `kB`/`KB`, `MB` ... `EB` (powers of 1000); `KiB` ... `EiB` (powers of 1024).
pub fn byte_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "" | "B" | "bytes" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "PB" => 1000u64.pow(5),
        "EB" => 1000u64.pow(6),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        "EiB" => 1 << 60,
        _ => return None,
    })
}

/// Lower-case hex of `bytes`.
/// Whether two secrets are equal, compared in time that does not depend on where they differ
/// (an empty secret never matches).
pub fn same_secret(a: &str, b: &str) -> bool {
    !a.is_empty()
        && a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A byte count or rate as lxc prints progress: `1.23MB` (decimal units, two decimals).
pub fn human_bytes(b: f64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.2}{}", U[i])
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}
