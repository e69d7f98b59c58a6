//! The one error type of kvtier: a kind, a context trail and an optional source.
//!
//! Errors are matched by [`ErrorKind`], never by their text. Each boundary (gRPC, the C ABI)
//! maps the kind once. A cache miss is not an error: stores return `Option`/`Lookup` values.

use std::fmt;

/// What went wrong, in a small set of kinds that callers can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named thing does not exist (a directory, a segment, a registered layout).
    NotFound,
    /// A capacity bound was reached and nothing could be evicted to make room.
    NoSpace,
    /// Bytes failed their magic, version or checksum check.
    Corrupt,
    /// The caller passed a value that is out of range or inconsistent.
    InvalidArgument,
    /// A peer or resource is not reachable right now; retry later or treat as a miss.
    Unavailable,
    /// A deadline passed.
    Timeout,
    /// The operating system refused: permission, read-only file system, ...
    PermissionDenied,
    /// Any other I/O failure.
    Io,
}

impl ErrorKind {
    /// A stable lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Io => "io",
        }
    }
}

/// kvtier's error: `kind` + a human message + `(key, value)` context + the underlying cause.
///
/// Shown as `message [key: value]...: source`.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", Trail(.context, .source.as_deref()))]
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The ` [key: value]...: source` part of an error's text.
struct Trail<'a>(
    &'a [(&'static str, String)],
    Option<&'a (dyn std::error::Error + Send + Sync + 'static)>,
);

impl fmt::Display for Trail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in self.0 {
            write!(f, " [{k}: {v}]")?;
        }
        if let Some(src) = self.1 {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message that says what is wrong and, where it helps, what to do.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Shorthand for [`ErrorKind::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A bad configuration value: `message` says what is wrong with it (without naming it);
    /// the context names the configuration (`config`: `segment store`) and its `field`
    /// (`segment_bytes`), so that a layer with other names for the fields (the TOML file's
    /// `pool.segment_bytes`) can say it in its own words.
    pub fn bad_field(
        config: &'static str,
        field: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::invalid(message)
            .with_context("config", config)
            .with_context("field", field)
    }

    /// Shorthand for [`ErrorKind::Corrupt`].
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for [`ErrorKind::NoSpace`].
    pub fn no_space(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NoSpace, message)
    }

    /// Wraps an I/O error, choosing the kind from the OS error (ENOSPC is `NoSpace`, EACCES/EROFS
    /// are `PermissionDenied`, ENOENT is `NotFound`).
    pub fn io(message: impl Into<String>, err: std::io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                ErrorKind::PermissionDenied
            }
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => ErrorKind::NotFound,
            _ => match err.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
                _ => ErrorKind::Io,
            },
        };
        Error {
            kind,
            message: message.into(),
            context: Vec::new(),
            source: Some(Box::new(err)),
        }
    }

    /// Adds a `(key, value)` pair that locates the failure (a path, a key, a field).
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The value of a context key, if present.
    pub fn context(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_and_keep_context() {
        let e = Error::io(
            "write segment",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        )
        .with_context("path", "/data/seg-1");
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert_eq!(e.context("path"), Some("/data/seg-1"));
        let text = e.to_string();
        assert!(
            text.starts_with("write segment [path: /data/seg-1]: "),
            "{text}"
        );
        let ro = Error::io("open", std::io::Error::from_raw_os_error(libc::EROFS));
        assert_eq!(ro.kind(), ErrorKind::PermissionDenied);
        assert!(std::error::Error::source(&ro).is_some());
    }
}
