//! [`HostArenaConfig`]: the arena's size, object size, name and policy, with its defaults and
//! checks.

use crate::block::record_len;
use crate::error::{Error, Result};
use crate::policy::PolicyKind;

/// Configuration of a [`HostArena`](super::HostArena).
#[derive(Debug, Clone)]
pub struct HostArenaConfig {
    /// Bytes of host memory to reserve. Rounded down to whole slots; at least one slot.
    /// Default: `1 GiB`.
    pub capacity_bytes: u64,
    /// Payload bytes of every object (the layout's object size). Default: `2 MiB`.
    pub payload_len: usize,
    /// Name of the memfd (visible in `/proc/PID/fd`). Default: `kvtier-arena`.
    pub name: String,
    /// Eviction policy: [`PolicyKind::HitDensity`] learns which blocks come back and evicts
    /// chain tails first when commits name the parent (see [`WriteSlot::commit_with`](super::WriteSlot::commit_with)), or
    /// `Lru`. Default: `HitDensity`.
    pub policy: PolicyKind,
}

impl Default for HostArenaConfig {
    fn default() -> Self {
        HostArenaConfig {
            capacity_bytes: 1 << 30,
            payload_len: 2 << 20,
            name: "kvtier-arena".into(),
            policy: PolicyKind::default(),
        }
    }
}

impl HostArenaConfig {
    /// Checks the values; the error names the bad field (see [`Error::bad_field`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |field, msg: String| Err(Error::bad_field("host arena", field, msg));
        if self.payload_len == 0 || self.payload_len as u64 > crate::block::MAX_PAYLOAD_LEN {
            return bad(
                "payload_len",
                format!("{} bytes is outside 1 byte to 1GiB", self.payload_len),
            );
        }
        let slot = record_len(self.payload_len) as u64;
        let nslots = self.capacity_bytes / slot;
        if nslots == 0 {
            return bad(
                "capacity_bytes",
                format!(
                    "{} bytes holds no {}-byte object; at least {slot} bytes (one slot)",
                    self.capacity_bytes, self.payload_len
                ),
            );
        }
        if nslots > u32::MAX as u64 {
            return bad(
                "capacity_bytes",
                format!(
                    "{} bytes gives {nslots} slots; at most 2^32-1",
                    self.capacity_bytes
                ),
            );
        }
        if self.name.contains('\0') {
            return bad("name", "contains NUL".into());
        }
        Ok(())
    }

    /// A config whose slots hold objects of `layout` (payload = the layout's object size).
    pub fn for_layout(layout: &crate::layout::KvLayout, capacity_bytes: u64) -> Self {
        HostArenaConfig {
            capacity_bytes,
            payload_len: layout.object_len() as usize,
            ..Default::default()
        }
    }
}
