//! Authorization between two real proxies over mTLS: allowed calls carry the verified caller,
//! denied calls get the denial in every format (problem+json, text, HTML, gRPC rich status),
//! audit mode, exemptions for plaintext callers, header spoofing, and policy changes reaching
//! open connections.

use std::path::Path;
use std::time::Duration;

use sluice_integration::client::{curl, get, hyper_client};
use sluice_integration::mtls::{Pair, PairOptions, counter, eventually, policy, spiffe};
use sluice_integration::{have, skip, upstream};

const LINK: &str =
    "http://portal.test/access/new?from=checkout&to=payments&rpc=POST%20%2Fv1%2Fcharges&env=stable";

#[tokio::test(flavor = "multi_thread")]
async fn allowed_call_carries_the_verified_caller_and_spoofing_is_stripped() {
    let pair = Pair::start(PairOptions::default()).await;
    let client = hyper_client(false);
    let rsp = get(
        &client,
        pair.outbound(),
        "/v1/charges/42",
        &[(
            "sluice-client-id",
            "spiffe://test.local/ns/default/svc/admin",
        )],
    )
    .await
    .expect("request");
    assert_eq!(rsp.status, 200, "{}", rsp.body);
    let seen = rsp.json();
    assert_eq!(seen["headers"]["sluice-client-id"], spiffe("checkout"));
    // HTTP/2 stays HTTP/2 across the mTLS hop (ALPN).
    let rsp = get(&hyper_client(true), pair.outbound(), "/v1/charges/7", &[])
        .await
        .expect("h2 request");
    assert_eq!(rsp.status, 200, "{}", rsp.body);
    assert_eq!(rsp.json()["version"], "HTTP/2.0");
    let allowed = counter(
        &pair.server,
        "sluice_proxy_authz_allow_total",
        &[
            r#"caller="checkout""#,
            r#"rpc="GET /v1/charges/{id}""#,
            r#"policy="payments-callers""#,
        ],
    )
    .await;
    assert_eq!(allowed, 2.0);

    // A plaintext caller cannot claim an identity either: the header is stripped and it is
    // treated as unauthenticated (the exemption lets it reach /healthz).
    let rsp = get(
        &client,
        pair.inbound(),
        "/healthz",
        &[("sluice-client-id", &spiffe("checkout"))],
    )
    .await
    .expect("request");
    assert_eq!(rsp.status, 200, "{}", rsp.body);
    assert!(rsp.json()["headers"].get("sluice-client-id").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_call_gets_problem_json_text_and_html() {
    let pair = Pair::start(PairOptions::default()).await;
    let url = format!("http://{}/v1/charges", pair.outbound());
    let out = curl(&["-i", "-X", "POST", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("response");
    assert!(head.starts_with("HTTP/1.1 403"), "{text}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(
        head.contains("sluice-denied-by: payments-0/payments"),
        "{head}"
    );
    assert!(
        head.contains(&format!("link: <{LINK}>; rel=\"help\"")),
        "{head}"
    );
    let p: serde_json::Value = serde_json::from_str(body).expect("problem+json");
    assert_eq!(p["type"], "https://sluice.dev/problems/rpc-not-authorized");
    assert_eq!(p["status"], 403);
    assert_eq!(p["caller"], "checkout");
    assert_eq!(p["service"], "payments");
    assert_eq!(p["rpc"], "POST /v1/charges");
    assert_eq!(p["policy"], "payments-callers");
    assert_eq!(p["environment"], "stable");
    assert_eq!(p["requestAccess"], LINK);
    assert!(p["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(p["title"].is_string());
    assert_eq!(
        p["detail"],
        format!(
            "checkout is not allowed to call POST /v1/charges on payments. Request access: {LINK}"
        )
    );
    assert_eq!(pair.app.hits(), 0, "a denied call never reaches the app");

    let out = curl(&["-X", "POST", "-H", "Accept: text/plain", &url]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "checkout is not allowed to call POST /v1/charges on payments. Request access: {LINK}\n"
        )
    );

    let out = curl(&["-X", "POST", "-H", "Accept: text/html,*/*;q=0.8", &url]).await;
    let html = String::from_utf8_lossy(&out.stdout);
    assert!(html.contains("<!doctype html>"), "{html}");
    assert!(
        html.contains(r#"class="button""#) && html.contains("Request access</a>"),
        "{html}"
    );
    assert!(html.contains(&LINK.replace('&', "&amp;")), "{html}");

    let denied = counter(
        &pair.server,
        "sluice_proxy_authz_deny_total",
        &[r#"caller="checkout""#, r#"rpc="POST /v1/charges""#],
    )
    .await;
    assert_eq!(denied, 3.0);
}

/// The environment a denial names: a stable (shared) callee names the one in the request's
/// `sluice-env` baggage, so a developer in `pr-7` sees `pr-7`; a client's value that is not a
/// DNS label is never echoed; a copy names its own environment.
#[tokio::test(flavor = "multi_thread")]
async fn denial_names_the_environment_the_call_came_from() {
    let problem = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).expect("problem+json")
    };
    let pair = Pair::start(PairOptions::default()).await;
    let url = format!("http://{}/v1/charges", pair.outbound());
    let post = |baggage: &'static str| {
        let url = url.clone();
        async move {
            curl(&[
                "-X",
                "POST",
                "-H",
                "accept: application/json",
                "-H",
                baggage,
                &url,
            ])
            .await
        }
    };
    let p = problem(post("baggage: team=web, sluice-env=pr-7;ttl=3").await);
    assert_eq!(p["status"], 403, "{p}");
    assert_eq!(p["environment"], "pr-7", "{p}");
    assert_eq!(p["requestAccess"], LINK.replace("env=stable", "env=pr-7"));
    for hostile in [
        "baggage: sluice-env=%3Cb%3Ehi%3C%2Fb%3E",
        "baggage: sluice-env=Pr-7",
        "baggage: sluice-env=",
    ] {
        let p = problem(post(hostile).await);
        assert_eq!(p["environment"], "stable", "{hostile}: {p}");
    }

    // Both proxies in environment pr-1: the callee is pr-1's copy, whatever the request says.
    let pair = Pair::start(PairOptions {
        env: vec![("SLUICE_PROXY_ENVIRONMENT".into(), "pr-1".into())],
        ..PairOptions::default()
    })
    .await;
    let url = format!("http://{}/v1/charges", pair.outbound());
    for baggage in ["baggage: sluice-env=pr-9", "baggage: a=b"] {
        let out = curl(&[
            "-X",
            "POST",
            "-H",
            "accept: application/json",
            "-H",
            baggage,
            &url,
        ])
        .await;
        let p = problem(out);
        assert_eq!(p["environment"], "pr-1", "{baggage}: {p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_client_decodes_the_rich_status_and_finds_the_help_link() {
    let available = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_status"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        return skip(
            "grpc_rich_status",
            "python3 with grpcio and grpcio-status not available",
        );
    }
    let pair = Pair::start(PairOptions::default()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/denial_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(pair.outbound().to_string())
        .output()
        .await
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["code"], "PERMISSION_DENIED", "{v}");
    let message = v["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "checkout is not allowed to call payments.v1.Payments/Refund on payments. Request access: http://portal.test/"
        ),
        "{message}"
    );
    assert_eq!(v["errorInfo"]["reason"], "RPC_NOT_AUTHORIZED");
    assert_eq!(v["errorInfo"]["domain"], "sluice.dev");
    assert_eq!(v["errorInfo"]["metadata"]["caller"], "checkout");
    assert_eq!(v["errorInfo"]["metadata"]["service"], "payments");
    assert_eq!(
        v["errorInfo"]["metadata"]["rpc"],
        "payments.v1.Payments/Refund"
    );
    assert_eq!(v["errorInfo"]["metadata"]["policy"], "payments-callers");
    let url = v["help"][0]["url"].as_str().expect("help link");
    assert!(url.contains("rpc=payments.v1.Payments%2FRefund"), "{url}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_mode_allows_and_counts_would_deny() {
    let pair = Pair::start(PairOptions {
        policy: policy("audit", "short"),
        ..PairOptions::default()
    })
    .await;
    let out = curl(&[
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/v1/charges", pair.outbound()),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(pair.app.hits(), 1);
    let would = counter(
        &pair.server,
        "sluice_proxy_authz_would_deny_total",
        &[r#"caller="checkout""#, r#"rpc="POST /v1/charges""#],
    )
    .await;
    assert_eq!(would, 1.0);
    assert!(pair.server.log().contains("would deny"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_callers_get_exemptions_and_the_short_form() {
    let pair = Pair::start(PairOptions::default()).await;
    let client = hyper_client(false);
    let ok = get(&client, pair.inbound(), "/healthz", &[])
        .await
        .expect("probe");
    assert_eq!(ok.status, 200);
    let denied = get(&client, pair.inbound(), "/v1/charges/1", &[])
        .await
        .expect("call");
    assert_eq!(denied.status, 403);
    let p = denied.json();
    assert_eq!(p["caller"], "unauthenticated");
    assert!(p.get("policy").is_none(), "short form names no policy: {p}");
    assert!(!denied.body.contains("payments-callers"), "{}", denied.body);
    assert!(denied.headers.contains_key("sluice-denied-by"));
    // A path the app could decode past the exemption is refused before policy is consulted.
    let tricky = get(&client, pair.inbound(), "/healthz/%2e%2e/v1/charges/1", &[])
        .await
        .expect("call");
    assert_eq!(tricky.status, 400, "{}", tricky.body);
    assert_eq!(pair.app.hits(), 1, "only the probe reached the app");

    // The mesh can opt in to full denials for unauthenticated callers.
    pair.set_policy(&policy("enforce", "full"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&client, pair.inbound(), "/v1/charges/1", &[])
                .await
                .is_ok_and(|r| r.json().get("policy").is_some())
        })
        .await,
        "unauthenticatedDenials: full was not applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_change_reaches_an_open_connection() {
    let pair = Pair::start(PairOptions::default()).await;
    // One client connection, kept alive throughout (and the proxies' pooled mTLS one).
    let client = hyper_client(false);
    let first = get(&client, pair.outbound(), "/v1/charges/1", &[])
        .await
        .expect("first");
    assert_eq!(first.status, 200);
    let revoked = policy("enforce", "short").replace(
        r#"allow: ["GET /v1/charges/{id}"]"#,
        r#"allow: ["POST /v1/charges"]"#,
    );
    pair.set_policy(&revoked);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&client, pair.outbound(), "/v1/charges/1", &[])
                .await
                .is_ok_and(|r| r.status == 403)
        })
        .await,
        "the open connection never saw the new policy"
    );
    let posted = curl(&[
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/v1/charges", pair.outbound()),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&posted.stdout), "200");
}

/// A response as `curl -i` prints it: status, headers (lower-cased names, in order), body.
fn parse_curl_i(out: &std::process::Output) -> (u16, Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block: {text}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn app_403_is_distinguishable_from_a_mesh_denial() {
    if !have("curl") {
        return skip("app_403", "curl not installed");
    }
    let pair = Pair::start(PairOptions::default()).await;
    let denied = curl(&[
        "-i",
        "-X",
        "POST",
        &format!("http://{}/v1/charges", pair.outbound()),
    ])
    .await;
    let (status, headers, _) = parse_curl_i(&denied);
    assert_eq!(status, 403);
    assert!(
        headers.iter().any(|(k, _)| k == "sluice-denied-by"),
        "{headers:?}"
    );

    // The app itself refuses an allowed call (`GET /v1/charges/{id}` is granted to checkout):
    // its 403 reaches the caller exactly as the app sent it, without the mesh's marker.
    let path = "/v1/charges/forbidden";
    let direct = parse_curl_i(&curl(&["-i", &format!("http://{}{path}", pair.app.addr)]).await);
    let meshed = parse_curl_i(&curl(&["-i", &format!("http://{}{path}", pair.outbound())]).await);
    assert_eq!((direct.0, direct.2.as_str()), (403, upstream::APP_403_BODY));
    assert_eq!(meshed.0, 403, "{meshed:?}");
    assert_eq!(meshed.2, direct.2, "the body passes through unchanged");
    for (name, value) in direct.1.iter().filter(|(k, _)| k != "date") {
        let through: Vec<&String> = meshed
            .1
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(through, vec![value], "header {name}: {meshed:?}");
    }
    let added: Vec<&(String, String)> = meshed
        .1
        .iter()
        .filter(|(k, _)| k != "date" && !direct.1.iter().any(|(d, _)| d == k))
        .collect();
    assert!(
        added.iter().all(|(k, _)| !k.starts_with("sluice-")),
        "the mesh marked the app's 403: {added:?}"
    );
    // Counted as a response, not as a mesh denial: only the POST above was denied.
    let denials = counter(&pair.server, "sluice_proxy_authz_deny_total", &[]).await;
    assert_eq!(denials, 1.0);
}
