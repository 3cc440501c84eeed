//! The node supervisor: the ractor parent of every hosted process, and the single place exits are
//! turned into runs of the exit pipeline.
//!
//! Two sources report an exit, and both end here, on this actor's one task:
//! - ractor's supervision events (`ActorTerminated`, `ActorFailed`) from the linked child; a
//!   supervisor stops itself on a child's exit by default, so this actor overrides
//!   `handle_supervisor_evt` and never stops for a child;
//! - the process's join handle, awaited by a small backstop task that then sends
//!   [`SupervisorMsg::Joined`]. ractor enqueues the supervision event before the child's task
//!   finishes, and polls its supervision port before its message port (biased select), so the
//!   event, which carries the better reason, is always handled first when both exist.
//!
//! The pipeline removes the process from the table first; only the run that removes it goes on,
//! so each exit is processed exactly once whatever the order and number of reports.

use std::panic::AssertUnwindSafe;
use std::sync::Weak;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::mailbox::ExitHints;
use super::runtime::Shared;
use crate::host::ExitReason;

/// Messages of the node supervisor (supervision events arrive on ractor's own port).
#[derive(Debug)]
pub(crate) enum SupervisorMsg {
    /// The join handle of the process with this local number resolved.
    Joined(u64),
}

/// How an exit was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    /// `ActorTerminated`: stopped, or killed (the kill signal, or cancelled in a lifecycle hook).
    Terminated {
        /// Killed rather than stopped.
        killed: bool,
    },
    /// `ActorFailed`: a handler returned an error or panicked.
    Failed,
    /// Only the join handle resolved (no supervision event was seen).
    Joined,
}

/// The exit reason of a process from how its exit was observed and what its slot noted.
pub(crate) fn exit_reason(observed: Observed, hints: ExitHints) -> ExitReason {
    match observed {
        Observed::Terminated { killed: true } => ExitReason::Killed,
        // A stop (by the process itself, `exit(Normal)`, shutdown) is normal unless `exit` asked
        // for an error exit; a requested kill that lost the race to a stop is still a stop.
        Observed::Terminated { killed: false } => match hints.requested {
            Some(ExitReason::Error(text)) => ExitReason::Error(text),
            _ => ExitReason::Normal,
        },
        // The wrapper sees every handler's result; a failure with no error noted is a panic.
        Observed::Failed => hints.handler_error.map_or(ExitReason::Panic, ExitReason::Error),
        Observed::Joined => {
            if let Some(text) = hints.handler_error {
                ExitReason::Error(text)
            } else if hints.stopped_cleanly {
                match hints.requested {
                    Some(ExitReason::Error(text)) => ExitReason::Error(text),
                    _ => ExitReason::Normal,
                }
            } else if hints.requested == Some(ExitReason::Killed) {
                ExitReason::Killed
            } else {
                ExitReason::Panic
            }
        }
    }
}

/// The node supervisor actor (see the module docs).
pub(crate) struct NodeSupervisor {
    pub(crate) node: Weak<Shared>,
}

impl NodeSupervisor {
    fn observe(&self, actor: ActorId, observed: Observed) {
        let Some(node) = self.node.upgrade() else { return };
        // The pipeline calls exit hooks (outside code, each already guarded); a panic anywhere else
        // must not take this actor, and with it every later exit of the node, down.
        if std::panic::catch_unwind(AssertUnwindSafe(|| node.on_exit_observed(actor, observed))).is_err() {
            tracing::error!("exit pipeline panicked; the process stays in the table until the backstop");
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<SupervisorMsg>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Joined(local) = message;
        let Some(node) = self.node.upgrade() else { return Ok(()) };
        if std::panic::catch_unwind(AssertUnwindSafe(|| node.on_joined(local))).is_err() {
            tracing::error!(local, "exit pipeline panicked on a joined process");
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, state, reason) => {
                let killed = state.is_none() || reason.as_deref() == Some("killed");
                self.observe(cell.get_id(), Observed::Terminated { killed });
            }
            SupervisionEvent::ActorFailed(cell, _error) => self.observe(cell.get_id(), Observed::Failed),
            _ => {}
        }
        // Never stop: this actor outlives every process of the node.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(requested: Option<ExitReason>, handler_error: Option<&str>, stopped_cleanly: bool) -> ExitHints {
        ExitHints { requested, handler_error: handler_error.map(str::to_owned), stopped_cleanly }
    }

    #[test]
    fn failure_is_an_error_when_a_handler_returned_one_and_a_panic_otherwise() {
        assert_eq!(exit_reason(Observed::Failed, hints(None, Some("boom"), false)), ExitReason::Error("boom".into()));
        assert_eq!(exit_reason(Observed::Failed, hints(None, None, false)), ExitReason::Panic);
    }

    #[test]
    fn termination_is_normal_killed_or_the_requested_error() {
        assert_eq!(exit_reason(Observed::Terminated { killed: false }, hints(None, None, true)), ExitReason::Normal);
        assert_eq!(exit_reason(Observed::Terminated { killed: true }, hints(None, None, false)), ExitReason::Killed);
        let requested = Some(ExitReason::Error("bye".into()));
        assert_eq!(
            exit_reason(Observed::Terminated { killed: false }, hints(requested, None, true)),
            ExitReason::Error("bye".into())
        );
        let requested = Some(ExitReason::Killed);
        assert_eq!(
            exit_reason(Observed::Terminated { killed: false }, hints(requested, None, true)),
            ExitReason::Normal
        );
    }

    #[test]
    fn join_backstop_infers_from_the_hints() {
        assert_eq!(exit_reason(Observed::Joined, hints(None, None, true)), ExitReason::Normal);
        assert_eq!(exit_reason(Observed::Joined, hints(Some(ExitReason::Killed), None, false)), ExitReason::Killed);
        assert_eq!(exit_reason(Observed::Joined, hints(None, None, false)), ExitReason::Panic);
        assert_eq!(exit_reason(Observed::Joined, hints(None, Some("e"), false)), ExitReason::Error("e".into()));
    }
}
