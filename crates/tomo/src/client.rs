//! The CLI's side of the operator API: settings from flags, environment or the client config
//! file (`$HOME/.config/tomo/config.toml`, or `TOMO_CONFIG`), and an HTTPS client that always
//! verifies the control plane's certificate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ClientArgs, Failure};

/// The client config file. `Debug` redacts the token.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    pub url: Option<String>,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Where the client config lives.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TOMO_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tomo").join("config.toml")
}

impl ClientConfig {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, Failure> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Failure::config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Failure::config(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the file atomically with mode 0600 (it holds a token).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        tomo_common::fs::write_private(path, text.as_bytes())
    }
}

/// A configured API client.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
    /// The CA the control plane's certificate is checked against, when one is pinned.
    ca_file: Option<PathBuf>,
    /// Sent as `Idempotency-Key` with every request that is not a `GET`.
    idempotency_key: Option<String>,
}

/// Connecting (TCP and TLS) to the control plane.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A read (`GET`): the control plane answers these from its own state.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Anything else: a call to a host may take the longest call timeout (10 min, a pull or run).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(11 * 60);

/// The control plane's URL must be `https://`: the token is a bearer secret (issue 17.4).
pub fn check_url(url: &str) -> Result<(), Failure> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let fixed = match url.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => format!("https://{url}"),
    };
    let why = if url.starts_with("http://") {
        "the API token would go out in clear over http://"
    } else {
        "the URL has no https:// scheme"
    };
    Err(
        Failure::new(2, format!("refusing {url}: {why}; use https://"))
            .hint(format!("the control plane speaks HTTPS only: try {fixed}")),
    )
}

/// An answer from the API: status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: reqwest::StatusCode,
    pub body: Value,
}

impl Api {
    /// Flags and environment win over the config file.
    pub fn from_args(args: &ClientArgs) -> Result<Self, Failure> {
        let path = config_path();
        let file = ClientConfig::load(&path)?;
        let url = args.url.clone().or(file.url).ok_or_else(|| {
            Failure::new(2, "no control plane configured").hint(format!(
                "run `tomo dev`, or pass --url and --token (or TOMO_URL/TOMO_TOKEN), or write {}",
                path.display()
            ))
        })?;
        let token = args.token.clone().or(file.token).ok_or_else(|| {
            Failure::new(2, "no API token configured")
                .hint("run `tomo login --url URL`, or pass --token or set TOMO_TOKEN")
        })?;
        let ca_file = args.ca_file.clone().or(file.ca_file);
        Self::new(&url, token, ca_file)
    }

    /// A client of the control plane at `url` with `token`, verifying its certificate against
    /// `ca_file` or, without one, the webpki roots.
    pub fn new(url: &str, token: String, ca_file: Option<PathBuf>) -> Result<Self, Failure> {
        check_url(url)?;
        let trust = match ca_file.clone() {
            Some(ca) => tomo_common::tls::Trust::CaFile(ca),
            None => tomo_common::tls::Trust::WebPki,
        };
        let tls =
            tomo_common::tls::client_config(&trust).map_err(|e| Failure::new(2, e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // The token never goes out in clear, whatever a redirect says (issue 17.4).
            .https_only(true)
            // A server that accepts and never answers is reported, not waited for (issue 17.5).
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| Failure::new(2, format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            token,
            ca_file,
            idempotency_key: None,
        })
    }

    /// This client, sending `key` as the `Idempotency-Key` of its writes.
    pub fn with_idempotency_key(mut self, key: &str) -> Self {
        self.idempotency_key = Some(key.to_owned());
        self
    }

    /// The pinned CA file, if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The control plane's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request to `/api/v1{path}`; transport failures are exit status 2.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let deadline = if method == reqwest::Method::GET {
            READ_TIMEOUT
        } else {
            CALL_TIMEOUT
        };
        let write = method != reqwest::Method::GET;
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(deadline);
        if let (true, Some(k)) = (write, &self.idempotency_key) {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_failure(&self.url, &e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Failure::new(2, format!("reading the answer: {e}")))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        // Held for a human (a token created `--require-approval`): never shown as a success,
        // whichever command asked (issue 17.2).
        if status == reqwest::StatusCode::ACCEPTED
            && let Some(id) = body["pending_action"]["id"].as_str()
        {
            return Err(Failure::pending(id));
        }
        Ok(Reply { status, body })
    }

