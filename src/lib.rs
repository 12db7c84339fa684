//! onebit: a compiler toolchain for 1-bit (binarized) neural networks.
//!
//! The pipeline, one module per stage:
//! - [`text`]: the `.bnn` model language: parser, lowering to IR, printer, diagnostics;
//! - [`ir`]: the typed graph IR, its verifier, parameters and the reference interpreter;
//! - [`io`]: weight (safetensors) and data (`.npy`) files.
//!
//! ```
//! let graph = onebit::text::parse_str(
//!     "model m { input x: f32[16]  y = bdense(sign(x), 4)  output y }",
//! ).unwrap();
//! assert_eq!(graph.node(graph.outputs()[0]).ty.to_string(), "f32[4]");
//! ```
#![deny(missing_docs)]

pub mod io;
pub mod ir;
pub mod text;
pub mod util;
