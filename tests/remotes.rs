//! Remotes from the client's side (issue 11): `bivy remote add` with the trust password and with
//! a token, the pinned server certificate, `remote:` on the verbs, launches and image copies
//! across two daemons, `config trust`, and a client configuration shared with the unmodified
//! `lxc` 5.0.2.
//!
//! Two real daemons on loopback: `a` is the local one (its socket), `b` listens on HTTPS on a
//! free port. Each client configuration (`BIVY_CONF`) is a temp dir of its own. Root (the
//! daemons), the busybox test image; `lxc` for the shared-configuration test.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Daemon, TempDir};
use serde_json::{json, Value};

/// A port nobody listens on right now (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Root and the busybox image, or a recorded skip.
fn prerequisites() -> bool {
    common::require_root()
}

/// Make `d` listen on a free loopback port with trust password `pw`; its `host:port`.
fn listen(d: &Daemon, pw: &str) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let body = json!({"config": {"core.https_address": addr, "core.trust_password": pw}});
    let (code, v) = d
        .api("PATCH", "/1.0", Some(&body.to_string()))
        .expect("PATCH /1.0");
    assert_eq!(code, 200, "listening: {v}");
    addr
}

/// The SHA-256 fingerprint of `d`'s server certificate.
fn fingerprint(d: &Daemon) -> String {
    let (_, v) = d.api("GET", "/1.0", None).expect("GET /1.0");
    v["metadata"]["environment"]["certificate_fingerprint"]
        .as_str()
        .expect("certificate_fingerprint")
        .to_string()
}

/// A bivy client: the local daemon's socket and a client configuration of its own.
struct Cli<'a> {
    local: &'a Daemon,
    conf: PathBuf,
    _tmp: TempDir,
}

