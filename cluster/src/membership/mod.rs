//! SWIM membership through foca: to be written (issue 3).
