//! User sessions as eventual-tier names across a 3-node cluster.
//!
//! Run: `cargo run -p cohort-examples --example sessions`
//!
//! Every logged-in user has a session process on the node they connected to, registered under
//! `session:<user>` in the eventual tier: a local write plus a gossip delta, so logins never wait
//! for a consensus round, and every node can route to a session by name within a few gossip
//! rounds. Sessions are short-lived: when one ends, its name disappears everywhere. When a network
//! blip lets one user log in on two nodes at once, the CRDT merge picks the same owner on every
//! node once they talk again, and the losing session is told (`NameRevoked`, exactly once) and
//! closes itself: the Erlang `global` conflict story, without a lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort::Node;
use cohort::actors::{Pid, ProcessRef};
use cohort::cluster::faults::{FaultRule, FaultRules};
use cohort::registry::{NameRevoked, Tier};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

/// What a session process receives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SessionMsg {
    /// A request routed to the session by name.
    Request(String),
    /// A concurrent login elsewhere won this session's name.
    Revoked(NameRevoked),
    /// The user logged out.
    End,
}

impl From<NameRevoked> for SessionMsg {
    fn from(notice: NameRevoked) -> Self {
        SessionMsg::Revoked(notice)
    }
}

/// What sessions did, for the story's checks.
pub type Journal = Arc<Mutex<Vec<String>>>;

struct Session;

impl Actor for Session {
    type Msg = SessionMsg;
    type State = (String, Journal);
    type Arguments = (String, Journal);

    async fn pre_start(
        &self,
        _: ActorRef<SessionMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        me: ActorRef<SessionMsg>,
        msg: SessionMsg,
        (user, journal): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let log = |line: String| {
            println!("  {line}");
            journal.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        };
        match msg {
            SessionMsg::Request(what) => log(format!("session of {user} handles {what:?}")),
            SessionMsg::Revoked(notice) => {
                log(format!("a session of {user} lost {} and closes", notice.name));
                me.stop(None);
            }
            SessionMsg::End => me.stop(None),
        }
        Ok(())
    }
}

/// What the story observed.
#[derive(Debug)]
pub struct Story {
    /// Sessions visible on each node after the logins.
    pub visible_after_login: Vec<usize>,
    /// Sessions visible on each node after half of them ended.
    pub visible_after_logout: Vec<usize>,
    /// What the sessions logged.
    pub journal: Vec<String>,
    /// The owner of `session:dana` on each node after the heal.
    pub dana_owners: Vec<Option<Pid>>,
}

async fn wait_until(what: &str, ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    cohort_examples::wait_until(what, Duration::from_secs(20), ok).await
}

async fn login(node: &Node, user: &str, journal: &Journal) -> anyhow::Result<ProcessRef<SessionMsg>> {
    let (_, session) = node.spawn(Session, (user.to_string(), journal.clone())).await?;
    node.registry().register(Tier::Eventual, &format!("session:{user}"), &session)?;
    Ok(session)
}

fn visible(nodes: &[Node]) -> Vec<usize> {
    nodes.iter().map(|n| n.registry().eventual().len()).collect()
}

/// Cuts `nodes[cut]` off from every other node (both directions), or heals every cut.
fn isolate(nodes: &[Node], cut: Option<usize>) -> anyhow::Result<()> {
    let drop_all = |peers: Vec<&Node>| -> anyhow::Result<FaultRules> {
        let rules = peers
            .into_iter()
            .map(|peer| FaultRule { drop: 1.0, ..FaultRule::new(peer.id().name.clone(), Default::default()) })
            .collect();
        Ok(FaultRules { rules })
    };
    for (i, node) in nodes.iter().enumerate() {
        match cut {
            None => node.faults().clear()?,
            Some(c) if c == i => {
                node.faults().install(drop_all(nodes.iter().filter(|n| n.id() != node.id()).collect())?)?
            }
            Some(c) => node.faults().install(drop_all(vec![&nodes[c]])?)?,
        }
    }
    Ok(())
}

/// The whole story.
pub async fn run() -> anyhow::Result<Story> {
    const USERS: usize = 300;
    println!("starting a 3-node cluster on 127.0.0.1 (chaos on, for the network blip) ...");
    let nodes = cohort_examples::local_cluster_with(&["earth", "mars", "venus"], Duration::from_secs(15), |c| {
        c.chaos.enabled = true;
    })
    .await?;
    let journal: Journal = Arc::default();

    let started = Instant::now();
    let mut sessions = Vec::new();
    for i in 0..USERS {
        sessions.push(login(&nodes[i % nodes.len()], &format!("user-{i}"), &journal).await?);
    }
    wait_until("every session visible on every node", || visible(&nodes).iter().all(|&n| n == USERS)).await?;
    let visible_after_login = visible(&nodes);
    println!("{USERS} users logged in, {} per node; every node sees all {USERS} sessions", USERS / nodes.len());
    println!("  (visible everywhere {} ms after the first login)", started.elapsed().as_millis());

    // Route by name from any node: venus reaches sessions hosted on earth and mars.
    for user in ["user-0", "user-1"] {
        let pid = nodes[2].registry().send(&format!("session:{user}"), SessionMsg::Request("GET /inbox".into()))?;
        println!("venus routes a request to session:{user} -> {pid}");
    }
    wait_until("2 requests handled", || journal.lock().map(|j| j.len()).unwrap_or(0) == 2).await?;

    // Half the users log out: their session processes stop, their names vanish everywhere.
    for session in sessions.iter().step_by(2) {
        session.send(SessionMsg::End)?;
    }
    wait_until("ended sessions gone everywhere", || visible(&nodes).iter().all(|&n| n == USERS / 2)).await?;
    let visible_after_logout = visible(&nodes);
    println!("{} users logged out; every node now sees {} sessions", USERS / 2, USERS / 2);

    // A network blip cuts earth off, and dana logs in on both sides of it.
    println!("a network blip cuts earth off from mars and venus; dana logs in on earth and on mars ...");
    isolate(&nodes, Some(0))?;
    let (_, on_earth) = nodes[0].spawn(Session, ("dana".to_string(), journal.clone())).await?;
    let (_, on_mars) = nodes[1].spawn(Session, ("dana".to_string(), journal.clone())).await?;
    nodes[0].registry().register(Tier::Eventual, "session:dana", &on_earth)?;
    nodes[1].registry().register(Tier::Eventual, "session:dana", &on_mars)?;
    println!("  earth: session:dana -> {}; mars: session:dana -> {}", on_earth.pid(), on_mars.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("the network heals ...");
    isolate(&nodes, None)?;
    let owners = |nodes: &[Node]| -> Vec<Option<Pid>> {
        nodes.iter().map(|n| n.registry().eventual().lookup("session:dana")).collect()
    };
    wait_until("one owner of session:dana everywhere", || {
        let seen = owners(&nodes);
        seen[0].is_some() && seen.iter().all(|o| *o == seen[0])
    })
    .await?;
    wait_until("the losing session told", || {
        journal.lock().map(|j| j.iter().any(|l| l.contains("lost session:dana"))).unwrap_or(false)
    })
    .await?;
    let dana_owners = owners(&nodes);
    let owner = dana_owners[0].clone().map(|p| p.to_string()).unwrap_or_default();
    println!("after the heal every node agrees: session:dana -> {owner}");

    for node in nodes {
        node.shutdown().await;
    }
    let journal = journal.lock().map(|j| j.clone()).unwrap_or_default();
    println!("done");
    Ok(Story { visible_after_login, visible_after_logout, journal, dana_owners })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await.map(|_| ())
}
