use super::*;
use sluice_api::v1::{Endpoint, ServiceEndpoints, VersionEndpoints};
use sluice_policy::PolicySet;

fn shop() -> PolicySnapshot {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/shop/policy");
    let set = PolicySet::load(std::path::Path::new(dir)).expect("the shop policy loads");
    PolicySnapshot::new(set)
}

fn config() -> ProxyConfig {
    let version = |v: &str, env: &str, inst: &str, addr: &str| VersionEndpoints {
        version: v.into(),
        environment: env.into(),
        role: String::new(),
        endpoints: vec![Endpoint {
            instance: inst.into(),
            address: addr.into(),
        }],
    };
    ProxyConfig {
        services: vec![ServiceEndpoints {
            namespace: "default".into(),
            service: "payments".into(),
            addresses: vec!["10.0.0.9:8080".into()],
            versions: vec![
                version("v1", "stable", "payments-1", "10.0.0.1:8080"),
                version("v2", "stable", "payments-2", "10.0.0.2:8080"),
                version("v1", "pr-42", "payments-pr", "10.0.0.3:8080"),
            ],
        }],
        ..ProxyConfig::default()
    }
}

fn denial(caller: &str, rpc: &str, endpoint: &str) -> DenialRow {
    DenialRow {
        caller_namespace: "default".into(),
        caller: caller.into(),
        namespace: "default".into(),
        service: "payments".into(),
        rpc: rpc.into(),
        endpoint: endpoint.into(),
        policies: "payments-callers".into(),
        environment: "stable".into(),
        verdict: "deny".into(),
        count: 3,
        first_seen_unix_ms: 1_000,
        last_seen_unix_ms: 50_000,
        last_request_id: "r1".into(),
        last_proxy_id: "p1".into(),
    }
}

fn payments_page(denials: &[DenialRow], rollouts: Rollouts) -> String {
    let policy = shop();
    let cfg = config();
    // As the Kubernetes backend reads them from the injected pods.
    let probes = std::collections::BTreeMap::from([(
        sluice_policy::probes::Probe::Http {
            port: 8080,
            path: "/healthz".into(),
        },
        "payments-5d8f7c9b4-x2x7q".to_owned(),
    )]);
    let src = Sources {
        policy: &policy,
        config: &cfg,
        traffic: &[],
        rollouts: &rollouts,
        denials: Ok(denials),
        kubelet_probes: Some(&probes),
    };
    let view = gather_service(
        &ObjectRef::new("default", "payments"),
        &src,
        &RateSampler::default(),
        Instant::now(),
        60_000,
    )
    .expect("payments is declared");
    service_page(&view)
}

#[test]
fn payments_page_shows_owner_endpoints_grants_and_denials() {
    let denials = [
        denial("frontend", "GET /v1/charges/ch_1", "GET /v1/charges/{id}"),
        // Another service's denial must not show here.
        DenialRow {
            service: "catalog".into(),
            ..denial("frontend", "GET /v1/secret", "")
        },
        // Denied once, granted since (the shop grants checkout POST /v1/charges).
        denial("checkout", "POST /v1/charges", "POST /v1/charges"),
    ];
    let html = payments_page(&denials, Rollouts::NotRunning);
    assert!(html.contains("<strong>payments</strong>"), "{html}");
    assert!(html.contains("<span class=\"pill\">restricted</span>"));
    for rpc in [
        "POST /v1/charges",
        "GET /v1/charges/{id}",
        "payments.v1.Payments/Refund",
    ] {
        assert!(html.contains(&format!("<code>{rpc}</code>")), "{rpc}");
    }
    assert!(html.contains("<a href=\"/services/checkout\">checkout</a>"));
    assert!(html.contains("Checkout charges the customer's card when an order is placed."));
    assert!(html.contains("charge-cards"));
    assert!(html.contains("payments-callers"));
    assert!(
        html.contains("payments-callers · payments/access.yaml"),
        "{html}"
    );
    assert!(html.contains("kubelet probes"));
    // What the injected sidecars let through, from the pod spec rather than a policy.
    assert!(
        html.contains(
            "<td><code>GET /healthz on port 8080</code></td><td>kubelet probe (from the pod spec)</td>\
<td>the pod spec<br><span class=\"muted\">pod payments-5d8f7c9b4-x2x7q</span></td>"
        ),
        "{html}"
    );
    // The denial row, with the declared endpoint offered (not the one charge).
    assert!(html.contains("<code>GET /v1/charges/ch_1</code>"));
    assert!(
        html.contains(
            "href=\"http://localhost:7070/access/new?from=frontend&amp;to=payments\
&amp;rpc=GET%20%2Fv1%2Fcharges%2F%7Bid%7D&amp;env=stable\">Request access</a>"
        ),
        "{html}"
    );
    assert!(!html.contains("/v1/secret"));
    assert!(
        html.contains("<span class=\"pill\">granted since</span>"),
        "{html}"
    );
    assert!(!html.contains("from=checkout&amp;to=payments"), "{html}");
    // Environments from registrations: stable v1 (the Route's), an idle v2, an ephemeral copy.
    assert!(html.contains("<span class=\"pill\">stable</span></td><td>v1"));
    assert!(html.contains("<span class=\"pill\">ephemeral</span></td><td>v1</td><td>pr-42"));
    assert!(html.contains("10.0.0.3:8080"));
    assert!(html.contains("Rollouts are not enabled"));
}

