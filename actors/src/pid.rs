//! Process identifiers (SPEC section 4).
//!
//! A [`Pid`] names one process (actor) visible to the cluster: the [`NodeId`] of the node that hosts
//! it (name and incarnation) plus a node-local number. It prints as `<name.incarnation.local>` and
//! parses back from exactly that form; parsing is a trust boundary (admin API, probe workload), so it
//! returns a typed [`PidParseError`] on any input and never panics.
//!
//! Invariant: a pid whose node incarnation is older than the node's current one is dead by
//! definition; [`Pid::is_local_to`] therefore compares the whole `NodeId`, incarnation included.

use std::fmt;
use std::str::FromStr;

use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};

/// Longest node name a printed pid may carry, in bytes. Node names are short identifiers
/// (`[A-Za-z0-9_-]`); 64 bytes keeps a pid's text form, and every frame that lists pids, small.
pub const MAX_NODE_NAME_BYTES: usize = 64;

/// A cluster-wide process identifier: the hosting node and a number local to that node.
///
/// ```
/// use cohort_actors::Pid;
/// use cohort_cluster::NodeId;
///
/// let pid = Pid::new(NodeId::new("alpha", 7), 42);
/// assert_eq!(pid.to_string(), "<alpha.7.42>");
/// assert_eq!("<alpha.7.42>".parse::<Pid>().unwrap(), pid);
/// assert!(pid.is_local_to(&NodeId::new("alpha", 7)));
/// assert!(!pid.is_local_to(&NodeId::new("alpha", 8)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pid {
    /// The node hosting the process (name and incarnation).
    pub node: NodeId,
    /// The process number, unique within that node incarnation.
    pub local: u64,
}

impl Pid {
    /// A pid from its parts.
    pub fn new(node: NodeId, local: u64) -> Self {
        Self { node, local }
    }

    /// Whether this process is hosted by `node` (same name and same incarnation).
    pub fn is_local_to(&self, node: &NodeId) -> bool {
        self.node == *node
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}.{}.{}>", self.node.name, self.node.incarnation, self.local)
    }
}

/// Why a string is not a pid (`<name.incarnation.local>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidParseError {
    /// The text does not start with `<` and end with `>`.
    #[error("a pid is written <name.incarnation.local>")]
    MissingBrackets,
    /// The text between the brackets does not have exactly three `.`-separated fields.
    #[error("a pid has three fields separated by '.', found {found}")]
    WrongFieldCount {
        /// How many fields were found.
        found: usize,
    },
    /// The node name is empty, longer than [`MAX_NODE_NAME_BYTES`] or has a character outside `[A-Za-z0-9_-]`.
    #[error("node name must be 1-{MAX_NODE_NAME_BYTES} characters of [A-Za-z0-9_-]")]
    InvalidNodeName,
    /// The incarnation is not a decimal `u64`.
    #[error("incarnation is not a decimal u64")]
    InvalidIncarnation,
    /// The local process number is not a decimal `u64`.
    #[error("local process number is not a decimal u64")]
    InvalidLocal,
}

/// Whether `name` is a valid node name: 1 to [`MAX_NODE_NAME_BYTES`] characters of `[A-Za-z0-9_-]`.
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Digits only: `u64::from_str` would also accept a leading `+`, which does not round-trip.
fn parse_decimal(field: &str) -> Option<u64> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

impl FromStr for Pid {
    type Err = PidParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let inner =
            text.strip_prefix('<').and_then(|rest| rest.strip_suffix('>')).ok_or(PidParseError::MissingBrackets)?;
        let mut fields = inner.split('.');
        let (Some(name), Some(incarnation), Some(local), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(PidParseError::WrongFieldCount { found: inner.split('.').count() });
        };
        if !is_valid_node_name(name) {
            return Err(PidParseError::InvalidNodeName);
        }
        let incarnation = parse_decimal(incarnation).ok_or(PidParseError::InvalidIncarnation)?;
        let local = parse_decimal(local).ok_or(PidParseError::InvalidLocal)?;
        Ok(Pid::new(NodeId::new(name, incarnation), local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_is_name_incarnation_local_in_brackets() {
        assert_eq!(Pid::new(NodeId::new("node-1_a", 17), 0).to_string(), "<node-1_a.17.0>");
    }

    #[test]
    fn parse_accepts_the_display_form() {
        let pid: Pid = "<b.18446744073709551615.3>".parse().unwrap();
        assert_eq!(pid, Pid::new(NodeId::new("b", u64::MAX), 3));
    }

    #[test]
    fn parse_refuses_malformed_text_with_a_typed_reason() {
        let cases = [
            ("", PidParseError::MissingBrackets),
            ("a.1.2", PidParseError::MissingBrackets),
            ("<a.1.2", PidParseError::MissingBrackets),
            ("<>", PidParseError::WrongFieldCount { found: 1 }),
            ("<a.1>", PidParseError::WrongFieldCount { found: 2 }),
            ("<a.1.2.3>", PidParseError::WrongFieldCount { found: 4 }),
            ("<.1.2>", PidParseError::InvalidNodeName),
            ("<a b.1.2>", PidParseError::InvalidNodeName),
            ("<é.1.2>", PidParseError::InvalidNodeName),
            ("<a.+1.2>", PidParseError::InvalidIncarnation),
            ("<a.-1.2>", PidParseError::InvalidIncarnation),
            ("<a.18446744073709551616.2>", PidParseError::InvalidIncarnation),
            ("<a.1.>", PidParseError::InvalidLocal),
            ("<a.1.x>", PidParseError::InvalidLocal),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Pid>(), Err(expected), "{text:?}");
        }
        let long = format!("<{}.1.2>", "n".repeat(MAX_NODE_NAME_BYTES + 1));
        assert_eq!(long.parse::<Pid>(), Err(PidParseError::InvalidNodeName));
        let longest = format!("<{}.1.2>", "n".repeat(MAX_NODE_NAME_BYTES));
        assert!(longest.parse::<Pid>().is_ok());
    }

    #[test]
    fn is_local_to_requires_the_same_incarnation() {
        let pid = Pid::new(NodeId::new("a", 2), 1);
        assert!(pid.is_local_to(&NodeId::new("a", 2)));
        assert!(!pid.is_local_to(&NodeId::new("a", 3)));
        assert!(!pid.is_local_to(&NodeId::new("b", 2)));
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(name in "[A-Za-z0-9_-]{1,64}", incarnation: u64, local: u64) {
            let pid = Pid::new(NodeId::new(name, incarnation), local);
            prop_assert_eq!(pid.to_string().parse::<Pid>(), Ok(pid));
        }

        #[test]
        fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,80}") {
            let _ = text.parse::<Pid>();
        }

        #[test]
        fn parse_never_panics_on_near_pids(text in "<[A-Za-z0-9_.+-]{0,70}>") {
            if let Ok(pid) = text.parse::<Pid>() {
                // Whatever parses prints back to a form that parses to the same pid.
                prop_assert_eq!(pid.to_string().parse::<Pid>(), Ok(pid));
            }
        }
    }
}
