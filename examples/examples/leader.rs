//! Leader election with a consistent name, and a fencing token guarding a shared resource.
//!
//! Run: `cargo run -p cohort-examples --example leader`
//!
//! Two workers, on `earth` and `mars`, race to register the consistent name `leader`: one raft
//! commit decides, first committed wins, and the winner's answer carries a **fencing token** (the
//! log index of its registration). A shared resource, the `ledger` process on `venus`, accepts an
//! append only with a token at least as high as any it has seen. The leader's lease is revoked
//! while it is paused (think of a long GC pause), the other worker takes over with a higher
//! token, and when the old leader wakes up and writes with its old token the ledger refuses it:
//! the classic fencing story (Kleppmann, "How to do distributed locking"), with the token handed
//! out by the cluster itself. Sends *by name* carry the token too: a client that still holds the
//! old `(leader, token)` pair is refused where its message lands (`EpochMismatch`, counted).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort::Node;
use cohort::config::RaftStorage;
use cohort::registry::RegistryError;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

/// What the story's processes log.
pub type Journal = Arc<Mutex<Vec<String>>>;

fn log(journal: &Journal, line: String) {
    println!("  {line}");
    journal.lock().unwrap_or_else(|p| p.into_inner()).push(line);
}

/// What the ledger receives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LedgerMsg {
    /// Append `entry` on behalf of the writer holding fencing token `token`.
    Append {
        /// The writer's fencing token.
        token: u64,
        /// Who writes.
        writer: String,
        /// What.
        entry: String,
    },
}

/// The shared resource: refuses writes whose token is older than the newest it has seen.
struct Ledger;

impl Actor for Ledger {
    type Msg = LedgerMsg;
    type State = (u64, Journal);
    type Arguments = Journal;

    async fn pre_start(&self, _: ActorRef<LedgerMsg>, journal: Journal) -> Result<Self::State, ActorProcessingErr> {
        Ok((0, journal))
    }

    async fn handle(
        &self,
        _: ActorRef<LedgerMsg>,
        msg: LedgerMsg,
        (highest, journal): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let LedgerMsg::Append { token, writer, entry } = msg;
        if token < *highest {
            log(journal, format!("ledger refuses {entry:?} from {writer}: token {token} < {highest}"));
        } else {
            *highest = token;
            log(journal, format!("ledger appends {entry:?} from {writer} (token {token})"));
        }
        Ok(())
    }
}

/// What a worker receives as the holder of `leader`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// A command from a client, addressed to whoever holds `leader`.
    Command(String),
}

struct Worker;

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = (String, Journal);
    type Arguments = (String, Journal);

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        WorkerMsg::Command(what): WorkerMsg,
        (name, journal): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        log(journal, format!("worker on {name} handles command {what:?}"));
        Ok(())
    }
}

/// What the story observed.
#[derive(Debug)]
pub struct Story {
    /// The node whose worker won the first race.
    pub first_leader: String,
    /// Its fencing token.
    pub first_token: u64,
    /// The refusal the other worker got in the race.
    pub race_loser_error: String,
    /// The token of the second leader.
    pub second_token: u64,
    /// What the ledger and workers logged.
    pub journal: Vec<String>,
    /// Sends by name refused for a stale token, on the new leader's node.
    pub fence_rejections: u64,
}

async fn wait_until(what: &str, ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    cohort_examples::wait_until(what, Duration::from_secs(30), ok).await
}

fn journal_has(journal: &Journal, needle: &str) -> bool {
    journal.lock().map(|j| j.iter().any(|l| l.contains(needle))).unwrap_or(false)
}

