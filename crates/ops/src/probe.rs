//! Reachability and readiness: what `/readyz` answers, and the live checks of
//! `kvtier config check` (pool servers reachable, secret files readable).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::config::{AgentSection, Config};
use kvtier_agent::State;
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_pool::placement::Member;
use kvtier_pool::server::PoolServer;

/// Resolves `addr` (`host:port`) and connects to the first of its addresses that answers
/// within `timeout` (`localhost` may resolve to `::1` first while a daemon listens on
/// `127.0.0.1`).
pub fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| unavailable(format!("cannot resolve `{addr}`: {e}")))?
        .collect();
    let mut last = unavailable(format!("`{addr}` resolves to no address"));
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = unavailable(format!("cannot connect to {a}: {e}")),
        }
    }
    Err(last)
}

fn unavailable(why: String) -> Error {
    Error::new(ErrorKind::Unavailable, why)
}

/// Whether `addr` accepts a connection within `timeout` (see [`connect`]).
pub fn reachable(addr: &str, timeout: Duration) -> Result<()> {
    connect(addr, timeout).map(drop)
}

/// The address part of a pool member (`host:port=weight`).
fn member_addr(m: &str) -> String {
    Member::parse(m).map_or_else(|_| m.to_string(), |m| m.addr)
}

/// Every pool server of `agent` is resolvable and accepts a connection within `timeout`; the
/// error names the member (`agent.pool_servers[1]`).
pub fn check_pool_servers(agent: &AgentSection, timeout: Duration) -> Result<()> {
    for (i, m) in agent.pool_servers.iter().enumerate() {
        reachable(&member_addr(m), timeout).map_err(|why| {
            Error::invalid(format!(
                "agent.pool_servers[{i}]: `{m}` is unreachable: {why}"
            ))
        })?;
    }
    Ok(())
}

/// The secret files of `sections` exist and hold a usable secret.
pub fn check_files(cfg: &Config, sections: &[&str]) -> Result<()> {
    let files = [
        (
            "agent",
            "agent.pool_secret_file",
            &cfg.agent.pool_secret_file,
        ),
        ("pool", "pool.secret_file", &cfg.pool.secret_file),
    ];
    for (section, field, file) in files {
        if let (true, Some(f)) = (sections.contains(&section), file) {
            kvtier_pool::auth::read_secret(f)
                .map_err(|e| Error::invalid(format!("{field}: {e}")))?;
        }
    }
    Ok(())
}

/// What the agent's readiness depends on besides serving: its pool.
#[derive(Debug, Clone)]
pub enum PoolCheck {
    /// No pool, or the embedded one (open once the agent serves).
    Nothing,
    /// At least one of these pool servers accepts connections.
    Servers(Vec<String>),
    /// The shared directory is there.
    SharedDir(PathBuf),
}

impl PoolCheck {
    /// What `agent` needs.
    pub fn for_agent(agent: &AgentSection) -> PoolCheck {
        if agent.no_pool {
            PoolCheck::Nothing
        } else if !agent.pool_servers.is_empty() {
            PoolCheck::Servers(agent.pool_servers.iter().map(|m| member_addr(m)).collect())
        } else if let Some(d) = &agent.shared_dir {
            PoolCheck::SharedDir(d.clone())
        } else {
            PoolCheck::Nothing
        }
    }

    fn run(&self) -> Result<()> {
        match self {
            PoolCheck::Nothing => Ok(()),
            PoolCheck::Servers(addrs) => {
                let mut why = Vec::new();
                for a in addrs {
                    match reachable(a, Duration::from_millis(500)) {
                        Ok(()) => return Ok(()),
                        Err(e) => why.push(e.to_string()),
                    }
                }
                Err(unavailable(format!(
                    "no pool server reachable ({})",
                    why.join("; ")
                )))
            }
            PoolCheck::SharedDir(d) => match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(unavailable(format!(
                    "the shared directory {} is not a directory",
                    d.display()
                ))),
                Err(e) => {
                    Err(Error::io("the shared directory", e).with_context("path", d.display()))
                }
            },
        }
    }
}

