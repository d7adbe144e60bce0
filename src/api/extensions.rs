//! The `api_extensions` this server advertises. Each name promises the behaviour LXD documents for
//! it (`doc/api-extensions.md`); add a name only when that behaviour lands (LXD's
//! `shared/version/api.go`). Clients gate on these names: pylxd skips its network, project and
//! cluster tests, and lxc refuses `network`/`project` commands, when a name is missing.
//!
//! `network` is claimed for managed bridges (`instance::networks`, `instance::bridges`) with
//! `network_leases`, `network_state`, `network_hwaddr`, `network_dhcp_expiry` and
//! `instance_nic_network` (`nic` devices with `network=`).
//! Left out on purpose: `projects` (one project, `default`), `warnings` (the
//! list is served, but bivy does not record warnings), `instance_bulk_state_change`.
//! `storage` is claimed for pools and volumes (custom filesystem volumes on `dir` and `btrfs`:
//! create, show, edit, rename, delete, attach as disk devices); `storage_api_volume_rename` for
//! renaming them; `storage_api_local_volume_handling` for copies and moves on this server
//! (within a pool and between pools); `storage_api_volume_snapshots`,
//! `custom_volume_snapshot_expiry` and `volume_snapshot_scheduling` for custom volume
//! snapshots; `storage_volume_state` (and `_total`) for a custom volume's usage;
//! `custom_volume_backup` for custom volume backups in LXD's tarball format (plain ones, and
//! optimized ones of btrfs send streams on btrfs pools);
//! `storage_api_remote_volume_handling` for copies and moves between servers
//! (`migration::volume`, pull and push); `custom_volume_refresh` for `copy --refresh` of a
//! volume, on this server and between servers.
//! `instances_state_selective_recursion` (from LXD 6.7): `recursion=2;fields=state.disk,...`
//! and `&fields=` leave the state's disk and network out unless named.
//! `instance_pool_move`: `pool` in `POST /1.0/instances/NAME` with `migration: true` moves the
//! instance to that pool on this server (`lxc move c1 [c2] -s POOL`; `instance::moves`).
//! `instance_create_start`: `start: true` in `POST /1.0/instances` starts the new instance in
//! the create's operation (`bivy launch` and newer `lxc launch` send it: one operation, not two).
//! `container_backup` is claimed for instance backups in LXD's tarball format
//! (`instance::backups`) with `backup_compression_algorithm` (the request's
//! `compression_algorithm`) and `backup_override_name` and `container_backup_override_pool`
//! (`X-LXD-name` and `X-LXD-pool` on a restore), `backup_compression` (the server key
//! `backups.compression_algorithm`); optimized backups are btrfs send streams on btrfs pools.
//! `tests/conformance.rs` checks each claim against the routes.

/// Extensions in LXD's order.
pub const API_EXTENSIONS: &[&str] = &[
    "etag",
    "patch",
    "directory_manipulation",
    "file_delete",
    "file_append",
    "network_dhcp_expiry",
    "file_symlinks",
    "container_push_target",
    "container_incremental_copy",
    "entity_description",
    "storage",
    "network",
    "profile_usedby",
    "container_push",
    "certificate_update",
    "container_exec_signal_handling",
    "container_exec_user_group_cwd",
    "id_map",
    "image_force_refresh",
    "id_map_base",
    "instances",
    "api_filtering",
    "container_backup",
    "container_backup_override_pool",
    "custom_volume_backup",
    "container_full",
    "backup_compression",
    "instance_get_full",
    "file_get_symlink",
    "image_compression_algorithm",
    "image_create_aliases",
    "console",
    "container_edit_metadata",
    "container_only_migration",
    "snapshot_scheduling",
    "snapshot_schedule_aliases",
    "snapshot_expiry",
    "snapshot_expiry_creation",
    "server_supported_storage_drivers",
    "resources",
    "storage_api_volume_rename",
    "storage_api_local_volume_handling",
    "storage_api_remote_volume_handling",
    "storage_api_volume_snapshots",
    "custom_volume_snapshot_expiry",
    "volume_snapshot_scheduling",
    "storage_volume_state",
    "storage_volume_state_total",
    "resources_v2",
    "backup_compression_algorithm",
    "backup_override_name",
    "instance_pool_move",
    "certificate_token",
    "network_leases",
    "network_state",
    "network_hwaddr",
    "instance_nic_network",
    "remote_token_expiry",
    "custom_volume_refresh",
    "instance_create_start",
    "instances_state_selective_recursion",
];
