//! Reconnect backoff: exponential with jitter, a pure function of the failure count.

use std::time::Duration;

/// The delay before the next dial after `failures` consecutive failures (1 = the first).
///
/// `base = min(min * 2^(failures-1), max)`; the delay is drawn in `[base/2, base]` by
/// `jitter` in `[0, 1]` ("equal jitter"), and never below `min`. Why jitter: links to a peer
/// that restarted all lost their connection at the same instant; without it every node would
/// redial in lockstep at every step of the backoff.
pub(crate) fn backoff_delay(failures: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    let base = min.saturating_mul(1u32 << exponent).min(max);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    base.mul_f64(0.5 + 0.5 * jitter).max(min).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn backoff_doubles_from_min_and_caps_at_max() {
        let full: Vec<_> = (1..=8).map(|n| backoff_delay(n, MIN, MAX, 1.0).as_millis()).collect();
        assert_eq!(full, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_delay(0, MIN, MAX, 1.0), MIN, "no failure yet: the minimum");
        assert_eq!(backoff_delay(u32::MAX, MIN, MAX, 1.0), MAX);
    }

    #[test]
    fn jitter_spreads_the_delay_over_the_upper_half() {
        assert_eq!(backoff_delay(4, MIN, MAX, 0.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(4, MIN, MAX, 0.5), Duration::from_millis(600));
        assert_eq!(backoff_delay(4, MIN, MAX, f64::NAN), Duration::from_millis(400));
        assert_eq!(backoff_delay(1, MIN, MAX, 0.0), MIN, "never below the minimum");
    }

    proptest! {
        #[test]
        fn backoff_stays_within_min_and_max(failures in any::<u32>(), jitter in any::<f64>(),
                                            min_ms in 1..1000u64, extra_ms in 0..10_000u64) {
            let min = Duration::from_millis(min_ms);
            let max = Duration::from_millis(min_ms + extra_ms);
            let delay = backoff_delay(failures, min, max, jitter);
            prop_assert!(delay >= min && delay <= max);
        }
    }
}
