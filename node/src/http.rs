//! The node's HTTP surface (SPEC 9.2): health, metrics and the admin API.
//!
//! Every request passes one gatekeeper middleware, in this order:
//! 1. the in-flight limit (`http.max_in_flight`): beyond it, 503 `QueueSaturated`, counted;
//! 2. the admin-token rule: `POST`/`PUT`/`PATCH`/`DELETE` under `/admin` need
//!    `Authorization: Bearer <admin token>`; with no token configured they answer 403 `Forbidden`,
//!    with a missing or wrong one 401 `Unauthorized` (both counted);
//! 3. the handler, timed into `cohort_http_request_duration_seconds{route}` and counted into
//!    `cohort_http_requests_total{route,method,status}`, where `route` is the matched route template
//!    (or `unmatched`), never the raw path, so label cardinality stays bounded.
//!
//! Errors are always JSON `{"error": "<Reason>", "detail": "..."}` with the SPEC's reason names;
//! malformed input gets a 4xx, never a panic. Bodies are capped at `http.max_body_bytes`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::health::{Health, HealthReport};
use crate::metrics::Metrics;
use crate::node::NodeAddrs;
use crate::telemetry::LogControl;
use crate::{http_events, http_pg, http_registry};
use cohort_cluster::faults::FaultRules;
use cohort_cluster::membership::Membership;
use cohort_cluster::net::FaultInstallError;
use cohort_cluster::net::transport::{ClassSnapshot, Transport};
use cohort_cluster::{FaultInjector, MemberAddrs, NodeId};

/// What the HTTP handlers read. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub id: NodeId,
    pub started: Instant,
    pub addrs: NodeAddrs,
    pub health: Health,
    pub metrics: Metrics,
    pub admin_token: Option<Arc<str>>,
    pub in_flight: Arc<Semaphore>,
    pub log_control: Option<LogControl>,
    pub faults: FaultInjector,
    pub membership: Membership,
    pub transport: Transport,
    pub pg: cohort_actors::pg::PgService,
    pub registry: cohort_registry::Registry,
    pub probes: Option<crate::probe::Probes>,
    pub decisions: crate::events::DecisionLog,
    /// Live decision streams open now (`http_events::MAX_EVENT_STREAMS`).
    pub streams: Arc<Semaphore>,
}

/// A JSON error answer: `{"error": reason, "detail": detail}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    detail: String,
}

impl ApiError {
    /// An error with a status, a SPEC reason name and a human-readable detail.
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Self { status, reason, detail: detail.into() }
    }

    /// 400 `BadRequest`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            detail: &'a str,
        }
        let mut response = (self.status, Json(Body { error: self.reason, detail: &self.detail })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body extractor whose rejections are [`ApiError`]s. It parses the body as JSON whatever
/// the `Content-Type` (an operator's `curl -d '{...}'` sends a form type), within the body limit:
/// 413 above it, 400 for malformed JSON, 422 for JSON of the wrong shape.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", e.body_text()));
            }
            Err(e) => return Err(ApiError::new(e.status(), "BadRequest", e.body_text())),
        };
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            let status = match e.classify() {
                serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, "BadRequest", format!("request body: {e}"))
        })
    }
}

/// Build the router. `max_body_bytes` caps every request body.
pub(crate) fn router(state: HttpState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/node", get(admin_node))
        .route("/admin/log-filter", get(get_log_filter).post(set_log_filter))
        .route("/admin/cluster/members", get(cluster_members))
        .route("/admin/transport", get(transport))
        .route("/admin/faults", get(get_faults).post(set_faults).delete(clear_faults))
        .route("/admin/pg/{scope}/groups", get(http_pg::groups))
        .route("/admin/pg/{scope}/groups/{group}", get(http_pg::group))
        .route("/admin/probe/spawn", post(http_pg::probe_spawn))
        .route("/admin/probe/join", post(http_pg::probe_join))
        .route("/admin/probe/leave", post(http_pg::probe_leave))
        .route("/admin/probe/exit", post(http_pg::probe_exit))
        .route("/admin/probe/broadcast", post(http_pg::probe_broadcast))
        .route("/admin/probe/stats", get(http_pg::probe_stats))
        .route("/admin/probe/register", post(http_registry::probe_register))
        .route("/admin/probe/unregister", post(http_registry::probe_unregister))
        .route("/admin/probe/send", post(http_registry::probe_send))
        .route("/admin/events", get(http_events::events))
        .route("/admin/events/stream", get(http_events::stream))
        .route("/admin/raft", get(http_registry::raft))
        .route("/admin/raft/inject", post(http_registry::raft_inject))
        .route("/admin/planes", get(http_registry::planes))
        .route("/admin/registry/lookup/{name}", get(http_registry::lookup))
        .route("/admin/registry/{tier}", get(http_registry::names))
        .route_layer(middleware::from_fn(remember_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), gatekeeper))
        .with_state(state)
}

