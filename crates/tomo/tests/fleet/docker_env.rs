//! `DockerEnv`: the real Docker engine, the local test image and the test registry that
//! `scripts/docker-test-env` prepares, for the tests that need them.
//!
//! - `TOMO_TEST_IMAGE` (default `tomo-test/busybox:latest`): a small local image with busybox in it;
//!   it is never pulled from a public registry.
//! - `TOMO_TEST_REGISTRY` (default `127.0.0.1:5055`): a plain-HTTP registry on the loopback.
//! - `TOMO_REQUIRE_DOCKER=1` (set by `scripts/test` under CI): a missing engine, image or registry
//!   fails the test instead of skipping it.
//!
//! Every object a test creates is named with `DockerEnv::unique`, so `cleanup` can find it, and every
//! test container runs with network mode `none`.

use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptions,
    ListNetworksOptions, ListVolumesOptions, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::TryStreamExt as _;

const DEFAULT_IMAGE: &str = "tomo-test/busybox:latest";
const DEFAULT_REGISTRY: &str = "127.0.0.1:5055";
/// How long the engine and the registry get to answer a probe.
const PROBE: Duration = Duration::from_secs(10);

/// A Docker engine with the test image, and the test registry when asked for.
#[derive(Debug)]
pub struct DockerEnv {
    /// Connected with a negotiated API version.
    pub docker: Docker,
    /// The test image (`TOMO_TEST_IMAGE`), present locally.
    pub image: String,
    /// `host:port` of the test registry; `Some` only from `with_registry`.
    pub registry: Option<String>,
}

impl DockerEnv {
    /// The engine (negotiated API version) and the test image, or None after printing a loud
    /// "SKIPPED: no Docker engine/test image: <why>" to stderr. With TOMO_REQUIRE_DOCKER=1 it panics
    /// instead.
    pub async fn get() -> Option<DockerEnv> {
        match Self::connect().await {
            Ok(env) => Some(env),
            Err(why) => skip(&why),
        }
    }

    /// Like get(), but also requires the registry (TOMO_TEST_REGISTRY, default 127.0.0.1:5055,
    /// checked with GET /v2/).
    pub async fn with_registry() -> Option<DockerEnv> {
        let mut env = Self::get().await?;
        let registry = var("TOMO_TEST_REGISTRY").unwrap_or_else(|| DEFAULT_REGISTRY.to_owned());
        match probe_registry(&registry).await {
            Ok(()) => {
                env.registry = Some(registry);
                Some(env)
            }
            Err(why) => skip(&format!(
                "no test registry at http://{registry}/v2/ ({why}); run scripts/docker-test-env"
            )),
        }
    }

    /// "tomo-test-<what>-<8 random hex>": every object a test creates is named with this.
    pub fn unique(what: &str) -> String {
        format!("tomo-test-{what}-{:08x}", fastrand::u32(..))
    }

