//! The model's context ([`Ctx`]): the state database, the image store, the storage pools, the
//! operations and events, the host facts, and the per-instance busy marks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::events::Events;
use super::operations::{self, Operations};
use super::{db, Error, Host, Result};
use crate::image;

/// The model's context: everything the daemon's non-HTTP half holds. One per process, alive
/// until exit.
pub struct Ctx {
    /// `$BIVY_DIR`: everything the daemon owns lives below it.
    pub dir: PathBuf,
    /// Instances, profiles and server config; the lock is held across read-modify-save.
    pub db: Mutex<db::Db>,
    /// The image store (`$BIVY_DIR/images`).
    pub images: image::Store,
    /// The storage pools, opened and mounted at start.
    pub pools: crate::storage::Pools,
    /// The managed bridges being served (DHCP, DNS, lease stores).
    pub bridges: super::bridge_state::Bridges,
    /// The proxy devices of running instances (their listeners and relays).
    pub proxies: super::proxy_state::Proxies,
    pub ops: Operations,
    pub events: Arc<Events>,
    /// Instances with an operation in progress (name -> what), so that conflicting requests
    /// (delete while starting) are refused instead of racing.
    pub busy: Mutex<HashMap<String, &'static str>>,
    /// The source's volatile keys a refresh received, by instance: `lxc copy --refresh` ends
    /// with a PUT of the source's config, volatile keys included, and those values are the
    /// source's state, not settings for this instance (taken by that PUT).
    pub refreshed: Mutex<HashMap<String, crate::api::StringMap>>,
    /// Values the daemon replaced or removed in each instance's volatile keys (key, old value;
    /// the last [`SUPERSEDED_KEPT`]): a PUT that sends one back sends what its client read
    /// before a start or stop changed it (pylxd's `save()`), not a new value.
    pub superseded: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Each instance's current run, numbered before a start records its NICs' host ends (one
    /// sequence for all instances; an instance's entry goes with it): a watcher clears the host
    /// ends of the run it followed only while no later start has been numbered (a restart's
    /// start can record its own before the watcher of the run it stopped gets to them).
    pub runs: Mutex<HashMap<String, u64>>,
    pub host: Host,
    pub shutting_down: AtomicBool,
    /// For a `$BIVY_DIR` other than the default, a short hash of it that keeps this daemon's
    /// cgroups (`bivy/<name>.<hash>`) apart from another daemon's.
    pub cgroup_suffix: Option<String>,
    /// Instances' API documents as listings made them (see [`super::docs::Docs`]).
    pub docs: super::docs::Docs,
    /// A weak handle on ourselves, for handlers that hand work to operation threads.
    pub me: std::sync::OnceLock<std::sync::Weak<Ctx>>,
}

/// How many superseded volatile values [`Ctx::superseded`] keeps per instance.
pub const SUPERSEDED_KEPT: usize = 32;

/// Releases an instance's busy mark when dropped.
pub struct BusyGuard<'a> {
    d: &'a Ctx,
    name: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.d.busy.lock().expect("busy lock").remove(&self.name);
    }
}

impl Ctx {
    /// The context for `dir`: the state database and image store opened there, with these host
    /// facts (probed by the daemon at start, faked by tests). Pools are opened by the caller.
    pub fn open(dir: &Path, host: Host) -> std::result::Result<Arc<Ctx>, String> {
        let trace = crate::util::trace::Steps::new("open", &dir.display().to_string());
        let events = Arc::new(Events::default());
        let images = image::Store::open(&dir.join("images")).map_err(|e| e.to_string())?;
        trace.step("image store");
        let mut db = db::Db::open(&dir.join("database.json")).map_err(|e| e.to_string())?;
        trace.step("database");
        db.watch(Box::new(super::markers::Keeper(dir.to_path_buf())));
        let d = Arc::new(Ctx {
            dir: dir.to_path_buf(),
            db: Mutex::new(db),
            images,
            pools: crate::storage::Pools::default(),
            bridges: Default::default(),
            proxies: Default::default(),
            ops: Operations::new(events.clone()),
            events,
            busy: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            runs: Mutex::new(HashMap::new()),
            host,
            shutting_down: AtomicBool::new(false),
            cgroup_suffix: (dir != Path::new("/var/lib/bivy")).then(|| {
                let h =
                    ring::digest::digest(&ring::digest::SHA256, dir.as_os_str().as_encoded_bytes());
                crate::util::hex(&h.as_ref()[..4])
            }),
            docs: Default::default(),
            me: std::sync::OnceLock::new(),
        });
        let _ = d.me.set(Arc::downgrade(&d));
        Ok(d)
    }

    /// Mark `name` busy with `what`, or fail naming what is in progress.
    pub fn claim(&self, name: &str, what: &'static str) -> Result<BusyGuard<'_>> {
        self.busy_insert(name, what)?;
        Ok(BusyGuard {
            d: self,
            name: name.to_string(),
        })
    }

    /// What `name` is busy with, if anything.
    pub fn busy_with(&self, name: &str) -> Option<&'static str> {
        self.busy.lock().expect("busy lock").get(name).copied()
    }

    /// Mark `name` busy with `what` until the caller removes the mark (operation threads).
    pub fn busy_insert(&self, name: &str, what: &'static str) -> Result<()> {
        let mut b = self.busy.lock().expect("busy lock");
        if let Some(other) = b.get(name) {
            return Err(Error::Busy {
                name: name.to_string(),
                what: (*other).to_string(),
            });
        }
        b.insert(name.to_string(), what);
        Ok(())
    }

    /// Start a task operation (on `resources`) running `body` while instance `name` is marked
    /// busy with `what` (refused if it already is); the mark goes when the operation ends.
    pub fn busy_task<E: std::fmt::Display>(
        &self,
        name: &str,
        what: &'static str,
        description: &str,
        resources: std::collections::BTreeMap<String, Vec<String>>,
        body: impl FnOnce(&Ctx, Arc<operations::Op>) -> std::result::Result<(), E> + Send + 'static,
    ) -> Result<Arc<operations::Op>> {
        self.busy_insert(name, what)?;
        let d = self.self_arc();
        let n = name.to_string();
        Ok(self.ops.start(
            operations::Class::Task,
            description,
            resources,
            None,
            vec![],
            move |op| {
                let r = body(&d, op);
                d.busy.lock().expect("busy lock").remove(&n);
                r
            },
        ))
    }

    /// An owning handle on the daemon (for operation threads).
    pub fn self_arc(&self) -> Arc<Ctx> {
        self.me
            .get()
            .and_then(std::sync::Weak::upgrade)
            .expect("daemon handle is set at start-up")
    }

    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(name)
    }

    /// An instance's volume directory on its pool (where the pool would have it when the pool
    /// failed to open: callers then fail on the missing path).
    pub fn volume_dir(&self, rec: &db::InstanceRecord) -> PathBuf {
        match self.pools.get(&rec.pool) {
            Some(p) => p.container(&rec.volume),
            None => self
                .dir
                .join("storage-pools")
                .join(&rec.pool)
                .join("containers")
                .join(&rec.volume),
        }
    }

    /// Make the server config that takes effect without a restart take effect (at start too).
    pub fn apply_server_config(&self, config: &crate::api::StringMap) {
        let max = config
            .get("images.max_unpacked_size")
            .and_then(|v| crate::storage::btrfs::parse_size(v).ok())
            .unwrap_or(image::DEFAULT_MAX_UNPACKED);
        self.images.set_max_unpacked(max);
    }

    pub fn log_dir(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(name)
    }
}
