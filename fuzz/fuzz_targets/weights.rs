//! Safetensors bytes loaded against two small models: parameters that
//! match, or an error naming the problems; never a panic. What loads must
//! pass the parameter validation and run on the interpreter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onebit::ir::{Graph, Tensor, interp};

/// Small models, so that a whole weight file is a small fuzz input: every
/// parameter kind (convolution, batchnorm, latent binary weights with a
/// scale, thresholds and directions) appears once.
const MODELS: [&str; 2] = [
    "model w { input x: f32[2, 4, 4]  c = conv2d(x, 2, kernel=3)  s = sign(batchnorm(c))  y = bdense(flatten(s), 3, scale=channel)  output y }",
    "model t { input x: f32[8]  y = bdense(sign(x), 4, output=threshold)  t = threshold(x)  p = prelu(x)  output y, t, p }",
];

fn models() -> &'static [Graph] {
    static GRAPHS: std::sync::OnceLock<Vec<Graph>> = std::sync::OnceLock::new();
    GRAPHS.get_or_init(|| {
        MODELS
            .iter()
            .map(|s| onebit::parse(s).expect("the example parses"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // Every model sees every input, so the seeds can be plain weight files.
    for graph in models() {
        let Ok((params, _notes)) = onebit::io::weights::load_bytes(graph, data) else {
            continue;
        };
        let inputs: Vec<Tensor> = graph
            .inputs()
            .iter()
            .map(|&i| {
                let dims = graph.node(i).ty.dims().to_vec();
                let mut shape = vec![1];
                shape.extend(&dims);
                Tensor {
                    shape,
                    data: vec![0.5; dims.iter().product()],
                }
            })
            .collect();
        // Loaded weights pass the engines' validation.
        interp::run(graph, &params, &inputs).expect("loaded weights run");
    }
});