    /// Builds a variant of the test image that contains the file /marker with `marker` as its
    /// content, tags it `<registry>/<repo>:<tag>`, pushes it to the registry and returns that
    /// reference. Used to make "a new version" of an image for update tests.
    ///
    /// The variant is made through the API only: a container is created (never started) from the
    /// test image, the file is uploaded into it, and the container is committed. Needs
    /// `with_registry`; panics on any failure.
    pub async fn push_variant(&self, repo: &str, tag: &str, marker: &str) -> String {
        let registry = self
            .registry
            .as_deref()
            .expect("push_variant needs DockerEnv::with_registry()");
        let remote_repo = format!("{registry}/{repo}");
        let reference = format!("{remote_repo}:{tag}");
        let scratch = Self::unique("variant");
        self.create(&scratch, &self.image).await;
        let made = async {
            self.docker
                .upload_to_container(
                    &scratch,
                    Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                    bollard::body_full(tar_with_file("marker", marker.as_bytes()).into()),
                )
                .await
                .map_err(|e| format!("upload /marker: {e}"))?;
            // An empty config keeps the test image's own (CMD, ENV): the container's is merged in.
            self.docker
                .commit_container(
                    CommitContainerOptionsBuilder::new()
                        .container(&scratch)
                        .repo(&remote_repo)
                        .tag(tag)
                        .pause(false)
                        .comment("tomo test variant")
                        .build(),
                    ContainerConfig::default(),
                )
                .await
                .map_err(|e| format!("commit: {e}"))
        }
        .await;
        self.remove_container(&scratch).await;
        if let Err(e) = made {
            panic!("push_variant {reference}: {e}");
        }
        self.docker
            .push_image(
                &remote_repo,
                Some(PushImageOptionsBuilder::new().tag(tag).build()),
                None,
            )
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("push {reference}: {e}"));
        reference
    }

    /// Removes every container (force), network and volume whose name starts with `prefix`, and
    /// images whose repo tag contains `prefix`. Best effort: failures are printed, never fatal.
    pub async fn cleanup(&self, prefix: &str) {
        let d = &self.docker;
        let all = ListContainersOptionsBuilder::new().all(true).build();
        for c in d.list_containers(Some(all)).await.unwrap_or_default() {
            let named = c
                .names
                .iter()
                .flatten()
                .any(|n| n.trim_start_matches('/').starts_with(prefix));
            if let (true, Some(id)) = (named, c.id.as_deref()) {
                self.remove_container(id).await;
            }
        }
        let networks = d.list_networks(None::<ListNetworksOptions>).await;
        for n in networks.unwrap_or_default() {
            if let Some(name) = n.name.filter(|n| n.starts_with(prefix)) {
                report(&name, d.remove_network(&name).await);
            }
        }
        let volumes = d.list_volumes(None::<ListVolumesOptions>).await;
        for v in volumes.ok().and_then(|v| v.volumes).unwrap_or_default() {
            if v.name.starts_with(prefix) {
                let force = RemoveVolumeOptionsBuilder::new().force(true).build();
                report(&v.name, d.remove_volume(&v.name, Some(force)).await);
            }
        }
        for image in d
            .list_images(None::<ListImagesOptions>)
            .await
            .unwrap_or_default()
        {
            for t in image.repo_tags.iter().filter(|t| t.contains(prefix)) {
                let force = RemoveImageOptionsBuilder::new().force(true).build();
                report(t, d.remove_image(t, Some(force), None).await.map(drop));
            }
            // An image that lost its tag to a newer push keeps only its digest (`<none>`).
            let untagged_ours = image.repo_tags.iter().all(|t| t == "<none>:<none>")
                && image.repo_digests.iter().any(|t| t.contains(prefix));
            if untagged_ours {
                let force = RemoveImageOptionsBuilder::new().force(true).build();
                report(
                    &image.id,
                    d.remove_image(&image.id, Some(force), None).await.map(drop),
                );
            }
        }
    }

    /// Creates (does not start) a container named `name` from `image`, with network mode `none`.
    pub async fn create(&self, name: &str, image: &str) {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("create container {name} from {image}: {e}"));
    }

    /// The content of the regular file `path` in container `container` (running or not).
    pub async fn read_file(&self, container: &str, path: &str) -> Vec<u8> {
        let tar = self
            .docker
            .download_from_container(
                container,
                Some(
                    DownloadFromContainerOptionsBuilder::new()
                        .path(path)
                        .build(),
                ),
            )
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .unwrap_or_else(|e| panic!("read {path} from {container}: {e}"));
        file_in_tar(&tar).unwrap_or_else(|| panic!("{path} in {container} is not a regular file"))
    }

    async fn remove_container(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        report(id, self.docker.remove_container(id, Some(opts)).await);
    }

    async fn connect() -> Result<DockerEnv, String> {
        let image = var("TOMO_TEST_IMAGE").unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        let docker = Docker::connect_with_defaults().map_err(|e| format!("connect: {e}"))?;
        let docker = tokio::time::timeout(PROBE, docker.negotiate_version())
            .await
            .map_err(|_| "the engine did not answer in time".to_owned())?
            .map_err(|e| format!("engine unavailable: {e}"))?;
        match tokio::time::timeout(PROBE, docker.inspect_image(&image)).await {
            Ok(Ok(_)) => Ok(DockerEnv {
                docker,
                image,
                registry: None,
            }),
            Ok(Err(e)) => Err(format!(
                "test image {image}: {e}; run scripts/docker-test-env"
            )),
            Err(_) => Err("the engine did not answer in time".to_owned()),
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn skip<T>(why: &str) -> Option<T> {
    if var("TOMO_REQUIRE_DOCKER").is_some_and(|v| v != "0") {
        panic!("TOMO_REQUIRE_DOCKER is set, but there is no Docker engine/test image: {why}");
    }
    eprintln!("SKIPPED: no Docker engine/test image: {why}");
    None
}

/// GET http://<registry>/v2/ must answer 200 (an open registry, no auth).
async fn probe_registry(registry: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(PROBE)
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http
        .get(format!("http://{registry}/v2/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("GET /v2/ answered {}", resp.status()))
    }
}

/// Prints a failed removal, except for objects that are already gone.
fn report(what: &str, r: Result<(), bollard::errors::Error>) {
    match r {
        Ok(()) => {}
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => eprintln!("cleanup: cannot remove {what}: {e}"),
    }
}

/// A tar archive holding one regular file, mode 0644, owned by root.
fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{value:0width$o}", width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
    }
    assert!(name.len() < 100, "tar name too long: {name}");
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], content.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(s.as_bytes());

    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
    tar
}

