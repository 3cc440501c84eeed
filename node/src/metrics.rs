//! The node's Prometheus metrics registry and the node-level metrics.
//!
//! One [`Metrics`] per node (never the `prometheus` crate's global default registry), so several
//! nodes in one test process each expose their own numbers. Subsystems register their collectors
//! into [`Metrics::registry`]. `/metrics` renders the classic text format (0.0.4) that
//! `promtool check metrics` accepts (see shared/CRATES.md for why not OpenMetrics).
//!
//! Conventions (SPEC 10): prefix `cohort_`, `_total` counters, `_seconds` histograms, base units,
//! bounded label values only (never a pid, a group or a URL path as a label: HTTP routes are the
//! matched route template). Process metrics keep the standard `process_*` names that every
//! Prometheus dashboard expects. Safety counters are created with their label values at boot so
//! they are exported at 0.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label values of `cohort_http_rejected_total{reason}`.
pub const HTTP_REJECT_REASONS: [&str; 4] = ["in_flight_limit", "unauthorized", "forbidden", "bad_request"];

/// Node-level metrics and the registry subsystems add theirs to. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `cohort_http_requests_total{route,method,status}`
    pub http_requests: IntCounterVec,
    /// `cohort_http_request_duration_seconds{route}`
    pub http_duration: HistogramVec,
    /// `cohort_http_rejected_total{reason}`: requests refused before reaching a handler.
    pub http_rejected: IntCounterVec,
    /// `cohort_http_in_flight_requests`
    pub http_in_flight: IntGauge,
    /// `cohort_health_check_ok{check}`: 1 when the check passes at the last evaluation.
    pub health_check_ok: IntGaugeVec,
    /// `cohort_chaos_fault_rules`: fault rules in force on this node (0 without chaos).
    pub fault_rules: IntGauge,
}

impl Metrics {
    /// A fresh registry with the node-level metrics and the process collector registered.
    pub fn new(node_name: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("cohort_http_requests_total", "HTTP requests served, by route template, method and status."),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("cohort_http_request_duration_seconds", "HTTP request latency by route template.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            &["route"],
        )?;
        let http_rejected = IntCounterVec::new(
            Opts::new("cohort_http_rejected_total", "HTTP requests refused before reaching a handler, by reason."),
            &["reason"],
        )?;
        let http_in_flight = IntGauge::new("cohort_http_in_flight_requests", "HTTP requests being served now.")?;
        let health_check_ok = IntGaugeVec::new(
            Opts::new("cohort_health_check_ok", "1 when the named /livez check passed at its last evaluation."),
            &["check"],
        )?;
        let fault_rules =
            IntGauge::new("cohort_chaos_fault_rules", "Fault injection rules in force on this node (chaos mode).")?;
        let build_info = IntGaugeVec::new(
            Opts::new("cohort_build_info", "Always 1; labels carry the version and the node name."),
            &["version", "node"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), node_name]).set(1);
        for reason in HTTP_REJECT_REASONS {
            http_rejected.with_label_values(&[reason]);
        }

        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(http_rejected.clone()))?;
        registry.register(Box::new(http_in_flight.clone()))?;
        registry.register(Box::new(health_check_ok.clone()))?;
        registry.register(Box::new(fault_rules.clone()))?;
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        Ok(Self { registry, http_requests, http_duration, http_rejected, http_in_flight, health_check_ok, fault_rules })
    }

    /// The registry subsystems register their collectors into.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Render the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let families = self.registry.gather();
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&families, &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_counters_are_exported_at_zero_from_boot() {
        let m = Metrics::new("n1").unwrap();
        let text = m.render().unwrap();
        for reason in HTTP_REJECT_REASONS {
            assert!(text.contains(&format!("cohort_http_rejected_total{{reason=\"{reason}\"}} 0")), "{text}");
        }
        assert!(text.contains("cohort_build_info{node=\"n1\""), "{text}");
    }

    #[test]
    fn two_nodes_have_separate_registries() {
        let a = Metrics::new("a").unwrap();
        let b = Metrics::new("b").unwrap();
        a.http_rejected.with_label_values(&["forbidden"]).inc();
        assert!(a.render().unwrap().contains("cohort_http_rejected_total{reason=\"forbidden\"} 1"));
        assert!(b.render().unwrap().contains("cohort_http_rejected_total{reason=\"forbidden\"} 0"));
    }
}
