//! Node configuration: the TOML file, `COHORT_*` environment variables and command-line flags.
//!
//! Precedence, lowest first: built-in defaults, the config file, environment variables, flags
//! (environment variables and flags are both handled by the CLI layer, see `cli.rs`, and arrive
//! here as [`Overrides`]). The file is parsed with unknown keys refused, and every error names the
//! key it is about, so an operator can fix it without reading the source. `docs/operations.md` is the
//! reference for every key.
//!
//! Invariants: a [`Config`] that [`Config::validate`] accepted can start a node; the only errors left
//! at start are those of the outside world (a port already taken, a read-only data dir).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cohort_cluster::auth::ClusterSecret;
use serde::{Deserialize, Serialize};

/// Shortest cluster secret accepted, in bytes of decoded key material (256 bits): a key shorter
/// than this is guessable offline from one captured handshake or datagram.
pub const MIN_CLUSTER_SECRET_BYTES: usize = cohort_cluster::auth::MIN_SECRET_BYTES;
/// Longest cluster secret accepted, in bytes of decoded key material (the HMAC key block of
/// SHA-256: longer keys are hashed down and add nothing).
pub const MAX_CLUSTER_SECRET_BYTES: usize = cohort_cluster::auth::MAX_SECRET_BYTES;
/// Largest config file read, so a wrong path (a log file, a device) fails fast instead of filling memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;
/// Largest cluster secret or admin token file read (a key is at most 128 hex digits; the rest
/// is room for white space), so a wrong path fails fast.
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;
/// Longest node name: it travels in every gossip identity, so it must stay small.
pub const MAX_NODE_NAME_LEN: usize = 64;
/// Most seeds accepted: the join loop cycles through them, a longer list is a mistake.
pub const MAX_SEEDS: usize = 64;
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// The environment variable that may hold the admin token (the token never goes on a command
/// line, where every local user can read it in `/proc/PID/cmdline`).
pub const ADMIN_TOKEN_ENV: &str = "COHORT_ADMIN_TOKEN";

/// Default HTTP listen address: loopback only (SPEC 9.2), a port of our own.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7480";
/// Default gossip (UDP) listen address.
pub const DEFAULT_GOSSIP_ADDR: &str = "127.0.0.1:7481";
/// Default internode (TCP) listen address.
pub const DEFAULT_INTERNODE_ADDR: &str = "127.0.0.1:7482";

/// The whole configuration of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node name, unique in the cluster. Default: the host name.
    pub name: String,
    /// Cluster name: nodes of different clusters refuse each other's handshakes.
    pub cluster_name: String,
    /// Directory for durable state (raft log, snapshots). Created at start.
    pub data_dir: PathBuf,
    /// Gossip addresses (`host:port`) of nodes to join through. A host name may resolve to
    /// several addresses (a Kubernetes headless Service); it is resolved again while joining.
    pub seeds: Vec<String>,
    /// The host peers dial to reach this node (an IP address or a DNS name, resolved once at
    /// start), announced with each listener's port. Needed when a listener binds a wildcard
    /// address (`0.0.0.0`, `[::]`); useful behind NAT. Unset: the bound address is announced.
    pub advertise: Option<String>,
    /// File holding the cluster secret: 32 to 64 bytes of key material written as hex or base64
    /// (`cohort keygen` makes one). Without one the node generates a secret of its own and can
    /// only form a cluster alone.
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding the next cluster secret, same format: accepted as a second key during a
    /// rotation window. Needs `cluster_secret_file`.
    pub cluster_secret_file_next: Option<PathBuf>,
    /// Bearer token for mutating admin endpoints; without one they answer 403. Also set by the
    /// `COHORT_ADMIN_TOKEN` environment variable; [`admin_token_file`](Self::admin_token_file)
    /// wins over both.
    pub admin_token: Option<String>,
    /// File holding the admin token (trimmed); wins over [`admin_token`](Self::admin_token).
    pub admin_token_file: Option<PathBuf>,
    /// Whether this node may be a raft voter (advertised in its gossip identity).
    pub raft_eligible: bool,
    /// Failure domain (rack, zone): raft voters are spread across domains. Empty = none.
    pub failure_domain: String,
    /// HTTP surface.
    pub http: HttpConfig,
    /// Gossip (SWIM over UDP).
    pub gossip: ListenConfig,
    /// Internode transport (TCP).
    pub internode: ListenConfig,
    /// Logging.
    pub log: LogConfig,
    /// Chaos mode: fault injection and the probe workload.
    pub chaos: ChaosConfig,
    /// OpenTelemetry export.
    pub telemetry: TelemetryConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// Hosted processes.
    pub processes: ProcessesConfig,
    /// The name registry.
    pub registry: RegistryConfig,
    /// The consistent tier's raft group.
    pub raft: RaftSection,
    /// The decision log.
    pub events: EventsConfig,
}

