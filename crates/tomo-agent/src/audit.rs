//! The agent's audit trail (docs/security.md, "Audit"): one JSON line per request decision in
//! `<data_dir>/audit.log`, and the same record offered to the control plane as an
//! `audit.record` notification while a session is up.
//!
//! The local file is the record that always exists: a record is written there first, then offered
//! to the session's bounded queue; when the queue is full or no session is up it stays in the file
//! only (counted by [`Auditor::dropped`] and [`Auditor::unsent`]). Auditing never fails a request:
//! a write failure is logged (at most once a minute) and counted.
//!
//! The file (mode 0600) is rotated by size: a record that would take it past `max_bytes` first
//! moves it to `audit.log.1` (`.1` to `.2` …, the oldest of `keep` rotated files deleted). Each
//! record is one `write` of a whole line with `O_APPEND`; a file found ending in the middle of a
//! line (a crash or a short write) has the torn tail cut off before anything else is appended, so
//! no half record is ever followed by a valid one.
//!
//! [`redact_params`] is what goes into a record's `params`: see its documentation for the rules.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tomo_proto::audit::{AUDIT_RECORD, AuditRecord};
use tomo_proto::methods::{Method as _, StreamWrite};
use tomo_proto::rpc::{OutgoingNotification, V2};

use crate::redact::{REDACTED, is_secret_name, redact_url_credentials};
use crate::stream::Outgoing;

/// The audit log's file name in the data directory.
pub const FILE_NAME: &str = "audit.log";
/// Size past which the file is rotated (10 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept (`audit.log.1` … `audit.log.5`).
pub const DEFAULT_KEEP: usize = 5;
/// Records queued for the control plane per session before new ones stay in the file only.
pub const QUEUE: usize = 1024;
/// Longest string kept in recorded params; longer ones are cut and marked.
pub const MAX_STRING_BYTES: usize = 1024;
/// Most array items (and object members) kept in recorded params.
pub const MAX_ITEMS: usize = 256;
/// Longest record line; a record whose params make it longer loses its params (marked).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Quoted words are read again inside, this many levels deep.
const MAX_QUOTE_DEPTH: u8 = 3;
/// At most one warning per this interval about a failing audit log.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Writes audit records to the data directory and offers them to the session. Cheap to share
/// (`Arc`); every method takes `&self`.
pub struct Auditor {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Mutex<LogFile>,
    session: Mutex<Option<mpsc::Sender<AuditRecord>>>,
    dropped: AtomicU64,
    unsent: AtomicU64,
    write_failures: AtomicU64,
    warned: Mutex<Warned>,
}

/// The open log file, when it is open.
#[derive(Default)]
struct LogFile {
    file: Option<File>,
    size: u64,
}

/// State of the rate-limited warning.
#[derive(Default)]
struct Warned {
    last: Option<Instant>,
    suppressed: u64,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("keep", &self.keep)
            .field("dropped", &self.dropped())
            .field("unsent", &self.unsent())
            .field("write_failures", &self.write_failures())
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// An auditor writing `<data_dir>/audit.log` with the default limits. Nothing is opened
    /// before the first record.
    pub fn new(data_dir: &Path) -> Self {
        Self::with_limits(data_dir, DEFAULT_MAX_BYTES, DEFAULT_KEEP)
    }

    /// An auditor rotating past `max_bytes` and keeping `keep` rotated files.
    pub fn with_limits(data_dir: &Path, max_bytes: u64, keep: usize) -> Self {
        Self {
            path: data_dir.join(FILE_NAME),
            max_bytes,
            keep,
            file: Mutex::new(LogFile::default()),
            session: Mutex::new(None),
            dropped: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            warned: Mutex::new(Warned::default()),
        }
    }

    /// The queue a session forwards with [`forward`]: attach its sender with
    /// [`Auditor::attach`].
    pub fn channel() -> (mpsc::Sender<AuditRecord>, mpsc::Receiver<AuditRecord>) {
        mpsc::channel(QUEUE)
    }

    /// Where the current log file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offers the following records to `tx` (a session's queue), replacing any earlier one.
    pub fn attach(&self, tx: mpsc::Sender<AuditRecord>) {
        *lock(&self.session) = Some(tx);
    }

    /// Stops offering records to the control plane (the session ended).
    pub fn detach(&self) {
        *lock(&self.session) = None;
    }

