//! Host operations: `tomo ps|logs|exec|run|start|stop|restart|rm|update|pull|images|networks|
//! volumes|stats|events|metrics`. Each maps onto one agent method through the REST API; human
//! tables by default, the API's JSON with `-o json`.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use tomo_proto::methods::{
    ContainerAction, ContainerStats, ContainerSummary, ExecOutput, ImageSummary, LogChunk,
    LogsResult, Method as _, NetworkSummary, ObjectRef, RunResult, UpdateResult, VolumeSummary,
};
use tomo_proto::rpc::Outcome;
use tomo_server::core::events::EventView;
use tomo_server::http::api::{HostStatus, HostView};
use tomo_server::http::api_fleet::FleetAnswer;

use crate::client::{Api, Streamed, decode};
use crate::commands::{print_json, seg, table};
use crate::out::safe as t;
use crate::{ClientArgs, Failure, Output};

/// `ls`, `create NAME` or `rm NAME` for images, networks and volumes.
#[derive(Debug, Clone, Subcommand)]
pub enum ObjectAction {
    /// List them (the default).
    Ls,
    /// Create one (networks and volumes).
    Create {
        name: String,
        /// Driver (`bridge` for networks, `local` for volumes by default).
        #[arg(long)]
        driver: Option<String>,
        /// Label KEY=VALUE, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Remove one.
    Rm {
        name: String,
        #[arg(short, long)]
        force: bool,
    },
}

/// Options of `tomo run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    pub host: String,
    pub image: String,
    #[arg(long)]
    pub name: Option<String>,
    /// Environment KEY=VALUE, repeatable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Publish [IP:]HOST:CONTAINER[/PROTO], repeatable.
    #[arg(short = 'p', long = "publish")]
    pub ports: Vec<String>,
    /// Mount SOURCE:TARGET[:ro] (a host path or a volume name), repeatable.
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Label KEY=VALUE, repeatable.
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Restart policy: no, always, unless-stopped, on-failure.
    #[arg(long)]
    pub restart: Option<String>,
    /// Network mode: bridge, none, or a network's name.
    #[arg(long)]
    pub network: Option<String>,
    /// Memory limit in bytes, or with a suffix k, m, g.
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Run at most once under this key (1 to 64 of A-Z a-z 0-9 - _): a retry with the same key
    /// and arguments within 24 h answers with the first run's result. A new key is made when
    /// none is given, and shown when the run's outcome could not be learnt.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Command and arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn key_value(param: &str, items: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut m = Map::new();
    for i in items {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| Failure::new(2, format!("{param} {i:?}: expected KEY=VALUE")))?;
        m.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(m)
}

fn parse_port(spec: &str) -> Result<Value, Failure> {
    let bad = || {
        Failure::new(
            2,
            format!("-p {spec:?}: expected [IP:]HOST:CONTAINER[/PROTO]"),
        )
    };
    let (rest, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
    let num = |s: &str| s.parse::<u16>().map_err(|_| bad());
    match parts.as_slice() {
        [c] => Ok(json!({"container_port": num(c)?, "protocol": proto})),
        [c, h] => Ok(json!({"container_port": num(c)?, "host_port": num(h)?, "protocol": proto})),
        [c, h, ip] => Ok(
            json!({"container_port": num(c)?, "host_port": num(h)?, "host_ip": ip, "protocol": proto}),
        ),
        _ => Err(bad()),
    }
}

fn parse_volume(spec: &str) -> Result<Value, Failure> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [s, t] => Ok(json!({"source": s, "target": t, "read_only": false})),
        [s, t, "ro"] => Ok(json!({"source": s, "target": t, "read_only": true})),
        [s, t, "rw"] => Ok(json!({"source": s, "target": t, "read_only": false})),
        _ => Err(Failure::new(
            2,
            format!("-v {spec:?}: expected SOURCE:TARGET[:ro]"),
        )),
    }
}

fn parse_bytes(text: &str) -> Result<i64, Failure> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1024),
        Some('m') => (&t[..t.len() - 1], 1024 * 1024),
        Some('g') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t.as_str(), 1),
    };
    num.parse::<i64>()
        .map(|n| n * mult)
        .map_err(|_| Failure::new(2, format!("--memory {text:?}: expected bytes, e.g. 512m")))
}

/// The params of `docker.containers.run` for `tomo run`.
pub fn run_params(a: &RunArgs) -> Result<Value, Failure> {
    let mut p = json!({"image": a.image});
    if let Some(n) = &a.name {
        p["name"] = json!(n);
    }
    if !a.env.is_empty() {
        p["env"] = Value::Object(key_value("-e", &a.env)?);
    }
    if !a.labels.is_empty() {
        p["labels"] = Value::Object(key_value("--label", &a.labels)?);
    }
    if !a.ports.is_empty() {
        p["ports"] = a
            .ports
            .iter()
            .map(|s| parse_port(s))
            .collect::<Result<_, _>>()?;
    }
    if !a.volumes.is_empty() {
        p["volumes"] = a
            .volumes
            .iter()
            .map(|s| parse_volume(s))
            .collect::<Result<_, _>>()?;
    }
    if let Some(r) = &a.restart {
        p["restart_policy"] = json!({"name": r});
    }
    if let Some(n) = &a.network {
        p["network_mode"] = json!(n);
    }
    if let Some(m) = &a.memory {
        p["memory"] = json!(parse_bytes(m)?);
    }
    if let Some(c) = a.cpus {
        p["cpus"] = json!(c);
    }
    if !a.command.is_empty() {
        p["command"] = json!(a.command);
    }
    Ok(p)
}

