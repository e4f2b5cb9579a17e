//! Throttling of guessing: bad API tokens and bad registration codes or agent credentials, per
//! source address. Only a credential that was presented and is wrong counts (a request without
//! one guesses nothing). After `LIMIT` failures within `WINDOW`, the source is blocked for
//! `BLOCK` (doubling with each further block, up to `MAX_BLOCK`): its wrong credentials are
//! answered "throttled" and no longer counted, and it may not register; a valid token or agent
//! key from it is still served, so that one guesser behind a NAT does not lock out the operators
//! and agents sharing its address (the secrets' 128+ bits, not the block, are what defeat
//! guessing). Memory is bounded: at most `MAX_SOURCES` addresses are tracked; the stalest are
//! forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Failures allowed within [`WINDOW`].
pub const LIMIT: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const BLOCK: Duration = Duration::from_secs(60);
pub const MAX_BLOCK: Duration = Duration::from_secs(3600);
pub const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Source {
    failures: u32,
    since: Instant,
    blocked_until: Option<Instant>,
    blocks: u32,
    seen: Instant,
}

/// Failure counts per source address.
#[derive(Debug, Default)]
pub struct Throttle {
    sources: Mutex<HashMap<IpAddr, Source>>,
}

impl Throttle {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(retry_after)` while `ip` is blocked.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = source(ip);
        let now = Instant::now();
        let Ok(map) = self.sources.lock() else {
            return Ok(());
        };
        match map.get(&ip).and_then(|s| s.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt from `ip`; returns `true` when this one started a block.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let ip = source(ip);
        let now = Instant::now();
        let Ok(mut map) = self.sources.lock() else {
            return false;
        };
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            let stalest = map.iter().min_by_key(|(_, s)| s.seen).map(|(ip, _)| *ip);
            if let Some(old) = stalest {
                map.remove(&old);
            }
        }
        let s = map.entry(ip).or_insert(Source {
            failures: 0,
            since: now,
            blocked_until: None,
            blocks: 0,
            seen: now,
        });
        s.seen = now;
        if now.duration_since(s.since) > WINDOW {
            s.failures = 0;
            s.since = now;
        }
        s.failures += 1;
        if s.failures >= LIMIT && s.blocked_until.is_none_or(|u| u <= now) {
            let block = BLOCK.saturating_mul(1 << s.blocks.min(10)).min(MAX_BLOCK);
            s.blocked_until = Some(now + block);
            s.blocks += 1;
            s.failures = 0;
            s.since = now;
            tracing::warn!(%ip, block_secs = block.as_secs(), "too many failed attempts: source blocked");
            return true;
        }
        false
    }
}

/// The unit of throttling: an IPv4 address, or an IPv6 /64 (one subscriber's prefix; counting
/// single IPv6 addresses would give a guesser 2^64 fresh sources).
pub(crate) fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ten_failures_block_for_a_minute_then_twice_as_long() {
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        for _ in 0..9 {
            assert!(!t.failed(ip));
        }
        assert!(t.check(ip).is_ok());
        assert!(t.failed(ip));
        assert!(t.check(ip).is_err());
        assert!(
            t.check(other).is_ok(),
            "only the guessing source is blocked"
        );
        tokio::time::sleep(BLOCK + Duration::from_secs(1)).await;
        assert!(t.check(ip).is_ok());
        for _ in 0..10 {
            t.failed(ip);
        }
        let wait = t.check(ip).expect_err("blocked again");
        assert!(wait > BLOCK, "second block is longer: {wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_prefix_counts_as_one_source() {
        let t = Throttle::new();
        for i in 0..10u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().expect("ip");
            t.failed(ip);
        }
        let other_in_prefix: IpAddr = "2001:db8:1:2:ffff::1".parse().expect("ip");
        assert!(t.check(other_in_prefix).is_err());
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(t.check(elsewhere).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_out_do_not_block() {
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        for _ in 0..30 {
            assert!(!t.failed(ip));
            tokio::time::sleep(Duration::from_secs(7)).await;
        }
        assert!(t.check(ip).is_ok());
    }
}
