//! Team notifications: what the mesh tells people, and how it reaches their channels.
//!
//! This module owns one general message model, [`Notification`] (a title, a severity, labelled
//! fields, an optional log snippet, links and an optional image), its two wire formats (Slack
//! incoming-webhook Block Kit JSON and Sluice's own generic webhook JSON, in [`render`]), secret
//! redaction of log lines ([`redact`]), and delivery ([`Notifier`]): retries with backoff,
//! at-most-once success per (notification id, channel URL), never blocking the caller. Rollouts
//! build their messages with [`rollout`]; the portal's access requests build a
//! [`Notification`] the same way ("who, what, why, link") and use the same notifier.
//! The user guide is `docs/notifications.md`.

pub mod deliver;
pub mod redact;
pub mod render;
pub mod rollout;

pub use deliver::{
    DeliveryConfig, DeliveryLog, DeliveryOutcome, DeliveryReport, Format, MemoryDeliveryLog,
    Notifier, NotifyError, SubmitError, Target, targets_for_teams,
};
pub use redact::{redact, redact_tail};
pub use render::{GENERIC_SCHEMA_VERSION, generic_json, slack_json};
pub use sluice_policy::resources::Severity;

/// At most this many log lines travel in one message: enough to show a failure, short enough
/// to read in a chat window.
pub const MAX_LOG_LINES: usize = 20;

/// One message to the teams concerned, independent of the channel it goes to.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// Stable identity of the event, e.g. `rollout/payments-v2-1790000000/rolled-back`. The
    /// same event always has the same id: it is the dedupe key and the `Idempotency-Key`.
    pub id: String,
    /// What happened, dotted and stable for machines, e.g. `rollout.rolledBack`,
    /// `access.granted`.
    pub kind: String,
    /// How loudly; rollouts filter on it with `CanaryPolicy.spec.notify.severity`.
    pub severity: Severity,
    /// One line, e.g. `payments v2 rolled back`.
    pub title: String,
    /// A sentence or two of explanation (plain text; each format escapes it).
    pub text: String,
    /// Labelled facts in display order, e.g. `("metric", "errors")`. Labels should be unique.
    pub fields: Vec<(String, String)>,
    /// Log lines shown as a code block. Redacted again when rendered, whoever built them.
    pub log_snippet: Option<Vec<String>>,
    /// Labelled links in display order, e.g. `("rollout", "http://…/rollouts/…")`.
    pub links: Vec<(String, String)>,
    /// A picture to show inline (Slack fetches it, so it must be reachable by the receiver).
    pub image_url: Option<String>,
}

impl Notification {
    /// A notification with only the required parts; fill the rest with the `with_*` methods.
    pub fn new(
        id: impl Into<String>,
        kind: impl Into<String>,
        severity: Severity,
        title: impl Into<String>,
    ) -> Notification {
        Notification {
            id: id.into(),
            kind: kind.into(),
            severity,
            title: title.into(),
            text: String::new(),
            fields: Vec::new(),
            log_snippet: None,
            links: Vec::new(),
            image_url: None,
        }
    }

    /// Sets the explanatory text.
    pub fn with_text(mut self, text: impl Into<String>) -> Notification {
        self.text = text.into();
        self
    }

    /// Adds a labelled field.
    pub fn with_field(
        mut self,
        label: impl Into<String>,
        value: impl Into<String>,
    ) -> Notification {
        self.fields.push((label.into(), value.into()));
        self
    }

    /// Sets the log snippet: the last [`MAX_LOG_LINES`] lines, redacted.
    pub fn with_logs<S: AsRef<str>>(mut self, lines: &[S]) -> Notification {
        self.log_snippet = Some(redact_tail(lines, MAX_LOG_LINES));
        self
    }

    /// Adds a labelled link.
    pub fn with_link(mut self, label: impl Into<String>, url: impl Into<String>) -> Notification {
        self.links.push((label.into(), url.into()));
        self
    }

    /// Sets the inline image.
    pub fn with_image(mut self, url: impl Into<String>) -> Notification {
        self.image_url = Some(url.into());
        self
    }

    /// The log lines as they are sent: at most [`MAX_LOG_LINES`], redacted.
    pub fn sent_logs(&self) -> Vec<String> {
        self.log_snippet
            .as_deref()
            .map(|lines| redact_tail(lines, MAX_LOG_LINES))
            .unwrap_or_default()
    }
}

/// The lowercase name of a severity as it appears in messages (`info`, `warning`, `critical`).
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}
