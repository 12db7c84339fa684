//! CP-NAS's full-precision **parent** of a binarized supernet (Zhuo et al.,
//! IJCAI 2020, "CP-NAS: Child-Parent Neural Architecture Search for 1-bit
//! CNNs"): the same graph with binarization off.
//!
//! The rewrite, node by node, keeping every name (and so every parameter
//! name, which is what lets the child-parent kernel loss pair a child's
//! kernel with the parent's):
//!
//! - `sign(x)` becomes `identity(x)`: the activation stays real;
//! - `bconv2d(…)` becomes `conv2d(…, bias=false)` of the same geometry and
//!   `bdense(…)` becomes `dense(…, bias=false)`: the latent weight, of the
//!   same shape, is used as it is;
//! - `conv2d`/`dense` with `weights=binary` become `weights=real`.
//!
//! A layer's `scale` and `projection` go with its binarization (a real
//! kernel carries its own magnitude), so their parameters (`NODE.scale`,
//! `NODE.projection`) are not the parent's; every other parameter is
//! shared by name and shape. A `bconv2d` with `pad_value=1` pads its real
//! replacement with zeros, the real convolution's only padding.
//!
//! The parent is a plain training graph like the child: the same
//! `differentiate` pass and the same step engine train it. It is not an
//! equivalence (it is a different network), so it is not one of the
//! optimizing passes.

use crate::ir::graph::Graph;
use crate::ir::ops::{BinaryOutput, Conv2d, Dense, Op, Scale, WeightForm, WeightKind};
use crate::ir::params::Params;
use crate::passes::patch::Patch;

/// Why a model has no full-precision parent.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParentError {
    /// A binary layer the passes have already rewritten (packed weights, a
    /// folded epilogue): the parent is built from the model as written.
    #[error(
        "node `{0}` is a binary layer the passes have rewritten (packed weights or a folded epilogue); the full-precision parent is built from the model as written"
    )]
    Rewritten(String),
    /// The rewritten graph does not type-check.
    #[error("the full-precision parent: {0}")]
    Patch(String),
}

/// The full-precision parent of `child` and the parameters it shares with
/// `child_params` (values copied, so parent and child start equal).
///
/// # Errors
///
/// [`ParentError`] for a model the passes have rewritten.
pub fn full_precision(
    child: &Graph,
    child_params: &Params,
) -> Result<(Graph, Params), ParentError> {
    let mut patch = Patch::new();
    for id in child.node_ids() {
        let node = child.node(id);
        let real = match &node.op {
            Op::Sign(_) => Some(Op::Identity),
            Op::BConv2d(a) => {
                if a.weights != WeightForm::Latent || a.output != BinaryOutput::Dot {
                    return Err(ParentError::Rewritten(node.name.clone()));
                }
                Some(Op::Conv2d(Conv2d::new(a.geometry, false)))
            }
            Op::BDense(a) => {
                if a.weights != WeightForm::Latent || a.output != BinaryOutput::Dot {
                    return Err(ParentError::Rewritten(node.name.clone()));
                }
                Some(Op::Dense(Dense::new(a.out_features, false)))
            }
            Op::Conv2d(a) if a.weights == WeightKind::Binary => Some(Op::Conv2d(Conv2d {
                weights: WeightKind::Real,
                scale: Scale::None,
                projection: false,
                ..*a
            })),
            Op::Dense(a) if a.weights == WeightKind::Binary => Some(Op::Dense(Dense {
                weights: WeightKind::Real,
                scale: Scale::None,
                projection: false,
                ..*a
            })),
            _ => None,
        };
        if let Some(op) = real {
            patch.set_op(id, op);
        }
    }
    let mut graph = child.clone();
    let mut params = child_params.clone();
    patch
        .apply(&mut graph, &mut params)
        .map_err(|e| ParentError::Patch(e.to_string()))?;
    Ok((graph, params))
}

/// Whether `graph` computes anything in binary: a `sign`, a binary layer or
/// a layer with binary weights.
pub fn has_binarization(graph: &Graph) -> bool {
    graph.node_ids().any(|id| match &graph.node(id).op {
        Op::Sign(_) | Op::BConv2d(_) | Op::BDense(_) | Op::Threshold => true,
        Op::Conv2d(a) => a.weights == WeightKind::Binary,
        Op::Dense(a) => a.weights == WeightKind::Binary,
        _ => false,
    })
}
