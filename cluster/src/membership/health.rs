//! Local health (the idea of Lifeguard, Dadgar et al. 2018): a node whose own timers fire late
//! is probably starved (saturated CPU, long GC-like pauses, a stopped process), so its missed
//! acks say more about itself than about its peers. It then stretches its suspicion timeout
//! instead of declaring healthy peers down.
//!
//! Role: pure math, no clock. The membership driver measures how late a periodic tick fires
//! (scheduled versus actual) and feeds the lateness to [`LocalHealth::observe`]; it multiplies the
//! suspect-to-down timeout by the factor (at runtime, through foca's `set_config` and by deferring
//! already-armed suspicion timers); the actor exports it as `cohort_gossip_local_health_factor`.
//!
//! Invariants: the factor is always finite and within `[1, MAX_HEALTH_FACTOR]`; it rises at once
//! when a tick is late (a starved node must stop accusing immediately) and decays slowly
//! (a node that just recovered is likely to stall again).

use std::time::Duration;

/// How often the driver measures its own lateness (how late the shell calls its timeout).
///
/// Why: short enough that a stall of a few hundred milliseconds is seen within one probe period
/// (600 ms by default), long enough to cost nothing (10 wake-ups per second).
pub(crate) const HEALTH_TICK: Duration = Duration::from_millis(100);

/// The largest factor: suspicion can be stretched at most 8x (1.2 s becomes 9.6 s).
///
/// Why: Lifeguard's own cap (its awareness counter stops at 8); beyond it a starved node would
/// keep a genuinely dead peer `suspect` for too long.
pub(crate) const MAX_HEALTH_FACTOR: f64 = 8.0;

/// Lateness that counts as healthy: tokio timers have millisecond granularity and a busy but
/// healthy runtime wakes a task a few milliseconds late.
pub(crate) const LATENESS_GRACE: Duration = Duration::from_millis(20);

/// Each this much lateness beyond the grace adds 1 to the target factor.
///
/// Why: 100 ms late is already an eighth of a probe period; a node that late is likely to miss
/// acks it actually received.
pub(crate) const LATENESS_PER_STEP: Duration = Duration::from_millis(100);

/// The fraction of the gap to the target closed per on-time tick while recovering.
///
/// Why: at one tick per [`HEALTH_TICK`] this is a time constant of about 2 s (20 ticks), so the
/// factor stays up across the next probe cycles after a stall.
pub(crate) const DECAY_PER_TICK: f64 = 0.05;

/// The factor a single lateness sample asks for: 1 up to the grace, then +1 per step, capped.
pub(crate) fn target_factor(lateness: Duration) -> f64 {
    let excess = lateness.saturating_sub(LATENESS_GRACE);
    let steps = excess.as_secs_f64() / LATENESS_PER_STEP.as_secs_f64();
    clamp_factor(1.0 + steps)
}

/// `current` moved towards `target`: all the way when rising, by [`DECAY_PER_TICK`] when falling.
pub(crate) fn smooth(current: f64, target: f64) -> f64 {
    let current = clamp_factor(current);
    let target = clamp_factor(target);
    if target >= current { target } else { clamp_factor(current + (target - current) * DECAY_PER_TICK) }
}

/// `factor` forced into `[1, MAX_HEALTH_FACTOR]`; NaN counts as 1 (healthy).
pub(crate) fn clamp_factor(factor: f64) -> f64 {
    if factor.is_nan() { 1.0 } else { factor.clamp(1.0, MAX_HEALTH_FACTOR) }
}

/// `base` stretched by `factor` (clamped first, so the result is at most 8x `base`).
pub(crate) fn stretch(base: Duration, factor: f64) -> Duration {
    base.mul_f64(clamp_factor(factor))
}

/// The smoothed local health factor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalHealth {
    factor: f64,
}

impl Default for LocalHealth {
    fn default() -> Self {
        Self { factor: 1.0 }
    }
}

impl LocalHealth {
    /// The current factor, in `[1, MAX_HEALTH_FACTOR]`.
    pub(crate) fn factor(&self) -> f64 {
        self.factor
    }

    /// Feeds one lateness sample; returns the new factor.
    pub(crate) fn observe(&mut self, lateness: Duration) -> f64 {
        self.factor = smooth(self.factor, target_factor(lateness));
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn on_time_ticks_keep_the_factor_at_one() {
        let mut health = LocalHealth::default();
        for ms in [0, 1, 5, 20] {
            assert_eq!(health.observe(Duration::from_millis(ms)), 1.0);
        }
    }

    #[test]
    fn a_late_tick_raises_the_factor_at_once_and_it_decays_slowly() {
        let mut health = LocalHealth::default();
        let raised = health.observe(Duration::from_millis(320));
        assert!((raised - 4.0).abs() < 1e-9, "{raised}");
        let after_one = health.observe(Duration::ZERO);
        assert!(after_one < raised && after_one > 3.8, "{after_one}");
        for _ in 0..200 {
            health.observe(Duration::ZERO);
        }
        assert!(health.factor() < 1.01, "{}", health.factor());
    }

    #[test]
    fn factor_is_capped_and_stretch_is_bounded() {
        assert_eq!(target_factor(Duration::from_secs(3600)), MAX_HEALTH_FACTOR);
        assert_eq!(target_factor(Duration::MAX), MAX_HEALTH_FACTOR);
        assert_eq!(stretch(Duration::from_secs(2), 100.0), Duration::from_secs(16));
        assert_eq!(stretch(Duration::from_secs(2), f64::NAN), Duration::from_secs(2));
        assert_eq!(stretch(Duration::from_secs(2), 0.1), Duration::from_secs(2));
    }

    proptest! {
        #[test]
        fn factor_stays_within_bounds_for_any_samples(samples in proptest::collection::vec(0u64..10_000_000, 1..100)) {
            let mut health = LocalHealth::default();
            let mut previous = health.factor();
            for micros in samples {
                let lateness = Duration::from_micros(micros);
                let factor = health.observe(lateness);
                prop_assert!((1.0..=MAX_HEALTH_FACTOR).contains(&factor));
                // Never below what this sample asks for, never above the larger of the two.
                prop_assert!(factor >= target_factor(lateness) - 1e-12);
                prop_assert!(factor <= previous.max(target_factor(lateness)) + 1e-12);
                previous = factor;
            }
        }

        #[test]
        fn smooth_is_total(current in any::<f64>(), target in any::<f64>()) {
            let out = smooth(current, target);
            prop_assert!(out.is_finite() && (1.0..=MAX_HEALTH_FACTOR).contains(&out));
        }
    }
}
