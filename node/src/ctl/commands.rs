//! The `cohort ctl` commands but `status`: `members`, `raft`, `names`, `lookup`, `pg`, `faults`.
//!
//! Each one asks the node, then prints either the node's JSON as it came (`-o json`, so scripts
//! read the documented shapes of docs/operations.md) or a table built from the typed
//! [`views`](super::views).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::render::{self, Cell, Paint, Sheet, Table};
use super::views::{self, parse};
use super::{CtlError, Ctx, Done, EXIT_FAILED, client};
use cohort_cluster::faults::{Direction, FaultRule, FaultRules};

const MEMBERS: &str = "GET /admin/cluster/members";
const RAFT: &str = "GET /admin/raft";
const FAULTS: &str = "/admin/faults";

/// `cohort ctl members`: this node's view.
pub(crate) fn members(ctx: &Ctx) -> Result<Done, CtlError> {
    let value = ctx.client.get(&["admin", "cluster", "members"], &[])?;
    if ctx.json {
        return Ok(Done::ok(Ctx::json_out(&value)));
    }
    let members: views::Members = parse(MEMBERS, &value)?;
    // The raft column names each member's role when this node's raft status answers; without it
    // (the consistent tier is not running) it says whether the member may hold a raft seat.
    let raft: Option<views::Raft> = ctx.client.get(&["admin", "raft"], &[]).ok().and_then(|v| parse(RAFT, &v).ok());
    let mut table = Table::new(&["NODE", "STATE", "INCARNATION", "HTTP", "GOSSIP", "INTERNODE", "RAFT", "DOMAIN"]);
    for m in &members.members {
        let name = if m.is_self { format!("{}*", m.node) } else { m.node.clone() };
        table.row(vec![
            name.into(),
            Cell::painted(&m.state, render::member_state(&m.state)),
            m.incarnation.into(),
            m.addrs.http.as_str().into(),
            m.addrs.gossip.as_str().into(),
            m.addrs.internode.as_str().into(),
            raft_seat(m, raft.as_ref()),
            m.failure_domain.as_str().into(),
        ]);
    }
    Ok(Done::ok(table.render(ctx.color)))
}

fn raft_seat(m: &views::Member, raft: Option<&views::Raft>) -> Cell {
    if let Some(r) = raft {
        if r.leader.as_deref() == Some(m.node.as_str()) {
            return Cell::painted("leader", Paint::Good);
        }
        if r.voters.contains(&m.node) {
            return "voter".into();
        }
        if r.learners.contains(&m.node) {
            return "learner".into();
        }
    }
    if m.raft_eligible { "eligible".into() } else { Cell::painted("no", Paint::Dim) }
}

/// `cohort ctl raft`.
pub(crate) fn raft(ctx: &Ctx) -> Result<Done, CtlError> {
    let value = ctx.client.get(&["admin", "raft"], &[])?;
    if ctx.json {
        return Ok(Done::ok(Ctx::json_out(&value)));
    }
    let r: views::Raft = parse(RAFT, &value)?;
    let mut sheet = Sheet::new();
    sheet.add("role", Cell::painted(&r.role, render::raft_role(&r.role)));
    sheet.add("term", r.term);
    sheet.add("leader", leader_cell(r.leader.as_deref()));
    sheet.add("voters", render::sorted_list(&r.voters));
    sheet.add("learners", render::sorted_list(&r.learners));
    sheet.add("commit index", r.commit_index);
    sheet.add("applied index", r.applied_index);
    sheet.add("quorum", quorum_cell(r.quorum_reachable, r.last_contact_ms));
    sheet.add("raft id", r.raft_id);
    sheet.add("storage", r.storage.as_str());
    Ok(Done::ok(sheet.render(ctx.color)))
}

pub(super) fn leader_cell(leader: Option<&str>) -> Cell {
    match leader {
        Some(l) => l.into(),
        None => Cell::painted("none known", Paint::Bad),
    }
}

pub(super) fn quorum_cell(reachable: bool, last_contact_ms: Option<u64>) -> Cell {
    let contact = match last_contact_ms {
        Some(ms) => format!("last contact {ms} ms ago"),
        None => "never in contact".to_string(),
    };
    let word = if reachable { "reachable" } else { "unreachable" };
    Cell::painted(format!("{word} ({contact})"), render::good_if(reachable))
}

