//! # supervisor: OTP-style supervision of the node's own subsystems (SPEC 6.1)
//!
//! The node's subsystems (membership, transport, each pg scope, each registry tier, raft, HTTP) run
//! as tokio tasks under a [`Supervisor`]: an ordered list of [`ChildSpec`]s, a [`Strategy`]
//! (`one_for_one` or `rest_for_one`) and a [`RestartIntensity`], with Erlang/OTP's meanings.
//!
//! - A child is a factory that returns the child's whole life as a future. It exits *normally* when
//!   the future returns `Ok(())`, *abnormally* when it returns `Err`, panics, or is cancelled by
//!   something other than its supervisor. [`Restart`] decides whether an exit is restarted:
//!   `Permanent` always, `Transient` only after an abnormal exit, `Temporary` never.
//! - `one_for_one` restarts only the child that exited; `rest_for_one` first stops every running
//!   child started after it (last first), then starts it and them again, in start order.
//! - Every restart decision is one restart for the intensity (as in OTP, a `rest_for_one` group is
//!   one restart). More than `max_restarts` restarts within `within` and the supervisor gives up:
//!   it stops every child (last first) and ends [`SupervisorStatus::Escalated`], which the node
//!   reads to fail `/livez`, or which a parent supervisor sees as a failure of this supervisor
//!   when it runs as a child ([`SupervisorSpec::into_child_spec`]).
//! - Stopping a child sends its [`StopSignal`], waits up to the child's shutdown grace, then aborts
//!   its task; [`Supervisor::shutdown`] stops children in reverse start order, so its time is
//!   bounded by [`SupervisorSpec::shutdown_bound`].
//!
//! ## The restart contract: re-synchronisation happens in the child's startup path
//!
//! A restart calls the child's factory again, with a fresh [`StopSignal`], and runs the new future
//! from its top; nothing of the previous incarnation's future survives. So a subsystem whose state
//! mirrors other nodes re-synchronises at the start of its future, every time: a pg scope sends
//! `Discover` to its peers and applies the full state they answer, a registry tier pulls its
//! digests, the membership actor rejoins its seeds. State that must outlive an incarnation lives in
//! what the factory captured (`Arc`s owned by the node), and a new incarnation must treat it as
//! possibly half-updated by the one that crashed. `rest_for_one` is the strategy for a child whose
//! later siblings depend on it (the transport, then the scopes that send through it): they are
//! restarted too, and so re-synchronise through the new transport.
//!
//! Invariants: the restart-intensity core ([`RestartTracker`]) is pure, reads no clock and holds at
//! most `max_restarts + 1` instants; a supervisor has at most [`MAX_CHILDREN`] children with
//! distinct names; one control task per supervisor owns every child task (in a `JoinSet`, so a
//! panic is caught as `JoinError::is_panic` and dropping the supervisor aborts them), and it is the
//! only writer of the status; every wait on a child is bounded by its grace plus [`ABORT_WAIT`];
//! metric labels are the static supervisor and child names from code.
//!
//! ```
//! use cohort_actors::supervisor::{
//!     ChildSpec, Restart, StopSignal, Strategy, Supervisor, SupervisorMetrics, SupervisorSpec, SupervisorStatus,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let metrics = SupervisorMetrics::register(&prometheus::Registry::new()).unwrap();
//! let idle = |stop: StopSignal| async move {
//!     // Startup (and re-synchronisation after a restart) goes here, then the main loop.
//!     stop.wait().await;
//!     Ok(())
//! };
//! let spec = SupervisorSpec::new("node", Strategy::RestForOne)
//!     .with_child(ChildSpec::new("transport", Restart::Permanent, idle))
//!     .with_child(ChildSpec::new("pg-default", Restart::Permanent, idle));
//! let supervisor = Supervisor::start(spec, &metrics).unwrap();
//! assert_eq!(supervisor.status(), SupervisorStatus::Running);
//! assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
//! # }
//! ```

use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::watch;
use tokio::task::{AbortHandle, Id as TaskId, JoinError, JoinSet};

/// Most children one supervisor may have. Node subsystems number about ten; a bigger tree nests
/// supervisors, which keeps each `rest_for_one` group and each shutdown short and readable.
pub const MAX_CHILDREN: usize = 64;

/// Largest `max_restarts` a [`RestartIntensity`] may declare: the tracker keeps that many instants,
/// and a subsystem that needs more restarts than this to stay up is not being supervised but
/// spun.
pub const MAX_RESTART_INTENSITY: u32 = 1_000;

/// OTP's default intensity: more than one restart within five seconds escalates.
pub const DEFAULT_RESTART_INTENSITY: RestartIntensity =
    RestartIntensity { max_restarts: 1, within: Duration::from_secs(5) };

