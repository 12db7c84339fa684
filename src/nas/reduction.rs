//! BNAS's operation-space reduction (Chen et al., AAAI 2020, "Binarized
//! Neural Architecture Search"): one round drops exactly one operation from
//! every edge that has more than one left.
//!
//! A round, on the current supernet:
//! 1. On each edge with `n > 1` operations left, the candidates `O_S` are the
//!    `⌊n/2⌋` with the smallest softmax(α) (ties: the later alternative).
//! 2. `T` times: shuffle each edge's candidates; then for draw `d = 0, 1,
//!    ...` up to the largest candidate count, sample the single-path network
//!    that takes candidate `d` (cyclically) on every edge, i.e. each
//!    candidate is drawn once per round, without replacement; fine-tune a copy
//!    of the shared weights for a few weight batches (the weight optimizer's
//!    state continued, α and β untouched), and record its accuracy on the
//!    architecture half (in percent) for the operation it took on each edge.
//! 3. Per edge, `s_k = softmax_{k∈O_S}(ȳ_k)` of the mean accuracies; every
//!    other operation gets `(max s + mean s)/2`; the running likelihood is
//!    `S ← S/2 + s`.
//! 4. Drop the candidate of lowest `S` on each edge (ties: the one of
//!    smallest α, then the first). The last non-`zero` operation of an edge is
//!    never dropped (the next candidate is, or failing that the `zero`), so
//!    discretisation always has one.
//!
//! Only candidates are dropped: BNAS abandons an operation "with less
//! potential", and the candidates are that half. Taken over all operations,
//! the rule would let one lucky sampled candidate outlast an operation of
//! high α that was never sampled (the others' score `(max s + mean s)/2` is
//! below the best candidate's), which the tests saw drop the only useful
//! operation of a known problem.
//!
//! Accuracies are in percent so that the softmax separates them: a 1-point
//! difference is a factor `e` (with fractions in [0, 1] every `s` would be
//! nearly `1/|O_S|`). The paper does not say which it uses.

use std::collections::BTreeMap;

use super::genotype::{restrict, softmax};
use super::search::{Search, SearchError};
use super::space::{Edge, SearchSpace};
use crate::ir::params::Params;
use crate::train::data::{self, Batches, Dataset, derive_seed};
use crate::train::kernel_loss::KernelTargets;
use crate::train::trainer::{Trainer, evaluate_on_engine};
use crate::util::rng::Rng;

/// How the reduction runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReductionConfig {
    /// Epochs between rounds (E), counted from the end of the warm-up.
    pub every: usize,
    /// Sampling rounds per reduction (T).
    pub rounds: usize,
    /// Weight batches of fine-tuning per sampled network.
    pub finetune_batches: usize,
}

impl Default for ReductionConfig {
    fn default() -> ReductionConfig {
        ReductionConfig {
            every: 1,
            rounds: 1,
            finetune_batches: 4,
        }
    }
}

