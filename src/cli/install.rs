//! `bivy install`: put this binary in place and write the service file for the host's init system.
//!
//! - The binary is `/proc/self/exe` copied to `PREFIX/bin/bivy` (default `/usr/local`), written
//!   atomically (temp file, fsync, rename, fsync of the directory); a different binary there is
//!   replaced (an upgrade), and said so.
//! - The init system is `--init`, else detected below `--root`: systemd when `run/systemd/system`
//!   exists, OpenRC when `sbin/openrc-run` does, runit when `etc/runit` or `etc/sv` does, sysvinit
//!   when `etc/init.d` exists and `start-stop-daemon` is in `sbin` or `usr/sbin`, else busybox init.
//! - The service files are the templates below, written atomically under `SYSCONFDIR` (default
//!   `/etc`): `systemd/system/bivy.service`, `init.d/bivy` (OpenRC or sysvinit), `sv/bivy/run`
//!   (runit). For busybox init the `inittab` line is printed, not written: inittab is the
//!   whole boot and only its owner should edit it. A service file that differs from ours is never
//!   replaced (or removed) without `--force`; the refusal names it and changes nothing.
//! - Every service stops the daemon alone with SIGTERM (systemd: `KillMode=process`): the
//!   containers keep running under their monitors and a new daemon reattaches to them.
//! - `--root DIR` writes everything below DIR while the files name their final paths (a package's
//!   staging tree: `cargo xtask deb` uses it); `--dry-run` shows what would be done and changes
//!   nothing; `--uninstall` removes the binary and the service file, never `$BIVY_DIR`.
//!
//! Nothing here starts, enables or stops a service: the next step is printed.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use argh::FromArgs;

use super::{fail, io_error, parse, CmdResult, Fail};
use crate::util::revert::Revert;

#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help"))]
/// Install this binary as PREFIX/bin/bivy and write the service file of the host's init system
/// (systemd, OpenRC, sysvinit, runit; for busybox init the inittab line is printed). Stopping the
/// service leaves the containers running.
pub struct InstallArgs {
    #[argh(option, default = "String::from(\"/usr/local\")")]
    /// where the binary goes: PREFIX/bin/bivy (default /usr/local)
    prefix: String,
    #[argh(option)]
    /// init system: systemd, openrc, sysvinit, runit or busybox (default: detected)
    init: Option<String>,
    #[argh(option, default = "String::from(\"/etc\")")]
    /// directory of the service files and of default/bivy (default /etc)
    sysconfdir: String,
    #[argh(option, default = "String::from(\"/\")")]
    /// write everything below this directory, the files naming their final paths (packaging)
    root: String,
    #[argh(option)]
    /// group allowed on the daemon's socket (bivy daemon --group GROUP)
    group: Option<String>,
    #[argh(switch)]
    /// show what would be written and change nothing
    dry_run: bool,
    #[argh(switch)]
    /// replace (or with --uninstall remove) service files that differ from bivy's
    force: bool,
    #[argh(switch)]
    /// remove the binary and the service file (never $BIVY_DIR and its containers)
    uninstall: bool,
}

/// An init system bivy has a service file for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    Systemd,
    Openrc,
    Sysvinit,
    Runit,
    Busybox,
}

impl Init {
    pub const ALL: [Init; 5] = [
        Init::Systemd,
        Init::Openrc,
        Init::Sysvinit,
        Init::Runit,
        Init::Busybox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::Openrc => "openrc",
            Init::Sysvinit => "sysvinit",
            Init::Runit => "runit",
            Init::Busybox => "busybox",
        }
    }

    pub fn parse(s: &str) -> Result<Init, String> {
        Init::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown init system {s:?} (use systemd, openrc, sysvinit, runit or busybox)"
                )
            })
    }

    /// The host's init system, looked for below `root`.
    pub fn detect(root: &Path) -> Init {
        let has = |p: &str| root.join(p).exists();
        if has("run/systemd/system") {
            Init::Systemd
        } else if has("sbin/openrc-run") {
            Init::Openrc
        } else if has("etc/runit") || has("etc/sv") {
            Init::Runit
        } else if has("etc/init.d")
            && (has("sbin/start-stop-daemon") || has("usr/sbin/start-stop-daemon"))
        {
            Init::Sysvinit
        } else {
            Init::Busybox
        }
    }

    /// The service file's path below SYSCONFDIR and its mode (none for busybox init).
    fn service_path(self) -> Option<(&'static str, u32)> {
        match self {
            Init::Systemd => Some(("systemd/system/bivy.service", 0o644)),
            Init::Openrc | Init::Sysvinit => Some(("init.d/bivy", 0o755)),
            Init::Runit => Some(("sv/bivy/run", 0o755)),
            Init::Busybox => None,
        }
    }
}

