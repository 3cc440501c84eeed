//! The node's cluster subsystems: SWIM membership, the internode transport, and the pump that
//! makes everything that follows membership (transport peers, remote process monitors, pg scopes)
//! follow membership's view.
//!
//! Membership decides who is in the cluster; the transport only connects to members that
//! membership reports `Up` and drops those reported `Down` or `Left`. The pump applies events in
//! the order membership emitted them; if it falls behind (the event channel is bounded and lag is
//! counted) it resynchronises from membership's published snapshot instead of guessing.
//!
//! It also owns the cluster's health: the `gossip` activity check (the membership actor's loop
//! keeps turning) and the `cluster` readiness gate (the node has joined: at least one other member
//! alive, or no seeds configured).

use std::time::{Duration, Instant};

use cohort_actors::Processes;
use cohort_actors::pg::PgService;
use cohort_actors::supervisor::{ChildError, StopSignal};
use cohort_cluster::auth::ClusterSecret;
use cohort_cluster::membership::{EventRecvError, Membership, MembershipConfig};

use crate::events::{DecisionKind, membership_decision};
use cohort_cluster::net::transport::{Transport, TransportConfig};
use cohort_cluster::secure::Keyring;
use cohort_cluster::{FaultInjector, MemberAddrs, MemberInfo, MemberState, MembershipEvent, NodeId};
use cohort_registry::Registry;

use crate::config::Config;
use crate::health::{CheckResult, Health, HealthError, ReadinessGate};
use crate::node::BOOT_GRACE;

/// Silence of the membership actor's loop after which the `gossip` check fails. The loop turns at
/// least every gossip period (200 ms); 5 s of silence means it is stuck or starved.
pub const GOSSIP_MAX_SILENCE: Duration = Duration::from_secs(5);
/// How often the pump refreshes the `cluster` readiness gate between events.
pub const READINESS_REFRESH: Duration = Duration::from_secs(1);

/// Why the cluster subsystems could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    /// The cluster secret is unusable.
    #[error("cluster_secret_file: {0}")]
    Secret(String),
    /// The next cluster secret (key rotation) is unusable.
    #[error("cluster_secret_file_next: {0}")]
    SecretNext(String),
    /// Membership refused its configuration or socket.
    #[error("membership: {0}")]
    Membership(#[from] cohort_cluster::membership::MembershipError),
    /// The transport refused its configuration or listener.
    #[error("internode transport: {0}")]
    Transport(#[from] cohort_cluster::net::transport::TransportError),
    /// A health check could not be registered.
    #[error("health registry: {0}")]
    Health(#[from] HealthError),
}

/// The cluster secret: the key in `cluster_secret_file` (hex or base64), or a fresh random secret
/// when none is configured (the node can then only form a cluster alone; the start log says so).
pub fn load_secret(config: &Config) -> Result<ClusterSecret, ClusterStartError> {
    match &config.cluster_secret_file {
        Some(path) => {
            crate::config::warn_if_readable_by_others("cluster_secret_file", path);
            crate::config::read_cluster_secret(path).map_err(ClusterStartError::Secret)
        }
        None => {
            tracing::warn!(
                "no cluster_secret_file: using a random secret; no other node can join this one \
                 (give every node the same secret file to form a cluster)"
            );
            Ok(ClusterSecret::generate())
        }
    }
}

/// The next cluster secret, from `cluster_secret_file_next` when it is set: a second key accepted
/// during a rotation window (see docs/operations.md, "Rotating the cluster key").
pub fn load_secret_next(config: &Config) -> Result<Option<ClusterSecret>, ClusterStartError> {
    match &config.cluster_secret_file_next {
        Some(path) => {
            crate::config::warn_if_readable_by_others("cluster_secret_file_next", path);
            crate::config::read_cluster_secret(path).map(Some).map_err(ClusterStartError::SecretNext)
        }
        None => Ok(None),
    }
}

/// The running cluster subsystems.
pub(crate) struct ClusterHandles {
    pub membership: Membership,
    pub transport: Transport,
}

/// Start membership and the transport on the node's bound sockets.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    config: &Config,
    id: &NodeId,
    addrs: MemberAddrs,
    gossip_socket: std::net::UdpSocket,
    internode_listener: std::net::TcpListener,
    faults: &FaultInjector,
    registry: &prometheus::Registry,
) -> Result<ClusterHandles, ClusterStartError> {
    let secret = load_secret(config)?;
    // The keys of the wire (issue 14): derived per purpose and bound to the cluster name; during
    // a rotation the next secret's keys are accepted too (we send with the current one).
    let next = load_secret_next(config)?;
    let keys = Keyring::new(&config.cluster_name, &secret, next.as_ref());
    let local = MemberInfo {
        id: id.clone(),
        addrs,
        raft_eligible: config.raft_eligible,
        failure_domain: config.failure_domain.clone(),
    };
    let membership_config = MembershipConfig { seeds: config.seeds.clone(), ..MembershipConfig::default() };
    let membership =
        Membership::start(local, keys.clone(), gossip_socket, faults.clone(), membership_config, registry).await?;
    let transport = match Transport::start(
        id.clone(),
        keys,
        internode_listener,
        faults.clone(),
        TransportConfig::default(),
        registry,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            membership.leave().await;
            return Err(e.into());
        }
    };
    // A refused dial is a dead process's signature: membership confirms it and downs the member
    // within a second (docs/architecture.md "Failure detection").
    let reporter = membership.clone();
    transport.on_peer_gone(Box::new(move |peer| reporter.report_connection_refused(peer)));
    Ok(ClusterHandles { membership, transport })
}