/// The whole story.
pub async fn run() -> anyhow::Result<Story> {
    println!("starting a 3-node cluster on 127.0.0.1 (raft log in memory) ...");
    let nodes = cohort_examples::local_cluster_with(&["earth", "mars", "venus"], Duration::from_secs(20), |c| {
        c.raft.storage = RaftStorage::Memory;
    })
    .await?;
    let consistent = |n: &Node| n.registry().consistent().cloned();
    wait_until("a leader and 3 voters on every node", || {
        nodes.iter().all(|n| {
            consistent(n).is_some_and(|c| {
                let s = c.raft_status();
                s.leader.is_some() && s.voters.len() == 3
            })
        })
    })
    .await?;
    let raft_leader = consistent(&nodes[0]).and_then(|c| c.raft_status().leader).unwrap_or_default();
    println!("raft group formed: 3 voters, raft leader {raft_leader}");
    let journal: Journal = Arc::default();

    let (_, ledger) = nodes[2].spawn(Ledger, journal.clone()).await?;
    let ledger_token = nodes[2].registry().register_consistent("ledger", &ledger).await?.fence_token;
    println!("venus hosts the ledger, registered as `ledger` (token {ledger_token})");
    wait_until("the ledger visible everywhere", || nodes.iter().all(|n| n.registry().lookup("ledger").is_some()))
        .await?;

    // Two workers race for `leader`: one commit decides.
    let (_, on_earth) = nodes[0].spawn(Worker, ("earth".to_string(), journal.clone())).await?;
    let (_, on_mars) = nodes[1].spawn(Worker, ("mars".to_string(), journal.clone())).await?;
    let (earth, mars) = tokio::join!(
        nodes[0].registry().register_consistent("leader", &on_earth),
        nodes[1].registry().register_consistent("leader", &on_mars)
    );
    let (first, second, first_token, loser_error) = match (earth, mars) {
        (Ok(won), Err(lost)) => (0, 1, won.fence_token, lost),
        (Err(lost), Ok(won)) => (1, 0, won.fence_token, lost),
        other => anyhow::bail!("exactly one worker must win the race: {other:?}"),
    };
    anyhow::ensure!(matches!(loser_error, RegistryError::AlreadyRegistered { .. }), "{loser_error}");
    let first_name = nodes[first].id().name.clone();
    let second_name = nodes[second].id().name.clone();
    println!("the worker on {first_name} won `leader` with fencing token {first_token}; {second_name}: {loser_error}");

    let append = |node: &Node, token: u64, entry: &str| {
        let msg = LedgerMsg::Append { token, writer: node.id().name.clone(), entry: entry.into() };
        node.registry().send("ledger", msg).map(|_| ())
    };
    append(&nodes[first], first_token, "x=1")?;
    wait_until("the first append", || journal_has(&journal, "\"x=1\"")).await?;

    // The leader pauses; its lease is revoked meanwhile and the other worker takes over.
    println!("the leader on {first_name} pauses; its lease is revoked (the name is unregistered) ...");
    nodes[first].registry().unregister_consistent("leader").await?;
    let second_token = loop {
        match nodes[second]
            .registry()
            .register_consistent("leader", if second == 0 { &on_earth } else { &on_mars })
            .await
        {
            Ok(done) => break done.fence_token,
            Err(RegistryError::AlreadyRegistered { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(other) => return Err(other.into()),
        }
    };
    println!("the worker on {second_name} is the new leader with fencing token {second_token}");
    append(&nodes[second], second_token, "x=2")?;
    wait_until("the second append", || journal_has(&journal, "\"x=2\"")).await?;

    // The old leader wakes up, still believing it leads, and writes with its old token.
    println!("the old leader on {first_name} wakes up and writes with token {first_token} ...");
    append(&nodes[first], first_token, "x=3")?;
    wait_until("the stale append refused", || journal_has(&journal, "refuses \"x=3\"")).await?;

    // A client on venus that cached (leader, old token) sends a command by name: refused where
    // it lands. A plain send by name resolves the current token and gets through.
    nodes[2].registry().send_fenced("leader", first_token, WorkerMsg::Command("stale".into()))?;
    let holder_node = &nodes[second];
    let rejections = || holder_node.registry().consistent().map(|c| c.planes().execution.fence_rejections).unwrap_or(0);
    wait_until("the stale command refused on the leader's node", || rejections() >= 1).await?;
    wait_until("venus sees the new leader", || {
        nodes[2].registry().consistent().and_then(|c| c.lookup("leader")).is_some_and(|r| r.fence_token == second_token)
    })
    .await?;
    nodes[2].registry().send("leader", WorkerMsg::Command("fresh".into()))?;
    wait_until("the fresh command handled", || journal_has(&journal, "\"fresh\"")).await?;
    let fence_rejections = rejections();
    println!("a command carrying token {first_token} was refused on {second_name} (EpochMismatch, counted)");

    for node in nodes {
        node.shutdown().await;
    }
    let journal = journal.lock().map(|j| j.clone()).unwrap_or_default();
    println!("done");
    Ok(Story {
        first_leader: first_name,
        first_token,
        race_loser_error: loser_error.reason().to_string(),
        second_token,
        journal,
        fence_rejections,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await.map(|_| ())
}
