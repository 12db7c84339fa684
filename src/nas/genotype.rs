//! Genotypes: the operation chosen on each edge and the edges kept at each
//! searched node, how they are derived from α and β, and the discretisation
//! of a supernet into a plain model through the `select_cells` pass.
//!
//! Derivation (PC-DARTS, `ir-spec/search.md`): on each edge the operation is
//! the non-`zero` alternative of largest α (softmax is monotonic, so the
//! largest softmax(α) too); each searched node keeps its two incoming edges
//! of largest `softmax(β)_e · softmax(α_e)_op`, never an edge whose only
//! operation left is `zero`, and sums them.

use std::collections::BTreeMap;
use std::fmt;

use super::space::SearchSpace;
use crate::ir::graph::Graph;
use crate::ir::params::Params;
use crate::passes::{self, CellChoice, ChoiceForm, PassError, PassOptions, PassSelection};
use crate::util::rng::Rng;

/// How many incoming edges a searched node keeps (DARTS, PC-DARTS).
pub const EDGES_PER_NODE: usize = 2;

/// The chosen architecture, in the indexing of one graph's alternatives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genotype {
    /// Per edge of the space (same order): the edge's `choose` and the chosen
    /// alternative, with its label.
    pub ops: Vec<(String, usize, String)>,
    /// Per searched node: its `choose` and the positions of the edges kept,
    /// ascending.
    pub nodes: Vec<(String, Vec<usize>)>,
}

/// `softmax(v)`, shifted by the maximum as `choose` computes it.
pub fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|&a| (a - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn alpha<'a>(params: &'a Params, choose: &str) -> &'a [f32] {
    params
        .get(&format!("{choose}.alpha"))
        .map_or(&[][..], |t| &t.data[..])
}

impl Genotype {
    /// The genotype `params` (α and β) give the space.
    pub fn derive(space: &SearchSpace, params: &Params) -> Genotype {
        // The best non-zero operation of each edge and its softmax weight
        // (0 when only `zero` is left).
        let best: Vec<(usize, f32)> = space
            .edges
            .iter()
            .map(|e| {
                let p = softmax(alpha(params, &e.choose));
                let mut pick: Option<usize> = None;
                for (i, &w) in p.iter().enumerate() {
                    if !e.zero[i] && pick.is_none_or(|b| w > p[b]) {
                        pick = Some(i);
                    }
                }
                match pick {
                    Some(i) => (i, p[i]),
                    None => (0, 0.0),
                }
            })
            .collect();
        let ops = space
            .edges
            .iter()
            .zip(&best)
            .map(|(e, &(i, _))| (e.choose.clone(), i, e.ops[i].clone()))
            .collect();
        let nodes = space
            .nodes
            .iter()
            .map(|n| {
                let beta = softmax(alpha(params, &n.choose));
                let strength: Vec<f32> = n
                    .edges
                    .iter()
                    .enumerate()
                    .map(|(k, &e)| beta.get(k).copied().unwrap_or(0.0) * best[e].1)
                    .collect();
                (n.choose.clone(), top_positions(&strength, EDGES_PER_NODE))
            })
            .collect();
        Genotype { ops, nodes }
    }

    /// A uniformly random architecture of the space: a random non-`zero`
    /// operation per edge, two random edges per node (the baseline a search
    /// must beat).
    pub fn random(space: &SearchSpace, seed: u64) -> Genotype {
        let mut rng = Rng::new(seed);
        let ops = space
            .edges
            .iter()
            .map(|e| {
                let candidates: Vec<usize> = (0..e.ops.len()).filter(|&i| !e.zero[i]).collect();
                let i = if candidates.is_empty() {
                    0
                } else {
                    candidates[rng.below(candidates.len())]
                };
                (e.choose.clone(), i, e.ops[i].clone())
            })
            .collect();
        let nodes = space
            .nodes
            .iter()
            .map(|n| {
                let mut positions: Vec<usize> = (0..n.edges.len()).collect();
                for i in (1..positions.len()).rev() {
                    positions.swap(i, rng.below(i + 1));
                }
                positions.truncate(EDGES_PER_NODE.min(positions.len()));
                positions.sort_unstable();
                (n.choose.clone(), positions)
            })
            .collect();
        Genotype { ops, nodes }
    }

    /// The `select_cells` choices that turn the supernet into this
    /// architecture: first every edge to its operation (stage 0), then every
    /// node to the sum of its kept edges (stage 1). Two stages, because a
    /// node's operands are the edges the first stage replaces.
    pub fn choices(&self) -> [BTreeMap<String, CellChoice>; 2] {
        let edges = self
            .ops
            .iter()
            .map(|(c, i, _)| {
                (
                    c.clone(),
                    CellChoice {
                        keep: vec![*i],
                        form: ChoiceForm::Sum,
                    },
                )
            })
            .collect();
        let nodes = self
            .nodes
            .iter()
            .map(|(c, kept)| {
                (
                    c.clone(),
                    CellChoice {
                        keep: kept.clone(),
                        form: ChoiceForm::Sum,
                    },
                )
            })
            .collect();
        [edges, nodes]
    }
}

/// The positions of the `k` largest values, ascending; ties go to the
/// earlier position, and positions of strength 0 (only `zero` left) are
/// taken only if nothing else is.
fn top_positions(strength: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..strength.len()).collect();
    idx.sort_by(|&a, &b| strength[b].total_cmp(&strength[a]));
    let positive = idx.iter().filter(|&&i| strength[i] > 0.0).count();
    let mut kept: Vec<usize> = idx.into_iter().take(k.min(positive).max(1)).collect();
    kept.sort_unstable();
    kept
}

