//! The `api_extensions` this server advertises. Each name promises behaviour that is implemented;
//! append only when the behaviour lands (LXD's `shared/version/api.go`).

/// Extensions in LXD's order.
pub const API_EXTENSIONS: &[&str] = &[
    "etag",
    "patch",
    "directory_manipulation",
    "file_delete",
    "file_append",
    "file_symlinks",
    "entity_description",
    "network",
    "storage",
    "profile_usedby",
    "container_exec_signal_handling",
    "container_exec_user_group_cwd",
    "id_map",
    "id_map_base",
    "instances",
    "api_filtering",
    "container_full",
    "instance_get_full",
    "file_get_symlink",
    "image_compression_algorithm",
    "image_create_aliases",
    "console",
    "container_edit_metadata",
];
