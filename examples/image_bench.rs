//! Image import and unpack throughput (a benchmark, not a test: it measures, it asserts
//! nothing about speed).
//!
//! `cargo run --release --example image_bench -- /path/to/rootfs-dir` tars that directory with
//! gzip, xz, zstd and bzip2 under /var/tmp, imports each (which decodes and checks the whole
//! tarball) and, as root, unpacks it. `BIVY_IMAGE_BENCH_ONLY=xz,zstd` limits the formats.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use bivy::api;
use bivy::image::{self, ImportOpts, Store, UnpackOpts, Upload};

/// A scratch directory under /var/tmp (on disk), removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = PathBuf::from(format!(
            "/var/tmp/bivy-image-bench-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("scratch dir");
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

fn sh(cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn import_file(store: &Store, file: &Path, name: &str) -> image::Result<api::Image> {
    let mut f = File::open(file).expect("open image");
    store.import(
        Upload::Unified(&mut f),
        &ImportOpts {
            filename: name.into(),
            ..Default::default()
        },
    )
}

fn zstd_encoder(out: &mut File) -> zstd::stream::write::Encoder<'static, &mut File> {
    zstd::stream::write::Encoder::new(out, 3).expect("zstd encoder")
}

fn main() {
    let Some(src) = std::env::args_os().nth(1) else {
        eprintln!("usage: cargo run --release --example image_bench -- ROOTFS_DIR");
        std::process::exit(2);
    };
    let tmp = Tmp::new("bench");
    let src = PathBuf::from(src);
    let b = tmp.path("b");
    fs::create_dir_all(&b).unwrap();
    fs::write(
        b.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\n",
    )
    .unwrap();
    let raw = tmp.path("raw.tar");
    sh(&format!(
        "tar -C '{}' -cf '{}' metadata.yaml && tar -C '{}' --transform 's,^\\.,rootfs,' -rf '{}' .",
        b.display(),
        raw.display(),
        src.display(),
        raw.display()
    ));
    let raw_len = fs::metadata(&raw).unwrap().len();
    let only = std::env::var("BIVY_IMAGE_BENCH_ONLY").unwrap_or_default();
    for (name, cmd) in [
        ("gzip", "gzip -6"),
        ("xz", "xz -6 -T2"),
        ("zstd", "zstd -3 -q"),
        ("bzip2", "bzip2 -9"),
    ] {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        let f = tmp.path(&format!("img.{name}"));
        if name == "zstd" && Command::new("zstd").arg("--version").output().is_err() {
            let mut out = File::create(&f).unwrap();
            let mut e = zstd_encoder(&mut out);
            std::io::copy(&mut File::open(&raw).unwrap(), &mut e).unwrap();
            e.finish().unwrap();
        } else {
            sh(&format!("{cmd} -c '{}' > '{}'", raw.display(), f.display()));
        }
        let store = Store::open(&tmp.path(&format!("store-{name}"))).unwrap();
        let t = std::time::Instant::now();
        let img = import_file(&store, &f, name).unwrap();
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "BENCH import {name}: {:.1} MB compressed, {:.1} MB tar, {:.2} s, {:.1} MB/s of tar",
            fs::metadata(&f).unwrap().len() as f64 / 1e6,
            raw_len as f64 / 1e6,
            s,
            raw_len as f64 / 1e6 / s
        );
        fs::remove_file(&f).unwrap();
        if is_root() {
            let t = std::time::Instant::now();
            let (r, tp) = (
                tmp.path(&format!("u-{name}")),
                tmp.path(&format!("ut-{name}")),
            );
            store
                .unpack(&img.fingerprint, &r, &tp, &UnpackOpts::default())
                .unwrap();
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "BENCH unpack {name}: {:.2} s, {:.1} MB/s of tar",
                s,
                raw_len as f64 / 1e6 / s
            );
            fs::remove_dir_all(&r).unwrap();
        }
        fs::remove_dir_all(store.dir()).unwrap();
    }
}
