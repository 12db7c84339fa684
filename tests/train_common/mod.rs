//! Random parameters and batches for the training tests (gradient checks,
//! the step engine against the interpreter).

// Each test crate that includes this module uses one of the weight kinds.
#![allow(dead_code)]

use std::collections::HashMap;

use onebit::ir::{Graph, Params, Tensor, interp};
use onebit::passes::differentiate::TrainingGraph;
use onebit::util::rng::Rng;

/// The loss a run of the training graph computes.
pub fn loss(train: &TrainingGraph, params: &Params, inputs: &[Tensor]) -> f64 {
    interp::run(&train.graph, params, inputs).unwrap()[0].data[0] as f64
}

/// Every gradient output of a run of the training graph, by parameter name.
pub fn gradients(
    train: &TrainingGraph,
    params: &Params,
    inputs: &[Tensor],
) -> HashMap<String, Tensor> {
    let vals = interp::run_all(&train.graph, params, inputs).unwrap();
    train
        .gradients
        .iter()
        .map(|(p, id)| (p.clone(), vals[id].clone()))
        .collect()
}

/// How the weights of multi-dimensional parameters are drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// As PyTorch initialises them.
    Init,
    /// PyTorch's values each scaled by a factor in `[0.5, 1.5)`, so latent
    /// binary weights spread over both sides of the clip.
    Spread,
}

/// Parameters from PyTorch's init, then every per-channel parameter
/// randomised so that no gradient is trivially symmetric: running variances
/// in `[0.5, 1.5)`, means and biases small, `α` in `[−1, 1)`, per-channel
/// weights (batchnorm's γ, prelu's slopes) and PCNN's projections away from
/// zero and negative one time in five.
pub fn random_params(graph: &Graph, seed: u64, weights: Weights) -> Params {
    let mut params = Params::init(graph, seed);
    let mut rng = Rng::new(seed ^ 0x5eed);
    for (name, t) in params.tensors.iter_mut() {
        let suffix = name.rsplit('.').next().unwrap();
        for v in &mut t.data {
            *v = match suffix {
                "running_var" => 0.5 + rng.next_f32(),
                "running_mean" => rng.uniform(0.3),
                "alpha" => rng.uniform(1.0),
                "weight" if t.shape.len() == 1 => {
                    let m = 0.5 + rng.next_f32();
                    if rng.next_f32() < 0.2 { -m } else { m }
                }
                "projection" => {
                    let m = 0.5 + rng.next_f32();
                    if rng.next_f32() < 0.2 { -m } else { m }
                }
                "bias" if t.shape.len() == 1 => rng.uniform(0.5),
                _ => match weights {
                    Weights::Init => *v,
                    Weights::Spread => *v * (1.0 + rng.uniform(0.5)),
                },
            };
        }
    }
    params
}

/// Random inputs of `n` samples for every input of `graph`, in `[−1.5, 1.5)`;
/// the rows of an input named `target` are distributions.
pub fn random_inputs(graph: &Graph, n: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    graph
        .inputs()
        .iter()
        .map(|&id| {
            let dims = graph.node(id).ty.dims().to_vec();
            let per: usize = dims.iter().product();
            let mut data: Vec<f32> = (0..n * per).map(|_| rng.uniform(1.5)).collect();
            if graph.node(id).name == "target" {
                for row in data.chunks_mut(per) {
                    let w: Vec<f32> = row.iter().map(|v| v.abs() + 0.01).collect();
                    let total: f32 = w.iter().sum();
                    for (r, wv) in row.iter_mut().zip(w) {
                        *r = wv / total;
                    }
                }
            }
            let mut shape = vec![n];
            shape.extend(dims);
            Tensor { shape, data }
        })
        .collect()
}
