//! The canary judge: anytime-valid comparisons of canary and baseline (being written).
