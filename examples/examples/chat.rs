//! Chat rooms as process groups across a 3-node cluster.
//!
//! Run: `cargo run -p cohort-examples --example chat`
//!
//! Every user is a process (a ractor actor hosted by one of three nodes). A room is a pg group:
//! joining the room is `pg.join`, saying something is one `broadcast` to the group, which sends one
//! frame per remote node and fans out locally there. The example then shows what Erlang users
//! expect from `pg`: a user whose process crashes leaves every room on every node, and a node that
//! shuts down takes its users out of every room.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort::Node;
use cohort::actors::Pid;
use cohort::actors::pg::{Group, Scope};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

/// What travels in a room broadcast.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChatMsg {
    /// A line said in a room.
    Said { room: String, from: String, text: String },
    /// Makes the user's process panic (to show crash cleanup).
    Crash,
}

/// One line a user saw, for the transcript.
pub type Transcript = Arc<Mutex<Vec<String>>>;

struct User;

impl Actor for User {
    type Msg = ChatMsg;
    type State = (String, Transcript);
    type Arguments = (String, Transcript);

    async fn pre_start(
        &self,
        _me: ActorRef<ChatMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<ChatMsg>,
        msg: ChatMsg,
        (name, seen): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChatMsg::Said { room, from, text } => {
                let line = format!("{name} sees in {room}: <{from}> {text}");
                println!("  {line}");
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                Ok(())
            }
            ChatMsg::Crash => panic!("{name}'s process crashes (on purpose)"),
        }
    }
}

fn say(scope: &Scope, room: &str, from: &str, text: &str) -> anyhow::Result<()> {
    let msg = ChatMsg::Said { room: room.into(), from: from.into(), text: text.into() };
    let report = scope.broadcast(room, Bytes::from(rmp_serde::to_vec(&msg)?))?;
    println!(
        "{from} says in {room}: {text:?} ({} local deliveries, {} remote frames)",
        report.local_delivered, report.remote_nodes
    );
    Ok(())
}

async fn wait_until(what: &str, ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    cohort_examples::wait_until(what, Duration::from_secs(10), ok).await
}

fn members(scope: &Scope, room: &str) -> Vec<Pid> {
    scope.get_members(room).to_vec()
}

/// The whole story; returns every line the users saw.
pub async fn run() -> anyhow::Result<Vec<String>> {
    println!("starting a 3-node cluster on 127.0.0.1 ...");
    let nodes: Vec<Node> = cohort_examples::local_cluster(&["earth", "mars", "venus"], Duration::from_secs(15)).await?;
    let seen: Transcript = Arc::default();
    let rust = Group::new("#rust")?;
    let erlang = Group::new("#erlang")?;

    // alice on earth, bob on mars, carol on venus.
    let mut users = Vec::new();
    for (name, node) in ["alice", "bob", "carol"].into_iter().zip(&nodes) {
        let (pid, _handle) = node.spawn(User, (name.to_string(), seen.clone())).await?;
        println!("{name} is {pid} on {}", node.id().name);
        users.push(pid);
    }
    let scopes: Vec<Scope> = nodes.iter().map(|n| n.pg().scope("default")).collect::<Result<_, _>>()?;
    for (i, scope) in scopes.iter().enumerate() {
        scope.join(&rust, &[users[i].clone()])?;
    }
    scopes[1].join(&erlang, &[users[1].clone()])?;
    wait_until("everyone in #rust on every node", || scopes.iter().all(|s| members(s, "#rust").len() == 3)).await?;
    println!(
        "#rust has {} members on every node; #erlang has {}",
        members(&scopes[0], "#rust").len(),
        members(&scopes[0], "#erlang").len()
    );

    say(&scopes[0], "#rust", "alice", "hello from earth")?;
    say(&scopes[2], "#erlang", "carol", "anyone using pg here?")?;
    wait_until("3 + 1 deliveries", || seen.lock().map(|s| s.len()).unwrap_or(0) == 4).await?;

    println!("carol's process crashes ...");
    nodes[2].processes().send_to(&users[2], ChatMsg::Crash)?;
    wait_until("carol gone from #rust everywhere", || scopes.iter().all(|s| members(s, "#rust").len() == 2)).await?;
    println!("#rust now has {} members on every node", members(&scopes[0], "#rust").len());
    say(&scopes[1], "#rust", "bob", "carol left?")?;
    wait_until("2 more deliveries", || seen.lock().map(|s| s.len()).unwrap_or(0) == 6).await?;

    println!("mars shuts down (bob's node) ...");
    let mut nodes = nodes;
    let mars = nodes.remove(1);
    mars.shutdown().await;
    let (earth, venus) = (&scopes[0], &scopes[2]);
    wait_until("bob gone from #rust on the survivors", || {
        members(earth, "#rust").len() == 1 && members(venus, "#rust").len() == 1
    })
    .await?;
    let left: Vec<String> = members(earth, "#rust").iter().map(Pid::to_string).collect();
    println!("#rust now has {} member(s): {}", left.len(), left.join(", "));

    for node in nodes {
        node.shutdown().await;
    }
    let lines = seen.lock().map(|s| s.clone()).unwrap_or_default();
    println!("done: {} lines seen", lines.len());
    Ok(lines)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await.map(|_| ())
}
