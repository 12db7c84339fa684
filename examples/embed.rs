//! Embedding onebit: compile a model from a string and run it.
//!
//! `cargo run --release --example embed`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = r#"
        model tiny {
          input x: f32[1, 8, 8]
          c = batchnorm(conv2d(x, 32, kernel=3, pad=1))
          b = sign(batchnorm(bconv2d(sign(c), 64, kernel=3, pad=1, pad_value=1)))
          y = bdense(flatten(maxpool(b, 2)), 10)
          output y
        }
    "#;
    let graph = onebit::parse(source)?;
    let weights = onebit::ir::Params::init(&graph, 42);
    let model = onebit::compile(source, &weights, &onebit::Options::default())?;
    let batch = 4;
    let x: Vec<f32> = (0..batch * 64)
        .map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let y = model.run(&x, batch)?;
    for (n, row) in y.chunks(10).enumerate() {
        println!("sample {n}: {row:?}");
    }
    println!(
        "compiled in {:.1} ms, {} steps",
        model.compile_time().as_secs_f64() * 1e3,
        model.layers().len()
    );
    Ok(())
}