    /// Records that a full session queue kept from the control plane (they are in the file).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records made while no session was attached (they are in the file only).
    pub fn unsent(&self) -> u64 {
        self.unsent.load(Ordering::Relaxed)
    }

    /// Records that could not be written to the file.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    /// Writes `record` to the file and offers it to the session. Never fails and never waits for
    /// the control plane. `record.params` should come from [`redact_params`].
    pub fn record(&self, record: AuditRecord) {
        let (record, line) = fit(record);
        if let Err(e) = self.append(&line) {
            self.write_failures.fetch_add(1, Ordering::Relaxed);
            self.warn(&e);
        }
        self.offer(record);
    }

    fn offer(&self, record: AuditRecord) {
        let tx = lock(&self.session).clone();
        let Some(tx) = tx else {
            self.unsent.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.unsent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Appends one whole line (ending in `\n`), rotating first when it would not fit.
    fn append(&self, line: &str) -> std::io::Result<()> {
        let mut log = lock(&self.file);
        if log.file.is_none() {
            *log = self.open()?;
        }
        let len = line.len() as u64;
        if log.size > 0 && log.size.saturating_add(len) > self.max_bytes {
            log.file = None;
            self.rotate()?;
            *log = self.open()?;
        }
        let LogFile { file, size } = &mut *log;
        let Some(f) = file.as_mut() else {
            return Err(std::io::Error::other("audit log not open"));
        };
        // One write of the whole line: with O_APPEND it lands after everything written before.
        match f.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                *size += len;
                Ok(())
            }
            Ok(n) => {
                // A short write (disk full): take the torn piece back, or reopen (and repair)
                // before the next record.
                if f.set_len(*size).is_err() {
                    *file = None;
                }
                Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write ({n} of {} bytes)", line.len()),
                ))
            }
            Err(e) => {
                *file = None;
                Err(e)
            }
        }
    }

    /// Opens (creating with mode 0600) the log, cutting a torn last line off.
    fn open(&self) -> std::io::Result<LogFile> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path)?;
        let meta = file.metadata()?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %self.path.display(), "the audit log was readable by others; made it 0600");
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        let mut size = meta.len();
        if size > 0 {
            let whole = whole_lines_len(&mut file, size)?;
            if whole != size {
                tracing::warn!(
                    path = %self.path.display(),
                    bytes = size - whole,
                    "the audit log ended in a torn record (a crash while writing); cut it off"
                );
                file.set_len(whole)?;
                size = whole;
            }
        }
        Ok(LogFile {
            file: Some(file),
            size,
        })
    }

    /// `audit.log` → `audit.log.1` → … → `audit.log.<keep>`, the oldest deleted.
    fn rotate(&self) -> std::io::Result<()> {
        ignore_missing(std::fs::remove_file(self.rotated(self.keep)))?;
        for i in (1..self.keep).rev() {
            ignore_missing(std::fs::rename(self.rotated(i), self.rotated(i + 1)))?;
        }
        ignore_missing(if self.keep == 0 {
            std::fs::remove_file(&self.path)
        } else {
            std::fs::rename(&self.path, self.rotated(1))
        })
    }

    fn rotated(&self, i: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{i}"));
        PathBuf::from(name)
    }

    fn warn(&self, e: &std::io::Error) {
        let mut w = lock(&self.warned);
        let now = Instant::now();
        if w.last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            w.suppressed += 1;
            return;
        }
        tracing::warn!(
            path = %self.path.display(),
            error = %e,
            suppressed = w.suppressed,
            "cannot write the audit log (the request goes on; the record is still sent to the control plane)"
        );
        w.last = Some(now);
        w.suppressed = 0;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Length of the file's prefix made of whole lines: `size` when it ends in `\n`, else the end
/// of its last newline (records are at most [`MAX_LINE_BYTES`], so the tail read covers one).
fn whole_lines_len(file: &mut File, size: u64) -> std::io::Result<u64> {
    let window = size.min(MAX_LINE_BYTES as u64 + 1);
    let start = size - window;
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(window as usize);
    std::io::Read::take(&mut *file, window).read_to_end(&mut tail)?;
    Ok(match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None if start == 0 => 0,
        // Not written by us (no newline in the last 64 KiB): keep it as it is.
        None => size,
    })
}

