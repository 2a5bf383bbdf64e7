//! Delivery of notifications to team channels: a background task that POSTs each message to
//! each channel with retries, and never sends one message to one channel twice.
//!
//! [`Notifier::submit`] only queues (a bounded channel, `try_send`), so a rollout or the portal
//! never waits on a slow webhook; when the queue is full the message is dropped and logged. The
//! background task renders the message once per format, then delivers to each channel in its
//! own task (bounded concurrency), so one slow receiver holds up no other. An attempt has a
//! timeout; connection errors, timeouts, `429` (honouring `Retry-After`) and `5xx` are retried
//! with exponential backoff and jitter within a bounded number of attempts and total time;
//! other statuses are final. Every attempt carries the notification id as `Idempotency-Key`,
//! so a receiver can drop a retry of a request whose response we never saw.
//!
//! "Never duplicates" is the [`DeliveryLog`]: a (notification id, channel URL) pair that was
//! delivered once (a 2xx) is skipped from then on, and a pair being delivered right now is
//! skipped too. [`MemoryDeliveryLog`] keeps the set in memory; the controller can back the trait
//! with its SQLite store so the guarantee survives restarts. Webhook URLs are secrets (Slack's
//! carry their token in the path), so logs show only their scheme and host.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use sluice_policy::resources::TeamSpec;
use tokio::sync::{Semaphore, broadcast, mpsc};

use super::Notification;
use super::render::{generic_json, slack_json};

/// The wire format a channel expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Slack incoming-webhook Block Kit JSON (a Team channel's `slack` URL).
    Slack,
    /// Sluice's generic JSON (a Team channel's `webhook` URL).
    Generic,
}

/// One channel to deliver to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// How to render the message.
    pub format: Format,
    /// Where to POST it.
    pub url: String,
}

/// The channels of these teams: each `slack` and `webhook` URL once, in team order.
pub fn targets_for_teams<'a>(teams: impl IntoIterator<Item = &'a TeamSpec>) -> Vec<Target> {
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for channel in teams.into_iter().flat_map(|t| &t.channels) {
        let candidates = [
            channel.slack.as_ref().map(|u| (Format::Slack, u)),
            channel.webhook.as_ref().map(|u| (Format::Generic, u)),
        ];
        for (format, url) in candidates.into_iter().flatten() {
            let target = Target {
                format,
                url: url.clone(),
            };
            if seen.insert(target.clone()) {
                targets.push(target);
            }
        }
    }
    targets
}

/// Remembers which (notification id, channel URL) pairs were delivered, so none is sent twice.
///
/// Implementations must be cheap: they are called on the delivery task for every pair.
pub trait DeliveryLog: Send + Sync {
    /// Whether `key` was delivered before.
    fn already_delivered(&self, key: &str) -> bool;
    /// Records that `key` was delivered.
    fn mark_delivered(&self, key: &str);
}

/// A [`DeliveryLog`] in memory, forgetting the oldest keys beyond a capacity so a long-running
/// controller does not grow without bound.
#[derive(Debug)]
pub struct MemoryDeliveryLog {
    capacity: usize,
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl MemoryDeliveryLog {
    /// A log remembering up to `capacity` keys (100,000 is a few MB).
    pub fn new(capacity: usize) -> MemoryDeliveryLog {
        MemoryDeliveryLog {
            capacity: capacity.max(1),
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }
}

impl Default for MemoryDeliveryLog {
    fn default() -> Self {
        MemoryDeliveryLog::new(100_000)
    }
}

impl DeliveryLog for MemoryDeliveryLog {
    fn already_delivered(&self, key: &str) -> bool {
        // A poisoned lock only means another thread panicked mid-insert; the set is still usable.
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.contains(key)
    }

    fn mark_delivered(&self, key: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *inner;
        if set.insert(key.to_owned()) {
            order.push_back(key.to_owned());
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }
}

/// The key under which a delivery is logged: the notification id and the channel URL.
pub fn delivery_key(id: &str, url: &str) -> String {
    format!("{id} {url}")
}

/// Retry and queue settings.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Attempts per channel, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled each time (with jitter).
    pub initial_backoff: Duration,
    /// Backoff never exceeds this (a `Retry-After` may ask for longer).
    pub max_backoff: Duration,
    /// No attempt starts after this long since the first.
    pub max_total: Duration,
    /// Time limit of one attempt, connecting included.
    pub attempt_timeout: Duration,
    /// Messages waiting for the delivery task; more are dropped (and logged).
    pub queue: usize,
    /// Channels delivered to at the same time.
    pub concurrency: usize,
    /// TLS settings for `https` webhooks. Default: the Mozilla roots compiled in, on `ring`.
    pub tls: Option<rustls::ClientConfig>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_total: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(5),
            queue: 1024,
            concurrency: 8,
            tls: None,
        }
    }
}

