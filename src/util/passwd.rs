//! User and group names from `/etc/passwd` and `/etc/group`, read directly: glibc's
//! `getpwuid`/`getgrnam` go through NSS, whose modules are shared libraries loaded at run time,
//! which the static binary must never do. So only the local files count (no LDAP, no
//! systemd-userdb), which is what a host running bivy has for root and its socket group.

use std::io;
use std::path::Path;

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

/// The name of user `uid` in a `passwd` text (`name:x:uid:gid:...`), the first line with it.
pub fn user_name_in(text: &str, uid: u32) -> Option<String> {
    entries(text)
        .find(|(_, id)| *id == uid)
        .map(|(n, _)| n.to_owned())
}

/// The id of group `name` in a `group` text (`name:x:gid:members`), the first line with it.
pub fn group_id_in(text: &str, name: &str) -> Option<u32> {
    entries(text).find(|(n, _)| *n == name).map(|(_, id)| id)
}

/// The `(name, id)` of each well-formed line (the first and third fields; comments, blank
/// lines, NIS `+`/`-` lines and lines with a bad id skipped).
fn entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        let ok = !name.is_empty() && !name.starts_with(['#', '+', '-']);
        ok.then_some((name, id))
    })
}

fn read(path: &str) -> io::Result<String> {
    std::fs::read_to_string(Path::new(path))
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// The name of user `uid` in `/etc/passwd` (None: no such line).
pub fn user_name(uid: u32) -> io::Result<Option<String>> {
    Ok(user_name_in(&read(PASSWD)?, uid))
}

/// The id of group `name` in `/etc/group` (None: no such line).
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    Ok(group_id_in(&read(GROUP)?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment:x:5:5\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n+nis:x:7:7\n\
                      broken:x:notanumber:1\nshort:x\nsecond:x:1:1::/:/bin/sh\n";
        assert_eq!(user_name_in(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name_in(passwd, 1).as_deref(), Some("daemon"));
        assert_eq!(user_name_in(passwd, 5), None);
        assert_eq!(user_name_in(passwd, 7), None);
        assert_eq!(user_name_in(passwd, 1000), None);

        let group = "root:x:0:\nlxd:x:998:alice,bob\n\nadm:x:4:syslog\nlxd:x:999:\n";
        assert_eq!(group_id_in(group, "lxd"), Some(998));
        assert_eq!(group_id_in(group, "root"), Some(0));
        assert_eq!(group_id_in(group, "LXD"), None);
        assert_eq!(group_id_in(group, "ad"), None);
        assert_eq!(group_id_in(group, ""), None);
    }

    #[test]
    fn this_hosts_files() {
        // Every Linux host names root 0 and has a root group.
        assert_eq!(user_name(0).unwrap().as_deref(), Some("root"));
        assert_eq!(group_id("root").unwrap(), Some(0));
    }
}
