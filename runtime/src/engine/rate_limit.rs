//! `spec.pipeline.maxRecordsPerSecond`: a worker-wide limit shared by its
//! loops. Records are spaced evenly; up to 100 ms of unused allowance may be
//! spent at once, so a limit is not undercut by scheduling jitter.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const BURST: Duration = Duration::from_millis(100);

pub struct RateLimit {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimit {
    pub fn new(records_per_second: u64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / records_per_second.max(1) as f64),
            next: Mutex::new(Instant::now()),
        }
    }

    /// How long to wait before the next record may be processed; reserves
    /// its slot.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut next = self.next.lock().unwrap();
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let at = (*next).max(earliest);
        *next = at + self.interval;
        at.saturating_duration_since(now)
    }

    /// Waits for the next record's slot.
    pub fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_records_after_a_small_burst() {
        let limit = RateLimit::new(100);
        let start = Instant::now() + Duration::from_secs(1);
        // 100 ms of allowance: about 10 records pass at once...
        let free = (0..20)
            .take_while(|_| limit.reserve(start).is_zero())
            .count();
        assert!((10..=11).contains(&free), "{free}");
        // ...then each waits its 10 ms.
        let waits: Vec<Duration> = (0..3).map(|_| limit.reserve(start)).collect();
        assert!(waits[1] > waits[0] && waits[2] - waits[1] == Duration::from_millis(10));
    }
}
