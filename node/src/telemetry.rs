//! Logging, tracing and OTLP export (SPEC 10).
//!
//! [`init`] installs the process-wide `tracing` subscriber: an env filter that can be changed at run
//! time through [`LogControl`] (and `POST /admin/log-filter`), human (`pretty`) or JSON lines on
//! stderr, and, when `telemetry.otlp_endpoint` is set, an OpenTelemetry layer exporting spans over
//! OTLP/HTTP (protobuf). Metrics reach OTLP through [`OtlpGuard::export_metrics`], which bridges a
//! node's Prometheus registry into observable OpenTelemetry instruments, so there is one source of
//! truth for every number and `/metrics` and OTLP never disagree.
//!
//! The exporters use the *blocking* reqwest client: the SDK's batch span processor and periodic
//! metric reader run on their own threads without a Tokio reactor, where the async client panics
//! (opentelemetry-rust issue 2673) and silently stops exporting.
//!
//! Only the binary calls [`init`] (a subscriber is process-global); an embedding application keeps
//! its own subscriber and nodes in one test process share it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use prometheus::proto::{MetricFamily, MetricType};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

use crate::config::{Config, LogFormat};

/// Most metric families bridged to OTLP: each becomes an instrument, and a runaway registry must
/// not create instruments without end.
pub const MAX_BRIDGED_FAMILIES: usize = 512;

/// Changes the log filter of a running process. Cheap to clone.
#[derive(Clone)]
pub struct LogControl {
    inner: Arc<LogControlInner>,
}

struct LogControlInner {
    current: Mutex<String>,
    apply: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl LogControl {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.inner.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the filter; a filter that does not parse is refused and the old one stays.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        (self.inner.apply)(parsed)?;
        *self.inner.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        Ok(())
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("log.filter: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built.
    #[error("telemetry.otlp_endpoint: {0}")]
    Otlp(String),
    /// A subscriber was already installed in this process.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Owns the OTLP providers; flushes and stops them on [`OtlpGuard::shutdown`].
pub struct OtlpGuard {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
    interval: std::time::Duration,
}

/// Install logging (and span export when configured). Returns the log control and, with an OTLP
/// endpoint, the guard that must be shut down at exit to flush.
pub fn init(config: &Config) -> Result<(LogControl, Option<OtlpGuard>), TelemetryError> {
    let filter = EnvFilter::try_new(&config.log.filter).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let (filter_layer, handle) = reload::Layer::new(filter);
    let fmt_layer = match config.log.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let guard = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => Some(build_otlp(config, endpoint)?),
        None => None,
    };
    let otel_layer =
        guard.as_ref().map(|g| tracing_opentelemetry::layer().with_tracer(g.tracer.tracer("cohort")).boxed());
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    let control = LogControl {
        inner: Arc::new(LogControlInner {
            current: Mutex::new(config.log.filter.clone()),
            apply: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        }),
    };
    Ok((control, guard))
}

fn resource(config: &Config) -> Resource {
    Resource::builder()
        .with_service_name("cohort")
        .with_attributes([
            KeyValue::new("service.instance.id", config.name.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("cohort.cluster", config.cluster_name.clone()),
        ])
        .build()
}

fn build_otlp(config: &Config, endpoint: &str) -> Result<OtlpGuard, TelemetryError> {
    let base = endpoint.trim_end_matches('/');
    let interval = config.telemetry.export_interval();
    let timeout = interval.min(std::time::Duration::from_secs(10));
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{base}/v1/traces"))
        .with_timeout(timeout)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let processor = BatchSpanProcessor::builder(spans)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(interval).build())
        .build();
    let tracer = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource(config)).build();

    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{base}/v1/metrics"))
        .with_timeout(timeout)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics).with_interval(interval).build();
    let meter = SdkMeterProvider::builder().with_reader(reader).with_resource(resource(config)).build();
    Ok(OtlpGuard { tracer, meter, interval })
}

