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
use super::ops::{BinaryOutput, Op, Scale, WeightForm, WeightKind};
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
    /// One value per output channel: `mean |W_o|` of the same node's
    /// `weight` as initialised (a learned scale starts where XNOR-Net's
    /// computed one is).
    MeanAbsOfWeight,
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
    /// Whether the values are stored as [`PackedBits`] (in [`Params::packed`])
    /// rather than as f32.
    pub packed: bool,
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
        packed: false,
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
    // The per-output-channel parameters of a folded binary layer.
    let epilogue = |output: BinaryOutput, out: usize| match output {
        BinaryOutput::Dot => Vec::new(),
        BinaryOutput::Affine => vec![
            spec("multiplier", vec![out], Init::Constant(1.0), false),
            spec("bias", vec![out], Init::Constant(0.0), false),
        ],
        BinaryOutput::Threshold => vec![
            spec("threshold", vec![out], Init::Constant(0.0), false),
            spec("direction", vec![out], Init::Constant(1.0), false),
        ],
    };
    // `scale=learned`'s factor, right after the weight it starts from.
    let learned_scale = |scale: Scale, out: usize| {
        (scale == Scale::Learned).then(|| spec("scale", vec![out], Init::MeanAbsOfWeight, false))
    };
    // `projection=true`'s projection, after the scale; 1 starts the layer
    // where the plain `sign(W)` would be.
    let projection = |shape: Option<Vec<usize>>| {
        shape.map(|shape| spec("projection", shape, Init::Constant(1.0), false))
    };
    let binary_weight = |shape: Vec<usize>, fan_in: usize, form: WeightForm| ParamSpec {
        packed: form == WeightForm::Packed,
        ..spec("weight", shape, fan_bound(fan_in), true)
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
                a.weights == WeightKind::Binary,
            )];
            v.extend(learned_scale(a.scale, g.out_channels));
            v.extend(projection(node.op.projection_shape(channels())));
            if a.bias {
                v.push(spec("bias", vec![g.out_channels], fan_bound(fan_in), false));
            }
            v
        }
        Op::BConv2d(a) => {
            let g = &a.geometry;
            let per_group = channels() / g.groups.max(1);
            let fan_in = per_group * g.kernel[0] * g.kernel[1];
            let shape = vec![g.out_channels, per_group, g.kernel[0], g.kernel[1]];
            let mut v = vec![binary_weight(shape, fan_in, a.weights)];
            v.extend(learned_scale(a.scale, g.out_channels));
            v.extend(projection(node.op.projection_shape(channels())));
            v.extend(epilogue(a.output, g.out_channels));
            v
        }
        Op::Dense(a) => {
            let k = channels();
            let binary = a.weights == WeightKind::Binary;
            let mut v = vec![spec(
                "weight",
                vec![a.out_features, k],
                fan_bound(k),
                binary,
            )];
            v.extend(learned_scale(a.scale, a.out_features));
            v.extend(projection(node.op.projection_shape(channels())));
            if a.bias {
                v.push(spec("bias", vec![a.out_features], fan_bound(k), false));
            }
            v
        }
        Op::BDense(a) => {
            let shape = vec![a.out_features, channels()];
            let mut v = vec![binary_weight(shape, channels(), a.weights)];
            v.extend(learned_scale(a.scale, a.out_features));
            v.extend(projection(node.op.projection_shape(channels())));
            v.extend(epilogue(a.output, a.out_features));
            v
        }
        Op::Threshold => vec![
            spec("threshold", vec![channels()], Init::Constant(0.0), false),
            spec("direction", vec![channels()], Init::Constant(1.0), false),
        ],
        Op::Affine => vec![
            spec("multiplier", vec![channels()], Init::Constant(1.0), false),
            spec("bias", vec![channels()], Init::Constant(0.0), false),
        ],
        Op::BatchNorm(_) => {
            let c = channels();
            vec![
                spec("weight", vec![c], Init::Constant(1.0), false),
                spec("bias", vec![c], Init::Constant(0.0), false),
                spec("running_mean", vec![c], Init::Constant(0.0), false),
                spec("running_var", vec![c], Init::Constant(1.0), false),
            ]
        }
        Op::Shift => vec![spec("bias", vec![channels()], Init::Constant(0.0), false)],
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
        | Op::Sign(_)
        | Op::Relu
        | Op::HardTanh(_)
        | Op::MaxPool(_)
        | Op::AvgPool(_)
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Add
        | Op::Concat
        | Op::SliceChannels(_)
        | Op::ShuffleChannels(_)
        | Op::Zero
        | Op::Identity
        | Op::CrossEntropy(_)
        | Op::RunningStat(_)
        | Op::Grad(_)
        | Op::QuantizationLoss(_)
        | Op::DistributionLoss(_) => Vec::new(),
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, C order.
    pub data: Vec<f32>,
}

/// Binary weights packed for the kernels: one bit per weight, bit 1 for −1
/// (a negative latent weight) and bit 0 for +1, little-endian in 64-bit words.
///
/// `shape` is the logical weight shape, as for latent weights. The words are
/// laid out with the input channels innermost, as packed activations are:
/// - `[O, C/G, kh, kw]` (`bconv2d`): `[O][kh][kw][⌈(C/G)/64⌉]` words, input
///   channel `c` at bit `c % 64` of word `c / 64`;
/// - `[O, K]` (`bdense`): `[O][⌈K/64⌉]` words, `k` at bit `k % 64` of word `k / 64`.
///
/// Bits past the channel count (the tail of the last word) are zero, so an
/// XOR with a packed activation (whose tail is zero too) never counts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedBits {
    /// The logical shape `[O, C/G, kh, kw]` or `[O, K]`.
    pub shape: Vec<usize>,
    /// The words, in the layout above.
    pub words: Vec<u64>,
}

