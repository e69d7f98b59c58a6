//! Who may use the agent. Every connection's peer is known by its kernel credentials
//! (`SO_PEERCRED`: uid, gid, pid; supplementary groups from `/proc`), never by what it says.
//!
//! Without tenants configured the agent is open to every process that can reach its sockets
//! (their modes: owner and group). With tenants ([`TenantRule`], `agent.tenants`), each names
//! the uids and gids that may use it; a peer allowed no tenant never gets the arena's
//! descriptor, and an engine asking for a tenant its peer may not use is refused. Sessions are
//! bound to the uid that opened them: another uid naming a session id is refused.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use kvtier_core::error::{Error, ErrorKind, Result};

/// Longest tenant name (names become metric labels).
pub const MAX_TENANT_NAME: usize = 64;

/// Longest engine name an engine may give (logs and the default tenant label).
pub const MAX_ENGINE_NAME: usize = 256;

/// The kernel's word on who is at the other end of a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective primary gid.
    pub gid: u32,
    /// Supplementary groups, where `/proc/PID/status` was readable (empty otherwise: a peer
    /// in another pid namespace is known by its primary gid only).
    pub groups: Vec<u32>,
    /// Process id in the agent's pid namespace (0 when the peer is not visible from it).
    pub pid: i32,
}

impl Peer {
    /// The credentials of a connected socket's peer (`SO_PEERCRED`); with `groups`, its
    /// supplementary groups too (read from `/proc`, needed only to match tenants' gids).
    pub fn of(sock: &UnixStream, groups: bool) -> io::Result<Peer> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: a valid socket, and an out buffer of the size given.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(if groups {
            Peer::new(cred.uid, cred.gid, cred.pid)
        } else {
            Peer {
                uid: cred.uid,
                gid: cred.gid,
                groups: Vec::new(),
                pid: cred.pid,
            }
        })
    }

    /// A peer from its credentials; reads its supplementary groups from `/proc` when `pid` is
    /// visible.
    pub fn new(uid: u32, gid: u32, pid: i32) -> Peer {
        let groups = if pid > 0 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                        g.split_whitespace()
                            .filter_map(|x| x.parse().ok())
                            .collect()
                    })
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Peer {
            uid,
            gid,
            groups,
            pid,
        }
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// A tenant's share of the arena: the slots its sessions may hold leased at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Bytes of the arena (rounded down to whole slots, at least one).
    Bytes(u64),
    /// Percent of the arena's slots (1 to 100).
    Percent(u32),
}

impl Share {
    /// The share in slots of an arena of `slots` slots of `slot_len` bytes (at least 1).
    pub fn slots(&self, slots: u32, slot_len: usize) -> usize {
        let n = match *self {
            Share::Bytes(b) => (b / slot_len.max(1) as u64) as usize,
            Share::Percent(p) => slots as usize * p as usize / 100,
        };
        n.clamp(1, slots.max(1) as usize)
    }
}

/// One tenant of `agent.tenants`: `"NAME: uid=1000 gid=2000 arena=25%"` (any number of `uid=`
/// and `gid=`; `arena=` a percent or a size such as `256MiB`, the slots its sessions may hold
/// at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRule {
    /// The tenant's name: letters, digits, `.`, `_`, `-`; at most [`MAX_TENANT_NAME`].
    pub name: String,
    /// Uids that may use it.
    pub uids: Vec<u32>,
    /// Gids (primary or supplementary) whose members may use it.
    pub gids: Vec<u32>,
    /// Its share of the arena; `None`: no bound beyond a session's.
    pub arena: Option<Share>,
}

