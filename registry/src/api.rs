//! One lookup API over the tiers (SPEC 7): [`Registry`], the [`Tier`] names, the typed
//! [`RegistryError`] and the [`NameRevoked`] notice.
//!
//! Role: the node owns one [`Registry`]; it holds the local tier's table, the eventual tier's
//! handle and the consistent tier's. It is the process table's exit hook for all tiers (a
//! consistent name of an exited process is removed by a committed `RemoveByPid`), the fence guard
//! of its node (a send by consistent name carries the fencing token, checked where it lands), and
//! the one place that resolves a name: `local -> consistent -> eventual`, or the tier named by the
//! caller.
//!
//! Consistent-tier writes commit through raft, so they are `async`
//! ([`Registry::register_consistent`], [`Registry::unregister_consistent`]); the synchronous
//! [`Registry::register`] refuses `Tier::Consistent` with a pointer to them. The default lookup
//! ([`Registry::lookup`]) reads the consistent tier's local view (`BestEffort`); a caller that
//! needs a freshness guarantee and the witness uses [`Registry::lookup_consistent`].

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use cohort_actors::process::{ProcessRef, Processes};
use cohort_actors::{ExitHook, ExitReason, Pid, ProcessHost};
use cohort_cluster::membership::Membership;
use cohort_cluster::net::transport::Transport;
use cohort_cluster::{MemberInfo, MembershipEvent};
use ractor::Message;
use serde::{Deserialize, Serialize};

use crate::consistent::freshness::ReadRejection;
use crate::consistent::fsm::{Command, CommandResult, MAX_NAME_BYTES, Proposal, RequestId};
use crate::consistent::metrics::ConsistentMetrics;
use crate::consistent::service::{ConsistentConfig, ConsistentTier, ReadError};
use crate::consistent::{Admission, ReadRequest, ReadWitness, RootToken};
use crate::eventual::{EventualConfig, EventualTier, RevokeSink};
use crate::local::LocalTable;
use crate::metrics::RegistryMetrics;

/// A registry tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// One node; a map insert.
    Local,
    /// Cluster-wide, CRDT over gossip.
    Eventual,
    /// Cluster-wide, Raft (issue 6).
    Consistent,
}

impl Tier {
    /// Every tier, in lookup order.
    pub const ALL: [Tier; 3] = [Tier::Local, Tier::Consistent, Tier::Eventual];

    /// The tier's name in JSON, metrics and URLs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Eventual => "eventual",
            Tier::Consistent => "consistent",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Tier::Local),
            "eventual" => Ok(Tier::Eventual),
            "consistent" => Ok(Tier::Consistent),
            other => Err(RegistryError::UnknownTier { tier: other.chars().take(32).collect() }),
        }
    }
}

/// The notice a process gets when a concurrent registration on another node won its eventual
/// name (exactly once per registration; the name is then no longer registered to it). The
/// process's message type implements `From<NameRevoked>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NameRevoked {
    /// The name lost.
    pub name: String,
    /// The process that held it (the receiver).
    pub pid: Pid,
    /// The process that owns it now.
    pub winner: Pid,
}

