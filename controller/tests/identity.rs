//! Mesh identity end to end: the real `sluice controller` process on loopback, a real gRPC
//! client, real CSRs, and the issued certificate verified the way a peer proxy will verify it
//! (rustls' WebPKI client-certificate verifier against the trust roots from the response).

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use sluice_api::v1::{CertifyRequest, CertifyResponse, WatchRequest, Workload};
use sluice_controller::identity::{MeshCa, TokenKey, WorkloadIdentity};
use sluice_integration::{have, skip};
use tonic::Code;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

mod common;
use common::{Controller, STARTUP, repo_root};

const HOUR: Duration = Duration::from_secs(3600);

/// SIGTERM, then the exit status. Async so that this test's client connections keep
/// running and can answer the server's GOAWAY.
async fn stop(mut controller: Controller) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &controller.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + STARTUP;
    loop {
        if let Some(status) = controller
            .child
            .try_wait()
            .expect("wait for the controller")
        {
            let log = controller.log();
            assert!(log.contains("shutting down signal=\"SIGTERM\""), "{log}");
            assert!(!log.contains("cut off"), "open calls drain in time: {log}");
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn workload(namespace: &str, service: &str) -> Option<Workload> {
    Some(Workload {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        version: "v1".to_owned(),
        environment: "stable".to_owned(),
        instance: format!("{service}-0"),
        role: String::new(),
    })
}

/// A CSR as a proxy makes one: a fresh P-256 key, and (to show it is ignored) a DNS SAN.
fn csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().expect("generate a key");
    let params =
        CertificateParams::new(vec!["i-want-this-name.example".to_owned()]).expect("CSR params");
    let der = params
        .serialize_request(&key)
        .expect("serialize the CSR")
        .der()
        .to_vec();
    (key, der)
}

fn certify_request(namespace: &str, service: &str, token: &str, csr: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        workload: workload(namespace, service),
        csr_der: csr,
        token: token.to_owned(),
    }
}

/// `sluice identity token` as a runner script would call it.
fn cli_token(state: &Path, namespace: &str, service: &str, ttl: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["identity", "token", "--state-dir"])
        .arg(state)
        .args(["--namespace", namespace, "--service", service, "--ttl", ttl])
        .output()
        .expect("run sluice identity token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(token.lines().count(), 1, "one line: {token:?}");
    token.trim().to_owned()
}

/// Verifies `leaf` as a TLS client certificate against `roots`, exactly as an inbound proxy
/// will (rustls + ring, WebPKI path building, EKU clientAuth, validity at `now`).
fn verify_as_client_cert(
    leaf: &[u8],
    roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(CertificateDer::from(root.clone()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf.to_vec()),
            &[],
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).expect("after 1970")),
        )
        .map(|_| ())
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut sans = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                sans.push(match name {
                    GeneralName::URI(uri) => format!("URI:{uri}"),
                    other => format!("other:{other:?}"),
                });
            }
        }
    }
    sans
}

