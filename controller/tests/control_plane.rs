//! The control plane end to end: the real `sluice controller` process on loopback, real gRPC
//! clients as proxies, real policy edits on disk, `sluice status` as an operator runs it, and
//! a SIGKILL in the middle.

use std::time::{Duration, Instant};

use sluice_api::v1::mesh_client::MeshClient;
use sluice_api::v1::{
    Denial, DenialReport, LatencyBucket, ProxyConfig, Registration, TrafficReport, WatchRequest,
    Workload,
};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

mod common;
use common::{Fixture, PATIENCE, token};

fn workload(service: &str, instance: &str) -> Workload {
    Workload {
        namespace: "default".to_owned(),
        service: service.to_owned(),
        version: "v1".to_owned(),
        environment: "stable".to_owned(),
        instance: instance.to_owned(),
        role: String::new(),
    }
}

/// A proxy's Watch stream.
async fn watch(
    client: &mut MeshClient<Channel>,
    service: &str,
    instance: &str,
) -> Streaming<ProxyConfig> {
    client
        .watch(WatchRequest {
            workload: Some(workload(service, instance)),
            proxy_id: format!("{instance}-proxy"),
            have_version: String::new(),
        })
        .await
        .expect("Watch")
        .into_inner()
}

async fn next(stream: &mut Streaming<ProxyConfig>) -> ProxyConfig {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a config arrives in time")
        .expect("the stream is healthy")
        .expect("the stream stays open")
}

/// Reads configs until `check` holds.
async fn until(
    stream: &mut Streaming<ProxyConfig>,
    check: impl Fn(&ProxyConfig) -> bool,
) -> ProxyConfig {
    loop {
        let config = next(stream).await;
        if check(&config) {
            return config;
        }
    }
}

fn endpoints(config: &ProxyConfig, service: &str) -> Vec<String> {
    config
        .services
        .iter()
        .filter(|s| s.service == service)
        .flat_map(|s| s.versions.iter())
        .flat_map(|v| v.endpoints.iter().map(|e| e.address.clone()))
        .collect()
}

#[tokio::test]
async fn policy_edits_reach_every_watcher_and_bad_edits_are_refused() {
    let fx = Fixture::new();
    let controller = fx.start();
    let mut a = watch(
        &mut controller.client_as("checkout").await,
        "checkout",
        "checkout-0",
    )
    .await;
    let mut b = watch(
        &mut controller.client_as("payments").await,
        "payments",
        "payments-0",
    )
    .await;

    // The snapshot at once, the same version for both, and loadable by a proxy (each gets its
    // workload's share of the policy; the version is the mesh's).
    let first = next(&mut a).await;
    assert_eq!(next(&mut b).await.version, first.version);
    sluice_policy::PolicySet::from_str("bundle", &first.policy_bundle).expect("the bundle loads");

    // Grant checkout the lookup: both watchers get the new version.
    let edited = Instant::now();
    fx.edit(
        &fx.access(),
        "allow: [POST /v1/charges]",
        r#"allow: [POST /v1/charges, "GET /v1/charges/{id}"]"#,
    );
    let second = next(&mut a).await;
    let took = edited.elapsed();
    assert_ne!(second.version, first.version);
    let payments = next(&mut b).await;
    assert_eq!(payments.version, second.version);
    assert!(payments.policy_bundle.contains("GET /v1/charges/{id}"));
    eprintln!("a policy edit reached the watchers in {took:?}");

    // A typo is refused: no new version, the error (with file:line:col) in `sluice status`.
    fx.edit(&fx.access(), "allow: [POST", "alow: [POST");
    let status = fx
        .wait_status("the config error", |s| {
            s["last_config_error"]["current"] == true
        })
        .await;
    assert_eq!(status["snapshot"]["version"], second.version.as_str());
    let rendered = status["last_config_error"]["rendered"]
        .as_str()
        .unwrap_or_default();
    assert!(rendered.contains("unknown field `alow`"), "{rendered}");
    assert!(rendered.contains("payments/access.yaml:15:7"), "{rendered}");
    let (code, human) = fx.status(false);
    assert_eq!(code, 0);
    assert!(human.contains("last config error"), "{human}");
    assert!(human.contains("payments/access.yaml:15:7"), "{human}");
    assert!(human.contains("in force"), "{human}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), a.message())
            .await
            .is_err(),
        "a refused change sends nothing"
    );
    let log = controller.log();
    assert!(
        log.contains("unknown field `alow`"),
        "every diagnostic is logged: {log}"
    );

    // Fixing it publishes again and the error is history.
    fx.edit(&fx.access(), "alow: [POST", "allow: [POST");
    fx.edit(
        &fx.access(),
        "reason: Checkout charges",
        "reason: Checkout, which charges",
    );
    let third = next(&mut a).await;
    assert_ne!(third.version, second.version);
    let status = fx
        .wait_status("the error to be fixed", |s| {
            s["last_config_error"]["current"] == false
        })
        .await;
    assert_eq!(status["snapshot"]["version"], third.version.as_str());
}