/// The record as one line, with its params dropped (and marked) when the line would be too long.
fn fit(mut record: AuditRecord) -> (AuditRecord, String) {
    let mut line = serde_json::to_string(&record).unwrap_or_default();
    if line.len() > MAX_LINE_BYTES {
        let n = line.len();
        record.params = Some(Value::String(format!("<params cut: record of {n} bytes>")));
        if let Some(err) = &mut record.error {
            *err = cut(err).into_owned();
        }
        line = serde_json::to_string(&record).unwrap_or_default();
    }
    line.push('\n');
    (record, line)
}

/// The `audit.record` notification frame for `record`.
pub fn notification(record: &AuditRecord) -> String {
    serde_json::to_string(&OutgoingNotification {
        jsonrpc: V2,
        method: AUDIT_RECORD,
        params: record,
    })
    .unwrap_or_default()
}

/// Sends a session's queued records to the control plane as `audit.record` notifications
/// through the session's outgoing queue, until `stop`, or either channel closes. Spawned once
/// per session with the receiver of [`Auditor::channel`].
pub async fn forward(
    mut rx: mpsc::Receiver<AuditRecord>,
    out: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let record = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let text = notification(&record);
        let sent = tokio::select! {
            r = out.send(Outgoing { task: None, text }) => r.is_ok(),
            _ = stop.cancelled() => return,
        };
        if !sent {
            return;
        }
    }
}

/// Params as they go into an audit record, with secrets redacted. The rules, applied to the
/// whole JSON tree whatever the method:
///
/// - A member whose **key** looks secret ([`is_secret_name`]: `password`, `auth`, `token`,
///   `DB_PASSWORD` in an `env` map, …) has its whole value replaced by `***`, objects included
///   (so registry credentials under `auth` are gone entirely).
/// - Every **string** has URL credentials hidden (`scheme://user:***@host`), and is read as a
///   command line (words split on blanks, quotes grouping, a fully quoted word read again
///   inside): `name=value` and `--name=value` with a secret-looking name keep the name only
///   (`DB_PASSWORD=***`, `--password=***`, `-Djdbc.password=***`); the word after a
///   secret-looking option (`--password X`, `--token X`) or header name (`Authorization:`) is
///   `***`, and so is the one after an authentication scheme (`Bearer X`, `Basic X`); `-p`
///   with a value attached (`-pX`, MySQL's and sshpass's password) is `-p***`; `user:secret`
///   after `-u`/`--user` (curl) keeps the user; secret-looking query parameters in URLs keep
///   their name (`?token=***`). An **array of strings** is read as an argument vector: the
///   element after `--password` is `***` whole.
/// - Strings longer than [`MAX_STRING_BYTES`] are cut and marked, arrays and objects beyond
///   [`MAX_ITEMS`] too.
/// - `stream.write`'s `data_b64` (keystrokes: maybe a password) becomes `"<N bytes>"`.
///
/// It errs toward hiding: `-print` reads as `-p***`, and the word after `--no-auth` is hidden.
/// `-p VALUE` with a blank is kept, since `-p` means many other things (`mkdir -p`, ports).
pub fn redact_params(method: &str, params: &Value) -> Value {
    let mut out = redact_value(params);
    if method == StreamWrite::NAME
        && let (Some(obj), Some(data)) = (
            out.as_object_mut(),
            params.get("data_b64").and_then(Value::as_str),
        )
    {
        let n = tomo_common::unb64(data)
            .map(|b| b.len())
            .unwrap_or(data.len() / 4 * 3);
        obj.insert("data_b64".into(), Value::String(format!("<{n} bytes>")));
    }
    out
}

/// [`redact_params`] over raw params as received; `None` when there were none.
pub fn redact_raw_params(
    method: &str,
    params: Option<&serde_json::value::RawValue>,
) -> Option<Value> {
    let raw = params?;
    Some(match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => redact_params(method, &v),
        Err(_) => Value::String(format!("<unparseable params, {} bytes>", raw.get().len())),
    })
}

