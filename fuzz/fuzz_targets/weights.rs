//! Safetensors bytes loaded against the example models: parameters that
//! match, or an error naming the problems; never a panic. What loads must
//! pass the parameter validation and run on the interpreter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onebit::ir::{Graph, Tensor, interp};

const MODELS: [&str; 2] = [
    include_str!("../../examples/tiny_search.bnn"),
    include_str!("../../examples/mlp_digits.bnn"),
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
