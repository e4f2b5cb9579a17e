//! Idempotency keys (issue 13.6): a command sent again with the key of one already admitted is
//! not run twice. The retry gets the first call's answer, waits for it while the first still
//! runs, or, when the first was cut by an agent restart, is told that its outcome is unknown.
//!
//! A key belongs to the caller that sent it (the control plane derives the key it signs from the
//! API token's id and the operator's key, so another token's key is another key) and to the
//! method, and names one request: the same key with other params is refused (-32602). Keys are
//! kept [`KEEP_MS`] (24 h), at most [`CAPACITY`] (more than a day of commands at the default
//! rate limit); past it the oldest finished one is forgotten, a running one never.
//!
//! Every admission is appended to `<data>/idempotency.log` and flushed to the disk before the
//! handler runs (an admission that cannot be written refuses the command), and every answer
//! after it, so a retry after an agent crash or restart is still recognised. The log is
//! rewritten without expired entries at start and whenever it holds more than twice the lines
//! it needs. What a retry gets back is bounded ([`MAX_KEPT_ANSWER`] each, [`KEPT_BUDGET`] in all),
//! and the output of an
//! `exec` is never kept (it may hold secrets): its retry is told it ran, with its exit code.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tomo_proto::rpc::{RpcError, code};

/// How long a key is remembered.
pub const KEEP_MS: i64 = 24 * 60 * 60 * 1000;
/// Keys remembered at most: 24 h of commands at the default rate (30 a minute) fit.
pub const CAPACITY: usize = 50_000;
/// The largest answer kept for a retry; a larger one is replaced by an error saying so.
pub const MAX_KEPT_ANSWER: usize = 16 * 1024;
/// The answers kept in all, bytes: past it, a new answer is kept as "it ran" only.
pub const KEPT_BUDGET: usize = 16 * 1024 * 1024;
/// The log's file name in the agent's data directory.
pub const FILE: &str = "idempotency.log";

/// A call's answer: its result or its error.
pub type Answer = Result<Value, RpcError>;

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    /// The scoped key (principal, key).
    k: String,
    /// For an admission: the request's fingerprint (method and params) and its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
    /// For an answer: the result, or the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<RpcError>,
}

#[derive(Debug)]
enum State {
    /// Admitted in this process; the sender gets the answer.
    Running(watch::Receiver<Option<Answer>>),
    Done(Answer),
    /// Admitted before a restart that came before its answer.
    Unknown,
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    at_ms: i64,
    state: State,
    /// Bytes of the kept answer, counted in [`Inner::kept`].
    size: usize,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    order: VecDeque<(i64, String)>,
    log: Option<std::fs::File>,
    /// Lines in the log file, to know when to compact it.
    log_lines: usize,
    /// The last write failed part-way: the next line starts on a fresh line.
    torn: bool,
    /// Bytes of all kept answers.
    kept: usize,
}

impl Inner {
    /// Forgets `key` if its entry is the one admitted at `at`.
    fn forget(&mut self, key: &str, at: i64) {
        if self.entries.get(key).is_some_and(|e| e.at_ms == at)
            && let Some(e) = self.entries.remove(key)
        {
            self.kept = self.kept.saturating_sub(e.size);
        }
    }
}

/// The size an answer takes when kept.
fn answer_size(answer: &Answer) -> usize {
    match answer {
        Ok(v) => serde_json::to_string(v).map_or(0, |t| t.len()),
        Err(e) => serde_json::to_string(e).map_or(0, |t| t.len()),
    }
}