fn redact_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(cut(&redact_text(s, 0).0).into_owned()),
        Value::Array(items) => redact_array(items),
        Value::Object(members) => {
            let mut out = Map::new();
            for (k, v) in members.iter().take(MAX_ITEMS) {
                let v = if is_secret_name(k) {
                    Value::String(REDACTED.into())
                } else {
                    redact_value(v)
                };
                out.insert(k.clone(), v);
            }
            if members.len() > MAX_ITEMS {
                out.insert(
                    "…".into(),
                    Value::String(format!("[{} more members]", members.len() - MAX_ITEMS)),
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// An array, read as an argument vector when it holds strings: a secret option's value may be
/// the next element.
fn redact_array(items: &[Value]) -> Value {
    let mut out = Vec::with_capacity(items.len().min(MAX_ITEMS + 1));
    let mut expect = Expect::Nothing;
    for item in items.iter().take(MAX_ITEMS) {
        match item {
            Value::String(s) => {
                let text = match expect {
                    Expect::Secret if !s.starts_with("--") => REDACTED.to_owned(),
                    Expect::UserPass => user_pass(s),
                    _ => {
                        let (text, next) = redact_text(s, 0);
                        expect = next;
                        out.push(Value::String(cut(&text).into_owned()));
                        continue;
                    }
                };
                expect = Expect::Nothing;
                out.push(Value::String(text));
            }
            other => {
                expect = Expect::Nothing;
                out.push(redact_value(other));
            }
        }
    }
    if items.len() > MAX_ITEMS {
        out.push(Value::String(format!(
            "…[{} more items]",
            items.len() - MAX_ITEMS
        )));
    }
    Value::Array(out)
}

/// What the next word is, after the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Nothing,
    /// The value of a secret-looking option, header or authentication scheme.
    Secret,
    /// `user:password` (after `-u`/`--user`).
    UserPass,
}

/// Redacts a string read as a command line. Returns the text and what the word after its last
/// word would be (for argument vectors).
fn redact_text(s: &str, depth: u8) -> (String, Expect) {
    let s = redact_url_credentials(s);
    let mut out = String::with_capacity(s.len());
    let mut expect = Expect::Nothing;
    let mut last = 0;
    for (start, end) in words(&s) {
        out.push_str(&s[last..start]);
        let word = &s[start..end];
        match expect {
            // `Authorization: Bearer X`: the secret is after the scheme.
            Expect::Secret if is_auth_scheme(word) => out.push_str(word),
            Expect::Secret if !word.starts_with("--") => {
                out.push_str(REDACTED);
                expect = Expect::Nothing;
            }
            Expect::UserPass => {
                out.push_str(&user_pass(word));
                expect = Expect::Nothing;
            }
            _ => {
                let (text, next) = redact_word(word, depth);
                out.push_str(&text);
                expect = next;
            }
        }
        last = end;
    }
    out.push_str(&s[last..]);
    (out, expect)
}

/// The byte ranges of the words of `s`: blanks separate them, quotes group, a backslash takes the
/// next character (as `system.exec`'s splitter reads a line). Never fails.
fn words(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut quote: Option<char> = None;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                start.get_or_insert(i);
                chars.next();
            }
            (Some(_), _) => {}
            (None, c) if c.is_whitespace() => {
                if let Some(b) = start.take() {
                    out.push((b, i));
                }
            }
            (None, c) => {
                start.get_or_insert(i);
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
            }
        }
    }
    if let Some(b) = start {
        out.push((b, s.len()));
    }
    out
}

/// One word: its redacted text and what it says about the next word.
fn redact_word(word: &str, depth: u8) -> (String, Expect) {
    // A fully quoted word is read again inside (`sh -c "mysql --password=x"`, `-H 'Authorization:
    // Bearer x'`), a few levels deep.
    if depth < MAX_QUOTE_DEPTH
        && word.len() >= 2
        && let Some(q) = word.chars().next().filter(|c| *c == '\'' || *c == '"')
        && word.ends_with(q)
    {
        let inner = &word[1..word.len() - 1];
        return (
            format!("{q}{}{q}", redact_text(inner, depth + 1).0),
            Expect::Nothing,
        );
    }
    let dashes = word.len() - word.trim_start_matches('-').len();
    let body = &word[dashes..];
    if let Some((name, _)) = body.split_once('=')
        && is_name(name)
        && is_secret_name(name)
    {
        return (format!("{}{name}=***", &word[..dashes]), Expect::Nothing);
    }
    if dashes > 0 && !body.is_empty() {
        let name = body.split_once('=').map_or(body, |(n, _)| n);
        if dashes == 1 && body.starts_with('p') && body.len() > 1 {
            return ("-p***".into(), Expect::Nothing);
        }
        if dashes == 1 && body.starts_with('u') && body.len() > 1 && body.contains(':') {
            return (format!("-{}", user_pass(body)), Expect::Nothing);
        }
        if !body.contains('=') {
            if is_secret_name(name) {
                return (word.into(), Expect::Secret);
            }
            if name == "u" || name == "user" {
                return (word.into(), Expect::UserPass);
            }
        }
    }
    if let Some(name) = word.strip_suffix(':')
        && is_name(name)
        && is_secret_name(name)
    {
        return (word.into(), Expect::Secret);
    }
    if is_auth_scheme(word) {
        return (word.into(), Expect::Secret);
    }
    (query_secrets(word).into_owned(), Expect::Nothing)
}

