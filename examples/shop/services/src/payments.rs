//! payments: charges and refunds, over HTTP and over gRPC (`payments.v1.Payments`).
//!
//! Instances share no state. So that a lookup works on whichever version the route picks —
//! during a canary, a charge made on v1 may well be looked up on v2 — a charge id carries its
//! amount and currency (`ch_<random>_<amount>_<currency>`): an instance that has not seen the
//! charge still answers for it, as a charge that succeeded and has no refunds here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use http::{Method, StatusCode};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;

use crate::proto;
use crate::proto::payments_server::{Payments, PaymentsServer};
use crate::serve::{self, Identity, Request, Response, VERSION_HEADER};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Charge {
    pub id: String,
    /// In cents.
    pub amount: i64,
    pub currency: String,
    /// `succeeded`, `partially_refunded` or `refunded`.
    pub status: String,
    /// Cents refunded so far.
    pub refunded: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refund {
    pub id: String,
    pub charge_id: String,
    pub amount: i64,
    pub status: &'static str,
}

/// Why a refund was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RefundError {
    UnknownCharge,
    TooMuch { left: i64 },
    Negative,
}

/// The charges and refunds this instance made (or was asked about).
#[derive(Debug, Default)]
pub struct Ledger {
    charges: Mutex<HashMap<String, Charge>>,
}

impl Ledger {
    pub fn charge(&self, amount: i64, currency: &str) -> Charge {
        let random: u64 = rand::rng().random();
        let currency = currency.to_ascii_uppercase();
        let charge = Charge {
            id: format!("ch_{random:016x}_{amount}_{currency}"),
            amount,
            currency,
            status: "succeeded".to_owned(),
            refunded: 0,
        };
        self.lock().insert(charge.id.clone(), charge.clone());
        charge
    }

    pub fn get(&self, id: &str) -> Option<Charge> {
        let mut charges = self.lock();
        if let Some(c) = charges.get(id) {
            return Some(c.clone());
        }
        // Made by another instance: the id says what it was.
        let charge = from_id(id)?;
        charges.insert(id.to_owned(), charge.clone());
        Some(charge)
    }

