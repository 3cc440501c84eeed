//! The decision log: what this node decided or saw decided about the cluster, with the evidence,
//! in a bounded ring with a sequence number (issue 13).
//!
//! Role: an operator asks *why* — why a member is down, why the voter set changed, why reads are
//! refused. Every node keeps its own log: [`DecisionLog::record`] appends a [`Decision`] (typed,
//! SPEC names), logs it at its level inside a `decision` span (an OTLP span event when telemetry
//! export is on), counts it (`cohort_events_total{kind}`) and hands it to the
//! live subscribers (`GET /admin/events/stream`). `GET /admin/events?since=SEQ&kind=..` reads the
//! ring.
//!
//! Where decisions come from: membership events (`MemberUp`, `MemberDown`, `MemberLeft`) from the
//! cluster pump as they happen; the rest from [`Observer`], a pure differ the node runs once a
//! second over what the subsystems publish (membership's view for suspicions, the consistent
//! tier's status and planes for leaders, voter transitions and degraded modes, the transport's
//! per-class drop counters, the raft actor's restarts).
//!
//! Invariants:
//! - Bounded: the ring holds [`DecisionLog::capacity`] decisions (`events.capacity`); the oldest
//!   is evicted and counted (`cohort_events_evicted_total`), and a reader asking for evicted
//!   sequence numbers is told so (`missed`). Live subscribers share a bounded broadcast channel:
//!   a slow one is told how many it missed and never slows the node.
//! - Sequence numbers start at 1 and never repeat within a node's run (an incarnation).
//! - No peer-chosen string is a metric label: labels are the [`DecisionKind`] names only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use cohort_cluster::member::MemberView;
use cohort_cluster::{MemberInfo, MemberState};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Serialize;
use tokio::sync::broadcast;

/// Default ring size (`events.capacity`).
pub const DEFAULT_EVENTS_CAPACITY: usize = 4096;
/// Smallest and largest ring accepted.
pub const EVENTS_CAPACITY_RANGE: std::ops::RangeInclusive<usize> = 16..=1_000_000;
/// Decisions a live subscriber may fall behind before it is told it missed some.
pub const STREAM_BACKLOG: usize = 1024;
/// Most decisions one `GET /admin/events` returns.
pub const MAX_EVENTS_PER_READ: usize = 1000;

/// What kind of decision (the `kind` field and the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub enum DecisionKind {
    /// A member joined, or came back (a new incarnation, or the same one after a partition).
    MemberUp,
    /// A member is suspected in this node's view.
    MemberSuspected,
    /// A member was declared down.
    MemberDown,
    /// A member left gracefully.
    MemberLeft,
    /// The consistent tier has a (new) leader.
    LeaderElected,
    /// A voter-set transition was proposed, completed or abandoned.
    VoterTransition,
    /// This node's degraded mode changed (what reads it may serve).
    DegradedModeChanged,
    /// Frames of a class to or from a peer were dropped or refused: a full queue, a lost
    /// connection, or an injected fault (the transport counts them together per class).
    FramesDropped,
    /// A supervised subsystem was restarted.
    SubsystemRestarted,
    /// A local process lost an eventual-tier name to a registration made elsewhere (a merge
    /// after a partition, or two registrations at the same moment).
    NameRevoked,
}

impl DecisionKind {
    /// Every kind, in a stable order.
    pub const ALL: [DecisionKind; 10] = [
        Self::MemberUp,
        Self::MemberSuspected,
        Self::MemberDown,
        Self::MemberLeft,
        Self::LeaderElected,
        Self::VoterTransition,
        Self::DegradedModeChanged,
        Self::FramesDropped,
        Self::SubsystemRestarted,
        Self::NameRevoked,
    ];

    /// The name used in JSON, filters and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemberUp => "MemberUp",
            Self::MemberSuspected => "MemberSuspected",
            Self::MemberDown => "MemberDown",
            Self::MemberLeft => "MemberLeft",
            Self::LeaderElected => "LeaderElected",
            Self::VoterTransition => "VoterTransition",
            Self::DegradedModeChanged => "DegradedModeChanged",
            Self::FramesDropped => "FramesDropped",
            Self::SubsystemRestarted => "SubsystemRestarted",
            Self::NameRevoked => "NameRevoked",
        }
    }

    /// Parses a kind name (as in `?kind=MemberDown,LeaderElected`).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Whether it is worth a warning in the logs (something an operator should look at).
    fn is_warning(self) -> bool {
        matches!(self, Self::MemberDown | Self::FramesDropped | Self::SubsystemRestarted)
    }
}

