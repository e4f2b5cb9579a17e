//! Issue 13.7: clock skew. A host whose clock is 10 minutes off showed online and healthy while
//! every call was refused `stale`, and the operator read "forbidden". The control plane measures
//! the offset at the handshake, shows it with a warning, and stamps every command in the host's
//! own time, so the host judges it fresh by its own clock and the replay window stays as tight.

use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tomo_agent::identity::Keys;

use crate::support::{Fleet, Raw, facts};

#[tokio::test]
async fn a_host_ten_minutes_behind_is_warned_about_and_gets_commands_in_its_own_time() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (raw, id) = Raw::register(&f, &keys, &f.code().await, facts("late", None))
        .await
        .expect("registered");
    drop(raw);
    f.wait_status(&id, "offline").await;
    let skew = -600_000;
    let mut skewed = facts("late", None);
    skewed.clock_ms = Some(tomo_common::now_ms() + skew);
    let mut raw = Raw::authenticate(&f, &keys, &id, skewed)
        .await
        .expect("authenticated");
    let (s, host) = f.api(Method::GET, &format!("/hosts/{id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{host}");
    let offset = host["clock"]["offset_ms"].as_i64().expect("offset");
    assert!((offset - skew).abs() < 2_000, "measured {offset}");
    let warning = host["clock"]["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("clock skew of 600 s between the control plane and host late"),
        "{host}"
    );
    // A command is stamped in the host's time: its `ts` and `exp` are 10 minutes behind.
    let host_side = async {
        let req: Value = loop {
            match raw.ws.next().await.expect("open").expect("frame") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    if v["method"] == "agent.ping" {
                        break v;
                    }
                }
                _ => continue,
            }
        };
        let answer =
            serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": {"pong": true}});
        raw.send(&answer.to_string()).await;
        (req, tomo_common::now_ms())
    };
    let ((s, v), (req, now)) = tokio::join!(f.rpc(&id, "agent.ping", None), host_side);
    assert_eq!(s, StatusCode::OK, "{v}");
    let ts = req["meta"]["ts"].as_i64().expect("ts");
    let exp = req["meta"]["exp"].as_i64().expect("exp");
    assert!((ts - (now + skew)).abs() < 3_000, "ts {ts}, now {now}");
    assert_eq!(exp - ts, 30_000, "the call's timeout, in the host's time");
}
