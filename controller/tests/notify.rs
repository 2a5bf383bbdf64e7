//! Notifications end to end: a real HTTP receiver on loopback gets the webhook messages the
//! notifier sends, in Slack and generic format, with retries, `Retry-After`, and no duplicates.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sluice_controller::notify::rollout::{
    RollbackReason, RolloutContext, RolloutEvent, rollout_notification,
};
use sluice_controller::notify::{
    DeliveryConfig, DeliveryOutcome, DeliveryReport, Format, MemoryDeliveryLog, Notification,
    Notifier, Severity, Target, targets_for_teams,
};
use sluice_policy::resources::{Channel, TeamSpec};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// A status to answer, and the `Retry-After` to send with it.
type Answer = (u16, Option<&'static str>);

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    at: Instant,
    idempotency_key: Option<String>,
    content_type: Option<String>,
    body: Value,
}

/// A webhook receiver: per path, a script of statuses (with an optional `Retry-After`) to
/// answer in turn, then 200; every request is recorded.
#[derive(Clone, Default)]
struct Receiver {
    addr: Option<SocketAddr>,
    scripts: Arc<Mutex<HashMap<String, VecDeque<Answer>>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let receiver = Receiver {
            addr: Some(listener.local_addr().expect("addr")),
            ..Receiver::default()
        };
        let state = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| state.clone().handle(req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        // The accept loop's clone shares the script and the record with the test's handle.
        receiver
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (idempotency_key, content_type) = (header("idempotency-key"), header("content-type"));
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.received.lock().expect("lock").push(Received {
            path: path.clone(),
            at: Instant::now(),
            idempotency_key,
            content_type,
            body,
        });
        let next = self
            .scripts
            .lock()
            .expect("lock")
            .get_mut(&path)
            .and_then(VecDeque::pop_front);
        let (status, retry_after) = next.unwrap_or((200, None));
        let mut response = Response::builder().status(status);
        if let Some(seconds) = retry_after {
            response = response.header("retry-after", seconds);
        }
        Ok(response
            .body(Full::new(Bytes::from_static(b"ok")))
            .expect("response"))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.expect("started"))
    }

    fn script(&self, path: &str, answers: &[Answer]) {
        self.scripts
            .lock()
            .expect("lock")
            .insert(path.to_owned(), answers.iter().copied().collect());
    }

    fn received(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// Fast retries so the tests take milliseconds, except where `Retry-After` says otherwise.
fn notifier() -> Notifier {
    let config = DeliveryConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_total: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(5),
        ..DeliveryConfig::default()
    };
    Notifier::start(config, Arc::new(MemoryDeliveryLog::default())).expect("notifier")
}

async fn next_reports(
    rx: &mut broadcast::Receiver<DeliveryReport>,
    n: usize,
) -> Vec<DeliveryReport> {
    let mut reports = Vec::new();
    while reports.len() < n {
        let report = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("a delivery report in time")
            .expect("report channel open");
        reports.push(report);
    }
    reports
}

fn simple(id: &str) -> Notification {
    Notification::new(id, "test.event", Severity::Warning, "Test")
        .with_text("who, what, why, link")
        .with_field("who", "pat@shop.example")
        .with_link("open", "http://localhost:7070/access/1")
}

fn target(format: Format, url: String) -> Vec<Target> {
    vec![Target { format, url }]
}

fn rollback_context() -> RolloutContext {
    RolloutContext {
        rollout_id: "payments-v2-1790000000".into(),
        service: "payments".into(),
        canary_version: "v2".into(),
        baseline_version: "v1".into(),
        baseline: "the running v1 instances".into(),
        rollout_url: "http://localhost:7070/rollouts/payments-v2-1790000000".into(),
        chart_png_url: Some(
            "http://localhost:7070/rollouts/payments-v2-1790000000/chart.png".into(),
        ),
        chart_svg_url: Some(
            "http://localhost:7070/rollouts/payments-v2-1790000000/chart.svg".into(),
        ),
    }
}

fn rollback_event() -> RolloutEvent {
    let mut logs: Vec<String> = (0..30)
        .map(|i| format!("2026-11-24T10:00:{i:02}Z INFO charge ch_{i} ok"))
        .collect();
    logs.push("ERROR upstream refused: Authorization: Bearer sk_live_abcdef123456".into());
    logs.push("ERROR db connect failed password=hunter2 host=db".into());
    logs.push("WARN retrying with key AKIAIOSFODNN7EXAMPLE".into());
    RolloutEvent::RolledBack(Box::new(RollbackReason {
        step: 2,
        weight: 25,
        metric: "errors".into(),
        canary_value: 95.2,
        baseline_value: 99.8,
        unit: "%".into(),
        margin: 0.5,
        margin_unit: "points".into(),
        evidence: "SPRT: 412 canary requests, 20 failed; p < 0.001".into(),
        also: Vec::new(),
        canary_logs: logs,
    }))
}