/// The decision log (`GET /admin/events`, docs/operations.md "The decision log").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Decisions kept in the ring (4096); the oldest is evicted and counted.
    pub capacity: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { capacity: crate::events::DEFAULT_EVENTS_CAPACITY }
    }
}

/// How the raft log is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftStorage {
    /// redb under `<data_dir>/raft`: survives restarts (`RestartState::Recovered`).
    Durable,
    /// In memory: lost at exit. For tests and benchmarks.
    Memory,
}

/// The consistent tier's raft group (SPEC 7, `[raft]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Most voters: 1, 3 or 5 (5). Every other node is a learner.
    pub max_voters: usize,
    /// `durable` (redb under `<data_dir>/raft`) or `memory`.
    pub storage: RaftStorage,
    /// The raft tick in milliseconds (100): elections take 10-20 ticks, heartbeats every 2.
    pub tick_interval_ms: u64,
    /// How long a consistent write may take, retries included, in milliseconds (5000).
    pub request_timeout_ms: u64,
    /// How long a voter must have been down before the leader replaces it with a caught-up
    /// learner, in milliseconds (30000). A partition or a restart shorter than this changes no
    /// voter (docs/consistent.md "Voter rules").
    pub dead_voter_after_ms: u64,
    /// Bytes of raft snapshot per chunk frame (1048576): a snapshot travels in chunks of this
    /// size, at most 4 MiB unacknowledged (4096 to 4194304; smaller chunks delay heartbeats less
    /// on a slow link).
    pub snapshot_chunk_bytes: usize,
    /// Whether this node starts a one-voter group on a clean store. Unset: only a node without
    /// `seeds` does (see docs/consistent.md).
    pub bootstrap: Option<bool>,
    /// The name of the one node that starts the group on a clean store, for deployments where
    /// every node has the same config and the same seeds (a Kubernetes StatefulSet: `cohort-0`).
    /// Replaces the seeds rule; not together with `bootstrap`.
    pub bootstrap_node: Option<String>,
}

impl Default for RaftSection {
    fn default() -> Self {
        Self {
            max_voters: 5,
            storage: RaftStorage::Durable,
            tick_interval_ms: 100,
            request_timeout_ms: 5_000,
            dead_voter_after_ms: 30_000,
            snapshot_chunk_bytes: cohort_registry::consistent::snapshot_transfer::SNAPSHOT_CHUNK_BYTES,
            bootstrap: None,
            bootstrap_node: None,
        }
    }
}

impl Config {
    /// Whether this node starts a one-voter raft group on a clean store (docs/consistent.md
    /// "Bootstrap"): `raft.bootstrap` when set, else whether this node is `raft.bootstrap_node`
    /// when that is set, else whether it has no seeds; never when it is not raft-eligible.
    pub fn raft_bootstrap(&self) -> bool {
        let wanted = match (&self.raft.bootstrap, &self.raft.bootstrap_node) {
            (Some(bootstrap), _) => *bootstrap,
            (None, Some(node)) => *node == self.name,
            (None, None) => self.seeds.is_empty(),
        };
        wanted && self.raft_eligible
    }
}

/// The name registry (SPEC 7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// How often the eventual tier exchanges digests with every live peer (1000 ms).
    pub anti_entropy_interval_ms: u64,
    /// Whether eventual-tier writes are gossiped as deltas (true). With false only anti-entropy
    /// spreads them: a diagnostic and test setting, not for production.
    pub gossip_deltas: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { anti_entropy_interval_ms: 1000, gossip_deltas: true }
    }
}

/// Hosted processes (SPEC 6.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessesConfig {
    /// Messages one process's mailbox holds; a send beyond it is refused with `QueueSaturated`.
    pub mailbox_capacity: usize,
    /// Live processes one node hosts; a spawn beyond it is refused.
    pub max_processes: usize,
}

impl Default for ProcessesConfig {
    fn default() -> Self {
        let d = cohort_actors::ProcessConfig::default();
        Self { mailbox_capacity: d.mailbox_capacity, max_processes: d.max_processes }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: default_node_name(),
            cluster_name: "cohort".to_string(),
            data_dir: PathBuf::from("cohort-data"),
            seeds: Vec::new(),
            advertise: None,
            cluster_secret_file: None,
            cluster_secret_file_next: None,
            admin_token: None,
            admin_token_file: None,
            raft_eligible: true,
            failure_domain: String::new(),
            http: HttpConfig::default(),
            gossip: ListenConfig { addr: parse_addr(DEFAULT_GOSSIP_ADDR), advertise_port: None },
            internode: ListenConfig { addr: parse_addr(DEFAULT_INTERNODE_ADDR), advertise_port: None },
            log: LogConfig::default(),
            chaos: ChaosConfig::default(),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig::default(),
            processes: ProcessesConfig::default(),
            registry: RegistryConfig::default(),
            raft: RaftSection::default(),
            events: EventsConfig::default(),
        }
    }
}