/// The content of the first regular file in a tar archive.
fn file_in_tar(tar: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    while let Some(header) = tar.get(at..at + 512) {
        if header.iter().all(|&b| b == 0) {
            return None;
        }
        let size_field = String::from_utf8_lossy(&header[124..136]);
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .ok()? as usize;
        let data = at + 512;
        if matches!(header[156], b'0' | 0) {
            return tar.get(data..data + size).map(<[u8]>::to_vec);
        }
        at = data + size.next_multiple_of(512);
    }
    None
}

#[tokio::test]
async fn docker_env_works() {
    let Some(env) = DockerEnv::with_registry().await else {
        return;
    };
    let prefix = DockerEnv::unique("docker-env");
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(round_trip(
        &env, &prefix,
    )))
    .await;
    env.cleanup(&prefix).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    // Nothing named with the prefix is left behind.
    let all = ListContainersOptionsBuilder::new().all(true).build();
    let containers = env.docker.list_containers(Some(all)).await.expect("list");
    assert!(
        !containers
            .iter()
            .flat_map(|c| c.names.iter().flatten())
            .any(|n| n.contains(&prefix)),
        "containers left: {containers:?}"
    );
    let images = env
        .docker
        .list_images(None::<ListImagesOptions>)
        .await
        .expect("list");
    assert!(
        !images
            .iter()
            .flat_map(|i| &i.repo_tags)
            .any(|t| t.contains(&prefix)),
        "images left"
    );
}

/// Pushes a variant, forgets it locally, pulls it back and reads its marker.
async fn round_trip(env: &DockerEnv, prefix: &str) {
    let marker = format!("variant of {prefix}\n");
    let reference = env.push_variant(prefix, "v2", &marker).await;
    let registry = env.registry.as_deref().expect("registry");
    assert_eq!(reference, format!("{registry}/{prefix}:v2"));

    let force = RemoveImageOptionsBuilder::new().force(true).build();
    env.docker
        .remove_image(&reference, Some(force), None)
        .await
        .expect("remove the local copy");
    assert!(
        env.docker.inspect_image(&reference).await.is_err(),
        "{reference} still here"
    );

    env.docker
        .create_image(
            Some(
                CreateImageOptionsBuilder::new()
                    .from_image(&format!("{registry}/{prefix}"))
                    .tag("v2")
                    .build(),
            ),
            None,
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"));

    let reader = format!("{prefix}-reader");
    env.create(&reader, &reference).await;
    let got = env.read_file(&reader, "/marker").await;
    assert_eq!(String::from_utf8_lossy(&got), marker);

    // The variant is still the test image: same command, busybox inside.
    let inspect = env.docker.inspect_image(&reference).await.expect("inspect");
    let cmd = inspect.config.and_then(|c| c.cmd).unwrap_or_default();
    assert_eq!(cmd, vec!["/bin/sh".to_owned()], "CMD of the variant");
    assert!(!env.read_file(&reader, "/bin/busybox").await.is_empty());
}
