//! Audience index (phase 3).
