//! tomo's agent: dials out to the control plane, proves its identity, and serves the methods of
//! [`handlers::table`] over JSON-RPC until told to stop.
//!
//! Entry point: [`Agent::run`]. The binary `tomo-agent` only parses configuration, sets up logging
//! and signals, and calls it; tests call the same function.

#![forbid(unsafe_code)]

pub mod audit;
pub mod backoff;
pub mod cap;
pub mod collect;
pub mod config;
pub mod dispatch;
pub mod docker;
pub mod handlers;
pub mod host;
pub mod idempotency;
pub mod identity;
pub mod pipeline;
pub mod policy;
pub use tomo_common::redact;
pub mod replay;
pub mod session;
pub mod stream;
pub mod system;
pub mod validate;
pub mod vault;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tomo_proto::handshake::{ChannelBinding, Handshake, HostFacts, RefusalReason};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ConfigError};
use crate::docker::DockerClient;
use crate::identity::{Identity, IdentityError, IdentityStore, Keys, Registration};
use crate::session::{Dialer, SessionEnd, SessionError, TlsDialer};

/// This agent's version, reported in facts, pings and health.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State shared by every request handler.
#[derive(Debug)]
pub struct Shared {
    pub facts: host::StaticFacts,
    /// The agent's data directory.
    pub data_dir: std::path::PathBuf,
    /// Base directory of `system.prepare_volumes`.
    pub volume_base: std::path::PathBuf,
    /// Largest single response, bytes.
    pub max_response_bytes: usize,
    pub docker: Arc<DockerClient>,
    pub samples: collect::Samples,
    pub started: Instant,
    /// Runtime settings `agent.update` changes; sessions follow them.
    pub settings: watch::Sender<RuntimeSettings>,
    /// Cancelled by `agent.restart`: the agent closes its session and starts over.
    pub restart: CancellationToken,
    /// The host policy, read from the host (never from the control plane).
    pub policy: Arc<policy::HostPolicy>,
    /// Root of the host's filesystem as the agent sees it; bind sources are resolved under it.
    pub host_root: std::path::PathBuf,
    /// The request pipeline's state: pinned key, replay memory, rate limits.
    pub guard: pipeline::Guard,
    /// The agent's identity files (for `agent.rotate_key`).
    pub identity: Arc<IdentityStore>,
    /// The audit trail: `<data_dir>/audit.log`, and the session's `audit.record` queue.
    pub auditor: Arc<audit::Auditor>,
    /// Commands' idempotency keys: `<data_dir>/idempotency.log`.
    pub idempotency: Arc<idempotency::Keys>,
}

impl Shared {
    /// Handler state around `docker` alone, with default settings, empty samples and `dir` as
    /// data and volume directory: for tests that call handlers without a session.
    pub fn for_tests(docker: Arc<DockerClient>, dir: std::path::PathBuf) -> Self {
        let intervals = config::Intervals::default();
        Self {
            facts: host::StaticFacts::default(),
            policy: Arc::new(policy::HostPolicy::default_for(&dir)),
            host_root: std::path::PathBuf::from("/"),
            auditor: Arc::new(audit::Auditor::new(&dir)),
            idempotency: Arc::new(idempotency::Keys::in_memory()),
            identity: Arc::new(IdentityStore::new(
                dir.clone(),
                Box::new(identity::PlainVault),
            )),
            data_dir: dir.clone(),
            volume_base: dir,
            max_response_bytes: config::DEFAULT_MAX_RESPONSE_BYTES,
            docker,
            samples: collect::Samples {
                metrics: watch::channel(Default::default()).1,
                docker: watch::channel(Default::default()).1,
            },
            started: Instant::now(),
            settings: watch::channel(RuntimeSettings {
                metrics_push: intervals.metrics_push,
                health_push: intervals.health_push,
            })
            .0,
            restart: CancellationToken::new(),
            guard: pipeline::Guard::new(
                replay::ReplayGuard::in_memory(replay::CAPACITY),
                pipeline::DEFAULT_PER_MINUTE,
                pipeline::DEFAULT_CONCURRENT,
            ),
        }
    }
}

/// Settings that can change while the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub metrics_push: std::time::Duration,
    pub health_push: std::time::Duration,
}

