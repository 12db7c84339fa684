//! `binary_maxpool`: binarize before max-pooling, so the pool works on bits.
//!
//! **Pattern.** `t(maxpool(x))`, the maxpool's value used only by `t`, where
//! `t` is
//! - `sign`, or
//! - `threshold` with every channel's `direction = +1`, or
//! - `sign(batchnorm(·))` (the batchnorm used only by the sign), whose exact
//!   per-channel threshold (found as in `fold_scale_and_bn`) has every
//!   `direction = +1`, i.e. every non-constant channel has `γ > 0`.
//!
//! **Rewrite.** `maxpool(t'(x))`: `t'` is `sign`, or a `threshold` (named
//! like the old `t`, with its per-channel parameters), reading `x`; the
//! maxpool (same name and attributes) reads `t'`; the users of `t` read the
//! maxpool, which now pools bits. A `sign(batchnorm(maxpool(bconv)))` thus
//! becomes `maxpool(threshold(bconv))`, and `fold_scale_and_bn` then fuses the
//! threshold into the binary layer: the layer writes bits, and the pool is an
//! AND of packed words (`ir-spec/ops.md`, maxpool on bits).
//!
//! **Soundness.** Each `t` is per channel a non-decreasing function `f` of
//! one value (`x >= 0`, `x >= τ_c`), and for non-decreasing `f`,
//! `f(max_i x_i) = max_i f(x_i)` exactly: the largest `x_i` has the largest
//! `f(x_i)`. Padding (−∞) never wins on either side. NaN agrees too: the
//! maxpool skips it, and `f(NaN) = −1` (comparisons with NaN are false),
//! which never wins a max of ±1 values unless all are −1, when the original
//! pool of an all-NaN window gave −∞ and `f(−∞) = −1` as well.
//!
//! **Does not fire** when some channel is non-increasing (`direction = −1`,
//! a batchnorm with `γ < 0`): then `f(max x) = min f(x)`, a min-pool, which
//! has no op. Nor when the maxpool's value has other uses (they need the
//! real values), nor after a `flatten` or other op between pool and sign.
//! The reason is recorded on the maxpool.

use super::patch::{Patch, sole_user};
use super::step::{Chain, Decision, Stage, real_step};
use super::{Changed, PassCx, PassError};
use crate::ir::graph::{Graph, NodeId};
use crate::ir::ops::Op;

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut patch = Patch::new();
    let mut params: Vec<(String, Vec<f32>)> = Vec::new();
    for pool in graph.node_ids() {
        if !matches!(graph.node(pool).op, Op::MaxPool(_)) {
            continue;
        }
        let pool_name = graph.node(pool).name.clone();
        let x = graph.operands(pool)[0];
        let channels = graph.node(pool).ty.dims()[0];
        let Some(user) = sole_user(graph, pool) else {
            cx.note(
                &pool_name,
                "maxpool not moved after the binarization: its value has several uses".into(),
            );
            continue;
        };
        let user_name = graph.node(user).name.clone();
        match graph.node(user).op {
            Op::Sign(attrs) => {
                // sign(maxpool(x)) → maxpool(sign(x)).
                swap(&mut patch, graph, pool, user, x, Op::Sign(attrs));
                cx.clear_note(&pool_name);
            }
            Op::Threshold => {
                let d = cx.param(&format!("{user_name}.direction"), channels)?;
                if let Some(c) = d.iter().position(|&v| v != 1.0) {
                    cx.note(
                        &pool_name,
                        format!(
                            "maxpool stays real: channel {c} of `{user_name}` is decreasing (direction −1), so the max would become a min"
                        ),
                    );
                    continue;
                }
                swap(&mut patch, graph, pool, user, x, Op::Threshold);
                cx.clear_note(&pool_name);
            }
            Op::BatchNorm(bn) => {
                let Some(sign) =
                    sole_user(graph, user).filter(|&s| matches!(graph.node(s).op, Op::Sign(_)))
                else {
                    cx.note(
                        &pool_name,
                        format!(
                            "maxpool stays real: followed by batchnorm `{user_name}`, not by a sign"
                        ),
                    );
                    continue;
                };
                let sign_name = graph.node(sign).name.clone();
                let p = |s: &str| cx.param(&format!("{user_name}.{s}"), channels);
                let (g, b, m, v) = (
                    p("weight")?,
                    p("bias")?,
                    p("running_mean")?,
                    p("running_var")?,
                );
                let mut thresholds = Vec::with_capacity(channels);
                let mut blocked = None;
                for c in 0..channels {
                    let chain = Chain {
                        stages: vec![Stage::BatchNorm {
                            gamma: g[c],
                            beta: b[c],
                            mean: m[c],
                            var: v[c],
                            eps: bn.eps,
                        }],
                        decision: Decision::Sign,
                    };
                    match real_step(&chain) {
                        Ok(s) if s.direction == 1.0 => thresholds.push(s.threshold),
                        Ok(_) => {
                            blocked = Some(format!(
                                "channel {c} of batchnorm `{user_name}` has γ < 0 (decreasing), so the max would become a min"
                            ));
                            break;
                        }
                        Err(e) => {
                            blocked = Some(format!("channel {c} of batchnorm `{user_name}`: {e}"));
                            break;
                        }
                    }
                }
                if let Some(why) = blocked {
                    cx.note(&pool_name, format!("maxpool stays real: {why}"));
                    continue;
                }
                // sign(batchnorm(maxpool(x))) → maxpool(threshold(x)); the
                // threshold takes the sign's name.
                swap(&mut patch, graph, pool, sign, x, Op::Threshold);
                patch.remove(user);
                params.push((format!("{sign_name}.threshold"), thresholds));
                params.push((format!("{sign_name}.direction"), vec![1.0; channels]));
                cx.fused(&sign_name, format!("batchnorm `{user_name}`"), &user_name);
                cx.clear_note(&pool_name);
            }
            ref op => cx.note(
                &pool_name,
                format!(
                    "maxpool stays real: followed by {} `{user_name}`, not by a sign or threshold",
                    op.name()
                ),
            ),
        }
    }
    if patch.is_empty() {
        return Ok(Changed::No);
    }
    for (name, data) in params {
        cx.set_param(name.clone(), vec![data.len()], data);
    }
    cx.apply(patch, graph)?;
    Ok(Changed::Yes)
}

/// `t(maxpool(x))` → `maxpool(t(x))`, `t` becoming `op`.
fn swap(patch: &mut Patch, graph: &Graph, pool: NodeId, t: NodeId, x: NodeId, op: Op) {
    debug_assert!(graph.operands(pool) == [x]);
    patch.set_op(t, op);
    patch.set_operands(t, vec![x]);
    patch.set_operands(pool, vec![t]);
    patch.replace_uses(t, pool);
}
