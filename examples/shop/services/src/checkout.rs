//! checkout: turns an order into a paid order.
//!
//! `POST /v1/orders` asks catalog for the product's price, charges payments, and then looks
//! the charge up again to confirm it (`GET /v1/charges/{id}`). That last call is the one the
//! shop's policy does not grant out of the box: in the mesh it is denied, and checkout passes
//! the denial on to its caller intact (a 502 whose `denial` is the mesh's problem+json) and
//! logs its sentence, request-access link included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use http::{Method, StatusCode};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::client::{self, Failure, Upstream};
use crate::serve::{self, Identity, Request, Response};

#[derive(Debug, Clone, Serialize)]
pub struct Order {
    pub id: String,
    pub product_id: String,
    pub quantity: u32,
    /// In cents.
    pub amount: i64,
    pub currency: String,
    pub charge_id: String,
    pub status: &'static str,
}

struct Checkout {
    catalog: Upstream,
    payments: Upstream,
    orders: Mutex<HashMap<String, Order>>,
}

pub async fn run(
    listener: TcpListener,
    id: Arc<Identity>,
    catalog_url: &str,
    payments_url: &str,
    shutdown: impl Future<Output = ()>,
) {
    let state = Arc::new(Checkout {
        catalog: Upstream::new("catalog", catalog_url),
        payments: Upstream::new("payments", payments_url),
        orders: Mutex::default(),
    });
    serve::serve(
        listener,
        id,
        move |req| {
            let state = state.clone();
            async move { state.route(req).await }
        },
        shutdown,
    )
    .await;
}

#[derive(Deserialize)]
struct NewOrder {
    product_id: String,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

impl Checkout {
    async fn route(&self, req: Request) -> Response {
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/healthz") => serve::healthz(),
            (Method::POST, "/v1/orders") => self.place(req).await,
            (Method::GET, _) => match serve::path_param(&path, "/v1/orders/") {
                Some(order_id) => {
                    let order = self
                        .orders
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(order_id)
                        .cloned();
                    match order {
                        Some(o) => serve::json(StatusCode::OK, &json!(o)),
                        None => {
                            serve::error(StatusCode::NOT_FOUND, format!("no order `{order_id}`"))
                        }
                    }
                }
                None => serve::not_found(),
            },
            _ => serve::not_found(),
        }
    }

    async fn place(&self, req: Request) -> Response {
        let headers = client::propagated(req.headers());
        let new: NewOrder = match serve::body_json(req).await {
            Ok(n) => n,
            Err(res) => return res,
        };
        let id_ok = !new.product_id.is_empty()
            && new
                .product_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok || new.quantity == 0 || new.quantity > 100 {
            return serve::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "an order needs a `product_id` (letters, digits, `-`) and a `quantity` of 1–100",
            );
        }

        // 1. The price, from catalog.
        let product = match self
            .catalog
            .call(
                Method::GET,
                &format!("/v1/products/{}", new.product_id),
                &headers,
                None,
            )
            .await
        {
            Ok(reply) => reply.json().unwrap_or(Value::Null),
            Err(e) if matches!(e.kind, Failure::Status { status, .. } if status == StatusCode::NOT_FOUND) =>
            {
                return serve::error(
                    StatusCode::NOT_FOUND,
                    format!("no product `{}`", new.product_id),
                );
            }
            Err(e) => return e.into_response(),
        };
        let (Some(price), Some(currency), Some(stock)) = (
            product.get("price").and_then(Value::as_i64),
            product.get("currency").and_then(Value::as_str),
            product.get("stock").and_then(Value::as_u64),
        ) else {
            return serve::error(
                StatusCode::BAD_GATEWAY,
                "catalog's product has no price, currency or stock",
            );
        };
        if u64::from(new.quantity) > stock {
            return serve::error(
                StatusCode::CONFLICT,
                format!("only {stock} of `{}` in stock", new.product_id),
            );
        }
        let amount = price * i64::from(new.quantity);

        // 2. The charge.
        let charge = match self
            .payments
            .call(
                Method::POST,
                "/v1/charges",
                &headers,
                Some(&json!({ "amount": amount, "currency": currency })),
            )
            .await
        {
            Ok(reply) => reply.json().unwrap_or(Value::Null),
            Err(e) => return e.into_response(),
        };
        let Some(charge_id) = charge.get("id").and_then(Value::as_str) else {
            return serve::error(StatusCode::BAD_GATEWAY, "payments' charge has no `id`");
        };

        // 3. Confirm it. Not granted by the shop's policy as shipped: the demo's denial.
        let confirmed = match self
            .payments
            .call(
                Method::GET,
                &format!("/v1/charges/{charge_id}"),
                &headers,
                None,
            )
            .await
        {
            Ok(reply) => reply.json().unwrap_or(Value::Null),
            Err(e) => return e.into_response(),
        };
        let status = confirmed.get("status").and_then(Value::as_str);
        if status != Some("succeeded") {
            return serve::error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "payments did not confirm charge `{charge_id}` (status {})",
                    status.unwrap_or("missing")
                ),
            );
        }

        let random: u64 = rand::rng().random();
        let order = Order {
            id: format!("ord_{random:016x}"),
            product_id: new.product_id,
            quantity: new.quantity,
            amount,
            currency: currency.to_owned(),
            charge_id: charge_id.to_owned(),
            status: "paid",
        };
        self.orders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(order.id.clone(), order.clone());
        serve::json(StatusCode::CREATED, &json!(order))
    }
}