/// One decision with its evidence: `kind`, the subject, and kind-specific fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// What kind.
    pub kind: DecisionKind,
    /// Who or what it is about (a node id `name.incarnation`, a peer name, a subsystem).
    pub subject: String,
    /// One line for people.
    pub summary: String,
    /// The evidence, as structured fields (bounded: set by this node, not by peers).
    pub evidence: serde_json::Value,
}

/// A [`Decision`] as recorded: with its sequence number and wall-clock time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recorded {
    /// 1, 2, ... within this node's run.
    pub seq: u64,
    /// Milliseconds since the Unix epoch (this node's clock).
    pub at_ms: u64,
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
}

/// What a reader of the ring gets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Page {
    /// The decisions after `since`, oldest first, at most the limit.
    pub events: Vec<Recorded>,
    /// The `since` to ask for next.
    pub next: u64,
    /// Whether decisions after `since` were evicted before this read (the reader missed some).
    pub missed: bool,
    /// Decisions evicted from the ring since boot.
    pub evicted: u64,
}

struct Ring {
    entries: VecDeque<Recorded>,
    next_seq: u64,
    evicted: u64,
}

/// The node's decision log. Cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    ring: Arc<Mutex<Ring>>,
    capacity: usize,
    live: broadcast::Sender<Recorded>,
    recorded: IntCounterVec,
    evicted: IntCounter,
}

impl DecisionLog {
    /// A log of `capacity` decisions, its metrics registered in `registry` (every kind at 0).
    pub fn new(capacity: usize, registry: &Registry) -> Result<Self, prometheus::Error> {
        let recorded = IntCounterVec::new(
            Opts::new("cohort_events_total", "Decisions recorded in this node's decision log, by kind."),
            &["kind"],
        )?;
        let evicted =
            IntCounter::new("cohort_events_evicted_total", "Decisions evicted from the bounded decision log.")?;
        registry.register(Box::new(recorded.clone()))?;
        registry.register(Box::new(evicted.clone()))?;
        for kind in DecisionKind::ALL {
            recorded.with_label_values(&[kind.as_str()]).inc_by(0);
        }
        let (live, _) = broadcast::channel(STREAM_BACKLOG);
        let ring = Ring { entries: VecDeque::new(), next_seq: 1, evicted: 0 };
        Ok(Self { ring: Arc::new(Mutex::new(ring)), capacity: capacity.max(1), live, recorded, evicted })
    }

    /// How many decisions the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records `decision` now: ring, log line, counter, live subscribers. Returns its sequence.
    pub fn record(&self, decision: Decision) -> u64 {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // Inside a span of its own, so that with OTLP on each decision is exported as a span
        // event (logs outside any span are not exported as traces).
        let span = tracing::info_span!("decision", kind = decision.kind.as_str(), subject = %decision.subject);
        let _entered = span.enter();
        if decision.kind.is_warning() {
            tracing::warn!(kind = decision.kind.as_str(), subject = %decision.subject, evidence = %decision.evidence, "decision: {}", decision.summary);
        } else {
            tracing::info!(kind = decision.kind.as_str(), subject = %decision.subject, evidence = %decision.evidence, "decision: {}", decision.summary);
        }
        self.recorded.with_label_values(&[decision.kind.as_str()]).inc();
        let recorded = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let seq = ring.next_seq;
            ring.next_seq += 1;
            if ring.entries.len() >= self.capacity {
                ring.entries.pop_front();
                ring.evicted += 1;
                self.evicted.inc();
            }
            let recorded = Recorded { seq, at_ms, decision };
            ring.entries.push_back(recorded.clone());
            recorded
        };
        let seq = recorded.seq;
        // No subscriber is fine; a slow one sees `Lagged` on its side.
        let _ = self.live.send(recorded);
        seq
    }

    /// The decisions after `since` (0: from the start) of the given kinds (empty: all), oldest
    /// first, at most `limit` (capped at [`MAX_EVENTS_PER_READ`]).
    pub fn read(&self, since: u64, kinds: &[DecisionKind], limit: usize) -> Page {
        let limit = limit.clamp(1, MAX_EVENTS_PER_READ);
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // A `since` from the future (a reader that followed an earlier run of this node, whose
        // numbers start again at 1) means "from now on", not "never".
        let since = since.min(ring.next_seq - 1);
        let oldest = ring.entries.front().map_or(ring.next_seq, |r| r.seq);
        let missed = since.saturating_add(1) < oldest && ring.evicted > 0;
        let mut events = Vec::new();
        let mut next = since.max(oldest.saturating_sub(1));
        for recorded in ring.entries.iter().filter(|r| r.seq > since) {
            if events.len() >= limit {
                break;
            }
            next = recorded.seq;
            if kinds.is_empty() || kinds.contains(&recorded.decision.kind) {
                events.push(recorded.clone());
            }
        }
        Page { events, next, missed, evicted: ring.evicted }
    }

    /// A live subscription: every decision recorded from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Recorded> {
        self.live.subscribe()
    }
}

