//! The control plane's side of heartbeats, with tokio's paused clock over an in-memory pipe.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tomo_agent::identity::Keys;
use tomo_proto::handshake::{ChannelBinding, Handshake};

use crate::support::{Fleet, Raw, facts};

/// Registers a host, then opens an authenticated session to the control plane over a pipe.
async fn piped_session(
    f: &Fleet,
) -> (
    String,
    tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
) {
    let keys = Keys::generate();
    let (raw, id) = Raw::register(f, &keys, &f.code().await, facts("piped", None))
        .await
        .expect("registered");
    drop(raw);
    f.wait_status(&id, "offline").await;
    let (a, b) = tokio::io::duplex(1 << 20);
    let server_ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    tokio::spawn(tomo_server::agents::agent_ws::run_session(
        server_ws,
        f.state.clone(),
        None,
        None,
        ChannelBinding([3; 32]),
    ));
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(b, Role::Client, None).await;
    let nonce = match ws.next().await.expect("open").expect("frame") {
        Message::Text(t) => match Handshake::parse(&t) {
            Ok(Handshake::Challenge { nonce, .. }) => nonce,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let hello = tomo_common::hello::authenticate(
        &id,
        |m| keys.sign_b64(m),
        &nonce,
        &ChannelBinding([3; 32]),
        facts("piped", None),
        None,
    );
    ws.send(Message::text(hello.to_json())).await.expect("send");
    match ws.next().await.expect("open").expect("frame") {
        Message::Text(t) => assert!(
            matches!(Handshake::parse(&t), Ok(Handshake::Welcome { .. })),
            "{t}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(f.state.hub.is_online(&id));
    (id, ws)
}

#[tokio::test]
async fn a_silent_agent_is_dead_after_90s() {
    let f = Fleet::start().await;
    let (id, _ws) = piped_session(&f).await;
    tokio::time::pause();
    // The agent never reads nor writes: no pongs, no frames.
    tokio::time::sleep(Duration::from_secs(89)).await;
    assert!(f.state.hub.is_online(&id), "still online at 89 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!f.state.hub.is_online(&id), "dead at 91 s");
}

#[tokio::test]
async fn the_control_plane_pings_every_30s_and_a_live_agent_stays() {
    let f = Fleet::start().await;
    let (id, mut ws) = piped_session(&f).await;
    tokio::time::pause();
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + Duration::from_secs(200);
    let mut pings = Vec::new();
    loop {
        tokio::select! {
            // Reading answers pings with pongs, as any agent does.
            m = ws.next() => match m {
                Some(Ok(Message::Ping(_))) => pings.push(t0.elapsed().as_secs_f64()),
                Some(Ok(_)) => {}
                other => panic!("session ended: {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    assert_eq!(pings.len(), 6, "{pings:?}");
    for (i, p) in pings.iter().enumerate() {
        assert!((p - 30.0 * (i + 1) as f64).abs() < 0.5, "{pings:?}");
    }
    assert!(f.state.hub.is_online(&id), "a live agent stays online");
}