/// Checks a tenant name; the error says what is wrong with it.
pub fn check_tenant_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_TENANT_NAME {
        return Err(format!(
            "tenant name `{name}` must be 1 to {MAX_TENANT_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "tenant name `{name}` has `{c}`: use letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

impl TenantRule {
    /// Parses `"NAME: uid=1000 gid=2000 arena=25%"`; the error names the part that is wrong.
    pub fn parse(text: &str) -> std::result::Result<TenantRule, String> {
        let (name, rest) = text.split_once(':').ok_or_else(|| {
            format!("`{text}` has no `:`; write `NAME: uid=UID gid=GID [arena=SHARE]`")
        })?;
        let name = name.trim();
        check_tenant_name(name)?;
        let mut rule = TenantRule {
            name: name.to_string(),
            uids: Vec::new(),
            gids: Vec::new(),
            arena: None,
        };
        for part in rest.split_whitespace() {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not `key=value` (uid, gid or arena)"))?;
            let id = || {
                v.parse::<u32>()
                    .map_err(|_| format!("`{part}`: `{v}` is not a numeric id"))
            };
            match k {
                "uid" => rule.uids.push(id()?),
                "gid" => rule.gids.push(id()?),
                "arena" => rule.arena = Some(parse_share(v).map_err(|e| format!("`{part}`: {e}"))?),
                _ => return Err(format!("`{part}`: unknown key `{k}` (uid, gid or arena)")),
            }
        }
        if rule.uids.is_empty() && rule.gids.is_empty() {
            return Err(format!(
                "tenant `{name}` allows nobody: give it a `uid=` or a `gid=`"
            ));
        }
        Ok(rule)
    }

    /// Whether `peer` may use this tenant.
    pub fn allows(&self, peer: &Peer) -> bool {
        self.uids.contains(&peer.uid) || self.gids.iter().any(|&g| peer.in_group(g))
    }
}

fn parse_share(v: &str) -> std::result::Result<Share, String> {
    if let Some(p) = v.strip_suffix('%') {
        return match p.parse::<u32>() {
            Ok(p @ 1..=100) => Ok(Share::Percent(p)),
            _ => Err(format!("`{v}` is not a percent from 1% to 100%")),
        };
    }
    kvtier_core::size::parse_size(v)
        .ok()
        .filter(|&b| b > 0)
        .map(Share::Bytes)
        .ok_or_else(|| format!("`{v}` is neither a percent (25%) nor a size (256MiB)"))
}

/// Why a peer was refused (the label of `kvtier_agent_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its uid and groups are allowed no tenant: it never gets the arena.
    NoTenant,
    /// It asked for a tenant it may not use.
    Tenant,
    /// It named a session, or a descriptor token, another uid owns.
    NotOwner,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 3] = [Refusal::NoTenant, Refusal::Tenant, Refusal::NotOwner];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoTenant => "no_tenant",
            Refusal::Tenant => "tenant",
            Refusal::NotOwner => "not_owner",
        }
    }
}

/// The tenants and who may use them; empty: open to every peer that reaches the sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The configured tenants.
    pub rules: Vec<TenantRule>,
}

impl Access {
    /// Whether no tenants are configured.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// Checks the rules: names distinct.
    pub fn validate(&self) -> Result<()> {
        for (i, r) in self.rules.iter().enumerate() {
            if self.rules[..i].iter().any(|o| o.name == r.name) {
                return Err(Error::bad_field(
                    "agent",
                    "tenants",
                    format!("tenant `{}` is configured twice", r.name),
                ));
            }
        }
        Ok(())
    }

    /// Whether `peer` may use some tenant (always, when open).
    pub fn admits(&self, peer: Option<&Peer>) -> bool {
        self.is_open() || peer.is_some_and(|p| self.rules.iter().any(|r| r.allows(p)))
    }

    /// The tenant a session of engine name `engine` gets, and its rule's index. `NAME/rest`
    /// asks for tenant `NAME`; a name without `/` asks for none: the peer's first allowed
    /// tenant, or (when open) the whole name. Errors are `PermissionDenied` with the refusal.
    pub fn tenant(
        &self,
        peer: Option<&Peer>,
        engine: &str,
    ) -> std::result::Result<(String, Option<usize>), (Refusal, Error)> {
        let asked = engine.split_once('/').map(|(t, _)| t);
        if self.is_open() {
            let name = asked.unwrap_or(engine);
            return Ok((name.to_string(), None));
        }
        let who = match peer {
            Some(p) => format!("uid {} gid {}", p.uid, p.gid),
            None => "a peer of unknown credentials".to_string(),
        };
        let allowed = |r: &TenantRule| peer.is_some_and(|p| r.allows(p));
        match asked {
            Some(t) => match self.rules.iter().position(|r| r.name == t) {
                Some(i) if allowed(&self.rules[i]) => Ok((t.to_string(), Some(i))),
                Some(_) => Err((
                    Refusal::Tenant,
                    denied(format!(
                        "{who} may not use tenant `{t}`; agent.tenants lists who may"
                    )),
                )),
                None => Err((
                    Refusal::Tenant,
                    denied(format!(
                        "no tenant `{t}` is configured (agent.tenants: {})",
                        self.names()
                    )),
                )),
            },
            None => match self.rules.iter().position(allowed) {
                Some(i) => Ok((self.rules[i].name.clone(), Some(i))),
                None => Err((
                    Refusal::NoTenant,
                    denied(format!(
                        "{who} may use no tenant of this agent ({}); add it to agent.tenants",
                        self.names()
                    )),
                )),
            },
        }
    }

