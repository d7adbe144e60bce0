//! A typed client of the REST API over the unix socket.
