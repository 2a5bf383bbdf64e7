//! catalog: products, prices and stock. Read-only and in memory.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::serve::{self, Identity, Request, Response};

#[derive(Debug, Clone, Serialize)]
pub struct Product {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    /// In cents.
    pub price: i64,
    pub currency: &'static str,
    pub stock: u32,
}

pub const PRODUCTS: &[Product] = &[
    Product {
        id: "espresso-beans",
        name: "Espresso beans",
        description: "1 kg of dark roast, chocolate and cherry.",
        price: 2400,
        currency: "EUR",
        stock: 42,
    },
    Product {
        id: "pour-over-kettle",
        name: "Pour-over kettle",
        description: "A gooseneck kettle for a steady pour.",
        price: 5900,
        currency: "EUR",
        stock: 7,
    },
    Product {
        id: "ceramic-mug",
        name: "Ceramic mug",
        description: "Hand-thrown, 300 ml, dishwasher safe.",
        price: 1800,
        currency: "EUR",
        stock: 120,
    },
    Product {
        id: "paper-filters",
        name: "Paper filters",
        description: "100 unbleached filters, size 02.",
        price: 650,
        currency: "EUR",
        stock: 300,
    },
];

pub fn product(id: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.id == id)
}

pub async fn run(listener: TcpListener, id: Arc<Identity>, shutdown: impl Future<Output = ()>) {
    serve::serve(listener, id, |req| async move { route(&req) }, shutdown).await;
}

fn route(req: &Request) -> Response {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => serve::healthz(),
        (&Method::GET, "/v1/products") => {
            serve::json(StatusCode::OK, &json!({ "products": PRODUCTS }))
        }
        (&Method::GET, _) => match serve::path_param(path, "/v1/products/") {
            Some(id) => match product(id) {
                Some(p) => serve::json(StatusCode::OK, &json!(p)),
                None => serve::error(StatusCode::NOT_FOUND, format!("no product `{id}`")),
            },
            None => serve::not_found(),
        },
        _ => serve::not_found(),
    }
}