/// How long a stopped child has, by default, to return after its [`StopSignal`] fires (OTP's
/// default `shutdown` for a worker); then its task is aborted.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest shutdown grace a child may declare, so a supervisor's shutdown stays bounded by
/// [`MAX_CHILDREN`] × (this + [`ABORT_WAIT`]).
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// How long the supervisor waits for an aborted child task to finish. Aborting only cancels at the
/// task's next `.await`; a task stuck in blocking code is detached after this, logged, and dropped
/// with the supervisor.
pub const ABORT_WAIT: Duration = Duration::from_secs(1);

/// Longest error or panic text kept in a [`ChildExit`] (status, logs): a panic payload can be any
/// size.
pub const MAX_EXIT_REASON_BYTES: usize = 1_024;

// ---------------------------------------------------------------------------------------- intensity

/// How many restarts a supervisor may make in a sliding window before it gives up (OTP's
/// `intensity` and `period`): more than `max_restarts` restarts within `within` escalates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartIntensity {
    /// Restarts allowed within the window; `0` escalates at the first restart.
    pub max_restarts: u32,
    /// The window's length, inclusive: restarts at most this long before now count.
    pub within: Duration,
}

impl RestartIntensity {
    /// An intensity of `max_restarts` restarts within `within`.
    pub const fn new(max_restarts: u32, within: Duration) -> Self {
        Self { max_restarts, within }
    }

    /// Checks the bounds: `max_restarts` at most [`MAX_RESTART_INTENSITY`], a non-zero window.
    pub fn validate(&self) -> Result<(), SupervisorError> {
        if self.max_restarts > MAX_RESTART_INTENSITY {
            return Err(SupervisorError::IntensityTooHigh {
                max_restarts: self.max_restarts,
                max: MAX_RESTART_INTENSITY,
            });
        }
        if self.within.is_zero() {
            return Err(SupervisorError::ZeroIntensityWindow);
        }
        Ok(())
    }
}

impl Default for RestartIntensity {
    fn default() -> Self {
        DEFAULT_RESTART_INTENSITY
    }
}

/// What [`RestartTracker::record_restart`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// The restart is within the intensity: restart.
    Restart,
    /// More than `max_restarts` restarts within the window: stop everything and escalate.
    Escalate,
}

/// The pure restart-intensity core: the instants of recent restarts, passed in by the caller (no
/// clock is read here), and OTP's decision on each new one.
///
/// Instants are expected in non-decreasing order; an instant earlier than a recorded one counts as
/// simultaneous with it. At most `max_restarts + 1` instants are kept.
#[derive(Clone, Debug)]
pub struct RestartTracker {
    intensity: RestartIntensity,
    /// Recent restart instants, oldest first.
    restarts: VecDeque<Instant>,
}

impl RestartTracker {
    /// An empty tracker for `intensity`.
    pub fn new(intensity: RestartIntensity) -> Self {
        Self { intensity, restarts: VecDeque::new() }
    }

    /// The intensity this tracker enforces.
    pub fn intensity(&self) -> RestartIntensity {
        self.intensity
    }

    /// Recorded restarts that are still within the window at `now`.
    pub fn restarts_within(&self, now: Instant) -> usize {
        self.restarts.iter().filter(|&&at| self.is_within(at, now)).count()
    }

    /// Whether one more restart at `now` would be allowed (without recording it).
    pub fn allows_restart(&self, now: Instant) -> bool {
        self.restarts_within(now) < self.intensity.max_restarts as usize
    }

    /// Records a restart at `now` and decides: [`RestartDecision::Escalate`] when that makes more
    /// than `max_restarts` restarts within the window ending at `now`.
    pub fn record_restart(&mut self, now: Instant) -> RestartDecision {
        while self.restarts.front().is_some_and(|&at| !self.is_within(at, now)) {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        // Older instants cannot change a decision: `max_restarts + 1` are enough to escalate.
        while self.restarts.len() > self.limit() {
            self.restarts.pop_front();
        }
        if self.restarts.len() as u64 > u64::from(self.intensity.max_restarts) {
            RestartDecision::Escalate
        } else {
            RestartDecision::Restart
        }
    }

    /// Restarts that fill the window, plus the one that escalates.
    fn limit(&self) -> usize {
        self.intensity.max_restarts as usize + 1
    }

    fn is_within(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) <= self.intensity.within
    }
}

// -------------------------------------------------------------------------------------------- child

/// When a child that exited is restarted (OTP's `restart` of a child spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, after a normal exit too: a subsystem that must run as long as the node.
    Permanent,
    /// Restarted only after an abnormal exit (error, panic, cancellation); a normal exit ends it,
    /// until (as in OTP) a `rest_for_one` restart of an earlier sibling starts it again.
    Transient,
    /// Never restarted; its exit counts no restart. Stopped (not restarted) in a `rest_for_one`
    /// group, and then forgotten.
    Temporary,
}

