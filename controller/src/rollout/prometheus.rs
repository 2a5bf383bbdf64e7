//! The Prometheus metric provider: a [`MetricSource`] that reads a version's cumulative
//! counters from a Prometheus HTTP API instead of from the proxies' own reports, for clusters
//! that already scrape the sidecars.
//!
//! Every look runs three instant queries (`GET {address}/api/v1/query`) over the series the
//! sidecars export (`proxy/src/metrics.rs`), on the inbound side because there the labels are
//! the callee's own service and version, per scraped instance:
//!
//! - requests: `sum by (instance) (sluice_proxy_responses_total{direction="inbound",dst_service=…,dst_version=…})`
//! - failures: the same with `classification="failure"`
//! - latency: `sum by (instance, le) (sluice_proxy_response_latency_seconds_bucket{…})`
//!
//! The queries stay cumulative (no `increase()`), because the engine diffs consecutive looks
//! itself, exactly as it does with the proxies' totals. They are kept per instance so that a
//! restarted sidecar (its counters back at zero) or a vanished one cannot make the version's
//! total drop: each series is folded like `increase()` folds resets (a drop adds the last value
//! to the series' base), and the total is the sum of the folded series, which never decreases. The three are evaluated at one pinned
//! `time`, so a scrape landing between them cannot make failures outrun requests.
//!
//! An empty result means "no series yet" (a canary that has had no traffic) and reads as zero,
//! not as an error: no traffic is inconclusive for the judge, and the progress deadline still
//! applies. Everything else that goes wrong (no connection, a timeout, a non-JSON answer, a
//! Prometheus `status: error`) is an error whose text says what happened, so the engine's "no
//! metrics this interval" warning is actionable.
//!
//! [`render`] substitutes `{{service}}`, `{{version}}`, `{{namespace}}` and `{{interval}}`
//! into a PromQL template; checks with a custom `query` are evaluated by
//! [`super::custom`] (plain comparisons, since the judge's tests need counts).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use super::engine::{MetricSource, TotalsFuture};
use super::judge::Counts;

/// How long one query may take, connection and body included.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of a response we read: a `sum by (le)` answer is a few kB, so anything near this
/// is not the answer we asked for, and a bound keeps a wrong address from costing memory.
const MAX_BODY: usize = 4 << 20;

/// Cumulative responses of one version, every classification.
pub const REQUESTS_QUERY: &str = r#"sum by (instance) (sluice_proxy_responses_total{direction="inbound",dst_service="{{service}}",dst_version="{{version}}"})"#;

/// Cumulative responses of one version classified as failures.
pub const FAILURES_QUERY: &str = r#"sum by (instance) (sluice_proxy_responses_total{direction="inbound",dst_service="{{service}}",dst_version="{{version}}",classification="failure"})"#;

/// The cumulative latency histogram of one version, one series per bucket bound.
pub const LATENCY_QUERY: &str = r#"sum by (instance, le) (sluice_proxy_response_latency_seconds_bucket{direction="inbound",dst_service="{{service}}",dst_version="{{version}}"})"#;

/// The `{{interval}}` the default queries are rendered with. They are cumulative and do not use
/// it; it is here so a template that does still renders to valid PromQL.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Why a query gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// `analysis.provider.prometheus.address` is not an `http://` URL we can query.
    #[error("invalid Prometheus address `{address}`: {reason}")]
    Address {
        /// The configured address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection, or the connection broke.
    #[error("querying Prometheus at {address} failed: {message}")]
    Transport {
        /// The configured address.
        address: String,
        /// The client's error chain.
        message: String,
    },
    /// No complete answer within [`QUERY_TIMEOUT`].
    #[error("Prometheus at {address} did not answer within {timeout:?}")]
    Timeout {
        /// The configured address.
        address: String,
        /// The limit.
        timeout: Duration,
    },
    /// A non-2xx answer that is not Prometheus's JSON error (a proxy, a wrong path).
    #[error("Prometheus answered HTTP {status}: {body}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// Prometheus refused or failed the query (`"status": "error"`), e.g. a PromQL syntax error.
    #[error("Prometheus query failed (HTTP {status}, {error_type}): {error}")]
    Query {
        /// The HTTP status code.
        status: u16,
        /// Prometheus's `errorType` (`bad_data`, `timeout`, `execution`, …).
        error_type: String,
        /// Prometheus's `error` text.
        error: String,
    },
    /// The answer is not the API's JSON, or not the shape asked for.
    #[error("unexpected answer from Prometheus: {0}")]
    Unexpected(String),
}

