//! `pack_weights`: store binary weights as packed sign bits.
//!
//! **Pattern.** A `bconv2d` or `bdense` with `weights=latent` and
//! `scale=none`.
//!
//! **Rewrite.** `weights=packed`: the parameter `NAME.weight` moves from the
//! f32 store to [`Params::packed`](crate::ir::params::Params) as
//! [`PackedBits::pack`] of the latent values, laid out for the kernels
//! (OHWI, input channels innermost, 64-bit little-endian words, bit 1 = −1,
//! zero tail bits). The latent f32 values are dropped: 32× smaller.
//!
//! **Soundness.** With `scale=none` the layer only ever uses `sign(W)`:
//! `PackedBits::pack` sets bit 1 exactly where `w >= 0` is false, i.e. where
//! `sign(w) = −1` (NaN included), and the interpreter unpacks the bits to the
//! same ±1 values (`PackedBits::signs`).
//!
//! **Does not fire** on a projected layer (`projection=true`, which
//! computes with `sign(P∘W)`; `fold_projection` folds it first), nor on a layer with `scale=channel`: α = mean |W| needs the
//! latent magnitudes. `fold_scale_and_bn` folds α into the layer's epilogue
//! first, so after the default pipeline every binary layer packs.

use super::patch::Patch;
use super::{Changed, PassCx, PassError};
use crate::ir::graph::Graph;
use crate::ir::ops::{Op, WeightForm};
use crate::ir::params::{PackedBits, node_params};

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut patch = Patch::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let (scale, weights) = match &node.op {
            Op::BConv2d(a) => (a.scale, a.weights),
            Op::BDense(a) => (a.scale, a.weights),
            _ => continue,
        };
        if weights == WeightForm::Packed {
            continue;
        }
        if node.op.projection() {
            // The layer computes with `sign(P∘W)`, not `sign(W)`.
            cx.note(
                &node.name,
                "weights not packed: `projection=true` (run `fold_projection` first)".into(),
            );
            continue;
        }
        if scale.is_scaled() {
            // Only an unfolded scale is left here (a following batchnorm or
            // sign would have absorbed it); `scale=channel` reads the latent
            // weights, and a packed layer carries no scale of either kind.
            cx.note(
                &node.name,
                format!(
                    "weights not packed: `scale={}` is not folded into an epilogue",
                    scale.name()
                ),
            );
            continue;
        }
        let name = format!("{}.weight", node.name);
        let shape = node_params(graph, id)
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.shape)
            .unwrap_or_default();
        let len = shape.iter().product();
        let latent = cx.param(&name, len)?;
        let bits = PackedBits::pack(&shape, latent).ok_or_else(|| PassError::MissingParam {
            pass: cx.pass,
            name: name.clone(),
        })?;
        cx.params.packed.insert(name, bits);
        let mut op = node.op.clone();
        match &mut op {
            Op::BConv2d(a) => a.weights = WeightForm::Packed,
            Op::BDense(a) => a.weights = WeightForm::Packed,
            _ => unreachable!("matched above"),
        }
        patch.set_op(id, op);
    }
    if patch.is_empty() {
        return Ok(Changed::No);
    }
    cx.apply(patch, graph)?;
    Ok(Changed::Yes)
}