/// What the [`Observer`] looks at each turn (gathered by the node from its subsystems).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Membership's view.
    pub members: Vec<MemberView>,
    /// This node's local health factor (evidence for suspicions).
    pub local_health_factor: f64,
    /// The consistent tier, when the node runs it.
    pub raft: Option<RaftObserved>,
    /// Per peer and class: frames dropped or refused so far.
    pub queue_drops: BTreeMap<(String, String), u64>,
    /// Per subsystem: supervised restarts so far.
    pub restarts: BTreeMap<String, u64>,
    /// Eventual-tier names local processes lost since the last turn: (name, loser, winner).
    pub revocations: Vec<(String, String, Option<String>)>,
    /// Revocations dropped before they could be taken (the tier's bounded buffer overflowed).
    pub revocations_dropped: u64,
}

/// The eventual tier's conflict rule, as evidence (docs/concepts.md "Registry tiers").
pub const EVENTUAL_CONFLICT_RULE: &str = "the registration whose origin node ranks highest for the name wins: larger SHA-256 of name and node name, then higher incarnation, then node name";

/// The consistent tier as the observer sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftObserved {
    /// Current term.
    pub term: u64,
    /// The leader's name.
    pub leader: Option<String>,
    /// Voters.
    pub voters: Vec<String>,
    /// Degraded mode (its `/admin/planes` name).
    pub degraded_mode: String,
    /// Catch-up state (its `/admin/planes` name).
    pub catch_up_state: String,
    /// Entries behind the newest committed.
    pub root_lag: u64,
    /// Whether a quorum is reachable.
    pub quorum_reachable: bool,
    /// Recent transitions: id -> (phase, reason, steps).
    pub transitions: BTreeMap<String, (String, String, String)>,
}

/// Turns successive [`Observed`] snapshots into decisions. Pure: no clock, no I/O.
#[derive(Debug, Default)]
pub struct Observer {
    suspects: BTreeMap<String, u64>,
    raft: Option<RaftObserved>,
    queue_drops: BTreeMap<(String, String), u64>,
    restarts: BTreeMap<String, u64>,
    primed: bool,
}

