//! Instance backups (`/1.0/instances/NAME/backups`) and creating an instance from one, in LXD
//! 5.0.2's tarball format so a backup moves between bivy and LXD both ways.
//!
//! The tarball (`lxd/backup.go`, `lxd/storage/drivers/generic_vfs.go` genericVFSBackupVolume):
//! `backup/index.yaml` first (name, backend, pool, snapshots, `optimized`, `type`, and `config`,
//! backup.yaml's content), then `backup/snapshots/<name>/` for each snapshot (oldest first,
//! unless instance-only), then `backup/container/` (`backup.yaml`, `metadata.yaml`, `rootfs/`,
//! `templates/`). Members keep numeric owners, modes, times, xattrs (PAX `SCHILY.xattr.*`), hard
//! links, symlinks and fifos; compression is the request's `compression_algorithm` (gzip by
//! default, or the server's `backups.compression_algorithm`). Owners are the container's own ids: files shifted on disk are unshifted as they are
//! written (file capabilities and ACLs too) and the config says `volatile.last_state.idmap: []`.
//! LXD 5.0.2 writes on-disk ids (its tar writer's unshift looks for names starting with
//! `rootfs`, which backup members never do) with the map they are in as the config's
//! `volatile.last_state.idmap`: an import reads that map and unshifts with it, so both kinds
//! restore into any map.
//!
//! A backup's tarball is `$BIVY_DIR/backups/<uuid>` (written beside as `<uuid>.tmp`, synced,
//! renamed, then recorded in the instance's record); deleted with its record, with the instance,
//! when it expires (`expires_at`, checked by the daemon's minute task), and at start when no
//! record names it (a crash between the rename and the record).
//!
//! Optimized backups (btrfs pools only, as LXD's other drivers make plain ones): each volume a
//! full `btrfs send` stream (`backup/snapshots/<name>.bin`, `backup/container.bin`) with its
//! files as on disk and the config's map saying which ids those are; restored with
//! `btrfs receive -C` into a directory of the pool.
//!
//! An import unpacks with the image unpacker's rules (no path outside the volume, no symlink
//! followed, hard links only to files already unpacked, the unpack size limit) into new volumes
//! made through `create::create_now`, whose undo list removes everything on any failure.
//!
//! The files: `records` the backups' records and tarballs (names, expiry, rename, delete,
//! orphans), `export` writes a tarball, `index` is LXD's index.yaml and backup.yaml, `import`
//! makes an instance from a tarball. This one only says what they offer.

mod export;
mod import;
mod index;
mod records;
mod volume;

pub use export::create_backup;
pub use import::{import, plan, Plan};
pub use index::{read_info, BackupConfig, Container, Info, Snapshot};
pub use records::{
    check_create, check_name, delete, delete_files, dir, ensure_dir, file, find, next_name,
    prune_expired, remove_orphans, rename, to_api, url,
};
pub use volume::{
    volume_check_create, volume_create, volume_delete, volume_find, volume_import,
    volume_prune_expired, volume_read_info, volume_rename, volume_to_api, volume_url, VolumeInfo,
};
