//! The image store against real files: busybox images built on the fly (unified and split),
//! fingerprints checked with `sha256sum`, export, duplicates, prefixes, aliases, unpack with
//! owners/modes/xattrs, templates, publish round trips, and hostile or corrupt tarballs, each of
//! which must leave nothing behind. Runs as root (unpack sets owners, xattrs and device nodes).
//! Everything is created under /var/tmp and removed at the end of each test.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bivy::api;
use bivy::image::{self, template, Compression, Error, ImportOpts, Store, UnpackOpts, Upload};

/// A scratch directory removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = PathBuf::from(format!(
            "/var/tmp/bivy-image-test-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Owners, xattrs and device nodes need root: skip through the one skip mechanism otherwise.
macro_rules! require_root {
    () => {
        if !common::require_root() {
            return;
        }
    };
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sha256sum(files: &[&Path]) -> String {
    let list: Vec<String> = files.iter().map(|f| format!("'{}'", f.display())).collect();
    sh(&format!("cat {} | sha256sum", list.join(" ")))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    v.sort();
    v
}

const METADATA: &str = "architecture: x86_64
creation_date: 1700000000
properties:
  description: BusyBox test image
  os: busybox
  release: \"1.35\"
templates:
  /etc/hostname:
    when: [create, copy]
    create_only: false
    template: hostname.tpl
  /etc/hosts:
    when: [create, copy]
    template: hosts.tpl
  /etc/motd:
    when: [create]
    create_only: true
    template: motd.tpl
    properties:
      greeting: hello
";

/// Lay out a busybox image tree like LXD's make-busybox-image.sh (metadata.yaml, rootfs/, templates/).
fn busybox_tree(dir: &Path) {
    let r = dir.join("rootfs");
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(r.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for a in ["sh", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
    }
    std::os::unix::fs::symlink("/bin/busybox", r.join("sbin/init")).unwrap();
    fs::write(r.join("etc/hostname"), "busybox\n").unwrap();
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let t = dir.join("templates");
    fs::create_dir_all(&t).unwrap();
    fs::write(t.join("hostname.tpl"), "{{ container.name }}\n").unwrap();
    fs::write(
        t.join("hosts.tpl"),
        "127.0.0.1 localhost\n127.0.1.1 {{ instance.name }}\n",
    )
    .unwrap();
    fs::write(
        t.join("motd.tpl"),
        "{{ properties.greeting|capfirst }} from {{ trigger }}\n",
    )
    .unwrap();
    fs::write(
        t.join("broken.tpl"),
        "fine line\n{% if config_get(\"user.x\", \"\") == %}\n{% endif %}\n",
    )
    .unwrap();
    fs::write(dir.join("metadata.yaml"), METADATA).unwrap();
}

/// A unified busybox image built with GNU tar, as LXD's own test image is.
fn busybox_unified(tmp: &Tmp) -> PathBuf {
    let build = tmp.path("build");
    busybox_tree(&build);
    // A file capability, stored by GNU tar as PAX SCHILY.xattr.security.capability.
    rustix::fs::setxattr(
        build.join("rootfs/bin/busybox"),
        "security.capability",
        &CAP_NET_RAW,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let out = tmp.path("busybox.tar.gz");
    sh(&format!(
        "tar --format=posix --xattrs --xattrs-include='*' --numeric-owner --owner=0 --group=0 -C '{}' -czf '{}' metadata.yaml rootfs templates",
        build.display(),
        out.display()
    ));
    out
}

fn import_file(store: &Store, file: &Path, name: &str) -> image::Result<api::Image> {
    let mut f = File::open(file).unwrap();
    store.import(
        Upload::Unified(&mut f),
        &ImportOpts {
            filename: name.into(),
            ..Default::default()
        },
    )
}

fn ctx(name: &str) -> template::Context {
    template::Context {
        name: name.into(),
        architecture: "x86_64".into(),
        ..Default::default()
    }
}

#[test]
fn unified_import_export_unpack_templates() {
    require_root!();
    let tmp = Tmp::new("unified");
    let file = busybox_unified(&tmp);
    let store = Store::open(&tmp.path("store")).unwrap();

    let img = import_file(&store, &file, "busybox.tar.gz").unwrap();
    assert_eq!(img.fingerprint, sha256sum(&[&file]));
    assert_eq!(img.size as u64, fs::metadata(&file).unwrap().len());
    assert_eq!(img.architecture, "x86_64");
    assert_eq!(img.filename, "busybox.tar.gz");
    assert_eq!(img.kind, "container");
    assert_eq!(img.created_at, "2023-11-14T22:13:20Z");
    assert_eq!(img.put.expires_at, api::ZERO_TIME);
    assert_eq!(img.put.profiles, ["default"]);
    assert_eq!(img.put.properties["os"], "busybox");
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&img));

    // Export gives the same bytes.
    let (path, rootfs) = store.files(&img.fingerprint).unwrap();
    assert!(rootfs.is_none());
    assert_eq!(fs::read(&path).unwrap(), fs::read(&file).unwrap());

    // Duplicate: LXD's text, nothing left behind.
    let before = listing(store.dir());
    match import_file(&store, &file, "again.tar.gz") {
        Err(Error::Conflict(m)) => assert_eq!(m, "Image with same fingerprint already exists"),
        other => panic!("{other:?}"),
    }
    assert_eq!(listing(store.dir()), before);

    let meta = store.metadata(&img.fingerprint[..12]).unwrap();
    assert_eq!(meta.templates["/etc/hostname"].template, "hostname.tpl");

    // Unpack.
    let (rootfs, templates) = (tmp.path("c1/rootfs"), tmp.path("c1/templates"));
    fs::create_dir_all(tmp.path("c1")).unwrap();
    store
        .unpack(
            &img.fingerprint,
            &rootfs,
            &templates,
            &UnpackOpts::default(),
        )
        .unwrap();
    let bb = fs::symlink_metadata(rootfs.join("bin/busybox")).unwrap();
    assert_eq!(bb.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(
        bb.mode() & 0o777,
        fs::metadata("/bin/busybox").unwrap().mode() & 0o777
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(rootfs.join("sbin/init")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        xattr(&rootfs.join("bin/busybox"), "security.capability").unwrap(),
        CAP_NET_RAW
    );
    assert_eq!(
        fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(rootfs.join("root")).unwrap().mode() & 0o7777,
        0o700
    );
    assert!(templates.join("hostname.tpl").is_file());
    assert!(!rootfs.join("metadata.yaml").exists());

    // Templates: create renders, copy re-renders, create_only keeps an existing file.
    image::apply_templates(&meta, &templates, &rootfs, "create", &ctx("c1")).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "c1\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n127.0.1.1 c1\n"
    );
    let motd = rootfs.join("etc/motd");
    assert_eq!(fs::read_to_string(&motd).unwrap(), "Hello from create\n");
    let md = fs::metadata(&motd).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o644, 0, 0));
    fs::write(&motd, "edited by the user\n").unwrap();
    image::apply_templates(&meta, &templates, &rootfs, "copy", &ctx("c2")).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "c2\n"
    );
    let mut meta2 = meta.clone();
    meta2
        .templates
        .get_mut("/etc/motd")
        .unwrap()
        .when
        .push("copy".into());
    image::apply_templates(&meta2, &templates, &rootfs, "copy", &ctx("c3")).unwrap();
    assert_eq!(
        fs::read_to_string(&motd).unwrap(),
        "edited by the user\n",
        "create_only respected"
    );
    // A trigger no template listens to changes nothing.
    image::apply_templates(&meta, &templates, &rootfs, "start", &ctx("c4")).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "c3\n"
    );
    // New parents are created inside the rootfs.
    let mut meta3 = meta.clone();
    meta3.templates.insert(
        "/var/lib/new/name".into(),
        api::ImageMetadataTemplate {
            when: vec!["create".into()],
            template: "hostname.tpl".into(),
            ..Default::default()
        },
    );
    image::apply_templates(&meta3, &templates, &rootfs, "create", &ctx("deep")).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("var/lib/new/name")).unwrap(),
        "deep\n"
    );

    // A broken template fails naming its file and line.
    let mut broken = meta.clone();
    broken.templates.insert(
        "/etc/broken".into(),
        api::ImageMetadataTemplate {
            when: vec!["create".into()],
            template: "broken.tpl".into(),
            ..Default::default()
        },
    );
    let e = image::apply_templates(&broken, &templates, &rootfs, "create", &ctx("c1")).unwrap_err();
    assert!(e.to_string().contains("template broken.tpl line 2"), "{e}");

    // A template file that is a symlink (to a host file) or a fifo is refused, not read.
    std::os::unix::fs::symlink("/etc/passwd", templates.join("leak.tpl")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        templates.join("fifo.tpl"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    for tpl in ["leak.tpl", "fifo.tpl"] {
        let mut m = meta.clone();
        m.templates.insert(
            "/etc/leak".into(),
            api::ImageMetadataTemplate {
                when: vec!["create".into()],
                template: tpl.into(),
                ..Default::default()
            },
        );
        let e = image::apply_templates(&m, &templates, &rootfs, "create", &ctx("c1")).unwrap_err();
        assert!(e.to_string().contains(tpl), "{e}");
        assert!(!rootfs.join("etc/leak").exists());
    }

    // A template target behind a symlink to the host is refused, not followed.
    std::os::unix::fs::symlink("/tmp", rootfs.join("escape")).unwrap();
    let mut evil = meta.clone();
    let host = format!("bivy-image-test-{}-tpl-evil", std::process::id());
    evil.templates.insert(
        format!("/escape/{host}"),
        api::ImageMetadataTemplate {
            when: vec!["create".into()],
            template: "hostname.tpl".into(),
            ..Default::default()
        },
    );
    assert!(image::apply_templates(&evil, &templates, &rootfs, "create", &ctx("x")).is_err());
    assert!(!Path::new("/tmp").join(&host).exists());

    // Unpacking into an existing directory is refused.
    assert!(matches!(
        store.unpack(
            &img.fingerprint,
            &rootfs,
            &tmp.path("c1/t2"),
            &UnpackOpts::default()
        ),
        Err(Error::Conflict(_))
    ));

    store.delete(&img.fingerprint).unwrap();
    assert!(matches!(
        store.get(&img.fingerprint),
        Err(Error::NotFound(_))
    ));
    assert_eq!(listing(store.dir()), Vec::<String>::new());
}

#[test]
fn split_image() {
    require_root!();
    let tmp = Tmp::new("split");
    let build = tmp.path("build");
    busybox_tree(&build);
    let meta = tmp.path("meta.tar.xz");
    let root = tmp.path("rootfs.tar.gz");
    sh(&format!(
        "tar --numeric-owner -C '{b}' -cJf '{m}' metadata.yaml templates && tar --numeric-owner -C '{b}/rootfs' -czf '{r}' .",
        b = build.display(),
        m = meta.display(),
        r = root.display()
    ));
    let store = Store::open(&tmp.path("store")).unwrap();
    let (mut m, mut r) = (File::open(&meta).unwrap(), File::open(&root).unwrap());
    let img = store
        .import(
            Upload::Split {
                metadata: &mut m,
                rootfs: &mut r,
            },
            &ImportOpts::default(),
        )
        .unwrap();
    assert_eq!(img.fingerprint, sha256sum(&[&meta, &root]));
    assert_eq!(
        img.size as u64,
        fs::metadata(&meta).unwrap().len() + fs::metadata(&root).unwrap().len()
    );

    let (a, b) = store.files(&img.fingerprint).unwrap();
    assert_eq!(fs::read(a).unwrap(), fs::read(&meta).unwrap());
    assert_eq!(fs::read(b.unwrap()).unwrap(), fs::read(&root).unwrap());

    let (rootfs, templates) = (tmp.path("rootfs"), tmp.path("templates"));
    store
        .unpack(
            &img.fingerprint,
            &rootfs,
            &templates,
            &UnpackOpts::default(),
        )
        .unwrap();
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "busybox\n"
    );
    assert!(templates.join("hosts.tpl").is_file());
    let md = store.metadata(&img.fingerprint).unwrap();
    image::apply_templates(&md, &templates, &rootfs, "create", &ctx("split1")).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "split1\n"
    );
    assert!(
        store.rootfs_size(&img.fingerprint).unwrap() >= fs::metadata("/bin/busybox").unwrap().len()
    );

    // A real squashfs rootfs (squashfs-tools: `.ci/run` installs it, so CI always tests this).
    if common::have_cmd("mksquashfs") && common::have_cmd("unsquashfs") {
        let sq = tmp.path("rootfs.squashfs");
        sh(&format!(
            "mksquashfs '{}/rootfs' '{}' -noappend -quiet -no-progress",
            build.display(),
            sq.display()
        ));
        let (mut m, mut r) = (File::open(&meta).unwrap(), File::open(&sq).unwrap());
        let img = store
            .import(
                Upload::Split {
                    metadata: &mut m,
                    rootfs: &mut r,
                },
                &ImportOpts::default(),
            )
            .unwrap();
        assert_eq!(img.fingerprint, sha256sum(&[&meta, &sq]));
        let (r, t) = (tmp.path("sqfs-rootfs"), tmp.path("sqfs-templates"));
        store
            .unpack(&img.fingerprint, &r, &t, &UnpackOpts::default())
            .unwrap();
        assert_eq!(
            fs::read(r.join("bin/busybox")).unwrap(),
            fs::read("/bin/busybox").unwrap()
        );
        assert_eq!(
            fs::read_link(r.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(t.join("hostname.tpl").is_file());
    } else {
        // Counted, and fatal under BIVY_MUST_WORK=1; the rest of the test still runs.
        common::skip(
            "split_image (squashfs rootfs)",
            "needs mksquashfs and unsquashfs (squashfs-tools)",
        );
    }

    // A split image whose rootfs is squashfs needs unsquashfs: the error names it when absent.
    let sq = tmp.path("fake.squashfs");
    fs::write(&sq, b"hsqs\0\0\0\0 not really a squashfs").unwrap();
    let (mut m, mut r) = (File::open(&meta).unwrap(), File::open(&sq).unwrap());
    let img2 = store
        .import(
            Upload::Split {
                metadata: &mut m,
                rootfs: &mut r,
            },
            &ImportOpts::default(),
        )
        .unwrap();
    let e = store
        .unpack(
            &img2.fingerprint,
            &tmp.path("sq"),
            &tmp.path("sqt"),
            &UnpackOpts::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("unsquashfs"), "{e}");
    assert!(!tmp.path("sq").exists() && !tmp.path("sqt").exists());
}

/// A small unified image made with the tar crate.
struct Tb(tar::Builder<Vec<u8>>);

impl Tb {
    fn new() -> Tb {
        Tb(tar::Builder::new(Vec::new()))
    }
    fn metadata(mut self, yaml: &str) -> Tb {
        self.file("metadata.yaml", yaml.as_bytes(), 0o644, 0, 0);
        self
    }
    #[allow(clippy::too_many_arguments)] // a raw tar header has this many fields
    fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_234_567_890);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
    }
    fn file(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Regular,
            data,
            None,
            mode,
            uid,
            gid,
        );
    }
    fn dir(&mut self, name: &str, mode: u32) {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Directory,
            b"",
            None,
            mode,
            0,
            0,
        );
    }
    fn gz(self) -> Vec<u8> {
        let tar = self.0.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    }
}