/// A listener: the address to bind (`port 0` picks a free port) and the port peers dial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address to bind: a concrete address, or `0.0.0.0` / `[::]` with [`Config::advertise`].
    pub addr: SocketAddr,
    /// The port peers dial, when it differs from the bound one (a NAT or container port
    /// mapping). Unset: the bound port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_port: Option<u16>,
}

/// The HTTP surface: address and the limits that protect it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to bind; loopback by default.
    pub addr: SocketAddr,
    /// Requests served at once; more are refused with 503 `QueueSaturated` (counted).
    pub max_in_flight: usize,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { addr: parse_addr(DEFAULT_HTTP_ADDR), max_in_flight: 256, max_body_bytes: 1024 * 1024 }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter (`info`, `cohort=debug,warn`, ...).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, filter: "info".to_string() }
    }
}

/// Chaos mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    /// Enables `POST/DELETE /admin/faults` and the probe workload. Off in production.
    pub enabled: bool,
}

/// OpenTelemetry (OTLP over HTTP/protobuf) export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (`http://127.0.0.1:4318`); `/v1/traces` and `/v1/metrics`
    /// are appended. Unset: nothing is exported. Only `http://` (no TLS client in this build).
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed and spans flushed, in milliseconds.
    pub export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, export_interval_ms: 10_000 }
    }
}

impl TelemetryConfig {
    /// The export interval as a duration.
    pub fn export_interval(&self) -> Duration {
        Duration::from_millis(self.export_interval_ms)
    }
}

/// Graceful shutdown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Budget for stopping every subsystem, in milliseconds. Kept under the 5 s that SPEC 9.1 allows
    /// so that the telemetry flush after it still fits.
    pub timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { timeout_ms: 4_000 }
    }
}

/// Values from flags or `COHORT_*` variables, applied over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--name`
    pub name: Option<String>,
    /// `--http`
    pub http: Option<SocketAddr>,
    /// `--gossip`
    pub gossip: Option<SocketAddr>,
    /// `--internode`
    pub internode: Option<SocketAddr>,
    /// `--seeds`
    pub seeds: Option<Vec<String>>,
    /// `--advertise`
    pub advertise: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--cluster-secret-file`
    pub cluster_secret_file: Option<PathBuf>,
    /// `--cluster-secret-file-next`
    pub cluster_secret_file_next: Option<PathBuf>,
    /// `COHORT_ADMIN_TOKEN` (never a flag: argv is world-readable)
    pub admin_token: Option<String>,
    /// `--admin-token-file`
    pub admin_token_file: Option<PathBuf>,
    /// `--chaos`
    pub chaos: bool,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--log-filter` / `RUST_LOG`
    pub log_filter: Option<String>,
    /// `--otlp-endpoint`
    pub otlp_endpoint: Option<String>,
}

/// Why a configuration was refused. Every variant names the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// The config file is not valid TOML for this schema.
    #[error("config file {path}{}: {message}{}", key.as_ref().map(|k| format!(": key `{k}`")).unwrap_or_default(), line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The dotted key the error is about, when it can be told.
        key: Option<String>,
        /// 1-based line.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key (or flag) at fault.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: &'static str, reason: impl fmt::Display) -> Self {
        Self::Invalid { key, reason: reason.to_string() }
    }
}

