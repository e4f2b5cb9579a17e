//! The agent's half of streams (docs/protocol.md, "Streams"): per-session bookkeeping of open
//! streams, credit-based flow control, and the [`StreamSink`] a handler writes to.
//!
//! Memory stays bounded whatever the consumer does: a producer may run at most
//! [`STREAM_WINDOW`] messages ahead of the last `stream.ack`, and then waits (which in turn stops
//! it reading from Docker). A session holds at most [`MAX_STREAMS_PER_SESSION`] streams; they are
//! all closed when the session ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tomo_proto::methods::{
    MAX_STREAMS_PER_SESSION, STREAM_DATA, STREAM_END, STREAM_WINDOW, StreamData, StreamEnd,
    StreamOpened,
};
use tomo_proto::rpc::{RpcError, code};

/// Input for an interactive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Data(Vec<u8>),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// End of input: the exec's stdin is closed.
    Eof,
}

/// A frame for the session to send. `task` is set for the answer of a request (whose task is
/// then done), and `None` for stream frames.
#[derive(Debug)]
pub struct Outgoing {
    pub task: Option<u64>,
    pub text: String,
}

/// Input messages queued per stream before `stream.write` waits.
const INPUT_QUEUE: usize = 16;

/// Input to a stream is not a command (it is not counted against the host's command rate,
/// issue 17.1), so each interactive stream has its own budget instead: a token bucket of
/// messages and one of bytes. A human typing, pasting a page or resizing a window stays far
/// inside it; a client flooding the agent is refused with -32002 `input_rate` and may resend.
#[derive(Debug)]
pub struct InputBudget {
    messages: Bucket,
    bytes: Bucket,
}

impl InputBudget {
    /// Input messages a second, sustained.
    pub const MESSAGES_PER_SEC: f64 = 50.0;
    /// Input messages at once after a quiet spell.
    pub const MESSAGES_BURST: f64 = 500.0;
    /// Input bytes a second, sustained (1 MiB).
    pub const BYTES_PER_SEC: f64 = 1024.0 * 1024.0;
    /// Input bytes at once after a quiet spell (4 MiB).
    pub const BYTES_BURST: f64 = 4.0 * 1024.0 * 1024.0;

    pub fn new() -> Self {
        Self {
            messages: Bucket::full(Self::MESSAGES_BURST, Self::MESSAGES_PER_SEC),
            bytes: Bucket::full(Self::BYTES_BURST, Self::BYTES_PER_SEC),
        }
    }

    /// Spends one message of `len` bytes, or refuses it (spending nothing).
    pub fn spend(&mut self, len: usize) -> Result<(), RpcError> {
        let now = tokio::time::Instant::now();
        self.messages.refill(now);
        self.bytes.refill(now);
        if self.messages.level < 1.0 || self.bytes.level < len as f64 {
            return Err(RpcError::new(
                code::RATE_LIMITED,
                format!(
                    "input to this stream is coming faster than {} messages or {} KiB a second; slow down and resend",
                    Self::MESSAGES_PER_SEC,
                    Self::BYTES_PER_SEC as u64 / 1024
                ),
            )
            .with_data(serde_json::json!({"reason": "input_rate"})));
        }
        self.messages.level -= 1.0;
        self.bytes.level -= len as f64;
        Ok(())
    }
}

impl Default for InputBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
struct Bucket {
    level: f64,
    burst: f64,
    per_sec: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn full(burst: f64, per_sec: f64) -> Self {
        Self {
            level: burst,
            burst,
            per_sec,
            at: tokio::time::Instant::now(),
        }
    }

    fn refill(&mut self, now: tokio::time::Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + secs * self.per_sec).min(self.burst);
        self.at = now;
    }
}

struct Entry {
    /// Messages the consumer has taken (`seq + 1` of the last ack).
    acked: watch::Sender<u64>,
    close: CancellationToken,
    input: Option<mpsc::Sender<Input>>,
    budget: InputBudget,
    /// `eof` was queued: no more data is taken.
    input_ended: bool,
}

/// The open streams of one session.
pub struct Streams {
    out: mpsc::Sender<Outgoing>,
    table: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
    session: CancellationToken,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("open", &self.open_count())
            .finish_non_exhaustive()
    }
}

