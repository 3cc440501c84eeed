//! The membership driver's timer queue: foca's timers by due instant.
//!
//! Role: foca asks for timers through its runtime (`submit_after`) and requires every one to be
//! delivered (CRATES.md, foca's `Runtime` contract); this min-heap holds them until due. Each
//! entry remembers when it was armed, for how long and under which local-health factor, so the
//! driver can defer a suspicion timer when the factor rose after it was armed.
//!
//! Invariants: pop order is by due instant, then by arming order (FIFO on ties); the queue holds
//! at most `max` entries and refuses the next one (the caller counts it). foca arms O(members)
//! timers (one probe cycle, one suspicion per suspect, one removal per down member), far below the
//! bound in any sane cluster, so a refusal signals a bug or an attack, not load.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A timer as armed.
#[derive(Debug)]
pub(crate) struct Armed<T> {
    /// When it is due.
    pub(crate) due: Instant,
    /// When it was armed.
    pub(crate) armed_at: Instant,
    /// The delay foca asked for.
    pub(crate) after: Duration,
    /// The local-health factor foca's config carried when it was armed.
    pub(crate) factor: f64,
    /// foca's timer.
    pub(crate) timer: T,
}

struct Entry<T> {
    seq: u64,
    armed: Armed<T>,
}

impl<T> Entry<T> {
    fn key(&self) -> (Instant, u64) {
        (self.armed.due, self.seq)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// A bounded min-heap of armed timers.
pub(crate) struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
    max: usize,
}

impl<T> TimerQueue<T> {
    /// An empty queue holding at most `max` timers.
    pub(crate) fn new(max: usize) -> Self {
        Self { heap: BinaryHeap::new(), seq: 0, max }
    }

    /// Adds a timer; gives it back when the queue is full.
    pub(crate) fn push(&mut self, armed: Armed<T>) -> Result<(), Armed<T>> {
        if self.heap.len() >= self.max {
            return Err(armed);
        }
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Reverse(Entry { seq: self.seq, armed }));
        Ok(())
    }

    /// When the earliest timer is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(entry)| entry.armed.due)
    }

    /// The earliest timer if it is due by `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Armed<T>> {
        if self.next_due()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry.armed)
    }

    /// How many timers are armed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(base: Instant, due_ms: u64, timer: u32) -> Armed<u32> {
        let after = Duration::from_millis(due_ms);
        Armed { due: base + after, armed_at: base, after, factor: 1.0, timer }
    }

    #[test]
    fn pops_in_due_order_then_fifo_and_only_when_due() {
        let base = Instant::now();
        let mut queue = TimerQueue::new(8);
        for (due, timer) in [(30, 1), (10, 2), (30, 3), (20, 4)] {
            queue.push(armed(base, due, timer)).unwrap();
        }
        assert_eq!(queue.next_due(), Some(base + Duration::from_millis(10)));
        assert!(queue.pop_due(base).is_none());
        let order: Vec<u32> =
            std::iter::from_fn(|| queue.pop_due(base + Duration::from_millis(30))).map(|a| a.timer).collect();
        assert_eq!(order, [2, 4, 1, 3]);
        assert!(queue.next_due().is_none());
    }

    #[test]
    fn a_full_queue_refuses_and_gives_the_timer_back() {
        let base = Instant::now();
        let mut queue = TimerQueue::new(2);
        queue.push(armed(base, 1, 1)).unwrap();
        queue.push(armed(base, 2, 2)).unwrap();
        assert_eq!(queue.push(armed(base, 3, 3)).unwrap_err().timer, 3);
        assert_eq!(queue.len(), 2);
    }
}
