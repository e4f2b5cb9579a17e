//! A read budget for connections that have not authenticated yet. The WebSocket layer accepts
//! messages as large as an agent's biggest answer (11 MiB); before the handshake completes, a
//! peer may send at most [`HANDSHAKE_BUDGET`] bytes, so an unauthenticated peer cannot make the
//! control plane buffer megabytes. The budget is lifted once the agent is authenticated; so is
//! the connection's place in its source's unauthenticated share (`admission`), which the budget
//! carries.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a peer may send before it is authenticated: the handshake message limit twice over
/// (the hello, plus framing, pings and slack).
pub const HANDSHAKE_BUDGET: u64 = 2 * tomo_proto::MAX_HANDSHAKE_BYTES as u64;

/// The shared, liftable budget.
#[derive(Debug, Clone)]
pub struct ReadBudget(Arc<AtomicU64>, Option<crate::admission::Unauthenticated>);

impl ReadBudget {
    pub fn new(bytes: u64) -> Self {
        Self(Arc::new(AtomicU64::new(bytes)), None)
    }

    /// The connection's admission slot, released by [`ReadBudget::lift`].
    pub fn releasing(mut self, slot: Option<crate::admission::Unauthenticated>) -> Self {
        self.1 = slot;
        self
    }

    /// No limit from now on: the peer is authenticated.
    pub fn lift(&self) {
        self.0.store(u64::MAX, Ordering::Relaxed);
        if let Some(slot) = &self.1 {
            slot.authenticated();
        }
    }
}

/// An IO whose reads stop with an error once the budget is spent.
#[derive(Debug)]
pub struct Budgeted<S> {
    inner: S,
    budget: ReadBudget,
}

/// The read error of a peer past its budget: found by its type ([`is_over_budget`]), never by
/// its text.
#[derive(Debug, thiserror::Error)]
#[error("the peer sent more than a handshake before authenticating")]
pub struct OverBudget;

/// Whether `e`, or an error it wraps (through `source()` and `io::Error`s), is [`OverBudget`].
pub fn is_over_budget(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<OverBudget>() {
            return true;
        }
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|i| i as &(dyn std::error::Error + 'static));
        next = inner.or_else(|| err.source());
    }
    false
}

impl<S> Budgeted<S> {
    pub fn new(inner: S, budget: ReadBudget) -> Self {
        Self { inner, budget }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let left = self.budget.0.load(Ordering::Relaxed);
        if left == u64::MAX {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                OverBudget,
            )));
        }
        // Only during the handshake: read into a small buffer of at most the budget, then copy.
        let want = buf
            .remaining()
            .min(usize::try_from(left).unwrap_or(usize::MAX))
            .min(16 * 1024);
        let mut tmp = vec![0u8; want];
        let mut limited = ReadBuf::new(&mut tmp);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        buf.put_slice(limited.filled());
        if n > 0 {
            let _ = self
                .budget
                .0
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    (b != u64::MAX).then(|| b.saturating_sub(n as u64))
                });
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    /// Issue 14: the error was told by its text; it is told by its type, through the layers
    /// that wrap it (an `io::Error`, a WebSocket error), and a same-worded other error is not it.
    #[test]
    fn over_budget_is_found_by_its_type() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, OverBudget);
        assert!(is_over_budget(&io));
        let ws = tokio_tungstenite::tungstenite::Error::Io(io);
        assert!(is_over_budget(&ws));
        let lookalike = std::io::Error::other(OverBudget.to_string());
        assert!(!is_over_budget(&lookalike));
    }

    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn reads_stop_at_the_budget_until_lifted() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let budget = ReadBudget::new(10);
        let mut r = Budgeted::new(b, budget.clone());
        a.write_all(&[7u8; 30]).await.expect("write");
        let mut buf = [0u8; 64];
        let n = r.read(&mut buf).await.expect("first read");
        assert_eq!(n, 10);
        assert!(r.read(&mut buf).await.is_err(), "over budget");
        budget.lift();
        let n = r.read(&mut buf).await.expect("lifted");
        assert_eq!(n, 20);
    }
}
