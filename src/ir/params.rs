//! Learned parameters: which ones each node has, how they are initialised, and
//! the store that holds their values.
//!
//! Names and layouts follow PyTorch, so a `state_dict` saved as safetensors loads
//! directly: `NODE.weight` is `[out, in/groups, kh, kw]` for convolutions and
//! `[out, in]` for dense layers; batchnorm has `weight`, `bias`, `running_mean`
//! and `running_var`; `choose` has `alpha`; `prelu` has one `weight` per channel.
//! Binary layers store real-valued latent weights and use their sign.

use std::collections::BTreeMap;
use std::fmt;

use super::graph::{Graph, NodeId};
use super::ops::Op;
use crate::util::rng::Rng;

/// How a parameter starts out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound)`: PyTorch's default for conv and linear
    /// layers (Kaiming-uniform with a = √5 gives `bound = 1/√fan_in`, and the
    /// bias uses the same bound).
    Uniform {
        /// Half the interval's width.
        bound: f32,
    },
    /// Every element equal to this value.
    Constant(f32),
}

/// One parameter of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Full name, `NODE.suffix`.
    pub name: String,
    /// The node it belongs to.
    pub node: NodeId,
    /// Shape (no batch dimension).
    pub shape: Vec<usize>,
    /// Initialisation.
    pub init: Init,
    /// Whether the layer uses only the sign of these values.
    pub binary: bool,
}

impl ParamSpec {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The parameters of node `id`, in a fixed order.
pub fn node_params(graph: &Graph, id: NodeId) -> Vec<ParamSpec> {
    let node = graph.node(id);
    let spec = |suffix: &str, shape: Vec<usize>, init: Init, binary: bool| ParamSpec {
        name: format!("{}.{suffix}", node.name),
        node: id,
        shape,
        init,
        binary,
    };
    let in_dims = || {
        graph
            .operand_types(id)
            .first()
            .map(|t| t.dims().to_vec())
            .unwrap_or_default()
    };
    let channels = || in_dims().first().copied().unwrap_or(0);
    let fan_bound = |fan_in: usize| Init::Uniform {
        bound: 1.0 / (fan_in.max(1) as f32).sqrt(),
    };
    match &node.op {
        Op::Conv2d(a) => {
            let g = &a.geometry;
            let per_group = channels() / g.groups.max(1);
            let fan_in = per_group * g.kernel[0] * g.kernel[1];
            let mut v = vec![spec(
                "weight",
                vec![g.out_channels, per_group, g.kernel[0], g.kernel[1]],
                fan_bound(fan_in),
                false,
            )];
            if a.bias {
                v.push(spec("bias", vec![g.out_channels], fan_bound(fan_in), false));
            }
            v
        }
        Op::BConv2d(a) => {
            let g = &a.geometry;
            let per_group = channels() / g.groups.max(1);
            let fan_in = per_group * g.kernel[0] * g.kernel[1];
            vec![spec(
                "weight",
                vec![g.out_channels, per_group, g.kernel[0], g.kernel[1]],
                fan_bound(fan_in),
                true,
            )]
        }
        Op::Dense(a) => {
            let k = channels();
            let mut v = vec![spec("weight", vec![a.out_features, k], fan_bound(k), false)];
            if a.bias {
                v.push(spec("bias", vec![a.out_features], fan_bound(k), false));
            }
            v
        }
        Op::BDense(a) => vec![spec(
            "weight",
            vec![a.out_features, channels()],
            fan_bound(channels()),
            true,
        )],
        Op::BatchNorm(_) => {
            let c = channels();
            vec![
                spec("weight", vec![c], Init::Constant(1.0), false),
                spec("bias", vec![c], Init::Constant(0.0), false),
                spec("running_mean", vec![c], Init::Constant(0.0), false),
                spec("running_var", vec![c], Init::Constant(1.0), false),
            ]
        }
        Op::PRelu => vec![spec(
            "weight",
            vec![channels()],
            Init::Constant(0.25),
            false,
        )],
        Op::Choose => vec![spec(
            "alpha",
            vec![graph.operands(id).len()],
            Init::Constant(0.0),
            false,
        )],
        Op::Input
        | Op::Sign
        | Op::Relu
        | Op::HardTanh(_)
        | Op::MaxPool(_)
        | Op::AvgPool(_)
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Add
        | Op::Concat
        | Op::Zero
        | Op::Identity => Vec::new(),
    }
}

/// Every parameter of the graph, in topological node order.
pub fn graph_params(graph: &Graph) -> Vec<ParamSpec> {
    let order = graph
        .topo_order()
        .unwrap_or_else(|_| graph.node_ids().collect());
    order
        .into_iter()
        .flat_map(|id| node_params(graph, id))
        .collect()
}

/// A parameter's value: a dense f32 array in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, C order.
    pub data: Vec<f32>,
}

