//! Image pulls: `docker.images.pull` (with an optional progress stream) and the [`pull`] that
//! `docker.containers.run` and `docker.containers.update` use.
//!
//! A reference without a tag is pulled as `:latest` (Docker's API would otherwise pull every tag
//! of the repository); a digest reference (`name@sha256:…`) is kept as it is. Registry
//! credentials go to Docker in its `X-Registry-Auth` header and nowhere else: they are never
//! logged, stored or echoed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::models::CreateImageInfo;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use tomo_proto::methods::{PullParams, PullProgress, PullResult, RegistryAuth, Streamed};
use tomo_proto::refs::ImageRef;
use tomo_proto::rpc::{RpcError, code};

use super::DockerClient;
use crate::dispatch::Ctx;
use crate::stream::StreamSink;

/// Shortest time between two progress messages of one layer with an unchanged status.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// `docker.images.pull`: the [`PullResult`] at once, or with `progress` a stream of
/// [`PullProgress`] whose `stream.end` carries the [`PullResult`].
pub async fn pull_handler(ctx: Ctx, p: PullParams) -> Result<Streamed<PullResult>, RpcError> {
    crate::validate::check_image(p.image.as_str(), &ctx.shared.policy)?;
    // An unreachable engine is an error answer, not a stream that ends at once.
    ctx.shared.docker.client().await?;
    if !p.progress {
        let result = pull(&ctx.shared.docker, &p.image, p.auth.as_ref(), None).await?;
        return Ok(Streamed::Done(result));
    }
    let (opened, mut sink, _) = ctx.open_stream(false)?;
    let docker = std::sync::Arc::clone(&ctx.shared.docker);
    tokio::spawn(async move {
        let outcome = pull(&docker, &p.image, p.auth.as_ref(), Some(&mut sink)).await;
        let outcome = outcome.map(|r| serde_json::to_value(r).ok());
        sink.end(outcome).await;
    });
    Ok(Streamed::Stream(opened))
}

/// Pulls `image` (see the module doc for references), sending progress to `progress` when given.
/// Returns the reference pulled and the local image id it now names.
///
/// A closed progress stream stops the pull with an error. Docker's "not found" answers (unknown
/// repository, tag or manifest) are -32014; other failures -32003 with Docker's message.
pub async fn pull(
    docker_client: &DockerClient,
    image: &ImageRef,
    auth: Option<&RegistryAuth>,
    mut progress: Option<&mut StreamSink>,
) -> Result<PullResult, RpcError> {
    let reference = normalize_reference(image.as_str())?;
    // Progress is a stream: capped between two messages.
    let (docker, meter) = docker_client.streaming().await?;
    let options = CreateImageOptionsBuilder::default()
        .from_image(reference.as_str())
        .build();
    let mut stream = super::transport::metered(
        docker.create_image(Some(options), None, auth.map(credentials)),
        meter,
    );
    let mut coalescer = Coalescer::default();
    loop {
        let next = match progress.as_deref() {
            Some(sink) => tokio::select! {
                item = stream.next() => Next::Item(item),
                _ = sink.closed() => Next::Closed,
            },
            None => Next::Item(stream.next().await),
        };
        let info = match next {
            Next::Closed => return Err(stopped()),
            Next::Item(None) => break,
            Next::Item(Some(item)) => item.map_err(|e| docker_client.error(e))?,
        };
        if let Some(message) = stream_error(&info) {
            return Err(pull_failed(reference.as_str(), &message));
        }
        if let Some(sink) = progress.as_deref_mut() {
            let p = to_progress(info);
            if coalescer.admit(&p, Instant::now()) && sink.send(&p).await.is_err() {
                return Err(stopped());
            }
        }
    }
    let id = local_id(docker_client, &reference).await?.ok_or_else(|| {
        RpcError::new(
            code::DOCKER,
            format!("Docker reported pulling {reference} but does not have it"),
        )
    })?;
    Ok(PullResult {
        image: reference.into(),
        id,
    })
}

