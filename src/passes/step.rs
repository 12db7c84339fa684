//! Exact thresholds for monotone step functions, evaluated in f32 exactly as
//! the reference interpreter evaluates them.
//!
//! `fold_scale_and_bn` and `binary_maxpool` replace a chain such as
//! `sign(batchnorm(α·dot))` by one comparison `direction·x >= threshold`.
//! The interpreter evaluates the chain in f32, so the replacement must agree
//! with *that* computation, rounding included, not with the real-number
//! formula: a threshold derived algebraically (`μ − β·σ'/γ`, LCE's
//! `⌊0.5·(β/|γ| + K)⌋`) can be off by one dot value where the f32 batchnorm
//! lands exactly on 0 or rounds across it.
//!
//! # Why a binary search is exact
//!
//! Every stage of a chain is a monotone function of its input in f32: the
//! exact result of `x − μ`, `γ·t`, `t / s` (`s = √(σ²+ε) > 0`), `t + β`,
//! `m·x + b`, `α·dot` is monotone in `x` (non-decreasing or non-increasing
//! with the sign of `γ`, `m`, `α`), and round-to-nearest is a monotone map
//! from reals to floats. A composition of monotone maps is monotone, and
//! `sign`/`threshold` turn it into a step: the output is `−1` up to one
//! switching point and `+1` after it, or the reverse, or constant. The
//! switching point is found by bisection over the integer dot products
//! `[−K, K]` ([`integer_step`]), or over the totally ordered f32 bit patterns
//! for a real input ([`real_step`]), evaluating the interpreter's own
//! functions ([`batchnorm_value`], [`affine_value`], [`threshold_value`]).
//!
//! The argument needs every stage to be NaN-free, because `sign(NaN) = −1`
//! sits wherever the NaN is. With finite parameters and a finite input, NaN
//! can only come from `0·∞` (γ = 0 after an overflow to ∞) or `0/0`
//! (`σ² + ε = 0`). [`integer_step`] therefore checks the chain first
//! ([`Chain::is_tame`]: finite parameters, `σ² + ε > 0`, every intermediate
//! value finite at both ends of the range, hence finite in between by
//! monotonicity); when it is not tame it evaluates every dot product in the
//! range (at most `2K + 1` evaluations) and accepts the result only if it is
//! a step. Nothing is assumed about parameter values.

use crate::ir::interp::{affine_value, batchnorm_std, batchnorm_value, threshold_value};

/// One per-channel elementwise stage after a value, with that channel's
/// parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage {
    /// `x·α` (a binary layer's `scale=channel`, as `mul_per_channel` computes it).
    Scale(f32),
    /// `batchnorm_value(x, γ, β, μ, σ², ε)`.
    BatchNorm {
        /// γ.
        gamma: f32,
        /// β.
        beta: f32,
        /// μ.
        mean: f32,
        /// σ².
        var: f32,
        /// ε.
        eps: f32,
    },
    /// `affine_value(x, m, b)`.
    Affine {
        /// m.
        multiplier: f32,
        /// b.
        bias: f32,
    },
}

impl Stage {
    /// The stage's f32 value at `x`, as the interpreter computes it.
    pub fn eval(self, x: f32) -> f32 {
        match self {
            Stage::Scale(a) => x * a,
            Stage::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            } => batchnorm_value(x, gamma, beta, mean, var, eps),
            Stage::Affine { multiplier, bias } => affine_value(x, multiplier, bias),
        }
    }

    /// Whether every parameter is finite and a batchnorm's `σ² + ε > 0`.
    fn is_finite(self) -> bool {
        match self {
            Stage::Scale(a) => a.is_finite(),
            Stage::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            } => {
                [gamma, beta, mean, var, eps].iter().all(|v| v.is_finite())
                    && batchnorm_std(var, eps) > 0.0
            }
            Stage::Affine { multiplier, bias } => multiplier.is_finite() && bias.is_finite(),
        }
    }

    /// The stage as an exact real map `x ↦ a·x + b`, in f64, from the f32
    /// values the interpreter uses (its rounded `√(σ²+ε)` included).
    pub fn linear(self) -> (f64, f64) {
        match self {
            Stage::Scale(a) => (f64::from(a), 0.0),
            Stage::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            } => {
                let s = f64::from(batchnorm_std(var, eps));
                let a = f64::from(gamma) / s;
                (a, f64::from(beta) - a * f64::from(mean))
            }
            Stage::Affine { multiplier, bias } => (f64::from(multiplier), f64::from(bias)),
        }
    }
}

