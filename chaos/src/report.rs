//! The report directory of a run: `report.json` (machine-readable, one entry per invariant),
//! `report.html` (one self-contained page a person reads) and `recording.json` (everything the
//! checkers saw, so a verdict can be re-derived).
//!
//! Invariants: the HTML page needs no network: its plots are inline SVG drawn with plotters'
//! `SVGBackend::with_string`, its styles are inline, it has no script; every string from the
//! recording is HTML-escaped. Fault windows are shaded on every timeline plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::invariants::{Status, Verdict};
use crate::record::{FaultWindow, Recording, Sample};
use crate::scenario::Scenario;

/// `report.json`.
#[derive(Serialize)]
pub struct ReportJson<'a> {
    /// Scenario name.
    pub scenario: &'a str,
    /// Whether every invariant held.
    pub passed: bool,
    /// Seed used.
    pub seed: u64,
    /// Nodes.
    pub nodes: &'a [String],
    /// Run length, seconds.
    pub duration_s: f64,
    /// Chaos phase start / workload end, seconds since the run started.
    pub chaos_start_s: f64,
    /// End of the workload.
    pub workload_end_s: f64,
    /// Notes (how `leader` was resolved, absent subsystems, ...).
    pub notes: &'a [String],
    /// Fault windows.
    pub faults: &'a [FaultWindow],
    /// One entry per invariant.
    pub invariants: &'a [Verdict],
    /// Operations recorded, by kind and result: `ok`, `refused`, `no_answer`, and one
    /// `refused:<Reason>` count per SPEC reason (a `NotFound` lookup is an answer, not a failure).
    pub operations: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Write `report.json`, `report.html` and `recording.json` into `dir`.
pub fn write(dir: &Path, sc: &Scenario, rec: &Recording, verdicts: &[Verdict]) -> std::io::Result<()> {
    let operations = operation_counts(rec);
    let json = ReportJson {
        scenario: &rec.scenario,
        passed: verdicts.iter().all(Verdict::held),
        seed: rec.seed,
        nodes: &rec.nodes,
        duration_s: rec.end_s,
        chaos_start_s: rec.chaos_start_s,
        workload_end_s: rec.workload_end_s,
        notes: &rec.notes,
        faults: &rec.faults,
        invariants: verdicts,
        operations,
    };
    let to_io = |e: serde_json::Error| std::io::Error::other(e.to_string());
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&json).map_err(to_io)?)?;
    std::fs::write(dir.join("recording.json"), serde_json::to_vec(rec).map_err(to_io)?)?;
    std::fs::write(dir.join("report.html"), html(sc, rec, verdicts, &json.operations))?;
    Ok(())
}