/// Why a registry operation was refused. Nothing changed when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The name is held, in `tier`, by `pid`.
    #[error("AlreadyRegistered: the name is held in the {tier} tier by {pid}")]
    AlreadyRegistered {
        /// The tier that holds the name.
        tier: Tier,
        /// Its holder.
        pid: Pid,
    },
    /// The pid is not a live process of this node.
    #[error("NotHosted: {pid} is not a live process of this node")]
    NotHosted {
        /// The pid offered.
        pid: Pid,
    },
    /// This node holds no registration of the name in `tier`.
    #[error("NotRegistered: this node holds no registration of the name in the {tier} tier")]
    NotRegistered {
        /// The tier.
        tier: Tier,
    },
    /// No tier resolves the name.
    #[error("NotFound: no process is registered under the name")]
    NotFound,
    /// The name is empty or too long.
    #[error("InvalidName: {reason}")]
    InvalidName {
        /// What is wrong with it.
        reason: String,
    },
    /// A bound was reached.
    #[error("TooManyNames: the {tier} tier holds its maximum of {max}")]
    TooManyNames {
        /// The tier.
        tier: Tier,
        /// The bound.
        max: usize,
    },
    /// Not a tier name.
    #[error("UnknownTier: {tier:?} is not local, eventual or consistent")]
    UnknownTier {
        /// What was given (truncated).
        tier: String,
    },
    /// The tier is not running on this node (the consistent tier until issue 6).
    #[error("Unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A send by name was refused after the lookup (SPEC 8 Admission words).
    #[error("{0}")]
    Send(#[from] cohort_actors::process::SendError),
    /// A consistent write found no reachable leader before its deadline.
    #[error("NotLeader: no raft leader reachable (last known: {leader_hint:?})")]
    NotLeader {
        /// The leader this node last knew of.
        leader_hint: Option<String>,
    },
    /// A consistent write did not apply within its deadline; retry with the same request id.
    #[error("TimedOut: the write did not apply within its deadline (retry with the same request id)")]
    TimedOut,
    /// A bounded queue of the consistent tier is full.
    #[error("QueueSaturated: the {class} queue is full")]
    QueueSaturated {
        /// Which queue.
        class: String,
    },
    /// The tier is shutting down.
    #[error("Canceled: the consistent tier is stopping")]
    Canceled,
    /// A consistent read could not be served at the freshness asked for (SPEC 8: no silent
    /// downgrade); `rejection.reason()` names why.
    #[error("{}: {rejection}", rejection.reason())]
    ReadRefused {
        /// Why.
        rejection: ReadRejection,
    },
}

impl RegistryError {
    /// The registry error for an execution-plane refusal (SPEC 8 `Admission`).
    pub fn from_admission(admission: Admission) -> Self {
        match admission {
            Admission::NotLeader { leader_hint } => Self::NotLeader { leader_hint },
            Admission::TimedOut => Self::TimedOut,
            Admission::QueueSaturated { class } => Self::QueueSaturated { class },
            Admission::Canceled => Self::Canceled,
            other => Self::Unavailable { reason: other.to_string() },
        }
    }

    fn from_read(error: ReadError) -> Self {
        match error {
            ReadError::Rejected(rejection) => Self::ReadRefused { rejection },
            ReadError::Refused(admission) => Self::from_admission(admission),
        }
    }
}

/// A committed consistent registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistentRegistration {
    /// The fencing token: the log index that applied the registration (monotonic per cluster).
    pub fence_token: u64,
    /// The RootToken of the entry that answered (read-your-writes: pass it as
    /// `required_root_token`).
    pub root_token: RootToken,
    /// Whether the answer came from the request-id cache (a retry of an applied request).
    pub duplicate: bool,
}

/// A consistent-tier lookup answer with its SPEC 8 witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistentAnswer {
    /// The owner.
    pub pid: Pid,
    /// Its fencing token.
    pub fence_token: u64,
    /// How fresh the answer is.
    pub witness: ReadWitness,
}

