//! The proxy's upstream connection pool, seen from the upstream: which connection served
//! which request. Keep-alive reuse, HTTP/2 sharing, an upstream that closes idle
//! connections, and a response abandoned halfway (its connection must never serve the next
//! request, or that request would read the rest of the old body as its answer).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_integration::client::{self, hyper_client};
use sluice_integration::{Proxy, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, Infallible>;

/// An HTTP/1.1 and HTTP/2 upstream that numbers its connections and says, in `x-conn`,
/// which one served each request. `/endless` streams 16 KiB chunks until the connection
/// closes, `/empty` is a 204, anything else `ok`.
async fn numbered_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    numbered_listener(|stream, conn| async move {
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| async move {
            Ok::<_, Infallible>(answer(req.uri().path(), conn))
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
    .await
}

/// A loopback listener that numbers its connections (from 1) and serves each with `serve`,
/// in a task of its own; its address, and how many it accepted.
async fn numbered_listener<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve(stream, conn));
        }
    });
    (addr, accepted)
}

fn answer(path: &str, conn: usize) -> hyper::Response<Body> {
    let rsp = hyper::Response::builder().header("x-conn", conn.to_string());
    match path {
        // Endless, so that no socket buffer can take the rest of it: the only way to reuse
        // the connection after a caller abandons it would be to answer from its middle.
        "/endless" => {
            let chunks = futures_util::stream::repeat_with(|| {
                Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))
            });
            rsp.body(StreamBody::new(chunks).boxed())
        }
        "/empty" => rsp.status(204).body(Full::default().boxed()),
        _ => rsp.body(Full::new(Bytes::from_static(b"ok")).boxed()),
    }
    .expect("response")
}

fn proxy_to(target: SocketAddr) -> Proxy {
    Proxy::start(ProxyOptions::default().env(
        "SLUICE_PROXY_EXPLICIT_OUTBOUND",
        format!("127.0.0.1:0={target}"),
    ))
}