/// Escape text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}\
table{border-collapse:collapse;width:100%;margin:8px 0 24px}td,th{border:1px solid #ccc;padding:4px 8px;\
text-align:left;vertical-align:top;font-size:14px}.pass{background:#d8f5d8}.fail{background:#f8d0d0}\
.skipped{background:#eee}.banner{padding:12px;font-size:20px;font-weight:bold}details{margin:2px 0}\
code{font-size:13px}.plot{margin:8px 0 16px}";

/// Operations by kind and result, refusals also by reason.
fn operation_counts(rec: &Recording) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut operations: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for op in &rec.ops {
        let counts = operations.entry(op.kind.clone()).or_default();
        let result = match &op.result {
            crate::record::OpResult::Ok { .. } | crate::record::OpResult::Done => "ok",
            crate::record::OpResult::Refused { reason, .. } => {
                *counts.entry(format!("refused:{reason}")).or_default() += 1;
                "refused"
            }
            crate::record::OpResult::Indeterminate { .. } => "no_answer",
        };
        *counts.entry(result.to_owned()).or_default() += 1;
    }
    operations
}

fn html(sc: &Scenario, rec: &Recording, verdicts: &[Verdict], ops: &BTreeMap<String, BTreeMap<String, u64>>) -> String {
    let passed = verdicts.iter().all(Verdict::held);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>chaos: {name}</title><style>{STYLE}</style></head><body>",
        name = escape(&rec.scenario)
    );
    let _ = write!(
        h,
        "<h1>Chaos run: {}</h1><p>{}</p><div class=\"banner {}\">{}</div>",
        escape(&rec.scenario),
        escape(&sc.description),
        if passed { "pass" } else { "fail" },
        if passed {
            "Every invariant held".to_string()
        } else {
            let failed: Vec<String> = verdicts
                .iter()
                .filter(|v| !v.held())
                .map(|v| match v.first_violation_s {
                    Some(t) => format!("{} (first at {t:.1} s)", v.name),
                    None => v.name.clone(),
                })
                .collect();
            escape(&format!("FAILED: {}", failed.join(", ")))
        }
    );
    let _ = write!(
        h,
        "<p>{} nodes, seed {}, run length {:.1} s; chaos phase {:.1} s to {:.1} s; settle window {:.0} s; sample period {:.1} s.</p>",
        rec.nodes.len(),
        rec.seed,
        rec.end_s,
        rec.chaos_start_s,
        rec.workload_end_s,
        rec.settle_s,
        rec.sample_period_s
    );
    if !rec.notes.is_empty() {
        h.push_str("<ul>");
        for n in &rec.notes {
            let _ = write!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>");
    }
    h.push_str(
        "<h2>Invariants</h2><table><tr><th>invariant</th><th>status</th><th>summary</th><th>first violation</th></tr>",
    );
    for v in verdicts {
        let class = match v.status {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        };
        let _ = write!(
            h,
            "<tr class=\"{class}\"><td><b>{}</b><br><small>{}</small></td><td>{class}</td><td>{}",
            escape(&v.name),
            escape(&v.description),
            escape(&v.summary)
        );
        if !v.evidence.is_empty() {
            let _ = write!(h, "<details><summary>{} facts</summary><ul>", v.evidence.len());
            for e in &v.evidence {
                let when = e.t_s.map(|t| format!("{t:.1} s ")).unwrap_or_default();
                let node = e.node.as_ref().map(|n| format!("[{n}] ")).unwrap_or_default();
                let _ = write!(h, "<li><code>{}{}</code>{}</li>", escape(&when), escape(&node), escape(&e.detail));
            }
            h.push_str("</ul></details>");
        }
        let first = v.first_violation_s.map(|t| format!("{t:.1} s")).unwrap_or_default();
        let _ = write!(h, "</td><td>{first}</td></tr>");
    }
    h.push_str("</table><h2>Fault schedule</h2><table><tr><th>from</th><th>to</th><th>fault</th><th>nodes</th><th>line</th></tr>");
    for f in &rec.faults {
        let _ = write!(
            h,
            "<tr><td>{:.1} s</td><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.start_s,
            f.end_s,
            escape(&f.label),
            escape(&f.nodes.join(", ")),
            f.line
        );
    }
    h.push_str(
        "</table><h2>Timelines</h2><p>Shaded bands are fault windows; the dashed line is the end of the workload.</p>",
    );
    for svg in plots(rec) {
        let _ = write!(h, "<div class=\"plot\">{svg}</div>");
    }
    h.push_str(
        "<h2>Operations</h2><table><tr><th>kind</th><th>ok</th><th>refused</th><th>refusals by reason</th><th>no answer</th></tr>",
    );
    for (kind, counts) in ops {
        let c = |k: &str| counts.get(k).copied().unwrap_or(0);
        let reasons: Vec<String> = counts
            .iter()
            .filter_map(|(key, n)| key.strip_prefix("refused:").map(|reason| format!("{} {n}", escape(reason))))
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(kind),
            c("ok"),
            c("refused"),
            reasons.join(", "),
            c("no_answer")
        );
    }
    h.push_str("</table><p>Files: <code>report.json</code> (verdicts), <code>recording.json</code> (samples, operations, truth), <code>logs/</code> (node logs).</p></body></html>");
    h
}

/// One plotted series: node name and (t, value) points.
type Series = Vec<(String, Vec<(f64, f64)>)>;