/// How a chain ends: in bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// `sign`: `+1` iff `x >= 0`.
    Sign,
    /// `threshold_value(x, threshold, direction)`.
    Threshold {
        /// τ.
        threshold: f32,
        /// ±1.
        direction: f32,
    },
}

impl Decision {
    /// Whether the bit is `+1`.
    pub fn eval(self, x: f32) -> bool {
        match self {
            Decision::Sign => x >= 0.0,
            Decision::Threshold {
                threshold,
                direction,
            } => threshold_value(x, threshold, direction) > 0.0,
        }
    }
}

/// A chain of stages ending in a decision: `decision(stage_n(…stage_1(x)))`.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// The stages, first applied first.
    pub stages: Vec<Stage>,
    /// The final comparison.
    pub decision: Decision,
}

impl Chain {
    /// The f32 value before the decision.
    fn value(&self, x: f32) -> f32 {
        self.stages.iter().fold(x, |v, s| s.eval(v))
    }

    /// The chain's bit at `x`: `true` for `+1`.
    pub fn eval(&self, x: f32) -> bool {
        self.decision.eval(self.value(x))
    }

    /// Whether the chain is provably NaN-free on `[lo, hi]`: finite
    /// parameters, a positive batchnorm divisor, and every intermediate value
    /// finite at both ends (so finite in between: each stage is monotone).
    pub fn is_tame(&self, lo: f32, hi: f32) -> bool {
        if !self.stages.iter().all(|s| s.is_finite()) {
            return false;
        }
        if let Decision::Threshold {
            threshold,
            direction,
        } = self.decision
            && (threshold.is_nan() || (direction != 1.0 && direction != -1.0))
        {
            return false;
        }
        [lo, hi].into_iter().all(|x| {
            let mut v = x;
            self.stages.iter().all(|s| {
                v = s.eval(v);
                v.is_finite()
            })
        })
    }
}

/// A per-channel comparison `direction·x >= threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// τ (an integer for integer inputs, or ±∞ for a constant channel).
    pub threshold: f32,
    /// ±1.
    pub direction: f32,
}

impl Step {
    /// Always `+1` (`x >= −∞` holds for every non-NaN `x`).
    pub const ALWAYS: Step = Step {
        threshold: f32::NEG_INFINITY,
        direction: 1.0,
    };
    /// Always `−1` (`x >= +∞` fails for every finite `x`).
    pub const NEVER: Step = Step {
        threshold: f32::INFINITY,
        direction: 1.0,
    };
}

/// Why a chain cannot become one comparison.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StepError {
    /// The chain's bits are not a step over the range (only possible when it
    /// produces NaN, e.g. `γ = 0` after an overflow).
    #[error("its bits are not a monotone step over the dot products (NaN in the chain)")]
    NotAStep,
    /// Dot products beyond 2^24 are not exact in f32.
    #[error("dot products of {0} terms are not exact in f32 (more than 2^24)")]
    TooLong(u64),
    /// A real-input chain with non-finite parameters.
    #[error("the batchnorm has non-finite parameters or σ² + ε <= 0")]
    NotFinite,
}

/// The exact step of `chain` over the integers `−k..=k`: a [`Step`] with
/// `threshold_value(d, τ, dir) = +1` exactly where `chain.eval(d)` holds,
/// for every integer `d` with `|d| <= k`.
pub fn integer_step(chain: &Chain, k: u64) -> Result<Step, StepError> {
    if k > 1 << 24 {
        return Err(StepError::TooLong(k));
    }
    let k = k as i64;
    let p = |d: i64| chain.eval(d as f32);
    if !chain.is_tame(-k as f32, k as f32) {
        return scan(-k, k, p);
    }
    let (first, last) = (p(-k), p(k));
    Ok(match (first, last) {
        (true, true) => Step::ALWAYS,
        (false, false) => Step::NEVER,
        // Non-decreasing: the smallest d with p(d); invariant !p(lo), p(hi).
        (false, true) => {
            let (mut lo, mut hi) = (-k, k);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if p(mid) { hi = mid } else { lo = mid }
            }
            Step {
                threshold: hi as f32,
                direction: 1.0,
            }
        }
        // Non-increasing: the largest d with p(d); `−d >= −hi` iff `d <= hi`.
        (true, false) => {
            let (mut lo, mut hi) = (-k, k);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if p(mid) { lo = mid } else { hi = mid }
            }
            Step {
                threshold: -(lo as f32),
                direction: -1.0,
            }
        }
    })
}

