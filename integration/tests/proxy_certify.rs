//! Certificates over `Certify`: both proxies generate keys, send CSRs with their bootstrap
//! token, serve mTLS with what comes back, renew at about 70% of the lifetime, keep serving
//! while the controller is away, and report denials in batches.
//!
//! Runs against a stand-in that speaks the real `sluice.mesh.v1` contract
//! ([`sluice_integration::controller`]); the same proxies work against the real controller.

use std::sync::Arc;
use std::time::Duration;

use sluice_integration::client::{curl, get, hyper_client};
use sluice_integration::controller::{FakeController, State};
use sluice_integration::mtls::{Pair, PairOptions, TestCa, eventually, spiffe};

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

#[tokio::test(flavor = "multi_thread")]
async fn certify_renew_and_survive_a_controller_outage() {
    let controller = FakeController::start(state(Duration::from_secs(6)), None).await;
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

    // Renewal at ~70% of 6 s: each proxy asks again within about 4.5 s.
    assert!(
        eventually(Duration::from_secs(8), || async {
            certified(&controller.state).len() >= 4
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

    // The controller goes away: the proxies keep serving with the certificates they hold.
    let st = controller.stop();
    for _ in 0..20 {
        let rsp = get(&client, pair.outbound(), "/v1/charges/1", &[])
            .await
            .expect("call");
        assert_eq!(rsp.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pair.server.log().contains("certificate renewal failed") || certified(&st).len() >= 4);
    // It comes back on the same address and renewals resume.
    let before = certified(&st).len();
    let back = FakeController::start(st, Some(addr)).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            certified(&back.state).len() > before
        })
        .await,
        "renewal did not resume"
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
