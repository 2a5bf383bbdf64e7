//! The controller's `Watch` stream as a config source, and `Register` riding on it.
//!
//! One task per proxy keeps a `Watch` stream open. Every `ProxyConfig` received is converted
//! (the proto's `ServiceEndpoints` → [`Endpoints`]) and goes through
//! [`ConfigSource::from_bundle`] and [`apply`], like a snapshot file, so validation, the "keep
//! the old state" rule, logging and the reload metric are shared. A message identical to the
//! last one applied (a reconnect to a controller with nothing new) is not rebuilt.
//!
//! When the stream breaks (the controller restarts, the network drops) the proxy keeps
//! enforcing the state it has and reconnects with exponential backoff and jitter, capped at
//! [`BACKOFF_MAX`], so a restarted controller gets every proxy back within seconds and is not
//! hit by all of them at the same instant. The controller sends its current config first on
//! every stream, which is how a reconnected proxy becomes current again.
//!
//! With a register address (`SLUICE_PROXY_REGISTER_ADDR`) every successful `Watch` is followed
//! by `Register` with the same workload fields: the controller keeps a registration while a
//! stream of the same instance is open (plus a grace period), so registering again after each
//! reconnect is what keeps this instance's endpoint alive across controller restarts.
//!
//! Both calls travel over TLS and present this workload's certificate
//! ([`crate::identity::controller`]): the controller opens a stream, and accepts a registration,
//! only for the workload the certificate names. So the stream starts once the proxy has a
//! certificate (from `Certify` or `SLUICE_PROXY_IDENTITY_DIR`); until then it retries.
//!
//! [`Status`] is what `/config` shows and `/ready` reads: ready once a first config from the
//! controller has been applied (a proxy that never got one is running the empty,
//! deny-by-default config and should not be sent traffic).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_api::v1::mesh_client::MeshClient;
use sluice_api::v1::{ProxyConfig, Registration, WatchRequest, Workload};
use tonic::transport::Channel;

use super::endpoints::{Endpoint, ServiceEndpoints, VersionEndpoints};
use super::source::apply;
use super::{ConfigSource, Endpoints, ProxyState, SharedState, SourceError};
use crate::config::{Config, SourceKind};
use crate::identity::IdentityStore;
use crate::identity::certify::{self, CertifyError};
use crate::identity::controller::ControllerConn;
use crate::metrics::Metrics;

/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay: a proxy without its stream misses every change meanwhile.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Deadline for connecting, and for one `Register` call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the stream, so a controller that vanished without closing the connection
/// (a partition, a host that died) is noticed within interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who watches, and where.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The controller, and how to trust it.
    pub controller: ControllerConn,
    /// The workload this proxy fronts (the same fields in `Watch` and `Register`).
    pub workload: Workload,
    /// This proxy process.
    pub proxy_id: String,
    /// The address to register, if any.
    pub register: Option<SocketAddr>,
    /// This workload's certificate, which every call presents.
    pub identity: Arc<IdentityStore>,
    /// Turns true once the proxy's listeners accept connections. Registering earlier would
    /// hand peers an endpoint that refuses them (the first config and the workload
    /// certificate arrive while the listeners bind). `None`: register at once.
    pub serving: Option<tokio::sync::watch::Receiver<bool>>,
}

impl WatchConfig {
    /// The `Watch` configuration, when the controller is the config source.
    pub fn from_config(config: &Config, identity: Arc<IdentityStore>) -> Option<WatchConfig> {
        if config.source != SourceKind::Controller {
            return None;
        }
        let w = config.workload();
        Some(WatchConfig {
            controller: config.controller()?,
            workload: Workload {
                namespace: w.namespace,
                service: w.service,
                version: w.version,
                environment: w.environment,
                instance: w.instance,
                role: w.role,
            },
            proxy_id: config.proxy_id.clone(),
            register: config.register_addr,
            identity,
            serving: None,
        })
    }
}

