//! The connection under bollard: every byte the agent reads from the engine is counted against a
//! cap (issue 12.2), so that no answer from Docker can grow the agent's memory without bound.
//!
//! bollard reads a whole body into memory before decoding it (inspect, lists, `info`, `df`), and
//! its stream decoders buffer until a frame or a line is complete. A body cannot be wrapped from
//! outside bollard (its transports hand back hyper's own body type), so the count happens one
//! layer down: each request gets its own connection (as bollard's own transports do, no pooling)
//! whose reads pass through [`Counting`]. Past the cap a read fails with [`BodyTooLarge`] inside
//! an `io::Error`; hyper fails the body with it, bollard returns it as the call's error, and
//! [`too_large`] finds it by type through `source()`.
//!
//! Two budgets: a whole-body call gets [`Meter`] of its own per request (the answer, headers
//! included, at most the cap); a stream ([`DockerClient::streaming`](super::DockerClient::streaming))
//! shares one meter with its consumer, which resets it at each item it takes ([`metered`]), so
//! the cap bounds what is read from Docker between two items, however long the stream runs.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bollard::BollardRequest;
use bollard::errors::Error as DockerError;
use futures_util::{Stream, StreamExt as _};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Default cap of one whole-body read from Docker, and of what a stream reads between two items.
pub const DEFAULT_BODY_CAP: usize = 4 * 1024 * 1024;

/// An answer from Docker went past the agent's cap for one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Docker's answer is larger than the agent's cap of {cap} bytes for one read")]
pub struct BodyTooLarge {
    pub cap: usize,
}

/// Bytes read from Docker since the last reset, against a cap.
#[derive(Debug, Clone)]
pub struct Meter {
    read: Arc<AtomicUsize>,
    /// Set once a read went past the cap.
    tripped: Arc<AtomicBool>,
    cap: usize,
}

impl Meter {
    pub fn new(cap: usize) -> Self {
        Self {
            read: Arc::new(AtomicUsize::new(0)),
            tripped: Arc::new(AtomicBool::new(false)),
            cap,
        }
    }

    /// The consumer took an item: what it read so far no longer counts.
    pub fn reset(&self) {
        self.read.store(0, Ordering::Relaxed);
    }

    fn add(&self, n: usize) -> io::Result<()> {
        let total = self.read.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if total > self.cap {
            self.tripped.store(true, Ordering::Relaxed);
            return Err(io::Error::other(BodyTooLarge { cap: self.cap }));
        }
        Ok(())
    }
}

/// The `BodyTooLarge` behind a bollard error. bollard's I/O and hyper variants are
/// `#[error(transparent)]`, whose `source()` skips the error they hold: the walk starts there.
pub fn too_large(e: &DockerError) -> Option<BodyTooLarge> {
    match e {
        DockerError::IOError { err } => cause(err),
        DockerError::HyperResponseError { err } => cause(err),
        other => cause(other),
    }
}

/// The `BodyTooLarge` somewhere in `e`'s chain of causes, looking inside `io::Error`s (whose
/// `source()` also skips the error they carry).
fn cause(e: &(dyn std::error::Error + 'static)) -> Option<BodyTooLarge> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<BodyTooLarge>() {
            return Some(*t);
        }
        cur = match err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Resets `meter` at every item `stream` yields (see the module doc). bollard turns a body's
/// read error into text on its streams, so an error after the meter tripped is given back as
/// the [`BodyTooLarge`] it was.
pub fn metered<T, S>(stream: S, meter: Meter) -> impl Stream<Item = S::Item> + Unpin
where
    S: Stream<Item = Result<T, DockerError>> + Unpin,
{
    stream.map(move |item| {
        meter.reset();
        match item {
            Err(_) if meter.tripped.load(Ordering::Relaxed) => Err(DockerError::IOError {
                err: io::Error::other(BodyTooLarge { cap: meter.cap }),
            }),
            other => other,
        }
    })
}

/// A connection whose reads are counted.
#[derive(Debug)]
pub struct Counting<S> {
    inner: S,
    meter: Meter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => Poll::Ready(this.meter.add(buf.filled().len() - before)),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How to reach the engine.
#[derive(Clone)]
pub enum Dial {
    Unix(PathBuf),
    Tls {
        /// `host:port`.
        addr: String,
        host: rustls::pki_types::ServerName<'static>,
        connector: tokio_rustls::TlsConnector,
    },
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "Unix({})", p.display()),
            Self::Tls { addr, .. } => write!(f, "Tls({addr})"),
        }
    }
}

