//! `GET /admin/events` and `GET /admin/events/stream`: the decision log over HTTP
//! (`crate::events`, docs/operations.md "The decision log").
//!
//! Invariants: a read returns at most `MAX_EVENTS_PER_READ` decisions; at most
//! [`MAX_EVENT_STREAMS`] live streams are open at once (beyond, 503 `QueueSaturated`); a stream
//! never slows the node: it reads a bounded broadcast channel, and when it falls behind it sends
//! a `missed` event with the count and goes on.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast};

use crate::events::{DecisionKind, DecisionLog, MAX_EVENTS_PER_READ, Page, Recorded};
use crate::http::{ApiError, HttpState};

/// Most live decision streams open at once.
pub(crate) const MAX_EVENT_STREAMS: usize = 16;
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Decisions after this sequence number (0: from the oldest kept).
    #[serde(default)]
    since: u64,
    /// Comma-separated kinds (`MemberDown,LeaderElected`); absent: all.
    kind: Option<String>,
    /// At most this many (default and cap [`MAX_EVENTS_PER_READ`]).
    limit: Option<usize>,
}

fn kinds(query: &EventsQuery) -> Result<Vec<DecisionKind>, ApiError> {
    let Some(list) = &query.kind else { return Ok(Vec::new()) };
    list.split(',')
        .filter(|k| !k.is_empty())
        .map(|k| {
            DecisionKind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = DecisionKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::bad_request(format!("kind `{k}` is not one of {}", known.join(", ")))
            })
        })
        .collect()
}

/// `GET /admin/events?since=SEQ&kind=K1,K2&limit=N`: `{"events": [...], "next", "missed",
/// "evicted"}`; ask again with `since=next` for what follows.
pub(crate) async fn events(
    State(state): State<HttpState>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Page>, ApiError> {
    let kinds = kinds(&query)?;
    Ok(Json(state.decisions.read(query.since, &kinds, query.limit.unwrap_or(MAX_EVENTS_PER_READ))))
}

/// `GET /admin/events/stream?since=SEQ&kind=..`: Server-Sent Events. First the kept decisions
/// after `since` (none without it), then each new one as it is recorded: `event: decision`,
/// `id: SEQ`, `data: {json}`. A reader that fell behind gets `event: missed` with the count.
pub(crate) async fn stream(
    State(state): State<HttpState>,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let kinds = kinds(&query)?;
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "QueueSaturated",
            format!("at most {MAX_EVENT_STREAMS} decision streams may be open at once"),
        ));
    };
    // Subscribe before reading the ring, so nothing recorded in between is lost (a decision in
    // both is sent once: the live part skips what the backlog already sent).
    let live = state.decisions.subscribe();
    let backlog = if query.since > 0 { backlog(&state.decisions, query.since, &kinds) } else { Vec::new() };
    let last = backlog.last().map_or(query.since, |r| r.seq);
    let start = Streaming { permit: Arc::new(permit), live, backlog: backlog.into(), last, kinds };
    let stream = futures_util::stream::unfold(start, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn backlog(log: &DecisionLog, since: u64, kinds: &[DecisionKind]) -> Vec<Recorded> {
    let mut out = Vec::new();
    let mut from = since;
    loop {
        let page = log.read(from, kinds, MAX_EVENTS_PER_READ);
        let done = page.next == from;
        from = page.next;
        out.extend(page.events);
        if done || out.len() >= log.capacity() {
            return out;
        }
    }
}

struct Streaming {
    /// Held while the stream lives.
    #[allow(dead_code)]
    permit: Arc<OwnedSemaphorePermit>,
    live: broadcast::Receiver<Recorded>,
    backlog: std::collections::VecDeque<Recorded>,
    last: u64,
    kinds: Vec<DecisionKind>,
}

async fn next_event(mut s: Streaming) -> Option<(Result<Event, std::convert::Infallible>, Streaming)> {
    if let Some(recorded) = s.backlog.pop_front() {
        return Some((Ok(decision_event(&recorded)), s));
    }
    loop {
        match s.live.recv().await {
            Ok(recorded) if recorded.seq <= s.last => continue,
            Ok(recorded) => {
                s.last = recorded.seq;
                if !s.kinds.is_empty() && !s.kinds.contains(&recorded.decision.kind) {
                    continue;
                }
                return Some((Ok(decision_event(&recorded)), s));
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let data = serde_json::json!({ "missed": missed, "hint": "read GET /admin/events?since=<last id> for what is still kept" });
                return Some((Ok(Event::default().event("missed").data(data.to_string())), s));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn decision_event(recorded: &Recorded) -> Event {
    let data = serde_json::to_string(recorded).unwrap_or_else(|_| "{}".into());
    Event::default().event("decision").id(recorded.seq.to_string()).data(data)
}
