//! The delay line of a chaos `Delay` fault on one internode connection (sans-I/O: the caller
//! supplies the time and does the writing or delivering).
//!
//! A delay fault must model a slow link, not a slow link *and* a throttle: each frame is held
//! `delay` after the moment it would have gone, while the frames behind it keep moving. Sleeping
//! in the writer or reader for each delayed frame instead serialises the delays, so a 200 ms rule
//! capped a link at about five frames a second and the queues behind it filled (what the
//! `slow-network` scenario measured before this line existed).
//!
//! Invariants: frames leave in the order they entered (a TCP stream never reorders, so jitter
//! only stretches the gaps: a frame's release time is never earlier than the one before it); the
//! line holds at most [`MAX_DELAYED_FRAMES`] frames and [`MAX_DELAYED_BYTES`] bytes before the
//! caller stops taking more (it checks [`DelayLine::has_room`] before each batch, so one batch may
//! go past the bound), which pushes back on the class queues, like a full TCP window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Frames one connection holds back at most (before the batch that crosses the bound). A 200 ms
/// delay at 20,000 frames/s keeps 4,000 in flight.
pub(crate) const MAX_DELAYED_FRAMES: usize = 4_096;

/// Bytes one connection holds back at most (before the batch that crosses the bound): the
/// bandwidth-delay product of about 40 MB/s at 200 ms.
pub(crate) const MAX_DELAYED_BYTES: usize = 8 * 1024 * 1024;

/// Items held until their release time, in arrival order.
#[derive(Debug)]
pub(crate) struct DelayLine<T> {
    items: VecDeque<(Instant, T)>,
    bytes: usize,
}

impl<T> Default for DelayLine<T> {
    fn default() -> Self {
        Self { items: VecDeque::new(), bytes: 0 }
    }
}

impl<T> DelayLine<T> {
    /// Nothing is held: a frame that passes the fault filter may go at once.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The caller may take another batch off its queue or socket.
    pub(crate) fn has_room(&self) -> bool {
        self.items.len() < MAX_DELAYED_FRAMES && self.bytes < MAX_DELAYED_BYTES
    }

    /// Holds `item` (of `bytes` bytes) until `now + delay`, or until the item before it leaves,
    /// whichever is later. A passing frame behind a held one is pushed with a zero delay.
    pub(crate) fn push(&mut self, now: Instant, delay: Duration, bytes: usize, item: T) {
        let mut due = now + delay;
        if let Some((last, _)) = self.items.back() {
            due = due.max(*last);
        }
        self.bytes += bytes;
        self.items.push_back((due, item));
    }

    /// When the first held item is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.items.front().map(|(due, _)| *due)
    }

    /// Takes the items due at `now`, in order; `size` gives each item's bytes.
    pub(crate) fn pop_due(&mut self, now: Instant, size: impl Fn(&T) -> usize) -> Vec<T> {
        let mut due = Vec::new();
        while self.items.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, item)) = self.items.pop_front() {
                self.bytes = self.bytes.saturating_sub(size(&item));
                due.push(item);
            }
        }
        due
    }

    /// Takes every held item (the connection ended: the caller counts them as lost).
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.items.drain(..).map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_overlap_instead_of_adding_up() {
        let start = Instant::now();
        let mut line = DelayLine::default();
        for i in 0..100u32 {
            line.push(start + MS * i, MS * 200, 1, i);
        }
        assert!(line.pop_due(start + MS * 199, |_| 1).is_empty());
        assert_eq!(line.pop_due(start + MS * 200, |_| 1), vec![0]);
        // A serial sleep would release frame 99 after 100 x 200 ms; the line after 299 ms.
        assert_eq!(line.pop_due(start + MS * 299, |_| 1).len(), 99);
        assert!(line.is_empty());
    }

    #[test]
    fn jitter_never_reorders_and_a_passing_frame_waits_behind_a_held_one() {
        let start = Instant::now();
        let mut line = DelayLine::default();
        line.push(start, MS * 300, 1, "slow");
        line.push(start, MS * 100, 1, "fast");
        line.push(start, Duration::ZERO, 1, "pass");
        assert_eq!(line.next_due(), Some(start + MS * 300));
        assert!(line.pop_due(start + MS * 150, |_| 1).is_empty(), "the later, shorter delay waits its turn");
        assert_eq!(line.pop_due(start + MS * 300, |_| 1), vec!["slow", "fast", "pass"]);
    }

    #[test]
    fn room_is_bounded_by_frames_and_by_bytes() {
        let now = Instant::now();
        let mut line = DelayLine::default();
        for i in 0..MAX_DELAYED_FRAMES {
            assert!(line.has_room());
            line.push(now, MS, 1, i);
        }
        assert!(!line.has_room(), "full by count");
        assert_eq!(line.take_all().len(), MAX_DELAYED_FRAMES);
        assert!(line.has_room() && line.is_empty());
        line.push(now, MS, MAX_DELAYED_BYTES, 0);
        assert!(!line.has_room(), "full by bytes");
        line.pop_due(now + MS, |_| MAX_DELAYED_BYTES);
        assert!(line.has_room(), "bytes are given back when an item leaves");
    }
}
