//! The one parameter validation every engine runs.
//!
//! The interpreter, the JIT and object-file compilation call [`validate`]
//! before doing anything else, so they accept and refuse exactly the same
//! parameters: every parameter the graph needs is present, with its shape
//! and as many values as the shape says (packed weights: as many words as
//! the layout needs), and the values with a restricted domain are in it:
//! threshold directions are ±1 and thresholds are not NaN (`±∞` is allowed:
//! it makes a channel constant). Parameters the graph does not use are not
//! an engine's concern; the weight loader refuses them.

use super::graph::Graph;
use super::params::{PackedBits, Params, graph_params};

/// The first problem found with a graph's parameters.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// A parameter the graph needs is absent.
    #[error("missing parameter `{name}`: expected f32{expected:?}")]
    Missing {
        /// Its full name (`NODE.weight`).
        name: String,
        /// The shape it should have.
        expected: Vec<usize>,
    },
    /// A parameter has the wrong shape.
    #[error("parameter `{name}` must be {expected:?}, found {found:?}")]
    Shape {
        /// Its full name.
        name: String,
        /// The shape it should have.
        expected: Vec<usize>,
        /// The shape it has.
        found: Vec<usize>,
    },
    /// A parameter holds a different number of values than its shape says.
    #[error("parameter `{name}` is shaped {shape:?} but holds {len} values")]
    Data {
        /// Its full name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// How many values (or packed words) it holds.
        len: usize,
    },
    /// A threshold direction is not ±1.
    #[error("parameter `{name}` must hold ±1, but channel {channel} is {value}")]
    Direction {
        /// The parameter.
        name: String,
        /// The offending channel.
        channel: usize,
        /// Its value.
        value: f32,
    },
    /// A threshold is NaN.
    #[error("parameter `{name}`: channel {channel} is NaN; a threshold is a number or ±inf")]
    NanThreshold {
        /// The parameter.
        name: String,
        /// The offending channel.
        channel: usize,
    },
}

/// Checks `params` against what `graph` needs (see the module doc).
pub fn validate(graph: &Graph, params: &Params) -> Result<(), ParamError> {
    for spec in graph_params(graph) {
        let missing = || ParamError::Missing {
            name: spec.name.clone(),
            expected: spec.shape.clone(),
        };
        let (shape, len, expected_len) = if spec.packed {
            let p = params.packed.get(&spec.name).ok_or_else(missing)?;
            (&p.shape, p.words.len(), PackedBits::word_count(&spec.shape))
        } else {
            let t = params.tensors.get(&spec.name).ok_or_else(missing)?;
            (&t.shape, t.data.len(), Some(spec.elements()))
        };
        if *shape != spec.shape {
            return Err(ParamError::Shape {
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                found: shape.clone(),
            });
        }
        if Some(len) != expected_len {
            return Err(ParamError::Data {
                name: spec.name.clone(),
                shape: shape.clone(),
                len,
            });
        }
        if spec.packed {
            continue;
        }
        let data = &params.tensors[&spec.name].data;
        if spec.name.ends_with(".direction")
            && let Some(c) = data.iter().position(|&v| v != 1.0 && v != -1.0)
        {
            return Err(ParamError::Direction {
                name: spec.name.clone(),
                channel: c,
                value: data[c],
            });
        }
        if spec.name.ends_with(".threshold")
            && let Some(c) = data.iter().position(|v| v.is_nan())
        {
            return Err(ParamError::NanThreshold {
                name: spec.name.clone(),
                channel: c,
            });
        }
    }
    Ok(())
}