/// Which children are restarted when one exits and is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// The child that exited and every child after it in start order: those are stopped (last
    /// first) and all are started again in start order. For children that depend on earlier ones.
    RestForOne,
}

/// How a child's task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// Its future returned `Ok(())`.
    Normal,
    /// Its future returned `Err`; the error's text (bounded to [`MAX_EXIT_REASON_BYTES`]).
    Error(String),
    /// It panicked; the panic message (bounded to [`MAX_EXIT_REASON_BYTES`]).
    Panic(String),
    /// Its task was cancelled by something other than its supervisor (e.g. the runtime shutting
    /// down).
    Cancelled,
}

impl ChildExit {
    /// Whether this is an abnormal exit (anything but [`ChildExit::Normal`]).
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ChildExit::Normal)
    }

    fn from_joined(joined: Result<(TaskId, Result<(), ChildError>), JoinError>) -> (TaskId, Self) {
        match joined {
            Ok((id, Ok(()))) => (id, ChildExit::Normal),
            Ok((id, Err(error))) => (id, ChildExit::Error(bounded(error.to_string()))),
            Err(error) => {
                let id = error.id();
                if error.is_panic() {
                    (id, ChildExit::Panic(panic_text(error.into_panic())))
                } else {
                    (id, ChildExit::Cancelled)
                }
            }
        }
    }
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildExit::Normal => f.write_str("normal"),
            ChildExit::Error(text) => write!(f, "error: {text}"),
            ChildExit::Panic(text) => write!(f, "panic: {text}"),
            ChildExit::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Why a child's future failed (an abnormal exit).
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The child failed for the reason given.
    #[error("{0}")]
    Failed(String),
    /// The child failed with an error of its own.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A nested supervisor, run as a child, exceeded its restart intensity.
    #[error("supervisor {supervisor} escalated after child {child} exited ({exit})")]
    Escalated {
        /// The nested supervisor.
        supervisor: &'static str,
        /// Its child whose exit exceeded the intensity.
        child: &'static str,
        /// That child's exit.
        exit: ChildExit,
    },
    /// A nested supervisor, run as a child, could not start.
    #[error(transparent)]
    Start(#[from] SupervisorError),
}

impl ChildError {
    /// A failure for the reason given.
    pub fn failed(reason: impl fmt::Display) -> Self {
        ChildError::Failed(reason.to_string())
    }
}

/// The future a child runs: its whole life, startup first.
pub type ChildFuture = Pin<Box<dyn Future<Output = Result<(), ChildError>> + Send + 'static>>;

type StartFn = Arc<dyn Fn(StopSignal) -> ChildFuture + Send + Sync>;

/// Tells a child its supervisor wants it to stop. Cheap to clone.
///
/// A child should return soon after [`StopSignal::wait`] resolves; after its shutdown grace its
/// task is aborted. A signal whose supervisor is gone reads as fired.
#[derive(Clone, Debug)]
pub struct StopSignal {
    fired: watch::Receiver<bool>,
}

impl StopSignal {
    /// Resolves once the child is asked to stop (or its supervisor is gone). Cancel-safe.
    pub async fn wait(&self) {
        let mut fired = self.fired.clone();
        // An error means the sender is gone: the supervisor no longer holds this child.
        let _ = fired.wait_for(|&fired| fired).await;
    }

    /// Whether the child has been asked to stop (or its supervisor is gone).
    pub fn is_stopped(&self) -> bool {
        *self.fired.borrow() || self.fired.has_changed().is_err()
    }
}

/// One child of a supervisor: a static name, a factory, a [`Restart`] and a shutdown grace.
///
/// The factory is called at every (re)start with a fresh [`StopSignal`]; see the module docs for
/// the re-synchronisation contract. It is called on the child's own task, so a panic in it is a
/// panic of the child.
#[derive(Clone)]
pub struct ChildSpec {
    name: &'static str,
    restart: Restart,
    shutdown: Duration,
    start: StartFn,
}