impl Config {
    /// Parse a config file's text. `path` is only used in error messages.
    ///
    /// ```
    /// use cohort::config::Config;
    /// let c = Config::from_toml_str("name = \"a\"\n[http]\naddr = \"127.0.0.1:0\"\n", "node.toml".as_ref()).unwrap();
    /// assert_eq!(c.name, "a");
    /// assert!(Config::from_toml_str("nmae = \"a\"", "node.toml".as_ref()).is_err());
    /// ```
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (key, line) = match e.span() {
                Some(span) => key_at(text, span.start),
                None => (None, None),
            };
            ConfigError::Parse { path: path.to_path_buf(), key, line, message: e.message().trim().to_string() }
        })
    }

    /// Read and parse a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |reason: String| ConfigError::Read { path: path.to_path_buf(), reason };
        let meta = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
        if !meta.is_file() {
            return Err(read_err("not a regular file".into()));
        }
        if meta.len() > MAX_CONFIG_FILE_BYTES {
            return Err(read_err(format!("larger than {MAX_CONFIG_FILE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
        Self::from_toml_str(&text, path)
    }

    /// Apply flag / environment overrides.
    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.name {
            self.name = v;
        }
        if let Some(v) = o.http {
            self.http.addr = v;
        }
        if let Some(v) = o.gossip {
            self.gossip.addr = v;
        }
        if let Some(v) = o.internode {
            self.internode.addr = v;
        }
        if let Some(v) = o.seeds {
            self.seeds = v.into_iter().filter(|s| !s.trim().is_empty()).collect();
        }
        if let Some(v) = o.advertise {
            self.advertise = Some(v);
        }
        if let Some(v) = o.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = o.cluster_secret_file {
            self.cluster_secret_file = Some(v);
        }
        if let Some(v) = o.cluster_secret_file_next {
            self.cluster_secret_file_next = Some(v);
        }
        if let Some(v) = o.admin_token {
            self.admin_token = Some(v);
        }
        if let Some(v) = o.admin_token_file {
            self.admin_token_file = Some(v);
        }
        if o.chaos {
            self.chaos.enabled = true;
        }
        if let Some(v) = o.log_format {
            self.log.format = v;
        }
        if let Some(v) = o.log_filter {
            self.log.filter = v;
        }
        if let Some(v) = o.otlp_endpoint {
            self.telemetry.otlp_endpoint = Some(v);
        }
    }

    /// Check every value that the types alone do not constrain. Reads the secret and token files
    /// (so a missing or short secret fails here, with exit code 2, rather than at the first
    /// handshake).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_name(&self.name).map_err(|r| ConfigError::invalid("name", r))?;
        validate_node_name(&self.cluster_name).map_err(|r| ConfigError::invalid("cluster_name", r))?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        if self.seeds.len() > MAX_SEEDS {
            return Err(ConfigError::invalid("seeds", format!("at most {MAX_SEEDS} seeds")));
        }
        for seed in &self.seeds {
            validate_seed(seed).map_err(|r| ConfigError::invalid("seeds", format!("`{seed}`: {r}")))?;
        }
        if let Some(path) = &self.cluster_secret_file {
            read_cluster_secret(path).map_err(|r| ConfigError::invalid("cluster_secret_file", r))?;
        }
        if let Some(path) = &self.cluster_secret_file_next {
            if self.cluster_secret_file.is_none() {
                return Err(ConfigError::invalid(
                    "cluster_secret_file_next",
                    "needs cluster_secret_file too (the next key is a second key, accepted during a rotation)",
                ));
            }
            read_cluster_secret(path).map_err(|r| ConfigError::invalid("cluster_secret_file_next", r))?;
        }
        self.admin_token()?;
        if self.failure_domain.len() > cohort_cluster::member::MAX_FAILURE_DOMAIN_LEN
            || !self.failure_domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::invalid(
                "failure_domain",
                "at most 64 characters of letters, digits, `-` and `_`",
            ));
        }
        if let Some(host) = &self.advertise {
            validate_advertise_host(host).map_err(|r| ConfigError::invalid("advertise", format!("`{host}`: {r}")))?;
        }
        // Peers dial what a node announces: a wildcard bound address says nothing about where
        // the node is, so it needs an advertised host (docs/operations.md "Addresses").
        for (key, port_key, listen) in [
            ("gossip.addr", "gossip.advertise_port", &self.gossip),
            ("internode.addr", "internode.advertise_port", &self.internode),
        ] {
            if listen.advertise_port == Some(0) {
                return Err(ConfigError::invalid(port_key, "must be 1-65535 (unset it to announce the bound port)"));
            }
            if listen.addr.ip().is_unspecified() && self.advertise.is_none() {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{} is a wildcard address, which peers cannot dial: set `advertise` \
                         (--advertise HOST, COHORT_ADVERTISE) to the address peers reach this node at, \
                         or bind a concrete address",
                        listen.addr.ip()
                    ),
                ));
            }
        }
        if !(1..=16 * 1024 * 1024).contains(&self.processes.mailbox_capacity) {
            return Err(ConfigError::invalid("processes.mailbox_capacity", "must be between 1 and 16777216"));
        }
        if !(1..=16 * 1024 * 1024).contains(&self.processes.max_processes) {
            return Err(ConfigError::invalid("processes.max_processes", "must be between 1 and 16777216"));
        }
        if !(50..=600_000).contains(&self.registry.anti_entropy_interval_ms) {
            return Err(ConfigError::invalid("registry.anti_entropy_interval_ms", "must be between 50 and 600000"));
        }
        if cohort_registry::consistent::ladder::MaxVoters::new(self.raft.max_voters).is_err() {
            return Err(ConfigError::invalid("raft.max_voters", "must be 1, 3 or 5"));
        }
        if let Some(node) = &self.raft.bootstrap_node {
            if self.raft.bootstrap.is_some() {
                return Err(ConfigError::invalid(
                    "raft.bootstrap_node",
                    "set either raft.bootstrap (per node) or raft.bootstrap_node (one name for all), not both",
                ));
            }
            validate_node_name(node).map_err(|r| ConfigError::invalid("raft.bootstrap_node", r))?;
        }
        if !(10..=10_000).contains(&self.raft.tick_interval_ms) {
            return Err(ConfigError::invalid("raft.tick_interval_ms", "must be between 10 and 10000"));
        }
        if !(100..=600_000).contains(&self.raft.request_timeout_ms)
            || self.raft.request_timeout_ms < 5 * self.raft.tick_interval_ms
        {
            return Err(ConfigError::invalid(
                "raft.request_timeout_ms",
                "must be between 100 and 600000 and at least 5 raft ticks",
            ));
        }
        if !(1_000..=86_400_000).contains(&self.raft.dead_voter_after_ms) {
            return Err(ConfigError::invalid(
                "raft.dead_voter_after_ms",
                "must be between 1000 (1 s) and 86400000 (one day)",
            ));
        }
        {
            use cohort_registry::consistent::snapshot_transfer::{MAX_SNAPSHOT_CHUNK_BYTES, MIN_SNAPSHOT_CHUNK_BYTES};
            if !(MIN_SNAPSHOT_CHUNK_BYTES..=MAX_SNAPSHOT_CHUNK_BYTES).contains(&self.raft.snapshot_chunk_bytes) {
                return Err(ConfigError::invalid(
                    "raft.snapshot_chunk_bytes",
                    format!("must be between {MIN_SNAPSHOT_CHUNK_BYTES} and {MAX_SNAPSHOT_CHUNK_BYTES}"),
                ));
            }
        }
        if !crate::events::EVENTS_CAPACITY_RANGE.contains(&self.events.capacity) {
            return Err(ConfigError::invalid("events.capacity", "must be between 16 and 1000000"));
        }
        if !(1..=65_536).contains(&self.http.max_in_flight) {
            return Err(ConfigError::invalid("http.max_in_flight", "must be between 1 and 65536"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(ConfigError::invalid("http.max_body_bytes", "must be between 1024 and 67108864"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter).map_err(|e| ConfigError::invalid("log.filter", e))?;
        if let Some(url) = &self.telemetry.otlp_endpoint {
            // No TLS client is compiled in (it would double the build for a feature that a local
            // collector agent provides); say so at start rather than fail every export later.
            if url.starts_with("https://") {
                return Err(ConfigError::invalid(
                    "telemetry.otlp_endpoint",
                    "https:// is not supported by this build; export to a local collector over http://",
                ));
            }
            if !url.starts_with("http://") || url.len() <= "http://".len() {
                return Err(ConfigError::invalid("telemetry.otlp_endpoint", format!("`{url}` is not an http:// URL")));
            }
        }
        if !(100..=600_000).contains(&self.telemetry.export_interval_ms) {
            return Err(ConfigError::invalid("telemetry.export_interval_ms", "must be between 100 and 600000"));
        }
        if !(100..=4_500).contains(&self.shutdown.timeout_ms) {
            return Err(ConfigError::invalid(
                "shutdown.timeout_ms",
                "must be between 100 and 4500 (a node exits within 5 s of SIGTERM)",
            ));
        }
        Ok(())
    }

    /// The admin token in force: the trimmed contents of `admin_token_file` when it is set,
    /// else `admin_token` (from the config file or `COHORT_ADMIN_TOKEN`). Reads the file, so the
    /// node calls it once at start; [`validate`](Self::validate) calls it too.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let (key, token) = match &self.admin_token_file {
            Some(path) => {
                ("admin_token_file", read_admin_token(path).map_err(|r| ConfigError::invalid("admin_token_file", r))?)
            }
            None => match &self.admin_token {
                Some(token) => ("admin_token", token.clone()),
                None => return Ok(None),
            },
        };
        if token.is_empty() {
            return Err(ConfigError::invalid(key, "must not be empty (leave it unset for a node without admin token)"));
        }
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(ConfigError::invalid(key, format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters")));
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ConfigError::invalid(key, "must be printable ASCII without spaces"));
        }
        Ok(Some(token))
    }

    /// Load a complete configuration: the optional file, then the overrides, then validation.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }
}