impl RegistryError {
    /// The SPEC's word for the refusal (the `error` field of the admin API's JSON).
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::AlreadyRegistered { .. } => "AlreadyRegistered",
            RegistryError::NotHosted { .. } => "NotHosted",
            RegistryError::NotRegistered { .. } => "NotRegistered",
            RegistryError::NotFound => "NotFound",
            RegistryError::InvalidName { .. } => "InvalidName",
            RegistryError::TooManyNames { .. } => "TooManyNames",
            RegistryError::UnknownTier { .. } => "UnknownTier",
            RegistryError::Unavailable { .. } => "Unavailable",
            RegistryError::Send(error) => error.admission(),
            RegistryError::NotLeader { .. } => "NotLeader",
            RegistryError::TimedOut => "TimedOut",
            RegistryError::QueueSaturated { .. } => "QueueSaturated",
            RegistryError::Canceled => "Canceled",
            RegistryError::ReadRefused { rejection } => rejection.reason(),
        }
    }

    /// The SPEC 8 admission verdict of a register or unregister that ended with this error
    /// (`cohort_admissions_total{work="registry_<tier>"}`): `Accepted` when the tier took the write
    /// and this is its answer (the name is held, or this node holds no registration of it), the
    /// refusal's reason when the node did not take it (`TooManyNames`: a bounded table is full, so
    /// `QueueSaturated`), `None` when there is no verdict (invalid input, or the tier does not run
    /// here: `Unavailable` is not an admission word).
    pub fn write_admission(&self) -> Option<&'static str> {
        match self {
            RegistryError::AlreadyRegistered { .. } | RegistryError::NotRegistered { .. } => Some("Accepted"),
            RegistryError::NotHosted { .. } => Some("NotHosted"),
            RegistryError::NotLeader { .. } => Some("NotLeader"),
            RegistryError::TimedOut => Some("TimedOut"),
            RegistryError::QueueSaturated { .. } | RegistryError::TooManyNames { .. } => Some("QueueSaturated"),
            RegistryError::Canceled => Some("Canceled"),
            RegistryError::NotFound
            | RegistryError::InvalidName { .. }
            | RegistryError::UnknownTier { .. }
            | RegistryError::Unavailable { .. }
            | RegistryError::Send(_)
            | RegistryError::ReadRefused { .. } => None,
        }
    }

    /// The bounded `result` label of `cohort_registry_operations_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            RegistryError::AlreadyRegistered { .. } => "already_registered",
            RegistryError::NotHosted { .. } => "not_hosted",
            RegistryError::NotRegistered { .. } => "not_registered",
            RegistryError::NotFound => "not_found",
            RegistryError::InvalidName { .. } | RegistryError::UnknownTier { .. } => "invalid_name",
            RegistryError::TooManyNames { .. } => "too_many_names",
            RegistryError::Unavailable { .. } | RegistryError::Send(_) | RegistryError::Canceled => "unavailable",
            RegistryError::NotLeader { .. } => "not_leader",
            RegistryError::TimedOut => "timed_out",
            RegistryError::QueueSaturated { .. } => "queue_saturated",
            RegistryError::ReadRefused { .. } => "read_refused",
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn consistent_unavailable() -> RegistryError {
    RegistryError::Unavailable { reason: "the consistent tier is not running on this node".into() }
}

fn consistent_is_async() -> RegistryError {
    RegistryError::Unavailable {
        reason: "consistent writes commit through raft: use Registry::register_consistent / unregister_consistent"
            .into(),
    }
}

/// One node's registry: every tier behind one API. Cheap to clone.
///
/// ```no_run
/// use cohort_registry::{NameRevoked, Tier};
///
/// /// A session process's messages: it learns when a concurrent registration wins its name.
/// enum Msg {
///     Revoked(NameRevoked),
/// }
/// impl From<NameRevoked> for Msg {
///     fn from(notice: NameRevoked) -> Self {
///         Msg::Revoked(notice)
///     }
/// }
///
/// # fn demo(registry: cohort_registry::Registry, me: cohort_actors::ProcessRef<Msg>) {
/// registry.register(Tier::Eventual, "session:42", &me).unwrap();
/// let (tier, pid) = registry.lookup("session:42").unwrap();
/// assert_eq!((tier, &pid), (Tier::Eventual, me.pid()));
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    local: Arc<Mutex<LocalTable>>,
    eventual: EventualTier,
    consistent: Option<ConsistentTier>,
    processes: Processes,
    metrics: RegistryMetrics,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("node", self.processes.node()).finish_non_exhaustive()
    }
}

struct Hook {
    local: Arc<Mutex<LocalTable>>,
    eventual: EventualTier,
    consistent: Option<ConsistentTier>,
    metrics: RegistryMetrics,
}