impl ChildSpec {
    /// A child named `name` (unique within its supervisor; a metric label) that runs `start(stop)`,
    /// with the [`DEFAULT_SHUTDOWN_GRACE`].
    pub fn new<F, Fut>(name: &'static str, restart: Restart, start: F) -> Self
    where
        F: Fn(StopSignal) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ChildError>> + Send + 'static,
    {
        let start: StartFn = Arc::new(move |stop| Box::pin(start(stop)));
        Self { name, restart, shutdown: DEFAULT_SHUTDOWN_GRACE, start }
    }

    /// Sets how long the child has to return after its stop signal before its task is aborted
    /// (at most [`MAX_SHUTDOWN_GRACE`], checked when the supervisor starts).
    pub fn with_shutdown(mut self, grace: Duration) -> Self {
        self.shutdown = grace;
        self
    }

    /// The child's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The child's restart type.
    pub fn restart(&self) -> Restart {
        self.restart
    }

    /// The child's shutdown grace.
    pub fn shutdown(&self) -> Duration {
        self.shutdown
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

// --------------------------------------------------------------------------------------------- spec

/// Why a supervisor did not start.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// More children than [`MAX_CHILDREN`]: nest supervisors instead.
    #[error("supervisor {supervisor} has {count} children, more than the maximum of {max}")]
    TooManyChildren {
        /// The supervisor.
        supervisor: &'static str,
        /// Its children.
        count: usize,
        /// [`MAX_CHILDREN`].
        max: usize,
    },
    /// Two children share a name (names are how children are logged and counted).
    #[error("supervisor {supervisor} has two children named {child}")]
    DuplicateChild {
        /// The supervisor.
        supervisor: &'static str,
        /// The repeated name.
        child: &'static str,
    },
    /// The intensity's `max_restarts` is above [`MAX_RESTART_INTENSITY`].
    #[error("restart intensity of {max_restarts} restarts is above the maximum of {max}")]
    IntensityTooHigh {
        /// The declared `max_restarts`.
        max_restarts: u32,
        /// [`MAX_RESTART_INTENSITY`].
        max: u32,
    },
    /// The intensity's window is zero.
    #[error("restart intensity window must be longer than zero")]
    ZeroIntensityWindow,
    /// A child's shutdown grace is above [`MAX_SHUTDOWN_GRACE`].
    #[error("child {child} has a shutdown grace of {grace:?}, above the maximum of {max:?}")]
    ShutdownGraceTooLong {
        /// The child.
        child: &'static str,
        /// Its grace.
        grace: Duration,
        /// [`MAX_SHUTDOWN_GRACE`].
        max: Duration,
    },
    /// Not called inside a tokio runtime.
    #[error("a supervisor must be started inside a tokio runtime")]
    NoRuntime,
}

/// A supervisor's specification: name, strategy, intensity and ordered children. Cloning clones
/// the child factories' `Arc`s.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    name: &'static str,
    strategy: Strategy,
    intensity: RestartIntensity,
    children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// A supervisor named `name` (a metric label) with no children and the
    /// [`DEFAULT_RESTART_INTENSITY`].
    pub fn new(name: &'static str, strategy: Strategy) -> Self {
        Self { name, strategy, intensity: DEFAULT_RESTART_INTENSITY, children: Vec::new() }
    }

    /// Sets the restart intensity.
    pub fn with_intensity(mut self, intensity: RestartIntensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Appends a child: children start in the order they are added and stop in reverse.
    pub fn with_child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// The supervisor's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Checks every bound: the intensity, at most [`MAX_CHILDREN`] children with distinct names,
    /// each grace at most [`MAX_SHUTDOWN_GRACE`].
    pub fn validate(&self) -> Result<(), SupervisorError> {
        self.intensity.validate()?;
        if self.children.len() > MAX_CHILDREN {
            return Err(SupervisorError::TooManyChildren {
                supervisor: self.name,
                count: self.children.len(),
                max: MAX_CHILDREN,
            });
        }
        let mut names = HashSet::with_capacity(self.children.len());
        for child in &self.children {
            if !names.insert(child.name) {
                return Err(SupervisorError::DuplicateChild { supervisor: self.name, child: child.name });
            }
            if child.shutdown > MAX_SHUTDOWN_GRACE {
                return Err(SupervisorError::ShutdownGraceTooLong {
                    child: child.name,
                    grace: child.shutdown,
                    max: MAX_SHUTDOWN_GRACE,
                });
            }
        }
        Ok(())
    }

    /// The longest a shutdown (or an escalation's stop of every child) can take: each child's
    /// grace plus [`ABORT_WAIT`].
    pub fn shutdown_bound(&self) -> Duration {
        self.children.iter().map(|child| child.shutdown + ABORT_WAIT).sum()
    }

    /// This supervisor as a child of another (a supervision tree). Each start of the child starts
    /// a fresh supervisor from this spec; its stop signal shuts it down (the child's grace is this
    /// spec's [`SupervisorSpec::shutdown_bound`], at most [`MAX_SHUTDOWN_GRACE`]); its escalation
    /// is the child's abnormal exit, [`ChildError::Escalated`]. The child's name is this
    /// supervisor's.
    pub fn into_child_spec(self, restart: Restart, metrics: &SupervisorMetrics) -> Result<ChildSpec, SupervisorError> {
        self.validate()?;
        let grace = self.shutdown_bound().min(MAX_SHUTDOWN_GRACE);
        let name = self.name;
        let spec = Arc::new(self);
        let metrics = metrics.clone();
        let child = ChildSpec::new(name, restart, move |stop: StopSignal| {
            let spec = SupervisorSpec::clone(&spec);
            let metrics = metrics.clone();
            async move {
                let supervisor = Supervisor::start(spec, &metrics)?;
                tokio::select! {
                    () = stop.wait() => {
                        supervisor.shutdown().await;
                        Ok(())
                    }
                    status = supervisor.terminated() => match status {
                        SupervisorStatus::Escalated { child, exit } => {
                            Err(ChildError::Escalated { supervisor: name, child, exit })
                        }
                        _ => Ok(()),
                    },
                }
            }
        });
        Ok(child.with_shutdown(grace))
    }
}

// ------------------------------------------------------------------------------------------ metrics

/// The supervisors' Prometheus metrics, registered once per node registry and shared by every
/// supervisor of the node (cheap clones). Labels are the static supervisor and child names.
///
/// - `cohort_supervisor_restarts_total{supervisor, child}`: children started again (each child of
///   a `rest_for_one` group counts);
/// - `cohort_supervisor_escalations_total{supervisor}`: intensities exceeded.
#[derive(Clone, Debug)]
pub struct SupervisorMetrics {
    restarts: IntCounterVec,
    escalations: IntCounterVec,
}

impl SupervisorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            restarts: IntCounterVec::new(
                Opts::new("cohort_supervisor_restarts_total", "Children restarted by a supervisor"),
                &["supervisor", "child"],
            )?,
            escalations: IntCounterVec::new(
                Opts::new(
                    "cohort_supervisor_escalations_total",
                    "Supervisors that exceeded their restart intensity and stopped every child",
                ),
                &["supervisor"],
            )?,
        };
        registry.register(Box::new(metrics.restarts.clone()))?;
        registry.register(Box::new(metrics.escalations.clone()))?;
        Ok(metrics)
    }

    /// Exports every series of `spec` at 0.
    fn prime(&self, spec: &SupervisorSpec) {
        self.escalations.with_label_values(&[spec.name]);
        for child in &spec.children {
            self.restarts.with_label_values(&[spec.name, child.name]);
        }
    }
}

