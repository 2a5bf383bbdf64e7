//! W3C baggage through a pair of real proxies whose client side runs in ephemeral environment
//! `pr-1`, sent with curl over HTTP/1.1 and HTTP/2 exactly as written here: the client's
//! sidecar adds `sluice-env=pr-1` when the request names no environment, appending it to the
//! first `baggage` field and leaving every byte the app sent as it was; it never adds a
//! second member or overwrites one; and every other field arrives unchanged, in order.

use sluice_integration::client::curl;
use sluice_integration::mtls::{Pair, PairOptions};

/// The `baggage` fields the application received, in order.
fn received(out: &std::process::Output) -> Vec<String> {
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not the echo's JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    seen["header_lines"]
        .as_array()
        .expect("header_lines")
        .iter()
        .filter(|l| l[0] == "baggage")
        .map(|l| l[1].as_str().expect("value").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_member_is_added_once_and_the_rest_is_kept_byte_for_byte() {
    let pair = Pair::start(PairOptions {
        env: vec![("SLUICE_PROXY_ENVIRONMENT".into(), "pr-1".into())],
        ..PairOptions::default()
    })
    .await;
    let url = format!("http://{}/v1/charges/1", pair.outbound());
    // (fields the app sends, fields the app behind the other sidecar must receive)
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["sluice-env=pr-1"]),
        (
            // Odd but valid spacing, properties and percent-encoding stay as they were.
            &["userId=alice%20b ,  isProduction=false;ttl=30;x"],
            &["userId=alice%20b ,  isProduction=false;ttl=30;x,sluice-env=pr-1"],
        ),
        (&["a=1,"], &["a=1,sluice-env=pr-1"]),
        (&["a=1", "b=2;p"], &["a=1,sluice-env=pr-1", "b=2;p"]),
        // The app (or a caller upstream of it) named an environment: nothing is added.
        (&["a=1", "sluice-env=pr-9"], &["a=1", "sluice-env=pr-9"]),
        (&["sluice-env=pr-1;p=1"], &["sluice-env=pr-1;p=1"]),
    ];
    for http2 in [false, true] {
        for (sent, want) in cases {
            let mut args = vec![if http2 {
                "--http2-prior-knowledge"
            } else {
                "--http1.1"
            }];
            let headers: Vec<String> = sent.iter().map(|v| format!("baggage: {v}")).collect();
            for h in &headers {
                args.extend(["-H", h.as_str()]);
            }
            args.push(&url);
            let out = curl(&args).await;
            assert_eq!(
                received(&out),
                *want,
                "sent {sent:?} over {}",
                if http2 { "h2" } else { "HTTP/1.1" }
            );
        }
    }
}
