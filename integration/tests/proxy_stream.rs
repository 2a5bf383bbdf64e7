//! WebSocket upgrades and large streamed bodies (no whole-body buffering in the proxy).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_integration::{Proxy, ProxyOptions, upstream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_upgrade() {
    let up = upstream::websocket_echo().await;
    let proxy = Proxy::start(ProxyOptions::default().env(
        "SLUICE_PROXY_EXPLICIT_OUTBOUND",
        format!("127.0.0.1:0={}", up.addr),
    ));
    let url = format!("ws://{}/chat", proxy.explicit(0));
    let (mut ws, rsp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    assert_eq!(rsp.status(), 101);
    for i in 0..50 {
        ws.send(Message::text(format!("msg {i}")))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("stream open")
            .expect("message");
        assert_eq!(
            echoed.into_text().expect("text").as_str(),
            format!("msg {i}")
        );
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    let echoed = ws.next().await.expect("open").expect("message");
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.expect("close");
}

const SIZE: usize = 100 * 1024 * 1024;
/// The proxy may not hold more than a small fraction of a body in memory.
const MAX_PEAK_RSS_KIB: u64 = 64 * 1024;

fn streamed_upload() -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let stream = futures_util::stream::unfold(SIZE, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(chunk.len());
                (Ok(Frame::data(chunk.slice(..take))), left - take)
            })
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

async fn transfer_100mib(h2: bool) {
    let up = upstream::http("big").await;
    let proxy = Proxy::start(ProxyOptions::default().env(
        "SLUICE_PROXY_EXPLICIT_OUTBOUND",
        format!("127.0.0.1:0={}", up.addr),
    ));
    let addr = proxy.explicit(0);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();

    // Upload: 100 MiB streamed to the upstream, which counts it.
    let req = http::Request::post(format!("http://{addr}/count"))
        .body(streamed_upload())
        .expect("request");
    let rsp = client.request(req).await.expect("upload");
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, SIZE.to_string().as_bytes());

    // Download: 100 MiB streamed from the upstream, counted without keeping it.
    let req = http::Request::get(format!("http://{addr}/bytes/{SIZE}"))
        .body(BodyExt::boxed(
            http_body_util::Empty::<Bytes>::new().map_err(|e| match e {}),
        ))
        .expect("request");
    let mut body = client.request(req).await.expect("download").into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame.expect("frame").data_ref().map_or(0, Bytes::len);
    }
    assert_eq!(n, SIZE);

    let peak = proxy.peak_rss_kib();
    eprintln!(
        "100 MiB each way over {}: proxy peak RSS {peak} KiB",
        if h2 { "HTTP/2" } else { "HTTP/1.1" }
    );
    assert!(peak < MAX_PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn body_100mib_http1_bounded_memory() {
    transfer_100mib(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn body_100mib_http2_bounded_memory() {
    transfer_100mib(true).await;
}