// ------------------------------------------------------------------------------------------- handle

/// What a supervisor is doing; watch it with [`Supervisor::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorStatus {
    /// Supervising its children.
    Running,
    /// Stopping its children after [`Supervisor::shutdown`] (or after its last handle was dropped).
    ShuttingDown,
    /// Shut down: every child stopped. Terminal.
    Stopped,
    /// Gave up: more restarts than its intensity allows; every child has been stopped. Terminal.
    /// The node fails `/livez` on it; a parent supervisor sees it as this child's failure.
    Escalated {
        /// The child whose exit exceeded the intensity (the supervisor's own name if its control
        /// task itself failed).
        child: &'static str,
        /// That child's exit.
        exit: ChildExit,
    },
}

impl SupervisorStatus {
    /// Whether the supervisor has ended (stopped or escalated).
    pub fn is_terminal(&self) -> bool {
        matches!(self, SupervisorStatus::Stopped | SupervisorStatus::Escalated { .. })
    }

    /// Whether the supervisor gave up.
    pub fn is_escalated(&self) -> bool {
        matches!(self, SupervisorStatus::Escalated { .. })
    }
}

/// A running supervisor. Cheap to clone; `Send + Sync`.
///
/// Dropping the last handle shuts the supervisor down (as [`Supervisor::shutdown`], in the
/// background).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Handle>,
}

struct Handle {
    name: &'static str,
    shutdown: watch::Sender<bool>,
    status: watch::Receiver<SupervisorStatus>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor").field("name", &self.inner.name).field("status", &self.status()).finish()
    }
}

impl Supervisor {
    /// Validates `spec`, exports its metric series at 0, spawns its children in order and the
    /// control task that supervises them. Must be called inside a tokio runtime.
    pub fn start(spec: SupervisorSpec, metrics: &SupervisorMetrics) -> Result<Self, SupervisorError> {
        spec.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        metrics.prime(&spec);
        let (status_tx, status_rx) = watch::channel(SupervisorStatus::Running);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let name = spec.name;
        let mut control = Control {
            name,
            strategy: spec.strategy,
            tracker: RestartTracker::new(spec.intensity),
            metrics: metrics.clone(),
            children: spec.children.into_iter().map(|spec| Slot { spec, state: SlotState::Exited }).collect(),
            tasks: JoinSet::new(),
            pending: VecDeque::new(),
            status: status_tx,
            shutdown: shutdown_rx,
        };
        for index in 0..control.children.len() {
            control.start_child(index);
        }
        tracing::info!(supervisor = name, children = control.children.len(), "supervisor started");
        runtime.spawn(control.run());
        Ok(Self { inner: Arc::new(Handle { name, shutdown: shutdown_tx, status: status_rx }) })
    }