#[tokio::test]
async fn registrations_and_denials_survive_a_killed_controller() {
    let fx = Fixture::new();
    let mut controller = fx.start();
    let mut client = controller.client_as("payments").await;
    let mut checkout = watch(
        &mut controller.client_as("checkout").await,
        "checkout",
        "checkout-0",
    )
    .await;
    let mut payments = watch(
        &mut controller.client_as("payments").await,
        "payments",
        "payments-0",
    )
    .await;
    let version = next(&mut checkout).await.version;
    next(&mut payments).await;

    // Register → every watcher's next config has the endpoint.
    client
        .register(Registration {
            workload: Some(workload("payments", "payments-0")),
            address: "127.0.0.1:18080".to_owned(),
        })
        .await
        .expect("Register");
    for stream in [&mut checkout, &mut payments] {
        let config = next(stream).await;
        assert_eq!(
            config.version, version,
            "endpoints do not change the policy version"
        );
        assert_eq!(endpoints(&config, "payments"), ["127.0.0.1:18080"]);
    }
    let bad = client
        .register(Registration {
            workload: Some(workload("payments", "payments-1")),
            address: "nowhere".to_owned(),
        })
        .await
        .expect_err("not an address");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Denials add up.
    let denial = Denial {
        caller: "checkout".to_owned(),
        caller_namespace: "default".to_owned(),
        service: "payments".to_owned(),
        namespace: "default".to_owned(),
        rpc: "GET /v1/charges/42".to_owned(),
        endpoint: "GET /v1/charges/{id}".to_owned(),
        policies: vec!["payments-callers".to_owned()],
        environment: "stable".to_owned(),
        verdict: "deny".to_owned(),
        first_seen_unix_ms: 1,
        count: 3,
        request_id: "req-1".to_owned(),
    };
    for _ in 0..2 {
        // Reported by payments' proxy: the callee reports the denials it made.
        client
            .report_denials(DenialReport {
                proxy_id: "payments-0-proxy".to_owned(),
                denials: vec![denial.clone()],
                dropped: 1,
            })
            .await
            .expect("ReportDenials");
    }
    let status = fx.status_json();
    assert_eq!(status["denials"]["distinct"], 1);
    assert_eq!(status["denials"]["total"], 6);
    assert_eq!(status["denials"]["dropped"], 2);
    assert_eq!(status["denials"]["recent"][0]["caller"], "default/checkout");
    assert_eq!(status["proxies"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["registrations"][0]["watching"], true);

    // SIGKILL. Status still answers from the store, and says the controller is down.
    controller.kill();
    drop(checkout);
    drop(payments);
    let (code, human) = fx.status(false);
    assert_eq!(code, 1, "{human}");
    assert!(human.contains("not running"), "{human}");
    assert!(human.contains("127.0.0.1:18080"), "{human}");

    // Restarted on the same state: the registration is back and a reconnecting proxy gets the
    // current version with it, at once.
    let controller = fx.start();
    let mut checkout = watch(
        &mut controller.client_as("checkout").await,
        "checkout",
        "checkout-0",
    )
    .await;
    let config = next(&mut checkout).await;
    assert_eq!(config.version, version);
    assert_eq!(endpoints(&config, "payments"), ["127.0.0.1:18080"]);
    let status = fx.status_json();
    assert_eq!(status["denials"]["total"], 6);
    assert_eq!(status["registrations"][0]["instance"], "payments-0");
}

/// `Watch`, `Register`, `ReportTraffic` and `ReportDenials`: no certificate is
/// UNAUTHENTICATED, another workload's certificate is PERMISSION_DENIED naming both, the
/// workload's own certificate is accepted. A bootstrap token is no substitute.
#[tokio::test]
async fn every_call_needs_the_workloads_own_certificate() {
    let fx = Fixture::new();
    let controller = fx.start();
    let mut anonymous = controller.client().await;
    let mut checkout = controller.client_as("checkout").await;
    let mut payments = controller.client_as("payments").await;

    let registration = Registration {
        workload: Some(workload("payments", "payments-0")),
        address: "127.0.0.1:18080".to_owned(),
    };
    let traffic = TrafficReport {
        proxy_id: "payments-0-proxy".to_owned(),
        workload: Some(workload("payments", "payments-0")),
        proxy_started_unix_ms: 1,
        requests: 2,
        failures: 1,
        latency: vec![LatencyBucket {
            le_seconds: 0.1,
            count: 2,
        }],
        sent_unix_ms: 2,
    };
    let denials = DenialReport {
        proxy_id: "payments-0-proxy".to_owned(),
        denials: vec![Denial {
            caller: "checkout".to_owned(),
            caller_namespace: "default".to_owned(),
            service: "payments".to_owned(),
            namespace: "default".to_owned(),
            rpc: "GET /v1/charges/42".to_owned(),
            verdict: "deny".to_owned(),
            count: 1,
            ..Denial::default()
        }],
        dropped: 0,
    };
    let watch_payments = WatchRequest {
        workload: Some(workload("payments", "payments-0")),
        proxy_id: "payments-0-proxy".to_owned(),
        have_version: String::new(),
    };

    // No certificate (even with the workload's bootstrap token as a header): UNAUTHENTICATED,
    // saying what is needed.
    let mut with_token = tonic::Request::new(registration.clone());
    with_token.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(&fx.state, "payments"))
            .parse()
            .expect("ascii"),
    );
    let errors = [
        anonymous
            .watch(watch_payments.clone())
            .await
            .expect_err("Watch without a certificate"),
        anonymous
            .register(registration.clone())
            .await
            .expect_err("Register without a certificate"),
        anonymous
            .register(with_token)
            .await
            .expect_err("Register with a token instead"),
        anonymous
            .report_traffic(traffic.clone())
            .await
            .expect_err("ReportTraffic without a certificate"),
        anonymous
            .report_denials(denials.clone())
            .await
            .expect_err("ReportDenials without a certificate"),
    ];
    for e in errors {
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(
            e.message()
                .contains("needs the workload's mesh certificate"),
            "{}",
            e.message()
        );
    }

    // Checkout's certificate for payments: PERMISSION_DENIED naming both.
    let errors = [
        checkout
            .watch(watch_payments.clone())
            .await
            .expect_err("Watch as payments with checkout's certificate"),
        checkout
            .register(registration.clone())
            .await
            .expect_err("Register with checkout's certificate"),
        checkout
            .report_traffic(traffic.clone())
            .await
            .expect_err("ReportTraffic with checkout's certificate"),
        checkout
            .report_denials(denials.clone())
            .await
            .expect_err("ReportDenials with checkout's certificate"),
    ];
    for e in errors {
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message()
                .contains("the client certificate proves default/checkout"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("default/payments"), "{}", e.message());
    }
    let status = fx.status_json();
    assert_eq!(
        status["registrations"].as_array().map(Vec::len),
        Some(0),
        "{status:#}"
    );
    assert_eq!(status["denials"]["total"], 0, "{status:#}");
    assert_eq!(status["proxies"].as_array().map(Vec::len), Some(0));

    // Payments' own certificate: accepted.
    let mut stream = payments
        .watch(watch_payments)
        .await
        .expect("Watch with payments' certificate")
        .into_inner();
    next(&mut stream).await;
    payments
        .register(registration)
        .await
        .expect("Register with payments' certificate");
    payments
        .report_traffic(traffic)
        .await
        .expect("ReportTraffic with payments' certificate");
    payments
        .report_denials(denials)
        .await
        .expect("ReportDenials with payments' certificate");
    let status = fx.status_json();
    assert_eq!(status["registrations"][0]["instance"], "payments-0");
    assert_eq!(status["denials"]["total"], 1);
}

