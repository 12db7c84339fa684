//! Thread safety: one `CompiledModel` run from several threads at once gives
//! identical results, with and without its own worker threads.

use std::sync::Arc;

use onebit::ir::Params;
use onebit::{CompiledModel, Options};

#[test]
fn one_model_many_threads() {
    let src = std::fs::read_to_string(format!(
        "{}/examples/digits_cnn.bnn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let graph = onebit::parse(&src).unwrap();
    let params = Params::init(&graph, 4);
    for threads in [1, 2] {
        let model = Arc::new(
            CompiledModel::compile(
                onebit::verify(&graph).unwrap(),
                &params,
                &Options {
                    threads,
                    ..Options::default()
                },
            )
            .unwrap(),
        );
        let x: Vec<f32> = (0..5 * 64).map(|i| ((i * 37) % 19) as f32 - 9.0).collect();
        let expected = model.run(&x, 5).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (m, x) = (Arc::clone(&model), x.clone());
                std::thread::spawn(move || {
                    (0..50).map(|_| m.run(&x, 5).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for y in h.join().unwrap() {
                assert_eq!(y, expected);
            }
        }
        // Batch 1 splits layers between the model's threads.
        let one = model.run(&x[..64], 1).unwrap();
        assert_eq!(one, expected[..10]);
    }
}

#[test]
fn zero_allocation_run_into() {
    let src = "model m { input a: f32[8]  input b: f32[8]  s = add(a, b)  t = bdense(sign(s), 4)  output t  output s }";
    let graph = onebit::parse(src).unwrap();
    let params = Params::init(&graph, 1);
    let model = onebit::compile(src, &params, &Options::default()).unwrap();
    let a = [1.0f32; 16];
    let b = [-2.0f32; 16];
    let (mut t, mut s) = ([0.0f32; 8], [0.0f32; 16]);
    let mut scratch = model.scratch();
    model
        .run_into(&[&a, &b], &mut [&mut t, &mut s], 2, &mut scratch)
        .unwrap();
    assert_eq!(s, [-1.0; 16]);
    let err = model
        .run_into(&[&a], &mut [&mut t, &mut s], 2, &mut scratch)
        .unwrap_err();
    assert!(err.to_string().contains("has 2 inputs, found 1"), "{err}");
}

#[test]
fn compiled_model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CompiledModel>();
}
