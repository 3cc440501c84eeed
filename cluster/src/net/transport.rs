//! The internode transport (TCP): to be written (issue 3).
