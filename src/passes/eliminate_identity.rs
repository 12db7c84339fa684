//! `eliminate_identity`: remove `identity` nodes.
//!
//! **Pattern.** `y = identity(x)`.
//!
//! **Rewrite.** Every user of `y`, and every model output naming `y`, uses `x`
//! instead; `y` goes away. Chains of identities collapse at once (the patch
//! follows redirections transitively).
//!
//! **Soundness.** `identity` returns its operand unchanged, type included
//! (`ir-spec/ops.md`), so each user reads the same value of the same type.
//! The one visible change is a name: an output that named `y` now names `x`.
//!
//! **Does not fire** on anything else; there is nothing value-dependent.

use super::patch::Patch;
use super::{Changed, PassCx, PassError};
use crate::ir::graph::Graph;
use crate::ir::ops::Op;

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut patch = Patch::new();
    for id in graph.node_ids() {
        if graph.node(id).op == Op::Identity {
            patch.shunt(id, graph.operands(id)[0]);
        }
    }
    if patch.is_empty() {
        return Ok(Changed::No);
    }
    cx.apply(patch, graph)?;
    Ok(Changed::Yes)
}
