//! `bivy install`: the files it writes for each init system (into a temporary root), the refusal
//! to replace a changed service file, `--dry-run`, `--uninstall`; the systemd unit through
//! `systemd-analyze verify`; the sysvinit script run with the real `start-stop-daemon` (start,
//! status, stop, restart) against a `BIVY_DIR` of its own, a container started through that
//! daemon surviving the service restart; the same with the OpenRC script run by Debian's
//! `openrc-run` (unpacked, not installed, in a private mount namespace); the runit `run` script
//! starting a daemon.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bivy_bin, http_unix, TempDir};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn install(args: &[&str]) -> Output {
    Command::new(bivy_bin())
        .arg("install")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run bivy install")
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// Every file below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn install_into_a_root_for_each_init_system() {
    let exe = fs::read(bivy_bin()).expect("read bivy");
    for (init, service, smode) in [
        ("systemd", Some("etc/systemd/system/bivy.service"), 0o644),
        ("openrc", Some("etc/init.d/bivy"), 0o755),
        ("sysvinit", Some("etc/init.d/bivy"), 0o755),
        ("runit", Some("etc/sv/bivy/run"), 0o755),
        ("busybox", None, 0),
    ] {
        let tmp = TempDir::new().expect("tmp");
        let root = tmp.path().to_str().unwrap().to_string();
        let base = ["--root", &root, "--init", init, "--group", "bivy"];

        // --dry-run shows the file and writes nothing.
        let out = ok(install(&[&base[..], &["--dry-run"]].concat()));
        assert!(
            out.starts_with(&format!("Init system: {init} (chosen)\n")),
            "{out}"
        );
        assert!(out.contains("Would copy /proc/self/exe"), "{out}");
        assert!(
            tree(tmp.path()).is_empty(),
            "{init}: dry run wrote {:?}",
            tree(tmp.path())
        );

        let out = ok(install(&base));
        let mut want = vec!["usr/local/bin/bivy".to_string()];
        want.extend(service.map(str::to_string));
        want.sort();
        assert_eq!(tree(tmp.path()), want, "{init}: {out}");
        let bin = tmp.path().join("usr/local/bin/bivy");
        assert_eq!(fs::read(&bin).expect("installed binary"), exe);
        assert_eq!(mode(&bin), 0o755);
        let Some(service) = service else {
            // busybox: the inittab line is printed, nothing else written.
            assert!(
                out.contains("\n::respawn:/usr/local/bin/bivy daemon --group bivy >>/var/log/bivy.log 2>&1\n"),
                "{out}"
            );
            continue;
        };
        let svc = tmp.path().join(service);
        let written = fs::read_to_string(&svc).expect("service file");
        assert_eq!(mode(&svc), smode, "{init}");
        assert!(written.contains("/usr/local/bin/bivy"), "{written}");
        assert!(written.contains("--group bivy"), "{written}");
        assert!(out.contains(&format!("Wrote {}\n", svc.display())), "{out}");

        // Again: nothing to do.
        let out = ok(install(&base));
        assert!(
            out.contains(&format!("Unchanged {}\n", svc.display())),
            "{out}"
        );
        assert!(
            out.contains(&format!("Unchanged {}\n", bin.display())),
            "{out}"
        );

        // A changed service file is refused without --force, and nothing else is written.
        fs::write(&svc, "# mine\n").unwrap();
        fs::remove_file(&bin).unwrap();
        let out = install(&base);
        assert_eq!(out.status.code(), Some(1), "{init}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("{} differs from bivy's {init} service file; nothing was changed (--force replaces it)", svc.display())),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&svc).unwrap(), "# mine\n");
        assert!(
            !bin.exists(),
            "the binary was installed despite the refusal"
        );
        // The same refusal in a dry run.
        let out = install(&[&base[..], &["--dry-run"]].concat());
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stdout).contains("differs: refused without --force"));
        // --force replaces it.
        let out = ok(install(&[&base[..], &["--force"]].concat()));
        assert!(out.contains("replacing a different file"), "{out}");
        assert_eq!(fs::read_to_string(&svc).unwrap(), written);
        assert!(bin.exists());

        // --uninstall: a changed file needs --force; else both go, the directories stay.
        fs::write(&svc, "# mine\n").unwrap();
        let out = install(&[&base[..], &["--uninstall"]].concat());
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("nothing was removed (--force removes it)"));
        assert!(bin.exists() && svc.exists());
        fs::write(&svc, &written).unwrap();
        let out = ok(install(
            &[&base[..], &["--uninstall", "--dry-run"]].concat(),
        ));
        assert!(
            out.contains(&format!("Would remove {}\n", svc.display())),
            "{out}"
        );
        assert!(bin.exists() && svc.exists());
        let out = ok(install(&[&base[..], &["--uninstall"]].concat()));
        assert!(
            out.contains(&format!("Removed {}\n", bin.display())),
            "{out}"
        );
        assert!(out.contains("is left in place"), "{out}");
        assert_eq!(tree(tmp.path()), Vec::<String>::new(), "{init}");
    }

    // Detection below --root; bad arguments are refused.
    let tmp = TempDir::new().expect("tmp");
    fs::create_dir_all(tmp.path().join("run/systemd/system")).unwrap();
    let root = tmp.path().to_str().unwrap();
    let out = ok(install(&["--root", root, "--dry-run"]));
    assert!(
        out.starts_with("Init system: systemd (detected)\n"),
        "{out}"
    );
    for (args, msg) in [
        (vec!["--init", "upstart"], "unknown init system \"upstart\""),
        (vec!["--prefix", "usr/local"], "must be an absolute path"),
        (
            vec!["--prefix", "/opt/a b"],
            "written unquoted into service files",
        ),
        (vec!["--group", "a;b"], "not a valid group name"),
    ] {
        let out = install(&[&["--root", root, "--dry-run"][..], &args].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains(msg),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    skip_unless!(
        common::have_cmd("systemd-analyze"),
        "needs systemd-analyze (Debian package systemd)"
    );
    let tmp = TempDir::new().expect("tmp");
    // Installed for real into the temp dir, so that ExecStart names an existing executable.
    let prefix = tmp.path().join("usr");
    let etc = tmp.path().join("etc");
    ok(install(&[
        "--prefix",
        prefix.to_str().unwrap(),
        "--sysconfdir",
        etc.to_str().unwrap(),
        "--init",
        "systemd",
    ]));
    let unit = etc.join("systemd/system/bivy.service");
    // The man pages it names (Documentation=man:bivy(1) ...), as `bivy manpage` writes them:
    // systemd-analyze looks each one up with `man`.
    let man = tmp.path().join("man");
    ok(Command::new(bivy_bin())
        .arg("manpage")
        .arg(man.join("man1"))
        .output()
        .expect("run bivy manpage"));
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if !common::have_cmd("man") {
        verify.arg("--man=no"); // (man-db absent: nothing to look the pages up with)
    }
    let out = verify
        .arg(&unit)
        .env("MANPATH", &man)
        .output()
        .expect("run systemd-analyze");
    // systemd-analyze reports a bad setting on stderr and still exits 0: both must be clean.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify {}: {}\n{}{}",
        unit.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A daemon run by a service script in a temp dir: on drop (even after a failure) the
/// containers it lists are deleted and the pid in its pid file, if it is still a bivy, is
/// stopped.
struct Service {
    tmp: TempDir,
    bivy_dir: PathBuf,
    pidfile: PathBuf,
}

impl Service {
    fn new() -> Service {
        let tmp = TempDir::new().expect("tmp");
        let bivy_dir = tmp.path().join("bivy");
        let pidfile = tmp.path().join("bivy.pid");
        Service {
            tmp,
            bivy_dir,
            pidfile,
        }
    }

    fn socket(&self) -> PathBuf {
        self.bivy_dir.join("unix.socket")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bivy_bin())
            .args(args)
            .env("BIVY_DIR", &self.bivy_dir)
            .env("BIVY_CONF", self.tmp.path().join("conf"))
            .stdin(Stdio::null())
            .output()
            .expect("run bivy")
    }

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (st, b) = http_unix(&self.socket(), method, path, body, Duration::from_secs(60))
            .expect("api call");
        (st, serde_json::from_slice(&b).unwrap_or_default())
    }

    fn pid(&self) -> Option<i32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }

    fn init_pid(&self, name: &str) -> i64 {
        let (st, v) = self.api("GET", &format!("/1.0/instances/{name}/state"), None);
        assert_eq!(st, 200, "{v}");
        v["metadata"]["pid"].as_i64().expect("pid")
    }
}

