//! The two wire formats of a [`Notification`]: Slack incoming-webhook JSON and Sluice's
//! generic webhook JSON.
//!
//! Slack messages use Block Kit (a header, the text, the fields, the logs as a code block, the
//! chart as an image block, the links as buttons, and a context line), with the plain `text`
//! as the fallback notifications and old clients show. Slack treats `&`, `<` and `>` as control
//! characters in text objects, so every piece of our text is escaped as Slack documents; log
//! lines additionally lose any ```` ``` ```` that would close their code block. Block Kit's size
//! limits (header 150 characters, section text 3000, ten fields per section, …) are respected by
//! truncating, since Slack rejects the whole message otherwise.
//!
//! The generic format is documented in `docs/notifications.md` and versioned by its `version`
//! field: fields may be added within `sluice.dev/v1`, never renamed or removed.

use serde_json::{Map, Value, json};

use super::{Notification, Severity, severity_name};

/// The `version` of the generic webhook JSON.
pub const GENERIC_SCHEMA_VERSION: &str = "sluice.dev/v1";

// Block Kit limits (api.slack.com/reference/block-kit): exceeding one rejects the message.
const HEADER_MAX: usize = 150;
const SECTION_TEXT_MAX: usize = 3000;
const FIELD_TEXT_MAX: usize = 2000;
const FIELDS_PER_SECTION: usize = 10;
const BUTTON_TEXT_MAX: usize = 75;
const BUTTONS_MAX: usize = 25;
const URL_MAX: usize = 3000;
const FALLBACK_MAX: usize = 3000;

/// Renders the Slack incoming-webhook payload.
pub fn slack_json(n: &Notification) -> Value {
    let emoji = match n.severity {
        Severity::Info => ":information_source:",
        Severity::Warning => ":warning:",
        Severity::Critical => ":rotating_light:",
    };
    let mut blocks = vec![json!({
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": truncate(&format!("{emoji} {}", n.title), HEADER_MAX),
            "emoji": true
        }
    })];
    if !n.text.is_empty() {
        blocks.push(section(&slack_escape(&n.text)));
    }
    for chunk in n.fields.chunks(FIELDS_PER_SECTION) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(label, value)| {
                let text = format!("*{}*\n{}", slack_escape(label), slack_escape(value));
                json!({ "type": "mrkdwn", "text": truncate(&text, FIELD_TEXT_MAX) })
            })
            .collect();
        blocks.push(json!({ "type": "section", "fields": fields }));
    }
    let logs = n.sent_logs();
    if !logs.is_empty() {
        blocks.push(section(&code_block(&logs)));
    }
    if let Some(url) = n.image_url.as_deref().filter(|u| is_web_url(u)) {
        blocks.push(json!({
            "type": "image",
            "image_url": url,
            "alt_text": truncate(&format!("Chart: {}", n.title), 2000)
        }));
    }
    let buttons: Vec<Value> = n
        .links
        .iter()
        .filter(|(_, url)| is_web_url(url))
        .take(BUTTONS_MAX)
        .map(|(label, url)| {
            json!({
                "type": "button",
                "text": { "type": "plain_text", "text": truncate(label, BUTTON_TEXT_MAX) },
                "url": url
            })
        })
        .collect();
    if !buttons.is_empty() {
        blocks.push(json!({ "type": "actions", "elements": buttons }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": slack_escape(&format!("Sluice · {} · {} · {}", severity_name(n.severity), n.kind, n.id))
        }]
    }));
    json!({ "text": fallback_text(n), "blocks": blocks })
}

/// Renders the generic webhook payload (schema in `docs/notifications.md`).
pub fn generic_json(n: &Notification) -> Value {
    let fields: Map<String, Value> = n
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let links: Map<String, Value> = n
        .links
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "version": GENERIC_SCHEMA_VERSION,
        "id": n.id,
        "kind": n.kind,
        "severity": severity_name(n.severity),
        "title": n.title,
        "text": n.text,
        "fields": fields,
        "logs": n.sent_logs(),
        "links": links,
        "image": n.image_url,
    })
}

/// The notification-preview text: title, text, and the links as Slack links.
fn fallback_text(n: &Notification) -> String {
    let mut text = slack_escape(&n.title);
    if !n.text.is_empty() {
        text.push_str(": ");
        text.push_str(&slack_escape(&n.text));
    }
    for (label, url) in n.links.iter().filter(|(_, url)| is_web_url(url)) {
        text.push_str(&format!(
            " <{}|{}>",
            url,
            slack_escape(label).replace('|', "¦")
        ));
    }
    truncate(&text, FALLBACK_MAX)
}