/// The id of a local image, `None` when the host does not have it.
pub async fn local_id(
    docker_client: &DockerClient,
    image: &ImageRef,
) -> Result<Option<String>, RpcError> {
    let docker = docker_client.client().await?;
    match docker.inspect_image(image.as_str()).await {
        Ok(i) => Ok(i.id),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(docker_client.error(e)),
    }
}

/// The reference Docker is asked to pull: trimmed, parsed ([`ImageRef`], -32602 naming `image`
/// when it does not follow Docker's grammar), with `:latest` when it has neither tag nor digest.
/// A tag is a `:` after the last `/` (`127.0.0.1:5055/app` has none).
pub fn normalize_reference(image: &str) -> Result<ImageRef, RpcError> {
    let parsed = image_ref("image", image)?;
    let s = parsed.as_str();
    let last = s.rsplit('/').next().unwrap_or(s);
    if s.contains('@') || s.starts_with("sha256:") || last.contains(':') {
        return Ok(parsed);
    }
    image_ref("image", &format!("{s}:latest"))
}

/// `image` (trimmed) as an [`ImageRef`]; -32602 naming `param` when it is not one.
pub fn image_ref(param: &str, image: &str) -> Result<ImageRef, RpcError> {
    ImageRef::parse(image.trim()).map_err(|e| {
        RpcError::invalid_params(format!("{param}: {e}"))
            .with_data(serde_json::json!({ "param": param }))
    })
}

enum Next {
    Item(Option<Result<CreateImageInfo, bollard::errors::Error>>),
    Closed,
}

fn credentials(auth: &RegistryAuth) -> DockerCredentials {
    DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.clone()),
        serveraddress: auth.server.clone(),
        ..Default::default()
    }
}

fn stopped() -> RpcError {
    RpcError::new(code::DOCKER, "pull stopped: the progress stream was closed")
}

/// An error Docker reports inside the pull's message stream.
fn stream_error(info: &CreateImageInfo) -> Option<String> {
    let detail = info.error_detail.as_ref().and_then(|d| d.message.clone());
    info.error.clone().or(detail).filter(|m| !m.is_empty())
}

/// Errors inside the pull stream come from Docker as text only (no status code), so a not-found
/// can only be told by its wording: registries say "manifest unknown" / "not found", Docker says
/// "repository does not exist".
fn pull_failed(reference: &str, message: &str) -> RpcError {
    let lower = message.to_ascii_lowercase();
    let not_found = [
        "not found",
        "manifest unknown",
        "does not exist",
        "name unknown",
    ]
    .iter()
    .any(|m| lower.contains(m));
    if not_found {
        RpcError::new(
            code::NOT_FOUND,
            format!("not found: pulling {reference}: {message}"),
        )
    } else {
        RpcError::new(
            code::DOCKER,
            format!("Docker error: pulling {reference}: {message}"),
        )
    }
}

fn to_progress(info: CreateImageInfo) -> PullProgress {
    let detail = info.progress_detail.unwrap_or_default();
    PullProgress {
        layer: info.id.filter(|id| !id.is_empty()),
        status: info.status.unwrap_or_default(),
        current: detail
            .current
            .filter(|_| detail.total.is_some_and(|t| t > 0)),
        total: detail.total.filter(|t| *t > 0),
    }
}

/// Lets through at most one message per [`PROGRESS_EVERY`] per layer while its status stays the
/// same; a new status, and a message about no layer, always pass.
#[derive(Debug, Default)]
struct Coalescer {
    last: HashMap<String, (Instant, String)>,
}

