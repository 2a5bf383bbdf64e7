//! gRPC through the proxy with Python grpcio: unary, server/client/bidi streaming, trailers
//! and error statuses, plus the gRPC-aware metrics. Skips when grpcio is not installed
//! (`pip install grpcio grpcio-tools`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use sluice_integration::client::{get, hyper_client};
use sluice_integration::{Proxy, ProxyOptions, skip};

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcio_unary_streaming_and_trailers() {
    let have_grpc = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_grpc {
        return skip(
            "grpcio",
            "python3 with grpcio and grpcio-tools not available",
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc");
    let generated = tempfile::tempdir().expect("tempdir");
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", src.display()))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .arg(src.join("echo.proto"))
        .status()
        .expect("protoc");
    assert!(status.success());

    let mut server = KillOnDrop(
        Command::new("python3")
            .arg(src.join("server.py"))
            .arg(generated.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    let port: u16 = line.trim().parse().expect("port number");

    let proxy = Proxy::start(ProxyOptions::default().env(
        "SLUICE_PROXY_EXPLICIT_OUTBOUND",
        format!("127.0.0.1:0=127.0.0.1:{port}"),
    ));
    let out = tokio::process::Command::new("python3")
        .arg(src.join("client.py"))
        .arg(generated.path())
        .arg(proxy.explicit(0).to_string())
        .output()
        .await
        .expect("client");
    assert!(
        out.status.success(),
        "client failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );

    let metrics = get(&hyper_client(false), proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    let responses = |needle: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("sluice_proxy_responses_total{") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(responses(r#"grpc_status="0""#) >= 3.0, "{metrics}");
    // NOT_FOUND arrives in trailers and is classified as a failure.
    let not_found = metrics
        .lines()
        .find(|l| l.contains(r#"grpc_status="5""#))
        .unwrap_or_else(|| panic!("no grpc_status 5:\n{metrics}"));
    assert!(
        not_found.contains(r#"classification="failure""#),
        "{not_found}"
    );
}

/// Streams per call and calls at once in the small-frames test: 20,000 tiny DATA frames in
/// all, about twice what h2's small-frame budget allowed with hyper's default window.
const TINY_MESSAGES: usize = 200;
const TINY_CALLS: usize = 100;

/// An HTTP/2 server that answers every call like a gRPC server stream of [`TINY_MESSAGES`]
/// 15-byte messages, one DATA frame each, written as fast as flow control lets it.
async fn tiny_message_server() -> std::net::SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(|_req| async {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = (0..TINY_MESSAGES)
                    .map(|_| {
                        // A gRPC message: flag, length, then 10 bytes.
                        let mut m = vec![0u8, 0, 0, 0, 10];
                        m.extend_from_slice(b"0123456789");
                        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(m)))
                    })
                    .chain([Ok(Frame::trailers(trailers))]);
                let body = StreamBody::new(futures_util::stream::iter(frames));
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .expect("response"),
                )
            });
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    addr
}

/// A gRPC service streaming many tiny messages to a caller that reads them later than they
/// come: the proxy holds them meanwhile. h2 (0.4.16 and later) charges each buffered frame
/// under 256 bytes against a budget of half the connection's receive window and, once it
/// is spent, closes the connection with GOAWAY ENHANCE_YOUR_CALM, failing every call on it;
/// hyper's default window let 100 such calls take the proxy's upstream connection down
/// (seen first as thousands of failed calls in `mesh_bench --scenarios grpc`).
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_server_streams_of_tiny_messages_to_a_slow_reader_all_complete() {
    use http_body_util::BodyExt;
    let upstream = tiny_message_server().await;
    let proxy = Proxy::start(ProxyOptions::default().env(
        "SLUICE_PROXY_EXPLICIT_OUTBOUND",
        format!("127.0.0.1:0={upstream}"),
    ));
    let stream = tokio::net::TcpStream::connect(proxy.explicit(0))
        .await
        .expect("connect");
    // A reader that takes 64 bytes per call until it starts reading: the rest of each
    // stream waits in the proxy.
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(64)
            .initial_connection_window_size(1024 * 1024)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut calls = Vec::new();
    for i in 0..TINY_CALLS {
        let req = http::Request::post(format!("http://tiny/bench.Tiny/Stream{i}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\x00\x00\x00\x00\x00",
            )))
            .expect("request");
        sender.ready().await.expect("ready");
        calls.push(sender.send_request(req));
    }
    let mut responses = Vec::new();
    for call in calls {
        responses.push(call.await.expect("response headers"));
    }
    // Every message is written upstream by now; the proxy holds what the reader has not read.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for (i, rsp) in responses.into_iter().enumerate() {
        assert_eq!(rsp.status(), 200, "call {i}");
        let body = rsp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("call {i} failed mid-stream: {e:?}\n{}", proxy.log()));
        let trailers = body.trailers().cloned().unwrap_or_default();
        assert_eq!(body.to_bytes().len(), TINY_MESSAGES * 15, "call {i}");
        assert_eq!(trailers["grpc-status"], "0", "call {i}");
    }
}
