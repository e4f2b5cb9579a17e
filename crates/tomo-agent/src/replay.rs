//! Replay protection: every request carries a nonce and its signing time; a request is accepted
//! once, within a window of 5 minutes in the past and 30 s in the future.
//!
//! Memory is bounded: at most `capacity` nonces are remembered. When a new one would exceed it, the
//! oldest is forgotten and the *low-water mark* rises to its time: from then on every request
//! signed at or before that time is refused as stale. So a forgotten nonce can never be replayed —
//! under heavy load the effective window shrinks instead. Accepted nonces are appended to
//! `<data>/nonces.log` before the request runs, and reloaded at start, so a replay after an agent
//! restart still fails. (The log is not fsynced per request: a power loss can forget the last
//! few; a process crash or restart cannot.)

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// How far in the past a request may have been signed.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;
/// How far in the future (clock skew) a request may claim to be signed.
pub const FUTURE_SKEW_MS: i64 = 30 * 1000;
/// Nonces remembered at most.
pub const CAPACITY: usize = 10_000;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Signed too long ago, too far in the future, or at or before the low-water mark.
    Stale,
    /// This nonce was used already.
    Replay,
    /// The nonce could not be recorded (disk full…): refused, so that a replay after a restart
    /// cannot slip through.
    Unrecorded,
}

/// The nonces of the current window.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashMap<String, i64>,
    by_time: BTreeSet<(i64, String)>,
    low_water: i64,
    capacity: usize,
    log_path: Option<PathBuf>,
    log: Option<std::fs::File>,
    log_lines: usize,
}

