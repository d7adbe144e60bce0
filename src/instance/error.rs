//! The model's errors: one variant per kind of failure, each carrying what a caller needs.
//! They say nothing of HTTP; `daemon::response` is the one place that maps them to LXD's status
//! codes and messages.

use std::fmt;

/// Why an instance-level operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Input that cannot be accepted: a name, a body, a request that cannot be met as asked.
    Invalid(String),
    /// A config key whose value is refused, and why (the message names the key).
    InvalidConfig { key: String, reason: String },
    /// The thing asked for does not exist (the message says what, in LXD's words).
    NotFound(String),
    /// It exists already, is in use, or is in a state that refuses the request.
    Conflict(String),
    /// An instance is busy with another operation.
    Busy { name: String, what: String },
    /// An `If-Match` precondition (ETag) no longer holds.
    PreconditionFailed(String),
    /// More than the limit allows (an upload, a body).
    TooLarge(String),
    /// Refused for the caller.
    Forbidden(String),
    /// A feature bivy does not have yet (the message starts with "not supported yet: ").
    NotSupported(String),
    /// The host, the runtime or the disk failed; the message carries the failed step.
    Host(String),
}

impl Error {
    /// "not supported yet: WHAT".
    pub fn not_yet(what: &str) -> Error {
        Error::NotSupported(format!("not supported yet: {what}"))
    }

    /// A refused config value.
    pub fn config(key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// The message a user sees.
    pub fn message(&self) -> String {
        match self {
            Error::Invalid(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::PreconditionFailed(m)
            | Error::TooLarge(m)
            | Error::Forbidden(m)
            | Error::NotSupported(m)
            | Error::Host(m) => m.clone(),
            Error::InvalidConfig { reason, .. } => reason.clone(),
            Error::Busy { name, what } => {
                format!("Instance {name:?} is busy: {what} in progress")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

impl From<crate::image::Error> for Error {
    fn from(e: crate::image::Error) -> Error {
        use crate::image::Error as I;
        match e {
            I::NotFound(m) => Error::NotFound(m),
            I::Conflict(m) => Error::Conflict(m),
            I::BadRequest(m) => Error::Invalid(m),
            I::Internal(m) => Error::Host(m),
        }
    }
}

impl From<crate::runtime::Error> for Error {
    fn from(e: crate::runtime::Error) -> Error {
        if e.0.starts_with("not supported yet") {
            Error::NotSupported(e.0)
        } else {
            Error::Host(e.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            Error::not_yet("x").message(),
            "not supported yet: x".to_string()
        );
        let e = Error::config("limits.cpu", "Invalid value for \"limits.cpu\": 0");
        assert_eq!(e.to_string(), "Invalid value for \"limits.cpu\": 0");
        let b = Error::Busy {
            name: "c1".into(),
            what: "start".into(),
        };
        assert_eq!(b.to_string(), "Instance \"c1\" is busy: start in progress");
    }
}
