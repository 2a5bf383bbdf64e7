//! Certificates over `Certify`: both proxies generate keys, send CSRs with their bootstrap
//! token, serve mTLS with what comes back, renew at about 70% of the lifetime, keep serving
//! while the controller is away, and report denials in batches.
//!
//! Runs against a stand-in that speaks the real `sluice.mesh.v1` contract
//! ([`sluice_integration::controller`]); the same proxies work against the real controller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_integration::client::{curl, get, hyper_client};
use sluice_integration::controller::{FakeController, State};
use sluice_integration::mtls::{Leaf, Pair, PairOptions, TestCa, eventually, spiffe};
use sluice_integration::{PATIENCE, Proxy, have, skip};

fn state(lifetime: Duration) -> Arc<State> {
    Arc::new(State::new(
        TestCa::new("controller CA"),
        "let-me-in",
        lifetime,
    ))
}

fn certified(s: &State) -> Vec<String> {
    s.certified.lock().map(|c| c.clone()).unwrap_or_default()
}

/// How many times payments and checkout have renewed (certificates after their first).
fn renewals(s: &State) -> (usize, usize) {
    let issued = certified(s);
    let count = |service: &str| issued.iter().filter(|id| **id == spiffe(service)).count();
    (
        count("payments").saturating_sub(1),
        count("checkout").saturating_sub(1),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn certify_renew_and_survive_a_controller_outage() {
    if !have("curl") {
        return skip("certify_renew_and_survive", "curl not installed");
    }
    // 20 s certificates: renewed at 13-15 s, so an outage that starts right after a renewal
    // passes the next renewal point with seconds to spare before the certificates expire.
    let lifetime = Duration::from_secs(20);
    let controller = FakeController::start(state(lifetime), None).await;
    let addr = controller.addr();
    let pair = Pair::start(PairOptions {
        controller: Some(controller.access("let-me-in", "let-me-in")),
        env: vec![("SLUICE_PROXY_DENIAL_REPORT_INTERVAL".into(), "200ms".into())],
        ..PairOptions::default()
    })
    .await;
    let issued = certified(&controller.state);
    assert!(
        issued.contains(&spiffe("payments")) && issued.contains(&spiffe("checkout")),
        "{issued:?}"
    );

    let client = hyper_client(false);
    let rsp = get(&client, pair.outbound(), "/v1/charges/1", &[])
        .await
        .expect("call");
    assert_eq!(rsp.status, 200, "{}", rsp.body);
    assert_eq!(
        rsp.json()["headers"]["sluice-client-id"],
        spiffe("checkout")
    );

    // Renewal at ~70% of the lifetime: each proxy asks again.
    assert!(
        eventually(PATIENCE, || async {
            let (payments, checkout) = renewals(&controller.state);
            payments >= 1 && checkout >= 1
        })
        .await,
        "no renewal: {:?}",
        certified(&controller.state)
    );
    // Renewals prove themselves with the current certificate, not the token.
    assert!(
        controller
            .state
            .renewed_with_certificate
            .lock()
            .map(|r| r.len() >= 2)
            .unwrap_or(false),
        "renewals did not present the current certificate"
    );

    // Denials reach the controller, folded with counts.
    for _ in 0..3 {
        let out = curl(&[
            "-X",
            "POST",
            "-o",
            "/dev/null",
            &format!("http://{}/v1/charges", pair.outbound()),
        ])
        .await;
        assert!(out.status.success());
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            controller
                .state
                .reports
                .lock()
                .map(|r| {
                    r.iter()
                        .flat_map(|r| &r.denials)
                        .filter(|d| d.rpc == "POST /v1/charges")
                        .map(|d| d.count)
                        .sum::<u32>()
                        == 3
                })
                .unwrap_or(false)
        })
        .await,
        "denials not reported: {:?}",
        controller.state.reports.lock().map(|r| r.clone())
    );
    let reports = controller
        .state
        .reports
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let d = reports
        .iter()
        .flat_map(|r| &r.denials)
        .find(|d| d.rpc == "POST /v1/charges")
        .expect("denial");
    assert_eq!(
        (d.caller.as_str(), d.service.as_str(), d.verdict.as_str()),
        ("checkout", "payments", "deny")
    );
    assert_eq!(d.policies, vec!["payments-callers".to_owned()]);
    assert_eq!(reports[0].proxy_id, "payments-0");

    // The controller goes away, and stays away past the next renewal point: both proxies try
    // to renew, fail, and keep serving with the certificates they hold, on pooled connections
    // and on new handshakes alike.
    let st = controller.stop();
    let outage = Instant::now();
    let failed = |proxy: &Proxy| proxy.log().contains("certificate renewal failed");
    let tmp = tempfile::tempdir().expect("tmp");
    let (cert, key) = st.ca.issue(&Leaf::service("checkout"));
    std::fs::write(tmp.path().join("c.pem"), cert).expect("cert");
    std::fs::write(tmp.path().join("k.pem"), key).expect("key");
    let mut after_failures = 0;
    while after_failures < 3 {
        let both_failed = failed(&pair.server) && failed(&pair.client);
        let rsp = get(&client, pair.outbound(), "/v1/charges/1", &[])
            .await
            .expect("call");
        assert_eq!(rsp.status, 200, "{}\n{}", rsp.body, pair.server.log());
        // A fresh mTLS handshake with the server proxy, which presents what it holds.
        let fresh = curl(&[
            "-k",
            "--max-time",
            "5",
            "--cert",
            &tmp.path().join("c.pem").display().to_string(),
            "--key",
            &tmp.path().join("k.pem").display().to_string(),
            &format!("https://{}/v1/charges/1", pair.inbound()),
        ])
        .await;
        assert!(
            fresh.status.success(),
            "new handshake during the outage: {}\n{}",
            String::from_utf8_lossy(&fresh.stderr),
            pair.server.log()
        );
        if both_failed {
            after_failures += 1;
        }
        assert!(
            outage.elapsed() < lifetime,
            "both proxies should have tried to renew by now:\n{}\n{}",
            pair.server.log(),
            pair.client.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It comes back on the same address and both proxies renew.
    let before = renewals(&st);
    let back = FakeController::start(st, Some(addr)).await;
    assert!(
        eventually(PATIENCE, || async {
            let now = renewals(&back.state);
            now.0 > before.0 && now.1 > before.1
        })
        .await,
        "renewal did not resume: {:?}",
        certified(&back.state)
    );
    let rsp = get(&client, pair.outbound(), "/v1/charges/1", &[])
        .await
        .expect("call");
    assert_eq!(rsp.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_gets_no_certificate() {
    let controller = FakeController::start(state(Duration::from_secs(3600)), None).await;
    let pair = Pair::start(PairOptions {
        controller: Some(controller.access("guess", "guess")),
        env: vec![],
        ..PairOptions::default()
    })
    .await;
    assert!(certified(&controller.state).is_empty());
    assert!(
        pair.server.log().contains("bad bootstrap token"),
        "{}",
        pair.server.log()
    );
}