impl Coalescer {
    fn admit(&mut self, p: &PullProgress, now: Instant) -> bool {
        let Some(layer) = &p.layer else {
            return true;
        };
        match self.last.get_mut(layer) {
            Some((at, status))
                if *status == p.status && now.duration_since(*at) < PROGRESS_EVERY =>
            {
                false
            }
            Some((at, status)) => {
                *at = now;
                status.clone_from(&p.status);
                true
            }
            None => {
                self.last.insert(layer.clone(), (now, p.status.clone()));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let ok = [
            ("busybox", "busybox:latest"),
            (" busybox ", "busybox:latest"),
            ("busybox:1.36", "busybox:1.36"),
            ("library/busybox", "library/busybox:latest"),
            (
                "127.0.0.1:5055/tomo-test/busybox",
                "127.0.0.1:5055/tomo-test/busybox:latest",
            ),
            (
                "127.0.0.1:5055/tomo-test/busybox:v2",
                "127.0.0.1:5055/tomo-test/busybox:v2",
            ),
            ("registry:5000/a/b", "registry:5000/a/b:latest"),
            (
                "busybox@sha256:0123456789abcdef0123456789abcdef",
                "busybox@sha256:0123456789abcdef0123456789abcdef",
            ),
            (
                "r:5000/b:1@sha256:0123456789abcdef0123456789abcdef",
                "r:5000/b:1@sha256:0123456789abcdef0123456789abcdef",
            ),
        ];
        for (input, want) in ok {
            assert_eq!(
                normalize_reference(input)
                    .ok()
                    .as_ref()
                    .map(ImageRef::as_str),
                Some(want),
                "{input}"
            );
        }
        for bad in [
            "",
            "  ",
            "bus box",
            "busybox:",
            "/busybox",
            "busybox@",
            "a\tb",
            "busybox#x",
            "a?b",
        ] {
            let e = normalize_reference(bad).expect_err(bad);
            assert_eq!(e.code, code::INVALID_PARAMS, "{bad}");
            assert_eq!(e.data, Some(serde_json::json!({"param": "image"})), "{bad}");
        }
    }

    #[test]
    fn progress_is_coalesced_per_layer() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        let msg = |layer: Option<&str>, status: &str| PullProgress {
            layer: layer.map(str::to_owned),
            status: status.into(),
            ..Default::default()
        };
        let downloading = msg(Some("a"), "Downloading");
        let mut admitted = 0;
        for ms in 0..1000u64 {
            if c.admit(&downloading, t0 + Duration::from_millis(ms)) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10, "one a second per 100 ms");
        let t1 = t0 + Duration::from_millis(1000);
        assert!(c.admit(&msg(Some("b"), "Downloading"), t1), "another layer");
        assert!(
            c.admit(&msg(Some("a"), "Download complete"), t1),
            "new status"
        );
        assert!(!c.admit(&msg(Some("a"), "Download complete"), t1));
        assert!(c.admit(&msg(None, "Digest: sha256:x"), t1), "no layer");
        assert!(c.admit(&msg(None, "Digest: sha256:x"), t1));
    }

    #[test]
    fn progress_mapping_and_errors() {
        let info = CreateImageInfo {
            id: Some("abc".into()),
            status: Some("Downloading".into()),
            progress_detail: Some(bollard::models::ProgressDetail {
                current: Some(5),
                total: Some(10),
            }),
            ..Default::default()
        };
        assert_eq!(
            to_progress(info),
            PullProgress {
                layer: Some("abc".into()),
                status: "Downloading".into(),
                current: Some(5),
                total: Some(10)
            }
        );
        let e = pull_failed(
            "x:latest",
            "manifest for x:latest not found: manifest unknown",
        );
        assert_eq!(e.code, code::NOT_FOUND);
        let e = pull_failed("x:latest", "toomanyrequests: slow down");
        assert_eq!(e.code, code::DOCKER);
        assert!(e.message.contains("toomanyrequests"));
        let creds = credentials(&RegistryAuth {
            username: "u".into(),
            password: "p".into(),
            server: Some("r:5000".into()),
        });
        assert_eq!(creds.username.as_deref(), Some("u"));
        assert_eq!(creds.password.as_deref(), Some("p"));
        assert_eq!(creds.serveraddress.as_deref(), Some("r:5000"));
    }
}
