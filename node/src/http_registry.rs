//! Admin endpoints of the name registry (SPEC 9.2): `GET /admin/registry/{tier}`,
//! `GET /admin/registry/lookup/{name}?tier=&freshness=&max_root_lag=&required_index=`,
//! `GET /admin/raft`, `GET /admin/planes`, and the probe workload's
//! `POST /admin/probe/register|unregister|send` (chaos only).
//!
//! Every refusal is the registry's typed error mapped onto the SPEC vocabulary
//! (`AlreadyRegistered` 409, `NotHosted` 404, `NotFound` 404, `Unavailable` 503, `NotLeader` 503,
//! `TimedOut` 504, `EpochMismatch` 409, ...). Names are validated by the registry (1 to 255 bytes);
//! tiers are `local`, `eventual`, `consistent`. A consistent-tier answer carries its
//! `fence_token` and the SPEC 8 read `witness`; without `freshness` a consistent lookup is
//! `best_effort` (this node's view) and its witness says how stale it may be.

use std::str::FromStr;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cohort_actors::Pid;
use cohort_registry::consistent::service::{PlanesStatus, RaftFault, RaftStatus};
use cohort_registry::consistent::{Freshness, ReadRequest, ReadWitness, RootToken};
use cohort_registry::{RegistryError, Tier};
use serde::{Deserialize, Serialize};

use crate::http::{ApiError, HttpState, JsonBody};
use crate::http_pg::{Empty, parse_pids, probes};

