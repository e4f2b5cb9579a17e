//! Unit tests of the admission pipeline's rate stage, on tokio's paused clock: the read rate per
//! principal (issue 12.2), beside the command rate.

use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::json;
use tomo_proto::methods::level_of;

use super::*;

const AGENT: &str = "agent-under-test";

struct Fixture {
    key: Ed25519KeyPair,
    guard: Guard,
    next_id: u64,
}

/// A guard trusting a fresh command key, with `reads` reads a minute for each principal.
fn fixture(reads: usize) -> Fixture {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key");
    let guard = Guard::new(
        ReplayGuard::in_memory(replay::CAPACITY),
        DEFAULT_PER_MINUTE,
        DEFAULT_CONCURRENT,
    )
    .with_reads_per_minute(reads);
    assert!(guard.set_trust(AGENT, &tomo_common::b64(key.public_key().as_ref())));
    Fixture {
        key,
        guard,
        next_id: 0,
    }
}

impl Fixture {
    /// Admits `method` signed for `principal` with `role`: `Ok(())` or the refusal's reason.
    fn admit(&mut self, principal: &str, method: &str, role: &str) -> Result<(), Denied> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let meta = json!({
            "aud": AGENT,
            "nonce": tomo_common::hex(&tomo_common::random_bytes::<16>()),
            "ts": tomo_common::now_ms(),
            "exp": tomo_common::now_ms() + 30_000,
            "principal": principal,
            "role": role,
        })
        .to_string();
        let payload = rpc::command_payload(&id, method, &meta, "");
        let sig = tomo_common::b64(self.key.sign(&payload).as_ref());
        let text = rpc::signed_request_text(&id, method, &meta, None, &sig);
        let req: rpc::Request = serde_json::from_str(&text).expect("request");
        self.guard
            .admit(&req, level_of, |_, _, _| Ok(()))
            .map(|_| ())
    }
}

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Admitted,
    Refused(&'static str),
}

#[tokio::test(start_paused = true)]
async fn reads_are_limited_per_principal_and_continuations_are_not_reads() {
    use Want::*;
    // (seconds to wait first, principal, method, role, expected)
    let rows: &[(u64, &str, &str, &str, Want)] = &[
        (0, "alice", "agent.ping", "read", Admitted),
        (0, "alice", "docker.containers.list", "read", Admitted),
        (1, "alice", "system.info", "read", Admitted),
        // The fourth read within a minute: refused, with the rate-limit code.
        (0, "alice", "agent.ping", "read", Refused("read_rate")),
        (
            0,
            "alice",
            "docker.containers.get",
            "admin",
            Refused("read_rate"),
        ),
        // Continuations of a stream already admitted are not reads.
        (0, "alice", "stream.ack", "read", Admitted),
        (0, "alice", "stream.close", "read", Admitted),
        (0, "alice", "stream.write", "admin", Admitted),
        (0, "alice", "stream.resize", "admin", Admitted),
        // Another token has its own window.
        (0, "bob", "agent.ping", "read", Admitted),
        // Commands have their own limit, not the read one.
        (0, "alice", "docker.containers.start", "execute", Admitted),
        // The window slides: the first two reads leave it a minute after they came.
        (58, "alice", "agent.ping", "read", Refused("read_rate")),
        (1, "alice", "agent.ping", "read", Admitted),
        (0, "alice", "agent.ping", "read", Admitted),
        (0, "alice", "agent.ping", "read", Refused("read_rate")),
        (0, "bob", "agent.ping", "read", Admitted),
    ];
    let mut f = fixture(3);
    for (i, (wait, principal, method, role, want)) in rows.iter().enumerate() {
        tokio::time::advance(Duration::from_secs(*wait)).await;
        let got = f.admit(principal, method, role);
        match (want, &got) {
            (Admitted, Ok(())) => {}
            (Refused(reason), Err(d)) if d.reason == *reason => {
                assert_eq!(d.error.code, code::RATE_LIMITED, "row {i}");
                assert!(
                    d.error.message.contains("read rate") && d.error.message.contains('3'),
                    "row {i}: {}",
                    d.error.message
                );
                assert_eq!(
                    d.meta.as_ref().and_then(|m| m.principal.as_deref()),
                    Some(*principal)
                );
            }
            _ => panic!("row {i} ({principal} {method}): want {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_read_rate_is_generous() {
    let mut f = fixture(DEFAULT_READS_PER_MINUTE);
    for i in 0..DEFAULT_READS_PER_MINUTE {
        // A dashboard polling ten times a second for a minute.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            f.admit("dashboard", "docker.containers.list", "read")
                .is_ok(),
            "read {i}"
        );
    }
    let refused = f
        .admit("dashboard", "agent.ping", "read")
        .expect_err("601st read in a minute");
    assert_eq!(refused.reason, "read_rate");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(f.admit("dashboard", "agent.ping", "read").is_ok());
}

#[tokio::test(start_paused = true)]
async fn read_windows_are_bounded_in_number() {
    let mut f = fixture(10);
    for i in 0..MAX_READ_PRINCIPALS {
        assert!(f.admit(&format!("p{i}"), "agent.ping", "read").is_ok());
    }
    let refused = f
        .admit("one-too-many", "agent.ping", "read")
        .expect_err("no room for another window");
    assert_eq!(refused.error.code, code::RATE_LIMITED);
    // Once the windows are idle for a minute they make room.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(f.admit("one-too-many", "agent.ping", "read").is_ok());
}

/// Issue 17.1: keystrokes of an interactive exec (`stream.write`, admin level) were commands of
/// their own, so the 28th key in a minute was refused by the host's command rate. Input to a
/// stream an admitted call opened is not a command: it neither spends the command rate nor
/// holds a command slot, while the next real command is still counted.
#[tokio::test(start_paused = true)]
async fn stream_input_does_not_spend_the_command_rate() {
    let mut f = fixture(DEFAULT_READS_PER_MINUTE);
    for i in 0..500 {
        let r = f.admit("alice", "stream.write", "admin");
        assert!(r.is_ok(), "keystroke {i}: {r:?}");
        if i % 50 == 0 {
            f.admit("alice", "stream.resize", "admin")
                .expect("a resize is input too");
        }
    }
    for i in 0..DEFAULT_PER_MINUTE {
        let r = f.admit("alice", "docker.containers.restart", "admin");
        assert!(r.is_ok(), "command {i}: {r:?}");
    }
    let over = f
        .admit("alice", "docker.containers.restart", "admin")
        .expect_err("commands are still limited");
    assert_eq!(over.reason, "rate");
    f.admit("alice", "stream.write", "admin")
        .expect("input goes on past the command limit");
}
