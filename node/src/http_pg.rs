//! Admin endpoints for process groups (`GET /admin/pg/...`) and the probe workload
//! (`/admin/probe/*`, chaos only), SPEC 9.2.
//!
//! Pids and group names are strings in JSON; every refusal maps a typed error onto the SPEC
//! vocabulary (`NotHosted`, `NotJoined`, `QueueSaturated`, ...) with a 4xx/5xx status. The probe
//! endpoints answer 404 without chaos, like `/admin/faults`. Request sizes are bounded before any
//! work: pids per request, broadcasts per request, payload bytes.

use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use cohort_actors::pg::{Group, PgService};
use cohort_actors::process::ExitSignal;
use cohort_actors::{PgError, Pid};
use serde::{Deserialize, Serialize};

use crate::http::{ApiError, HttpState, JsonBody};
use crate::probe::{ProbeMsg, Probes, encode_payload};

/// Most pids one probe request names.
pub const MAX_PIDS_PER_REQUEST: usize = 10_000;
/// Most broadcasts one probe request issues.
pub const MAX_BROADCASTS_PER_REQUEST: u64 = 100_000;
/// Largest probe broadcast payload.
pub const MAX_PROBE_PAYLOAD_BYTES: usize = 64 * 1024;

/// Map a pg refusal onto the HTTP error vocabulary.
pub(crate) fn pg_error(e: PgError) -> ApiError {
    let detail = e.to_string();
    match e {
        PgError::NotLocal { .. } | PgError::NotHosted { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "NotHosted", detail)
        }
        PgError::NotJoined { .. } => ApiError::new(StatusCode::NOT_FOUND, "NotJoined", detail),
        PgError::EmptyGroupName
        | PgError::GroupNameTooLong { .. }
        | PgError::BatchTooLarge { .. }
        | PgError::BadScopeName { .. } => ApiError::bad_request(detail),
        PgError::PayloadTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", detail),
        PgError::TooManyGroups { .. }
        | PgError::TooManyMembers { .. }
        | PgError::EventsSaturated { .. }
        | PgError::TooManyScopes { .. }
        | PgError::TooManyMonitors { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "QueueSaturated", detail),
        PgError::ScopeStopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", detail),
        PgError::UnknownPeer { .. } | PgError::StalePeer { .. } | PgError::NotPeerPid { .. } => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", detail)
        }
    }
}

/// A scope that exists (reads never create scopes).
fn existing_scope(pg: &PgService, name: &str) -> Result<cohort_actors::pg::Scope, ApiError> {
    if !pg.scope_names().iter().any(|s| s == name) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("no pg scope `{name}` on this node")));
    }
    pg.scope(name).map_err(pg_error)
}

#[derive(Serialize)]
pub(crate) struct GroupRow {
    group: String,
    members: usize,
    local_members: usize,
}

#[derive(Serialize)]
pub(crate) struct GroupsBody {
    groups: Vec<GroupRow>,
}

/// `GET /admin/pg/{scope}/groups`
pub(crate) async fn groups(
    State(state): State<HttpState>,
    Path(scope): Path<String>,
) -> Result<Json<GroupsBody>, ApiError> {
    let scope = existing_scope(&state.pg, &scope)?;
    let mut groups: Vec<GroupRow> = scope
        .which_groups()
        .into_iter()
        .map(|g| GroupRow {
            members: scope.get_members(g.as_str()).len(),
            local_members: scope.get_local_members(g.as_str()).len(),
            group: g.as_str().to_string(),
        })
        .collect();
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(Json(GroupsBody { groups }))
}

#[derive(Serialize)]
pub(crate) struct GroupBody {
    group: String,
    members: Vec<String>,
    local_members: Vec<String>,
}

/// `GET /admin/pg/{scope}/groups/{group}`: a pid repeated per join occurrence; an unknown group has
/// no members (as Erlang's `pg:get_members/2`).
pub(crate) async fn group(
    State(state): State<HttpState>,
    Path((scope, group)): Path<(String, String)>,
) -> Result<Json<GroupBody>, ApiError> {
    let scope = existing_scope(&state.pg, &scope)?;
    let strings = |pids: &[Pid]| pids.iter().map(Pid::to_string).collect::<Vec<_>>();
    let members = strings(&scope.get_members(&group));
    let local_members = strings(&scope.get_local_members(&group));
    Ok(Json(GroupBody { group, members, local_members }))
}

pub(crate) fn probes(state: &HttpState) -> Result<&Probes, ApiError> {
    state.probes.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the probe workload is only available with chaos enabled (`--chaos` or `chaos.enabled = true`)",
        )
    })
}

