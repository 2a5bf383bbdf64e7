use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use sluice_policy::resources::Signal;

use super::*;
use crate::rollout::judge::{Comparison, Evidence};
use crate::rollout::model::{Event, StepPlan};

/// 2023-11-14T22:13:20Z, in Unix ms.
const NOW_MS: i64 = 1_700_000_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW_MS as u64)
}

/// The real judge type, serialized as the engine serializes it.
fn evidence(metric: &str, signal: Signal, values: (f64, f64), margin: f64, e: f64) -> Value {
    serde_json::to_value(Evidence {
        metric: metric.to_owned(),
        signal,
        comparison: Comparison::Relative,
        failed: e >= 300.0,
        canary_value: Some(values.0),
        baseline_value: Some(values.1),
        margin: Some(margin),
        floor: None,
        threshold: None,
        e_value: Some(e),
        log_e_value: Some(e.ln()),
        bound: Some(300.0),
        canary_requests: 121,
        baseline_requests: 2_290,
        explanation: format!(
            "{metric}: canary success rate {}% vs baseline {}% (margin {margin} points); \
             evidence {e} ≥ 300 (α = 0.01 over 3 checks) after 121 canary requests",
            values.0, values.1
        ),
    })
    .expect("evidence serializes")
}

fn steps() -> Vec<StepPlan> {
    vec![
        StepPlan {
            weight: 5,
            duration_ms: 60_000,
            confirm: false,
        },
        StepPlan {
            weight: 25,
            duration_ms: 60_000,
            confirm: false,
        },
        StepPlan {
            weight: 50,
            duration_ms: 300_000,
            confirm: true,
        },
    ]
}

fn progressing() -> Rollout {
    Rollout {
        id: "r-20231114-a1b2".to_owned(),
        namespace: "default".to_owned(),
        service: "payments".to_owned(),
        baseline_version: "v1".to_owned(),
        canary_version: "v2".to_owned(),
        phase: Phase::Progressing,
        step: 1,
        weight: 25,
        steps: steps(),
        interval_ms: 5_000,
        progress_deadline_ms: 600_000,
        policy: "payments".to_owned(),
        analysis: Default::default(),
        on_failure: Default::default(),
        requested_by: "alice".to_owned(),
        created_unix_ms: NOW_MS - 180_000,
        updated_unix_ms: NOW_MS - 2_000,
        step_started_unix_ms: NOW_MS - 22_000,
        first_traffic_unix_ms: Some(NOW_MS - 170_000),
        finished_unix_ms: None,
        decision: "step 1 passed: every check passed at 5%".to_owned(),
        evidence: vec![
            evidence("errors", Signal::SuccessRate, (99.8, 99.9), 0.5, 0.4),
            evidence("p99", Signal::Latency, (212.0, 180.0), 20.0, 0.2),
        ],
        failed_check: None,
        failed_checks: Vec::new(),
        baseline: Default::default(),
        canary_requests: 1_204,
        baseline_requests: 22_871,
    }
}

fn rolled_back() -> Rollout {
    let failed = evidence("errors", Signal::SuccessRate, (94.2, 99.89), 0.5, 626.0);
    Rollout {
        phase: Phase::RolledBack,
        step: 0,
        weight: 0,
        created_unix_ms: NOW_MS - 600_000,
        step_started_unix_ms: NOW_MS - 600_000,
        finished_unix_ms: Some(NOW_MS - 570_000),
        decision: "rolled back: errors: canary success rate 94.2% vs baseline 99.89%".to_owned(),
        evidence: vec![failed.clone()],
        failed_check: Some(failed),
        failed_checks: Vec::new(),
        baseline: Default::default(),
        canary_requests: 121,
        baseline_requests: 2_290,
        ..progressing()
    }
}

fn waiting() -> Rollout {
    Rollout {
        phase: Phase::WaitingConfirmation,
        step: 2,
        weight: 50,
        step_started_unix_ms: NOW_MS - 400_000,
        decision: "step 3 passed at 50%: waiting for confirmation".to_owned(),
        ..progressing()
    }
}

