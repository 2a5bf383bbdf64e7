//! Per-connection protocol detection.
//!
//! The proxy reads the client's first bytes (with a timeout) and decides how to handle the
//! connection. Detection only recognises shapes; hyper does all real HTTP parsing.
//!
//! Whatever is not detected as HTTP becomes opaque TCP, which only a `tcp` grant lets through
//! (and never on a port declared HTTP). So detection leans towards HTTP: a connection that
//! starts like an origin-form request line (`GET /`) *is* HTTP/1 from its first bytes, however
//! long its line, however slow its sender, and whether its lines end in CRLF or a bare LF
//! (which hyper accepts). A request cannot be shaped to slip past per-request authorization as
//! "not HTTP".

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::PrefixedIo;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes detection buffers before giving up (an origin-form request is decided long
/// before). Longer prefixes are treated as opaque rather than buffered without bound.
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
///
/// An uppercase method followed by `SP /` is HTTP/1 at once: no binary or text protocol that
/// the mesh carries opaquely starts that way, and deciding there means the rest of the line
/// (its length, its line ending, its pace) is hyper's to judge. Other targets (`*`,
/// absolute-form, `CONNECT host:port`) need the whole line, ending in CRLF or LF.
fn classify_http1(buf: &[u8]) -> Verdict {
    const VERSION: &[u8] = b"HTTP/1.";
    let opaque = Verdict::Known(Protocol::Opaque);
    // Only the first MAX_DETECT_BYTES count (`detect` reads no further), so that a verdict
    // never changes with more bytes.
    let undecided = if buf.len() >= MAX_DETECT_BYTES {
        opaque
    } else {
        Verdict::NeedMore
    };
    let mut buf = &buf[..buf.len().min(MAX_DETECT_BYTES)];
    // Empty lines before the request line are skipped, as hyper's parser (httparse) does
    // (RFC 9112 §2.2); deciding "opaque" on them would send a request hyper reads past
    // per-request authorization.
    loop {
        match buf {
            [b'\n', rest @ ..] | [b'\r', b'\n', rest @ ..] => buf = rest,
            [] | [b'\r'] => return undecided,
            _ => break,
        }
    }
    // A method of any length: hyper takes any token.
    let Some(sp1) = buf.iter().position(|&b| !is_tchar(b)) else {
        return undecided;
    };
    if sp1 == 0 || buf[sp1] != b' ' {
        return opaque;
    }
    let rest = &buf[sp1 + 1..];
    let uppercase = buf[..sp1].iter().all(u8::is_ascii_uppercase);
    if uppercase && rest.first() == Some(&b'/') {
        return Verdict::Known(Protocol::Http1);
    }
    // A target is visible ASCII; hyper also takes bytes above 0x7f (raw UTF-8).
    let Some(sp2) = rest.iter().position(|&b| b <= 0x20 || b == 0x7f) else {
        return undecided;
    };
    if sp2 == 0 || rest[sp2] != b' ' {
        return opaque;
    }
    let version = &rest[sp2 + 1..];
    let n = version.len().min(VERSION.len() + 1);
    if version[..n] != b"HTTP/1.0"[..n] && version[..n] != b"HTTP/1.1"[..n] {
        return opaque;
    }
    match version.get(VERSION.len() + 1..) {
        None | Some([]) | Some([b'\r']) => Verdict::NeedMore,
        Some([b'\r', b'\n', ..]) | Some([b'\n', ..]) => Verdict::Known(Protocol::Http1),
        Some(_) => opaque,
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

/// Reads on from a connection detected as HTTP/1 until its first request head is whole, so
/// that hyper gets it in one piece. Returns `None` when the client closed, or did not finish
/// the head within `timeout`: the connection is then dropped without an answer, as hyper
/// drops one that passes its header read timeout.
///
/// Why: hyper reserves 8 KiB of free buffer before every read, so a head that arrives in two
/// pieces moves its connection to a 16 KiB buffer, and hyper's connection adds an 8 KiB write
/// buffer besides. A slowloris client sends exactly that, thousands of times over; here the
/// connection holds only the bytes it sent until its head is complete. What hyper answers does
/// not change: a head that is already malformed (httparse, hyper's parser, says so) or longer
/// than `max` is handed over at once for hyper's 400 or 431.
pub async fn whole_head<I: AsyncRead + Unpin>(
    io: PrefixedIo<I>,
    timeout: Duration,
    max: usize,
) -> io::Result<Option<PrefixedIo<I>>> {
    let (prefix, mut io) = io.into_parts();
    if !head_is_partial(&prefix, max) {
        return Ok(Some(PrefixedIo::new(prefix, io)));
    }
    let mut buf = BytesMut::from(prefix);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
        if !head_is_partial(&buf, max) {
            return Ok(Some(PrefixedIo::new(buf.freeze(), io)));
        }
    }
}

/// Whether `buf` is the start of a request head that is neither complete nor malformed yet,
/// and shorter than `max`.
fn head_is_partial(buf: &[u8], max: usize) -> bool {
    // hyper's limit on the number of headers; more is an error hyper answers.
    let mut headers = [httparse::EMPTY_HEADER; 100];
    buf.len() < max
        && matches!(
            httparse::Request::new(&mut headers).parse(buf),
            Ok(httparse::Status::Partial)
        )
}

/// Why bytes that detection read are not HTTP, for the refusal on a port declared HTTP:
/// "sent no request within 1s", "sent bytes that are not HTTP", ...
pub fn why_not_http(prefix: &[u8], timeout: Duration) -> String {
    if prefix.is_empty() {
        return format!(
            "sent no request within {}",
            humantime::format_duration(timeout)
        );
    }
    if prefix.len() >= MAX_DETECT_BYTES {
        return format!(
            "sent {MAX_DETECT_BYTES} bytes without an HTTP request line (one that starts with \
             `METHOD /` is always read as HTTP)"
        );
    }
    match classify(prefix) {
        Verdict::Known(_) => "sent bytes that are not HTTP".to_owned(),
        Verdict::NeedMore => format!(
            "sent no complete request line within {}",
            humantime::format_duration(timeout)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;
    use Verdict::*;

    const HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: aaaa\r\n\r\n";
    const LIMIT: Duration = Duration::from_secs(10);

    /// Detection on what a client sent first, the client's end kept open for more.
    async fn detected(
        first: &[u8],
    ) -> (PrefixedIo<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(first).await.expect("write");
        let (protocol, io) = detect(server, LIMIT).await.expect("detect");
        assert_eq!(protocol, Http1);
        (io, client)
    }

    /// The slowloris shape: a head in pieces. hyper must get it whole, and nothing more may
    /// be held for the connection than the bytes it sent.
    #[tokio::test(start_paused = true)]
    async fn a_head_sent_in_pieces_is_handed_over_whole() {
        use tokio::io::AsyncWriteExt;
        let (io, mut client) = detected(&HEAD[..20]).await;
        let rest = tokio::spawn(async move {
            for piece in HEAD[20..].chunks(7) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.write_all(piece).await.expect("write");
            }
            client
        });
        let io = whole_head(io, LIMIT, 64 * 1024)
            .await
            .expect("read")
            .expect("whole");
        assert_eq!(io.prefix(), HEAD);
        drop(rest.await);
    }

    /// As hyper drops a connection whose head does not arrive in time: no answer, closed.
    #[tokio::test(start_paused = true)]
    async fn an_unfinished_head_is_dropped_at_the_deadline_or_when_the_client_closes() {
        let (held, _client) = detected(&HEAD[..30]).await;
        let (closed, client) = detected(&HEAD[..30]).await;
        drop(client);
        for io in [held, closed] {
            let head = whole_head(io, LIMIT, 64 * 1024).await.expect("read");
            assert!(head.is_none());
        }
    }

    /// hyper answers these (400, 431) at once today; waiting for the rest would make the
    /// client wait the timeout for no answer instead.
    #[tokio::test(start_paused = true)]
    async fn malformed_or_oversized_heads_go_to_hyper_at_once() {
        let (io, _client) = detected(b"GET / HTTP/1.1\r\nBad header: x\r\n").await;
        let io = whole_head(io, LIMIT, 64 * 1024)
            .await
            .expect("read")
            .expect("handed over");
        assert_eq!(io.prefix(), b"GET / HTTP/1.1\r\nBad header: x\r\n");

        let long = [&b"GET / HTTP/1.1\r\nX-Long: "[..], &[b'a'; 2000][..]].concat();
        let (io, client) = detected(&long).await;
        let mut io = whole_head(io, LIMIT, 1024)
            .await
            .expect("read")
            .expect("handed over");
        assert!(io.prefix().len() >= 1024);
        drop(client);
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut io, &mut all)
            .await
            .expect("read");
        assert_eq!(all, long);
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_head_with_its_body_passes_untouched() {
        use tokio::io::AsyncReadExt;
        let request = [HEAD, b"body"].concat();
        let (io, client) = detected(&request).await;
        drop(client);
        let mut io = whole_head(io, LIMIT, 64 * 1024)
            .await
            .expect("read")
            .expect("whole");
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, request);
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Known(Http1));
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\r\n"), Known(Http1));
        assert_eq!(
            classify(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Known(Http1)
        );
        assert_eq!(classify(b"OPTIONS * HTTP/1.1\r\n"), Known(Http1));
        assert_eq!(classify(b"GET http://x/ HTTP/1.0\n"), Known(Http1));
    }

    #[test]
    fn shapes_that_used_to_force_opaque_are_http() {
        // Bare LF line endings (hyper reads them), and a request line of any length: decided
        // at `GET /`.
        assert_eq!(classify(b"GET /admin HTTP/1.1\nHost: x\n\n"), Known(Http1));
        assert_eq!(classify(b"GET /"), Known(Http1));
        let long = [&b"GET /"[..], &[b'a'; 20_000][..]].concat();
        assert_eq!(classify(&long), Known(Http1));
        assert_eq!(classify(b"PROPFIND /dav HTTP/1.1\r\n"), Known(Http1));
    }

    /// Found by the `detect_http1` fuzz target: 24 token bytes (then the longest method
    /// accepted) were called opaque, while the same bytes followed by a space and a target
    /// were HTTP, so the verdict depended on how the client's bytes were split across reads;
    /// and longer methods, which hyper reads, were opaque.
    #[test]
    fn a_method_of_any_length_waits_for_its_space() {
        let method = [b'C'; 24];
        assert_eq!(classify(&method), NeedMore);
        let line = [&method[..], b" hvx/P HTTP/1.0\r\n"].concat();
        assert_eq!(classify(&line), Known(Http1));
        let long = [&[b'B'; 60][..], b" /x HTTP/1.1\r\n"].concat();
        assert_eq!(classify(&long), Known(Http1));
        assert_eq!(classify(&[b'C'; MAX_DETECT_BYTES]), Known(Opaque));
    }

    /// Also found by the fuzz target: hyper skips empty lines before the request line, so
    /// detection must too.
    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        assert_eq!(classify(b"\r\nGET / HTTP/1.1\r\n"), Known(Http1));
        assert_eq!(classify(b"\n\n\r\nGET /x HTTP/1.1\n"), Known(Http1));
        assert_eq!(classify(b"\r\n\r"), NeedMore);
        assert_eq!(classify(b"\r\n"), NeedMore);
        assert_eq!(classify(b"\rGET / HTTP/1.1\r\n"), Known(Opaque));
        assert_eq!(classify(b"\r\nPING\r\n"), Known(Opaque));
    }

    #[test]
    fn text_protocols_stay_opaque() {
        // memcached and Redis inline commands: lowercase, or no `/` target.
        assert_eq!(classify(b"get key\r\n"), Known(Opaque));
        assert_eq!(classify(b"set /key 0 0 5\r\n"), Known(Opaque));
        assert_eq!(classify(b"GET key\r\n"), Known(Opaque));
        assert_eq!(classify(b"PING\r\n"), Known(Opaque));
    }

    #[test]
    fn partial_http1_waits() {
        for prefix in [
            &b"G"[..],
            b"GET",
            b"GET ",
            b"OPTIONS *",
            b"OPTIONS * HTTP/",
            b"OPTIONS * HTTP/1.1",
            b"OPTIONS * HTTP/1.1\r",
            b"get /x",
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
        assert_eq!(classify(b"OPTIONS * SPDY/3\r\n"), Known(Opaque));
        assert_eq!(classify(b"OPTIONS * HTTP/1.2\r\n"), Known(Opaque));
    }

    #[tokio::test]
    async fn detect_times_out_to_opaque_and_keeps_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"OPTIONS")
            .await
            .expect("write");
        let (p, mut io) = detect(server, Duration::from_millis(50))
            .await
            .expect("detect");
        assert_eq!(p, Opaque);
        let mut got = [0u8; 7];
        io.read_exact(&mut got).await.expect("replay");
        assert_eq!(&got, b"OPTIONS");
    }

    #[tokio::test]
    async fn detect_split_reads() {
        let (mut client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            for chunk in [&b"OPTI"[..], b"ONS * HTTP/1", b".1\r\n"] {
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