/// What became of one (notification, channel) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx on attempt `attempts`.
    Delivered {
        /// Attempts made, the successful one included.
        attempts: u32,
    },
    /// Already delivered (or being delivered): nothing was sent.
    Duplicate,
    /// Given up.
    Failed {
        /// Attempts made (0 if the URL was unusable).
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// Reported on [`Notifier::subscribe`] for every (notification, channel) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The notification id.
    pub id: String,
    /// The channel.
    pub target: Target,
    /// What happened.
    pub outcome: DeliveryOutcome,
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The TLS settings could not be built.
    #[error("could not set up TLS for webhooks: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a notification was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: receivers are slower than events.
    #[error("the notification queue is full; `{0}` was dropped")]
    QueueFull(String),
    /// The delivery task has stopped (the runtime is shutting down).
    #[error("the notifier has stopped; `{0}` was dropped")]
    Stopped(String),
}

/// Why one attempt failed, and whether another may succeed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Permanent(String),
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
}

struct Job {
    notification: Notification,
    targets: Vec<Target>,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends notifications to team channels in the background. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    jobs: mpsc::Sender<Job>,
    reports: broadcast::Sender<DeliveryReport>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// Starts the delivery task on the current Tokio runtime. It stops when every clone of the
    /// notifier is dropped and the queue is drained.
    pub fn start(
        config: DeliveryConfig,
        log: Arc<dyn DeliveryLog>,
    ) -> Result<Notifier, NotifyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match config.tls.clone() {
            Some(tls) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls),
            None => hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)?,
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let (jobs, rx) = mpsc::channel(config.queue.max(1));
        let (reports, _) = broadcast::channel(256);
        let worker = Worker {
            client,
            config: Arc::new(config),
            log,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            reports: reports.clone(),
        };
        tokio::spawn(worker.run(rx));
        Ok(Notifier { jobs, reports })
    }

    /// Queues `notification` for these channels and returns at once.
    pub fn submit(
        &self,
        notification: Notification,
        targets: Vec<Target>,
    ) -> Result<(), SubmitError> {
        let id = notification.id.clone();
        self.jobs
            .try_send(Job {
                notification,
                targets,
            })
            .map_err(|e| {
                let err = match e {
                    mpsc::error::TrySendError::Full(_) => SubmitError::QueueFull(id),
                    mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped(id),
                };
                tracing::warn!(error = %err, "notification not queued");
                err
            })
    }

    /// Queues `notification` for every channel of these teams.
    pub fn notify_teams<'a>(
        &self,
        notification: Notification,
        teams: impl IntoIterator<Item = &'a TeamSpec>,
    ) -> Result<(), SubmitError> {
        self.submit(notification, targets_for_teams(teams))
    }

    /// Reports of every delivery from now on (for status pages and tests). A receiver that
    /// falls more than 256 reports behind misses some.
    pub fn subscribe(&self) -> broadcast::Receiver<DeliveryReport> {
        self.reports.subscribe()
    }
}

struct Worker {
    client: HttpClient,
    config: Arc<DeliveryConfig>,
    log: Arc<dyn DeliveryLog>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    reports: broadcast::Sender<DeliveryReport>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        while let Some(job) = rx.recv().await {
            let n = &job.notification;
            // Rendered once per format, not once per channel.
            let mut slack: Option<Bytes> = None;
            let mut generic: Option<Bytes> = None;
            for target in job.targets {
                let key = delivery_key(&n.id, &target.url);
                // Checked here, on the single worker task, so two submissions of one id cannot
                // both pass the check before either is marked.
                let claimed = !self.log.already_delivered(&key)
                    && self
                        .in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone());
                if !claimed {
                    tracing::debug!(id = %n.id, channel = %display_url(&target.url), "already delivered; skipped");
                    let _ = self.reports.send(DeliveryReport {
                        id: n.id.clone(),
                        target,
                        outcome: DeliveryOutcome::Duplicate,
                    });
                    continue;
                }
                let body = match target.format {
                    Format::Slack => slack
                        .get_or_insert_with(|| Bytes::from(slack_json(n).to_string()))
                        .clone(),
                    Format::Generic => generic
                        .get_or_insert_with(|| Bytes::from(generic_json(n).to_string()))
                        .clone(),
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let delivery = Delivery {
                    client: self.client.clone(),
                    config: self.config.clone(),
                    id: n.id.clone(),
                    target,
                    body,
                };
                let (log, in_flight, reports) = (
                    self.log.clone(),
                    self.in_flight.clone(),
                    self.reports.clone(),
                );
                tokio::spawn(async move {
                    let outcome = delivery.run().await;
                    if matches!(outcome, DeliveryOutcome::Delivered { .. }) {
                        log.mark_delivered(&key);
                    }
                    in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    let _ = reports.send(DeliveryReport {
                        id: delivery.id,
                        target: delivery.target,
                        outcome,
                    });
                    drop(permit);
                });
            }
        }
    }
}