/// The systemd unit. LXD's own unit, less what bivy has no use for (lxcfs, the socket unit);
/// `ExecStop` is absent on purpose: the plain SIGTERM to the main process is bivy's clean stop.
pub const SYSTEMD_UNIT: &str = "\
[Unit]
Description=bivy system-container daemon (LXD API)
Documentation=man:bivy(1) man:bivy-install(1)
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
# BIVY_DIR=... (default /var/lib/bivy)
EnvironmentFile=-@SYSCONFDIR@/default/bivy
ExecStart=@BIN@ daemon@ARGS@
ExecStartPost=@BIN@ admin waitready --timeout=600
# SIGTERM to the daemon alone: the containers keep running under their monitors and the next
# daemon reattaches to them (a service restart or upgrade does not stop them).
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
TasksMax=infinity
TimeoutStartSec=600s
TimeoutStopSec=30s
Restart=on-failure

[Install]
WantedBy=multi-user.target
";

/// The OpenRC script (start-stop-daemon underneath, as OpenRC's default supervisor).
pub const OPENRC_SCRIPT: &str = "\
#!/sbin/openrc-run
# bivy system-container daemon (LXD API). Settings in @SYSCONFDIR@/conf.d/bivy: BIVY_DIR
# (default /var/lib/bivy), DAEMON_ARGS (more arguments of `bivy daemon`), BIVY_LOG, rc_ulimit
# (the daemon raises its soft open-file limit to the hard one; e.g. rc_ulimit=\"-n 1048576\").
# Stopping sends SIGTERM to the daemon alone: the containers keep running under their monitors
# and the next daemon reattaches to them (so no cgroup cleanup either).

description=\"bivy system-container daemon\"
command=\"@BIN@\"
command_args=\"daemon@ARGS@ ${DAEMON_ARGS}\"
command_background=\"yes\"
pidfile=\"/run/${RC_SVCNAME}.pid\"
retry=\"TERM/30/KILL/5\"
rc_cgroup_cleanup=\"no\"
# OpenRC's own start-stop-daemon keeps the output (--stdout); Debian's (dpkg's) has no such
# option, and there the output goes nowhere.
if start-stop-daemon --help 2>&1 | grep -q -- --stdout; then
\toutput_log=\"${BIVY_LOG:-/var/log/${RC_SVCNAME}.log}\"
\terror_log=\"${output_log}\"
fi
export BIVY_DIR=\"${BIVY_DIR:-/var/lib/bivy}\"

depend() {
\tneed localmount
\tafter net
}

# On cgroup2, OpenRC moves a service into the cgroup named after it, /sys/fs/cgroup/bivy (or
# unified/bivy): the very cgroup that holds bivy's containers (bivy/NAME), where cgroup2 allows
# no process beside its children. The daemon stays in the cgroup it was started in instead (and
# rc_cgroup_settings does not apply to it).
cgroup2_set_limits() { :; }
cgroup2_remove() { :; }

start_post() {
\t\"${command}\" admin waitready --timeout=600
}
";

/// The sysvinit (LSB) script: start-stop-daemon backgrounds the daemon and keeps its pid file.
pub const SYSVINIT_SCRIPT: &str = "\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          bivy
# Required-Start:    $local_fs $remote_fs $network
# Required-Stop:     $local_fs $remote_fs $network
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: bivy system-container daemon
# Description:       Serves the LXD REST API on $BIVY_DIR/unix.socket. Stopping
#                    the daemon leaves the containers running; the next daemon
#                    reattaches to them.
### END INIT INFO
# Settings in @SYSCONFDIR@/default/bivy: BIVY_DIR, PIDFILE, LOGFILE, DAEMON_ARGS.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
DAEMON=@BIN@
BIVY_DIR=/var/lib/bivy
PIDFILE=/run/bivy.pid
LOGFILE=/var/log/bivy.log
DAEMON_ARGS=\"@ARGS@\"
[ -r @SYSCONFDIR@/default/bivy ] && . @SYSCONFDIR@/default/bivy
export BIVY_DIR

