//! TeaCache: skipping transformer work on steps whose input barely changed.
//!
//! - **naive**, as the project's seed does it: the distance between the current timestep
//!   and the last computed one, times a rescale factor, accumulates over skipped steps; a
//!   step computes when the sum passes the threshold (which resets it) and otherwise reuses
//!   the last noise prediction. Step 0 and the first `warmup` steps always compute.
//! - **poly**, the method of the TeaCache paper: every step computes the first main
//!   block's modulated input and its relative L1 change since the previous step, rescaled
//!   by a polynomial fitted for the model (the change of the output it predicts); the
//!   rescaled changes accumulate, and while the sum stays under the threshold the main
//!   blocks are skipped and the cached residual (their output minus input) is added
//!   instead. The first `warmup` steps (at least one) and the last step always compute.
//!
//! The decisions live here, apart from the arrays, so they can be tested on schedules; the
//! sampler holds the cached arrays as ordinary carried state of its step loop.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DitError, Result};

/// `--teacache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Naive,
    Poly,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Naive => "naive",
            Mode::Poly => "poly",
        }
    }

    /// The threshold used when none is given: the seed's for naive. For poly it bounds the
    /// estimated output drift a skipped stretch may accumulate: 30%. A schedule whose
    /// every step changes the output more than that (8 steps of the built-in models) then
    /// skips nothing, as it should.
    pub fn default_threshold(self) -> f64 {
        match self {
            Mode::Off => 0.0,
            Mode::Naive => 0.1,
            Mode::Poly => 0.3,
        }
    }
}

/// TeaCache's settings for a sampling run.
#[derive(Clone, Debug)]
pub struct TeaCacheOptions {
    pub mode: Mode,
    pub threshold: f64,
    /// Steps at the start that always compute.
    pub warmup: usize,
    /// Naive mode's factor on timestep distances.
    pub rescale: f64,
    /// Poly mode's fitted polynomial.
    pub coefficients: Option<Coefficients>,
}

impl TeaCacheOptions {
    pub fn off() -> TeaCacheOptions {
        TeaCacheOptions {
            mode: Mode::Off,
            threshold: 0.0,
            warmup: 0,
            rescale: 1.0,
            coefficients: None,
        }
    }

    /// Poly mode at threshold 0, which computes every step (rescaled changes are never
    /// negative) while measuring what poly measures: the setting `dit teacache-fit`
    /// records changes with, before any polynomial exists.
    pub fn measure_only() -> TeaCacheOptions {
        TeaCacheOptions {
            mode: Mode::Poly,
            coefficients: Some(Coefficients::identity()),
            ..TeaCacheOptions::off()
        }
    }
}

/// Naive mode's decisions.
#[derive(Clone, Debug)]
pub struct Naive {
    threshold: f64,
    rescale: f64,
    warmup: usize,
    accumulated: f64,
    /// The timestep of the last computed step.
    last_computed: Option<f64>,
}

impl Naive {
    pub fn new(threshold: f64, rescale: f64, warmup: usize) -> Naive {
        Naive {
            threshold,
            rescale,
            warmup,
            accumulated: 0.0,
            last_computed: None,
        }
    }

    /// Whether step `step` at timestep `t` runs the transformer. A computing step must be
    /// followed by [`computed`](Naive::computed).
    pub fn should_compute(&mut self, step: usize, t: f64) -> bool {
        let Some(last) = self.last_computed else {
            return true;
        };
        if step == 0 || step < self.warmup {
            return true;
        }
        self.accumulated += (t - last).abs() * self.rescale;
        if self.accumulated > self.threshold {
            self.accumulated = 0.0;
            return true;
        }
        false
    }

    /// Records that the step at timestep `t` ran the transformer.
    pub fn computed(&mut self, t: f64) {
        self.last_computed = Some(t);
    }
}

/// Poly mode's decisions.
#[derive(Clone, Debug)]
pub struct Poly {
    threshold: f64,
    coefficients: Coefficients,
    warmup: usize,
    steps: usize,
    accumulated: f64,
}

impl Poly {
    /// For a run of `steps` steps; `warmup` is raised to 1 (the first step has no cache).
    pub fn new(threshold: f64, coefficients: &Coefficients, warmup: usize, steps: usize) -> Poly {
        Poly {
            threshold,
            coefficients: coefficients.clone(),
            warmup: warmup.max(1),
            steps,
            accumulated: 0.0,
        }
    }

    /// Whether step `step` runs the main blocks, given the relative L1 change of the first
    /// block's modulated input since the previous step.
    pub fn should_compute(&mut self, step: usize, input_change: f64) -> bool {
        // A non-finite change tells nothing about how close the steps are: compute.
        if step < self.warmup || step + 1 >= self.steps || !input_change.is_finite() {
            self.accumulated = 0.0;
            return true;
        }
        self.accumulated += self.coefficients.rescale(input_change);
        if self.accumulated < self.threshold {
            return false;
        }
        self.accumulated = 0.0;
        true
    }
}