/// One sample of an instant vector: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' labels (`le` for a `sum by (le)`, none for a plain `sum`).
    pub labels: BTreeMap<String, String>,
    /// The value. Prometheus sends it as a string, which may be `NaN` or `±Inf`.
    pub value: f64,
}

/// The values [`render`] substitutes.
#[derive(Clone, Copy, Debug)]
pub struct QueryVars<'a> {
    /// `{{namespace}}`.
    pub namespace: &'a str,
    /// `{{service}}`.
    pub service: &'a str,
    /// `{{version}}`.
    pub version: &'a str,
    /// `{{interval}}`, rendered as a PromQL duration (`5s`, `1500ms`).
    pub interval: Duration,
}

/// `template` with `{{service}}`, `{{version}}` and `{{namespace}}` replaced by the values
/// escaped for a PromQL double-quoted string (they are meant to sit inside `"…"`), and
/// `{{interval}}` by a PromQL duration. One pass, left to right, so a value that itself contains
/// `{{…}}` is never substituted again; unknown placeholders stay as written (Prometheus then
/// reports them as a syntax error, which is clearer than a silent empty string).
pub fn render(template: &str, vars: &QueryVars<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            // An unclosed `{{`: nothing more to substitute.
            out.push_str(&rest[start..]);
            return out;
        };
        match after[..end].trim() {
            "service" => out.push_str(&escape_label_value(vars.service)),
            "version" => out.push_str(&escape_label_value(vars.version)),
            "namespace" => out.push_str(&escape_label_value(vars.namespace)),
            "interval" => out.push_str(&promql_duration(vars.interval)),
            _ => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `value` escaped for a PromQL double-quoted string literal. Backslash and double quote are
/// what could end the literal or change its meaning; line breaks are escaped too because a raw
/// one is a syntax error inside `"…"`.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// A PromQL duration: whole seconds as `5s`, else milliseconds (`1500ms`); never `0s`, which
/// Prometheus rejects in a range selector.
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The API envelope (`/api/v1/query`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    #[serde(default)]
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`.
    value: (f64, String),
}

fn parse_value(s: &str) -> Result<f64, PrometheusError> {
    // Go's float formatting: digits, exponents, `NaN`, `+Inf`, `-Inf`; Rust parses them all.
    s.parse::<f64>()
        .map_err(|_| PrometheusError::Unexpected(format!("sample value `{s}` is not a number")))
}

/// The samples of an `/api/v1/query` answer (`status` is the HTTP status code). A scalar
/// result is one sample without labels; a matrix or string result is an error (an instant
/// query of a counter never gives one).
pub fn parse_response(status: u16, body: &[u8]) -> Result<Vec<Sample>, PrometheusError> {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) if (200..300).contains(&status) => {
            return Err(PrometheusError::Unexpected(format!(
                "not the query API's JSON ({e}): {}",
                snippet(body)
            )));
        }
        Err(_) => {
            return Err(PrometheusError::Http {
                status,
                body: snippet(body),
            });
        }
    };
    if envelope.status != "success" {
        return Err(PrometheusError::Query {
            status,
            error_type: envelope.error_type.unwrap_or_else(|| "unknown".to_owned()),
            error: envelope
                .error
                .unwrap_or_else(|| format!("status `{}` without an error text", envelope.status)),
        });
    }
    let Some(data) = envelope.data else {
        return Err(PrometheusError::Unexpected(
            "`status: success` without `data`".to_owned(),
        ));
    };
    let invalid = |e: serde_json::Error| {
        PrometheusError::Unexpected(format!("malformed {} result: {e}", data.result_type))
    };
    match data.result_type.as_str() {
        "vector" => {
            let raw: Vec<RawSample> =
                serde_json::from_value(data.result.clone()).map_err(invalid)?;
            raw.into_iter()
                .map(|s| {
                    Ok(Sample {
                        labels: s.metric,
                        value: parse_value(&s.value.1)?,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (_, value): (f64, String) =
                serde_json::from_value(data.result.clone()).map_err(invalid)?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: parse_value(&value)?,
            }])
        }
        other => Err(PrometheusError::Unexpected(format!(
            "a `{other}` result where an instant vector was expected"
        ))),
    }
}

/// A counter's value as a count: finite, not negative, rounded (sums of float counters may be
/// off by a rounding error).
fn as_count(value: f64, what: &str) -> Result<u64, PrometheusError> {
    if !value.is_finite() || value < -0.5 {
        return Err(PrometheusError::Unexpected(format!(
            "{what} is {value}, not a count"
        )));
    }
    // Saturating: a counter beyond 2^64 is not a real one, but must not panic either.
    Ok(value.round().max(0.0) as u64)
}

/// The total of a `sum(...)` answer: the sum of its samples (normally one), zero for an empty
/// vector (no series yet: a version without traffic).
pub fn total(samples: &[Sample], what: &str) -> Result<u64, PrometheusError> {
    samples.iter().try_fold(0u64, |acc, s| {
        Ok(acc.saturating_add(as_count(s.value, what)?))
    })
}

/// The buckets of a `sum by (le)` answer as [`Counts::latency_buckets`]: finite bounds only
/// (`+Inf` is the request count itself), rising, samples with equal bounds merged (`1` and
/// `1.0` from exporters that format bounds differently).
pub fn buckets(samples: &[Sample]) -> Result<Vec<(f64, u64)>, PrometheusError> {
    let mut out: Vec<(f64, u64)> = Vec::with_capacity(samples.len());
    for s in samples {
        let Some(le) = s.labels.get("le") else {
            return Err(PrometheusError::Unexpected(
                "a latency sample without an `le` label (is the query `sum by (le)`?)".to_owned(),
            ));
        };
        let bound = parse_value(le)?;
        if bound.is_nan() {
            return Err(PrometheusError::Unexpected(format!(
                "bucket bound `le=\"{le}\"` is not a number"
            )));
        }
        if bound.is_infinite() {
            continue;
        }
        out.push((bound, as_count(s.value, "a latency bucket")?));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = kept.1.saturating_add(later.1);
        }
        same
    });
    Ok(out)
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `s` percent-encoded for a query string: everything but RFC 3986's unreserved characters.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Prometheus HTTP API as a [`MetricSource`]. Cheap to share: the engine keeps one per
/// address, and its client pools connections.
pub struct PrometheusSource {
    /// Base URL without a trailing slash, e.g. `http://prometheus.monitoring:9090`.
    address: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Per (namespace, service, version): every series seen, folded across resets.
    folds: std::sync::Mutex<std::collections::HashMap<(String, String, String), Folds>>,
}

