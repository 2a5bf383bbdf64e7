//! The harness's one error type: what failed, with enough context to act on it.

use std::path::Path;

/// Why a benchmark run could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A process or path could not be set up (the message says which and why).
    #[error("{0}")]
    Setup(String),
    /// Every request of a phase failed, so its figures would mean nothing.
    #[error("{path}: no request succeeded during {phase} (first error: {first_error})")]
    NoSuccess {
        /// The path being measured.
        path: String,
        /// `warm-up`, `fixed rate` or `max throughput`.
        phase: &'static str,
        /// The first error seen.
        first_error: String,
    },
}

impl BenchError {
    /// An `Io` error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    /// An `Io` error about a file.
    pub fn file(verb: &str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
        BenchError::io(format!("{verb} {}", path.display()))
    }
}
