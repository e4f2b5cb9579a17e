//! Issue 12.4: a relay in the middle cannot become the host. The relay holds a certificate the
//! agent trusts (a corporate proxy, a leaked CA, a `--dev` agent): it terminates the agent's TLS
//! and opens its own to the control plane. Every handshake signature names the TLS connection it
//! was made on, the registration code never crosses the wire, and `welcome` is signed by the
//! command key; so the relay fails whether it forwards, rewrites or answers itself. And a command
//! held back in the network past its signed expiry is refused, not run late.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tomo_agent::AgentError;
use tomo_agent::identity::Keys;
use tomo_agent::session::{Dialer as _, TlsDialer};
use tomo_proto::handshake::{
    ChannelBinding, Handshake, Purpose, RefusalReason, signing_payload, welcome_subject,
};

use crate::support::{Fleet, RunningAgent};

/// What the relay does with the agent's handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Play {
    /// Forwards every byte between its two TLS connections.
    Forward,
    /// Registers its own key with the agent's code proof, then welcomes the agent itself.
    Impersonate,
}

/// A TLS-terminating relay on 127.0.0.1 with its own CA.
struct Relay {
    url: String,
    ca_file: PathBuf,
    /// What the control plane answered the relay's own register (impersonation).
    answers: mpsc::UnboundedReceiver<Handshake>,
}

async fn relay(f: &Fleet, play: Play) -> Relay {
    let dir = f.dir.join("relay");
    let tls = tomo_server::tls::load(&tomo_server::tls::TlsSource::SelfSigned, &dir, None)
        .expect("relay certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let upstream_ca = f.info.ca_file.clone().expect("ca");
    let upstream = f.info.agent_url.clone();
    let command_key = f.state.hub.command_key().to_owned();
    let (tx, answers) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream, upstream_ca) =
                (acceptor.clone(), upstream.clone(), upstream_ca.clone());
            let (tx, command_key) = (tx.clone(), command_key.clone());
            tokio::spawn(async move {
                let Ok(downstream) = acceptor.accept(tcp).await else {
                    return;
                };
                let trust = tomo_common::tls::Trust::CaFile(upstream_ca);
                let config = tomo_common::tls::client_config(&trust).expect("tls");
                let Ok(up) = TlsDialer::new(config, false).dial(&upstream).await else {
                    return;
                };
                match play {
                    Play::Forward => {
                        let mut down = downstream;
                        let mut up = up.io;
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                    Play::Impersonate => {
                        let binding = tomo_common::tls::channel_binding(downstream.get_ref().1)
                            .expect("TLS 1.3");
                        impersonate(downstream, binding, up, &command_key, &tx).await;
                    }
                }
            });
        }
    });
    Relay {
        url: format!("wss://127.0.0.1:{port}/agent/ws"),
        ca_file: tls.ca_file.expect("self-signed CA"),
        answers,
    }
}

