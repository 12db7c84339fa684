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
use crate::train::data::{self, Batches, Dataset, derive_seed};
use crate::train::trainer::{Trainer, TrainerConfig, evaluate_on_engine};
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
    let arch_names = space.arch_params();
    let trainer_config = TrainerConfig {
        runner: config.runner,
        optimizer: config.weight_optimizer.clone(),
        smoothing: config.smoothing,
        quantization_loss: 0.0,
        projection_loss: 0.0,
        distribution_loss: 0.0,
        clip_latent: true,
        threads: config.threads.max(1),
    };
    let draws = candidates.iter().map(Vec::len).max().unwrap_or(0);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut sample = 0u64;
    for _ in 0..config.reduction.rounds.max(1) {
        let orders: Vec<Vec<usize>> = candidates
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
            let mut keep = BTreeMap::new();
            let mut taken = Vec::new();
            for (e, order) in orders.iter().enumerate() {
                let edge = &space.edges[e];
                let op = if order.is_empty() {
                    // One operation left, or none to sample: its best.
                    let p = softmax(alpha(&search.params, &edge.choose));
                    (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b })
                } else {
                    order[d % order.len()]
                };
                keep.insert(edge.choose.clone(), vec![op]);
                taken.push(op);
            }
            let (g, p) = restrict(&search.graph, &search.params, &keep)?;
            let mut trainer = Trainer::new(&g, p, &trainer_config)?;
            let state = search.weight_optimizer.state();
            let steps = search.weight_optimizer.param_steps();
            trainer.optimizer_mut().load_state(
                state,
                &steps,
                search.weight_optimizer.step_count(),
            )?;
            let batches = Batches::new(
                weight_half.len(),
                config.batch,
                derive_seed(config.seed, epoch, 0xF17E + sample),
                0,
            );
            sample += 1;
            for indices in batches.iter().take(config.reduction.finetune_batches) {
                data::fill(weight_half, indices, &mut x, &mut y);
                trainer.step_subset(&x, &y, 1.0, None, &|n| !arch_names.contains(n))?;
            }
            let acc = 100.0
                * evaluate_on_engine(&g, trainer.params(), arch_half, 256, config.threads)?
                    .accuracy() as f32;
            for (e, &op) in taken.iter().enumerate() {
                if candidates[e].contains(&op) {
                    accuracy[e].entry(op).or_default().push(acc);
                }
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
        let non_zero = (0..n).filter(|&i| !edge.zero[i]).count();
        let victim = order
            .iter()
            .copied()
            .find(|&i| edge.zero[i] || non_zero > 1)
            .unwrap_or(order[0]);
        drop.insert(edge.choose.clone(), victim);
        dropped.push((edge.choose.clone(), edge.ops[victim].clone()));
    }
    search.drop_ops(&drop)?;
    Ok(dropped)
}

fn alpha<'a>(params: &'a crate::ir::params::Params, choose: &str) -> &'a [f32] {
    params
        .get(&format!("{choose}.alpha"))
        .map_or(&[][..], |t| &t.data[..])
}
