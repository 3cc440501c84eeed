//! `cohort ctl status`: one screen about one node, from `/admin/node`, `/livez`, `/readyz`,
//! `/admin/raft`, `/admin/planes` and `/admin/transport`.
//!
//! The node's identity is required (no answer: exit 1). Raft, planes and transport answers that
//! are refusals (the consistent tier is not running, ...) are shown as such, not fatal. The exit
//! code is 3 when the node is not live or not ready, so `cohort ctl status >/dev/null` is a health
//! probe a script can use; `-o json` returns every answer in one object with `live` and `ready`.

use serde_json::{Map, Value, json};

use super::commands::{leader_cell, quorum_cell};
use super::render::{self, Cell, Paint, Sheet, Table};
use super::views::{self, parse};
use super::{CtlError, Ctx, Done, EXIT_NO, EXIT_OK};

/// What the node answered, section by section.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    node: Value,
    livez: (bool, Value),
    readyz: (bool, Value),
    /// `Ok(answer)` or `Err(why it was refused)` per optional section.
    raft: Option<Result<Value, String>>,
    planes: Option<Result<Value, String>>,
    transport: Option<Result<Value, String>>,
}

/// `cohort ctl status`.
pub(crate) fn status(ctx: &Ctx) -> Result<Done, CtlError> {
    let parts = Parts {
        node: ctx.client.get(&["admin", "node"], &[])?,
        livez: health(ctx, "livez")?,
        readyz: health(ctx, "readyz")?,
        raft: Some(optional(ctx.client.get(&["admin", "raft"], &[]))?),
        planes: Some(optional(ctx.client.get(&["admin", "planes"], &[]))?),
        transport: Some(optional(ctx.client.get(&["admin", "transport"], &[]))?),
    };
    let healthy = parts.livez.0 && parts.readyz.0;
    let code = if healthy { EXIT_OK } else { EXIT_NO };
    let out = if ctx.json { Ctx::json_out(&as_json(parts)) } else { render_status(&parts, ctx.color)? };
    Ok(Done { out, notes: Vec::new(), code })
}

/// `/livez` or `/readyz`: 200 is ok, 503 is an answer too (not ok); anything else is an error.
fn health(ctx: &Ctx, which: &str) -> Result<(bool, Value), CtlError> {
    let answer = ctx.client.get_any(&[which], &[])?;
    match answer.status {
        200 => Ok((true, answer.body)),
        503 if answer.body.get("checks").is_some() => Ok((false, answer.body)),
        _ => Err(super::client::refusal(&format!("GET /{which}"), &answer)),
    }
}

/// A refusal of an optional section is kept as its message; no answer at all stays an error.
fn optional(result: Result<Value, CtlError>) -> Result<Result<Value, String>, CtlError> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(e @ CtlError::Refused { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

fn as_json(parts: Parts) -> Value {
    let mut errors = Map::new();
    let mut section = |name: &str, s: Option<Result<Value, String>>| match s {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            errors.insert(name.to_string(), Value::String(e));
            Value::Null
        }
        None => Value::Null,
    };
    let raft = section("raft", parts.raft);
    let planes = section("planes", parts.planes);
    let transport = section("transport", parts.transport);
    json!({
        "node": parts.node,
        "live": parts.livez.0,
        "ready": parts.readyz.0,
        "livez": parts.livez.1,
        "readyz": parts.readyz.1,
        "raft": raft,
        "planes": planes,
        "transport": transport,
        "errors": errors,
    })
}

/// The failing checks of a health answer: `name: detail; ...`.
fn failing(h: &views::Health) -> String {
    let bad: Vec<String> = h
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| if c.detail.is_empty() { c.name.clone() } else { format!("{}: {}", c.name, c.detail) })
        .collect();
    if bad.is_empty() { h.status.clone() } else { bad.join("; ") }
}

