//! The value types of the configuration (sizes, listening addresses, enums) and their
//! parsing from the text of flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use kvtier_core::error::{Error, Result};

/// A size in bytes: an integer, or a string with a unit (`"1GiB"`, `"512KiB"`, `"1.5GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `2MiB`, `512KiB`, `1GiB`, `4096`, `1.5GB` ([`kvtier_core::size::parse_size`]).
    pub fn parse(s: &str) -> Result<ByteSize> {
        kvtier_core::size::parse_size(s).map(ByteSize)
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if v != 0 && v % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", v >> shift);
            }
        }
        write!(f, "{v}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"2MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; a size is 0 or more")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A listening address, or `none` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptAddr(pub Option<SocketAddr>);

impl OptAddr {
    fn parse(s: &str) -> Result<OptAddr> {
        match s.trim() {
            "none" => Ok(OptAddr(None)),
            t => t.parse().map(|a| OptAddr(Some(a))).map_err(|_| {
                Error::invalid(format!(
                    "`{s}` is not an address such as 127.0.0.1:9464 (or `none`)"
                ))
            }),
        }
    }
}

impl Serialize for OptAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for OptAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OptAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Transport from the agent to pool servers: the pool client's own.
pub use kvtier_pool::client::Transport as PoolTransport;

/// Values from text (flags and environment variables).
pub(super) trait FromText: Sized {
    fn from_text(s: &str) -> Result<Self>;
}

impl FromText for ByteSize {
    fn from_text(s: &str) -> Result<Self> {
        ByteSize::parse(s)
    }
}

impl FromText for OptAddr {
    fn from_text(s: &str) -> Result<Self> {
        OptAddr::parse(s)
    }
}

impl FromText for SocketAddr {
    fn from_text(s: &str) -> Result<Self> {
        s.trim()
            .parse()
            .map_err(|_| Error::invalid(format!("`{s}` is not an address such as 0.0.0.0:7070")))
    }
}

impl FromText for bool {
    fn from_text(s: &str) -> Result<Self> {
        match s.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(Error::invalid(format!("`{s}` is not `true` or `false`"))),
        }
    }
}

macro_rules! from_text_number {
    ($($t:ty),*) => {$(
        impl FromText for $t {
            fn from_text(s: &str) -> Result<Self> {
                let t = s.trim().replace('_', "");
                if t.starts_with('-') {
                    return Err(Error::invalid(format!("`{s}` is negative; expected a whole number, 0 or more")));
                }
                t.parse().map_err(|_| Error::invalid(format!("`{s}` is not a whole number")))
            }
        }
    )*};
}
from_text_number!(usize, u64);

impl FromText for String {
    fn from_text(s: &str) -> Result<Self> {
        Ok(s.to_string())
    }
}

impl FromText for PathBuf {
    fn from_text(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid("a path cannot be empty"));
        }
        Ok(PathBuf::from(s))
    }
}

/// An empty text unsets an optional key.
impl FromText for Option<PathBuf> {
    fn from_text(s: &str) -> Result<Self> {
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }
}

/// Comma-separated; an empty text is an empty list.
impl FromText for Vec<String> {
    fn from_text(s: &str) -> Result<Self> {
        Ok(s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect())
    }
}

impl FromText for LogFormat {
    fn from_text(s: &str) -> Result<Self> {
        match s.trim() {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(Error::invalid(format!("`{s}` is not `human` or `json`"))),
        }
    }
}

impl FromText for PoolTransport {
    fn from_text(s: &str) -> Result<Self> {
        PoolTransport::parse(s.trim())
            .map_err(|_| Error::invalid(format!("`{s}` is not `tcp` or `ucx`")))
    }
}
