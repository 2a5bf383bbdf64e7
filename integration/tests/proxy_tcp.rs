//! Opaque TCP: bytes both ways, half-close preserved, detection timeout, byte metrics.

use std::time::Duration;

use sluice_integration::{Proxy, ProxyOptions, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn roundtrip(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(payload).await.expect("write");
    // Half-close: the echo server only answers its summary after seeing our FIN, and we can
    // still read everything after closing our side.
    s.shutdown().await.expect("shutdown write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("no hang")
        .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_echo_with_half_close() {
    let up = upstream::tcp_echo().await;
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={}", up.addr),
            )
            .env("SLUICE_PROXY_DETECT_TIMEOUT", "300ms"),
    );
    // Binary: detected as opaque at the first byte.
    let payload: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let out = roundtrip(proxy.explicit(0), &payload).await;
    assert_eq!(out.len(), payload.len() + "1048576 bytes\n".len());
    assert_eq!(&out[..payload.len()], &payload[..]);
    assert!(out.ends_with(b"1048576 bytes\n"));

    // Text that could still become an HTTP request line: opaque once the client goes quiet
    // past the detect timeout, with the bytes read during detection replayed.
    let mut s = TcpStream::connect(proxy.explicit(0))
        .await
        .expect("connect");
    s.write_all(b"hello").await.expect("write");
    let mut echoed = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .expect("echo arrives after the detect timeout, before our FIN")
        .expect("read");
    assert_eq!(&echoed, b"hello");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("read");
    assert_eq!(rest, b"5 bytes\n");

    // The close is counted after the proxy shut down our half, just after our EOF.
    let metrics =
        sluice_integration::client::metrics_showing(proxy.admin(), "sluice_proxy_tcp_close_total{")
            .await;
    let read: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_proxy_tcp_read_bytes_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("tcp read metric");
    assert!(read >= 1_048_581.0, "{metrics}");
}
