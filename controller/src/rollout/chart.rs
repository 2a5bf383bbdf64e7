//! Charts of a rollout: canary vs baseline over time, as SVG and PNG (being written).
