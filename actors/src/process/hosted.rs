//! The Cohort wrapper around a user's ractor actor ([`Hosted`]) and the type-erased entry of the
//! process table ([`HostedEntry`]).
//!
//! The wrapper has the user's message, state and argument types, so the user's handlers receive
//! their own `ActorRef<M>` unchanged; it adds three things around each delegated call:
//! - it releases one unit of the mailbox bound when it takes a message (before the handler runs);
//! - it registers the process in the node's table at the end of `pre_start`, before ractor links it
//!   to the node supervisor, so the supervisor can never see an exit of a process it cannot name;
//! - it notes exit hints (a handler's error text, a clean `post_stop`) for the exit pipeline.
//!
//! The entry stores, per process, a decoder monomorphised at spawn time: the only place where an
//! encoded message (remote send, `deliver_local`) meets the process's concrete type.

use std::any::Any;
use std::sync::{Arc, Weak};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, SupervisionEvent};
use serde::de::DeserializeOwned;

use super::config::bounded_reason_text;
use super::mailbox::{ProcessRef, Slot};
use super::runtime::Shared;
use crate::host::DeliveryError;

/// Decodes an rmp-serde payload into a process's message type; `None` if it does not decode.
pub(crate) type Decoder<M> = fn(&[u8]) -> Option<M>;

/// The [`Decoder`] of a message type that can cross nodes.
pub(crate) fn decoder<M: DeserializeOwned>(payload: &[u8]) -> Option<M> {
    rmp_serde::from_slice(payload).ok()
}

/// One process in the table, its message type erased.
pub(crate) trait HostedEntry: Send + Sync + 'static {
    fn slot(&self) -> &Arc<Slot>;
    fn cell(&self) -> ActorCell;
    /// The typed entry, for a downcast to `Entry<M>` (typed send by pid, `lookup`).
    fn as_any(&self) -> &dyn Any;
    /// Decodes `payload` into the process's message type and sends it into the bounded mailbox.
    fn deliver_encoded(&self, payload: &[u8]) -> Result<(), DeliveryError>;
}

/// The table entry of a process with message type `M`.
pub(crate) struct Entry<M> {
    pub(crate) process: ProcessRef<M>,
    decode: Option<Decoder<M>>,
}

impl<M: Message> HostedEntry for Entry<M> {
    fn slot(&self) -> &Arc<Slot> {
        self.process.slot()
    }

    fn cell(&self) -> ActorCell {
        self.process.actor_ref().get_cell()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn deliver_encoded(&self, payload: &[u8]) -> Result<(), DeliveryError> {
        let pid = self.process.pid();
        let Some(decode) = self.decode else { return Err(DeliveryError::Undecodable(pid.clone())) };
        // Reserve before decoding: under overload a refusal costs no decode.
        if !self.process.slot().try_reserve() {
            return Err(DeliveryError::MailboxFull(pid.clone()));
        }
        let Some(message) = decode(payload) else {
            self.process.slot().release();
            return Err(DeliveryError::Undecodable(pid.clone()));
        };
        self.process.send_reserved(message).map_err(|_| DeliveryError::NotHosted(pid.clone()))
    }
}

/// The wrapper actor every hosted process runs as (see the module docs).
pub(crate) struct Hosted<A: Actor> {
    actor: A,
    slot: Arc<Slot>,
    node: Weak<Shared>,
    decode: Option<Decoder<A::Msg>>,
}

impl<A: Actor> Hosted<A> {
    pub(crate) fn new(actor: A, slot: Arc<Slot>, node: Weak<Shared>, decode: Option<Decoder<A::Msg>>) -> Self {
        Self { actor, slot, node, decode }
    }

    /// Notes a handler's error for the exit pipeline and passes the result on.
    fn note<T>(&self, result: Result<T, ActorProcessingErr>) -> Result<T, ActorProcessingErr> {
        if let Err(error) = &result {
            self.slot.note_handler_error(bounded_reason_text(error.to_string()));
        }
        result
    }
}

impl<A: Actor> Actor for Hosted<A> {
    type Msg = A::Msg;
    type State = A::State;
    type Arguments = A::Arguments;

    async fn pre_start(&self, myself: ActorRef<A::Msg>, args: A::Arguments) -> Result<A::State, ActorProcessingErr> {
        let state = self.actor.pre_start(myself.clone(), args).await?;
        let node = self.node.upgrade().ok_or("the node's process runtime is stopped")?;
        let entry = Entry { process: ProcessRef::new(myself.clone(), Arc::clone(&self.slot)), decode: self.decode };
        if !node.register(Arc::new(entry), myself.get_id()) {
            return Err("the node is shutting down".into());
        }
        Ok(state)
    }

    async fn post_start(&self, myself: ActorRef<A::Msg>, state: &mut A::State) -> Result<(), ActorProcessingErr> {
        let result = self.actor.post_start(myself, state).await;
        self.note(result)
    }

    async fn handle(
        &self,
        myself: ActorRef<A::Msg>,
        message: A::Msg,
        state: &mut A::State,
    ) -> Result<(), ActorProcessingErr> {
        self.slot.release();
        let result = self.actor.handle(myself, message, state).await;
        self.note(result)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<A::Msg>,
        event: SupervisionEvent,
        state: &mut A::State,
    ) -> Result<(), ActorProcessingErr> {
        let result = self.actor.handle_supervisor_evt(myself, event, state).await;
        self.note(result)
    }

    async fn post_stop(&self, myself: ActorRef<A::Msg>, state: &mut A::State) -> Result<(), ActorProcessingErr> {
        self.slot.note_stopped_cleanly();
        let result = self.actor.post_stop(myself, state).await;
        self.note(result)
    }
}
