//! The intermediate representation: typed ops over f32 and bit tensors in a
//! petgraph graph, with its verifier, parameters, reference interpreter and
//! machine-readable views (JSON, Graphviz).

pub mod graph;
pub mod limits;
pub mod ops;
pub mod param_check;
pub mod params;
pub mod types;
pub mod verify;

pub use graph::{Graph, InputNormalization, Node, NodeId};
pub use ops::{Op, OpKind};
pub use params::{Params, Tensor};
pub use types::{DType, Shape, TensorType};
pub use verify::{Verified, verify};
pub mod dot;
pub mod interp;
pub mod json;
pub mod summary;