/// Carries the matched route template from inside the router to the gatekeeper (which runs
/// before routing and so cannot see `MatchedPath` on the request).
#[derive(Clone)]
struct RouteLabel(Arc<str>);

async fn remember_route(req: Request, next: Next) -> Response {
    let label = req.extensions().get::<MatchedPath>().map(|m| RouteLabel(Arc::from(m.as_str())));
    let mut response = next.run(req).await;
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}

fn is_mutating(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Constant-time comparison, so the token cannot be found byte by byte from response times.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn check_admin_token(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        state.metrics.http_rejected.with_label_values(&["forbidden"]).inc();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "no admin token is configured on this node, so mutating admin endpoints are disabled",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if token_matches(token.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => {
            state.metrics.http_rejected.with_label_values(&["unauthorized"]).inc();
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "this endpoint needs `Authorization: Bearer <admin token>`",
            ))
        }
    }
}

async fn gatekeeper(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        state.metrics.http_rejected.with_label_values(&["in_flight_limit"]).inc();
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "QueueSaturated",
            "too many HTTP requests in flight (http.max_in_flight)",
        )
        .into_response();
    };
    state.metrics.http_in_flight.inc();
    let span = tracing::info_span!("http.request", http.method = method, http.path = %req.uri().path());
    let response = if req.uri().path().starts_with("/admin") && is_mutating(req.method()) {
        match check_admin_token(&state, req.headers()) {
            Ok(()) => next.run(req).instrument(span.clone()).await,
            Err(e) => e.into_response(),
        }
    } else {
        next.run(req).instrument(span.clone()).await
    };
    state.metrics.http_in_flight.dec();
    let route = response.extensions().get::<RouteLabel>().map(|r| r.0.clone());
    let route = route.as_deref().unwrap_or("unmatched");
    let status = response.status();
    state.metrics.http_requests.with_label_values(&[route, method, status.as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[route]).observe(start.elapsed().as_secs_f64());
    // Malformed input only; 401/403 are counted by the token rule, 404 is a wrong URL, not bad input.
    if matches!(status.as_u16(), 400 | 405 | 413 | 415 | 422) {
        state.metrics.http_rejected.with_label_values(&["bad_request"]).inc();
    }
    span.in_scope(|| tracing::debug!(route, status = status.as_u16(), "served"));
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("no endpoint {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    checks: Vec<crate::health::CheckReport>,
}

fn health_response(report: HealthReport, ok_word: &'static str, bad_word: &'static str) -> Response {
    let status = if report.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = if report.ok { ok_word } else { bad_word };
    (status, Json(HealthBody { status: word, checks: report.checks })).into_response()
}

fn evaluate_livez(state: &HttpState) -> HealthReport {
    let report = state.health.livez();
    for c in &report.checks {
        state.metrics.health_check_ok.with_label_values(&[c.name.as_str()]).set(i64::from(c.ok));
    }
    report
}

async fn livez(State(state): State<HttpState>) -> Response {
    health_response(evaluate_livez(&state), "ok", "failing")
}

async fn readyz(State(state): State<HttpState>) -> Response {
    health_response(state.health.readyz(), "ready", "not_ready")
}

async fn metrics(State(state): State<HttpState>) -> Response {
    // Refresh the health gauges so a scrape alone (without /livez traffic) sees current values.
    evaluate_livez(&state);
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()).into_response(),
    }
}

#[derive(Serialize)]
struct AddrsBody {
    http: SocketAddr,
    gossip: SocketAddr,
    internode: SocketAddr,
}

#[derive(Serialize)]
struct NodeBody {
    node: String,
    incarnation: u64,
    version: &'static str,
    uptime_s: u64,
    addrs: AddrsBody,
}

async fn admin_node(State(state): State<HttpState>) -> Json<NodeBody> {
    Json(NodeBody {
        node: state.id.name.clone(),
        incarnation: state.id.incarnation,
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        addrs: AddrsBody { http: state.addrs.http, gossip: state.addrs.gossip, internode: state.addrs.internode },
    })
}

#[derive(Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFilterBody {
    filter: String,
}

fn log_control(state: &HttpState) -> Result<&LogControl, ApiError> {
    state.log_control.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "this node was embedded without a reloadable log filter",
        )
    })
}

