//! End to end through the binaries, as an operator runs them: `tomo dev`, then `tomo hosts`,
//! `tomo call`, `tomo codes create` and a separate `tomo-agent` process, then SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn tomo_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tomo"))
}

/// `tomo-agent` lives in another package. `cargo test --workspace` builds it next to `tomo`; when this
/// test runs alone (`-p tomo`) it is built here (a separate `cargo build` would otherwise rebuild
/// dependencies with other features).
fn agent_bin() -> PathBuf {
    let path = tomo_bin().with_file_name("tomo-agent");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "tomo-agent", "--bin", "tomo-agent"])
            .status()
            .expect("cargo");
        assert!(
            status.success() && path.exists(),
            "cannot build {}",
            path.display()
        );
    }
    path
}

struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn cmd(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.env_clear()
            .env("HOME", self.home.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_LEVEL", "info");
        c
    }

    fn tomo(&self, args: &[&str]) -> Output {
        self.cmd(&tomo_bin()).args(args).output().expect("run tomo")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// Sends SIGTERM and waits; returns the exit status and how long it took.
fn terminate(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    let t0 = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return (s, t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

fn host_status(env: &Env, name: &str) -> Option<String> {
    let o = env.tomo(&["hosts", "ls", "-o", "json"]);
    if !o.status.success() {
        return None;
    }
    json(&o)
        .as_array()?
        .iter()
        .find(|h| h["hostname"] == name)
        .map(|h| h["status"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn dev_then_cli_then_a_second_agent() {
    let agent = agent_bin();
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = env.home.path().join("dev-data");
    let started = Instant::now();
    let mut dev = env
        .cmd(&tomo_bin())
        .args(["dev", "--listen", &listen, "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tomo dev");

    // The local host is online within 5 s of starting `tomo dev`, seen from another shell.
    let local = tomo_agent::host::static_facts(Path::new("/"), None).hostname;
    wait_for("the local host online", || {
        host_status(&env, &local).as_deref() == Some("online")
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "online after {:?}",
        started.elapsed()
    );
    let hosts = json(&env.tomo(&["hosts", "ls", "-o", "json"]));
    let h = &hosts[0];
    assert!(
        h["id"].is_string() && h["hostname"] == local.as_str() && h["status"] == "online",
        "{hosts}"
    );

    // tomo call: 0 on a result, 1 on a JSON-RPC error, 2 on usage errors.
    let ping = env.tomo(&["call", &local, "agent.ping"]);
    assert_eq!(
        ping.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    assert_eq!(json(&ping)["result"]["pong"], true);
    let err = env.tomo(&["call", &local, "no.such.method"]);
    assert_eq!(err.status.code(), Some(1));
    assert_eq!(json(&err)["error"]["code"], -32601);
    assert_eq!(
        env.tomo(&["call", &local, "agent.ping", "{not json"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(env.tomo(&["call"]).status.code(), Some(2));

    // A code for another host, with what an agent needs to dial.
    let code = json(&env.tomo(&["codes", "create", "--ttl", "10m", "-o", "json"]));
    for k in ["code", "id", "expires_at", "server_url", "ca_file"] {
        assert!(code[k].is_string(), "{k} missing: {code}");
    }
    // `tomo codes ls|revoke` (issue 17): a spare code is listed, revoked, listed as revoked; the
    // list never shows a code's secret.
    let spare = json(&env.tomo(&["codes", "create", "-o", "json"]));
    let spare_id = spare["id"].as_str().expect("an id").to_owned();
    let ls = env.tomo(&["codes", "ls"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let table = stdout(&ls);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&spare_id) && l.contains("active")),
        "{table}"
    );
    assert!(
        !table.contains(spare["code"].as_str().unwrap_or("rc_")),
        "{table}"
    );
    let o = env.tomo(&["codes", "revoke", &spare_id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&spare_id), "{}", stdout(&o));
    let listed = json(&env.tomo(&["codes", "ls", "-o", "json"]));
    let row = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["id"] == spare_id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["status"], "revoked", "{listed}");
    let o = env.tomo(&["codes", "revoke", "0123456789abcdef"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let agent_dir = env.home.path().join("agent2");
    let run_agent = |with_code: Option<&str>, dir: &Path, name: &str| {
        let mut c = env.cmd(&agent);
        c.args(["--data-dir"]).arg(dir).args([
            "--ca-file",
            code["ca_file"].as_str().unwrap_or_default(),
            "--hostname",
            name,
        ]);
        c.args([
            "--server-url",
            code["server_url"].as_str().unwrap_or_default(),
        ]);
        if let Some(k) = with_code {
            c.args(["--register-code", k]);
        }
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let mut a2 = run_agent(code["code"].as_str(), &agent_dir, "second-host")
        .spawn()
        .expect("agent");
    wait_for("second-host online", || {
        host_status(&env, "second-host").as_deref() == Some("online")
    });

    // SIGTERM stops the agent cleanly within 2 s; the host goes offline.
    let (status, took) = terminate(&mut a2);
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "agent stopped in {took:?}");
    wait_for("second-host offline", || {
        host_status(&env, "second-host").as_deref() == Some("offline")
    });

    // Restarted with the same data dir and no code, it comes back.
    let mut a2 = run_agent(None, &agent_dir, "second-host")
        .spawn()
        .expect("agent");
    wait_for("second-host back online", || {
        host_status(&env, "second-host").as_deref() == Some("online")
    });
    terminate(&mut a2);

    // The used code is refused with a clear message, and the agent exits non-zero.
    let used = run_agent(
        code["code"].as_str(),
        &env.home.path().join("agent3"),
        "third-host",
    )
    .output()
    .expect("agent");
    assert!(!used.status.success());
    let msg = String::from_utf8_lossy(&used.stderr);
    assert!(
        msg.contains("code_used") && msg.contains("already used"),
        "{msg}"
    );

    // SIGTERM stops `tomo dev` (control plane and local agent) within 2 s.
    let (status, took) = terminate(&mut dev);
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(2),
        "tomo dev stopped in {took:?}"
    );
}

#[test]
fn cli_without_configuration_says_what_to_do() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let o = env.tomo(&["hosts", "ls"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no control plane configured") && err.contains("hint: run `tomo dev`"),
        "{err}"
    );
}

#[test]
fn bad_server_config_exits_64() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let o = env
        .cmd(&tomo_bin())
        .args(["server", "--data-dir"])
        .arg(env.home.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ])
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env
        .cmd(&agent_bin())
        .args([
            "--server-url",
            "ws://127.0.0.1:1/agent/ws",
            "--register-code",
            "x",
            "--data-dir",
        ])
        .arg(env.home.path())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wss://"));
}

/// Issue 13.9: a control plane whose data directory is read-only started, served reads and
/// answered writes with 500. It must refuse to start: status 64, one line naming the directory.
#[test]
fn a_read_only_data_directory_is_refused_at_start() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let mnt = tempfile::tempdir().expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs root to mount a tmpfs"
        );
        return eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let data = mnt.path().join("data");
    let port = free_port().to_string();
    let server = |data: &Path| {
        let mut c = env.cmd(&tomo_bin());
        c.args(["server", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        c
    };
    // A first start makes the data directory and its database.
    let mut child = server(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("tomo.db", || data.join("tomo.db").exists());
    terminate(&mut child);
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(mnt.path())
        .status()
        .expect("remount");
    assert!(ro.success());
    let o = server(&data).output().expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("not writable"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains(&data.display().to_string()), "{stderr}");
}

/// Issue 17.2: with a `--require-approval` token, `tomo stop|start|rm|restart` printed `- - (-)`
/// and exited 0. Every command that can be held says "waiting for approval: ID (tomo approve
/// ID)" and exits 3; the action is really pending.
#[test]
fn a_held_call_says_it_waits_for_approval_and_exits_3() {
    let (env, mut dev, local) = dev_online();
    let made = env.tomo(&[
        "tokens",
        "create",
        "careful",
        "--role",
        "admin",
        "--require-approval",
        "-o",
        "json",
    ]);
    assert!(made.status.success(), "{made:?}");
    let token = json(&made)["secret"].as_str().expect("secret").to_owned();
    let held = |args: &[&str]| {
        let o = env
            .cmd(&tomo_bin())
            .args(args)
            .env("TOMO_TOKEN", &token)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(3), "{args:?}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("waiting for approval: "))
            .unwrap_or_else(|| panic!("{args:?}: {stderr}"))
            .to_owned();
        let id = line
            .split("waiting for approval: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("id")
            .to_owned();
        assert!(line.contains(&format!("(tomo approve {id})")), "{line}");
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("- - (-)"),
            "{args:?}: {o:?}"
        );
        id
    };
    let mut ids = Vec::new();
    for verb in ["stop", "start", "restart", "rm"] {
        ids.push(held(&[verb, &local, "tomo-test-cli-held"]));
    }
    ids.push(held(&["call", &local, "agent.restart"]));
    // Each is a real pending action, listed for the approver.
    let list = env.tomo(&["approvals", "-o", "json"]);
    assert!(list.status.success(), "{list:?}");
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    for id in &ids {
        assert!(listed.contains(id.as_str()), "{id} not in {listed}");
    }
    let _ = terminate(&mut dev);
}

/// Issue 17.4: the CLI sent the bearer token over `http://`. It refuses `http://` and
/// scheme-less URLs, saying "use https://", before sending anything.
#[test]
fn the_cli_refuses_to_send_its_token_over_http() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    for url in [
        format!("http://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let o = env.tomo(&["hosts", "ls", "--url", &url, "--token", "tomo_secret_token"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("use https://"), "{url}: {stderr}");
    }
    // Nothing connected: the token never left.
    assert!(listener.accept().is_err(), "the CLI connected");
}

/// Issue 17.5: against a server that accepts and never answers, `tomo hosts ls` waited past
/// 30 s. It gives up after the connect deadline (10 s) with a clear message.
#[test]
fn a_server_that_never_answers_is_reported_in_time() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accepts, holds, never answers.
    let hold = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(25));
        drop(conn);
    });
    let t0 = Instant::now();
    let o = env.tomo(&[
        "hosts",
        "ls",
        "--url",
        &format!("https://127.0.0.1:{port}"),
        "--token",
        "x",
    ]);
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(stderr.contains("within 10s"), "{stderr}");
    drop(hold);
}

/// Issue 17.7: `tomo events | head -1` and the like panicked ("failed printing to stdout: Broken
/// pipe", exit 101). A reader that goes away ends the command quietly, status 0.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let (env, mut dev, local) = dev_online();
    for args in [
        vec!["completions", "bash"],
        vec!["hosts", "ls"],
        vec!["hosts", "show", local.as_str()],
        vec!["audit", "-o", "json"],
    ] {
        let mut child = env
            .cmd(&tomo_bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reader is gone before the command writes.
        drop(child.stdout.take());
        let o = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {stderr}");
    }
    let _ = terminate(&mut dev);
}

/// Issue 17.10 (part): `tokens create`'s "use it from another machine" line lacked `--ca-file`,
/// and `tomo server`'s first start printed a placeholder instead of a pasteable `tomo login`.
#[test]
fn login_lines_are_pasteable() {
    let (env, mut dev, _) = dev_online();
    let made = env.tomo(&["tokens", "create", "laptop", "--role", "read"]);
    assert!(made.status.success(), "{made:?}");
    let out = String::from_utf8_lossy(&made.stdout).into_owned();
    let line = out
        .lines()
        .find(|l| l.contains("tomo login --url"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("--ca-file ") && line.contains("--token -"),
        "{line}"
    );
    let _ = terminate(&mut dev);

    let data = env.home.path().join("server-data");
    let port = free_port().to_string();
    let mut server = env
        .cmd(&tomo_bin())
        .args(["server", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = server.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let login = lines
        .by_ref()
        .map_while(Result::ok)
        .take(10)
        .find(|l| l.contains("tomo login"))
        .expect("a login line");
    assert!(!login.contains('<'), "a placeholder: {login}");
    assert!(
        login.contains(&format!("--url https://127.0.0.1:{port}")),
        "{login}"
    );
    assert!(
        login.contains("--ca-file ") && login.contains("ca.pem"),
        "{login}"
    );
    let _ = terminate(&mut server);
}

/// Issue 17.10 (part): "no such container" hinted `tomo hosts ls`, and so did an unknown
/// approval or token. Each hint names what lists that kind of thing.
#[test]
fn not_found_hints_name_what_lists_the_thing() {
    let (env, mut dev, local) = dev_online();
    let hint_of = |args: &[&str]| {
        let o = env.tomo(args);
        assert!(!o.status.success(), "{args:?}: {o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = hint_of(&["approvals", "show", "999999"]);
    assert!(e.contains("tomo approvals --status all"), "{e}");
    let e = hint_of(&["tokens", "revoke", "tok_does_not_exist"]);
    assert!(e.contains("tomo tokens ls"), "{e}");
    let e = hint_of(&["hosts", "show", "no-such-host"]);
    assert!(e.contains("tomo hosts ls"), "{e}");
    let docker = std::env::var("TOMO_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let e = hint_of(&["logs", &local, "tomo-test-cli-no-such-container"]);
    if docker || e.contains("No such container") || e.contains("not_found") {
        assert!(e.contains(&format!("tomo ps {local} -a")), "{e}");
    }
    let _ = terminate(&mut dev);
}

/// `tomo dev` in a fresh home, with the local host online; returns the env, the process and the
/// local hostname.
fn dev_online() -> (Env, Child, String) {
    dev_online_logging_to(Stdio::null())
}

/// [`dev_online`] with `tomo dev`'s log (stderr) going to `log`.
fn dev_online_logging_to(log: Stdio) -> (Env, Child, String) {
    let _ = agent_bin();
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let data = env.home.path().join("dev-data");
    let dev = env
        .cmd(&tomo_bin())
        .args(["dev", "--listen", &listen, "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tomo dev");
    let local = tomo_agent::host::static_facts(Path::new("/"), None).hostname;
    wait_for("the local host online", || {
        host_status(&env, &local).as_deref() == Some("online")
    });
    (env, dev, local)
}

/// Host operations as an operator types them, against the real engine through `tomo dev`.
#[test]
fn host_operations_from_the_cli() {
    let image =
        std::env::var("TOMO_TEST_IMAGE").unwrap_or_else(|_| "tomo-test/busybox:latest".into());
    let registry = std::env::var("TOMO_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5055".into());
    let require = std::env::var("TOMO_REQUIRE_DOCKER").is_ok_and(|v| !v.is_empty() && v != "0");
    let (env, mut dev, local) = dev_online();
    let ps = env.tomo(&["ps", &local, "-a", "-o", "json"]);
    if !ps.status.success() {
        let why = String::from_utf8_lossy(&ps.stderr).into_owned();
        let _ = terminate(&mut dev);
        assert!(!require, "Docker required but `tomo ps` failed: {why}");
        eprintln!("SKIPPED host_operations_from_the_cli: no Docker engine: {why}");
        return;
    }
    let name = format!("tomo-test-cli-{:08x}", fastrand::u32(..));
    let remote = format!("{registry}/tomo-test/busybox:latest");

    // pull: plain progress lines when not on a terminal, then the image id.
    let pull = env.tomo(&["pull", &local, &remote]);
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    assert!(
        String::from_utf8_lossy(&pull.stdout).contains("pulled"),
        "{pull:?}"
    );

    // run → ps shows it with its label → logs → exec exit code → stop → rm.
    let run = env.tomo(&[
        "run",
        &local,
        &image,
        "--name",
        &name,
        "--network",
        "none",
        "-l",
        "tomo.test=cli",
        "-e",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        "echo $GREETING from cli; exec sleep 600",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let list = json(&env.tomo(&["ps", &local, "-o", "json"]));
    let mine = list
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["name"] == name.as_str())
        .cloned()
        .expect("the new container is listed");
    assert_eq!(mine["state"], "running");
    assert_eq!(mine["labels"]["tomo.test"], "cli");
    let mut logs = String::new();
    wait_for("the container's first line", || {
        let o = env.tomo(&["logs", &local, &name, "--tail", "5"]);
        logs = String::from_utf8_lossy(&o.stdout).into_owned();
        logs.contains("hi from cli")
    });
    // docker's habits (issue 17): `-t` prefixes each line with its RFC 3339 time, `-n all` is
    // every line, `--until` a duration ago leaves out what came later.
    let o = env.tomo(&["logs", &local, &name, "-t", "-n", "all"]);
    let stamped = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = stamped
        .lines()
        .find(|l| l.ends_with("hi from cli"))
        .unwrap_or_default();
    assert!(
        line.len() > 20 && line.as_bytes()[4] == b'-' && line.contains('T'),
        "{stamped}"
    );
    let o = env.tomo(&["logs", &local, &name, "--until", "1h"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("hi from cli"),
        "a line of now is after an hour ago"
    );
    let o = env.tomo(&["logs", &local, &name, "--tail", "some"]);
    assert_eq!(o.status.code(), Some(2));
    // `tomo inspect` (issue 17): the container as the protocol's JSON.
    let inspected = json(&env.tomo(&["inspect", &local, &name]));
    assert_eq!(inspected["name"], name.as_str(), "{inspected}");
    assert_eq!(inspected["env"]["GREETING"], "hi", "{inspected}");
    assert_eq!(inspected["labels"]["tomo.test"], "cli", "{inspected}");
    // `stats --no-stream` is docker's spelling of the one sample tomo takes by default.
    let o = env.tomo(&["stats", &local, &name, "--no-stream", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["name"], name.as_str());
    let o = env.tomo(&["stats", &local]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.starts_with("CONTAINER ID") && table.contains("NET I/O") && table.contains(&name),
        "docker's columns: {table}"
    );
    let exec = env.tomo(&[
        "exec",
        &local,
        &name,
        "--",
        "sh",
        "-c",
        "echo inside; exit 4",
    ]);
    assert_eq!(exec.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "inside\n");
    // Issue 13.6: an exec retried with its idempotency key does not run again; the retry says
    // the command ran (its output is not kept).
    let exec_key = format!("cli-exec-{:08x}", fastrand::u32(..));
    let append = |key: &str| {
        env.tomo(&[
            "exec",
            &local,
            &name,
            "--idempotency-key",
            key,
            "--",
            "sh",
            "-c",
            "echo x >> /tmp/once; cat /tmp/once",
        ])
    };
    let first = append(&exec_key);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stdout(&first), "x\n");
    let retry = append(&exec_key);
    assert_eq!(retry.status.code(), Some(1), "{}", stdout(&retry));
    assert!(stderr(&retry).contains("ran once"), "{}", stderr(&retry));
    let count = env.tomo(&["exec", &local, &name, "--", "cat", "/tmp/once"]);
    assert_eq!(stdout(&count), "x\n", "the retry ran the command again");
    let stop = env.tomo(&["stop", &local, &name, "--time", "1"]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(
        String::from_utf8_lossy(&stop.stdout).contains("exited"),
        "{stop:?}"
    );
    let events = env.tomo(&["events", &local, "-o", "json"]);
    assert!(events.status.success());
    let events = json(&events);
    assert!(
        events
            .as_array()
            .expect("array")
            .iter()
            .any(|e| e["attributes"]["name"] == name.as_str() && e["action"] == "start"),
        "start event of {name} missing"
    );
    // Issue 13.6: `run` twice with one idempotency key (and no name) runs once; the second
    // answers with the first run's container.
    let key = format!("cli-{:08x}", fastrand::u32(..));
    let once = |what: &str| {
        let o = env.tomo(&[
            "run",
            &local,
            &image,
            "--idempotency-key",
            &key,
            "--network",
            "none",
            "-l",
            "tomo.test=cli",
            "-o",
            "json",
            "--",
            "sleep",
            "600",
        ]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        json(&o)["id"].as_str().expect("id").to_owned()
    };
    let (first, second) = (once("first"), once("retry"));
    assert_eq!(first, second, "the retry ran a second container");
    let bad = env.tomo(&["run", &local, &image, "--idempotency-key", "not a key"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    // `tomo call` takes one too: a second network create with the key answers with the first
    // network; without it, the engine makes a second network of the same name.
    let net = format!("{name}-net");
    let params = format!(r#"{{"name":"{net}","internal":true}}"#);
    let create = |key: Option<&str>| {
        let mut args = vec!["call", &local, "docker.networks.create", &params];
        if let Some(k) = key {
            args.extend(["--idempotency-key", k]);
        }
        let o = env.tomo(&args);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        json(&o)["result"]["id"].as_str().expect("id").to_owned()
    };
    let first_net = create(Some(&key));
    assert_eq!(
        first_net,
        create(Some(&key)),
        "the retry made a second network"
    );
    let second_net = create(None);
    assert_ne!(first_net, second_net);
    for id in [&first_net, &second_net] {
        let rm_net = env.tomo(&[
            "call",
            &local,
            "docker.networks.remove",
            &format!(r#"{{"name":"{id}"}}"#),
        ]);
        assert!(rm_net.status.success(), "{}", stderr(&rm_net));
    }
    let rm_once = env.tomo(&["rm", &local, &first, "-f"]);
    assert!(rm_once.status.success(), "{}", stderr(&rm_once));
    let rm = env.tomo(&["rm", &local, &name]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let gone = json(&env.tomo(&["ps", &local, "-a", "-o", "json"]));
    assert!(
        !gone
            .as_array()
            .expect("array")
            .iter()
            .any(|c| c["name"] == name.as_str())
    );
    // An unknown container: exit 1 and a clear message.
    let missing = env.tomo(&["start", &local, "tomo-test-no-such-container"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{missing:?}"
    );

    // volumes create/ls/rm and metrics.
    let vol = format!("{name}-vol");
    assert!(
        env.tomo(&["volumes", &local, "create", &vol])
            .status
            .success()
    );
    let vols = json(&env.tomo(&["volumes", &local, "ls", "-o", "json"]));
    assert!(
        vols.as_array()
            .expect("array")
            .iter()
            .any(|v| v["name"] == vol.as_str())
    );
    assert!(env.tomo(&["volumes", &local, "rm", &vol]).status.success());
    let metrics = env.tomo(&["metrics", &local]);
    assert!(
        String::from_utf8_lossy(&metrics.stdout).contains("memory"),
        "{metrics:?}"
    );
    let _ = terminate(&mut dev);
}

/// `tomo` running on a real pseudo-terminal: the test holds the leader side, types on it and
/// reads what the CLI writes to its terminal.
struct PtySession {
    child: Child,
    leader: std::fs::File,
    follower: std::fs::File,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
    /// The terminal's modes before tomo started (read after the spawn, they may be tomo's raw
    /// mode already).
    initial: rustix::termios::LocalModes,
}

impl PtySession {
    /// Spawns `tomo args` with a fresh pseudo-terminal (24 × 80) as stdin, stdout and stderr.
    fn spawn(env: &Env, args: &[&str]) -> Self {
        use std::io::Read as _;
        let leader =
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
                .expect("openpt");
        rustix::pty::grantpt(&leader).expect("grantpt");
        rustix::pty::unlockpt(&leader).expect("unlockpt");
        let follower_path = rustix::pty::ptsname(&leader, Vec::new()).expect("ptsname");
        let follower = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(follower_path.to_str().expect("utf-8 path"))
            .expect("open follower");
        let mut size = rustix::termios::tcgetwinsize(&follower).expect("tcgetwinsize");
        size.ws_row = 24;
        size.ws_col = 80;
        rustix::termios::tcsetwinsize(&follower, size).expect("tcsetwinsize");
        let initial = rustix::termios::tcgetattr(&follower)
            .expect("tcgetattr")
            .local_modes;
        let child = env
            .cmd(&tomo_bin())
            .args(args)
            .stdin(follower.try_clone().expect("clone"))
            .stdout(follower.try_clone().expect("clone"))
            .stderr(follower.try_clone().expect("clone"))
            .spawn()
            .expect("tomo on a terminal");
        let leader = std::fs::File::from(leader);
        // Output is collected on a thread; the leader side must be drained or the CLI blocks.
        let mut reader = leader.try_clone().expect("clone leader");
        let (tx, output) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            leader,
            follower,
            output,
            seen: Vec::new(),
            initial,
        }
    }

    fn terminal_modes(&self) -> rustix::termios::LocalModes {
        rustix::termios::tcgetattr(&self.follower)
            .expect("tcgetattr")
            .local_modes
    }

    fn type_bytes(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        self.leader.write_all(bytes).expect("type");
    }

    /// Waits up to `secs` for `needle` in everything the terminal showed so far.
    fn wait_output(&mut self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} in {:?}",
                String::from_utf8_lossy(&self.seen)
            );
            if let Ok(chunk) = self.output.recv_timeout(left) {
                self.seen.extend(chunk);
            }
        }
    }

    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "tomo did not end; the terminal showed {:?}",
                String::from_utf8_lossy(&self.seen)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `sleep` container for the interactive tests, or `None` (skipped) without Docker.
/// A running container from the test image that sleeps, removed when the returned guard drops
/// (a test that panics no longer leaves it behind); `None` (the test skips) without Docker.
fn sleeping_container<'a>(env: &'a Env, local: &str, test: &str) -> Option<RemoveOnDrop<'a>> {
    let image =
        std::env::var("TOMO_TEST_IMAGE").unwrap_or_else(|_| "tomo-test/busybox:latest".into());
    let require = std::env::var("TOMO_REQUIRE_DOCKER").is_ok_and(|v| !v.is_empty() && v != "0");
    let name = format!("tomo-test-tty-{:08x}", fastrand::u32(..));
    let run = env.tomo(&[
        "run",
        local,
        &image,
        "--name",
        &name,
        "--network",
        "none",
        "--",
        "sleep",
        "600",
    ]);
    if !run.status.success() {
        let why = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(!require, "Docker required but `tomo run` failed: {why}");
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(RemoveOnDrop {
        env,
        host: local.to_owned(),
        name,
    })
}

/// `tomo exec -it` on a real pseudo-terminal: keystrokes reach the shell in the container, its
/// output comes back, the exit code is the command's, and the terminal is restored.
#[test]
fn exec_it_on_a_terminal() {
    let (env, mut dev, local) = dev_online();
    let Some(container) = sleeping_container(&env, &local, "exec_it_on_a_terminal") else {
        let _ = terminate(&mut dev);
        return;
    };
    let name = container.name.clone();
    let mut pty = PtySession::spawn(&env, &["exec", &local, &name, "-it", "--", "sh"]);
    let before = pty.initial;
    // The shell prompt shows up once the session is open.
    pty.wait_output("#", 15);
    pty.type_bytes(b"echo tty-$((6*7))\r");
    pty.wait_output("tty-42", 15);
    pty.type_bytes(b"exit 5\r");
    assert_eq!(pty.wait_exit(15).code(), Some(5));
    assert_eq!(pty.terminal_modes(), before, "terminal restored");
    let _ = env.tomo(&["rm", &local, &name, "--force"]);
    let _ = terminate(&mut dev);
}

/// Issue 17.1: every keystroke was a command against the host's command rate (30 a minute), so
/// after 27 keys the rest, Enter included, vanished without a word. 500 characters typed one
/// at a time at a brisk human speed (40 a second) all reach the shell, and the line it reads
/// back is the one typed.
#[test]
fn exec_it_takes_500_keystrokes_at_human_speed() {
    let (env, mut dev, local) = dev_online();
    let Some(container) = sleeping_container(&env, &local, "exec_it_takes_500_keystrokes") else {
        let _ = terminate(&mut dev);
        return;
    };
    let name = container.name.clone();
    let script = "stty -echo; echo ready; read -r line; echo \"len=${#line} line=$line\"";
    let mut pty = PtySession::spawn(
        &env,
        &["exec", &local, &name, "-it", "--", "sh", "-c", script],
    );
    pty.wait_output("ready", 15);
    let typed: String = (0..500)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for b in typed.bytes() {
        pty.type_bytes(&[b]);
        std::thread::sleep(Duration::from_millis(25));
    }
    pty.type_bytes(b"\r");
    pty.wait_output(&format!("len=500 line={typed}"), 20);
    assert_eq!(pty.wait_exit(15).code(), Some(0));
    let shown = String::from_utf8_lossy(&pty.seen).into_owned();
    assert!(!shown.contains("refused"), "{shown}");
    let _ = env.tomo(&["rm", &local, &name, "--force"]);
    let _ = terminate(&mut dev);
}

/// `tomo` with `input` on its stdin.
fn tomo_with_stdin(env: &Env, args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut child = env
        .cmd(&tomo_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tomo");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Tokens as an operator handles them: create one (its secret shown once), list, log in with it
/// from another account (checked before it is saved, 0600), see what it may do, be refused with a
/// hint, revoke it; labels on a host; and no secret in the control plane's log.
#[test]
fn tokens_login_and_labels_from_the_cli() {
    let logs = tempfile::tempdir().expect("logs");
    let log_path = logs.path().join("dev.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let (env, mut dev, local) = dev_online_logging_to(Stdio::from(log));
    let cfg: toml::Value = toml::from_str(
        &std::fs::read_to_string(env.home.path().join(".config/tomo/config.toml")).expect("config"),
    )
    .expect("toml");
    let url = cfg["url"].as_str().expect("url").to_owned();
    let ca = cfg["ca_file"].as_str().expect("ca").to_owned();
    let hosts = json(&env.tomo(&["hosts", "ls", "-o", "json"]));
    let local_id = hosts[0]["id"].as_str().expect("id").to_owned();

    // Create: JSON has the secret; the table form shows it once with how to use it.
    let o = env.tomo(&[
        "tokens",
        "create",
        "ci",
        "--role",
        "read",
        "--expires",
        "1h",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ci = json(&o);
    let secret = ci["secret"].as_str().expect("secret").to_owned();
    let ci_id = ci["id"].as_str().expect("id").to_owned();
    assert_eq!(ci["role"], "read");
    let o = env.tomo(&[
        "tokens",
        "create",
        "web-ops",
        "--role",
        "execute",
        "--scope",
        &local,
        "--scope",
        "env=dev",
        "--require-approval",
        "--tool-rate",
        "20",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("shown this once") && out.contains(&format!("tomo login --url {url}")),
        "{out}"
    );
    let ops_secret = out
        .split_whitespace()
        .find(|w| w.starts_with("tomo_"))
        .expect("the secret is printed")
        .to_owned();

    // ls: the hostname was stored as the host's id.
    let list = json(&env.tomo(&["tokens", "ls", "-o", "json"]));
    let ops = list
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["name"] == "web-ops")
        .expect("listed");
    assert_eq!(ops["scope"], serde_json::json!([local_id, "env=dev"]));
    assert_eq!(ops["requires_approval"], true);
    assert_eq!(ops["tool_rate_per_min"], 20);
    assert!(!list.to_string().contains("tomo_"), "no secret in the list");
    let table = stdout(&env.tomo(&["tokens", "ls"]));
    assert!(
        table.contains("LAST USED") && table.contains("ci") && table.contains("every host"),
        "{table}"
    );

    // Login from another account: a bad token is refused and nothing is saved.
    let other = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let other_cfg = other.home.path().join(".config/tomo/config.toml");
    let o = tomo_with_stdin(
        &other,
        &["login", "--url", &url, "--ca-file", &ca, "--token", "-"],
        "tomo_not_a_real_token\n",
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("hint: ") && stderr(&o).contains("tomo login"),
        "{}",
        stderr(&o)
    );
    assert!(!other_cfg.exists(), "nothing saved for a refused token");
    let o = other.tomo(&["login", "--url", &url, "--ca-file", &ca]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--token -"), "{}", stderr(&o));

    let o = tomo_with_stdin(
        &other,
        &["login", "--url", &url, "--ca-file", &ca, "--token", "-"],
        &format!("{secret}\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("as ci (role read"), "{}", stdout(&o));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&other_cfg).expect("saved").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let saved: toml::Value =
        toml::from_str(&std::fs::read_to_string(&other_cfg).expect("read")).expect("toml");
    assert_eq!(saved["token"].as_str(), Some(secret.as_str()));
    assert_eq!(saved["url"].as_str(), Some(url.as_str()));
    assert_eq!(saved["ca_file"].as_str(), Some(ca.as_str()));

    // The saved login works; the role is too low for codes, and the hint says what to do.
    let me = json(&other.tomo(&["whoami", "-o", "json"]));
    assert_eq!(
        (&me["name"], &me["role"]),
        (&Value::from("ci"), &Value::from("read"))
    );
    let o = other.tomo(&["codes", "create"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("admin role") && err.contains("tomo whoami"),
        "{err}"
    );

    // Labels, and a scoped token's view.
    let o = env.tomo(&["hosts", "label", &local, "env=dev", "team=ops"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("env=dev team=ops"), "{}", stdout(&o));
    let o = env.tomo(&["hosts", "label", &local, "--remove", "team"]);
    assert!(
        stdout(&o).contains("env=dev") && !stdout(&o).contains("team"),
        "{}",
        stdout(&o)
    );
    let o = env.tomo(&["hosts", "label", &local, "bad"]);
    assert_eq!(o.status.code(), Some(2));
    let scoped = other.tomo(&["hosts", "ls", "-o", "json", "--token", &ops_secret]);
    assert_eq!(json(&scoped).as_array().map(Vec::len), Some(1));
    let o = other.tomo(&["tokens", "ls", "--token", &ops_secret]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("needs the admin role"),
        "{}",
        stderr(&o)
    );

    // Revoked by name (issue 17): the one active token named `ci`; two active tokens of one
    // name are not guessed between.
    let twin = |n: &str| json(&env.tomo(&["tokens", "create", n, "--role", "read", "-o", "json"]));
    let (a, b) = (twin("twin"), twin("twin"));
    let o = env.tomo(&["tokens", "revoke", "twin"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("2 active tokens are named \"twin\"")
            && err.contains(a["id"].as_str().unwrap_or("?"))
            && err.contains(b["id"].as_str().unwrap_or("?"))
            && err.contains("by its id"),
        "{err}"
    );
    let o = env.tomo(&["tokens", "revoke", a["id"].as_str().unwrap_or_default()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.tomo(&["tokens", "revoke", "twin"]);
    assert!(o.status.success(), "the one active twin: {}", stderr(&o));
    assert!(
        stdout(&o).contains(b["id"].as_str().unwrap_or("?")),
        "{}",
        stdout(&o)
    );
    // Revoked: the next command is refused, with the way out.
    let o = env.tomo(&["tokens", "revoke", "ci"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), format!("revoked token {ci_id} (ci)"));
    let o = other.tomo(&["whoami"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("unauthorized") && err.contains("hint: ") && err.contains("tomo login"),
        "{err}"
    );

    // Transport failures say what to check: nothing listening, or a certificate not trusted.
    let closed = format!("https://127.0.0.1:{}", free_port());
    let o = other.tomo(&["whoami", "--url", &closed]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tomo dev"), "{}", stderr(&o));
    let fresh = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let o = fresh.tomo(&["whoami", "--url", &url, "--token", "tomo_x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ca-file"), "{}", stderr(&o));

    let (status, _) = terminate(&mut dev);
    assert!(status.success());
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("API token created"),
        "the log was written: {log}"
    );
    for s in [&secret, &ops_secret] {
        assert!(!log.contains(s.as_str()), "a secret in the log");
    }
}

/// Issue 17: a client command's help lists no server flag (`--log-level`, `--log-json` were
/// global), and every argument and flag of it has a line; the server commands keep theirs.
#[test]
fn client_help_lists_no_server_flag() {
    let help = |args: &[&str]| {
        let o = Command::new(tomo_bin())
            .args(args)
            .arg("--help")
            .output()
            .expect("tomo runs");
        assert!(o.status.success(), "{args:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for cmd in [
        &["ps"][..],
        &["logs"],
        &["images"],
        &["tokens", "create"],
        &["call"],
    ] {
        let text = help(cmd);
        assert!(
            !text.contains("--log-level") && !text.contains("--log-json"),
            "{cmd:?}: {text}"
        );
        // Every option line says what it is for.
        for line in text.lines().filter(|l| l.trim_start().starts_with('-')) {
            let described = line
                .trim()
                .split("  ")
                .filter(|p| !p.trim().is_empty())
                .count()
                >= 2;
            assert!(described, "{cmd:?}: an option without a line: {line:?}");
        }
    }
    for cmd in [&["server"][..], &["dev"]] {
        assert!(help(cmd).contains("--log-level"), "{cmd:?}");
    }
}

/// `tomo completions SHELL` prints a script that knows the commands.
#[test]
fn completions_for_each_shell() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    for shell in ["bash", "zsh", "fish"] {
        let o = env.tomo(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(
            script.len() > 1000 && script.contains("tokens") && script.contains("login"),
            "{shell}: {script}"
        );
    }
    assert_eq!(
        env.tomo(&["completions", "powershell"]).status.code(),
        Some(2)
    );
}

/// What a host or a container controls reaches the operator's terminal as text, never as
/// terminal commands: end to end, a container reference holding an escape sequence (retitle the
/// window, clear the screen) comes back in the agent's refusal and the control plane's error, and
/// `tomo` shows no raw escape. (The renderers' own tests feed hostile host data to the table
/// and the audit line: `commands::tests`, `audit_cmd::tests`.)
#[test]
fn host_strings_reach_the_terminal_escaped() {
    let (env, mut dev, local) = dev_online();
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2Jgone";
    let start = env.tomo(&["start", &local, evil]);
    let inspect = env.tomo(&["logs", &local, evil]);
    let _ = terminate(&mut dev);
    for (what, o) in [("start", &start), ("logs", &inspect)] {
        let shown = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o));
        assert!(!o.status.success(), "{what}: {o:?}");
        assert!(
            shown.contains("pwned"),
            "{what}: the refusal is shown: {shown:?}"
        );
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{what}: no raw escape reaches the terminal: {shown:?}"
        );
    }
}

/// Issue 17.8: `tomo exec -it` with stdin not a terminal hung forever; it says, as docker does,
/// "the input device is not a TTY", exits 1 at once and contacts nothing.
#[test]
fn exec_it_without_a_terminal_says_so() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let t0 = Instant::now();
    let out = env
        .cmd(&tomo_bin())
        .args(["exec", "some-host", "some-container", "-it", "--", "sh"])
        .args(["--url", "https://127.0.0.1:9", "--token", "t"])
        .stdin(Stdio::piped())
        .output()
        .expect("tomo exec -it");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("the input device is not a TTY"),
        "{}",
        stderr(&out)
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "at once");
}

/// Issue 17.8: `tomo exec -i` (no `-t`) with piped stdin never told the container that its
/// input ended, so `echo … | tomo exec -i H C -- sh` hung. At the end of stdin the container's
/// stdin is closed (as docker does): the script runs, the shell exits, its code comes back.
#[test]
fn exec_i_with_piped_stdin_ends_at_eof() {
    let (env, mut dev, local) = dev_online();
    let Some(container) = sleeping_container(&env, &local, "exec_i_with_piped_stdin_ends_at_eof")
    else {
        let _ = terminate(&mut dev);
        return;
    };
    let name = container.name.clone();
    let mut child = env
        .cmd(&tomo_bin())
        .args(["exec", &local, &name, "-i", "--", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tomo exec -i");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"echo piped-$((6*7))\nread -r rest; echo \"rest=$rest\"; exit 3\n")
            .expect("write stdin");
        // stdin is dropped here: the pipe closes.
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let _ = env.tomo(&["rm", &local, &name, "--force"]);
    let _ = terminate(&mut dev);
    let status = status.unwrap_or_else(|| {
        panic!(
            "tomo exec -i did not end after stdin closed; stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("piped-42"), "{stdout:?}");
    assert_eq!(
        status.code(),
        Some(3),
        "{stdout:?} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 17.10: a lifetime out of range was refused with the API's field name (`ttl_secs`),
/// which appears nowhere on the command line. The CLI names its own flag, exits 2 and sends
/// nothing.
#[test]
fn lifetime_errors_name_the_flag() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let cases: [&[&str]; 4] = [
        &["codes", "create", "--ttl", "30d"],
        &["codes", "create", "--ttl", "0"],
        &["tokens", "create", "ci", "--expires", "0s"],
        &["tokens", "create", "ci", "--expires", "20000d"],
    ];
    for args in cases {
        let out = env
            .cmd(&tomo_bin())
            .args(args)
            .args(["--url", "https://127.0.0.1:9", "--token", "t"])
            .output()
            .expect("tomo");
        let err = stderr(&out);
        let flag = if args[0] == "codes" {
            "--ttl"
        } else {
            "--expires"
        };
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} names {flag}: {err}");
        assert!(!err.contains("ttl_secs"), "{args:?}: {err}");
        assert!(
            !err.contains("connect"),
            "{args:?} contacted nothing: {err}"
        );
    }
}

/// Issue 17.10: `tomo dev` (and `tomo server`) on a port already in use made its keys, its
/// database and the first admin token — never shown — before failing. It fails before writing
/// anything, with a line naming the address, and a second try on a free port is a first start.
#[test]
fn a_busy_port_fails_before_anything_is_written() {
    let env = Env {
        home: tempfile::tempdir().expect("home"),
    };
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    for cmd in ["dev", "server"] {
        let data = env.home.path().join(format!("{cmd}-data"));
        let out = env
            .cmd(&tomo_bin())
            .args([cmd, "--listen", &addr, "--data-dir"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .expect("tomo");
        let err = stderr(&out);
        assert!(!out.status.success(), "{cmd}: {err}");
        assert!(err.contains(&addr), "{cmd} names the address: {err}");
        assert!(err.contains("--listen"), "{cmd} says what to do: {err}");
        assert!(
            !data.exists(),
            "{cmd} wrote {:?} before failing",
            std::fs::read_dir(&data)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
    }
    drop(busy);
}

/// Issue 13.8: `tomo logs -f` cut by a control-plane restart said "error decoding response
/// body" or blamed the host. It says the control plane stopped and to run it again.
#[test]
fn a_follow_cut_by_a_control_plane_stop_says_so() {
    let (env, mut dev, local) = dev_online();
    let Some(container) =
        sleeping_container(&env, &local, "a_follow_cut_by_a_control_plane_stop_says_so")
    else {
        let _ = terminate(&mut dev);
        return;
    };
    let name = container.name.clone();
    let logs = env
        .cmd(&tomo_bin())
        .args(["logs", &local, &name, "-f"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tomo logs -f");
    // And a follow of the host's events (red team, 2026-12-03: it just stopped, exit 0).
    let events = env
        .cmd(&tomo_bin())
        .args(["events", &local, "-f"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tomo events -f");
    // A sleeping container prints nothing: give the streams a moment to open.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = terminate(&mut dev);
    let ev = events.wait_with_output().expect("events ends");
    let ev_err = String::from_utf8_lossy(&ev.stderr);
    assert!(!ev.status.success(), "{ev_err}");
    assert!(
        ev_err.contains("control plane is shutting down"),
        "{ev_err}"
    );
    let out = logs.wait_with_output().expect("logs ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("control plane is shutting down"), "{err}");
    assert!(err.contains("run the command again"), "{err}");
    assert!(
        !err.contains("decoding") && !err.contains("connection to the host"),
        "{err}"
    );
    // The control plane is gone: the container is removed through the engine itself.
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .output();
}

/// Removes a test container when the test ends, passed or not (a panicking test used to leave
/// its `tomo-test-*` container behind). Declared after the `tomo dev` child, so that it drops
/// first, while the control plane still runs.
struct RemoveOnDrop<'a> {
    env: &'a Env,
    host: String,
    name: String,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let removed = self
            .env
            .tomo(&["rm", &self.host, &self.name, "--force"])
            .status
            .success();
        // The control plane may be gone by now (a test that stops it, or one that panicked
        // after): through the engine itself, by the container's unique name.
        if !removed {
            let _ = Command::new("docker")
                .args(["rm", "-f", &self.name])
                .output();
        }
    }
}

/// Issue 17: `tomo ps` without a host lists every online host's containers in one fan-out,
/// with a HOST column; `--host` and `--label` narrow it, `-q` prints ids, `-o json` carries
/// the host of each container, and an offline host is named on stderr, not silently dropped.
#[test]
fn ps_across_every_host() {
    let (env, mut dev, local) = dev_online();
    let Some(container) = sleeping_container(&env, &local, "ps_across_every_host") else {
        terminate(&mut dev);
        return;
    };
    let name = container.name.clone();
    let _cleanup = RemoveOnDrop {
        env: &env,
        host: local.clone(),
        name: name.clone(),
    };
    // A second host on the same engine: the same container seen from two hosts.
    let code = json(&env.tomo(&["codes", "create", "--ttl", "10m", "-o", "json"]));
    let mut second = env
        .cmd(&agent_bin())
        .args(["--data-dir"])
        .arg(env.home.path().join("agent-ps"))
        .args([
            "--ca-file",
            code["ca_file"].as_str().unwrap_or_default(),
            "--hostname",
            "ps-second",
            "--server-url",
            code["server_url"].as_str().unwrap_or_default(),
            "--register-code",
            code["code"].as_str().unwrap_or_default(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("second agent");
    wait_for("ps-second online", || {
        host_status(&env, "ps-second").as_deref() == Some("online")
    });

    let hosts_of = |o: &Output| -> Vec<String> {
        let mut v: Vec<String> = json(o)
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == name.as_str())
            .map(|c| {
                c["host"]["hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        v.sort();
        v
    };
    let mut both = vec![local.clone(), "ps-second".to_owned()];
    both.sort();
    let all = env.tomo(&["ps", "-o", "json"]);
    assert!(all.status.success(), "{}", stderr(&all));
    assert_eq!(hosts_of(&all), both, "{}", stdout(&all));

    let table = env.tomo(&["ps"]);
    let text = stdout(&table);
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("HOST") && header.contains("NAME"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ps-second") && l.contains(&name)),
        "{text}"
    );

    let one = env.tomo(&["ps", "--host", "ps-second", "-o", "json"]);
    assert_eq!(hosts_of(&one), vec!["ps-second".to_owned()]);
    assert!(
        env.tomo(&["hosts", "label", "ps-second", "role=edge"])
            .status
            .success()
    );
    let labelled = env.tomo(&["ps", "--label", "role=edge", "-o", "json"]);
    assert_eq!(hosts_of(&labelled), vec!["ps-second".to_owned()]);
    let none = env.tomo(&["ps", "--label", "role=nowhere", "-o", "json"]);
    assert_eq!(json(&none), json!([]));
    let bad = env.tomo(&["ps", "--label", "novalue"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let unknown = env.tomo(&["ps", "--host", "no-such-host"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("tomo hosts ls"),
        "{}",
        stderr(&unknown)
    );

    let quiet = env.tomo(&["ps", "--host", "ps-second", "-q"]);
    let ids = stdout(&quiet);
    assert!(
        ids.lines().count() >= 1 && ids.lines().all(|l| l.len() == 12 && !l.contains(' ')),
        "{ids}"
    );

    // `tomo stats` across hosts (issue 17): every host's running containers, a HOST column
    // before docker's columns; `--host` narrows.
    let stats = env.tomo(&["stats", "-o", "json"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    assert_eq!(hosts_of(&stats), both, "{}", stdout(&stats));
    let one = env.tomo(&["stats", "--host", "ps-second", "-o", "json"]);
    assert_eq!(hosts_of(&one), vec!["ps-second".to_owned()]);
    let table = stdout(&env.tomo(&["stats"]));
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("HOST") && header.contains("CPU %") && header.contains("NET I/O"),
        "{table}"
    );

    // `tomo images` across hosts (issue 17): both hosts' images (one engine here: the test
    // image on each), with a HOST column; `--host` narrows; `create` needs a host.
    let images = json(&env.tomo(&["images", "-o", "json"]));
    let mut image_hosts: Vec<String> = images
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["tags"].as_array().is_some_and(|t| !t.is_empty()))
        .map(|i| {
            i["host"]["hostname"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    image_hosts.sort();
    image_hosts.dedup();
    assert_eq!(image_hosts, both, "{images}");
    let table = stdout(&env.tomo(&["images", "--host", "ps-second"]));
    let mut lines = table.lines();
    assert!(
        lines.next().unwrap_or_default().starts_with("HOST")
            && lines.all(|l| l.starts_with("ps-second")),
        "{table}"
    );
    let o = env.tomo(&["images", "rm", "some-image"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // The second host goes offline: still listed as far as it can be, and said.
    terminate(&mut second);
    wait_for("ps-second offline", || {
        host_status(&env, "ps-second").as_deref() == Some("offline")
    });
    let partial = env.tomo(&["ps", "-o", "json"]);
    assert!(partial.status.success(), "{}", stderr(&partial));
    assert_eq!(hosts_of(&partial), vec![local.clone()]);
    assert!(
        stderr(&partial).contains("ps-second: offline"),
        "{}",
        stderr(&partial)
    );
    drop(container);
    terminate(&mut dev);
}
