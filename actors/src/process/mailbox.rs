//! The bounded mailbox of a hosted process, and [`ProcessRef`], the typed handle that sends into it.
//!
//! ractor's mailboxes are unbounded channels, so Cohort bounds each process itself (SPEC 6.1): the
//! process's [`Slot`] counts messages admitted and not yet taken. A send reserves one unit (refused
//! at capacity, with `MailboxFull` and `cohort_process_mailbox_refused_total`); the wrapper actor
//! releases it when it takes the message, before the user's handler runs.
//!
//! Invariants:
//! - `depth <= capacity` for counted sends; DOWN messages are admitted beyond it (a DOWN is never
//!   refused, as in Erlang), bounded by the per-process monitor bound.
//! - Messages sent through a raw ractor `ActorRef` (e.g. the `myself` a handler receives) bypass
//!   the count; the release saturates at 0 so they can never make the bound looser than capacity
//!   plus the number of such messages in flight.
//! - The slot also carries the hints the exit pipeline needs to name an exit (a requested exit, a
//!   handler error, a clean `post_stop`); they are hints only: the pipeline is driven by ractor's
//!   supervision events and the join handle, never by `post_stop`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use ractor::{ActorRef, Message};

use super::error::SendError;
use crate::host::ExitReason;
use crate::pid::Pid;

/// Per-process state shared by its handles, its wrapper actor and its table entry.
pub(crate) struct Slot {
    pub(crate) pid: Pid,
    depth: AtomicUsize,
    capacity: usize,
    refused: IntCounter,
    /// The exit asked for by `Processes::exit`, if any.
    requested: Mutex<Option<ExitReason>>,
    /// The text of the first error a handler of the process returned.
    handler_error: Mutex<Option<String>>,
    /// `post_stop` started: the process stopped without a panic or a kill.
    stopped_cleanly: AtomicBool,
}

/// What the slot knows about how its process ended (see [`super::supervisor`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExitHints {
    pub(crate) requested: Option<ExitReason>,
    pub(crate) handler_error: Option<String>,
    pub(crate) stopped_cleanly: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data under these locks is a single Option written whole: poisoning leaves it consistent.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Slot {
    pub(crate) fn new(pid: Pid, capacity: usize, refused: IntCounter) -> Self {
        Self {
            pid,
            depth: AtomicUsize::new(0),
            capacity,
            refused,
            requested: Mutex::new(None),
            handler_error: Mutex::new(None),
            stopped_cleanly: AtomicBool::new(false),
        }
    }

    /// Reserves room for one message; false (and counted) at capacity.
    pub(crate) fn try_reserve(&self) -> bool {
        let capacity = self.capacity;
        let admitted = self
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |depth| (depth < capacity).then_some(depth + 1))
            .is_ok();
        if !admitted {
            self.refused.inc();
        }
        admitted
    }

    /// Admits one message regardless of capacity (DOWN messages).
    fn reserve_unbounded(&self) {
        self.depth.fetch_add(1, Ordering::AcqRel);
    }

    /// Releases one unit: the wrapper took a message, or a reserved send failed.
    pub(crate) fn release(&self) {
        let _ = self.depth.fetch_update(Ordering::AcqRel, Ordering::Acquire, |depth| Some(depth.saturating_sub(1)));
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// Records an exit asked for from outside. A kill overrides an earlier request (it is what
    /// will happen); otherwise the first request wins.
    pub(crate) fn request_exit(&self, reason: ExitReason) {
        let mut requested = lock(&self.requested);
        if requested.is_none() || reason == ExitReason::Killed {
            *requested = Some(reason);
        }
    }

    /// Records the first error a handler returned.
    pub(crate) fn note_handler_error(&self, text: String) {
        let mut handler_error = lock(&self.handler_error);
        if handler_error.is_none() {
            *handler_error = Some(text);
        }
    }

    pub(crate) fn note_stopped_cleanly(&self) {
        self.stopped_cleanly.store(true, Ordering::Release);
    }

    pub(crate) fn hints(&self) -> ExitHints {
        ExitHints {
            requested: lock(&self.requested).clone(),
            handler_error: lock(&self.handler_error).clone(),
            stopped_cleanly: self.stopped_cleanly.load(Ordering::Acquire),
        }
    }
}