    fn names(&self) -> String {
        self.rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn denied(msg: String) -> Error {
    Error::new(ErrorKind::PermissionDenied, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: 0,
        }
    }

    #[test]
    fn rules_parse_and_say_what_is_wrong() {
        let r = TenantRule::parse("chat: uid=1000 uid=1001 gid=50 arena=25%").unwrap();
        assert_eq!(r.name, "chat");
        assert_eq!((r.uids, r.gids), (vec![1000, 1001], vec![50]));
        assert_eq!(r.arena, Some(Share::Percent(25)));
        let r = TenantRule::parse("batch:gid=7 arena=256MiB").unwrap();
        assert_eq!(r.arena, Some(Share::Bytes(256 << 20)));
        for (bad, says) in [
            ("chat uid=1", "no `:`"),
            ("ch at: uid=1", "has ` `"),
            (": uid=1", "1 to 64"),
            ("chat: uid=x", "not a numeric id"),
            ("chat: user=1", "unknown key `user`"),
            ("chat: uid=1 arena=0%", "1% to 100%"),
            ("chat: uid=1 arena=lots", "neither a percent"),
            ("chat: arena=5%", "allows nobody"),
        ] {
            let e = TenantRule::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_peer_gets_only_the_tenants_it_may_use() {
        let access = Access {
            rules: vec![
                TenantRule::parse("chat: uid=1000").unwrap(),
                TenantRule::parse("batch: gid=300").unwrap(),
            ],
        };
        let alice = peer(1000, 1000, &[]);
        let bob = peer(2000, 2000, &[300]);
        let eve = peer(3000, 3000, &[]);
        assert!(access.admits(Some(&alice)) && access.admits(Some(&bob)));
        assert!(!access.admits(Some(&eve)) && !access.admits(None));
        let t = |p: &Peer, name: &str| access.tenant(Some(p), name).map(|(t, _)| t);
        assert_eq!(t(&alice, "vllm rank 0").unwrap(), "chat");
        assert_eq!(t(&bob, "vllm rank 0").unwrap(), "batch");
        assert_eq!(t(&bob, "batch/rank 1").unwrap(), "batch");
        let (why, e) = t(&bob, "chat/rank 0").unwrap_err();
        assert_eq!(why, Refusal::Tenant);
        assert!(e.to_string().contains("may not use tenant `chat`"), "{e}");
        assert_eq!(t(&alice, "other/x").unwrap_err().0, Refusal::Tenant);
        assert_eq!(t(&eve, "x").unwrap_err().0, Refusal::NoTenant);
        let open = Access::default();
        assert_eq!(open.tenant(None, "team/rank 0").unwrap().0, "team");
        assert_eq!(open.tenant(None, "pid 7").unwrap().0, "pid 7");
    }

    #[test]
    fn the_kernel_names_the_peer_of_a_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of(&a, true).unwrap();
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((p.uid, p.gid, p.pid), (uid, gid, std::process::id() as i32));
    }

    #[test]
    fn a_share_is_whole_slots_within_the_arena() {
        assert_eq!(Share::Percent(25).slots(100, 4096), 25);
        assert_eq!(Share::Percent(1).slots(10, 4096), 1);
        assert_eq!(Share::Bytes(10 * 4096).slots(100, 4096), 10);
        assert_eq!(Share::Bytes(1 << 40).slots(100, 4096), 100);
    }
}