fn per_node(rec: &Recording, f: impl Fn(&Sample) -> Option<f64>) -> Series {
    rec.nodes
        .iter()
        .map(|n| {
            let pts = rec.samples.iter().filter(|s| &s.node == n).filter_map(|s| f(s).map(|v| (s.t_s, v))).collect();
            (n.clone(), pts)
        })
        .collect()
}

fn plots(rec: &Recording) -> Vec<String> {
    let mut out = Vec::new();
    let alive = |s: &Sample| s.members.as_ref().map(|m| m.iter().filter(|r| r.state == "alive").count() as f64);
    out.push(plot(rec, "members seen alive, per node", "members", per_node(rec, alive), None));
    let group_total = |s: &Sample| s.groups.as_ref().map(|g| g.values().map(Vec::len).sum::<usize>() as f64);
    out.push(plot(rec, "pg group members seen (all groups), per node", "members", per_node(rec, group_total), None));
    if rec.presence.raft {
        let term = |s: &Sample| s.raft.as_ref().map(|r| r.term as f64);
        out.push(plot(rec, "raft term, per node", "term", per_node(rec, term), None));
        let leader = |s: &Sample| {
            s.raft.as_ref().map(|r| {
                r.leader.as_deref().and_then(|l| l.trim_start_matches("node-").parse::<f64>().ok()).unwrap_or(0.0)
            })
        };
        out.push(plot(
            rec,
            "raft leader seen (node number; 0 = none), per node",
            "leader",
            per_node(rec, leader),
            None,
        ));
    }
    let depth = |s: &Sample| s.transport.as_ref().map(|t| t.max_depth() as f64);
    out.push(plot(
        rec,
        "deepest transport queue, per node",
        "frames",
        per_node(rec, depth),
        rec.queue_depth_bound.map(|b| b as f64),
    ));
    let drops = |s: &Sample| {
        let t = s.transport.as_ref().map(|t| t.dropped_total);
        let g = s.gossip_dropped;
        if t.is_none() && g.is_none() { None } else { Some((t.unwrap_or(0) + g.unwrap_or(0)) as f64) }
    };
    out.push(plot(
        rec,
        "dropped frames + gossip packets (cumulative), per node",
        "dropped",
        per_node(rec, drops),
        None,
    ));
    let rss = |s: &Sample| s.rss_bytes.map(|b| b as f64 / 1048576.0);
    out.push(plot(
        rec,
        "resident memory (MiB), per node",
        "MiB",
        per_node(rec, rss),
        Some(rec.rss_bound_bytes as f64 / 1048576.0),
    ));
    let recv = |s: &Sample| s.probe_received.map(|v| v as f64);
    out.push(plot(rec, "payloads received by probes (cumulative), per node", "payloads", per_node(rec, recv), None));
    out
}

fn plot(rec: &Recording, title: &str, y_label: &str, series: Series, bound: Option<f64>) -> String {
    let mut svg = String::new();
    let drawn = draw(&mut svg, rec, title, y_label, &series, bound);
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p>{}: plot failed: {}</p>", escape(title), escape(&e)),
    }
}

