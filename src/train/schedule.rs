//! Learning-rate schedules: a factor that multiplies the optimizer's base rate.
//!
//! The schedule ticks **per epoch**: the training loop calls
//! [`LrSchedule::factor`] with the index of the epoch about to run (0 for the
//! first) and passes the result to [`Optimizer::step`](super::optim::Optimizer::step)
//! as `lr_scale` for every batch of that epoch. Per epoch, because the recipes
//! we follow are stated that way (PyTorch's `StepLR(step_size=30)`, BinaryNet's
//! per-epoch exponential decay, cosine over the run's epochs), and because a
//! factor that depends only on the epoch makes a run resumed at an epoch
//! boundary identical to one that was never interrupted.
//!
//! With `warmup = w > 0`, epoch `e < w` is additionally multiplied by
//! `(e + 1) / (w + 1)`: a linear ramp that starts at `1 / (w + 1)` rather than 0,
//! so the first epoch is not wasted, and reaches the schedule's own value at
//! epoch `w`. The base schedule counts epochs from 0, warm-up included.
//!
//! The textual forms, for the command line ([`Schedule::from_str`]):
//!
//! | text | schedule | factor at epoch `e` |
//! |---|---|---|
//! | `constant` | [`Schedule::Constant`] | 1 |
//! | `step:EVERY:GAMMA` | [`Schedule::Step`] | `GAMMA^floor(e / EVERY)` |
//! | `exp:GAMMA` | [`Schedule::Exponential`] | `GAMMA^e` |
//! | `cosine`, `cosine:MIN`, `cosine:MIN:TOTAL` | [`Schedule::Cosine`] | `MIN + (1 − MIN)·(1 + cos(π·e/TOTAL))/2`, then `MIN` from `TOTAL` on |
//!
//! `cosine` without a total needs the run's epoch count: the loop calls
//! [`LrSchedule::with_total`] once it knows it.

use std::str::FromStr;

/// The shape of the decay, without warm-up.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiplied by `gamma` every `every` epochs (PyTorch `StepLR`).
    Step {
        /// Epochs between decays (at least 1).
        every: usize,
        /// The factor per decay.
        gamma: f32,
    },
    /// Multiplied by `gamma` every epoch (PyTorch `ExponentialLR`).
    Exponential {
        /// The factor per epoch.
        gamma: f32,
    },
    /// Half a cosine from 1 down to `min_factor` over `total` epochs
    /// (PyTorch `CosineAnnealingLR` with `eta_min = min_factor · lr`), then
    /// `min_factor`. `total == 0` means "not known yet": the factor stays 1
    /// until [`LrSchedule::with_total`] fills it in.
    Cosine {
        /// Epochs from 1 to `min_factor`.
        total: usize,
        /// The final factor, in `[0, 1]`.
        min_factor: f32,
    },
}

/// A schedule with an optional linear warm-up; see the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// The decay.
    pub schedule: Schedule,
    /// Warm-up epochs (0 for none).
    pub warmup: usize,
}

impl LrSchedule {
    /// A schedule without warm-up.
    pub fn new(schedule: Schedule) -> LrSchedule {
        LrSchedule {
            schedule,
            warmup: 0,
        }
    }

    /// Fills in the length of a cosine schedule given without one
    /// (`cosine`, `cosine:MIN`) with the run's number of epochs; any other
    /// schedule is returned unchanged.
    pub fn with_total(mut self, epochs: usize) -> LrSchedule {
        if let Schedule::Cosine { total, .. } = &mut self.schedule
            && *total == 0
        {
            *total = epochs;
        }
        self
    }

    /// The factor for epoch `epoch` (counted from 0).
    pub fn factor(&self, epoch: usize) -> f32 {
        let base = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Step { every, gamma } => {
                // `every` is at least 1 when parsed; guard a hand-built 0.
                powi(gamma, epoch / every.max(1))
            }
            Schedule::Exponential { gamma } => powi(gamma, epoch),
            Schedule::Cosine { total, min_factor } => {
                if total == 0 {
                    1.0
                } else if epoch >= total {
                    min_factor
                } else {
                    let t = epoch as f64 / total as f64;
                    let c = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                    (min_factor as f64 + (1.0 - min_factor as f64) * c) as f32
                }
            }
        };
        if epoch < self.warmup {
            base * ((epoch + 1) as f32 / (self.warmup + 1) as f32)
        } else {
            base
        }
    }
}

/// `x^n` for any `usize` exponent, in f64 so that long runs do not
/// accumulate f32 rounding.
fn powi(x: f32, n: usize) -> f32 {
    (x as f64).powf(n as f64) as f32
}