/// Whether a pid is a live (not zombie) process whose name is `bivy`.
fn is_bivy(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.contains(" (bivy) ")
        && !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

fn alive(pid: i64) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
            if let Ok((200, list)) = http_unix(
                &self.socket(),
                "GET",
                "/1.0/instances",
                None,
                Duration::from_secs(60),
            )
            .map(|(s, b)| {
                (
                    s,
                    serde_json::from_slice::<serde_json::Value>(&b).unwrap_or_default(),
                )
            }) {
                for url in list["metadata"].as_array().into_iter().flatten() {
                    let Some(name) = url.as_str().and_then(|u| u.rsplit('/').next()) else {
                        continue;
                    };
                    let _ = self.cli(&["delete", "--force", name]);
                }
            }
        }
        // The pid file's daemon, and any other process running the binary installed in this
        // temp dir (a daemon whose pid file went missing): ours alone.
        let mine = self.tmp.path().join("usr/bin/bivy");
        let mut pids: Vec<i32> = self.pid().into_iter().collect();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let exe = fs::read_link(e.path().join("exe")).unwrap_or_default();
            let exe = exe.to_string_lossy();
            if exe == mine.to_string_lossy() || exe == format!("{} (deleted)", mine.display()) {
                pids.push(pid);
            }
        }
        for pid in pids.into_iter().filter(|p| is_bivy(*p)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while is_bivy(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn script(s: &Path, verb: &str) -> (i32, String) {
    let out = Command::new(s)
        .arg(verb)
        .stdin(Stdio::null())
        .output()
        .expect("run the init script");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout) + &text(&out.stderr),
    )
}