# The package was removed but not purged: nothing to do.
[ -x \"$DAEMON\" ] || exit 0

# On a systemd host, hand over to systemctl (Debian's init-functions hook).
[ -r /lib/lsb/init-functions ] && . /lib/lsb/init-functions

ssd() {
\tstart-stop-daemon --pidfile \"$PIDFILE\" --name bivy \"$@\"
}

do_start() {
\tif ssd --status; then
\t\techo \"bivy is already running (pid $(cat \"$PIDFILE\"))\"
\t\treturn 0
\tfi
\tulimit -n 1048576 2>/dev/null || true
\tssd --start --quiet --background --make-pidfile --output \"$LOGFILE\" \\
\t\t--startas \"$DAEMON\" -- daemon $DAEMON_ARGS || return 1
\t# Ready when the API answers; a daemon that exits meanwhile has failed.
\ti=0
\twhile ! \"$DAEMON\" admin waitready --timeout=1 >/dev/null 2>&1; do
\t\tif ! ssd --status; then
\t\t\techo \"bivy: the daemon exited; see $LOGFILE\" >&2
\t\t\treturn 1
\t\tfi
\t\ti=$((i + 1))
\t\tif [ \"$i\" -ge 600 ]; then
\t\t\techo \"bivy: the daemon is not answering after 600s; see $LOGFILE\" >&2
\t\t\treturn 1
\t\tfi
\tdone
}

# SIGTERM to the daemon alone (KILL after 30s); 0 stopped, 1 was not running, 2 still running.
do_stop() {
\tssd --stop --quiet --retry=TERM/30/KILL/5 --remove-pidfile
}

case \"$1\" in
start)
\techo \"Starting bivy\"
\tdo_start
\t;;
stop)
\techo \"Stopping bivy (containers keep running)\"
\tdo_stop
\t[ $? -le 1 ]
\t;;
restart|force-reload)
\techo \"Restarting bivy (containers keep running)\"
\tdo_stop
\t[ $? -le 1 ] || exit 1
\tdo_start
\t;;
status)
\tssd --status
\trc=$?
\tcase $rc in
\t0) echo \"bivy is running (pid $(cat \"$PIDFILE\"))\" ;;
\t1) echo \"bivy is not running (stale $PIDFILE)\" ;;
\t*) echo \"bivy is not running\" ;;
\tesac
\texit $rc
\t;;
*)
\techo \"Usage: $0 {start|stop|restart|force-reload|status}\" >&2
\texit 3
\t;;
esac
";

/// The runit `run` script: the daemon in the foreground, its output to runit's log.
pub const RUNIT_RUN: &str = "\
#!/bin/sh
# runit service of the bivy system-container daemon. `sv down bivy` sends SIGTERM to the
# daemon alone: the containers keep running under their monitors and the next daemon
# reattaches to them. Settings in @SYSCONFDIR@/default/bivy: BIVY_DIR, DAEMON_ARGS.
BIVY_DIR=/var/lib/bivy
DAEMON_ARGS=\"@ARGS@\"
[ -r @SYSCONFDIR@/default/bivy ] && . @SYSCONFDIR@/default/bivy
export BIVY_DIR
ulimit -n 1048576 2>/dev/null || true
exec 2>&1
exec @BIN@ daemon $DAEMON_ARGS
";

/// busybox init's `/etc/inittab` line (busybox runs it through `/bin/sh` for the redirection).
pub const BUSYBOX_INITTAB: &str = "::respawn:@BIN@ daemon@ARGS@ >>/var/log/bivy.log 2>&1\n";

/// What the templates are filled with.
#[derive(Debug, Clone)]
pub struct Params {
    /// The installed binary's final path.
    pub bin: String,
    pub sysconfdir: String,
    pub group: Option<String>,
}