impl ExitHook for Hook {
    fn on_exit(&self, pid: &Pid, _reason: &ExitReason) {
        let local = {
            let mut table = lock(&self.local);
            let removed = table.remove_pid(pid).len();
            if removed > 0 {
                self.metrics.set_names(Tier::Local, table.len());
            }
            removed
        };
        let eventual = self.eventual.remove_pid(pid);
        if let Some(consistent) = &self.consistent {
            consistent.remove_pid(pid);
        }
        if local + eventual > 0 {
            tracing::debug!(%pid, local, eventual, "registry: names of an exited process removed");
        }
    }
}

impl Registry {
    /// Starts the registry of a node: registers its metrics, starts the eventual tier (gossip
    /// channel, `registry` transport class, anti-entropy task), the consistent tier when
    /// `consistent` is given (raft actor, `raft` transport class, the node's fence guard) and
    /// installs the exit hook.
    pub fn start(
        processes: Processes,
        membership: Membership,
        transport: Transport,
        registry: &prometheus::Registry,
        config: EventualConfig,
        consistent: Option<ConsistentConfig>,
    ) -> Result<Self, RegistryError> {
        let metrics = RegistryMetrics::register(registry)
            .map_err(|error| RegistryError::Unavailable { reason: format!("metrics: {error}") })?;
        let host: Arc<dyn ProcessHost> = Arc::new(processes.clone());
        let consistent = match consistent {
            Some(config) => {
                let consistent_metrics = ConsistentMetrics::register(registry)
                    .map_err(|error| RegistryError::Unavailable { reason: format!("metrics: {error}") })?;
                let tier = ConsistentTier::start(
                    processes.node().clone(),
                    membership.clone(),
                    transport.clone(),
                    consistent_metrics,
                    config,
                )
                .map_err(|error| RegistryError::Unavailable { reason: format!("consistent tier: {error}") })?;
                processes.set_fence_guard(Arc::new(tier.clone()));
                Some(tier)
            }
            None => None,
        };
        let eventual = EventualTier::start(host, membership, transport, metrics.clone(), config)?;
        let local = Arc::new(Mutex::new(LocalTable::new()));
        processes.add_exit_hook(Arc::new(Hook {
            local: local.clone(),
            eventual: eventual.clone(),
            consistent: consistent.clone(),
            metrics: metrics.clone(),
        }));
        Ok(Self { local, eventual, consistent, processes, metrics })
    }

    /// Registers `process` under `name` in `tier`. In the eventual tier, the process is told with
    /// a [`NameRevoked`] message if a concurrent registration elsewhere wins the name.
    pub fn register<M>(&self, tier: Tier, name: &str, process: &ProcessRef<M>) -> Result<(), RegistryError>
    where
        M: Message + From<NameRevoked>,
    {
        let target = process.clone();
        let sink: RevokeSink = Arc::new(move |notice: NameRevoked| target.send_unbounded(M::from(notice)));
        self.register_with(tier, name, process.pid(), Some(sink))
    }

    /// Registers a pid of this node by its pid alone (the admin API's probes); in the eventual
    /// tier a revocation is still counted and logged but nobody is told.
    pub fn register_pid(&self, tier: Tier, name: &str, pid: &Pid) -> Result<(), RegistryError> {
        self.register_with(tier, name, pid, None)
    }

    fn register_with(&self, tier: Tier, name: &str, pid: &Pid, sink: Option<RevokeSink>) -> Result<(), RegistryError> {
        let result = match tier {
            Tier::Local => self.register_local(name, pid),
            Tier::Eventual => self.register_eventual(name, pid, sink),
            Tier::Consistent => Err(consistent_is_async()),
        };
        let label = match &result {
            Ok(()) => "ok",
            Err(RegistryError::AlreadyRegistered { tier: holder, .. }) if *holder != tier => "held_in_other_tier",
            Err(error) => error.result_label(),
        };
        self.metrics.operation(tier, "register", label);
        self.metrics.write_admission(tier, result.as_ref().err());
        result
    }

