//! Health checks behind `/livez` and readiness gates behind `/readyz`.
//!
//! Subsystems register **activity-based** checks: a check does not ask "is the actor alive?" (a
//! stuck actor is alive) but "has it made progress recently?". The usual shape is an [`Activity`]:
//! the subsystem calls [`Activity::beat`] each time its loop turns, and the check fails once no beat
//! came for longer than its allowed silence. Each check has a **boot grace**: while the node is
//! younger than the grace, a failing check is reported ok (with a detail saying so), so a node that
//! is still joining is not restarted by its orchestrator.
//!
//! Readiness is separate: a [`ReadinessGate`] is opened once by its subsystem (joined the cluster,
//! finished start-up) and `/readyz` answers 200 only when every gate is open.
//!
//! Invariants: at most [`MAX_HEALTH_CHECKS`] checks and [`MAX_READINESS_GATES`] gates per node (a
//! registration beyond that is refused with [`HealthError::TooMany`]); names are unique; evaluating
//! checks never blocks on a subsystem (checks read atomics, never mailboxes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Most health checks one node holds. Checks are per subsystem, not per peer or per process.
pub const MAX_HEALTH_CHECKS: usize = 64;
/// Most readiness gates one node holds.
pub const MAX_READINESS_GATES: usize = 64;

/// Why a check or gate could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// The per-node limit is reached.
    #[error("too many registrations (limit {0})")]
    TooMany(usize),
    /// The name is taken.
    #[error("`{0}` is already registered")]
    Duplicate(String),
}

/// The outcome of one check at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Check name.
    pub name: String,
    /// Whether it passes (boot grace included).
    pub ok: bool,
    /// A human-readable explanation.
    pub detail: String,
}

/// What a check function returns: pass or fail, with a detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Passes?
    pub ok: bool,
    /// Why.
    pub detail: String,
}

type CheckFn = Box<dyn Fn(Instant) -> CheckResult + Send + Sync>;

struct Check {
    name: String,
    boot_grace: Duration,
    run: CheckFn,
}

struct Gate {
    name: String,
    open: Arc<AtomicBool>,
}

/// A node's health registry. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    boot: Instant,
    checks: RwLock<Vec<Check>>,
    gates: RwLock<Vec<Gate>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Health {
    /// A registry for a node that booted at `boot`.
    pub fn new(boot: Instant) -> Self {
        Self { inner: Arc::new(Inner { boot, checks: RwLock::new(Vec::new()), gates: RwLock::new(Vec::new()) }) }
    }

    /// When the node booted.
    pub fn boot(&self) -> Instant {
        self.inner.boot
    }

    /// Register a check function. It is called with the evaluation time and must not block.
    pub fn register(
        &self,
        name: impl Into<String>,
        boot_grace: Duration,
        check: impl Fn(Instant) -> CheckResult + Send + Sync + 'static,
    ) -> Result<(), HealthError> {
        let name = name.into();
        let mut checks = self.inner.checks.write().unwrap_or_else(|p| p.into_inner());
        if checks.len() >= MAX_HEALTH_CHECKS {
            return Err(HealthError::TooMany(MAX_HEALTH_CHECKS));
        }
        if checks.iter().any(|c| c.name == name) {
            return Err(HealthError::Duplicate(name));
        }
        checks.push(Check { name, boot_grace, run: Box::new(check) });
        Ok(())
    }

    /// Register an activity check: it fails when [`Activity::beat`] has not been called for longer
    /// than `max_silence`.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use cohort::health::Health;
    /// let boot = Instant::now();
    /// let health = Health::new(boot);
    /// let activity = health.register_activity("loop", Duration::from_secs(1), Duration::ZERO).unwrap();
    /// activity.beat();
    /// assert!(health.livez_at(boot).ok);
    /// assert!(!health.livez_at(Instant::now() + Duration::from_secs(5)).ok);
    /// ```
    pub fn register_activity(
        &self,
        name: impl Into<String>,
        max_silence: Duration,
        boot_grace: Duration,
    ) -> Result<Activity, HealthError> {
        let activity = Activity { boot: self.inner.boot, last_ms: Arc::new(AtomicU64::new(0)) };
        let probe = activity.clone();
        self.register(name, boot_grace, move |now| {
            let silent = probe.silent_for(now);
            if silent <= max_silence {
                CheckResult { ok: true, detail: format!("last activity {} ms ago", silent.as_millis()) }
            } else {
                CheckResult {
                    ok: false,
                    detail: format!(
                        "no activity for {} ms (allowed {} ms)",
                        silent.as_millis(),
                        max_silence.as_millis()
                    ),
                }
            }
        })?;
        Ok(activity)
    }

    /// Register a readiness gate, closed until its subsystem opens it.
    pub fn register_gate(&self, name: impl Into<String>) -> Result<ReadinessGate, HealthError> {
        let name = name.into();
        let mut gates = self.inner.gates.write().unwrap_or_else(|p| p.into_inner());
        if gates.len() >= MAX_READINESS_GATES {
            return Err(HealthError::TooMany(MAX_READINESS_GATES));
        }
        if gates.iter().any(|g| g.name == name) {
            return Err(HealthError::Duplicate(name));
        }
        let open = Arc::new(AtomicBool::new(false));
        gates.push(Gate { name, open: open.clone() });
        Ok(ReadinessGate { open })
    }

    /// Evaluate every check now.
    pub fn livez(&self) -> HealthReport {
        self.livez_at(Instant::now())
    }

    /// Evaluate every check as of `now` (deterministic tests pass their own clock).
    pub fn livez_at(&self, now: Instant) -> HealthReport {
        let age = now.saturating_duration_since(self.inner.boot);
        let checks = self.inner.checks.read().unwrap_or_else(|p| p.into_inner());
        let reports: Vec<CheckReport> = checks
            .iter()
            .map(|c| {
                let r = (c.run)(now);
                if !r.ok && age < c.boot_grace {
                    CheckReport {
                        name: c.name.clone(),
                        ok: true,
                        detail: format!("in boot grace ({} ms left): {}", (c.boot_grace - age).as_millis(), r.detail),
                    }
                } else {
                    CheckReport { name: c.name.clone(), ok: r.ok, detail: r.detail }
                }
            })
            .collect();
        HealthReport { ok: reports.iter().all(|r| r.ok), checks: reports }
    }

    /// The state of every readiness gate.
    pub fn readyz(&self) -> HealthReport {
        let gates = self.inner.gates.read().unwrap_or_else(|p| p.into_inner());
        let reports: Vec<CheckReport> = gates
            .iter()
            .map(|g| {
                let open = g.open.load(Ordering::Acquire);
                CheckReport {
                    name: g.name.clone(),
                    ok: open,
                    detail: if open { "ready".into() } else { "not ready yet".into() },
                }
            })
            .collect();
        HealthReport { ok: !reports.is_empty() && reports.iter().all(|r| r.ok), checks: reports }
    }
}