/// `user:secret` → `user:***`; a word without a colon is kept (a user alone).
fn user_pass(word: &str) -> String {
    match word.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => word.into(),
    }
}

/// Whether `name` can be a variable or option name (not a URL or a sentence).
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_auth_scheme(word: &str) -> bool {
    ["bearer", "basic", "digest", "token"]
        .iter()
        .any(|s| word.eq_ignore_ascii_case(s))
}

/// Hides the values of secret-looking `name=value` pairs after `?`, `&` or `;` (query strings).
fn query_secrets(word: &str) -> Cow<'_, str> {
    if !word.contains('=') || !word.contains(['?', '&', ';']) {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len());
    let mut changed = false;
    let mut rest = word;
    while let Some(sep) = rest.find(['?', '&', ';']) {
        out.push_str(&rest[..=sep]);
        rest = &rest[sep + 1..];
        let end = rest.find(['&', ';', '#']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, _)) if is_secret_name(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
                changed = true;
            }
            _ => out.push_str(pair),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(word)
    }
}

/// A string cut to [`MAX_STRING_BYTES`] (at a character boundary), marked with its full size.
fn cut(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_STRING_BYTES {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_STRING_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[cut: {} bytes]", &s[..end], s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(n: usize) -> AuditRecord {
        AuditRecord {
            at_ms: n as i64,
            trace_id: Some(format!("t{n}")),
            principal: Some("admin".into()),
            role: Some(tomo_proto::methods::Level::Admin),
            method: "system.info".into(),
            params: Some(json!({"n": n})),
            decision: "allowed".into(),
            reason: None,
            outcome: "ok".into(),
            error: None,
            duration_ms: 1,
        }
    }

    fn lines(path: &Path) -> Vec<AuditRecord> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is a whole record"))
            .collect()
    }

    #[test]
    fn rotation_keeps_whole_lines_and_deletes_the_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line_len = serde_json::to_string(&rec(10)).expect("json").len() as u64 + 1;
        // Two records per file.
        let a = Auditor::with_limits(dir.path(), line_len * 2, 2);
        for n in 10..20 {
            a.record(rec(n));
        }
        let current = lines(&dir.path().join("audit.log"));
        let one = lines(&dir.path().join("audit.log.1"));
        let two = lines(&dir.path().join("audit.log.2"));
        assert!(!dir.path().join("audit.log.3").exists());
        let at = |v: &[AuditRecord]| v.iter().map(|r| r.at_ms).collect::<Vec<_>>();
        assert_eq!(at(&current), vec![18, 19]);
        assert_eq!(at(&one), vec![16, 17]);
        assert_eq!(at(&two), vec![14, 15], "10–13 went with the oldest files");
        for f in ["audit.log", "audit.log.1", "audit.log.2"] {
            let len = std::fs::metadata(dir.path().join(f)).expect("meta").len();
            assert!(len <= line_len * 2, "{f}: {len}");
        }
        assert_eq!(a.write_failures(), 0);
    }

    #[test]
    fn a_line_longer_than_the_limit_still_goes_in_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::with_limits(dir.path(), 10, 1);
        a.record(rec(1));
        a.record(rec(2));
        assert_eq!(lines(&dir.path().join("audit.log"))[0].at_ms, 2);
        assert_eq!(lines(&dir.path().join("audit.log.1"))[0].at_ms, 1);
    }

    #[test]
    fn the_file_is_private_even_when_it_was_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::new(dir.path());
        a.record(rec(1));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(a.path()), 0o600);
        // A log someone opened up is closed again when reopened.
        std::fs::set_permissions(a.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let b = Auditor::new(dir.path());
        b.record(rec(2));
        assert_eq!(mode(b.path()), 0o600);
        assert_eq!(lines(b.path()).len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_cut_before_the_next_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::new(dir.path());
        a.record(rec(1));
        // A crash in the middle of the second record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(a.path())
            .expect("open");
        f.write_all(br#"{"at_ms":2,"meth"#).expect("torn write");
        drop(f);
        let b = Auditor::new(dir.path());
        b.record(rec(3));
        let at: Vec<i64> = lines(b.path()).iter().map(|r| r.at_ms).collect();
        assert_eq!(at, vec![1, 3]);
    }

    #[test]
    fn a_symlinked_log_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").expect("target");
        std::os::unix::fs::symlink(&target, dir.path().join(FILE_NAME)).expect("symlink");
        let a = Auditor::new(dir.path());
        a.record(rec(1));
        assert_eq!(a.write_failures(), 1);
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "");
    }

    #[test]
    fn write_failures_never_fail_the_caller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::new(&dir.path().join("missing"));
        let (tx, mut rx) = Auditor::channel();
        a.attach(tx);
        a.record(rec(1));
        a.record(rec(2));
        assert_eq!(a.write_failures(), 2);
        assert_eq!(rx.try_recv().expect("still sent").at_ms, 1);
    }

    #[test]
    fn full_queue_or_no_session_means_file_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::new(dir.path());
        a.record(rec(0));
        assert_eq!((a.unsent(), a.dropped()), (1, 0));
        let (tx, mut rx) = mpsc::channel(2);
        a.attach(tx);
        for n in 1..=5 {
            a.record(rec(n));
        }
        assert_eq!(a.dropped(), 3);
        assert_eq!(rx.try_recv().expect("first").at_ms, 1);
        assert_eq!(rx.try_recv().expect("second").at_ms, 2);
        assert!(rx.try_recv().is_err());
        a.detach();
        a.record(rec(6));
        assert_eq!((a.unsent(), a.dropped()), (2, 3));
        // Everything is in the file all the same.
        assert_eq!(lines(a.path()).len(), 7);
    }

    #[tokio::test]
    async fn forward_sends_notifications_until_stopped() {
        let (tx, rx) = Auditor::channel();
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let task = tokio::spawn(forward(rx, out_tx, stop.clone()));
        tx.send(rec(7)).await.expect("send");
        let frame = out_rx.recv().await.expect("frame");
        assert!(frame.task.is_none());
        let v: Value = serde_json::from_str(&frame.text).expect("json");
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["method"], AUDIT_RECORD);
        assert!(v.get("id").is_none(), "a notification has no id");
        let back: AuditRecord = serde_json::from_value(v["params"].clone()).expect("record");
        assert_eq!(back, rec(7));
        stop.cancel();
        task.await.expect("forward ends");
    }

    #[test]
    fn oversized_records_lose_their_params_not_their_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::new(dir.path());
        let (tx, mut rx) = Auditor::channel();
        a.attach(tx);
        let mut r = rec(1);
        r.params = Some(json!({"x": "y".repeat(MAX_LINE_BYTES)}));
        a.record(r);
        let written = &lines(a.path())[0];
        assert!(
            written
                .params
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with("<params cut"))
        );
        assert_eq!(&rx.try_recv().expect("sent"), written);
    }

    /// One row per rule: method, params, what the redacted params must be.
    #[test]
    fn redaction_table() {
        let long = "a".repeat(3000);
        let cases: Vec<(&str, Value, Value)> = vec![
            // env maps, by key; URL credentials in the other values.
            (
                "docker.containers.run",
                json!({"image": "app", "env": {"DB_PASSWORD": "hunter2", "DATABASE_URL": "postgres://app:hunter2@db/app", "TZ": "UTC"}}),
                json!({"image": "app", "env": {"DB_PASSWORD": "***", "DATABASE_URL": "postgres://app:***@db/app", "TZ": "UTC"}}),
            ),
            // Registry credentials: gone entirely.
            (
                "docker.images.pull",
                json!({"image": "r.example/app", "auth": {"username": "u", "password": "p"}}),
                json!({"image": "r.example/app", "auth": "***"}),
            ),
            // Nested objects and arrays of objects.
            (
                "x.y",
                json!({"a": {"b": [{"api_key": "k", "url": "https://u:p@h/x"}]}, "labels": {"traefik.basicauth.users": "u:$apr1$"}}),
                json!({"a": {"b": [{"api_key": "***", "url": "https://u:***@h/x"}]}, "labels": {"traefik.basicauth.users": "***"}}),
            ),
            // Command lines.
            (
                "system.exec",
                json!({"command": "mysql -uroot -phunter2 --host db"}),
                json!({"command": "mysql -uroot -p*** --host db"}),
            ),
            (
                "system.exec",
                json!({"command": "tool --password=hunter2 --token abc --user x --verbose"}),
                json!({"command": "tool --password=*** --token *** --user x --verbose"}),
            ),
            (
                "system.exec",
                json!({"command": "git clone https://bob:hunter2@git.example/r.git"}),
                json!({"command": "git clone https://bob:***@git.example/r.git"}),
            ),
            (
                "system.exec",
                json!({"command": "curl -u bob:hunter2 -H 'Authorization: Bearer abc' 'https://h/x?a=1&access_token=abc'"}),
                json!({"command": "curl -u bob:*** -H 'Authorization: Bearer ***' 'https://h/x?a=1&access_token=***'"}),
            ),
            (
                "system.exec",
                json!({"command": "app --secret \"two words\" DB_PASS='x y' -Djdbc.password=x"}),
                json!({"command": "app --secret *** DB_PASS=*** -Djdbc.password=***"}),
            ),
            // Argument vectors: the value may be the next element.
            (
                "docker.containers.exec",
                json!({"container": "db", "cmd": ["mysql", "--password", "hunter2", "-e", "select 1"], "env": {"TZ": "UTC"}}),
                json!({"container": "db", "cmd": ["mysql", "--password", "***", "-e", "select 1"], "env": {"TZ": "UTC"}}),
            ),
            (
                "docker.containers.exec",
                json!({"container": "db", "cmd": ["sh", "-c", "PGPASSWORD=hunter2 psql -h db"]}),
                json!({"container": "db", "cmd": ["sh", "-c", "PGPASSWORD=*** psql -h db"]}),
            ),
            (
                "docker.containers.run",
                json!({"image": "app", "command": ["--api-key", "k1", "--port", "80"], "env_list": ["API_TOKEN=t", "A=b"]}),
                json!({"image": "app", "command": ["--api-key", "***", "--port", "80"], "env_list": ["API_TOKEN=***", "A=b"]}),
            ),
            // Keystrokes.
            (
                "stream.write",
                json!({"stream": "s1", "data_b64": "aHVudGVyMgo="}),
                json!({"stream": "s1", "data_b64": "<8 bytes>"}),
            ),
            // Harmless values stay as they are.
            (
                "system.exec",
                json!({"command": "df -h /srv", "timeout": 5}),
                json!({"command": "df -h /srv", "timeout": 5}),
            ),
            (
                "docker.containers.run",
                json!({"image": "nginx:1", "ports": [{"host": 8080, "container": 80}], "volumes": ["/srv/a:/a:ro"], "tty": true}),
                json!({"image": "nginx:1", "ports": [{"host": 8080, "container": 80}], "volumes": ["/srv/a:/a:ro"], "tty": true}),
            ),
            (
                "docker.containers.exec",
                json!({"cmd": ["sh", "-c", "su -c 'app \"--token x\"'"]}),
                json!({"cmd": ["sh", "-c", "su -c 'app \"--token ***\"'"]}),
            ),
            // Long strings are cut and marked.
            (
                "x.y",
                json!({"note": long}),
                json!({"note": format!("{}…[cut: 3000 bytes]", "a".repeat(MAX_STRING_BYTES))}),
            ),
        ];
        for (method, params, want) in cases {
            assert_eq!(redact_params(method, &params), want, "{method} {params}");
        }
    }

    #[test]
    fn long_arrays_and_objects_are_cut() {
        let arr: Vec<Value> = (0..MAX_ITEMS + 10).map(|i| json!(i)).collect();
        let out = redact_params("x", &json!({ "a": arr }));
        let a = out["a"].as_array().expect("array");
        assert_eq!(a.len(), MAX_ITEMS + 1);
        assert_eq!(a[MAX_ITEMS], "…[10 more items]");
        let obj: Map<String, Value> = (0..MAX_ITEMS + 3)
            .map(|i| (format!("k{i:04}"), json!(i)))
            .collect();
        let out = redact_params("x", &Value::Object(obj));
        assert_eq!(out["…"], "[3 more members]");
    }

    #[test]
    fn raw_params() {
        let raw =
            serde_json::value::RawValue::from_string(r#"{"password":"x"}"#.into()).expect("raw");
        assert_eq!(
            redact_raw_params("x", Some(&raw)),
            Some(json!({"password": "***"}))
        );
        assert_eq!(redact_raw_params("x", None), None);
    }
}