    /// The supervisor's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// The current status.
    pub fn status(&self) -> SupervisorStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver of every status change (for `/livez`, or a parent).
    pub fn subscribe(&self) -> watch::Receiver<SupervisorStatus> {
        self.inner.status.clone()
    }

    /// Resolves with the terminal status once the supervisor has stopped or escalated. Cancel-safe.
    pub async fn terminated(&self) -> SupervisorStatus {
        let mut status = self.inner.status.clone();
        if let Ok(terminal) = status.wait_for(SupervisorStatus::is_terminal).await {
            return terminal.clone();
        }
        // The control task sets a terminal status before it ends, even when it panics.
        status.borrow().clone()
    }

    /// Stops every child in reverse start order (each: stop signal, its grace, then abort) and
    /// resolves with the terminal status: `Stopped`, or `Escalated` if it had already escalated.
    /// Takes at most [`SupervisorSpec::shutdown_bound`] after any restart in progress. Cancel-safe:
    /// the shutdown goes on if the future is dropped.
    pub async fn shutdown(&self) -> SupervisorStatus {
        self.inner.shutdown.send_replace(true);
        self.terminated().await
    }
}

// ------------------------------------------------------------------------------------------ control

/// One child slot, in start order.
struct Slot {
    spec: ChildSpec,
    state: SlotState,
}

enum SlotState {
    Running {
        id: TaskId,
        abort: AbortHandle,
        stop: watch::Sender<bool>,
    },
    /// Not running (before start, after a non-restarted exit, or stopped); started again by a
    /// `rest_for_one` restart of an earlier sibling, as in OTP.
    Exited,
    /// A temporary child that ended: never started again.
    Removed,
}

/// The control task's state: the only owner of the child tasks and the only writer of the status.
struct Control {
    name: &'static str,
    strategy: Strategy,
    tracker: RestartTracker,
    metrics: SupervisorMetrics,
    children: Vec<Slot>,
    tasks: JoinSet<Result<(), ChildError>>,
    /// Exits joined while waiting for another child to stop, handled next. Holds at most one
    /// entry per task in `tasks`, so at most [`MAX_CHILDREN`] plus detached tasks.
    pending: VecDeque<(TaskId, ChildExit)>,
    status: watch::Sender<SupervisorStatus>,
    shutdown: watch::Receiver<bool>,
}

impl Control {
    async fn run(mut self) {
        let escalation = loop {
            let (id, exit) = match self.pending.pop_front() {
                Some(pending) => pending,
                None => {
                    tokio::select! {
                        // Exits first: a child's exit that is already known is handled before a
                        // shutdown (a crash loop cannot starve the shutdown: the intensity ends it).
                        biased;
                        Some(joined) = self.tasks.join_next_with_id() => ChildExit::from_joined(joined),
                        () = shutdown_requested(&mut self.shutdown) => break None,
                    }
                }
            };
            if let Some(escalation) = self.handle_exit(id, exit).await {
                break Some(escalation);
            }
        };
        match escalation {
            None => {
                self.status.send_replace(SupervisorStatus::ShuttingDown);
                tracing::info!(supervisor = self.name, "supervisor shutting down");
                self.stop_all().await;
                self.status.send_replace(SupervisorStatus::Stopped);
                tracing::info!(supervisor = self.name, "supervisor stopped");
            }
            Some((child, exit)) => {
                self.metrics.escalations.with_label_values(&[self.name]).inc();
                let intensity = self.tracker.intensity();
                tracing::error!(
                    supervisor = self.name,
                    child,
                    %exit,
                    max_restarts = intensity.max_restarts,
                    within = ?intensity.within,
                    "restart intensity exceeded; stopping every child and escalating"
                );
                self.stop_all().await;
                self.status.send_replace(SupervisorStatus::Escalated { child, exit });
            }
        }
    }

