//! `GET /1.0/resources`: the host's hardware, read from /proc and /sys the way LXD's
//! `lxd/resources` reads it. Every reader takes the root of the tree to read (`/` on the host,
//! a fake tree in tests). Nothing is guessed: what cannot be read stays zero or empty.
//!
//! One file per part of the answer (`cpu`, `memory`, `pci` with the GPUs, `net`, `storage`,
//! `usb`, `system`), all reading sysfs through `sysfs` ([`sysfs::Attrs`], [`sysfs::Device`]).

mod cpu;
mod memory;
mod net;
mod pci;
mod storage;
mod sysfs;
mod system;
mod usb;

use std::io;
use std::path::Path;

use super::response::{self, Error, Result};
use crate::api::resources::*;
use crate::http::Response;
use sysfs::IdDbs;

/// The handler.
pub fn get() -> Result<Response> {
    let res = read_host().map_err(|e| Error::Internal(format!("Failed to read resources: {e}")))?;
    Ok(response::sync(&res))
}

/// Everything, from the running host.
fn read_host() -> io::Result<Resources> {
    let u = nix::sys::utsname::uname().map_err(io::Error::from)?;
    read(
        Path::new("/"),
        &u.machine().to_string_lossy(),
        &u.release().to_string_lossy(),
    )
}

/// Everything, from the tree under `root`. `machine` and `release` are `uname -m` and `uname -r`
/// (the architecture, and the version LXD gives in-tree drivers).
fn read(root: &Path, machine: &str, release: &str) -> io::Result<Resources> {
    let ids = IdDbs::load(root);
    Ok(Resources {
        cpu: cpu::cpu(root, machine)?,
        memory: memory::memory(root)?,
        gpu: pci::gpu(root, release, &ids),
        network: net::network(root, release, &ids),
        storage: storage::storage(root),
        usb: usb::usb(root, release, &ids),
        pci: pci::pci(root, release, &ids),
        system: system::system(root),
    })
}

#[cfg(test)]
mod tests;