/// A typed handle to a hosted process: sends without serialization into its bounded mailbox.
///
/// Cheap to clone; `Send + Sync`. Obtained from `Processes::spawn` or `Processes::lookup`.
pub struct ProcessRef<M> {
    actor: ActorRef<M>,
    slot: Arc<Slot>,
}

impl<M> Clone for ProcessRef<M> {
    fn clone(&self) -> Self {
        Self { actor: self.actor.clone(), slot: Arc::clone(&self.slot) }
    }
}

impl<M> fmt::Debug for ProcessRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessRef").field("pid", &self.slot.pid).field("mailbox", &self.slot.depth()).finish()
    }
}

impl<M> ProcessRef<M> {
    pub(crate) fn new(actor: ActorRef<M>, slot: Arc<Slot>) -> Self {
        Self { actor, slot }
    }

    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The process's pid.
    pub fn pid(&self) -> &Pid {
        &self.slot.pid
    }

    /// Messages admitted to the mailbox and not yet taken by the process.
    pub fn mailbox_len(&self) -> usize {
        self.slot.depth()
    }

    /// The mailbox capacity, in messages.
    pub fn mailbox_capacity(&self) -> usize {
        self.slot.capacity
    }

    /// The underlying ractor actor (for `call`, `get_status`, ...). Messages sent through it bypass
    /// the mailbox bound: use [`ProcessRef::send`] for ordinary sends.
    pub fn actor_ref(&self) -> &ActorRef<M> {
        &self.actor
    }
}

impl<M: Message> ProcessRef<M> {
    /// Sends `message` into the process's bounded mailbox; never blocks.
    ///
    /// Refused with [`SendError::MailboxFull`] (`QueueSaturated`) at capacity, and
    /// [`SendError::NotHosted`] once the process has stopped.
    pub fn send(&self, message: M) -> Result<(), SendError> {
        if !self.slot.try_reserve() {
            return Err(SendError::MailboxFull(self.slot.pid.clone()));
        }
        self.send_reserved(message)
    }

    /// Sends a message whose room [`Slot::try_reserve`] already reserved.
    pub(crate) fn send_reserved(&self, message: M) -> Result<(), SendError> {
        self.actor.send_message(message).map_err(|_| {
            self.slot.release();
            SendError::NotHosted(self.slot.pid.clone())
        })
    }

    /// Sends a runtime notice that must not be refused for capacity (a DOWN, a `NameRevoked`);
    /// false if the process is gone.
    ///
    /// Why this cannot grow without bound: each notice is owed at most once per bounded record (a
    /// monitor delivers at most one DOWN and a watcher holds at most
    /// `ProcessConfig::max_monitors_per_process` monitors; a registration is revoked at most once),
    /// so a mailbox exceeds its capacity by at most that many messages. Not for ordinary sends.
    pub fn send_unbounded(&self, message: M) -> bool {
        self.slot.reserve_unbounded();
        if self.actor.send_message(message).is_err() {
            self.slot.release();
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_cluster::NodeId;

    fn slot(capacity: usize) -> (Slot, IntCounter) {
        let refused = IntCounter::new("refused", "refused").unwrap();
        (Slot::new(Pid::new(NodeId::new("a", 1), 1), capacity, refused.clone()), refused)
    }

    #[test]
    fn reservations_stop_at_capacity_and_are_counted() {
        let (slot, refused) = slot(2);
        assert!(slot.try_reserve());
        assert!(slot.try_reserve());
        assert!(!slot.try_reserve());
        assert_eq!(refused.get(), 1);
        slot.release();
        assert!(slot.try_reserve());
        assert_eq!(slot.depth(), 2);
    }

    #[test]
    fn release_saturates_at_zero() {
        let (slot, _) = slot(1);
        slot.release();
        assert_eq!(slot.depth(), 0);
        assert!(slot.try_reserve());
        assert!(!slot.try_reserve());
    }

    #[test]
    fn kill_request_overrides_and_others_keep_the_first() {
        let (slot, _) = slot(1);
        slot.request_exit(ExitReason::Normal);
        slot.request_exit(ExitReason::Error("x".into()));
        assert_eq!(slot.hints().requested, Some(ExitReason::Normal));
        slot.request_exit(ExitReason::Killed);
        assert_eq!(slot.hints().requested, Some(ExitReason::Killed));
    }
}