fn draw(
    svg: &mut String,
    rec: &Recording,
    title: &str,
    y_label: &str,
    series: &Series,
    bound: Option<f64>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let x_max = rec.end_s.max(1.0);
    let data_max = series.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v)).fold(0.0f64, f64::max);
    // A bound far above the data would flatten every line; show it only when near.
    let shown_bound = bound.filter(|b| *b <= data_max * 3.0 + 1.0);
    let y_max = (data_max.max(shown_bound.unwrap_or(0.0)) * 1.1).max(1.0);
    let root = SVGBackend::with_string(svg, (960, 280)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .right_y_label_area_size(0)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("seconds since start").y_desc(y_label).draw().map_err(|e| err(&e))?;
    let shade = RGBColor(230, 120, 30);
    for w in &rec.faults {
        let end = if w.end_s - w.start_s < 0.3 { w.start_s + 0.3 } else { w.end_s };
        chart
            .draw_series(std::iter::once(Rectangle::new([(w.start_s, 0.0), (end, y_max)], shade.mix(0.15).filled())))
            .map_err(|e| err(&e))?;
    }
    let end_line = rec.workload_end_s;
    if end_line > 0.0 {
        chart
            .draw_series(DashedLineSeries::new(vec![(end_line, 0.0), (end_line, y_max)], 4, 4, BLACK.stroke_width(1)))
            .map_err(|e| err(&e))?;
    }
    if let Some(b) = shown_bound {
        chart
            .draw_series(DashedLineSeries::new(vec![(0.0, b), (x_max, b)], 6, 4, RED.stroke_width(1)))
            .map_err(|e| err(&e))?
            .label("bound")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::fixtures::{all_alive, recording};
    use crate::record::FaultWindow;

    #[test]
    fn html_escapes_and_embeds_svg_without_network() {
        let nodes = ["node-1", "node-2"];
        let mut rec = recording(&nodes, 6, |tick, _, s| {
            s.members = Some(all_alive(&nodes));
            s.rss_bytes = Some((30 + tick) << 20);
        });
        rec.faults.push(FaultWindow {
            action: "partition".into(),
            label: "partition <a> & b".into(),
            nodes: vec![],
            start_s: 1.0,
            end_s: 3.0,
            line: 9,
        });
        let sc = crate::scenario::parse("name = \"x\"\nnodes = 2\nduration_s = 5\nsettle_s = 5\n").unwrap();
        let verdicts = crate::invariants::check_all(&rec);
        let page = html(&sc, &rec, &verdicts, &BTreeMap::new());
        assert!(page.contains("<svg"), "plots are inline SVG");
        assert!(page.contains("partition &lt;a&gt; &amp; b"));
        assert!(!page.contains("<script"), "no script");
        assert!(!page.contains("http://") && !page.contains("https://") || page.contains("http://www.w3.org"));
        for v in &verdicts {
            assert!(page.contains(&v.name));
        }
    }

    #[test]
    fn report_json_has_one_entry_per_invariant() {
        let dir = std::env::temp_dir().join(format!("cohort-chaos-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nodes = ["node-1"];
        let rec = recording(&nodes, 3, |_, _, s| s.members = Some(all_alive(&nodes)));
        let sc = crate::scenario::parse("name = \"x\"\nnodes = 1\nduration_s = 5\nsettle_s = 5\n").unwrap();
        let verdicts = crate::invariants::check_all(&rec);
        write(&dir, &sc, &rec, &verdicts).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
        let names: Vec<&str> =
            json["invariants"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), verdicts.len());
        assert!(names.contains(&"membership_converges"));
        assert!(dir.join("report.html").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn operations_count_refusals_by_reason() {
        use crate::record::{OpResult, Operation};
        let nodes = ["node-1"];
        let mut rec = recording(&nodes, 1, |_, _, _| {});
        let op = |id, result| Operation {
            id,
            node: "node-1".into(),
            kind: "lookup".into(),
            request: serde_json::Value::Null,
            invoke_s: 0.0,
            complete_s: 0.1,
            result,
        };
        let refused = |status, reason: &str| OpResult::Refused { status, reason: reason.into(), detail: String::new() };
        rec.ops = vec![
            op(1, OpResult::Ok { body: serde_json::Value::Null }),
            op(2, refused(404, "NotFound")),
            op(3, refused(404, "NotFound")),
            op(4, refused(503, "NotLeader")),
            op(5, OpResult::Indeterminate { error: "timeout".into() }),
        ];
        let counts = &operation_counts(&rec)["lookup"];
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        assert_eq!((get("ok"), get("refused"), get("no_answer")), (1, 3, 1));
        assert_eq!((get("refused:NotFound"), get("refused:NotLeader")), (2, 1));
        let sc = crate::scenario::parse("name = \"x\"\nnodes = 1\nduration_s = 5\nsettle_s = 5\n").unwrap();
        let page = html(&sc, &rec, &[], &operation_counts(&rec));
        assert!(page.contains("NotFound 2, NotLeader 1"), "the HTML lists refusals by reason");
    }
}
