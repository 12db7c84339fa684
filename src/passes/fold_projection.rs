//! `fold_projection`: PCNN's projection into the latent weights.
//!
//! **Pattern.** A layer with latent binary weights and `projection=true`
//! (`bconv2d`, `bdense`, or `conv2d`/`dense` with `weights=binary`): it
//! computes with `α_o·sign(P_k·W_ok)`, `P` the parameter `NODE.projection`
//! (`[K]` over the non-output dimensions of `W`, shared by the output
//! channels) and `α` from `scale=` (`mean|W_o|` of the latent weights with
//! `scale=channel`).
//!
//! **Rewrite.** `projection=false`, with `NODE.weight` replaced by the
//! products `V_ok = P_k·W_ok` and `NODE.projection` dropped. With
//! `scale=channel` the layer becomes `scale=learned` and `NODE.scale` holds
//! `mean|W_o|` of the weights before the fold, since `mean|V_o|` is another
//! number. Inference needs only the binary kernel and the scalars (Gu et al.
//! 2019); what is left is an ordinary binary layer that the passes after this
//! one fold into thresholds and pack.
//!
//! **Soundness.** Every engine takes the sign of the same f32 product
//! `P_k·W_ok` (multiplication is commutative in IEEE arithmetic, so the
//! order of the factors does not matter), so `sign(V)` equals `sign(P∘W)`
//! bit for bit, and `NODE.scale` holds the very `α_o` the unfolded layer
//! computes (`channel_scales`, the function every engine calls). The folded
//! layer trains differently (it has no projection left): the pass is for
//! deployment, like every fold.
//!
//! It runs first: the folds after it read the latent weights of binary
//! layers (`fold_batchnorm`, `fold_scale_and_bn`, `pack_weights`) and leave
//! projected layers alone, with a note.

use super::patch::Patch;
use super::{Changed, PassCx, PassError};
use crate::ir::graph::Graph;
use crate::ir::ops::{Op, Scale};
use crate::ir::params::node_params;

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut patch = Patch::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        if !node.op.projection() {
            continue;
        }
        let specs = node_params(graph, id);
        let len_of = |suffix: &str| {
            let name = format!("{}.{suffix}", node.name);
            let len = specs
                .iter()
                .find(|s| s.name == name)
                .map_or(0, |s| s.elements());
            (name, len)
        };
        let (w_name, w_len) = len_of("weight");
        let (p_name, p_len) = len_of("projection");
        let w = cx.param(&w_name, w_len)?.to_vec();
        let p = cx.param(&p_name, p_len)?.to_vec();
        let out = w.len() / p.len().max(1);
        // The very products every engine takes the signs of.
        let projected = crate::ir::interp::projected(&w, Some(&p)).into_owned();

        let mut op = node.op.clone();
        let scale = match &mut op {
            Op::BConv2d(a) => &mut a.scale,
            Op::BDense(a) => &mut a.scale,
            Op::Conv2d(a) => &mut a.scale,
            Op::Dense(a) => &mut a.scale,
            _ => unreachable!("only these layers take `projection=true`"),
        };
        if *scale == Scale::Channel {
            *scale = Scale::Learned;
            let alpha = crate::ir::interp::channel_scales(&w, out);
            cx.set_param(format!("{}.scale", node.name), vec![out], alpha);
        }
        match &mut op {
            Op::BConv2d(a) => a.projection = false,
            Op::BDense(a) => a.projection = false,
            Op::Conv2d(a) => a.projection = false,
            Op::Dense(a) => a.projection = false,
            _ => unreachable!("matched above"),
        }
        let shape = specs
            .iter()
            .find(|s| s.name == w_name)
            .map(|s| s.shape.clone())
            .unwrap_or_default();
        cx.set_param(w_name, shape, projected);
        cx.fused(&node.name, format!("projection `{p_name}`"), &node.name);
        patch.set_op(id, op);
    }
    if patch.is_empty() {
        return Ok(Changed::No);
    }
    cx.apply(patch, graph)?;
    Ok(Changed::Yes)
}
