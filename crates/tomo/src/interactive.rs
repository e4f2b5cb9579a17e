//! `tomo exec -i [-t]`: an interactive session in a container. Output comes as a stream
//! (`POST /api/v1/hosts/{host}/stream`), input goes as `stream.write` calls, terminal size as
//! `stream.resize`; with `-t` the local terminal is in raw mode for the session and restored
//! afterwards, whatever happens.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tomo_proto::methods::Method as _;

use crate::Failure;
use crate::client::{Api, Streamed};
use crate::commands::seg;

/// Restores the terminal when dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn window_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// What became of one input message.
#[derive(Debug)]
enum Sent {
    Delivered,
    /// The stream is gone (the session ended): stop reading input.
    Closed,
    /// The input did not reach the session, for this reason: the user must be told.
    Refused(String),
}

/// How long held-back input is resent before it is reported as refused.
const INPUT_RETRY: Duration = Duration::from_secs(10);

/// Sends one `stream.write`/`stream.resize`. Input the agent holds back (its per-stream input
/// budget, -32002 / HTTP 429) is resent, in order, for up to [`INPUT_RETRY`]; any other refusal
/// is reported, so a keystroke is never dropped without a word (issue 17.1).
async fn deliver(api: &Api, rpc_path: &str, method: &'static str, params: Value) -> Sent {
    let body = json!({"method": method, "params": params});
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let reply = match api.send(Method::POST, rpc_path, Some(&body)).await {
            Ok(r) => r,
            Err(f) => return Sent::Refused(f.message),
        };
        if reply.status.is_success() {
            return if reply.body["result"]["open"] == false {
                Sent::Closed
            } else {
                Sent::Delivered
            };
        }
        let why = crate::client::api_failure(&reply, 1).message;
        if reply.status != reqwest::StatusCode::TOO_MANY_REQUESTS || started.elapsed() > INPUT_RETRY
        {
            return Sent::Refused(why);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Tells the user, on the terminal (raw mode: `\r\n`), that input was lost.
fn say_refused(why: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\ntomo: input not delivered to the session: {}\r\n",
        crate::out::terminal_safe(why)
    );
    let _ = err.flush();
}

pub async fn exec(
    api: &Api,
    host: &str,
    container: &str,
    tty: bool,
    cmd: Vec<String>,
) -> Result<ExitCode, Failure> {
    let body = json!({
        "method": tomo_proto::methods::DockerContainersExec::NAME,
        "params": {"container": container, "cmd": cmd, "interactive": true, "tty": tty},
    });
    let rpc_path = format!("/hosts/{}/rpc", seg(host));
    let (stream_tx, mut stream_rx) = mpsc::channel::<String>(1);
    // Input: stdin → stream.write, window changes → stream.resize, once the stream id is known.
    let input = {
        let rpc_path = rpc_path.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let Some(stream) = stream_rx.recv().await else {
                return;
            };
            let send = |method: &'static str, params: Value| {
                let api = api.clone();
                let rpc_path = rpc_path.clone();
                async move { deliver(&api, &rpc_path, method, params).await }
            };
            if tty && let Some((rows, cols)) = window_size() {
                let resize = json!({"stream": stream, "rows": rows, "cols": cols});
                if let Sent::Refused(why) =
                    send(tomo_proto::methods::StreamResize::NAME, resize).await
                {
                    say_refused(&why);
                }
            }
            let mut winch =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    n = stdin.read(&mut buf) => match n {
                        Ok(0) | Err(_) => {
                            // End of input (a pipe or file): the container's stdin is closed,
                            // as `docker exec -i` does, and its output keeps coming.
                            let eof = json!({"stream": stream, "data_b64": "", "eof": true});
                            if let Sent::Refused(why) = send(tomo_proto::methods::StreamWrite::NAME, eof).await {
                                say_refused(&why);
                            }
                            break;
                        }
                        Ok(n) => {
                            let data = tomo_common::b64(&buf[..n]);
                            match send(tomo_proto::methods::StreamWrite::NAME, json!({"stream": stream, "data_b64": data})).await {
                                Sent::Delivered => {}
                                Sent::Closed => break,
                                Sent::Refused(why) => say_refused(&why),
                            }
                        }
                    },
                    Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                        if let Some((rows, cols)) = window_size()
                            && let Sent::Refused(why) = send(tomo_proto::methods::StreamResize::NAME, json!({"stream": stream, "rows": rows, "cols": cols})).await
                        {
                            say_refused(&why);
                        }
                    }
                }
            }
        })
    };
    let raw = if tty { RawMode::enter() } else { None };
    let r = api
        .stream(
            Method::POST,
            &format!("/hosts/{}/stream", seg(host)),
            Some(&body),
            |line| {
                if let Some(id) = line.get("stream").and_then(Value::as_str) {
                    let _ = stream_tx.try_send(id.to_owned());
                } else if let Some(b64) = line["data"]["b64"].as_str()
                    && let Some(bytes) = tomo_common::unb64(b64)
                {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                true
            },
        )
        .await;
    drop(raw);
    input.abort();
    match r? {
        Streamed::Json(v) => Err(Failure::new(1, format!("unexpected answer: {v}"))),
        Streamed::End(end) => {
            let e = &end["end"];
            if let Some(err) = e.get("error").filter(|x| !x.is_null()) {
                return Err(Failure::new(1, format!("exec ended: {}", err["message"])));
            }
            let code = e["result"]["exit_code"].as_i64().unwrap_or(0);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}
