//! Normalisation and augmentation of samples.

use super::{DataError, Dataset};
use crate::util::rng::Rng;

/// A per-value transformation of the samples, applied once after loading.
#[derive(Clone, Debug, PartialEq)]
pub enum Normalize {
    /// Leave the values as they are.
    None,
    /// Map `from.0 → to.0` and `from.1 → to.1` linearly (values outside
    /// `from` land outside `to`; nothing is clamped). A zero-width `from`
    /// maps everything to `to.0`.
    Scale {
        /// The input range, e.g. `(0.0, 255.0)`.
        from: (f32, f32),
        /// The output range, e.g. `(-1.0, 1.0)`.
        to: (f32, f32),
    },
    /// `(x − mean[c]) / std[c]` for channel `c`, the first axis of the sample
    /// shape (a rank-1 sample is one channel).
    Standardize {
        /// Per-channel mean.
        mean: Vec<f32>,
        /// Per-channel standard deviation; 0 is treated as 1.
        std: Vec<f32>,
    },
}

impl Normalize {
    /// The digits' 0..16 to −1..1.
    pub fn digits() -> Normalize {
        Normalize::Scale {
            from: (0.0, 16.0),
            to: (-1.0, 1.0),
        }
    }

    /// (Fashion-)MNIST's 0..255 to −1..1.
    pub fn mnist() -> Normalize {
        Normalize::Scale {
            from: (0.0, 255.0),
            to: (-1.0, 1.0),
        }
    }

    /// The per-channel mean and (population) standard deviation of a data
    /// set, typically its training part, computed in f64.
    pub fn fit(dataset: &Dataset) -> Normalize {
        let (channels, per) = channels(&dataset.sample_shape);
        let mut sum = vec![0f64; channels];
        let mut sq = vec![0f64; channels];
        // An empty sample has no values (and would make zero-sized chunks).
        let size = if channels * per == 0 {
            usize::MAX
        } else {
            channels * per
        };
        for s in dataset.images.chunks_exact(size) {
            for (c, plane) in s.chunks_exact(per).enumerate() {
                for &v in plane {
                    sum[c] += v as f64;
                    sq[c] += v as f64 * v as f64;
                }
            }
        }
        let n = (dataset.len() * per).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0)).sqrt() as f32)
            .collect();
        Normalize::Standardize {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    /// Transforms every value of `dataset`.
    ///
    /// # Errors
    ///
    /// [`DataError::Normalize`] if a `Standardize` has not one mean and one
    /// std per channel.
    pub fn apply(&self, dataset: &mut Dataset) -> Result<(), DataError> {
        match self {
            Normalize::None => {}
            &Normalize::Scale { from, to } => {
                let span = from.1 - from.0;
                let k = if span == 0.0 {
                    0.0
                } else {
                    (to.1 - to.0) / span
                };
                for v in &mut dataset.images {
                    *v = to.0 + (*v - from.0) * k;
                }
            }
            Normalize::Standardize { mean, std } => {
                let (channels, per) = channels(&dataset.sample_shape);
                if mean.len() != channels || std.len() != channels {
                    return Err(DataError::Normalize {
                        name: dataset.name.clone(),
                        message: format!(
                            "{} means and {} standard deviations for {channels} channels \
                             (samples {:?})",
                            mean.len(),
                            std.len(),
                            dataset.sample_shape
                        ),
                    });
                }
                if channels * per == 0 {
                    return Ok(()); // no values
                }
                for s in dataset.images.chunks_exact_mut(channels * per) {
                    for (c, plane) in s.chunks_exact_mut(per).enumerate() {
                        let inv = if std[c] == 0.0 { 1.0 } else { 1.0 / std[c] };
                        for v in plane {
                            *v = (*v - mean[c]) * inv;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Channels and values per channel of a sample shape.
pub(super) fn channels(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [_] => (1, shape[0]),
        [c, rest @ ..] => (*c, rest.iter().product()),
    }
}

/// Random augmentation of a batch, for images `[C, H, W]` (or any rank ≥ 2:
/// the last two axes are H and W).
///
/// - `crop_pad = p > 0`: the image is padded with `p` zeros on every side and
///   a random `H × W` window is cut out, i.e. shifted by `dy, dx ∈ [−p, p]`
///   (the CIFAR recipe: `RandomCrop(32, padding=4)`). Zero is the padding
///   value, so normalise first if 0 should mean "background".
/// - `flip`: mirror left–right with probability ½.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding for the random crop (0 for none).
    pub crop_pad: usize,
    /// Random horizontal flip.
    pub flip: bool,
}

impl Augment {
    /// Whether this augmentation does nothing.
    pub fn is_identity(&self) -> bool {
        self.crop_pad == 0 && !self.flip
    }

    /// Augments every sample of the batch `x` (samples of `sample_shape`, one
    /// after another) in place, drawing from `rng`. Samples of rank below 2
    /// are left alone. Draws per sample, in order, so the result depends only
    /// on the generator's state. Seed a generator per batch,
    /// `Rng::new(derive_seed(seed, epoch, 1 + batch))`, and a run resumed in
    /// the middle of an epoch augments exactly as an uninterrupted one, with
    /// no generator state to save (stream 0 is [`Batches`]' shuffle).
    pub fn apply(&self, x: &mut [f32], sample_shape: &[usize], rng: &mut Rng) {
        if self.is_identity() || sample_shape.len() < 2 {
            return;
        }
        let h = sample_shape[sample_shape.len() - 2];
        let w = sample_shape[sample_shape.len() - 1];
        let per: usize = sample_shape.iter().product();
        if per == 0 {
            return;
        }
        let p = self.crop_pad as isize;
        let mut plane = vec![0f32; h * w];
        for sample in x.chunks_exact_mut(per) {
            let (dy, dx) = if p > 0 {
                (
                    rng.below(2 * self.crop_pad + 1) as isize - p,
                    rng.below(2 * self.crop_pad + 1) as isize - p,
                )
            } else {
                (0, 0)
            };
            let flip = self.flip && rng.next_u64() >> 63 == 1;
            if dy == 0 && dx == 0 && !flip {
                continue;
            }
            for channel in sample.chunks_exact_mut(h * w) {
                plane.copy_from_slice(channel);
                for y in 0..h {
                    for xo in 0..w {
                        // Output (y, xo) reads input (y + dy, x + dx), x mirrored first.
                        let xi = if flip { w - 1 - xo } else { xo };
                        let sy = y as isize + dy;
                        let sx = xi as isize + dx;
                        channel[y * w + xo] =
                            if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                0.0
                            } else {
                                plane[sy as usize * w + sx as usize]
                            };
                    }
                }
            }
        }
    }
}
