//! Unit tests of the interpreter, op by op.

use std::collections::BTreeMap;

use super::*;
use crate::ir::ops::{
    BDense, BatchNorm, BinaryOutput, Dense, HardTanh, PadValue, Pool, Scale, WeightForm,
};
use crate::ir::types::TensorType;

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data: data.to_vec(),
    }
}

fn params(list: &[(&str, &[usize], &[f32])]) -> Params {
    let mut tensors = BTreeMap::new();
    for &(name, shape, data) in list {
        tensors.insert(name.to_string(), t(shape, data));
    }
    Params {
        tensors,
        packed: Default::default(),
    }
}

fn geom(out: usize, k: Pair, s: Pair, p: Pair, d: Pair, groups: usize) -> ConvGeometry {
    ConvGeometry {
        out_channels: out,
        kernel: k,
        stride: s,
        pad: p,
        dilation: d,
        groups,
    }
}

type Pair = [usize; 2];

/// A graph `x -> op -> output` over an f32 input of per-sample `dims`.
fn single(op: Op, dims: &[usize]) -> Graph {
    let mut g = Graph::new("m");
    let x = g.add_input("x", TensorType::f32(dims.to_vec())).unwrap();
    let y = g.add_node("y", op, &[x]).unwrap();
    g.add_output(y);
    g
}

/// A graph `x -> sign -> op -> output`.
fn binary(op: Op, dims: &[usize]) -> Graph {
    let mut g = Graph::new("m");
    let x = g.add_input("x", TensorType::f32(dims.to_vec())).unwrap();
    let s = g.add_node("s", Op::sign(), &[x]).unwrap();
    let y = g.add_node("y", op, &[s]).unwrap();
    g.add_output(y);
    g
}

fn run1(g: &Graph, p: &Params, x: Tensor) -> Tensor {
    run(g, p, &[x]).unwrap().remove(0)
}

fn assert_close(found: &[f32], expected: &[f32]) {
    assert_eq!(found.len(), expected.len(), "{found:?} vs {expected:?}");
    for (f, e) in found.iter().zip(expected) {
        assert!(
            (f - e).abs() <= 1e-6 * e.abs().max(1.0),
            "{found:?} vs {expected:?}"
        );
    }
}

