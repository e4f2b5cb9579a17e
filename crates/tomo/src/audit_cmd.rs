//! `tomo audit [--host H] [--decision allowed|denied] [-f] [--limit N]`: the audit trail (admin tokens only). One line per
//! record, `time host principal decision method reason outcome duration` (`-` for what a record
//! lacks; host `-` is the control plane's own record of an API request), or the API's JSON with
//! `-o json` (one object per line when following).

use std::process::ExitCode;

use reqwest::Method;
use serde_json::Value;

use crate::client::{Api, Streamed};
use crate::commands::{print_json, seg};
use crate::{ClientArgs, Failure, Output};

/// Which records `tomo audit` shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// One host's (id, hostname or unique id prefix).
    pub host: Option<&'a str>,
    /// `allowed` or `denied`.
    pub decision: Option<&'a str>,
}

/// Runs `tomo audit`.
pub async fn audit(
    filter: Filter<'_>,
    follow: bool,
    limit: u32,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let json_out = args.output == Output::Json;
    let mut path = format!("/audit?limit={limit}&follow={follow}");
    if let Some(h) = filter.host {
        path.push_str(&format!("&host={}", seg(h)));
    }
    if let Some(d) = filter.decision {
        path.push_str(&format!("&decision={}", seg(d)));
    }
    let show = |r: &Value| {
        if json_out {
            outln!("{r}");
        } else if let Some(n) = r.get("lagged") {
            eprintln!("({n} records skipped: this reader was too slow)");
        } else {
            outln!("{}", human(r));
        }
    };
    let r = api
        .stream(Method::GET, &path, None, |r| {
            // A follow ends only when the control plane does: it says so in an end line.
            if r.get("end").is_some() {
                return false;
            }
            show(r);
            true
        })
        .await?;
    if let Streamed::End(end) = &r {
        return crate::ops::end_status(end);
    }
    if let Streamed::Json(v) = r {
        if json_out {
            print_json(&v);
        } else {
            v.as_array().into_iter().flatten().for_each(show);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One record as a human line.
fn human(r: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => crate::out::terminal_safe(s).into_owned(),
        Value::Null => "-".into(),
        Value::String(_) => "-".into(),
        other => other.to_string(),
    };
    let host: String = r["host_id"]
        .as_str()
        .map(|h| h.chars().take(12).collect())
        .unwrap_or_else(|| "-".into());
    let principal = match (&r["principal"], &r["role"]) {
        (Value::String(p), Value::String(role)) => format!(
            "{}({})",
            crate::out::terminal_safe(p),
            crate::out::terminal_safe(role)
        ),
        (p, _) => text(p),
    };
    format!(
        "{}  {host}  {principal}  {}  {}  {}  {}  {}ms",
        text(&r["at"]),
        text(&r["decision"]),
        text(&r["method"]),
        text(&r["reason"]),
        text(&r["outcome"]),
        r["duration_ms"].as_u64().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An agent forwards its own audit records: a hostile host can put anything in `method`,
    /// `reason` or `principal`. The line shows it escaped.
    #[test]
    fn hostile_audit_records_are_shown_escaped() {
        let forged = json!({"at": "2025-01-01T00:00:00Z", "host_id": "0123456789abcdef",
            "principal": "x\u{1b}[8m", "role": "admin", "decision": "allowed",
            "method": "\u{1b}]8;;https://evil.example/\u{7}docker.containers.list",
            "reason": "\u{9b}2J", "outcome": "ok", "duration_ms": 1});
        let line = human(&forged);
        assert!(
            !line.chars().any(|c| c.is_control()),
            "no control character reaches the terminal: {line:?}"
        );
        assert!(line.contains("x\\x1b[8m(admin)"), "{line}");
        assert!(
            line.contains("\\x1b]8;;https://evil.example/\\x07docker.containers.list"),
            "{line}"
        );
        assert!(line.contains("\\x9b2J"), "{line}");
    }

    #[test]
    fn human_lines() {
        let operator = json!({"at": "2025-01-01T00:00:00Z", "host_id": null, "principal": "admin",
            "role": "admin", "decision": "allowed", "method": "GET /api/v1/hosts",
            "outcome": "ok", "duration_ms": 3});
        assert_eq!(
            human(&operator),
            "2025-01-01T00:00:00Z  -  admin(admin)  allowed  GET /api/v1/hosts  -  ok  3ms"
        );
        let agent = json!({"at": "2025-01-01T00:00:01Z", "host_id": "0123456789abcdef",
            "decision": "denied", "method": "system.exec", "reason": "rate_limited",
            "outcome": "-32002", "duration_ms": 0});
        assert_eq!(
            human(&agent),
            "2025-01-01T00:00:01Z  0123456789ab  -  denied  system.exec  rate_limited  -32002  0ms"
        );
    }
}
