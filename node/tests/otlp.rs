//! OTLP export: with `telemetry.otlp_endpoint` set, a node pushes spans to `/v1/traces` and its
//! Prometheus metrics to `/v1/metrics` over HTTP/protobuf. A mock collector in this test records
//! what arrives.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{Proc, as_strs, get, node_args, wait_for};

#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<Bytes>>>,
    metrics: Arc<Mutex<Vec<Bytes>>>,
}

async fn collector() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(r): State<Received>, body: Bytes| async move {
                r.traces.lock().unwrap().push(body);
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }),
        )
        .route(
            "/v1/metrics",
            post(|State(r): State<Received>, body: Bytes| async move {
                r.metrics.lock().unwrap().push(body);
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn contains(haystack: &[Bytes], needle: &str) -> bool {
    haystack.iter().any(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_the_otlp_collector() {
    let (collector_url, received) = collector().await;
    let dir = std::env::temp_dir().join(format!("cohort-otlp-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(&config, "[telemetry]\nexport_interval_ms = 200\n").unwrap();
    let mut args = node_args("otlp");
    args.extend([
        "--config".into(),
        config.display().to_string(),
        "--otlp-endpoint".into(),
        collector_url,
        "--log-filter".into(),
        "info,cohort=debug".into(),
    ]);
    let mut p = Proc::spawn(&as_strs(&args));
    let url = p.node_url().await;
    for _ in 0..5 {
        assert_eq!(get(&url, "/livez").await.status, 200);
    }
    let r = received.clone();
    wait_for(Duration::from_secs(20), "spans and metrics at the collector", || {
        let traces = r.traces.lock().unwrap().clone();
        let metrics = r.metrics.lock().unwrap().clone();
        let done = contains(&traces, "http.request") && contains(&metrics, "cohort_http_requests_total");
        async move { done.then_some(()) }
    })
    .await;
    // The resource names the service and the node.
    assert!(contains(&received.traces.lock().unwrap(), "cohort"));
    assert!(contains(&received.metrics.lock().unwrap(), "process_resident_memory_bytes"));
    p.signal(libc::SIGTERM);
    let (code, took) = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{}", p.stderr_text());
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