#[test]
fn progressing_rollout_with_passing_evidence() {
    assert_eq!(
        render_status(&progressing(), None, now(), false),
        "payments  v1 → v2  progressing  step 2/3  25%\n\
         [■■■■■■■■□□□□□□□□□□] 25% of traffic · step 2 of 3 (1m, 38s left)\n\
         steps  5% 1m → [25% 1m] → 50% 5m confirm\n\
         ✓ errors  canary 99.8%  baseline 99.9%  margin 0.5 pts  evidence 0.4 / 300\n\
         ✓ p99  canary 212 ms  baseline 180 ms  margin 20%  evidence 0.2 / 300\n\
         baseline: the running v1 instances\n\
         canary 1,204 requests, baseline 22,871 · r-20231114-a1b2 · started 3m ago by alice\n\
         step 1 passed: every check passed at 5%\n"
    );
}

#[test]
fn the_baseline_used_and_the_latency_floor_are_shown() {
    let mut p99 = evidence("p99", Signal::Latency, (6.1, 2.0), 20.0, 0.3);
    p99["floor"] = serde_json::json!(5.0);
    let r = Rollout {
        evidence: vec![p99],
        baseline: crate::rollout::model::Baseline {
            kind: crate::rollout::model::BaselineKind::Copy,
            copy_requested: true,
            instances: vec!["payments-v1-baseline".into()],
            description: "a fresh copy of v1 (payments-v1-baseline), with the canary's weight"
                .into(),
        },
        ..progressing()
    };
    let view = render_status(&r, None, now(), false);
    assert!(
        view.contains(
            "✓ p99  canary 6.10 ms  baseline 2.00 ms  margin 20% (at least 5 ms)  evidence 0.3 / 300\n\
             baseline: a fresh copy of v1 (payments-v1-baseline), with the canary's weight\n"
        ),
        "{view}"
    );
}

#[test]
fn rolled_back_rollout_shows_the_failed_check_in_full() {
    let view = render_status(&rolled_back(), None, now(), false);
    let lines: Vec<&str> = view.lines().collect();
    assert_eq!(lines[0], "payments  v1 → v2  rolled-back  step 1/3  0%");
    assert_eq!(
        lines[1],
        "[■■■□□□□□□□□□□□□□□□] 0% of traffic · stopped at step 1 of 3 after 30s"
    );
    // Not in brackets: no step is current once it is over.
    assert_eq!(lines[2], "steps  5% 1m → 25% 1m → 50% 5m confirm");
    assert_eq!(
        lines[3],
        "✗ errors  canary 94.2%  baseline 99.89%  margin 0.5 pts  evidence 626 / 300"
    );
    assert_eq!(
        lines[4],
        "    errors: canary success rate 94.2% vs baseline 99.89% (margin 0.5 points); \
         evidence 626 ≥ 300 (α = 0.01 over 3 checks) after 121 canary requests"
    );
    // The failed check is also `failed_check`: shown once.
    assert_eq!(view.matches("✗").count(), 1);
    assert_eq!(lines[5], "baseline: the running v1 instances");
    assert_eq!(
        lines[7],
        "rolled back: errors: canary success rate 94.2% vs baseline 99.89%"
    );
    assert_eq!(
        summary_line(&rolled_back()),
        "r-20231114-a1b2  payments  v1 → v2  rolled-back  step 1/3  0%  · rolled back: \
         errors: canary success rate 94.2% vs baseline 99.89%"
    );
}

#[test]
fn failed_check_missing_from_the_evidence_is_still_shown() {
    let r = Rollout {
        evidence: Vec::new(),
        ..rolled_back()
    };
    let view = render_status(&r, None, now(), false);
    assert!(view.contains("\n✗ errors  canary 94.2%"), "{view}");
    assert!(view.contains("\n    errors: canary success rate"), "{view}");
}

#[test]
fn waiting_confirmation_says_what_to_do_next() {
    let view = render_status(&waiting(), Some("http://127.0.0.1:9/r/x"), now(), false);
    let lines: Vec<&str> = view.lines().collect();
    assert_eq!(
        lines[0],
        "payments  v1 → v2  waiting-confirmation  step 3/3  50%"
    );
    assert_eq!(
        lines[1],
        "[■■■■■■■■■■■■■■■■■■] 50% of traffic · step 3 of 3 (passed; waiting for confirmation)"
    );
    assert_eq!(lines[2], "steps  5% 1m → 25% 1m → [50% 5m confirm]");
    assert_eq!(
        lines[lines.len() - 2],
        "next: `sluice rollout resume payments` continues · `promote` skips the rest · \
         `abort` rolls back"
    );
    assert_eq!(lines[lines.len() - 1], "http://127.0.0.1:9/r/x");
}

