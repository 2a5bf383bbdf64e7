//! A webhook receiver for tests: a real HTTP/1.1 server on 127.0.0.1 that answers `200` and
//! keeps every request (path, `Idempotency-Key`, JSON body), like a team's Slack or generic
//! webhook endpoint would receive them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One received message.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request path, e.g. `/slack/payments`.
    pub path: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The body, parsed (`Null` if it was not JSON).
    pub body: serde_json::Value,
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct Inbox {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Inbox {
    /// Starts listening on 127.0.0.1, on a free port.
    pub fn start() -> Inbox {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = Arc::clone(&received);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            let path = req.uri().path().to_owned();
                            let idempotency_key = req
                                .headers()
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body =
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                            store.lock().expect("lock").push(Received {
                                path,
                                idempotency_key,
                                body,
                            });
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Inbox {
            addr,
            received,
            _runtime: runtime,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}
