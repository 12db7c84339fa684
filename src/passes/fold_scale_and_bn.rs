//! `fold_scale_and_bn`: fold the XNOR-Net scale, batchnorm and sign after a
//! binary layer into the layer, as integer thresholds on its dot products or
//! as an affine epilogue.
//!
//! **Pattern 1 (bits out).** A `bconv2d`/`bdense` with `output=dot` (any
//! `scale`) or `output=affine`, then a chain of per-channel ops, each the
//! only use of the value before it: any number of `batchnorm`/`affine`, then
//! `sign` or `threshold`.
//!
//! **Rewrite 1.** The layer gets `output=threshold`, `scale=none`, and per
//! output channel `o` a threshold `τ_o` and direction `d_o = ±1` such that
//! `d_o·dot >= τ_o` holds exactly when the chain gives `+1`; the chain's
//! nodes go away (their users read the layer, which now writes bits). The
//! layer keeps its name, or takes the chain's if its last node is a model
//! output (see [`patch`](super::patch)); `τ = ±∞` marks a constant channel.
//!
//! **Soundness 1.** The chain is a function of the exact integer dot product
//! `dot_o ∈ [−K, K]` (`K` = `(C/G)·kh·kw` or the input features). Evaluated
//! in f32 exactly as the interpreter does (`dot·α`, `batchnorm_value`,
//! `affine_value`, then `x >= 0` or `threshold_value`), it is a monotone step
//! function of `dot_o` ([`step`](super::step) proves it), so a bisection over
//! the integers finds the exact switching point: bit-exact for every
//! parameter value, including `γ < 0` (direction −1), `γ = 0` and `α = 0`
//! (constant channels), ties (`sign(0) = +1`: a dot product where the
//! batchnorm is exactly 0 maps to +1), tiny `σ²` and large `|β|`. Chains that
//! may produce NaN are checked on every dot product instead.
//!
//! **Zero padding is no obstacle here**, unlike in Larq Compute Engine. LCE
//! computes `K − 2·popcount(a XOR w)` over all `K` taps, so with
//! `pad_value=0` its accumulator is not the dot product at the border and a
//! single threshold per channel would be wrong there (LCE refuses to write
//! bits with zero padding). In onebit the threshold is defined on `dot_o`
//! itself, the exact sum in which padded taps contribute 0 (ops.md); an
//! engine that accumulates with +1 padding must apply the zero-padding
//! correction *before* comparing. The switching point depends only on the
//! value of `dot_o`, not on how many taps were real, and `|dot_o| <= K` holds
//! at the border too, so the same `τ_o` is exact everywhere.
//!
//! **Pattern 2 (f32 out).** The same layer and chain, without the final
//! `sign`/`threshold`, when there is something to fold: a scale
//! (`scale=channel`, or `scale=learned` whose `NODE.scale` the epilogue
//! absorbs), or at least one `batchnorm`/`affine`.
//!
//! **Rewrite 2.** `output=affine`, `scale=none`, with
//! `multiplier_o·dot + bias_o` the composed linear map, computed in f64 from
//! the f32 parameters (the interpreter's `√(σ²+ε)`) and rounded once.
//!
//! **Soundness 2.** The same real-number formula, rounded differently: with
//! only a scale, `α·dot + 0` is exactly the old `dot·α`; with a batchnorm the
//! difference is of the order of `2⁻²⁴·(|γ/s|·(|α·dot| + |μ|) + |β|)`.
//!
//! **Pattern 3.** `sign(batchnorm(x))` for any other `x`.
//!
//! **Rewrite 3.** `threshold(x)` (the sign's name), with the exact per-channel
//! switching point of `batchnorm_value` over f32 inputs (a bisection over the
//! ordered f32 bit patterns). The batchnorm goes away if the sign was its
//! only use.
//!
//! **Soundness 3.** As for pattern 1, for every finite and NaN input; for
//! `x = ±∞` in a channel with `γ = 0` the batchnorm gives NaN (`0·∞`), so
//! `sign` gives −1 and the threshold the channel's constant. Activations are
//! finite in every model onebit runs from finite inputs.
//!
//! **Does not fire** (and records why) when the chain stops early: a value
//! with several uses (e.g. a batchnorm that also feeds an `add`: then only
//! pattern 2 applies, and the `sign` stays), a model output, or an op that is
//! not per-channel monotone (`add`, `flatten`, `maxpool`: see
//! `binary_maxpool`). Also when a chain produces NaN in a way that is not a
//! step, or `K > 2^24`.

