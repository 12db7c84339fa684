//! Graph surgery for the passes: a [`Patch`] collects edits, [`Patch::apply`]
//! performs them at once by rebuilding the graph.
//!
//! A pass reads as *pattern → patch*: it matches on the current graph, records
//! what to change in a `Patch` (in the spirit of tract's `ModelPatch`), and
//! applies it. The vocabulary is small:
//!
//! - [`Patch::set_op`]: a node computes another op, keeping its name (and so
//!   its parameter names) and its users;
//! - [`Patch::set_operands`]: a node reads other operands;
//! - [`Patch::replace_uses`]: the users of a node (and the model outputs that
//!   name it) use another node instead;
//! - [`Patch::remove`]: a node goes away (it must have no users left);
//! - and two compound edits: [`Patch::fuse_chain`] (a layer absorbs the chain
//!   of ops after it) and [`Patch::shunt`] (a node is bypassed).
//!
//! # Names
//!
//! A node keeps its name through a patch, with one exception that keeps the
//! model's interface stable: when [`Patch::fuse_chain`] absorbs a chain whose
//! last node is a model output, and the absorbing node is neither an output
//! nor used by anything but the chain, the absorbing node takes the output's
//! name (`d = bdense(..)`, `y = batchnorm(d)`, `output y` becomes
//! `y = bdense(..)`, `output y`). Its parameters follow it (`d.weight`
//! becomes `y.weight`, and so do the values a pass wrote under `d.` before
//! `apply`), after the absorbed output's own parameters (`y.weight`,
//! `y.running_mean`, ...) are dropped, so nothing collides. [`Patch::apply`]
//! returns the renames, `(old, new)`, so that the pass log can follow them.
//!
//! # Why rebuild
//!
//! [`Graph`] has no way to change a node's op in place or to rename a node,
//! and node names carry meaning (parameters are `NODE.suffix`). Rebuilding is
//! simple and cheap (linear in the graph) and gives three guarantees for free:
//!
//! - **every type is re-derived** through [`Graph::add_node`], so a patch that
//!   makes a user ill-typed fails with the user's name instead of producing a
//!   graph the verifier would reject later;
//! - **ids are dense and the order is stable**: nodes are re-added in a
//!   topological order of the patched graph that, among ready nodes, keeps the
//!   old topological order. A patch that changes nothing structural prints
//!   the graph exactly as before, and snapshots change only where the pass
//!   changed something;
//! - **parameters stay in step**: the parameters of removed nodes, and those a
//!   rewritten node no longer has (a batchnorm's statistics once it is an
//!   `affine`, latent weights once packed), are dropped from the store. Values
//!   for the new parameters are the pass's job: it writes them before or
//!   after `apply`, and the pass manager checks the store against the graph
//!   after every pass.
//!
//! # Semantics of an edit set
//!
//! Redirections ([`Patch::replace_uses`]) rewrite the *old* graph's edges and
//! outputs, transitively (`a → b`, `b → c` sends the users of `a` to `c`).
//! Operand lists given to [`Patch::set_operands`] are taken literally: they
//! name nodes as they are after the patch. That is what lets a pass swap two
//! nodes (`binary_maxpool`): the sign reads the pool's operand, the pool reads
//! the sign, and the sign's old users read the pool.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::ir::graph::{Graph, GraphError, NodeId};
use crate::ir::ops::Op;
use crate::ir::params::{Params, node_params};

/// Why a patch cannot be applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// A node cannot be rebuilt: its op does not fit its new operands.
    #[error("node `{node}`: {error}")]
    Node {
        /// The node's name.
        node: String,
        /// Why.
        error: Box<GraphError>,
    },
    /// A node or output still uses a removed node.
    #[error("`{user}` still uses `{removed}`, which the patch removes")]
    Dangling {
        /// The user (or `output`).
        user: String,
        /// The removed node.
        removed: String,
    },
    /// The patched graph has a cycle.
    #[error("the patch makes a cycle through `{0}`")]
    Cycle(String),
    /// The graph was not acyclic to begin with.
    #[error("the graph to patch has a cycle")]
    NotAcyclic,
}

/// A set of edits to one graph. Ids refer to the graph the patch is applied
/// to; after [`Patch::apply`] every id changes (the graph is rebuilt).
#[derive(Clone, Debug, Default)]
pub struct Patch {
    ops: BTreeMap<NodeId, Op>,
    operands: BTreeMap<NodeId, Vec<NodeId>>,
    redirect: BTreeMap<NodeId, NodeId>,
    removed: BTreeSet<NodeId>,
    /// `keep → last` of each fused chain: `keep` may take `last`'s name.
    take_name: BTreeMap<NodeId, NodeId>,
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Patch {
        Patch::default()
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.operands.is_empty()
            && self.redirect.is_empty()
            && self.removed.is_empty()
    }