fn render_status(parts: &Parts, color: bool) -> Result<String, CtlError> {
    let node: views::NodeInfo = parse("GET /admin/node", &parts.node)?;
    let livez: views::Health = parse("GET /livez", &parts.livez.1)?;
    let readyz: views::Health = parse("GET /readyz", &parts.readyz.1)?;
    let mut s = Sheet::new();
    s.add(
        "node",
        format!(
            "{} (incarnation {}, version {}, up {})",
            node.node,
            node.incarnation,
            node.version,
            render::duration_s(node.uptime_s)
        ),
    );
    s.add(
        "addresses",
        format!("http {}, gossip {}, internode {}", node.addrs.http, node.addrs.gossip, node.addrs.internode),
    );
    let verdict = |ok: bool, h: &views::Health| {
        if ok { Cell::painted("yes", Paint::Good) } else { Cell::painted(format!("no ({})", failing(h)), Paint::Bad) }
    };
    s.add("live", verdict(parts.livez.0, &livez));
    s.add("ready", verdict(parts.readyz.0, &readyz));

    match &parts.raft {
        Some(Ok(v)) => {
            let r: views::Raft = parse("GET /admin/raft", v)?;
            s.add("raft", Cell::painted(format!("{}, term {}", r.role, r.term), render::raft_role(&r.role)));
            s.add("leader", leader_cell(r.leader.as_deref()));
            s.add("voters", render::sorted_list(&r.voters));
            s.add("learners", render::sorted_list(&r.learners));
            s.add("commit / applied", format!("{} / {}", r.commit_index, r.applied_index));
            s.add("quorum", quorum_cell(r.quorum_reachable, r.last_contact_ms));
        }
        Some(Err(e)) => s.add("raft", Cell::painted(e, Paint::Warn)),
        None => {}
    }
    match &parts.planes {
        Some(Ok(v)) => {
            let p: views::Planes = parse("GET /admin/planes", v)?;
            let c = &p.control;
            s.add("degraded mode", Cell::painted(&c.degraded_mode, render::degraded_mode(&c.degraded_mode)));
            s.add("catch-up", Cell::painted(&c.catch_up_state, render::catch_up_state(&c.catch_up_state)));
            let lag = format!("{} (applied {}, current {})", c.root_lag, c.root_token, c.current_root_token);
            s.add("root lag", Cell::painted(lag, if c.root_lag == 0 { Paint::Plain } else { Paint::Warn }));
            let e = &p.execution;
            let restart = match &e.restart_state.reason {
                Some(reason) => format!("{} ({reason})", e.restart_state.state),
                None => e.restart_state.state.clone(),
            };
            let restart_paint = match e.restart_state.state.as_str() {
                "clean" | "recovered" => Paint::Plain,
                "degraded" => Paint::Warn,
                _ => Paint::Bad,
            };
            s.add(
                "raft actor",
                Cell::painted(format!("{restart}, {} supervised restarts", e.raft_actor_restarts), restart_paint),
            );
            let refused: u64 = e.admission.iter().filter(|(k, _)| k.as_str() != "Accepted").map(|(_, n)| n).sum();
            s.add(
                "admissions",
                format!(
                    "{} accepted, {refused} refused, {} fence rejections",
                    e.admission.get("Accepted").copied().unwrap_or(0),
                    e.fence_rejections
                ),
            );
            if let Some(t) = c.transitions.last() {
                s.add("last transition", format!("t{}-{} {}: {}", t.id.term, t.id.seq, t.phase, t.reason));
            }
        }
        Some(Err(e)) => s.add("planes", Cell::painted(e, Paint::Warn)),
        None => {}
    }
    let mut out = s.render(color);
    match &parts.transport {
        Some(Ok(v)) => {
            let t: views::Transport = parse("GET /admin/transport", v)?;
            out.push('\n');
            out.push_str(&peers_table(&t, color));
        }
        Some(Err(e)) => {
            out.push('\n');
            out.push_str(&format!("peers: {}\n", Paint::Warn.apply(&render::clean(e), color)));
        }
        None => {}
    }
    Ok(out)
}

