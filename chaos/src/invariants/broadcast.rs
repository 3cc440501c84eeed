//! `broadcast_deliveries`: broadcasts are counted against deliveries. In each fault-free
//! verification round (before the first fault, and after the cluster settled) every broadcast
//! reaches each distinct live member of its group exactly once: the probes' received counters grow
//! by exactly the expected number (none lost, none duplicated). Background broadcasts sent while
//! faults were active are reported, not judged: a fault on the path may lose them by design.

use super::{Evidence, Verdict};
use crate::record::Recording;

/// `broadcast_deliveries`.
pub fn deliveries(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "broadcast_deliveries",
        "in fault-free rounds every broadcast reaches each live member of its group exactly once",
    );
    if rec.broadcast_rounds.is_empty() {
        return v.skip("no verification round ran (no groups, no probes or verify_broadcasts = 0)");
    }
    let mut evidence = Vec::new();
    let mut first: Option<f64> = None;
    for r in &rec.broadcast_rounds {
        let bad = !r.fault_free || r.delivered != r.expected || r.failed_requests > 0;
        let line = format!(
            "{} round: {} broadcasts, {} deliveries expected, {} counted, {} failed requests{}",
            r.label,
            r.sent,
            r.expected,
            r.delivered,
            r.failed_requests,
            if r.fault_free { "" } else { " (not fault-free)" }
        );
        if bad {
            first = Some(first.map_or(r.t_s, |f: f64| f.min(r.t_s)));
        }
        evidence.push(Evidence::when(r.t_s, line));
    }
    let background = rec.ops.iter().filter(|o| o.kind == "broadcast" && o.result.is_ok()).count();
    evidence.push(Evidence::note(format!("{background} background/flood broadcast requests accepted during the run")));
    if first.is_some() {
        v.fail("a fault-free round lost, duplicated or failed broadcasts", first, evidence)
    } else {
        let mut v = v.pass(format!("{} rounds, every delivery counted", rec.broadcast_rounds.len()));
        v.evidence = evidence;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::fixtures::recording;
    use super::*;
    use crate::record::BroadcastRound;

    fn round(expected: u64, delivered: u64) -> BroadcastRound {
        BroadcastRound {
            label: "final".into(),
            t_s: 30.0,
            sent: 10,
            expected,
            delivered,
            failed_requests: 0,
            fault_free: true,
        }
    }

    #[test]
    fn exact_deliveries_pass() {
        let mut rec = recording(&["node-1"], 1, |_, _, _| {});
        rec.broadcast_rounds.push(round(40, 40));
        assert_eq!(deliveries(&rec).status, Status::Pass);
    }

    #[test]
    fn lost_or_duplicated_deliveries_fail() {
        for delivered in [39, 41] {
            let mut rec = recording(&["node-1"], 1, |_, _, _| {});
            rec.broadcast_rounds.push(round(40, delivered));
            let v = deliveries(&rec);
            assert_eq!(v.status, Status::Fail);
            assert_eq!(v.first_violation_s, Some(30.0));
        }
    }

    #[test]
    fn no_rounds_is_skipped() {
        let rec = recording(&["node-1"], 1, |_, _, _| {});
        assert_eq!(deliveries(&rec).status, Status::Skipped);
    }
}