/// The polynomial with `coefficients` (highest degree first) at `x`.
pub fn polyval(coefficients: &[f64], x: f64) -> f64 {
    coefficients.iter().fold(0.0, |acc, c| acc * x + c)
}

/// A fitted polynomial and how it was fitted: the `--coefficients` file format, and
/// `teacache_coefficients.json` next to a checkpoint's `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coefficients {
    /// Highest degree first, as `numpy.poly1d` takes them.
    pub coefficients: Vec<f64>,
    #[serde(default)]
    pub model: String,
    /// Sampling runs the pairs came from.
    #[serde(default)]
    pub runs: usize,
    /// The step counts of those runs.
    #[serde(default)]
    pub steps: Vec<usize>,
    /// The (input change, output change) pairs the fit used.
    #[serde(default)]
    pub pairs: usize,
    /// The input changes the fit saw, lowest and highest. Inputs outside are clamped
    /// into it: a degree-4 polynomial extrapolates wildly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_range: Option<(f64, f64)>,
}

/// The file a checkpoint directory carries its coefficients in.
pub const COEFFICIENTS_FILE: &str = "teacache_coefficients.json";

impl Coefficients {
    /// `p(x) = x`: changes taken as they are.
    pub fn identity() -> Coefficients {
        Coefficients {
            coefficients: vec![1.0, 0.0],
            model: String::new(),
            runs: 0,
            steps: Vec::new(),
            pairs: 0,
            input_range: None,
        }
    }

    /// The estimated output change for an input change of `x`: the polynomial at `x`
    /// clamped into the fitted range, never negative (it estimates a distance).
    pub fn rescale(&self, x: f64) -> f64 {
        let x = match self.input_range {
            Some((lo, hi)) => x.clamp(lo, hi),
            None => x,
        };
        polyval(&self.coefficients, x).max(0.0)
    }

