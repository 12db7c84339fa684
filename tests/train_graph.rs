//! The training-step graph: `differentiate` on every example gives a graph
//! that verifies, prints, parses back to the same graph, and is snapshotted.

use onebit::passes::differentiate::{LossSpec, differentiate};
use onebit::text::{parse_str, print};

const EXAMPLES: [&str; 7] = [
    "digits_cnn",
    "digits_pcnn",
    "mlp_digits",
    "tiny_search",
    "bireal_block",
    "fashion_mlp",
    "fashion_cnn",
];

fn source(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/examples/{name}.bnn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example exists")
}

#[test]
fn training_graphs_print_parse_and_verify() {
    for name in EXAMPLES {
        let model = parse_str(&source(name)).unwrap();
        let train = differentiate(&model, &LossSpec::default()).unwrap();
        let text = print(&train.graph);
        let reparsed = parse_str(&text).unwrap_or_else(|e| panic!("{name}: {e:?}\n{text}"));
        reparsed
            .same_as(&train.graph)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        insta::assert_snapshot!(format!("training_graph__{name}"), text);
    }
}

/// The extra loss terms: one `quantization_loss` per layer with binary
/// weights (a `projection_loss` per projected layer), one
/// `distribution_loss` per sign input, summed into `loss`; the regularised
/// weights' (and projections') gradients summed from their two parts.
#[test]
fn training_graphs_with_loss_terms_print_parse_and_verify() {
    let spec = LossSpec {
        quantization: 0.001,
        distribution: 0.5,
        ..LossSpec::default()
    };
    let projected = LossSpec {
        projection: 0.001,
        ..spec.clone()
    };
    for (name, spec) in [
        ("mlp_digits", &spec),
        ("fashion_mlp", &spec),
        ("digits_pcnn", &projected),
    ] {
        let model = parse_str(&source(name)).unwrap();
        let train = differentiate(&model, spec).unwrap();
        assert!(!train.terms.is_empty(), "{name}: the loss has terms");
        let text = print(&train.graph);
        let reparsed = parse_str(&text).unwrap_or_else(|e| panic!("{name}: {e:?}\n{text}"));
        reparsed
            .same_as(&train.graph)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        insta::assert_snapshot!(format!("training_graph_with_terms__{name}"), text);
    }
}
