use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A team: who is in it, where it hears about changes, and how it wants access grants handled.
///
/// ```yaml
/// apiVersion: sluice.dev/v1alpha1
/// kind: Team
/// metadata: { name: payments }
/// spec:
///   members: [{ name: Pat, email: pat@shop.example }]
///   channels:
///     - slack: https://hooks.slack.example/services/T000/B000/XXXX
///   review: required
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TeamSpec {
    /// The team's members. Only members may approve access requests to the team's services.
    #[serde(default)]
    pub members: Vec<TeamMember>,
    /// Where the team is notified of access grants, reviews and rollouts.
    #[serde(default)]
    pub channels: Vec<Channel>,
    /// Whether access grants requested by this team's services need review. `optional` lets
    /// requests to `open` services be granted at once, trading review for speed.
    #[serde(default)]
    pub review: ReviewRequirement,
}

/// A member of a team.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TeamMember {
    /// Display name.
    pub name: String,
    /// Email address; this is what the portal matches against the signed-in user.
    pub email: String,
}

/// A notification channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Channel {
    /// Optional name shown in logs, e.g. `#payments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A Slack-compatible incoming-webhook URL; messages are Slack `blocks` JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<String>,
    /// A generic webhook URL; messages are Sluice's own JSON event format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// Whether access grants need review.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReviewRequirement {
    /// Every grant this team's services request is reviewed by the callee's team.
    #[default]
    Required,
    /// Grants to `open` services are applied at once and announced; restricted ones are still
    /// reviewed.
    Optional,
}
