//! The `system.exec` injection corpus: every row is refused with -32005 (or -32602 for a bad
//! parameter) and nothing ran — each attack would create a marker file, and none exists after.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tomo_agent::Shared;
use tomo_agent::dispatch::Ctx;
use tomo_agent::docker::{DockerClient, Endpoint};
use tomo_agent::stream::{Outgoing, Streams};
use tomo_proto::methods::SystemExecParams;
use tomo_proto::rpc::code;

fn ctx(dir: &std::path::Path) -> (Ctx, mpsc::Receiver<Outgoing>) {
    let (tx, rx) = mpsc::channel::<Outgoing>(16);
    let docker = Arc::new(DockerClient::new(Endpoint::Refused("not needed".into())));
    let shared = Shared::for_tests(docker, dir.to_owned());
    let ctx = Ctx {
        shared: Arc::new(shared),
        streams: Streams::new(tx, CancellationToken::new()),
        replied: CancellationToken::new(),
    };
    (ctx, rx)
}

#[tokio::test]
async fn every_injection_is_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("pwned");
    let m = marker.display().to_string();
    let rows: Vec<(String, i64, &str)> = vec![
        (
            format!("uptime; touch {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("uptime && touch {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("uptime || touch {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("uptime | tee {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("uptime > {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("uptime >> {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("hostname $(touch {m})"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("hostname `touch {m}`"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("uptime & touch {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        (
            format!("uptime\ntouch {m}"),
            code::COMMAND_BLOCKED,
            "control_character",
        ),
        (
            format!("uptime\rtouch {m}"),
            code::COMMAND_BLOCKED,
            "control_character",
        ),
        (
            format!("uptime\0touch {m}"),
            code::COMMAND_BLOCKED,
            "control_character",
        ),
        (
            format!("uptime\u{2028}touch {m}"),
            code::COMMAND_BLOCKED,
            "control_character",
        ),
        (format!("touch {m}"), code::COMMAND_BLOCKED, "not_allowed"),
        (format!("'touch' {m}"), code::COMMAND_BLOCKED, "not_allowed"),
        (
            format!("sh -c 'touch {m}'"),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            format!("/bin/sh -c \"touch {m}\""),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            format!("docker run -v /:/host busybox touch /host{m}"),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            format!("systemctl status x; touch {m}"),
            code::COMMAND_BLOCKED,
            "metacharacter",
        ),
        // Quoting does not turn a metacharacter into a command separator, nor a word into a program.
        (
            format!("uptime ';' touch {m}"),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            format!("\"uptime;touch\" {m}"),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        // Option injection: flags only where the allowlist spells them out.
        (
            format!("hostname -F {m}"),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "df --output=source".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "systemctl status -H root@10.0.0.1".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "systemctl status --host=10.0.0.1".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "cat /etc/shadow".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "cat /etc/os-release /etc/shadow".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "cat /etc/../etc/shadow".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "docker ps --format '{{.Names}}'".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            "ip route add default via 1.2.3.4".into(),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        (
            format!("uptime 'unbalanced {m}"),
            code::COMMAND_BLOCKED,
            "unbalanced_quote",
        ),
        (
            format!("uptime {m}\\"),
            code::COMMAND_BLOCKED,
            "dangling_escape",
        ),
        // A fullwidth semicolon is no separator, just an unknown word.
        (
            format!("uptime\u{FF1B}touch {m}"),
            code::COMMAND_BLOCKED,
            "not_allowed",
        ),
        ("".into(), code::INVALID_PARAMS, ""),
    ];
    let (ctx, _rx) = ctx(dir.path());
    for (command, want_code, want_reason) in &rows {
        let r = tomo_agent::system::exec(
            ctx.clone(),
            SystemExecParams {
                command: command.clone(),
                timeout: None,
            },
        )
        .await;
        let e = r.expect_err(&format!("{command:?} must be refused"));
        assert_eq!(e.code, *want_code, "{command:?}: {e:?}");
        if !want_reason.is_empty() {
            assert_eq!(
                e.data
                    .as_ref()
                    .and_then(|d| d.get("reason"))
                    .and_then(|r| r.as_str()),
                Some(*want_reason),
                "{command:?}: {e:?}"
            );
        }
        assert!(!marker.exists(), "{command:?} ran something");
    }
    // The control: an allowed command does run.
    let ok = tomo_agent::system::exec(
        ctx.clone(),
        SystemExecParams {
            command: "hostname".into(),
            timeout: None,
        },
    )
    .await
    .expect("hostname runs");
    assert_eq!(ok.exit_code, Some(0));
}
