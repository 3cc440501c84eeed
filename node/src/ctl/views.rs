//! The admin API answers as `cohort ctl` reads them (docs/operations.md "HTTP endpoints").
//!
//! Role: typed, read-only mirrors of the node's JSON, holding only what the tables show. Unknown
//! fields are ignored (a newer node may add some); a missing or mistyped field is a clear
//! [`CtlError::BadAnswer`] naming the request, never a panic.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::CtlError;

/// Read `value` (the answer to `what`) as a `T`.
pub fn parse<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T, CtlError> {
    T::deserialize(value).map_err(|e| CtlError::BadAnswer { what: what.to_string(), problem: e.to_string() })
}

/// `GET /admin/node`.
#[derive(Debug, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub incarnation: u64,
    pub version: String,
    pub uptime_s: u64,
    pub addrs: NodeAddrs,
}

/// A node's listeners.
#[derive(Debug, Deserialize)]
pub struct NodeAddrs {
    pub http: String,
    pub gossip: String,
    pub internode: String,
}

/// `GET /admin/cluster/members`.
#[derive(Debug, Deserialize)]
pub struct Members {
    pub members: Vec<Member>,
}

/// One member row.
#[derive(Debug, Deserialize)]
pub struct Member {
    pub node: String,
    pub incarnation: u64,
    pub state: String,
    pub addrs: NodeAddrs,
    pub raft_eligible: bool,
    #[serde(default)]
    pub failure_domain: String,
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// `GET /livez` and `GET /readyz` (200 or 503).
#[derive(Debug, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// One health check or readiness gate.
#[derive(Debug, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

/// `GET /admin/raft`.
#[derive(Debug, Deserialize)]
pub struct Raft {
    pub raft_id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub last_contact_ms: Option<u64>,
    pub quorum_reachable: bool,
    pub storage: String,
}

/// A `RootToken`: `{"term","index"}`.
#[derive(Debug, Deserialize, Clone, Copy)]
pub struct Token {
    pub term: u64,
    pub index: u64,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The node's own spelling (RootToken's Display): index@term.
        write!(f, "{}@{}", self.index, self.term)
    }
}

/// `GET /admin/planes`.
#[derive(Debug, Deserialize)]
pub struct Planes {
    pub control: Control,
    pub execution: Execution,
}

/// The control plane.
#[derive(Debug, Deserialize)]
pub struct Control {
    pub root_token: Token,
    pub current_root_token: Token,
    pub root_lag: u64,
    pub catch_up_state: String,
    pub degraded_mode: String,
    #[serde(default)]
    pub transitions: Vec<Transition>,
}

/// A voter-set transition.
#[derive(Debug, Deserialize)]
pub struct Transition {
    pub id: TransitionId,
    pub phase: String,
    #[serde(default)]
    pub reason: String,
}

/// `{"term","seq"}`.
#[derive(Debug, Deserialize)]
pub struct TransitionId {
    pub term: u64,
    pub seq: u64,
}

/// The execution plane.
#[derive(Debug, Deserialize)]
pub struct Execution {
    pub restart_state: RestartState,
    pub raft_actor_restarts: u64,
    #[serde(default)]
    pub admission: BTreeMap<String, u64>,
    pub fence_rejections: u64,
}

/// `{"state", "reason"?, "applied_index"?}`.
#[derive(Debug, Deserialize)]
pub struct RestartState {
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /admin/transport`.
#[derive(Debug, Deserialize)]
pub struct Transport {
    pub peers: Vec<Peer>,
}

/// One peer's connection.
#[derive(Debug, Deserialize)]
pub struct Peer {
    pub node: String,
    pub connected: bool,
    pub classes: Vec<ClassQueue>,
}

/// One traffic class's queue to a peer.
#[derive(Debug, Deserialize)]
pub struct ClassQueue {
    pub class: String,
    pub depth: u64,
    pub capacity: u64,
    pub dropped: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// `GET /admin/registry/{tier}`.
#[derive(Debug, Deserialize)]
pub struct Names {
    pub names: Vec<NameRow>,
    #[serde(default)]
    pub witness: Option<Witness>,
}

/// One registered name.
#[derive(Debug, Deserialize)]
pub struct NameRow {
    pub name: String,
    pub pid: String,
    #[serde(default)]
    pub fence_token: Option<u64>,
}

/// The read witness of a consistent-tier answer.
#[derive(Debug, Deserialize)]
pub struct Witness {
    pub served_root_token: Token,
    pub current_root_token: Token,
    pub root_lag: u64,
    pub served_freshness: String,
    pub served_by_leader: bool,
    pub catch_up_state: String,
    pub degraded_mode: String,
}

/// `GET /admin/registry/lookup/{name}`.
#[derive(Debug, Deserialize)]
pub struct Lookup {
    pub name: String,
    pub pid: String,
    pub tier: String,
    #[serde(default)]
    pub fence_token: Option<u64>,
    #[serde(default)]
    pub witness: Option<Witness>,
}

/// `GET /admin/pg/{scope}/groups`.
#[derive(Debug, Deserialize)]
pub struct Groups {
    pub groups: Vec<GroupRow>,
}

/// One group's counts.
#[derive(Debug, Deserialize)]
pub struct GroupRow {
    pub group: String,
    pub members: u64,
    pub local_members: u64,
}

/// `GET /admin/pg/{scope}/groups/{group}`.
#[derive(Debug, Deserialize)]
pub struct Group {
    pub members: Vec<String>,
    pub local_members: Vec<String>,
}

/// `GET|POST|DELETE /admin/faults`.
#[derive(Debug, Deserialize)]
pub struct Faults {
    pub enabled: bool,
    pub rules: FaultRules,
}

/// `{"rules":[...]}`.
#[derive(Debug, Deserialize)]
pub struct FaultRules {
    pub rules: Vec<FaultRule>,
}

/// One fault rule as the node reports it.
#[derive(Debug, Deserialize)]
pub struct FaultRule {
    pub peer: String,
    pub direction: String,
    pub drop: f64,
    pub delay_ms: u64,
    pub jitter_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_shape_is_a_bad_answer_naming_the_request_and_field() {
        let e = parse::<Members>("GET /admin/cluster/members", &serde_json::json!({"members": 5})).unwrap_err();
        assert!(matches!(e, CtlError::BadAnswer { .. }));
        let text = e.to_string();
        assert!(text.contains("GET /admin/cluster/members") && text.contains("invalid type"), "{text}");
        let e = parse::<Raft>("GET /admin/raft", &serde_json::json!({"role": "leader"})).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }

    #[test]
    fn unknown_fields_from_a_newer_node_are_ignored() {
        let v = serde_json::json!({"status": "ready", "checks": [], "new_field": 1});
        assert_eq!(parse::<Health>("GET /readyz", &v).unwrap().status, "ready");
    }
}
