//! The e-processes behind the judge: Beta-mixture likelihood ratios for failure (or
//! exceedance) counts, in log space.
//!
//! Everything here works on cumulative counts and is recomputed from them at each look, so the
//! judge keeps no per-interval history: for i.i.d. Bernoulli outcomes the likelihood of the
//! whole sequence depends only on the totals (the binomial coefficients cancel between the
//! numerator and the denominator, so they are left out of both).

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; relative error ~1e-15). Not finite for
/// `x <= 0`, which callers never pass.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x.is_nan() || x <= 0.0 {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// `ln B(a, b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln(e^a + e^b + …)` without overflow; `-inf` for an empty or all `-inf` input.
pub(crate) fn log_sum_exp(terms: impl IntoIterator<Item = f64>) -> f64 {
    let terms: Vec<f64> = terms.into_iter().filter(|t| !t.is_nan()).collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    if max == f64::INFINITY {
        return f64::INFINITY;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// Bernoulli log-likelihood of `x` events in `n` trials at rate `p` (without the binomial
/// coefficient), with `0 · ln 0 = 0`. Counts may be fractional (interpolated exceedances).
pub(crate) fn log_lik(x: f64, n: f64, p: f64) -> f64 {
    let x = x.clamp(0.0, n.max(0.0));
    let y = (n - x).max(0.0);
    let p = p.clamp(0.0, 1.0);
    let term = |k: f64, q: f64| if k == 0.0 { 0.0 } else { k * q.ln() };
    term(x, p) + term(y, 1.0 - p)
}

/// A prior over a rate: an equal-weight mixture of Beta distributions whose means are
/// log-spaced between two bounds. With each component about as wide as the spacing, it is a
/// smooth, nearly log-uniform density: no rate in the range is favoured, and the mixture's
/// marginal likelihood is exact (closed form), with no grid to lose evidence on.
#[derive(Clone, Debug)]
pub(crate) struct RatePrior {
    /// `(ln weight, a, b)` per component.
    components: Vec<(f64, f64, f64)>,
}

/// Shape `a` of every component: a Beta(a, ·) has a relative spread of about `1/sqrt(a)`,
/// matched to the spacing of the means below.
const SHAPE: f64 = 10.0;
/// Spacing of the component means: a factor `e^0.3 ≈ 1.35` apart.
const LOG_STEP: f64 = 0.3;

impl RatePrior {
    /// Means log-spaced from `lo` to `hi` (clamped into `(0, 1)`).
    pub(crate) fn log_uniform(lo: f64, hi: f64) -> RatePrior {
        let lo = lo.clamp(1e-9, 0.99);
        let hi = hi.clamp(lo, 0.99);
        let span = (hi / lo).ln();
        let k = ((span / LOG_STEP).ceil() as usize).max(1) + 1;
        let ln_w = -(k as f64).ln();
        let components = (0..k)
            .map(|i| {
                let mean = if k == 1 {
                    lo
                } else {
                    (lo.ln() + span * i as f64 / (k - 1) as f64).exp()
                };
                let a = SHAPE;
                let b = (SHAPE * (1.0 - mean) / mean).max(1e-3);
                (ln_w, a, b)
            })
            .collect();
        RatePrior { components }
    }

    /// `ln ∫ p^x (1-p)^(n-x) π(dp)`: the mixture's marginal likelihood of the counts.
    pub(crate) fn log_marginal(&self, x: f64, n: f64) -> f64 {
        let x = x.clamp(0.0, n.max(0.0));
        let y = (n - x).max(0.0);
        log_sum_exp(
            self.components
                .iter()
                .map(|&(ln_w, a, b)| ln_w + ln_beta(x + a, y + b) - ln_beta(a, b)),
        )
    }
}

/// Maximises a concave function on `[lo, hi]` (golden section, then the ends): returns the
/// maximum value.
pub(crate) fn max_concave(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    const INV_PHI: f64 = 0.618_033_988_749_894_9;
    let (mut a, mut b) = (lo, hi);
    let mut c = b - INV_PHI * (b - a);
    let mut d = a + INV_PHI * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..200 {
        if (b - a).abs() <= 1e-15 * (1.0 + a.abs()) {
            break;
        }
        if fc >= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - INV_PHI * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + INV_PHI * (b - a);
            fd = f(d);
        }
    }
    [f(lo), f(hi), fc, fd, f(0.5 * (a + b))]
        .into_iter()
        .filter(|v| !v.is_nan())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// Cumulative failure counts of the two versions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct TwoSample {
    pub canary_failures: f64,
    pub canary_requests: f64,
    pub baseline_failures: f64,
    pub baseline_requests: f64,
}

/// How much of the baseline's likelihood ratio enters the two-sample e-process (λ).
///
/// `(m_b / L_b(p_b))^λ` is a nonnegative supermartingale for any `0 < λ ≤ 1` (a concave power
/// of a test martingale), independent of the canary's, so the product stays an e-process. A
/// smaller λ pays less for not knowing the baseline's rate (the mixture's regret, about two
/// nats at a 0.1% baseline) but lets the null move that rate more freely. Where the margin
/// dominates the baseline's rate, as at low canary weight, ½ is the better trade; the
/// simulation (`benches/src/bin/judge_sim/`) shows it.
pub(crate) const BASELINE_TEMPER: f64 = 0.5;

/// `ln E` for H0: `p_canary ≤ p_baseline + margin` (margin a probability, `0 ≤ margin < 1`).
///
/// `E = inf_{H0} [m_c / L_c(p_c)] · [m_b / L_b(p_b)]^λ`: mixture likelihoods over both rates
/// against the best null pair. For the true null pair `θ`, `E` is at most the same product at
/// `θ`: a test martingale times an independent nonnegative supermartingale, so `E` is an
/// e-process for the composite null and Ville's inequality gives `P(sup_t E_t ≥ 1/α) ≤ α`.
pub(crate) fn two_sample_log_e(
    s: &TwoSample,
    margin: f64,
    canary_prior: &RatePrior,
    baseline_prior: &RatePrior,
) -> f64 {
    let lambda = BASELINE_TEMPER;
    let (xc, nc) = (s.canary_failures, s.canary_requests);
    let (xb, nb) = (s.baseline_failures, s.baseline_requests);
    let (xc, nc, xb, nb) = (sane(xc), sane(nc), sane(xb), sane(nb));
    // With no canary failures there is no evidence of harm: report E = 1, never a rejection.
    if nc <= 0.0 || xc <= 0.0 {
        return 0.0;
    }
    let margin = sane(margin).min(0.99);
    let numerator =
        canary_prior.log_marginal(xc, nc) + lambda * baseline_prior.log_marginal(xb, nb);
    let pc_hat = xc / nc;
    let pb_hat = if nb > 0.0 { xb / nb } else { 0.0 };
    let denominator = if pc_hat <= pb_hat + margin {
        log_lik(xc, nc, pc_hat) + lambda * log_lik(xb, nb, pb_hat)
    } else {
        // The null maximum lies on the boundary p_c = p_b + margin, where the log-likelihood
        // is concave in p_b.
        max_concave(
            |pb| log_lik(xc, nc, pb + margin) + lambda * log_lik(xb, nb, pb),
            0.0,
            1.0 - margin,
        )
    };
    finite_or(numerator - denominator, 0.0)
}

/// `ln E` for H0: `p ≤ p0`, one sample of `x` events (fractional allowed) in `n` trials:
/// `m(x, n) / sup_{p ≤ p0} L(p)`, an e-process by the same argument as [`two_sample_log_e`].
pub(crate) fn one_sample_log_e(x: f64, n: f64, p0: f64, prior: &RatePrior) -> f64 {
    let (x, n) = (sane(x), sane(n));
    if n <= 0.0 || x <= 0.0 {
        return 0.0;
    }
    let p0 = sane(p0).min(1.0);
    let x = x.min(n);
    let p_null = (x / n).min(p0);
    finite_or(prior.log_marginal(x, n) - log_lik(x, n, p_null), 0.0)
}

/// A count or rate as a finite, nonnegative number (NaN and negatives become 0).
fn sane(v: f64) -> f64 {
    if v.is_finite() {
        v.max(0.0)
    } else if v == f64::INFINITY {
        f64::MAX
    } else {
        0.0
    }
}

fn finite_or(v: f64, fallback: f64) -> f64 {
    if v.is_finite() {
        v
    } else if v == f64::INFINITY {
        f64::MAX.ln()
    } else {
        fallback
    }
}

/// `ln E` for "the canary takes at least `rho0` times its weight's share of traffic": a
/// discrete mixture over the per-weight rate ratio `ρ` below `rho0`, against the best `ρ ≥
/// rho0`. The log-likelihood is concave in `ln ρ` (a logistic model with offset `logit w`).
pub(crate) fn rate_log_e(by_weight: &[(u32, u64, u64)], rho0: f64) -> f64 {
    const GRID: usize = 40;
    const LOWEST: f64 = 0.01;
    let log_lik = |ln_rho: f64| -> f64 {
        by_weight
            .iter()
            .map(|&(w, nc, nb)| {
                let w = f64::from(w.clamp(1, 99)) / 100.0;
                let odds = ln_rho.exp() * w / (1.0 - w);
                let s = odds / (1.0 + odds);
                log_lik(nc as f64, (nc + nb) as f64, s)
            })
            .sum()
    };
    if by_weight.is_empty() || rho0 <= LOWEST {
        return 0.0;
    }
    let (lo, hi) = (LOWEST.ln(), rho0.ln());
    let numerator = log_sum_exp((0..GRID).map(|i| {
        let u = lo + (hi - lo) * (i as f64 + 0.5) / GRID as f64;
        log_lik(u) - (GRID as f64).ln()
    }));
    // The null's best ρ: the unconstrained maximum if it is at least rho0, else rho0 itself
    // (concavity). Search ln ρ up to a ratio of 10^4.
    let denominator = max_concave(log_lik, hi, hi.max(0.0) + 4.0 * 10f64.ln());
    let log_e = numerator - denominator;
    if log_e.is_finite() { log_e } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut fact = 1.0_f64;
        for n in 1..20 {
            fact *= n as f64;
            let got = ln_gamma(n as f64 + 1.0);
            assert!((got - fact.ln()).abs() < 1e-10, "Γ({}) = {got}", n + 1);
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(0.1) - 2.252_712_651_734_206).abs() < 1e-10);
    }

    #[test]
    fn prior_marginal_is_a_probability_over_outcomes() {
        // Σ_x C(n, x) m(x, n) = 1 for any proper prior.
        let prior = RatePrior::log_uniform(0.001, 0.5);
        let n = 40.0;
        let total: f64 = (0..=40)
            .map(|x| {
                let x = x as f64;
                let ln_choose = ln_gamma(n + 1.0) - ln_gamma(x + 1.0) - ln_gamma(n - x + 1.0);
                (ln_choose + prior.log_marginal(x, n)).exp()
            })
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "total {total}");
    }

    #[test]
    fn two_sample_is_small_when_canary_matches_baseline() {
        let s = TwoSample {
            canary_failures: 5.0,
            canary_requests: 1000.0,
            baseline_failures: 100.0,
            baseline_requests: 20000.0,
        };
        let cp = RatePrior::log_uniform(0.005, 0.5);
        let bp = RatePrior::log_uniform(1e-5, 0.5);
        assert!(two_sample_log_e(&s, 0.005, &cp, &bp) < 0.0);
        let bad = TwoSample {
            canary_failures: 50.0,
            ..s
        };
        assert!(two_sample_log_e(&bad, 0.005, &cp, &bp) > 10.0);
    }

    #[test]
    fn degenerate_inputs_stay_finite() {
        let cp = RatePrior::log_uniform(0.005, 0.5);
        let bp = RatePrior::log_uniform(1e-5, 0.5);
        for s in [
            TwoSample::default(),
            TwoSample {
                canary_failures: 10.0,
                canary_requests: 10.0,
                ..TwoSample::default()
            },
            TwoSample {
                canary_failures: 1e9,
                canary_requests: 1e9,
                baseline_failures: 1e9,
                baseline_requests: 1e9,
            },
        ] {
            for margin in [0.0, 0.005, 0.5, 2.0, -1.0, f64::NAN] {
                assert!(two_sample_log_e(&s, margin, &cp, &bp).is_finite());
            }
        }
        assert!(one_sample_log_e(3.0, 3.0, 0.01, &cp).is_finite());
        assert!(one_sample_log_e(f64::NAN, 3.0, f64::NAN, &cp).is_finite());
    }
}