/// Read a cluster secret file: [`MIN_CLUSTER_SECRET_BYTES`] to [`MAX_CLUSTER_SECRET_BYTES`]
/// bytes of key material written as hex or standard base64, surrounding white space ignored
/// ([`ClusterSecret::from_text`]). The error names the file and what is wrong with it.
pub fn read_cluster_secret(path: &Path) -> Result<ClusterSecret, String> {
    use cohort_cluster::auth::SecretError;
    let text = read_small_text(path)?;
    ClusterSecret::from_text(&text).map_err(|e| {
        let problem = match e {
            SecretError::TooShort { len, min } => {
                format!("decodes to {len} bytes of key material; a cluster secret needs at least {min}")
            }
            SecretError::TooLong { len, max } => {
                format!("decodes to {len} bytes of key material; a cluster secret holds at most {max}")
            }
            other => other.to_string(),
        };
        format!("{}: {problem} (make one with `cohort keygen > FILE`)", path.display())
    })
}

/// Warns (once per call) when a secret file can be read by other users: its key material is then
/// only as private as the machine's other accounts. Not refused, as ssh does for private keys,
/// because a Kubernetes Secret volume is mode 0644 unless `defaultMode` says otherwise, and a
/// node that will not start is worse than a warning an operator can act on. Returns whether it
/// warned.
pub fn warn_if_readable_by_others(key: &str, path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return false };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return false;
    }
    tracing::warn!(
        key,
        file = %path.display(),
        mode = format!("{mode:o}"),
        "a secret file is readable by other users: `chmod 600` it (or set a Secret volume's defaultMode to 0400)"
    );
    true
}

