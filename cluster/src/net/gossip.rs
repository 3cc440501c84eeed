//! The gossip socket (UDP): to be written (issue 3).
