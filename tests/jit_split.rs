//! Layers of few pixels and many channels (ResNet's last stage, dense
//! layers at batch 1) split their output channels between work units on
//! the wide paths (`kernels::wide::channel_parts`), so several threads share
//! them. Every path, on 1, 2 and 3 threads (uneven unit ranges), against
//! the interpreter; the unit counts show the split happened.

#[path = "jit_common/mod.rs"]
mod common;

use onebit::Options;
use onebit::codegen::target::KernelPath;

/// Checks `src` on every path and thread count; returns the units of its
/// one convolution or dense step on each path.
fn check(src: &str) -> Vec<(KernelPath, usize)> {
    let graph = onebit::parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    let p = common::spread_params(&graph, 7);
    let mut units = Vec::new();
    for path in common::paths() {
        for threads in [1, 2, 3] {
            let options = Options {
                threads,
                ..Options::default()
            };
            let what = format!("{path:?} threads={threads}: {src}");
            common::check(&what, &graph, &p, 1, 11, &options, path, true);
        }
        let model = onebit::CompiledModel::compile(
            onebit::verify(&graph).unwrap(),
            &p,
            &common::on(path, &Options::default()),
        )
        .unwrap();
        let layers = model.layers();
        let conv = layers.iter().find(|l| l.kind.contains("conv"));
        units.push((path, conv.unwrap_or_else(|| panic!("{layers:?}")).units));
    }
    units
}

#[test]
fn binary_layers_of_few_pixels_split_their_channels() {
    // 5 × 5 pixels in tiles of 6: 5 units; 256 channels = 16 blocks in
    // m-tiles of 4, so 4 equal parts on avx512.
    for (form, residual) in [
        ("y = sign(batchnorm(CONV))", false),
        ("y = batchnorm(CONV)", false),
        ("y = CONV", false),
        ("y = add(x, CONV)", true),
    ] {
        let conv = "bconv2d(sign(x), 256, kernel=3, pad=1, pad_value=1, scale=channel)";
        let src = format!(
            "model s {{ input x: f32[256, 5, 5]\n {}\n output y }}",
            form.replace("CONV", conv)
        );
        for (path, units) in check(&src) {
            let kind_units = match path {
                KernelPath::Avx512 => 5 * 4,
                // avx2: tiles of 5 pixels, one block each, so 5 units and
                // 16 blocks in 4 parts; portable: whole tiles only.
                KernelPath::Avx2 => 5 * 4,
                KernelPath::Portable => units,
            };
            assert_eq!(units, kind_units, "{path:?} {src} (residual {residual})");
        }
    }
    // Zero padding needs per-pixel corrections over all channels: no split.
    let src = "model s { input x: f32[256, 5, 5]\n y = bconv2d(sign(x), 256, kernel=3, pad=1, pad_value=0)\n output y }";
    for (path, units) in check(src) {
        if path != KernelPath::Portable {
            assert_eq!(units, 5, "{path:?}");
        }
    }
}

#[test]
fn real_layers_of_few_rows_split_their_channels() {
    // 3 rows of 7 (tiles of 3 × 7): 200 channels = 13 blocks (the last
    // masked), parts of 3 blocks: 5 parts, the last one block of 8
    // channels.
    for after in [
        "y = CONV",
        "y = batchnorm(CONV)",
        "y = prelu(batchnorm(CONV))",
    ] {
        let conv = "conv2d(x, 200, kernel=1, bias=true)";
        let src = format!(
            "model s {{ input x: f32[24, 3, 7]\n {}\n output y }}",
            after.replace("CONV", conv)
        );
        for (path, units) in check(&src) {
            let expected = if path.fma() { 3 * 5 } else { units };
            assert_eq!(units, expected, "{path:?} {src}");
        }
    }
    // A dense layer at batch 1: one pixel, 1000 channels = 63 blocks in
    // m-tiles of 8, so 8 parts, the last 7 blocks with a masked one.
    let src = "model d { input x: f32[512]\n y = dense(x, 1000, bias=true)\n output y }";
    for (path, units) in check(src) {
        let expected = if path.fma() { 8 } else { units };
        assert_eq!(units, expected, "{path:?}");
    }
}
