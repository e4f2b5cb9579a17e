//! Health and metrics samples, and hosts' last-seen times, on their way to the store.
//!
//! Sessions queue them ([`Samples::push`], [`Samples::seen`]) and one writer stores them in
//! batches, one transaction each ([`crate::store::Store::add_samples`]), instead of two write
//! transactions per notification. Ten thousand agents push 500 samples a second at the default
//! intervals, and all of them at once when they reconnect after a restart; written one by one,
//! those writes queued the handshakes' own store calls past the agents' deadline. The queue is
//! bounded: when the writer falls behind, sessions wait (as they did for the store) instead of
//! memory growing. The latest sample of each host is kept in memory by the hub as before, so a
//! reader never waits for this writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{SampleKind, Store};

/// Samples and touches queued before sessions wait.
pub const QUEUE: usize = 8192;
/// Rows written per transaction at most.
const BATCH: usize = 1024;
/// After shutdown, the writer stops once nothing arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// One queued write.
#[derive(Debug)]
enum Pending {
    Sample {
        host_id: String,
        kind: SampleKind,
        at: i64,
        data: String,
    },
    Seen {
        host_id: String,
        at: i64,
    },
}

/// The sending side, in [`crate::AppState`].
#[derive(Debug, Clone)]
pub struct Samples {
    tx: mpsc::Sender<Pending>,
}

impl Samples {
    /// Starts the writer on `tracker`; it stores until `shutdown`, then stores what is still
    /// queued (sessions closing at shutdown queue their last-seen time too) and stops.
    pub fn start(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(writer(store, rx, shutdown));
        Self { tx }
    }

    /// Queues a sample of `host_id` received at `at`; the host was seen then too.
    pub async fn push(&self, host_id: &str, kind: SampleKind, at: i64, data: String) {
        let p = Pending::Sample {
            host_id: host_id.to_owned(),
            kind,
            at,
            data,
        };
        if self.tx.send(p).await.is_err() {
            tracing::debug!(
                host_id,
                "the sample writer has stopped; a sample was not stored"
            );
        }
    }

    /// Queues the last-seen time of `host_id`.
    pub async fn seen(&self, host_id: &str, at: i64) {
        let p = Pending::Seen {
            host_id: host_id.to_owned(),
            at,
        };
        if self.tx.send(p).await.is_err() {
            tracing::debug!(
                host_id,
                "the sample writer has stopped; last seen not stored"
            );
        }
    }
}

async fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Pending>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = if shutdown.is_cancelled() {
            tokio::time::timeout(DRAIN_IDLE, rx.recv_many(&mut batch, BATCH))
                .await
                .unwrap_or_default()
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = shutdown.cancelled() => continue,
            }
        };
        if n == 0 {
            return;
        }
        write(&*store, &mut batch).await;
    }
}

/// Stores one batch: its samples, and each host's latest time once.
async fn write(store: &dyn Store, batch: &mut Vec<Pending>) {
    let mut samples = Vec::with_capacity(batch.len());
    let mut seen: HashMap<String, i64> = HashMap::new();
    for p in batch.drain(..) {
        let (host_id, at) = match p {
            Pending::Sample {
                host_id,
                kind,
                at,
                data,
            } => {
                samples.push((host_id.clone(), kind, at, data));
                (host_id, at)
            }
            Pending::Seen { host_id, at } => (host_id, at),
        };
        let latest = seen.entry(host_id).or_insert(at);
        *latest = (*latest).max(at);
    }
    let seen: Vec<(String, i64)> = seen.into_iter().collect();
    if let Err(e) = store.add_samples(&samples, &seen).await {
        tracing::warn!(error = %e, samples = samples.len(), hosts = seen.len(), "cannot store samples");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_samples_and_times_reach_the_store_also_at_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            crate::store::SqliteStore::open(&dir.path().join("t.db"))
                .await
                .expect("store"),
        );
        store
            .create_code(&crate::store::NewCode {
                code_hash: [1; 32],
                created_at: 0,
                expires_at: i64::MAX,
                created_by: "t".into(),
            })
            .await
            .expect("code");
        let host = crate::store::NewHost {
            id: "h".into(),
            public_key: vec![1; 32],
            facts: Default::default(),
        };
        store.register(&host, &[1; 32], 1).await.expect("host");
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let q = Samples::start(Arc::clone(&store), stop.clone(), &tracker);
        for at in 10..20 {
            q.push("h", SampleKind::Metrics, at, format!("{{\"at\":{at}}}"))
                .await;
        }
        stop.cancel();
        q.seen("h", 99).await;
        tracker.close();
        tracker.wait().await;
        let stored = store
            .samples("h", SampleKind::Metrics, 100)
            .await
            .expect("samples");
        assert_eq!(stored.len(), 10);
        assert_eq!(stored[0].0, 19, "newest first");
        assert_eq!(store.host("h").await.expect("host").last_seen, Some(99));
    }
}
