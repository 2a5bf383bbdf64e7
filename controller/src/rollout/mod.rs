//! Progressive delivery: rollouts of a new version, judged against the stable one.
//!
//! [`model`] is the rollout as stored and served; [`engine`] walks the steps and decides;
//! [`judge`] compares canary and baseline (pure statistics) on the totals [`traffic`] gathers
//! from the proxies; [`store`] persists rollouts; [`chart`] draws the evidence; [`cli`] is
//! `sluice rollout`.

pub mod chart;
pub mod cli;
pub mod custom;
pub mod engine;
pub mod judge;
pub mod model;
pub mod prometheus;
pub mod store;
pub mod traffic;