    fn register_local(&self, name: &str, pid: &Pid) -> Result<(), RegistryError> {
        if !self.processes.is_hosted(pid) {
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        let mut table = lock(&self.local);
        table.register(name, pid)?;
        self.metrics.set_names(Tier::Local, table.len());
        drop(table);
        if !self.processes.is_hosted(pid) {
            // It exited between the check and the insert: its exit hook already ran.
            let mut table = lock(&self.local);
            table.remove_pid(pid);
            self.metrics.set_names(Tier::Local, table.len());
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        Ok(())
    }

    fn register_eventual(&self, name: &str, pid: &Pid, sink: Option<RevokeSink>) -> Result<(), RegistryError> {
        // SPEC 7: refused when this node holds the name in the local (or consistent) tier.
        if let Some(holder) = lock(&self.local).lookup(name) {
            return Err(RegistryError::AlreadyRegistered { tier: Tier::Local, pid: holder.clone() });
        }
        if let Some(holder) = self.consistent.as_ref().and_then(|c| c.lookup(name)) {
            return Err(RegistryError::AlreadyRegistered { tier: Tier::Consistent, pid: holder.pid });
        }
        self.eventual.register(name, pid, 0, sink)
    }

    fn consistent_tier(&self) -> Result<&ConsistentTier, RegistryError> {
        self.consistent.as_ref().ok_or_else(consistent_unavailable)
    }

    /// The consistent tier, when it runs on this node.
    pub fn consistent(&self) -> Option<&ConsistentTier> {
        self.consistent.as_ref()
    }

    /// A fresh request id for [`Registry::register_consistent_with`] (keep it to retry).
    pub fn consistent_request_id(&self) -> Result<RequestId, RegistryError> {
        Ok(self.consistent_tier()?.next_request_id())
    }

    /// Registers `process` under `name` in the consistent tier: one raft commit; first committed
    /// wins. Returns the fencing token. Waits at most the tier's request timeout.
    pub async fn register_consistent<M: Message>(
        &self,
        name: &str,
        process: &ProcessRef<M>,
    ) -> Result<ConsistentRegistration, RegistryError> {
        self.register_consistent_pid(name, process.pid()).await
    }

    /// [`Registry::register_consistent`] by pid (a live process of this node).
    pub async fn register_consistent_pid(
        &self,
        name: &str,
        pid: &Pid,
    ) -> Result<ConsistentRegistration, RegistryError> {
        let request_id = self.consistent_request_id()?;
        self.register_consistent_with(name, pid, request_id).await
    }

    /// [`Registry::register_consistent_pid`] with the caller's request id: a retry with the same
    /// id (after `TimedOut`, or a lost answer) returns the first result and the same token.
    pub async fn register_consistent_with(
        &self,
        name: &str,
        pid: &Pid,
        request_id: RequestId,
    ) -> Result<ConsistentRegistration, RegistryError> {
        let result = self.do_register_consistent(name, pid, request_id).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(error) => error.result_label(),
        };
        self.metrics.operation(Tier::Consistent, "register", label);
        self.metrics.write_admission(Tier::Consistent, result.as_ref().err());
        result
    }

    async fn do_register_consistent(
        &self,
        name: &str,
        pid: &Pid,
        request_id: RequestId,
    ) -> Result<ConsistentRegistration, RegistryError> {
        let tier = self.consistent_tier()?;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(RegistryError::InvalidName { reason: format!("a name must be 1-{MAX_NAME_BYTES} bytes") });
        }
        if pid.node != *self.processes.node() || !self.processes.is_hosted(pid) {
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        let proposal = Proposal::new(request_id, Command::Register { name: name.to_string(), pid: pid.clone() });
        let applied = tier.propose(proposal).await.map_err(RegistryError::from_admission)?;
        let fence_token = match applied.result {
            CommandResult::Registered { fence_token } => fence_token,
            CommandResult::AlreadyRegistered { owner, .. } => {
                return Err(RegistryError::AlreadyRegistered { tier: Tier::Consistent, pid: owner });
            }
            CommandResult::OwnerDeparted => return Err(RegistryError::NotHosted { pid: pid.clone() }),
            CommandResult::TooManyNames { max } => {
                return Err(RegistryError::TooManyNames { tier: Tier::Consistent, max });
            }
            CommandResult::Malformed { reason } => return Err(RegistryError::InvalidName { reason }),
            other => return Err(RegistryError::Unavailable { reason: format!("unexpected result {other:?}") }),
        };
        if !self.processes.is_hosted(pid) {
            // It exited while the write was in flight; its exit hook may have run before the name
            // was in this node's view, so remove it now (SPEC 7: removed when the process exits).
            tier.remove_pid(pid);
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        Ok(ConsistentRegistration { fence_token, root_token: applied.token, duplicate: applied.duplicate })
    }

    /// Removes this node's consistent registration of `name` (one raft commit); returns the pid
    /// that held it.
    pub async fn unregister_consistent(&self, name: &str) -> Result<Pid, RegistryError> {
        let result = async {
            let tier = self.consistent_tier()?;
            let holder = tier.lookup(name).ok_or(RegistryError::NotRegistered { tier: Tier::Consistent })?;
            if holder.pid.node != *self.processes.node() {
                return Err(RegistryError::NotRegistered { tier: Tier::Consistent });
            }
            let proposal = Proposal::new(
                tier.next_request_id(),
                Command::Unregister { name: name.to_string(), pid: holder.pid.clone() },
            );
            match tier.propose(proposal).await.map_err(RegistryError::from_admission)?.result {
                CommandResult::Unregistered => Ok(holder.pid),
                _ => Err(RegistryError::NotRegistered { tier: Tier::Consistent }),
            }
        }
        .await;
        self.metrics.operation(
            Tier::Consistent,
            "unregister",
            result.as_ref().map_or_else(RegistryError::result_label, |_| "ok"),
        );
        self.metrics.write_admission(Tier::Consistent, result.as_ref().err());
        result
    }

    /// Resolves `name` in the consistent tier at the freshness `request` asks for, with the
    /// witness (SPEC 8). `Strong` asks the leader's ReadIndex; the others read this node's view.
    pub async fn lookup_consistent(&self, name: &str, request: ReadRequest) -> Result<ConsistentAnswer, RegistryError> {
        let result = async {
            let answer = self.consistent_tier()?.read(name, request).await.map_err(RegistryError::from_read)?;
            let registration = answer.registration.ok_or(RegistryError::NotFound)?;
            Ok(ConsistentAnswer {
                pid: registration.pid,
                fence_token: registration.fence_token,
                witness: answer.witness,
            })
        }
        .await;
        self.metrics.operation(
            Tier::Consistent,
            "lookup",
            result.as_ref().map_or_else(RegistryError::result_label, |_| "ok"),
        );
        result
    }

    /// Sends `message` to the holder of consistent `name` carrying `fence_token` (the token the
    /// caller holds, e.g. from its own registration): the node hosting the holder refuses it with
    /// `EpochMismatch` unless the token is the name's current one there.
    pub fn send_fenced<M>(&self, name: &str, fence_token: u64, message: M) -> Result<Pid, RegistryError>
    where
        M: Message + Serialize,
    {
        let holder = self.consistent_tier()?.lookup(name).ok_or(RegistryError::NotFound)?;
        self.processes.send_fenced(&holder.pid, name, fence_token, message)?;
        Ok(holder.pid)
    }

    /// Removes this node's registration of `name` from `tier`; returns the pid that held it.
    pub fn unregister(&self, tier: Tier, name: &str) -> Result<Pid, RegistryError> {
        let result = match tier {
            Tier::Local => {
                let mut table = lock(&self.local);
                let removed = table.unregister(name).ok_or(RegistryError::NotRegistered { tier });
                self.metrics.set_names(Tier::Local, table.len());
                removed
            }
            Tier::Eventual => self.eventual.unregister(name, None),
            Tier::Consistent => Err(consistent_is_async()),
        };
        self.metrics.operation(tier, "unregister", result.as_ref().map_or_else(RegistryError::result_label, |_| "ok"));
        self.metrics.write_admission(tier, result.as_ref().err());
        result
    }

    /// Resolves `name`: local, then consistent (this node's view: `BestEffort`), then eventual.
    pub fn lookup(&self, name: &str) -> Option<(Tier, Pid)> {
        let found = Tier::ALL.into_iter().find_map(|tier| self.resolve(tier, name).map(|pid| (tier, pid)));
        let tier = found.as_ref().map_or(Tier::Local, |(tier, _)| *tier);
        self.metrics.operation(tier, "lookup", if found.is_some() { "ok" } else { "not_found" });
        found
    }

    /// Resolves `name` in `tier` only.
    pub fn lookup_in(&self, tier: Tier, name: &str) -> Result<Pid, RegistryError> {
        let result = match tier {
            Tier::Consistent if self.consistent.is_none() => Err(consistent_unavailable()),
            tier => self.resolve(tier, name).ok_or(RegistryError::NotFound),
        };
        self.metrics.operation(tier, "lookup", result.as_ref().map_or_else(RegistryError::result_label, |_| "ok"));
        result
    }

    fn resolve(&self, tier: Tier, name: &str) -> Option<Pid> {
        match tier {
            Tier::Local => lock(&self.local).lookup(name).cloned(),
            Tier::Eventual => self.eventual.lookup(name),
            Tier::Consistent => self.consistent.as_ref().and_then(|c| c.lookup(name)).map(|reg| reg.pid),
        }
    }

    /// Sends `message` to the process registered under `name` (resolved as [`Registry::lookup`]),
    /// locally or across the cluster. A consistent name's send carries the fencing token this
    /// node resolved it with; the node hosting the holder refuses it (`EpochMismatch`) if the
    /// registration changed meanwhile.
    pub fn send<M>(&self, name: &str, message: M) -> Result<Pid, RegistryError>
    where
        M: Message + Serialize,
    {
        if lock(&self.local).lookup(name).is_none()
            && let Some(holder) = self.consistent.as_ref().and_then(|c| c.lookup(name))
        {
            self.processes.send_fenced(&holder.pid, name, holder.fence_token, message)?;
            return Ok(holder.pid);
        }
        let (_, pid) = self.lookup(name).ok_or(RegistryError::NotFound)?;
        self.processes.send_to(&pid, message)?;
        Ok(pid)
    }

    /// Every (name, pid) of `tier` visible on this node, sorted by name.
    pub fn list(&self, tier: Tier) -> Result<Vec<(String, Pid)>, RegistryError> {
        match tier {
            Tier::Local => Ok(lock(&self.local).list()),
            Tier::Eventual => Ok(self.eventual.list()),
            Tier::Consistent => {
                Ok(self.consistent_tier()?.list().0.into_iter().map(|(name, reg)| (name, reg.pid)).collect())
            }
        }
    }

    /// The eventual tier's handle.
    pub fn eventual(&self) -> &EventualTier {
        &self.eventual
    }

    /// A member is up (the node's membership pump calls this; idempotent).
    pub fn member_up(&self, member: &MemberInfo) {
        self.eventual.member_event(&MembershipEvent::Up(member.clone()));
    }

    /// A member is down or left (the node's membership pump calls this; idempotent).
    pub fn member_down(&self, member: &MemberInfo) {
        self.eventual.member_event(&MembershipEvent::Down(member.clone()));
    }

    /// Stops the tiers' tasks.
    pub async fn shutdown(&self) {
        if let Some(consistent) = &self.consistent {
            consistent.shutdown().await;
        }
        self.eventual.shutdown().await;
    }
}
