//! Where the engine's numbers come from: the [`MetricSource`] trait and its default, the
//! proxies' own traffic reports.

use super::*;

/// What a metric source answers: cumulative counts, or why it could not.
pub type TotalsFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Counts, String>> + Send + 'a>>;

/// Where cumulative request counts come from. Counts only ever grow (a source that sees a
/// counter reset reports from zero again, which [`Counts::delta`] reads like `increase()`).
pub trait MetricSource: Send + Sync + 'static {
    /// Cumulative counts of `version` of `namespace/service` (stable environment) now.
    fn totals<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
        version: &'a str,
    ) -> TotalsFuture<'a>;

    /// Cumulative counts of the instances of `version` with `role` (`baseline`: a rollout's
    /// fresh copy of the stable version), kept apart from the version's ordinary instances. A
    /// source that cannot tell them apart says so (the engine then judges against the
    /// long-running stable instances).
    fn role_totals<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
        version: &'a str,
        role: &'a str,
    ) -> TotalsFuture<'a> {
        let _ = (namespace, service, version);
        Box::pin(async move {
            Err(format!(
                "this metric source cannot tell `{role}` instances apart from the others"
            ))
        })
    }

    /// Whether [`MetricSource::role_totals`] works, so a rollout may judge against a copy.
    fn tells_roles_apart(&self) -> bool {
        false
    }
}

/// The default source: what the proxies report (`ReportTraffic`), summed per version over
/// the instances, stable environment.
pub struct ProxyTraffic(pub Arc<ControlPlane>);

impl MetricSource for ProxyTraffic {
    fn totals<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
        version: &'a str,
    ) -> TotalsFuture<'a> {
        Box::pin(async move { Ok(self.proxy_totals(namespace, service, version, "")) })
    }

    fn role_totals<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
        version: &'a str,
        role: &'a str,
    ) -> TotalsFuture<'a> {
        Box::pin(async move { Ok(self.proxy_totals(namespace, service, version, role)) })
    }

    fn tells_roles_apart(&self) -> bool {
        true
    }
}

impl ProxyTraffic {
    fn proxy_totals(&self, namespace: &str, service: &str, version: &str, role: &str) -> Counts {
        let t = self.0.traffic().role_totals(
            namespace,
            service,
            version,
            crate::server::register::DEFAULT_ENVIRONMENT,
            role,
        );
        let mut counts = Counts::empty();
        counts.requests = t.requests;
        counts.failures = t.failures;
        if !t.latency.is_empty() {
            counts.latency_buckets = t.latency;
        }
        counts
    }
}
