//! `validate()` of each section: what only the file knows (one pool chosen, no empty paths,
//! keys unused in the chosen mode still sane), then the components' own checks
//! ([`super::compose`]). The first bad value is an error naming its key and what is allowed.

use super::{field_error, AgentSection, LogSection, PoolSection};
use kvtier_core::error::Result;

impl LogSection {
    /// Checks the filter; the error names the field.
    pub fn validate(&self) -> Result<()> {
        tracing_subscriber::EnvFilter::try_new(&self.level).map_err(|e| {
            field_error(
                "log.level",
                format!("`{}` is not a level (error, warn, info, debug, trace) or a list of tracing directives: {e}", self.level),
            )
        })?;
        Ok(())
    }
}

impl AgentSection {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        not_empty(
            "agent.socket",
            self.socket.as_deref(),
            "leave it out for the default",
        )?;
        not_empty("agent.data", Some(&self.data), "name a directory")?;
        not_empty(
            "agent.pool_secret_file",
            self.pool_secret_file.as_deref(),
            "leave it out for none",
        )?;
        not_empty(
            "agent.shared_dir",
            self.shared_dir.as_deref(),
            "leave it out for none",
        )?;
        let chosen: Vec<&str> = [
            (self.no_pool, "agent.no_pool"),
            (
                !self.pool_servers.is_empty() || !self.etcd.is_empty(),
                "agent.pool_servers or agent.etcd",
            ),
            (self.shared_dir.is_some(), "agent.shared_dir"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if chosen.len() > 1 {
            return Err(field_error(
                chosen[1],
                format!("conflicts with {}: choose one pool (none, servers, a shared directory, or the embedded one)", chosen[0]),
            ));
        }
        // The pool client checks these when servers are listed; a file that sets them
        // without servers is refused all the same, rather than carrying a value that would
        // fail the day servers are added.
        if self.replication == 0 {
            return Err(field_error("agent.replication", "0; at least 1"));
        }
        if self.pool_timeout_ms == 0 {
            return Err(field_error("agent.pool_timeout_ms", "0; at least 1"));
        }
        self.validate_components()
    }
}

impl PoolSection {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        not_empty("pool.data", Some(&self.data), "name a directory")?;
        not_empty(
            "pool.secret_file",
            self.secret_file.as_deref(),
            "leave it out for none",
        )?;
        self.validate_components()
    }
}

/// Refuses an empty path (an empty string in a file, the environment or a flag) for `field`.
fn not_empty(field: &str, path: Option<&std::path::Path>, hint: &str) -> Result<()> {
    if path.is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(field_error(field, format!("an empty path; {hint}")));
    }
    Ok(())
}
