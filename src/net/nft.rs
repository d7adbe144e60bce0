//! (being written) see src/net/mod.rs.