/// Map a registry refusal onto the HTTP error vocabulary.
pub(crate) fn registry_error(e: RegistryError) -> ApiError {
    let status = match &e {
        RegistryError::AlreadyRegistered { .. } => StatusCode::CONFLICT,
        RegistryError::NotHosted { .. } | RegistryError::NotRegistered { .. } | RegistryError::NotFound => {
            StatusCode::NOT_FOUND
        }
        RegistryError::InvalidName { .. } | RegistryError::UnknownTier { .. } => StatusCode::BAD_REQUEST,
        RegistryError::Send(cohort_actors::process::SendError::EpochMismatch { .. }) => StatusCode::CONFLICT,
        RegistryError::TooManyNames { .. } | RegistryError::Send(_) => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Unavailable { .. }
        | RegistryError::NotLeader { .. }
        | RegistryError::QueueSaturated { .. }
        | RegistryError::Canceled
        | RegistryError::ReadRefused { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::TimedOut => StatusCode::GATEWAY_TIMEOUT,
    };
    ApiError::new(status, e.reason(), e.to_string())
}

fn tier(s: &str) -> Result<Tier, ApiError> {
    Tier::from_str(s).map_err(registry_error)
}

#[derive(Serialize)]
pub(crate) struct NameRow {
    name: String,
    pid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence_token: Option<u64>,
}

#[derive(Serialize)]
pub(crate) struct NamesBody {
    names: Vec<NameRow>,
    /// The consistent tier's view witness (as a `best_effort` read).
    #[serde(skip_serializing_if = "Option::is_none")]
    witness: Option<ReadWitness>,
}

fn consistent(state: &HttpState) -> Result<&cohort_registry::consistent::service::ConsistentTier, ApiError> {
    state.registry.consistent().ok_or_else(|| {
        registry_error(RegistryError::Unavailable { reason: "the consistent tier is not running on this node".into() })
    })
}

/// `GET /admin/registry/{tier}`: every name visible in the tier on this node, sorted; consistent
/// names with their fencing tokens and the view's witness.
pub(crate) async fn names(State(state): State<HttpState>, Path(t): Path<String>) -> Result<Json<NamesBody>, ApiError> {
    let tier = tier(&t)?;
    if tier == Tier::Consistent {
        let (rows, witness) = consistent(&state)?.list();
        let names = rows
            .into_iter()
            .map(|(name, reg)| NameRow { name, pid: reg.pid.to_string(), fence_token: Some(reg.fence_token) })
            .collect();
        return Ok(Json(NamesBody { names, witness }));
    }
    let rows = state.registry.list(tier).map_err(registry_error)?;
    let names = rows.into_iter().map(|(name, pid)| NameRow { name, pid: pid.to_string(), fence_token: None }).collect();
    Ok(Json(NamesBody { names, witness: None }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LookupQuery {
    tier: Option<String>,
    freshness: Option<String>,
    max_root_lag: Option<u64>,
    /// Read-your-writes: the log index of the caller's own write (its `root_token.index`).
    required_index: Option<u64>,
}

#[derive(Serialize)]
pub(crate) struct LookupBody {
    name: String,
    pid: String,
    tier: Tier,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence_token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    witness: Option<ReadWitness>,
}

/// `GET /admin/registry/lookup/{name}?tier=&freshness=strong|bounded|best_effort&max_root_lag=N`:
/// resolves local -> consistent -> eventual, or in the named tier only. A `freshness` implies the
/// consistent tier; a refused read answers with its reason (no silent downgrade).
pub(crate) async fn lookup(
    State(state): State<HttpState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Result<Json<LookupBody>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let named = query.tier.as_deref().map(tier).transpose()?;
    let consistent_read = named == Some(Tier::Consistent) || query.freshness.is_some();
    if consistent_read {
        if named.is_some_and(|t| t != Tier::Consistent) {
            return Err(ApiError::bad_request("freshness applies to the consistent tier only"));
        }
        let freshness = match query.freshness.as_deref() {
            None => Freshness::BestEffort,
            Some(f) => Freshness::parse(f).ok_or_else(|| {
                ApiError::bad_request(format!("freshness: `{f}` is not strong, bounded or best_effort"))
            })?,
        };
        let mut request = ReadRequest::new(freshness);
        if let Some(lag) = query.max_root_lag {
            request = request.with_max_root_lag(lag);
        }
        if let Some(index) = query.required_index {
            // Tokens order by index first: term 0 asks only that this index be applied.
            request = request.requiring(RootToken::new(0, index));
        }
        let answer = state.registry.lookup_consistent(&name, request).await.map_err(registry_error)?;
        return Ok(Json(LookupBody {
            name,
            pid: answer.pid.to_string(),
            tier: Tier::Consistent,
            fence_token: Some(answer.fence_token),
            witness: Some(answer.witness),
        }));
    }
    let (tier, pid) = match named {
        Some(t) => (t, state.registry.lookup_in(t, &name).map_err(registry_error)?),
        None => state.registry.lookup(&name).ok_or_else(|| registry_error(RegistryError::NotFound))?,
    };
    let (fence_token, witness) = match (tier, state.registry.consistent()) {
        (Tier::Consistent, Some(c)) => match c.read_local(&name, ReadRequest::new(Freshness::BestEffort)) {
            Ok(answer) => (answer.registration.map(|r| r.fence_token), Some(answer.witness)),
            Err(_) => (None, None),
        },
        _ => (None, None),
    };
    Ok(Json(LookupBody { name, pid: pid.to_string(), tier, fence_token, witness }))
}

/// `GET /admin/raft`: role, term, leader, indices, voters, learners, last contact.
pub(crate) async fn raft(State(state): State<HttpState>) -> Result<Json<RaftStatus>, ApiError> {
    Ok(Json(consistent(&state)?.raft_status()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InjectBody {
    fault: RaftFault,
}

/// `POST /admin/raft/inject` (chaos only): feeds this node's raft actor a fault,
/// `{"fault": "malformed_heartbeat"}` (refused and counted before raft-rs sees it) or
/// `{"fault": "panic"}` (the supervisor restarts the actor from its durable state). Proves the
/// SPEC 7 supervision on a real node; the answer is `{"injected": "..."}` once queued.
pub(crate) async fn raft_inject(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<InjectBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    probes(&state)?;
    let tier = consistent(&state)?;
    tier.inject_fault(body.fault).map_err(|a| registry_error(RegistryError::from_admission(a)))?;
    Ok(Json(serde_json::json!({ "injected": body.fault })))
}

/// `GET /admin/planes`: the control plane (RootToken, CatchUpState, DegradedMode, transitions) and
/// the execution plane (RestartState, admissions by reason, writes by outcome).
pub(crate) async fn planes(State(state): State<HttpState>) -> Result<Json<PlanesStatus>, ApiError> {
    Ok(Json(consistent(&state)?.planes()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    tier: String,
    name: String,
    pid: String,
}

fn probe_pid(state: &HttpState, body: &RegisterBody) -> Result<(Tier, Pid), ApiError> {
    probes(state)?;
    let tier = tier(&body.tier)?;
    let pid = parse_pids(std::slice::from_ref(&body.pid))?.remove(0);
    Ok((tier, pid))
}

#[derive(Serialize)]
pub(crate) struct RegisteredBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    fence_token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_token: Option<RootToken>,
    /// A consistent registration answered from the request-id cache: the node retried its own
    /// proposal (its first answer was lost) and this is that same registration, applied at
    /// `fence_token`; `root_token` is the retry's entry.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// `POST /admin/probe/register`: registers a live probe of this node under a name. A probe that
/// loses an eventual name to a concurrent registration counts the `NameRevoked` it is told
/// (`revoked_total` in `/admin/probe/stats`). A consistent registration answers
/// `{"fence_token": N, "root_token": {...}}` once committed (with `"duplicate": true` when the
/// answer came from a retry of the same request).
pub(crate) async fn probe_register(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Json<RegisteredBody>, ApiError> {
    let (tier, pid) = probe_pid(&state, &body)?;
    let Some(probe) = probes(&state)?.probe_ref(&pid) else {
        return Err(registry_error(RegistryError::NotHosted { pid }));
    };
    if tier == Tier::Consistent {
        let done = state.registry.register_consistent(&body.name, &probe).await.map_err(registry_error)?;
        return Ok(Json(RegisteredBody {
            fence_token: Some(done.fence_token),
            root_token: Some(done.root_token),
            duplicate: done.duplicate,
        }));
    }
    state.registry.register(tier, &body.name, &probe).map_err(registry_error)?;
    Ok(Json(RegisteredBody { fence_token: None, root_token: None, duplicate: false }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    name: String,
    /// The fencing token to carry (a consistent name); absent: a plain send by name, which for a
    /// consistent name carries the token this node resolves.
    fence_token: Option<u64>,
    payload_bytes: Option<usize>,
}

#[derive(Serialize)]
pub(crate) struct SentBody {
    pid: String,
}

/// Largest probe payload sent by name, in bytes.
const MAX_SEND_PAYLOAD_BYTES: usize = 64 * 1024;

/// `POST /admin/probe/send`: one probe payload to the holder of a name, optionally carrying an
/// explicit fencing token (a stale one is refused where it lands: `EpochMismatch`, counted).
pub(crate) async fn probe_send(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<Json<SentBody>, ApiError> {
    probes(&state)?;
    let bytes = body.payload_bytes.unwrap_or(16);
    if bytes > MAX_SEND_PAYLOAD_BYTES {
        return Err(ApiError::bad_request(format!("payload_bytes: at most {MAX_SEND_PAYLOAD_BYTES}")));
    }
    let message = crate::probe::ProbeMsg::Payload(vec![0xAB; bytes]);
    let pid = match body.fence_token {
        Some(token) => state.registry.send_fenced(&body.name, token, message),
        None => state.registry.send(&body.name, message),
    }
    .map_err(registry_error)?;
    Ok(Json(SentBody { pid: pid.to_string() }))
}

/// `POST /admin/probe/unregister`: removes this node's registration of the name, which `pid`
/// must hold.
pub(crate) async fn probe_unregister(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Json<Empty>, ApiError> {
    let (tier, pid) = probe_pid(&state, &body)?;
    match state.registry.lookup_in(tier, &body.name) {
        Ok(holder) if holder == pid => {}
        Ok(_) | Err(RegistryError::NotFound) => return Err(registry_error(RegistryError::NotRegistered { tier })),
        Err(e) => return Err(registry_error(e)),
    }
    if tier == Tier::Consistent {
        state.registry.unregister_consistent(&body.name).await.map_err(registry_error)?;
    } else {
        state.registry.unregister(tier, &body.name).map_err(registry_error)?;
    }
    Ok(Json(Empty {}))
}
