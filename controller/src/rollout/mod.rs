//! Progressive delivery: rollouts of a new version, judged against the stable one.
//!
//! [`judge`] decides from metrics (pure statistics), [`chart`] draws the evidence, [`traffic`]
//! holds every version's golden signals as the proxies report them.

pub mod chart;
pub mod judge;
pub mod traffic;
