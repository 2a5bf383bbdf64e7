//! Measures the latency the proxy adds to a keep-alive HTTP/1.1 request (sequential, so it is
//! per-request overhead, not throughput). Prints the numbers; asserts only a loose bound so
//! the test does not flake on a busy machine.

use std::time::{Duration, Instant};

use sluice_integration::client::{get, hyper_client};
use sluice_integration::{Proxy, ProxyOptions, upstream};

async fn percentiles(addr: std::net::SocketAddr, n: usize) -> (Duration, Duration) {
    let client = hyper_client(false);
    // Warm up the connection pools on both sides.
    for _ in 0..100 {
        get(&client, addr, "/", &[]).await.expect("warmup");
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let r = get(&client, addr, "/", &[]).await.expect("request");
        samples.push(start.elapsed());
        assert_eq!(r.status, 200);
    }
    samples.sort();
    (samples[n / 2], samples[n * 99 / 100])
}

#[tokio::test(flavor = "multi_thread")]
async fn added_latency_per_request() {
    let up = upstream::http("web").await;
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={}", up.addr),
            )
            .env("SLUICE_PROXY_LOG", "warn"),
    );
    let n = 2000;
    let (direct_p50, direct_p99) = percentiles(up.addr, n).await;
    let (proxied_p50, proxied_p99) = percentiles(proxy.explicit(0), n).await;
    eprintln!(
        "latency over {n} sequential requests: direct p50 {direct_p50:?} p99 {direct_p99:?}; \
         via proxy p50 {proxied_p50:?} p99 {proxied_p99:?}"
    );
    assert!(proxied_p50 < direct_p50 + Duration::from_millis(20));
}