impl PackedBits {
    /// `(rows, positions per row, channels per position)`: `(O, kh·kw, C/G)`
    /// or `(O, 1, K)`; `None` for another rank.
    fn geometry(shape: &[usize]) -> Option<(usize, usize, usize)> {
        match *shape {
            [o, c, kh, kw] => Some((o, kh * kw, c)),
            [o, k] => Some((o, 1, k)),
            _ => None,
        }
    }

    /// The number of words the layout needs for `shape`.
    pub fn word_count(shape: &[usize]) -> Option<usize> {
        let (rows, positions, channels) = Self::geometry(shape)?;
        Some(rows * positions * channels.div_ceil(64))
    }

    /// Packs the signs of latent weights of logical shape `shape` (C order):
    /// bit 1 where `sign(w) = −1`, i.e. where `w >= 0` is false. `None` if the
    /// shape is not of rank 2 or 4 or does not match the data.
    pub fn pack(shape: &[usize], latent: &[f32]) -> Option<PackedBits> {
        let (rows, positions, channels) = Self::geometry(shape)?;
        if latent.len() != rows * positions * channels {
            return None;
        }
        let per_position = channels.div_ceil(64);
        let mut words = vec![0u64; rows * positions * per_position];
        for o in 0..rows {
            for c in 0..channels {
                for p in 0..positions {
                    // Logical C order is [o][c][p], with p = u·kw + v.
                    let w = latent[(o * channels + c) * positions + p];
                    if !(w >= 0.0) {
                        words[(o * positions + p) * per_position + c / 64] |= 1 << (c % 64);
                    }
                }
            }
        }
        Some(PackedBits {
            shape: shape.to_vec(),
            words,
        })
    }

    /// The weights as ±1.0 in logical C order. `None` if the words do not fit
    /// the shape.
    pub fn signs(&self) -> Option<Vec<f32>> {
        let (rows, positions, channels) = Self::geometry(&self.shape)?;
        let per_position = channels.div_ceil(64);
        if self.words.len() != rows * positions * per_position {
            return None;
        }
        let mut out = vec![0.0f32; rows * positions * channels];
        for o in 0..rows {
            for c in 0..channels {
                for p in 0..positions {
                    let word = self.words[(o * positions + p) * per_position + c / 64];
                    let bit = (word >> (c % 64)) & 1;
                    out[(o * channels + c) * positions + p] = if bit == 1 { -1.0 } else { 1.0 };
                }
            }
        }
        Some(out)
    }
}

/// Parameter values by full name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// The f32 values.
    pub tensors: BTreeMap<String, Tensor>,
    /// Packed binary weights (made by the `pack_weights` pass).
    pub packed: BTreeMap<String, PackedBits>,
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
pub fn is_ignored_extra(graph: &Graph, name: &str) -> bool {
    name.strip_suffix(".num_batches_tracked")
        .and_then(|node| graph.find(node))
        .is_some_and(|id| matches!(graph.node(id).op, Op::BatchNorm(_)))
}

impl Params {
    /// Fresh parameters for `graph`, as PyTorch initialises them, from `seed`.
    pub fn init(graph: &Graph, seed: u64) -> Params {
        let mut rng = Rng::new(seed);
        let mut packed = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        // The node's weight as initialised, for `MeanAbsOfWeight` (which
        // `node_params` lists right after it).
        let mut last_weight: Option<(NodeId, Vec<f32>)> = None;
        for spec in graph_params(graph) {
            let data: Vec<f32> = match spec.init {
                Init::Uniform { bound } => {
                    (0..spec.elements()).map(|_| rng.uniform(bound)).collect()
                }
                Init::Constant(c) => vec![c; spec.elements()],
                Init::MeanAbsOfWeight => match &last_weight {
                    Some((node, w)) if *node == spec.node => {
                        crate::ir::interp::channel_scales(w, spec.elements())
                    }
                    _ => vec![1.0; spec.elements()],
                },
            };
            if spec.name.ends_with(".weight") {
                last_weight = Some((spec.node, data.clone()));
            }
            if spec.packed {
                // Binary weights are rank 2 or 4, so packing succeeds.
                if let Some(bits) = PackedBits::pack(&spec.shape, &data) {
                    packed.insert(spec.name, bits);
                }
            } else {
                tensors.insert(
                    spec.name,
                    Tensor {
                        shape: spec.shape,
                        data,
                    },
                );
            }
        }
        Params { tensors, packed }
    }

    /// Checks that the store holds exactly the graph's parameters with their
    /// shapes, dropping what inference ignores (batchnorm step counters).
    /// Lists every missing, extra and misshapen parameter in one error.
    pub fn check(&mut self, graph: &Graph) -> Result<(), ParamsError> {
        let specs = graph_params(graph);
        let mut err = ParamsError::default();
        for spec in &specs {
            let shape = if spec.packed {
                self.packed.get(&spec.name).map(|p| &p.shape)
            } else {
                self.tensors.get(&spec.name).map(|t| &t.shape)
            };
            match shape {
                None => err.missing.push((spec.name.clone(), spec.shape.clone())),
                Some(shape) if *shape != spec.shape => {
                    err.misshapen
                        .push((spec.name.clone(), spec.shape.clone(), shape.clone()))
                }
                Some(_) => {}
            }
        }
        let wanted: std::collections::HashSet<(&str, bool)> =
            specs.iter().map(|s| (s.name.as_str(), s.packed)).collect();
        let unwanted = |map_packed: bool, k: &String| !wanted.contains(&(k.as_str(), map_packed));
        err.extra
            .extend(self.packed.keys().filter(|k| unwanted(true, k)).cloned());
        let extra: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| unwanted(false, k))
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