/// The stream's condition, for `/config` and `/ready`.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    connected: bool,
    registered: bool,
    /// The version of the last message received, applied or not.
    received: Option<String>,
    /// The version of the last message applied.
    applied: Option<String>,
    /// Why the last stream ended or the last message was refused.
    last_error: Option<String>,
    /// Streams opened so far.
    connects: u64,
}

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut StatusInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether a config from the controller is in force.
    pub fn ready(&self) -> bool {
        self.with(|s| s.applied.is_some())
    }

    /// For `/config`.
    pub fn json(&self) -> serde_json::Value {
        self.with(|s| {
            serde_json::json!({
                "connected": s.connected,
                "registered": s.registered,
                "last_version_received": s.received,
                "last_version_applied": s.applied,
                "last_error": s.last_error,
                "connects": s.connects,
            })
        })
    }
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Connect(#[from] CertifyError),
    #[error("Watch refused: {0}")]
    Refused(tonic::Status),
    #[error("stream broken: {0}")]
    Broken(tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
}

/// Follows the controller forever: one stream at a time, reconnecting with backoff.
pub async fn run(
    config: WatchConfig,
    shared: Arc<SharedState>,
    metrics: Metrics,
    status: Arc<Status>,
) {
    let source = ConfigSource::Controller {
        addr: config.controller.addr.clone(),
    }
    .describe();
    let mut last: Option<ProxyConfig> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let error = follow(
            &config,
            &source,
            &shared,
            &metrics,
            &status,
            &mut last,
            &mut backoff,
        )
        .await;
        let text = error.to_string();
        status.with(|s| {
            s.connected = false;
            s.registered = false;
            s.last_error = Some(text.clone());
        });
        let (sleep, next) = certify::next_backoff_capped(backoff, BACKOFF_MAX, &mut rand::rng());
        backoff = next;
        let version = shared.current().version.clone();
        if matches!(error, StreamError::Connect(CertifyError::NoCertificate)) {
            // Expected for a moment at start: the first certificate is on its way.
            tracing::info!(%source, retry_in = ?sleep, "waiting for this proxy's mesh certificate before watching the controller");
        } else if let StreamError::Refused(s) = &error
            && matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
            )
        {
            tracing::error!(%source, error = %text, %version, retry_in = ?sleep,
                "the controller refused this proxy's Watch; still enforcing the current config");
        } else {
            tracing::warn!(%source, error = %text, %version, retry_in = ?sleep,
                "no config stream from the controller; still enforcing the current config");
        }
        tokio::time::sleep(sleep).await;
    }
}

/// Opens one stream and applies what arrives until it ends. Resets `backoff` once the stream
/// is open, so the next outage starts retrying quickly again.
async fn follow(
    config: &WatchConfig,
    source: &str,
    shared: &Arc<SharedState>,
    metrics: &Metrics,
    status: &Arc<Status>,
    last: &mut Option<ProxyConfig>,
    backoff: &mut Duration,
) -> StreamError {
    // The controller opens a stream only for the workload a certificate proves.
    if config
        .identity
        .current()
        .is_none_or(|c| c.not_after <= std::time::SystemTime::now())
    {
        return CertifyError::NoCertificate.into();
    }
    let endpoint = match config.controller.endpoint() {
        Ok(e) => e
            .connect_timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true),
        Err(e) => return e.into(),
    };
    let channel = match config.controller.connect(endpoint, &config.identity).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let request = WatchRequest {
        workload: Some(config.workload.clone()),
        proxy_id: config.proxy_id.clone(),
        have_version: last.as_ref().map(|c| c.version.clone()).unwrap_or_default(),
    };
    let mut stream = match MeshClient::new(channel.clone()).watch(request).await {
        Ok(rsp) => rsp.into_inner(),
        Err(s) => return StreamError::Refused(s),
    };
    *backoff = BACKOFF_MIN;
    status.with(|s| {
        s.connected = true;
        s.connects += 1;
    });
    tracing::info!(%source, "config stream open");
    let _register = config.register.map(|address| {
        let registration = Registration {
            workload: Some(config.workload.clone()),
            address: address.to_string(),
        };
        AbortOnDrop(tokio::spawn(register(
            channel,
            registration,
            status.clone(),
            config.serving.clone(),
        )))
    });
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return StreamError::Closed,
            Err(s) => return StreamError::Broken(s),
        };
        let version = message.version.clone();
        status.with(|s| s.received = Some(version.clone()));
        if last.as_ref() == Some(&message) {
            continue;
        }
        let built = {
            let shared = shared.clone();
            let message = message.clone();
            tokio::task::spawn_blocking(move || build(message, &shared)).await
        };
        let Ok(built) = built else {
            continue; // the build panicked; the panic is already logged
        };
        let refused = built.as_ref().err().map(ToString::to_string);
        apply(shared, source, built, metrics);
        status.with(|s| match refused {
            Some(e) => s.last_error = Some(format!("config {version} refused: {e}")),
            None => s.applied = Some(version),
        });
        *last = Some(message);
    }
}

