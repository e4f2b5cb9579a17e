//! The bind guard: containers the engine starts by itself are judged too (issue 12.1).
//!
//! The agent judges a container's bind sources at every start, restart and update it is asked
//! for (`validate::check_start`). The engine also starts containers on its own: a restart policy
//! after a crash, and every `always`/`unless-stopped` container when dockerd starts (at boot,
//! before the agent). Docker mounts the bind sources again each time, following the symlinks it
//! finds then; a source swapped for a symlink to `/etc` would be mounted without the agent's
//! word. So the agent watches the engine's `start` events of the containers it ran (they carry
//! [`GUARD_LABEL`] with this agent's [`guard_id`]) and, when it starts, every such running container: one whose mounts
//! the bind rules now refuse is killed at once, its restart policy set to `no` (so the engine
//! does not start it again), and the refusal is audited (`engine.start`, denied, with the
//! rule's reason) and logged. Containers not created through tomo are left alone: their owner
//! chose their mounts on the host itself.
//!
//! This is detection after the fact: between the engine's mount and the kill the container runs
//! for the time of one inspect and one judgement (milliseconds). The bind rules that hold at
//! `run` (no source under a directory writable by others, no protected path) keep a local user
//! from swapping a source in the first place; the guard covers an owner of the source itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{
    EventsOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tomo_proto::refs::ContainerRef;

use super::DockerClient;
use crate::audit::Auditor;
use crate::policy::HostPolicy;

/// The label the agent puts on every container it runs, valued [`guard_id`]: each agent's bind
/// guard judges its own containers (two agents on one engine, as in tests, do not judge each
/// other's by the wrong policy).
pub const GUARD_LABEL: &str = "dev.tomo.guard";

/// This agent's value of [`GUARD_LABEL`]: derived from its data directory, stable across
/// restarts and registrations.
pub fn guard_id(data_dir: &std::path::Path) -> String {
    let digest = tomo_common::sha256(data_dir.as_os_str().as_encoded_bytes());
    tomo_common::hex(&digest[..8])
}

/// Pause before subscribing again after the engine went away.
const RETRY: Duration = Duration::from_secs(2);

/// What the guard needs.
pub struct BindGuard {
    /// This agent's [`guard_id`].
    pub id: String,
    pub docker: Arc<DockerClient>,
    pub policy: Arc<HostPolicy>,
    pub host_root: PathBuf,
    pub auditor: Arc<Auditor>,
}

impl std::fmt::Debug for BindGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindGuard")
            .field("host_root", &self.host_root)
            .finish_non_exhaustive()
    }
}

impl BindGuard {
    /// Judges every running guarded container, then every one the engine starts, until `stop`.
    /// Each time the engine comes back (a dockerd restart starts containers again) it judges
    /// the running ones again.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let client = tokio::select! {
                c = self.docker.streaming() => c,
                _ = stop.cancelled() => return,
            };
            let label = format!("{GUARD_LABEL}={}", self.id);
            if let Ok((client, meter)) = client {
                // Subscribed first, then the sweep: a start between the two is seen twice at
                // worst, never missed.
                let filters = [
                    ("type", vec!["container"]),
                    ("event", vec!["start"]),
                    ("label", vec![label.as_str()]),
                ]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>();
                let opts = EventsOptionsBuilder::default().filters(&filters).build();
                let mut events = super::transport::metered(client.events(Some(opts)), meter);
                self.sweep().await;
                loop {
                    let next = tokio::select! {
                        n = events.next() => n,
                        _ = stop.cancelled() => return,
                    };
                    match next {
                        Some(Ok(m)) => {
                            if let Some(id) = m.actor.and_then(|a| a.id) {
                                self.judge(&id).await;
                            }
                        }
                        Some(Err(_)) | None => break,
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Judges every running container that carries the guard label.
    async fn sweep(&self) {
        let Ok(docker) = self.docker.client().await else {
            return;
        };
        let label = format!("{GUARD_LABEL}={}", self.id);
        let filters = [("label", vec![label.as_str()]), ("status", vec!["running"])]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>();
        let opts = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let Ok(list) = docker.list_containers(Some(opts)).await else {
            return;
        };
        for id in list.into_iter().filter_map(|c| c.id) {
            self.judge(&id).await;
        }
    }

    /// Judges the mounts of the running container `id`; stops it when they are refused.
    async fn judge(&self, id: &str) {
        let Ok(r) = ContainerRef::parse(id) else {
            return;
        };
        let lookup = &*self.docker;
        let Ok(Some(c)) = crate::validate::Lookup::container(lookup, &r).await else {
            return;
        };
        let guarded = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .is_some_and(|l| l.get(GUARD_LABEL) == Some(&self.id));
        if !guarded {
            return;
        }
        let Err(refusal) =
            crate::validate::check_binds(&c, &self.policy, &self.host_root, lookup).await
        else {
            return;
        };
        let name = c
            .name
            .as_deref()
            .unwrap_or(id)
            .trim_start_matches('/')
            .to_owned();
        let stopped = self.stop(id).await;
        tracing::warn!(
            container = %name,
            reason = %refusal.message,
            stopped,
            "the engine started a container whose bind mounts the host policy refuses now; it was killed and its restart policy set to no"
        );
        let reason = refusal
            .data
            .as_ref()
            .and_then(|d| d.get("rule"))
            .and_then(|r| r.as_str())
            .unwrap_or("bind")
            .to_owned();
        let mut record = crate::audit::request_record(
            None,
            "engine.start",
            Some(serde_json::json!({ "container": name })),
        );
        record.principal = Some("docker-engine".into());
        record.decision = "denied".into();
        record.reason = Some(reason);
        record.outcome = if stopped {
            "killed".into()
        } else {
            "kill_failed".into()
        };
        record.error = Some(refusal.message);
        self.auditor.record(record);
    }

    /// Kills the container and sets its restart policy to `no`. Whether the kill worked.
    async fn stop(&self, id: &str) -> bool {
        let Ok(docker) = self.docker.client().await else {
            return false;
        };
        let no_restart = bollard::models::ContainerUpdateBody {
            restart_policy: Some(bollard::models::RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        // The policy first: a killed container with `always` would be started again at once.
        let _ = docker.update_container(id, no_restart).await;
        let kill = KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        docker.kill_container(id, Some(kill)).await.is_ok()
    }
}
