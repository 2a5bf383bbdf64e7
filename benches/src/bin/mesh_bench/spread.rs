//! Rounds of one run: the order each round runs its paths in, and the median and range of a
//! figure over the rounds. A ratio between two paths is taken within each round (the two runs
//! seconds apart), then summarised here, so one round caught in a burst of host steal does
//! not decide the figure.

/// The order in which round `round` (from 1) runs `paths` paths: in turn, backwards every
/// other round, so that over two rounds each path has run as often before its neighbour as
/// after it.
pub fn turn_order(paths: usize, round: u32) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..paths).rev().collect()
    } else {
        (0..paths).collect()
    }
}

/// The median and range of one ratio over the rounds that measured it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median (of an even count, the mean of the middle two).
    pub median: f64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
    /// How many rounds measured it.
    pub rounds: usize,
}

impl Spread {
    /// Over the values of the rounds that measured it (`None` where one did not).
    pub fn of(values: impl Iterator<Item = Option<f64>>) -> Option<Spread> {
        let mut v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            rounds: n,
        })
    }

    /// As milliseconds added: `+0.120 (+0.090 to +0.300)`.
    pub fn ms(&self) -> String {
        if self.rounds == 1 {
            format!("{:+.3}", self.median)
        } else {
            format!("{:+.3} ({:+.3} to {:+.3})", self.median, self.min, self.max)
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rounds == 1 {
            write!(f, "{:.2}×", self.median)
        } else {
            write!(f, "{:.2}× ({:.2}–{:.2}×)", self.median, self.min, self.max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_round_runs_the_paths_backwards() {
        assert_eq!(turn_order(3, 1), [0, 1, 2]);
        assert_eq!(turn_order(3, 2), [2, 1, 0]);
        assert_eq!(turn_order(3, 3), [0, 1, 2]);
        assert!(turn_order(0, 2).is_empty());
    }

    #[test]
    fn a_spread_ignores_rounds_that_did_not_measure_it() {
        let s = Spread::of([Some(2.0), None, Some(1.0)].into_iter()).expect("two values");
        assert_eq!((s.median, s.min, s.max, s.rounds), (1.5, 1.0, 2.0, 2));
        assert_eq!(Spread::of([None].into_iter()), None);
    }
}
