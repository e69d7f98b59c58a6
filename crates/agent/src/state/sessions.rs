//! Engine sessions and leases: hello, the descriptor socket, grants, release, goodbye, and reclaiming a dead engine's leases.

use super::*;
use crate::access::{MAX_ENGINE_NAME, MAX_TENANT_NAME};

impl State {
    /// Serves the descriptor socket on a thread: each connection gets a token and the arena's
    /// descriptor, and its closing reclaims the token's sessions.
    pub fn serve_descriptors(self: Arc<Self>, listener: UnixListener) {
        let spawn = std::thread::Builder::new()
            .name("kvtier-fd-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    // A peer whose credentials the kernel cannot give is refused in every mode.
                    let peer = Peer::of(&conn, !self.access.is_open()).ok();
                    let peer = match peer {
                        Some(p) if self.access.admits(Some(&p)) => p,
                        other => {
                            // Never hand the arena to a peer that may use no tenant.
                            self.refused(Refusal::NoTenant);
                            tracing::warn!(uid = other.map(|p| p.uid), "refused a peer allowed no tenant (agent.tenants)");
                            let _ = fdpass::send_refusal(&conn);
                            continue;
                        }
                    };
                    let token = self.id();
                    self.tokens.lock().insert(token, peer);
                    let len = self.arena.slot_len() as u64 * self.arena.slots() as u64;
                    if let Err(e) = fdpass::send_fd(&conn, self.arena.fd(), token, len) {
                        tracing::debug!(error = %e, "could not pass the arena descriptor (the peer left at once)");
                        self.tokens.lock().remove(&token);
                        continue;
                    }
                    let state = self.clone();
                    let watcher = std::thread::Builder::new().name("kvtier-fd-conn".into()).spawn(move || {
                        // Engines never write here: EOF (or a fatal error) means the engine is gone.
                        let mut buf = [0u8; 64];
                        loop {
                            match conn.read(&mut buf) {
                                Ok(0) => break,
                                Ok(_) => continue,
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                                Err(_) => break,
                            }
                        }
                        state.reclaim(token);
                    });
                    if let Err(e) = watcher {
                        // Without a watcher an engine's death would go unnoticed: refuse it now.
                        tracing::warn!(error = %e, "could not watch an engine connection; closing it");
                        self.reclaim(token);
                    }
                }
            });
        if let Err(e) = spawn {
            tracing::error!(error = %e, "could not start the descriptor socket thread");
        }
    }

    /// Opens a session for an engine whose descriptor connection holds `token`, called by
    /// `caller` (the uid of the gRPC connection's peer; `None` when unknown): it must be the
    /// uid that holds the token. The session's tenant comes from the engine name and what the
    /// token's peer may use ([`Access::tenant`]).
    pub fn hello(
        &self,
        token: u64,
        layout_digest: u64,
        object_len: u64,
        engine: &str,
        caller: Option<u32>,
    ) -> Result<u64> {
        if object_len != self.arena.payload_len() as u64 {
            return Err(Error::invalid(format!(
                "the engine's block objects are {object_len} bytes but the agent's arena holds {}-byte objects; \
                 start the agent with --object-bytes {object_len}",
                self.arena.payload_len()
            )));
        }
        if engine.len() > MAX_ENGINE_NAME || engine.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "the engine name must be at most {MAX_ENGINE_NAME} bytes without control characters \
                 (got {} bytes)",
                engine.len()
            )));
        }
        let Some(peer) = self.tokens.lock().get(&token).cloned() else {
            return Err(Error::invalid(
                "unknown descriptor token: connect to the descriptor socket first",
            ));
        };
        if caller.is_some_and(|uid| uid != peer.uid) || (caller.is_none() && !self.access.is_open())
        {
            self.refused(Refusal::NotOwner);
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "this descriptor token belongs to another uid's connection",
            ));
        }
        let (name, rule) = self
            .access
            .tenant(Some(&peer), engine)
            .map_err(|(why, e)| {
                self.refused(why);
                tracing::warn!(uid = peer.uid, engine, error = %e, "refused a session");
                e
            })?;
        let name: String = name.chars().take(MAX_TENANT_NAME).collect();
        let cap = rule
            .and_then(|i| self.access.rules[i].arena)
            .map(|share| share.slots(self.arena.slots(), self.arena.slot_len()));
        let mut session = self.id();
        let tenant = self.tenants.lock().id(&name, cap);
        let mut sessions = self.sessions.lock();
        while sessions.contains_key(&session) {
            session = self.id();
        }
        sessions.insert(
            session,
            Session {
                token,
                uid: peer.uid,
                layout_digest,
                engine: engine.to_string(),
                tenant,
                leases: HashSet::new(),
            },
        );
        drop(sessions);
        tracing::info!(session, engine, tenant = %name, uid = peer.uid, "engine session opened");
        Ok(session)
    }

    /// Refuses a call naming `session` from `caller`, a uid other than the session's owner
    /// (`PermissionDenied`, counted). An unknown session passes: the call itself says so.
    pub fn authorize(&self, session: u64, caller: Option<u32>) -> Result<()> {
        let owner = self.sessions.lock().get(&session).map(|s| s.uid);
        match owner {
            Some(uid) if caller != Some(uid) => {
                self.refused(Refusal::NotOwner);
                Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("session {session} belongs to another uid; open your own with Hello"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether `session` may take one more lease: `NoSpace` when it, or its tenant, holds its
    /// limit of slots (counted).
    pub(super) fn lease_room(&self, session: u64) -> Result<()> {
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(&session) else {
            return Err(Error::new(ErrorKind::NotFound, "unknown session"));
        };
        if s.leases.len() >= self.session_cap {
            self.counters.lease_limited_session.inc();
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!("the session holds {} leases, its limit", s.leases.len()),
            ));
        }
        let cap = self.tenants.lock().caps.get(s.tenant).copied().flatten();
        if let Some(cap) = cap {
            let held: usize = sessions
                .values()
                .filter(|o| o.tenant == s.tenant)
                .map(|o| o.leases.len())
                .sum();
            if held >= cap {
                self.counters.lease_limited_tenant.inc();
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!("the tenant's sessions hold {held} leases, its share of the arena"),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn session_digest(&self, session: u64) -> Result<u64> {
        self.session_info(session).map(|(digest, _)| digest)
    }

    /// The session's layout digest and tenant.
    pub(super) fn session_info(&self, session: u64) -> Result<(u64, usize)> {
        self.sessions
            .lock()
            .get(&session)
            .map(|s| (s.layout_digest, s.tenant))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "unknown session: call Hello again (the agent may have restarted)",
                )
            })
    }

    pub(super) fn grant(&self, session: u64, kind: LeaseKind) -> Result<u64> {
        let id = self.id();
        self.grant_as(id, session, kind)?;
        Ok(id)
    }

    pub(super) fn grant_as(&self, id: u64, session: u64, kind: LeaseKind) -> Result<()> {
        let mut sessions = self.sessions.lock();
        let s = sessions
            .get_mut(&session)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "unknown session"))?;
        s.leases.insert(id);
        self.leases.lock().insert(id, Lease { session, kind });
        Ok(())
    }

    pub(super) fn take_lease(&self, session: u64, lease: u64) -> Option<LeaseKind> {
        let mut leases = self.leases.lock();
        match leases.get(&lease) {
            Some(l) if l.session == session => {}
            _ => return None,
        }
        let l = leases.remove(&lease)?;
        drop(leases);
        if let Some(s) = self.sessions.lock().get_mut(&session) {
            s.leases.remove(&lease);
        }
        Some(l.kind)
    }

    pub(super) fn release(&self, lease: u64, kind: LeaseKind) {
        match kind {
            LeaseKind::Write { slot, key, .. } => {
                self.unmark_saving(key, lease);
                self.arena.abandon_slot(slot);
            }
            LeaseKind::Read { slot } => self.arena.unpin(slot),
        }
    }

    /// Closes a session, releasing its leases.
    pub fn goodbye(&self, session: u64) {
        let Some(s) = self.sessions.lock().remove(&session) else {
            return;
        };
        for lease in s.leases {
            let taken = self.leases.lock().remove(&lease);
            if let Some(l) = taken {
                self.release(lease, l.kind);
            }
        }
    }

    /// Releases everything held by the sessions of a descriptor connection that closed.
    pub fn reclaim(&self, token: u64) {
        self.tokens.lock().remove(&token);
        let gone: Vec<(u64, Session)> = {
            let mut sessions = self.sessions.lock();
            let ids: Vec<u64> = sessions
                .iter()
                .filter(|(_, s)| s.token == token)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| sessions.remove(&id).map(|s| (id, s)))
                .collect()
        };
        for (id, s) in gone {
            let n = s.leases.len();
            for lease in s.leases {
                let taken = self.leases.lock().remove(&lease);
                if let Some(l) = taken {
                    self.release(lease, l.kind);
                    self.counters.reclaimed_leases.inc();
                }
            }
            tracing::info!(session = id, engine = %s.engine, leases = n, "engine gone; leases reclaimed");
        }
    }
}
