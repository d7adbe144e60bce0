//! The client configuration in `$BIVY_CONF` (lxc's layout and `config.yml` format), and turning a
//! remote's entry into a [`Client`].
//!
//! - `config.yml`: `default-remote`, `remotes` (addr, auth_type, project, protocol, public) and
//!   `aliases`, read as lxc 5.0.2 writes it and written the same way (atomically, mode 0644).
//!   With no file the built-in remotes are used: `local` (the daemon's socket, static: always
//!   present, never changed) and `images` (images.linuxcontainers.org over simplestreams).
//! - `client.crt`/`client.key`: this client's identity, made on first use (key 0600).
//! - `servercerts/NAME.crt`: each HTTPS remote's pinned server certificate (PEM).
//!
//! Nothing is created in the directory until a remote is added (the directory 0700 when made).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::addr::{self, Addr};
use crate::client::{Client, Https};
use crate::tls;

/// The address of the `local` remote: the daemon's socket (`$BIVY_SOCKET`, `$BIVY_DIR`, ...).
pub const LOCAL_ADDR: &str = "unix://";
/// The community image server, built in as `images`.
pub const IMAGES_ADDR: &str = "https://images.linuxcontainers.org";

/// One remote as `config.yml` stores it (lxc's `config.Remote`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    pub addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default)]
    pub public: bool,
    /// Built in and unchangeable (`local`); never stored.
    #[serde(skip)]
    pub is_static: bool,
}

impl Remote {
    /// The protocol, `lxd` when unset.
    pub fn protocol(&self) -> &str {
        if self.protocol.is_empty() {
            "lxd"
        } else {
            &self.protocol
        }
    }

    pub fn is_simplestreams(&self) -> bool {
        self.protocol == "simplestreams"
    }

    pub fn is_unix(&self) -> bool {
        self.addr.starts_with("unix:")
    }
}

/// The built-in `local` remote.
pub fn local_remote() -> Remote {
    Remote {
        addr: LOCAL_ADDR.into(),
        is_static: true,
        ..Remote::default()
    }
}

/// The built-in `images` remote.
pub fn images_remote() -> Remote {
    Remote {
        addr: IMAGES_ADDR.into(),
        protocol: "simplestreams".into(),
        public: true,
        ..Remote::default()
    }
}

