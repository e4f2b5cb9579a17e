//! Access commands: `tomo tokens create|ls|revoke`, `tomo whoami`, `tomo login`, and
//! `tomo hosts label`, thin clients of `/api/v1/tokens`, `/whoami` and `/hosts/{host}/labels`.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use tomo_server::http::api_tokens::{TokenStatus, TokenView};

use crate::client::{Api, ClientConfig, api_failure, config_path};
use crate::commands::{print_json, seg, table};
use crate::out::safe as t;
use crate::{ClientArgs, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token and print its secret (shown once).
    Create {
        /// A name to recognise it by (letters, digits, `.`, `_`, `-`, `@`, `:`).
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: Role,
        /// Lifetime, e.g. 12h or 30d (default: it never expires).
        #[arg(long)]
        expires: Option<String>,
        /// Limit it to a host (id, hostname or unique id prefix, stored as the id) or to hosts
        /// with a label (`key=value`); repeat for more. Default: every host.
        #[arg(long = "scope", value_name = "HOST_OR_KEY=VALUE")]
        scope: Vec<String>,
        /// Its execute/admin calls wait for a human's approval.
        #[arg(long)]
        require_approval: bool,
        /// MCP tool calls a minute (1–10000).
        #[arg(long, value_name = "N")]
        tool_rate: Option<u32>,
    },
    /// List tokens (revoked and expired ones too).
    #[command(alias = "list")]
    Ls,
    /// Revoke a token, by id or by name (the one active token of that name): it is refused
    /// from its next request on.
    Revoke {
        /// The token's id (`tomo tokens ls`), or its name.
        #[arg(value_name = "ID|NAME")]
        key: String,
    },
}

/// Token roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Read,
    Execute,
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Execute => "execute",
            Self::Admin => "admin",
        }
    }
}

/// The id of the token `key` names: a token with that id, else the one active token with that
/// name (names are not unique: several answer with their ids, to choose from). A key that
/// matches nothing is sent as an id, so that the API's answer (and hint) is the one shown.
async fn token_id(api: &Api, key: &str) -> Result<String, Failure> {
    let list = api.expect(Method::GET, "/tokens", None, 1).await?;
    let tokens: Vec<TokenView> = crate::client::decode(list, "the token list")?;
    if tokens.iter().any(|t| t.id == key) {
        return Ok(key.to_owned());
    }
    let named: Vec<&TokenView> = tokens
        .iter()
        .filter(|t| t.name == key && t.status == TokenStatus::Active)
        .collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Ok(key.to_owned()),
        many => {
            let ids: Vec<&str> = many.iter().map(|t| t.id.as_str()).collect();
            Err(Failure::new(
                1,
                format!(
                    "{} active tokens are named {:?}: {}",
                    many.len(),
                    crate::out::terminal_safe(key),
                    ids.join(", ")
                ),
            )
            .hint("revoke one by its id (`tomo tokens ls`)"))
        }
    }
}

/// `tomo login` arguments.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Control plane URL, e.g. https://tomo.example.com:7443.
    #[arg(long, env = "TOMO_URL")]
    url: String,
    /// The API token; `-` reads it from stdin. Without it, it is asked for on a terminal.
    #[arg(long)]
    token: Option<String>,
    /// CA file that signed the control plane's certificate (self-signed setups).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

