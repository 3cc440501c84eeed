//! One lookup API over the tiers (SPEC 7): [`Registry`], the [`Tier`] names, the typed
//! [`RegistryError`] and the [`NameRevoked`] notice.
//!
//! Role: the node owns one [`Registry`]; it holds the local tier's table, the eventual tier's
//! handle and (with issue 6) the consistent tier's. It is the process table's exit hook for all
//! tiers, and the one place that resolves a name: `local -> consistent -> eventual`, or the tier
//! named by the caller.

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
            RegistryError::Unavailable { .. } | RegistryError::Send(_) => "unavailable",
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn consistent_unavailable() -> RegistryError {
    RegistryError::Unavailable { reason: "the consistent tier is not running on this node".into() }
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
        if local + eventual > 0 {
            tracing::debug!(%pid, local, eventual, "registry: names of an exited process removed");
        }
    }
}

impl Registry {
    /// Starts the registry of a node: registers its metrics, starts the eventual tier (gossip
    /// channel, `registry` transport class, anti-entropy task) and installs the exit hook.
    pub fn start(
        processes: Processes,
        membership: Membership,
        transport: Transport,
        registry: &prometheus::Registry,
        config: EventualConfig,
    ) -> Result<Self, RegistryError> {
        let metrics = RegistryMetrics::register(registry)
            .map_err(|error| RegistryError::Unavailable { reason: format!("metrics: {error}") })?;
        let host: Arc<dyn ProcessHost> = Arc::new(processes.clone());
        let eventual = EventualTier::start(host, membership, transport, metrics.clone(), config)?;
        let local = Arc::new(Mutex::new(LocalTable::new()));
        processes.add_exit_hook(Arc::new(Hook {
            local: local.clone(),
            eventual: eventual.clone(),
            metrics: metrics.clone(),
        }));
        Ok(Self { local, eventual, processes, metrics })
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
            Tier::Consistent => Err(consistent_unavailable()),
        };
        let label = match &result {
            Ok(()) => "ok",
            Err(RegistryError::AlreadyRegistered { tier: holder, .. }) if *holder != tier => "held_in_other_tier",
            Err(error) => error.result_label(),
        };
        self.metrics.operation(tier, "register", label);
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
        self.eventual.register(name, pid, 0, sink)
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
            Tier::Consistent => Err(consistent_unavailable()),
        };
        self.metrics.operation(tier, "unregister", result.as_ref().map_or_else(RegistryError::result_label, |_| "ok"));
        result
    }

    /// Resolves `name`: local, then consistent, then eventual.
    pub fn lookup(&self, name: &str) -> Option<(Tier, Pid)> {
        let found = Tier::ALL.into_iter().find_map(|tier| self.resolve(tier, name).map(|pid| (tier, pid)));
        let tier = found.as_ref().map_or(Tier::Local, |(tier, _)| *tier);
        self.metrics.operation(tier, "lookup", if found.is_some() { "ok" } else { "not_found" });
        found
    }

    /// Resolves `name` in `tier` only.
    pub fn lookup_in(&self, tier: Tier, name: &str) -> Result<Pid, RegistryError> {
        let result = match tier {
            Tier::Consistent => Err(consistent_unavailable()),
            tier => self.resolve(tier, name).ok_or(RegistryError::NotFound),
        };
        self.metrics.operation(tier, "lookup", result.as_ref().map_or_else(RegistryError::result_label, |_| "ok"));
        result
    }

    fn resolve(&self, tier: Tier, name: &str) -> Option<Pid> {
        match tier {
            Tier::Local => lock(&self.local).lookup(name).cloned(),
            Tier::Eventual => self.eventual.lookup(name),
            Tier::Consistent => None,
        }
    }

    /// Sends `message` to the process registered under `name` (resolved as [`Registry::lookup`]),
    /// locally or across the cluster.
    pub fn send<M>(&self, name: &str, message: M) -> Result<Pid, RegistryError>
    where
        M: Message + Serialize,
    {
        let (_, pid) = self.lookup(name).ok_or(RegistryError::NotFound)?;
        self.processes.send_to(&pid, message)?;
        Ok(pid)
    }

    /// Every (name, pid) of `tier` visible on this node, sorted by name.
    pub fn list(&self, tier: Tier) -> Result<Vec<(String, Pid)>, RegistryError> {
        match tier {
            Tier::Local => Ok(lock(&self.local).list()),
            Tier::Eventual => Ok(self.eventual.list()),
            Tier::Consistent => Err(consistent_unavailable()),
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
        self.eventual.shutdown().await;
    }
}
