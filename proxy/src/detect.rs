//! Per-connection protocol detection.
//!
//! The proxy reads the client's first bytes (with a timeout) and decides how to handle the
//! connection. Detection only recognises shapes; hyper does all real HTTP parsing.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::PrefixedIo;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest HTTP/1 request line we wait for. Longer lines are treated as opaque rather than
/// buffered without bound.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS ClientHello. Proxied as opaque TCP for now; mTLS termination plugs in here.
    Tls,
    /// HTTP/2 with prior knowledge (the client sent the preface).
    Http2,
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// Anything else, or a client that said nothing before the timeout.
    Opaque,
}

/// The result of looking at a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The prefix decides it.
    Known(Protocol),
    /// Could still be more than one thing: read more.
    NeedMore,
}

/// Classifies the first bytes a client sent.
pub fn classify(buf: &[u8]) -> Verdict {
    use Protocol::*;
    use Verdict::*;
    let Some(&first) = buf.first() else {
        return NeedMore;
    };
    // TLS record: content type 22 (handshake), major version 3, ..., handshake type 1.
    if first == 0x16 {
        return match buf {
            [_, 0x03, _, _, _, 0x01, ..] => Known(Tls),
            [_, 0x03, _, _, _, _, ..] => Known(Opaque),
            [_, 0x03, ..] | [_] => NeedMore,
            _ => Known(Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Known(Http2)
        } else {
            NeedMore
        };
    }
    classify_http1(buf)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, checked byte by byte so that binary protocols
/// are rejected at their first implausible byte instead of waiting for the timeout.
fn classify_http1(buf: &[u8]) -> Verdict {
    const VERSION: &[u8] = b"HTTP/1.";
    let opaque = Verdict::Known(Protocol::Opaque);
    let Some(sp1) = buf.iter().position(|&b| !is_tchar(b)) else {
        return if buf.len() < 32 {
            Verdict::NeedMore
        } else {
            opaque
        };
    };
    if sp1 == 0 || buf[sp1] != b' ' {
        return opaque;
    }
    let rest = &buf[sp1 + 1..];
    let Some(sp2) = rest.iter().position(|&b| !(0x21..=0x7e).contains(&b)) else {
        return if buf.len() < MAX_DETECT_BYTES {
            Verdict::NeedMore
        } else {
            opaque
        };
    };
    if sp2 == 0 || rest[sp2] != b' ' {
        return opaque;
    }
    let version = &rest[sp2 + 1..];
    let n = version.len().min(VERSION.len() + 2);
    let mut expected = VERSION.to_vec();
    expected.push(version.get(VERSION.len()).copied().unwrap_or(b'1'));
    expected.push(b'\r');
    if !matches!(expected[VERSION.len()], b'0' | b'1') || version[..n] != expected[..n] {
        return opaque;
    }
    if n < expected.len() {
        Verdict::NeedMore
    } else {
        Verdict::Known(Protocol::Http1)
    }
}

/// RFC 9110 token characters, which is what a method is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, the client stops sending (timeout or EOF) or
/// [`MAX_DETECT_BYTES`] are buffered. Returns the protocol and a stream that replays what was
/// read. An EOF before any byte yields `Opaque` with an empty prefix.
pub async fn detect<I: AsyncRead + Unpin>(
    mut io: I,
    timeout: Duration,
) -> io::Result<(Protocol, PrefixedIo<I>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        if let Verdict::Known(p) = classify(&buf) {
            break p;
        }
        if buf.len() >= MAX_DETECT_BYTES {
            break Protocol::Opaque;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break Protocol::Opaque,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((protocol, PrefixedIo::new(Bytes::from(buf), io)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;
    use Verdict::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Known(Http1));
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\r\n"), Known(Http1));
        assert_eq!(
            classify(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Known(Http1)
        );
        assert_eq!(classify(b"GET / HTTP/1.1\n"), Known(Opaque));
    }

    #[test]
    fn partial_http1_waits() {
        for prefix in [
            &b"G"[..],
            b"GET",
            b"GET ",
            b"GET /x",
            b"GET /x HTTP/",
            b"GET / HTTP/1.1",
        ] {
            assert_eq!(
                classify(prefix),
                NeedMore,
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
    }

    #[test]
    fn http2_preface() {
        assert_eq!(classify(H2_PREFACE), Known(Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), NeedMore);
        // The preface's first line looks like a request line but is not HTTP/1.x.
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX"), Known(Opaque));
    }

    #[test]
    fn tls_client_hello() {
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x03, 0x03]),
            Known(Tls)
        );
        assert_eq!(classify(&[0x16, 0x03, 0x01]), NeedMore);
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x02]),
            Known(Opaque)
        );
    }

    #[test]
    fn binary_is_opaque_immediately() {
        assert_eq!(classify(&[0x00, 0x01, 0x02]), Known(Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Known(Opaque));
        assert_eq!(classify(b"GET\x00"), Known(Opaque));
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Known(Opaque));
        assert_eq!(classify(b"GET / HTTP/1.2\r\n"), Known(Opaque));
    }

    #[tokio::test]
    async fn detect_times_out_to_opaque_and_keeps_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HT")
            .await
            .expect("write");
        let (p, mut io) = detect(server, Duration::from_millis(50))
            .await
            .expect("detect");
        assert_eq!(p, Opaque);
        let mut got = [0u8; 8];
        io.read_exact(&mut got).await.expect("replay");
        assert_eq!(&got, b"GET / HT");
    }

    #[tokio::test]
    async fn detect_split_reads() {
        let (mut client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            for chunk in [&b"GET /"[..], b" HTTP/1", b".1\r\n"] {
                tokio::io::AsyncWriteExt::write_all(&mut client, chunk)
                    .await
                    .expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client
        });
        let (p, _) = detect(server, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(p, Http1);
        drop(task.await);
    }
}