/// Read an admin token file: its trimmed contents.
pub fn read_admin_token(path: &Path) -> Result<String, String> {
    let text = read_small_text(path)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// A file of at most [`MAX_SECRET_FILE_BYTES`], as UTF-8 text.
fn read_small_text(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_SECRET_FILE_BYTES} bytes", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not text (hex or base64 expected)", path.display()))
}

/// Node and cluster names: 1-64 characters of `[A-Za-z0-9_-.]`, so they are safe in logs, URLs
/// and the `<name.incarnation.local>` pid format (a dot separates fields there, so no dots).
fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NODE_NAME_LEN} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("`{name}` may only hold letters, digits, `-` and `_`"));
    }
    Ok(())
}

fn validate_seed(seed: &str) -> Result<(), String> {
    let (host, port) = seed.rsplit_once(':').ok_or("expected host:port")?;
    if host.is_empty() || host.len() > 253 {
        return Err("empty or overlong host".into());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be 1-65535".into()),
        Ok(_) => Ok(()),
    }
}

/// An advertised host: an IP address (IPv6 with or without brackets) or a DNS name, without a port.
fn validate_advertise_host(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        if ip.is_unspecified() {
            return Err("a wildcard address cannot be dialed; give the address peers reach this node at".into());
        }
        return Ok(());
    }
    if bare.is_empty() || bare.len() > 253 {
        return Err("expected an IP address or a host name of 1 to 253 characters".into());
    }
    if bare.contains(':') {
        return Err("a host without a port (the listeners' ports are announced; `advertise_port` changes one)".into());
    }
    if !bare.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        return Err("not an IP address or a valid host name".into());
    }
    Ok(())
}

/// The IP address `advertise` names: parsed, or resolved by DNS (the first address of the
/// family of `prefer`, else the first address). `None` when `advertise` is unset.
pub async fn resolve_advertise(
    advertise: Option<&str>,
    prefer: SocketAddr,
) -> Result<Option<std::net::IpAddr>, String> {
    let Some(host) = advertise else { return Ok(None) };
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(Some(ip));
    }
    let lookup = tokio::net::lookup_host((bare, 0));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(ADVERTISE_RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(error)) => return Err(format!("`{host}` did not resolve: {error}")),
        Err(_) => return Err(format!("`{host}` did not resolve within {ADVERTISE_RESOLVE_TIMEOUT:?}")),
    };
    let usable = || addrs.iter().map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
    // An IPv4 socket cannot be reached at an IPv6 address: prefer the bound family.
    let same_family = usable().find(|ip| ip.is_ipv4() == prefer.is_ipv4());
    same_family.or_else(|| usable().next()).map(Some).ok_or_else(|| format!("`{host}` resolved to no usable address"))
}

/// How long the advertised host name may take to resolve at start.
pub const ADVERTISE_RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

fn default_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(MAX_NODE_NAME_LEN)
        .collect();
    if cleaned.is_empty() { "cohort".to_string() } else { cleaned }
}

