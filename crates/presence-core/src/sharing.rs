//! Sharing policy (phase 2).
