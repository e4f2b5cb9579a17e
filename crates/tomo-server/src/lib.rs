//! tomo's control plane: accepts agent sessions on `/agent/ws`, routes JSON-RPC calls to them,
//! keeps hosts, codes, tokens and history in a [`store::Store`], and serves the operator API.
//!
//! Entry point: [`Server::bind`] then [`Server::run`]. The `tomo` binary and the tests use the same.

#![forbid(unsafe_code)]

pub mod admission;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod config;
pub mod core;
pub mod http;
pub mod mcp;
pub mod samples;
pub mod sealer;
pub mod signer;
pub mod store;
pub mod throttle;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tomo_proto::methods::Level;

use crate::agents::hub::Hub;
use crate::config::ServerConfig;
use crate::store::{SqliteStore, Store};

/// TLS handshakes served at once. A crowd of connections (a fleet reconnecting after a restart)
/// is served in turn, each handshake finishing in milliseconds, instead of all of them sharing
/// the CPU and missing the agents' 10 s deadline together (then retrying, and again).
const TLS_HANDSHAKES: usize = 64;

/// How long an accepted connection may wait for its turn at the TLS handshake. A crowd larger
/// than the control plane can serve within the agents' handshake deadline (30 s) is told to come
/// back later this way (the agent backs off with jitter) rather than served too late for the
/// agent to care: a handshake the agent has given up on is work thrown away, and its retry
/// joins the back of the queue again.
pub(crate) const HANDSHAKE_QUEUE: Duration = Duration::from_secs(20);

