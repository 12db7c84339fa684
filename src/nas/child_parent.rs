//! CP-NAS's child-parent operation-space reduction (Zhuo et al., IJCAI
//! 2020, Algorithm 1 / the book's Algorithm 9): like BNAS's
//! ([`super::reduction`]), one round drops exactly one operation from every
//! edge that has more than one left, but every operation left is sampled,
//! and a sampled architecture is scored by how well its binarized **child**
//! does and how much it loses against its full-precision **parent**
//! ([`super::parent`]).
//!
//! A round, on the current supernet and its parent:
//! 1. `T` times: shuffle each edge's operations; for draw `d = 0, 1, …` up
//!    to the largest operation count, sample the single-path network that
//!    takes operation `d` (cyclically) on every edge. Its parent is
//!    fine-tuned from the parent supernet's weights, then its child from the
//!    child supernet's with the child-parent kernel loss towards the
//!    fine-tuned parent's kernels, each for a few weight batches (each
//!    optimizer's state continued; the supernets are not changed), and both
//!    are validated on the architecture half: `A_P`, `A_C` in percent.
//! 2. Every operation the path took records
//!    `z = A_C + β_P·(A_P − A_C)` (the paper's Eq. 4.15).
//! 3. Per edge, `e_k = softmax_k(z̄_k)` over the operations left, `z̄_k` the
//!    mean of operation `k`'s records; the operation of smallest `e` is
//!    dropped (ties: the smallest α, then the first). As in BNAS, the last
//!    non-`zero` operation is never dropped.
//!
//! **The sign of β_P.** As printed, `z = β_P(A_P − A_C) + A_C` with
//! `β_P > 0` rewards a large parent-child gap, yet the paper's ablation
//! reports that a larger β_P selects *fewer* convolutions, the operations
//! binarization hurts most, which only a penalty on the gap does. onebit
//! takes β_P signed (`ChildParentConfig::gap_weight`), default −1 (the gap
//! penalised as much as the child's accuracy counts): `z = 2·A_C − A_P`.

use std::collections::BTreeMap;

use super::genotype::softmax;
use super::reduction::{
    SampledNet, alpha, finetuned_accuracy, first_droppable, path_choices, sample_paths,
};
use super::search::{Search, SearchError};
use crate::ir::params::Params;
use crate::train::data::{Dataset, derive_seed};
use crate::train::kernel_loss::KernelTargets;
use crate::util::rng::Rng;

/// How CP-NAS scores and trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChildParentConfig {
    /// β_P of `z = A_C + β_P·(A_P − A_C)`: negative penalises the child's
    /// shortfall against its parent (see the module doc).
    pub gap_weight: f32,
    /// λ of the child-parent kernel loss (`train::kernel_loss`) in the
    /// child's weight steps and fine-tuning (0: none).
    pub kernel_loss: f32,
}

impl Default for ChildParentConfig {
    fn default() -> ChildParentConfig {
        ChildParentConfig {
            gap_weight: -1.0,
            kernel_loss: 1e-3,
        }
    }
}

/// The child-parent indicator of one sampled architecture.
pub fn indicator(gap_weight: f32, parent_accuracy: f32, child_accuracy: f32) -> f32 {
    child_accuracy + gap_weight * (parent_accuracy - child_accuracy)
}

/// The parent's kernels the child's kernel loss pulls towards: every
/// parameter of `parent` (the loss pairs them with the child's latent
/// binary weights by name and size).
pub fn kernel_targets(parent: &Params, weight: f32) -> Option<KernelTargets> {
    (weight != 0.0).then(|| KernelTargets {
        weight,
        kernels: parent
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.data.clone()))
            .collect(),
    })
}

/// Runs one child-parent reduction round on `search` (which has a parent)
/// and returns what it dropped, as `(edge, label)`.
///
/// # Errors
///
/// A training or pass error; [`SearchError::Checkpoint`] if the search has
/// no parent.
pub fn reduce(
    search: &mut Search,
    weight_half: &Dataset,
    arch_half: &Dataset,
) -> Result<Vec<(String, String)>, SearchError> {
    let space = search.space()?;
    let config = search.config().clone();
    let cp = config.child_parent;
    let mut rng = Rng::new(derive_seed(config.seed, search.epoch as u64, 0xC9A5));
    let everything: Vec<Vec<usize>> = space
        .edges
        .iter()
        .map(|e| {
            if e.ops.len() < 2 {
                Vec::new()
            } else {
                (0..e.ops.len()).collect()
            }
        })
        .collect();
    let paths = sample_paths(
        &space,
        &search.params,
        &everything,
        config.reduction.rounds,
        &mut rng,
    );
    let parent = search.parent.as_ref().ok_or_else(|| {
        SearchError::Checkpoint("a child-parent reduction of a search without a parent".into())
    })?;
    let mut z: Vec<BTreeMap<usize, Vec<f32>>> = vec![BTreeMap::new(); space.edges.len()];
    for (sample, taken) in paths.iter().enumerate() {
        let keep = path_choices(&space, taken);
        let parent_net = SampledNet {
            graph: &parent.graph,
            params: &parent.params,
            optimizer: &parent.optimizer,
            kernel_targets: None,
        };
        // Parent and child see the same batches (the same `sample`).
        let sample = sample as u64;
        let (a_p, tuned_parent) =
            finetuned_accuracy(search, parent_net, &keep, weight_half, arch_half, sample)?;
        let child_net = SampledNet {
            graph: &search.graph,
            params: &search.params,
            optimizer: &search.weight_optimizer,
            kernel_targets: kernel_targets(&tuned_parent, cp.kernel_loss),
        };
        let (a_c, _) =
            finetuned_accuracy(search, child_net, &keep, weight_half, arch_half, sample)?;
        let value = indicator(cp.gap_weight, a_p, a_c);
        for (e, &op) in taken.iter().enumerate() {
            z[e].entry(op).or_default().push(value);
        }
    }
    let mut drop = BTreeMap::new();
    let mut dropped = Vec::new();
    for (e, edge) in space.edges.iter().enumerate() {
        let n = edge.ops.len();
        if n < 2 {
            continue;
        }
        let means: Vec<f32> = (0..n)
            .map(|k| {
                let v = z[e].get(&k).map_or(&[][..], |v| &v[..]);
                v.iter().sum::<f32>() / v.len().max(1) as f32
            })
            .collect();
        let evaluation = softmax(&means);
        let alive = search.alive[&edge.choose].clone();
        let scores = search
            .scores
            .get_mut(&edge.choose)
            .ok_or_else(|| SearchError::Checkpoint(format!("no scores for `{}`", edge.choose)))?;
        for (i, &orig) in alive.iter().enumerate() {
            scores[orig] = evaluation[i];
        }
        let p = softmax(alpha(&search.params, &edge.choose));
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            evaluation[a]
                .total_cmp(&evaluation[b])
                .then(p[a].total_cmp(&p[b]))
                .then(a.cmp(&b))
        });
        let victim = first_droppable(edge, &order);
        drop.insert(edge.choose.clone(), victim);
        dropped.push((edge.choose.clone(), edge.ops[victim].clone()));
    }
    search.drop_ops(&drop)?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_indicator_is_the_published_formula_with_a_signed_weight() {
        // β_P = 0: the child's accuracy alone; 1: the parent's.
        assert_eq!(indicator(0.0, 90.0, 80.0), 80.0);
        assert_eq!(indicator(1.0, 90.0, 80.0), 90.0);
        // The default penalises a 10-point gap by 10 points.
        assert_eq!(
            indicator(ChildParentConfig::default().gap_weight, 90.0, 80.0),
            70.0
        );
    }
}
