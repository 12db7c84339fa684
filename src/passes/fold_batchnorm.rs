//! `fold_batchnorm`: fold batchnorm into the real layer before it; turn the
//! remaining batchnorms into `affine`.
//!
//! **Pattern 1.** `y = batchnorm(z)`, `z = conv2d(x, ...)` or `dense(x, ...)`,
//! `y` the only use of `z` (not a model output either). A layer with
//! `weights=binary` is left alone when a later pass folds `y` exactly (it
//! feeds a sign: the weights stay one bit each, and the batchnorm and sign
//! become a `threshold`); otherwise its weights fold as the real weights
//! `α·sign(W)` they stand for and the layer becomes a real one.
//!
//! **Rewrite 1.** With `a_o = γ_o / s_o`, `s_o = √(σ²_o + ε)` (the f32 value
//! the interpreter divides by), the layer gets weights `W'[o, …] = a_o·W[o, …]`
//! and bias `b'_o = a_o·(b_o − μ_o) + β_o` (`b_o = 0` without a bias), so
//! `bias=true`. It keeps its name (unless `y` is a model output: then it
//! takes `y`'s, see [`patch`](super::patch)); the users of `y` read it; `y`
//! and its parameters go away.
//!
//! **Soundness 1.** Per output channel, `γ·(Σ W·x + b − μ)/s + β =
//! Σ (a·W)·x + a·(b − μ) + β` in real arithmetic. The new parameters are
//! computed in f64 from the f32 values and rounded once; the f32 evaluation
//! then differs from the old one by rounding only, of the order of
//! `2⁻²⁴·(Σ|a·W·x| + |a·(b − μ)| + |β|)`: the magnitude of the terms, not of
//! the result, which may cancel. This is the one kind of change the default
//! pipeline makes to f32 values.
//!
//! **Pattern 2.** Any other `batchnorm`, except those a later pass folds
//! better: after a binary layer whose only use it is (`fold_scale_and_bn`
//! folds it into the layer's epilogue), or used by a `sign`, or by a
//! `maxpool` used only by a `sign`/`threshold` (`binary_maxpool` and
//! `fold_scale_and_bn` make those exact thresholds).
//!
//! **Rewrite 2.** `affine` with `multiplier = a`, `bias = β − a·μ` (same name).
//!
//! **Soundness 2.** The same formula, rounded differently (as above).
//!
//! **Does not fire** when a parameter is not finite or `σ² + ε = 0` (a
//! division by zero the interpreter performs and a fold cannot reproduce),
//! or when the folded values overflow; the reason is recorded.

use super::patch::{Patch, sole_user};
use super::{Changed, PassCx, PassError};
use crate::ir::graph::{Graph, NodeId};
use crate::ir::interp::batchnorm_std;
use crate::ir::ops::{BinaryOutput, Op, Scale, WeightKind};

/// The per-channel affine form `(a, c)` of a batchnorm, `y = a·x + c`, in
/// f64; `None` (with the reason) if it is not finite.
pub fn batchnorm_affine(
    cx: &PassCx,
    name: &str,
    eps: f32,
    channels: usize,
) -> Result<Result<Vec<(f64, f64)>, String>, PassError> {
    let gamma = cx.param(&format!("{name}.weight"), channels)?;
    let beta = cx.param(&format!("{name}.bias"), channels)?;
    let mean = cx.param(&format!("{name}.running_mean"), channels)?;
    let var = cx.param(&format!("{name}.running_var"), channels)?;
    let mut out = Vec::with_capacity(channels);
    for c in 0..channels {
        let s = batchnorm_std(var[c], eps);
        if !(s > 0.0 && s.is_finite()) {
            return Ok(Err(format!(
                "channel {c} has σ² + ε = {} (the batchnorm divides by its square root)",
                var[c] + eps
            )));
        }
        let a = f64::from(gamma[c]) / f64::from(s);
        let k = f64::from(beta[c]) - a * f64::from(mean[c]);
        if !(a.is_finite() && k.is_finite() && gamma[c].is_finite()) {
            return Ok(Err(format!("channel {c} has non-finite parameters")));
        }
        out.push((a, k));
    }
    Ok(Ok(out))
}