/// A registry tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum TierArg {
    /// This node's names.
    Local,
    /// Cluster-wide, last writer wins.
    Eventual,
    /// Raft-backed, fenced.
    Consistent,
}

impl TierArg {
    const ALL: [TierArg; 3] = [Self::Local, Self::Eventual, Self::Consistent];

    fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Eventual => "eventual",
            Self::Consistent => "consistent",
        }
    }
}

/// Flags of `cohort ctl names`.
#[derive(Args, Debug)]
pub(crate) struct NamesArgs {
    /// Only this tier (default: all three; `-o json` is then `{"local":..,"eventual":..,"consistent":..}`).
    #[arg(long, value_enum)]
    tier: Option<TierArg>,
}

/// `cohort ctl names [--tier T]`.
pub(crate) fn names(ctx: &Ctx, args: &NamesArgs) -> Result<Done, CtlError> {
    let tiers: Vec<TierArg> = match args.tier {
        Some(t) => vec![t],
        None => TierArg::ALL.to_vec(),
    };
    let mut answers = Vec::new();
    let mut notes = Vec::new();
    for tier in tiers {
        match ctx.client.get(&["admin", "registry", tier.as_str()], &[]) {
            Ok(value) => answers.push((tier, value)),
            // One tier refusing (the consistent tier without a quorum) leaves the others to show.
            Err(e @ CtlError::Refused { .. }) if args.tier.is_none() => {
                notes.push(format!("{} tier: {e}", tier.as_str()))
            }
            Err(e) => return Err(e),
        }
    }
    let code = if notes.is_empty() { super::EXIT_OK } else { EXIT_FAILED };
    if ctx.json {
        let out = match (args.tier, answers.as_slice()) {
            (Some(_), [(_, value)]) => value.clone(),
            _ => Value::Object(answers.iter().map(|(t, v)| (t.as_str().to_string(), v.clone())).collect()),
        };
        return Ok(Done { out: Ctx::json_out(&out), notes, code });
    }
    let mut table = Table::new(&["TIER", "NAME", "PID", "FENCE"]).right_aligned(&[3]);
    let mut views_lines = Vec::new();
    for (tier, value) in &answers {
        let what = format!("GET /admin/registry/{}", tier.as_str());
        let names: views::Names = parse(&what, value)?;
        for n in &names.names {
            let fence = n.fence_token.map_or_else(|| Cell::new(""), Cell::from);
            table.row(vec![tier.as_str().into(), n.name.as_str().into(), n.pid.as_str().into(), fence]);
        }
        if let Some(w) = &names.witness {
            views_lines.push(format!(
                "{} view: served {} (current {}, lag {}), catch-up {}, mode {}",
                tier.as_str(),
                w.served_root_token,
                w.current_root_token,
                w.root_lag,
                render::catch_up_state(&w.catch_up_state).apply(&render::clean(&w.catch_up_state), ctx.color),
                render::degraded_mode(&w.degraded_mode).apply(&render::clean(&w.degraded_mode), ctx.color),
            ));
        }
    }
    let mut out = table.render(ctx.color);
    for line in views_lines {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(Done { out, notes, code })
}

/// A read's freshness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum FreshnessArg {
    /// Confirmed with the leader (a ReadIndex round).
    Strong,
    /// This node's view, if it lags the leader by at most --max-root-lag entries.
    Bounded,
    /// This node's view, however stale (the witness says how stale).
    #[value(name = "best_effort")]
    BestEffort,
}

impl FreshnessArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Strong => "strong",
            Self::Bounded => "bounded",
            Self::BestEffort => "best_effort",
        }
    }
}

/// Flags of `cohort ctl lookup`.
#[derive(Args, Debug)]
pub(crate) struct LookupArgs {
    /// The registered name.
    #[arg(value_name = "NAME")]
    name: String,
    /// Resolve in this tier only (default: local, then consistent, then eventual).
    #[arg(long, value_enum)]
    tier: Option<TierArg>,
    /// A consistent read of this freshness (implies --tier consistent).
    #[arg(long, value_enum, value_name = "strong|bounded|best_effort")]
    freshness: Option<FreshnessArg>,
    /// For a bounded read: the most entries this node's view may lag the leader by.
    #[arg(long, value_name = "N")]
    max_root_lag: Option<u64>,
    /// Read-your-writes: the log index of your own write (its root_token.index).
    #[arg(long, value_name = "N")]
    required_index: Option<u64>,
}