/// The agent's readiness: serving, and its pool reachable. A pool check result is reused for
/// a second, so that frequent probes cost one connection attempt a second at most; while one
/// check runs (up to half a second per pool server), other probes answer with the last result
/// at once instead of queueing behind it.
pub struct AgentReadiness {
    state: Arc<State>,
    check: PoolCheck,
    last: Mutex<Checked>,
}

#[derive(Default)]
struct Checked {
    /// When the last check ended, and its error.
    result: Option<(Instant, Option<Error>)>,
    /// A check is running.
    running: bool,
}

impl AgentReadiness {
    /// Readiness of the agent whose state is `state`.
    pub fn new(state: Arc<State>, check: PoolCheck) -> Self {
        AgentReadiness {
            state,
            check,
            last: Mutex::new(Checked::default()),
        }
    }

    /// `Ok` when ready, else why not.
    pub fn ready(&self) -> Result<()> {
        if self.state.is_stopping() {
            return Err(unavailable("the agent is shutting down".into()));
        }
        let again = |e: &Error| Error::new(e.kind(), e.to_string());
        {
            let mut last = self.last.lock();
            let fresh = last
                .result
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1));
            if fresh || last.running {
                return match &last.result {
                    Some((_, r)) => r.as_ref().map_or(Ok(()), |e| Err(again(e))),
                    None => Err(unavailable("the pool is being checked".into())),
                };
            }
            last.running = true;
        }
        // The check runs without the lock: probes meanwhile get the last result.
        let r = self.check.run();
        let out = r.as_ref().map(|_| ()).map_err(again);
        let mut last = self.last.lock();
        *last = Checked {
            result: Some((Instant::now(), r.err())),
            running: false,
        };
        out
    }
}

/// A pool server's readiness: serving and not draining.
pub fn pool_ready(server: &PoolServer) -> Result<()> {
    if server.is_draining() {
        return Err(unavailable("the pool server is draining".into()));
    }
    if !server.is_serving() {
        return Err(unavailable(
            "the pool server is not accepting connections".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_never_waits_behind_a_running_check() {
        // A pool server whose accept queue is full: a connection to it takes the check's whole
        // timeout.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            held.push(s);
            assert!(held.len() < 10_000, "the accept queue never filled");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kvtier_agent::AgentConfig::new(dir.path().join("agent.sock"));
        cfg.arena.capacity_bytes = 8 << 20;
        let state = State::new(&cfg).unwrap();
        let r = Arc::new(AgentReadiness::new(
            state,
            PoolCheck::Servers(vec![addr.to_string()]),
        ));
        let r2 = r.clone();
        let slow = std::thread::spawn(move || r2.ready());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.last.lock().running {
            assert!(
                Instant::now() < deadline && !slow.is_finished(),
                "the check never ran"
            );
            std::thread::yield_now();
        }
        // Another probe meanwhile answers at once, not after the check.
        let quick = r.ready().unwrap_err();
        assert!(
            !slow.is_finished(),
            "the probe waited for the running check"
        );
        assert!(quick.to_string().contains("being checked"), "{quick}");
        let e = slow.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("no pool server reachable"), "{e}");
        // And then the result is reused.
        let again = r.ready().unwrap_err();
        assert!(
            again.to_string().contains("no pool server reachable"),
            "{again}"
        );
        drop(held);
    }

    #[test]
    fn unreachable_and_unresolvable_members_are_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = listener.local_addr().unwrap().to_string();
        let mut a = AgentSection {
            pool_servers: vec![up.clone(), format!("{up}=2")],
            ..AgentSection::default()
        };
        check_pool_servers(&a, Duration::from_secs(1)).unwrap();
        drop(listener);
        a.pool_servers = vec![format!("{up}=2"), "127.0.0.1:1".into()];
        let e = check_pool_servers(&a, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent.pool_servers[0]") && e.contains(&up),
            "{e}"
        );
        a.pool_servers = vec!["no-such-host.invalid:7070".into()];
        let e = check_pool_servers(&a, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent.pool_servers[0]") && e.contains("resolve"),
            "{e}"
        );
    }
}