struct Delivery {
    client: HttpClient,
    config: Arc<DeliveryConfig>,
    id: String,
    target: Target,
    body: Bytes,
}

impl Delivery {
    async fn run(&self) -> DeliveryOutcome {
        let channel = display_url(&self.target.url);
        let uri = match parse_url(&self.target.url) {
            Ok(uri) => uri,
            Err(error) => {
                tracing::warn!(id = %self.id, %channel, %error, "notification not delivered");
                return DeliveryOutcome::Failed { attempts: 0, error };
            }
        };
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.attempt(&uri).await {
                Ok(()) => {
                    tracing::debug!(id = %self.id, %channel, attempts, "notification delivered");
                    return DeliveryOutcome::Delivered { attempts };
                }
                Err(AttemptError::Permanent(error)) => error,
                Err(AttemptError::Retryable {
                    message,
                    retry_after,
                }) => {
                    let delay = retry_after.unwrap_or_else(|| self.backoff(attempts));
                    let in_time = started.elapsed() + delay <= self.config.max_total;
                    if attempts < self.config.max_attempts && in_time {
                        tracing::debug!(id = %self.id, %channel, attempts, error = %message, ?delay, "notification attempt failed; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    message
                }
            };
            tracing::warn!(id = %self.id, %channel, attempts, %error, "notification not delivered");
            return DeliveryOutcome::Failed { attempts, error };
        }
    }

    async fn attempt(&self, uri: &Uri) -> Result<(), AttemptError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")));
        // Ids are ours, but a header value still cannot hold every string: skip it rather than
        // not deliver at all.
        if let Ok(key) = HeaderValue::from_str(&self.id) {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(Full::new(self.body.clone()))
            .map_err(|e| AttemptError::Permanent(format!("could not build the request: {e}")))?;
        let response =
            tokio::time::timeout(self.config.attempt_timeout, self.client.request(request))
                .await
                .map_err(|_| AttemptError::Retryable {
                    message: format!("no response within {:?}", self.config.attempt_timeout),
                    retry_after: None,
                })?
                .map_err(|e| AttemptError::Retryable {
                    message: format!("request failed: {}", crate::error_chain(&e)),
                    retry_after: None,
                })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("the receiver answered {status}");
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Err(AttemptError::Retryable {
                message,
                retry_after,
            })
        } else {
            Err(AttemptError::Permanent(message))
        }
    }

    /// Exponential backoff with "equal jitter": half the delay fixed, half random, so retries
    /// from many rollouts do not arrive in lockstep.
    fn backoff(&self, attempts_so_far: u32) -> Duration {
        let exp = self
            .config
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempts_so_far.saturating_sub(1)));
        let capped = exp.min(self.config.max_backoff);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", display_url(url)))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!(
            "`{}` is not an http or https URL",
            display_url(url)
        )),
    }
}

/// `https://hooks.slack.com/…`: enough to tell channels apart in logs without leaking the
/// token a webhook URL carries.
pub fn display_url(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                let host = authority.as_str().rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}/…")
            }
            _ => "(invalid URL)".to_owned(),
        },
        Err(_) => "(invalid URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy::resources::Channel;

    #[test]
    fn targets_come_from_team_channels_once() {
        let team = |channels| TeamSpec {
            members: Vec::new(),
            channels,
            review: Default::default(),
        };
        let a = team(vec![
            Channel {
                name: Some("#payments".into()),
                slack: Some("https://hooks.example/s".into()),
                webhook: Some("http://hooks.example/w".into()),
            },
            Channel {
                name: None,
                slack: None,
                webhook: None,
            },
        ]);
        let b = team(vec![Channel {
            name: None,
            slack: Some("https://hooks.example/s".into()),
            webhook: None,
        }]);
        let targets = targets_for_teams([&a, &b]);
        assert_eq!(
            targets,
            [
                Target {
                    format: Format::Slack,
                    url: "https://hooks.example/s".into()
                },
                Target {
                    format: Format::Generic,
                    url: "http://hooks.example/w".into()
                },
            ]
        );
    }

    #[test]
    fn memory_log_is_bounded() {
        let log = MemoryDeliveryLog::new(2);
        for k in ["a", "b", "c"] {
            log.mark_delivered(k);
        }
        assert!(!log.already_delivered("a"));
        assert!(log.already_delivered("b") && log.already_delivered("c"));
    }

    #[test]
    fn urls_are_checked_and_shown_without_secrets() {
        assert!(parse_url("ftp://x/y").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("http://127.0.0.1:1/x").is_ok());
        assert_eq!(
            display_url("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(display_url("http://user:pw@h:8/x"), "http://h:8/…");
    }
}
