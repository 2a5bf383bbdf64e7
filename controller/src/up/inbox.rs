//! The local team inbox: a webhook receiver on the host's loopback (`--team-inbox`, port
//! 7072 by default, where the shop's teams point their `slack` and `webhook` channels) that
//! prints every message it receives with an `[inbox /path]` prefix (`/slack/payments`). On one machine there is no
//! Slack; this is where "the team is notified" becomes visible.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const MAX_BODY: usize = 256 * 1024;

/// Serves until the task is dropped, printing each message through `say`.
pub async fn serve(listener: std::net::TcpListener, color: bool) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let channel = req.uri().path().to_owned();
                let body = Limited::new(req.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let status = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(message) => {
                        for line in render(&channel, &message) {
                            print(&channel, &line, color);
                        }
                        StatusCode::OK
                    }
                    Err(_) => StatusCode::BAD_REQUEST,
                };
                let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

fn print(channel: &str, line: &str, color: bool) {
    use std::io::Write;
    let prefix = if color {
        format!("\x1b[1;97;45m[inbox {channel}]\x1b[0m ")
    } else {
        format!("[inbox {channel}] ")
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix}{line}");
    let _ = out.flush();
}

/// The lines shown for one message: Slack's fallback `text`, or the generic format's title,
/// fields, log lines and links.
pub fn render(channel: &str, message: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(title) = message["title"].as_str() {
        lines.push(title.to_owned());
        if let Some(text) = message["text"].as_str().filter(|t| !t.is_empty()) {
            lines.push(format!("  {text}"));
        }
        if let Some(fields) = message["fields"].as_object() {
            let joined: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                .collect();
            lines.push(format!("  {}", joined.join(" · ")));
        }
        if let Some(logs) = message["logs"].as_array().filter(|l| !l.is_empty()) {
            lines.push("  last canary log lines:".to_owned());
            lines.extend(
                logs.iter()
                    .filter_map(|l| l.as_str())
                    .map(|l| format!("    {l}")),
            );
        }
        if let Some(links) = message["links"].as_object() {
            for (k, v) in links {
                lines.push(format!("  {k}: {}", v.as_str().unwrap_or_default()));
            }
        }
    } else if let Some(text) = message["text"].as_str() {
        // Slack's fallback text; its links are `<url|label>`.
        lines.push(text.to_owned());
    } else {
        lines.push(format!("a message for {channel} without text"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_generic_and_slack_messages() {
        let generic = serde_json::json!({
            "title": "payments v3 rolled back",
            "text": "",
            "fields": { "metric": "errors", "canary": "94.8%" },
            "logs": ["GET /v1/charges 500"],
            "links": { "rollout": "http://127.0.0.1:7070/rollouts/r-1" },
        });
        let lines = render("/webhook/payments", &generic);
        assert_eq!(lines[0], "payments v3 rolled back");
        assert!(lines[1].contains("metric: errors") && lines[1].contains("canary: 94.8%"));
        assert!(lines.iter().any(|l| l.contains("GET /v1/charges 500")));
        assert!(lines.iter().any(|l| l.contains("rollout: http://")));
        let slack = serde_json::json!({ "text": "payments v3 rolled back <http://x|rollout>" });
        assert_eq!(render("/slack/payments", &slack).len(), 1);
    }
}