fn parse_addr(s: &str) -> SocketAddr {
    // Only called on the DEFAULT_* constants above, which the tests parse.
    s.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The dotted key and the 1-based line at a byte offset of a TOML text: the key on that line
/// (text before `=`), prefixed by the nearest `[table]` header above it.
fn key_at(text: &str, offset: usize) -> (Option<String>, Option<usize>) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'));
    let full = match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    };
    (full, Some(line_no))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("node.toml"))
    }

    #[test]
    fn default_addresses_parse_and_are_loopback() {
        for a in [DEFAULT_HTTP_ADDR, DEFAULT_GOSSIP_ADDR, DEFAULT_INTERNODE_ADDR] {
            let addr: SocketAddr = a.parse().unwrap();
            assert!(addr.ip().is_loopback());
        }
        Config::default().validate().unwrap();
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
name = "n1"
cluster_name = "prod"
data_dir = "/tmp/x"
seeds = ["127.0.0.1:7000", "db-1:7481"]
admin_token = "0123456789abcdef"
[http]
addr = "127.0.0.1:0"
max_in_flight = 10
[gossip]
addr = "127.0.0.1:0"
[internode]
addr = "127.0.0.1:0"
[log]
format = "json"
filter = "debug"
[chaos]
enabled = true
[telemetry]
otlp_endpoint = "http://127.0.0.1:4318"
export_interval_ms = 1000
[shutdown]
timeout_ms = 2000
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.http.max_in_flight, 10);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.chaos.enabled);
        assert_eq!(c.seeds.len(), 2);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = parse("name = \"a\"\nnmae = \"b\"\n").unwrap_err().to_string();
        assert!(err.contains("nmae"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_key_in_table_is_named_with_its_table() {
        let err = parse("[http]\naddr = \"127.0.0.1:0\"\nport = 3\n").unwrap_err().to_string();
        assert!(err.contains("http.port"), "{err}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = parse("[gossip]\naddr = \"not an address\"\n").unwrap_err().to_string();
        assert!(err.contains("gossip.addr"), "{err}");
        let err = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains("log.format"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config { name: "has space".into(), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("`name`"));
        c.name = "ok".into();
        c.seeds = vec!["nohostport".into()];
        assert!(c.validate().unwrap_err().to_string().contains("`seeds`"));
        c.seeds.clear();
        c.admin_token = Some("short".into());
        assert!(c.validate().unwrap_err().to_string().contains("`admin_token`"));
        c.admin_token = None;
        c.log.filter = "=[".into();
        assert!(c.validate().unwrap_err().to_string().contains("`log.filter`"));
        c.log.filter = "info".into();
        c.telemetry.otlp_endpoint = Some("ftp://x".into());
        assert!(c.validate().unwrap_err().to_string().contains("`telemetry.otlp_endpoint`"));
        c.telemetry.otlp_endpoint = Some("https://collector:4318".into());
        assert!(c.validate().unwrap_err().to_string().contains("https:// is not supported"));
    }

    #[test]
    fn a_wildcard_bind_needs_an_advertised_host_that_peers_can_dial() {
        let mut c = Config::default();
        c.gossip.addr = "0.0.0.0:7481".parse().unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`gossip.addr`") && err.contains("--advertise"), "{err}");
        c.gossip.addr = "[::]:7481".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`gossip.addr`"));
        c.internode.addr = "0.0.0.0:7482".parse().unwrap();
        for good in ["10.1.2.3", "fd00::7", "[fd00::7]", "cohort-0.cohort-peers", "localhost"] {
            c.advertise = Some(good.into());
            c.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["0.0.0.0", "[::]", "10.1.2.3:7481", "host:7481", "", "a..b", "bad host", &"x".repeat(254)] {
            c.advertise = Some(bad.into());
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("`advertise`"), "{bad}: {err}");
        }
        c.advertise = Some("10.1.2.3".into());
        c.internode.advertise_port = Some(0);
        assert!(c.validate().unwrap_err().to_string().contains("`internode.advertise_port`"));
        // A concrete bind needs no advertise, and may still announce another port (NAT).
        let text = "[gossip]\naddr = \"10.0.0.5:7481\"\nadvertise_port = 30481\n";
        let c = Config::from_toml_str(text, "n.toml".as_ref()).unwrap();
        assert_eq!(c.gossip.advertise_port, Some(30481));
        c.validate().unwrap();
    }

    #[test]
    fn a_secret_file_readable_by_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("cohort-mode-{}-{}", std::process::id(), line!()));
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(warn_if_readable_by_others("cluster_secret_file", &path));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!warn_if_readable_by_others("cluster_secret_file", &path));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn one_named_node_bootstraps_when_every_node_has_the_same_seeds() {
        let mut c = Config { name: "cohort-0".into(), seeds: vec!["cohort-peers:7481".into()], ..Config::default() };
        assert!(!c.raft_bootstrap(), "a node with seeds waits by default");
        c.raft.bootstrap_node = Some("cohort-0".into());
        assert!(c.raft_bootstrap());
        c.validate().unwrap();
        c.name = "cohort-1".into();
        assert!(!c.raft_bootstrap());
        c.seeds.clear();
        assert!(!c.raft_bootstrap(), "bootstrap_node replaces the seeds rule");
        c.raft.bootstrap = Some(true);
        assert!(c.validate().unwrap_err().to_string().contains("`raft.bootstrap_node`"));
        c.raft.bootstrap_node = None;
        assert!(c.raft_bootstrap());
        c.raft_eligible = false;
        assert!(!c.raft_bootstrap(), "only a raft-eligible node starts a group");
    }

    #[tokio::test]
    async fn the_advertised_host_resolves_in_the_bound_family() {
        let v4: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let v6: SocketAddr = "[::]:0".parse().unwrap();
        assert_eq!(resolve_advertise(None, v4).await, Ok(None));
        assert_eq!(resolve_advertise(Some("[fd00::1]"), v4).await, Ok(Some("fd00::1".parse().unwrap())));
        assert_eq!(resolve_advertise(Some("localhost"), v4).await, Ok(Some("127.0.0.1".parse().unwrap())));
        let err = resolve_advertise(Some("no-such-host.invalid"), v6).await.unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cohort-cfg-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_short_or_raw_text_secret_file_is_refused_naming_the_file() {
        let dir = temp_dir("secret");
        let short = dir.join("short");
        // 32 hex digits: 16 bytes of key material, the old minimum.
        std::fs::write(&short, "0123456789abcdef0123456789abcdef\n").unwrap();
        let c = Config { cluster_secret_file: Some(short.clone()), ..Config::default() };
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("cluster_secret_file") && error.contains(&short.display().to_string()), "{error}");
        assert!(error.contains("decodes to 16 bytes") && error.contains("at least 32"), "{error}");
        assert!(error.contains("cohort keygen"), "{error}");

        let raw = dir.join("raw");
        std::fs::write(&raw, "this is my cluster password!\n").unwrap();
        let error = read_cluster_secret(&raw).unwrap_err();
        assert!(
            error.contains(&raw.display().to_string()) && error.contains("neither hex nor standard base64"),
            "{error}"
        );
        let binary = dir.join("binary");
        std::fs::write(&binary, [0xffu8; 40]).unwrap();
        assert!(read_cluster_secret(&binary).unwrap_err().contains("not text"));

        let c = Config { cluster_secret_file: Some(dir.join("missing")), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("cluster_secret_file"));

        let key = ClusterSecret::generate();
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", key.to_base64())).unwrap();
        assert_eq!(read_cluster_secret(&good).unwrap().to_hex(), key.to_hex());
        std::fs::write(&good, key.to_hex()).unwrap();
        assert_eq!(read_cluster_secret(&good).unwrap().to_hex(), key.to_hex());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn next_secret_file_is_read_like_the_current_one_and_needs_it() {
        let dir = temp_dir("next");
        let current = dir.join("current");
        std::fs::write(&current, ClusterSecret::generate().to_base64()).unwrap();
        let next = dir.join("next");
        std::fs::write(&next, ClusterSecret::generate().to_hex()).unwrap();
        let c = parse(&format!(
            "cluster_secret_file = {:?}\ncluster_secret_file_next = {:?}\n",
            current.display().to_string(),
            next.display().to_string()
        ))
        .unwrap();
        c.validate().unwrap();

        let alone = Config { cluster_secret_file_next: Some(next.clone()), ..Config::default() };
        let error = alone.validate().unwrap_err().to_string();
        assert!(error.contains("cluster_secret_file_next") && error.contains("needs cluster_secret_file"), "{error}");

        std::fs::write(&next, "short").unwrap();
        let c = Config { cluster_secret_file_next: Some(next.clone()), ..c };
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("`cluster_secret_file_next`") && error.contains(&next.display().to_string()), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn admin_token_file_wins_over_the_token_and_empty_is_refused() {
        let dir = temp_dir("token");
        let file = dir.join("token");
        std::fs::write(&file, "  from-the-file-0123456789\n").unwrap();
        let mut c = Config { admin_token: Some("from-the-env-0123456789".into()), ..Config::default() };
        assert_eq!(c.admin_token().unwrap().as_deref(), Some("from-the-env-0123456789"));
        c.apply(Overrides { admin_token_file: Some(file.clone()), ..Overrides::default() });
        c.validate().unwrap();
        assert_eq!(c.admin_token().unwrap().as_deref(), Some("from-the-file-0123456789"));

        std::fs::write(&file, "\n").unwrap();
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("`admin_token_file`") && error.contains("is empty"), "{error}");
        std::fs::write(&file, "short").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("at least 16"));
        c.admin_token_file = Some(dir.join("missing"));
        assert!(c.validate().unwrap_err().to_string().contains("`admin_token_file`"));

        let c = Config { admin_token: Some(String::new()), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("must not be empty"));
        assert_eq!(Config::default().admin_token().unwrap(), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn raft_section_parses_and_validates() {
        let c = parse("[raft]\nmax_voters = 3\nstorage = \"memory\"\ntick_interval_ms = 50\n").unwrap();
        c.validate().unwrap();
        assert_eq!((c.raft.max_voters, c.raft.storage, c.raft.tick_interval_ms), (3, RaftStorage::Memory, 50));
        let c = parse("[raft]\ndead_voter_after_ms = 5000\n").unwrap();
        assert_eq!(c.raft.dead_voter_after_ms, 5_000);
        assert!(c.validate().is_ok());
        let c = parse("[raft]\ndead_voter_after_ms = 10\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("raft.dead_voter_after_ms"));
        let c = parse("[raft]\nmax_voters = 4\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("raft.max_voters"));
        let err = parse("[raft]\nstorage = \"disk\"\n").unwrap_err().to_string();
        assert!(err.contains("raft.storage"), "{err}");
    }

    #[test]
    fn raft_snapshot_chunk_bytes_defaults_to_one_mib_and_is_bounded() {
        let c = parse("").unwrap();
        assert_eq!(c.raft.snapshot_chunk_bytes, 1024 * 1024);
        let c = parse("[raft]\nsnapshot_chunk_bytes = 65536\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.raft.snapshot_chunk_bytes, 65_536);
        for bad in [0, 4_095, 4 * 1024 * 1024 + 1] {
            let c = parse(&format!("[raft]\nsnapshot_chunk_bytes = {bad}\n")).unwrap();
            assert!(c.validate().unwrap_err().to_string().contains("raft.snapshot_chunk_bytes"), "{bad}");
        }
    }

    #[test]
    fn overrides_win_over_file() {
        let mut c = parse("name = \"file\"\n").unwrap();
        c.apply(Overrides {
            name: Some("flag".into()),
            seeds: Some(vec!["a:1".into(), "".into()]),
            chaos: true,
            ..Overrides::default()
        });
        assert_eq!(c.name, "flag");
        assert_eq!(c.seeds, vec!["a:1".to_string()]);
        assert!(c.chaos.enabled);
    }
}