use std::collections::HashSet;

use super::patch::{Patch, sole_user};
use super::step::{Chain, Decision, Stage, integer_step, real_step};
use super::{Changed, PassCx, PassError};
use crate::ir::graph::{Graph, NodeId};
use crate::ir::interp::channel_scales;
use crate::ir::ops::{BinaryOutput, Op, Scale};
use crate::ir::params::node_params;

/// The per-channel stages of one node of a chain.
enum Link {
    /// A per-channel f32 map, one [`Stage`] per channel.
    Map(Vec<Stage>),
    /// The final comparison, one per channel.
    Decide(Vec<Decision>),
}

/// The per-channel stages of node `id` (batchnorm, affine, sign, threshold).
fn link(
    graph: &Graph,
    cx: &PassCx,
    id: NodeId,
    channels: usize,
) -> Result<Option<Link>, PassError> {
    let name = &graph.node(id).name;
    let p = |s: &str| cx.param(&format!("{name}.{s}"), channels);
    Ok(Some(match graph.node(id).op {
        Op::BatchNorm(a) => {
            let (g, b, m, v) = (
                p("weight")?,
                p("bias")?,
                p("running_mean")?,
                p("running_var")?,
            );
            Link::Map(
                (0..channels)
                    .map(|c| Stage::BatchNorm {
                        gamma: g[c],
                        beta: b[c],
                        mean: m[c],
                        var: v[c],
                        eps: a.eps,
                    })
                    .collect(),
            )
        }
        Op::Affine => {
            let (m, b) = (p("multiplier")?, p("bias")?);
            Link::Map(
                (0..channels)
                    .map(|c| Stage::Affine {
                        multiplier: m[c],
                        bias: b[c],
                    })
                    .collect(),
            )
        }
        // `x + b` is `1·x + b` exactly.
        Op::Shift => {
            let b = p("bias")?;
            Link::Map(
                (0..channels)
                    .map(|c| Stage::Affine {
                        multiplier: 1.0,
                        bias: b[c],
                    })
                    .collect(),
            )
        }
        Op::Sign(_) => Link::Decide(vec![Decision::Sign; channels]),
        Op::Threshold => {
            let (t, d) = (p("threshold")?, p("direction")?);
            Link::Decide(
                (0..channels)
                    .map(|c| Decision::Threshold {
                        threshold: t[c],
                        direction: d[c],
                    })
                    .collect(),
            )
        }
        _ => return Ok(None),
    }))
}