/// Per peer: connected, frames queued (all classes), the fullest class, drops, bytes.
fn peers_table(t: &views::Transport, color: bool) -> String {
    if t.peers.is_empty() {
        return "no peers\n".to_string();
    }
    let mut table = Table::new(&["PEER", "CONNECTED", "QUEUED", "FULLEST", "DROPPED", "SENT", "RECEIVED"])
        .right_aligned(&[2, 4, 5, 6]);
    for p in &t.peers {
        let queued: u64 = p.classes.iter().map(|c| c.depth).sum();
        let dropped: u64 = p.classes.iter().map(|c| c.dropped).sum();
        let sent: u64 = p.classes.iter().map(|c| c.bytes_out).sum();
        let received: u64 = p.classes.iter().map(|c| c.bytes_in).sum();
        // The class closest to full (depth / capacity); `-` when every queue is empty.
        let fullest = p
            .classes
            .iter()
            .filter(|c| c.depth > 0)
            .max_by(|a, b| (a.depth * b.capacity.max(1)).cmp(&(b.depth * a.capacity.max(1))))
            .map(|c| {
                let paint = if c.depth * 2 >= c.capacity { Paint::Warn } else { Paint::Plain };
                Cell::painted(format!("{} {}/{}", c.class, c.depth, c.capacity), paint)
            })
            .unwrap_or_else(|| Cell::new(""));
        table.row(vec![
            p.node.as_str().into(),
            Cell::painted(render::yes_no(p.connected), render::good_if(p.connected)),
            queued.into(),
            fullest,
            Cell::painted(dropped.to_string(), if dropped > 0 { Paint::Warn } else { Paint::Plain }),
            render::bytes(sent).into(),
            render::bytes(received).into(),
        ]);
    }
    table.render(color)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Parts {
        Parts {
            node: json!({"node":"n0","incarnation":17,"version":"0.1.0","uptime_s":65,
                "addrs":{"http":"127.0.0.1:1","gossip":"127.0.0.1:2","internode":"127.0.0.1:3"}}),
            livez: (true, json!({"status":"ok","checks":[{"name":"runtime","ok":true,"detail":""}]})),
            readyz: (
                false,
                json!({"status":"not_ready","checks":[
                {"name":"startup","ok":true,"detail":""},
                {"name":"cluster","ok":false,"detail":"no other member alive"}]}),
            ),
            raft: Some(Ok(json!({"raft_id":9,"role":"leader","term":3,"leader":"n0","commit_index":42,
                "applied_index":41,"voters":["n0","n1","n2"],"learners":[],"last_contact_ms":4,
                "quorum_reachable":true,"storage":"durable"}))),
            planes: Some(Ok(json!({"control":{"root_token":{"term":3,"index":41},
                "current_root_token":{"term":3,"index":42},"root_lag":1,"catch_up_state":"fresh",
                "degraded_mode":"healthy","leader":"n0","quorum_reachable":true,"transitions":[
                {"id":{"term":3,"seq":1},"steps":[],"phase":"completed","reason":"bootstrap"}]},
                "execution":{"restart_state":{"state":"clean"},"raft_actor_restarts":0,
                "admission":{"Accepted":5,"NotLeader":2},"outcomes":{},"fence_rejections":0}}))),
            transport: Some(Ok(json!({"peers":[{"node":"n1","incarnation":1,"connected":true,"classes":[
                {"class":"control","depth":0,"capacity":256,"dropped":0,"bytes_out":2048,"bytes_in":10},
                {"class":"raft","depth":3,"capacity":1024,"dropped":2,"bytes_out":0,"bytes_in":0}]}]}))),
        }
    }

    #[test]
    fn status_shows_one_screen() {
        let text = render_status(&sample(), false).unwrap();
        for needle in [
            "node              n0 (incarnation 17, version 0.1.0, up 1m05s)\n",
            "ready             no (cluster: no other member alive)\n",
            "raft              leader, term 3\n",
            "voters            n0, n1, n2\n",
            "learners          -\n",
            "commit / applied  42 / 41\n",
            "degraded mode     healthy\n",
            "root lag          1 (applied 41@3, current 42@3)\n",
            "admissions        5 accepted, 2 refused, 0 fence rejections\n",
            "last transition   t3-1 completed: bootstrap\n",
            "PEER  CONNECTED  QUEUED  FULLEST      DROPPED     SENT  RECEIVED\n",
            "n1    yes             3  raft 3/1024        2  2.0 KiB      10 B\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn refused_sections_are_shown_and_the_json_collects_them() {
        let mut parts = sample();
        parts.raft = Some(Err("the node refused GET /admin/raft: 503 Unavailable".into()));
        let text = render_status(&parts, false).unwrap();
        let line = text.lines().find(|l| l.starts_with("raft ")).unwrap();
        assert!(line.ends_with(" the node refused GET /admin/raft: 503 Unavailable"), "{text}");
        assert!(!text.contains("commit / applied"), "{text}");
        let v = as_json(parts);
        assert_eq!(v["ready"], json!(false));
        assert_eq!(v["live"], json!(true));
        assert_eq!(v["raft"], Value::Null);
        assert!(v["errors"]["raft"].as_str().unwrap().contains("503"));
        assert_eq!(v["planes"]["control"]["root_lag"], json!(1));
    }

    #[test]
    fn a_wrong_shape_is_an_error_not_a_panic() {
        let mut parts = sample();
        parts.transport = Some(Ok(json!({"peers": [{"node": 1}]})));
        let e = render_status(&parts, false).unwrap_err();
        assert!(e.to_string().contains("GET /admin/transport"), "{e}");
    }
}
