//! The consistent tier (SPEC sections 7 and 8): Raft-replicated names with fencing tokens, and the
//! control/execution-plane vocabulary. Under construction (issue 6).