    /// Node `id` computes `op` (same name, same users).
    pub fn set_op(&mut self, id: NodeId, op: Op) {
        self.ops.insert(id, op);
    }

    /// Node `id` reads `operands` (literally: nodes as they are after the patch).
    pub fn set_operands(&mut self, id: NodeId, operands: Vec<NodeId>) {
        self.operands.insert(id, operands);
    }

    /// Every user of `old`, and every model output naming it, uses `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        self.redirect.insert(old, new);
    }

    /// Node `id` is removed; nothing may use it after the patch.
    pub fn remove(&mut self, id: NodeId) {
        self.removed.insert(id);
    }

    /// `keep` absorbs `chain`, the ops after it (each the only user of the
    /// one before): the users of the chain's last node use `keep`, and the
    /// chain goes away. The caller sets `keep`'s new op. If the chain's last
    /// node is a model output, `keep` takes its name (see the module doc).
    pub fn fuse_chain(&mut self, keep: NodeId, chain: &[NodeId]) {
        if let Some(&last) = chain.last() {
            self.replace_uses(last, keep);
            self.take_name.insert(keep, last);
        }
        for &n in chain {
            self.remove(n);
        }
    }

    /// Node `id` is bypassed: its users read `to` instead, and it goes away.
    pub fn shunt(&mut self, id: NodeId, to: NodeId) {
        self.replace_uses(id, to);
        self.remove(id);
    }

    /// Where the uses of `id` go after the patch (following redirections).
    fn resolve(&self, mut id: NodeId) -> Result<NodeId, PatchError> {
        let mut steps = 0;
        while let Some(&next) = self.redirect.get(&id) {
            id = next;
            steps += 1;
            if steps > self.redirect.len() {
                return Err(PatchError::Cycle(format!("{id}")));
            }
        }
        Ok(id)
    }

    /// The nodes that take the name of the output they absorb: `keep →
    /// last`, for the fused chains whose last node is a model output, when
    /// `keep` survives, is not an output and only the chain uses it.
    fn renames(&self, graph: &Graph) -> BTreeMap<NodeId, NodeId> {
        let mut taken = HashSet::new();
        self.take_name
            .iter()
            .filter(|&(&keep, &last)| {
                graph.outputs().contains(&last)
                    && !graph.outputs().contains(&keep)
                    && self.removed.contains(&last)
                    && !self.removed.contains(&keep)
                    && graph.users(keep).iter().all(|u| self.removed.contains(u))
                    && taken.insert(last)
            })
            .map(|(&k, &l)| (k, l))
            .collect()
    }

    /// Applies the patch: rebuilds `graph` with the edits, in a stable
    /// topological order, and drops the parameters that no node has any more.
    /// Returns the nodes renamed (see the module doc), as `(old, new)` names.
    pub fn apply(
        self,
        graph: &mut Graph,
        params: &mut Params,
    ) -> Result<Vec<(String, String)>, PatchError> {
        let old_order = graph.topo_order().map_err(|_| PatchError::NotAcyclic)?;
        let position: HashMap<NodeId, usize> =
            old_order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let renames = self.renames(graph);
        let name = |id: NodeId| graph.node(id).name.clone();
        let new_name = |id: NodeId| name(renames.get(&id).copied().unwrap_or(id));

        // The patched structure: op and operands of every surviving node.
        let mut nodes: BTreeMap<NodeId, (Op, Vec<NodeId>)> = BTreeMap::new();
        for &id in &old_order {
            if self.removed.contains(&id) {
                continue;
            }
            let op = self
                .ops
                .get(&id)
                .cloned()
                .unwrap_or_else(|| graph.node(id).op.clone());
            let operands = match self.operands.get(&id) {
                Some(list) => list.clone(),
                None => graph
                    .operands(id)
                    .into_iter()
                    .map(|o| self.resolve(o))
                    .collect::<Result<_, _>>()?,
            };
            for &o in &operands {
                if self.removed.contains(&o) {
                    return Err(PatchError::Dangling {
                        user: name(id),
                        removed: name(o),
                    });
                }
            }
            nodes.insert(id, (op, operands));
        }
        let mut outputs = Vec::new();
        for &o in graph.outputs() {
            let r = self.resolve(o)?;
            if self.removed.contains(&r) {
                return Err(PatchError::Dangling {
                    user: "output".into(),
                    removed: name(r),
                });
            }
            outputs.push(r);
        }

        // Kahn's algorithm; among ready nodes, the earliest in the old order.
        let mut pending: HashMap<NodeId, usize> = HashMap::new();
        let mut users: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for (&id, (_, operands)) in &nodes {
            let distinct: HashSet<NodeId> = operands.iter().copied().collect();
            pending.insert(id, distinct.len());
            for o in distinct {
                users.entry(o).or_default().push(id);
            }
        }
        let mut ready: BinaryHeap<Reverse<(usize, NodeId)>> = pending
            .iter()
            .filter(|&(_, &k)| k == 0)
            .map(|(&id, _)| Reverse((position[&id], id)))
            .collect();
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(Reverse((_, id))) = ready.pop() {
            order.push(id);
            for &u in users.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                let k = pending.get_mut(&u).expect("every user is a node");
                *k -= 1;
                if *k == 0 {
                    ready.push(Reverse((position[&u], u)));
                }
            }
        }
        if order.len() != nodes.len() {
            let stuck = nodes
                .keys()
                .find(|id| !order.contains(id))
                .map_or_else(String::new, |&id| name(id));
            return Err(PatchError::Cycle(stuck));
        }

        // Rebuild: inputs first, in declaration order, then the rest.
        let mut new = Graph::new(graph.name.clone());
        // The inputs' declared normalisation describes the data: it stays.
        for (input, n) in graph.input_normalizations() {
            new.set_input_normalization(input, Some(*n));
        }
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        for &i in graph.inputs() {
            if nodes.contains_key(&i) {
                let n = graph.node(i);
                let id = new
                    .add_input(n.name.clone(), n.ty.clone())
                    .map_err(|error| PatchError::Node {
                        node: n.name.clone(),
                        error: Box::new(error),
                    })?;
                map.insert(i, id);
            }
        }
        for &id in &order {
            if map.contains_key(&id) {
                continue;
            }
            let (op, operands) = &nodes[&id];
            let operands: Vec<NodeId> = operands.iter().map(|o| map[o]).collect();
            let new_id = new
                .add_node(new_name(id), op.clone(), &operands)
                .map_err(|error| PatchError::Node {
                    node: new_name(id),
                    error: Box::new(error),
                })?;
            map.insert(id, new_id);
        }
        new.set_outputs(outputs.iter().map(|o| map[o]).collect());

        // Parameters. A renamed node's parameters move to its new name, once
        // those of the absorbed output whose name it takes are dropped.
        let remove = |params: &mut Params, name: &str, packed: bool| {
            if packed {
                params.packed.remove(name);
            } else {
                params.tensors.remove(name);
            }
        };
        for &last in renames.values() {
            for spec in node_params(graph, last) {
                remove(params, &spec.name, spec.packed);
            }
        }
        let mut renamed = Vec::new();
        for &keep in renames.keys() {
            let (old, to) = (name(keep), new_name(keep));
            for spec in node_params(&new, map[&keep]) {
                let suffix = spec.name.strip_prefix(&to).unwrap_or(&spec.name);
                let from = format!("{old}{suffix}");
                if spec.packed {
                    if let Some(v) = params.packed.remove(&from) {
                        params.packed.insert(spec.name, v);
                    }
                } else if let Some(v) = params.tensors.remove(&from) {
                    params.tensors.insert(spec.name, v);
                }
            }
            renamed.push((old, to));
        }
        // Drop those of the old graph the new one does not have.
        let wanted: HashSet<(String, bool)> = new
            .node_ids()
            .flat_map(|id| node_params(&new, id))
            .map(|s| (s.name, s.packed))
            .collect();
        for &id in &old_order {
            for spec in node_params(graph, id) {
                if !wanted.contains(&(spec.name.clone(), spec.packed)) {
                    remove(params, &spec.name, spec.packed);
                }
            }
        }
        *graph = new;
        Ok(renamed)
    }
}

/// The only user of `id`, if it has exactly one and is not a model output
/// (so that `id`'s value is not needed anywhere else).
pub fn sole_user(graph: &Graph, id: NodeId) -> Option<NodeId> {
    if graph.outputs().contains(&id) {
        return None;
    }
    match graph.users(id)[..] {
        [u] if graph.operands(u).iter().filter(|&&o| o == id).count() == 1 => Some(u),
        _ => None,
    }
}

/// How many places use `id`'s value: distinct users plus model outputs.
pub fn use_count(graph: &Graph, id: NodeId) -> usize {
    graph.users(id).len() + graph.outputs().iter().filter(|&&o| o == id).count()
}
