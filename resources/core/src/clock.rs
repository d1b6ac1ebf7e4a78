//! The node's clock as kinds and sessions see it: unix seconds now, and a sleep until a unix second. Token expiry
//! is checked and enforced against it, so tests run expiry with a [`ManualClock`] instead of waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::BoxFuture;

/// Wall-clock time in unix seconds, and sleeping until a given second.
pub trait Clock: Send + Sync {
    /// Now, in unix seconds.
    fn now(&self) -> u64;
    /// Resolves once [`Clock::now`] has reached `unix` (at once if it has).
    fn sleep_until(&self, unix: u64) -> BoxFuture<'static, ()>;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// Now in unix seconds from the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        unix_now()
    }

    fn sleep_until(&self, unix: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Re-read the wall clock after each sleep: it may have been stepped while we slept.
            loop {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                let target = Duration::from_secs(unix);
                if now >= target {
                    return;
                }
                tokio::time::sleep((target - now).min(Duration::from_secs(60))).await;
            }
        })
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
    tick: watch::Sender<u64>,
}

impl ManualClock {
    /// A clock standing at `unix`.
    pub fn new(unix: u64) -> ManualClock {
        ManualClock { now: Arc::new(AtomicU64::new(unix)), tick: watch::Sender::new(unix) }
    }

    /// Moves the clock forward by `secs` and wakes the sleepers whose time has come.
    pub fn advance(&self, secs: u64) {
        let t = self.now.fetch_add(secs, Ordering::SeqCst) + secs;
        self.tick.send_replace(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, unix: u64) -> BoxFuture<'static, ()> {
        let mut rx = self.tick.subscribe();
        Box::pin(async move {
            // The sender lives as long as any clone of the clock; if all are gone, time stops and so do we.
            let _ = rx.wait_for(|&t| t >= unix).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced_past_their_time() {
        let c = ManualClock::new(100);
        let sleeper = tokio::spawn(c.sleep_until(160));
        tokio::task::yield_now().await;
        c.advance(30);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        c.advance(30);
        tokio::time::timeout(Duration::from_secs(2), sleeper).await.unwrap().unwrap();
        assert_eq!(c.now(), 160);
        // A time already past resolves at once.
        tokio::time::timeout(Duration::from_millis(100), c.sleep_until(10)).await.unwrap();
    }

    #[tokio::test]
    async fn system_clock_sleeps_until_a_past_second_at_once() {
        let c = SystemClock;
        assert!(c.now() > 1_700_000_000);
        tokio::time::timeout(Duration::from_millis(100), c.sleep_until(c.now() - 1)).await.unwrap();
    }
}