/// The agent's idempotency keys.
#[derive(Debug)]
pub struct Keys {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Claim {
    /// The key is new: run the call, then hand its answer to [`Ticket::finish`].
    Run(Ticket),
    /// The key's call has ended: this is its answer.
    Answered(Answer),
    /// The key's call still runs: its answer comes through this.
    Running(watch::Receiver<Option<Answer>>),
    /// Refused: the key names another request, its call's outcome is unknown, or the admission
    /// cannot be written.
    Refused(RpcError),
}

/// The right to run a key's call, and the duty to record its answer.
#[derive(Debug)]
pub struct Ticket {
    keys: Arc<Keys>,
    key: String,
    at_ms: i64,
    tx: watch::Sender<Option<Answer>>,
}

impl Ticket {
    /// Records the call's answer (for retries, on disk and in memory) and hands it to the
    /// retries that wait.
    pub fn finish(self, method: &str, answer: &Answer) {
        let kept = self
            .keys
            .answered(&self.key, self.at_ms, &keepable(method, answer));
        let _ = self.tx.send(Some(kept));
    }
}

/// The answer as kept for retries: an exec's output is dropped (its exit code stays), a
/// too-large answer is replaced by an error saying so.
fn keepable(method: &str, answer: &Answer) -> Answer {
    if method.ends_with(".exec")
        && let Ok(v) = answer
    {
        let exit = v.get("exit_code").cloned().unwrap_or(Value::Null);
        return Err(RpcError::new(
            code::TIMEOUT,
            format!(
                "the command with this idempotency key ran once (exit code {exit}); its output is not kept for retries, as it may hold secrets"
            ),
        )
        .with_data(serde_json::json!({"reason": "ran_output_not_kept", "exit_code": exit})));
    }
    // A stream's announcement names a stream of that session: replayed later it would name
    // another call's stream.
    if let Ok(v) = answer
        && v.get("stream").is_some()
    {
        return Err(RpcError::new(
            code::TIMEOUT,
            "the call with this idempotency key ran once and opened a stream, which is not replayed: use a new key to open another",
        )
        .with_data(serde_json::json!({"reason": "stream_not_replayed"})));
    }
    if answer_size(answer) > MAX_KEPT_ANSWER {
        return too_large(answer);
    }
    answer.clone()
}

/// What a retry gets when the first answer is not kept for its size.
fn too_large(answer: &Answer) -> Answer {
    Err(RpcError::new(
        code::INTERNAL_ERROR,
        format!(
            "the call with this idempotency key ran once ({}), but its answer is not kept for retries (over {MAX_KEPT_ANSWER} bytes, or over the agent's budget for kept answers)",
            if answer.is_ok() {
                "it succeeded"
            } else {
                "it failed"
            }
        ),
    ))
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fingerprint of a request: what a retry must repeat exactly.
fn fingerprint(method: &str, params: &str) -> String {
    let mut bytes = Vec::with_capacity(method.len() + 1 + params.len());
    bytes.extend_from_slice(method.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(params.as_bytes());
    tomo_common::hex(&tomo_common::sha256(&bytes))
}

impl Keys {
    /// Keys kept in memory only (tests).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Loads `<dir>/idempotency.log` (entries younger than [`KEEP_MS`]) and rewrites it without
    /// the rest. An admission without an answer is a call cut by a restart: its outcome is
    /// unknown.
    pub fn open(dir: &Path, now_ms: i64) -> std::io::Result<Self> {
        let path = dir.join(FILE);
        let mut inner = Inner::default();
        match read_nofollow(&path) {
            Ok(bytes) => {
                for line in bytes.split(|b| *b == b'\n') {
                    // A torn line (a crash or a full disk while writing) is skipped.
                    let Ok(l) = serde_json::from_slice::<Line>(line) else {
                        continue;
                    };
                    match (l.fp, l.at) {
                        (Some(fp), Some(at)) if now_ms - at < KEEP_MS => {
                            inner.order.push_back((at, l.k.clone()));
                            inner.entries.insert(
                                l.k,
                                Entry {
                                    fingerprint: fp,
                                    at_ms: at,
                                    state: State::Unknown,
                                    size: 0,
                                },
                            );
                        }
                        (Some(_), _) => {}
                        (None, _) => {
                            let answer = match l.err {
                                Some(err) => Err(err),
                                None => Ok(l.ok.unwrap_or(Value::Null)),
                            };
                            let size = answer_size(&answer);
                            if let Some(e) = inner.entries.get_mut(&l.k) {
                                e.state = State::Done(answer);
                                let old = std::mem::replace(&mut e.size, size);
                                inner.kept = (inner.kept + size).saturating_sub(old);
                            }
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        inner.order.make_contiguous().sort();
        while inner.entries.len() > CAPACITY {
            let Some((at, k)) = inner.order.pop_front() else {
                break;
            };
            inner.forget(&k, at);
        }
        let keys = Self {
            path: Some(path),
            inner: Mutex::new(inner),
        };
        keys.rewrite(&mut lock(&keys.inner))?;
        Ok(keys)
    }

    /// Decides what a command with `key` from `principal` does; a new key's admission is on
    /// disk before this returns [`Claim::Run`].
    pub fn claim(
        self: &Arc<Self>,
        principal: &str,
        key: &str,
        method: &str,
        params: &str,
        now_ms: i64,
    ) -> Claim {
        if !tomo_proto::rpc::valid_idempotency_key(key) {
            return Claim::Refused(
                RpcError::new(
                    code::INVALID_PARAMS,
                    "an idempotency key is 1 to 64 of A-Z a-z 0-9 - _",
                )
                .with_data(serde_json::json!({"reason": "idempotency_key"})),
            );
        }
        let scoped = format!("{principal}\n{method}\n{key}");
        let fp = fingerprint(method, params);
        let mut inner = lock(&self.inner);
        self.expire(&mut inner, now_ms);
        if let Some(e) = inner.entries.get(&scoped) {
            if e.fingerprint != fp {
                return Claim::Refused(
                    RpcError::new(
                        code::INVALID_PARAMS,
                        format!(
                            "this idempotency key was used for another {method} in the last 24 h (with other params): use a new key for a new request"
                        ),
                    )
                    .with_data(serde_json::json!({"reason": "idempotency_key_reused"})),
                );
            }
            return match &e.state {
                State::Done(answer) => Claim::Answered(answer.clone()),
                State::Running(rx) => Claim::Running(rx.clone()),
                State::Unknown => Claim::Refused(
                    RpcError::new(
                        code::TIMEOUT,
                        "the call with this idempotency key was cut by a restart of the agent before it answered: whether it took effect is unknown, so it is not run again; check the host (`tomo ps`), then retry with a new key if needed",
                    )
                    .with_data(serde_json::json!({"reason": "outcome_unknown"})),
                ),
            };
        }
        let line = Line {
            k: scoped.clone(),
            fp: Some(fp.clone()),
            at: Some(now_ms),
            ok: None,
            err: None,
        };
        if let Err(e) = self.append(&mut inner, &line, true) {
            return Claim::Refused(
                RpcError::new(
                    code::INTERNAL_ERROR,
                    format!(
                        "the agent cannot record this command's idempotency key ({e}): the command was not run; free space on the agent's disk and retry"
                    ),
                )
                .with_data(serde_json::json!({"reason": "idempotency_unwritable"})),
            );
        }
        let (tx, rx) = watch::channel(None);
        inner.order.push_back((now_ms, scoped.clone()));
        inner.entries.insert(
            scoped.clone(),
            Entry {
                fingerprint: fp,
                at_ms: now_ms,
                state: State::Running(rx),
                size: 0,
            },
        );
        // The oldest finished keys go first; a running one is never forgotten.
        let mut kept_running = Vec::new();
        while inner.entries.len() > CAPACITY {
            let Some((at, k)) = inner.order.pop_front() else {
                break;
            };
            match inner.entries.get(&k) {
                Some(e) if e.at_ms == at && matches!(e.state, State::Running(_)) => {
                    kept_running.push((at, k));
                }
                Some(e) if e.at_ms == at => inner.forget(&k, at),
                _ => {}
            }
        }
        for r in kept_running.into_iter().rev() {
            inner.order.push_front(r);
        }
        Claim::Run(Ticket {
            keys: Arc::clone(self),
            key: scoped,
            at_ms: now_ms,
            tx,
        })
    }

    /// Keeps a call's answer; returns it as kept (over the budget, "it ran" only).
    fn answered(&self, key: &str, at_ms: i64, answer: &Answer) -> Answer {
        let mut inner = lock(&self.inner);
        // The entry may have been forgotten (expired) and the key admitted again since.
        let ours = inner
            .entries
            .get(key)
            .is_some_and(|e| e.at_ms == at_ms && matches!(e.state, State::Running(_)));
        if !ours {
            return answer.clone();
        }
        let mut answer = answer.clone();
        if inner.kept + answer_size(&answer) > KEPT_BUDGET {
            answer = too_large(&answer);
        }
        let answer = &answer;
        let line = Line {
            k: key.to_owned(),
            fp: None,
            at: None,
            ok: answer.as_ref().ok().cloned(),
            err: answer.as_ref().err().cloned(),
        };
        // On disk before the retries learn it: a crash after this keeps it.
        if let Err(e) = self.append(&mut inner, &line, true) {
            tracing::warn!(error = %e, "cannot record an idempotent call's answer (a retry after a restart will be told its outcome is unknown)");
        }
        let size = answer_size(answer);
        if let Some(e) = inner.entries.get_mut(key) {
            e.state = State::Done(answer.clone());
            e.size = size;
            inner.kept += size;
        }
        if inner.log_lines > 2 * inner.entries.len() + 1024
            && let Err(e) = self.rewrite(&mut inner)
        {
            tracing::warn!(error = %e, "cannot compact the idempotency log");
        }
        answer.clone()
    }

    fn expire(&self, inner: &mut Inner, now_ms: i64) {
        while let Some((at, _)) = inner.order.front() {
            if now_ms - at < KEEP_MS {
                break;
            }
            if let Some((at, k)) = inner.order.pop_front() {
                inner.forget(&k, at);
            }
        }
    }

    fn append(&self, inner: &mut Inner, line: &Line, durable: bool) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if inner.log.is_none() {
            inner.log = Some(open_append(path)?);
        }
        let mut text = if inner.torn {
            "\n".to_owned()
        } else {
            String::new()
        };
        text.push_str(&serde_json::to_string(line).map_err(std::io::Error::other)?);
        text.push('\n');
        let Some(f) = inner.log.as_mut() else {
            return Err(std::io::Error::other("idempotency log not open"));
        };
        let written = f
            .write_all(text.as_bytes())
            .and_then(|()| if durable { f.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                inner.torn = false;
                inner.log_lines += 1;
            }
            Err(_) => {
                // Part of the line may be on disk: the next one starts on a fresh line, and the
                // torn piece is skipped when the log is read.
                inner.torn = true;
                inner.log = None;
            }
        }
        written
    }

    /// Writes the log again with the entries in memory only (a new file, synced, renamed over
    /// the old one, the directory synced).
    fn rewrite(&self, inner: &mut Inner) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("log.tmp");
        let mut text = String::new();
        let mut lines = 0;
        for (_, k) in &inner.order {
            let Some(e) = inner.entries.get(k) else {
                continue;
            };
            let admitted = Line {
                k: k.clone(),
                fp: Some(e.fingerprint.clone()),
                at: Some(e.at_ms),
                ok: None,
                err: None,
            };
            text.push_str(&serde_json::to_string(&admitted).map_err(std::io::Error::other)?);
            text.push('\n');
            lines += 1;
            if let State::Done(answer) = &e.state {
                let done = Line {
                    k: k.clone(),
                    fp: None,
                    at: None,
                    ok: answer.as_ref().ok().cloned(),
                    err: answer.as_ref().err().cloned(),
                };
                text.push_str(&serde_json::to_string(&done).map_err(std::io::Error::other)?);
                text.push('\n');
                lines += 1;
            }
        }
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        inner.log = None;
        inner.log_lines = lines;
        inner.torn = false;
        Ok(())
    }
}

/// The log's bytes, without following a symlink in its place.
fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(c: Claim) -> Ticket {
        match c {
            Claim::Run(t) => t,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn a_retry_gets_the_first_answer_and_a_changed_request_is_refused() {
        let keys = Arc::new(Keys::in_memory());
        let t = run(keys.claim(
            "alice",
            "k1",
            "docker.containers.run",
            "{\"image\":\"a\"}",
            0,
        ));
        t.finish("m", &Ok(json!({"id": "c1"})));
        match keys.claim(
            "alice",
            "k1",
            "docker.containers.run",
            "{\"image\":\"a\"}",
            5,
        ) {
            Claim::Answered(Ok(v)) => assert_eq!(v["id"], "c1"),
            other => panic!("{other:?}"),
        }
        match keys.claim(
            "alice",
            "k1",
            "docker.containers.run",
            "{\"image\":\"b\"}",
            5,
        ) {
            Claim::Refused(e) => assert_eq!(e.code, code::INVALID_PARAMS, "{e:?}"),
            other => panic!("{other:?}"),
        }
        // Another principal's key is another key.
        run(keys.claim("bob", "k1", "docker.containers.run", "{\"image\":\"a\"}", 5));
        // After 24 h the key is forgotten.
        run(keys.claim(
            "alice",
            "k1",
            "docker.containers.run",
            "{\"image\":\"a\"}",
            KEEP_MS,
        ));
    }

    #[tokio::test]
    async fn a_retry_while_the_first_runs_waits_for_its_answer() {
        let keys = Arc::new(Keys::in_memory());
        let t = run(keys.claim("a", "k", "m", "{}", 0));
        let Claim::Running(mut rx) = keys.claim("a", "k", "m", "{}", 1) else {
            panic!("running");
        };
        t.finish("m", &Err(RpcError::new(code::DOCKER, "boom")));
        let answer = rx.wait_for(Option::is_some).await.expect("answer").clone();
        assert_eq!(answer.expect("some").expect_err("error").message, "boom");
    }

    #[test]
    fn keys_survive_a_restart_and_a_cut_call_is_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let keys = Arc::new(Keys::open(dir.path(), 0).expect("open"));
            run(keys.claim("a", "done", "m", "{}", 0)).finish("m", &Ok(json!(1)));
            // Admitted, never answered: the agent dies here.
            std::mem::forget(run(keys.claim("a", "cut", "m", "{}", 0)));
            run(keys.claim("a", "old", "m", "{}", -KEEP_MS)).finish("m", &Ok(json!(2)));
        }
        let keys = Arc::new(Keys::open(dir.path(), 10).expect("reopen"));
        assert!(
            matches!(keys.claim("a", "done", "m", "{}", 10), Claim::Answered(Ok(v)) if v == json!(1))
        );
        match keys.claim("a", "cut", "m", "{}", 10) {
            Claim::Refused(e) => {
                assert_eq!(e.code, code::TIMEOUT);
                assert!(e.message.contains("unknown"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        // The expired key left the log when it was rewritten at start, and is new again.
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("log");
        assert!(!text.contains("\\nold"), "{text}");
        run(keys.claim("a", "old", "m", "{}", 10));
    }

    /// A line torn in the middle of a multi-byte character (a full disk) neither stops the
    /// agent from starting nor swallows the next line.
    #[test]
    fn a_torn_line_is_skipped_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let keys = Arc::new(Keys::open(dir.path(), 0).expect("open"));
            run(keys.claim("a", "before", "m", "{}", 0)).finish("m", &Ok(json!("é")));
        }
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).expect("log");
        bytes.extend_from_slice("{\"k\":\"a\\nm\\ntorn\",\"fp\":\"\u{e9}".as_bytes());
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).expect("torn");
        let keys = Arc::new(Keys::open(dir.path(), 1).expect("a torn log still opens"));
        assert!(
            matches!(keys.claim("a", "before", "m", "{}", 1), Claim::Answered(Ok(v)) if v == json!("é"))
        );
        run(keys.claim("a", "after", "m", "{}", 1)).finish("m", &Ok(json!(2)));
        let keys = Arc::new(Keys::open(dir.path(), 2).expect("reopen"));
        assert!(
            matches!(keys.claim("a", "after", "m", "{}", 2), Claim::Answered(Ok(v)) if v == json!(2))
        );
    }

    /// An exec's output may hold secrets: a retry learns that it ran and its exit code only.
    #[test]
    fn an_execs_output_is_not_kept() {
        let keys = Arc::new(Keys::in_memory());
        let method = "docker.containers.exec";
        run(keys.claim("a", "k", method, "{}", 0)).finish(
            method,
            &Ok(json!({"exit_code": 3, "stdout": "password=hunter2"})),
        );
        match keys.claim("a", "k", method, "{}", 1) {
            Claim::Answered(Err(e)) => {
                assert!(e.message.contains("exit code 3"), "{}", e.message);
                assert!(!format!("{e:?}").contains("hunter2"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Red team, 2026-12-03: a replayed stream announcement named another principal's stream.
    #[test]
    fn a_stream_announcement_is_not_replayed() {
        let keys = Arc::new(Keys::in_memory());
        let method = "docker.images.pull";
        run(keys.claim("a", "k", method, "{}", 0))
            .finish(method, &Ok(json!({"stream": "s37", "window": 64})));
        match keys.claim("a", "k", method, "{}", 1) {
            Claim::Answered(Err(e)) => {
                assert_eq!(
                    e.data.as_ref().and_then(|d| d["reason"].as_str()),
                    Some("stream_not_replayed")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unwritable_log_refuses_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Arc::new(Keys::open(dir.path(), 0).expect("open"));
        std::fs::remove_file(dir.path().join(FILE)).expect("rm");
        std::fs::create_dir(dir.path().join(FILE)).expect("a directory in its place");
        match keys.claim("a", "k", "m", "{}", 0) {
            Claim::Refused(e) => assert!(e.message.contains("not run"), "{}", e.message),
            other => panic!("{other:?}"),
        }
    }
}
