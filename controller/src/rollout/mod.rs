//! Progressive delivery: rollouts of a new version, judged against the stable one.
//!
//! [`judge`] decides from metrics (pure statistics), [`chart`] draws the evidence.

pub mod chart;
pub mod cli;
pub mod judge;
pub mod model;
