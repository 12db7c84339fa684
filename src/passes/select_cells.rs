//! `select_cells`: finalise a searched architecture.
//!
//! **Pattern.** Every `choose { a1, ..., an }` node with its logits `α`.
//!
//! **Rewrite.** With the option `top_k = 1` (the default), the `choose` is
//! replaced by its alternative with the largest `α_i` (ties: the first): its
//! users and outputs read that alternative. With `top_k = k > 1`, it keeps
//! the `k` alternatives of largest α, in their original order, and the
//! matching entries of `NAME.alpha`. Nodes only the dropped alternatives
//! used are then removed (as `eliminate_dead_nodes` does), so the printed
//! model is a clean model file.
//!
//! **Not sound, by design.** DARTS ends its search this way (Liu et al.,
//! ICLR 2019, §2.4: "retain the top-k strongest operations"): the softmax
//! mixture becomes one operation, which is what the search was for. The
//! model computes something else afterwards, so the pass is not in the
//! default pipeline; it runs when named. It is exact in one case, which the
//! tests use: when the softmax is one-hot in f32 (the best α exceeds the
//! others by more than about 104, so `exp` underflows to 0).
//!
//! **Explicit choices.** `PassOptions::choices` names chooses whose kept
//! alternatives are given (an architecture search's genotype, see
//! `ir-spec/search.md`), overriding `top_k` for them. In the form `Sum`, the
//! choose becomes `add` of the kept alternatives (one kept: that
//! alternative, as above): a searched node that sums its two chosen edges, as
//! the DARTS derived cell does, with no architecture parameter left. In the
//! form `Choose`, a smaller choose over them, even of one alternative (a
//! supernet whose edges lost operations). Indices out of range, repeated or
//! unsorted, or none at all, are an error naming the choose.
//!
//! **Types.** The chosen alternative may be `bit` where `choose` gave `f32`;
//! every op reads bits as ±1, so the users' values are the same and their
//! types are re-derived.

use super::eliminate_dead_nodes::remove_dead;
use super::patch::Patch;
use super::{Changed, ChoiceForm, PassCx, PassError};
use crate::ir::graph::Graph;
use crate::ir::ops::Op;

/// The indices of the `k` largest entries of `alpha`, in index order; ties
/// and NaN go to the earlier index (NaN ranks below every number).
pub fn top_k(alpha: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..alpha.len()).collect();
    let rank = |a: f32| if a.is_nan() { f32::NEG_INFINITY } else { a };
    // Stable sort, descending α: equal α keep index order.
    idx.sort_by(|&i, &j| rank(alpha[j]).total_cmp(&rank(alpha[i])));
    let mut kept: Vec<usize> = idx.into_iter().take(k.max(1)).collect();
    kept.sort_unstable();
    kept
}

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut patch = Patch::new();
    let mut new_alpha = Vec::new();
    for id in graph.node_ids() {
        if graph.node(id).op != Op::Choose {
            continue;
        }
        let name = graph.node(id).name.clone();
        let operands = graph.operands(id);
        let alpha = cx.param(&format!("{name}.alpha"), operands.len())?.to_vec();
        let explicit = cx.options.choices.get(&name);
        let kept = match explicit {
            Some(choice) => {
                let valid = !choice.keep.is_empty()
                    && choice.keep.windows(2).all(|w| w[0] < w[1])
                    && choice.keep.iter().all(|&i| i < operands.len());
                if !valid {
                    return Err(PassError::BadChoice {
                        choose: name,
                        keep: choice.keep.clone(),
                        alternatives: operands.len(),
                    });
                }
                choice.keep.clone()
            }
            None => top_k(&alpha, cx.options.top_k),
        };
        let form = explicit.map(|c| c.form);
        let sum = form == Some(ChoiceForm::Sum);
        if kept.len() == operands.len() && !sum {
            continue;
        }
        if let ([best], false) = (&kept[..], form == Some(ChoiceForm::Choose)) {
            let best = *best;
            patch.shunt(id, operands[best]);
            cx.note(
                graph.node(operands[best]).name.as_str(),
                format!(
                    "selected from `{name}` (alternative {best}, α = {})",
                    alpha[best]
                ),
            );
        } else if sum {
            patch.set_op(id, Op::Add);
            patch.set_operands(id, kept.iter().map(|&i| operands[i]).collect());
        } else {
            patch.set_operands(id, kept.iter().map(|&i| operands[i]).collect());
            new_alpha.push((
                format!("{name}.alpha"),
                kept.iter().map(|&i| alpha[i]).collect::<Vec<f32>>(),
            ));
        }
    }
    if patch.is_empty() {
        return Ok(Changed::No);
    }
    for (name, data) in new_alpha {
        cx.set_param(name, vec![data.len()], data);
    }
    cx.apply(patch, graph)?;
    remove_dead(graph, cx)?;
    Ok(Changed::Yes)
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_prefers_large_alpha_then_the_first() {
        assert_eq!(top_k(&[0.0, 2.0, 2.0, -1.0], 1), vec![1]);
        assert_eq!(top_k(&[0.0, 2.0, 2.0, -1.0], 2), vec![1, 2]);
        assert_eq!(top_k(&[0.5, f32::NAN, 0.5], 2), vec![0, 2]);
        assert_eq!(top_k(&[0.0; 3], 1), vec![0]);
        assert_eq!(top_k(&[1.0, 3.0], 9), vec![0, 1]);
    }
}