/// The aggregate of several checks or gates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Every entry passes.
    pub ok: bool,
    /// One entry per check or gate.
    pub checks: Vec<CheckReport>,
}

/// A progress marker owned by a subsystem. Cheap to clone; `beat` is one atomic store.
#[derive(Clone, Debug)]
pub struct Activity {
    boot: Instant,
    /// Milliseconds since boot of the last beat, plus one (0 = never beat).
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// Record progress now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// Record progress at `now`.
    pub fn beat_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.boot).as_millis() as u64 + 1;
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// How long since the last beat as of `now` (since boot if it never beat).
    pub fn silent_for(&self, now: Instant) -> Duration {
        let last = self.last_ms.load(Ordering::Acquire).saturating_sub(1);
        let now_ms = now.saturating_duration_since(self.boot).as_millis() as u64;
        Duration::from_millis(now_ms.saturating_sub(last))
    }
}

/// A readiness gate owned by a subsystem.
#[derive(Clone, Debug)]
pub struct ReadinessGate {
    open: Arc<AtomicBool>,
}

impl ReadinessGate {
    /// Mark the subsystem ready (or not ready again, e.g. after losing the cluster).
    pub fn set(&self, ready: bool) {
        self.open.store(ready, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_activity_fails_after_boot_grace_only() {
        let boot = Instant::now();
        let h = Health::new(boot);
        let a = h.register_activity("loop", Duration::from_secs(1), Duration::from_secs(10)).unwrap();
        // Never beat, 5 s after boot: inside the grace, reported ok with a detail.
        let r = h.livez_at(boot + Duration::from_secs(5));
        assert!(r.ok);
        assert!(r.checks[0].detail.contains("boot grace"));
        // 20 s after boot, still silent: failing.
        let r = h.livez_at(boot + Duration::from_secs(20));
        assert!(!r.ok);
        // A beat brings it back.
        a.beat_at(boot + Duration::from_secs(20));
        assert!(h.livez_at(boot + Duration::from_millis(20_500)).ok);
    }

    #[test]
    fn duplicate_and_excess_registrations_are_refused() {
        let h = Health::default();
        h.register("x", Duration::ZERO, |_| CheckResult { ok: true, detail: String::new() }).unwrap();
        assert_eq!(
            h.register("x", Duration::ZERO, |_| CheckResult { ok: true, detail: String::new() }),
            Err(HealthError::Duplicate("x".into()))
        );
        for i in 1..MAX_HEALTH_CHECKS {
            h.register(format!("c{i}"), Duration::ZERO, |_| CheckResult { ok: true, detail: String::new() }).unwrap();
        }
        assert_eq!(
            h.register("one-too-many", Duration::ZERO, |_| CheckResult { ok: true, detail: String::new() }),
            Err(HealthError::TooMany(MAX_HEALTH_CHECKS))
        );
    }

    #[test]
    fn readyz_needs_every_gate_open() {
        let h = Health::default();
        assert!(!h.readyz().ok, "no gate at all is not ready");
        let a = h.register_gate("a").unwrap();
        let b = h.register_gate("b").unwrap();
        a.set(true);
        assert!(!h.readyz().ok);
        b.set(true);
        assert!(h.readyz().ok);
        b.set(false);
        assert!(!h.readyz().ok);
    }
}
