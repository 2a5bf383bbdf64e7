//! The rollout routes of the admin endpoint: the JSON API the CLI and the local runner use,
//! the rollout page a notification links to, and its chart.
//!
//! | route | answer |
//! |---|---|
//! | `GET /rollouts[?service=NAME]` | [`RolloutList`] JSON, newest first |
//! | `POST /rollouts` | start one ([`StartRequest`] JSON) → `201` + the rollout |
//! | `GET /rollouts/{id-or-service}` | [`RolloutDetail`] JSON, or with `Accept: text/html` the page |
//! | `POST /rollouts/{id-or-service}/{pause,resume,promote,abort}` | the rollout after the action |
//! | `GET /rollouts/{id}/chart.png`, `chart.svg` | canary vs baseline over the rollout |
//!
//! Errors are `{"error": "…"}` with 400 (bad request), 404, 409 (the phase does not allow
//! it) or 503 (the store failed). Bodies are limited to [`MAX_BODY`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::rollout::engine::{self, Engine, RolloutError};
use crate::rollout::model::{Action, ApiErrorBody, RolloutDetail, RolloutList, StartRequest};

/// The largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

type Answer = Response<Full<Bytes>>;

/// Handles a `/rollouts…` request.
pub async fn handle(engine: &Engine, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let html = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let method = req.method().clone();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, []) => {
            let service = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("service="))
                .map(str::to_owned);
            engine
                .list(service.as_deref().map(|s| ("default", s)))
                .map(|rollouts| json(StatusCode::OK, &RolloutList { rollouts }))
        }
        (&Method::POST, []) => match body_json::<StartRequest>(req).await {
            Ok(start) => engine
                .start_rollout(start)
                .await
                .map(|r| json(StatusCode::CREATED, &r)),
            Err(answer) => return answer,
        },
        (&Method::GET, [id]) => engine.find("default", id).and_then(|r| {
            let detail = engine.detail(r)?;
            Ok(if html {
                page(&detail)
            } else {
                json(StatusCode::OK, &detail)
            })
        }),
        (&Method::GET, [id, "chart.svg"]) => engine
            .find("default", id)
            .and_then(|r| engine.detail(r))
            .map(|d| {
                let svg = crate::rollout::chart::render_svg(&engine::chart(&d));
                bytes(StatusCode::OK, "image/svg+xml", svg.into_bytes())
            }),
        (&Method::GET, [id, "chart.png"]) => engine
            .find("default", id)
            .and_then(|r| engine.detail(r))
            .map(
                |d| match crate::rollout::chart::render_png(&engine::chart(&d)) {
                    Ok(png) => bytes(StatusCode::OK, "image/png", png),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
            ),
        (&Method::POST, [id, action]) => match Action::parse(action) {
            Some(action) => engine
                .act("default", id, action)
                .await
                .map(|r| json(StatusCode::OK, &r)),
            None => Ok(error(
                StatusCode::NOT_FOUND,
                &format!("no action `{action}`: use pause, resume, promote or abort"),
            )),
        },
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            "not found: see GET /rollouts, POST /rollouts, GET|POST /rollouts/{id}[/action]",
        )),
    };
    result.unwrap_or_else(|e| {
        let status = match &e {
            RolloutError::NotFound(_) => StatusCode::NOT_FOUND,
            RolloutError::Invalid(_) => StatusCode::BAD_REQUEST,
            RolloutError::Conflict(_) => StatusCode::CONFLICT,
            RolloutError::Store(_) => {
                tracing::error!(error = %e, "rollout API: store failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        error(status, &e.to_string())
    })
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Answer> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY} bytes"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body is not a valid request: {e}; expected {{\"service\": \"payments\", \"version\": \"v2\"}}"
            ),
        )
    })
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Answer {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => bytes(status, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Answer {
    let body = serde_json::to_vec(&ApiErrorBody {
        error: message.to_owned(),
    })
    .unwrap_or_default();
    bytes(status, "application/json", body)
}

fn bytes(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The rollout page: what the decision was and why, the steps, the evidence, the chart and
/// the history. Server-rendered, no JavaScript; it refreshes itself while the rollout runs.
fn page(d: &RolloutDetail) -> Answer {
    let r = &d.rollout;
    let e = |s: &str| escape(s);
    let mut steps = String::new();
    for (i, s) in r.steps.iter().enumerate() {
        let state = if i < r.step || r.phase == crate::rollout::model::Phase::Promoted {
            "done"
        } else if i == r.step && r.phase.is_active() {
            "current"
        } else {
            "todo"
        };
        steps.push_str(&format!(
            "<li class=\"{state}\">{}% for {}{}</li>",
            s.weight,
            humantime::format_duration(std::time::Duration::from_millis(s.duration_ms)),
            if s.confirm { ", then confirm" } else { "" }
        ));
    }
    let mut evidence = String::new();
    for v in &r.evidence {
        let failed = v["failed"].as_bool().unwrap_or(false);
        evidence.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td></tr>",
            if failed { "fail" } else { "ok" },
            e(v["metric"].as_str().unwrap_or("")),
            e(v["explanation"].as_str().unwrap_or(""))
        ));
    }
    let mut events = String::new();
    for ev in &d.events {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(ev.at_unix_ms).unwrap_or(0)),
        );
        events.push_str(&format!(
            "<li><time>{when}</time> <b>{}</b> {}</li>",
            e(&ev.kind),
            e(&ev.message)
        ));
    }
    let refresh = if r.phase.is_active() {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    } else {
        ""
    };
    let id = e(&r.id);
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
<title>{svc} {base} → {canary}: {phase}</title><style>\
body{{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\
.phase{{display:inline-block;padding:.1rem .6rem;border-radius:1rem;background:#eee}}\
.rolled-back .phase,.failed .phase,.aborted .phase{{background:#fde2e2;color:#9b1c1c}}\
.promoted .phase{{background:#dcf5e3;color:#1d6b3a}}\
li.done{{color:#1d6b3a}} li.current{{font-weight:700}} li.todo{{color:#888}}\
tr.fail td{{color:#9b1c1c;font-weight:600}} td{{padding:.2rem .6rem;vertical-align:top}}\
img{{max-width:100%;border:1px solid #eee}} time{{color:#777;font-size:.85rem}}\
</style></head><body class=\"{phase}\">\
<h1>{svc}: {base} → {canary} <span class=\"phase\">{phase}</span></h1>\
<p>{decision}</p>\
<p>Canary weight now {weight}% · {creq} canary and {breq} baseline requests judged · rollout <code>{id}</code></p>\
<p class=\"baseline\">Baseline: {baseline_used}</p>\
<h2>Steps</h2><ol>{steps}</ol>\
<h2>Evidence</h2><table>{evidence}</table>\
<h2>Canary vs baseline</h2><img src=\"/rollouts/{id}/chart.svg\" alt=\"success rate and p99 latency of canary and baseline\">\
<p><a href=\"/rollouts/{id}/chart.png\">PNG</a> · <a href=\"/rollouts/{id}\" type=\"application/json\">JSON</a></p>\
<h2>History</h2><ul>{events}</ul></body></html>",
        svc = e(&r.service),
        base = e(&r.baseline_version),
        canary = e(&r.canary_version),
        phase = r.phase,
        decision = e(&r.decision),
        baseline_used = e(&crate::rollout::cli::baseline_sentence(r)),
        weight = r.weight,
        creq = r.canary_requests,
        breq = r.baseline_requests,
    );
    bytes(
        StatusCode::OK,
        "text/html; charset=utf-8",
        body.into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