/// The active relay: the control plane's challenge goes to the agent; the agent's register
/// comes back with the relay's own key in it (its code proof reused), signed by the relay on the
/// relay's connection to the control plane; then the relay welcomes the agent itself.
async fn impersonate(
    downstream: tokio_rustls::server::TlsStream<TcpStream>,
    down_binding: ChannelBinding,
    up: tomo_agent::session::Dialed,
    command_key: &str,
    answers: &mpsc::UnboundedSender<Handshake>,
) {
    let mut down = tokio_tungstenite::accept_async(downstream)
        .await
        .expect("ws accept");
    let (mut up_ws, _) = tokio_tungstenite::client_async("wss://tomo/agent/ws", up.io)
        .await
        .expect("ws upstream");
    let text = next_text(&mut up_ws).await;
    let Ok(Handshake::Challenge { nonce, .. }) = Handshake::parse(&text) else {
        panic!("challenge expected: {text}");
    };
    down.send(Message::text(text)).await.expect("challenge");
    let hello = next_text(&mut down).await;
    let Ok(Handshake::Register {
        code_key,
        code_signature,
        public_key: agents_key,
        facts,
        ..
    }) = Handshake::parse(&hello)
    else {
        panic!("register expected: {hello}");
    };
    let mine = Keys::generate();
    let public_key = mine.public_key_b64();
    let forged = Handshake::Register {
        proto_version: tomo_proto::PROTO_VERSION,
        code_key,
        code_signature,
        signature: mine.sign_b64(&signing_payload(
            Purpose::Register,
            &nonce,
            &up.binding,
            &public_key,
        )),
        public_key,
        facts,
    };
    up_ws
        .send(Message::text(forged.to_json()))
        .await
        .expect("send");
    let answer = Handshake::parse(&next_text(&mut up_ws).await).expect("answer");
    let _ = answers.send(answer);
    // Now the agent: welcomed under its own id with the real command key, but signed by the
    // relay (it has no command key), over its side of the connection.
    let agent_id = tomo_common::agent_id_for(&tomo_common::unb64(&agents_key).expect("key"));
    let subject = welcome_subject(&agent_id, &agents_key);
    let welcome = Handshake::Welcome {
        proto_version: tomo_proto::PROTO_VERSION,
        agent_id,
        heartbeat_secs: 30,
        command_key: command_key.to_owned(),
        signature: mine.sign_b64(&signing_payload(
            Purpose::Welcome,
            &nonce,
            &down_binding,
            &subject,
        )),
        events_since_nanos: None,
        audit_since_ms: None,
    };
    let _ = down.send(Message::text(welcome.to_json())).await;
    // Hold the connection until the agent drops it.
    while down.next().await.is_some_and(|m| m.is_ok()) {}
}

async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// An agent configured to dial the relay and trust the relay's CA.
fn via(f: &Fleet, r: &Relay, name: &str, code: Option<String>) -> tomo_agent::config::AgentConfig {
    let mut c = f.agent(name, code);
    c.server_url = Some(r.url.clone());
    c.ca_file = Some(r.ca_file.clone());
    c
}

#[tokio::test]
async fn a_forwarding_relay_cannot_register_an_agent_and_the_code_stays_usable() {
    let f = Fleet::start().await;
    let r = relay(&f, Play::Forward).await;
    let code = f.code().await;
    let a = RunningAgent::spawn(via(&f, &r, "behind-relay", Some(code.clone())));
    match a.finished().await {
        Err(AgentError::Refused {
            reason: RefusalReason::BadSignature,
            message,
        }) => assert!(message.contains("TLS"), "{message}"),
        other => panic!("expected bad_signature, got {other:?}"),
    }
    assert!(f.hosts().await.is_empty(), "nothing registered");
    // The failed proof did not burn the code: the agent registers with it directly.
    let mut direct = RunningAgent::spawn(f.agent("behind-relay-direct", Some(code)));
    direct.online().await;
    direct.stop().await.expect("stop");
}