impl Dial {
    /// A TLS endpoint (`https://host:port`) verified against `ca.pem`, with the client
    /// certificate `cert.pem` and key `key.pem` of `cert_dir`, as the Docker CLI does.
    pub fn tls(addr: &str, cert_dir: &std::path::Path) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let addr = addr.trim_start_matches("https://").trim_end_matches('/');
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let host = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("DOCKER_HOST {addr}: {e}"))?;
        let read = |name: &str| {
            let path = cert_dir.join(name);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let roots =
            tomo_common::tls::load_roots(&cert_dir.join("ca.pem")).map_err(|e| e.to_string())?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("cert.pem")?)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cert.pem: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&read("key.pem")?)
            .map_err(|e| format!("key.pem: {e}"))?;
        let config = rustls::ClientConfig::builder_with_provider(tomo_common::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("client certificate: {e}"))?;
        Ok(Self::Tls {
            addr: addr.to_owned(),
            host,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    fn host_header(&self) -> String {
        match self {
            Self::Unix(_) => "docker".to_owned(),
            Self::Tls { addr, .. } => addr.clone(),
        }
    }

    /// Sends `req` on a connection of its own whose reads count against `meter`.
    async fn send(
        self: Arc<Self>,
        req: BollardRequest,
        meter: Meter,
    ) -> Result<hyper::Response<Incoming>, DockerError> {
        let req = origin_form(req, &self.host_header())?;
        match &*self {
            Self::Unix(path) => {
                let io = UnixStream::connect(path).await?;
                exchange(Counting { inner: io, meter }, req).await
            }
            Self::Tls {
                addr,
                host,
                connector,
            } => {
                let tcp = TcpStream::connect(addr.as_str()).await?;
                let tls = connector.connect(host.clone(), tcp).await?;
                exchange(Counting { inner: tls, meter }, req).await
            }
        }
    }
}

/// HTTP/1.1 on `io`: the request, then the answer (upgrades kept working for exec).
async fn exchange<S>(
    io: Counting<S>,
    req: BollardRequest,
) -> Result<hyper::Response<Incoming>, DockerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "Docker connection ended");
        }
    });
    Ok(sender.send_request(req).await?)
}

/// bollard builds absolute URIs (`http://docker/v1.47/...`); on a connection of our own the
/// request line carries the path and query, and the `Host` header the authority.
fn origin_form(req: BollardRequest, host: &str) -> Result<BollardRequest, DockerError> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = path.parse::<hyper::Uri>()?;
    if !parts.headers.contains_key(hyper::header::HOST) {
        let value = hyper::header::HeaderValue::from_str(host).map_err(http::Error::from)?;
        parts.headers.insert(hyper::header::HOST, value);
    }
    Ok(BollardRequest::from_parts(parts, body))
}

/// Which budget a client's requests get.
#[derive(Debug, Clone)]
enum Budget {
    /// A fresh meter of this cap for every request (whole-body calls).
    PerRequest(usize),
    /// One meter, reset by the stream's consumer.
    Shared(Meter),
}

/// bollard's transport: one counted connection per request.
#[derive(Debug, Clone)]
pub struct Transport {
    dial: Arc<Dial>,
    budget: Budget,
}

impl Transport {
    /// Every request gets `cap` bytes.
    pub fn per_request(dial: Arc<Dial>, cap: usize) -> Self {
        Self {
            dial,
            budget: Budget::PerRequest(cap),
        }
    }

    /// Every request reads against `meter`.
    pub fn shared(dial: Arc<Dial>, meter: Meter) -> Self {
        Self {
            dial,
            budget: Budget::Shared(meter),
        }
    }
}

impl Transport {
    /// Sends one request (bollard's custom transport calls this).
    pub fn request(
        &self,
        request: BollardRequest,
    ) -> Pin<Box<dyn Future<Output = Result<hyper::Response<Incoming>, DockerError>> + Send>> {
        let meter = match &self.budget {
            Budget::PerRequest(cap) => Meter::new(*cap),
            Budget::Shared(m) => m.clone(),
        };
        Box::pin(Arc::clone(&self.dial).send(request, meter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_is_found_by_type_through_io_and_hyper_layers() {
        let meter = Meter::new(10);
        assert!(meter.add(10).is_ok());
        let io = meter.add(1).expect_err("past the cap");
        assert_eq!(cause(&io), Some(BodyTooLarge { cap: 10 }));
        // bollard's error for an I/O failure, and an io::Error wrapping another one.
        let wrapped = DockerError::IOError {
            err: io::Error::other(io),
        };
        assert_eq!(too_large(&wrapped), Some(BodyTooLarge { cap: 10 }));
        let plain = DockerError::IOError {
            err: io::Error::other("connection reset"),
        };
        assert_eq!(too_large(&plain), None);
        meter.reset();
        assert!(meter.add(10).is_ok());
    }

    #[tokio::test]
    async fn a_stream_error_after_the_meter_tripped_is_the_cap() {
        let meter = Meter::new(4);
        let _ = meter.add(5);
        let lost = || DockerError::IOError {
            err: io::Error::other("error reading a body from connection"),
        };
        let items = futures_util::stream::iter(vec![Ok(1), Err(lost())]);
        let got: Vec<_> = metered(items, meter).collect().await;
        assert!(got[0].is_ok());
        let e = got[1].as_ref().expect_err("error");
        assert_eq!(too_large(e), Some(BodyTooLarge { cap: 4 }));
        // Without a trip an error stays what it was.
        let items = futures_util::stream::iter(vec![Err::<u8, _>(lost())]);
        let got: Vec<_> = metered(items, Meter::new(4)).collect().await;
        assert_eq!(too_large(got[0].as_ref().expect_err("error")), None);
    }

    #[test]
    fn requests_go_out_in_origin_form_with_a_host() {
        let req = hyper::Request::builder()
            .uri("http://docker/v1.47/containers/json?all=true")
            .body(bollard::body_full(bytes_empty()))
            .expect("request");
        let out = origin_form(req, "docker").expect("origin form");
        assert_eq!(out.uri().to_string(), "/v1.47/containers/json?all=true");
        assert_eq!(out.headers()[hyper::header::HOST], "docker");
    }

    fn bytes_empty() -> hyper::body::Bytes {
        hyper::body::Bytes::new()
    }
}