impl Params {
    fn fill(&self, template: &str) -> String {
        let args = match &self.group {
            Some(g) => format!(" --group {g}"),
            None => String::new(),
        };
        template
            .replace("@BIN@", &self.bin)
            .replace("@SYSCONFDIR@", &self.sysconfdir)
            .replace("@ARGS@", &args)
    }
}

/// The service file (or, for busybox init, the inittab line) of an init system.
pub fn service_text(init: Init, p: &Params) -> String {
    p.fill(match init {
        Init::Systemd => SYSTEMD_UNIT,
        Init::Openrc => OPENRC_SCRIPT,
        Init::Sysvinit => SYSVINIT_SCRIPT,
        Init::Runit => RUNIT_RUN,
        Init::Busybox => BUSYBOX_INITTAB,
    })
}

/// What to do once the files are in place.
fn next_step(init: Init, p: &Params, service: Option<&str>) -> String {
    match init {
        Init::Systemd => "Start it now and at boot: systemctl daemon-reload && systemctl enable --now bivy".into(),
        Init::Openrc => "Start it now and at boot: rc-update add bivy default && rc-service bivy start".into(),
        Init::Sysvinit => format!(
            "Start it now and at boot: update-rc.d bivy defaults && {} start",
            service.unwrap_or("/etc/init.d/bivy")
        ),
        Init::Runit => format!(
            "Start it now and at boot: ln -s {}/sv/bivy /var/service/ (Void; /etc/service/ on Debian)",
            p.sysconfdir
        ),
        Init::Busybox => format!(
            "Add this line to /etc/inittab, then run `kill -HUP 1`:\n{}",
            service_text(init, p).trim_end()
        ),
    }
}

/// A path that goes unquoted into unit files and shell scripts: absolute, plain characters.
fn plain_path(flag: &str, s: &str) -> Result<(), String> {
    let ok = s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--{flag} {s:?}: must be an absolute path of letters, digits and /._+- (it is written unquoted into service files)"
        ))
    }
}

fn plain_group(g: &str) -> Result<(), String> {
    let mut bytes = g.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if first_ok
        && g.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!("--group {g:?}: not a valid group name"))
    }
}

/// `a/b` with `/` and `..`-free joins: `root` + the absolute `path`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// One file to put in place.
struct Item {
    /// Where it is written (below --root).
    dest: PathBuf,
    data: Vec<u8>,
    mode: u32,
    /// A service file (guarded by --force) rather than the binary (replaced on upgrade).
    guarded: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Missing,
    Same,
    Differs,
}

fn state_of(dest: &Path, data: &[u8]) -> Result<State, String> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::Missing),
        Err(e) => Err(io_error("stat", dest, &e)),
        Ok(m) if !m.is_file() => Err(format!(
            "{} exists and is not a regular file; not touching it",
            dest.display()
        )),
        Ok(m) if m.len() != data.len() as u64 => Ok(State::Differs),
        Ok(_) => {
            let old = fs::read(dest).map_err(|e| io_error("read", dest, &e))?;
            Ok(if old == data {
                State::Same
            } else {
                State::Differs
            })
        }
    }
}

fn size_mb(n: usize) -> String {
    format!("{:.2} MB", n as f64 / 1e6)
}

