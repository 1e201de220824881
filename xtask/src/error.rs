//! One error type for the whole tool: every failure ends as a one-line message
//! for a person, so a message string is all an error needs to carry.

use std::fmt;

/// A failure, already worded for the person running `cargo xtask`.
#[derive(Debug)]
pub struct Error {
    message: String,
    kind: Kind,
}

/// What kind of failure: it decides the exit status (README "Exit status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The work failed (build, QEMU, a test): exit 1.
    Failed,
    /// The command line cannot be acted on (unknown command or flag, bad
    /// value, flags that do not go together, a choice this host cannot
    /// honour): exit 2, before anything is built.
    Usage,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            kind: Kind::Failed,
        }
    }

    /// A bad command line (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            kind: Kind::Usage,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Failed => 1,
            Kind::Usage => 2,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::new(error.to_string())
    }
}

/// Returns early with an [`Error`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::new(format!($($arg)*)))
    };
}

/// Returns early with a usage [`Error`] (exit 2) built from a format string.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::Error::usage(format!($($arg)*)))
    };
}

/// Adds what was being done to an I/O error, since a bare "No such file or
/// directory" does not say which file.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::new(format!("{}: {e}", what())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_failures_1() {
        assert_eq!(Error::usage("bad flag").exit_code(), 2);
        assert_eq!(Error::new("build failed").exit_code(), 1);
        let io: Error = std::io::Error::other("disk").into();
        assert_eq!(io.exit_code(), 1);
    }
}
