//! The agent's audit trail (docs/security.md, "Audit"): one JSON line per request decision in
//! `<data_dir>/audit.log`, and the same record offered to the control plane as an
//! `audit.record` notification while a session is up.
//!
//! The local file is the record that always exists: a record is written there first, then offered
//! to the session's bounded queue; when the queue is full it stays in the file only (counted by
//! [`Auditor::dropped`]); made while no session is up (counted by [`Auditor::unsent`]), the last
//! [`QUEUE`] of them wait in memory and go to the next session first.
//!
//! A command (execute or admin level) is recorded twice (issue 13.3): its admission
//! ([`Auditor::admit`], outcome `admitted`), written and flushed to disk before its handler runs,
//! and its outcome ([`Admission::finish`]) under the same `admission_id`. A command whose
//! admission cannot be written is not run: that is the one audit failure that fails a request.
//! An admission left without an outcome — the request's task dropped, or the agent killed — gets
//! an outcome record `unknown`: at once when the task is dropped, else when an auditor next opens
//! the directory ([`Auditor::new`]). Any other write failure is logged (at most once a minute) and
//! counted, and the request goes on.
//!
//! The file (mode 0600) is rotated by size: a record that would take it past `max_bytes` first
//! moves it to `audit.log.1` (`.1` to `.2` …, the oldest of `keep` rotated files deleted). Each
//! record is one `write` of a whole line with `O_APPEND`; a file found ending in the middle of a
//! line (a crash or a short write) has the torn tail cut off before anything else is appended, so
//! no half record is ever followed by a valid one.
//!
//! [`redact_params`] is what goes into a record's `params`: see its documentation for the rules.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tomo_proto::audit::{AUDIT_RECORD, AuditRecord};

use crate::stream::Outgoing;

use tomo_common::redact::params;

pub use params::{MAX_ITEMS, MAX_STRING_BYTES, redact_params, redact_raw_params, redact_string};

/// The audit log's file name in the data directory.
pub const FILE_NAME: &str = "audit.log";
/// Size past which the file is rotated (10 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept (`audit.log.1` … `audit.log.5`).
pub const DEFAULT_KEEP: usize = 5;
/// Records queued for the control plane per session before new ones stay in the file only; also
/// the most kept in memory, while no session is up, for the next one.
pub const QUEUE: usize = 1024;
/// The error of an outcome `unknown`: the agent stopped before the handler ended.
pub const UNKNOWN_OUTCOME: &str = "the agent stopped (killed, crashed or shut down) before the \
    command's handler ended: whether it took effect is unknown; check the host";