/// Whether a later pass folds the batchnorm `bn` better than an `affine`.
fn left_for_later(graph: &Graph, bn: NodeId) -> bool {
    let x = graph.operands(bn)[0];
    let after_binary = match &graph.node(x).op {
        Op::BConv2d(a) => a.output != BinaryOutput::Threshold,
        Op::BDense(a) => a.output != BinaryOutput::Threshold,
        _ => false,
    };
    if after_binary && sole_user(graph, x) == Some(bn) {
        return true;
    }
    graph.users(bn).into_iter().any(|u| match graph.node(u).op {
        Op::Sign(_) => true,
        Op::MaxPool(_) => sole_user(graph, u)
            .is_some_and(|v| matches!(graph.node(v).op, Op::Sign(_) | Op::Threshold)),
        _ => false,
    })
}

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut patch = Patch::new();
    let mut params: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for bn in graph.node_ids() {
        let Op::BatchNorm(attrs) = graph.node(bn).op else {
            continue;
        };
        let bn_name = graph.node(bn).name.clone();
        let channels = graph.node(bn).ty.dims()[0];
        let x = graph.operands(bn)[0];
        let x_name = graph.node(x).name.clone();
        // A projected layer's weights mean `sign(P∘W)`, which only
        // `fold_projection` turns into plain weights.
        let layer = match &graph.node(x).op {
            Op::Conv2d(a) if !a.projection => {
                Some((a.bias, a.geometry.out_channels, a.weights, a.scale))
            }
            Op::Dense(a) if !a.projection => Some((a.bias, a.out_features, a.weights, a.scale)),
            _ => None,
        };
        let folded = match batchnorm_affine(cx, &bn_name, attrs.eps, channels)? {
            Ok(f) => f,
            Err(why) => {
                cx.note(&bn_name, format!("batchnorm not folded: {why}"));
                continue;
            }
        };
        if let Some((has_bias, out, kind, scale)) = layer {
            // Binary weights stay binary where a later pass folds the
            // batchnorm and its sign into a threshold instead.
            let keep_binary = kind == WeightKind::Binary && left_for_later(graph, bn);
            if sole_user(graph, x) == Some(bn) && !keep_binary {
                // Pattern 1: fold into the layer.
                let w_name = format!("{x_name}.weight");
                let w = cx.params.tensors.get(&w_name).cloned().ok_or_else(|| {
                    PassError::MissingParam {
                        pass: cx.pass,
                        name: w_name.clone(),
                    }
                })?;
                // Binary weights fold as the real weights `α·sign(W)` they
                // stand for; the layer becomes a real one.
                let alpha = crate::ir::interp::scale_factors(scale, &w.data, out, || {
                    cx.param(&format!("{x_name}.scale"), out)
                })?;
                let effective =
                    crate::ir::interp::layer_weights(kind, alpha.as_deref(), &w.data, out);
                let per_row = w.data.len() / out.max(1);
                let bias = if has_bias {
                    cx.param(&format!("{x_name}.bias"), out)?.to_vec()
                } else {
                    vec![0.0; out]
                };
                let new_w: Vec<f32> = effective
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (folded[i / per_row].0 * f64::from(v)) as f32)
                    .collect();
                let new_b: Vec<f32> = (0..out)
                    .map(|o| {
                        let (a, _) = folded[o];
                        let (_, k) = folded[o];
                        // a·(b − μ) + β = a·b + (β − a·μ).
                        (a * f64::from(bias[o]) + k) as f32
                    })
                    .collect();
                if !new_w.iter().chain(&new_b).all(|v| v.is_finite()) {
                    cx.note(
                        &bn_name,
                        format!(
                            "batchnorm not folded into `{x_name}`: the folded weights overflow"
                        ),
                    );
                    continue;
                }
                params.push((w_name, w.shape.clone(), new_w));
                params.push((format!("{x_name}.bias"), vec![out], new_b));
                let mut op = graph.node(x).op.clone();
                match &mut op {
                    Op::Conv2d(a) => {
                        (a.bias, a.weights, a.scale) = (true, WeightKind::Real, Scale::None)
                    }
                    Op::Dense(a) => {
                        (a.bias, a.weights, a.scale) = (true, WeightKind::Real, Scale::None)
                    }
                    _ => unreachable!("matched above"),
                }
                patch.set_op(x, op);
                patch.fuse_chain(x, &[bn]);
                cx.fused(&x_name, format!("batchnorm `{bn_name}`"), &bn_name);
                continue;
            }
            cx.note(
                &bn_name,
                format!("batchnorm not folded into `{x_name}`: its value has other uses"),
            );
        }
        if left_for_later(graph, bn) {
            continue;
        }
        // Pattern 2: a lone batchnorm becomes an affine.
        let m: Vec<f32> = folded.iter().map(|&(a, _)| a as f32).collect();
        let b: Vec<f32> = folded.iter().map(|&(_, k)| k as f32).collect();
        if !m.iter().chain(&b).all(|v| v.is_finite()) {
            cx.note(
                &bn_name,
                "batchnorm not made affine: the values overflow".into(),
            );
            continue;
        }
        params.push((format!("{bn_name}.multiplier"), vec![channels], m));
        params.push((format!("{bn_name}.bias"), vec![channels], b));
        patch.set_op(bn, Op::Affine);
        let why = match layer {
            Some(_) => format!("`{x_name}` has other uses"),
            None => format!(
                "it follows `{}` `{x_name}`, not conv2d/dense",
                graph.node(x).op.name()
            ),
        };
        cx.note(&bn_name, format!("batchnorm kept as `affine`: {why}"));
    }
    if patch.is_empty() {
        return Ok(Changed::No);
    }
    for (name, shape, data) in params {
        cx.set_param(name, shape, data);
    }
    cx.apply(patch, graph)?;
    Ok(Changed::Yes)
}