#[test]
fn sysvinit_script_runs_the_daemon_and_containers_survive_a_restart() {
    require!(root);
    skip_unless!(
        common::have_cmd("start-stop-daemon"),
        "needs start-stop-daemon (Debian package dpkg)"
    );
    let svc = Service::new();
    let t = svc.tmp.path();
    let etc = t.join("etc");
    ok(install(&[
        "--prefix",
        t.join("usr").to_str().unwrap(),
        "--sysconfdir",
        etc.to_str().unwrap(),
        "--init",
        "sysvinit",
    ]));
    let s = etc.join("init.d/bivy");
    // Its settings file, as an administrator would write /etc/default/bivy.
    fs::create_dir_all(etc.join("default")).unwrap();
    fs::write(
        etc.join("default/bivy"),
        format!(
            "BIVY_DIR={}\nPIDFILE={}\nLOGFILE={}\n",
            svc.bivy_dir.display(),
            svc.pidfile.display(),
            t.join("bivy.log").display()
        ),
    )
    .unwrap();

    assert_eq!(script(&s, "status"), (3, "bivy is not running\n".into()));
    let (rc, out) = script(&s, "start");
    assert_eq!(rc, 0, "{out}");
    // Ready when start returns: the API answers at once.
    let (st, _) = svc.api("GET", "/1.0", None);
    assert_eq!(st, 200);
    let pid = svc.pid().expect("pid file");
    assert!(is_bivy(pid));
    // The daemon runs the installed binary.
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        t.join("usr/bin/bivy")
    );
    assert_eq!(
        script(&s, "status"),
        (0, format!("bivy is running (pid {pid})\n"))
    );
    let (rc, out) = script(&s, "start");
    assert_eq!((rc, out.contains("already running")), (0, true), "{out}");
    assert_eq!(svc.pid(), Some(pid));

    // A container started through this daemon survives the service's restart.
    let img = common::busybox_image();
    let imported = svc.cli(&[
        "image",
        "import",
        img.to_str().unwrap(),
        "--alias",
        "busybox",
    ]);
    ok(imported);
    ok(svc.cli(&["launch", "busybox", "c1"]));
    let init = svc.init_pid("c1");
    assert!(alive(init));
    let (rc, out) = script(&s, "restart");
    assert_eq!(rc, 0, "{out}");
    let pid2 = svc.pid().expect("pid file");
    assert_ne!(pid2, pid);
    assert!(!is_bivy(pid), "the old daemon is still running");
    assert!(alive(init), "the container died with the service restart");
    assert_eq!(svc.init_pid("c1"), init);
    let out = ok(svc.cli(&["exec", "c1", "--", "echo", "hi"]));
    assert_eq!(out, "hi\n");

    // Stop: the daemon goes, the container stays; a second stop is fine.
    assert_eq!(
        script(&s, "stop"),
        (0, "Stopping bivy (containers keep running)\n".into())
    );
    assert!(!is_bivy(pid2));
    assert!(!svc.pidfile.exists());
    assert!(alive(init));
    assert_eq!(script(&s, "status"), (3, "bivy is not running\n".into()));
    assert_eq!(script(&s, "stop").0, 0);
    // Started again, it still has the container (the harness deletes it).
    let (rc, out) = script(&s, "start");
    assert_eq!(rc, 0, "{out}");
    assert_eq!(svc.init_pid("c1"), init);
    ok(svc.cli(&["delete", "--force", "c1"]));
    assert_eq!(script(&s, "stop").0, 0);
    assert_eq!(script(&s, "bogus").0, 3);
}

