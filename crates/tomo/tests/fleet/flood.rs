//! Pre-authentication floods (issue 12.5): connections from one address that never authenticate
//! must not take the control plane from anyone else. 200 idle TCP connections (no ClientHello)
//! froze the API for 20 s; 300 idle upgraded `/agent/ws` connections kept real agents from
//! reconnecting. The floods come from 127.0.0.2, the operator and the real agent from 127.0.0.1.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tomo_sim::flood;

use tomo_agent::identity::Keys;

use crate::support::{Fleet, Raw, RunningAgent, facts};

const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The API's answer under a flood, on a fresh connection (the benchmark's target is 100 ms p99;
/// this bound leaves room for a loaded test machine, and is far below the 10-20 s of the bug).
const API_WITHIN: Duration = Duration::from_secs(1);
/// A real agent's registration under a flood (issue 12.5).
const AGENT_WITHIN: Duration = Duration::from_secs(2);

/// `GET /api/v1/hosts` on a new connection (new TCP, new TLS handshake), timed.
async fn api_on_a_new_connection(f: &Fleet) -> Duration {
    let ca = f.info.ca_file.clone().expect("self-signed");
    let tls = tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca)).expect("tls");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http");
    let t0 = Instant::now();
    let resp = http
        .get(format!("{}/api/v1/hosts", f.info.api_url))
        .bearer_auth(&f.token)
        .send()
        .await
        .expect("API reachable");
    assert_eq!(resp.status(), StatusCode::OK);
    t0.elapsed()
}