/// Runs one reduction round on `search` and returns what it dropped, as
/// `(edge, label)`.
///
/// # Errors
///
/// A training or pass error.
pub fn reduce(
    search: &mut Search,
    weight_half: &Dataset,
    arch_half: &Dataset,
) -> Result<Vec<(String, String)>, SearchError> {
    let space = search.space()?;
    let config = search.config().clone();
    let epoch = search.epoch as u64;
    let mut rng = Rng::new(derive_seed(config.seed, epoch, 0xB4A5));
    // Candidates per edge: the half with the smallest softmax(α).
    let candidates: Vec<Vec<usize>> = space
        .edges
        .iter()
        .map(|e| {
            let n = e.ops.len();
            if n < 2 {
                return Vec::new();
            }
            let p = softmax(alpha(&search.params, &e.choose));
            let mut idx: Vec<usize> = (0..n).collect();
            // Ascending softmax(α); ties to the later alternative first.
            idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)));
            idx.truncate(n / 2);
            idx.sort_unstable();
            idx
        })
        .collect();
    let mut accuracy: Vec<BTreeMap<usize, Vec<f32>>> = vec![BTreeMap::new(); space.edges.len()];
    let paths = sample_paths(
        &space,
        &search.params,
        &candidates,
        config.reduction.rounds,
        &mut rng,
    );
    for (sample, taken) in paths.iter().enumerate() {
        let net = SampledNet {
            graph: &search.graph,
            params: &search.params,
            optimizer: &search.weight_optimizer,
            kernel_targets: None,
        };
        let keep = path_choices(&space, taken);
        let acc = finetuned_accuracy(search, net, &keep, weight_half, arch_half, sample as u64)?.0;
        for (e, &op) in taken.iter().enumerate() {
            if candidates[e].contains(&op) {
                accuracy[e].entry(op).or_default().push(acc);
            }
        }
    }
    // Scores and the drop.
    let mut drop = BTreeMap::new();
    let mut dropped = Vec::new();
    for (e, edge) in space.edges.iter().enumerate() {
        let n = edge.ops.len();
        if n < 2 {
            continue;
        }
        let cand = &candidates[e];
        let means: Vec<f32> = cand
            .iter()
            .map(|k| {
                let v = &accuracy[e][k];
                v.iter().sum::<f32>() / v.len().max(1) as f32
            })
            .collect();
        let s = softmax(&means);
        let s_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s_mean = s.iter().sum::<f32>() / s.len() as f32;
        let others = 0.5 * (s_max + s_mean);
        let alive = search.alive[&edge.choose].clone();
        let scores = search
            .scores
            .get_mut(&edge.choose)
            .ok_or_else(|| SearchError::Checkpoint(format!("no scores for `{}`", edge.choose)))?;
        for (i, &orig) in alive.iter().enumerate() {
            let s_i = cand.iter().position(|&c| c == i).map_or(others, |j| s[j]);
            scores[orig] = scores[orig] / 2.0 + s_i;
        }
        let p = softmax(alpha(&search.params, &edge.choose));
        // Candidates first (only they are dropped, unless the guard below
        // forbids all of them), each group by S, then α, then index.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            (!cand.contains(&a))
                .cmp(&!cand.contains(&b))
                .then(scores[alive[a]].total_cmp(&scores[alive[b]]))
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

/// The first operation of `order` (the edge's operations, most droppable
/// first) that may go: never the edge's last non-`zero` one, so that
/// discretisation always has an operation.
pub(super) fn first_droppable(edge: &Edge, order: &[usize]) -> usize {
    let non_zero = edge.zero.iter().filter(|&&z| !z).count();
    order
        .iter()
        .copied()
        .find(|&i| edge.zero[i] || non_zero > 1)
        .unwrap_or(order[0])
}

/// The single-path networks a reduction round samples, as the operation
/// each edge takes: `rounds` times, every edge's `pool` is shuffled, and
/// draw `d = 0, 1, …` up to the largest pool takes `pool[d mod |pool|]` on
/// every edge (its best α where the pool is empty). So each pooled
/// operation is drawn once per round, without replacement.
pub(super) fn sample_paths(
    space: &SearchSpace,
    params: &Params,
    pools: &[Vec<usize>],
    rounds: usize,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let draws = pools.iter().map(Vec::len).max().unwrap_or(0);
    let mut paths = Vec::new();
    for _ in 0..rounds.max(1) {
        let orders: Vec<Vec<usize>> = pools
            .iter()
            .map(|c| {
                let mut c = c.clone();
                for i in (1..c.len()).rev() {
                    c.swap(i, rng.below(i + 1));
                }
                c
            })
            .collect();
        for d in 0..draws {
            let path = orders
                .iter()
                .zip(&space.edges)
                .map(|(order, edge)| {
                    if order.is_empty() {
                        let p = softmax(alpha(params, &edge.choose));
                        (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b })
                    } else {
                        order[d % order.len()]
                    }
                })
                .collect();
            paths.push(path);
        }
    }
    paths
}

/// The `restrict` choices of a sampled path.
pub(super) fn path_choices(space: &SearchSpace, path: &[usize]) -> BTreeMap<String, Vec<usize>> {
    space
        .edges
        .iter()
        .zip(path)
        .map(|(edge, &op)| (edge.choose.clone(), vec![op]))
        .collect()
}

/// A supernet to sample single-path networks from: its graph and
/// parameters, the optimizer state its fine-tuning continues, and the
/// child-parent kernel loss it fine-tunes with, if any.
pub(super) struct SampledNet<'a> {
    pub graph: &'a crate::ir::graph::Graph,
    pub params: &'a Params,
    pub optimizer: &'a crate::train::optim::Optimizer,
    pub kernel_targets: Option<KernelTargets>,
}

/// The single-path network `keep` selects from `net`, its weights (not α
/// or β) fine-tuned on a copy for `finetune_batches` weight batches (the
/// batch order seeded by the epoch and `sample`), and its accuracy on the
/// architecture half in percent; also the fine-tuned parameters.
pub(super) fn finetuned_accuracy(
    search: &Search,
    net: SampledNet<'_>,
    keep: &BTreeMap<String, Vec<usize>>,
    weight_half: &Dataset,
    arch_half: &Dataset,
    sample: u64,
) -> Result<(f32, Params), SearchError> {
    let config = search.config();
    let arch_names = search.space()?.arch_params();
    let (g, p) = restrict(net.graph, net.params, keep)?;
    let mut trainer = Trainer::new(&g, p, &search.trainer_config())?;
    trainer.optimizer_mut().load_state(
        net.optimizer.state(),
        &net.optimizer.param_steps(),
        net.optimizer.step_count(),
    )?;
    trainer.set_kernel_targets(net.kernel_targets);
    let batches = Batches::new(
        weight_half.len(),
        config.batch,
        derive_seed(config.seed, search.epoch as u64, 0xF17E + sample),
        0,
    );
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for indices in batches.iter().take(config.reduction.finetune_batches) {
        data::fill(weight_half, indices, &mut x, &mut y);
        trainer.step_subset(&x, &y, 1.0, None, &|n| !arch_names.contains(n))?;
    }
    let accuracy = evaluate_on_engine(&g, trainer.params(), arch_half, 256, config.threads)?;
    Ok((100.0 * accuracy.accuracy() as f32, trainer.params().clone()))
}

pub(super) fn alpha<'a>(params: &'a Params, choose: &str) -> &'a [f32] {
    params
        .get(&format!("{choose}.alpha"))
        .map_or(&[][..], |t| &t.data[..])
}