/// How [`Agent::run_once`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped for good (shutdown).
    Stopped,
    /// `agent.restart` asked for a fresh start.
    Restart,
}

/// What the agent is doing, for callers that watch it (tests, `tomo dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Starting,
    Connecting,
    Online { agent_id: String },
    Offline { reason: String },
}

/// Checks the command key the control plane offered in `welcome`: at registration against the
/// code's fingerprint, later against the pinned key. Returns the key to trust.
fn pin_command_key(mode: &Mode, offered: &str) -> Result<String, AgentError> {
    let key = tomo_common::unb64(offered)
        .filter(|k| k.len() == 32)
        .ok_or_else(|| {
            AgentError::CommandKey("the control plane's command key is malformed".into())
        })?;
    match mode {
        Mode::Register { fingerprint, .. } => {
            let actual = tomo_proto::handshake::fingerprint_hex(&tomo_common::sha256(&key));
            if &actual != fingerprint {
                return Err(AgentError::CommandKey(format!(
                    "the control plane's command key (fingerprint {actual}) is not the one the registration code names ({fingerprint}): possible man in the middle; not registering"
                )));
            }
        }
        Mode::Authenticate {
            command_key: pinned,
            ..
        } => {
            if pinned != offered {
                return Err(AgentError::CommandKey(
                    "the control plane offers a command key different from the one pinned at registration: possible man in the middle; refusing its commands".into(),
                ));
            }
        }
    }
    Ok(offered.to_owned())
}

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] tomo_common::tls::TlsError),
    #[error(
        "this agent is not registered yet: pass a registration code (--register-code or REGISTER_CODE)"
    )]
    NotRegistered,
    #[error("no server URL: pass --server-url or SERVER_URL")]
    NoServerUrl,
    #[error("the control plane refused this agent ({reason}): {message}")]
    Refused {
        reason: RefusalReason,
        message: String,
    },
    #[error(
        "the registration code has no command-key fingerprint (codes look like rc_<secret>_<fingerprint>); create a new code with `tomo codes create`"
    )]
    CodeWithoutFingerprint,
    /// The control plane offered a command key that is not the one expected: a man in the middle,
    /// or a control plane that lost its key. The agent stops rather than obey it.
    #[error("{0}")]
    CommandKey(String),
    #[error("cannot keep the replay log in the data directory: {0}")]
    State(std::io::Error),
}

impl AgentError {
    /// Whether the error is the operator's to fix in the configuration (exit status 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::NotRegistered
                | Self::NoServerUrl
                | Self::CodeWithoutFingerprint
                | Self::State(_)
                | Self::Tls(_)
                | Self::Identity(
                    IdentityError::Unsealable { .. } | IdentityError::Untrusted { .. }
                )
        )
    }
}

/// A configured agent, ready to run.
pub struct Agent {
    config: AgentConfig,
    dialer: Arc<dyn Dialer>,
    status: watch::Sender<Status>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How the next handshake identifies the agent.
enum Mode {
    Register {
        code: String,
        fingerprint: String,
    },
    Authenticate {
        agent_id: String,
        /// The command key pinned at registration (there is no trust on first use).
        command_key: String,
        /// The next key of a rotation in flight, offered at every authentication until the
        /// control plane welcomes it.
        next: Option<Keys>,
    },
}

impl Agent {
    /// An agent dialing over TLS with the trust its configuration asks for.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        config.validate()?;
        let trust = match (&config.ca_file, config.insecure_dev) {
            (Some(ca), _) => tomo_common::tls::Trust::CaFile(ca.clone()),
            (None, true) => tomo_common::tls::Trust::InsecureDev,
            (None, false) => tomo_common::tls::Trust::WebPki,
        };
        let tls = tomo_common::tls::client_config(&trust)?;
        let insecure = matches!(trust, tomo_common::tls::Trust::InsecureDev);
        Ok(Self::with_dialer(
            config,
            Arc::new(TlsDialer::new(tls, insecure)),
        ))
    }

    /// An agent with its own transport (tests use in-memory pipes).
    pub fn with_dialer(config: AgentConfig, dialer: Arc<dyn Dialer>) -> Self {
        Self {
            config,
            dialer,
            status: watch::channel(Status::Starting).0,
        }
    }

