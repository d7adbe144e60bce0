//! TEMPORARY STAND-INS for `runtime::cgroup`, `runtime::seccomp` and `runtime::apparmor`, which
//! another engineer writes in parallel. DELETE THIS FILE AT MERGE (and switch the one `use` line
//! in `confine.rs`). The stand-ins follow the agreed interface; the cgroup one is a minimal but real
//! v1/v2 implementation so the runtime's own tests can run; seccomp and AppArmor do nothing.

pub mod cgroup {
    use std::fs;
    use std::path::{Path, PathBuf};

    use crate::runtime::{Error, Limits, Result, Stats};

    /// Mounted hierarchies, as the container's /sys/fs/cgroup view needs them.
    pub struct Layout {
        pub v1: Vec<(String, String)>,
        pub unified: Option<PathBuf>,
        pub v2_only: bool,
    }

    impl Layout {
        pub fn probe() -> Layout {
            let mut v1 = Vec::new();
            let mut unified = None;
            let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for line in mi.lines() {
                let Some((pre, post)) = line.split_once(" - ") else { continue };
                let pre: Vec<&str> = pre.split(' ').collect();
                let post: Vec<&str> = post.split(' ').collect();
                if pre.len() < 5 || post.len() < 3 {
                    continue;
                }
                let mp = pre[4].to_string();
                match post[0] {
                    "cgroup" => {
                        let opts: Vec<&str> = post[2]
                            .split(',')
                            .filter(|o| !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime"))
                            .collect();
                        if !v1.iter().any(|(m, _): &(String, String)| *m == mp) {
                            v1.push((mp, opts.join(",")));
                        }
                    }
                    "cgroup2" if unified.is_none() => unified = Some(PathBuf::from(mp)),
                    _ => {}
                }
            }
            let v2_only = v1.is_empty() && unified.as_deref() == Some(Path::new("/sys/fs/cgroup"));
            Layout { v1, unified, v2_only }
        }

        fn dirs(&self, name: &str) -> Vec<PathBuf> {
            let mut d: Vec<PathBuf> = self.v1.iter().map(|(m, _)| Path::new(m).join("bivy").join(name)).collect();
            if let Some(u) = &self.unified {
                d.push(u.join("bivy").join(name));
            }
            d
        }
    }

    pub struct Cgroup {
        dirs: Vec<PathBuf>,
        freezer: Option<PathBuf>,
    }

    impl Cgroup {
        pub fn create(name: &str, _limits: &Limits, owner: Option<(u32, u32)>) -> Result<Cgroup> {
            let cg = Cgroup::open(name);
            for d in &cg.dirs {
                fs::create_dir_all(d).map_err(|e| Error(format!("create cgroup {}: {e}", d.display())))?;
                // v1 cpuset starts empty: inherit cpus and mems down from the hierarchy root.
                if d.join("cpuset.cpus").exists() {
                    for dir in [d.parent().expect("bivy/"), d.as_path()] {
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            let cur = fs::read_to_string(dir.join(f)).unwrap_or_default();
                            if cur.trim().is_empty() {
                                let v = fs::read_to_string(dir.parent().expect("parent").join(f)).unwrap_or_default();
                                let _ = fs::write(dir.join(f), v.trim());
                            }
                        }
                    }
                }
                if let Some((u, g)) = owner {
                    for f in ["", "cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads"] {
                        let p = d.join(f);
                        if p.exists() {
                            let _ = std::os::unix::fs::chown(&p, Some(u), Some(g));
                        }
                    }
                }
            }
            Ok(cg)
        }
        pub fn open(name: &str) -> Cgroup {
            let l = Layout::probe();
            let freezer = l.v1.iter().find(|(_, o)| o.split(',').any(|x| x == "freezer")).map(|(m, _)| Path::new(m).join("bivy").join(name));
            Cgroup { dirs: l.dirs(name), freezer }
        }
        pub fn add_pid(&self, pid: i32) -> Result<()> {
            for d in &self.dirs {
                fs::write(d.join("cgroup.procs"), pid.to_string()).map_err(|e| Error(format!("join cgroup {}: {e}", d.display())))?;
            }
            Ok(())
        }
        pub fn set_limits(&self, _l: &Limits) -> Result<()> {
            Err(Error("not supported yet: cgroup limits (stub)".into()))
        }
        pub fn freeze(&self) -> Result<()> {
            let f = self.freezer.as_ref().ok_or_else(|| Error("no freezer".into()))?;
            fs::write(f.join("freezer.state"), "FROZEN").map_err(|e| Error(format!("freeze: {e}")))
        }
        pub fn thaw(&self) -> Result<()> {
            let f = self.freezer.as_ref().ok_or_else(|| Error("no freezer".into()))?;
            fs::write(f.join("freezer.state"), "THAWED").map_err(|e| Error(format!("thaw: {e}")))
        }
        pub fn is_frozen(&self) -> bool {
            self.freezer.as_ref().and_then(|f| fs::read_to_string(f.join("freezer.state")).ok()).is_some_and(|s| s.trim() == "FROZEN")
        }
        pub fn kill_all(&self) -> Result<()> {
            if let Some(u) = self.dirs.iter().find(|d| d.join("cgroup.kill").exists()) {
                return fs::write(u.join("cgroup.kill"), "1").map_err(|e| Error(format!("cgroup.kill: {e}")));
            }
            let _ = self.freeze();
            for p in self.pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = self.thaw();
            Ok(())
        }
        pub fn pids(&self) -> Vec<i32> {
            self.dirs
                .first()
                .and_then(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
                .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
                .unwrap_or_default()
        }
        pub fn stats(&self) -> Stats {
            Stats { processes: self.pids().len() as u64, ..Stats::default() }
        }
        pub fn remove(&self) -> Result<()> {
            let mut err = None;
            for d in &self.dirs {
                if d.exists() {
                    if let Err(e) = fs::remove_dir(d) {
                        err = Some(Error(format!("remove cgroup {}: {e}", d.display())));
                    }
                }
            }
            err.map_or(Ok(()), Err)
        }
    }
}

pub mod seccomp {
    use crate::runtime::Result;

    pub struct Program(());

    pub fn compile(_policy: &str) -> Result<Program> {
        Ok(Program(()))
    }

    /// The stand-in loads nothing (the real module loads the BPF with a raw seccomp()).
    pub fn load(_p: &Program) -> Result<()> {
        Ok(())
    }
}

pub mod apparmor {
    use crate::runtime::Result;

    /// The stand-in behaves like a kernel without AppArmor (this machine's case).
    pub fn prepare(_name: &str, _nesting: bool, _privileged: bool, _raw: &str) -> Result<Option<String>> {
        Ok(None)
    }

    pub fn set_exec_label(label: &str) -> Result<()> {
        Err(crate::runtime::Error(format!("not supported yet: apparmor label {label} (stub)")))
    }
}