/// Counter series folded across resets: series key → (last value, base).
#[derive(Default)]
struct Fold(std::collections::HashMap<String, (u64, u64)>);

impl Fold {
    /// Records a series' current value; a drop means the counter restarted from zero.
    fn update(&mut self, key: String, value: u64) {
        let (last, base) = self.0.entry(key).or_insert((0, 0));
        if value < *last {
            *base = base.saturating_add(*last);
        }
        *last = value;
    }

    fn value(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .map_or(0, |(last, base)| last.saturating_add(*base))
    }

    /// The sum over every series ever seen (one that vanished keeps its last value).
    fn total(&self) -> u64 {
        self.0
            .keys()
            .map(|k| self.value(k))
            .fold(0, u64::saturating_add)
    }
}

#[derive(Default)]
struct Folds {
    requests: Fold,
    failures: Fold,
    /// Keyed by `instance` and `le`.
    latency: Fold,
}

/// A series' key: its labels other than `le`, in order.
fn series_key(sample: &Sample) -> String {
    sample
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != "le")
        .map(|(k, v)| format!("{k}={v},"))
        .collect()
}

impl std::fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusSource")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl PrometheusSource {
    /// A source querying `address` (`http://host:port`, optionally with a path prefix). Never
    /// fails: a bad address is reported by every query, so a rollout with it stays
    /// inconclusive and visibly warns instead of silently measuring something else.
    pub fn new(address: &str) -> PrometheusSource {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build_http();
        PrometheusSource {
            address: address.trim().trim_end_matches('/').to_owned(),
            client,
            folds: std::sync::Mutex::default(),
        }
    }

    /// The base URL queried.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Runs an instant query, evaluated at `at` (Unix seconds) or at Prometheus's now.
    pub async fn query(
        &self,
        promql: &str,
        at: Option<f64>,
    ) -> Result<Vec<Sample>, PrometheusError> {
        let address_error = |reason: &str| PrometheusError::Address {
            address: self.address.clone(),
            reason: reason.to_owned(),
        };
        if !self.address.starts_with("http://") {
            return Err(address_error(if self.address.starts_with("https://") {
                "only http:// is supported for now (put a plain-HTTP proxy in front, or use the \
                 default proxy-reported metrics)"
            } else {
                "expected http://host:port"
            }));
        }
        let mut url = format!("{}/api/v1/query?query={}", self.address, urlencode(promql));
        if let Some(t) = at {
            url.push_str(&format!("&time={t:.3}"));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| address_error(&format!("not a URL: {e}")))?;
        let request = Request::get(uri)
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| address_error(&format!("cannot build a request: {e}")))?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| PrometheusError::Transport {
                        address: self.address.clone(),
                        message: crate::error_chain(&e),
                    })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| PrometheusError::Transport {
                    address: self.address.clone(),
                    message: format!("reading the answer: {}", crate::error_chain(&*e)),
                })?
                .to_bytes();
            Ok::<_, PrometheusError>((status, body))
        };
        let (status, body) = tokio::time::timeout(QUERY_TIMEOUT, exchange)
            .await
            .map_err(|_| PrometheusError::Timeout {
                address: self.address.clone(),
                timeout: QUERY_TIMEOUT,
            })??;
        parse_response(status, &body)
    }

    /// Cumulative counts of `version` of `namespace/service`, from the default queries.
    pub async fn counts(
        &self,
        namespace: &str,
        service: &str,
        version: &str,
    ) -> Result<Counts, PrometheusError> {
        let vars = QueryVars {
            namespace,
            service,
            version,
            interval: DEFAULT_INTERVAL,
        };
        // One evaluation time for the three queries, so they describe the same scrape.
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .ok();
        let requests = render(REQUESTS_QUERY, &vars);
        let failures = render(FAILURES_QUERY, &vars);
        let latency = render(LATENCY_QUERY, &vars);
        let (requests, failures, latency) = tokio::try_join!(
            self.query(&requests, at),
            self.query(&failures, at),
            self.query(&latency, at),
        )?;
        let mut folds = self
            .folds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let f = folds
            .entry((namespace.to_owned(), service.to_owned(), version.to_owned()))
            .or_default();
        for s in &requests {
            f.requests
                .update(series_key(s), as_count(s.value, "the request count")?);
        }
        for s in &failures {
            f.failures
                .update(series_key(s), as_count(s.value, "the failure count")?);
        }
        // Each (instance, bucket) series is folded on its own, then the buckets are summed by
        // bound as `sum by (le)` would.
        let mut folded = Vec::with_capacity(latency.len());
        for s in &buckets_checked(&latency)? {
            let key = format!(
                "{}le={}",
                series_key(s),
                s.labels.get("le").map_or("", String::as_str)
            );
            f.latency
                .update(key.clone(), as_count(s.value, "a latency bucket")?);
            let mut sample = s.clone();
            sample.value = f.latency.value(&key) as f64;
            folded.push(sample);
        }
        let mut counts = Counts::empty();
        counts.requests = f.requests.total();
        counts.failures = f.failures.total().min(counts.requests);
        let latency = buckets(&folded)?;
        // No series yet keeps the proxy's (empty) bucket layout, as the default source does.
        if !latency.is_empty() {
            counts.latency_buckets = latency;
        }
        Ok(counts)
    }
}