    /// POSTs one JSON-RPC message to the control plane's MCP endpoint (`/mcp`, see `tomo mcp`).
    pub async fn post_mcp(&self, message: &Value, protocol: &str) -> Result<Reply, Failure> {
        let resp = self
            .http
            .post(format!("{}/mcp", self.url))
            .bearer_auth(&self.token)
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .header("mcp-protocol-version", protocol)
            .json(message)
            .send()
            .await
            .map_err(|e| transport_failure(&self.url, &e))?;
        let status = resp.status();
        let sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let text = resp
            .text()
            .await
            .map_err(|e| Failure::new(2, format!("reading the answer: {e}")))?;
        // An event stream carries the answer in a `data:` line.
        let json_text = if sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .rfind(|d| d.contains("\"id\""))
                .unwrap_or("")
                .to_owned()
        } else {
            text.clone()
        };
        let body = serde_json::from_str(&json_text).unwrap_or(Value::String(text));
        Ok(Reply { status, body })
    }

    /// Like [`Api::send`], turning API errors into a failure with `status`.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        status: u8,
    ) -> Result<Value, Failure> {
        let r = self.send(method, path, body).await?;
        if r.status.is_success() {
            return Ok(r.body);
        }
        Err(api_failure_at(&r, status, path))
    }
}

/// An answer of the API as its type (the operator API's own types, shared with the control
/// plane): a body that does not fit is said, not guessed at.
pub fn decode<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| {
        Failure::new(
            1,
            format!("{what} from the control plane is not what this CLI reads: {e}"),
        )
    })
}

/// What a possibly streamed call answered.
#[derive(Debug)]
pub enum Streamed {
    /// A plain JSON answer (the call did not open a stream).
    Json(Value),
    /// The stream's lines were handed to the callback; this is its last line (`{"end": …}`).
    End(Value),
}

impl Api {
    /// Sends a request whose answer may be NDJSON; each line goes to `on_line`, which returns
    /// `false` to stop reading (the stream is then closed by dropping the connection).
    pub async fn stream(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        mut on_line: impl FnMut(&Value) -> bool,
    ) -> Result<Streamed, Failure> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| transport_failure(&self.url, &e))?;
        let status = resp.status();
        let ndjson = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
        if !ndjson || !status.is_success() {
            let text = resp
                .text()
                .await
                .map_err(|e| Failure::new(2, format!("reading the answer: {e}")))?;
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if status == reqwest::StatusCode::ACCEPTED
                && let Some(id) = body["pending_action"]["id"].as_str()
            {
                return Err(Failure::pending(id));
            }
            if !status.is_success() {
                return Err(api_failure_at(&Reply { status, body }, 1, path));
            }
            return Ok(Streamed::Json(body));
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut last = Value::Null;
        // A host stream (its first line names it) ends with an `end` line; a follow of events
        // or audit records just ends.
        let mut host_stream = false;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| stream_broke(&self.url, &e))?
        {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                host_stream |= v.get("stream").is_some() && v.get("window").is_some();
                let go_on = on_line(&v);
                last = v;
                if !go_on {
                    return Ok(Streamed::End(last));
                }
            }
        }
        if host_stream && last.get("end").is_none() {
            // The body ended cleanly without the stream's last line: the control plane went.
            return Err(stream_broke(
                &self.url,
                &"the answer ended before the stream did",
            ));
        }
        Ok(Streamed::End(last))
    }
}

/// A stream whose connection to the control plane broke before its end (issue 13.8: it said
/// "error decoding response body"): what happened, where, and what to do.
fn stream_broke(url: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::new(
        2,
        format!("the connection to the control plane at {url} broke in the middle of the stream ({e}); it may have stopped or restarted"),
    )
    .hint("run the command again once the control plane answers (`tomo hosts ls`)")
}