/// Register the `gossip` liveness check.
pub(crate) fn register_checks(health: &Health, membership: &Membership) -> Result<(), HealthError> {
    let m = membership.clone();
    health.register("gossip", BOOT_GRACE, move |now: Instant| {
        let silent = now.saturating_duration_since(m.last_activity());
        if silent <= GOSSIP_MAX_SILENCE {
            CheckResult {
                ok: true,
                detail: format!(
                    "membership loop active {} ms ago; local health factor {:.2}",
                    silent.as_millis(),
                    m.local_health_factor()
                ),
            }
        } else {
            CheckResult { ok: false, detail: format!("membership loop silent for {} ms", silent.as_millis()) }
        }
    })
}

/// Everything that follows membership: the transport's peers, remote monitors (`noconnection`)
/// and pg scopes (discover + sync on up, removal on down).
#[derive(Clone)]
pub(crate) struct Followers {
    pub transport: Transport,
    pub processes: Processes,
    pub pg: PgService,
    pub registry: Registry,
    /// Where membership changes are recorded as decisions (`crate::events`).
    pub decisions: crate::events::DecisionLog,
}

impl Followers {
    fn up(&self, member: &MemberInfo) {
        self.transport.peer_up(member);
        self.pg.member_up(member);
        self.registry.member_up(member);
    }

    fn down(&self, member: &MemberInfo) {
        self.registry.member_down(member);
        self.pg.member_down(&member.id);
        self.processes.node_down(&member.id);
        self.transport.peer_down(member);
    }
}

/// The pump: membership events -> followers, and the `cluster` readiness gate. Runs under the
/// node supervisor until `stop` fires; each (re)start first resynchronises from membership's view,
/// so a restarted pump misses nothing. Membership closing is an error (the supervisor decides).
pub(crate) async fn pump(
    membership: Membership,
    followers: Followers,
    gate: ReadinessGate,
    stop: StopSignal,
) -> Result<(), ChildError> {
    let local = membership.local().id.clone();
    let mut events = membership.subscribe();
    // Events before the subscription are in the snapshot.
    resync(&membership, &followers, &local);
    let mut refresh = tokio::time::interval(READINESS_REFRESH);
    loop {
        gate.set(membership.is_joined());
        tokio::select! {
            _ = stop.wait() => break,
            _ = refresh.tick() => {}
            event = events.recv() => match event {
                Ok(MembershipEvent::Up(m)) if m.id != local => {
                    followers.decisions.record(membership_decision(DecisionKind::MemberUp, &m, "membership reported it reachable"));
                    followers.up(&m);
                }
                Ok(MembershipEvent::Down(m)) if m.id != local => {
                    followers.decisions.record(membership_decision(
                        DecisionKind::MemberDown,
                        &m,
                        "its suspicion expired unrefuted, or its internode port refused connections",
                    ));
                    followers.down(&m);
                }
                Ok(MembershipEvent::Left(m)) if m.id != local => {
                    followers.decisions.record(membership_decision(DecisionKind::MemberLeft, &m, "it announced a graceful leave"));
                    followers.down(&m);
                }
                Ok(_) => {}
                Err(EventRecvError::Lagged { skipped }) => {
                    tracing::warn!(skipped, "membership events lagged; resynchronising from the view");
                    resync(&membership, &followers, &local);
                }
                Err(EventRecvError::Closed) => {
                    gate.set(false);
                    return Err(ChildError::failed("membership closed its event channel"));
                }
            },
        }
    }
    gate.set(false);
    Ok(())
}

/// Make the followers follow membership's published view (after a lag, and at start). Both
/// `up` and `down` are idempotent for a member already in that state.
fn resync(membership: &Membership, followers: &Followers, local: &NodeId) {
    for row in membership.members().iter().filter(|r| !r.is_self && r.info.id != *local) {
        match row.state {
            MemberState::Alive | MemberState::Suspect => followers.up(&row.info),
            MemberState::Down | MemberState::Left => followers.down(&row.info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn secrets_load_from_base64_and_hex_files_and_the_next_one_is_optional() {
        let dir = std::env::temp_dir().join(format!("cohort-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let current = ClusterSecret::generate();
        let next = ClusterSecret::generate();
        let mut config = Config {
            cluster_secret_file: Some(key_file(&dir, "current", &format!("{}\n", current.to_base64()))),
            ..Config::default()
        };
        assert_eq!(load_secret(&config).unwrap().to_hex(), current.to_hex());
        assert!(load_secret_next(&config).unwrap().is_none());

        config.cluster_secret_file_next = Some(key_file(&dir, "next", &next.to_hex()));
        assert_eq!(load_secret_next(&config).unwrap().unwrap().to_hex(), next.to_hex());

        config.cluster_secret_file_next = Some(key_file(&dir, "short", "0123456789abcdef0123456789abcdef"));
        let error = load_secret_next(&config).unwrap_err().to_string();
        assert!(error.starts_with("cluster_secret_file_next: ") && error.contains("16 bytes"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