/// The latency samples, each checked to carry an `le` label.
fn buckets_checked(samples: &[Sample]) -> Result<Vec<Sample>, PrometheusError> {
    samples
        .iter()
        .map(|s| {
            if s.labels.contains_key("le") {
                Ok(s.clone())
            } else {
                Err(PrometheusError::Unexpected(
                    "a latency sample without an `le` label (is the query `sum by (instance, le)`?)"
                        .to_owned(),
                ))
            }
        })
        .collect()
}

impl MetricSource for PrometheusSource {
    fn totals<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
        version: &'a str,
    ) -> TotalsFuture<'a> {
        Box::pin(async move {
            self.counts(namespace, service, version)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_series_never_decrease_across_restarts_and_vanishing() {
        let mut f = Fold::default();
        f.update("instance=a,".into(), 100);
        f.update("instance=b,".into(), 50);
        assert_eq!(f.total(), 150);
        // a restarted: its counter is back near zero; b vanished (no sample this look).
        f.update("instance=a,".into(), 7);
        assert_eq!(f.total(), 157);
        f.update("instance=a,".into(), 20);
        assert_eq!(f.total(), 170);
    }

    fn vars() -> QueryVars<'static> {
        QueryVars {
            namespace: "default",
            service: "payments",
            version: "v2",
            interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn renders_the_default_queries() {
        assert_eq!(
            render(REQUESTS_QUERY, &vars()),
            r#"sum by (instance) (sluice_proxy_responses_total{direction="inbound",dst_service="payments",dst_version="v2"})"#
        );
        assert_eq!(
            render(FAILURES_QUERY, &vars()),
            r#"sum by (instance) (sluice_proxy_responses_total{direction="inbound",dst_service="payments",dst_version="v2",classification="failure"})"#
        );
        assert_eq!(
            render(LATENCY_QUERY, &vars()),
            r#"sum by (instance, le) (sluice_proxy_response_latency_seconds_bucket{direction="inbound",dst_service="payments",dst_version="v2"})"#
        );
    }

    #[test]
    fn renders_every_variable_and_leaves_unknown_ones() {
        let t = r#"rate(x{ns="{{namespace}}",s="{{ service }}",v="{{version}}"}[{{interval}}]) {{nope}} {{"#;
        assert_eq!(
            render(t, &vars()),
            r#"rate(x{ns="default",s="payments",v="v2"}[5s]) {{nope}} {{"#
        );
        let odd = QueryVars {
            interval: Duration::from_millis(1500),
            ..vars()
        };
        assert_eq!(render("[{{interval}}]", &odd), "[1500ms]");
        assert_eq!(promql_duration(Duration::ZERO), "1ms");
        assert_eq!(promql_duration(Duration::from_secs(60)), "60s");
    }

    #[test]
    fn escapes_label_values_and_never_substitutes_twice() {
        let hostile = QueryVars {
            service: r#"a"} or vector(1) or x{y="\"#,
            version: "{{service}}",
            ..vars()
        };
        let out = render(r#"x{s="{{service}}",v="{{version}}"}"#, &hostile);
        assert_eq!(
            out,
            r#"x{s="a\"} or vector(1) or x{y=\"\\",v="{{service}}"}"#
        );
        assert_eq!(escape_label_value("a\nb"), "a\\nb");
        assert_eq!(escape_label_value("plain-v1.2"), "plain-v1.2");
    }

    #[test]
    fn parses_a_vector_with_a_value() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1712345678.123,"1234"]}]}}"#;
        let samples = parse_response(200, body).expect("parses");
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].value, 1234.0);
        assert_eq!(total(&samples, "requests").expect("a count"), 1234);
    }

    #[test]
    fn an_empty_vector_is_zero() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let samples = parse_response(200, body).expect("parses");
        assert!(samples.is_empty());
        assert_eq!(total(&samples, "requests").expect("a count"), 0);
        assert_eq!(buckets(&samples).expect("buckets"), vec![]);
    }

    #[test]
    fn an_error_status_carries_prometheus_text() {
        // What Prometheus 2.x answers (HTTP 400) to `sum(`.
        let body = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unclosed left parenthesis"}"#;
        let err = parse_response(400, body).expect_err("an error");
        let text = err.to_string();
        assert!(text.contains("bad_data"), "{text}");
        assert!(text.contains("unclosed left parenthesis"), "{text}");
        assert!(text.contains("HTTP 400"), "{text}");
    }

    #[test]
    fn non_json_answers_are_clear_errors() {
        let err = parse_response(502, b"<html>Bad Gateway</html>").expect_err("an error");
        assert_eq!(
            err.to_string(),
            "Prometheus answered HTTP 502: <html>Bad Gateway</html>"
        );
        let err = parse_response(200, b"hello").expect_err("an error");
        assert!(
            err.to_string().contains("not the query API's JSON"),
            "{err}"
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let err = parse_response(200, matrix).expect_err("an error");
        assert!(err.to_string().contains("`matrix` result"), "{err}");
        let bad = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"many"]}]}}"#;
        assert!(parse_response(200, bad).is_err());
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        let samples = parse_response(200, nan).expect("parses");
        assert!(total(&samples, "requests").is_err());
    }

    #[test]
    fn parses_a_histogram_sum_by_le() {
        // Prometheus 2.42's answer to the latency query, trimmed to five bounds (+Inf first, as
        // the API returns series in no particular order).
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"le":"+Inf"},"value":[1712345678.5,"100"]},
            {"metric":{"le":"0.1"},"value":[1712345678.5,"90"]},
            {"metric":{"le":"0.005"},"value":[1712345678.5,"10"]},
            {"metric":{"le":"1"},"value":[1712345678.5,"99"]},
            {"metric":{"le":"0.05"},"value":[1712345678.5,"60"]},
            {"metric":{"le":"1.0"},"value":[1712345678.5,"1"]}
        ]}}"#;
        let samples = parse_response(200, body).expect("parses");
        assert_eq!(
            buckets(&samples).expect("buckets"),
            vec![(0.005, 10), (0.05, 60), (0.1, 90), (1.0, 100)]
        );
        let no_le = vec![Sample {
            labels: BTreeMap::new(),
            value: 1.0,
        }];
        assert!(buckets(&no_le).is_err());
    }

    #[test]
    fn parses_a_scalar() {
        let body =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1712345678.5,"7"]}}"#;
        let samples = parse_response(200, body).expect("parses");
        assert_eq!(total(&samples, "x").expect("a count"), 7);
    }

    #[test]
    fn encodes_the_query_string() {
        assert_eq!(urlencode(r#"sum(x{a="b"})"#), "sum%28x%7Ba%3D%22b%22%7D%29");
        assert_eq!(urlencode("a b+c"), "a%20b%2Bc");
    }

    #[tokio::test]
    async fn address_and_connection_errors_say_what_happened() {
        let https = PrometheusSource::new("https://prom:9090");
        let err = https
            .totals("default", "payments", "v2")
            .await
            .expect_err("https");
        assert!(err.contains("only http://"), "{err}");
        let junk = PrometheusSource::new("prometheus:9090");
        let err = junk
            .totals("default", "payments", "v2")
            .await
            .expect_err("no scheme");
        assert!(err.contains("expected http://host:port"), "{err}");
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let closed = PrometheusSource::new(&format!("http://127.0.0.1:{port}/"));
        assert_eq!(closed.address(), format!("http://127.0.0.1:{port}"));
        let err = closed
            .totals("default", "payments", "v2")
            .await
            .expect_err("connection refused");
        assert!(
            err.contains(&format!(
                "querying Prometheus at http://127.0.0.1:{port} failed"
            )),
            "{err}"
        );
    }
}
