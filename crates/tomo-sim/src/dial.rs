//! Dialing the control plane from a chosen loopback source address, over verified TLS.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tomo_agent::session::{Dialed, Dialer, SessionError};

use crate::SimError;

/// The control plane's address from its agent URL (`wss://127.0.0.1:PORT/…`).
pub fn server_addr(url: &str) -> Result<SocketAddr, SimError> {
    let bad = || SimError::Url(url.to_owned());
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("wss") {
        return Err(bad());
    }
    let ip: Ipv4Addr = uri.host().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if !ip.is_loopback() {
        return Err(bad());
    }
    Ok(SocketAddr::new(
        IpAddr::V4(ip),
        uri.port_u16().unwrap_or(443),
    ))
}

/// The agents' TLS client configuration: the CA pinned, certificate and host name verified, and
/// no session resumption (every connection pays a full handshake, the worst case for the
/// control plane). One configuration for all agents.
pub fn tls_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, SimError> {
    let trust = tomo_common::tls::Trust::CaFile(ca_file.to_owned());
    let mut config = tomo_common::tls::client_config(&trust)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Dials from one source address.
pub struct SimDialer {
    source: Ipv4Addr,
    server: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl SimDialer {
    pub fn new(source: Ipv4Addr, server: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            source,
            server,
            connector: tokio_rustls::TlsConnector::from(tls),
        }
    }
}

type DialFuture<'a> = Pin<Box<dyn Future<Output = Result<Dialed, SessionError>> + Send + 'a>>;

impl Dialer for SimDialer {
    fn dial<'a>(&'a self, url: &'a str) -> DialFuture<'a> {
        Box::pin(async move {
            let connect_err = |source| SessionError::Connect {
                url: url.to_owned(),
                source,
            };
            let socket = tokio::net::TcpSocket::new_v4().map_err(connect_err)?;
            // Ports in TIME_WAIT from earlier sessions may be reused.
            socket.set_reuseaddr(true).map_err(connect_err)?;
            socket
                .bind(SocketAddr::new(IpAddr::V4(self.source), 0))
                .map_err(connect_err)?;
            let tcp = socket.connect(self.server).await.map_err(connect_err)?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(self.server.ip().into());
            let tls =
                self.connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| SessionError::Tls {
                        url: url.to_owned(),
                        source,
                    })?;
            let binding = tomo_common::tls::channel_binding(tls.get_ref().1)
                .ok_or_else(|| SessionError::Protocol("no TLS 1.3 channel binding".into()))?;
            Ok(Dialed {
                io: Box::new(tls),
                binding,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_wss_urls() {
        let addr = server_addr("wss://127.0.0.1:7443/agent/ws").expect("loopback");
        assert_eq!(addr, "127.0.0.1:7443".parse().expect("addr"));
        for bad in [
            "ws://127.0.0.1:7443/agent/ws",
            "wss://10.0.0.1:7443/agent/ws",
            "wss://example.com/agent/ws",
            "not a url",
        ] {
            assert!(server_addr(bad).is_err(), "{bad}");
        }
    }
}