    /// Follows the agent's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` (then returns `Ok` within the shutdown grace period) or a permanent
    /// refusal. Transient failures are retried with backoff; `agent.restart` starts over in
    /// this process.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        while self.run_once(shutdown.clone()).await? == Exit::Restart {
            tracing::info!("restarting as asked by agent.restart");
        }
        Ok(())
    }

    /// Like [`Agent::run`], but returns [`Exit::Restart`] instead of starting over, so that the
    /// binary can replace its process.
    pub async fn run_once(&self, shutdown: CancellationToken) -> Result<Exit, AgentError> {
        let restart = CancellationToken::new();
        let stop = shutdown.child_token();
        let stop_on_restart = {
            let (restart, stop) = (restart.clone(), stop.clone());
            tokio::spawn(async move {
                restart.cancelled().await;
                stop.cancel();
            })
        };
        let result = self.serve_until(stop, restart.clone()).await;
        stop_on_restart.abort();
        result.map(|()| {
            if restart.is_cancelled() && !shutdown.is_cancelled() {
                Exit::Restart
            } else {
                Exit::Stopped
            }
        })
    }

    async fn serve_until(
        &self,
        shutdown: CancellationToken,
        restart: CancellationToken,
    ) -> Result<(), AgentError> {
        // Read again at every (re)start, so that `agent.restart` picks up a changed policy.
        let policy = self.config.protected_paths().iter().fold(
            policy::HostPolicy::load(self.config.policy_path.as_deref(), &self.config.volume_base)
                .map_err(ConfigError::from)?,
            |policy, path| policy.protect(path),
        );
        tracing::info!(source = ?policy.source, max_level = policy::level_name(policy.max_level), read_only = policy.read_only, "host policy loaded");
        let (per_minute, concurrent, reads) = (
            policy.rate_per_minute as usize,
            policy.max_concurrent as usize,
            policy.reads_per_minute as usize,
        );
        let vault = vault::SealedVault::from_config(&self.config)?;
        let store = Arc::new(IdentityStore::new(
            self.config.data_dir.clone(),
            Box::new(vault),
        ));
        let docker = Arc::new(DockerClient::with_body_cap(
            self.config.docker.clone(),
            policy.docker_read_bytes as usize,
        ));
        let collect = || {
            collect::start(
                Arc::clone(&docker),
                self.config.host_root.clone(),
                self.config.intervals.sample,
                shutdown.child_token(),
            )
        };
        // The engine is asked for its first status on another thread while this one unseals the
        // key (a deliberately slow KDF): the two waits overlap instead of adding up at start.
        let first_sample = tokio::spawn(collect());
        let (mut keys, mut mode, url) = self.prepare_identity(&store)?;
        let (samples, sampler) = match first_sample.await {
            Ok(started) => started,
            // Only a panic in the collector gets here: start it again in this task.
            Err(_) => collect().await,
        };
        let sampler = tokio::spawn(sampler);
        let shared = Arc::new(Shared {
            facts: host::static_facts(&self.config.host_root, self.config.hostname.as_deref()),
            policy: Arc::new(policy),
            host_root: self.config.host_root.clone(),
            data_dir: self.config.data_dir.clone(),
            volume_base: self.config.volume_base.clone(),
            max_response_bytes: self.config.max_response_bytes,
            docker,
            samples,
            started: Instant::now(),
            settings: watch::channel(RuntimeSettings {
                metrics_push: self.config.intervals.metrics_push,
                health_push: self.config.intervals.health_push,
            })
            .0,
            restart,
            guard: pipeline::Guard::new(
                replay::ReplayGuard::open(
                    &self.config.data_dir,
                    replay::CAPACITY,
                    tomo_common::now_ms(),
                )
                .map_err(AgentError::State)?,
                per_minute,
                concurrent,
            )
            .with_reads_per_minute(reads),
            auditor: Arc::new(audit::Auditor::new(&self.config.data_dir)),
            idempotency: Arc::new(
                idempotency::Keys::open(&self.config.data_dir, tomo_common::now_ms())
                    .map_err(AgentError::State)?,
            ),
            identity: Arc::clone(&store),
        });
        // Containers the engine starts by itself are judged too (issue 12.1).
        let guard = docker::guard::BindGuard {
            id: docker::guard::guard_id(&shared.data_dir),
            docker: Arc::clone(&shared.docker),
            policy: Arc::clone(&shared.policy),
            host_root: shared.host_root.clone(),
            auditor: Arc::clone(&shared.auditor),
        };
        let guard = tokio::spawn(guard.run(shutdown.child_token()));
        let dispatcher = Arc::new(handlers::table());
        let mut backoff = Backoff::standard();
        let result = loop {
            self.status.send_replace(Status::Connecting);
            let facts = self.facts(&shared);
            let hello =
                |nonce: &str, binding: &ChannelBinding| hello(&mode, &keys, nonce, binding, facts);
            let opened = tokio::select! {
                r = session::open(&*self.dialer, &url, hello, self.config.intervals.handshake_timeout) => r,
                _ = shutdown.cancelled() => break Ok(()),
            };
            match opened {
                Ok((ws, welcomed)) => {
                    let agent_id = welcomed.agent_id.clone();
                    // The id in the welcome must be the one this agent is (its saved id, or at
                    // registration the id its key names), or requests addressed to another
                    // agent would pass the audience check.
                    let expected = match &mode {
                        Mode::Register { .. } => tomo_common::agent_id_for(keys.public_key()),
                        Mode::Authenticate { agent_id, .. } => agent_id.clone(),
                    };
                    if agent_id != expected {
                        break Err(AgentError::CommandKey(format!(
                            "the control plane welcomed this agent as {agent_id}, but it is {expected}: possible man in the middle; refusing its commands"
                        )));
                    }
                    let command_key = match pin_command_key(&mode, &welcomed.command_key) {
                        Ok(k) => k,
                        Err(e) => break Err(e),
                    };
                    // Signed by that key over this agent's key, the challenge and this very
                    // TLS connection: a relay in the middle cannot welcome the agent as itself
                    // (issue 12.4). Checked before anything is saved or trusted.
                    if !tomo_common::hello::welcome_verifies(
                        &command_key,
                        &agent_id,
                        &keys.public_key_b64(),
                        &welcomed.nonce,
                        &welcomed.binding,
                        &welcomed.signature,
                    ) {
                        break Err(AgentError::CommandKey(
                            "the welcome is not signed by the control plane's command key for this TLS connection: possible man in the middle (a TLS-terminating proxy?); refusing its commands".into(),
                        ));
                    }
                    if let Mode::Register { .. } = mode {
                        let reg = Registration {
                            agent_id: agent_id.clone(),
                            server_url: url.clone(),
                            registered_at_ms: tomo_common::now_ms(),
                            command_key: command_key.clone(),
                        };
                        if let Err(e) = store.save_registration(&reg, &keys) {
                            break Err(e.into());
                        }
                        tracing::info!(%agent_id, "registered with the control plane");
                        mode = Mode::Authenticate {
                            agent_id: agent_id.clone(),
                            command_key: command_key.clone(),
                            next: None,
                        };
                    }
                    // The control plane welcomed the next key: it is the key from now on.
                    if let Mode::Authenticate { next, .. } = &mut mode
                        && let Some(n) = next.take()
                    {
                        if let Err(e) = store.promote_next(&keys, &n) {
                            break Err(e.into());
                        }
                        keys = n;
                        tracing::info!("key rotation done: reconnecting with the new key");
                        // Authenticating with the new key alone retires the old one on the
                        // control plane: do it now, not at the next reconnect days later.
                        drop(ws);
                        continue;
                    }
                    shared.guard.set_trust(&agent_id, &command_key);
                    tracing::info!(%agent_id, %url, "connected");
                    backoff.reset();
                    self.status.send_replace(Status::Online { agent_id });
                    let end = session::serve(
                        ws,
                        Arc::clone(&shared),
                        Arc::clone(&dispatcher),
                        self.config.intervals,
                        welcomed.events_since_nanos,
                        welcomed.audit_since_ms,
                        shutdown.clone(),
                    )
                    .await;
                    match end {
                        SessionEnd::Shutdown => break Ok(()),
                        SessionEnd::Lost(reason) => {
                            tracing::warn!(%reason, "disconnected from the control plane");
                            self.status.send_replace(Status::Offline { reason });
                        }
                    }
                }
                Err(SessionError::Refused { reason, message }) if reason.is_permanent() => {
                    self.status.send_replace(Status::Offline {
                        reason: reason.to_string(),
                    });
                    break Err(AgentError::Refused { reason, message });
                }
                Err(e) => {
                    // A certificate that does not verify will not start to: say what to do
                    // (issue 17.10), found by the error's type.
                    if e.is_certificate_error() {
                        tracing::warn!(error = %e, "cannot connect to the control plane: its certificate does not verify; pass the CA that signed it with --ca-file (a generated one is <control plane data dir>/tls/ca.pem), retrying");
                    } else {
                        tracing::warn!(error = %e, "cannot connect to the control plane");
                    }
                    self.status.send_replace(Status::Offline {
                        reason: e.to_string(),
                    });
                }
            }
            let delay = backoff.next_delay();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting after a delay"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break Ok(()),
            }
        };
        sampler.abort();
        guard.abort();
        result
    }

    /// Loads or creates the key, and decides whether to register or authenticate, and where.
    fn prepare_identity(&self, store: &IdentityStore) -> Result<(Keys, Mode, String), AgentError> {
        match store.load()? {
            Some(Identity {
                keys,
                registration: Some(reg),
            }) => {
                if self.config.register_code.is_some() {
                    tracing::info!(agent_id = %reg.agent_id, "already registered; ignoring the registration code");
                }
                let url = self.config.server_url.clone().unwrap_or(reg.server_url);
                let next = match store.load_next()? {
                    Some(next) => Some(next),
                    None if self.config.rotate_key => {
                        let next = Keys::generate();
                        store.save_next(&next)?;
                        tracing::info!("key rotation started (--rotate-key)");
                        Some(next)
                    }
                    None => None,
                };
                Ok((
                    keys,
                    Mode::Authenticate {
                        agent_id: reg.agent_id,
                        command_key: reg.command_key,
                        next,
                    },
                    url,
                ))
            }
            existing => {
                let code = self
                    .config
                    .register_code
                    .clone()
                    .ok_or(AgentError::NotRegistered)?;
                let fingerprint = tomo_proto::handshake::split_code(&code)
                    .1
                    .ok_or(AgentError::CodeWithoutFingerprint)?
                    .to_ascii_lowercase();
                let url = self
                    .config
                    .server_url
                    .clone()
                    .ok_or(AgentError::NoServerUrl)?;
                // A key saved by an earlier attempt is reused, so that a crash between the control
                // plane's acceptance and our saving of the agent id does not burn the code.
                let keys = match existing {
                    Some(identity) => identity.keys,
                    None => {
                        let keys = Keys::generate();
                        store.save_keys(&keys)?;
                        keys
                    }
                };
                Ok((keys, Mode::Register { code, fingerprint }, url))
            }
        }
    }

    fn facts(&self, shared: &Shared) -> HostFacts {
        let f = &shared.facts;
        let docker = shared.samples.docker.borrow();
        HostFacts {
            hostname: f.hostname.clone(),
            engine_id: docker.engine_id.clone(),
            docker_version: docker.version.clone(),
            os: f.os.clone(),
            kernel: f.kernel.clone(),
            arch: f.arch.clone(),
            cpus: f.cpus,
            memory_bytes: f.memory_bytes,
            agent_version: VERSION.into(),
            clock_ms: None,
        }
    }
}

fn hello(
    mode: &Mode,
    keys: &Keys,
    nonce: &str,
    binding: &ChannelBinding,
    mut facts: HostFacts,
) -> Handshake {
    // The clock as the message leaves: the control plane measures the offset from it.
    facts.clock_ms = Some(tomo_common::now_ms());
    let sign = |m: &[u8]| keys.sign_b64(m);
    match mode {
        Mode::Register { code, .. } => {
            tomo_common::hello::register(code, &keys.public_key_b64(), sign, nonce, binding, facts)
        }
        Mode::Authenticate { agent_id, next, .. } => {
            let sign_next = |m: &[u8]| next.as_ref().map(|n| n.sign_b64(m)).unwrap_or_default();
            let next = next.as_ref().map(|n| tomo_common::hello::NextKey {
                public_key: n.public_key_b64(),
                sign: &sign_next,
            });
            tomo_common::hello::authenticate(agent_id, sign, nonce, binding, facts, next)
        }
    }
}
