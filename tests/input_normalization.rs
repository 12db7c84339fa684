//! The `normalize(mean=…, std=…)` clause of an input declaration: it parses,
//! prints and parses back (text and JSON), survives the passes and the
//! training graph, and does not take the name `normalize` from bindings.
//! (Its errors are snapshot-tested with the other bad inputs in
//! `tests/errors.rs`; `onebit train` honouring it in `tests/train_cli.rs`.)

use onebit::ir::{InputNormalization, Params};
use onebit::passes::differentiate::{LossSpec, differentiate};
use onebit::passes::{PassOptions, PassSelection, optimize};
use onebit::text::{parse_str, print};

const MODEL: &str = "model m {
  input x: f32[1, 4, 4] normalize(mean=127.5, std=-127.5)
  input z: f32[16]
  normalize = dense(flatten(x), 8)
  s = sign(batchnorm(add(normalize, dense(z, 8))))
  y = batchnorm(bdense(s, 3))
  output y
}";

#[test]
fn the_clause_round_trips_through_text_and_json() {
    let g = parse_str(MODEL).unwrap();
    assert_eq!(
        g.input_normalization("x"),
        Some(InputNormalization {
            mean: 127.5,
            std: -127.5
        })
    );
    assert_eq!(g.input_normalization("z"), None);
    let text = print(&g);
    assert!(
        text.contains("input x: f32[1, 4, 4] normalize(mean=127.5, std=-127.5)\n"),
        "{text}"
    );
    assert!(text.contains("input z: f32[16]\n"), "{text}");
    parse_str(&text).unwrap().same_as(&g).unwrap();
    let json = onebit::ir::json::to_json(&g);
    onebit::ir::json::from_json(&json)
        .unwrap()
        .same_as(&g)
        .unwrap();
    // The clause is part of the model: a graph without it is another model.
    let mut other = g.clone();
    other.set_input_normalization("x", None);
    assert!(other.same_as(&g).is_err());
}

#[test]
fn the_passes_and_the_training_graph_keep_the_clause() {
    let g = parse_str(MODEL).unwrap();
    let mut folded = g.clone();
    let mut params = Params::init(&g, 1);
    optimize(
        &mut folded,
        &mut params,
        &PassSelection::default_pipeline(),
        &PassOptions::default(),
        |_, _| {},
    )
    .unwrap();
    assert!(print(&folded).contains("threshold"), "the passes ran");
    assert_eq!(folded.input_normalization("x"), g.input_normalization("x"));
    let train = differentiate(&g, &LossSpec::default()).unwrap();
    assert_eq!(
        train.graph.input_normalization("x"),
        g.input_normalization("x")
    );
    let text = print(&train.graph);
    parse_str(&text).unwrap().same_as(&train.graph).unwrap();
}