impl Streams {
    /// Streams writing their frames to `out`; all end when `session` is cancelled.
    pub fn new(out: mpsc::Sender<Outgoing>, session: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            out,
            table: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            session,
        })
    }

    /// Number of open streams.
    pub fn open_count(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Opens a stream. `replied` is cancelled once the answer announcing the stream is queued,
    /// so that no data can overtake it. With `input`, the stream takes `stream.write`/`resize`.
    pub fn open(
        self: &Arc<Self>,
        replied: CancellationToken,
        input: bool,
    ) -> Result<(StreamOpened, StreamSink, Option<mpsc::Receiver<Input>>), RpcError> {
        let mut table = self
            .table
            .lock()
            .map_err(|_| RpcError::internal("stream table poisoned"))?;
        if table.len() >= MAX_STREAMS_PER_SESSION {
            return Err(RpcError::new(
                code::RATE_LIMITED,
                format!("too many open streams (at most {MAX_STREAMS_PER_SESSION} per session); close one first"),
            )
            .with_data(serde_json::json!({"reason": "streams"})));
        }
        let id = format!("s{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (acked_tx, acked_rx) = watch::channel(0u64);
        let close = self.session.child_token();
        let (input_tx, input_rx) = if input {
            let (tx, rx) = mpsc::channel(INPUT_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        table.insert(
            id.clone(),
            Entry {
                acked: acked_tx,
                close: close.clone(),
                input: input_tx,
                budget: InputBudget::new(),
                input_ended: false,
            },
        );
        let sink = StreamSink {
            id: id.clone(),
            seq: 0,
            acked: acked_rx,
            close,
            replied,
            streams: Arc::clone(self),
            ended: false,
        };
        Ok((
            StreamOpened {
                stream: id,
                window: STREAM_WINDOW,
            },
            sink,
            input_rx,
        ))
    }

    /// The consumer has taken everything up to `seq`. Returns whether the stream is open.
    pub fn ack(&self, id: &str, seq: u64) -> bool {
        self.with(id, |e| {
            e.acked.send_if_modified(|a| {
                let taken = seq.saturating_add(1);
                (taken > *a).then(|| *a = taken).is_some()
            });
        })
    }

    /// Asks the stream's producer to stop; it then sends `stream.end` with reason `closed`.
    pub fn close(&self, id: &str) -> bool {
        self.with(id, |e| e.close.cancel())
    }

    /// Queues input for an interactive stream within its [`InputBudget`]; waits while its queue
    /// is full.
    pub async fn input(&self, id: &str, input: Input) -> Result<bool, RpcError> {
        let tx = match self.table.lock() {
            Ok(mut t) => match t.get_mut(id) {
                None => return Ok(false),
                Some(e) => {
                    let tx = e.input.clone().ok_or_else(|| {
                        RpcError::invalid_params(format!("stream {id} takes no input"))
                            .with_data(serde_json::json!({"param": "stream"}))
                    })?;
                    let len = match &input {
                        Input::Data(d) => d.len(),
                        Input::Resize { .. } | Input::Eof => 0,
                    };
                    if e.input_ended && !matches!(input, Input::Resize { .. }) {
                        return Err(RpcError::invalid_params(format!(
                            "stream {id}: its input has ended (eof was sent)"
                        ))
                        .with_data(serde_json::json!({"param": "eof"})));
                    }
                    e.budget.spend(len)?;
                    e.input_ended |= matches!(input, Input::Eof);
                    tx
                }
            },
            Err(_) => return Err(RpcError::internal("stream table poisoned")),
        };
        Ok(tx.send(input).await.is_ok())
    }

    fn with(&self, id: &str, f: impl FnOnce(&Entry)) -> bool {
        match self.table.lock().ok().as_ref().and_then(|t| t.get(id)) {
            Some(e) => {
                f(e);
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(id);
        }
    }
}

/// Why a stream's producer must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The control plane closed the stream.
    Closed,
    /// The session is over.
    Gone,
}

/// The producing end of one stream. Dropping it without [`StreamSink::end`] ends the stream
/// with reason `error`.
pub struct StreamSink {
    id: String,
    seq: u64,
    acked: watch::Receiver<u64>,
    close: CancellationToken,
    replied: CancellationToken,
    streams: Arc<Streams>,
    ended: bool,
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink")
            .field("id", &self.id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl StreamSink {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Resolves when the control plane closed the stream or the session ended.
    pub async fn closed(&self) {
        self.close.cancelled().await
    }

    /// Sends one data message, waiting for the announcement to go out and for credit.
    pub async fn send<T: Serialize>(&mut self, data: &T) -> Result<(), Stopped> {
        tokio::select! {
            biased;
            _ = self.close.cancelled() => return Err(self.why()),
            _ = self.replied.cancelled() => {}
        }
        let window_end = self.seq;
        let close = self.close.clone();
        let credit = self
            .acked
            .wait_for(|taken| window_end < taken.saturating_add(STREAM_WINDOW));
        let got = tokio::select! {
            biased;
            _ = close.cancelled() => None,
            r = credit => Some(r.is_ok()),
        };
        match got {
            None => return Err(self.why()),
            Some(false) => return Err(Stopped::Gone),
            Some(true) => {}
        }
        let frame = tomo_proto::rpc::notification_text(
            STREAM_DATA,
            &StreamData {
                stream: self.id.clone(),
                seq: self.seq,
                data: serde_json::to_value(data).unwrap_or_default(),
            },
        );
        tokio::select! {
            biased;
            _ = self.close.cancelled() => return Err(self.why()),
            r = self.streams.out.send(Outgoing { task: None, text: frame }) => r.map_err(|_| Stopped::Gone)?,
        }
        self.seq += 1;
        Ok(())
    }

    /// Ends the stream with a final result or error. `reason` is `eof` unless the producer
    /// stopped because of [`Stopped`].
    pub async fn end(mut self, outcome: Result<Option<serde_json::Value>, RpcError>) {
        self.ended = true;
        self.replied.cancelled().await;
        let reason = if self.close.is_cancelled() {
            if self.streams.session.is_cancelled() {
                "shutdown"
            } else {
                "closed"
            }
        } else if outcome.is_err() {
            "error"
        } else {
            "eof"
        };
        let (result, error) = match outcome {
            Ok(r) => (r, None),
            Err(e) => (None, Some(e)),
        };
        let frame = self.end_frame(reason, result, error);
        self.streams.remove(&self.id);
        let _ = self
            .streams
            .out
            .send(Outgoing {
                task: None,
                text: frame,
            })
            .await;
    }

    fn why(&self) -> Stopped {
        if self.streams.session.is_cancelled() {
            Stopped::Gone
        } else {
            Stopped::Closed
        }
    }

    fn end_frame(
        &self,
        reason: &str,
        result: Option<serde_json::Value>,
        error: Option<RpcError>,
    ) -> String {
        tomo_proto::rpc::notification_text(
            STREAM_END,
            &StreamEnd {
                stream: self.id.clone(),
                sent: self.seq,
                reason: reason.into(),
                error,
                result,
            },
        )
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        self.streams.remove(&self.id);
        if !self.ended && !self.streams.session.is_cancelled() {
            let frame = self.end_frame(
                "error",
                None,
                Some(RpcError::internal("the stream's producer stopped")),
            );
            let _ = self.streams.out.try_send(Outgoing {
                task: None,
                text: frame,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn seqs(frames: &[Outgoing]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| serde_json::from_str::<serde_json::Value>(&f.text).ok())
            .filter(|v| v["method"] == STREAM_DATA)
            .filter_map(|v| v["params"]["seq"].as_u64())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn producer_waits_for_credit_and_announcement() {
        let (tx, mut rx) = mpsc::channel(1024);
        let streams = Streams::new(tx, CancellationToken::new());
        let replied = CancellationToken::new();
        let (opened, mut sink, _) = streams.open(replied.clone(), false).expect("open");
        let producer = tokio::spawn(async move {
            for i in 0..1000u64 {
                if sink.send(&i).await.is_err() {
                    return i;
                }
            }
            1000
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rx.try_recv().is_err(), "nothing before the announcement");
        replied.cancel();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut frames = Vec::new();
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
        assert_eq!(seqs(&frames), (0..STREAM_WINDOW).collect::<Vec<_>>());
        assert!(streams.ack(&opened.stream, 9));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut more = Vec::new();
        while let Ok(f) = rx.try_recv() {
            more.push(f);
        }
        assert_eq!(
            seqs(&more),
            (STREAM_WINDOW..STREAM_WINDOW + 10).collect::<Vec<_>>()
        );
        assert!(streams.close(&opened.stream));
        let stopped_at = producer.await.expect("producer");
        assert_eq!(stopped_at, STREAM_WINDOW + 10);
    }

    #[tokio::test]
    async fn stream_count_is_bounded_and_end_frees_a_slot() {
        let (tx, mut rx) = mpsc::channel(1024);
        let streams = Streams::new(tx, CancellationToken::new());
        let replied = CancellationToken::new();
        replied.cancel();
        let mut sinks = Vec::new();
        for _ in 0..MAX_STREAMS_PER_SESSION {
            sinks.push(streams.open(replied.clone(), false).expect("open").1);
        }
        let e = streams
            .open(replied.clone(), false)
            .expect_err("one too many");
        assert_eq!(e.code, code::RATE_LIMITED);
        let first = sinks.remove(0);
        first.end(Ok(None)).await;
        let end: serde_json::Value =
            serde_json::from_str(&rx.recv().await.expect("end frame").text).expect("json");
        assert_eq!(end["method"], STREAM_END);
        assert_eq!(end["params"]["reason"], "eof");
        assert!(streams.open(replied, false).is_ok());
    }

    /// Issue 17.1: input is bounded per stream (not by the command rate): a burst of 500
    /// keystrokes passes, the 501st at once is refused with -32002 `input_rate` and passes
    /// again once the bucket refills; bytes are bounded the same way.
    #[tokio::test(start_paused = true)]
    async fn input_has_a_budget_per_stream() {
        let mut b = InputBudget::new();
        for i in 0..InputBudget::MESSAGES_BURST as usize {
            assert!(b.spend(1).is_ok(), "keystroke {i}");
        }
        let e = b.spend(1).expect_err("past the burst");
        assert_eq!(e.code, code::RATE_LIMITED);
        assert_eq!(e.data.as_ref().expect("data")["reason"], "input_rate");
        tokio::time::advance(Duration::from_millis(100)).await;
        for i in 0..5 {
            assert!(b.spend(1).is_ok(), "refilled keystroke {i}");
        }
        assert!(b.spend(1).is_err(), "the refill is 50 a second");
        let mut b = InputBudget::new();
        let mib = 1024 * 1024;
        for _ in 0..4 {
            b.spend(mib).expect("4 MiB of paste at once");
        }
        assert!(b.spend(mib).is_err(), "a fifth MiB at once is refused");
        tokio::time::advance(Duration::from_secs(1)).await;
        b.spend(mib).expect("a MiB a second");
    }

    #[tokio::test]
    async fn input_goes_only_to_interactive_streams() {
        let (tx, _rx) = mpsc::channel(16);
        let streams = Streams::new(tx, CancellationToken::new());
        let (plain, _s1, _) = streams.open(CancellationToken::new(), false).expect("open");
        let (tty, _s2, input) = streams.open(CancellationToken::new(), true).expect("open");
        let mut input = input.expect("input");
        assert!(
            streams
                .input(&plain.stream, Input::Data(b"x".to_vec()))
                .await
                .is_err()
        );
        assert!(
            streams
                .input(&tty.stream, Input::Data(b"ls\n".to_vec()))
                .await
                .expect("write")
        );
        assert_eq!(input.recv().await, Some(Input::Data(b"ls\n".to_vec())));
        assert!(
            !streams
                .input("s999", Input::Resize { rows: 1, cols: 1 })
                .await
                .expect("unknown")
        );
    }

    /// After `eof` the stream takes no more data (a resize still goes through).
    #[tokio::test]
    async fn no_input_after_eof() {
        let (tx, _rx) = mpsc::channel(16);
        let streams = Streams::new(tx, CancellationToken::new());
        let (s, _sink, input) = streams.open(CancellationToken::new(), true).expect("open");
        let mut input = input.expect("input");
        assert!(streams.input(&s.stream, Input::Eof).await.expect("eof"));
        assert_eq!(input.recv().await, Some(Input::Eof));
        let e = streams
            .input(&s.stream, Input::Data(b"late".to_vec()))
            .await
            .expect_err("data after eof");
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert!(
            streams.input(&s.stream, Input::Eof).await.is_err(),
            "a second eof"
        );
        assert!(
            streams
                .input(&s.stream, Input::Resize { rows: 2, cols: 3 })
                .await
                .expect("resize")
        );
    }
}
