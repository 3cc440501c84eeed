//! Admin endpoints of the name registry (SPEC 9.2): `GET /admin/registry/{tier}`,
//! `GET /admin/registry/lookup/{name}?tier=`, and the probe workload's
//! `POST /admin/probe/register|unregister` (chaos only).
//!
//! Every refusal is the registry's typed error mapped onto the SPEC vocabulary
//! (`AlreadyRegistered` 409, `NotHosted` 404, `NotFound` 404, `Unavailable` 503, ...). Names are
//! validated by the registry (1 to 255 bytes); tiers are `local`, `eventual`, `consistent`.

use std::str::FromStr;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cohort_actors::Pid;
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
        RegistryError::TooManyNames { .. } | RegistryError::Send(_) => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
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
}

#[derive(Serialize)]
pub(crate) struct NamesBody {
    names: Vec<NameRow>,
}

/// `GET /admin/registry/{tier}`: every name visible in the tier on this node, sorted.
pub(crate) async fn names(State(state): State<HttpState>, Path(t): Path<String>) -> Result<Json<NamesBody>, ApiError> {
    let rows = state.registry.list(tier(&t)?).map_err(registry_error)?;
    Ok(Json(NamesBody { names: rows.into_iter().map(|(name, pid)| NameRow { name, pid: pid.to_string() }).collect() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LookupQuery {
    tier: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct LookupBody {
    name: String,
    pid: String,
    tier: Tier,
}

/// `GET /admin/registry/lookup/{name}?tier=`: resolves local -> consistent -> eventual, or in
/// the named tier only.
pub(crate) async fn lookup(
    State(state): State<HttpState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Result<Json<LookupBody>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (tier, pid) = match query.tier.as_deref() {
        Some(t) => {
            let t = tier(t)?;
            (t, state.registry.lookup_in(t, &name).map_err(registry_error)?)
        }
        None => state.registry.lookup(&name).ok_or_else(|| registry_error(RegistryError::NotFound))?,
    };
    Ok(Json(LookupBody { name, pid: pid.to_string(), tier }))
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

/// `POST /admin/probe/register`: registers a live probe of this node under a name. A probe that
/// loses an eventual name to a concurrent registration counts the `NameRevoked` it is told
/// (`revoked_total` in `/admin/probe/stats`).
pub(crate) async fn probe_register(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Json<Empty>, ApiError> {
    let (tier, pid) = probe_pid(&state, &body)?;
    let Some(probe) = probes(&state)?.probe_ref(&pid) else {
        return Err(registry_error(RegistryError::NotHosted { pid }));
    };
    state.registry.register(tier, &body.name, &probe).map_err(registry_error)?;
    Ok(Json(Empty {}))
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
    state.registry.unregister(tier, &body.name).map_err(registry_error)?;
    Ok(Json(Empty {}))
}
