//! Secret redaction for log lines that leave the mesh in notifications.
//!
//! A rollback message carries the canary's last log lines, and those go to a chat channel that
//! more people can read than the logs themselves. Each line is passed through a fixed list of
//! patterns (credentials in headers, `key=value` pairs, URLs, and well-known token shapes) and
//! each match is replaced by a `[REDACTED…]` marker that still says what kind of thing was
//! there. The patterns err on the side of removing too much: a lost hex string costs less than
//! a leaked key. Redacting twice gives the same line, so callers need not track whether a line
//! was already redacted.

use std::sync::LazyLock;

use regex::Regex;

/// Lines longer than this (after redaction) are cut, so one huge line cannot fill a message.
pub const MAX_LINE_CHARS: usize = 400;

/// (pattern, replacement) pairs, applied in order. Earlier rules handle whole headers so later,
/// narrower ones do not leave half a credential behind.
static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // `Authorization: Bearer abc`, `Proxy-Authorization: Basic …`, `authorization=…`.
        (
            r"(?i)\b((?:proxy-)?authorization)([\x22']?\s*[:=]\s*[\x22']?)(?:(?:bearer|basic|token|digest|negotiate)\s+)?[^\s\x22',;]+",
            "$1$2[REDACTED]",
        ),
        // A bearer token anywhere else (`curl -H 'Bearer …'`, error messages).
        (r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*", "Bearer [REDACTED]"),
        // Credentials in URLs: `https://user:pass@host`.
        (r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]+):[^/\s@]+@", "$1:[REDACTED]@"),
        // `password=…`, `"client_secret": "…"`, `X-Api-Key: …`, `db_token=…` and friends.
        (
            r"(?i)\b([a-z0-9_.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|credentials?)[a-z0-9_.\-]*)([\x22']?\s*[:=]\s*[\x22']?)([^\s\x22'&,;]+)",
            "$1$2[REDACTED]",
        ),
        // Long hex or base64 values after anything called `key` (`key=9f86d0…`, `signing-key: …`).
        (
            r"(?i)\b([a-z0-9_\-]*key)([\x22']?\s*[:= ]\s*[\x22']?)[A-Za-z0-9+/_\-]{24,}={0,2}",
            "$1$2[REDACTED]",
        ),
        // AWS access key ids (long-term AKIA…, temporary ASIA…).
        (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "[REDACTED-AWS-KEY]"),
        // JWTs: three base64url parts, the first a JSON header (`{"` is `eyJ`).
        (
            r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
            "[REDACTED-JWT]",
        ),
        // Private keys pasted into a log.
        (
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*",
            "[REDACTED-PRIVATE-KEY]",
        ),
    ]
    .into_iter()
    // The patterns are constants checked by the tests below; a typo is a bug caught there.
    .map(|(pattern, with)| (Regex::new(pattern).expect("redaction pattern compiles"), with))
    .collect()
});

/// Returns `line` with every secret-looking part replaced, cut to [`MAX_LINE_CHARS`].
pub fn redact(line: &str) -> String {
    let mut out = line.to_owned();
    for (pattern, with) in RULES.iter() {
        if pattern.is_match(&out) {
            out = pattern.replace_all(&out, *with).into_owned();
        }
    }
    if out.chars().count() > MAX_LINE_CHARS {
        out = out.chars().take(MAX_LINE_CHARS - 1).collect();
        out.push('…');
    }
    out
}

/// Redacts every line and keeps the last `max` (the end of a log is where a failure shows).
pub fn redact_tail<S: AsRef<str>>(lines: &[S], max: usize) -> Vec<String> {
    let skip = lines.len().saturating_sub(max);
    lines[skip..].iter().map(|l| redact(l.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(redact(input), expected, "input: {input}");
        assert_eq!(redact(expected), expected, "redaction is idempotent");
    }

    #[test]
    fn headers_and_bearer_tokens() {
        check(
            "GET /v1 Authorization: Bearer abc.def-123",
            "GET /v1 Authorization: [REDACTED]",
        );
        check(
            "proxy-authorization=Basic dXNlcjpwYXNz next",
            "proxy-authorization=[REDACTED] next",
        );
        check(
            r#"{"authorization": "Bearer zzz"}"#,
            r#"{"authorization": "[REDACTED]"}"#,
        );
        check(
            "curl -H 'X: bearer sk_live_51Habc' failed",
            "curl -H 'X: Bearer [REDACTED]' failed",
        );
    }

    #[test]
    fn key_value_secrets() {
        check(
            "connecting with password=hunter2 user=pat",
            "connecting with password=[REDACTED] user=pat",
        );
        check(
            "db_password: s3cr3t; retry",
            "db_password: [REDACTED]; retry",
        );
        check(
            r#"{"client_secret":"abc","token": "t0k"}"#,
            r#"{"client_secret":"[REDACTED]","token": "[REDACTED]"}"#,
        );
        check("?api_key=XYZ&page=2", "?api_key=[REDACTED]&page=2");
        check("X-Api-Key: 1234", "X-Api-Key: [REDACTED]");
        check("SECRET=abc", "SECRET=[REDACTED]");
    }

    #[test]
    fn token_shapes() {
        check(
            "aws key AKIAIOSFODNN7EXAMPLE used",
            "aws key [REDACTED-AWS-KEY] used",
        );
        check(
            "session eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk ok",
            "session [REDACTED-JWT] ok",
        );
        check(
            "signing key 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "signing key [REDACTED]",
        );
        check(
            "url https://svc:pa55@db.internal:5432/x",
            "url https://svc:[REDACTED]@db.internal:5432/x",
        );
        check(
            "-----BEGIN RSA PRIVATE KEY----- MIIEow",
            "[REDACTED-PRIVATE-KEY]",
        );
    }

    #[test]
    fn ordinary_lines_are_untouched() {
        for line in [
            "GET /v1/charges/ch_123 200 12ms",
            "payment declined: card_expired (order 42)",
            "key not found: user:42",
            "",
        ] {
            assert_eq!(redact(line), line);
        }
    }

    #[test]
    fn long_lines_are_cut_and_tails_kept() {
        let long = "x".repeat(5_000);
        assert_eq!(redact(&long).chars().count(), MAX_LINE_CHARS);
        let lines: Vec<String> = (0..50).map(|i| format!("line {i} token=t{i}")).collect();
        let tail = redact_tail(&lines, 20);
        assert_eq!(tail.len(), 20);
        assert_eq!(tail[0], "line 30 token=[REDACTED]");
        assert_eq!(tail[19], "line 49 token=[REDACTED]");
    }
}