/// A client that does not speak TLS gets nothing: the handshake fails and the connection is
/// closed.
#[tokio::test]
async fn a_plaintext_client_is_refused() {
    let fx = Fixture::new();
    let controller = fx.start();
    let plain = Endpoint::from_shared(format!("http://{}", controller.addr))
        .expect("endpoint")
        .connect_timeout(PATIENCE)
        .timeout(PATIENCE);
    let result = match plain.connect().await {
        Err(e) => Err(e.to_string()),
        Ok(channel) => MeshClient::new(channel)
            .watch(WatchRequest {
                workload: Some(workload("checkout", "checkout-0")),
                proxy_id: "plain".to_owned(),
                have_version: String::new(),
            })
            .await
            .map(drop)
            .map_err(|s| s.to_string()),
    };
    assert!(result.is_err(), "a plaintext Watch was served");
    assert_eq!(
        fx.status_json()["proxies"].as_array().map(Vec::len),
        Some(0)
    );
}

/// Each proxy is sent only its workload's share of the policy: checkout's stream has its own
/// AccessPolicy and what routing its calls needs, not who may call payments, the rollout, or
/// the teams' people and channels.
#[tokio::test]
async fn watch_hands_a_proxy_only_the_policy_its_workload_needs() {
    let fx = Fixture::new();
    let controller = fx.start();
    let mut checkout = watch(
        &mut controller.client_as("checkout").await,
        "checkout",
        "checkout-0",
    )
    .await;
    let config = next(&mut checkout).await;
    let bundle = &config.policy_bundle;
    // Valid on its own: the proxy compiles it.
    let view = sluice_policy::PolicySet::from_str("bundle", bundle).expect("a valid bundle");
    assert_eq!(
        view.access_policies
            .iter()
            .map(|p| p.name.to_string())
            .collect::<Vec<_>>(),
        ["checkout-callers"]
    );
    assert!(view.routes.keys().any(|r| r.name == "payments"), "{bundle}");
    assert!(
        view.services.keys().any(|s| s.name == "payments"),
        "{bundle}"
    );
    for absent in [
        "payments-callers",
        "CanaryPolicy",
        "pat@shop.example",
        "localhost:7072",
    ] {
        assert!(
            !bundle.contains(absent),
            "checkout was sent {absent}: {bundle}"
        );
    }
    // The version is the mesh's, so `sluice status` compares proxies as before.
    assert_eq!(
        fx.status_json()["snapshot"]["version"],
        config.version.as_str()
    );
}