pub(crate) fn parse_pids(pids: &[String]) -> Result<Vec<Pid>, ApiError> {
    if pids.len() > MAX_PIDS_PER_REQUEST {
        return Err(ApiError::bad_request(format!("pids: at most {MAX_PIDS_PER_REQUEST} per request")));
    }
    pids.iter()
        .enumerate()
        .map(|(i, p)| Pid::from_str(p).map_err(|e| ApiError::bad_request(format!("pids[{i}]: `{p}`: {e}"))))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpawnBody {
    count: usize,
}

#[derive(Serialize)]
pub(crate) struct PidsBody {
    pids: Vec<String>,
}

/// `POST /admin/probe/spawn`
pub(crate) async fn probe_spawn(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<SpawnBody>,
) -> Result<Json<PidsBody>, ApiError> {
    let pids = probes(&state)?.spawn(body.count).await.map_err(|e| match e {
        crate::probe::ProbeError::Limit(d) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "QueueSaturated", d),
        crate::probe::ProbeError::Spawn(d) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", d),
    })?;
    Ok(Json(PidsBody { pids: pids.iter().map(Pid::to_string).collect() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MembershipBody {
    #[serde(default = "default_scope")]
    scope: String,
    group: String,
    pids: Vec<String>,
}

fn default_scope() -> String {
    cohort_actors::pg::DEFAULT_SCOPE.to_string()
}

#[derive(Serialize)]
pub(crate) struct Empty {}

fn membership_args(
    state: &HttpState,
    body: &MembershipBody,
) -> Result<(cohort_actors::pg::Scope, Group, Vec<Pid>), ApiError> {
    probes(state)?;
    let pids = parse_pids(&body.pids)?;
    let group = Group::new(&body.group).map_err(pg_error)?;
    let scope = state.pg.scope(&body.scope).map_err(pg_error)?;
    Ok((scope, group, pids))
}

/// `POST /admin/probe/join`
pub(crate) async fn probe_join(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<MembershipBody>,
) -> Result<Json<Empty>, ApiError> {
    let (scope, group, pids) = membership_args(&state, &body)?;
    scope.join(&group, &pids).map_err(pg_error)?;
    Ok(Json(Empty {}))
}

/// `POST /admin/probe/leave`
pub(crate) async fn probe_leave(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<MembershipBody>,
) -> Result<Json<Empty>, ApiError> {
    let (scope, group, pids) = membership_args(&state, &body)?;
    scope.leave(&group, &pids).map_err(pg_error)?;
    Ok(Json(Empty {}))
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ExitKind {
    Normal,
    Panic,
    Kill,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExitBody {
    pids: Vec<String>,
    reason: ExitKind,
}

/// `POST /admin/probe/exit`: every pid must be a live process of this node (checked first, so a
/// request either exits all of them or none).
pub(crate) async fn probe_exit(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<ExitBody>,
) -> Result<Json<Empty>, ApiError> {
    let probes = probes(&state)?;
    let pids = parse_pids(&body.pids)?;
    if let Some(p) = pids.iter().find(|p| !probes.is_probe(p)) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NotHosted", format!("{p} is not a live probe of this node")));
    }
    for pid in &pids {
        let sent = match body.reason {
            ExitKind::Normal => probes.processes().exit(pid, ExitSignal::Normal),
            ExitKind::Kill => probes.processes().exit(pid, ExitSignal::Kill),
            ExitKind::Panic => probes.processes().send_to(pid, ProbeMsg::Crash),
        };
        // A probe that exited between the check and now is what the caller asked for anyway.
        if let Err(e) = sent
            && !matches!(e, cohort_actors::process::SendError::NotHosted(_))
        {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.admission(), e.to_string()));
        }
    }
    Ok(Json(Empty {}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BroadcastBody {
    #[serde(default = "default_scope")]
    scope: String,
    group: String,
    #[serde(default = "one")]
    count: u64,
    #[serde(default)]
    payload_bytes: usize,
}

fn one() -> u64 {
    1
}

#[derive(Serialize)]
pub(crate) struct SentBody {
    sent: u64,
    local_delivered: u64,
    remote_frames: u64,
    refused: u64,
}

/// `POST /admin/probe/broadcast`: `count` broadcasts of a `payload_bytes` payload to every member
/// of the group, cluster-wide.
pub(crate) async fn probe_broadcast(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<BroadcastBody>,
) -> Result<Json<SentBody>, ApiError> {
    probes(&state)?;
    if body.count > MAX_BROADCASTS_PER_REQUEST {
        return Err(ApiError::bad_request(format!("count: at most {MAX_BROADCASTS_PER_REQUEST}")));
    }
    if body.payload_bytes > MAX_PROBE_PAYLOAD_BYTES {
        return Err(ApiError::bad_request(format!("payload_bytes: at most {MAX_PROBE_PAYLOAD_BYTES}")));
    }
    Group::new(&body.group).map_err(pg_error)?;
    let scope = state.pg.scope(&body.scope).map_err(pg_error)?;
    let payload = Bytes::from(encode_payload(body.payload_bytes));
    let mut out = SentBody { sent: 0, local_delivered: 0, remote_frames: 0, refused: 0 };
    for _ in 0..body.count {
        let report = scope.broadcast(&body.group, payload.clone()).map_err(pg_error)?;
        out.sent += 1;
        out.local_delivered += report.local_delivered as u64;
        out.remote_frames += report.remote_nodes as u64;
        out.refused += report.refused_total as u64;
    }
    Ok(Json(out))
}

#[derive(Serialize)]
pub(crate) struct StatsBody {
    probes: usize,
    received_total: u64,
    revoked_total: u64,
}

/// `GET /admin/probe/stats`
pub(crate) async fn probe_stats(State(state): State<HttpState>) -> Result<Json<StatsBody>, ApiError> {
    let p = probes(&state)?;
    Ok(Json(StatsBody { probes: p.live(), received_total: p.received(), revoked_total: p.revoked() }))
}
