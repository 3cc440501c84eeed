//! # cohort-examples: runnable examples
//!
//! Each example is `examples/examples/<name>.rs`, run with `cargo run -p cohort-examples --example
//! <name>`, and also exercised by a test in `examples/tests/` so it cannot rot. What the examples
//! share, starting a small in-process cluster, is `cohort::testing`, re-exported here.

pub use cohort::testing::{local_cluster_with, wait_until};

use std::time::Duration;

use cohort::Node;

/// Start one node per name in this process on 127.0.0.1 with free ports and one shared cluster
/// key, and wait until every node sees every other alive (at most `within`).
pub async fn local_cluster(names: &[&str], within: Duration) -> anyhow::Result<Vec<Node>> {
    local_cluster_with(names, within, |_| {}).await
}