    /// Refunds `amount` cents of a charge, or what is left of it when `amount` is 0.
    pub fn refund(&self, charge_id: &str, amount: i64) -> Result<Refund, RefundError> {
        if amount < 0 {
            return Err(RefundError::Negative);
        }
        // Looks the charge up first, so that one made elsewhere is known.
        self.get(charge_id).ok_or(RefundError::UnknownCharge)?;
        let mut charges = self.lock();
        let charge = charges
            .get_mut(charge_id)
            .ok_or(RefundError::UnknownCharge)?;
        let left = charge.amount - charge.refunded;
        let amount = if amount == 0 { left } else { amount };
        if amount > left || amount == 0 {
            return Err(RefundError::TooMuch { left });
        }
        charge.refunded += amount;
        charge.status = if charge.refunded == charge.amount {
            "refunded"
        } else {
            "partially_refunded"
        }
        .to_owned();
        let random: u64 = rand::rng().random();
        Ok(Refund {
            id: format!("re_{random:016x}"),
            charge_id: charge_id.to_owned(),
            amount,
            status: "succeeded",
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Charge>> {
        // Nothing can be left half-written by a panic in here; keep serving.
        self.charges.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `ch_<16 hex>_<amount>_<currency>` → the charge as it was made.
fn from_id(id: &str) -> Option<Charge> {
    let mut parts = id.strip_prefix("ch_")?.split('_');
    let (random, amount, currency) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = parts.next().is_none()
        && random.len() == 16
        && random.bytes().all(|b| b.is_ascii_hexdigit())
        && currency.len() == 3
        && currency.bytes().all(|b| b.is_ascii_uppercase());
    let amount: i64 = amount.parse().ok().filter(|a| *a > 0)?;
    valid.then(|| Charge {
        id: id.to_owned(),
        amount,
        currency: currency.to_owned(),
        status: "succeeded".to_owned(),
        refunded: 0,
    })
}

/// Serves HTTP on `http` and gRPC on `grpc` until `shutdown` resolves.
pub async fn run(
    http: TcpListener,
    grpc: TcpListener,
    id: Arc<Identity>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let ledger = Arc::new(Ledger::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let grpc_server = {
        let service = GrpcPayments {
            id: id.clone(),
            ledger: ledger.clone(),
        };
        let mut stopped = stopped.clone();
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            PaymentsServer::new(service),
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )
    };
    let http_server = {
        let mut stopped = stopped.clone();
        serve::serve(
            http,
            id,
            move |req| {
                let ledger = ledger.clone();
                async move { route(req, &ledger).await }
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let (grpc_result, ()) = tokio::join!(grpc_server, http_server);
    grpc_result
}

#[derive(Deserialize)]
struct NewCharge {
    amount: i64,
    #[serde(default = "euro")]
    currency: String,
}

fn euro() -> String {
    "EUR".to_owned()
}

#[derive(Deserialize)]
struct NewRefund {
    charge_id: String,
    #[serde(default)]
    amount: i64,
}

async fn route(req: Request, ledger: &Ledger) -> Response {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => serve::healthz(),
        (Method::POST, "/v1/charges") => {
            let new: NewCharge = match serve::body_json(req).await {
                Ok(n) => n,
                Err(res) => return res,
            };
            let currency_ok =
                new.currency.len() == 3 && new.currency.bytes().all(|b| b.is_ascii_alphabetic());
            if new.amount <= 0 || !currency_ok {
                return serve::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "a charge needs a positive `amount` in cents and a 3-letter `currency`",
                );
            }
            let charge = ledger.charge(new.amount, &new.currency);
            serve::json(StatusCode::CREATED, &json!(charge))
        }
        (Method::POST, "/v1/refunds") => {
            let new: NewRefund = match serve::body_json(req).await {
                Ok(n) => n,
                Err(res) => return res,
            };
            match ledger.refund(&new.charge_id, new.amount) {
                Ok(refund) => serve::json(StatusCode::CREATED, &json!(refund)),
                Err(e) => {
                    let (status, message) = refund_error(&new.charge_id, &e);
                    serve::error(status, message)
                }
            }
        }
        (Method::GET, _) => match serve::path_param(&path, "/v1/charges/") {
            Some(charge_id) => match ledger.get(charge_id) {
                Some(c) => serve::json(StatusCode::OK, &json!(c)),
                None => serve::error(StatusCode::NOT_FOUND, format!("no charge `{charge_id}`")),
            },
            None => serve::not_found(),
        },
        _ => serve::not_found(),
    }
}

fn refund_error(charge_id: &str, e: &RefundError) -> (StatusCode, String) {
    match e {
        RefundError::UnknownCharge => (StatusCode::NOT_FOUND, format!("no charge `{charge_id}`")),
        RefundError::TooMuch { left } => (
            StatusCode::CONFLICT,
            format!("only {left} cents of `{charge_id}` are left to refund"),
        ),
        RefundError::Negative => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "a refund's `amount` cannot be negative".to_owned(),
        ),
    }
}

/// The gRPC face of the same ledger.
struct GrpcPayments {
    id: Arc<Identity>,
    ledger: Arc<Ledger>,
}

impl GrpcPayments {
    /// Latency, injected failures, the version in the metadata and the request log line: what
    /// [`serve::serve`] does for HTTP.
    async fn handle<T>(
        &self,
        method: &str,
        answer: impl FnOnce() -> Result<T, tonic::Status>,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let start = Instant::now();
        let path = format!("/payments.v1.Payments/{method}");
        self.id.faults.delay().await;
        let result = if self.id.faults.fail() {
            Err(tonic::Status::unavailable(format!(
                "injected failure (SHOP_ERROR_RATE) in payments {}",
                self.id.version
            )))
        } else {
            answer()
        };
        let version = MetadataValue::try_from(self.id.version.as_str())
            .unwrap_or(MetadataValue::from_static("unknown"));
        let result = match result {
            Ok(reply) => {
                let mut res = tonic::Response::new(reply);
                res.metadata_mut().insert(VERSION_HEADER, version);
                Ok(res)
            }
            Err(mut status) => {
                status.metadata_mut().insert(VERSION_HEADER, version);
                Err(status)
            }
        };
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        serve::log_request("POST", &path, format!("grpc {code:?}"), start);
        result
    }
}

#[tonic::async_trait]
impl Payments for GrpcPayments {
    async fn refund(
        &self,
        request: tonic::Request<proto::RefundRequest>,
    ) -> Result<tonic::Response<proto::RefundReply>, tonic::Status> {
        let req = request.into_inner();
        self.handle("Refund", || {
            self.ledger
                .refund(&req.charge_id, req.amount)
                .map(|r| proto::RefundReply {
                    refund_id: r.id,
                    charge_id: r.charge_id,
                    amount: r.amount,
                    status: r.status.to_owned(),
                })
                .map_err(|e| {
                    let (_, message) = refund_error(&req.charge_id, &e);
                    match e {
                        RefundError::UnknownCharge => tonic::Status::not_found(message),
                        RefundError::TooMuch { .. } => tonic::Status::failed_precondition(message),
                        RefundError::Negative => tonic::Status::invalid_argument(message),
                    }
                })
        })
        .await
    }

    async fn get_charge(
        &self,
        request: tonic::Request<proto::GetChargeRequest>,
    ) -> Result<tonic::Response<proto::Charge>, tonic::Status> {
        let id = request.into_inner().id;
        self.handle("GetCharge", || match self.ledger.get(&id) {
            Some(c) => Ok(proto::Charge {
                id: c.id,
                amount: c.amount,
                currency: c.currency,
                status: c.status,
                refunded: c.refunded,
            }),
            None => Err(tonic::Status::not_found(format!("no charge `{id}`"))),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_instance_s_charge_is_known_by_its_id() {
        let here = Ledger::default();
        let charge = here.charge(2400, "eur");
        let elsewhere = Ledger::default();
        assert_eq!(elsewhere.get(&charge.id), Some(charge));
        assert_eq!(elsewhere.get("ch_nothex_12_EUR"), None);
        assert_eq!(elsewhere.get("ch_0123456789abcdef_-5_EUR"), None);
    }

    #[test]
    fn refunds_never_exceed_the_charge() {
        let ledger = Ledger::default();
        let charge = ledger.charge(1000, "EUR");
        assert_eq!(ledger.refund(&charge.id, 400).map(|r| r.amount), Ok(400));
        assert_eq!(
            ledger.refund(&charge.id, 700).map(|r| r.amount),
            Err(RefundError::TooMuch { left: 600 })
        );
        assert_eq!(ledger.refund(&charge.id, 0).map(|r| r.amount), Ok(600));
        assert_eq!(
            ledger.get(&charge.id).map(|c| c.status),
            Some("refunded".into())
        );
        assert_eq!(
            ledger.refund(&charge.id, 0).map(|r| r.amount),
            Err(RefundError::TooMuch { left: 0 })
        );
        assert_eq!(
            ledger.refund("ch_nope", 1).map(|r| r.amount),
            Err(RefundError::UnknownCharge)
        );
    }
}