#[tokio::test]
async fn rollback_reaches_slack_and_generic_receivers_with_every_field() {
    let receiver = Receiver::start().await;
    let team = TeamSpec {
        members: Vec::new(),
        channels: vec![Channel {
            name: Some("#payments".into()),
            slack: Some(receiver.url("/slack")),
            webhook: Some(receiver.url("/generic")),
        }],
        review: Default::default(),
    };
    let notifier = notifier();
    let mut reports = notifier.subscribe();
    let n = rollout_notification(&rollback_context(), &rollback_event());
    assert_eq!(n.severity, Severity::Critical);
    notifier.notify_teams(n, [&team]).expect("queued");
    let done = next_reports(&mut reports, 2).await;
    assert!(
        done.iter()
            .all(|r| r.outcome == DeliveryOutcome::Delivered { attempts: 1 }),
        "{done:?}"
    );

    // Generic webhook: the documented schema, every field.
    let generic = receiver.received("/generic");
    assert_eq!(generic.len(), 1);
    let g = &generic[0];
    assert_eq!(g.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        g.idempotency_key.as_deref(),
        Some("rollout/payments-v2-1790000000/rolled-back")
    );
    let v = &g.body;
    assert_eq!(v["version"], "sluice.dev/v1");
    assert_eq!(v["id"], "rollout/payments-v2-1790000000/rolled-back");
    assert_eq!(v["kind"], "rollout.rolledBack");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["title"], "payments v2 rolled back: errors");
    let fields = &v["fields"];
    assert_eq!(fields["service"], "payments");
    assert_eq!(fields["versions"], "v1 → v2");
    assert_eq!(fields["step"], "2");
    assert_eq!(fields["weight"], "25%");
    assert_eq!(fields["metric"], "errors");
    assert_eq!(fields["canary"], "95.2%");
    assert_eq!(fields["baseline"], "99.8%");
    assert_eq!(fields["margin"], "0.5 points");
    assert_eq!(
        fields["evidence"],
        "SPRT: 412 canary requests, 20 failed; p < 0.001"
    );
    let logs: Vec<&str> = v["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(logs.len(), 20, "the last 20 lines");
    assert_eq!(logs[19], "WARN retrying with key [REDACTED-AWS-KEY]");
    assert_eq!(
        logs[18],
        "ERROR db connect failed password=[REDACTED] host=db"
    );
    assert_eq!(
        logs[17],
        "ERROR upstream refused: Authorization: [REDACTED]"
    );
    let text = v.to_string();
    for secret in ["sk_live", "hunter2", "AKIAIOSFODNN7EXAMPLE"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    assert_eq!(
        v["links"]["rollout"],
        "http://localhost:7070/rollouts/payments-v2-1790000000"
    );
    assert_eq!(
        v["links"]["chart"],
        "http://localhost:7070/rollouts/payments-v2-1790000000/chart.png"
    );
    assert_eq!(
        v["image"],
        "http://localhost:7070/rollouts/payments-v2-1790000000/chart.png"
    );

    // Slack: Block Kit with the same facts.
    let slack = receiver.received("/slack");
    assert_eq!(slack.len(), 1);
    let s = &slack[0].body;
    assert!(
        s["text"]
            .as_str()
            .expect("fallback")
            .contains("payments v2 rolled back")
    );
    let blocks = s["blocks"].as_array().expect("blocks");
    let of_type = |t: &str| blocks.iter().filter(|b| b["type"] == t).collect::<Vec<_>>();
    assert!(
        of_type("header")[0]["text"]["text"]
            .as_str()
            .expect("header")
            .contains("payments v2 rolled back")
    );
    let field_texts: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b["fields"].as_array())
        .flatten()
        .filter_map(|f| f["text"].as_str())
        .collect();
    for expected in [
        "*service*\npayments",
        "*versions*\nv1 → v2",
        "*step*\n2",
        "*weight*\n25%",
        "*metric*\nerrors",
        "*canary*\n95.2%",
        "*baseline*\n99.8%",
        "*margin*\n0.5 points",
        "*evidence*\nSPRT: 412 canary requests, 20 failed; p &lt; 0.001",
    ] {
        assert!(
            field_texts.contains(&expected),
            "{expected:?} not in {field_texts:?}"
        );
    }
    let code = blocks
        .iter()
        .filter_map(|b| b["text"]["text"].as_str())
        .find(|t| t.starts_with("```"))
        .expect("a code block of logs");
    assert!(code.contains("password=[REDACTED]") && !code.contains("hunter2"));
    assert_eq!(code.lines().count(), 22, "20 lines between the fences");
    assert_eq!(
        of_type("image")[0]["image_url"],
        "http://localhost:7070/rollouts/payments-v2-1790000000/chart.png"
    );
    let buttons: Vec<(&str, &str)> = of_type("actions")[0]["elements"]
        .as_array()
        .expect("buttons")
        .iter()
        .filter_map(|b| Some((b["text"]["text"].as_str()?, b["url"].as_str()?)))
        .collect();
    assert!(buttons.contains(&(
        "rollout",
        "http://localhost:7070/rollouts/payments-v2-1790000000"
    )));
    assert!(buttons.contains(&(
        "chart",
        "http://localhost:7070/rollouts/payments-v2-1790000000/chart.png"
    )));
    assert!(!s.to_string().contains("hunter2"));
}

