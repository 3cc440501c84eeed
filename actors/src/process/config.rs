//! The bounds of one node's process runtime ([`ProcessConfig`]), each named with why it has its value.
//!
//! Invariant: every map and queue of the runtime is bounded by one of these fields; the runtime
//! refuses, with a typed error and a counter, whatever would exceed them.

use std::time::Duration;

/// Default mailbox capacity of a hosted process, in messages (SPEC 6.1).
///
/// Why: ractor's mailboxes are unbounded tokio channels (5M queued 64-byte messages cost +656 MiB,
/// CRATES.md); 65,536 queued messages of ~100 bytes is ~6.5 MiB per process in the worst case,
/// enough to absorb bursts of a 2-core node's send rate (millions per second) for tens of ms.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 65_536;

/// Default bound on live processes per node.
///
/// Why: an idle ractor actor costs ~7.7 KB (CRATES.md) plus its table entry, mailbox counter and
/// join-watcher task (~1 KB): 262,144 processes is ~2.4 GB, the most one node should spend on them.
pub const DEFAULT_MAX_PROCESSES: usize = 262_144;

/// Default bound on monitors one process may hold as a watcher, and on monitors on one process as a
/// target.
///
/// Why: DOWN messages bypass the mailbox bound (a DOWN is never refused, as in Erlang), so this is
/// also how far a watcher's mailbox may exceed its capacity; 16,384 covers any process that watches
/// a pool of workers while keeping that overshoot below a quarter of the default capacity.
pub const DEFAULT_MAX_MONITORS_PER_PROCESS: usize = 16_384;

/// Default bound on monitors per node: local watchers' monitors plus remote watchers' monitors on
/// local processes.
///
/// Why: a monitor record with its index entries costs ~200 bytes; 1,048,576 of them is ~200 MB.
pub const DEFAULT_MAX_MONITORS_PER_NODE: usize = 1_048_576;

/// Default time [`crate::process::Processes::shutdown`] waits for processes to stop before killing
/// the rest.
///
/// Why: a process's `post_stop` may flush something; 5 s is the usual grace of a service manager
/// (systemd sends SIGKILL after 90 s, but a node stop must stay well inside a chaos settle window).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest exit-reason text kept (handler errors, `exit(pid, Error(..))`), in bytes.
///
/// Why: the text travels in every DOWN frame to remote watchers and is stored per exit; 256 bytes
/// holds a useful error message, longer ones are cut at a character boundary.
pub const MAX_EXIT_REASON_BYTES: usize = 256;

/// The bounds of one node's process runtime. [`Default`] is the named constants of this module;
/// tests use small values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Messages a process's mailbox may hold ([`DEFAULT_MAILBOX_CAPACITY`]).
    pub mailbox_capacity: usize,
    /// Live processes on the node ([`DEFAULT_MAX_PROCESSES`]).
    pub max_processes: usize,
    /// Monitors per process, as watcher and as target ([`DEFAULT_MAX_MONITORS_PER_PROCESS`]).
    pub max_monitors_per_process: usize,
    /// Monitors per node ([`DEFAULT_MAX_MONITORS_PER_NODE`]).
    pub max_monitors_per_node: usize,
    /// Grace before `shutdown` kills the processes still running ([`DEFAULT_SHUTDOWN_TIMEOUT`]).
    pub shutdown_timeout: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_monitors_per_process: DEFAULT_MAX_MONITORS_PER_PROCESS,
            max_monitors_per_node: DEFAULT_MAX_MONITORS_PER_NODE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Why a [`ProcessConfig`] is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProcessConfigError {
    /// A bound is zero: nothing could ever be admitted.
    #[error("process config: {field} must be at least 1")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// The shutdown grace is over a minute: a node stop would hang a deploy or a chaos run.
    #[error("process config: shutdown_timeout must be at most 60 s")]
    ShutdownTimeoutTooLong,
}

impl ProcessConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), ProcessConfigError> {
        let fields = [
            ("mailbox_capacity", self.mailbox_capacity),
            ("max_processes", self.max_processes),
            ("max_monitors_per_process", self.max_monitors_per_process),
            ("max_monitors_per_node", self.max_monitors_per_node),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, value)| *value == 0) {
            return Err(ProcessConfigError::Zero { field });
        }
        if self.shutdown_timeout > Duration::from_secs(60) {
            return Err(ProcessConfigError::ShutdownTimeoutTooLong);
        }
        Ok(())
    }
}

/// `text` cut to at most [`MAX_EXIT_REASON_BYTES`], at a character boundary.
pub(crate) fn bounded_reason_text(mut text: String) -> String {
    if text.len() > MAX_EXIT_REASON_BYTES {
        let mut end = MAX_EXIT_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ProcessConfig::default().validate(), Ok(()));
    }

    #[test]
    fn zero_bounds_are_refused() {
        let config = ProcessConfig { mailbox_capacity: 0, ..ProcessConfig::default() };
        assert_eq!(config.validate(), Err(ProcessConfigError::Zero { field: "mailbox_capacity" }));
    }

    #[test]
    fn reason_text_is_cut_at_a_char_boundary() {
        let text = "é".repeat(MAX_EXIT_REASON_BYTES);
        let cut = bounded_reason_text(text);
        assert!(cut.len() <= MAX_EXIT_REASON_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(bounded_reason_text("short".into()), "short");
    }
}