impl ReplayGuard {
    /// A guard that only remembers in memory (tests).
    pub fn in_memory(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            by_time: BTreeSet::new(),
            low_water: i64::MIN,
            capacity,
            log_path: None,
            log: None,
            log_lines: 0,
        }
    }

    /// A guard persisted in `<dir>/nonces.log`, reloading what is still inside the window.
    pub fn open(dir: &Path, capacity: usize, now_ms: i64) -> std::io::Result<Self> {
        let path = dir.join("nonces.log");
        let mut g = Self::in_memory(capacity);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    let mut f = line.split(' ');
                    match (f.next(), f.next()) {
                        (Some("low"), Some(t)) => {
                            if let Ok(t) = t.parse() {
                                g.low_water = g.low_water.max(t);
                            }
                        }
                        (Some(t), Some(n)) => {
                            if let Ok(t) = t.parse::<i64>() {
                                if t >= now_ms - WINDOW_MS {
                                    g.remember(n.to_owned(), t);
                                } else {
                                    // Forgotten, so never acceptable again (a clock stepping
                                    // back must not revive it).
                                    g.low_water = g.low_water.max(t);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        g.log_path = Some(path);
        g.rewrite_log()?;
        Ok(g)
    }

    /// Admits `nonce` signed at `ts_ms`, or says why not. Admitted nonces are logged first.
    pub fn check(&mut self, nonce: &str, ts_ms: i64, now_ms: i64) -> Result<(), Refusal> {
        if ts_ms < now_ms - WINDOW_MS || ts_ms > now_ms + FUTURE_SKEW_MS || ts_ms <= self.low_water
        {
            return Err(Refusal::Stale);
        }
        if self.seen.contains_key(nonce) {
            return Err(Refusal::Replay);
        }
        self.expire(now_ms);
        if !self.append(&format!("{ts_ms} {nonce}\n")) {
            return Err(Refusal::Unrecorded);
        }
        self.remember(nonce.to_owned(), ts_ms);
        Ok(())
    }

    /// Requests signed at or before this time are refused (`i64::MIN` when none).
    pub fn low_water(&self) -> i64 {
        self.low_water
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn remember(&mut self, nonce: String, ts: i64) {
        if self.seen.insert(nonce.clone(), ts).is_none() {
            self.by_time.insert((ts, nonce));
        }
        while self.seen.len() > self.capacity {
            let Some((t, n)) = self.by_time.pop_first() else {
                break;
            };
            self.seen.remove(&n);
            if t > self.low_water {
                self.low_water = t;
                let _ = self.append(&format!("low {t}\n"));
            }
        }
    }

    /// Forgets nonces that left the window. The low-water mark rises to the newest forgotten
    /// one, so that they stay refused even if the clock steps back.
    fn expire(&mut self, now_ms: i64) {
        let oldest = now_ms - WINDOW_MS;
        let mut forgotten = None;
        while let Some((t, _)) = self.by_time.first()
            && *t < oldest
        {
            if let Some((t, n)) = self.by_time.pop_first() {
                self.seen.remove(&n);
                forgotten = Some(t);
            }
        }
        if let Some(t) = forgotten
            && t > self.low_water
        {
            self.low_water = t;
            self.append(&format!("low {t}\n"));
        }
    }

    /// Appends to the log; `false` when it could not be written.
    fn append(&mut self, line: &str) -> bool {
        let Some(file) = self.log.as_mut() else {
            return true;
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot record a nonce: refusing requests until it works again");
            return false;
        }
        self.log_lines += 1;
        if self.log_lines > 2 * self.capacity + 16
            && let Err(e) = self.rewrite_log()
        {
            tracing::warn!(error = %e, "cannot compact the nonce log");
        }
        true
    }

    /// Replaces the log by the current state, atomically.
    fn rewrite_log(&mut self) -> std::io::Result<()> {
        let Some(path) = self.log_path.clone() else {
            return Ok(());
        };
        let mut text = String::new();
        if self.low_water > i64::MIN {
            text.push_str(&format!("low {}\n", self.low_water));
        }
        for (t, n) in &self.by_time {
            text.push_str(&format!("{t} {n}\n"));
        }
        tomo_common::fs::write_private(&path, text.as_bytes())?;
        self.log = Some(std::fs::OpenOptions::new().append(true).open(&path)?);
        self.log_lines = self.by_time.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn window_and_replay() {
        let mut g = ReplayGuard::in_memory(100);
        assert_eq!(g.check("a", NOW, NOW), Ok(()));
        assert_eq!(g.check("a", NOW, NOW), Err(Refusal::Replay));
        assert_eq!(g.check("b", NOW - WINDOW_MS - 1, NOW), Err(Refusal::Stale));
        assert_eq!(
            g.check("c", NOW + FUTURE_SKEW_MS + 1, NOW),
            Err(Refusal::Stale)
        );
        assert_eq!(g.check("d", NOW - WINDOW_MS + 1, NOW), Ok(()));
        assert_eq!(g.check("e", NOW + FUTURE_SKEW_MS, NOW), Ok(()));
    }

    #[test]
    fn a_full_memory_raises_the_low_water_mark_instead_of_forgetting_silently() {
        let mut g = ReplayGuard::in_memory(3);
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            assert_eq!(g.check(n, NOW + i as i64, NOW), Ok(()));
        }
        assert_eq!(g.len(), 3);
        assert_eq!(g.low_water(), NOW);
        // "a" was forgotten, but it cannot come back: its time is at the low-water mark.
        assert_eq!(g.check("a", NOW, NOW), Err(Refusal::Stale));
        assert_eq!(g.check("b", NOW + 1, NOW), Err(Refusal::Replay));
    }

    #[test]
    fn replays_fail_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut g = ReplayGuard::open(dir.path(), 2, NOW).expect("open");
            assert_eq!(g.check("n1", NOW, NOW), Ok(()));
            assert_eq!(g.check("n2", NOW + 1, NOW), Ok(()));
            assert_eq!(g.check("n3", NOW + 2, NOW), Ok(()));
        }
        let mut g = ReplayGuard::open(dir.path(), 2, NOW + 10).expect("reopen");
        assert_eq!(g.check("n3", NOW + 2, NOW + 10), Err(Refusal::Replay));
        assert_eq!(g.check("n2", NOW + 1, NOW + 10), Err(Refusal::Replay));
        assert_eq!(g.check("n1", NOW, NOW + 10), Err(Refusal::Stale));
        assert_eq!(g.check("n4", NOW + 5, NOW + 10), Ok(()));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("nonces.log"))
            .expect("log")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn forgotten_nonces_stay_refused_when_the_clock_steps_back() {
        let mut g = ReplayGuard::in_memory(100);
        assert_eq!(g.check("a", NOW, NOW), Ok(()));
        // Six minutes later "a" is forgotten…
        let later = NOW + WINDOW_MS + 60_000;
        assert_eq!(g.check("b", later, later), Ok(()));
        // …and the clock steps back to where "a" would be fresh again: still refused.
        assert_eq!(g.check("a", NOW, NOW + 1000), Err(Refusal::Stale));
    }

    #[test]
    fn an_unwritable_log_refuses_instead_of_forgetting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = ReplayGuard::open(dir.path(), 100, NOW).expect("open");
        // The log's file handle is read-only now: writes fail.
        g.log = Some(std::fs::File::open(dir.path().join("nonces.log")).expect("ro"));
        assert_eq!(g.check("x", NOW, NOW), Err(Refusal::Unrecorded));
        assert_eq!(
            g.check("x", NOW, NOW),
            Err(Refusal::Unrecorded),
            "not remembered either"
        );
    }

    #[test]
    fn the_log_is_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = ReplayGuard::open(dir.path(), 4, NOW).expect("open");
        for i in 0..200 {
            assert_eq!(g.check(&format!("n{i}"), NOW + i, NOW), Ok(()));
        }
        let lines = std::fs::read_to_string(dir.path().join("nonces.log"))
            .expect("log")
            .lines()
            .count();
        assert!(lines <= 2 * 4 + 16 + 2, "{lines} lines");
        let mut again = ReplayGuard::open(dir.path(), 4, NOW).expect("reopen");
        assert_eq!(again.check("n199", NOW + 199, NOW), Err(Refusal::Replay));
        assert_eq!(again.check("n150", NOW + 150, NOW), Err(Refusal::Stale));
    }
}