/// Turns an error reply into a failure with a hint where one helps.
/// [`api_failure`] for an answer to `path`: a `not_found` hint names what lists the kind of
/// thing that path asked for (issue 17.10).
pub fn api_failure_at(r: &Reply, status: u8, path: &str) -> Failure {
    let f = api_failure(r, status);
    if r.body["error"]["code"] != "not_found" {
        return f;
    }
    let segs: Vec<&str> = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split('/')
        .collect();
    // `/hosts/H/...`: the host was found when the agent answered (the error carries `rpc`).
    let hint = match segs.as_slice() {
        ["", "approvals", ..] => "`tomo approvals --status all` lists the actions".to_owned(),
        ["", "tokens", ..] => "`tomo tokens ls` lists the tokens".to_owned(),
        ["", "codes", ..] => "`tomo codes create` makes a new code".to_owned(),
        ["", "hosts", host, "images", ..] if r.body["error"]["rpc"].is_object() => {
            format!("`tomo images {host}` lists the host's images")
        }
        ["", "hosts", host, _, ..] if r.body["error"]["rpc"].is_object() => {
            format!("`tomo ps {host} -a` lists the host's containers")
        }
        _ => "`tomo hosts ls` lists the hosts".to_owned(),
    };
    Failure {
        hint: Some(hint),
        ..f
    }
}

pub fn api_failure(r: &Reply, status: u8) -> Failure {
    let code = r.body["error"]["code"].as_str().unwrap_or("error");
    let message = r.body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| r.body.to_string());
    let f = Failure::new(
        status,
        format!("{message} ({code}, HTTP {})", r.status.as_u16()),
    );
    match code {
        "unauthorized" => f.hint(
            "the token is missing, unknown, expired or revoked: run `tomo login --url URL` with a \
             valid one (an admin makes one with `tomo tokens create`)",
        ),
        "forbidden" => f.hint(
            "this token's role is too low for that: `tomo whoami` shows it; an admin can make a \
             token with the role needed (`tomo tokens create NAME --role execute|admin`)",
        ),
        "stale_request" => f.hint(
            "the host judged the request out of date: its clock and the control plane's differ              (`tomo hosts ls` shows each host's CLOCK offset; fix it with NTP), or the request was              held back in the network past its timeout; it was not run",
        ),
        "agent_disk" => f.hint(
            "the host's agent cannot write to its data directory (full or read-only disk), so it              refuses commands; free space there and retry",
        ),
        "out_of_scope" => f.hint(
            "this token's host scope does not cover that: `tomo whoami` shows its scope; fleet-wide \
             routes (codes, audit, tokens, labels) need a token without a scope",
        ),
        "host_offline" => {
            f.hint("the host's agent is not connected: `tomo hosts ls` shows every host's status")
        }
        "throttled" => f.hint("too many bad tokens from this address: wait, then use a valid one"),
        "not_found" => f.hint("`tomo hosts ls` lists the hosts"),
        "ambiguous" => f.hint("use the host's id"),
        "conflict" => f.hint(
            "the engine refused it as it stands: the name is taken (`--name` another, or `tomo rm` \
             the old one) or the container is running (`tomo stop` it first)",
        ),
        _ => f,
    }
}

/// Why the control plane could not be reached, with what to do next: nothing listening (start
/// it, or fix the URL), a certificate that does not verify (`--ca-file`), or anything else.
/// Classified by the error types in the chain, never by their text.
pub fn transport_failure(url: &str, e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        let what = if e.is_connect() {
            format!("no connection to the control plane at {url} within {CONNECT_TIMEOUT:?}")
        } else {
            format!("no answer from the control plane at {url} in time")
        };
        return Failure::new(2, what).hint(
            "it accepts connections but does not answer: is the URL the control plane's API \
             (`tomo login --url URL`), and is it running and not overloaded?",
        );
    }
    let mut msg = format!("cannot reach the control plane at {url}: {e}");
    let (mut refused, mut tls) = (false, false);
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        // An io::Error's source skips the error it wraps (often another io::Error): go into
        // those too.
        let mut layer = Some(s);
        while let Some(l) = layer {
            tls |= l.downcast_ref::<rustls::Error>().is_some();
            let io = l.downcast_ref::<std::io::Error>();
            refused |= io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
            layer = io
                .and_then(std::io::Error::get_ref)
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        }
        src = s.source();
    }
    let f = Failure::new(2, msg);
    if refused {
        f.hint(
            "nothing listens there: is the control plane running (`tomo dev` starts one on this \
             machine)? is the URL right (`tomo login --url URL`)?",
        )
    } else if tls {
        f.hint(
            "the server's certificate does not verify: pass the CA that signed it with --ca-file \
             (a generated one is <data-dir>/tls/ca.pem; `tomo login --ca-file` saves it)",
        )
    } else {
        f.hint("is the control plane running, and is the URL right (`tomo login --url URL`)?")
    }
}
