//! The IR graph: typed nodes in a petgraph `StableGraph`, operands as ordered edges.
//!
//! A node is one op applied to its operands; its result type is inferred when the
//! node is added, so a graph built through [`Graph::add_node`] is well-typed by
//! construction. Passes that rewrite the graph are checked by
//! [`verify`](super::verify::verify), which re-derives every type.
//!
//! Node names are unique and stable: parameters are found by `NODE.weight` and the
//! like, so a node keeps its name through every rewrite that keeps its meaning.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};

use super::ops::{Op, TypeError};
use super::types::TensorType;

/// Words of the text format with a meaning of their own: not usable as node names.
pub const KEYWORDS: [&str; 6] = ["model", "cell", "input", "output", "return", "choose"];

/// Whether `name` can name a node: dot-separated segments, the first an
/// identifier (`[A-Za-z_][A-Za-z0-9_]*`), the others identifiers or digits,
/// and not a bare keyword. Exactly the names the printer can write and the
/// parser read back.
pub fn is_valid_name(name: &str) -> bool {
    let ident = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut segments = name.split('.');
    segments.next().is_some_and(ident)
        && segments.all(|s| ident(s) || (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit())))
        && !KEYWORDS.contains(&name)
}

/// A node's id. Stable across removals of other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

impl NodeId {
    /// The id's index (insertion order; stable, but with holes after removals).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0.index())
    }
}

/// A node: an op, its unique name and its inferred result type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name; parameters are named after it (`NAME.weight`).
    pub name: String,
    /// The operation and its attributes.
    pub op: Op,
    /// The result type.
    pub ty: TensorType,
}

/// The edge weight: which operand slot of the user the edge feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Operand(u32);

/// Why a node cannot be added.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// The name is taken.
    #[error("the name `{0}` is already defined")]
    DuplicateName(String),
    /// The op does not fit its operands.
    #[error(transparent)]
    Type(#[from] TypeError),
    /// An operand id does not belong to the graph.
    #[error("operand {0} is not a node of this graph")]
    UnknownNode(NodeId),
}

/// How the data fed to a model input is normalised before it reaches the
/// model: `(x − mean) / std` for every value (the `normalize(mean=…, std=…)`
/// clause of an input declaration, `ir-spec/language.md`). It describes the
/// data, not a computation of the graph: the data pipeline of `onebit train`
/// and `onebit eval` applies it, engines never do.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputNormalization {
    /// Subtracted first (finite).
    pub mean: f32,
    /// Divided by next (finite, not zero).
    pub std: f32,
}

/// A model: a dataflow graph with ordered inputs and outputs.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The model's name (a C identifier; names the generated symbols later).
    pub name: String,
    graph: StableGraph<Node, Operand, petgraph::Directed, u32>,
    names: HashMap<String, NodeId>,
    inputs: Vec<NodeId>,
    outputs: Vec<NodeId>,
    /// The declared normalisation of inputs, by input name.
    normalization: BTreeMap<String, InputNormalization>,
}

