//! Admission of connections that have not authenticated yet (issue 12.5: pre-auth denial of
//! service). Each source (an IPv4 address, or an IPv6 /64, as in [`crate::throttle`]) may hold
//! a bounded number of unauthenticated connections; a connection past its source's share is
//! closed as soon as it is accepted. Two shares per source, so that operators and agents keep
//! separate budgets:
//!
//! - connections: from accept until the connection's first request authenticates (API) or it
//!   is upgraded to `/agent/ws` — waiting for the first TLS byte, in the TLS handshake, reading
//!   request heads, answered 401;
//! - agent handshakes: upgraded `/agent/ws` connections until the session is welcomed.
//!
//! An authenticated connection no longer counts, however long it lives (a source with a
//! thousand connected agents still has its whole share for the next ones). A source also takes
//! at most [`TLS_TURNS_PER_SOURCE`] of the control plane's TLS handshake turns at once, so that
//! peers which send a first byte and then stall cannot hold every turn either.
//!
//! All sources together hold at most a cap of unauthenticated connections (by default half the
//! process's open-file limit, [`default_cap`]): the shares bound one address, the cap bounds a
//! flood from many (an IPv6 /48, a botnet), which would otherwise take every descriptor and make
//! every accept fail, agents' and operators' included. Past the cap a new connection is closed
//! at once, as past a share; the flood's connections go at their deadlines.
//!
//! The counts are in memory, one small entry per source with a connection in progress; an
//! entry goes away with its source's last unauthenticated connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// TLS handshake turns one source may hold at once: a quarter of the control plane's
/// (`TLS_HANDSHAKES`), so three other sources, or the operators, always find one free.
pub const TLS_TURNS_PER_SOURCE: usize = 16;

/// Where an unauthenticated connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before its first authenticated request or its upgrade to `/agent/ws`.
    Connection,
    /// An upgraded `/agent/ws` connection before its welcome.
    AgentHandshake,
    /// Authenticated (or closed): counts no more.
    Done,
}

#[derive(Debug)]
struct Entry {
    connections: usize,
    agent_handshakes: usize,
    tls_turns: Arc<Semaphore>,
}

#[derive(Debug)]
struct Inner {
    connections_per_source: usize,
    agent_handshakes_per_source: usize,
    /// Most unauthenticated connections of all sources together.
    cap: usize,
    sources: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    by_source: HashMap<IpAddr, Entry>,
    /// Unauthenticated connections (both stages) of all sources.
    total: usize,
}

/// Unauthenticated connections per source.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Inner>);

/// One admitted, not yet authenticated connection; it counts against its source until
/// [`Unauthenticated::authenticated`] or until the last clone is dropped. Cloned into each
/// request's extensions, so that the layer which authenticates can release it.
#[derive(Debug, Clone)]
pub struct Unauthenticated(Arc<Slot>);

#[derive(Debug)]
struct Slot {
    admission: Arc<Inner>,
    source: IpAddr,
    stage: Mutex<Stage>,
    tls_turns: Arc<Semaphore>,
}

impl Admission {
    /// At most `connections_per_source` connections and `agent_handshakes_per_source` agent
    /// handshakes per source, and `cap` of both kinds from all sources together (each at
    /// least 1).
    pub fn new(
        connections_per_source: usize,
        agent_handshakes_per_source: usize,
        cap: usize,
    ) -> Self {
        Self(Arc::new(Inner {
            connections_per_source: connections_per_source.max(1),
            agent_handshakes_per_source: agent_handshakes_per_source.max(1),
            cap: cap.max(1),
            sources: Mutex::default(),
        }))
    }

    /// Admits a new connection from `peer`; `None` when its source holds its share already, or
    /// all sources the cap (deny by default: the connection is to be closed unread).
    pub fn admit(&self, peer: IpAddr) -> Option<Unauthenticated> {
        let source = crate::throttle::source(peer);
        let mut sources = self.0.sources.lock().ok()?;
        if sources.total >= self.0.cap {
            return None;
        }
        let entry = sources.by_source.entry(source).or_insert_with(|| Entry {
            connections: 0,
            agent_handshakes: 0,
            tls_turns: Arc::new(Semaphore::new(TLS_TURNS_PER_SOURCE)),
        });
        if entry.connections >= self.0.connections_per_source {
            return None;
        }
        entry.connections += 1;
        let tls_turns = Arc::clone(&entry.tls_turns);
        sources.total += 1;
        Some(Unauthenticated(Arc::new(Slot {
            admission: Arc::clone(&self.0),
            source,
            stage: Mutex::new(Stage::Connection),
            tls_turns,
        })))
    }

    /// Unauthenticated connections all sources hold now (tests, metrics).
    pub fn total(&self) -> usize {
        self.0.sources.lock().map(|s| s.total).unwrap_or(0)
    }

    /// The most all sources may hold together.
    pub fn cap(&self) -> usize {
        self.0.cap
    }

    /// Unauthenticated connections and agent handshakes `peer`'s source holds (tests, metrics).
    pub fn held(&self, peer: IpAddr) -> (usize, usize) {
        let source = crate::throttle::source(peer);
        self.0
            .sources
            .lock()
            .ok()
            .and_then(|m| {
                m.by_source
                    .get(&source)
                    .map(|e| (e.connections, e.agent_handshakes))
            })
            .unwrap_or((0, 0))
    }
}