/// A field for a terminal: names, labels, states and errors come from a host and its
/// containers, so control characters are shown escaped ([`crate::out::terminal_safe`]).
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => crate::out::terminal_safe(s).into_owned(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn short(id: &Value) -> String {
    s(id)
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn human_bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn path(host: &str, rest: &str) -> String {
    format!("/hosts/{}{rest}", seg(host))
}

/// Which hosts `tomo ps` lists.
#[derive(Debug, Clone, Default)]
pub struct PsHosts {
    /// One host, by the REST route (an unknown one is an error).
    pub one: Option<String>,
    /// `--host`: only these (each must match one host).
    pub named: Vec<String>,
    /// `--label KEY=VALUE`: only hosts with all of these labels.
    pub labels: Vec<String>,
}

/// A container and the host it runs on, as `tomo ps` shows it across hosts.
#[derive(Debug, serde::Serialize)]
struct Placed<'a> {
    host: HostName<'a>,
    #[serde(flatten)]
    container: &'a ContainerSummary,
}

#[derive(Debug, serde::Serialize)]
struct HostName<'a> {
    id: &'a str,
    hostname: &'a str,
}

/// `tomo ps [HOST] [-a] [--host H]… [--label K=V]… [-q]`.
pub async fn ps(
    which: &PsHosts,
    all: bool,
    quiet: bool,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let Some(host) = &which.one else {
        return ps_fleet(&api, which, all, quiet, args).await;
    };
    let list = api
        .expect(
            Method::GET,
            &path(host, &format!("/containers?all={all}")),
            None,
            1,
        )
        .await?;
    let list: Vec<ContainerSummary> = decode(list, "the container list")?;
    if quiet {
        for c in &list {
            outln!("{}", short_id(&c.id));
        }
    } else if args.output == Output::Json {
        print_json(&serde_json::to_value(&list).unwrap_or_default());
    } else {
        let rows: Vec<Vec<String>> = list.iter().map(container_row).collect();
        table(&["ID", "NAME", "IMAGE", "STATE", "STATUS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// A read of every chosen host that is online at once: one fan-out (`POST /fleet/rpc`) of
/// `method` with `params`, each host's answer read as `T`, with its hostname and id. A host
/// that is offline or whose call failed is named on stderr and left out (exit 0): one dead host
/// does not hide the fleet. `which` chooses the hosts (`--host`, `--label`; every host in scope
/// without them).
async fn fleet_read<T: serde::de::DeserializeOwned>(
    api: &Api,
    which: &PsHosts,
    method: &str,
    params: Value,
    what: &str,
) -> Result<Vec<(String, String, T)>, Failure> {
    let labels: Vec<(&str, &str)> = which
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Failure::new(2, format!("--label {l:?}: expected KEY=VALUE")))
        })
        .collect::<Result<_, _>>()?;
    let hosts = api.expect(Method::GET, "/hosts", None, 1).await?;
    let hosts: Vec<HostView> = decode(hosts, "the host list")?;
    let mut chosen: Vec<&HostView> = Vec::new();
    for key in &which.named {
        let matches: Vec<&HostView> = hosts
            .iter()
            .filter(|h| h.hostname == *key || h.id.starts_with(key.as_str()))
            .collect();
        match matches.as_slice() {
            [one] => chosen.push(one),
            [] => {
                return Err(Failure::new(1, format!("no host matches {key:?}"))
                    .hint("`tomo hosts ls` lists the hosts"));
            }
            _ => {
                return Err(Failure::new(1, format!("{key:?} matches several hosts"))
                    .hint("use the id (`tomo hosts ls`)"));
            }
        }
    }
    if which.named.is_empty() {
        chosen = hosts.iter().collect();
    }
    chosen.retain(|h| {
        labels
            .iter()
            .all(|(k, v)| h.labels.get(*k).map(String::as_str) == Some(*v))
    });
    let mut seen = std::collections::HashSet::new();
    chosen.retain(|h| seen.insert(h.id.as_str()));
    let (online, offline): (Vec<&HostView>, Vec<&HostView>) = chosen
        .into_iter()
        .partition(|h| h.status == HostStatus::Online);
    for h in &offline {
        eprintln!(
            "{}: offline, its {what} are not listed",
            crate::out::terminal_safe(&h.hostname)
        );
    }
    let mut placed = Vec::new();
    if online.is_empty() {
        return Ok(placed);
    }
    let ids: Vec<&str> = online.iter().map(|h| h.id.as_str()).collect();
    let body = json!({"method": method, "params": params, "hosts": ids});
    let answer = api
        .expect(Method::POST, "/fleet/rpc", Some(&body), 1)
        .await?;
    let hostname = |id: &str| {
        online
            .iter()
            .find(|h| h.id == id)
            .map(|h| h.hostname.clone())
            .unwrap_or_default()
    };
    let answer: FleetAnswer = decode(answer, "the fan-out's answer")?;
    for r in answer.results.unwrap_or_default() {
        let name = hostname(&r.host_id);
        match r.response.outcome {
            Outcome::Error(e) => {
                eprintln!(
                    "{}: {}",
                    crate::out::terminal_safe(&name),
                    crate::out::terminal_safe(&e.message)
                );
            }
            Outcome::Result(v) => placed.push((name, r.host_id.clone(), decode(v, what)?)),
        }
    }
    Ok(placed)
}

/// `tomo ps` across hosts ([`fleet_read`] of `docker.containers.list`).
async fn ps_fleet(
    api: &Api,
    which: &PsHosts,
    all: bool,
    quiet: bool,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let lists: Vec<(String, String, Vec<ContainerSummary>)> = fleet_read(
        api,
        which,
        tomo_proto::methods::DockerContainersList::NAME,
        json!({"all": all}),
        "containers",
    )
    .await?;
    let mut placed: Vec<(String, String, ContainerSummary)> = lists
        .into_iter()
        .flat_map(|(name, id, list)| list.into_iter().map(move |c| (name.clone(), id.clone(), c)))
        .collect();
    placed.sort_by(|a, b| (&a.0, &a.2.name).cmp(&(&b.0, &b.2.name)));
    if quiet {
        for (_, _, c) in &placed {
            outln!("{}", short_id(&c.id));
        }
    } else if args.output == Output::Json {
        let out: Vec<Placed> = placed
            .iter()
            .map(|(hostname, id, c)| Placed {
                host: HostName { id, hostname },
                container: c,
            })
            .collect();
        print_json(&serde_json::to_value(&out).unwrap_or_default());
    } else {
        let rows: Vec<Vec<String>> = placed
            .iter()
            .map(|(hostname, _, c)| {
                let mut row = vec![crate::out::terminal_safe(hostname).into_owned()];
                row.extend(container_row(c));
                row
            })
            .collect();
        table(&["HOST", "ID", "NAME", "IMAGE", "STATE", "STATUS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// An image and the host it is on, as `tomo images` shows it across hosts.
#[derive(Debug, serde::Serialize)]
struct PlacedImage<'a> {
    host: HostName<'a>,
    #[serde(flatten)]
    image: &'a ImageSummary,
}

/// `tomo images [--host H]… [--label K=V]… [-q]`: the images of every chosen online host, with a
/// HOST column ([`fleet_read`] of `docker.images.list`).
pub async fn images_fleet(
    which: &PsHosts,
    quiet: bool,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let lists: Vec<(String, String, Vec<ImageSummary>)> = fleet_read(
        &api,
        which,
        tomo_proto::methods::DockerImagesList::NAME,
        json!({}),
        "images",
    )
    .await?;
    let mut placed: Vec<(&str, &str, &ImageSummary)> = lists
        .iter()
        .flat_map(|(name, id, list)| list.iter().map(move |i| (name.as_str(), id.as_str(), i)))
        .collect();
    placed.sort_by(|a, b| (a.0, &a.2.tags, &a.2.id).cmp(&(b.0, &b.2.tags, &b.2.id)));
    if quiet {
        for (_, _, i) in &placed {
            outln!("{}", short_id(&i.id));
        }
    } else if args.output == Output::Json {
        let out: Vec<PlacedImage> = placed
            .iter()
            .map(|(hostname, id, image)| PlacedImage {
                host: HostName { id, hostname },
                image,
            })
            .collect();
        print_json(&serde_json::to_value(&out).unwrap_or_default());
    } else {
        let rows: Vec<Vec<String>> = placed
            .iter()
            .map(|(hostname, _, i)| {
                let mut row = vec![t(hostname)];
                row.extend(image_row(i));
                row
            })
            .collect();
        table(&["HOST", "ID", "TAGS", "SIZE"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// An image's row: ID, TAGS (`<none>` without), SIZE (terminal-safe).
fn image_row(i: &ImageSummary) -> Vec<String> {
    let tags = i.tags.iter().map(|x| t(x)).collect::<Vec<_>>().join(", ");
    vec![
        short_id(&i.id),
        if tags.is_empty() {
            "<none>".into()
        } else {
            tags
        },
        human_bytes(i.size as f64),
    ]
}

/// A container's row: ID, NAME, IMAGE, STATE, STATUS (terminal-safe).
fn container_row(c: &ContainerSummary) -> Vec<String> {
    let safe = |t: &str| crate::out::terminal_safe(t).into_owned();
    vec![
        short_id(&c.id),
        safe(&c.name),
        safe(&c.image),
        safe(&c.state),
        safe(&c.status),
    ]
}

fn short_id(id: &str) -> String {
    crate::out::terminal_safe(id.trim_start_matches("sha256:"))
        .chars()
        .take(12)
        .collect()
}

/// `tomo start|stop|restart|rm|update HOST CONTAINER`.
pub async fn action(
    host: &str,
    container: &str,
    action: &str,
    body: Value,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let (method, p) = if action == "rm" {
        let q = format!(
            "/containers/{}?force={}&volumes={}",
            seg(container),
            body["force"].as_bool().unwrap_or(false),
            body["volumes"].as_bool().unwrap_or(false)
        );
        (Method::DELETE, path(host, &q))
    } else {
        (
            Method::POST,
            path(host, &format!("/containers/{}/{action}", seg(container))),
        )
    };
    let r = api
        .expect(method, &p, (action != "rm").then_some(&body), 1)
        .await?;
    if args.output == Output::Json {
        print_json(&r);
    } else if action == "update" {
        let r: UpdateResult = decode(r, "the update's answer")?;
        // An agent older than `recreated` does not send it: a new id says it was recreated.
        if !r.recreated && r.new_id == r.old_id {
            outln!(
                "{}: the image is unchanged ({}), the container was not recreated (--force recreates it)",
                t(&r.name),
                short_id(&r.new_image_id)
            );
            return Ok(ExitCode::SUCCESS);
        }
        outln!(
            "{}: updated {} → {}{}",
            t(&r.name),
            short_id(&r.old_id),
            short_id(&r.new_id),
            if r.image_changed {
                " (new image)"
            } else {
                " (same image)"
            }
        );
    } else {
        let r: ContainerAction = decode(r, "the action's answer")?;
        outln!("{} {} ({})", t(&r.name), t(&r.state), short_id(&r.id));
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `tomo run` and `tomo exec` keep retrying (with their idempotency key) when the
/// control plane or the host went away during the command.
const RUN_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// The pause between two of those retries.
const RUN_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether an answer says the command's outcome was not learnt, so that a retry with the same
/// key may learn it: the host's connection was lost or is not up yet, or no answer came in time.
fn outcome_not_learnt(r: &crate::client::Reply) -> bool {
    // The host's own answer that it cancelled the command, or cannot know its outcome, is final.
    let host_said = matches!(
        r.body["error"]["rpc"]["data"]["reason"].as_str(),
        Some("deadline" | "outcome_unknown" | "ran_output_not_kept")
    );
    !host_said
        && matches!(
            r.body["error"]["code"].as_str(),
            Some("connection_lost" | "host_offline" | "timeout")
        )
}

/// The `--idempotency-key` given (checked), or a new one.
fn idempotency_key(given: Option<&str>) -> Result<String, Failure> {
    match given {
        Some(k) if tomo_proto::rpc::valid_idempotency_key(k) => Ok(k.to_owned()),
        Some(_) => Err(Failure::new(
            2,
            "--idempotency-key must be 1 to 64 of A-Z a-z 0-9 - _",
        )),
        None => Ok(tomo_common::hex(&tomo_common::random_bytes::<16>())),
    }
}

/// POSTs `body` to `path` under idempotency key `key`: when the control plane or the host goes
/// away before the answer, the same request is sent again (for [`RUN_RETRY_FOR`]); the host runs
/// it at most once (issue 13.6). `what` names the command in the messages ("run", "exec").
async fn post_at_most_once(
    args: &ClientArgs,
    path: &str,
    body: &Value,
    key: &str,
    what: &str,
) -> Result<Value, Failure> {
    let api = Api::from_args(args)?.with_idempotency_key(key);
    let mut failing_since: Option<std::time::Instant> = None;
    let retry_hint = || {
        format!(
            "retry with `--idempotency-key {key}` and the same arguments: it runs at most once, and answers with the first {what}'s result if there was one"
        )
    };
    loop {
        let failure = match api.send(Method::POST, path, Some(body)).await {
            Ok(r) if r.status.is_success() => return Ok(r.body),
            Ok(r) if outcome_not_learnt(&r) => crate::client::api_failure_at(&r, 1, path),
            Ok(r) => return Err(crate::client::api_failure_at(&r, 1, path)),
            // A certificate that does not verify will not start to: no retry.
            Err(f) if f.hint.as_deref().is_some_and(|h| h.contains("--ca-file")) => return Err(f),
            // The control plane cannot be reached (restarting?): nothing says it was not sent.
            Err(f) if f.status == 2 => f,
            Err(f) => return Err(f),
        };
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() + RUN_RETRY_PAUSE > RUN_RETRY_FOR {
            return Err(failure.hint(retry_hint()));
        }
        eprintln!(
            "tomo: {}; sending the {what} again with the same idempotency key (it runs at most once)",
            failure.message
        );
        tokio::time::sleep(RUN_RETRY_PAUSE).await;
    }
}

/// `tomo run HOST IMAGE …`, sent at most once ([`post_at_most_once`]).
pub async fn run(a: &RunArgs, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let params = run_params(a)?;
    let key = idempotency_key(a.idempotency_key.as_deref())?;
    let path = path(&a.host, "/containers");
    let r = post_at_most_once(args, &path, &params, &key, "run").await?;
    if args.output == Output::Json {
        print_json(&r);
    } else {
        let r: RunResult = decode(r, "the run's answer")?;
        for w in &r.warnings {
            eprintln!("warning: {}", t(w));
        }
        outln!("{} {} ({})", t(&r.name), t(&r.state), short_id(&r.id));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the lines of a stream; returns the exit status its end implies.
pub(crate) fn end_status(end: &Value) -> Result<ExitCode, Failure> {
    match end.get("end") {
        Some(e) if e.get("error").is_some_and(|x| !x.is_null()) => Err(Failure::new(
            1,
            format!("stream ended: {}", s(&e["error"]["message"])),
        )),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// What `tomo logs` was asked, as `docker logs` takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    pub host: String,
    pub container: String,
    /// Keep following new output.
    #[arg(short, long)]
    pub follow: bool,
    /// The last N lines only, or `all` (the default).
    #[arg(short = 'n', long, value_name = "N|all")]
    pub tail: Option<String>,
    /// Only since a Unix time or a duration ago (10m, 2h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only before a Unix time or a duration ago (10m, 2h).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(short, long)]
    pub timestamps: bool,
}

/// A Unix time (seconds), or a duration ago (`10m`, `2h`), for `flag`.
fn unix_time(flag: &str, value: &str) -> Result<i64, Failure> {
    match value.parse::<i64>() {
        Ok(ts) => Ok(ts),
        Err(_) => {
            let d = crate::duration::parse(value)
                .map_err(|e| Failure::new(2, format!("{flag}: {e}")))?;
            Ok(tomo_common::now_secs() as i64 - d.as_secs() as i64)
        }
    }
}

/// The query of `tomo logs`: `follow`, then `tail`, `since`, `until`, `timestamps` as asked.
fn logs_query(a: &LogsArgs) -> Result<String, Failure> {
    let mut q = format!("?follow={}", a.follow);
    match a.tail.as_deref() {
        None | Some("all") => {}
        Some(n) => {
            let n: u64 = n.parse().map_err(|_| {
                Failure::new(
                    2,
                    format!("--tail: {n:?} is not a number of lines or `all`"),
                )
            })?;
            q.push_str(&format!("&tail={n}"));
        }
    }
    if let Some(since) = &a.since {
        q.push_str(&format!("&since={}", unix_time("--since", since)?));
    }
    if let Some(until) = &a.until {
        q.push_str(&format!("&until={}", unix_time("--until", until)?));
    }
    if a.timestamps {
        q.push_str("&timestamps=true");
    }
    Ok(q)
}

/// `tomo logs HOST CONTAINER [-f] [-n N|all] [--since T] [--until T] [-t]`.
pub async fn logs(a: &LogsArgs, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let q = logs_query(a)?;
    let (host, container) = (a.host.as_str(), a.container.as_str());
    let api = Api::from_args(args)?;
    let json_out = args.output == Output::Json;
    // Container output goes to the terminal raw, as `docker logs` does (docs/security.md).
    let print = |chunk: &LogChunk| {
        if chunk.source == "stderr" {
            eprint!("{}", chunk.text);
        } else {
            out!("{}", chunk.text);
            let _ = std::io::stdout().flush();
        }
    };
    let r = api
        .stream(
            Method::GET,
            &path(host, &format!("/containers/{}/logs{q}", seg(container))),
            None,
            |line| {
                match line.get("data") {
                    Some(d) if json_out => outln!("{d}"),
                    Some(d) => match serde_json::from_value::<LogChunk>(d.clone()) {
                        Ok(chunk) => print(&chunk),
                        Err(e) => eprintln!("tomo: a log line this CLI does not read: {e}"),
                    },
                    None => {}
                }
                true
            },
        )
        .await?;
    match r {
        Streamed::Json(v) => {
            if json_out {
                for c in v["chunks"].as_array().into_iter().flatten() {
                    outln!("{c}");
                }
            }
            let v: LogsResult = decode(v, "the logs")?;
            if !json_out {
                v.chunks.iter().for_each(print);
            }
            if v.truncated {
                let cut = v.cut_bytes;
                eprintln!(
                    "(the oldest {cut} bytes of the log were left out: the answer is capped; the newest part is shown; use --tail or --since to choose the part shown)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Streamed::End(end) => end_status(&end),
    }
}

fn stats_row(v: &ContainerStats) -> Vec<String> {
    let pair = |a: u64, b: u64| format!("{} / {}", human_bytes(a as f64), human_bytes(b as f64));
    vec![
        short_id(&v.id),
        t(&v.name),
        format!("{:.2}%", v.cpu_percent),
        pair(v.memory_used, v.memory_limit),
        format!("{:.2}%", v.memory_percent),
        pair(v.net_rx_bytes, v.net_tx_bytes),
        pair(v.block_read_bytes, v.block_write_bytes),
        v.pids.to_string(),
    ]
}

/// Samples `tomo stats HOST` asks at once.
const STATS_AT_ONCE: usize = 8;

/// `docker stats`'s columns.
const STATS_HEADER: [&str; 8] = [
    "CONTAINER ID",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
];

/// `tomo stats HOST [CONTAINER] [-f]`: one container's samples (a stream with `-f`), or one
/// sample of every running container, asked of the host all at once, as `docker stats` shows
/// them (`-f` redraws every second).
pub async fn stats(
    which: &PsHosts,
    container: Option<&str>,
    follow: bool,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let json_out = args.output == Output::Json;
    if let (Some(host), Some(c)) = (which.one.as_deref(), container) {
        let r = api
            .stream(
                Method::GET,
                &path(
                    host,
                    &format!("/containers/{}/stats?stream={follow}", seg(c)),
                ),
                None,
                |line| {
                    match line.get("data") {
                        Some(d) if json_out => outln!("{d}"),
                        Some(d) => match serde_json::from_value::<ContainerStats>(d.clone()) {
                            Ok(v) => table(&STATS_HEADER, &[stats_row(&v)]),
                            Err(e) => eprintln!("tomo: a sample this CLI does not read: {e}"),
                        },
                        None => {}
                    }
                    true
                },
            )
            .await?;
        return match r {
            Streamed::Json(v) => {
                if json_out {
                    print_json(&v);
                } else {
                    let v: ContainerStats = decode(v, "the sample")?;
                    table(&STATS_HEADER, &[stats_row(&v)]);
                }
                Ok(ExitCode::SUCCESS)
            }
            Streamed::End(end) => end_status(&end),
        };
    }
    let fleet = which.one.is_none();
    loop {
        // (host key for the route, hostname shown, container): one host's running containers,
        // or every chosen online host's.
        let targets: Vec<(String, String, ContainerSummary)> = match which.one.as_deref() {
            Some(host) => {
                let list = api
                    .expect(Method::GET, &path(host, "/containers"), None, 1)
                    .await?;
                let list: Vec<ContainerSummary> = decode(list, "the container list")?;
                list.into_iter()
                    .map(|c| (host.to_owned(), host.to_owned(), c))
                    .collect()
            }
            None => {
                let lists: Vec<(String, String, Vec<ContainerSummary>)> = fleet_read(
                    &api,
                    which,
                    tomo_proto::methods::DockerContainersList::NAME,
                    json!({"all": false}),
                    "containers",
                )
                .await?;
                let mut all: Vec<_> = lists
                    .into_iter()
                    .flat_map(|(name, id, list)| {
                        list.into_iter().map(move |c| (id.clone(), name.clone(), c))
                    })
                    .collect();
                all.sort_by(|a, b| (&a.1, &a.2.name).cmp(&(&b.1, &b.2.name)));
                all
            }
        };
        // Eight requests at a time, in order: a host with many containers answers in a
        // fraction of their sum, and neither the API's per-source connection share nor the
        // agent's read rate is spent at once.
        let samples: Vec<_> = futures_util::StreamExt::collect(futures_util::StreamExt::buffered(
            futures_util::stream::iter(targets.iter().map(|target| {
                let (route, _, c) = target;
                let p = path(route, &format!("/containers/{}/stats", seg(&c.id)));
                let api = &api;
                async move { (target, api.expect(Method::GET, &p, None, 1).await) }
            })),
            STATS_AT_ONCE,
        ))
        .await;
        // A container whose sample failed (it stopped in between, say) is left out, and said.
        let mut ok: Vec<(&(String, String, ContainerSummary), Value)> =
            Vec::with_capacity(samples.len());
        for (target, sample) in samples {
            match sample {
                Ok(v) => ok.push((target, v)),
                Err(f) => eprintln!("{}: {}", t(&target.2.name), t(&f.message)),
            }
        }
        if json_out {
            let list: Vec<Value> = ok
                .into_iter()
                .map(|((id, name, _), mut v)| {
                    if fleet && let Some(o) = v.as_object_mut() {
                        o.insert("host".into(), json!({"id": id, "hostname": name}));
                    }
                    v
                })
                .collect();
            print_json(&Value::Array(list));
        } else {
            let rows = ok
                .into_iter()
                .map(|((_, name, _), v)| {
                    let v: ContainerStats = decode(v, "a sample")?;
                    let mut row = if fleet { vec![t(name)] } else { Vec::new() };
                    row.extend(stats_row(&v));
                    Ok(row)
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            if follow {
                out!("\x1b[2J\x1b[H");
            }
            if fleet {
                let mut header = vec!["HOST"];
                header.extend(STATS_HEADER);
                table(&header, &rows);
            } else {
                table(&STATS_HEADER, &rows);
            }
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `tomo inspect HOST CONTAINER`: the container as JSON (the protocol's `ContainerDetails`).
pub async fn inspect(host: &str, container: &str, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let v = api
        .expect(
            Method::GET,
            &path(host, &format!("/containers/{}", seg(container))),
            None,
            1,
        )
        .await?;
    // Read as the protocol's type first: what is printed is what tomo understood.
    let details: tomo_proto::methods::ContainerDetails = decode(v, "the container")?;
    let v = serde_json::to_value(&details)
        .map_err(|e| Failure::new(1, format!("cannot show the container: {e}")))?;
    print_json(&v);
    Ok(ExitCode::SUCCESS)
}

/// `tomo pull HOST IMAGE`: a progress line per layer on a terminal, plain lines otherwise.
pub async fn pull(host: &str, image: &str, args: &ClientArgs) -> Result<ExitCode, Failure> {
    use std::io::IsTerminal as _;
    let api = Api::from_args(args)?;
    let json_out = args.output == Output::Json;
    let tty = std::io::stderr().is_terminal() && !json_out;
    let body = json!({"image": image, "progress": true});
    let mut layers: Vec<(String, String)> = Vec::new();
    let r = api
        .stream(
            Method::POST,
            &path(host, "/images/pull"),
            Some(&body),
            |line| {
                let Some(d) = line.get("data") else {
                    return true;
                };
                if json_out {
                    outln!("{d}");
                    return true;
                }
                let layer =
                    crate::out::terminal_safe(d["layer"].as_str().unwrap_or("")).into_owned();
                let mut text = s(&d["status"]);
                if let (Some(c), Some(t)) = (d["current"].as_f64(), d["total"].as_f64())
                    && t > 0.0
                {
                    let width = 30usize;
                    let filled = ((c / t) * width as f64).round().clamp(0.0, width as f64) as usize;
                    text = format!(
                        "{text} [{}{}] {} / {}",
                        "=".repeat(filled),
                        " ".repeat(width - filled),
                        human_bytes(c),
                        human_bytes(t)
                    );
                }
                if !tty {
                    eprintln!(
                        "{}{text}",
                        if layer.is_empty() {
                            String::new()
                        } else {
                            format!("{layer}: ")
                        }
                    );
                    return true;
                }
                match layers.iter_mut().find(|(l, _)| *l == layer) {
                    Some(entry) => entry.1 = text,
                    None => layers.push((layer, text)),
                }
                // Redraw the block of layer lines in place.
                let mut out = std::io::stderr().lock();
                for (l, t) in &layers {
                    let _ = writeln!(
                        out,
                        "\x1b[2K{}{t}",
                        if l.is_empty() {
                            String::new()
                        } else {
                            format!("{l}: ")
                        }
                    );
                }
                let _ = write!(out, "\x1b[{}A", layers.len());
                true
            },
        )
        .await?;
    if tty {
        eprint!("\x1b[{}B", layers.len());
    }
    match r {
        Streamed::Json(v) => {
            print_json(&v);
            Ok(ExitCode::SUCCESS)
        }
        Streamed::End(end) => {
            let status = end_status(&end)?;
            if json_out {
                outln!("{end}");
            } else {
                outln!(
                    "pulled {} ({})",
                    s(&end["end"]["result"]["image"]),
                    short(&end["end"]["result"]["id"])
                );
            }
            Ok(status)
        }
    }
}

/// `tomo images|networks|volumes HOST [ls|create|rm]`.
pub async fn objects(
    kind: &str,
    host: &str,
    action: Option<ObjectAction>,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let json_out = args.output == Output::Json;
    match action.unwrap_or(ObjectAction::Ls) {
        ObjectAction::Ls => {
            let list = api
                .expect(Method::GET, &path(host, &format!("/{kind}")), None, 1)
                .await?;
            if json_out {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            match kind {
                "images" => {
                    let items: Vec<ImageSummary> = decode(list, "the image list")?;
                    let rows: Vec<Vec<String>> = items.iter().map(image_row).collect();
                    table(&["ID", "TAGS", "SIZE"], &rows);
                }
                "networks" => {
                    let items: Vec<NetworkSummary> = decode(list, "the network list")?;
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|n| vec![short_id(&n.id), t(&n.name), t(&n.driver), t(&n.scope)])
                        .collect();
                    table(&["ID", "NAME", "DRIVER", "SCOPE"], &rows);
                }
                _ => {
                    let items: Vec<VolumeSummary> = decode(list, "the volume list")?;
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|v| vec![t(&v.name), t(&v.driver), t(&v.mountpoint)])
                        .collect();
                    table(&["NAME", "DRIVER", "MOUNTPOINT"], &rows);
                }
            }
        }
        ObjectAction::Create {
            name,
            driver,
            labels,
        } => {
            if kind == "images" {
                return Err(Failure::new(
                    2,
                    "images are not created: use `tomo pull HOST IMAGE`",
                ));
            }
            let mut body =
                json!({"name": name, "labels": Value::Object(key_value("--label", &labels)?)});
            if let Some(d) = driver {
                body["driver"] = json!(d);
            }
            let r = api
                .expect(
                    Method::POST,
                    &path(host, &format!("/{kind}")),
                    Some(&body),
                    1,
                )
                .await?;
            if json_out {
                print_json(&r)
            } else {
                let r: ObjectRef = decode(r, "the created object")?;
                outln!("created {} ({})", t(&r.name), short_id(&r.id))
            }
        }
        ObjectAction::Rm { name, force } => {
            let p = if kind == "images" {
                path(host, &format!("/images?image={}&force={force}", seg(&name)))
            } else {
                path(host, &format!("/{kind}/{}?force={force}", seg(&name)))
            };
            let p = if kind == "networks" {
                p.split('?').next().unwrap_or_default().to_owned()
            } else {
                p
            };
            let r = api.expect(Method::DELETE, &p, None, 1).await?;
            if json_out {
                print_json(&r)
            } else {
                outln!("removed {name}")
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tomo events HOST [-f] [--limit N]`.
pub async fn events(
    host: &str,
    follow: bool,
    limit: u32,
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let json_out = args.output == Output::Json;
    let show = |e: &Value| {
        if json_out {
            outln!("{e}");
        } else if let Some(n) = e.get("lagged") {
            eprintln!("({n} events skipped: this reader was too slow)");
        } else {
            match serde_json::from_value::<EventView>(e.clone()) {
                Ok(v) => outln!(
                    "{}  {} {} {} {}",
                    t(&v.received_at),
                    t(&v.event.kind),
                    t(&v.event.action),
                    short_id(&v.event.id),
                    t(v.event.attributes.get("name").map_or("", String::as_str))
                ),
                Err(err) => eprintln!("tomo: an event this CLI does not read: {err}"),
            }
        }
    };
    let r = api
        .stream(
            Method::GET,
            &path(host, &format!("/events?limit={limit}&follow={follow}")),
            None,
            |e| {
                // A follow ends only when the control plane does: it says so in an end line.
                if e.get("end").is_some() {
                    return false;
                }
                show(e);
                true
            },
        )
        .await?;
    if let Streamed::End(end) = &r {
        return end_status(end);
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

/// `tomo metrics HOST`.
pub async fn metrics(host: &str, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let body = json!({"method": tomo_proto::methods::SystemGetMetrics::NAME});
    let r = api
        .expect(Method::POST, &path(host, "/rpc"), Some(&body), 1)
        .await?;
    if let Some(e) = r.get("error") {
        return Err(Failure::new(
            1,
            format!("{} ({})", s(&e["message"]), s(&e["code"])),
        ));
    }
    let m = r.get("result").cloned().unwrap_or(Value::Null);
    if args.output == Output::Json {
        print_json(&m);
        return Ok(ExitCode::SUCCESS);
    }
    let m: tomo_proto::methods::Metrics = decode(m, "the metrics sample")?;
    let usage = |used: u64, total: u64, percent: f64| {
        format!(
            "{} / {} ({percent:.1}%)",
            human_bytes(used as f64),
            human_bytes(total as f64)
        )
    };
    outln!("cpu      {:.1}%", m.cpu_percent);
    outln!(
        "load     {}",
        m.load
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    outln!(
        "memory   {}",
        usage(m.memory.used, m.memory.total, m.memory.percent)
    );
    outln!(
        "swap     {}",
        usage(m.swap.used, m.swap.total, m.swap.percent)
    );
    for d in &m.disks {
        outln!(
            "disk     {} {}",
            t(&d.mount),
            usage(d.used, d.total, d.percent)
        );
    }
    outln!(
        "network  rx {}/s tx {}/s",
        human_bytes(m.network.rx_bytes_per_sec),
        human_bytes(m.network.tx_bytes_per_sec)
    );
    if let Some(c) = m.containers {
        outln!("containers  {} running, {} stopped", c.running, c.stopped);
    }
    outln!("uptime   {} s", m.uptime_secs);
    Ok(ExitCode::SUCCESS)
}

/// What `tomo exec` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    pub host: String,
    pub container: String,
    /// Keep stdin open (an interactive session).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Run at most once under this key (1 to 64 of A-Z a-z 0-9 - _): a retry with the same key
    /// and command within 24 h does not run it again (its output is not kept: the retry says the
    /// command ran). A new key is made when none is given; not for `-i`.
    #[arg(long, value_name = "KEY", conflicts_with = "interactive")]
    pub idempotency_key: Option<String>,
    /// The command, after `--`.
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

/// `tomo exec HOST CONTAINER [-i] [-t] -- CMD…`. Without `-i` it is sent at most once
/// ([`post_at_most_once`]): a retry after a lost answer never runs the command twice.
pub async fn exec(a: ExecArgs, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let ExecArgs {
        host,
        container,
        interactive,
        tty,
        idempotency_key: key,
        cmd,
    } = a;
    let (host, container) = (host.as_str(), container.as_str());
    if cmd.is_empty() {
        return Err(Failure::new(
            2,
            "no command: tomo exec HOST CONTAINER -- CMD…",
        ));
    }
    // As docker does: a terminal session needs a terminal (issue 17.8; it used to hang).
    if interactive && tty && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Failure::new(1, "the input device is not a TTY").hint(
            "drop -t to pipe input into the command (`tomo exec HOST CONTAINER -i -- CMD`), or run it from a terminal",
        ));
    }
    if !interactive {
        let key = idempotency_key(key.as_deref())?;
        let body = json!({"cmd": cmd});
        let exec_path = path(host, &format!("/containers/{}/exec", seg(container)));
        let r = post_at_most_once(args, &exec_path, &body, &key, "exec").await?;
        if args.output == Output::Json {
            print_json(&r);
            return Ok(ExitCode::SUCCESS);
        }
        let r: ExecOutput = decode(r, "the exec's answer")?;
        // The container's output, raw, as `docker exec` gives it (docs/security.md).
        out!("{}", r.stdout);
        eprint!("{}", r.stderr);
        if r.truncated {
            eprintln!("(output truncated at the response cap)");
        }
        if r.timed_out {
            return Err(Failure::new(1, "the command timed out"));
        }
        let code = r.exit_code.unwrap_or(1);
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let api = Api::from_args(args)?;
    crate::interactive::exec(&api, host, container, tty, cmd).await
}
