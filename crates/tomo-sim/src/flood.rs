//! Pre-authentication floods (issue 12.5), for the regression tests and `tomo-bench flood`:
//! connections from one loopback source address that never get anywhere. Bounded (the caller
//! gives the count) and loopback only, like the rest of the simulator.
//!
//! - [`idle_tcp`]: TCP connections that never send a byte (no ClientHello), or only the first
//!   few bytes of one.
//! - [`idle_upgraded`]: connections that complete TLS and the `/agent/ws` WebSocket upgrade, then
//!   never answer the challenge.
//! - [`Sustained`]: one of those kinds, kept at `n` open connections (each one the control plane
//!   closes is opened again after a pause), for the benchmark.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SimError;
use crate::dial;

/// A connection the flood holds open; dropping it closes it.
#[derive(Debug)]
pub enum Held {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// What a flood managed to open.
#[derive(Debug)]
pub struct Flood {
    /// Connections the control plane accepted (TCP) or upgraded (WebSocket).
    pub held: Vec<Held>,
    /// Attempts that failed (refused, closed during TLS or the upgrade).
    pub failed: usize,
}

impl Flood {
    /// How many of the TCP connections the control plane has closed (EOF or reset within
    /// `wait`). WebSocket connections are not looked at.
    pub async fn closed_by_server(&mut self, wait: Duration) -> usize {
        let mut closed = 0;
        for h in &mut self.held {
            if let Held::Tcp(tcp) = h {
                let mut b = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(wait, tcp.read(&mut b)).await {
                    closed += 1;
                }
            }
        }
        closed
    }
}

/// A TCP connection to `server` from `source` (any port).
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(server).await
}

/// Opens `n` TCP connections from `source` to the control plane behind `url` that send `first`
/// (empty: nothing; `[0x16]`: the first byte of a TLS record) and then nothing more.
pub async fn idle_tcp(
    url: &str,
    source: Ipv4Addr,
    n: usize,
    first: &[u8],
) -> Result<Flood, SimError> {
    check(source)?;
    let server = dial::server_addr(url)?;
    let mut flood = Flood {
        held: Vec::with_capacity(n),
        failed: 0,
    };
    for _ in 0..n {
        let Ok(mut tcp) = connect_from(source, server).await else {
            flood.failed += 1;
            continue;
        };
        if first.is_empty() || tcp.write_all(first).await.is_ok() {
            flood.held.push(Held::Tcp(tcp));
        } else {
            flood.failed += 1;
        }
    }
    Ok(flood)
}

/// Opens `n` connections from `source` that complete TLS (the CA in `ca_file` pinned) and the
/// WebSocket upgrade of `url`, then stay silent. `per_attempt` bounds each attempt.
pub async fn idle_upgraded(
    url: &str,
    ca_file: &Path,
    source: Ipv4Addr,
    n: usize,
    per_attempt: Duration,
) -> Result<Flood, SimError> {
    check(source)?;
    let server = dial::server_addr(url)?;
    let connector = tokio_rustls::TlsConnector::from(dial::tls_config(ca_file)?);
    let mut flood = Flood {
        held: Vec::with_capacity(n),
        failed: 0,
    };
    for _ in 0..n {
        let attempt = async {
            let tcp = connect_from(source, server).await.ok()?;
            let name = ServerName::IpAddress(server.ip().into());
            let tls = connector.connect(name, tcp).await.ok()?;
            let (ws, _) = tokio_tungstenite::client_async(url, tls).await.ok()?;
            Some(ws)
        };
        match tokio::time::timeout(per_attempt, attempt).await {
            Ok(Some(ws)) => flood.held.push(Held::Ws(Box::new(ws))),
            _ => flood.failed += 1,
        }
    }
    Ok(flood)
}

fn check(source: Ipv4Addr) -> Result<(), SimError> {
    if source.is_loopback() {
        Ok(())
    } else {
        Err(SimError::NotLoopback(source))
    }
}

/// What each connection of a [`Sustained`] flood does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP, not a byte sent.
    IdleTcp,
    /// TCP, one byte of a TLS record (0x16, the start of a ClientHello), then nothing.
    StalledTls,
    /// TLS and the `/agent/ws` upgrade, then silence.
    IdleUpgraded,
}

/// Counters of a [`Sustained`] flood.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicU64,
    held: AtomicU64,
    failed: AtomicU64,
}

/// A flood that keeps `n` connections of one [`Kind`] open: each one closed by the control
/// plane (or refused) is opened again after a pause. Bounded: never more than `n` at once, and
/// at most `n` attempts per pause. Stops when dropped or at [`Sustained::stop`].
#[derive(Debug)]
pub struct Sustained {
    stop: CancellationToken,
    tasks: TaskTracker,
    counts: Arc<Counts>,
}

impl Sustained {
    /// Starts `n` flooding tasks from `source`.
    pub fn start(
        kind: Kind,
        url: &str,
        ca_file: &Path,
        source: Ipv4Addr,
        n: usize,
        pause: Duration,
    ) -> Result<Self, SimError> {
        check(source)?;
        let server = dial::server_addr(url)?;
        let connector = tokio_rustls::TlsConnector::from(dial::tls_config(ca_file)?);
        let (stop, tasks, counts) = (
            CancellationToken::new(),
            TaskTracker::new(),
            Arc::new(Counts::default()),
        );
        for _ in 0..n {
            let (stop, counts, connector, url) = (
                stop.clone(),
                Arc::clone(&counts),
                connector.clone(),
                url.to_owned(),
            );
            tasks.spawn(async move {
                while !stop.is_cancelled() {
                    let one = hold_one(kind, &url, source, server, &connector, &counts);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        () = one => {}
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            });
        }
        tasks.close();
        Ok(Self {
            stop,
            tasks,
            counts,
        })
    }

    /// Connections open right now.
    pub fn held(&self) -> u64 {
        self.counts.held.load(Ordering::Relaxed)
    }

    /// Connections opened (accepted, or upgraded) so far.
    pub fn opened(&self) -> u64 {
        self.counts.opened.load(Ordering::Relaxed)
    }

    /// Attempts that failed (refused, or closed before they were open).
    pub fn failed(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }

    /// Closes every connection and waits for the tasks.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for Sustained {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Opens one connection of `kind` and holds it until the control plane closes it.
async fn hold_one(
    kind: Kind,
    url: &str,
    source: Ipv4Addr,
    server: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    counts: &Counts,
) {
    let failed = || {
        counts.failed.fetch_add(1, Ordering::Relaxed);
    };
    let Ok(mut tcp) = connect_from(source, server).await else {
        return failed();
    };
    match kind {
        Kind::IdleTcp | Kind::StalledTls => {
            if kind == Kind::StalledTls && tcp.write_all(&[0x16]).await.is_err() {
                return failed();
            }
            counts.opened.fetch_add(1, Ordering::Relaxed);
            counts.held.fetch_add(1, Ordering::Relaxed);
            let mut b = [0u8; 64];
            while matches!(tcp.read(&mut b).await, Ok(n) if n > 0) {}
        }
        Kind::IdleUpgraded => {
            let name = ServerName::IpAddress(server.ip().into());
            let Ok(tls) = connector.connect(name, tcp).await else {
                return failed();
            };
            let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, tls).await else {
                return failed();
            };
            counts.opened.fetch_add(1, Ordering::Relaxed);
            counts.held.fetch_add(1, Ordering::Relaxed);
            while let Some(Ok(_)) = ws.next().await {}
        }
    }
    counts.held.fetch_sub(1, Ordering::Relaxed);
}
