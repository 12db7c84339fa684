//! Shared by `tests/passes_equivalence.rs` and `tests/passes_snapshots.rs`:
//! the model files the pass tests run on, and parameters that stress the
//! folds.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use onebit::ir::{DType, Graph, Op, Params, Tensor};
use onebit::util::rng::Rng;

/// `examples/*.bnn` and `tests/in/*.bnn`, sorted.
pub fn model_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [root.join("examples"), root.join("tests/in")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "bnn") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 10, "model files missing: {files:?}");
    files
}

/// Parses a model file.
pub fn parse(path: &Path) -> Graph {
    let bytes = std::fs::read(path).unwrap();
    onebit::text::parse(&path.display().to_string(), &bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parameters that exercise every case of the folds, deterministically from
/// `seed`: `Params::init`, then for every batchnorm γ of both signs with
/// about one channel in eight exactly 0 (and one in sixteen −0), σ² tiny
/// (`1e-6`) in one channel in eight, |β| large (±50) in one in eight;
/// biases, PReLU slopes and `choose` logits random. A batchnorm whose name
/// contains `pos` gets γ >= 0 in every channel (tests/in/maxpool_gamma.bnn).
///
/// With `Gamma::PositiveUnlessNeg`, as for the snapshots, γ is negative only
/// in batchnorms whose name contains `neg`: the structure the passes produce
/// depends on γ's signs (`binary_maxpool`), and trained models mostly have
/// γ > 0, so the examples show the common case and `tests/in` the others.
pub fn stress_params(graph: &Graph, seed: u64, gamma: Gamma) -> Params {
    let mut params = Params::init(graph, seed);
    let mut rng = Rng::new(seed ^ 0x9a55);
    let order = graph.topo_order().unwrap();
    for id in order {
        let node = graph.node(id);
        let name = node.name.clone();
        let mut fill = |suffix: &str, f: &mut dyn FnMut(&mut Rng) -> f32| {
            if let Some(t) = params.tensors.get_mut(&format!("{name}.{suffix}")) {
                for x in &mut t.data {
                    *x = f(&mut rng);
                }
            }
        };
        // Learned scales of every sign, zero included (a constant channel).
        fill("scale", &mut |r| match r.below(8) {
            0 => 0.0,
            1 => -(0.2 + r.next_f32()),
            _ => 0.05 + r.next_f32(),
        });
        // PCNN's projections, of both signs and away from zero, so that
        // `fold_projection` moves signs and magnitudes.
        fill("projection", &mut |r| {
            let m = 0.5 + r.next_f32();
            if r.below(5) == 0 { -m } else { m }
        });
        match &node.op {
            Op::BatchNorm(_) => {
                let positive = name.contains("pos")
                    || (gamma == Gamma::PositiveUnlessNeg && !name.contains("neg"));
                fill("weight", &mut |r| match r.below(16) {
                    0 | 1 => 0.0,
                    2 => -0.0,
                    _ => {
                        let m = 0.5 + r.next_f32();
                        if positive || r.below(2) == 0 { m } else { -m }
                    }
                });
                fill("bias", &mut |r| match r.below(8) {
                    0 => r.uniform(50.0),
                    _ => r.uniform(0.5),
                });
                fill("running_mean", &mut |r| r.uniform(0.5));
                fill("running_var", &mut |r| match r.below(8) {
                    0 => 1e-6,
                    _ => 0.1 + 1.9 * r.next_f32(),
                });
            }
            Op::Choose => fill("alpha", &mut |r| r.normal()),
            Op::PRelu => fill("weight", &mut |r| r.uniform(0.5)),
            Op::Conv2d(_) | Op::Dense(_) => fill("bias", &mut |r| r.uniform(0.5)),
            Op::Affine => {
                fill("multiplier", &mut |r| r.uniform(2.0));
                fill("bias", &mut |r| r.uniform(0.5));
            }
            Op::Threshold => {
                fill("threshold", &mut |r| r.uniform(1.0));
                fill("direction", &mut |r| {
                    if r.below(2) == 0 { 1.0 } else { -1.0 }
                });
            }
            _ => {}
        }
    }
    params
}

/// The signs of batchnorm γ in [`stress_params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gamma {
    /// Both signs in every batchnorm (except names containing `pos`).
    Mixed,
    /// Positive except in batchnorms whose name contains `neg`.
    PositiveUnlessNeg,
}

/// Random inputs uniform in `[−1, 1)`, batch `n`, about one element in 16
/// `±0`.
pub fn random_inputs(graph: &Graph, n: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    graph
        .inputs()
        .iter()
        .map(|&id| {
            let ty = &graph.node(id).ty;
            assert_eq!(ty.dtype, DType::F32);
            let mut shape = vec![n];
            shape.extend_from_slice(ty.dims());
            let len = shape.iter().product();
            let data = (0..len)
                .map(|_| {
                    let x = rng.uniform(1.0);
                    if rng.below(16) == 0 { 0.0 * x } else { x }
                })
                .collect();
            Tensor { shape, data }
        })
        .collect()
}
