//! Shared helpers of the JIT tests (included with `mod common`).
#![allow(dead_code)]

pub mod bound;

use onebit::codegen::target::{KernelPath, Kernels};
use onebit::ir::{Graph, Params, Tensor, interp};
use onebit::{CompiledModel, Options, Popcount};

/// The kernel paths this machine runs (every differential test runs on
/// each, forced, whatever `ONEBIT_KERNELS` says).
pub fn paths() -> Vec<KernelPath> {
    KernelPath::supported()
}

/// `options` on `path`.
pub fn on(path: KernelPath, options: &Options) -> Options {
    Options {
        kernels: Kernels::Force(path),
        ..options.clone()
    }
}

/// The (path, popcount) combinations worth testing: both popcounts on the
/// portable path; the wide paths do not use Cranelift's popcount.
pub fn variants() -> Vec<(KernelPath, Popcount)> {
    let mut v = Vec::new();
    for path in paths() {
        if path == KernelPath::Portable {
            v.push((path, Popcount::Auto));
            v.push((path, Popcount::Scalar));
        } else {
            v.push((path, Popcount::Auto));
        }
    }
    v
}

/// Deterministic pseudo-random values in [-2, 2), with exact zeros sprinkled.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = onebit::util::rng::Rng::new(seed);
    (0..n)
        .map(|i| if i % 17 == 3 { 0.0 } else { rng.uniform(2.0) })
        .collect()
}

/// The test inputs of `graph` for `batch` samples.
pub fn inputs(graph: &Graph, batch: usize, seed: u64) -> Vec<Tensor> {
    graph
        .inputs()
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let dims = graph.node(i).ty.dims().to_vec();
            let n = batch * dims.iter().product::<usize>();
            let mut shape = vec![batch];
            shape.extend(dims);
            Tensor {
                shape,
                data: data(n, seed + k as u64),
            }
        })
        .collect()
}

/// The JIT's outputs, run on scratch space filled with all-ones bytes (NaN
/// as f32, −1 as bits), so a step that read memory no step wrote would show.
pub fn jit(graph: &Graph, params: &Params, inputs: &[Tensor], options: &Options) -> Vec<Vec<f32>> {
    let model = CompiledModel::compile(onebit::ir::verify(graph).unwrap(), params, options)
        .expect("compile");
    let refs: Vec<&[f32]> = inputs.iter().map(|t| t.data.as_slice()).collect();
    let batch = inputs[0].shape[0];
    let mut outs: Vec<Vec<f32>> = (0..graph.outputs().len())
        .map(|k| {
            let per_sample: usize = graph.node(graph.outputs()[k]).ty.dims().iter().product();
            vec![0.0; per_sample * batch]
        })
        .collect();
    let mut out_refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    let mut scratch = model.scratch();
    scratch.fill(0xff);
    model
        .run_into(&refs, &mut out_refs, batch, &mut scratch)
        .expect("run");
    outs
}

/// Runs `graph` on the interpreter and the JIT; returns (jit, interp) outputs.
pub fn both(
    graph: &Graph,
    params: &Params,
    batch: usize,
    seed: u64,
    options: &Options,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let inputs = inputs(graph, batch, seed);
    let expected = interp::run(graph, params, &inputs).expect("interpreter");
    let got = jit(graph, params, &inputs, options);
    (got, expected.into_iter().map(|t| t.data).collect())
}

/// The JIT on `path` against the interpreter: where the real layers are
/// exact (`portable`, `avx2`) with [`assert_match`] (`exact` as given); on
/// the FMA path (`avx512`) layer by layer
/// ([`bound::check_cut`]): each real-valued layer within the bound of
/// `ir-spec/codegen.md` from the operands it was computed from, everything
/// else as on `portable`. Returns what the avx512 check saw.
#[allow(clippy::too_many_arguments)]
pub fn check(
    what: &str,
    graph: &Graph,
    params: &Params,
    batch: usize,
    seed: u64,
    options: &Options,
    path: KernelPath,
    exact: bool,
) -> bound::Seen {
    let options = on(path, options);
    let inputs = inputs(graph, batch, seed);
    if !path.fma() {
        let got = jit(graph, params, &inputs, &options);
        let expected = interp::run(graph, params, &inputs).expect("interpreter");
        let expected: Vec<Vec<f32>> = expected.into_iter().map(|t| t.data).collect();
        assert_match(what, &got, &expected, exact);
        bound::Seen::default()
    } else {
        bound::check_cut(what, graph, params, &inputs, &options, exact).1
    }
}

/// [`check`] with the default options, exactly, on every path this
/// machine runs; `src` names the model in failures.
pub fn check_every_path(src: &str, graph: &Graph, params: &Params, batch: usize, seed: u64) {
    for path in paths() {
        let what = format!("{path:?}: {src}");
        check(
            &what,
            graph,
            params,
            batch,
            seed,
            &Options::default(),
            path,
            true,
        );
    }
}

/// Asserts equality: exact when `exact`, else within 1e-5 relative (with an
/// absolute floor scaled by the output's magnitude, for cancelling sums).
pub fn assert_match(what: &str, got: &[Vec<f32>], expected: &[Vec<f32>], exact: bool) {
    assert_eq!(got.len(), expected.len(), "{what}: output count");
    for (k, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g.len(), e.len(), "{what}: output {k} length");
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(e).enumerate() {
            let ok = if exact {
                a == b || (a.is_nan() && b.is_nan())
            } else {
                (a - b).abs() <= 1e-5 * b.abs().max(1e-2 * scale).max(1e-6)
                    || (a.is_nan() && b.is_nan())
            };
            assert!(ok, "{what}: output {k}[{i}]: jit {a} vs interp {b}");
        }
    }
}

/// Parameters whose batchnorm statistics, thresholds, directions and other
/// per-channel vectors have spread, so signs land on both sides.
pub fn spread_params(graph: &Graph, seed: u64) -> Params {
    let mut p = Params::init(graph, seed);
    for (name, t) in p.tensors.iter_mut() {
        let mut r = onebit::util::rng::Rng::new(seed ^ name.len() as u64);
        if name.ends_with("running_mean") || name.ends_with(".threshold") {
            t.data.iter_mut().for_each(|v| *v = r.uniform(1.0));
        } else if name.ends_with("running_var") {
            t.data.iter_mut().for_each(|v| *v = 0.5 + r.uniform(0.4));
        } else if name.ends_with(".direction") {
            t.data
                .iter_mut()
                .for_each(|v| *v = if r.below(2) == 0 { 1.0 } else { -1.0 });
        } else if t.shape.len() == 1 {
            t.data.iter_mut().for_each(|v| *v = r.uniform(1.0));
        }
    }
    p
}
