//! Containers that exist on the host while a benchmark runs, so that `docker.containers.list`
//! has something to list. They are made straight through the Docker API (the benchmark's own
//! setup, not a path it measures), isolated (network `none`), labelled `tomo.bench=1`, named
//! `tomo-bench-<n>-<random>`, and removed at the end, also after an error or Ctrl-C.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use tomo_agent::docker::{DockerClient, Endpoint};

/// The label every benchmark container carries.
pub const LABEL: &str = "tomo.bench";

/// The engine the agent uses (same `DOCKER_HOST` rules), with a negotiated API version.
pub async fn engine() -> anyhow::Result<Docker> {
    DockerClient::new(Endpoint::from_env())
        .client()
        .await
        .map_err(|e| anyhow!("{}", e.message))
        .context("no Docker engine (start dockerd, or run scripts/docker-test-env)")
}

/// Containers this run created; [`Containers::remove`] takes them away.
#[derive(Debug)]
pub struct Containers {
    docker: Docker,
    /// Container ids, in creation order.
    ids: Vec<String>,
}

impl Containers {
    /// Creates and starts `n` containers running `sleep 3600` from `image`. On failure, the
    /// ones already made are removed before the error is returned.
    pub async fn create(docker: &Docker, n: usize, image: &str) -> anyhow::Result<Self> {
        let mut made = Self {
            docker: docker.clone(),
            ids: Vec::with_capacity(n),
        };
        let run = tomo_common::hex(&tomo_common::random_bytes::<4>());
        for i in 1..=n {
            let name = format!("tomo-bench-{i}-{run}");
            if let Err(e) = made.create_one(&name, image).await {
                made.remove().await;
                return Err(e);
            }
        }
        Ok(made)
    }

    async fn create_one(&mut self, name: &str, image: &str) -> anyhow::Result<()> {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            labels: Some(HashMap::from([(LABEL.to_owned(), "1".to_owned())])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .with_context(|| {
                format!(
                    "cannot create container {name} from {image} \
                     (run scripts/docker-test-env, or set TOMO_TEST_IMAGE)"
                )
            })?;
        self.ids.push(created.id.clone());
        self.docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .with_context(|| format!("cannot start container {name}"))?;
        Ok(())
    }

    /// How many containers this run made.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Force-removes every container this run made; failures are reported, not returned.
    pub async fn remove(self) {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        for id in &self.ids {
            if let Err(e) = self.docker.remove_container(id, Some(opts.clone())).await {
                eprintln!("tomo-bench: cannot remove container {id}: {e}");
            }
        }
    }
}