/// Evaluates `p` on every integer of `lo..=hi` and returns its step, if it is one.
fn scan(lo: i64, hi: i64, p: impl Fn(i64) -> bool) -> Result<Step, StepError> {
    let bits: Vec<bool> = (lo..=hi).map(&p).collect();
    let changes: Vec<usize> = (1..bits.len())
        .filter(|&i| bits[i] != bits[i - 1])
        .collect();
    match changes[..] {
        [] if bits[0] => Ok(Step::ALWAYS),
        [] => Ok(Step::NEVER),
        [i] if bits[i] => Ok(Step {
            threshold: (lo + i as i64) as f32,
            direction: 1.0,
        }),
        [i] => Ok(Step {
            threshold: -((lo + i as i64 - 1) as f32),
            direction: -1.0,
        }),
        _ => Err(StepError::NotAStep),
    }
}

/// The position of `x` in the total order of finite floats: an integer key,
/// increasing with `x`, with `−0` and `+0` both at 0.
fn key(x: f32) -> i64 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        -i64::from(b & 0x7fff_ffff)
    } else {
        i64::from(b)
    }
}

/// The float at key `k` (inverse of [`key`]; `+0` for 0).
fn from_key(k: i64) -> f32 {
    if k < 0 {
        f32::from_bits((-k) as u32 | 0x8000_0000)
    } else {
        f32::from_bits(k as u32)
    }
}