/// `cohort ctl lookup NAME`.
pub(crate) fn lookup(ctx: &Ctx, args: &LookupArgs) -> Result<Done, CtlError> {
    let consistent_only = args.freshness.is_some() || args.max_root_lag.is_some() || args.required_index.is_some();
    if consistent_only && args.tier.is_some_and(|t| t != TierArg::Consistent) {
        return Err(CtlError::Usage(
            "--freshness, --max-root-lag and --required-index read the consistent tier only".into(),
        ));
    }
    if args.name.is_empty() || args.name.len() > 255 {
        return Err(CtlError::Usage("NAME: a registered name is 1 to 255 bytes".into()));
    }
    let mut query = Vec::new();
    let tier = if consistent_only { Some(TierArg::Consistent) } else { args.tier };
    if let Some(t) = tier {
        query.push(("tier", t.as_str().to_string()));
    }
    if let Some(f) = args.freshness {
        query.push(("freshness", f.as_str().to_string()));
    }
    if let Some(n) = args.max_root_lag {
        query.push(("max_root_lag", n.to_string()));
    }
    if let Some(n) = args.required_index {
        query.push(("required_index", n.to_string()));
    }
    let value = match ctx.client.get(&["admin", "registry", "lookup", &args.name], &query) {
        Ok(v) => v,
        Err(CtlError::Refused { status: 404, reason, .. }) if reason == "NotFound" => {
            let place = tier.map_or_else(|| "in any tier".to_string(), |t| format!("in the {} tier", t.as_str()));
            return Err(CtlError::No(format!("`{}` is not registered {place}", render::clean(&args.name))));
        }
        Err(e) => return Err(e),
    };
    if ctx.json {
        return Ok(Done::ok(Ctx::json_out(&value)));
    }
    let l: views::Lookup = parse("GET /admin/registry/lookup", &value)?;
    let mut sheet = Sheet::new();
    sheet.add("name", l.name.as_str());
    sheet.add("tier", l.tier.as_str());
    sheet.add("pid", l.pid.as_str());
    if let Some(f) = l.fence_token {
        sheet.add("fence token", f);
    }
    if let Some(w) = &l.witness {
        sheet.add(
            "freshness",
            format!("{}{}", w.served_freshness, if w.served_by_leader { ", by the leader" } else { "" }),
        );
        sheet.add("served token", w.served_root_token.to_string());
        sheet.add("current token", w.current_root_token.to_string());
        let lag = Cell::painted(w.root_lag.to_string(), if w.root_lag == 0 { Paint::Plain } else { Paint::Warn });
        sheet.add("root lag", lag);
        sheet.add("catch-up", Cell::painted(&w.catch_up_state, render::catch_up_state(&w.catch_up_state)));
        sheet.add("degraded mode", Cell::painted(&w.degraded_mode, render::degraded_mode(&w.degraded_mode)));
    }
    Ok(Done::ok(sheet.render(ctx.color)))
}

/// `cohort ctl pg ...`
#[derive(Subcommand, Debug)]
pub(crate) enum PgCommand {
    /// The groups of a scope with their member counts.
    Groups(PgScope),
    /// The members of one group: pids, joins, whether local to this node.
    Members(PgMembersArgs),
}

/// `--scope`.
#[derive(Args, Debug)]
pub(crate) struct PgScope {
    /// The pg scope.
    #[arg(long, value_name = "S", default_value = cohort_actors::pg::DEFAULT_SCOPE)]
    scope: String,
}

/// Flags of `cohort ctl pg members`.
#[derive(Args, Debug)]
pub(crate) struct PgMembersArgs {
    /// The group.
    #[arg(value_name = "GROUP")]
    group: String,
    #[command(flatten)]
    scope: PgScope,
}