#[test]
fn runit_run_script_starts_the_daemon_in_the_foreground() {
    require!(root);
    let svc = Service::new();
    let t = svc.tmp.path();
    let etc = t.join("etc");
    ok(install(&[
        "--prefix",
        t.join("usr").to_str().unwrap(),
        "--sysconfdir",
        etc.to_str().unwrap(),
        "--init",
        "runit",
    ]));
    fs::create_dir_all(etc.join("default")).unwrap();
    fs::write(
        etc.join("default/bivy"),
        format!("BIVY_DIR={}\n", svc.bivy_dir.display()),
    )
    .unwrap();
    // What runsv does: run ./run in the service directory; the script execs the daemon, so the
    // pid runsv signals is the daemon's.
    let mut child = Command::new(etc.join("sv/bivy/run"))
        .current_dir(etc.join("sv/bivy"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the runit script");
    let pid = i32::try_from(child.id()).unwrap();
    fs::write(&svc.pidfile, format!("{pid}\n")).unwrap(); // for the cleanup
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(svc.socket()).is_err() {
        assert!(
            Instant::now() < deadline,
            "no socket at {}",
            svc.socket().display()
        );
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(is_bivy(pid));
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        t.join("usr/bin/bivy")
    );
    ok(svc.cli(&["admin", "waitready", "--timeout", "5"]));
    // `sv down`: SIGTERM; the daemon exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
}

/// OpenRC's `openrc-run` from Debian's packages (openrc, librc1, libeinfo1), downloaded with
/// `apt-get download` and unpacked into `target/openrc/root` once (not installed: that would
/// change this host's init tooling). `None` (with the reason) when that is not possible.
fn openrc_root() -> Result<PathBuf, String> {
    let dir = common::target_dir().join("openrc");
    let root = dir.join("root");
    if root.join("sbin/openrc-run").is_file() {
        return Ok(root);
    }
    if !common::have_cmd("apt-get") || !common::have_cmd("dpkg-deb") {
        return Err("needs apt-get and dpkg-deb to fetch OpenRC's openrc-run".into());
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
    let out = Command::new("apt-get")
        .args(["download", "openrc", "librc1", "libeinfo1"])
        .current_dir(&debs)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "apt-get download openrc librc1 libeinfo1 failed: {}",
            text(&out.stderr)
        ));
    }
    let tmp = dir.join("root.tmp");
    let _ = fs::remove_dir_all(&tmp);
    for e in fs::read_dir(&debs).map_err(|e| e.to_string())?.flatten() {
        let st = Command::new("dpkg-deb")
            .arg("-x")
            .arg(e.path())
            .arg(&tmp)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("dpkg-deb -x {} failed", e.path().display()));
        }
    }
    fs::rename(&tmp, &root).map_err(|e| e.to_string())?;
    Ok(root)
}

/// A process holding a private mount namespace in which OpenRC is "installed" (read-only
/// overlays over /usr/lib, /usr/sbin and /etc, a tmpfs on /run with OpenRC's state): the host
/// sees none of it. Killed (by its pid) on drop.
struct OpenrcNs(std::process::Child);