/// `bivy install ...`.
pub fn run(args: &[String]) -> CmdResult {
    let a: InstallArgs = parse(&["bivy install"], args)?;
    plain_path("prefix", &a.prefix)?;
    plain_path("sysconfdir", &a.sysconfdir)?;
    if !a.root.starts_with('/') {
        return fail(format!("--root {:?}: must be an absolute path", a.root));
    }
    if let Some(g) = &a.group {
        plain_group(g)?;
    }
    let root = PathBuf::from(&a.root);
    let init = match &a.init {
        Some(s) => Init::parse(s)?,
        None => Init::detect(&root),
    };
    let prefix = a.prefix.trim_end_matches('/');
    let sysconfdir = a.sysconfdir.trim_end_matches('/');
    let params = Params {
        bin: format!("{prefix}/bin/bivy"),
        sysconfdir: if sysconfdir.is_empty() {
            "/"
        } else {
            sysconfdir
        }
        .to_string(),
        group: a.group.clone(),
    };
    let service = init.service_path().map(|(rel, mode)| {
        (
            format!("{}/{rel}", params.sysconfdir.trim_end_matches('/')),
            mode,
        )
    });
    let how = if a.init.is_some() {
        "chosen"
    } else {
        "detected"
    };
    println!("Init system: {} ({how})", init.name());

    if a.uninstall {
        return uninstall(&a, &root, &params, init, service);
    }

    let exe = fs::read("/proc/self/exe")
        .map_err(|e| Fail::Error(io_error("read", Path::new("/proc/self/exe"), &e)))?;
    let mut items = vec![Item {
        dest: under(&root, &params.bin),
        data: exe,
        mode: 0o755,
        guarded: false,
    }];
    if let Some((path, mode)) = &service {
        items.push(Item {
            dest: under(&root, path),
            data: service_text(init, &params).into_bytes(),
            mode: *mode,
            guarded: true,
        });
    }

    // Every check before the first write: a refusal changes nothing.
    let mut states = Vec::with_capacity(items.len());
    let mut refused = Vec::new();
    for it in &items {
        let st = state_of(&it.dest, &it.data)?;
        if st == State::Differs && it.guarded && !a.force {
            refused.push(it.dest.display().to_string());
        }
        states.push(st);
    }
    let verb = if a.dry_run { "Would write" } else { "Wrote" };
    if a.dry_run {
        for (it, st) in items.iter().zip(&states) {
            let what = match st {
                State::Missing => "new",
                State::Same => "unchanged",
                State::Differs if it.guarded && !a.force => "differs: refused without --force",
                State::Differs => "replacing a different file",
            };
            if it.guarded {
                println!(
                    "{verb} {} (mode {:04o}, {what}):",
                    it.dest.display(),
                    it.mode
                );
                print!("{}", String::from_utf8_lossy(&it.data));
            } else {
                println!(
                    "Would copy /proc/self/exe ({}) to {} ({what})",
                    size_mb(it.data.len()),
                    it.dest.display()
                );
            }
        }
    }
    if !refused.is_empty() {
        return fail(format!(
            "{} differs from bivy's {} service file; nothing was changed (--force replaces it)",
            refused.join(", "),
            init.name()
        ));
    }
    if a.dry_run {
        println!(
            "{}",
            next_step(init, &params, service.as_ref().map(|s| s.0.as_str()))
        );
        return Ok(0);
    }

    let mut revert = Revert::new();
    for (it, st) in items.iter().zip(&states) {
        if *st == State::Same {
            // The content is ours; only the mode may need mending.
            crate::util::fs::ensure_mode(&it.dest, it.mode)
                .map_err(|e| io_error("chmod", &it.dest, &e))?;
            println!("Unchanged {}", it.dest.display());
            continue;
        }
        make_parents(&it.dest, &mut revert)?;
        let old = match st {
            State::Differs => Some(fs::read(&it.dest).map_err(|e| io_error("read", &it.dest, &e))?),
            _ => None,
        };
        crate::util::fs::atomic_write_mode(&it.dest, &it.data, it.mode)
            .map_err(|e| io_error("write", &it.dest, &e))?;
        let dest = it.dest.clone();
        let mode = it.mode;
        revert.add(move || match old {
            Some(old) => {
                let _ = crate::util::fs::atomic_write_mode(&dest, &old, mode);
            }
            None => {
                let _ = fs::remove_file(&dest);
            }
        });
        let replaced = if *st == State::Differs {
            ", replacing a different file"
        } else {
            ""
        };
        if it.guarded {
            println!("{verb} {}{replaced}", it.dest.display());
        } else {
            println!(
                "Installed {} ({}{replaced})",
                it.dest.display(),
                size_mb(it.data.len())
            );
            if *st == State::Differs {
                println!("A daemon already running keeps the old binary until it is restarted.");
            }
        }
    }
    revert.commit();
    println!(
        "{}",
        next_step(init, &params, service.as_ref().map(|s| s.0.as_str()))
    );
    println!(
        "Stopping the service leaves the containers running; the next daemon reattaches to them."
    );
    Ok(0)
}