    /// Handles the exit of task `id`; returns the child and exit that exceeded the intensity.
    async fn handle_exit(&mut self, id: TaskId, exit: ChildExit) -> Option<(&'static str, ChildExit)> {
        let Some(index) = self.running_slot(id) else {
            // A task already stopped, or detached after an abort: nothing to supervise.
            tracing::debug!(supervisor = self.name, %exit, "exit of a task no longer supervised");
            return None;
        };
        let slot = &mut self.children[index];
        let name = slot.spec.name;
        let restart = slot.spec.restart;
        slot.state = if restart == Restart::Temporary { SlotState::Removed } else { SlotState::Exited };
        let restarts = match restart {
            Restart::Permanent => true,
            Restart::Transient => exit.is_abnormal(),
            Restart::Temporary => false,
        };
        if !restarts {
            if exit.is_abnormal() {
                tracing::warn!(supervisor = self.name, child = name, %exit, "child exited; not restarted ({restart:?})");
            } else {
                tracing::info!(supervisor = self.name, child = name, "child exited normally; not restarted");
            }
            return None;
        }
        let now = tokio::time::Instant::now().into_std();
        if self.tracker.record_restart(now) == RestartDecision::Escalate {
            return Some((name, exit));
        }
        tracing::warn!(supervisor = self.name, child = name, %exit, strategy = ?self.strategy, "child exited; restarting");
        match self.strategy {
            Strategy::OneForOne => self.restart_child(index),
            Strategy::RestForOne => {
                for later in (index + 1..self.children.len()).rev() {
                    self.stop_child(later).await;
                }
                for restarted in index..self.children.len() {
                    if !matches!(self.children[restarted].state, SlotState::Removed) {
                        self.restart_child(restarted);
                    }
                }
            }
        }
        None
    }

    fn running_slot(&self, id: TaskId) -> Option<usize> {
        self.children
            .iter()
            .position(|slot| matches!(slot.state, SlotState::Running { id: running, .. } if running == id))
    }

    fn restart_child(&mut self, index: usize) {
        self.metrics.restarts.with_label_values(&[self.name, self.children[index].spec.name]).inc();
        self.start_child(index);
    }

    /// Spawns child `index`; the factory runs on the child's task so a panic in it is caught.
    fn start_child(&mut self, index: usize) {
        let slot = &mut self.children[index];
        debug_assert!(!matches!(slot.state, SlotState::Running { .. } | SlotState::Removed));
        let (stop, fired) = watch::channel(false);
        let start = Arc::clone(&slot.spec.start);
        let abort = self.tasks.spawn(async move { start(StopSignal { fired }).await });
        slot.state = SlotState::Running { id: abort.id(), abort, stop };
        tracing::debug!(supervisor = self.name, child = slot.spec.name, "child started");
    }

    /// Stops every running child, last started first.
    async fn stop_all(&mut self) {
        for index in (0..self.children.len()).rev() {
            self.stop_child(index).await;
        }
    }

    /// Stops child `index` if it runs: stop signal, its grace, then abort and [`ABORT_WAIT`].
    async fn stop_child(&mut self, index: usize) {
        let slot = &mut self.children[index];
        let name = slot.spec.name;
        let grace = slot.spec.shutdown;
        let stopped = if slot.spec.restart == Restart::Temporary { SlotState::Removed } else { SlotState::Exited };
        let SlotState::Running { id, abort, stop } = std::mem::replace(&mut slot.state, stopped) else {
            return;
        };
        stop.send_replace(true);
        let exit = match self.pending.iter().position(|(pending, _)| *pending == id) {
            // It had exited already, while another child was being stopped.
            Some(position) => self.pending.remove(position).map(|(_, exit)| exit),
            None => self.join(id, tokio::time::Instant::now() + grace).await,
        };
        if let Some(exit) = exit {
            tracing::debug!(supervisor = self.name, child = name, %exit, "child stopped");
            return;
        }
        tracing::warn!(supervisor = self.name, child = name, ?grace, "child ignored its stop signal; aborting it");
        abort.abort();
        if self.join(id, tokio::time::Instant::now() + ABORT_WAIT).await.is_none() {
            tracing::error!(
                supervisor = self.name,
                child = name,
                "aborted child did not finish (blocking code?); detached"
            );
        }
    }

    /// Joins tasks until task `id` ends or `deadline` passes; other exits are kept in `pending`.
    async fn join(&mut self, id: TaskId, deadline: tokio::time::Instant) -> Option<ChildExit> {
        loop {
            // `join_next_with_id` is cancel-safe: a timeout loses no exit.
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    let (joined_id, exit) = ChildExit::from_joined(joined);
                    if joined_id == id {
                        return Some(exit);
                    }
                    self.pending.push_back((joined_id, exit));
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

impl Drop for Control {
    /// Guarantees a terminal status even if the control task panicked or was cancelled; the
    /// `JoinSet` drop then aborts every child.
    fn drop(&mut self) {
        let name = self.name;
        self.status.send_if_modified(|status| {
            if status.is_terminal() {
                return false;
            }
            tracing::error!(supervisor = name, "supervisor control task ended unexpectedly; aborting its children");
            *status = SupervisorStatus::Escalated {
                child: name,
                exit: ChildExit::Panic("supervisor control task ended unexpectedly".to_owned()),
            };
            true
        });
    }
}

/// Resolves when shutdown is requested or every [`Supervisor`] handle is dropped.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    // An error means every handle is gone: nobody can shut the supervisor down any more, so do it.
    let _ = shutdown.wait_for(|&requested| requested).await;
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    let text = match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "non-string panic payload".to_owned(),
        },
    };
    bounded(text)
}

