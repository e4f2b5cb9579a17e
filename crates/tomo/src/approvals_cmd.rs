//! `tomo approvals`, `tomo approve ID`, `tomo deny ID`: the human side of the approval flow
//! (docs/mcp.md). Calls made with a token that requires approval wait as pending actions until an
//! admin token that does not itself require approval decides.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Value, json};

use tomo_server::approvals::ActionView;
use tomo_server::store::ActionStatus;

use crate::client::{Api, decode};
use crate::commands::{print_json, seg, table};
use crate::out::safe as text;
use crate::{ClientArgs, Failure, Output};

/// A JSON value (a request field, a result) for a terminal, pretty.
fn pretty(v: &Value) -> String {
    text(&serde_json::to_string_pretty(v).unwrap_or_default())
}

/// `tomo approvals [--status S]`: by default what needs a human, pending actions and
/// interrupted ones (approved, but the answer was lost: outcome unknown, never run again).
pub async fn list(status: &str, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let v = api
        .expect(
            Method::GET,
            &format!("/approvals?status={}", seg(status)),
            None,
            1,
        )
        .await?;
    if args.output == Output::Json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let actions: Vec<ActionView> = decode(v, "the action list")?;
    let now = tomo_common::now_ms();
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|a| {
            vec![
                text(&a.id),
                a.status.as_str().to_owned(),
                text(&a.requested_by.name),
                crate::out::ago(Some(&a.expires_at), now),
                text(&a.summary),
            ]
        })
        .collect();
    if rows.is_empty() {
        if status == "open" {
            eprintln!("no pending or interrupted actions");
        } else {
            eprintln!("no {status} actions");
        }
    } else {
        table(&["ID", "STATUS", "ASKED BY", "EXPIRES", "ACTION"], &rows);
        let interrupted = actions
            .iter()
            .any(|a| a.status == ActionStatus::Interrupted);
        if interrupted {
            eprintln!(
                "interrupted: the control plane lost the answer of an approved action (it stopped, \
                 or the host's connection or the call's time ran out); whether it ran is unknown \
                 until the host's audit record of it arrives (tomo approvals show ID, tomo audit \
                 --host HOST); it is never run again"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tomo approvals show ID`: the whole request, risky fields first, uncut (issue 12.3).
pub async fn show(id: &str, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let v = api
        .expect(Method::GET, &format!("/approvals/{}", seg(id)), None, 1)
        .await?;
    if args.output == Output::Json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let v: ActionView = decode(v, "the action")?;
    outln!("{}  {}", text(&v.id), v.status.as_str());
    outln!(
        "{} on host {}, asked by {}, expires {}",
        text(&v.method),
        text(&v.host_id),
        text(&v.requested_by.name),
        text(&v.expires_at)
    );
    for f in &v.request {
        let mark = if f.risky { "!" } else { " " };
        outln!("{mark} {}: {}", text(&f.field), pretty(&f.value));
    }
    if let Some(hidden) = v.hidden.as_array().filter(|h| !h.is_empty()) {
        let paths: Vec<String> = hidden.iter().map(pretty).collect();
        outln!("hidden (secret-looking keys): {}", paths.join(", "));
    }
    if let Some(result) = v.result.as_ref().filter(|r| !r.is_null()) {
        outln!("result: {}", pretty(result));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tomo approve ID` / `tomo deny ID [--reason R]`. Exit 1 when an approved action failed.
pub async fn decide(
    id: &str,
    approve: bool,
    reason: Option<&str>,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let (verb, body) = if approve {
        ("approve", None)
    } else {
        ("deny", Some(json!({"reason": reason})))
    };
    let v = api
        .expect(
            Method::POST,
            &format!("/approvals/{}/{verb}", seg(id)),
            body.as_ref(),
            1,
        )
        .await?;
    if args.output == Output::Json {
        print_json(&v);
    }
    let v: ActionView = decode(v, "the decided action")?;
    if args.output != Output::Json {
        outln!("{}  {}", text(&v.id), text(&v.summary));
        outln!("status: {}", v.status.as_str());
        if let Some(result) = v.result.as_ref().filter(|r| !r.is_null()) {
            outln!("{}", pretty(result));
        }
    }
    Ok(if v.status == ActionStatus::Failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