/// Create the missing directories above `dest` (mode 0755), each undone on failure.
fn make_parents(dest: &Path, revert: &mut Revert) -> Result<(), Fail> {
    let Some(parent) = dest.parent() else {
        return Ok(());
    };
    let mut missing = Vec::new();
    let mut d = parent;
    while !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for dir in missing.into_iter().rev() {
        fs::create_dir(&dir).map_err(|e| io_error("mkdir", &dir, &e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| io_error("chmod", &dir, &e))?;
        revert.add(move || {
            let _ = fs::remove_dir(&dir);
        });
    }
    Ok(())
}

fn uninstall(
    a: &InstallArgs,
    root: &Path,
    params: &Params,
    init: Init,
    service: Option<(String, u32)>,
) -> CmdResult {
    let bin = under(root, &params.bin);
    let mut remove: Vec<PathBuf> = Vec::new();
    if let Some((path, _)) = &service {
        let dest = under(root, path);
        match state_of(&dest, service_text(init, params).as_bytes())? {
            State::Missing => println!("No {}", dest.display()),
            State::Differs if !a.force => {
                return fail(format!(
                "{} differs from bivy's {} service file; nothing was removed (--force removes it)",
                dest.display(),
                init.name()
            ))
            }
            _ => remove.push(dest),
        }
    }
    match fs::symlink_metadata(&bin) {
        Ok(m) if m.is_file() => remove.push(bin),
        Ok(_) => {
            return fail(format!(
                "{} is not a regular file; not removing it",
                bin.display()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => println!("No {}", bin.display()),
        Err(e) => return Err(Fail::Error(io_error("stat", &bin, &e))),
    }
    let verb = if a.dry_run { "Would remove" } else { "Removed" };
    for f in &remove {
        if !a.dry_run {
            fs::remove_file(f).map_err(|e| io_error("remove", f, &e))?;
            if let Some(dir) = f.parent() {
                let _ = crate::util::fs::sync_dir(dir);
            }
        }
        println!("{verb} {}", f.display());
    }
    if init == Init::Runit && !a.dry_run {
        // sv/bivy/ holds only `run` (and runsv's supervise/ once it ran).
        if let Some(dir) = service
            .as_ref()
            .and_then(|(p, _)| under(root, p).parent().map(Path::to_path_buf))
        {
            let _ = fs::remove_dir_all(dir.join("supervise"));
            let _ = fs::remove_dir(&dir);
        }
    }
    match init {
        Init::Systemd => {
            println!("Stop and disable it first if it runs: systemctl disable --now bivy")
        }
        Init::Openrc => println!(
            "Stop and disable it first if it runs: rc-service bivy stop && rc-update del bivy"
        ),
        Init::Sysvinit => println!(
            "Stop and disable it first if it runs: service bivy stop && update-rc.d bivy remove"
        ),
        Init::Runit => println!(
            "Stop it first if it runs: sv down bivy, and remove its link from /var/service/"
        ),
        Init::Busybox => println!("Remove its line from /etc/inittab, then run `kill -HUP 1`."),
    }
    println!("$BIVY_DIR (default /var/lib/bivy: containers, images, state) is left in place.");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(group: Option<&str>) -> Params {
        Params {
            bin: "/usr/local/bin/bivy".into(),
            sysconfdir: "/etc".into(),
            group: group.map(str::to_string),
        }
    }

    fn unfilled(t: &str) -> bool {
        ["@BIN@", "@ARGS@", "@SYSCONFDIR@"]
            .iter()
            .any(|p| t.contains(p))
    }

    #[test]
    fn systemd_unit_keeps_containers_and_waits_for_the_api() {
        let t = service_text(Init::Systemd, &params(Some("bivy")));
        for line in [
            "ExecStart=/usr/local/bin/bivy daemon --group bivy",
            "ExecStartPost=/usr/local/bin/bivy admin waitready --timeout=600",
            "KillMode=process",
            "Delegate=yes",
            "LimitNOFILE=1048576",
            "EnvironmentFile=-/etc/default/bivy",
            "WantedBy=multi-user.target",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing:\n{t}");
        }
        assert!(!t.contains("ExecStop"), "{t}");
        assert!(!unfilled(&t), "unfilled placeholder:\n{t}");
        let t = service_text(Init::Systemd, &params(None));
        assert!(t
            .lines()
            .any(|l| l == "ExecStart=/usr/local/bin/bivy daemon"));
    }

    #[test]
    fn shell_scripts_are_filled_and_stop_the_daemon_alone() {
        let p = params(None);
        let sysv = service_text(Init::Sysvinit, &p);
        assert!(sysv.starts_with("#!/bin/sh\n### BEGIN INIT INFO\n# Provides:          bivy\n"));
        assert!(sysv.contains("\nDAEMON=/usr/local/bin/bivy\n"));
        assert!(sysv.contains("\nDAEMON_ARGS=\"\"\n"));
        assert!(sysv.contains("[ -r /etc/default/bivy ] && . /etc/default/bivy\n"));
        assert!(sysv.contains("--background --make-pidfile"));
        assert!(sysv.contains("--retry=TERM/30/KILL/5 --remove-pidfile"));
        for verb in ["start)", "stop)", "restart|force-reload)", "status)"] {
            assert!(sysv.contains(&format!("\n{verb}\n")), "{verb}");
        }
        let rc = service_text(Init::Openrc, &params(Some("bivy")));
        assert!(rc.starts_with("#!/sbin/openrc-run\n"));
        assert!(rc.contains("command=\"/usr/local/bin/bivy\"\n"));
        assert!(rc.contains("command_args=\"daemon --group bivy ${DAEMON_ARGS}\"\n"));
        assert!(rc.contains("rc_cgroup_cleanup=\"no\"\n"));
        assert!(rc.contains("\t\"${command}\" admin waitready --timeout=600\n"));
        assert!(rc.contains("\ncgroup2_set_limits() { :; }\n"));
        let run = service_text(Init::Runit, &p);
        assert!(run.ends_with("exec 2>&1\nexec /usr/local/bin/bivy daemon $DAEMON_ARGS\n"));
        assert_eq!(
            service_text(Init::Busybox, &params(Some("g"))),
            "::respawn:/usr/local/bin/bivy daemon --group g >>/var/log/bivy.log 2>&1\n"
        );
        for t in [sysv, rc, run] {
            assert!(!unfilled(&t), "unfilled placeholder:\n{t}");
        }
    }

    #[test]
    fn scripts_parse_as_shell() {
        // `sh -n`: the syntax of each shell template, filled (OpenRC's is plain sh too).
        for init in [Init::Sysvinit, Init::Openrc, Init::Runit] {
            let text = service_text(init, &params(Some("bivy")));
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &text])
                .output()
                .expect("run sh");
            assert!(
                out.status.success(),
                "{}: {}",
                init.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn detection_order() {
        let base = std::env::temp_dir().join(format!("bivy-detect-{}", std::process::id()));
        let mk = |p: &str| fs::create_dir_all(base.join(p)).unwrap();
        let touch = |p: &str| {
            fs::create_dir_all(base.join(p).parent().unwrap()).unwrap();
            fs::write(base.join(p), "").unwrap();
        };
        let _ = fs::remove_dir_all(&base);
        mk("");
        assert_eq!(Init::detect(&base), Init::Busybox);
        mk("etc/init.d");
        assert_eq!(Init::detect(&base), Init::Busybox, "no start-stop-daemon");
        touch("usr/sbin/start-stop-daemon");
        assert_eq!(Init::detect(&base), Init::Sysvinit);
        mk("etc/sv");
        assert_eq!(Init::detect(&base), Init::Runit);
        touch("sbin/openrc-run");
        assert_eq!(Init::detect(&base), Init::Openrc);
        mk("run/systemd/system");
        assert_eq!(Init::detect(&base), Init::Systemd);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn paths_and_groups_are_checked() {
        assert!(plain_path("prefix", "/usr/local").is_ok());
        assert!(plain_path("prefix", "usr").is_err());
        assert!(plain_path("prefix", "/opt/my dir").is_err());
        assert!(plain_path("prefix", "/opt/$(x)").is_err());
        assert!(plain_group("bivy").is_ok());
        assert!(plain_group("_b-1").is_ok());
        assert!(plain_group("1b").is_err());
        assert!(plain_group("b;x").is_err());
        assert!(Init::parse("upstart")
            .unwrap_err()
            .contains("unknown init system"));
        assert_eq!(
            under(Path::new("/tmp/r"), "/etc/x"),
            PathBuf::from("/tmp/r/etc/x")
        );
    }
}
