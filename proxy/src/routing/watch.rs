//! Keeps the router's table in step with the snapshot file.
//!
//! The file is polled and compared by content rather than watched with inotify: polling sees
//! atomic renames and Kubernetes ConfigMap symlink flips the same way, and costs one small
//! read per interval.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Router;
use crate::metrics::Metrics;

/// Polls `path` every `interval` forever, swapping in each new valid snapshot. An invalid or
/// unreadable file is logged once per change and the current table stays in force. `loaded`
/// is what was loaded at startup, so it is not loaded twice.
pub async fn watch(
    router: Arc<Router>,
    path: PathBuf,
    interval: Duration,
    metrics: Metrics,
    loaded: Vec<u8>,
) {
    let mut last: Option<Result<Vec<u8>, String>> = Some(Ok(loaded));
    loop {
        tokio::time::sleep(interval).await;
        let read = tokio::fs::read(&path).await.map_err(|e| e.to_string());
        if last.as_ref() == Some(&read) {
            continue;
        }
        match &read {
            Ok(bytes) => match router.load(bytes) {
                Ok(table) => {
                    metrics.snapshot_reload(true);
                    tracing::info!(path = %path.display(), version = %table.version, "routing snapshot loaded");
                }
                Err(error) => {
                    metrics.snapshot_reload(false);
                    tracing::error!(path = %path.display(), %error, "routing snapshot rejected; keeping the previous one");
                }
            },
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "routing snapshot unreadable; keeping the previous one");
            }
        }
        last = Some(read);
    }
}
