//! The `detect_http1` fuzz target's property on stable Rust: detection never changes its mind
//! with more bytes, and never calls an HTTP/1 request that hyper's parser reads "opaque".
//! `scripts/fuzz detect_http1` explores far more; this runs on every test run.
//!
//! And for what follows detection on HTTP/1 (`detect::whole_head`): however a client splits
//! its bytes, hyper then reads exactly those bytes, and its first read holds the whole head
//! (or one hyper refuses at once).

use std::time::Duration;

use proptest::prelude::*;
use sluice_proxy::detect::{Protocol, detect, whole_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

include!("../../fuzz/detect_http1.rs");

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            "GET", "POST", "OPTIONS", "CONNECT", "get", "PROPFIND", "PRI", "G",
        ]),
        prop::sample::select(vec![
            "/",
            "/admin/secret",
            "*",
            "http://x/y",
            "db:5432",
            "/a b",
            "/\u{e9}",
        ]),
        "[a-z/?=]{0,12}",
        prop::sample::select(vec![
            "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "SPDY/3", "",
        ]),
        prop::sample::select(vec!["\r\n", "\n", "\r", ""]),
        prop::sample::select(vec!["Host: x", "Host: x\r\nA: b", ""]),
    )
        .prop_map(|(method, target, tail, version, eol, headers)| {
            format!("{method} {target}{tail} {version}{eol}{headers}{eol}{eol}").into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn http_is_never_opaque(data in request()) {
        detect_http1(&data);
    }

    #[test]
    fn arbitrary_bytes_decide_consistently(data in prop::collection::vec(any::<u8>(), 0..96)) {
        detect_http1(&data);
    }
}

/// The oracle, written apart from the proxy's check: httparse (hyper's parser, with hyper's
/// 100 headers) still waits for more of this head.
fn partial(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    matches!(
        httparse::Request::new(&mut headers).parse(head),
        Ok(httparse::Status::Partial)
    )
}

/// Sends `data` in pieces cut at `cuts` and holds the connection open; checks what
/// `whole_head` makes of it.
fn whole_head_keeps_every_byte(data: &[u8], cuts: &[usize]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.sort_unstable();
        points.push(data.len());
        let sent = data.to_vec();
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut from = 0;
            for to in points {
                client.write_all(&sent[from..to]).await.expect("write");
                from = to;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Held open until told: a head that never completes waits for the deadline.
            let _ = closed.await;
            drop(client);
        });
        let (protocol, io) = detect(server, Duration::from_secs(1))
            .await
            .expect("detect");
        if protocol != Protocol::Http1 {
            return;
        }
        let max = 1024;
        match whole_head(io, Duration::from_secs(10), max)
            .await
            .expect("read")
        {
            None => {
                assert!(
                    data.len() < max && partial(data),
                    "dropped a client whose head was not partial: {:?}",
                    String::from_utf8_lossy(data)
                );
            }
            Some(mut io) => {
                let first = io.prefix().to_vec();
                assert!(
                    first.len() >= max || !partial(&first),
                    "handed over a partial head: {:?}",
                    String::from_utf8_lossy(&first)
                );
                let _ = close.send(());
                let mut all = Vec::new();
                io.read_to_end(&mut all).await.expect("read");
                assert_eq!(
                    all, data,
                    "hyper would read other bytes than the client sent"
                );
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn hyper_reads_what_the_client_sent_however_it_was_split(
        head in request(),
        pad in prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,80}"), 0..20),
        body in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        // Extra headers after the request line, so heads cross the 1 KiB limit now and then.
        let mut data = head;
        if let Some(at) = data.windows(2).position(|w| w == b"\r\n" || w[0] == b'\n') {
            let end = if data[at] == b'\r' { at + 2 } else { at + 1 };
            let extra: Vec<u8> = pad
                .iter()
                .flat_map(|(k, v)| format!("{k}: {v}\r\n").into_bytes())
                .collect();
            data.splice(end..end, extra);
        }
        data.extend_from_slice(&body);
        whole_head_keeps_every_byte(&data, &cuts);
    }
}
