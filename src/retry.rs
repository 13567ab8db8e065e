//! Retrying what waits on something outside (Consul, bootstraps): exponential backoff with
//! a cap and jitter, measured on the monotonic clock (a device without an RTC may boot in
//! 1970; retries must not care). Restarting tasks is Nomad's restart and reschedule policy,
//! which `alloc` follows instead; it takes its jitter from here (`Jitter`).

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Each later delay is the previous one times this (1 = constant).
    pub factor: u32,
    /// No delay is longer than this (before jitter).
    pub max: Duration,
    /// Up to this much is added at random, so many retries do not move in lockstep.
    pub jitter: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1 = after the first failure), with
    /// `random` in 0..1 choosing the jitter.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let growth = self.factor.saturating_pow(attempt.saturating_sub(1));
        let delay = self.base.saturating_mul(growth).min(self.max);
        delay + self.jitter.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// `d` in seconds with one decimal ("2.5s"), without float formatting (which would add
/// several KiB of code to the device's binary for a log line).
pub fn secs(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    format!("{}.{}s", tenths / 10, tenths % 10)
}

/// A small xorshift generator for jitter; seeded from the clock, good enough to spread
/// retries, not for anything secret.
pub struct Jitter(u64);

impl Jitter {
    pub fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            ^ u64::from(std::process::id()) << 32;
        Jitter(seed | 1)
    }

    pub fn sample(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::new()
    }
}

/// The outcome of `retry_until`: the last error and how long was spent.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub last: E,
    pub waited: Duration,
    pub attempts: u32,
}

/// Calls `attempt` until it returns `Ok`, `retryable` says no, or `budget` is spent.
/// Sleeps between attempts by `backoff`; never sleeps past the budget. Each retry is logged
/// with `what` failed, why and the next delay: at info when the error is new (the first, or
/// a different one), at debug when it repeats.
pub fn retry_until<T, E: std::fmt::Display>(
    what: &str,
    budget: Duration,
    backoff: Backoff,
    mut attempt: impl FnMut() -> Result<T, E>,
    retryable: impl Fn(&E) -> bool,
) -> Result<T, GaveUp<E>> {
    let start = Instant::now();
    let mut jitter = Jitter::new();
    let mut n = 0;
    let mut previous = String::new();
    loop {
        n += 1;
        let last = match attempt() {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let spent = start.elapsed();
        if !retryable(&last) || spent >= budget {
            return Err(GaveUp {
                last,
                waited: spent,
                attempts: n,
            });
        }
        let delay = backoff.delay(n, jitter.sample()).min(budget - spent);
        let error = last.to_string();
        if error == previous {
            log::debug!("{what}: {error}; attempt {n}, retrying in {}", secs(delay));
        } else {
            log::info!("{what}: {error}; retrying in {}", secs(delay));
            previous = error;
        }
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_cap_and_jitter() {
        let b = Backoff {
            base: Duration::from_secs(1),
            factor: 2,
            max: Duration::from_secs(5),
            jitter: Duration::from_millis(500),
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(b.delay(4, 0.0), Duration::from_secs(5));
        assert_eq!(b.delay(40, 1.0), Duration::from_millis(5500));
        let constant = Backoff { factor: 1, ..b };
        assert_eq!(constant.delay(7, 0.0), Duration::from_secs(1));
        assert_eq!(secs(Duration::from_millis(2449)), "2.4s");
        assert_eq!(secs(Duration::from_millis(2450)), "2.5s");
        assert_eq!(secs(Duration::ZERO), "0.0s");
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let x = j.sample();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn stops_on_success_on_final_errors_and_at_the_budget() {
        let quick = Backoff {
            base: Duration::from_millis(1),
            factor: 2,
            max: Duration::from_millis(4),
            jitter: Duration::ZERO,
        };
        let mut calls = 0;
        let r: Result<u32, GaveUp<&str>> = retry_until(
            "test",
            Duration::from_secs(5),
            quick,
            || {
                calls += 1;
                if calls < 3 { Err("again") } else { Ok(calls) }
            },
            |_| true,
        );
        assert_eq!(r.unwrap(), 3);

        let r: Result<(), GaveUp<&str>> = retry_until(
            "test",
            Duration::from_secs(5),
            quick,
            || Err("final"),
            |_| false,
        );
        assert_eq!(r.unwrap_err().attempts, 1);

        let r: Result<(), GaveUp<&str>> = retry_until(
            "test",
            Duration::from_millis(30),
            quick,
            || Err("down"),
            |_| true,
        );
        let gave_up = r.unwrap_err();
        assert!(gave_up.attempts > 1 && gave_up.waited >= Duration::from_millis(30));
    }
}
