//! Team notifications: Slack-compatible and generic webhooks (being written).