/// `config.yml` (lxc's `config.Config`), plus the directory it lives in.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Config {
    #[serde(rename = "default-remote", default)]
    pub default_remote: String,
    #[serde(default, deserialize_with = "super::null_default")]
    pub remotes: BTreeMap<String, Remote>,
    #[serde(default, deserialize_with = "super::null_default")]
    pub aliases: BTreeMap<String, String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Config {
    /// The configuration used when there is no `config.yml`.
    pub fn defaults(dir: &Path) -> Config {
        let mut remotes = BTreeMap::new();
        remotes.insert("images".to_string(), images_remote());
        remotes.insert("local".to_string(), local_remote());
        Config {
            default_remote: "local".into(),
            remotes,
            aliases: BTreeMap::new(),
            dir: dir.to_path_buf(),
        }
    }

    /// Read `dir/config.yml`, or the defaults when it does not exist. As lxc does: a private
    /// remote without `auth_type` gets `tls`, `local` is always the built-in one (keeping a
    /// project set on it), and an empty `default-remote` means `local`.
    pub fn load(dir: &Path) -> Result<Config, String> {
        let path = dir.join("config.yml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::defaults(dir)),
            Err(e) => {
                return Err(format!(
                    "Unable to read the configuration file: {}",
                    super::io_error("open", &path, &e)
                ))
            }
        };
        Config::parse(dir, &text)
    }

    /// [`Config::load`] from text.
    pub fn parse(dir: &Path, text: &str) -> Result<Config, String> {
        let mut c: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            crate::util::yaml::from_str(text)
                .map_err(|e| format!("Unable to decode the configuration: {e}"))?
        };
        c.dir = dir.to_path_buf();
        for r in c.remotes.values_mut() {
            if !r.public && r.auth_type.is_empty() {
                r.auth_type = "tls".into();
            }
        }
        let mut local = local_remote();
        if let Some(old) = c.remotes.get("local") {
            local.project = old.project.clone();
        }
        c.remotes.insert("local".into(), local);
        if c.default_remote.is_empty() {
            c.default_remote = "local".into();
        }
        Ok(c)
    }

    /// The text of `config.yml` (yaml.v2's layout, as lxc writes it).
    pub fn to_yaml(&self) -> Result<String, String> {
        crate::util::yaml::to_string(self)
    }

    /// Write `config.yml` atomically (mode 0644), making the directory (0700) when missing.
    pub fn save(&self) -> Result<(), String> {
        self.ensure_dir()?;
        let text = self.to_yaml()?;
        let path = self.dir.join("config.yml");
        crate::util::fs::atomic_write_mode(&path, text.as_bytes(), 0o644)
            .map_err(|e| format!("Unable to write the configuration: {}: {e}", path.display()))
    }

    /// Make the configuration directory (0700) when it does not exist; an existing one is left
    /// as it is.
    pub fn ensure_dir(&self) -> Result<(), String> {
        make_dir(&self.dir)
    }

    pub fn server_cert_path(&self, remote: &str) -> PathBuf {
        self.dir.join("servercerts").join(format!("{remote}.crt"))
    }

    /// The pinned certificate of `remote` (DER), if one is stored.
    pub fn server_cert(&self, remote: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.server_cert_path(remote);
        match std::fs::read_to_string(&path) {
            Ok(pem) => tls::pem_to_der(&pem)
                .map(Some)
                .ok_or_else(|| format!("no certificate in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(super::io_error("open", &path, &e)),
        }
    }

    /// Store `der` as the pinned certificate of `remote` (PEM, 0644; `servercerts/` 0700 when
    /// made).
    pub fn save_server_cert(&self, remote: &str, der: &[u8]) -> Result<(), String> {
        self.ensure_dir()?;
        let path = self.server_cert_path(remote);
        if let Some(dir) = path.parent() {
            make_dir(dir).map_err(|_| "Could not create server cert dir".to_string())?;
        }
        crate::util::fs::atomic_write_mode(&path, tls::der_to_pem(der).as_bytes(), 0o644).map_err(
            |e| {
                format!(
                    "Could not write server cert file \"{}\": {e}",
                    path.display()
                )
            },
        )
    }

    pub fn client_cert_paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.crt"), self.dir.join("client.key"))
    }

    pub fn has_client_certificate(&self) -> bool {
        let (crt, key) = self.client_cert_paths();
        crt.exists() && key.exists()
    }

    /// This client's identity, made on first use.
    pub fn identity(&self) -> Result<tls::Identity, String> {
        self.ensure_dir()?;
        let (crt, key) = self.client_cert_paths();
        tls::Identity::load_or_make(&crt, &key, tls::CertKind::Client).map_err(|e| {
            format!(
                "cannot load or make the client certificate {}: {e}",
                crt.display()
            )
        })
    }

    /// A remote by name.
    pub fn remote(&self, name: &str) -> Result<&Remote, String> {
        self.remotes
            .get(name)
            .ok_or_else(|| format!("The remote \"{name}\" doesn't exist"))
    }

    /// Split `[remote:]rest` (lxc's `ParseRemote`): no colon means the default remote; a prefix
    /// that is no remote is an error, unless a `/` before the colon shows the colon belongs to a
    /// path or snapshot name (`c1/etc/a:b`). An empty prefix (`:c1`) also means the default.
    pub fn split<'a>(&self, raw: &'a str) -> Result<(String, &'a str), String> {
        let Some((remote, rest)) = raw.split_once(':') else {
            return Ok((self.default_remote.clone(), raw));
        };
        if remote.is_empty() {
            return Ok((self.default_remote.clone(), rest));
        }
        if !self.remotes.contains_key(remote) {
            if remote.contains('/') {
                return Ok((self.default_remote.clone(), raw));
            }
            return Err(format!("The remote \"{remote}\" doesn't exist"));
        }
        Ok((remote.to_string(), rest))
    }

    /// A client of the LXD API of `name` (lxc's `GetInstanceServer`): its socket, or HTTPS with
    /// the pinned certificate and this client's identity.
    pub fn instance_client(&self, name: &str) -> Result<Client, String> {
        let r = self.remote(name)?;
        if r.public || r.is_simplestreams() {
            return Err("The remote isn't a private LXD server".into());
        }
        self.lxd_client(name, r)
    }

    /// A client of a remote that speaks the LXD protocol, public ones included (lxc's
    /// `GetImageServer` for `lxd` remotes).
    pub fn lxd_client(&self, name: &str, r: &Remote) -> Result<Client, String> {
        if r.is_simplestreams() {
            return Err(format!(
                "not supported yet: simplestreams remote \"{name}\" here (it can be an image source for launch and image copy)"
            ));
        }
        if !r.project.is_empty() && r.project != "default" {
            return Err(format!(
                "not supported yet: projects (remote \"{name}\" uses project \"{}\")",
                r.project
            ));
        }
        if r.auth_type == "candid" {
            return Err(format!(
                "not supported yet: candid authentication (remote \"{name}\")"
            ));
        }
        let label = format!("remote {name} ({})", r.addr);
        match addr::parse(&r.addr)? {
            Addr::Unix(path) if path.is_empty() => {
                Ok(Client::with_socket(crate::client::socket_path()))
            }
            Addr::Unix(path) => Ok(Client::unix_labelled(PathBuf::from(path), label)),
            Addr::Https { host, port } => {
                let pinned = self.server_cert(name)?;
                let identity = if r.public {
                    None
                } else {
                    Some(self.identity()?)
                };
                let tls = match &pinned {
                    Some(der) => tls::Client::pinned(Some(der.clone()), identity.as_ref()),
                    // No pin: a public server whose certificate the system CAs vouch for (a
                    // private one is always pinned by `remote add`).
                    None if r.public => tls::Client::system(),
                    None => {
                        return Err(format!(
                            "no server certificate pinned for remote {name} ({}): expected in {}; remove the remote and add it again",
                            r.addr,
                            self.server_cert_path(name).display()
                        ))
                    }
                }
                .map_err(|e| format!("{label}: TLS setup: {e}"))?;
                Ok(Client::https(
                    label,
                    Https {
                        host,
                        port,
                        tls,
                        pinned: pinned.as_deref().map(tls::fingerprint),
                    },
                ))
            }
        }
    }
}