fn small_image(date: u64) -> Vec<u8> {
    let mut tb = Tb::new().metadata(&format!("architecture: x86_64\ncreation_date: {date}\n"));
    tb.dir("rootfs/", 0o755);
    tb.file("rootfs/hello", b"hi\n", 0o644, 0, 0);
    tb.gz()
}

fn import_bytes(store: &Store, data: &[u8]) -> image::Result<api::Image> {
    store.import(Upload::Unified(&mut &data[..]), &ImportOpts::default())
}

#[test]
fn prefixes_and_aliases() {
    let tmp = Tmp::new("aliases");
    let store = Store::open(&tmp.path("store")).unwrap();
    // Import images until two share a first hex digit (at most 17 by pigeonhole).
    let mut fps: Vec<String> = Vec::new();
    let (a, b) = 'found: loop {
        let img = import_bytes(&store, &small_image(1_000 + fps.len() as u64)).unwrap();
        for f in &fps {
            if f[..1] == img.fingerprint[..1] {
                break 'found (f.clone(), img.fingerprint.clone());
            }
        }
        fps.push(img.fingerprint);
    };
    assert_eq!(store.get(&a[..10]).unwrap().fingerprint, a);
    assert_eq!(store.get(&b.to_uppercase()).unwrap().fingerprint, b);
    match store.get(&a[..1]) {
        Err(Error::BadRequest(m)) => assert!(m.contains("ambiguous") && m.contains(&a[..1]), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(store.get("zz"), Err(Error::NotFound(_))));
    assert!(matches!(store.get("../etc"), Err(Error::NotFound(_))));

    let entry = |name: &str, target: &str| api::ImageAliasesEntry {
        name: name.into(),
        target: target.into(),
        description: "d".into(),
        kind: String::new(),
    };
    store.alias_create(&entry("one", &a[..12])).unwrap();
    assert_eq!(store.alias_get("one").unwrap().target, a);
    assert_eq!(store.alias_get("one").unwrap().kind, "container");
    assert!(matches!(
        store.alias_create(&entry("one", &b)),
        Err(Error::Conflict(_))
    ));
    // `distro/release` names are LXD's usual ones; an empty part between slashes is not.
    for bad in ["a//b", "/a", "a/", "a\nb"] {
        assert!(
            matches!(
                store.alias_create(&entry(bad, &b)),
                Err(Error::BadRequest(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.alias_create(&entry("", &b)),
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        store.alias_create(&entry("two", &"f".repeat(64))),
        Err(Error::NotFound(_))
    ));
    store.alias_create(&entry("two", &b)).unwrap();
    let names: Vec<String> = store
        .alias_list()
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(
        store.get(&a).unwrap().aliases,
        [api::ImageAlias {
            name: "one".into(),
            description: "d".into()
        }]
    );

    store
        .alias_update(
            "one",
            &api::ImageAliasesEntryPut {
                description: "moved".into(),
                target: b.clone(),
            },
        )
        .unwrap();
    assert_eq!(store.alias_get("one").unwrap().target, b);
    assert!(store.get(&a).unwrap().aliases.is_empty());
    assert!(matches!(
        store.alias_rename("one", "two"),
        Err(Error::Conflict(_))
    ));
    store.alias_rename("one", "uno").unwrap();
    assert!(matches!(store.alias_get("one"), Err(Error::NotFound(_))));
    assert_eq!(store.get(&b).unwrap().aliases.len(), 2);
    store.alias_rename("uno", "debian/12").unwrap();
    assert_eq!(store.alias_get("debian/12").unwrap().target, b);
    store.alias_rename("debian/12", "uno").unwrap();

    // Deleting an image deletes its aliases.
    store.delete(&b).unwrap();
    assert!(store.alias_list().unwrap().is_empty());
    assert!(matches!(store.alias_delete("uno"), Err(Error::NotFound(_))));

    // update and touch
    let mut put = store.get(&a).unwrap().put;
    put.public = true;
    put.properties.insert("k".into(), "v".into());
    let img = store.update(&a, &put).unwrap();
    assert!(img.put.public);
    assert_eq!(img.put.properties["k"], "v");
    store.touch(&a).unwrap();
    assert_ne!(store.get(&a).unwrap().last_used_at, api::ZERO_TIME);
}

/// security.capability v2 for cap_net_raw+ep (what `setcap cap_net_raw+ep` writes).
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// system.posix_acl_access: u::rw-, u:1000:r--, g::r--, m::r--, o::---.
fn acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

const LONG_DIR: &str =
    "a-directory-name-long-enough-that-ustar-cannot-hold-the-path-in-its-name-field-of-one-hundred-bytes";

fn check_attrs(rootfs: &Path) {
    let long = rootfs.join(LONG_DIR).join("f".repeat(120));
    assert_eq!(fs::read(&long).unwrap(), b"long");
    assert_eq!(fs::read(rootfs.join("longlink")).unwrap(), b"long");
    let ping = rootfs.join("bin/ping");
    let md = fs::metadata(&ping).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o4755, 0, 0));
    assert_eq!(md.mtime(), 1_234_567_890);
    assert_eq!(xattr(&ping, "security.capability").unwrap(), CAP_NET_RAW);
    let ping2 = fs::metadata(rootfs.join("bin/ping2")).unwrap();
    assert_eq!(ping2.ino(), md.ino(), "hard link kept");
    let f = rootfs.join("home/u/file");
    let md = fs::metadata(&f).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o640, 1000, 1001)
    );
    assert_eq!(xattr(&f, "system.posix_acl_access").unwrap(), acl());
    assert_eq!(xattr(&f, "user.note").unwrap(), b"v");
    let d = fs::metadata(rootfs.join("home/u")).unwrap();
    assert_eq!(
        (d.mode() & 0o7777, d.uid(), d.gid(), d.mtime()),
        (0o750, 1000, 1000, 1_234_567_890)
    );
    let null = fs::symlink_metadata(rootfs.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (
            rustix::fs::major(null.rdev()),
            rustix::fs::minor(null.rdev())
        ),
        (1, 3)
    );
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert!(fs::symlink_metadata(rootfs.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let l = rootfs.join("lib64");
    assert_eq!(fs::read_link(&l).unwrap(), Path::new("usr/lib"));
    assert_eq!(fs::symlink_metadata(&l).unwrap().uid(), 7);
}

fn attrs_image() -> Vec<u8> {
    let mut tb = Tb::new().metadata("architecture: aarch64\ncreation_date: 1700000000\n");
    tb.dir("rootfs/", 0o755);
    tb.dir("rootfs/bin/", 0o755);
    tb.0.append_pax_extensions([("SCHILY.xattr.security.capability", &CAP_NET_RAW[..])])
        .unwrap();
    tb.file("rootfs/bin/ping", b"\x7fELF not really", 0o4755, 0, 0);
    tb.raw(
        b"rootfs/bin/ping2",
        tar::EntryType::Link,
        b"",
        Some(b"rootfs/bin/ping"),
        0o4755,
        0,
        0,
    );
    tb.raw(
        b"rootfs/home/u/",
        tar::EntryType::Directory,
        b"",
        None,
        0o750,
        1000,
        1000,
    );
    let a = acl();
    tb.0.append_pax_extensions([
        ("SCHILY.xattr.system.posix_acl_access", &a[..]),
        ("SCHILY.xattr.user.note", b"v"),
    ])
    .unwrap();
    tb.file("rootfs/home/u/file", b"data", 0o640, 1000, 1001);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_mode(0o666);
    h.set_size(0);
    tb.0.append_data(&mut h, "rootfs/dev/null", &b""[..])
        .unwrap();
    tb.raw(
        b"rootfs/run/fifo",
        tar::EntryType::Fifo,
        b"",
        None,
        0o600,
        0,
        0,
    );
    tb.raw(
        b"rootfs/lib64",
        tar::EntryType::Symlink,
        b"",
        Some(b"usr/lib"),
        0o777,
        7,
        7,
    );
    // Long names and link targets (GNU longname/longlink records).
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(4);
    tb.0.append_data(
        &mut h,
        format!("rootfs/{}/{}", LONG_DIR, "f".repeat(120)),
        &b"long"[..],
    )
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    tb.0.append_link(
        &mut h,
        "rootfs/longlink",
        format!("{}/{}", LONG_DIR, "f".repeat(120)),
    )
    .unwrap();
    tb.gz()
}

#[test]
fn unpack_keeps_owners_modes_xattrs_and_publish_round_trips() {
    require_root!();
    let tmp = Tmp::new("attrs");
    let store = Store::open(&tmp.path("store")).unwrap();
    let img = import_bytes(&store, &attrs_image()).unwrap();
    assert_eq!(img.architecture, "aarch64");
    let (rootfs, templates) = (tmp.path("r1"), tmp.path("t1"));
    store
        .unpack(
            &img.fingerprint,
            &rootfs,
            &templates,
            &UnpackOpts::default(),
        )
        .unwrap();
    check_attrs(&rootfs);

    // skip_devices: the node is skipped, the rest is there.
    store
        .unpack(
            &img.fingerprint,
            &tmp.path("r2"),
            &tmp.path("t2"),
            &UnpackOpts {
                skip_devices: true,
                max_bytes: 0,
            },
        )
        .unwrap();
    assert!(!tmp.path("r2/dev/null").exists());
    assert!(tmp.path("r2/bin/ping").is_file());

    // Publish with every compression; each imports and unpacks to the same attributes.
    let meta = store.metadata(&img.fingerprint).unwrap();
    for (i, c) in ["gzip", "xz", "zstd", "bzip2", "none"]
        .into_iter()
        .enumerate()
    {
        let c = Compression::from_name(c).unwrap();
        let mut m = meta.clone();
        m.creation_date += i as i64;
        let opts = ImportOpts {
            filename: format!("pub{}", c.extension()),
            ..Default::default()
        };
        let pubd = store
            .publish(&rootfs, &m, Some(&templates), c, &opts)
            .unwrap();
        let (file, _) = store.files(&pubd.fingerprint).unwrap();
        assert_eq!(pubd.fingerprint, sha256sum(&[&file]));
        assert_eq!(
            image::sniff(
                &fs::read(&file).unwrap()[..512.min(fs::metadata(&file).unwrap().len() as usize)]
            )
            .name(),
            if c == Compression::None {
                "tar"
            } else {
                c.name()
            }
        );
        let r = tmp.path(&format!("pub-{}", c.name()));
        store
            .unpack(
                &pubd.fingerprint,
                &r,
                &tmp.path(&format!("pubt-{}", c.name())),
                &UnpackOpts::default(),
            )
            .unwrap();
        check_attrs(&r);
        // Packing is deterministic: the same rootfs and metadata packed to a writer give the
        // very bytes `publish` stored, so importing them is a conflict with that image.
        let mut out = Vec::new();
        image::pack(&rootfs, &m, Some(&templates), c, &mut out).unwrap();
        let packed = tmp.path(&format!("packed-{}", c.name()));
        fs::write(&packed, &out).unwrap();
        assert_eq!(sha256sum(&[&packed]), pubd.fingerprint, "{} pack", c.name());
        match import_bytes(&store, &out) {
            Err(Error::Conflict(_)) => {}
            other => panic!("{} re-import: want a conflict, got {other:?}", c.name()),
        }
    }
}

/// Unpack a hostile unified image and check it was refused (or contained) with nothing outside.
fn hostile(
    tmp: &Tmp,
    store: &Store,
    name: &str,
    data: &[u8],
    opts: &UnpackOpts,
) -> image::Result<()> {
    let img = import_bytes(store, data)?;
    let (r, t) = (
        tmp.path(&format!("{name}/rootfs")),
        tmp.path(&format!("{name}/templates")),
    );
    fs::create_dir_all(tmp.path(name)).unwrap();
    let res = store.unpack(&img.fingerprint, &r, &t, opts);
    if res.is_err() {
        assert!(
            !r.exists() && !t.exists(),
            "{name}: a failed unpack leaves nothing"
        );
    }
    res
}

#[test]
fn hostile_tarballs_are_refused_or_contained() {
    require_root!();
    let tmp = Tmp::new("hostile");
    let store = Store::open(&tmp.path("store")).unwrap();
    let pid = std::process::id();
    let meta = |d: u32| {
        format!(
            "architecture: x86_64\ncreation_date: {}\n",
            1_600_000_000 + d
        )
    };
    let outside = tmp.path(&format!("evil-{pid}"));
    let tmp_evil = PathBuf::from(format!("/tmp/evil-{pid}"));
    let nothing_outside = || {
        assert!(!outside.exists());
        assert!(!tmp_evil.exists());
        assert!(!Path::new("/tmp").join(format!("evil2-{pid}")).exists());
    };

    // ../evil: refused at import (nothing enters the store) and by unpack itself.
    let mut tb = Tb::new().metadata(&meta(1));
    tb.dir("rootfs/", 0o755);
    tb.raw(
        format!("rootfs/../../evil-{pid}").as_bytes(),
        tar::EntryType::Regular,
        b"x",
        None,
        0o644,
        0,
        0,
    );
    let dotdot = tb.gz();
    let e = hostile(&tmp, &store, "dotdot", &dotdot, &UnpackOpts::default()).unwrap_err();
    assert!(
        matches!(&e, Error::BadRequest(m) if m.contains("unsafe")),
        "{e:?}"
    );
    assert_eq!(listing(store.dir()), Vec::<String>::new());
    let f = tmp.path("dotdot.tar.gz");
    fs::write(&f, &dotdot).unwrap();
    fs::create_dir_all(tmp.path("dd")).unwrap();
    let e = image::unpack_unified_file(
        &f,
        &tmp.path("dd/r"),
        &tmp.path("dd/t"),
        &UnpackOpts::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unsafe path"), "{e}");
    nothing_outside();

    // Absolute /tmp/evil: the leading slash is stripped as GNU tar and LXD do, so it is a
    // top-level `tmp/` member of the tarball, which is neither rootfs nor templates: contained.
    let mut tb = Tb::new().metadata(&meta(2));
    tb.dir("rootfs/", 0o755);
    tb.raw(
        tmp_evil.to_str().unwrap().as_bytes(),
        tar::EntryType::Regular,
        b"x",
        None,
        0o644,
        0,
        0,
    );
    // ...and an absolute rootfs member (pylxd's integration image has `/rootfs/etc/inittab`)
    // lands in the rootfs.
    tb.file("/rootfs/etc/inittab", b"::sysinit:/bin/true\n", 0o644, 0, 0);
    let abs = tb.gz();
    hostile(&tmp, &store, "abs", &abs, &UnpackOpts::default()).unwrap();
    assert_eq!(
        fs::read(tmp.path("abs/rootfs/etc/inittab")).unwrap(),
        b"::sysinit:/bin/true\n"
    );
    let f = tmp.path("abs.tar.gz");
    fs::write(&f, &abs).unwrap();
    fs::create_dir_all(tmp.path("ab")).unwrap();
    image::unpack_unified_file(
        &f,
        &tmp.path("ab/r"),
        &tmp.path("ab/t"),
        &UnpackOpts::default(),
    )
    .unwrap();
    assert!(tmp.path("ab/r/etc/inittab").is_file());
    nothing_outside();

    // Symlink rootfs/x -> /tmp, then rootfs/x/evil2: the planted symlink is never followed.
    let mut tb = Tb::new().metadata(&meta(3));
    tb.dir("rootfs/", 0o755);
    tb.raw(
        b"rootfs/x",
        tar::EntryType::Symlink,
        b"",
        Some(b"/tmp"),
        0o777,
        0,
        0,
    );
    tb.file(&format!("rootfs/x/evil2-{pid}"), b"x", 0o644, 0, 0);
    let e = hostile(&tmp, &store, "symlink", &tb.gz(), &UnpackOpts::default()).unwrap_err();
    assert!(
        matches!(&e, Error::BadRequest(m) if m.contains("symlink")),
        "{e:?}"
    );
    nothing_outside();
    // The same through a relative symlink climbing out, and a symlink replaced by a directory member.
    let mut tb = Tb::new().metadata(&meta(4));
    tb.dir("rootfs/", 0o755);
    tb.raw(
        b"rootfs/up",
        tar::EntryType::Symlink,
        b"",
        Some(b"../../../../../../tmp"),
        0o777,
        0,
        0,
    );
    tb.file(&format!("rootfs/up/evil2-{pid}"), b"x", 0o644, 0, 0);
    assert!(hostile(&tmp, &store, "symlink2", &tb.gz(), &UnpackOpts::default()).is_err());
    nothing_outside();
    // A regular file member over a planted symlink replaces the link instead of writing through it.
    let mut tb = Tb::new().metadata(&meta(5));
    tb.dir("rootfs/", 0o755);
    let target = format!("/tmp/evil2-{pid}");
    tb.raw(
        b"rootfs/f",
        tar::EntryType::Symlink,
        b"",
        Some(target.as_bytes()),
        0o777,
        0,
        0,
    );
    tb.file("rootfs/f", b"contained", 0o644, 0, 0);
    hostile(&tmp, &store, "overwrite", &tb.gz(), &UnpackOpts::default()).unwrap();
    assert_eq!(
        fs::read(tmp.path("overwrite/rootfs/f")).unwrap(),
        b"contained"
    );
    nothing_outside();

    // Hard link to /etc/passwd (absolute, outside, or not yet extracted): refused.
    let before = fs::metadata("/etc/passwd").unwrap();
    for (i, target) in [
        &b"/etc/passwd"[..],
        b"rootfs/../../../../etc/passwd",
        b"etc/passwd",
        b"rootfs/etc/passwd",
    ]
    .iter()
    .enumerate()
    {
        let mut tb = Tb::new().metadata(&meta(10 + i as u32));
        tb.dir("rootfs/", 0o755);
        tb.dir("rootfs/etc/", 0o755);
        tb.raw(
            b"rootfs/etc/pw",
            tar::EntryType::Link,
            b"",
            Some(target),
            0o644,
            0,
            0,
        );
        let res = hostile(
            &tmp,
            &store,
            &format!("hardlink{i}"),
            &tb.gz(),
            &UnpackOpts::default(),
        );
        assert!(
            matches!(&res, Err(Error::BadRequest(_))),
            "{}: {res:?}",
            String::from_utf8_lossy(target)
        );
    }
    let after = fs::metadata("/etc/passwd").unwrap();
    assert_eq!(
        (before.nlink(), before.mode(), before.uid()),
        (after.nlink(), after.mode(), after.uid())
    );

    // A device node with skip_devices: skipped, the rest extracted.
    let mut tb = Tb::new().metadata(&meta(20));
    tb.dir("rootfs/", 0o755);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_device_major(8).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_mode(0o666);
    h.set_size(0);
    tb.0.append_data(&mut h, "rootfs/dev/sda", &b""[..])
        .unwrap();
    tb.file("rootfs/ok", b"ok", 0o644, 0, 0);
    hostile(
        &tmp,
        &store,
        "device",
        &tb.gz(),
        &UnpackOpts {
            skip_devices: true,
            max_bytes: 0,
        },
    )
    .unwrap();
    assert!(fs::symlink_metadata(tmp.path("device/rootfs/dev/sda")).is_err());
    assert!(tmp.path("device/rootfs/ok").is_file());

    // A 10 GB sparse member (GNU tar --sparse) against max_bytes: refused before writing.
    let sp = tmp.path("sparse-build");
    fs::create_dir_all(sp.join("rootfs")).unwrap();
    fs::write(sp.join("metadata.yaml"), meta(30)).unwrap();
    sh(&format!(
        "truncate -s 10G '{}'",
        sp.join("rootfs/big").display()
    ));
    let sparse = tmp.path("sparse.tar.gz");
    sh(&format!(
        "tar --sparse -C '{}' -czf '{}' metadata.yaml rootfs",
        sp.display(),
        sparse.display()
    ));
    fs::remove_dir_all(&sp).unwrap();
    let e = hostile(
        &tmp,
        &store,
        "sparse",
        &fs::read(&sparse).unwrap(),
        &UnpackOpts {
            skip_devices: true,
            max_bytes: 1 << 30,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    assert!(!tmp.path("sparse/rootfs").exists());
    nothing_outside();
}

#[test]
fn corrupt_inputs_leave_nothing() {
    let tmp = Tmp::new("corrupt");
    let store = Store::open(&tmp.path("store")).unwrap();
    let good = small_image(42);
    let bad_request = |data: &[u8], opts: &ImportOpts, want: &str| {
        match store.import(Upload::Unified(&mut &data[..]), opts) {
            Err(Error::BadRequest(m)) => assert!(m.contains(want), "{m} !~ {want}"),
            other => panic!("want BadRequest ~ {want}: {other:?}"),
        }
        assert_eq!(
            listing(store.dir()),
            Vec::<String>::new(),
            "nothing left for {want}"
        );
    };
    let dflt = ImportOpts::default();
    // Truncated gzip (cut in the middle, and just the trailer missing).
    bad_request(&good[..good.len() / 2], &dflt, "invalid image tarball");
    bad_request(&good[..good.len() - 4], &dflt, "invalid image tarball");
    // Corrupt gzip data.
    let mut corrupt = good.clone();
    for b in &mut corrupt[20..40] {
        *b ^= 0x5a;
    }
    bad_request(&corrupt, &dflt, "invalid image tarball");
    // Not a tarball at all.
    bad_request(
        b"just some text, definitely not an image",
        &dflt,
        "unsupported image file format",
    );
    // Missing metadata.yaml.
    let mut tb = Tb::new();
    tb.dir("rootfs/", 0o755);
    bad_request(&tb.gz(), &dflt, "metadata.yaml is missing");
    // Missing rootfs/.
    bad_request(
        &Tb::new()
            .metadata("architecture: x86_64\ncreation_date: 1\n")
            .gz(),
        &dflt,
        "rootfs/ is missing",
    );
    // Bad architecture, missing creation date.
    let with_meta = |y: &str| {
        let mut tb = Tb::new().metadata(y);
        tb.dir("rootfs/", 0o755);
        tb.gz()
    };
    bad_request(
        &with_meta("architecture: pdp11\ncreation_date: 1\n"),
        &dflt,
        "unknown architecture \"pdp11\"",
    );
    bad_request(&with_meta("architecture: x86_64\n"), &dflt, "creation_date");
    // Wrong expected fingerprint.
    let opts = ImportOpts {
        expected_fingerprint: Some("ab".repeat(32)),
        ..Default::default()
    };
    bad_request(&good, &opts, "Fingerprint doesn't match");
    // Split with a broken rootfs.
    let m = Tb::new()
        .metadata("architecture: x86_64\ncreation_date: 1\n")
        .gz();
    let r = &good[..good.len() / 3];
    match store.import(
        Upload::Split {
            metadata: &mut &m[..],
            rootfs: &mut &r[..],
        },
        &dflt,
    ) {
        Err(Error::BadRequest(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(listing(store.dir()), Vec::<String>::new());
    // Right expected fingerprint works.
    let fp = {
        let d = ring::digest::digest(&ring::digest::SHA256, &good);
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let opts = ImportOpts {
        expected_fingerprint: Some(fp.clone()),
        ..Default::default()
    };
    assert_eq!(
        store
            .import(Upload::Unified(&mut &good[..]), &opts)
            .unwrap()
            .fingerprint,
        fp
    );
    // Leftovers of an interrupted import (by a process that is gone) are removed by open;
    // those of a live process (an import in flight) are kept.
    fs::write(store.dir().join(".import-999999999-1.tmp"), b"partial").unwrap();
    fs::write(store.dir().join(".aliases.json.tmp999999999"), b"partial").unwrap();
    let store = Store::open(store.dir()).unwrap();
    assert_eq!(
        listing(store.dir()),
        [
            fp.clone(),
            format!("{fp}.json"),
            format!("{fp}.metadata.yaml")
        ]
    );
    // A VM image is refused clearly.
    let mut tb = Tb::new().metadata("architecture: x86_64\ncreation_date: 1\n");
    tb.file("rootfs.img", b"QFI\xfb", 0o644, 0, 0);
    bad_request_in(&store, &tb.gz(), "not supported yet: virtual-machine");
}

/// Images that could never unpack or start are refused at import (nothing enters the store), not
/// at their first launch.
#[test]
fn images_that_cannot_work_are_refused_at_import() {
    let tmp = Tmp::new("refused");
    let store = Store::open(&tmp.path("store")).unwrap();
    let meta = "architecture: x86_64\ncreation_date: 1700000000\n";
    let with_template = |target: &str| {
        format!("{meta}templates:\n  {target}:\n    when: [create]\n    template: t.tpl\n")
    };
    let base = |yaml: &str| {
        let mut tb = Tb::new().metadata(yaml);
        tb.dir("rootfs/", 0o755);
        tb.dir("rootfs/etc/", 0o755);
        tb.file("templates/t.tpl", b"x\n", 0o644, 0, 0);
        tb
    };
    // A template whose target climbs out of the root.
    bad_request_in(
        &store,
        &base(&with_template("/../../tmp/x")).gz(),
        "not a clean absolute path",
    );
    // A template written under a directory that is a symlink in the image.
    let mut tb = base(&with_template("/var/run/x"));
    tb.dir("rootfs/var/", 0o755);
    tb.raw(
        b"rootfs/var/run",
        tar::EntryType::Symlink,
        b"",
        Some(b"/run"),
        0o777,
        0,
        0,
    );
    bad_request_in(&store, &tb.gz(), "var/run is not a directory in the image");
    // A template whose target is a directory.
    bad_request_in(
        &store,
        &base(&with_template("/etc")).gz(),
        "is a directory in the image",
    );
    // A member under a directory that a member made a symlink (relative or absolute).
    for link in [&b"/etc"[..], b"../../etc"] {
        let mut tb = base(meta);
        tb.raw(
            b"rootfs/lnk",
            tar::EntryType::Symlink,
            b"",
            Some(link),
            0o777,
            0,
            0,
        );
        tb.file("rootfs/lnk/passwd", b"x", 0o644, 0, 0);
        bad_request_in(&store, &tb.gz(), "its parent lnk is a symlink");
    }
    // A symlink with no target (the import took it, the unpack could not make it; found by
    // the tar_unpack fuzz target).
    let mut tb = base(meta);
    tb.raw(
        b"rootfs/etc/nothing",
        tar::EntryType::Symlink,
        b"",
        None,
        0o777,
        0,
        0,
    );
    bad_request_in(&store, &tb.gz(), "symlink etc/nothing has no target");
    // A malformed PAX record on a directory (the import read PAX records of files only; every
    // unpack failed on it), and a name longer than the kernel takes (found by fuzzing too).
    let mut tb = base(meta);
    tb.raw(
        b"././@PaxHeader",
        tar::EntryType::XHeader,
        b"99 mtime=1\n",
        None,
        0o644,
        0,
        0,
    );
    tb.dir("rootfs/etc/d/", 0o755);
    bad_request_in(&store, &tb.gz(), "malformed pax extension");
    let mut tb = base(meta);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_mtime(1_234_567_890);
    tb.0.append_data(&mut h, format!("rootfs/etc/{}", "n".repeat(256)), &b"x"[..])
        .unwrap();
    bad_request_in(&store, &tb.gz(), "a file name is longer than 255 bytes");
    // Owners that are no id: -1 (chown's "no change": the file stayed the unpacker's, found
    // by fuzzing) and 2^32, in the header and in a PAX record (it was cut to 0, root).
    for (uid, pax, want) in [
        (u32::MAX as u64, None, "uid 4294967295 is not a valid id"),
        (1u64 << 32, None, "uid 4294967296 is not a valid id"),
        (
            0,
            Some(&b"18 gid=4294967296\n"[..]),
            "gid 4294967296 is not a valid id",
        ),
    ] {
        let mut tb = base(meta);
        if let Some(p) = pax {
            tb.raw(
                b"././@PaxHeader",
                tar::EntryType::XHeader,
                p,
                None,
                0o644,
                0,
                0,
            );
        }
        tb.file("rootfs/etc/owned", b"x", 0o644, uid, 0);
        bad_request_in(&store, &tb.gz(), want);
    }
    // A hard link out of the rootfs (to metadata.yaml, to a template) or to a later file.
    for target in [&b"metadata.yaml"[..], b"templates/t.tpl", b"rootfs/later"] {
        let mut tb = base(meta);
        tb.raw(
            b"rootfs/etc/pw",
            tar::EntryType::Link,
            b"",
            Some(target),
            0o644,
            0,
            0,
        );
        tb.file("rootfs/later", b"x", 0o644, 0, 0);
        bad_request_in(&store, &tb.gz(), "unsafe hard link");
    }
    // A directory replaced by a file while it has entries.
    let mut tb = base(meta);
    tb.file("rootfs/etc/passwd", b"x", 0o644, 0, 0);
    tb.file("rootfs/etc", b"x", 0o644, 0, 0);
    bad_request_in(&store, &tb.gz(), "not empty");
    // Over the store's unpacked size limit (a zero-filled file compresses to almost nothing).
    store.set_max_unpacked(1 << 20);
    let mut tb = base(meta);
    tb.file("rootfs/zeros", &vec![0u8; 2 << 20], 0o644, 0, 0);
    bad_request_in(&store, &tb.gz(), "too large");
    store.set_max_unpacked(image::DEFAULT_MAX_UNPACKED);
    // And a sound image with a template, a hard link and a replaced symlink imports.
    let mut tb = base(&with_template("/etc/hostname"));
    tb.file("rootfs/etc/a", b"a", 0o644, 0, 0);
    tb.raw(
        b"rootfs/etc/b",
        tar::EntryType::Link,
        b"",
        Some(b"rootfs/etc/a"),
        0o644,
        0,
        0,
    );
    tb.raw(
        b"rootfs/run",
        tar::EntryType::Symlink,
        b"",
        Some(b"/x"),
        0o777,
        0,
        0,
    );
    tb.dir("rootfs/run/", 0o755);
    tb.file("rootfs/run/ok", b"ok", 0o644, 0, 0);
    import_bytes(&store, &tb.gz()).unwrap();
}

fn bad_request_in(store: &Store, data: &[u8], want: &str) {
    let before = listing(store.dir());
    match import_bytes(store, data) {
        Err(Error::BadRequest(m)) => assert!(m.contains(want), "{m} !~ {want}"),
        other => panic!("want BadRequest ~ {want}: {other:?}"),
    }
    assert_eq!(listing(store.dir()), before);
}

#[test]
fn concurrent_imports_dedupe() {
    let tmp = Tmp::new("concurrent");
    let dir = tmp.path("store");
    let data = small_image(7);
    let results: Vec<image::Result<api::Image>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (dir, data) = (&dir, &data);
                s.spawn(move || import_bytes(&Store::open(dir).unwrap(), data))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Conflict(_))))
        .count();
    assert_eq!((ok, conflicts), (1, 3), "{results:?}");
    assert_eq!(listing(&dir).len(), 3);
}