/// Parameter values by full name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// The values.
    pub tensors: BTreeMap<String, Tensor>,
}

/// What is wrong with a set of parameters for a graph: every problem at once.
#[derive(Clone, Debug, Default, PartialEq, thiserror::Error)]
pub struct ParamsError {
    /// Parameters the graph needs that are absent.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Parameters present that the graph does not use.
    pub extra: Vec<String>,
    /// Parameters of the wrong shape: name, expected, found.
    pub misshapen: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Parameters stored with another element type than f32: name, dtype.
    pub wrong_dtype: Vec<(String, String)>,
}

impl ParamsError {
    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.misshapen.is_empty()
            && self.wrong_dtype.is_empty()
    }
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the weights do not match the model:")?;
        for (name, shape) in &self.missing {
            writeln!(f, "  missing    {name}: f32{shape:?}")?;
        }
        for (name, expected, found) in &self.misshapen {
            writeln!(
                f,
                "  misshapen  {name}: expected f32{expected:?}, found {found:?}"
            )?;
        }
        for (name, dtype) in &self.wrong_dtype {
            writeln!(f, "  wrong type {name}: expected f32, found {dtype}")?;
        }
        for name in &self.extra {
            writeln!(f, "  extra      {name}: not a parameter of this model")?;
        }
        let n =
            self.missing.len() + self.misshapen.len() + self.wrong_dtype.len() + self.extra.len();
        write!(f, "({n} problem{})", if n == 1 { "" } else { "s" })
    }
}

/// PyTorch's batchnorm keeps a step counter that inference does not use;
/// state dicts carry it, so loading tolerates it.
fn is_ignored_extra(graph: &Graph, name: &str) -> bool {
    name.strip_suffix(".num_batches_tracked")
        .and_then(|node| graph.find(node))
        .is_some_and(|id| matches!(graph.node(id).op, Op::BatchNorm(_)))
}

impl Params {
    /// Fresh parameters for `graph`, as PyTorch initialises them, from `seed`.
    pub fn init(graph: &Graph, seed: u64) -> Params {
        let mut rng = Rng::new(seed);
        let mut tensors = BTreeMap::new();
        for spec in graph_params(graph) {
            let data = match spec.init {
                Init::Uniform { bound } => {
                    (0..spec.elements()).map(|_| rng.uniform(bound)).collect()
                }
                Init::Constant(c) => vec![c; spec.elements()],
            };
            tensors.insert(
                spec.name,
                Tensor {
                    shape: spec.shape,
                    data,
                },
            );
        }
        Params { tensors }
    }

    /// Checks that the store holds exactly the graph's parameters with their
    /// shapes, dropping what inference ignores (batchnorm step counters).
    /// Lists every missing, extra and misshapen parameter in one error.
    pub fn check(&mut self, graph: &Graph) -> Result<(), ParamsError> {
        let specs = graph_params(graph);
        let mut err = ParamsError::default();
        for spec in &specs {
            match self.tensors.get(&spec.name) {
                None => err.missing.push((spec.name.clone(), spec.shape.clone())),
                Some(t) if t.shape != spec.shape => {
                    err.misshapen
                        .push((spec.name.clone(), spec.shape.clone(), t.shape.clone()))
                }
                Some(_) => {}
            }
        }
        let wanted: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        let extra: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        for name in extra {
            if is_ignored_extra(graph, &name) {
                self.tensors.remove(&name);
            } else {
                err.extra.push(name);
            }
        }
        if err.is_empty() { Ok(()) } else { Err(err) }
    }

    /// The parameter `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}