#[tokio::test]
async fn certify_issues_a_spiffe_certificate_that_verifies_against_the_mesh_ca() {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    let ready = temp.path().join("ready");
    let controller = Controller::start(
        &state,
        &[
            "--policy",
            "examples/shop/policy",
            "--ready-file",
            ready.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&ready).expect("ready file"),
        format!("{}\n", controller.addr)
    );
    let token = cli_token(&state, "shop", "checkout", "1h");
    let (key, csr) = csr();
    let requested_at = SystemTime::now();
    let response: CertifyResponse = controller
        .client()
        .await
        .certify(certify_request("shop", "checkout", &token, csr))
        .await
        .unwrap_or_else(|status| panic!("Certify failed: {status:?}\n{}", controller.log()))
        .into_inner();

    // The trust domain comes from the shop's Mesh resource.
    assert_eq!(
        response.spiffe_id,
        "spiffe://shop.local/ns/shop/svc/checkout"
    );
    assert!(response.chain_der.is_empty());
    let ca_pem = std::fs::read_to_string(state.join("ca/ca.crt")).expect("ca.crt");
    let ca_der = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .expect("PEM")
        .1
        .contents;
    assert_eq!(response.trust_roots_der, vec![ca_der.clone()]);

    let (_, leaf) = X509Certificate::from_der(&response.certificate_der).expect("leaf parses");
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("CA parses");
    assert_eq!(leaf.issuer(), ca.subject());
    assert_eq!(
        uri_sans(&leaf),
        vec!["URI:spiffe://shop.local/ns/shop/svc/checkout".to_owned()],
        "exactly one SAN, the SPIFFE ID; the CSR's DNS name is ignored"
    );
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info());
    let not_after = leaf.validity().not_after.timestamp();
    assert_eq!(not_after, response.not_after_unix);
    let expected = requested_at
        .duration_since(UNIX_EPOCH)
        .expect("now")
        .as_secs()
        + 24 * 3600;
    let expected = i64::try_from(expected).expect("fits");
    assert!(
        (not_after - expected).abs() <= 120,
        "expires about 24h from now: {not_after} vs {expected}"
    );

    // A real chain verification, as the peer proxy will do it.
    let now = SystemTime::now();
    verify_as_client_cert(&response.certificate_der, &response.trust_roots_der, now)
        .expect("the leaf verifies as a client certificate against the mesh CA");
    // … and it is refused by another mesh, and once expired.
    let other = MeshCa::generate(now).expect("another CA");
    let other_der = x509_parser::pem::parse_x509_pem(other.cert_pem.as_bytes())
        .expect("PEM")
        .1
        .contents;
    let err = verify_as_client_cert(&response.certificate_der, &[other_der], now)
        .expect_err("another CA must not accept the leaf");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let err = verify_as_client_cert(
        &response.certificate_der,
        &response.trust_roots_der,
        now + 25 * HOUR,
    )
    .expect_err("expired");
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");

    assert!(stop(controller).await.success(), "clean exit on SIGTERM");
    assert!(!ready.exists(), "the ready file is removed on shutdown");
}

#[tokio::test]
async fn refusals_carry_the_right_code_and_say_why() {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    let controller = Controller::start(&state, &[]);
    let key = TokenKey::load_or_create(&state).expect("the controller's token key");
    let now = SystemTime::now();
    let checkout = WorkloadIdentity::new("shop", "checkout").expect("identity");
    let token = key.issue(&checkout, HOUR, now);
    let mut client = controller.client().await;

    let cases: Vec<(&str, CertifyRequest, Code, &str)> = vec![
        (
            "garbage token",
            certify_request("shop", "checkout", "not-a-token", csr().1),
            Code::Unauthenticated,
            "malformed",
        ),
        (
            "token from another state directory",
            certify_request(
                "shop",
                "checkout",
                &TokenKey::generate()
                    .expect("key")
                    .issue(&checkout, HOUR, now),
                csr().1,
            ),
            Code::Unauthenticated,
            "not issued by this mesh",
        ),
        (
            "expired token",
            certify_request(
                "shop",
                "checkout",
                &key.issue(&checkout, HOUR, now - 2 * HOUR),
                csr().1,
            ),
            Code::Unauthenticated,
            "expired at",
        ),
        (
            "no token",
            certify_request("shop", "checkout", "", csr().1),
            Code::Unauthenticated,
            "no bootstrap token",
        ),
        (
            "token for another service",
            certify_request("shop", "payments", &token, csr().1),
            Code::PermissionDenied,
            "the bootstrap token is for shop/checkout, but the request asks for a certificate for shop/payments",
        ),
        (
            "token for another namespace",
            certify_request("billing", "checkout", &token, csr().1),
            Code::PermissionDenied,
            "for billing/checkout",
        ),
        (
            "garbage CSR",
            certify_request("shop", "checkout", &token, b"definitely not DER".to_vec()),
            Code::InvalidArgument,
            "not a DER PKCS#10",
        ),
        (
            "empty CSR",
            certify_request("shop", "checkout", &token, Vec::new()),
            Code::InvalidArgument,
            "the CSR is empty",
        ),
        (
            "oversized CSR",
            certify_request("shop", "checkout", &token, vec![0x30; 20_000]),
            Code::InvalidArgument,
            "at most 16384",
        ),
        (
            "service that is not a DNS label",
            certify_request("shop", "Check_Out", &token, csr().1),
            Code::InvalidArgument,
            "service `Check_Out` is not valid",
        ),
        (
            "no workload",
            CertifyRequest {
                workload: None,
                csr_der: csr().1,
                token: token.clone(),
            },
            Code::InvalidArgument,
            "`workload` is required",
        ),
    ];
    for (name, request, code, message) in cases {
        let status = client
            .certify(request)
            .await
            .expect_err(&format!("{name}: must be refused"));
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: {:?} should contain {message:?}",
            status.message()
        );
    }

    // A CSR whose signature does not verify: the requester does not hold the key.
    let (_, mut forged) = csr();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let status = client
        .certify(certify_request("shop", "checkout", &token, forged))
        .await
        .expect_err("bad CSR signature");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("signature does not verify"),
        "{status:?}"
    );

    // Watch needs a workload certificate before anything else (the control plane has its
    // own tests).
    let status = client
        .watch(WatchRequest::default())
        .await
        .expect_err("Watch needs a certificate");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status
            .message()
            .contains("needs the workload's mesh certificate"),
        "{status:?}"
    );

    // And after all that, the right request still works.
    let response = client
        .certify(certify_request("shop", "checkout", &token, csr().1))
        .await
        .expect("a good request")
        .into_inner();
    assert_eq!(
        response.spiffe_id,
        "spiffe://cluster.local/ns/shop/svc/checkout"
    );
}