impl Observer {
    /// The decisions between the previous snapshot and `now`. The first call only primes the
    /// observer (what was there at boot is not news), except suspicions and degraded modes that
    /// are already abnormal.
    pub fn observe(&mut self, now: &Observed) -> Vec<Decision> {
        let mut out = Vec::new();
        // Suspicions: members suspect now that were not at their incarnation before.
        let mut suspects = BTreeMap::new();
        for row in now.members.iter().filter(|r| !r.is_self && r.state == MemberState::Suspect) {
            let id = row.info.id.to_string();
            let incarnation = row.info.id.incarnation;
            if self.suspects.get(&id) != Some(&incarnation) {
                out.push(Decision {
                    kind: DecisionKind::MemberSuspected,
                    subject: id.clone(),
                    summary: format!("{} is suspect in this node's view", row.info.id),
                    evidence: serde_json::json!({
                        "state": "suspect",
                        "local_health_factor": now.local_health_factor,
                        "detector": "swim: a probe and its indirect probes went unanswered, here or at a peer that gossiped it",
                    }),
                });
            }
            suspects.insert(id, incarnation);
        }
        self.suspects = suspects;

        if let Some(raft) = &now.raft {
            let before = self.raft.clone();
            let leader_changed = before.as_ref().is_none_or(|b| b.leader != raft.leader || b.term != raft.term);
            if leader_changed
                && let Some(leader) = &raft.leader
                && self.primed
            {
                out.push(Decision {
                    kind: DecisionKind::LeaderElected,
                    subject: leader.clone(),
                    summary: format!("{leader} leads the consistent tier at term {}", raft.term),
                    evidence: serde_json::json!({
                        "term": raft.term,
                        "previous_leader": before.as_ref().and_then(|b| b.leader.clone()),
                        "previous_term": before.as_ref().map(|b| b.term),
                        "voters": raft.voters,
                    }),
                });
            }
            let mode_before = before.as_ref().map(|b| b.degraded_mode.as_str());
            if mode_before != Some(raft.degraded_mode.as_str()) && (self.primed || raft.degraded_mode != "healthy") {
                out.push(Decision {
                    kind: DecisionKind::DegradedModeChanged,
                    subject: raft.degraded_mode.clone(),
                    summary: format!("degraded mode {} -> {}", mode_before.unwrap_or("(boot)"), raft.degraded_mode),
                    evidence: serde_json::json!({
                        "from": mode_before,
                        "to": raft.degraded_mode,
                        "catch_up_state": raft.catch_up_state,
                        "root_lag": raft.root_lag,
                        "quorum_reachable": raft.quorum_reachable,
                        "leader": raft.leader,
                    }),
                });
            }
            for (id, (phase, reason, steps)) in &raft.transitions {
                let seen = before.as_ref().and_then(|b| b.transitions.get(id)).map(|(p, _, _)| p.as_str());
                if seen != Some(phase.as_str()) && self.primed {
                    out.push(Decision {
                        kind: DecisionKind::VoterTransition,
                        subject: id.clone(),
                        summary: format!("voter transition {id} {phase}: {reason}"),
                        evidence: serde_json::json!({ "id": id, "phase": phase, "reason": reason, "steps": steps }),
                    });
                }
            }
            self.raft = Some(raft.clone());
        }

        for ((peer, class), &dropped) in &now.queue_drops {
            let before = self.queue_drops.get(&(peer.clone(), class.clone())).copied().unwrap_or(0);
            if dropped > before && self.primed {
                out.push(Decision {
                    kind: DecisionKind::FramesDropped,
                    subject: peer.clone(),
                    summary: format!("{} {class} frames to or from {peer} dropped or refused", dropped - before),
                    evidence: serde_json::json!({
                        "peer": peer,
                        "class": class,
                        "dropped": dropped - before,
                        "total": dropped,
                        "causes": "a full queue, a lost connection or an injected fault: cohort_internode_dropped_total{class,reason} tells them apart",
                    }),
                });
            }
        }
        self.queue_drops = now.queue_drops.clone();

        for (subsystem, &count) in &now.restarts {
            let before = self.restarts.get(subsystem).copied().unwrap_or(0);
            if count > before && self.primed {
                out.push(Decision {
                    kind: DecisionKind::SubsystemRestarted,
                    subject: subsystem.clone(),
                    summary: format!("{subsystem} was restarted by its supervisor ({} time(s))", count - before),
                    evidence: serde_json::json!({ "subsystem": subsystem, "restarts": count - before, "total": count }),
                });
            }
        }
        self.restarts = now.restarts.clone();

        // Revocations are events, not state: each one taken is news, priming or not.
        for (name, loser, winner) in &now.revocations {
            out.push(Decision {
                kind: DecisionKind::NameRevoked,
                subject: name.clone(),
                summary: format!(
                    "{loser} lost the eventual name `{name}` to {}",
                    winner.as_deref().unwrap_or("a registration not yet visible here")
                ),
                evidence: serde_json::json!({
                    "name": name,
                    "loser": loser,
                    "winner": winner,
                    "rule": EVENTUAL_CONFLICT_RULE,
                    "dropped_before": now.revocations_dropped,
                }),
            });
        }
        self.primed = true;
        out
    }
}

