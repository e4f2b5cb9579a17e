//! Operator commands: `tomo codes`, `tomo hosts`, `tomo call`.

use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use tomo_server::http::api::{HostStatus, HostView};
use tomo_server::http::api_codes::{CodeCreated, CodeStatus, CodeView};

use crate::client::{Api, api_failure};
use crate::{ClientArgs, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// Create a single-use registration code and print the command that joins a host.
    Create {
        /// How long the code stays valid (default 15m).
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
    /// List registration codes, newest first, with their status (never their secrets).
    #[command(alias = "list")]
    Ls,
    /// Revoke a code no longer needed (or leaked): a host registering with it is refused.
    Revoke {
        /// The code's id (16 hex digits, from `tomo codes ls` or `codes create`).
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List hosts.
    #[command(alias = "list")]
    Ls,
    /// Show one host.
    Show { host: String },
    /// Remove a host: it is disconnected at once and its key never authenticates again.
    #[command(alias = "remove")]
    Rm { host: String },
    /// Set or remove a host's labels (what `--scope key=value` tokens match); admin tokens
    /// without a scope. Without changes, shows them.
    Label {
        host: String,
        /// Labels to set.
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Labels to remove; repeat for more.
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
    },
}

pub(crate) fn print_json(v: &Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Percent-encodes a path segment.
pub(crate) fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn codes(cmd: CodesCommand, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let ttl = match cmd {
        CodesCommand::Create { ttl } => ttl,
        CodesCommand::Ls => {
            let v = api.expect(Method::GET, "/codes", None, 1).await?;
            if args.output == Output::Json {
                print_json(&v);
            } else {
                let codes: Vec<CodeView> = crate::client::decode(v, "the code list")?;
                print_codes(&codes);
            }
            return Ok(ExitCode::SUCCESS);
        }
        CodesCommand::Revoke { id } => {
            let v = api
                .expect(Method::DELETE, &format!("/codes/{}", seg(&id)), None, 1)
                .await?;
            if args.output == Output::Json {
                print_json(&v);
            } else {
                let c: CodeView = crate::client::decode(v, "the revoked code")?;
                outln!("revoked registration code {}", c.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let ttl = crate::duration::parse_lifetime("--ttl", &ttl, tomo_server::auth::MAX_CODE_TTL)
        .map_err(|e| Failure::new(2, e))?;
    let v = api
        .expect(
            Method::POST,
            "/codes",
            Some(&json!({"ttl_secs": ttl.as_secs()})),
            1,
        )
        .await?;
    if args.output == Output::Json {
        print_json(&v);
    } else {
        let c: CodeCreated = crate::client::decode(v, "the new code")?;
        outln!("Registration code: {}", c.code);
        outln!("Code id:           {} (tomo codes revoke {})", c.id, c.id);
        outln!("Expires at:        {} (single use)", c.expires_at);
        outln!("Server URL:        {}", c.server_url);
        if let Some(ca) = &c.ca_file {
            outln!("CA file:           {ca} (copy it to the new host)");
        }
        outln!("\nJoin a host with the agent binary:\n  {}", c.join_command);
        outln!("\nor with Docker:\n  {}", c.docker_command);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_codes(codes: &[CodeView]) {
    let now = tomo_common::now_ms();
    if codes.is_empty() {
        outln!("no registration codes: `tomo codes create` makes one");
        return;
    }
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = codes
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                match c.status {
                    CodeStatus::Active => "active",
                    CodeStatus::Used => "used",
                    CodeStatus::Expired => "expired",
                    CodeStatus::Revoked => "revoked",
                }
                .into(),
                c.created_by.clone(),
                crate::out::ago(Some(&c.created_at), now),
                crate::out::ago(Some(&c.expires_at), now),
                or_dash(&c.used_by),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "CREATED BY",
            "CREATED",
            "EXPIRES",
            "USED BY",
        ],
        &rows,
    );
}

pub async fn hosts(cmd: HostsCommand, args: &ClientArgs) -> Result<ExitCode, Failure> {
    if let HostsCommand::Label {
        host,
        labels,
        remove,
    } = &cmd
    {
        return crate::access::label(host, labels, remove, args).await;
    }
    let api = Api::from_args(args)?;
    match cmd {
        HostsCommand::Ls => {
            let v = api.expect(Method::GET, "/hosts", None, 1).await?;
            if args.output == Output::Json {
                print_json(&v);
            } else {
                print_hosts(&crate::client::decode::<Vec<HostView>>(v, "the host list")?);
            }
        }
        HostsCommand::Show { host } => {
            let v = api
                .expect(Method::GET, &format!("/hosts/{}", seg(&host)), None, 1)
                .await?;
            // The detail view is JSON in both formats: it is nested.
            print_json(&v);
        }
        HostsCommand::Rm { host } => {
            let v = api
                .expect(Method::DELETE, &format!("/hosts/{}", seg(&host)), None, 1)
                .await?;
            if args.output == Output::Json {
                print_json(&v);
            } else {
                let v: tomo_server::http::api::Removed = crate::client::decode(v, "the removal")?;
                outln!("removed host {}", crate::out::terminal_safe(&v.removed));
            }
        }
        HostsCommand::Label { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_hosts(hosts: &[HostView]) {
    let now = tomo_common::now_ms();
    if hosts.is_empty() {
        outln!("no hosts yet: `tomo codes create` makes a code to join one");
        return;
    }
    let or_dash = |v: Option<&String>| v.map_or_else(|| "-".to_owned(), Clone::clone);
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.id.chars().take(8).collect(),
                h.hostname.clone(),
                match h.status {
                    HostStatus::Online => "online".into(),
                    HostStatus::Offline => "offline".into(),
                },
                crate::out::ago(h.last_seen.as_deref(), now),
                h.clock.as_ref().map_or_else(
                    || "-".into(),
                    |c| format!("{:+.1}s", c.offset_ms as f64 / 1000.0),
                ),
                or_dash(h.facts.docker_version.as_ref()),
                h.facts.os.clone(),
                labels_text(&h.labels),
            ]
        })
        .collect();
    // Every cell is made terminal-safe by `table` (the hostname and facts are the host's).
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "LAST SEEN",
            "CLOCK",
            "DOCKER",
            "OS",
            "LABELS",
        ],
        &rows,
    );
    for h in hosts {
        if let Some(w) = h.clock.as_ref().and_then(|c| c.warning.as_deref()) {
            eprintln!("warning: {}", crate::out::terminal_safe(w));
        }
    }
}

/// `k=v,k2=v2`, or `-` without labels.
fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn call(
    host: &str,
    method: &str,
    params: Option<&str>,
    timeout: Option<&str>,
    idempotency_key: Option<&str>,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    if idempotency_key.is_some_and(|k| !tomo_proto::rpc::valid_idempotency_key(k)) {
        return Err(Failure::new(
            2,
            "--idempotency-key must be 1 to 64 of A-Z a-z 0-9 - _",
        ));
    }
    let params: Option<Value> = match params {
        Some(p) => {
            let v: Value = serde_json::from_str(p)
                .map_err(|e| Failure::new(2, format!("PARAMS_JSON is not JSON: {e}")))?;
            if !v.is_object() && !v.is_array() {
                return Err(Failure::new(2, "PARAMS_JSON must be an object or an array"));
            }
            Some(v)
        }
        None => None,
    };
    let mut body = json!({"method": method});
    if let Some(p) = params {
        body["params"] = p;
    }
    if let Some(t) = timeout {
        let t = crate::duration::parse(t).map_err(|e| Failure::new(2, e))?;
        body["timeout_ms"] = json!(t.as_millis() as u64);
    }
    let mut api = Api::from_args(args)?;
    if let Some(k) = idempotency_key {
        api = api.with_idempotency_key(k);
    }
    let r = api
        .send(
            Method::POST,
            &format!("/hosts/{}/rpc", seg(host)),
            Some(&body),
        )
        .await?;
    // A JSON-RPC response comes back even when the host is offline or timed out.
    if r.body.get("jsonrpc").is_some() {
        print_json(&r.body);
        return Ok(if r.body.get("error").is_some() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    Err(api_failure(&r, 2))
}

/// Prints rows under a header, columns padded to their widest cell ([`table_lines`]).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    for line in table_lines(header, rows) {
        outln!("{line}");
    }
}

/// The lines of a table. Cells are made terminal-safe first: a name, label or state holding an
/// escape sequence (a host's or a container's words) is shown escaped, not acted upon by the
/// terminal, and the padding counts what is shown.
pub(crate) fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| crate::out::terminal_safe(c).into_owned())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    std::iter::once(&head)
        .chain(&rows)
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            line.join("  ").trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::table_lines;

    /// A host's OS name or a container's state with an escape sequence (retitle the window,
    /// clear the screen) is printed escaped, and the columns still line up.
    #[test]
    fn table_cells_are_terminal_safe() {
        let rows = vec![
            vec!["web".to_owned(), "\u{1b}]0;pwned\u{7}\u{1b}[2J".to_owned()],
            vec!["db".to_owned(), "Debian 12".to_owned()],
        ];
        let lines = table_lines(&["NAME", "OS"], &rows);
        assert!(
            lines
                .iter()
                .all(|l| !l.contains('\u{1b}') && !l.contains('\u{7}')),
            "{lines:?}"
        );
        assert_eq!(lines[1], "web   \\x1b]0;pwned\\x07\\x1b[2J");
        assert_eq!(lines[2], "db    Debian 12");
    }
}