#[test]
fn values_are_escaped() {
    let denials = [DenialRow {
        environment: "<script>alert(1)</script>".into(),
        ..denial("<script>x</script>", "GET /<script>", "")
    }];
    let html = payments_page(&denials, Rollouts::Unavailable("<b>disk</b>".into()));
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<b>disk"));
    assert!(html.contains("&lt;script&gt;"));
}

#[test]
fn whom_it_calls_lists_grants_naming_the_service() {
    let policy = shop();
    let cfg = ProxyConfig::default();
    let none = Rollouts::Listed(Vec::new());
    let src = Sources {
        policy: &policy,
        config: &cfg,
        traffic: &[],
        rollouts: &none,
        denials: Err("offline"),
        kubelet_probes: None,
    };
    let view = gather_service(
        &ObjectRef::new("default", "checkout"),
        &src,
        &RateSampler::default(),
        Instant::now(),
        0,
    )
    .expect("checkout is declared");
    let callees: Vec<&str> = view.calls.iter().map(|c| c.service.as_str()).collect();
    assert_eq!(callees, ["catalog", "payments"]);
    let html = service_page(&view);
    assert!(html.contains("<a href=\"/services/payments\">payments</a>"));
    assert!(html.contains("Denials could not be read: offline"));
    assert!(html.contains("has had no rollout"));
}

#[test]
fn rollout_section_links_the_rollout_and_its_chart() {
    let r = Rollout {
        id: "r-20240501-ab12".into(),
        namespace: "default".into(),
        service: "payments".into(),
        baseline_version: "v1".into(),
        canary_version: "v2".into(),
        phase: Phase::Progressing,
        step: 1,
        weight: 25,
        steps: Vec::new(),
        interval_ms: 1000,
        progress_deadline_ms: 600_000,
        policy: "payments".into(),
        analysis: Default::default(),
        on_failure: Default::default(),
        requested_by: "cli".into(),
        created_unix_ms: 0,
        updated_unix_ms: 0,
        step_started_unix_ms: 0,
        first_traffic_unix_ms: None,
        finished_unix_ms: None,
        decision: "step 2: every check passed".into(),
        evidence: Vec::new(),
        failed_check: None,
        failed_checks: Vec::new(),
        baseline: Default::default(),
        canary_requests: 0,
        baseline_requests: 0,
    };
    let html = payments_page(&[], Rollouts::Listed(vec![r]));
    assert!(html.contains("<a href=\"/rollouts/r-20240501-ab12\">r-20240501-ab12</a>"));
    assert!(html.contains("<img src=\"/rollouts/r-20240501-ab12/chart.svg\""));
    assert!(html.contains("canary at 25%"));
    // With the rollout active, the registered v2 is the canary.
    assert!(html.contains("<span class=\"pill\">canary</span></td><td>v2"));
}

#[test]
fn index_lists_the_four_services() {
    let policy = shop();
    let cfg = config();
    let rows = gather_index(
        &policy,
        &cfg,
        &[],
        &[],
        &RateSampler::default(),
        Instant::now(),
    );
    let names: Vec<String> = rows.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(names, ["catalog", "checkout", "frontend", "payments"]);
    let payments = rows.iter().find(|r| r.key.name == "payments").expect("row");
    assert_eq!(payments.instances, 3);
    assert_eq!(payments.security, "restricted");
    let html = index_page(&rows);
    for n in &names {
        assert!(
            html.contains(&format!("<a href=\"/services/{n}\">{n}</a>")),
            "{n}"
        );
    }
}

#[test]
fn rates_need_two_readings() {
    let s = RateSampler::default();
    let key = VersionKey {
        namespace: "default".into(),
        service: "payments".into(),
        version: "v1".into(),
        environment: "stable".into(),
        role: String::new(),
    };
    let t0 = Instant::now();
    assert_eq!(s.rate(&key, 100, t0), None);
    // Too soon: still nothing to show, and the first reading is kept.
    assert_eq!(s.rate(&key, 150, t0 + Duration::from_millis(10)), None);
    assert_eq!(s.rate(&key, 300, t0 + Duration::from_secs(2)), Some(100.0));
    assert_eq!(
        s.rate(&key, 310, t0 + Duration::from_millis(2500)),
        Some(100.0)
    );
    // A counter that went backwards restarts the measurement.
    assert_eq!(s.rate(&key, 5, t0 + Duration::from_secs(4)), None);
}

#[test]
fn script_links_are_refused() {
    assert_eq!(safe_link("javascript:alert(1)".into()), None);
    assert!(safe_link("https://portal/x".into()).is_some());
}