/// The decision for a membership event from the pump.
pub fn membership_decision(kind: DecisionKind, member: &MemberInfo, detail: &str) -> Decision {
    let verb = match kind {
        DecisionKind::MemberUp => "is up",
        DecisionKind::MemberDown => "was declared down",
        DecisionKind::MemberLeft => "left",
        _ => "changed",
    };
    Decision {
        kind,
        subject: member.id.to_string(),
        summary: format!("{} {verb}", member.id),
        evidence: serde_json::json!({
            "node": member.id.name,
            "incarnation": member.id.incarnation,
            "gossip": member.addrs.gossip.to_string(),
            "detail": detail,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_cluster::{MemberAddrs, NodeId};

    fn decision(kind: DecisionKind, subject: &str) -> Decision {
        Decision { kind, subject: subject.into(), summary: subject.into(), evidence: serde_json::Value::Null }
    }

    fn row(name: &str, state: MemberState) -> MemberView {
        let addr = "127.0.0.1:1".parse().unwrap();
        MemberView {
            info: MemberInfo {
                id: NodeId::new(name, 1),
                addrs: MemberAddrs { gossip: addr, internode: addr, http: addr },
                raft_eligible: true,
                failure_domain: String::new(),
            },
            state,
            is_self: false,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_counts_evictions_and_tells_a_late_reader() {
        let log = DecisionLog::new(3, &Registry::new()).unwrap();
        for i in 0..5 {
            assert_eq!(log.record(decision(DecisionKind::MemberUp, &format!("n{i}"))), i + 1);
        }
        let page = log.read(0, &[], 100);
        assert_eq!(page.events.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(page.missed, "seqs 1 and 2 were evicted");
        assert_eq!((page.next, page.evicted), (5, 2));
        let page = log.read(4, &[], 100);
        assert_eq!(page.events.len(), 1);
        assert!(!page.missed);
        let page = log.read(5, &[], 100);
        assert!(page.events.is_empty());
        assert_eq!(page.next, 5, "nothing new: ask again from the same place");
        let page = log.read(1_000, &[], 100);
        assert_eq!((page.events.len(), page.next), (0, 5), "a since from another run means from now on");
    }

    #[test]
    fn a_read_filters_by_kind_and_pages_by_limit() {
        let log = DecisionLog::new(100, &Registry::new()).unwrap();
        log.record(decision(DecisionKind::MemberUp, "a"));
        log.record(decision(DecisionKind::MemberDown, "b"));
        log.record(decision(DecisionKind::MemberUp, "c"));
        let downs = log.read(0, &[DecisionKind::MemberDown], 100);
        assert_eq!(downs.events.iter().map(|r| r.decision.subject.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(downs.next, 3, "the reader skips what it filtered out");
        let first = log.read(0, &[], 2);
        assert_eq!((first.events.len(), first.next), (2, 2));
        assert_eq!(log.read(first.next, &[], 2).events[0].decision.subject, "c");
        assert_eq!(DecisionKind::parse("LeaderElected"), Some(DecisionKind::LeaderElected));
        assert_eq!(DecisionKind::parse("leader"), None);
    }

    #[test]
    fn live_subscribers_get_new_decisions_and_a_slow_one_is_told_it_lagged() {
        let log = DecisionLog::new(10, &Registry::new()).unwrap();
        let mut rx = log.subscribe();
        log.record(decision(DecisionKind::MemberUp, "a"));
        assert_eq!(rx.try_recv().unwrap().decision.subject, "a");
        for i in 0..STREAM_BACKLOG + 5 {
            log.record(decision(DecisionKind::MemberUp, &i.to_string()));
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(n)) if n >= 5));
    }

    #[test]
    fn the_observer_reports_changes_not_state() {
        let mut o = Observer::default();
        let raft = |leader: &str, term, mode: &str| RaftObserved {
            term,
            leader: Some(leader.into()),
            voters: vec!["a".into(), "b".into(), "c".into()],
            degraded_mode: mode.into(),
            catch_up_state: "fresh".into(),
            root_lag: 0,
            quorum_reachable: mode == "healthy",
            transitions: BTreeMap::new(),
        };
        let mut seen = Observed {
            members: vec![row("b", MemberState::Alive)],
            local_health_factor: 1.0,
            raft: Some(raft("a", 2, "healthy")),
            ..Observed::default()
        };
        assert!(o.observe(&seen).is_empty(), "the boot state is not news");
        assert!(o.observe(&seen).is_empty());
        seen.members = vec![row("b", MemberState::Suspect)];
        seen.raft = Some(raft("c", 3, "view_only"));
        seen.queue_drops.insert(("b".into(), "user".into()), 7);
        let kinds: Vec<DecisionKind> = o.observe(&seen).into_iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            vec![
                DecisionKind::MemberSuspected,
                DecisionKind::LeaderElected,
                DecisionKind::DegradedModeChanged,
                DecisionKind::FramesDropped
            ]
        );
        assert!(o.observe(&seen).is_empty(), "still suspect, same leader, same drops: nothing new");
        let mut transitions = BTreeMap::new();
        transitions.insert("t3-0".to_string(), ("Proposed".to_string(), "c is down".to_string(), String::new()));
        seen.raft = Some(RaftObserved { transitions: transitions.clone(), ..raft("c", 3, "view_only") });
        seen.restarts.insert("raft".into(), 1);
        let kinds: Vec<DecisionKind> = o.observe(&seen).into_iter().map(|d| d.kind).collect();
        assert_eq!(kinds, vec![DecisionKind::VoterTransition, DecisionKind::SubsystemRestarted]);
        seen.revocations = vec![("svc".into(), "<a.1.7>".into(), Some("<b.1.3>".into()))];
        let revoked = o.observe(&seen);
        assert_eq!(revoked.len(), 1);
        assert_eq!(
            (revoked[0].kind, revoked[0].evidence["winner"].as_str()),
            (DecisionKind::NameRevoked, Some("<b.1.3>"))
        );
    }
}