#[test]
fn colour_only_when_asked() {
    assert!(!render_status(&progressing(), None, now(), false).contains('\x1b'));
    let coloured = render_status(&progressing(), None, now(), true);
    assert!(
        coloured.contains("\x1b[1;32mprogressing\x1b[0m"),
        "{coloured}"
    );
    assert!(coloured.contains("\x1b[1;32m✓\x1b[0m errors"), "{coloured}");
}

#[test]
fn evidence_in_either_spelling_and_unreadable_entries() {
    let snake = serde_json::json!({
        "metric": "p99", "signal": "latency", "comparison": "threshold", "failed": false,
        "canary_value": 212.0, "baseline_value": 180.0, "threshold": {"max": 500.0},
        "e_value": 0.1, "bound": 300.0, "canary_requests": 500, "baseline_requests": 9000,
        "explanation": "p99: fine"
    });
    assert_eq!(
        EvidenceView::from_json(&snake).render(Paint { enabled: false }),
        "✓ p99  canary 212 ms  baseline 180 ms  max 500 ms  evidence 0.1 / 300\n"
    );
    let pending = serde_json::json!({"metric": "errors", "failed": false,
        "canaryRequests": 0, "explanation": "no canary traffic yet"});
    assert_eq!(
        EvidenceView::from_json(&pending).render(Paint { enabled: false }),
        "· errors  canary n/a\n"
    );
    // Wrong types are not a panic, nor an error: the entry shows as what it says.
    let odd = serde_json::json!({"metric": "errors", "canaryValue": "lots",
        "explanation": "errors: something new"});
    assert_eq!(
        EvidenceView::from_json(&odd).render(Paint { enabled: false }),
        "· errors  errors: something new\n"
    );
    let not_an_object = serde_json::json!(42);
    assert_eq!(
        EvidenceView::from_json(&not_an_object).render(Paint { enabled: false }),
        "· ?  42\n"
    );
}

#[test]
fn history_table_and_timeline() {
    let promoted = Rollout {
        id: "r-20231113-ffee".to_owned(),
        canary_version: "v1".to_owned(),
        baseline_version: "v0".to_owned(),
        phase: Phase::Promoted,
        step: 2,
        weight: 100,
        created_unix_ms: NOW_MS - 2 * 86_400_000,
        finished_unix_ms: Some(NOW_MS - 2 * 86_400_000 + 450_000),
        decision: "promoted: every check passed at 50%".to_owned(),
        ..progressing()
    };
    assert_eq!(
        render_history(&[progressing(), promoted], now()),
        "ID               SERVICE   VERSIONS  PHASE        STARTED  DURATION   DECISION\n\
         r-20231114-a1b2  payments  v1 → v2   progressing  3m ago   3m so far  step 1 passed: every check passed at 5%\n\
         r-20231113-ffee  payments  v0 → v1   promoted     2d ago   7m 30s     promoted: every check passed at 50%\n"
    );
    let detail = RolloutDetail {
        rollout: progressing(),
        events: vec![
            Event {
                at_unix_ms: NOW_MS - 180_000,
                kind: "started".to_owned(),
                message: "alice started rolling out payments v2".to_owned(),
            },
            Event {
                at_unix_ms: NOW_MS - 22_000,
                kind: "step".to_owned(),
                message: "step 2: 25% of traffic to v2".to_owned(),
            },
        ],
        points: Vec::new(),
    };
    assert_eq!(
        render_timeline(&detail, now()),
        "r-20231114-a1b2  payments  v1 → v2  progressing, started 3m ago\n\
         \x20 +0s      started  alice started rolling out payments v2\n\
         \x20 +2m 38s  step     step 2: 25% of traffic to v2\n"
    );
}

