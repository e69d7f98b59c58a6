//! `validate()` of each section: the first bad value is an error naming its field and what is
//! allowed.

use super::{field_error, AgentSection, ByteSize, LogSection, PoolSection, PoolTransport};
use kvtier_core::error::Result;

/// Largest record the pool's data plane carries (its `max_body`).
const MAX_OBJECT: u64 = 64 << 20;

fn check_segment(field: &str, seg: ByteSize) -> Result<()> {
    if seg.0 % 4096 != 0 || seg.0 < 64 << 10 {
        return Err(field_error(
            field,
            format!("{seg} is not a multiple of 4 KiB of at least 64 KiB"),
        ));
    }
    Ok(())
}

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
        let obj = self.object_bytes.0;
        if obj == 0 || obj > MAX_OBJECT {
            return Err(field_error(
                "agent.object_bytes",
                format!("{} is outside 1 byte to 64MiB", self.object_bytes),
            ));
        }
        let slot = kvtier_core::block::record_len(obj as usize) as u64;
        if self.arena_bytes.0 < slot {
            return Err(field_error(
                "agent.arena_bytes",
                format!(
                    "{} holds no {}-byte object; at least {} ({} per slot)",
                    self.arena_bytes,
                    obj,
                    ByteSize(slot),
                    slot
                ),
            ));
        }
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
            (!self.pool_servers.is_empty(), "agent.pool_servers"),
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
        if self.pool_servers.is_empty() && self.shared_dir.is_none() && !self.no_pool {
            check_segment("agent.segment_bytes", self.segment_bytes)?;
            if self.pool_bytes.0 < 2 * self.segment_bytes.0 {
                return Err(field_error(
                    "agent.pool_bytes",
                    format!(
                        "{} holds fewer than two segments of agent.segment_bytes = {}",
                        self.pool_bytes, self.segment_bytes
                    ),
                ));
            }
            if self.segment_bytes.0 < slot {
                return Err(field_error(
                    "agent.segment_bytes",
                    format!("{} holds no {}-byte object", self.segment_bytes, obj),
                ));
            }
        }
        if self.shared_dir.is_some() && self.pool_bytes.0 == 0 {
            return Err(field_error(
                "agent.pool_bytes",
                "0; the shared directory needs room",
            ));
        }
        for (i, m) in self.pool_servers.iter().enumerate() {
            kvtier_pool::placement::Member::parse(m).map_err(|e| {
                field_error(
                    format!("agent.pool_servers[{i}]"),
                    format!("`{m}`: {}", e.message()),
                )
            })?;
        }
        if self.replication == 0 {
            return Err(field_error("agent.replication", "0; at least 1"));
        }
        if !self.pool_servers.is_empty() && self.replication > self.pool_servers.len() {
            return Err(field_error(
                "agent.replication",
                format!(
                    "{} copies on {} server(s); at most as many as agent.pool_servers",
                    self.replication,
                    self.pool_servers.len()
                ),
            ));
        }
        if self.pool_transport == PoolTransport::Ucx && cfg!(not(feature = "ucx")) {
            return Err(field_error(
                "agent.pool_transport",
                "`ucx`, but this kvtier was built without feature `ucx`; use `tcp`",
            ));
        }
        if self.pool_timeout_ms == 0 {
            return Err(field_error("agent.pool_timeout_ms", "0; at least 1"));
        }
        if self.write_queue == 0 {
            return Err(field_error("agent.write_queue", "0; at least 1"));
        }
        Ok(())
    }
}

impl PoolSection {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_segment("pool.segment_bytes", self.segment_bytes)?;
        if self.capacity.0 == 0 {
            return Err(field_error("pool.capacity", "0; a pool needs room"));
        }
        if self.capacity.0 < 2 * self.segment_bytes.0 {
            return Err(field_error(
                "pool.capacity",
                format!(
                    "{} holds fewer than two segments of pool.segment_bytes = {}",
                    self.capacity, self.segment_bytes
                ),
            ));
        }
        let stall = std::time::Duration::from_millis(self.stall_timeout_ms);
        kvtier_pool::server::check_streaming(self.stream_chunk.0 as usize, stall).map_err(|e| {
            let key = e.context("field").unwrap_or("stream_chunk");
            field_error(format!("pool.{key}"), e.message())
        })?;
        kvtier_core::tier::io::IoMode::parse(&self.io).map_err(|_| {
            field_error(
                "pool.io",
                format!("`{}` is not `auto`, `io_uring` or `psync`", self.io),
            )
        })?;
        if self.ucx && cfg!(not(feature = "ucx")) {
            return Err(field_error(
                "pool.ucx",
                "true, but this kvtier was built without feature `ucx`",
            ));
        }
        not_empty("pool.data", Some(&self.data), "name a directory")?;
        not_empty(
            "pool.secret_file",
            self.secret_file.as_deref(),
            "leave it out for none",
        )?;
        Ok(())
    }
}

/// Refuses an empty path (an empty string in a file, the environment or a flag) for `field`.
fn not_empty(field: &str, path: Option<&std::path::Path>, hint: &str) -> Result<()> {
    if path.is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(field_error(field, format!("an empty path; {hint}")));
    }
    Ok(())
}
