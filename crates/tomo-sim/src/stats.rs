//! Counters the simulated agents keep, and a snapshot of them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Live counters of a simulation.
#[derive(Debug)]
pub struct Stats {
    agents: usize,
    online: AtomicUsize,
    stopped: AtomicUsize,
    sessions: AtomicU64,
    registered: AtomicU64,
    requests: AtomicU64,
    denied: AtomicU64,
    notifications: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    ids: Mutex<Vec<String>>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Simulated agents.
    pub agents: usize,
    /// Agents with a session now.
    pub online: usize,
    /// Agents that stopped for good (a permanent refusal, or a command key they do not trust).
    pub stopped: usize,
    /// Sessions opened (welcomes received), registrations included.
    pub sessions: u64,
    /// Agents registered with their code.
    pub registered: u64,
    /// Requests admitted by the pipeline and answered.
    pub requests: u64,
    /// Requests the pipeline refused.
    pub denied: u64,
    /// Notifications sent (metrics, health, audit records).
    pub notifications: u64,
    /// Failed connection attempts and lost sessions, by kind: `refused` (nothing listens),
    /// `timeout`, `tls`, `websocket`, `protocol`, `connect:<io error>`, `handshake:<reason>`,
    /// `welcome:<why>`; sessions ending: `lost:closed` (the control plane closed it),
    /// `lost:error`, `lost:dead` (silent for 90 s).
    pub failures: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Failures other than those of the given kinds.
    pub fn failures_except(&self, expected: &[&str]) -> BTreeMap<String, u64> {
        self.failures
            .iter()
            .filter(|(k, _)| !expected.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

impl Stats {
    pub(crate) fn new(agents: usize) -> Self {
        Self {
            agents,
            online: AtomicUsize::new(0),
            stopped: AtomicUsize::new(0),
            sessions: AtomicU64::new(0),
            registered: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            ids: Mutex::new(Vec::new()),
        }
    }

    /// Agents with a session now.
    pub fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    /// The agent ids of the registered agents, in registration order.
    pub fn agent_ids(&self) -> Vec<String> {
        self.ids.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            agents: self.agents,
            online: self.online(),
            stopped: self.stopped.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            registered: self.registered.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            notifications: self.notifications.load(Ordering::Relaxed),
            failures: self.failures.lock().map(|f| f.clone()).unwrap_or_default(),
        }
    }

    /// Forgets the failures counted so far (between phases of a benchmark).
    pub fn clear_failures(&self) {
        if let Ok(mut f) = self.failures.lock() {
            f.clear();
        }
    }

    /// Polls until `n` agents are online, at most `timeout`.
    pub async fn wait_online(&self, n: usize, timeout: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        loop {
            if self.online() >= n {
                return Some(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn failed(&self, kind: String) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(kind).or_default() += 1;
        }
    }

    pub(crate) fn registered(&self, agent_id: &str) {
        self.registered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut ids) = self.ids.lock() {
            ids.push(agent_id.to_owned());
        }
    }

    pub(crate) fn session_up(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.online.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_down(&self) {
        self.online.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn stopped(&self) {
        self.stopped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request(&self, admitted: bool) {
        let counter = if admitted {
            &self.requests
        } else {
            &self.denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn notification(&self) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
    }
}
