//! In-process clusters for users' own tests and examples: [`local_cluster`] starts `n` nodes in
//! this process on 127.0.0.1 with free ports and one shared cluster key, and returns once every
//! node sees every other alive.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let nodes = cohort::testing::local_cluster(3).await?;
//! assert_eq!(nodes[0].membership().members().len(), 3);
//! for node in nodes {
//!     node.shutdown().await;
//! }
//! # Ok(()) }
//! ```
//!
//! Invariants: nothing is shared between clusters (each has its own temporary directory and key);
//! the nodes' raft logs live in memory, so a test leaves no durable state behind but the key file
//! and data directories under the system's temporary directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{Config, RaftStorage};
use crate::node::Node;

/// How long [`local_cluster`] waits for the nodes to see each other.
pub const FORM_WITHIN: Duration = Duration::from_secs(30);

/// Starts `n` nodes named `n0`, `n1`, ... (see the module docs).
pub async fn local_cluster(n: usize) -> anyhow::Result<Vec<Node>> {
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    local_cluster_with(&names, FORM_WITHIN, |_| {}).await
}

/// Starts one node per name, each config adjusted by `tweak` before it is validated (enable
/// chaos, change a limit, ...), and waits at most `within` for everyone to see everyone alive.
/// The first node is every other node's seed and starts the raft group.
pub async fn local_cluster_with(
    names: &[&str],
    within: Duration,
    tweak: impl Fn(&mut Config),
) -> anyhow::Result<Vec<Node>> {
    let dir = scratch_dir("cluster")?;
    let secret: PathBuf = dir.join("cluster.key");
    // A key file as `cohort keygen > cluster.key` writes it: 32 random bytes in base64.
    write_private(&secret, &format!("{}\n", cohort_cluster::auth::ClusterSecret::generate().to_base64()))?;
    let mut nodes: Vec<Node> = Vec::new();
    for name in names {
        let mut config = Config::ephemeral(name);
        config.data_dir = dir.join(name);
        config.cluster_secret_file = Some(secret.clone());
        config.seeds = nodes.first().map(|n| vec![n.addrs().gossip.to_string()]).unwrap_or_default();
        tweak(&mut config);
        config.validate()?;
        nodes.push(Node::start(config).await?);
    }
    let deadline = Instant::now() + within;
    while !nodes.iter().all(|n| {
        n.membership().members().iter().filter(|m| m.state == cohort_cluster::MemberState::Alive).count() == names.len()
    }) {
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

/// A fresh directory under the system's temporary directory.
pub(crate) fn scratch_dir(what: &str) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "cohort-{what}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

impl Config {
    /// A config for an in-process node that needs nothing from the outside: named `name`,
    /// listening on 127.0.0.1 with free ports, its data in a fresh temporary directory, its raft
    /// log in memory, and no cluster key (the node makes up its own, so it can only form a
    /// cluster alone: give several nodes one `cluster_secret_file`, or use [`local_cluster`]).
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// let node = cohort::Node::start(cohort::Config::ephemeral("solo")).await?;
    /// println!("http://{}/livez", node.addrs().http);
    /// node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn ephemeral(name: &str) -> Self {
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = Config {
            name: name.to_string(),
            data_dir: scratch_dir(name).unwrap_or_else(|_| std::env::temp_dir().join(format!("cohort-{name}"))),
            ..Config::default()
        };
        config.http.addr = loopback;
        config.gossip.addr = loopback;
        config.internode.addr = loopback;
        config.raft.storage = RaftStorage::Memory;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ephemeral_node_starts_alone_and_a_local_cluster_forms() {
        let config = Config::ephemeral("solo");
        config.validate().unwrap();
        assert!(config.data_dir.starts_with(std::env::temp_dir()));
        let solo = Node::start(config).await.unwrap();
        assert_ne!(solo.addrs().http.port(), 0);
        solo.shutdown().await;

        let nodes = local_cluster(3).await.unwrap();
        let names: Vec<String> = nodes.iter().map(|n| n.id().name.clone()).collect();
        assert_eq!(names, ["n0", "n1", "n2"]);
        assert!(nodes.iter().all(|n| n.membership().members().len() == 3));
        for node in nodes {
            node.shutdown().await;
        }
    }
}