/// Cuts `text` to at most [`MAX_EXIT_REASON_BYTES`] on a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_EXIT_REASON_BYTES {
        let mut cut = MAX_EXIT_REASON_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(base: Instant, millis: u64) -> Instant {
        base + Duration::from_millis(millis)
    }

    #[test]
    fn zero_max_restarts_escalates_at_the_first_restart() {
        let base = Instant::now();
        let mut tracker = RestartTracker::new(RestartIntensity::new(0, Duration::from_secs(5)));
        assert!(!tracker.allows_restart(base));
        assert_eq!(tracker.record_restart(base), RestartDecision::Escalate);
    }

    #[test]
    fn more_than_max_restarts_within_the_window_escalates() {
        let base = Instant::now();
        let mut tracker = RestartTracker::new(RestartIntensity::new(2, Duration::from_secs(5)));
        assert_eq!(tracker.record_restart(at(base, 0)), RestartDecision::Restart);
        assert_eq!(tracker.record_restart(at(base, 1_000)), RestartDecision::Restart);
        assert!(!tracker.allows_restart(at(base, 5_000)));
        assert_eq!(tracker.record_restart(at(base, 5_000)), RestartDecision::Escalate);
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let base = Instant::now();
        let mut tracker = RestartTracker::new(RestartIntensity::new(1, Duration::from_secs(5)));
        assert_eq!(tracker.record_restart(at(base, 0)), RestartDecision::Restart);
        // The window is inclusive: exactly `within` later still counts.
        assert!(!tracker.allows_restart(at(base, 5_000)));
        assert!(tracker.allows_restart(at(base, 5_001)));
        assert_eq!(tracker.record_restart(at(base, 5_001)), RestartDecision::Restart);
        assert_eq!(tracker.restarts_within(at(base, 5_001)), 1);
    }

    #[test]
    fn an_earlier_instant_counts_as_simultaneous() {
        let base = Instant::now();
        let mut tracker = RestartTracker::new(RestartIntensity::new(1, Duration::from_millis(10)));
        assert_eq!(tracker.record_restart(at(base, 100)), RestartDecision::Restart);
        assert_eq!(tracker.record_restart(at(base, 50)), RestartDecision::Escalate);
    }

    #[test]
    fn intensity_bounds_are_checked() {
        assert!(RestartIntensity::new(MAX_RESTART_INTENSITY, Duration::from_secs(1)).validate().is_ok());
        assert!(matches!(
            RestartIntensity::new(MAX_RESTART_INTENSITY + 1, Duration::from_secs(1)).validate(),
            Err(SupervisorError::IntensityTooHigh { .. })
        ));
        assert!(matches!(
            RestartIntensity::new(1, Duration::ZERO).validate(),
            Err(SupervisorError::ZeroIntensityWindow)
        ));
    }

    #[test]
    fn exit_reasons_are_bounded_on_a_char_boundary() {
        let text = "é".repeat(MAX_EXIT_REASON_BYTES);
        let cut = bounded(text);
        assert!(cut.len() <= MAX_EXIT_REASON_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(panic_text(Box::new("static")), "static");
        assert_eq!(panic_text(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_text(Box::new(7_u8)), "non-string panic payload");
    }

    proptest! {
        /// The tracker agrees with OTP's definition on every non-decreasing sequence: a restart
        /// escalates iff more than `max_restarts` restarts (itself included) fall within `within`
        /// of it; `allows_restart` predicts `record_restart`; at most `max_restarts + 1` are kept.
        #[test]
        fn tracker_matches_the_sliding_window_definition(
            max_restarts in 0_u32..6,
            within_ms in 1_u64..200,
            gaps in proptest::collection::vec(0_u64..120, 1..64),
        ) {
            let base = Instant::now();
            let within = Duration::from_millis(within_ms);
            let mut tracker = RestartTracker::new(RestartIntensity::new(max_restarts, within));
            let mut times = Vec::with_capacity(gaps.len());
            let mut elapsed = 0;
            for gap in gaps {
                elapsed += gap;
                let now = at(base, elapsed);
                times.push(now);
                let in_window = times.iter().filter(|&&t| now.duration_since(t) <= within).count();
                let expected = if in_window > max_restarts as usize {
                    RestartDecision::Escalate
                } else {
                    RestartDecision::Restart
                };
                let predicted = tracker.allows_restart(now);
                let decision = tracker.record_restart(now);
                prop_assert_eq!(decision, expected);
                prop_assert_eq!(predicted, decision == RestartDecision::Restart);
                prop_assert!(tracker.restarts.len() <= max_restarts as usize + 1);
            }
        }
    }
}