fn section(mrkdwn: &str) -> Value {
    json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": truncate(mrkdwn, SECTION_TEXT_MAX) }
    })
}

/// A code block of log lines that fits one section: the *last* lines are kept when too long.
fn code_block(lines: &[String]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        // A zero-width space between backticks keeps ``` inside a line from closing the block.
        .map(|l| slack_escape(&l.replace("```", "`\u{200B}`\u{200B}`")))
        .collect();
    let budget = SECTION_TEXT_MAX - 8;
    let mut kept: Vec<&str> = Vec::new();
    let mut used = 0;
    for line in escaped.iter().rev() {
        let cost = line.chars().count() + 1;
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push(line);
    }
    kept.reverse();
    format!("```\n{}\n```", kept.join("\n"))
}

/// Escapes Slack's three control characters, as its formatting reference asks.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Only http(s) URLs within Slack's length limit become buttons or images; anything else would
/// make Slack reject the whole message.
fn is_web_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= URL_MAX
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c == '|' || c == '>' || c == '<')
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Notification {
        Notification::new("n1", "test.event", Severity::Warning, "Hello <world> & co")
            .with_text("a *b* <c>")
            .with_field("who", "pat & sam")
            .with_logs(&["ok", "evil ``` close", "password=x"])
            .with_link("open", "http://localhost:7070/x?a=1&b=2")
            .with_link("bad", "javascript:alert(1)")
            .with_image("http://localhost:7070/chart.png")
    }

    #[test]
    fn slack_blocks_are_escaped_and_complete() {
        let v = slack_json(&sample());
        let blocks = v["blocks"].as_array().expect("blocks");
        let types: Vec<&str> = blocks.iter().filter_map(|b| b["type"].as_str()).collect();
        assert_eq!(
            types,
            [
                "header", "section", "section", "section", "image", "actions", "context"
            ]
        );
        assert_eq!(blocks[1]["text"]["text"], "a *b* &lt;c&gt;");
        assert_eq!(blocks[2]["fields"][0]["text"], "*who*\npat &amp; sam");
        let code = blocks[3]["text"]["text"].as_str().expect("code");
        assert!(code.starts_with("```\n") && code.ends_with("\n```"));
        assert_eq!(code.matches("```").count(), 2, "{code}");
        assert!(code.contains("password=[REDACTED]"));
        assert_eq!(blocks[5]["elements"].as_array().map(Vec::len), Some(1));
        assert!(
            v["text"]
                .as_str()
                .expect("text")
                .starts_with("Hello &lt;world&gt; &amp; co")
        );
    }

    #[test]
    fn slack_limits_hold_for_huge_input() {
        let mut n = Notification::new("n", "k", Severity::Info, "t".repeat(1000));
        for i in 0..35 {
            n = n.with_field(format!("f{i}"), "v".repeat(5000));
        }
        n = n.with_logs(&vec!["x".repeat(400); 100]);
        let v = slack_json(&n);
        let blocks = v["blocks"].as_array().expect("blocks");
        assert!(
            blocks[0]["text"]["text"]
                .as_str()
                .expect("h")
                .chars()
                .count()
                <= HEADER_MAX
        );
        let sections_with_fields = blocks.iter().filter(|b| b.get("fields").is_some()).count();
        assert_eq!(sections_with_fields, 4);
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= SECTION_TEXT_MAX);
            }
        }
    }

    #[test]
    fn generic_schema() {
        let v = generic_json(&sample());
        assert_eq!(v["version"], GENERIC_SCHEMA_VERSION);
        assert_eq!(v["id"], "n1");
        assert_eq!(v["kind"], "test.event");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["title"], "Hello <world> & co");
        assert_eq!(v["fields"]["who"], "pat & sam");
        assert_eq!(v["logs"][2], "password=[REDACTED]");
        assert_eq!(v["links"]["open"], "http://localhost:7070/x?a=1&b=2");
        assert_eq!(v["image"], "http://localhost:7070/chart.png");
        let bare = generic_json(&Notification::new("n2", "k", Severity::Info, "t"));
        assert_eq!(bare["logs"], json!([]));
        assert_eq!(bare["image"], Value::Null);
    }
}