/// Registers this instance, retrying with backoff until the controller accepts (within one
/// stream; the next stream registers again).
async fn register(
    channel: Channel,
    registration: Registration,
    status: Arc<Status>,
    serving: Option<tokio::sync::watch::Receiver<bool>>,
) {
    if let Some(mut serving) = serving
        && serving.wait_for(|up| *up).await.is_err()
    {
        return; // the proxy is shutting down before it ever served
    }
    let mut client = MeshClient::new(channel);
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut request = tonic::Request::new(registration.clone());
        request.set_timeout(CALL_TIMEOUT);
        let result = client.register(request).await.map_err(|s| s.to_string());
        match result {
            Ok(_) => {
                tracing::info!(address = %registration.address, "registered with the controller");
                status.with(|s| s.registered = true);
                return;
            }
            Err(error) => {
                tracing::warn!(address = %registration.address, %error, "registration failed; retrying");
            }
        }
        let (sleep, next) = certify::next_backoff_capped(backoff, BACKOFF_MAX, &mut rand::rng());
        backoff = next;
        tokio::time::sleep(sleep).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A `ProxyConfig` as a state.
pub fn build(message: ProxyConfig, shared: &SharedState) -> Result<ProxyState, SourceError> {
    let services = endpoints_from_proto(message.services)?;
    ConfigSource::from_bundle(message.version, &message.policy_bundle, services, shared)
}

/// The proto's `ServiceEndpoints` as the proxy's [`Endpoints`], with the same defaults as the
/// JSON form (namespace `default`, environment `stable`).
pub fn endpoints_from_proto(
    services: Vec<sluice_api::v1::ServiceEndpoints>,
) -> Result<Endpoints, SourceError> {
    let addr = |service: &str, a: &str| {
        a.parse::<SocketAddr>()
            .map_err(|_| SourceError::Endpoints(format!("service {service}: `{a}` is not ip:port")))
    };
    let or = |s: String, default: &str| if s.is_empty() { default.to_owned() } else { s };
    services
        .into_iter()
        .map(|s| {
            Ok(ServiceEndpoints {
                addresses: s
                    .addresses
                    .iter()
                    .map(|a| addr(&s.service, a))
                    .collect::<Result<_, _>>()?,
                versions: s
                    .versions
                    .into_iter()
                    .map(|v| {
                        Ok(VersionEndpoints {
                            endpoints: v
                                .endpoints
                                .into_iter()
                                .map(|e| {
                                    Ok(Endpoint {
                                        address: addr(&s.service, &e.address)?,
                                        instance: e.instance,
                                    })
                                })
                                .collect::<Result<_, SourceError>>()?,
                            version: v.version,
                            environment: or(v.environment, super::endpoints::STABLE),
                            role: v.role,
                        })
                    })
                    .collect::<Result<_, SourceError>>()?,
                namespace: or(s.namespace, sluice_policy::resources::DEFAULT_NAMESPACE),
                service: s.service,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::v1 as api;

    #[test]
    fn proto_endpoints_convert_with_the_json_defaults() {
        let proto = vec![api::ServiceEndpoints {
            namespace: String::new(),
            service: "pay".into(),
            addresses: vec!["10.0.0.1:80".into()],
            versions: vec![api::VersionEndpoints {
                version: "v1".into(),
                environment: String::new(),
                role: String::new(),
                endpoints: vec![api::Endpoint {
                    address: "127.0.0.1:1".into(),
                    instance: "pay-0".into(),
                }],
            }],
        }];
        let json: Endpoints = serde_json::from_str(
            r#"[{"service":"pay","addresses":["10.0.0.1:80"],
                "versions":[{"version":"v1","endpoints":[{"address":"127.0.0.1:1","instance":"pay-0"}]}]}]"#,
        )
        .expect("json");
        assert_eq!(endpoints_from_proto(proto.clone()).expect("valid"), json);

        let mut bad = proto;
        bad[0].versions[0].endpoints[0].address = "pay:80".into();
        let err = endpoints_from_proto(bad).expect_err("not ip:port");
        assert!(err.to_string().contains("pay:80"), "{err}");
    }
}