#[tokio::test]
async fn server_errors_are_retried_with_one_idempotency_key_and_one_success() {
    let receiver = Receiver::start().await;
    receiver.script("/flaky", &[(500, None), (500, None)]);
    let notifier = notifier();
    let mut reports = notifier.subscribe();
    notifier
        .submit(
            simple("flaky-1"),
            target(Format::Generic, receiver.url("/flaky")),
        )
        .expect("queued");
    let done = next_reports(&mut reports, 1).await;
    assert_eq!(done[0].outcome, DeliveryOutcome::Delivered { attempts: 3 });
    let got = receiver.received("/flaky");
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.idempotency_key.as_deref() == Some("flaky-1"))
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "every attempt sends the same body"
    );
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let receiver = Receiver::start().await;
    receiver.script("/busy", &[(429, Some("1"))]);
    let notifier = notifier();
    let mut reports = notifier.subscribe();
    notifier
        .submit(
            simple("busy-1"),
            target(Format::Slack, receiver.url("/busy")),
        )
        .expect("queued");
    let done = next_reports(&mut reports, 1).await;
    assert_eq!(done[0].outcome, DeliveryOutcome::Delivered { attempts: 2 });
    let got = receiver.received("/busy");
    assert_eq!(got.len(), 2);
    let waited = got[1].at - got[0].at;
    // The configured backoff is 20 ms; only Retry-After explains a wait of a second.
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn the_same_notification_is_delivered_once() {
    let receiver = Receiver::start().await;
    let notifier = notifier();
    let mut reports = notifier.subscribe();
    let url = receiver.url("/once");
    // Twice at once (the second while the first is in flight), then again after delivery.
    notifier
        .submit(simple("once-1"), target(Format::Generic, url.clone()))
        .expect("queued");
    notifier
        .submit(simple("once-1"), target(Format::Generic, url.clone()))
        .expect("queued");
    let first = next_reports(&mut reports, 2).await;
    notifier
        .submit(simple("once-1"), target(Format::Generic, url.clone()))
        .expect("queued");
    let third = next_reports(&mut reports, 1).await;
    let outcomes: Vec<DeliveryOutcome> =
        first.into_iter().chain(third).map(|r| r.outcome).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == DeliveryOutcome::Duplicate)
            .count(),
        2,
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&DeliveryOutcome::Delivered { attempts: 1 }));
    assert_eq!(receiver.received("/once").len(), 1);
    // A different id to the same channel is a different message.
    notifier
        .submit(simple("once-2"), target(Format::Generic, url))
        .expect("queued");
    next_reports(&mut reports, 1).await;
    assert_eq!(receiver.received("/once").len(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let receiver = Receiver::start().await;
    receiver.script("/bad", &[(400, None)]);
    let notifier = notifier();
    let mut reports = notifier.subscribe();
    notifier
        .submit(simple("bad-1"), target(Format::Slack, receiver.url("/bad")))
        .expect("queued");
    let done = next_reports(&mut reports, 1).await;
    match &done[0].outcome {
        DeliveryOutcome::Failed { attempts, error } => {
            assert_eq!(*attempts, 1);
            assert!(error.contains("400"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(receiver.received("/bad").len(), 1);
}

#[tokio::test]
async fn unreachable_receivers_are_retried_then_given_up() {
    // A port that was just free: connections are refused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let config = DeliveryConfig {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..DeliveryConfig::default()
    };
    let notifier = Notifier::start(config, Arc::new(MemoryDeliveryLog::default())).expect("start");
    let mut reports = notifier.subscribe();
    let targets = targets_for_teams([&TeamSpec {
        members: Vec::new(),
        channels: vec![Channel {
            name: None,
            slack: None,
            webhook: Some(format!("http://{addr}/gone")),
        }],
        review: Default::default(),
    }]);
    notifier.submit(simple("gone-1"), targets).expect("queued");
    let done = next_reports(&mut reports, 1).await;
    assert!(
        matches!(done[0].outcome, DeliveryOutcome::Failed { attempts: 3, .. }),
        "{done:?}"
    );
}