impl OtlpGuard {
    /// Export a node's Prometheus registry over OTLP, from now until the runtime stops: counters as
    /// observable counters, gauges as observable gauges, histograms and summaries as their `_sum`
    /// and `_count` counters (OpenTelemetry has no observable histogram). A family is bridged once
    /// it has a first sample (label vectors without children are not gathered); new families are
    /// looked for every export interval, up to [`MAX_BRIDGED_FAMILIES`]. Call from a Tokio runtime.
    pub fn export_metrics(&self, registry: &prometheus::Registry) {
        let bridge = Arc::new(Bridge {
            meter: self.meter.meter("cohort"),
            snapshot: Arc::new(Snapshot {
                registry: registry.clone(),
                fresh_for: self.interval / 2,
                last: Mutex::new(None),
            }),
            known: Mutex::new(HashSet::new()),
        });
        bridge.sync();
        let interval = self.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                bridge.sync();
            }
        });
    }

    /// Flush pending spans and metrics and stop the exporters. Blocking: call from a thread that
    /// may block (at exit, after the node stopped).
    pub fn shutdown(self) {
        if let Err(e) = self.tracer.shutdown() {
            tracing::warn!(error = %e, "OTLP span export did not flush cleanly");
        }
        if let Err(e) = self.meter.shutdown() {
            tracing::warn!(error = %e, "OTLP metric export did not flush cleanly");
        }
    }
}

fn labels(m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    m.get_label().iter().map(|l| KeyValue::new(l.name().to_string(), l.value().to_string())).collect()
}

/// One `gather()` shared by every instrument callback of an export cycle (the SDK calls each
/// instrument's callback in turn; gathering per callback would be quadratic in the family count).
struct Snapshot {
    registry: prometheus::Registry,
    fresh_for: std::time::Duration,
    last: Mutex<Option<(std::time::Instant, Arc<Vec<MetricFamily>>)>>,
}

impl Snapshot {
    fn get(&self) -> Arc<Vec<MetricFamily>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, families)) = last.as_ref()
            && at.elapsed() < self.fresh_for
        {
            return families.clone();
        }
        let families = Arc::new(self.registry.gather());
        *last = Some((std::time::Instant::now(), families.clone()));
        families
    }

    /// Call `f(value, labels)` for every sample of `family`; `part` picks `_sum` or `_count` of a
    /// histogram or summary and is ignored for counters and gauges.
    fn each(&self, family: &str, part: Part, mut f: impl FnMut(f64, Vec<KeyValue>)) {
        let families = self.get();
        let Some(fam) = families.iter().find(|fam| fam.name() == family) else { return };
        for m in fam.get_metric() {
            let value = match (fam.get_field_type(), part) {
                (MetricType::COUNTER, _) => m.get_counter().get_value(),
                (MetricType::GAUGE, _) => m.get_gauge().get_value(),
                (MetricType::HISTOGRAM, Part::Sum) => m.get_histogram().get_sample_sum(),
                (MetricType::HISTOGRAM, Part::Count) => m.get_histogram().get_sample_count() as f64,
                (MetricType::SUMMARY, Part::Sum) => m.get_summary().sample_sum(),
                (MetricType::SUMMARY, Part::Count) => m.get_summary().sample_count() as f64,
                _ => continue,
            };
            f(value, labels(m));
        }
    }
}

#[derive(Clone, Copy)]
enum Part {
    Value,
    Sum,
    Count,
}

struct Bridge {
    meter: opentelemetry::metrics::Meter,
    snapshot: Arc<Snapshot>,
    known: Mutex<HashSet<String>>,
}

impl Bridge {
    /// Create instruments for families not bridged yet.
    fn sync(&self) {
        let families = self.snapshot.get();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for family in families.iter() {
            if known.len() >= MAX_BRIDGED_FAMILIES {
                return;
            }
            let name = family.name().to_string();
            if !known.insert(name.clone()) {
                continue;
            }
            let help = family.help().to_string();
            match family.get_field_type() {
                MetricType::COUNTER => self.counter(name.clone(), name, help, Part::Value),
                MetricType::GAUGE => {
                    let snapshot = self.snapshot.clone();
                    let n = name.clone();
                    let _ = self
                        .meter
                        .f64_observable_gauge(name)
                        .with_description(help)
                        .with_callback(move |obs| snapshot.each(&n, Part::Value, |v, a| obs.observe(v, &a)))
                        .build();
                }
                MetricType::HISTOGRAM | MetricType::SUMMARY => {
                    self.counter(format!("{name}_sum"), name.clone(), help.clone(), Part::Sum);
                    self.counter(format!("{name}_count"), name, help, Part::Count);
                }
                // Cohort registers no untyped metrics; skip rather than guess a kind.
                MetricType::UNTYPED => {}
            }
        }
    }

    fn counter(&self, instrument: String, family: String, help: String, part: Part) {
        let snapshot = self.snapshot.clone();
        let _ = self
            .meter
            .f64_observable_counter(instrument)
            .with_description(help)
            .with_callback(move |obs| snapshot.each(&family, part, |v, a| obs.observe(v, &a)))
            .build();
    }
}
