//! Data sets for training: readers, the embedded digits, splits,
//! normalisation, augmentation and batching.
//!
//! A [`Dataset`] is a dense block of `f32` samples in C order plus one class
//! label per sample. Readers:
//!
//! - [`read_idx`] / [`load_idx_pair`]: IDX files (the MNIST and Fashion-MNIST
//!   format), raw or gzip-compressed; compression is detected by the gzip
//!   magic bytes, not by the file name;
//! - [`read_csv`]: one sample per line with the label first or last, raw or gzip;
//! - [`load_npy_pair`]: an images `.npy` and a labels `.npy`, via [`crate::io::npy`];
//! - [`digits`]: the 8×8 digits embedded in the library;
//! - [`fashion_mnist`]: Fashion-MNIST from Debian's `dataset-fashion-mnist`.
//!
//! Readers never panic on bad input: a truncated or corrupt file, a shape that
//! does not fit, a label that is not a small non-negative integer, or image and
//! label counts that differ are [`DataError`]s naming the file.
//!
//! Randomness (splits, batch order, augmentation) comes from
//! [`crate::util::rng::Rng`] seeded from the run's seed, so that results are
//! the same on every machine, and [`derive_seed`] gives each epoch its own
//! stream so that a run resumed at an epoch boundary repeats exactly what an
//! uninterrupted run does.

use std::path::PathBuf;

use crate::io::npy::NpyError;

mod builtin;
mod order;
mod readers;
#[cfg(test)]
mod tests;
mod transform;

pub use builtin::{digits, fashion_mnist};
pub use order::{Batches, derive_seed, shuffle, split};
pub use readers::{LabelColumn, encode_idx_u8, load_idx_pair, load_npy_pair, read_csv, read_idx};
pub use transform::{Augment, Normalize};

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Largest number of classes accepted: labels are class indices, and a label
/// in the millions is a corrupt file, not a class.
pub const MAX_CLASSES: usize = 1 << 16;

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Everything that can go wrong reading a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file cannot be opened or read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS (or gzip) error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends early.
    #[error("{}: truncated: the {what} needs {needed} bytes, but the file has only {found}", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The part that is incomplete, e.g. `"header"`.
        what: &'static str,
        /// Bytes needed (after decompression).
        needed: u64,
        /// Bytes present (after decompression).
        found: u64,
    },
    /// The file is not in the expected format.
    #[error("{}: {message}", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A `.npy` file cannot be read.
    #[error("{0}")]
    Npy(#[from] NpyError),
    /// Images and labels do not belong together.
    #[error("{}: {message}", .path.display())]
    Mismatch {
        /// The file where the disagreement shows (usually the labels).
        path: PathBuf,
        /// What disagrees.
        message: String,
    },
    /// A data set's directory or file is absent.
    #[error("{}: not found ({hint})", .path.display())]
    Missing {
        /// The directory or file looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// A [`Normalize`] does not fit the data set.
    #[error("cannot normalise {name}: {message}")]
    Normalize {
        /// The data set's name.
        name: String,
        /// What does not fit.
        message: String,
    },
}

/// Samples and labels for classification.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// A short name for messages and logs, e.g. `"digits"`.
    pub name: String,
    /// The shape of one sample, e.g. `[1, 28, 28]` (C, H, W).
    pub sample_shape: Vec<usize>,
    /// `len() × prod(sample_shape)` values, C order, sample after sample.
    pub images: Vec<f32>,
    /// One class index per sample, each below `classes`.
    pub labels: Vec<u32>,
    /// The number of classes.
    pub classes: usize,
}

impl Dataset {
    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample: the product of `sample_shape`.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Sample `i`'s values.
    ///
    /// # Panics
    ///
    /// If `i >= len()`: indices come from the program, not from a file.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The samples at `indices`, in that order (repeats allowed), with the
    /// same name, shape and number of classes.
    ///
    /// # Panics
    ///
    /// If an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.sample_len());
        let mut labels = Vec::with_capacity(indices.len());
        fill(self, indices, &mut images, &mut labels);
        Dataset {
            name: self.name.clone(),
            sample_shape: self.sample_shape.clone(),
            images,
            labels,
            classes: self.classes,
        }
    }

    /// How many samples each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Gathers the samples at `indices` into `x` (cleared first, then
/// `indices.len() × sample_len` values) and their labels into `y`: one batch,
/// reusing the caller's buffers.
///
/// # Panics
///
/// If an index is out of range.
pub fn fill(dataset: &Dataset, indices: &[usize], x: &mut Vec<f32>, y: &mut Vec<u32>) {
    x.clear();
    y.clear();
    for &i in indices {
        x.extend_from_slice(dataset.sample(i));
        y.push(dataset.labels[i]);
    }
}