/// `cohort ctl pg groups|members`.
pub(crate) fn pg(ctx: &Ctx, command: &PgCommand) -> Result<Done, CtlError> {
    match command {
        PgCommand::Groups(s) => {
            let value = ctx.client.get(&["admin", "pg", &s.scope, "groups"], &[])?;
            if ctx.json {
                return Ok(Done::ok(Ctx::json_out(&value)));
            }
            let groups: views::Groups = parse("GET /admin/pg/{scope}/groups", &value)?;
            let mut table = Table::new(&["GROUP", "MEMBERS", "LOCAL"]).right_aligned(&[1, 2]);
            for g in &groups.groups {
                table.row(vec![g.group.as_str().into(), g.members.into(), g.local_members.into()]);
            }
            Ok(Done::ok(table.render(ctx.color)))
        }
        PgCommand::Members(a) => {
            if a.group.is_empty() {
                return Err(CtlError::Usage("GROUP must not be empty".into()));
            }
            let value = ctx.client.get(&["admin", "pg", &a.scope.scope, "groups", &a.group], &[])?;
            if ctx.json {
                return Ok(Done::ok(Ctx::json_out(&value)));
            }
            let group: views::Group = parse("GET /admin/pg/{scope}/groups/{group}", &value)?;
            // A pid is listed once per join.
            let mut joins: BTreeMap<&str, u64> = BTreeMap::new();
            for pid in &group.members {
                *joins.entry(pid.as_str()).or_default() += 1;
            }
            let mut table = Table::new(&["PID", "JOINS", "LOCAL"]).right_aligned(&[1]);
            for (pid, n) in joins {
                let local = group.local_members.iter().any(|p| p == pid);
                table.row(vec![pid.into(), n.into(), render::yes_no(local).into()]);
            }
            Ok(Done::ok(table.render(ctx.color)))
        }
    }
}

/// `cohort ctl faults ...`
#[derive(Subcommand, Debug)]
pub(crate) enum FaultsCommand {
    /// The fault rules in force on the node.
    Show,
    /// Replace the node's fault rules: one rule per --peer, or a rule set from --file.
    #[command(long_about = FAULTS_SET_ABOUT)]
    Set(FaultsSetArgs),
    /// Clear the node's fault rules (--all: on every member this node lists).
    Clear(FaultsClearArgs),
}

const FAULTS_SET_ABOUT: &str = "\
Replace the node's fault rules (the node must run with --chaos). The rules apply to this node's
gossip and internode traffic with the peers named; they replace every rule the node had.

    cohort ctl faults set --peer n2 --drop 1                  # cut this node off from n2
    cohort ctl faults set --peer n1 --peer n2 --delay-ms 200 --jitter-ms 50
    cohort ctl faults set --file rules.json                   # {\"rules\":[{\"peer\",\"direction\",...}]}

A partition is both sides dropping: run it against each node of the minority and of the majority
(`faults clear --all` heals every node).";

/// Flags of `cohort ctl faults set`.
#[derive(Args, Debug)]
pub(crate) struct FaultsSetArgs {
    /// A peer node name; one rule per --peer, all with the flags below.
    #[arg(long, value_name = "NODE", required_unless_present = "file")]
    peer: Vec<String>,
    /// Which traffic: received from the peer, sent to it, or both.
    #[arg(long, value_name = "in|out|both", default_value = "both", value_parser = ["in", "out", "both"])]
    direction: String,
    /// Probability of dropping a packet, 0 to 1 (1: a partition).
    #[arg(long, value_name = "P")]
    drop: Option<f64>,
    /// Delay added to every packet not dropped, in milliseconds.
    #[arg(long, value_name = "MS")]
    delay_ms: Option<u64>,
    /// Random extra delay up to this many milliseconds.
    #[arg(long, value_name = "MS")]
    jitter_ms: Option<u64>,
    /// A whole rule set, `{"rules":[...]}` as POST /admin/faults takes it, from a file (`-`: stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["peer", "drop", "delay_ms", "jitter_ms"])]
    file: Option<PathBuf>,
}

/// Flags of `cohort ctl faults clear`.
#[derive(Args, Debug)]
pub(crate) struct FaultsClearArgs {
    /// Clear on every member the node lists (at each member's HTTP address), this one included.
    #[arg(long)]
    all: bool,
}

/// `cohort ctl faults show|set|clear`.
pub(crate) fn faults(ctx: &Ctx, command: &FaultsCommand) -> Result<Done, CtlError> {
    let value = match command {
        FaultsCommand::Show => ctx.client.get(&["admin", "faults"], &[])?,
        FaultsCommand::Set(args) => {
            let rules = fault_rules(args)?;
            let body = serde_json::to_value(&rules).map_err(|e| CtlError::Failed(e.to_string()))?;
            let token = ctx.token()?;
            ctx.client.post(&["admin", "faults"], &body, &token)?
        }
        FaultsCommand::Clear(FaultsClearArgs { all: true }) => return clear_everywhere(ctx),
        FaultsCommand::Clear(_) => {
            let token = ctx.token()?;
            ctx.client.delete(&["admin", "faults"], &token)?
        }
    };
    if ctx.json {
        return Ok(Done::ok(Ctx::json_out(&value)));
    }
    let faults: views::Faults = parse(FAULTS, &value)?;
    Ok(Done::ok(faults_table(&faults, ctx.color)))
}

