//! The probe workload (SPEC 9.2): processes that count what they receive, so chaos runs and
//! acceptance tests can drive a cluster from outside through `/admin/probe/*`.
//!
//! A probe is an ordinary hosted process (a ractor actor in the node's process table): it joins
//! groups, receives broadcasts, exits on request (normal, panic, kill) exactly like a user process,
//! so whatever the probes observe is what applications observe. Its only job is to count the
//! payloads it receives into a per-node counter.
//!
//! Invariants: only with chaos enabled (the HTTP layer answers 404 otherwise); at most
//! [`MAX_PROBES`] live probes per node and [`MAX_PROBES_PER_REQUEST`] per spawn request; the
//! live-probe set is maintained by an exit hook, so exited probes leave it exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cohort_actors::ProcessRef;
use cohort_actors::{ExitHook, ExitReason, Pid, ProcessHost, Processes};
use cohort_registry::NameRevoked;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

/// Most live probes on one node.
pub const MAX_PROBES: usize = 100_000;
/// Most probes one spawn request creates.
pub const MAX_PROBES_PER_REQUEST: usize = 10_000;

/// What a probe receives. Broadcasts to probes carry `Payload`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ProbeMsg {
    /// Counted.
    Payload(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// Makes the handler panic: the `panic` exit of `POST /admin/probe/exit`.
    Crash,
    /// Its eventual name was won by a concurrent registration elsewhere (counted).
    Revoked(NameRevoked),
}

impl From<NameRevoked> for ProbeMsg {
    fn from(notice: NameRevoked) -> Self {
        ProbeMsg::Revoked(notice)
    }
}

/// MessagePack encodes `Vec<u8>` as an array of integers by default; as bin it is compact.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// Encode a probe payload as it travels in a broadcast.
pub fn encode_payload(bytes: usize) -> Vec<u8> {
    rmp_serde::to_vec(&ProbeMsg::Payload(vec![0xAB; bytes])).unwrap_or_default()
}

struct ProbeActor;

impl Actor for ProbeActor {
    type Msg = ProbeMsg;
    type State = Counters;
    type Arguments = Counters;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        counter: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(counter)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        counter: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProbeMsg::Payload(_) => {
                counter.received.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            ProbeMsg::Revoked(notice) => {
                tracing::info!(name = %notice.name, probe = %notice.pid, winner = %notice.winner, "probe: NameRevoked");
                counter.revoked.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            ProbeMsg::Crash => panic!("probe asked to panic through POST /admin/probe/exit"),
        }
    }
}

/// Why a probe request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The per-node or per-request bound.
    #[error("QueueSaturated: {0}")]
    Limit(String),
    /// The process table refused the spawn.
    #[error("{0}")]
    Spawn(String),
}

/// The node's probes: the live set and the received counter. Cheap to clone.
#[derive(Clone)]
pub struct Probes {
    inner: Arc<Inner>,
}

/// What every probe of a node counts into.
#[derive(Clone, Default)]
struct Counters {
    received: Arc<AtomicU64>,
    revoked: Arc<AtomicU64>,
}

struct Inner {
    processes: Processes,
    live: Mutex<HashSet<Pid>>,
    counters: Counters,
}

struct ForgetExited(Arc<Inner>);

impl ExitHook for ForgetExited {
    fn on_exit(&self, pid: &Pid, _reason: &ExitReason) {
        self.0.live.lock().unwrap_or_else(|p| p.into_inner()).remove(pid);
    }
}

impl Probes {
    /// The probe registry of a node, removing exited probes through an exit hook.
    pub fn new(processes: Processes) -> Self {
        let inner = Arc::new(Inner { processes, live: Mutex::new(HashSet::new()), counters: Counters::default() });
        inner.processes.add_exit_hook(Arc::new(ForgetExited(inner.clone())));
        Self { inner }
    }

    /// Spawn `count` probes.
    pub async fn spawn(&self, count: usize) -> Result<Vec<Pid>, ProbeError> {
        if count > MAX_PROBES_PER_REQUEST {
            return Err(ProbeError::Limit(format!("at most {MAX_PROBES_PER_REQUEST} probes per request")));
        }
        if self.live() + count > MAX_PROBES {
            return Err(ProbeError::Limit(format!("at most {MAX_PROBES} probes per node")));
        }
        let mut pids = Vec::with_capacity(count);
        for _ in 0..count {
            let (pid, _) = self
                .inner
                .processes
                .spawn(ProbeActor, self.inner.counters.clone())
                .await
                .map_err(|e| ProbeError::Spawn(e.to_string()))?;
            self.inner.live.lock().unwrap_or_else(|p| p.into_inner()).insert(pid.clone());
            pids.push(pid);
        }
        Ok(pids)
    }

    /// Whether `pid` is a live probe of this node.
    pub fn is_probe(&self, pid: &Pid) -> bool {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner()).contains(pid)
    }

    /// Live probes.
    pub fn live(&self) -> usize {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Payloads received by this node's probes since boot.
    pub fn received(&self) -> u64 {
        self.inner.counters.received.load(Ordering::Relaxed)
    }

    /// `NameRevoked` notices received by this node's probes since boot.
    pub fn revoked(&self) -> u64 {
        self.inner.counters.revoked.load(Ordering::Relaxed)
    }

    /// The typed handle of a live probe (for registering it by name with revocation notices).
    pub fn probe_ref(&self, pid: &Pid) -> Option<ProcessRef<ProbeMsg>> {
        if !self.is_probe(pid) {
            return None;
        }
        self.inner.processes.lookup::<ProbeMsg>(pid)
    }

    /// The process table the probes live in.
    pub fn processes(&self) -> &Processes {
        &self.inner.processes
    }
}