impl Graph {
    /// An empty graph for the model `name`.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            graph: StableGraph::default(),
            names: HashMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            normalization: BTreeMap::new(),
        }
    }

    /// The normalisation declared for the input `name`, if any.
    pub fn input_normalization(&self, name: &str) -> Option<InputNormalization> {
        self.normalization.get(name).copied()
    }

    /// Every declared input normalisation, by input name.
    pub fn input_normalizations(&self) -> &BTreeMap<String, InputNormalization> {
        &self.normalization
    }

    /// Declares (or, with `None`, removes) the normalisation of the input
    /// `name`. Metadata only: it changes no node.
    pub fn set_input_normalization(&mut self, name: &str, n: Option<InputNormalization>) {
        match n {
            Some(n) => self.normalization.insert(name.to_string(), n),
            None => self.normalization.remove(name),
        };
    }

    /// Adds a model input of the declared type.
    pub fn add_input(
        &mut self,
        name: impl Into<String>,
        ty: TensorType,
    ) -> Result<NodeId, GraphError> {
        let id = self.insert(Node {
            name: name.into(),
            op: Op::Input,
            ty,
        })?;
        self.inputs.push(id);
        Ok(id)
    }

    /// Adds `op` applied to `operands`, inferring its type.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        operands: &[NodeId],
    ) -> Result<NodeId, GraphError> {
        let name = name.into();
        if self.names.contains_key(&name) {
            return Err(GraphError::DuplicateName(name));
        }
        let mut types = Vec::with_capacity(operands.len());
        for &o in operands {
            types.push(
                &self
                    .graph
                    .node_weight(o.0)
                    .ok_or(GraphError::UnknownNode(o))?
                    .ty,
            );
        }
        let ty = op.infer_type(&types)?;
        let id = self.insert(Node { name, op, ty })?;
        for (slot, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, id.0, Operand(slot as u32));
        }
        Ok(id)
    }

    fn insert(&mut self, node: Node) -> Result<NodeId, GraphError> {
        if self.names.contains_key(&node.name) {
            return Err(GraphError::DuplicateName(node.name));
        }
        let name = node.name.clone();
        let id = NodeId(self.graph.add_node(node));
        self.names.insert(name, id);
        Ok(id)
    }

    /// Appends a model output.
    pub fn add_output(&mut self, id: NodeId) {
        self.outputs.push(id);
    }

    /// Replaces the model outputs.
    pub fn set_outputs(&mut self, outputs: Vec<NodeId>) {
        self.outputs = outputs;
    }

    /// The model inputs, in declaration order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// The model outputs, in declaration order.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// The node `id`.
    ///
    /// # Panics
    /// If `id` was removed or belongs to another graph: ids are only handed out
    /// by this graph, so that is a bug in the caller.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id.0]
    }

    /// The node `id`, if it exists.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.graph.node_weight(id.0)
    }

    /// The node called `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// All node ids in insertion order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices().map(NodeId)
    }

    /// The operands of `id`, in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (e.weight().0, NodeId(e.source())))
            .collect();
        edges.sort_unstable_by_key(|&(slot, _)| slot);
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The distinct nodes that use `id` as an operand, in id order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> = self
            .graph
            .edges_directed(id.0, Direction::Outgoing)
            .map(|e| NodeId(e.target()))
            .collect();
        set.into_iter().collect()
    }

    /// The types of the operands of `id`, in slot order.
    pub fn operand_types(&self, id: NodeId) -> Vec<&TensorType> {
        self.operands(id)
            .into_iter()
            .map(|o| &self.node(o).ty)
            .collect()
    }

    /// The nodes in a deterministic topological order: among the nodes whose
    /// operands are all placed, the one added first goes next. Returns the nodes
    /// of a cycle if there is one.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let mut pending: HashMap<NodeIndex<u32>, usize> = HashMap::new();
        let mut ready = BTreeSet::new();
        // The model inputs come first, in declaration order, wherever they
        // were added: a printed graph declares them first.
        let mut order: Vec<NodeId> = Vec::with_capacity(self.graph.node_count());
        let mut queue: std::collections::VecDeque<NodeIndex<u32>> =
            self.inputs.iter().map(|i| i.0).collect();
        for n in self.graph.node_indices() {
            if self.inputs.contains(&NodeId(n)) {
                continue;
            }
            let k = self.graph.edges_directed(n, Direction::Incoming).count();
            if k > 0 {
                pending.insert(n, k);
            } else {
                ready.insert(n);
            }
        }
        while let Some(n) = queue.pop_front().or_else(|| ready.pop_first()) {
            order.push(NodeId(n));
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                if let Some(k) = pending.get_mut(&t) {
                    *k -= 1;
                    if *k == 0 {
                        pending.remove(&t);
                        ready.insert(t);
                    }
                }
            }
        }
        if pending.is_empty() {
            Ok(order)
        } else {
            let mut cycle: Vec<NodeId> = pending.keys().map(|&n| NodeId(n)).collect();
            cycle.sort();
            Err(cycle)
        }
    }

    /// Makes every user of `old` (and every output naming it) use `new` instead.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<_> = self
            .graph
            .edges_directed(old.0, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, target, slot) in uses {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new.0, target, slot);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node and its edges. The caller keeps the graph consistent
    /// (no remaining users, not an output); [`verify`](super::verify::verify) checks.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.graph.remove_node(id.0)?;
        self.names.remove(&node.name);
        self.inputs.retain(|&i| i != id);
        Some(node)
    }

    /// Checks that `self` and `other` are the same model: same name, inputs,
    /// outputs, and nodes (names, ops, operands by name, types) in the same
    /// topological order. Ids may differ. Returns the first difference.
    pub fn same_as(&self, other: &Graph) -> Result<(), String> {
        if self.name != other.name {
            return Err(format!("model name `{}` vs `{}`", self.name, other.name));
        }
        let names = |g: &Graph, ids: &[NodeId]| {
            ids.iter()
                .map(|&i| g.node(i).name.clone())
                .collect::<Vec<_>>()
        };
        if names(self, &self.inputs) != names(other, &other.inputs) {
            return Err(format!(
                "inputs {:?} vs {:?}",
                names(self, &self.inputs),
                names(other, &other.inputs)
            ));
        }
        if self.normalization != other.normalization {
            return Err(format!(
                "input normalisation {:?} vs {:?}",
                self.normalization, other.normalization
            ));
        }
        if names(self, &self.outputs) != names(other, &other.outputs) {
            return Err(format!(
                "outputs {:?} vs {:?}",
                names(self, &self.outputs),
                names(other, &other.outputs)
            ));
        }
        let a = self
            .topo_order()
            .map_err(|_| "the first graph has a cycle".to_string())?;
        let b = other
            .topo_order()
            .map_err(|_| "the second graph has a cycle".to_string())?;
        if a.len() != b.len() {
            return Err(format!("{} nodes vs {}", a.len(), b.len()));
        }
        for (&x, &y) in a.iter().zip(&b) {
            let (nx, ny) = (self.node(x), other.node(y));
            if nx != ny {
                return Err(format!("node {:?} vs {:?}", nx, ny));
            }
            let (ox, oy) = (
                names(self, &self.operands(x)),
                names(other, &other.operands(y)),
            );
            if ox != oy {
                return Err(format!("operands of `{}`: {:?} vs {:?}", nx.name, ox, oy));
            }
        }
        Ok(())
    }
}