fn faults_table(faults: &views::Faults, color: bool) -> String {
    if !faults.enabled {
        return "fault injection is off on this node (it runs without --chaos)\n".to_string();
    }
    if faults.rules.rules.is_empty() {
        return "no fault rules\n".to_string();
    }
    let mut table = Table::new(&["PEER", "DIRECTION", "DROP", "DELAY", "JITTER"]).right_aligned(&[2, 3, 4]);
    for r in &faults.rules.rules {
        let drop = Cell::painted(format!("{}", r.drop), if r.drop >= 1.0 { Paint::Bad } else { Paint::Plain });
        table.row(vec![
            r.peer.as_str().into(),
            r.direction.as_str().into(),
            drop,
            format!("{}ms", r.delay_ms).into(),
            format!("{}ms", r.jitter_ms).into(),
        ]);
    }
    table.render(color)
}

/// The rule set `faults set` sends, checked as the node would check it (a usage error names the
/// field).
fn fault_rules(args: &FaultsSetArgs) -> Result<FaultRules, CtlError> {
    let rules = if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)
                .map_err(|e| CtlError::Usage(format!("--file -: cannot read stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| CtlError::Usage(format!("--file: cannot read {}: {e}", path.display())))?
        };
        serde_json::from_str::<FaultRules>(&text).map_err(|e| {
            CtlError::Usage(format!("--file {}: not a rule set `{{\"rules\":[...]}}`: {e}", path.display()))
        })?
    } else {
        if args.drop.is_none() && args.delay_ms.is_none() && args.jitter_ms.is_none() {
            return Err(CtlError::Usage(
                "say what the rule does: --drop P, --delay-ms MS and/or --jitter-ms MS (--drop 1 is a partition)"
                    .into(),
            ));
        }
        let direction = match args.direction.as_str() {
            "in" => Direction::In,
            "out" => Direction::Out,
            _ => Direction::Both,
        };
        let rules = args
            .peer
            .iter()
            .map(|peer| FaultRule {
                drop: args.drop.unwrap_or(0.0),
                delay_ms: args.delay_ms.unwrap_or(0),
                jitter_ms: args.jitter_ms.unwrap_or(0),
                ..FaultRule::new(peer.clone(), direction)
            })
            .collect();
        FaultRules { rules }
    };
    rules.validate().map_err(|e| CtlError::Usage(format!("fault rules: {e}")))?;
    Ok(rules)
}

/// `faults clear --all`: a `DELETE /admin/faults` at every member's HTTP address, each reported.
fn clear_everywhere(ctx: &Ctx) -> Result<Done, CtlError> {
    let token = ctx.token()?;
    let value = ctx.client.get(&["admin", "cluster", "members"], &[])?;
    let members: views::Members = parse(MEMBERS, &value)?;
    let mut results = Vec::new();
    let mut notes = Vec::new();
    for m in &members.members {
        let url = format!("http://{}", m.addrs.http);
        // A member that left the cluster has stopped; its rules went with it.
        let outcome = if m.state == "left" { Ok(false) } else { clear_member(ctx, m, &url, &token).map(|_| true) };
        if let Err(e) = &outcome {
            notes.push(format!("{}: {e}", m.node));
        }
        results.push((m.node.clone(), url, outcome.map_err(|e| e.to_string())));
    }
    let code = if notes.is_empty() { super::EXIT_OK } else { EXIT_FAILED };
    if ctx.json {
        let nodes: Vec<Value> = results
            .iter()
            .map(|(node, url, outcome)| match outcome {
                Ok(true) => json!({ "node": node, "http": url, "result": "cleared" }),
                Ok(false) => json!({ "node": node, "http": url, "result": "skipped", "error": "the member left" }),
                Err(e) => json!({ "node": node, "http": url, "result": "failed", "error": e }),
            })
            .collect();
        return Ok(Done { out: Ctx::json_out(&json!({ "nodes": nodes })), notes, code });
    }
    let mut table = Table::new(&["NODE", "HTTP", "RESULT"]);
    for (node, url, outcome) in &results {
        let result = match outcome {
            Ok(true) => Cell::painted("cleared", Paint::Good),
            Ok(false) => Cell::painted("skipped (left)", Paint::Dim),
            Err(_) => Cell::painted("failed", Paint::Bad),
        };
        table.row(vec![node.as_str().into(), url.as_str().into(), result]);
    }
    Ok(Done { out: table.render(ctx.color), notes, code })
}