impl OpenrcNs {
    fn start(openrc: &Path, etc_extra: &Path) -> OpenrcNs {
        let lib = fs::canonicalize("/lib").unwrap();
        let sbin = fs::canonicalize("/sbin").unwrap();
        let script = format!(
            r#"set -e
mount -t overlay overlay -o lowerdir={o}/lib:{lib} {lib}
mount -t overlay overlay -o lowerdir={o}/sbin:{sbin} {sbin}
mount -t overlay overlay -o lowerdir={e}:/etc /etc
mount -t tmpfs tmpfs /run
for d in started starting stopping inactive wasinactive failed hotplugged daemons options exclusive scheduled tmp; do
	mkdir -p /run/openrc/$d
done
touch /run/openrc/softlevel
echo ready
exec sleep 600"#,
            o = openrc.display(),
            e = etc_extra.display(),
            lib = lib.display(),
            sbin = sbin.display(),
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ns = OpenrcNs(child);
        assert_eq!(line, "ready\n", "the OpenRC namespace did not come up");
        ns
    }

    /// Run a command in the namespace: exit code and output.
    fn run(&self, args: &[&Path]) -> (i32, String) {
        let out = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.0.id()))
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter");
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout) + &text(&out.stderr),
        )
    }

    /// The pid in the service's pid file (/run/bivy.pid, seen through the namespace's root).
    fn pid(&self) -> Option<i32> {
        fs::read_to_string(format!("/proc/{}/root/run/bivy.pid", self.0.id()))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for OpenrcNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn openrc_script_runs_the_daemon_and_containers_survive_a_restart() {
    require!(root);
    require!(cmd "unshare");
    require!(cmd "nsenter");
    let openrc = match openrc_root() {
        Ok(r) => r,
        Err(reason) => {
            common::skip(&common::current_test_name(), &reason);
            return;
        }
    };
    let svc = Service::new();
    let t = svc.tmp.path();
    let etc = t.join("etc");
    ok(install(&[
        "--prefix",
        t.join("usr").to_str().unwrap(),
        "--sysconfdir",
        etc.to_str().unwrap(),
        "--init",
        "openrc",
    ]));
    fs::create_dir_all(etc.join("conf.d")).unwrap();
    fs::write(
        etc.join("conf.d/bivy"),
        format!("BIVY_DIR={}\n", svc.bivy_dir.display()),
    )
    .unwrap();
    // What OpenRC's dependency code reads from /etc (Debian's openrc reads insserv.conf).
    let etc_extra = t.join("etc-extra");
    for d in ["sysinit", "boot", "default", "shutdown"] {
        fs::create_dir_all(etc_extra.join("runlevels").join(d)).unwrap();
    }
    fs::write(etc_extra.join("insserv.conf"), "").unwrap();
    let ns = OpenrcNs::start(&openrc, &etc_extra);
    let s = etc.join("init.d/bivy");
    let rc = |verb: &str| ns.run(&[&s, Path::new(verb)]);

    let (code, out) = rc("status");
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("status: stopped"), "{out}");
    let (code, out) = rc("start");
    assert_eq!(code, 0, "{out}");
    // Ready when start returns (start_post waits for the API).
    assert_eq!(svc.api("GET", "/1.0", None).0, 200);
    let pid = ns.pid().expect("pid file");
    assert!(is_bivy(pid));
    // The daemon is not in the cgroup of bivy's containers.
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!cg.lines().any(|l| l.ends_with(":/bivy")), "{cg}");
    let (code, out) = rc("status");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("status: started"), "{out}");

    let img = common::busybox_image();
    ok(svc.cli(&[
        "image",
        "import",
        img.to_str().unwrap(),
        "--alias",
        "busybox",
    ]));
    ok(svc.cli(&["launch", "busybox", "c1"]));
    let init = svc.init_pid("c1");
    let (code, out) = rc("restart");
    assert_eq!(code, 0, "{out}");
    let pid2 = ns.pid().expect("pid file");
    assert_ne!(pid2, pid);
    assert!(!is_bivy(pid), "the old daemon is still running");
    assert!(alive(init), "the container died with the service restart");
    assert_eq!(svc.init_pid("c1"), init);
    assert_eq!(ok(svc.cli(&["exec", "c1", "--", "echo", "hi"])), "hi\n");

    ok(svc.cli(&["delete", "--force", "c1"]));
    let (code, out) = rc("stop");
    assert_eq!(code, 0, "{out}");
    assert!(!is_bivy(pid2));
    let (code, out) = rc("status");
    assert_eq!(code, 3, "{out}");
}