#[tokio::test]
async fn a_forwarding_relay_cannot_carry_a_registered_agents_session() {
    let f = Fleet::start().await;
    let mut a = RunningAgent::spawn(f.agent("roamer", Some(f.code().await)));
    let id = a.online().await;
    a.stop().await.expect("stop");
    let key_before = f.state.store.host(&id).await.expect("host").public_key;
    let r = relay(&f, Play::Forward).await;
    let a = RunningAgent::spawn(via(&f, &r, "roamer", None));
    assert!(
        matches!(
            a.finished().await,
            Err(AgentError::Refused {
                reason: RefusalReason::BadSignature,
                ..
            })
        ),
        "the relayed authentication is refused"
    );
    assert!(!f.state.hub.is_online(&id));
    assert_eq!(
        f.state.store.host(&id).await.expect("host").public_key,
        key_before
    );
    // The control plane recorded it as a security event of the host.
    let (s, host) = f.api(Method::GET, &format!("/hosts/{id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{host}");
    assert!(
        host["security_events"]
            .to_string()
            .contains("bad_signature"),
        "{host}"
    );
    // Directly, the same agent still connects.
    let mut direct = RunningAgent::spawn(f.agent("roamer", None));
    assert_eq!(direct.online().await, id);
    direct.stop().await.expect("stop");
}

#[tokio::test]
async fn an_impersonating_relay_gets_neither_the_code_nor_the_agent() {
    let f = Fleet::start().await;
    let mut r = relay(&f, Play::Impersonate).await;
    let code = f.code().await;
    let a = RunningAgent::spawn(via(&f, &r, "victim", Some(code.clone())));
    // The control plane refuses the relay's own key: the code proof names another key and
    // another connection.
    let answer = tokio::time::timeout(Duration::from_secs(10), r.answers.recv())
        .await
        .expect("answer in time")
        .expect("answer");
    assert!(
        matches!(
            answer,
            Handshake::Refused {
                reason: RefusalReason::BadSignature,
                ..
            }
        ),
        "{answer:?}"
    );
    // The agent refuses the relay's welcome (not signed by the command key for its connection)
    // and saves nothing.
    match a.finished().await {
        Err(AgentError::CommandKey(m)) => assert!(m.contains("not signed"), "{m}"),
        other => panic!("expected the welcome refused, got {other:?}"),
    }
    assert!(!f.dir.join("agents/victim/agent.json").exists());
    assert!(f.hosts().await.is_empty());
    // The code was never sent: the relay saw only a proof bound to its connections.
    let mut direct = RunningAgent::spawn(f.agent("victim", Some(code)));
    direct.online().await;
    direct.stop().await.expect("stop");
}

/// A TCP proxy (TLS stays end to end) whose control-plane → agent direction can be frozen: a
/// network black hole.
async fn freezable(f: &Fleet) -> (String, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let target = f.info.local_addr;
    let (frozen, rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut dr, &mut uw).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = ur.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    // Held while frozen, delivered after.
                    if rx.wait_for(|f| !*f).await.is_err() {
                        break;
                    }
                    if dw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (format!("wss://127.0.0.1:{port}/agent/ws"), frozen)
}

#[tokio::test]
async fn a_command_held_back_past_its_timeout_is_refused_not_run_late() {
    let f = Fleet::start_with(|c| c.call_timeout = Duration::from_secs(1)).await;
    let (url, frozen) = freezable(&f).await;
    let volumes = f.dir.join("volumes");
    let mut c = f.agent("held", Some(f.code().await));
    c.server_url = Some(url);
    c.volume_base = volumes.clone();
    let mut a = RunningAgent::spawn(c);
    let id = a.online().await;
    frozen.send_replace(true);
    let (s, v) = f
        .rpc(
            &id,
            "system.prepare_volumes",
            Some(json!({"volumes": [{"path": "late"}]})),
        )
        .await;
    assert_ne!(s, StatusCode::OK, "the operator is told it timed out: {v}");
    assert_eq!(v["error"]["code"], json!(-32011), "{v}");
    // The black hole lasts past the command's expiry, then lets everything through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    frozen.send_replace(false);
    // The agent refuses it as expired and audits that; the directory is never made.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let (_, v) = f.api(Method::GET, "/audit?decision=denied", None).await;
        let found = v.as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r.to_string().contains("expired"))
                .cloned()
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `expired` refusal audited: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        record.to_string().contains("system.prepare_volumes"),
        "{record}"
    );
    assert!(!volumes.join("late").exists(), "the late command ran");
    // The session itself is fine: the next call runs.
    let (s, v) = f
        .rpc(
            &id,
            "system.prepare_volumes",
            Some(json!({"volumes": [{"path": "on-time"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(volumes.join("on-time").exists());
    a.stop().await.expect("stop");
}

/// Issue 17.10: an agent without the control plane's CA retried forever without saying "pass
/// --ca-file": the dial error is known for what it is, by type.
#[tokio::test]
async fn a_certificate_the_agent_cannot_verify_is_named_as_such() {
    let f = Fleet::start().await;
    let config = tomo_common::tls::client_config(&tomo_common::tls::Trust::WebPki).expect("tls");
    let Err(e) = TlsDialer::new(config, false).dial(&f.info.agent_url).await else {
        panic!("a self-signed control plane verified against the webpki roots");
    };
    assert!(e.is_certificate_error(), "{e}");
    // Nothing listening is another error.
    let config = tomo_common::tls::client_config(&tomo_common::tls::Trust::WebPki).expect("tls");
    let Err(e) = TlsDialer::new(config, false)
        .dial("wss://127.0.0.1:1/agent/ws")
        .await
    else {
        panic!("connected to port 1");
    };
    assert!(!e.is_certificate_error(), "{e}");
}
