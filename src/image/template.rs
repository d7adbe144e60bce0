//! The pongo2 subset that real LXD image templates use.

use crate::api;

/// What a template sees.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub name: String,
    pub architecture: String,
    pub privileged: bool,
    pub ephemeral: bool,
    /// The instance's expanded config.
    pub config: api::StringMap,
    pub devices: api::Devices,
}