fn conn_of(reply: &client::Reply) -> String {
    reply
        .headers
        .get("x-conn")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_keep_alive_client_is_served_over_one_upstream_connection() {
    let (upstream, accepted) = numbered_upstream().await;
    let proxy = proxy_to(upstream);
    // One client connection, so that every request reaches the same proxy worker.
    let tcp = tokio::net::TcpStream::connect(proxy.explicit(0))
        .await
        .expect("connect");
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut conns = std::collections::BTreeSet::new();
    for i in 0..200 {
        // Bodiless answers must give their connection back too.
        let (method, path) = match i % 4 {
            0 => (http::Method::HEAD, "/"),
            1 => (http::Method::GET, "/empty"),
            _ => (http::Method::GET, "/"),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "web")
            .body(Full::<Bytes>::default())
            .expect("request");
        client.ready().await.expect("client connection");
        let rsp = client.send_request(req).await.expect("response");
        assert!(matches!(rsp.status().as_u16(), 200 | 204), "{rsp:?}");
        conns.insert(rsp.headers()["x-conn"].to_str().expect("x-conn").to_owned());
        rsp.into_body().collect().await.expect("body");
    }
    assert_eq!(conns.len(), 1, "upstream connections used: {conns:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_http1_clients_need_no_more_upstream_connections_than_they_are() {
    let (upstream, accepted) = numbered_upstream().await;
    let proxy = proxy_to(upstream);
    let addr = proxy.explicit(0);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let client = hyper_client(false);
            for _ in 0..100 {
                let reply = client::get(&client, addr, "/", &[]).await.expect("get");
                assert_eq!(reply.body, "ok");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let used = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&used),
        "800 requests over {used} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_requests_share_one_upstream_connection() {
    let (upstream, accepted) = numbered_upstream().await;
    let proxy = proxy_to(upstream);
    let client = hyper_client(true);
    let addr = proxy.explicit(0);
    let replies =
        futures_util::future::join_all((0..200).map(|_| client::get(&client, addr, "/", &[])))
            .await;
    for reply in &replies {
        let reply = reply.as_ref().expect("get");
        assert_eq!(reply.body, "ok");
        assert_eq!(conn_of(reply), "1");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_abandoned_halfway_never_answers_the_next_request() {
    let (upstream, _) = numbered_upstream().await;
    let proxy = proxy_to(upstream);
    let addr = proxy.explicit(0);
    let client = hyper_client(false);
    for _ in 0..5 {
        let req = http::Request::get(format!("http://{addr}/endless"))
            .body(Full::default())
            .expect("request");
        let rsp = client.request(req).await.expect("endless");
        let big_conn = rsp.headers()["x-conn"].to_str().expect("x-conn").to_owned();
        let mut body = rsp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        // The caller walks away after the first chunk.
        drop(body);
        let next = client::get(&hyper_client(false), addr, "/", &[])
            .await
            .expect("next request");
        assert_eq!(next.body, "ok", "{next:?}");
        assert_ne!(
            conn_of(&next),
            big_conn,
            "the abandoned connection was reused"
        );
    }
}

/// Answers every request on a connection with `ok` and closes the connection once it has
/// been idle for `idle` (as nginx's `keepalive_timeout` does), without `Connection: close`.
async fn closes_idle_connections(idle: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let read = tokio::time::timeout(idle, stream.read(&mut chunk)).await;
                    let Ok(Ok(n @ 1..)) = read else { return };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        count.fetch_add(1, Ordering::SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    let (upstream, served) = closes_idle_connections(Duration::from_millis(30)).await;
    let proxy = proxy_to(upstream);
    let client = hyper_client(false);
    for i in 0..20 {
        let reply = client::get(&client, proxy.explicit(0), "/", &[])
            .await
            .expect("get");
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.body, "ok");
        // Longer than the upstream keeps an idle connection.
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert_eq!(served.load(Ordering::SeqCst), 20);
}

/// An HTTP/2 upstream whose handler runs `serve` for every request, on connections that send
/// GOAWAY `after` requests have been answered (as nginx's `keepalive_requests` does), and the
/// number of connections accepted.
async fn h2_upstream<F, Fut>(serve: F, after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Body>> + Send + 'static,
{
    numbered_listener(move |stream, _| {
        let serve = serve.clone();
        async move {
            let answered = Arc::new(tokio::sync::Notify::new());
            let done = answered.clone();
            let svc = hyper::service::service_fn(move |req| {
                let (serve, done) = (serve.clone(), done.clone());
                async move {
                    let rsp = serve(req).await;
                    done.notify_one();
                    Ok::<_, Infallible>(rsp)
                }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let Some(after) = after else {
                let _ = conn.await;
                return;
            };
            for _ in 0..after {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = answered.notified() => {}
                }
            }
            // Let the answer leave first, as a server would between requests.
            let _ = tokio::time::timeout(Duration::from_millis(20), conn.as_mut()).await;
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_upstream_going_away_between_requests_costs_no_request() {
    let ok = |_| async { hyper::Response::new(Full::new(Bytes::from_static(b"ok")).boxed()) };
    let (upstream, accepted) = h2_upstream(ok, Some(1)).await;
    let proxy = proxy_to(upstream);
    let client = hyper_client(true);
    for i in 0..20 {
        let reply = client::get(&client, proxy.explicit(0), "/", &[])
            .await
            .expect("get");
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.body, "ok");
        // Sometimes the GOAWAY has arrived before the next request, sometimes the
        // connection has closed too: both must cost nothing.
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 5 } else { 60 })).await;
    }
    // The first request and the nine after a long pause found no connection open and opened
    // one; a request after a short pause may still share its predecessor's (the upstream
    // waits 20 ms before its GOAWAY), so 10 is the fewest.
    let accepted = accepted.load(Ordering::SeqCst);
    assert!((10..=20).contains(&accepted), "{accepted} connections");
}

/// An HTTP/2 client whose request body is fed by hand, over a connection of its own.
async fn h2_call(
    addr: SocketAddr,
    path: &str,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    impl std::future::Future<Output = hyper::Result<hyper::Response<Incoming>>> + use<>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames =
        futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |chunk| {
            Ok::<_, Infallible>(Frame::data(chunk))
        });
    let req = http::Request::post(format!("http://{addr}{path}"))
        .body(StreamBody::new(frames).boxed())
        .expect("request");
    (tx, sender.send_request(req))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_request_body_keeps_flowing_after_the_response_began() {
    // Echoes each chunk as it arrives, its response begun before the request body ends: a
    // bidirectional stream, as gRPC chat-style calls are.
    let echo = |req: hyper::Request<Incoming>| async move {
        hyper::Response::new(
            req.into_body()
                .map_err(|e| panic!("request body failed upstream: {e}"))
                .boxed(),
        )
    };
    let (upstream, _) = h2_upstream(echo, None).await;
    let proxy = proxy_to(upstream);
    let (tx, response) = h2_call(proxy.explicit(0), "/chat").await;
    tx.send(Bytes::from_static(b"hello")).await.expect("send");
    let rsp = response.await.expect("response head");
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    for turn in ["hello", "second", "third"] {
        if turn != "hello" {
            tx.send(Bytes::from(turn)).await.expect("send");
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no echo of {turn:?}: the request body stopped"))
            .expect("a frame")
            .expect("data");
        assert_eq!(frame.into_data().expect("data"), turn);
    }
    drop(tx);
    let rest = body.collect().await.expect("the end").to_bytes();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_call_cancelled_by_its_client_is_reset_upstream() {
    // Reads the request body to its end and reports how it ended, never answering first.
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let hold = move |req: hyper::Request<Incoming>| {
        let (ended_tx, started_tx) = (ended_tx.clone(), started_tx.clone());
        async move {
            let _ = started_tx.send(());
            let how = match req.into_body().collect().await {
                Ok(_) => "ended".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            let _ = ended_tx.send(how);
            hyper::Response::new(Full::default().boxed())
        }
    };
    let (upstream, _) = h2_upstream(hold, None).await;
    let proxy = proxy_to(upstream);
    let (tx, response) = h2_call(proxy.explicit(0), "/slow").await;
    tx.send(Bytes::from_static(b"part")).await.expect("send");
    let mut response = Box::pin(response);
    tokio::select! {
        _ = started.recv() => {}
        rsp = &mut response => panic!("answered early: {rsp:?}"),
    }
    // The client gives up: its stream is reset, the body never finished.
    drop(response);
    drop(tx);
    let how = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the upstream still waits for a call its client cancelled")
        .expect("report");
    assert!(how.starts_with("failed"), "upstream saw the body {how}");
}
