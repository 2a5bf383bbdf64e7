//! The shop's services as real processes on loopback, called over real HTTP and gRPC.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Shop, client, request, respond, stub};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_shop::proto::RefundRequest;
use sluice_shop::proto::payments_client::PaymentsClient;

const JSON: (&str, &str) = ("content-type", "application/json");

/// Catalog, payments and checkout, wired to each other by URL as the mesh file would.
fn backend() -> (Shop, Shop, Shop) {
    let catalog = Shop::start("catalog", &[]);
    let payments = Shop::start("payments", &[("SHOP_VERSION", "v2")]);
    let checkout = Shop::start(
        "checkout",
        &[
            ("SHOP_CATALOG_URL", &catalog.url()),
            ("SHOP_PAYMENTS_URL", &payments.url()),
        ],
    );
    (catalog, payments, checkout)
}

#[tokio::test]
async fn an_order_goes_through_catalog_and_payments() {
    let (catalog, payments, checkout) = backend();
    let c = client();

    let order = request(
        &c,
        Method::POST,
        &format!("{}/v1/orders", checkout.url()),
        &[JSON],
        r#"{"product_id": "ceramic-mug", "quantity": 2}"#,
    )
    .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.text());
    assert_eq!(order.headers["shop-version"], "v1");
    let order = order.json();
    assert_eq!(order["status"], "paid");
    assert_eq!(order["amount"], 2 * 1800);
    let charge_id = order["charge_id"].as_str().unwrap();

    // checkout charged, then looked the charge up: the call the mesh will deny.
    payments.log_with("POST /v1/charges 201");
    payments.log_with(&format!("GET /v1/charges/{charge_id} 200"));
    catalog.log_with("GET /v1/products/ceramic-mug 200");

    let again = request(
        &c,
        Method::GET,
        &format!(
            "{}/v1/orders/{}",
            checkout.url(),
            order["id"].as_str().unwrap()
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), order);

    // What payments says about the charge, and that it answers as v2.
    let charge = request(
        &c,
        Method::GET,
        &format!("{}/v1/charges/{charge_id}", payments.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(charge.headers["shop-version"], "v2");
    assert_eq!(charge.json()["amount"], 3600);

    let unknown = request(
        &c,
        Method::POST,
        &format!("{}/v1/orders", checkout.url()),
        &[JSON],
        r#"{"product_id": "tea"}"#,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
}

#[tokio::test]
async fn the_web_shop_lists_products_and_places_orders() {
    let (catalog, _payments, checkout) = backend();
    let frontend = Shop::start(
        "frontend",
        &[
            ("SHOP_CATALOG_URL", &catalog.url()),
            ("SHOP_CHECKOUT_URL", &checkout.url()),
        ],
    );
    let c = client();
    let home = request(&c, Method::GET, &frontend.url(), &[], "").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        home.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = home.text();
    assert!(
        page.contains("Espresso beans") && page.contains("€24.00"),
        "{page}"
    );
    assert!(page.contains(r#"action="/checkout""#));

    let bought = request(
        &c,
        Method::POST,
        &format!("{}/checkout", frontend.url()),
        &[("content-type", "application/x-www-form-urlencoded")],
        "product_id=paper-filters&quantity=3",
    )
    .await;
    assert_eq!(bought.status, StatusCode::OK, "{}", bought.text());
    assert!(bought.text().contains("Thank you!"));
    assert!(bought.text().contains("€19.50"));
}

#[tokio::test]
async fn the_frontend_passes_trace_context_and_baggage_on() {
    let products = json!({ "products": [] }).to_string();
    let (catalog, seen) = stub(move |_, _| respond(200, &[JSON], products.clone())).await;
    let frontend = Shop::start(
        "frontend",
        &[
            ("SHOP_CATALOG_URL", &format!("http://{catalog}")),
            ("SHOP_CHECKOUT_URL", "http://127.0.0.1:9"),
        ],
    );
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let home = request(
        &client(),
        Method::GET,
        &frontend.url(),
        &[
            ("traceparent", traceparent),
            ("baggage", "sluice-env=payments-v2"),
            ("cookie", "session=secret"),
        ],
        "",
    )
    .await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.text());
    let seen = seen.lock().unwrap();
    let (_, path, headers) = &seen[0];
    assert_eq!(path, "/v1/products");
    assert_eq!(headers["traceparent"], traceparent);
    assert_eq!(headers["baggage"], "sluice-env=payments-v2");
    assert!(
        headers.get("cookie").is_none(),
        "only trace context and baggage travel"
    );
}

/// The mesh's answer to checkout's `GET /v1/charges/{id}`, as the proxy renders it.
fn denial() -> Value {
    let link = "http://localhost:7070/access/new?from=checkout&to=payments&rpc=GET%20%2Fv1%2Fcharges%2F%7Bid%7D&env=stable";
    json!({
        "type": "https://sluice.dev/problems/rpc-not-authorized",
        "title": "Call not allowed by the mesh",
        "status": 403,
        "detail": format!("checkout is not allowed to call GET /v1/charges/{{id}} on payments. Request access: {link}"),
        "caller": "checkout",
        "service": "payments",
        "rpc": "GET /v1/charges/{id}",
        "policy": "no policy allows this",
        "environment": "stable",
        "requestAccess": link,
        "requestId": "9f1c2d3e",
    })
}

/// A payments that charges, but whose sidecar denies looking a charge up; `mesh: false`
/// makes it the application's own 403 instead (no `sluice-denied-by`).
async fn denying_payments(mesh: bool) -> String {
    let (addr, _) = stub(move |method, path| {
        if method == Method::POST && path == "/v1/charges" {
            let charge = json!({ "id": "ch_1", "amount": 2400, "status": "succeeded" });
            return respond(201, &[JSON], charge.to_string());
        }
        let mut headers = vec![("content-type", "application/problem+json")];
        if mesh {
            headers.push(("sluice-denied-by", "payments"));
            headers.push(("link", "<http://localhost:7070/access/new>; rel=\"help\""));
        }
        respond(403, &headers, denial().to_string())
    })
    .await;
    format!("http://{addr}")
}

#[tokio::test]
async fn checkout_passes_a_mesh_denial_on_intact() {
    let catalog = Shop::start("catalog", &[]);
    let payments = denying_payments(true).await;
    let checkout = Shop::start(
        "checkout",
        &[
            ("SHOP_CATALOG_URL", &catalog.url()),
            ("SHOP_PAYMENTS_URL", &payments),
        ],
    );
    let c = client();
    let order = request(
        &c,
        Method::POST,
        &format!("{}/v1/orders", checkout.url()),
        &[JSON],
        r#"{"product_id": "espresso-beans"}"#,
    )
    .await;
    assert_eq!(order.status, StatusCode::BAD_GATEWAY);
    assert_eq!(order.headers["content-type"], "application/json");
    let body = order.json();
    assert_eq!(body["dependency"], "payments");
    assert_eq!(body["call"], "GET /v1/charges/ch_1");
    assert_eq!(body["denial"], denial(), "the denial must arrive untouched");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Request access: http://localhost:7070/")
    );

    // One log line with the denial's sentence, link included.
    let detail = denial()["detail"].as_str().unwrap().to_owned();
    let lines = checkout.log_with(&detail);
    assert_eq!(
        lines.iter().filter(|l| l.contains(&detail)).count(),
        1,
        "{lines:#?}"
    );

    // The web shop shows it with a button to ask for access.
    let frontend = Shop::start(
        "frontend",
        &[
            ("SHOP_CATALOG_URL", &catalog.url()),
            ("SHOP_CHECKOUT_URL", &checkout.url()),
        ],
    );
    let page = request(
        &c,
        Method::POST,
        &format!("{}/checkout", frontend.url()),
        &[("content-type", "application/x-www-form-urlencoded")],
        "product_id=espresso-beans&quantity=1",
    )
    .await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    let html = page.text();
    assert!(html.contains("Denied by the mesh"), "{html}");
    assert!(html.contains("checkout is not allowed to call GET /v1/charges/{id} on payments."));
    assert!(html.contains(
        r#"<a class="button" href="http://localhost:7070/access/new?from=checkout&amp;to=payments"#
    ));
}

#[tokio::test]
async fn an_application_403_is_not_passed_off_as_a_denial() {
    let catalog = Shop::start("catalog", &[]);
    let payments = denying_payments(false).await;
    let checkout = Shop::start(
        "checkout",
        &[
            ("SHOP_CATALOG_URL", &catalog.url()),
            ("SHOP_PAYMENTS_URL", &payments),
        ],
    );
    let order = request(
        &client(),
        Method::POST,
        &format!("{}/v1/orders", checkout.url()),
        &[JSON],
        r#"{"product_id": "espresso-beans"}"#,
    )
    .await;
    assert_eq!(order.status, StatusCode::BAD_GATEWAY);
    let body = order.json();
    assert!(body.get("denial").is_none(), "{body}");
    assert_eq!(body["status"], 403);
    assert_eq!(body["dependency"], "payments");
}

#[tokio::test]
async fn an_error_rate_of_half_fails_about_half() {
    let catalog = Shop::start("catalog", &[("SHOP_ERROR_RATE", "0.5")]);
    let c = client();
    let url = format!("{}/v1/products", catalog.url());
    let mut failed = 0;
    for _ in 0..400 {
        let res = request(&c, Method::GET, &url, &[], "").await;
        match res.status {
            StatusCode::OK => {}
            StatusCode::INTERNAL_SERVER_ERROR => failed += 1,
            other => panic!("unexpected {other}"),
        }
        assert_eq!(res.headers["shop-version"], "v1");
    }
    // Binomial(400, 0.5): mean 200, standard deviation 10. Six deviations either side.
    assert!((140..=260).contains(&failed), "{failed} of 400 failed");

    // Health checks are spared: a bad version is judged by its traffic, not its probes.
    let health = format!("{}/healthz", catalog.url());
    for _ in 0..50 {
        assert_eq!(
            request(&c, Method::GET, &health, &[], "").await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn latency_is_added() {
    let catalog = Shop::start(
        "catalog",
        &[("SHOP_LATENCY", "150ms"), ("SHOP_LATENCY_JITTER", "50ms")],
    );
    let c = client();
    let url = format!("{}/v1/products/ceramic-mug", catalog.url());
    for _ in 0..3 {
        let start = Instant::now();
        let res = request(&c, Method::GET, &url, &[], "").await;
        assert_eq!(res.status, StatusCode::OK);
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn refunds_work_over_grpc() {
    let payments = Shop::start("payments", &[("SHOP_VERSION", "v2")]);
    let c = client();
    let charge = request(
        &c,
        Method::POST,
        &format!("{}/v1/charges", payments.url()),
        &[JSON],
        r#"{"amount": 5000, "currency": "EUR"}"#,
    )
    .await;
    assert_eq!(charge.status, StatusCode::CREATED, "{}", charge.text());
    let charge = charge.json();
    assert_eq!(charge["status"], "succeeded");
    let charge_id = charge["id"].as_str().unwrap().to_owned();

    let mut grpc = PaymentsClient::connect(format!("http://{}", payments.grpc.unwrap()))
        .await
        .unwrap();
    let reply = grpc
        .refund(RefundRequest {
            charge_id: charge_id.clone(),
            amount: 2000,
        })
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("shop-version").unwrap(), "v2");
    let refund = reply.into_inner();
    assert_eq!((refund.amount, refund.status.as_str()), (2000, "succeeded"));

    // The HTTP side sees the gRPC refund: one ledger.
    let after = request(
        &c,
        Method::GET,
        &format!("{}/v1/charges/{charge_id}", payments.url()),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(
        (after["refunded"].as_i64(), after["status"].as_str()),
        (Some(2000), Some("partially_refunded"))
    );

    let unknown = grpc
        .refund(RefundRequest {
            charge_id: "ch_nope".into(),
            amount: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    payments.log_with("POST /payments.v1.Payments/Refund grpc Ok");

    // An injected failure is UNAVAILABLE.
    let failing = Shop::start("payments", &[("SHOP_ERROR_RATE", "1")]);
    let mut grpc = PaymentsClient::connect(format!("http://{}", failing.grpc.unwrap()))
        .await
        .unwrap();
    let status = grpc
        .refund(RefundRequest {
            charge_id,
            amount: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let payments = Shop::start("payments", &[]);
    let status = payments.terminate();
    assert!(status.success(), "{status}");
}
