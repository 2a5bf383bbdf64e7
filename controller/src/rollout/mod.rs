//! Progressive delivery: rollouts of a new version, judged against the stable one.
//!
//! [`model`] is the rollout as stored and served; [`engine`] walks the steps and decides;
//! [`judge`] compares canary and baseline (pure statistics); [`store`] persists rollouts;
//! [`chart`] draws the evidence; [`cli`] is `sluice rollout`.

pub mod chart;
pub mod cli;
pub mod engine;
pub mod judge;
pub mod model;
pub mod store;