/// What a running control plane tells its callers.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub local_addr: SocketAddr,
    /// Base URL of the API, e.g. `https://127.0.0.1:7443`.
    pub api_url: String,
    /// URL agents dial, e.g. `wss://127.0.0.1:7443/agent/ws`.
    pub agent_url: String,
    /// The CA clients pin when the certificate is self-signed.
    pub ca_file: Option<PathBuf>,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    pub config: ServerConfig,
    pub info: ServerInfo,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Docker events as they are stored, for followers.
    pub events: tokio::sync::broadcast::Sender<crate::core::events::Live>,
    /// Failed token and registration attempts per source (brute-force throttling).
    pub throttle: throttle::Throttle,
    /// Audit records as they are stored, for followers.
    pub audit: tokio::sync::broadcast::Sender<audit::Live>,
    /// Records on their way to the store (see `audit::writer`).
    pub audit_queue: tokio::sync::mpsc::Sender<audit::Pending>,
    /// When tokens were last used, written to the store once a minute.
    pub last_use: auth::LastUse,
    /// MCP tool calls per token (see `mcp::RateLimits`).
    pub mcp_limits: mcp::RateLimits,
    /// Health and metrics samples and last-seen times on their way to the store (batched).
    pub samples: samples::Samples,
    /// Seals the params of pending actions (`<data>/seal.key`, see `sealer`).
    pub sealer: sealer::ParamSealer,
    /// Approved actions a stop interrupted, waiting for their host's audit (issue 13.2).
    pub interrupted: approvals::Interrupted,
    /// Unauthenticated connections per source (issue 12.5, see `admission`).
    pub admission: admission::Admission,
}

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Signer(#[from] signer::SignerError),
    #[error(transparent)]
    SealKey(#[from] sealer::SealKeyError),
    #[error("the first admin token: {0}")]
    Token(#[from] auth::MintError),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A data directory the control plane cannot write to (a read-only mount, permissions): it
    /// would serve reads and fail every write, the audit's included, so it does not start.
    #[error(
        "the data directory {path} is not writable ({source}); tokens, codes and the audit could not be stored: make it writable (a read-only mount? wrong owner?)"
    )]
    ReadOnly {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, not yet running control plane.
pub struct Server {
    state: Arc<AppState>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The admin token created at first start (no token existed); shown once, stored hashed.
    pub first_admin_token: Option<String>,
    audit_rx: tokio::sync::mpsc::Receiver<audit::Pending>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The admin token is a secret: never in a log.
        f.debug_struct("Server")
            .field("info", &self.state.info)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Validates the configuration, opens the store, prepares TLS and binds the listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        // The port first: a start that cannot listen writes nothing (no keys, no database,
        // no first admin token that would never be shown).
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let dir_err = |source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        };
        tomo_common::fs::create_private_dir(&config.data_dir).map_err(dir_err)?;
        check_writable(&config.data_dir).map_err(|source| ServerError::ReadOnly {
            path: config.data_dir.clone(),
            source,
        })?;
        let tls = tls::load(
            &config.tls,
            &config.data_dir,
            config.public_host().as_deref(),
        )?;
        let signer = Arc::new(signer::CommandSigner::load_or_create(&config.data_dir)?);
        let sealer = sealer::ParamSealer::load_or_create(&config.data_dir)?;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&config.data_dir.join("tomo.db")).await?);
        // Nothing runs yet: an action still `approved` was cut by the last stop.
        let interrupted = approvals::Interrupted::recover(&*store).await?;
        let first_admin_token = if store.count_tokens().await? == 0 {
            Some(
                auth::mint_token(&*store, "admin", Level::Admin, None)
                    .await?
                    .0,
            )
        } else {
            None
        };
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let info = ServerInfo {
            local_addr,
            api_url: config.api_url(local_addr),
            agent_url: config.agent_url(local_addr),
            ca_file: tls.ca_file,
        };
        let (audit_queue, audit_rx) = tokio::sync::mpsc::channel(audit::WRITE_QUEUE);
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        let samples = samples::Samples::start(Arc::clone(&store), shutdown.clone(), &tracker);
        let cap = match config.max_unauthenticated {
            0 => admission::default_cap(),
            n => n,
        };
        tracing::info!(
            per_source = config.unauthenticated_per_source,
            agent_handshakes_per_source = config.agent_handshakes_per_source,
            all_sources = cap,
            "unauthenticated connections admitted at most"
        );
        let admission = admission::Admission::new(
            config.unauthenticated_per_source,
            config.agent_handshakes_per_source,
            cap,
        );
        let state = Arc::new(AppState {
            admission,
            store,
            hub: Hub::new(signer),
            config,
            info,
            shutdown,
            tracker,
            samples,
            events: tokio::sync::broadcast::channel(crate::core::events::FOLLOW_BUFFER).0,
            throttle: throttle::Throttle::new(),
            audit: tokio::sync::broadcast::channel(audit::FOLLOW_BUFFER).0,
            audit_queue,
            last_use: auth::LastUse::default(),
            mcp_limits: mcp::RateLimits::default(),
            sealer,
            interrupted,
        });
        Ok(Self {
            state,
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(tls.config),
            first_admin_token,
            audit_rx,
        })
    }

    pub fn info(&self) -> &ServerInfo {
        &self.state.info
    }

    /// The shared state (tests and `tomo dev` reach the store through it).
    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` is cancelled, then closes every session and returns within the
    /// configured grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            state,
            listener,
            acceptor,
            audit_rx,
            ..
        } = self;
        // Adds each connection's peer address to its requests. (`Router::layer` per connection
        // would rebuild every route's middleware stack at each accept: a third of a fleet's
        // reconnection cost went there.)
        let app = router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
        let pruner = state.tracker.spawn(prune_history(Arc::clone(&state)));
        let audit_writer = tokio::spawn(audit::writer(Arc::clone(&state), audit_rx));
        let last_use = tokio::spawn(auth::flush_last_use(Arc::clone(&state)));
        tracing::info!(api = %state.info.api_url, agents = %state.info.agent_url, "control plane listening");
        let handshakes = Arc::new(tokio::sync::Semaphore::new(TLS_HANDSHAKES));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // A source past its share of unauthenticated connections gets no more: closed unread
            // (issue 12.5, see `admission`).
            let Some(slot) = state.admission.admit(peer.ip()) else {
                tracing::debug!(%peer, "too many unauthenticated connections from this source");
                continue;
            };
            let (acceptor, app, state2) = (acceptor.clone(), app.clone(), Arc::clone(&state));
            let handshakes = Arc::clone(&handshakes);
            state.tracker.spawn(async move {
                let _ = tcp.set_nodelay(true);
                // The first byte before any turn: an idle connection holds only its slot.
                if !admission::first_byte(&tcp, state2.config.first_byte_timeout).await {
                    return tracing::debug!(%peer, "no TLS byte in time");
                }
                // Waiting for a turn is the control plane being busy, not the peer being slow:
                // it has its own, longer bound, and the peer's clock starts with its turn. The
                // source's own turns first, so one source never holds all of them.
                let turns = async {
                    let mine = slot.tls_turn().await?;
                    let turn = handshakes.acquire().await.ok()?;
                    Some((mine, turn))
                };
                let Ok(Some(turn)) = tokio::time::timeout(HANDSHAKE_QUEUE, turns).await else {
                    return tracing::debug!(%peer, "no turn for the TLS handshake in time");
                };
                let handshake =
                    tokio::time::timeout(state2.config.handshake_timeout, acceptor.accept(tcp)).await;
                // The turn is the handshake's only, not the connection's.
                drop(turn);
                let tls = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                // The connection's TLS channel binding (RFC 9266), for the agent handshake: what
                // an agent signs must name this very connection (issue 12.4).
                let binding = tomo_common::tls::channel_binding(tls.get_ref().1);
                // The peer's address, for the audit trail's per-source bound on 401s.
                let mut app = app;
                let svc = match tower_service::Service::call(&mut app, peer).await {
                    Ok(svc) => svc,
                    Err(never) => match never {},
                };
                // Each request carries the connection's slot (authenticating releases it) and
                // its channel binding.
                let svc = hyper::service::service_fn(move |mut req: ::http::Request<_>| {
                    req.extensions_mut().insert(slot.clone());
                    if let Some(b) = binding {
                        req.extensions_mut().insert(b);
                    }
                    tower_service::Service::call(&mut svc.clone(), req)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "HTTP connection error") },
                    _ = state2.shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_millis(500), conn).await;
                    }
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: closing agent sessions");
        state.shutdown.cancel();
        state.hub.kick_all();
        pruner.abort();
        state.tracker.close();
        if tokio::time::timeout(state.config.shutdown_grace, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish within the grace period");
        }
        // The writer stores what is still queued, then stops (it watches the shutdown token).
        if tokio::time::timeout(Duration::from_secs(5), audit_writer)
            .await
            .is_err()
        {
            tracing::warn!("the audit writer did not finish in time");
        }
        let _ = last_use.await;
        if let Err(e) = state.last_use.flush(&*state.store).await {
            tracing::warn!(error = %e, "cannot record when tokens were last used");
        }
        state.store.close().await;
        tracing::info!("control plane stopped");
    }
}

/// Whether the data directory and the database in it take writes (issue 13.9): a probe file is
/// written and removed, and an existing `tomo.db` opened for writing. A full disk is not a
/// reason to refuse to start (the store answers 507 and recovers when space returns); a
/// read-only file system or missing permission is.
fn check_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let refuses = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
        )
    };
    let probe = dir.join(".write-probe");
    let written = std::fs::write(&probe, b"tomo").and_then(|()| std::fs::remove_file(&probe));
    match written {
        Err(e) if refuses(&e) => return Err(e),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "the data directory takes no writes now; writes will fail until it does")
        }
        Ok(()) => {}
    }
    let db = dir.join("tomo.db");
    if db.exists() {
        match std::fs::OpenOptions::new().append(true).open(&db) {
            Err(e) if refuses(&e) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/agent/ws", get(http::agent_upgrade::upgrade))
        .nest("/api/v1", http::api::router(Arc::clone(&state)))
        .merge(mcp::router(Arc::clone(&state)))
        // An unknown route and a known route's unknown method answer in the API's error shape.
        .fallback(http::api::no_route)
        .method_not_allowed_fallback(http::api::no_method)
        .with_state(state)
}

/// Deletes history older than the retention, every ten minutes.
async fn prune_history(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let before = tomo_common::now_ms() - state.config.history_retention.as_millis() as i64;
        match state.store.prune_samples(before).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "pruned history"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune history"),
        }
        match state
            .store
            .prune_docker_events(before, crate::core::events::KEEP_PER_HOST)
            .await
        {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "pruned Docker events"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune Docker events"),
        }
        let audit_before = tomo_common::now_ms() - state.config.audit_retention.as_millis() as i64;
        match state.store.prune_audit(audit_before).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "pruned audit records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune audit records"),
        }
    }
}
