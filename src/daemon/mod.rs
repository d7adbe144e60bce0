//! The REST server.
