//! Random choices: a version by weight, then an endpoint by power of two choices.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::net::SocketAddr;

use dashmap::DashMap;
use rand::Rng;

use super::table::{Endpoint, Split};

/// Picks an index from `split` with probability exactly `weight / total` (a uniform draw over
/// the integer range, so no floating-point bias).
pub fn weighted(split: &Split, rng: &mut impl Rng) -> usize {
    let total: u64 = split.0.iter().map(|&(_, w)| u64::from(w)).sum();
    // `compile` guarantees total > 0; an empty range would panic, so fall back to the first.
    if total == 0 {
        return split.0.first().map_or(0, |&(i, _)| i);
    }
    let mut r = rng.random_range(0..total);
    for &(i, w) in &split.0 {
        let w = u64::from(w);
        if r < w {
            return i;
        }
        r -= w;
    }
    split.0.last().map_or(0, |&(i, _)| i)
}

/// Power of two choices: sample two distinct endpoints and take the one with fewer requests in
/// flight. Nearly as good as least-loaded, without scanning or coordinating.
pub fn p2c<'a>(endpoints: &'a [Endpoint], rng: &mut impl Rng) -> Option<&'a Endpoint> {
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        n => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            let load = |e: &Endpoint| e.in_flight.load(Ordering::Relaxed);
            Some(if load(eb) < load(ea) { eb } else { ea })
        }
    }
}

/// In-flight counters per endpoint address. They outlive routing tables, so a reload does
/// not forget how loaded each endpoint is.
#[derive(Debug, Default)]
pub struct Counters(DashMap<SocketAddr, Arc<AtomicUsize>>);

impl Counters {
    /// The counter for `addr`, created at zero on first use.
    pub fn get(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        self.0.entry(addr).or_default().clone()
    }

    /// Lets go of the counters no routing table or request holds any more: endpoints change
    /// with every rollout, and the addresses of pods long gone would otherwise pile up.
    pub fn prune(&self) {
        self.0.retain(|_, counter| Arc::strong_count(counter) > 1);
    }

    /// How many endpoints have a counter.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Counts one outstanding request (or connection) against an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Starts counting.
    pub fn new(counter: Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The value of W3C `baggage` member `key`, percent-decoded. Members are
/// `key=value;properties`, separated by commas, across any number of `baggage` headers.
pub fn baggage<'a>(
    values: impl Iterator<Item = &'a http::HeaderValue>,
    key: &str,
) -> Option<String> {
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|member| {
            let kv = member.split(';').next()?;
            let (k, v) = kv.split_once('=')?;
            (k.trim() == key).then(|| v.trim())
        })
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn weighted_matches_weights_statistically() {
        let split = Split(vec![(0, 70), (1, 20), (2, 10), (3, 0)]);
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 100_000u32;
        let mut counts = [0u32; 4];
        for _ in 0..n {
            counts[weighted(&split, &mut rng)] += 1;
        }
        assert_eq!(counts[3], 0, "zero weight is never chosen");
        // Pearson chi-square, 2 degrees of freedom: p = 0.001 at 13.82.
        let chi2: f64 = [(0, 0.7), (1, 0.2), (2, 0.1)]
            .iter()
            .map(|&(i, p)| {
                let expected = f64::from(n) * p;
                (f64::from(counts[i]) - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 13.82, "chi2 {chi2} counts {counts:?}");
    }

    #[test]
    fn p2c_prefers_less_loaded() {
        let endpoints: Vec<Endpoint> = (0..2)
            .map(|i| Endpoint {
                addr: ([127, 0, 0, 1], 1000 + i).into(),
                in_flight: Arc::default(),
            })
            .collect();
        endpoints[0].in_flight.store(5, Ordering::Relaxed);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            let e = p2c(&endpoints, &mut rng).expect("some");
            assert_eq!(e.addr.port(), 1001);
        }
        let _guard = InFlight::new(endpoints[1].in_flight.clone());
        assert_eq!(endpoints[1].in_flight.load(Ordering::Relaxed), 1);
        assert!(p2c(&[], &mut rng).is_none());
    }

    #[test]
    fn baggage_members() {
        let h = [
            http::HeaderValue::from_static("userId=alice, sluice-env = pr%2D42 ;ttl=5"),
            http::HeaderValue::from_static("other=1"),
        ];
        assert_eq!(baggage(h.iter(), "sluice-env").as_deref(), Some("pr-42"));
        assert_eq!(baggage(h.iter(), "other").as_deref(), Some("1"));
        assert_eq!(baggage(h.iter(), "missing"), None);
    }
}
