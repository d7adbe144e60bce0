//! Small in-house helpers instead of helper crates.

pub mod fs;
pub mod time;
