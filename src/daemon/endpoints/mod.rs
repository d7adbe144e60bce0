//! The REST endpoints, one file per resource. Each parses its requests, calls the model
//! (`crate::instance`) and renders LXD's responses; none imports another (the routes table in
//! `routes.rs` is the only place that knows them all).

pub mod backups;
pub mod certificates;
pub mod exec;
pub mod files;
pub mod images;
pub mod instance_create;
pub mod instance_meta;
pub mod instances;
pub mod networks;
pub mod operations;
pub mod profiles;
pub mod server;
pub mod snapshots;
pub mod storage;
pub mod volume_backups;
pub mod volumes;
