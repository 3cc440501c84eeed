//! Resource bounds: `queue_depth_bounded` (no transport class queue to any peer deeper than the
//! scenario's bound, nor than its own capacity) and `rss_bounded` (no node's resident set above the
//! scenario's bound), over every sample of the run.

use super::{Evidence, Verdict};
use crate::record::Recording;

/// `queue_depth_bounded`.
pub fn queue_depth(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "queue_depth_bounded",
        "no transport queue (per peer, per class) is ever deeper than the scenario's bound or its capacity",
    );
    let mut evidence = Vec::new();
    let mut first: Option<f64> = None;
    let mut deepest = 0u64;
    let mut sampled = 0usize;
    for s in &rec.samples {
        let Some(t) = &s.transport else { continue };
        sampled += 1;
        for (queue, (depth, capacity)) in &t.queues {
            deepest = deepest.max(*depth);
            let bound = rec.queue_depth_bound.map_or(*capacity, |b| b.min(*capacity));
            if *depth > bound {
                first = Some(first.map_or(s.t_s, |f: f64| f.min(s.t_s)));
                evidence.push(Evidence::at(
                    s.t_s,
                    s.node.clone(),
                    format!("queue {queue}: depth {depth} > bound {bound} (capacity {capacity})"),
                ));
            }
        }
    }
    if sampled == 0 {
        return v.fail("no transport sample was taken", None, Vec::new());
    }
    if evidence.is_empty() {
        v.pass(format!("deepest queue {deepest} frames over {sampled} samples"))
    } else {
        v.fail(format!("{} samples of queues beyond their bound", evidence.len()), first, evidence)
    }
}

/// `rss_bounded`.
pub fn rss(rec: &Recording) -> Verdict {
    let v = Verdict::new("rss_bounded", "no node's resident set size exceeds the scenario's bound");
    let bound = rec.rss_bound_bytes;
    let mut evidence = Vec::new();
    let mut first: Option<f64> = None;
    let mut largest = 0u64;
    let mut sampled = 0usize;
    for s in &rec.samples {
        let Some(rss) = s.rss_bytes else { continue };
        sampled += 1;
        largest = largest.max(rss);
        if rss > bound {
            first = Some(first.map_or(s.t_s, |f: f64| f.min(s.t_s)));
            evidence.push(Evidence::at(
                s.t_s,
                s.node.clone(),
                format!("RSS {} MiB > bound {} MiB", rss >> 20, bound >> 20),
            ));
        }
    }
    if sampled == 0 {
        return v.fail("no RSS sample was taken", None, Vec::new());
    }
    if evidence.is_empty() {
        v.pass(format!(
            "largest RSS {:.1} MiB (bound {} MiB) over {sampled} samples",
            largest as f64 / 1048576.0,
            bound >> 20
        ))
    } else {
        v.fail(format!("{} samples above the RSS bound", evidence.len()), first, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::fixtures::recording;
    use super::*;
    use crate::record::TransportSample;

    fn with_depth(depth_at_5: u64, bound: Option<u64>) -> Recording {
        let mut rec = recording(&["node-1", "node-2"], 8, |tick, n, s| {
            let depth = if tick == 5 && n == "node-2" { depth_at_5 } else { 3 };
            let mut t = TransportSample::default();
            t.queues.insert("node-1/pg".into(), (depth, 2048));
            s.transport = Some(t);
        });
        rec.queue_depth_bound = bound;
        rec
    }

    #[test]
    fn queues_within_bound_pass() {
        assert_eq!(queue_depth(&with_depth(100, Some(500))).status, Status::Pass);
    }

    #[test]
    fn a_queue_beyond_the_bound_fails_at_its_time() {
        let v = queue_depth(&with_depth(600, Some(500)));
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.first_violation_s, Some(5.0));
        assert_eq!(v.evidence[0].node.as_deref(), Some("node-2"));
    }

    #[test]
    fn without_a_bound_the_capacity_is_the_bound() {
        assert_eq!(queue_depth(&with_depth(2048, None)).status, Status::Pass);
        assert_eq!(queue_depth(&with_depth(2049, None)).status, Status::Fail);
    }

    #[test]
    fn rss_above_the_bound_fails_and_below_passes() {
        let mut rec = recording(&["node-1"], 5, |tick, _, s| s.rss_bytes = Some((20 + tick) << 20));
        rec.rss_bound_bytes = 22 << 20;
        let v = rss(&rec);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.first_violation_s, Some(3.0));
        rec.rss_bound_bytes = 64 << 20;
        assert_eq!(rss(&rec).status, Status::Pass);
    }

    #[test]
    fn no_samples_is_a_failure_not_a_pass() {
        let rec = recording(&["node-1"], 2, |_, _, _| {});
        assert_eq!(rss(&rec).status, Status::Fail);
        assert_eq!(queue_depth(&rec).status, Status::Fail);
    }
}
