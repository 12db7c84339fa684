//! Splitting, seeding and batching: everything that decides which samples a
//! step sees, all of it seeded so a resumed run repeats an uninterrupted one.

use super::Dataset;
use crate::util::rng::Rng;

/// A seed for one purpose of one epoch, derived from the run's seed: the same
/// `(seed, epoch, stream)` always gives the same value, and different ones give
/// unrelated streams (each input passes through SplitMix64's mixer).
pub fn derive_seed(seed: u64, epoch: u64, stream: u64) -> u64 {
    let mut r = Rng::new(seed);
    let a = r.next_u64();
    let mut r = Rng::new(a ^ epoch);
    let b = r.next_u64();
    Rng::new(b ^ stream.rotate_left(32)).next_u64()
}

/// Shuffles `v` in place: Fisher–Yates, drawing from `rng`.
pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

/// Splits a data set into `(train, test)`, stratified by class.
///
/// For each class in turn (0, 1, ...), its sample indices are shuffled
/// (Fisher–Yates, one [`Rng`] seeded with `seed` for all classes) and the
/// first `round(test_fraction · n_c)` go to the test part. Both parts keep the
/// original order of the samples. The result depends only on the data set's
/// labels, `test_fraction` and `seed`, so it is the same on every machine.
/// `test_fraction` is clamped to `[0, 1]` (NaN counts as 0); the names gain
/// `/train` and `/test`.
pub fn split(dataset: &Dataset, test_fraction: f32, seed: u64) -> (Dataset, Dataset) {
    let fraction = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0) as f64
    };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); dataset.classes];
    for (i, &l) in dataset.labels.iter().enumerate() {
        if let Some(c) = by_class.get_mut(l as usize) {
            c.push(i);
        }
    }
    let mut rng = Rng::new(seed);
    let mut in_test = vec![false; dataset.len()];
    for indices in &mut by_class {
        shuffle(indices, &mut rng);
        let take = (fraction * indices.len() as f64).round() as usize;
        for &i in &indices[..take.min(indices.len())] {
            in_test[i] = true;
        }
    }
    let (test, train): (Vec<usize>, Vec<usize>) = (0..dataset.len()).partition(|&i| in_test[i]);
    let mut a = dataset.subset(&train);
    let mut b = dataset.subset(&test);
    a.name = format!("{}/train", dataset.name);
    b.name = format!("{}/test", dataset.name);
    (a, b)
}

/// One epoch's order of samples, cut into batches.
///
/// The order is a Fisher–Yates shuffle of `0..len` seeded with
/// [`derive_seed`]`(seed, epoch, 0)`, so epoch `e` of a resumed run visits the
/// samples exactly as epoch `e` of an uninterrupted run. The last batch holds
/// the remainder (`len % batch` samples) when `batch` does not divide `len`:
/// it is kept, not dropped, so every sample is seen once per epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batches {
    order: Vec<usize>,
    batch: usize,
}

impl Batches {
    /// The shuffled batches of epoch `epoch`; `batch` is at least 1.
    pub fn new(len: usize, batch: usize, seed: u64, epoch: usize) -> Batches {
        let mut order: Vec<usize> = (0..len).collect();
        shuffle(
            &mut order,
            &mut Rng::new(derive_seed(seed, epoch as u64, 0)),
        );
        Batches {
            order,
            batch: batch.max(1),
        }
    }

    /// Batches in the data set's order, for evaluation.
    pub fn sequential(len: usize, batch: usize) -> Batches {
        Batches {
            order: (0..len).collect(),
            batch: batch.max(1),
        }
    }

    /// The number of batches (the last may be partial).
    pub fn len(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// Whether there are no batches.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Batch `i`'s sample indices (empty past the end), so that a run resumed
    /// in the middle of an epoch can start at the batch it stopped at.
    pub fn batch(&self, i: usize) -> &[usize] {
        let start = (i.saturating_mul(self.batch)).min(self.order.len());
        let end = start.saturating_add(self.batch).min(self.order.len());
        &self.order[start..end]
    }

    /// The batches in order.
    pub fn iter(&self) -> std::slice::Chunks<'_, usize> {
        self.order.chunks(self.batch)
    }

    /// The whole epoch's order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl<'a> IntoIterator for &'a Batches {
    type Item = &'a [usize];
    type IntoIter = std::slice::Chunks<'a, usize>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