async fn get_log_filter(State(state): State<HttpState>) -> Result<Json<LogFilterBody>, ApiError> {
    Ok(Json(LogFilterBody { filter: log_control(&state)?.current() }))
}

async fn set_log_filter(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<LogFilterBody>,
) -> Result<Json<LogFilterBody>, ApiError> {
    let control = log_control(&state)?;
    control.set(&body.filter).map_err(|e| ApiError::bad_request(format!("filter: {e}")))?;
    tracing::info!(filter = %body.filter, "log filter changed through the admin API");
    Ok(Json(LogFilterBody { filter: control.current() }))
}

#[derive(Serialize)]
struct MemberBody {
    node: String,
    incarnation: u64,
    state: &'static str,
    addrs: MemberAddrs,
    raft_eligible: bool,
    failure_domain: String,
    #[serde(rename = "self")]
    is_self: bool,
}

#[derive(Serialize)]
struct MembersBody {
    members: Vec<MemberBody>,
}

/// `GET /admin/cluster/members`: this node's view, self included, sorted by name.
async fn cluster_members(State(state): State<HttpState>) -> Json<MembersBody> {
    let view = state.membership.members();
    let mut members: Vec<MemberBody> = view
        .iter()
        .map(|row| MemberBody {
            node: row.info.id.name.clone(),
            incarnation: row.info.id.incarnation,
            state: row.state.as_str(),
            addrs: row.info.addrs,
            raft_eligible: row.info.raft_eligible,
            failure_domain: row.info.failure_domain.clone(),
            is_self: row.is_self,
        })
        .collect();
    members.sort_by(|a, b| (&a.node, a.incarnation).cmp(&(&b.node, b.incarnation)));
    Json(MembersBody { members })
}

#[derive(Serialize)]
struct PeerBody {
    node: String,
    incarnation: u64,
    connected: bool,
    classes: Vec<ClassSnapshot>,
}

#[derive(Serialize)]
struct TransportBody {
    peers: Vec<PeerBody>,
}

/// `GET /admin/transport`: per peer, per class queue depth, capacity, drops and bytes.
async fn transport(State(state): State<HttpState>) -> Json<TransportBody> {
    let peers = state
        .transport
        .snapshot()
        .peers
        .into_iter()
        .map(|p| PeerBody {
            node: p.node.name,
            incarnation: p.node.incarnation,
            connected: p.connected,
            classes: p.classes,
        })
        .collect();
    Json(TransportBody { peers })
}

#[derive(Serialize)]
struct FaultsBody {
    enabled: bool,
    rules: FaultRules,
}

impl FaultsBody {
    fn of(faults: &FaultInjector) -> Json<FaultsBody> {
        Json(FaultsBody { enabled: faults.is_enabled(), rules: faults.rules() })
    }
}

fn fault_error(e: FaultInstallError) -> ApiError {
    match e {
        FaultInstallError::ChaosDisabled => ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "fault injection is only available with chaos enabled (`--chaos` or `chaos.enabled = true`)",
        ),
        FaultInstallError::Invalid(e) => ApiError::bad_request(e.to_string()),
    }
}

/// `GET /admin/faults`: `{"enabled": bool, "rules": {"rules": [...]}}`.
async fn get_faults(State(state): State<HttpState>) -> Json<FaultsBody> {
    FaultsBody::of(&state.faults)
}

/// `POST /admin/faults`: replace this node's rules (SPEC 9.2). Validation errors name the field.
async fn set_faults(
    State(state): State<HttpState>,
    JsonBody(rules): JsonBody<FaultRules>,
) -> Result<Json<FaultsBody>, ApiError> {
    let count = rules.rules.len();
    state.faults.install(rules).map_err(fault_error)?;
    state.metrics.fault_rules.set(count as i64);
    tracing::warn!(rules = count, "fault rules installed through the admin API");
    Ok(FaultsBody::of(&state.faults))
}

/// `DELETE /admin/faults`: clear this node's rules.
async fn clear_faults(State(state): State<HttpState>) -> Result<Json<FaultsBody>, ApiError> {
    state.faults.clear().map_err(fault_error)?;
    state.metrics.fault_rules.set(0);
    tracing::info!("fault rules cleared through the admin API");
    Ok(FaultsBody::of(&state.faults))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_exact_match() {
        assert!(token_matches(b"abcdef", b"abcdef"));
        assert!(!token_matches(b"abcdeF", b"abcdef"));
        assert!(!token_matches(b"abcde", b"abcdef"));
        assert!(!token_matches(b"", b"abcdef"));
    }
}