    pub fn read(path: &Path) -> Result<Coefficients> {
        let text = crate::read_text(path)?;
        Coefficients::parse(&text).map_err(|message| DitError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> std::result::Result<Coefficients, String> {
        let c: Coefficients = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if c.coefficients.is_empty() || c.coefficients.iter().any(|v| !v.is_finite()) {
            return Err("`coefficients` must be a non-empty list of finite numbers".into());
        }
        if let Some((lo, hi)) = c.input_range {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err("`input_range` must be [low, high] with low <= high".into());
            }
        }
        Ok(c)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        std::fs::write(path, text).map_err(|e| DitError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

/// Least-squares fit of a polynomial of `degree` to `(x, y)` pairs, coefficients highest
/// degree first. Solved by Householder QR on the Vandermonde matrix (normal equations
/// square its condition number, which degree 4 on small x cannot afford).
pub fn fit_polynomial(pairs: &[(f64, f64)], degree: usize) -> Result<Vec<f64>> {
    let n = degree + 1;
    if pairs.len() < n {
        return Err(DitError::Input(format!(
            "a degree-{degree} fit needs at least {n} pairs, found {}",
            pairs.len()
        )));
    }
    let singular = || {
        DitError::Input(
            "the pairs cannot determine the polynomial (too few distinct x values)".into(),
        )
    };
    // Column j holds x^(degree - j) for every pair.
    let mut columns: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            pairs
                .iter()
                .map(|&(x, _)| x.powi((degree - j) as i32))
                .collect()
        })
        .collect();
    let mut b: Vec<f64> = pairs.iter().map(|&(_, y)| y).collect();
    for k in 0..n {
        // The reflection that zeroes column k below its diagonal, applied to the columns
        // right of it and to b.
        let head = &columns[k][k..];
        let norm = head.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(singular());
        }
        let mut v = head.to_vec();
        v[0] += if v[0] > 0.0 { norm } else { -norm };
        let reflect = |target: &mut [f64]| {
            let vv: f64 = v.iter().map(|x| x * x).sum();
            let f = 2.0 * v.iter().zip(&*target).map(|(a, b)| a * b).sum::<f64>() / vv;
            target.iter_mut().zip(&v).for_each(|(t, vi)| *t -= f * vi);
        };
        for column in &mut columns[k..] {
            reflect(&mut column[k..]);
        }
        reflect(&mut b[k..]);
    }
    // Back substitution on the triangle R (R[i][j] = columns[j][i]).
    let mut coefficients = vec![0.0; n];
    for k in (0..n).rev() {
        let r = columns[k][k];
        if r.abs() < 1e-300 {
            return Err(singular());
        }
        let known: f64 = ((k + 1)..n).map(|j| columns[j][k] * coefficients[j]).sum();
        coefficients[k] = (b[k] - known) / r;
    }
    if coefficients.iter().any(|c| !c.is_finite()) {
        return Err(singular());
    }
    Ok(coefficients)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's algorithm, worked by hand on a fixed 8-step schedule of the
    /// transformer's `t`.
    #[test]
    fn naive_reproduces_the_seeds_decisions() {
        let t = [0.0, 0.0797, 0.1682, 0.2668, 0.3775, 0.5027, 0.6453, 0.8094];
        let run = |threshold: f64, warmup: usize| -> Vec<bool> {
            let mut naive = Naive::new(threshold, 1.0, warmup);
            t.iter()
                .enumerate()
                .map(|(i, &t)| {
                    let compute = naive.should_compute(i, t);
                    if compute {
                        naive.computed(t);
                    }
                    compute
                })
                .collect()
        };
        // Distances are from the last *computed* step and keep accumulating:
        // s1: 0.0797 ≤ 0.1 skip; s2: +0.1682 → compute; s3: 0.0986 skip;
        // s4: +0.2093 → compute; s5: 0.1252 → compute; s6: 0.1426 → compute;
        // s7: 0.1641 → compute.
        assert_eq!(
            run(0.1, 0),
            [true, false, true, false, true, true, true, true]
        );
        // Warm-up steps always compute, without accumulating.
        assert_eq!(
            run(0.1, 3),
            [true, true, true, false, true, true, true, true]
        );
        // A larger threshold skips more: s1 0.0797, s2 +0.1682 = 0.2479 ≤ 0.3, s3 +0.2668
        // → compute; s4 0.1107 skip; s5 +0.2359 → compute; s6 0.1426 skip; s7 +0.3067.
        assert_eq!(
            run(0.3, 0),
            [true, false, false, true, false, true, false, true]
        );
        // Threshold 0 computes every step.
        assert!(run(0.0, 0).iter().all(|&c| c));
    }

    #[test]
    fn poly_decisions_follow_the_polynomial() {
        // rescale(x) = 2x: changes of 0.1 accumulate 0.2 per step.
        let coefficients = Coefficients {
            coefficients: vec![2.0, 0.0],
            ..Coefficients::identity()
        };
        let mut poly = Poly::new(0.5, &coefficients, 1, 8);
        let decisions: Vec<bool> = (0..8).map(|i| poly.should_compute(i, 0.1)).collect();
        // s0 warm-up; s1 0.2, s2 0.4 skip; s3 0.6 ≥ 0.5 compute; s4 0.2, s5 0.4 skip;
        // s6 0.6 compute; s7 is the last step.
        assert_eq!(
            decisions,
            [true, false, false, true, false, false, true, true]
        );
        // A negative polynomial value is a distance of 0, never a credit.
        let negative = Coefficients {
            coefficients: vec![-1.0],
            ..coefficients.clone()
        };
        let mut poly = Poly::new(0.0, &negative, 1, 4);
        assert!((0..4).all(|i| poly.should_compute(i, 0.5)));
        // Outside the fitted range the polynomial is held at the range's ends.
        let clamped = Coefficients {
            coefficients: vec![1.0, 0.0, 0.0],
            input_range: Some((0.1, 0.2)),
            ..Coefficients::identity()
        };
        assert_eq!(clamped.rescale(0.0), clamped.rescale(0.1));
        assert_eq!(clamped.rescale(5.0), clamped.rescale(0.2));
        assert!((clamped.rescale(0.15) - 0.0225).abs() < 1e-12);
    }

    #[test]
    fn the_fit_recovers_known_coefficients() {
        let truth = [-3.2, 4.1, -1.7, 1.3, 0.02];
        let pairs: Vec<(f64, f64)> = (0..60)
            .map(|i| {
                let x = 0.01 + 0.6 * f64::from(i) / 59.0;
                (x, polyval(&truth, x))
            })
            .collect();
        let fitted = fit_polynomial(&pairs, 4).unwrap();
        for (f, t) in fitted.iter().zip(truth) {
            assert!((f - t).abs() < 1e-8, "{fitted:?} vs {truth:?}");
        }
        // With noise, least squares still lands close.
        let noisy: Vec<(f64, f64)> = pairs
            .iter()
            .enumerate()
            .map(|(i, &(x, y))| (x, y + if i % 2 == 0 { 1e-4 } else { -1e-4 }))
            .collect();
        let fitted = fit_polynomial(&noisy, 1).unwrap();
        assert_eq!(fitted.len(), 2);
        assert!(fit_polynomial(&pairs[..3], 4).is_err());
        assert!(fit_polynomial(&[(0.5, 1.0); 10], 4).is_err());
    }
}