#[test]
fn conv2d_3x3_with_padding_and_bias() {
    let op = Op::Conv2d(Conv2d::new(
        geom(1, [3, 3], [1, 1], [1, 1], [1, 1], 1),
        true,
    ));
    let g = single(op, &[1, 3, 3]);
    // W[0,0] = 1, W[1,1] = −1, W[2,2] = 2, so
    // y[i,j] = 0.5 + x[i−1,j−1] − x[i,j] + 2·x[i+1,j+1] (0 outside).
    #[rustfmt::skip]
    let w = [1.0, 0.0, 0.0,
             0.0, -1.0, 0.0,
             0.0, 0.0, 2.0];
    let p = params(&[("y.weight", &[1, 1, 3, 3], &w), ("y.bias", &[1], &[0.5])]);
    let x = t(
        &[1, 1, 3, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let y = run1(&g, &p, x);
    assert_eq!(y.shape, [1, 1, 3, 3]);
    #[rustfmt::skip]
    let expected = [9.5, 10.5, -2.5,
                    12.5, 14.5, -3.5,
                    -6.5, -3.5, -3.5];
    assert_eq!(y.data, expected);
}

#[test]
fn conv2d_groups_read_their_own_channels() {
    // O = 4, C = 4, G = 2: outputs 0, 1 read channels 0, 1; outputs 2, 3
    // read channels 2, 3.
    let op = Op::Conv2d(Conv2d::new(
        geom(4, [1, 1], [1, 1], [0, 0], [1, 1], 2),
        false,
    ));
    let g = single(op, &[4, 1, 1]);
    let w = [1.0, 10.0, 100.0, 1000.0, 1.0, 10.0, 100.0, 1000.0];
    let p = params(&[("y.weight", &[4, 2, 1, 1], &w)]);
    let y = run1(&g, &p, t(&[1, 4, 1, 1], &[1.0, 2.0, 3.0, 4.0]));
    assert_eq!(y.data, [21.0, 2100.0, 43.0, 4300.0]);
}

/// The 5x5 input `x[r, c] = 5r + c`.
fn ramp() -> Tensor {
    t(
        &[1, 1, 5, 5],
        &(0..25).map(|v| v as f32).collect::<Vec<_>>(),
    )
}

fn ones_conv(kernel: Pair, stride: Pair, pad: Pair, dilation: Pair) -> (Graph, Params) {
    let op = Op::Conv2d(Conv2d::new(
        geom(1, kernel, stride, pad, dilation, 1),
        false,
    ));
    let w = vec![1.0; kernel[0] * kernel[1]];
    let p = params(&[("y.weight", &[1, 1, kernel[0], kernel[1]], &w)]);
    (single(op, &[1, 5, 5]), p)
}

#[test]
fn conv2d_stride_2() {
    // (5 − 1 − 1)/2 + 1 = 2; y[i,j] = Σ x[2i..2i+2, 2j..2j+2].
    let (g, p) = ones_conv([2, 2], [2, 2], [0, 0], [1, 1]);
    let y = run1(&g, &p, ramp());
    assert_eq!(y.shape, [1, 1, 2, 2]);
    assert_eq!(y.data, [12.0, 20.0, 52.0, 60.0]);
}

#[test]
fn conv2d_dilation_2() {
    // (5 − 2·1 − 1)/1 + 1 = 3; y[i,j] = x[i,j] + x[i,j+2] + x[i+2,j] + x[i+2,j+2]
    // = 20i + 4j + 24.
    let (g, p) = ones_conv([2, 2], [1, 1], [0, 0], [2, 2]);
    let y = run1(&g, &p, ramp());
    assert_eq!(y.shape, [1, 1, 3, 3]);
    assert_eq!(
        y.data,
        [24.0, 28.0, 32.0, 44.0, 48.0, 52.0, 64.0, 68.0, 72.0]
    );
}

#[test]
fn conv2d_mixed_geometry_per_axis() {
    // Stride (2, 1), dilation (1, 2), pad (0, 1): 2 x 5 outputs,
    // y[i,j] = Σ_{u,v<2} x[2i + u, j + 2v − 1].
    let (g, p) = ones_conv([2, 2], [2, 1], [0, 1], [1, 2]);
    let y = run1(&g, &p, ramp());
    assert_eq!(y.shape, [1, 1, 2, 5]);
    assert_eq!(
        y.data,
        [7.0, 14.0, 18.0, 22.0, 11.0, 27.0, 54.0, 58.0, 62.0, 31.0]
    );
}

/// The convolution formula transcribed literally, one output at a time,
/// with the padding decided per tap instead of through `xpad`.
fn direct_conv(x: &Tensor, g: &ConvGeometry, w: &[f32], pad_value: f32) -> Vec<f32> {
    let [n, c, h, wd] = dims4(x);
    let (o_count, cg) = (g.out_channels, c / g.groups);
    let oh = (h + 2 * g.pad[0] - g.dilation[0] * (g.kernel[0] - 1) - 1) / g.stride[0] + 1;
    let ow = (wd + 2 * g.pad[1] - g.dilation[1] * (g.kernel[1] - 1) - 1) / g.stride[1] + 1;
    let mut y = Vec::new();
    for s in 0..n {
        for o in 0..o_count {
            let c0 = o / (o_count / g.groups) * cg;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = 0.0f32;
                    for cl in 0..cg {
                        for u in 0..g.kernel[0] {
                            for v in 0..g.kernel[1] {
                                let r = (i * g.stride[0] + u * g.dilation[0]) as isize
                                    - g.pad[0] as isize;
                                let q = (j * g.stride[1] + v * g.dilation[1]) as isize
                                    - g.pad[1] as isize;
                                let inside =
                                    (0..h as isize).contains(&r) && (0..wd as isize).contains(&q);
                                let xv = if inside {
                                    let (r, q) = (r as usize, q as usize);
                                    x.data[((s * c + c0 + cl) * h + r) * wd + q]
                                } else {
                                    pad_value
                                };
                                let k = ((o * cg + cl) * g.kernel[0] + u) * g.kernel[1] + v;
                                acc += w[k] * xv;
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
    }
    y
}

#[test]
fn convolve_matches_the_direct_formula() {
    let mut rng = crate::util::rng::Rng::new(42);
    let mut pick = |lo: usize, hi: usize| lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize;
    let mut tried = 0;
    while tried < 200 {
        let groups = pick(1, 3);
        let (c, o) = (groups * pick(1, 2), groups * pick(1, 2));
        let (h, wd) = (pick(1, 7), pick(1, 7));
        let g = geom(
            o,
            [pick(1, 3), pick(1, 3)],
            [pick(1, 3), pick(1, 3)],
            [pick(0, 2), pick(0, 2)],
            [pick(1, 2), pick(1, 2)],
            groups,
        );
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        if span(g.kernel[0], g.dilation[0]) > h + 2 * g.pad[0]
            || span(g.kernel[1], g.dilation[1]) > wd + 2 * g.pad[1]
        {
            continue;
        }
        tried += 1;
        let n = pick(1, 2);
        let x: Vec<f32> = (0..n * c * h * wd).map(|k| (k % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..o * (c / groups) * g.kernel[0] * g.kernel[1])
            .map(|k| (k % 5) as f32 - 2.0)
            .collect();
        let x = t(&[n, c, h, wd], &x);
        for pad_value in [0.0, 1.0] {
            let y = convolve(&x, &g, &w, pad_value);
            // Small integers: both orders of summation are exact.
            assert_eq!(y.data, direct_conv(&x, &g, &w, pad_value), "{g:?}");
        }
    }
}

#[test]
fn bconv2d_pad_value_adds_the_padded_weight_sum() {
    let make = |pad_value| {
        let op = Op::BConv2d(BConv2d {
            geometry: geom(1, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            pad_value,
            scale: Scale::None,
            output: BinaryOutput::Dot,
            weights: WeightForm::Latent,
            projection: false,
        });
        binary(op, &[1, 2, 2])
    };
    // Signs [[1, −1, −1], [−1, 1, −1], [1, −1, 1]] (0.0 gives +1).
    #[rustfmt::skip]
    let w = [0.5, -0.2, -0.1,
             -0.3, 0.7, -0.4,
             0.0, -0.6, 0.9];
    let p = params(&[("y.weight", &[1, 1, 3, 3], &w)]);
    // sign gives [[1, 1], [1, −1]].
    let x = t(&[1, 1, 2, 2], &[0.3, 0.0, 2.0, -0.5]);
    let zero = run1(&make(PadValue::Zero), &p, x.clone());
    let one = run1(&make(PadValue::One), &p, x);
    assert_eq!(zero.data, [-2.0, 2.0, 0.0, -2.0]);
    // Sums of the signs at the padded positions of each output:
    // (0,0): row 0 + column 0 below it = −1 + 0; (0,1): −1 + 0;
    // (1,0): row 2 + column 0 above it = 1 + 0; (1,1): 1 − 2.
    assert_eq!(one.data, [-3.0, 1.0, 1.0, -3.0]);
}

#[test]
fn bconv2d_channel_scale() {
    let op = Op::BConv2d(BConv2d {
        geometry: geom(2, [1, 1], [1, 1], [0, 0], [1, 1], 1),
        pad_value: PadValue::Zero,
        scale: Scale::Channel,
        output: BinaryOutput::Dot,
        weights: WeightForm::Latent,
        projection: false,
    });
    let g = binary(op, &[3, 1, 1]);
    // Signs [1, −1, 1] with α = 1.5/3 = 0.5; [−1, −1, 1] with α = 3.5/3.
    let w = [0.5, -0.25, 0.75, -2.0, -1.0, 0.5];
    let p = params(&[("y.weight", &[2, 3, 1, 1], &w)]);
    let x = t(&[2, 3, 1, 1], &[1.0, -1.0, -1.0, -1.0, 1.0, 1.0]);
    let y = run1(&g, &p, x);
    assert_eq!(y.shape, [2, 2, 1, 1]);
    let a1 = 3.5 / 3.0;
    assert_close(&y.data, &[0.5, -a1, -0.5, a1]);
}

#[test]
fn bdense_with_and_without_scale() {
    let make = |scale| {
        binary(
            Op::BDense(BDense {
                out_features: 2,
                scale,
                output: BinaryOutput::Dot,
                weights: WeightForm::Latent,
                projection: false,
            }),
            &[4],
        )
    };
    // Signs [1, −1, 1, −1] (α = 5/4) and [−1, 1, 1, 1] (α = 1/4).
    let w = [1.0, -3.0, 0.5, -0.5, -0.25, 0.25, 0.25, 0.25];
    let p = params(&[("y.weight", &[2, 4], &w)]);
    // sign gives [1, −1, 1, −1].
    let x = t(&[1, 4], &[2.0, -1.0, 0.0, -7.0]);
    assert_eq!(run1(&make(Scale::None), &p, x.clone()).data, [4.0, -2.0]);
    assert_eq!(run1(&make(Scale::Channel), &p, x).data, [5.0, -0.5]);
}

#[test]
fn dense_with_bias() {
    let op = Op::Dense(Dense::new(2, true));
    let g = single(op, &[3]);
    let p = params(&[
        ("y.weight", &[2, 3], &[1.0, 2.0, 3.0, -1.0, 0.0, 0.5]),
        ("y.bias", &[2], &[10.0, -10.0]),
    ]);
    let y = run1(&g, &p, t(&[2, 3], &[1.0, 1.0, 1.0, 2.0, 0.0, -2.0]));
    assert_eq!(y.shape, [2, 2]);
    // [1 + 2 + 3 + 10, −1 + 0.5 − 10, 2 − 6 + 10, −2 − 1 − 10]
    assert_eq!(y.data, [16.0, -10.5, 6.0, -13.0]);
}

#[test]
fn sign_of_zero_is_plus_one() {
    let g = single(Op::sign(), &[5]);
    let x = t(&[1, 5], &[0.0, -0.0, -1e-30, 3.0, f32::NAN]);
    assert_eq!(
        run1(&g, &Params::default(), x).data,
        [1.0, 1.0, -1.0, 1.0, -1.0]
    );
}

fn bn_params() -> Params {
    // With eps = 1: sqrt(σ² + eps) = [2, 0.5], so channel 0 maps x to
    // 2·(x − 3)/2 + 1 = x − 2 and channel 1 to 0.5·(x + 2)/0.5 − 1 = x + 1.
    params(&[
        ("y.weight", &[2], &[2.0, 0.5]),
        ("y.bias", &[2], &[1.0, -1.0]),
        ("y.running_mean", &[2], &[3.0, -2.0]),
        ("y.running_var", &[2], &[3.0, -0.75]),
    ])
}

#[test]
fn batchnorm_rank_1_and_rank_3() {
    let op = Op::BatchNorm(BatchNorm::new(1.0));
    let g = single(op.clone(), &[2]);
    let y = run1(&g, &bn_params(), t(&[1, 2], &[5.0, 0.0]));
    assert_eq!(y.data, [3.0, 1.0]);

    let g = single(op, &[2, 1, 2]);
    let y = run1(&g, &bn_params(), t(&[1, 2, 1, 2], &[5.0, 3.0, 0.0, -2.0]));
    assert_eq!(y.data, [3.0, 1.0, 1.0, -1.0]);
}

#[test]
fn maxpool_padding_never_wins() {
    let op = Op::MaxPool(Pool {
        kernel: [2, 2],
        stride: [1, 1],
        pad: [1, 1],
    });
    let g = single(op, &[1, 2, 2]);
    let x = t(&[1, 1, 2, 2], &[-1.0, -2.0, -3.0, -4.0]);
    let y = run1(&g, &Params::default(), x);
    assert_eq!(y.shape, [1, 1, 3, 3]);
    assert_eq!(
        y.data,
        [-1.0, -1.0, -2.0, -1.0, -1.0, -2.0, -3.0, -3.0, -4.0]
    );
}

#[test]
fn avgpool_counts_padding() {
    let op = Op::AvgPool(Pool {
        kernel: [2, 2],
        stride: [1, 1],
        pad: [1, 1],
    });
    let g = single(op, &[1, 2, 2]);
    let x = t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let y = run1(&g, &Params::default(), x);
    assert_eq!(y.data, [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]);
}

#[test]
fn pooling_with_stride() {
    let op = Op::MaxPool(Pool {
        kernel: [2, 2],
        stride: [2, 2],
        pad: [0, 0],
    });
    let y = run1(&single(op, &[1, 5, 5]), &Params::default(), ramp());
    assert_eq!(y.data, [6.0, 8.0, 16.0, 18.0]);
}

#[test]
fn choose_weights_by_softmax() {
    let mut g = Graph::new("m");
    let a = g.add_input("a", TensorType::f32(vec![2])).unwrap();
    let b = g.add_input("b", TensorType::f32(vec![2])).unwrap();
    let y = g.add_node("y", Op::Choose, &[a, b]).unwrap();
    g.add_output(y);
    // softmax([0, ln 3]) = [1/4, 3/4].
    let p = params(&[("y.alpha", &[2], &[0.0, 3f32.ln()])]);
    let out = run(&g, &p, &[t(&[1, 2], &[4.0, 8.0]), t(&[1, 2], &[8.0, 4.0])]).unwrap();
    assert_close(&out[0].data, &[7.0, 5.0]);
}

#[test]
fn concat_joins_channels_per_sample() {
    let mut g = Graph::new("m");
    let a = g.add_input("a", TensorType::f32(vec![1, 1, 2])).unwrap();
    let b = g.add_input("b", TensorType::f32(vec![2, 1, 2])).unwrap();
    let y = g.add_node("y", Op::Concat, &[a, b]).unwrap();
    g.add_output(y);
    let a = t(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = t(&[2, 2, 1, 2], &[5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let out = run(&g, &Params::default(), &[a, b]).unwrap();
    assert_eq!(out[0].shape, [2, 3, 1, 2]);
    assert_eq!(
        out[0].data,
        [
            1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0
        ]
    );
}

#[test]
fn elementwise_and_shape_ops() {
    // x: [2, 1, 2]; prelu, relu, hardtanh, add, zero, identity, global_avgpool, flatten.
    let mut g = Graph::new("m");
    let x = g.add_input("x", TensorType::f32(vec![2, 1, 2])).unwrap();
    let pr = g.add_node("pr", Op::PRelu, &[x]).unwrap();
    let re = g.add_node("re", Op::Relu, &[x]).unwrap();
    let ht = g
        .add_node(
            "ht",
            Op::HardTanh(HardTanh {
                min: -1.0,
                max: 0.5,
            }),
            &[x],
        )
        .unwrap();
    let z = g.add_node("z", Op::Zero, &[x]).unwrap();
    let id = g.add_node("id", Op::Identity, &[x]).unwrap();
    let sum = g.add_node("sum", Op::Add, &[pr, re, ht, z, id]).unwrap();
    let gap = g.add_node("gap", Op::GlobalAvgPool, &[sum]).unwrap();
    let fl = g.add_node("fl", Op::Flatten, &[x]).unwrap();
    g.add_output(gap);
    g.add_output(fl);
    g.add_output(re);
    let p = params(&[("pr.weight", &[2], &[0.5, 0.25])]);
    let x = t(&[1, 2, 1, 2], &[-2.0, 3.0, -4.0, 0.25]);
    let out = run(&g, &p, std::slice::from_ref(&x)).unwrap();
    // pr = [−1, 3, −1, 0.25], re = [0, 3, 0, 0.25], ht = [−1, 0.5, −1, 0.25],
    // sum = pr + re + ht + 0 + x = [−4, 9.5, −6, 1].
    assert_eq!(out[0].shape, [1, 2]);
    assert_eq!(out[0].data, [2.75, -2.5]);
    assert_eq!(out[1].shape, [1, 4]);
    assert_eq!(out[1].data, x.data);
    assert_eq!(out[2].data, [0.0, 3.0, 0.0, 0.25]);

    let all = run_all(&g, &p, &[x]).unwrap();
    assert_eq!(all.len(), g.len());
    assert_eq!(all[&sum].data, [-4.0, 9.5, -6.0, 1.0]);
    assert_eq!(all[&z].data, [0.0; 4]);
}

#[test]
fn samples_are_independent() {
    // The same sample run alone and at position 1 of a batch of 3.
    let op = Op::Conv2d(Conv2d::new(
        geom(2, [3, 3], [2, 1], [1, 1], [1, 1], 1),
        true,
    ));
    let g = single(op, &[1, 5, 5]);
    let p = Params::init(&g, 7);
    let one = run1(&g, &p, ramp());
    let mut batch = vec![9.0; 25];
    batch.extend(&ramp().data);
    batch.extend(vec![-3.0; 25]);
    let three = run1(&g, &p, t(&[3, 1, 5, 5], &batch));
    let k = one.data.len();
    assert_eq!(three.data[k..2 * k], one.data[..]);
}

#[test]
fn batch_size_zero_gives_empty_outputs() {
    let op = Op::Conv2d(Conv2d::new(
        geom(2, [3, 3], [1, 1], [1, 1], [1, 1], 1),
        true,
    ));
    let g = single(op, &[1, 3, 3]);
    let p = Params::init(&g, 1);
    let y = run1(&g, &p, t(&[0, 1, 3, 3], &[]));
    assert_eq!(y.shape, [0, 2, 3, 3]);
    assert!(y.data.is_empty());
}

#[test]
fn error_wrong_input_shape() {
    let g = single(Op::Relu, &[1, 8, 8]);
    let err = run(&g, &Params::default(), &[t(&[5, 64], &[0.0; 320])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `x` must be [N, 1, 8, 8], found [5, 64]"
    );
}

#[test]
fn error_input_count_batch_and_data() {
    let mut g = Graph::new("m");
    let a = g.add_input("a", TensorType::f32(vec![2])).unwrap();
    let b = g.add_input("b", TensorType::f32(vec![2])).unwrap();
    let y = g.add_node("y", Op::Add, &[a, b]).unwrap();
    g.add_output(y);
    let p = Params::default();
    let err = run(&g, &p, &[t(&[1, 2], &[0.0; 2])]).unwrap_err();
    assert_eq!(err.to_string(), "model `m` takes 2 inputs, found 1");
    let err = run(&g, &p, &[t(&[1, 2], &[0.0; 2]), t(&[3, 2], &[0.0; 6])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `b` has batch size 3, but input `a` has 1; all inputs share one batch size"
    );
    let err = run(&g, &p, &[t(&[1, 2], &[0.0; 2]), t(&[1, 2], &[0.0; 3])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `b` is shaped [1, 2] but holds 3 values"
    );
    let huge = t(&[usize::MAX, 2], &[]);
    assert!(matches!(
        run(&g, &p, &[huge.clone(), huge]),
        Err(InterpError::InputData { .. })
    ));
}

#[test]
fn error_missing_and_misshapen_params() {
    let op = Op::Conv2d(Conv2d::new(
        geom(2, [3, 3], [1, 1], [1, 1], [1, 1], 1),
        true,
    ));
    let g = single(op, &[1, 3, 3]);
    let x = t(&[1, 1, 3, 3], &[0.0; 9]);
    let p = params(&[("y.weight", &[2, 1, 3, 3], &[0.0; 18])]);
    let err = run(&g, &p, std::slice::from_ref(&x)).unwrap_err();
    assert_eq!(
        err,
        InterpError::MissingParam {
            name: "y.bias".into(),
            expected: vec![2],
        }
    );
    assert_eq!(
        err.to_string(),
        "missing parameter `y.bias`: expected f32[2]"
    );

    let p = params(&[
        ("y.weight", &[2, 1, 9], &[0.0; 18]),
        ("y.bias", &[2], &[0.0; 2]),
    ]);
    let err = run(&g, &p, std::slice::from_ref(&x)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `y.weight` must be [2, 1, 3, 3], found [2, 1, 9]"
    );

    let p = params(&[
        ("y.weight", &[2, 1, 3, 3], &[0.0; 17]),
        ("y.bias", &[2], &[0.0; 2]),
    ]);
    assert!(matches!(
        run(&g, &p, &[x]),
        Err(InterpError::ParamData { len: 17, .. })
    ));
}

#[test]
fn error_instead_of_panic_on_absurd_sizes() {
    // Empty samples let the input claim any batch size; dense then makes
    // 4 values per sample, which overflows.
    let op = Op::Dense(Dense::new(4, false));
    let g = single(op, &[0]);
    let p = params(&[("y.weight", &[4, 0], &[])]);
    let err = run(&g, &p, &[t(&[usize::MAX / 2, 0], &[])]).unwrap_err();
    assert!(matches!(err, InterpError::TooLarge { .. }), "{err}");

    // A 1x1 output whose padded input would have 2^64 elements.
    let big = 1 << 31;
    let op = Op::Conv2d(Conv2d::new(
        geom(1, [3, 3], [1, 1], [big, big], [big, big], 1),
        false,
    ));
    let g = single(op, &[1, 1, 1]);
    assert_eq!(g.node(g.outputs()[0]).ty.dims(), [1, 1, 1]);
    let p = params(&[("y.weight", &[1, 1, 3, 3], &[0.0; 9])]);
    let err = run(&g, &p, &[t(&[1, 1, 1, 1], &[1.0])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node `y`: the padded input of the convolution would not fit in memory"
    );
}

#[test]
fn error_cycle() {
    let mut g = Graph::new("m");
    let x = g.add_input("x", TensorType::f32(vec![2])).unwrap();
    let a = g.add_node("a", Op::Relu, &[x]).unwrap();
    let b = g.add_node("b", Op::Relu, &[a]).unwrap();
    g.add_output(b);
    // `a` now reads `b`, which reads `a`.
    g.replace_all_uses(x, b);
    let err = run(&g, &Params::default(), &[t(&[1, 2], &[0.0; 2])]).unwrap_err();
    assert!(
        matches!(&err, InterpError::Verify(e) if matches!(**e, VerifyError::Cycle(_))),
        "{err}"
    );
    assert_eq!(err.to_string(), "the graph is invalid: cycle through a, b");
}