#[test]
fn durations_and_times_read_like_people_write_them() {
    let d = |s| duration(Duration::from_secs(s));
    assert_eq!(
        [
            d(0),
            d(45),
            d(60),
            d(90),
            d(3_600),
            d(3_725),
            d(2 * 86_400 + 3 * 3_600 + 5)
        ],
        ["0s", "45s", "1m", "1m 30s", "1h", "1h 2m", "2d 3h"]
    );
    assert_eq!(ago(NOW_MS, NOW_MS + 5_000), "just now");
    assert_eq!(ago(NOW_MS, NOW_MS - 150_000), "2m ago");
    assert_eq!(ago(NOW_MS, NOW_MS - 7_200_000), "2h ago");
}

#[test]
fn status_without_argument_shows_active_and_last_finished_per_service() {
    let raw = Value::Null;
    let older = Rollout {
        id: "r-old".to_owned(),
        ..rolled_back()
    };
    let orders = Rollout {
        service: "orders".to_owned(),
        id: "r-orders".to_owned(),
        ..rolled_back()
    };
    let list = vec![
        (progressing(), raw.clone()),
        (rolled_back(), raw.clone()),
        (orders, raw.clone()),
        (older, raw),
    ];
    let ids: Vec<&str> = select_for_status(&list)
        .iter()
        .map(|(r, _)| r.id.as_str())
        .collect();
    assert_eq!(ids, ["r-20231114-a1b2", "r-20231114-a1b2", "r-orders"]);
}

/// A request the stand-in server received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// A stand-in admin endpoint on 127.0.0.1:0 answering with the documented JSON. It checks
/// the client's side of the contract only; the real engine's endpoint is tested end to end
/// with the engine.
fn stand_in(handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).expect("request line");
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().expect("length");
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let mut parts = request_line.split_whitespace();
            let request = Seen {
                method: parts.next().unwrap_or_default().to_owned(),
                path: parts.next().unwrap_or_default().to_owned(),
                body: String::from_utf8(body).expect("utf-8"),
            };
            let (status, answer) = handler(&request);
            log.lock().expect("lock").push(request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (addr, seen)
}

fn json(r: &Rollout) -> String {
    serde_json::to_string(r).expect("rollout serializes")
}