/// Why a chain walk stopped at `cur`.
fn stop_reason(graph: &Graph, cur: NodeId) -> String {
    let name = &graph.node(cur).name;
    if graph.outputs().contains(&cur) {
        return format!("`{name}` is a model output");
    }
    match graph.users(cur)[..] {
        [] => format!("`{name}` is unused"),
        [u] if graph.operands(u).iter().filter(|&&o| o == cur).count() == 1 => format!(
            "`{name}` is followed by {} `{}`, not sign",
            graph.node(u).op.name(),
            graph.node(u).name
        ),
        ref users => format!(
            "`{name}` has {} uses ({})",
            users.len(),
            users
                .iter()
                .map(|&u| format!("{} `{}`", graph.node(u).op.name(), graph.node(u).name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut patch = Patch::new();
    let mut params: Vec<(String, Vec<f32>)> = Vec::new();
    let mut claimed: HashSet<NodeId> = HashSet::new();
    for layer in graph.node_ids() {
        let node = graph.node(layer);
        let (out, scale, output) = match &node.op {
            Op::BConv2d(a) => (a.geometry.out_channels, a.scale, a.output),
            Op::BDense(a) => (a.out_features, a.scale, a.output),
            _ => continue,
        };
        if output == BinaryOutput::Threshold {
            continue;
        }
        if node.op.projection() {
            cx.note(
                &node.name,
                "not folded: `projection=true` (run `fold_projection` first)".into(),
            );
            continue;
        }
        let name = node.name.clone();
        let in_dims = graph.operand_types(layer)[0].dims().to_vec();
        let k = match &node.op {
            Op::BConv2d(a) => {
                (in_dims[0] / a.geometry.groups) * a.geometry.kernel[0] * a.geometry.kernel[1]
            }
            _ => in_dims[0],
        } as u64;
        // The layer's own f32 value of the dot product, per channel.
        let own: Vec<Option<Stage>> = match (output, scale) {
            (BinaryOutput::Affine, _) => {
                let m = cx.param(&format!("{name}.multiplier"), out)?;
                let b = cx.param(&format!("{name}.bias"), out)?;
                (0..out)
                    .map(|c| {
                        Some(Stage::Affine {
                            multiplier: m[c],
                            bias: b[c],
                        })
                    })
                    .collect()
            }
            (_, Scale::Channel) => {
                let spec = node_params(graph, layer)
                    .into_iter()
                    .find(|s| s.name.ends_with(".weight") && !s.packed);
                let len = spec.map_or(0, |s| s.elements());
                let w = cx.param(&format!("{name}.weight"), len)?;
                channel_scales(w, out)
                    .into_iter()
                    .map(|a| Some(Stage::Scale(a)))
                    .collect()
            }
            (_, Scale::Learned) => cx
                .param(&format!("{name}.scale"), out)?
                .iter()
                .map(|&a| Some(Stage::Scale(a)))
                .collect(),
            (_, Scale::None) => vec![None; out],
        };

        // Walk the chain of per-channel ops after the layer.
        let mut chain: Vec<NodeId> = Vec::new();
        let mut maps: Vec<Vec<Stage>> = Vec::new();
        let mut decide: Option<Vec<Decision>> = None;
        let mut cur = layer;
        while let Some(u) = sole_user(graph, cur) {
            match link(graph, cx, u, out)? {
                Some(Link::Map(m)) => maps.push(m),
                Some(Link::Decide(d)) => {
                    chain.push(u);
                    decide = Some(d);
                    break;
                }
                None => break,
            }
            chain.push(u);
            cur = u;
        }
        let describe = |graph: &Graph, id: NodeId| {
            format!("{} `{}`", graph.node(id).op.name(), graph.node(id).name)
        };
        let per_channel = |c: usize, d: Option<Decision>| Chain {
            stages: own[c]
                .into_iter()
                .chain(maps.iter().map(|m| m[c]))
                .collect(),
            decision: d.unwrap_or(Decision::Sign),
        };

        // Pattern 1: the chain ends in a decision.
        let mut why_not = None;
        if let Some(decisions) = &decide {
            let mut steps = Vec::with_capacity(out);
            for (c, &d) in decisions.iter().enumerate() {
                match integer_step(&per_channel(c, Some(d)), k) {
                    Ok(s) => steps.push(s),
                    Err(e) => {
                        why_not = Some(format!("channel {c}: {e}"));
                        break;
                    }
                }
            }
            if why_not.is_none() {
                params.push((
                    format!("{name}.threshold"),
                    steps.iter().map(|s| s.threshold).collect(),
                ));
                params.push((
                    format!("{name}.direction"),
                    steps.iter().map(|s| s.direction).collect(),
                ));
                set_output(&mut patch, graph, layer, BinaryOutput::Threshold);
                patch.fuse_chain(layer, &chain);
                if scale.is_scaled() && output == BinaryOutput::Dot {
                    cx.fused(&name, "scale α".into(), "");
                }
                for &n in &chain {
                    let what = describe(graph, n);
                    cx.fused(&name, what, &graph.node(n).name);
                }
                cx.clear_note(&name);
                claimed.extend(chain.iter().copied());
                continue;
            }
            // Fall back to folding the maps only.
            chain.pop();
        } else {
            why_not = Some(stop_reason(graph, cur));
        }

        // Pattern 2: fold the maps into an affine epilogue.
        let has_scale = scale.is_scaled() && output == BinaryOutput::Dot;
        if maps.is_empty() && !has_scale {
            if let Some(why) = why_not
                && output == BinaryOutput::Dot
            {
                cx.note(&name, format!("writes f32 dot products, not bits: {why}"));
            }
            continue;
        }
        let mut mult = Vec::with_capacity(out);
        let mut bias = Vec::with_capacity(out);
        for c in 0..out {
            let (mut a, mut b) = (1.0f64, 0.0f64);
            for s in per_channel(c, None).stages {
                let (sa, sb) = s.linear();
                (a, b) = (sa * a, sa * b + sb);
            }
            mult.push(a as f32);
            bias.push(b as f32);
        }
        if !mult.iter().chain(&bias).all(|v| v.is_finite()) {
            cx.note(
                &name,
                "epilogue not folded: the folded multiplier or bias is not finite".into(),
            );
            continue;
        }
        params.push((format!("{name}.multiplier"), mult));
        params.push((format!("{name}.bias"), bias));
        set_output(&mut patch, graph, layer, BinaryOutput::Affine);
        patch.fuse_chain(layer, &chain);
        if has_scale {
            cx.fused(&name, "scale α".into(), "");
        }
        for &n in &chain {
            let what = describe(graph, n);
            cx.fused(&name, what, &graph.node(n).name);
        }
        claimed.extend(chain.iter().copied());
        if let Some(why) = why_not {
            cx.note(&name, format!("output=affine, not threshold: {why}"));
        }
    }

    // Pattern 3: sign(batchnorm(x)) for any other x.
    for sign in graph.node_ids() {
        if !matches!(graph.node(sign).op, Op::Sign(_)) || claimed.contains(&sign) {
            continue;
        }
        let bn = graph.operands(sign)[0];
        let Op::BatchNorm(_) = graph.node(bn).op else {
            continue;
        };
        if claimed.contains(&bn) {
            continue;
        }
        let channels = graph.node(bn).ty.dims()[0];
        let sign_name = graph.node(sign).name.clone();
        let bn_name = graph.node(bn).name.clone();
        let Some(Link::Map(stages)) = link(graph, cx, bn, channels)? else {
            continue;
        };
        let mut steps = Vec::with_capacity(channels);
        for (c, &s) in stages.iter().enumerate() {
            let chain = Chain {
                stages: vec![s],
                decision: Decision::Sign,
            };
            match real_step(&chain) {
                Ok(step) => steps.push(step),
                Err(e) => {
                    cx.note(
                        &sign_name,
                        format!("sign not made a threshold: channel {c}: {e}"),
                    );
                    break;
                }
            }
        }
        if steps.len() != channels {
            continue;
        }
        let x = graph.operands(bn)[0];
        patch.set_op(sign, Op::Threshold);
        patch.set_operands(sign, vec![x]);
        params.push((
            format!("{sign_name}.threshold"),
            steps.iter().map(|s| s.threshold).collect(),
        ));
        params.push((
            format!("{sign_name}.direction"),
            steps.iter().map(|s| s.direction).collect(),
        ));
        if sole_user(graph, bn) == Some(sign) {
            patch.remove(bn);
            cx.fused(&sign_name, format!("batchnorm `{bn_name}`"), &bn_name);
        } else {
            cx.note(
                &bn_name,
                format!(
                    "batchnorm kept for its other uses (`{sign_name}` compares its input directly)"
                ),
            );
        }
    }

    if patch.is_empty() {
        return Ok(Changed::No);
    }
    for (name, data) in params {
        cx.set_param(name, vec![data.len()], data);
    }
    cx.apply(patch, graph)?;
    Ok(Changed::Yes)
}

/// Sets the layer's output form, with `scale=none` (folded into the epilogue).
fn set_output(patch: &mut Patch, graph: &Graph, layer: NodeId, output: BinaryOutput) {
    let mut op = graph.node(layer).op.clone();
    match &mut op {
        Op::BConv2d(a) => {
            a.output = output;
            a.scale = Scale::None;
        }
        Op::BDense(a) => {
            a.output = output;
            a.scale = Scale::None;
        }
        _ => unreachable!("a binary layer"),
    }
    patch.set_op(layer, op);
}
