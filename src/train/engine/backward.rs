//! `grad` steps: one vector-Jacobian product each, dispatched on the
//! forward op and what it is differentiated with respect to.
//!
//! The rules are the interpreter's (`src/ir/interp/backward.rs`,
//! `ir-spec/training.md`); the kernels are the forward families' (GEMM for
//! dense and convolution products, plane loops for pools, per-channel passes
//! for batchnorm). `grad` of `flatten`, `identity` and `add` with respect to
//! an operand never reaches here: the plan makes them views of `dy`.

use super::EngineError;
use super::conv::Conv;
use super::elementwise as ew;
use super::exec::{
    Ctx, State, bn_norm, cache, conv_weight_shape, inner, latent_ste, pad_of, projection_ste, store,
};
use super::gemm::{dense_forward, dense_input_grad, dense_weight_grad};
use super::norm;
use super::plan::Step;
use super::pool::{self, Window};
use crate::ir::ops::{Op, ParamRole, Stats, WeightKind, Wrt};

/// Evaluates the `grad` step `step` on `x` (forward value, forward
/// operands, then `dy` unless the forward node is the loss).
pub(super) fn grad(
    cx: &Ctx,
    st: &mut State,
    step: &Step,
    x: &[&[f32]],
    out: &mut [f32],
) -> Result<(), EngineError> {
    let Op::Grad(g) = &step.op else {
        return Ok(());
    };
    let par = cx.par;
    let has_dy = !g.of.kind().is_loss();
    let nf = x.len() - 1 - usize::from(has_dy);
    let forward = &x[1..1 + nf];
    let dy = x[x.len() - 1];
    let fdims = &step.operand_dims[1..1 + nf];
    let ydims = &step.operand_dims[0];
    let d0 = fdims[0].as_slice();
    let c0 = d0.first().copied().unwrap_or(0);
    let of = step.of_name.as_str();
    // The weight gradient of a convolution or dense layer with respect to
    // the weights it computes with (`α·sign(V)` for binary weights, before
    // the STE maps it to the latent ones).
    let weight_grad = |st: &mut State, out: &mut [f32]| match &*g.of {
        Op::Conv2d(a) => Conv::new(&a.geometry, d0, ydims)
            .weight_grad(par, forward[0], dy, cx.batch, 0.0, st.scratch, out),
        Op::BConv2d(a) => Conv::new(&a.geometry, d0, ydims).weight_grad(
            par,
            forward[0],
            dy,
            cx.batch,
            pad_of(a.pad_value),
            st.scratch,
            out,
        ),
        _ => dense_weight_grad(par, dy, forward[0], cx.batch, c0, ydims[0], out),
    };
    match (&*g.of, g.wrt) {
        (Op::CrossEntropy(a), Wrt::Operand(0)) => {
            pool::cross_entropy_grad(forward[0], forward[1], c0, a.smoothing, out)
        }
        (Op::QuantizationLoss(a), Wrt::Param(ParamRole::Weight)) => {
            let shape = super::exec::quantized_shape(step, &a.of)?;
            let latent = cx.param(of, "weight", &shape)?;
            let bw = &cx.binary[cache(step)?];
            super::loss_terms::quantization_grad(
                par,
                bw.values(latent),
                &bw.scaled,
                &bw.projection,
                a.weight,
                out,
            );
        }
        (Op::QuantizationLoss(a), Wrt::Param(ParamRole::Scale)) => {
            let shape = super::exec::quantized_shape(step, &a.of)?;
            let latent = cx.param(of, "weight", &shape)?;
            let bw = &cx.binary[cache(step)?];
            let g = super::loss_terms::quantization_scale_grad(
                bw.values(latent),
                &bw.scaled,
                &bw.signs,
                shape[0],
                a.weight,
            );
            store(out, &g);
        }
        (Op::QuantizationLoss(a), Wrt::Param(ParamRole::Projection)) => {
            let shape = super::exec::quantized_shape(step, &a.of)?;
            let latent = cx.param(of, "weight", &shape)?;
            let bw = &cx.binary[cache(step)?];
            let g = super::loss_terms::quantization_projection_grad(
                latent,
                &bw.projected,
                &bw.scaled,
                shape[0],
                a.weight,
            );
            store(out, &g);
        }
        (Op::DistributionLoss(a), Wrt::Operand(0)) => {
            super::loss_terms::distribution_grad(par, forward[0], c0, inner(d0), a.weight, out);
        }
        (Op::Conv2d(a), Wrt::Operand(0)) => {
            let conv = Conv::new(&a.geometry, d0, ydims);
            let w = match a.weights {
                WeightKind::Real => cx.param(of, "weight", &conv_weight_shape(&a.geometry, c0))?,
                WeightKind::Binary => &cx.binary[cache(step)?].scaled,
            };
            conv.input_grad(par, dy, w, st.scratch, out);
        }
        (
            Op::Conv2d(_) | Op::BConv2d(_) | Op::Dense(_) | Op::BDense(_),
            Wrt::Param(ParamRole::Weight),
        ) => {
            weight_grad(st, out);
            let real = match &*g.of {
                Op::Conv2d(a) => a.weights == WeightKind::Real,
                Op::Dense(a) => a.weights == WeightKind::Real,
                _ => false,
            };
            if !real {
                binary_weight_ste(cx, step, &g.of, c0, out)?;
            }
        }
        (Op::Conv2d(_) | Op::Dense(_), Wrt::Param(ParamRole::Bias)) => {
            let o = ydims[0];
            store(out, &ew::channel_sums(dy, o, inner(ydims)));
        }
        (Op::BConv2d(a), Wrt::Operand(0)) => {
            let conv = Conv::new(&a.geometry, d0, ydims);
            let bw = &cx.binary[cache(step)?];
            conv.input_grad(par, dy, &bw.scaled, st.scratch, out);
        }
        (Op::Dense(a), Wrt::Operand(0)) => {
            let w = match a.weights {
                WeightKind::Real => cx.param(of, "weight", &[a.out_features, c0])?,
                WeightKind::Binary => &cx.binary[cache(step)?].scaled,
            };
            dense_input_grad(par, dy, w, c0, a.out_features, out);
        }
        (Op::BDense(a), Wrt::Operand(0)) => {
            let bw = &cx.binary[cache(step)?];
            dense_input_grad(par, dy, &bw.scaled, c0, a.out_features, out);
        }
        (
            Op::Conv2d(_) | Op::BConv2d(_) | Op::Dense(_) | Op::BDense(_),
            Wrt::Param(ParamRole::Projection),
        ) => {
            // The raw weight gradient again, into scratch: the weight's own
            // `grad` step consumed its copy (the STE overwrote it in place).
            let (shape, scale) = crate::ir::interp::loss_terms::binary_weight_shape(&g.of, c0)
                .ok_or_else(|| unsupported(step))?;
            let mut raw = vec![0.0; shape.iter().product()];
            weight_grad(st, &mut raw);
            let latent = cx.param(of, "weight", &shape)?;
            let bw = &cx.binary[cache(step)?];
            let alpha = scale.is_scaled().then_some(bw.alpha.as_slice());
            let sums = projection_ste(&raw, latent, &bw.projected, alpha, shape[0]);
            store(out, &sums);
        }
        (Op::Conv2d(a), Wrt::Param(ParamRole::Scale)) => {
            let conv = Conv::new(&a.geometry, d0, ydims);
            let signs = &cx.binary[cache(step)?].signs;
            let mut dot = vec![0.0; dy.len()];
            conv.forward(
                par,
                forward[0],
                signs,
                0.0,
                st.scratch,
                &mut dot,
                &|_, _| {},
            );
            store(out, &ew::channel_dots(dy, &dot, ydims[0], inner(ydims)));
        }
        (Op::BConv2d(a), Wrt::Param(ParamRole::Scale)) => {
            let conv = Conv::new(&a.geometry, d0, ydims);
            let signs = &cx.binary[cache(step)?].signs;
            let mut dot = vec![0.0; dy.len()];
            let pad = pad_of(a.pad_value);
            conv.forward(
                par,
                forward[0],
                signs,
                pad,
                st.scratch,
                &mut dot,
                &|_, _| {},
            );
            store(out, &ew::channel_dots(dy, &dot, ydims[0], inner(ydims)));
        }
        (Op::Dense(a), Wrt::Param(ParamRole::Scale)) => {
            let signs = &cx.binary[cache(step)?].signs;
            let mut dot = vec![0.0; dy.len()];
            dense_forward(par, forward[0], signs, c0, a.out_features, &mut dot);
            store(out, &ew::channel_dots(dy, &dot, a.out_features, 1));
        }
        (Op::BDense(a), Wrt::Param(ParamRole::Scale)) => {
            let signs = &cx.binary[cache(step)?].signs;
            let mut dot = vec![0.0; dy.len()];
            dense_forward(par, forward[0], signs, c0, a.out_features, &mut dot);
            store(out, &ew::channel_dots(dy, &dot, a.out_features, 1));
        }
        (Op::Sign(a), Wrt::Operand(0)) => {
            ew::sign_backward(par, a.grad, dy, forward[0], out);
        }
        (Op::BatchNorm(a), wrt) => {
            let inner = inner(d0);
            let (mean, std) = bn_norm(cx, st, step, a.stats, a.eps, c0)?;
            let dy_value = step.operands[step.operands.len() - 1];
            let b = &mut st.bn[cache(step)?];
            let fresh = matches!(&b.sums, Some((v, _, _)) if *v == dy_value);
            if !fresh {
                let (db, dg) = norm::grad_sums(par, forward[0], dy, &mean, &std, inner);
                b.sums = Some((dy_value, db, dg));
            }
            let Some((_, db, dg)) = &b.sums else {
                unreachable!("set above")
            };
            match wrt {
                Wrt::Param(ParamRole::Bias) => store(out, db),
                Wrt::Param(ParamRole::Weight) => store(out, dg),
                _ => {
                    let gamma = cx.param(of, "weight", &[c0])?;
                    let sums = (a.stats == Stats::Batch).then_some((db.as_slice(), dg.as_slice()));
                    norm::input_grad(par, forward[0], dy, gamma, &mean, &std, sums, inner, out);
                }
            }
        }
        (Op::Relu, Wrt::Operand(0)) => {
            ew::zip(
                par,
                dy,
                forward[0],
                out,
                |d, v| if v > 0.0 { d } else { 0.0 },
            )
        }
        (Op::PRelu, Wrt::Operand(0)) => {
            let slope = cx.param(of, "weight", &[c0])?;
            ew::prelu_input_grad(par, forward[0], dy, slope, inner(d0), out);
        }
        (Op::PRelu, Wrt::Param(ParamRole::Weight)) => {
            store(out, &ew::prelu_slope_grad(forward[0], dy, c0, inner(d0)));
        }
        (Op::Shift, Wrt::Operand(0)) => out.copy_from_slice(dy),
        (Op::Shift, Wrt::Param(ParamRole::Bias)) => {
            store(out, &ew::channel_sums(dy, c0, inner(d0)));
        }
        (Op::HardTanh(a), Wrt::Operand(0)) => {
            let (lo, hi) = (a.min, a.max);
            ew::zip(par, dy, forward[0], out, move |d, v| {
                if lo < v && v < hi { d } else { 0.0 }
            });
        }
        (Op::MaxPool(p), Wrt::Operand(0)) => {
            Window::new(p, d0, ydims).max_grad(par, forward[0], dy, out)
        }
        (Op::AvgPool(p), Wrt::Operand(0)) => Window::new(p, d0, ydims).avg_grad(par, dy, out),
        (Op::GlobalAvgPool, Wrt::Operand(0)) => pool::global_avg_grad(par, dy, inner(d0), out),
        (Op::Flatten | Op::Identity | Op::Add, Wrt::Operand(_)) => out.copy_from_slice(dy),
        (Op::Zero, Wrt::Operand(_)) => out.fill(0.0),
        (Op::Concat, Wrt::Operand(k)) => {
            let sizes: Vec<usize> = fdims.iter().map(|d| d.iter().product()).collect();
            ew::concat_grad(dy, &sizes, k, out);
        }
        (Op::SliceChannels(_) | Op::ShuffleChannels(_), Wrt::Operand(0)) => {
            let map = g.of.channel_sources(c0).expect("the op picks channels");
            ew::scatter_channels(dy, &map, c0, inner(d0), out);
        }
        (Op::Choose, Wrt::Operand(k)) => {
            let alpha = cx.param(of, "alpha", &[nf])?;
            let p = ew::softmax(alpha)[k];
            ew::map(par, dy, out, move |d| p * d);
        }
        (Op::Choose, Wrt::Param(_)) => {
            let alpha = cx.param(of, "alpha", &[nf])?;
            out.copy_from_slice(&ew::choose_alpha_grad(par, forward, dy, alpha));
        }
        (op, wrt) => {
            return Err(EngineError::Unsupported {
                node: step.name.clone(),
                what: format!("the gradient of `{}` with respect to {wrt:?}", op.name()),
            });
        }
    }
    Ok(())
}

/// The clipped STE ([`latent_ste`]) on the raw weight gradient in `out` of
/// `layer`, a layer with latent binary weights over `channels` inputs.
fn binary_weight_ste(
    cx: &Ctx,
    step: &Step,
    layer: &Op,
    channels: usize,
    out: &mut [f32],
) -> Result<(), EngineError> {
    let (shape, scale) = crate::ir::interp::loss_terms::binary_weight_shape(layer, channels)
        .ok_or_else(|| unsupported(step))?;
    let latent = cx.param(&step.of_name, "weight", &shape)?;
    let bw = &cx.binary[cache(step)?];
    let alpha = scale.is_scaled().then_some(bw.alpha.as_slice());
    latent_ste(out, bw.values(latent), alpha, &bw.projection, shape[0]);
    Ok(())
}

fn unsupported(step: &Step) -> EngineError {
    EngineError::Unsupported {
        node: step.name.clone(),
        what: "a binary-weight gradient of a layer without latent binary weights".into(),
    }
}