/// `DELETE /admin/faults` on one member at its announced HTTP address, once that address has
/// answered as the member: a node announcing a loopback or wildcard address could otherwise send
/// the request to whatever node listens there on this machine.
fn clear_member(ctx: &Ctx, m: &views::Member, url: &str, token: &str) -> Result<Value, CtlError> {
    let unspecified = m.addrs.http.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified());
    if unspecified {
        return Err(CtlError::Failed(format!(
            "it announces the wildcard HTTP address {} (set its `advertise`, or run against it with --node)",
            m.addrs.http
        )));
    }
    let base = client::parse_base(url).map_err(CtlError::Failed)?;
    let member = client::Client::new(base, ctx.timeout)?;
    let node: views::NodeInfo = parse("GET /admin/node", &member.get(&["admin", "node"], &[])?)?;
    if (node.node.as_str(), node.incarnation) != (m.node.as_str(), m.incarnation) {
        return Err(CtlError::Failed(format!(
            "{url} answers as {} (incarnation {}), not as this member: its HTTP address is not reachable from here \
             (run against it with --node)",
            render::clean(&node.node),
            node.incarnation
        )));
    }
    member.delete(&["admin", "faults"], token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_args(peers: &[&str]) -> FaultsSetArgs {
        FaultsSetArgs {
            peer: peers.iter().map(|p| p.to_string()).collect(),
            direction: "both".into(),
            drop: None,
            delay_ms: None,
            jitter_ms: None,
            file: None,
        }
    }

    #[test]
    fn faults_set_builds_one_rule_per_peer_and_checks_it_like_the_node() {
        let mut a = set_args(&["n1", "n2"]);
        a.drop = Some(1.0);
        a.direction = "out".into();
        let rules = fault_rules(&a).unwrap();
        assert_eq!(
            serde_json::to_value(&rules).unwrap(),
            json!({"rules":[
                {"peer":"n1","direction":"out","drop":1.0,"delay_ms":0,"jitter_ms":0},
                {"peer":"n2","direction":"out","drop":1.0,"delay_ms":0,"jitter_ms":0}]})
        );
        let e = fault_rules(&set_args(&["n1"])).unwrap_err();
        assert!(matches!(&e, CtlError::Usage(m) if m.contains("--drop")), "{e}");
        let mut a = set_args(&["n1"]);
        a.drop = Some(1.5);
        let e = fault_rules(&a).unwrap_err();
        assert!(matches!(&e, CtlError::Usage(m) if m.contains("rules[0].drop")), "{e}");
    }

    #[test]
    fn faults_set_reads_a_rule_file() {
        let dir = std::env::temp_dir().join(format!("cohort-ctl-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"rules":[{"peer":"c","drop":1.0}]}"#).unwrap();
        let mut a = set_args(&[]);
        a.file = Some(good);
        assert_eq!(fault_rules(&a).unwrap().rules[0].peer, "c");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"rules":[{"peer":"c","dorp":1.0}]}"#).unwrap();
        a.file = Some(bad);
        let e = fault_rules(&a).unwrap_err();
        assert!(matches!(&e, CtlError::Usage(m) if m.contains("dorp")), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn faults_tables_say_what_is_in_force() {
        let v = json!({"enabled": true, "rules": {"rules": [
            {"peer": "n2", "direction": "both", "drop": 1.0, "delay_ms": 0, "jitter_ms": 0}]}});
        let f: views::Faults = parse(FAULTS, &v).unwrap();
        let t = faults_table(&f, false);
        assert_eq!(t, "PEER  DIRECTION  DROP  DELAY  JITTER\nn2    both          1    0ms     0ms\n");
        let f: views::Faults = parse(FAULTS, &json!({"enabled": false, "rules": {"rules": []}})).unwrap();
        assert!(faults_table(&f, false).contains("without --chaos"));
        let f: views::Faults = parse(FAULTS, &json!({"enabled": true, "rules": {"rules": []}})).unwrap();
        assert_eq!(faults_table(&f, false), "no fault rules\n");
    }
}
