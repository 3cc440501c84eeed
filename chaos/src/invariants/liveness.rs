//! `no_unexpected_node_death`: every node life ended only because the schedule killed it or the
//! runner stopped it at the end of the run; a node that exited on its own (crash, panic, abort,
//! an exit at the final SIGTERM with a non-zero status) breaks it.

use super::{Evidence, Verdict};
use crate::record::{EndCause, Recording};

/// `no_unexpected_node_death`.
pub fn no_unexpected_death(rec: &Recording) -> Verdict {
    let v = Verdict::new("no_unexpected_node_death", "no node process exits except those the schedule kills");
    let mut evidence = Vec::new();
    let mut first: Option<f64> = None;
    for life in &rec.lives {
        if let Some(EndCause::Died { status }) = &life.end {
            let t = life.end_s.unwrap_or(rec.end_s);
            first = Some(first.map_or(t, |f: f64| f.min(t)));
            evidence.push(Evidence::at(
                t,
                life.node.clone(),
                format!("incarnation {} (os pid {}) exited on its own: {status}", life.incarnation, life.os_pid),
            ));
        }
    }
    if rec.lives.is_empty() {
        return v.fail("no node life was recorded", None, Vec::new());
    }
    if evidence.is_empty() {
        let killed = rec.lives.iter().filter(|l| l.end == Some(EndCause::Killed)).count();
        v.pass(format!("{} node lives, {killed} killed by the schedule, none died otherwise", rec.lives.len()))
    } else {
        v.fail(format!("{} node lives died unexpectedly", evidence.len()), first, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::fixtures::recording;
    use super::*;

    #[test]
    fn scheduled_kills_and_final_stops_pass() {
        let mut rec = recording(&["node-1", "node-2"], 2, |_, _, _| {});
        rec.lives[0].end = Some(EndCause::Killed);
        assert_eq!(no_unexpected_death(&rec).status, Status::Pass);
    }

    #[test]
    fn a_crash_fails_with_the_node_and_status() {
        let mut rec = recording(&["node-1", "node-2"], 2, |_, _, _| {});
        rec.lives[1].end = Some(EndCause::Died { status: "signal 6 (SIGABRT)".into() });
        rec.lives[1].end_s = Some(1.5);
        let v = no_unexpected_death(&rec);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.first_violation_s, Some(1.5));
        assert!(v.evidence[0].detail.contains("SIGABRT"));
    }
}