impl Unauthenticated {
    /// Waits for one of this source's TLS handshake turns (see [`TLS_TURNS_PER_SOURCE`]).
    pub async fn tls_turn(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0.tls_turns).acquire_owned().await.ok()
    }

    /// The connection was upgraded to `/agent/ws`: it moves from its source's connections to
    /// its agent handshakes. `false` (and nothing moves) when those are full.
    pub fn to_agent_handshake(&self) -> bool {
        let Ok(mut stage) = self.0.stage.lock() else {
            return false;
        };
        match *stage {
            Stage::AgentHandshake => true,
            // An authenticated API connection upgrading is an odd client, not a flood.
            Stage::Done => true,
            Stage::Connection => {
                let Ok(mut map) = self.0.admission.sources.lock() else {
                    return false;
                };
                let Some(e) = map.by_source.get_mut(&self.0.source) else {
                    return false;
                };
                if e.agent_handshakes >= self.0.admission.agent_handshakes_per_source {
                    return false;
                }
                e.agent_handshakes += 1;
                e.connections = e.connections.saturating_sub(1);
                *stage = Stage::AgentHandshake;
                true
            }
        }
    }

    /// Authenticated: the connection counts no more.
    pub fn authenticated(&self) {
        self.0.release();
    }
}

impl Slot {
    fn release(&self) {
        let Ok(mut stage) = self.stage.lock() else {
            return;
        };
        let was = std::mem::replace(&mut *stage, Stage::Done);
        if was == Stage::Done {
            return;
        }
        let Ok(mut map) = self.admission.sources.lock() else {
            return;
        };
        map.total = map.total.saturating_sub(1);
        if let Some(e) = map.by_source.get_mut(&self.source) {
            match was {
                Stage::Connection => e.connections = e.connections.saturating_sub(1),
                Stage::AgentHandshake => e.agent_handshakes = e.agent_handshakes.saturating_sub(1),
                Stage::Done => {}
            }
            if e.connections == 0 && e.agent_handshakes == 0 {
                map.by_source.remove(&self.source);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// The default cap of unauthenticated connections: half the process's open-file limit (the
/// other half is for authenticated sessions, the database and the rest), at least 256; 4096
/// where the limit cannot be read (`/proc/self/limits`, Linux).
pub fn default_cap() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| open_files_limit(&t))
        .map_or(4096, |n| (n / 2).max(256))
}

/// The soft `Max open files` of a `/proc/self/limits` text.
fn open_files_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(1 << 20),
        n => n.parse().ok(),
    }
}

/// Waits until the peer has sent its first byte (the start of its ClientHello), at most
/// `within`. `false`: nothing came in time, or the connection failed. Waiting here costs no
/// shared turn: an idle connection holds only its slot, until this deadline.
pub async fn first_byte(tcp: &tokio::net::TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.peek(&mut b)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_source_gets_its_share_and_no_more() {
        let a = Admission::new(3, 2, 100);
        let held: Vec<_> = (0..3)
            .map(|_| a.admit(ip("192.0.2.1")).expect("within the share"))
            .collect();
        assert!(a.admit(ip("192.0.2.1")).is_none(), "past the share");
        assert!(a.admit(ip("192.0.2.2")).is_some(), "another source");
        drop(held);
        assert_eq!(
            a.held(ip("192.0.2.1")),
            (0, 0),
            "closed connections count no more"
        );
        assert!(a.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn all_sources_together_stop_at_the_cap() {
        let a = Admission::new(64, 64, 3);
        let held: Vec<_> = (1..=3)
            .map(|i| {
                a.admit(ip(&format!("192.0.2.{i}")))
                    .expect("within the cap")
            })
            .collect();
        assert!(
            a.admit(ip("192.0.2.9")).is_none(),
            "a new source past the cap"
        );
        assert_eq!(
            a.held(ip("192.0.2.9")),
            (0, 0),
            "a refused source leaves no entry"
        );
        // An upgrade moves a connection between stages: it still counts once.
        assert!(held[0].to_agent_handshake());
        assert_eq!(a.total(), 3);
        held[1].authenticated();
        assert_eq!(a.total(), 2);
        assert!(a.admit(ip("192.0.2.9")).is_some(), "a slot came back");
        drop(held);
        assert_eq!(
            a.total(),
            0,
            "dropped and admitted-then-dropped slots are released once"
        );
    }

    #[test]
    fn the_default_cap_is_half_the_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            20000                1048576              files\n";
        assert_eq!(open_files_limit(limits), Some(20000));
        assert_eq!(
            open_files_limit("Max open files  unlimited  unlimited  files"),
            Some(1 << 20)
        );
        assert_eq!(open_files_limit("nothing here"), None);
        assert!(default_cap() >= 256);
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let a = Admission::new(2, 2, 100);
        let _x = a.admit(ip("2001:db8:1:2::1")).expect("first");
        let _y = a.admit(ip("2001:db8:1:2::ffff")).expect("second");
        assert!(a.admit(ip("2001:db8:1:2:abcd::9")).is_none());
        assert!(a.admit(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn authenticated_and_upgraded_connections_leave_the_connection_share() {
        let a = Admission::new(2, 1, 100);
        let src = ip("192.0.2.3");
        let api = a.admit(src).expect("api");
        let agent = a.admit(src).expect("agent");
        assert!(a.admit(src).is_none());
        api.authenticated();
        let clone = api.clone();
        drop(clone);
        assert_eq!(a.held(src), (1, 0));
        assert!(agent.to_agent_handshake());
        assert_eq!(a.held(src), (0, 1));
        let second = a.admit(src).expect("the connection share is free again");
        assert!(
            !second.to_agent_handshake(),
            "the agent handshake share is full"
        );
        assert_eq!(a.held(src), (1, 1));
        agent.authenticated();
        assert!(second.to_agent_handshake());
        drop((api, agent, second));
        assert_eq!(a.held(src), (0, 0));
    }
}