/// A real agent registers and is online within [`AGENT_WITHIN`].
async fn agent_joins_in_time(f: &Fleet, name: &str) {
    let code = f.code().await;
    let mut agent = RunningAgent::spawn(f.agent(name, Some(code)));
    let t0 = Instant::now();
    let online = tokio::time::timeout(
        AGENT_WITHIN,
        agent
            .status
            .wait_for(|s| matches!(s, tomo_agent::Status::Online { .. })),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(
        online,
        "a real agent was not online within {AGENT_WITHIN:?} (waited {:?})",
        t0.elapsed()
    );
    agent.stop().await.expect("agent stops");
}

/// Waits until `source` holds `want` (connections, agent handshakes) of its unauthenticated
/// share, at most `within`.
async fn share_becomes(f: &Fleet, want: (usize, usize), within: Duration) {
    let source = std::net::IpAddr::V4(FLOOD_SOURCE);
    let deadline = Instant::now() + within;
    loop {
        let held = f.state.admission.held(source);
        if held == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the flood's source holds {held:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 12.5: 200 idle TCP connections from one address (no ClientHello) froze the API for
/// 20 s: each held one of the 64 TLS handshake turns until its 10 s deadline. Now the source
/// holds at most its share (64), the idle ones hold no turn while they wait for their first
/// byte, and they are closed at that deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_from_one_address_do_not_freeze_the_api() {
    let f = Fleet::start_with(|c| c.first_byte_timeout = Duration::from_secs(2)).await;
    let share = f.state.config.unauthenticated_per_source;
    let mut flood = flood::idle_tcp(&f.info.agent_url, FLOOD_SOURCE, 200, &[])
        .await
        .expect("flood");
    assert_eq!(flood.failed, 0, "the kernel accepts every connection");
    for _ in 0..5 {
        let took = api_on_a_new_connection(&f).await;
        assert!(took < API_WITHIN, "the API took {took:?} under the flood");
    }
    agent_joins_in_time(&f, "under-tcp-flood").await;
    share_becomes(&f, (share, 0), Duration::from_secs(1)).await;
    // Past the share, closed at once; the rest at the first-byte deadline.
    let closed = flood.closed_by_server(Duration::from_secs(5)).await;
    assert_eq!(
        closed, 200,
        "every idle connection is closed by the control plane"
    );
    share_becomes(&f, (0, 0), Duration::from_secs(1)).await;
}

/// Issue 12.5: the shares are per source, so a flood from many addresses (an IPv6 /48, a
/// botnet) was bounded only by the process's descriptor limit: past it every accept failed,
/// agents and operators included. Now all sources together hold at most
/// `max_unauthenticated` unauthenticated connections; past it a new one is closed at once,
/// and the slots come back as the flood's connections go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_many_addresses_stop_at_the_global_cap() {
    const CAP: usize = 20;
    const SOURCES: u8 = 60;
    let f = Fleet::start_with(|c| {
        c.max_unauthenticated = CAP;
        // Nothing is closed by a deadline while the test looks.
        c.first_byte_timeout = Duration::from_secs(60);
    })
    .await;
    assert_eq!(f.state.admission.cap(), CAP);
    let mut floods = Vec::new();
    for i in 1..=SOURCES {
        let source = Ipv4Addr::new(127, 0, 3, i);
        let flood = flood::idle_tcp(&f.info.agent_url, source, 1, &[])
            .await
            .expect("flood");
        assert_eq!(flood.failed, 0, "the kernel accepts every connection");
        floods.push(flood);
    }
    // Every source is far below its own share (64), yet only CAP connections are held.
    let deadline = Instant::now() + Duration::from_secs(2);
    while f.state.admission.total() != CAP {
        assert!(
            Instant::now() < deadline,
            "held {} unauthenticated connections, cap {CAP}",
            f.state.admission.total()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut closed = 0;
    for flood in &mut floods {
        closed += flood.closed_by_server(Duration::from_millis(200)).await;
    }
    assert_eq!(
        closed,
        usize::from(SOURCES) - CAP,
        "past the cap, closed at once"
    );
    // The flood goes: its slots come back, and an agent joins.
    drop(floods);
    let deadline = Instant::now() + Duration::from_secs(2);
    while f.state.admission.total() != 0 {
        assert!(
            Instant::now() < deadline,
            "slots not released: {}",
            f.state.admission.total()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent_joins_in_time(&f, "after-wide-flood").await;
}

/// Issue 12.5: connections that send the first byte of a ClientHello and then stall hold a TLS
/// handshake turn each until the handshake deadline; one source takes at most a quarter of the
/// turns, so the API still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_from_one_address_do_not_freeze_the_api() {
    let f = Fleet::start().await;
    let flood = flood::idle_tcp(&f.info.agent_url, FLOOD_SOURCE, 200, &[0x16])
        .await
        .expect("flood");
    assert_eq!(flood.failed, 0, "the kernel accepts every connection");
    for _ in 0..5 {
        let took = api_on_a_new_connection(&f).await;
        assert!(took < API_WITHIN, "the API took {took:?} under the flood");
    }
    agent_joins_in_time(&f, "under-stalled-tls").await;
    drop(flood);
}

/// Issue 12.5: 300 idle upgraded `/agent/ws` connections from one address kept real agents
/// from reconnecting (20 s wait, then dropped): each held a session handshake turn until its
/// deadline without ever sending a handshake message. Now the source has at most its agent
/// handshake share (64) upgraded and none holds a turn before its first message. (The
/// deadline is long here so that none of the flood is refused before the agent has joined;
/// the first-message deadline is `malformed.rs`'s silent connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_agent_upgrades_from_one_address_do_not_keep_agents_out() {
    let f = Fleet::start_with(|c| c.first_message_timeout = Duration::from_secs(60)).await;
    let share = f.state.config.agent_handshakes_per_source;
    let ca = f.info.ca_file.clone().expect("self-signed");
    let flood = flood::idle_upgraded(
        &f.info.agent_url,
        &ca,
        FLOOD_SOURCE,
        300,
        Duration::from_secs(5),
    )
    .await
    .expect("flood");
    assert_eq!(flood.held.len(), share, "upgraded: the source's share");
    agent_joins_in_time(&f, "under-ws-flood").await;
    let took = api_on_a_new_connection(&f).await;
    assert!(took < API_WITHIN, "the API took {took:?} under the flood");
    share_becomes(&f, (0, share), Duration::from_secs(1)).await;
    drop(flood);
    share_becomes(&f, (0, 0), Duration::from_secs(5)).await;
}

/// Issue 12.5: the share bounds unauthenticated connections only. Agents behind one address
/// (a NAT, the simulator's ~1250 per address) stay connected past it, and operators with a
/// valid token keep their connections: each left the share when it authenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_connections_do_not_count_against_the_share() {
    let f = Fleet::start_with(|c| {
        c.unauthenticated_per_source = 3;
        c.agent_handshakes_per_source = 2;
    })
    .await;
    let local = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut sessions = Vec::new();
    for i in 0..10 {
        let keys = Keys::generate();
        let (raw, _) = Raw::register(&f, &keys, &f.code().await, facts(&format!("nat-{i}"), None))
            .await
            .expect("registered past the share");
        sessions.push(raw);
    }
    let mut clients = Vec::new();
    for _ in 0..10 {
        let ca = f.info.ca_file.clone().expect("self-signed");
        let tls =
            tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca)).expect("tls");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .expect("http");
        let resp = http
            .get(format!("{}/api/v1/hosts", f.info.api_url))
            .bearer_auth(&f.token)
            .send()
            .await
            .expect("API reachable past the share");
        assert_eq!(resp.status(), StatusCode::OK);
        // Kept, with its idle keep-alive connection.
        clients.push(http);
    }
    assert_eq!(f.state.admission.held(local), (0, 0));
    assert_eq!(f.hosts().await.len(), 10);
    drop((sessions, clients));
}