/// The exact step of a real-input chain: `threshold_value(x, τ, dir) = +1`
/// exactly where `chain.eval(x)` holds, for every finite `x` and for NaN
/// (both give `−1`). Infinite inputs agree too, except in a channel whose
/// batchnorm has `γ = 0`: there `γ·(±∞ − μ)` is NaN, `sign` gives `−1`, and
/// the comparison gives the channel's constant.
///
/// Requires a tame chain (finite parameters, `σ² + ε > 0`); the search is over
/// the finite floats, where every stage is monotone and NaN-free.
pub fn real_step(chain: &Chain) -> Result<Step, StepError> {
    if !chain.stages.iter().all(|s| s.is_finite()) {
        return Err(StepError::NotFinite);
    }
    let (lo, hi) = (key(-f32::MAX), key(f32::MAX));
    let p = |k: i64| chain.eval(from_key(k));
    // Intermediate values may overflow to ±∞, which is harmless (a monotone
    // map of the extended reals). NaN is not: with finite parameters it needs
    // `0·∞` (γ = 0, or m = 0, after `x − μ` overflowed), and an overflow
    // happens at the extremes first. Then `sign` gives −1 at the extremes
    // and the constant in between: no step, and the pass does not fire.
    let nan_at_ends = [lo, hi].into_iter().any(|k| {
        let mut v = from_key(k);
        chain.stages.iter().any(|s| {
            v = s.eval(v);
            v.is_nan()
        })
    });
    if nan_at_ends {
        return Err(StepError::NotAStep);
    }
    let (first, last) = (p(lo), p(hi));
    Ok(match (first, last) {
        (true, true) => Step::ALWAYS,
        (false, false) => Step::NEVER,
        (false, true) => {
            let (mut a, mut b) = (lo, hi);
            while b - a > 1 {
                let mid = a + (b - a) / 2;
                if p(mid) { b = mid } else { a = mid }
            }
            Step {
                threshold: from_key(b),
                direction: 1.0,
            }
        }
        (true, false) => {
            let (mut a, mut b) = (lo, hi);
            while b - a > 1 {
                let mid = a + (b - a) / 2;
                if p(mid) { a = mid } else { b = mid }
            }
            Step {
                threshold: -from_key(a),
                direction: -1.0,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bn(gamma: f32, beta: f32, mean: f32, var: f32) -> Stage {
        Stage::BatchNorm {
            gamma,
            beta,
            mean,
            var,
            eps: 1e-5,
        }
    }

    /// Checks `step` against `chain` on every integer of `−k..=k`.
    fn exhaustive(chain: &Chain, k: i64) {
        let step = integer_step(chain, k as u64).unwrap();
        for d in -k..=k {
            let want = chain.eval(d as f32);
            let got = threshold_value(d as f32, step.threshold, step.direction) > 0.0;
            assert_eq!(got, want, "d = {d}, {chain:?} → {step:?}");
        }
    }

    #[test]
    fn integer_steps_are_exact_for_every_kind_of_channel() {
        let k = 77;
        let mut chains = Vec::new();
        for gamma in [1.3, -0.7, 0.0, -0.0, 1e-30, 3e38] {
            for beta in [0.0, 0.25, -4.0, 1e6, -1e6] {
                for mean in [0.0, 3.0, -2.5, 0.3] {
                    for var in [1.0, 1e-6, 0.0] {
                        for alpha in [None, Some(0.013), Some(0.0)] {
                            let mut stages: Vec<Stage> =
                                alpha.map(Stage::Scale).into_iter().collect();
                            stages.push(bn(gamma, beta, mean, var));
                            chains.push(Chain {
                                stages,
                                decision: Decision::Sign,
                            });
                        }
                    }
                }
            }
        }
        for c in &chains {
            exhaustive(c, k);
        }
    }

    #[test]
    fn ties_land_on_plus_one() {
        // μ = 5: batchnorm is exactly 0 at dot 5, and sign(0) = +1.
        let chain = Chain {
            stages: vec![bn(2.0, 0.0, 5.0, 1.0)],
            decision: Decision::Sign,
        };
        let s = integer_step(&chain, 9).unwrap();
        assert_eq!((s.threshold, s.direction), (5.0, 1.0));
        let neg = Chain {
            stages: vec![bn(-2.0, 0.0, 5.0, 1.0)],
            decision: Decision::Sign,
        };
        let s = integer_step(&neg, 9).unwrap();
        // +1 for d <= 5: −d >= −5.
        assert_eq!((s.threshold, s.direction), (-5.0, -1.0));
    }

    #[test]
    fn nan_chains_are_scanned() {
        // σ² + ε = 0 gives 0/0 at d = μ; still a step.
        let chain = Chain {
            stages: vec![Stage::BatchNorm {
                gamma: 1.0,
                beta: 0.0,
                mean: 2.0,
                var: 0.0,
                eps: 0.0,
            }],
            decision: Decision::Sign,
        };
        exhaustive(&chain, 10);
        // A threshold at −∞ after a 0/0: +1, −1 (NaN), +1 is no step.
        let bad = Chain {
            stages: chain.stages.clone(),
            decision: Decision::Threshold {
                threshold: f32::NEG_INFINITY,
                direction: 1.0,
            },
        };
        assert_eq!(integer_step(&bad, 10), Err(StepError::NotAStep));
    }

    #[test]
    fn real_steps_are_exact_near_the_switching_point() {
        for (gamma, beta, mean, var) in [
            (1.0, 0.0, 0.0, 1.0),
            (0.7, 0.3, -0.2, 1e-6),
            (-1.5, 2.0, 0.1, 0.5),
            (0.0, 1.0, 0.0, 1.0),
            (0.0, -1.0, 0.0, 1.0),
            (1e-20, 1e30, 0.0, 1.0),
        ] {
            let chain = Chain {
                stages: vec![bn(gamma, beta, mean, var)],
                decision: Decision::Sign,
            };
            let s = real_step(&chain).unwrap();
            let probe = |x: f32| {
                let want = chain.eval(x);
                let got = threshold_value(x, s.threshold, s.direction) > 0.0;
                assert_eq!(got, want, "x = {x:e}, {chain:?} → {s:?}");
            };
            let t = s.threshold * s.direction;
            if t.is_finite() {
                let mut x = t;
                for _ in 0..4 {
                    x = x.next_down();
                }
                for _ in 0..8 {
                    probe(x);
                    x = x.next_up();
                }
            }
            for x in [0.0, -0.0, 1.0, -1.0, f32::MAX, -f32::MAX, 1e-40, f32::NAN] {
                probe(x);
            }
        }
    }
}