impl<'a> Cli<'a> {
    fn new(local: &'a Daemon) -> Cli<'a> {
        let tmp = TempDir::new().expect("temp dir");
        // Not made yet: the client makes it (0700) when a remote is added.
        let conf = tmp.path().join("conf");
        Cli {
            local,
            conf,
            _tmp: tmp,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.local.cli();
        c.args(args).env("BIVY_CONF", &self.conf);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        common::run_bounded(&mut self.cmd(args), Duration::from_secs(120)).expect("run bivy")
    }

    /// Run; panic with the output unless it succeeds; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "bivy {args:?} failed ({}):\nstdout: {}\nstderr: {}\nlocal daemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.local.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run; panic unless it fails; stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "bivy {args:?} succeeded:\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn config_yml(&self) -> String {
        std::fs::read_to_string(self.conf.join("config.yml")).unwrap_or_default()
    }

    fn pinned(&self, remote: &str) -> PathBuf {
        self.conf.join("servercerts").join(format!("{remote}.crt"))
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn busybox() -> String {
    common::busybox_image()
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// `remote add` with the trust password: what is refused (no confirmation possible, a wrong
/// fingerprint, a wrong password) leaves nothing behind; then the verbs on `b:`, a launch here
/// from b's image, an image copy, and a server whose certificate changed.
#[test]
fn remote_add_with_password_and_verbs_on_the_remote() {
    if !prerequisites() {
        return;
    }
    let a = Daemon::start().expect("daemon a");
    let b = Daemon::start().expect("daemon b");
    let addr = listen(&b, "sekret");
    let fp = fingerprint(&b);
    let cli = Cli::new(&a);

    // No terminal and neither --accept-certificate nor --fingerprint: nobody can confirm.
    let err = cli.fails(&["remote", "add", "b", &addr, "--password", "sekret"]);
    assert!(
        err.contains("needs confirming") && err.contains(&fp),
        "{err}"
    );
    let err = cli.fails(&[
        "remote",
        "add",
        "b",
        &addr,
        "--fingerprint",
        &"0".repeat(64),
    ]);
    assert!(
        err.contains("Certificate fingerprint mismatch") && err.contains(&fp),
        "{err}"
    );
    let err = cli.fails(&[
        "remote",
        "add",
        "b",
        &addr,
        "--fingerprint",
        &fp,
        "--password",
        "wrong",
    ]);
    assert!(!err.is_empty());
    assert!(!cli.pinned("b").exists(), "a refused remote left its pin");
    assert!(!cli.config_yml().contains("b:"), "{}", cli.config_yml());

    // The fingerprint in any case pins it without a prompt.
    let shown: String = fp.to_uppercase();
    let out = cli.ok(&[
        "remote",
        "add",
        "b",
        &addr,
        "--fingerprint",
        &shown,
        "--password",
        "sekret",
    ]);
    assert_eq!(out, "Client certificate now trusted by server: b\n");
    let yml = cli.config_yml();
    assert!(
        yml.contains(&format!(
            "  b:\n    addr: https://{addr}\n    auth_type: tls\n    protocol: lxd\n    public: false\n"
        )),
        "{yml}"
    );
    assert_eq!(mode(&cli.conf), 0o700);
    assert_eq!(mode(&cli.conf.join("config.yml")), 0o644);
    assert_eq!(mode(&cli.conf.join("client.key")), 0o600);
    assert!(cli.pinned("b").exists());
    let err = cli.fails(&["remote", "add", "b", &addr]);
    assert!(
        err.contains(&format!("Remote b exists as <https://{addr}>")),
        "{err}"
    );
    let list = cli.ok(&["remote", "list", "-f", "csv"]);
    assert!(
        list.contains(&format!("b,https://{addr},lxd,tls,NO,NO,NO\n")),
        "{list}"
    );

    // Verbs on b: over HTTPS.
    let img = busybox();
    let out = cli.ok(&["image", "import", &img, "b:", "--alias", "bb"]);
    assert!(out.contains("Image imported with fingerprint:"), "{out}");
    assert!(cli.ok(&["image", "list", "b:", "-f", "csv"]).contains("bb"));
    cli.ok(&["launch", "b:bb", "b:c1"]);
    assert_eq!(
        cli.ok(&["list", "b:", "-c", "ns", "-f", "csv"]),
        "c1,RUNNING\n"
    );
    assert_eq!(
        cli.ok(&["list", "-c", "n", "-f", "csv"]),
        "",
        "nothing local"
    );
    let out = cli.run(&[
        "exec",
        "b:c1",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let dir = TempDir::new().expect("temp dir");
    let src = dir.path().join("in.txt");
    std::fs::write(&src, "over https\n").expect("write");
    cli.ok(&[
        "file",
        "push",
        src.to_str().expect("utf-8"),
        "b:c1/root/in.txt",
    ]);
    let back = dir.path().join("back.txt");
    cli.ok(&[
        "file",
        "pull",
        "b:c1/root/in.txt",
        back.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("pulled"),
        "over https\n"
    );
    cli.ok(&["config", "set", "b:c1", "user.where", "b"]);
    assert_eq!(cli.ok(&["config", "get", "b:c1", "user.where"]), "b\n");
    assert_eq!(
        cli.ok(&["config", "get", "b:", "core.https_address"]),
        format!("{addr}\n")
    );
    cli.ok(&["snapshot", "b:c1", "s1"]);
    cli.ok(&["restore", "b:c1", "s1"]);
    assert!(cli.ok(&["info", "b:c1"]).contains("Name: c1\n"));
    assert!(cli.ok(&["info", "b:"]).contains(&fp));
    assert!(cli
        .ok(&["profile", "list", "b:", "-f", "csv"])
        .starts_with("default,"));
    assert!(cli
        .ok(&["storage", "list", "b:", "-f", "csv"])
        .starts_with("default,"));
    assert!(cli
        .ok(&["query", "b:/1.0/instances"])
        .contains("/1.0/instances/c1"));
    assert!(cli.ok(&["version", "b:"]).contains("Server version: "));
    cli.ok(&["stop", "b:c1", "--force"]);
    assert_eq!(
        cli.ok(&["list", "b:", "-c", "ns", "-f", "csv"]),
        "c1,STOPPED\n"
    );

    // Here from b's image (a pulls it over the LXD protocol, with the image's secret: it is
    // private), and an image copy with an alias.
    cli.ok(&["launch", "b:bb", "c2"]);
    assert_eq!(cli.ok(&["list", "-c", "ns", "-f", "csv"]), "c2,RUNNING\n");
    cli.ok(&["image", "copy", "b:bb", "local:", "--alias", "copied"]);
    let images = cli.ok(&["image", "list", "-c", "l", "-f", "csv"]);
    assert!(images.contains("copied"), "{images}");
    let err = cli.fails(&["image", "copy", "b:bb", "local:name"]);
    assert!(
        err.contains("Can't provide a name for the target image"),
        "{err}"
    );
    // An instance copied from the remote here (a migration, pulled by this daemon).
    cli.ok(&["copy", "b:c1", "c3", "--stateless"]);
    assert!(cli.ok(&["list", "-c", "n", "-f", "csv"]).contains("c3"));
    cli.ok(&["delete", "--force", "b:c1", "c2", "c3"]);
    assert_eq!(cli.ok(&["list", "b:", "-f", "csv"]), "");

    // The default remote: commands without a prefix go there.
    cli.ok(&["remote", "switch", "b"]);
    assert_eq!(cli.ok(&["remote", "get-default"]), "b\n");
    assert!(cli
        .ok(&["remote", "list", "-f", "csv"])
        .contains("b (current),"));
    assert!(cli.ok(&["image", "list", "-f", "csv"]).contains("bb"));
    let err = cli.fails(&["remote", "remove", "b"]);
    assert!(err.contains("Can't remove the default remote"), "{err}");
    cli.ok(&["remote", "switch", "local"]);

    // A server certificate that is not the pinned one: refused, both fingerprints named.
    let other = std::fs::read_to_string(a.dir().join("server.crt")).expect("a's server.crt");
    std::fs::write(cli.pinned("b"), other).expect("replace the pin");
    let err = cli.fails(&["list", "b:"]);
    assert!(
        err.contains("remote b") && err.contains(&fp) && err.contains(&fingerprint(&a)),
        "{err}"
    );

    // Rename moves the pin; remove drops it.
    cli.ok(&["remote", "rename", "b", "bee"]);
    assert!(cli.pinned("bee").exists() && !cli.pinned("b").exists());
    cli.ok(&["remote", "remove", "bee"]);
    assert!(!cli.pinned("bee").exists());
    assert!(!cli.config_yml().contains("bee"));
    let err = cli.fails(&["list", "bee:"]);
    assert!(err.contains("The remote \"bee\" doesn't exist"), "{err}");
}

/// `config trust add` makes a token; `remote add NAME TOKEN` uses it once; a reused token or one
/// whose fingerprint is not the server's is refused and leaves nothing; `config trust list`,
/// `remove` (the client loses access), `list-tokens` and `revoke-token`.
#[test]
fn remote_add_with_a_token_and_config_trust() {
    if !prerequisites() {
        return;
    }
    let a = Daemon::start().expect("daemon a");
    let b = Daemon::start().expect("daemon b");
    let addr = listen(&b, "sekret");
    let admin = Cli::new(&a);
    admin.ok(&[
        "remote",
        "add",
        "b",
        &addr,
        "--accept-certificate",
        "--password",
        "sekret",
    ]);

    let out = admin.ok(&["config", "trust", "add", "b:", "laptop"]);
    let (head, token) = out.trim_end().split_once('\n').expect("two lines");
    assert_eq!(head, "Client laptop certificate add token:");
    let raw = bivy::util::base64::decode(token).expect("base64");
    let t: Value = serde_json::from_slice(&raw).expect("token JSON");
    assert_eq!(t["client_name"], "laptop");
    assert_eq!(t["fingerprint"], fingerprint(&b).as_str());
    assert_eq!(t["addresses"][0], addr.as_str());
    let tokens = admin.ok(&["config", "trust", "list-tokens", "b:", "-f", "csv"]);
    assert!(tokens.starts_with(&format!("laptop,{token},")), "{tokens}");

    // A token naming another certificate: refused before anything is sent, nothing saved.
    let mut forged = t.clone();
    forged["fingerprint"] = json!("0".repeat(64));
    let forged = bivy::util::base64::encode(forged.to_string().as_bytes());
    let mallory = Cli::new(&a);
    let err = mallory.fails(&["remote", "add", "b", &forged]);
    assert!(
        err.contains("Certificate fingerprint mismatch between certificate token and server"),
        "{err}"
    );
    assert!(!mallory.pinned("b").exists());

    let laptop = Cli::new(&a);
    laptop.ok(&["remote", "add", "b", token]);
    assert_eq!(laptop.ok(&["list", "b:", "-f", "csv"]), "");
    assert!(laptop
        .config_yml()
        .contains(&format!("addr: https://{addr}")));
    // Single use.
    let again = Cli::new(&a);
    let err = again.fails(&["remote", "add", "b", token]);
    assert!(err.contains("Failed to create certificate"), "{err}");
    assert!(!again.pinned("b").exists() && !again.config_yml().contains("b:"));
    assert_eq!(
        admin.ok(&["config", "trust", "list-tokens", "b:", "-f", "csv"]),
        ""
    );

    // The trust store as `lxc config trust list` shows it.
    let list = admin.ok(&["config", "trust", "list", "b:", "-f", "csv"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    // TYPE, NAME, COMMON NAME, FINGERPRINT, then the two dates (quoted: they hold commas).
    let laptop_row: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with("client,laptop,"))
        .expect("laptop row")
        .splitn(5, ',')
        .collect();
    assert_eq!(laptop_row[3].len(), 12);
    assert!(
        laptop_row[4].starts_with('"') && laptop_row[4].contains(" at "),
        "{list}"
    );
    let laptop_fp = laptop_row[3].to_string();
    let show = admin.ok(&["config", "trust", "show", &format!("b:{laptop_fp}")]);
    assert!(show.starts_with("name: laptop\ntype: client\n"), "{show}");

    // Removed: the client loses access.
    admin.ok(&["config", "trust", "remove", &format!("b:{laptop_fp}")]);
    let err = laptop.fails(&["list", "b:"]);
    assert!(!err.is_empty());

    // A token revoked before use.
    admin.ok(&["config", "trust", "add", "b:", "--name", "tablet"]);
    let out = admin.ok(&["config", "trust", "revoke-token", "b:tablet"]);
    assert_eq!(out, "Certificate add token for tablet deleted\n");
    let err = admin.fails(&["config", "trust", "revoke-token", "b:tablet"]);
    assert!(
        err.contains("No certificate add token for member tablet on remote: b"),
        "{err}"
    );
}

/// A configuration directory works for both clients: `lxc` reads what bivy wrote (its key and
/// pins) and bivy reads what `lxc` wrote.
#[test]
fn lxc_and_bivy_share_a_configuration() {
    if !common::lxc_prerequisites() {
        return;
    }
    let a = Daemon::start().expect("daemon a");
    let b = Daemon::start().expect("daemon b");
    let addr = listen(&b, "sekret");

    let by_lxc = Cli::new(&a);
    let out = Command::new("lxc")
        .args([
            "remote",
            "add",
            "b",
            &addr,
            "--accept-certificate",
            "--password",
            "sekret",
        ])
        .env("LXD_CONF", &by_lxc.conf)
        .env("LXD_SOCKET", a.socket())
        .output()
        .expect("run lxc");
    assert!(out.status.success(), "lxc remote add: {out:?}");
    assert!(by_lxc
        .ok(&["remote", "list", "-f", "csv"])
        .contains("b,https://"));
    assert_eq!(by_lxc.ok(&["list", "b:", "-f", "csv"]), "");
    assert!(by_lxc.ok(&["info", "b:"]).contains("auth: trusted"));

    let by_bivy = Cli::new(&a);
    by_bivy.ok(&[
        "remote",
        "add",
        "b",
        &addr,
        "--accept-certificate",
        "--password",
        "sekret",
    ]);
    let out = Command::new("lxc")
        .args(["info", "b:"])
        .env("LXD_CONF", &by_bivy.conf)
        .env("LXD_SOCKET", a.socket())
        .output()
        .expect("run lxc");
    assert!(out.status.success(), "lxc info b: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("auth: trusted"));
}