pub async fn tokens(cmd: TokensCommand, args: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    match cmd {
        TokensCommand::Create {
            name,
            role,
            expires,
            scope,
            require_approval,
            tool_rate,
        } => {
            // Checked before anything is sent.
            let ttl = expires
                .map(|e| {
                    crate::duration::parse_lifetime(
                        "--expires",
                        &e,
                        tomo_server::auth::MAX_TOKEN_TTL,
                    )
                })
                .transpose()
                .map_err(|e| Failure::new(2, e))?;
            let mut body = json!({
                "name": name,
                "role": role.as_str(),
                "scope": resolve_scope(&api, &scope).await?,
                "requires_approval": require_approval,
            });
            if let Some(ttl) = ttl {
                body["ttl_secs"] = json!(ttl.as_secs());
            }
            if let Some(r) = tool_rate {
                body["tool_rate_per_min"] = json!(r);
            }
            let v = api.expect(Method::POST, "/tokens", Some(&body), 1).await?;
            if args.output == Output::Json {
                print_json(&v);
            } else {
                let v: TokenView = crate::client::decode(v, "the new token")?;
                print_created(&v, api.url(), api.ca_file());
            }
        }
        TokensCommand::Ls => {
            let v = api.expect(Method::GET, "/tokens", None, 1).await?;
            if args.output == Output::Json {
                print_json(&v);
            } else {
                print_tokens(&crate::client::decode::<Vec<TokenView>>(
                    v,
                    "the token list",
                )?);
            }
        }
        TokensCommand::Revoke { key } => {
            let id = token_id(&api, &key).await?;
            let v = api
                .expect(Method::DELETE, &format!("/tokens/{}", seg(&id)), None, 1)
                .await?;
            if args.output == Output::Json {
                print_json(&v);
            } else {
                let v: TokenView = crate::client::decode(v, "the revoked token")?;
                outln!("revoked token {} ({})", t(&v.id), t(&v.name));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Scope entries as the API takes them: labels as given, hosts by their id (a hostname is what a
/// host says about itself; the id is what it proved).
async fn resolve_scope(api: &Api, scope: &[String]) -> Result<Vec<String>, Failure> {
    let mut out = Vec::with_capacity(scope.len());
    for entry in scope {
        if entry.contains('=') {
            out.push(entry.clone());
            continue;
        }
        let r = api
            .send(Method::GET, &format!("/hosts/{}", seg(entry)), None)
            .await?;
        if !r.status.is_success() {
            let f = api_failure(&r, 2);
            return Err(Failure {
                message: format!("--scope {entry}: {}", f.message),
                ..f
            });
        }
        out.push(text(&r.body["id"]));
    }
    Ok(out)
}

/// A string field for a terminal (names and labels can be a host's: [`crate::out::terminal_safe`]).
fn text(v: &Value) -> String {
    crate::out::terminal_safe(v.as_str().unwrap_or("-")).into_owned()
}

fn scope_text(scope: &[String]) -> String {
    if scope.is_empty() {
        return "every host".into();
    }
    scope.iter().map(|e| t(e)).collect::<Vec<_>>().join(",")
}

fn role_text(role: tomo_proto::methods::Level) -> &'static str {
    tomo_server::core::role_name(role)
}

fn print_created(v: &TokenView, url: &str, ca_file: Option<&std::path::Path>) {
    outln!(
        "Created token {} ({}): role {}, {}{}, expires {}",
        t(&v.name),
        t(&v.id),
        role_text(v.role),
        scope_text(&v.scope),
        if v.requires_approval {
            ", requires approval"
        } else {
            ""
        },
        v.expires_at.as_deref().unwrap_or("never"),
    );
    outln!(
        "\nIts secret, shown this once (only a hash is kept):\n\n  {}\n",
        t(v.secret.as_deref().unwrap_or("-"))
    );
    outln!("Use it from another machine with:");
    outln!("  {}      # then paste it", login_line(url, ca_file));
    outln!("or for one command: TOMO_TOKEN=… tomo hosts ls");
}

/// A `tomo login` line to paste: the URL and, for a pinned CA, `--ca-file` (a copy of that
/// file must be on the other machine); the token is read from standard input.
pub fn login_line(url: &str, ca_file: Option<&std::path::Path>) -> String {
    match ca_file {
        Some(ca) => format!(
            "tomo login --url {url} --ca-file {} --token -",
            ca.display()
        ),
        None => format!("tomo login --url {url} --token -"),
    }
}

fn print_tokens(tokens: &[TokenView]) {
    let now = tomo_common::now_ms();
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|tk| {
            vec![
                tk.id.clone(),
                tk.name.clone(),
                role_text(tk.role).into(),
                match tk.status {
                    TokenStatus::Active => "active".into(),
                    TokenStatus::Expired => "expired".into(),
                    TokenStatus::Revoked => "revoked".into(),
                },
                scope_text(&tk.scope),
                if tk.requires_approval { "yes" } else { "no" }.into(),
                match &tk.expires_at {
                    None => "never".into(),
                    e => crate::out::ago(e.as_deref(), now),
                },
                crate::out::ago(tk.last_used_at.as_deref(), now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "ROLE",
            "STATUS",
            "SCOPE",
            "APPROVAL",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
}

pub async fn whoami(args: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let v = api.expect(Method::GET, "/whoami", None, 1).await?;
    if args.output == Output::Json {
        print_json(&v);
    } else {
        let v: TokenView = crate::client::decode(v, "this token's record")?;
        outln!("{} ({}) at {}", t(&v.name), t(&v.id), api.url());
        outln!("  role      {}", role_text(v.role));
        outln!("  hosts     {}", scope_text(&v.scope));
        outln!("  expires   {}", v.expires_at.as_deref().unwrap_or("never"));
        outln!(
            "  approval  {}",
            if v.requires_approval {
                "execute/admin calls wait for a human"
            } else {
                "not required"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tomo login`: checks the token with `GET /whoami`, then saves URL, token and CA in the client
/// config (0600). Nothing is saved when the check fails.
pub async fn login(args: LoginArgs, output: Output) -> Result<ExitCode, Failure> {
    if !args.url.starts_with("https://") {
        return Err(Failure::new(
            2,
            format!("--url {}: must start with https://", args.url),
        ));
    }
    let ca_file = match &args.ca_file {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .map_err(|e| Failure::new(2, format!("--ca-file {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let token = match args.token.as_deref() {
        Some("-") => read_line(&mut std::io::stdin().lock())?,
        Some(t) => t.to_owned(),
        None if std::io::stdin().is_terminal() => prompt_hidden("API token: ")?,
        None => {
            return Err(Failure::new(2, "no token given").hint(
                "pass --token - and the token on stdin (or --token TOKEN, which shells keep in \
                 their history)",
            ));
        }
    };
    if token.is_empty() {
        return Err(Failure::new(2, "the token is empty"));
    }
    let url = args.url.trim_end_matches('/').to_owned();
    let api = Api::new(&url, token.clone(), ca_file.clone())?;
    let me = api.expect(Method::GET, "/whoami", None, 1).await?;
    let path = config_path();
    let cfg = ClientConfig {
        url: Some(url.clone()),
        token: Some(token),
        ca_file,
    };
    cfg.save(&path)
        .map_err(|e| Failure::new(1, format!("cannot write {}: {e}", path.display())))?;
    if output == Output::Json {
        print_json(&json!({"url": url, "config": path, "token": me}));
    } else {
        let me: TokenView = crate::client::decode(me, "this token's record")?;
        outln!(
            "Logged in to {url} as {} (role {}, {}). Saved in {}.",
            t(&me.name),
            role_text(me.role),
            scope_text(&me.scope),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The first line of `input`, trimmed.
fn read_line(input: &mut dyn std::io::BufRead) -> Result<String, Failure> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| Failure::new(2, format!("reading the token: {e}")))?;
    Ok(line.trim().to_owned())
}

/// Asks on the terminal without echoing what is typed.
fn prompt_hidden(prompt: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let saved = rustix::termios::tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
    }
    let line = read_line(&mut stdin.lock());
    if let Some(saved) = &saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, saved);
    }
    eprintln!();
    line
}

/// `tomo hosts label HOST key=value… [--remove KEY]…`: changes some labels, keeps the others.
pub async fn label(
    host: &str,
    set: &[String],
    remove: &[String],
    args: &ClientArgs,
) -> Result<ExitCode, Failure> {
    let api = Api::from_args(args)?;
    let h = api
        .expect(Method::GET, &format!("/hosts/{}", seg(host)), None, 1)
        .await?;
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(h["labels"].clone()).unwrap_or_default();
    for k in remove {
        labels.remove(k);
    }
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Failure::new(2, format!("{kv:?}: labels are key=value")))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let id = text(&h["id"]);
    let v = if set.is_empty() && remove.is_empty() {
        json!({"host_id": id, "hostname": h["hostname"], "labels": labels})
    } else {
        api.expect(
            Method::PUT,
            &format!("/hosts/{}/labels", seg(&id)),
            Some(&json!(labels)),
            1,
        )
        .await?
    };
    if args.output == Output::Json {
        print_json(&v);
    } else {
        let labels = v["labels"].as_object().cloned().unwrap_or_default();
        if labels.is_empty() {
            outln!("{} has no labels", text(&v["hostname"]));
        } else {
            let list: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            outln!("{}: {}", text(&v["hostname"]), list.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_line_trimmed() {
        let mut input = std::io::Cursor::new(b"  tomo_abc \nrest\n".to_vec());
        assert_eq!(read_line(&mut input).expect("line"), "tomo_abc");
        let mut empty = std::io::Cursor::new(Vec::new());
        assert_eq!(read_line(&mut empty).expect("line"), "");
    }

    #[test]
    fn scopes_read_as_text() {
        assert_eq!(scope_text(&[]), "every host");
        assert_eq!(
            scope_text(&["abc".into(), "env=prod".into()]),
            "abc,env=prod"
        );
        assert_eq!(scope_text(&["\u{1b}[2J".into()]), "\\x1b[2J");
    }
}
