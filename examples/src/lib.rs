//! # cohort-examples: runnable examples
//!
//! Each example is `examples/examples/<name>.rs`, run with `cargo run -p cohort-examples --example
//! <name>`, and also exercised by a test in `examples/tests/` so it cannot rot. This library holds
//! what the examples share: starting a small in-process cluster.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cohort::{Config, Node};

/// Start `n` nodes in this process on 127.0.0.1 with free ports and one shared cluster secret,
/// and wait until every node sees every other alive (at most `within`).
pub async fn local_cluster(names: &[&str], within: Duration) -> anyhow::Result<Vec<Node>> {
    local_cluster_with(names, within, |_| {}).await
}

/// [`local_cluster`] with each node's config adjusted by `tweak` (e.g. chaos enabled).
pub async fn local_cluster_with(
    names: &[&str],
    within: Duration,
    tweak: impl Fn(&mut Config),
) -> anyhow::Result<Vec<Node>> {
    let dir = std::env::temp_dir().join(format!("cohort-example-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir_all(&dir)?;
    let secret: PathBuf = dir.join("cluster.secret");
    // A key file as `cohort keygen > cluster.secret` writes it: 32 random bytes in base64.
    std::fs::write(&secret, format!("{}\n", cohort::cluster::auth::ClusterSecret::generate().to_base64()))?;
    let mut nodes: Vec<Node> = Vec::new();
    for name in names {
        let mut config = Config {
            name: name.to_string(),
            data_dir: dir.join(name),
            cluster_secret_file: Some(secret.clone()),
            seeds: nodes.first().map(|n| vec![n.addrs().gossip.to_string()]).unwrap_or_default(),
            ..Config::default()
        };
        config.http.addr = "127.0.0.1:0".parse()?;
        config.gossip.addr = "127.0.0.1:0".parse()?;
        config.internode.addr = "127.0.0.1:0".parse()?;
        tweak(&mut config);
        config.validate()?;
        nodes.push(Node::start(config).await?);
    }
    let deadline = Instant::now() + within;
    while !nodes
        .iter()
        .all(|n| n.membership().members().iter().filter(|m| m.state.as_str() == "alive").count() == names.len())
    {
        anyhow::ensure!(Instant::now() < deadline, "the cluster did not form within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(nodes)
}

/// Polls `ok` every 20 ms until it holds, for at most `within`; an error names `what` otherwise.
pub async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !ok() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
