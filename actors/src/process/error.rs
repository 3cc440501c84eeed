//! The typed refusals of the process runtime, in SPEC 8's `Admission` words.
//!
//! Every refusal a caller can see is one of these enums; none carries a bare transport error.

use cohort_cluster::net::transport::SendError as TransportSendError;
use cohort_cluster::queue::Class;

use super::config::ProcessConfigError;
use crate::host::DeliveryError;
use crate::pid::Pid;

/// Why a message was not accepted for a process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such live process: it never existed, it exited, it belongs to an older incarnation of its
    /// node, or its node is not reachable through the transport. `Admission::NotHosted`.
    #[error("NotHosted: {0} is not a live process")]
    NotHosted(Pid),
    /// The process's bounded mailbox is full. `Admission::QueueSaturated { class: user }`.
    #[error("QueueSaturated: the mailbox of {0} is full")]
    MailboxFull(Pid),
    /// The internode `class` queue to the process's node is full. `Admission::QueueSaturated`.
    #[error("QueueSaturated: the {class} queue to the node of the target is full")]
    QueueSaturated {
        /// The internode class whose queue was full (`user`).
        class: Class,
    },
    /// The encoded message does not decode into the target's message type (local delivery by
    /// bytes); dropped and counted in `cohort_process_undecodable_total`.
    #[error("the message does not decode into the message type of {0}")]
    Undecodable(Pid),
    /// The message could not be encoded with rmp-serde (a caller bug, not a load condition).
    #[error("the message does not encode: {0}")]
    Unencodable(String),
    /// The encoded message does not fit in one internode frame (a caller bug).
    #[error("message frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame length.
        len: usize,
        /// The transport's maximum.
        max: usize,
    },
    /// The node (its process runtime or transport) is shutting down. `Admission::Canceled`.
    #[error("Canceled: the node is shutting down")]
    Canceled,
    /// A send by name carried a fencing token that is not the name's current one in this node's
    /// view (`Admission::EpochMismatch`): the sender holds a stale registration.
    #[error("EpochMismatch: fencing token {fence_token} is not the current one of {name:?}")]
    EpochMismatch {
        /// The name the send addressed.
        name: String,
        /// The token it carried.
        fence_token: u64,
    },
}

impl SendError {
    /// The SPEC 8 `Admission` word for this refusal (`NotHosted`, `QueueSaturated`, `Canceled`), or
    /// `Rejected` for caller bugs (undecodable, unencodable, too large).
    pub fn admission(&self) -> &'static str {
        match self {
            SendError::NotHosted(_) => "NotHosted",
            SendError::MailboxFull(_) | SendError::QueueSaturated { .. } => "QueueSaturated",
            SendError::Canceled => "Canceled",
            SendError::EpochMismatch { .. } => "EpochMismatch",
            SendError::Undecodable(_) | SendError::Unencodable(_) | SendError::TooLarge { .. } => "Rejected",
        }
    }

    /// Maps a transport refusal for a frame to `pid`'s node.
    pub(crate) fn from_transport(error: TransportSendError, pid: &Pid) -> Self {
        match error {
            TransportSendError::QueueSaturated { class } => SendError::QueueSaturated { class },
            TransportSendError::UnknownPeer => SendError::NotHosted(pid.clone()),
            TransportSendError::TooLarge { len, max } => SendError::TooLarge { len, max },
            TransportSendError::ShuttingDown => SendError::Canceled,
        }
    }
}

impl From<DeliveryError> for SendError {
    fn from(error: DeliveryError) -> Self {
        match error {
            DeliveryError::NotHosted(pid) => SendError::NotHosted(pid),
            DeliveryError::MailboxFull(pid) => SendError::MailboxFull(pid),
            DeliveryError::Undecodable(pid) => SendError::Undecodable(pid),
        }
    }
}

/// Why a process was not spawned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The process table holds `max` live processes. `Admission::QueueSaturated`.
    #[error("QueueSaturated: the process table is full ({max} processes)")]
    TableFull {
        /// The configured bound (`ProcessConfig::max_processes`).
        max: usize,
    },
    /// The actor's `pre_start` failed or panicked (its text, bounded).
    #[error("the actor failed to start: {0}")]
    Startup(String),
    /// The node is shutting down. `Admission::Canceled`.
    #[error("Canceled: the node is shutting down")]
    Canceled,
}

/// Why a monitor was not installed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// The watcher is not a live process of this node. `Admission::NotHosted`.
    #[error("NotHosted: the watcher {0} is not a live process of this node")]
    NotHosted(Pid),
    /// The watcher holds, or the target has, `max` monitors. `Admission::QueueSaturated`.
    #[error("QueueSaturated: {pid} already has {max} monitors")]
    ProcessLimit {
        /// The process at its bound (the watcher or the target).
        pid: Pid,
        /// `ProcessConfig::max_monitors_per_process`.
        max: usize,
    },
    /// The node holds `max` monitors. `Admission::QueueSaturated`.
    #[error("QueueSaturated: the node already has {max} monitors")]
    NodeLimit {
        /// `ProcessConfig::max_monitors_per_node`.
        max: usize,
    },
    /// The internode queue to the target's node is full. `Admission::QueueSaturated`.
    #[error("QueueSaturated: the {class} queue to the node of the target is full")]
    QueueSaturated {
        /// The internode class (`user`).
        class: Class,
    },
    /// The node is shutting down. `Admission::Canceled`.
    #[error("Canceled: the node is shutting down")]
    Canceled,
}

/// Why [`super::Processes::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is out of bounds.
    #[error(transparent)]
    Config(#[from] ProcessConfigError),
    /// The metrics could not be registered (already registered in this registry?).
    #[error("process metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Another consumer already subscribed to the transport's `user` class.
    #[error("the transport's user class already has a subscriber")]
    UserClassTaken,
    /// The node supervisor actor did not start.
    #[error("node supervisor: {0}")]
    Supervisor(String),
}
