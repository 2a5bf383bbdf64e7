//! The proxies against the real controller: `sluice controller` issues both certificates over
//! `Certify` from its own CA with tokens from `sluice identity token`, the proxies talk mTLS
//! with them, authorize, and renew short-lived certificates without failing requests — on the
//! strength of the current certificate, long after their bootstrap tokens expired.

use std::time::Duration;

use sluice_integration::client::{get, hyper_client};
use sluice_integration::controller::{ControllerAccess, RealController};
use sluice_integration::mtls::{Pair, PairOptions, policy, spiffe};

#[tokio::test(flavor = "multi_thread")]
async fn certificates_from_the_real_controller() {
    let policy_dir = tempfile::tempdir().expect("policy");
    std::fs::write(
        policy_dir.path().join("mesh.yaml"),
        policy("enforce", "short"),
    )
    .expect("write");
    let controller = RealController::start(policy_dir.path(), "10s");
    let pair = Pair::start(PairOptions {
        // Tokens that expire before the second renewal: renewing needs only the certificate.
        controller: Some(ControllerAccess {
            server_token: controller.token_ttl("payments", "8s"),
            client_token: controller.token_ttl("checkout", "8s"),
            ..controller.access()
        }),
        ..PairOptions::default()
    })
    .await;
    let client = hyper_client(false);
    let rsp = get(&client, pair.outbound(), "/v1/charges/1", &[])
        .await
        .expect("call");
    assert_eq!(rsp.status, 200, "{}\n{}", rsp.body, pair.server.log());
    assert_eq!(
        rsp.json()["headers"]["sluice-client-id"],
        spiffe("checkout")
    );
    let denied = get(&client, pair.inbound(), "/v1/charges/1", &[])
        .await
        .expect("call");
    assert_eq!(denied.status, 403);

    // 10 s certificates renew at about 7 s; keep calling across two renewals.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(16);
    let mut calls = 0;
    while tokio::time::Instant::now() < deadline {
        let rsp = get(&client, pair.outbound(), "/v1/charges/1", &[])
            .await
            .expect("call");
        assert_eq!(rsp.status, 200, "{}", rsp.body);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let installed = pair.server.log().matches("mesh identity in force").count();
    eprintln!("{calls} calls across renewals; the server proxy installed {installed} certificates");
    assert!(installed >= 3, "no renewals: {}", pair.server.log());
    assert!(!pair.server.log().contains("renewal failed"));
}