/// Longest record line; a record whose params make it longer loses its params (marked).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
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
    /// Records made while no session was up, oldest first, for the next session.
    backlog: Mutex<VecDeque<AuditRecord>>,
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
    /// An auditor writing `<data_dir>/audit.log` with the default limits. Admissions an earlier
    /// process left without an outcome get their `unknown` outcome record now (see
    /// [`Auditor::recover`]).
    pub fn new(data_dir: &Path) -> Self {
        Self::with_limits(data_dir, DEFAULT_MAX_BYTES, DEFAULT_KEEP)
    }

    /// An auditor rotating past `max_bytes` and keeping `keep` rotated files.
    pub fn with_limits(data_dir: &Path, max_bytes: u64, keep: usize) -> Self {
        let this = Self {
            path: data_dir.join(FILE_NAME),
            max_bytes,
            keep,
            file: Mutex::new(LogFile::default()),
            session: Mutex::new(None),
            backlog: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            warned: Mutex::new(Warned::default()),
        };
        match this.recover() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                path = %this.path.display(),
                commands = n,
                "commands were admitted but the agent stopped before they ended; recorded their outcome as unknown"
            ),
            Err(e) => tracing::warn!(path = %this.path.display(), error = %e,
                "cannot read the audit log to find commands left without an outcome"),
        }
        this
    }

    /// Appends an outcome record `unknown` for every admission in the log (the current file
    /// and the last rotated one) that has no outcome record; returns how many. A missing log
    /// has none.
    pub fn recover(&self) -> std::io::Result<usize> {
        let mut open: Vec<AuditRecord> = Vec::new();
        let mut ended: HashSet<String> = HashSet::new();
        self.each_logged(|r| {
            let Some(id) = r.admission_id.clone() else {
                return;
            };
            if r.outcome == ADMITTED {
                open.push(r);
            } else {
                ended.insert(id);
            }
        })?;
        open.retain(|r| {
            r.admission_id
                .as_ref()
                .is_some_and(|id| !ended.contains(id))
        });
        let n = open.len();
        for r in open {
            self.record(unknown_outcome(r, 0));
        }
        Ok(n)
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
    /// First go the log's records from `since_ms` on (the newest the control plane holds;
    /// without one, the log's last [`QUEUE`]), so that records made while no session was up
    /// reach it even after an agent restart (issue 13, the double fault); then the ones made
    /// while no session was up that the log could not take. The control plane drops copies.
    pub fn attach(&self, tx: mpsc::Sender<AuditRecord>, since_ms: Option<i64>) {
        let mut session = lock(&self.session);
        let logged = self.logged_since(since_ms).unwrap_or_else(|e| {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot read the audit log to send it again");
            Vec::new()
        });
        let mut sent: HashSet<String> = HashSet::new();
        for r in logged {
            if let Ok(text) = serde_json::to_string(&r) {
                sent.insert(text);
            }
            if tx.try_send(r).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        for r in lock(&self.backlog).drain(..) {
            if serde_json::to_string(&r).is_ok_and(|t| sent.contains(&t)) {
                continue;
            }
            if tx.try_send(r).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        *session = Some(tx);
    }

    /// The log's records (the last rotated file, then the current one) made at or after
    /// `since_ms`, the newest [`QUEUE`] at most; without `since_ms`, the newest [`QUEUE`].
    fn logged_since(&self, since_ms: Option<i64>) -> std::io::Result<Vec<AuditRecord>> {
        let mut out: VecDeque<AuditRecord> = VecDeque::with_capacity(QUEUE);
        self.each_logged(|r| {
            if since_ms.is_some_and(|s| r.at_ms < s) {
                return;
            }
            if out.len() == QUEUE {
                out.pop_front();
            }
            out.push_back(r);
        })?;
        Ok(out.into())
    }

    /// Hands every whole record of the log (the last rotated file, then the current one) to
    /// `f`, oldest first; a torn or foreign line is skipped, a missing file has none.
    fn each_logged(&self, mut f: impl FnMut(AuditRecord)) -> std::io::Result<()> {
        for path in [self.rotated(1), self.path.clone()] {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in bytes.split(|b| *b == b'\n') {
                if let Ok(r) = serde_json::from_slice::<AuditRecord>(line) {
                    f(r);
                }
            }
        }
        Ok(())
    }

    /// Stops offering records to the control plane (the session ended).
    pub fn detach(&self) {
        *lock(&self.session) = None;
    }

    /// Records that a full session queue kept from the control plane (they are in the file).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records made while no session was attached (in the file; the last [`QUEUE`] also wait in
    /// memory for the next session).
    pub fn unsent(&self) -> u64 {
        self.unsent.load(Ordering::Relaxed)
    }

    /// Records that could not be written to the file.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    /// Writes `record` to the file and offers it to the session. Never fails and never waits for
    /// the control plane. `record.params` should come from [`redact_params`]; `record.error` is
    /// redacted here (error messages may quote the request, a command line for one).
    pub fn record(&self, mut record: AuditRecord) {
        record.error = record.error.map(|e| redact_string(&e));
        let (record, line) = fit(record);
        if let Err(e) = self.append(&line) {
            self.write_failures.fetch_add(1, Ordering::Relaxed);
            self.warn(&e);
        }
        self.offer(record);
    }

    /// Records the admission of a command, before its handler runs: written and flushed to
    /// disk, then offered to the session. `record` is the request's record (its outcome is
    /// replaced by `admitted`). An error means the admission is not on disk: the command must not
    /// run. Dropping the [`Admission`] without [`Admission::finish`] records outcome `unknown`.
    pub async fn admit(self: &Arc<Self>, mut record: AuditRecord) -> std::io::Result<Admission> {
        record.outcome = ADMITTED.into();
        record.admission_id = Some(tomo_common::hex(&tomo_common::random_bytes::<8>()));
        record.error = None;
        let (record, line) = fit(record);
        let this = Arc::clone(self);
        // Writing and flushing wait for the disk: off the async workers.
        let written = tokio::task::spawn_blocking(move || this.append_durably(&line))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = written {
            self.write_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.offer(record.clone());
        Ok(Admission {
            auditor: Arc::clone(self),
            admitted: Some(record),
            started: Instant::now(),
        })
    }

    fn offer(&self, record: AuditRecord) {
        // Held throughout, so that a record cannot miss both the backlog `attach` drains and the
        // session it attaches.
        let session = lock(&self.session);
        let Some(tx) = session.as_ref() else {
            return self.keep_for_later(record);
        };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(r)) => self.keep_for_later(r),
        }
    }

    /// No session: the record waits for the next one (the oldest goes past [`QUEUE`]).
    fn keep_for_later(&self, record: AuditRecord) {
        self.unsent.fetch_add(1, Ordering::Relaxed);
        let mut backlog = lock(&self.backlog);
        if backlog.len() >= QUEUE {
            backlog.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        backlog.push_back(record);
    }

    /// [`Self::append`], then flushes the file's data to the disk.
    fn append_durably(&self, line: &str) -> std::io::Result<()> {
        self.append(line)?;
        let log = lock(&self.file);
        match log.file.as_ref() {
            Some(f) => f.sync_data(),
            None => Err(std::io::Error::other("audit log not open")),
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

/// A request's record before its decision: who asked (from `meta`), the method and params; the
/// caller fills in the decision and outcome.
pub fn request_record(
    meta: Option<&tomo_proto::rpc::RequestMeta>,
    method: &str,
    params: Option<Value>,
) -> AuditRecord {
    AuditRecord {
        at_ms: tomo_common::now_ms(),
        trace_id: meta.and_then(|m| m.trace_id.clone()),
        principal: meta.and_then(|m| m.principal.clone()),
        role: meta.and_then(|m| m.role),
        method: method.to_owned(),
        params,
        decision: "allowed".into(),
        reason: None,
        outcome: String::new(),
        error: None,
        duration_ms: 0,
        admission_id: None,
    }
}

/// The answer to a command whose admission could not be written: it was not run.
pub fn unwritable(path: &Path, e: &std::io::Error) -> tomo_proto::rpc::RpcError {
    tomo_proto::rpc::RpcError::new(
        tomo_proto::rpc::code::INTERNAL_ERROR,
        format!(
            "the agent cannot record this command in its audit log {} ({e}): the command was not \
             run; free space on the agent's disk (or fix its data directory) and retry",
            path.display()
        ),
    )
    .with_data(serde_json::json!({"reason": "audit_unwritable"}))
}

/// The outcome of a command's admission, `admitted`.
pub const ADMITTED: &str = "admitted";

/// A command's admission on disk, waiting for its outcome.
#[derive(Debug)]
pub struct Admission {
    auditor: Arc<Auditor>,
    /// `None` once finished.
    admitted: Option<AuditRecord>,
    started: Instant,
}

impl Admission {
    /// The id shared by the admission and its outcome record.
    pub fn id(&self) -> Option<&str> {
        self.admitted
            .as_ref()
            .and_then(|r| r.admission_id.as_deref())
    }

    /// Records the command's outcome (`record`, as [`Auditor::record`] takes it) under the
    /// admission's id.
    pub fn finish(mut self, mut record: AuditRecord) {
        if let Some(admitted) = self.admitted.take() {
            record.admission_id = admitted.admission_id;
        }
        self.auditor.record(record);
    }
}

impl Drop for Admission {
    /// The request's task ended without an outcome (aborted at shutdown, or cancelled).
    fn drop(&mut self) {
        if let Some(admitted) = self.admitted.take() {
            let ms = self.started.elapsed().as_millis() as u64;
            self.auditor.record(unknown_outcome(admitted, ms));
        }
    }
}

/// The outcome record `unknown` of an admission.
fn unknown_outcome(mut admitted: AuditRecord, duration_ms: u64) -> AuditRecord {
    admitted.at_ms = tomo_common::now_ms();
    admitted.outcome = "unknown".into();
    admitted.error = Some(UNKNOWN_OUTCOME.into());
    admitted.duration_ms = duration_ms;
    admitted
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
            *err = params::cut(err).into_owned();
        }
        line = serde_json::to_string(&record).unwrap_or_default();
    }
    line.push('\n');
    (record, line)
}

/// The `audit.record` notification frame for `record`.
pub fn notification(record: &AuditRecord) -> String {
    tomo_proto::rpc::notification_text(AUDIT_RECORD, record)
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
            admission_id: None,
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
    fn error_messages_quoting_the_request_are_redacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::new(dir.path());
        let mut r = rec(1);
        r.error = Some(
            "Command blocked: `mysql --password=hunter2 -e status` matches no allowlist entry"
                .into(),
        );
        a.record(r);
        let text = std::fs::read_to_string(a.path()).expect("read");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("--password=***"), "{text}");
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
        a.attach(tx, Some(i64::MAX));
        a.record(rec(1));
        a.record(rec(2));
        assert_eq!(a.write_failures(), 2);
        assert_eq!(rx.try_recv().expect("still sent").at_ms, 1);
    }

    #[test]
    fn a_full_queue_means_file_only_and_records_made_without_a_session_go_to_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Auditor::new(dir.path());
        a.record(rec(0));
        assert_eq!((a.unsent(), a.dropped()), (1, 0));
        let (tx, mut rx) = mpsc::channel(3);
        a.attach(tx, Some(i64::MAX));
        for n in 1..=5 {
            a.record(rec(n));
        }
        assert_eq!(a.dropped(), 3);
        assert_eq!(rx.try_recv().expect("made before the session").at_ms, 0);
        assert_eq!(rx.try_recv().expect("first").at_ms, 1);
        assert_eq!(rx.try_recv().expect("second").at_ms, 2);
        assert!(rx.try_recv().is_err());
        a.detach();
        a.record(rec(6));
        assert_eq!((a.unsent(), a.dropped()), (2, 3));
        // Everything is in the file all the same.
        assert_eq!(lines(a.path()).len(), 7);
        let (tx, mut rx) = mpsc::channel(3);
        a.attach(tx, Some(i64::MAX));
        assert_eq!(rx.try_recv().expect("made while detached").at_ms, 6);
    }

    /// Regression test for issue 13.3: a stop and an exec cut by a kill of the agent left no
    /// record anywhere. The admission is on disk before the handler runs; reopened, an admission
    /// without its outcome reads `unknown`, once, and goes to the next session.
    #[tokio::test]
    async fn an_admission_left_without_outcome_reads_unknown_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Arc::new(Auditor::new(dir.path()));
        let killed = a.admit(rec(1)).await.expect("admitted");
        let killed_id = killed.id().expect("id").to_owned();
        // On disk before anything else happens.
        let on_disk = lines(a.path());
        assert_eq!(on_disk.len(), 1);
        assert_eq!(on_disk[0].outcome, ADMITTED);
        assert_eq!(on_disk[0].admission_id.as_deref(), Some(killed_id.as_str()));
        let finished = a.admit(rec(2)).await.expect("admitted");
        let finished_id = finished.id().expect("id").to_owned();
        finished.finish(rec(2));
        // Killed: the handler never ended and nothing ran the admission's drop.
        std::mem::forget(killed);
        drop(a);

        let b = Auditor::new(dir.path());
        let all = lines(b.path());
        let outcomes: Vec<(&str, &str)> = all
            .iter()
            .map(|r| (r.admission_id.as_deref().unwrap_or("-"), r.outcome.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (killed_id.as_str(), ADMITTED),
                (finished_id.as_str(), ADMITTED),
                (finished_id.as_str(), "ok"),
                (killed_id.as_str(), "unknown"),
            ]
        );
        let unknown = &all[3];
        assert_eq!(unknown.error.as_deref(), Some(UNKNOWN_OUTCOME));
        assert_eq!(
            (unknown.method.as_str(), unknown.trace_id.as_deref()),
            ("system.info", Some("t1"))
        );
        // The next session gets it.
        let (tx, mut rx) = Auditor::channel();
        b.attach(tx, Some(i64::MAX));
        assert_eq!(&rx.try_recv().expect("sent"), unknown);
        // Reopened again: settled, nothing more.
        drop(b);
        let c = Auditor::new(dir.path());
        assert_eq!(lines(c.path()).len(), 4);
    }

    #[tokio::test]
    async fn a_dropped_admission_records_unknown_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Arc::new(Auditor::new(dir.path()));
        let admission = a.admit(rec(1)).await.expect("admitted");
        let id = admission.id().map(str::to_owned);
        // An aborted request task drops it.
        drop(admission);
        let all = lines(a.path());
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].outcome.as_str(), &all[1].admission_id),
            ("unknown", &id)
        );
    }

    #[tokio::test]
    async fn an_admission_that_cannot_be_written_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Nothing can be opened there (as when the disk is full, the write fails).
        std::fs::create_dir(dir.path().join(FILE_NAME)).expect("dir");
        let a = Arc::new(Auditor::new(dir.path()));
        let (tx, mut rx) = Auditor::channel();
        a.attach(tx, Some(i64::MAX));
        let e = a.admit(rec(1)).await.expect_err("not on disk");
        assert_eq!(a.write_failures(), 1);
        assert!(
            rx.try_recv().is_err(),
            "an admission not on disk is not announced"
        );
        let answer = unwritable(a.path(), &e);
        assert_eq!(answer.code, tomo_proto::rpc::code::INTERNAL_ERROR);
        assert!(answer.message.contains("was not run"), "{}", answer.message);
        assert_eq!(answer.data.expect("data")["reason"], "audit_unwritable");
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
        a.attach(tx, Some(i64::MAX));
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
}