fn sluice(args: &[&str]) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = crate::run(
        std::iter::once("sluice").chain(args.iter().copied()),
        Terminal::default(),
        &mut out,
        &mut err,
    );
    (
        code,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

#[test]
fn commands_speak_the_admin_api() {
    let (addr, seen) = stand_in(Box::new(|req: &Seen| {
        let pending = Rollout {
            phase: Phase::Pending,
            step: 0,
            weight: 0,
            decision: String::new(),
            ..progressing()
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/rollouts") => (201, json(&pending)),
            ("POST", "/rollouts/payments/abort") => (
                200,
                json(&Rollout {
                    phase: Phase::Aborted,
                    weight: 0,
                    decision: "aborted by alice".to_owned(),
                    ..progressing()
                }),
            ),
            ("POST", "/rollouts/orders/pause") => (
                409,
                r#"{"error": "orders has no active rollout: its newest (r-20231101-0001) was promoted"}"#
                    .to_owned(),
            ),
            ("GET", "/rollouts/payments") => {
                // The detail, plus a field this CLI does not know and a page link.
                let mut v = serde_json::to_value(progressing()).expect("value");
                v["events"] = serde_json::json!([]);
                v["points"] = serde_json::json!([]);
                v["url"] = serde_json::json!("http://127.0.0.1:8080/rollouts/r-20231114-a1b2");
                v["added_later"] = serde_json::json!({"x": 1});
                (200, v.to_string())
            }
            ("GET", "/rollouts/garbled") => (200, "{\"id\": ".to_owned()),
            _ => (404, r#"{"error": "no rollout `nope`"}"#.to_owned()),
        }
    }));

    let (code, out, err) = sluice(&[
        "rollout",
        "start",
        "payments",
        "--version",
        "v2",
        "--controller",
        &addr,
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "r-20231114-a1b2  payments  v1 → v2  pending  step 1/3  0%\n"
    );
    let start = seen.lock().expect("lock")[0].clone();
    assert_eq!(
        (start.method.as_str(), start.path.as_str()),
        ("POST", "/rollouts")
    );
    let body: StartRequest = serde_json::from_str(&start.body).expect("a StartRequest");
    assert_eq!(
        (
            body.namespace.as_str(),
            body.service.as_str(),
            body.version.as_str()
        ),
        ("default", "payments", "v2")
    );
    assert!(body.requested_by.is_some_and(|who| !who.is_empty()));

    let (code, out, _) = sluice(&["rollout", "abort", "payments", "--controller", &addr]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "r-20231114-a1b2  payments  v1 → v2  aborted  step 2/3  0%  · aborted by alice\n"
    );
    let abort = seen.lock().expect("lock")[1].clone();
    assert_eq!(
        (
            abort.method.as_str(),
            abort.path.as_str(),
            abort.body.as_str()
        ),
        ("POST", "/rollouts/payments/abort", "")
    );

    let (code, out, err) = sluice(&["rollout", "pause", "orders", "--controller", &addr]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "error: orders has no active rollout: its newest (r-20231101-0001) was promoted\n"
    );

    let (code, out, _) = sluice(&["rollout", "status", "payments", "--controller", &addr]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("payments  v1 → v2  progressing  step 2/3  25%\n"),
        "{out}"
    );
    assert!(
        out.ends_with("\nhttp://127.0.0.1:8080/rollouts/r-20231114-a1b2\n"),
        "{out}"
    );

    // JSON is the API's, unknown fields included.
    let (code, out, _) = sluice(&[
        "rollout",
        "status",
        "payments",
        "--output",
        "json",
        "--controller",
        &addr,
    ]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["added_later"]["x"], 1);

    let (code, _, err) = sluice(&["rollout", "status", "garbled", "--controller", &addr]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(&format!(
            "error: the controller at {addr} gave an unexpected answer to GET /rollouts/garbled"
        )),
        "{err}"
    );

    let (code, _, err) = sluice(&["rollout", "status", "nope", "--controller", &addr]);
    assert_eq!((code, err.as_str()), (1, "error: no rollout `nope`\n"));

    let (code, _, err) = sluice(&["rollout", "abort", "../x", "--controller", &addr]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`../x` is not a rollout id or service name"),
        "{err}"
    );
}

#[test]
fn an_unreachable_controller_is_named_with_the_fix() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    // The listener is dropped: nothing answers there now.
    let (code, _, err) = sluice(&["rollout", "status", "--controller", &addr]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the controller's admin endpoint at {addr}: "
        )),
        "{err}"
    );
    assert!(err.contains("--controller ADDR"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = sluice(&[
        "rollout",
        "history",
        "--state-dir",
        &dir.path().display().to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no controller is running for"), "{err}");
    assert!(err.contains("sluice controller --state-dir"), "{err}");
}

#[test]
fn watch_prints_each_change_and_exits_by_the_outcome() {
    let polls = Arc::new(Mutex::new(0_u32));
    let counter = Arc::clone(&polls);
    let (addr, _) = stand_in(Box::new(move |req: &Seen| {
        assert_eq!(req.path, "/rollouts/r-20231114-a1b2");
        let mut n = counter.lock().expect("lock");
        *n += 1;
        let r = match *n {
            1..=3 => progressing(),
            _ => Rollout {
                phase: Phase::Promoted,
                step: 2,
                weight: 100,
                finished_unix_ms: Some(NOW_MS),
                decision: "promoted: every check passed at 50%".to_owned(),
                ..progressing()
            },
        };
        let mut v = serde_json::to_value(r).expect("value");
        v["events"] = serde_json::json!([]);
        v["points"] = serde_json::json!([]);
        (200, v.to_string())
    }));
    let admin = Admin { addr };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut p = Printer {
        out: &mut out,
        err: &mut err,
        output: Format::Human,
        paint: Paint { enabled: false },
        tty: false,
    };
    let outcome = watch(
        &admin,
        Some("r-20231114-a1b2"),
        &mut p,
        Duration::from_millis(5),
    )
    .expect("watch");
    assert_eq!(outcome, Outcome::Success);
    let out = String::from_utf8(out).expect("utf-8");
    // Three identical polls print one block; the promotion prints the second.
    assert_eq!(out.matches("payments  v1 → v2").count(), 2, "{out}");
    assert!(
        out.contains("\npayments  v1 → v2  promoted  step 3/3  100%\n"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "{out}");
}
