//! The one error type the agent's layers hand upwards: what failed, in words that name the
//! place (a file, a group, a service, a Consul answer), whether trying again may help, and
//! the exit code a command ends with (78 for a bad config).
//!
//! Adapters keep a typed error where their callers match on it (`consul::ConsulError`,
//! `net::NetError`, the config's `Diagnostic`s); each converts into this one at the
//! boundary, and that conversion is the one place deciding whether it is worth a retry.
//! Pure parsers (durations, addresses, JSON) return a plain message, which the config
//! reader places at its `file:line:col`.

use std::fmt;

/// sysexits EX_CONFIG: the exit code for a bad config, as `validate` promises.
pub const EX_CONFIG: u8 = 78;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The config is wrong; nothing was changed. Exit 78.
    Config,
    /// Something outside did not answer or is not ready yet (Consul down or restarting, a
    /// 5xx, ACL replication lag, a registration on its way): waiting may help.
    Temporary,
    /// Anything else: trying again fails the same way until something changes.
    Permanent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, message)
    }

    pub fn temporary(message: impl Into<String>) -> Error {
        Error::new(Kind::Temporary, message)
    }

    pub fn permanent(message: impl Into<String>) -> Error {
        Error::new(Kind::Permanent, message)
    }

    fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == Kind::Temporary
    }

    /// The exit code a command ends with when this error stops it.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Config => EX_CONFIG,
            Kind::Temporary | Kind::Permanent => 1,
        }
    }

    /// The same error, said of `what` ("group api: …").
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A bare message: nothing says waiting would help.
impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::permanent(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::permanent(message)
    }
}

/// A system call's failure: temporary only when the call itself says so.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
        let kind = match e.kind() {
            Interrupted | TimedOut | WouldBlock => Kind::Temporary,
            _ => Kind::Permanent,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Error {
        std::io::Error::from(e).into()
    }
}

/// Config diagnostics, one per line, each with its `file:line:col`.
impl From<Vec<crate::config::Diagnostic>> for Error {
    fn from(diagnostics: Vec<crate::config::Diagnostic>) -> Error {
        let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        Error::config(lines.join("\n"))
    }
}

/// `context` for any result whose error converts into ours.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    /// `context` with the words built only on failure.
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_reads_outside_in_and_keeps_the_kind() {
        let e = Error::temporary("connection refused")
            .context("Consul registration")
            .context("group api");
        assert_eq!(
            e.to_string(),
            "group api: Consul registration: connection refused"
        );
        assert!(e.is_retryable());
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_bad_config_exits_78_and_is_not_retried() {
        let e = Error::config("outpost.toml:3:1: unknown key");
        assert_eq!(e.exit_code(), 78);
        assert!(!e.is_retryable());
    }

    #[test]
    fn io_errors_are_temporary_only_when_the_call_says_so() {
        let timed_out: Error = std::io::Error::from(std::io::ErrorKind::TimedOut).into();
        let denied: Error = std::io::Error::from(std::io::ErrorKind::PermissionDenied).into();
        assert!(timed_out.is_retryable());
        assert!(!denied.is_retryable());
        let read: Result<()> = Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            .with_context(|| format!("cannot read {}", "/etc/outpost/outpost.toml"));
        let read = read.unwrap_err();
        assert!(
            read.message()
                .starts_with("cannot read /etc/outpost/outpost.toml: ")
        );
        assert_eq!(read.kind(), Kind::Permanent);
    }
}
