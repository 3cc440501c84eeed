//! # cohort: a distributed actor runtime node
//!
//! This crate is the node: the [`Node`] that owns one cluster member's state and subsystems, its
//! [`Config`] (TOML file, `COHORT_*` environment, flags), the HTTP surface (`/livez`, `/readyz`,
//! `/metrics`, `/admin/...`), telemetry (tracing, Prometheus, OTLP), and the `cohort` binary
//! (`cohort node`, `cohort up`). The other workspace crates hold the cluster layer
//! ([`cohort_cluster`]), processes and groups ([`cohort_actors`]), the name registry
//! ([`cohort_registry`]) and chaos scenarios ([`cohort_chaos`]); the public parts of them are
//! re-exported from here.
//!
//! Invariants: a [`Node`] owns everything it uses (no process-global state but the `tracing`
//! subscriber that the binary installs), so many nodes can run in one process; every queue, map and
//! buffer is bounded and what it refuses is counted.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = cohort::Config::default();
//! config.name = "n1".into();
//! config.http.addr = "127.0.0.1:0".parse()?;
//! config.gossip.addr = "127.0.0.1:0".parse()?;
//! config.internode.addr = "127.0.0.1:0".parse()?;
//! config.validate()?;
//! let node = cohort::Node::start(config).await?;
//! assert!(node.health().livez().ok);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod cli;
mod cluster_subsystems;
pub mod config;
pub mod ctl;
pub mod events;
pub mod health;
mod http;
mod http_events;
mod http_pg;
mod http_registry;
pub mod metrics;
pub mod node;
pub mod probe;
pub mod sim_cli;
pub mod telemetry;
pub mod testing;
pub mod up;

pub use cluster_subsystems::{ClusterStartError, load_secret, load_secret_next};
pub use cohort_actors as actors;
pub use cohort_chaos as chaos;
pub use cohort_cluster as cluster;
pub use cohort_cluster::NodeId;
pub use cohort_registry as registry;
pub use config::Config;
pub use node::{Node, NodeAddrs, ShutdownReport, StartError};
