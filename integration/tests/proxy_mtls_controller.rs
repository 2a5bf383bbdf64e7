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

    // 10 s certificates renew at about 7 s; keep calling until both proxies have renewed
    // twice (three certificates in force each), then once more on the newest ones.
    let in_force =
        |proxy: &sluice_integration::Proxy| proxy.log().matches("mesh identity in force").count();
    let renewed_twice = || in_force(&pair.server) >= 3 && in_force(&pair.client) >= 3;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut calls = 0;
    loop {
        let done = renewed_twice();
        let rsp = get(&client, pair.outbound(), "/v1/charges/1", &[])
            .await
            .expect("call");
        assert_eq!(rsp.status, 200, "{}", rsp.body);
        calls += 1;
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "two renewals did not happen within 60 s:\n{}",
            pair.server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{calls} calls across renewals; the proxies installed {} and {} certificates",
        in_force(&pair.server),
        in_force(&pair.client)
    );
    assert!(!pair.server.log().contains("renewal failed"));
    assert!(!pair.client.log().contains("renewal failed"));
}