/// A schedule string that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "invalid learning-rate schedule '{text}': {reason} (expected constant, step:EVERY:GAMMA, \
     exp:GAMMA, cosine, cosine:MIN or cosine:MIN:TOTAL, e.g. step:30:0.1)"
)]
pub struct ScheduleError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        let fail = |reason: String| ScheduleError {
            text: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.trim().split(':').map(str::trim).collect();
        let gamma = |s: &str| -> Result<f32, ScheduleError> {
            match s.parse::<f32>() {
                Ok(g) if g.is_finite() && g > 0.0 => Ok(g),
                _ => Err(fail(format!("GAMMA must be a positive number, not '{s}'"))),
            }
        };
        match parts.as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["step", every, g] => {
                let every = match every.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(fail(format!(
                            "EVERY must be a positive whole number of epochs, not '{every}'"
                        )));
                    }
                };
                Ok(Schedule::Step {
                    every,
                    gamma: gamma(g)?,
                })
            }
            ["exp", g] => Ok(Schedule::Exponential { gamma: gamma(g)? }),
            ["cosine", rest @ ..] if rest.len() <= 2 => {
                let min_factor = match rest.first() {
                    None => 0.0,
                    Some(s) => match s.parse::<f32>() {
                        Ok(m) if (0.0..=1.0).contains(&m) => m,
                        _ => {
                            return Err(fail(format!("MIN must be a number in [0, 1], not '{s}'")));
                        }
                    },
                };
                let total = match rest.get(1) {
                    None => 0,
                    Some(s) => match s.parse::<usize>() {
                        Ok(n) if n > 0 => n,
                        _ => {
                            return Err(fail(format!(
                                "TOTAL must be a positive whole number of epochs, not '{s}'"
                            )));
                        }
                    },
                };
                Ok(Schedule::Cosine { total, min_factor })
            }
            [name @ ("constant" | "step" | "exp" | "cosine"), ..] => Err(fail(format!(
                "wrong number of ':'-separated fields for '{name}'"
            ))),
            [name, ..] => Err(fail(format!("unknown schedule '{name}'"))),
            [] => Err(fail("empty".to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f64) -> bool {
        (a as f64 - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn constant_is_one() {
        let s = LrSchedule::new("constant".parse().unwrap());
        assert!((0..100).all(|e| s.factor(e) == 1.0));
    }

    #[test]
    fn step_matches_closed_form() {
        let s = LrSchedule::new("step:30:0.1".parse().unwrap());
        for e in 0..100 {
            assert!(close(s.factor(e), 0.1f64.powi((e / 30) as i32)), "{e}");
        }
        assert_eq!(s.factor(29), 1.0);
        assert!(close(s.factor(30), 0.1));
        assert!(close(s.factor(60), 0.01));
    }

    #[test]
    fn exponential_matches_closed_form() {
        let s = LrSchedule::new("exp:0.95".parse().unwrap());
        for e in 0..200 {
            assert!(close(s.factor(e), 0.95f64.powi(e as i32)), "{e}");
        }
    }

    #[test]
    fn cosine_matches_closed_form() {
        let s = LrSchedule::new("cosine:0.01".parse().unwrap()).with_total(10);
        assert_eq!(
            s.schedule,
            Schedule::Cosine {
                total: 10,
                min_factor: 0.01
            }
        );
        for e in 0..10 {
            let c = 0.5 * (1.0 + (std::f64::consts::PI * e as f64 / 10.0).cos());
            assert!(close(s.factor(e), 0.01 + 0.99 * c), "{e}");
        }
        assert_eq!(s.factor(0), 1.0);
        assert!(close(s.factor(5), 0.01 + 0.99 * 0.5));
        assert_eq!(s.factor(10), 0.01);
        assert_eq!(s.factor(1000), 0.01);
        // An explicit total is kept; plain cosine decays to 0.
        let s = LrSchedule::new("cosine:0:4".parse().unwrap()).with_total(99);
        assert!(close(s.factor(2), 0.5));
        assert_eq!(
            "cosine".parse::<Schedule>().unwrap(),
            Schedule::Cosine {
                total: 0,
                min_factor: 0.0
            }
        );
    }

    #[test]
    fn warmup_ramps_linearly_then_follows_the_schedule() {
        let s = LrSchedule {
            schedule: "exp:0.5".parse().unwrap(),
            warmup: 3,
        };
        assert!(close(s.factor(0), 0.25));
        assert!(close(s.factor(1), 0.5 * 0.5));
        assert!(close(s.factor(2), 0.25 * 0.75));
        assert!(close(s.factor(3), 0.125));
        assert!(close(s.factor(4), 0.0625));
    }

    #[test]
    fn bad_strings_say_what_is_expected() {
        for (text, needle) in [
            ("linear", "unknown schedule 'linear'"),
            ("step:0:0.1", "EVERY must be a positive whole number"),
            ("step:30", "wrong number of ':'-separated fields for 'step'"),
            ("exp:-1", "GAMMA must be a positive number, not '-1'"),
            ("exp:abc", "GAMMA must be a positive number"),
            ("cosine:2", "MIN must be a number in [0, 1]"),
            ("cosine:0.1:0", "TOTAL must be a positive whole number"),
            ("cosine:0.1:5:7", "wrong number"),
            ("", "unknown schedule ''"),
        ] {
            let err = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("expected constant, step:EVERY:GAMMA"), "{err}");
        }
    }
}