#[tokio::test]
async fn a_proxy_that_stops_reading_is_shown_behind_and_holds_up_no_one() {
    let fx = Fixture::new();
    // A big service description makes each config larger than a small HTTP/2 window, so a
    // proxy that stops reading stops taking configs.
    let big = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {{ name: big }}\nspec:\n  team: storefront\n  description: \"{}\"\n",
        "x".repeat(200 * 1024)
    );
    std::fs::write(fx.policy.join("big.yaml"), big).expect("write big.yaml");
    let controller = fx.start();
    // `big` watches its own service, whose description it is sent in full.
    let cert = controller.certify("big").await;
    let small_window = controller
        .channel(
            controller
                .endpoint()
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535),
            Some(&cert),
        )
        .await
        .expect("connect");
    let mut stalled = watch(&mut MeshClient::new(small_window), "big", "big-0").await;
    let mut reader = watch(
        &mut controller.client_as("checkout").await,
        "checkout",
        "checkout-0",
    )
    .await;
    next(&mut stalled).await;
    next(&mut reader).await;
    fx.wait_status("both proxies to be current", |s| {
        s["proxies"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["behind"] == false))
    })
    .await;

    // `stalled` reads no more. Two edits: the reader follows both.
    let mut last = String::new();
    for (i, reason) in ["first", "second", "third"].iter().enumerate() {
        let team = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: {{ name: {reason} }}\nspec: {{}}\n"
        );
        std::fs::write(fx.policy.join("extra.yaml"), team).expect("write extra.yaml");
        let config = until(&mut reader, |c| c.version != last).await;
        last = config.version;
        eprintln!("edit {i}: reader has {last}");
    }
    let status = fx
        .wait_status("the stalled proxy to be behind", |s| {
            let proxies = s["proxies"].as_array().cloned().unwrap_or_default();
            let by = |id: &str| proxies.iter().find(|p| p["proxy_id"] == id).cloned();
            by("big-0-proxy").is_some_and(|p| p["behind"] == true)
                && by("checkout-0-proxy").is_some_and(|p| p["behind"] == false)
        })
        .await;
    assert_eq!(status["snapshot"]["version"], last.as_str());
    let (_, human) = fx.status(false);
    assert!(human.contains("1 behind"), "{human}");
    assert!(human.contains("BEHIND"), "{human}");

    // Once it reads again it skips straight to the current version.
    let caught_up = until(&mut stalled, |c| c.version == last).await;
    assert_eq!(caught_up.version, last);
    fx.wait_status("everyone current again", |s| {
        s["proxies"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["behind"] == false))
    })
    .await;
}