#[tokio::test]
async fn a_restart_keeps_the_ca_and_the_tokens() {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    let first = Controller::start(&state, &["--cert-lifetime", "1h"]);
    let token = cli_token(&state, "default", "payments", "24h");
    let before = first
        .client()
        .await
        .certify(certify_request("default", "payments", &token, csr().1))
        .await
        .expect("Certify")
        .into_inner();
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("now")
            .as_secs(),
    )
    .expect("fits");
    assert!(
        (before.not_after_unix - now - 3600).abs() <= 120,
        "--cert-lifetime 1h"
    );
    let log = first.log();
    assert!(log.contains("created a new mesh CA"), "{log}");
    assert!(stop(first).await.success());

    let second = Controller::start(&state, &[]);
    let after = second
        .client()
        .await
        .certify(certify_request("default", "payments", &token, csr().1))
        .await
        .expect("the token from before the restart still works")
        .into_inner();
    assert_eq!(after.trust_roots_der, before.trust_roots_der, "same CA");
    verify_as_client_cert(
        &before.certificate_der,
        &after.trust_roots_der,
        SystemTime::now(),
    )
    .expect("certificates from before the restart stay valid");
    assert!(second.log().contains("loaded the mesh CA"));
}

#[tokio::test]
async fn a_ca_from_files_signs_and_verifies() {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    let (cert, key) = (temp.path().join("ca.pem"), temp.path().join("ca-key.pem"));
    // A CA made by openssl exercises encodings rcgen did not choose (PrintableString names,
    // its own extensions): that is the point of the test, so a failing openssl fails it.
    if !have("openssl") {
        return skip(
            "a_ca_from_files_signs_and_verifies",
            "`openssl` not installed",
        );
    }
    let openssl = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/C=DE/O=Example Corp/CN=Example Mesh Root",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        openssl.status.success(),
        "openssl could not make the CA: {}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    let controller = Controller::start(
        &state,
        &[
            "--ca-cert",
            cert.to_str().expect("utf-8"),
            "--ca-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let token = cli_token(&state, "default", "web", "1h");
    let response = controller
        .client()
        .await
        .certify(certify_request("default", "web", &token, csr().1))
        .await
        .unwrap_or_else(|s| panic!("Certify: {s:?}\n{}", controller.log()))
        .into_inner();
    let given = x509_parser::pem::parse_x509_pem(&std::fs::read(&cert).expect("read"))
        .expect("PEM")
        .1
        .contents;
    assert_eq!(response.trust_roots_der, vec![given]);
    verify_as_client_cert(
        &response.certificate_der,
        &response.trust_roots_der,
        SystemTime::now(),
    )
    .expect("the leaf chains to the operator's CA");
    assert!(
        !state.join("ca").exists(),
        "no CA is generated when one is given"
    );
}

#[test]
fn the_controller_refuses_to_start_on_bad_input() {
    let temp = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("controller")
            .arg("--state-dir")
            .arg(temp.path().join("state"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(repo_root())
            .output()
            .expect("run sluice")
    };
    let out = run(&["--policy", "examples/invalid"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `alow`"), "{stderr}");

    let out = run(&["--cert-lifetime", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));

    let out = run(&["--ca-cert", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2), "--ca-cert needs --ca-key");

    let bogus = temp.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").expect("write");
    let bogus = bogus.to_str().expect("utf-8");
    let out = run(&["--ca-cert", bogus, "--ca-key", bogus]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid mesh CA"), "{stderr}");
}

#[test]
fn the_token_command_validates_names() {
    let temp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["identity", "token", "--state-dir"])
        .arg(temp.path())
        .args(["--service", "Payments"])
        .output()
        .expect("run sluice");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("service `Payments` is not valid"),
        "{stderr}"
    );
    assert!(
        !temp.path().join("token.key").exists(),
        "nothing is created for a bad name"
    );

    let token = cli_token(temp.path(), "default", "payments", "5m");
    let key = TokenKey::load_or_create(temp.path()).expect("key");
    assert_eq!(
        key.verify(&token, SystemTime::now()).expect("valid"),
        WorkloadIdentity::new("default", "payments").expect("identity")
    );
    assert!(
        key.verify(&token, SystemTime::now() + Duration::from_secs(301))
            .is_err()
    );
}

/// Renewal: `Certify` on a connection that presents the current certificate needs no token, so
/// a bootstrap token only has to live until the first certificate. The certificate, like a
/// token, only yields certificates for its own workload.
#[tokio::test]
async fn renewal_needs_only_the_current_certificate_not_the_token() {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    let controller = Controller::start(&state, &[]);
    let token = cli_token(&state, "shop", "checkout", "1h");
    let (key, der) = csr();
    let first = controller
        .client()
        .await
        .certify(certify_request("shop", "checkout", &token, der))
        .await
        .expect("the first certificate, with the token")
        .into_inner();
    let current = common::WorkloadCert {
        chain: vec![CertificateDer::from(first.certificate_der.clone())],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };

    // The token has expired since (made here with an expiry an hour ago, signed with the
    // controller's own key): it proves nothing any more.
    let key_bytes = std::fs::read(state.join("token.key")).expect("the token key");
    let expired = TokenKey::from_bytes(&key_bytes)
        .expect("a token key")
        .issue(
            &WorkloadIdentity::new("shop", "checkout").expect("identity"),
            Duration::from_secs(60),
            SystemTime::now() - HOUR,
        );
    let refused = controller
        .client()
        .await
        .certify(certify_request("shop", "checkout", &expired, csr().1))
        .await
        .expect_err("an expired token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("expired"), "{refused:?}");

    // With the current certificate, no token (or the expired one) is needed.
    let mut renewing = controller.client_with(&current).await;
    for token in ["", expired.as_str()] {
        let renewed = renewing
            .certify(certify_request("shop", "checkout", token, csr().1))
            .await
            .expect("renewal with the current certificate")
            .into_inner();
        assert_eq!(
            renewed.spiffe_id,
            "spiffe://cluster.local/ns/shop/svc/checkout"
        );
        assert_ne!(renewed.certificate_der, first.certificate_der);
        verify_as_client_cert(
            &renewed.certificate_der,
            &renewed.trust_roots_der,
            SystemTime::now(),
        )
        .expect("the renewed certificate verifies");
    }

    // A valid token for payments does not turn checkout's connection into payments'.
    let payments = cli_token(&state, "shop", "payments", "1h");
    let denied = renewing
        .certify(certify_request("shop", "payments", &payments, csr().1))
        .await
        .expect_err("checkout's certificate asking for payments");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("client certificate is for shop/checkout"),
        "{denied:?}"
    );
}

/// The controller proves itself: its certificate chains to the mesh CA and names
/// `spiffe://<trust-domain>/sluice/controller`; a client trusting another CA does not connect.
#[tokio::test]
async fn the_controller_proves_itself_with_the_mesh_ca() {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    let controller = Controller::start(&state, &[]);
    assert!(
        controller
            .log()
            .contains("identity=\"spiffe://cluster.local/sluice/controller\""),
        "{}",
        controller.log()
    );

    let other = MeshCa::generate(SystemTime::now()).expect("another CA");
    let roots = sluice_api::tls::roots_from_pem(other.cert_pem.as_bytes())
        .expect("the other CA's certificate");
    let config = sluice_api::tls::client_config(roots, None).expect("config");
    let result = controller
        .endpoint()
        .connect_with_connector(sluice_api::tls::Connector::new(config))
        .await;
    assert!(result.is_err(), "a client trusting another CA connected");
    // The right CA connects (what every other test does).
    controller.client().await;
}
