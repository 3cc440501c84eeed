//! Which of a peer's two links carries which class, and how a connection names its link in the
//! handshake. Pure: no I/O.
//!
//! Each ordered pair of nodes has two connections (SPEC 5.2 allows one per class "if measured
//! better"): the **priority** link carries `control` and `raft`, the **bulk** link carries `pg`,
//! `registry` and `user`. Classes never move between links, so per-class ordering is per link.

use super::handshake::{KIND_HELLO, KIND_HELLO_BULK};
use crate::queue::Class;

/// One of the two connections from this node to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Link {
    /// `control` + `raft`: little traffic, latency-critical (heartbeats, elections, pings).
    Priority,
    /// `pg` + `registry` + `user`: the traffic that can saturate the connection.
    Bulk,
}

impl Link {
    /// Both links, in index order.
    pub const ALL: [Link; 2] = [Link::Priority, Link::Bulk];

    /// The link that carries `class`.
    pub const fn of(class: Class) -> Link {
        match class {
            Class::Control | Class::Raft => Link::Priority,
            Class::Pg | Class::Registry | Class::User => Link::Bulk,
        }
    }

    /// The position of the link in per-link arrays.
    pub const fn index(self) -> usize {
        match self {
            Link::Priority => 0,
            Link::Bulk => 1,
        }
    }

    /// The name used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Link::Priority => "priority",
            Link::Bulk => "bulk",
        }
    }

    /// The frame `kind` of the initiator's `Hello` on this link: the responder learns from it
    /// which link the connection is.
    pub const fn hello_kind(self) -> u8 {
        match self {
            Link::Priority => KIND_HELLO,
            Link::Bulk => KIND_HELLO_BULK,
        }
    }

    /// The link a `Hello` frame of `kind` opens, if `kind` is a hello kind.
    pub const fn from_hello_kind(kind: u8) -> Option<Link> {
        match kind {
            KIND_HELLO => Some(Link::Priority),
            KIND_HELLO_BULK => Some(Link::Bulk),
            _ => None,
        }
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_raft_ride_the_priority_link_and_the_weighted_classes_the_bulk_link() {
        let carried = |link| Class::ALL.into_iter().filter(|&class| Link::of(class) == link).collect::<Vec<_>>();
        let (priority, bulk) = (carried(Link::Priority), carried(Link::Bulk));
        assert_eq!(priority, [Class::Control, Class::Raft]);
        assert_eq!(bulk, Class::WEIGHTED);
        for (i, link) in Link::ALL.into_iter().enumerate() {
            assert_eq!(link.index(), i);
        }
    }

    #[test]
    fn hello_kind_names_the_link_and_nothing_else_does() {
        for link in Link::ALL {
            assert_eq!(Link::from_hello_kind(link.hello_kind()), Some(link));
        }
        for kind in (0..=u8::MAX).filter(|&k| k != KIND_HELLO && k != KIND_HELLO_BULK) {
            assert_eq!(Link::from_hello_kind(kind), None);
        }
    }
}
