//! Turns foca's notifications into the [`MembershipEvent`]s subscribers see.
//!
//! Role: pure bookkeeping of which run (`NodeId`) of each node name subscribers currently believe
//! is up. foca speaks about identities (a run plus a renew counter); subscribers speak about
//! `NodeId`s, so renewals of one run are invisible to them while a restart is a `Down` of the old
//! run followed by an `Up` of the new one.
//!
//! Invariants:
//! - Per name, events alternate: `Up(x)`, then exactly one of `Down(x)`/`Left(x)`, before any
//!   later `Up`. A superseded run gets its `Down` (or `Left`) before the `Up` of its successor.
//! - `Left` is reported when the identity that went down carries the leaving flag.
//! - The map holds only names reported up, at most `max_tracked`; an `Up` beyond it is refused
//!   (the caller counts it as `members_overflow`) rather than growing without bound.

use std::collections::BTreeMap;

use super::identity::GossipIdentity;
use crate::{MemberInfo, MembershipEvent};

/// What subscribers were told, per node name.
#[derive(Debug)]
pub(crate) struct EventTracker {
    up: BTreeMap<String, MemberInfo>,
    max_tracked: usize,
}

impl EventTracker {
    /// A tracker that follows at most `max_tracked` members reported up at once.
    pub(crate) fn new(max_tracked: usize) -> Self {
        Self { up: BTreeMap::new(), max_tracked }
    }

    /// foca's `MemberUp(id)`. Returns false when refused for lack of room.
    pub(crate) fn member_up(&mut self, id: &GossipIdentity, out: &mut Vec<MembershipEvent>) -> bool {
        match self.up.get(id.name()) {
            Some(known) if known.id == id.info.id => true,
            Some(known) if id.info.id.incarnation < known.id.incarnation => {
                // Stale news about an older run; foca keeps the newer one, so should we.
                true
            }
            Some(_) => {
                if let Some(old) = self.up.remove(id.name()) {
                    out.push(MembershipEvent::Down(old));
                }
                self.insert_up(id, out)
            }
            None => self.insert_up(id, out),
        }
    }

    fn insert_up(&mut self, id: &GossipIdentity, out: &mut Vec<MembershipEvent>) -> bool {
        if self.up.len() >= self.max_tracked {
            return false;
        }
        self.up.insert(id.name().to_owned(), id.info.clone());
        out.push(MembershipEvent::Up(id.info.clone()));
        true
    }

    /// foca's `MemberDown(id)`.
    pub(crate) fn member_down(&mut self, id: &GossipIdentity, out: &mut Vec<MembershipEvent>) {
        let Some(known) = self.up.get(id.name()) else { return };
        if known.id.incarnation > id.info.id.incarnation {
            return; // an older run went down; the newer one is still up
        }
        if let Some(known) = self.up.remove(id.name()) {
            out.push(if id.leaving { MembershipEvent::Left(known) } else { MembershipEvent::Down(known) });
        }
    }

    /// foca's `Rename(old, new)`: `new` replaced `old` (same name). `new_is_active` is whether foca
    /// holds `new` alive or suspect now. Returns false when an `Up` was refused for lack of room.
    pub(crate) fn renamed(
        &mut self,
        old: &GossipIdentity,
        new: &GossipIdentity,
        new_is_active: bool,
        out: &mut Vec<MembershipEvent>,
    ) -> bool {
        if let Some(known) = self.up.get(new.name())
            && known.id != new.info.id
            && let Some(known) = self.up.remove(new.name())
        {
            out.push(if old.leaving { MembershipEvent::Left(known) } else { MembershipEvent::Down(known) });
        }
        if new_is_active { self.member_up(new, out) } else { true }
    }

    /// How many members are reported up.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.up.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::identity::tests::info;
    use foca::Identity;

    fn id(name: &str, incarnation: u64) -> GossipIdentity {
        GossipIdentity::new(info(name, incarnation))
    }

    fn run(steps: impl FnOnce(&mut EventTracker, &mut Vec<MembershipEvent>)) -> Vec<MembershipEvent> {
        let mut tracker = EventTracker::new(16);
        let mut out = Vec::new();
        steps(&mut tracker, &mut out);
        out
    }

    #[test]
    fn up_then_down_is_reported_once_each() {
        let a = id("a", 1);
        let out = run(|t, out| {
            t.member_up(&a, out);
            t.member_up(&a, out);
            t.member_down(&a, out);
            t.member_down(&a, out);
        });
        assert_eq!(out, [MembershipEvent::Up(a.info.clone()), MembershipEvent::Down(a.info)]);
    }

    #[test]
    fn renewal_of_a_live_run_is_invisible() {
        let a = id("a", 1);
        let renewed = a.renew().unwrap();
        let out = run(|t, out| {
            t.member_up(&a, out);
            t.renamed(&a, &renewed, true, out);
        });
        assert_eq!(out, [MembershipEvent::Up(a.info)]);
    }

    #[test]
    fn rejoin_after_down_is_down_then_up_of_the_same_run() {
        let a = id("a", 1);
        let renewed = a.renew().unwrap();
        let out = run(|t, out| {
            t.member_up(&a, out);
            t.member_down(&a, out);
            t.renamed(&a, &renewed, true, out);
            t.member_up(&renewed, out);
        });
        assert_eq!(
            out,
            [MembershipEvent::Up(a.info.clone()), MembershipEvent::Down(a.info.clone()), MembershipEvent::Up(a.info)]
        );
    }

    #[test]
    fn restart_reports_down_of_the_old_run_before_up_of_the_new() {
        let old = id("a", 1);
        let new = id("a", 2);
        let out = run(|t, out| {
            t.member_up(&old, out);
            t.renamed(&old, &new, true, out);
        });
        let expected = [
            MembershipEvent::Up(old.info.clone()),
            MembershipEvent::Down(old.info.clone()),
            MembershipEvent::Up(new.info.clone()),
        ];
        assert_eq!(out, expected);
        // Same when foca reports only the up of the new run.
        let out = run(|t, out| {
            t.member_up(&old, out);
            t.member_up(&new, out);
        });
        assert_eq!(out, expected);
    }

    #[test]
    fn leave_is_reported_as_left() {
        let a = id("a", 1);
        let leaving = a.leaving().unwrap();
        // Peers usually learn the leaving identity first (rename), then see it down.
        let out = run(|t, out| {
            t.member_up(&a, out);
            t.renamed(&a, &leaving, false, out);
            t.member_down(&leaving, out);
        });
        assert_eq!(out, [MembershipEvent::Up(a.info.clone()), MembershipEvent::Left(a.info)]);
    }

    #[test]
    fn stale_news_about_an_older_run_is_ignored() {
        let old = id("a", 1);
        let new = id("a", 2);
        let out = run(|t, out| {
            t.member_up(&new, out);
            t.member_up(&old, out);
            t.member_down(&old, out);
        });
        assert_eq!(out, [MembershipEvent::Up(new.info)]);
    }

    #[test]
    fn ups_beyond_the_bound_are_refused() {
        let mut tracker = EventTracker::new(2);
        let mut out = Vec::new();
        assert!(tracker.member_up(&id("a", 1), &mut out));
        assert!(tracker.member_up(&id("b", 1), &mut out));
        assert!(!tracker.member_up(&id("c", 1), &mut out));
        assert_eq!(tracker.len(), 2);
        tracker.member_down(&id("a", 1), &mut out);
        assert!(tracker.member_up(&id("c", 1), &mut out));
    }
}