impl fmt::Display for Genotype {
    /// One line per searched node: `NODE = op[k] + op[k]`, where `k` is the
    /// edge's position among the node's inputs; then the edges that enter no
    /// node, `EDGE = op`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for line in self.lines() {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{line}")?;
        }
        Ok(())
    }
}

impl Genotype {
    /// The lines of [`Display`](fmt::Display), one per node (and free edge).
    pub fn lines(&self) -> Vec<String> {
        self.lines_with(&[])
    }

    /// The lines, with each node's edges looked up in `node_edges` (a node's
    /// edge `choose` names by position, from the space); without it the
    /// edges are listed as chosen in `ops` order.
    pub fn lines_with(&self, node_edges: &[(String, Vec<String>)]) -> Vec<String> {
        let label: BTreeMap<&str, &str> = self
            .ops
            .iter()
            .map(|(c, _, l)| (c.as_str(), l.as_str()))
            .collect();
        let mut used = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for (node, kept) in &self.nodes {
            let edges = node_edges.iter().find(|(n, _)| n == node).map(|(_, e)| e);
            let parts: Vec<String> = kept
                .iter()
                .map(|&k| {
                    let edge = edges.and_then(|e| e.get(k));
                    if let Some(e) = edge {
                        used.insert(e.clone());
                    }
                    let op = edge.and_then(|e| label.get(e.as_str())).unwrap_or(&"?");
                    format!("{op}[{k}]")
                })
                .collect();
            if let Some(e) = edges {
                used.extend(e.iter().cloned());
            }
            out.push(format!("{node} = {}", parts.join(" + ")));
        }
        for (c, _, l) in &self.ops {
            if !used.contains(c) && node_edges.iter().all(|(_, e)| !e.contains(c)) {
                out.push(format!("{c} = {l}"));
            }
        }
        out
    }
}

/// Each node's edge `choose` names by position, for
/// [`Genotype::lines_with`].
pub fn node_edges(space: &SearchSpace) -> Vec<(String, Vec<String>)> {
    space
        .nodes
        .iter()
        .map(|n| {
            (
                n.choose.clone(),
                n.edges
                    .iter()
                    .map(|&e| space.edges[e].choose.clone())
                    .collect(),
            )
        })
        .collect()
}

/// The supernet `graph` with `params` discretised to `genotype`, through
/// `select_cells`: a plain model (no `choose` left) and its parameters.
///
/// # Errors
///
/// A [`PassError`] if the genotype does not fit the graph.
pub fn discretize(
    graph: &Graph,
    params: &Params,
    genotype: &Genotype,
) -> Result<(Graph, Params), PassError> {
    let mut g = graph.clone();
    let mut p = params.clone();
    let selection = PassSelection::parse("select_cells")?;
    for mut choices in genotype.choices() {
        keep_unlisted(&g, &mut choices);
        let options = PassOptions {
            choices,
            ..PassOptions::default()
        };
        passes::optimize(&mut g, &mut p, &selection, &options, |_, _| {})?;
    }
    Ok((g, p))
}

/// Adds a keep-everything choice for every `choose` of `graph` that
/// `choices` does not name, so that `select_cells` leaves it alone.
fn keep_unlisted(graph: &Graph, choices: &mut BTreeMap<String, CellChoice>) {
    for id in graph.node_ids() {
        let node = graph.node(id);
        if node.op == crate::ir::ops::Op::Choose && !choices.contains_key(&node.name) {
            choices.insert(
                node.name.clone(),
                CellChoice {
                    keep: (0..graph.operands(id).len()).collect(),
                    form: ChoiceForm::Choose,
                },
            );
        }
    }
}

/// `graph` with only the alternatives `keep` names (by `choose`, in the
/// graph's indexing) left on those edges, as smaller `choose`s (or the
/// alternative itself when one is left); every other `choose` is unchanged.
///
/// # Errors
///
/// A [`PassError`] if a list does not fit its `choose`.
pub fn restrict(
    graph: &Graph,
    params: &Params,
    keep: &BTreeMap<String, Vec<usize>>,
) -> Result<(Graph, Params), PassError> {
    let mut g = graph.clone();
    let mut p = params.clone();
    let mut choices: BTreeMap<String, CellChoice> = keep
        .iter()
        .map(|(name, kept)| {
            (
                name.clone(),
                CellChoice {
                    keep: kept.clone(),
                    form: ChoiceForm::Choose,
                },
            )
        })
        .collect();
    keep_unlisted(&g, &mut choices);
    let options = PassOptions {
        choices,
        ..PassOptions::default()
    };
    let selection = PassSelection::parse("select_cells")?;
    passes::optimize(&mut g, &mut p, &selection, &options, |_, _| {})?;
    Ok((g, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_positions_prefer_strong_edges_and_skip_zero_ones() {
        assert_eq!(top_positions(&[0.1, 0.3, 0.2], 2), vec![1, 2]);
        assert_eq!(top_positions(&[0.0, 0.3, 0.0], 2), vec![1]);
        assert_eq!(top_positions(&[0.0, 0.0], 2), vec![0]);
        assert_eq!(top_positions(&[0.2, 0.2, 0.2], 2), vec![0, 1]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
    }
}