/// `create_dir_all` with the last directory made 0700 when it did not exist.
fn make_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    crate::util::fs::create_dir_mode(dir, 0o700)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What lxc 5.0.2 wrote after `lxc remote add self 127.0.0.1 --accept-certificate`.
    const LXC_CONFIG: &str = "default-remote: local
remotes:
  images:
    addr: https://images.linuxcontainers.org
    protocol: simplestreams
    public: true
  local:
    addr: unix://
    public: false
  self:
    addr: https://127.0.0.1:8443
    auth_type: tls
    project: default
    protocol: lxd
    public: false
aliases: {}
";

    #[test]
    fn config_round_trip_like_lxc() {
        let c = Config::parse(Path::new("/x"), LXC_CONFIG).unwrap();
        assert_eq!(c.default_remote, "local");
        assert_eq!(c.remotes["self"].addr, "https://127.0.0.1:8443");
        assert_eq!(c.remotes["self"].auth_type, "tls");
        assert!(c.remotes["local"].is_static);
        assert!(c.remotes["images"].is_simplestreams());
        assert_eq!(c.to_yaml().unwrap(), LXC_CONFIG);
    }

    #[test]
    fn defaults_and_empty_files() {
        let d = Config::defaults(Path::new("/x"));
        assert_eq!(
            d.to_yaml().unwrap(),
            "default-remote: local\nremotes:\n  images:\n    addr: https://images.linuxcontainers.org\n    protocol: simplestreams\n    public: true\n  local:\n    addr: unix://\n    public: false\naliases: {}\n"
        );
        let e = Config::parse(Path::new("/x"), "").unwrap();
        assert_eq!(e.default_remote, "local");
        assert!(e.remotes.contains_key("local"));
        // A file without `images` (the user removed it) stays without.
        assert!(!e.remotes.contains_key("images"));
        let n = Config::parse(Path::new("/x"), "remotes:\naliases:\n").unwrap();
        assert_eq!(n.remotes.len(), 1);
        let bad = Config::parse(Path::new("/x"), "remotes: [").unwrap_err();
        assert!(
            bad.starts_with("Unable to decode the configuration: "),
            "{bad}"
        );
    }

    #[test]
    fn local_cannot_be_redefined() {
        let c = Config::parse(
            Path::new("/x"),
            "remotes:\n  local:\n    addr: https://evil:8443\n    project: p\n",
        )
        .unwrap();
        assert_eq!(c.remotes["local"].addr, "unix://");
        assert_eq!(c.remotes["local"].project, "p");
    }

    #[test]
    fn remote_prefixes() {
        let mut c = Config::defaults(Path::new("/x"));
        c.remotes.insert(
            "b".into(),
            Remote {
                addr: "https://10.0.0.2:8443".into(),
                ..Default::default()
            },
        );
        let split = |s| c.split(s).map(|(r, n)| (r, n.to_string()));
        assert_eq!(split("c1"), Ok(("local".into(), "c1".into())));
        assert_eq!(split("local:c1"), Ok(("local".into(), "c1".into())));
        assert_eq!(split(":c1"), Ok(("local".into(), "c1".into())));
        assert_eq!(split("b:c1"), Ok(("b".into(), "c1".into())));
        assert_eq!(split("b:"), Ok(("b".into(), String::new())));
        assert_eq!(split("b:c1/snap:x"), Ok(("b".into(), "c1/snap:x".into())));
        assert_eq!(
            split("c1/etc/a:b"),
            Ok(("local".into(), "c1/etc/a:b".into()))
        );
        assert_eq!(
            split("images:debian/12"),
            Ok(("images".into(), "debian/12".into()))
        );
        assert_eq!(
            split("nope:c1"),
            Err("The remote \"nope\" doesn't exist".into())
        );
        c.default_remote = "b".into();
        assert_eq!(c.split("c1"), Ok(("b".into(), "c1")));
    }

    #[test]
    fn simplestreams_and_public_are_no_instance_servers() {
        let c = Config::defaults(Path::new("/x"));
        assert_eq!(
            c.instance_client("images").unwrap_err(),
            "The remote isn't a private LXD server"
        );
        assert_eq!(
            c.instance_client("zz").unwrap_err(),
            "The remote \"zz\" doesn't exist"
        );
    }

    #[test]
    fn saved_with_lxc_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("bivy-conf-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = Config::defaults(&dir);
        c.save().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("config.yml")), 0o644);
        let back = Config::load(&dir).unwrap();
        assert_eq!(back.to_yaml().unwrap(), c.to_yaml().unwrap());
        c.save_server_cert("b", b"\x30\x03\x02\x01\x01").unwrap();
        assert_eq!(mode(&dir.join("servercerts")), 0o700);
        assert_eq!(mode(&c.server_cert_path("b")), 0o644);
        assert_eq!(
            c.server_cert("b").unwrap().as_deref(),
            Some(&b"\x30\x03\x02\x01\x01"[..])
        );
        assert_eq!(c.server_cert("none").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
